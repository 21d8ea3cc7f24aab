//! causeway-tunnel: the mutually authenticated gRPC tunnel between Causeway's
//! `core` (inside, dials out) and `edge` (DMZ, listens).
//!
//! Stanzas flow both ways with exactly-once, in-order delivery across TCP cuts
//! and reconnects:
//! * each sender keeps every stanza in a bounded [`window::ReplayWindow`] until
//!   the peer acknowledges it cumulatively, and replays the unacknowledged tail
//!   after a reconnect;
//! * each receiver filters by sequence number with a [`window::Dedup`] that
//!   restarts when the peer's random per-process `instance` changes;
//! * `send` waits for window room (backpressure) instead of dropping;
//! * keepalives flow every [`TunnelOptions::keepalive`]; silence for three
//!   intervals closes the connection, and the core redials with jittered
//!   exponential backoff.
//!
//! The edge side is [`EdgeTunnel`], the core side [`CoreTunnel`]. With several
//! tunnels side by side (several edges per core, several cores per edge),
//! [`ha`] chooses the peer for each domain pair and tells when a peer that
//! stays away is gone, and `take_unacked` on either side hands back what
//! such a peer never acknowledged.

mod core_side;
mod edge;
mod error;
pub mod ha;
mod link;
pub mod protocol;
mod tls;
mod types;
pub mod window;

pub use core_side::{CoreTunnel, CoreTunnelConfig, CORE_DELIVERY_BUFFER};
pub use edge::{EdgeEvent, EdgeTunnel};
pub use error::TunnelError;
pub use link::{Delivered, Receipt, Settle, MAX_STANZA_BYTES};
pub use tls::peer_identity;
pub use types::{
    CoreHello, LinkStats, PeerCheck, TlsFiles, TunnelOptions, TunnelStanza, TunnelState,
    TunnelStats, DEFAULT_DESTINATION_SHARE, DEFAULT_WINDOW_BYTES, MIN_WINDOW_BYTES,
};
