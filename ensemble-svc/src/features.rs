//! Feature construction (celsus-reference §4.1-4.2) from the scores of the model services.
//!
//! Statistics are computed as numpy computes them in float64 (the reference calls `np.mean`,
//! `np.max`, `np.std` on Python lists), including numpy's pairwise summation, so the values are
//! bit-identical to the reference's and the golden/parity tests can compare exactly.

use crate::EnsembleError;
use crate::spec::{Block, FeatureSpec, GROUP_STATS, MODEL_NAMES, Stat, prefixed};
use std::collections::HashMap;

/// The scores of the models that answered, each in the order the service sent its labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreSet {
    models: Vec<(String, Vec<(String, f64)>)>,
}

impl ScoreSet {
    /// Validates and adds one model's scores: a known model name, given once; finite values;
    /// each label once.
    pub fn insert(&mut self, model: &str, scores: Vec<(String, f64)>) -> Result<(), EnsembleError> {
        if !MODEL_NAMES.contains(&model) {
            return Err(EnsembleError::invalid(format!("unknown model {model:?} (known: {})", MODEL_NAMES.join(", "))));
        }
        if self.get(model).is_some() {
            return Err(EnsembleError::invalid(format!("scores of {model} given twice")));
        }
        let mut seen = std::collections::HashSet::new();
        for (label, v) in &scores {
            if !v.is_finite() {
                return Err(EnsembleError::invalid(format!("{model} {label:?}: value {v} is not finite")));
            }
            if !seen.insert(label.as_str()) {
                return Err(EnsembleError::invalid(format!("{model} {label:?}: label given twice")));
            }
        }
        self.models.push((model.to_string(), scores));
        Ok(())
    }

    pub fn get(&self, model: &str) -> Option<&[(String, f64)]> {
        self.models.iter().find(|(m, _)| m == model).map(|(_, s)| s.as_slice())
    }

    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|(m, _)| m.as_str())
    }

    /// Parses a scores file: `{"supervised": {label: p, ...}, "ctclip": {...}, "mednext": {...},
    /// "fvlm": {...}, "diffusion": {name: value, ...}}`; a model that is absent did not answer.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, EnsembleError> {
        let obj = value.as_object().ok_or_else(|| EnsembleError::invalid("a scores file is a JSON object {model: {label: value}}"))?;
        let mut set = ScoreSet::default();
        for (model, labels) in obj {
            let labels = labels.as_object().ok_or_else(|| EnsembleError::invalid(format!("{model}: expected an object {{label: value}}")))?;
            let scores = labels
                .iter()
                .map(|(l, v)| v.as_f64().map(|v| (l.clone(), v)).ok_or_else(|| EnsembleError::invalid(format!("{model} {l:?}: not a number"))))
                .collect::<Result<Vec<_>, _>>()?;
            set.insert(model, scores)?;
        }
        Ok(set)
    }

    pub fn from_json_str(text: &str) -> Result<Self, EnsembleError> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| EnsembleError::invalid(format!("not JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for (m, s) in &self.models {
            obj.insert(m.clone(), serde_json::Value::Object(s.iter().map(|(l, v)| (l.clone(), serde_json::json!(v))).collect()));
        }
        serde_json::Value::Object(obj)
    }
}

/// Named feature values in insertion order, with Python dict semantics: setting a name again
/// keeps its first position and replaces the value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureVector {
    names: Vec<String>,
    values: Vec<f64>,
    index: HashMap<String, usize>,
}

impl FeatureVector {
    pub fn set(&mut self, name: String, value: f64) {
        match self.index.get(&name) {
            Some(&i) => self.values[i] = value,
            None => {
                self.index.insert(name.clone(), self.names.len());
                self.names.push(name);
                self.values.push(value);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.index.get(name).map(|&i| self.values[i])
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.names.iter().map(String::as_str).zip(self.values.iter().copied())
    }
}

/// Builds every feature the definition yields from the models that answered (reference
/// `prepare_features`, before alignment). Features of models that did not answer are absent.
pub fn build(spec: &FeatureSpec, scores: &ScoreSet) -> FeatureVector {
    let mut fv = FeatureVector::default();
    // the (name, value) pairs each model's scores block produced, for stats and groups
    let mut block_values: HashMap<&str, Vec<(String, f64)>> = HashMap::new();
    let mut block_prefix: HashMap<&str, &str> = HashMap::new();
    for block in &spec.blocks {
        match block {
            Block::Scores { model, prefix, labels, emitted } => {
                block_prefix.insert(model, prefix);
                let Some(sent) = scores.get(model) else { continue };
                let produced: Vec<(String, f64)> = if *emitted {
                    sent.iter().map(|(l, v)| (prefixed(prefix, l), *v)).collect()
                } else {
                    let by_name: HashMap<String, f64> = sent.iter().map(|(l, v)| (prefixed(prefix, l), *v)).collect();
                    labels.iter().flatten().filter_map(|l| {
                        let name = prefixed(prefix, l);
                        by_name.get(&name).map(|&v| (name, v))
                    }).collect()
                };
                for (n, v) in &produced {
                    fv.set(n.clone(), *v);
                }
                block_values.insert(model, produced);
            }
            Block::Stats { features } => {
                for f in features {
                    let Some(values) = block_values.get(f.model.as_str()) else { continue };
                    let vals: Vec<f64> = match &f.exclude_ci {
                        Some(x) => {
                            let x = x.to_lowercase();
                            values.iter().filter(|(n, _)| !n.to_lowercase().contains(&x)).map(|(_, v)| *v).collect()
                        }
                        None => values.iter().map(|(_, v)| *v).collect(),
                    };
                    let value = if vals.is_empty() {
                        f.empty
                    } else {
                        Some(match f.stat {
                            Stat::Mean => np_mean(&vals),
                            Stat::Max => np_max(&vals),
                            Stat::Top3Mean => top_k_mean(&vals, 3),
                            Stat::Std => np_std(&vals),
                        })
                    };
                    if let Some(v) = value {
                        fv.set(f.name.clone(), v);
                    }
                }
            }
            Block::Groups { model, prefix, high, groups } => {
                if !block_values.contains_key(model.as_str()) {
                    continue;
                }
                let member_prefix = block_prefix.get(model.as_str()).copied().unwrap_or_default();
                for g in groups {
                    let vals: Vec<f64> = g.members.iter().filter_map(|m| fv.get(&prefixed(member_prefix, m))).collect();
                    if vals.is_empty() {
                        continue;
                    }
                    let stats = [
                        np_max(&vals),
                        np_mean(&vals),
                        vals.iter().filter(|&&v| v > *high).count() as f64,
                        if vals.len() > 1 { np_std(&vals) } else { 0.0 },
                    ];
                    for (s, v) in GROUP_STATS.iter().zip(stats) {
                        fv.set(format!("{prefix}{}_{s}", g.name), v);
                    }
                }
            }
        }
    }
    fv
}

/// numpy's float64 pairwise summation (`DOUBLE_pairwise_sum`, numpy/_core/src/umath/loops_utils.h.src):
/// a plain loop below 8 values, 8 accumulators up to 128 values, halves (multiples of 8) beyond.
pub fn np_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_sum(&a[..n2]) + np_sum(&a[n2..])
    }
}

/// `np.mean` (sum / n; NaN for no values).
pub fn np_mean(a: &[f64]) -> f64 {
    np_sum(a) / a.len() as f64
}

/// `np.max` (NaN propagates; -inf for no values, where numpy raises).
pub fn np_max(a: &[f64]) -> f64 {
    a.iter().copied().fold(f64::NEG_INFINITY, |m, x| if x.is_nan() || m.is_nan() { f64::NAN } else { m.max(x) })
}

/// `np.std` with ddof 0: sqrt(mean((x - mean)^2)).
pub fn np_std(a: &[f64]) -> f64 {
    let m = np_mean(a);
    let sq: Vec<f64> = a.iter().map(|&x| (x - m) * (x - m)).collect();
    (np_sum(&sq) / a.len() as f64).sqrt()
}

/// `np.mean(sorted(values, reverse=True)[:k])`.
pub fn top_k_mean(a: &[f64], k: usize) -> f64 {
    let mut s = a.to_vec();
    s.sort_by(|x, y| y.total_cmp(x));
    s.truncate(k);
    np_mean(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &[(&str, f64)])]) -> ScoreSet {
        let mut s = ScoreSet::default();
        for (m, l) in entries {
            s.insert(m, l.iter().map(|(a, b)| (a.to_string(), *b)).collect()).unwrap();
        }
        s
    }

    #[test]
    fn numpy_sum_matches_known_values() {
        // np.sum([0.1]*10) == 1.0 with pairwise summation (a naive loop gives 0.9999999999999999)
        assert_eq!(np_sum(&[0.1; 10]), 1.0);
        let naive: f64 = [0.1f64; 10].iter().sum();
        assert_ne!(naive, 1.0);
        // np.std([0.1, 0.2, 0.4]) == 0.12472191289246473
        assert_eq!(np_std(&[0.1, 0.2, 0.4]), 0.12472191289246473);
        assert_eq!(top_k_mean(&[0.1, 0.9, 0.5, 0.7], 3), (0.9 + 0.7 + 0.5) / 3.0);
        assert_eq!(top_k_mean(&[0.2, 0.4], 3), 0.30000000000000004);
        assert_eq!(np_max(&[0.2, 0.4, 0.1]), 0.4);
    }

    #[test]
    fn dict_semantics_keep_the_first_position() {
        let mut fv = FeatureVector::default();
        fv.set("a".into(), 1.0);
        fv.set("b".into(), 2.0);
        fv.set("a".into(), 3.0);
        assert_eq!(fv.names(), ["a", "b"]);
        assert_eq!(fv.values(), [3.0, 2.0]);
    }

    #[test]
    fn scores_are_validated() {
        let mut s = ScoreSet::default();
        assert!(s.insert("nope", vec![]).is_err());
        assert!(s.insert("ctclip", vec![("a".into(), f64::NAN)]).is_err());
        assert!(s.insert("ctclip", vec![("a".into(), 0.1), ("a".into(), 0.2)]).is_err());
        s.insert("ctclip", vec![("a".into(), 0.1)]).unwrap();
        assert!(s.insert("ctclip", vec![]).is_err());
        assert!(ScoreSet::from_json_str(r#"{"ctclip": {"a": "x"}}"#).is_err());
        assert!(ScoreSet::from_json_str(r#"[1]"#).is_err());
    }

    #[test]
    fn mednext_normal_is_excluded_from_aggregates_and_empty_gives_zero() {
        let spec = FeatureSpec::reference();
        let fv = build(&spec, &set(&[("mednext", &[("normal", 0.9), ("cancer", 0.2), ("kolyan_Abnormal_x", 0.95), ("pneumothorax", 0.4)]), ("fvlm", &[])]));
        assert_eq!(fv.names()[..3], ["kolyan_normal", "kolyan_cancer", "kolyan_Abnormal_x"]);
        assert_eq!(fv.get("kolyan_max"), Some(0.4)); // "Abnormal" contains "normal" (substring rule)
        assert_eq!(fv.get("kolyan_mean"), Some(np_mean(&[0.2, 0.4])));
        assert_eq!(fv.get("kolyan_top3_mean"), Some(np_mean(&[0.4, 0.2])));
        assert_eq!((fv.get("okhr_mean"), fv.get("okhr_max"), fv.get("okhr_top3_mean")), (Some(0.0), Some(0.0), Some(0.0)));
        // models that did not answer produce nothing
        assert_eq!(fv.get("supervised_mean_probability"), None);
        assert!(fv.names().iter().all(|n| !n.starts_with("ctclip")));
    }

    #[test]
    fn groups_use_the_members_present() {
        let spec = FeatureSpec::reference();
        let fv = build(&spec, &set(&[("ctclip", &[("Pleural effusion", 0.7), ("Pneumothorax", 0.6), ("Thyroid nodule", 0.2), ("Postoperative changes (lobectomy or pneumonectomy)", 0.8)])]));
        assert_eq!(fv.get("ctclip_group_pleural_max"), Some(0.7));
        assert_eq!(fv.get("ctclip_group_pleural_count_high"), Some(2.0));
        assert_eq!(fv.get("ctclip_group_pleural_std"), Some(np_std(&[0.7, 0.6])));
        assert_eq!(fv.get("ctclip_group_incidentalomas_std"), Some(0.0));
        assert_eq!(fv.get("ctclip_group_postop_mean"), Some(0.8));
        assert_eq!(fv.get("ctclip_group_airways_max"), None);
        // 4 labels + 3 CT-CLIP aggregates (over the labels present) + 3 groups x 4
        assert_eq!(fv.len(), 4 + 3 + 12);
        assert_eq!(fv.get("ctclip_mean_probability"), Some(np_mean(&[0.7, 0.6, 0.2, 0.8])));
    }
}
