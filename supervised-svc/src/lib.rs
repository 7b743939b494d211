//! supervised-svc: the supervised CT-CLIP-encoder classifier (reference §3.3) as a
//! `ct.v1.ModelService`.
//!
//! Input: recipe `ctclip` (§3.0) -> `image` f32 `[1, 1, 240, 480, 480]`.
//! Output: `logits` f32 `[1, N]` -> sigmoid; labels from the manifest (the checkpoint's
//! `target_pathologies` when the exporter found them), defaulting to the reference's 15 MosMed
//! names when the manifest lists none.

use ct_volume::{CTCLIP_INPUT_SHAPE, ctclip_tensor};
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, DType, Input, ModelError, Runner, Study, activate, bundle::Activation};

/// The reference's default labels (`MOSMED_PATHOLOGIES`), in order.
pub const MOSMED_PATHOLOGIES: [&str; 15] = [
    "ribs_fracture",
    "pleural_effusion",
    "aorta_pathology",
    "pulmonary_trunk_pathology",
    "cancer",
    "atelectasis",
    "covid",
    "infiltrate",
    "emphysema",
    "paracardial_fat_pathology",
    "fibrosis",
    "airiness_decrease",
    "pneumothorax",
    "coronary_calcium",
    "osteo_fracture",
];

pub struct Supervised {
    labels: Vec<String>,
    bundle: Bundle,
}

impl Adapter for Supervised {
    const KIND: &'static str = "supervised";
    const DEFAULT_PORT: u16 = 50053;

    fn load(bundle: &Bundle, _options: &AdapterOptions) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        bundle.expect_recipe("ctclip")?;
        bundle.expect_io_counts(1, 1, "image")?;
        let labels: Vec<String> = if m.labels.names.is_empty() { MOSMED_PATHOLOGIES.iter().map(|s| s.to_string()).collect() } else { m.labels.names.clone() };
        let shape: Vec<Option<i64>> = CTCLIP_INPUT_SHAPE.iter().map(|&d| Some(d)).collect();
        bundle.expect_tensor("inputs[0]", &m.inputs[0], &[DType::Float32], &shape)?;
        bundle.expect_tensor("outputs[0]", &m.outputs[0], &[DType::Float32], &[Some(1), Some(labels.len() as i64)])?;
        if m.labels.activation != Activation::Sigmoid {
            return Err(bundle.mismatch("labels.activation", "sigmoid", format!("{:?}", m.labels.activation)));
        }
        Ok(Self { labels, bundle: bundle.clone() })
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
