//! The generic ONNX model server. A model service crate provides an [`Adapter`] (its recipe,
//! postprocessing and manifest checks) and calls [`cli::main`]; this crate does the rest:
//!
//! - [`bundle`]: `manifest.toml` + `model.onnx`, sha256-verified (format: `docs/model-bundle.md`).
//! - [`engine`]: ONNX Runtime via `ort` (`load-dynamic`, never downloading), CUDA or CPU, the
//!   session's real inputs/outputs checked against the manifest.
//! - [`server`]: inference workers on their own threads (one session each), admission control
//!   (`RESOURCE_EXHAUSTED` beyond `concurrency + queue_depth`), warm-up before ready, and the
//!   `ct.v1.ModelService` (`Info`, `Predict`).
//! - [`cli`]: `serve` (gRPC + grpc.health.v1 + reflection, admin HTTP `/live`, `/ready`,
//!   `/metrics`), `info` and `predict` (preprocessing in-process on one study).

pub mod adapter;
pub mod bundle;
pub mod cli;
pub mod engine;
pub mod metrics;
pub mod phantom;
pub mod server;
pub mod testing;

/// The services' global allocator settings (re-exported for the model binaries' `main.rs`).
pub use ct_service::alloc;
pub use adapter::{Adapter, AdapterOptions, ModelError, Runner, Study, activate};
pub use bundle::{Bundle, BundleError, DType};
pub use engine::{EngineConfig, EngineError, Input, Output, Provider};
pub use server::{Model, ServerConfig, Service};
