//! The diffusion-classifier input (celsus-reference §3.4.1): axial slices of the CT-CLIP tensor,
//! each bilinearly resized to 256 x 256.
//!
//! Input: the CT-CLIP tensor ([`crate::ctclip_tensor`]), `[1, 240, 480, 480]` = `[D = k, H = i,
//! W = j]` in C order (any whole number of 480 x 480 planes is accepted). Depth slices
//! `[slice_start, slice_end)` (default `12..228`, 216 slices; padded `-1` slices of short scans
//! included) are resized with PyTorch's `F.interpolate(mode="bilinear", align_corners=False,
//! antialias=False)` to `size = [H_out, W_out]` and returned as `[n, 1, H_out, W_out]` f32 in C
//! order. The centre crop to a square of the reference is a no-op (the slices are 480 x 480).
//!
//! The interpolation is separable (W first, then H), which is ATen's nested arithmetic
//! `wh0 * (ww0 * a + ww1 * b) + wh1 * (ww0 * c + ww1 * d)` evaluated in f32.

use super::{LinearTap, torch_linear_tap};
use crate::recipe::ctclip::CTCLIP_SHAPE;
use rayon::prelude::*;
use std::ops::Range;

/// In-plane size (H = W) of the CT-CLIP tensor the slices are taken from.
pub const DIFFUSION_INPUT_PLANE: usize = CTCLIP_SHAPE[2];

/// Recipe parameters (`[recipe] kind = "diffusion"` of the model bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffusionParams {
    /// First depth slice of the CT-CLIP tensor (reference: `int(240 * 0.05) = 12`).
    pub slice_start: usize,
    /// One past the last depth slice (reference: `int(240 * 0.95) = 228`).
    pub slice_end: usize,
    /// Output `[H, W]` of every slice (reference: `[256, 256]`).
    pub size: [usize; 2],
}

impl Default for DiffusionParams {
    fn default() -> Self {
        Self { slice_start: 12, slice_end: 228, size: [256, 256] }
    }
}

impl DiffusionParams {
    /// Number of slices `slice_end - slice_start` (0 when the range is inverted).
    pub fn n_slices(&self) -> usize {
        self.slice_end.saturating_sub(self.slice_start)
    }

    /// Checks the parameters against a CT-CLIP tensor of `depth` slices.
    pub fn validate(&self, depth: usize) -> Result<(), DiffusionError> {
        check_range(&(self.slice_start..self.slice_end), depth)?;
        check_size(self.size)
    }

    /// The slice range split into consecutive batches of at most `batch_size` slices (absolute
    /// depth indices, ready for [`diffusion_slices`]). `batch_size` 0 is treated as 1.
    pub fn batches(&self, batch_size: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let step = batch_size.max(1);
        (self.slice_start..self.slice_end).step_by(step).map(move |s| s..(s + step).min(self.slice_end))
    }
}

/// Invalid diffusion recipe input or parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiffusionError {
    #[error("input has {len} values: not a whole, non-zero number of {plane}-value (480 x 480) planes")]
    BadInputLength { len: usize, plane: usize },
    #[error("slice range {start}..{end} is empty or outside the {depth} slices of the input")]
    BadRange { start: usize, end: usize, depth: usize },
    #[error("output size {size:?} has a zero axis")]
    ZeroSize { size: [usize; 2] },
}

fn check_range(range: &Range<usize>, depth: usize) -> Result<(), DiffusionError> {
    if range.start >= range.end || range.end > depth {
        return Err(DiffusionError::BadRange { start: range.start, end: range.end, depth });
    }
    Ok(())
}

fn check_size(size: [usize; 2]) -> Result<(), DiffusionError> {
    if size.contains(&0) {
        return Err(DiffusionError::ZeroSize { size });
    }
    Ok(())
}

/// Resizes the depth slices `range` (absolute indices) of a CT-CLIP tensor.
///
/// `ctclip`: `[D, 480, 480]` f32 in C order (`[1, 240, 480, 480]` as produced by
/// [`crate::ctclip_tensor`]); within a slice the first axis is H (= volume column index i) and
/// the second W (= row index j). Returns `[range.len(), 1, size[0], size[1]]` f32 in C order.
pub fn diffusion_slices(ctclip: &[f32], range: Range<usize>, size: [usize; 2]) -> Result<Vec<f32>, DiffusionError> {
    let plane = DIFFUSION_INPUT_PLANE * DIFFUSION_INPUT_PLANE;
    if ctclip.is_empty() || !ctclip.len().is_multiple_of(plane) {
        return Err(DiffusionError::BadInputLength { len: ctclip.len(), plane });
    }
    check_range(&range, ctclip.len() / plane)?;
    check_size(size)?;
    let (n_in, [oh, ow]) = (DIFFUSION_INPUT_PLANE, size);
    let ht: Vec<LinearTap> = (0..oh).map(|d| torch_linear_tap(n_in, oh, d)).collect();
    let wt: Vec<LinearTap> = (0..ow).map(|d| torch_linear_tap(n_in, ow, d)).collect();
    let mut out = vec![0f32; range.len() * oh * ow];
    out.par_chunks_mut(oh * ow).zip(range.into_par_iter()).for_each_init(
        || vec![0f32; n_in * ow],
        |tmp, (dst, d)| bilinear_plane(&ctclip[d * plane..(d + 1) * plane], n_in, n_in, &ht, &wt, tmp, dst),
    );
    Ok(out)
}

/// `src` `[h_in][w_in]` -> `dst` `[ht.len()][wt.len()]`, W pass into `tmp` (`h_in * wt.len()`),
/// then H pass.
fn bilinear_plane(src: &[f32], h_in: usize, w_in: usize, ht: &[LinearTap], wt: &[LinearTap], tmp: &mut [f32], dst: &mut [f32]) {
    let ow = wt.len();
    for (row, t_row) in src.chunks_exact(w_in).zip(tmp.chunks_exact_mut(ow)).take(h_in) {
        for (o, t) in t_row.iter_mut().zip(wt) {
            *o = row[t.i0] * t.w0 + row[t.i1] * t.w1;
        }
    }
    for (d_row, t) in dst.chunks_exact_mut(ow).zip(ht) {
        let (r0, r1) = (&tmp[t.i0 * ow..(t.i0 + 1) * ow], &tmp[t.i1 * ow..(t.i1 + 1) * ow]);
        for ((o, &a), &b) in d_row.iter_mut().zip(r0).zip(r1) {
            *o = a * t.w0 + b * t.w1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLANE: usize = DIFFUSION_INPUT_PLANE * DIFFUSION_INPUT_PLANE;

    fn tensor(depth: usize, f: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let n = DIFFUSION_INPUT_PLANE;
        (0..depth * PLANE).map(|x| f(x / PLANE, (x % PLANE) / n, x % n)).collect()
    }

    /// Direct (non-separable) evaluation of ATen's nested bilinear formula.
    fn naive(src: &[f32], d: usize, size: [usize; 2], h: usize, w: usize) -> f32 {
        let n = DIFFUSION_INPUT_PLANE;
        let (th, tw) = (torch_linear_tap(n, size[0], h), torch_linear_tap(n, size[1], w));
        let v = |y: usize, x: usize| src[d * PLANE + y * n + x];
        let r0 = v(th.i0, tw.i0) * tw.w0 + v(th.i0, tw.i1) * tw.w1;
        let r1 = v(th.i1, tw.i0) * tw.w0 + v(th.i1, tw.i1) * tw.w1;
        r0 * th.w0 + r1 * th.w1
    }

    #[test]
    fn defaults_are_the_reference_range() {
        let p = DiffusionParams::default();
        assert_eq!((p.slice_start, p.slice_end, p.n_slices(), p.size), (12, 228, 216, [256, 256]));
        assert_eq!(p.validate(240), Ok(()));
        let b: Vec<_> = p.batches(16).collect();
        assert_eq!(b.len(), 14);
        assert_eq!((b[0].clone(), b[13].clone()), (12..28, 220..228));
        assert_eq!(b.iter().map(|r| r.len()).sum::<usize>(), 216);
    }

    #[test]
    fn shape_and_separable_equals_nested() {
        // asymmetric content: a rectangle longer along W than along H, plus a gradient
        let src = tensor(3, |d, h, w| if (100..380).contains(&h) && (30..200).contains(&w) { (d as f32 + 1.0) * 0.25 } else { (h as f32 - w as f32 * 0.5) / 1000.0 });
        let out = diffusion_slices(&src, 1..3, [256, 200]).unwrap();
        assert_eq!(out.len(), 2 * 256 * 200);
        for (n, d) in [(0usize, 1usize), (1, 2)] {
            for h in (0..256).step_by(7) {
                for w in (0..200).step_by(5) {
                    assert_eq!(out[(n * 256 + h) * 200 + w], naive(&src, d, [256, 200], h, w), "({d},{h},{w})");
                }
            }
        }
    }

    #[test]
    fn h_is_the_first_in_plane_axis() {
        // value = h index: output must vary along its first in-plane axis only
        let src = tensor(1, |_, h, _| h as f32);
        let out = diffusion_slices(&src, 0..1, [256, 256]).unwrap();
        assert_eq!(out[5], out[0]);
        assert!(out[256 * 100] > out[0]);
        // PyTorch: src = 1.875 * (dst + 0.5) - 0.5 -> value at dst 100 is 187.9375
        assert!((out[256 * 100] - 187.9375).abs() < 1e-4);
    }

    #[test]
    fn constant_slices_stay_constant_and_padding_slices_stay_minus_one() {
        let src = tensor(4, |d, _, _| if d < 2 { -1.0 } else { 0.5 });
        let out = diffusion_slices(&src, 1..4, [256, 256]).unwrap();
        let p = 256 * 256;
        assert!(out[..p].iter().all(|&v| v == -1.0));
        assert!(out[p..].iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn rejects_bad_inputs() {
        let src = tensor(2, |_, _, _| 0.0);
        assert_eq!(diffusion_slices(&src[1..], 0..1, [256, 256]), Err(DiffusionError::BadInputLength { len: 2 * PLANE - 1, plane: PLANE }));
        assert_eq!(diffusion_slices(&[], 0..1, [256, 256]), Err(DiffusionError::BadInputLength { len: 0, plane: PLANE }));
        assert_eq!(diffusion_slices(&src, 1..3, [256, 256]), Err(DiffusionError::BadRange { start: 1, end: 3, depth: 2 }));
        assert_eq!(diffusion_slices(&src, 1..1, [256, 256]), Err(DiffusionError::BadRange { start: 1, end: 1, depth: 2 }));
        assert_eq!(diffusion_slices(&src, 0..1, [0, 256]), Err(DiffusionError::ZeroSize { size: [0, 256] }));
        assert!(DiffusionParams::default().validate(200).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn output_within_input_range(oh in 1usize..300, ow in 1usize..300, seed in 0u32..1000) {
            let src = tensor(1, |_, h, w| ((h as u32 * 7919 + w as u32 * 104_729 + seed) % 2001) as f32 / 1000.0 - 1.0);
            let out = diffusion_slices(&src, 0..1, [oh, ow]).unwrap();
            prop_assert_eq!(out.len(), oh * ow);
            prop_assert!(out.iter().all(|v| (-1.0 - 1e-6..=1.0 + 1e-6).contains(v)));
        }

        #[test]
        fn batches_cover_the_range(start in 0usize..50, len in 1usize..200, bs in 0usize..40) {
            let p = DiffusionParams { slice_start: start, slice_end: start + len, size: [256, 256] };
            let b: Vec<_> = p.batches(bs).collect();
            prop_assert_eq!(b.first().unwrap().start, start);
            prop_assert_eq!(b.last().unwrap().end, start + len);
            prop_assert!(b.windows(2).all(|w| w[0].end == w[1].start));
            prop_assert!(b.iter().all(|r| !r.is_empty() && r.len() <= bs.max(1)));
        }
    }
}
