//! `preprocess-svc`: the gRPC service (`serve`) and a CLI for people and tests (`inspect`, `tensor`).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use preprocess_svc::service::Preprocessor;
use preprocess_svc::{PrepError, PrepareConfig, Prepared, prepare_path};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse (see `ct_service::alloc`): every slice decode allocates
/// and frees buffers of hundreds of KB, which glibc's malloc hands back to the kernel (mmap/munmap,
/// page faults and page zeroing on every file); with mimalloc that system time is about halved.
#[global_allocator]
static ALLOCATOR: ct_service::alloc::Allocator = ct_service::alloc::Allocator;

#[derive(Parser)]
#[command(version, about = "Chest-CT study (ZIP/folder of DICOM, .nii, .nii.gz) -> canonical HU volume + lung mask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC PreprocessService (with grpc.health.v1 and reflection).
    Serve(ServeArgs),
    /// Print what the study contains and which series would be used, as one JSON object.
    Inspect {
        input: PathBuf,
        #[command(flatten)]
        cfg: PrepareConfig,
    },
    /// Write a model input tensor as .npy.
    Tensor {
        #[arg(long, value_enum)]
        recipe: Recipe,
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        cfg: PrepareConfig,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Recipe {
    /// CT-CLIP / supervised / diffusion input: float32 [1, 240, 480, 480].
    Ctclip,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the gRPC server.
    #[arg(long, env = "CT_PREPROCESS_ADDR", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Admin HTTP address: /live, /ready, /metrics.
    #[arg(long, env = "CT_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    admin_addr: SocketAddr,
    /// Studies prepared at the same time (each holds its archive and volume in memory).
    #[arg(long, env = "CT_PREPROCESS_CONCURRENCY", default_value_t = 2)]
    max_concurrent: usize,
    /// One-machine mode: a folder (tmpfs) shared with the gateway and the model services. Callers
    /// that ask for it get each volume as a file there instead of a gRPC chunk stream (unset:
    /// always streamed).
    #[arg(long, env = "CT_SHARED_VOLUME_DIR")]
    shared_volume_dir: Option<PathBuf>,
    #[command(flatten)]
    cfg: PrepareConfig,
}

fn main() -> ExitCode {
    ct_service::alloc::configure();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            ct_service::init_tracing();
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        // the CLI validates the lungs but prints no mask: it is never materialised (78 MB for 300 slices)
        Command::Inspect { input, cfg } => report(prepare_path(&input, &PrepareConfig { omit_lung_mask: true, ..cfg }).map(|p| inspect_json(&p))),
        Command::Tensor { recipe: Recipe::Ctclip, input, out, cfg } => report(prepare_path(&input, &PrepareConfig { omit_lung_mask: true, ..cfg }).and_then(|p| {
            // streamed in blocks of 24 planes (22 MB): the 221 MB tensor is never held whole
            let io_err = |e: std::io::Error| PrepError::Internal(format!("write {}: {e}", out.display()));
            let f = std::fs::File::create(&out).map_err(io_err)?;
            let mut npy = ct_volume::npy::NpyWriter::new(std::io::BufWriter::with_capacity(1 << 20, f), &ct_volume::CTCLIP_SHAPE).map_err(io_err)?;
            ct_volume::ctclip_tensor_blocks(&p.volume, 24, |block| npy.write(block)).map_err(|e| match e {
                ct_volume::CtclipBlocksError::Recipe(e) => PrepError::from(e),
                ct_volume::CtclipBlocksError::Sink(e) => io_err(e),
            })?;
            npy.finish().map_err(io_err)?;
            let mut j = inspect_json(&p);
            j["tensor"] = json!({"recipe": "ctclip", "shape": ct_volume::CTCLIP_SHAPE, "out": out});
            Ok(j)
        })),
    }
}

/// Prints one JSON object; failures exit with code 2 and `{"error_type", "error"}`.
fn report(r: Result<serde_json::Value, PrepError>) -> ExitCode {
    match r {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({"error_type": e.error_type(), "error": e.to_string()}));
            ExitCode::from(2)
        }
    }
}

fn inspect_json(p: &Prepared) -> serde_json::Value {
    let m = &p.meta;
    let dims = p.volume.dims();
    json!({
        "study_uid": m.study_uid,
        "series_uid": m.series_uid,
        "shape": dims,
        "spacing_mm": p.volume.geometry().spacing_mm,
        "n_slices": dims[2],
        "kernel": m.kernel,
        "modality": m.modality,
        "selection": m.selection.map_or("nifti".to_string(), |s| serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
        "selection_reason": m.selection_reason,
        "voxel_type": match p.volume.voxels() { ct_volume::VoxelView::I16(_) => "int16", ct_volume::VoxelView::F32(_) => "float32" },
        "lung_validation": m.lung,
        "n_source_files": m.n_source_files,
        "warnings": m.warnings,
        "timings_ms": m.timings_ms.iter().map(|(k, v)| (k.clone(), json!((v * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
    })
}


fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let admin = tokio::net::TcpListener::bind(args.admin_addr).await.with_context(|| format!("binding admin {}", args.admin_addr))?;
        if let Some(dir) = &args.shared_volume_dir {
            anyhow::ensure!(dir.is_dir(), "--shared-volume-dir {} is not a folder", dir.display());
        }
        tracing::info!(version = env!("CARGO_PKG_VERSION"), shared_volume_dir = ?args.shared_volume_dir, "preprocess-svc starting");
        let svc = Preprocessor::new(args.cfg, args.max_concurrent).with_shared_dir(args.shared_volume_dir);
        preprocess_svc::service::run(listener, Some(admin), svc, ct_service::Shutdown::on_signals()).await
    })
}

