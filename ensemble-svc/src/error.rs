//! The ensemble's error taxonomy: one typed enum, one stable `error_type` per variant, one
//! mapping to gRPC status codes (the gateway maps `error_type` to HTTP).

use std::path::PathBuf;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// A bundle file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// `manifest.toml` (or another bundle file) is malformed or inconsistent.
    #[error("{path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    /// A bundle file's sha256 differs from the manifest.
    #[error("{path}: sha256 is {found}, the manifest says {expected}")]
    Checksum { path: PathBuf, expected: String, found: String },
    /// The feature definition (`features.toml`) is malformed.
    #[error("feature definition: {reason}")]
    FeatureSpec { reason: String },
    /// LightGBM refused to load a model or failed.
    #[error("LightGBM ({what}): {reason}")]
    Lightgbm { what: String, reason: String },
    /// A model expects features no configured model service can ever produce.
    #[error(
        "the {model} model expects {} feature(s) that no configured model service can produce: {}{}",
        features.len(),
        features.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
        if features.len() > 10 { ", ..." } else { "" }
    )]
    Unproducible { model: String, features: Vec<String> },
    /// The thoracic model is fed the main model's vector but expects another number of features.
    #[error("the thoracic model expects {thoracic} features but is fed the main model's {main} (thoracic_features = \"main\")")]
    ThoracicShape { main: usize, thoracic: usize },
    /// Scores sent by a client (gRPC request or scores file) are unusable.
    #[error("invalid scores: {reason}")]
    InvalidScores { reason: String },
    /// A labels CSV is unusable.
    #[error("labels {path}: {reason}")]
    Labels { path: PathBuf, reason: String },
    /// Training or calibration cannot proceed with this data.
    #[error("{reason}")]
    Training { reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EnsembleError {
    /// Stable machine-readable type (documented in the README; never derived from the message).
    pub fn error_type(&self) -> &'static str {
        match self {
            EnsembleError::InvalidScores { .. } => "invalid_scores",
            EnsembleError::Io { .. }
            | EnsembleError::Bundle { .. }
            | EnsembleError::Checksum { .. }
            | EnsembleError::FeatureSpec { .. }
            | EnsembleError::Unproducible { .. }
            | EnsembleError::ThoracicShape { .. } => "invalid_bundle",
            EnsembleError::Labels { .. } | EnsembleError::Training { .. } => "invalid_training_data",
            EnsembleError::Lightgbm { .. } | EnsembleError::Internal(_) => "internal",
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            EnsembleError::InvalidScores { .. } => Code::InvalidArgument,
            EnsembleError::Labels { .. } | EnsembleError::Training { .. } => Code::FailedPrecondition,
            EnsembleError::Io { .. }
            | EnsembleError::Bundle { .. }
            | EnsembleError::Checksum { .. }
            | EnsembleError::FeatureSpec { .. }
            | EnsembleError::Unproducible { .. }
            | EnsembleError::ThoracicShape { .. }
            | EnsembleError::Lightgbm { .. }
            | EnsembleError::Internal(_) => Code::Internal,
        }
    }

    /// The status sent to gRPC clients; only client errors carry their message.
    pub fn to_status(&self) -> tonic::Status {
        let message = match self {
            EnsembleError::InvalidScores { .. } => self.to_string(),
            _ => "internal error in the ensemble".to_string(),
        };
        ct_proto::errors::status(self.grpc_code(), self.error_type(), message)
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        EnsembleError::InvalidScores { reason: reason.into() }
    }

    pub(crate) fn spec(reason: impl Into<String>) -> Self {
        EnsembleError::FeatureSpec { reason: reason.into() }
    }

    pub(crate) fn bundle(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        EnsembleError::Bundle { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EnsembleError::Io { path: path.into(), source }
    }

    pub(crate) fn lgbm(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        EnsembleError::Lightgbm { what: what.into(), reason: e.to_string() }
    }

    pub(crate) fn training(reason: impl Into<String>) -> Self {
        EnsembleError::Training { reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_stable_type_and_code() {
        let all = [
            (EnsembleError::invalid("x"), "invalid_scores", Code::InvalidArgument),
            (EnsembleError::bundle("/b", "secret"), "invalid_bundle", Code::Internal),
            (EnsembleError::spec("secret"), "invalid_bundle", Code::Internal),
            (EnsembleError::Unproducible { model: "main".into(), features: vec!["a".into()] }, "invalid_bundle", Code::Internal),
            (EnsembleError::ThoracicShape { main: 1, thoracic: 2 }, "invalid_bundle", Code::Internal),
            (EnsembleError::training("secret"), "invalid_training_data", Code::FailedPrecondition),
            (EnsembleError::lgbm("predict", "secret"), "internal", Code::Internal),
            (EnsembleError::Internal("secret".into()), "internal", Code::Internal),
        ];
        for (e, t, c) in all {
            assert_eq!(e.error_type(), t);
            assert_eq!(e.grpc_code(), c);
            let s = e.to_status();
            assert_eq!(ct_proto::errors::error_type(&s).as_deref(), Some(t));
            assert!(!s.message().contains("secret"));
        }
        assert!(EnsembleError::invalid("value of x is NaN").to_status().message().contains("NaN"));
    }

    #[test]
    fn unproducible_lists_the_first_names() {
        let e = EnsembleError::Unproducible { model: "main".into(), features: (0..12).map(|i| format!("f{i}")).collect() };
        let m = e.to_string();
        assert!(m.contains("12 feature(s)") && m.contains("f9") && !m.contains("f10") && m.ends_with("..."));
    }
}
