//! causeway-api: generated protobuf / gRPC types for Causeway.
//!
//! The `.proto` sources live in the workspace's `proto/` directory and are
//! compiled at build time with `protox` (pure Rust, no system `protoc`) and
//! `tonic-prost-build`.

/// The edge <-> core traversal tunnel (`causeway.traversal.v1`).
///
/// Contains the message types (`Frame`, `Hello`, `StanzaFrame`, `Ack`,
/// `Keepalive`) plus `traversal_client::TraversalClient` and
/// `traversal_server::{Traversal, TraversalServer}`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod traversal {
    tonic::include_proto!("causeway.traversal.v1");
}

/// The local admin API of both daemons (`causeway.admin.v1`): `admin_server::{Admin,
/// AdminServer}`, `admin_client::AdminClient`, and the messages, which also derive
/// `serde::Serialize` (the CLI's `--json` output).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod admin {
    tonic::include_proto!("causeway.admin.v1");
}

#[cfg(test)]
mod tests {
    use super::traversal::{frame, Ack, Frame};
    use prost::Message;

    #[test]
    fn frame_roundtrip() {
        let f = Frame {
            kind: Some(frame::Kind::Ack(Ack {
                seq: 42,
                ranges: vec![],
            })),
        };
        let bytes = f.encode_to_vec();
        let back = Frame::decode(bytes.as_slice()).expect("decode");
        assert_eq!(back, f);
        match back.kind {
            Some(frame::Kind::Ack(a)) => assert_eq!(a.seq, 42),
            other => panic!("unexpected kind {other:?}"),
        }
    }
}
