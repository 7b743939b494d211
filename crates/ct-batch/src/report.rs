//! One row per study, and the XLSX / CSV writers.
//!
//! Columns and order follow the reference: archive mode is `batch_inference_client.py`'s order,
//! `--dicom-tree` is `prepare_and_run_inference.py`'s (with `ground_truth_category` and
//! `num_files`). Every column is always written (the reference drops `error` and the thoracic
//! columns when no row has them, so its sheet changes shape from run to run). Four columns of our
//! own come last: `error_type`, `request_id`, `http_status`, `attempts`.

use crate::client::Outcome;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A column of the results sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    PathToStudy,
    GroundTruthCategory,
    StudyUid,
    SeriesUid,
    ProbabilityOfPathology,
    Pathology,
    ProcessingStatus,
    TimeOfProcessing,
    MostDangerousPathologyType,
    NumFiles,
    ProbabilityOfPathologyThoracic,
    PathologyThoracic,
    Error,
    ErrorType,
    RequestId,
    HttpStatus,
    Attempts,
}

impl Col {
    pub fn name(self) -> &'static str {
        match self {
            Col::PathToStudy => "path_to_study",
            Col::GroundTruthCategory => "ground_truth_category",
            Col::StudyUid => "study_uid",
            Col::SeriesUid => "series_uid",
            Col::ProbabilityOfPathology => "probability_of_pathology",
            Col::Pathology => "pathology",
            Col::ProcessingStatus => "processing_status",
            Col::TimeOfProcessing => "time_of_processing",
            Col::MostDangerousPathologyType => "most_dangerous_pathology_type",
            Col::NumFiles => "num_files",
            Col::ProbabilityOfPathologyThoracic => "probability_of_pathology_thoracic",
            Col::PathologyThoracic => "pathology_thoracic",
            Col::Error => "error",
            Col::ErrorType => "error_type",
            Col::RequestId => "request_id",
            Col::HttpStatus => "http_status",
            Col::Attempts => "attempts",
        }
    }
}

/// Archive mode (`batch_inference_client.py` order, then ours).
pub const ARCHIVE_COLUMNS: &[Col] = &[
    Col::PathToStudy,
    Col::StudyUid,
    Col::SeriesUid,
    Col::ProbabilityOfPathology,
    Col::Pathology,
    Col::ProcessingStatus,
    Col::TimeOfProcessing,
    Col::MostDangerousPathologyType,
    Col::ProbabilityOfPathologyThoracic,
    Col::PathologyThoracic,
    Col::Error,
    Col::ErrorType,
    Col::RequestId,
    Col::HttpStatus,
    Col::Attempts,
];

/// `--dicom-tree` mode (`prepare_and_run_inference.py` order, then the thoracic columns and `error`
/// which it appends, then ours).
pub const TREE_COLUMNS: &[Col] = &[
    Col::PathToStudy,
    Col::GroundTruthCategory,
    Col::StudyUid,
    Col::SeriesUid,
    Col::ProbabilityOfPathology,
    Col::Pathology,
    Col::MostDangerousPathologyType,
    Col::ProcessingStatus,
    Col::TimeOfProcessing,
    Col::NumFiles,
    Col::ProbabilityOfPathologyThoracic,
    Col::PathologyThoracic,
    Col::Error,
    Col::ErrorType,
    Col::RequestId,
    Col::HttpStatus,
    Col::Attempts,
];

/// `pathology`: 0/1 on success, `"Unknown"` on failure (as the reference writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pathology {
    Known(i64),
    Unknown,
}

/// One study's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Absolute path of the archive, or of the study's folder in `--dicom-tree` mode.
    pub path_to_study: String,
    pub ground_truth_category: Option<String>,
    pub num_files: Option<usize>,
    pub study_uid: String,
    pub series_uid: String,
    /// Empty on failure (the reference writes 0.0, which reads as "certainly normal").
    pub probability_of_pathology: Option<f64>,
    pub pathology: Pathology,
    /// `Success` or `Failure`.
    pub processing_status: String,
    /// Seconds: the gateway's `time_of_processing` when it sent one, else this client's time for
    /// the last try.
    pub time_of_processing: Option<f64>,
    /// `", ".join(top_pathologies)` on success ("" when none), `Unknown` on failure.
    pub most_dangerous_pathology_type: String,
    pub probability_of_pathology_thoracic: Option<f64>,
    pub pathology_thoracic: Option<i64>,
    pub error: String,
    /// The gateway's `error_type`, or ours: `client_timeout`, `connection_error`, `read_error`,
    /// `http_<code>` (an answer without `error_type`), `invalid_response`.
    pub error_type: String,
    pub request_id: String,
    pub http_status: Option<u16>,
    pub attempts: u32,
    /// 429 answers received for this study (summary only).
    pub throttled: u32,
}

impl Row {
    pub fn is_success(&self) -> bool {
        self.processing_status == "Success"
    }

    /// Builds the row from the gateway's answer. `known_uid`: the study UID known before sending
    /// (`--dicom-tree`), used when a failure answer carries none.
    pub fn from_outcome(path_to_study: String, known_uid: Option<&str>, o: &Outcome) -> Row {
        let j = o.json.as_ref();
        let s = |k: &str| j.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
        let request_id = Some(s("request_id")).filter(|r| !r.is_empty()).or_else(|| o.request_id_header.clone()).unwrap_or_default();
        let base = Row {
            path_to_study,
            ground_truth_category: None,
            num_files: None,
            study_uid: String::new(),
            series_uid: String::new(),
            probability_of_pathology: None,
            pathology: Pathology::Unknown,
            processing_status: "Failure".into(),
            time_of_processing: None,
            most_dangerous_pathology_type: "Unknown".into(),
            probability_of_pathology_thoracic: None,
            pathology_thoracic: None,
            error: String::new(),
            error_type: String::new(),
            request_id,
            http_status: o.status,
            attempts: o.attempts,
            throttled: o.throttled,
        };
        if let (Some(200), Some(m)) = (o.status, j)
            && m.get("processing_status").and_then(Value::as_str) == Some("Success")
        {
            match success(m) {
                Ok(ok) => return ok.merge(base),
                Err(why) => {
                    return Row {
                        study_uid: known_uid.unwrap_or_default().to_string(),
                        time_of_processing: Some(o.last_try_s),
                        error: format!("invalid success answer: {why}"),
                        error_type: "invalid_response".into(),
                        ..base
                    };
                }
            }
        }
        // Failure.
        let study_uid = Some(s("study_uid")).filter(|u| !u.is_empty()).or(known_uid.map(str::to_string)).unwrap_or_default();
        let time = j.and_then(|m| m.get("time_of_processing")).and_then(Value::as_f64).unwrap_or(o.last_try_s);
        let server_error = j.and_then(|m| m.get("error").filter(|v| !v.is_null()).or_else(|| m.get("detail"))).map(|v| match v {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        });
        let error = server_error
            .filter(|e| !e.is_empty())
            .or_else(|| o.transport_error.clone())
            .or_else(|| o.status.map(|c| format!("HTTP {c}{}", o.body_excerpt.as_deref().map(|b| format!(": {b}")).unwrap_or_default())))
            .unwrap_or_else(|| "no answer".into());
        let error_type = Some(s("error_type")).filter(|t| !t.is_empty()).unwrap_or_else(|| match o.status {
            Some(200) => "invalid_response".into(),
            Some(c) => format!("http_{c}"),
            None if o.timed_out => "client_timeout".into(),
            None if o.transport_error.as_deref().is_some_and(|e| e.starts_with("cannot read")) => "read_error".into(),
            None => "connection_error".into(),
        });
        Row { study_uid, series_uid: s("series_uid"), time_of_processing: Some(time), error, error_type, ..base }
    }

    /// The value of one column.
    pub fn cell(&self, col: Col) -> Cell {
        let text = |s: &str| if s.is_empty() { Cell::Empty } else { Cell::Text(s.to_string()) };
        let num = |v: Option<f64>| v.map_or(Cell::Empty, Cell::Num);
        let int = |v: Option<i64>| v.map_or(Cell::Empty, Cell::Int);
        match col {
            Col::PathToStudy => text(&self.path_to_study),
            Col::GroundTruthCategory => self.ground_truth_category.as_deref().map_or(Cell::Empty, text),
            Col::StudyUid => text(&self.study_uid),
            Col::SeriesUid => text(&self.series_uid),
            Col::ProbabilityOfPathology => num(self.probability_of_pathology),
            Col::Pathology => match self.pathology {
                Pathology::Known(v) => Cell::Int(v),
                Pathology::Unknown => Cell::Text("Unknown".into()),
            },
            Col::ProcessingStatus => text(&self.processing_status),
            Col::TimeOfProcessing => num(self.time_of_processing),
            Col::MostDangerousPathologyType => text(&self.most_dangerous_pathology_type),
            Col::NumFiles => int(self.num_files.map(|n| n as i64)),
            Col::ProbabilityOfPathologyThoracic => num(self.probability_of_pathology_thoracic),
            Col::PathologyThoracic => int(self.pathology_thoracic),
            Col::Error => text(&self.error),
            Col::ErrorType => text(&self.error_type),
            Col::RequestId => text(&self.request_id),
            Col::HttpStatus => int(self.http_status.map(i64::from)),
            Col::Attempts => Cell::Int(i64::from(self.attempts)),
        }
    }
}

/// The fields of a success answer.
struct Success {
    study_uid: String,
    series_uid: String,
    probability: f64,
    pathology: i64,
    top: Vec<String>,
    thoracic_p: Option<f64>,
    thoracic: Option<i64>,
    time: Option<f64>,
}

impl Success {
    fn merge(self, base: Row) -> Row {
        Row {
            study_uid: self.study_uid,
            series_uid: self.series_uid,
            probability_of_pathology: Some(self.probability),
            pathology: Pathology::Known(self.pathology),
            processing_status: "Success".into(),
            time_of_processing: self.time,
            most_dangerous_pathology_type: self.top.join(", "),
            probability_of_pathology_thoracic: self.thoracic_p,
            pathology_thoracic: self.thoracic,
            ..base
        }
    }
}

fn success(m: &Map<String, Value>) -> Result<Success, String> {
    let int = |v: &Value| v.as_i64().or_else(|| v.as_bool().map(i64::from)).or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
    let opt = |k: &str| m.get(k).filter(|v| !v.is_null());
    let probability = opt("probability_of_pathology").and_then(Value::as_f64).ok_or("no probability_of_pathology")?;
    let pathology = opt("pathology").and_then(int).ok_or("no pathology")?;
    let top = match opt("top_pathologies") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect(),
        Some(_) => return Err("top_pathologies is not a list".into()),
    };
    Ok(Success {
        study_uid: opt("study_uid").and_then(Value::as_str).unwrap_or("").into(),
        series_uid: opt("series_uid").and_then(Value::as_str).unwrap_or("").into(),
        probability,
        pathology,
        top,
        thoracic_p: opt("probability_of_pathology_thoracic").and_then(Value::as_f64),
        thoracic: opt("pathology_thoracic").and_then(int),
        time: opt("time_of_processing").and_then(Value::as_f64),
    })
}

/// A typed cell value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    Num(f64),
    Int(i64),
}

/// Output format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xlsx,
    Csv,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {path}: the name must end in .xlsx or .csv")]
    BadExtension { path: PathBuf },
    #[error("output {path}: folder {dir} does not exist")]
    NoFolder { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl Format {
    /// `.csv` (any case) is CSV, `.xlsx` XLSX; anything else is refused before any study is sent.
    pub fn for_path(path: &Path) -> Result<Format, OutputError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("xlsx") => Ok(Format::Xlsx),
            _ => Err(OutputError::BadExtension { path: path.to_path_buf() }),
        }
    }
}

/// Checks before the run that the output can be written later (format and folder).
pub fn check_output(path: &Path) -> Result<Format, OutputError> {
    let f = Format::for_path(path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(OutputError::NoFolder { path: path.to_path_buf(), dir: dir.to_path_buf() });
    }
    Ok(f)
}

/// Writes `rows` to `path` (XLSX or CSV per the name), through a temporary file in the same folder
/// renamed at the end, so that a crash never leaves half a results file.
pub fn write(path: &Path, cols: &[Col], rows: &[Row]) -> Result<(), OutputError> {
    let werr = |reason: String| OutputError::Write { path: path.to_path_buf(), reason };
    let bytes = match Format::for_path(path)? {
        Format::Xlsx => xlsx_bytes(cols, rows).map_err(|e| werr(e.to_string()))?,
        Format::Csv => csv_bytes(cols, rows),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    let res = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = res.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e.to_string()));
    }
    Ok(())
}

/// One sheet `Sheet1` (the pandas default the reference produces), bold header, frozen first row.
pub fn xlsx_bytes(cols: &[Col], rows: &[Row]) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    use rust_xlsxwriter::{Format as XFormat, Workbook};
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("Sheet1")?;
    let bold = XFormat::new().set_bold();
    for (c, col) in cols.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, col.name(), &bold)?;
    }
    for (r, row) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, col) in cols.iter().enumerate() {
            let c = c as u16;
            match row.cell(*col) {
                Cell::Empty => {}
                Cell::Text(t) => {
                    ws.write_string(r, c, t)?;
                }
                Cell::Num(v) => {
                    ws.write_number(r, c, v)?;
                }
                Cell::Int(v) => {
                    ws.write_number(r, c, v as f64)?;
                }
            }
        }
    }
    ws.set_freeze_panes(1, 0)?;
    ws.autofit();
    wb.save_to_buffer()
}

/// RFC 4180 CSV, UTF-8 without BOM, `\n` line ends; numbers in their shortest exact form.
pub fn csv_bytes(cols: &[Col], rows: &[Row]) -> Vec<u8> {
    let mut out = String::new();
    let line = |out: &mut String, fields: Vec<String>| {
        let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    };
    line(&mut out, cols.iter().map(|c| c.name().to_string()).collect());
    for row in rows {
        line(
            &mut out,
            cols.iter()
                .map(|c| match row.cell(*c) {
                    Cell::Empty => String::new(),
                    Cell::Text(t) => t,
                    Cell::Num(v) => v.to_string(),
                    Cell::Int(v) => v.to_string(),
                })
                .collect(),
        );
    }
    out.into_bytes()
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outcome(status: Option<u16>, body: Value) -> Outcome {
        Outcome { status, json: body.as_object().cloned(), attempts: 1, last_try_s: 1.5, ..Default::default() }
    }

    #[test]
    fn success_row() {
        let o = outcome(
            Some(200),
            json!({"study_uid": "1.2", "series_uid": "1.2.3", "probability_of_pathology": 0.75, "pathology": 1,
                   "top_pathologies": ["Cancer", "Bronchiectasis"], "probability_of_pathology_thoracic": 0.5,
                   "pathology_thoracic": 0, "processing_status": "Success", "time_of_processing": 0.9, "request_id": "r1"}),
        );
        let r = Row::from_outcome("/x/a.zip".into(), None, &o);
        assert!(r.is_success());
        assert_eq!(r.most_dangerous_pathology_type, "Cancer, Bronchiectasis");
        assert_eq!((r.pathology, r.pathology_thoracic, r.time_of_processing), (Pathology::Known(1), Some(0), Some(0.9)));
        assert_eq!((r.error.as_str(), r.request_id.as_str()), ("", "r1"));
        let cells: Vec<Cell> = ARCHIVE_COLUMNS.iter().map(|c| r.cell(*c)).collect();
        assert_eq!(cells[3], Cell::Num(0.75));
        assert_eq!(cells[7], Cell::Text("Cancer, Bronchiectasis".into()));
        assert_eq!(cells[10], Cell::Empty);
    }

    #[test]
    fn failure_rows() {
        let o = outcome(
            Some(422),
            json!({"study_uid": "", "series_uid": "", "probability_of_pathology": null, "pathology": null,
                   "processing_status": "Failure", "time_of_processing": 0.2, "error": "Lungs not found", "error_type": "lungs_not_found"}),
        );
        let r = Row::from_outcome("/x/b.zip".into(), Some("9.9"), &o);
        assert!(!r.is_success());
        assert_eq!((r.study_uid.as_str(), r.error.as_str(), r.error_type.as_str()), ("9.9", "Lungs not found", "lungs_not_found"));
        assert_eq!((r.pathology, r.most_dangerous_pathology_type.as_str(), r.probability_of_pathology), (Pathology::Unknown, "Unknown", None));
        assert_eq!(r.time_of_processing, Some(0.2));

        // FastAPI-style {"detail": ...} and a non-JSON body.
        let r = Row::from_outcome("p".into(), None, &outcome(Some(400), json!({"detail": "only ZIP"})));
        assert_eq!((r.error.as_str(), r.error_type.as_str()), ("only ZIP", "http_400"));
        let o = Outcome { status: Some(502), body_excerpt: Some("Bad Gateway".into()), attempts: 1, last_try_s: 0.1, ..Default::default() };
        let r = Row::from_outcome("p".into(), None, &o);
        assert_eq!((r.error.as_str(), r.time_of_processing), ("HTTP 502: Bad Gateway", Some(0.1)));

        // No answer.
        let o = Outcome { transport_error: Some("Request timeout (> 600 s)".into()), timed_out: true, attempts: 1, ..Default::default() };
        let r = Row::from_outcome("p".into(), None, &o);
        assert_eq!((r.error.as_str(), r.error_type.as_str(), r.http_status), ("Request timeout (> 600 s)", "client_timeout", None));
        let o = Outcome { transport_error: Some("connection refused".into()), attempts: 6, ..Default::default() };
        assert_eq!(Row::from_outcome("p".into(), None, &o).error_type, "connection_error");

        // A 200 that is not a usable success.
        let r = Row::from_outcome("p".into(), None, &outcome(Some(200), json!({"processing_status": "Success"})));
        assert_eq!((r.processing_status.as_str(), r.error_type.as_str()), ("Failure", "invalid_response"));
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("Cancer, Bronchiectasis"), "\"Cancer, Bronchiectasis\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }

    #[test]
    fn formats() {
        assert_eq!(Format::for_path(Path::new("r.CSV")).unwrap(), Format::Csv);
        assert_eq!(Format::for_path(Path::new("dir/r.xlsx")).unwrap(), Format::Xlsx);
        assert!(Format::for_path(Path::new("r.xls")).is_err());
        assert!(check_output(Path::new("/definitely/not/here/r.xlsx")).is_err());
        assert!(check_output(Path::new("r.xlsx")).is_ok());
    }
}
