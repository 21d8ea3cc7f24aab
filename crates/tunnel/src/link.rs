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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use causeway_api::traversal::{frame, Ack, Frame, Hello, Keepalive, StanzaFrame};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::types::{LinkStats, TunnelStanza};
use crate::window::{Dedup, ReplayWindow};
use crate::TunnelError;

/// Cumulative ack at least every this many deliveries.
pub(crate) const ACK_EVERY: u64 = 32;
/// ... or this long after the first unacknowledged delivery.
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
    window: Mutex<ReplayWindow<TunnelStanza>>,
    /// Free window slots; `send` takes one permit per stanza, acks return them.
    room: Semaphore,
    /// Woken (notify_waiters) whenever a stanza is pushed.
    pushed: Notify,
    dedup: Mutex<Dedup>,
    counters: Counters,
    /// Highest sequence number acknowledged (or taken back), for [`Receipt`]s.
    acked: watch::Sender<u64>,
}

/// Says when one queued stanza has left the sender's hands: acknowledged by the peer (it was
/// delivered there), or taken back with [`Link::take_unacked`] to go another way.
pub struct Receipt {
    acked: watch::Receiver<u64>,
    seq: u64,
}

impl Receipt {
    /// Resolves once the stanza is acknowledged or taken back; never if the tunnel is gone.
    pub async fn settled(mut self) {
        if self.acked.wait_for(|a| *a >= self.seq).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What the sender side learned from the peer's hello.
pub(crate) struct Resume {
    /// First sequence number to (re)send in the new session.
    pub cursor: u64,
    /// Our delivered counter for the peer's instance after the hello.
    pub delivered: u64,
}

impl Link {
    pub(crate) fn new(capacity: usize) -> Self {
        let window = ReplayWindow::new(capacity);
        let room = Semaphore::new(window.capacity());
        Self {
            window: Mutex::new(window),
            room,
            pushed: Notify::new(),
            dedup: Mutex::new(Dedup::new()),
            counters: Counters::default(),
            acked: watch::Sender::new(0),
        }
    }

    /// Queues a stanza, waiting for window room. Cancel-safe: if the future is
    /// dropped before it resolves, nothing was queued.
    pub(crate) async fn send(&self, stanza: TunnelStanza) -> Result<Receipt, TunnelError> {
        let size = stanza.payload.len() + stanza.from_domain.len() + stanza.to_domain.len();
        if size > MAX_STANZA_BYTES {
            // Never queue what the peer would refuse to decode: it would break
            // every session on replay.
            return Err(TunnelError::TooLarge {
                size,
                max: MAX_STANZA_BYTES,
            });
        }
        let permit = self.room.acquire().await.map_err(|_| TunnelError::Closed)?;
        let pushed = lock(&self.window).push(stanza);
        match pushed {
            Ok(seq) => {
                permit.forget();
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                self.pushed.notify_waiters();
                Ok(Receipt {
                    acked: self.acked.subscribe(),
                    seq,
                })
            }
            // Permits and window room are kept equal, so this means the
            // window was torn down concurrently.
            Err(_) => Err(TunnelError::Closed),
        }
    }

    /// Empties the replay window and returns its stanzas in order, freeing
    /// their room as an ack would (see [`ReplayWindow::take_all`]).
    pub(crate) fn take_unacked(&self) -> Vec<TunnelStanza> {
        let taken = {
            let mut w = lock(&self.window);
            let taken = w.take_all();
            self.acked.send_replace(w.acked_through());
            taken
        };
        if !taken.is_empty() {
            self.counters
                .taken_back
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            self.room.add_permits(taken.len());
        }
        taken
    }

    /// Makes pending and future `send` calls fail with `Closed`.
    pub(crate) fn close(&self) {
        self.room.close();
    }

    fn apply_ack(&self, seq: u64) {
        let freed = {
            let mut w = lock(&self.window);
            let freed = w.ack(seq);
            self.acked.send_replace(w.acked_through());
            freed
        };
        if freed > 0 {
            self.counters
                .acked
                .fetch_add(freed as u64, Ordering::Relaxed);
            self.room.add_permits(freed);
        }
    }

    /// The `(last_received, peer_instance)` pair for our hello.
    pub(crate) fn receive_position(&self) -> (u64, u64) {
        let d = lock(&self.dedup);
        (d.last_delivered(), d.instance())
    }

    /// Applies the peer's hello: resets the duplicate filter if the peer
    /// restarted, releases what the peer says it already delivered (if it
    /// refers to our instance) and computes where replay starts.
    pub(crate) fn resume_from(&self, peer: &Hello, our_instance: u64) -> Resume {
        let delivered = {
            let mut d = lock(&self.dedup);
            d.reset_for_instance(peer.instance);
            d.last_delivered()
        };
        let knows_us = peer.peer_instance != 0 && peer.peer_instance == our_instance;
        if knows_us {
            self.apply_ack(peer.last_received);
        }
        let first_unacked = lock(&self.window).first_unacked();
        let cursor = if knows_us {
            peer.last_received.saturating_add(1).max(first_unacked)
        } else {
            first_unacked
        };
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        Resume { cursor, delivered }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.counters.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.counters.connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> LinkStats {
        let c = &self.counters;
        LinkStats {
            connected: c.connected.load(Ordering::Relaxed),
            unacked: lock(&self.window).len(),
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

/// Builds a hello frame.
pub(crate) fn hello_frame(
    link: &Link,
    instance: u64,
    core_id: String,
    version: String,
    domains: Vec<String>,
    chat_node_aliases: Vec<String>,
) -> Frame {
    let (last_received, peer_instance) = link.receive_position();
    Frame {
        kind: Some(frame::Kind::Hello(Hello {
            core_id,
            version,
            domains,
            chat_node_aliases,
            instance,
            last_received,
            peer_instance,
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

/// Maps a received stanza to the item type of the delivery channel.
pub(crate) type Wrap<T> = Arc<dyn Fn(TunnelStanza) -> T + Send + Sync>;

/// Everything one established session needs.
pub(crate) struct Session<T> {
    pub link: Arc<Link>,
    pub inbound: tonic::Streaming<Frame>,
    pub out_tx: mpsc::Sender<Frame>,
    pub deliver: mpsc::Sender<T>,
    pub wrap: Wrap<T>,
    pub resume: Resume,
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
            resume,
            keepalive,
            dead_after,
            cancel,
        } = self;
        let cancel = cancel.child_token();
        let (delivered_tx, delivered_rx) = watch::channel(resume.delivered);
        let ack_now = Arc::new(Notify::new());

        let mut rx_task = tokio::spawn(
            Inbound {
                link: link.clone(),
                inbound,
                deliver,
                wrap,
                delivered_tx,
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
                cursor: resume.cursor,
                acked_sent: resume.delivered,
                delivered_rx,
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
    delivered_tx: watch::Sender<u64>,
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
                Some(frame::Kind::Ack(a)) => self.link.apply_ack(a.seq),
                Some(frame::Kind::Keepalive(_)) => self.ack_now.notify_one(),
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
        // atomically, so a stanza counted as delivered is really delivered.
        let permit = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(SessionEnd::Cancelled),
            p = self.deliver.reserve() => p.map_err(|_| SessionEnd::DeliveryClosed)?,
        };
        let accepted = {
            let mut d = lock(&self.link.dedup);
            if d.accept(s.seq) {
                permit.send((self.wrap)(TunnelStanza {
                    from_domain: s.from_domain,
                    to_domain: s.to_domain,
                    payload: s.payload,
                }));
                true
            } else {
                false
            }
        };
        let c = &self.link.counters;
        if accepted {
            c.received.fetch_add(1, Ordering::Relaxed);
            self.delivered_tx.send_replace(s.seq);
        } else {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Writes stanzas, acks and keepalives.
struct Outbound {
    link: Arc<Link>,
    out_tx: mpsc::Sender<Frame>,
    /// Next sequence number to write in this session.
    cursor: u64,
    /// Highest cumulative ack written in this session (or implied by our hello).
    acked_sent: u64,
    delivered_rx: watch::Receiver<u64>,
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
        // A second handle so a reserved slot does not borrow `self`.
        let out_tx = self.out_tx.clone();

        loop {
            // Register for push notifications before looking at the window so
            // a push in between is not missed.
            let pushed = link.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let next = {
                let w = lock(&link.window);
                self.cursor = self.cursor.max(w.first_unacked());
                w.get(self.cursor).cloned()
            };

            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                _ = self.ack_now.notified() => self.send_ack(&mut ack_deadline, true).await,
                changed = self.delivered_rx.changed() => {
                    if changed.is_err() {
                        // The inbound task is gone; the session is ending.
                        return SessionEnd::Cancelled;
                    }
                    let delivered = *self.delivered_rx.borrow_and_update();
                    if delivered.saturating_sub(self.acked_sent) >= ACK_EVERY {
                        self.send_ack(&mut ack_deadline, false).await
                    } else {
                        if delivered > self.acked_sent && ack_deadline.is_none() {
                            ack_deadline = Some(Instant::now() + ACK_DELAY);
                        }
                        Ok(())
                    }
                }
                _ = sleep_until_opt(ack_deadline) => self.send_ack(&mut ack_deadline, false).await,
                _ = ticker.tick() => {
                    let f = Frame { kind: Some(frame::Kind::Keepalive(Keepalive { sent_unix_ms: unix_ms() })) };
                    self.write(f).await
                }
                permit = out_tx.reserve(), if next.is_some() => {
                    match (permit, next) {
                        (Ok(permit), Some(stanza)) => {
                            let seq = self.cursor;
                            permit.send(Frame {
                                kind: Some(frame::Kind::Stanza(StanzaFrame {
                                    seq,
                                    from_domain: stanza.from_domain,
                                    to_domain: stanza.to_domain,
                                    payload: stanza.payload,
                                })),
                            });
                            self.cursor = seq + 1;
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

    /// Writes a cumulative ack for everything delivered so far. With `force`,
    /// writes it even if it repeats the previous ack (keepalive answer).
    async fn send_ack(
        &mut self,
        deadline: &mut Option<Instant>,
        force: bool,
    ) -> Result<(), SessionEnd> {
        *deadline = None;
        let delivered = *self.delivered_rx.borrow_and_update();
        if delivered <= self.acked_sent && !force {
            return Ok(());
        }
        self.acked_sent = self.acked_sent.max(delivered);
        self.write(Frame {
            kind: Some(frame::Kind::Ack(Ack { seq: delivered })),
        })
        .await
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
        let link = Link::new(8);
        let first = link.send(stanza("1")).await.expect("queued");
        let second = link.send(stanza("2")).await.expect("queued");
        link.apply_ack(1);
        assert!(settles(first).await, "acknowledged");
        assert!(!settles(second).await, "not acknowledged yet");
    }

    #[tokio::test]
    async fn a_receipt_settles_when_its_stanza_is_taken_back() {
        let link = Link::new(8);
        let r = link.send(stanza("1")).await.expect("queued");
        assert_eq!(link.take_unacked().len(), 1);
        assert!(settles(r).await, "taken back to go another way");
        // Numbering continues: a later stanza waits for its own ack.
        let later = link.send(stanza("2")).await.expect("queued");
        assert!(!settles(later).await);
    }
}
