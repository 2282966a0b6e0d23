//! Open Inference Protocol adapters. Each turns its wire format into a
//! [`crate::model::InferRequest`] and calls [`crate::model::Model::infer`]; none touches the
//! engine pool or Tesseract.

pub mod codec;
pub mod grpc;
pub mod rest;
pub mod tensor;

use prost::Message as _;

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

/// Every gRPC service this server serves, as encoded descriptor sets: reflection answers from
/// them and the access log names methods from them, so neither keeps a list by hand.
pub const DESCRIPTOR_SETS: &[&[u8]] = &[
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The path of every method of [`DESCRIPTOR_SETS`]: `/package.Service/Method`.
pub fn grpc_methods() -> impl Iterator<Item = String> {
    DESCRIPTOR_SETS
        .iter()
        .filter_map(|set| prost_types::FileDescriptorSet::decode(*set).ok())
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service.into_iter().flat_map(move |service| {
                let prefix = format!("/{package}.{}/", service.name());
                service
                    .method
                    .into_iter()
                    .map(move |method| format!("{prefix}{}", method.name()))
            })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_methods_come_from_the_descriptors() {
        let methods: Vec<_> = super::grpc_methods().collect();
        for expected in [
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/RepositoryModelUnload",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(
                methods.iter().any(|m| m == expected),
                "{expected} in {methods:?}"
            );
        }
        assert_eq!(methods.len(), 16, "{methods:?}");
    }
}
