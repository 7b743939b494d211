//! What a model service crate provides: an [`Adapter`] (its recipe, postprocessing and manifest
//! checks). Everything else (bundle loading, sessions, queueing, gRPC, admin HTTP, CLI) is the
//! generic server's.

use crate::bundle::{Activation, Bundle, BundleError, Labels};
use crate::engine::{Engine, EngineError, Input, Output};
use ct_volume::{Array3Store, Volume};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::Code;

/// One study as a model sees it.
pub struct Study {
    /// Study instance UID (for logs; never patient data).
    pub uid: String,
    pub volume: Volume,
    /// The preprocessing lung mask (`[nk, nj, ni]`, 1 = lung), when the stream carried it (in
    /// one-machine mode a view of the shared file, like the volume).
    pub lung_mask: Option<Array3Store<u8>>,
}

/// Options of the generic CLI that some adapters use.
#[derive(Debug, Clone, Default)]
pub struct AdapterOptions {
    /// Inference batch size (adapters that batch, e.g. diffusion); `None` = the manifest's.
    pub batch_size: Option<usize>,
}

/// A model service's own part.
pub trait Adapter: Send + Sync + Sized + 'static {
    /// Service kind: the bundle's `model.name`, `Info.name`, `Scores.model`.
    const KIND: &'static str;
    /// Default gRPC port.
    const DEFAULT_PORT: u16;
    /// Whether `Predict` needs the lung mask in the stream.
    const NEEDS_LUNG_MASK: bool = false;

    /// Checks the manifest beyond the generic checks (labels, recipe, tensor contracts) and
    /// builds the adapter.
    fn load(bundle: &Bundle, options: &AdapterOptions) -> Result<Self, BundleError>;

    /// Recipe, inference(s) and postprocessing for one study: `(label, value)` in label order.
    fn predict(&self, study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError>;

    /// The recipe name reported by `Info`.
    fn recipe(&self) -> &'static str;
}

/// Why one prediction failed. `error_type` values are stable (the gateway maps them to HTTP).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("volume stream: {0}")]
    Stream(#[from] ct_proto::codec::CodecError),
    #[error("this model needs the lung mask; the volume stream carried none")]
    MissingLungMask,
    #[error("the volume cannot be prepared for this model: {reason}")]
    Unprocessable { reason: String },
    #[error("the inference queue is full ({capacity} studies waiting)")]
    Overloaded { capacity: usize },
    #[error("the model service is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("unexpected model output: {0}")]
    BadOutput(String),
}

impl ModelError {
    pub fn error_type(&self) -> &'static str {
        match self {
            ModelError::Stream(_) | ModelError::MissingLungMask => "bad_request",
            ModelError::Unprocessable { .. } => "unprocessable",
            ModelError::Overloaded { .. } => "overloaded",
            ModelError::ShuttingDown => "not_ready",
            ModelError::Engine(_) | ModelError::BadOutput(_) => "internal",
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            ModelError::Stream(_) | ModelError::MissingLungMask => Code::InvalidArgument,
            ModelError::Unprocessable { .. } => Code::FailedPrecondition,
            ModelError::Overloaded { .. } => Code::ResourceExhausted,
            ModelError::ShuttingDown => Code::Unavailable,
            ModelError::Engine(_) | ModelError::BadOutput(_) => Code::Internal,
        }
    }

    /// The status sent to clients; internal errors do not leak details (they are logged).
    pub fn to_status(&self) -> tonic::Status {
        let message = match self.grpc_code() {
            Code::Internal => "internal error while running the model".to_string(),
            _ => self.to_string(),
        };
        ct_proto::errors::status(self.grpc_code(), self.error_type(), message)
    }

    pub fn unprocessable(reason: impl std::fmt::Display) -> Self {
        ModelError::Unprocessable { reason: reason.to_string() }
    }
}

/// The adapter's handle on the session during one prediction: runs inferences and times stages.
pub struct Runner<'a> {
    engine: &'a mut Engine,
    timings: BTreeMap<&'static str, Duration>,
    runs: u32,
}

impl<'a> Runner<'a> {
    pub(crate) fn new(engine: &'a mut Engine) -> Self {
        Self { engine, timings: BTreeMap::new(), runs: 0 }
    }

    /// One session run (timed as stage "infer").
    pub fn run(&mut self, inputs: Vec<Input>) -> Result<Vec<Output>, ModelError> {
        let t = Instant::now();
        let out = self.engine.run(inputs);
        *self.timings.entry("infer").or_default() += t.elapsed();
        self.runs += 1;
        Ok(out?)
    }

    /// Runs `f`, adding its wall time to `stage` ("recipe", "postprocess").
    pub fn time<T>(&mut self, stage: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        *self.timings.entry(stage).or_default() += t.elapsed();
        v
    }

    pub(crate) fn finish(self) -> (BTreeMap<&'static str, Duration>, u32) {
        (self.timings, self.runs)
    }
}

/// Applies the manifest's activation to a model output holding `n` labels' logits (for
/// softmax-pair, `2n` values with the pair on the last axis). Computed in f64.
pub fn activate(labels: &Labels, out: &Output, n: usize) -> Result<Vec<f64>, ModelError> {
    let x = &out.data;
    let expect = |len: usize| if x.len() == len { Ok(()) } else { Err(ModelError::BadOutput(format!("{} values for {n} labels (shape {:?})", x.len(), out.shape))) };
    match labels.activation {
        Activation::Sigmoid => {
            expect(n)?;
            Ok(x.iter().map(|&v| sigmoid(f64::from(v))).collect())
        }
        Activation::None => {
            expect(n)?;
            Ok(x.iter().map(|&v| f64::from(v)).collect())
        }
        Activation::Softmax => {
            expect(n)?;
            let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) - m).exp()).collect();
            let s: f64 = e.iter().sum();
            Ok(e.into_iter().map(|v| v / s).collect())
        }
        Activation::SoftmaxPair => {
            expect(2 * n)?;
            let pos = labels.positive_index.unwrap_or(0);
            Ok(x.chunks_exact(2).map(|p| softmax_pair(p, pos)).collect())
        }
    }
}

/// `exp(x_pos) / (exp(x_0) + exp(x_1))` for a pair of logits.
pub fn softmax_pair(pair: &[f32], positive: usize) -> f64 {
    sigmoid(f64::from(pair[positive]) - f64::from(pair[1 - positive]))
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(activation: Activation, positive_index: Option<usize>) -> Labels {
        Labels { names: vec![], activation, positive_index, feature_prefix: String::new() }
    }

    #[test]
    fn softmax_pair_picks_the_positive_side() {
        let out = Output { shape: vec![1, 2, 2], data: vec![2.0, 0.0, -1.0, 1.0] };
        let p0 = activate(&labels(Activation::SoftmaxPair, Some(0)), &out, 2).unwrap();
        let p1 = activate(&labels(Activation::SoftmaxPair, Some(1)), &out, 2).unwrap();
        let want0 = 2f64.exp() / (2f64.exp() + 1.0);
        assert!((p0[0] - want0).abs() < 1e-12);
        assert!((p0[0] + p1[0] - 1.0).abs() < 1e-12);
        assert!((p1[1] - 1f64.exp() / (1f64.exp() + (-1f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn sigmoid_softmax_and_size_checks() {
        let out = Output { shape: vec![1, 3], data: vec![0.0, 1.0, -1.0] };
        let s = activate(&labels(Activation::Sigmoid, None), &out, 3).unwrap();
        assert_eq!(s[0], 0.5);
        let sm = activate(&labels(Activation::Softmax, None), &out, 3).unwrap();
        assert!((sm.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(sm[1] > sm[0] && sm[0] > sm[2]);
        assert!(matches!(activate(&labels(Activation::Sigmoid, None), &out, 4), Err(ModelError::BadOutput(_))));
        assert!(matches!(activate(&labels(Activation::SoftmaxPair, Some(0)), &out, 3), Err(ModelError::BadOutput(_))));
    }
}
