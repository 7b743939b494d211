//! Prometheus metrics of the gateway (`ct_gateway_*`), served on the admin port.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Request stages timed per study (`ct_gateway_stage_seconds{stage}`).
pub const STAGES: [&str; 7] = ["queue", "upload", "preprocess", "relay", "models", "ensemble", "total"];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `ct_gateway_requests_total{endpoint, outcome}`: outcome = ok or the error_type.
    pub requests: IntCounterVec,
    /// `ct_gateway_errors_total{error_type, cause}`.
    pub errors: IntCounterVec,
    /// `ct_gateway_stage_seconds{stage}` of successful studies.
    pub stages: HistogramVec,
    /// `ct_gateway_model_seconds{model}`: Predict call latency per model service (successes).
    pub model_seconds: HistogramVec,
    /// `ct_gateway_missing_models_total{model}`: studies answered without that model (degrade).
    pub missing_models: IntCounterVec,
    /// `ct_gateway_in_flight`: studies being processed.
    pub in_flight: IntGauge,
    /// `ct_gateway_queued`: studies waiting for a slot.
    pub queued: IntGauge,
    /// `ct_gateway_upstream_up{upstream}`: 1 when its grpc.health.v1 says SERVING.
    pub upstream_up: IntGaugeVec,
    /// `ct_gateway_upstream_endpoints{upstream}`: addresses the gateway spreads an upstream's
    /// calls over (`dns` discovery: the resolved addresses; `static`: 1, the URL).
    pub upstream_endpoints: IntGaugeVec,
    /// `ct_gateway_upload_bytes`: size of accepted uploads.
    pub upload_bytes: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("ct_gateway_requests_total", "Studies answered, by endpoint and outcome (ok or error_type)"), &["endpoint", "outcome"])?;
        let errors = IntCounterVec::new(Opts::new("ct_gateway_errors_total", "Failed studies by error_type and specific cause"), &["error_type", "cause"])?;
        let secs = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
        let stages = HistogramVec::new(HistogramOpts::new("ct_gateway_stage_seconds", "Time per request stage of successful studies, seconds").buckets(secs.clone()), &["stage"])?;
        let model_seconds = HistogramVec::new(HistogramOpts::new("ct_gateway_model_seconds", "Predict call latency per model service, seconds").buckets(secs), &["model"])?;
        let missing_models = IntCounterVec::new(Opts::new("ct_gateway_missing_models_total", "Studies answered without a model (missing-model policy degrade)"), &["model"])?;
        let in_flight = IntGauge::new("ct_gateway_in_flight", "Studies being processed")?;
        let queued = IntGauge::new("ct_gateway_queued", "Studies waiting for a processing slot")?;
        let upstream_up = IntGaugeVec::new(Opts::new("ct_gateway_upstream_up", "1 when the upstream's grpc.health.v1 reports SERVING"), &["upstream"])?;
        let upstream_endpoints = IntGaugeVec::new(
            Opts::new("ct_gateway_upstream_endpoints", "Addresses an upstream's calls are spread over (dns discovery: resolved addresses; static: 1)"),
            &["upstream"],
        )?;
        let upload_bytes = Histogram::with_opts(
            HistogramOpts::new("ct_gateway_upload_bytes", "Size of uploaded studies, bytes").buckets(prometheus::exponential_buckets(1024.0 * 1024.0, 2.0, 12)?),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(stages.clone()))?;
        registry.register(Box::new(model_seconds.clone()))?;
        registry.register(Box::new(missing_models.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(upstream_up.clone()))?;
        registry.register(Box::new(upstream_endpoints.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        Ok(Self { registry, requests, errors, stages, model_seconds, missing_models, in_flight, queued, upstream_up, upstream_endpoints, upload_bytes })
    }
}
