//! Open Inference Protocol adapters. Each turns its wire format into a
//! [`crate::model::InferRequest`] and calls [`crate::model::Model::infer`]; none touches the
//! engine pool or Tesseract.

pub mod codec;
pub mod grpc;
pub mod rest;
pub mod tensor;

/// The name the server reports in its metadata.
pub const SERVER_NAME: &str = "tesserve";

/// Protocol extensions this server implements, beyond the core OIP API.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics"];

/// Code generated from `proto/` by the build script.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// The descriptor set of `proto/`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}
