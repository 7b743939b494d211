//! Parity of the ctclip tensor with the Python reference (`../shared/bench/baseline_preprocess.py`)
//! on committed fixtures (see tools/parity/README.md): sampled voxels within 1e-4 and full-tensor
//! statistics within tolerance. The full-size comparison is `tools/parity/run_full.sh`.

use preprocess_svc::{PrepareConfig, prepare_path};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn check_case(name: &str) {
    let dir = fixtures().join(name);
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let cfg = PrepareConfig { skip_lung_validation: true, ..PrepareConfig::default() };
    let prepared = prepare_path(&dir.join("series.zip"), &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
    let t = ct_volume::ctclip_tensor(&prepared.volume).unwrap();
    assert_eq!(t.len(), 240 * 480 * 480);

    let tol = reference["tolerance"].as_f64().unwrap();
    let samples = std::fs::read(dir.join("samples.bin")).unwrap();
    assert_eq!(samples.len() % 12, 0);
    let mut max = 0f64;
    for rec in samples.chunks_exact(12) {
        let idx = u64::from_le_bytes(rec[..8].try_into().unwrap()) as usize;
        let want = f32::from_le_bytes(rec[8..].try_into().unwrap());
        max = max.max(f64::from((t[idx] - want).abs()));
    }
    assert!(max <= tol, "{name}: max |diff| over {} samples = {max:e} > {tol:e}", samples.len() / 12);

    // the padding box and the statistics of the whole tensor
    let b: Vec<usize> = reference["interior"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let at = |d: usize, h: usize, w: usize| t[(d * 480 + h) * 480 + w];
    // everything just outside the interior box is padding
    for (d, h, w) in [(b[0].wrapping_sub(1), b[2], b[4]), (b[1], b[2], b[4]), (b[0], b[2].wrapping_sub(1), b[4]), (b[0], b[3], b[4]), (b[0], b[2], b[4].wrapping_sub(1)), (b[0], b[2], b[5])] {
        if d < 240 && h < 480 && w < 480 {
            assert_eq!(at(d, h, w), -1.0, "{name}: padding at ({d}, {h}, {w})");
        }
    }
    let n = t.len() as f64;
    let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (t.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let stats = &reference["stats"];
    assert!((mean - stats["mean"].as_f64().unwrap()).abs() < 1e-6, "{name}: mean {mean} vs {}", stats["mean"]);
    assert!((std - stats["std"].as_f64().unwrap()).abs() < 1e-6, "{name}: std {std} vs {}", stats["std"]);
    let (lo, hi) = t.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!((f64::from(lo) - stats["min"].as_f64().unwrap()).abs() <= tol && (f64::from(hi) - stats["max"].as_f64().unwrap()).abs() <= tol);
}

#[test]
fn synthetic_downsampling() {
    check_case("synth_down");
}

#[test]
fn synthetic_upsampling() {
    check_case("synth_up");
}

#[test]
fn synthetic_in_plane_crop() {
    check_case("synth_crop");
}

#[test]
fn synthetic_anisotropic_non_square() {
    check_case("synth_aniso");
}

#[test]
fn real_philips_series() {
    check_case("philips_real_28sl");
}
