//! Compiles the public contract with a vendored protoc (no system protoc
//! needed) and writes the descriptor set that server reflection serves.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let wkt_include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("patd_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/patd/v1/tokens.proto")],
            &[PathBuf::from("proto"), wkt_include],
        )?;
    Ok(())
}
