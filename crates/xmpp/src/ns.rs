//! XML namespace URIs used by XMPP.

/// Stream namespace (`stream:` prefix), RFC 6120 4.8.1.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// Content namespace of server-to-server streams.
pub const SERVER: &str = "jabber:server";
/// Content namespace of client-to-server streams.
pub const CLIENT: &str = "jabber:client";
/// Server dialback (XEP-0220), conventionally bound to the `db:` prefix.
pub const DIALBACK: &str = "jabber:server:dialback";
/// Dialback stream feature (XEP-0220 section 2.1).
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// STARTTLS negotiation, RFC 6120 5.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL negotiation, RFC 6120 6.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Stream error conditions, RFC 6120 4.9.3.
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions, RFC 6120 8.3.3.
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Stream management (XEP-0198), version 3.
pub const SM: &str = "urn:xmpp:sm:3";
/// XMPP Ping (XEP-0199).
pub const PING: &str = "urn:xmpp:ping";
/// The namespace permanently bound to the `xml:` prefix.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of `xmlns` declarations themselves (never usable as a binding).
pub const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
