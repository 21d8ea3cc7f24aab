//! Per-peer state that outlives connections, and the session driver that runs
//! one established connection (shared by the edge and core sides).
//!
//! A session consists of two tasks:
//! * the *inbound* task reads frames from the gRPC stream, delivers stanzas
//!   through the duplicate filter into a bounded channel (waiting when it is
//!   full, which stops reading = backpressure), applies acks to the replay
//!   window and answers keepalives;
//! * the *outbound* task writes stanzas from the replay window, cumulative acks
//!   and keepalives into the bounded channel that feeds the gRPC stream.
//!
//! Whichever task ends first ends the session; the other is cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use causeway_api::traversal::{frame, Ack, Drain, Frame, Hello, Keepalive, SeqRange, StanzaFrame};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::types::{LinkStats, TunnelStanza};
use crate::window::{AckInfo, PeerPosition, RecvState, SendState};
use crate::TunnelError;

/// An acknowledgement at least every this many settled stanzas.
pub(crate) const ACK_EVERY: u64 = 32;
/// ... or this long after the first unacknowledged one settled.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(20);
/// Largest stanza accepted by `send` (payload plus both domain names).
pub const MAX_STANZA_BYTES: usize = 8 * 1024 * 1024;
/// gRPC decoding limit: the largest stanza plus framing slack.
pub(crate) const MAX_FRAME_BYTES: usize = MAX_STANZA_BYTES + 64 * 1024;
/// Capacity of the channel feeding the gRPC stream.
pub(crate) const OUTBOUND_BUFFER: usize = 64;

/// Locks a std mutex, ignoring poisoning (the protected data stays consistent
/// because no code path panics while holding these locks).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random non-zero instance id for this process / tunnel object.
pub(crate) fn random_instance() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    queued: AtomicU64,
    sent: AtomicU64,
    replayed: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    taken_back: AtomicU64,
    sessions: AtomicU64,
    /// Highest sequence number ever written (to tell replays apart).
    highest_sent: AtomicU64,
}

/// Everything about one peer that must survive reconnects.
pub(crate) struct Link {
    window: Mutex<SendState<TunnelStanza>>,
    /// Free window slots; `send` takes one permit per stanza, acks return them.
    room: Semaphore,
    /// Free window bytes; `send` takes what the window charges, acks return them.
    room_bytes: Semaphore,
    /// Woken (notify_waiters) whenever a stanza is pushed.
    pushed: Notify,
    recv: Mutex<RecvState>,
    counters: Counters,
    /// Bumped whenever stanzas leave the window (acknowledged or taken back), for [`Receipt`]s.
    settled: watch::Sender<u64>,
    /// Receiving side: bumped whenever a received stanza settles (a [`Settle`] dropped), for
    /// the writer's acknowledgements.
    recv_settled: watch::Sender<u64>,
    /// What each destination domain holds of the window, so that one destination whose
    /// stanzas stay unsettled (its server is slow or stalled) leaves room for the others.
    shares: Mutex<Shares>,
    /// Woken whenever a destination's share shrinks.
    share_freed: Notify,
    /// The protocol revision of the current (or last) session (crates/tunnel/src/protocol.rs).
    protocol: AtomicU32,
    /// Non-zero while this side drains: the seconds within which it ends the session, told to
    /// the peer in a `Drain` frame (sessions at revision 2 or later).
    draining: watch::Sender<u32>,
    /// The peer said it drains; reset by its next hello.
    peer_draining: AtomicBool,
}

/// Window room held per destination domain, bounded by a fraction of the window.
struct Shares {
    /// destination -> (items, bytes) in the window.
    held: HashMap<String, (usize, usize)>,
    max_items: usize,
    max_bytes: usize,
}

impl Shares {
    /// Each destination may hold 1/`share` of `max_items` and `max_bytes`.
    fn new(max_items: usize, max_bytes: usize, share: usize) -> Self {
        let share = share.max(1);
        Self {
            held: HashMap::new(),
            max_items: (max_items / share).max(1),
            max_bytes: (max_bytes / share).max(1),
        }
    }

    /// Takes room for one item of `charge` bytes to `to`, if `to` is under its share (or
    /// `always`: the peer is away, every destination is waiting alike and the window keeps
    /// what fits). An empty share always takes one item, so any item fits eventually.
    fn take(&mut self, to: &str, charge: usize, always: bool) -> bool {
        let held = self.held.get(to).copied().unwrap_or((0, 0));
        let under = held.0 == 0
            || (held.0 < self.max_items && held.1 + charge.min(self.max_bytes) <= self.max_bytes);
        if !(always || under) {
            return false;
        }
        // The key is allocated only for a destination with nothing in the window yet.
        match self.held.get_mut(to) {
            Some(entry) => {
                entry.0 += 1;
                entry.1 += charge;
            }
            None => {
                self.held.insert(to.to_owned(), (1, charge));
            }
        }
        true
    }

    fn give_back(&mut self, to: &str, charge: usize) {
        if let Some(entry) = self.held.get_mut(to) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(charge);
            if entry.0 == 0 {
                self.held.remove(to);
            }
        }
    }
}

/// A destination share taken for one `send`; given back if the send does not complete.
struct ShareGuard<'a> {
    link: &'a Link,
    to: String,
    charge: usize,
    kept: bool,
}

impl Drop for ShareGuard<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.link
                .give_back_shares([(self.to.as_str(), self.charge)]);
        }
    }
}

/// The receiver's hold on one delivered stanza: the peer keeps it in its window (and in its
/// destination's share of the window) until this is dropped. Drop it once the stanza is safe
/// on its way (queued for its destination, or answered with an error): a destination that
/// does not take stanzas then holds back its own sender, not the whole tunnel.
pub struct Settle {
    link: Arc<Link>,
    /// The peer instance the stanza came from: a restarted peer numbers afresh.
    instance: u64,
    seq: u64,
}

impl Drop for Settle {
    fn drop(&mut self) {
        let settled = {
            let mut r = lock(&self.link.recv);
            r.instance() == self.instance && r.settle(self.seq)
        };
        if settled {
            self.link.recv_settled.send_modify(|n| *n += 1);
        }
    }
}

/// A stanza from the peer, with the hold that settles it (see [`Settle`]).
#[derive(Debug)]
pub struct Delivered {
    /// The stanza.
    pub stanza: TunnelStanza,
    /// Drop once the stanza is safe on its way.
    pub settle: Settle,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("instance", &self.instance)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Says when one queued stanza has left the sender's hands: acknowledged by the peer (it is
/// done with it), or taken back with [`Link::take_unacked`] to go another way.
pub struct Receipt {
    link: Arc<Link>,
    changes: watch::Receiver<u64>,
    seq: u64,
}

impl Receipt {
    /// Resolves once the stanza is acknowledged or taken back; never if the tunnel is gone.
    pub async fn settled(mut self) {
        loop {
            if lock(&self.link.window).is_settled(self.seq) {
                return;
            }
            if self.changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Link {
    /// A link whose window holds at most `items` stanzas and `bytes` bytes, of which one
    /// destination holds at most 1/`share` while the peer is connected.
    pub(crate) fn new(items: usize, bytes: usize, share: usize) -> Self {
        let window = SendState::new(items, bytes);
        let (max_items, max_bytes) = window.capacity();
        Self {
            window: Mutex::new(window),
            room: Semaphore::new(max_items),
            room_bytes: Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS)),
            pushed: Notify::new(),
            recv: Mutex::new(RecvState::new()),
            counters: Counters::default(),
            settled: watch::Sender::new(0),
            recv_settled: watch::Sender::new(0),
            shares: Mutex::new(Shares::new(max_items, max_bytes, share)),
            share_freed: Notify::new(),
            protocol: AtomicU32::new(1),
            draining: watch::Sender::new(0),
            peer_draining: AtomicBool::new(false),
        }
    }

    /// Start draining: tell the peer (now, and at the start of any later session) that this
    /// side ends its sessions within `within_secs`.
    pub(crate) fn drain(&self, within_secs: u32) {
        self.draining.send_replace(within_secs.max(1));
    }

    /// The peer said it drains (its last session did, and it has not said hello since).
    pub(crate) fn peer_draining(&self) -> bool {
        self.peer_draining.load(Ordering::Relaxed)
    }

    /// The protocol revision of the current (or last) session.
    pub(crate) fn protocol(&self) -> u32 {
        self.protocol.load(Ordering::Relaxed)
    }

    /// The size a stanza counts for in the window.
    fn size(stanza: &TunnelStanza) -> usize {
        stanza.payload.len() + stanza.from_domain.len() + stanza.to_domain.len()
    }

    /// Waits until `to` is under its share of the window (not while the peer is away: then
    /// every destination waits alike), and takes room for one item of `charge` bytes.
    /// Cancel-safe: the guard gives the room back unless kept.
    async fn take_share(&self, to: &str, charge: usize) -> Result<ShareGuard<'_>, TunnelError> {
        loop {
            let freed = self.share_freed.notified();
            tokio::pin!(freed);
            // Registered before the attempt, so room freed in between is not missed.
            freed.as_mut().enable();
            if self.room.is_closed() {
                return Err(TunnelError::Closed);
            }
            if lock(&self.shares).take(to, charge, !self.is_connected()) {
                return Ok(ShareGuard {
                    link: self,
                    to: to.to_owned(),
                    charge,
                    kept: false,
                });
            }
            freed.await;
        }
    }

    fn give_back_shares<'s>(&self, items: impl IntoIterator<Item = (&'s str, usize)>) {
        let mut shares = lock(&self.shares);
        for (to, charge) in items {
            shares.give_back(to, charge);
        }
        drop(shares);
        self.share_freed.notify_waiters();
    }

    /// Queues a stanza, waiting for window room (a slot and its bytes). Cancel-safe: if the
    /// future is dropped before it resolves, nothing was queued.
    pub(crate) async fn send(
        self: &Arc<Self>,
        stanza: TunnelStanza,
    ) -> Result<Receipt, TunnelError> {
        let size = Self::size(&stanza);
        if size > MAX_STANZA_BYTES {
            // Never queue what the peer would refuse to decode: it would break
            // every session on replay.
            return Err(TunnelError::TooLarge {
                size,
                max: MAX_STANZA_BYTES,
            });
        }
        let charge = lock(&self.window).charge(size);
        let mut share = self.take_share(&stanza.to_domain, charge).await?;
        let slot = self.room.acquire().await.map_err(|_| TunnelError::Closed)?;
        let bytes = self
            .room_bytes
            .acquire_many(u32::try_from(charge).unwrap_or(u32::MAX))
            .await
            .map_err(|_| TunnelError::Closed)?;
        let pushed = lock(&self.window).push(stanza, size);
        match pushed {
            Ok(seq) => {
                slot.forget();
                bytes.forget();
                share.kept = true;
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                self.pushed.notify_waiters();
                Ok(Receipt {
                    link: self.clone(),
                    changes: self.settled.subscribe(),
                    seq,
                })
            }
            // Permits and window room are kept equal, so this means the
            // window was torn down concurrently.
            Err(_) => Err(TunnelError::Closed),
        }
    }

    /// Empties the replay window and returns its stanzas in order, freeing
    /// their room as an ack would (see [`SendState::take_all`]).
    pub(crate) fn take_unacked(&self) -> Vec<TunnelStanza> {
        let taken: Vec<(TunnelStanza, usize)> = {
            let mut w = lock(&self.window);
            let items = w.take_all();
            items
                .into_iter()
                .map(|st| {
                    let charge = w.charge(Self::size(&st));
                    (st, charge)
                })
                .collect()
        };
        self.counters
            .taken_back
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        self.release(&taken);
        taken.into_iter().map(|(st, _)| st).collect()
    }

    /// Makes pending and future `send` calls fail with `Closed`.
    pub(crate) fn close(&self) {
        self.room.close();
        self.room_bytes.close();
    }

    /// Gives back the room of stanzas that left the window (acknowledged or taken back), each
    /// with the bytes it was charged: its slot, its bytes and its destination's share.
    fn release(&self, freed: &[(TunnelStanza, usize)]) {
        if freed.is_empty() {
            return;
        }
        self.give_back_shares(freed.iter().map(|(st, c)| (st.to_domain.as_str(), *c)));
        self.room.add_permits(freed.len());
        self.room_bytes
            .add_permits(freed.iter().map(|(_, c)| c).sum());
        self.settled.send_modify(|v| *v += 1);
    }

    fn apply_ack(&self, ack: &AckInfo) {
        let mut freed = Vec::new();
        lock(&self.window).on_ack_with(ack, |st, charge| freed.push((st, charge)));
        self.counters
            .acked
            .fetch_add(freed.len() as u64, Ordering::Relaxed);
        self.release(&freed);
    }

    /// Applies the peer's hello: resets the receiving side if the peer restarted, releases
    /// what the peer says it settled (if it refers to our instance) and sets where writing
    /// starts.
    /// `protocol` is the session's revision, negotiated from the hello.
    pub(crate) fn resume_from(&self, peer: &Hello, our_instance: u64, protocol: u32) {
        self.protocol.store(protocol, Ordering::Relaxed);
        self.peer_draining.store(false, Ordering::Relaxed);
        lock(&self.recv).on_peer_instance(peer.instance);
        let position = PeerPosition {
            instance: peer.instance,
            peer_instance: peer.peer_instance,
            last_received: peer.last_received,
            settled: peer.settled_through.map(|through| AckInfo {
                through,
                ranges: peer.settled.iter().map(|r| (r.first, r.last)).collect(),
            }),
        };
        let mut freed = Vec::new();
        lock(&self.window).resume_with(&position, our_instance, |st, c| freed.push((st, c)));
        self.counters
            .acked
            .fetch_add(freed.len() as u64, Ordering::Relaxed);
        self.release(&freed);
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.counters.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.counters.connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> LinkStats {
        let c = &self.counters;
        let (unacked, unacked_bytes) = {
            let w = lock(&self.window);
            (w.len(), w.bytes())
        };
        LinkStats {
            connected: c.connected.load(Ordering::Relaxed),
            unacked,
            unacked_bytes,
            queued: c.queued.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            taken_back: c.taken_back.load(Ordering::Relaxed),
            reconnects: c.sessions.load(Ordering::Relaxed).saturating_sub(1),
        }
    }
}

fn ranges(list: Vec<(u64, u64)>) -> Vec<SeqRange> {
    list.into_iter()
        .map(|(first, last)| SeqRange { first, last })
        .collect()
}

fn ack_frame(ack: AckInfo) -> Frame {
    Frame {
        kind: Some(frame::Kind::Ack(Ack {
            seq: ack.through,
            ranges: ranges(ack.ranges),
        })),
    }
}

/// Builds a hello frame: who we are, and what we received and settled from the peer.
pub(crate) fn hello_frame(
    link: &Link,
    instance: u64,
    core_id: String,
    version: String,
    domains: Vec<String>,
    chat_node_aliases: Vec<String>,
    protocol: u32,
) -> Frame {
    let (peer_instance, last_received, settled) = lock(&link.recv).hello_position();
    Frame {
        kind: Some(frame::Kind::Hello(Hello {
            core_id,
            version,
            domains,
            chat_node_aliases,
            instance,
            last_received,
            peer_instance,
            settled_through: Some(settled.through),
            settled: ranges(settled.ranges),
            protocol,
        })),
    }
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The tunnel (or this session) was cancelled locally.
    Cancelled,
    /// The peer ended its stream cleanly.
    PeerClosed,
    /// Transport or protocol failure.
    Failed(TunnelError),
    /// The local consumer of delivered stanzas went away.
    DeliveryClosed,
}

impl SessionEnd {
    pub(crate) fn describe(&self) -> String {
        match self {
            SessionEnd::Cancelled => "session cancelled".to_owned(),
            SessionEnd::PeerClosed => "peer closed the stream".to_owned(),
            SessionEnd::Failed(e) => e.to_string(),
            SessionEnd::DeliveryClosed => "stanza receiver dropped".to_owned(),
        }
    }
}

/// Maps a received stanza, and the hold that settles it when dropped, to the item type of
/// the delivery channel.
pub(crate) type Wrap<T> = Arc<dyn Fn(TunnelStanza, Settle) -> T + Send + Sync>;

/// Everything one established session needs.
pub(crate) struct Session<T> {
    pub link: Arc<Link>,
    pub inbound: tonic::Streaming<Frame>,
    pub out_tx: mpsc::Sender<Frame>,
    pub deliver: mpsc::Sender<T>,
    pub wrap: Wrap<T>,
    pub keepalive: Duration,
    pub dead_after: Duration,
    pub cancel: CancellationToken,
}

impl<T: Send + 'static> Session<T> {
    /// Runs the session until either direction ends or it is cancelled.
    pub(crate) async fn run(self) -> SessionEnd {
        let Session {
            link,
            inbound,
            out_tx,
            deliver,
            wrap,
            keepalive,
            dead_after,
            cancel,
        } = self;
        let cancel = cancel.child_token();
        // Counts stanzas settled (ever, on this link): the writer acknowledges them.
        let settled_rx = link.recv_settled.subscribe();
        let acked_count = *settled_rx.borrow();
        let ack_now = Arc::new(Notify::new());

        let mut rx_task = tokio::spawn(
            Inbound {
                link: link.clone(),
                inbound,
                deliver,
                wrap,
                ack_now: ack_now.clone(),
                dead_after,
                cancel: cancel.clone(),
            }
            .run(),
        );
        let mut tx_task = tokio::spawn(
            Outbound {
                link,
                out_tx,
                acked_count,
                settled_rx,
                ack_now,
                keepalive,
                cancel: cancel.clone(),
            }
            .run(),
        );
        let (first, other) = tokio::select! {
            r = &mut rx_task => (r, tx_task),
            r = &mut tx_task => (r, rx_task),
        };
        cancel.cancel();
        let second = other.await;
        let first = first.unwrap_or_else(|e| SessionEnd::Failed(join_error(e)));
        // Report the more informative reason: the second task usually just
        // saw the cancellation.
        match (first, second) {
            (SessionEnd::Cancelled, Ok(second)) => second,
            (SessionEnd::Cancelled, Err(e)) => SessionEnd::Failed(join_error(e)),
            (first, _) => first,
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> TunnelError {
    TunnelError::Protocol(format!("session task failed: {e}"))
}

/// Reads the peer's frames.
struct Inbound<T> {
    link: Arc<Link>,
    inbound: tonic::Streaming<Frame>,
    deliver: mpsc::Sender<T>,
    wrap: Wrap<T>,
    ack_now: Arc<Notify>,
    dead_after: Duration,
    cancel: CancellationToken,
}

impl<T: Send + 'static> Inbound<T> {
    async fn run(mut self) -> SessionEnd {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                r = tokio::time::timeout(self.dead_after, self.inbound.message()) => r,
            };
            let frame = match next {
                Err(_) => return SessionEnd::Failed(TunnelError::Timeout(self.dead_after)),
                Ok(Err(status)) => {
                    return SessionEnd::Failed(TunnelError::Transport(status_text(&status)))
                }
                Ok(Ok(None)) => return SessionEnd::PeerClosed,
                Ok(Ok(Some(frame))) => frame,
            };
            match frame.kind {
                Some(frame::Kind::Stanza(s)) => {
                    if let Err(end) = self.deliver_stanza(s).await {
                        return end;
                    }
                }
                Some(frame::Kind::Ack(a)) => self.link.apply_ack(&AckInfo {
                    through: a.seq,
                    ranges: a.ranges.iter().map(|r| (r.first, r.last)).collect(),
                }),
                Some(frame::Kind::Keepalive(_)) => self.ack_now.notify_one(),
                Some(frame::Kind::Drain(d)) => {
                    tracing::info!(
                        within_secs = d.within_secs,
                        "the peer drains: no new stanzas go to it"
                    );
                    self.link.peer_draining.store(true, Ordering::Relaxed);
                    self.link.pushed.notify_waiters();
                }
                Some(frame::Kind::Hello(_)) => {
                    return SessionEnd::Failed(TunnelError::Protocol(
                        "unexpected hello inside a session".to_owned(),
                    ))
                }
                // A frame kind from a newer protocol revision: ignore.
                None => {}
            }
        }
    }

    async fn deliver_stanza(&mut self, s: StanzaFrame) -> Result<(), SessionEnd> {
        // Reserve the delivery slot first: waiting here is the backpressure
        // point, and it is cancel-safe. Filtering and handing over then happen
        // without a wait, so a stanza counted as received is really delivered.
        // It settles when the consumer drops its `Settle`.
        let permit = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(SessionEnd::Cancelled),
            p = self.deliver.reserve() => p.map_err(|_| SessionEnd::DeliveryClosed)?,
        };
        let instance = {
            let mut r = lock(&self.link.recv);
            r.accept(s.seq).then(|| r.instance())
        };
        let c = &self.link.counters;
        let Some(instance) = instance else {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        c.received.fetch_add(1, Ordering::Relaxed);
        let settle = Settle {
            link: self.link.clone(),
            instance,
            seq: s.seq,
        };
        permit.send((self.wrap)(
            TunnelStanza {
                from_domain: s.from_domain,
                to_domain: s.to_domain,
                payload: s.payload,
            },
            settle,
        ));
        Ok(())
    }
}

/// Writes stanzas, acks and keepalives.
struct Outbound {
    link: Arc<Link>,
    out_tx: mpsc::Sender<Frame>,
    /// Stanzas settled on this link as of the last ack written.
    acked_count: u64,
    settled_rx: watch::Receiver<u64>,
    ack_now: Arc<Notify>,
    keepalive: Duration,
    cancel: CancellationToken,
}

impl Outbound {
    async fn run(mut self) -> SessionEnd {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.keepalive, self.keepalive);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ack_deadline: Option<Instant> = None;
        let link = self.link.clone();
        // Our drain is told once per session, if the session's revision knows the frame.
        let mut drain_rx = link.draining.subscribe();
        if *drain_rx.borrow() != 0 {
            drain_rx.mark_changed();
        }
        let tells_drain = link.protocol() >= crate::protocol::DRAIN;
        // A second handle so a reserved slot does not borrow `self`.
        let out_tx = self.out_tx.clone();

        loop {
            // Register for push notifications before looking at the window so
            // a push in between is not missed.
            let pushed = link.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let next = lock(&link.window)
                .peek_next()
                .map(|(seq, st)| (seq, st.clone()));

            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                _ = self.ack_now.notified() => self.send_ack(&mut ack_deadline, true).await,
                changed = self.settled_rx.changed() => {
                    if changed.is_err() {
                        // The inbound task is gone; the session is ending.
                        return SessionEnd::Cancelled;
                    }
                    let settled = *self.settled_rx.borrow_and_update();
                    if settled.saturating_sub(self.acked_count) >= ACK_EVERY {
                        self.send_ack(&mut ack_deadline, false).await
                    } else {
                        if settled > self.acked_count && ack_deadline.is_none() {
                            ack_deadline = Some(Instant::now() + ACK_DELAY);
                        }
                        Ok(())
                    }
                }
                _ = sleep_until_opt(ack_deadline) => self.send_ack(&mut ack_deadline, false).await,
                Ok(()) = drain_rx.changed(), if tells_drain => {
                    let within_secs = *drain_rx.borrow_and_update();
                    if within_secs == 0 {
                        Ok(())
                    } else {
                        self.write(Frame { kind: Some(frame::Kind::Drain(Drain { within_secs })) }).await
                    }
                }
                _ = ticker.tick() => {
                    let f = Frame { kind: Some(frame::Kind::Keepalive(Keepalive { sent_unix_ms: unix_ms() })) };
                    self.write(f).await
                }
                permit = out_tx.reserve(), if next.is_some() => {
                    match (permit, next) {
                        (Ok(permit), Some((seq, stanza))) => {
                            permit.send(Frame {
                                kind: Some(frame::Kind::Stanza(StanzaFrame {
                                    seq,
                                    from_domain: stanza.from_domain,
                                    to_domain: stanza.to_domain,
                                    payload: stanza.payload,
                                })),
                            });
                            lock(&link.window).sent(seq);
                            let c = &link.counters;
                            c.sent.fetch_add(1, Ordering::Relaxed);
                            if c.highest_sent.fetch_max(seq, Ordering::Relaxed) >= seq {
                                c.replayed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        }
                        _ => Err(SessionEnd::PeerClosed),
                    }
                }
                _ = &mut pushed, if next.is_none() => Ok(()),
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Writes an acknowledgement of what settled since the last one. With `force`, writes one
    /// even if nothing did (keepalive answer: it repeats the floor).
    async fn send_ack(
        &mut self,
        deadline: &mut Option<Instant>,
        force: bool,
    ) -> Result<(), SessionEnd> {
        *deadline = None;
        self.acked_count = *self.settled_rx.borrow_and_update();
        let ack = {
            let mut r = lock(&self.link.recv);
            if force {
                Some(r.current_ack())
            } else {
                r.take_ack()
            }
        };
        match ack {
            Some(ack) => self.write(ack_frame(ack)).await,
            None => Ok(()),
        }
    }

    async fn write(&self, f: Frame) -> Result<(), SessionEnd> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(SessionEnd::Cancelled),
            r = self.out_tx.send(f) => r.map_err(|_| SessionEnd::PeerClosed),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Human-readable text of a gRPC status, including its code.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut src = status.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model of one direction of the tunnel through the production [`Link`]: the sender
    /// queues with [`Link::send`] (polled once: no room, nothing queued), writes as the
    /// outbound task does, takes acknowledgements with [`Link::apply_ack`], and every
    /// (re)connection exchanges real hellos ([`hello_frame`]) applied with
    /// [`Link::resume_from`] on both sides. Items go to one of four destinations;
    /// destination 0 is a partner that stalls (it settles rarely); the connection is cut at
    /// random points (in-flight frames lost, or delivered late), hellos sometimes
    /// under-report what was received, and the receiver sometimes restarts (a new process:
    /// a new instance, losing what it had not settled). Whatever happens: every item is
    /// settled exactly once, in each destination's order, and once the sender has heard
    /// everything, its window is empty.
    fn simulate(seed: u64, total: u64, capacity: usize) -> Stats {
        use futures::FutureExt;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::collections::VecDeque;

        let mut rng = StdRng::seed_from_u64(seed);
        let sender_instance = 1000 + seed;
        let sender = Arc::new(Link::new(capacity, 64 * capacity, 4));
        let mut receiver = Link::new(1, 1, 1);
        let mut receiver_instance = 1u64;
        let hello = |link: &Link, instance: u64| match hello_frame(
            link,
            instance,
            String::new(),
            String::new(),
            Vec::new(),
            Vec::new(),
            2,
        )
        .kind
        {
            Some(frame::Kind::Hello(h)) => h,
            other => panic!("not a hello: {other:?}"),
        };
        // What the receiver holds, not yet settled, per destination: (seq, item).
        let mut holding: Vec<VecDeque<(u64, u64)>> = vec![VecDeque::new(); 4];
        let mut settled_items: Vec<u64> = Vec::new();
        let mut next_item = 1u64;
        let mut to_rx: VecDeque<(u64, u64)> = VecDeque::new();
        let mut to_tx: VecDeque<AckInfo> = VecDeque::new();
        let mut stats = Stats::default();
        let mut connected = false;
        let mut steps = 0u32;
        let dest = |item: u64| (item % 4) as usize;
        let item_of = |st: &TunnelStanza| -> u64 {
            std::str::from_utf8(&st.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("an item number")
        };

        while (settled_items.len() as u64) < total {
            steps += 1;
            assert!(steps < 2_000_000, "seed {seed}: does not converge");
            if !connected {
                receiver.resume_from(&hello(&sender, sender_instance), receiver_instance, 2);
                let mut theirs = hello(&receiver, receiver_instance);
                if rng.random_bool(0.2) {
                    // An under-reported position: the sender writes again what was received
                    // (the duplicate filter drops it). What was settled is always exact: the
                    // hello is the only report of it.
                    theirs.last_received = rng.random_range(0..=theirs.last_received);
                }
                sender.resume_from(&theirs, sender_instance, 2);
                connected = true;
                continue;
            }
            match rng.random_range(0..100u32) {
                0..=24 => {
                    if next_item <= total {
                        let stanza = TunnelStanza {
                            from_domain: "a".into(),
                            to_domain: "b".repeat(next_item as usize % 64),
                            payload: bytes::Bytes::from(next_item.to_string()),
                        };
                        if let Some(queued) = sender.send(stanza).now_or_never() {
                            queued.expect("queued");
                            next_item += 1;
                        }
                    }
                }
                25..=44 => {
                    let mut w = lock(&sender.window);
                    if let Some((seq, st)) = w.peek_next().map(|(s, st)| (s, item_of(st))) {
                        to_rx.push_back((seq, st));
                        w.sent(seq);
                    }
                }
                45..=64 => {
                    if let Some((seq, item)) = to_rx.pop_front() {
                        if lock(&receiver.recv).accept(seq) {
                            holding[dest(item)].push_back((seq, item));
                        } else {
                            stats.duplicates += 1;
                        }
                    }
                }
                // A destination writes on its oldest stanza: the stalled one rarely.
                65..=79 => {
                    let d = rng.random_range(0..4usize);
                    if d == 0 && !rng.random_bool(0.05) {
                        continue;
                    }
                    if let Some((seq, item)) = holding[d].pop_front() {
                        let mut r = lock(&receiver.recv);
                        assert!(r.settle(seq), "seed {seed}: {seq} settles once");
                        settled_items.push(item);
                        if rng.random_bool(0.5) {
                            if let Some(a) = r.take_ack() {
                                to_tx.push_back(a);
                            }
                        }
                    }
                }
                80..=92 => {
                    if let Some(a) = to_tx.pop_front() {
                        sender.apply_ack(&a);
                    }
                }
                93..=98 => {
                    if rng.random_bool(0.5) {
                        to_rx.clear();
                    }
                    to_tx.clear();
                    connected = false;
                    stats.cuts += 1;
                }
                _ => {
                    // The receiver restarts (a planned restart: its acknowledgements reach
                    // the sender first; after a crash, delivery is at least once): what it held
                    // unsettled is lost, and the sender replays it to the new instance.
                    if rng.random_bool(0.1) {
                        for h in &mut holding {
                            h.clear();
                        }
                        while let Some(a) = to_tx.pop_front() {
                            sender.apply_ack(&a);
                        }
                        if let Some(a) = lock(&receiver.recv).take_ack() {
                            sender.apply_ack(&a);
                        }
                        to_rx.clear();
                        receiver = Link::new(1, 1, 1);
                        receiver_instance += 1;
                        connected = false;
                        stats.restarts += 1;
                    }
                }
            }
            stats.max_held_behind_stall = stats.max_held_behind_stall.max(holding[0].len());
        }
        // Every item settled exactly once, in order per destination.
        let mut sorted = settled_items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=total).collect::<Vec<_>>(), "seed {seed}");
        for d in 0..4 {
            let mine: Vec<u64> = settled_items
                .iter()
                .copied()
                .filter(|&i| dest(i) == d)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: order of {d}"
            );
        }
        // Let the last acknowledgements arrive: the window is empty, its room all given back.
        while let Some(a) = to_tx.pop_front() {
            sender.apply_ack(&a);
        }
        if let Some(a) = lock(&receiver.recv).take_ack() {
            sender.apply_ack(&a);
        }
        let stats_now = sender.stats();
        assert_eq!(stats_now.unacked, 0, "seed {seed}: left in the window");
        assert_eq!(stats_now.unacked_bytes, 0);
        assert_eq!(
            sender.room.available_permits(),
            capacity,
            "seed {seed}: slots"
        );
        stats
    }

    #[derive(Default)]
    struct Stats {
        cuts: u32,
        restarts: u32,
        duplicates: u32,
        max_held_behind_stall: usize,
    }

    #[test]
    fn property_every_item_settles_exactly_once_across_cuts_restarts_and_a_stall() {
        let (mut cuts, mut restarts, mut dups, mut stalled) = (0, 0, 0, 0);
        for seed in 0..150u64 {
            let capacity = 2 + (seed as usize % 13);
            let s = simulate(seed, 300, capacity);
            cuts += s.cuts;
            restarts += s.restarts;
            dups += s.duplicates;
            stalled = stalled.max(s.max_held_behind_stall);
        }
        assert!(cuts > 1000, "the simulation must cut ({cuts})");
        assert!(restarts > 20, "the receiver must restart ({restarts})");
        assert!(dups > 100, "duplicates must be exercised ({dups})");
        assert!(stalled > 1, "the stall must hold stanzas back ({stalled})");
    }

    fn stanza(body: &'static str) -> TunnelStanza {
        TunnelStanza {
            from_domain: "partner.test".into(),
            to_domain: "example.com".into(),
            payload: bytes::Bytes::from_static(body.as_bytes()),
        }
    }

    async fn settles(r: Receipt) -> bool {
        tokio::time::timeout(Duration::from_millis(50), r.settled())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_receipt_settles_when_its_stanza_is_acknowledged_not_before() {
        let link = Arc::new(Link::new(8, 1 << 20, 1));
        let first = link.send(stanza("1")).await.expect("queued");
        let second = link.send(stanza("2")).await.expect("queued");
        link.apply_ack(&AckInfo {
            through: 1,
            ranges: Vec::new(),
        });
        assert!(settles(first).await, "acknowledged");
        assert!(!settles(second).await, "not acknowledged yet");
    }

    #[tokio::test]
    async fn a_receipt_settles_when_its_stanza_is_taken_back() {
        let link = Arc::new(Link::new(8, 1 << 20, 1));
        let r = link.send(stanza("1")).await.expect("queued");
        assert_eq!(link.take_unacked().len(), 1);
        assert!(settles(r).await, "taken back to go another way");
        // Numbering continues: a later stanza waits for its own ack.
        let later = link.send(stanza("2")).await.expect("queued");
        assert!(!settles(later).await);
    }
}
