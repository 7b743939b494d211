//! The gRPC `ct.v1.PreprocessService`: archive chunks in, volume chunks out (or, in one-machine
//! mode, one `shared` part naming the file the volume was written to).

use crate::pipeline::{PrepareConfig, Prepared, prepare_bytes};
use crate::series::Selection;
use crate::PrepError;
use ct_proto::codec;
use ct_proto::v1::preprocess_service_server::{PreprocessService, PreprocessServiceServer};
use ct_proto::v1::{ArchiveChunk, LungValidation, SeriesSelection, VolumeChunk, VolumeHeader, archive_chunk, volume_chunk};
use futures::Stream;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct Preprocessor {
    cfg: PrepareConfig,
    /// Bounds the studies prepared at once (each holds its archive and volume in memory).
    permits: Arc<Semaphore>,
    metrics: Metrics,
    /// One-machine mode: the folder (tmpfs) where volumes are written for callers that ask for it.
    shared_dir: Option<PathBuf>,
    /// See [`SHARED_CLAIM_GRACE`].
    claim_grace: Duration,
}

/// How long a shared volume file written for a caller waits to be claimed (renamed) before the
/// service removes it: a caller that went away must not leave 100s of MB in tmpfs.
pub const SHARED_CLAIM_GRACE: Duration = Duration::from_secs(60);

/// Prometheus metrics of the service (admin port `/metrics`).
#[derive(Clone)]
pub struct Metrics {
    pub registry: prometheus::Registry,
    /// `ct_preprocess_requests_total{outcome}`: ok or the error_type.
    requests: prometheus::IntCounterVec,
    /// `ct_preprocess_seconds`: receive + prepare time of successful studies.
    seconds: prometheus::Histogram,
    /// `ct_preprocess_in_flight`: Prepare calls being received or prepared.
    in_flight: prometheus::IntGauge,
    /// `ct_preprocess_stage_seconds{stage}`: `receive` (the archive's transfer), the pipeline's
    /// compute stages (`open_archive`, `headers`, `decode_assemble`, `lungs`; NIfTI: `nifti`),
    /// and `shared_write` (one-machine mode) of successful studies.
    stage_seconds: prometheus::HistogramVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let requests = prometheus::IntCounterVec::new(prometheus::Opts::new("ct_preprocess_requests_total", "Prepare calls by outcome (ok or error_type)"), &["outcome"]).expect("static metric");
        let seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("ct_preprocess_seconds", "Receive + prepare time of a study").buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("static metric");
        let in_flight = prometheus::IntGauge::new("ct_preprocess_in_flight", "Prepare calls being received or prepared").expect("static metric");
        let stage_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("ct_preprocess_stage_seconds", "Time per stage of successful studies (receive, compute stages, shared_write)")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["stage"],
        )
        .expect("static metric");
        registry.register(Box::new(stage_seconds.clone())).expect("unique metric");
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(seconds.clone())).expect("unique metric");
        registry.register(Box::new(in_flight.clone())).expect("unique metric");
        Self { registry, requests, seconds, in_flight, stage_seconds }
    }
}

impl Preprocessor {
    pub fn new(cfg: PrepareConfig, max_concurrent: usize) -> Self {
        Self { cfg, permits: Arc::new(Semaphore::new(max_concurrent.max(1))), metrics: Metrics::new(), shared_dir: None, claim_grace: SHARED_CLAIM_GRACE }
    }

    /// One-machine mode: callers that ask for it (`PrepareOptions.shared_volume`) get the volume
    /// as a file in `dir` (a tmpfs folder they share) instead of a chunk stream.
    pub fn with_shared_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.shared_dir = dir;
        self
    }

    /// How long an unclaimed shared volume file is kept (default [`SHARED_CLAIM_GRACE`]).
    pub fn with_claim_grace(mut self, grace: Duration) -> Self {
        self.claim_grace = grace;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn into_server(self) -> PreprocessServiceServer<Self> {
        PreprocessServiceServer::new(self).max_decoding_message_size(8 * 1024 * 1024)
    }
}

/// The volume header for a prepared study (geometry and payload fields are filled by the codec).
pub fn volume_header(p: &Prepared, skip_lung_validation: bool) -> VolumeHeader {
    let m = &p.meta;
    VolumeHeader {
        study_uid: m.study_uid.clone(),
        series_uid: m.series_uid.clone(),
        modality: m.modality.clone(),
        kernel: m.kernel.clone(),
        selection: match m.selection {
            Some(Selection::Lung) => SeriesSelection::Lung,
            Some(Selection::Standard) => SeriesSelection::Standard,
            Some(Selection::Any) => SeriesSelection::Any,
            None => SeriesSelection::Nifti,
        } as i32,
        selection_reason: m.selection_reason.clone(),
        warnings: m.warnings.clone(),
        lung_validation: Some(match &m.lung {
            Some(s) => LungValidation {
                performed: true,
                passed: true,
                lung_slices: s.lung_slices as u32,
                lung_length_mm: s.lung_length_mm,
                occupancy: s.occupancy,
                lung_voxels: s.lung_voxels,
            },
            None => LungValidation { performed: !skip_lung_validation, ..Default::default() },
        }),
        n_source_files: m.n_source_files as u32,
        ..Default::default()
    }
}

type VolumeStream = Pin<Box<dyn Stream<Item = Result<VolumeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl PreprocessService for Preprocessor {
    type PrepareStream = VolumeStream;

    async fn prepare(&self, request: Request<Streaming<ArchiveChunk>>) -> Result<Response<Self::PrepareStream>, Status> {
        let started = std::time::Instant::now();
        self.metrics.in_flight.inc();
        let result = self.prepare_inner(request).await;
        self.metrics.in_flight.dec();
        match &result {
            Ok(_) => {
                self.metrics.requests.with_label_values(&["ok"]).inc();
                self.metrics.seconds.observe(started.elapsed().as_secs_f64());
            }
            Err(status) => {
                let outcome = ct_proto::errors::error_type(status).unwrap_or_else(|| "internal".into());
                self.metrics.requests.with_label_values(&[outcome.as_str()]).inc();
            }
        }
        result
    }
}

impl Preprocessor {
    async fn prepare_inner(&self, request: Request<Streaming<ArchiveChunk>>) -> Result<Response<VolumeStream>, Status> {
        let received = Instant::now();
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| PrepError::not_archive("empty request stream").to_status())??;
        let Some(archive_chunk::Part::Header(header)) = first.part else {
            return Err(PrepError::not_archive("the first ArchiveChunk must be a header").to_status());
        };
        let limit = self.cfg.limits.max_input_bytes;
        if header.total_bytes > limit {
            return Err(PrepError::TooLarge { what: "announced input".into(), size: header.total_bytes, limit }.to_status());
        }
        // reserve once (a 72 MB archive grown by doubling is copied about once more on the way)
        let expected = if header.total_bytes > 0 { header.total_bytes } else { header.size_hint };
        let mut bytes = Vec::with_capacity(expected.min(limit) as usize);
        while let Some(chunk) = stream.next().await {
            match chunk?.part {
                Some(archive_chunk::Part::Data(d)) => {
                    if (bytes.len() + d.len()) as u64 > limit {
                        return Err(PrepError::TooLarge { what: "input".into(), size: (bytes.len() + d.len()) as u64, limit }.to_status());
                    }
                    bytes.extend_from_slice(&d);
                }
                Some(archive_chunk::Part::Header(_)) => return Err(PrepError::not_archive("a second ArchiveChunk header arrived").to_status()),
                None => {}
            }
        }
        let receive_s = received.elapsed().as_secs_f64();
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Status::unavailable("shutting down"))?;
        let mut cfg = self.cfg.clone();
        let opts = header.options.unwrap_or_default();
        cfg.skip_lung_validation |= opts.skip_lung_validation;
        cfg.omit_lung_mask |= opts.omit_lung_mask;
        let filename = (!header.filename.is_empty()).then_some(header.filename);
        let prepared = tokio::task::spawn_blocking(move || {
            let r = prepare_bytes(&bytes, filename.as_deref(), &cfg).map(|p| (p, cfg.skip_lung_validation));
            drop(bytes);
            r
        })
        .await
        .map_err(|e| PrepError::Internal(format!("preprocessing task failed: {e}")).to_status())?;
        let (prepared, skipped) = match prepared {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, PrepError::Internal(_)) {
                    tracing::error!(error = %e, "preprocessing failed");
                } else {
                    tracing::info!(error_type = e.error_type(), error = %e, "input refused");
                }
                return Err(e.to_status());
            }
        };
        tracing::info!(study_uid = %prepared.meta.study_uid, series_uid = %prepared.meta.series_uid, dims = ?prepared.volume.dims(), "volume ready");
        let stages = &self.metrics.stage_seconds;
        stages.with_label_values(&["receive"]).observe(receive_s);
        for (stage, ms) in &prepared.meta.timings_ms {
            stages.with_label_values(&[stage.as_str()]).observe(ms / 1e3);
        }
        let shared_dir = self.shared_dir.clone().filter(|_| opts.shared_volume);
        let shared_write = stages.with_label_values(&["shared_write"]);
        let (tx, rx) = mpsc::channel(4);
        let (runtime, claim_grace) = (tokio::runtime::Handle::current(), self.claim_grace);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let header = volume_header(&prepared, skipped);
            let mask = if opts.omit_lung_mask { None } else { prepared.lung_mask.as_ref() };
            if let Some(dir) = shared_dir {
                let t = Instant::now();
                match write_shared(&dir, header, &prepared, mask) {
                    Ok((chunks, path)) => {
                        shared_write.observe(t.elapsed().as_secs_f64());
                        drop(prepared);
                        let sent = chunks.into_iter().all(|c| tx.blocking_send(Ok(c)).is_ok());
                        if sent {
                            // the caller claims the file by renaming it; otherwise it goes after the grace period
                            runtime.spawn(async move {
                                tokio::time::sleep(claim_grace).await;
                                remove_unclaimed(&path);
                            });
                        } else {
                            remove_unclaimed(&path); // client went away
                        }
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "could not write the shared volume file");
                        let _ = tx.blocking_send(Err(PrepError::Internal(format!("writing the shared volume file: {e}")).to_status()));
                    }
                }
                return;
            }
            for chunk in codec::encode(header, &prepared.volume, mask) {
                if tx.blocking_send(Ok(chunk)).is_err() {
                    break; // client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Writes the study's payloads to a new file in `dir`; returns the header and `shared` messages
/// and the file's path.
fn write_shared(dir: &std::path::Path, header: VolumeHeader, prepared: &Prepared, mask: Option<&ndarray::Array3<u8>>) -> std::io::Result<([VolumeChunk; 2], PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // unique across replicas sharing the folder (in containers every process id is 1)
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("ct-prep-{}-{}-{nanos}.vol", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(&name);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    codec::write_shared_file(dir, &name, &prepared.volume, mask, threads)?;
    let header = codec::fill_header(header, &prepared.volume, mask);
    let shared = VolumeChunk { part: Some(volume_chunk::Part::Shared(ct_proto::v1::SharedPayload { file: name })) };
    Ok(([VolumeChunk { part: Some(volume_chunk::Part::Header(header)) }, shared], path))
}

/// Removes a shared volume file nobody claimed (a claimed one was renamed: nothing to do).
fn remove_unclaimed(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::warn!(file = %path.display(), "removed a shared volume file its caller did not claim"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "could not remove an unclaimed shared volume file"),
    }
}

/// Serves the PreprocessService, grpc.health.v1 and reflection on `listener`, and (when given)
/// the admin HTTP port (`/live`, `/ready`, `/metrics`), until `shutdown`.
pub async fn run(listener: tokio::net::TcpListener, admin: Option<tokio::net::TcpListener>, svc: Preprocessor, shutdown: ct_service::Shutdown) -> anyhow::Result<()> {
    let (reporter, router) = ct_service::grpc_router()?;
    reporter.set_serving::<PreprocessServiceServer<Preprocessor>>().await;
    let ready = ct_service::Readiness::default();
    let admin_task = match admin {
        Some(l) => {
            tracing::info!(addr = %l.local_addr()?, "admin HTTP: /live /ready /metrics");
            Some(tokio::spawn(ct_service::serve_admin(l, ct_service::admin_router(ready.clone(), svc.metrics.registry.clone()), shutdown.wait())))
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening (gRPC: ct.v1.PreprocessService, grpc.health.v1, reflection)");
    ready.set(true);
    ct_service::serve_grpc(listener, router.add_service(svc.into_server()), shutdown.wait()).await?;
    ready.set(false);
    if let Some(t) = admin_task {
        t.await??;
    }
    tracing::info!("stopped");
    Ok(())
}
