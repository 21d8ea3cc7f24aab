//! Who federates with which email address: the [`Directory`] trait, the [`User`] pairs every
//! source yields, the [`Users`] index they answer from, and the file source ([`FileDirectory`]).
//! The LDAP source is in `ldap.rs` beside this file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

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

/// `local@domain` with both parts, normalized (the local part by JID preparation, the domain
/// by the one domain normaliser, [`causeway_xmpp::addr::jid_domain`], as every domain the
/// gateway compares); and its domain.
fn bare_address(s: &str) -> Result<(String, String), &'static str> {
    let parts = causeway_xmpp::addr::parse_jid(s.trim()).map_err(|_| "not a valid XMPP address")?;
    if parts.resource.is_some() {
        return Err("has a resource ('/...'); a bare address is expected");
    }
    let Some(local) = parts.local else {
        return Err("no local part");
    };
    Ok((format!("{local}@{}", parts.domain), parts.domain))
}

/// Where users' email addresses come from.
///
/// Lookups are made for every federated stanza while translation is on, from the tasks that
/// move stanzas, so they must be cheap and must never block or wait on the network. A source
/// behind a server (the LDAP directory, [`super::LdapDirectory`]) keeps an in-memory snapshot
/// ([`Users`]), refreshes it in the background and answers from it. Every source validates each
/// entry with [`User::new`] and [`User::check_domains`]. Keys are the normalized bare addresses
/// of [`User`].
pub trait Directory: Send + Sync + 'static {
    /// The user whose bare JID is `jid`, if they have an email address.
    fn by_jid(&self, jid: &str) -> Option<Arc<User>>;
    /// The user whose email address is `email`.
    fn by_email(&self, email: &str) -> Option<Arc<User>>;
    /// What it is, for logs: e.g. `file /etc/causeway/users.csv (1200 users)`.
    fn describe(&self) -> String;
}

/// Users by JID and by email address, every address naming one user only: no JID or email
/// address twice, and no email address that is another user's JID (inbound routing would be
/// ambiguous). Someone's email address may be their own JID.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Users {
    by_jid: HashMap<String, Arc<User>>,
    by_email: HashMap<String, Arc<User>>,
}

/// Why [`Users::insert`] refused a user: an address of theirs already names `other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    /// `other` has the same JID.
    Jid(Arc<User>),
    /// `other` has the same email address.
    Email(Arc<User>),
    /// The new user's email address is `other`'s JID.
    EmailIsJid(Arc<User>),
    /// The new user's JID is `other`'s email address.
    JidIsEmail(Arc<User>),
}

impl Clash {
    /// The user already there.
    pub fn other(&self) -> &Arc<User> {
        match self {
            Clash::Jid(u) | Clash::Email(u) | Clash::EmailIsJid(u) | Clash::JidIsEmail(u) => u,
        }
    }

    /// What clashes, for messages: e.g. `email address x@example.com is the JID of`.
    pub fn describe(&self, user: &User) -> String {
        match self {
            Clash::Jid(_) => format!("JID {} is already listed by", user.jid),
            Clash::Email(_) => format!("email address {} is already listed by", user.email),
            Clash::EmailIsJid(_) => format!("email address {} is the JID of", user.email),
            Clash::JidIsEmail(_) => format!("JID {} is the email address of", user.jid),
        }
    }
}

impl Users {
    /// Add a user, unless one of their addresses already names someone else.
    pub fn insert(&mut self, user: User) -> Result<(), Clash> {
        if let Some(o) = self.by_jid.get(&user.jid) {
            return Err(Clash::Jid(o.clone()));
        }
        if let Some(o) = self.by_email.get(&user.email) {
            return Err(Clash::Email(o.clone()));
        }
        if let Some(o) = self.by_jid.get(&user.email) {
            return Err(Clash::EmailIsJid(o.clone()));
        }
        if let Some(o) = self.by_email.get(&user.jid) {
            return Err(Clash::JidIsEmail(o.clone()));
        }
        let user = Arc::new(user);
        self.by_jid.insert(user.jid.clone(), user.clone());
        self.by_email.insert(user.email.clone(), user);
        Ok(())
    }

    /// The user with this bare JID.
    pub fn by_jid(&self, jid: &str) -> Option<Arc<User>> {
        self.by_jid.get(jid).cloned()
    }

    /// The user with this email address.
    pub fn by_email(&self, email: &str) -> Option<Arc<User>> {
        self.by_email.get(email).cloned()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.by_jid.len()
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.by_jid.is_empty()
    }
}

/// A [`Directory`] read from a file at start: one `jid,email` per line; `#` starts a comment
/// line; blank lines are ignored; spaces around either field are ignored.
#[derive(Debug)]
pub struct FileDirectory {
    path: PathBuf,
    users: Users,
}

impl FileDirectory {
    /// Read and validate the file; the error names the file and line.
    pub fn load(path: &Path, local_domains: &[String]) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path, local_domains)
    }

    /// Parse a file's text (`path` is for messages). Every line is checked with [`User::new`]
    /// and [`User::check_domains`]; an address that already names another user ([`Clash`]) is
    /// an error naming both lines. The file is under the admin's control line by line, so
    /// nothing is skipped: one bad line refuses the file.
    pub fn parse(text: &str, path: &Path, local_domains: &[String]) -> anyhow::Result<Self> {
        let mut users = Users::default();
        // JID -> its line, for clash messages.
        let mut lines: HashMap<String, usize> = HashMap::new();
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
            let jid = user.jid.clone();
            if let Err(clash) = users.insert(user.clone()) {
                bail!(
                    "{}: {} the user on line {}",
                    at(),
                    clash.describe(&user),
                    lines.get(&clash.other().jid).copied().unwrap_or_default()
                );
            }
            lines.insert(jid, n);
        }
        Ok(Self {
            path: path.to_owned(),
            users,
        })
    }

    /// Users listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No user listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Directory for FileDirectory {
    fn by_jid(&self, jid: &str) -> Option<Arc<User>> {
        self.users.by_jid(jid)
    }

    fn by_email(&self, email: &str) -> Option<Arc<User>> {
        self.users.by_email(email)
    }

    fn describe(&self) -> String {
        format!("file {} ({} users)", self.path.display(), self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::testing::locals;

    fn parse(text: &str) -> anyhow::Result<FileDirectory> {
        FileDirectory::parse(text, Path::new("users.csv"), &locals())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => format!("{e:#}"),
        }
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
    fn idn_domains_are_keyed_in_one_form() {
        let locals = vec!["xn--bcher-kva.test".to_owned()];
        let dir = FileDirectory::parse(
            "ana@BÜCHER.test,Ana.Lopez@xn--bcher-kva.test.\n\
             bo@xn--bcher-kva.test,bo.x@bücher\u{3002}test\n",
            Path::new("users.csv"),
            &locals,
        )
        .expect("valid");
        let ana = dir.by_jid("ana@xn--bcher-kva.test").expect("ana");
        assert_eq!(ana.jid_domain, "xn--bcher-kva.test");
        assert_eq!(ana.email, "ana.lopez@xn--bcher-kva.test");
        assert_eq!(
            dir.by_email("bo.x@xn--bcher-kva.test")
                .map(|u| u.jid.clone()),
            Some("bo@xn--bcher-kva.test".to_owned())
        );
        // The same user spelt twice is a duplicate, however it is spelt.
        let e = match FileDirectory::parse(
            "ana@bücher.test,a@bücher.test\nAna@XN--BCHER-KVA.test,b@bücher.test\n",
            Path::new("users.csv"),
            &locals,
        ) {
            Ok(_) => panic!("a duplicate accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("line 2: JID ana@xn--bcher-kva.test is already listed"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_errors_naming_both_lines() {
        let e = err("a@example.com,x@example.com\n# c\nA@example.com,y@example.com\n");
        assert!(
            e.contains(
                "users.csv: line 3: JID a@example.com is already listed by the user on line 1"
            ),
            "{e}"
        );
        let e = err("a@example.com,x@example.com\nb@example.com,X@example.com\n");
        assert!(
            e.contains(
                "line 2: email address x@example.com is already listed by the user on line 1"
            ),
            "{e}"
        );
        let e = err("a@example.com,b@example.com\nb@example.com,c@example.com\n");
        assert!(
            e.contains("line 2: JID b@example.com is the email address of the user on line 1"),
            "{e}"
        );
        let e = err("b@example.com,c@example.com\n\na@example.com,b@example.com\n");
        assert!(
            e.contains("line 3: email address b@example.com is the JID of the user on line 1"),
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
}
