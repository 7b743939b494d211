//! The MedNeXt input (celsus-reference §3.5, MONAI transforms), computed directly on the
//! canonical volume.
//!
//! Steps, in the reference's order (array `[C = 1, i, j, k]`, no reorientation):
//! 1. `Spacingd(pixdim = (1.0, 1.0, 1.5), mode = "bilinear")` with MONAI's defaults
//!    (padding_mode "border", align_corners False, float64 compute, scale_extent False):
//!    per axis the output spacing is the target unless the input spacing is within MONAI's
//!    `AFFINE_TOL` (1e-3) of it (then the axis keeps its spacing and is not resampled); the output
//!    size is `round_half_even((n - 1) * in / out + 1)`; output voxel `r` samples the input at
//!    `r * out / in` (voxel 0 centre stays at voxel 0 centre), clamped to `[0, n - 1]` (border);
//!    trilinear interpolation in f64, rounded to f32.
//! 2. Clip to `hu_clip` ([-1000, 1000]).
//! 3. (Body crop: off in the reference's default configuration and not implemented; it uses an
//!    unseeded KMeans.)
//! 4. `SpatialPadd(roi)`: constant 0, `floor(d / 2)` before and the rest after, axes below roi.
//! 5. `CenterSpatialCropd(roi)`: start `n / 2 - roi / 2` (integer division).
//! 6. `NormalizeIntensityd(nonzero = True, channel_wise = True)`: `mu` = mean and `sigma` =
//!    population std of the voxels `!= 0` (f32 results; `sigma == 0` -> 1); those voxels become
//!    `(x - mu) / sigma` in f32, zeros (padding included) stay 0.
//! 7. The f16 cast is the caller's: [`to_f16_bits`].
//!
//! Input spacing: [`crate::Geometry::zooms_f32`] widened to f64, which is what MONAI reads from
//! the reference's NIfTI affine (stored as f32) for axis-aligned series.
//!
//! Known, inherent difference: MONAI derives the sample coordinates through normalised
//! `affine_grid` arithmetic whose last bits depend on the CPU (vectorised `linspace`, FMA); this
//! module uses the exact `r * out / in`. Values agree to f32 rounding, except where the exact
//! result is 0 (every contributing voxel is 0 HU) next to non-zero voxels: MONAI may then give
//! about 1e-11, which `NormalizeIntensity(nonzero=True)` treats as tissue (`-mu / sigma` instead
//! of 0). It needs an axis that is not resampled or sampled at whole voxels, plus runs of exact
//! 0 HU; on the 512 x 512 x 28 Philips test series at 1 mm pixels it concerned 211 of 23.8 M
//! voxels, at 0.45 mm pixels none.
//!
//! Output: `[1, 1, roi_i, roi_j, roi_k]` f32, C order over `(i, j, k)` (k fastest), i.e. the
//! transpose of the volume's `[k, j, i]` storage. Only the voxels that survive the crop are
//! computed: separable passes (i, then j, then k) over blocks of output columns `i`, in parallel.

use crate::{Volume, VoxelView};
use rayon::prelude::*;

/// Reference ROI `(i, j, k)`.
pub const MEDNEXT_ROI: [usize; 3] = [320, 320, 224];
/// MONAI `AFFINE_TOL`: an axis whose spacing is within it of the target is not resampled.
pub const MONAI_AFFINE_TOL: f64 = 1e-3;
/// Output columns (`i`) per parallel work item.
const BLOCK_I: usize = 32;
/// Output rows (`j`) per tile of a work item (keeps the intermediate buffers cache-sized).
const BLOCK_J: usize = 16;

/// Recipe parameters (`[recipe] kind = "mednext"` of the model bundle).
#[derive(Debug, Clone, PartialEq)]
pub struct MednextParams {
    /// Target spacing `(i, j, k)` in mm (reference `(1.0, 1.0, 1.5)`).
    pub spacing_mm: [f64; 3],
    /// HU clip range `[low, high]` applied after resampling (reference `[-1000, 1000]`).
    pub hu_clip: [f32; 2],
    /// Output size `(i, j, k)` (reference `(320, 320, 224)`).
    pub roi: [usize; 3],
}

impl Default for MednextParams {
    fn default() -> Self {
        Self { spacing_mm: [1.0, 1.0, 1.5], hu_clip: [-1000.0, 1000.0], roi: MEDNEXT_ROI }
    }
}

impl MednextParams {
    /// Checks that the spacing is finite and positive, the clip range ordered and the roi non-empty.
    pub fn validate(&self) -> Result<(), MednextError> {
        if self.spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(MednextError::BadSpacing { spacing: self.spacing_mm });
        }
        let [lo, hi] = self.hu_clip;
        if !lo.is_finite() || !hi.is_finite() || lo > hi {
            return Err(MednextError::BadClip { clip: self.hu_clip });
        }
        if self.roi.contains(&0) {
            return Err(MednextError::ZeroRoi { roi: self.roi });
        }
        Ok(())
    }
}

/// Invalid MedNeXt recipe parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MednextError {
    #[error("target spacing must be finite and positive, got {spacing:?}")]
    BadSpacing { spacing: [f64; 3] },
    #[error("HU clip range must be finite with low <= high, got {clip:?}")]
    BadClip { clip: [f32; 2] },
    #[error("roi {roi:?} has a zero axis")]
    ZeroRoi { roi: [usize; 3] },
}

/// One resampled axis: MONAI's output spacing and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpacingAxis {
    /// Output spacing actually used (the input spacing when within [`MONAI_AFFINE_TOL`] of the target).
    pub out_spacing: f64,
    /// Resampled size along the axis.
    pub size: usize,
}

/// MONAI `Spacing` output spacing and size for an axis of `n` voxels at `in_spacing` mm.
pub fn monai_spacing_axis(n: usize, in_spacing: f64, target: f64) -> SpacingAxis {
    let out_spacing = if (in_spacing - target).abs() <= MONAI_AFFINE_TOL { in_spacing } else { target };
    let size = if out_spacing == in_spacing { n } else { ((n - 1) as f64 * (in_spacing / out_spacing) + 1.0).round_ties_even() as usize };
    SpacingAxis { out_spacing, size: size.max(1) }
}

/// Resampled (before pad/crop) axes `(i, j, k)` of `volume`.
pub fn mednext_resampled(volume: &Volume, params: &MednextParams) -> [SpacingAxis; 3] {
    let dims = volume.dims();
    let z = volume.geometry().zooms_f32();
    std::array::from_fn(|a| monai_spacing_axis(dims[a], f64::from(z[a]), params.spacing_mm[a]))
}

#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f64,
    w1: f64,
}

/// The output samples of one axis that come from the resampled volume (the rest is padding).
#[derive(Debug)]
struct AxisPlan {
    /// Output index of `taps[0]`.
    first: usize,
    taps: Vec<Tap>,
    /// Smallest and largest input index read.
    src_lo: usize,
    src_hi: usize,
}

impl AxisPlan {
    fn new(n: usize, in_spacing: f64, axis: SpacingAxis, roi: usize) -> Self {
        let m = axis.size;
        let padded = m.max(roi);
        let pad_before = (padded - m) / 2;
        let crop_start = padded / 2 - roi / 2;
        let ratio = axis.out_spacing / in_spacing;
        let identity = axis.out_spacing == in_spacing;
        let mut first = usize::MAX;
        let mut taps = Vec::new();
        for t in 0..roi {
            let p = t + crop_start;
            if p < pad_before || p >= pad_before + m {
                continue;
            }
            let r = p - pad_before;
            first = first.min(t);
            let tap = if identity {
                Tap { i0: r, i1: r, w0: 1.0, w1: 0.0 }
            } else {
                let src = (r as f64 * ratio).clamp(0.0, (n - 1) as f64);
                let i0 = (src.floor() as usize).min(n - 1);
                let w1 = src - i0 as f64;
                Tap { i0, i1: (i0 + 1).min(n - 1), w0: 1.0 - w1, w1 }
            };
            taps.push(tap);
        }
        let src_lo = taps.iter().map(|t| t.i0).min().unwrap_or(0);
        let src_hi = taps.iter().map(|t| t.i1).max().unwrap_or(0);
        Self { first: if taps.is_empty() { 0 } else { first }, taps, src_lo, src_hi }
    }
}

/// Builds the `[1, 1, roi_i, roi_j, roi_k]` MedNeXt input (C order over `(i, j, k)`) from a
/// canonical volume: MONAI Spacing, clip, pad/centre crop, non-zero normalisation (f32).
pub fn mednext_tensor(volume: &Volume, params: &MednextParams) -> Result<Vec<f32>, MednextError> {
    let mut out = mednext_resampled_clipped(volume, params)?;
    normalize_nonzero(&mut out);
    Ok(out)
}

/// Steps 1-5 of the recipe (resample, clip, pad, centre crop) without the normalisation: HU,
/// `[roi_i, roi_j, roi_k]` f32 in C order, zeros in the padding.
pub fn mednext_resampled_clipped(volume: &Volume, params: &MednextParams) -> Result<Vec<f32>, MednextError> {
    params.validate()?;
    let dims = volume.dims();
    let z = volume.geometry().zooms_f32();
    let axes = mednext_resampled(volume, params);
    let plans: [AxisPlan; 3] = std::array::from_fn(|a| AxisPlan::new(dims[a], f64::from(z[a]), axes[a], params.roi[a]));
    let [ri, rj, rk] = params.roi;
    let mut out = vec![0f32; ri * rj * rk];
    match volume.voxels() {
        VoxelView::I16(a) => resample(a.as_slice().expect("standard layout"), dims, &plans, params, &mut out),
        VoxelView::F32(a) => resample(a.as_slice().expect("standard layout"), dims, &plans, params, &mut out),
    }
    Ok(out)
}

/// Separable trilinear resampling + clip into the `[ri][rj][rk]` output, parallel over blocks of
/// [`BLOCK_I`] output columns `i` (one contiguous output chunk each), then tiles of [`BLOCK_J`]
/// output rows `j`. Per tile and source slice k: i pass over the source rows the tile reads into
/// `x1[j][b]`, j pass into `x2[b][tj][k]`; then the k pass into the output rows (k contiguous).
/// The buffers stay cache-sized.
fn resample<T: Copy + Into<f64> + Sync>(src: &[T], dims: [usize; 3], plans: &[AxisPlan; 3], params: &MednextParams, out: &mut [f32]) {
    let [ni, nj, nk] = dims;
    let [_, rj, rk] = params.roi;
    let [lo, hi] = params.hu_clip;
    let [pi, pj, pk] = plans;
    if pi.taps.is_empty() || pj.taps.is_empty() || pk.taps.is_empty() {
        return;
    }
    let (k_lo, k_hi) = (pk.src_lo, pk.src_hi);
    out.par_chunks_mut(BLOCK_I * rj * rk).enumerate().for_each_init(
        || (Vec::<f64>::new(), Vec::<f64>::new(), Vec::<f64>::new()),
        |(x1, x2, seg), (b, chunk)| {
            // kept output columns of this block: (index within the chunk, tap)
            let t0 = b * BLOCK_I;
            let cols: Vec<(usize, Tap)> = (t0..t0 + chunk.len() / (rj * rk))
                .filter(|t| *t >= pi.first && *t < pi.first + pi.taps.len())
                .map(|t| (t - t0, pi.taps[t - pi.first]))
                .collect();
            let nb = cols.len();
            if nb == 0 {
                return;
            }
            // source columns of the block, converted once per row; taps relative to i_lo
            let (i_lo, i_hi) = (cols[0].1.i0, cols[nb - 1].1.i1);
            let local_taps: Vec<Tap> = cols.iter().map(|(_, t)| Tap { i0: t.i0 - i_lo, i1: t.i1 - i_lo, ..*t }).collect();
            seg.resize(i_hi - i_lo + 1, 0.0);
            for (tile, tjs) in pj.taps.chunks(BLOCK_J).enumerate() {
                // taps are monotonic: the tile reads source rows j_lo..=j_hi
                let (j_lo, j_hi) = (tjs[0].i0, tjs[tjs.len() - 1].i1);
                let nq = tjs.len();
                x1.resize((j_hi - j_lo + 1) * nb, 0.0);
                x2.resize(nk * nq * nb, 0.0);
                for k in k_lo..=k_hi {
                    for (j, dst) in (j_lo..=j_hi).zip(x1.chunks_exact_mut(nb)) {
                        let row = &src[(k * nj + j) * ni + i_lo..][..seg.len()];
                        for (s, &v) in seg.iter_mut().zip(row) {
                            *s = v.into();
                        }
                        for (o, t) in dst.iter_mut().zip(&local_taps) {
                            *o = seg[t.i0] * t.w0 + seg[t.i1] * t.w1;
                        }
                    }
                    for (q, t) in tjs.iter().enumerate() {
                        let r0 = &x1[(t.i0 - j_lo) * nb..][..nb];
                        let r1 = &x1[(t.i1 - j_lo) * nb..][..nb];
                        for (bi, (&a, &c)) in r0.iter().zip(r1).enumerate() {
                            x2[(bi * nq + q) * nk + k] = a * t.w0 + c * t.w1;
                        }
                    }
                }
                for (bi, &(local, _)) in cols.iter().enumerate() {
                    for q in 0..nq {
                        let line = &x2[(bi * nq + q) * nk..][..nk];
                        let tj = pj.first + tile * BLOCK_J + q;
                        let row = &mut chunk[(local * rj + tj) * rk + pk.first..][..pk.taps.len()];
                        for (o, t) in row.iter_mut().zip(&pk.taps) {
                            *o = ((line[t.i0] * t.w0 + line[t.i1] * t.w1) as f32).clamp(lo, hi);
                        }
                    }
                }
            }
        },
    );
}

/// Statistics used by [`normalize_nonzero`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonzeroStats {
    /// Number of voxels `!= 0`.
    pub count: usize,
    /// Their mean, rounded to f32.
    pub mean: f32,
    /// Their population std rounded to f32, 1 where it is 0.
    pub std: f32,
}

/// MONAI `NormalizeIntensity(nonzero=True)` on one channel: statistics over the voxels `!= 0`
/// (mean and population std computed in f64, rounded to f32, std 0 -> 1), then `(x - mean) /
/// std` in f32 on those voxels only. Nothing changes (and `None` is returned) when every voxel
/// is 0.
pub fn normalize_nonzero(x: &mut [f32]) -> Option<NonzeroStats> {
    const CHUNK: usize = 1 << 16;
    let (n, sum) = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().filter(|v| **v != 0.0).fold((0usize, 0f64), |(n, s), &v| (n + 1, s + f64::from(v))))
        .reduce(|| (0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if n == 0 {
        return None;
    }
    let mean = sum / n as f64;
    let ss: f64 = x.par_chunks(CHUNK).map(|c| c.iter().filter(|v| **v != 0.0).map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>()).sum();
    let mu = mean as f32;
    let sigma = match (ss / n as f64).sqrt() as f32 {
        0.0 => 1.0,
        s => s,
    };
    x.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c.iter_mut().filter(|v| **v != 0.0) {
            *v = (*v - mu) / sigma;
        }
    });
    Some(NonzeroStats { count: n, mean: mu, std: sigma })
}

/// IEEE 754 binary16 bits of `v`, round to nearest, ties to even (as NumPy's `astype(float16)`
/// and PyTorch's `.half()`): overflow gives infinity, values below half the smallest subnormal
/// give a signed zero, NaN stays a (quiet) NaN.
pub fn f32_to_f16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // subnormal half: keep the implicit bit, drop 14 - e bits
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1; // a carry into the exponent is correct, up to infinity
    }
    sign | r as u16
}

/// The f32 value of IEEE 754 binary16 bits (exact).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: value = m * 2^-24, normalise
            let p = 31 - m.leading_zeros(); // position of the leading 1 (0..=9)
            sign | ((p + 103) << 23) | ((m << (23 - p)) & 0x7f_ffff)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Converts a tensor to binary16 bits (same layout), in parallel. See [`f32_to_f16_bits`].
pub fn to_f16_bits(src: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; src.len()];
    out.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(o, s)| {
        for (d, &v) in o.iter_mut().zip(s) {
            *d = f32_to_f16_bits(v);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Geometry, Voxels};
    use ndarray::Array3;
    use proptest::prelude::*;

    fn volume(ni: usize, nj: usize, nk: usize, spacing: [f64; 3], f: impl Fn(usize, usize, usize) -> i16) -> Volume {
        let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| f(i, j, k));
        let geometry = Geometry {
            spacing_mm: spacing,
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin_mm: [0.0; 3],
            slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, k as f64 * spacing[2]]).collect(),
        };
        Volume::new(Voxels::I16(data), geometry).unwrap()
    }

    fn params(roi: [usize; 3]) -> MednextParams {
        MednextParams { roi, ..MednextParams::default() }
    }

    /// Direct (non-separable) trilinear with MONAI's mapping, before clip and normalisation.
    fn naive_resampled(vol: &Volume, p: &MednextParams, r: [usize; 3]) -> f64 {
        let dims = vol.dims();
        let z = vol.geometry().zooms_f32();
        let axes = mednext_resampled(vol, p);
        let t: [(usize, usize, f64); 3] = std::array::from_fn(|a| {
            let n = dims[a];
            let src = (r[a] as f64 * (axes[a].out_spacing / f64::from(z[a]))).clamp(0.0, (n - 1) as f64);
            let i0 = src.floor() as usize;
            (i0, (i0 + 1).min(n - 1), src - i0 as f64)
        });
        let mut acc = 0.0;
        for (ci, wi) in [(t[0].0, 1.0 - t[0].2), (t[0].1, t[0].2)] {
            for (cj, wj) in [(t[1].0, 1.0 - t[1].2), (t[1].1, t[1].2)] {
                for (ck, wk) in [(t[2].0, 1.0 - t[2].2), (t[2].1, t[2].2)] {
                    acc += wi * wj * wk * f64::from(vol.voxels().get(ck, cj, ci));
                }
            }
        }
        acc
    }

    #[test]
    fn monai_output_sizes() {
        // round((n-1) * in/out + 1), half to even; within 1e-3 of the target: untouched
        assert_eq!(monai_spacing_axis(37, 0.83, 1.0).size, 31);
        assert_eq!(monai_spacing_axis(3, 0.75, 1.0).size, 2); // 2.5 -> 2
        assert_eq!(monai_spacing_axis(6, 0.5, 1.0).size, 4); // 3.5 -> 4
        assert_eq!(monai_spacing_axis(40, 0.9995, 1.0), SpacingAxis { out_spacing: 0.9995, size: 40 });
        assert_eq!(monai_spacing_axis(40, 1.0011, 1.0).size, 40);
        assert_eq!(monai_spacing_axis(512, 0.7, 1.0).size, 359);
        assert_eq!(monai_spacing_axis(300, 1.0, 1.5).size, 200);
        assert_eq!(monai_spacing_axis(1, 5.0, 1.0).size, 1);
    }

    #[test]
    fn separable_equals_direct_trilinear() {
        let vol = volume(13, 11, 9, [0.83, 1.37, 2.1], |i, j, k| ((i * 37 + j * 101 + k * 13) % 1800) as i16 - 900);
        let p = MednextParams { hu_clip: [-5000.0, 5000.0], ..params([12, 20, 14]) };
        // normalisation undone: compare the resampled values through the plan directly
        let dims = vol.dims();
        let z = vol.geometry().zooms_f32();
        let axes = mednext_resampled(&vol, &p);
        assert_eq!(axes.map(|a| a.size), [11, 15, 12]);
        let plans: [AxisPlan; 3] = std::array::from_fn(|a| AxisPlan::new(dims[a], f64::from(z[a]), axes[a], p.roi[a]));
        let mut out = vec![0f32; 12 * 20 * 14];
        let VoxelView::I16(a) = vol.voxels() else { unreachable!() };
        resample(a.as_slice().unwrap(), dims, &plans, &p, &mut out);
        // pad before: i (12 - 11) / 2 = 0, j (20 - 15) / 2 = 2, k (14 - 12) / 2 = 1
        let (bi, bj, bk) = (0, 2, 1);
        let mut n_inside = 0;
        for i in 0..12 {
            for j in 0..20 {
                for k in 0..14 {
                    let v = out[(i * 20 + j) * 14 + k];
                    if !(bi..bi + 11).contains(&i) || !(bj..bj + 15).contains(&j) || !(bk..bk + 12).contains(&k) {
                        assert_eq!(v, 0.0, "padding at ({i},{j},{k})");
                    } else {
                        n_inside += 1;
                        let want = naive_resampled(&vol, &p, [i - bi, j - bj, k - bk]) as f32;
                        assert!((v - want).abs() <= 1e-4, "({i},{j},{k}) {v} vs {want}");
                    }
                }
            }
        }
        assert_eq!(n_inside, 11 * 15 * 12);
    }

    #[test]
    fn centre_crop_start_is_half_n_minus_half_roi() {
        // n even, roi odd: MONAI start = n/2 - roi/2 (not (n - roi) / 2)
        let plan = AxisPlan::new(6, 1.0, SpacingAxis { out_spacing: 1.0, size: 6 }, 3);
        assert_eq!((plan.first, plan.taps.len(), plan.taps[0].i0), (0, 3, 2));
        let plan = AxisPlan::new(3, 1.0, SpacingAxis { out_spacing: 1.0, size: 3 }, 8);
        assert_eq!((plan.first, plan.taps.len()), (2, 3));
    }

    #[test]
    fn small_volume_is_padded_with_zeros_and_normalised() {
        let f = |i: usize, j: usize, k: usize| if (i + j + k).is_multiple_of(3) { 0 } else { (i * 50 + j * 7 + k) as i16 - 300 };
        let vol = volume(20, 16, 10, [1.0, 1.0, 1.5], f);
        let out = mednext_tensor(&vol, &params([24, 24, 12])).unwrap();
        assert_eq!(out.len(), 24 * 24 * 12);
        // identity resampling: i 20 -> 2 before; j 16 -> 4 before; k 10 -> 1 before
        assert_eq!(out[(24 + 5) * 12 + 5], 0.0);
        let nz: Vec<f64> = out.iter().filter(|v| **v != 0.0).map(|&v| f64::from(v)).collect();
        assert_eq!(nz.len(), (0..20 * 16 * 10).filter(|x| f(x % 20, (x / 20) % 16, x / 320) != 0).count());
        // voxel (i, j, k) lands at (i + 2, j + 4, k + 1): zero HU stays exactly 0
        assert_eq!((f(3, 2, 4), out[(5 * 24 + 6) * 12 + 5]), (0, 0.0));
        assert!(f(3, 2, 5) != 0 && out[(5 * 24 + 6) * 12 + 6] != 0.0);
        let mean = nz.iter().sum::<f64>() / nz.len() as f64;
        let std = (nz.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / nz.len() as f64).sqrt();
        assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-5, "{mean} {std}");
    }

    #[test]
    fn clip_happens_after_resampling() {
        // 3000 / -1000 alternating in k, downsampled in k: interpolation of unclipped values
        let vol = volume(4, 4, 7, [1.0, 1.0, 1.0], |_, _, k| if k % 2 == 0 { 3000 } else { -1000 });
        let p = MednextParams { roi: [4, 4, 5], ..MednextParams::default() };
        let dims = vol.dims();
        let axes = mednext_resampled(&vol, &p);
        assert_eq!(axes[2].size, 5); // round(6 / 1.5 + 1)
        let plans: [AxisPlan; 3] = std::array::from_fn(|a| AxisPlan::new(dims[a], 1.0, axes[a], p.roi[a]));
        let mut out = vec![0f32; 4 * 4 * 5];
        let VoxelView::I16(a) = vol.voxels() else { unreachable!() };
        resample(a.as_slice().unwrap(), dims, &plans, &p, &mut out);
        // k = 1 samples src 1.5 -> 0.5 * -1000 + 0.5 * 3000 = 1000 (clipping first would give 0);
        // k = 2 samples src 3.0 -> -1000
        assert_eq!(&out[..5], &[1000.0, 1000.0, -1000.0, 1000.0, 1000.0]);
    }

    #[test]
    fn constant_volume_normalises_with_unit_sigma() {
        let vol = volume(5, 5, 5, [1.0, 1.0, 1.5], |_, _, _| 40);
        let out = mednext_tensor(&vol, &params([5, 5, 5])).unwrap();
        // sigma 0 -> 1: (40 - 40) / 1 = 0 everywhere
        assert!(out.iter().all(|&v| v == 0.0));
        let zero = volume(5, 5, 5, [1.0, 1.0, 1.5], |_, _, _| 0);
        assert!(mednext_tensor(&zero, &params([6, 6, 6])).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rejects_bad_params() {
        let vol = volume(5, 5, 5, [1.0, 1.0, 1.5], |_, _, _| 0);
        let p = MednextParams { spacing_mm: [1.0, 0.0, 1.5], ..MednextParams::default() };
        assert_eq!(mednext_tensor(&vol, &p), Err(MednextError::BadSpacing { spacing: [1.0, 0.0, 1.5] }));
        let p = MednextParams { hu_clip: [10.0, -10.0], ..MednextParams::default() };
        assert_eq!(mednext_tensor(&vol, &p), Err(MednextError::BadClip { clip: [10.0, -10.0] }));
        assert_eq!(mednext_tensor(&vol, &params([0, 1, 1])), Err(MednextError::ZeroRoi { roi: [0, 1, 1] }));
    }

    #[test]
    fn f16_matches_numpy_edge_cases() {
        // (f32 bits, numpy float32(v).astype(float16) bits), NumPy 2.4
        let cases: [(u32, u16); 33] = [
            (0x0000_0000, 0x0000),
            (0x8000_0000, 0x8000),
            (0x3f80_0000, 0x3c00),
            (0xc020_0000, 0xc100),
            (0x477f_e000, 0x7bff), // 65504
            (0x477f_ef00, 0x7bff), // 65519
            (0x477f_f000, 0x7c00), // 65520 -> inf
            (0x4974_2400, 0x7c00),
            (0xc974_2400, 0xfc00),
            (0x7f80_0000, 0x7c00),
            (0xff80_0000, 0xfc00),
            (0x3880_0000, 0x0400), // smallest normal
            (0x387f_c000, 0x03ff), // largest subnormal
            (0x3380_0000, 0x0001), // smallest subnormal
            (0x3300_0000, 0x0000), // half of it: tie to even -> 0
            (0x3300_0001, 0x0001),
            (0x32ff_fff3, 0x0000),
            (0x33c0_0000, 0x0002), // 1.5 units: tie to even -> 2
            (0x3f80_2000, 0x3c01),
            (0x3f80_1000, 0x3c00), // tie to even (down)
            (0x3f80_3000, 0x3c02), // tie to even (up)
            (0x3dcc_cccd, 0x2e66),
            (0x4049_0fdb, 0x4248),
            (0xb702_5be5, 0x8082),
            (0x2edb_e6ff, 0x0000),
            (0x44ff_e000, 0x67ff),
            (0x4500_1000, 0x6800),
            (0x4500_3000, 0x6802),
            (0x4580_0800, 0x6c00),
            (0x3eaa_aaab, 0x3555),
            (0x477f_dfe6, 0x7bff),
            (0x377b_a882, 0x00fc),
            (0xb800_0000, 0x8200),
        ];
        for (f, h) in cases {
            assert_eq!(f32_to_f16_bits(f32::from_bits(f)), h, "{:e} ({f:#010x})", f32::from_bits(f));
        }
        assert_eq!(f32_to_f16_bits(f32::NAN), 0x7e00);
        assert!(f16_bits_to_f32(f32_to_f16_bits(-f32::NAN)).is_nan());
        assert_eq!(to_f16_bits(&[1.0, -2.5]), vec![0x3c00, 0xc100]);
    }

    #[test]
    fn f16_round_trip_is_exact_for_every_half() {
        for h in 0..=u16::MAX {
            let f = f16_bits_to_f32(h);
            if f.is_nan() {
                assert_eq!(h & 0x7c00, 0x7c00);
            } else {
                assert_eq!(f32_to_f16_bits(f), h, "{h:#06x} -> {f:e}");
            }
        }
        assert_eq!(f16_bits_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_bits_to_f32(0x7bff), 65504.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn f16_is_nearest(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assume!(v.is_finite() && v.abs() < 65504.0);
            let h = f32_to_f16_bits(v);
            let got = f64::from(f16_bits_to_f32(h));
            // neighbours of h (same sign) are no closer
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                let nv = f16_bits_to_f32(n);
                if nv.is_finite() && (n & 0x8000) == (h & 0x8000) {
                    prop_assert!((got - f64::from(v)).abs() <= (f64::from(nv) - f64::from(v)).abs());
                }
            }
        }

        #[test]
        fn crop_pad_yields_roi_and_physical_extent(ni in 1usize..40, nj in 1usize..40, nk in 1usize..30,
                                                   si in 0.3f64..3.0, sj in 0.3f64..3.0, sk in 0.5f64..5.0,
                                                   ri in 1usize..30, rj in 1usize..30, rk in 1usize..30) {
            let vol = volume(ni, nj, nk, [si, sj, sk], |i, j, k| (i * 3 + j * 5 + k * 7) as i16 - 50);
            let p = params([ri, rj, rk]);
            let out = mednext_tensor(&vol, &p).unwrap();
            prop_assert_eq!(out.len(), ri * rj * rk);
            let axes = mednext_resampled(&vol, &p);
            let z = vol.geometry().zooms_f32();
            for (a, n) in [ni, nj, nk].into_iter().enumerate() {
                // physical extent of the voxel centres preserved within one output voxel
                let ext_in = (n - 1) as f64 * f64::from(z[a]);
                let ext_out = (axes[a].size - 1) as f64 * axes[a].out_spacing;
                prop_assert!((ext_in - ext_out).abs() <= 0.5 * axes[a].out_spacing + 1e-9, "axis {} {} vs {}", a, ext_in, ext_out);
            }
        }

        #[test]
        fn normalisation_gives_zero_mean_unit_std(vals in proptest::collection::vec(-1000.0f32..1000.0, 2..400), zeros in 0usize..50) {
            let mut x = vals.clone();
            x.extend(std::iter::repeat_n(0.0, zeros));
            let _ = normalize_nonzero(&mut x);
            let nz: Vec<f64> = vals.iter().zip(&x).filter(|(v, _)| **v != 0.0).map(|(_, &y)| f64::from(y)).collect();
            prop_assert!(x[vals.len()..].iter().all(|&v| v == 0.0));
            prop_assume!(!nz.is_empty());
            let n = nz.len() as f64;
            let mean = nz.iter().sum::<f64>() / n;
            let std = (nz.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            prop_assert!(mean.abs() < 1e-4, "mean {}", mean);
            let first = vals.iter().find(|v| **v != 0.0).copied().unwrap_or(0.0);
            let distinct = vals.iter().any(|v| *v != 0.0 && *v != first);
            prop_assert!(!distinct || (std - 1.0).abs() < 1e-4, "std {}", std);
        }
    }
}
