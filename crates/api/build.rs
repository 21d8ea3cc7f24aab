//! Compiles the Causeway protobuf definitions with the pure-Rust `protox`
//! compiler (no system `protoc`) and generates tonic client and server code.

use std::path::PathBuf;

/// Proto files compiled into this crate, relative to the proto directory.
const PROTOS: &[&str] = &["traversal.proto", "admin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The `Connect` RPC would clash with the generated
        // `TraversalClient::connect(endpoint)` convenience constructor, so it
        // is not generated; build clients with `TraversalClient::new(channel)`.
        .build_transport(false)
        // Zero-copy stanza payloads (`bytes::Bytes` instead of `Vec<u8>`).
        .bytes(".causeway.traversal.v1.StanzaFrame.payload")
        // The admin API's messages are what `edge status --json` and friends print.
        .type_attribute(".causeway.admin.v1", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".causeway.admin.v1.StatusReply.edge",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".causeway.admin.v1.StatusReply.core",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
