//! DICOM reading: one header pass (stops before Pixel Data) and one decode pass.
//!
//! Accepted framings: the standard 128-byte preamble + `DICM`, `DICM` at offset 0 (no
//! preamble), and data sets without file meta (implicit or explicit VR, little or big endian,
//! guessed from the first element). Optional tags that are malformed are treated as absent.

use crate::PrepError;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use std::io::{Cursor, Read};

/// Geometry and value transform of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInfo {
    pub ipp: Option<[f64; 3]>,
    pub iop: Option<[f64; 6]>,
    /// (row spacing, column spacing) as in PixelSpacing.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slope: f64,
    pub intercept: f64,
}

/// What the header pass learns about one file.
#[derive(Debug, Clone)]
pub struct FileHeader {
    pub study_uid: String,
    pub series_uid: String,
    pub modality: String,
    pub sop_class_uid: String,
    pub image_type: Vec<String>,
    /// ConvolutionKernel, else FilterType, upper-cased, values joined with `\`.
    pub kernel: String,
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    pub instance_number: Option<i64>,
    pub slice_thickness: Option<f64>,
    pub transfer_syntax: String,
    /// One entry per frame (functional groups for enhanced objects, else the top level).
    pub frame_info: Vec<FrameInfo>,
}

impl FileHeader {
    pub fn is_localizer(&self) -> bool {
        self.image_type.iter().any(|t| t == "LOCALIZER") || (self.modality == "CT" && self.image_type.iter().any(|t| t == "PROJECTION IMAGE"))
    }

    pub fn is_secondary_capture(&self) -> bool {
        self.sop_class_uid.starts_with("1.2.840.10008.5.1.4.1.1.7")
    }

    pub fn is_image(&self) -> bool {
        self.rows > 0 && self.cols > 0
    }
}

/// Why a file is not a DICOM instance we can use.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    #[error("not DICOM: {0}")]
    NotDicom(String),
    #[error("missing required tag {0}")]
    MissingTag(&'static str),
}

const PREFIX: usize = 132;
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Gives standard elements stored with VR UN their dictionary VR, parsing the raw bytes.
///
/// Some converters (a known gdcmconv bug; `explicit_VR-UN.dcm` in pydicom's test data) write
/// almost every element of an explicit-VR file as UN, so Modality reads as bytes and Rows or
/// PixelSpacing not at all. PS3.5 §6.2.2: a UN value holds the bytes of the value in the
/// transfer syntax's byte order, so it can be read again with the VR the dictionary gives.
/// Elements with no exact dictionary VR, sequences and binary blobs are left as they are.
fn reinterpret_un(obj: &mut InMemDicomObject, little_endian: bool) {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_core::header::Header;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::StandardDataDictionary;
    let found: Vec<(Tag, VR, Vec<u8>)> = obj
        .iter()
        .filter(|e| e.vr() == VR::UN && e.tag() != tags::PIXEL_DATA)
        .filter_map(|e| {
            let vr = StandardDataDictionary.by_tag(e.tag())?.vr().exact()?;
            Some((e.tag(), vr, e.to_bytes().ok()?.into_owned()))
        })
        .collect();
    for (tag, vr, bytes) in found {
        if let Some(value) = primitive_from_un(vr, &bytes, little_endian) {
            obj.put(DataElement::new(tag, vr, value));
        }
    }
}

/// The value of `bytes` read as `vr`; `None` for VRs not handled here or malformed lengths.
fn primitive_from_un(vr: dicom_core::VR, bytes: &[u8], little_endian: bool) -> Option<dicom_core::PrimitiveValue> {
    use dicom_core::{PrimitiveValue as P, VR};
    fn nums<const N: usize, T>(b: &[u8], le: bool, f: impl Fn([u8; N]) -> T) -> Option<dicom_core::smallvec::SmallVec<[T; 2]>> {
        if !b.len().is_multiple_of(N) {
            return None;
        }
        Some(
            b.chunks_exact(N)
                .map(|c| {
                    let mut a: [u8; N] = c.try_into().expect("chunks of N");
                    if !le {
                        a.reverse();
                    }
                    f(a)
                })
                .collect(),
        )
    }
    let text = || String::from_utf8_lossy(bytes).trim_end_matches(['\0', ' ']).to_string();
    Some(match vr {
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::LO | VR::PN | VR::SH | VR::TM | VR::UC | VR::UI => {
            P::Strs(text().split('\\').map(|v| v.trim_matches(['\0', ' ']).to_string()).collect())
        }
        VR::LT | VR::ST | VR::UT | VR::UR => P::Str(text()),
        VR::US => P::U16(nums(bytes, little_endian, u16::from_le_bytes)?),
        VR::SS => P::I16(nums(bytes, little_endian, i16::from_le_bytes)?),
        VR::UL => P::U32(nums(bytes, little_endian, u32::from_le_bytes)?),
        VR::SL => P::I32(nums(bytes, little_endian, i32::from_le_bytes)?),
        VR::FL => P::F32(nums(bytes, little_endian, f32::from_le_bytes)?),
        VR::FD => P::F64(nums(bytes, little_endian, f64::from_le_bytes)?),
        _ => return None,
    })
}

fn framing(prefix: &[u8]) -> (usize, bool) {
    if prefix.len() >= PREFIX && &prefix[128..132] == b"DICM" {
        (128, true)
    } else if prefix.starts_with(b"DICM") {
        (0, true)
    } else {
        (0, false)
    }
}

/// Guesses the transfer syntax of a data set without file meta from its first element.
fn guess_ts(b: &[u8]) -> Option<&'static str> {
    if b.len() < 8 {
        return None;
    }
    let big = b[0] == 0 && b[1] != 0;
    let explicit = b[4].is_ascii_uppercase() && b[5].is_ascii_uppercase();
    Some(match (big, explicit) {
        (false, false) => uids::IMPLICIT_VR_LITTLE_ENDIAN,
        (false, true) => uids::EXPLICIT_VR_LITTLE_ENDIAN,
        (true, _) => EXPLICIT_VR_BIG_ENDIAN, // retired, still readable
    })
}

/// Reads a DICOM object from a stream, stopping before Pixel Data when `header_only`.
pub fn read_object(r: &mut dyn Read, header_only: bool) -> Result<DefaultDicomObject, ReadFailure> {
    let mut prefix = Vec::with_capacity(PREFIX);
    r.take(PREFIX as u64).read_to_end(&mut prefix).map_err(|e| ReadFailure::NotDicom(e.to_string()))?;
    let (skip, has_meta) = framing(&prefix);
    let rest = Cursor::new(prefix[skip..].to_vec()).chain(r);
    if has_meta {
        let mut opts = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
        if header_only {
            opts = opts.read_until(tags::PIXEL_DATA);
        }
        let mut obj = opts.from_reader(rest).map_err(|e| ReadFailure::NotDicom(e.to_string()))?;
        let little_endian = obj.meta().transfer_syntax().trim_end_matches('\0') != EXPLICIT_VR_BIG_ENDIAN;
        reinterpret_un(&mut obj, little_endian);
        return Ok(obj);
    }
    let ts_uid = guess_ts(&prefix).ok_or_else(|| ReadFailure::NotDicom("too short".into()))?;
    let ts = TransferSyntaxRegistry.get(ts_uid).ok_or_else(|| ReadFailure::NotDicom("transfer syntax".into()))?;
    let obj = InMemDicomObject::read_dataset_with_ts(rest, ts).map_err(|e| ReadFailure::NotDicom(e.to_string()))?;
    // A guessed encoding only counts when it yields the identifying tags.
    if obj.get(tags::SOP_INSTANCE_UID).is_none() {
        return Err(ReadFailure::NotDicom("no file meta and no recognisable data set".into()));
    }
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts_uid)
        .media_storage_sop_class_uid(text(&obj, tags::SOP_CLASS_UID).unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.2".into()))
        .media_storage_sop_instance_uid(text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default())
        .build()
        .map_err(|e| ReadFailure::NotDicom(e.to_string()))?;
    Ok(obj.with_exact_meta(meta))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string();
    (!s.is_empty()).then_some(s)
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let v = obj.get(tag)?.to_multi_float64().ok()?;
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).map(|v| v[0])
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn first_item(obj: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    obj.get(seq)?.items()?.first()
}

/// Looks `attr` up in functional group `group` of frame `f` (per-frame, then shared), then at the top level.
fn fg<'a>(obj: &'a InMemDicomObject, f: usize, group: Tag, attr: Tag) -> Option<&'a InMemDicomObject> {
    let per_frame = obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).and_then(|items| items.get(f));
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    for holder in [per_frame, shared].into_iter().flatten() {
        if let Some(item) = first_item(holder, group)
            && item.get(attr).is_some()
        {
            return Some(item);
        }
    }
    obj.get(attr).is_some().then_some(obj)
}

fn frame_info(obj: &InMemDicomObject, f: usize) -> FrameInfo {
    let arr = |v: Vec<f64>, n: usize| (v.len() >= n).then_some(v);
    let ipp = fg(obj, f, tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)
        .and_then(|o| arr(floats(o, tags::IMAGE_POSITION_PATIENT)?, 3))
        .map(|v| [v[0], v[1], v[2]]);
    let iop = fg(obj, f, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)
        .and_then(|o| arr(floats(o, tags::IMAGE_ORIENTATION_PATIENT)?, 6))
        .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]);
    let pixel_spacing = fg(obj, f, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
        .and_then(|o| arr(floats(o, tags::PIXEL_SPACING)?, 2))
        .filter(|v| v[0] > 0.0 && v[1] > 0.0)
        .map(|v| [v[0], v[1]]);
    let rescale = fg(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tags::RESCALE_SLOPE);
    let slope = rescale.and_then(|o| float(o, tags::RESCALE_SLOPE)).filter(|s| *s != 0.0).unwrap_or(1.0);
    let intercept = fg(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tags::RESCALE_INTERCEPT).and_then(|o| float(o, tags::RESCALE_INTERCEPT)).unwrap_or(0.0);
    FrameInfo { ipp, iop, pixel_spacing, slope, intercept }
}

/// Extracts what series selection and assembly need; the four identifying tags are required
/// (reference validation), every other tag is optional and ignored when malformed.
pub fn header(obj: &DefaultDicomObject) -> Result<FileHeader, ReadFailure> {
    let req = |tag, name| text(obj, tag).ok_or(ReadFailure::MissingTag(name));
    let study_uid = req(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_uid = req(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    req(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let modality = req(tags::MODALITY, "Modality")?.to_ascii_uppercase();
    let kernel = obj
        .get(tags::CONVOLUTION_KERNEL)
        .or_else(|| obj.get(tags::FILTER_TYPE))
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect::<Vec<_>>().join("\\"))
        .unwrap_or_default();
    let image_type = obj
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect())
        .unwrap_or_default();
    let frames = int(obj, tags::NUMBER_OF_FRAMES).filter(|n| *n > 1).map_or(1, |n| n.min(u32::MAX as i64) as u32);
    let frame_info = (0..frames as usize).map(|f| frame_info(obj, f)).collect();
    Ok(FileHeader {
        study_uid,
        series_uid,
        modality,
        sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_else(|| obj.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string()),
        image_type,
        kernel,
        rows: int(obj, tags::ROWS).filter(|v| *v > 0).unwrap_or(0) as u32,
        cols: int(obj, tags::COLUMNS).filter(|v| *v > 0).unwrap_or(0) as u32,
        frames,
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        slice_thickness: float(obj, tags::SLICE_THICKNESS).filter(|t| *t > 0.0),
        transfer_syntax: obj.meta().transfer_syntax().trim_end_matches('\0').to_string(),
        frame_info,
    })
}

/// Decodes every frame of `obj` to stored values as i32 (sign handled per PixelRepresentation
/// and BitsStored, as pydicom does), calling `sink(frame, values)` per frame.
pub fn decode_frames(obj: &DefaultDicomObject, mut sink: impl FnMut(usize, &[i32])) -> Result<(), PrepError> {
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let unsupported = |reason: String| PrepError::UnsupportedTransferSyntax { reason };
    match TransferSyntaxRegistry.get(&ts) {
        None => return Err(unsupported(format!("unknown transfer syntax {ts}"))),
        Some(t) if !t.can_decode_all() => return Err(unsupported(format!("no decoder for transfer syntax {ts} ({})", t.name()))),
        Some(_) => {}
    }
    let decoded = obj.decode_pixel_data().map_err(|e| decode_error(&ts, e.to_string()))?;
    if decoded.samples_per_pixel() != 1 {
        return Err(unsupported(format!("{} samples per pixel (CT is monochrome)", decoded.samples_per_pixel())));
    }
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored().clamp(1, bits_allocated.max(1));
    let signed = matches!(decoded.pixel_representation(), dicom_pixeldata::PixelRepresentation::Signed);
    let (rows, cols) = (decoded.rows() as usize, decoded.columns() as usize);
    let mut values = vec![0i32; rows * cols];
    for f in 0..decoded.number_of_frames() {
        let data = decoded.frame_data(f).map_err(|e| decode_error(&ts, e.to_string()))?;
        stored_values(data, bits_allocated, bits_stored, signed, &mut values).map_err(unsupported)?;
        sink(f as usize, &values);
    }
    Ok(())
}

/// One frame's bytes (little-endian) to stored values, sign-extended from `bits_stored`.
fn stored_values(data: &[u8], bits_allocated: u16, bits_stored: u16, signed: bool, values: &mut [i32]) -> Result<(), String> {
    match bits_allocated {
        16 => {
            let shift = 16 - bits_stored.min(16);
            for (v, c) in values.iter_mut().zip(data.chunks_exact(2)) {
                let raw = u16::from_le_bytes([c[0], c[1]]);
                *v = if signed { i32::from(((raw << shift) as i16) >> shift) } else { i32::from(raw) };
            }
        }
        8 => {
            for (v, &b) in values.iter_mut().zip(data) {
                *v = if signed { i32::from(b as i8) } else { i32::from(b) };
            }
        }
        other => return Err(format!("BitsAllocated {other} (CT uses 8 or 16)")),
    }
    Ok(())
}

/// Native (uncompressed, little-endian) pixel data located in the raw bytes of the whole file,
/// without parsing it: the Pixel Data element must be the file's last, with a defined length of
/// exactly the frames' size (plus a pad byte when odd), as the header (`obj`, read up to Pixel
/// Data) announces. dicom-rs would zero-fill, copy and re-copy the frames (a tenth of the
/// preprocessing CPU). `None` for anything else (encapsulated or big-endian data, trailing
/// elements, odd attributes): those take [`decode_frames`].
pub fn native_pixel_data<'f>(obj: &DefaultDicomObject, file: &'f [u8]) -> Option<NativePixels<'f>> {
    let explicit = match obj.meta().transfer_syntax().trim_end_matches('\0') {
        uids::EXPLICIT_VR_LITTLE_ENDIAN => true,
        uids::IMPLICIT_VR_LITTLE_ENDIAN => false,
        _ => return None,
    };
    let pos = |tag: Tag| int(obj, tag).and_then(|v| usize::try_from(v).ok());
    let (rows, cols) = (pos(tags::ROWS)?, pos(tags::COLUMNS)?);
    let bits_allocated = u16::try_from(pos(tags::BITS_ALLOCATED)?).ok().filter(|b| matches!(b, 8 | 16))?;
    let bits_stored = u16::try_from(pos(tags::BITS_STORED)?).ok().filter(|b| (1..=bits_allocated).contains(b))?;
    let signed = match pos(tags::PIXEL_REPRESENTATION)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    if pos(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 || obj.get(tags::PIXEL_DATA).is_some() {
        return None;
    }
    let frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(_) => pos(tags::NUMBER_OF_FRAMES).filter(|&n| n >= 1)?,
    };
    let frame_bytes = rows.checked_mul(cols)?.checked_mul(usize::from(bits_allocated / 8))?;
    let len = frame_bytes.checked_mul(frames)?;
    let header_len = if explicit { 12 } else { 8 };
    for value_len in [len, len + (len & 1)] {
        let Some(at) = file.len().checked_sub(header_len + value_len) else { continue };
        let h = &file[at..at + header_len];
        let declared = u32::from_le_bytes(h[header_len - 4..].try_into().ok()?) as usize;
        let vr_ok = !explicit || ((&h[4..6] == b"OW" || &h[4..6] == b"OB") && h[6..8] == [0, 0]);
        if h[..4] == [0xE0, 0x7F, 0x10, 0x00] && vr_ok && declared == value_len {
            let data = &file[at + header_len..at + header_len + len];
            return Some(NativePixels { data, frame_bytes, bits_allocated, bits_stored, signed, pixels: rows * cols });
        }
    }
    None
}

/// See [`native_pixel_data`].
#[derive(Debug)]
pub struct NativePixels<'f> {
    data: &'f [u8],
    frame_bytes: usize,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    pixels: usize,
}

impl NativePixels<'_> {
    /// The same values as [`decode_frames`] gives for this file.
    pub fn decode(&self, mut sink: impl FnMut(usize, &[i32])) -> Result<(), PrepError> {
        let mut values = vec![0i32; self.pixels];
        for (f, frame) in self.data.chunks_exact(self.frame_bytes).enumerate() {
            stored_values(frame, self.bits_allocated, self.bits_stored, self.signed, &mut values).map_err(|reason| PrepError::UnsupportedTransferSyntax { reason })?;
            sink(f, &values);
        }
        Ok(())
    }
}

/// The codec exists but could not decode this pixel data (a codec feature we lack, such as
/// 12-bit lossy JPEG, or corrupt/truncated data).
fn decode_error(ts: &str, msg: String) -> PrepError {
    PrepError::UnsupportedTransferSyntax { reason: format!("pixel data could not be decoded ({ts}): {msg}") }
}

#[cfg(test)]
mod tests {
    use super::primitive_from_un;
    use dicom_core::{PrimitiveValue as P, VR};

    #[test]
    fn un_bytes_are_read_with_the_dictionary_vr() {
        assert_eq!(primitive_from_un(VR::CS, b"ORIGINAL\\PRIMARY\\AXIAL ", true), Some(P::Strs(["ORIGINAL", "PRIMARY", "AXIAL"].map(String::from).into_iter().collect())));
        assert_eq!(primitive_from_un(VR::UI, b"1.2.3\0", true), Some(P::Strs(["1.2.3".to_string()].into_iter().collect())));
        assert_eq!(primitive_from_un(VR::DS, b"0.859375\\0.859375 ", true).unwrap().to_multi_float64().unwrap(), vec![0.859375, 0.859375]);
        assert_eq!(primitive_from_un(VR::LT, b"a\\b ", true), Some(P::Str("a\\b".into())));
        assert_eq!(primitive_from_un(VR::US, &[0x00, 0x02], true), Some(P::U16([512].into_iter().collect())));
        assert_eq!(primitive_from_un(VR::US, &[0x02, 0x00], false), Some(P::U16([512].into_iter().collect())));
        assert_eq!(primitive_from_un(VR::SS, &[0xff, 0xff, 0x00, 0x04], true), Some(P::I16([-1, 1024].into_iter().collect())));
        assert_eq!(primitive_from_un(VR::FD, &1.5f64.to_le_bytes(), true), Some(P::F64([1.5].into_iter().collect())));
        // a length that is not a whole number of values, and VRs left alone
        assert_eq!(primitive_from_un(VR::US, &[1, 2, 3], true), None);
        assert_eq!(primitive_from_un(VR::SQ, &[], true), None);
        assert_eq!(primitive_from_un(VR::OB, &[1], true), None);
    }
}
