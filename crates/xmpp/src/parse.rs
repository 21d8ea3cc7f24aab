//! The "parse" step of the framer: builds an [`Element`] tree from the exact bytes of one
//! top-level element with quick-xml, resolving namespaces against the stream header's
//! declarations, and works out whether those bytes can be forwarded verbatim.

use std::collections::{HashMap, HashSet};

use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::Reader;

use crate::element::Element;
use crate::framer::FrameError;
use crate::ns;
use crate::stream::StreamHeader;
use crate::xmltext::{resolve_reference, split_qname, truncate, unescape_attr_value};

/// Result of parsing one top-level element.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub element: Element,
    pub self_contained: bool,
}

/// Parse the complete top-level element in `raw` within the stream described by `header`.
pub(crate) fn parse_top_level(raw: &[u8], header: &StreamHeader) -> Result<Parsed, FrameError> {
    let text = utf8(raw)?;
    let mut builder = Builder::new(header);
    let mut reader = Reader::from_str(text);
    loop {
        match reader.read_event().map_err(xml_error)? {
            XmlEvent::Start(e) => builder.start(&e, false)?,
            XmlEvent::Empty(e) => builder.start(&e, true)?,
            XmlEvent::End(_) => builder.end()?,
            XmlEvent::Text(t) => builder.text(&t.xml10_content().map_err(xml_error)?)?,
            XmlEvent::CData(c) => builder.text(&c.xml10_content().map_err(xml_error)?)?,
            XmlEvent::GeneralRef(r) => {
                let c = resolve_reference(&r.decode().map_err(xml_error)?)?;
                builder.text(c.encode_utf8(&mut [0u8; 4]))?;
            }
            XmlEvent::Comment(_) => return Err(restricted("comments are not allowed")),
            XmlEvent::PI(_) | XmlEvent::Decl(_) => {
                return Err(restricted("processing instructions are not allowed"))
            }
            XmlEvent::DocType(_) => return Err(restricted("DOCTYPE / DTD is not allowed")),
            XmlEvent::Eof => return builder.finish(),
        }
    }
}

fn restricted(msg: &str) -> FrameError {
    FrameError::RestrictedXml(msg.to_owned())
}

/// Map a quick-xml error to the framer's error.
pub(crate) fn xml_error(e: impl Into<quick_xml::Error>) -> FrameError {
    FrameError::NotWellFormed(e.into().to_string())
}

/// Validate UTF-8 (XMPP streams are always UTF-8).
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(bytes).map_err(|e| {
        FrameError::NotWellFormed(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })
}

/// Check a namespace declaration (`prefix` is empty for the default namespace) against the
/// rules of Namespaces in XML 1.0. Returns false for the redundant `xmlns:xml` declaration.
pub(crate) fn check_declaration(prefix: &str, uri: &str) -> Result<bool, FrameError> {
    let bad = |why: &str| {
        Err(FrameError::NotWellFormed(format!(
            "namespace declaration of {:?}: {why}",
            truncate(prefix)
        )))
    };
    match prefix {
        "xml" if uri == ns::XML => Ok(false),
        "xml" => bad("the xml prefix cannot be rebound"),
        "xmlns" => bad("the xmlns prefix cannot be declared"),
        _ if uri == ns::XML || uri == ns::XMLNS => bad("reserved namespace"),
        _ if prefix.contains(':') => bad("malformed prefix"),
        "" => Ok(true),
        _ if uri.is_empty() => bad("a prefix cannot be undeclared"),
        _ => Ok(true),
    }
}

/// If the attribute `key` is a namespace declaration, the prefix it declares (empty for the
/// default namespace).
pub(crate) fn declaration_prefix(key: &str) -> Result<Option<&str>, FrameError> {
    match key.strip_prefix("xmlns") {
        Some("") => Ok(Some("")),
        Some(rest) => match rest.strip_prefix(':') {
            Some("") => Err(FrameError::NotWellFormed("empty namespace prefix".into())),
            Some(prefix) => Ok(Some(prefix)),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// One binding of a prefix; `from_header` when it came from the stream header.
#[derive(Debug)]
struct Binding {
    uri: String,
    from_header: bool,
}

/// Namespace bindings in scope: prefix ("" for the default) to a stack of bindings.
#[derive(Debug, Default)]
struct Scopes {
    map: HashMap<String, Vec<Binding>>,
}

impl Scopes {
    fn seeded(header: &StreamHeader) -> Self {
        let mut scopes = Scopes::default();
        scopes.push("", &header.default_ns, true);
        for (prefix, uri) in &header.prefixes {
            scopes.push(prefix, uri, true);
        }
        scopes
    }

    fn push(&mut self, prefix: &str, uri: &str, from_header: bool) {
        self.map
            .entry(prefix.to_owned())
            .or_default()
            .push(Binding {
                uri: uri.to_owned(),
                from_header,
            });
    }

    fn pop(&mut self, prefix: &str) {
        if let Some(stack) = self.map.get_mut(prefix) {
            stack.pop();
        }
    }

    fn lookup(&self, prefix: &str) -> Option<&Binding> {
        self.map.get(prefix).and_then(|s| s.last())
    }
}

/// Whether a header-declared prefix is one every outgoing stream header declares too.
fn is_standard_prefix(prefix: &str, uri: &str) -> bool {
    (prefix == "stream" && uri == ns::STREAM) || (prefix == "db" && uri == ns::DIALBACK)
}

/// Ordinary (non-declaration) attributes of a start tag: qualified name, unescaped value.
type PlainAttrs<'e> = Vec<(&'e str, String)>;

/// Tree builder with namespace resolution.
struct Builder<'h> {
    header: &'h StreamHeader,
    scopes: Scopes,
    stack: Vec<(Element, Vec<String>)>,
    root: Option<Element>,
    root_relies_on_default: bool,
    relies_on_default: bool,
    uses_header_prefix: bool,
}

impl<'h> Builder<'h> {
    fn new(header: &'h StreamHeader) -> Self {
        Builder {
            header,
            scopes: Scopes::seeded(header),
            stack: Vec::new(),
            root: None,
            root_relies_on_default: false,
            relies_on_default: false,
            uses_header_prefix: false,
        }
    }

    fn start(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), FrameError> {
        if self.root.is_some() {
            return Err(FrameError::NotWellFormed(
                "content after the top-level element".into(),
            ));
        }
        let (declared, plain) = self.read_attributes(e)?;
        let mut element = self.resolve_element(utf8(e.name().into_inner())?)?;
        element.attrs = self.resolve_attributes(plain)?;
        if empty {
            self.close(element, declared);
        } else {
            self.stack.push((element, declared));
        }
        Ok(())
    }

    /// Split attributes into namespace declarations (applied to the scope at once; returns
    /// the declared prefixes) and ordinary attributes (qualified name, unescaped value).
    fn read_attributes<'e>(
        &mut self,
        e: &'e BytesStart<'_>,
    ) -> Result<(Vec<String>, PlainAttrs<'e>), FrameError> {
        let mut declared = Vec::new();
        let mut plain = Vec::new();
        let mut seen = HashSet::new();
        for attr in e.attributes().with_checks(false) {
            let attr = attr.map_err(xml_error)?;
            let key = utf8(attr.key.into_inner())?;
            if !seen.insert(key) {
                return Err(FrameError::NotWellFormed(format!(
                    "duplicate attribute {:?}",
                    truncate(key)
                )));
            }
            let value = unescape_attr_value(utf8(&attr.value)?)?;
            let Some(prefix) = declaration_prefix(key)? else {
                plain.push((key, value));
                continue;
            };
            if check_declaration(prefix, &value)? {
                self.scopes.push(prefix, &value, false);
                declared.push(prefix.to_owned());
            }
        }
        Ok((declared, plain))
    }

    /// Resolve a prefix; returns the URI and whether the binding came from the stream header
    /// (noting use of a header-only prefix other than the standard `stream` and `db`).
    fn resolve_prefix(&mut self, prefix: &str) -> Result<(String, bool), FrameError> {
        let binding = self.scopes.lookup(prefix).ok_or_else(|| {
            FrameError::NotWellFormed(format!("unbound namespace prefix {:?}", truncate(prefix)))
        })?;
        let from_header = binding.from_header;
        if from_header && !prefix.is_empty() && !is_standard_prefix(prefix, &binding.uri) {
            self.uses_header_prefix = true;
        }
        Ok((binding.uri.clone(), from_header))
    }

    fn resolve_element(&mut self, qname: &str) -> Result<Element, FrameError> {
        let (prefix, local) = split_qname(qname)?;
        let prefix = prefix.unwrap_or("");
        if prefix == "xml" || prefix == "xmlns" {
            return Err(FrameError::NotWellFormed(format!(
                "element {:?} uses a reserved prefix",
                truncate(qname)
            )));
        }
        let (uri, from_header) = self.resolve_prefix(prefix)?;
        if from_header && prefix.is_empty() {
            self.relies_on_default = true;
            if self.stack.is_empty() {
                self.root_relies_on_default = true;
            }
        }
        Ok(Element::new(local, &uri))
    }

    /// Attributes: unprefixed and `xml:` names as written, others as `{uri}local`.
    fn resolve_attributes(
        &mut self,
        plain: Vec<(&str, String)>,
    ) -> Result<Vec<(String, String)>, FrameError> {
        let mut resolved_names = HashSet::new();
        let mut attrs = Vec::with_capacity(plain.len());
        for (qname, value) in plain {
            let name = match split_qname(qname)? {
                (None, _) => qname.to_owned(),
                (Some("xml"), _) => qname.to_owned(),
                (Some(prefix), local) => {
                    let (uri, _) = self.resolve_prefix(prefix)?;
                    format!("{{{uri}}}{local}")
                }
            };
            let canonical = match name.strip_prefix("xml:") {
                Some(local) => format!("{{{}}}{local}", ns::XML),
                None => name.clone(),
            };
            if !resolved_names.insert(canonical) {
                return Err(FrameError::NotWellFormed(format!(
                    "duplicate attribute {:?}",
                    truncate(qname)
                )));
            }
            attrs.push((name, value));
        }
        Ok(attrs)
    }

    fn end(&mut self) -> Result<(), FrameError> {
        let (element, declared) = self
            .stack
            .pop()
            .ok_or_else(|| FrameError::NotWellFormed("unexpected end tag".into()))?;
        self.close(element, declared);
        Ok(())
    }

    fn close(&mut self, element: Element, declared: Vec<String>) {
        for prefix in &declared {
            self.scopes.pop(prefix);
        }
        match self.stack.last_mut() {
            Some((parent, _)) => parent.push_child(element),
            None => self.root = Some(element),
        }
    }

    fn text(&mut self, text: &str) -> Result<(), FrameError> {
        if text.contains(['\u{FFFE}', '\u{FFFF}']) {
            return Err(FrameError::NotWellFormed(
                "non-character U+FFFE/U+FFFF in text".into(),
            ));
        }
        match self.stack.last_mut() {
            Some((parent, _)) => {
                parent.append_text(text);
                Ok(())
            }
            None => Err(FrameError::NotWellFormed(
                "text outside the top-level element".into(),
            )),
        }
    }

    fn finish(self) -> Result<Parsed, FrameError> {
        if !self.stack.is_empty() {
            return Err(FrameError::NotWellFormed("unclosed element".into()));
        }
        let element = self
            .root
            .ok_or_else(|| FrameError::NotWellFormed("no element".into()))?;
        let default = self.header.default_ns.as_str();
        let standard_default = default == ns::SERVER || default == ns::CLIENT;
        let default_ok =
            !self.relies_on_default || (self.root_relies_on_default && standard_default);
        Ok(Parsed {
            element,
            self_contained: !self.uses_header_prefix && default_ok,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::Node;

    fn header(default_ns: &str, prefixes: &[(&str, &str)]) -> StreamHeader {
        StreamHeader {
            default_ns: default_ns.into(),
            prefixes: prefixes
                .iter()
                .map(|(p, u)| (p.to_string(), u.to_string()))
                .collect(),
            ..StreamHeader::default()
        }
    }

    fn s2s() -> StreamHeader {
        header(ns::SERVER, &[("stream", ns::STREAM), ("db", ns::DIALBACK)])
    }

    fn parse(raw: &str) -> Result<Parsed, FrameError> {
        parse_top_level(raw.as_bytes(), &s2s())
    }

    #[test]
    fn resolves_default_and_own_namespaces() {
        let p = parse(
            "<message to='a@b' xml:lang='en'><body>hi &amp; bye</body><x xmlns='jabber:x:data'><field/></x></message>",
        )
        .expect("parses");
        let m = &p.element;
        assert!(m.is("message", ns::SERVER));
        assert_eq!(m.attr("xml:lang"), Some("en"));
        assert_eq!(
            m.child("body", ns::SERVER).map(|b| b.text()),
            Some("hi & bye".into())
        );
        let x = m.child("x", "jabber:x:data").expect("x");
        assert!(x.child("field", "jabber:x:data").is_some());
        assert!(p.self_contained);
    }

    #[test]
    fn prefixed_attributes_resolve_to_clark_names() {
        let p = parse("<iq xmlns:f='urn:f'><q f:a='1' a='2'/></iq>").expect("parses");
        let q = p.element.elements().next().expect("q");
        assert_eq!(q.attr("{urn:f}a"), Some("1"));
        assert_eq!(q.attr("a"), Some("2"));
        assert!(p.self_contained);
    }

    #[test]
    fn duplicate_attributes_after_resolution_rejected() {
        let e = parse("<iq xmlns:f='urn:f' xmlns:g='urn:f'><q f:a='1' g:a='2'/></iq>");
        assert!(matches!(e, Err(FrameError::NotWellFormed(_))));
        let e = parse("<iq a='1' a='2'/>");
        assert!(matches!(e, Err(FrameError::NotWellFormed(_))));
    }

    #[test]
    fn unbound_prefix_rejected() {
        assert!(matches!(
            parse("<foo:bar/>"),
            Err(FrameError::NotWellFormed(_))
        ));
    }

    #[test]
    fn reserved_declarations_rejected() {
        for raw in [
            "<a xmlns:xml='urn:x'/>",
            "<a xmlns:xmlns='urn:x'/>",
            "<a xmlns:p=''/>",
            "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns:='urn:x'/>",
        ] {
            assert!(
                matches!(parse(raw), Err(FrameError::NotWellFormed(_))),
                "{raw}"
            );
        }
        assert!(parse("<a xmlns:xml='http://www.w3.org/XML/1998/namespace'/>").is_ok());
    }

    #[test]
    fn header_only_prefix_is_not_self_contained() {
        let h = header(
            ns::SERVER,
            &[
                ("stream", ns::STREAM),
                ("db", ns::DIALBACK),
                ("foo", "urn:foo"),
            ],
        );
        let p = parse_top_level(b"<foo:bar><baz/></foo:bar>", &h).expect("parses");
        assert!(p.element.is("bar", "urn:foo"));
        assert_eq!(
            p.element.elements().next().map(|e| e.ns.as_str()),
            Some(ns::SERVER)
        );
        assert!(!p.self_contained);
        let p = parse_top_level(b"<message foo:x='1'/>", &h).expect("parses");
        assert_eq!(p.element.attr("{urn:foo}x"), Some("1"));
        assert!(!p.self_contained);
    }

    #[test]
    fn standard_prefixes_are_self_contained() {
        let p = parse("<db:result from='a' to='b'>key</db:result>").expect("parses");
        assert!(p.element.is("result", ns::DIALBACK));
        assert!(p.self_contained);
        let p = parse("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
            .expect("parses");
        assert!(p.self_contained);
        // A nonstandard binding of db on the header does not count.
        let h = header(ns::SERVER, &[("db", "urn:other")]);
        let p = parse_top_level(b"<db:result/>", &h).expect("parses");
        assert!(!p.self_contained);
    }

    #[test]
    fn prefixed_root_with_default_reliant_child_is_not_self_contained() {
        let p = parse("<db:result><x/></db:result>").expect("parses");
        assert!(!p.self_contained);
    }

    #[test]
    fn nonstandard_header_default_is_not_self_contained() {
        let h = header("jabber:component:accept", &[]);
        let p = parse_top_level(b"<message/>", &h).expect("parses");
        assert!(!p.self_contained);
        let p = parse_top_level(b"<message xmlns='jabber:server'/>", &h).expect("parses");
        assert!(p.self_contained);
    }

    #[test]
    fn text_cdata_and_references_merge() {
        let p = parse("<m><body>a<![CDATA[<b>&amp;]]>&#x41;&lt;\r\nz</body></m>").expect("parses");
        let body = p.element.elements().next().expect("body");
        assert_eq!(body.children, vec![Node::Text("a<b>&amp;A<\nz".into())]);
    }

    #[test]
    fn entity_references_restricted() {
        assert!(matches!(
            parse("<m>&lol;</m>"),
            Err(FrameError::RestrictedXml(_))
        ));
        assert!(matches!(
            parse("<m a='&lol;'/>"),
            Err(FrameError::RestrictedXml(_))
        ));
    }

    #[test]
    fn mismatched_end_tag_rejected() {
        assert!(matches!(
            parse("<a><b></a></b>"),
            Err(FrameError::NotWellFormed(_))
        ));
    }

    #[test]
    fn invalid_utf8_rejected() {
        assert!(matches!(
            parse_top_level(b"<a>\xff</a>", &s2s()),
            Err(FrameError::NotWellFormed(_))
        ));
    }

    #[test]
    fn scoped_declarations_are_popped() {
        let p = parse("<a><b xmlns:p='urn:p'><p:c/></b><p:d/></a>");
        assert!(matches!(p, Err(FrameError::NotWellFormed(_))));
        let p = parse("<a><b xmlns='urn:b'><c/></b><d/></a>").expect("parses");
        let kids: Vec<_> = p.element.elements().collect();
        assert_eq!(
            kids[0].elements().next().map(|e| e.ns.as_str()),
            Some("urn:b")
        );
        assert_eq!(kids[1].ns, ns::SERVER);
    }
}
