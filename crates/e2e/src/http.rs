//! A deliberately small HTTP/1.1 client over a raw TCP stream (`Connection: close`): enough to
//! send exact multipart bodies (also malformed, partial or chunked ones) and to hold an upload
//! half-way, which a full client library would hide.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The boundary of the multipart bodies built here.
pub const BOUNDARY: &str = "e2e-boundary-7d1f0c";

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Keys of the JSON object body, in order.
    pub fn keys(&self) -> Vec<String> {
        self.json().as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }
}

/// A `multipart/form-data` body with one file field.
pub fn multipart(field: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut b = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// The multipart content type matching [`multipart`].
pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn head(method: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)], content_length: Option<usize>) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

async fn read_response(mut s: TcpStream) -> Response {
    let mut buf = Vec::new();
    // a reset after the response (the server closed with our body unread) is not an error here
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if !buf.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    parse(&buf)
}

fn parse(buf: &[u8]) -> Response {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no complete response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let raw = &buf[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Response { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// One request with a complete body; the response is read while the body is written (a
/// server may answer early, e.g. 413 or 429, without reading the body).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let mut data = head(method, addr, path, headers, Some(body.len()));
    data.extend_from_slice(body);
    let writer = async move {
        let _ = w.write_all(&data).await;
        w
    };
    let reader = async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if !buf.is_empty() => {
                    let _ = e;
                    break;
                }
                Err(e) => panic!("reading the response: {e}"),
            }
        }
        buf
    };
    let (_w, buf) = tokio::join!(writer, reader);
    parse(&buf)
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], &[]).await
}

/// `POST path` with a multipart body holding `data` as the field `file`.
pub async fn post_file(addr: SocketAddr, path: &str, filename: &str, data: &[u8]) -> Response {
    post_file_with(addr, path, filename, data, &[]).await
}

pub async fn post_file_with(addr: SocketAddr, path: &str, filename: &str, data: &[u8], headers: &[(&str, &str)]) -> Response {
    let ct = multipart_type();
    let mut h = vec![("Content-Type", ct.as_str())];
    h.extend_from_slice(headers);
    request(addr, "POST", path, &h, &multipart("file", filename, data)).await
}

/// `POST path` with a chunked body (no Content-Length), in pieces of `piece` bytes.
pub async fn post_chunked(addr: SocketAddr, path: &str, filename: &str, data: &[u8], piece: usize) -> Response {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let ct = multipart_type();
    let body = multipart("file", filename, data);
    let head = head("POST", addr, path, &[("Content-Type", ct.as_str()), ("Transfer-Encoding", "chunked")], None);
    let writer = async move {
        let _ = w.write_all(&head).await;
        for p in body.chunks(piece.max(1)) {
            if w.write_all(format!("{:x}\r\n", p.len()).as_bytes()).await.is_err() || w.write_all(p).await.is_err() || w.write_all(b"\r\n").await.is_err() {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n").await;
    };
    let reader = async move {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf).await;
        buf
    };
    let ((), buf) = tokio::join!(writer, reader);
    parse(&buf)
}

/// An upload sent up to `sent` bytes of its body and then held: the server has admitted it and
/// is waiting for the rest.
pub struct HeldUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldUpload {
    /// Sends the head and the first `sent` bytes of a multipart body holding `data`.
    pub async fn start(addr: SocketAddr, path: &str, filename: &str, data: &[u8], sent: usize) -> Self {
        let ct = multipart_type();
        let body = multipart("file", filename, data);
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&head("POST", addr, path, &[("Content-Type", ct.as_str())], Some(body.len()))).await.expect("write head");
        let sent = sent.min(body.len() - 1);
        stream.write_all(&body[..sent]).await.expect("write the first part");
        stream.flush().await.expect("flush");
        Self { stream, rest: body[sent..].to_vec() }
    }

    /// Sends the rest of the body and reads the response.
    pub async fn finish(mut self) -> Response {
        self.stream.write_all(&self.rest).await.expect("write the rest");
        read_response(self.stream).await
    }

    /// Reads the response without sending the rest (the server answers on its own, e.g. 504).
    pub async fn response_without_finishing(self, within: Duration) -> Response {
        tokio::time::timeout(within, read_response(self.stream)).await.expect("the server answered in time")
    }
}
