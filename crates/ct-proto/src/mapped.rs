//! Memory mappings of one-machine mode's shared volume files: a model service reads a study's
//! voxels and lung mask in place (zero-copy, read-only) instead of copying 150-250 MB out of the
//! tmpfs folder for every study, and preprocess-svc writes them through a writable mapping.
//!
//! The workspace denies `unsafe` code; this module is one of its two audited exceptions (the
//! other is `ct_service::alloc`): the two `mmap` calls and one `fallocate` below. Mapping a file
//! is unsafe because the file can change under the mapping:
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
//!
//! The writer (preprocess-svc) fills the file through a writable mapping too ([`write_mapped`]):
//! copying into mapped pages is twice as fast as `pwrite` into tmpfs (no page-cache lookup per
//! 4 KiB). A write to a hole of a full tmpfs would raise SIGBUS instead of an error, so a file's
//! space is reserved with `fallocate` before it is first mapped for writing (an error: ENOSPC);
//! the pages of a file mapped before stay allocated.
//!
//! Mapping costs a page-table entry per 4 KiB page (about 20 ms for a 157 MB volume, paid by every
//! model service for every study), while the files themselves cycle through the folder's small
//! pool. [`map_shared`] therefore keeps the last few mappings, by inode: a study that arrives in a
//! file this service has mapped before reuses the mapping (a shared mapping shows the file's
//! current bytes) instead of mapping it again. A cached mapping of a file that has since been
//! unlinked is dropped at the next call, so it pins the file's memory only until then.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex};

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

/// Mappings kept for reuse: a few more than the folder's pool holds by default (2).
const CACHED_MAPPINGS: usize = 4;

struct Cached {
    dev: u64,
    ino: u64,
    /// Keeps the inode (and so its number) from being reused while the mapping is cached.
    file: std::fs::File,
    map: Arc<MappedFile>,
}

static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());

/// At least the first `len` bytes of `file` mapped read-only: this process's cached mapping of the
/// same file when it has one that long, else a new mapping of the whole file, which is cached.
pub fn map_shared(file: std::fs::File, len: usize) -> std::io::Result<Arc<MappedFile>> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if len == 0 || meta.len() < len as u64 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("cannot map {len} bytes of a {}-byte file", meta.len())));
    }
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // an unlinked file's mapping would pin its memory: drop it (its users keep their own Arc)
    cache.retain(|c| c.file.metadata().is_ok_and(|m| m.nlink() > 0));
    if let Some(at) = cache.iter().position(|c| c.dev == meta.dev() && c.ino == meta.ino()) {
        let c = cache.remove(at);
        if c.map.map.len() >= len {
            let map = Arc::clone(&c.map);
            cache.push(c); // most recently used last
            return Ok(map);
        }
    }
    let whole = usize::try_from(meta.len()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "file too large to map"))?;
    let map = MappedFile::map(&file, whole)?;
    if cache.len() >= CACHED_MAPPINGS {
        cache.remove(0);
    }
    cache.push(Cached { dev: meta.dev(), ino: meta.ino(), file, map: Arc::clone(&map) });
    Ok(map)
}

/// A writable mapping of a whole file, cached by inode like the readers' ([`write_mapped`]).
struct CachedWritable {
    dev: u64,
    ino: u64,
    file: std::fs::File,
    map: memmap2::MmapMut,
}

static WRITE_CACHE: Mutex<Vec<CachedWritable>> = Mutex::new(Vec::new());

/// Fills the first `len` bytes of `file` (opened for reading and writing; it may be shorter: it
/// grows to `len`, never shrinks) through a shared writable mapping: `fill` gets them as one
/// slice. The mapping is cached for the next study written to the same file (the pool's files
/// come back); while `fill` runs it is this call's alone.
pub fn write_mapped<R>(file: std::fs::File, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> std::io::Result<R> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(fill(&mut []));
    }
    let meta = file.metadata()?;
    let taken = {
        let mut cache = WRITE_CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|c| c.file.metadata().is_ok_and(|m| m.nlink() > 0));
        // taken out of the cache: no other writer can reach this mapping until it is put back
        cache.iter().position(|c| c.dev == meta.dev() && c.ino == meta.ino()).map(|at| cache.remove(at)).filter(|c| c.map.len() >= len)
    };
    let mut entry = match taken {
        Some(c) => c,
        None => {
            let want = meta.len().max(len as u64);
            let want_i64 = i64::try_from(want).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "file too large to map"))?;
            // SAFETY: fallocate on an open descriptor with plain integer arguments. It reserves the
            // pages (and grows the file): writing through the mapping cannot hit a hole that a
            // full tmpfs could not fill (SIGBUS), it fails here with ENOSPC instead.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, want_i64) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // a filesystem without fallocate: grown sparse (tmpfs, the intended one, has it)
                crate::codec::grow_to(&file, want)?;
            }
            let whole = usize::try_from(want).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "file too large to map"))?;
            // SAFETY: a shared writable mapping of a file of the stack's private folder, which no
            // one shrinks (module docs); its space is reserved just above.
            let map = unsafe { memmap2::MmapOptions::new().len(whole).populate().map_mut(&file)? };
            CachedWritable { dev: meta.dev(), ino: meta.ino(), file, map }
        }
    };
    let r = fill(&mut entry.map[..len]);
    let mut cache = WRITE_CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= CACHED_MAPPINGS {
        cache.remove(0);
    }
    cache.push(entry);
    Ok(r)
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
    use std::os::unix::fs::FileExt;

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

    #[test]
    fn writes_through_a_cached_writable_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.vol");
        let open = || std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        // a new, empty file grows to the length written
        write_mapped(open(), 10_000, |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = (i % 7) as u8)).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 10_000);
        assert!(back.iter().enumerate().all(|(i, &x)| x == (i % 7) as u8));
        // a shorter study: only its prefix is rewritten, the file keeps its length
        let n = write_mapped(open(), 100, |b| {
            b.fill(9);
            b.len()
        })
        .unwrap();
        assert_eq!(n, 100);
        let back = std::fs::read(&path).unwrap();
        assert_eq!((back.len(), back[99], back[100]), (10_000, 9, (100 % 7) as u8));
        // a longer one: mapped again, grown
        write_mapped(open(), 20_000, |b| b.fill(5)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 20_000]);
        assert_eq!(write_mapped(open(), 0, |b| b.len()).unwrap(), 0);
    }

    #[test]
    fn mappings_are_reused_by_inode_and_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.vol"), dir.path().join("b.vol"));
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        let m1 = map_shared(std::fs::File::open(&a).unwrap(), 4096).unwrap();
        // the same file under a new name (the pool renames it), rewritten: the same mapping,
        // showing the new bytes
        std::fs::rename(&a, &b).unwrap();
        std::fs::OpenOptions::new().write(true).open(&b).unwrap().write_all_at(&[2u8; 100], 0).unwrap();
        let m2 = map_shared(std::fs::File::open(&b).unwrap(), 8192).unwrap();
        assert!(Arc::ptr_eq(&m1, &m2));
        assert_eq!((m2.bytes()[0], m2.bytes()[100], m2.bytes().len()), (2, 1, 8192));
        // grown beyond the mapping: mapped again
        std::fs::OpenOptions::new().write(true).open(&b).unwrap().set_len(16384).unwrap();
        let m3 = map_shared(std::fs::File::open(&b).unwrap(), 16384).unwrap();
        assert!(!Arc::ptr_eq(&m2, &m3));
        assert_eq!(m3.bytes().len(), 16384);
        // another file: its own mapping; too short a file: refused
        std::fs::write(&a, vec![3u8; 4096]).unwrap();
        let m4 = map_shared(std::fs::File::open(&a).unwrap(), 4096).unwrap();
        assert!(!Arc::ptr_eq(&m3, &m4) && m4.bytes()[0] == 3);
        assert!(map_shared(std::fs::File::open(&a).unwrap(), 4097).is_err());
        // an unlinked file leaves the cache at the next call: a new file gets a new mapping
        std::fs::remove_file(&a).unwrap();
        std::fs::write(&a, vec![4u8; 4096]).unwrap();
        let m5 = map_shared(std::fs::File::open(&a).unwrap(), 4096).unwrap();
        assert_eq!(m5.bytes()[0], 4);
        let cached = CACHE.lock().unwrap().iter().filter(|c| Arc::ptr_eq(&c.map, &m4)).count();
        assert_eq!(cached, 0);
    }
}
