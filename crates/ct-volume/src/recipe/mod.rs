//! Model-input recipes: exact re-implementations of the reference's preprocessing.
//!
//! Shared building blocks live here (PyTorch-compatible linear index mapping, centre crop/pad);
//! each recipe has its own module.

pub mod ctclip;
pub mod diffusion;
pub mod fvlm;
pub mod mednext;

/// One output sample of a linear (1-D) interpolation: `v = w0 * x[i0] + w1 * x[i1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// PyTorch's `F.interpolate(..., mode="linear"/"bilinear"/"trilinear", align_corners=False)`
/// index mapping for one axis, computed in f32 exactly as ATen's CPU kernel does
/// (`area_pixel_compute_scale`, `area_pixel_compute_source_index`, `guard_index_and_lambda`)
/// when an output size (not a scale factor) is given.
pub fn torch_linear_tap(in_size: usize, out_size: usize, dst: usize) -> LinearTap {
    if in_size == out_size {
        return LinearTap { i0: dst, i1: dst, w0: 1.0, w1: 0.0 };
    }
    let scale = in_size as f32 / out_size as f32;
    let mut src = scale * (dst as f32 + 0.5) - 0.5;
    if src < 0.0 {
        src = 0.0;
    }
    let i0 = (src.floor() as usize).min(in_size - 1);
    let w1 = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
    LinearTap { i0, i1, w0: 1.0 - w1, w1 }
}

/// Centre crop then centre pad of one axis from `n` to `target` (reference `nii_to_tensor` step 7):
/// crop start `max((n - t) / 2, 0)`, keep `min(n, t)`, pad before `(t - kept) / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropPad {
    /// First kept index of the input axis.
    pub crop_start: usize,
    /// Number of kept samples.
    pub kept: usize,
    /// Output index of the first kept sample.
    pub pad_before: usize,
}

impl CropPad {
    pub fn new(n: usize, target: usize) -> Self {
        let crop_start = n.saturating_sub(target) / 2;
        let kept = n.min(target);
        Self { crop_start, kept, pad_before: (target - kept) / 2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identity_when_sizes_match() {
        for d in 0..7 {
            assert_eq!(torch_linear_tap(7, 7, d), LinearTap { i0: d, i1: d, w0: 1.0, w1: 0.0 });
        }
    }

    #[test]
    fn half_pixel_mapping_matches_torch() {
        // torch: F.interpolate(arange(4), size=8, mode="linear") -> src = 0.5*(dst+0.5)-0.5
        let t = torch_linear_tap(4, 8, 3);
        assert_eq!((t.i0, t.i1), (1, 2));
        assert!((t.w1 - 0.25).abs() < 1e-7);
        // first samples clamp to 0, last sample clamps to the last index
        assert_eq!(torch_linear_tap(4, 8, 0), LinearTap { i0: 0, i1: 1, w0: 1.0, w1: 0.0 });
        let last = torch_linear_tap(4, 8, 7);
        assert_eq!((last.i0, last.i1), (3, 3));
    }

    proptest! {
        #[test]
        fn taps_stay_in_range(n in 1usize..600, m in 1usize..600, frac in 0.0f64..1.0) {
            let dst = ((m as f64 - 1.0) * frac) as usize;
            let t = torch_linear_tap(n, m, dst);
            prop_assert!(t.i0 < n && t.i1 < n && t.i0 <= t.i1);
            prop_assert!((t.w0 + t.w1 - 1.0).abs() < 1e-6);
            prop_assert!(t.w0 >= 0.0 && t.w1 >= 0.0);
        }

        #[test]
        fn crop_pad_always_yields_target(n in 1usize..2000, t in 1usize..1000) {
            let c = CropPad::new(n, t);
            prop_assert!(c.crop_start + c.kept <= n);
            prop_assert!(c.pad_before + c.kept <= t);
            prop_assert_eq!(c.kept, n.min(t));
        }
    }
}
