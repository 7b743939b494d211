//! The missing-feature policy: `zero` (default, the reference) and `nan`; the report lists exactly
//! the model features that could not be built, in model order; extra features are ignored.

mod common;

use common::{fixtures, parity_bundle, read_json};
use ensemble_svc::align::MissingPolicy;
use ensemble_svc::bundle::Bundle;
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::features::ScoreSet;

fn golden_scores() -> serde_json::Value {
    read_json(&fixtures().join("golden/scores.json"))
}

fn ensemble(policy: Option<MissingPolicy>) -> Ensemble<ensemble_svc::booster::LgbmBooster> {
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    Ensemble::from_bundle(&bundle, &Options { missing: policy, ..Options::default() }).unwrap()
}

/// The model's features with one of these prefixes (model order).
fn model_features(e: &Ensemble<ensemble_svc::booster::LgbmBooster>, prefixes: &[&str]) -> Vec<String> {
    e.feature_names().iter().filter(|n| prefixes.iter().any(|p| n.starts_with(p))).cloned().collect()
}

#[test]
fn both_policies_report_exactly_the_missing_names() {
    let mut s = golden_scores();
    let obj = s.as_object_mut().unwrap();
    obj.remove("fvlm");
    obj.get_mut("mednext").unwrap().as_object_mut().unwrap().remove("cancer");
    obj.get_mut("ctclip").unwrap().as_object_mut().unwrap().remove("Pleural effusion");
    obj.get_mut("supervised").unwrap().as_object_mut().unwrap().insert("an extra label".into(), serde_json::json!(0.5));
    let scores = ScoreSet::from_json(&s).unwrap();

    let zero = ensemble(None);
    assert_eq!(zero.missing_policy(), MissingPolicy::Zero, "the bundle's default");
    let mut want = model_features(&zero, &["okhr_", "kolyan_cancer", "ctclip_Pleural_effusion"]);
    want.sort_by_key(|n| zero.feature_names().iter().position(|m| m == n));
    assert_eq!(want.len(), 18 + 3 + 1 + 1);

    let (values, missing) = zero.features(&scores);
    assert_eq!(missing, want);
    for n in &want {
        let i = zero.feature_names().iter().position(|m| m == n).unwrap();
        assert_eq!(values[i], 0.0, "{n}");
    }
    let p = zero.predict(&scores).unwrap();
    assert_eq!(p.missing_features, want);
    assert_eq!(p.missing_models, vec!["fvlm".to_string()]);

    let nan = ensemble(Some(MissingPolicy::Nan));
    let (values, missing) = nan.features(&scores);
    assert_eq!(missing, want);
    for (n, v) in nan.feature_names().iter().zip(&values) {
        assert_eq!(v.is_nan(), want.contains(n), "{n}");
    }
    assert_eq!(nan.predict(&scores).unwrap().missing_features, want);
}

#[test]
fn nothing_missing_with_every_model() {
    let scores = ScoreSet::from_json(&golden_scores()).unwrap();
    let p = ensemble(None).predict(&scores).unwrap();
    assert!(p.missing_features.is_empty() && p.missing_models.is_empty());
}

fn run(args: &[&str], scores: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("scores.json");
    std::fs::write(&f, scores.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble-svc"))
        .args(args)
        .arg("--bundle")
        .arg(parity_bundle())
        .arg("--scores")
        .arg(&f)
        .env_remove("CT_MISSING_FEATURES")
        .env_remove("CT_THRESHOLD")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_cli_reports_missing_features_and_prints_null_for_nan() {
    let mut s = golden_scores();
    s.as_object_mut().unwrap().remove("diffusion");
    let want = ["diffusion_classifier_mean_probability", "diffusion_classifier_max_probability", "diffusion_classifier_std_probability"];
    let p = run(&["predict"], &s);
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["probability_of_pathology", "pathology", "probability_of_pathology_thoracic", "pathology_thoracic", "top_pathologies", "missing_features"]);
    let missing: Vec<&str> = p["missing_features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut sorted = missing.clone();
    sorted.sort();
    let mut w = want.to_vec();
    w.sort();
    assert_eq!(sorted, w);
    let f = run(&["features", "--missing-features", "nan"], &s);
    for n in want {
        assert!(f[n].is_null(), "{n}");
    }
    let f = run(&["features"], &s);
    for n in want {
        assert_eq!(f[n].as_f64(), Some(0.0), "{n}");
    }
    // bad scores: exit code 2 and a typed error
    let bad = run(&["predict"], &serde_json::json!({"ctclip": {"Pneumonia": "high"}}));
    assert_eq!(bad["error_type"], "invalid_scores");
}
