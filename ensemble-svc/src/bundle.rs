//! The ensemble bundle: a directory with `manifest.toml`, `main.txt` (+ `thoracic.txt`) in
//! LightGBM's text format, and optionally `features.toml` (else the reference's definition).
//!
//! ```toml
//! format = 1
//!
//! [ensemble]
//! version = "site-2026-01"            # free text, logged at start-up
//! demo = false                        # true for the generated demo bundle: NOT a medical model
//! description = "..."
//!
//! [main]
//! file = "main.txt"
//! threshold = 0.59                    # pathology = probability >= threshold
//!
//! [thoracic]                          # optional
//! file = "thoracic.txt"
//! threshold = 0.5
//! features = "main"                   # "main": fed the vector aligned to the main model's list
//!                                     # (reference §4.5); "own": aligned to its own list
//!
//! [features]
//! file = "features.toml"              # optional; default: the reference's definition
//! missing = "zero"                    # zero | nan
//! name_matching = "lightgbm"          # lightgbm | exact (the reference's bare-LGBMClassifier quirk)
//!
//! [files]                             # optional sha256 of files; checked at load when present
//! "main.txt" = "9f2c..."
//! ```
//! `[source]` (written by `tools/export/convert_lightgbm.py`) and `[training]` (written by
//! `ensemble-svc train`) are informational.

use crate::EnsembleError;
use crate::align::{MissingPolicy, NameMatching};
use crate::spec::FeatureSpec;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.toml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    #[serde(default)]
    pub ensemble: Info,
    pub main: ModelEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoracic: Option<ThoracicEntry>,
    #[serde(default)]
    pub features: FeaturesEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingInfo>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Info {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub demo: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub file: String,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThoracicFeatures {
    /// The vector aligned to the main model's list, whatever the thoracic model lists (reference §4.5).
    #[default]
    Main,
    /// The vector aligned to the thoracic model's own list.
    Own,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThoracicEntry {
    pub file: String,
    pub threshold: f64,
    #[serde(default)]
    pub features: ThoracicFeatures,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct FeaturesEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default)]
    pub missing: MissingPolicy,
    #[serde(default)]
    pub name_matching: NameMatching,
}

/// What `ensemble-svc train` did (informational; `calibrate` reads `holdout_file`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub seed: u64,
    pub holdout_fraction: f64,
    pub n_train: usize,
    pub n_holdout: usize,
    pub label_column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoracic_label_column: Option<String>,
    pub auc_main_holdout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc_thoracic_holdout: Option<f64>,
    /// Study ids of the held-out split, one per line.
    pub holdout_file: String,
}

/// A bundle read from disk: the manifest, the model texts and the feature definition.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub main_text: String,
    pub thoracic_text: Option<String>,
    pub spec: FeatureSpec,
    /// `true` when the bundle has no `features.toml` and the reference's definition is used.
    pub spec_is_default: bool,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, EnsembleError> {
    std::fs::read(path).map_err(|e| EnsembleError::io(path, e))
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, EnsembleError> {
    String::from_utf8(bytes).map_err(|_| EnsembleError::bundle(path, "not UTF-8 text"))
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, EnsembleError> {
        let path = dir.join(MANIFEST);
        let text = utf8(&path, read(&path)?)?;
        let m: Manifest = toml::from_str(&text).map_err(|e| EnsembleError::bundle(&path, e.to_string()))?;
        if m.format != 1 {
            return Err(EnsembleError::bundle(&path, format!("format {} is not supported (expected 1)", m.format)));
        }
        check_threshold(&path, "main.threshold", m.main.threshold)?;
        if let Some(t) = &m.thoracic {
            check_threshold(&path, "thoracic.threshold", t.threshold)?;
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<(), EnsembleError> {
        let path = dir.join(MANIFEST);
        let text = toml::to_string(self).map_err(|e| EnsembleError::bundle(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| EnsembleError::io(&path, e))
    }
}

pub fn check_threshold(path: &Path, what: &str, t: f64) -> Result<(), EnsembleError> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(EnsembleError::bundle(path, format!("{what} = {t} is not within [0, 1]")))
    }
}

/// A file name inside the bundle: no absolute paths, no `..`.
fn bundle_file(dir: &Path, name: &str) -> Result<PathBuf, EnsembleError> {
    let p = Path::new(name);
    if name.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(EnsembleError::bundle(dir.join(MANIFEST), format!("file {name:?} must be a plain path inside the bundle")));
    }
    Ok(dir.join(p))
}

impl Bundle {
    /// Reads and checks a bundle: manifest, checksums (when `[files]` is given, it must cover
    /// every file the manifest uses), model texts, feature definition.
    pub fn load(dir: &Path) -> Result<Self, EnsembleError> {
        let manifest = Manifest::read(dir)?;
        let mut used = vec![manifest.main.file.clone()];
        used.extend(manifest.thoracic.as_ref().map(|t| t.file.clone()));
        used.extend(manifest.features.file.clone());
        if !manifest.files.is_empty() {
            for u in &used {
                if !manifest.files.contains_key(u) {
                    return Err(EnsembleError::bundle(dir.join(MANIFEST), format!("[files] has no sha256 for {u:?}")));
                }
            }
            for (name, expected) in &manifest.files {
                let path = bundle_file(dir, name)?;
                let found = sha256_hex(&read(&path)?);
                if !found.eq_ignore_ascii_case(expected) {
                    return Err(EnsembleError::Checksum { path, expected: expected.clone(), found });
                }
            }
        }
        let main_path = bundle_file(dir, &manifest.main.file)?;
        let main_text = utf8(&main_path, read(&main_path)?)?;
        let thoracic_text = match &manifest.thoracic {
            Some(t) => {
                let p = bundle_file(dir, &t.file)?;
                Some(utf8(&p, read(&p)?)?)
            }
            None => None,
        };
        let (spec, spec_is_default) = match &manifest.features.file {
            Some(f) => {
                let p = bundle_file(dir, f)?;
                let text = utf8(&p, read(&p)?)?;
                (FeatureSpec::parse(&text).map_err(|e| EnsembleError::bundle(&p, e.to_string()))?, false)
            }
            None => (FeatureSpec::reference(), true),
        };
        Ok(Bundle { dir: dir.to_path_buf(), manifest, main_text, thoracic_text, spec, spec_is_default })
    }

    /// sha256 of the main model text (logged at start-up).
    pub fn main_sha256(&self) -> String {
        sha256_hex(self.main_text.as_bytes())
    }
}

/// Writes a bundle directory: the model texts, `features.toml`, and a manifest whose `[files]`
/// holds their sha256 (`manifest.files` is replaced).
pub fn write_bundle(dir: &Path, manifest: &Manifest, main_text: &str, thoracic_text: Option<&str>, spec: &FeatureSpec, extra_files: &[(&str, String)]) -> Result<(), EnsembleError> {
    std::fs::create_dir_all(dir).map_err(|e| EnsembleError::io(dir, e))?;
    let mut m = manifest.clone();
    m.files.clear();
    let mut put = |name: &str, text: &str| -> Result<(), EnsembleError> {
        let p = bundle_file(dir, name)?;
        std::fs::write(&p, text).map_err(|e| EnsembleError::io(&p, e))?;
        m.files.insert(name.to_string(), sha256_hex(text.as_bytes()));
        Ok(())
    };
    put(&manifest.main.file, main_text)?;
    if let (Some(t), Some(text)) = (&manifest.thoracic, thoracic_text) {
        put(&t.file, text)?;
    }
    let spec_file = manifest.features.file.clone().unwrap_or_else(|| "features.toml".into());
    put(&spec_file, &spec.to_toml())?;
    m.features.file = Some(spec_file);
    for (name, text) in extra_files {
        put(name, text)?;
    }
    m.write(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            ensemble: Info { version: "t".into(), demo: false, description: String::new() },
            main: ModelEntry { file: "main.txt".into(), threshold: 0.59 },
            thoracic: None,
            features: FeaturesEntry::default(),
            source: None,
            training: None,
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn writes_reads_and_checks_sha256() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &manifest(), "not really a model", None, &FeatureSpec::reference(), &[]).unwrap();
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(b.main_text, "not really a model");
        assert_eq!(b.manifest.features.file.as_deref(), Some("features.toml"));
        assert!(!b.spec_is_default);
        assert_eq!(b.spec, FeatureSpec::reference());
        assert_eq!(b.manifest.features.missing, MissingPolicy::Zero);
        std::fs::write(dir.path().join("main.txt"), "tampered").unwrap();
        assert!(matches!(Bundle::load(dir.path()), Err(EnsembleError::Checksum { .. })));
    }

    #[test]
    fn refuses_bad_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            "format = 1\n[main]\nfile = \"main.txt\"\nthreshold = 1.5\n",
            "format = 2\n[main]\nfile = \"main.txt\"\nthreshold = 0.5\n",
            "format = 1\n[main]\nfile = \"../main.txt\"\nthreshold = 0.5\n",
            "format = 1\n[main]\nfile = \"main.txt\"\nthreshold = 0.5\nsurprise = 1\n",
            "format = 1\n[main]\nfile = \"main.txt\"\nthreshold = 0.5\n[features]\nmissing = \"mean\"\n",
            "format = 1\n[main]\nfile = \"main.txt\"\nthreshold = 0.5\n[files]\n\"other.txt\" = \"00\"\n",
        ];
        std::fs::write(dir.path().join("main.txt"), "x").unwrap();
        for c in cases {
            std::fs::write(dir.path().join(MANIFEST), c).unwrap();
            assert!(Bundle::load(dir.path()).is_err(), "{c}");
        }
        std::fs::write(dir.path().join(MANIFEST), "format = 1\n[main]\nfile = \"main.txt\"\nthreshold = 0.5\n").unwrap();
        let b = Bundle::load(dir.path()).unwrap();
        assert!(b.spec_is_default);
    }
}
