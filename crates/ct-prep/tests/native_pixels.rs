//! The native pixel-data fast path (`dicom::native_pixel_data`) gives exactly the values of the
//! dicom-rs decoding path on every DICOM file it accepts, in the shared test data (real series,
//! edge cases) and the committed generated studies, and leaves encapsulated and odd files alone.

use ct_prep::dicom::{decode_frames, native_pixel_data, read_object};
use std::io::Read;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every file of the test data as (name, bytes): plain files and the entries of the ZIPs.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut paths = Vec::new();
    files(&root.join("../shared/testdata/dicom"), &mut paths);
    files(&root.join("tests/fixtures/studies"), &mut paths);
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).unwrap();
        if p.extension().is_some_and(|e| e == "zip") {
            let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
            for i in 0..z.len() {
                let mut f = z.by_index(i).unwrap();
                let name = format!("{}:{}", p.display(), f.name().map(|n| n.into_owned()).unwrap_or_default());
                let mut b = Vec::new();
                if f.is_file() && f.read_to_end(&mut b).is_ok() {
                    out.push((name, b));
                }
            }
        } else {
            out.push((p.display().to_string(), bytes));
        }
    }
    out
}

fn frames_of(decode: impl FnOnce(&mut dyn FnMut(usize, &[i32])) -> Result<(), ct_prep::PrepError>) -> Result<Vec<(usize, Vec<i32>)>, String> {
    let mut got = Vec::new();
    decode(&mut |f, v| got.push((f, v.to_vec()))).map_err(|e| e.to_string())?;
    Ok(got)
}

#[test]
fn native_fast_path_equals_dicom_rs_decoding() {
    let (mut fast, mut general) = (0, 0);
    for (name, bytes) in corpus() {
        let Ok(head) = read_object(&mut &bytes[..], true) else { continue };
        match native_pixel_data(&head, &bytes) {
            Some(pixels) => {
                let full = read_object(&mut &bytes[..], false).unwrap_or_else(|e| panic!("{name}: {e}"));
                let expected = frames_of(|s| decode_frames(&full, s));
                assert_eq!(frames_of(|s| pixels.decode(s)), expected, "{name}");
                fast += 1;
            }
            None => general += 1,
        }
    }
    // the real series, the generated studies and the native edge files take the fast path; the
    // compressed and big-endian ones do not
    assert!(fast >= 250, "only {fast} files took the native path ({general} did not)");
    assert!(general >= 10, "{general}");
}

#[test]
fn only_a_final_pixel_data_element_of_the_announced_size_is_taken() {
    let corpus = corpus();
    let (name, bytes) = corpus
        .iter()
        .find(|(n, b)| n.contains("chest_normal") && read_object(&mut &b[..], true).is_ok_and(|h| native_pixel_data(&h, b).is_some()))
        .expect("a generated slice with native pixel data");
    let head = read_object(&mut &bytes[..], true).unwrap();
    // a trailing element after the pixel data, a truncated file, a wrong length: general path
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&[0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 0]);
    assert!(native_pixel_data(&head, &trailing).is_none(), "{name}");
    assert!(native_pixel_data(&head, &bytes[..bytes.len() - 2]).is_none(), "{name}");
    let mut wrong = bytes.clone();
    let at = wrong.len() - native_len(&head) - 4;
    wrong[at] ^= 2;
    assert!(native_pixel_data(&head, &wrong).is_none(), "{name}");
}

/// rows * cols * 2 of a 16-bit single-frame header.
fn native_len(head: &dicom_object::DefaultDicomObject) -> usize {
    let v = |t| head.element(t).unwrap().to_int::<usize>().unwrap();
    v(dicom_dictionary_std::tags::ROWS) * v(dicom_dictionary_std::tags::COLUMNS) * 2
}
