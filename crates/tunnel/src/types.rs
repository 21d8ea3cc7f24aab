//! Plain data types shared by the edge and core sides.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// One XMPP stanza carried through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStanza {
    /// Domain of the stanza's sender.
    pub from_domain: String,
    /// Domain of the stanza's recipient.
    pub to_domain: String,
    /// The serialized stanza.
    pub payload: bytes::Bytes,
}

/// PEM-encoded TLS material of one side of the tunnel.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This side's certificate chain (leaf first).
    pub cert_pem: Vec<u8>,
    /// This side's private key.
    pub key_pem: Vec<u8>,
    /// The traversal CA that must have signed the peer's certificate.
    pub ca_pem: Vec<u8>,
}

/// Tunables shared by both sides.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// Maximum number of unacknowledged stanzas per direction and peer;
    /// `send` waits when it is reached. Default 4096.
    pub window: usize,
    /// Maximum bytes of unacknowledged stanzas per direction and peer (payload and both
    /// domain names); `send` waits when it is reached. A stanza larger than this is sent
    /// alone. Default 32 MiB.
    pub window_bytes: usize,
    /// While the peer is connected, one destination domain may hold at most 1/n of the window
    /// (items and bytes); its sender waits beyond that, so a destination whose server does not
    /// keep up holds back its own senders, not the whole tunnel. 1: no limit. Default 4.
    pub destination_share: usize,
    /// Interval between keepalive frames (and HTTP/2 pings). A connection with
    /// no frame received for three intervals is closed. Default 10 s.
    pub keepalive: Duration,
    /// First reconnect delay of the core. Default 100 ms.
    pub backoff_min: Duration,
    /// Upper bound of the core's reconnect delay. Default 10 s.
    pub backoff_max: Duration,
    /// Edge: a core's TLS handshake must complete within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// Edge: tunnel connections at once (handshaking or established); more are dropped at
    /// accept. Default 64.
    pub max_connections: usize,
    /// Edge: a further check of each core's certificate (e.g. revocation). None: the
    /// handshake's verification only.
    pub peer_check: Option<PeerCheck>,
}

/// The default byte budget of a replay window.
pub const DEFAULT_WINDOW_BYTES: usize = 32 * 1024 * 1024;

/// The default of [`TunnelOptions::destination_share`].
pub const DEFAULT_DESTINATION_SHARE: usize = 4;

/// The smallest byte budget a config may set: room for a stanza of the largest size servers
/// commonly allow (256 KiB).
pub const MIN_WINDOW_BYTES: usize = 256 * 1024;

impl Default for TunnelOptions {
    fn default() -> Self {
        Self {
            window: 4096,
            window_bytes: DEFAULT_WINDOW_BYTES,
            destination_share: DEFAULT_DESTINATION_SHARE,
            keepalive: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 64,
            peer_check: None,
        }
    }
}

/// A check of a core's certificate chain (leaf first) beyond the TLS handshake's, e.g. against
/// the traversal CA's CRLs: `Err` says why it is refused. The edge applies it when a core
/// connects and, after [`crate::EdgeTunnel::set_peer_check`], to every core connected.
#[derive(Clone)]
pub struct PeerCheck(
    #[allow(clippy::type_complexity)]
    pub  std::sync::Arc<
        dyn Fn(&[rustls_pki_types::CertificateDer<'_>]) -> Result<(), String> + Send + Sync,
    >,
);

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCheck")
    }
}

impl TunnelOptions {
    /// Checks the window settings of a config file (`tunnel.window`, `tunnel.window_bytes`):
    /// the error names the key.
    pub fn check_window(window: usize, window_bytes: usize) -> Result<(), String> {
        if window == 0 {
            return Err("tunnel.window: at least 1".into());
        }
        if window_bytes < MIN_WINDOW_BYTES {
            return Err(format!(
                "tunnel.window_bytes: at least {MIN_WINDOW_BYTES} (one largest stanza should fit)"
            ));
        }
        Ok(())
    }

    /// How long without any received frame before a connection is declared dead.
    pub fn dead_after(&self) -> Duration {
        self.keepalive_or_min() * 3
    }

    pub(crate) fn keepalive_or_min(&self) -> Duration {
        self.keepalive.max(Duration::from_millis(10))
    }
}

/// What a core announces in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreHello {
    /// The core's identity; must equal the first DNS name (or CN) of its client certificate.
    pub core_id: String,
    /// XMPP domains served by the core.
    pub domains: Vec<String>,
    /// Chat (MUC) node aliases served by the core.
    pub chat_node_aliases: Vec<String>,
    /// The core's software version.
    pub version: String,
    /// The tunnel protocol revision: on the edge, the session's (negotiated); in a core's
    /// config, the one its hello advertises ([`crate::protocol::PROTOCOL`]; 0 says nothing,
    /// as a core from before revisions did).
    pub protocol: u32,
}

/// Counters for one peer (one core on the edge; the edge on a core).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// A session with the peer is currently established.
    pub connected: bool,
    /// Stanzas queued towards the peer and not yet acknowledged.
    pub unacked: usize,
    /// Their bytes, as the window's byte budget counts them.
    pub unacked_bytes: usize,
    /// Stanzas accepted by `send`.
    pub queued: u64,
    /// Stanza frames written to the wire, including replays.
    pub sent: u64,
    /// Stanza frames written again after a reconnect.
    pub replayed: u64,
    /// Stanzas acknowledged by the peer.
    pub acked: u64,
    /// Stanzas received and delivered (after duplicate removal).
    pub received: u64,
    /// Received stanzas dropped as duplicates.
    pub duplicates: u64,
    /// Unacknowledged stanzas taken back out of the window (`take_unacked`)
    /// to be sent through another peer.
    pub taken_back: u64,
    /// Sessions established after the first one.
    pub reconnects: u64,
}

/// Statistics of a tunnel, keyed by peer: core_id on the edge, the edge's
/// name (`CoreTunnelConfig::edge_name`) on a core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Per-peer counters.
    pub links: BTreeMap<String, LinkStats>,
}

impl TunnelStats {
    /// Counters of one peer, if known.
    pub fn link(&self, peer: &str) -> Option<&LinkStats> {
        self.links.get(peer)
    }
}

/// Connection state of a [`CoreTunnel`](crate::CoreTunnel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelState {
    /// Not connected; dialling or waiting to redial.
    Connecting {
        /// Why the previous attempt or session ended, if any.
        last_error: Option<String>,
        /// Connection attempts since the last established session.
        attempts: u32,
    },
    /// A session with the edge is established.
    Connected {
        /// When the session was established.
        since: SystemTime,
    },
    /// `shutdown` was called (or the stanza receiver was dropped).
    Stopped,
}
