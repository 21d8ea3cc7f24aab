//! The originating side of an s2s connection as a pure state machine: stream headers and
//! features, STARTTLS (and its refusal under [`TlsMode::Required`]), the peer certificate
//! check of `require_peer_certs`, SASL EXTERNAL (XEP-0178) with dialback after a refusal on the
//! same stream, dialback as originating server (XEP-0220 2.1), the fallback from direct TLS
//! (XEP-0368) to STARTTLS, and the TLS handshake and authentication deadlines; then, on an
//! authenticated session, the timers that keep it alive or end it: whitespace keepalives, the
//! idle close and XEP-0199 pings with their answer deadline.
//!
//! One machine serves two purposes ([`Purpose`]): a session, which authenticates `from` to
//! `to` and then carries stanzas, and a verification connection, which asks `to`'s
//! authoritative server whether a dialback key is genuine (`<db:verify/>`, XEP-0220 2.3).
//!
//! # Call order
//!
//! 1. [`Outbound::new`] before anything else (before DNS): the authentication deadline runs
//!    from then on, over resolving and connecting too.
//! 2. [`Outbound::started`] once a connection is up: plain TCP, or TLS from the first byte
//!    with the certificate's worth.
//! 3. For each thing that happens, one call: [`Outbound::header`], [`Outbound::element`],
//!    [`Outbound::peer_closed`], [`Outbound::frame_error`], [`Outbound::connection_failed`],
//!    [`Outbound::tls_established`] / [`Outbound::tls_failed`] (after [`Action::StartTls`]),
//!    and [`Outbound::timeout`] once [`Outbound::poll_timeout`] has passed (also while the
//!    driver is still resolving or connecting).
//! 4. After each call, drain [`Outbound::poll_action`] and carry the actions out in order; then
//!    sleep until [`Outbound::poll_timeout`] (or the next event).
//! 5. After [`Action::Reconnect`], drop the connection and call [`Outbound::started`] again
//!    with a plain one. A verification connection ends with [`Action::Verified`], a session
//!    that could not be opened with [`Action::Failed`].
//! 6. After [`Action::Authenticated`] the session carries stanzas: the driver writes them and
//!    says so with [`Outbound::written`], reports the answer to an [`Action::Ping`] with
//!    [`Outbound::pong`], and goes on feeding peer events and timeouts until
//!    [`Action::Ended`] or [`Action::PeerDead`].
//!
//! Every call after the end is ignored. What the machine needs to know of the world it asks
//! through [`Env`]: what the peer's certificate names, and whether we are holding back the
//! peer's own streams. Which condition answers which failure is decided in
//! [`crate::error::OutboundFault`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::element::Element;
use crate::error::FrameError;
use crate::error::{parse_stream_error, stream_error, OutboundFault};
use crate::negotiation::inbound::Method;
use crate::negotiation::{clip, CertStatus, Deadlines, TlsMode, Verdict};
use crate::stream::StreamHeader;
use crate::{dialback, ns};

/// What the configuration says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How TLS is used.
    pub tls: TlsMode,
    /// Use SASL EXTERNAL where the peer offers it.
    pub sasl_external: bool,
    /// Our certificate is presented in the TLS handshake (SASL EXTERNAL needs it).
    pub presents_client_cert: bool,
    /// Only peers with a valid certificate naming their domain (sessions only).
    pub require_peer_certs: bool,
    /// The secret our dialback keys are made with (XEP-0185).
    pub dialback_secret: String,
    /// The deadlines: `authentication` bounds the whole negotiation, `tls_handshake` each
    /// STARTTLS handshake, `idle` an authenticated session without a stanza written.
    pub deadlines: Deadlines,
    /// A whitespace keepalive after this long without writing.
    pub keepalive: Duration,
    /// An XEP-0199 ping this often...
    pub ping_interval: Duration,
    /// ...and the peer is dead when no answer comes within this.
    pub ping_timeout: Duration,
}

/// The world as the machine sees it, asked at the moment of each decision.
pub trait Env {
    /// The peer's certificate names `domain` (RFC 6125); false without one.
    fn cert_covers(&self, domain: &str) -> bool;
    /// We are not reading the peer's own streams now (an inbound rate limit): its answer to
    /// a ping may wait behind what we hold back, so a late one is no sign of death.
    fn inbound_held_back(&self) -> bool;
}

/// What the connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A session: authenticate `from` to `to` and carry stanzas.
    Session,
    /// Ask `to`'s authoritative server whether `key`, sent to us (`from`) on our stream
    /// `stream_id`, is genuine.
    Verify {
        /// The id of the stream the key came in on.
        stream_id: String,
        /// The key.
        key: String,
    },
}

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong; decides the stanza condition the queue bounces with.
    pub fault: OutboundFault,
    /// Why, for the log.
    pub reason: String,
}

/// Things worth a debug line that do not change the negotiation's course.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The peer refused SASL EXTERNAL; dialback follows on the same stream.
    SaslRefused {
        /// The name of its answer (clipped).
        answer: String,
    },
    /// An element ignored while awaiting the dialback verdict.
    Ignored {
        /// Its name (clipped).
        element: String,
    },
    /// A reload no longer allows the authenticated session: it closes (a warning).
    NoLongerAllowed {
        /// Why (one of the reload faults of [`OutboundFault`]).
        fault: OutboundFault,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes.
    Send(String),
    /// Run the client side of a TLS handshake (for `to`), finished by
    /// [`Outbound::poll_timeout`]; then call [`Outbound::tls_established`] or
    /// [`Outbound::tls_failed`]. The parser starts a new stream after it.
    StartTls,
    /// SASL succeeded: reset the parser, a new stream starts (our header follows).
    RestartStream,
    /// The direct TLS connection failed before its features (the string says why): drop it
    /// and call [`Outbound::started`] with a plain connection (XEP-0368 fallback).
    Reconnect(String),
    /// For the debug log.
    Note(Note),
    /// What was sent were our last words: flush them and shut the connection down.
    Close,
    /// The session is authenticated: stanzas may flow.
    Authenticated {
        /// How.
        method: Method,
    },
    /// The verification connection's answer (after any [`Action::Close`]).
    Verified(Verdict),
    /// The session could not be opened (after any [`Action::Close`]): drop the connection.
    Failed(Failure),
    /// Send an XEP-0199 ping to the peer (registered, so that its answer is reported with
    /// [`Outbound::pong`]).
    Ping,
    /// The authenticated session is over (after any [`Action::Close`]); the string says why.
    Ended(String),
    /// The peer stopped answering (the string says how): drop this session at once, and the
    /// peer's incoming ones too, so both directions reconnect.
    PeerDead(&'static str),
}

/// Which header exchange a stream header belongs to; it decides what the features lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The first, on a plain connection: STARTTLS comes next.
    Plain,
    /// The first, on a direct TLS connection: a failure falls back to a plain one.
    Direct,
    /// After STARTTLS.
    AfterTls,
    /// After SASL success: the session is authenticated.
    AfterSasl,
}

/// Where the negotiation is. Each variant carries only its own state.
#[derive(Debug)]
enum Phase {
    /// The driver is resolving and connecting.
    Connecting,
    /// Our header sent; awaiting the peer's.
    AwaitingHeader { round: Round },
    /// The peer's version 1.0 header arrived (with its stream id); awaiting its features.
    AwaitingFeatures { round: Round, id: Option<String> },
    /// `<starttls/>` sent; awaiting `<proceed/>`.
    StartingTls,
    /// The handshake is the driver's, until `by`.
    Securing { by: Instant },
    /// `<auth mechanism='EXTERNAL'/>` sent; `id` is the stream id dialback uses after a refusal.
    Sasl { id: Option<String> },
    /// `<db:result/>` sent; awaiting the verdict.
    Dialback,
    /// `<db:verify/>` sent; awaiting the answer.
    Verifying,
    /// Authenticated: stanzas flow, these timers run.
    Established(Liveness),
    /// Verified, failed or ended.
    Done,
}

/// The timers of an authenticated session.
#[derive(Debug)]
struct Liveness {
    /// No stanza written by then closes the session.
    idle_by: Instant,
    /// Nothing written by then sends a whitespace keepalive.
    keepalive_at: Instant,
    /// The next ping, once the last one is answered.
    ping_at: Instant,
    /// The outstanding ping must be answered by then.
    pong_by: Option<Instant>,
}

impl Liveness {
    fn next(&self) -> Instant {
        let ping = self.pong_by.unwrap_or(self.ping_at);
        self.idle_by.min(self.keepalive_at).min(ping)
    }
}

/// One outgoing connection's negotiation. See the module notes for the call order.
#[derive(Debug)]
pub struct Outbound {
    settings: Settings,
    /// Our domain.
    from: String,
    /// The remote domain.
    to: String,
    purpose: Purpose,
    phase: Phase,
    /// The remote socket address of the current connection (for the log).
    peer: Option<SocketAddr>,
    /// TLS is up; the certificate's worth.
    tls: Option<CertStatus>,
    /// The negotiation must be over by then.
    auth_by: Instant,
    actions: VecDeque<Action>,
}

impl Outbound {
    /// A negotiation as `from` (normalised) with `to` (normalised) for `purpose`, begun at
    /// `now` (before resolving `to`).
    pub fn new(settings: Settings, from: &str, to: &str, purpose: Purpose, now: Instant) -> Self {
        Self {
            auth_by: now + settings.deadlines.authentication,
            settings,
            from: from.to_owned(),
            to: to.to_owned(),
            purpose,
            phase: Phase::Connecting,
            peer: None,
            tls: None,
            actions: VecDeque::new(),
        }
    }

    /// The next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        super::next_action(&mut self.actions)
    }

    /// When [`Outbound::timeout`] must be called next (None once done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Done => None,
            Phase::Securing { by } => Some((*by).min(self.auth_by)),
            Phase::Established(l) => Some(l.next()),
            _ => Some(self.auth_by),
        }
    }

    /// True once verified, failed or ended (not while an authenticated session runs).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The deadline at `now` has passed (or not: then nothing happens). When a negotiation
    /// deadline has, what was not yet carried out of the actions is dropped: the negotiation
    /// is given up.
    pub fn timeout(&mut self, now: Instant, env: &dyn Env) {
        if self.is_done() {
            return;
        }
        if let Phase::Established(l) = &mut self.phase {
            if Self::tick(l, now, &self.settings, &mut self.actions, env) {
                self.phase = Phase::Done;
            }
            return;
        }
        if now >= self.auth_by {
            self.actions.clear();
            let reason = match self.purpose {
                Purpose::Session => "s2s negotiation timed out",
                Purpose::Verify { .. } => "verification timed out",
            };
            return self.fail(OutboundFault::NotInTime, reason.into());
        }
        if let Phase::Securing { by } = self.phase {
            if now >= by {
                self.actions.clear();
                self.fail(OutboundFault::TlsTimedOut, "TLS handshake timed out".into());
            }
        }
    }

    /// A connection to `peer` is up: plain TCP (`tls` None), or TLS from the first
    /// byte with the certificate's worth. Our stream header goes out.
    pub fn started(&mut self, peer: SocketAddr, tls: Option<CertStatus>) {
        if !matches!(self.phase, Phase::Connecting) {
            return;
        }
        let round = if tls.is_some() {
            Round::Direct
        } else {
            Round::Plain
        };
        self.peer = Some(peer);
        self.tls = tls;
        self.open(round);
    }

    /// The peer's stream header (`now`: when it arrived).
    pub fn header(&mut self, now: Instant, h: &StreamHeader, env: &dyn Env) {
        match self.phase {
            Phase::Connecting | Phase::Done => {}
            Phase::Established(_) => self.end("unexpected stream restart".into()),
            Phase::AwaitingHeader { round } => {
                if h.version.as_deref() == Some("1.0") {
                    self.phase = Phase::AwaitingFeatures {
                        round,
                        id: h.id.clone(),
                    };
                } else {
                    // A pre-1.0 peer sends no features. The header exchange is over: what
                    // fails from here on is not a reason to fall back from direct TLS.
                    self.phase = Phase::Done;
                    self.features(now, round, h.id.clone(), None, env);
                }
            }
            _ => self.fail(
                OutboundFault::UnexpectedHeader,
                "unexpected stream header".into(),
            ),
        }
    }

    /// A top-level element of the stream (`now`: when it arrived).
    pub fn element(&mut self, now: Instant, el: &Element, env: &dyn Env) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            phase @ (Phase::Connecting | Phase::Done | Phase::Securing { .. }) => {
                self.phase = phase;
            }
            Phase::Established(l) => {
                self.phase = Phase::Established(l);
                if el.is("error", ns::STREAM) {
                    let error = describe_stream_error(el);
                    self.end(format!("stream error from peer: {error}"));
                }
            }
            phase @ Phase::AwaitingHeader { .. } => {
                self.phase = phase;
                self.fail(OutboundFault::NoHeader, "expected a stream header".into());
            }
            Phase::AwaitingFeatures { round, id } => {
                if el.is("features", ns::STREAM) {
                    return self.features(now, round, id, Some(el), env);
                }
                self.phase = Phase::AwaitingFeatures { round, id };
                if el.is("error", ns::STREAM) {
                    let error = describe_stream_error(el);
                    let reason = format!("stream error from {}: {error}", self.to);
                    return self.fail(OutboundFault::PeerError, reason);
                }
                let reason = format!(
                    "expected stream features from {}, got <{}/>",
                    self.to,
                    clip(&el.name)
                );
                self.fail(OutboundFault::NoFeatures, reason);
            }
            phase if el.is("error", ns::STREAM) => {
                self.phase = phase;
                let reason = format!("stream error: {}", describe_stream_error(el));
                self.fail(OutboundFault::PeerError, reason);
            }
            Phase::StartingTls => {
                if el.is("proceed", ns::TLS) {
                    self.actions.push_back(Action::StartTls);
                    self.phase = Phase::Securing {
                        by: now + self.settings.deadlines.tls_handshake,
                    };
                    return;
                }
                let reason = format!("STARTTLS refused by {}: <{}/>", self.to, clip(&el.name));
                self.fail(OutboundFault::StartTlsRefused, reason);
            }
            Phase::Sasl { id } => {
                if el.is("success", ns::SASL) {
                    self.actions.push_back(Action::RestartStream);
                    return self.open(Round::AfterSasl);
                }
                self.note(Note::SaslRefused {
                    answer: clip(&el.name).into_owned(),
                });
                self.dialback(id);
            }
            Phase::Dialback => {
                if !el.is("result", ns::DIALBACK) {
                    self.phase = Phase::Dialback;
                    return self.note(Note::Ignored {
                        element: clip(&el.name).into_owned(),
                    });
                }
                self.dialback_verdict(now, el);
            }
            Phase::Verifying => self.verify_answer(el),
        }
    }

    /// The server is stopping (a drain) and this session's queue is empty: an authenticated
    /// session ends with our closing tag, as an idle one does (nothing of ours is unsent, and on
    /// our outgoing stream the peer sends us nothing to wait for). A negotiation goes on: it
    /// has stanzas waiting to be delivered.
    pub fn close(&mut self) {
        if matches!(self.phase, Phase::Established(_)) {
            self.send(crate::stream::STREAM_CLOSE.to_owned());
            self.actions.push_back(Action::Close);
            self.end("closed: the server is stopping".into());
        }
    }

    /// The peer's `</stream:stream>`.
    pub fn peer_closed(&mut self) {
        let reason = match self.phase {
            Phase::Connecting | Phase::Done => return,
            Phase::Established(_) => {
                self.send(crate::stream::STREAM_CLOSE.to_owned());
                self.actions.push_back(Action::Close);
                return self.end("closed by peer".into());
            }
            Phase::AwaitingHeader { .. } => "expected a stream header",
            _ => "stream closed by peer",
        };
        self.fail(OutboundFault::PeerClosed, reason.into());
    }

    /// The input could not be framed.
    pub fn frame_error(&mut self, e: &FrameError) {
        if matches!(self.phase, Phase::Established(_)) {
            return self.end(format!("bad XML from peer: {e}"));
        }
        if !matches!(self.phase, Phase::Connecting | Phase::Done) {
            self.fail(OutboundFault::Frame, format!("bad XML from peer: {e}"));
        }
    }

    /// The connection failed (a read or write error, the end of the input): what was not yet
    /// carried out of the actions is dropped.
    pub fn connection_failed(&mut self, reason: String) {
        if matches!(self.phase, Phase::Established(_)) {
            self.actions.clear();
            return self.end(reason);
        }
        if !matches!(self.phase, Phase::Connecting | Phase::Done) {
            self.actions.clear();
            self.fail(OutboundFault::Connection, reason);
        }
    }

    /// The TLS handshake after [`Action::StartTls`] completed; `cert` is the peer
    /// certificate's worth. Our new stream header goes out.
    pub fn tls_established(&mut self, cert: CertStatus) {
        if matches!(self.phase, Phase::Securing { .. }) {
            self.tls = Some(cert);
            self.open(Round::AfterTls);
        }
    }

    /// The TLS handshake after [`Action::StartTls`] failed.
    pub fn tls_failed(&mut self, reason: String) {
        if matches!(self.phase, Phase::Securing { .. }) {
            self.fail(OutboundFault::TlsFailed, reason);
        }
    }

    /// The configuration changed: an authenticated session the new one no longer allows ends
    /// with `<policy-violation/>` (a negotiation under way is not affected). `allowed`: the federation policy still allows `to`;
    /// `cert`: the peer's certificate judged again under the new trust (None without TLS).
    /// The new timers apply from their next start.
    pub fn reconfigured(
        &mut self,
        settings: Settings,
        allowed: bool,
        cert: Option<CertStatus>,
        env: &dyn Env,
    ) {
        // A negotiation runs to its end on the settings it began with.
        if !matches!(self.phase, Phase::Established(_)) {
            return;
        }
        self.settings = settings;
        if cert.is_some() {
            self.tls = cert;
        }
        let fault = if !allowed {
            OutboundFault::NoLongerAllowed
        } else if self.settings.tls == TlsMode::Required && self.tls.is_none() {
            OutboundFault::TlsNowRequired
        } else if self.settings.require_peer_certs
            && (self.tls != Some(CertStatus::Valid) || !env.cert_covers(&self.to))
        {
            OutboundFault::CertificateNowRequired
        } else {
            return;
        };
        self.note(Note::NoLongerAllowed { fault });
        let cond = fault
            .stream_condition()
            .unwrap_or(crate::error::StreamCondition::PolicyViolation);
        let mut out = stream_error(cond, Some(&fault.to_string()));
        out.push_str(crate::stream::STREAM_CLOSE);
        self.phase = Phase::Done;
        self.send(out);
        self.actions.push_back(Action::Close);
        self.actions
            .push_back(Action::Ended(format!("closed by reconfiguration: {fault}")));
    }

    /// Stanzas were written at `now` on the authenticated session: it is not idle, and needs
    /// no keepalive for a while.
    pub fn written(&mut self, now: Instant) {
        if let Phase::Established(l) = &mut self.phase {
            l.idle_by = now + self.settings.deadlines.idle;
            l.keepalive_at = now + self.settings.keepalive;
        }
    }

    /// The ping of [`Action::Ping`] was written at `now`: its answer is due within the ping
    /// timeout from here (a slow write does not eat into it), and the next one after the
    /// interval.
    pub fn ping_written(&mut self, now: Instant) {
        if let Phase::Established(l) = &mut self.phase {
            if l.pong_by.is_some() {
                l.pong_by = Some(now + self.settings.ping_timeout);
                l.ping_at = now + self.settings.ping_interval;
            }
        }
    }

    /// While a STARTTLS handshake runs: its own deadline.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Securing { by } => Some(by),
            _ => None,
        }
    }

    /// The outstanding ping was answered (at `now`).
    pub fn pong(&mut self, _now: Instant) {
        if let Phase::Established(l) = &mut self.phase {
            l.pong_by = None;
        }
    }

    /// The timers of an authenticated session at `now` (a function of its parts, so that it can
    /// borrow the phase and the actions at once); true when the session ends.
    fn tick(
        l: &mut Liveness,
        now: Instant,
        settings: &Settings,
        actions: &mut VecDeque<Action>,
        env: &dyn Env,
    ) -> bool {
        if now >= l.idle_by {
            actions.push_back(Action::Send(crate::stream::STREAM_CLOSE.to_owned()));
            actions.push_back(Action::Close);
            actions.push_back(Action::Ended("idle".into()));
            return true;
        }
        match l.pong_by {
            Some(by) if now >= by => {
                if !env.inbound_held_back() {
                    actions.push_back(Action::PeerDead("no answer to a ping"));
                    return true;
                }
                // Not a sign of death while its answer may wait behind what we hold back.
                l.pong_by = Some(now + settings.ping_timeout);
            }
            None if now >= l.ping_at => {
                actions.push_back(Action::Ping);
                l.pong_by = Some(now + settings.ping_timeout);
                l.ping_at = now + settings.ping_interval;
            }
            _ => {}
        }
        if now >= l.keepalive_at {
            actions.push_back(Action::Send(" ".into()));
            l.keepalive_at = now + settings.keepalive;
        }
        false
    }

    /// Send our stream header and await the peer's.
    fn open(&mut self, round: Round) {
        let ours = StreamHeader {
            to: Some(self.to.clone()),
            from: Some(self.from.clone()),
            version: Some("1.0".into()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        };
        self.send(ours.to_xml());
        self.phase = Phase::AwaitingHeader { round };
    }

    /// The header exchange of `round` is complete (`features`: None from a pre-1.0 peer).
    fn features(
        &mut self,
        now: Instant,
        round: Round,
        id: Option<String>,
        features: Option<&Element>,
        env: &dyn Env,
    ) {
        if round == Round::AfterSasl {
            return self.authenticated(now, Method::SaslExternal);
        }
        if round == Round::Plain && self.settings.tls != TlsMode::Disabled {
            let offers_tls = features.is_some_and(|f| f.child("starttls", ns::TLS).is_some());
            if offers_tls {
                self.send(format!("<starttls xmlns='{}'/>", ns::TLS));
                self.phase = Phase::StartingTls;
                return;
            }
            if self.settings.tls == TlsMode::Required {
                let reason = format!(
                    "{} ({}) does not offer STARTTLS and TLS is required",
                    self.to,
                    self.peer_text()
                );
                return self.fail(OutboundFault::TlsRequired, reason);
            }
        }
        if let Purpose::Verify { stream_id, key } = &self.purpose {
            let request = dialback::verify_request(&self.from, &self.to, stream_id, key);
            self.send(request.to_xml(ns::SERVER));
            self.phase = Phase::Verifying;
            return;
        }
        self.authenticate(id, features, env);
    }

    /// Check the peer's certificate, then authenticate: SASL EXTERNAL where the peer offers
    /// it and we present a certificate, dialback otherwise.
    fn authenticate(&mut self, id: Option<String>, features: Option<&Element>, env: &dyn Env) {
        if self.settings.require_peer_certs {
            let status = self.tls.clone().unwrap_or(CertStatus::Absent);
            if status != CertStatus::Valid || !env.cert_covers(&self.to) {
                let reason = format!(
                    "{} ({}) presented no valid certificate for its domain: {status:?}",
                    self.to,
                    self.peer_text()
                );
                return self.fail(OutboundFault::CertificateNotTrusted, reason);
            }
        }
        let offers_external = features
            .and_then(|f| f.child("mechanisms", ns::SASL))
            .is_some_and(|m| m.elements().any(|e| e.text() == "EXTERNAL"));
        if offers_external && self.settings.sasl_external && self.settings.presents_client_cert {
            use base64::Engine;
            let authzid = base64::engine::general_purpose::STANDARD.encode(&self.from);
            let auth = Element::new("auth", ns::SASL)
                .with_attr("mechanism", "EXTERNAL")
                .with_text(&authzid);
            self.send(auth.to_xml(ns::SERVER));
            self.phase = Phase::Sasl { id };
            return;
        }
        self.dialback(id);
    }

    /// Dialback as originating server: send our key for the peer's stream `id`.
    fn dialback(&mut self, id: Option<String>) {
        let Some(id) = id else {
            let reason = format!("{} sent no stream id", self.to);
            return self.fail(OutboundFault::NoStreamId, reason);
        };
        let key = dialback::dialback_key(&self.settings.dialback_secret, &self.to, &self.from, &id);
        let request = dialback::result_request(&self.from, &self.to, &key);
        self.send(request.to_xml(ns::SERVER));
        self.phase = Phase::Dialback;
    }

    /// `<db:result type=…/>`: the receiving server's verdict on our key.
    fn dialback_verdict(&mut self, now: Instant, el: &Element) {
        match el.attr("type") {
            Some("valid") => self.authenticated(now, Method::Dialback),
            Some("invalid") => {
                let reason = format!("{} refused our dialback key for {}", self.to, self.from);
                self.fail(OutboundFault::DialbackInvalid, reason);
            }
            other => {
                let conditions: Vec<String> = el
                    .elements()
                    .flat_map(|e| e.elements())
                    .map(|e| clip(&e.name).into_owned())
                    .collect();
                let reason = format!(
                    "dialback error from {}: type={:?} {}",
                    self.to,
                    other.map(clip),
                    conditions.join(",")
                );
                self.fail(OutboundFault::DialbackError, reason);
            }
        }
    }

    /// An element on the verification connection: the answer is the `<db:verify/>` with our
    /// stream id; anything else is ignored.
    fn verify_answer(&mut self, el: &Element) {
        let Purpose::Verify { stream_id, .. } = &self.purpose else {
            return;
        };
        if !el.is("verify", ns::DIALBACK) || el.attr("id") != Some(stream_id) {
            self.phase = Phase::Verifying;
            return;
        }
        let verdict = match el.attr("type") {
            Some("valid") => Verdict::Valid,
            Some("invalid") => Verdict::Invalid,
            other => Verdict::Failed(format!(
                "db:verify answered with type={:?}",
                other.map(clip)
            )),
        };
        self.send(crate::stream::STREAM_CLOSE.to_owned());
        self.actions.push_back(Action::Close);
        self.actions.push_back(Action::Verified(verdict));
        self.phase = Phase::Done;
    }

    fn authenticated(&mut self, now: Instant, method: Method) {
        let s = &self.settings;
        self.phase = Phase::Established(Liveness {
            idle_by: now + s.deadlines.idle,
            keepalive_at: now + s.keepalive,
            ping_at: now + s.ping_interval,
            pong_by: None,
        });
        self.actions.push_back(Action::Authenticated { method });
    }

    /// The authenticated session is over.
    fn end(&mut self, why: String) {
        self.phase = Phase::Done;
        self.actions.push_back(Action::Ended(why));
    }

    /// End the negotiation for `fault`: with a stream error where
    /// [`OutboundFault::stream_condition`] asks for one (or our closing tag on a verification
    /// connection the peer has our request on); on a direct TLS connection before its
    /// features, fall back to a plain one instead.
    fn fail(&mut self, fault: OutboundFault, reason: String) {
        let first_direct = matches!(
            self.phase,
            Phase::AwaitingHeader {
                round: Round::Direct
            } | Phase::AwaitingFeatures {
                round: Round::Direct,
                ..
            }
        );
        if first_direct && fault != OutboundFault::NotInTime {
            self.phase = Phase::Connecting;
            self.tls = None;
            self.actions.push_back(Action::Reconnect(reason));
            return;
        }
        let verifying = matches!(self.phase, Phase::Verifying);
        self.phase = Phase::Done;
        if let Some(cond) = fault.stream_condition() {
            let mut out = stream_error(cond, Some(&fault.to_string()));
            out.push_str(crate::stream::STREAM_CLOSE);
            self.send(out);
            self.actions.push_back(Action::Close);
        } else if verifying
            && !matches!(fault, OutboundFault::Connection | OutboundFault::NotInTime)
        {
            self.send(crate::stream::STREAM_CLOSE.to_owned());
            self.actions.push_back(Action::Close);
        }
        let end = match self.purpose {
            Purpose::Session => Action::Failed(Failure { fault, reason }),
            Purpose::Verify { .. } => Action::Verified(Verdict::Failed(reason)),
        };
        self.actions.push_back(end);
    }

    fn peer_text(&self) -> String {
        self.peer.map(|p| p.to_string()).unwrap_or_default()
    }

    fn send(&mut self, bytes: String) {
        self.actions.push_back(Action::Send(bytes));
    }

    fn note(&mut self, note: Note) {
        self.actions.push_back(Action::Note(note));
    }
}

/// `"<condition> <text>"` of a received stream error (the text clipped).
fn describe_stream_error(el: &Element) -> String {
    let (cond, text) = parse_stream_error(el);
    format!("{} {}", cond.as_str(), clip(&text.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{StanzaCondition, StreamCondition};

    const FROM: &str = "local.test";
    const TO: &str = "remote.test";
    const SECRET: &str = "secret-local-0001";

    /// What the peer's certificate names; whether we hold its streams back.
    struct World {
        covers: bool,
        held_back: bool,
    }

    impl Env for World {
        fn cert_covers(&self, domain: &str) -> bool {
            self.covers && domain == TO
        }
        fn inbound_held_back(&self) -> bool {
            self.held_back
        }
    }

    const COVERED: World = World {
        covers: true,
        held_back: false,
    };

    fn settings(tls: TlsMode) -> Settings {
        Settings {
            tls,
            sasl_external: true,
            presents_client_cert: false,
            require_peer_certs: false,
            dialback_secret: SECRET.into(),
            deadlines: Deadlines {
                stream_header: Duration::from_secs(10),
                tls_handshake: Duration::from_secs(5),
                authentication: Duration::from_secs(30),
                idle: Duration::from_secs(600),
            },
            keepalive: Duration::from_secs(60),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], 5269))
    }

    fn session(settings: Settings, now: Instant) -> Outbound {
        Outbound::new(settings, FROM, TO, Purpose::Session, now)
    }

    fn drain(m: &mut Outbound) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn send(s: &str) -> Action {
        Action::Send(s.to_owned())
    }

    fn our_header() -> String {
        StreamHeader {
            to: Some(TO.into()),
            from: Some(FROM.into()),
            version: Some("1.0".into()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        }
        .to_xml()
    }

    fn their_header(id: Option<&str>, version: Option<&str>) -> StreamHeader {
        StreamHeader {
            to: Some(FROM.into()),
            from: Some(TO.into()),
            id: id.map(str::to_owned),
            version: version.map(str::to_owned),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        }
    }

    fn v1(id: &str) -> StreamHeader {
        their_header(Some(id), Some("1.0"))
    }

    fn features(children: Vec<Element>) -> Element {
        let mut f = Element::new("features", ns::STREAM);
        for c in children {
            f = f.with_child(c);
        }
        f
    }

    fn starttls() -> Element {
        Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS))
    }

    fn external() -> Element {
        Element::new("mechanisms", ns::SASL)
            .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL"))
    }

    fn dialback_feature() -> Element {
        Element::new("dialback", ns::DIALBACK_FEATURE)
    }

    fn db_result(kind: &str) -> Element {
        Element::new("result", ns::DIALBACK)
            .with_attr("from", TO)
            .with_attr("to", FROM)
            .with_attr("type", kind)
    }

    /// Our `<db:result/>` for the peer's stream `id`.
    fn our_key(id: &str) -> String {
        let key = dialback::dialback_key(SECRET, TO, FROM, id);
        dialback::result_request(FROM, TO, &key).to_xml(ns::SERVER)
    }

    fn stream_error_el(cond: &str, text: &str) -> Element {
        Element::new("error", ns::STREAM)
            .with_child(Element::new(cond, ns::STREAM_ERRORS))
            .with_child(Element::new("text", ns::STREAM_ERRORS).with_text(text))
    }

    /// The failure `m` ended with, after exactly `sent` (and a close when something was sent).
    fn failed_with(m: &mut Outbound, sent: &[&str]) -> Failure {
        let mut actions = drain(m);
        let Some(Action::Failed(f)) = actions.pop() else {
            panic!("not failed: {actions:?}");
        };
        let mut expected: Vec<Action> = sent.iter().map(|s| send(s)).collect();
        if !sent.is_empty() {
            expected.push(Action::Close);
        }
        assert_eq!(actions, expected);
        assert!(m.is_done());
        assert_eq!(m.poll_timeout(), None);
        f
    }

    fn policy_violation(text: &str) -> String {
        let mut out = stream_error(StreamCondition::PolicyViolation, Some(text));
        out.push_str("</stream:stream>");
        out
    }

    /// A session through STARTTLS up to the features after TLS (`cert`), sent by the test.
    fn through_starttls(settings: Settings, now: Instant, cert: CertStatus) -> Outbound {
        let mut m = session(settings, now);
        m.started(peer(), None);
        assert_eq!(drain(&mut m), [send(&our_header())]);
        m.header(now, &v1("plain-id"), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.element(
            now,
            &features(vec![starttls(), dialback_feature()]),
            &COVERED,
        );
        assert_eq!(
            drain(&mut m),
            [send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")]
        );
        m.element(now, &Element::new("proceed", ns::TLS), &COVERED);
        assert_eq!(drain(&mut m), [Action::StartTls]);
        m.tls_established(cert);
        assert_eq!(drain(&mut m), [send(&our_header())]);
        m.header(now, &v1("tls-id"), &COVERED);
        m
    }

    #[test]
    fn starttls_then_dialback() {
        let now = Instant::now();
        let mut m = through_starttls(settings(TlsMode::Required), now, CertStatus::Absent);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        // The key is bound to the stream after TLS.
        assert_eq!(drain(&mut m), [send(&our_key("tls-id"))]);
        m.element(now, &Element::new("message", ns::SERVER), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Note(Note::Ignored {
                element: "message".into()
            })]
        );
        m.element(now, &db_result("valid"), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Authenticated {
                method: Method::Dialback
            }]
        );
        // The session runs on; its first timer is the first ping.
        assert!(!m.is_done());
        assert_eq!(m.poll_timeout(), Some(now + Duration::from_secs(10)));
        // A second verdict means nothing now.
        m.element(now, &db_result("invalid"), &COVERED);
        assert_eq!(drain(&mut m), []);
    }

    fn sasl_settings() -> Settings {
        Settings {
            presents_client_cert: true,
            ..settings(TlsMode::Required)
        }
    }

    fn our_auth() -> String {
        // base64("local.test")
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>bG9jYWwudGVzdA==</auth>"
            .into()
    }

    #[test]
    fn sasl_external_restarts_the_stream_and_authenticates() {
        let now = Instant::now();
        let mut m = through_starttls(sasl_settings(), now, CertStatus::Valid);
        m.element(
            now,
            &features(vec![external(), dialback_feature()]),
            &COVERED,
        );
        assert_eq!(drain(&mut m), [send(&our_auth())]);
        m.element(now, &Element::new("success", ns::SASL), &COVERED);
        assert_eq!(drain(&mut m), [Action::RestartStream, send(&our_header())]);
        m.header(now, &v1("sasl-id"), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.element(now, &features(vec![]), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Authenticated {
                method: Method::SaslExternal
            }]
        );
    }

    #[test]
    fn sasl_is_not_tried_without_our_certificate_or_when_disabled() {
        let now = Instant::now();
        for s in [
            settings(TlsMode::Required),
            Settings {
                sasl_external: false,
                ..sasl_settings()
            },
        ] {
            let mut m = through_starttls(s, now, CertStatus::Valid);
            m.element(now, &features(vec![external()]), &COVERED);
            assert_eq!(drain(&mut m), [send(&our_key("tls-id"))]);
        }
    }

    #[test]
    fn sasl_refused_falls_back_to_dialback_on_the_same_stream() {
        let now = Instant::now();
        let mut m = through_starttls(sasl_settings(), now, CertStatus::Valid);
        m.element(now, &features(vec![external()]), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_auth())]);
        let failure =
            Element::new("failure", ns::SASL).with_child(Element::new("not-authorized", ns::SASL));
        m.element(now, &failure, &COVERED);
        assert_eq!(
            drain(&mut m),
            [
                Action::Note(Note::SaslRefused {
                    answer: "failure".into()
                }),
                send(&our_key("tls-id"))
            ]
        );
        m.element(now, &db_result("valid"), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Authenticated {
                method: Method::Dialback
            }]
        );
    }

    #[test]
    fn direct_tls_skips_starttls() {
        let now = Instant::now();
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), Some(CertStatus::Valid));
        assert_eq!(drain(&mut m), [send(&our_header())]);
        m.header(now, &v1("direct-id"), &COVERED);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_key("direct-id"))]);
    }

    #[test]
    fn direct_tls_failing_before_features_falls_back_to_a_plain_connection() {
        let now = Instant::now();
        let failures: [fn(&mut Outbound); 5] = [
            |m| m.peer_closed(),
            |m| m.connection_failed("connection closed by peer".into()),
            |m| m.frame_error(&FrameError::NotWellFormed("junk".into())),
            |m| {
                m.element(
                    Instant::now(),
                    &Element::new("message", ns::SERVER),
                    &COVERED,
                )
            },
            |m| {
                m.header(Instant::now(), &v1("direct-id"), &COVERED);
                m.element(
                    Instant::now(),
                    &stream_error_el("host-unknown", ""),
                    &COVERED,
                );
            },
        ];
        for fail in failures {
            let mut m = session(settings(TlsMode::Required), now);
            m.started(peer(), Some(CertStatus::Valid));
            drain(&mut m);
            fail(&mut m);
            let actions = drain(&mut m);
            assert!(
                matches!(actions.as_slice(), [Action::Reconnect(_)]),
                "{actions:?}"
            );
            assert!(!m.is_done());
            m.started(peer(), None);
            assert_eq!(drain(&mut m), [send(&our_header())]);
            // The plain connection goes through STARTTLS.
            m.header(now, &v1("plain-id"), &COVERED);
            m.element(now, &features(vec![starttls()]), &COVERED);
            assert_eq!(
                drain(&mut m),
                [send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")]
            );
        }
    }

    #[test]
    fn without_tls_when_optional_or_disabled() {
        let now = Instant::now();
        // Optional, not offered: dialback in the clear.
        let mut m = session(settings(TlsMode::Optional), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &v1("id1"), &COVERED);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_key("id1"))]);
        // Disabled: never, even when offered.
        let mut m = session(settings(TlsMode::Disabled), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &v1("id2"), &COVERED);
        m.element(now, &features(vec![starttls()]), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_key("id2"))]);
        m.element(now, &db_result("valid"), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Authenticated {
                method: Method::Dialback
            }]
        );
    }

    #[test]
    fn a_version_less_peer_sends_no_features() {
        let now = Instant::now();
        let mut m = session(settings(TlsMode::Optional), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &their_header(Some("old-id"), None), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_key("old-id"))]);
        // Under Required it cannot do TLS.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &their_header(Some("old-id"), None), &COVERED);
        let f = failed_with(&mut m, &[&policy_violation("TLS is required")]);
        assert_eq!(f.fault, OutboundFault::TlsRequired);
    }

    #[test]
    fn no_starttls_under_required_is_a_policy_violation() {
        let now = Instant::now();
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &v1("id"), &COVERED);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        let f = failed_with(&mut m, &[&policy_violation("TLS is required")]);
        assert_eq!(
            f,
            Failure {
                fault: OutboundFault::TlsRequired,
                reason: "remote.test (192.0.2.7:5269) does not offer STARTTLS and TLS is required"
                    .into()
            }
        );
        assert_eq!(
            f.fault.stanza_condition(),
            StanzaCondition::RemoteServerNotFound
        );
    }

    #[test]
    fn starttls_refused() {
        let now = Instant::now();
        let mut m = session(settings(TlsMode::Optional), now);
        m.started(peer(), None);
        m.header(now, &v1("id"), &COVERED);
        m.element(now, &features(vec![starttls()]), &COVERED);
        drain(&mut m);
        m.element(now, &Element::new("failure", ns::TLS), &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::StartTlsRefused);
        assert_eq!(f.reason, "STARTTLS refused by remote.test: <failure/>");
    }

    fn securing(now: Instant) -> Outbound {
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        m.header(now, &v1("id"), &COVERED);
        m.element(now, &features(vec![starttls()]), &COVERED);
        m.element(now, &Element::new("proceed", ns::TLS), &COVERED);
        assert_eq!(drain(&mut m).last(), Some(&Action::StartTls));
        m
    }

    #[test]
    fn the_handshake_deadline_is_known_only_while_securing() {
        let now = Instant::now();
        let m = securing(now);
        assert_eq!(m.handshake_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(
            authenticated(settings(TlsMode::Required), now).handshake_deadline(),
            None
        );
    }

    #[test]
    fn tls_handshake_failure() {
        let now = Instant::now();
        let mut m = securing(now);
        m.tls_failed("TLS handshake: invalid peer certificate".into());
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::TlsFailed);
        assert_eq!(f.reason, "TLS handshake: invalid peer certificate");
        assert_eq!(
            f.fault.stanza_condition(),
            StanzaCondition::RemoteServerNotFound
        );
    }

    #[test]
    fn tls_handshake_deadline() {
        let now = Instant::now();
        let mut m = securing(now);
        let by = now + Duration::from_secs(5);
        assert_eq!(m.poll_timeout(), Some(by));
        m.timeout(by - Duration::from_millis(1), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.timeout(by, &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::TlsTimedOut);
        assert_eq!(
            f.fault.stanza_condition(),
            StanzaCondition::RemoteServerTimeout
        );
    }

    #[test]
    fn authentication_deadline_bounds_everything_from_the_start() {
        let now = Instant::now();
        let by = now + Duration::from_secs(30);
        // Still connecting.
        let mut m = session(settings(TlsMode::Required), now);
        assert_eq!(m.poll_timeout(), Some(by));
        m.timeout(by - Duration::from_millis(1), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.timeout(by, &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(
            f,
            Failure {
                fault: OutboundFault::NotInTime,
                reason: "s2s negotiation timed out".into()
            }
        );
        assert_eq!(
            f.fault.stanza_condition(),
            StanzaCondition::RemoteServerTimeout
        );
        // Awaiting the dialback verdict.
        let mut m = through_starttls(settings(TlsMode::Required), now, CertStatus::Absent);
        m.element(now, &features(vec![]), &COVERED);
        drain(&mut m);
        assert_eq!(m.poll_timeout(), Some(by));
        m.timeout(by, &COVERED);
        assert_eq!(failed_with(&mut m, &[]).fault, OutboundFault::NotInTime);
        // A late TLS handshake is bounded by what is left of the negotiation's time.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        m.header(now, &v1("id"), &COVERED);
        m.element(now, &features(vec![starttls()]), &COVERED);
        let late = now + Duration::from_secs(28);
        m.element(late, &Element::new("proceed", ns::TLS), &COVERED);
        drain(&mut m);
        assert_eq!(m.poll_timeout(), Some(by));
        m.timeout(by, &COVERED);
        assert_eq!(failed_with(&mut m, &[]).fault, OutboundFault::NotInTime);
        // A deadline on a direct TLS connection does not fall back.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), Some(CertStatus::Valid));
        drain(&mut m);
        m.timeout(by, &COVERED);
        assert_eq!(failed_with(&mut m, &[]).fault, OutboundFault::NotInTime);
    }

    fn required_certs() -> Settings {
        Settings {
            require_peer_certs: true,
            ..settings(TlsMode::Required)
        }
    }

    /// The fuzzer's finding: a reload reported mid-negotiation changed the settings the
    /// negotiation was judged by. It runs to its end on those it began with.
    #[test]
    fn a_reload_does_not_change_a_negotiation_under_way() {
        let now = Instant::now();
        let mut m = through_starttls(required_certs(), now, CertStatus::Absent);
        m.reconfigured(settings(TlsMode::Optional), true, None, &COVERED);
        assert_eq!(drain(&mut m), []);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        let f = failed_with(&mut m, &[&policy_violation("certificate not trusted")]);
        assert_eq!(f.fault, OutboundFault::CertificateNotTrusted);
    }

    #[test]
    fn required_certificates_must_be_valid_and_name_the_peer() {
        let now = Instant::now();
        let cases = [
            (
                CertStatus::Invalid("expired".into()),
                COVERED,
                "Invalid(\"expired\")",
            ),
            (CertStatus::Absent, COVERED, "Absent"),
            (
                CertStatus::Valid,
                World {
                    covers: false,
                    held_back: false,
                },
                "Valid",
            ),
        ];
        for (cert, world, status) in cases {
            let mut m = through_starttls(required_certs(), now, cert);
            m.element(now, &features(vec![dialback_feature()]), &world);
            let f = failed_with(&mut m, &[&policy_violation("certificate not trusted")]);
            assert_eq!(f.fault, OutboundFault::CertificateNotTrusted);
            assert_eq!(
                f.reason,
                format!(
                    "remote.test (192.0.2.7:5269) presented no valid certificate for its domain: {status}"
                )
            );
        }
        let mut m = through_starttls(required_certs(), now, CertStatus::Valid);
        m.element(now, &features(vec![]), &COVERED);
        assert_eq!(drain(&mut m), [send(&our_key("tls-id"))]);
    }

    fn awaiting_verdict(now: Instant) -> Outbound {
        let mut m = through_starttls(settings(TlsMode::Required), now, CertStatus::Absent);
        m.element(now, &features(vec![]), &COVERED);
        drain(&mut m);
        m
    }

    /// An authenticated session, from `now` on.
    fn authenticated(settings: Settings, now: Instant) -> Outbound {
        let mut m = through_starttls(settings, now, CertStatus::Absent);
        m.element(now, &features(vec![]), &COVERED);
        m.element(now, &db_result("valid"), &COVERED);
        assert_eq!(
            drain(&mut m).last(),
            Some(&Action::Authenticated {
                method: Method::Dialback
            })
        );
        m
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_reload_ends_a_session_it_no_longer_allows() {
        let now = Instant::now();
        let cases = [
            (
                false,
                None,
                settings(TlsMode::Required),
                OutboundFault::NoLongerAllowed,
            ),
            (
                true,
                Some(CertStatus::Invalid("revoked".into())),
                required_certs(),
                OutboundFault::CertificateNowRequired,
            ),
        ];
        for (allowed, cert, new, fault) in cases {
            let mut m = authenticated(settings(TlsMode::Required), now);
            m.reconfigured(new, allowed, cert, &COVERED);
            let mut wire = stream_error(StreamCondition::PolicyViolation, Some(&fault.to_string()));
            wire.push_str(crate::stream::STREAM_CLOSE);
            assert_eq!(
                drain(&mut m),
                vec![
                    Action::Note(Note::NoLongerAllowed { fault }),
                    Action::Send(wire),
                    Action::Close,
                    Action::Ended(format!("closed by reconfiguration: {fault}")),
                ]
            );
            assert!(m.is_done() && m.poll_timeout().is_none());
        }
        // A plaintext session when TLS becomes required.
        let mut m = session(settings(TlsMode::Optional), now);
        m.started(peer(), None);
        m.header(now, &v1("s1"), &COVERED);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        m.element(now, &db_result("valid"), &COVERED);
        drain(&mut m);
        m.reconfigured(settings(TlsMode::Required), true, None, &COVERED);
        assert!(drain(&mut m).contains(&Action::Note(Note::NoLongerAllowed {
            fault: OutboundFault::TlsNowRequired
        })));
        // Still allowed: nothing happens; a session not yet authenticated is not judged here.
        let mut m = authenticated(settings(TlsMode::Required), now);
        m.reconfigured(
            settings(TlsMode::Required),
            true,
            Some(CertStatus::Absent),
            &COVERED,
        );
        assert!(drain(&mut m).is_empty() && !m.is_done());
        let mut m = awaiting_verdict(now);
        m.reconfigured(settings(TlsMode::Required), false, None, &COVERED);
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn a_session_keeps_alive_when_quiet_and_closes_when_idle() {
        let t0 = Instant::now();
        let quiet = Settings {
            ping_interval: secs(3600),
            ..settings(TlsMode::Required)
        };
        let mut m = authenticated(quiet, t0);
        assert_eq!(m.poll_timeout(), Some(t0 + secs(60)));
        m.timeout(t0 + secs(59), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.timeout(t0 + secs(60), &COVERED);
        assert_eq!(drain(&mut m), [send(" ")]);
        assert_eq!(m.poll_timeout(), Some(t0 + secs(120)));
        // Stanzas written put off both the keepalive and the idle close.
        m.written(t0 + secs(100));
        assert_eq!(m.poll_timeout(), Some(t0 + secs(160)));
        m.timeout(t0 + secs(160), &COVERED);
        assert_eq!(drain(&mut m), [send(" ")]);
        m.timeout(t0 + secs(700), &COVERED);
        assert_eq!(
            drain(&mut m),
            [
                send("</stream:stream>"),
                Action::Close,
                Action::Ended("idle".into())
            ]
        );
        assert!(m.is_done());
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn a_drained_session_closes_and_a_negotiation_goes_on() {
        let t0 = Instant::now();
        let mut m = authenticated(settings(TlsMode::Required), t0);
        m.close();
        assert_eq!(
            drain(&mut m),
            [
                send("</stream:stream>"),
                Action::Close,
                Action::Ended("closed: the server is stopping".into())
            ]
        );
        assert!(m.is_done());
        m.close();
        assert_eq!(drain(&mut m), [], "closed once");
        let mut negotiating = through_starttls(settings(TlsMode::Required), t0, CertStatus::Absent);
        drain(&mut negotiating);
        negotiating.close();
        assert_eq!(drain(&mut negotiating), [], "its stanzas wait for it");
        assert!(!negotiating.is_done());
    }

    #[test]
    fn a_session_pings_and_a_peer_that_does_not_answer_is_dead() {
        let t0 = Instant::now();
        let mut m = authenticated(settings(TlsMode::Required), t0);
        m.timeout(t0 + secs(10), &COVERED);
        assert_eq!(drain(&mut m), [Action::Ping]);
        // Awaiting the answer: no second ping, the answer's deadline instead.
        assert_eq!(m.poll_timeout(), Some(t0 + secs(20)));
        m.pong(t0 + secs(12));
        assert_eq!(m.poll_timeout(), Some(t0 + secs(20)));
        m.timeout(t0 + secs(20), &COVERED);
        assert_eq!(drain(&mut m), [Action::Ping]);
        // Late, while we hold its streams back: wait on.
        let holding = World {
            covers: true,
            held_back: true,
        };
        m.timeout(t0 + secs(30), &holding);
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.poll_timeout(), Some(t0 + secs(40)));
        m.timeout(t0 + secs(40), &COVERED);
        assert_eq!(drain(&mut m), [Action::PeerDead("no answer to a ping")]);
        assert!(m.is_done());
        m.pong(t0 + secs(41));
        m.timeout(t0 + secs(1000), &COVERED);
        assert_eq!(drain(&mut m), []);
    }

    #[test]
    fn a_ping_answer_is_awaited_from_when_the_ping_was_written() {
        let t0 = Instant::now();
        let mut m = authenticated(settings(TlsMode::Required), t0);
        m.timeout(t0 + secs(10), &COVERED);
        assert_eq!(drain(&mut m), [Action::Ping]);
        // The write took 4 s: the answer has its whole 10 s from there.
        m.ping_written(t0 + secs(14));
        assert_eq!(m.poll_timeout(), Some(t0 + secs(24)));
        m.timeout(t0 + secs(20), &COVERED);
        assert_eq!(drain(&mut m), []);
        m.timeout(t0 + secs(24), &COVERED);
        assert_eq!(drain(&mut m), [Action::PeerDead("no answer to a ping")]);
    }

    /// Something the peer does to an authenticated session.
    type PeerEnd = fn(&mut Outbound);

    #[test]
    fn a_session_ends_with_the_peer() {
        let now = Instant::now();
        // What the peer does, whether we answer with our closing tag, why it ended.
        let ends: [(PeerEnd, bool, &str); 5] = [
            (
                |m| {
                    m.element(
                        Instant::now(),
                        &stream_error_el("system-shutdown", "bye"),
                        &COVERED,
                    )
                },
                false,
                "stream error from peer: system-shutdown bye",
            ),
            (|m| m.peer_closed(), true, "closed by peer"),
            (
                |m| m.header(Instant::now(), &v1("again"), &COVERED),
                false,
                "unexpected stream restart",
            ),
            (
                |m| m.connection_failed("connection closed by peer".into()),
                false,
                "connection closed by peer",
            ),
            (
                |m| m.frame_error(&FrameError::NotWellFormed("junk".into())),
                false,
                "bad XML from peer: not well-formed: junk",
            ),
        ];
        for (end, answered, why) in ends {
            let mut m = authenticated(settings(TlsMode::Required), now);
            // Stanzas from the peer on our stream are none of our business.
            m.element(now, &Element::new("message", ns::SERVER), &COVERED);
            assert_eq!(drain(&mut m), []);
            end(&mut m);
            let mut expected = Vec::new();
            if answered {
                expected.extend([send("</stream:stream>"), Action::Close]);
            }
            expected.push(Action::Ended(why.into()));
            assert_eq!(drain(&mut m), expected);
            assert!(m.is_done());
        }
    }

    #[test]
    fn dialback_refused_or_answered_with_an_error() {
        let now = Instant::now();
        let mut m = awaiting_verdict(now);
        m.element(now, &db_result("invalid"), &COVERED);
        assert_eq!(
            failed_with(&mut m, &[]),
            Failure {
                fault: OutboundFault::DialbackInvalid,
                reason: "remote.test refused our dialback key for local.test".into()
            }
        );
        let mut m = awaiting_verdict(now);
        let error = db_result("error").with_child(
            Element::new("error", ns::SERVER)
                .with_attr("type", "cancel")
                .with_child(Element::new("item-not-found", ns::STANZA_ERRORS)),
        );
        m.element(now, &error, &COVERED);
        assert_eq!(
            failed_with(&mut m, &[]),
            Failure {
                fault: OutboundFault::DialbackError,
                reason: "dialback error from remote.test: type=Some(\"error\") item-not-found"
                    .into()
            }
        );
    }

    #[test]
    fn the_peer_ending_the_stream() {
        let now = Instant::now();
        let mut m = awaiting_verdict(now);
        m.element(now, &stream_error_el("not-authorized", "go away"), &COVERED);
        assert_eq!(
            failed_with(&mut m, &[]),
            Failure {
                fault: OutboundFault::PeerError,
                reason: "stream error: not-authorized go away".into()
            }
        );
        // Instead of features.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        m.header(now, &v1("id"), &COVERED);
        drain(&mut m);
        m.element(now, &stream_error_el("host-unknown", "who"), &COVERED);
        assert_eq!(
            failed_with(&mut m, &[]).reason,
            "stream error from remote.test: host-unknown who"
        );
        // Something else instead of features.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        m.header(now, &v1("id"), &COVERED);
        drain(&mut m);
        m.element(now, &Element::new("message", ns::SERVER), &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::NoFeatures);
        assert_eq!(
            f.reason,
            "expected stream features from remote.test, got <message/>"
        );
        // Closing.
        let mut m = awaiting_verdict(now);
        m.peer_closed();
        assert_eq!(
            failed_with(&mut m, &[]),
            Failure {
                fault: OutboundFault::PeerClosed,
                reason: "stream closed by peer".into()
            }
        );
        // Dropping the connection.
        let mut m = awaiting_verdict(now);
        m.connection_failed("connection closed by peer".into());
        assert_eq!(failed_with(&mut m, &[]).fault, OutboundFault::Connection);
        // Sending garbage.
        let mut m = awaiting_verdict(now);
        m.frame_error(&FrameError::NotWellFormed("junk".into()));
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::Frame);
        assert_eq!(f.reason, "bad XML from peer: not well-formed: junk");
    }

    #[test]
    fn headers_out_of_turn() {
        let now = Instant::now();
        let mut m = awaiting_verdict(now);
        m.header(now, &v1("again"), &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::UnexpectedHeader);
        assert_eq!(f.reason, "unexpected stream header");
        // An element instead of the header.
        let mut m = session(settings(TlsMode::Required), now);
        m.started(peer(), None);
        drain(&mut m);
        m.element(now, &Element::new("features", ns::STREAM), &COVERED);
        let f = failed_with(&mut m, &[]);
        assert_eq!(f.fault, OutboundFault::NoHeader);
        assert_eq!(f.reason, "expected a stream header");
    }

    #[test]
    fn a_header_without_a_stream_id_cannot_do_dialback() {
        let now = Instant::now();
        let mut m = session(settings(TlsMode::Optional), now);
        m.started(peer(), None);
        drain(&mut m);
        m.header(now, &their_header(None, Some("1.0")), &COVERED);
        m.element(now, &features(vec![]), &COVERED);
        assert_eq!(
            failed_with(&mut m, &[]),
            Failure {
                fault: OutboundFault::NoStreamId,
                reason: "remote.test sent no stream id".into()
            }
        );
    }

    fn verification(now: Instant) -> Outbound {
        let purpose = Purpose::Verify {
            stream_id: "in-id".into(),
            key: "k3y".into(),
        };
        let mut m = Outbound::new(settings(TlsMode::Required), FROM, TO, purpose, now);
        m.started(peer(), None);
        m.header(now, &v1("plain-id"), &COVERED);
        m.element(now, &features(vec![starttls()]), &COVERED);
        m.element(now, &Element::new("proceed", ns::TLS), &COVERED);
        m.tls_established(CertStatus::Absent);
        m.header(now, &v1("tls-id"), &COVERED);
        drain(&mut m);
        m.element(now, &features(vec![dialback_feature()]), &COVERED);
        assert_eq!(
            drain(&mut m),
            [send(
                "<db:verify from='local.test' to='remote.test' id='in-id'>k3y</db:verify>"
            )]
        );
        m
    }

    fn answer(id: &str, kind: &str) -> Element {
        Element::new("verify", ns::DIALBACK)
            .with_attr("from", TO)
            .with_attr("to", FROM)
            .with_attr("id", id)
            .with_attr("type", kind)
    }

    #[test]
    fn verification_answers() {
        let now = Instant::now();
        for (kind, verdict) in [
            ("valid", Verdict::Valid),
            ("invalid", Verdict::Invalid),
            (
                "error",
                Verdict::Failed("db:verify answered with type=Some(\"error\")".into()),
            ),
        ] {
            let mut m = verification(now);
            // Answers about other streams are not ours.
            m.element(now, &answer("other-id", "valid"), &COVERED);
            assert_eq!(drain(&mut m), []);
            m.element(now, &answer("in-id", kind), &COVERED);
            assert_eq!(
                drain(&mut m),
                [
                    send("</stream:stream>"),
                    Action::Close,
                    Action::Verified(verdict)
                ]
            );
            assert!(m.is_done());
        }
    }

    #[test]
    fn verification_failures() {
        let now = Instant::now();
        let mut m = verification(now);
        m.element(
            now,
            &stream_error_el("remote-connection-failed", ""),
            &COVERED,
        );
        assert_eq!(
            drain(&mut m),
            [
                send("</stream:stream>"),
                Action::Close,
                Action::Verified(Verdict::Failed(
                    "stream error: remote-connection-failed ".into()
                ))
            ]
        );
        let mut m = verification(now);
        m.timeout(now + Duration::from_secs(30), &COVERED);
        assert_eq!(
            drain(&mut m),
            [Action::Verified(Verdict::Failed(
                "verification timed out".into()
            ))]
        );
        // Before the request: no TLS where it is required.
        let purpose = Purpose::Verify {
            stream_id: "in-id".into(),
            key: "k3y".into(),
        };
        let mut m = Outbound::new(settings(TlsMode::Required), FROM, TO, purpose, now);
        m.started(peer(), None);
        m.header(now, &their_header(Some("id"), None), &COVERED);
        let actions = drain(&mut m);
        assert_eq!(actions[1], send(&policy_violation("TLS is required")));
        assert_eq!(actions[2], Action::Close);
        assert!(
            matches!(&actions[3], Action::Verified(Verdict::Failed(r)) if r.contains("does not offer STARTTLS"))
        );
    }
}
