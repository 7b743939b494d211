//! Parity of the diffusion, MedNeXt and fVLM recipes with PyTorch / MONAI on committed fixtures
//! (`tests/fixtures/recipes`, made by `tools/parity/recipes/make_recipe_fixtures.py`): sampled
//! values within 1e-4, plus shapes, boxes and whole-tensor statistics. Run with `--nocapture` to
//! see the measured maximum differences.

use ct_volume::recipe::fvlm::{FvlmOrganBox, FvlmRoi, fvlm_organ_input, fvlm_plan};
use ct_volume::recipe::mednext::{mednext_resampled, normalize_nonzero};
use ct_volume::{DiffusionParams, FvlmParams, Geometry, MednextParams, Volume, Voxels, diffusion_slices, mednext_resampled_clipped};
use ndarray::Array3;
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recipes")
}

fn json(case: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir().join(format!("{case}.json"))).unwrap()).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn arr3(v: &Value) -> [usize; 3] {
    usizes(v).try_into().unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// `(u32 index, f32 ...)` records of `width` f32 values.
fn records(case: &str, width: usize) -> Vec<(usize, Vec<f32>)> {
    let bytes = std::fs::read(dir().join(format!("{case}.bin"))).unwrap();
    let size = 4 + 4 * width;
    assert_eq!(bytes.len() % size, 0);
    bytes
        .chunks_exact(size)
        .map(|r| {
            let idx = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
            (idx, r[4..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        })
        .collect()
}

fn input_i16(meta: &Value) -> Array3<i16> {
    let [nk, nj, ni] = arr3(&meta["shape_kji"]);
    let bytes = std::fs::read(dir().join(meta["input"].as_str().unwrap())).unwrap();
    let v: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    Array3::from_shape_vec((nk, nj, ni), v).unwrap()
}

fn volume(meta: &Value, spacing: [f64; 3]) -> Volume {
    let data = input_i16(meta);
    let nk = data.shape()[0];
    let voxels = match meta.get("voxel").filter(|v| !v.is_null()) {
        None => Voxels::I16(data),
        Some(v) => {
            let (scale, offset) = (f(&v["scale"]) as f32, f(&v["offset"]) as f32);
            Voxels::F32(data.mapv(|x| f32::from(x) * scale + offset))
        }
    };
    let geometry = Geometry {
        spacing_mm: spacing,
        orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        origin_mm: [0.0; 3],
        slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, k as f64 * spacing[2]]).collect(),
    };
    Volume::new(voxels, geometry).unwrap()
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

// ------------------------------------------------------------------------------------ diffusion

/// The CT-CLIP-like input of the diffusion fixtures (`diffusion_input` of the generator).
fn diffusion_input(depth: usize) -> Vec<f32> {
    let mut out = vec![0f32; depth * 480 * 480];
    for d in 0..depth {
        for h in 0..480 {
            for w in 0..480 {
                let v = if w >= 440 {
                    -1.0
                } else if (100..380).contains(&h) && (30..200).contains(&w) {
                    ((d * 7 + h * 3 + w * 11) % 401) as f32 / 400.0
                } else {
                    (((h * h + 3 * w + d) % 2001) as f32 - 1000.0) / 1000.0
                };
                out[(d * 480 + h) * 480 + w] = v;
            }
        }
    }
    out
}

fn check_diffusion(case: &str) {
    let meta = json(case);
    let input = diffusion_input(meta["depth"].as_u64().unwrap() as usize);
    let range = usizes(&meta["range"]);
    let size: [usize; 2] = usizes(&meta["size"]).try_into().unwrap();
    let out = diffusion_slices(&input, range[0]..range[1], size).unwrap();
    assert_eq!(out.len(), usizes(&meta["shape"]).iter().product::<usize>());
    let tol = f(&meta["tolerance"]);
    let mut max = 0f64;
    for (idx, v) in records(case, 1) {
        max = max.max(f64::from((out[idx] - v[0]).abs()));
    }
    let (mean, std) = mean_std(&out);
    let st = &meta["stats"];
    println!("{case}: max |diff| {max:e} over {} samples; mean {mean} vs {}", meta["n_samples"], st["mean"]);
    assert!(max <= tol, "{case}: max |diff| {max:e}");
    assert!((mean - f(&st["mean"])).abs() < 1e-6 && (std - f(&st["std"])).abs() < 1e-6, "{case}: stats {mean} {std}");
}

#[test]
fn diffusion_square_matches_torch_bilinear() {
    check_diffusion("diffusion_square");
}

#[test]
fn diffusion_non_square_output_matches_torch_bilinear() {
    check_diffusion("diffusion_rect");
}

#[test]
fn diffusion_default_params_on_a_full_ctclip_tensor() {
    // the reference's 216 slices of a [1, 240, 480, 480] tensor, in 14 batches of <= 16
    let p = DiffusionParams::default();
    let input = vec![-1f32; 240 * 480 * 480];
    p.validate(240).unwrap();
    let mut n = 0;
    for r in p.batches(16) {
        let out = diffusion_slices(&input, r.clone(), p.size).unwrap();
        assert_eq!(out.len(), r.len() * 256 * 256);
        assert!(out.iter().all(|&v| v == -1.0));
        n += r.len();
    }
    assert_eq!(n, 216);
}

// ------------------------------------------------------------------------------------ mednext

/// MONAI computes the sample coordinates through normalised `affine_grid` arithmetic whose last
/// bits vary with the CPU (vectorised `linspace`, FMA); the recipe uses the exact mapping
/// `r * out / in`. Values agree to f32 rounding, except where the exact result is 0 (all
/// contributing voxels 0 HU): there MONAI may give a value of about 1e-11 that
/// `NormalizeIntensity(nonzero=True)` then treats as tissue. Such voxels (`ambiguous`) are
/// counted and excluded from the comparison of the final values.
fn check_mednext(case: &str) {
    let meta = json(case);
    let sp = f64s(&meta["spacing_ijk"]);
    let vol = volume(&meta, [sp[0], sp[1], sp[2]]);
    let p = &meta["params"];
    let hu = f64s(&p["hu_clip"]);
    let params = MednextParams { spacing_mm: f64s(&p["spacing_mm"]).try_into().unwrap(), hu_clip: [hu[0] as f32, hu[1] as f32], roi: arr3(&p["roi"]) };
    assert_eq!(mednext_resampled(&vol, &params).map(|a| a.size).to_vec(), usizes(&meta["resampled_shape_ijk"]), "{case}: resampled shape");

    let pre = mednext_resampled_clipped(&vol, &params).unwrap();
    let mut out = pre.clone();
    let st = normalize_nonzero(&mut out).unwrap();
    assert_eq!(out.len(), params.roi.iter().product::<usize>());
    assert_eq!(out, ct_volume::mednext_tensor(&vol, &params).unwrap());

    let tol = f(&meta["tolerance"]);
    let (mut max_pre, mut max_out, mut ambiguous, mut n) = (0f64, 0f64, 0usize, 0usize);
    for (idx, v) in records(case, 2) {
        let (ref_pre, ref_out) = (v[0], v[1]);
        max_pre = max_pre.max(f64::from((pre[idx] - ref_pre).abs()));
        if (pre[idx] == 0.0) != (ref_pre == 0.0) {
            assert!(ref_pre.abs() < 1e-6 && pre[idx].abs() < 1e-6, "{case}: zero / non-zero at {idx}: {} vs {ref_pre}", pre[idx]);
            ambiguous += 1;
            continue;
        }
        n += 1;
        max_out = max_out.max(f64::from((out[idx] - ref_out).abs()));
    }
    let nonzero_ref = meta["nonzero"].as_u64().unwrap() as usize;
    let (mu_ref, sigma_ref) = (f(&meta["mu"]), f(&meta["sigma"]));
    let (mean, std) = mean_std(&out);
    println!(
        "{case}: before normalisation max |diff| {max_pre:e} (HU); final max |diff| {max_out:e} over {n} samples, {ambiguous} ambiguous; \
         non-zero voxels {} vs {nonzero_ref}; mu {} vs {mu_ref}; sigma {} vs {sigma_ref}",
        st.count, st.mean, st.std
    );
    assert!(max_pre <= tol, "{case}: resampled max |diff| {max_pre:e}");
    assert!(max_out <= tol, "{case}: final max |diff| {max_out:e}");
    // the tiny MONAI values are the only possible difference in the non-zero set
    let tiny = meta["n_tiny_nonzero"].as_u64().unwrap() as usize;
    assert!(st.count.abs_diff(nonzero_ref) <= tiny, "{case}: non-zero voxels {} vs {nonzero_ref}", st.count);
    assert!((f64::from(st.mean) - mu_ref).abs() <= 1e-3 && (f64::from(st.std) - sigma_ref).abs() <= 1e-3, "{case}: mu/sigma");
    let s = &meta["stats"];
    assert!((mean - f(&s["mean"])).abs() < 1e-5 && (std - f(&s["std"])).abs() < 1e-5, "{case}: stats {mean} {std} vs {s}");
}

#[test]
fn mednext_odd_spacings_default_roi_matches_monai() {
    check_mednext("mednext_odd_default");
}

#[test]
fn mednext_f32_voxels_cropped_roi_matches_monai() {
    check_mednext("mednext_odd_crop_f32");
}

#[test]
fn mednext_anisotropic_with_untouched_axis_matches_monai() {
    check_mednext("mednext_aniso");
}

// ------------------------------------------------------------------------------------ fvlm

fn check_fvlm(case: &str) {
    let meta = json(case);
    let vol = volume(&meta, [0.8, 0.8, 2.0]);
    let [nk, nj, ni] = arr3(&meta["shape_kji"]);
    let mask_bytes = std::fs::read(dir().join(meta["mask"].as_str().unwrap())).unwrap();
    let mask = Array3::from_shape_vec((nk, nj, ni), mask_bytes).unwrap();
    let p = &meta["params"];
    let w = f64s(&p["hu_window"]);
    let params = FvlmParams {
        hu_window: [w[0] as f32, w[1] as f32],
        roi_margin: arr3(&p["roi_margin"]),
        min_pad: arr3(&p["min_pad"]),
        organ_size: arr3(&p["organ_size"]),
        mask_ids: usizes(&p["mask_ids"]).into_iter().map(|v| v as u8).collect(),
    };
    let plan = fvlm_plan(mask.view(), &params).unwrap();
    let roi = plan.roi.unwrap();
    let r = &meta["roi"];
    let want = FvlmRoi { lo: arr3(&r["lo"]), hi: arr3(&r["hi"]), pad_before: arr3(&r["pad_before"]), padded: arr3(&r["padded"]) };
    assert_eq!(roi, want, "{case}: roi");
    let organs = meta["organs"].as_array().unwrap();
    let want: Vec<FvlmOrganBox> = organs
        .iter()
        .map(|o| FvlmOrganBox {
            organ_index: o["organ_index"].as_u64().unwrap() as usize,
            mask_id: o["mask_id"].as_u64().unwrap() as u8,
            voxels: o["voxels"].as_u64().unwrap(),
            lo: arr3(&o["lo"]),
            hi: arr3(&o["hi"]),
        })
        .collect();
    assert_eq!(plan.organs, want, "{case}: organ boxes");

    let recs = records(case, 2);
    let tol = f(&meta["tolerance"]);
    let mut offset = 0;
    for (o, box_) in organs.iter().zip(&plan.organs) {
        let inp = fvlm_organ_input(&vol, mask.view(), &roi, box_, &params).unwrap();
        assert_eq!(inp.present, o["present"].as_bool().unwrap());
        let n = o["n_samples"].as_u64().unwrap() as usize;
        let (mut max_img, mut mask_mismatch) = (0f64, 0usize);
        for (idx, v) in &recs[offset..offset + n] {
            max_img = max_img.max(f64::from((inp.image[*idx] - v[0]).abs()));
            mask_mismatch += usize::from(inp.mask[*idx] != v[1]);
        }
        offset += n;
        let mask_sum = inp.mask.iter().filter(|&&v| v != 0.0).count();
        let (mean, std) = mean_std(&inp.image);
        let s = &o["image_stats"];
        println!(
            "{case} organ {}: image max |diff| {max_img:e} over {n} samples, mean {mean} vs {}; mask mismatches {mask_mismatch}, mask voxels {mask_sum} vs {}",
            inp.mask_id, s["mean"], o["mask_sum"]
        );
        assert!(max_img <= tol, "{case}: image max |diff| {max_img:e}");
        assert_eq!(mask_mismatch, 0, "{case}: mask samples");
        assert_eq!(mask_sum as u64, o["mask_sum"].as_u64().unwrap(), "{case}: mask voxel count");
        assert!((mean - f(&s["mean"])).abs() < 1e-6 && (std - f(&s["std"])).abs() < 1e-6, "{case}: image stats");
    }
    assert_eq!(offset, recs.len());
}

#[test]
fn fvlm_default_params_match_reference() {
    check_fvlm("fvlm_default");
}

#[test]
fn fvlm_custom_params_match_reference() {
    check_fvlm("fvlm_custom");
}
