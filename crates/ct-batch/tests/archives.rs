//! Archive mode against a fake gateway (tests/common): XLSX and CSV read back, retries, failures.

mod common;

use clap::Parser;
use common::{col, read_csv, read_xlsx};
use ct_batch::{Args, BatchError, run};
use std::path::Path;
use std::time::Instant;

const ARCHIVE_HEADER: [&str; 15] = [
    "path_to_study",
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "processing_status",
    "time_of_processing",
    "most_dangerous_pathology_type",
    "probability_of_pathology_thoracic",
    "pathology_thoracic",
    "error",
    "error_type",
    "request_id",
    "http_status",
    "attempts",
];

fn write(dir: &Path, name: &str, len: usize) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, vec![b'x'; len]).unwrap();
}

fn args(v: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("ct-batch").chain(v.iter().copied())).expect("args")
}

#[tokio::test]
async fn xlsx_rows_retries_and_failures() {
    let (addr, seen) = common::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(&input, "ok_pos.zip", 1000);
    write(&input, "ok_neg.ZIP", 2000); // upper-case extension (the reference's glob misses it)
    write(&input, "busy_x.zip", 3000);
    write(&input, "bad_y.zip", 4000);
    write(&input, ".hidden.zip", 10); // hidden: skipped
    write(&input, "notes.txt", 10);
    write(&input, "sub/ok_deep.zip", 10); // not recursive: skipped
    let out = tmp.path().join("results.xlsx");
    let url = format!("http://{addr}");
    let a = args(&[
        "--input-dir",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--api-url",
        &url,
        "--concurrency",
        "3",
        "--retries",
        "3",
        "--backoff-ms",
        "10",
        "--quiet",
    ]);
    let t0 = Instant::now();
    let report = run(&a).await.expect("run");
    let elapsed = t0.elapsed().as_secs_f64();

    // busy_x got 429 + Retry-After: 1 once; the client waited the full second (its own backoff
    // would have been 5-10 ms) and the second try succeeded.
    assert!(elapsed >= 0.95, "Retry-After not honoured: run took {elapsed} s");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.calls.get("busy_x.zip"), Some(&2));
        // The extension goes out in lower case (the reference API checks ".zip" case-sensitively).
        for f in ["ok_pos.zip", "ok_neg.zip", "bad_y.zip"] {
            assert_eq!(s.calls.get(f), Some(&1), "{f}");
        }
        assert_eq!(s.uploads.len(), 5, "hidden / non-zip / subfolder files must not be sent");
        assert!(s.uploads.iter().all(|u| u.endpoint == "/predict"));
    }
    assert_eq!((report.summary.total, report.summary.success, report.summary.failure), (4, 3, 1));
    assert_eq!((report.summary.retries, report.summary.throttled), (1, 1));
    assert_eq!(report.summary.by_error_type.get("lungs_not_found"), Some(&1));
    assert_eq!(report.summary.by_pathology.get(&1), Some(&1));
    assert_eq!(report.summary.by_pathology.get(&0), Some(&2));
    assert_eq!(report.summary.time_mean_s, Some(1.5));
    assert!(!report.interrupted);

    let rows = read_xlsx(&out);
    assert_eq!(rows[0], ARCHIVE_HEADER.map(String::from).to_vec(), "columns and order");
    assert_eq!(rows.len(), 5);
    let h = &rows[0];
    let get = |r: usize, c: &str| rows[r][col(h, c)].clone();
    // Input order: sorted paths.
    let names: Vec<String> = (1..5).map(|r| Path::new(&get(r, "path_to_study")).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["bad_y.zip", "busy_x.zip", "ok_neg.ZIP", "ok_pos.zip"]);
    for r in 1..5 {
        let p = get(r, "path_to_study");
        assert!(Path::new(&p).is_absolute() && p.starts_with(input.to_str().unwrap()), "{p}");
    }

    // bad_y: failure as the reference writes it (pathology Unknown), probability left empty.
    assert_eq!(get(1, "processing_status"), "Failure");
    assert_eq!(get(1, "pathology"), "Unknown");
    assert_eq!(get(1, "most_dangerous_pathology_type"), "Unknown");
    assert_eq!(get(1, "probability_of_pathology"), "");
    assert_eq!(get(1, "study_uid"), "");
    assert_eq!(get(1, "error"), "Lungs not found");
    assert_eq!(get(1, "error_type"), "lungs_not_found");
    assert_eq!(get(1, "http_status"), "422");
    assert_eq!(get(1, "time_of_processing"), "0.25");
    assert_eq!(get(1, "request_id"), "req-bad_y-1");

    // busy_x: success after one retry, with its own file's answer (the server reports the
    // length of the file it received).
    assert_eq!(get(2, "processing_status"), "Success");
    assert_eq!(get(2, "attempts"), "2");
    assert_eq!(get(2, "study_uid"), "uid-busy_x");
    assert_eq!(get(2, "series_uid"), "len-3000");
    assert_eq!(get(2, "request_id"), "req-busy_x-2");
    assert_eq!(get(2, "http_status"), "200");
    assert_eq!(get(2, "error"), "");

    // ok_neg: pathology 0, no top pathologies, no thoracic values.
    assert_eq!(get(3, "series_uid"), "len-2000");
    assert_eq!(get(3, "probability_of_pathology"), "0.25");
    assert_eq!(get(3, "pathology"), "0");
    assert_eq!(get(3, "most_dangerous_pathology_type"), "");
    assert_eq!(get(3, "probability_of_pathology_thoracic"), "");
    assert_eq!(get(3, "time_of_processing"), "1.5");

    // ok_pos: the reference's ", ".join(top_pathologies).
    assert_eq!(get(4, "series_uid"), "len-1000");
    assert_eq!(get(4, "probability_of_pathology"), "0.8125");
    assert_eq!(get(4, "pathology"), "1");
    assert_eq!(get(4, "most_dangerous_pathology_type"), "Cancer, Bronchiectasis, Cavitation");
    assert_eq!(get(4, "probability_of_pathology_thoracic"), "0.625");
    assert_eq!(get(4, "pathology_thoracic"), "1");
    assert_eq!(get(4, "attempts"), "1");

    // Numbers are numbers in the sheet (not text).
    use calamine::{Data, Reader, Xlsx, open_workbook};
    let mut wb: Xlsx<_> = open_workbook(&out).unwrap();
    let range = wb.worksheet_range("Sheet1").unwrap();
    assert_eq!(range.get_value((4, 3)), Some(&Data::Float(0.8125)));
    assert_eq!(range.get_value((4, 4)), Some(&Data::Float(1.0)));
    assert!(!tmp.path().join("results.xlsx.partial").exists());
}

#[tokio::test]
async fn csv_recursive_nifti_and_exhausted_retries() {
    let (addr, seen) = common::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(&input, "unavail_a.zip", 500);
    write(&input, "sub/ok_pos.zip", 600);
    write(&input, "vol.nii.gz", 700);
    write(&input, "raw.nii", 800);
    let out = tmp.path().join("results.csv");
    let url = format!("http://{addr}/");
    let a = args(&[
        "--input-dir",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--api-url",
        &url,
        "--recursive",
        "--nifti",
        "--retries",
        "2",
        "--backoff-ms",
        "1",
        "-q",
    ]);
    let report = run(&a).await.expect("run");
    assert_eq!((report.summary.success, report.summary.failure), (3, 1));

    let text = std::fs::read_to_string(&out).unwrap();
    let rows = read_csv(&text);
    assert_eq!(rows[0], ARCHIVE_HEADER.map(String::from).to_vec());
    assert_eq!(rows.len(), 5);
    let h = &rows[0];
    let get = |r: usize, c: &str| rows[r][col(h, c)].clone();
    let names: Vec<String> = (1..5).map(|r| get(r, "path_to_study").strip_prefix(input.to_str().unwrap()).unwrap().to_string()).collect();
    assert_eq!(names, ["/raw.nii", "/sub/ok_pos.zip", "/unavail_a.zip", "/vol.nii.gz"]);

    // NIfTI goes to /predict_nifti.
    assert_eq!(get(1, "study_uid"), "nifti_raw");
    assert_eq!(get(4, "study_uid"), "nifti_vol");
    // A quoted field with commas survives.
    assert_eq!(get(2, "most_dangerous_pathology_type"), "Cancer, Bronchiectasis, Cavitation");
    assert_eq!(get(2, "probability_of_pathology"), "0.8125");
    // 503 on every try: 1 + 2 retries, then the failure row.
    assert_eq!(get(3, "processing_status"), "Failure");
    assert_eq!(get(3, "attempts"), "3");
    assert_eq!(get(3, "http_status"), "503");
    assert_eq!(get(3, "error_type"), "upstream_unavailable");
    assert_eq!(get(3, "pathology"), "Unknown");

    let s = seen.lock().unwrap();
    assert_eq!(s.calls.get("unavail_a.zip"), Some(&3));
    let nifti: Vec<&str> = s.uploads.iter().filter(|u| u.endpoint == "/predict_nifti").map(|u| u.filename.as_str()).collect();
    assert_eq!(nifti.len(), 2);
}

#[tokio::test]
async fn refuses_to_start_without_a_healthy_gateway() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a.zip", 10);
    let out = tmp.path().join("r.xlsx");
    let url = format!("http://127.0.0.1:{port}");
    let a = args(&["--input-dir", tmp.path().to_str().unwrap(), "--output", out.to_str().unwrap(), "--api-url", &url, "-q"]);
    let err = run(&a).await.expect_err("must fail");
    assert!(matches!(err, BatchError::Health { .. }), "{err}");
    assert!(!out.exists());

    // Bad output name and missing input folder fail before any request.
    let a = args(&["--input-dir", tmp.path().to_str().unwrap(), "--output", "r.xls", "--api-url", &url]);
    assert!(matches!(run(&a).await, Err(BatchError::Output(_))));
    let a = args(&["--input-dir", "/no/such/dir", "--api-url", &url]);
    assert!(matches!(run(&a).await, Err(BatchError::InputDir(_))));
}

#[tokio::test]
async fn empty_folder_is_an_error() {
    let (addr, _) = common::start().await;
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a.txt", 10);
    let url = format!("http://{addr}");
    let out = tmp.path().join("r.csv");
    let a = args(&["--input-dir", tmp.path().to_str().unwrap(), "--output", out.to_str().unwrap(), "--api-url", &url, "-q"]);
    assert!(matches!(run(&a).await, Err(BatchError::NoStudies { .. })));
}
