//! XML lexical helpers shared by the scanner, the header parser and the tree builder.

use crate::error::FrameError;
use crate::ns;

pub(crate) use crate::chars::truncate;
use crate::chars::{invalid_uri_char, is_ncname, is_xml_char};

/// Resolve the body of a reference (`name` in `&name;`): the five predefined entities and
/// numeric character references. Anything else is an entity XMPP forbids.
pub(crate) fn resolve_reference(name: &str) -> Result<char, FrameError> {
    match name {
        "" => Err(FrameError::NotWellFormed("empty reference".into())),
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        _ => match name.strip_prefix('#') {
            Some(num) => char_reference(num),
            None => Err(FrameError::RestrictedXml(format!(
                "entity reference &{}; is not allowed",
                truncate(name)
            ))),
        },
    }
}

fn char_reference(num: &str) -> Result<char, FrameError> {
    let (digits, radix) = match num.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    let bad =
        || FrameError::NotWellFormed(format!("invalid character reference &#{};", truncate(num)));
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let value = u64::from_str_radix(digits, radix).map_err(|_| bad())?;
    let c = u32::try_from(value)
        .ok()
        .and_then(char::from_u32)
        .ok_or_else(bad)?;
    if is_xml_char(c) {
        Ok(c)
    } else {
        Err(bad())
    }
}

/// Unescape and normalize an attribute value as written between its quotes (XML 1.0 3.3.3:
/// literal tab, CR, LF and CRLF each become one space; references are resolved).
pub(crate) fn unescape_attr_value(raw: &str) -> Result<String, FrameError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '<', '\t', '\r', '\n']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match tail.as_bytes().first() {
            Some(b'&') => {
                let end = tail.find(';').ok_or_else(|| {
                    FrameError::NotWellFormed("unterminated reference in attribute".into())
                })?;
                out.push(resolve_reference(&tail[1..end])?);
                rest = &tail[end + 1..];
            }
            Some(b'<') => return Err(FrameError::NotWellFormed("'<' in attribute value".into())),
            Some(b'\r') if tail.as_bytes().get(1) == Some(&b'\n') => {
                out.push(' ');
                rest = &tail[2..];
            }
            _ => {
                out.push(' ');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Split a qualified name into (prefix, local), checking namespace well-formedness: both
/// parts are NCNames (the scanner only checks names byte by byte, and not attribute names).
pub(crate) fn split_qname(qname: &str) -> Result<(Option<&str>, &str), FrameError> {
    let bad =
        || FrameError::NotWellFormed(format!("malformed qualified name {:?}", truncate(qname)));
    match qname.split_once(':') {
        None if is_ncname(qname) => Ok((None, qname)),
        Some((p, l)) if is_ncname(p) && is_ncname(l) => Ok((Some(p), l)),
        _ => Err(bad()),
    }
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
///
/// A URI holding a character that no IRI reference may contain is refused as not
/// namespace-well-formed (Namespaces in XML requires a URI reference; RFC 6120 4.9.3.13 counts
/// that under `<not-well-formed/>`): besides not being a URI, a `}` in it would end the URI
/// early in the Clark name of an attribute and let the rest pass for the attribute's name.
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
        _ if !prefix.is_empty() && !is_ncname(prefix) => bad("malformed prefix"),
        _ if prefix.is_empty() && uri.is_empty() => Ok(true),
        _ if uri.is_empty() => bad("a prefix cannot be undeclared"),
        _ => match invalid_uri_char(uri) {
            Some(c) => bad(&format!("the URI contains {c:?}, which no IRI may contain")),
            None => Ok(true),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_and_numeric_references() {
        assert_eq!(resolve_reference("lt").ok(), Some('<'));
        assert_eq!(resolve_reference("quot").ok(), Some('"'));
        assert_eq!(resolve_reference("#65").ok(), Some('A'));
        assert_eq!(resolve_reference("#x1F600").ok(), Some('😀'));
    }

    #[test]
    fn other_entities_are_restricted() {
        assert!(matches!(
            resolve_reference("lol"),
            Err(FrameError::RestrictedXml(_))
        ));
        assert!(matches!(
            resolve_reference("nbsp"),
            Err(FrameError::RestrictedXml(_))
        ));
    }

    #[test]
    fn invalid_char_references_are_not_well_formed() {
        for r in [
            "#0",
            "#x0",
            "#xD800",
            "#x110000",
            "#",
            "#x",
            "#12a",
            "#99999999999999999",
            "#X41",
        ] {
            assert!(
                matches!(resolve_reference(r), Err(FrameError::NotWellFormed(_))),
                "{r}"
            );
        }
    }

    #[test]
    fn attribute_value_normalization() {
        assert_eq!(
            unescape_attr_value("a\r\nb\tc\nd").ok().as_deref(),
            Some("a b c d")
        );
        assert_eq!(
            unescape_attr_value("&lt;&#10;&amp;").ok().as_deref(),
            Some("<\n&")
        );
        assert!(matches!(
            unescape_attr_value("a<b"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert!(matches!(
            unescape_attr_value("a&b"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert!(matches!(
            unescape_attr_value("&x;"),
            Err(FrameError::RestrictedXml(_))
        ));
    }

    #[test]
    fn qualified_names() {
        assert_eq!(split_qname("a").ok(), Some((None, "a")));
        assert_eq!(split_qname("p:a").ok(), Some((Some("p"), "a")));
        for bad in ["", ":a", "p:", "p:a:b", "x]lns", "a b", "p:1", "\u{D7}"] {
            assert!(split_qname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(40);
        let t = truncate(&s);
        assert!(t.len() <= 64);
        assert!(t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn ncnames() {
        for ok in ["a", "_x", "a-b.c9", "\u{e9}t\u{e9}", "x\u{B7}y"] {
            assert!(is_ncname(ok), "{ok}");
        }
        for bad in ["", "1a", "-a", "a:b", "a b", "a}b", "a='x'", "a>", "\u{D7}"] {
            assert!(!is_ncname(bad), "{bad}");
        }
    }

    #[test]
    fn namespace_uri_characters() {
        for ok in [
            "jabber:server",
            "http://jabber.org/protocol/muc#user",
            "urn:x?a=b&c='d'",
            "http://\u{e9}x.example/\u{1f600}",
            "",
        ] {
            assert_eq!(invalid_uri_char(ok), None, "{ok}");
        }
        for (bad, c) in [
            ("urn:a}b", '}'),
            ("urn:a b", ' '),
            ("urn:<x>", '<'),
            ("urn:\"", '"'),
            ("urn:{", '{'),
            ("a|b", '|'),
            ("a\\b", '\\'),
            ("a^b", '^'),
            ("a`b", '`'),
            ("a\tb", '\t'),
            ("a\u{7f}", '\u{7f}'),
            ("a\u{85}", '\u{85}'),
        ] {
            assert_eq!(invalid_uri_char(bad), Some(c), "{bad:?}");
        }
    }
}
