//! Compiles the public contract with a vendored protoc (no system protoc
//! needed) and writes the descriptor sets that server reflection serves:
//! patd's own, and one for Envoy's ext_authz service, whose Rust types come
//! from the envoy-types crate (which ships no descriptors).

use std::{
    env,
    error::Error,
    path::{Path, PathBuf},
    process::Command,
};

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
    write_timestamp_fields(&descriptors, &out_dir.join("timestamp_fields.rs"))?;

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

/// The JSON names of every `google.protobuf.Timestamp` field of
/// `patd.v1`, for the JSON API, which writes them Z-normalized as the
/// proto3 JSON mapping asks (pbjson-types writes `+00:00`).
fn write_timestamp_fields(descriptors: &[u8], path: &Path) -> Result<(), Box<dyn Error>> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(descriptors)?;
    let mut names: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "patd.v1")
        .flat_map(|f| &f.message_type)
        .flat_map(|m| &m.field)
        .filter(|f| f.type_name() == ".google.protobuf.Timestamp")
        .map(|f| f.json_name().to_owned())
        .collect();
    names.sort();
    names.dedup();
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(
        path,
        format!(
            "/// JSON names of the Timestamp fields of `patd.v1` (from build.rs).\n\
             pub const TIMESTAMP_JSON_FIELDS: &[&str] = &[{}];\n",
            list.join(", ")
        ),
    )?;
    Ok(())
}
