//! Compiles the API protos with `protox`, so that building needs no system
//! `protoc`.

use std::{env, fs, path::PathBuf};

const PROTOS: [&str; 3] = [
    "proto/api/v1/common/common.proto",
    "proto/api/v1/instance/instance.proto",
    "proto/api/v1/challenge/challenge.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let descriptors = protox::compile(PROTOS, ["proto"])?;

    // `compile_fds` does not write the descriptor set itself; keep it for
    // anyone who wants server reflection later.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("api_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
