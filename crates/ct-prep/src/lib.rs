//! ct-prep: the preprocessing library. A chest-CT study (ZIP of DICOM, folder of DICOM, `.nii`,
//! `.nii.gz`) in, a trustworthy canonical volume (int16/float32 HU, `[i, j, k]`, spacing in mm)
//! plus a lung mask out.
//!
//! `preprocess-svc` serves it over gRPC; the model services' one-shot `predict` CLI runs it
//! in-process. Rules and documented deviations from the reference: see the README.
//!
//! - [`intake`]: archive sniffing and bounded in-memory ZIP reading (zip-bomb limits).
//! - [`dicom`]: tolerant DICOM reading, header pass, pixel decoding to stored values.
//! - [`series`]: the reference's series selection (plus the documented deviations).
//! - [`assemble`]: dicom2nifti-style slice ordering, dedupe and geometry checks.
//! - [`nifti_input`]: `.nii` / `.nii.gz` input.
//! - [`pipeline`]: the whole thing, from bytes or a path to a [`Prepared`] study.

pub mod assemble;
pub mod dicom;
mod error;
pub mod intake;
pub mod nifti_input;
pub mod pipeline;
pub mod series;

pub use error::PrepError;
pub use pipeline::{Metadata, PrepareConfig, Prepared, prepare_bytes, prepare_path};
