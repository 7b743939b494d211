//! A small synthetic chest phantom (body, two lungs, spine) used for the warm-up run before a
//! service reports ready. It is not a test fixture: tests use generated DICOM series and
//! `../shared/testdata`.

use ct_volume::{Geometry, Volume, Voxels};
use ndarray::Array3;

/// 128 x 128 x 80 voxels of 3 x 3 x 4 mm (384 x 384 x 320 mm), int16 HU, with its lung mask.
pub fn chest() -> (Volume, Array3<u8>) {
    let (ni, nj, nk) = (128usize, 128usize, 80usize);
    let mut hu = Array3::<i16>::from_elem((nk, nj, ni), -1000);
    let mut mask = Array3::<u8>::zeros((nk, nj, ni));
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let x = (i as f64 - 64.0) / 56.0;
                let y = (j as f64 - 64.0) / 40.0;
                if x * x + y * y > 1.0 {
                    continue;
                }
                let mut v = 40i16;
                let in_lung = |cx: f64| {
                    let lx = (i as f64 - cx) / 20.0;
                    let ly = (j as f64 - 60.0) / 28.0;
                    lx * lx + ly * ly <= 1.0 && (8..72).contains(&k)
                };
                if in_lung(38.0) || in_lung(90.0) {
                    v = -850;
                    mask[[k, j, i]] = 1;
                }
                let (sx, sy) = (i as f64 - 64.0, j as f64 - 92.0);
                if sx * sx + sy * sy < 64.0 {
                    v = 700;
                }
                hu[[k, j, i]] = v;
            }
        }
    }
    let geometry = Geometry {
        spacing_mm: [3.0, 3.0, 4.0],
        orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        origin_mm: [-192.0, -192.0, 0.0],
        slice_positions_mm: (0..nk).map(|k| [-192.0, -192.0, k as f64 * 4.0]).collect(),
    };
    (Volume::new(Voxels::I16(hu), geometry).expect("valid phantom"), mask)
}
