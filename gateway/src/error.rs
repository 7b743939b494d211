//! The gateway's error taxonomy (ARCHITECTURE §6) and its two mappings: upstream gRPC status
//! (typed `error_type` in the status details, never the message text) -> [`ApiError`], and
//! [`ErrorKind`] -> HTTP status.

use axum::http::StatusCode;
use tonic::Code;

/// The error classes a client sees in `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a ZIP / not NIfTI, malformed multipart, missing `file` field, empty upload.
    BadRequest,
    /// Body or (uncompressed) archive over the limits.
    TooLarge,
    /// A well-formed input the pipeline cannot use (no DICOM, no CT series >= 20 slices,
    /// lungs not found / too short, inconsistent geometry, unsupported pixel data).
    Unprocessable,
    /// Too many studies in flight (gateway queue or a model service's queue).
    Overloaded,
    /// An upstream is starting or shutting down.
    NotReady,
    /// An upstream cannot be reached or did not answer in time.
    UpstreamUnavailable,
    /// The per-request deadline expired.
    Timeout,
    /// A bug somewhere; details are only logged.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unprocessable => "unprocessable",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotReady | ErrorKind::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One failed request: what the client is told, and what only the log gets.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The upstream's specific `error_type` when there is one (e.g. `lungs_not_found`,
    /// `not_an_archive`), or a gateway-specific cause (`missing_file_field`, `empty_upload`...).
    pub cause: String,
    /// The `error` text of the response (no internals for 5xx).
    pub message: String,
    /// Detail for the log only (upstream status, transport error...).
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, cause: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind, cause: cause.into(), message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn bad_request(cause: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, cause, message)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", "internal error").with_detail(detail)
    }

    pub fn timeout(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, "deadline_exceeded", what)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, "overloaded", message)
    }
}

/// Which endpoint failed: the reference's failure bodies and 422 texts differ between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Zip,
    Nifti,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Zip => "/predict",
            Endpoint::Nifti => "/predict_nifti",
        }
    }
}

// The reference's texts for its 422 cases (celsus-reference §1.6), kept for compatibility.
const LUNGS_NOT_FOUND_TEXT: &str = "Легкие не найдены на изображении или их относительный процент слишком мал.";
const TOO_FEW_SLICES_TEXT: &str = "Недостаточно срезов для обработки (требуется минимум 20 валидных срезов).";

/// Whether a failed upstream call means "that service is not there" (connection refused,
/// reset, timed out) rather than an answer.
fn unreachable_code(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// A failure of preprocess-svc's `Prepare`.
pub fn from_preprocess(status: &tonic::Status, endpoint: Endpoint) -> ApiError {
    let ty = ct_proto::errors::error_type(status);
    let upstream = || format!("preprocess: {:?} {}", status.code(), status.message());
    let Some(ty) = ty else {
        return if unreachable_code(status.code()) {
            ApiError::new(ErrorKind::UpstreamUnavailable, "preprocess_unavailable", "the preprocessing service is unavailable").with_detail(upstream())
        } else {
            ApiError::internal(upstream())
        };
    };
    let msg = status.message().to_string();
    let e = match ty.as_str() {
        "not_an_archive" | "invalid_nifti" => ApiError::new(ErrorKind::BadRequest, ty.as_str(), msg),
        "too_large" => ApiError::new(ErrorKind::TooLarge, ty.as_str(), msg),
        "lungs_not_found" => ApiError::new(ErrorKind::Unprocessable, ty.as_str(), LUNGS_NOT_FOUND_TEXT),
        // the reference's text is "Lungs length is {L:.2f} mm which is too small"; ours starts the same
        "lungs_too_short" => ApiError::new(ErrorKind::Unprocessable, ty.as_str(), capitalise(&msg)),
        "no_valid_series" if endpoint == Endpoint::Zip => ApiError::new(ErrorKind::Unprocessable, ty.as_str(), TOO_FEW_SLICES_TEXT),
        "no_dicom_files" | "no_valid_series" | "inconsistent_geometry" | "unsupported_transfer_syntax" => ApiError::new(ErrorKind::Unprocessable, ty.as_str(), msg),
        "not_ready" => ApiError::new(ErrorKind::NotReady, "preprocess_not_ready", "the preprocessing service is not ready"),
        _ => ApiError::internal(upstream()),
    };
    e.with_detail(upstream())
}

/// How one model service's failure counts for the study.
#[derive(Debug)]
pub enum ModelFailure {
    /// The service is absent (down, not ready, timed out): the missing-model policy decides.
    Missing(ApiError),
    /// The service answered with an error that fails the study whatever the policy.
    Fatal(ApiError),
}

/// A failure of one model service's `Predict`.
pub fn from_model(model: &str, status: &tonic::Status) -> ModelFailure {
    let upstream = format!("{model}: {:?} {}", status.code(), status.message());
    match ct_proto::errors::error_type(status).as_deref() {
        Some("overloaded") => ModelFailure::Fatal(ApiError::new(ErrorKind::Overloaded, "model_overloaded", format!("the {model} model service is busy, retry later")).with_detail(upstream)),
        Some("unprocessable") => ModelFailure::Fatal(ApiError::new(ErrorKind::Unprocessable, "model_unprocessable", format!("{model}: {}", status.message())).with_detail(upstream)),
        Some("not_ready") => ModelFailure::Missing(ApiError::new(ErrorKind::NotReady, "model_not_ready", format!("the {model} model service is not ready")).with_detail(upstream)),
        // a bad stream is the gateway's doing; internal is the service's
        Some(_) => ModelFailure::Fatal(ApiError::internal(upstream)),
        None if unreachable_code(status.code()) => {
            ModelFailure::Missing(ApiError::new(ErrorKind::UpstreamUnavailable, "model_unavailable", format!("the {model} model service is unavailable")).with_detail(upstream))
        }
        None => ModelFailure::Fatal(ApiError::internal(upstream)),
    }
}

/// A model service that did not answer within `CT_MODEL_TIMEOUT`.
pub fn model_timeout(model: &str, after: std::time::Duration) -> ModelFailure {
    ModelFailure::Missing(ApiError::new(ErrorKind::UpstreamUnavailable, "model_timeout", format!("the {model} model service did not answer within {} s", after.as_secs_f64())))
}

/// A failure of ensemble-svc's `Combine`.
pub fn from_ensemble(status: &tonic::Status) -> ApiError {
    let upstream = format!("ensemble: {:?} {}", status.code(), status.message());
    match ct_proto::errors::error_type(status).as_deref() {
        Some("not_ready") => ApiError::new(ErrorKind::NotReady, "ensemble_not_ready", "the ensemble service is not ready").with_detail(upstream),
        Some(_) => ApiError::internal(upstream),
        None if unreachable_code(status.code()) => ApiError::new(ErrorKind::UpstreamUnavailable, "ensemble_unavailable", "the ensemble service is unavailable").with_detail(upstream),
        None => ApiError::internal(upstream),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_proto::errors::status;

    #[test]
    fn preprocess_types_map_to_the_architecture_codes() {
        let cases = [
            ("not_an_archive", Code::InvalidArgument, 400),
            ("invalid_nifti", Code::InvalidArgument, 400),
            ("too_large", Code::ResourceExhausted, 413),
            ("no_dicom_files", Code::FailedPrecondition, 422),
            ("no_valid_series", Code::FailedPrecondition, 422),
            ("lungs_not_found", Code::FailedPrecondition, 422),
            ("lungs_too_short", Code::FailedPrecondition, 422),
            ("inconsistent_geometry", Code::FailedPrecondition, 422),
            ("unsupported_transfer_syntax", Code::InvalidArgument, 422),
            ("internal", Code::Internal, 500),
        ];
        for (ty, code, http) in cases {
            let e = from_preprocess(&status(code, ty, "secret detail"), Endpoint::Zip);
            assert_eq!(e.kind.http_status().as_u16(), http, "{ty}");
            if http == 500 {
                assert!(!e.message.contains("secret"));
            } else {
                assert_eq!(e.cause, ty);
            }
        }
        assert_eq!(from_preprocess(&tonic::Status::unavailable("connection refused"), Endpoint::Zip).kind, ErrorKind::UpstreamUnavailable);
        assert_eq!(from_preprocess(&tonic::Status::internal("boom"), Endpoint::Zip).kind, ErrorKind::Internal);
    }

    #[test]
    fn the_reference_texts_of_the_422_cases() {
        let lungs = from_preprocess(&status(Code::FailedPrecondition, "lungs_not_found", "x"), Endpoint::Nifti);
        assert_eq!(lungs.message, LUNGS_NOT_FOUND_TEXT);
        let short = from_preprocess(&status(Code::FailedPrecondition, "lungs_too_short", "lungs length is 120.00 mm which is too small (minimum 145 mm)"), Endpoint::Zip);
        assert!(short.message.starts_with("Lungs length is 120.00 mm which is too small"));
        let slices = from_preprocess(&status(Code::FailedPrecondition, "no_valid_series", "3 slices"), Endpoint::Zip);
        assert_eq!(slices.message, TOO_FEW_SLICES_TEXT);
        let nifti = from_preprocess(&status(Code::FailedPrecondition, "no_valid_series", "Image has 3 slices"), Endpoint::Nifti);
        assert_eq!(nifti.message, "Image has 3 slices");
    }

    #[test]
    fn model_failures_split_into_missing_and_fatal() {
        assert!(matches!(from_model("fvlm", &tonic::Status::unavailable("tcp connect error")), ModelFailure::Missing(_)));
        assert!(matches!(from_model("fvlm", &status(Code::Unavailable, "not_ready", "shutting down")), ModelFailure::Missing(_)));
        match from_model("fvlm", &status(Code::ResourceExhausted, "overloaded", "queue full")) {
            ModelFailure::Fatal(e) => assert_eq!(e.kind, ErrorKind::Overloaded),
            other => panic!("{other:?}"),
        }
        match from_model("fvlm", &status(Code::Internal, "internal", "secret")) {
            ModelFailure::Fatal(e) => assert!(e.kind == ErrorKind::Internal && !e.message.contains("secret")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(model_timeout("ctclip", std::time::Duration::from_secs(2)), ModelFailure::Missing(_)));
    }
}
