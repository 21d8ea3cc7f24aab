//! The receiving side of an s2s connection as a pure state machine: stream headers and
//! features, STARTTLS, SASL EXTERNAL (XEP-0178), dialback as receiving server (XEP-0220 2.2)
//! and as authoritative server (`<db:verify/>`), stream management's `<enable/>` (XEP-0198),
//! the anti-spoofing rule for stanzas, and the header, authentication and idle deadlines.
//!
//! # Call order
//!
//! 1. [`Inbound::new`] when a connection is accepted (with the certificate's worth when TLS came
//!    first, XEP-0368).
//! 2. For each thing that happens, one call: [`Inbound::header`], [`Inbound::element`],
//!    [`Inbound::peer_closed`], [`Inbound::frame_error`], [`Inbound::tls_established`] /
//!    [`Inbound::tls_failed`] (after [`Action::StartTls`]), [`Inbound::verdict`] (after
//!    [`Action::Verify`]), [`Inbound::reconfigured`], and [`Inbound::timeout`] once
//!    [`Inbound::poll_timeout`] has passed.
//! 3. After each call, drain [`Inbound::poll_action`] and carry the actions out in order; then
//!    sleep until [`Inbound::poll_timeout`] (or the next event).
//! 4. Stop after [`Action::Close`]: every later call is ignored.
//!
//! What the machine needs to know of the world it asks through [`Env`]: which domains are
//! served, what the federation policy allows, what the peer's certificate names, and whether
//! a remote domain may have another stream.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use crate::addr::{jid_domain, normalize_domain};
use crate::element::Element;
use crate::error::Fault;
use crate::error::FrameError;
use crate::framer::TopLevel;
use crate::negotiation::{clip, CertStatus, Deadlines, TlsMode, Verdict};
use crate::stream::StreamHeader;
use crate::{dialback, ns};

/// A stream that failed this many dialback verifications is closed: one failure must not
/// kill the other domain pairs sharing the stream, but a peer may not probe forever.
pub const MAX_FAILED_VERDICTS: u32 = 3;

/// Dialback verifications one stream may have under way at once (each opens a connection).
pub const MAX_PENDING_VERIFICATIONS: usize = 16;

/// What the configuration says; replaced on reload ([`Inbound::reconfigured`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How TLS is used.
    pub tls: TlsMode,
    /// A server certificate is configured: STARTTLS can be offered.
    pub tls_available: bool,
    /// Offer and accept SASL EXTERNAL.
    pub sasl_external: bool,
    /// Accept XEP-0198 `<enable/>` (and offer it after SASL).
    pub stream_management: bool,
    /// Only peers with a valid certificate naming their domain.
    pub require_peer_certs: bool,
    /// The secret our dialback keys are made with (XEP-0185).
    pub dialback_secret: String,
    /// During a rollover, the secret used before: keys made with it still verify.
    pub dialback_previous: Option<String>,
    /// The deadlines.
    pub deadlines: Deadlines,
}

/// The world as the machine sees it, asked at the moment of each decision.
pub trait Env {
    /// `domain` (normalised) is served here.
    fn serves(&self, domain: &str) -> bool;
    /// The federation policy allows incoming streams from `remote` (normalised).
    fn peer_allowed(&self, remote: &str) -> bool;
    /// The peer's certificate names `domain` (RFC 6125); false without one.
    fn cert_covers(&self, domain: &str) -> bool;
    /// Count this stream against `remote`'s limit of authenticated streams (at most once per
    /// remote and stream); false when the limit is reached.
    fn count_stream(&mut self, remote: &str) -> bool;
    /// A fresh, unguessable stream id.
    fn new_stream_id(&mut self) -> String;
}

/// How a pair was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Dialback (XEP-0220).
    Dialback,
    /// SASL EXTERNAL with the certificate (XEP-0178).
    SaslExternal,
}

impl Method {
    /// As logged and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Dialback => "dialback",
            Method::SaslExternal => "SASL EXTERNAL",
        }
    }
}

/// Why a stanza was refused without ending the stream, or the refusal that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its `to` is malformed, or not served here.
    Unroutable,
    /// Its `from` domain is not authenticated on this stream.
    Spoofed,
}

/// Why the stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// We end it with a stream error (already in the bytes to send).
    Fault(Fault),
    /// The peer closed its stream (our `</stream:stream>` is in the bytes to send).
    PeerClosed,
    /// The peer sent a stream error: its condition and text (clipped).
    PeerError(String),
    /// STARTTLS was asked for but cannot be offered (`<failure/>` is in the bytes to send).
    TlsUnavailable,
    /// The TLS handshake failed or took too long.
    TlsFailed(String),
    /// A shutdown ([`Inbound::shutdown`]) waited for the peer's closing tag until its deadline.
    ShutDown,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Fault(fault) => write!(f, "{}: {fault}", fault.condition().as_str()),
            Close::PeerClosed => f.write_str("closed by peer"),
            Close::PeerError(e) => write!(f, "stream error from peer: {e}"),
            Close::TlsUnavailable => f.write_str("STARTTLS requested but TLS is not configured"),
            Close::TlsFailed(e) => write!(f, "TLS handshake: {e}"),
            Close::ShutDown => f.write_str("shut down (the peer did not close its stream in time)"),
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes.
    Send(String),
    /// Run the server side of a TLS handshake (the `<proceed/>` before it is written first),
    /// finished by [`Inbound::poll_timeout`]; then call [`Inbound::tls_established`] or
    /// [`Inbound::tls_failed`]. The parser starts a new stream after it.
    StartTls,
    /// SASL succeeded: the bytes after those sent so far start a new stream (reset the parser).
    RestartStream,
    /// Ask `remote`'s authoritative server whether `key` is genuine; report with
    /// [`Inbound::verdict`].
    Verify {
        /// The originating domain.
        remote: String,
        /// Our domain the key is for.
        local: String,
        /// The stream id the key is bound to.
        stream_id: String,
        /// The key.
        key: String,
    },
    /// The pair is authenticated on this stream: full-size stanzas from now on, the source's
    /// unauthenticated slot is free.
    Authenticated {
        /// The remote domain.
        remote: String,
        /// Our domain.
        local: String,
        /// How.
        method: Method,
    },
    /// A stanza passed the address checks: deliver it.
    Deliver {
        /// The authenticated domain of its `from`.
        from_domain: String,
        /// The domain of its `to`, served here.
        to_domain: String,
        /// The stanza.
        stanza: TopLevel,
    },
    /// A stanza was refused (it counts as handled for stream management).
    Refused {
        /// Its sender's domain (or `from` as given).
        from: String,
        /// Its `to` as given (clipped).
        to: String,
        /// Which rule refused it.
        refusal: Refusal,
        /// For the log.
        why: &'static str,
    },
    /// The peer enabled stream management: count stanzas from here on.
    EnableSm,
    /// The peer asked for an acknowledgement (`<r/>`) with stream management on.
    AckRequested,
    /// A reload dropped pairs from this stream; these remain.
    PairsDropped(Vec<(String, String)>),
    /// Something worth a warning that does not change the stream's course by itself.
    Warn(Warning),
    /// Write what was sent, then close the connection; `Close` says why.
    Close(Close),
}

/// Warnings for the log, each with what an administrator needs to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The stream header's `to` is not served here.
    UnservedStreamTo {
        /// As given (clipped).
        to: String,
    },
    /// The stream header's `from` does not normalise.
    MalformedStreamFrom {
        /// As given (clipped).
        from: String,
        /// Why not.
        error: String,
    },
    /// A valid certificate is required and this one is not.
    CertificateRefused {
        /// The domain the header claims.
        remote: String,
        /// What the certificate is worth.
        cert: Option<CertStatus>,
    },
    /// Dialback on plaintext while TLS is required.
    DialbackWithoutTls {
        /// The claimed domain (clipped).
        remote: String,
    },
    /// The federation policy refused the domain.
    PolicyRefused {
        /// The remote domain.
        remote: String,
        /// Our domain.
        local: String,
    },
    /// The key was genuine but the certificate does not name the domain.
    CertificateDoesNotName {
        /// The remote domain.
        remote: String,
    },
    /// The authoritative server said the key is not genuine.
    KeyInvalid {
        /// The remote domain.
        remote: String,
        /// Our domain.
        local: String,
    },
    /// No answer about a key could be had.
    VerificationFailed {
        /// The remote domain.
        remote: String,
        /// Our domain.
        local: String,
        /// Why.
        reason: String,
    },
    /// SASL EXTERNAL was refused.
    SaslRefused {
        /// The domain the header claims.
        remote: String,
        /// Why.
        reason: &'static str,
    },
    /// A `<db:verify/>` for a key we did not issue.
    VerifyInvalid {
        /// The receiving server (clipped).
        receiving: String,
        /// The domain it claims we are (clipped).
        originating: String,
    },
}

/// Where the stream is in its life. Each variant carries only its own state.
#[derive(Debug)]
enum Phase {
    /// Waiting for the peer's stream header (after accept and each restart) until `by`.
    AwaitingHeader {
        by: Instant,
    },
    /// Headers exchanged: negotiation elements and stanzas are read.
    Open(OpenStream),
    /// `<proceed/>` sent; the handshake is the driver's, until `by`.
    Securing {
        by: Instant,
    },
    Closed,
}

/// The state of an open stream (one header exchange).
#[derive(Debug)]
struct OpenStream {
    /// The id on our header (dialback keys are bound to it).
    stream_id: String,
    /// The header's `from`, normalised: the domain it claims.
    from: Option<String>,
    /// The header's `to`, normalised and served here.
    to: Option<String>,
}

/// One inbound connection's negotiation. See the module notes for the call order.
#[derive(Debug)]
pub struct Inbound {
    settings: Settings,
    phase: Phase,
    /// TLS is up; the certificate's worth.
    tls: Option<CertStatus>,
    /// SASL EXTERNAL succeeded on this connection.
    sasl_done: bool,
    /// Authenticated (remote, local) pairs.
    authed: HashSet<(String, String)>,
    /// Pairs whose dialback verification is under way.
    pending: HashSet<(String, String)>,
    /// Verifications that did not say valid.
    failed_verdicts: u32,
    /// The first pair must be authenticated by then.
    auth_by: Instant,
    /// Once authenticated: no stanza by then closes the stream.
    idle_by: Instant,
    /// The peer enabled stream management.
    sm: bool,
    /// The id on the header of a stream error sent before any header of ours.
    error_id: String,
    /// Shutting down ([`Inbound::shutdown`]): our `system-shutdown` and closing tag are sent,
    /// what the peer still sends is read until it closes its stream or this instant.
    closing_by: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Inbound {
    /// A connection accepted at `now`; `tls` is the certificate's worth when TLS came first;
    /// `error_id` goes on our header if a stream error has to precede the peer's.
    pub fn new(
        settings: Settings,
        now: Instant,
        tls: Option<CertStatus>,
        error_id: String,
    ) -> Self {
        let d = settings.deadlines;
        Self {
            phase: Phase::AwaitingHeader {
                by: now + d.stream_header,
            },
            tls,
            sasl_done: false,
            authed: HashSet::new(),
            pending: HashSet::new(),
            failed_verdicts: 0,
            auth_by: now + d.authentication,
            idle_by: now + d.idle,
            sm: false,
            error_id,
            closing_by: None,
            actions: VecDeque::new(),
            settings,
        }
    }

    /// The next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        super::next_action(&mut self.actions)
    }

    /// When [`Inbound::timeout`] must be called next (None once closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing_by.is_some() && !self.is_closed() {
            return self.closing_by;
        }
        let phase = match &self.phase {
            Phase::AwaitingHeader { by } | Phase::Securing { by } => Some(*by),
            Phase::Open(_) => None,
            Phase::Closed => return None,
        };
        let auth = if self.authed.is_empty() {
            self.auth_by
        } else {
            self.idle_by
        };
        Some(phase.map_or(auth, |p| p.min(auth)))
    }

    /// The deadline at `now` has passed (or not: then nothing happens).
    pub fn timeout(&mut self, now: Instant) {
        if let Some(by) = self.closing_by {
            if now >= by && !self.is_closed() {
                self.close(Close::ShutDown);
            }
            return;
        }
        let fault = match &self.phase {
            Phase::Closed => return,
            Phase::AwaitingHeader { by } | Phase::Securing { by } if now >= *by => {
                if self.authed.is_empty() && self.auth_by <= *by {
                    Fault::NotAuthenticatedInTime
                } else {
                    Fault::NoHeaderInTime
                }
            }
            _ if self.authed.is_empty() && now >= self.auth_by => Fault::NotAuthenticatedInTime,
            _ if !self.authed.is_empty() && now >= self.idle_by => Fault::Idle,
            _ => return,
        };
        if matches!(self.phase, Phase::Securing { .. }) && fault == Fault::NoHeaderInTime {
            // The handshake itself ran out of time: nothing can be written in the clear.
            return self.close(Close::TlsFailed("handshake timed out".into()));
        }
        self.fail(fault);
    }

    /// The authenticated (remote, local) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = &(String, String)> {
        self.authed.iter()
    }

    /// Negotiation deadlines apply: no pair authenticated yet, or a restarted stream's
    /// header (or a TLS handshake) awaited.
    pub fn negotiating(&self) -> bool {
        match self.phase {
            Phase::Closed => false,
            Phase::Open(_) => self.authed.is_empty(),
            Phase::AwaitingHeader { .. } | Phase::Securing { .. } => true,
        }
    }

    /// The driver finished handling a stanza at `now` (a delivery may wait for room):
    /// idleness counts from here.
    pub fn stanza_handled(&mut self, now: Instant) {
        let idle_by = now + self.settings.deadlines.idle;
        if idle_by > self.idle_by {
            self.idle_by = idle_by;
        }
    }

    /// The domain the current stream header claims (normalised), once it arrived.
    pub fn claimed(&self) -> Option<&str> {
        match &self.phase {
            Phase::Open(open) => open.from.as_deref(),
            _ => None,
        }
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The peer's stream header: answer with ours and (for version 1.0) the features.
    pub fn header(&mut self, h: &StreamHeader, env: &mut dyn Env) {
        if !matches!(self.phase, Phase::AwaitingHeader { .. }) {
            if !self.is_closed() {
                self.fail(Fault::Frame(FrameError::BadFormat(
                    "unexpected stream header".into(),
                )));
            }
            return;
        }
        let stream_id = env.new_stream_id();
        let reply = StreamHeader {
            from: h.to.clone(),
            to: h.from.clone(),
            id: Some(stream_id.clone()),
            version: h.version.as_ref().map(|_| "1.0".to_owned()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        };
        self.send(reply.to_xml());
        self.phase = Phase::Open(OpenStream {
            stream_id,
            from: None,
            to: None,
        });
        if h.default_ns != ns::SERVER {
            return self.fail(Fault::WrongNamespace);
        }
        // A `to` we cannot read is a domain we do not serve (RFC 6120 4.9.3.6); a `from` we
        // cannot read is a claim that can never be validated (4.9.3.9).
        let mut to = None;
        if let Some(given) = &h.to {
            match normalize_domain(given) {
                Ok(local) if env.serves(&local) => to = Some(local),
                _ => {
                    self.warn(Warning::UnservedStreamTo {
                        to: clip(given).into_owned(),
                    });
                    return self.fail(Fault::UnservedStreamTo);
                }
            }
        }
        let mut from = None;
        if let Some(given) = &h.from {
            match normalize_domain(given) {
                Ok(remote) => from = Some(remote),
                Err(e) => {
                    self.warn(Warning::MalformedStreamFrom {
                        from: clip(given).into_owned(),
                        error: clip(&e.to_string()).into_owned(),
                    });
                    return self.fail(Fault::MalformedStreamFrom);
                }
            }
        }
        if let Phase::Open(open) = &mut self.phase {
            open.from = from.clone();
            open.to = to;
        }
        if self.settings.require_peer_certs && self.tls.is_some() && !self.cert_valid() {
            self.warn(Warning::CertificateRefused {
                remote: clip(from.as_deref().unwrap_or("")).into_owned(),
                cert: self.tls.clone(),
            });
            return self.fail(Fault::CertificateRequired);
        }
        if h.version.as_deref() == Some("1.0") {
            let features = self.features();
            self.send(features);
        }
    }

    /// A top-level element of the stream (`now`: when it arrived).
    pub fn element(&mut self, now: Instant, tl: TopLevel, env: &mut dyn Env) {
        if !matches!(self.phase, Phase::Open(_)) {
            if !self.is_closed() {
                self.fail(Fault::Frame(FrameError::BadFormat(
                    "element before the stream header".into(),
                )));
            }
            return;
        }
        let el = &tl.element;
        if el.is("starttls", ns::TLS) {
            return self.starttls(now);
        }
        if el.is("auth", ns::SASL) {
            return self.sasl(now, el, env);
        }
        if el.ns == ns::DIALBACK {
            return match (el.name.as_str(), el.attr("type")) {
                ("result", None) => self.dialback_request(el, env),
                ("verify", None) => self.verify_request(el, env),
                _ => {}
            };
        }
        if el.ns == ns::SM {
            return self.sm_element(el);
        }
        if is_stanza(el) {
            self.stanza(tl, env);
            self.idle_by = now + self.settings.deadlines.idle;
            return;
        }
        if el.is("error", ns::STREAM) {
            let (cond, text) = crate::error::parse_stream_error(el);
            let text = text.unwrap_or_default();
            return self.close(Close::PeerError(format!(
                "{} {}",
                cond.as_str(),
                clip(&text)
            )));
        }
        self.fail(Fault::Unexpected {
            name: clip(&el.name).into_owned(),
            ns: clip(&el.ns).into_owned(),
        });
    }

    /// The peer's `</stream:stream>`: answer with ours (unless a shutdown sent it already)
    /// and close.
    pub fn peer_closed(&mut self) {
        if self.is_closed() {
            return;
        }
        if self.closing_by.is_none() {
            self.send(crate::stream::STREAM_CLOSE.to_owned());
        }
        self.close(Close::PeerClosed);
    }

    /// The server is stopping (a drain). An authenticated stream gets `system-shutdown` and
    /// our closing tag, and stays open for reading until the peer closes its stream or `by`:
    /// stanzas it had sent before it saw ours still arrive and are delivered. A stream still
    /// negotiating is closed with the stream error at once. Called again, nothing happens.
    pub fn shutdown(&mut self, by: Instant) {
        if self.is_closed() || self.closing_by.is_some() {
            return;
        }
        if self.authed.is_empty() || !matches!(self.phase, Phase::Open(_)) {
            return self.fail(Fault::Shutdown);
        }
        let mut out = crate::error::stream_error(
            Fault::Shutdown.condition(),
            Some(&Fault::Shutdown.to_string()),
        );
        out.push_str(crate::stream::STREAM_CLOSE);
        self.send(out);
        self.pending.clear();
        self.closing_by = Some(by);
    }

    /// The input could not be framed.
    pub fn frame_error(&mut self, e: FrameError) {
        if !self.is_closed() {
            self.fail(Fault::Frame(e));
        }
    }

    /// The TLS handshake after [`Action::StartTls`] completed at `now`; `cert` is the peer
    /// certificate's worth.
    pub fn tls_established(&mut self, now: Instant, cert: CertStatus) {
        if !matches!(self.phase, Phase::Securing { .. }) {
            return;
        }
        self.tls = Some(cert);
        self.phase = Phase::AwaitingHeader {
            by: now + self.settings.deadlines.stream_header,
        };
    }

    /// The TLS handshake after [`Action::StartTls`] failed.
    pub fn tls_failed(&mut self, error: String) {
        if !self.is_closed() {
            self.close(Close::TlsFailed(error));
        }
    }

    /// A dialback verification started by [`Action::Verify`] ended.
    pub fn verdict(&mut self, remote: String, local: String, verdict: Verdict, env: &mut dyn Env) {
        let pair = (remote, local);
        // Only a verification this stream asked for may authenticate anything.
        if !self.pending.remove(&pair) || self.is_closed() {
            return;
        }
        let (remote, local) = pair;
        match verdict {
            Verdict::Valid if self.settings.require_peer_certs && !env.cert_covers(&remote) => {
                self.warn(Warning::CertificateDoesNotName {
                    remote: remote.clone(),
                });
                self.send_el(&dialback::result_response(&local, &remote, false));
                self.fail(Fault::CertificateDoesNotName);
            }
            Verdict::Valid => {
                if !self.authenticate(remote.clone(), local.clone(), Method::Dialback, env) {
                    return self.send_el(&dialback_error(&local, &remote, "resource-constraint"));
                }
                self.send_el(&dialback::result_response(&local, &remote, true));
            }
            Verdict::Invalid => {
                self.warn(Warning::KeyInvalid {
                    remote: remote.clone(),
                    local: local.clone(),
                });
                self.verdict_failed(dialback::result_response(&local, &remote, false));
            }
            Verdict::Failed(reason) => {
                self.warn(Warning::VerificationFailed {
                    remote: remote.clone(),
                    local: local.clone(),
                    reason,
                });
                self.verdict_failed(dialback_error(&local, &remote, "remote-connection-failed"));
            }
        }
    }

    /// The configuration changed: keep the pairs it still allows, close if none is left (or
    /// TLS or a certificate is now required and missing). `cert`: the certificate judged
    /// again under the new trust (None without TLS).
    pub fn reconfigured(&mut self, settings: Settings, cert: Option<CertStatus>, env: &dyn Env) {
        self.settings = settings;
        if self.is_closed() {
            return;
        }
        if cert.is_some() {
            self.tls = cert;
        }
        let header_sent = matches!(self.phase, Phase::Open(_));
        if self.settings.tls == TlsMode::Required && self.tls.is_none() && header_sent {
            return self.fail(Fault::TlsNowRequired);
        }
        if self.settings.require_peer_certs && self.tls.is_some() && !self.cert_valid() {
            return self.fail(Fault::CertificateNowRequired);
        }
        let before = self.authed.len();
        let require = self.settings.require_peer_certs;
        self.authed.retain(|(remote, local)| {
            env.peer_allowed(remote) && env.serves(local) && (!require || env.cert_covers(remote))
        });
        if self.authed.len() == before {
            return;
        }
        let mut kept: Vec<(String, String)> = self.authed.iter().cloned().collect();
        kept.sort();
        self.actions.push_back(Action::PairsDropped(kept));
        if self.authed.is_empty() {
            self.fail(Fault::NoLongerAllowed);
        }
    }

    fn starttls(&mut self, now: Instant) {
        let available = self.settings.tls_available
            && matches!(self.settings.tls, TlsMode::Required | TlsMode::Optional);
        if !available {
            self.send(format!("<failure xmlns='{}'/></stream:stream>", ns::TLS));
            return self.close(Close::TlsUnavailable);
        }
        if self.tls.is_some() {
            return self.fail(Fault::TlsAlreadyActive);
        }
        self.send(format!("<proceed xmlns='{}'/>", ns::TLS));
        self.actions.push_back(Action::StartTls);
        self.phase = Phase::Securing {
            by: now + self.settings.deadlines.tls_handshake,
        };
    }

    /// `<db:result from=remote to=local>key</db:result>`: have it verified.
    fn dialback_request(&mut self, el: &Element, env: &mut dyn Env) {
        if self.settings.tls == TlsMode::Required && self.tls.is_none() {
            self.warn(Warning::DialbackWithoutTls {
                remote: clip(el.attr("from").unwrap_or("")).into_owned(),
            });
            return self.fail(Fault::TlsRequiredForAuth);
        }
        if self.settings.require_peer_certs && !self.cert_valid() {
            return self.fail(Fault::CertificateRequired);
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return self.fail(Fault::DialbackWithoutAddresses);
        };
        let (Ok(remote), Ok(local)) = (normalize_domain(from), normalize_domain(to)) else {
            return self.fail(Fault::DialbackBadDomain);
        };
        if !env.serves(&local) {
            return self.send_el(&dialback_error(&local, &remote, "item-not-found"));
        }
        if !env.peer_allowed(&remote) {
            self.warn(Warning::PolicyRefused {
                remote: remote.clone(),
                local,
            });
            return self.fail(Fault::PolicyRefused(remote));
        }
        let pair = (remote, local);
        if self.authed.contains(&pair) || self.pending.contains(&pair) {
            return;
        }
        if self.pending.len() >= MAX_PENDING_VERIFICATIONS {
            return self.fail(Fault::TooManyDialbackRequests);
        }
        let Phase::Open(open) = &self.phase else {
            return;
        };
        let stream_id = open.stream_id.clone();
        self.pending.insert(pair.clone());
        let (remote, local) = pair;
        self.actions.push_back(Action::Verify {
            remote,
            local,
            stream_id,
            key: el.text(),
        });
    }

    /// Answer a verification that did not say valid. The stream goes on (other pairs may
    /// share it, XEP-0220 2.4) until it has failed [`MAX_FAILED_VERDICTS`].
    fn verdict_failed(&mut self, reply: Element) {
        self.send_el(&reply);
        self.failed_verdicts += 1;
        if self.failed_verdicts >= MAX_FAILED_VERDICTS {
            self.fail(Fault::TooManyKeysRefused);
        }
    }

    /// `<db:verify from=receiving to=originating id>key</db:verify>`: we are the authoritative
    /// server for `to`; answer at once, whatever this stream's own state.
    fn verify_request(&mut self, el: &Element, env: &mut dyn Env) {
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return self.fail(Fault::VerifyWithoutAddresses);
        };
        // Keys are issued over normalised domains; a domain that does not normalise was
        // never issued one.
        let names = normalize_domain(to).ok().zip(normalize_domain(from).ok());
        let valid = names.is_some_and(|(originating, receiving)| {
            env.serves(&originating)
                && std::iter::once(&self.settings.dialback_secret)
                    .chain(self.settings.dialback_previous.as_ref())
                    .any(|secret| {
                        let expected = dialback::dialback_key(secret, &receiving, &originating, id);
                        dialback::keys_equal(&expected, &el.text())
                    })
        });
        if !valid {
            self.warn(Warning::VerifyInvalid {
                receiving: clip(from).into_owned(),
                originating: clip(to).into_owned(),
            });
        }
        self.send_el(&dialback::verify_response(to, from, id, valid));
    }

    /// SASL EXTERNAL (XEP-0178): the certificate, valid and naming the domain, authenticates
    /// the stream for (claimed domain, header `to`). On failure the peer may use dialback.
    fn sasl(&mut self, now: Instant, el: &Element, env: &mut dyn Env) {
        match self.judge_sasl(el, env) {
            Ok((remote, local)) => {
                if !self.authenticate(remote, local, Method::SaslExternal, env) {
                    return self.send_el(
                        &Element::new("failure", ns::SASL)
                            .with_child(Element::new("temporary-auth-failure", ns::SASL)),
                    );
                }
                self.send(format!("<success xmlns='{}'/>", ns::SASL));
                self.actions.push_back(Action::RestartStream);
                self.sasl_done = true;
                self.phase = Phase::AwaitingHeader {
                    by: now + self.settings.deadlines.stream_header,
                };
            }
            Err(reason) => {
                let remote = match &self.phase {
                    Phase::Open(open) => open.from.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                self.warn(Warning::SaslRefused {
                    remote: clip(&remote).into_owned(),
                    reason,
                });
                self.send_el(
                    &Element::new("failure", ns::SASL)
                        .with_child(Element::new("not-authorized", ns::SASL)),
                );
            }
        }
    }

    /// The (remote, local) pair a SASL EXTERNAL request may authenticate, or why not.
    fn judge_sasl(&self, el: &Element, env: &dyn Env) -> Result<(String, String), &'static str> {
        if el.attr("mechanism") != Some("EXTERNAL") {
            return Err("mechanism is not EXTERNAL");
        }
        if self.sasl_done || !self.cert_valid() {
            return Err("no valid certificate on this stream");
        }
        let Phase::Open(open) = &self.phase else {
            return Err("no stream");
        };
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
        let remote = match (authzid, open.from.as_deref()) {
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
        let local = open.to.clone().ok_or("stream header has no to")?;
        if !env.serves(&local) {
            return Err("stream is to a domain not served here");
        }
        if !env.cert_covers(&remote) {
            return Err("certificate does not name the claimed domain");
        }
        if !env.peer_allowed(&remote) {
            return Err("domain refused by the federation policy");
        }
        Ok((remote, local))
    }

    /// `<enable/>` and `<r/>` (an `<a/>` needs nothing: we send no stanzas here).
    fn sm_element(&mut self, el: &Element) {
        match el.name.as_str() {
            "enable" => {
                // XEP-0198 5: never before authentication.
                let allowed = self.settings.stream_management && !self.authed.is_empty();
                if !allowed || self.sm {
                    return self.send_el(
                        &Element::new("failed", ns::SM)
                            .with_child(Element::new("unexpected-request", ns::STANZA_ERRORS)),
                    );
                }
                self.sm = true;
                self.actions.push_back(Action::EnableSm);
                self.send_el(&Element::new("enabled", ns::SM));
            }
            "r" if self.sm => self.actions.push_back(Action::AckRequested),
            _ => {}
        }
    }

    /// A stanza: delivered when its (from, to) domain pair is authenticated here.
    fn stanza(&mut self, tl: TopLevel, env: &dyn Env) {
        let el = &tl.element;
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return self.fail(Fault::StanzaWithoutAddresses);
        };
        let Ok(from_domain) = jid_domain(from) else {
            return self.fail(Fault::MalformedStanzaFrom);
        };
        let Ok(to_domain) = jid_domain(to) else {
            return self.refused(from_domain, to, Refusal::Unroutable, "malformed to address");
        };
        let pair = (from_domain, to_domain);
        if !self.authed.contains(&pair) {
            let to = clip(to).into_owned();
            let (from_domain, to_domain) = pair;
            if self.authed.iter().any(|(r, _)| *r == from_domain) && !env.serves(&to_domain) {
                // An authenticated peer addressing a domain we do not serve: we cannot answer
                // as that domain with a stanza error, so the stream ends with <host-unknown/>
                // (RFC 6120 4.9.3.6, as Prosody does): the peer learns at once instead of
                // losing stanzas silently.
                self.refused(
                    from_domain,
                    &to,
                    Refusal::Unroutable,
                    "to a domain not served here",
                );
                return self.fail(Fault::UnservedStanzaTo(to_domain));
            }
            let from = clip(from).into_owned();
            self.refused(from, &to, Refusal::Spoofed, "not authenticated");
            return self.fail(Fault::Unauthenticated(from_domain));
        }
        let (from_domain, to_domain) = pair;
        self.actions.push_back(Action::Deliver {
            from_domain,
            to_domain,
            stanza: tl,
        });
    }

    fn refused(&mut self, from: String, to: &str, refusal: Refusal, why: &'static str) {
        self.actions.push_back(Action::Refused {
            from,
            to: clip(to).into_owned(),
            refusal,
            why,
        });
    }

    /// Record `pair` as authenticated unless its domain has too many streams.
    fn authenticate(
        &mut self,
        remote: String,
        local: String,
        method: Method,
        env: &mut dyn Env,
    ) -> bool {
        if !env.count_stream(&remote) {
            return false;
        }
        self.authed.insert((remote.clone(), local.clone()));
        self.actions.push_back(Action::Authenticated {
            remote,
            local,
            method,
        });
        true
    }

    fn features(&self) -> String {
        let s = &self.settings;
        let mut f = Element::new("features", ns::STREAM);
        if self.tls.is_none() && s.tls_available && s.tls != TlsMode::Disabled {
            let mut starttls = Element::new("starttls", ns::TLS);
            if s.tls == TlsMode::Required {
                starttls = starttls.with_child(Element::new("required", ns::TLS));
            }
            f = f.with_child(starttls);
        }
        if self.tls.is_some() && s.sasl_external && !self.sasl_done && self.cert_valid() {
            f = f.with_child(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        // Offered after authentication by SASL (the restarted stream's features); a peer
        // authenticated by dialback may still enable it.
        if s.stream_management && self.sasl_done {
            f = f.with_child(Element::new("sm", ns::SM));
        }
        if self.tls.is_some() || s.tls != TlsMode::Required {
            f = f.with_child(
                Element::new("dialback", ns::DIALBACK_FEATURE)
                    .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
            );
        }
        f.to_xml(ns::SERVER)
    }

    fn cert_valid(&self) -> bool {
        self.tls == Some(CertStatus::Valid)
    }

    fn send(&mut self, bytes: String) {
        self.actions.push_back(Action::Send(bytes));
    }

    fn send_el(&mut self, el: &Element) {
        self.send(el.to_xml(ns::SERVER));
    }

    fn warn(&mut self, w: Warning) {
        self.actions.push_back(Action::Warn(w));
    }

    /// Send a stream error (after a header of ours if the peer has none from us on this
    /// stream) and close.
    fn fail(&mut self, fault: Fault) {
        let mut out = String::new();
        if !matches!(self.phase, Phase::Open(_)) {
            let h = StreamHeader {
                id: Some(self.error_id.clone()),
                version: Some("1.0".into()),
                default_ns: ns::SERVER.into(),
                ..Default::default()
            };
            out.push_str(&h.to_xml());
        }
        out.push_str(&crate::error::stream_error(
            fault.condition(),
            Some(&fault.to_string()),
        ));
        out.push_str(crate::stream::STREAM_CLOSE);
        self.send(out);
        self.close(Close::Fault(fault));
    }

    fn close(&mut self, why: Close) {
        self.phase = Phase::Closed;
        self.pending.clear();
        self.actions.push_back(Action::Close(why));
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
    //! Every path of the machine, without a socket or a sleep: time is explicit instants.

    use std::time::Duration;

    use base64::Engine;

    use super::*;
    use crate::framer::{Event, Framer};
    use crate::limits::Limits;
    use crate::StreamCondition;

    const SECRET: &str = "s3cret-for-tests";
    const REMOTE: &str = "remote.test";
    const LOCAL: &str = "local.test";

    /// The world: what is served, refused, named by the certificate, and whether the remote
    /// domain has room for another stream.
    struct World {
        served: Vec<&'static str>,
        refused: Vec<&'static str>,
        covers: Vec<&'static str>,
        full: bool,
        ids: u32,
    }

    impl Env for World {
        fn serves(&self, domain: &str) -> bool {
            self.served.contains(&domain)
        }
        fn peer_allowed(&self, remote: &str) -> bool {
            !self.refused.contains(&remote)
        }
        fn cert_covers(&self, domain: &str) -> bool {
            self.covers.contains(&domain)
        }
        fn count_stream(&mut self, _remote: &str) -> bool {
            !self.full
        }
        fn new_stream_id(&mut self) -> String {
            self.ids += 1;
            format!("id{}", self.ids)
        }
    }

    fn settings(tls: TlsMode) -> Settings {
        Settings {
            tls,
            tls_available: true,
            sasl_external: true,
            stream_management: true,
            require_peer_certs: false,
            dialback_secret: SECRET.into(),
            dialback_previous: None,
            deadlines: Deadlines {
                stream_header: Duration::from_secs(10),
                tls_handshake: Duration::from_secs(10),
                authentication: Duration::from_secs(30),
                idle: Duration::from_secs(600),
            },
        }
    }

    /// A machine and its world, started at `t0`.
    struct Peer {
        m: Inbound,
        world: World,
        t0: Instant,
    }

    impl Peer {
        fn new(settings: Settings, tls: Option<CertStatus>) -> Self {
            let t0 = Instant::now();
            Self {
                m: Inbound::new(settings, t0, tls, "err-id".into()),
                world: World {
                    served: vec![LOCAL],
                    refused: vec![],
                    covers: vec![REMOTE],
                    full: false,
                    ids: 0,
                },
                t0,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn drain(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.m.poll_action()).collect()
        }

        fn header_full(&mut self, from: Option<&str>, to: Option<&str>, ns: &str) -> Vec<Action> {
            let h = StreamHeader {
                from: from.map(str::to_owned),
                to: to.map(str::to_owned),
                version: Some("1.0".into()),
                default_ns: ns.into(),
                ..Default::default()
            };
            self.m.header(&h, &mut self.world);
            self.drain()
        }

        fn header(&mut self) -> Vec<Action> {
            self.header_full(Some(REMOTE), Some(LOCAL), ns::SERVER)
        }

        fn el(&mut self, secs: u64, xml: &str) -> Vec<Action> {
            let at = self.at(secs);
            self.m.element(at, top(xml), &mut self.world);
            self.drain()
        }

        /// STARTTLS through to the restarted stream's features; returns those actions.
        fn starttls(&mut self, cert: CertStatus) -> Vec<Action> {
            let a = self.el(1, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            assert!(sent(&a).contains("<proceed "), "{a:?}");
            assert!(matches!(a.last(), Some(Action::StartTls)), "{a:?}");
            self.m.tls_established(self.at(2), cert);
            assert!(self.drain().is_empty());
            self.header()
        }

        /// Dialback for (REMOTE, LOCAL) with a valid verdict.
        fn dialback(&mut self) -> Vec<Action> {
            let a = self.el(3, &db_result(REMOTE, LOCAL));
            assert!(matches!(a.as_slice(), [Action::Verify { .. }]), "{a:?}");
            self.m
                .verdict(REMOTE.into(), LOCAL.into(), Verdict::Valid, &mut self.world);
            self.drain()
        }
    }

    /// `xml` as a top-level element of a jabber:server stream.
    fn top(xml: &str) -> TopLevel {
        let mut f = Framer::new(Limits::default());
        f.push(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'>",
        );
        f.push(xml.as_bytes());
        loop {
            match f.next_event() {
                Ok(Some(Event::Element(tl))) => return tl,
                Ok(Some(_)) => continue,
                other => panic!("{xml}: {other:?}"),
            }
        }
    }

    fn db_result(from: &str, to: &str) -> String {
        format!("<db:result from='{from}' to='{to}'>key</db:result>")
    }

    fn message(from: &str, to: &str) -> String {
        format!("<message from='{from}' to='{to}'><body>hi</body></message>")
    }

    fn sent(actions: &[Action]) -> String {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn closed(actions: &[Action]) -> Option<&Close> {
        actions.iter().find_map(|a| match a {
            Action::Close(c) => Some(c),
            _ => None,
        })
    }

    /// The stream ended with `fault`, and the stream error on the wire says its condition.
    #[track_caller]
    fn assert_fault(actions: &[Action], fault: Fault, cond: StreamCondition) {
        assert_eq!(closed(actions), Some(&Close::Fault(fault)), "{actions:?}");
        let wire = sent(actions);
        assert!(
            wire.contains(&format!(
                "<{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
                cond.as_str()
            )),
            "{wire}"
        );
        assert!(wire.ends_with("</stream:stream>"), "{wire}");
    }

    fn warnings(actions: &[Action]) -> Vec<&Warning> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Warn(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    fn authed(p: &Peer) -> Vec<(String, String)> {
        p.m.pairs().cloned().collect()
    }

    // --- Happy paths ---

    #[test]
    fn dialback_after_starttls_authenticates_and_delivers() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        let a = p.header();
        let wire = sent(&a);
        assert!(
            wire.starts_with("<?xml") || wire.starts_with("<stream:stream"),
            "{wire}"
        );
        assert!(
            wire.contains("id='id1'") && wire.contains("from='local.test'"),
            "{wire}"
        );
        assert!(
            wire.contains("<starttls ") && wire.contains("<required"),
            "{wire}"
        );
        assert!(
            !wire.contains("urn:xmpp:features:dialback"),
            "no dialback before TLS when required: {wire}"
        );
        let a = p.starttls(CertStatus::Absent);
        let wire = sent(&a);
        assert!(
            wire.contains("id='id2'"),
            "a new stream id after TLS: {wire}"
        );
        assert!(
            wire.contains("urn:xmpp:features:dialback") && !wire.contains("starttls"),
            "{wire}"
        );
        assert!(
            !wire.contains("EXTERNAL"),
            "no SASL without a valid certificate: {wire}"
        );
        let a = p.el(3, &db_result("Remote.Test.", LOCAL));
        match a.as_slice() {
            [Action::Verify {
                remote,
                local,
                stream_id,
                key,
            }] => {
                assert_eq!((remote.as_str(), local.as_str()), (REMOTE, LOCAL));
                assert_eq!((stream_id.as_str(), key.as_str()), ("id2", "key"));
            }
            other => panic!("{other:?}"),
        }
        // The same request again while it is being verified starts nothing.
        assert!(p.el(3, &db_result(REMOTE, LOCAL)).is_empty());
        p.m.verdict(REMOTE.into(), LOCAL.into(), Verdict::Valid, &mut p.world);
        let a = p.drain();
        assert!(
            matches!(
                &a[0],
                Action::Authenticated {
                    method: Method::Dialback,
                    ..
                }
            ),
            "{a:?}"
        );
        assert!(sent(&a).contains("type='valid'"), "{a:?}");
        let a = p.el(4, &message("ana@remote.test/x", "bob@local.test"));
        match a.as_slice() {
            [Action::Deliver {
                from_domain,
                to_domain,
                stanza,
            }] => {
                assert_eq!((from_domain.as_str(), to_domain.as_str()), (REMOTE, LOCAL));
                assert_eq!(stanza.element.name, "message");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(authed(&p), vec![(REMOTE.into(), LOCAL.into())]);
    }

    #[test]
    fn sasl_external_over_direct_tls_restarts_and_offers_stream_management() {
        let mut p = Peer::new(settings(TlsMode::Required), Some(CertStatus::Valid));
        let wire = sent(&p.header());
        assert!(wire.contains("<mechanism>EXTERNAL</mechanism>"), "{wire}");
        assert!(!wire.contains("starttls"), "TLS is up already: {wire}");
        assert!(
            !wire.contains("urn:xmpp:sm:3"),
            "no SM before authentication: {wire}"
        );
        let authzid = base64::engine::general_purpose::STANDARD.encode(REMOTE);
        let a = p.el(
            1,
            &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"),
        );
        assert!(
            matches!(
                &a[0],
                Action::Authenticated {
                    method: Method::SaslExternal,
                    ..
                }
            ),
            "{a:?}"
        );
        assert!(sent(&a).contains("<success "), "{a:?}");
        assert!(matches!(a.last(), Some(Action::RestartStream)), "{a:?}");
        let wire = sent(&p.header());
        assert!(wire.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{wire}");
        assert!(!wire.contains("EXTERNAL"), "SASL is done: {wire}");
        let a = p.el(2, "<enable xmlns='urn:xmpp:sm:3'/>");
        assert!(
            matches!(a[0], Action::EnableSm) && sent(&a).contains("<enabled "),
            "{a:?}"
        );
        let a = p.el(2, "<r xmlns='urn:xmpp:sm:3'/>");
        assert!(matches!(a.as_slice(), [Action::AckRequested]), "{a:?}");
        let a = p.el(3, &message("ana@remote.test", "bob@local.test"));
        assert!(matches!(a.as_slice(), [Action::Deliver { .. }]), "{a:?}");
    }

    #[test]
    fn sasl_external_with_an_empty_authzid_takes_the_header_from() {
        let mut p = Peer::new(settings(TlsMode::Required), Some(CertStatus::Valid));
        p.header();
        let a = p.el(
            1,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
        );
        assert!(sent(&a).contains("<success "), "{a:?}");
        assert_eq!(authed(&p), vec![(REMOTE.into(), LOCAL.into())]);
    }

    #[test]
    fn optional_mode_allows_dialback_without_tls() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        let wire = sent(&p.header());
        assert!(
            wire.contains("<starttls ") && !wire.contains("<required"),
            "{wire}"
        );
        assert!(wire.contains("urn:xmpp:features:dialback"), "{wire}");
        let a = p.dialback();
        assert!(sent(&a).contains("type='valid'"), "{a:?}");
    }

    #[test]
    fn disabled_mode_offers_no_tls_and_refuses_starttls() {
        let mut p = Peer::new(settings(TlsMode::Disabled), None);
        let wire = sent(&p.header());
        assert!(!wire.contains("starttls"), "{wire}");
        let a = p.el(1, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(
            sent(&a).contains("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
            "{a:?}"
        );
        assert_eq!(closed(&a), Some(&Close::TlsUnavailable));
    }

    #[test]
    fn a_version_less_peer_gets_no_features() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        let h = StreamHeader {
            from: Some(REMOTE.into()),
            to: Some(LOCAL.into()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        };
        p.m.header(&h, &mut p.world);
        let wire = sent(&p.drain());
        assert!(!wire.contains("features"), "{wire}");
        assert!(
            !wire.contains("version='1.0'>"),
            "no version on ours: {wire}"
        );
    }

    #[test]
    fn db_verify_is_answered_for_keys_we_issued_only() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        let key = dialback::dialback_key(SECRET, REMOTE, LOCAL, "sid");
        let ask = |key: &str, to: &str| {
            format!("<db:verify from='{REMOTE}' to='{to}' id='sid'>{key}</db:verify>")
        };
        let a = p.el(1, &ask(&key, LOCAL));
        assert!(
            sent(&a).contains("type='valid'") && warnings(&a).is_empty(),
            "{a:?}"
        );
        let a = p.el(1, &ask("forged", LOCAL));
        assert!(sent(&a).contains("type='invalid'"), "{a:?}");
        assert!(
            matches!(warnings(&a)[..], [Warning::VerifyInvalid { .. }]),
            "{a:?}"
        );
        let a = p.el(1, &ask(&key, "other.test"));
        assert!(sent(&a).contains("type='invalid'"), "not our domain: {a:?}");
        assert!(closed(&a).is_none());
    }

    #[test]
    fn during_a_secret_rollover_keys_made_with_either_secret_verify() {
        let rolled = Settings {
            dialback_secret: "the-new-secret-0123456789".into(),
            dialback_previous: Some(SECRET.into()),
            ..settings(TlsMode::Required)
        };
        let mut p = Peer::new(rolled, None);
        p.header();
        let ask = |key: &str| {
            format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='sid'>{key}</db:verify>")
        };
        // Made by an edge not yet switched (the previous secret), and by one switched.
        for secret in [SECRET, "the-new-secret-0123456789"] {
            let key = dialback::dialback_key(secret, REMOTE, LOCAL, "sid");
            let a = p.el(1, &ask(&key));
            assert!(sent(&a).contains("type='valid'"), "{secret}: {a:?}");
        }
        let other = dialback::dialback_key("a-third-secret-987654321", REMOTE, LOCAL, "sid");
        assert!(sent(&p.el(1, &ask(&other))).contains("type='invalid'"));
    }

    // --- Refusals ---

    #[test]
    fn dialback_in_plaintext_is_refused_when_tls_is_required() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        let a = p.el(1, &db_result(REMOTE, LOCAL));
        assert!(matches!(
            warnings(&a)[..],
            [Warning::DialbackWithoutTls { .. }]
        ));
        assert_fault(
            &a,
            Fault::TlsRequiredForAuth,
            StreamCondition::PolicyViolation,
        );
    }

    #[test]
    fn a_forged_key_is_refused_and_the_third_closes_the_stream() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        for (i, remote) in ["a.test", "b.test", "c.test"].into_iter().enumerate() {
            p.el(1, &db_result(remote, LOCAL));
            let verdict = if i == 1 {
                Verdict::Failed("unreachable".into())
            } else {
                Verdict::Invalid
            };
            p.m.verdict(remote.into(), LOCAL.into(), verdict, &mut p.world);
            let a = p.drain();
            let wire = sent(&a);
            if i == 1 {
                assert!(
                    wire.contains("type='error'") && wire.contains("remote-connection-failed"),
                    "{wire}"
                );
                assert!(matches!(
                    warnings(&a)[..],
                    [Warning::VerificationFailed { .. }]
                ));
            } else {
                assert!(wire.contains("type='invalid'"), "{wire}");
                assert!(matches!(warnings(&a)[..], [Warning::KeyInvalid { .. }]));
            }
            if i < 2 {
                assert!(closed(&a).is_none(), "{a:?}");
            } else {
                assert_fault(
                    &a,
                    Fault::TooManyKeysRefused,
                    StreamCondition::NotAuthorized,
                );
            }
        }
        assert!(authed(&p).is_empty());
    }

    #[test]
    fn a_genuine_key_with_a_certificate_not_naming_the_domain_is_refused() {
        let mut s = settings(TlsMode::Required);
        s.require_peer_certs = true;
        let mut p = Peer::new(s, Some(CertStatus::Valid));
        p.world.covers = vec!["other.test"];
        p.header();
        let a = p.dialback();
        assert!(sent(&a).contains("type='invalid'"), "{a:?}");
        assert!(matches!(
            warnings(&a)[..],
            [Warning::CertificateDoesNotName { .. }]
        ));
        assert_fault(
            &a,
            Fault::CertificateDoesNotName,
            StreamCondition::NotAuthorized,
        );
    }

    #[test]
    fn sasl_external_refusals_leave_the_stream_open_for_dialback() {
        let auth = |authzid: &str| {
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases: Vec<(String, Option<CertStatus>, Vec<&'static str>, &str)> = vec![
            (
                b64("other.test"),
                Some(CertStatus::Valid),
                vec![REMOTE],
                "authzid does not match",
            ),
            (
                b64(REMOTE),
                Some(CertStatus::Valid),
                vec!["other.test"],
                "certificate does not name",
            ),
            (
                b64(REMOTE),
                Some(CertStatus::Invalid("expired".into())),
                vec![REMOTE],
                "no valid certificate",
            ),
            (
                "!!".into(),
                Some(CertStatus::Valid),
                vec![REMOTE],
                "not base64",
            ),
            (
                b64("a_b.test"),
                Some(CertStatus::Valid),
                vec![REMOTE],
                "malformed",
            ),
        ];
        for (authzid, cert, covers, why) in cases {
            let mut p = Peer::new(settings(TlsMode::Required), cert);
            p.world.covers = covers;
            p.header();
            let a = p.el(1, &auth(&authzid));
            assert!(sent(&a).contains("<not-authorized/>"), "{why}: {a:?}");
            match warnings(&a)[..] {
                [Warning::SaslRefused { reason, .. }] => assert!(reason.contains(why), "{reason}"),
                _ => panic!("{why}: {a:?}"),
            }
            assert!(closed(&a).is_none() && authed(&p).is_empty(), "{why}");
        }
        // Another mechanism, and a domain whose stream limit is reached.
        let mut p = Peer::new(settings(TlsMode::Required), Some(CertStatus::Valid));
        p.header();
        let a = p.el(
            1,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>x</auth>",
        );
        assert!(sent(&a).contains("<not-authorized/>"), "{a:?}");
        p.world.full = true;
        let a = p.el(1, &auth("="));
        assert!(sent(&a).contains("<temporary-auth-failure/>"), "{a:?}");
        assert!(authed(&p).is_empty());
    }

    #[test]
    fn a_stanza_from_a_domain_not_authenticated_here_ends_the_stream() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        let a = p.el(4, &message("mallory@evil.test", "bob@local.test"));
        assert!(
            matches!(
                &a[0],
                Action::Refused {
                    refusal: Refusal::Spoofed,
                    ..
                }
            ),
            "{a:?}"
        );
        assert_fault(
            &a,
            Fault::Unauthenticated("evil.test".into()),
            StreamCondition::InvalidFrom,
        );
    }

    #[test]
    fn stanzas_to_domains_not_served_here() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        // A `to` that is not a JID: refused, the stream goes on.
        let a = p.el(4, &message("ana@remote.test", "bob@bad_domain..test"));
        assert!(
            matches!(
                a.as_slice(),
                [Action::Refused {
                    refusal: Refusal::Unroutable,
                    ..
                }]
            ),
            "{a:?}"
        );
        // A domain not served: host-unknown, as Prosody does.
        let a = p.el(4, &message("ana@remote.test", "bob@elsewhere.test"));
        assert_fault(
            &a,
            Fault::UnservedStanzaTo("elsewhere.test".into()),
            StreamCondition::HostUnknown,
        );
    }

    #[test]
    fn stream_management_is_refused_before_authentication_and_twice() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        let a = p.el(1, "<enable xmlns='urn:xmpp:sm:3'/>");
        assert!(
            sent(&a).contains("<failed ") && sent(&a).contains("unexpected-request"),
            "{a:?}"
        );
        assert!(
            p.el(1, "<r xmlns='urn:xmpp:sm:3'/>").is_empty(),
            "no ack without SM"
        );
        p.dialback();
        assert!(matches!(
            p.el(2, "<enable xmlns='urn:xmpp:sm:3'/>")[0],
            Action::EnableSm
        ));
        assert!(sent(&p.el(2, "<enable xmlns='urn:xmpp:sm:3'/>")).contains("<failed "));
        // Disabled by configuration.
        let mut s = settings(TlsMode::Optional);
        s.stream_management = false;
        let mut p = Peer::new(s, None);
        p.header();
        p.dialback();
        assert!(sent(&p.el(2, "<enable xmlns='urn:xmpp:sm:3'/>")).contains("<failed "));
    }

    #[test]
    fn dialback_requests_that_cannot_be_verified() {
        // Not served: an XEP-0220 error, the stream goes on.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        let a = p.el(1, &db_result(REMOTE, "other.test"));
        assert!(
            sent(&a).contains("<item-not-found ") && closed(&a).is_none(),
            "{a:?}"
        );
        // Refused by policy.
        p.world.refused = vec![REMOTE];
        let a = p.el(1, &db_result(REMOTE, LOCAL));
        assert!(matches!(warnings(&a)[..], [Warning::PolicyRefused { .. }]));
        assert_fault(
            &a,
            Fault::PolicyRefused(REMOTE.into()),
            StreamCondition::PolicyViolation,
        );
        // Addresses missing or malformed.
        for (xml, fault) in [
            (
                "<db:result to='local.test'>k</db:result>",
                Fault::DialbackWithoutAddresses,
            ),
            (
                "<db:result from='a..b' to='local.test'>k</db:result>",
                Fault::DialbackBadDomain,
            ),
        ] {
            let mut p = Peer::new(settings(TlsMode::Optional), None);
            p.header();
            assert_fault(&p.el(1, xml), fault, StreamCondition::ImproperAddressing);
        }
        // A full stream limit: an error for this pair, the stream goes on.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.world.full = true;
        p.header();
        let a = p.dialback();
        assert!(
            sent(&a).contains("resource-constraint") && closed(&a).is_none(),
            "{a:?}"
        );
        assert!(authed(&p).is_empty());
    }

    #[test]
    fn a_verdict_nobody_asked_for_authenticates_nothing() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.m.verdict(REMOTE.into(), LOCAL.into(), Verdict::Valid, &mut p.world);
        assert!(p.drain().is_empty() && authed(&p).is_empty());
    }

    #[test]
    fn at_most_sixteen_verifications_at_once() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        for i in 0..MAX_PENDING_VERIFICATIONS {
            let a = p.el(1, &db_result(&format!("r{i}.test"), LOCAL));
            assert!(matches!(a.as_slice(), [Action::Verify { .. }]));
        }
        let a = p.el(1, &db_result("one-more.test", LOCAL));
        assert_fault(
            &a,
            Fault::TooManyDialbackRequests,
            StreamCondition::PolicyViolation,
        );
    }

    // --- Every other stream error ---

    #[test]
    fn stream_header_faults() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        let a = p.header_full(Some(REMOTE), Some(LOCAL), ns::CLIENT);
        assert!(sent(&a).starts_with("<stream:stream") || sent(&a).starts_with("<?xml"));
        assert_fault(&a, Fault::WrongNamespace, StreamCondition::InvalidNamespace);

        for to in [Some("elsewhere.test"), Some("not a domain")] {
            let mut p = Peer::new(settings(TlsMode::Optional), None);
            let a = p.header_full(Some(REMOTE), to, ns::SERVER);
            assert!(matches!(
                warnings(&a)[..],
                [Warning::UnservedStreamTo { .. }]
            ));
            assert_fault(&a, Fault::UnservedStreamTo, StreamCondition::HostUnknown);
        }

        let mut p = Peer::new(settings(TlsMode::Optional), None);
        let a = p.header_full(Some("192.0.2.1"), Some(LOCAL), ns::SERVER);
        assert_fault(&a, Fault::MalformedStreamFrom, StreamCondition::InvalidFrom);

        let mut s = settings(TlsMode::Required);
        s.require_peer_certs = true;
        let mut p = Peer::new(s, Some(CertStatus::Invalid("self-signed".into())));
        let a = p.header();
        assert!(matches!(
            warnings(&a)[..],
            [Warning::CertificateRefused { .. }]
        ));
        assert_fault(
            &a,
            Fault::CertificateRequired,
            StreamCondition::NotAuthorized,
        );

        // A second header without a restart.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        let a = p.header();
        assert!(
            matches!(closed(&a), Some(Close::Fault(Fault::Frame(_)))),
            "{a:?}"
        );
    }

    #[test]
    fn element_faults() {
        let cases: [(&str, Fault, StreamCondition); 5] = [
            (
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                Fault::TlsAlreadyActive,
                StreamCondition::PolicyViolation,
            ),
            (
                "<db:verify from='remote.test' to='local.test'>k</db:verify>",
                Fault::VerifyWithoutAddresses,
                StreamCondition::ImproperAddressing,
            ),
            (
                "<message to='bob@local.test'/>",
                Fault::StanzaWithoutAddresses,
                StreamCondition::ImproperAddressing,
            ),
            (
                "<message from='@remote.test' to='bob@local.test'/>",
                Fault::MalformedStanzaFrom,
                StreamCondition::InvalidFrom,
            ),
            (
                "<foo xmlns='urn:example'/>",
                Fault::Unexpected {
                    name: "foo".into(),
                    ns: "urn:example".into(),
                },
                StreamCondition::UnsupportedStanzaType,
            ),
        ];
        for (xml, fault, cond) in cases {
            let mut p = Peer::new(settings(TlsMode::Optional), Some(CertStatus::Absent));
            p.header();
            assert_fault(&p.el(1, xml), fault, cond);
        }
        // Unframeable input: its own condition, after our header if we sent none.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.m.frame_error(FrameError::RestrictedXml("comment".into()));
        let a = p.drain();
        assert!(sent(&a).contains("id='err-id'"), "{a:?}");
        assert_fault(
            &a,
            Fault::Frame(FrameError::RestrictedXml("comment".into())),
            StreamCondition::RestrictedXml,
        );
    }

    #[test]
    fn the_peer_ending_its_stream() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.m.peer_closed();
        let a = p.drain();
        assert_eq!(sent(&a), "</stream:stream>");
        assert_eq!(closed(&a), Some(&Close::PeerClosed));
        // Closed: nothing more happens.
        p.m.timeout(p.at(3600));
        assert!(p.drain().is_empty() && p.m.poll_timeout().is_none());

        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        let a = p.el(
            1,
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(sent(&a), "");
        assert_eq!(closed(&a), Some(&Close::PeerError("conflict ".into())));
    }

    #[test]
    fn a_failed_tls_handshake_closes_without_a_word() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        p.el(1, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        p.m.tls_failed("bad record mac".into());
        let a = p.drain();
        assert_eq!(sent(&a), "");
        assert_eq!(closed(&a), Some(&Close::TlsFailed("bad record mac".into())));
    }

    #[test]
    fn reconfiguration_keeps_what_it_still_allows() {
        // Two pairs; the policy then refuses one: it is dropped, the stream goes on.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        p.el(3, &db_result("second.test", LOCAL));
        p.m.verdict(
            "second.test".into(),
            LOCAL.into(),
            Verdict::Valid,
            &mut p.world,
        );
        p.drain();
        p.world.refused = vec!["second.test"];
        p.m.reconfigured(settings(TlsMode::Optional), None, &p.world);
        let a = p.drain();
        assert!(
            matches!(&a[..], [Action::PairsDropped(kept)] if kept == &vec![(REMOTE.to_owned(), LOCAL.to_owned())]),
            "{a:?}"
        );
        // Then the last one: closed.
        p.world.refused = vec![REMOTE];
        p.m.reconfigured(settings(TlsMode::Optional), None, &p.world);
        assert_fault(
            &p.drain(),
            Fault::NoLongerAllowed,
            StreamCondition::PolicyViolation,
        );

        // TLS now required on a plaintext stream.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.m.reconfigured(settings(TlsMode::Required), None, &p.world);
        assert_fault(
            &p.drain(),
            Fault::TlsNowRequired,
            StreamCondition::PolicyViolation,
        );

        // A certificate now required and the peer's not valid under the new trust.
        let mut p = Peer::new(settings(TlsMode::Required), Some(CertStatus::Valid));
        p.header();
        let mut s = settings(TlsMode::Required);
        s.require_peer_certs = true;
        p.m.reconfigured(s, Some(CertStatus::Invalid("revoked".into())), &p.world);
        assert_fault(
            &p.drain(),
            Fault::CertificateNowRequired,
            StreamCondition::NotAuthorized,
        );

        // Nothing changed: nothing happens.
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        p.m.reconfigured(settings(TlsMode::Optional), None, &p.world);
        assert!(p.drain().is_empty());
    }

    // --- Deadlines ---

    #[test]
    fn no_header_within_its_deadline() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        assert_eq!(p.m.poll_timeout(), Some(p.at(10)));
        p.m.timeout(p.at(9));
        assert!(p.drain().is_empty(), "not yet");
        p.m.timeout(p.at(10));
        let a = p.drain();
        assert!(sent(&a).contains("id='err-id'"), "our header first: {a:?}");
        assert_fault(
            &a,
            Fault::NoHeaderInTime,
            StreamCondition::ConnectionTimeout,
        );
        assert!(Fault::NoHeaderInTime.is_negotiation_deadline());
    }

    #[test]
    fn not_authenticated_within_its_deadline() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        assert_eq!(
            p.m.poll_timeout(),
            Some(p.at(30)),
            "authentication runs from accept"
        );
        // Traffic that authenticates nothing does not move it.
        p.el(
            20,
            "<db:verify from='x.test' to='local.test' id='i'>k</db:verify>",
        );
        assert_eq!(p.m.poll_timeout(), Some(p.at(30)));
        p.m.timeout(p.at(30));
        assert_fault(
            &p.drain(),
            Fault::NotAuthenticatedInTime,
            StreamCondition::ConnectionTimeout,
        );
    }

    #[test]
    fn a_header_deadline_after_each_restart() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        p.el(1, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        p.m.tls_established(p.at(5), CertStatus::Absent);
        assert_eq!(p.m.poll_timeout(), Some(p.at(15)));
        p.m.timeout(p.at(15));
        assert_fault(
            &p.drain(),
            Fault::NoHeaderInTime,
            StreamCondition::ConnectionTimeout,
        );
    }

    #[test]
    fn whichever_of_header_and_authentication_comes_first() {
        let mut s = settings(TlsMode::Required);
        s.deadlines.authentication = Duration::from_secs(10);
        let mut p = Peer::new(s, None);
        assert_eq!(p.m.poll_timeout(), Some(p.at(10)));
        p.m.timeout(p.at(10));
        // At the same instant, authentication is what expired.
        assert!(matches!(
            closed(&p.drain()),
            Some(Close::Fault(Fault::NotAuthenticatedInTime))
        ));
    }

    #[test]
    fn a_tls_handshake_within_its_deadline() {
        let mut p = Peer::new(settings(TlsMode::Required), None);
        p.header();
        p.el(2, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(p.m.poll_timeout(), Some(p.at(12)));
        p.m.timeout(p.at(12));
        let a = p.drain();
        assert_eq!(sent(&a), "", "nothing in the clear mid-handshake");
        assert_eq!(
            closed(&a),
            Some(&Close::TlsFailed("handshake timed out".into()))
        );
    }

    #[test]
    fn an_authenticated_stream_idles_out() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        assert_eq!(
            p.m.poll_timeout(),
            Some(p.at(600)),
            "idle runs from accept at first"
        );
        p.el(100, &message("ana@remote.test", "bob@local.test"));
        assert_eq!(
            p.m.poll_timeout(),
            Some(p.at(700)),
            "each stanza restarts it"
        );
        p.m.timeout(p.at(650));
        assert!(p.drain().is_empty());
        p.m.timeout(p.at(700));
        let a = p.drain();
        assert_fault(&a, Fault::Idle, StreamCondition::ConnectionTimeout);
        assert!(!Fault::Idle.is_negotiation_deadline());
    }

    #[test]
    fn negotiating_until_authenticated_and_again_while_a_restart_is_awaited() {
        let mut p = Peer::new(settings(TlsMode::Required), Some(CertStatus::Valid));
        assert!(p.m.negotiating(), "awaiting the header");
        p.header();
        assert!(p.m.negotiating(), "not authenticated");
        p.el(
            1,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
        );
        assert!(
            p.m.negotiating(),
            "authenticated, awaiting the restarted header"
        );
        p.header();
        assert!(!p.m.negotiating());
        p.m.peer_closed();
        assert!(!p.m.negotiating());
    }

    #[test]
    fn idleness_counts_from_the_end_of_a_slow_delivery() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        p.el(100, &message("ana@remote.test", "bob@local.test"));
        // The delivery took 30 s.
        p.m.stanza_handled(p.at(130));
        assert_eq!(p.m.poll_timeout(), Some(p.at(730)));
        // An earlier report does not move it back.
        p.m.stanza_handled(p.at(120));
        assert_eq!(p.m.poll_timeout(), Some(p.at(730)));
    }

    #[test]
    fn a_shutdown_says_system_shutdown_and_still_delivers_what_was_in_flight() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.dialback();
        p.drain();
        p.m.shutdown(p.at(30));
        let a = p.drain();
        let out = sent(&a);
        assert!(
            out.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
                && out.ends_with("</stream:stream>"),
            "{out}"
        );
        assert_eq!(closed(&a), None, "still reading");
        assert_eq!(p.m.poll_timeout(), Some(p.at(30)));
        p.m.shutdown(p.at(40));
        assert!(p.drain().is_empty(), "said once");
        // A stanza the peer had sent before it saw ours is delivered.
        let a = p.el(10, &message("ana@remote.test", "bob@local.test"));
        assert!(matches!(a.as_slice(), [Action::Deliver { .. }]), "{a:?}");
        // Its closing tag ends the stream; ours is not sent twice.
        p.m.peer_closed();
        let a = p.drain();
        assert_eq!(sent(&a), "");
        assert_eq!(closed(&a), Some(&Close::PeerClosed));

        // A peer that never closes is cut at the deadline.
        let mut q = Peer::new(settings(TlsMode::Optional), None);
        q.header();
        q.dialback();
        q.m.shutdown(q.at(30));
        q.drain();
        q.m.timeout(q.at(29));
        assert!(q.drain().is_empty());
        q.m.timeout(q.at(30));
        assert_eq!(closed(&q.drain()), Some(&Close::ShutDown));

        // A stream still negotiating gets the stream error and is closed at once.
        let mut r = Peer::new(settings(TlsMode::Optional), None);
        r.header();
        r.drain();
        r.m.shutdown(r.at(30));
        assert_fault(&r.drain(), Fault::Shutdown, StreamCondition::SystemShutdown);
    }

    #[test]
    fn events_after_the_close_are_ignored() {
        let mut p = Peer::new(settings(TlsMode::Optional), None);
        p.header();
        p.m.frame_error(FrameError::NotWellFormed("x".into()));
        p.drain();
        p.el(1, &message("a@remote.test", "b@local.test"));
        p.m.verdict(REMOTE.into(), LOCAL.into(), Verdict::Valid, &mut p.world);
        p.m.tls_established(p.at(1), CertStatus::Valid);
        p.m.peer_closed();
        p.m.reconfigured(settings(TlsMode::Required), None, &p.world);
        assert!(p.drain().is_empty() && p.m.is_closed() && authed(&p).is_empty());
    }
}
