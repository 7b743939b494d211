//! The REST API, compatible with the reference (celsus-reference §1): `GET /health`, `GET /`,
//! `POST /predict` (multipart field `file`, a ZIP of DICOM), `POST /predict_nifti` (`.nii` or
//! `.nii.gz`), plus `GET /openapi.json`.
//!
//! Admission: at most `max_in_flight` studies are processed and `queue_depth` more wait for a
//! slot; beyond that the answer is 429 with Retry-After, before the body is read. The deadline
//! runs from admission to the answer.

use crate::error::{ApiError, Endpoint, ErrorKind};
use crate::pipeline::{Answer, Pipeline, Upload};
use crate::request_id::{self, RequestId};
use axum::Router;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The OpenAPI 3 document of this API (written by hand; `gateway/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Shared state of the API handlers.
pub struct App {
    pub pipeline: Pipeline,
    /// Studies admitted (processing + waiting): `max_in_flight + queue_depth` permits.
    admitted: Arc<Semaphore>,
    /// Studies processing: `max_in_flight` permits.
    slots: Arc<Semaphore>,
}

impl App {
    pub fn new(pipeline: Pipeline) -> Self {
        let c = &pipeline.config;
        let admitted = Arc::new(Semaphore::new(c.max_in_flight + c.queue_depth));
        let slots = Arc::new(Semaphore::new(c.max_in_flight));
        Self { pipeline, admitted, slots }
    }

    /// Studies being processed right now.
    pub fn in_flight(&self) -> usize {
        self.pipeline.config.max_in_flight - self.slots.available_permits()
    }
}

pub fn router(app: Arc<App>) -> Router {
    let limit = usize::try_from(app.pipeline.config.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/", get(info))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/predict", post(predict_zip))
        .route("/predict_nifti", post(predict_nifti))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(app)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "healthy"}))
}

async fn info() -> Json<serde_json::Value> {
    // the reference's three fields first, then ours
    Json(serde_json::json!({
        "status": "running",
        "service": "CT-CLIP + LightGBM Inference API",
        "version": "2.0.0",
        "implementation": format!("gateway {}", env!("CARGO_PKG_VERSION")),
        "endpoints": ["/predict", "/predict_nifti", "/health", "/openapi.json"],
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn predict_zip(State(app): State<Arc<App>>, Extension(id): Extension<RequestId>, headers: HeaderMap, multipart: Result<Multipart, MultipartRejection>) -> Response {
    handle(app, Endpoint::Zip, id, headers, multipart).await
}

async fn predict_nifti(State(app): State<Arc<App>>, Extension(id): Extension<RequestId>, headers: HeaderMap, multipart: Result<Multipart, MultipartRejection>) -> Response {
    handle(app, Endpoint::Nifti, id, headers, multipart).await
}

/// Decrements a gauge when dropped (also when the client goes away mid-request).
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn multipart_error(e: MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorKind::TooLarge, "body_too_large", format!("the upload exceeds the limit of {limit} bytes"))
    } else {
        ApiError::bad_request("malformed_multipart", format!("the multipart body could not be read: {}", e.body_text()))
    }
}

async fn handle(app: Arc<App>, endpoint: Endpoint, id: RequestId, headers: HeaderMap, multipart: Result<Multipart, MultipartRejection>) -> Response {
    let arrived = Instant::now();
    let mut queue_wait = Duration::ZERO;
    let result = process(&app, endpoint, &id.0, &headers, multipart, &mut queue_wait).await;
    let processing = arrived.elapsed().saturating_sub(queue_wait).as_secs_f64();
    let m = &app.pipeline.metrics;
    match result {
        Ok(answer) => {
            m.requests.with_label_values(&[endpoint.path(), "ok"]).inc();
            for (stage, v) in answer.timings.stages() {
                m.stages.with_label_values(&[stage]).observe(v / 1e3);
            }
            tracing::info!(
                study_uid = %answer.header.study_uid,
                probability = answer.decision.probability_of_pathology,
                pathology = answer.decision.pathology,
                missing_models = ?answer.missing_models,
                upload_bytes = answer.upload_bytes,
                total_ms = answer.timings.total as u64,
                "answered"
            );
            success(&answer, processing, &id.0)
        }
        Err(e) => {
            m.requests.with_label_values(&[endpoint.path(), e.kind.as_str()]).inc();
            m.errors.with_label_values(&[e.kind.as_str(), e.cause.as_str()]).inc();
            let detail = e.detail.as_deref().unwrap_or("");
            if e.kind.http_status().is_server_error() {
                tracing::error!(error_type = e.kind.as_str(), cause = %e.cause, error = %e.message, detail, "failed");
            } else {
                tracing::info!(error_type = e.kind.as_str(), cause = %e.cause, error = %e.message, detail, "refused");
            }
            failure(endpoint, &e, processing, &id.0, app.pipeline.config.retry_after_secs)
        }
    }
}

async fn process(app: &App, endpoint: Endpoint, request_id: &str, headers: &HeaderMap, multipart: Result<Multipart, MultipartRejection>, queue_wait: &mut Duration) -> Result<Answer, ApiError> {
    let config = &app.pipeline.config;
    let limit = config.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(ErrorKind::TooLarge, "body_too_large", format!("the upload exceeds the limit of {limit} bytes")));
    }
    let Ok(_admitted) = app.admitted.clone().try_acquire_owned() else {
        return Err(ApiError::overloaded(format!("too many studies in flight ({} processing, {} waiting); retry later", config.max_in_flight, config.queue_depth)));
    };
    let mut multipart = multipart.map_err(|_| ApiError::bad_request("malformed_multipart", "expected a multipart/form-data body with a `file` field"))?;
    let m = &app.pipeline.metrics;
    let work = async {
        let waited = Instant::now();
        let slot = {
            let _queued = GaugeGuard::new(&m.queued);
            app.slots.clone().acquire_owned().await.map_err(|_| ApiError::new(ErrorKind::NotReady, "shutting_down", "the gateway is shutting down"))?
        };
        *queue_wait = waited.elapsed();
        let _slot = slot;
        let _in_flight = GaugeGuard::new(&m.in_flight);
        let started = Instant::now();
        loop {
            let Some(field) = multipart.next_field().await.map_err(|e| multipart_error(e, limit))? else {
                return Err(ApiError::bad_request("missing_file_field", "the multipart body has no `file` field"));
            };
            if field.name() != Some("file") {
                continue; // other form fields are ignored
            }
            let filename = field.file_name().unwrap_or_default().to_string();
            let body = field.map(|r| r.map_err(|e| multipart_error(e, limit)));
            return app.pipeline.run(endpoint, request_id, Upload { filename, body, size_hint: declared }, started, *queue_wait).await;
        }
    };
    match tokio::time::timeout(config.request_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::timeout(format!("the study was not processed within {} s", config.request_timeout.as_secs_f64()))),
    }
}

/// The reference's success body (§1.5, thoracic fields included), then our fields.
#[derive(Serialize)]
struct Success<'a> {
    study_uid: &'a str,
    series_uid: &'a str,
    probability_of_pathology: f64,
    pathology: u32,
    top_pathologies: &'a [String],
    probability_of_pathology_thoracic: Option<f64>,
    pathology_thoracic: Option<u32>,
    processing_status: &'static str,
    time_of_processing: f64,
    request_id: &'a str,
    model_versions: serde_json::Map<String, serde_json::Value>,
    missing_models: &'a [String],
    missing_features: &'a [String],
    threshold: f64,
    threshold_thoracic: Option<f64>,
    warnings: &'a [String],
    timings_ms: &'a crate::pipeline::Timings,
    model_timings_ms: &'a BTreeMap<String, BTreeMap<String, f64>>,
}

fn success(a: &Answer, seconds: f64, request_id: &str) -> Response {
    let d = &a.decision;
    let body = Success {
        study_uid: &a.header.study_uid,
        series_uid: &a.header.series_uid,
        probability_of_pathology: d.probability_of_pathology,
        pathology: d.pathology,
        // the reference answers top_pathologies only for pathological studies
        top_pathologies: if d.pathology == 1 { &d.top_pathologies } else { &[] },
        probability_of_pathology_thoracic: d.probability_of_pathology_thoracic,
        pathology_thoracic: d.pathology_thoracic,
        processing_status: "Success",
        time_of_processing: seconds,
        request_id,
        model_versions: a.model_versions.iter().map(|(m, v)| (m.clone(), serde_json::Value::String(v.clone()))).collect(),
        missing_models: &a.missing_models,
        missing_features: &d.missing_features,
        threshold: d.threshold,
        threshold_thoracic: d.threshold_thoracic,
        warnings: &a.header.warnings,
        timings_ms: &a.timings,
        model_timings_ms: &a.model_timings,
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// The reference's failure body (§1.6). `/predict` has `most_dangerous_pathology_type: null`,
/// `/predict_nifti` has `top_pathologies: []` in the same place.
#[derive(Serialize)]
struct Failure<'a, M: Serialize> {
    study_uid: &'static str,
    series_uid: &'static str,
    probability_of_pathology: Option<f64>,
    pathology: Option<u32>,
    #[serde(flatten)]
    legacy: M,
    processing_status: &'static str,
    time_of_processing: f64,
    error: &'a str,
    error_type: &'static str,
    error_cause: &'a str,
    request_id: &'a str,
}

#[derive(Serialize)]
struct ZipLegacy {
    most_dangerous_pathology_type: Option<String>,
}

#[derive(Serialize)]
struct NiftiLegacy {
    top_pathologies: [String; 0],
}

fn failure(endpoint: Endpoint, e: &ApiError, seconds: f64, request_id: &str, retry_after: u64) -> Response {
    let status = e.kind.http_status();
    // 5xx bodies never carry internals: the id finds the full story in the logs
    let text = if e.kind == ErrorKind::Internal { format!("internal error (request id {request_id})") } else { e.message.clone() };
    let mut resp = match endpoint {
        Endpoint::Zip => (status, Json(failure_body(&text, e, seconds, request_id, ZipLegacy { most_dangerous_pathology_type: None }))).into_response(),
        Endpoint::Nifti => (status, Json(failure_body(&text, e, seconds, request_id, NiftiLegacy { top_pathologies: [] }))).into_response(),
    };
    if matches!(e.kind, ErrorKind::Overloaded | ErrorKind::NotReady | ErrorKind::UpstreamUnavailable) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    resp
}

fn failure_body<'a, M: Serialize>(text: &'a str, e: &'a ApiError, seconds: f64, request_id: &'a str, legacy: M) -> Failure<'a, M> {
    Failure {
        study_uid: "",
        series_uid: "",
        probability_of_pathology: None,
        pathology: None,
        legacy,
        processing_status: "Failure",
        time_of_processing: seconds,
        error: text,
        error_type: e.kind.as_str(),
        error_cause: &e.cause,
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_keys(r: Response) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(axum::body::to_bytes(r.into_body(), 1 << 20)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn failure_bodies_keep_the_reference_fields_and_order() {
        let e = ApiError::new(ErrorKind::Unprocessable, "lungs_not_found", "x");
        let zip = failure(Endpoint::Zip, &e, 0.5, "r1", 5);
        assert_eq!(zip.status(), 422);
        assert_eq!(
            body_keys(zip),
            ["study_uid", "series_uid", "probability_of_pathology", "pathology", "most_dangerous_pathology_type", "processing_status", "time_of_processing", "error", "error_type", "error_cause", "request_id"]
        );
        let nifti = failure(Endpoint::Nifti, &e, 0.5, "r1", 5);
        assert_eq!(
            body_keys(nifti),
            ["study_uid", "series_uid", "probability_of_pathology", "pathology", "top_pathologies", "processing_status", "time_of_processing", "error", "error_type", "error_cause", "request_id"]
        );
        let busy = failure(Endpoint::Zip, &ApiError::overloaded("busy"), 0.0, "r2", 7);
        assert_eq!(busy.status(), 429);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = ApiError::internal("secret stack trace");
        let r = failure(Endpoint::Zip, &e, 0.0, "rid-9", 5);
        assert_eq!(r.status(), 500);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(axum::body::to_bytes(r.into_body(), 1 << 20)).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains("secret") && text.contains("rid-9"), "{text}");
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for p in ["/", "/health", "/predict", "/predict_nifti", "/openapi.json"] {
            assert!(v["paths"].get(p).is_some(), "{p} missing");
        }
        let ok = &v["components"]["schemas"]["PredictionResponse"]["properties"];
        let keys: Vec<&String> = ok.as_object().unwrap().keys().take(9).collect();
        assert_eq!(
            keys,
            [
                "study_uid",
                "series_uid",
                "probability_of_pathology",
                "pathology",
                "top_pathologies",
                "probability_of_pathology_thoracic",
                "pathology_thoracic",
                "processing_status",
                "time_of_processing"
            ]
        );
    }
}
