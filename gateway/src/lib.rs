//! gateway: the REST face of the chest-CT triage stack. It owns the request (limits, deadline,
//! request id, admission, fan-out, the missing-model policy, the JSON answer) and holds no model.
//!
//! ```text
//! client --HTTP multipart--> gateway --ArchiveChunk stream--> preprocess-svc
//!                               |<--VolumeChunk stream (header, voxels, lung mask)--
//!                               +--VolumeChunk stream--> ctclip | supervised | diffusion | mednext | fvlm  (concurrently)
//!                               +--CombineRequest--> ensemble-svc --> Decision
//! client <--JSON (reference fields + request_id, model_versions, missing_models, ...)--
//! ```
//!
//! - [`api`]: the reference-compatible REST API (`/predict`, `/predict_nifti`, `/health`, `/`,
//!   `/openapi.json`), admission (429 + Retry-After) and the deadline (504).
//! - [`pipeline`]: the streaming orchestration of one study.
//! - [`error`]: the error taxonomy and its mappings (upstream `error_type` -> class -> HTTP).
//! - [`upstream`]: gRPC clients (one connection per URL, or balanced over the addresses a name
//!   resolves to: `CT_UPSTREAM_DISCOVERY`) and the health poller behind the admin `/ready`.
//! - [`config`]: flags / `CT_*` variables.
//!
//! Entry point: [`run`] (already-bound listeners + one [`Config`] + a shutdown signal); the
//! binary `gateway serve` wraps it. See `gateway/README.md` for the configuration table and curl
//! examples.

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod request_id;
pub mod upstream;

pub use config::{Config, Discovery, MissingModelPolicy, Upstreams};

use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the REST API on `http` and the admin port (`/live`, `/ready`, `/metrics`,
/// `/upstreams`) on `admin` until `shutdown`; then stops taking connections and waits for the
/// studies in flight, at most `config.shutdown_grace`.
pub async fn run(config: Config, http: TcpListener, admin: TcpListener, shutdown: ct_service::Shutdown) -> anyhow::Result<()> {
    run_with_resolver(config, http, admin, shutdown, upstream::system_resolver()).await
}

/// [`run`] with the host-name resolver of `dns` discovery given (tests: several local servers
/// behind one upstream name).
pub async fn run_with_resolver(config: Config, http: TcpListener, admin: TcpListener, shutdown: ct_service::Shutdown, resolver: upstream::Resolver) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg).context("invalid configuration")?;
    let metrics = metrics::Metrics::new().context("registering metrics")?;
    let (clients, resolvers) = upstream::Clients::new(&config, &metrics, resolver, &shutdown).context("creating the upstream clients")?;

    let readiness = ct_service::Readiness::default();
    let board = upstream::HealthBoard::default();
    let poller = tokio::spawn(upstream::poll_health(clients.clone(), board.clone(), readiness.clone(), metrics.clone(), config.clone(), shutdown.clone()));
    let admin_router = ct_service::admin_router(readiness, metrics.registry.clone()).route(
        "/upstreams",
        axum::routing::get(move || {
            let board = board.clone();
            async move { axum::Json(board.snapshot()) }
        }),
    );
    let admin_addr = admin.local_addr()?;
    let admin_task = tokio::spawn(ct_service::serve_admin(admin, admin_router, shutdown.wait()));

    // one-machine mode: files of studies whose process died mid-way are removed once no study
    // can still be using them (older than the request timeout plus a minute)
    if let Some(dir) = config.shared_volume_dir.clone() {
        let (older_than, stop) = (config.request_timeout + std::time::Duration::from_secs(60), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.wait() => return,
                }
                let d = dir.clone();
                match tokio::task::spawn_blocking(move || ct_proto::codec::sweep_stale_shared_files(&d, older_than)).await {
                    Ok(Ok(removed)) if !removed.is_empty() => tracing::warn!(?removed, "removed stale shared volume files"),
                    Ok(Err(e)) => tracing::warn!(dir = %dir.display(), error = %e, "could not sweep the shared volume folder"),
                    _ => {}
                }
            }
        });
    }

    let grace = config.shutdown_grace;
    let app = Arc::new(api::App::new(pipeline::Pipeline { clients, config: config.clone(), metrics }));
    let router = api::router(app.clone());
    tracing::info!(
        addr = %http.local_addr()?,
        admin = %admin_addr,
        policy = config.missing_model_policy.as_str(),
        discovery = config.upstream_discovery.as_str(),
        max_in_flight = config.max_in_flight,
        queue_depth = config.queue_depth,
        max_body_bytes = config.max_body_bytes,
        request_timeout_s = config.request_timeout.as_secs_f64(),
        shared_volume_dir = config.shared_volume_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "none (volumes streamed)".into()),
        "listening (REST: /predict, /predict_nifti, /health; admin: /live, /ready, /metrics)"
    );
    let server = axum::serve(http, router).with_graceful_shutdown(shutdown.wait());
    let grace_elapsed = {
        let s = shutdown.clone();
        async move {
            s.wait().await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => {
            r.context("serving HTTP")?;
            tracing::info!("drained");
        }
        _ = grace_elapsed => tracing::warn!(in_flight = app.in_flight(), grace_s = grace.as_secs_f64(), "shutdown grace elapsed; abandoning the studies in flight"),
    }
    admin_task.await.context("admin server task")?.context("admin server")?;
    let _ = poller.await;
    resolvers.join().await;
    Ok(())
}
