//! The gradient-boosting model behind a small trait, so the implementation can change
//! (LightGBM through `lightgbm3` today; a pure-Rust text-model evaluator would fit too).

use crate::EnsembleError;

/// A binary classifier over a feature vector in the model's own feature order.
pub trait Booster {
    /// Feature names as the model lists them (`feature_names=` of the text model), model order.
    fn feature_names(&self) -> &[String];
    /// P(class 1) for one row (`predict_proba(X)[0, 1]` in Python).
    fn predict_proba(&self, row: &[f64]) -> Result<f64, EnsembleError>;
    /// P(class 1) for many rows (row-major, `feature_names().len()` values per row).
    fn predict_proba_rows(&self, rows: &[f64]) -> Result<Vec<f64>, EnsembleError> {
        let n = self.feature_names().len().max(1);
        rows.chunks(n).map(|r| self.predict_proba(r)).collect()
    }
}

/// What a LightGBM text model declares, read from its header lines.
#[derive(Debug, Clone, PartialEq)]
pub struct TextModelHeader {
    pub feature_names: Vec<String>,
    pub objective: String,
    pub num_class: u32,
}

/// Reads the header of a LightGBM text model (`feature_names=` split on `' '`, as LightGBM's
/// `GBDT::LoadModelFromString` does; `lightgbm3`'s `feature_name()` truncates long names, so it
/// is not used).
pub fn read_header(text: &str) -> Result<TextModelHeader, String> {
    let mut feature_names = None;
    let mut objective = None;
    let mut num_class = 1;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("Tree=") {
            break;
        }
        if let Some(v) = line.strip_prefix("feature_names=") {
            feature_names = Some(v.split(' ').map(str::to_string).collect::<Vec<_>>());
        } else if let Some(v) = line.strip_prefix("objective=") {
            objective = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("num_class=") {
            num_class = v.trim().parse().map_err(|_| format!("bad num_class line {line:?}"))?;
        }
    }
    let feature_names = feature_names.ok_or("no feature_names= line (not a LightGBM text model?)")?;
    let objective = objective.ok_or("no objective= line (not a LightGBM text model?)")?;
    Ok(TextModelHeader { feature_names, objective, num_class })
}

/// A LightGBM model (C++ LightGBM 4.7.0 through `lightgbm3`). Not `Send`: it lives on the
/// thread that loaded it.
pub struct LgbmBooster {
    inner: lightgbm3::Booster,
    names: Vec<String>,
}

impl LgbmBooster {
    /// Loads a text model; only binary models are accepted.
    pub fn from_text(text: &str, what: &str) -> Result<Self, EnsembleError> {
        let header = read_header(text).map_err(|e| EnsembleError::lgbm(what, e))?;
        let objective = header.objective.split_whitespace().next().unwrap_or_default();
        if !matches!(objective, "binary" | "cross_entropy" | "xentropy") || header.num_class != 1 {
            return Err(EnsembleError::lgbm(what, format!("objective {:?} with num_class {} is not a binary classifier", header.objective, header.num_class)));
        }
        let inner = lightgbm3::Booster::from_string(text).map_err(|e| EnsembleError::lgbm(what, e))?;
        if inner.num_features() as usize != header.feature_names.len() {
            return Err(EnsembleError::lgbm(what, format!("{} feature names for {} features", header.feature_names.len(), inner.num_features())));
        }
        Ok(Self { inner, names: header.feature_names })
    }

    pub fn train(dataset: lightgbm3::Dataset, params: &serde_json::Value) -> Result<Self, EnsembleError> {
        let inner = lightgbm3::Booster::train(dataset, params).map_err(|e| EnsembleError::lgbm("training", e))?;
        let text = inner.save_string().map_err(|e| EnsembleError::lgbm("saving the trained model", e))?;
        let names = read_header(&text).map_err(|e| EnsembleError::lgbm("the trained model", e))?.feature_names;
        Ok(Self { inner, names })
    }

    /// The model in LightGBM's text format.
    pub fn to_text(&self) -> Result<String, EnsembleError> {
        self.inner.save_string().map_err(|e| EnsembleError::lgbm("saving the model", e))
    }
}

impl Booster for LgbmBooster {
    fn feature_names(&self) -> &[String] {
        &self.names
    }

    fn predict_proba(&self, row: &[f64]) -> Result<f64, EnsembleError> {
        let p = self.predict_proba_rows(row)?;
        p.first().copied().ok_or_else(|| EnsembleError::lgbm("predict", "no output"))
    }

    fn predict_proba_rows(&self, rows: &[f64]) -> Result<Vec<f64>, EnsembleError> {
        let n = self.names.len();
        if n == 0 || !rows.len().is_multiple_of(n) {
            return Err(EnsembleError::Internal(format!("{} values are not rows of {n} features", rows.len())));
        }
        self.inner.predict(rows, n as i32, true).map_err(|e| EnsembleError::lgbm("predict", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_lines() {
        let text = "tree\nversion=v4\nnum_class=1\nobjective=binary sigmoid:1\nfeature_names=a b_c d\nfeature_infos=x\n\nTree=0\nfeature_names=zzz\n";
        let h = read_header(text).unwrap();
        assert_eq!(h.feature_names, vec!["a", "b_c", "d"]);
        assert_eq!(h.objective, "binary sigmoid:1");
        assert_eq!(h.num_class, 1);
        assert!(read_header("tree\nobjective=binary\n").is_err());
    }
}
