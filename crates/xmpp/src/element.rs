//! A small owned DOM for XMPP stanzas, and XML escaping.
//!
//! Attribute names are stored as written for unprefixed names and for the `xml:` prefix
//! (`"xml:lang"`). An attribute in any other namespace is stored in Clark notation,
//! `"{namespace-uri}local"`, because [`Element`] keeps no prefix declarations; serialization
//! declares a generated prefix for it.
//!
//! Namespace URIs are [`Namespace`]s: shared strings, so that the many elements of one
//! namespace hold one copy of its URI between them.
//!
//! Serialization writes well-formed XML whatever the tree holds: an attribute whose name
//! would not be a valid attribute name in the output is left out (see [`Element::write_xml`]).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::chars::{invalid_uri_char, is_ncname};
use crate::ns;

/// A namespace URI, shared: cloning a `Namespace` copies a pointer, not the URI.
///
/// The parser makes one `Namespace` per namespace declaration (and per binding on the stream
/// header) and every element resolving to it holds a clone, so a long URI costs its length
/// once per declaration, not once per element. It compares, hashes, orders and prints like
/// the string it holds.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// The URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both hold the same allocation (not merely equal URIs).
    pub fn ptr_eq(this: &Namespace, other: &Namespace) -> bool {
        Arc::ptr_eq(&this.0, &other.0)
    }
}

impl Default for Namespace {
    /// The empty URI: "no namespace".
    fn default() -> Self {
        Namespace(Arc::from(""))
    }
}

impl Deref for Namespace {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Namespace {
    fn from(uri: &str) -> Self {
        Namespace(Arc::from(uri))
    }
}

impl From<String> for Namespace {
    fn from(uri: String) -> Self {
        Namespace(Arc::from(uri))
    }
}

impl From<Arc<str>> for Namespace {
    fn from(uri: Arc<str>) -> Self {
        Namespace(uri)
    }
}

impl PartialEq<str> for Namespace {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Namespace {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Namespace {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Namespace> for str {
    fn eq(&self, other: &Namespace) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Namespace> for &str {
    fn eq(&self, other: &Namespace) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Namespace> for String {
    fn eq(&self, other: &Namespace) -> bool {
        **self == *other.0
    }
}

/// An XML element with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Local name (without prefix).
    pub name: String,
    /// Resolved namespace URI (may be empty for "no namespace"), shared with the other
    /// elements of that namespace.
    pub ns: Namespace,
    /// Attributes with unescaped values, in document order. Names are qualified as written
    /// (`"xml:lang"`), except attributes in other namespaces which use `"{uri}local"`.
    /// Namespace declarations (`xmlns`, `xmlns:*`) are never stored here.
    pub attrs: Vec<(String, String)>,
    /// Child nodes in document order.
    pub children: Vec<Node>,
}

/// A child of an [`Element`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, unescaped (CDATA sections are merged in as text).
    Text(String),
}

impl Element {
    /// A new empty element.
    pub fn new(name: &str, ns: &str) -> Self {
        Element::in_namespace(name, Namespace::from(ns))
    }

    /// A new empty element in a namespace already held (cloning it shares the URI).
    pub fn in_namespace(name: &str, ns: Namespace) -> Self {
        Element {
            name: name.to_owned(),
            ns,
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Value of the attribute with this (qualified) name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set an attribute: replaces the value if present, appends otherwise.
    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => value.clone_into(&mut slot.1),
            None => self.attrs.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Remove an attribute if present.
    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: &str, value: &str) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: append a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text (merged with a directly preceding text node).
    pub fn with_text(mut self, text: &str) -> Self {
        self.append_text(text);
        self
    }

    /// Append a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Append text, merging with a directly preceding text node. Empty text adds nothing.
    pub fn append_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(text),
            _ => self.children.push(Node::Text(text.to_owned())),
        }
    }

    /// First direct child element with this local name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// Direct element children, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Concatenation of the direct text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Whether this element has this local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Serialize. `parent_ns` is the default namespace in scope where this element is written
    /// (e.g. [`ns::SERVER`] inside an s2s stream): `xmlns='...'` is emitted only where an
    /// element's namespace differs from the default in scope. Elements in [`ns::STREAM`] are
    /// written with the `stream:` prefix and elements in [`ns::DIALBACK`] with the `db:`
    /// prefix; both prefixes are assumed declared on the stream header.
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = String::new();
        self.write_xml(parent_ns, &mut out);
        out
    }

    /// Like [`Element::to_xml`], appending to `out`.
    ///
    /// An attribute that cannot be written under a valid name distinct from the others is
    /// left out: a plain name that is neither an NCName nor `xml:` plus an NCName (this
    /// includes `xmlns` and `xmlns:*`, which would declare namespaces), a Clark name whose
    /// local part is not an NCName or whose URI is empty, reserved or holds a character no
    /// IRI may contain (see [`Namespace`]), and a repeat of a name already written. The parser
    /// never produces such attributes; this keeps a hand-built tree from injecting markup.
    pub fn write_xml(&self, parent_ns: &str, out: &mut String) {
        let prefix = fixed_prefix(&self.ns);
        out.push('<');
        push_qname(out, prefix, &self.name);
        if prefix.is_none() && self.ns != parent_ns {
            push_attr(out, None, "xmlns", &self.ns);
        }
        let mut generated = 0usize;
        for (i, (name, value)) in self.attrs.iter().enumerate() {
            let Some(name) = AttrName::parse(name) else {
                continue;
            };
            let repeated = self.attrs[..i]
                .iter()
                .any(|(earlier, _)| AttrName::parse(earlier) == Some(name));
            if !repeated {
                write_attr(out, name, value, &mut generated);
            }
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        let inner_ns = if prefix.is_none() {
            self.ns.as_str()
        } else {
            parent_ns
        };
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_xml(inner_ns, out),
                Node::Text(t) => out.push_str(&escape_text(t)),
            }
        }
        out.push_str("</");
        push_qname(out, prefix, &self.name);
        out.push('>');
    }
}

/// A stored attribute name that can be written, by how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrName<'a> {
    /// In no namespace: written as is.
    Plain(&'a str),
    /// In the `xml:` namespace: written with the `xml` prefix.
    Xml(&'a str),
    /// In another namespace: written with a generated prefix declared beside it.
    In { uri: &'a str, local: &'a str },
}

impl<'a> AttrName<'a> {
    /// How a stored name is written; `None` when no valid attribute name says it.
    fn parse(name: &'a str) -> Option<Self> {
        let Some((uri, local)) = split_clark(name) else {
            return match name.split_once(':') {
                Some(("xml", local)) if is_ncname(local) => Some(AttrName::Xml(local)),
                None if is_ncname(name) && name != "xmlns" => Some(AttrName::Plain(name)),
                _ => None,
            };
        };
        if !is_ncname(local) {
            return None;
        }
        match uri {
            ns::XML => Some(AttrName::Xml(local)),
            "" | ns::XMLNS => None,
            _ if invalid_uri_char(uri).is_some() => None,
            _ => Some(AttrName::In { uri, local }),
        }
    }
}

/// The fixed prefix used when writing elements of this namespace, if any.
fn fixed_prefix(ns: &str) -> Option<&'static str> {
    match ns {
        ns::STREAM => Some("stream"),
        ns::DIALBACK => Some("db"),
        _ => None,
    }
}

fn push_qname(out: &mut String, prefix: Option<&str>, name: &str) {
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    }
    out.push_str(name);
}

fn push_attr(out: &mut String, prefix: Option<&str>, name: &str, value: &str) {
    out.push(' ');
    push_qname(out, prefix, name);
    out.push_str("='");
    out.push_str(&escape_attr(value));
    out.push('\'');
}

/// Write one attribute, declaring a generated prefix for a name in a namespace other than
/// `xml:`.
fn write_attr(out: &mut String, name: AttrName<'_>, value: &str, generated: &mut usize) {
    match name {
        AttrName::Plain(local) => push_attr(out, None, local, value),
        AttrName::Xml(local) => push_attr(out, Some("xml"), local, value),
        AttrName::In { uri, local } => {
            let prefix = format!("ns{generated}");
            *generated += 1;
            push_attr(out, Some("xmlns"), &prefix, uri);
            push_attr(out, Some(&prefix), local, value);
        }
    }
}

/// Split `"{uri}local"` into its parts.
pub(crate) fn split_clark(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix('{')?;
    let close = rest.find('}')?;
    Some((&rest[..close], &rest[close + 1..]))
}

/// Escape character data: `&`, `<`, `>` (and `\r`, which XML would otherwise normalize away).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '\r' => Some("&#13;"),
        _ => None,
    })
}

/// Escape an attribute value for either quote style: `&`, `<`, `>`, `'`, `"` (and tab, CR and
/// LF, which attribute-value normalization would otherwise turn into spaces).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '\'' => Some("&apos;"),
        '"' => Some("&quot;"),
        '\t' => Some("&#9;"),
        '\n' => Some("&#10;"),
        '\r' => Some("&#13;"),
        _ => None,
    })
}

fn escape(s: &str, map: impl Fn(char) -> Option<&'static str>) -> Cow<'_, str> {
    let Some(first) = s.char_indices().find(|(_, c)| map(*c).is_some()) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first.0]);
    for c in s[first.0..].chars() {
        match map(c) {
            Some(rep) => out.push_str(rep),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Element {
        Element::new("message", ns::SERVER)
            .with_attr("from", "a@x.example")
            .with_attr("to", "b@y.example")
            .with_child(Element::new("body", ns::SERVER).with_text("hi"))
    }

    #[test]
    fn attr_set_replace_remove() {
        let mut e = Element::new("iq", ns::SERVER).with_attr("id", "1");
        e.set_attr("id", "2");
        e.set_attr("type", "get");
        assert_eq!(e.attr("id"), Some("2"));
        assert_eq!(e.attrs.len(), 2);
        e.remove_attr("id");
        assert_eq!(e.attr("id"), None);
        assert_eq!(e.attr("type"), Some("get"));
    }

    #[test]
    fn child_elements_and_text() {
        let e = Element::new("a", "urn:a")
            .with_text("x")
            .with_child(Element::new("b", "urn:b"))
            .with_text("y")
            .with_child(Element::new("b", "urn:a"));
        assert_eq!(e.text(), "xy");
        assert_eq!(e.elements().count(), 2);
        assert_eq!(e.child("b", "urn:a"), Some(&Element::new("b", "urn:a")));
        assert!(e.child("c", "urn:a").is_none());
        assert!(e.is("a", "urn:a"));
        assert!(!e.is("a", "urn:b"));
    }

    #[test]
    fn with_text_merges_adjacent() {
        let e = Element::new("a", "")
            .with_text("x")
            .with_text("y")
            .with_text("");
        assert_eq!(e.children, vec![Node::Text("xy".into())]);
    }

    #[test]
    fn serializes_inheriting_default_ns() {
        assert_eq!(
            message().to_xml(ns::SERVER),
            "<message from='a@x.example' to='b@y.example'><body>hi</body></message>"
        );
        assert_eq!(
            message().to_xml(ns::CLIENT),
            "<message xmlns='jabber:server' from='a@x.example' to='b@y.example'><body>hi</body></message>"
        );
    }

    #[test]
    fn serializes_foreign_ns_and_fixed_prefixes() {
        let features = Element::new("features", ns::STREAM)
            .with_child(
                Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
            )
            .with_child(Element::new("dialback", ns::DIALBACK_FEATURE));
        assert_eq!(
            features.to_xml(ns::SERVER),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
             <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
        );
        let db = Element::new("result", ns::DIALBACK)
            .with_attr("to", "b")
            .with_text("k");
        assert_eq!(db.to_xml(ns::SERVER), "<db:result to='b'>k</db:result>");
    }

    #[test]
    fn prefixed_child_keeps_parent_default() {
        // An unprefixed child of a stream: element is in the default ns in scope.
        let e = Element::new("error", ns::STREAM).with_child(Element::new("x", ns::SERVER));
        assert_eq!(e.to_xml(ns::SERVER), "<stream:error><x/></stream:error>");
    }

    #[test]
    fn no_namespace_child_undeclares_default() {
        let e = Element::new("a", "urn:a").with_child(Element::new("b", ""));
        assert_eq!(e.to_xml("urn:a"), "<a><b xmlns=''/></a>");
    }

    #[test]
    fn escapes_text_and_attrs() {
        let e = Element::new("a", "")
            .with_attr("v", "<'\"&>\n")
            .with_text("1 < 2 && 3 > 2 'q' \"q\"");
        assert_eq!(
            e.to_xml(""),
            "<a v='&lt;&apos;&quot;&amp;&gt;&#10;'>1 &lt; 2 &amp;&amp; 3 &gt; 2 'q' \"q\"</a>"
        );
    }

    #[test]
    fn escape_borrows_when_clean() {
        assert!(matches!(escape_text("plain"), Cow::Borrowed("plain")));
        assert!(matches!(escape_attr("plain"), Cow::Borrowed("plain")));
        assert_eq!(escape_text("ä&ö"), "ä&amp;ö");
    }

    #[test]
    fn clark_attrs_get_declared_prefix() {
        let e = Element::new("a", "urn:a")
            .with_attr("{urn:x}y", "1")
            .with_attr("{http://www.w3.org/XML/1998/namespace}lang", "en")
            .with_attr("xml:space", "preserve");
        assert_eq!(
            e.to_xml("urn:a"),
            "<a xmlns:ns0='urn:x' ns0:y='1' xml:lang='en' xml:space='preserve'/>"
        );
    }

    #[test]
    fn namespace_compares_and_prints_like_a_string() {
        let a = Namespace::from("urn:a");
        let b = a.clone();
        assert!(Namespace::ptr_eq(&a, &b));
        assert!(!Namespace::ptr_eq(&a, &Namespace::from("urn:a")));
        assert_eq!(a, Namespace::from(String::from("urn:a")));
        assert_eq!(a, "urn:a");
        assert_eq!(a, *"urn:a");
        assert_eq!(a, String::from("urn:a"));
        assert_eq!("urn:a", a);
        assert_eq!(String::from("urn:a"), a);
        assert_ne!(a, "urn:b");
        assert_eq!(a.as_str(), "urn:a");
        assert_eq!(a.len(), 5);
        assert_eq!(format!("{a} {a:?}"), "urn:a \"urn:a\"");
        assert_eq!(Namespace::default(), "");
        let b = Namespace::from("urn:b");
        assert!(a < b);
        let set: std::collections::HashSet<Namespace> = [a].into_iter().collect();
        assert!(set.contains("urn:a"));
    }

    /// Whatever names a hand-built tree holds, the output is well-formed XML that parses back
    /// to the attributes that could be written.
    #[test]
    fn invalid_attribute_names_are_not_written() {
        let e = Element::new("message", ns::SERVER)
            .with_attr("ok", "1")
            .with_attr("{urn:a}b}c", "x")
            .with_attr("a='x' b", "y")
            .with_attr("{urn:a b}c", "z")
            .with_attr("{urn:a>}c", "z")
            .with_attr("{urn:a}", "z")
            .with_attr("{}c", "z")
            .with_attr("{http://www.w3.org/2000/xmlns/}c", "z")
            .with_attr("{urn:a", "z")
            .with_attr("xmlns", "urn:evil")
            .with_attr("xmlns:p", "urn:evil")
            .with_attr("p:x", "unbound")
            .with_attr("xml:lang", "en")
            .with_attr("{http://www.w3.org/XML/1998/namespace}lang", "de")
            .with_attr("{urn:a}b", "1")
            .with_attr("{urn:b}b", "2")
            .with_attr("x/><evil", "1")
            .with_attr("1x", "1")
            .with_attr("ok", "dup");
        // A duplicate pushed past set_attr.
        let mut e = e;
        e.attrs.push(("ok".into(), "dup".into()));
        e.attrs.push(("{urn:a}b".into(), "dup".into()));
        let xml = e.to_xml(ns::SERVER);
        assert_eq!(
            xml,
            "<message ok='dup' xml:lang='en' xmlns:ns0='urn:a' ns0:b='1' \
             xmlns:ns1='urn:b' ns1:b='2'/>"
        );
        let mut f = crate::Framer::new(crate::Limits::default());
        f.push(
            b"<stream:stream xmlns='jabber:server' \
              xmlns:stream='http://etherx.jabber.org/streams'>",
        );
        f.push(xml.as_bytes());
        assert!(matches!(
            f.next_event(),
            Ok(Some(crate::Event::StreamOpen(_)))
        ));
        let Ok(Some(crate::Event::Element(back))) = f.next_event() else {
            panic!("{xml} does not parse back");
        };
        assert_eq!(
            back.element.attrs,
            [
                ("ok", "dup"),
                ("xml:lang", "en"),
                ("{urn:a}b", "1"),
                ("{urn:b}b", "2")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
