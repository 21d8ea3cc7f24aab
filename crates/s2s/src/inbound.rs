//! Inbound s2s streams: we are the receiving server (and the authoritative server for keys we
//! issued).
//!
//! Per connection: stream header and features, STARTTLS (required unless configured otherwise),
//! then any number of dialback requests (one per (remote, local) pair, verified in background
//! tasks), `db:verify` answers, and stanzas. A stanza is delivered only when its `from` and `to`
//! domains form a pair this stream authenticated: that is the anti-spoofing rule.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::net::SocketAddr;

use causeway_xmpp::addr::{jid_domain, normalize_domain};
use causeway_xmpp::{dialback, ns, Element, Event, StreamCondition, StreamHeader, TopLevel};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{Refusal, Source};
use crate::sm::{self, InboundSm};
use crate::throttle::Charged;
use crate::transport::tls_summary;
use crate::verify::Verdict;
use crate::{
    CertStatus, ConnError, Direction, InboundStanza, S2s, SessionEntry, TlsMode, XmlConn,
    LOG_MODULE,
};

impl S2s {
    /// Accept inbound s2s connections (STARTTLS) on `listener` until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.accept_loop(listener, false, shutdown).await;
    }

    /// Accept direct-TLS (XEP-0368) s2s connections on `listener` until `shutdown` resolves:
    /// TLS first (ALPN `xmpp-server`), then the stream. Needs `tls_server`.
    pub async fn serve_direct_tls(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        self.accept_loop(listener, true, shutdown).await;
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        direct_tls: bool,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (tcp, addr) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(module = LOG_MODULE, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(admitted) = self.admit(addr) else {
                        continue;
                    };
                    let s2s = self.clone();
                    tokio::spawn(async move { s2s.handle_inbound(tcp, direct_tls, admitted).await });
                }
            }
        }
    }

    /// A slot for a connection from `addr` (global, and unauthenticated per source), or None:
    /// refused (the socket is dropped unread), counted, and logged at most once a minute per
    /// source.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Admitted> {
        let Ok(slot) = self.inbound_slots.clone().try_acquire_owned() else {
            self.counters.refuse_connection(Refusal::MaxInbound);
            warn!(module = LOG_MODULE, peer = %addr, limit = self.cfg().max_inbound, "too many inbound connections; refused");
            return None;
        };
        let admitted = match self.admission.lock() {
            Ok(mut a) => a.admit(addr.ip(), std::time::Instant::now()),
            Err(_) => return None,
        };
        match admitted {
            Ok(source) => Some(Admitted {
                _slot: slot,
                source: Some(SourceSlot {
                    s2s: self.clone(),
                    source,
                }),
            }),
            Err(refused) => {
                self.counters.refuse_connection(refused.why);
                if refused.report {
                    warn!(module = LOG_MODULE, peer = %addr, source = %Source::of(addr.ip()), limit = refused.why.as_str(), "inbound connection refused by a per-source limit (further refusals of this source are counted, and logged once a minute)");
                }
                None
            }
        }
    }

    async fn handle_inbound(self: Arc<Self>, tcp: TcpStream, direct_tls: bool, admitted: Admitted) {
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
        let mut stream = InboundStream {
            s2s: self.clone(),
            conn,
            entry: entry.clone(),
            stream_id: String::new(),
            header_sent: false,
            header_from: None,
            header_to: None,
            cert: None,
            sasl_done: false,
            authed: HashSet::new(),
            pending: HashSet::new(),
            verdict_tx,
            sm: None,
            auth_deadline: accepted + cfg.deadlines.authentication,
            header_deadline: Some(accepted + cfg.deadlines.stream_header),
            admitted,
            remotes_counted: HashSet::new(),
            verifications: Vec::new(),
            failed_verdicts: 0,
            charge_to: None,
            paused_until: None,
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

/// What an admitted connection holds until it closes: a global slot, and an unauthenticated
/// slot of its source until it authenticates. Both are given back when dropped, on every path.
struct Admitted {
    _slot: OwnedSemaphorePermit,
    source: Option<SourceSlot>,
}

/// An unauthenticated slot of a source, given back when dropped.
struct SourceSlot {
    s2s: Arc<S2s>,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut a) = self.s2s.admission.lock() {
            a.release(self.source);
        }
    }
}

/// At most this much of a peer-chosen string goes into a log line.
const LOG_CLIP: usize = 256;

/// `s`, cut to [`LOG_CLIP`] bytes (on a character boundary) with a marker when cut: log lines
/// never echo unbounded peer data.
pub(crate) fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= LOG_CLIP {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = LOG_CLIP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

/// A stream that failed this many dialback verifications is closed: one failure must not
/// kill the other domain pairs sharing the stream, but a peer may not probe forever.
const MAX_FAILED_VERDICTS: u32 = 3;

/// Dialback verifications one stream may have under way at once (each opens a connection).
const MAX_PENDING_VERIFICATIONS: usize = 16;

/// A dialback verification result, sent from its task back to the stream.
struct PairVerdict {
    remote: String,
    local: String,
    verdict: Verdict,
}

/// What to do after handling one element.
enum Flow {
    Continue,
    /// Close the stream; the string says why (for the log).
    Close(String),
}

/// One inbound connection's state.
struct InboundStream {
    s2s: Arc<S2s>,
    conn: XmlConn,
    entry: Arc<SessionEntry>,
    /// The id we put on our current stream header (dialback keys are bound to it).
    stream_id: String,
    header_sent: bool,
    /// The `from` of the peer's current stream header (normalised, see
    /// [`causeway_xmpp::addr::normalize_domain`]), the domain it claims.
    header_from: Option<String>,
    /// The `to` of the peer's current stream header (normalised, and served here), the local
    /// domain it wants.
    header_to: Option<String>,
    /// The peer certificate's worth, judged once TLS is up.
    cert: Option<CertStatus>,
    /// SASL EXTERNAL succeeded on this connection.
    sasl_done: bool,
    /// Authenticated (remote domain, local domain) pairs.
    authed: HashSet<(String, String)>,
    /// Pairs whose dialback verification is under way.
    pending: HashSet<(String, String)>,
    verdict_tx: mpsc::Sender<PairVerdict>,
    /// XEP-0198 state once the peer enabled stream management.
    sm: Option<InboundSm>,
    /// The first pair must be authenticated by then.
    auth_deadline: Instant,
    /// While waiting for a stream header (after accept and each restart): its deadline.
    header_deadline: Option<Instant>,
    /// The connection's slots; the per-source one is given back at the first authentication.
    admitted: Admitted,
    /// Remote domains this stream counts against their limit of streams.
    remotes_counted: HashSet<String>,
    /// Dialback verifications started for this stream: cancelled when it ends.
    verifications: Vec<AbortHandle>,
    /// Dialback verifications that did not say valid.
    failed_verdicts: u32,
    /// The remote domain whose bucket pays for what this stream reads (see
    /// [`crate::throttle`]): the first one it authenticated. None until then.
    charge_to: Option<String>,
    /// Over the domain's inbound rate: read nothing until then.
    paused_until: Option<Instant>,
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        self.release();
    }
}

impl InboundStream {
    /// The connection's event loop (a wiring function). Until the stream is authenticated
    /// (and while a restarted stream has not sent its header) every step, handlers included,
    /// races the negotiation deadline: a peer cannot hold the connection by stalling inside
    /// one (a TLS handshake, a write it does not read).
    async fn run(&mut self, mut verdicts: mpsc::Receiver<PairVerdict>) -> String {
        let mut generation = self.s2s.generation.subscribe();
        let mut idle_deadline = Instant::now() + self.s2s.cfg().idle_timeout;
        loop {
            let guard = self.negotiation_deadline();
            let flow = tokio::select! {
                flow = self.turn(&mut verdicts, &mut generation, &mut idle_deadline) => flow,
                _ = sm::sleep_until_opt(guard.map(|(at, _)| at)) => {
                    self.s2s.counters.deadline_closes.fetch_add(1, Ordering::Relaxed);
                    let why = guard.map_or("deadline", |(_, why)| why);
                    self.fail(StreamCondition::ConnectionTimeout, why).await
                }
            };
            if let Flow::Close(why) = flow {
                return why;
            }
        }
    }

    /// The deadline of the negotiation phase the stream is in, and what it means; None once
    /// authenticated (idle and write-stall bounds apply then).
    fn negotiation_deadline(&self) -> Option<(Instant, &'static str)> {
        let auth = self
            .authed
            .is_empty()
            .then_some((self.auth_deadline, "not authenticated in time"));
        let header = self
            .header_deadline
            .map(|at| (at, "no stream header in time"));
        match (auth, header) {
            (Some(a), Some(h)) => Some(if h.0 < a.0 { h } else { a }),
            (a, h) => a.or(h),
        }
    }

    /// One event and its handling.
    async fn turn(
        &mut self,
        verdicts: &mut mpsc::Receiver<PairVerdict>,
        generation: &mut tokio::sync::watch::Receiver<u64>,
        idle_deadline: &mut Instant,
    ) -> Flow {
        let cfg = self.s2s.cfg();
        let entry = self.entry.clone();
        let idle = (!self.authed.is_empty()).then_some(*idle_deadline);
        let sm_deadline = self.sm.as_ref().and_then(InboundSm::deadline);
        let paused_until = self.paused_until;
        tokio::select! {
            ev = self.conn.next_event(), if paused_until.is_none() => match ev {
                Ok(Event::StreamOpen(h)) => self.on_header(h).await,
                Ok(Event::Element(tl)) => {
                    self.charge(tl.raw.len());
                    let is_stanza = is_stanza(&tl.element);
                    let flow = self.on_element(tl).await;
                    if is_stanza {
                        *idle_deadline = Instant::now() + cfg.idle_timeout;
                    }
                    flow
                }
                Ok(Event::StreamClose) => {
                    self.conn
                        .send_and_close(causeway_xmpp::stream::STREAM_CLOSE.as_bytes())
                        .await;
                    Flow::Close("closed by peer".into())
                }
                Err(ConnError::Frame(e)) => {
                    let cond = e.condition();
                    self.fail(cond, &e.to_string()).await
                }
                Err(e) => Flow::Close(e.to_string()),
            },
            _ = sm::sleep_until_opt(paused_until) => {
                self.paused_until = None;
                Flow::Continue
            }
            Some(v) = verdicts.recv() => self.on_verdict(v).await,
            h = sm::next_safe(&mut self.sm) => match self.sm.as_mut().and_then(|sm| sm.became_safe(h)) {
                Some(h) => self.send_sm_ack(h).await,
                None => Flow::Continue,
            },
            _ = sm::sleep_until_opt(sm_deadline) => {
                match self.sm.as_mut().map(InboundSm::expire) {
                    Some(h) => self.send_sm_ack(h).await,
                    None => Flow::Continue,
                }
            }
            Ok(()) = generation.changed() => self.recheck().await,
            _ = entry.closer.notified() => {
                self.conn.abort();
                Flow::Close("its server stopped answering pings".into())
            }
            _ = sm::sleep_until_opt(idle) => {
                self.fail(StreamCondition::ConnectionTimeout, "idle").await
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

    /// `pair` is authenticated on this stream (dialback said valid, or SASL EXTERNAL
    /// succeeded): count it against its domain's stream limit (refused when full), give back
    /// the unauthenticated slot, and accept full-size stanzas from now on.
    fn authenticate(&mut self, pair: (String, String), method: &'static str) -> Result<(), ()> {
        if !self.remotes_counted.contains(&pair.0) {
            let counted = match self.s2s.admission.lock() {
                Ok(mut a) => a.add_stream(&pair.0),
                Err(_) => Err(Refusal::TooManyStreams),
            };
            if let Err(why) = counted {
                self.s2s.counters.refuse_connection(why);
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %pair.0, limit = why.as_str(), "too many authenticated streams from this domain; refused");
                return Err(());
            }
            self.remotes_counted.insert(pair.0.clone());
        }
        self.admitted.source = None;
        if self.charge_to.is_none() {
            self.charge_to = Some(pair.0.clone());
        }
        let cfg = self.s2s.cfg();
        self.conn.set_max_stanza_bytes(cfg.limits.max_stanza_bytes);
        self.authed.insert(pair.clone());
        self.entry.update(|i| {
            i.auth = method;
            i.pairs.push(pair);
        });
        Ok(())
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

    /// A (re)started stream: answer with our header and features.
    async fn on_header(&mut self, h: StreamHeader) -> Flow {
        self.stream_id = self.s2s.new_stream_id();
        let our_from = h.to.clone();
        let reply = StreamHeader {
            from: our_from.clone(),
            to: h.from.clone(),
            id: Some(self.stream_id.clone()),
            version: h.version.as_ref().map(|_| "1.0".to_owned()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        };
        if let Err(e) = self.conn.send(reply.to_xml().as_bytes()).await {
            return Flow::Close(e.to_string());
        }
        self.header_sent = true;
        self.header_deadline = None;
        if h.default_ns != ns::SERVER {
            return self
                .fail(StreamCondition::InvalidNamespace, "expected jabber:server")
                .await;
        }
        // A `to` we cannot read is a domain we do not serve (RFC 6120 4.9.3.6); a `from` we
        // cannot read is a claim that can never be validated (4.9.3.9).
        self.header_to = None;
        self.header_from = None;
        if let Some(to) = &h.to {
            match normalize_domain(to) {
                Ok(local) if self.s2s.host.serves(&local) => self.header_to = Some(local),
                _ => {
                    warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, to = %clip(to), "stream to a domain we do not serve");
                    return self
                        .fail(
                            StreamCondition::HostUnknown,
                            "this domain is not served here",
                        )
                        .await;
                }
            }
        }
        if let Some(from) = &h.from {
            match normalize_domain(from) {
                Ok(remote) => self.header_from = Some(remote),
                Err(e) => {
                    warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, from = %clip(from), error = %clip(&e.to_string()), "stream from a malformed domain");
                    return self
                        .fail(StreamCondition::InvalidFrom, "malformed from domain")
                        .await;
                }
            }
        }
        if self.conn.tls.is_some() && self.cert.is_none() {
            self.cert = Some(self.s2s.cert_status(&self.conn, true));
        }
        if self.s2s.cfg().require_peer_certs && self.conn.tls.is_some() && !self.cert_valid() {
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(self.header_from.as_deref().unwrap_or("")), cert = ?self.cert, "peer certificate refused (a valid certificate is required)");
            return self
                .fail(
                    StreamCondition::NotAuthorized,
                    "a valid certificate is required",
                )
                .await;
        }
        if h.version.as_deref() != Some("1.0") {
            return Flow::Continue;
        }
        let features = self.features();
        match self.conn.send(features.as_bytes()).await {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::Close(e.to_string()),
        }
    }

    fn features(&self) -> String {
        let mut f = Element::new("features", ns::STREAM);
        let mode = self.s2s.cfg().tls_mode;
        if self.conn.tls.is_none()
            && self.s2s.cfg().tls_server.is_some()
            && mode != TlsMode::Disabled
        {
            let mut starttls = Element::new("starttls", ns::TLS);
            if mode == TlsMode::Required {
                starttls = starttls.with_child(Element::new("required", ns::TLS));
            }
            f = f.with_child(starttls);
        }
        if self.conn.tls.is_some()
            && self.s2s.cfg().sasl_external
            && !self.sasl_done
            && self.cert_valid()
        {
            f = f.with_child(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        if self.sm_offered() {
            f = f.with_child(Element::new("sm", ns::SM));
        }
        if self.conn.tls.is_some() || mode != TlsMode::Required {
            f = f.with_child(
                Element::new("dialback", ns::DIALBACK_FEATURE)
                    .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
            );
        }
        f.to_xml(ns::SERVER)
    }

    async fn on_element(&mut self, tl: TopLevel) -> Flow {
        let el = &tl.element;
        if el.ns == ns::TLS && el.name == "starttls" {
            return self.on_starttls().await;
        }
        if el.is("auth", ns::SASL) {
            return self.on_sasl_auth(el).await;
        }
        if el.ns == ns::DIALBACK {
            return match (el.name.as_str(), el.attr("type")) {
                ("result", None) => self.on_dialback_request(el).await,
                ("verify", None) => self.on_verify_request(el).await,
                _ => Flow::Continue,
            };
        }
        if el.ns == ns::SM {
            return self.on_sm(el).await;
        }
        if is_stanza(el) {
            return self.on_stanza(tl).await;
        }
        if el.is("error", ns::STREAM) {
            let (cond, text) = causeway_xmpp::error::parse_stream_error(el);
            return Flow::Close(format!(
                "stream error from peer: {} {}",
                cond.as_str(),
                clip(&text.unwrap_or_default())
            ));
        }
        self.fail(
            StreamCondition::UnsupportedStanzaType,
            &format!("unexpected <{}/> in {}", clip(&el.name), clip(&el.ns)),
        )
        .await
    }

    async fn on_starttls(&mut self) -> Flow {
        let cfg = match (&self.s2s.cfg().tls_server, self.s2s.cfg().tls_mode) {
            (Some(cfg), TlsMode::Required | TlsMode::Optional) => Some(cfg.clone()),
            _ => None,
        };
        let Some(cfg) = cfg else {
            let _ = self
                .conn
                .send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>")
                .await;
            return Flow::Close("STARTTLS requested but TLS is not configured".into());
        };
        if self.conn.tls.is_some() {
            return self
                .fail(StreamCondition::PolicyViolation, "TLS is already active")
                .await;
        }
        if let Err(e) = self
            .conn
            .send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
        {
            return Flow::Close(e.to_string());
        }
        let deadlines = self.s2s.cfg().deadlines;
        match self.conn.accept_tls(cfg, deadlines.tls_handshake).await {
            Ok(()) => {
                let tls = self.conn.tls.clone();
                self.entry.update(|i| i.tls = tls);
                self.header_sent = false;
                self.header_deadline = Some(Instant::now() + deadlines.stream_header);
                Flow::Continue
            }
            Err(e) => {
                self.s2s
                    .counters
                    .tls_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, error = %e, "TLS handshake failed");
                Flow::Close(e.to_string())
            }
        }
    }

    /// `<db:result from=remote to=local>key</db:result>`: verify with remote's authoritative
    /// server in the background.
    async fn on_dialback_request(&mut self, el: &Element) -> Flow {
        if self.s2s.cfg().tls_mode == TlsMode::Required && self.conn.tls.is_none() {
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(el.attr("from").unwrap_or("")), "dialback on an unencrypted stream refused (TLS required)");
            return self
                .fail(
                    StreamCondition::PolicyViolation,
                    "TLS is required before authentication",
                )
                .await;
        }
        if self.s2s.cfg().require_peer_certs && !self.cert_valid() {
            return self
                .fail(
                    StreamCondition::NotAuthorized,
                    "a valid certificate is required",
                )
                .await;
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return self
                .fail(
                    StreamCondition::ImproperAddressing,
                    "db:result without from/to",
                )
                .await;
        };
        let (remote, local) = match (normalize_domain(from), normalize_domain(to)) {
            (Ok(r), Ok(l)) => (r, l),
            _ => {
                return self
                    .fail(
                        StreamCondition::ImproperAddressing,
                        "db:result with a bad domain",
                    )
                    .await
            }
        };
        if !self.s2s.host.serves(&local) {
            let reply = dialback_error(&local, &remote, "item-not-found");
            return self.send_or_close(&reply).await;
        }
        if !self.s2s.host.peer_allowed(&remote, Direction::Inbound) {
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %remote, local = %local, "domain refused by the federation policy");
            return self
                .fail(
                    StreamCondition::PolicyViolation,
                    &format!("federation with {remote} is not allowed"),
                )
                .await;
        }
        let pair = (remote.clone(), local.clone());
        if self.authed.contains(&pair) || self.pending.contains(&pair) {
            return Flow::Continue;
        }
        if self.pending.len() >= MAX_PENDING_VERIFICATIONS {
            return self
                .fail(
                    StreamCondition::PolicyViolation,
                    "too many dialback requests at once",
                )
                .await;
        }
        self.pending.insert(pair);
        let key = el.text();
        let s2s = self.s2s.clone();
        let tx = self.verdict_tx.clone();
        let stream_id = self.stream_id.clone();
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
        Flow::Continue
    }

    async fn on_verdict(&mut self, v: PairVerdict) -> Flow {
        let pair = (v.remote.clone(), v.local.clone());
        self.pending.remove(&pair);
        match v.verdict {
            Verdict::Valid
                if self.s2s.cfg().require_peer_certs
                    && !S2s::cert_covers(&self.conn, &v.remote) =>
            {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %v.remote, "certificate does not name the domain (RFC 6125)");
                let reply = dialback::result_response(&v.local, &v.remote, false);
                let _ = self.send_or_close(&reply).await;
                self.fail(
                    StreamCondition::NotAuthorized,
                    "the certificate does not name this domain",
                )
                .await
            }
            Verdict::Valid => {
                if self.authenticate(pair, "dialback").is_err() {
                    let reply = dialback_error(&v.local, &v.remote, "resource-constraint");
                    return self.send_or_close(&reply).await;
                }
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %v.remote, local = %v.local, tls = %tls_summary(&self.conn), "s2s session authenticated");
                let reply = dialback::result_response(&v.local, &v.remote, true);
                self.send_or_close(&reply).await
            }
            Verdict::Invalid => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %v.remote, local = %v.local, "dialback key invalid");
                let reply = dialback::result_response(&v.local, &v.remote, false);
                self.verdict_failed(reply).await
            }
            Verdict::Failed(why) => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %v.remote, local = %v.local, reason = %why, "dialback verification failed");
                let reply = dialback_error(&v.local, &v.remote, "remote-connection-failed");
                self.verdict_failed(reply).await
            }
        }
    }

    /// Answer a verification that did not say valid. The stream goes on (other pairs may
    /// share it, XEP-0220 2.4), until it has failed [`MAX_FAILED_VERDICTS`].
    async fn verdict_failed(&mut self, reply: Element) -> Flow {
        if let Flow::Close(why) = self.send_or_close(&reply).await {
            return Flow::Close(why);
        }
        self.failed_verdicts += 1;
        if self.failed_verdicts >= MAX_FAILED_VERDICTS {
            return self
                .fail(
                    StreamCondition::NotAuthorized,
                    "too many dialback keys refused on this stream",
                )
                .await;
        }
        Flow::Continue
    }

    /// The config changed: keep the pairs it still allows, close the stream if none is left
    /// (or TLS or a certificate is now required and missing).
    async fn recheck(&mut self) -> Flow {
        let cfg = self.s2s.cfg();
        if cfg.tls_mode == TlsMode::Required && self.conn.tls.is_none() && self.header_sent {
            return self
                .fail(StreamCondition::PolicyViolation, "TLS is now required")
                .await;
        }
        if self.conn.tls.is_some() {
            self.cert = Some(self.s2s.cert_status(&self.conn, true));
        }
        if cfg.require_peer_certs && self.conn.tls.is_some() && !self.cert_valid() {
            return self
                .fail(
                    StreamCondition::NotAuthorized,
                    "a valid certificate is now required",
                )
                .await;
        }
        let before = self.authed.len();
        let host = self.s2s.host.clone();
        let conn = &self.conn;
        self.authed.retain(|(remote, local)| {
            host.peer_allowed(remote, Direction::Inbound)
                && host.serves(local)
                && (!cfg.require_peer_certs || S2s::cert_covers(conn, remote))
        });
        if self.authed.len() == before {
            return Flow::Continue;
        }
        let kept: Vec<(String, String)> = self.authed.iter().cloned().collect();
        self.entry.update(|i| i.pairs.retain(|p| kept.contains(p)));
        warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remaining = ?kept, "new config no longer allows some domains on this stream");
        if self.authed.is_empty() {
            return self
                .fail(
                    StreamCondition::PolicyViolation,
                    "federation with this domain is no longer allowed",
                )
                .await;
        }
        Flow::Continue
    }

    fn cert_valid(&self) -> bool {
        self.cert == Some(CertStatus::Valid)
    }

    /// SASL EXTERNAL (XEP-0178): the certificate, valid and naming the domain, authenticates
    /// the stream for (claimed domain, header `to`). On failure the peer may use dialback.
    async fn on_sasl_auth(&mut self, el: &Element) -> Flow {
        match self.judge_sasl(el) {
            Ok((remote, local)) => {
                if self
                    .authenticate((remote.clone(), local.clone()), "SASL EXTERNAL")
                    .is_err()
                {
                    let failure = Element::new("failure", ns::SASL)
                        .with_child(Element::new("temporary-auth-failure", ns::SASL));
                    return self.send_or_close(&failure).await;
                }
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %remote, local = %local, tls = %tls_summary(&self.conn), "s2s session authenticated (SASL EXTERNAL)");
                if let Err(e) = self
                    .conn
                    .send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                    .await
                {
                    return Flow::Close(e.to_string());
                }
                self.conn.restart();
                self.header_sent = false;
                self.header_deadline =
                    Some(Instant::now() + self.s2s.cfg().deadlines.stream_header);
                self.sasl_done = true;
                Flow::Continue
            }
            Err(why) => {
                warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(self.header_from.as_deref().unwrap_or("")), reason = why, "SASL EXTERNAL refused");
                let failure = Element::new("failure", ns::SASL)
                    .with_child(Element::new("not-authorized", ns::SASL));
                self.send_or_close(&failure).await
            }
        }
    }

    /// The (remote, local) pair a SASL EXTERNAL request may authenticate, or why not.
    fn judge_sasl(&self, el: &Element) -> Result<(String, String), &'static str> {
        if el.attr("mechanism") != Some("EXTERNAL") {
            return Err("mechanism is not EXTERNAL");
        }
        if self.sasl_done || !self.cert_valid() {
            return Err("no valid certificate on this stream");
        }
        let text = el.text();
        let text = text.trim();
        let authzid = if text.is_empty() || text == "=" {
            None
        } else {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "authzid is not base64")?;
            Some(String::from_utf8(raw).map_err(|_| "authzid is not UTF-8")?)
        };
        // The header's from and to were normalised when the header arrived.
        let from = self.header_from.as_deref();
        let remote = match (authzid, from) {
            (Some(authzid), from) => {
                let authzid =
                    normalize_domain(&authzid).map_err(|_| "claimed domain is malformed")?;
                // XEP-0178: an authorization identity must be the stream header's `from`.
                if from.is_some_and(|f| f != authzid) {
                    return Err("authzid does not match the stream header's from");
                }
                authzid
            }
            (None, Some(from)) => from.to_owned(),
            (None, None) => return Err("no domain claimed"),
        };
        let local = self.header_to.clone().ok_or("stream header has no to")?;
        if !self.s2s.host.serves(&local) {
            return Err("stream is to a domain not served here");
        }
        if !S2s::cert_covers(&self.conn, &remote) {
            return Err("certificate does not name the claimed domain");
        }
        if !self.s2s.host.peer_allowed(&remote, Direction::Inbound) {
            return Err("domain refused by the federation policy");
        }
        Ok((remote, local))
    }

    /// `<db:verify from=receiving to=originating id>key</db:verify>`: we are the authoritative
    /// server for `to`; answer at once, whatever this stream's own state.
    async fn on_verify_request(&mut self, el: &Element) -> Flow {
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return self
                .fail(
                    StreamCondition::ImproperAddressing,
                    "db:verify without from/to/id",
                )
                .await;
        };
        // Keys are issued over normalised domains (see `S2s::send`); a domain that does not
        // normalise was never issued one.
        let names = normalize_domain(to).ok().zip(normalize_domain(from).ok());
        let valid = names.is_some_and(|(originating, receiving)| {
            self.s2s.host.serves(&originating) && {
                let expected = dialback::dialback_key(
                    &self.s2s.cfg().dialback_secret,
                    &receiving,
                    &originating,
                    id,
                );
                dialback::keys_equal(&expected, &el.text())
            }
        });
        if !valid {
            self.s2s
                .counters
                .dialback_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, receiving = %clip(from), originating = %clip(to), "db:verify for a key we did not issue: invalid");
        }
        let reply = dialback::verify_response(to, from, id, valid);
        self.send_or_close(&reply).await
    }

    /// A stanza: deliver it if admitted, and count it for stream management either way
    /// (XEP-0198 counts every stanza handled, delivered or refused).
    async fn on_stanza(&mut self, tl: TopLevel) -> Flow {
        let stanza = match self.admit(tl).await {
            Ok(stanza) => stanza,
            Err(closed) => return closed,
        };
        let handled = match stanza {
            Some(st) => {
                let payload = st.payload.clone();
                let outcome = if self.sm.is_some() {
                    self.s2s.host.deliver_tracked(st).await
                } else {
                    self.s2s.host.deliver(st).await.map(|()| None)
                };
                match outcome {
                    Ok(handled) => handled,
                    Err(condition) => {
                        // Answered (with an error) counts as handled.
                        self.s2s.answer_undeliverable(&payload, condition).await;
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(sm) = self.sm.as_mut() {
            sm.stanza(handled);
        }
        Flow::Continue
    }

    /// The stanza to deliver if its (from, to) domain pair is authenticated on this stream;
    /// `None` for one refused (or our own ping's answer) while the stream goes on; the closing
    /// flow when it must end.
    async fn admit(&mut self, tl: TopLevel) -> Result<Option<InboundStanza>, Flow> {
        let el = &tl.element;
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(self
                .fail(
                    StreamCondition::ImproperAddressing,
                    "stanza without from or to",
                )
                .await);
        };
        let Ok(from_domain) = jid_domain(from) else {
            return Err(self
                .fail(StreamCondition::InvalidFrom, "malformed from address")
                .await);
        };
        let to_domain = match jid_domain(to) {
            Ok(d) => d,
            Err(_) => {
                self.refuse(&from_domain, to, "malformed to address");
                return Ok(None);
            }
        };
        let pair = (from_domain, to_domain);
        if !self.authed.contains(&pair) {
            if self.authed.iter().any(|(r, _)| *r == pair.0) && !self.s2s.host.serves(&pair.1) {
                // An authenticated peer addressing a domain we do not serve: we cannot answer
                // as that domain with a stanza error, so the stream ends with <host-unknown/>
                // (RFC 6120 4.9.3.6, as Prosody does); the peer learns at once instead of
                // losing stanzas silently.
                self.refuse(&pair.0, to, "to a domain not served here");
                return Err(self
                    .fail(
                        StreamCondition::HostUnknown,
                        &format!("{} is not served here", pair.1),
                    )
                    .await);
            }
            self.s2s.counters.refuse(crate::RefusalReason::Spoofed);
            warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, from = %clip(from), to = %clip(to), "stanza from a domain this stream did not authenticate: refused");
            return Err(self
                .fail(
                    StreamCondition::InvalidFrom,
                    &format!("{} is not authenticated on this stream", pair.0),
                )
                .await);
        }
        self.entry.touch();
        let is_answer = el.name == "iq" && matches!(el.attr("type"), Some("result" | "error"));
        if is_answer && el.attr("id").is_some_and(|id| self.s2s.take_pong(id)) {
            // The answer to one of our liveness pings: ours, not the inside's.
            return Ok(None);
        }
        self.entry.stanzas_in.fetch_add(1, Ordering::Relaxed);
        self.s2s.counters.stanzas_in.fetch_add(1, Ordering::Relaxed);
        Ok(Some(InboundStanza {
            payload: tl.forwardable(ns::SERVER),
            from_domain: pair.0,
            to_domain: pair.1,
        }))
    }

    /// Stream management is offered after authentication by SASL (the restarted stream's
    /// features); a peer authenticated by dialback may still enable it (XEP-0198 5: never
    /// before authentication).
    fn sm_offered(&self) -> bool {
        self.s2s.cfg().stream_management && self.sasl_done
    }

    /// `<enable/>`, `<r/>` (and `<a/>`, which needs nothing: we send no stanzas here).
    async fn on_sm(&mut self, el: &Element) -> Flow {
        match el.name.as_str() {
            "enable" => {
                let allowed = self.s2s.cfg().stream_management && !self.authed.is_empty();
                if !allowed || self.sm.is_some() {
                    let failed = Element::new("failed", ns::SM)
                        .with_child(Element::new("unexpected-request", ns::STANZA_ERRORS));
                    return self.send_or_close(&failed).await;
                }
                self.sm = Some(InboundSm::new());
                info!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(self.header_from.as_deref().unwrap_or("")), "stream management enabled (XEP-0198)");
                self.send_or_close(&Element::new("enabled", ns::SM)).await
            }
            "r" => match self.sm.as_mut().and_then(|sm| sm.request(Instant::now())) {
                Some(h) => self.send_sm_ack(h).await,
                None => Flow::Continue,
            },
            _ => Flow::Continue,
        }
    }

    async fn send_sm_ack(&mut self, h: u32) -> Flow {
        self.send_or_close(&Element::new("a", ns::SM).with_attr("h", &h.to_string()))
            .await
    }

    fn refuse(&self, from_domain: &str, to: &str, why: &str) {
        self.s2s.counters.refuse(crate::RefusalReason::Unroutable);
        warn!(module = LOG_MODULE, direction = "incoming", peer = %self.conn.peer, remote = %clip(from_domain), to = %clip(to), reason = why, "stanza refused");
    }

    async fn send_or_close(&mut self, el: &Element) -> Flow {
        match self.conn.send(el.to_xml(ns::SERVER).as_bytes()).await {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::Close(e.to_string()),
        }
    }

    /// Send a stream error (after a header if none was sent yet) and close.
    async fn fail(&mut self, cond: StreamCondition, text: &str) -> Flow {
        let mut out = String::new();
        if !self.header_sent {
            let h = StreamHeader {
                id: Some(self.s2s.new_stream_id()),
                version: Some("1.0".into()),
                default_ns: ns::SERVER.into(),
                ..Default::default()
            };
            out.push_str(&h.to_xml());
        }
        out.push_str(&causeway_xmpp::error::stream_error(cond, Some(text)));
        out.push_str(causeway_xmpp::stream::STREAM_CLOSE);
        self.conn.send_and_close(out.as_bytes()).await;
        Flow::Close(format!("{}: {text}", cond.as_str()))
    }
}

fn is_stanza(el: &Element) -> bool {
    (el.ns == ns::SERVER || el.ns == ns::CLIENT)
        && matches!(el.name.as_str(), "message" | "presence" | "iq")
}

/// `<db:result type='error'>` with an XEP-0220 error condition.
fn dialback_error(from: &str, to: &str, condition: &str) -> Element {
    Element::new("result", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "error")
        .with_child(
            Element::new("error", ns::SERVER)
                .with_attr("type", "cancel")
                .with_child(Element::new(condition, ns::STANZA_ERRORS)),
        )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testing::{listening, TestHost};
    use crate::{OutboundStanza, Target};

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
