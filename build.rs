//! Generates the gRPC code and the reflection descriptor set from `proto/` with protox, a pure-Rust
//! protobuf compiler, so that building needs no system `protoc`.

use prost::Message as _;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/c2p/enrollment/v1/enrollment.proto";
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("c2p_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // INVALID_ARGUMENT for undecodable requests (prost's own codec says INTERNAL).
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(fds)?;
    Ok(())
}
