//! The gRPC `ct.v1.PreprocessService`: archive chunks in, volume chunks out.

use crate::pipeline::{PrepareConfig, Prepared, prepare_bytes};
use crate::series::Selection;
use crate::PrepError;
use ct_proto::codec;
use ct_proto::v1::preprocess_service_server::{PreprocessService, PreprocessServiceServer};
use ct_proto::v1::{ArchiveChunk, LungValidation, SeriesSelection, VolumeChunk, VolumeHeader, archive_chunk};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct Preprocessor {
    cfg: PrepareConfig,
    /// Bounds the studies prepared at once (each holds its archive and volume in memory).
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

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
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(seconds.clone())).expect("unique metric");
        registry.register(Box::new(in_flight.clone())).expect("unique metric");
        Self { registry, requests, seconds, in_flight }
    }
}

impl Preprocessor {
    pub fn new(cfg: PrepareConfig, max_concurrent: usize) -> Self {
        Self { cfg, permits: Arc::new(Semaphore::new(max_concurrent.max(1))), metrics: Metrics::new() }
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
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| PrepError::not_archive("empty request stream").to_status())??;
        let Some(archive_chunk::Part::Header(header)) = first.part else {
            return Err(PrepError::not_archive("the first ArchiveChunk must be a header").to_status());
        };
        let limit = self.cfg.limits.max_input_bytes;
        if header.total_bytes > limit {
            return Err(PrepError::TooLarge { what: "announced input".into(), size: header.total_bytes, limit }.to_status());
        }
        let mut bytes = Vec::with_capacity(header.total_bytes.min(limit) as usize);
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
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Status::unavailable("shutting down"))?;
        let mut cfg = self.cfg.clone();
        let opts = header.options.unwrap_or_default();
        cfg.skip_lung_validation |= opts.skip_lung_validation;
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
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let header = volume_header(&prepared, skipped);
            let mask = if opts.omit_lung_mask { None } else { prepared.lung_mask.as_ref() };
            for chunk in codec::encode(header, &prepared.volume, mask) {
                if tx.blocking_send(Ok(chunk)).is_err() {
                    break; // client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
