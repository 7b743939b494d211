//! One study through the stack:
//!
//! 1. the upload is streamed to preprocess-svc as `ArchiveChunk` data (at most
//!    [`ct_proto::MAX_CHUNK_BYTES`] each) while it arrives; nothing is buffered whole;
//! 2. the volume stream that comes back is relayed chunk by chunk to the five model services
//!    concurrently (the lung mask only to the models that use it, with a header rewritten to
//!    say so for the others); in one-machine mode (`CT_SHARED_VOLUME_DIR`) the volume is a file
//!    in a shared tmpfs folder instead: preprocess-svc writes it when asked
//!    (`PrepareOptions.shared_volume`) and the gateway claims it by renaming it (or writes it from
//!    the stream when preprocess-svc has no folder), each model service gets the header and the
//!    file's name and maps the file (it reads the voxels in place), and the file goes back to the
//!    folder's pool when the study ends with every model answered, else it is unlinked
//!    ([`SharedVolume`]);
//! 3. the scores go to ensemble-svc's `Combine`.
//!
//! Every upstream call carries the request id as gRPC metadata `x-request-id`.

use crate::config::{Config, MissingModelPolicy};
use crate::error::{self, ApiError, Endpoint, ModelFailure};
use crate::metrics::Metrics;
use crate::upstream::Clients;
use axum::body::Bytes;
use ct_proto::v1::{ArchiveChunk, ArchiveHeader, CombineRequest, Decision, InputFormat, PrepareOptions, Scores, VolumeChunk, VolumeHeader, archive_chunk, volume_chunk};
use futures::{Stream, StreamExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Chunks buffered per model stream (each at most 2 MiB): bounds the gateway's memory per study
/// to a few chunks per model, whatever the volume size; the slowest receiver sets the pace.
const RELAY_BUFFER: usize = 4;
/// Archive chunks buffered towards preprocess-svc.
const UPLOAD_BUFFER: usize = 2;

/// The uploaded file: its name (NIfTI study ids are derived from it, as the reference does) and
/// its bytes as they arrive.
pub struct Upload<S> {
    pub filename: String,
    pub body: S,
    /// The request's Content-Length, when it had one: an upper estimate of the file's size.
    pub size_hint: Option<u64>,
}

/// Milliseconds per stage of one study.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Waiting for a processing slot.
    pub queue: f64,
    /// Reading the upload and streaming it to preprocess-svc.
    pub upload: f64,
    /// From the end of the upload to the volume header (preprocess-svc's work).
    pub preprocess: f64,
    /// Relaying the volume to the model services.
    pub relay: f64,
    /// From the end of the relay to the last model's scores.
    pub models: f64,
    pub ensemble: f64,
    /// Everything, from admission to the answer.
    pub total: f64,
}

impl Timings {
    pub fn stages(&self) -> [(&'static str, f64); 7] {
        [
            ("queue", self.queue),
            ("upload", self.upload),
            ("preprocess", self.preprocess),
            ("relay", self.relay),
            ("models", self.models),
            ("ensemble", self.ensemble),
            ("total", self.total),
        ]
    }
}

/// A processed study.
#[derive(Debug)]
pub struct Answer {
    pub header: VolumeHeader,
    pub decision: Decision,
    /// `(model, version)` of the models that answered, in the configured order.
    pub model_versions: Vec<(String, String)>,
    /// Models that did not answer (policy `degrade`), in the configured order.
    pub missing_models: Vec<String>,
    /// Per model: its own stage timings (receive, queue, recipe, infer, ...), ms.
    pub model_timings: BTreeMap<String, BTreeMap<String, f64>>,
    pub upload_bytes: u64,
    pub timings: Timings,
}

/// What the request handlers share.
pub struct Pipeline {
    pub clients: Clients,
    pub config: Config,
    pub metrics: Metrics,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn with_request_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = request_id.parse() {
        req.metadata_mut().insert("x-request-id", v);
    }
    req
}

enum PumpError {
    /// Reading the upload failed (client error, body limit).
    Upload(ApiError),
    /// preprocess-svc stopped reading (it has answered, with an error).
    Closed,
}

/// Streams the upload into `tx` in chunks of at most `MAX_CHUNK_BYTES`. Returns the byte count.
async fn pump<S>(tx: &mpsc::Sender<ArchiveChunk>, first: Bytes, body: S) -> Result<u64, PumpError>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Send,
{
    let cap = ct_proto::MAX_CHUNK_BYTES;
    let mut body = std::pin::pin!(body);
    let mut buf: Vec<u8> = Vec::with_capacity(cap);
    let mut total = 0u64;
    let mut next = Some(first);
    loop {
        let Some(mut bytes) = next.take() else {
            match body.next().await {
                Some(Ok(b)) => next = Some(b),
                Some(Err(e)) => return Err(PumpError::Upload(e)),
                None => break,
            }
            continue;
        };
        total += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (cap - buf.len()).min(bytes.len());
            buf.extend_from_slice(&bytes.split_to(take));
            if buf.len() == cap {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(cap));
                tx.send(ArchiveChunk { part: Some(archive_chunk::Part::Data(data.into())) }).await.map_err(|_| PumpError::Closed)?;
            }
        }
    }
    if !buf.is_empty() {
        tx.send(ArchiveChunk { part: Some(archive_chunk::Part::Data(buf.into())) }).await.map_err(|_| PumpError::Closed)?;
    }
    Ok(total)
}

/// Stops a Prepare call whose upload failed half-way, so that preprocess-svc never works on a
/// truncated archive: a second header is a protocol error it refuses at once, and the sender is
/// kept alive until the dropped call has reset the HTTP/2 stream (a plain end of stream would
/// look like a complete upload).
fn abort_upload(tx: mpsc::Sender<ArchiveChunk>) {
    let _ = tx.try_send(ArchiveChunk { part: Some(archive_chunk::Part::Header(ArchiveHeader::default())) });
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tx);
    });
}

/// The result of one model service call.
struct ModelCall {
    index: usize,
    name: &'static str,
    elapsed: Duration,
    result: Result<Result<tonic::Response<Scores>, tonic::Status>, tokio::time::error::Elapsed>,
}

impl Pipeline {
    /// Runs one study. `started` is when it got its processing slot; `queue` how long it waited.
    pub async fn run<S>(&self, endpoint: Endpoint, request_id: &str, upload: Upload<S>, started: Instant, queue: Duration) -> Result<Answer, ApiError>
    where
        S: Stream<Item = Result<Bytes, ApiError>> + Send,
    {
        let mut timings = Timings { queue: ms(queue), ..Timings::default() };
        let mut body = Box::pin(upload.body);

        // the first bytes: an empty upload is refused before any upstream is called
        let first = loop {
            match body.next().await {
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => break b,
                Some(Err(e)) => return Err(e),
                None => return Err(ApiError::bad_request("empty_upload", "the uploaded file is empty")),
            }
        };

        // 1. upload -> preprocess-svc, concurrently with the Prepare call
        let format = match endpoint {
            Endpoint::Zip => InputFormat::Zip,
            Endpoint::Nifti => InputFormat::Nifti,
        };
        let (tx, rx) = mpsc::channel::<ArchiveChunk>(UPLOAD_BUFFER);
        let header = ArchiveHeader {
            format: format as i32,
            total_bytes: 0,
            filename: upload.filename,
            options: Some(PrepareOptions { shared_volume: self.config.shared_volume_dir.is_some(), ..Default::default() }),
            size_hint: upload.size_hint.unwrap_or(0),
        };
        tx.send(ArchiveChunk { part: Some(archive_chunk::Part::Header(header)) }).await.map_err(|_| ApiError::internal("upload channel closed before the header"))?;
        let mut preprocess = self.clients.preprocess.clone();
        let call = preprocess.prepare(with_request_id(ReceiverStream::new(rx), request_id));
        let mut call = std::pin::pin!(call);
        let pumped = {
            let pump = pump(&tx, first, body);
            let mut pump = std::pin::pin!(pump);
            tokio::select! {
                biased;
                early = &mut call => Err(early),
                p = &mut pump => Ok(p),
            }
        };
        let upload_end = Instant::now();
        let (response, upload_bytes) = match pumped {
            Ok(Ok(n)) => {
                drop(tx); // end of the upload
                timings.upload = ms(upload_end - started);
                self.metrics.upload_bytes.observe(n as f64);
                (call.await.map_err(|s| error::from_preprocess(&s, endpoint))?, n)
            }
            Ok(Err(PumpError::Upload(e))) => {
                abort_upload(tx);
                return Err(e);
            }
            Ok(Err(PumpError::Closed)) => {
                // preprocess-svc answered before the upload was complete: an error
                let r = call.await;
                abort_upload(tx);
                return Err(match r {
                    Err(s) => error::from_preprocess(&s, endpoint),
                    Ok(_) => ApiError::internal("preprocess-svc answered before the whole upload was sent"),
                });
            }
            Err(early) => {
                abort_upload(tx);
                return Err(match early {
                    Err(s) => error::from_preprocess(&s, endpoint),
                    Ok(_) => ApiError::internal("preprocess-svc answered before the whole upload was sent"),
                });
            }
        };
        let mut volume = response.into_inner();

        // 2. the volume header, then the relay to the model services
        let header = match volume.message().await.map_err(|s| error::from_preprocess(&s, endpoint))? {
            Some(VolumeChunk { part: Some(volume_chunk::Part::Header(h)) }) => h,
            _ => return Err(ApiError::internal("preprocess-svc's volume stream did not start with a header")),
        };
        timings.preprocess = ms(upload_end.elapsed());
        tracing::info!(study_uid = %header.study_uid, series_uid = %header.series_uid, dims = ?header.dims, "volume received");
        let fanned = self.fan_out(endpoint, request_id, volume, &header).await?;
        timings.relay = fanned.relay_ms;
        timings.models = fanned.models_ms;

        // 3. the missing-model policy (decisive failures have already ended the study)
        let mut scores = Vec::new();
        let mut model_timings = BTreeMap::new();
        for (name, elapsed, s) in fanned.answered {
            self.metrics.model_seconds.with_label_values(&[name]).observe(elapsed.as_secs_f64());
            model_timings.insert(name.to_string(), s.timings_ms.iter().map(|(k, v)| (k.clone(), *v)).collect());
            scores.push(s);
        }
        let mut missing = fanned.missing;
        if !missing.is_empty() {
            for (name, e) in &missing {
                tracing::warn!(model = name, cause = %e.cause, detail = e.detail.as_deref().unwrap_or(""), "model service missing");
            }
            if scores.is_empty() {
                let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
                let (_, first) = missing.swap_remove(0);
                return Err(ApiError { message: format!("no model service answered ({})", names.join(", ")), ..first });
            }
            for (n, _) in &missing {
                self.metrics.missing_models.with_label_values(&[n]).inc();
            }
        }
        let missing_models: Vec<String> = missing.iter().map(|(n, _)| n.to_string()).collect();

        // 4. the ensemble
        let t = Instant::now();
        let model_versions = scores.iter().map(|s| (s.model.clone(), s.model_version.clone())).collect();
        let req = CombineRequest { study_uid: header.study_uid.clone(), models: scores, missing_models: missing_models.clone() };
        let mut ensemble = self.clients.ensemble.clone();
        let decision = ensemble.combine(with_request_id(req, request_id)).await.map_err(|s| error::from_ensemble(&s))?.into_inner();
        timings.ensemble = ms(t.elapsed());
        timings.total = ms(started.elapsed()) + timings.queue;
        Ok(Answer { header, decision, model_versions, missing_models, model_timings, upload_bytes, timings })
    }

    /// Starts the five Predict calls and relays the volume stream to them. A failure that decides
    /// the study (any error under policy `fail`; an answered error under `degrade`) ends it at
    /// once, cancelling the other calls.
    async fn fan_out(&self, endpoint: Endpoint, request_id: &str, mut volume: tonic::Streaming<VolumeChunk>, header: &VolumeHeader) -> Result<FanOut, ApiError> {
        // one-machine mode: the payloads go to a shared file first, the models get its name
        let write_started = Instant::now();
        let mut shared = match &self.config.shared_volume_dir {
            Some(dir) => Some(SharedVolume::receive(dir, self.config.shared_volume_pool, request_id, &mut volume, header, endpoint).await?),
            None => None,
        };
        let shared_write_ms = ms(write_started.elapsed());
        let mut senders: Vec<Option<(mpsc::Sender<VolumeChunk>, bool)>> = Vec::new();
        let pending = futures::stream::FuturesUnordered::new();
        for (index, target) in self.clients.models.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<VolumeChunk>(RELAY_BUFFER);
            let mut h = header.clone();
            if !target.needs_lung_mask {
                h.has_lung_mask = false;
                h.mask_bytes = 0;
            }
            tx.try_send(VolumeChunk { part: Some(volume_chunk::Part::Header(h)) }).map_err(|_| ApiError::internal("relay channel refused the header"))?;
            if let Some(s) = &shared {
                tx.try_send(s.chunk()).map_err(|_| ApiError::internal("relay channel refused the shared payload"))?;
            }
            senders.push(Some((tx, target.needs_lung_mask)));
            let mut client = target.client.clone();
            let req = with_request_id(ReceiverStream::new(rx), request_id);
            let (name, timeout) = (target.name, self.config.model_timeout);
            pending.push(async move {
                let t = Instant::now();
                let result = tokio::time::timeout(timeout, client.predict(req)).await;
                ModelCall { index, name, elapsed: t.elapsed(), result }
            });
        }
        let started = Instant::now();
        let streamed = shared.is_none();
        let relay = async move {
            let r = if streamed { relay(&mut volume, &mut senders, endpoint).await } else { Ok(()) };
            drop(senders); // end of every model's stream (a truncated one after an error is refused there)
            r
        };
        let mut relay = std::pin::pin!(relay);
        let mut pending = pending;
        let mut relay_end: Option<Instant> = None;
        let mut answered = Vec::new();
        let mut missing = Vec::new();
        loop {
            tokio::select! {
                r = &mut relay, if relay_end.is_none() => {
                    r?;
                    relay_end = Some(Instant::now());
                }
                call = pending.next() => {
                    let Some(call) = call else { break };
                    let failure = match call.result {
                        Ok(Ok(r)) => {
                            answered.push((call.index, call.name, call.elapsed, r.into_inner()));
                            continue;
                        }
                        Ok(Err(status)) => error::from_model(call.name, &status),
                        Err(_) => error::model_timeout(call.name, self.config.model_timeout),
                    };
                    match failure {
                        ModelFailure::Missing(e) if self.config.missing_model_policy == MissingModelPolicy::Degrade => missing.push((call.index, call.name, e)),
                        ModelFailure::Missing(e) | ModelFailure::Fatal(e) => return Err(e),
                    }
                }
            }
        }
        // every call has ended; the relay has too unless all calls ended early (then it is moot)
        let relay_end = relay_end.unwrap_or_else(Instant::now);
        if let Some(s) = shared.as_mut()
            && missing.is_empty()
        {
            // every model service answered: none maps the file any more
            s.reusable = true;
        }
        answered.sort_by_key(|a| a.0);
        missing.sort_by_key(|m| m.0);
        Ok(FanOut {
            answered: answered.into_iter().map(|(_, n, t, s)| (n, t, s)).collect(),
            missing: missing.into_iter().map(|(_, n, e)| (n, e)).collect(),
            relay_ms: if shared.is_some() { shared_write_ms } else { ms(relay_end - started) },
            models_ms: ms(relay_end.elapsed()),
        })
    }
}

/// A study's voxels and lung mask in a file of the shared folder (one-machine mode), given up
/// when dropped, i.e. when the study has ended whatever the outcome.
///
/// The model services map the file and read it in place (`ct_proto::mapped`), so it goes back to
/// the folder's pool, to be rewritten by a later study, only when every model service has
/// answered ([`Self::reusable`]). A call that failed, timed out or was cancelled by an early end
/// of the study may leave a service still reading: the file is unlinked instead, which keeps
/// the mapping valid until that reader is done.
struct SharedVolume {
    path: std::path::PathBuf,
    name: String,
    /// Files kept for reuse in the folder (`CT_SHARED_VOLUME_POOL`).
    pool: usize,
    /// Set once every model service has answered: no reader is left.
    reusable: bool,
}

impl SharedVolume {
    /// The study's payloads as a file of `dir`: preprocess-svc's own file when it wrote one (a
    /// `shared` part, claimed by renaming it), else the payload chunks written to a new file.
    async fn receive(dir: &std::path::Path, pool: usize, request_id: &str, volume: &mut tonic::Streaming<VolumeChunk>, header: &VolumeHeader, endpoint: Endpoint) -> Result<Self, ApiError> {
        use std::io::Write;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id: String = request_id.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
        let name = format!("ct-{}-{seq}-{id}.vol", std::process::id());
        let path = dir.join(&name);
        let io = |e: std::io::Error| ApiError::internal(format!("shared volume folder {}: {e}", dir.display()));
        let expected = header.voxel_bytes + if header.has_lung_mask { header.mask_bytes } else { 0 };
        let first = next_chunk(volume, endpoint).await?;
        if let Some(VolumeChunk { part: Some(volume_chunk::Part::Shared(s)) }) = &first {
            // claim preprocess-svc's file: from the rename on it is ours to remove
            let theirs = ct_proto::codec::shared_path(dir, &s.file).map_err(|e| ApiError::internal(format!("preprocess-svc's shared volume: {e}")))?;
            tokio::task::spawn_blocking({
                let (theirs, path) = (theirs.clone(), path.clone());
                move || std::fs::rename(theirs, path)
            })
            .await
            .map_err(|e| ApiError::internal(format!("shared volume claim task: {e}")))?
            .map_err(|e| ApiError::internal(format!("claiming preprocess-svc's shared volume {} (is CT_SHARED_VOLUME_DIR the same folder for both?): {e}", theirs.display())))?;
            let this = Self { path, name, pool, reusable: false };
            let meta = std::fs::symlink_metadata(&this.path).map_err(io)?;
            if !meta.file_type().is_file() || meta.len() < expected {
                return Err(ApiError::internal(format!("preprocess-svc's shared volume holds {} bytes, its header announces {expected}", meta.len())));
            }
            if next_chunk(volume, endpoint).await?.is_some() {
                return Err(ApiError::internal("preprocess-svc sent more after its shared volume"));
            }
            return Ok(this);
        }
        let file = ct_proto::codec::open_shared_for_write(dir, &name).map_err(io)?;
        let this = Self { path, name, pool, reusable: false }; // from here on the file is removed on every exit
        ct_proto::codec::grow_to(&file, expected).map_err(io)?;
        let mut file = std::io::BufWriter::with_capacity(4 << 20, file);
        let mut written = 0u64;
        let mut chunk = first;
        while let Some(c) = chunk {
            // the file is the voxels then the mask, in order: each chunk must start where the file ends
            let (b, start, end) = match c.part {
                Some(volume_chunk::Part::Voxels(b)) => (b, 0, header.voxel_bytes),
                Some(volume_chunk::Part::LungMask(b)) => (b, header.voxel_bytes, expected),
                _ => return Err(ApiError::internal("preprocess-svc sent an unexpected part after the volume header")),
            };
            if start + b.offset != written || written + b.data.len() as u64 > end {
                return Err(ApiError::internal("preprocess-svc's volume chunks are out of order or exceed its header"));
            }
            file.write_all(&b.data).map_err(io)?;
            written += b.data.len() as u64;
            chunk = next_chunk(volume, endpoint).await?;
        }
        if written != expected {
            return Err(ApiError::internal(format!("preprocess-svc's volume stream ended after {written} of {expected} bytes")));
        }
        file.flush().map_err(io)?;
        Ok(this)
    }

    fn chunk(&self) -> VolumeChunk {
        VolumeChunk { part: Some(volume_chunk::Part::Shared(ct_proto::v1::SharedPayload { file: self.name.clone() })) }
    }
}

impl Drop for SharedVolume {
    /// The study has ended: its file goes back to the folder's pool when no reader is left and
    /// the pool has room, else it is removed.
    fn drop(&mut self) {
        let pool = if self.reusable { self.pool } else { 0 };
        if let Err(e) = ct_proto::codec::recycle_shared_file(&self.path, pool)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %e, "could not remove a shared volume file");
        }
    }
}

/// The next message of preprocess-svc's volume stream.
async fn next_chunk(volume: &mut tonic::Streaming<VolumeChunk>, endpoint: Endpoint) -> Result<Option<VolumeChunk>, ApiError> {
    volume.message().await.map_err(|s| error::from_preprocess(&s, endpoint))
}

/// What the model services answered.
struct FanOut {
    /// `(model, call time, scores)` in the configured order.
    answered: Vec<(&'static str, Duration, Scores)>,
    /// Models absent under policy `degrade`, in the configured order.
    missing: Vec<(&'static str, ApiError)>,
    relay_ms: f64,
    models_ms: f64,
}

/// Copies every volume chunk to the open model streams (mask chunks only to those that take
/// them). A model whose call already ended is skipped; when none is left the relay stops.
async fn relay(volume: &mut tonic::Streaming<VolumeChunk>, senders: &mut [Option<(mpsc::Sender<VolumeChunk>, bool)>], endpoint: Endpoint) -> Result<(), ApiError> {
    loop {
        let chunk = match volume.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(s) => return Err(error::from_preprocess(&s, endpoint)),
        };
        let is_mask = matches!(chunk.part, Some(volume_chunk::Part::LungMask(_)));
        if matches!(chunk.part, Some(volume_chunk::Part::Header(_))) {
            return Err(ApiError::internal("preprocess-svc sent a second volume header"));
        }
        let targets: Vec<usize> = senders.iter().enumerate().filter_map(|(i, s)| s.as_ref().filter(|(_, mask)| !is_mask || *mask).map(|_| i)).collect();
        if senders.iter().all(Option::is_none) {
            return Ok(()); // every call has ended: their results say why
        }
        let mut chunk = Some(chunk);
        for (n, &i) in targets.iter().enumerate() {
            let msg = if n + 1 == targets.len() { chunk.take() } else { chunk.clone() };
            let (Some(msg), Some((tx, _))) = (msg, senders[i].as_ref()) else { continue };
            if tx.send(msg).await.is_err() {
                senders[i] = None;
            }
        }
    }
}
