//! s2s stream negotiation as pure state machines (no sockets, no clock), in the manner of
//! quinn-proto: the driver feeds events in (a stream header, an element, TLS done, a dialback
//! verdict, the current time) and executes the actions that come out (write these bytes, start
//! TLS, verify this key, deliver this stanza, close), sleeping until [`inbound::Inbound::poll_timeout`]
//! says the next deadline is due.
//!
//! * [`inbound`]: we are the receiving server (and the authoritative server for keys we
//!   issued).
//! * [`outbound`]: we are the originating server (a session we open), or the receiving server
//!   asking an authoritative server about a key (a verification connection).
//!
//! Which stream error answers which fault is decided in [`crate::error::Fault`] (and, for our
//! own connections, [`crate::error::OutboundFault`]), not here.

pub mod inbound;
pub mod outbound;

use std::time::Duration;

/// How TLS is used on s2s connections (Expressway's security modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No dialback and no stanza over an unencrypted stream; peers that cannot do TLS are
    /// refused with `<policy-violation/>`.
    #[default]
    Required,
    /// Offer and use TLS; continue without it when the peer cannot.
    Optional,
    /// Never negotiate TLS.
    Disabled,
}

/// What a peer's certificate is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// No TLS, or no certificate presented.
    Absent,
    /// Chains to a trusted CA, in validity, not revoked, acceptable usage.
    Valid,
    /// Presented but not trusted; the string says why.
    Invalid(String),
}

/// An authoritative server's answer to a dialback verification (XEP-0220 2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is genuine: `remote` really sent it.
    Valid,
    /// The key is not genuine.
    Invalid,
    /// No answer could be had (connection, TLS, timeout, dialback error, too many
    /// verifications at once).
    Failed(String),
}

/// The negotiation deadlines (RFC 6120 leaves them to the implementation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept (and from each stream restart) to the peer's stream header.
    pub stream_header: Duration,
    /// A TLS handshake, from `<proceed/>` to its end.
    pub tls_handshake: Duration,
    /// From accept to the first authenticated domain pair.
    pub authentication: Duration,
    /// An authenticated stream with no stanza for this long is closed.
    pub idle: Duration,
}

/// `<a h='…'/>`: a stream-management acknowledgement (XEP-0198).
pub fn sm_ack(h: u32) -> String {
    format!("<a xmlns='{}' h='{h}'/>", crate::ns::SM)
}

/// At most this much of a peer-chosen string goes into a log line or a stream error's text.
const CLIP: usize = 256;

/// `s`, cut to 256 bytes (on a character boundary) with a marker when cut: log lines and
/// error texts never echo unbounded peer data.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= CLIP {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = CLIP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

/// The next action of a machine's queue. Once the queue is empty its buffer is given back:
/// nothing is kept between events, so a connection that only waits (thousands of them, when
/// the internet is hostile) costs just its state.
fn next_action<A>(queue: &mut std::collections::VecDeque<A>) -> Option<A> {
    let next = queue.pop_front();
    if next.is_none() && queue.capacity() > 0 {
        *queue = std::collections::VecDeque::new();
    }
    next
}
