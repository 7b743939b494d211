//! End-to-end test kit of the chest-CT triage stack: [`stack::stack`] starts preprocess-svc,
//! the five model services (demo bundles) and ensemble-svc in-process on 127.0.0.1 port 0, and
//! [`stack::Stack::gateway`] a gateway in front of them; [`http`] is a minimal HTTP/1.1 client
//! that can send exact, partial and malformed uploads; [`fixtures`] builds the inputs.
//!
//! The tests are in `tests/` (`cargo test -p e2e`): `stack.rs` (decisions, every bad-input
//! class, limits, 429, 504, the missing-model policy, concurrency, NIfTI, shutdown) and
//! `batch.rs` (the `ct-batch` client against the stack, XLSX read back). Nothing is downloaded;
//! the demo bundles, the ensemble's included, come from `scripts/setup` (`models/demo/`). Set
//! `CT_LOG=info,ort=warn` to see the services' logs.

pub mod fixtures;
pub mod http;
pub mod stack;

pub use stack::{Gateway, Stack, closed_port, stack};
