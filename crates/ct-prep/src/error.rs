//! The preprocessing error taxonomy: one typed enum, one stable `error_type` string per
//! variant, and one mapping to gRPC status codes (the gateway maps `error_type` to HTTP).

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    /// Not a ZIP archive / unsafe archive / unknown input format.
    #[error("{reason}")]
    NotAnArchive { reason: String },
    #[error("{what}: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("no DICOM files in the input ({entries} entries looked at)")]
    NoDicomFiles { entries: usize },
    #[error("no usable CT series: {reason}")]
    NoValidSeries { reason: String },
    #[error("lungs not found on the image or their relative extent is too low (occupancy {occupancy:.3}); check that intensities are Hounsfield units")]
    LungsNotFound { occupancy: f64 },
    #[error("lungs length is {length_mm:.2} mm which is too small (minimum {min_mm} mm)")]
    LungsTooShort { length_mm: f64, min_mm: f64 },
    #[error("inconsistent geometry: {reason}")]
    InconsistentGeometry { reason: String },
    #[error("unsupported pixel data: {reason}")]
    UnsupportedTransferSyntax { reason: String },
    #[error("invalid NIfTI: {reason}")]
    InvalidNifti { reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PrepError {
    /// Stable machine-readable type (documented in the README; never derived from the message).
    pub fn error_type(&self) -> &'static str {
        match self {
            PrepError::NotAnArchive { .. } => "not_an_archive",
            PrepError::TooLarge { .. } => "too_large",
            PrepError::NoDicomFiles { .. } => "no_dicom_files",
            PrepError::NoValidSeries { .. } => "no_valid_series",
            PrepError::LungsNotFound { .. } => "lungs_not_found",
            PrepError::LungsTooShort { .. } => "lungs_too_short",
            PrepError::InconsistentGeometry { .. } => "inconsistent_geometry",
            PrepError::UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            PrepError::InvalidNifti { .. } => "invalid_nifti",
            PrepError::Internal(_) => "internal",
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            PrepError::NotAnArchive { .. } | PrepError::InvalidNifti { .. } | PrepError::UnsupportedTransferSyntax { .. } => Code::InvalidArgument,
            PrepError::TooLarge { .. } => Code::ResourceExhausted,
            PrepError::NoDicomFiles { .. }
            | PrepError::NoValidSeries { .. }
            | PrepError::LungsNotFound { .. }
            | PrepError::LungsTooShort { .. }
            | PrepError::InconsistentGeometry { .. } => Code::FailedPrecondition,
            PrepError::Internal(_) => Code::Internal,
        }
    }

    /// The status sent to gRPC clients; internal errors do not leak details.
    pub fn to_status(&self) -> tonic::Status {
        let message = match self {
            PrepError::Internal(_) => "internal error while preprocessing".to_string(),
            other => other.to_string(),
        };
        ct_proto::errors::status(self.grpc_code(), self.error_type(), message)
    }

    pub fn not_archive(reason: impl Into<String>) -> Self {
        PrepError::NotAnArchive { reason: reason.into() }
    }

    pub fn geometry(reason: impl Into<String>) -> Self {
        PrepError::InconsistentGeometry { reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_stable_type_and_code() {
        let all = [
            (PrepError::not_archive("x"), "not_an_archive", Code::InvalidArgument),
            (PrepError::TooLarge { what: "archive".into(), size: 2, limit: 1 }, "too_large", Code::ResourceExhausted),
            (PrepError::NoDicomFiles { entries: 0 }, "no_dicom_files", Code::FailedPrecondition),
            (PrepError::NoValidSeries { reason: "x".into() }, "no_valid_series", Code::FailedPrecondition),
            (PrepError::LungsNotFound { occupancy: 0.0 }, "lungs_not_found", Code::FailedPrecondition),
            (PrepError::LungsTooShort { length_mm: 1.0, min_mm: 145.0 }, "lungs_too_short", Code::FailedPrecondition),
            (PrepError::geometry("x"), "inconsistent_geometry", Code::FailedPrecondition),
            (PrepError::UnsupportedTransferSyntax { reason: "x".into() }, "unsupported_transfer_syntax", Code::InvalidArgument),
            (PrepError::InvalidNifti { reason: "x".into() }, "invalid_nifti", Code::InvalidArgument),
            (PrepError::Internal("secret".into()), "internal", Code::Internal),
        ];
        for (e, t, c) in all {
            assert_eq!(e.error_type(), t);
            assert_eq!(e.grpc_code(), c);
            let s = e.to_status();
            assert_eq!(ct_proto::errors::error_type(&s).as_deref(), Some(t));
            assert!(!s.message().contains("secret"));
        }
    }
}

/// A volume too short for the CT-CLIP recipe (reference: "Image has N slices, minimum required:
/// 20", HTTP 500) is a series the models cannot use.
impl From<ct_volume::CtclipError> for PrepError {
    fn from(e: ct_volume::CtclipError) -> Self {
        PrepError::NoValidSeries { reason: e.to_string() }
    }
}
