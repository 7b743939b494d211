//! Arrays whose bytes live outside the process heap: one-machine mode hands a model service the
//! study's voxels and lung mask as a memory-mapped file of a shared tmpfs folder, and the recipes
//! read them in place instead of from a 100s-of-MB copy.
//!
//! This crate does no I/O: the buffer comes from the caller as an [`ExternalBytes`] (the codec of
//! `ct-proto` maps the file). Values are little-endian in the buffer, so a zero-copy view exists
//! only on little-endian machines; [`SharedArray::new`] refuses elsewhere (the codec then copies).

use ndarray::{Array3, ArrayView3};
use std::marker::PhantomData;
use std::sync::Arc;

/// Read-only bytes owned by something else (e.g. a memory-mapped file), alive as long as this
/// value is. The bytes must not change while borrowed: the owner guarantees it (for the codec's
/// mapped files, the one-machine protocol does; see `ct_proto::codec`).
pub trait ExternalBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl ExternalBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("shape {shape:?} of {value_size}-byte values needs {needed} bytes from offset {offset}, the buffer holds {len}")]
    TooShort { shape: [usize; 3], value_size: usize, offset: usize, needed: usize, len: usize },
    #[error("values at byte offset {offset} of the buffer are not aligned to {align} bytes")]
    Misaligned { offset: usize, align: usize },
    #[error("little-endian values cannot be viewed in place on a big-endian machine")]
    BigEndian,
}

/// A C-order `[nk, nj, ni]` array of little-endian `T` at `offset` of an external buffer.
pub struct SharedArray<T> {
    buf: Arc<dyn ExternalBytes>,
    offset: usize,
    shape: [usize; 3],
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        Self { buf: Arc::clone(&self.buf), offset: self.offset, shape: self.shape, _values: PhantomData }
    }
}

impl<T> std::fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArray").field("type", &std::any::type_name::<T>()).field("offset", &self.offset).field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl<T: bytemuck::Pod> SharedArray<T> {
    /// Checks that the buffer holds the whole array at `offset`, suitably aligned, and that this
    /// machine is little-endian.
    pub fn new(buf: Arc<dyn ExternalBytes>, offset: usize, shape: [usize; 3]) -> Result<Self, StoreError> {
        if cfg!(target_endian = "big") {
            return Err(StoreError::BigEndian);
        }
        let value_size = std::mem::size_of::<T>();
        let bytes = buf.bytes();
        let needed = shape.iter().try_fold(value_size, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
        if offset.checked_add(needed).is_none_or(|end| end > bytes.len()) {
            return Err(StoreError::TooShort { shape, value_size, offset, needed, len: bytes.len() });
        }
        let align = std::mem::align_of::<T>();
        if !(bytes.as_ptr() as usize + offset).is_multiple_of(align) {
            return Err(StoreError::Misaligned { offset, align });
        }
        Ok(Self { buf, offset, shape, _values: PhantomData })
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The values, in place.
    pub fn view(&self) -> ArrayView3<'_, T> {
        let n: usize = self.shape.iter().product();
        let bytes = &self.buf.bytes()[self.offset..self.offset + n * std::mem::size_of::<T>()];
        // length, alignment and byte order were checked by `new`, and the buffer does not change
        ArrayView3::from_shape(self.shape, bytemuck::cast_slice::<u8, T>(bytes)).expect("checked by SharedArray::new")
    }
}

/// A C-order `[nk, nj, ni]` array, on the heap or in an external buffer.
#[derive(Debug, Clone)]
pub enum Array3Store<T> {
    Owned(Array3<T>),
    Shared(SharedArray<T>),
}

impl<T: bytemuck::Pod> Array3Store<T> {
    pub fn view(&self) -> ArrayView3<'_, T> {
        match self {
            Self::Owned(a) => a.view(),
            Self::Shared(s) => s.view(),
        }
    }

    /// `[nk, nj, ni]`.
    pub fn shape(&self) -> [usize; 3] {
        match self {
            Self::Owned(a) => {
                let s = a.shape();
                [s[0], s[1], s[2]]
            }
            Self::Shared(s) => s.shape(),
        }
    }
}

impl<T> From<Array3<T>> for Array3Store<T> {
    fn from(a: Array3<T>) -> Self {
        Self::Owned(a)
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Array3Store<T> {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_bytes(values: &[i16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn views_little_endian_values_in_place() {
        let values: Vec<i16> = (0..24).map(|v| v * 100 - 1000).collect();
        let mut bytes = le_bytes(&values);
        bytes.extend([7u8; 6]); // a trailing payload (the mask) after the voxels
        let buf: Arc<dyn ExternalBytes> = Arc::new(bytes);
        let a = SharedArray::<i16>::new(Arc::clone(&buf), 0, [2, 3, 4]).unwrap();
        assert_eq!(a.view(), Array3::from_shape_vec((2, 3, 4), values).unwrap());
        let m = SharedArray::<u8>::new(buf, 48, [1, 2, 3]).unwrap();
        assert_eq!(m.view(), Array3::from_elem((1, 2, 3), 7u8));
        assert_eq!(Array3Store::Shared(m).view(), Array3::from_elem((1, 2, 3), 7u8));
    }

    #[test]
    fn refuses_short_or_misaligned_buffers() {
        let buf: Arc<dyn ExternalBytes> = Arc::new(vec![0u8; 50]);
        assert!(matches!(SharedArray::<i16>::new(Arc::clone(&buf), 0, [2, 3, 5]), Err(StoreError::TooShort { needed: 60, len: 50, .. })));
        assert!(matches!(SharedArray::<i16>::new(Arc::clone(&buf), usize::MAX - 1, [1, 1, 1]), Err(StoreError::TooShort { .. })));
        assert!(matches!(SharedArray::<i16>::new(Arc::clone(&buf), 0, [usize::MAX, 2, 2]), Err(StoreError::TooShort { .. })));
        // a Vec<u8>'s start is at least 2-aligned with the global allocator; offset 1 is not
        assert_eq!(SharedArray::<i16>::new(Arc::clone(&buf), 1, [1, 1, 2]).unwrap_err(), StoreError::Misaligned { offset: 1, align: 2 });
        assert!(SharedArray::<u8>::new(buf, 1, [1, 7, 7]).is_ok());
    }

    #[test]
    fn owned_and_shared_stores_compare_by_value() {
        let a = Array3::from_shape_fn((2, 2, 3), |(k, j, i)| (k * 6 + j * 3 + i) as i16);
        let buf: Arc<dyn ExternalBytes> = Arc::new(le_bytes(a.as_slice().unwrap()));
        let shared = Array3Store::Shared(SharedArray::<i16>::new(buf, 0, [2, 2, 3]).unwrap());
        let owned = Array3Store::Owned(a.clone());
        assert_eq!(shared, owned);
        assert_eq!(shared.shape(), [2, 2, 3]);
        let mut b = a;
        b[[1, 1, 2]] = -1;
        assert_ne!(shared, Array3Store::Owned(b));
    }
}
