//! The "parse" step of the framer: builds an [`Element`] tree from the exact bytes of one
//! top-level element with quick-xml, resolving namespaces against the stream header's
//! declarations, and works out whether those bytes can be forwarded verbatim.
//!
//! The tree costs at most a fixed multiple of the element's size: each distinct namespace URI
//! is held once (one [`Namespace`] per URI, cloned into every element in it), child lists are
//! trimmed to their length when an element closes, and the builder keeps a running estimate
//! of the heap it holds (names, attribute slots, names and values, text, child-list slots
//! with their growth, namespace URIs and bindings), checked against a budget of
//! [`Limits::parse_cost_factor`] times the element's size plus [`BASE_COST`] before each piece
//! is allocated. Slack and scopes released when an element closes are credited back.

use std::collections::{HashMap, HashSet};
use std::mem::size_of;

use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::Reader;

use crate::element::{Element, Namespace, Node};
use crate::error::FrameError;
use crate::limits::Limits;
use crate::ns;
use crate::stream::StreamHeader;
use crate::xmltext::{
    check_declaration, declaration_prefix, resolve_reference, split_qname, truncate,
    unescape_attr_value, utf8, xml_error,
};

/// The budget every element gets on top of its multiple of its size. A node costs a slot of
/// 88 bytes (on 64-bit targets) however short it is, so small stanzas made of empty elements cost more than the
/// factor allows for their few bytes: an indented vCard with empty fields costs 14 times its
/// size. Lists of such elements long enough to exceed this are not met in practice.
pub(crate) const BASE_COST: usize = 16 * 1024;

/// A node's slot in its parent's child list.
const SLOT: usize = size_of::<Node>();
/// The capacity a child list first gets, as `Vec` gives it (and then doubles).
const FIRST_CAPACITY: usize = 4;
/// An attribute's slot, besides its name and value.
const ATTR_COST: usize = size_of::<(String, String)>();
/// A distinct namespace URI besides its bytes: the reference counts of its shared allocation
/// and its slot (with growth) in the builder's table of URIs.
const NAMESPACE_COST: usize = 2 * size_of::<usize>() + 2 * size_of::<Namespace>();
/// A binding in scope besides its prefix: its entry in the scope map (key, stack with its
/// first capacity) and in the declaring element's list.
const BINDING_COST: usize =
    2 * size_of::<String>() + size_of::<Vec<Binding>>() + FIRST_CAPACITY * size_of::<Binding>();

/// Result of parsing one top-level element.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub element: Element,
    pub self_contained: bool,
}

/// The stream header's namespace bindings as shared strings, made once per stream so that the
/// elements of every stanza in, say, the stream's default namespace share one URI.
#[derive(Debug, Clone)]
pub(crate) struct HeaderBindings {
    /// The default namespace; empty when the header declared none.
    default_ns: Namespace,
    /// The declared prefixes, in document order.
    prefixes: Vec<(String, Namespace)>,
}

impl HeaderBindings {
    pub(crate) fn new(header: &StreamHeader) -> Self {
        let default_ns = Namespace::from(header.default_ns.as_str());
        let mut prefixes: Vec<(String, Namespace)> = Vec::with_capacity(header.prefixes.len());
        for (prefix, uri) in &header.prefixes {
            let shared = std::iter::once(&default_ns)
                .chain(prefixes.iter().map(|(_, ns)| ns))
                .find(|ns| *ns == uri)
                .cloned()
                .unwrap_or_else(|| Namespace::from(uri.as_str()));
            prefixes.push((prefix.clone(), shared));
        }
        HeaderBindings {
            default_ns,
            prefixes,
        }
    }
}

/// Parse the complete top-level element in `raw` within the stream whose header declared
/// `bindings`.
pub(crate) fn parse_top_level(
    raw: &[u8],
    bindings: &HeaderBindings,
    limits: &Limits,
) -> Result<Parsed, FrameError> {
    parse_costed(raw, bindings, limits).map(|(parsed, _cost)| parsed)
}

/// [`parse_top_level`], also returning the peak of the builder's estimated heap cost.
fn parse_costed(
    raw: &[u8],
    bindings: &HeaderBindings,
    limits: &Limits,
) -> Result<(Parsed, usize), FrameError> {
    let text = utf8(raw)?;
    let budget = raw
        .len()
        .saturating_mul(limits.parse_cost_factor)
        .saturating_add(BASE_COST);
    let mut builder = Builder::new(bindings, limits.max_namespace_declarations, budget);
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

/// One binding of a prefix; `from_header` when it came from the stream header.
#[derive(Debug)]
struct Binding {
    uri: Namespace,
    from_header: bool,
}

/// Namespace bindings in scope: prefix ("" for the default) to a stack of bindings. A prefix
/// whose bindings all went out of scope is removed, so this holds at most the declarations of
/// the open elements plus the header's.
#[derive(Debug, Default)]
struct Scopes {
    map: HashMap<String, Vec<Binding>>,
}

impl Scopes {
    fn seeded(bindings: &HeaderBindings) -> Self {
        let mut scopes = Scopes::default();
        scopes.push("", bindings.default_ns.clone(), true);
        for (prefix, uri) in &bindings.prefixes {
            scopes.push(prefix, uri.clone(), true);
        }
        scopes
    }

    fn push(&mut self, prefix: &str, uri: Namespace, from_header: bool) {
        self.map
            .entry(prefix.to_owned())
            .or_default()
            .push(Binding { uri, from_header });
    }

    fn pop(&mut self, prefix: &str) {
        if let Some(stack) = self.map.get_mut(prefix) {
            stack.pop();
            if stack.is_empty() {
                self.map.remove(prefix);
            }
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

/// An attribute's expanded name, to find duplicates after prefixes are resolved.
#[derive(Debug, PartialEq, Eq, Hash)]
enum AttrKey<'e> {
    /// No namespace.
    Plain(&'e str),
    /// The `xml:` namespace (only the `xml` prefix can be bound to it).
    Xml(&'e str),
    /// Another namespace.
    In(Namespace, &'e str),
}

/// `{uri}local` in a string of exactly `len` bytes (`format!` could leave up to as much again
/// unused).
fn clark_name(uri: &str, local: &str, len: usize) -> String {
    let mut name = String::with_capacity(len);
    name.push('{');
    name.push_str(uri);
    name.push('}');
    name.push_str(local);
    name
}

/// An element whose end tag is still to come, with the prefixes it declared.
#[derive(Debug)]
struct Open {
    element: Element,
    declared: Vec<String>,
}

/// Tree builder with namespace resolution and a cost budget.
struct Builder<'h> {
    bindings: &'h HeaderBindings,
    scopes: Scopes,
    /// Every distinct namespace URI met so far, so that each is allocated once.
    interned: HashSet<Namespace>,
    stack: Vec<Open>,
    /// Character data read since the last tag; it becomes one text node at the next tag.
    text: String,
    root: Option<Element>,
    max_declarations: usize,
    /// Estimated heap the builder holds now, the most it held, and the most it may hold.
    cost: usize,
    peak: usize,
    budget: usize,
    root_relies_on_default: bool,
    relies_on_default: bool,
    uses_header_prefix: bool,
}

impl<'h> Builder<'h> {
    fn new(bindings: &'h HeaderBindings, max_declarations: usize, budget: usize) -> Self {
        let interned = std::iter::once(&bindings.default_ns)
            .chain(bindings.prefixes.iter().map(|(_, uri)| uri))
            .cloned()
            .collect();
        Builder {
            bindings,
            scopes: Scopes::seeded(bindings),
            interned,
            stack: Vec::new(),
            text: String::new(),
            root: None,
            max_declarations,
            cost: 0,
            peak: 0,
            budget,
            root_relies_on_default: false,
            relies_on_default: false,
            uses_header_prefix: false,
        }
    }

    /// Add `bytes` to the estimated cost, failing once it is over budget. Called before the
    /// allocation it accounts for.
    fn charge(&mut self, bytes: usize) -> Result<(), FrameError> {
        self.cost = self.cost.saturating_add(bytes);
        if self.cost > self.budget {
            return Err(FrameError::TooExpensive { limit: self.budget });
        }
        self.peak = self.peak.max(self.cost);
        Ok(())
    }

    /// Heap released: `bytes` that were charged are no longer held.
    fn credit(&mut self, bytes: usize) {
        self.cost = self.cost.saturating_sub(bytes);
    }

    fn start(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), FrameError> {
        if self.root.is_some() {
            return Err(FrameError::NotWellFormed(
                "content after the top-level element".into(),
            ));
        }
        self.flush_text()?;
        let qname = utf8(e.name().into_inner())?;
        // The local name is stored; the slot is paid for when the element joins its parent.
        self.charge(qname.len())?;
        let (declared, plain) = self.read_attributes(e)?;
        let mut element = self.resolve_element(qname)?;
        element.attrs = self.resolve_attributes(plain)?;
        let open = Open { element, declared };
        if empty {
            self.close(open)
        } else {
            // Bounded by the scanner's depth limit.
            self.stack.push(open);
            Ok(())
        }
    }

    /// Split attributes into namespace declarations (applied to the scope at once; returns
    /// the declared prefixes) and ordinary attributes (qualified name, unescaped value).
    fn read_attributes<'e>(
        &mut self,
        e: &'e BytesStart<'_>,
    ) -> Result<(Vec<String>, PlainAttrs<'e>), FrameError> {
        let mut declared = Vec::new();
        let mut declarations = 0usize;
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
            declarations += 1;
            if declarations > self.max_declarations {
                return Err(FrameError::TooManyNamespaces {
                    limit: self.max_declarations,
                });
            }
            if check_declaration(prefix, &value)? {
                let uri = self.intern(value)?;
                self.charge(BINDING_COST + 2 * prefix.len())?;
                self.scopes.push(prefix, uri, false);
                declared.push(prefix.to_owned());
            }
        }
        Ok((declared, plain))
    }

    /// The shared [`Namespace`] for `uri`, made (and paid for) the first time it is met.
    fn intern(&mut self, uri: String) -> Result<Namespace, FrameError> {
        if let Some(shared) = self.interned.get(uri.as_str()) {
            return Ok(shared.clone());
        }
        self.charge(NAMESPACE_COST + uri.len())?;
        let shared = Namespace::from(uri);
        self.interned.insert(shared.clone());
        Ok(shared)
    }

    /// Resolve a prefix; returns the URI and whether the binding came from the stream header
    /// (noting use of a header-only prefix other than the standard `stream` and `db`).
    fn resolve_prefix(&mut self, prefix: &str) -> Result<(Namespace, bool), FrameError> {
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
        Ok(Element::in_namespace(local, uri))
    }

    /// Attributes: unprefixed and `xml:` names as written, others as `{uri}local`.
    fn resolve_attributes(
        &mut self,
        plain: PlainAttrs<'_>,
    ) -> Result<Vec<(String, String)>, FrameError> {
        let mut keys = HashSet::with_capacity(plain.len());
        let mut attrs = Vec::with_capacity(plain.len());
        for (qname, value) in plain {
            let (key, name_len) = match split_qname(qname)? {
                (None, _) => (AttrKey::Plain(qname), qname.len()),
                (Some("xml"), local) => (AttrKey::Xml(local), qname.len()),
                (Some(prefix), local) => {
                    let (uri, _) = self.resolve_prefix(prefix)?;
                    let len = uri.len() + local.len() + 2;
                    (AttrKey::In(uri, local), len)
                }
            };
            // A Clark name copies its URI: pay for it before writing it.
            self.charge(ATTR_COST + name_len + value.capacity())?;
            let name = match &key {
                AttrKey::In(uri, local) => clark_name(uri, local, name_len),
                AttrKey::Plain(_) | AttrKey::Xml(_) => qname.to_owned(),
            };
            if !keys.insert(key) {
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
        self.flush_text()?;
        let open = self
            .stack
            .pop()
            .ok_or_else(|| FrameError::NotWellFormed("unexpected end tag".into()))?;
        self.close(open)
    }

    /// The element is complete: trim its child list, end its declarations' scope and add it
    /// to its parent (or make it the root).
    fn close(&mut self, open: Open) -> Result<(), FrameError> {
        let Open {
            mut element,
            declared,
        } = open;
        let slack = element.children.capacity() - element.children.len();
        element.children.shrink_to_fit();
        self.credit(slack * SLOT);
        for prefix in &declared {
            self.scopes.pop(prefix);
            self.credit(BINDING_COST + 2 * prefix.len());
        }
        if self.stack.is_empty() {
            self.root = Some(element);
            return Ok(());
        }
        self.add_child(Node::Element(element))
    }

    /// Append a node to the innermost open element, first paying for the growth of its child
    /// list when it is full (to [`FIRST_CAPACITY`], then doubling).
    fn add_child(&mut self, node: Node) -> Result<(), FrameError> {
        let Some(parent) = self.stack.last() else {
            return Err(FrameError::NotWellFormed(
                "content outside the top-level element".into(),
            ));
        };
        let children = &parent.element.children;
        let full = children.len() == children.capacity();
        let growth = children.capacity().max(FIRST_CAPACITY);
        if full {
            self.charge(growth * SLOT)?;
        }
        let Some(parent) = self.stack.last_mut() else {
            return Ok(());
        };
        if full {
            parent.element.children.reserve_exact(growth);
        }
        parent.element.children.push(node);
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), FrameError> {
        if text.contains(['\u{FFFE}', '\u{FFFF}']) {
            return Err(FrameError::NotWellFormed(
                "non-character U+FFFE/U+FFFF in text".into(),
            ));
        }
        if self.stack.is_empty() {
            return Err(FrameError::NotWellFormed(
                "text outside the top-level element".into(),
            ));
        }
        self.text.push_str(text);
        Ok(())
    }

    /// Add the character data read since the last tag to the open element, as one node.
    fn flush_text(&mut self) -> Result<(), FrameError> {
        if self.text.is_empty() {
            return Ok(());
        }
        self.charge(self.text.len())?;
        let node = Node::Text(self.text.as_str().to_owned());
        self.text.clear();
        self.add_child(node)
    }

    fn finish(self) -> Result<(Parsed, usize), FrameError> {
        if !self.stack.is_empty() {
            return Err(FrameError::NotWellFormed("unclosed element".into()));
        }
        let element = self
            .root
            .ok_or_else(|| FrameError::NotWellFormed("no element".into()))?;
        let default = self.bindings.default_ns.as_str();
        let standard_default = default == ns::SERVER || default == ns::CLIENT;
        let default_ok =
            !self.relies_on_default || (self.root_relies_on_default && standard_default);
        let parsed = Parsed {
            element,
            self_contained: !self.uses_header_prefix && default_ok,
        };
        Ok((parsed, self.peak))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn parse_in(raw: &[u8], header: &StreamHeader) -> Result<Parsed, FrameError> {
        parse_top_level(raw, &HeaderBindings::new(header), &Limits::default())
    }

    fn parse(raw: &str) -> Result<Parsed, FrameError> {
        parse_in(raw.as_bytes(), &s2s())
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
        let p = parse_in(b"<foo:bar><baz/></foo:bar>", &h).expect("parses");
        assert!(p.element.is("bar", "urn:foo"));
        assert_eq!(
            p.element.elements().next().map(|e| e.ns.as_str()),
            Some(ns::SERVER)
        );
        assert!(!p.self_contained);
        let p = parse_in(b"<message foo:x='1'/>", &h).expect("parses");
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
        let p = parse_in(b"<db:result/>", &h).expect("parses");
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
        let p = parse_in(b"<message/>", &h).expect("parses");
        assert!(!p.self_contained);
        let p = parse_in(b"<message xmlns='jabber:server'/>", &h).expect("parses");
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
            parse_in(b"<a>\xff</a>", &s2s()),
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

    mod stanzas {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stanzas.rs"
        ));
    }

    /// The header the fixtures are framed after.
    fn fixture_header() -> StreamHeader {
        let open = stanzas::HEADER.trim_start_matches("<?xml version='1.0'?>");
        let (header, _) =
            crate::stream::parse_header(open.as_bytes(), &Limits::default()).expect("header");
        header
    }

    /// Estimated peak cost of each realistic stanza's tree over its size: the default budget
    /// leaves at least a factor 2 of margin over each, and the factor alone a factor 2 over
    /// each one larger than a few kilobytes.
    #[test]
    fn realistic_stanzas_cost_a_small_multiple_of_their_size() {
        let bindings = HeaderBindings::new(&fixture_header());
        let limits = Limits::default();
        for (name, raw) in stanzas::realistic() {
            let (parsed, cost) = parse_costed(raw.as_bytes(), &bindings, &limits).expect("parses");
            assert!(parsed.self_contained, "{name}");
            let ratio = cost as f64 / raw.len() as f64;
            println!("{name}: {} bytes, cost {cost}, ratio {ratio:.2}", raw.len());
            let budget = raw.len() * limits.parse_cost_factor + BASE_COST;
            assert!(2 * cost <= budget, "{name}: ratio {ratio:.2}");
            if raw.len() > 4096 {
                assert!(2 * cost <= raw.len() * limits.parse_cost_factor, "{name}");
            }
        }
    }

    #[test]
    fn node_slot_is_as_documented() {
        // BASE_COST's documentation counts on it.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(SLOT, 88);
        }
    }

    #[test]
    fn budget_refuses_a_tree_far_larger_than_its_bytes() {
        // Empty children cost about 44 times their 4 bytes.
        let raw = format!("<a>{}</a>", "<b/>".repeat(2000));
        let budget = raw.len() * 16 + BASE_COST;
        assert_eq!(
            parse(&raw).map(|_| ()),
            Err(FrameError::TooExpensive { limit: budget })
        );
        assert_eq!(
            FrameError::TooExpensive { limit: budget }.condition(),
            crate::StreamCondition::PolicyViolation
        );
        // The same children with some text each are fine.
        let raw = format!("<a>{}</a>", "<b>some text here</b>".repeat(2000));
        assert!(parse(&raw).is_ok());
        // A small stanza is within the constant whatever its shape.
        assert!(parse("<a><b/><c/><d/><e/></a>").is_ok());
    }

    #[test]
    fn clark_names_are_charged_for_their_uri() {
        let uri = format!("urn:{}", "u".repeat(10_000));
        let raw = format!("<a xmlns:p='{uri}'>{}</a>", "<b p:x='1'/>".repeat(200));
        assert!(matches!(parse(&raw), Err(FrameError::TooExpensive { .. })));
        // Elements in that namespace share it, so they are cheap.
        let raw = format!("<p:a xmlns:p='{uri}'>{}</p:a>", "<p:b>x</p:b>".repeat(200));
        let p = parse(&raw).expect("parses");
        assert_eq!(p.element.elements().count(), 200);
    }

    #[test]
    fn namespaces_are_shared_not_copied() {
        let h = s2s();
        let bindings = HeaderBindings::new(&h);
        let p = parse_top_level(
            b"<message><body>x</body><x xmlns='urn:x'><y/></x><z xmlns='urn:x'/></message>",
            &bindings,
            &Limits::default(),
        )
        .expect("parses");
        let m = &p.element;
        let kids: Vec<_> = m.elements().collect();
        // The default namespace is the header binding's, shared by every stanza.
        assert!(Namespace::ptr_eq(&m.ns, &bindings.default_ns));
        assert!(Namespace::ptr_eq(&kids[0].ns, &m.ns));
        // A URI declared twice is still held once.
        let y = kids[1].elements().next().expect("y");
        assert!(Namespace::ptr_eq(&kids[1].ns, &y.ns));
        assert!(Namespace::ptr_eq(&kids[1].ns, &kids[2].ns));
        assert_eq!(kids[2].ns, "urn:x");
    }

    #[test]
    fn namespace_declarations_are_capped() {
        let decls = |n: usize| {
            (0..n)
                .map(|i| format!(" xmlns:p{i}='urn:{i}'"))
                .collect::<String>()
        };
        assert!(parse(&format!("<a{}/>", decls(16))).is_ok());
        let err = parse(&format!("<a{}/>", decls(17))).map(|_| ());
        assert_eq!(err, Err(FrameError::TooManyNamespaces { limit: 16 }));
        assert_eq!(
            FrameError::TooManyNamespaces { limit: 16 }.condition(),
            crate::StreamCondition::PolicyViolation
        );
    }

    #[test]
    fn namespace_uris_are_validated() {
        for raw in [
            "<a xmlns='urn:a}b'/>",
            "<a xmlns:p='urn:a}b'><p:b/></a>",
            "<a xmlns:p='urn:a&#x7d;b'/>",
            "<a xmlns:p='urn:a b'/>",
            "<a xmlns:p='urn:a\tb'/>",
            "<a xmlns:p='urn:&lt;script&gt;'/>",
            "<a xmlns='urn:{x'/>",
            "<a xmlns='urn:|^`\\'/>",
            "<a xmlns='urn:&quot;'/>",
        ] {
            assert!(
                matches!(parse(raw), Err(FrameError::NotWellFormed(_))),
                "{raw}"
            );
        }
        assert!(parse("<a xmlns='http://jabber.org/protocol/muc#user?x=1&amp;y=2'/>").is_ok());
        // Error text quotes a truncated prefix, never the URI.
        let long = format!(
            "<a xmlns:{}='urn:{}}}'/>",
            "p".repeat(500),
            "u".repeat(5000)
        );
        let Err(FrameError::NotWellFormed(msg)) = parse(&long) else {
            panic!("accepted");
        };
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn invalid_names_rejected() {
        for raw in [
            "<a x]y='1'/>",
            "<a p:x]y='1' xmlns:p='urn:p'/>",
            "<a xmlns:p]q='urn:p'/>",
        ] {
            assert!(
                matches!(parse(raw), Err(FrameError::NotWellFormed(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn children_lists_are_trimmed() {
        let raw = format!("<a>{}</a>", "<b>text of some length</b>".repeat(33));
        let p = parse(&raw).expect("parses");
        assert_eq!(p.element.children.len(), 33);
        assert_eq!(p.element.children.capacity(), 33);
    }
}
