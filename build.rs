//! Compiles the public contract with a vendored protoc (no system protoc
//! needed) and writes the descriptor sets that server reflection serves:
//! patd's own, and one for Envoy's ext_authz service, whose Rust types come
//! from the envoy-types crate (which ships no descriptors).

use std::{env, error::Error, path::PathBuf, process::Command};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let wkt_include = protoc_bin_vendored::include_path()?;

    let descriptor_path = out_dir.join("patd_descriptor.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    // The well-known types come from pbjson-types: the same prost messages,
    // plus their proto3 JSON forms ("3600s", RFC 3339).
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_with_config(
            config,
            &[PathBuf::from("proto/patd/v1/tokens.proto")],
            &[PathBuf::from("proto"), wkt_include.clone()],
        )?;
    // serde impls following the proto3 JSON mapping (lowerCamelCase out,
    // both spellings in), for the JSON API on the HTTP listener. Default
    // values are emitted (`{"revoked": 0}`, `{"active": false}`), as
    // grpcurl's `-emit-defaults` shows them.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .emit_fields()
        .build(&[".patd.v1"])?;

    // Descriptors only: no code is generated from the Envoy subset.
    let status = Command::new(&protoc)
        .arg("-I")
        .arg("proto/envoy_subset")
        .arg("-I")
        .arg(&wkt_include)
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out_dir.join("envoy_authz_descriptor.bin").display()
        ))
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on the Envoy ext_authz subset: {status}").into());
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
