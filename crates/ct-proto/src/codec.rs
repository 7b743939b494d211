//! Chunked volume streams: [`encode`] turns a volume (and its lung mask) into `VolumeChunk`
//! messages of at most [`MAX_CHUNK_BYTES`]; [`VolumeAssembler`] checks and reassembles them.
//!
//! Stream shape: one `header`, then `voxels` chunks covering `[0, voxel_bytes)` in order, then
//! `lung_mask` chunks covering `[0, mask_bytes)` in order. The receiver checks that the chunks
//! add up to the header's dims.

use crate::MAX_CHUNK_BYTES;
use crate::v1::{self, VolumeChunk, VolumeHeader, VoxelType, volume_chunk::Part};
use ct_volume::{Geometry, Volume, Voxels};
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
}

/// Fills the geometry/payload fields of `header` from `volume` and `mask`, and returns the
/// message stream. Metadata (UIDs, kernel, selection, warnings, lung validation) is the caller's.
pub fn encode<'a>(mut header: VolumeHeader, volume: &'a Volume, mask: Option<&'a Array3<u8>>) -> impl Iterator<Item = VolumeChunk> + 'a {
    let g = volume.geometry();
    header.dims = volume.dims().iter().map(|&d| d as u32).collect();
    header.spacing_mm = g.spacing_mm.to_vec();
    header.orientation = g.orientation.to_vec();
    header.origin_mm = g.origin_mm.to_vec();
    header.slice_positions_mm = g.slice_positions_mm.iter().flatten().copied().collect();
    header.voxel_type = match volume.voxels() {
        Voxels::I16(_) => VoxelType::Int16,
        Voxels::F32(_) => VoxelType::Float32,
    } as i32;
    let n: usize = volume.dims().iter().product();
    header.voxel_bytes = (n * volume.voxels().bytes_per_voxel()) as u64;
    header.has_lung_mask = mask.is_some();
    header.mask_bytes = mask.map_or(0, |m| m.len() as u64);

    let voxel_chunks: Box<dyn Iterator<Item = VolumeChunk> + 'a> = match volume.voxels() {
        Voxels::I16(a) => Box::new(chunked(a.as_slice().expect("standard layout"), 2, |v, out| out.extend_from_slice(&v.to_le_bytes()), Part::Voxels)),
        Voxels::F32(a) => Box::new(chunked(a.as_slice().expect("standard layout"), 4, |v, out| out.extend_from_slice(&v.to_le_bytes()), Part::Voxels)),
    };
    let mask_chunks = mask.into_iter().flat_map(|m| chunked(m.as_slice().expect("standard layout"), 1, |v, out| out.push(*v), Part::LungMask));
    std::iter::once(VolumeChunk { part: Some(Part::Header(header)) }).chain(voxel_chunks).chain(mask_chunks)
}

fn chunked<'a, T>(values: &'a [T], bytes_per: usize, put: fn(&T, &mut Vec<u8>), wrap: fn(v1::Bytes) -> Part) -> impl Iterator<Item = VolumeChunk> + 'a {
    let per_chunk = MAX_CHUNK_BYTES / bytes_per;
    values.chunks(per_chunk).enumerate().map(move |(c, part)| {
        let mut data = Vec::with_capacity(part.len() * bytes_per);
        for v in part {
            put(v, &mut data);
        }
        VolumeChunk { part: Some(wrap(v1::Bytes { offset: (c * per_chunk * bytes_per) as u64, data: data.into() })) }
    })
}

/// Receives a chunk stream and rebuilds the volume, checking order and sizes.
#[derive(Debug)]
pub struct VolumeAssembler {
    header: Option<VolumeHeader>,
    voxels: Vec<u8>,
    mask: Vec<u8>,
    max_voxel_bytes: u64,
}

impl VolumeAssembler {
    /// `max_voxel_bytes` bounds the memory a sender can make the receiver allocate.
    pub fn new(max_voxel_bytes: u64) -> Self {
        Self { header: None, voxels: Vec::new(), mask: Vec::new(), max_voxel_bytes }
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
                self.voxels.reserve_exact(expected as usize);
                self.mask.reserve_exact(h.mask_bytes as usize);
                self.header = Some(h);
                Ok(())
            }
            Some(Part::Voxels(b)) => {
                let h = self.header.as_ref().ok_or(CodecError::MissingHeader)?;
                append(&mut self.voxels, b, h.voxel_bytes, "voxels")
            }
            Some(Part::LungMask(b)) => {
                let h = self.header.as_ref().ok_or(CodecError::MissingHeader)?;
                if self.voxels.len() as u64 != h.voxel_bytes {
                    return Err(CodecError::Incomplete { part: "voxels", expected: h.voxel_bytes, got: self.voxels.len() as u64 });
                }
                append(&mut self.mask, b, h.mask_bytes, "lung_mask")
            }
            None => Ok(()),
        }
    }

    /// The header, the volume and the lung mask (if one was sent).
    pub fn finish(self) -> Result<(VolumeHeader, Volume, Option<Array3<u8>>), CodecError> {
        let h = self.header.ok_or(CodecError::MissingHeader)?;
        for (part, got, expected) in [("voxels", self.voxels.len() as u64, h.voxel_bytes), ("lung_mask", self.mask.len() as u64, h.mask_bytes)] {
            if got != expected {
                return Err(CodecError::Incomplete { part, expected, got });
            }
        }
        let (ni, nj, nk) = (h.dims[0] as usize, h.dims[1] as usize, h.dims[2] as usize);
        let shape = (nk, nj, ni);
        let voxels = if h.voxel_type == VoxelType::Float32 as i32 {
            let v = self.voxels.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Voxels::F32(Array3::from_shape_vec(shape, v).map_err(|e| CodecError::BadHeader(e.to_string()))?)
        } else {
            let v = self.voxels.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
            Voxels::I16(Array3::from_shape_vec(shape, v).map_err(|e| CodecError::BadHeader(e.to_string()))?)
        };
        let geometry = Geometry {
            spacing_mm: [h.spacing_mm[0], h.spacing_mm[1], h.spacing_mm[2]],
            orientation: std::array::from_fn(|a| h.orientation[a]),
            origin_mm: [h.origin_mm[0], h.origin_mm[1], h.origin_mm[2]],
            slice_positions_mm: h.slice_positions_mm.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
        };
        let mask = if h.has_lung_mask { Some(Array3::from_shape_vec(shape, self.mask).map_err(|e| CodecError::BadHeader(e.to_string()))?) } else { None };
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

fn append(buf: &mut Vec<u8>, b: v1::Bytes, limit: u64, part: &'static str) -> Result<(), CodecError> {
    let at = buf.len() as u64;
    if b.offset != at {
        return Err(CodecError::OutOfOrder { part, expected: at, found: b.offset });
    }
    if at + b.data.len() as u64 > limit {
        return Err(CodecError::Overflow { part, limit });
    }
    buf.extend_from_slice(&b.data);
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
        assert_eq!(m.unwrap(), mask);
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
