//! Compiles the OIP protobuf definitions with a pure-Rust protobuf compiler (no `protoc` on the
//! machine), generates tonic server and client code, and keeps the file descriptor set for
//! gRPC server reflection.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["proto/grpc_service.proto", "proto/model_config.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("inference_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Tensor payloads stay reference-counted slices of the received message: no copies.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
