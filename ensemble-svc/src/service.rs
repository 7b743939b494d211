//! The gRPC `ct.v1.EnsembleService` (`Combine`).
//!
//! LightGBM boosters (`lightgbm3::Booster`) are not `Send`, so the ensemble is loaded once on its
//! own worker thread and requests reach it through a channel; a single-row prediction takes
//! microseconds, so one thread serves any realistic request rate and never blocks a tokio worker.

use crate::ensemble::{Ensemble, Prediction};
use crate::features::ScoreSet;
use crate::booster::LgbmBooster;
use crate::EnsembleError;
use ct_proto::v1::ensemble_service_server::{EnsembleService, EnsembleServiceServer};
use ct_proto::v1::{CombineRequest, Decision};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::Instrument;

type Job = (ScoreSet, oneshot::Sender<Result<Prediction, EnsembleError>>);

/// What the worker reports once the ensemble is loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub n_features: usize,
    pub threshold: f64,
    pub threshold_thoracic: Option<f64>,
    pub notes: Vec<String>,
}

/// A cheap, cloneable handle to the worker thread that owns the ensemble.
#[derive(Clone)]
pub struct EnsembleHandle {
    tx: mpsc::Sender<Job>,
}

impl EnsembleHandle {
    /// Starts the worker thread, which runs `load` (the boosters are created on that thread) and
    /// then serves predictions until every handle is dropped. Returns once loading finished.
    pub fn spawn<F>(load: F) -> Result<(Self, Loaded), EnsembleError>
    where
        F: FnOnce() -> Result<Ensemble<LgbmBooster>, EnsembleError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("ensemble".into())
            .spawn(move || {
                let ensemble = match load() {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(Loaded {
                            n_features: e.feature_names().len(),
                            threshold: e.threshold(),
                            threshold_thoracic: e.threshold_thoracic(),
                            notes: e.notes().to_vec(),
                        }));
                        e
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                while let Ok((scores, reply)) = rx.recv() {
                    // a bug must not take the worker (and every later request) down
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ensemble.predict(&scores)))
                        .unwrap_or_else(|_| Err(EnsembleError::Internal("the ensemble panicked".into())));
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| EnsembleError::Internal(format!("starting the ensemble thread: {e}")))?;
        let loaded = ready_rx.recv().map_err(|_| EnsembleError::Internal("the ensemble thread ended while loading".into()))??;
        Ok((Self { tx }, loaded))
    }

    pub async fn predict(&self, scores: ScoreSet) -> Result<Prediction, EnsembleError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((scores, reply)).map_err(|_| EnsembleError::Internal("the ensemble thread is gone".into()))?;
        rx.await.map_err(|_| EnsembleError::Internal("the ensemble thread dropped a request".into()))?
    }
}

/// Prometheus metrics of the service (`ct_ensemble_*`).
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    missing_features: IntCounterVec,
    missing_models: IntCounterVec,
    positive: IntCounter,
    latency: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(Opts::new("ct_ensemble_requests_total", "Combine calls by outcome (ok | invalid_scores | internal)"), &["outcome"])?;
        let missing_features = IntCounterVec::new(
            Opts::new("ct_ensemble_missing_features_total", "Model features that could not be built, by feature (filled by the missing-feature policy)"),
            &["feature"],
        )?;
        let missing_models = IntCounterVec::new(Opts::new("ct_ensemble_missing_models_total", "Configured model services whose scores were absent, by model"), &["model"])?;
        let positive = IntCounter::new("ct_ensemble_pathology_total", "Studies decided pathological by the main model")?;
        let latency = Histogram::with_opts(
            HistogramOpts::new("ct_ensemble_combine_seconds", "Combine latency (features + both models), seconds")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(missing_features.clone()))?;
        registry.register(Box::new(missing_models.clone()))?;
        registry.register(Box::new(positive.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, missing_features, missing_models, positive, latency })
    }
}

pub struct EnsembleSvc {
    handle: EnsembleHandle,
    metrics: Metrics,
}

impl EnsembleSvc {
    pub fn new(handle: EnsembleHandle, metrics: Metrics) -> Self {
        Self { handle, metrics }
    }

    pub fn into_server(self) -> EnsembleServiceServer<Self> {
        EnsembleServiceServer::new(self)
    }
}

/// The scores of a request; a model listed as missing must not also have scores.
pub fn score_set(req: &CombineRequest) -> Result<ScoreSet, EnsembleError> {
    let mut set = ScoreSet::default();
    for m in &req.models {
        if req.missing_models.contains(&m.model) {
            return Err(EnsembleError::invalid(format!("{} is both given and listed as missing", m.model)));
        }
        set.insert(&m.model, m.scores.iter().map(|s| (s.label.clone(), s.value)).collect())?;
    }
    Ok(set)
}

pub fn decision(p: Prediction) -> Decision {
    Decision {
        probability_of_pathology: p.probability,
        pathology: p.pathology,
        top_pathologies: p.top_pathologies,
        probability_of_pathology_thoracic: p.thoracic.map(|t| t.0),
        pathology_thoracic: p.thoracic.map(|t| t.1),
        missing_features: p.missing_features,
        missing_models: p.missing_models,
        threshold: p.threshold,
        threshold_thoracic: p.threshold_thoracic,
    }
}

#[tonic::async_trait]
impl EnsembleService for EnsembleSvc {
    async fn combine(&self, request: Request<CombineRequest>) -> Result<Response<Decision>, Status> {
        let request_id = request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let req = request.into_inner();
        let span = tracing::info_span!("combine", study_uid = %req.study_uid, request_id = %request_id);
        async move {
            let start = Instant::now();
            let result = match score_set(&req) {
                Ok(set) => self.handle.predict(set).await,
                Err(e) => Err(e),
            };
            self.metrics.latency.observe(start.elapsed().as_secs_f64());
            match result {
                Ok(mut p) => {
                    for m in &req.missing_models {
                        if !p.missing_models.contains(m) {
                            p.missing_models.push(m.clone());
                        }
                    }
                    self.metrics.requests.with_label_values(&["ok"]).inc();
                    for f in &p.missing_features {
                        self.metrics.missing_features.with_label_values(&[f.as_str()]).inc();
                    }
                    for m in &p.missing_models {
                        self.metrics.missing_models.with_label_values(&[m.as_str()]).inc();
                    }
                    if p.pathology == 1 {
                        self.metrics.positive.inc();
                    }
                    if !p.missing_features.is_empty() {
                        tracing::warn!(missing_features = p.missing_features.len(), missing_models = ?p.missing_models, "features filled by the missing-feature policy");
                    }
                    tracing::info!(probability = p.probability, pathology = p.pathology, thoracic = ?p.thoracic.map(|t| t.0), ms = start.elapsed().as_secs_f64() * 1e3, "combined");
                    Ok(Response::new(decision(p)))
                }
                Err(e) => {
                    self.metrics.requests.with_label_values(&[e.error_type()]).inc();
                    if matches!(e, EnsembleError::InvalidScores { .. }) {
                        tracing::info!(error = %e, "request refused");
                    } else {
                        tracing::error!(error = %e, "combine failed");
                    }
                    Err(e.to_status())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Serves the EnsembleService, grpc.health.v1 and reflection on `listener` until `shutdown`.
pub async fn run(listener: tokio::net::TcpListener, svc: EnsembleSvc, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (reporter, router) = ct_service::grpc_router()?;
    reporter.set_serving::<EnsembleServiceServer<EnsembleSvc>>().await;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening (gRPC: ct.v1.EnsembleService, grpc.health.v1, reflection)");
    ct_service::serve_grpc(listener, router.add_service(svc.into_server()), shutdown).await?;
    tracing::info!("gRPC server stopped");
    Ok(())
}
