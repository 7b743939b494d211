//! `--dicom-tree`: a folder tree of loose DICOM files, grouped into studies by StudyInstanceUID,
//! each study packed into a ZIP in memory (the reference's `prepare_and_run_inference.py`).
//!
//! Walk: recursive, sorted, symlinked folders not followed. Skipped by name (the gateway's rule,
//! celsus-reference §2.1, here case-insensitive): names starting with `.` (files and folders) and
//! files ending `.txt`, `.pdf`, `.jpg`, `.png`. Every other file is read up to Pixel Data; it
//! belongs to a study when it parses as DICOM with a StudyInstanceUID. Files without the 128-byte
//! preamble and data sets without file meta are read as well (the gateway accepts them).
//!
//! Deviations from the reference, which are its bugs:
//! - it reads with pydicom without `force`, so files without the preamble are dropped from the
//!   study although the service would use them;
//! - it stores entries under their base name only, so two files with the same name in different
//!   folders of one study (IM00001 of two series) overwrite each other in the archive; here the
//!   entry name is the path relative to the study's folder, always unique;
//! - its category is a substring test on the whole absolute path (see [`category_of`]);
//! - it writes the archives to a temp folder and leaves them there; here they live in memory only
//!   while the study is in flight.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use std::collections::BTreeMap;
use std::io::{BufReader, Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The reference's ground-truth categories (its spelling).
pub const CATEGORIES: [&str; 4] = ["norma", "pneumonia", "pneumotorax", "unknown"];

/// One study found in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    pub uid: String,
    /// Deepest folder holding all of the study's files (absolute): `path_to_study`.
    pub dir: PathBuf,
    /// The study's files, absolute, sorted.
    pub files: Vec<PathBuf>,
    /// `norma` | `pneumonia` | `pneumotorax` | `unknown`.
    pub category: &'static str,
    /// Set when the files' folders name different categories (the study is then `unknown`).
    pub conflicting_categories: Vec<&'static str>,
}

/// What the walk found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub studies: Vec<Study>,
    /// Files looked at (after the name rule).
    pub files_seen: usize,
    pub skipped_by_name: usize,
    /// Files that are not DICOM (or not readable).
    pub not_dicom: usize,
    /// DICOM files without a StudyInstanceUID.
    pub no_study_uid: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read folder {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
}

/// The reference's name rule: hidden names, and files ending .txt/.pdf/.jpg/.png.
pub fn skipped_name(name: &str, is_dir: bool) -> bool {
    if name.starts_with('.') {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    !is_dir && [".txt", ".pdf", ".jpg", ".png"].iter().any(|e| lower.ends_with(e))
}

/// The ground-truth category of a file from its path **relative to the input folder**.
///
/// Reference: `norma` if the lower-cased absolute path contains "norma", else `pneumonia` if it
/// contains "pneumonia", else `pneumotorax` if it contains "pneumotorax", else `unknown`. That
/// test also fires on the input folder's own ancestors (`/data/normal_vs_pneumonia/...` makes every
/// study `norma`) and on "abnormal". Here: the path components below the input folder are
/// examined from the top down, and the first component naming a category gives it; within one
/// component "pneumonia" and "pneumotorax"/"pneumothorax" are tested before "norma", and "norma"
/// only counts where it is not part of "abnorma". The values keep the reference's spelling.
pub fn category_of(relative: &Path) -> &'static str {
    for comp in relative.components() {
        let Component::Normal(c) = comp else { continue };
        let c = c.to_string_lossy().to_lowercase();
        if c.contains("pneumonia") {
            return "pneumonia";
        }
        if c.contains("pneumotorax") || c.contains("pneumothorax") {
            return "pneumotorax";
        }
        if c.match_indices("norma").any(|(i, _)| !c[..i].ends_with("ab")) {
            return "norma";
        }
    }
    "unknown"
}

/// Walks `root` and groups its DICOM files by StudyInstanceUID; headers are read on `threads`
/// threads. Studies are ordered by their first file's path.
pub fn scan(root: &Path, threads: usize) -> Result<Scan, TreeError> {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let mut files = Vec::new();
    let mut skipped_by_name = 0;
    walk(&root, &mut files, &mut skipped_by_name)?;
    let uids = read_uids(&files, threads.max(1));

    let mut scan = Scan { files_seen: files.len(), skipped_by_name, ..Default::default() };
    let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (file, uid) in files.into_iter().zip(uids) {
        match uid {
            Ok(uid) => groups.entry(uid).or_default().push(file),
            Err(Skip::NotDicom) => scan.not_dicom += 1,
            Err(Skip::NoStudyUid) => scan.no_study_uid += 1,
        }
    }
    for (uid, mut files) in groups {
        files.sort();
        let dir = common_dir(&files);
        let mut cats: Vec<&'static str> = files.iter().map(|f| category_of(f.strip_prefix(&root).unwrap_or(f))).filter(|c| *c != "unknown").collect();
        cats.sort_unstable();
        cats.dedup();
        let (category, conflicting_categories) = match cats.as_slice() {
            [] => ("unknown", Vec::new()),
            [one] => (*one, Vec::new()),
            _ => ("unknown", cats),
        };
        scan.studies.push(Study { uid, dir, files, category, conflicting_categories });
    }
    scan.studies.sort_by(|a, b| a.files[0].cmp(&b.files[0]));
    Ok(scan)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut usize) -> Result<(), TreeError> {
    let rd = std::fs::read_dir(dir).map_err(|source| TreeError::ReadDir { path: dir.to_path_buf(), source })?;
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        // Symlinked folders are not followed (no cycles); symlinked files are read.
        let is_dir = ft.is_dir();
        let is_file = ft.is_file() || (ft.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()));
        if !is_dir && !is_file {
            continue;
        }
        if skipped_name(&name, is_dir) {
            *skipped += 1;
            continue;
        }
        if is_dir {
            walk(&path, files, skipped)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    NotDicom,
    NoStudyUid,
}

fn read_uids(files: &[PathBuf], threads: usize) -> Vec<Result<String, Skip>> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<Result<String, Skip>> = vec![Err(Skip::NotDicom); files.len()];
    let chunks: Vec<Vec<(usize, Result<String, Skip>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(files.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        got.push((i, study_uid_of(f)));
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        out[i] = r;
    }
    out
}

/// StudyInstanceUID of a DICOM file, reading only up to Pixel Data.
fn study_uid_of(path: &Path) -> Result<String, Skip> {
    let f = std::fs::File::open(path).map_err(|_| Skip::NotDicom)?;
    let file_len = f.metadata().map_err(|_| Skip::NotDicom)?.len();
    let mut r = BufReader::new(f);
    let mut prefix = Vec::with_capacity(132);
    (&mut r).take(132).read_to_end(&mut prefix).map_err(|_| Skip::NotDicom)?;
    let header_only = OpenFileOptions::new().read_preamble(ReadPreamble::Never).read_until(tags::PIXEL_DATA);
    if prefix.len() >= 132 && &prefix[128..132] == b"DICM" || prefix.starts_with(b"DICM") {
        let skip = if prefix.starts_with(b"DICM") { 0 } else { 128 };
        let rest = Cursor::new(prefix[skip..].to_vec()).chain(r);
        let obj = header_only.from_reader(rest).map_err(|_| Skip::NotDicom)?;
        return text(&obj, tags::STUDY_INSTANCE_UID).ok_or(Skip::NoStudyUid);
    }
    // No file meta: guess the encoding from the first element (as the gateway does), put a
    // synthetic file meta group in front so that the header-only reader applies, and accept the
    // guess only when it yields a SOP Instance UID.
    let ts = guess_ts(&prefix).filter(|_| plausible_start(&prefix, file_len)).ok_or(Skip::NotDicom)?;
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
        .media_storage_sop_instance_uid("1.2.3")
        .build()
        .map_err(|_| Skip::NotDicom)?;
    let mut head = b"DICM".to_vec();
    meta.write(&mut head).map_err(|_| Skip::NotDicom)?;
    let obj = header_only.from_reader(Cursor::new(head).chain(Cursor::new(prefix)).chain(r)).map_err(|_| Skip::NotDicom)?;
    if text(&obj, tags::SOP_INSTANCE_UID).is_none() {
        return Err(Skip::NotDicom);
    }
    text(&obj, tags::STUDY_INSTANCE_UID).ok_or(Skip::NoStudyUid)
}

fn guess_ts(b: &[u8]) -> Option<&'static str> {
    if b.len() < 8 {
        return None;
    }
    let big = b[0] == 0 && b[1] != 0;
    let explicit = b[4].is_ascii_uppercase() && b[5].is_ascii_uppercase();
    Some(match (big, explicit) {
        (false, false) => "1.2.840.10008.1.2",
        (false, true) => "1.2.840.10008.1.2.1",
        (true, _) => "1.2.840.10008.1.2.2",
    })
}

/// Whether a data set without file meta plausibly starts here: the first element is in an even
/// group of the usual leading ones (0008-0028) and, in implicit VR, its length fits in the file.
/// Keeps arbitrary files (a stray video, a text file) from being parsed as DICOM with absurd lengths.
fn plausible_start(b: &[u8], file_len: u64) -> bool {
    if b.len() < 8 {
        return false;
    }
    let big = b[0] == 0 && b[1] != 0;
    let group = if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) };
    if group % 2 != 0 || !(0x0008..=0x0028).contains(&group) {
        return false;
    }
    let explicit = b[4].is_ascii_uppercase() && b[5].is_ascii_uppercase();
    explicit || u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])) <= file_len
}

fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// The deepest folder that holds all `files` (absolute paths).
fn common_dir(files: &[PathBuf]) -> PathBuf {
    let mut dir = files[0].parent().map(Path::to_path_buf).unwrap_or_default();
    for f in &files[1..] {
        while !f.starts_with(&dir) {
            if !dir.pop() {
                break;
            }
        }
    }
    dir
}

/// Packs a study into a ZIP in memory (deflate, fast level); entries are named by their path
/// relative to the study's folder with `/` separators, so names are unique and never escape.
pub fn pack(study: &Study) -> std::io::Result<Vec<u8>> {
    use zip::write::SimpleFileOptions;
    let total: u64 = study.files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::with_capacity((total / 2) as usize)));
    for f in &study.files {
        let rel = f.strip_prefix(&study.dir).unwrap_or(f);
        let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        let len = f.metadata()?.len();
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).compression_level(Some(1)).large_file(len >= u32::MAX as u64);
        zw.start_file(name, opts).map_err(std::io::Error::other)?;
        let mut src = std::fs::File::open(f)?;
        std::io::copy(&mut src, &mut zw)?;
    }
    let mut cur = zw.finish().map_err(std::io::Error::other)?;
    cur.flush()?;
    Ok(cur.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        let c = |p: &str| category_of(Path::new(p));
        assert_eq!(c("norma/p1/IM1"), "norma");
        assert_eq!(c("Normal/p1/IM1"), "norma");
        assert_eq!(c("abnormal/p1/IM1"), "unknown");
        assert_eq!(c("abnormal/pneumonia/IM1"), "pneumonia");
        assert_eq!(c("PNEUMONIA_cases/x"), "pneumonia");
        assert_eq!(c("pneumotorax/x"), "pneumotorax");
        assert_eq!(c("pneumothorax/x"), "pneumotorax");
        assert_eq!(c("other/x.dcm"), "unknown");
        // Top-down: the category folder wins over a deeper name.
        assert_eq!(c("pneumonia/normal_dose/IM1"), "pneumonia");
        assert_eq!(c("norma/pneumonia_followup/IM1"), "norma");
        // "normal" after "abnormal" in one component still counts.
        assert_eq!(c("abnormal_vs_normal/IM1"), "norma");
        assert!(CATEGORIES.contains(&c("x")));
    }

    #[test]
    fn names() {
        assert!(skipped_name(".DS_Store", false) && skipped_name(".git", true));
        assert!(skipped_name("report.TXT", false) && skipped_name("a.png", false));
        assert!(!skipped_name("IM0001", false) && !skipped_name("x.dcm", false) && !skipped_name("pics.png", true));
    }

    #[test]
    fn common_dirs() {
        let p = |v: &[&str]| common_dir(&v.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(p(&["/a/b/c/1", "/a/b/c/2"]), PathBuf::from("/a/b/c"));
        assert_eq!(p(&["/a/b/c/1", "/a/b/d/2"]), PathBuf::from("/a/b"));
        assert_eq!(p(&["/a/b/c/1", "/a/bc/2"]), PathBuf::from("/a"));
    }

    #[test]
    fn plausible_starts() {
        assert!(plausible_start(&[8, 0, 5, 0, 10, 0, 0, 0], 100));
        assert!(!plausible_start(&[8, 0, 5, 0, 0, 0, 0, 1], 100), "implicit length beyond the file");
        assert!(plausible_start(&[8, 0, 5, 0, b'C', b'S', 10, 0], 100));
        assert!(!plausible_start(b"definitely not DICOM", 1000));
        assert!(!plausible_start(&[9, 0, 5, 0, 10, 0, 0, 0], 100), "odd (private) group");
    }

    #[test]
    fn ts_guess() {
        // (0008,0005) CS explicit VR little endian, implicit, big endian.
        assert_eq!(guess_ts(&[8, 0, 5, 0, b'C', b'S', 10, 0]), Some("1.2.840.10008.1.2.1"));
        assert_eq!(guess_ts(&[8, 0, 5, 0, 10, 0, 0, 0]), Some("1.2.840.10008.1.2"));
        assert_eq!(guess_ts(&[0, 8, 0, 5, b'C', b'S', 0, 10]), Some("1.2.840.10008.1.2.2"));
        assert_eq!(guess_ts(&[1, 2]), None);
    }
}
