//! Test fixture: a small HTTP server on 127.0.0.1:0 that answers like the gateway (the reference's
//! success / failure JSON plus `error_type` and `request_id`). What it answers depends on the
//! uploaded file's name:
//! - `busy_*`: 429 with `Retry-After: 1` on the first call, then success;
//! - `unavail_*`: always 503 with `Retry-After: 0`;
//! - `bad_*` (or a ZIP with an entry named `bad_*`): 422 failure (lungs not found);
//! - `*pos*`: success, pathology 1 with three top pathologies; anything else: success, pathology 0.
//!
//! Success answers carry `study_uid = "uid-<stem>"` and `series_uid = "len-<bytes received>"`, so
//! a test can tell that each row got its own file's answer. A ZIP whose entries are DICOM answers
//! with the StudyInstanceUID read from its entries (for `--dicom-tree`).
#![allow(dead_code)]

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One upload the fake gateway received.
#[derive(Debug, Clone)]
pub struct Received {
    pub endpoint: &'static str,
    pub filename: String,
    pub len: usize,
    /// ZIP entry names and bytes (empty when the upload is not a ZIP).
    pub entries: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
pub struct Seen {
    pub calls: HashMap<String, u32>,
    pub uploads: Vec<Received>,
}

pub type Shared = Arc<Mutex<Seen>>;

pub async fn start() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "healthy"})) }))
        .route("/predict", post(|s, m| predict(s, m, "/predict")))
        .route("/predict_nifti", post(|s, m| predict(s, m, "/predict_nifti")))
        .layer(DefaultBodyLimit::max(256 << 20))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, seen)
}

async fn predict(State(seen): State<Shared>, mut mp: Multipart, endpoint: &'static str) -> Response {
    let mut file = None;
    while let Ok(Some(field)) = mp.next_field().await {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or_default().to_string();
            let bytes = field.bytes().await.expect("upload body");
            file = Some((name, bytes));
        }
    }
    let Some((filename, bytes)) = file else {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"detail": "field file missing"}))).into_response();
    };
    let entries = zip_entries(&bytes);
    let call = {
        let mut s = seen.lock().unwrap();
        s.uploads.push(Received { endpoint, filename: filename.clone(), len: bytes.len(), entries: entries.clone() });
        let c = s.calls.entry(filename.clone()).or_default();
        *c += 1;
        *c
    };
    let stem = filename.split('.').next().unwrap_or_default().to_string();
    let request_id = format!("req-{stem}-{call}");
    if filename.starts_with("busy_") && call == 1 {
        return failure(StatusCode::TOO_MANY_REQUESTS, "overloaded", "too many studies in flight", &request_id, Some("1"));
    }
    if filename.starts_with("unavail_") {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable", "a model service is unavailable", &request_id, Some("0"));
    }
    if filename.starts_with("bad_") || entries.iter().any(|(n, _)| n.rsplit('/').next().is_some_and(|b| b.starts_with("bad_"))) {
        return failure(StatusCode::UNPROCESSABLE_ENTITY, "lungs_not_found", "Lungs not found", &request_id, None);
    }
    let study_uid = entries
        .iter()
        .find_map(|(_, b)| dicom_study_uid(b))
        .unwrap_or_else(|| if endpoint == "/predict_nifti" { format!("nifti_{stem}") } else { format!("uid-{stem}") });
    let positive = filename.contains("pos");
    let body = json!({
        "study_uid": study_uid,
        "series_uid": format!("len-{}", bytes.len()),
        "probability_of_pathology": if positive { 0.8125 } else { 0.25 },
        "pathology": i32::from(positive),
        "top_pathologies": if positive { json!(["Cancer", "Bronchiectasis", "Cavitation"]) } else { json!([]) },
        "probability_of_pathology_thoracic": if positive { json!(0.625) } else { Value::Null },
        "pathology_thoracic": if positive { json!(1) } else { Value::Null },
        "processing_status": "Success",
        "time_of_processing": 1.5,
        "request_id": request_id,
    });
    let mut h = HeaderMap::new();
    h.insert("x-request-id", HeaderValue::from_str(&request_id).unwrap());
    (StatusCode::OK, h, Json(body)).into_response()
}

fn failure(code: StatusCode, error_type: &str, error: &str, request_id: &str, retry_after: Option<&str>) -> Response {
    let body = json!({
        "study_uid": "", "series_uid": "", "probability_of_pathology": null, "pathology": null,
        "most_dangerous_pathology_type": null, "processing_status": "Failure", "time_of_processing": 0.25,
        "error": error, "error_type": error_type, "request_id": request_id,
    });
    let mut h = HeaderMap::new();
    if let Some(ra) = retry_after {
        h.insert("retry-after", HeaderValue::from_str(ra).unwrap());
    }
    h.insert("x-request-id", HeaderValue::from_str(request_id).unwrap());
    (code, h, Json(body)).into_response()
}

fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let Ok(mut z) = zip::ZipArchive::new(Cursor::new(bytes)) else { return Vec::new() };
    (0..z.len())
        .filter_map(|i| {
            let mut f = z.by_index(i).ok()?;
            let mut b = Vec::new();
            f.read_to_end(&mut b).ok()?;
            Some((f.name().ok()?.to_string(), b))
        })
        .collect()
}

/// StudyInstanceUID of a DICOM file (with or without the 128-byte preamble).
pub fn dicom_study_uid(b: &[u8]) -> Option<String> {
    use dicom_dictionary_std::tags;
    use dicom_object::OpenFileOptions;
    use dicom_object::file::ReadPreamble;
    let skip = if b.len() >= 132 && &b[128..132] == b"DICM" { 128 } else { 0 };
    let obj = OpenFileOptions::new().read_preamble(ReadPreamble::Never).read_until(tags::PIXEL_DATA).from_reader(&b[skip..]).ok()?;
    Some(obj.get(tags::STUDY_INSTANCE_UID)?.to_str().ok()?.trim_end_matches(['\0', ' ']).to_string())
}

/// Reads an XLSX sheet back as strings ("" for empty cells; numbers with `{}` formatting).
pub fn read_xlsx(path: &std::path::Path) -> Vec<Vec<String>> {
    use calamine::{Data, Reader, Xlsx, open_workbook};
    let mut wb: Xlsx<_> = open_workbook(path).expect("open xlsx");
    let names = wb.sheet_names();
    assert_eq!(names, vec!["Sheet1".to_string()]);
    let range = wb.worksheet_range("Sheet1").expect("sheet");
    range
        .rows()
        .map(|r| {
            r.iter()
                .map(|c| match c {
                    Data::Empty => String::new(),
                    Data::String(s) => s.clone(),
                    Data::Float(f) => f.to_string(),
                    Data::Int(i) => i.to_string(),
                    Data::Bool(b) => b.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect()
}

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, newlines inside quotes).
pub fn read_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(field.is_empty() && row.is_empty(), "CSV must end with a newline");
    rows
}

/// Column index by name.
pub fn col(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}
