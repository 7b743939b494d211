//! Read-only memory mappings of one-machine mode's shared volume files: a model service reads a
//! study's voxels and lung mask in place (zero-copy) instead of copying 150-250 MB out of the
//! tmpfs folder for every study.
//!
//! The workspace denies `unsafe` code; this module is one of its two audited exceptions (the
//! other is `ct_service::alloc`): the one `mmap` call below. Mapping a file is unsafe because
//! the file can change under the mapping:
//! - a file truncated below a mapped page makes the next access to that page raise SIGBUS, which
//!   kills the process;
//! - bytes rewritten while borrowed break the immutability a `&[u8]` promises.
//!
//! The one-machine protocol rules both out for the stack's own processes (see the
//! `ct_proto::codec` module docs): a study's file is renamed to a name of its own before anyone
//! maps it; writers never shrink a file ([`crate::codec::open_shared_for_write`] reuses pool
//! files and only ever grows them); the gateway hands a file back to the pool only when every
//! model service has answered for the study (a model call it abandons, on a timeout or an early
//! failure, makes it remove the file instead, and an unlinked file stays valid for its
//! mappings); sweeps of stale files unlink. What is left is a process outside the stack
//! truncating files of the folder: the folder must be private to the stack (`deploy/local/up`
//! creates it mode 0700; compose mounts a volume no other container sees).

#![allow(unsafe_code)]

use std::sync::Arc;

/// A whole file mapped read-only.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (which must hold them; `len` > 0) read-only and
    /// shared, with the page tables filled at once (`MAP_POPULATE`: the cost of the mapping is
    /// paid here, not as page faults inside the recipes).
    pub fn map(file: &std::fs::File, len: usize) -> std::io::Result<Arc<Self>> {
        let have = file.metadata()?.len();
        if len == 0 || have < len as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("cannot map {len} bytes of a {have}-byte file")));
        }
        // SAFETY: read-only mapping of a file that the one-machine protocol keeps from shrinking
        // and from being rewritten while mapped (module docs).
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(file)? };
        Ok(Arc::new(Self { map }))
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("len", &self.map.len()).finish()
    }
}

impl ct_volume::ExternalBytes for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_volume::ExternalBytes;

    #[test]
    fn maps_the_requested_prefix_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.vol");
        let bytes: Vec<u8> = (0..10_000u32).map(|v| (v % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let m = MappedFile::map(&f, 9_000).unwrap();
        assert_eq!(m.bytes(), &bytes[..9_000]);
        // the mapping outlives the file's name (the gateway unlinks files it may not recycle)
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.bytes()[8_999], bytes[8_999]);
        assert!(MappedFile::map(&f, 10_001).is_err());
        assert!(MappedFile::map(&f, 0).is_err());
    }
}
