//! Parity with Python: for random score files, the Rust ensemble equals `LGBMClassifier.predict_proba`
//! on the features built by the reference rules, for models trained in Python on a DataFrame whose
//! column names contain spaces (fixtures: `tools/ensemble/make_fixtures.py`).

mod common;

use common::{cases, parity_bundle, strings};
use ensemble_svc::align::{MissingPolicy, NameMatching};
use ensemble_svc::booster::LgbmBooster;
use ensemble_svc::bundle::{Bundle, ThoracicFeatures};
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::EnsembleError;

const TOL: f64 = 1e-9;

fn check(name: &str, what: &str, p: &ensemble_svc::ensemble::Prediction, e: &serde_json::Value, threshold: f64) -> f64 {
    let want = e["probability_of_pathology"].as_f64().unwrap();
    let want_t = e["probability_of_pathology_thoracic"].as_f64().unwrap();
    let (got_t, dec_t) = p.thoracic.unwrap();
    let d = (p.probability - want).abs().max((got_t - want_t).abs());
    assert!(d <= TOL, "{name} ({what}): main {} vs {want}, thoracic {got_t} vs {want_t}", p.probability);
    assert_eq!(p.pathology, u32::from(want >= threshold), "{name} ({what})");
    assert_eq!(dec_t, u32::from(want_t >= 0.5), "{name} ({what})");
    assert_eq!(p.missing_features, strings(&e["missing_features"]), "{name} ({what}): missing features");
    d
}

#[test]
fn rust_predict_equals_python_predict_proba() {
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    assert_eq!(bundle.manifest.features.name_matching, NameMatching::Lightgbm);
    let e = Ensemble::from_bundle(&bundle, &Options::default()).unwrap();
    assert_eq!(e.feature_names().len(), 165);
    assert!(e.feature_names().iter().any(|n| n == "ctclip_Postoperative_changes_(lobectomy_or_pneumonectomy)"), "LightGBM rewrote the names");
    let mut max_diff: f64 = 0.0;
    let mut n = 0;
    for (name, scores, case) in cases() {
        let p = e.predict(&scores).unwrap();
        max_diff = max_diff.max(check(&name, "zero", &p, &case["expected"], 0.59));
        assert_eq!(p.top_pathologies, strings(&case["expected"]["top_pathologies"]), "{name}: top pathologies");
        n += 1;
    }
    assert!(n >= 12);
    eprintln!("parity: {n} cases, max |rust - python| = {max_diff:e}");
}

#[test]
fn nan_policy_equals_python_with_nan_for_missing_features() {
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    let e = Ensemble::from_bundle(&bundle, &Options { missing: Some(MissingPolicy::Nan), ..Options::default() }).unwrap();
    let mut differs_from_zero = 0;
    for (name, scores, case) in cases() {
        let p = e.predict(&scores).unwrap();
        check(&name, "nan", &p, &case["expected_nan"], 0.59);
        assert_eq!(p.top_pathologies, strings(&case["expected_nan"]["top_pathologies"]), "{name}: top pathologies");
        if case["expected_nan"]["probability_of_pathology_thoracic"] != case["expected"]["probability_of_pathology_thoracic"] {
            differs_from_zero += 1;
        }
    }
    assert!(differs_from_zero >= 2, "the fixtures exercise LightGBM's missing-value path");
}

/// `name_matching = "exact"` reproduces the reference with a bare LGBMClassifier: the 52 features
/// whose names have spaces reach the model as 0.0 (and the start-up check says so).
#[test]
fn exact_matching_reproduces_the_reference_quirk() {
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    let load = || {
        let main = LgbmBooster::from_text(&bundle.main_text, "main").unwrap();
        let thoracic = LgbmBooster::from_text(bundle.thoracic_text.as_deref().unwrap(), "thoracic").unwrap();
        (main, Some((thoracic, 0.5, ThoracicFeatures::Main)))
    };
    let (main, thoracic) = load();
    match Ensemble::new(bundle.spec.clone(), main, thoracic, 0.59, MissingPolicy::Zero, NameMatching::Exact, &Options::default()) {
        Err(EnsembleError::Unproducible { model, features }) => {
            assert_eq!(model, "main");
            assert_eq!(features.len(), 52);
            assert!(features.iter().all(|f| f.starts_with("ctclip_") || f.starts_with("okhr_")));
        }
        other => panic!("expected Unproducible, got {:?}", other.err()),
    }
    let (main, thoracic) = load();
    let allow = Options { allow_unproducible: true, ..Options::default() };
    let e = Ensemble::new(bundle.spec.clone(), main, thoracic, 0.59, MissingPolicy::Zero, NameMatching::Exact, &allow).unwrap();
    for (name, scores, case) in cases() {
        let p = e.predict(&scores).unwrap();
        check(&name, "quirk", &p, &case["expected_quirk"], 0.59);
        assert_eq!(p.top_pathologies, strings(&case["expected_quirk"]["top_pathologies"]), "{name}: top pathologies");
        assert!(p.missing_features.len() >= 52);
    }
}

#[test]
fn thresholds_can_be_overridden() {
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    let e = Ensemble::from_bundle(&bundle, &Options { threshold: Some(0.0), threshold_thoracic: Some(1.0), ..Options::default() }).unwrap();
    let (_, scores, _) = cases().remove(0);
    let p = e.predict(&scores).unwrap();
    assert_eq!((p.pathology, p.thoracic.unwrap().1, p.threshold, p.threshold_thoracic), (1, 0, 0.0, Some(1.0)));
    assert!(Ensemble::from_bundle(&bundle, &Options { threshold: Some(1.5), ..Options::default() }).is_err());
}
