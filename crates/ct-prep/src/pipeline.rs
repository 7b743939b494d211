//! The whole preprocessing pipeline: intake -> headers -> series selection -> decode and
//! assembly -> lung mask and validation.

use crate::assemble;
use crate::dicom::{self, FileHeader, ReadFailure};
use crate::intake::{self, InputKind, Limits, ZipInput};
use crate::nifti_input::read_nifti;
use crate::series::{self, Selection};
use crate::PrepError;
use ct_volume::{LungStats, LungValidation, Volume, lung_mask, lung_voxels_per_slice, validate_lung_counts, validate_lungs};
use dicom_object::DefaultDicomObject;
use ndarray::Array3;
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct PrepareConfig {
    #[command(flatten)]
    pub limits: Limits,
    /// Fewest slices (frames counted) a series needs to be eligible (reference: 20).
    #[arg(long, env = "CT_MIN_SLICES", default_value_t = 20)]
    pub min_slices: usize,
    /// Skip the lung mask and the lung validation (non-chest test data only).
    #[arg(long, env = "CT_SKIP_LUNG_VALIDATION")]
    pub skip_lung_validation: bool,
    /// Validate the lungs without keeping the mask (`Prepared::lung_mask` is `None`): for
    /// callers that do not pass it on (the CLI; a gRPC request with `omit_lung_mask`).
    #[arg(skip)]
    pub omit_lung_mask: bool,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self { limits: Limits::default(), min_slices: 20, skip_lung_validation: false, omit_lung_mask: false }
    }
}

/// What the pipeline found out about the study.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metadata {
    pub study_uid: String,
    pub series_uid: String,
    pub modality: String,
    pub kernel: String,
    /// `None` for NIfTI input.
    pub selection: Option<Selection>,
    pub selection_reason: String,
    pub warnings: Vec<String>,
    pub n_source_files: usize,
    pub lung: Option<LungStatsJson>,
    pub timings_ms: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LungStatsJson {
    pub lung_slices: usize,
    pub lung_length_mm: f64,
    pub occupancy: f64,
    pub lung_voxels: u64,
}

impl From<&LungStats> for LungStatsJson {
    fn from(s: &LungStats) -> Self {
        Self { lung_slices: s.lung_slices, lung_length_mm: s.lung_length_mm, occupancy: s.occupancy, lung_voxels: s.lung_voxels }
    }
}

#[derive(Debug)]
pub struct Prepared {
    pub volume: Volume,
    /// `[nk, nj, ni]`, 1 = lung; `None` when lung validation was skipped or `omit_lung_mask` set.
    pub lung_mask: Option<Array3<u8>>,
    pub meta: Metadata,
}

/// Where DICOM files come from: a ZIP held in memory or a folder.
trait Source: Sync {
    fn count(&self) -> usize;
    fn read(&self, idx: usize, header_only: bool) -> Result<Result<DefaultDicomObject, ReadFailure>, PrepError>;

    /// Decodes the frames of file `idx` into `sink` (see [`dicom::decode_frames`]).
    fn decode(&self, idx: usize, sink: &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> {
        let obj = self.read(idx, false)?.map_err(|e| PrepError::geometry(format!("slice could not be read: {e}")))?;
        dicom::decode_frames(&obj, sink)
    }
}

impl Source for ZipInput<'_> {
    fn count(&self) -> usize {
        self.files.len()
    }

    fn read(&self, idx: usize, header_only: bool) -> Result<Result<DefaultDicomObject, ReadFailure>, PrepError> {
        // streamed: the header pass stops before Pixel Data; slices are read whole by `decode`
        let mut handle = self.handle();
        self.with_entry(&mut handle, self.files[idx].0, |r| dicom::read_object(r, header_only))
    }

    /// The whole entry in one inflate call (about twice as fast as streaming), then
    /// [`decode_file`]; entries `read_whole` does not take are streamed through dicom-rs.
    fn decode(&self, idx: usize, sink: &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> {
        let unreadable = |e: ReadFailure| PrepError::geometry(format!("slice could not be read: {e}"));
        match self.read_whole(&mut self.handle(), self.files[idx].0)? {
            Some(Ok(content)) => decode_file(&content, sink),
            Some(Err(corrupt)) => Err(unreadable(ReadFailure::NotDicom(corrupt))),
            None => dicom::decode_frames(&self.read(idx, false)?.map_err(unreadable)?, sink),
        }
    }
}

/// Decodes a whole DICOM file held in memory: native pixel data straight from its bytes
/// ([`dicom::native_pixel_data`]), anything else through dicom-rs.
fn decode_file(content: &[u8], sink: &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> {
    let unreadable = |e: ReadFailure| PrepError::geometry(format!("slice could not be read: {e}"));
    let head = dicom::read_object(&mut &content[..], true).map_err(unreadable)?;
    match dicom::native_pixel_data(&head, content) {
        Some(pixels) => pixels.decode(sink),
        None => dicom::decode_frames(&dicom::read_object(&mut &content[..], false).map_err(unreadable)?, sink),
    }
}

struct DirSource(Vec<PathBuf>);

impl Source for DirSource {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn decode(&self, idx: usize, sink: &mut dyn FnMut(usize, &[i32])) -> Result<(), PrepError> {
        let content = std::fs::read(&self.0[idx]).map_err(|e| PrepError::Internal(format!("read {}: {e}", self.0[idx].display())))?;
        decode_file(&content, sink)
    }

    fn read(&self, idx: usize, header_only: bool) -> Result<Result<DefaultDicomObject, ReadFailure>, PrepError> {
        let f = std::fs::File::open(&self.0[idx]).map_err(|e| PrepError::Internal(format!("open {}: {e}", self.0[idx].display())))?;
        let mut r = std::io::BufReader::new(f);
        Ok(dicom::read_object(&mut r as &mut dyn Read, header_only))
    }
}

/// Prepares a study held in memory (ZIP or NIfTI, sniffed from the bytes).
pub fn prepare_bytes(bytes: &[u8], filename: Option<&str>, cfg: &PrepareConfig) -> Result<Prepared, PrepError> {
    if bytes.len() as u64 > cfg.limits.max_input_bytes {
        return Err(PrepError::TooLarge { what: "input".into(), size: bytes.len() as u64, limit: cfg.limits.max_input_bytes });
    }
    match intake::sniff(bytes) {
        Some(InputKind::Zip) => {
            let t = Instant::now();
            let zip = ZipInput::open(bytes, &cfg.limits)?;
            let mut timings = vec![("open_archive".to_string(), ms(t))];
            let ignored = zip.ignored;
            let mut p = prepare_dicom(&zip, cfg, &mut timings)?;
            if ignored > 0 {
                p.meta.warnings.insert(0, format!("ignored {ignored} folder/hidden/report entries"));
            }
            p.meta.timings_ms = timings;
            Ok(p)
        }
        Some(InputKind::Nifti) => prepare_nifti(bytes, filename, cfg),
        None if bytes.is_empty() => Err(PrepError::not_archive("empty input")),
        None => Err(PrepError::not_archive("input is neither a ZIP archive nor a NIfTI volume")),
    }
}

/// Prepares a `.zip`, `.nii`, `.nii.gz` file, a folder of DICOM files or a single DICOM file.
pub fn prepare_path(path: &Path, cfg: &PrepareConfig) -> Result<Prepared, PrepError> {
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files).map_err(|e| PrepError::Internal(format!("reading folder {}: {e}", path.display())))?;
        files.sort();
        files.retain(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !(name.starts_with('.') || [".txt", ".pdf", ".jpg", ".png"].iter().any(|s| name.ends_with(s)))
        });
        let mut timings = Vec::new();
        let mut p = prepare_dicom(&DirSource(files), cfg, &mut timings)?;
        p.meta.timings_ms = timings;
        return Ok(p);
    }
    let bytes = std::fs::read(path).map_err(|e| PrepError::not_archive(format!("cannot read {}: {e}", path.display())))?;
    if intake::sniff(&bytes).is_none() && !bytes.is_empty() {
        // a single DICOM file: a one-file folder
        let mut timings = Vec::new();
        let mut p = prepare_dicom(&DirSource(vec![path.to_path_buf()]), cfg, &mut timings)?;
        p.meta.timings_ms = timings;
        return Ok(p);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    prepare_bytes(&bytes, name.as_deref(), cfg)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn prepare_dicom(src: &dyn Source, cfg: &PrepareConfig, timings: &mut Vec<(String, f64)>) -> Result<Prepared, PrepError> {
    let t = Instant::now();
    let parsed: Vec<Option<FileHeader>> = (0..src.count())
        .into_par_iter()
        .map(|i| Ok(src.read(i, true)?.ok().and_then(|obj| dicom::header(&obj).ok())))
        .collect::<Result<_, PrepError>>()?;
    let (entry_of, headers): (Vec<usize>, Vec<FileHeader>) = parsed.into_iter().enumerate().filter_map(|(i, h)| h.map(|h| (i, h))).unzip();
    timings.push(("headers".into(), ms(t)));
    if headers.is_empty() {
        return Err(PrepError::NoDicomFiles { entries: src.count() });
    }
    let mut warnings = Vec::new();
    let not_dicom = src.count() - headers.len();
    if not_dicom > 0 {
        warnings.push(format!("ignored {not_dicom} file(s) that are not DICOM instances with Study/Series/SOP UIDs and Modality"));
    }
    let chosen = series::select(&headers, cfg.min_slices)?;
    warnings.extend(chosen.warnings.iter().cloned());
    let first = &headers[chosen.series.files[0]];
    let (study_uid, series_uid) = (first.study_uid.clone(), chosen.series.uid.clone());
    tracing::info!(%study_uid, %series_uid, slices = chosen.series.slices, selection = ?chosen.selection, "series selected");

    let t = Instant::now();
    let plan = assemble::plan(&headers, &chosen.series.files)?;
    let (volume, more) = assemble::assemble(plan, |file, mut sink| src.decode(entry_of[file], &mut sink))?;
    warnings.extend(more);
    if volume.dims()[2] == 1 {
        warnings.push("single-slice volume: slice spacing set to 1 mm".into());
    }
    timings.push(("decode_assemble".into(), ms(t)));

    let meta = Metadata {
        study_uid,
        series_uid,
        modality: first.modality.clone(),
        kernel: chosen.series.kernel.clone(),
        selection: Some(chosen.selection),
        selection_reason: chosen.reason,
        warnings,
        n_source_files: chosen.series.files.len(),
        lung: None,
        timings_ms: Vec::new(),
    };
    finish(volume, meta, cfg, timings)
}

fn prepare_nifti(bytes: &[u8], filename: Option<&str>, cfg: &PrepareConfig) -> Result<Prepared, PrepError> {
    let t = Instant::now();
    let (volume, warnings) = read_nifti(bytes, cfg.limits.max_uncompressed_bytes)?;
    let mut timings = vec![("nifti".to_string(), ms(t))];
    // reference: study "nifti_<name>", series "nifti_<name>_series"
    let name = filename.unwrap_or("volume").replace(".nii.gz", "").replace(".nii", "");
    let meta = Metadata {
        study_uid: format!("nifti_{name}"),
        series_uid: format!("nifti_{name}_series"),
        modality: "CT".into(),
        kernel: String::new(),
        selection: None,
        selection_reason: "NIfTI input".into(),
        warnings,
        n_source_files: 1,
        lung: None,
        timings_ms: Vec::new(),
    };
    let mut p = finish(volume, meta, cfg, &mut timings)?;
    p.meta.timings_ms = timings;
    Ok(p)
}

fn finish(volume: Volume, mut meta: Metadata, cfg: &PrepareConfig, timings: &mut Vec<(String, f64)>) -> Result<Prepared, PrepError> {
    if cfg.skip_lung_validation {
        return Ok(Prepared { volume, lung_mask: None, meta });
    }
    let t = Instant::now();
    let (mask, validation) = if cfg.omit_lung_mask {
        (None, validate_lung_counts(&lung_voxels_per_slice(&volume), volume.geometry().spacing_mm[2]))
    } else {
        let mask = lung_mask(&volume);
        let validation = validate_lungs(&mask, volume.geometry().spacing_mm[2]);
        (Some(mask), validation)
    };
    timings.push(("lungs".into(), ms(t)));
    meta.lung = Some(validation.stats().into());
    match validation {
        LungValidation::Passed(_) => Ok(Prepared { volume, lung_mask: mask, meta }),
        LungValidation::NotFound(s) => Err(PrepError::LungsNotFound { occupancy: s.occupancy }),
        LungValidation::TooShort(s) => Err(PrepError::LungsTooShort { length_mm: s.lung_length_mm, min_mm: ct_volume::lung::LUNG_LENGTH_THRESHOLD_MM }),
    }
}
