//! The CT-CLIP input tensor (reference `nii_to_tensor`, celsus-reference §3.0), shared by the
//! CT-CLIP zero-shot, supervised and diffusion models.
//!
//! clip to [-1000, 1000] HU; axes (D = k, H = i, W = j); trilinear resample to (1.5, 0.75, 0.75) mm
//! with truncated f32 target sizes and PyTorch's align_corners=False mapping; divide by 1000;
//! centre crop/pad to (H, W, D) = (480, 480, 240) with -1; output `[1, 240, 480, 480]` f32.
//!
//! The trilinear interpolation is computed separably (W, then H, then D). That is the same
//! arithmetic in the same order as ATen's nested CPU kernel
//! (`w_d0 * (w_h0 * (w_w0 * a + w_w1 * b) + ...) + ...`), and only the voxels that survive the
//! crop are computed.

use super::{CropPad, LinearTap, torch_linear_tap};
use crate::Volume;
use rayon::prelude::*;

/// `[1, D, H, W]`.
pub const CTCLIP_SHAPE: [usize; 4] = [1, 240, 480, 480];
/// The model input shape with the batch axis: `[1, 1, 240, 480, 480]` (CT-CLIP, supervised).
pub const CTCLIP_INPUT_SHAPE: [i64; 5] = [1, 1, 240, 480, 480];
const TARGET_SPACING_DHW: [f32; 3] = [1.5, 0.75, 0.75];
const HU_MIN: f32 = -1000.0;
const HU_MAX: f32 = 1000.0;
const PAD: f32 = -1.0;
/// The reference refuses resampled volumes with fewer slices.
pub const MIN_RESAMPLED_SLICES: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CtclipError {
    #[error("resampled volume has {found} slices, minimum required: {min}")]
    TooFewSlices { found: usize, min: usize },
    #[error("resampled size along {axis} is zero (input {input} voxels)")]
    ZeroSize { axis: &'static str, input: usize },
}

/// Resampled sizes `(D, H, W)`: `int(n * (zoom / target))` evaluated in f32 as NumPy 2 does.
pub fn resampled_size(volume: &Volume) -> [usize; 3] {
    let [ni, nj, nk] = volume.dims();
    let z = volume.geometry().zooms_f32();
    let cur = [z[2], z[0], z[1]];
    let n = [nk, ni, nj];
    std::array::from_fn(|a| (n[a] as f32 * (cur[a] / TARGET_SPACING_DHW[a])) as usize)
}

struct AxisPlan {
    crop: CropPad,
    /// One tap per kept output sample.
    taps: Vec<LinearTap>,
}

impl AxisPlan {
    fn new(in_size: usize, out_size: usize, target: usize) -> Self {
        let crop = CropPad::new(out_size, target);
        let taps = (crop.crop_start..crop.crop_start + crop.kept).map(|o| torch_linear_tap(in_size, out_size, o)).collect();
        Self { crop, taps }
    }
}

/// Builds the `[1, 240, 480, 480]` tensor (C order) from a canonical volume.
pub fn ctclip_tensor(volume: &Volume) -> Result<Vec<f32>, CtclipError> {
    let plan = CtclipPlan::new(volume)?;
    let [_, td, th, tw] = CTCLIP_SHAPE;
    let mut out = vec![PAD; td * th * tw];
    plan.fill_planes(volume, 0, &mut out);
    Ok(out)
}

/// Streams the tensor to `sink` in consecutive blocks of at most `block_planes` output planes
/// (`[D]` slices of 480 x 480), in order: the same values as [`ctclip_tensor`] without holding
/// the whole 221 MB tensor (the CLI writes it to a file this way).
pub fn ctclip_tensor_blocks<E>(volume: &Volume, block_planes: usize, mut sink: impl FnMut(&[f32]) -> Result<(), E>) -> Result<(), CtclipBlocksError<E>> {
    let plan = CtclipPlan::new(volume).map_err(CtclipBlocksError::Recipe)?;
    let [_, td, th, tw] = CTCLIP_SHAPE;
    let block_planes = block_planes.clamp(1, td);
    let mut buf = vec![PAD; block_planes * th * tw];
    for d0 in (0..td).step_by(block_planes) {
        let n = block_planes.min(td - d0);
        let block = &mut buf[..n * th * tw];
        if d0 > 0 {
            block.fill(PAD); // the first block is fresh PAD already
        }
        plan.fill_planes(volume, d0, block);
        sink(block).map_err(CtclipBlocksError::Sink)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CtclipBlocksError<E> {
    #[error(transparent)]
    Recipe(CtclipError),
    #[error("writing the tensor: {0}")]
    Sink(E),
}

/// The resampling plan of one volume: per axis, the crop/pad and the taps of the kept samples.
struct CtclipPlan {
    pd: AxisPlan,
    ph: AxisPlan,
    pw: AxisPlan,
}

impl CtclipPlan {
    fn new(volume: &Volume) -> Result<Self, CtclipError> {
        let [ni, nj, nk] = volume.dims();
        let [sd, sh, sw] = resampled_size(volume);
        for (axis, size, input) in [("D", sd, nk), ("H", sh, ni), ("W", sw, nj)] {
            if size == 0 {
                return Err(CtclipError::ZeroSize { axis, input });
            }
        }
        if sd < MIN_RESAMPLED_SLICES {
            return Err(CtclipError::TooFewSlices { found: sd, min: MIN_RESAMPLED_SLICES });
        }
        let [_, td, th, tw] = CTCLIP_SHAPE;
        Ok(Self { pd: AxisPlan::new(nk, sd, td), ph: AxisPlan::new(ni, sh, th), pw: AxisPlan::new(nj, sw, tw) })
    }

    /// Fills output planes `d0..d0 + out.len() / plane` into `out`, which must hold PAD already
    /// (only the kept samples are written).
    fn fill_planes(&self, volume: &Volume, d0: usize, out: &mut [f32]) {
        let [ni, nj, _] = volume.dims();
        let [_, _, th, tw] = CTCLIP_SHAPE;
        let (pd, ph, pw) = (&self.pd, &self.ph, &self.pw);
        let (kh, kw) = (ph.taps.len(), pw.taps.len());
        let plane_len = th * tw;
        // the planes of this range that are not D padding
        let n_planes = out.len() / plane_len;
        let first = pd.crop.pad_before.max(d0);
        let last = (pd.crop.pad_before + pd.taps.len()).min(d0 + n_planes);
        if first >= last {
            return;
        }
        let interior = &mut out[(first - d0) * plane_len..(last - d0) * plane_len];
        let threads = rayon::current_num_threads().max(1);
        let block = (last - first).div_ceil(threads * 4).max(1);

        interior.par_chunks_mut(plane_len * block).enumerate().for_each(|(b, chunk)| {
            let mut slice_buf = vec![0f32; ni * nj];
            let mut tmp = vec![0f32; kw * ni];
            // two most recent in-plane resampled source slices: (k, [kh * kw])
            let mut cache: [(usize, Vec<f32>); 2] = [(usize::MAX, vec![0f32; kh * kw]), (usize::MAX, vec![0f32; kh * kw])];
            for (p, plane) in chunk.chunks_mut(plane_len).enumerate() {
                let tap = pd.taps[first - pd.crop.pad_before + b * block + p];
                for k in [tap.i0, tap.i1] {
                    if cache[0].0 != k && cache[1].0 != k {
                        // evict the older entry (slot 1), keep slot 0 = newest
                        cache.swap(0, 1);
                        cache[0].0 = k;
                        volume.slice_f32(k, &mut slice_buf);
                        in_plane(&slice_buf, ni, &pw.taps, &ph.taps, &mut tmp, &mut cache[0].1);
                    }
                }
                let a = if cache[0].0 == tap.i0 { &cache[0].1 } else { &cache[1].1 };
                let c = if cache[0].0 == tap.i1 { &cache[0].1 } else { &cache[1].1 };
                for h in 0..kh {
                    let row = &mut plane[(ph.crop.pad_before + h) * tw + pw.crop.pad_before..][..kw];
                    let (ra, rc) = (&a[h * kw..(h + 1) * kw], &c[h * kw..(h + 1) * kw]);
                    for ((o, &x0), &x1) in row.iter_mut().zip(ra).zip(rc) {
                        *o = (x0 * tap.w0 + x1 * tap.w1) / 1000.0;
                    }
                }
            }
        });
    }
}

/// Clips one source slice (`[j][i]`, HU) and resamples it along W (= j) then H (= i) into
/// `dst[h][w]` (kept samples only).
fn in_plane(src: &[f32], ni: usize, wt: &[LinearTap], ht: &[LinearTap], tmp: &mut [f32], dst: &mut [f32]) {
    let kw = wt.len();
    for (w, t) in wt.iter().enumerate() {
        let r0 = &src[t.i0 * ni..(t.i0 + 1) * ni];
        let r1 = &src[t.i1 * ni..(t.i1 + 1) * ni];
        for ((o, &a), &b) in tmp[w * ni..(w + 1) * ni].iter_mut().zip(r0).zip(r1) {
            *o = a.clamp(HU_MIN, HU_MAX) * t.w0 + b.clamp(HU_MIN, HU_MAX) * t.w1;
        }
    }
    // dst is tmp resampled along i and transposed: tiles keep both sides in L1 (row by row, the
    // reads of tmp stride a whole row per value)
    const TILE: usize = 32;
    for w0 in (0..kw).step_by(TILE) {
        let w1 = (w0 + TILE).min(kw);
        for h0 in (0..ht.len()).step_by(TILE) {
            let h1 = (h0 + TILE).min(ht.len());
            for w in w0..w1 {
                let row = &tmp[w * ni..(w + 1) * ni];
                for (h, t) in ht[h0..h1].iter().enumerate() {
                    dst[(h0 + h) * kw + w] = row[t.i0] * t.w0 + row[t.i1] * t.w1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Geometry, Voxels};
    use ndarray::Array3;

    fn volume(nk: usize, nj: usize, ni: usize, spacing: [f64; 3], f: impl Fn(usize, usize, usize) -> i16) -> Volume {
        let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| f(k, j, i));
        let geometry = Geometry {
            spacing_mm: spacing,
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin_mm: [0.0; 3],
            slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, k as f64 * spacing[2]]).collect(),
        };
        Volume::new(Voxels::I16(data), geometry).unwrap()
    }

    /// Naive nested trilinear (ATen's formula) for cross-checking the separable version.
    fn naive(vol: &Volume) -> Vec<f32> {
        let [ni, nj, nk] = vol.dims();
        let [sd, sh, sw] = resampled_size(vol);
        let [_, td, th, tw] = CTCLIP_SHAPE;
        let (cd, ch, cw) = (CropPad::new(sd, td), CropPad::new(sh, th), CropPad::new(sw, tw));
        let v = |k: usize, i: usize, j: usize| vol.voxels().get(k, j, i).clamp(HU_MIN, HU_MAX);
        let mut out = vec![PAD; td * th * tw];
        for d in 0..cd.kept {
            let td_ = torch_linear_tap(nk, sd, cd.crop_start + d);
            for h in 0..ch.kept {
                let th_ = torch_linear_tap(ni, sh, ch.crop_start + h);
                for w in 0..cw.kept {
                    let tw_ = torch_linear_tap(nj, sw, cw.crop_start + w);
                    let inner = |k: usize| {
                        let a = v(k, th_.i0, tw_.i0) * tw_.w0 + v(k, th_.i0, tw_.i1) * tw_.w1;
                        let b = v(k, th_.i1, tw_.i0) * tw_.w0 + v(k, th_.i1, tw_.i1) * tw_.w1;
                        a * th_.w0 + b * th_.w1
                    };
                    let val = inner(td_.i0) * td_.w0 + inner(td_.i1) * td_.w1;
                    out[((cd.pad_before + d) * th + ch.pad_before + h) * tw + cw.pad_before + w] = val / 1000.0;
                }
            }
        }
        out
    }

    #[test]
    fn separable_equals_nested_formula() {
        // small volume with structure in every axis; upsampled in-plane, downsampled in z
        let vol = volume(40, 9, 11, [0.9, 1.1, 1.0], |k, j, i| ((k * 37 + j * 101 + i * 13) % 2400) as i16 - 1200);
        let a = ctclip_tensor(&vol).unwrap();
        let b = naive(&vol);
        assert_eq!(a.len(), 240 * 480 * 480);
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max <= 1e-6, "max diff {max}");
    }

    #[test]
    fn sizes_truncate_in_f32_and_pad_is_minus_one() {
        let vol = volume(30, 64, 64, [1.5, 1.5, 3.0], |_, _, _| 0);
        assert_eq!(resampled_size(&vol), [60, 128, 128]);
        let t = ctclip_tensor(&vol).unwrap();
        assert_eq!(t[0], -1.0);
        // centre voxel lies inside the interior: HU 0 -> 0.0
        assert_eq!(t[(120 * 480 + 240) * 480 + 240], 0.0);
    }

    #[test]
    fn clips_to_hu_window() {
        let vol = volume(30, 8, 8, [0.75, 0.75, 1.5], |k, _, _| if k % 2 == 0 { 3000 } else { -3000 });
        let t = ctclip_tensor(&vol).unwrap();
        assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(t.contains(&1.0));
    }

    #[test]
    fn blocks_stream_the_same_tensor() {
        // D interior starts and ends inside blocks of every size tried (padding planes on both sides)
        let vol = volume(70, 9, 11, [0.9, 1.1, 1.0], |k, j, i| ((k * 31 + j * 7 + i * 3) % 1800) as i16 - 900);
        let whole = ctclip_tensor(&vol).unwrap();
        for block in [1, 7, 48, 240, 1000] {
            let mut streamed = Vec::new();
            let mut sizes = Vec::new();
            ctclip_tensor_blocks(&vol, block, |b: &[f32]| -> Result<(), ()> {
                sizes.push(b.len() / (480 * 480));
                streamed.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert!(sizes.iter().all(|&n| n <= block.min(240)), "block {block}: {sizes:?}");
            assert!(streamed == whole, "block {block}: streamed tensor differs");
        }
        // a failing sink stops the stream with its error
        let mut calls = 0;
        let r = ctclip_tensor_blocks(&vol, 48, |_: &[f32]| {
            calls += 1;
            Err("disk full")
        });
        assert!(matches!(r, Err(CtclipBlocksError::Sink("disk full"))) && calls == 1);
        let short = volume(10, 8, 8, [0.75, 0.75, 1.5], |_, _, _| 0);
        assert!(matches!(ctclip_tensor_blocks(&short, 48, |_: &[f32]| Ok::<(), ()>(())), Err(CtclipBlocksError::Recipe(CtclipError::TooFewSlices { .. }))));
    }

    #[test]
    fn refuses_short_volumes() {
        let vol = volume(10, 8, 8, [0.75, 0.75, 1.5], |_, _, _| 0);
        assert_eq!(ctclip_tensor(&vol), Err(CtclipError::TooFewSlices { found: 10, min: 20 }));
    }
}
