//! NIfTI-1 input (`.nii` and `.nii.gz`, detected from the bytes) into the canonical volume.
//!
//! The reference uses the NIfTI data array as is (no reorientation), so the array's axes are
//! taken as `[i, j, k]` and its header zooms as the spacing. Unlike the reference, uncompressed
//! `.nii` works.

use crate::PrepError;
use ct_volume::{Geometry, Volume, Voxels};
use flate2::read::GzDecoder;
use ndarray::Array3;
use nifti::{Endianness, NiftiHeader, NiftiType};
use std::io::Read;

fn invalid(reason: impl Into<String>) -> PrepError {
    PrepError::InvalidNifti { reason: reason.into() }
}

/// Parses a NIfTI volume held in memory; `max_bytes` bounds the decompressed size.
pub fn read_nifti(bytes: &[u8], max_bytes: u64) -> Result<(Volume, Vec<String>), PrepError> {
    let mut owned;
    let data: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        owned = Vec::new();
        GzDecoder::new(bytes).take(max_bytes + 1).read_to_end(&mut owned).map_err(|e| invalid(format!("gzip stream: {e}")))?;
        if owned.len() as u64 > max_bytes {
            return Err(PrepError::TooLarge { what: "decompressed NIfTI".into(), size: owned.len() as u64, limit: max_bytes });
        }
        &owned
    } else {
        bytes
    };
    let header = NiftiHeader::from_reader(data).map_err(|e| invalid(format!("header: {e}")))?;
    let mut warnings = Vec::new();
    let dims = header.dim;
    let ndim = dims[0] as usize;
    if !(3..=7).contains(&ndim) || dims[1..=ndim].iter().skip(3).any(|&d| d > 1) {
        return Err(invalid(format!("expected a 3-D volume, dim = {:?}", &dims[..=ndim.min(7)])));
    }
    let (ni, nj, nk) = (dims[1] as usize, dims[2] as usize, dims[3] as usize);
    if ni == 0 || nj == 0 || nk == 0 {
        return Err(invalid(format!("empty dimension in {:?}", &dims[1..4])));
    }
    let dtype = header.data_type().map_err(|e| invalid(e.to_string()))?;
    let bpv = match dtype {
        NiftiType::Uint8 | NiftiType::Int8 => 1,
        NiftiType::Int16 | NiftiType::Uint16 => 2,
        NiftiType::Int32 | NiftiType::Uint32 | NiftiType::Float32 => 4,
        NiftiType::Float64 => 8,
        other => return Err(invalid(format!("unsupported data type {other:?}"))),
    };
    let n = ni * nj * nk;
    let offset = header.vox_offset as usize;
    if !(header.vox_offset.is_finite() && header.vox_offset >= 348.0) {
        return Err(invalid(format!("vox_offset {} (single-file NIfTI expected)", header.vox_offset)));
    }
    let end = offset.checked_add(n * bpv).ok_or_else(|| invalid("size overflow"))?;
    if end > data.len() {
        return Err(invalid(format!("data is {} bytes, header announces {}", data.len().saturating_sub(offset), n * bpv)));
    }
    let raw = &data[offset..end];
    let spacing = [1, 2, 3].map(|a| f64::from(header.pixdim[a].abs()));
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(invalid(format!("pixdim {:?} is not a valid spacing", &header.pixdim[1..4])));
    }
    let (slope, inter) = match (header.scl_slope, header.scl_inter) {
        (s, i) if s == 0.0 || !s.is_finite() => (1.0, if i.is_finite() && s != 0.0 { f64::from(i) } else { 0.0 }),
        (s, i) => (f64::from(s), if i.is_finite() { f64::from(i) } else { 0.0 }),
    };
    let big = header.endianness == Endianness::Big;
    let value = |c: &[u8]| -> f64 {
        macro_rules! rd {
            ($t:ty) => {{
                let b = c.try_into().expect("chunk size matches type");
                if big { <$t>::from_be_bytes(b) as f64 } else { <$t>::from_le_bytes(b) as f64 }
            }};
        }
        match dtype {
            NiftiType::Uint8 => f64::from(c[0]),
            NiftiType::Int8 => f64::from(c[0] as i8),
            NiftiType::Int16 => rd!(i16),
            NiftiType::Uint16 => rd!(u16),
            NiftiType::Int32 => rd!(i32),
            NiftiType::Uint32 => rd!(u32),
            NiftiType::Float32 => rd!(f32),
            _ => rd!(f64),
        }
    };
    let integer = !matches!(dtype, NiftiType::Float32 | NiftiType::Float64) && slope.fract() == 0.0 && inter.fract() == 0.0;
    // NIfTI data is i-fastest, i.e. C order [k][j][i]: the canonical layout as is.
    let voxels = if integer {
        Voxels::I16(Array3::from_shape_vec((nk, nj, ni), raw.chunks_exact(bpv).map(|c| (value(c) * slope + inter).clamp(-32768.0, 32767.0) as i16).collect()).map_err(|e| invalid(e.to_string()))?)
    } else {
        Voxels::F32(Array3::from_shape_vec((nk, nj, ni), raw.chunks_exact(bpv).map(|c| (value(c) * slope + inter) as f32).collect()).map_err(|e| invalid(e.to_string()))?)
    };
    // Orientation from the sform (RAS) when present, converted to LPS.
    let (orientation, origin, step) = if header.sform_code > 0 {
        let col = |a: usize| [-f64::from(header.srow_x[a]), -f64::from(header.srow_y[a]), f64::from(header.srow_z[a])];
        let unit = |v: [f64; 3]| {
            let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if l > 0.0 { v.map(|x| x / l) } else { v }
        };
        let (r, c) = (unit(col(0)), unit(col(1)));
        ([r[0], r[1], r[2], c[0], c[1], c[2]], col(3), col(2))
    } else {
        warnings.push("NIfTI has no sform: orientation assumed axial, origin 0".to_string());
        ([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0; 3], [0.0, 0.0, spacing[2]])
    };
    let geometry = Geometry {
        spacing_mm: spacing,
        orientation,
        origin_mm: origin,
        slice_positions_mm: (0..nk).map(|k| std::array::from_fn(|a| origin[a] + step[a] * k as f64)).collect(),
    };
    let volume = Volume::new(voxels, geometry).map_err(|e| invalid(e.to_string()))?;
    Ok((volume, warnings))
}
