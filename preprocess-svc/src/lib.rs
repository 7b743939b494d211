//! preprocess-svc: the gRPC face of the [`ct_prep`] preprocessing library. A chest-CT study
//! (ZIP of DICOM, folder of DICOM, `.nii`, `.nii.gz`) streamed in, the canonical volume and
//! lung mask streamed out. See the README for the rules and the deviations from the reference.

pub use ct_prep::{Metadata, PrepError, PrepareConfig, Prepared, assemble, dicom, intake, nifti_input, pipeline, prepare_bytes, prepare_path, series};

pub mod service;
