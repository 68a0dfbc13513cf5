//! Generates the gRPC code and the reflection descriptor set from `proto/` with protox, a pure-Rust
//! protobuf compiler, so that building needs no system `protoc`. The contract imports vendored
//! protos (`proto/google/api`, `proto/buf/validate`) for its field annotations; they are compiled
//! from `proto/` too, so nothing is fetched.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/c2p/enrollment/v1/enrollment.proto";
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files([proto])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself: `prost_types` has no room for extension options, and the served
    // descriptor must keep them (`google.api.field_behavior`, `buf.validate`) for reflection.
    fs::write(
        out_dir.join("c2p_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Code for the contract's own package only: the vendored imports define options, which
    // need no Rust types (the well-known types stay, for prost-build to resolve; they are
    // prost-types' and generate nothing).
    let mut fds = compiler.file_descriptor_set();
    fds.file
        .retain(|f| matches!(f.package(), "c2p.enrollment.v1" | "google.protobuf"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // INVALID_ARGUMENT for undecodable requests (prost's own codec says INTERNAL).
        .codec_path("crate::grpc::codec::StrictCodec")
        // Hand-written: the same message, able to send an answer already encoded (see there).
        .extern_path(
            ".c2p.enrollment.v1.GetEnrollmentStatusResponse",
            "crate::proto::status_response::GetEnrollmentStatusResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
