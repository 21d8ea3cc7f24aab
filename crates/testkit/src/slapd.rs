//! [`Slapd`]: OpenLDAP's slapd (Debian 2.5) serving a test directory on a loopback address.
//!
//! Its own `slapd.conf` (`-f`), an mdb database and pid file under a temporary directory, the
//! core, cosine and inetOrgPerson schemas; entries are loaded with `slapadd` before it starts
//! and changed with `ldapmodify` while it runs. It runs in the foreground (`-d stats`, which
//! logs every connection and operation) under a [`ChildGuard`]: stopped by pid on drop, never
//! through the system's service.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{wait_tcp_or_exit, ChildGuard};
use crate::util::{free_port, temp_dir, TempDir};
use crate::CertFiles;

/// The suffix of the test directory.
pub const BASE_DN: &str = "dc=example,dc=com";
/// Where [`person`] entries go.
pub const PEOPLE_DN: &str = "ou=people,dc=example,dc=com";
/// The directory's administrator (slapd's `rootdn`).
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
/// Its password.
pub const ADMIN_PASSWORD: &str = "slapd-admin-secret";

/// An inetOrgPerson entry under [`PEOPLE_DN`] as LDIF: `uid`, and `mail` when given.
pub fn person(uid: &str, mail: Option<&str>) -> String {
    let mut ldif = format!(
        "dn: uid={uid},{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
    );
    if let Some(m) = mail {
        let _ = writeln!(ldif, "mail: {m}");
    }
    ldif
}

/// A running slapd.
pub struct Slapd {
    /// `ldap://IP:PORT`.
    pub url: String,
    /// `ldaps://IP:PORT`, when started with a certificate.
    pub ldaps_url: Option<String>,
    guard: ChildGuard,
    /// Its configuration, data and log (removed on drop).
    _dir: TempDir,
}

impl std::fmt::Debug for Slapd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slapd")
            .field("url", &self.url)
            .field("ldaps_url", &self.ldaps_url)
            .finish()
    }
}

impl Slapd {
    /// Start slapd on `ip` (a free port) with the base entries ([`BASE_DN`], [`PEOPLE_DN`])
    /// and `entries` (LDIF records, e.g. from [`person`], separated by blank lines).
    pub fn start(ip: Ipv4Addr, entries: &[String]) -> Result<Self> {
        Self::start_with(ip, entries, None)
    }

    /// [`Slapd::start`], also serving ldaps with `cert` (a certificate for `ip`).
    pub fn start_with(ip: Ipv4Addr, entries: &[String], cert: Option<&CertFiles>) -> Result<Self> {
        if !ip.is_loopback() {
            bail!("Slapd only listens on loopback addresses, not {ip}");
        }
        let dir = temp_dir("cw-slapd-")?;
        let p = |name: &str| dir.path().join(name);
        fs::create_dir_all(p("data"))?;
        let mut conf = String::from(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\n",
        );
        let _ = writeln!(
            conf,
            "pidfile {}\nargsfile {}",
            p("slapd.pid").display(),
            p("slapd.args").display()
        );
        if let Some(c) = cert {
            let _ = writeln!(
                conf,
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}",
                c.cert_pem.display(),
                c.key_pem.display()
            );
        }
        let _ = writeln!(
            conf,
            "database mdb\nmaxsize 104857600\nsuffix \"{BASE_DN}\"\nrootdn \"{ADMIN_DN}\"\n\
             rootpw {ADMIN_PASSWORD}\ndirectory {}",
            p("data").display()
        );
        let config = p("slapd.conf");
        fs::write(&config, conf)?;
        let mut ldif = format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n\
             dc: example\n\ndn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n"
        );
        for e in entries {
            let _ = write!(ldif, "\n{}\n", e.trim_end());
        }
        let ldif_path = p("entries.ldif");
        fs::write(&ldif_path, ldif)?;
        run(
            Command::new("slapadd")
                .arg("-f")
                .arg(&config)
                .arg("-l")
                .arg(&ldif_path),
            "slapadd",
            None,
        )?;

        let addr = SocketAddr::from((ip, free_port(ip)));
        let url = format!("ldap://{addr}");
        let mut listen = vec![addr];
        let mut urls = format!("{url}/");
        let ldaps_url = cert.map(|_| {
            let tls = SocketAddr::from((ip, free_port(ip)));
            listen.push(tls);
            let _ = write!(urls, " ldaps://{tls}/");
            format!("ldaps://{tls}")
        });
        let mut cmd = Command::new("slapd");
        cmd.arg("-d")
            .arg("stats")
            .arg("-h")
            .arg(&urls)
            .arg("-f")
            .arg(&config);
        let mut guard = ChildGuard::spawn("slapd", cmd, &p("slapd.log"))?;
        wait_tcp_or_exit(&mut guard, &listen, Duration::from_secs(15), None)?;
        Ok(Self {
            url,
            ldaps_url,
            guard,
            _dir: dir,
        })
    }

    /// Apply an LDIF change record (`ldapmodify` as the administrator), e.g.
    /// `dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: mail\nmail: x@example.com\n`.
    pub fn modify(&self, ldif: &str) -> Result<()> {
        run(
            Command::new("ldapmodify")
                .arg("-x")
                .arg("-H")
                .arg(&self.url)
                .arg("-D")
                .arg(ADMIN_DN)
                .arg("-w")
                .arg(ADMIN_PASSWORD),
            "ldapmodify",
            Some(ldif),
        )
    }

    /// The last `n` lines of slapd's log (every connection and operation).
    pub fn log_tail(&self, n: usize) -> String {
        self.guard.log_tail(n)
    }

    /// Stop slapd now (also done on drop).
    pub fn stop(mut self) {
        self.guard.kill();
    }
}

/// Run a tool to completion, with `stdin` as its input; its output in the error when it fails.
fn run(cmd: &mut Command, name: &str, stdin: Option<&str>) -> Result<()> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_its_entries_and_applies_changes() {
        let ip = Ipv4Addr::new(127, 181, 0, 70);
        let slapd = Slapd::start(ip, &[person("alice", Some("alice.smith@example.com"))])
            .expect("slapd starts");
        let search = || {
            let out = Command::new("ldapsearch")
                .args([
                    "-x",
                    "-LLL",
                    "-H",
                    &slapd.url,
                    "-b",
                    BASE_DN,
                    "(uid=alice)",
                    "mail",
                ])
                .output()
                .expect("ldapsearch");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            search().contains("mail: alice.smith@example.com"),
            "{}",
            search()
        );
        slapd
            .modify(&format!(
                "dn: uid=alice,{PEOPLE_DN}\nchangetype: modify\nreplace: mail\nmail: a.s@example.com\n"
            ))
            .expect("ldapmodify");
        assert!(search().contains("mail: a.s@example.com"), "{}", search());
        let e = slapd
            .modify("dn: uid=nobody,dc=example,dc=com\nchangetype: delete\n")
            .expect_err("no such entry");
        assert!(format!("{e:#}").contains("ldapmodify failed"), "{e:#}");
    }
}
