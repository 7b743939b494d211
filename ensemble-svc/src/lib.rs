//! ensemble-svc: the last stage of the triage. The scores of the five model services in, the
//! reference's feature vector (celsus-reference §4.1-4.2), the main and thoracic LightGBM
//! probabilities, the 0/1 decisions (`>=` threshold) and the top pathologies (§4.4) out.
//!
//! - [`spec`]: the feature definition (data: `features.toml`, the reference's embedded as default).
//! - [`features`]: feature construction with numpy's float64 arithmetic.
//! - [`align`]: matching to a LightGBM model's feature list after LightGBM's own name rewriting,
//!   and the missing-feature policy (`zero` | `nan`).
//! - [`booster`]: the [`booster::Booster`] trait and its LightGBM (`lightgbm3`) implementation.
//! - [`bundle`]: the ensemble bundle (`manifest.toml`, `main.txt`, `thoracic.txt`, `features.toml`).
//! - [`ensemble`]: the assembled, checked ensemble and its [`ensemble::Prediction`].
//! - [`top`]: the top pathologies (§4.4).
//! - [`service`]: the gRPC `ct.v1.EnsembleService`.
//! - [`train`]: retraining and calibration on a site's own data.
//!
//! See the crate README for the bundle format, the flags and the tests.

pub mod align;
pub mod booster;
pub mod bundle;
pub mod ensemble;
mod error;
pub mod features;
pub mod service;
pub mod spec;
pub mod top;
pub mod train;

pub use error::EnsembleError;
