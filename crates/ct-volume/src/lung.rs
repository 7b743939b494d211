//! Classical, deterministic lung segmentation and the reference's lung validation.
//!
//! Mask (per axial slice, in parallel):
//! 1. `low` = voxels below [`AIR_HU`] (air and lung parenchyma);
//! 2. low-density regions (4-connected) that touch the slice border (air outside the body, the
//!    table gap) are not lung;
//! 3. the remaining low-density regions with an area of at least [`MIN_REGION_MM2`] are lung
//!    (this drops the trachea, small bowel gas and noise).
//!
//! Regions are found on row runs with union-find; the test module keeps the plain flood-fill
//! formulation as an oracle and checks both agree on random slices.
//!
//! Validation (celsus-reference §3.6.2, `LungValidator`): a slice is a lung slice when it has
//! more than 1500 lung voxels; `L` is the longest run of lung slices counted with the
//! reference's `longest_segment` (including its off-by-one at the volume ends); the study fails
//! with `lungs_not_found` when `L / nk < 0.35` (or there is no lung voxel), and with
//! `lungs_too_short` when `L * slice_spacing < 145 mm`.

use crate::Volume;
use ndarray::{Array3, Axis};
use rayon::prelude::*;

/// Voxels below this HU are candidate air/lung.
pub const AIR_HU: f32 = -400.0;
/// Smallest in-plane region kept as lung, in mm^2 (the trachea is about 2-4 cm^2).
pub const MIN_REGION_MM2: f64 = 600.0;
pub const OCCUPANCY_THRESHOLD: f64 = 0.35;
pub const LUNG_LENGTH_THRESHOLD_MM: f64 = 145.0;
pub const MIN_LUNG_PIXELS_ON_SLICE: usize = 1500;

/// Lung mask (1 = lung), shape `[nk, nj, ni]` like the volume.
pub fn lung_mask(volume: &Volume) -> Array3<u8> {
    let [ni, nj, nk] = volume.dims();
    let sp = volume.geometry().spacing_mm;
    let min_pixels = (MIN_REGION_MM2 / (sp[0] * sp[1])).ceil().max(1.0) as usize;
    let mut mask = Array3::<u8>::zeros((nk, nj, ni));
    mask.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(
        || vec![0f32; ni * nj],
        |hu, (k, mut plane)| {
            volume.slice_f32(k, hu);
            let out = plane.as_slice_mut().expect("mask planes are contiguous");
            segment_slice(hu, ni, nj, min_pixels, out);
        },
    );
    mask
}

/// Lung voxels on each slice of [`lung_mask`]: all the validation needs, without the 1 byte
/// per voxel the mask itself takes (callers that do not pass the mask on).
pub fn lung_voxels_per_slice(volume: &Volume) -> Vec<usize> {
    let [ni, nj, nk] = volume.dims();
    let sp = volume.geometry().spacing_mm;
    let min_pixels = (MIN_REGION_MM2 / (sp[0] * sp[1])).ceil().max(1.0) as usize;
    (0..nk)
        .into_par_iter()
        .map_init(
            || (vec![0f32; ni * nj], vec![0u8; ni * nj]),
            |(hu, out), k| {
                volume.slice_f32(k, hu);
                out.fill(0);
                segment_slice(hu, ni, nj, min_pixels, out);
                out.iter().filter(|&&v| v != 0).count()
            },
        )
        .collect()
}

/// One slice: 4-connected regions of voxels below [`AIR_HU`] that touch no slice border and
/// cover at least `min_pixels` become lung (`out[p] = 1`). Works on horizontal runs of low voxels
/// joined with union-find (runs in adjacent rows that share a column are connected): one pass
/// over the pixels and then only over runs, instead of a per-pixel flood fill.
fn segment_slice(hu: &[f32], ni: usize, nj: usize, min_pixels: usize, out: &mut [u8]) {
    struct Run {
        j: usize,
        start: usize,
        end: usize,
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut row_first = Vec::with_capacity(nj + 1);
    for j in 0..nj {
        row_first.push(runs.len());
        let row = &hu[j * ni..(j + 1) * ni];
        let mut i = 0;
        while i < ni {
            if row[i] < AIR_HU {
                let start = i;
                while i < ni && row[i] < AIR_HU {
                    i += 1;
                }
                runs.push(Run { j, start, end: i });
            } else {
                i += 1;
            }
        }
    }
    row_first.push(runs.len());

    let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    for j in 1..nj {
        let (mut a, a_end) = (row_first[j - 1], row_first[j]);
        let (mut b, b_end) = (row_first[j], row_first[j + 1]);
        while a < a_end && b < b_end {
            if runs[a].start < runs[b].end && runs[b].start < runs[a].end {
                let (ra, rb) = (find(&mut parent, a as u32), find(&mut parent, b as u32));
                if ra != rb {
                    parent[ra.max(rb) as usize] = ra.min(rb);
                }
            }
            if runs[a].end < runs[b].end {
                a += 1;
            } else {
                b += 1;
            }
        }
    }

    // per region: area and whether it touches the border (air outside the body, the table gap)
    let mut area = vec![0usize; runs.len()];
    let mut border = vec![false; runs.len()];
    for (r, run) in runs.iter().enumerate() {
        let root = find(&mut parent, r as u32) as usize;
        area[root] += run.end - run.start;
        border[root] |= run.j == 0 || run.j + 1 == nj || run.start == 0 || run.end == ni;
    }
    for (r, run) in runs.iter().enumerate() {
        let root = find(&mut parent, r as u32) as usize;
        if !border[root] && area[root] >= min_pixels {
            out[run.j * ni + run.start..run.j * ni + run.end].fill(1);
        }
    }
}

/// Figures of the reference's lung validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LungStats {
    /// Longest run of lung slices (reference counting, see [`longest_segment`]).
    pub lung_slices: usize,
    pub lung_length_mm: f64,
    pub occupancy: f64,
    pub lung_voxels: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LungValidation {
    Passed(LungStats),
    /// No lung voxel, or `occupancy < 0.35`.
    NotFound(LungStats),
    /// `lung_length_mm < 145`.
    TooShort(LungStats),
}

impl LungValidation {
    pub fn stats(&self) -> &LungStats {
        match self {
            LungValidation::Passed(s) | LungValidation::NotFound(s) | LungValidation::TooShort(s) => s,
        }
    }
}

/// The reference's `LungValidator` (chest check first, then length), on a `[nk, nj, ni]` mask.
pub fn validate_lungs(mask: &Array3<u8>, slice_spacing_mm: f64) -> LungValidation {
    let per_slice: Vec<usize> = mask.axis_iter(Axis(0)).into_par_iter().map(|s| s.iter().filter(|&&v| v != 0).count()).collect();
    validate_lung_counts(&per_slice, slice_spacing_mm)
}

/// [`validate_lungs`] from the lung voxels per slice ([`lung_voxels_per_slice`]).
pub fn validate_lung_counts(per_slice: &[usize], slice_spacing_mm: f64) -> LungValidation {
    let lung_voxels = per_slice.iter().map(|&c| c as u64).sum();
    let flags: Vec<bool> = per_slice.iter().map(|&c| c > MIN_LUNG_PIXELS_ON_SLICE).collect();
    let l = longest_segment(&flags);
    let stats = LungStats {
        lung_slices: l,
        lung_length_mm: l as f64 * slice_spacing_mm,
        occupancy: if flags.is_empty() { 0.0 } else { l as f64 / flags.len() as f64 },
        lung_voxels,
    };
    if lung_voxels == 0 || stats.occupancy < OCCUPANCY_THRESHOLD {
        LungValidation::NotFound(stats)
    } else if stats.lung_length_mm < LUNG_LENGTH_THRESHOLD_MM {
        LungValidation::TooShort(stats)
    } else {
        LungValidation::Passed(stats)
    }
}

/// The reference's `longest_segment` (diff based): runs are measured from the index *before*
/// their first element to their last element, so an interior run counts its true length, a run
/// starting at index 0 counts one short, a run ending at the last index one long, and a run
/// covering everything counts exactly.
pub fn longest_segment(flags: &[bool]) -> usize {
    if !flags.iter().any(|&f| f) {
        return 0;
    }
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    if flags[0] {
        starts.push(0usize);
    }
    for (p, w) in flags.windows(2).enumerate() {
        match (w[0], w[1]) {
            (false, true) => starts.push(p),
            (true, false) => ends.push(p),
            _ => {}
        }
    }
    if flags[flags.len() - 1] {
        ends.push(flags.len());
    }
    starts.iter().zip(&ends).map(|(s, e)| e - s).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Geometry, Voxels};

    #[test]
    fn longest_segment_reproduces_reference_quirks() {
        let f = |s: &str| s.chars().map(|c| c == '1').collect::<Vec<_>>();
        assert_eq!(longest_segment(&f("0000")), 0);
        assert_eq!(longest_segment(&f("0110")), 2); // interior: exact
        assert_eq!(longest_segment(&f("1100")), 1); // touches index 0: one short
        assert_eq!(longest_segment(&f("0011")), 3); // touches the end: one long
        assert_eq!(longest_segment(&f("1111")), 4); // everything: exact
        assert_eq!(longest_segment(&f("0111011110")), 4);
    }

    /// The definition, as a plain flood fill: the oracle for [`segment_slice`].
    fn segment_slice_flood(hu: &[f32], ni: usize, nj: usize, min_pixels: usize) -> Vec<u8> {
        let mut out = vec![0u8; ni * nj];
        let mut state: Vec<u8> = hu.iter().map(|&v| u8::from(v < AIR_HU)).collect(); // 1 = low, 2 = done
        let neighbours = |p: usize| {
            let (i, j) = (p % ni, p / ni);
            [(i > 0).then(|| p - 1), (i + 1 < ni).then(|| p + 1), (j > 0).then(|| p - ni), (j + 1 < nj).then(|| p + ni)]
        };
        for p0 in 0..ni * nj {
            if state[p0] != 1 {
                continue;
            }
            state[p0] = 2;
            let (mut stack, mut region, mut touches) = (vec![p0], Vec::new(), false);
            while let Some(p) = stack.pop() {
                region.push(p);
                let (i, j) = (p % ni, p / ni);
                touches |= i == 0 || j == 0 || i + 1 == ni || j + 1 == nj;
                for q in neighbours(p).into_iter().flatten() {
                    if state[q] == 1 {
                        state[q] = 2;
                        stack.push(q);
                    }
                }
            }
            if !touches && region.len() >= min_pixels {
                region.iter().for_each(|&q| out[q] = 1);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn run_segmentation_matches_the_flood_fill(
            ni in 1usize..24,
            nj in 1usize..24,
            min_pixels in 1usize..12,
            seed in proptest::collection::vec(proptest::bool::weighted(0.6), 24 * 24),
        ) {
            let hu: Vec<f32> = (0..ni * nj).map(|p| if seed[p] { -900.0 } else { 40.0 }).collect();
            let mut out = vec![0u8; ni * nj];
            segment_slice(&hu, ni, nj, min_pixels, &mut out);
            proptest::prop_assert_eq!(out, segment_slice_flood(&hu, ni, nj, min_pixels));
        }
    }

    /// A phantom: body disc of soft tissue, two lung ellipses, a trachea, outside air.
    fn phantom(nk: usize, lung_slices: std::ops::Range<usize>) -> Volume {
        let (n, c) = (128usize, 64.0f64);
        let data = Array3::from_shape_fn((nk, n, n), |(k, j, i)| {
            let (x, y) = (i as f64 - c, j as f64 - c);
            let body = (x / 60.0).powi(2) + (y / 50.0).powi(2) <= 1.0;
            let lung = lung_slices.contains(&k)
                && (((x - 25.0) / 18.0).powi(2) + (y / 30.0).powi(2) <= 1.0 || ((x + 25.0) / 18.0).powi(2) + (y / 30.0).powi(2) <= 1.0);
            let trachea = (x * x + (y + 30.0).powi(2)) <= 9.0;
            if !body {
                -1000
            } else if lung {
                -850
            } else if trachea {
                -990
            } else {
                40
            }
        });
        let g = Geometry {
            spacing_mm: [1.0, 1.0, 2.0],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin_mm: [0.0; 3],
            slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, 2.0 * k as f64]).collect(),
        };
        Volume::new(Voxels::I16(data), g).unwrap()
    }

    #[test]
    fn segments_lungs_not_outside_air_nor_trachea() {
        let vol = phantom(4, 0..4);
        let m = lung_mask(&vol);
        // outside air corner and trachea centre are not lung; lung centres are
        assert_eq!(m[[0, 0, 0]], 0);
        assert_eq!(m[[1, 34, 64]], 0);
        assert_eq!(m[[2, 64, 89]], 1);
        assert_eq!(m[[2, 64, 39]], 1);
    }

    #[test]
    fn validation_passes_and_fails_like_the_reference() {
        // 100 slices at 2 mm, lungs on slices 10..90: L = 80, 160 mm, occupancy 0.8
        let vol = phantom(100, 10..90);
        let v = validate_lungs(&lung_mask(&vol), 2.0);
        assert!(matches!(v, LungValidation::Passed(s) if s.lung_slices == 80 && s.lung_length_mm == 160.0), "{v:?}");
        // lungs on 10 slices of 100: occupancy 0.1
        let vol = phantom(100, 40..50);
        assert!(matches!(validate_lungs(&lung_mask(&vol), 2.0), LungValidation::NotFound(_)));
        // full coverage but only 40 slices * 2 mm = 80 mm
        let vol = phantom(40, 0..40);
        assert!(matches!(validate_lungs(&lung_mask(&vol), 2.0), LungValidation::TooShort(s) if s.lung_slices == 40));
        // no lungs at all
        let vol = phantom(30, 0..0);
        assert!(matches!(validate_lungs(&lung_mask(&vol), 2.0), LungValidation::NotFound(s) if s.lung_voxels == 0));
    }

    #[test]
    fn per_slice_counts_are_the_masks() {
        for (nk, lungs) in [(100, 10..90), (100, 40..50), (40, 0..40), (30, 0..0)] {
            let vol = phantom(nk, lungs);
            let mask = lung_mask(&vol);
            let counts = lung_voxels_per_slice(&vol);
            let expected: Vec<usize> = mask.axis_iter(Axis(0)).map(|s| s.iter().filter(|&&v| v != 0).count()).collect();
            assert_eq!(counts, expected);
            assert_eq!(validate_lung_counts(&counts, 2.0), validate_lungs(&mask, 2.0));
        }
    }
}
