//! `--dicom-tree` on a folder built from the committed study fixtures: grouping by
//! StudyInstanceUID, `num_files`, `ground_truth_category`, archive contents, XLSX read back.

mod common;

use clap::Parser;
use common::{col, dicom_study_uid, read_xlsx};
use ct_batch::{Args, run};
use std::io::Read;
use std::path::{Path, PathBuf};

const TREE_HEADER: [&str; 17] = [
    "path_to_study",
    "ground_truth_category",
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "most_dangerous_pathology_type",
    "processing_status",
    "time_of_processing",
    "num_files",
    "probability_of_pathology_thoracic",
    "pathology_thoracic",
    "error",
    "error_type",
    "request_id",
    "http_status",
    "attempts",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/studies").join(name)
}

/// The entries of a fixture ZIP, sorted by name: (base name, bytes).
fn unzip(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).expect("fixture")).expect("zip");
    let mut v: Vec<(String, Vec<u8>)> = (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().unwrap().rsplit('/').next().unwrap().to_string(), b)
        })
        .collect();
    v.sort();
    v
}

/// The data set of a Part 10 file without preamble and file meta group (explicit VR little endian
/// meta: (0002,0000) UL gives the length of the rest of the group).
fn without_meta(b: &[u8]) -> Vec<u8> {
    assert_eq!(&b[128..132], b"DICM");
    assert_eq!(&b[132..138], &[2, 0, 0, 0, b'U', b'L']);
    let group_len = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
    let data = b[144 + group_len..].to_vec();
    assert_eq!(data[0..2], [8, 0], "data set starts with group 0008");
    data
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn groups_loose_dicom_by_study() {
    let normal = unzip(&fixture("chest_normal.zip"));
    let abnormal = unzip(&fixture("chest_abnormal.zip"));
    assert_eq!((normal.len(), abnormal.len()), (64, 64));
    let normal_uid = dicom_study_uid(&normal[0].1).unwrap();
    let abnormal_uid = dicom_study_uid(&abnormal[0].1).unwrap();
    assert_ne!(normal_uid, abnormal_uid);

    // The input folder's own name contains "normal" and "abnormal": the reference's whole-path
    // substring test would make every study "norma"; here only the path below it counts.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("normal_and_abnormal_cases");
    // Study 1 (normal) split over two folders whose files have the SAME base names (the
    // reference's flat archive names would keep only 32 of the 64).
    let p1 = root.join("Normal").join("patient1");
    for (i, (_, b)) in normal.iter().enumerate() {
        let (dir, k) = if i < 32 { ("series_a", i) } else { ("series_b", i - 32) };
        put(&p1.join(dir).join(format!("IM{:05}", k + 1)), b);
    }
    // One file of it without the 128-byte preamble ("DICM" at offset 0): still part of the study.
    let no_preamble = p1.join("series_a").join("IM00005");
    let b = std::fs::read(&no_preamble).unwrap();
    assert_eq!(&b[128..132], b"DICM");
    std::fs::write(&no_preamble, &b[128..]).unwrap();
    // Study 2 (abnormal) in a pneumonia folder, original names; one file as a bare data set
    // (no preamble, no file meta), which the gateway also reads.
    let p2 = root.join("pneumonia").join("p2");
    for (name, b) in &abnormal {
        put(&p2.join(name), b);
    }
    let bare = without_meta(&abnormal[9].1);
    std::fs::write(p2.join(&abnormal[9].0), &bare).unwrap();
    // Noise: skipped by name, not DICOM.
    put(&p2.join("README.txt"), b"notes");
    put(&p2.join(".DS_Store"), b"junk");
    put(&root.join("junk").join("notes.bin"), b"definitely not DICOM, long enough to be read past the prefix ...................................................................................................");

    let (addr, seen) = common::start().await;
    let out = tmp.path().join("tree.xlsx");
    let url = format!("http://{addr}");
    let a =
        Args::try_parse_from(["ct-batch", "--input-dir", root.to_str().unwrap(), "--output", out.to_str().unwrap(), "--api-url", &url, "--dicom-tree", "-q"])
            .unwrap();
    let report = run(&a).await.expect("run");

    let scan = report.scan.as_ref().expect("scan");
    assert_eq!(scan.studies.len(), 2);
    assert_eq!((scan.not_dicom, scan.no_study_uid, scan.skipped_by_name), (1, 0, 2));
    assert_eq!(scan.files_seen, 129);

    // What was sent: one ZIP per study with every file once, under unique relative names.
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.uploads.len(), 2);
        for u in &s.uploads {
            assert_eq!(u.entries.len(), 64, "{}", u.filename);
            let mut names: Vec<&str> = u.entries.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), 64, "entry names must be unique");
            assert!(names.iter().all(|n| !n.starts_with('/') && !n.contains("..")));
            let uids: Vec<String> = u.entries.iter().filter(|(_, b)| *b != bare).map(|(_, b)| dicom_study_uid(b).expect("entry is DICOM")).collect();
            assert!(uids.iter().all(|x| *x == uids[0]), "one study per archive");
            assert_eq!(u.filename, format!("{}.zip", uids[0]));
        }
        let up1 = s.uploads.iter().find(|u| u.filename.starts_with(&normal_uid)).unwrap();
        let (_, sent) = up1.entries.iter().find(|(n, _)| n == "series_b/IM00001").expect("series_b/IM00001");
        assert_eq!(sent, &normal[32].1, "bytes are packed unchanged");
        let (_, sent) = up1.entries.iter().find(|(n, _)| n == "series_a/IM00005").unwrap();
        assert_eq!(sent, &normal[4].1[128..]);
        let up2 = s.uploads.iter().find(|u| u.filename.starts_with(&abnormal_uid)).unwrap();
        assert!(up2.entries.iter().any(|(n, b)| *n == abnormal[9].0 && *b == bare), "the bare data set is packed");
    }

    let rows = read_xlsx(&out);
    assert_eq!(rows[0], TREE_HEADER.map(String::from).to_vec(), "columns and order");
    assert_eq!(rows.len(), 3);
    let h = &rows[0];
    let get = |r: usize, c: &str| rows[r][col(h, c)].clone();
    assert_eq!(get(1, "path_to_study"), p1.to_str().unwrap());
    assert_eq!(get(1, "ground_truth_category"), "norma");
    assert_eq!(get(1, "study_uid"), normal_uid);
    assert_eq!(get(1, "num_files"), "64");
    assert_eq!(get(1, "processing_status"), "Success");
    assert_eq!(get(2, "path_to_study"), p2.to_str().unwrap());
    assert_eq!(get(2, "ground_truth_category"), "pneumonia");
    assert_eq!(get(2, "study_uid"), abnormal_uid);
    assert_eq!(get(2, "num_files"), "64");
    assert_eq!(report.summary.by_category.get("norma"), Some(&(1, 1, 0)));
    assert_eq!(report.summary.by_category.get("pneumonia"), Some(&(1, 1, 0)));
}

#[tokio::test]
async fn failures_keep_the_known_study_uid() {
    // A study the gateway refuses (the fake refuses archives with an entry named bad_*): the row
    // still names the study, its category and its file count (reference §6.2), in CSV too.
    let normal = unzip(&fixture("chest_normal.zip"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    for (name, b) in normal.iter().take(3) {
        put(&root.join("pneumothorax").join(format!("bad_{name}")), b);
    }
    let uid = dicom_study_uid(&normal[0].1).unwrap();
    let (addr, _) = common::start().await;
    let out = tmp.path().join("r.csv");
    let url = format!("http://{addr}");
    let a = Args::try_parse_from([
        "ct-batch",
        "--input-dir",
        root.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--api-url",
        &url,
        "--from-dicom-tree",
        "-q",
    ])
    .unwrap();
    let report = run(&a).await.expect("run");
    assert_eq!(report.rows.len(), 1);
    let r = &report.rows[0];
    assert_eq!((r.ground_truth_category.as_deref(), r.num_files, r.study_uid.as_str()), (Some("pneumotorax"), Some(3), uid.as_str()));
    assert_eq!((r.processing_status.as_str(), r.error_type.as_str()), ("Failure", "lungs_not_found"));
    let rows = common::read_csv(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(rows[0], TREE_HEADER.map(String::from).to_vec());
    let h = &rows[0];
    assert_eq!(rows[1][col(h, "num_files")], "3");
    assert_eq!(rows[1][col(h, "study_uid")], uid);
    assert_eq!(rows[1][col(h, "ground_truth_category")], "pneumotorax");
    assert_eq!(rows[1][col(h, "pathology")], "Unknown");
    assert_eq!(report.summary.by_category.get("pneumotorax"), Some(&(1, 0, 0)));
}
