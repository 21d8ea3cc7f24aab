//! Server dialback (XEP-0220) keys and elements; key generation per XEP-0185.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::element::Element;
use crate::ns;

/// The XEP-0185 dialback key:
/// `hex(HMAC-SHA256(key = hex(SHA256(secret)), receiving + " " + originating + " " + stream_id))`.
///
/// XEP-0185 requires the SHA-256 output to be used in hexadecimal representation, so the HMAC
/// key is the ASCII bytes of the lowercase hex digest of the secret. The result is lowercase hex.
pub fn dialback_key(secret: &str, receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed_secret = hex::encode(Sha256::digest(secret.as_bytes()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(hashed_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compare two keys in constant time (for equal lengths; the length itself is not secret).
pub fn keys_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `key` (surrounding whitespace ignored) is the key we would generate for
/// these inputs.
pub fn verify_key(
    secret: &str,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> bool {
    keys_equal(
        &dialback_key(secret, receiving, originating, stream_id),
        key.trim(),
    )
}

fn type_attr(valid: bool) -> &'static str {
    if valid {
        "valid"
    } else {
        "invalid"
    }
}

/// `<db:result from to>key</db:result>`: the originating server asks to be authorized.
pub fn result_request(from: &str, to: &str, key: &str) -> Element {
    Element::new("result", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_text(key)
}

/// `<db:result from to type='valid|invalid'/>`: the receiving server's verdict.
pub fn result_response(from: &str, to: &str, valid: bool) -> Element {
    Element::new("result", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", type_attr(valid))
}

/// `<db:verify from to id>key</db:verify>`: the receiving server asks the authoritative one.
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Element {
    Element::new("verify", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_text(key)
}

/// `<db:verify from to id type='valid|invalid'/>`: the authoritative server's answer.
pub fn verify_response(from: &str, to: &str, id: &str, valid: bool) -> Element {
    Element::new("verify", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_attr("type", type_attr(valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of XEP-0185 section 3.
    #[test]
    fn xep0185_test_vector() {
        assert_eq!(
            hex::encode(Sha256::digest(b"s3cr3tf0rd14lb4ck")),
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        assert_eq!(
            dialback_key(
                "s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F"
            ),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn key_depends_on_every_input() {
        let base = dialback_key("s", "r", "o", "id");
        assert_ne!(base, dialback_key("s2", "r", "o", "id"));
        assert_ne!(base, dialback_key("s", "r2", "o", "id"));
        assert_ne!(base, dialback_key("s", "r", "o2", "id"));
        assert_ne!(base, dialback_key("s", "r", "o", "id2"));
        // The space separators prevent ambiguous concatenation.
        assert_ne!(
            dialback_key("s", "ab", "c", "d"),
            dialback_key("s", "a", "bc", "d")
        );
        assert_eq!(base.len(), 64);
        assert!(base
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn key_comparison() {
        assert!(keys_equal("abc", "abc"));
        assert!(!keys_equal("abc", "abd"));
        assert!(!keys_equal("abc", "abcd"));
        assert!(!keys_equal("", "a"));
        let key = dialback_key("s", "r", "o", "id");
        assert!(verify_key("s", "r", "o", "id", &format!("\n  {key}\n")));
        assert!(!verify_key("s", "r", "o", "other", &key));
    }

    #[test]
    fn builders_serialize_with_db_prefix() {
        assert_eq!(
            result_request("a.example", "b.example", "k").to_xml(ns::SERVER),
            "<db:result from='a.example' to='b.example'>k</db:result>"
        );
        assert_eq!(
            result_response("b.example", "a.example", true).to_xml(ns::SERVER),
            "<db:result from='b.example' to='a.example' type='valid'/>"
        );
        assert_eq!(
            verify_request("b.example", "a.example", "s1", "k").to_xml(ns::SERVER),
            "<db:verify from='b.example' to='a.example' id='s1'>k</db:verify>"
        );
        assert_eq!(
            verify_response("a.example", "b.example", "s1", false).to_xml(ns::SERVER),
            "<db:verify from='a.example' to='b.example' id='s1' type='invalid'/>"
        );
    }
}
