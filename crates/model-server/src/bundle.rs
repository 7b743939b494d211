//! Model bundles: `manifest.toml` + `model.onnx` (+ auxiliary files), format described in
//! `docs/model-bundle.md`. Loading verifies every listed file's sha256 before anything else
//! reads it.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a bundle cannot be served. Every variant names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid manifest: {message}")]
    InvalidManifest { path: PathBuf, message: String },
    #[error("bundle {dir}: file {file} listed in [files] is missing")]
    MissingFile { dir: PathBuf, file: String },
    #[error("bundle {dir}: sha256 of {file} is {found}, manifest says {expected}")]
    HashMismatch { dir: PathBuf, file: String, expected: String, found: String },
    #[error("bundle {dir}: {field}: expected {expected}, found {found}")]
    Mismatch { dir: PathBuf, field: String, expected: String, found: String },
}

/// Element types a model input or output may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Int64,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Int64 => "int64",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    /// -1 for a dynamic axis.
    pub shape: Vec<i64>,
}

/// How the raw model output becomes one probability per label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Element-wise logistic function.
    Sigmoid,
    /// Softmax over a last axis of size 2, taking `positive_index`.
    SoftmaxPair,
    /// Softmax over the whole label axis.
    Softmax,
    /// The output already holds the values.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    #[serde(default)]
    pub names: Vec<String>,
    pub activation: Activation,
    #[serde(default)]
    pub positive_index: Option<usize>,
    pub feature_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub demo: bool,
    #[serde(default)]
    pub description: String,
}

/// Everything in `manifest.toml`. Recipe and model-specific sections are kept as TOML tables
/// and parsed by the adapter that knows them ([`Manifest::recipe`], [`Manifest::section`]).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub model: ModelSection,
    pub files: BTreeMap<String, String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub labels: Labels,
    pub recipe: toml::Table,
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

impl Manifest {
    /// The `[recipe]` table as the adapter's parameter type (unknown fields are refused there).
    pub fn recipe<T: serde::de::DeserializeOwned>(&self, dir: &Path) -> Result<T, BundleError> {
        toml::Value::Table(self.recipe.clone()).try_into().map_err(|e: toml::de::Error| BundleError::InvalidManifest {
            path: dir.join("manifest.toml"),
            message: format!("[recipe]: {e}"),
        })
    }

    /// A model-specific top-level section (e.g. `[fvlm]`), if present.
    pub fn section<T: serde::de::DeserializeOwned>(&self, dir: &Path, name: &str) -> Result<Option<T>, BundleError> {
        match self.extra.get(name) {
            None => Ok(None),
            Some(v) => v.clone().try_into().map(Some).map_err(|e: toml::de::Error| BundleError::InvalidManifest {
                path: dir.join("manifest.toml"),
                message: format!("[{name}]: {e}"),
            }),
        }
    }

    pub fn recipe_kind(&self) -> Option<&str> {
        self.recipe.get("kind").and_then(|v| v.as_str())
    }
}

/// A loaded, hash-verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `model.onnx`.
    pub onnx_sha256: String,
}

pub const FORMAT: u32 = 1;

impl Bundle {
    /// Reads `dir/manifest.toml`, checks the format and verifies the sha256 of every file in
    /// `[files]` (which must include `model.onnx`).
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io { path: path.clone(), source })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::InvalidManifest { path: path.clone(), message: e.to_string() })?;
        let mismatch = |field: &str, expected: String, found: String| BundleError::Mismatch { dir: dir.to_path_buf(), field: field.into(), expected, found };
        if manifest.format != FORMAT {
            return Err(mismatch("format", FORMAT.to_string(), manifest.format.to_string()));
        }
        if !manifest.files.contains_key("model.onnx") {
            return Err(mismatch("files", "an entry for model.onnx".into(), format!("{:?}", manifest.files.keys().collect::<Vec<_>>())));
        }
        let mut onnx_sha256 = String::new();
        for (file, expected) in &manifest.files {
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(BundleError::InvalidManifest { path: path.clone(), message: format!("[files]: {file:?} is not a plain relative path") });
            }
            let fpath = dir.join(file);
            if !fpath.is_file() {
                return Err(BundleError::MissingFile { dir: dir.to_path_buf(), file: file.clone() });
            }
            let found = sha256_file(&fpath)?;
            if !found.eq_ignore_ascii_case(expected) {
                return Err(BundleError::HashMismatch { dir: dir.to_path_buf(), file: file.clone(), expected: expected.clone(), found });
            }
            if file == "model.onnx" {
                onnx_sha256 = found;
            }
        }
        let labels = &manifest.labels;
        if labels.activation == Activation::SoftmaxPair && !matches!(labels.positive_index, Some(0 | 1)) {
            return Err(mismatch("labels.positive_index", "0 or 1 (softmax-pair)".into(), format!("{:?}", labels.positive_index)));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, onnx_sha256 })
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }

    /// A [`BundleError::Mismatch`] about this bundle.
    pub fn mismatch(&self, field: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) -> BundleError {
        BundleError::Mismatch { dir: self.dir.clone(), field: field.into(), expected: expected.into(), found: found.into() }
    }

    /// Checks that the manifest's model name is `kind` (the service's own).
    pub fn expect_kind(&self, kind: &str) -> Result<(), BundleError> {
        if self.manifest.model.name != kind {
            return Err(self.mismatch("model.name", kind, &self.manifest.model.name));
        }
        Ok(())
    }

    /// Checks that `[recipe] kind` is `kind`.
    pub fn expect_recipe(&self, kind: &str) -> Result<(), BundleError> {
        let found = self.manifest.recipe_kind().unwrap_or("(none)");
        if found != kind {
            return Err(self.mismatch("recipe.kind", kind, found));
        }
        Ok(())
    }

    /// Checks the number of inputs and outputs (`what` names them for the message, e.g.
    /// "image, timesteps").
    pub fn expect_io_counts(&self, inputs: usize, outputs: usize, what: &str) -> Result<(), BundleError> {
        let m = &self.manifest;
        if m.inputs.len() != inputs || m.outputs.len() != outputs {
            return Err(self.mismatch("inputs/outputs", format!("{inputs} inputs ({what}) and {outputs} output(s)"), format!("{} inputs and {} outputs", m.inputs.len(), m.outputs.len())));
        }
        Ok(())
    }

    /// Checks the name/dtype/rank of one input or output.
    pub fn expect_tensor(&self, field: &str, spec: &TensorSpec, dtypes: &[DType], shape: &[Option<i64>]) -> Result<(), BundleError> {
        if !dtypes.contains(&spec.dtype) {
            return Err(self.mismatch(format!("{field}.dtype"), dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" or "), spec.dtype.as_str()));
        }
        let ok = spec.shape.len() == shape.len() && spec.shape.iter().zip(shape).all(|(s, want)| want.is_none_or(|w| w == *s));
        if !ok {
            let want: Vec<String> = shape.iter().map(|d| d.map_or("*".to_string(), |v| v.to_string())).collect();
            return Err(self.mismatch(format!("{field}.shape"), format!("[{}]", want.join(", ")), format!("{:?}", spec.shape)));
        }
        Ok(())
    }

    /// Checks the label count.
    pub fn expect_label_count(&self, n: usize) -> Result<(), BundleError> {
        let found = self.manifest.labels.names.len();
        if found != n {
            return Err(self.mismatch("labels.names", format!("{n} labels"), format!("{found} labels")));
        }
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
