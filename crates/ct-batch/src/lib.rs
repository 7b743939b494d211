//! `ct-batch`: the batch client of the chest-CT triage gateway.
//!
//! Finds the studies of a folder (ZIP archives, or with `--dicom-tree` loose DICOM files grouped
//! by StudyInstanceUID), sends them to `POST /predict` with bounded concurrency and retries, and
//! writes one row per study to an XLSX or CSV file in the reference client's column order. See the
//! crate README for the behaviour and the deliberate differences from the reference scripts.
//!
//! - [`config`]: the command line ([`Args`]).
//! - [`client`]: health check, upload, retry policy.
//! - [`dicom_tree`]: walking, grouping and packing loose DICOM files.
//! - [`report`]: rows, columns, XLSX/CSV writers.
//! - [`summary`]: the closing summary.
//!
//! [`run`] is the whole program minus signal handling and the exit code.

pub mod client;
pub mod config;
pub mod dicom_tree;
pub mod report;
pub mod summary;

pub use config::Args;

use client::{Client, Endpoint, Outcome, Payload, RetryPolicy, Upload};
use dicom_tree::Study;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use report::{Col, Row};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use summary::Summary;
use tokio::sync::watch;

/// Why a run could not start or could not write its results.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("input folder {0} does not exist or is not a folder")]
    InputDir(PathBuf),
    #[error("cannot list {path}: {source}")]
    ListDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Output(#[from] report::OutputError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("the gateway at {url} is not healthy: {reason} (is the stack running? deploy/local/up starts it)")]
    Health { url: String, reason: String },
    #[error(transparent)]
    Tree(#[from] dicom_tree::TreeError),
    #[error("no {what} found in {dir}")]
    NoStudies { dir: PathBuf, what: &'static str },
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunReport {
    pub output: PathBuf,
    pub columns: &'static [Col],
    /// One row per study sent, in input order.
    pub rows: Vec<Row>,
    pub summary: Summary,
    /// `--dicom-tree`: what the walk skipped (`None` in archive mode).
    pub scan: Option<dicom_tree::Scan>,
    /// The run was interrupted (some studies were not sent or not finished).
    pub interrupted: bool,
}

/// One study to process.
#[derive(Debug, Clone)]
enum Job {
    Archive { path: PathBuf, endpoint: Endpoint },
    Tree(Study),
}

impl Job {
    fn label(&self) -> String {
        match self {
            Job::Archive { path, .. } => path.display().to_string(),
            Job::Tree(s) => format!("{} ({} files)", s.dir.display(), s.files.len()),
        }
    }
}

/// Runs the batch without interruption handling.
pub async fn run(args: &Args) -> Result<RunReport, BatchError> {
    let (_tx, rx) = watch::channel(0u32);
    run_with_interrupt(args, rx).await
}

/// Runs the batch. `interrupt` counts interrupt requests: at 1 no further study is started (the
/// ones in flight finish), at 2 the ones in flight are abandoned; the rows obtained so far are
/// written either way.
pub async fn run_with_interrupt(args: &Args, interrupt: watch::Receiver<u32>) -> Result<RunReport, BatchError> {
    let started = Instant::now();
    let input = std::path::absolute(&args.input_dir).unwrap_or_else(|_| args.input_dir.clone());
    if !input.is_dir() {
        return Err(BatchError::InputDir(args.input_dir.clone()));
    }
    let output = args.output_path();
    report::check_output(&output)?;
    let policy = RetryPolicy { retries: args.retries, backoff: Duration::from_millis(args.backoff_ms), max_backoff: Duration::from_secs(args.max_backoff_s) };
    let client = Client::new(&args.api_url, policy, args.timeout())?;
    client.health().await.map_err(|reason| BatchError::Health { url: client.base_url().to_string(), reason })?;

    let (jobs, scan, columns) = if args.dicom_tree {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dir = input.clone();
        let scan = tokio::task::spawn_blocking(move || dicom_tree::scan(&dir, threads)).await.expect("scan task panicked")?;
        let jobs: Vec<Job> = scan.studies.iter().cloned().map(Job::Tree).collect();
        (jobs, Some(scan), report::TREE_COLUMNS)
    } else {
        let jobs = find_archives(&input, args.recursive, args.nifti)?;
        (jobs, None, report::ARCHIVE_COLUMNS)
    };
    if jobs.is_empty() {
        let what = if args.dicom_tree {
            "DICOM study"
        } else if args.nifti {
            "*.zip / *.nii / *.nii.gz file"
        } else {
            "*.zip archive"
        };
        return Err(BatchError::NoStudies { dir: args.input_dir.clone(), what });
    }

    let pb = progress(args.quiet, jobs.len());
    if let Some(s) = &scan {
        say(&pb, args.quiet, &scan_line(s));
        for st in s.studies.iter().filter(|st| !st.conflicting_categories.is_empty()) {
            say(
                &pb,
                args.quiet,
                &format!("warning: study {} has files under different categories {:?}: ground_truth_category unknown", st.uid, st.conflicting_categories),
            );
        }
    }
    let n = jobs.len();
    let client = &client;
    let pb_ref = &pb;
    let quiet = args.quiet;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let done = &done;
    let stream = futures::stream::iter(jobs.into_iter().enumerate())
        .map(|(i, job)| {
            let irx = interrupt.clone();
            async move {
                if *irx.borrow() >= 1 {
                    return (i, None);
                }
                let row = process(client, &job, |attempt, why| {
                    say(pb_ref, quiet, &format!("retry {attempt} of {}: {why}", job.label()));
                })
                .await;
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                say(pb_ref, quiet, &study_line(k, n, &row));
                pb_ref.inc(1);
                (i, Some(row))
            }
        })
        .buffer_unordered(args.concurrency as usize);
    let mut stream = std::pin::pin!(stream);
    let mut results: Vec<Option<Row>> = vec![None; n];
    let mut irx = interrupt.clone();
    let mut watching = true;
    let mut interrupted = *irx.borrow() >= 1;
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some((i, row)) => results[i] = row,
                None => break,
            },
            changed = irx.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let level = *irx.borrow();
                interrupted = true;
                if level >= 2 {
                    say(&pb, false, "interrupted again: abandoning the studies in flight");
                    break;
                }
                say(&pb, false, "interrupted: no new study is sent; waiting for those in flight (interrupt again to abandon them)");
            }
        }
    }
    pb.finish_and_clear();
    let rows: Vec<Row> = results.into_iter().flatten().collect();
    let not_sent = n - rows.len();
    report::write(&output, columns, &rows)?;
    let summary = Summary::new(&rows, not_sent, started.elapsed().as_secs_f64());
    Ok(RunReport { output, columns, rows, summary, scan, interrupted: interrupted || not_sent > 0 })
}

/// Sends one study and turns the answer into its row.
async fn process(client: &Client, job: &Job, on_retry: impl FnMut(u32, &str)) -> Row {
    match job {
        Job::Archive { path, endpoint } => {
            let filename = upload_name(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let upload = Upload { endpoint: *endpoint, filename, payload: Payload::File(path.clone()) };
            let outcome = client.predict(&upload, on_retry).await;
            Row::from_outcome(path.display().to_string(), None, &outcome)
        }
        Job::Tree(study) => {
            let s = study.clone();
            let packed = tokio::task::spawn_blocking(move || dicom_tree::pack(&s)).await.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let outcome = match packed {
                Ok(bytes) => {
                    let upload = Upload { endpoint: Endpoint::Predict, filename: format!("{}.zip", study.uid), payload: Payload::Memory(bytes.into()) };
                    client.predict(&upload, on_retry).await
                }
                Err(e) => Outcome { transport_error: Some(format!("cannot read the study's files to pack them: {e}")), ..Default::default() },
            };
            let mut row = Row::from_outcome(study.dir.display().to_string(), Some(&study.uid), &outcome);
            row.ground_truth_category = Some(study.category.to_string());
            row.num_files = Some(study.files.len());
            row
        }
    }
}

/// The multipart file name: the file's name with its extension in lower case (`A.ZIP` -> `A.zip`),
/// since the reference API checks `.zip` / `.nii.gz` / `.nii` case-sensitively.
pub fn upload_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    for ext in [".nii.gz", ".zip", ".nii"] {
        if lower.ends_with(ext) {
            return format!("{}{ext}", &name[..name.len() - ext.len()]);
        }
    }
    name.to_string()
}

/// Archive mode: `*.zip` (and with `nifti` `*.nii`, `*.nii.gz`) in `dir`, extensions in any case,
/// hidden files skipped, sorted; subfolders only when `recursive`.
fn find_archives(dir: &Path, recursive: bool, nifti: bool) -> Result<Vec<Job>, BatchError> {
    let mut jobs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| BatchError::ListDir { path: d.clone(), source })?;
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            if name.starts_with('.') {
                continue;
            }
            let path = e.path();
            if path.is_dir() {
                if recursive && !e.file_type().is_ok_and(|t| t.is_symlink()) {
                    stack.push(path);
                }
                continue;
            }
            let endpoint = if name.ends_with(".zip") {
                Endpoint::Predict
            } else if nifti && (name.ends_with(".nii") || name.ends_with(".nii.gz")) {
                Endpoint::PredictNifti
            } else {
                continue;
            };
            if path.is_file() {
                jobs.push(Job::Archive { path, endpoint });
            }
        }
    }
    jobs.sort_by(|a, b| match (a, b) {
        (Job::Archive { path: x, .. }, Job::Archive { path: y, .. }) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    Ok(jobs)
}

fn progress(quiet: bool, n: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} studies, eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// A line above the bar (or on stderr when the bar is hidden, e.g. not a terminal).
fn say(pb: &ProgressBar, quiet: bool, line: &str) {
    if quiet {
        return;
    }
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn study_line(k: usize, n: usize, r: &Row) -> String {
    let t = r.time_of_processing.map_or(String::new(), |t| format!(" {t:.2} s"));
    if r.is_success() {
        let p = r.probability_of_pathology.unwrap_or(f64::NAN);
        format!("[{k}/{n}] Success{t} p={p:.3} {}", r.path_to_study)
    } else {
        format!("[{k}/{n}] Failure{t} {}: {} ({})", r.path_to_study, r.error, r.error_type)
    }
}

fn scan_line(s: &dicom_tree::Scan) -> String {
    let files: usize = s.studies.iter().map(|st| st.files.len()).sum();
    format!(
        "found {} studies in {files} DICOM files ({} files looked at; skipped: {} not DICOM, {} without StudyInstanceUID, {} by name)",
        s.studies.len(),
        s.files_seen,
        s.not_dicom,
        s.no_study_uid,
        s.skipped_by_name
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn upload_names() {
        use super::upload_name;
        assert_eq!(upload_name("A.ZIP"), "A.zip");
        assert_eq!(upload_name("Исследование.Zip"), "Исследование.zip");
        assert_eq!(upload_name("v.NII.GZ"), "v.nii.gz");
        assert_eq!(upload_name("v.Nii"), "v.nii");
        assert_eq!(upload_name("x.zip"), "x.zip");
    }
}
