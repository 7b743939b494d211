"""The reference's ensemble rules in Python (celsus-reference §4.1-4.4), written from the
specification, used as the oracle for ensemble-svc's fixtures: the feature dict with numpy
float64 statistics, the alignment to a model's feature list, and top_pathologies.

Inputs are the scores the model services emit: {model: {label: value}} with labels without the
ensemble prefix (a label that already carries it is not prefixed again).
"""

from __future__ import annotations

import numpy as np

MOSMED = [
    "ribs_fracture", "pleural_effusion", "aorta_pathology", "pulmonary_trunk_pathology", "cancer",
    "atelectasis", "covid", "infiltrate", "emphysema", "paracardial_fat_pathology", "fibrosis",
    "airiness_decrease", "pneumothorax", "coronary_calcium", "osteo_fracture",
]

CTCLIP = [
    "Pathological finding", "Pulmonary nodule", "Lymphangitic carcinomatosis", "Pneumonia", "Tuberculosis",
    "Bronchiectasis", "Chronic bronchitis", "Bronchial obstruction", "Pulmonary emphysema", "Pulmonary fibrosis",
    "Pneumoconiosis", "Pulmonary edema", "Atelectasis", "Pleural effusion", "Pleural thickening",
    "Pleural plaques", "Pneumothorax", "Hemothorax", "Consolidation", "Ground-glass opacity",
    "Crazy-paving pattern", "Tree-in-bud pattern", "Mosaic attenuation", "Cavitation", "Pulmonary embolism",
    "Chronic thromboembolic disease", "Main pulmonary artery enlargement", "Pulmonary arteriovenous malformation",
    "Mediastinal or hilar lymphadenopathy", "Sarcoidosis", "Thymoma", "Lymphoma", "Mediastinal cyst",
    "Retrosternal goiter", "Pericardial effusion", "Cardiac chamber enlargement", "Coronary artery calcification",
    "Aortic dissection", "Rib fracture", "Vertebral compression fracture", "Bone metastases",
    "Chest wall mass or invasion", "Subcutaneous emphysema", "Diaphragmatic hernia", "Hiatal hernia",
    "Pneumomediastinum", "Hydropneumothorax", "Radiation pneumonitis",
    "Postoperative changes (lobectomy or pneumonectomy)", "Scoliosis", "Pectus excavatum or carinatum",
    "Degenerative spine changes", "Thyroid nodule", "Breast mass", "Other pathology",
]

FVLM = [
    "Emphysema", "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening", "Pneumothorax", "Lung cancer", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Arterial wall calcification", "Aortic aneurysm",
]
FVLM_LUNG = FVLM[:13]

# The real 22 MedNeXt class names are not public (pli_2.json is missing); fixtures use these.
MEDNEXT = [
    "normal", "cancer", "pneumothorax", "pleural_effusion", "atelectasis", "emphysema", "fibrosis",
    "infiltrate", "covid", "ribs_fracture", "osteo_fracture", "aorta_pathology", "pulmonary_trunk_pathology",
    "coronary_calcium", "paracardial_fat_pathology", "airiness_decrease", "lymphadenopathy", "nodule",
    "bronchiectasis", "consolidation", "hydrothorax", "pericardial_effusion",
]

DIFFUSION = ["diffusion_classifier_mean_probability", "diffusion_classifier_max_probability", "diffusion_classifier_std_probability"]

GROUPS = {
    "lung_parenchyma": [
        "Pulmonary nodule", "Lymphangitic carcinomatosis", "Pneumonia", "Tuberculosis", "Pulmonary emphysema",
        "Pulmonary fibrosis", "Pneumoconiosis", "Pulmonary edema", "Atelectasis", "Consolidation",
        "Ground-glass opacity", "Crazy-paving pattern", "Tree-in-bud pattern", "Mosaic attenuation", "Cavitation",
        "Radiation pneumonitis",
    ],
    "airways": ["Bronchiectasis", "Chronic bronchitis", "Bronchial obstruction"],
    "vascular": [
        "Pulmonary embolism", "Chronic thromboembolic disease", "Main pulmonary artery enlargement",
        "Pulmonary arteriovenous malformation", "Aortic dissection", "Coronary artery calcification",
    ],
    "pleural": ["Pleural effusion", "Pleural thickening", "Pleural plaques", "Pneumothorax", "Hemothorax", "Hydropneumothorax"],
    "mediastinum": [
        "Mediastinal or hilar lymphadenopathy", "Sarcoidosis", "Thymoma", "Lymphoma", "Mediastinal cyst",
        "Retrosternal goiter", "Pneumomediastinum",
    ],
    "cardiac": ["Pericardial effusion", "Cardiac chamber enlargement"],
    "chest_wall": [
        "Rib fracture", "Chest wall mass or invasion", "Subcutaneous emphysema", "Diaphragmatic hernia", "Hiatal hernia",
        "Pectus excavatum or carinatum",
    ],
    "bone_spine": ["Vertebral compression fracture", "Degenerative spine changes", "Scoliosis", "Bone metastases"],
    "postop": ["Postoperative changes (lobectomy or pneumonectomy)"],
    "incidentalomas": ["Thyroid nodule", "Breast mass"],
}


def with_prefix(prefix: str, label: str) -> str:
    return label if label.startswith(prefix) else prefix + label


def build_features(scores: dict) -> dict:
    """§4.1: the feature dict in insertion order. Fixed families (supervised, ctclip) take the
    labels present (the reference raises KeyError on a missing one; fixtures always send them)."""
    f: dict[str, float] = {}
    sup = {with_prefix("supervised_", k): float(v) for k, v in scores.get("supervised", {}).items()}
    clip = {with_prefix("ctclip_", k): float(v) for k, v in scores.get("ctclip", {}).items()}
    for m in MOSMED:
        if "supervised_" + m in sup:
            f["supervised_" + m] = sup["supervised_" + m]
    for p in CTCLIP:
        if "ctclip_" + p in clip:
            f["ctclip_" + p] = clip["ctclip_" + p]
    for k, v in scores.get("mednext", {}).items():
        f[with_prefix("kolyan_", k)] = float(v)
    for k, v in scores.get("fvlm", {}).items():
        f[with_prefix("okhr_", k)] = float(v)

    def family(prefix: str, exclude_normal: bool) -> list[float]:
        return [v for k, v in f.items() if k.startswith(prefix) and not (exclude_normal and "normal" in k.lower())]

    sup_v = [f["supervised_" + m] for m in MOSMED if "supervised_" + m in f]
    clip_v = [f["ctclip_" + p] for p in CTCLIP if "ctclip_" + p in f]
    if "supervised" in scores:
        f["supervised_mean_probability"] = np.mean(sup_v)
    if "ctclip" in scores:
        f["ctclip_mean_probability"] = np.mean(clip_v)
    if "supervised" in scores:
        f["supervised_max_probability"] = np.max(sup_v)
    if "ctclip" in scores:
        f["ctclip_max_probability"] = np.max(clip_v)
    if "supervised" in scores:
        f["supervised_top3_mean"] = np.mean(sorted(sup_v, reverse=True)[:3])
    if "ctclip" in scores:
        f["ctclip_top3_mean"] = np.mean(sorted(clip_v, reverse=True)[:3])
    for model, prefix in (("mednext", "kolyan_"), ("fvlm", "okhr_")):
        if model not in scores:
            continue
        vals = family(prefix, exclude_normal=True)
        if vals:
            f[prefix + "mean"] = np.mean(vals)
            f[prefix + "max"] = np.max(vals)
            f[prefix + "top3_mean"] = np.mean(sorted(vals, reverse=True)[:3])
        else:
            f[prefix + "mean"] = f[prefix + "max"] = f[prefix + "top3_mean"] = 0.0
    if "ctclip" in scores:
        for g, members in GROUPS.items():
            vals = [f["ctclip_" + p] for p in members if "ctclip_" + p in f]
            if not vals:
                continue
            f[f"ctclip_group_{g}_max"] = np.max(vals)
            f[f"ctclip_group_{g}_mean"] = np.mean(vals)
            f[f"ctclip_group_{g}_count_high"] = int(np.sum(np.array(vals) > 0.5))
            f[f"ctclip_group_{g}_std"] = np.std(vals) if len(vals) > 1 else 0.0
    for k, v in scores.get("diffusion", {}).items():
        f[with_prefix("diffusion_classifier_", k)] = float(v)
    return {k: float(v) for k, v in f.items()}


def align(features: dict, model_names: list[str], rewrite: bool, fill: float = 0.0) -> tuple[list[float], list[str]]:
    """§4.3: the vector in model order. rewrite=True matches names after LightGBM's ' ' -> '_'
    (what ensemble-svc does); rewrite=False compares exactly (the reference's bare-classifier quirk)."""
    table = dict(features)
    if rewrite:
        for k, v in features.items():
            table.setdefault(k.replace(" ", "_"), v)
    values, missing = [], []
    for n in model_names:
        if n in table:
            values.append(table[n])
        else:
            values.append(fill)
            missing.append(n)
    return values, missing


def display_name(feature: str) -> str:
    for p in ["supervised_", "ctclip_", "kolyan_", "okhr_", "diffusion_classifier_", "diffusion_"]:
        if feature.startswith(p):
            feature = feature[len(p):]
            break
    feature = feature.replace("_", " ")
    return feature[:1].upper() + feature[1:]


def top_pathologies(names: list[str], values: list[float]) -> list[str]:
    """§4.4 on the aligned vector (first maximum in column order; duplicates removed). NaN values
    (ensemble-svc's `nan` policy, never in the reference) are not candidates."""
    out = []
    for prefix, extra in (("kolyan_", []), ("okhr_", []), ("ctclip_", ["_group_"])):
        cands = [
            (n, v) for n, v in zip(names, values)
            if v == v and n.startswith(prefix) and "normal" not in n.lower() and not any(x in n for x in ["_mean", "_max", "_top3", "_std"] + extra)
        ]
        if cands:
            best = max(cands, key=lambda nv: nv[1])
            name = display_name(best[0])
            if name not in out:
                out.append(name)
    return out
