//! preprocess-svc: a chest-CT study (ZIP of DICOM, folder of DICOM, `.nii`, `.nii.gz`) in, a
//! trustworthy canonical volume (int16/float32 HU, `[i, j, k]`, spacing in mm) plus a lung
//! mask out. See the crate README for the rules and the documented deviations from the
//! reference.

pub mod assemble;
pub mod dicom;
mod error;
pub mod intake;
pub mod nifti_input;
pub mod pipeline;
pub mod series;
pub mod service;

pub use error::PrepError;
pub use pipeline::{Metadata, PrepareConfig, Prepared, prepare_bytes, prepare_path};
