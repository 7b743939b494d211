//! fvlm-svc: the fVLM organ-finding model (reference §3.6) as a `ct.v1.ModelService`.
//!
//! Organs come from masks: the lung from the preprocessing lung mask carried in the volume
//! stream (this service needs it). The reference segments heart and aorta with TotalSegmentator;
//! a bundle may later carry a segmentation graph for them. Without one those organs are skipped,
//! exactly as the reference does when its segmenter finds nothing, and their items are absent.
//!
//! Recipe (`ct_volume::recipe::fvlm`): HU window [-1150, 350] -> [0, 1], ROI = mask bounding box
//! with margin (5, 20, 20), zero pad to at least (112, 256, 352), per organ the widened organ box
//! resized (trilinear image, legacy-nearest mask) to (112, 288, 352).
//!
//! Graph contract, one run per present organ: `image` f32 `[1, 1, 112, 288, 352]`, `organ_mask`
//! f32 (binary) of the same shape, `organ` int64 `[1]` (index in `[fvlm] organs`) -> `logits` f32
//! `[1, 18, 2]` = `[negative, positive]` per item; the organ's items get `softmax(pair)[1]`.

use ct_volume::{FvlmParams, fvlm_inputs};
use model_server::bundle::Activation;
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, DType, Input, ModelError, Runner, Study, adapter::softmax_pair};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeSection {
    #[allow(dead_code)]
    kind: String,
    hu_window: [f32; 2],
    roi_margin: [usize; 3],
    min_pad: [usize; 3],
    organ_size: [usize; 3],
}

/// `[fvlm]` of a bundle.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FvlmSection {
    organs: Vec<String>,
    mask_ids: Vec<u8>,
    item_organs: Vec<String>,
    #[serde(default)]
    segmentation: Option<String>,
}

pub struct Fvlm {
    params: FvlmParams,
    organs: Vec<String>,
    labels: Vec<String>,
    /// Organ index of each label.
    item_organ: Vec<usize>,
}

impl Adapter for Fvlm {
    const KIND: &'static str = "fvlm";
    const DEFAULT_PORT: u16 = 50056;
    const NEEDS_LUNG_MASK: bool = true;

    fn load(bundle: &Bundle, _options: &AdapterOptions) -> Result<Self, BundleError> {
        let m = &bundle.manifest;
        bundle.expect_recipe("fvlm")?;
        let r: RecipeSection = m.recipe(&bundle.dir)?;
        let f: FvlmSection = m.section(&bundle.dir, "fvlm")?.ok_or_else(|| bundle.mismatch("fvlm", "an [fvlm] section (organs, mask_ids, item_organs)", "none"))?;
        if let Some(seg) = &f.segmentation {
            return Err(bundle.mismatch("fvlm.segmentation", "absent (segmentation graphs for heart/aorta are not supported by this version)", seg.clone()));
        }
        if f.organs.len() != f.mask_ids.len() {
            return Err(bundle.mismatch("fvlm.mask_ids", format!("{} ids (one per organ)", f.organs.len()), f.mask_ids.len().to_string()));
        }
        if f.organs.first().map(String::as_str) != Some("lung") || f.mask_ids.first() != Some(&1) {
            return Err(bundle.mismatch("fvlm.organs[0]", "lung with mask id 1 (the preprocessing lung mask)", format!("{:?} id {:?}", f.organs.first(), f.mask_ids.first())));
        }
        let params = FvlmParams { hu_window: r.hu_window, roi_margin: r.roi_margin, min_pad: r.min_pad, organ_size: r.organ_size, mask_ids: f.mask_ids.clone() };
        params.validate().map_err(|e| bundle.mismatch("recipe", "a valid window, organ size and mask ids", e.to_string()))?;
        let n = m.labels.names.len();
        if f.item_organs.len() != n {
            return Err(bundle.mismatch("fvlm.item_organs", format!("{n} entries (one per label)"), f.item_organs.len().to_string()));
        }
        let item_organ = f
            .item_organs
            .iter()
            .map(|o| f.organs.iter().position(|x| x == o).ok_or_else(|| bundle.mismatch("fvlm.item_organs", format!("one of {:?}", f.organs), o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        bundle.expect_io_counts(3, 1, "image, organ_mask, organ")?;
        let size: Vec<Option<i64>> = [1, 1].into_iter().chain(r.organ_size.map(|v| v as i64)).map(Some).collect();
        bundle.expect_tensor("inputs[0]", &m.inputs[0], &[DType::Float32], &size)?;
        bundle.expect_tensor("inputs[1]", &m.inputs[1], &[DType::Float32], &size)?;
        bundle.expect_tensor("inputs[2]", &m.inputs[2], &[DType::Int64], &[Some(1)])?;
        bundle.expect_tensor("outputs[0]", &m.outputs[0], &[DType::Float32], &[Some(1), Some(n as i64), Some(2)])?;
        if m.labels.activation != Activation::SoftmaxPair || m.labels.positive_index != Some(1) {
            return Err(bundle.mismatch("labels.activation", "softmax-pair with positive_index 1", format!("{:?} {:?}", m.labels.activation, m.labels.positive_index)));
        }
        Ok(Self { params, organs: f.organs, labels: m.labels.names.clone(), item_organ })
    }

    fn predict(&self, study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError> {
        let mask = study.lung_mask.as_ref().ok_or(ModelError::MissingLungMask)?;
        let inputs = run.time("recipe", || fvlm_inputs(&study.volume, mask.view(), &self.params)).map_err(ModelError::unprocessable)?;
        let size: Vec<i64> = [1, 1].into_iter().chain(self.params.organ_size.map(|v| v as i64)).collect();
        let mut values = Vec::new();
        for organ in inputs.into_iter().filter(|o| o.present) {
            let idx = organ.organ_index;
            let out = run.run(vec![Input::F32(size.clone(), organ.image), Input::F32(size.clone(), organ.mask), Input::I64(vec![1], vec![idx as i64])])?;
            if out[0].data.len() != 2 * self.labels.len() {
                return Err(ModelError::BadOutput(format!("{} logits for {} items", out[0].data.len(), self.labels.len())));
            }
            for (n, pair) in out[0].data.chunks_exact(2).enumerate() {
                if self.item_organ[n] == idx {
                    values.push((self.labels[n].clone(), softmax_pair(pair, 1)));
                }
            }
        }
        tracing::debug!(organs = ?self.organs, items = values.len(), "fvlm items");
        Ok(values)
    }

    fn recipe(&self) -> &'static str {
        "fvlm"
    }
}
