//! Email address for federation (as Cisco IM&P offers it): users federate with their email
//! address instead of their internal JID, e.g. `alice@example.com` is seen by every federated
//! server as `alice.smith@example.com`.
//!
//! With `[email_translation] enabled = true` every federated stanza is translated in core:
//!
//! * **Outbound** (an IM&P node -> the tunnel, [`Translation::outbound`]): a stanza whose `from`
//!   bare JID has an email address gets `from` = that address (the resource is kept), and the
//!   tunnel's `from_domain` becomes the email's domain, which must be a local domain announced to
//!   the edge. Users without an email address federate with their JID unchanged.
//! * **Inbound** (the tunnel -> an IM&P node, [`Translation::inbound`]): a stanza whose `to` bare
//!   JID is a known email address gets `to` = the user's JID (resource kept) and is routed to a
//!   node of the JID's domain. A stanza to the raw JID of a user who has an email address is
//!   dropped and logged (IM&P's rule: such a user is only reachable by the email address); a
//!   message (other than an error or a headline) or a get/set iq is answered with
//!   `<service-unavailable/>` as RFC 6120 10.5.3.1 asks for an unknown user; presence is
//!   silently ignored.
//! * **Payloads**: users' addresses carried inside stanzas follow the same rules, in both
//!   directions: outbound, a user's JID becomes their email address; inbound, an email address
//!   becomes the JID (resources kept). Where (MUC items, actors, invitations and declines,
//!   XEP-0033 addresses, XEP-0144 roster exchange, `<delay from>`, `<forwarded>` stanzas) is
//!   listed in `payload.rs`; anything else in a payload is not translated. An inbound payload
//!   that names the raw JID of a user who has an email address is left as it is: the partner
//!   wrote it, the stanza is not addressed to it, and guessing what was meant would hide the
//!   partner's mistake (only the top-level `to` decides whether a stanza is refused).
//! * **Bounces** (a translated stanza core could not deliver to a node,
//!   [`Translation::bounced`]): the original address is restored first, so the error comes
//!   back from the email address the sender used. The error carries none of the payload.
//!
//! Stanzas are bytes on the hot path: nothing is parsed when translation is off, and when it is
//! on a stanza is re-serialized only when an address changes (otherwise the original bytes go
//! on).
//!
//! The addresses come from a [`Directory`]: a file ([`FileDirectory`], one `jid,email` per
//! line, `directory.rs`) or an LDAP directory ([`LdapDirectory`], `ldap.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use causeway_s2s::{InboundStanza, OutboundStanza, S2s, LOG_MODULE};
use causeway_tunnel::TunnelStanza;
use causeway_xmpp::{ns, Element, StanzaCondition};
use serde::Deserialize;
use tracing::{info, warn};

use crate::CoreHost;

mod directory;
mod ldap;
mod payload;

pub use directory::{Clash, Directory, FileDirectory, User, Users};
pub use ldap::{Entry, JidSource, LdapDirectory, LdapSettings, Snapshot};

/// `[email_translation]` in core's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSection {
    /// Translate between JIDs and email addresses for all federated traffic (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Where the addresses come from: `file` (default) or `ldap`.
    #[serde(default)]
    pub source: Option<Source>,
    /// The directory file: one `jid,email` per line (relative to the config file).
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// LDAP: `ldap://host[:port]` or `ldaps://host[:port]`.
    #[serde(default)]
    pub ldap_url: Option<String>,
    /// LDAP: the DN to bind as (absent: anonymous).
    #[serde(default)]
    pub ldap_bind_dn: Option<String>,
    /// LDAP: its password.
    #[serde(default)]
    pub ldap_bind_password: Option<String>,
    /// LDAP: or a file holding it (first line; relative to the config file).
    #[serde(default)]
    pub ldap_bind_password_file: Option<PathBuf>,
    /// LDAP: the subtree searched for users.
    #[serde(default)]
    pub ldap_base_dn: Option<String>,
    /// LDAP: which entries are users (default `(objectClass=inetOrgPerson)`).
    #[serde(default)]
    pub ldap_filter: Option<String>,
    /// LDAP: an attribute holding each user's whole JID (instead of the two below).
    #[serde(default)]
    pub ldap_jid_attribute: Option<String>,
    /// LDAP: the attribute holding the user ID, the local part of the JID (default `uid`).
    #[serde(default)]
    pub ldap_user_attribute: Option<String>,
    /// LDAP: the domain of `<user ID>@<domain>` JIDs.
    #[serde(default)]
    pub ldap_jid_domain: Option<String>,
    /// LDAP: the attribute holding the email address (default `mail`).
    #[serde(default)]
    pub ldap_email_attribute: Option<String>,
    /// LDAP: load the directory again this often (default 300; 0: at start only).
    #[serde(default)]
    pub ldap_refresh_seconds: Option<u64>,
    /// LDAP: CA certificates (PEM) ldaps trusts instead of the system's store (relative to the
    /// config file).
    #[serde(default)]
    pub ldap_ca: Option<PathBuf>,
}

/// `email_translation.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `directory`, a file.
    File,
    /// An LDAP directory (`ldap_*`).
    Ldap,
}

impl EmailSection {
    /// Take relative paths from the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.directory,
            &mut self.ldap_bind_password_file,
            &mut self.ldap_ca,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
    }

    /// The first `ldap_*` setting that is set, for "not used with the file" errors.
    fn first_ldap_setting(&self) -> Option<&'static str> {
        [
            ("ldap_url", self.ldap_url.is_some()),
            ("ldap_bind_dn", self.ldap_bind_dn.is_some()),
            ("ldap_bind_password", self.ldap_bind_password.is_some()),
            (
                "ldap_bind_password_file",
                self.ldap_bind_password_file.is_some(),
            ),
            ("ldap_base_dn", self.ldap_base_dn.is_some()),
            ("ldap_filter", self.ldap_filter.is_some()),
            ("ldap_jid_attribute", self.ldap_jid_attribute.is_some()),
            ("ldap_user_attribute", self.ldap_user_attribute.is_some()),
            ("ldap_jid_domain", self.ldap_jid_domain.is_some()),
            ("ldap_email_attribute", self.ldap_email_attribute.is_some()),
            ("ldap_refresh_seconds", self.ldap_refresh_seconds.is_some()),
            ("ldap_ca", self.ldap_ca.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }
}

/// `[email_translation]` validated: off, a directory file read and checked, or LDAP settings
/// checked (the directory is loaded by [`EmailConfig::start`]).
#[derive(Debug, Clone)]
pub enum EmailConfig {
    /// No translation.
    Off,
    /// `source = "file"`.
    File(Arc<FileDirectory>),
    /// `source = "ldap"`.
    Ldap(Box<LdapSettings>),
}

impl EmailConfig {
    /// From the config section, checked against the local domains; a directory file is read
    /// now, an LDAP server is not contacted. Errors name the setting (and the file and line).
    pub fn from_section(section: &EmailSection, local_domains: &[String]) -> anyhow::Result<Self> {
        if !section.enabled {
            return Ok(Self::Off);
        }
        match section.source {
            Some(Source::Ldap) => Ok(Self::Ldap(Box::new(LdapSettings::from_section(
                section,
                local_domains,
            )?))),
            Some(Source::File) | None => {
                if let Some(key) = section.first_ldap_setting() {
                    bail!("email_translation.{key}: only used with source = \"ldap\"");
                }
                let Some(path) = &section.directory else {
                    bail!(
                        "email_translation.directory: required when email_translation.enabled \
                         (or source = \"ldap\")"
                    );
                };
                let dir = FileDirectory::load(path, local_domains)
                    .context("email_translation.directory")?;
                Ok(Self::File(Arc::new(dir)))
            }
        }
    }

    /// The translation for the running core: an LDAP directory is loaded now (an error names
    /// the setting at fault) and refreshed in the background from then on. Logs what is in
    /// force.
    pub async fn start(&self) -> anyhow::Result<Translation> {
        let directory: Arc<dyn Directory> = match self {
            Self::Off => return Ok(Translation::off()),
            Self::File(dir) => dir.clone(),
            Self::Ldap(settings) => {
                let dir = LdapDirectory::load((**settings).clone()).await?;
                dir.spawn_refresh();
                dir
            }
        };
        info!(module = LOG_MODULE, directory = %directory.describe(), "email address for federation: on");
        Ok(Translation::with_directory(directory))
    }
}

/// The translation in force: off, or on with a [`Directory`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Translation {
    directory: Option<Arc<dyn Directory>>,
}

impl std::fmt::Debug for Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.directory {
            None => f.write_str("Translation(off)"),
            Some(d) => write!(f, "Translation({})", d.describe()),
        }
    }
}

/// What to do with a stanza from the tunnel.
#[derive(Debug)]
pub enum Inbound {
    /// Deliver it (translated, or untouched).
    Deliver(TunnelStanza),
    /// It was addressed to the raw JID `to` of a user who federates with an email address:
    /// drop it, and send `reply` (a `<service-unavailable/>` stanza error) back over the tunnel
    /// when RFC 6120 asks for one.
    Refused {
        /// The remote domain that sent it.
        from: String,
        /// The bare JID it was addressed to.
        to: String,
        /// The error for the sender, if one is owed.
        reply: Option<TunnelStanza>,
    },
}

/// Which way addresses are translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// A user's JID becomes their email address (stanzas leaving, bounces).
    ToEmail,
    /// An email address becomes the user's JID (stanzas arriving).
    ToJid,
}

impl Way {
    /// The user whose address on this way's source side is `bare`, when translating changes
    /// it (someone's email address may be their own JID).
    fn user(self, dir: &dyn Directory, bare: &str) -> Option<Arc<User>> {
        let user = match self {
            Way::ToEmail => dir.by_jid(bare),
            Way::ToJid => dir.by_email(bare),
        }?;
        (user.jid != user.email).then_some(user)
    }

    /// `user`'s address and its domain on this way's target side.
    fn target(self, user: &User) -> (&str, &str) {
        match self {
            Way::ToEmail => (&user.email, &user.email_domain),
            Way::ToJid => (&user.jid, &user.jid_domain),
        }
    }

    /// An address attribute's value translated (resource kept), with the user's target domain;
    /// None when it stays as it is.
    fn address(self, dir: &dyn Directory, value: &str) -> Option<(String, String)> {
        let addr = Address::parse(value)?;
        let user = self.user(dir, &addr.bare)?;
        let (bare, domain) = self.target(&user);
        Some((addr.with_bare(bare), domain.to_owned()))
    }

    /// The payload of `el` translated this way ([`payload::translate`]); whether it changed.
    fn payload(self, dir: &dyn Directory, el: &mut Element) -> bool {
        payload::translate(el, &|value| self.address(dir, value).map(|(v, _)| v))
    }

    /// The top-level attribute `attr` of `el` translated this way; the user's target domain
    /// when it changed.
    fn attribute(self, dir: &dyn Directory, el: &mut Element, attr: &str) -> Option<String> {
        let (value, domain) = self.address(dir, el.attr(attr)?)?;
        el.set_attr(attr, &value);
        Some(domain)
    }
}

impl Translation {
    /// No translation.
    pub fn off() -> Self {
        Self::default()
    }

    /// Translate with this directory.
    pub fn with_directory(directory: Arc<dyn Directory>) -> Self {
        Self {
            directory: Some(directory),
        }
    }

    /// Whether stanzas are translated.
    pub fn is_on(&self) -> bool {
        self.directory.is_some()
    }

    /// Outbound: `from` = the sender's email address (resource kept) and `from_domain` = its
    /// domain, when the sender has one; users' JIDs in the payload become their email
    /// addresses. A stanza with nothing to translate goes on as it was (same bytes).
    pub fn outbound(&self, stanza: InboundStanza) -> InboundStanza {
        let Some(dir) = self.directory.as_deref() else {
            return stanza;
        };
        let Some(mut el) = causeway_s2s::parse_stanza(&stanza.payload) else {
            return stanza;
        };
        let from_domain = Way::ToEmail.attribute(dir, &mut el, "from");
        let payload = Way::ToEmail.payload(dir, &mut el);
        if from_domain.is_none() && !payload {
            return stanza;
        }
        InboundStanza {
            payload: serialize(&el),
            from_domain: from_domain.unwrap_or(stanza.from_domain),
            to_domain: stanza.to_domain,
        }
    }

    /// Inbound: a stanza to a known email address goes to the user's JID (resource kept) on a
    /// node of the JID's domain; one to the raw JID of a user with an email address is refused;
    /// email addresses in the payload of a delivered stanza become JIDs. A stanza with nothing
    /// to translate goes on as it was (same bytes).
    pub fn inbound(&self, st: TunnelStanza) -> Inbound {
        let Some(dir) = self.directory.as_deref() else {
            return Inbound::Deliver(st);
        };
        let Some(mut el) = causeway_s2s::parse_stanza(&st.payload) else {
            return Inbound::Deliver(st);
        };
        let to = el.attr("to").and_then(Address::parse);
        if let Some(to) = &to {
            if dir.by_email(&to.bare).is_none() && dir.by_jid(&to.bare).is_some() {
                return refuse(st, &el, to.bare.clone());
            }
        }
        let to_domain = Way::ToJid.attribute(dir, &mut el, "to");
        let payload = Way::ToJid.payload(dir, &mut el);
        if to_domain.is_none() && !payload {
            return Inbound::Deliver(st);
        }
        Inbound::Deliver(TunnelStanza {
            payload: serialize(&el),
            from_domain: st.from_domain,
            to_domain: to_domain.unwrap_or(st.to_domain),
        })
    }

    /// A stanza core could not deliver to a node, before its error reply is made: undo the
    /// inbound translation of `to` (the email address again, `to_domain` its domain), so the
    /// sender hears back from the address it wrote to. The reply carries no payload, so only
    /// `to` matters.
    pub fn bounced(&self, stanza: OutboundStanza) -> OutboundStanza {
        let Some(dir) = self.directory.as_deref() else {
            return stanza;
        };
        let Some(mut el) = causeway_s2s::parse_stanza(&stanza.payload) else {
            return stanza;
        };
        match Way::ToEmail.attribute(dir, &mut el, "to") {
            Some(to_domain) => OutboundStanza {
                payload: serialize(&el),
                from_domain: stanza.from_domain,
                to_domain,
            },
            None => stanza,
        }
    }
}

/// A stanza to the raw JID `to` of a user who federates with an email address: refused, with
/// the error owed to the sender.
fn refuse(st: TunnelStanza, el: &Element, to: String) -> Inbound {
    let reply = error_owed(el)
        .then(|| {
            causeway_xmpp::error::stanza_error_reply(el, StanzaCondition::ServiceUnavailable, None)
        })
        .flatten()
        .map(|r| TunnelStanza {
            from_domain: st.to_domain.clone(),
            to_domain: st.from_domain.clone(),
            payload: serialize(&r),
        });
    Inbound::Refused {
        from: st.from_domain,
        to,
        reply,
    }
}

/// A translated stanza's bytes, in an s2s stream's namespace.
fn serialize(el: &Element) -> Bytes {
    Bytes::from(el.to_xml(ns::SERVER))
}

/// Is an error reply owed to the sender of a stanza for an address that does not exist here?
/// RFC 6120 10.5.3.1: an iq MUST get one (a get or set: results and errors are never answered);
/// a message may (we answer all but errors and headlines, RFC 6121 8.5.2); presence is ignored.
fn error_owed(el: &Element) -> bool {
    match el.name.as_str() {
        "iq" => matches!(el.attr("type"), Some("get" | "set")),
        "message" => !matches!(el.attr("type"), Some("error" | "headline")),
        _ => false,
    }
}

/// A user's address as written in an attribute: its bare part and resource.
struct Address {
    /// Normalized `local@domain` (the domain by the one domain normaliser, like the
    /// directory's keys, so a user is found however the domain is spelt).
    bare: String,
    /// The resource, as normalized by JID preparation.
    resource: Option<String>,
}

impl Address {
    /// None when `value` does not parse or has no local part (a server or service: never
    /// translated).
    fn parse(value: &str) -> Option<Self> {
        let parts = causeway_xmpp::addr::parse_jid(value).ok()?;
        Some(Self {
            bare: format!("{}@{}", parts.local?, parts.domain),
            resource: parts.resource,
        })
    }

    /// The same address with another bare part (the resource kept).
    fn with_bare(&self, bare: &str) -> String {
        match &self.resource {
            Some(r) => format!("{bare}/{r}"),
            None => bare.to_owned(),
        }
    }
}

/// `pump_tunnel`'s hook: the stanza to send to a node, or None when it was refused (logged,
/// counted, and answered with an error over the tunnel where one is owed).
pub(crate) fn inbound(host: &CoreHost, s2s: &S2s, st: TunnelStanza) -> Option<TunnelStanza> {
    match host.email.inbound(st) {
        Inbound::Deliver(st) => Some(st),
        Inbound::Refused { from, to, reply } => {
            warn!(module = LOG_MODULE, from = %from, to = %to, answered = reply.is_some(), "stanza to the JID of a user who federates with an email address: dropped");
            s2s.counters
                .refuse(causeway_s2s::RefusalReason::EmailTranslation);
            if let Some(r) = reply {
                // Detached: this runs in the task that drains the tunnel.
                host.to_edge_detached(r.from_domain, r.to_domain, r.payload);
            }
            None
        }
    }
}

/// What the tests of this module and its children share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use causeway_s2s::InboundStanza;
    use causeway_tunnel::TunnelStanza;

    use super::{FileDirectory, Translation};

    /// The local domains of the tests.
    pub fn locals() -> Vec<String> {
        vec!["example.com".into(), "example.org".into()]
    }

    /// alice federates as alice.smith@example.com, erin as erin.jones@example.org.
    pub const USERS: &str = "alice@example.com,alice.smith@example.com\n\
                             erin@example.com, Erin.Jones@Example.ORG\n";

    /// A translation with a file directory of this text.
    pub fn on(text: &str) -> Translation {
        let dir = FileDirectory::parse(text, Path::new("users.csv"), &locals()).expect("directory");
        Translation::with_directory(Arc::new(dir))
    }

    /// A stanza from a node for partner.test.
    pub fn out(from_domain: &str, xml: &str) -> InboundStanza {
        InboundStanza {
            from_domain: from_domain.into(),
            to_domain: "partner.test".into(),
            payload: Bytes::from(xml.to_owned()),
        }
    }

    /// A stanza from partner.test over the tunnel.
    pub fn tunnel(to_domain: &str, xml: &str) -> TunnelStanza {
        TunnelStanza {
            from_domain: "partner.test".into(),
            to_domain: to_domain.into(),
            payload: Bytes::from(xml.to_owned()),
        }
    }

    /// A payload as text.
    pub fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).expect("utf-8")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{locals, on, out, text, tunnel, USERS};
    use super::*;

    #[test]
    fn addresses_are_keyed_by_the_normalised_domain() {
        for value in [
            "Ana@BÜCHER.test/phone",
            "ana@xn--bcher-kva.test./phone",
            "ana@bücher\u{3002}test/phone",
        ] {
            let a = Address::parse(value).expect("an address");
            assert_eq!(a.bare, "ana@xn--bcher-kva.test", "{value:?}");
            assert_eq!(a.resource.as_deref(), Some("phone"));
        }
        assert!(Address::parse("bücher.test").is_none(), "no local part");
        assert!(Address::parse("ana@b_cher.test").is_none());
    }

    fn enabled() -> EmailSection {
        EmailSection {
            enabled: true,
            ..EmailSection::default()
        }
    }

    fn config_err(section: &EmailSection) -> String {
        match EmailConfig::from_section(section, &locals()) {
            Ok(c) => panic!("accepted {section:?}: {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn config_section_reads_the_file() {
        let off = EmailConfig::from_section(&EmailSection::default(), &locals()).expect("off");
        assert!(matches!(off, EmailConfig::Off));
        let e = config_err(&enabled());
        assert!(
            e.starts_with("email_translation.directory: required"),
            "{e}"
        );
        let files = tempfile_dir();
        let path = files.join("users.csv");
        std::fs::write(&path, USERS).expect("write");
        let section = EmailSection {
            directory: Some(path.clone()),
            ..enabled()
        };
        let config = EmailConfig::from_section(&section, &locals()).expect("valid file");
        let EmailConfig::File(dir) = &config else {
            panic!("not a file: {config:?}");
        };
        assert_eq!(dir.len(), 2);
        // `source = "file"` says the same as leaving it out.
        let explicit = EmailSection {
            source: Some(Source::File),
            ..section
        };
        assert!(matches!(
            EmailConfig::from_section(&explicit, &locals()),
            Ok(EmailConfig::File(_))
        ));
        std::fs::write(&path, "alice@example.com,alice@partner.test\n").expect("write");
        let e = config_err(&explicit);
        assert!(e.starts_with("email_translation.directory: "), "{e}");
        assert!(
            e.contains(": line 1: email address domain partner.test"),
            "{e}"
        );
        // An LDAP setting with the file is a mistake, named.
        let e = config_err(&EmailSection {
            ldap_base_dn: Some("dc=example,dc=com".into()),
            ..explicit
        });
        assert_eq!(
            e,
            "email_translation.ldap_base_dn: only used with source = \"ldap\""
        );
        let _ = std::fs::remove_dir_all(&files);
    }

    /// A fresh directory under the system's temporary directory.
    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "causeway-email-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_file() {
        let mut section = EmailSection {
            directory: Some("users.csv".into()),
            ldap_bind_password_file: Some("/etc/secret".into()),
            ldap_ca: Some("pki/ca.pem".into()),
            ..enabled()
        };
        section.resolve_paths(Path::new("/etc/causeway"));
        assert_eq!(section.directory, Some("/etc/causeway/users.csv".into()));
        assert_eq!(section.ldap_bind_password_file, Some("/etc/secret".into()));
        assert_eq!(section.ldap_ca, Some("/etc/causeway/pki/ca.pem".into()));
    }

    #[test]
    fn outbound_from_becomes_the_email_address_keeping_the_resource() {
        let t = on(USERS);
        let st = t.outbound(out(
            "example.com",
            "<message from='alice@example.com/laptop' to='bob@partner.test' type='chat'><body>hi</body></message>",
        ));
        assert_eq!(
            text(&st.payload),
            "<message from='alice.smith@example.com/laptop' to='bob@partner.test' type='chat'><body>hi</body></message>"
        );
        assert_eq!(st.from_domain, "example.com");
        assert_eq!(st.to_domain, "partner.test");
        // Another local domain as the email's; no resource; case-folded lookup.
        let st = t.outbound(out(
            "example.com",
            "<presence from='ERIN@example.com' to='bob@partner.test'/>",
        ));
        assert_eq!(
            text(&st.payload),
            "<presence from='erin.jones@example.org' to='bob@partner.test'/>"
        );
        assert_eq!(st.from_domain, "example.org");
    }

    #[test]
    fn users_without_email_and_services_keep_their_bytes() {
        let t = on(USERS);
        for xml in [
            "<message from='dave@example.com/x' to='bob@partner.test'><body>hi</body></message>",
            "<presence from='room@conference.example.com/alice' to='bob@partner.test'/>",
            "<iq from='example.com' to='partner.test' id='1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            let before = out("example.com", xml);
            let ptr = before.payload.as_ptr();
            let after = t.outbound(before);
            assert_eq!(after.payload.as_ptr(), ptr, "re-serialized {xml}");
            assert_eq!(after.from_domain, "example.com");
        }
        for xml in [
            "<message from='bob@partner.test/p' to='dave@example.com/x'><body>hi</body></message>",
            "<presence from='bob@partner.test/p' to='room@conference.example.com/bob'/>",
            "<iq from='partner.test' to='example.com' id='1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            let before = tunnel("example.com", xml);
            let ptr = before.payload.as_ptr();
            let Inbound::Deliver(after) = t.inbound(before) else {
                panic!("refused {xml}");
            };
            assert_eq!(after.payload.as_ptr(), ptr, "re-serialized {xml}");
            assert_eq!(after.to_domain, "example.com");
        }
        // Off: nothing is even parsed, whatever the stanza.
        let off = Translation::off();
        let st = off.outbound(out("example.com", "not xml at all"));
        assert_eq!(text(&st.payload), "not xml at all");
    }

    #[test]
    fn inbound_to_the_email_address_reaches_the_jid_keeping_the_resource() {
        let t = on(USERS);
        let Inbound::Deliver(st) = t.inbound(tunnel(
            "example.com",
            "<message from='bob@partner.test/phone' to='Alice.Smith@example.com/laptop' id='m1'><body>hi</body></message>",
        )) else {
            panic!("refused");
        };
        assert_eq!(
            text(&st.payload),
            "<message from='bob@partner.test/phone' to='alice@example.com/laptop' id='m1'><body>hi</body></message>"
        );
        assert_eq!(st.to_domain, "example.com");
        assert_eq!(st.from_domain, "partner.test");
        // The email's domain differs from the JID's: routed to the JID's.
        let Inbound::Deliver(st) = t.inbound(tunnel(
            "example.org",
            "<presence from='bob@partner.test/phone' to='erin.jones@example.org' type='subscribe'/>",
        )) else {
            panic!("refused");
        };
        assert_eq!(
            text(&st.payload),
            "<presence from='bob@partner.test/phone' to='erin@example.com' type='subscribe'/>"
        );
        assert_eq!(st.to_domain, "example.com");
    }

    #[test]
    fn inbound_to_a_raw_jid_with_an_email_is_refused_with_an_error_where_owed() {
        let t = on(USERS);
        let Inbound::Refused { from, to, reply } = t.inbound(tunnel(
            "example.com",
            "<message from='bob@partner.test/phone' to='alice@example.com/laptop' id='m2' type='chat'><body>hi</body></message>",
        )) else {
            panic!("delivered");
        };
        assert_eq!(from, "partner.test");
        assert_eq!(to, "alice@example.com");
        let reply = reply.expect("a message gets an error");
        assert_eq!(reply.from_domain, "example.com");
        assert_eq!(reply.to_domain, "partner.test");
        assert_eq!(
            text(&reply.payload),
            "<message from='alice@example.com/laptop' to='bob@partner.test/phone' id='m2' type='error'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        );
        let iq = "<iq from='bob@partner.test/p' to='alice@example.com' id='v' type='get'><vCard xmlns='vcard-temp'/></iq>";
        assert!(matches!(
            t.inbound(tunnel("example.com", iq)),
            Inbound::Refused { reply: Some(_), .. }
        ));
        for silent in [
            "<presence from='bob@partner.test/p' to='alice@example.com'/>",
            "<presence from='bob@partner.test' to='alice@example.com' type='subscribe'/>",
            "<message from='bob@partner.test/p' to='alice@example.com' type='error'><error type='cancel'/></message>",
            "<message from='bob@partner.test/p' to='alice@example.com' type='headline'><body>x</body></message>",
            "<iq from='bob@partner.test/p' to='alice@example.com/l' id='r' type='result'/>",
        ] {
            assert!(
                matches!(
                    t.inbound(tunnel("example.com", silent)),
                    Inbound::Refused { reply: None, .. }
                ),
                "{silent}"
            );
        }
        // Translation off: the raw JID is the address.
        assert!(matches!(
            Translation::off().inbound(tunnel("example.com", iq)),
            Inbound::Deliver(_)
        ));
    }

    #[test]
    fn a_bounce_comes_back_from_the_email_address() {
        let t = on(USERS);
        let st = t.bounced(OutboundStanza {
            from_domain: "partner.test".into(),
            to_domain: "example.com".into(),
            payload: Bytes::from_static(
                b"<message from='bob@partner.test/p' to='erin@example.com/desk' id='b'><body>x</body></message>",
            ),
        });
        assert_eq!(st.to_domain, "example.org");
        let reply = causeway_s2s::error_reply(&st.payload, StanzaCondition::RemoteServerNotFound)
            .expect("reply");
        assert!(
            text(&reply)
                .starts_with("<message from='erin.jones@example.org/desk' to='bob@partner.test/p'"),
            "{}",
            text(&reply)
        );
    }
}
