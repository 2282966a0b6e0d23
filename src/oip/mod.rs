//! Open Inference Protocol adapters. Each turns its wire format into a
//! [`crate::model::InferRequest`] and calls [`crate::model::Model::infer`]; none touches the
//! engine pool or Tesseract.

pub mod codec;
pub mod grpc;
pub mod tensor;

/// Code generated from `proto/` by the build script.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// The descriptor set of `proto/`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}
