//! Typed errors over gRPC: a status code plus a machine-readable [`ErrorDetail`] in the status
//! details. Receivers read the `error_type` from the details, never from the message text.

use crate::v1::ErrorDetail;
use prost::Message;
use tonic::{Code, Status};

/// Builds a status whose details carry `error_type`.
pub fn status(code: Code, error_type: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let detail = ErrorDetail { error_type: error_type.to_string(), message: message.clone() };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The `error_type` a status carries, if it was built by [`status`].
pub fn error_type(status: &Status) -> Option<String> {
    if status.details().is_empty() {
        return None;
    }
    ErrorDetail::decode(status.details()).ok().map(|d| d.error_type).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_type_round_trips_through_status() {
        let s = super::status(tonic::Code::FailedPrecondition, "no_valid_series", "no CT series with >= 20 slices");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(super::error_type(&s).as_deref(), Some("no_valid_series"));
        assert_eq!(super::error_type(&tonic::Status::internal("x")), None);
    }
}
