//! top_pathologies (celsus-reference §4.4): per source, the first maximum among the model's
//! features, on the vector aligned to the main model's list.

use crate::spec::TopSpec;

/// The display names, one per source that has a candidate, duplicates removed, order kept.
/// `names`/`values` are the main model's feature list and the aligned vector. NaN values (the
/// `nan` missing-feature policy) are not candidates; zero-filled ones are, as in the reference.
pub fn top_pathologies(spec: &TopSpec, names: &[String], values: &[f64]) -> Vec<String> {
    let exclude_ci: Vec<String> = spec.exclude_ci.iter().map(|s| s.to_lowercase()).collect();
    let mut out: Vec<String> = Vec::new();
    for src in &spec.sources {
        let mut best: Option<(usize, f64)> = None;
        for (i, (name, &v)) in names.iter().zip(values).enumerate() {
            if !name.starts_with(&src.prefix)
                || spec.exclude.iter().chain(&src.exclude).any(|x| name.contains(x.as_str()))
                || exclude_ci.iter().any(|x| name.to_lowercase().contains(x.as_str()))
                || v.is_nan()
            {
                continue;
            }
            // strictly greater: the first maximum in column order wins (Python `max`)
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        if let Some((i, _)) = best {
            let name = display_name(&spec.strip_prefixes, &names[i]);
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Without the first matching prefix, `_` -> ` `, first character upper-cased.
pub fn display_name(strip_prefixes: &[String], feature: &str) -> String {
    let rest = strip_prefixes.iter().find_map(|p| feature.strip_prefix(p.as_str())).unwrap_or(feature);
    let spaced = rest.replace('_', " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FeatureSpec;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn display_names_follow_the_reference() {
        let p = FeatureSpec::reference().top_pathologies.strip_prefixes;
        assert_eq!(display_name(&p, "ctclip_Postoperative_changes_(lobectomy_or_pneumonectomy)"), "Postoperative changes (lobectomy or pneumonectomy)");
        assert_eq!(display_name(&p, "kolyan_pleural_effusion"), "Pleural effusion");
        assert_eq!(display_name(&p, "okhr_Lung nodule"), "Lung nodule");
        assert_eq!(display_name(&p, "diffusion_classifier_max_probability"), "Max probability");
        assert_eq!(display_name(&p, "other_thing"), "Other thing");
    }

    #[test]
    fn one_per_source_first_maximum_deduplicated() {
        let spec = FeatureSpec::reference().top_pathologies;
        let n = names(&[
            "kolyan_normal", "kolyan_pneumothorax", "kolyan_cancer", "kolyan_max", "kolyan_top3_mean",
            "okhr_Pneumothorax", "okhr_Lung_nodule", "okhr_mean",
            "ctclip_Pneumothorax", "ctclip_group_pleural_max", "ctclip_max_probability", "ctclip_Cavitation",
            "supervised_cancer",
        ]);
        let v = [0.99, 0.5, 0.5, 0.99, 0.99, 0.8, 0.8, 0.99, 0.3, 0.99, 0.99, 0.3, 0.99];
        assert_eq!(top_pathologies(&spec, &n, &v), vec!["Pneumothorax".to_string()]);
        let v2 = [0.99, 0.4, 0.5, 0.99, 0.99, 0.7, 0.8, 0.99, 0.3, 0.99, 0.99, 0.31, 0.99];
        assert_eq!(top_pathologies(&spec, &n, &v2), names(&["Cancer", "Lung nodule", "Cavitation"]));
        // no candidates at all
        assert!(top_pathologies(&spec, &names(&["supervised_cancer"]), &[0.9]).is_empty());
        // NaN is not a candidate; zeros are
        assert_eq!(top_pathologies(&spec, &names(&["kolyan_a", "kolyan_b"]), &[f64::NAN, 0.0]), names(&["B"]));
    }
}
