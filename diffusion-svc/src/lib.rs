//! diffusion-svc: the diffusion anomaly classifier (reference §3.4.1) as a `ct.v1.ModelService`.
//!
//! Recipe: the CT-CLIP tensor (§3.0), depth slices `[slice_start, slice_end)` (12..228 = 216
//! slices) each bilinear-resized to 256 x 256 (PyTorch, align_corners=False), run in batches
//! (`batch_size`, reference 16) with timestep 0. Per slice `p = softmax(logits)[1]`; the service
//! emits `diffusion_classifier_mean_probability`, `_max_probability` and `_std_probability`
//! (population std), as the reference's feature builder names them.
//!
//! Graph contract: `image` f32 `[-1, 1, H, W]`, `timesteps` int64 `[-1]` -> `logits` f32 `[-1, 2]`.

use ct_volume::{CTCLIP_SHAPE, DiffusionParams, ctclip_tensor, diffusion_slices};
use model_server::bundle::Activation;
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, DType, Input, ModelError, Runner, Study, adapter::softmax_pair};

/// The three outputs, in order.
pub const LABELS: [&str; 3] = ["diffusion_classifier_mean_probability", "diffusion_classifier_max_probability", "diffusion_classifier_std_probability"];

/// `[recipe]` of a diffusion bundle.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeSection {
    #[allow(dead_code)]
    kind: String,
    slice_start: usize,
    slice_end: usize,
    size: [usize; 2],
    batch_size: usize,
    timestep: i64,
}

pub struct Diffusion {
    params: DiffusionParams,
    batch_size: usize,
    timestep: i64,
}

impl Adapter for Diffusion {
    const KIND: &'static str = "diffusion";
    const DEFAULT_PORT: u16 = 50054;

    fn load(bundle: &Bundle, options: &AdapterOptions) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        bundle.expect_recipe("diffusion")?;
        let r: RecipeSection = m.recipe(&bundle.dir)?;
        let params = DiffusionParams { slice_start: r.slice_start, slice_end: r.slice_end, size: r.size };
        params.validate(CTCLIP_SHAPE[1]).map_err(|e| bundle.mismatch("recipe", "a slice range inside the 240 CT-CLIP slices and a non-empty size", e.to_string()))?;
        let batch_size = options.batch_size.unwrap_or(r.batch_size);
        if batch_size == 0 {
            return Err(bundle.mismatch("recipe.batch_size", ">= 1", "0"));
        }
        bundle.expect_io_counts(2, 1, "image, timesteps")?;
        let [h, w] = r.size.map(|v| Some(v as i64));
        bundle.expect_tensor("inputs[0]", &m.inputs[0], &[DType::Float32], &[None, Some(1), h, w])?;
        bundle.expect_tensor("inputs[1]", &m.inputs[1], &[DType::Int64], &[None])?;
        bundle.expect_tensor("outputs[0]", &m.outputs[0], &[DType::Float32], &[None, Some(2)])?;
        for (field, want, found) in [("inputs[0].shape[0]", -1, m.inputs[0].shape[0]), ("inputs[1].shape[0]", -1, m.inputs[1].shape[0])] {
            if found != want && found != batch_size as i64 {
                return Err(bundle.mismatch(field, format!("-1 (dynamic) or the batch size {batch_size}"), found.to_string()));
            }
        }
        if m.labels.activation != Activation::SoftmaxPair {
            return Err(bundle.mismatch("labels.activation", "softmax-pair", format!("{:?}", m.labels.activation)));
        }
        if m.labels.names != LABELS {
            return Err(bundle.mismatch("labels.names", format!("{LABELS:?}"), format!("{:?}", m.labels.names)));
        }
        Ok(Self { params, batch_size, timestep: r.timestep })
    }

    fn predict(&self, study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError> {
        let tensor = run.time("recipe", || ctclip_tensor(&study.volume)).map_err(ModelError::unprocessable)?;
        let [h, w] = self.params.size;
        let mut probs: Vec<f64> = Vec::with_capacity(self.params.n_slices());
        for range in self.params.batches(self.batch_size) {
            let n = range.len();
            let x = run.time("recipe", || diffusion_slices(&tensor, range, self.params.size)).map_err(ModelError::unprocessable)?;
            let out = run.run(vec![Input::F32(vec![n as i64, 1, h as i64, w as i64], x), Input::I64(vec![n as i64], vec![self.timestep; n])])?;
            if out[0].data.len() != 2 * n {
                return Err(ModelError::BadOutput(format!("{} logits for a batch of {n} slices", out[0].data.len())));
            }
            probs.extend(out[0].data.chunks_exact(2).map(|pair| softmax_pair(pair, 1)));
        }
        let stats = run.time("postprocess", || mean_max_std(&probs));
        Ok(LABELS.iter().map(|s| s.to_string()).zip(stats).collect())
    }

    fn recipe(&self) -> &'static str {
        "diffusion"
    }
}

/// Mean, max and population standard deviation (numpy's `std`, ddof 0).
pub fn mean_max_std(v: &[f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    [mean, max, var.sqrt()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn population_statistics() {
        let [mean, max, std] = super::mean_max_std(&[0.1, 0.3, 0.5, 0.9]);
        assert!((mean - 0.45).abs() < 1e-12);
        assert_eq!(max, 0.9);
        // numpy.std([0.1, 0.3, 0.5, 0.9]) = 0.29580398915498085
        assert!((std - 0.295_803_989_154_980_85).abs() < 1e-12);
        assert_eq!(super::mean_max_std(&[0.7]), [0.7, 0.7, 0.0]);
    }
}
