//! The LDAP source of the email directory ([`LdapDirectory`]), as IM&P's LDAP sync reads it:
//! every entry under `ldap_base_dn` matching `ldap_filter` is a user; their email address is
//! the `ldap_email_attribute` (default `mail`), their JID either `ldap_jid_attribute` (an
//! attribute holding the whole JID) or `<ldap_user_attribute>@<ldap_jid_domain>` (IM&P's user
//! ID, default `uid`, at the presence domain).
//!
//! Call order: [`LdapSettings::from_section`] when the config is validated (nothing connected;
//! `core check` runs it), then [`LdapDirectory::load`] at start (connect, bind, search: an
//! unreachable server, a refused bind or a failed search refuses to start, naming the
//! setting), then [`LdapDirectory::spawn_refresh`], which loads again every
//! `ldap_refresh_seconds` and swaps the users in at once; a failed refresh keeps the last good
//! users and logs a warning. Lookups only read the in-memory snapshot.
//!
//! Unlike the file, a directory is not under the admin's control line by line, so a bad entry
//! is logged (once, when it first appears) and skipped rather than refusing the whole
//! directory: an invalid JID or email address, a domain that is not local, or an address that
//! more than one entry claims (every claimant is skipped: routing a partner's message to
//! whichever entry came first could deliver it to the wrong person). An entry without an email
//! address is a user who federates with their JID, not an error.
//!
//! Each load is one connection: connect (10 s), simple bind (or anonymous), a paged subtree
//! search (RFC 2696, 500 entries a page, so Active Directory's 1000-entry limit does not cut
//! it short; 30 s for each reply), unbind.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use causeway_s2s::LOG_MODULE;
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry};
use tracing::{info, warn};

use super::directory::{Directory, User, Users};
use super::EmailSection;

/// Connecting (TCP and TLS) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The bind, and each reply of the search, may take this long.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries asked for per page of the search.
const PAGE_SIZE: i32 = 500;
/// Skipped entries logged one by one per load; more are counted in one line.
const MAX_SKIP_WARNINGS: usize = 20;

/// `ldap_filter` when not set.
pub const DEFAULT_FILTER: &str = "(objectClass=inetOrgPerson)";
/// `ldap_user_attribute` when not set.
pub const DEFAULT_USER_ATTRIBUTE: &str = "uid";
/// `ldap_email_attribute` when not set.
pub const DEFAULT_EMAIL_ATTRIBUTE: &str = "mail";
/// `ldap_refresh_seconds` when not set.
pub const DEFAULT_REFRESH_SECONDS: u64 = 300;

/// How an entry's JID is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JidSource {
    /// An attribute holding the bare JID (`ldap_jid_attribute`); a `xmpp:` or `sip:` URI
    /// scheme in front of it is dropped (Active Directory's `msRTCSIP-PrimaryUserAddress`
    /// holds `sip:user@domain`).
    Attribute(String),
    /// `<attribute>@<domain>` (`ldap_user_attribute`, `ldap_jid_domain`).
    UserAtDomain {
        /// The attribute holding the user ID.
        attribute: String,
        /// The JID domain, normalized.
        domain: String,
    },
}

impl JidSource {
    /// The attribute read.
    fn attribute(&self) -> &str {
        match self {
            JidSource::Attribute(a) | JidSource::UserAtDomain { attribute: a, .. } => a,
        }
    }

    /// The bare JID for an attribute value.
    fn jid(&self, value: &str) -> String {
        match self {
            JidSource::Attribute(_) => strip_scheme(value).to_owned(),
            JidSource::UserAtDomain { domain, .. } => format!("{value}@{domain}"),
        }
    }
}

/// `value` without a leading `xmpp:` or `sip:` (any case).
fn strip_scheme(value: &str) -> &str {
    for scheme in ["xmpp:", "sip:"] {
        if value
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        {
            return &value[scheme.len()..];
        }
    }
    value
}

/// The DN and password of a simple bind.
#[derive(Clone)]
pub struct Bind {
    /// `ldap_bind_dn`.
    pub dn: String,
    /// `ldap_bind_password` or the first line of `ldap_bind_password_file`.
    password: String,
}

impl std::fmt::Debug for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bind")
            .field("dn", &self.dn)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The LDAP settings of `[email_translation]`, checked; nothing is connected.
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// `ldap_url`: `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// None: anonymous (no bind).
    pub bind: Option<Bind>,
    /// `ldap_base_dn`: the subtree searched.
    pub base_dn: String,
    /// `ldap_filter`: which entries are users.
    pub filter: String,
    /// Where the JID comes from.
    pub jid: JidSource,
    /// `ldap_email_attribute`.
    pub email_attribute: String,
    /// `ldap_refresh_seconds`; None (0): loaded at start only.
    pub refresh: Option<Duration>,
    /// `ldap_ca`: the CA certificates (PEM) that ldaps trusts instead of the system's store.
    pub ca: Option<PathBuf>,
    /// Local domains: every entry's JID and email domains must be among them.
    pub local_domains: Vec<String>,
}

impl LdapSettings {
    /// Check the section's LDAP settings (`source = "ldap"`) and read the password file. Errors
    /// name the setting.
    pub fn from_section(s: &EmailSection, local_domains: &[String]) -> anyhow::Result<Self> {
        let key = |k: &str| format!("email_translation.{k}");
        if s.directory.is_some() {
            bail!("{}: not used with source = \"ldap\"", key("directory"));
        }
        let Some(url) = s.ldap_url.as_deref().map(str::trim) else {
            bail!("{}: required with source = \"ldap\"", key("ldap_url"));
        };
        let tls = check_url(url).map_err(|e| anyhow::anyhow!("{}: {e}", key("ldap_url")))?;
        let bind = bind(s)?;
        let base_dn = match s.ldap_base_dn.as_deref().map(str::trim) {
            Some(dn) if !dn.is_empty() => dn.to_owned(),
            _ => bail!("{}: required with source = \"ldap\"", key("ldap_base_dn")),
        };
        let filter = s.ldap_filter.as_deref().unwrap_or(DEFAULT_FILTER).trim();
        if ldap3::parse_filter(filter).is_err() {
            bail!(
                "{}: {filter:?} is not an LDAP search filter (RFC 4515), e.g. {DEFAULT_FILTER}",
                key("ldap_filter")
            );
        }
        let jid = jid_source(s, local_domains)?;
        let email_attribute = attribute(
            &key("ldap_email_attribute"),
            s.ldap_email_attribute.as_deref(),
            DEFAULT_EMAIL_ATTRIBUTE,
        )?;
        let seconds = s.ldap_refresh_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS);
        if let Some(ca) = &s.ldap_ca {
            if !tls {
                bail!("{}: only used with an ldaps:// URL", key("ldap_ca"));
            }
            causeway_pki::load_certs(ca).with_context(|| key("ldap_ca"))?;
        }
        Ok(Self {
            url: url.to_owned(),
            bind,
            base_dn,
            filter: filter.to_owned(),
            jid,
            email_attribute,
            refresh: (seconds > 0).then(|| Duration::from_secs(seconds)),
            ca: s.ldap_ca.clone(),
            local_domains: local_domains.to_vec(),
        })
    }

    /// The attributes the search asks for.
    fn attributes(&self) -> Vec<String> {
        vec![
            self.jid.attribute().to_owned(),
            self.email_attribute.clone(),
        ]
    }
}

/// An `ldap://` or `ldaps://` URL with a host; whether it is ldaps.
fn check_url(url: &str) -> Result<bool, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an ldap:// or ldaps:// URL"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ldap" => false,
        "ldaps" => true,
        _ => return Err(format!("{url:?}: the scheme must be ldap or ldaps")),
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?}: no host"));
    }
    Ok(tls)
}

/// The bind: a DN with exactly one of the password settings, or none of the three
/// (anonymous). An empty password is refused: LDAP treats it as an unauthenticated bind.
fn bind(s: &EmailSection) -> anyhow::Result<Option<Bind>> {
    let password = causeway_app::secret_setting(
        "email_translation",
        "ldap_bind_password",
        s.ldap_bind_password.as_deref(),
        s.ldap_bind_password_file.as_deref(),
    )?;
    let dn = s
        .ldap_bind_dn
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    match (dn, password) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            bail!("email_translation.ldap_bind_dn: required with a bind password")
        }
        (Some(_), None) => bail!(
            "email_translation.ldap_bind_password: required with ldap_bind_dn (or \
             ldap_bind_password_file)"
        ),
        (Some(_), Some(p)) if p.is_empty() => bail!(
            "email_translation.ldap_bind_password: empty (an LDAP bind with an empty \
             password is unauthenticated)"
        ),
        (Some(dn), Some(password)) => Ok(Some(Bind {
            dn: dn.to_owned(),
            password,
        })),
    }
}

/// `ldap_jid_attribute`, or `ldap_user_attribute` (default uid) at `ldap_jid_domain`.
fn jid_source(s: &EmailSection, local_domains: &[String]) -> anyhow::Result<JidSource> {
    if let Some(a) = &s.ldap_jid_attribute {
        if s.ldap_user_attribute.is_some() || s.ldap_jid_domain.is_some() {
            bail!(
                "email_translation.ldap_jid_attribute: set it, or ldap_user_attribute and \
                 ldap_jid_domain, not both"
            );
        }
        return Ok(JidSource::Attribute(attribute(
            "email_translation.ldap_jid_attribute",
            Some(a),
            "",
        )?));
    }
    let Some(domain) = &s.ldap_jid_domain else {
        bail!(
            "email_translation.ldap_jid_domain: required with source = \"ldap\" (the domain of \
             <ldap_user_attribute>@<domain> JIDs), unless ldap_jid_attribute names an attribute \
             holding whole JIDs"
        );
    };
    let domain = causeway_xmpp::addr::normalize_domain(domain)
        .map_err(|e| anyhow::anyhow!("email_translation.ldap_jid_domain: {e}"))?;
    if !local_domains.contains(&domain) {
        bail!(
            "email_translation.ldap_jid_domain: {domain} is not a local domain (a [[domains]] \
             name)"
        );
    }
    let attribute = attribute(
        "email_translation.ldap_user_attribute",
        s.ldap_user_attribute.as_deref(),
        DEFAULT_USER_ATTRIBUTE,
    )?;
    Ok(JidSource::UserAtDomain { attribute, domain })
}

/// An attribute name setting: letters, digits and `-` (RFC 4512 `descr`), or a numeric OID.
fn attribute(key: &str, value: Option<&str>, default: &str) -> anyhow::Result<String> {
    let name = value.unwrap_or(default).trim();
    let descr = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !name.is_empty() && name.split('.').all(|p| p.parse::<u64>().is_ok());
    if !descr && !oid {
        bail!("{key}: {name:?} is not an LDAP attribute name");
    }
    Ok(name.to_owned())
}

/// One entry as the search returned it: its DN and the first value of each attribute read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its distinguished name.
    pub dn: String,
    /// The JID attribute's value (whole JID or user ID), trimmed; None when absent or empty.
    pub jid: Option<String>,
    /// The email attribute's value, trimmed; None when absent or empty.
    pub email: Option<String>,
}

impl Entry {
    /// From a search entry; attribute names compare case-insensitively, as LDAP's do.
    fn of(entry: SearchEntry, settings: &LdapSettings) -> Self {
        let first = |name: &str| {
            entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, values)| values.first())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            jid: first(settings.jid.attribute()),
            email: first(&settings.email_attribute),
            dn: entry.dn.clone(),
        }
    }
}

/// One load's users, and what was left out.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The users with an email address.
    pub users: Users,
    /// Entries the search returned.
    pub entries: usize,
    /// Entries without an email address (users who federate with their JID).
    pub without_email: usize,
    /// Why entries were skipped: one message per entry.
    pub skipped: BTreeSet<String>,
}

impl Snapshot {
    /// Validate the entries (the rules of the module documentation).
    pub fn build(entries: Vec<Entry>, settings: &LdapSettings) -> Self {
        let mut snapshot = Snapshot {
            entries: entries.len(),
            ..Snapshot::default()
        };
        let mut valid: Vec<(String, User)> = Vec::new();
        for e in entries {
            let Some(value) = &e.jid else {
                snapshot.skipped.insert(format!(
                    "LDAP entry {}: no {} attribute",
                    e.dn,
                    settings.jid.attribute()
                ));
                continue;
            };
            let Some(email) = &e.email else {
                snapshot.without_email += 1;
                continue;
            };
            let user = User::new(&settings.jid.jid(value), email).and_then(|u| {
                u.check_domains(&settings.local_domains)?;
                Ok(u)
            });
            match user {
                Ok(u) => valid.push((e.dn, u)),
                Err(reason) => {
                    snapshot
                        .skipped
                        .insert(format!("LDAP entry {}: {reason}", e.dn));
                }
            }
        }
        // Which entries claim each address (a user whose email is their JID claims it once).
        let mut claims: HashMap<&str, Vec<&str>> = HashMap::new();
        for (dn, u) in &valid {
            claims.entry(&u.jid).or_default().push(dn);
            if u.email != u.jid {
                claims.entry(&u.email).or_default().push(dn);
            }
        }
        for (dn, user) in &valid {
            let shared = [&user.jid, &user.email].into_iter().find_map(|a| {
                claims
                    .get(a.as_str())
                    .filter(|c| c.len() > 1)
                    .map(|c| (a, c))
            });
            if let Some((address, claimants)) = shared {
                let others: Vec<&str> = claimants.iter().copied().filter(|d| d != dn).collect();
                snapshot.skipped.insert(format!(
                    "LDAP entry {dn}: address {address} is also claimed by {}",
                    others.join(", ")
                ));
                continue;
            }
            // Cannot clash after the claims check; a clash is still reported, never dropped.
            if let Err(clash) = snapshot.users.insert(user.clone()) {
                snapshot.skipped.insert(format!(
                    "LDAP entry {dn}: {} {}",
                    clash.describe(user),
                    clash.other().jid
                ));
            }
        }
        snapshot
    }
}

/// A [`Directory`] loaded from LDAP and refreshed in the background.
pub struct LdapDirectory {
    settings: LdapSettings,
    /// For ldaps.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The users in force: replaced whole by each successful refresh.
    snapshot: RwLock<Arc<Snapshot>>,
    /// The error of the last refresh, while refreshes fail.
    failing: RwLock<Option<String>>,
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl LdapDirectory {
    /// Connect, bind and search once: the directory with its first users, or an error naming
    /// the setting at fault (and the URL).
    pub async fn load(settings: LdapSettings) -> anyhow::Result<Arc<Self>> {
        let tls = settings.url.to_ascii_lowercase().starts_with("ldaps:");
        let tls = if tls {
            Some(tls_config(&settings)?)
        } else {
            None
        };
        let dir = Self {
            settings,
            tls,
            snapshot: RwLock::new(Arc::default()),
            failing: RwLock::new(None),
        };
        let entries = dir.fetch().await?;
        let snapshot = Snapshot::build(entries, &dir.settings);
        log_skipped(&snapshot, None);
        info!(module = LOG_MODULE, url = %dir.settings.url, users = snapshot.users.len(), entries = snapshot.entries, without_email = snapshot.without_email, skipped = snapshot.skipped.len(), "email directory loaded from LDAP");
        *write(&dir.snapshot) = Arc::new(snapshot);
        Ok(Arc::new(dir))
    }

    /// Load again every `ldap_refresh_seconds` (not at all when 0), in a task that ends when
    /// the directory is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let Some(period) = self.settings.refresh else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(dir) = weak.upgrade() else {
                    return;
                };
                dir.refresh().await;
            }
        });
    }

    /// Load again and swap the users in; on failure keep them and warn.
    pub async fn refresh(&self) {
        let entries = match self.fetch().await {
            Ok(entries) => entries,
            Err(e) => {
                let error = format!("{e:#}");
                warn!(module = LOG_MODULE, error = %error, users = self.current().users.len(), "email directory: LDAP refresh failed; the last users loaded stay in force");
                *write(&self.failing) = Some(error);
                return;
            }
        };
        let next = Snapshot::build(entries, &self.settings);
        let before = self.current();
        log_skipped(&next, Some(&before));
        if next.users != before.users {
            info!(
                module = LOG_MODULE,
                users = next.users.len(),
                before = before.users.len(),
                "email directory: LDAP refresh changed the users"
            );
        }
        if write(&self.failing).take().is_some() {
            info!(
                module = LOG_MODULE,
                "email directory: LDAP refresh works again"
            );
        }
        *write(&self.snapshot) = Arc::new(next);
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connect, bind, search, unbind.
    async fn fetch(&self) -> anyhow::Result<Vec<Entry>> {
        let s = &self.settings;
        let url = &s.url;
        let mut conn = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.tls {
            conn = conn.set_config(tls.clone());
        }
        let (driver, mut ldap) = LdapConnAsync::with_settings(conn, url).await.map_err(|e| {
            let hint = match (&self.tls, &s.ca) {
                (Some(_), _) if !e.to_string().contains("certificate") => "",
                (Some(_), None) => {
                    " (set email_translation.ldap_ca to the CA that signed the server's \
                     certificate, or add that CA to the system's store)"
                }
                (Some(_), Some(_)) => {
                    " (is email_translation.ldap_ca the CA that signed the server's certificate?)"
                }
                (None, _) => "",
            };
            anyhow::anyhow!("email_translation.ldap_url: cannot connect to {url}: {e}{hint}")
        })?;
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                tracing::debug!(module = LOG_MODULE, error = %e, "LDAP connection closed");
            }
        });
        if let Some(b) = &s.bind {
            let result = ldap
                .with_timeout(OPERATION_TIMEOUT)
                .simple_bind(&b.dn, &b.password)
                .await
                .map_err(|e| anyhow::anyhow!("email_translation.ldap_url: {url}: bind: {e}"))?;
            if result.rc != 0 {
                let _ = ldap.unbind().await;
                bail!("{}", bind_refused(url, &b.dn, &result));
            }
        }
        let entries = self.search(&mut ldap).await;
        let _ = ldap.unbind().await;
        entries
    }

    /// The paged search.
    async fn search(&self, ldap: &mut ldap3::Ldap) -> anyhow::Result<Vec<Entry>> {
        let s = &self.settings;
        let failed = |e: LdapError| match e {
            LdapError::LdapResult { result } => search_refused(s, &result),
            other => anyhow::anyhow!(
                "email_translation.ldap_url: {}: searching {}: {other}",
                s.url,
                s.base_dn
            ),
        };
        let adapters: Vec<Box<dyn Adapter<String, Vec<String>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE_SIZE)),
        ];
        let mut stream = ldap
            .with_timeout(OPERATION_TIMEOUT)
            .streaming_search_with(
                adapters,
                &s.base_dn,
                Scope::Subtree,
                &s.filter,
                s.attributes(),
            )
            .await
            .map_err(failed)?;
        let mut entries = Vec::new();
        while let Some(raw) = stream.next().await.map_err(failed)? {
            // ldap3 panics on an entry it cannot decode; the server's answer is input.
            let entry = std::panic::catch_unwind(AssertUnwindSafe(|| SearchEntry::construct(raw)))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "email_translation.ldap_url: {}: a search entry could not be decoded",
                        s.url
                    )
                })?;
            entries.push(Entry::of(entry, s));
        }
        let result = stream.finish().await;
        if result.rc != 0 {
            return Err(search_refused(s, &result));
        }
        Ok(entries)
    }
}

/// A bind the server refused, naming the setting: invalidCredentials (49) is a wrong
/// password or a DN that does not exist (servers do not say which).
fn bind_refused(url: &str, dn: &str, result: &LdapResult) -> String {
    let key = if result.rc == 49 {
        "ldap_bind_password"
    } else {
        "ldap_bind_dn"
    };
    let why = if result.rc == 49 {
        " (wrong password, or no such DN)"
    } else {
        ""
    };
    format!("email_translation.{key}: {url} refused the bind as {dn}{why}: {result}")
}

/// A search the server refused, naming the setting most likely at fault.
fn search_refused(s: &LdapSettings, result: &LdapResult) -> anyhow::Error {
    let (key, why) = match result.rc {
        32 => ("ldap_base_dn", format!("{} does not exist", s.base_dn)),
        50 => ("ldap_bind_dn", format!("no right to search {}", s.base_dn)),
        _ => ("ldap_base_dn", format!("searching {} failed", s.base_dn)),
    };
    anyhow::anyhow!("email_translation.{key}: {}: {why}: {result}", s.url)
}

/// The rustls configuration for ldaps: the ring provider, and the `ldap_ca` certificates or
/// the system's CA store.
fn tls_config(s: &LdapSettings) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca {
        Some(path) => {
            for cert in causeway_pki::load_certs(path).context("email_translation.ldap_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("email_translation.ldap_ca: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                warn!(module = LOG_MODULE, error = %e, "email directory: reading the system's CA store");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(causeway_pki::ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("email_translation.ldap_url: TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Warn about entries skipped now that were not skipped `before` (all of them at start).
fn log_skipped(now: &Snapshot, before: Option<&Snapshot>) {
    let new: Vec<&String> = now
        .skipped
        .iter()
        .filter(|m| before.is_none_or(|b| !b.skipped.contains(*m)))
        .collect();
    for m in new.iter().take(MAX_SKIP_WARNINGS) {
        warn!(module = LOG_MODULE, entry = %m, "email directory: LDAP entry skipped");
    }
    if new.len() > MAX_SKIP_WARNINGS {
        warn!(
            module = LOG_MODULE,
            more = new.len() - MAX_SKIP_WARNINGS,
            "email directory: more LDAP entries skipped"
        );
    }
}

/// A write guard, through poisoning (the data is replaced whole, never left half-written).
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Directory for LdapDirectory {
    fn by_jid(&self, jid: &str) -> Option<Arc<User>> {
        self.current().users.by_jid(jid)
    }

    fn by_email(&self, email: &str) -> Option<Arc<User>> {
        self.current().users.by_email(email)
    }

    fn describe(&self) -> String {
        let failing = self
            .failing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = format!(
            "LDAP {} {} ({} users)",
            self.settings.url,
            self.settings.base_dn,
            self.current().users.len()
        );
        if let Some(e) = failing {
            out.push_str(&format!("; refresh failing: {e}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::testing::locals;
    use crate::email::{EmailConfig, Source};

    /// A valid LDAP section: user IDs at example.com.
    fn section() -> EmailSection {
        EmailSection {
            enabled: true,
            source: Some(Source::Ldap),
            ldap_url: Some("ldap://ldap.example.com".into()),
            ldap_bind_dn: Some("cn=causeway,dc=example,dc=com".into()),
            ldap_bind_password: Some("s3cret".into()),
            ldap_base_dn: Some("ou=people,dc=example,dc=com".into()),
            ldap_jid_domain: Some("Example.COM".into()),
            ..EmailSection::default()
        }
    }

    fn settings(s: &EmailSection) -> LdapSettings {
        match EmailConfig::from_section(s, &locals()) {
            Ok(EmailConfig::Ldap(settings)) => *settings,
            other => panic!("{other:?}"),
        }
    }

    fn err(s: EmailSection) -> String {
        match LdapSettings::from_section(&s, &locals()) {
            Ok(settings) => panic!("accepted {settings:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn defaults_are_those_of_an_inet_org_person_directory() {
        let s = settings(&section());
        assert_eq!(s.url, "ldap://ldap.example.com");
        assert_eq!(s.base_dn, "ou=people,dc=example,dc=com");
        assert_eq!(s.filter, DEFAULT_FILTER);
        assert_eq!(s.email_attribute, "mail");
        assert_eq!(
            s.jid,
            JidSource::UserAtDomain {
                attribute: "uid".into(),
                domain: "example.com".into()
            }
        );
        assert_eq!(s.refresh, Some(Duration::from_secs(300)));
        assert_eq!(s.attributes(), ["uid", "mail"]);
        let bind = s.bind.expect("bind");
        assert_eq!(bind.dn, "cn=causeway,dc=example,dc=com");
        assert!(
            !format!("{bind:?}").contains("s3cret"),
            "the password is logged"
        );
        // Anonymous, a whole-JID attribute, ldaps, no refresh.
        let s = settings(&EmailSection {
            ldap_url: Some("LDAPS://ldap.example.com:636".into()),
            ldap_bind_dn: None,
            ldap_bind_password: None,
            ldap_jid_domain: None,
            ldap_jid_attribute: Some("msRTCSIP-PrimaryUserAddress".into()),
            ldap_refresh_seconds: Some(0),
            ..section()
        });
        assert!(s.bind.is_none());
        assert_eq!(
            s.jid,
            JidSource::Attribute("msRTCSIP-PrimaryUserAddress".into())
        );
        assert_eq!(s.refresh, None);
    }

    #[test]
    fn the_password_may_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("causeway-ldap-pw-{}", std::process::id()));
        std::fs::write(&path, "  from-the-file \nignored\n").expect("write");
        let s = settings(&EmailSection {
            ldap_bind_password: None,
            ldap_bind_password_file: Some(path.clone()),
            ..section()
        });
        let _ = std::fs::remove_file(&path);
        assert_eq!(s.bind.expect("bind").password, "from-the-file");
        let e = err(EmailSection {
            ldap_bind_password: None,
            ldap_bind_password_file: Some(path.clone()),
            ..section()
        });
        assert!(
            e.starts_with("email_translation.ldap_bind_password_file: ")
                && e.contains(&path.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn bad_settings_are_errors_naming_the_setting() {
        for (s, want) in [
            (
                EmailSection {
                    ldap_url: None,
                    ..section()
                },
                "email_translation.ldap_url: required with source = \"ldap\"",
            ),
            (
                EmailSection {
                    ldap_url: Some("http://ldap.example.com".into()),
                    ..section()
                },
                "email_translation.ldap_url: \"http://ldap.example.com\": the scheme must be ldap or ldaps",
            ),
            (
                EmailSection {
                    ldap_url: Some("ldap.example.com".into()),
                    ..section()
                },
                "email_translation.ldap_url: \"ldap.example.com\" is not an ldap:// or ldaps:// URL",
            ),
            (
                EmailSection {
                    ldap_url: Some("ldap://:389".into()),
                    ..section()
                },
                "email_translation.ldap_url: \"ldap://:389\": no host",
            ),
            (
                EmailSection {
                    directory: Some("users.csv".into()),
                    ..section()
                },
                "email_translation.directory: not used with source = \"ldap\"",
            ),
            (
                EmailSection {
                    ldap_base_dn: Some(" ".into()),
                    ..section()
                },
                "email_translation.ldap_base_dn: required",
            ),
            (
                EmailSection {
                    ldap_filter: Some("objectClass=person)".into()),
                    ..section()
                },
                "email_translation.ldap_filter: \"objectClass=person)\" is not an LDAP search filter",
            ),
            (
                EmailSection {
                    ldap_bind_password: None,
                    ..section()
                },
                "email_translation.ldap_bind_password: required with ldap_bind_dn",
            ),
            (
                EmailSection {
                    ldap_bind_dn: None,
                    ..section()
                },
                "email_translation.ldap_bind_dn: required with a bind password",
            ),
            (
                EmailSection {
                    ldap_bind_password: Some(String::new()),
                    ..section()
                },
                "email_translation.ldap_bind_password: empty",
            ),
            (
                EmailSection {
                    ldap_bind_password_file: Some("/x".into()),
                    ..section()
                },
                "email_translation.ldap_bind_password: set ldap_bind_password or ldap_bind_password_file, not both",
            ),
            (
                EmailSection {
                    ldap_jid_domain: None,
                    ..section()
                },
                "email_translation.ldap_jid_domain: required",
            ),
            (
                EmailSection {
                    ldap_jid_domain: Some("partner.test".into()),
                    ..section()
                },
                "email_translation.ldap_jid_domain: partner.test is not a local domain",
            ),
            (
                EmailSection {
                    ldap_jid_attribute: Some("jid".into()),
                    ..section()
                },
                "email_translation.ldap_jid_attribute: set it, or ldap_user_attribute and ldap_jid_domain, not both",
            ),
            (
                EmailSection {
                    ldap_user_attribute: Some("sAMAccount Name".into()),
                    ..section()
                },
                "email_translation.ldap_user_attribute: \"sAMAccount Name\" is not an LDAP attribute name",
            ),
            (
                EmailSection {
                    ldap_email_attribute: Some(String::new()),
                    ..section()
                },
                "email_translation.ldap_email_attribute: \"\" is not an LDAP attribute name",
            ),
            (
                EmailSection {
                    ldap_ca: Some("/nonexistent/ca.pem".into()),
                    ..section()
                },
                "email_translation.ldap_ca: only used with an ldaps:// URL",
            ),
            (
                EmailSection {
                    ldap_url: Some("ldaps://ldap.example.com".into()),
                    ldap_ca: Some("/nonexistent/ca.pem".into()),
                    ..section()
                },
                "email_translation.ldap_ca: /nonexistent/ca.pem",
            ),
        ] {
            let e = err(s);
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
        // An OID is an attribute name too.
        assert!(LdapSettings::from_section(
            &EmailSection {
                ldap_email_attribute: Some("0.9.2342.19200300.100.1.3".into()),
                ..section()
            },
            &locals()
        )
        .is_ok());
    }

    fn entry(dn: &str, jid: Option<&str>, email: Option<&str>) -> Entry {
        Entry {
            dn: dn.into(),
            jid: jid.map(str::to_owned),
            email: email.map(str::to_owned),
        }
    }

    #[test]
    fn entries_become_users_and_bad_ones_are_skipped_with_a_reason() {
        let s = settings(&section());
        let snap = Snapshot::build(
            vec![
                entry("uid=alice", Some("Alice"), Some("Alice.Smith@example.com")),
                entry("uid=erin", Some("erin"), Some("erin.jones@example.org")),
                entry("uid=dave", Some("dave"), None),
                entry("cn=printer", None, Some("printer@example.com")),
                entry("uid=ext", Some("ext"), Some("ext@gmail.test")),
                entry("uid=bad", Some("b d"), Some("bad@example.com")),
                entry("uid=self", Some("self"), Some("self@example.com")),
            ],
            &s,
        );
        assert_eq!(snap.entries, 7);
        assert_eq!(snap.without_email, 1);
        assert_eq!(snap.users.len(), 3);
        let alice = snap.users.by_jid("alice@example.com").expect("alice");
        assert_eq!(alice.email, "alice.smith@example.com");
        assert_eq!(
            snap.users
                .by_email("erin.jones@example.org")
                .map(|u| u.jid.clone()),
            Some("erin@example.com".into())
        );
        assert!(snap.users.by_jid("self@example.com").is_some());
        let skipped: Vec<&str> = snap.skipped.iter().map(String::as_str).collect();
        assert_eq!(
            skipped,
            [
                "LDAP entry cn=printer: no uid attribute",
                "LDAP entry uid=bad: JID \"b d@example.com\": not a valid XMPP address",
                "LDAP entry uid=ext: email address domain gmail.test is not a local domain (a [[domains]] name)",
            ]
        );
    }

    #[test]
    fn every_entry_claiming_a_shared_address_is_skipped() {
        let s = settings(&section());
        let snap = Snapshot::build(
            vec![
                // Two people with one mail address.
                entry("uid=a1", Some("a1"), Some("team@example.com")),
                entry("uid=a2", Some("a2"), Some("Team@example.com")),
                // One's mail address is another's JID.
                entry("uid=b", Some("b"), Some("c@example.com")),
                entry("uid=c", Some("c"), Some("c.other@example.com")),
                // Unaffected.
                entry("uid=d", Some("d"), Some("d.d@example.com")),
            ],
            &s,
        );
        assert_eq!(snap.users.len(), 1, "{snap:?}");
        assert!(snap.users.by_jid("d@example.com").is_some());
        let skipped: Vec<&str> = snap.skipped.iter().map(String::as_str).collect();
        assert_eq!(
            skipped,
            [
                "LDAP entry uid=a1: address team@example.com is also claimed by uid=a2",
                "LDAP entry uid=a2: address team@example.com is also claimed by uid=a1",
                "LDAP entry uid=b: address c@example.com is also claimed by uid=c",
                "LDAP entry uid=c: address c@example.com is also claimed by uid=b",
            ]
        );
    }

    #[test]
    fn a_jid_attribute_may_hold_a_uri() {
        let s = settings(&EmailSection {
            ldap_jid_domain: None,
            ldap_jid_attribute: Some("msRTCSIP-PrimaryUserAddress".into()),
            ..section()
        });
        let snap = Snapshot::build(
            vec![
                entry(
                    "cn=a",
                    Some("SIP:alice@example.com"),
                    Some("a.s@example.com"),
                ),
                entry(
                    "cn=e",
                    Some("xmpp:erin@example.com"),
                    Some("e.j@example.org"),
                ),
                entry("cn=d", Some("dave@example.com"), Some("d.d@example.com")),
            ],
            &s,
        );
        assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
        for jid in ["alice@example.com", "erin@example.com", "dave@example.com"] {
            assert!(snap.users.by_jid(jid).is_some(), "{jid}");
        }
        assert_eq!(strip_scheme("sipalice@example.com"), "sipalice@example.com");
        assert_eq!(strip_scheme("é"), "é");
    }

    #[test]
    fn refusals_name_the_setting() {
        let s = settings(&section());
        let result = |rc| LdapResult {
            rc,
            matched: String::new(),
            text: String::new(),
            refs: Vec::new(),
            ctrls: Vec::new(),
        };
        let e = bind_refused(&s.url, "cn=x", &result(49));
        assert!(
            e.starts_with(
                "email_translation.ldap_bind_password: ldap://ldap.example.com refused the bind as cn=x (wrong password, or no such DN): rc=49 (invalidCredentials)"
            ),
            "{e}"
        );
        assert!(bind_refused(&s.url, "cn=x", &result(53))
            .starts_with("email_translation.ldap_bind_dn: "));
        let e = search_refused(&s, &result(32)).to_string();
        assert!(
            e.starts_with("email_translation.ldap_base_dn: ldap://ldap.example.com: ou=people,dc=example,dc=com does not exist: rc=32"),
            "{e}"
        );
        assert!(search_refused(&s, &result(50))
            .to_string()
            .starts_with("email_translation.ldap_bind_dn: "));
    }
}
