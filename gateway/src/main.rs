//! `gateway`: the REST gateway (`serve`, the default command) and `openapi` (prints the
//! OpenAPI document).

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::Config;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "REST gateway of the chest-CT triage stack (reference-compatible /predict API)",
    after_help = "Without a command, `serve` runs (e.g. `gateway`, or only CT_* variables in a container)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the admin port (default).
    Serve(Box<Config>),
    /// Print the OpenAPI 3 document of the REST API.
    Openapi,
}

/// The command line with `serve` inserted when no command is named.
fn args_with_default_command() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let named = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| matches!(a, "serve" | "openapi" | "help" | "-h" | "--help" | "-V" | "--version"));
    if !named {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

/// mimalloc, keeping freed memory for the next study: see `ct_service::alloc`.
#[global_allocator]
static ALLOCATOR: ct_service::alloc::Allocator = ct_service::alloc::Allocator;

fn main() -> ExitCode {
    ct_service::alloc::configure();
    let cli = Cli::parse_from(args_with_default_command());
    match cli.command {
        Command::Openapi => {
            println!("{}", gateway::api::OPENAPI.trim_end());
            ExitCode::SUCCESS
        }
        Command::Serve(config) => {
            ct_service::init_tracing();
            if let Err(e) = config.validate() {
                eprintln!("gateway: invalid configuration: {e}");
                return ExitCode::from(2);
            }
            match serve(*config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "gateway starting");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    let r = rt.block_on(async move {
        let http = tokio::net::TcpListener::bind(config.addr).await.with_context(|| format!("binding the REST address {}", config.addr))?;
        let admin = tokio::net::TcpListener::bind(config.admin_addr).await.with_context(|| format!("binding the admin address {}", config.admin_addr))?;
        let shutdown = ct_service::Shutdown::on_signals();
        gateway::run(config, http, admin, shutdown).await
    });
    // background connection tasks of the upstream channels are not waited for
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    r?;
    tracing::info!("stopped");
    Ok(())
}
