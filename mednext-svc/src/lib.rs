//! mednext-svc: the MedNeXt 3-D classifier (reference §3.5) as a `ct.v1.ModelService`.
//!
//! Recipe (MONAI semantics, in `ct_volume::recipe::mednext`): `Spacingd` to (1.0, 1.0, 1.5) mm
//! (bilinear, border padding), clip to [-1000, 1000] HU, symmetric zero pad + centre crop to
//! (320, 320, 224), mean/std normalisation over non-zero voxels -> `image` `[1, 1, 320, 320, 224]`
//! in float16 (the reference's default) or float32, as the manifest says. The reference's body
//! crop (`crop_by_body_part`) is off by default and not implemented.
//!
//! Output: `logits` `[1, N]` -> sigmoid (default) or softmax, over the manifest's N labels (the
//! reference's 22 class names, `normal` included, live in its config, which is not public).

use ct_volume::{MednextParams, mednext_tensor};
use model_server::bundle::Activation;
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, DType, Input, ModelError, Runner, Study, activate};

/// `[recipe]` of a mednext bundle.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeSection {
    #[allow(dead_code)]
    kind: String,
    spacing_mm: [f64; 3],
    hu_clip: [f32; 2],
    roi: [usize; 3],
}

pub struct Mednext {
    params: MednextParams,
    dtype: DType,
    labels: Vec<String>,
    bundle: Bundle,
}

impl Adapter for Mednext {
    const KIND: &'static str = "mednext";
    const DEFAULT_PORT: u16 = 50055;

    fn load(bundle: &Bundle, _options: &AdapterOptions) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        bundle.expect_recipe("mednext")?;
        let r: RecipeSection = m.recipe(&bundle.dir)?;
        let params = MednextParams { spacing_mm: r.spacing_mm, hu_clip: r.hu_clip, roi: r.roi };
        params.validate().map_err(|e| bundle.mismatch("recipe", "positive spacing, an ordered clip range, a non-empty roi", e.to_string()))?;
        bundle.expect_io_counts(1, 1, "image")?;
        let [i, j, k] = r.roi.map(|v| Some(v as i64));
        bundle.expect_tensor("inputs[0]", &m.inputs[0], &[DType::Float16, DType::Float32], &[Some(1), Some(1), i, j, k])?;
        let n = m.labels.names.len();
        if n == 0 {
            return Err(bundle.mismatch("labels.names", "the model's class names", "none"));
        }
        bundle.expect_tensor("outputs[0]", &m.outputs[0], &[DType::Float16, DType::Float32], &[Some(1), Some(n as i64)])?;
        if !matches!(m.labels.activation, Activation::Sigmoid | Activation::Softmax) {
            return Err(bundle.mismatch("labels.activation", "sigmoid or softmax", format!("{:?}", m.labels.activation)));
        }
        Ok(Self { params, dtype: m.inputs[0].dtype, labels: m.labels.names.clone(), bundle: bundle.clone() })
    }

    fn predict(&self, study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError> {
        let x = run.time("recipe", || mednext_tensor(&study.volume, &self.params)).map_err(ModelError::unprocessable)?;
        let [i, j, k] = self.params.roi.map(|v| v as i64);
        let input = run.time("recipe", || Input::float(self.dtype, vec![1, 1, i, j, k], x));
        let out = run.run(vec![input])?;
        let probs = run.time("postprocess", || activate(&self.bundle.manifest.labels, &out[0], self.labels.len()))?;
        Ok(self.labels.iter().cloned().zip(probs).collect())
    }

    fn recipe(&self) -> &'static str {
        "mednext"
    }
}
