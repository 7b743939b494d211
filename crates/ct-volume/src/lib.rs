//! Canonical CT volume, classical lung mask and the model-input recipes.
//!
//! Pure computation, no I/O besides writing `.npy`: every service that needs a volume or a model
//! input depends on this crate, and this crate depends on no service.
//!
//! Layout convention (reference §2.7): the logical index is `[i = column, j = row, k = slice]`
//! with slices sorted ascending along the stacking axis. Voxels are stored k-major, then j, then
//! i (i fastest), i.e. an ndarray of shape `[nk, nj, ni]` in C order: each DICOM slice is one
//! contiguous `rows x columns` block, and a NIfTI data block maps onto it byte for byte.

pub mod lung;
pub mod npy;
pub mod recipe;
pub mod store;
mod volume;

pub use lung::{LungStats, LungValidation, lung_mask, lung_voxels_per_slice, validate_lung_counts, validate_lungs};
pub use recipe::ctclip::{CTCLIP_INPUT_SHAPE, CTCLIP_SHAPE, CtclipBlocksError, CtclipError, ctclip_tensor, ctclip_tensor_blocks};
pub use recipe::diffusion::{DiffusionError, DiffusionParams, diffusion_slices};
pub use recipe::fvlm::{FvlmError, FvlmOrganBox, FvlmOrganInput, FvlmParams, FvlmPlan, FvlmRoi, fvlm_inputs, fvlm_organ_input, fvlm_plan};
pub use recipe::mednext::{MEDNEXT_ROI, MednextError, MednextParams, mednext_resampled_clipped, mednext_tensor, to_f16_bits};
pub use store::{Array3Store, ExternalBytes, SharedArray, StoreError};
pub use volume::{Geometry, SharedVoxels, Volume, VolumeError, VoxelView, Voxels};
