//! `ct-batch`: see the crate README. Exit code: 0 every study succeeded; 2 the results file was
//! written but some studies failed; 130 interrupted (partial results written); 1 nothing could be
//! done (bad arguments, gateway not healthy, no study found, output not writable).

use clap::Parser;
use ct_batch::{Args, run_with_interrupt};
use std::process::ExitCode;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            tx.send_modify(|n| *n += 1);
        }
    });
    match run_with_interrupt(&args, rx).await {
        Ok(report) => {
            println!("{}", report.summary);
            println!("results: {} ({} rows)", report.output.display(), report.rows.len());
            if report.interrupted {
                ExitCode::from(130)
            } else if report.summary.failure > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ct-batch: {e}");
            ExitCode::from(1)
        }
    }
}
