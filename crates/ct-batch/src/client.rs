//! HTTP side: the health check and one study upload with retries.
//!
//! Retried: HTTP 429 and 503 (the gateway's "overloaded" and "not ready / upstream unavailable")
//! and connection errors (refused, reset, closed before the answer). The wait is the gateway's
//! `Retry-After` (seconds) when it sends one, else `backoff * 2^(retry-1)` with jitter in
//! [d/2, d], both capped by `max_backoff`. Not retried: timeouts (the study may really take that
//! long; resending it would double the load) and every other HTTP answer (400/413/422/500/504
//! are answers about the study).

use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where a study goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /predict`, a ZIP of DICOM files.
    Predict,
    /// `POST /predict_nifti`, a `.nii` / `.nii.gz` volume.
    PredictNifti,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Predict => "/predict",
            Endpoint::PredictNifti => "/predict_nifti",
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Endpoint::Predict => "application/zip",
            Endpoint::PredictNifti => "application/octet-stream",
        }
    }
}

/// The bytes of one upload: streamed from a file (re-opened for every try), or held in memory
/// (a ZIP packed from loose DICOM files; cloning `Bytes` for a retry copies nothing).
#[derive(Debug, Clone)]
pub enum Payload {
    File(PathBuf),
    Memory(Bytes),
}

/// One study to send.
#[derive(Debug, Clone)]
pub struct Upload {
    pub endpoint: Endpoint,
    /// Multipart file name (the gateway checks the extension, as the reference does).
    pub filename: String,
    pub payload: Payload,
}

/// Retry policy (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): `Retry-After` if given, else exponential
    /// backoff with jitter; never above `max_backoff`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_backoff);
        }
        let exp = self.backoff.saturating_mul(1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX));
        let d = exp.min(self.max_backoff);
        // Jitter in [d/2, d] so that clients turned away together do not come back together.
        let r = RandomState::new().hash_one(retry) % 1_000;
        d / 2 + d / 2 * (r as u32) / 1_000
    }
}

/// HTTP statuses worth another try: 429 (queue full) and 503 (not ready / upstream unavailable).
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// A `Retry-After` header in seconds (the HTTP-date form is ignored: backoff applies then).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What came back for one study, after the retries.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// HTTP status of the last answer (None: no answer, see `transport_error`).
    pub status: Option<u16>,
    /// The answer's body when it is a JSON object.
    pub json: Option<serde_json::Map<String, serde_json::Value>>,
    /// A short excerpt of a non-JSON body (for the error column).
    pub body_excerpt: Option<String>,
    /// `x-request-id` response header.
    pub request_id_header: Option<String>,
    /// The last try failed without an HTTP answer (connection error, timeout).
    pub transport_error: Option<String>,
    pub timed_out: bool,
    /// Tries made (1 = no retry).
    pub attempts: u32,
    /// How many answers were 429.
    pub throttled: u32,
    /// Client wall time of the last try, in seconds.
    pub last_try_s: f64,
}

/// The gateway client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    policy: RetryPolicy,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --api-url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl Client {
    pub fn new(api_url: &str, policy: RetryPolicy, timeout: Duration) -> Result<Self, ClientError> {
        let base = api_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| ClientError::BadUrl { url: api_url.into(), reason: e.to_string() })?;
        if parsed.scheme() != "http" {
            return Err(ClientError::BadUrl { url: api_url.into(), reason: "only http:// is supported (this build has no TLS)".into() });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ct-batch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self { http, base, policy, timeout })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /health` (10 s): Ok when the gateway answers 200, else why not.
    pub async fn health(&self) -> Result<(), String> {
        let url = format!("{}/health", self.base);
        match self.http.get(&url).timeout(Duration::from_secs(10)).send().await {
            Ok(r) if r.status().as_u16() == 200 => Ok(()),
            Ok(r) => Err(format!("GET {url} answered HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("GET {url} failed: {}", error_chain(&e))),
        }
    }

    /// Sends one study, retrying per the policy; `on_retry(attempt, reason)` is told about each retry.
    pub async fn predict(&self, upload: &Upload, mut on_retry: impl FnMut(u32, &str)) -> Outcome {
        let url = format!("{}{}", self.base, upload.endpoint.path());
        let mut out = Outcome::default();
        loop {
            out.attempts += 1;
            let started = Instant::now();
            let (retry_reason, retry_after) = match self.try_once(&url, upload).await {
                Ok((status, headers, body)) => {
                    out.last_try_s = started.elapsed().as_secs_f64();
                    out.status = Some(status);
                    out.transport_error = None;
                    out.request_id_header = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                    out.json = None;
                    out.body_excerpt = None;
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(serde_json::Value::Object(m)) => out.json = Some(m),
                        _ if !body.is_empty() => out.body_excerpt = Some(excerpt(&body)),
                        _ => {}
                    }
                    if status == 429 {
                        out.throttled += 1;
                    }
                    if !retryable_status(status) {
                        return out;
                    }
                    let ra = headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
                    (format!("HTTP {status}"), ra)
                }
                Err(e) => {
                    out.last_try_s = started.elapsed().as_secs_f64();
                    out.status = None;
                    out.json = None;
                    out.body_excerpt = None;
                    out.request_id_header = None;
                    let e = match e {
                        TryError::Read(msg) => {
                            out.transport_error = Some(msg);
                            return out;
                        }
                        TryError::Http(e) => e,
                    };
                    if e.is_timeout() {
                        out.timed_out = true;
                        out.transport_error = Some(format!("Request timeout (> {} s)", self.timeout.as_secs()));
                        return out;
                    }
                    let msg = error_chain(&e);
                    out.transport_error = Some(msg.clone());
                    if !(e.is_connect() || e.is_request() || e.is_body()) {
                        return out;
                    }
                    (msg, None)
                }
            };
            if out.attempts > self.policy.retries {
                return out;
            }
            on_retry(out.attempts, &retry_reason);
            tokio::time::sleep(self.policy.delay(out.attempts, retry_after)).await;
        }
    }

    async fn try_once(&self, url: &str, upload: &Upload) -> Result<(u16, reqwest::header::HeaderMap, Bytes), TryError> {
        let part = match &upload.payload {
            Payload::Memory(b) => Part::stream_with_length(b.clone(), b.len() as u64),
            Payload::File(p) => {
                let read_err = |e: std::io::Error| TryError::Read(format!("cannot read {}: {e}", p.display()));
                let f = tokio::fs::File::open(p).await.map_err(read_err)?;
                let len = f.metadata().await.map_err(read_err)?.len();
                Part::stream_with_length(f, len)
            }
        };
        let part = part.file_name(upload.filename.clone()).mime_str(upload.endpoint.mime())?;
        let resp = self.http.post(url).timeout(self.timeout).multipart(Form::new().part("file", part)).send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok((status, headers, body))
    }
}

enum TryError {
    Http(reqwest::Error),
    /// The study's file could not be read (not retried).
    Read(String),
}

impl From<reqwest::Error> for TryError {
    fn from(e: reqwest::Error) -> Self {
        TryError::Http(e)
    }
}

/// `error: cause: cause` (reqwest's Display alone hides the interesting part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

fn excerpt(body: &[u8]) -> String {
    let t = String::from_utf8_lossy(&body[..body.len().min(300)]);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_and_is_capped() {
        let p = RetryPolicy { retries: 3, backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) };
        assert_eq!(p.delay(1, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(p.delay(1, Some(Duration::from_secs(0))), Duration::ZERO);
        assert_eq!(p.delay(4, Some(Duration::from_secs(3600))), Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let p = RetryPolicy { retries: 10, backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1) };
        for (retry, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            for _ in 0..20 {
                let d = p.delay(retry, None).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "retry {retry}: {d} ms not in [{}, {full}]", full / 2);
            }
        }
    }

    #[test]
    fn statuses_and_headers() {
        assert!(retryable_status(429) && retryable_status(503));
        for s in [200, 400, 413, 422, 500, 502, 504] {
            assert!(!retryable_status(s), "{s}");
        }
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn urls() {
        let p = RetryPolicy { retries: 0, backoff: Duration::ZERO, max_backoff: Duration::ZERO };
        let c = Client::new("http://127.0.0.1:8000/", p, Duration::from_secs(1)).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8000");
        assert!(Client::new("https://example.org", p, Duration::from_secs(1)).is_err());
        assert!(Client::new("not a url", p, Duration::from_secs(1)).is_err());
    }
}
