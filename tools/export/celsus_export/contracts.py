"""What the Rust model services expect of each bundle (docs/model-bundle.md and the adapters in
ctclip-svc/, supervised-svc/, diffusion-svc/, mednext-svc/, fvlm-svc/). Pure data, no torch.

Label names are the reference's (celsus-reference §3.2-3.6), as the services and the demo
generator already carry them. The fVLM prompt texts are read from the user's checkout at export
time (`fvlm.py`), not stored here.
"""

from __future__ import annotations

MODELS = ("ctclip", "supervised", "diffusion", "mednext", "fvlm")

# ctclip-svc PATHOLOGIES: the reference API's CTCLIP_PATHOLOGIES (api/inference_service.py), in order
CTCLIP_PATHOLOGIES = [
    "Pathological finding", "Pulmonary nodule", "Lymphangitic carcinomatosis", "Pneumonia", "Tuberculosis",
    "Bronchiectasis", "Chronic bronchitis", "Bronchial obstruction", "Pulmonary emphysema", "Pulmonary fibrosis",
    "Pneumoconiosis", "Pulmonary edema", "Atelectasis", "Pleural effusion", "Pleural thickening",
    "Pleural plaques", "Pneumothorax", "Hemothorax", "Consolidation", "Ground-glass opacity",
    "Crazy-paving pattern", "Tree-in-bud pattern", "Mosaic attenuation", "Cavitation", "Pulmonary embolism",
    "Chronic thromboembolic disease", "Main pulmonary artery enlargement",
    "Pulmonary arteriovenous malformation", "Mediastinal or hilar lymphadenopathy", "Sarcoidosis", "Thymoma",
    "Lymphoma", "Mediastinal cyst", "Retrosternal goiter", "Pericardial effusion", "Cardiac chamber enlargement",
    "Coronary artery calcification", "Aortic dissection", "Rib fracture", "Vertebral compression fracture",
    "Bone metastases", "Chest wall mass or invasion", "Subcutaneous emphysema", "Diaphragmatic hernia",
    "Hiatal hernia", "Pneumomediastinum", "Hydropneumothorax", "Radiation pneumonitis",
    "Postoperative changes (lobectomy or pneumonectomy)", "Scoliosis", "Pectus excavatum or carinatum",
    "Degenerative spine changes", "Thyroid nodule", "Breast mass", "Other pathology",
]
# scripts/universal_ct_inference.py predict_pathologies: [present, absent]
CTCLIP_PROMPTS = ("{} is present.", "{} is not present.")
CTCLIP_MAX_LENGTH = 512

# supervised-svc MOSMED_PATHOLOGIES (the default when the checkpoint has no target_pathologies)
MOSMED_PATHOLOGIES = [
    "ribs_fracture", "pleural_effusion", "aorta_pathology", "pulmonary_trunk_pathology", "cancer",
    "atelectasis", "covid", "infiltrate", "emphysema", "paracardial_fat_pathology", "fibrosis",
    "airiness_decrease", "pneumothorax", "coronary_calcium", "osteo_fracture",
]

DIFFUSION_LABELS = [
    "diffusion_classifier_mean_probability", "diffusion_classifier_max_probability",
    "diffusion_classifier_std_probability",
]

# fvlm-svc: organ index order of the `organ` input and the mask value of each organ
FVLM_ORGANS = ["lung", "heart", "esophagus", "aorta"]
FVLM_MASK_IDS = [1, 2, 3, 4]
# label order of the bundle (celsus-reference §3.6.4 table = the reference's result-dict order)
FVLM_ITEMS = [
    ("lung", "Emphysema"), ("lung", "Atelectasis"), ("lung", "Lung nodule"), ("lung", "Lung opacity"),
    ("lung", "Pulmonary fibrotic sequela"), ("lung", "Pleural effusion"), ("lung", "Mosaic attenuation pattern"),
    ("lung", "Peribronchial thickening"), ("lung", "Consolidation"), ("lung", "Bronchiectasis"),
    ("lung", "Interlobular septal thickening"), ("lung", "Pneumothorax"), ("lung", "Lung cancer"),
    ("heart", "Cardiomegaly"), ("heart", "Pericardial effusion"), ("heart", "Coronary artery wall calcification"),
    ("aorta", "Arterial wall calcification"), ("aorta", "Aortic aneurysm"),
]
FVLM_INPUT = [1, 1, 112, 288, 352]

CTCLIP_INPUT = [1, 1, 240, 480, 480]
DIFFUSION_SIZE = [256, 256]
MEDNEXT_DEFAULT_ROI = [320, 320, 224]

FEATURE_PREFIX = {
    "ctclip": "ctclip_",
    "supervised": "supervised_",
    "diffusion": "diffusion_classifier_",
    "mednext": "kolyan_",
    "fvlm": "okhr_",
}

# [recipe] of each kind (docs/model-bundle.md "Recipe parameters"; values of the reference §3)
RECIPES = {
    "ctclip": {"kind": "ctclip"},
    "supervised": {"kind": "ctclip"},
    "diffusion": {"kind": "diffusion", "slice_start": 12, "slice_end": 228, "size": DIFFUSION_SIZE,
                  "batch_size": 16, "timestep": 0},
    "mednext": {"kind": "mednext", "spacing_mm": [1.0, 1.0, 1.5], "hu_clip": [-1000.0, 1000.0],
                "roi": MEDNEXT_DEFAULT_ROI},
    "fvlm": {"kind": "fvlm", "hu_window": [-1150.0, 350.0], "roi_margin": [5, 20, 20], "min_pad": [112, 256, 352],
             "organ_size": [112, 288, 352]},
}

# Service binary of each model kind (target/release/<name>)
SERVICE_BINARY = {m: f"{m}-svc" for m in MODELS}

# File names `all` looks for in --weights (the reference's deployment names, celsus-reference §1.8-1.9)
DEFAULT_FILES = {
    "ctclip": {"checkpoint": "CT_VocabFine_v2.pt"},
    "supervised": {"checkpoint": "supervised_model.pt"},
    "diffusion": {"checkpoint": "ct_classifier.pt"},
    "mednext": {"checkpoint": "pli_2_model_last_e_15.ckpt", "config": "pli_2.json"},
    "fvlm": {"checkpoint": "fvlm_model.pth", "mae_weights": "mae_pretrain_vit_base.pth",
             "bert": "BiomedVLP-CXR-BERT-specialized"},
    "lightgbm": {"main": "lightgbm_model.pkl", "thoracic": "lightgbm_thoracic_model.pkl"},
    "text_encoder": "BiomedVLP-CXR-BERT-specialized",
}

# Tolerance of the PyTorch vs ONNX Runtime check, on probabilities (after the manifest's activation)
TOLERANCE = {"float32": 1e-4}


def tensor(name: str, dtype: str, shape) -> dict:
    return {"name": name, "dtype": dtype, "shape": [int(d) for d in shape]}


def io_spec(model: str, *, n_labels: int, input_dtype: str = "float32", roi=None) -> tuple[list, list]:
    """([[inputs]], [[outputs]]) of a bundle, as the adapters check them."""
    if model in ("ctclip", "supervised"):
        out = [1, len(CTCLIP_PATHOLOGIES), 2] if model == "ctclip" else [1, n_labels]
        return [tensor("image", "float32", CTCLIP_INPUT)], [tensor("logits", "float32", out)]
    if model == "diffusion":
        return ([tensor("image", "float32", [-1, 1, *DIFFUSION_SIZE]), tensor("timesteps", "int64", [-1])],
                [tensor("logits", "float32", [-1, 2])])
    if model == "mednext":
        roi = list(roi or MEDNEXT_DEFAULT_ROI)
        return [tensor("image", input_dtype, [1, 1, *roi])], [tensor("logits", "float32", [1, n_labels])]
    if model == "fvlm":
        return ([tensor("image", "float32", FVLM_INPUT), tensor("organ_mask", "float32", FVLM_INPUT),
                 tensor("organ", "int64", [1])],
                [tensor("logits", "float32", [1, n_labels, 2])])
    raise ValueError(f"unknown model {model!r}")


def labels_section(model: str, names, activation: str | None = None) -> dict:
    """[labels] of a bundle."""
    if model == "ctclip":
        return {"names": list(names), "activation": "softmax-pair", "positive_index": 0, "feature_prefix": FEATURE_PREFIX[model]}
    if model == "supervised":
        return {"names": list(names), "activation": "sigmoid", "feature_prefix": FEATURE_PREFIX[model]}
    if model == "diffusion":
        return {"names": list(DIFFUSION_LABELS), "activation": "softmax-pair", "positive_index": 1, "feature_prefix": FEATURE_PREFIX[model]}
    if model == "mednext":
        act = activation or "sigmoid"
        if act not in ("sigmoid", "softmax"):
            raise ValueError(f"mednext activation {act!r}: sigmoid or softmax")
        return {"names": list(names), "activation": act, "feature_prefix": FEATURE_PREFIX[model]}
    if model == "fvlm":
        return {"names": list(names), "activation": "softmax-pair", "positive_index": 1, "feature_prefix": FEATURE_PREFIX[model]}
    raise ValueError(f"unknown model {model!r}")
