//! Golden feature vector: for a fixed score file, every feature (names, order, values) equals what
//! the reference rules compute in Python with numpy float64 (`tools/ensemble/make_fixtures.py`),
//! bit for bit; and the `features` command prints the vector in model order.

mod common;

use common::{fixtures, parity_bundle, read_json};
use ensemble_svc::bundle::Bundle;
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::features::{ScoreSet, build};
use ensemble_svc::spec::FeatureSpec;

fn pairs(v: &serde_json::Value) -> Vec<(String, f64)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap())).collect()
}

#[test]
fn built_features_equal_the_reference_rules_exactly() {
    let scores = ScoreSet::from_json(&read_json(&fixtures().join("golden/scores.json"))).unwrap();
    let golden = read_json(&fixtures().join("golden/features.json"));
    let want = pairs(&golden["built"]);
    assert_eq!(want.len(), 165);
    let fv = build(&FeatureSpec::reference(), &scores);
    let got: Vec<(String, f64)> = fv.iter().map(|(n, v)| (n.to_string(), v)).collect();
    assert_eq!(got.len(), want.len());
    for (i, ((gn, gv), (wn, wv))) in got.iter().zip(&want).enumerate() {
        assert_eq!(gn, wn, "feature {i}: name/order");
        assert_eq!(gv.to_bits(), wv.to_bits(), "feature {i} {gn}: {gv:e} vs {wv:e}");
    }
    // the families of §4.1 in order
    let first = |p: &str| got.iter().position(|(n, _)| n.starts_with(p)).unwrap();
    assert!(first("supervised_") < first("ctclip_") && first("ctclip_") < first("kolyan_") && first("kolyan_") < first("okhr_"));
    assert_eq!(got[15 + 55 + 22 + 18].0, "supervised_mean_probability");
    assert_eq!(got[164].0, "diffusion_classifier_std_probability");
}

#[test]
fn aligned_vector_and_the_features_command() {
    let golden = read_json(&fixtures().join("golden/features.json"));
    let want = pairs(&golden["aligned_to_parity_main"]);
    let bundle = Bundle::load(&parity_bundle()).unwrap();
    let e = Ensemble::from_bundle(&bundle, &Options::default()).unwrap();
    let scores = ScoreSet::from_json(&read_json(&fixtures().join("golden/scores.json"))).unwrap();
    let (values, missing) = e.features(&scores);
    assert!(missing.is_empty());
    assert_eq!(e.feature_names(), want.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
    for ((n, w), g) in want.iter().zip(&values) {
        assert_eq!(w.to_bits(), g.to_bits(), "{n}");
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble-svc"))
        .args(["features", "--bundle"])
        .arg(parity_bundle())
        .arg("--scores")
        .arg(fixtures().join("golden/scores.json"))
        .env_remove("CT_MISSING_FEATURES")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let printed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, f64)> = printed.into_iter().map(|(k, v)| (k, v.as_f64().unwrap())).collect();
    assert_eq!(got, want, "printed in model order with the same values");
}
