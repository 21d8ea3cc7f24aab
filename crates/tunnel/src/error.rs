//! Error type of the tunnel crate.

/// Errors reported by [`EdgeTunnel`](crate::EdgeTunnel) and
/// [`CoreTunnel`](crate::CoreTunnel).
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// `EdgeTunnel::send` named a core that never completed a hello.
    #[error("unknown core {0:?}: it never said hello")]
    UnknownCore(String),
    /// The tunnel was shut down; nothing more can be queued.
    #[error("tunnel closed")]
    Closed,
    /// TLS configuration or certificate problem (bad PEM, no usable identity, handshake failure).
    #[error("tls: {0}")]
    Tls(String),
    /// gRPC / HTTP/2 transport failure (connect failed, stream broken).
    #[error("transport: {0}")]
    Transport(String),
    /// The peer did not follow the traversal protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer refused the session (e.g. `permission_denied` for a hello whose
    /// core_id does not match the client certificate).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The stanza is larger than [`MAX_STANZA_BYTES`](crate::MAX_STANZA_BYTES)
    /// and was not queued.
    #[error("stanza of {size} bytes exceeds the tunnel limit of {max} bytes")]
    TooLarge {
        /// Size of the rejected stanza (payload plus domains).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No frame arrived within three keepalive intervals.
    #[error("peer silent for {0:?}, connection considered dead")]
    Timeout(std::time::Duration),
    /// Local socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
