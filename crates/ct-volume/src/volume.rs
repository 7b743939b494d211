use crate::store::SharedArray;
use ndarray::{Array3, ArrayView3};

/// Voxel values in Hounsfield units.
#[derive(Debug, Clone, PartialEq)]
pub enum Voxels {
    /// Lossless when the rescale slope/intercept are integers (the usual CT case).
    I16(Array3<i16>),
    /// Non-integer rescale, or float NIfTI input.
    F32(Array3<f32>),
}

/// Where the volume sits in the patient (DICOM LPS, millimetres).
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Spacing `[column (along i), row (along j), slice (along k)]` in mm, as the reference's
    /// NIfTI header zooms (dicom2nifti + nibabel: the norms of the affine's columns).
    pub spacing_mm: [f64; 3],
    /// Row direction (along i) then column direction (along j), LPS.
    pub orientation: [f64; 6],
    /// Position of voxel (0, 0, 0), LPS.
    pub origin_mm: [f64; 3],
    /// LPS position of each slice, `nk` entries.
    pub slice_positions_mm: Vec<[f64; 3]>,
}

impl Geometry {
    /// Spacing rounded to f32, exactly as the reference reads it back from the NIfTI header.
    pub fn zooms_f32(&self) -> [f32; 3] {
        self.spacing_mm.map(|v| v as f32)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("volume has an empty axis: shape [nk, nj, ni] = {shape:?}")]
    Empty { shape: [usize; 3] },
    #[error("spacing must be finite and positive, got {spacing:?}")]
    BadSpacing { spacing: [f64; 3] },
    #[error("{found} slice positions for {nk} slices")]
    SlicePositions { found: usize, nk: usize },
}

/// A study's voxels viewed in place, whatever their storage (see [`Volume::voxels`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VoxelView<'a> {
    I16(ArrayView3<'a, i16>),
    F32(ArrayView3<'a, f32>),
}

impl VoxelView<'_> {
    /// `[nk, nj, ni]`.
    pub fn shape(&self) -> [usize; 3] {
        let s = match self {
            Self::I16(a) => a.shape(),
            Self::F32(a) => a.shape(),
        };
        [s[0], s[1], s[2]]
    }

    pub fn bytes_per_voxel(&self) -> usize {
        match self {
            Self::I16(_) => 2,
            Self::F32(_) => 4,
        }
    }

    /// Value of slice `k`, row `j`, column `i` as f32.
    pub fn get(&self, k: usize, j: usize, i: usize) -> f32 {
        match self {
            Self::I16(a) => f32::from(a[[k, j, i]]),
            Self::F32(a) => a[[k, j, i]],
        }
    }
}

/// Voxels in an external buffer (one-machine mode: a mapped file of the shared folder), read in
/// place; see [`crate::store`].
#[derive(Debug, Clone)]
pub enum SharedVoxels {
    I16(SharedArray<i16>),
    F32(SharedArray<f32>),
}

#[derive(Debug, Clone)]
enum Storage {
    Owned(Voxels),
    Shared(SharedVoxels),
}

/// A canonical CT volume: HU voxels plus geometry.
#[derive(Debug, Clone)]
pub struct Volume {
    storage: Storage,
    geometry: Geometry,
}

impl PartialEq for Volume {
    fn eq(&self, other: &Self) -> bool {
        self.voxels() == other.voxels() && self.geometry == other.geometry
    }
}

impl Volume {
    pub fn new(voxels: Voxels, geometry: Geometry) -> Result<Self, VolumeError> {
        // slices are handed out as contiguous slices: keep C order
        let voxels = match voxels {
            Voxels::I16(a) if !a.is_standard_layout() => Voxels::I16(a.as_standard_layout().into_owned()),
            Voxels::F32(a) if !a.is_standard_layout() => Voxels::F32(a.as_standard_layout().into_owned()),
            v => v,
        };
        Self::checked(Storage::Owned(voxels), geometry)
    }

    /// A volume read in place from an external buffer (C order by construction).
    pub fn new_shared(voxels: SharedVoxels, geometry: Geometry) -> Result<Self, VolumeError> {
        Self::checked(Storage::Shared(voxels), geometry)
    }

    fn checked(storage: Storage, geometry: Geometry) -> Result<Self, VolumeError> {
        let this = Self { storage, geometry };
        let shape = this.voxels().shape();
        if shape.contains(&0) {
            return Err(VolumeError::Empty { shape });
        }
        let s = this.geometry.spacing_mm;
        if s.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err(VolumeError::BadSpacing { spacing: s });
        }
        if this.geometry.slice_positions_mm.len() != shape[0] {
            return Err(VolumeError::SlicePositions { found: this.geometry.slice_positions_mm.len(), nk: shape[0] });
        }
        Ok(this)
    }

    /// The voxels in place (C order, `[nk, nj, ni]`).
    pub fn voxels(&self) -> VoxelView<'_> {
        match &self.storage {
            Storage::Owned(Voxels::I16(a)) => VoxelView::I16(a.view()),
            Storage::Owned(Voxels::F32(a)) => VoxelView::F32(a.view()),
            Storage::Shared(SharedVoxels::I16(a)) => VoxelView::I16(a.view()),
            Storage::Shared(SharedVoxels::F32(a)) => VoxelView::F32(a.view()),
        }
    }

    /// Whether the voxels are read in place from an external buffer.
    pub fn is_shared(&self) -> bool {
        matches!(self.storage, Storage::Shared(_))
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// `[ni, nj, nk]`: columns, rows, slices (the reference's NIfTI shape).
    pub fn dims(&self) -> [usize; 3] {
        let [nk, nj, ni] = self.voxels().shape();
        [ni, nj, nk]
    }

    /// Slice `k` as f32 HU, row-major `[j][i]`, written into `out` (length `nj * ni`).
    pub fn slice_f32(&self, k: usize, out: &mut [f32]) {
        match self.voxels() {
            VoxelView::I16(a) => {
                let s = a.index_axis_move(ndarray::Axis(0), k);
                let s = s.to_slice().expect("standard layout");
                for (o, v) in out.iter_mut().zip(s) {
                    *o = f32::from(*v);
                }
            }
            VoxelView::F32(a) => {
                let s = a.index_axis_move(ndarray::Axis(0), k);
                out.copy_from_slice(s.to_slice().expect("standard layout"));
            }
        }
    }
}
