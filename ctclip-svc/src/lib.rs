//! ctclip-svc: the CT-CLIP zero-shot model (reference §3.2) as a `ct.v1.ModelService`.
//!
//! The reference runs the whole CT-CLIP model once per pathology (55 image-encoder and 110 text
//! passes per study). The text side is constant, so the exported graph carries the 110 prompt
//! embeddings and returns, for every pathology, the pair `exp(T)·[cos(present), cos(absent)]`
//! from ONE image-encoder pass; this adapter turns each pair into `softmax(pair)[0]`, the
//! reference's probability "present".
//!
//! Input: recipe `ctclip` (§3.0) -> `image` f32 `[1, 1, 240, 480, 480]`.
//! Output: `logits` f32 `[1, 55, 2]`, labels = the reference's 55 names in its order.

use ct_volume::{CTCLIP_INPUT_SHAPE, ctclip_tensor};
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, DType, Input, ModelError, Runner, Study, activate, bundle::Activation};

/// The 55 pathologies the reference API asks CT-CLIP about (`CTCLIP_PATHOLOGIES`), in its order.
pub const PATHOLOGIES: [&str; 55] = [
    "Pathological finding",
    "Pulmonary nodule",
    "Lymphangitic carcinomatosis",
    "Pneumonia",
    "Tuberculosis",
    "Bronchiectasis",
    "Chronic bronchitis",
    "Bronchial obstruction",
    "Pulmonary emphysema",
    "Pulmonary fibrosis",
    "Pneumoconiosis",
    "Pulmonary edema",
    "Atelectasis",
    "Pleural effusion",
    "Pleural thickening",
    "Pleural plaques",
    "Pneumothorax",
    "Hemothorax",
    "Consolidation",
    "Ground-glass opacity",
    "Crazy-paving pattern",
    "Tree-in-bud pattern",
    "Mosaic attenuation",
    "Cavitation",
    "Pulmonary embolism",
    "Chronic thromboembolic disease",
    "Main pulmonary artery enlargement",
    "Pulmonary arteriovenous malformation",
    "Mediastinal or hilar lymphadenopathy",
    "Sarcoidosis",
    "Thymoma",
    "Lymphoma",
    "Mediastinal cyst",
    "Retrosternal goiter",
    "Pericardial effusion",
    "Cardiac chamber enlargement",
    "Coronary artery calcification",
    "Aortic dissection",
    "Rib fracture",
    "Vertebral compression fracture",
    "Bone metastases",
    "Chest wall mass or invasion",
    "Subcutaneous emphysema",
    "Diaphragmatic hernia",
    "Hiatal hernia",
    "Pneumomediastinum",
    "Hydropneumothorax",
    "Radiation pneumonitis",
    "Postoperative changes (lobectomy or pneumonectomy)",
    "Scoliosis",
    "Pectus excavatum or carinatum",
    "Degenerative spine changes",
    "Thyroid nodule",
    "Breast mass",
    "Other pathology",
];

pub struct Ctclip {
    labels: Vec<String>,
    bundle: Bundle,
}

impl Adapter for Ctclip {
    const KIND: &'static str = "ctclip";
    const DEFAULT_PORT: u16 = 50052;

    fn load(bundle: &Bundle, _options: &AdapterOptions) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        bundle.expect_recipe("ctclip")?;
        bundle.expect_io_counts(1, 1, "image")?;
        let shape: Vec<Option<i64>> = CTCLIP_INPUT_SHAPE.iter().map(|&d| Some(d)).collect();
        bundle.expect_tensor("inputs[0]", &m.inputs[0], &[DType::Float32], &shape)?;
        bundle.expect_tensor("outputs[0]", &m.outputs[0], &[DType::Float32], &[Some(1), Some(PATHOLOGIES.len() as i64), Some(2)])?;
        if m.labels.activation != Activation::SoftmaxPair {
            return Err(bundle.mismatch("labels.activation", "softmax-pair", format!("{:?}", m.labels.activation)));
        }
        bundle.expect_label_count(PATHOLOGIES.len())?;
        if let Some((i, (found, want))) = m.labels.names.iter().zip(PATHOLOGIES).enumerate().find(|(_, (a, b))| a != b) {
            return Err(bundle.mismatch(format!("labels.names[{i}]"), want, found));
        }
        Ok(Self { labels: m.labels.names.clone(), bundle: bundle.clone() })
    }

    fn predict(&self, study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError> {
        let tensor = run.time("recipe", || ctclip_tensor(&study.volume)).map_err(ModelError::unprocessable)?;
        let out = run.run(vec![Input::F32(CTCLIP_INPUT_SHAPE.to_vec(), tensor)])?;
        let probs = run.time("postprocess", || activate(&self.bundle.manifest.labels, &out[0], self.labels.len()))?;
        Ok(self.labels.iter().cloned().zip(probs).collect())
    }

    fn recipe(&self) -> &'static str {
        "ctclip"
    }
}
