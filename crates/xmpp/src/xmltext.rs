//! XML lexical helpers shared by the scanner, the header parser and the tree builder.

use crate::framer::FrameError;

/// Bytes allowed as the first byte of an XML name (non-ASCII bytes are accepted wholesale).
pub(crate) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

/// Bytes allowed inside an XML name.
pub(crate) fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// XML whitespace (S production).
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// C0 control characters that may not appear in an XML 1.0 document at all.
pub(crate) fn is_forbidden_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

/// The Char production of XML 1.0.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 (fifth edition) NameStartChar other than `:`: the first character of an NCName.
fn is_ncname_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (fifth edition) NameChar other than `:`.
fn is_ncname_char(c: char) -> bool {
    is_ncname_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether `s` is an NCName (Namespaces in XML 1.0): a name without a colon.
pub(crate) fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_ncname_start_char) && chars.all(is_ncname_char)
}

/// The first character of a namespace URI that no IRI reference (RFC 3987) may contain:
/// control characters, space, and `<>"{}|\^` and backtick. Such a URI is not a URI at all, and
/// `}` would end the URI early in a Clark name (`{uri}local`).
pub(crate) fn invalid_uri_char(uri: &str) -> Option<char> {
    uri.chars().find(|&c| {
        c.is_control()
            || matches!(
                c,
                ' ' | '<' | '>' | '"' | '{' | '}' | '|' | '\\' | '^' | '`'
            )
    })
}

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

/// At most 64 bytes of untrusted text for error messages.
pub(crate) fn truncate(s: &str) -> &str {
    if s.len() <= 64 {
        return s;
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
