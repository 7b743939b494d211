//! The command line every model service binary shares: `serve`, `info`, `predict`.

use crate::adapter::{Adapter, Study};
use crate::engine::EngineConfig;
use crate::server::{Model, ServerConfig, Service};
use anyhow::Context;
use clap::{Parser, Subcommand};
use ct_prep::{PrepareConfig, prepare_path};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ct.v1.ModelService over gRPC (+ grpc.health.v1, reflection) and the admin HTTP port.
    Serve(ServeArgs),
    /// Load the bundle (hashes, manifest vs graph, warm-up) and print the model info as JSON.
    Info {
        /// Model bundle directory (manifest.toml + model.onnx).
        #[arg(long, env = "CT_BUNDLE")]
        bundle: PathBuf,
        #[command(flatten)]
        engine: EngineConfig,
    },
    /// Preprocess one study in-process and print {label: value} as one JSON object.
    Predict {
        /// Model bundle directory (manifest.toml + model.onnx).
        #[arg(long, env = "CT_BUNDLE")]
        bundle: PathBuf,
        /// A .zip of DICOM, a DICOM folder or file, a .nii or .nii.gz.
        input: PathBuf,
        #[command(flatten)]
        engine: EngineConfig,
        #[command(flatten)]
        prepare: PrepareConfig,
        /// Inference batch size for adapters that batch (diffusion); default: the manifest's.
        #[arg(long, env = "CT_BATCH_SIZE")]
        batch_size: Option<usize>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Model bundle directory (manifest.toml + model.onnx).
    #[arg(long, env = "CT_BUNDLE")]
    bundle: PathBuf,
    /// gRPC address (default 127.0.0.1:<the service's port>).
    #[arg(long, env = "CT_GRPC_ADDR")]
    addr: Option<SocketAddr>,
    /// Admin HTTP address for /live, /ready and /metrics (default 127.0.0.1:<9100 + service number>).
    #[arg(long, env = "CT_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    #[command(flatten)]
    engine: EngineConfig,
    #[command(flatten)]
    server: ServerConfig,
}

/// The `main` of a model service binary.
pub fn main<A: Adapter>() -> ExitCode {
    ct_service::alloc::configure();
    ct_service::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::<A>(args),
        Command::Info { bundle, engine } => info::<A>(bundle, engine),
        Command::Predict { bundle, input, engine, prepare, batch_size } => predict::<A>(bundle, input, engine, prepare, batch_size),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", A::KIND);
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

fn info<A: Adapter>(bundle: PathBuf, engine: EngineConfig) -> anyhow::Result<()> {
    let model = Model::<A>::load(&bundle, &engine, ServerConfig::default()).with_context(|| format!("loading bundle {}", bundle.display()))?;
    let i = model.info();
    let json = serde_json::json!({
        "name": i.name,
        "version": i.version,
        "demo": model.bundle().manifest.model.demo,
        "onnx_sha256": i.onnx_sha256,
        "execution_providers": i.execution_providers,
        "inputs": i.inputs.iter().map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect::<Vec<_>>(),
        "outputs": i.outputs.iter().map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect::<Vec<_>>(),
        "labels": i.labels,
        "feature_prefix": i.feature_prefix,
        "recipe": i.recipe,
        "warmup_ms": model.warmup().as_secs_f64() * 1e3,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    model.close();
    Ok(())
}

fn predict<A: Adapter>(bundle: PathBuf, input: PathBuf, engine: EngineConfig, prepare: PrepareConfig, batch_size: Option<usize>) -> anyhow::Result<()> {
    let config = ServerConfig { batch_size, ..ServerConfig::default() };
    let model = Model::<A>::load(&bundle, &engine, config).with_context(|| format!("loading bundle {}", bundle.display()))?;
    let prepared = prepare_path(&input, &prepare).map_err(|e| anyhow::anyhow!("{} ({})", e, e.error_type())).with_context(|| format!("preprocessing {}", input.display()))?;
    let preprocess_ms: f64 = prepared.meta.timings_ms.iter().map(|(_, v)| v).sum();
    let study = Study { uid: prepared.meta.study_uid.clone(), volume: prepared.volume, lung_mask: prepared.lung_mask.map(Into::into) };
    let (values, timings) = runtime()?.block_on(model.predict(study)).map_err(|e| anyhow::anyhow!("{} ({})", e, e.error_type()))?;
    tracing::info!(preprocess_ms, timings_ms = %serde_json::to_string(&timings)?, "predicted");
    let mut out = serde_json::Map::new();
    for (label, v) in values {
        out.insert(label, serde_json::json!(v));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    model.close();
    Ok(())
}

fn serve<A: Adapter>(args: ServeArgs) -> anyhow::Result<()> {
    let addr = args.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], A::DEFAULT_PORT)));
    let admin_addr = args.admin_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100 + A::DEFAULT_PORT.saturating_sub(50050))));
    tracing::info!(model = A::KIND, version = env!("CARGO_PKG_VERSION"), bundle = %args.bundle.display(), "starting");
    let rt = runtime()?;
    rt.block_on(async move {
        // bind first so that a port conflict is reported before the (slow) model load
        let grpc = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding gRPC {addr}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr).await.with_context(|| format!("binding admin {admin_addr}"))?;
        let shutdown = ct_service::Shutdown::on_signals();
        let bundle = args.bundle.clone();
        let (engine, server) = (args.engine.clone(), args.server.clone());
        let model = tokio::task::spawn_blocking(move || Model::<A>::load(&bundle, &engine, server))
            .await?
            .with_context(|| format!("loading bundle {}", args.bundle.display()))?;
        tracing::info!(grpc = %grpc.local_addr()?, admin = %admin.local_addr()?, "ready");
        run(model, grpc, admin, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Starts a complete model service (gRPC + admin) on already-bound listeners; for tests and
/// embedding. Returns when `shutdown` is triggered.
pub async fn run<A: Adapter>(model: std::sync::Arc<Model<A>>, grpc: tokio::net::TcpListener, admin: tokio::net::TcpListener, shutdown: ct_service::Shutdown) -> anyhow::Result<()> {
    let ready = ct_service::Readiness::default();
    let (reporter, router) = ct_service::grpc_router()?;
    let admin_task = tokio::spawn(ct_service::serve_admin(admin, ct_service::admin_router(ready.clone(), model.metrics().registry.clone()), shutdown.wait()));
    let router = router.add_service(Service::new(model.clone()).into_server());
    reporter.set_serving::<ct_proto::v1::model_service_server::ModelServiceServer<Service<A>>>().await;
    ready.set(true);
    ct_service::serve_grpc(grpc, router, shutdown.wait()).await?;
    model.close();
    admin_task.await??;
    Ok(())
}
