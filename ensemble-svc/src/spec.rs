//! The feature definition: which features exist, in which order, from which model's scores.
//! It is data (`features.toml` in the bundle); the reference's definition
//! (`reference/features.toml`, celsus-reference §4.1-4.2) is embedded as the default.

use crate::EnsembleError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The reference's definition (165 features with all five models), embedded.
pub const REFERENCE_FEATURES_TOML: &str = include_str!("../reference/features.toml");

/// The five model services, as named in `Scores.model`.
pub const MODEL_NAMES: [&str; 5] = ["supervised", "ctclip", "mednext", "fvlm", "diffusion"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub format: u32,
    #[serde(rename = "block")]
    pub blocks: Vec<Block>,
    pub top_pathologies: TopSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Block {
    /// One feature per label of `model`: `prefix + label` (prefix not doubled).
    Scores {
        model: String,
        prefix: String,
        /// `emitted = false` (default): exactly `labels`, in that order; labels the service sends
        /// beyond them are dropped. `emitted = true`: every label the service sends, in its order;
        /// `labels` (optional) is what it can ever send (used by the start-up check).
        #[serde(default)]
        labels: Option<Vec<String>>,
        #[serde(default)]
        emitted: bool,
    },
    /// Aggregates over one model's block values.
    Stats { features: Vec<StatFeature> },
    /// Group statistics over members of one model's labels: `{prefix}{group}_{max,mean,count_high,std}`.
    Groups { model: String, prefix: String, high: f64, groups: Vec<Group> },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatFeature {
    pub name: String,
    pub model: String,
    pub stat: Stat,
    /// Values whose feature name contains this (case-insensitive) are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_ci: Option<String>,
    /// Value when the model answered but no value is left; `None`: the feature is missing then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Mean,
    Max,
    Top3Mean,
    Std,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
}

/// The four statistics of every group, in feature order.
pub const GROUP_STATS: [&str; 4] = ["max", "mean", "count_high", "std"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopSpec {
    /// Case-sensitive substrings that disqualify a feature (every source).
    pub exclude: Vec<String>,
    /// Case-insensitive substrings that disqualify a feature (every source).
    pub exclude_ci: Vec<String>,
    /// Display name: the first of these that prefixes the feature name is removed.
    pub strip_prefixes: Vec<String>,
    pub sources: Vec<TopSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopSource {
    pub prefix: String,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `prefix + label`, unless the label already starts with the prefix (reference `_ensure_prefixed`).
pub fn prefixed(prefix: &str, label: &str) -> String {
    if label.starts_with(prefix) { label.to_string() } else { format!("{prefix}{label}") }
}

/// What a block can produce, for the start-up check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Producible {
    Name(String),
    /// Any feature name with this prefix (an `emitted` block without a label list).
    Prefix(String),
}

impl FeatureSpec {
    /// The reference's definition.
    pub fn reference() -> Self {
        Self::parse(REFERENCE_FEATURES_TOML).expect("the embedded reference feature definition is valid")
    }

    pub fn parse(text: &str) -> Result<Self, EnsembleError> {
        let spec: FeatureSpec = toml::from_str(text).map_err(|e| EnsembleError::spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a feature definition serialises")
    }

    fn validate(&self) -> Result<(), EnsembleError> {
        if self.format != 1 {
            return Err(EnsembleError::spec(format!("format {} is not supported (expected 1)", self.format)));
        }
        let mut scored = HashSet::new();
        for b in &self.blocks {
            match b {
                Block::Scores { model, prefix, labels, emitted } => {
                    known_model(model)?;
                    if prefix.is_empty() {
                        return Err(EnsembleError::spec(format!("scores block of {model}: empty prefix")));
                    }
                    if !emitted && labels.as_ref().is_none_or(Vec::is_empty) {
                        return Err(EnsembleError::spec(format!("scores block of {model}: `labels` is required unless `emitted = true`")));
                    }
                    if !scored.insert(model.clone()) {
                        return Err(EnsembleError::spec(format!("two scores blocks for {model}")));
                    }
                }
                Block::Stats { features } => {
                    for f in features {
                        if !scored.contains(&f.model) {
                            return Err(EnsembleError::spec(format!("stat {}: no scores block of {} before it", f.name, f.model)));
                        }
                    }
                }
                Block::Groups { model, groups, high, .. } => {
                    if !scored.contains(model) {
                        return Err(EnsembleError::spec(format!("groups: no scores block of {model} before it")));
                    }
                    if !high.is_finite() {
                        return Err(EnsembleError::spec("groups: `high` must be finite"));
                    }
                    if groups.iter().any(|g| g.members.is_empty()) {
                        return Err(EnsembleError::spec("groups: a group without members"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The scores block of `model`, if any.
    pub fn scores_block(&self, model: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| matches!(b, Block::Scores { model: m, .. } if m == model))
    }

    /// The models this definition reads.
    pub fn models(&self) -> Vec<String> {
        self.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Scores { model, .. } => Some(model.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every feature the definition can produce when `models` answer, in insertion order.
    pub fn producible(&self, models: &[String]) -> Vec<Producible> {
        let on = |m: &str| models.iter().any(|x| x == m);
        let mut out = Vec::new();
        for b in &self.blocks {
            match b {
                Block::Scores { model, prefix, labels, emitted } if on(model) => match labels {
                    Some(labels) => out.extend(labels.iter().map(|l| Producible::Name(prefixed(prefix, l)))),
                    None if *emitted => out.push(Producible::Prefix(prefix.clone())),
                    None => {}
                },
                Block::Stats { features } => {
                    out.extend(features.iter().filter(|f| on(&f.model)).map(|f| Producible::Name(f.name.clone())));
                }
                Block::Groups { model, prefix, groups, .. } if on(model) => {
                    for g in groups {
                        out.extend(GROUP_STATS.iter().map(|s| Producible::Name(format!("{prefix}{}_{s}", g.name))));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn known_model(model: &str) -> Result<(), EnsembleError> {
    if MODEL_NAMES.contains(&model) {
        Ok(())
    } else {
        Err(EnsembleError::spec(format!("unknown model {model:?} (known: {})", MODEL_NAMES.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_definition_has_165_features_with_every_model() {
        let spec = FeatureSpec::reference();
        let all: Vec<String> = MODEL_NAMES.iter().map(|s| s.to_string()).collect();
        let p = spec.producible(&all);
        // 15 + 55 + (mednext: a prefix rule) + 18 + 12 aggregates + 40 group features + 3
        assert_eq!(p.iter().filter(|p| matches!(p, Producible::Name(_))).count(), 15 + 55 + 18 + 12 + 40 + 3);
        assert_eq!(p.iter().filter(|p| matches!(p, Producible::Prefix(_))).collect::<Vec<_>>(), vec![&Producible::Prefix("kolyan_".into())]);
        let Some(Block::Groups { groups, .. }) = spec.blocks.iter().find(|b| matches!(b, Block::Groups { .. })) else { panic!() };
        assert_eq!(groups.len(), 10);
        assert_eq!(groups.iter().map(|g| g.members.len()).sum::<usize>(), 53);
        // every group member is a CT-CLIP label
        let Some(Block::Scores { labels: Some(ctclip), .. }) = spec.scores_block("ctclip") else { panic!() };
        assert_eq!(ctclip.len(), 55);
        assert!(groups.iter().flat_map(|g| &g.members).all(|m| ctclip.contains(m)));
    }

    #[test]
    fn round_trips_through_toml() {
        let spec = FeatureSpec::reference();
        assert_eq!(FeatureSpec::parse(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn refuses_bad_definitions() {
        let bad = [
            "format = 2\nblock = []\n[top_pathologies]\nexclude=[]\nexclude_ci=[]\nstrip_prefixes=[]\nsources=[]",
            "format = 1\n[[block]]\nkind = \"scores\"\nmodel = \"nope\"\nprefix = \"x_\"\nlabels = [\"a\"]\n[top_pathologies]\nexclude=[]\nexclude_ci=[]\nstrip_prefixes=[]\nsources=[]",
            "format = 1\n[[block]]\nkind = \"scores\"\nmodel = \"ctclip\"\nprefix = \"x_\"\n[top_pathologies]\nexclude=[]\nexclude_ci=[]\nstrip_prefixes=[]\nsources=[]",
            "format = 1\n[[block]]\nkind = \"stats\"\nfeatures = [{name=\"m\", model=\"ctclip\", stat=\"mean\"}]\n[top_pathologies]\nexclude=[]\nexclude_ci=[]\nstrip_prefixes=[]\nsources=[]",
        ];
        for b in bad {
            assert!(matches!(FeatureSpec::parse(b), Err(EnsembleError::FeatureSpec { .. })), "{b}");
        }
    }

    #[test]
    fn prefix_is_not_doubled() {
        assert_eq!(prefixed("kolyan_", "cancer"), "kolyan_cancer");
        assert_eq!(prefixed("kolyan_", "kolyan_cancer"), "kolyan_cancer");
        assert_eq!(prefixed("diffusion_classifier_", "diffusion_classifier_max_probability"), "diffusion_classifier_max_probability");
    }
}
