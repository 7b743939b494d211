//! Shared helpers of the integration tests: the committed fixtures made by
//! `tools/ensemble/make_fixtures.py`.
#![allow(dead_code)]

use ensemble_svc::features::ScoreSet;
use serde_json::Value;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn parity_bundle() -> PathBuf {
    fixtures().join("parity")
}

pub fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (name, scores, case object) of every parity case.
pub fn cases() -> Vec<(String, ScoreSet, Value)> {
    let v = read_json(&parity_bundle().join("cases.json"));
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), ScoreSet::from_json(&c["scores"]).unwrap(), c.clone()))
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// A copy of a bundle directory in a temporary directory (tests that rewrite the manifest).
pub fn copy_bundle(src: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}
