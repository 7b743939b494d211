//! Chunked volume streams: [`encode`] turns a volume (and its lung mask) into `VolumeChunk`
//! messages of at most [`MAX_CHUNK_BYTES`]; [`VolumeAssembler`] checks and reassembles them.
//!
//! Stream shape: one `header`, then `voxels` chunks covering `[0, voxel_bytes)` in order, then
//! `lung_mask` chunks covering `[0, mask_bytes)` in order. The receiver checks that the chunks
//! add up to the header's dims.
//!
//! One-machine mode: the payloads in a file of a shared tmpfs folder instead ([`write_shared_file`],
//! read by [`VolumeAssembler`] from a `shared` part), whose finished files are kept in a small pool
//! for reuse ([`open_shared_for_write`], [`recycle_shared_file`]). The receiver maps the file and
//! reads the voxels and mask in place ([`crate::mapped`]), so the protocol keeps a mapped file
//! intact: each study's file has a name of its own from the moment it is complete; no writer
//! ever shrinks a file (pool files only grow); a file goes back to the pool only once no reader
//! can still hold it (the gateway's rule), and otherwise is unlinked, which leaves mappings valid.

use crate::MAX_CHUNK_BYTES;
use crate::v1::{self, VolumeChunk, VolumeHeader, VoxelType, volume_chunk::Part};
use ct_volume::{Array3Store, ExternalBytes, Geometry, SharedArray, SharedVoxels, Volume, VoxelView, Voxels};
use ndarray::Array3;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("the stream did not start with a volume header")]
    MissingHeader,
    #[error("a second volume header arrived")]
    DuplicateHeader,
    #[error("invalid volume header: {0}")]
    BadHeader(String),
    #[error("{part} chunk at offset {found}, expected offset {expected}")]
    OutOfOrder { part: &'static str, expected: u64, found: u64 },
    #[error("{part} chunks exceed the announced {limit} bytes")]
    Overflow { part: &'static str, limit: u64 },
    #[error("{part} incomplete: received {got} of {expected} bytes")]
    Incomplete { part: &'static str, expected: u64, got: u64 },
    #[error("volume rejected: {0}")]
    Volume(#[from] ct_volume::VolumeError),
    #[error("a shared-memory volume was sent, but this service has no shared-volume folder configured")]
    SharedNotEnabled,
    #[error("shared volume file: {0}")]
    Shared(String),
}

/// Fills the geometry/payload fields of `header` from `volume` and `mask`, and returns the
/// message stream. Metadata (UIDs, kernel, selection, warnings, lung validation) is the caller's.
pub fn encode<'a>(header: VolumeHeader, volume: &'a Volume, mask: Option<&'a Array3<u8>>) -> impl Iterator<Item = VolumeChunk> + 'a {
    let header = fill_header(header, volume, mask);
    let voxel_chunks: Box<dyn Iterator<Item = VolumeChunk> + 'a> = match volume.voxels() {
        VoxelView::I16(a) => Box::new(chunked(a.to_slice().expect("standard layout"), Part::Voxels)),
        VoxelView::F32(a) => Box::new(chunked(a.to_slice().expect("standard layout"), Part::Voxels)),
    };
    let mask_chunks = mask.into_iter().flat_map(|m| chunked(m.as_slice().expect("standard layout"), Part::LungMask));
    std::iter::once(VolumeChunk { part: Some(Part::Header(header)) }).chain(voxel_chunks).chain(mask_chunks)
}

/// `header` with its geometry and payload fields (dims, spacing, orientation, origin, slice
/// positions, voxel type, byte counts, mask presence) taken from `volume` and `mask`.
pub fn fill_header(mut header: VolumeHeader, volume: &Volume, mask: Option<&Array3<u8>>) -> VolumeHeader {
    let g = volume.geometry();
    header.dims = volume.dims().iter().map(|&d| d as u32).collect();
    header.spacing_mm = g.spacing_mm.to_vec();
    header.orientation = g.orientation.to_vec();
    header.origin_mm = g.origin_mm.to_vec();
    header.slice_positions_mm = g.slice_positions_mm.iter().flatten().copied().collect();
    header.voxel_type = match volume.voxels() {
        VoxelView::I16(_) => VoxelType::Int16,
        VoxelView::F32(_) => VoxelType::Float32,
    } as i32;
    let n: usize = volume.dims().iter().product();
    header.voxel_bytes = (n * volume.voxels().bytes_per_voxel()) as u64;
    header.has_lung_mask = mask.is_some();
    header.mask_bytes = mask.map_or(0, |m| m.len() as u64);
    header
}

/// Writes the payloads of a `shared` part (the voxels' little-endian bytes, then the mask's) to
/// `dir/name`, which must not exist yet, through a writable mapping ([`crate::mapped::write_mapped`],
/// kept for the next study in the same pool file), copying with up to `threads` threads. The file
/// is a recycled one of the folder's pool when there is one ([`open_shared_for_write`]); it never
/// shrinks. On error the partial file is removed.
pub fn write_shared_file(dir: &std::path::Path, name: &str, volume: &Volume, mask: Option<&Array3<u8>>, threads: usize) -> std::io::Result<()> {
    let path = dir.join(name);
    let file = open_shared_for_write(dir, name)?;
    let voxel_bytes: std::borrow::Cow<'_, [u8]> = match volume.voxels() {
        VoxelView::I16(a) => le_payload(a.to_slice().expect("standard layout")),
        VoxelView::F32(a) => le_payload(a.to_slice().expect("standard layout")),
    };
    let mask_bytes: &[u8] = mask.map_or(&[], |m| m.as_slice().expect("standard layout"));
    let total = (voxel_bytes.len() + mask_bytes.len()) as u64;
    let total = usize::try_from(total).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "volume too large"))?;
    let result = crate::mapped::write_mapped(file, total, |out| {
        // pieces of at most 8 MiB, dealt round-robin to the threads
        const PIECE: usize = 8 << 20;
        let (vox_out, mask_out) = out.split_at_mut(voxel_bytes.len());
        let mut per_thread: Vec<Vec<(&mut [u8], &[u8])>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
        let pairs = vox_out.chunks_mut(PIECE).zip(voxel_bytes.chunks(PIECE)).chain(mask_out.chunks_mut(PIECE).zip(mask_bytes.chunks(PIECE)));
        for (i, pair) in pairs.enumerate() {
            let t = i % per_thread.len();
            per_thread[t].push(pair);
        }
        std::thread::scope(|scope| {
            for pieces in per_thread.into_iter().filter(|p| !p.is_empty()) {
                scope.spawn(move || pieces.into_iter().for_each(|(dst, src)| dst.copy_from_slice(src)));
            }
        });
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Makes `file` at least `len` bytes long. Never shrinks it: a recycled pool file may still be
/// mapped by a reader that an abandoned study left behind, and a mapped page cut off by a
/// truncation kills its reader (SIGBUS). Readers take the lengths from the volume header.
pub fn grow_to(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    if file.metadata()?.len() < len { file.set_len(len) } else { Ok(()) }
}

/// Removes the study files (`ct-*.vol`: written by preprocess-svc or the gateway) of a shared
/// folder last modified more than `older_than` ago: left behind by a process that died mid-study,
/// they would hold their 100s of MB of tmpfs until the folder goes. Free pool files stay. Returns
/// the names removed.
pub fn sweep_stale_shared_files(dir: &std::path::Path, older_than: std::time::Duration) -> std::io::Result<Vec<String>> {
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !(name.starts_with("ct-") && name.ends_with(".vol")) {
            continue;
        }
        let stale = entry.metadata().ok().filter(|m| m.is_file()).and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > older_than);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Name prefix of the free files of a shared-volume folder's pool (see [`recycle_shared_file`]).
pub const POOL_PREFIX: &str = "pool-";

/// Opens `dir/name` (which must not exist) for writing a study's payloads: a free file of the
/// folder's pool renamed to `name` when there is one (its tmpfs pages are reused: no page
/// allocation and zeroing for the 200+ MB of a study), else a new file. The caller sets the length
/// with [`grow_to`], never shrinking it.
pub fn open_shared_for_write(dir: &std::path::Path, name: &str) -> std::io::Result<std::fs::File> {
    let path = dir.join(name);
    if path.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
    }
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let free = entry.file_name();
        let is_pool = free.to_str().is_some_and(|n| n.starts_with(POOL_PREFIX) && n.ends_with(".vol"));
        // a rename is atomic: of two claimants of the same free file, one wins
        if is_pool && entry.file_type().is_ok_and(|t| t.is_file()) && std::fs::rename(entry.path(), &path).is_ok() {
            return std::fs::OpenOptions::new().read(true).write(true).open(&path);
        }
    }
    std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)
}

/// Ends the life of a study's shared file: it becomes a free file of the folder's pool when the
/// pool holds fewer than `pool_max` files, else it is removed. Returns whether it was kept.
pub fn recycle_shared_file(path: &std::path::Path, pool_max: usize) -> std::io::Result<bool> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if pool_max > 0
        && let Some(dir) = path.parent()
    {
        let free = std::fs::read_dir(dir)?.filter_map(Result::ok).filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(POOL_PREFIX))).count();
        if free < pool_max {
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            std::fs::rename(path, dir.join(format!("{POOL_PREFIX}{}-{seq}-{nanos}.vol", std::process::id())))?;
            return Ok(true);
        }
    }
    std::fs::remove_file(path)?;
    Ok(false)
}

/// The little-endian bytes of `values`: borrowed on little-endian machines, swapped elsewhere.
fn le_payload<T: LeBytes>(values: &[T]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") { std::borrow::Cow::Borrowed(bytemuck::cast_slice(values)) } else { std::borrow::Cow::Owned(T::le_bytes(values)) }
}

/// Little-endian bytes of `values`, in chunks of at most [`MAX_CHUNK_BYTES`] (whole values).
fn chunked<'a, T: LeBytes>(values: &'a [T], wrap: fn(v1::Bytes) -> Part) -> impl Iterator<Item = VolumeChunk> + 'a {
    let bytes_per = std::mem::size_of::<T>();
    let per_chunk = MAX_CHUNK_BYTES / bytes_per;
    values.chunks(per_chunk).enumerate().map(move |(c, part)| {
        let data = T::le_bytes(part);
        VolumeChunk { part: Some(wrap(v1::Bytes { offset: (c * per_chunk * bytes_per) as u64, data: data.into() })) }
    })
}

/// The wire's little-endian byte order for voxel and mask values: a plain copy on little-endian
/// machines (one memcpy per chunk instead of a call per value), a byte swap elsewhere.
trait LeBytes: bytemuck::Pod {
    fn swap(self) -> Self;

    fn le_bytes(values: &[Self]) -> Vec<u8> {
        if cfg!(target_endian = "little") {
            bytemuck::cast_slice(values).to_vec()
        } else {
            values.iter().flat_map(|v| bytemuck::bytes_of(&v.swap()).to_vec()).collect()
        }
    }

    /// Values from little-endian bytes (`bytes.len()` a multiple of the value size); the bytes
    /// need no particular alignment.
    /// Appends the values of `bytes` (little-endian, any alignment, a multiple of the value size).
    /// (Into the spare capacity, without zero-filling it first: the values are copied once.)
    fn extend_from_le(values: &mut Vec<Self>, bytes: &[u8]) {
        let at = values.len();
        match bytemuck::try_cast_slice::<u8, Self>(bytes) {
            Ok(aligned) => values.extend_from_slice(aligned),
            Err(_) => values.extend(bytes.chunks_exact(std::mem::size_of::<Self>()).map(bytemuck::pod_read_unaligned::<Self>)),
        }
        if cfg!(target_endian = "big") {
            values[at..].iter_mut().for_each(|x| *x = x.swap());
        }
    }
}

impl LeBytes for u8 {
    fn swap(self) -> Self {
        self
    }
}

impl LeBytes for i16 {
    fn swap(self) -> Self {
        self.swap_bytes()
    }
}

impl LeBytes for f32 {
    fn swap(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}

/// Receives a chunk stream and rebuilds the volume, checking order and sizes. Voxels are decoded
/// into their final typed buffer as they arrive (no second whole-volume copy at the end).
#[derive(Debug)]
pub struct VolumeAssembler {
    header: Option<VolumeHeader>,
    voxels: TypedVoxels,
    /// Voxel bytes received so far.
    voxel_bytes: u64,
    /// The bytes of a value split across two chunks (the encoder never splits one, others may).
    carry: Vec<u8>,
    mask: Vec<u8>,
    max_voxel_bytes: u64,
    /// Where `shared` payload files may be read from (one-machine mode); `None`: refused.
    shared_dir: Option<std::path::PathBuf>,
    /// The mapped file of a `shared` part: voxels then mask, read in place.
    mapped: Option<std::sync::Arc<crate::mapped::MappedFile>>,
}

#[derive(Debug)]
enum TypedVoxels {
    I16(Vec<i16>),
    F32(Vec<f32>),
}

impl TypedVoxels {
    fn value_size(&self) -> usize {
        match self {
            Self::I16(_) => 2,
            Self::F32(_) => 4,
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        match self {
            Self::I16(v) => i16::extend_from_le(v, bytes),
            Self::F32(v) => f32::extend_from_le(v, bytes),
        }
    }

    /// Appends `n_bytes` of little-endian values read from `r` (see [`read_le_into`]).
    fn read_from(&mut self, r: &mut impl std::io::Read, n_bytes: usize) -> std::io::Result<()> {
        match self {
            Self::I16(v) => read_le_into(v, r, n_bytes),
            Self::F32(v) => read_le_into(v, r, n_bytes),
        }
    }
}

/// Appends `n_bytes` of little-endian values read from `r` to `v`: through a 1 MiB buffer that
/// stays in cache, appended to `v`'s spare capacity (no zero-fill pass over a volume's hundreds of
/// MB before the read).
fn read_le_into<T: LeBytes>(v: &mut Vec<T>, r: &mut impl std::io::Read, n_bytes: usize) -> std::io::Result<()> {
    let n = n_bytes / std::mem::size_of::<T>();
    v.reserve(n);
    let mut buf = vec![T::zeroed(); ((1 << 20) / std::mem::size_of::<T>()).min(n.max(1))];
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len());
        let part = &mut buf[..take];
        r.read_exact(bytemuck::cast_slice_mut::<T, u8>(part))?;
        let at = v.len();
        v.extend_from_slice(part);
        if cfg!(target_endian = "big") {
            v[at..].iter_mut().for_each(|x| *x = x.swap());
        }
        left -= part.len();
    }
    Ok(())
}

impl VolumeAssembler {
    /// `max_voxel_bytes` bounds the memory a sender can make the receiver allocate.
    pub fn new(max_voxel_bytes: u64) -> Self {
        Self { header: None, voxels: TypedVoxels::I16(Vec::new()), voxel_bytes: 0, carry: Vec::new(), mask: Vec::new(), max_voxel_bytes, shared_dir: None, mapped: None }
    }

    /// Also accepts a `shared` part naming a file in `dir` (one-machine mode, see the proto).
    pub fn with_shared_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.shared_dir = dir;
        self
    }

    pub fn header(&self) -> Option<&VolumeHeader> {
        self.header.as_ref()
    }

    pub fn push(&mut self, chunk: VolumeChunk) -> Result<(), CodecError> {
        match chunk.part {
            Some(Part::Header(h)) => {
                if self.header.is_some() {
                    return Err(CodecError::DuplicateHeader);
                }
                let expected = check_header(&h, self.max_voxel_bytes)?;
                self.voxels = if h.voxel_type == VoxelType::Float32 as i32 {
                    TypedVoxels::F32(Vec::with_capacity(expected as usize / 4))
                } else {
                    TypedVoxels::I16(Vec::with_capacity(expected as usize / 2))
                };
                self.mask.reserve_exact(h.mask_bytes as usize);
                self.header = Some(h);
                Ok(())
            }
            Some(Part::Voxels(b)) => {
                let h = self.header.as_ref().ok_or(CodecError::MissingHeader)?;
                check_range(self.voxel_bytes, &b, h.voxel_bytes, "voxels")?;
                self.voxel_bytes += b.data.len() as u64;
                let size = self.voxels.value_size();
                let mut data: &[u8] = &b.data;
                if !self.carry.is_empty() {
                    let take = (size - self.carry.len()).min(data.len());
                    self.carry.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.carry.len() == size {
                        self.voxels.extend(&self.carry);
                        self.carry.clear();
                    }
                }
                let whole = data.len() / size * size;
                self.voxels.extend(&data[..whole]);
                self.carry.extend_from_slice(&data[whole..]);
                Ok(())
            }
            Some(Part::LungMask(b)) => {
                let h = self.header.as_ref().ok_or(CodecError::MissingHeader)?;
                if self.voxel_bytes != h.voxel_bytes {
                    return Err(CodecError::Incomplete { part: "voxels", expected: h.voxel_bytes, got: self.voxel_bytes });
                }
                check_range(self.mask.len() as u64, &b, h.mask_bytes, "lung_mask")?;
                self.mask.extend_from_slice(&b.data);
                Ok(())
            }
            Some(Part::Shared(s)) => {
                let h = self.header.as_ref().ok_or(CodecError::MissingHeader)?;
                if self.voxel_bytes != 0 || !self.carry.is_empty() || !self.mask.is_empty() {
                    return Err(CodecError::Shared("a shared payload after inline chunks".into()));
                }
                let dir = self.shared_dir.as_ref().ok_or(CodecError::SharedNotEnabled)?;
                let path = shared_path(dir, &s.file)?;
                let (voxel_bytes, mask_bytes) = (h.voxel_bytes, h.mask_bytes);
                let io = |e: std::io::Error| CodecError::Shared(format!("{}: {e}", s.file));
                let meta = std::fs::symlink_metadata(&path).map_err(io)?;
                if !meta.file_type().is_file() {
                    return Err(CodecError::Shared(format!("{} is not a regular file", s.file)));
                }
                if meta.len() < voxel_bytes + mask_bytes {
                    return Err(CodecError::Shared(format!("{} holds {} bytes, the header announces {} voxel and {mask_bytes} mask bytes", s.file, meta.len(), voxel_bytes)));
                }
                let file = std::fs::File::open(&path).map_err(io)?;
                if cfg!(target_endian = "little") {
                    // zero-copy: the volume and mask are views of the mapping (see crate::mapped)
                    let len = usize::try_from(voxel_bytes + mask_bytes).map_err(|_| CodecError::Shared(format!("{} is too large to map", s.file)))?;
                    self.mapped = Some(crate::mapped::map_shared(file, len).map_err(io)?);
                    self.voxels = TypedVoxels::I16(Vec::new());
                    self.mask = Vec::new();
                } else {
                    let mut f = std::io::BufReader::with_capacity(1 << 20, file);
                    self.voxels.read_from(&mut f, voxel_bytes as usize).map_err(io)?;
                    read_le_into(&mut self.mask, &mut f, mask_bytes as usize).map_err(io)?;
                }
                self.voxel_bytes = voxel_bytes;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether `chunk` names a shared payload (its [`push`](Self::push) reads a file: blocking I/O).
    pub fn is_shared(chunk: &VolumeChunk) -> bool {
        matches!(chunk.part, Some(Part::Shared(_)))
    }

    /// The header, the volume and the lung mask (if one was sent). From a `shared` part both are
    /// views of the mapped file.
    pub fn finish(self) -> Result<(VolumeHeader, Volume, Option<Array3Store<u8>>), CodecError> {
        let h = self.header.ok_or(CodecError::MissingHeader)?;
        let mask_got = if self.mapped.is_some() { h.mask_bytes } else { self.mask.len() as u64 };
        for (part, got, expected) in [("voxels", self.voxel_bytes, h.voxel_bytes), ("lung_mask", mask_got, h.mask_bytes)] {
            if got != expected {
                return Err(CodecError::Incomplete { part, expected, got });
            }
        }
        let (ni, nj, nk) = (h.dims[0] as usize, h.dims[1] as usize, h.dims[2] as usize);
        let shape = (nk, nj, ni);
        let geometry = Geometry {
            spacing_mm: [h.spacing_mm[0], h.spacing_mm[1], h.spacing_mm[2]],
            orientation: std::array::from_fn(|a| h.orientation[a]),
            origin_mm: [h.origin_mm[0], h.origin_mm[1], h.origin_mm[2]],
            slice_positions_mm: h.slice_positions_mm.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
        };
        if let Some(buf) = self.mapped {
            let buf: std::sync::Arc<dyn ExternalBytes> = buf;
            let bad = |e: ct_volume::StoreError| CodecError::Shared(e.to_string());
            let dims = [nk, nj, ni];
            let voxels = if h.voxel_type == VoxelType::Float32 as i32 {
                SharedVoxels::F32(SharedArray::new(std::sync::Arc::clone(&buf), 0, dims).map_err(bad)?)
            } else {
                SharedVoxels::I16(SharedArray::new(std::sync::Arc::clone(&buf), 0, dims).map_err(bad)?)
            };
            let mask = if h.has_lung_mask { Some(Array3Store::Shared(SharedArray::new(buf, h.voxel_bytes as usize, dims).map_err(bad)?)) } else { None };
            let volume = Volume::new_shared(voxels, geometry)?;
            return Ok((h, volume, mask));
        }
        // voxel_bytes == h.voxel_bytes, a whole number of values (checked with the header): no carry
        let voxels = match self.voxels {
            TypedVoxels::F32(v) => Voxels::F32(Array3::from_shape_vec(shape, v).map_err(|e| CodecError::BadHeader(e.to_string()))?),
            TypedVoxels::I16(v) => Voxels::I16(Array3::from_shape_vec(shape, v).map_err(|e| CodecError::BadHeader(e.to_string()))?),
        };
        let mask = if h.has_lung_mask { Some(Array3::from_shape_vec(shape, self.mask).map_err(|e| CodecError::BadHeader(e.to_string()))?.into()) } else { None };
        let volume = Volume::new(voxels, geometry)?;
        Ok((h, volume, mask))
    }
}

fn check_header(h: &VolumeHeader, max_voxel_bytes: u64) -> Result<u64, CodecError> {
    let bad = |m: String| Err(CodecError::BadHeader(m));
    if h.dims.len() != 3 || h.spacing_mm.len() != 3 || h.orientation.len() != 6 || h.origin_mm.len() != 3 {
        return bad(format!(
            "expected 3 dims, 3 spacings, 6 orientation and 3 origin values, got {}, {}, {}, {}",
            h.dims.len(),
            h.spacing_mm.len(),
            h.orientation.len(),
            h.origin_mm.len()
        ));
    }
    let bpv: u64 = match VoxelType::try_from(h.voxel_type) {
        Ok(VoxelType::Int16) => 2,
        Ok(VoxelType::Float32) => 4,
        _ => return bad(format!("unknown voxel type {}", h.voxel_type)),
    };
    let n = h.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d))).unwrap_or(u64::MAX);
    let expected = n.saturating_mul(bpv);
    if n == 0 || expected != h.voxel_bytes {
        return bad(format!("dims {:?} x {bpv} bytes do not match voxel_bytes {}", h.dims, h.voxel_bytes));
    }
    if expected > max_voxel_bytes {
        return bad(format!("volume of {expected} bytes exceeds the limit of {max_voxel_bytes} bytes"));
    }
    let expected_mask = if h.has_lung_mask { n } else { 0 };
    if h.mask_bytes != expected_mask {
        return bad(format!("mask_bytes {} does not match dims {:?}", h.mask_bytes, h.dims));
    }
    if h.slice_positions_mm.len() as u64 != 3 * u64::from(h.dims[2]) {
        return bad(format!("{} slice position values for {} slices", h.slice_positions_mm.len(), h.dims[2]));
    }
    Ok(expected)
}

/// `dir/file` for a shared payload: `file` must be a plain name (no separator, not `.`/`..`).
pub fn shared_path(dir: &std::path::Path, file: &str) -> Result<std::path::PathBuf, CodecError> {
    let plain = !file.is_empty() && file != "." && file != ".." && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(CodecError::Shared(format!("{file:?} is not a plain file name")));
    }
    Ok(dir.join(file))
}

/// `b` must start where the data received so far (`at` bytes) ends and stay within `limit`.
fn check_range(at: u64, b: &v1::Bytes, limit: u64, part: &'static str) -> Result<(), CodecError> {
    if b.offset != at {
        return Err(CodecError::OutOfOrder { part, expected: at, found: b.offset });
    }
    if at + b.data.len() as u64 > limit {
        return Err(CodecError::Overflow { part, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn volume(nk: usize, nj: usize, ni: usize) -> Volume {
        let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| (k * 1000 + j * 10 + i) as i16 - 3000);
        let g = Geometry {
            spacing_mm: [0.7, 0.7, 1.25],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin_mm: [-100.0, -120.0, 30.0],
            slice_positions_mm: (0..nk).map(|k| [-100.0, -120.0, 30.0 + 1.25 * k as f64]).collect(),
        };
        Volume::new(Voxels::I16(data), g).unwrap()
    }

    #[test]
    fn float_volumes_round_trip_bit_exactly_in_little_endian() {
        let vol = volume(3, 40, 50);
        let VoxelView::I16(a) = vol.voxels() else { unreachable!() };
        let f = a.mapv(|v| f32::from(v) * 0.37 - 1e-3);
        let special = [f32::MIN_POSITIVE, -0.0, f32::MAX, 1.0e-40];
        let mut f = f;
        for (slot, v) in f.iter_mut().zip(special) {
            *slot = v;
        }
        let vol = Volume::new(Voxels::F32(f.clone()), vol.geometry().clone()).unwrap();
        let chunks: Vec<_> = encode(VolumeHeader::default(), &vol, None).collect();
        let Some(Part::Voxels(first)) = &chunks[1].part else { panic!("expected voxels") };
        // the wire is little-endian whatever the machine
        assert_eq!(&first.data[..4], &special[0].to_le_bytes());
        let mut asm = VolumeAssembler::new(1 << 30);
        for c in chunks {
            asm.push(c).unwrap();
        }
        let (_, back, m) = asm.finish().unwrap();
        assert!(m.is_none());
        let VoxelView::F32(b) = back.voxels() else { panic!("expected f32 voxels") };
        assert!(b.iter().zip(f.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn values_split_across_chunks_are_reassembled() {
        let vol = volume(2, 5, 7);
        let whole: Vec<_> = encode(VolumeHeader::default(), &vol, None).collect();
        let Some(Part::Voxels(b)) = &whole[1].part else { panic!("expected voxels") };
        let mut asm = VolumeAssembler::new(1 << 30);
        asm.push(whole[0].clone()).unwrap();
        // odd chunk sizes: every i16 boundary is crossed somewhere
        let mut at = 0;
        for len in [1, 3, 2, 5, 1, 1, 7].into_iter().cycle() {
            if at >= b.data.len() {
                break;
            }
            let end = (at + len).min(b.data.len());
            asm.push(VolumeChunk { part: Some(Part::Voxels(v1::Bytes { offset: at as u64, data: b.data.slice(at..end) })) }).unwrap();
            at = end;
        }
        let (_, back, _) = asm.finish().unwrap();
        assert_eq!(back, vol);
    }

    #[test]
    fn shared_payload_files_are_read_from_the_configured_folder_only() {
        let vol = volume(4, 30, 20);
        let mask = Array3::from_shape_fn((4, 30, 20), |(k, j, _)| u8::from((k + j) % 2 == 0));
        let chunks: Vec<_> = encode(VolumeHeader { study_uid: "9.8".into(), ..Default::default() }, &vol, Some(&mask)).collect();
        let header = chunks[0].clone();
        let mut payload = Vec::new();
        for c in &chunks[1..] {
            match &c.part {
                Some(Part::Voxels(b) | Part::LungMask(b)) => payload.extend_from_slice(&b.data),
                _ => unreachable!(),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s1.vol"), &payload).unwrap();
        let shared = |file: &str| VolumeChunk { part: Some(Part::Shared(v1::SharedPayload { file: file.into() })) };
        let asm = || VolumeAssembler::new(1 << 30).with_shared_dir(Some(dir.path().to_path_buf()));

        let mut a = asm();
        a.push(header.clone()).unwrap();
        assert!(VolumeAssembler::is_shared(&shared("s1.vol")));
        a.push(shared("s1.vol")).unwrap();
        let (h, back, m) = a.finish().unwrap();
        assert_eq!((h.study_uid.as_str(), &back, m.as_ref()), ("9.8", &vol, Some(&mask.clone().into())));

        // a header without the mask (as the gateway sends to most models) reads the voxels only
        let mut no_mask = header.clone();
        if let Some(Part::Header(h)) = &mut no_mask.part {
            h.has_lung_mask = false;
            h.mask_bytes = 0;
        }
        let mut a = asm();
        a.push(no_mask).unwrap();
        a.push(shared("s1.vol")).unwrap();
        assert!(a.finish().unwrap().2.is_none());

        // refused: not enabled, names with a directory part, missing, short, a symlink, mixed with chunks
        let mut a = VolumeAssembler::new(1 << 30);
        a.push(header.clone()).unwrap();
        assert_eq!(a.push(shared("s1.vol")), Err(CodecError::SharedNotEnabled));
        for bad in ["../s1.vol", "/etc/passwd", "a/b", "..", "", "missing.vol"] {
            let mut a = asm();
            a.push(header.clone()).unwrap();
            assert!(matches!(a.push(shared(bad)), Err(CodecError::Shared(_))), "{bad:?}");
        }
        std::fs::write(dir.path().join("short.vol"), &payload[..payload.len() - 1]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("s1.vol"), dir.path().join("link.vol")).unwrap();
        for bad in ["short.vol", "link.vol"] {
            let mut a = asm();
            a.push(header.clone()).unwrap();
            assert!(matches!(a.push(shared(bad)), Err(CodecError::Shared(_))), "{bad:?}");
        }
        let mut a = asm();
        a.push(header).unwrap();
        a.push(chunks[1].clone()).unwrap();
        assert!(matches!(a.push(shared("s1.vol")), Err(CodecError::Shared(_))));
    }

    #[test]
    fn shared_files_hold_the_streams_payload_bytes() {
        // 9 x 700 x 700 i16 = 8.8 MB of voxels: two 8 MiB pieces, then the mask's
        let vol = volume(9, 700, 700);
        let mask = Array3::from_shape_fn((9, 700, 700), |(k, j, i)| u8::from((k + j + i) % 3 == 0));
        let chunks: Vec<_> = encode(VolumeHeader::default(), &vol, Some(&mask)).collect();
        let mut payload = Vec::new();
        for c in &chunks[1..] {
            if let Some(Part::Voxels(b) | Part::LungMask(b)) = &c.part {
                payload.extend_from_slice(&b.data);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        for threads in [1, 2, 3, 64] {
            let name = format!("t{threads}.vol");
            write_shared_file(dir.path(), &name, &vol, Some(&mask), threads).unwrap();
            assert!(std::fs::read(dir.path().join(&name)).unwrap() == payload, "{threads} threads");
        }
        let header = fill_header(VolumeHeader::default(), &vol, Some(&mask));
        assert_eq!(chunks[0].part, Some(Part::Header(header.clone())));
        assert_eq!(header.voxel_bytes + header.mask_bytes, payload.len() as u64);
        // without a mask: the voxels only; an existing file is never overwritten
        write_shared_file(dir.path(), "nomask.vol", &vol, None, 2).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("nomask.vol")).unwrap().len(), header.voxel_bytes);
        let err = write_shared_file(dir.path(), "t1.vol", &vol, None, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("t1.vol")).unwrap().len(), payload.len());
    }

    #[test]
    fn shared_files_are_recycled_through_a_bounded_pool() {
        let vol = volume(4, 30, 20);
        let mask = Array3::from_shape_fn((4, 30, 20), |(k, j, _)| u8::from((k + j) % 2 == 0));
        let dir = tempfile::tempdir().unwrap();
        let names = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        };
        for n in ["a.vol", "b.vol", "c.vol"] {
            write_shared_file(dir.path(), n, &vol, Some(&mask), 2).unwrap();
        }
        // a pool of 2: the third file is removed
        assert!(recycle_shared_file(&dir.path().join("a.vol"), 2).unwrap());
        assert!(recycle_shared_file(&dir.path().join("b.vol"), 2).unwrap());
        assert!(!recycle_shared_file(&dir.path().join("c.vol"), 2).unwrap());
        assert!(names(dir.path()).iter().all(|n| n.starts_with(POOL_PREFIX)) && names(dir.path()).len() == 2);
        // the next file reuses a free one, with the right content; the mask-less study is shorter
        // than what the free file held, and the file keeps its length (files never shrink)
        let with_mask = fill_header(VolumeHeader::default(), &vol, Some(&mask));
        write_shared_file(dir.path(), "d.vol", &vol, None, 2).unwrap();
        assert_eq!(names(dir.path()).len(), 2);
        let read = |name: &str, header: &VolumeHeader| {
            let mut asm = VolumeAssembler::new(1 << 30).with_shared_dir(Some(dir.path().to_path_buf()));
            asm.push(VolumeChunk { part: Some(Part::Header(header.clone())) }).unwrap();
            asm.push(VolumeChunk { part: Some(Part::Shared(v1::SharedPayload { file: name.into() })) }).unwrap();
            asm.finish().unwrap()
        };
        let (_, back, m) = read("d.vol", &fill_header(VolumeHeader::default(), &vol, None));
        assert!(back.is_shared() && m.is_none());
        assert_eq!(back, vol);
        assert_eq!(std::fs::metadata(dir.path().join("d.vol")).unwrap().len(), with_mask.voxel_bytes + with_mask.mask_bytes);
        // pool 0: removed
        assert!(!recycle_shared_file(&dir.path().join("d.vol"), 0).unwrap());
        assert_eq!(names(dir.path()).len(), 1);
    }

    #[test]
    fn a_mapped_file_stays_readable_when_its_pool_file_is_reused_for_a_smaller_study() {
        // a reader the gateway gave up on may still map a file that went back to the pool: the
        // next, smaller study must not truncate it under the mapping (SIGBUS would kill the test)
        let big = volume(6, 40, 30);
        let mask = Array3::from_shape_fn((6, 40, 30), |(k, j, i)| u8::from((k + j + i) % 2 == 0));
        let dir = tempfile::tempdir().unwrap();
        write_shared_file(dir.path(), "a.vol", &big, Some(&mask), 2).unwrap();
        let mut asm = VolumeAssembler::new(1 << 30).with_shared_dir(Some(dir.path().to_path_buf()));
        asm.push(VolumeChunk { part: Some(Part::Header(fill_header(VolumeHeader::default(), &big, Some(&mask)))) }).unwrap();
        asm.push(VolumeChunk { part: Some(Part::Shared(v1::SharedPayload { file: "a.vol".into() })) }).unwrap();
        let (_, back, m) = asm.finish().unwrap();
        assert_eq!(m.as_ref().map(|m| m.view().to_owned()), Some(mask.clone()));
        assert!(recycle_shared_file(&dir.path().join("a.vol"), 2).unwrap());
        let small = volume(1, 4, 3);
        write_shared_file(dir.path(), "b.vol", &small, None, 2).unwrap();
        // every page of the old mapping is still there (its first bytes now hold the new study)
        let last = back.voxels().get(5, 39, 29);
        assert_eq!(last, big.voxels().get(5, 39, 29));
        assert_eq!(m.unwrap().view()[[5, 39, 29]], mask[[5, 39, 29]]);
    }

    #[test]
    fn stale_study_files_are_swept_and_pool_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (name, modified) in [("ct-prep-1-0-5.vol", Some(old)), ("ct-7-0-abc.vol", Some(old)), ("ct-7-1-def.vol", None), ("pool-1-0-9.vol", Some(old)), ("other.txt", Some(old))] {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            if let Some(t) = modified {
                f.set_modified(t).unwrap();
            }
        }
        let mut removed = sweep_stale_shared_files(dir.path(), std::time::Duration::from_secs(600)).unwrap();
        removed.sort();
        assert_eq!(removed, ["ct-7-0-abc.vol", "ct-prep-1-0-5.vol"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["ct-7-1-def.vol", "other.txt", "pool-1-0-9.vol"]);
    }

    #[test]
    fn round_trip_with_mask_and_chunk_limit() {
        let vol = volume(9, 300, 700); // 3.78 MB of voxels: several chunks
        let mask = Array3::from_shape_fn((9, 300, 700), |(k, _, i)| u8::from((k + i) % 3 == 0));
        let header = VolumeHeader { study_uid: "1.2.3".into(), ..Default::default() };
        let chunks: Vec<_> = encode(header, &vol, Some(&mask)).collect();
        assert!(chunks.len() > 3);
        assert!(chunks.iter().all(|c| c.encoded_len() < 4 * 1024 * 1024));
        let mut asm = VolumeAssembler::new(1 << 30);
        for c in chunks {
            asm.push(c).unwrap();
        }
        let (h, back, m) = asm.finish().unwrap();
        assert_eq!(h.study_uid, "1.2.3");
        assert_eq!(back, vol);
        assert_eq!(m.unwrap(), mask.into());
    }

    #[test]
    fn rejects_gaps_truncation_and_lies() {
        let vol = volume(3, 40, 50);
        let chunks: Vec<_> = encode(VolumeHeader::default(), &vol, None).collect();
        // missing header
        let mut asm = VolumeAssembler::new(1 << 30);
        assert_eq!(asm.push(chunks[1].clone()), Err(CodecError::MissingHeader));
        // truncated stream
        let mut asm = VolumeAssembler::new(1 << 30);
        asm.push(chunks[0].clone()).unwrap();
        assert!(matches!(asm.finish(), Err(CodecError::Incomplete { part: "voxels", .. })));
        // header whose dims disagree with voxel_bytes
        let mut h = match chunks[0].part.clone() {
            Some(Part::Header(h)) => h,
            _ => unreachable!(),
        };
        h.dims[0] += 1;
        let mut asm = VolumeAssembler::new(1 << 30);
        assert!(matches!(asm.push(VolumeChunk { part: Some(Part::Header(h)) }), Err(CodecError::BadHeader(_))));
        // over the receiver's limit
        let mut asm = VolumeAssembler::new(100);
        assert!(matches!(asm.push(chunks[0].clone()), Err(CodecError::BadHeader(_))));
        // a chunk at the wrong offset
        let mut asm = VolumeAssembler::new(1 << 30);
        asm.push(chunks[0].clone()).unwrap();
        let bad = VolumeChunk { part: Some(Part::Voxels(v1::Bytes { offset: 8, data: vec![0; 8].into() })) };
        assert_eq!(asm.push(bad), Err(CodecError::OutOfOrder { part: "voxels", expected: 0, found: 8 }));
    }
}
