//! Driving an outgoing negotiation: the sockets, DNS and TLS handshakes around the pure
//! machine of [`causeway_xmpp::negotiation::outbound`], for sessions ([`crate::outbound`]) and
//! dialback verification connections ([`crate::verify`]) alike.
//!
//! [`S2s::negotiate`] resolves and connects (XEP-0368 direct TLS first unless TLS is
//! disabled), then feeds the machine what the connection says and carries out what it asks,
//! each wait bounded by the machine's deadline. Every decision (STARTTLS, the certificate
//! check, SASL EXTERNAL or dialback, the fallback from direct TLS) and every failure's reason
//! and stanza condition is the machine's.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use causeway_xmpp::negotiation::inbound::Method;
use causeway_xmpp::negotiation::outbound::{
    self as machine, Action, Failure, Note, Outbound, Purpose,
};
use causeway_xmpp::negotiation::Verdict;
use causeway_xmpp::{Event, OutboundFault, StanzaCondition};
use tokio::time::Instant;
use tracing::debug;

use crate::{S2s, TlsMode, XmlConn, LOG_MODULE};

/// Why a session could not be opened.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub(crate) condition: StanzaCondition,
    pub(crate) reason: String,
}

impl OpenError {
    pub(crate) fn new(fault: OutboundFault, reason: String) -> Self {
        Self {
            condition: fault.stanza_condition(),
            reason,
        }
    }

    pub(crate) fn not_found(reason: impl Into<String>) -> Self {
        Self::new(OutboundFault::Unreachable, reason.into())
    }
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::not_found(e.to_string())
    }
}

impl From<crate::ConnError> for OpenError {
    fn from(e: crate::ConnError) -> Self {
        OpenError::not_found(e.to_string())
    }
}

/// An authenticated session's connection, machine and place in the session list.
pub(crate) struct Opened {
    pub(crate) conn: XmlConn,
    pub(crate) machine: Outbound,
    pub(crate) method: Method,
    pub(crate) entry: Arc<crate::SessionEntry>,
}

/// A session's place in [`S2s::sessions`] while it negotiates: listed (and reachable by
/// `close_sessions_with`) from its connection on, as before the machine; taken out again
/// if it fails. Verification connections are not listed.
struct Listed<'a> {
    s2s: &'a S2s,
    entry: Option<Arc<crate::SessionEntry>>,
}

impl Listed<'_> {
    /// List a session's (new) connection to `peer`.
    fn connected(&mut self, peer: std::net::SocketAddr) {
        self.drop_entry();
        self.entry = Some(self.s2s.register(crate::Direction::Outbound, peer));
    }

    fn drop_entry(&mut self) {
        if let Some(e) = self.entry.take() {
            self.s2s.unregister(&e);
        }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.drop_entry();
    }
}

/// How an outgoing negotiation ended well.
pub(crate) enum Negotiated {
    /// A session, authenticated: stanzas may flow.
    Authenticated(Box<Opened>),
    /// A verification connection's answer.
    Verified(Verdict),
}

/// The machine's settings from ours.
pub(crate) fn machine_settings(cfg: &crate::S2sConfig) -> machine::Settings {
    machine::Settings {
        tls: cfg.tls_mode,
        sasl_external: cfg.sasl_external,
        presents_client_cert: cfg.presents_client_cert,
        require_peer_certs: cfg.require_peer_certs,
        dialback_secret: cfg.dialback_secret.clone(),
        deadlines: cfg.negotiation_deadlines(),
        keepalive: cfg.keepalive,
        ping_interval: cfg.ping_interval,
        ping_timeout: cfg.ping_timeout,
    }
}

/// The world as the machine asks about it: the connection's certificate (none before
/// connecting) and whether we hold back the peer's own streams.
pub(crate) struct World<'a> {
    pub(crate) s2s: &'a S2s,
    pub(crate) conn: Option<&'a XmlConn>,
    pub(crate) to: &'a str,
}

impl machine::Env for World<'_> {
    fn cert_covers(&self, domain: &str) -> bool {
        self.conn.is_some_and(|c| S2s::cert_covers(c, domain))
    }
    fn inbound_held_back(&self) -> bool {
        self.s2s.inbound_held_back(self.to)
    }
}

/// Feed the machine what the connection said.
pub(crate) fn feed(
    machine: &mut Outbound,
    event: Result<Event, crate::ConnError>,
    world: &World<'_>,
) {
    let now = std::time::Instant::now();
    match event {
        Ok(Event::StreamOpen(h)) => machine.header(now, &h, world),
        Ok(Event::Element(tl)) => machine.element(now, &tl.element, world),
        Ok(Event::StreamClose) => machine.peer_closed(),
        Err(crate::ConnError::Frame(e)) => machine.frame_error(&e),
        Err(e) => machine.connection_failed(e.to_string()),
    }
}

/// `work`'s output, or None when `deadline` passes first.
async fn within<F: Future>(deadline: Option<std::time::Instant>, work: F) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        _ = crate::sm::sleep_until_opt(deadline.map(Instant::from_std)) => None,
    }
}

impl S2s {
    /// Drive an outgoing negotiation ([`Outbound`]) as `from` with `to` for `purpose` (a
    /// wiring function): connect (direct TLS first unless TLS is disabled), feed the machine
    /// what the connection says and carry out what it asks, each wait bounded by its
    /// deadline. Used for sessions and verification connections.
    pub(crate) async fn negotiate(
        &self,
        from: &str,
        to: &str,
        purpose: Purpose,
    ) -> Result<Negotiated, OpenError> {
        let cfg = self.cfg();
        let session = purpose == Purpose::Session;
        let mut machine = Outbound::new(
            machine_settings(&cfg),
            from,
            to,
            purpose,
            std::time::Instant::now(),
        );
        let mut direct = cfg.tls_mode != TlsMode::Disabled;
        let mut listed = Listed {
            s2s: self,
            entry: None,
        };
        'connect: loop {
            let Some(opened) = within(machine.poll_timeout(), self.connect(to, direct)).await
            else {
                let world = World {
                    s2s: self,
                    conn: None,
                    to,
                };
                machine.timeout(std::time::Instant::now(), &world);
                return self.drain_ended(&mut machine);
            };
            direct = false;
            let mut conn = opened?;
            let cert = conn.tls.is_some().then(|| self.cert_status(&conn, false));
            machine.started(conn.peer, cert);
            if session {
                listed.connected(conn.peer);
            }
            loop {
                while let Some(action) = machine.poll_action() {
                    match action {
                        Action::Send(bytes) => {
                            self.write_for(&mut machine, &mut conn, bytes.as_bytes(), to)
                                .await
                        }
                        Action::StartTls => self.start_tls(&mut machine, &mut conn, to).await,
                        Action::RestartStream => conn.restart(),
                        Action::Reconnect(reason) => {
                            debug!(module = LOG_MODULE, remote = %to, reason = %reason, "direct TLS failed; trying STARTTLS");
                            continue 'connect;
                        }
                        Action::Note(note) => log_note(to, note),
                        Action::Close => conn.shutdown().await,
                        Action::Authenticated { method } => {
                            let entry = match listed.entry.take() {
                                Some(entry) => entry,
                                None => self.register(crate::Direction::Outbound, conn.peer),
                            };
                            let opened = Opened {
                                conn,
                                machine,
                                method,
                                entry,
                            };
                            return Ok(Negotiated::Authenticated(Box::new(opened)));
                        }
                        Action::Verified(verdict) => return Ok(Negotiated::Verified(verdict)),
                        Action::Failed(failure) => return Err(self.failed(failure)),
                        // Only once authenticated, when `stream_stanzas` has the machine.
                        Action::Ping | Action::Ended(_) | Action::PeerDead(_) => {}
                    }
                }
                let event = within(machine.poll_timeout(), conn.next_event()).await;
                let world = World {
                    s2s: self,
                    conn: Some(&conn),
                    to,
                };
                match event {
                    None => machine.timeout(std::time::Instant::now(), &world),
                    Some(event) => feed(&mut machine, event, &world),
                }
            }
        }
    }

    /// The end of a negotiation that was given up before it had a connection.
    fn drain_ended(&self, machine: &mut Outbound) -> Result<Negotiated, OpenError> {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Verified(verdict) => return Ok(Negotiated::Verified(verdict)),
                Action::Failed(failure) => return Err(self.failed(failure)),
                _ => {}
            }
        }
        Err(OpenError::not_found(
            "s2s negotiation ended without a result",
        ))
    }

    fn failed(&self, failure: Failure) -> OpenError {
        if failure.fault == OutboundFault::DialbackInvalid {
            self.counters
                .dialback_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        OpenError::new(failure.fault, failure.reason)
    }

    /// A connection to `to`'s servers: XEP-0368 direct TLS to its `_xmpps-server` endpoints
    /// first when `direct` (and it has any), plain TCP to its `_xmpp-server` ones otherwise or
    /// when that fails.
    async fn connect(&self, to: &str, direct: bool) -> Result<XmlConn, OpenError> {
        if direct {
            match self.connect_direct_tls(to).await {
                Ok(Some(conn)) => return Ok(conn),
                Ok(None) => {}
                Err(e) => {
                    debug!(module = LOG_MODULE, remote = %to, reason = %e.reason, "direct TLS failed; trying STARTTLS");
                }
            }
        }
        let targets = self.host.resolve(to).await.map_err(OpenError::not_found)?;
        let tcp = self
            .connect_targets(to, &targets)
            .await
            .map_err(OpenError::not_found)?;
        Ok(XmlConn::new(tcp, self.cfg().limits)?)
    }

    /// XEP-0368: TLS from the first byte to `to`'s `_xmpps-server` endpoints, if it has any.
    async fn connect_direct_tls(&self, to: &str) -> Result<Option<XmlConn>, OpenError> {
        let targets = self.host.resolve_direct_tls(to).await;
        if targets.is_empty() {
            return Ok(None);
        }
        let tcp = self
            .connect_targets(to, &targets)
            .await
            .map_err(OpenError::not_found)?;
        let mut conn = XmlConn::new(tcp, self.cfg().limits)?;
        let mut cfg = (*self.cfg().tls_client).clone();
        cfg.alpn_protocols = vec![crate::ALPN_XMPP_SERVER.to_vec()];
        if let Err(e) = conn.connect_tls(Arc::new(cfg), to).await {
            self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        conn.mark_direct_tls();
        Ok(Some(conn))
    }

    /// The client side of STARTTLS, within the machine's deadline; the outcome goes back to
    /// the machine.
    async fn start_tls(&self, machine: &mut Outbound, conn: &mut XmlConn, to: &str) {
        let handshake = conn.connect_tls(self.cfg().tls_client.clone(), to);
        match within(machine.poll_timeout(), handshake).await {
            Some(Ok(())) => machine.tls_established(self.cert_status(conn, false)),
            Some(Err(e)) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                machine.tls_failed(e.to_string());
            }
            None => {
                let now = std::time::Instant::now();
                if machine.handshake_deadline().is_some_and(|by| now >= by) {
                    // The handshake's own deadline, not the whole negotiation's.
                    self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                }
                let world = World {
                    s2s: self,
                    conn: None,
                    to,
                };
                machine.timeout(now, &world);
            }
        }
    }

    /// Write what the negotiating machine asks, within its deadline (last words, once it is
    /// done, within [`crate::deadlines::FINAL_WRITE`]); a failure goes back to it.
    async fn write_for(&self, machine: &mut Outbound, conn: &mut XmlConn, bytes: &[u8], to: &str) {
        let deadline = match machine.poll_timeout() {
            Some(t) => t,
            None => std::time::Instant::now() + crate::deadlines::FINAL_WRITE,
        };
        match within(Some(deadline), conn.send(bytes)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => machine.connection_failed(e.to_string()),
            None => {
                let world = World {
                    s2s: self,
                    conn: None,
                    to,
                };
                machine.timeout(std::time::Instant::now(), &world);
            }
        }
    }
}

/// The machine's notes, as the debug lines they always were.
fn log_note(to: &str, note: Note) {
    match note {
        Note::SaslRefused { answer } => {
            debug!(module = LOG_MODULE, remote = %to, answer = %answer, "SASL EXTERNAL refused; falling back to dialback");
        }
        Note::Ignored { element } => {
            debug!(module = LOG_MODULE, remote = %to, element = %element, "ignored while awaiting dialback result");
        }
        // Only an authenticated session is reconfigured (see `stream_stanzas`).
        Note::NoLongerAllowed { .. } => {}
    }
}
