//! The "check" step of the framer: a resumable byte scanner that finds where the next complete
//! top-level item ends without building anything.
//!
//! It works on bytes, so UTF-8 sequences split across reads need no care, and it keeps its
//! state between calls, so each byte is examined once however the input is fragmented.
//! It remembers where the names of the open elements are in the buffer (at most `max_depth`
//! ranges), so an end tag that does not match fails at the first byte of its name that
//! differs, rather than leaving the element open to swallow the stanzas after it.

use crate::chars::{is_forbidden_control, is_name_char, is_name_start, is_space};
use crate::error::FrameError;

/// What the scanner found; offsets are relative to the start of the scanned buffer and `end`
/// is exclusive. Bytes before `start` are whitespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// An `<?xml ...?>` declaration (prolog only).
    Decl { start: usize, end: usize },
    /// A start tag at stream level left open: the stream header (prolog only).
    Open { start: usize, end: usize },
    /// A complete top-level element (or, in the prolog, a self-closing header).
    Element { start: usize, end: usize },
    /// An end tag at stream level; `name` is the byte range of its qualified name.
    Close {
        start: usize,
        end: usize,
        name: (usize, usize),
    },
}

/// Per-call scanning parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanCfg<'a> {
    /// Waiting for the stream header (optionally preceded by an XML declaration).
    pub prolog: bool,
    /// Whether an XML declaration is still acceptable.
    pub decl_allowed: bool,
    /// Maximum size in bytes of the item being scanned.
    pub limit: usize,
    /// Maximum element nesting depth (the top-level element has depth 1).
    pub max_depth: usize,
    /// Maximum number of attributes (namespace declarations included) on one start tag.
    pub max_attributes: usize,
    /// In a stream: the qualified name of the stream element, to reject a nested header.
    pub header_qname: Option<&'a [u8]>,
}

const CDATA_OPEN: &[u8] = b"[CDATA[";
const XML_TARGET: &[u8] = b"xml";

/// Lexical state between bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between items at stream level.
    Top,
    /// Just after `<`.
    Lt,
    /// Inside a start tag's name.
    StartName,
    /// Inside a start tag after its name; `slash` if the previous byte was `/`.
    InTag { slash: bool },
    /// Inside a quoted attribute value.
    AttrValue(u8),
    /// Just after an attribute value's closing quote.
    AfterValue,
    /// Inside an end tag's name.
    EndName,
    /// After an end tag's name, before `>`.
    EndTail,
    /// Character data inside an element.
    Content,
    /// After `<!`, having matched this many bytes of `[CDATA[`.
    Bang(u8),
    /// Inside a CDATA section, having seen this many consecutive `]` (at most 2).
    Cdata(u8),
    /// After `<?`, having matched this many bytes of `xml`.
    PiTarget(u8),
    /// Inside the XML declaration; `question` if the previous byte was `?`.
    DeclBody { question: bool },
}

/// Resumable scanner state. Offsets are into the buffer passed to [`Scanner::scan`].
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    /// The next byte to examine.
    pos: usize,
    /// Where the item being scanned starts, once its `<` was seen.
    start: Option<usize>,
    /// The name ranges of the open elements, outermost first; its length is the depth.
    open: Vec<(usize, usize)>,
    lex: Lex,
    /// The name of the tag being scanned (its end is set once the name is complete).
    name_start: usize,
    name_end: usize,
    /// Attributes seen so far in the start tag being scanned.
    attributes: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            pos: 0,
            start: None,
            open: Vec::new(),
            lex: Lex::Top,
            name_start: 0,
            name_end: 0,
            attributes: 0,
        }
    }
}

type Step = Result<Option<Found>, FrameError>;

impl Scanner {
    /// Forget everything (after the framer consumed an item or restarted the stream).
    pub(crate) fn reset(&mut self) {
        let mut open = std::mem::take(&mut self.open);
        open.clear();
        *self = Scanner {
            open,
            ..Scanner::default()
        };
    }

    /// Bytes before this offset are scanned whitespace and may be dropped.
    pub(crate) fn discardable(&self) -> usize {
        self.start.unwrap_or(self.pos)
    }

    /// The buffer's first `n` bytes (`n <= discardable()`) were dropped.
    pub(crate) fn shift(&mut self, n: usize) {
        self.pos -= n;
        self.start = self.start.map(|s| s - n);
        self.name_start = self.name_start.saturating_sub(n);
        self.name_end = self.name_end.saturating_sub(n);
        // Open names lie after `start`, so at or after `n`.
        for (s, e) in &mut self.open {
            *s = s.saturating_sub(n);
            *e = e.saturating_sub(n);
        }
    }

    /// Continue scanning `buf` (which only ever grows at its end between calls). The limits
    /// in `cfg` may change between calls; an item already past a lowered size limit fails at
    /// once.
    pub(crate) fn scan(&mut self, buf: &[u8], cfg: &ScanCfg<'_>) -> Step {
        self.check_size(cfg)?;
        while let Some(&b) = buf.get(self.pos) {
            // The size first, as at the start of a call: which error an input gets must not
            // depend on where the bytes were split (found by fuzzing).
            self.check_size(cfg)?;
            if is_forbidden_control(b) {
                return Err(FrameError::NotWellFormed(format!(
                    "control character 0x{b:02x} is not allowed in XML"
                )));
            }
            let found = self.step(b, buf, cfg)?;
            self.pos += 1;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// An unfinished item that already holds `limit` bytes cannot end within the limit.
    fn check_size(&self, cfg: &ScanCfg<'_>) -> Result<(), FrameError> {
        match self.start {
            Some(s) if self.pos - s >= cfg.limit => Err(FrameError::TooLarge { limit: cfg.limit }),
            _ => Ok(()),
        }
    }

    fn step(&mut self, b: u8, buf: &[u8], cfg: &ScanCfg<'_>) -> Step {
        match self.lex {
            Lex::Top => self.top(b),
            Lex::Lt => self.after_lt(b, cfg),
            Lex::StartName => self.start_name(b, buf, cfg),
            Lex::InTag { slash } => self.in_tag(b, slash, cfg),
            Lex::AttrValue(quote) => self.attr_value(b, quote),
            Lex::AfterValue if is_space(b) || b == b'/' || b == b'>' => self.in_tag(b, false, cfg),
            Lex::AfterValue => Err(FrameError::NotWellFormed(
                "missing whitespace between attributes".into(),
            )),
            Lex::EndName => self.end_name(b, buf),
            Lex::EndTail => self.end_tail(b),
            Lex::Content => {
                if b == b'<' {
                    self.lex = Lex::Lt;
                }
                Ok(None)
            }
            Lex::Bang(matched) => self.bang(b, matched),
            Lex::Cdata(brackets) => {
                self.lex = match b {
                    b']' => Lex::Cdata((brackets + 1).min(2)),
                    b'>' if brackets == 2 => Lex::Content,
                    _ => Lex::Cdata(0),
                };
                Ok(None)
            }
            Lex::PiTarget(matched) => self.pi_target(b, matched),
            Lex::DeclBody { question } => self.decl_body(b, question),
        }
    }

    fn top(&mut self, b: u8) -> Step {
        if b == b'<' {
            self.start = Some(self.pos);
            self.lex = Lex::Lt;
            Ok(None)
        } else if is_space(b) {
            Ok(None)
        } else {
            Err(FrameError::NotWellFormed(
                "character data at stream level".into(),
            ))
        }
    }

    fn after_lt(&mut self, b: u8, cfg: &ScanCfg<'_>) -> Step {
        match b {
            b'/' if cfg.prolog => Err(FrameError::NotWellFormed(
                "end tag before the stream header".into(),
            )),
            b'/' => {
                self.name_start = self.pos + 1;
                self.lex = Lex::EndName;
                Ok(None)
            }
            b'!' => {
                self.lex = Lex::Bang(0);
                Ok(None)
            }
            b'?' if cfg.prolog && cfg.decl_allowed => {
                self.lex = Lex::PiTarget(0);
                Ok(None)
            }
            b'?' => Err(FrameError::RestrictedXml(
                "processing instructions are not allowed".into(),
            )),
            _ if is_name_start(b) => {
                if self.open.len() + 1 > cfg.max_depth {
                    return Err(FrameError::TooDeep {
                        limit: cfg.max_depth,
                    });
                }
                self.name_start = self.pos;
                self.attributes = 0;
                self.lex = Lex::StartName;
                Ok(None)
            }
            _ => Err(FrameError::NotWellFormed(format!(
                "unexpected byte 0x{b:02x} after '<'"
            ))),
        }
    }

    fn start_name(&mut self, b: u8, buf: &[u8], cfg: &ScanCfg<'_>) -> Step {
        if is_name_char(b) {
            return Ok(None);
        }
        if !(is_space(b) || b == b'>' || b == b'/') {
            return Err(FrameError::NotWellFormed(format!(
                "unexpected byte 0x{b:02x} in element name"
            )));
        }
        self.name_end = self.pos;
        if self.open.is_empty() {
            if let Some(q) = cfg.header_qname {
                if buf.get(self.name_start..self.name_end) == Some(q) {
                    return Err(FrameError::BadFormat(
                        "stream header inside an open stream".into(),
                    ));
                }
            }
        }
        self.in_tag(b, false, cfg)
    }

    fn in_tag(&mut self, b: u8, slash: bool, cfg: &ScanCfg<'_>) -> Step {
        self.lex = Lex::InTag { slash: false };
        match b {
            b'>' if slash => {
                if self.open.is_empty() {
                    return Ok(Some(self.found_element()));
                }
                self.lex = Lex::Content;
            }
            b'>' => {
                if self.open.is_empty() && cfg.prolog {
                    return Ok(Some(Found::Open {
                        start: self.start_or_pos(),
                        end: self.pos + 1,
                    }));
                }
                // Bounded: after_lt refused a name deeper than max_depth.
                self.open.push((self.name_start, self.name_end));
                self.lex = Lex::Content;
            }
            b'/' => self.lex = Lex::InTag { slash: true },
            b'\'' | b'"' => {
                self.attributes += 1;
                if self.attributes > cfg.max_attributes {
                    return Err(FrameError::TooManyAttributes {
                        limit: cfg.max_attributes,
                    });
                }
                self.lex = Lex::AttrValue(b);
            }
            b'<' => {
                return Err(FrameError::NotWellFormed("'<' inside a tag".into()));
            }
            _ => {}
        }
        Ok(None)
    }

    fn attr_value(&mut self, b: u8, quote: u8) -> Step {
        if b == quote {
            self.lex = Lex::AfterValue;
        } else if b == b'<' {
            return Err(FrameError::NotWellFormed("'<' in attribute value".into()));
        }
        Ok(None)
    }

    /// Inside an end tag's name, which is compared byte by byte with the innermost open
    /// element's (at stream level the framer matches it against the stream header's).
    fn end_name(&mut self, b: u8, buf: &[u8]) -> Step {
        let offset = self.pos - self.name_start;
        let open = self.open.last().and_then(|&(s, e)| buf.get(s..e));
        if (offset == 0 && is_name_start(b)) || (offset > 0 && is_name_char(b)) {
            if open.is_some_and(|name| name.get(offset) != Some(&b)) {
                return Err(mismatch());
            }
            return Ok(None);
        }
        if offset == 0 || !(is_space(b) || b == b'>') {
            return Err(FrameError::NotWellFormed("malformed end tag".into()));
        }
        if open.is_some_and(|name| name.len() != offset) {
            return Err(mismatch());
        }
        self.name_end = self.pos;
        self.lex = Lex::EndTail;
        self.end_tail(b)
    }

    fn end_tail(&mut self, b: u8) -> Step {
        if is_space(b) {
            return Ok(None);
        }
        if b != b'>' {
            return Err(FrameError::NotWellFormed("malformed end tag".into()));
        }
        if self.open.pop().is_none() {
            return Ok(Some(Found::Close {
                start: self.start_or_pos(),
                end: self.pos + 1,
                name: (self.name_start, self.name_end),
            }));
        }
        if self.open.is_empty() {
            return Ok(Some(self.found_element()));
        }
        self.lex = Lex::Content;
        Ok(None)
    }

    fn bang(&mut self, b: u8, matched: u8) -> Step {
        if matched == 0 {
            match b {
                b'-' => return Err(FrameError::RestrictedXml("comments are not allowed".into())),
                b'D' => {
                    return Err(FrameError::RestrictedXml(
                        "DOCTYPE / DTD is not allowed".into(),
                    ))
                }
                b'[' if self.open.is_empty() => {
                    return Err(FrameError::NotWellFormed(
                        "CDATA section at stream level".into(),
                    ))
                }
                b'[' => {}
                _ => {
                    return Err(FrameError::RestrictedXml(
                        "markup declarations are not allowed".into(),
                    ))
                }
            }
        }
        if CDATA_OPEN.get(usize::from(matched)) != Some(&b) {
            return Err(FrameError::NotWellFormed("malformed CDATA section".into()));
        }
        let matched = matched + 1;
        self.lex = if usize::from(matched) == CDATA_OPEN.len() {
            Lex::Cdata(0)
        } else {
            Lex::Bang(matched)
        };
        Ok(None)
    }

    fn pi_target(&mut self, b: u8, matched: u8) -> Step {
        let ok = match XML_TARGET.get(usize::from(matched)) {
            Some(&expected) => b == expected,
            None => is_space(b),
        };
        if !ok {
            return Err(FrameError::RestrictedXml(
                "processing instructions are not allowed".into(),
            ));
        }
        self.lex = if usize::from(matched) == XML_TARGET.len() {
            Lex::DeclBody { question: false }
        } else {
            Lex::PiTarget(matched + 1)
        };
        Ok(None)
    }

    fn decl_body(&mut self, b: u8, question: bool) -> Step {
        if b == b'>' && question {
            return Ok(Some(Found::Decl {
                start: self.start_or_pos(),
                end: self.pos + 1,
            }));
        }
        self.lex = Lex::DeclBody {
            question: b == b'?',
        };
        Ok(None)
    }

    fn found_element(&self) -> Found {
        Found::Element {
            start: self.start_or_pos(),
            end: self.pos + 1,
        }
    }

    fn start_or_pos(&self) -> usize {
        self.start.unwrap_or(self.pos)
    }
}

fn mismatch() -> FrameError {
    FrameError::NotWellFormed("end tag does not match".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prolog: bool) -> ScanCfg<'static> {
        ScanCfg {
            prolog,
            decl_allowed: prolog,
            limit: 1000,
            max_depth: 8,
            max_attributes: 4,
            header_qname: if prolog { None } else { Some(b"stream:stream") },
        }
    }

    fn scan_all(input: &[u8], cfg: &ScanCfg<'_>) -> Result<Option<Found>, FrameError> {
        Scanner::default().scan(input, cfg)
    }

    #[test]
    fn finds_element_end_with_tricky_content() {
        let input = b"  <m a='x>y' b=\"/>\"><![CDATA[</m>]]]></m><next/>";
        let end = input.len() - b"<next/>".len();
        assert_eq!(
            scan_all(input, &cfg(false)),
            Ok(Some(Found::Element { start: 2, end }))
        );
    }

    #[test]
    fn incomplete_then_complete_across_calls() {
        let input = b"<a><b/>text</a>";
        let mut s = Scanner::default();
        for n in 1..input.len() {
            assert_eq!(s.scan(&input[..n], &cfg(false)), Ok(None), "at {n}");
        }
        assert_eq!(
            s.scan(input, &cfg(false)),
            Ok(Some(Found::Element {
                start: 0,
                end: input.len()
            }))
        );
    }

    #[test]
    fn prolog_decl_and_open_header() {
        let input = b"<?xml version='1.0'?><stream:stream a='>'>";
        let mut s = Scanner::default();
        assert_eq!(
            s.scan(input, &cfg(true)),
            Ok(Some(Found::Decl { start: 0, end: 21 }))
        );
        let mut s = Scanner::default();
        let rest = &input[21..];
        let c = ScanCfg {
            decl_allowed: false,
            ..cfg(true)
        };
        assert_eq!(
            s.scan(rest, &c),
            Ok(Some(Found::Open {
                start: 0,
                end: rest.len()
            }))
        );
    }

    #[test]
    fn close_tag_reports_name_range() {
        let input = b" </stream:stream >";
        assert_eq!(
            scan_all(input, &cfg(false)),
            Ok(Some(Found::Close {
                start: 1,
                end: input.len(),
                name: (3, 16)
            }))
        );
    }

    #[test]
    fn restricted_constructs() {
        for input in [
            &b"<a><!-- x --></a>"[..],
            b"<!DOCTYPE a>",
            b"<a><?pi x?></a>",
            b"<a><!ENTITY x 'y'></a>",
        ] {
            assert!(
                matches!(
                    scan_all(input, &cfg(false)),
                    Err(FrameError::RestrictedXml(_))
                ),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        // A second declaration / a PI in the prolog.
        let c = ScanCfg {
            decl_allowed: false,
            ..cfg(true)
        };
        assert!(matches!(
            scan_all(b"<?xml version='1.0'?>", &c),
            Err(FrameError::RestrictedXml(_))
        ));
        assert!(matches!(
            scan_all(b"<?xml-stylesheet x?>", &cfg(true)),
            Err(FrameError::RestrictedXml(_))
        ));
    }

    #[test]
    fn not_well_formed_constructs() {
        for input in [
            &b"hello"[..],
            b"<a\x01/>",
            b"<a b='<'/>",
            b"<a <b/>",
            b"<1a/>",
            b"<![CDATA[x]]>",
            b"<a></ a>",
            b"<a></a x>",
            b"<a><![CDAT[x]]></a>",
            b"<a b='1'c='2'/>",
        ] {
            assert!(
                matches!(
                    scan_all(input, &cfg(false)),
                    Err(FrameError::NotWellFormed(_))
                ),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn depth_limit_counts_self_closing_children() {
        let c = ScanCfg {
            max_depth: 2,
            ..cfg(false)
        };
        assert!(scan_all(b"<a><b/></a>", &c).is_ok_and(|f| f.is_some()));
        assert_eq!(
            scan_all(b"<a><b><c/></b></a>", &c),
            Err(FrameError::TooDeep { limit: 2 })
        );
    }

    #[test]
    fn size_limit_is_inclusive_and_early() {
        let c = ScanCfg {
            limit: 8,
            ..cfg(false)
        };
        assert!(scan_all(b"<a>12</a>", &c).is_err());
        assert_eq!(
            scan_all(b"<a>1</a>", &c),
            Ok(Some(Found::Element { start: 0, end: 8 }))
        );
        // Incomplete but already over the limit.
        assert_eq!(
            scan_all(b"<a>123456", &c),
            Err(FrameError::TooLarge { limit: 8 })
        );
    }

    #[test]
    fn nested_header_rejected() {
        assert!(matches!(
            scan_all(b"<stream:stream xmlns='jabber:server'>", &cfg(false)),
            Err(FrameError::BadFormat(_))
        ));
    }

    #[test]
    fn mismatched_end_tag_found_when_its_name_ends() {
        for (input, ok) in [
            (&b"<a><b>x</b></a>"[..], true),
            (b"<p:a><p:b/><p:b></p:b></p:a>", true),
            (b"<a><b></a>", false),
            (b"<a><b></bb>", false),
            (b"<a><bb></b>", false),
            (b"<a></b", false),
            (b"<a></ab", false),
        ] {
            let r = scan_all(input, &cfg(false));
            if ok {
                assert!(matches!(r, Ok(Some(Found::Element { .. }))), "{r:?}");
            } else {
                assert_eq!(
                    r,
                    Err(FrameError::NotWellFormed("end tag does not match".into())),
                    "{}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        // Still incomplete while the name may go on to match.
        assert_eq!(scan_all(b"<ab></a", &cfg(false)), Ok(None));
        assert_eq!(scan_all(b"<ab></ab", &cfg(false)), Ok(None));
    }

    #[test]
    fn open_names_follow_a_shift() {
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"  <a><bc>x", &cfg(false)), Ok(None));
        assert_eq!(s.discardable(), 2);
        s.shift(2);
        assert_eq!(
            s.scan(b"<a><bc>x</bc></a>", &cfg(false)),
            Ok(Some(Found::Element { start: 0, end: 17 }))
        );
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"  <a><bc>x", &cfg(false)), Ok(None));
        s.shift(2);
        assert!(s.scan(b"<a><bc>x</a>", &cfg(false)).is_err());
    }

    #[test]
    fn attributes_are_counted_per_start_tag() {
        let c = cfg(false);
        assert!(matches!(
            scan_all(
                b"<a b='1' c=\"2\" d='3' e='4'><f b='1' c='2' d='3' e='4'/></a>",
                &c
            ),
            Ok(Some(_))
        ));
        assert_eq!(
            scan_all(b"<a b='1' c='2' d='3' e='4' f='5'/>", &c),
            Err(FrameError::TooManyAttributes { limit: 4 })
        );
        // In the prolog too (the stream header).
        assert_eq!(
            scan_all(b"<s b='1' c='2' d='3' e='4' f='5'>", &cfg(true)),
            Err(FrameError::TooManyAttributes { limit: 4 })
        );
    }

    #[test]
    fn lowered_limit_applies_without_new_bytes() {
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"<a>123", &cfg(false)), Ok(None));
        let c = ScanCfg {
            limit: 6,
            ..cfg(false)
        };
        assert_eq!(
            s.scan(b"<a>123", &c),
            Err(FrameError::TooLarge { limit: 6 })
        );
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"<a>12", &cfg(false)), Ok(None));
        assert_eq!(s.scan(b"<a>12", &c), Ok(None));
        assert_eq!(
            s.scan(b"<a>12</a>", &ScanCfg { limit: 9, ..c }),
            Ok(Some(Found::Element { start: 0, end: 9 }))
        );
    }

    #[test]
    fn shift_keeps_positions_consistent() {
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"   ", &cfg(false)), Ok(None));
        assert_eq!(s.discardable(), 3);
        s.shift(3);
        assert_eq!(
            s.scan(b"<a/>", &cfg(false)),
            Ok(Some(Found::Element { start: 0, end: 4 }))
        );
    }
}
