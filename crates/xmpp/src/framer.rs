//! Incremental, check-then-parse framing of an XMPP stream from untrusted bytes.
//!
//! Bytes are appended to the framer's buffer as they arrive. A resumable byte scanner first
//! finds where the next top-level item ends, rejecting restricted XML and mismatched end tags
//! as soon as it sees them, before anything is allocated for the item; only a complete element
//! is handed to quick-xml to build its tree.
//!
//! What is bounded ([`Limits`]), each refusal mapped to `<policy-violation/>`: the bytes of
//! one top-level element and of the stream header (checked as they are scanned, so an
//! unfinished item fails as soon as it passes the limit, which may change between calls),
//! the nesting depth, the attributes and the namespace declarations of one start tag, and the
//! memory of the tree built from an element: the builder estimates the heap it holds as it
//! goes (names, attribute names and values, text and a slot per node, namespace URIs shared
//! rather than copied per element) and refuses an element whose tree would cost more than
//! [`Limits::parse_cost_factor`] times its size plus 16 KiB. The scanner's state is a few
//! offsets per open element, at most `max_depth` of them.

use bytes::{Buf, Bytes, BytesMut};

use crate::chars::is_space;
use crate::element::Element;
use crate::error::FrameError;
use crate::limits::Limits;
use crate::parse::{parse_top_level, HeaderBindings};
use crate::scan::{Found, ScanCfg, Scanner};
use crate::stream::{check_declaration_pi, parse_header, StreamHeader};

/// What the framer found in the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The stream header (the opening `<stream:stream ...>` tag).
    StreamOpen(StreamHeader),
    /// A complete top-level child of the stream element.
    Element(TopLevel),
    /// The stream's closing tag.
    StreamClose,
}

/// A complete top-level element, parsed, with its exact bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLevel {
    /// The full tree of the top-level child of `<stream:stream>`.
    pub element: Element,
    /// The exact bytes of that element as received.
    pub raw: Bytes,
    /// True when `raw` can be written verbatim into another stream whose header declares the
    /// same default namespace (jabber:server or jabber:client) plus the standard `stream:`
    /// and `db:` prefixes: `raw` uses no prefix declared only on the stream header except
    /// `stream`/`db` bound to their standard URIs, and any reliance on the inherited default
    /// namespace is by the top-level element itself.
    pub self_contained: bool,
}

impl TopLevel {
    /// Bytes to write into a stream whose default namespace is `default_ns`: `raw` when it is
    /// self-contained and the element is in `default_ns` (so the inherited default matches),
    /// otherwise a fresh serialization (`element.to_xml(default_ns)`), which is always correct.
    pub fn forwardable(&self, default_ns: &str) -> Bytes {
        if self.self_contained && self.element.ns == default_ns {
            self.raw.clone()
        } else {
            Bytes::from(self.element.to_xml(default_ns))
        }
    }
}

/// Where in the stream the framer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the header; an XML declaration is acceptable while `decl_allowed`.
    Prolog { decl_allowed: bool },
    /// Inside the stream element.
    Stream,
    /// After the closing tag.
    Closed,
}

/// What the framer keeps of the stream header once it arrived.
#[derive(Debug)]
struct OpenStream {
    header: StreamHeader,
    /// The header's namespace bindings as shared strings, cloned into every stanza's tree.
    bindings: HeaderBindings,
    /// The stream element's qualified name as written, to match its end tag.
    qname: Vec<u8>,
}

/// Incremental framer for one direction of an XMPP stream.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    buf: BytesMut,
    scanner: Scanner,
    phase: Phase,
    stream: Option<OpenStream>,
    failed: Option<FrameError>,
}

impl Framer {
    /// A framer expecting a (optional XML declaration and) stream header.
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: BytesMut::with_capacity(8192),
            scanner: Scanner::default(),
            phase: Phase::Prolog { decl_allowed: true },
            stream: None,
            failed: None,
        }
    }

    /// The receive buffer: bytes read from the socket are appended here.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Number of bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The limits this framer enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Change the maximum size of a top-level element, e.g. from a small cap before the peer
    /// is authenticated to the configured one after. Safe at any point, mid-element too: the
    /// scanner checks the limit in force against the element's bytes so far whenever it is
    /// called, so an element already past a lowered limit fails on the next
    /// [`Framer::next_event`].
    pub fn set_max_stanza_bytes(&mut self, n: usize) {
        self.limits.max_stanza_bytes = n;
    }

    /// The current stream's header, once received.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.stream.as_ref().map(|s| &s.header)
    }

    /// The next complete event; `Ok(None)` means more bytes are needed. Whitespace between
    /// top-level elements (keepalives) is skipped. After an error the framer stays failed
    /// (returning the same error) until [`Framer::reset`].
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.next_inner();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Stream restart (after STARTTLS or SASL success): expect a new optional XML declaration
    /// and stream header. Bytes still buffered arrived before the restart point and are
    /// discarded; returns how many.
    pub fn reset(&mut self) -> usize {
        let discarded = self.buf.len();
        self.buf.clear();
        self.scanner.reset();
        self.phase = Phase::Prolog { decl_allowed: true };
        self.stream = None;
        self.failed = None;
        discarded
    }

    fn next_inner(&mut self) -> Result<Option<Event>, FrameError> {
        loop {
            if self.phase == Phase::Closed {
                return self.after_close();
            }
            let found = match self.scan()? {
                Some(found) => found,
                None => {
                    self.compact();
                    return Ok(None);
                }
            };
            if let Some(event) = self.handle(found)? {
                return Ok(Some(event));
            }
        }
    }

    fn scan(&mut self) -> Result<Option<Found>, FrameError> {
        let (prolog, decl_allowed) = match self.phase {
            Phase::Prolog { decl_allowed } => (true, decl_allowed),
            Phase::Stream | Phase::Closed => (false, false),
        };
        let cfg = ScanCfg {
            prolog,
            decl_allowed,
            limit: if prolog {
                self.limits.max_header_bytes
            } else {
                self.limits.max_stanza_bytes
            },
            max_depth: self.limits.max_depth,
            max_attributes: self.limits.max_attributes,
            header_qname: match (&self.stream, prolog) {
                (Some(stream), false) => Some(stream.qname.as_slice()),
                _ => None,
            },
        };
        self.scanner.scan(&self.buf, &cfg)
    }

    /// Drop scanned whitespace so an idle stream of keepalives does not grow the buffer.
    fn compact(&mut self) {
        let n = self.scanner.discardable();
        if n > 0 {
            self.buf.advance(n);
            self.scanner.shift(n);
        }
    }

    /// Remove `..end` from the buffer and return `start..end` of it.
    fn take(&mut self, start: usize, end: usize) -> BytesMut {
        self.buf.advance(start);
        let item = self.buf.split_to(end - start);
        self.scanner.reset();
        item
    }

    fn handle(&mut self, found: Found) -> Result<Option<Event>, FrameError> {
        match (found, self.phase) {
            (Found::Decl { start, end }, _) => {
                check_declaration_pi(&self.take(start, end))?;
                self.phase = Phase::Prolog {
                    decl_allowed: false,
                };
                Ok(None)
            }
            (Found::Open { start, end }, _) => {
                let (header, qname) = parse_header(&self.take(start, end), &self.limits)?;
                self.phase = Phase::Stream;
                self.stream = Some(OpenStream {
                    bindings: HeaderBindings::new(&header),
                    header: header.clone(),
                    qname: qname.into_bytes(),
                });
                Ok(Some(Event::StreamOpen(header)))
            }
            (Found::Element { start, end }, Phase::Prolog { .. }) => {
                parse_header(&self.take(start, end), &self.limits)?;
                Err(FrameError::BadFormat("self-closing stream header".into()))
            }
            (Found::Element { start, end }, _) => {
                // Copy out rather than freeze: a frozen slice would pin the whole receive
                // allocation for as long as the stanza is queued, and keep the buffer from
                // reusing its space.
                let raw = Bytes::copy_from_slice(&self.take(start, end));
                self.top_level(raw).map(|t| Some(Event::Element(t)))
            }
            (Found::Close { start, end, name }, _) => self.close(start, end, name),
        }
    }

    fn top_level(&self, raw: Bytes) -> Result<TopLevel, FrameError> {
        let stream = self
            .stream
            .as_ref()
            .ok_or_else(|| FrameError::BadFormat("element before the stream header".into()))?;
        let parsed = parse_top_level(&raw, &stream.bindings, &self.limits)?;
        Ok(TopLevel {
            element: parsed.element,
            raw,
            self_contained: parsed.self_contained,
        })
    }

    fn close(
        &mut self,
        start: usize,
        end: usize,
        name: (usize, usize),
    ) -> Result<Option<Event>, FrameError> {
        let qname = self.stream.as_ref().map(|s| s.qname.as_slice());
        let matches = qname.is_some() && self.buf.get(name.0..name.1) == qname;
        if !matches {
            return Err(FrameError::NotWellFormed(
                "end tag does not match the stream header".into(),
            ));
        }
        self.take(start, end);
        self.phase = Phase::Closed;
        Ok(Some(Event::StreamClose))
    }

    /// After the closing tag only whitespace may follow; it is dropped.
    fn after_close(&mut self) -> Result<Option<Event>, FrameError> {
        if self.buf.iter().any(|&b| !is_space(b)) {
            return Err(FrameError::NotWellFormed(
                "data after the end of the stream".into(),
            ));
        }
        self.buf.clear();
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StreamCondition;
    use crate::ns;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
        version='1.0' from='prosody.example' to='causeway.example' id='5b3c' xml:lang='en'>";

    fn small_limits() -> Limits {
        Limits {
            max_stanza_bytes: 64,
            max_depth: 4,
            max_header_bytes: 512,
            ..Limits::default()
        }
    }

    /// Push everything at once and drain all events (stopping at the first error).
    fn events(framer: &mut Framer, input: &[u8]) -> Result<Vec<Event>, FrameError> {
        framer.push(input);
        let mut out = Vec::new();
        while let Some(ev) = framer.next_event()? {
            out.push(ev);
        }
        Ok(out)
    }

    fn open(framer: &mut Framer) {
        let evs = events(framer, HEADER.as_bytes()).expect("header");
        assert!(matches!(evs.as_slice(), [Event::StreamOpen(_)]));
    }

    fn element(ev: &Event) -> &TopLevel {
        match ev {
            Event::Element(t) => t,
            other => panic!("expected element, got {other:?}"),
        }
    }

    fn first_error(input: &str, limits: Limits) -> FrameError {
        let mut framer = Framer::new(limits);
        match events(&mut framer, input.as_bytes()) {
            Err(e) => e,
            Ok(evs) => panic!("expected an error, got {evs:?}"),
        }
    }

    #[test]
    fn header_fields_are_reported() {
        let mut f = Framer::new(Limits::default());
        let evs = events(&mut f, HEADER.as_bytes()).expect("ok");
        let Some(Event::StreamOpen(h)) = evs.first() else {
            panic!("no header: {evs:?}");
        };
        assert_eq!(h.from.as_deref(), Some("prosody.example"));
        assert_eq!(h.to.as_deref(), Some("causeway.example"));
        assert_eq!(h.id.as_deref(), Some("5b3c"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        assert_eq!(h.default_ns, ns::SERVER);
        assert!(h.declares_dialback());
        assert_eq!(f.header(), Some(h));
    }

    #[test]
    fn multiple_stanzas_in_one_buffer() {
        let mut f = Framer::new(Limits::default());
        let input = format!(
            "{HEADER}<message to='a@b' id='1'><body>one</body></message> \n\t\
             <presence/><iq type='get' id='2'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>"
        );
        let evs = events(&mut f, input.as_bytes()).expect("ok");
        assert_eq!(evs.len(), 5);
        let m = element(&evs[1]);
        assert!(m.element.is("message", ns::SERVER));
        assert_eq!(
            &m.raw[..],
            &b"<message to='a@b' id='1'><body>one</body></message>"[..]
        );
        assert!(element(&evs[2]).element.is("presence", ns::SERVER));
        let iq = element(&evs[3]);
        assert!(iq.element.child("ping", ns::PING).is_some());
        assert!(matches!(evs[4], Event::StreamClose));
        assert_eq!(f.buffered(), 0);
    }

    /// A Prosody-style s2s exchange fed one byte at a time, across a STARTTLS restart,
    /// with a multi-byte UTF-8 character split between reads.
    #[test]
    fn byte_by_byte_prosody_exchange() {
        let features = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'>\
            <errors xmlns='urn:xmpp:capabilities:dialback-errors'/></dialback>\
            <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
        let proceed = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
        let mut f = Framer::new(Limits::default());
        let mut evs = Vec::new();
        for b in format!("{HEADER}\n{features}{proceed}").bytes() {
            f.push(&[b]);
            while let Some(ev) = f.next_event().expect("ok") {
                evs.push(ev);
            }
        }
        assert_eq!(evs.len(), 3);
        assert!(matches!(&evs[0], Event::StreamOpen(h) if h.declares_dialback()));
        let feat = element(&evs[1]);
        assert!(feat.element.is("features", ns::STREAM));
        assert_eq!(&feat.raw[..], features.as_bytes());
        assert!(feat.self_contained);
        let tls = feat.element.child("starttls", ns::TLS).expect("starttls");
        assert!(tls.child("required", ns::TLS).is_some());
        assert!(feat
            .element
            .child("dialback", ns::DIALBACK_FEATURE)
            .is_some());
        assert!(element(&evs[2]).element.is("proceed", ns::TLS));

        // TLS handshake happens; the stream restarts.
        assert_eq!(f.reset(), 0);
        assert!(f.header().is_none());
        let after = format!(
            "{HEADER}<db:result from='prosody.example' to='causeway.example'>abc123</db:result>\
             <message from='a@prosody.example' to='b@causeway.example'><body>h\u{e9}llo \u{1f600}</body></message>\
             </stream:stream>"
        );
        let mut evs = Vec::new();
        for b in after.bytes() {
            f.push(&[b]);
            while let Some(ev) = f.next_event().expect("ok") {
                evs.push(ev);
            }
        }
        assert_eq!(evs.len(), 4);
        let db = element(&evs[1]);
        assert!(db.element.is("result", ns::DIALBACK));
        assert_eq!(db.element.text(), "abc123");
        let msg = element(&evs[2]);
        assert_eq!(
            msg.element.child("body", ns::SERVER).map(|b| b.text()),
            Some("h\u{e9}llo \u{1f600}".to_string())
        );
        assert!(matches!(evs[3], Event::StreamClose));
    }

    #[test]
    fn reset_discards_buffered_bytes() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        f.push(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><junk");
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
        assert_eq!(f.next_event(), Ok(None));
        assert_eq!(f.reset(), 5);
        // The new stream may start without an XML declaration.
        let evs = events(
            &mut f,
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='2'>",
        )
        .expect("ok");
        assert!(matches!(&evs[..], [Event::StreamOpen(h)] if h.id.as_deref() == Some("2")));
    }

    #[test]
    fn keepalive_whitespace_is_skipped_and_dropped() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        for _ in 0..100 {
            f.push(b" \n");
            assert_eq!(f.next_event(), Ok(None));
        }
        assert_eq!(f.buffered(), 0);
        f.push(b"  <presence/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
    }

    #[test]
    fn self_closing_top_level_and_cdata_and_quoted_gt() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let evs = events(
            &mut f,
            b"<presence to='a@b' status='x > y'/><message><body><![CDATA[<not-a-tag/> & ]]>ok</body></message>",
        )
        .expect("ok");
        assert_eq!(evs.len(), 2);
        let p = element(&evs[0]);
        assert_eq!(p.element.attr("status"), Some("x > y"));
        assert!(p.element.children.is_empty());
        let body = element(&evs[1])
            .element
            .child("body", ns::SERVER)
            .map(|b| b.text());
        assert_eq!(body.as_deref(), Some("<not-a-tag/> & ok"));
    }

    #[test]
    fn header_only_prefix_is_reserialized() {
        let mut f = Framer::new(Limits::default());
        let header =
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                      xmlns:db='jabber:server:dialback' xmlns:foo='urn:foo'>";
        events(&mut f, header.as_bytes()).expect("header");
        let evs = events(
            &mut f,
            b"<foo:bar a='1'><baz/></foo:bar><message><foo:x/></message>",
        )
        .expect("ok");
        let bar = element(&evs[0]);
        assert!(!bar.self_contained);
        assert!(bar.element.is("bar", "urn:foo"));
        let out = bar.forwardable(ns::SERVER);
        assert_eq!(
            &out[..],
            &b"<bar xmlns='urn:foo' a='1'><baz xmlns='jabber:server'/></bar>"[..]
        );
        let msg = element(&evs[1]);
        assert!(!msg.self_contained);
        assert_eq!(
            &msg.forwardable(ns::SERVER)[..],
            &b"<message><x xmlns='urn:foo'/></message>"[..]
        );

        // The re-serialized bytes parse back to the same tree in a standard stream.
        let mut g = Framer::new(Limits::default());
        open(&mut g);
        let back = events(&mut g, &out).expect("ok");
        assert_eq!(element(&back[0]).element, bar.element);
        assert!(element(&back[0]).self_contained);
    }

    #[test]
    fn forwardable_returns_raw_when_self_contained() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let raw = b"<message  to=\"b@y\"><body>x</body ></message>";
        let evs = events(&mut f, raw).expect("ok");
        let m = element(&evs[0]);
        assert!(m.self_contained);
        assert_eq!(&m.forwardable(ns::SERVER)[..], &raw[..]);
        // Into a client stream the inherited default would differ: re-serialize.
        assert_eq!(
            &m.forwardable(ns::CLIENT)[..],
            &b"<message xmlns='jabber:server' to='b@y'><body>x</body></message>"[..]
        );
    }

    #[test]
    fn oversize_detected_before_completion() {
        let mut f = Framer::new(small_limits());
        open(&mut f);
        f.push(b"<message><body>");
        assert_eq!(f.next_event(), Ok(None));
        f.push(&[b'x'; 60]);
        let err = f.next_event().expect_err("too large");
        assert_eq!(err, FrameError::TooLarge { limit: 64 });
        assert_eq!(err.condition(), StreamCondition::PolicyViolation);
    }

    #[test]
    fn element_at_exact_limit_is_accepted() {
        let mut f = Framer::new(small_limits());
        open(&mut f);
        let body = "x".repeat(64 - "<m></m>".len());
        let evs = events(&mut f, format!("<m>{body}</m>").as_bytes()).expect("ok");
        assert_eq!(element(&evs[0]).raw.len(), 64);
    }

    #[test]
    fn header_size_limit() {
        let input = format!(
            "<stream:stream xmlns='jabber:server' pad='{}'>",
            "p".repeat(600)
        );
        assert_eq!(
            first_error(&input, small_limits()),
            FrameError::TooLarge { limit: 512 }
        );
    }

    #[test]
    fn depth_bomb() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let err = events(&mut f, "<a>".repeat(100_000).as_bytes()).expect_err("too deep");
        assert_eq!(err, FrameError::TooDeep { limit: 64 });
        assert_eq!(err.condition(), StreamCondition::PolicyViolation);
    }

    #[test]
    fn billion_laughs_rejected() {
        let input = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>\
            <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>\
            <stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>";
        let err = first_error(input, Limits::default());
        assert!(matches!(err, FrameError::RestrictedXml(_)), "{err:?}");
        assert_eq!(err.condition(), StreamCondition::RestrictedXml);
        // A DOCTYPE or an undeclared entity inside the stream is refused as well.
        let err = first_error(&format!("{HEADER}<!DOCTYPE x>"), Limits::default());
        assert!(matches!(err, FrameError::RestrictedXml(_)));
        let err = first_error(
            &format!("{HEADER}<message>&lol2;</message>"),
            Limits::default(),
        );
        assert!(matches!(err, FrameError::RestrictedXml(_)));
    }

    #[test]
    fn comments_and_pis_rejected() {
        for input in [
            format!("{HEADER}<message><!-- hi --></message>"),
            format!("{HEADER}<!-- hi -->"),
            "<!-- hi --><stream:stream>".to_string(),
            format!("{HEADER}<message><?php x?></message>"),
            format!("{HEADER}<?xml version='1.0'?>"),
        ] {
            let err = first_error(&input, Limits::default());
            assert!(
                matches!(err, FrameError::RestrictedXml(_)),
                "{input}: {err:?}"
            );
        }
    }

    #[test]
    fn not_well_formed_cases() {
        for input in [
            format!("{HEADER}<message><body></message></body>"),
            format!("{HEADER}hello"),
            format!("{HEADER}<message a='1' a='2'/>"),
            format!("{HEADER}<message a=1/>"),
            format!("{HEADER}<undeclared:x/>"),
            format!("{HEADER}</other>"),
            format!("{HEADER}<message>&amp</message>"),
            format!("{HEADER}<message>\u{1}</message>"),
            "</stream:stream>".to_string(),
        ] {
            let err = first_error(&input, Limits::default());
            assert!(
                matches!(err, FrameError::NotWellFormed(_)),
                "{input}: {err:?}"
            );
            assert_eq!(err.condition(), StreamCondition::NotWellFormed);
        }
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        f.push(b"<m>\xc3\x28</m>");
        assert!(matches!(f.next_event(), Err(FrameError::NotWellFormed(_))));
    }

    #[test]
    fn invalid_namespace_and_bad_format() {
        let err = first_error("<stream:stream xmlns:stream='urn:nope'>", Limits::default());
        assert!(matches!(err, FrameError::InvalidNamespace(_)));
        assert_eq!(err.condition(), StreamCondition::InvalidNamespace);
        let err = first_error("<message xmlns='jabber:server'/>", Limits::default());
        assert!(matches!(err, FrameError::InvalidNamespace(_)));

        let err = first_error(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'/>",
            Limits::default(),
        );
        assert!(matches!(err, FrameError::BadFormat(_)));
        assert_eq!(err.condition(), StreamCondition::BadFormat);
        let again = HEADER.trim_start_matches("<?xml version='1.0'?>");
        let err = first_error(&format!("{HEADER}{again}"), Limits::default());
        assert!(matches!(err, FrameError::BadFormat(_)), "{err:?}");
        let err = first_error(
            "<?xml version='1.0' encoding='UTF-16'?><stream:stream>",
            Limits::default(),
        );
        assert!(matches!(err, FrameError::BadFormat(_)));
    }

    #[test]
    fn errors_are_sticky_until_reset() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        f.push(b"<!-- x --><presence/>");
        let err = f.next_event().expect_err("restricted");
        assert_eq!(f.next_event(), Err(err));
        f.reset();
        open(&mut f);
        f.push(b"<presence/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
    }

    #[test]
    fn close_then_only_whitespace() {
        let mut f = Framer::new(Limits::default());
        let evs = events(&mut f, format!("{HEADER}</stream:stream >\n ").as_bytes()).expect("ok");
        assert!(matches!(evs.last(), Some(Event::StreamClose)));
        assert_eq!(f.buffered(), 0);
        f.push(b"<presence/>");
        assert!(matches!(f.next_event(), Err(FrameError::NotWellFormed(_))));
    }

    #[test]
    fn close_must_match_header_prefix() {
        let mut f = Framer::new(Limits::default());
        events(
            &mut f,
            b"<s:stream xmlns='jabber:server' xmlns:s='http://etherx.jabber.org/streams'><s:features/>",
        )
        .expect("ok");
        f.push(b"</stream:stream>");
        assert!(matches!(f.next_event(), Err(FrameError::NotWellFormed(_))));
        let mut f = Framer::new(Limits::default());
        let evs = events(
            &mut f,
            b"<s:stream xmlns='jabber:server' xmlns:s='http://etherx.jabber.org/streams'><s:features/></s:stream>",
        )
        .expect("ok");
        // s: is not the standard prefix, so the features element is not self-contained.
        assert!(!element(&evs[1]).self_contained);
        assert!(element(&evs[1]).element.is("features", ns::STREAM));
        assert!(matches!(evs[2], Event::StreamClose));
    }

    #[test]
    fn attribute_syntax_edge_cases() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let evs = events(&mut f, b"<m a = '1'\tb=\"2\"\n/>").expect("spaces around = are legal");
        assert_eq!(element(&evs[0]).element.attr("b"), Some("2"));
        for bad in [
            "<m a='1'b='2'/>",
            "<m a/>",
            "<m ='1'/>",
            "<m a='1' / ></m>",
            "<m a='1' b></m>",
            "<m a=='1'/>",
        ] {
            let err = first_error(&format!("{HEADER}{bad}"), Limits::default());
            assert!(
                matches!(err, FrameError::NotWellFormed(_)),
                "{bad}: {err:?}"
            );
        }
    }

    /// Outcome of framing `input` fed in chunks of the given sizes (cycled), with limits the
    /// mutations below can reach: the stream header is at its attribute and declaration caps.
    fn outcome(input: &[u8], chunks: &[usize]) -> (Vec<Event>, Option<FrameError>) {
        let mut f = Framer::new(Limits {
            max_stanza_bytes: 256,
            max_attributes: 8,
            max_namespace_declarations: 3,
            ..small_limits()
        });
        let mut evs = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            f.push(&rest[..n]);
            rest = &rest[n..];
            loop {
                match f.next_event() {
                    Ok(Some(ev)) => evs.push(ev),
                    Ok(None) => break,
                    Err(e) => return (evs, Some(e)),
                }
            }
        }
        (evs, None)
    }

    /// Both `forwardable` outputs parse back to the same tree in a standard s2s stream.
    fn assert_round_trips(t: &TopLevel) {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        for bytes in [
            t.forwardable(ns::SERVER),
            Bytes::from(t.element.to_xml(ns::SERVER)),
        ] {
            f.push(&bytes);
            match f.next_event() {
                Ok(Some(Event::Element(back))) => assert_eq!(back.element, t.element),
                other => panic!("{:?} did not round-trip: {other:?}", t.raw),
            }
        }
    }

    /// The fuzzer's finding: a forbidden control character exactly where an unfinished item
    /// reaches its size limit got `<not-well-formed/>` when the bytes came together and
    /// `<policy-violation/>` when they were split there.
    #[test]
    fn the_size_limit_and_a_control_character_at_it_give_one_error_however_split() {
        let mut input = b"<?xml version='1.0'?".to_vec();
        input.resize(512, b'x');
        input.push(0x13);
        input.extend_from_slice(b"?>");
        let whole = outcome(&input, &[input.len()]);
        let split = outcome(&input, &[512, 1]);
        assert_eq!(whole, split);
        assert!(
            matches!(whole.1, Some(FrameError::TooLarge { limit: 512 })),
            "{whole:?}"
        );
    }

    /// Mutated streams give the same events and error however the bytes are split.
    #[test]
    fn chunking_never_changes_the_outcome() {
        let base = format!(
            "{HEADER}<message to='a@b'><body>h\u{e9} &amp; <![CDATA[x]]></body></message> \
             <db:result from='a' to='b'>k</db:result><iq id='1'><q xmlns='urn:q' a='&gt;'/></iq>\
             </stream:stream>"
        );
        let alphabet = b"<>/='\"&;![]?-: \nabxmlns\xc3\xa9";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        let mut errors = 0;
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..1500 {
            let mut input = base.clone().into_bytes();
            for _ in 0..(next() % 3 + 1) {
                let at = next() % input.len();
                let byte = alphabet[next() % alphabet.len()];
                match next() % 3 {
                    0 => input[at] = byte,
                    1 => input.insert(at, byte),
                    _ => {
                        input.remove(at);
                    }
                }
            }
            let whole = outcome(&input, &[input.len()]);
            let split = outcome(&input, &[1, 7, 2, 31]);
            assert_eq!(whole, split, "{}", String::from_utf8_lossy(&input));
            for ev in &whole.0 {
                if let Event::Element(t) = ev {
                    assert_round_trips(t);
                }
            }
            errors += usize::from(whole.1.is_some());
            if let Some(e) = &whole.1 {
                kinds.insert(std::mem::discriminant(e));
            }
        }
        // The mutations do hit the error paths.
        assert!(errors > 100, "{errors}");
        assert!(kinds.len() >= 3, "{kinds:?}");
    }

    /// An end tag that does not close the innermost element fails as soon as its name is
    /// read: the element cannot stay open and swallow the stanzas after it.
    #[test]
    fn mismatched_end_tag_fails_at_once() {
        let input = "<message to='a@b'><body>x</message><message/>";
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let err = events(&mut f, input.as_bytes()).expect_err("mismatch");
        assert_eq!(
            err,
            FrameError::NotWellFormed("end tag does not match".into())
        );
        assert_eq!(err.condition(), StreamCondition::NotWellFormed);

        // Byte by byte: nothing is framed, and the error comes with the first byte of the end
        // tag's name that differs from `body`, its `m`.
        let fails_at = input.find("</message>").expect("end tag") + "</".len();
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let mut failed = None;
        for (i, b) in input.bytes().enumerate() {
            f.push(&[b]);
            match f.next_event() {
                Ok(None) => {}
                Ok(Some(ev)) => panic!("framed {ev:?}"),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        assert_eq!(failed, Some((fails_at, err)));
    }

    #[test]
    fn nested_end_tags_are_matched_by_qualified_name() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let ok = b"<iq xmlns:p='urn:p'><p:q><p:q><r/></p:q ></p:q></iq>";
        assert_eq!(events(&mut f, ok).map(|e| e.len()), Ok(1));
        for bad in [
            "<iq xmlns:p='urn:p'><p:q></q></iq>",
            "<iq><query></querys></iq>",
            "<iq><query></quer></iq>",
            "<iq><a><b></a></b></iq>",
        ] {
            let err = first_error(&format!("{HEADER}{bad}<presence/>"), Limits::default());
            assert_eq!(
                err,
                FrameError::NotWellFormed("end tag does not match".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn max_stanza_bytes_can_change_mid_element() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        f.push(b"<message><body>");
        f.push(&[b'x'; 100]);
        assert_eq!(f.next_event(), Ok(None));
        // Lowered below what the element already has: fails without waiting for more bytes.
        f.set_max_stanza_bytes(64);
        assert_eq!(f.limits().max_stanza_bytes, 64);
        assert_eq!(f.next_event(), Err(FrameError::TooLarge { limit: 64 }));

        // Raised mid-element: the element may grow past the old limit.
        let mut f = Framer::new(small_limits());
        open(&mut f);
        f.push(b"<message><body>");
        assert_eq!(f.next_event(), Ok(None));
        f.set_max_stanza_bytes(8192);
        f.push(&[b'x'; 100]);
        f.push(b"</body></message>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
        // Lowered between elements: applies from the next one on.
        f.set_max_stanza_bytes(16);
        f.push(b"<presence/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
        f.push(b"<presence type='unavailable'/>");
        assert_eq!(f.next_event(), Err(FrameError::TooLarge { limit: 16 }));
    }

    #[test]
    fn attributes_and_declarations_are_capped() {
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='{i}'")).collect::<String>();
        let decls = |n: usize| {
            (0..n)
                .map(|i| format!(" xmlns:p{i}='urn:p{i}'"))
                .collect::<String>()
        };
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let input = format!("<m{}><n{}/></m>", attrs(64), decls(16));
        assert_eq!(events(&mut f, input.as_bytes()).map(|e| e.len()), Ok(1));

        let err = first_error(&format!("{HEADER}<m{}/>", attrs(65)), Limits::default());
        assert_eq!(err, FrameError::TooManyAttributes { limit: 64 });
        assert_eq!(err.condition(), StreamCondition::PolicyViolation);
        let err = first_error(&format!("{HEADER}<m{}/>", decls(17)), Limits::default());
        assert_eq!(err, FrameError::TooManyNamespaces { limit: 16 });
        assert_eq!(err.condition(), StreamCondition::PolicyViolation);

        // The stream header has 8 attributes, 3 of them declarations.
        let header = HEADER.replace(" from=", &format!("{} from=", attrs(57)));
        assert_eq!(
            first_error(&header, Limits::default()),
            FrameError::TooManyAttributes { limit: 64 }
        );
        let header = HEADER.replace(" from=", &format!("{} from=", decls(14)));
        assert_eq!(
            first_error(&header, Limits::default()),
            FrameError::TooManyNamespaces { limit: 16 }
        );
    }

    /// A `}` in a namespace URI would make the Clark name `{uri}local` of an attribute split
    /// in the wrong place, and the rest of the URI pass for the attribute's name.
    #[test]
    fn invalid_namespace_uris_are_not_well_formed() {
        for input in [
            format!("{HEADER}<m xmlns:p='urn:x}}onload=&apos;1&apos; y' p:z='1'/>"),
            format!("{HEADER}<m xmlns='urn:x y'/>"),
            format!("{HEADER}<m><n xmlns='urn:&lt;x&gt;'/></m>"),
            HEADER.replace("xmlns='jabber:server'", "xmlns='jabber:server}'"),
            HEADER.replace("jabber:server:dialback", "jabber:server:dialback^"),
        ] {
            let err = first_error(&input, Limits::default());
            assert!(
                matches!(err, FrameError::NotWellFormed(_)),
                "{input}: {err:?}"
            );
        }
    }

    #[test]
    fn stanzas_share_the_header_namespace() {
        let mut f = Framer::new(Limits::default());
        open(&mut f);
        let evs = events(&mut f, b"<message><body>a</body></message><presence/>").expect("ok");
        let (m, p) = (&element(&evs[0]).element, &element(&evs[1]).element);
        assert!(crate::Namespace::ptr_eq(&m.ns, &p.ns));
        let body = m.child("body", ns::SERVER).expect("body");
        assert!(crate::Namespace::ptr_eq(&m.ns, &body.ns));
    }

    #[test]
    fn buffer_mut_appends_like_push() {
        let mut f = Framer::new(Limits::default());
        f.buffer_mut().extend_from_slice(HEADER.as_bytes());
        f.buffer_mut().extend_from_slice(b"<presence/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen(_)))));
        assert!(matches!(f.next_event(), Ok(Some(Event::Element(_)))));
        assert_eq!(f.next_event(), Ok(None));
    }
}
