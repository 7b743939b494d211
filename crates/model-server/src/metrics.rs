//! Prometheus metrics of a model service (served on the admin port at `/metrics`).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `ct_model_stage_seconds{model, stage}`: receive, queue, recipe, infer, postprocess, total.
    pub stage_seconds: HistogramVec,
    /// `ct_model_requests_total{model, outcome}`: ok or the error_type.
    pub requests: IntCounterVec,
    /// `ct_model_in_flight`: admitted Predict calls (receiving, queued or running).
    pub in_flight: IntGauge,
    /// `ct_model_queue_depth`: studies waiting for an inference worker.
    pub queue_depth: IntGauge,
    /// `ct_model_session_runs_total`: ONNX Runtime session runs (warm-up included).
    pub session_runs: IntCounter,
}

impl Metrics {
    pub fn new(model: &str) -> Self {
        let registry = Registry::new_custom(None, Some([("model".to_string(), model.to_string())].into_iter().collect())).expect("static metric registry");
        let buckets = vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let stage_seconds = HistogramVec::new(HistogramOpts::new("ct_model_stage_seconds", "Per-stage latency of Predict").buckets(buckets), &["stage"]).expect("static metric");
        let requests = IntCounterVec::new(Opts::new("ct_model_requests_total", "Predict calls by outcome (ok or error_type)"), &["outcome"]).expect("static metric");
        let in_flight = IntGauge::new("ct_model_in_flight", "Predict calls admitted and not finished").expect("static metric");
        let queue_depth = IntGauge::new("ct_model_queue_depth", "Studies waiting for an inference worker").expect("static metric");
        let session_runs = IntCounter::new("ct_model_session_runs_total", "ONNX Runtime session runs, warm-up included").expect("static metric");
        for c in [
            Box::new(stage_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(in_flight.clone()),
            Box::new(queue_depth.clone()),
            Box::new(session_runs.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self { registry, stage_seconds, requests, in_flight, queue_depth, session_runs }
    }
}
