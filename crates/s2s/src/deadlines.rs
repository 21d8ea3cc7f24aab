//! How long each phase of a connection may take. Every socket the edge reads has a deadline
//! in every phase, so a peer that stalls (never sends its header, never finishes a TLS
//! handshake, never authenticates, never reads) loses its connection in bounded time.

use std::time::Duration;

/// Per-phase deadlines of s2s connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept (and from each stream restart) to the peer's stream header.
    pub stream_header: Duration,
    /// A TLS handshake (STARTTLS or direct TLS), from its first byte to its end.
    pub tls_handshake: Duration,
    /// From accept to the first authenticated domain pair (dialback or SASL), and for a
    /// whole outgoing negotiation.
    pub authentication: Duration,
    /// A write that makes no progress this long (the peer does not read) closes the
    /// connection, in every phase of its life.
    pub write_stall: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            stream_header: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            authentication: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
        }
    }
}

/// The last words to a peer being closed (a stream error) get this long at most, whatever
/// `write_stall` is: a peer that is being dropped for stalling must not stall the drop.
pub const FINAL_WRITE: Duration = Duration::from_secs(2);
