//! Input intake: format sniffing and safe, in-memory ZIP reading (never extracted to disk).
//!
//! Limits (all configurable): archive size, number of entries, total uncompressed bytes
//! (declared *and* actually inflated, so a lying header does not help a zip bomb) and the
//! per-entry compression ratio. Entry names that would escape a folder are refused.

use crate::PrepError;
use std::borrow::Cow;
use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use zip::{CompressionMethod, ZipArchive};

#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest accepted input (archive or NIfTI) in bytes.
    #[arg(long, env = "CT_MAX_INPUT_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_input_bytes: u64,
    /// Most entries a ZIP archive may have.
    #[arg(long, env = "CT_MAX_ZIP_ENTRIES", default_value_t = 20_000)]
    pub max_zip_entries: usize,
    /// Most bytes a ZIP archive may inflate to, in total.
    #[arg(long, env = "CT_MAX_UNCOMPRESSED_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_uncompressed_bytes: u64,
    /// Highest compression ratio of one ZIP entry (uncompressed / compressed) for entries above 1 MiB.
    #[arg(long, env = "CT_MAX_COMPRESSION_RATIO", default_value_t = 200)]
    pub max_compression_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_input_bytes: 2 << 30, max_zip_entries: 20_000, max_uncompressed_bytes: 4 << 30, max_compression_ratio: 200 }
    }
}

/// What the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Zip,
    Nifti,
}

/// Sniffs the format from the first bytes: ZIP local/empty header, gzip (NIfTI .nii.gz), or a
/// NIfTI-1 header (`sizeof_hdr` = 348 in either byte order).
pub fn sniff(bytes: &[u8]) -> Option<InputKind> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(InputKind::Zip);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Some(InputKind::Nifti);
    }
    if bytes.len() >= 348 {
        let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if le == 348 || be == 348 {
            return Some(InputKind::Nifti);
        }
    }
    None
}

/// A ZIP archive held in memory, with its limits checked against the central directory.
pub struct ZipInput<'a> {
    archive: ZipArchive<Cursor<&'a [u8]>>,
    /// (index in the archive, name) of the candidate files, in archive order.
    pub files: Vec<(usize, String)>,
    /// Entries ignored by name (hidden files, reports, pictures) and directories.
    pub ignored: usize,
    limits: Limits,
    inflated: AtomicU64,
    /// The archive's bytes (stored entries are parsed in place).
    bytes: &'a [u8],
}

const SKIP_SUFFIXES: [&str; 4] = [".txt", ".pdf", ".jpg", ".png"];

impl<'a> ZipInput<'a> {
    pub fn open(bytes: &'a [u8], limits: &Limits) -> Result<Self, PrepError> {
        if bytes.len() as u64 > limits.max_input_bytes {
            return Err(PrepError::TooLarge { what: "archive".into(), size: bytes.len() as u64, limit: limits.max_input_bytes });
        }
        let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| PrepError::not_archive(format!("not a readable ZIP archive: {e}")))?;
        if archive.len() > limits.max_zip_entries {
            return Err(PrepError::TooLarge { what: "number of ZIP entries".into(), size: archive.len() as u64, limit: limits.max_zip_entries as u64 });
        }
        let mut files = Vec::new();
        let mut ignored = 0;
        let mut declared = 0u64;
        for idx in 0..archive.len() {
            let entry = archive.by_index_raw(idx).map_err(|e| PrepError::not_archive(format!("unreadable ZIP entry #{idx}: {e}")))?;
            let raw_name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("#{idx}"));
            let Some(safe) = entry.enclosed_name() else {
                return Err(PrepError::not_archive(format!("unsafe entry name {raw_name:?} (path escapes the archive)")));
            };
            if entry.is_dir() || entry.is_symlink() {
                ignored += 1;
                continue;
            }
            let size = entry.size();
            declared = declared.saturating_add(size);
            if size > 1 << 20 && size / entry.compressed_size().max(1) > limits.max_compression_ratio {
                return Err(PrepError::TooLarge {
                    what: format!("entry {raw_name:?} compression ratio {}", size / entry.compressed_size().max(1)),
                    size,
                    limit: limits.max_compression_ratio,
                });
            }
            let base = safe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if base.starts_with('.') || SKIP_SUFFIXES.iter().any(|s| base.ends_with(s)) {
                ignored += 1;
                continue;
            }
            files.push((idx, safe.to_string_lossy().into_owned()));
        }
        if declared > limits.max_uncompressed_bytes {
            return Err(PrepError::TooLarge { what: "uncompressed archive".into(), size: declared, limit: limits.max_uncompressed_bytes });
        }
        Ok(Self { archive, files, ignored, limits: limits.clone(), inflated: AtomicU64::new(0), bytes })
    }

    /// A cheap per-thread handle on the same archive.
    pub fn handle(&self) -> ZipArchive<Cursor<&'a [u8]>> {
        self.archive.clone()
    }

    /// Runs `f` on a reader of entry `idx`; at most the declared size (+1 to detect liars) is
    /// inflated, and the bytes count towards the archive's total.
    pub fn with_entry<R>(
        &self,
        handle: &mut ZipArchive<Cursor<&'a [u8]>>,
        idx: usize,
        f: impl FnOnce(&mut dyn Read) -> R,
    ) -> Result<R, PrepError> {
        let entry = handle.by_index(idx).map_err(|e| PrepError::not_archive(format!("unreadable ZIP entry #{idx}: {e}")))?;
        let declared = entry.size();
        let mut counted = Counted { inner: entry.take(declared + 1), n: 0 };
        let out = f(&mut counted);
        if counted.n > declared {
            return Err(PrepError::TooLarge { what: format!("ZIP entry #{idx} inflates beyond its declared size"), size: counted.n, limit: declared });
        }
        let total = self.inflated.fetch_add(counted.n, Ordering::Relaxed) + counted.n;
        if total > self.limits.max_uncompressed_bytes {
            return Err(PrepError::TooLarge { what: "uncompressed archive".into(), size: total, limit: self.limits.max_uncompressed_bytes });
        }
        Ok(out)
    }

    /// The whole content of entry `idx`, CRC-checked: the archive's own bytes for a stored entry,
    /// else inflated in one call into a buffer of the declared size (libdeflate: about twice as
    /// fast as a streaming inflater on CT slices, and the buffer bounds the output, so an entry
    /// that inflates beyond its declared size is refused as with [`with_entry`](Self::with_entry)).
    /// `Ok(Err(..))`: the entry's data is corrupt (bad deflate stream, CRC mismatch). Entries of
    /// other methods, over [`WHOLE_ENTRY_MAX`] or without a known data offset give `Ok(None)`:
    /// read them with [`with_entry`](Self::with_entry).
    pub fn read_whole(&self, handle: &mut ZipArchive<Cursor<&'a [u8]>>, idx: usize) -> Result<Option<EntryContent<'a>>, PrepError> {
        let bytes = self.bytes;
        let entry = handle.by_index_raw(idx).map_err(|e| PrepError::not_archive(format!("unreadable ZIP entry #{idx}: {e}")))?;
        let (declared, packed, crc, method) = (entry.size(), entry.compressed_size(), entry.crc32(), entry.compression());
        let Some(start) = entry.data_start() else {
            return Ok(None);
        };
        if declared > WHOLE_ENTRY_MAX {
            return Ok(None);
        }
        let Some(data) = usize::try_from(start).ok().and_then(|s| bytes.get(s..s.checked_add(usize::try_from(packed).ok()?)?)) else {
            return Ok(Some(Err(format!("ZIP entry #{idx}'s data lies outside the archive"))));
        };
        let content: Cow<'a, [u8]> = match method {
            CompressionMethod::Stored => Cow::Borrowed(data),
            CompressionMethod::Deflated => {
                let mut out = vec![0u8; declared as usize];
                let n = match libdeflater::Decompressor::new().deflate_decompress(data, &mut out) {
                    Ok(n) => n,
                    Err(libdeflater::DecompressionError::InsufficientSpace) => {
                        return Err(PrepError::TooLarge { what: format!("ZIP entry #{idx} inflates beyond its declared size"), size: declared + 1, limit: declared });
                    }
                    Err(libdeflater::DecompressionError::BadData) => return Ok(Some(Err(format!("ZIP entry #{idx}: corrupt deflate data")))),
                };
                out.truncate(n);
                Cow::Owned(out)
            }
            _ => return Ok(None),
        };
        if libdeflater::crc32(&content) != crc {
            return Ok(Some(Err(format!("ZIP entry #{idx}: CRC-32 mismatch"))));
        }
        let n = content.len() as u64;
        let total = self.inflated.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.limits.max_uncompressed_bytes {
            return Err(PrepError::TooLarge { what: "uncompressed archive".into(), size: total, limit: self.limits.max_uncompressed_bytes });
        }
        Ok(Some(Ok(content)))
    }
}

/// An entry's whole content, or why its data is corrupt.
pub type EntryContent<'a> = Result<Cow<'a, [u8]>, String>;

/// Largest entry [`ZipInput::read_whole`] inflates in one buffer; larger ones are streamed.
pub const WHOLE_ENTRY_MAX: u64 = 256 << 20;

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            if name.ends_with('/') {
                w.add_directory(*name, SimpleFileOptions::default()).unwrap();
            } else {
                w.start_file(*name, SimpleFileOptions::default()).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(&zip_of(&[("a", b"x")])), Some(InputKind::Zip));
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Some(InputKind::Nifti));
        let mut nii = vec![0u8; 352];
        nii[..4].copy_from_slice(&348i32.to_le_bytes());
        assert_eq!(sniff(&nii), Some(InputKind::Nifti));
        assert_eq!(sniff(b"hello world"), None);
    }

    #[test]
    fn filters_names_and_refuses_escapes() {
        let z = zip_of(&[("study/", b""), ("study/a.dcm", b"1"), ("study/.DS_Store", b"1"), ("report.pdf", b"1"), ("DICOMDIR", b"1")]);
        let input = ZipInput::open(&z, &Limits::default()).unwrap();
        let names: Vec<_> = input.files.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["study/a.dcm", "DICOMDIR"]);
        assert_eq!(input.ignored, 3);
        let z = zip_of(&[("../evil.dcm", b"1")]);
        let err = ZipInput::open(&z, &Limits::default()).err().unwrap();
        assert_eq!(err.error_type(), "not_an_archive");
    }

    #[test]
    fn bounds_entries_size_and_ratio() {
        let z = zip_of(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let limits = Limits { max_zip_entries: 2, ..Limits::default() };
        assert_eq!(ZipInput::open(&z, &limits).err().unwrap().error_type(), "too_large");
        let zeros = vec![0u8; 8 << 20];
        let z = zip_of(&[("bomb", &zeros)]);
        let err = ZipInput::open(&z, &Limits::default()).err().unwrap();
        assert_eq!(err.error_type(), "too_large", "{err}");
        let limits = Limits { max_uncompressed_bytes: 1 << 20, max_compression_ratio: u64::MAX, ..Limits::default() };
        assert_eq!(ZipInput::open(&z, &limits).err().unwrap().error_type(), "too_large");
        assert_eq!(ZipInput::open(b"PK\x03\x04garbage", &Limits::default()).err().unwrap().error_type(), "not_an_archive");
    }

    /// `z` with every header's field at `offset` (local header / central directory: `local`,
    /// `central`) overwritten by `value` (little-endian u32).
    fn patch(z: &[u8], local: usize, central: usize, value: u32) -> Vec<u8> {
        let mut z = z.to_vec();
        for (sig, at) in [(b"PK\x03\x04", local), (b"PK\x01\x02", central)] {
            let pos: Vec<usize> = z.windows(4).enumerate().filter(|(_, w)| w == sig).map(|(i, _)| i).collect();
            for p in pos {
                z[p + at..p + at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
        z
    }

    #[test]
    fn whole_entries_are_read_in_place_or_inflated_and_checked() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let deflated = zip_of(&[("a.dcm", &data)]);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("s.dcm", SimpleFileOptions::default().compression_method(CompressionMethod::Stored)).unwrap();
        w.write_all(&data).unwrap();
        let stored = w.finish().unwrap().into_inner();
        for (z, borrowed) in [(&deflated, false), (&stored, true)] {
            let input = ZipInput::open(z, &Limits::default()).unwrap();
            let content = input.read_whole(&mut input.handle(), 0).unwrap().unwrap().unwrap();
            assert_eq!(&content[..], &data[..]);
            assert_eq!(matches!(content, Cow::Borrowed(_)), borrowed);
        }
        // a wrong CRC-32 (offset 14 / 16): corrupt data, not a failure of the whole study
        let bad_crc = patch(&deflated, 14, 16, 0xdead_beef);
        let input = ZipInput::open(&bad_crc, &Limits::default()).unwrap();
        assert!(input.read_whole(&mut input.handle(), 0).unwrap().unwrap().is_err());
        // an entry that inflates beyond its declared size (offset 22 / 24) is refused
        let liar = patch(&deflated, 22, 24, 1000);
        let input = ZipInput::open(&liar, &Limits::default()).unwrap();
        assert_eq!(input.read_whole(&mut input.handle(), 0).err().unwrap().error_type(), "too_large");
        // (streamed, the zip crate stops at the declared size and the CRC check fails instead)
        assert!(input.with_entry(&mut input.handle(), 0, |r| std::io::copy(r, &mut std::io::sink())).unwrap().is_err());
        // the inflated bytes count towards the archive's total
        let limits = Limits { max_uncompressed_bytes: 300_000, ..Limits::default() };
        let two = zip_of(&[("a.dcm", &data), ("b.dcm", &data)]);
        let input = ZipInput::open(&two, &Limits { max_uncompressed_bytes: 400_000, ..limits.clone() }).unwrap();
        let input = ZipInput { limits, ..input };
        assert!(input.read_whole(&mut input.handle(), 0).unwrap().is_some());
        assert_eq!(input.read_whole(&mut input.handle(), 1).err().unwrap().error_type(), "too_large");
    }
}
