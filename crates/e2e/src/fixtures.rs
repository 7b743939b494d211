//! Test inputs: the committed generated studies, real series from `../shared/testdata`, ZIPs
//! built in memory, and NIfTI files written from a preprocessed study.

use ct_volume::VoxelView;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use model_server::testing::{study, workspace_root};

/// The bytes of a committed generated study (`chest_normal`, `chest_abnormal`).
pub fn study_zip(name: &str) -> Vec<u8> {
    let p = study(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `../shared/testdata/dicom/<rel>`.
pub fn testdata(rel: &str) -> PathBuf {
    workspace_root().join("../shared/testdata/dicom").join(rel)
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A deflated ZIP of `(name, bytes)` entries.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

/// A ZIP of every file in `dir` (not recursive), entries named by file name.
pub fn zip_dir(dir: &Path) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), read(&p)))
        .collect();
    files.sort();
    let entries: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    zip_of(&entries)
}

/// A single-file NIfTI-1 of `dims` (i, j, k) int16 voxels, all `hu`, with `spacing` mm and no
/// sform.
pub fn uniform_nifti(dims: [u16; 3], spacing: [f32; 3], hu: i16) -> Vec<u8> {
    let mut h = nifti_header(dims, spacing);
    let n = dims.iter().map(|&d| usize::from(d)).product::<usize>();
    for _ in 0..n {
        h.extend_from_slice(&hu.to_le_bytes());
    }
    h
}

/// A NIfTI-1 header (352 bytes with the extension flag) for int16 data, slope 1, no sform.
fn nifti_header(dims: [u16; 3], spacing: [f32; 3]) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3u16, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (n, d) in dim.iter().enumerate() {
        h[40 + 2 * n..42 + 2 * n].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // DT_INT16
    h[72..74].copy_from_slice(&16i16.to_le_bytes());
    let pixdim = [1.0f32, spacing[0], spacing[1], spacing[2], 0.0, 0.0, 0.0, 0.0];
    for (n, p) in pixdim.iter().enumerate() {
        h[76 + 4 * n..80 + 4 * n].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
    h[112..116].copy_from_slice(&1f32.to_le_bytes()); // scl_slope
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// The committed study `name` preprocessed in-process and written as a single-file NIfTI-1
/// (int16, the canonical `[i, j, k]` layout, spacing in pixdim, an sform from the geometry):
/// what `/predict_nifti` should read back into the same volume.
pub fn study_nifti(name: &str) -> Vec<u8> {
    let cfg = preprocess_svc::PrepareConfig { skip_lung_validation: true, ..Default::default() };
    let p = preprocess_svc::prepare_path(&study(name), &cfg).unwrap_or_else(|e| panic!("preprocessing {name}: {e}"));
    let v = &p.volume;
    let [ni, nj, nk] = v.dims();
    let g = v.geometry();
    let mut h = nifti_header([ni, nj, nk].map(|d| u16::try_from(d).expect("dims fit NIfTI-1")), g.spacing_mm.map(|s| s as f32));
    h[254..256].copy_from_slice(&1i16.to_le_bytes()); // sform_code: scanner
    // sform (RAS) from the LPS geometry: columns = direction * spacing, LPS -> RAS flips x and y
    let o = g.orientation;
    let slice_dir = {
        let p = &g.slice_positions_mm;
        if p.len() > 1 {
            let d: Vec<f64> = (0..3).map(|a| p[1][a] - p[0][a]).collect();
            let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            [d[0] / n, d[1] / n, d[2] / n]
        } else {
            [0.0, 0.0, 1.0]
        }
    };
    let cols = [[o[0], o[1], o[2]], [o[3], o[4], o[5]], slice_dir];
    for (row, sign) in [(0usize, -1.0f64), (1, -1.0), (2, 1.0)] {
        let mut r = [0f32; 4];
        for c in 0..3 {
            r[c] = (sign * cols[c][row] * g.spacing_mm[c]) as f32;
        }
        r[3] = (sign * g.origin_mm[row]) as f32;
        for (n, x) in r.iter().enumerate() {
            let at = 280 + row * 16 + 4 * n;
            h[at..at + 4].copy_from_slice(&x.to_le_bytes());
        }
    }
    match v.voxels() {
        VoxelView::I16(a) => {
            for x in a.iter() {
                h.extend_from_slice(&x.to_le_bytes());
            }
        }
        VoxelView::F32(_) => panic!("{name}: expected an int16 volume"),
    }
    h
}

/// gzip of `data` (a `.nii.gz` from a `.nii`).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// The study UID preprocess-svc reports for a committed study.
pub fn study_uid(name: &str) -> String {
    let cfg = preprocess_svc::PrepareConfig { skip_lung_validation: true, ..Default::default() };
    preprocess_svc::prepare_path(&study(name), &cfg).unwrap_or_else(|e| panic!("preprocessing {name}: {e}")).meta.study_uid
}
