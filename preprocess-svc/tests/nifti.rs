//! NIfTI input (.nii and .nii.gz) into the canonical volume, and clean refusals of bad headers.

use preprocess_svc::{PrepareConfig, prepare_bytes};
use std::io::Write;

/// A minimal single-file NIfTI-1: int16 data `value(i, j, k)`, pixdim, slope/intercept.
fn nifti(dims: [u16; 3], pixdim: [f32; 3], slope: f32, inter: f32, value: impl Fn(usize, usize, usize) -> i16) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3u16, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (n, d) in dim.iter().enumerate() {
        h[40 + 2 * n..42 + 2 * n].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // DT_INT16
    h[72..74].copy_from_slice(&16i16.to_le_bytes());
    let pd = [1.0f32, pixdim[0], pixdim[1], pixdim[2], 0.0, 0.0, 0.0, 0.0];
    for (n, p) in pd.iter().enumerate() {
        h[76 + 4 * n..80 + 4 * n].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&slope.to_le_bytes());
    h[116..120].copy_from_slice(&inter.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    for k in 0..dims[2] as usize {
        for j in 0..dims[1] as usize {
            for i in 0..dims[0] as usize {
                h.extend_from_slice(&value(i, j, k).to_le_bytes());
            }
        }
    }
    h
}

fn cfg() -> PrepareConfig {
    PrepareConfig { skip_lung_validation: true, ..PrepareConfig::default() }
}

#[test]
fn nii_and_nii_gz_give_the_same_volume_in_i_j_k_order() {
    let raw = nifti([6, 5, 4], [0.8, 0.9, 2.5], 1.0, -1024.0, |i, j, k| (i + 10 * j + 100 * k) as i16);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();
    let a = prepare_bytes(&raw, Some("chest.nii"), &cfg()).unwrap();
    let b = prepare_bytes(&gz, Some("chest.nii.gz"), &cfg()).unwrap();
    assert_eq!(a.volume, b.volume);
    assert_eq!(a.volume.dims(), [6, 5, 4]);
    assert_eq!(a.volume.geometry().spacing_mm, [0.800000011920929, 0.8999999761581421, 2.5]);
    // voxel [i=3, j=2, k=1] = 3 + 20 + 100 - 1024 HU
    assert_eq!(a.volume.voxels().get(1, 2, 3), -901.0);
    assert_eq!(a.meta.study_uid, "nifti_chest");
    assert_eq!(b.meta.series_uid, "nifti_chest_series");
}

#[test]
fn non_integer_scaling_keeps_float_hu() {
    let raw = nifti([4, 4, 2], [1.0, 1.0, 1.0], 0.5, -1000.25, |_, _, _| 3);
    let p = prepare_bytes(&raw, Some("x.nii"), &cfg()).unwrap();
    assert!(matches!(p.volume.voxels(), ct_volume::VoxelView::F32(_)));
    assert_eq!(p.volume.voxels().get(0, 0, 0), -998.75);
}

#[test]
fn broken_headers_are_refused_with_invalid_nifti() {
    let good = nifti([4, 4, 2], [1.0, 1.0, 1.0], 1.0, 0.0, |_, _, _| 0);
    let mut truncated = good.clone();
    truncated.truncate(360);
    let mut zero_spacing = good.clone();
    zero_spacing[80..84].copy_from_slice(&0f32.to_le_bytes());
    let mut four_d = good.clone();
    four_d[48..50].copy_from_slice(&3u16.to_le_bytes()); // dim[4] = 3 time points
    four_d[40..42].copy_from_slice(&4u16.to_le_bytes());
    let mut bad_type = good;
    bad_type[70..72].copy_from_slice(&1234i16.to_le_bytes());
    for (name, bytes) in [("truncated", truncated), ("zero spacing", zero_spacing), ("4-D", four_d), ("datatype", bad_type)] {
        let err = prepare_bytes(&bytes, Some("x.nii"), &cfg()).err().unwrap_or_else(|| panic!("{name} accepted"));
        assert_eq!(err.error_type(), "invalid_nifti", "{name}: {err}");
    }
    let err = prepare_bytes(&[0x1f, 0x8b, 8, 0, 0, 0], Some("x.nii.gz"), &cfg()).err().unwrap();
    assert_eq!(err.error_type(), "invalid_nifti");
}
