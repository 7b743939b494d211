//! The `ct.v1` gRPC contracts (generated from `proto/ct/v1/*.proto` with a vendored protoc),
//! the typed-error convention for statuses, and the chunked volume codec shared by every
//! service that sends or receives a [`ct_volume::Volume`].

pub mod codec;
pub mod errors;
pub mod mapped;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ct.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ct_v1_descriptor");
}

/// Largest payload put into one chunk message (well under tonic's 4 MiB default limit).
pub const MAX_CHUNK_BYTES: usize = 2 * 1024 * 1024;
