//! `train` on generated data reaches the AUC the data supports, and `calibrate` hits the requested
//! sensitivity on the held-out split.
//!
//! Data: per study, every model score is sigmoid(z) with z ~ N(0, 1), except three supervised
//! labels whose z is shifted by 0.8 for pathological studies (main label) and one fVLM label
//! shifted by 1.2 (thoracic label). The Bayes-optimal discriminant is the sum of the shifted z's:
//! its ROC AUC is Phi(0.8 * sqrt(3) / sqrt(2)) = 0.836 (main) and Phi(1.2 / sqrt(2)) = 0.802
//! (thoracic). Its empirical AUC on the same held-out studies is the reference the trained model
//! is compared with.

mod common;

use ensemble_svc::bundle::{Bundle, Manifest};
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::features::ScoreSet;
use ensemble_svc::train::{self, CalibrateConfig, Criterion, Split, Which};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

const MAIN_SIGNAL: [&str; 3] = ["cancer", "pneumothorax", "pleural_effusion"];
const SHIFT_MAIN: f64 = 0.8;
const SHIFT_THORACIC: f64 = 1.2;

struct Data {
    _dir: tempfile::TempDir,
    scores: std::path::PathBuf,
    labels: std::path::PathBuf,
    /// Bayes discriminants (main, thoracic) per study id.
    oracle: std::collections::HashMap<String, (f64, f64, u8, u8)>,
}

fn generate(n: usize, seed: u64) -> Data {
    let spec = ensemble_svc::spec::FeatureSpec::reference();
    let labels_of = |m: &str| -> Vec<String> {
        match spec.scores_block(m) {
            Some(ensemble_svc::spec::Block::Scores { labels: Some(l), .. }) => l.clone(),
            _ => (0..22).map(|i| if i == 0 { "normal".to_string() } else { format!("class_{i}") }).collect(),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let scores = dir.path().join("scores");
    std::fs::create_dir(&scores).unwrap();
    let mut rng = Rng(seed);
    let mut csv = String::from("study,label,thoracic\n");
    let mut oracle = std::collections::HashMap::new();
    for i in 0..n {
        let id = format!("study_{i:04}");
        let y = u8::from(rng.uniform() < 0.4);
        let yt = u8::from(rng.uniform() < 0.5);
        let (mut d_main, mut d_thor) = (0.0, 0.0);
        let mut s = serde_json::Map::new();
        for m in ["supervised", "ctclip", "mednext", "fvlm"] {
            let mut obj = serde_json::Map::new();
            for l in labels_of(m) {
                let mut z = rng.normal();
                if m == "supervised" && MAIN_SIGNAL.contains(&l.as_str()) {
                    z += SHIFT_MAIN * f64::from(y);
                    d_main += z;
                }
                if m == "fvlm" && l == "Cardiomegaly" {
                    z += SHIFT_THORACIC * f64::from(yt);
                    d_thor += z;
                }
                obj.insert(l, json!(sigmoid(z)));
            }
            s.insert(m.into(), serde_json::Value::Object(obj));
        }
        let p: Vec<f64> = (0..8).map(|_| sigmoid(rng.normal())).collect();
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        s.insert(
            "diffusion".into(),
            json!({"diffusion_classifier_mean_probability": mean, "diffusion_classifier_max_probability": p.iter().cloned().fold(0.0, f64::max), "diffusion_classifier_std_probability": 0.1}),
        );
        std::fs::write(scores.join(format!("{id}.json")), serde_json::Value::Object(s).to_string()).unwrap();
        csv.push_str(&format!("{id},{y},{yt}\n"));
        oracle.insert(id, (d_main, d_thor, y, yt));
    }
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    Data { _dir: dir, scores, labels, oracle }
}

fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble-svc"));
    for v in ["CT_THRESHOLD", "CT_THRESHOLD_THORACIC", "CT_MISSING_FEATURES", "CT_SEED", "CT_HOLDOUT_FRACTION"] {
        c.env_remove(v);
    }
    c
}

fn run_json(c: &mut std::process::Command) -> serde_json::Value {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn holdout_ids(bundle: &Path) -> HashSet<String> {
    let m = Manifest::read(bundle).unwrap();
    train::read_holdout(bundle, &m).unwrap()
}

#[test]
fn train_reaches_the_supported_auc_and_calibrate_hits_the_sensitivity() {
    let data = generate(2400, 2026);
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    let r = run_json(
        bin().arg("train").arg("--scores-dir").arg(&data.scores).arg("--labels").arg(&data.labels).arg("--thoracic-label-column").arg("thoracic").arg("--out").arg(&bundle),
    );
    assert_eq!(r["n_studies"], 2400);
    assert_eq!(r["n_features"], 165);
    let ho = holdout_ids(&bundle);
    assert_eq!(ho.len(), r["n_holdout"].as_u64().unwrap() as usize);
    assert!((590..=610).contains(&ho.len()), "a quarter held out: {}", ho.len());

    // the AUC the data supports, on the same held-out studies
    let ids: Vec<&String> = ho.iter().collect();
    let oracle = |k: usize| -> f64 {
        let s: Vec<f64> = ids.iter().map(|i| if k == 0 { data.oracle[*i].0 } else { data.oracle[*i].1 }).collect();
        let y: Vec<u8> = ids.iter().map(|i| if k == 0 { data.oracle[*i].2 } else { data.oracle[*i].3 }).collect();
        train::roc_auc(&s, &y).unwrap()
    };
    let (auc_main, auc_thor) = (r["auc_main_holdout"].as_f64().unwrap(), r["auc_thoracic_holdout"].as_f64().unwrap());
    let (oracle_main, oracle_thor) = (oracle(0), oracle(1));
    eprintln!("held-out AUC: main {auc_main:.3} (Bayes discriminant {oracle_main:.3}, theory 0.836), thoracic {auc_thor:.3} (Bayes {oracle_thor:.3}, theory 0.802)");
    assert!(auc_main >= oracle_main - 0.06 && auc_main <= oracle_main + 0.04, "main AUC {auc_main} vs supported {oracle_main}");
    assert!(auc_thor >= oracle_thor - 0.06 && auc_thor <= oracle_thor + 0.04, "thoracic AUC {auc_thor} vs supported {oracle_thor}");

    // the bundle serves: its held-out AUC recomputed through the ensemble equals the report
    let b = Bundle::load(&bundle).unwrap();
    assert_eq!(b.manifest.main.threshold, 0.5);
    let e = Ensemble::from_bundle(&b, &Options::default()).unwrap();
    let read = |id: &str| ScoreSet::from_json_str(&std::fs::read_to_string(data.scores.join(format!("{id}.json"))).unwrap()).unwrap();
    let probs: Vec<f64> = ids.iter().map(|i| e.predict(&read(i)).unwrap().probability).collect();
    let y: Vec<u8> = ids.iter().map(|i| data.oracle[*i].2).collect();
    assert!((train::roc_auc(&probs, &y).unwrap() - auc_main).abs() < 1e-12);

    // calibrate: the highest threshold with sensitivity >= 0.9 on the held-out split
    let cfg = CalibrateConfig {
        bundle: bundle.clone(),
        scores_dir: data.scores.clone(),
        labels: data.labels.clone(),
        id_column: "study".into(),
        label_column: "label".into(),
        thoracic_label_column: Some("thoracic".into()),
        criterion: Criterion::Sensitivity(0.9),
        model: Which::Main,
        split: Split::Holdout,
        dry_run: false,
    };
    let c = train::calibrate(&cfg).unwrap();
    assert_eq!(c.n_studies, ho.len());
    let t = Manifest::read(&bundle).unwrap().main.threshold;
    assert_eq!(t, c.threshold);
    let (se, sp) = train::rates(&probs, &y, t);
    eprintln!("calibrated threshold {t:.4}: held-out sensitivity {se:.3}, specificity {sp:.3}");
    assert!(se >= 0.9 && (se - c.sensitivity).abs() < 1e-12);
    let above = probs.iter().zip(&y).filter(|(p, l)| **l == 1 && **p > t).map(|(p, _)| *p).fold(f64::INFINITY, f64::min);
    assert!(train::rates(&probs, &y, above).0 < 0.9, "no higher threshold reaches the target");
    // decisions served with the new threshold
    let e = Ensemble::from_bundle(&Bundle::load(&bundle).unwrap(), &Options::default()).unwrap();
    let decided: Vec<u32> = ids.iter().map(|i| e.predict(&read(i)).unwrap().pathology).collect();
    let tp = decided.iter().zip(&y).filter(|(d, l)| **d == 1 && **l == 1).count();
    assert_eq!(tp as f64 / y.iter().filter(|&&l| l == 1).count() as f64, se);

    // thoracic threshold by Youden's J, through the CLI, dry run
    let before = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    let j = run_json(
        bin().arg("calibrate").arg("--bundle").arg(&bundle).arg("--scores-dir").arg(&data.scores).arg("--labels").arg(&data.labels)
            .args(["--thoracic-label-column", "thoracic", "--model", "thoracic", "--youden", "--dry-run"]),
    );
    assert_eq!(j["model"], "thoracic");
    assert_eq!(j["written"], false);
    let probs_t: Vec<f64> = ids.iter().map(|i| e.predict(&read(i)).unwrap().thoracic.unwrap().0).collect();
    let y_t: Vec<u8> = ids.iter().map(|i| data.oracle[*i].3).collect();
    let j_of = |t: f64| {
        let (se, sp) = train::rates(&probs_t, &y_t, t);
        se + sp - 1.0
    };
    let best = probs_t.iter().map(|&t| j_of(t)).fold(f64::NEG_INFINITY, f64::max);
    let youden = j["sensitivity"].as_f64().unwrap() + j["specificity"].as_f64().unwrap() - 1.0;
    assert!((youden - best).abs() < 1e-12 && (j_of(j["threshold"].as_f64().unwrap()) - best).abs() < 1e-12, "{j}");
    assert!(best > 0.2, "{j}");
    assert_eq!(before, std::fs::read_to_string(bundle.join("manifest.toml")).unwrap());
}

#[test]
fn train_refuses_unusable_data() {
    let data = generate(30, 7);
    let out = tempfile::tempdir().unwrap();
    // a label column with one class only
    let one = out.path().join("one.csv");
    let text = std::fs::read_to_string(&data.labels).unwrap();
    let rewritten: String = text.lines().enumerate().map(|(i, l)| if i == 0 { format!("{l}\n") } else { format!("{},1,0\n", l.split(',').next().unwrap()) }).collect();
    std::fs::write(&one, rewritten).unwrap();
    let o = bin().arg("train").arg("--scores-dir").arg(&data.scores).arg("--labels").arg(&one).arg("--out").arg(out.path().join("b")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error_type"], "invalid_training_data");
    // a study without a score file
    let extra = out.path().join("extra.csv");
    std::fs::write(&extra, format!("{text}nowhere,1,1\n")).unwrap();
    let o = bin().arg("train").arg("--scores-dir").arg(&data.scores).arg("--labels").arg(&extra).arg("--out").arg(out.path().join("b")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stdout));
}
