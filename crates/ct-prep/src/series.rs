//! Series grouping and selection with the reference's rules (celsus-reference §2.4), plus the
//! documented deviations: localizers/scouts, secondary captures, non-image objects and non-CT
//! series are never selected.

use crate::dicom::FileHeader;
use crate::PrepError;

pub const LUNG_KERNELS: [&str; 5] = ["LUNG", "B70", "B80", "FC51", "FC81"];
pub const STANDARD_KERNELS: [&str; 4] = ["STANDARD", "B30", "B31", "FC30"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    Lung,
    Standard,
    Any,
}

/// One series: its files (indices into the header list) in input order.
#[derive(Debug, Clone)]
pub struct Series {
    pub uid: String,
    pub files: Vec<usize>,
    pub slices: usize,
    pub kernel: String,
    pub modality: String,
}

#[derive(Debug)]
pub struct Chosen {
    pub series: Series,
    pub selection: Selection,
    pub reason: String,
    pub warnings: Vec<String>,
}

/// Groups valid headers by SeriesInstanceUID (first-seen order) and picks the series.
pub fn select(headers: &[FileHeader], min_slices: usize) -> Result<Chosen, PrepError> {
    let mut warnings = Vec::new();
    let (mut localizers, mut secondary, mut non_image) = (0, 0, 0);
    let mut groups: Vec<Series> = Vec::new();
    for (idx, h) in headers.iter().enumerate() {
        if !h.is_image() {
            non_image += 1;
            continue;
        }
        if h.is_localizer() {
            localizers += 1;
            continue;
        }
        if h.is_secondary_capture() {
            secondary += 1;
            continue;
        }
        match groups.iter_mut().find(|g| g.uid == h.series_uid) {
            Some(g) => {
                g.files.push(idx);
                g.slices += h.frames as usize;
            }
            None => groups.push(Series { uid: h.series_uid.clone(), files: vec![idx], slices: h.frames as usize, kernel: h.kernel.clone(), modality: h.modality.clone() }),
        }
    }
    for (n, what) in [(localizers, "localizer/scout image(s)"), (secondary, "secondary capture image(s)"), (non_image, "non-image DICOM object(s)")] {
        if n > 0 {
            warnings.push(format!("skipped {n} {what}"));
        }
    }
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for g in groups {
        if g.modality != "CT" {
            rejected.push(format!("series {} is {} (not CT)", g.uid, g.modality));
        } else if g.slices < min_slices {
            rejected.push(format!("series {} has {} slices (< {min_slices})", g.uid, g.slices));
        } else {
            eligible.push(g);
        }
    }
    warnings.extend(rejected.iter().map(|r| format!("ignored: {r}")));
    let has = |g: &Series, names: &[&str]| names.iter().any(|k| g.kernel.contains(k));
    let pick = |pred: &dyn Fn(&Series) -> bool| -> Option<Series> {
        // largest wins; ties keep the first in input order (Python's max)
        let mut best: Option<&Series> = None;
        for g in eligible.iter().filter(|g| pred(g)) {
            if best.is_none_or(|b| g.slices > b.slices) {
                best = Some(g);
            }
        }
        best.cloned()
    };
    let (series, selection) = if let Some(s) = pick(&|g| has(g, &LUNG_KERNELS)) {
        (s, Selection::Lung)
    } else if let Some(s) = pick(&|g| !has(g, &LUNG_KERNELS) && has(g, &STANDARD_KERNELS)) {
        (s, Selection::Standard)
    } else if let Some(s) = pick(&|_| true) {
        (s, Selection::Any)
    } else {
        let reason = if rejected.is_empty() { "no CT image series in the input".to_string() } else { rejected.join("; ") };
        return Err(PrepError::NoValidSeries { reason });
    };
    let kernel = if series.kernel.is_empty() { "no kernel".to_string() } else { format!("kernel {}", series.kernel) };
    let reason = format!("{kernel} ({}), {} slices, largest of {} eligible series", serde_json::to_value(selection).unwrap_or_default().as_str().unwrap_or(""), series.slices, eligible.len());
    Ok(Chosen { series, selection, reason, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::FrameInfo;

    fn h(series: &str, modality: &str, kernel: &str, frames: u32) -> FileHeader {
        FileHeader {
            study_uid: "1".into(),
            series_uid: series.into(),
            modality: modality.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "AXIAL".into()],
            kernel: kernel.into(),
            rows: 4,
            cols: 4,
            frames,
            instance_number: None,
            slice_thickness: None,
            transfer_syntax: String::new(),
            frame_info: vec![FrameInfo { ipp: None, iop: None, pixel_spacing: None, slope: 1.0, intercept: 0.0 }; frames as usize],
        }
    }

    fn many(series: &str, kernel: &str, n: usize) -> Vec<FileHeader> {
        (0..n).map(|_| h(series, "CT", kernel, 1)).collect()
    }

    #[test]
    fn lung_kernel_beats_larger_standard_series() {
        let mut all = many("std", "STANDARD", 300);
        all.extend(many("lung", "B70F", 100));
        let c = select(&all, 20).unwrap();
        assert_eq!((c.series.uid.as_str(), c.selection), ("lung", Selection::Lung));
    }

    #[test]
    fn standard_then_any_then_largest_first_wins() {
        let mut all = many("a", "SOFT", 50);
        all.extend(many("b", "FC30", 30));
        assert_eq!(select(&all, 20).unwrap().selection, Selection::Standard);
        let mut all = many("a", "", 40);
        all.extend(many("b", "", 40));
        let c = select(&all, 20).unwrap();
        assert_eq!((c.series.uid.as_str(), c.selection), ("a", Selection::Any));
    }

    #[test]
    fn multiframe_counts_frames_and_non_ct_is_never_chosen() {
        let all = vec![h("enh", "CT", "", 40)];
        assert_eq!(select(&all, 20).unwrap().series.slices, 40);
        let all = many("mr", "", 40).into_iter().map(|mut x| {
            x.modality = "MR".into();
            x
        });
        let err = select(&all.collect::<Vec<_>>(), 20).unwrap_err();
        assert_eq!(err.error_type(), "no_valid_series");
    }

    #[test]
    fn skips_localizers_and_secondary_captures() {
        let mut all = many("ax", "", 25);
        let mut scout = h("ax", "CT", "", 1);
        scout.image_type = vec!["ORIGINAL".into(), "PRIMARY".into(), "LOCALIZER".into()];
        let mut sc = h("ax", "CT", "", 1);
        sc.sop_class_uid = "1.2.840.10008.5.1.4.1.1.7".into();
        all.push(scout);
        all.push(sc);
        let c = select(&all, 20).unwrap();
        assert_eq!(c.series.files.len(), 25);
        assert_eq!(c.warnings.len(), 2);
        let err = select(&many("few", "", 19), 20).unwrap_err();
        assert_eq!(err.error_type(), "no_valid_series");
    }
}
