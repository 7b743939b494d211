//! Request ids: taken from the client's `x-request-id` when it is sane, generated otherwise;
//! returned in the `x-request-id` header and the JSON body, recorded on the request's span, and
//! sent to every upstream as gRPC metadata `x-request-id`.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The request id of the current request (an axum extension set by [`layer`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepted client ids: 1..=128 characters of `[A-Za-z0-9._:-]` (they end up in logs and
/// metadata, so nothing else is let through).
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new random 128-bit id, as 32 lower-case hex digits.
pub fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        // RandomState is seeded from the OS once per thread and then varied per instance
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_usize(i);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Middleware: resolves the id, runs the request inside a `request` span carrying it, and
/// sets the response header.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).filter(|v| is_valid(v)).map(str::to_string).unwrap_or_else(generate);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_valid() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 32 && is_valid(i)));
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(is_valid("batch-7:study_12.zip"));
        assert!(!is_valid(""));
        assert!(!is_valid("a b"));
        assert!(!is_valid("x\ny"));
        assert!(!is_valid(&"a".repeat(129)));
    }
}
