//! The batch client against the real stack: a folder of archives and a tree of loose DICOM
//! files in, an XLSX out, read back with calamine.

use calamine::{Data, Reader, Xlsx, open_workbook};
use clap::Parser;
use e2e::fixtures::{read, study, study_uid, study_zip, testdata};
use e2e::stack;
use std::path::Path;

/// The sheet as strings (numbers formatted with `{}`).
fn sheet(path: &Path) -> Vec<Vec<String>> {
    let mut wb: Xlsx<_> = open_workbook(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let first = wb.sheet_names().first().cloned().expect("a sheet");
    let range = wb.worksheet_range(&first).expect("sheet range");
    range
        .rows()
        .map(|r| {
            r.iter()
                .map(|c| match c {
                    Data::Empty => String::new(),
                    Data::String(s) => s.clone(),
                    Data::Float(f) => f.to_string(),
                    Data::Int(i) => i.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect()
}

/// `rows[r][column named name]`.
fn cell<'a>(rows: &'a [Vec<String>], r: usize, name: &str) -> &'a str {
    let c = rows[0].iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]));
    &rows[r][c]
}

/// The row whose path_to_study contains `needle`.
fn row_of(rows: &[Vec<String>], needle: &str) -> usize {
    (1..rows.len()).find(|&r| cell(rows, r, "path_to_study").contains(needle)).unwrap_or_else(|| panic!("no row for {needle}: {rows:?}"))
}

fn args(input: &Path, output: &Path, api: std::net::SocketAddr, extra: &[&str]) -> ct_batch::config::Args {
    let mut a: Vec<String> = ["ct-batch", "--input-dir", &input.display().to_string(), "--output", &output.display().to_string(), "--api-url", &format!("http://{api}"), "--quiet", "--concurrency", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    ct_batch::config::Args::try_parse_from(a).expect("batch arguments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_client_writes_the_reference_xlsx() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("studies");
    std::fs::create_dir(&input).expect("mkdir");
    std::fs::write(input.join("normal.zip"), study_zip("chest_normal")).expect("write");
    std::fs::write(input.join("abnormal.zip"), study_zip("chest_abnormal")).expect("write");
    std::fs::write(input.join("phantom.zip"), read(&testdata("series/dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip"))).expect("write");
    std::fs::write(input.join("garbage.zip"), b"not a zip").expect("write");
    let out = tmp.path().join("results.xlsx");
    ct_batch::run(&args(&input, &out, gw.addr, &[])).await.expect("batch run");

    let rows = sheet(&out);
    assert_eq!(
        &rows[0][..11],
        [
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
            "error"
        ],
        "the reference's columns, in order"
    );
    assert_eq!(rows.len(), 5, "a header and one row per study: {rows:?}");
    for (needle, name, pathology) in [("abnormal.zip", "chest_abnormal", "1"), ("/normal.zip", "chest_normal", "0")] {
        let r = row_of(&rows, needle);
        assert_eq!(cell(&rows, r, "processing_status"), "Success", "{:?}", rows[r]);
        assert_eq!(cell(&rows, r, "study_uid"), study_uid(name));
        assert_eq!(cell(&rows, r, "pathology"), pathology, "{:?}", rows[r]);
        let p: f64 = cell(&rows, r, "probability_of_pathology").parse().expect("a probability");
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(cell(&rows, r, "error"), "");
    }
    for (needle, error_type) in [("phantom.zip", "unprocessable"), ("garbage.zip", "bad_request")] {
        let r = row_of(&rows, needle);
        assert_eq!(cell(&rows, r, "processing_status"), "Failure", "{:?}", rows[r]);
        assert!(!cell(&rows, r, "error").is_empty(), "{:?}", rows[r]);
        assert_eq!(cell(&rows, r, "error_type"), error_type, "{:?}", rows[r]);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_client_packs_a_dicom_tree_per_study() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("tree");
    // loose DICOM files: the committed studies unpacked under category folders
    for (name, folder) in [("chest_normal", "normal/patient_a"), ("chest_abnormal", "pneumonia/patient_b")] {
        let dir = input.join(folder);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut zip = zip::ZipArchive::new(std::fs::File::open(study(name)).expect("open study")).expect("zip");
        zip.extract(&dir).expect("unzip");
    }
    let out = tmp.path().join("tree.xlsx");
    ct_batch::run(&args(&input, &out, gw.addr, &["--dicom-tree"])).await.expect("batch run");
    let rows = sheet(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (needle, name, category, pathology) in [("patient_a", "chest_normal", "norma", "0"), ("patient_b", "chest_abnormal", "pneumonia", "1")] {
        let r = row_of(&rows, needle);
        assert_eq!(cell(&rows, r, "processing_status"), "Success", "{:?}", rows[r]);
        assert_eq!(cell(&rows, r, "study_uid"), study_uid(name));
        assert_eq!(cell(&rows, r, "ground_truth_category"), category);
        assert_eq!(cell(&rows, r, "num_files"), "64");
        assert_eq!(cell(&rows, r, "pathology"), pathology, "{:?}", rows[r]);
    }
    gw.stop().await;
}
