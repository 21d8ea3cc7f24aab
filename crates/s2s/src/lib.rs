//! XMPP server-to-server sessions (RFC 6120, XEP-0220) driven by tokio.
//!
//! Both binaries speak s2s: the edge to the federated internet, core to the internal IM&P nodes.
//! The protocol is the same; what differs is which domains a side answers for, where a domain's
//! servers are, and where authenticated stanzas go. That difference is the [`Host`] trait.
//!
//! * [`S2s::serve`] accepts inbound streams: STARTTLS, dialback as receiving server (verifying
//!   keys with the peer's authoritative server through [`verify`]) and as authoritative server
//!   (answering `db:verify` for keys we issued), anti-spoofing of every stanza.
//! * [`S2s::send`] routes a stanza over an outgoing session per (from, to) domain pair, opening
//!   it on demand (resolve, connect, STARTTLS, dialback) and queueing while it opens.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use causeway_xmpp::{Limits, StanzaCondition};

mod accept;
pub mod addrfilter;
pub mod admission;
pub mod connect;
pub mod deadlines;
pub mod every;
pub mod inbound;
mod negotiate;
pub mod outbound;
pub mod queue;
mod sm;
#[cfg(test)]
mod testing;
pub mod throttle;
pub mod transport;
pub mod verify;

pub use admission::AdmissionLimits;
pub use connect::Target;
pub use deadlines::Deadlines;
pub use queue::QueueLimits;
pub use throttle::RateLimit;
pub use transport::{ConnError, TlsInfo, XmlConn};

/// The module name carried by every federation log event.
pub const LOG_MODULE: &str = "XMPPFederation";

/// A boxed future, for the object-safe [`Host`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which way a connection or stanza goes, seen from this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer opened the connection to us.
    Inbound,
    /// We opened the connection to the peer.
    Outbound,
}

impl Direction {
    /// "incoming" / "outgoing", as administrators read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "incoming",
            Direction::Outbound => "outgoing",
        }
    }
}

pub use causeway_xmpp::negotiation::{CertStatus, TlsMode};

/// A stanza that arrived on an authenticated inbound stream and passed the address checks.
#[derive(Debug, Clone)]
pub struct InboundStanza {
    /// The authenticated domain of the sender (domain part of `from`).
    pub from_domain: String,
    /// The domain part of `to`, one this side serves.
    pub to_domain: String,
    /// The stanza, serialized so it can be written verbatim into another jabber:server stream.
    pub payload: Bytes,
}

/// A stanza to send to a remote domain.
#[derive(Debug, Clone)]
pub struct OutboundStanza {
    /// The domain we send as (must be one [`Host::serves`]).
    pub from_domain: String,
    /// The remote domain.
    pub to_domain: String,
    /// The serialized stanza (jabber:server namespace, self-contained).
    pub payload: Bytes,
}

/// Resolves once a delivered stanza is safe (see [`Host::deliver_tracked`]).
pub type Handled = BoxFuture<'static, ()>;

/// What an application tells the s2s layer about itself.
///
/// Every domain the s2s layer hands a host (to [`Host::serves`], [`Host::peer_allowed`],
/// [`Host::resolve`], in [`InboundStanza`]s) is in the form of
/// [`causeway_xmpp::addr::normalize_domain`]: A-labels, lowercase, no trailing dot; peer
/// input that does not normalise never reaches the host as a domain. (A stanza given to
/// [`S2s::send`] with a domain that does not normalise comes back to [`Host::bounce`] as it
/// was given.)
pub trait Host: Send + Sync + 'static {
    /// Do we answer for `domain`: accept streams addressed to it, originate and vouch for
    /// dialback keys as it?
    fn serves(&self, domain: &str) -> bool;
    /// May we federate with `remote` in this direction? (privacy policy)
    fn peer_allowed(&self, remote: &str, direction: Direction) -> bool;
    /// Socket addresses of `domain`'s s2s service (STARTTLS), in the order to try them, each
    /// saying whether DNS named it (then [`S2sConfig::outbound_filter`] judges it).
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, String>>;
    /// Socket addresses of `domain`'s direct-TLS s2s service (XEP-0368), tried before
    /// [`Host::resolve`]'s. None by default.
    fn resolve_direct_tls<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Vec<Target>> {
        Box::pin(async { Vec::new() })
    }
    /// An authenticated, address-checked inbound stanza. Awaiting it is backpressure: the
    /// connection is not read while this is pending. An error says the stanza cannot be
    /// taken; the s2s layer answers its sender with that stanza error (RFC 6120 8.3).
    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, Result<(), StanzaCondition>>;
    /// Like [`Host::deliver`], and also says when the stanza is safe: kept somewhere that
    /// outlives this process, so losing this process would not lose it. Streams with XEP-0198
    /// stream management acknowledge a stanza to the peer only once it is safe. `None`: safe as
    /// soon as delivered (the default).
    fn deliver_tracked(
        &self,
        stanza: InboundStanza,
    ) -> BoxFuture<'_, Result<Option<Handled>, StanzaCondition>> {
        Box::pin(async move { self.deliver(stanza).await.map(|()| None) })
    }
    /// A stanza we could not send; `condition` says why. The host should answer the sender
    /// with a stanza error where RFC 6120 asks for one.
    fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) -> BoxFuture<'_, ()>;
}

/// s2s settings, parsed from config before anything binds.
#[derive(Clone)]
pub struct S2sConfig {
    /// Secret for XEP-0185 dialback keys; every instance of a tier must share it.
    pub dialback_secret: String,
    /// During a rollover, the secret used before: keys made with it (by an instance not yet
    /// switched) still verify here. New keys use `dialback_secret`.
    pub dialback_previous: Option<String>,
    /// Offered to inbound peers for STARTTLS. None: TLS is never offered.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Used for STARTTLS on outgoing connections.
    pub tls_client: Arc<rustls::ClientConfig>,
    /// When TLS is used.
    pub tls_mode: TlsMode,
    /// Trust for peer certificates (CA bundle, CRLs). None: no certificate is ever trusted,
    /// so peers authenticate with dialback only.
    pub peer_trust: Option<Arc<causeway_pki::PeerTrust>>,
    /// Refuse peers that do not present a valid certificate for their domain
    /// (Expressway's "require client certificates"); applies to outgoing sessions too.
    pub require_peer_certs: bool,
    /// Offer and use SASL EXTERNAL (XEP-0178) where certificates allow; dialback otherwise.
    pub sasl_external: bool,
    /// Offer XEP-0198 stream management on authenticated inbound streams, so a peer that
    /// supports it (Prosody) learns which stanzas were taken and resends the rest elsewhere
    /// when this process dies.
    pub stream_management: bool,
    /// Our certificate is presented when we initiate (`tls_client` carries it): we may try
    /// SASL EXTERNAL outbound.
    pub presents_client_cert: bool,
    /// Size and depth limits on received XML.
    pub limits: Limits,
    /// TCP connect timeout, per address.
    pub connect_timeout: Duration,
    /// Time allowed for connecting at all: the addresses of a domain are raced (see
    /// [`connect`]) until one connects or this passes.
    pub connect_deadline: Duration,
    /// Judges the addresses DNS names before we connect to them (see [`addrfilter`]); None:
    /// every address is used (core, whose peers are its own servers).
    pub outbound_filter: Option<addrfilter::AddrFilter>,
    /// Dialback verifications running at once, over all remote domains; more fail at once
    /// without network traffic.
    pub max_verifications: usize,
    /// Dialback verifications running at once for one remote domain.
    pub max_verifications_per_domain: usize,
    /// Close an outgoing or incoming session with no stanza for this long.
    pub idle_timeout: Duration,
    /// Send a whitespace keepalive after this long without writing.
    pub keepalive: Duration,
    /// Bounds on each outgoing pair's queue and on all of them together (see [`queue`]):
    /// beyond them a stanza is bounced with `resource-constraint`, and one queued too long
    /// with `remote-server-timeout`.
    pub queue: QueueLimits,
    /// Send an XEP-0199 ping to the peer this often on every outgoing session...
    pub ping_interval: Duration,
    /// ...and declare it dead (closing its sessions both ways) when no answer arrives within
    /// this; a write blocked this long means the same. Dead-peer detection is bounded by
    /// `ping_interval + ping_timeout` even when the peer's TCP stack still answers (a stopped
    /// process).
    pub ping_timeout: Duration,
    /// Most inbound connections at once, over every listener.
    pub max_inbound: usize,
    /// Per-phase deadlines of inbound connections (and the write-stall bound of every
    /// connection).
    pub deadlines: Deadlines,
    /// Per-source and per-domain limits on inbound connections.
    pub admission: AdmissionLimits,
    /// Largest element a peer may send before its stream authenticated anything (dialback and
    /// SASL elements are tiny; TLS handshake bytes are rustls's business).
    pub preauth_stanza_bytes: usize,
    /// Bytes per remote domain read from its authenticated inbound streams (a token bucket
    /// shared by all of them, see [`throttle`]); beyond it the streams pause reading. None:
    /// unlimited (the default; the edge sets one).
    pub inbound_rate: Option<RateLimit>,
}

impl S2sConfig {
    /// Defaults around the given secret and TLS configs.
    pub fn new(
        dialback_secret: String,
        tls_server: Option<Arc<rustls::ServerConfig>>,
        tls_client: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            dialback_secret,
            dialback_previous: None,
            tls_server,
            tls_client,
            tls_mode: TlsMode::Required,
            peer_trust: None,
            require_peer_certs: false,
            sasl_external: true,
            stream_management: true,
            presents_client_cert: false,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            connect_deadline: Duration::from_secs(20),
            outbound_filter: None,
            max_verifications: 256,
            max_verifications_per_domain: 8,
            idle_timeout: Duration::from_secs(600),
            keepalive: Duration::from_secs(60),
            queue: QueueLimits::default(),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            max_inbound: 10_000,
            deadlines: Deadlines::default(),
            admission: AdmissionLimits::default(),
            preauth_stanza_bytes: 8192,
            inbound_rate: None,
        }
    }
}

/// A snapshot of one session, for status views.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Unique within the process.
    pub id: u64,
    /// Who opened it.
    pub direction: Direction,
    /// The remote socket address.
    pub peer: SocketAddr,
    /// Authenticated (remote domain, local domain) pairs.
    pub pairs: Vec<(String, String)>,
    /// TLS version and cipher, if encrypted.
    pub tls: Option<TlsInfo>,
    /// "dialback", "SASL EXTERNAL", or "" while unauthenticated.
    pub auth: &'static str,
    /// Stanzas received on it.
    pub stanzas_in: u64,
    /// Stanzas sent on it.
    pub stanzas_out: u64,
    /// When it started.
    pub started: SystemTime,
    /// Time since the last stanza either way.
    pub idle: Duration,
}

/// Live state of one session, shared between its task and the registry.
pub(crate) struct SessionEntry {
    /// Told to close the session (its peer was found dead).
    pub(crate) closer: tokio::sync::Notify,
    pub(crate) info: Mutex<SessionInfo>,
    pub(crate) stanzas_in: AtomicU64,
    pub(crate) stanzas_out: AtomicU64,
    pub(crate) last_activity: Mutex<Instant>,
}

impl SessionEntry {
    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SessionInfo)) {
        if let Ok(mut info) = self.info.lock() {
            f(&mut info);
        }
    }
}

/// Why a stanza was refused (a label of the refusal counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its `from` is not a domain the stream (or tunnel peer) authenticated.
    Spoofed,
    /// Its `to` is not a domain served here, or the route is not allowed (unroutable).
    Unroutable,
    /// The privacy policy refuses the remote domain.
    Policy,
    /// Addressed to the raw JID of a user who federates with an email address.
    EmailTranslation,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::Spoofed,
        RefusalReason::Unroutable,
        RefusalReason::Policy,
        RefusalReason::EmailTranslation,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Spoofed => "spoofed",
            RefusalReason::Unroutable => "unroutable",
            RefusalReason::Policy => "policy",
            RefusalReason::EmailTranslation => "email_translation",
        }
    }
}

/// Counters across all sessions.
#[derive(Debug, Default)]
pub struct Counters {
    /// Stanzas accepted from peers and delivered to the host.
    pub stanzas_in: AtomicU64,
    /// Stanzas written to peers.
    pub stanzas_out: AtomicU64,
    /// Stanzas refused (spoofed, unroutable, policy).
    pub stanzas_refused: AtomicU64,
    /// Stanzas refused, by reason (indexed like [`RefusalReason::ALL`]).
    pub refused_by: [AtomicU64; 4],
    /// Stanzas bounced back to their sender.
    pub stanzas_bounced: AtomicU64,
    /// Of those, bounced because their pair's queue (or the budget of all queues) was full.
    pub bounced_queue_full: AtomicU64,
    /// Of those, bounced because they waited in their pair's queue longer than its age limit.
    pub bounced_queue_expired: AtomicU64,
    /// Stanzas held back, not bounced, until their pair's queue has room (core's backlog of
    /// stanzas from the edge); a gauge.
    pub held_for_room: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
    /// Dialback verifications that said invalid or failed.
    pub dialback_failures: AtomicU64,
    /// Dialback verifications refused because too many were running (overall or for the
    /// remote domain).
    pub verifications_refused: AtomicU64,
    /// Addresses from DNS the outbound address filter refused to connect to.
    pub addresses_refused: AtomicU64,
    /// Inbound connections refused by a limit (indexed like [`admission::Refusal::ALL`]).
    pub connections_refused: [AtomicU64; 4],
    /// Connections closed because a negotiation deadline passed (stream header or
    /// authentication; TLS handshake timeouts count as TLS failures).
    pub deadline_closes: AtomicU64,
    /// Times an authenticated inbound stream paused reading: its domain was over
    /// [`S2sConfig::inbound_rate`].
    pub inbound_throttled: AtomicU64,
    /// Microseconds inbound streams spent paused that way (summed over streams).
    pub inbound_throttled_micros: AtomicU64,
}

impl Counters {
    /// Count an inbound connection refused by a limit.
    pub fn refuse_connection(&self, why: admission::Refusal) {
        if let Some(i) = admission::Refusal::ALL.iter().position(|r| *r == why) {
            self.connections_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refused inbound connections by limit label.
    pub fn connections_refused_by_reason(&self) -> Vec<(&'static str, u64)> {
        by_label(
            admission::Refusal::ALL.map(admission::Refusal::as_str),
            &self.connections_refused,
        )
    }

    /// Count a refused stanza (in the total and under its reason).
    pub fn refuse(&self, reason: RefusalReason) {
        self.stanzas_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = RefusalReason::ALL.iter().position(|r| *r == reason) {
            self.refused_by[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refused stanzas by reason label.
    pub fn refused_by_reason(&self) -> Vec<(&'static str, u64)> {
        by_label(
            RefusalReason::ALL.map(RefusalReason::as_str),
            &self.refused_by,
        )
    }
}

/// Counters paired with their labels, for metrics.
fn by_label<const N: usize>(
    labels: [&'static str; N],
    counters: &[AtomicU64; N],
) -> Vec<(&'static str, u64)> {
    labels
        .into_iter()
        .zip(counters)
        .map(|(l, c)| (l, c.load(Ordering::Relaxed)))
        .collect()
}

/// The s2s service of one process: inbound listener and outgoing session pool.
pub struct S2s {
    /// The settings in force; replaced whole by [`S2s::reconfigure`].
    cfg: std::sync::RwLock<Arc<S2sConfig>>,
    /// Bumped by every reconfiguration: live sessions re-check themselves against it.
    pub(crate) generation: tokio::sync::watch::Sender<u64>,
    /// Set by [`S2s::drain`]: the instant by which every session should be closed.
    pub(crate) draining: tokio::sync::watch::Sender<Option<std::time::Instant>>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) sessions: Mutex<HashMap<u64, Arc<SessionEntry>>>,
    pub(crate) outgoing: Mutex<HashMap<(String, String), outbound::SessionHandle>>,
    /// Bytes queued over every outgoing pair (bounded by [`QueueLimits::total_bytes`]).
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Outstanding XEP-0199 pings by id; the inbound stream that sees the answer fires it.
    pub(crate) pings: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Dialback verifications running, overall and per remote domain.
    pub(crate) verifications: Mutex<verify::InFlight>,
    /// Unauthenticated connections per source, authenticated streams per remote domain.
    pub(crate) admission: Mutex<admission::Admission>,
    /// Inbound connection slots shared by every listener (`max_inbound`).
    pub(crate) inbound_slots: Arc<tokio::sync::Semaphore>,
    /// Byte buckets of the remote domains' inbound streams (`inbound_rate`).
    pub(crate) throttle: Mutex<throttle::Throttle>,
    next_id: AtomicU64,
    /// Counters for status and metrics.
    pub counters: Counters,
}

impl S2s {
    /// A new service; nothing runs until [`S2s::serve`] or [`S2s::send`].
    pub fn new(cfg: S2sConfig, host: Arc<dyn Host>) -> Arc<Self> {
        let admission = Mutex::new(admission::Admission::new(cfg.admission));
        let inbound_slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_inbound));
        let throttle = Mutex::new(throttle::Throttle::new(cfg.inbound_rate));
        Arc::new(Self {
            admission,
            inbound_slots,
            throttle,
            cfg: std::sync::RwLock::new(Arc::new(cfg)),
            generation: tokio::sync::watch::channel(0).0,
            draining: tokio::sync::watch::channel(None).0,
            host,
            sessions: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(HashMap::new()),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            pings: Mutex::new(HashMap::new()),
            verifications: Mutex::new(verify::InFlight::default()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        })
    }

    /// The settings in force.
    pub fn cfg(&self) -> Arc<S2sConfig> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Apply new settings (and whatever the host changed alongside, e.g. its policy): new
    /// connections use them at once; every live session re-checks its peer against them and
    /// closes with a stream error if they no longer allow it. Sessions still allowed go on.
    pub fn reconfigure(&self, cfg: S2sConfig) {
        if let Ok(mut a) = self.admission.lock() {
            a.set_limits(cfg.admission);
        }
        if let Ok(mut t) = self.throttle.lock() {
            t.set_limit(cfg.inbound_rate);
        }
        match self.cfg.write() {
            Ok(mut c) => *c = Arc::new(cfg),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(cfg),
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let entries: Vec<Arc<SessionEntry>> = match self.sessions.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<SessionInfo> = entries
            .iter()
            .filter_map(|e| {
                let mut info = e.info.lock().ok()?.clone();
                info.stanzas_in = e.stanzas_in.load(Ordering::Relaxed);
                info.stanzas_out = e.stanzas_out.load(Ordering::Relaxed);
                info.idle = e.last_activity.lock().ok()?.elapsed();
                Some(info)
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    pub(crate) fn register(&self, direction: Direction, peer: SocketAddr) -> Arc<SessionEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(SessionEntry {
            closer: tokio::sync::Notify::new(),
            info: Mutex::new(SessionInfo {
                id,
                direction,
                peer,
                pairs: Vec::new(),
                tls: None,
                auth: "",
                stanzas_in: 0,
                stanzas_out: 0,
                started: SystemTime::now(),
                idle: Duration::ZERO,
            }),
            stanzas_in: AtomicU64::new(0),
            stanzas_out: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now()),
        });
        if let Ok(mut map) = self.sessions.lock() {
            map.insert(id, entry.clone());
        }
        entry
    }

    pub(crate) fn unregister(&self, entry: &SessionEntry) {
        let id = entry.info.lock().map(|i| i.id).unwrap_or(0);
        if let Ok(mut map) = self.sessions.lock() {
            map.remove(&id);
        }
    }

    /// Close every incoming session carrying `remote` from the host at `ip` (that server was
    /// found dead). Sessions from `remote`'s other hosts (the other nodes of a cluster) stay:
    /// closing them would make live servers lose what they had in flight.
    pub(crate) fn close_inbound_from(&self, remote: &str, ip: std::net::IpAddr) {
        let Ok(map) = self.sessions.lock() else {
            return;
        };
        for entry in map.values() {
            let hit = entry.info.lock().is_ok_and(|i| {
                i.direction == Direction::Inbound
                    && i.peer.ip() == ip
                    && i.pairs.iter().any(|(r, _)| r == remote)
            });
            if hit {
                entry.closer.notify_one();
            }
        }
    }

    /// Drain (a planned stop or restart): stop accepting connections; tell every inbound
    /// stream `system-shutdown` and read what its peer still sends until it closes its stream
    /// (at most until `by`); close every outgoing session once its queue is written. Stanzas
    /// still queued for a pair keep going out (a session is opened for them if need be). Watch
    /// [`S2s::sessions`] empty out; whatever is left at `by` is the caller's to cut.
    pub fn drain(&self, by: std::time::Instant) {
        self.draining.send_if_modified(|d| {
            let first = d.is_none();
            if first {
                *d = Some(by);
            }
            first
        });
    }

    /// [`S2s::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.borrow().is_some()
    }

    /// Close every live session with the server at `peer` (the socket address we connected
    /// to, for outgoing sessions): e.g. an internal node a health check found unresponsive, so
    /// that queued and new stanzas go to a fresh session (and another server) at once instead
    /// of waiting for the ping timeout. Returns how many sessions were told to close.
    pub fn close_sessions_with(&self, peer: SocketAddr) -> usize {
        let Ok(map) = self.sessions.lock() else {
            return 0;
        };
        let mut n = 0;
        for entry in map.values() {
            if entry.info.lock().is_ok_and(|i| i.peer == peer) {
                entry.closer.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Is `remote` held back by the inbound rate limit now (its streams are not being read)?
    /// Then its answers to our pings may wait behind what we do not read.
    pub(crate) fn inbound_held_back(&self, remote: &str) -> bool {
        self.throttle
            .lock()
            .is_ok_and(|t| t.holding(remote, Instant::now()))
    }

    /// An answer to one of our pings: consume it (true) rather than deliver it.
    pub(crate) fn take_pong(&self, id: &str) -> bool {
        if !id.starts_with(PING_ID_PREFIX) {
            return false;
        }
        let waiter = self.pings.lock().ok().and_then(|mut m| m.remove(id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    pub(crate) fn new_stream_id(&self) -> String {
        use rand::Rng;
        let n: u128 = rand::rng().random();
        format!("{n:032x}")
    }
}

impl S2sConfig {
    /// The deadlines the negotiation machines run with, inbound and outbound alike.
    pub(crate) fn negotiation_deadlines(&self) -> causeway_xmpp::negotiation::Deadlines {
        causeway_xmpp::negotiation::Deadlines {
            stream_header: self.deadlines.stream_header,
            tls_handshake: self.deadlines.tls_handshake,
            authentication: self.deadlines.authentication,
            idle: self.idle_timeout,
        }
    }
}

impl S2s {
    /// Judge the chain a peer presented. `is_initiator`: the peer opened the connection (its
    /// certificate may carry serverAuth only: accepted).
    pub fn cert_status(&self, conn: &XmlConn, is_initiator: bool) -> CertStatus {
        if conn.peer_chain.is_empty() {
            return CertStatus::Absent;
        }
        let Some(trust) = self.cfg().peer_trust.clone() else {
            return CertStatus::Invalid("no trusted CAs configured".into());
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match trust.verify_chain(&conn.peer_chain, is_initiator, now) {
            Ok(()) => CertStatus::Valid,
            Err(e) => CertStatus::Invalid(format!("{e:?}")),
        }
    }

    /// RFC 6125: does the peer's leaf certificate name `domain`?
    pub fn cert_covers(conn: &XmlConn, domain: &str) -> bool {
        conn.peer_chain
            .first()
            .is_some_and(|leaf| causeway_pki::cert_matches_domain(leaf.as_ref(), domain))
    }
}

/// Ids of our XEP-0199 pings start with this.
pub(crate) const PING_ID_PREFIX: &str = "causeway-ping-";

/// The ALPN protocol of XEP-0368 direct TLS s2s.
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// Parse one serialized jabber:server stanza (as carried by [`OutboundStanza::payload`]).
pub fn parse_stanza(payload: &[u8]) -> Option<causeway_xmpp::Element> {
    let mut framer = causeway_xmpp::Framer::new(Limits {
        max_stanza_bytes: payload.len() + 1,
        ..Limits::default()
    });
    let header = causeway_xmpp::StreamHeader {
        default_ns: causeway_xmpp::ns::SERVER.into(),
        ..Default::default()
    };
    framer.push(header.to_xml().as_bytes());
    framer.push(payload);
    let mut element = None;
    while let Ok(Some(ev)) = framer.next_event() {
        if let causeway_xmpp::Event::Element(tl) = ev {
            element = Some(tl.element);
            break;
        }
    }
    element
}

/// The RFC 6120 error reply to a serialized stanza, serialized; None when none is owed (the
/// stanza is itself an error, or unparsable).
pub fn error_reply(payload: &[u8], condition: StanzaCondition) -> Option<Bytes> {
    let original = parse_stanza(payload)?;
    let reply = causeway_xmpp::error::stanza_error_reply(&original, condition, None)?;
    Some(Bytes::from(reply.to_xml(causeway_xmpp::ns::SERVER)))
}
