//! Address validation: JIDs (RFC 7622) and configured domain names.

/// Why an address was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Not a valid JID.
    #[error("invalid JID {0:?}")]
    Jid(String),
    /// Not a valid domain name; the second field names the rule broken.
    #[error("invalid domain {0:?}: {1}")]
    Domain(String, &'static str),
}

/// Domain part of a JID string (validated with the `jid` crate, RFC 7622), lowercased.
pub fn jid_domain(jid: &str) -> Result<String, AddrError> {
    let parsed = jid::Jid::new(jid).map_err(|_| AddrError::Jid(jid.to_owned()))?;
    Ok(parsed.domain().as_str().to_lowercase())
}

/// Validate a domain as administrators configure it and return it lowercased: letters,
/// digits, hyphen and dot only; labels of 1 to 63 characters that neither start nor end
/// with a hyphen; a last label that does not start with a digit; at most 255 characters.
pub fn normalize_domain(s: &str) -> Result<String, AddrError> {
    let fail = |rule: &'static str| Err(AddrError::Domain(s.to_owned(), rule));
    if s.is_empty() {
        return fail("empty");
    }
    if s.len() > 255 {
        return fail("longer than 255 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return fail("only letters, digits, hyphen and dot are allowed");
    }
    for label in s.split('.') {
        if let Err(rule) = check_label(label) {
            return fail(rule);
        }
    }
    if s.rsplit('.')
        .next()
        .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_digit()))
    {
        return fail("last label starts with a digit");
    }
    Ok(s.to_ascii_lowercase())
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > 63 {
        return Err("label longer than 63 characters");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("label starts or ends with a hyphen");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Option<&'static str> {
        match normalize_domain(s) {
            Err(AddrError::Domain(d, rule)) => {
                assert_eq!(d, s);
                Some(rule)
            }
            Err(AddrError::Jid(_)) => panic!("wrong error kind"),
            Ok(_) => None,
        }
    }

    #[test]
    fn valid_domains_are_lowercased() {
        assert_eq!(
            normalize_domain("XMPP.Example.COM").ok().as_deref(),
            Some("xmpp.example.com")
        );
        assert_eq!(normalize_domain("a-b.c1").ok().as_deref(), Some("a-b.c1"));
        assert_eq!(
            normalize_domain("localhost").ok().as_deref(),
            Some("localhost")
        );
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(rule(""), Some("empty"));
        assert_eq!(rule("a..b"), Some("empty label"));
        assert_eq!(rule("example.com."), Some("empty label"));
        assert_eq!(rule("-a.com"), Some("label starts or ends with a hyphen"));
        assert_eq!(rule("a-.com"), Some("label starts or ends with a hyphen"));
        assert_eq!(
            rule(&format!("{}.com", "a".repeat(64))),
            Some("label longer than 63 characters")
        );
        assert_eq!(
            rule("a_b.com"),
            Some("only letters, digits, hyphen and dot are allowed")
        );
        assert_eq!(
            rule("exämple.com"),
            Some("only letters, digits, hyphen and dot are allowed")
        );
        assert_eq!(rule("10.0.0.1"), Some("last label starts with a digit"));
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(rule(&long), Some("longer than 255 characters"));
        assert_eq!(rule(&format!("{}.com", "a".repeat(63))), None);
    }

    #[test]
    fn jid_domains() {
        assert_eq!(
            jid_domain("user@Example.ORG/res").ok().as_deref(),
            Some("example.org")
        );
        assert_eq!(
            jid_domain("example.org").ok().as_deref(),
            Some("example.org")
        );
        assert!(matches!(jid_domain("@example.org"), Err(AddrError::Jid(_))));
        assert!(matches!(jid_domain(""), Err(AddrError::Jid(_))));
        assert!(matches!(jid_domain("a@b@c"), Err(AddrError::Jid(_))));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = normalize_domain("-x").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid domain \"-x\": label starts or ends with a hyphen")
        );
    }
}
