//! Stream headers (RFC 6120 4.7).

use std::collections::HashSet;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use crate::element::escape_attr;
use crate::error::FrameError;
use crate::limits::Limits;
use crate::ns;
use crate::xmltext::{
    check_declaration, declaration_prefix, split_qname, truncate, unescape_attr_value, utf8,
    xml_error,
};

/// The closing tag of a stream whose header was written by [`StreamHeader::to_xml`].
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// The attributes and namespace declarations of a `<stream:stream>` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to` attribute.
    pub to: Option<String>,
    /// `from` attribute.
    pub from: Option<String>,
    /// `id` attribute (stream ID).
    pub id: Option<String>,
    /// `version` attribute.
    pub version: Option<String>,
    /// `xml:lang` attribute.
    pub lang: Option<String>,
    /// Default (content) namespace, e.g. [`ns::SERVER`]; empty when none was declared.
    pub default_ns: String,
    /// Declared prefixes in document order, e.g. `("db", "jabber:server:dialback")`.
    pub prefixes: Vec<(String, String)>,
}

impl StreamHeader {
    /// Whether the header binds a prefix to the dialback namespace (XEP-0220 requires a
    /// receiving server to see `xmlns:db` before it offers or accepts dialback).
    pub fn declares_dialback(&self) -> bool {
        self.prefixes.iter().any(|(_, uri)| uri == ns::DIALBACK)
    }

    /// The URI bound to `prefix` on this header, if any.
    pub fn prefix_uri(&self, prefix: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }

    /// Serialize as an XML declaration plus an open `<stream:stream>` tag:
    /// `<?xml version='1.0'?><stream:stream xmlns='jabber:server'
    /// xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'
    /// from=.. to=.. id=.. version='1.0' xml:lang=..>`.
    ///
    /// Absent attributes are omitted; `xmlns:stream` and `xmlns:db` are always declared
    /// (Prosody requires `xmlns:db` on every header, restarts included); `version` is always
    /// `'1.0'` when present; an empty `default_ns` is written as [`ns::SERVER`]; other
    /// entries of `prefixes` are declared too.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<?xml version='1.0'?><stream:stream");
        let default_ns = if self.default_ns.is_empty() {
            ns::SERVER
        } else {
            &self.default_ns
        };
        push_attr(&mut out, "xmlns", default_ns);
        push_attr(&mut out, "xmlns:stream", ns::STREAM);
        push_attr(&mut out, "xmlns:db", ns::DIALBACK);
        for (prefix, uri) in &self.prefixes {
            if !matches!(prefix.as_str(), "stream" | "db" | "xml" | "") {
                push_attr(&mut out, &format!("xmlns:{prefix}"), uri);
            }
        }
        let attrs = [("from", &self.from), ("to", &self.to), ("id", &self.id)];
        for (name, value) in attrs {
            if let Some(v) = value {
                push_attr(&mut out, name, v);
            }
        }
        if self.version.is_some() {
            push_attr(&mut out, "version", "1.0");
        }
        if let Some(lang) = &self.lang {
            push_attr(&mut out, "xml:lang", lang);
        }
        out.push('>');
        out
    }
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    out.push_str(&escape_attr(value));
    out.push('\'');
}

/// Parse a received stream header open tag. Returns the header and the qualified name of the
/// stream element as written (to match its closing tag). The header may declare at most
/// `limits.max_namespace_declarations` namespaces, each with a valid URI.
pub(crate) fn parse_header(
    raw: &[u8],
    limits: &Limits,
) -> Result<(StreamHeader, String), FrameError> {
    let text = utf8(raw)?;
    let mut reader = Reader::from_str(text);
    let start = match reader.read_event().map_err(xml_error)? {
        XmlEvent::Start(e) | XmlEvent::Empty(e) => e,
        _ => return Err(FrameError::BadFormat("expected a stream header".into())),
    };
    let qname = utf8(start.name().into_inner())?.to_owned();
    let mut header = StreamHeader::default();
    let mut default_ns = None;
    let mut seen = HashSet::new();
    let mut declarations = 0usize;
    for attr in start.attributes().with_checks(false) {
        let attr = attr.map_err(xml_error)?;
        let key = utf8(attr.key.into_inner())?;
        if !seen.insert(key) {
            return Err(FrameError::NotWellFormed(format!(
                "duplicate attribute {:?} on stream header",
                truncate(key)
            )));
        }
        if declaration_prefix(key)?.is_some() {
            declarations += 1;
            if declarations > limits.max_namespace_declarations {
                return Err(FrameError::TooManyNamespaces {
                    limit: limits.max_namespace_declarations,
                });
            }
        }
        let value = unescape_attr_value(utf8(&attr.value)?)?;
        apply_header_attr(&mut header, &mut default_ns, key, value)?;
    }
    header.default_ns = default_ns.unwrap_or_default();
    check_stream_name(&header, &qname)?;
    Ok((header, qname))
}

fn apply_header_attr(
    header: &mut StreamHeader,
    default_ns: &mut Option<String>,
    key: &str,
    value: String,
) -> Result<(), FrameError> {
    match declaration_prefix(key)? {
        Some("") => {
            check_declaration("", &value)?;
            *default_ns = Some(value);
        }
        Some(prefix) => {
            if check_declaration(prefix, &value)? {
                header.prefixes.push((prefix.to_owned(), value));
            }
        }
        None => match key {
            "to" => header.to = Some(value),
            "from" => header.from = Some(value),
            "id" => header.id = Some(value),
            "version" => header.version = Some(value),
            "xml:lang" => header.lang = Some(value),
            _ => {}
        },
    }
    Ok(())
}

/// The header must be an element named `stream` in [`ns::STREAM`], with a content namespace
/// other than the stream namespace.
fn check_stream_name(header: &StreamHeader, qname: &str) -> Result<(), FrameError> {
    let (prefix, local) = split_qname(qname)
        .map_err(|_| FrameError::InvalidNamespace("malformed stream element name".into()))?;
    let uri = match prefix {
        None => Some(header.default_ns.as_str()),
        Some(p) => header.prefix_uri(p),
    };
    let Some(uri) = uri else {
        return Err(FrameError::InvalidNamespace(format!(
            "stream element prefix {:?} is not bound",
            truncate(prefix.unwrap_or(""))
        )));
    };
    if local != "stream" || uri != ns::STREAM {
        return Err(FrameError::InvalidNamespace(format!(
            "expected stream element in {}, got {:?} in {:?}",
            ns::STREAM,
            truncate(local),
            truncate(uri)
        )));
    }
    if header.default_ns == ns::STREAM {
        return Err(FrameError::InvalidNamespace(
            "the content namespace cannot be the stream namespace".into(),
        ));
    }
    Ok(())
}

/// Parse an `<?xml ...?>` declaration: version 1.x, encoding (if given) UTF-8.
pub(crate) fn check_declaration_pi(raw: &[u8]) -> Result<(), FrameError> {
    let text = utf8(raw)?;
    let mut reader = Reader::from_str(text);
    let XmlEvent::Decl(decl) = reader.read_event().map_err(xml_error)? else {
        return Err(FrameError::NotWellFormed(
            "malformed XML declaration".into(),
        ));
    };
    let version = decl.version().map_err(xml_error)?;
    if !version.starts_with(b"1.") {
        return Err(FrameError::BadFormat("unsupported XML version".into()));
    }
    if let Some(encoding) = decl.encoding() {
        let encoding = encoding.map_err(xml_error)?;
        if !encoding.eq_ignore_ascii_case(b"utf-8") {
            return Err(FrameError::BadFormat(
                "unsupported encoding (XMPP requires UTF-8)".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_xml_full() {
        let h = StreamHeader {
            from: Some("a.example".into()),
            to: Some("b.example".into()),
            id: Some("x'1".into()),
            version: Some("1.0".into()),
            default_ns: ns::SERVER.into(),
            ..Default::default()
        };
        assert_eq!(
            h.to_xml(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='a.example' to='b.example' id='x&apos;1' version='1.0'>"
        );
    }

    #[test]
    fn to_xml_minimal_defaults_to_server_and_normalizes_version() {
        let h = StreamHeader {
            version: Some("1.5".into()),
            ..Default::default()
        };
        assert_eq!(
            h.to_xml(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'>"
        );
    }

    #[test]
    fn to_xml_round_trips_through_parse() {
        let h = StreamHeader {
            from: Some("a".into()),
            to: Some("b".into()),
            version: Some("1.0".into()),
            lang: Some("en".into()),
            default_ns: ns::CLIENT.into(),
            prefixes: vec![("x".into(), "urn:x".into())],
            ..Default::default()
        };
        let xml = h.to_xml();
        let open = xml.strip_prefix("<?xml version='1.0'?>").expect("decl");
        let (parsed, qname) = parse_header(open.as_bytes(), &Limits::default()).expect("parses");
        assert_eq!(qname, "stream:stream");
        assert_eq!(parsed.from.as_deref(), Some("a"));
        assert_eq!(parsed.lang.as_deref(), Some("en"));
        assert_eq!(parsed.default_ns, ns::CLIENT);
        assert!(parsed.declares_dialback());
        assert_eq!(parsed.prefix_uri("x"), Some("urn:x"));
    }

    #[test]
    fn parse_rejects_wrong_namespace_or_name() {
        for raw in [
            "<stream:stream xmlns:stream='urn:wrong'>",
            "<stream:foo xmlns:stream='http://etherx.jabber.org/streams'>",
            "<stream:stream xmlns='jabber:server'>",
            "<stream xmlns='http://etherx.jabber.org/streams'>",
            "<message xmlns='jabber:server'>",
        ] {
            assert!(
                matches!(
                    parse_header(raw.as_bytes(), &Limits::default()),
                    Err(FrameError::InvalidNamespace(_))
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn parse_accepts_other_stream_prefix() {
        let (h, qname) = parse_header(
            b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' to='x'>",
            &Limits::default(),
        )
        .expect("parses");
        assert_eq!(qname, "s:stream");
        assert_eq!(h.to.as_deref(), Some("x"));
        assert!(!h.declares_dialback());
    }

    #[test]
    fn parse_rejects_empty_prefix_declaration() {
        let raw = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:='urn:x'>";
        assert!(matches!(
            parse_header(raw, &Limits::default()),
            Err(FrameError::NotWellFormed(_))
        ));
    }

    #[test]
    fn parse_rejects_duplicate_attributes() {
        let raw = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='a' to='b'>";
        assert!(matches!(
            parse_header(raw, &Limits::default()),
            Err(FrameError::NotWellFormed(_))
        ));
    }

    #[test]
    fn declaration_checks() {
        assert!(check_declaration_pi(b"<?xml version='1.0'?>").is_ok());
        assert!(check_declaration_pi(b"<?xml version=\"1.0\" encoding=\"utf-8\"?>").is_ok());
        assert!(matches!(
            check_declaration_pi(b"<?xml version='1.0' encoding='ISO-8859-1'?>"),
            Err(FrameError::BadFormat(_))
        ));
        assert!(matches!(
            check_declaration_pi(b"<?xml version='2.0'?>"),
            Err(FrameError::BadFormat(_))
        ));
    }
}
