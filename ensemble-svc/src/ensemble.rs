//! The ensemble: features -> alignment -> main (+ thoracic) model -> decision + top pathologies.

use crate::align::{Alignment, MissingPolicy, NameMatching};
use crate::booster::{Booster, LgbmBooster};
use crate::bundle::{Bundle, ThoracicFeatures, check_threshold};
use crate::features::{FeatureVector, ScoreSet, build};
use crate::spec::{FeatureSpec, MODEL_NAMES};
use crate::top::top_pathologies;
use crate::EnsembleError;

/// Start-up settings that may override the bundle (flags / environment).
#[derive(Debug, Clone)]
pub struct Options {
    pub threshold: Option<f64>,
    pub threshold_thoracic: Option<f64>,
    pub missing: Option<MissingPolicy>,
    /// The model services this deployment runs (the start-up check uses them).
    pub models: Vec<String>,
    /// Start even if a model expects features no configured model service can produce.
    pub allow_unproducible: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { threshold: None, threshold_thoracic: None, missing: None, models: MODEL_NAMES.iter().map(|s| s.to_string()).collect(), allow_unproducible: false }
    }
}

struct Thoracic<B> {
    booster: B,
    /// `None`: fed the vector aligned to the main model's list (reference §4.5).
    own: Option<Alignment>,
    threshold: f64,
}

/// A loaded ensemble. Generic over the booster; not `Send` with [`LgbmBooster`] (see
/// [`crate::service`] for how the service runs it on its own thread).
pub struct Ensemble<B: Booster> {
    spec: FeatureSpec,
    main: B,
    align: Alignment,
    thoracic: Option<Thoracic<B>>,
    threshold: f64,
    missing: MissingPolicy,
    models: Vec<String>,
    /// Start-up notes for the log (differences that are allowed but worth saying).
    notes: Vec<String>,
}

/// The answer for one study.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub probability: f64,
    pub pathology: u32,
    pub thoracic: Option<(f64, u32)>,
    pub top_pathologies: Vec<String>,
    /// Model features that could not be built (names as the model lists them, model order).
    pub missing_features: Vec<String>,
    /// Configured model services whose scores were not given.
    pub missing_models: Vec<String>,
    pub threshold: f64,
    pub threshold_thoracic: Option<f64>,
}

/// `pathology = probability >= threshold` (reference: `1 if prob >= OPTIMAL_THRESHOLD else 0`).
pub fn decide(p: f64, threshold: f64) -> u32 {
    u32::from(p >= threshold)
}

impl Ensemble<LgbmBooster> {
    /// Loads the bundle's models (LightGBM) and checks everything.
    pub fn from_bundle(bundle: &Bundle, opts: &Options) -> Result<Self, EnsembleError> {
        let main = LgbmBooster::from_text(&bundle.main_text, "main model")?;
        let thoracic = bundle.thoracic_text.as_deref().map(|t| LgbmBooster::from_text(t, "thoracic model")).transpose()?;
        let m = &bundle.manifest;
        let path = bundle.dir.join(crate::bundle::MANIFEST);
        let threshold = opts.threshold.unwrap_or(m.main.threshold);
        check_threshold(&path, "threshold", threshold)?;
        let thoracic = match (thoracic, &m.thoracic) {
            (Some(b), Some(t)) => {
                let th = opts.threshold_thoracic.unwrap_or(t.threshold);
                check_threshold(&path, "thoracic threshold", th)?;
                Some((b, th, t.features))
            }
            _ => None,
        };
        Self::new(bundle.spec.clone(), main, thoracic, threshold, opts.missing.unwrap_or(m.features.missing), m.features.name_matching, opts)
    }
}

impl<B: Booster> Ensemble<B> {
    /// Assembles an ensemble and runs the start-up checks: every feature a model expects must be
    /// producible by the configured models (unless allowed); a thoracic model fed the main
    /// vector must expect as many features as the main model.
    pub fn new(
        spec: FeatureSpec,
        main: B,
        thoracic: Option<(B, f64, ThoracicFeatures)>,
        threshold: f64,
        missing: MissingPolicy,
        matching: NameMatching,
        opts: &Options,
    ) -> Result<Self, EnsembleError> {
        let mut notes = Vec::new();
        let producible = spec.producible(&opts.models);
        let align = Alignment::new(main.feature_names().to_vec(), matching);
        let mut check = |model: &str, a: &Alignment| -> Result<(), EnsembleError> {
            let bad = a.unproducible(&producible);
            if bad.is_empty() {
                return Ok(());
            }
            let e = EnsembleError::Unproducible { model: model.into(), features: bad };
            if opts.allow_unproducible {
                notes.push(format!("allowed: {e}; they are always filled by the missing-feature policy"));
                Ok(())
            } else {
                Err(e)
            }
        };
        check("main", &align)?;
        let thoracic = match thoracic {
            None => None,
            Some((booster, threshold, ThoracicFeatures::Main)) => {
                let (n_main, n_thoracic) = (align.names().len(), booster.feature_names().len());
                if n_main != n_thoracic {
                    return Err(EnsembleError::ThoracicShape { main: n_main, thoracic: n_thoracic });
                }
                if booster.feature_names() != align.names() {
                    let differ = booster.feature_names().iter().zip(align.names()).filter(|(a, b)| a != b).count();
                    notes.push(format!(
                        "the thoracic model lists other features than the main model ({differ} of {n_main} positions differ); \
                         as in the reference (§4.5) it is fed the vector aligned to the main model's list (set \
                         [thoracic] features = \"own\" to align it to its own list)"
                    ));
                }
                Some(Thoracic { booster, own: None, threshold })
            }
            Some((booster, threshold, ThoracicFeatures::Own)) => {
                let own = Alignment::new(booster.feature_names().to_vec(), matching);
                check("thoracic", &own)?;
                Some(Thoracic { booster, own: Some(own), threshold })
            }
        };
        Ok(Self { spec, main, align, thoracic, threshold, missing, models: opts.models.clone(), notes })
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// The main model's feature names, model order.
    pub fn feature_names(&self) -> &[String] {
        self.align.names()
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    pub fn threshold_thoracic(&self) -> Option<f64> {
        self.thoracic.as_ref().map(|t| t.threshold)
    }

    pub fn missing_policy(&self) -> MissingPolicy {
        self.missing
    }

    pub fn has_thoracic(&self) -> bool {
        self.thoracic.is_some()
    }

    /// Every feature built from the scores, in insertion order (before alignment).
    pub fn build(&self, scores: &ScoreSet) -> FeatureVector {
        build(&self.spec, scores)
    }

    /// The main model's vector (model order) and the names of the missing features.
    pub fn features(&self, scores: &ScoreSet) -> (Vec<f64>, Vec<String>) {
        let a = self.align.align(&self.build(scores), self.missing);
        let missing = a.missing.iter().map(|&i| self.align.names()[i].clone()).collect();
        (a.values, missing)
    }

    pub fn predict(&self, scores: &ScoreSet) -> Result<Prediction, EnsembleError> {
        let fv = self.build(scores);
        let a = self.align.align(&fv, self.missing);
        let mut missing_features: Vec<String> = a.missing.iter().map(|&i| self.align.names()[i].clone()).collect();
        let probability = self.main.predict_proba(&a.values)?;
        let thoracic = match &self.thoracic {
            None => None,
            Some(t) => {
                let p = match &t.own {
                    None => t.booster.predict_proba(&a.values)?,
                    Some(own) => {
                        let ta = own.align(&fv, self.missing);
                        for &i in &ta.missing {
                            let n = &own.names()[i];
                            if !missing_features.contains(n) {
                                missing_features.push(n.clone());
                            }
                        }
                        t.booster.predict_proba(&ta.values)?
                    }
                };
                Some((p, decide(p, t.threshold)))
            }
        };
        let given: Vec<&str> = scores.models().collect();
        Ok(Prediction {
            probability,
            pathology: decide(probability, self.threshold),
            thoracic,
            top_pathologies: top_pathologies(&self.spec.top_pathologies, self.align.names(), &a.values),
            missing_features,
            missing_models: self.models.iter().filter(|m| !given.contains(&m.as_str())).cloned().collect(),
            threshold: self.threshold,
            threshold_thoracic: self.threshold_thoracic(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A booster for tests: P = mean of the row (clamped), names given.
    struct MeanBooster(Vec<String>);

    impl Booster for MeanBooster {
        fn feature_names(&self) -> &[String] {
            &self.0
        }
        fn predict_proba(&self, row: &[f64]) -> Result<f64, EnsembleError> {
            Ok((row.iter().map(|v| if v.is_nan() { 0.0 } else { *v }).sum::<f64>() / row.len() as f64).clamp(0.0, 1.0))
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn scores() -> ScoreSet {
        let mut s = ScoreSet::default();
        s.insert("fvlm", vec![("Lung nodule".into(), 0.8), ("Emphysema".into(), 0.4)]).unwrap();
        s.insert("mednext", vec![("normal".into(), 0.9), ("cancer".into(), 0.6)]).unwrap();
        s
    }

    #[test]
    fn decides_with_greater_or_equal() {
        assert_eq!(decide(0.59, 0.59), 1);
        assert_eq!(decide(0.5899999999, 0.59), 0);
    }

    #[test]
    fn refuses_unproducible_features_unless_allowed() {
        let main = MeanBooster(names(&["okhr_Lung_nodule", "diffusion_reconstruction_mean"]));
        let opts = Options::default();
        let r = Ensemble::new(FeatureSpec::reference(), main, None, 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &opts);
        match r {
            Err(EnsembleError::Unproducible { model, features }) => {
                assert_eq!(model, "main");
                assert_eq!(features, names(&["diffusion_reconstruction_mean"]));
            }
            _ => panic!("expected Unproducible"),
        }
        let allow = Options { allow_unproducible: true, ..Options::default() };
        let main = MeanBooster(names(&["okhr_Lung_nodule", "diffusion_reconstruction_mean"]));
        let e = Ensemble::new(FeatureSpec::reference(), main, None, 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &allow).unwrap();
        assert_eq!(e.notes().len(), 1);
        let p = e.predict(&scores()).unwrap();
        assert_eq!(p.missing_features, names(&["diffusion_reconstruction_mean"]));
        assert_eq!(p.probability, 0.4);
        // a model service that is not configured cannot produce its features
        let no_fvlm = Options { models: names(&["supervised", "ctclip", "mednext", "diffusion"]), ..Options::default() };
        let main = MeanBooster(names(&["okhr_Lung_nodule"]));
        assert!(Ensemble::new(FeatureSpec::reference(), main, None, 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &no_fvlm).is_err());
    }

    #[test]
    fn thoracic_is_fed_the_main_vector_or_its_own() {
        let main = MeanBooster(names(&["okhr_Lung_nodule", "kolyan_cancer"]));
        let thor = MeanBooster(names(&["kolyan_cancer", "okhr_Emphysema"]));
        let e = Ensemble::new(FeatureSpec::reference(), main, Some((thor, 0.7, ThoracicFeatures::Main)), 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &Options::default()).unwrap();
        assert_eq!(e.notes().len(), 1, "the differing lists are reported");
        let p = e.predict(&scores()).unwrap();
        assert_eq!(p.probability, 0.7);
        assert_eq!(p.thoracic, Some((0.7, 1)));
        assert_eq!(p.top_pathologies, names(&["Cancer", "Lung nodule"]));
        assert_eq!(p.missing_models, names(&["supervised", "ctclip", "diffusion"]));
        let main = MeanBooster(names(&["okhr_Lung_nodule", "kolyan_cancer"]));
        let thor = MeanBooster(names(&["kolyan_cancer", "okhr_Emphysema"]));
        let e = Ensemble::new(FeatureSpec::reference(), main, Some((thor, 0.7, ThoracicFeatures::Own)), 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &Options::default()).unwrap();
        assert_eq!(e.predict(&scores()).unwrap().thoracic, Some((0.5, 0)));
        let main = MeanBooster(names(&["okhr_Lung_nodule", "kolyan_cancer"]));
        let thor = MeanBooster(names(&["kolyan_cancer"]));
        assert!(matches!(
            Ensemble::new(FeatureSpec::reference(), main, Some((thor, 0.5, ThoracicFeatures::Main)), 0.5, MissingPolicy::Zero, NameMatching::Lightgbm, &Options::default()),
            Err(EnsembleError::ThoracicShape { main: 2, thoracic: 1 })
        ));
    }
}
