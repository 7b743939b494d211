//! Matching the built features to a LightGBM model's feature list.
//!
//! LightGBM 4.7 rewrites feature names when a Dataset gets them; the text model (and
//! `feature_names_in_` of a bare `LGBMClassifier`) lists the rewritten names. The rules, from
//! the LightGBM 4.7.0 sources (vendored by lightgbm3-sys 1.0.11, identical to the PyPI wheel):
//! - Python `lightgbm/basic.py` `_data_from_pandas`: `feature_name = [str(col) for col in data.columns]`
//!   (no other change on the Python side).
//! - C++ `include/LightGBM/dataset.h` `Dataset::set_feature_names`: every name must pass
//!   `Common::CheckAllowedJSON` (`include/LightGBM/utils/common.h`): a name containing any of
//!   `"` `,` `:` `[` `]` `{` `}` is refused ("Do not support special JSON characters in feature
//!   name."); then every ASCII space `' '` is replaced with `_` (`std::replace(..., ' ', '_')`;
//!   tabs and other whitespace are kept); duplicate names after that are refused.
//! - `src/boosting/gbdt_model_text.cpp`: the text model writes `feature_names=` joined with `' '`
//!   and reads it back split on `' '`.
//!
//! So a built name matches a model name when they are equal, or when the built name with every
//! `' '` replaced by `_` is equal to it ([`NameMatching::Lightgbm`], the default). The reference
//! compared names exactly (its bare-`LGBMClassifier` quirk, celsus-reference §4.3), which
//! [`NameMatching::Exact`] reproduces.

use crate::features::FeatureVector;
use crate::spec::Producible;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The characters LightGBM refuses in feature names (`Common::CheckAllowedJSON`).
pub const LIGHTGBM_FORBIDDEN: [char; 7] = ['"', ',', ':', '[', ']', '{', '}'];

/// The name LightGBM 4.7 stores for `name`, or the first forbidden character.
pub fn lightgbm_name(name: &str) -> Result<String, char> {
    if let Some(c) = name.chars().find(|c| LIGHTGBM_FORBIDDEN.contains(c)) {
        return Err(c);
    }
    Ok(name.replace(' ', "_"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NameMatching {
    /// Equal, or equal after LightGBM's own rewriting (`' '` -> `_`).
    #[default]
    Lightgbm,
    /// Equal only: reproduces the reference's bare-LGBMClassifier quirk (names with spaces never match).
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// A missing feature is 0.0 (the reference).
    #[default]
    Zero,
    /// A missing feature is NaN: LightGBM's missing-value path (the split's default direction;
    /// splits trained without missing values treat NaN as 0.0).
    Nan,
}

impl MissingPolicy {
    pub fn fill(self) -> f64 {
        match self {
            MissingPolicy::Zero => 0.0,
            MissingPolicy::Nan => f64::NAN,
        }
    }
}

/// A model's feature list and how built names are matched to it.
#[derive(Debug, Clone)]
pub struct Alignment {
    names: Vec<String>,
    matching: NameMatching,
}

/// A feature vector in model order.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    pub values: Vec<f64>,
    /// Indices (model order) of the features that could not be built.
    pub missing: Vec<usize>,
}

impl Alignment {
    pub fn new(model_names: Vec<String>, matching: NameMatching) -> Self {
        Self { names: model_names, matching }
    }

    /// The model's feature names, in model order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn matching(&self) -> NameMatching {
        self.matching
    }

    fn key(&self, built: &str) -> String {
        match self.matching {
            NameMatching::Lightgbm => built.replace(' ', "_"),
            NameMatching::Exact => built.to_string(),
        }
    }

    /// The built vector in model order; features that were not built get `policy`'s value.
    /// An exact name match wins over a match after rewriting; among rewritten matches, the
    /// first built feature wins.
    pub fn align(&self, fv: &FeatureVector, policy: MissingPolicy) -> Aligned {
        let mut rewritten: HashMap<String, f64> = HashMap::new();
        if self.matching == NameMatching::Lightgbm {
            for (n, v) in fv.iter() {
                rewritten.entry(self.key(n)).or_insert(v);
            }
        }
        let mut values = Vec::with_capacity(self.names.len());
        let mut missing = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            match fv.get(name).or_else(|| rewritten.get(name).copied()) {
                Some(v) => values.push(v),
                None => {
                    values.push(policy.fill());
                    missing.push(i);
                }
            }
        }
        Aligned { values, missing }
    }

    /// The model's features that nothing in `producible` can ever yield.
    pub fn unproducible(&self, producible: &[Producible]) -> Vec<String> {
        let mut names = std::collections::HashSet::new();
        let mut prefixes = Vec::new();
        for p in producible {
            match p {
                Producible::Name(n) => {
                    names.insert(n.clone());
                    names.insert(self.key(n));
                }
                Producible::Prefix(p) => prefixes.push(self.key(p)),
            }
        }
        self.names.iter().filter(|n| !names.contains(*n) && !prefixes.iter().any(|p| n.starts_with(p.as_str()))).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fv(entries: &[(&str, f64)]) -> FeatureVector {
        let mut f = FeatureVector::default();
        for (n, v) in entries {
            f.set(n.to_string(), *v);
        }
        f
    }

    #[test]
    fn lightgbm_rewrites_spaces_only_and_refuses_json_characters() {
        assert_eq!(lightgbm_name("ctclip_Postoperative changes (lobectomy or pneumonectomy)").unwrap(), "ctclip_Postoperative_changes_(lobectomy_or_pneumonectomy)");
        assert_eq!(lightgbm_name("okhr_Lung nodule").unwrap(), "okhr_Lung_nodule");
        assert_eq!(lightgbm_name("a\tb").unwrap(), "a\tb");
        assert_eq!(lightgbm_name("Ground-glass opacity").unwrap(), "Ground-glass_opacity");
        for bad in ["a:b", "a,b", "a[1]", "{x}", "say \"x\""] {
            assert!(lightgbm_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_after_rewriting_and_reports_missing_in_model_order() {
        let model = vec!["okhr_Lung_nodule".to_string(), "kolyan_cancer".into(), "ctclip_Pulmonary_nodule".into(), "x".into()];
        let built = fv(&[("ctclip_Pulmonary nodule", 0.3), ("okhr_Lung nodule", 0.7), ("extra", 9.0)]);
        let a = Alignment::new(model.clone(), NameMatching::Lightgbm).align(&built, MissingPolicy::Zero);
        assert_eq!(a.values, vec![0.7, 0.0, 0.3, 0.0]);
        assert_eq!(a.missing, vec![1, 3]);
        let n = Alignment::new(model.clone(), NameMatching::Lightgbm).align(&built, MissingPolicy::Nan);
        assert!(n.values[1].is_nan() && n.values[3].is_nan() && n.values[0] == 0.7);
        // the reference's quirk: names with spaces never match the rewritten ones
        let q = Alignment::new(model, NameMatching::Exact).align(&built, MissingPolicy::Zero);
        assert_eq!(q.values, vec![0.0; 4]);
        assert_eq!(q.missing, vec![0, 1, 2, 3]);
    }

    #[test]
    fn an_exact_name_wins_over_a_rewritten_one() {
        let built = fv(&[("a b", 1.0), ("a_b", 2.0)]);
        let a = Alignment::new(vec!["a_b".into()], NameMatching::Lightgbm).align(&built, MissingPolicy::Zero);
        assert_eq!(a.values, vec![2.0]);
    }

    #[test]
    fn unproducible_names_and_prefix_rules() {
        let model = vec!["okhr_Lung_nodule".to_string(), "kolyan_whatever".into(), "diffusion_reconstruction_mean".into()];
        let p = vec![Producible::Name("okhr_Lung nodule".into()), Producible::Prefix("kolyan_".into())];
        assert_eq!(Alignment::new(model.clone(), NameMatching::Lightgbm).unproducible(&p), vec!["diffusion_reconstruction_mean".to_string()]);
        assert_eq!(Alignment::new(model, NameMatching::Exact).unproducible(&p), vec!["okhr_Lung_nodule".to_string(), "diffusion_reconstruction_mean".into()]);
    }
}
