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
//! * **Bounces** (a translated stanza core could not deliver to a node,
//!   [`Translation::bounced`]): the original address is restored first, so the error comes
//!   back from the email address the sender used.
//!
//! Only the `from`/`to` attributes of the top-level stanza are translated. JIDs carried inside
//! stanzas are **not**: MUC (`<item jid=..>` in room presence, mediated invitations
//! `<invite from/to>`, XEP-0249 direct invitations), roster items and roster exchange
//! (XEP-0144), extended addressing (XEP-0033), forwarded stanzas (carbons, MAM results,
//! `<forwarded>`), `<delay from=..>`, PubSub/PEP publishers, vCards, and anything else in a
//! payload. So a partner in a room on one of our chat nodes can see the real JIDs of its
//! occupants in non-anonymous rooms.
//!
//! Stanzas are bytes on the hot path: nothing is parsed when translation is off, and when it is
//! on a stanza is re-serialized only when an address changes (otherwise the original bytes go
//! on).
//!
//! The addresses come from a [`Directory`]: today a file ([`FileDirectory`], one `jid,email`
//! per line); an LDAP directory is a later step and implements the same trait.

use std::collections::HashMap;
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

/// `[email_translation]` in core's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSection {
    /// Translate between JIDs and email addresses for all federated traffic (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The directory file: one `jid,email` per line (relative to the config file).
    #[serde(default)]
    pub directory: Option<PathBuf>,
}

/// One user who federates with an email address. Both addresses are bare and normalized the
/// way XMPP compares them (RFC 7622 / stringprep: local parts and domains case-folded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The internal bare JID, `local@domain`.
    pub jid: String,
    /// Domain of [`User::jid`].
    pub jid_domain: String,
    /// The email address the user federates with, `local@domain`.
    pub email: String,
    /// Domain of [`User::email`].
    pub email_domain: String,
}

impl User {
    /// Validate and normalize one pair: a bare JID with a local part, and an email address with a
    /// local part and a domain that is also usable as a bare XMPP address. Every directory
    /// source uses this, so they all accept the same addresses.
    pub fn new(jid: &str, email: &str) -> Result<Self, String> {
        let (jid, jid_domain) = bare_address(jid).map_err(|e| format!("JID {jid:?}: {e}"))?;
        let Some((local, domain)) = email.split_once('@') else {
            return Err(format!("email address {email:?}: no '@'"));
        };
        if local.is_empty() {
            return Err(format!("email address {email:?}: no local part"));
        }
        causeway_xmpp::addr::normalize_domain(domain)
            .map_err(|e| format!("email address {email:?}: {e}"))?;
        let (email, email_domain) =
            bare_address(email).map_err(|e| format!("email address {email:?}: {e}"))?;
        Ok(Self {
            jid,
            jid_domain,
            email,
            email_domain,
        })
    }

    /// Both domains must be local domains (`[[domains]]` names): the email's so that the edge
    /// lets core send as it and federated servers find us through it, the JID's so that core
    /// can route to a node serving it.
    pub fn check_domains(&self, local_domains: &[String]) -> Result<(), String> {
        for (what, domain) in [
            ("email address", &self.email_domain),
            ("JID", &self.jid_domain),
        ] {
            if !local_domains.contains(domain) {
                return Err(format!(
                    "{what} domain {domain} is not a local domain (a [[domains]] name)"
                ));
            }
        }
        Ok(())
    }
}

/// `local@domain` with both parts, normalized; and its domain.
fn bare_address(s: &str) -> Result<(String, String), &'static str> {
    let parsed = jid::Jid::new(s.trim()).map_err(|_| "not a valid XMPP address")?;
    if parsed.resource().is_some() {
        return Err("has a resource ('/...'); a bare address is expected");
    }
    let Some(node) = parsed.node() else {
        return Err("no local part");
    };
    let domain = parsed.domain().as_str().to_owned();
    Ok((format!("{}@{domain}", node.as_str()), domain))
}

/// Where users' email addresses come from.
///
/// Lookups are made for every federated stanza while translation is on, from the tasks that
/// move stanzas, so they must be cheap and must never block or wait on the network. A source
/// behind a server (the planned LDAP directory: users' `mail` attribute, as IM&P's LDAP sync
/// reads it) should keep an in-memory snapshot, refresh it in the background, and answer from
/// it, validating each entry with [`User::new`] and [`User::check_domains`] (logging and
/// skipping bad ones rather than failing, unlike the file, which is checked whole at start).
/// Keys are the normalized bare addresses of [`User`].
pub trait Directory: Send + Sync + 'static {
    /// The user whose bare JID is `jid`, if they have an email address.
    fn by_jid(&self, jid: &str) -> Option<Arc<User>>;
    /// The user whose email address is `email`.
    fn by_email(&self, email: &str) -> Option<Arc<User>>;
    /// What it is, for logs: e.g. `file /etc/causeway/users.csv (1200 users)`.
    fn describe(&self) -> String;
}

/// A [`Directory`] read from a file at start: one `jid,email` per line; `#` starts a comment
/// line; blank lines are ignored; spaces around either field are ignored.
#[derive(Debug)]
pub struct FileDirectory {
    path: PathBuf,
    by_jid: HashMap<String, Arc<User>>,
    by_email: HashMap<String, Arc<User>>,
}

impl FileDirectory {
    /// Read and validate the file; the error names the file and line.
    pub fn load(path: &Path, local_domains: &[String]) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path, local_domains)
    }

    /// Parse a file's text (`path` is for messages). Every line is checked with [`User::new`]
    /// and [`User::check_domains`]; a JID or email address listed twice, or an email address
    /// that is another user's JID (inbound routing would be ambiguous), is an error too.
    pub fn parse(text: &str, path: &Path, local_domains: &[String]) -> anyhow::Result<Self> {
        let mut dir = Self {
            path: path.to_owned(),
            by_jid: HashMap::new(),
            by_email: HashMap::new(),
        };
        let mut email_lines: HashMap<String, usize> = HashMap::new();
        let mut jid_lines: HashMap<String, usize> = HashMap::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let at = || format!("{}: line {n}", path.display());
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [jid, email] = fields[..] else {
                bail!("{}: expected `jid,email`, found {line:?}", at());
            };
            let user = User::new(jid, email).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
            user.check_domains(local_domains)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
            if let Some(first) = jid_lines.get(&user.jid) {
                bail!(
                    "{}: JID {} is already listed on line {first}",
                    at(),
                    user.jid
                );
            }
            if let Some(first) = email_lines.get(&user.email) {
                bail!(
                    "{}: email address {} is already listed on line {first}",
                    at(),
                    user.email
                );
            }
            jid_lines.insert(user.jid.clone(), n);
            email_lines.insert(user.email.clone(), n);
            let user = Arc::new(user);
            dir.by_jid.insert(user.jid.clone(), user.clone());
            dir.by_email.insert(user.email.clone(), user);
        }
        // An address that is one user's email and another user's JID: which one is it for?
        for user in dir.by_email.values() {
            if let Some(other) = dir.by_jid.get(&user.email) {
                if other.jid != user.jid {
                    bail!(
                        "{}: line {}: email address {} is the JID of the user on line {}",
                        path.display(),
                        email_lines[&user.email],
                        user.email,
                        jid_lines[&other.jid]
                    );
                }
            }
        }
        Ok(dir)
    }

    /// Users listed.
    pub fn len(&self) -> usize {
        self.by_jid.len()
    }

    /// No user listed.
    pub fn is_empty(&self) -> bool {
        self.by_jid.is_empty()
    }
}

impl Directory for FileDirectory {
    fn by_jid(&self, jid: &str) -> Option<Arc<User>> {
        self.by_jid.get(jid).cloned()
    }

    fn by_email(&self, email: &str) -> Option<Arc<User>> {
        self.by_email.get(email).cloned()
    }

    fn describe(&self) -> String {
        format!("file {} ({} users)", self.path.display(), self.len())
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

    /// From the config section: off unless enabled; the directory file is read and checked
    /// against the local domains now. Errors name the setting, the file and the line.
    pub fn from_config(section: &EmailSection, local_domains: &[String]) -> anyhow::Result<Self> {
        if !section.enabled {
            return Ok(Self::off());
        }
        let Some(path) = &section.directory else {
            bail!("email_translation.directory: required when email_translation.enabled");
        };
        let dir =
            FileDirectory::load(path, local_domains).context("email_translation.directory")?;
        Ok(Self::with_directory(Arc::new(dir)))
    }

    /// Whether stanzas are translated.
    pub fn is_on(&self) -> bool {
        self.directory.is_some()
    }

    /// A copy for the running core, logging what is in force.
    pub fn start(&self) -> Self {
        if let Some(d) = &self.directory {
            info!(module = LOG_MODULE, directory = %d.describe(), "email address for federation: on");
        }
        self.clone()
    }

    /// Outbound: `from` = the sender's email address (resource kept) and `from_domain` = its
    /// domain, when the sender has one; otherwise the stanza as it was.
    pub fn outbound(&self, stanza: InboundStanza) -> InboundStanza {
        let Some(dir) = &self.directory else {
            return stanza;
        };
        let Some(addr) = Addressed::parse(&stanza.payload, "from") else {
            return stanza;
        };
        match dir.by_jid(&addr.bare) {
            Some(user) if user.email != addr.bare => InboundStanza {
                payload: addr.rewrite(&user.email),
                from_domain: user.email_domain.clone(),
                to_domain: stanza.to_domain,
            },
            _ => stanza,
        }
    }

    /// Inbound: a stanza to a known email address goes to the user's JID (resource kept) on a
    /// node of the JID's domain; one to the raw JID of a user with an email address is refused;
    /// anything else goes on untouched.
    pub fn inbound(&self, st: TunnelStanza) -> Inbound {
        let Some(dir) = &self.directory else {
            return Inbound::Deliver(st);
        };
        let Some(addr) = Addressed::parse(&st.payload, "to") else {
            return Inbound::Deliver(st);
        };
        if let Some(user) = dir.by_email(&addr.bare) {
            if user.jid == addr.bare {
                return Inbound::Deliver(st);
            }
            return Inbound::Deliver(TunnelStanza {
                payload: addr.rewrite(&user.jid),
                from_domain: st.from_domain,
                to_domain: user.jid_domain.clone(),
            });
        }
        if dir.by_jid(&addr.bare).is_none() {
            return Inbound::Deliver(st);
        }
        let reply = error_owed(&addr.element)
            .then(|| {
                causeway_xmpp::error::stanza_error_reply(
                    &addr.element,
                    StanzaCondition::ServiceUnavailable,
                    None,
                )
            })
            .flatten()
            .map(|r| TunnelStanza {
                from_domain: st.to_domain.clone(),
                to_domain: st.from_domain.clone(),
                payload: Bytes::from(r.to_xml(ns::SERVER)),
            });
        Inbound::Refused {
            from: st.from_domain,
            to: addr.bare,
            reply,
        }
    }

    /// A stanza core could not deliver to a node, before its error reply is made: undo the
    /// inbound translation (`to` = the email address again, `to_domain` its domain), so the
    /// sender hears back from the address it wrote to.
    pub fn bounced(&self, stanza: OutboundStanza) -> OutboundStanza {
        let Some(dir) = &self.directory else {
            return stanza;
        };
        let Some(addr) = Addressed::parse(&stanza.payload, "to") else {
            return stanza;
        };
        match dir.by_jid(&addr.bare) {
            Some(user) if user.email != addr.bare => OutboundStanza {
                payload: addr.rewrite(&user.email),
                from_domain: stanza.from_domain,
                to_domain: user.email_domain.clone(),
            },
            _ => stanza,
        }
    }
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

/// A parsed stanza and the bare form of one of its address attributes.
struct Addressed {
    element: Element,
    attr: &'static str,
    /// Normalized `local@domain`.
    bare: String,
    /// The resource, as normalized by JID preparation.
    resource: Option<String>,
}

impl Addressed {
    /// Parse `payload` and its address attribute `attr`; None when either does not parse or
    /// the address has no local part (a server or service: never translated).
    fn parse(payload: &[u8], attr: &'static str) -> Option<Self> {
        let element = causeway_s2s::parse_stanza(payload)?;
        let parsed = jid::Jid::new(element.attr(attr)?).ok()?;
        let node = parsed.node()?;
        let bare = format!("{}@{}", node.as_str(), parsed.domain().as_str());
        let resource = parsed.resource().map(|r| r.as_str().to_owned());
        Some(Self {
            element,
            attr,
            bare,
            resource,
        })
    }

    /// The stanza with the address replaced by `bare` (and the resource kept), serialized.
    fn rewrite(mut self, bare: &str) -> Bytes {
        let value = match &self.resource {
            Some(r) => format!("{bare}/{r}"),
            None => bare.to_owned(),
        };
        self.element.set_attr(self.attr, &value);
        Bytes::from(self.element.to_xml(ns::SERVER))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn locals() -> Vec<String> {
        vec!["example.com".into(), "example.org".into()]
    }

    fn parse(text: &str) -> anyhow::Result<FileDirectory> {
        FileDirectory::parse(text, Path::new("users.csv"), &locals())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn on(text: &str) -> Translation {
        let dir = parse(text).expect("directory");
        Translation::with_directory(Arc::new(dir))
    }

    const USERS: &str = "alice@example.com,alice.smith@example.com\n\
                         erin@example.com, Erin.Jones@Example.ORG\n";

    fn out(from_domain: &str, xml: &str) -> InboundStanza {
        InboundStanza {
            from_domain: from_domain.into(),
            to_domain: "partner.test".into(),
            payload: Bytes::from(xml.to_owned()),
        }
    }

    fn tunnel(to_domain: &str, xml: &str) -> TunnelStanza {
        TunnelStanza {
            from_domain: "partner.test".into(),
            to_domain: to_domain.into(),
            payload: Bytes::from(xml.to_owned()),
        }
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).expect("utf-8")
    }

    #[test]
    fn a_good_directory_parses_with_comments_and_blank_lines() {
        let dir = parse(
            "\u{feff}# jid,email\n\n  alice@example.com , alice.smith@example.com  \n\
             # another\nErin@EXAMPLE.com,Erin.Jones@example.org\r\n",
        )
        .expect("valid");
        assert_eq!(dir.len(), 2);
        let alice = dir.by_jid("alice@example.com").expect("alice");
        assert_eq!(alice.email, "alice.smith@example.com");
        assert_eq!(alice.email_domain, "example.com");
        let erin = dir
            .by_email("erin.jones@example.org")
            .expect("erin, case-folded");
        assert_eq!(erin.jid, "erin@example.com");
        assert_eq!(erin.jid_domain, "example.com");
        assert!(dir.by_jid("bob@example.com").is_none());
        assert_eq!(dir.describe(), "file users.csv (2 users)");
        assert!(parse("# nobody\n\n").expect("empty is valid").is_empty());
    }

    #[test]
    fn duplicates_are_errors_naming_both_lines() {
        let e = err("a@example.com,x@example.com\n# c\nA@example.com,y@example.com\n");
        assert!(
            e.contains("users.csv: line 3: JID a@example.com is already listed on line 1"),
            "{e}"
        );
        let e = err("a@example.com,x@example.com\nb@example.com,X@example.com\n");
        assert!(
            e.contains("line 2: email address x@example.com is already listed on line 1"),
            "{e}"
        );
        let e = err("a@example.com,b@example.com\nb@example.com,c@example.com\n");
        assert!(
            e.contains("line 1: email address b@example.com is the JID of the user on line 2"),
            "{e}"
        );
        // Someone's email address may be their own JID.
        assert!(parse("a@example.com,a@example.com\n").is_ok());
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for (text, want) in [
            ("alice@example.com\n", "line 1: expected `jid,email`"),
            (
                "\na@example.com,b@example.com,c@example.com\n",
                "line 2: expected `jid,email`",
            ),
            (
                "example.com,alice@example.com\n",
                "line 1: JID \"example.com\": no local part",
            ),
            ("a@example.com/res,x@example.com\n", "has a resource"),
            (
                "a@b@example.com,x@example.com\n",
                "line 1: JID \"a@b@example.com\": not a valid XMPP address",
            ),
            (
                "a@example.com,example.com\n",
                "line 1: email address \"example.com\": no '@'",
            ),
            (
                "a@example.com,@example.com\n",
                "email address \"@example.com\": no local part",
            ),
            ("a@example.com,a@\n", "email address \"a@\": invalid domain"),
            ("a@example.com,a@exa_mple.com\n", "invalid domain"),
            (
                "a@example.com,a b@example.com\n",
                "not a valid XMPP address",
            ),
            ("a@example.com,a@example.com/x\n", "invalid domain"),
            (
                "a@example.com,a@partner.test\n",
                "line 1: email address domain partner.test is not a local domain",
            ),
            (
                "a@elsewhere.test,a@example.com\n",
                "JID domain elsewhere.test is not a local domain",
            ),
            ("a@example.com,\n", "no '@'"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("users.csv: line "), "{text:?}: {e}");
        }
    }

    #[test]
    fn config_section_reads_the_file() {
        let off = Translation::from_config(&EmailSection::default(), &locals()).expect("off");
        assert!(!off.is_on());
        let missing = EmailSection {
            enabled: true,
            directory: None,
        };
        let e = Translation::from_config(&missing, &locals()).expect_err("needs a file");
        assert!(e
            .to_string()
            .contains("email_translation.directory: required"));
        let path = std::env::temp_dir().join(format!("causeway-email-{}.csv", std::process::id()));
        std::fs::write(&path, USERS).expect("write");
        let section = EmailSection {
            enabled: true,
            directory: Some(path.clone()),
        };
        let t = Translation::from_config(&section, &locals()).expect("valid file");
        assert!(t.is_on());
        std::fs::write(&path, "alice@example.com,alice@partner.test\n").expect("write");
        let e = Translation::from_config(&section, &locals()).expect_err("bad domain");
        let _ = std::fs::remove_file(&path);
        let e = format!("{e:#}");
        assert!(e.starts_with("email_translation.directory: "), "{e}");
        assert!(
            e.contains(": line 1: email address domain partner.test"),
            "{e}"
        );
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
