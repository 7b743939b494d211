//! The final summary printed after a run.

use crate::report::{Pathology, Row};
use std::collections::BTreeMap;
use std::fmt;

/// Counts and times over the rows of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub total: usize,
    pub success: usize,
    pub failure: usize,
    /// Studies found but not sent (run interrupted).
    pub not_sent: usize,
    /// Rows by `processing_status`.
    pub by_status: BTreeMap<String, usize>,
    /// Failures by `error_type`.
    pub by_error_type: BTreeMap<String, usize>,
    /// Successes by `pathology` (0 / 1).
    pub by_pathology: BTreeMap<i64, usize>,
    /// Mean / min / max of the gateway's `time_of_processing` over successes, seconds.
    pub time_mean_s: Option<f64>,
    pub time_min_s: Option<f64>,
    pub time_max_s: Option<f64>,
    /// Most frequent `most_dangerous_pathology_type` values (non-empty), at most 5.
    pub top_types: Vec<(String, usize)>,
    /// Per `ground_truth_category`: (studies, successes, pathology = 1).
    pub by_category: BTreeMap<String, (usize, usize, usize)>,
    /// Retries made, and 429 answers received.
    pub retries: u32,
    pub throttled: u32,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}

impl Summary {
    pub fn new(rows: &[Row], not_sent: usize, wall_s: f64) -> Summary {
        let mut s = Summary {
            total: rows.len(),
            success: 0,
            failure: 0,
            not_sent,
            by_status: BTreeMap::new(),
            by_error_type: BTreeMap::new(),
            by_pathology: BTreeMap::new(),
            time_mean_s: None,
            time_min_s: None,
            time_max_s: None,
            top_types: Vec::new(),
            by_category: BTreeMap::new(),
            retries: 0,
            throttled: 0,
            wall_s,
        };
        let mut times = Vec::new();
        let mut types: BTreeMap<&str, usize> = BTreeMap::new();
        for r in rows {
            *s.by_status.entry(r.processing_status.clone()).or_default() += 1;
            s.retries += r.attempts.saturating_sub(1);
            s.throttled += r.throttled;
            let positive = r.pathology == Pathology::Known(1);
            if let Some(cat) = &r.ground_truth_category {
                let e = s.by_category.entry(cat.clone()).or_default();
                e.0 += 1;
                e.1 += usize::from(r.is_success());
                e.2 += usize::from(positive);
            }
            if r.is_success() {
                s.success += 1;
                if let Pathology::Known(p) = r.pathology {
                    *s.by_pathology.entry(p).or_default() += 1;
                }
                times.extend(r.time_of_processing);
                if !r.most_dangerous_pathology_type.is_empty() {
                    *types.entry(&r.most_dangerous_pathology_type).or_default() += 1;
                }
            } else {
                s.failure += 1;
                *s.by_error_type.entry(r.error_type.clone()).or_default() += 1;
            }
        }
        if !times.is_empty() {
            s.time_mean_s = Some(times.iter().sum::<f64>() / times.len() as f64);
            s.time_min_s = times.iter().copied().reduce(f64::min);
            s.time_max_s = times.iter().copied().reduce(f64::max);
        }
        let mut types: Vec<(String, usize)> = types.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        types.truncate(5);
        s.top_types = types;
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |n: usize| if self.total == 0 { 0.0 } else { 100.0 * n as f64 / self.total as f64 };
        writeln!(f, "studies: {}  success: {} ({:.1}%)  failure: {} ({:.1}%)", self.total, self.success, pct(self.success), self.failure, pct(self.failure))?;
        if self.not_sent > 0 {
            writeln!(f, "not sent (interrupted): {}", self.not_sent)?;
        }
        let join = |m: Vec<String>| m.join(", ");
        writeln!(f, "by status: {}", join(self.by_status.iter().map(|(k, v)| format!("{k} {v}")).collect()))?;
        if !self.by_error_type.is_empty() {
            writeln!(f, "failures by error_type: {}", join(self.by_error_type.iter().map(|(k, v)| format!("{k} {v}")).collect()))?;
        }
        if !self.by_pathology.is_empty() {
            writeln!(f, "successes by pathology: {}", join(self.by_pathology.iter().map(|(k, v)| format!("{k} -> {v}")).collect()))?;
        }
        if let (Some(mean), Some(min), Some(max)) = (self.time_mean_s, self.time_min_s, self.time_max_s) {
            writeln!(f, "time_of_processing (successes): mean {mean:.3} s, min {min:.3} s, max {max:.3} s")?;
        }
        if !self.top_types.is_empty() {
            writeln!(f, "top most_dangerous_pathology_type:")?;
            for (t, n) in &self.top_types {
                writeln!(f, "  {n:>5}  {t}")?;
            }
        }
        if !self.by_category.is_empty() {
            writeln!(f, "by ground_truth_category (studies / success / pathology=1):")?;
            for (c, (n, ok, pos)) in &self.by_category {
                writeln!(f, "  {c:<12} {n:>5} {ok:>5} {pos:>5}")?;
            }
        }
        let rate = if self.wall_s > 0.0 { self.total as f64 / self.wall_s * 60.0 } else { 0.0 };
        write!(f, "wall {:.1} s ({rate:.1} studies/min), retries {}, HTTP 429 answers {}", self.wall_s, self.retries, self.throttled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outcome;
    use serde_json::json;

    fn row(status: u16, body: serde_json::Value, attempts: u32, throttled: u32) -> Row {
        let o = Outcome { status: Some(status), json: body.as_object().cloned(), attempts, throttled, ..Default::default() };
        Row::from_outcome("p".into(), None, &o)
    }

    #[test]
    fn counts_and_text() {
        let ok = |p: f64, path: i64, top: serde_json::Value, t: f64| json!({"probability_of_pathology": p, "pathology": path, "top_pathologies": top, "processing_status": "Success", "time_of_processing": t});
        let mut rows = vec![
            row(200, ok(0.9, 1, json!(["Cancer"]), 1.0), 1, 0),
            row(200, ok(0.1, 0, json!([]), 3.0), 3, 2),
            row(422, json!({"processing_status": "Failure", "error": "x", "error_type": "lungs_too_short"}), 1, 0),
        ];
        rows[0].ground_truth_category = Some("pneumonia".into());
        rows[1].ground_truth_category = Some("norma".into());
        rows[2].ground_truth_category = Some("pneumonia".into());
        let s = Summary::new(&rows, 1, 10.0);
        assert_eq!((s.total, s.success, s.failure, s.not_sent, s.retries, s.throttled), (3, 2, 1, 1, 2, 2));
        assert_eq!((s.time_mean_s, s.time_min_s, s.time_max_s), (Some(2.0), Some(1.0), Some(3.0)));
        assert_eq!(s.top_types, vec![("Cancer".to_string(), 1)]);
        assert_eq!(s.by_category.get("pneumonia"), Some(&(2, 1, 1)));
        let text = s.to_string();
        for want in [
            "studies: 3  success: 2 (66.7%)",
            "not sent (interrupted): 1",
            "lungs_too_short 1",
            "0 -> 1, 1 -> 1",
            "mean 2.000 s",
            "retries 2, HTTP 429 answers 2",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
