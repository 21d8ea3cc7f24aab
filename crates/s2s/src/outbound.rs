//! Outgoing s2s: one session per (local domain, remote domain) pair, opened on demand.
//!
//! [`S2s::send`] finds or spawns the pair's session task and pushes the stanza on the pair's
//! own bounded queue ([`crate::queue`]); it never waits for room, so one partner that stalls
//! cannot hold up sends to any other. The task resolves and connects, negotiates STARTTLS,
//! authenticates with dialback (XEP-0220, keys per XEP-0185) or SASL EXTERNAL, then writes
//! queued stanzas in batches; when a stream ends with stanzas still queued it opens another.
//! The negotiation's decisions and deadlines are [`causeway_xmpp::negotiation::outbound`]'s
//! (driven by [`crate::negotiate`]); so are the authenticated stream's keepalive, idle and
//! ping timers, which `stream_stanzas` serves.
//! A stanza that cannot be delivered is bounced to the [`crate::Host`]: `resource-constraint`
//! when the queue is full, `remote-server-timeout` when it waited longer than the queue's age
//! limit, `remote-server-not-found` (or the failure's own condition) when no session opens.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use causeway_xmpp::addr::{jid_domain, normalize_domain};
use causeway_xmpp::error::Bounce;
use causeway_xmpp::negotiation::outbound::{Action, Note, Outbound, Purpose};
use causeway_xmpp::{ns, Element, OutboundFault, StanzaCondition};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::negotiate::{feed, Negotiated, OpenError, Opened, World};
use crate::queue::{PairQueue, PushError};
use crate::{Direction, OutboundStanza, S2s, SessionEntry, XmlConn, LOG_MODULE};

/// Bytes written to a peer in one batch at most.
const BATCH_BYTES: usize = 64 * 1024;

/// A stream that ends sooner than this after it opened counts as short-lived.
const SHORT_LIVED: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause before opening the next stream of a pair after `short_lived` short-lived
/// streams in a row: none for the first, then 1 s, 2 s, 4 s ... up to 16 s.
fn redial_pause(short_lived: u32) -> Option<std::time::Duration> {
    let exp = short_lived.checked_sub(2)?;
    Some(std::time::Duration::from_secs(1 << exp.min(4)))
}

/// What [`S2s::enqueue`] does with a stanza whose pair queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFull {
    /// Bounce it (`resource-constraint`).
    Bounce,
    /// Wait for room.
    Wait,
    /// Give it back to the caller.
    GiveBack,
}

/// The pool's reference to a live session task.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    queue: Arc<PairQueue>,
    generation: u64,
}

impl S2s {
    /// Send a stanza to a remote domain, opening a session if needed. Never waits for the
    /// remote side: the stanza is queued on its pair's queue at once, or bounced to
    /// [`crate::Host::bounce`] (`resource-constraint`) if that queue is full.
    ///
    /// Both domains are normalised first ([`normalize_domain`]): sessions are keyed, and
    /// dialback keys computed, over the one form an inbound `db:verify` is checked against.
    /// A stanza with a domain that does not normalise is bounced with `jid-malformed`.
    pub async fn send(self: &Arc<Self>, stanza: OutboundStanza) {
        self.enqueue(stanza, OnFull::Bounce).await;
    }

    /// Like [`S2s::send`], but waits for room in the pair's queue instead of bouncing: for a
    /// sender that wants backpressure and keeps its own order per pair (core's backlog of
    /// stanzas from the edge, a load generator).
    pub async fn send_waiting(self: &Arc<Self>, stanza: OutboundStanza) {
        self.enqueue(stanza, OnFull::Wait).await;
    }

    /// Like [`S2s::send`], but a stanza whose pair queue is full is given back instead of
    /// bounced (for a caller that can hold it and wait with [`S2s::send_waiting`]).
    pub async fn try_send(self: &Arc<Self>, stanza: OutboundStanza) -> Result<(), OutboundStanza> {
        match self.enqueue(stanza, OnFull::GiveBack).await {
            Some(back) => Err(back),
            None => Ok(()),
        }
    }

    /// [`S2s::send`], doing `on_full` when the pair's queue is full; returns the stanza only
    /// when given back.
    async fn enqueue(
        self: &Arc<Self>,
        stanza: OutboundStanza,
        on_full: OnFull,
    ) -> Option<OutboundStanza> {
        let mut stanza = match normalized(stanza) {
            Ok(stanza) => stanza,
            Err(stanza) => {
                warn!(module = LOG_MODULE, direction = "outgoing", local = %crate::inbound::clip(&stanza.from_domain), remote = %crate::inbound::clip(&stanza.to_domain), "stanza with a malformed domain: bounced");
                self.bounce(stanza, Bounce::MalformedDomain.condition())
                    .await;
                return None;
            }
        };
        for _ in 0..3 {
            let handle = self.session_for(&stanza.from_domain, &stanza.to_domain);
            let pushed = match on_full {
                OnFull::Wait => handle.queue.push_waiting(stanza).await,
                OnFull::Bounce | OnFull::GiveBack => handle.queue.push(stanza, Instant::now()),
            };
            match pushed {
                Ok(()) => return None,
                Err(PushError::Full(back)) if on_full == OnFull::GiveBack => return Some(back),
                Err(PushError::Full(back)) => {
                    debug!(module = LOG_MODULE, direction = "outgoing", local = %back.from_domain, remote = %back.to_domain, "queue full: stanza bounced");
                    self.counters
                        .bounced_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    self.bounce(back, Bounce::QueueFull.condition()).await;
                    return None;
                }
                Err(PushError::Closed(back)) => {
                    // The session ended between lookup and push; forget it and retry.
                    self.forget_session(&back.from_domain, &back.to_domain, handle.generation);
                    stanza = back;
                }
            }
        }
        self.bounce(stanza, Bounce::NoSession.condition()).await;
        None
    }

    /// Answer the sender of an inbound stanza (`payload`) the host could not take with a
    /// stanza error, sent as the domain it was addressed to (none for an error: errors are
    /// never answered). The domains come from the stanza's own addresses, so the caller keeps
    /// only the payload (a reference count) on its way to the host.
    pub async fn answer_undeliverable(
        self: &Arc<Self>,
        payload: &[u8],
        condition: StanzaCondition,
    ) {
        self.counters
            .stanzas_bounced
            .fetch_add(1, Ordering::Relaxed);
        let Some(original) = crate::parse_stanza(payload) else {
            return;
        };
        let domain = |attr| original.attr(attr).and_then(|j| jid_domain(j).ok());
        let (Some(local), Some(remote)) = (domain("to"), domain("from")) else {
            return;
        };
        let Some(reply) = causeway_xmpp::error::stanza_error_reply(&original, condition, None)
        else {
            return;
        };
        self.send(OutboundStanza {
            from_domain: local,
            to_domain: remote,
            payload: bytes::Bytes::from(reply.to_xml(ns::SERVER)),
        })
        .await;
    }

    async fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) {
        self.counters
            .stanzas_bounced
            .fetch_add(1, Ordering::Relaxed);
        self.host.bounce(stanza, condition).await;
    }

    /// Number of outgoing sessions open or opening.
    pub fn outgoing_count(&self) -> usize {
        self.outgoing.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Bytes queued for remote domains, over every pair.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    fn session_for(self: &Arc<Self>, from: &str, to: &str) -> SessionHandle {
        let key = (from.to_owned(), to.to_owned());
        let mut map = match self.outgoing.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(h) = map.get(&key) {
            if !h.queue.is_closed() {
                return h.clone();
            }
        }
        let queue = Arc::new(PairQueue::new(self.cfg().queue, self.queued_bytes.clone()));
        let generation = rand::random::<u64>();
        let handle = SessionHandle {
            queue: queue.clone(),
            generation,
        };
        map.insert(key, handle.clone());
        let s2s = self.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        tokio::spawn(async move { s2s.run_session(from, to, queue, generation).await });
        handle
    }

    fn forget_session(&self, from: &str, to: &str, generation: u64) {
        let mut map = match self.outgoing.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (from.to_owned(), to.to_owned());
        if map.get(&key).map(|h| h.generation) == Some(generation) {
            map.remove(&key);
        }
    }

    /// The life of one pair's session task (a wiring function): open a stream, write what is
    /// queued until it ends, and open another while stanzas remain; end when the queue is
    /// empty at the end of a stream or no stream can be opened.
    async fn run_session(
        self: Arc<Self>,
        from: String,
        to: String,
        queue: Arc<PairQueue>,
        generation: u64,
    ) {
        // Streams that ended soon after they opened, in a row: the next one waits longer
        // (a peer that authenticates and then drops us must not be redialled in a tight loop).
        let mut short_lived = 0u32;
        loop {
            // The negotiation is bounded by its own deadlines (see `negotiate`).
            let opened = self
                .bouncing_expired(&queue, self.establish(&from, &to))
                .await;
            let (opened, entry) = match opened {
                Ok(ok) => ok,
                Err(e) => return self.fail_queue(&from, &to, &queue, generation, e).await,
            };
            let opened_at = Instant::now();
            let Opened { conn, machine, .. } = *opened;
            let end = self
                .stream_stanzas(conn, machine, &entry, &queue, (&from, &to))
                .await;
            self.unregister(&entry);
            info!(module = LOG_MODULE, direction = "outgoing", local = %from, remote = %to, reason = %end, "s2s session closed");
            if queue.close_if_empty() {
                self.forget_session(&from, &to, generation);
                return;
            }
            // Stanzas are still queued (or were being written): they go out, in order, on
            // the next stream, after a pause if streams keep ending at once.
            short_lived = if opened_at.elapsed() < SHORT_LIVED {
                short_lived + 1
            } else {
                0
            };
            if let Some(pause) = redial_pause(short_lived) {
                self.bouncing_expired(&queue, tokio::time::sleep(pause))
                    .await;
                if queue.close_if_empty() {
                    self.forget_session(&from, &to, generation);
                    return;
                }
            }
        }
    }

    async fn fail_queue(
        &self,
        from: &str,
        to: &str,
        queue: &PairQueue,
        generation: u64,
        e: OpenError,
    ) {
        warn!(module = LOG_MODULE, direction = "outgoing", local = %from, remote = %to, reason = %e.reason, "s2s session failed");
        self.forget_session(from, to, generation);
        for st in queue.close_and_drain() {
            self.bounce(st, e.condition).await;
        }
    }

    /// Run `work` to completion, meanwhile bouncing each stanza of `queue` at the moment it
    /// has waited longer than the queue's age limit (`remote-server-timeout`).
    async fn bouncing_expired<F: Future>(&self, queue: &PairQueue, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = crate::sm::sleep_until_opt(queue.next_expiry()) => {
                    self.bounce_expired(queue).await;
                }
            }
        }
    }

    async fn bounce_expired(&self, queue: &PairQueue) {
        for st in queue.take_expired(Instant::now()) {
            self.counters
                .bounced_queue_expired
                .fetch_add(1, Ordering::Relaxed);
            self.bounce(st, Bounce::Expired.condition()).await;
        }
    }

    /// Resolve, connect, secure and authenticate an outgoing stream as `from` to `to`.
    async fn establish(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(Box<Opened>, Arc<SessionEntry>), OpenError> {
        if !self.host.peer_allowed(to, Direction::Outbound) {
            return Err(OpenError::new(
                OutboundFault::PolicyRefused,
                format!("{to} is not allowed by the federation policy"),
            ));
        }
        let opened = match self.negotiate(from, to, Purpose::Session).await? {
            Negotiated::Authenticated(opened) => opened,
            Negotiated::Verified(_) => {
                return Err(OpenError::not_found("a session ended in a verdict"))
            }
        };
        let conn = &opened.conn;
        let entry = opened.entry.clone();
        let method = opened.method.as_str();
        entry.update(|i| {
            i.tls = conn.tls.clone();
            i.auth = method;
            i.pairs.push((to.to_owned(), from.to_owned()));
        });
        info!(module = LOG_MODULE, direction = "outgoing", local = %from, remote = %to, peer = %conn.peer, tls = %crate::transport::tls_summary(conn), auth = method, "s2s session authenticated");
        Ok((opened, entry))
    }

    /// Write queued stanzas until the stream ends (a wiring function): the machine keeps the
    /// session's timers (keepalive, idle, pings) and reads what the peer says; this writes the
    /// batches, pings and whitespace it asks for, and watches reconfiguration and the closer.
    /// Returns why it ended.
    async fn stream_stanzas(
        &self,
        mut conn: XmlConn,
        mut machine: Outbound,
        entry: &SessionEntry,
        queue: &PairQueue,
        (from, to): (&str, &str),
    ) -> String {
        let mut generation = self.generation.subscribe();
        let mut drain_rx = self.draining.subscribe();
        let mut draining = drain_rx.borrow_and_update().is_some();
        let mut pong: Option<Pong> = None;
        let mut bytes: Vec<u8> = Vec::with_capacity(16 * 1024);
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::Send(data) if machine.is_done() => {
                        // Last words (our closing tag).
                        let _ = conn.send(data.as_bytes()).await;
                    }
                    Action::Send(data) => {
                        let written = self
                            .bouncing_expired(
                                queue,
                                self.write_or_dead(&mut conn, data.as_bytes(), to),
                            )
                            .await;
                        if let Err(e) = written {
                            return e;
                        }
                    }
                    Action::Ping => {
                        let (ping, waiter) = self.new_ping(from, to);
                        let written = self
                            .bouncing_expired(
                                queue,
                                self.write_or_dead(&mut conn, ping.payload.as_bytes(), to),
                            )
                            .await;
                        if let Err(e) = written {
                            return e;
                        }
                        // Its answer is awaited from now, once written.
                        machine.ping_written(std::time::Instant::now());
                        pong = Some(Pong {
                            id: ping.id,
                            answered: waiter,
                        });
                    }
                    Action::Close => conn.shutdown().await,
                    Action::Ended(why) => return why,
                    Action::Note(Note::NoLongerAllowed { fault }) => {
                        warn!(module = LOG_MODULE, direction = "outgoing", local = %from, remote = %to, reason = %fault, "new config no longer allows this session");
                    }
                    Action::PeerDead(why) => {
                        if let Some(p) = pong.take() {
                            if let Ok(mut m) = self.pings.lock() {
                                m.remove(&p.id);
                            }
                        }
                        return self.peer_dead(&mut conn, to, why).await;
                    }
                    _ => {}
                }
            }
            let batch = queue.take_batch(BATCH_BYTES);
            if !batch.is_empty() {
                bytes.clear();
                for (st, _) in &batch {
                    bytes.extend_from_slice(&st.payload);
                }
                let written = self
                    .bouncing_expired(queue, self.write_or_dead(&mut conn, &bytes, to))
                    .await;
                if let Err(e) = written {
                    // Not known to be delivered: the next stream sends it again.
                    queue.unshift(batch);
                    return e;
                }
                let n = batch.len() as u64;
                entry.stanzas_out.fetch_add(n, Ordering::Relaxed);
                self.counters.stanzas_out.fetch_add(n, Ordering::Relaxed);
                entry.touch();
                machine.written(std::time::Instant::now());
                continue;
            }
            if draining && !machine.is_done() {
                // Everything queued is written: the session ends (a stanza queued later
                // opens another).
                machine.close();
                if machine.is_done() {
                    continue;
                }
            }
            tokio::select! {
                ev = conn.next_event() => feed(&mut machine, ev, &World { s2s: self, conn: Some(&conn), to }),
                _ = queue.pushed() => continue,
                Ok(()) = generation.changed() => {
                    let cfg = self.cfg();
                    let allowed = self.host.peer_allowed(to, Direction::Outbound);
                    let cert = conn.tls.is_some().then(|| self.cert_status(&conn, false));
                    let world = World { s2s: self, conn: Some(&conn), to };
                    machine.reconfigured(crate::negotiate::machine_settings(&cfg), allowed, cert, &world);
                },
                _ = entry.closer.notified() => {
                    conn.abort();
                    return "closed: its server was found unresponsive or removed".into();
                },
                Ok(()) = drain_rx.changed() => draining = drain_rx.borrow_and_update().is_some(),
                _ = wait_pong(&mut pong) => {
                    pong = None;
                    machine.pong(std::time::Instant::now());
                },
                _ = crate::sm::sleep_until_opt(machine.poll_timeout().map(Instant::from_std)) => {
                    machine.timeout(std::time::Instant::now(), &World { s2s: self, conn: Some(&conn), to });
                },
            }
        }
    }

    /// A ping from `from` to `to`, registered so the inbound stream that sees its answer can
    /// report it.
    fn new_ping(&self, from: &str, to: &str) -> (Ping, tokio::sync::oneshot::Receiver<()>) {
        let id = format!("{}{:016x}", crate::PING_ID_PREFIX, rand::random::<u64>());
        let payload = Element::new("iq", ns::SERVER)
            .with_attr("type", "get")
            .with_attr("id", &id)
            .with_attr("from", from)
            .with_attr("to", to)
            .with_child(Element::new("ping", ns::PING))
            .to_xml(ns::SERVER);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut m) = self.pings.lock() {
            m.insert(id.clone(), tx);
        }
        (Ping { id, payload }, rx)
    }

    /// Write; a write that cannot complete within the ping timeout means the peer is dead.
    async fn write_or_dead(&self, conn: &mut XmlConn, data: &[u8], to: &str) -> Result<(), String> {
        let limit = self.cfg().ping_timeout;
        match tokio::time::timeout(limit, conn.send(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(self.peer_dead(conn, to, "a write blocked").await),
        }
    }

    /// The peer stopped answering: close this session and every incoming one from its domain
    /// and host, so both directions reconnect. Returns why, for the log.
    async fn peer_dead(&self, conn: &mut XmlConn, to: &str, why: &str) -> String {
        warn!(module = LOG_MODULE, direction = "outgoing", remote = %to, peer = %conn.peer, reason = why, "peer is not answering: closing its sessions");
        self.close_inbound_from(to, conn.peer.ip());
        conn.abort();
        format!("peer dead: {why}")
    }
}

/// One of our pings on the wire.
struct Ping {
    id: String,
    payload: String,
}

/// A ping awaiting its answer (its deadline is the machine's).
struct Pong {
    id: String,
    answered: tokio::sync::oneshot::Receiver<()>,
}

/// Resolves when the outstanding ping (if any) is answered; never when there is none.
async fn wait_pong(pong: &mut Option<Pong>) {
    match pong.as_mut() {
        Some(p) => {
            let _ = (&mut p.answered).await;
        }
        None => std::future::pending().await,
    }
}

/// `stanza` with both domains normalised, or back as it was when one does not normalise.
fn normalized(stanza: OutboundStanza) -> Result<OutboundStanza, OutboundStanza> {
    match (
        normalize_domain(&stanza.from_domain),
        normalize_domain(&stanza.to_domain),
    ) {
        (Ok(from_domain), Ok(to_domain)) => Ok(OutboundStanza {
            from_domain,
            to_domain,
            ..stanza
        }),
        _ => Err(stanza),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, TestHost};
    use std::time::Duration;

    #[test]
    fn redialling_backs_off_only_after_streams_keep_ending_at_once() {
        let pauses: Vec<Option<Duration>> = (0..8).map(redial_pause).collect();
        let s = Duration::from_secs;
        assert_eq!(
            pauses,
            [
                None,
                None,
                Some(s(1)),
                Some(s(2)),
                Some(s(4)),
                Some(s(8)),
                Some(s(16)),
                Some(s(16))
            ]
        );
    }

    #[tokio::test]
    async fn a_stanza_with_a_malformed_domain_is_bounced_without_a_session() {
        let host = TestHost::serving(&["local.test"]);
        let s2s = S2s::new(config("secret-local-0001", |_| {}), host.clone());
        for (from, to) in [
            ("local.test", "bad_domain.test"),
            ("local.test", "xn--zz.test"),
            ("local.test", ""),
            ("local..test", "remote.test"),
        ] {
            s2s.send(OutboundStanza {
                from_domain: from.into(),
                to_domain: to.into(),
                payload: bytes::Bytes::from_static(b"<message/>"),
            })
            .await;
        }
        let bounced = host.bounced.lock().expect("bounces");
        assert_eq!(bounced.len(), 4);
        assert!(bounced
            .iter()
            .all(|(_, c)| *c == StanzaCondition::JidMalformed));
        // Handed back as given.
        assert_eq!(bounced[0].0.to_domain, "bad_domain.test");
        assert_eq!(s2s.outgoing_count(), 0);
    }
}
