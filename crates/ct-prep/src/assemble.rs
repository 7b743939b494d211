//! Volume assembly with dicom2nifti's semantics (celsus-reference §2.6-2.7): slices sorted
//! ascending along the patient coordinate with the largest range, HU = stored * slope +
//! intercept, index `[i = column, j = row, k = slice]`, spacing from PixelSpacing and the
//! slice step `(IPP_first - IPP_last) / (1 - N)`.
//!
//! Decisions (documented in the README):
//! - slices at the same position with identical pixels are de-duplicated; with different
//!   pixels the series is refused (`inconsistent_geometry`);
//! - gantry tilt (stacking direction not along the slice normal, dicom2nifti's tolerance) and
//!   non-uniform slice spacing (missing slices) are refused with `inconsistent_geometry`, as
//!   the reference does (it answers 500), rather than silently resampled;
//! - HU are kept as int16 when every slope/intercept is an integer (values beyond the int16
//!   range saturate; every recipe clips far inside it), else as float32.

use crate::PrepError;
use crate::dicom::FileHeader;
use ct_volume::{Geometry, Volume, Voxels};
use ndarray::{Array3, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// One frame of the series, with its geometry.
#[derive(Debug, Clone)]
pub struct SliceRef {
    pub file: usize,
    pub frame: usize,
    pub ipp: [f64; 3],
    pub iop: [f64; 6],
    pub spacing: [f64; 2],
    pub slope: f64,
    pub intercept: f64,
    pub instance: Option<i64>,
}

/// Slices in stacking order plus the frame size and voxel type.
#[derive(Debug)]
pub struct Plan {
    pub slices: Vec<SliceRef>,
    pub rows: usize,
    pub cols: usize,
    pub integer_hu: bool,
    pub warnings: Vec<String>,
}

fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Orders the selected files' frames and checks what can be checked before decoding.
pub fn plan(headers: &[FileHeader], files: &[usize]) -> Result<Plan, PrepError> {
    let first = &headers[files[0]];
    let (rows, cols) = (first.rows as usize, first.cols as usize);
    let mut slices = Vec::new();
    let mut missing = 0;
    for &f in files {
        let h = &headers[f];
        if (h.rows as usize, h.cols as usize) != (rows, cols) {
            return Err(PrepError::geometry(format!("slices of different sizes in one series ({rows}x{cols} and {}x{})", h.rows, h.cols)));
        }
        for (frame, fi) in h.frame_info.iter().enumerate() {
            match (fi.ipp, fi.iop, fi.pixel_spacing) {
                (Some(ipp), Some(iop), Some(spacing)) => {
                    slices.push(SliceRef { file: f, frame, ipp, iop, spacing, slope: fi.slope, intercept: fi.intercept, instance: h.instance_number })
                }
                _ => missing += 1,
            }
        }
    }
    if missing > 0 {
        return Err(PrepError::geometry(format!("{missing} slice(s) lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing")));
    }
    let iop0 = slices[0].iop;
    if let Some(s) = slices.iter().find(|s| s.iop.iter().zip(&iop0).any(|(a, b)| (a - b).abs() > 1e-3)) {
        return Err(PrepError::geometry(format!("slices with different orientations in one series ({:?} vs {:?})", iop0, s.iop)));
    }
    // dicom2nifti: sort by the patient coordinate with the largest range
    let range = |a: usize| {
        let (lo, hi) = slices.iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s.ipp[a]), hi.max(s.ipp[a])));
        hi - lo
    };
    let axis = (0..3).max_by(|&a, &b| range(a).total_cmp(&range(b))).unwrap_or(2);
    slices.sort_by(|a, b| a.ipp[axis].total_cmp(&b.ipp[axis]).then(a.instance.cmp(&b.instance)));
    let integer_hu = slices.iter().all(|s| s.slope.fract() == 0.0 && s.intercept.fract() == 0.0 && s.slope.abs() <= 65535.0 && s.intercept.abs() <= 1e6);
    Ok(Plan { slices, rows, cols, integer_hu, warnings: Vec::new() })
}

/// Decodes the planned slices in parallel straight into the volume, de-duplicates, checks the
/// stacking geometry and returns the volume. `decode(file, sink)` must call `sink(frame,
/// stored_values)` for every frame of `file`.
pub fn assemble<D>(mut plan: Plan, decode: D) -> Result<(Volume, Vec<String>), PrepError>
where
    D: Fn(usize, &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> + Sync,
{
    let nk = plan.slices.len();
    let (nj, ni) = (plan.rows, plan.cols);
    let mut voxels = if plan.integer_hu { Voxels::I16(Array3::zeros((nk, nj, ni))) } else { Voxels::F32(Array3::zeros((nk, nj, ni))) };
    // hand each file the (frame -> slab) views it fills
    let mut jobs: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for (k, s) in plan.slices.iter().enumerate() {
        match jobs.iter_mut().find(|(f, _)| *f == s.file) {
            Some((_, v)) => v.push((s.frame, k)),
            None => jobs.push((s.file, vec![(s.frame, k)])),
        }
    }
    let slices = &plan.slices;
    match &mut voxels {
        Voxels::I16(a) => fill(a, &jobs, &decode, |raw, k, out| {
            let (m, b) = (slices[k].slope as i64, slices[k].intercept as i64);
            for (o, &v) in out.iter_mut().zip(raw) {
                *o = (i64::from(v) * m + b).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            }
        })?,
        Voxels::F32(a) => fill(a, &jobs, &decode, |raw, k, out| {
            let (m, b) = (slices[k].slope, slices[k].intercept);
            for (o, &v) in out.iter_mut().zip(raw) {
                *o = (f64::from(v) * m + b) as f32;
            }
        })?,
    }
    dedupe(&mut plan, &mut voxels)?;
    let geometry = stack_geometry(&plan)?;
    let volume = Volume::new(voxels, geometry).map_err(|e| PrepError::geometry(e.to_string()))?;
    Ok((volume, plan.warnings))
}

fn fill<T: Send + Copy, D>(a: &mut Array3<T>, jobs: &[(usize, Vec<(usize, usize)>)], decode: &D, convert: impl Fn(&[i32], usize, &mut [T]) + Sync) -> Result<(), PrepError>
where
    D: Fn(usize, &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> + Sync,
{
    let mut views: Vec<Option<ArrayViewMut2<T>>> = a.axis_iter_mut(Axis(0)).map(Some).collect();
    let work: Vec<(usize, Vec<(usize, usize, ArrayViewMut2<T>)>)> =
        jobs.iter().map(|(f, frames)| (*f, frames.iter().map(|&(fr, k)| (fr, k, views[k].take().expect("each slab once"))).collect())).collect();
    work.into_par_iter().try_for_each(|(file, mut targets)| {
        let mut seen = 0usize;
        let mut bad_size = None;
        decode(file, &mut |frame, values| {
            for (fr, k, view) in targets.iter_mut() {
                if *fr == frame {
                    if values.len() != view.len() {
                        bad_size = Some(values.len());
                        return;
                    }
                    convert(values, *k, view.as_slice_mut().expect("slabs of a standard-layout array are contiguous"));
                    seen += 1;
                }
            }
        })?;
        if let Some(n) = bad_size {
            return Err(PrepError::geometry(format!("decoded frame has {n} pixels, header announces a different size")));
        }
        if seen < targets.len() {
            return Err(PrepError::geometry(format!("pixel data holds fewer frames than announced ({seen} of {})", targets.len())));
        }
        Ok(())
    })
}

fn same_position(a: &SliceRef, b: &SliceRef) -> bool {
    norm(sub(a.ipp, b.ipp)) < 1e-4
}

fn dedupe(plan: &mut Plan, voxels: &mut Voxels) -> Result<(), PrepError> {
    let mut drop = Vec::new();
    for k in 1..plan.slices.len() {
        if same_position(&plan.slices[k - 1], &plan.slices[k]) {
            let equal = match voxels {
                Voxels::I16(a) => a.index_axis(Axis(0), k - 1) == a.index_axis(Axis(0), k),
                Voxels::F32(a) => a.index_axis(Axis(0), k - 1) == a.index_axis(Axis(0), k),
            };
            if !equal {
                return Err(PrepError::geometry(format!("two different slices at the same position {:?}", plan.slices[k].ipp)));
            }
            drop.push(k);
        }
    }
    if drop.is_empty() {
        return Ok(());
    }
    let keep: Vec<usize> = (0..plan.slices.len()).filter(|k| !drop.contains(k)).collect();
    plan.warnings.push(format!("removed {} duplicate slice(s)", drop.len()));
    plan.slices = keep.iter().map(|&k| plan.slices[k].clone()).collect();
    *voxels = match voxels {
        Voxels::I16(a) => Voxels::I16(a.select(Axis(0), &keep)),
        Voxels::F32(a) => Voxels::F32(a.select(Axis(0), &keep)),
    };
    Ok(())
}

fn allclose(a: [f64; 3], b: [f64; 3], rtol: f64, atol: f64) -> bool {
    (0..3).all(|x| (a[x] - b[x]).abs() <= atol + rtol * b[x].abs())
}

fn stack_geometry(plan: &Plan) -> Result<Geometry, PrepError> {
    let s = &plan.slices;
    let n = s.len();
    let iop = s[0].iop;
    let (row_dir, col_dir) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let normal = [
        row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
        row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
        row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0],
    ];
    // PixelSpacing = (row spacing, column spacing): along i (columns) the step is [1]
    let spacing_i = s[0].spacing[1] * norm(row_dir);
    let spacing_j = s[0].spacing[0] * norm(col_dir);
    let slice_spacing = if n == 1 {
        1.0
    } else {
        let stack = sub(s[n - 1].ipp, s[0].ipp);
        let len = norm(stack);
        let dir = stack.map(|v| v / len);
        if !(allclose(dir, normal, 0.05, 0.05) || allclose(dir, normal.map(|v| -v), 0.05, 0.05)) {
            let angle = dot(dir, normal).abs().min(1.0).acos().to_degrees();
            return Err(PrepError::geometry(format!("gantry tilt or oblique stacking of {angle:.1} degrees (slices are not stacked along their normal)")));
        }
        let first = dot(sub(s[1].ipp, s[0].ipp), dir);
        for k in 1..n - 1 {
            let d = dot(sub(s[k + 1].ipp, s[k].ipp), dir);
            if (d - first).abs() > 0.1 + 0.05 * first.abs() {
                return Err(PrepError::geometry(format!(
                    "non-uniform slice spacing: {first:.3} mm between slices 0 and 1 but {d:.3} mm between slices {k} and {} (missing slices?)",
                    k + 1
                )));
            }
        }
        // dicom2nifti's step (IPP_first - IPP_last) / (1 - N); the NIfTI zoom is its norm
        norm(stack.map(|v| v / (n as f64 - 1.0)))
    };
    Ok(Geometry {
        spacing_mm: [spacing_i, spacing_j, slice_spacing],
        orientation: iop,
        origin_mm: s[0].ipp,
        slice_positions_mm: s.iter().map(|x| x.ipp).collect(),
    })
}
