//! Command line (every flag also reads a `CT_BATCH_*` environment variable).

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Sends every study of a folder to the triage gateway and writes one row per study to an XLSX
/// (or CSV) file, like the reference's `batch_inference_client.py` (archive mode) and
/// `prepare_and_run_inference.py` (`--dicom-tree`).
#[derive(Debug, Clone, Parser)]
#[command(name = "ct-batch", version)]
pub struct Args {
    /// Folder with the studies: `*.zip` archives directly inside it (see --recursive, --nifti), or,
    /// with --dicom-tree, a folder tree of loose DICOM files.
    #[arg(long, env = "CT_BATCH_INPUT_DIR")]
    pub input_dir: PathBuf,

    /// Results file; `.csv` writes CSV, `.xlsx` writes XLSX. Default: `results_YYYYmmdd_HHMMSS.xlsx`
    /// (UTC time) in the current folder.
    #[arg(long, env = "CT_BATCH_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Base URL of the gateway (plain HTTP).
    #[arg(long, env = "CT_BATCH_API_URL", default_value = "http://127.0.0.1:8000")]
    pub api_url: String,

    /// Studies sent at once. The gateway answers 429 beyond its own limit; those are retried.
    #[arg(long, env = "CT_BATCH_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Retries of one study after HTTP 429, HTTP 503 or a connection error (0: none).
    #[arg(long, env = "CT_BATCH_RETRIES", default_value_t = 5)]
    pub retries: u32,

    /// Wait before the first retry in milliseconds, doubled on each further retry (with jitter,
    /// capped by --max-backoff-s). A Retry-After header from the gateway takes precedence.
    #[arg(long, env = "CT_BATCH_BACKOFF_MS", default_value_t = 1000)]
    pub backoff_ms: u64,

    /// Longest wait between two tries of a study, in seconds (also caps Retry-After).
    #[arg(long, env = "CT_BATCH_MAX_BACKOFF_S", default_value_t = 60)]
    pub max_backoff_s: u64,

    /// Time limit of one request (upload, processing and answer), in seconds; a study that runs
    /// over it is a failure ("Request timeout") and is not retried.
    #[arg(long, env = "CT_BATCH_TIMEOUT_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,

    /// Treat --input-dir as a folder tree of loose DICOM files: group them by StudyInstanceUID,
    /// pack each study into a ZIP in memory, send it, and add the `ground_truth_category` and
    /// `num_files` columns (the reference's prepare_and_run_inference.py).
    #[arg(long, alias = "from-dicom-tree", env = "CT_BATCH_DICOM_TREE")]
    pub dicom_tree: bool,

    /// Archive mode: also look for archives in subfolders.
    #[arg(long, env = "CT_BATCH_RECURSIVE", conflicts_with = "dicom_tree")]
    pub recursive: bool,

    /// Archive mode: also send `.nii` / `.nii.gz` volumes (to `/predict_nifti`).
    #[arg(long, env = "CT_BATCH_NIFTI", conflicts_with = "dicom_tree")]
    pub nifti: bool,

    /// No progress bar and no line per study; the summary is still printed.
    #[arg(long, short, env = "CT_BATCH_QUIET")]
    pub quiet: bool,
}

impl Args {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// The output path: the given one, else `results_YYYYmmdd_HHMMSS.xlsx` (UTC) in the current folder.
    pub fn output_path(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| PathBuf::from(format!("results_{}.xlsx", utc_stamp(std::time::SystemTime::now()))))
    }
}

/// `YYYYmmdd_HHMMSS` in UTC (no time-zone database needed).
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}{m:02}{d:02}_{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101_000000");
        // 2000-02-29 12:34:56 UTC (leap day) and 2026-11-30 01:02:03 UTC.
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(951_827_696)), "20000229_123456");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(1_796_000_523)), "20261130_010203");
    }

    #[test]
    fn defaults_and_ranges() {
        let a = Args::try_parse_from(["ct-batch", "--input-dir", "x"]).unwrap();
        assert_eq!(a.api_url, "http://127.0.0.1:8000");
        assert_eq!((a.concurrency, a.retries, a.timeout_s), (2, 5, 600));
        assert!(!a.dicom_tree);
        let out = a.output_path();
        let name = out.to_str().unwrap();
        assert!(name.starts_with("results_") && name.ends_with(".xlsx") && name.len() == "results_20260101_000000.xlsx".len());
        assert!(Args::try_parse_from(["ct-batch", "--input-dir", "x", "--concurrency", "0"]).is_err());
        assert!(Args::try_parse_from(["ct-batch"]).is_err());
        let t = Args::try_parse_from(["ct-batch", "--input-dir", "x", "--from-dicom-tree"]).unwrap();
        assert!(t.dicom_tree);
        assert!(Args::try_parse_from(["ct-batch", "--input-dir", "x", "--dicom-tree", "--nifti"]).is_err());
    }
}
