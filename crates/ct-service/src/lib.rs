//! Service scaffolding shared by every binary of the workspace, so that each service holds only
//! its own logic:
//!
//! - [`init_tracing`]: one log setup, filtered by `CT_LOG` (default `info,ort=warn`: ONNX Runtime is
//!   chatty), text or JSON lines (`CT_LOG_FORMAT`).
//! - [`Shutdown`]: one graceful-shutdown signal (Ctrl-C or SIGTERM) shared by the gRPC server and
//!   the admin HTTP server.
//! - [`grpc_router`] / [`serve_grpc`]: a tonic server with `grpc.health.v1` and reflection.
//! - [`Readiness`] + [`admin_router`] / [`serve_admin`]: the admin port with `/live`, `/ready`
//!   (200 only once the service is loaded and warmed up) and `/metrics` (Prometheus text).
//! - [`alloc`]: the global allocator of every service binary (mimalloc, keeping freed memory).

pub mod alloc;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Initialises `tracing` once, writing to stderr: `CT_LOG` holds the filter (`info,ort=warn` by
/// default); `CT_LOG_FORMAT=json` writes one JSON object per line (for log collectors), anything
/// else human-readable text, coloured only when stderr is a terminal or `CT_LOG_COLOR=always`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = if std::env::var("CT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        let ansi = match std::env::var("CT_LOG_COLOR").as_deref() {
            Ok("always") => true,
            Ok("never") => false,
            _ => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        builder.with_ansi(ansi).try_init()
    };
}

/// A shutdown signal that can be awaited by any number of servers and triggered by a process
/// signal ([`Shutdown::on_signals`]) or by hand ([`Shutdown::trigger`], tests).
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }

    /// A `Shutdown` triggered by Ctrl-C or SIGTERM.
    pub fn on_signals() -> Self {
        let s = Self::new();
        let t = s.clone();
        tokio::spawn(async move {
            signal().await;
            tracing::info!("shutdown signal received, draining");
            t.trigger();
        });
        s
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once the shutdown has been triggered.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// HTTP/2 flow-control window of one gRPC stream. Volumes are hundreds of MB; with h2's default
/// 64 KiB window every 64 KiB waits for a WINDOW_UPDATE round trip, which made the gateway's relay
/// of a 300-slice volume to the five model services take seconds. Servers and clients both use it.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 flow-control window of one connection (several studies' streams share it).
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
/// Largest HTTP/2 frame a peer may send us (h2's default is 16 KiB: a 2 MiB volume chunk would
/// cross in 128 frames, each with its own header parsing and wake-up).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// A tonic server with `grpc.health.v1` and reflection (`ct.v1` and health) already added.
/// The caller adds its own service, marks it serving with the returned reporter once ready,
/// and hands the router to [`serve_grpc`].
pub fn grpc_router() -> anyhow::Result<(tonic_health::server::HealthReporter, tonic::transport::server::Router)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ct_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .add_service(health)
        .add_service(reflection);
    Ok((reporter, router))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight calls.
pub async fn serve_grpc(listener: TcpListener, router: tonic::transport::server::Router, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    router.serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown).await?;
    Ok(())
}

/// Whether the service is ready to take work (models loaded and warmed up).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `/live` (always 200 while the process serves), `/ready` (200 once ready, else 503) and
/// `/metrics` (the registry in Prometheus text format).
pub fn admin_router(ready: Readiness, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_text(&registry) }
            }),
        )
}

fn metrics_text(registry: &prometheus::Registry) -> impl IntoResponse + use<> {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    match encoder.encode(&registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_string())], buf),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain".to_string())], e.to_string().into_bytes()),
    }
}

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
