//! The fVLM per-organ inputs (celsus-reference §3.6.3), computed directly on the canonical
//! volume and an organ mask.
//!
//! Axes: fVLM works in `[k, j, i]` (MONAI `Transposed(0, 3, 2, 1)` of the NIfTI `[i, j, k]`),
//! which is exactly the storage order of [`crate::Volume`] and of the mask given here. Every
//! `[usize; 3]` of this module is `(k, j, i)`.
//!
//! Steps:
//! 1. window: MONAI `ScaleIntensityRanged(a_min, a_max, b_min = 0, b_max = 1, clip = True)`,
//!    `clamp((x - a_min) / (a_max - a_min), 0, 1)` in f32 ([`fvlm_window`]).
//! 2. ROI: bounding box of `mask > 0` (min and max index, max inclusive);
//!    `lo = max(min - margin, 0)`, `hi = min(max + margin, shape)`, kept `[lo, hi)` (so the box
//!    reaches `margin - 1` voxels beyond the max, the reference's quirk). Same crop on the mask.
//! 3. `SpatialPadd(min_pad)`: axes shorter than `min_pad` padded with 0, `floor(d / 2)` before.
//! 4. Organs: every id of `mask_ids` (in that order) with voxels in the padded mask.
//! 5. Per organ: box of `mask == id` (max exclusive), widened by `int((max - min) * 0.1 / 2)` on
//!    each side and clamped to the padded volume; the image crop is resized with PyTorch
//!    `F.interpolate(mode = "trilinear", align_corners = False)` and the binary organ mask with
//!    legacy `mode = "nearest"` (`src = min(floor(dst * (in / out)), in - 1)` in f32) to
//!    `organ_size` (default `(112, 288, 352)`).
//!
//! Output per organ: image and mask `[1, 1, organ_size]` f32 in C order (`(k, j, i)`, i fastest);
//! the mask is binary 0/1 (the reference's "mask = organ id" and the fp16 cast are the model
//! service's). Nothing padded or cropped is materialised: the resizes read the volume through
//! the crop/pad index mapping, separably (i, then j, then k; ATen's nested order), in parallel
//! over output slices.

use super::{LinearTap, torch_linear_tap};
use crate::{Volume, VoxelView};
use ndarray::ArrayView3;
use rayon::prelude::*;

/// Recipe parameters (`[recipe] kind = "fvlm"` plus `[fvlm] mask_ids` of the model bundle).
#[derive(Debug, Clone, PartialEq)]
pub struct FvlmParams {
    /// HU window `[a_min, a_max]` mapped to `[0, 1]` (reference `[-1150, 350]`).
    pub hu_window: [f32; 2],
    /// ROI margin `(k, j, i)` around the mask box (reference `(5, 20, 20)`).
    pub roi_margin: [usize; 3],
    /// Minimum size `(k, j, i)` after the symmetric zero padding (reference `(112, 256, 352)`).
    pub min_pad: [usize; 3],
    /// Output size `(k, j, i)` of every organ input (reference `(112, 288, 352)`).
    pub organ_size: [usize; 3],
    /// Mask value of each organ, in the order of the model's `organ` index (default
    /// `[1, 2, 3, 4]` = lung, heart, esophagus, aorta; the reference's masks never hold 3).
    pub mask_ids: Vec<u8>,
}

impl Default for FvlmParams {
    fn default() -> Self {
        Self { hu_window: [-1150.0, 350.0], roi_margin: [5, 20, 20], min_pad: [112, 256, 352], organ_size: [112, 288, 352], mask_ids: vec![1, 2, 3, 4] }
    }
}

impl FvlmParams {
    /// Checks the window (finite, `a_min < a_max`), the organ size (no zero axis) and the mask
    /// ids (non-empty, non-zero, distinct).
    pub fn validate(&self) -> Result<(), FvlmError> {
        let [a, b] = self.hu_window;
        if !a.is_finite() || !b.is_finite() || a >= b {
            return Err(FvlmError::BadWindow { window: self.hu_window });
        }
        if self.organ_size.contains(&0) {
            return Err(FvlmError::ZeroOrganSize { size: self.organ_size });
        }
        let ids = &self.mask_ids;
        if ids.is_empty() || ids.contains(&0) || (1..ids.len()).any(|n| ids[..n].contains(&ids[n])) {
            return Err(FvlmError::BadMaskIds { ids: ids.clone() });
        }
        Ok(())
    }
}

/// Invalid fVLM recipe inputs or parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FvlmError {
    #[error("mask shape {mask:?} differs from the volume shape {volume:?} ([nk, nj, ni])")]
    ShapeMismatch { volume: [usize; 3], mask: [usize; 3] },
    #[error("HU window must be finite with a_min < a_max, got {window:?}")]
    BadWindow { window: [f32; 2] },
    #[error("organ size {size:?} has a zero axis")]
    ZeroOrganSize { size: [usize; 3] },
    #[error("mask ids must be non-empty, non-zero and distinct, got {ids:?}")]
    BadMaskIds { ids: Vec<u8> },
    #[error("organ box [{lo:?}, {hi:?}) is empty or outside the padded volume {padded:?}")]
    BadOrganBox { lo: [usize; 3], hi: [usize; 3], padded: [usize; 3] },
}

/// The ROI crop and padding, `(k, j, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FvlmRoi {
    /// First kept volume index.
    pub lo: [usize; 3],
    /// One past the last kept volume index.
    pub hi: [usize; 3],
    /// Zeros before the kept region in the padded volume.
    pub pad_before: [usize; 3],
    /// Shape of the padded volume: `max(hi - lo, min_pad)`.
    pub padded: [usize; 3],
}

impl FvlmRoi {
    /// Volume index of padded index `p` along `axis`, `None` in the padding.
    pub fn to_volume(&self, axis: usize, p: usize) -> Option<usize> {
        let r = p.checked_sub(self.pad_before[axis])?;
        (r < self.hi[axis] - self.lo[axis]).then_some(self.lo[axis] + r)
    }
}

/// One organ present in the padded mask, `(k, j, i)` in padded coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FvlmOrganBox {
    /// Position of the organ in [`FvlmParams::mask_ids`] (the model's `organ` input).
    pub organ_index: usize,
    /// Mask value of the organ.
    pub mask_id: u8,
    /// Organ voxels in the padded mask.
    pub voxels: u64,
    /// Widened, clamped box: first index.
    pub lo: [usize; 3],
    /// Widened, clamped box: one past the last index.
    pub hi: [usize; 3],
}

/// ROI and organ boxes of one study. `roi` is `None` (and `organs` empty) when the mask has no
/// voxel `> 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FvlmPlan {
    /// ROI crop and padding (`None` for an empty mask).
    pub roi: Option<FvlmRoi>,
    /// Organs with voxels, in [`FvlmParams::mask_ids`] order.
    pub organs: Vec<FvlmOrganBox>,
}

/// One organ's model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct FvlmOrganInput {
    /// Position of the organ in [`FvlmParams::mask_ids`] (the model's `organ` input).
    pub organ_index: usize,
    /// Mask value of the organ.
    pub mask_id: u8,
    /// Windowed image `[1, 1, organ_size]` f32, C order `(k, j, i)`.
    pub image: Vec<f32>,
    /// Binary (0/1) organ mask, same layout.
    pub mask: Vec<f32>,
    /// Whether any organ voxel survived the nearest-neighbour resize.
    pub present: bool,
}

/// MONAI `ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)` of one HU value, in f32.
pub fn fvlm_window(hu: f32, window: [f32; 2]) -> f32 {
    let [a_min, a_max] = window;
    // `* (b_max - b_min) + b_min` with b = (0, 1) is exact and omitted
    ((hu - a_min) / (a_max - a_min)).clamp(0.0, 1.0)
}

/// Per-id statistics: voxel count and min / max index (inclusive), `(k, j, i)`.
#[derive(Debug, Clone, Copy)]
struct IdStat {
    count: u64,
    min: [usize; 3],
    max: [usize; 3],
}

impl IdStat {
    const EMPTY: Self = Self { count: 0, min: [usize::MAX; 3], max: [0; 3] };

    fn merge(&mut self, o: &Self) {
        self.count += o.count;
        for a in 0..3 {
            self.min[a] = self.min[a].min(o.min[a]);
            self.max[a] = self.max[a].max(o.max[a]);
        }
    }
}

/// Statistics of every mask value inside the box `[lo, hi)`.
fn scan(mask: &[u8], shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<IdStat> {
    let [_, nj, ni] = shape;
    (lo[0]..hi[0])
        .into_par_iter()
        .fold(
            || vec![IdStat::EMPTY; 256],
            |mut st, k| {
                for j in lo[1]..hi[1] {
                    let row = &mask[(k * nj + j) * ni..][..ni];
                    for (i, &v) in row.iter().enumerate().take(hi[2]).skip(lo[2]) {
                        if v != 0 {
                            st[usize::from(v)].merge(&IdStat { count: 1, min: [k, j, i], max: [k, j, i] });
                        }
                    }
                }
                st
            },
        )
        .reduce(
            || vec![IdStat::EMPTY; 256],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.merge(y);
                }
                a
            },
        )
}

fn dims3(shape: &[usize]) -> [usize; 3] {
    [shape[0], shape[1], shape[2]]
}

/// ROI, padding and organ boxes from the organ mask (`[nk, nj, ni]`, the volume's shape).
pub fn fvlm_plan(mask: ArrayView3<'_, u8>, params: &FvlmParams) -> Result<FvlmPlan, FvlmError> {
    params.validate()?;
    let shape = dims3(mask.shape());
    let mask = mask.as_standard_layout();
    let data = mask.as_slice().expect("standard layout");
    let mut stats = scan(data, shape, [0; 3], shape);
    let mut any = IdStat::EMPTY;
    for s in &stats[1..] {
        any.merge(s);
    }
    if any.count == 0 {
        return Ok(FvlmPlan { roi: None, organs: Vec::new() });
    }
    let m = params.roi_margin;
    let lo: [usize; 3] = std::array::from_fn(|a| any.min[a].saturating_sub(m[a]));
    let hi: [usize; 3] = std::array::from_fn(|a| (any.max[a] + m[a]).min(shape[a]).max(lo[a]));
    if (0..3).any(|a| hi[a] <= any.max[a]) {
        // a zero margin cuts the last row of the box off (reference quirk): count inside the ROI
        stats = scan(data, shape, lo, hi);
    }
    let padded: [usize; 3] = std::array::from_fn(|a| (hi[a] - lo[a]).max(params.min_pad[a]));
    let pad_before: [usize; 3] = std::array::from_fn(|a| (padded[a] - (hi[a] - lo[a])) / 2);
    let roi = FvlmRoi { lo, hi, pad_before, padded };
    let organs = params
        .mask_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| stats[usize::from(**id)].count > 0)
        .map(|(organ_index, &mask_id)| {
            let s = stats[usize::from(mask_id)];
            let mut b_lo = [0; 3];
            let mut b_hi = [0; 3];
            for a in 0..3 {
                let first = s.min[a] - lo[a] + pad_before[a];
                let end = s.max[a] - lo[a] + pad_before[a] + 1;
                let widen = ((end - first) as f64 * 0.1 / 2.0) as usize;
                b_lo[a] = first.saturating_sub(widen);
                b_hi[a] = (end + widen).min(padded[a]);
            }
            FvlmOrganBox { organ_index, mask_id, voxels: s.count, lo: b_lo, hi: b_hi }
        })
        .collect();
    Ok(FvlmPlan { roi: Some(roi), organs })
}

/// Legacy PyTorch `nearest` source index (`nearest_idx` of ATen, scale in f32).
pub fn torch_nearest_index(in_size: usize, out_size: usize, dst: usize) -> usize {
    if in_size == out_size {
        dst
    } else if out_size == 2 * in_size {
        dst >> 1
    } else {
        let scale = in_size as f32 / out_size as f32;
        ((dst as f32 * scale).floor() as usize).min(in_size - 1)
    }
}

/// One axis of an organ resize, indices local to the organ box.
struct OrganAxis {
    /// Linear taps of every output sample.
    taps: Vec<LinearTap>,
    /// Nearest source of every output sample.
    nearest: Vec<usize>,
    /// Volume index of every box position (`None` in the padding).
    vol: Vec<Option<usize>>,
}

impl OrganAxis {
    fn new(roi: &FvlmRoi, axis: usize, lo: usize, hi: usize, out: usize) -> Self {
        let n = hi - lo;
        Self {
            taps: (0..out).map(|d| torch_linear_tap(n, out, d)).collect(),
            nearest: (0..out).map(|d| torch_nearest_index(n, out, d)).collect(),
            vol: (lo..hi).map(|p| roi.to_volume(axis, p)).collect(),
        }
    }
}

/// The image and binary mask of one organ (`roi` and `organ` from the same [`fvlm_plan`]; see
/// the module doc for the layout). `mask`: `[nk, nj, ni]` like the volume.
pub fn fvlm_organ_input(volume: &Volume, mask: ArrayView3<'_, u8>, roi: &FvlmRoi, organ: &FvlmOrganBox, params: &FvlmParams) -> Result<FvlmOrganInput, FvlmError> {
    params.validate()?;
    let shape = volume.voxels().shape();
    let mshape = dims3(mask.shape());
    if shape != mshape {
        return Err(FvlmError::ShapeMismatch { volume: shape, mask: mshape });
    }
    if (0..3).any(|a| organ.lo[a] >= organ.hi[a] || organ.hi[a] > roi.padded[a]) {
        return Err(FvlmError::BadOrganBox { lo: organ.lo, hi: organ.hi, padded: roi.padded });
    }
    let mask = mask.as_standard_layout();
    let mdata = mask.as_slice().expect("standard layout");
    let [ok, oj, oi] = params.organ_size;
    let ax: [OrganAxis; 3] = std::array::from_fn(|a| OrganAxis::new(roi, a, organ.lo[a], organ.hi[a], params.organ_size[a]));
    let plane = oj * oi;

    let mut image = vec![0f32; ok * plane];
    match volume.voxels() {
        VoxelView::I16(a) => resize_image(a.as_slice().expect("standard layout"), shape, &ax, [oj, oi], params.hu_window, &mut image),
        VoxelView::F32(a) => resize_image(a.as_slice().expect("standard layout"), shape, &ax, [oj, oi], params.hu_window, &mut image),
    }

    let mut out_mask = vec![0f32; ok * plane];
    let [_, nj, ni] = shape;
    let id = organ.mask_id;
    out_mask.par_chunks_mut(plane).zip(ax[0].nearest.par_iter()).for_each(|(p, &kb)| {
        let Some(k) = ax[0].vol[kb] else { return };
        for (row, &jb) in p.chunks_exact_mut(oi).zip(&ax[1].nearest) {
            let Some(j) = ax[1].vol[jb] else { continue };
            let src = &mdata[(k * nj + j) * ni..][..ni];
            for (o, &ib) in row.iter_mut().zip(&ax[2].nearest) {
                if let Some(i) = ax[2].vol[ib] {
                    *o = f32::from(u8::from(src[i] == id));
                }
            }
        }
    });
    let present = out_mask.par_iter().any(|&v| v != 0.0);
    Ok(FvlmOrganInput { organ_index: organ.organ_index, mask_id: id, image, mask: out_mask, present })
}

/// Trilinear resize of the windowed, cropped and padded volume into `out` (`[ok][oj][oi]`),
/// separable: i pass of every source row of the box (windowed once per voxel), j pass (cached
/// per source slice, two slices kept), k pass.
fn resize_image<T: Copy + Into<f32> + Sync>(src: &[T], shape: [usize; 3], ax: &[OrganAxis; 3], [oj, oi]: [usize; 2], window: [f32; 2], out: &mut [f32]) {
    let [_, nj, ni] = shape;
    let plane = oj * oi;
    let (sj, si) = (ax[1].vol.len(), ax[2].vol.len());
    let n_out_k = ax[0].taps.len();
    let threads = rayon::current_num_threads().max(1);
    let block = n_out_k.div_ceil(threads * 4).max(1);
    // in-plane resize of box slice kb into dst [oj][oi]; tmp: [sj][oi] then a windowed row
    let in_plane = |kb: usize, tmp: &mut Vec<f32>, dst: &mut [f32]| {
        let Some(k) = ax[0].vol[kb] else {
            dst.fill(0.0);
            return;
        };
        tmp.resize(sj * oi + si, 0.0);
        let (rows, wrow) = tmp.split_at_mut(sj * oi);
        for (t_row, jv) in rows.chunks_exact_mut(oi).zip(&ax[1].vol) {
            let Some(j) = *jv else {
                t_row.fill(0.0);
                continue;
            };
            let row = &src[(k * nj + j) * ni..][..ni];
            for (w, iv) in wrow.iter_mut().zip(&ax[2].vol) {
                *w = iv.map_or(0.0, |i| fvlm_window(row[i].into(), window));
            }
            for (o, t) in t_row.iter_mut().zip(&ax[2].taps) {
                *o = wrow[t.i0] * t.w0 + wrow[t.i1] * t.w1;
            }
        }
        for (d_row, t) in dst.chunks_exact_mut(oi).zip(&ax[1].taps) {
            let (r0, r1) = (&rows[t.i0 * oi..][..oi], &rows[t.i1 * oi..][..oi]);
            for ((o, &a), &b) in d_row.iter_mut().zip(r0).zip(r1) {
                *o = a * t.w0 + b * t.w1;
            }
        }
    };
    out.par_chunks_mut(plane * block).enumerate().for_each(|(b, chunk)| {
        let mut tmp = Vec::new();
        // two most recent in-plane resized box slices: (slice, [oj][oi])
        let mut cache: [(usize, Vec<f32>); 2] = [(usize::MAX, vec![0f32; plane]), (usize::MAX, vec![0f32; plane])];
        for (p, dst) in chunk.chunks_mut(plane).enumerate() {
            let t = ax[0].taps[b * block + p];
            for kb in [t.i0, t.i1] {
                if cache[0].0 != kb && cache[1].0 != kb {
                    cache.swap(0, 1);
                    cache[0].0 = kb;
                    in_plane(kb, &mut tmp, &mut cache[0].1);
                }
            }
            let a = if cache[0].0 == t.i0 { &cache[0].1 } else { &cache[1].1 };
            let c = if cache[0].0 == t.i1 { &cache[0].1 } else { &cache[1].1 };
            for ((o, &x0), &x1) in dst.iter_mut().zip(a).zip(c) {
                *o = x0 * t.w0 + x1 * t.w1;
            }
        }
    });
}

/// All organ inputs of a study, in [`FvlmParams::mask_ids`] order (organs without voxels
/// skipped; an empty mask gives an empty list). `mask`: `[nk, nj, ni]` like the volume.
/// Each organ holds two `organ_size` tensors; [`fvlm_plan`] + [`fvlm_organ_input`] compute
/// them one at a time.
pub fn fvlm_inputs(volume: &Volume, mask: ArrayView3<'_, u8>, params: &FvlmParams) -> Result<Vec<FvlmOrganInput>, FvlmError> {
    let shape = volume.voxels().shape();
    let mshape = dims3(mask.shape());
    if shape != mshape {
        return Err(FvlmError::ShapeMismatch { volume: shape, mask: mshape });
    }
    let plan = fvlm_plan(mask, params)?;
    let Some(roi) = plan.roi else { return Ok(Vec::new()) };
    plan.organs.iter().map(|o| fvlm_organ_input(volume, mask, &roi, o, params)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Geometry, Voxels};
    use ndarray::Array3;
    use proptest::prelude::*;

    fn volume(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> i16) -> Volume {
        let [nk, nj, ni] = shape;
        let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| f(k, j, i));
        let geometry = Geometry {
            spacing_mm: [0.8, 0.8, 2.0],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin_mm: [0.0; 3],
            slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, k as f64 * 2.0]).collect(),
        };
        Volume::new(Voxels::I16(data), geometry).unwrap()
    }

    fn small(organ_size: [usize; 3], min_pad: [usize; 3]) -> FvlmParams {
        FvlmParams { roi_margin: [1, 2, 2], min_pad, organ_size, ..FvlmParams::default() }
    }

    /// mask with a lung block, a heart block and a single aorta voxel
    fn mask(shape: [usize; 3]) -> Array3<u8> {
        let [nk, nj, ni] = shape;
        Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| {
            if (3..9).contains(&k) && (4..14).contains(&j) && (5..20).contains(&i) {
                1
            } else if (5..7).contains(&k) && (15..18).contains(&j) && (8..12).contains(&i) {
                2
            } else if (k, j, i) == (7, 2, 21) {
                4
            } else {
                0
            }
        })
    }

    /// Direct trilinear sample of the windowed, cropped, padded volume (ATen's nested formula).
    fn naive_image(vol: &Volume, roi: &FvlmRoi, organ: &FvlmOrganBox, size: [usize; 3], d: [usize; 3]) -> f32 {
        let t: [LinearTap; 3] = std::array::from_fn(|a| torch_linear_tap(organ.hi[a] - organ.lo[a], size[a], d[a]));
        let v = |a: [usize; 3]| -> f32 {
            let idx: [Option<usize>; 3] = std::array::from_fn(|x| roi.to_volume(x, organ.lo[x] + a[x]));
            match idx {
                [Some(k), Some(j), Some(i)] => fvlm_window(vol.voxels().get(k, j, i), [-1150.0, 350.0]),
                _ => 0.0,
            }
        };
        let line = |k: usize, j: usize| v([k, j, t[2].i0]) * t[2].w0 + v([k, j, t[2].i1]) * t[2].w1;
        let plane = |k: usize| line(k, t[1].i0) * t[1].w0 + line(k, t[1].i1) * t[1].w1;
        plane(t[0].i0) * t[0].w0 + plane(t[0].i1) * t[0].w1
    }

    #[test]
    fn window_matches_monai() {
        let w = [-1150.0, 350.0];
        assert_eq!(fvlm_window(-1150.0, w), 0.0);
        assert_eq!(fvlm_window(-3000.0, w), 0.0);
        assert_eq!(fvlm_window(350.0, w), 1.0);
        assert_eq!(fvlm_window(2000.0, w), 1.0);
        assert_eq!(fvlm_window(-400.0, w), 750.0f32 / 1500.0);
    }

    #[test]
    fn plan_roi_margin_quirk_pad_and_organ_boxes() {
        let shape = [12, 20, 24];
        let m = mask(shape);
        let p = small([8, 10, 12], [16, 12, 10]);
        let plan = fvlm_plan(m.view(), &p).unwrap();
        let roi = plan.roi.unwrap();
        // nonzero box: k 3..=8, j 2..=17, i 5..=21; margin (1, 2, 2); hi = max + margin (max inclusive)
        assert_eq!(roi.lo, [2, 0, 3]);
        assert_eq!(roi.hi, [9, 19, 23]);
        // lengths (7, 19, 20) -> padded (16, 19, 20), 4 before along k
        assert_eq!(roi.padded, [16, 19, 20]);
        assert_eq!(roi.pad_before, [4, 0, 0]);
        assert_eq!(roi.to_volume(0, 3), None);
        assert_eq!(roi.to_volume(0, 4), Some(2));
        assert_eq!(roi.to_volume(0, 11), None);
        // default ids [1, 2, 3, 4]: id 3 absent -> organ indices 0, 1, 3
        let ids: Vec<_> = plan.organs.iter().map(|o| (o.organ_index, o.mask_id, o.voxels)).collect();
        assert_eq!(ids, vec![(0, 1, 6 * 10 * 15), (1, 2, 2 * 3 * 4), (3, 4, 1)]);
        // lung: padded k 5..11 (len 6 -> widen 0), j 4..14 (len 10 -> widen int(0.5) = 0),
        // i 2..17 (len 15 -> widen int(0.75) = 0)
        assert_eq!((plan.organs[0].lo, plan.organs[0].hi), ([5, 4, 2], [11, 14, 17]));
        // aorta: one voxel at padded (9, 2, 18)
        assert_eq!((plan.organs[2].lo, plan.organs[2].hi), ([9, 2, 18], [10, 3, 19]));
    }

    #[test]
    fn organ_boxes_widen_by_five_percent_each_side() {
        let shape = [40, 60, 60];
        let m = Array3::from_shape_fn((40, 60, 60), |(k, j, i)| u8::from((10..30).contains(&k) && (5..47).contains(&j) && (0..60).contains(&i)));
        let plan = fvlm_plan(m.view(), &FvlmParams { roi_margin: [5, 20, 20], min_pad: [1, 1, 1], ..FvlmParams::default() }).unwrap();
        let roi = plan.roi.unwrap();
        assert_eq!((roi.lo, roi.hi), ([5, 0, 0], [34, 60, 60]));
        let o = plan.organs[0];
        // k: 5..25 (20 -> 1 each side); j: 5..47 (42 -> int(2.1) = 2); i: 0..60 (60 -> 3, clamped)
        assert_eq!((o.lo, o.hi), ([4, 3, 0], [26, 49, 60]));
        let _ = shape;
    }

    #[test]
    fn empty_mask_gives_no_organs() {
        let vol = volume([6, 7, 8], |_, _, _| 0);
        let m = Array3::<u8>::zeros((6, 7, 8));
        assert_eq!(fvlm_plan(m.view(), &FvlmParams::default()).unwrap(), FvlmPlan { roi: None, organs: vec![] });
        assert!(fvlm_inputs(&vol, m.view(), &FvlmParams::default()).unwrap().is_empty());
        // voxels of an id not in mask_ids: ROI but no organ
        let mut m = m;
        m[[2, 3, 4]] = 3;
        let p = FvlmParams { mask_ids: vec![1, 2, 4], ..FvlmParams::default() };
        let plan = fvlm_plan(m.view(), &p).unwrap();
        assert!(plan.roi.is_some() && plan.organs.is_empty());
    }

    #[test]
    fn zero_margin_drops_the_last_index() {
        let mut m = Array3::<u8>::zeros((5, 5, 5));
        m[[1, 1, 1]] = 1;
        m[[3, 3, 3]] = 1;
        m[[3, 3, 2]] = 2; // lies on the max k/j row: cut by the ROI
        let p = FvlmParams { roi_margin: [0, 0, 0], min_pad: [1, 1, 1], ..FvlmParams::default() };
        let plan = fvlm_plan(m.view(), &p).unwrap();
        let roi = plan.roi.unwrap();
        assert_eq!((roi.lo, roi.hi), ([1, 1, 1], [3, 3, 3]));
        assert_eq!(plan.organs.len(), 1);
        assert_eq!(plan.organs[0].voxels, 1);
    }

    #[test]
    fn separable_equals_nested_and_masks_are_nearest() {
        let shape = [12, 20, 24];
        let vol = volume(shape, |k, j, i| ((k * 131 + j * 37 + i * 11) % 1700) as i16 - 1200);
        let m = mask(shape);
        let p = small([9, 13, 7], [16, 12, 10]);
        let plan = fvlm_plan(m.view(), &p).unwrap();
        let roi = plan.roi.unwrap();
        let inputs = fvlm_inputs(&vol, m.view(), &p).unwrap();
        assert_eq!(inputs.len(), 3);
        for (inp, organ) in inputs.iter().zip(&plan.organs) {
            assert_eq!((inp.organ_index, inp.mask_id), (organ.organ_index, organ.mask_id));
            assert_eq!(inp.image.len(), 9 * 13 * 7);
            assert_eq!(inp.mask.len(), 9 * 13 * 7);
            assert!(inp.present);
            for k in 0..9 {
                for j in 0..13 {
                    for i in 0..7 {
                        let x = (k * 13 + j) * 7 + i;
                        let want = naive_image(&vol, &roi, organ, p.organ_size, [k, j, i]);
                        assert_eq!(inp.image[x], want, "organ {} ({k},{j},{i})", organ.mask_id);
                        let n: [usize; 3] = std::array::from_fn(|a| torch_nearest_index(organ.hi[a] - organ.lo[a], p.organ_size[a], [k, j, i][a]));
                        let src: [Option<usize>; 3] = std::array::from_fn(|a| roi.to_volume(a, organ.lo[a] + n[a]));
                        let want = match src {
                            [Some(a), Some(b), Some(c)] => f32::from(u8::from(m[[a, b, c]] == organ.mask_id)),
                            _ => 0.0,
                        };
                        assert_eq!(inp.mask[x], want);
                    }
                }
            }
        }
    }

    #[test]
    fn one_voxel_organ_fills_the_output() {
        let shape = [12, 20, 24];
        let vol = volume(shape, |_, _, _| -400);
        let inputs = fvlm_inputs(&vol, mask(shape).view(), &small([4, 6, 8], [16, 12, 10])).unwrap();
        let aorta = &inputs[2];
        assert_eq!(aorta.mask_id, 4);
        assert!(aorta.present && aorta.mask.iter().all(|&v| v == 1.0));
        // a 1-voxel source: v * w0 + v * w1 with w0 + w1 = 1 (rounding aside)
        assert!(aorta.image.iter().all(|&v| (v - 0.5).abs() <= 1e-6));
    }

    #[test]
    fn volume_smaller_than_target_is_padded_with_zeros() {
        // the whole 6 x 7 x 8 volume is the organ; padded to (112, 256, 352) then the organ box is the volume
        let vol = volume([6, 7, 8], |_, _, _| 350);
        let m = Array3::<u8>::from_elem((6, 7, 8), 1);
        let p = FvlmParams::default();
        let plan = fvlm_plan(m.view(), &p).unwrap();
        let roi = plan.roi.unwrap();
        assert_eq!(roi.padded, [112, 256, 352]);
        assert_eq!(roi.pad_before, [53, 124, 172]);
        assert_eq!((plan.organs[0].lo, plan.organs[0].hi), ([53, 124, 172], [59, 131, 180]));
        let inputs = fvlm_inputs(&vol, m.view(), &p).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].image.len(), 112 * 288 * 352);
        assert!(inputs[0].image.iter().all(|&v| (v - 1.0).abs() <= 1e-6));
        assert!(inputs[0].mask.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn organ_box_reaching_into_the_padding() {
        // volume 4 x 5 x 6 padded to (8, 9, 10): a widened organ box can include padding
        let vol = volume([4, 5, 6], |_, _, _| 350);
        let m = Array3::<u8>::from_elem((4, 5, 6), 1);
        let p = FvlmParams { roi_margin: [1, 1, 1], min_pad: [8, 9, 10], organ_size: [8, 9, 10], ..FvlmParams::default() };
        let plan = fvlm_plan(m.view(), &p).unwrap();
        let roi = plan.roi.unwrap();
        // ROI keeps [0, max + 1) = everything; pad (2, 2, 2) before
        assert_eq!((roi.lo, roi.hi, roi.pad_before), ([0, 0, 0], [4, 5, 6], [2, 2, 2]));
        let inp = fvlm_organ_input(&vol, m.view(), &roi, &plan.organs[0], &p).unwrap();
        // organ box = the volume itself, upsampled by 2, 1.8, 1.67: inside is 1.0 everywhere
        assert!(inp.image.iter().all(|&v| (v - 1.0).abs() <= 1e-6));
        // a box enlarged by hand into the padding reads zeros there
        let wide = FvlmOrganBox { lo: [0, 0, 0], hi: [8, 9, 10], ..plan.organs[0] };
        let inp = fvlm_organ_input(&vol, m.view(), &roi, &wide, &p).unwrap();
        assert_eq!((inp.image[0], inp.mask[0]), (0.0, 0.0));
        assert_eq!((inp.image[(4 * 9 + 4) * 10 + 5], inp.mask[(4 * 9 + 4) * 10 + 5]), (1.0, 1.0));
    }

    #[test]
    fn rejects_bad_inputs() {
        let vol = volume([4, 5, 6], |_, _, _| 0);
        let m = Array3::<u8>::from_elem((4, 5, 7), 1);
        assert_eq!(fvlm_inputs(&vol, m.view(), &FvlmParams::default()), Err(FvlmError::ShapeMismatch { volume: [4, 5, 6], mask: [4, 5, 7] }));
        let m = Array3::<u8>::from_elem((4, 5, 6), 1);
        for (p, e) in [
            (FvlmParams { hu_window: [1.0, 1.0], ..FvlmParams::default() }, FvlmError::BadWindow { window: [1.0, 1.0] }),
            (FvlmParams { organ_size: [1, 0, 1], ..FvlmParams::default() }, FvlmError::ZeroOrganSize { size: [1, 0, 1] }),
            (FvlmParams { mask_ids: vec![1, 2, 1], ..FvlmParams::default() }, FvlmError::BadMaskIds { ids: vec![1, 2, 1] }),
            (FvlmParams { mask_ids: vec![0], ..FvlmParams::default() }, FvlmError::BadMaskIds { ids: vec![0] }),
            (FvlmParams { mask_ids: vec![], ..FvlmParams::default() }, FvlmError::BadMaskIds { ids: vec![] }),
        ] {
            assert_eq!(fvlm_inputs(&vol, m.view(), &p), Err(e));
        }
        let plan = fvlm_plan(m.view(), &FvlmParams::default()).unwrap();
        let roi = plan.roi.unwrap();
        let empty = FvlmOrganBox { hi: plan.organs[0].lo, ..plan.organs[0] };
        assert!(matches!(fvlm_organ_input(&vol, m.view(), &roi, &empty, &FvlmParams::default()), Err(FvlmError::BadOrganBox { .. })));
    }

    #[test]
    fn nearest_index_matches_aten() {
        // identity, exact 2x, and floor(dst * (in / out)) in f32
        assert_eq!((0..5).map(|d| torch_nearest_index(5, 5, d)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!((0..6).map(|d| torch_nearest_index(3, 6, d)).collect::<Vec<_>>(), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!((0..7).map(|d| torch_nearest_index(3, 7, d)).collect::<Vec<_>>(), vec![0, 0, 0, 1, 1, 2, 2]);
        assert_eq!((0..3).map(|d| torch_nearest_index(10, 3, d)).collect::<Vec<_>>(), vec![0, 3, 6]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn window_is_within_unit_interval(hu in -5000.0f32..5000.0, a in -2000.0f32..0.0, w in 1.0f32..3000.0) {
            let v = fvlm_window(hu, [a, a + w]);
            prop_assert!((0.0..=1.0).contains(&v));
        }

        #[test]
        fn boxes_and_outputs_have_the_target_shapes(nk in 1usize..10, nj in 1usize..12, ni in 1usize..12,
                                                    seed in 0u32..10_000, margin in 0usize..4,
                                                    pk in 1usize..12, pj in 1usize..12, pi in 1usize..12,
                                                    ok in 1usize..6, oj in 1usize..6, oi in 1usize..6) {
            let h = |k: usize, j: usize, i: usize| (k as u32 * 7 + j as u32 * 13 + i as u32 * 29 + seed).wrapping_mul(2_654_435_761) >> 28;
            let m = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| match h(k, j, i) { 0 => 1u8, 1 => 2, 2 => 4, _ => 0 });
            let vol = volume([nk, nj, ni], |k, j, i| (h(k, j, i) as i16) * 200 - 1500);
            let p = FvlmParams { roi_margin: [margin; 3], min_pad: [pk, pj, pi], organ_size: [ok, oj, oi], ..FvlmParams::default() };
            let plan = fvlm_plan(m.view(), &p).unwrap();
            if let Some(roi) = plan.roi {
                for a in 0..3 {
                    prop_assert!(roi.lo[a] <= roi.hi[a] && roi.hi[a] <= [nk, nj, ni][a]);
                    prop_assert!(roi.padded[a] >= p.min_pad[a] && roi.padded[a] >= roi.hi[a] - roi.lo[a]);
                }
                for o in &plan.organs {
                    prop_assert!((0..3).all(|a| o.lo[a] < o.hi[a] && o.hi[a] <= roi.padded[a]));
                }
            }
            let inputs = fvlm_inputs(&vol, m.view(), &p).unwrap();
            prop_assert_eq!(inputs.len(), plan.organs.len());
            for inp in &inputs {
                prop_assert_eq!(inp.image.len(), ok * oj * oi);
                prop_assert_eq!(inp.mask.len(), ok * oj * oi);
                prop_assert!(inp.image.iter().all(|v| (0.0..=1.0).contains(v)));
                prop_assert!(inp.mask.iter().all(|&v| v == 0.0 || v == 1.0));
                prop_assert_eq!(inp.present, inp.mask.contains(&1.0));
            }
        }
    }
}
