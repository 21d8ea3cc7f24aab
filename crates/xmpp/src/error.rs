//! RFC 6120 stream and stanza error conditions in one place.

use crate::element::{escape_text, Element, Namespace};
use crate::ns;

/// Defines a condition enum with its wire names.
macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!("`<", $text, "/>`")]
                $variant,
            )+
        }

        impl $name {
            /// Every condition, in RFC order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The element name of the condition, e.g. `"not-well-formed"`.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The condition with this element name, if defined.
            pub fn from_str_opt(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// Stream error conditions (RFC 6120 4.9.3).
    StreamCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// Stanza error conditions (RFC 6120 8.3.3).
    StanzaCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

/// Stanza error types (RFC 6120 8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl StanzaErrorType {
    /// The `type` attribute value.
    pub fn as_str(&self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }

    /// The error type with this attribute value, if defined.
    pub fn from_str_opt(s: &str) -> Option<Self> {
        match s {
            "auth" => Some(StanzaErrorType::Auth),
            "cancel" => Some(StanzaErrorType::Cancel),
            "continue" => Some(StanzaErrorType::Continue),
            "modify" => Some(StanzaErrorType::Modify),
            "wait" => Some(StanzaErrorType::Wait),
            _ => None,
        }
    }
}

impl StanzaCondition {
    /// The error type RFC 6120 8.3.3 associates with the condition (the first one named
    /// where it allows several; `undefined-condition` has none and gets `cancel`).
    pub fn default_type(&self) -> StanzaErrorType {
        use StanzaCondition as C;
        use StanzaErrorType as T;
        match self {
            C::BadRequest
            | C::JidMalformed
            | C::NotAcceptable
            | C::PolicyViolation
            | C::Redirect => T::Modify,
            C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
                T::Auth
            }
            C::RecipientUnavailable
            | C::RemoteServerTimeout
            | C::ResourceConstraint
            | C::UnexpectedRequest => T::Wait,
            C::Conflict
            | C::FeatureNotImplemented
            | C::Gone
            | C::InternalServerError
            | C::ItemNotFound
            | C::NotAllowed
            | C::RemoteServerNotFound
            | C::ServiceUnavailable
            | C::UndefinedCondition => T::Cancel,
        }
    }
}

/// Serialize a stream error, e.g. `<stream:error><not-well-formed
/// xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text
/// xmlns='urn:ietf:params:xml:ns:xmpp-streams'>...</text></stream:error>`.
/// Does not include the closing `</stream:stream>`.
pub fn stream_error(cond: StreamCondition, text: Option<&str>) -> String {
    let mut out = format!(
        "<stream:error><{} xmlns='{}'/>",
        cond.as_str(),
        ns::STREAM_ERRORS
    );
    if let Some(text) = text {
        out.push_str("<text xmlns='");
        out.push_str(ns::STREAM_ERRORS);
        out.push_str("'>");
        out.push_str(&escape_text(text));
        out.push_str("</text>");
    }
    out.push_str("</stream:error>");
    out
}

/// Parse a received `<stream:error>`: its condition ([`StreamCondition::UndefinedCondition`]
/// when missing or unknown) and its text, if any.
pub fn parse_stream_error(el: &Element) -> (StreamCondition, Option<String>) {
    let mut cond = None;
    let mut text = None;
    for child in el.elements().filter(|c| c.ns == ns::STREAM_ERRORS) {
        if child.name == "text" {
            text.get_or_insert_with(|| child.text());
        } else if cond.is_none() {
            cond = StreamCondition::from_str_opt(&child.name);
        }
    }
    (cond.unwrap_or(StreamCondition::UndefinedCondition), text)
}

/// The error reply to a stanza (RFC 6120 8.3). `None` when the original is itself of type
/// `error` (never answer an error with an error) or is not a message, presence or iq in the
/// jabber:server or jabber:client namespace. The reply swaps `from` and `to`, keeps `id`, has
/// type `error` and carries only `<error type=..><cond/>[<text/>]</error>`.
pub fn stanza_error_reply(
    original: &Element,
    cond: StanzaCondition,
    text: Option<&str>,
) -> Option<Element> {
    let is_stanza = matches!(original.name.as_str(), "message" | "presence" | "iq")
        && (original.ns == ns::SERVER || original.ns == ns::CLIENT);
    if !is_stanza || original.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::in_namespace(&original.name, original.ns.clone());
    if let Some(to) = original.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = original.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(id) = original.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("type", "error");
    Some(reply.with_child(error_element(&original.ns, cond, text)))
}

/// `<error type=..><cond xmlns=STANZA_ERRORS/>[<text xmlns=STANZA_ERRORS>..</text>]</error>`.
fn error_element(stanza_ns: &Namespace, cond: StanzaCondition, text: Option<&str>) -> Element {
    let mut error = Element::in_namespace("error", stanza_ns.clone())
        .with_attr("type", cond.default_type().as_str())
        .with_child(Element::new(cond.as_str(), ns::STANZA_ERRORS));
    if let Some(text) = text {
        error.push_child(Element::new("text", ns::STANZA_ERRORS).with_text(text));
    }
    error
}

/// Why the input cannot be framed; every variant maps to a stream error condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The input is not well-formed XML (or not namespace-well-formed).
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// Comments, processing instructions, DTDs or entity references XMPP forbids.
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    /// An element (or the header) is larger than the configured limit.
    #[error("element larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Elements nest deeper than the configured limit.
    #[error("elements nested deeper than {limit}")]
    TooDeep {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A start tag carries more attributes than the configured limit.
    #[error("more than {limit} attributes on one element")]
    TooManyAttributes {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A start tag declares more namespaces than the configured limit.
    #[error("more than {limit} namespace declarations on one element")]
    TooManyNamespaces {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The tree of an element would cost more memory than its size allows
    /// ([`Limits::parse_cost_factor`]).
    #[error("element would cost more than {limit} bytes of memory to parse")]
    TooExpensive {
        /// The budget in bytes that was exceeded.
        limit: usize,
    },
    /// The stream header is not `stream` in the streams namespace.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    /// Well-formed XML that is not a valid XMPP stream.
    #[error("bad format: {0}")]
    BadFormat(String),
}

impl FrameError {
    /// The stream error condition to send before closing.
    pub fn condition(&self) -> StreamCondition {
        match self {
            FrameError::NotWellFormed(_) => StreamCondition::NotWellFormed,
            FrameError::RestrictedXml(_) => StreamCondition::RestrictedXml,
            FrameError::TooLarge { .. }
            | FrameError::TooDeep { .. }
            | FrameError::TooManyAttributes { .. }
            | FrameError::TooManyNamespaces { .. }
            | FrameError::TooExpensive { .. } => StreamCondition::PolicyViolation,
            FrameError::InvalidNamespace(_) => StreamCondition::InvalidNamespace,
            FrameError::BadFormat(_) => StreamCondition::BadFormat,
        }
    }
}

/// Why the s2s layer hands a stanza it was asked to send back to the application, besides a
/// session that could not be opened ([`OutboundFault::stanza_condition`]); in
/// [`Bounce::condition`], the stanza error that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounce {
    /// Its `from` or `to` domain does not normalise.
    MalformedDomain,
    /// The pair's queue is full.
    QueueFull,
    /// It waited in the pair's queue longer than the queue's age limit.
    Expired,
    /// No session for the pair could take it (it kept ending as the stanza arrived).
    NoSession,
}

impl Bounce {
    /// The stanza error condition of the bounce.
    pub fn condition(self) -> StanzaCondition {
        match self {
            Bounce::MalformedDomain => StanzaCondition::JidMalformed,
            Bounce::QueueFull => StanzaCondition::ResourceConstraint,
            Bounce::Expired => StanzaCondition::RemoteServerTimeout,
            Bounce::NoSession => StanzaCondition::RemoteServerNotFound,
        }
    }
}

/// Why an outgoing s2s negotiation (the `negotiation::outbound` machine) failed, and, in
/// [`OutboundFault::stream_condition`] and [`OutboundFault::stanza_condition`], the one place
/// that decides what answers it: the stream error we send before closing (if any) and the
/// stanza error the stanzas queued for the pair are bounced with. The display text goes into
/// our stream error's `<text/>`; the log gets the failure's own, fuller reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboundFault {
    /// The federation policy refuses the remote domain (decided before connecting).
    #[error("refused by the federation policy")]
    PolicyRefused,
    /// The remote domain's servers could not be resolved or reached.
    #[error("unreachable")]
    Unreachable,
    /// The connection failed (I/O error, end of file) during the negotiation.
    #[error("connection failed")]
    Connection,
    /// The peer's bytes could not be framed.
    #[error("not well-formed")]
    Frame,
    /// Something other than a stream header where one was due.
    #[error("expected a stream header")]
    NoHeader,
    /// A stream header where none was due.
    #[error("unexpected stream header")]
    UnexpectedHeader,
    /// Something other than stream features after a version 1.0 header.
    #[error("expected stream features")]
    NoFeatures,
    /// The peer sent a stream error.
    #[error("stream error from peer")]
    PeerError,
    /// The peer closed its stream.
    #[error("stream closed by peer")]
    PeerClosed,
    /// TLS is required and the peer does not offer STARTTLS.
    #[error("TLS is required")]
    TlsRequired,
    /// The peer answered `<starttls/>` with something other than `<proceed/>`.
    #[error("STARTTLS refused")]
    StartTlsRefused,
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    TlsFailed,
    /// The TLS handshake did not end within its deadline.
    #[error("TLS handshake timed out")]
    TlsTimedOut,
    /// A valid certificate naming the remote domain is required and the peer has none.
    #[error("certificate not trusted")]
    CertificateNotTrusted,
    /// The peer's header has no stream id to bind a dialback key to.
    #[error("no stream id")]
    NoStreamId,
    /// The receiving server refused our dialback key.
    #[error("dialback key refused")]
    DialbackInvalid,
    /// The receiving server answered our dialback key with an error.
    #[error("dialback error")]
    DialbackError,
    /// The whole negotiation did not end within the authentication deadline.
    #[error("negotiation timed out")]
    NotInTime,
    /// A reload: the federation policy no longer allows the remote domain.
    #[error("the federation policy no longer allows this domain")]
    NoLongerAllowed,
    /// A reload made TLS required on an unencrypted session.
    #[error("TLS is now required")]
    TlsNowRequired,
    /// A reload made a valid certificate naming the remote domain required, and the peer's
    /// is not (or no longer) one.
    #[error("a valid certificate is now required")]
    CertificateNowRequired,
}

impl OutboundFault {
    /// The stream error we send before closing; None: the connection is dropped without one
    /// (the peer ended it, or failed in a way a stream error would not help).
    pub fn stream_condition(&self) -> Option<StreamCondition> {
        match self {
            OutboundFault::TlsRequired
            | OutboundFault::CertificateNotTrusted
            | OutboundFault::NoLongerAllowed
            | OutboundFault::TlsNowRequired
            | OutboundFault::CertificateNowRequired => Some(StreamCondition::PolicyViolation),
            _ => None,
        }
    }

    /// The stanza error the stanzas waiting for the session are bounced with.
    pub fn stanza_condition(&self) -> StanzaCondition {
        match self {
            OutboundFault::PolicyRefused => StanzaCondition::ServiceUnavailable,
            OutboundFault::NotInTime | OutboundFault::TlsTimedOut => {
                StanzaCondition::RemoteServerTimeout
            }
            _ => StanzaCondition::RemoteServerNotFound,
        }
    }
}

/// Why negotiation ends a stream with a stream error: every fault the negotiation state machines
/// (the `negotiation` module) can close a stream for, and, in [`Fault::condition`], the one place
/// that decides which RFC 6120 condition answers it. The display text goes into the error's
/// `<text/>` and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The input could not be framed.
    #[error("{0}")]
    Frame(FrameError),
    /// No stream header arrived within its deadline (after accept or a restart).
    #[error("no stream header in time")]
    NoHeaderInTime,
    /// No domain pair was authenticated within the authentication deadline.
    #[error("not authenticated in time")]
    NotAuthenticatedInTime,
    /// An authenticated stream carried no stanza for the idle timeout.
    #[error("idle")]
    Idle,
    /// The stream header's default namespace is not jabber:server.
    #[error("expected jabber:server")]
    WrongNamespace,
    /// The stream header's `to` is not a domain served here (or not a domain).
    #[error("this domain is not served here")]
    UnservedStreamTo,
    /// The stream header's `from` is not a domain.
    #[error("malformed from domain")]
    MalformedStreamFrom,
    /// A valid certificate is required and the peer has none.
    #[error("a valid certificate is required")]
    CertificateRequired,
    /// `<starttls/>` on a stream already encrypted.
    #[error("TLS is already active")]
    TlsAlreadyActive,
    /// Dialback on an unencrypted stream while TLS is required.
    #[error("TLS is required before authentication")]
    TlsRequiredForAuth,
    /// `<db:result/>` without `from` or `to`.
    #[error("db:result without from/to")]
    DialbackWithoutAddresses,
    /// `<db:result/>` whose `from` or `to` is not a domain.
    #[error("db:result with a bad domain")]
    DialbackBadDomain,
    /// The federation policy refuses the domain.
    #[error("federation with {0} is not allowed")]
    PolicyRefused(String),
    /// More dialback requests under way at once than a stream may have.
    #[error("too many dialback requests at once")]
    TooManyDialbackRequests,
    /// The key was genuine but the (required) certificate does not name the domain.
    #[error("the certificate does not name this domain")]
    CertificateDoesNotName,
    /// Too many dialback keys on this stream were refused.
    #[error("too many dialback keys refused on this stream")]
    TooManyKeysRefused,
    /// `<db:verify/>` without `from`, `to` or `id`.
    #[error("db:verify without from/to/id")]
    VerifyWithoutAddresses,
    /// A stanza without `from` or `to`.
    #[error("stanza without from or to")]
    StanzaWithoutAddresses,
    /// A stanza whose `from` is not a JID.
    #[error("malformed from address")]
    MalformedStanzaFrom,
    /// An authenticated peer addressed a domain not served here.
    #[error("{0} is not served here")]
    UnservedStanzaTo(String),
    /// A stanza from a domain this stream did not authenticate.
    #[error("{0} is not authenticated on this stream")]
    Unauthenticated(String),
    /// A top-level element nobody asked for.
    #[error("unexpected <{name}/> in {ns}")]
    Unexpected {
        /// Its name (clipped).
        name: String,
        /// Its namespace (clipped).
        ns: String,
    },
    /// A reload made TLS required on an unencrypted stream.
    #[error("TLS is now required")]
    TlsNowRequired,
    /// A reload made a valid certificate required, and the peer has none.
    #[error("a valid certificate is now required")]
    CertificateNowRequired,
    /// A reload left no authenticated pair on the stream.
    #[error("federation with this domain is no longer allowed")]
    NoLongerAllowed,
    /// The server is stopping (a drain or a planned restart): reconnect, to another of its
    /// addresses.
    #[error("the server is stopping; connect again")]
    Shutdown,
}

impl Fault {
    /// The stream error condition that answers the fault.
    pub fn condition(&self) -> StreamCondition {
        use StreamCondition as C;
        match self {
            Fault::Frame(e) => e.condition(),
            Fault::NoHeaderInTime | Fault::NotAuthenticatedInTime | Fault::Idle => {
                C::ConnectionTimeout
            }
            Fault::WrongNamespace => C::InvalidNamespace,
            Fault::UnservedStreamTo | Fault::UnservedStanzaTo(_) => C::HostUnknown,
            Fault::MalformedStreamFrom | Fault::MalformedStanzaFrom | Fault::Unauthenticated(_) => {
                C::InvalidFrom
            }
            Fault::CertificateRequired
            | Fault::CertificateDoesNotName
            | Fault::TooManyKeysRefused
            | Fault::CertificateNowRequired => C::NotAuthorized,
            Fault::TlsAlreadyActive
            | Fault::TlsRequiredForAuth
            | Fault::PolicyRefused(_)
            | Fault::TooManyDialbackRequests
            | Fault::TlsNowRequired
            | Fault::NoLongerAllowed => C::PolicyViolation,
            Fault::DialbackWithoutAddresses
            | Fault::DialbackBadDomain
            | Fault::VerifyWithoutAddresses
            | Fault::StanzaWithoutAddresses => C::ImproperAddressing,
            Fault::Unexpected { .. } => C::UnsupportedStanzaType,
            Fault::Shutdown => C::SystemShutdown,
        }
    }

    /// True for the deadlines of negotiation (header, authentication), which the edge counts
    /// as deadline closes; not for idleness.
    pub fn is_negotiation_deadline(&self) -> bool {
        matches!(self, Fault::NoHeaderInTime | Fault::NotAuthenticatedInTime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_names_round_trip() {
        assert_eq!(StreamCondition::ALL.len(), 25);
        for c in StreamCondition::ALL {
            assert_eq!(StreamCondition::from_str_opt(c.as_str()), Some(*c));
        }
        assert_eq!(StanzaCondition::ALL.len(), 22);
        for c in StanzaCondition::ALL {
            assert_eq!(StanzaCondition::from_str_opt(c.as_str()), Some(*c));
        }
        assert_eq!(StreamCondition::NotWellFormed.as_str(), "not-well-formed");
        assert_eq!(
            StanzaCondition::RemoteServerNotFound.as_str(),
            "remote-server-not-found"
        );
        assert_eq!(StreamCondition::from_str_opt("bogus"), None);
    }

    #[test]
    fn error_types() {
        assert_eq!(
            StanzaCondition::BadRequest.default_type(),
            StanzaErrorType::Modify
        );
        assert_eq!(
            StanzaCondition::Forbidden.default_type(),
            StanzaErrorType::Auth
        );
        assert_eq!(
            StanzaCondition::RemoteServerTimeout.default_type(),
            StanzaErrorType::Wait
        );
        assert_eq!(
            StanzaCondition::ServiceUnavailable.default_type(),
            StanzaErrorType::Cancel
        );
        assert_eq!(StanzaErrorType::Continue.as_str(), "continue");
        assert_eq!(
            StanzaErrorType::from_str_opt("wait"),
            Some(StanzaErrorType::Wait)
        );
    }

    #[test]
    fn stream_error_xml() {
        assert_eq!(
            stream_error(StreamCondition::HostUnknown, None),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
        assert_eq!(
            stream_error(StreamCondition::PolicyViolation, Some("a<b")),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text></stream:error>"
        );
    }

    #[test]
    fn parse_stream_error_known_unknown_and_text() {
        let el = Element::new("error", ns::STREAM)
            .with_child(Element::new("text", ns::STREAM_ERRORS).with_text("bye"))
            .with_child(Element::new("system-shutdown", ns::STREAM_ERRORS))
            .with_child(Element::new("app", "urn:app"));
        assert_eq!(
            parse_stream_error(&el),
            (StreamCondition::SystemShutdown, Some("bye".into()))
        );
        let el =
            Element::new("error", ns::STREAM).with_child(Element::new("nope", ns::STREAM_ERRORS));
        assert_eq!(
            parse_stream_error(&el),
            (StreamCondition::UndefinedCondition, None)
        );
    }

    #[test]
    fn iq_error_reply_swaps_and_drops_payload() {
        let iq = Element::new("iq", ns::SERVER)
            .with_attr("from", "a@x/r")
            .with_attr("to", "y")
            .with_attr("id", "q1")
            .with_attr("type", "get")
            .with_child(Element::new("ping", ns::PING));
        let reply = stanza_error_reply(&iq, StanzaCondition::ServiceUnavailable, Some("no"))
            .expect("reply");
        assert_eq!(
            reply.to_xml(ns::SERVER),
            "<iq from='y' to='a@x/r' id='q1' type='error'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text></error></iq>"
        );
    }

    #[test]
    fn message_error_reply_keeps_only_error() {
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x")
            .with_attr("to", "b@y")
            .with_child(Element::new("body", ns::CLIENT).with_text("secret"));
        let reply =
            stanza_error_reply(&msg, StanzaCondition::RemoteServerNotFound, None).expect("reply");
        assert_eq!(reply.ns, ns::CLIENT);
        assert_eq!(reply.elements().count(), 1);
        let error = reply.child("error", ns::CLIENT).expect("error");
        assert_eq!(error.attr("type"), Some("cancel"));
        assert!(error
            .child("remote-server-not-found", ns::STANZA_ERRORS)
            .is_some());
        assert!(reply.attr("id").is_none());
    }

    #[test]
    fn no_reply_to_errors_or_non_stanzas() {
        let err = Element::new("message", ns::SERVER).with_attr("type", "error");
        assert!(stanza_error_reply(&err, StanzaCondition::BadRequest, None).is_none());
        let other = Element::new("result", ns::DIALBACK);
        assert!(stanza_error_reply(&other, StanzaCondition::BadRequest, None).is_none());
        let foreign = Element::new("message", "urn:other");
        assert!(stanza_error_reply(&foreign, StanzaCondition::BadRequest, None).is_none());
    }
}
