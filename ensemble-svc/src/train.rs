//! Retraining and calibration on a site's own data (`ensemble-svc train` / `calibrate`).
//!
//! Input: a directory of per-study score files `<study>.json` (the scores-file format) and a CSV
//! with a header row, a study column and 0/1 label columns. `train` builds the features with the
//! feature definition, splits the studies (stratified, seeded) into train and held-out parts,
//! trains LightGBM binary models, reports ROC AUC on both parts and writes a bundle (with the
//! held-out study ids in `holdout.txt`). `calibrate` picks a threshold on the held-out part (or
//! on all labelled studies) for a target sensitivity or by Youden's J and writes it to the
//! manifest.

use crate::align::{Alignment, MissingPolicy, NameMatching, lightgbm_name};
use crate::booster::{Booster, LgbmBooster};
use crate::bundle::{FeaturesEntry, Info, Manifest, ModelEntry, ThoracicEntry, ThoracicFeatures, TrainingInfo, write_bundle};
use crate::features::{FeatureVector, ScoreSet, build};
use crate::spec::FeatureSpec;
use crate::EnsembleError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub const HOLDOUT_FILE: &str = "holdout.txt";

/// One labelled study.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub id: String,
    pub label: u8,
    pub thoracic: Option<u8>,
}

/// Reads the labels CSV (header row; comma-separated; fields may be double-quoted).
pub fn read_labels(path: &Path, id_column: &str, label_column: &str, thoracic_column: Option<&str>) -> Result<Vec<Labelled>, EnsembleError> {
    let bad = |reason: String| EnsembleError::Labels { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| EnsembleError::io(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or_else(|| bad("empty file".into()))?);
    let col = |name: &str| header.iter().position(|h| h == name).ok_or_else(|| bad(format!("no column {name:?} (columns: {})", header.join(", "))));
    let (ic, lc) = (col(id_column)?, col(label_column)?);
    let tc = thoracic_column.map(col).transpose()?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in lines.enumerate() {
        let f = csv_fields(line);
        let get = |c: usize| f.get(c).map(String::as_str).ok_or_else(|| bad(format!("row {}: {} fields, expected {}", n + 2, f.len(), header.len())));
        let id = get(ic)?.to_string();
        if id.is_empty() || id.contains('/') || id.contains('\\') || id.starts_with('.') {
            return Err(bad(format!("row {}: study id {id:?} is not a file stem", n + 2)));
        }
        if !seen.insert(id.clone()) {
            return Err(bad(format!("row {}: study {id:?} appears twice", n + 2)));
        }
        let label = parse01(get(lc)?).ok_or_else(|| bad(format!("row {}: {label_column} must be 0 or 1", n + 2)))?;
        let thoracic = match tc {
            Some(c) => Some(parse01(get(c)?).ok_or_else(|| bad(format!("row {}: thoracic label must be 0 or 1", n + 2)))?),
            None => None,
        };
        out.push(Labelled { id, label, thoracic });
    }
    if out.is_empty() {
        return Err(bad("no rows".into()));
    }
    Ok(out)
}

fn parse01(s: &str) -> Option<u8> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "0.0" | "false" => Some(0),
        "1" | "1.0" | "true" => Some(1),
        _ => None,
    }
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// Reads `<dir>/<id>.json` for every study.
pub fn read_scores(dir: &Path, studies: &[Labelled]) -> Result<Vec<ScoreSet>, EnsembleError> {
    studies
        .iter()
        .map(|s| {
            let p = dir.join(format!("{}.json", s.id));
            let text = std::fs::read_to_string(&p).map_err(|e| EnsembleError::io(&p, e))?;
            ScoreSet::from_json_str(&text).map_err(|e| EnsembleError::training(format!("{}: {e}", p.display())))
        })
        .collect()
}

/// Stratified, seeded split: for each class, `ceil(fraction * n)` studies (at least one when the
/// class has two or more) are held out. Returns `true` for held-out studies. Independent of the
/// row order (studies are ordered by id before shuffling).
pub fn holdout_split(studies: &[Labelled], fraction: f64, seed: u64) -> Vec<bool> {
    let mut out = vec![false; studies.len()];
    for class in [0u8, 1] {
        let mut idx: Vec<usize> = (0..studies.len()).filter(|&i| studies[i].label == class).collect();
        idx.sort_by(|&a, &b| studies[a].id.cmp(&studies[b].id));
        let mut rng = SplitMix64(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(class) + 1)));
        for i in (1..idx.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        let mut k = (fraction * idx.len() as f64).ceil() as usize;
        if idx.len() >= 2 {
            k = k.clamp(1, idx.len() - 1);
        } else {
            k = 0;
        }
        for &i in &idx[..k] {
            out[i] = true;
        }
    }
    out
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// ROC AUC (Mann-Whitney, ties count one half). `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut n_pos) = (0.0, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] == 1 {
                rank_sum_pos += avg_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    Some((rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64)
}

/// LightGBM settings of `train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainParams {
    /// Boosting rounds.
    #[arg(long, env = "CT_TRAIN_ITERATIONS", default_value_t = 200)]
    pub num_iterations: u32,
    /// Learning rate.
    #[arg(long, env = "CT_TRAIN_LEARNING_RATE", default_value_t = 0.05)]
    pub learning_rate: f64,
    /// Leaves per tree.
    #[arg(long, env = "CT_TRAIN_NUM_LEAVES", default_value_t = 7)]
    pub num_leaves: u32,
    /// Minimum studies per leaf.
    #[arg(long, env = "CT_TRAIN_MIN_DATA_IN_LEAF", default_value_t = 30)]
    pub min_data_in_leaf: u32,
    /// Fraction of features looked at per tree.
    #[arg(long, env = "CT_TRAIN_FEATURE_FRACTION", default_value_t = 0.8)]
    pub feature_fraction: f64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self { num_iterations: 200, learning_rate: 0.05, num_leaves: 7, min_data_in_leaf: 30, feature_fraction: 0.8 }
    }
}

/// Everything `train` needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub scores_dir: PathBuf,
    pub labels: PathBuf,
    pub out: PathBuf,
    pub id_column: String,
    pub label_column: String,
    pub thoracic_label_column: Option<String>,
    pub holdout_fraction: f64,
    pub seed: u64,
    pub missing: MissingPolicy,
    pub spec: FeatureSpec,
    pub threshold: f64,
    pub threshold_thoracic: f64,
    pub version: String,
    pub params: TrainParams,
}

/// What `train` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    pub n_studies: usize,
    pub n_train: usize,
    pub n_holdout: usize,
    pub n_features: usize,
    pub auc_main_train: Option<f64>,
    pub auc_main_holdout: f64,
    pub auc_thoracic_train: Option<f64>,
    pub auc_thoracic_holdout: Option<f64>,
    pub bundle: PathBuf,
}

/// The training feature list: every feature built for any study, in first-seen order
/// (studies ordered by id), checked against LightGBM's naming rules.
fn feature_list(vectors: &[FeatureVector]) -> Result<Vec<String>, EnsembleError> {
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for v in vectors {
        for n in v.names() {
            if seen.insert(n.clone()) {
                names.push(n.clone());
            }
        }
    }
    let mut stored: HashMap<String, String> = HashMap::new();
    for n in &names {
        let s = lightgbm_name(n).map_err(|c| EnsembleError::training(format!("feature {n:?} contains {c:?}, which LightGBM refuses in feature names")))?;
        if let Some(other) = stored.insert(s.clone(), n.clone()) {
            return Err(EnsembleError::training(format!("features {other:?} and {n:?} have the same LightGBM name {s:?}")));
        }
    }
    if names.is_empty() {
        return Err(EnsembleError::training("no features could be built from the score files"));
    }
    Ok(names)
}

fn matrix(vectors: &[&FeatureVector], names: &[String], missing: MissingPolicy) -> Vec<f64> {
    let a = Alignment::new(names.to_vec(), NameMatching::Exact);
    vectors.iter().flat_map(|v| a.align(v, missing).values).collect()
}

fn fit(x: &[f64], y: &[u8], names: &[String], cfg: &TrainConfig, what: &str) -> Result<LgbmBooster, EnsembleError> {
    let labels: Vec<f32> = y.iter().map(|&v| f32::from(v)).collect();
    let mut ds = lightgbm3::Dataset::from_slice(x, &labels, names.len() as i32, true).map_err(|e| EnsembleError::lgbm(format!("{what} dataset"), e))?;
    // LightGBM would rewrite ' ' itself, with a warning on stdout; the names are checked in `feature_list`
    let stored: Vec<String> = names.iter().map(|n| n.replace(' ', "_")).collect();
    ds.set_feature_names(&stored).map_err(|e| EnsembleError::lgbm(format!("{what} feature names"), e))?;
    let p = &cfg.params;
    let params = serde_json::json!({
        "objective": "binary",
        "num_iterations": p.num_iterations,
        "learning_rate": p.learning_rate,
        "num_leaves": p.num_leaves,
        "min_data_in_leaf": p.min_data_in_leaf,
        "feature_fraction": p.feature_fraction,
        "seed": cfg.seed,
        "deterministic": true,
        "force_row_wise": true,
        "num_threads": 1,
        "verbosity": -1,
    });
    LgbmBooster::train(ds, &params)
}

/// Trains the main (and thoracic) model and writes the bundle.
pub fn train(cfg: &TrainConfig) -> Result<TrainReport, EnsembleError> {
    if !(0.0..1.0).contains(&cfg.holdout_fraction) || cfg.holdout_fraction <= 0.0 {
        return Err(EnsembleError::training(format!("holdout fraction {} must be within (0, 1)", cfg.holdout_fraction)));
    }
    let mut studies = read_labels(&cfg.labels, &cfg.id_column, &cfg.label_column, cfg.thoracic_label_column.as_deref())?;
    studies.sort_by(|a, b| a.id.cmp(&b.id));
    let scores = read_scores(&cfg.scores_dir, &studies)?;
    let vectors: Vec<FeatureVector> = scores.iter().map(|s| build(&cfg.spec, s)).collect();
    let names = feature_list(&vectors)?;
    let hold = holdout_split(&studies, cfg.holdout_fraction, cfg.seed);
    let part = |h: bool| -> Vec<usize> { (0..studies.len()).filter(|&i| hold[i] == h).collect() };
    let (tr, ho) = (part(false), part(true));
    let check = |idx: &[usize], get: &dyn Fn(&Labelled) -> u8, what: &str| -> Result<(), EnsembleError> {
        let pos = idx.iter().filter(|&&i| get(&studies[i]) == 1).count();
        if pos == 0 || pos == idx.len() {
            return Err(EnsembleError::training(format!("the {what} part needs both classes ({pos} positive of {})", idx.len())));
        }
        Ok(())
    };
    check(&tr, &|s| s.label, "training")?;
    check(&ho, &|s| s.label, "held-out")?;
    let x_of = |idx: &[usize]| matrix(&idx.iter().map(|&i| &vectors[i]).collect::<Vec<_>>(), &names, cfg.missing);
    let (x_tr, x_ho) = (x_of(&tr), x_of(&ho));
    let y_of = |idx: &[usize], get: &dyn Fn(&Labelled) -> u8| -> Vec<u8> { idx.iter().map(|&i| get(&studies[i])).collect() };
    let main_label = |s: &Labelled| s.label;
    let main = fit(&x_tr, &y_of(&tr, &main_label), &names, cfg, "main")?;
    let auc_main_train = roc_auc(&main.predict_proba_rows(&x_tr)?, &y_of(&tr, &main_label));
    let auc_main_holdout = roc_auc(&main.predict_proba_rows(&x_ho)?, &y_of(&ho, &main_label)).ok_or_else(|| EnsembleError::training("held-out AUC undefined"))?;
    let (mut thoracic, mut auc_thoracic_train, mut auc_thoracic_holdout) = (None, None, None);
    if cfg.thoracic_label_column.is_some() {
        let tl = |s: &Labelled| s.thoracic.unwrap_or(0);
        let (ytr, yho) = (y_of(&tr, &tl), y_of(&ho, &tl));
        for (y, what) in [(&ytr, "thoracic training"), (&yho, "thoracic held-out")] {
            if y.iter().all(|&v| v == y[0]) {
                return Err(EnsembleError::training(format!("the {what} part needs both classes")));
            }
        }
        let t = fit(&x_tr, &ytr, &names, cfg, "thoracic")?;
        auc_thoracic_train = roc_auc(&t.predict_proba_rows(&x_tr)?, &ytr);
        auc_thoracic_holdout = roc_auc(&t.predict_proba_rows(&x_ho)?, &yho);
        thoracic = Some(t);
    }
    let manifest = Manifest {
        format: 1,
        ensemble: Info {
            version: cfg.version.clone(),
            demo: false,
            description: format!("trained by ensemble-svc {} on {} studies", env!("CARGO_PKG_VERSION"), tr.len()),
        },
        main: ModelEntry { file: "main.txt".into(), threshold: cfg.threshold },
        thoracic: thoracic.as_ref().map(|_| ThoracicEntry { file: "thoracic.txt".into(), threshold: cfg.threshold_thoracic, features: ThoracicFeatures::Main }),
        features: FeaturesEntry { file: Some("features.toml".into()), missing: cfg.missing, name_matching: NameMatching::Lightgbm },
        source: None,
        training: Some(TrainingInfo {
            seed: cfg.seed,
            holdout_fraction: cfg.holdout_fraction,
            n_train: tr.len(),
            n_holdout: ho.len(),
            label_column: cfg.label_column.clone(),
            thoracic_label_column: cfg.thoracic_label_column.clone(),
            auc_main_holdout,
            auc_thoracic_holdout,
            holdout_file: HOLDOUT_FILE.into(),
        }),
        files: BTreeMap::new(),
    };
    let holdout_ids: String = ho.iter().map(|&i| format!("{}\n", studies[i].id)).collect();
    let thoracic_text = thoracic.as_ref().map(LgbmBooster::to_text).transpose()?;
    write_bundle(&cfg.out, &manifest, &main.to_text()?, thoracic_text.as_deref(), &cfg.spec, &[(HOLDOUT_FILE, holdout_ids)])?;
    Ok(TrainReport {
        n_studies: studies.len(),
        n_train: tr.len(),
        n_holdout: ho.len(),
        n_features: names.len(),
        auc_main_train,
        auc_main_holdout,
        auc_thoracic_train,
        auc_thoracic_holdout,
        bundle: cfg.out.clone(),
    })
}

/// How `calibrate` picks the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Criterion {
    /// The highest threshold whose sensitivity is at least this.
    Sensitivity(f64),
    /// The threshold maximising sensitivity + specificity - 1 (the highest among ties).
    Youden,
}

/// Sensitivity and specificity of `p >= t`.
pub fn rates(probs: &[f64], labels: &[u8], t: f64) -> (f64, f64) {
    let (mut tp, mut p, mut tn, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (&x, &y) in probs.iter().zip(labels) {
        if y == 1 {
            p += 1;
            tp += usize::from(x >= t);
        } else {
            n += 1;
            tn += usize::from(x < t);
        }
    }
    (tp as f64 / p.max(1) as f64, tn as f64 / n.max(1) as f64)
}

/// Picks the threshold (decision `p >= t`).
pub fn pick_threshold(probs: &[f64], labels: &[u8], criterion: Criterion) -> Result<f64, EnsembleError> {
    let n_pos = labels.iter().filter(|&&y| y == 1).count();
    if n_pos == 0 || n_pos == labels.len() {
        return Err(EnsembleError::training("calibration needs both classes"));
    }
    match criterion {
        Criterion::Sensitivity(target) => {
            if !(0.0..=1.0).contains(&target) || target == 0.0 {
                return Err(EnsembleError::training(format!("target sensitivity {target} must be within (0, 1]")));
            }
            let mut pos: Vec<f64> = probs.iter().zip(labels).filter(|(_, y)| **y == 1).map(|(p, _)| *p).collect();
            pos.sort_by(|a, b| b.total_cmp(a));
            // smallest k with k / n_pos >= target (with a little slack for 0.9 * 10 = 8.999...)
            let k = ((target * n_pos as f64) - 1e-9).ceil().max(1.0) as usize;
            Ok(pos[k.min(n_pos) - 1])
        }
        Criterion::Youden => {
            let mut cands: Vec<f64> = probs.to_vec();
            cands.sort_by(|a, b| b.total_cmp(a));
            cands.dedup();
            let mut best = (f64::NEG_INFINITY, 1.0);
            for t in cands {
                let (se, sp) = rates(probs, labels, t);
                let j = se + sp - 1.0;
                if j > best.0 {
                    best = (j, t);
                }
            }
            Ok(best.1)
        }
    }
}

/// Which model `calibrate` sets the threshold of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    Main,
    /// Uses the thoracic label column.
    Thoracic,
}

/// The studies `calibrate` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The bundle's held-out studies (`holdout.txt`, written by `train`).
    Holdout,
    /// Every labelled study.
    All,
}

/// Everything `calibrate` needs.
#[derive(Debug, Clone)]
pub struct CalibrateConfig {
    pub bundle: PathBuf,
    pub scores_dir: PathBuf,
    pub labels: PathBuf,
    pub id_column: String,
    pub label_column: String,
    pub thoracic_label_column: Option<String>,
    pub criterion: Criterion,
    pub model: Which,
    pub split: Split,
    /// Compute without writing the manifest.
    pub dry_run: bool,
}

/// What `calibrate` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrateReport {
    pub model: Which,
    pub split: Split,
    pub criterion: String,
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub n_studies: usize,
    pub n_positive: usize,
    pub auc: Option<f64>,
    pub written: bool,
}

/// Predicts the chosen split with the bundle, picks the threshold and writes it to the manifest.
pub fn calibrate(cfg: &CalibrateConfig) -> Result<CalibrateReport, EnsembleError> {
    let bundle = crate::bundle::Bundle::load(&cfg.bundle)?;
    let opts = crate::ensemble::Options { allow_unproducible: true, ..crate::ensemble::Options::default() };
    let e = crate::ensemble::Ensemble::from_bundle(&bundle, &opts)?;
    if cfg.model == Which::Thoracic && (!e.has_thoracic() || cfg.thoracic_label_column.is_none()) {
        return Err(EnsembleError::training("calibrating the thoracic threshold needs a thoracic model in the bundle and a thoracic label column"));
    }
    let mut studies = read_labels(&cfg.labels, &cfg.id_column, &cfg.label_column, cfg.thoracic_label_column.as_deref())?;
    if cfg.split == Split::Holdout {
        let ids = read_holdout(&cfg.bundle, &bundle.manifest)?;
        studies.retain(|s| ids.contains(&s.id));
        if studies.is_empty() {
            return Err(EnsembleError::training("no labelled study is in the bundle's held-out split"));
        }
    }
    let scores = read_scores(&cfg.scores_dir, &studies)?;
    let mut probs = Vec::with_capacity(studies.len());
    for s in &scores {
        let p = e.predict(s)?;
        probs.push(match cfg.model {
            Which::Main => p.probability,
            Which::Thoracic => p.thoracic.map(|t| t.0).unwrap_or_default(),
        });
    }
    let labels: Vec<u8> = studies.iter().map(|s| if cfg.model == Which::Main { s.label } else { s.thoracic.unwrap_or(0) }).collect();
    let threshold = pick_threshold(&probs, &labels, cfg.criterion)?;
    let (sensitivity, specificity) = rates(&probs, &labels, threshold);
    if !cfg.dry_run {
        let mut m = bundle.manifest.clone();
        match (cfg.model, m.thoracic.as_mut()) {
            (Which::Thoracic, Some(t)) => t.threshold = threshold,
            _ => m.main.threshold = threshold,
        }
        m.write(&cfg.bundle)?;
    }
    Ok(CalibrateReport {
        model: cfg.model,
        split: cfg.split,
        criterion: match cfg.criterion {
            Criterion::Sensitivity(t) => format!("sensitivity>={t}"),
            Criterion::Youden => "youden".into(),
        },
        threshold,
        sensitivity,
        specificity,
        n_studies: labels.len(),
        n_positive: labels.iter().filter(|&&y| y == 1).count(),
        auc: roc_auc(&probs, &labels),
        written: !cfg.dry_run,
    })
}

/// The study ids of a bundle's held-out split (`holdout.txt`).
pub fn read_holdout(bundle_dir: &Path, manifest: &Manifest) -> Result<HashSet<String>, EnsembleError> {
    let file = manifest.training.as_ref().map(|t| t.holdout_file.clone()).ok_or_else(|| {
        EnsembleError::training("the bundle has no [training] section (not made by `train`): use --split all")
    })?;
    let p = bundle_dir.join(file);
    let text = std::fs::read_to_string(&p).map_err(|e| EnsembleError::io(&p, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &[1, 1, 0, 0]), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5], &[0, 1]), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(roc_auc(&[0.1], &[1]), None);
    }

    #[test]
    fn sensitivity_threshold_is_the_highest_that_reaches_the_target() {
        let probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];
        let labels = [1, 1, 0, 1, 1, 0, 1, 0, 0, 1];
        let t = pick_threshold(&probs, &labels, Criterion::Sensitivity(0.8)).unwrap();
        assert_eq!(t, 0.3); // 5 of 6 positives >= 0.3; 0.5 would give 4 of 6
        assert!(rates(&probs, &labels, t).0 >= 0.8);
        assert!(rates(&probs, &labels, 0.31).0 < 0.8);
        assert_eq!(pick_threshold(&probs, &labels, Criterion::Sensitivity(1.0)).unwrap(), 0.05);
        let y = pick_threshold(&probs, &labels, Criterion::Youden).unwrap();
        let jy = { let (a, b) = rates(&probs, &labels, y); a + b };
        assert!(probs.iter().all(|&t| { let (a, b) = rates(&probs, &labels, t); a + b <= jy + 1e-12 }));
    }

    #[test]
    fn split_is_stratified_seeded_and_order_free() {
        let studies: Vec<Labelled> = (0..40).map(|i| Labelled { id: format!("s{i:02}"), label: u8::from(i % 4 == 0), thoracic: None }).collect();
        let h = holdout_split(&studies, 0.25, 7);
        assert_eq!(h.iter().filter(|&&x| x).count(), 3 + 8); // ceil(0.25*10) + ceil(0.25*30)
        assert_eq!(studies.iter().zip(&h).filter(|(s, x)| **x && s.label == 1).count(), 3);
        let mut rev = studies.clone();
        rev.reverse();
        let hr = holdout_split(&rev, 0.25, 7);
        let set = |s: &[Labelled], h: &[bool]| -> HashSet<String> { s.iter().zip(h).filter(|(_, x)| **x).map(|(s, _)| s.id.clone()).collect() };
        assert_eq!(set(&studies, &h), set(&rev, &hr));
        assert_ne!(set(&studies, &h), set(&studies, &holdout_split(&studies, 0.25, 8)));
    }

    #[test]
    fn reads_labels_csv() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.csv");
        std::fs::write(&p, "study,label,\"thoracic\"\r\na,1,0\n\"b\",0,1\n\n").unwrap();
        let l = read_labels(&p, "study", "label", Some("thoracic")).unwrap();
        assert_eq!(l, vec![Labelled { id: "a".into(), label: 1, thoracic: Some(0) }, Labelled { id: "b".into(), label: 0, thoracic: Some(1) }]);
        std::fs::write(&p, "study,label\na,2\n").unwrap();
        assert!(read_labels(&p, "study", "label", None).is_err());
        std::fs::write(&p, "study,label\n../x,1\n").unwrap();
        assert!(read_labels(&p, "study", "label", None).is_err());
        std::fs::write(&p, "study,label\na,1\na,0\n").unwrap();
        assert!(read_labels(&p, "study", "label", None).is_err());
        assert!(read_labels(&p, "id", "label", None).is_err());
    }
}
