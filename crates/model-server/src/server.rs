//! The generic model server: inference workers (one ONNX session each, on their own threads),
//! admission control, warm-up, and the `ct.v1.ModelService` gRPC implementation.

use crate::adapter::{Adapter, AdapterOptions, ModelError, Runner, Study};
use crate::bundle::{Bundle, TensorSpec};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::metrics::Metrics;
use ct_proto::codec::VolumeAssembler;
use ct_proto::v1::model_service_server::{ModelService, ModelServiceServer};
use ct_proto::v1::{self, InfoRequest, ModelInfo, Score, Scores, VolumeChunk};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Serving settings of the generic server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Inference workers, each with its own ONNX Runtime session (studies run concurrently).
    #[arg(long, env = "CT_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Studies allowed to wait for a worker; beyond that Predict answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "CT_QUEUE_DEPTH", default_value_t = 2)]
    pub queue_depth: usize,
    /// Largest accepted voxel payload in bytes (1 GiB: a 1024 x 512 x 512 float32 volume).
    #[arg(long, env = "CT_MAX_VOLUME_BYTES", default_value_t = 1 << 30)]
    pub max_volume_bytes: u64,
    /// Inference batch size for adapters that batch (diffusion); default: the manifest's.
    #[arg(long, env = "CT_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// One-machine mode: a folder (tmpfs, e.g. under /dev/shm) shared with the gateway, from which
    /// volumes sent as a `shared` payload file are mapped and read in place instead of sent over
    /// the stream (`ct_proto::mapped`). Unset: refused.
    #[arg(long, env = "CT_SHARED_VOLUME_DIR")]
    pub shared_volume_dir: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { concurrency: 1, queue_depth: 2, max_volume_bytes: 1 << 30, batch_size: None, shared_volume_dir: None }
    }
}

/// What a finished prediction carries back from a worker.
struct Prediction {
    values: Vec<(String, f64)>,
    timings: BTreeMap<&'static str, Duration>,
}

struct Job {
    study: Study,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Prediction, ModelError>>,
}

/// A loaded, warmed-up model: bundle + adapter + inference workers.
pub struct Model<A: Adapter> {
    bundle: Bundle,
    adapter: Arc<A>,
    provider: &'static str,
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    admission: Arc<Semaphore>,
    config: ServerConfig,
    metrics: Metrics,
    warmup: Duration,
}

impl<A: Adapter> Model<A> {
    /// Loads the bundle (hashes, manifest, adapter checks), opens one session per worker
    /// (checked against the manifest), and runs one warm-up prediction per worker.
    pub fn load(dir: &std::path::Path, engine: &EngineConfig, config: ServerConfig) -> Result<Arc<Self>, EngineError> {
        let bundle = Bundle::load(dir)?;
        bundle.expect_kind(A::KIND)?;
        let adapter = Arc::new(A::load(&bundle, &AdapterOptions { batch_size: config.batch_size })?);
        let workers = config.concurrency.max(1);
        let metrics = Metrics::new(A::KIND);
        let mut engines = Vec::with_capacity(workers);
        for _ in 0..workers {
            engines.push(Engine::open(&bundle, engine)?);
        }
        let provider = engines[0].provider();
        tracing::info!(model = A::KIND, version = %bundle.manifest.model.version, sha256 = %bundle.onnx_sha256, provider, workers, demo = bundle.manifest.model.demo, "model loaded");

        // warm-up: one full prediction on the built-in phantom per worker
        let t = Instant::now();
        for e in &mut engines {
            let (volume, mask) = crate::phantom::chest();
            let study = Study { uid: "warm-up".into(), volume, lung_mask: Some(mask.into()) };
            let mut runner = Runner::new(e);
            adapter.predict(&study, &mut runner).map_err(|err| EngineError::Run(format!("warm-up prediction failed: {err}")))?;
            metrics.session_runs.inc_by(u64::from(runner.finish().1));
        }
        let warmup = t.elapsed();
        tracing::info!(model = A::KIND, ms = warmup.as_millis() as u64, "warm-up done");

        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_depth + workers);
        let rx = Arc::new(Mutex::new(rx));
        for (n, mut e) in engines.into_iter().enumerate() {
            let rx = rx.clone();
            let adapter = adapter.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("{}-infer-{n}", A::KIND))
                .spawn(move || worker(&mut e, &*adapter, &rx, &metrics))
                .map_err(|e| EngineError::Run(format!("spawning an inference thread: {e}")))?;
        }
        let admission = Arc::new(Semaphore::new(workers + config.queue_depth));
        Ok(Arc::new(Self { bundle, adapter, provider, jobs: Mutex::new(Some(tx)), admission, config, metrics, warmup }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Model info as `Info` reports it.
    pub fn info(&self) -> ModelInfo {
        let m = &self.bundle.manifest;
        let spec = |s: &TensorSpec| v1::TensorSpec { name: s.name.clone(), dtype: s.dtype.as_str().into(), shape: s.shape.clone() };
        ModelInfo {
            name: A::KIND.into(),
            version: m.model.version.clone(),
            onnx_sha256: self.bundle.onnx_sha256.clone(),
            execution_providers: if self.provider == "cuda" { vec!["cuda".into(), "cpu".into()] } else { vec!["cpu".into()] },
            inputs: m.inputs.iter().map(spec).collect(),
            outputs: m.outputs.iter().map(spec).collect(),
            labels: m.labels.names.clone(),
            feature_prefix: m.labels.feature_prefix.clone(),
            recipe: self.adapter.recipe().into(),
        }
    }

    /// Runs one study through the queue. The caller must hold an admission permit.
    async fn submit(&self, study: Study) -> Result<Prediction, ModelError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { study, enqueued: Instant::now(), reply };
        {
            let guard = self.jobs.lock().map_err(|_| ModelError::ShuttingDown)?;
            let tx = guard.as_ref().ok_or(ModelError::ShuttingDown)?;
            tx.try_send(job).map_err(|e| match e {
                mpsc::TrySendError::Full(_) => ModelError::Overloaded { capacity: self.config.queue_depth },
                mpsc::TrySendError::Disconnected(_) => ModelError::ShuttingDown,
            })?;
        }
        self.metrics.queue_depth.inc();
        rx.await.map_err(|_| ModelError::ShuttingDown)?
    }

    /// One prediction in-process (CLI `predict`, tests): the same path as a Predict call.
    /// Returns the values and the stage timings in ms (queue, recipe, infer, postprocess).
    pub async fn predict(&self, study: Study) -> Result<(Vec<(String, f64)>, BTreeMap<String, f64>), ModelError> {
        let _permit = self.admission.clone().try_acquire_owned().map_err(|_| ModelError::Overloaded { capacity: self.config.queue_depth })?;
        let p = self.submit(study).await?;
        Ok((p.values, p.timings.iter().map(|(k, v)| (k.to_string(), v.as_secs_f64() * 1e3)).collect()))
    }

    /// Stops taking jobs; workers finish what is queued and exit.
    pub fn close(&self) {
        if let Ok(mut g) = self.jobs.lock() {
            g.take();
        }
    }
}

fn worker<A: Adapter>(engine: &mut Engine, adapter: &A, rx: &Mutex<mpsc::Receiver<Job>>, metrics: &Metrics) {
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return, // channel closed: shutting down
            }
        };
        metrics.queue_depth.dec();
        let queued = job.enqueued.elapsed();
        if job.reply.is_closed() {
            continue; // the caller went away while queued
        }
        let mut runner = Runner::new(engine);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| adapter.predict(&job.study, &mut runner)));
        let (mut timings, runs) = runner.finish();
        metrics.session_runs.inc_by(u64::from(runs));
        timings.insert("queue", queued);
        let result = match result {
            Ok(r) => r.map(|values| Prediction { values, timings }),
            Err(_) => {
                tracing::error!(study_uid = %job.study.uid, "the adapter panicked; the worker continues");
                Err(ModelError::BadOutput("the adapter panicked".into()))
            }
        };
        let _ = job.reply.send(result);
    }
}

/// The `ct.v1.ModelService` over a loaded [`Model`].
pub struct Service<A: Adapter> {
    model: Arc<Model<A>>,
}

impl<A: Adapter> Service<A> {
    pub fn new(model: Arc<Model<A>>) -> Self {
        Self { model }
    }

    pub fn into_server(self) -> ModelServiceServer<Self> {
        ModelServiceServer::new(self).max_decoding_message_size(8 << 20)
    }

    async fn predict_inner(&self, mut stream: Streaming<VolumeChunk>) -> Result<Scores, ModelError> {
        let model = &self.model;
        let started = Instant::now();
        let mut asm = VolumeAssembler::new(model.config.max_volume_bytes).with_shared_dir(model.config.shared_volume_dir.clone());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| ModelError::Stream(ct_proto::codec::CodecError::BadHeader(format!("stream broken: {}", s.message()))))?;
            if VolumeAssembler::is_shared(&chunk) {
                // maps the shared file (page tables filled at once unless mapped before): off the
                // async workers
                let (back, r) = tokio::task::spawn_blocking(move || {
                    let r = asm.push(chunk);
                    (asm, r)
                })
                .await
                .map_err(|e| ModelError::BadOutput(format!("shared volume mapping task: {e}")))?;
                asm = back;
                r?;
            } else {
                asm.push(chunk)?;
            }
        }
        let (header, volume, mask) = asm.finish()?;
        let receive = started.elapsed();
        if A::NEEDS_LUNG_MASK && mask.is_none() {
            return Err(ModelError::MissingLungMask);
        }
        let uid = header.study_uid.clone();
        tracing::Span::current().record("study_uid", uid.as_str());
        let study = Study { uid, volume, lung_mask: mask };
        let mut p = model.submit(study).await?;
        p.timings.insert("receive", receive);
        p.timings.insert("total", started.elapsed());
        for (stage, d) in &p.timings {
            model.metrics.stage_seconds.with_label_values(&[stage]).observe(d.as_secs_f64());
        }
        Ok(Scores {
            model: A::KIND.into(),
            model_version: model.bundle.manifest.model.version.clone(),
            scores: p.values.into_iter().map(|(label, value)| Score { label, value }).collect(),
            timings_ms: p.timings.iter().map(|(k, v)| (k.to_string(), v.as_secs_f64() * 1e3)).collect(),
        })
    }
}

#[tonic::async_trait]
impl<A: Adapter> ModelService for Service<A> {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(self.model.info()))
    }

    async fn predict(&self, request: Request<Streaming<VolumeChunk>>) -> Result<Response<Scores>, Status> {
        let model = &self.model;
        let request_id = request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        // admission before receiving anything: an overloaded service answers at once
        let Ok(_permit) = model.admission.clone().try_acquire_owned() else {
            let e = ModelError::Overloaded { capacity: model.config.queue_depth };
            model.metrics.requests.with_label_values(&[e.error_type()]).inc();
            tracing::warn!(request_id, "{e}");
            return Err(e.to_status());
        };
        model.metrics.in_flight.inc();
        let span = tracing::info_span!("predict", model = A::KIND, request_id, study_uid = tracing::field::Empty);
        let result = self.predict_inner(request.into_inner()).instrument(span.clone()).await;
        model.metrics.in_flight.dec();
        let _enter = span.enter();
        match result {
            Ok(scores) => {
                model.metrics.requests.with_label_values(&["ok"]).inc();
                tracing::info!(ms = scores.timings_ms.get("total").copied().unwrap_or_default() as u64, labels = scores.scores.len(), "predicted");
                Ok(Response::new(scores))
            }
            Err(e) => {
                model.metrics.requests.with_label_values(&[e.error_type()]).inc();
                if e.grpc_code() == tonic::Code::Internal {
                    tracing::error!(error = %e, "prediction failed");
                } else {
                    tracing::warn!(error = %e, "prediction refused");
                }
                Err(e.to_status())
            }
        }
    }
}
