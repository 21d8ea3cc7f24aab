//! Inbound s2s streams: we are the receiving server (and the authoritative server for keys we
//! issued).
//!
//! This module is the driver: it accepts and admits connections, reads, feeds what it read to
//! the negotiation machine ([`causeway_xmpp::negotiation::inbound`], where every decision and
//! deadline lives), and carries out its actions: writes, TLS handshakes, dialback
//! verifications in background tasks, delivery to the host, stream-management counting, rate
//! limiting and the logs administrators read.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use causeway_xmpp::negotiation::inbound::{
    Action, Env, Inbound, Method, Settings, Warning, MAX_PENDING_VERIFICATIONS,
};
use causeway_xmpp::{negotiation, ns, Event, TopLevel};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::accept::Admitted;
use crate::admission::Refusal;
use crate::sm::{self, InboundSm};
use crate::throttle::Charged;
use crate::transport::tls_summary;
use crate::verify::Verdict;
use crate::{
    ConnError, Direction, InboundStanza, S2s, S2sConfig, SessionEntry, XmlConn, LOG_MODULE,
};

pub(crate) use causeway_xmpp::negotiation::clip;

impl S2s {
    pub(crate) async fn handle_inbound(
        self: Arc<Self>,
        tcp: TcpStream,
        direct_tls: bool,
        admitted: Admitted,
    ) {
        let cfg = self.cfg();
        let accepted = Instant::now();
        let mut conn = match XmlConn::new(tcp, cfg.limits) {
            Ok(c) => c,
            Err(e) => {
                debug!(module = LOG_MODULE, error = %e, "inbound socket unusable");
                return;
            }
        };
        conn.set_write_stall(cfg.deadlines.write_stall);
        conn.set_max_stanza_bytes(cfg.preauth_stanza_bytes.min(cfg.limits.max_stanza_bytes));
        if direct_tls {
            // The current certificate (reloads replace it), with ALPN xmpp-server.
            let Some(base) = cfg.tls_server.clone() else {
                warn!(module = LOG_MODULE, peer = %conn.peer, "direct TLS connection but no certificate configured");
                return;
            };
            let mut tls = (*base).clone();
            tls.alpn_protocols = vec![crate::ALPN_XMPP_SERVER.to_vec()];
            let handshake = conn
                .accept_tls(Arc::new(tls), cfg.deadlines.tls_handshake)
                .await;
            if let Err(e) = handshake {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                warn!(module = LOG_MODULE, direction = "incoming", peer = %conn.peer, error = %e, "direct TLS handshake failed");
                return;
            }
            conn.mark_direct_tls();
        }
        let entry = self.register(Direction::Inbound, conn.peer);
        let (verdict_tx, verdict_rx) = mpsc::channel(MAX_PENDING_VERIFICATIONS);
        let cert = conn.tls.is_some().then(|| self.cert_status(&conn, true));
        let machine = Inbound::new(
            settings(&cfg),
            accepted.into_std(),
            cert,
            self.new_stream_id(),
        );
        let mut stream = InboundStream {
            s2s: self.clone(),
            conn,
            entry: entry.clone(),
            machine,
            verdict_tx,
            sm: None,
            admitted,
            remotes_counted: HashSet::new(),
            verifications: Vec::new(),
            charge_to: None,
            paused_until: None,
            out: String::new(),
        };
        let end = stream.run(verdict_rx).await;
        self.unregister(&entry);
        let pairs = entry
            .info
            .lock()
            .map(|i| i.pairs.clone())
            .unwrap_or_default();
        let sm_handled = stream.sm.as_ref().map(InboundSm::handled);
        info!(module = LOG_MODULE, direction = "incoming", peer = %stream.conn.peer, ?pairs, ?sm_handled, reason = %clip(&end), "s2s session closed");
    }
}

/// The negotiation settings of the current config.
fn settings(cfg: &S2sConfig) -> Settings {
    Settings {
        tls: cfg.tls_mode,
        tls_available: cfg.tls_server.is_some(),
        sasl_external: cfg.sasl_external,
        stream_management: cfg.stream_management,
        require_peer_certs: cfg.require_peer_certs,
        dialback_secret: cfg.dialback_secret.clone(),
        dialback_previous: cfg.dialback_previous.clone(),
        deadlines: cfg.negotiation_deadlines(),
    }
}

/// A dialback verification result, sent from its task back to the stream.
struct PairVerdict {
    remote: String,
    local: String,
    verdict: Verdict,
}

/// What the machine asks of the world, answered from the stream's server and connection.
struct StreamEnv<'a> {
    s2s: &'a S2s,
    conn: &'a XmlConn,
    /// Remote domains this stream counts against their limit of streams.
    counted: &'a mut HashSet<String>,
}

impl Env for StreamEnv<'_> {
    fn serves(&self, domain: &str) -> bool {
        self.s2s.host.serves(domain)
    }

    fn peer_allowed(&self, remote: &str) -> bool {
        self.s2s.host.peer_allowed(remote, Direction::Inbound)
    }

    fn cert_covers(&self, domain: &str) -> bool {
        S2s::cert_covers(self.conn, domain)
    }

    fn count_stream(&mut self, remote: &str) -> bool {
        if self.counted.contains(remote) {
            return true;
        }
        let counted = match self.s2s.admission.lock() {
            Ok(mut a) => a.add_stream(remote),
            Err(_) => Err(Refusal::TooManyStreams),
        };
        if let Err(why) = counted {
            self.s2s.counters.refuse_connection(why);
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %remote, limit = why.as_str(), "too many authenticated streams from this domain; refused");
            return false;
        }
        self.counted.insert(remote.to_owned());
        true
    }

    fn new_stream_id(&mut self) -> String {
        self.s2s.new_stream_id()
    }
}

/// What woke the stream up.
enum Input {
    /// Something the machine was told; its actions are due.
    Fed,
    /// A deadline of the machine passed.
    Deadline,
    /// Nothing for the machine (a pause over).
    Nothing,
    /// Stream management: acknowledge this count (written outside the deadline's race, so
    /// an ack is never cut half-way).
    Ack(u32),
    /// The connection is gone; why.
    Gone(String),
}

/// One inbound connection: the negotiation machine and what carries its actions out.
struct InboundStream {
    s2s: Arc<S2s>,
    conn: XmlConn,
    entry: Arc<SessionEntry>,
    machine: Inbound,
    verdict_tx: mpsc::Sender<PairVerdict>,
    /// XEP-0198 counting once the peer enabled stream management.
    sm: Option<InboundSm>,
    /// The connection's slots; the per-source one is given back at the first authentication.
    admitted: Admitted,
    /// Remote domains this stream counts against their limit of streams.
    remotes_counted: HashSet<String>,
    /// Dialback verifications started for this stream: cancelled when it ends.
    verifications: Vec<AbortHandle>,
    /// The remote domain whose bucket pays for what this stream reads (see
    /// [`crate::throttle`]): the first one it authenticated. None until then.
    charge_to: Option<String>,
    /// Over the domain's inbound rate: read nothing until then.
    paused_until: Option<Instant>,
    /// Bytes the machine asked to send, written before the next other action.
    out: String,
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        self.release();
    }
}

impl InboundStream {
    /// The connection's event loop: wait for an input or the machine's next deadline, feed
    /// it, carry the actions out. Carrying them out also races the machine's deadline, so a
    /// peer cannot hold the connection by stalling inside one (a TLS handshake, a write it
    /// does not read) while a negotiation deadline runs.
    async fn run(&mut self, mut verdicts: mpsc::Receiver<PairVerdict>) -> String {
        let mut generation = self.s2s.generation.subscribe();
        let mut draining = self.s2s.draining.subscribe();
        if draining.borrow().is_some() {
            draining.mark_changed();
        }
        loop {
            let deadline = self.deadline();
            let input = tokio::select! {
                input = self.input(&mut verdicts, &mut generation, &mut draining) => input,
                _ = sm::sleep_until_opt(deadline) => Input::Deadline,
            };
            let result = match input {
                Input::Fed => self.carry_out_in_time().await,
                Input::Deadline => {
                    self.machine.timeout(std::time::Instant::now());
                    self.carry_out().await
                }
                Input::Nothing => Ok(()),
                Input::Ack(h) => self
                    .conn
                    .send(negotiation::sm_ack(h).as_bytes())
                    .await
                    .map_err(|e| e.to_string()),
                Input::Gone(why) => Err(why),
            };
            if let Err(why) = result {
                return why;
            }
            if self.machine.is_closed() {
                // Its close was carried out when a deadline cut the actions short.
                return "closed".into();
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.machine.poll_timeout().map(Instant::from_std)
    }

    /// Wait for one input and feed it to the machine.
    async fn input(
        &mut self,
        verdicts: &mut mpsc::Receiver<PairVerdict>,
        generation: &mut tokio::sync::watch::Receiver<u64>,
        draining: &mut tokio::sync::watch::Receiver<Option<std::time::Instant>>,
    ) -> Input {
        let entry = self.entry.clone();
        let sm_deadline = self.sm.as_ref().and_then(InboundSm::deadline);
        let paused_until = self.paused_until;
        tokio::select! {
            ev = self.conn.next_event(), if paused_until.is_none() => {
                let now = std::time::Instant::now();
                let mut env = StreamEnv { s2s: &self.s2s, conn: &self.conn, counted: &mut self.remotes_counted };
                match ev {
                    Ok(Event::StreamOpen(h)) => self.machine.header(&h, &mut env),
                    Ok(Event::Element(tl)) => {
                        let len = tl.raw.len();
                        self.machine.element(now, tl, &mut env);
                        self.charge(len);
                    }
                    Ok(Event::StreamClose) => self.machine.peer_closed(),
                    Err(ConnError::Frame(e)) => self.machine.frame_error(e),
                    Err(e) => return Input::Gone(e.to_string()),
                }
                Input::Fed
            },
            _ = sm::sleep_until_opt(paused_until) => {
                self.paused_until = None;
                Input::Nothing
            }
            Some(v) = verdicts.recv() => {
                let mut env = StreamEnv { s2s: &self.s2s, conn: &self.conn, counted: &mut self.remotes_counted };
                self.machine.verdict(v.remote, v.local, v.verdict, &mut env);
                Input::Fed
            }
            h = sm::next_safe(&mut self.sm) => match self.sm.as_mut().and_then(|sm| sm.became_safe(h)) {
                Some(h) => Input::Ack(h),
                None => Input::Nothing,
            },
            _ = sm::sleep_until_opt(sm_deadline) => match self.sm.as_mut().map(InboundSm::expire) {
                Some(h) => Input::Ack(h),
                None => Input::Nothing,
            },
            Ok(()) = generation.changed() => {
                let cfg = self.s2s.cfg();
                let cert = self.conn.tls.is_some().then(|| self.s2s.cert_status(&self.conn, true));
                let env = StreamEnv { s2s: &self.s2s, conn: &self.conn, counted: &mut self.remotes_counted };
                self.machine.reconfigured(settings(&cfg), cert, &env);
                Input::Fed
            }
            _ = entry.closer.notified() => {
                self.conn.abort();
                Input::Gone("its server stopped answering pings".into())
            }
            Ok(()) = draining.changed() => {
                let by = *draining.borrow_and_update();
                match by {
                    Some(by) => {
                        self.machine.shutdown(by);
                        Input::Fed
                    }
                    None => Input::Nothing,
                }
            }
        }
    }

    /// [`InboundStream::carry_out`], racing the machine's deadline while it negotiates (not
    /// authenticated yet, or awaiting a restarted stream's header): when it passes first,
    /// the machine decides (and its closing words are written). Otherwise nothing is cut
    /// short (a delivery waiting for room must not be dropped half-way); idleness is checked
    /// between inputs.
    async fn carry_out_in_time(&mut self) -> Result<(), String> {
        let negotiating = self.machine.negotiating();
        let deadline = self.deadline().filter(|_| negotiating);
        let done = tokio::select! {
            done = self.carry_out() => Some(done),
            _ = sm::sleep_until_opt(deadline) => None,
        };
        match done {
            Some(done) => done,
            None => {
                self.out.clear();
                self.machine.timeout(std::time::Instant::now());
                self.carry_out().await
            }
        }
    }

    /// Carry out the machine's actions in order; Err(why) once the stream is closed.
    async fn carry_out(&mut self) -> Result<(), String> {
        while let Some(action) = self.machine.poll_action() {
            if let Action::Send(bytes) = action {
                self.out.push_str(&bytes);
                continue;
            }
            if let Action::Close(why) = action {
                return Err(self.close(why).await);
            }
            self.flush().await?;
            self.act(action).await;
        }
        self.flush().await
    }

    /// Write what the machine asked to send.
    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Taken, not cleared: the buffer is not kept while the stream waits.
        let out = std::mem::take(&mut self.out);
        self.conn
            .send(out.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    /// One action other than sending and closing.
    async fn act(&mut self, action: Action) {
        match action {
            Action::Send(_) | Action::Close(_) => {}
            Action::StartTls => self.start_tls().await,
            Action::RestartStream => self.conn.restart(),
            Action::Verify {
                remote,
                local,
                stream_id,
                key,
            } => self.verify(remote, local, stream_id, key),
            Action::Authenticated {
                remote,
                local,
                method,
            } => self.authenticated(remote, local, method),
            Action::Deliver {
                from_domain,
                to_domain,
                stanza,
            } => self.deliver(from_domain, to_domain, stanza).await,
            Action::Refused {
                from,
                to,
                refusal,
                why,
            } => {
                match refusal {
                    negotiation::inbound::Refusal::Unroutable => {
                        self.s2s.counters.refuse(crate::RefusalReason::Unroutable);
                        warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(&from), to = %to, reason = why, "stanza refused");
                    }
                    negotiation::inbound::Refusal::Spoofed => {
                        self.s2s.counters.refuse(crate::RefusalReason::Spoofed);
                        warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, from = %from, to = %to, "stanza from a domain this stream did not authenticate: refused");
                    }
                }
                // Refused counts as handled (XEP-0198), on a stream that goes on.
                if let Some(sm) = self.sm.as_mut().filter(|_| !self.machine.is_closed()) {
                    sm.stanza(None);
                }
            }
            Action::EnableSm => {
                self.sm = Some(InboundSm::new());
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(self.machine.claimed().unwrap_or("")), "stream management enabled (XEP-0198)");
            }
            Action::AckRequested => {
                if let Some(h) = self.sm.as_mut().and_then(|sm| sm.request(Instant::now())) {
                    self.out.push_str(&negotiation::sm_ack(h));
                }
            }
            Action::PairsDropped(kept) => {
                self.entry.update(|i| i.pairs.retain(|p| kept.contains(p)));
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remaining = ?kept, "new config no longer allows some domains on this stream");
            }
            Action::Warn(w) => self.warn(w),
        }
    }

    /// The server side of STARTTLS (`<proceed/>` is written).
    async fn start_tls(&mut self) {
        let cfg = self.s2s.cfg();
        let Some(tls) = cfg.tls_server.clone() else {
            return self
                .machine
                .tls_failed("no certificate is configured any more".into());
        };
        match self.conn.accept_tls(tls, cfg.deadlines.tls_handshake).await {
            Ok(()) => {
                let tls = self.conn.tls.clone();
                self.entry.update(|i| i.tls = tls);
                let cert = self.s2s.cert_status(&self.conn, true);
                self.machine
                    .tls_established(std::time::Instant::now(), cert);
            }
            Err(ConnError::Tls(why)) => self.machine.tls_failed(why),
            Err(e) => self.machine.tls_failed(e.to_string()),
        }
    }

    /// Verify a dialback key with its authoritative server in the background.
    fn verify(&mut self, remote: String, local: String, stream_id: String, key: String) {
        let s2s = self.s2s.clone();
        let tx = self.verdict_tx.clone();
        let task = tokio::spawn(async move {
            let verdict = s2s.verify_key(&local, &remote, &stream_id, &key).await;
            let _ = tx
                .send(PairVerdict {
                    remote,
                    local,
                    verdict,
                })
                .await;
        });
        self.verifications.retain(|t| !t.is_finished());
        self.verifications.push(task.abort_handle());
    }

    /// A pair is authenticated: give back the unauthenticated slot, charge the domain for
    /// what the stream reads, accept full-size stanzas.
    fn authenticated(&mut self, remote: String, local: String, method: Method) {
        self.admitted.source = None;
        if self.charge_to.is_none() {
            self.charge_to = Some(remote.clone());
        }
        self.conn
            .set_max_stanza_bytes(self.s2s.cfg().limits.max_stanza_bytes);
        let tls = tls_summary(&self.conn);
        match method {
            Method::Dialback => {
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %remote, local = %local, tls = %tls, "s2s session authenticated");
            }
            Method::SaslExternal => {
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %remote, local = %local, tls = %tls, "s2s session authenticated (SASL EXTERNAL)");
            }
        }
        self.entry.update(|i| {
            i.auth = method.as_str();
            i.pairs.push((remote, local));
        });
    }

    /// Hand a stanza to the host (or take it as the answer to one of our pings), and count
    /// it for stream management either way (XEP-0198 counts every stanza handled,
    /// delivered or refused).
    async fn deliver(&mut self, from_domain: String, to_domain: String, tl: TopLevel) {
        self.entry.touch();
        let el = &tl.element;
        let is_answer = el.name == "iq" && matches!(el.attr("type"), Some("result" | "error"));
        if is_answer && el.attr("id").is_some_and(|id| self.s2s.take_pong(id)) {
            // The answer to one of our liveness pings: ours, not the inside's.
            if let Some(sm) = self.sm.as_mut() {
                sm.stanza(None);
            }
            return;
        }
        self.entry.stanzas_in.fetch_add(1, Ordering::Relaxed);
        self.s2s.counters.stanzas_in.fetch_add(1, Ordering::Relaxed);
        let stanza = InboundStanza {
            payload: tl.forwardable(ns::SERVER),
            from_domain,
            to_domain,
        };
        let payload = stanza.payload.clone();
        let outcome = if self.sm.is_some() {
            self.s2s.host.deliver_tracked(stanza).await
        } else {
            self.s2s.host.deliver(stanza).await.map(|()| None)
        };
        let handled = match outcome {
            Ok(handled) => handled,
            Err(condition) => {
                // Answered (with an error) counts as handled.
                self.s2s.answer_undeliverable(&payload, condition).await;
                None
            }
        };
        if let Some(sm) = self.sm.as_mut() {
            sm.stanza(handled);
        }
        // Idleness counts from the end of the handling, as a slow delivery is not idle.
        self.machine.stanza_handled(std::time::Instant::now());
    }

    /// Write the last words and close; returns why, for the log.
    async fn close(&mut self, why: negotiation::inbound::Close) -> String {
        use negotiation::inbound::Close;
        match &why {
            Close::Fault(fault) if fault.is_negotiation_deadline() => {
                self.s2s
                    .counters
                    .deadline_closes
                    .fetch_add(1, Ordering::Relaxed);
            }
            Close::TlsFailed(e) => {
                self.s2s
                    .counters
                    .tls_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, error = %e, "TLS handshake failed");
            }
            _ => {}
        }
        let out = std::mem::take(&mut self.out);
        self.conn.send_and_close(out.as_bytes()).await;
        why.to_string()
    }

    /// Log a warning of the machine's, in the words administrators (and tests) look for.
    fn warn(&self, w: Warning) {
        let peer = self.conn.peer;
        match w {
            Warning::UnservedStreamTo { to } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, to = %to, "stream to a domain we do not serve");
            }
            Warning::MalformedStreamFrom { from, error } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, from = %from, error = %error, "stream from a malformed domain");
            }
            Warning::CertificateRefused { remote, cert } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, cert = ?cert, "peer certificate refused (a valid certificate is required)");
            }
            Warning::DialbackWithoutTls { remote } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, "dialback on an unencrypted stream refused (TLS required)");
            }
            Warning::PolicyRefused { remote, local } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, local = %local, "domain refused by the federation policy");
            }
            Warning::CertificateDoesNotName { remote } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, "certificate does not name the domain (RFC 6125)");
            }
            Warning::KeyInvalid { remote, local } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, local = %local, "dialback key invalid");
            }
            Warning::VerificationFailed {
                remote,
                local,
                reason,
            } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, local = %local, reason = %reason, "dialback verification failed");
            }
            Warning::SaslRefused { remote, reason } => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, remote = %remote, reason = reason, "SASL EXTERNAL refused");
            }
            Warning::VerifyInvalid {
                receiving,
                originating,
            } => {
                self.s2s
                    .counters
                    .dialback_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(module = LOG_MODULE, direction = "incoming", peer = %peer, receiving = %receiving, originating = %originating, "db:verify for a key we did not issue: invalid");
            }
        }
    }

    /// Give back what the stream holds besides its slots: its place in its remote domains'
    /// stream counts, its verifications under way.
    fn release(&mut self) {
        if let Ok(mut a) = self.s2s.admission.lock() {
            for remote in self.remotes_counted.drain() {
                a.remove_stream(&remote);
            }
        }
        for task in self.verifications.drain(..) {
            task.abort();
        }
    }

    /// Charge `bytes` read on an authenticated stream to its domain's bucket. Over the limit,
    /// the stream reads nothing more until the debt is paid: TCP backpressure slows the peer,
    /// nothing is dropped. Each pause is counted; an episode is logged when it starts and ends.
    fn charge(&mut self, bytes: usize) {
        let Some(domain) = self.charge_to.as_deref() else {
            return;
        };
        let now = Instant::now();
        let charged = match self.s2s.throttle.lock() {
            Ok(mut t) => t.charge(domain, bytes, now.into_std()),
            Err(_) => return,
        };
        match charged {
            Charged::Go {
                episode_ended: Some(lasted),
            } => {
                info!(module = LOG_MODULE, direction = "incoming", remote = %domain, lasted_secs = lasted.as_secs(), "inbound rate limit: this domain is back under its rate");
            }
            Charged::Go { .. } => {}
            Charged::Wait {
                until,
                episode_started,
            } => {
                let until = Instant::from_std(until);
                let paused = until.saturating_duration_since(now);
                let c = &self.s2s.counters;
                c.inbound_throttled.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(paused.as_micros()).unwrap_or(u64::MAX);
                c.inbound_throttled_micros
                    .fetch_add(micros, Ordering::Relaxed);
                if episode_started {
                    let limit = self.s2s.cfg().inbound_rate.map(|l| l.bytes_per_sec);
                    warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %domain, bytes_per_sec = ?limit, "inbound rate limit: this domain sends faster than its rate; its streams pause reading (logged once until it is back under)");
                }
                self.paused_until = Some(until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testing::{listening, TestHost};
    use crate::{OutboundStanza, Target};
    use causeway_xmpp::{dialback, StreamHeader};
    use std::net::SocketAddr;

    const SECRET: &str = "secret-idn-0001";

    /// bücher.test, as every engine here keeps it.
    const BUECHER: &str = "xn--bcher-kva.test";

    fn header(from: Option<&str>, to: &str) -> String {
        StreamHeader {
            from: from.map(str::to_owned),
            to: Some(to.to_owned()),
            version: Some("1.0".into()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        }
        .to_xml()
    }

    /// Connect to `addr`, write `send`, and read until `done` says so, the peer closes, or
    /// five seconds pass; returns what was read.
    async fn talk(addr: SocketAddr, send: &str, done: impl Fn(&str) -> bool) -> String {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(send.as_bytes()).await.expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            got.extend_from_slice(&buf[..n]);
            if done(&String::from_utf8_lossy(&got)) {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    fn closed(s: &str) -> bool {
        s.contains("</stream:stream>")
    }

    #[tokio::test]
    async fn stream_header_domains_go_through_the_normaliser() {
        let (_s2s, addr) = listening(SECRET, TestHost::serving(&[BUECHER])).await;
        for to in [
            "bücher.test",
            "BÜCHER.TEST.",
            "bücher\u{3002}test",
            "XN--BCHER-KVA.test",
        ] {
            let got = talk(addr, &header(Some("Remote.Test."), to), |s| {
                s.contains("features>") || closed(s)
            })
            .await;
            assert!(
                got.contains("features>") && !got.contains("stream:error"),
                "to={to:?}: {got}"
            );
        }
        // Not served, or not a domain at all: host-unknown alike.
        for to in ["bucher.test", "b_cher.test", "xn--zz.test", ""] {
            let got = talk(addr, &header(Some("remote.test"), to), closed).await;
            assert!(got.contains("<host-unknown "), "to={to:?}: {got}");
        }
        // A from that can never be validated.
        for from in ["a_b.test", "xn--zz.test", "192.0.2.1", ""] {
            let got = talk(addr, &header(Some(from), "bücher.test"), closed).await;
            assert!(got.contains("<invalid-from "), "from={from:?}: {got}");
        }
    }

    #[tokio::test]
    async fn db_verify_checks_keys_over_normalised_domains() {
        let (_s2s, addr) = listening(SECRET, TestHost::serving(&[BUECHER])).await;
        let key = dialback::dialback_key(SECRET, "remote.test", BUECHER, "sid1");
        for (from, to, want) in [
            ("remote.test", BUECHER, "valid"),
            ("REMOTE.test.", "Bücher.test", "valid"),
            ("remote.test", "bücher\u{FF0E}test", "valid"),
            ("remote.test", "bucher.test", "invalid"),
            ("remote_.test", "bücher.test", "invalid"),
            ("remote.test", "xn--zz.test", "invalid"),
        ] {
            let verify = dialback::verify_request(from, to, "sid1", &key).to_xml(ns::SERVER);
            let send = format!("{}{verify}", header(Some("remote.test"), BUECHER));
            let got = talk(addr, &send, |s| s.contains("type='")).await;
            assert!(
                got.contains(&format!("type='{want}'")),
                "{from} -> {to}: want {want}: {got}"
            );
        }
    }

    /// Two engines, each keeping its domain in A-label form, talking through a stanza whose
    /// domains are spelt otherwise everywhere: dialback keys, the authenticated pair and the
    /// stanza's addresses must all meet in the one form.
    #[tokio::test]
    async fn an_idn_peer_spelt_any_way_authenticates_and_is_admitted() {
        let local_host = TestHost::serving(&["local.test"]);
        let remote_host = TestHost::serving(&[BUECHER]);
        let (_local, local_addr) = listening("secret-local-0001", local_host.clone()).await;
        let (remote, remote_addr) = listening("secret-remote-001", remote_host.clone()).await;
        local_host.route(BUECHER, vec![Target::configured(remote_addr)]);
        remote_host.route("local.test", vec![Target::configured(local_addr)]);

        remote
            .send(OutboundStanza {
                from_domain: "BÜCHER.test.".into(),
                to_domain: "Local.Test".into(),
                payload: bytes::Bytes::from_static(
                    "<message from='ana@bücher\u{3002}test/x' to='bob@LOCAL.test'><body>hi</body></message>"
                        .as_bytes(),
                ),
            })
            .await;

        let deadline = Instant::now() + Duration::from_secs(10);
        let delivered = loop {
            if let Some(d) = local_host.delivered.lock().expect("deliveries").first() {
                break d.clone();
            }
            assert!(Instant::now() < deadline, "never delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(delivered.from_domain, BUECHER);
        assert_eq!(delivered.to_domain, "local.test");
        assert!(remote_host.bounced.lock().expect("bounces").is_empty());
        let pairs: Vec<(String, String)> = remote
            .sessions()
            .into_iter()
            .flat_map(|s| s.pairs)
            .collect();
        assert_eq!(pairs, vec![("local.test".to_owned(), BUECHER.to_owned())]);
    }
}
