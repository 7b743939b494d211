//! Every file and archive in `../shared/testdata/dicom` gives a volume or a typed error (no
//! panic, no `internal`), plus decoder correctness on the NEMA WG04 and dcm_qa_ts sets.

use preprocess_svc::dicom::{decode_frames, read_object};
use preprocess_svc::{PrepareConfig, prepare_path};
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/dicom")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.file_name().unwrap() != "MANIFEST.sha256" {
            out.push(p);
        }
    }
}

fn outcome(path: &Path, cfg: &PrepareConfig) -> Result<[usize; 3], &'static str> {
    match prepare_path(path, cfg) {
        Ok(p) => Ok(p.volume.dims()),
        Err(e) => {
            assert_ne!(e.error_type(), "internal", "{}: {e}", path.display());
            Err(e.error_type())
        }
    }
}

#[test]
fn every_testdata_input_gives_a_volume_or_a_typed_error() {
    let mut all = Vec::new();
    files(&testdata(), &mut all);
    all.push(testdata().join("series/dcmqi_ge_lightspeedultra_liver_3sl"));
    all.sort();
    assert!(all.len() >= 55, "testdata missing? found {}", all.len());
    // reference settings, and min_slices = 1 so that single files are decoded and assembled too
    let strict = PrepareConfig::default();
    let lenient = PrepareConfig { min_slices: 1, skip_lung_validation: true, ..PrepareConfig::default() };
    let mut volumes = 0;
    for p in &all {
        let r = outcome(p, &strict);
        assert!(r.is_err(), "{}: no test input is a full chest CT, got {r:?}", p.display());
        if outcome(p, &lenient).is_ok() {
            volumes += 1;
        }
    }
    assert!(volumes >= 25, "only {volumes} inputs decoded to a volume");
}

#[test]
fn expected_outcomes_of_the_real_series() {
    let s = testdata().join("series");
    let cfg = PrepareConfig { skip_lung_validation: true, ..PrepareConfig::default() };
    // both tilted series: refused (the reference refuses them too, with a 500)
    assert_eq!(outcome(&s.join("dcm_qa_ct_ge_hispeed_head_tilt_28sl.zip"), &cfg), Err("inconsistent_geometry"));
    assert_eq!(outcome(&s.join("dcm_qa_ct_philips_ingenuity_stereotaxis_tilt_54sl.zip"), &cfg), Err("inconsistent_geometry"));
    // Philips study: scout + secondary captures skipped, the 28-slice axial series chosen
    // (the reference crashes on the SC files' empty SliceLocation)
    let p = prepare_path(&s.join("dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip"), &cfg).unwrap();
    assert_eq!(p.volume.dims(), [512, 512, 28]);
    assert_eq!(p.volume.geometry().spacing_mm, [0.451171875, 0.451171875, 5.0]);
    assert!(p.meta.warnings.iter().any(|w| w.contains("localizer")), "{:?}", p.meta.warnings);
    assert!(p.meta.warnings.iter().any(|w| w.contains("secondary capture")), "{:?}", p.meta.warnings);
    // the same study with lung validation: a head phantom is not a chest (its air cavity is too short)
    assert_eq!(outcome(&s.join("dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip"), &PrepareConfig::default()), Err("lungs_too_short"));
    // too few slices
    assert_eq!(outcome(&s.join("dcmqi_ge_lightspeedultra_liver_3sl"), &cfg), Err("no_valid_series"));
    assert_eq!(outcome(&testdata().join("edge/dicom-numpy_c4kckits_dupe-positions_11sl.zip"), &cfg), Err("no_valid_series"));
    // with the minimum lowered, the duplicate positions are removed and the gaps refused
    let lenient = PrepareConfig { min_slices: 1, ..cfg.clone() };
    assert_eq!(outcome(&testdata().join("edge/dicom-numpy_c4kckits_dupe-positions_11sl.zip"), &lenient), Err("inconsistent_geometry"));
    let liver = prepare_path(&s.join("dcmqi_ge_lightspeedultra_liver_3sl"), &lenient).unwrap();
    assert_eq!(liver.volume.dims(), [512, 512, 3]);
}

fn decode(path: &Path) -> Vec<i32> {
    let mut f = std::fs::File::open(path).unwrap();
    let obj = read_object(&mut f, false).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut all = Vec::new();
    decode_frames(&obj, |_, v| all.extend_from_slice(v)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    all
}

fn max_diff(a: &[i32], b: &[i32]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).max().unwrap()
}

#[test]
fn compressed_transfer_syntaxes_decode_like_the_uncompressed_original() {
    let d = testdata().join("compressed/wg04_ct");
    for ct in ["CT1", "CT2"] {
        let reference = decode(&d.join(format!("{ct}_UNC.dcm")));
        for (codec, tol) in [("RLE", 0), ("JPLL", 0), ("JLSL", 0), ("J2KR", 0), ("JLSN", 4), ("J2KI", 402)] {
            let got = decode(&d.join(format!("{ct}_{codec}.dcm")));
            let m = max_diff(&got, &reference);
            assert!(m <= tol, "{ct}_{codec}: max diff {m} > {tol}");
        }
    }
    // one MR image in 9 transfer syntaxes from two encoders (incl. big endian): all identical
    let d = testdata().join("compressed/dcm_qa_ts_mr");
    let reference = decode(&d.join("1.dcm"));
    for i in 2..=9 {
        assert_eq!(max_diff(&decode(&d.join(format!("{i}.dcm"))), &reference), 0, "dcm_qa_ts {i}.dcm");
    }
}

#[test]
fn files_without_file_meta_are_read_with_a_guessed_encoding() {
    let e = testdata().join("edge");
    for (name, study) in [("pydicom_ExplVR_LitEndNoMeta.dcm", true), ("pydicom_ExplVR_BigEndNoMeta.dcm", true), ("pydicom_no_meta.dcm", false)] {
        let mut f = std::fs::File::open(e.join(name)).unwrap();
        let r = read_object(&mut f, true);
        // pydicom_no_meta.dcm starts with a stray byte: it must be refused, not misread
        assert_eq!(r.is_ok(), study, "{name}: {:?}", r.err());
    }
    // CT_small read from memory without its 128-byte preamble (DICM at offset 0)
    let bytes = std::fs::read(testdata().join("single_slice/pydicom_CT_small.dcm")).unwrap();
    let obj = read_object(&mut &bytes[128..], false).unwrap();
    let mut n = 0;
    decode_frames(&obj, |_, v| n += v.len()).unwrap();
    assert_eq!(n, 128 * 128);
}

#[test]
fn elements_written_as_vr_un_are_read_with_their_dictionary_vr() {
    // a real TCIA CT whose converter wrote almost every element with VR UN (gdcmconv bug):
    // UIDs, Modality, PixelSpacing and the pixel module must still be read
    let path = testdata().join("edge/pydicom-data_explicit_VR-UN.dcm");
    let cfg = PrepareConfig { min_slices: 1, skip_lung_validation: true, ..PrepareConfig::default() };
    let p = prepare_path(&path, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.meta.modality, "CT");
    assert_eq!(p.meta.study_uid, "1.2.826.0.1.3680043.2.1125.1.38381854871216336385978062044218957");
    assert_eq!(p.volume.dims(), [512, 512, 1]);
    assert_eq!(&p.volume.geometry().spacing_mm[..2], &[0.859375, 0.859375]);
    // the same file through the header reader: typed values, not byte lists
    let mut f = std::fs::File::open(&path).unwrap();
    let h = preprocess_svc::dicom::header(&read_object(&mut f, true).unwrap()).unwrap();
    assert_eq!((h.rows, h.cols, h.modality.as_str()), (512, 512, "CT"));
    assert!(h.frame_info[0].ipp.is_some() && h.frame_info[0].iop.is_some(), "{:?}", h.frame_info[0]);
}
