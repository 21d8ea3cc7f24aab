//! `cert` subcommands shared by both binaries (certificate signing requests whose names come
//! from the daemon's own config file), and the expiry/coverage check of our certificates.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

/// Certificates within this many days of expiry are warned about.
pub const WARN_DAYS: u32 = 30;

/// `edge cert ...` / `core cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a private key (mode 0600) and a PKCS#10 certificate signing request (PEM) whose
    /// subject alternative names are taken from the config file: the edge's FQDN, XMPP
    /// federation domains and chat node aliases; core's FQDN (core.id) and chat node aliases.
    Csr {
        /// The config file the daemon runs with (default /etc/causeway/<binary>.toml). Only
        /// parsed: the files it names need not exist yet.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Directory for `<name>.key` and `<name>.csr` (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// File name stem (default: edge-federation on the edge, core-s2s on core).
        #[arg(long)]
        name: Option<String>,
        /// The server's FQDN: the subject CN and first name (default: federation.fqdn on the
        /// edge, core.id on core).
        #[arg(long)]
        fqdn: Option<String>,
        /// More names to cover, after those of the config (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Also put the domains and chat node aliases in as XmppAddr (id-on-xmppAddr) names.
        #[arg(long)]
        xmpp_addr: bool,
        /// Overwrite an existing key and request.
        #[arg(long)]
        force: bool,
        /// A request for the traversal tunnel instead: the one name the tunnel checks (the
        /// edge's FQDN, core's [tunnel] edge_name; core.id for core), file stem
        /// edge-tunnel / core-tunnel. Sign it with `edge pki sign`.
        #[arg(long)]
        tunnel: bool,
    },
}

/// The names a daemon's certificate must carry, as its config says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The server's own FQDN, if configured.
    pub fqdn: Option<String>,
    /// XMPP domains.
    pub domains: Vec<String>,
    /// Chat node aliases (MUC services).
    pub aliases: Vec<String>,
}

impl CertNames {
    /// Domains, then aliases, without duplicates (the names that may be XmppAddrs).
    pub fn xmpp_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.domains.iter().chain(&self.aliases) {
            push_unique(&mut out, n);
        }
        out
    }

    /// The FQDN first, then domains and aliases, without duplicates.
    pub fn all(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.fqdn.iter().chain(&self.domains).chain(&self.aliases) {
            push_unique(&mut out, n);
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, n: &str) {
    let n = n.trim().trim_end_matches('.');
    if !n.is_empty() && !list.iter().any(|x| x.eq_ignore_ascii_case(n)) {
        list.push(n.to_string());
    }
}

/// What a binary tells [`run`] about itself.
pub struct CertContext {
    /// `edge` or `core`.
    pub binary: &'static str,
    /// The default file stem of `cert csr`.
    pub default_stem: &'static str,
    /// Read the names from a config file.
    pub names: fn(&Path) -> anyhow::Result<CertNames>,
}

/// Run a `cert` subcommand.
pub fn run(ctx: &CertContext, command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Csr {
            config,
            out,
            name,
            fqdn,
            domains,
            xmpp_addr,
            force,
            tunnel,
        } => {
            let config = config
                .unwrap_or_else(|| PathBuf::from(format!("/etc/causeway/{}.toml", ctx.binary)));
            let mut names = (ctx.names)(&config)?;
            if let Some(f) = fqdn {
                names.fqdn = Some(f);
            }
            names.domains.extend(domains);
            let tunnel_stem = format!("{}-tunnel", ctx.binary);
            let name = if tunnel {
                names.domains.clear();
                names.aliases.clear();
                if names.fqdn.is_none() {
                    bail!("--tunnel: give the name the tunnel checks with --fqdn (core's [tunnel] edge_name)");
                }
                name.or(Some(tunnel_stem))
            } else {
                name
            };
            let all = names.all();
            let Some(cn) = names.fqdn.clone().or_else(|| all.first().cloned()) else {
                bail!(
                    "{}: no names to certify: set the FQDN (--fqdn) or domains (--domain)",
                    config.display()
                );
            };
            let xmpp = if xmpp_addr {
                names.xmpp_names()
            } else {
                Vec::new()
            };
            let (csr_pem, key_pem) = causeway_pki::csr(&all, &xmpp, &cn)?;
            let stem = name.as_deref().unwrap_or(ctx.default_stem);
            if stem.is_empty() || stem.contains('/') {
                bail!("--name {stem:?}: a file name stem, without a directory");
            }
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            let key_path = out.join(format!("{stem}.key"));
            let csr_path = out.join(format!("{stem}.csr"));
            if !force {
                for p in [&key_path, &csr_path] {
                    if p.exists() {
                        bail!("{} exists (use --force to replace it)", p.display());
                    }
                }
            }
            write_file(&key_path, &key_pem, true)?;
            write_file(&csr_path, &csr_pem, false)?;
            println!("private key: {} (mode 0600)", key_path.display());
            println!("request:     {}", csr_path.display());
            println!("subject:     CN={cn}");
            println!("DNS names:   {}", all.join(", "));
            if !xmpp.is_empty() {
                println!("XmppAddrs:   {}", xmpp.join(", "));
            }
            Ok(())
        }
    }
}

/// Create or replace `path`; `private` files get mode 0600 (also when they existed).
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{}", path.display()))?;
    }
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}", path.display()))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Warnings about the certificate (leaf of the chain) in `cert_path`, each naming the file: not
/// yet valid, expired or expiring within `warn_days` days, or not covering one of `names`
/// (RFC 6125 / XEP-0178 matching). Empty when all is well; an unreadable file gives one
/// warning.
pub fn certificate_warnings(cert_path: &Path, names: &[String], warn_days: u32) -> Vec<String> {
    let certs = match causeway_pki::load_certs(cert_path) {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    let Some(leaf) = certs.first() else {
        return vec![format!("{}: no certificate", cert_path.display())];
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    causeway_pki::cert_warnings(leaf.as_ref(), &names, now_unix(), warn_days)
        .into_iter()
        .map(|w| format!("{}: {w}", cert_path.display()))
        .collect()
}

/// Log [`certificate_warnings`] (with [`WARN_DAYS`]) of each `(certificate file, names it must
/// cover)` at warn level; returns how many there were.
pub fn log_certificate_warnings<P: AsRef<Path>>(
    checks: impl IntoIterator<Item = (P, Vec<String>)>,
) -> usize {
    let mut n = 0;
    for (path, names) in checks {
        for w in certificate_warnings(path.as_ref(), &names, WARN_DAYS) {
            tracing::warn!("{w}");
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("causeway-app-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }

    #[test]
    fn names_order_and_dedup() {
        let n = CertNames {
            fqdn: Some("edge.example.com".into()),
            domains: vec!["example.com".into(), "Example.com.".into()],
            aliases: vec!["conference.example.com".into(), "example.com".into()],
        };
        assert_eq!(
            n.all(),
            ["edge.example.com", "example.com", "conference.example.com"]
        );
        assert_eq!(n.xmpp_names(), ["example.com", "conference.example.com"]);
    }

    #[test]
    fn expiring_and_uncovering_certificates_are_named() {
        let dir = temp_dir("certwarn");
        let ca = causeway_pki::generate_ca("Warn CA").expect("ca");
        let soon = causeway_pki::issue(
            &ca,
            &["example.com"],
            causeway_pki::Usage::ServerAndClient,
            10,
        )
        .expect("leaf");
        let path = dir.join("soon.crt");
        std::fs::write(&path, &soon.cert_pem).expect("write");
        let names = vec!["example.com".to_string(), "chat.example.com".to_string()];
        let w = certificate_warnings(&path, &names, WARN_DAYS);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(&format!("{}: ", path.display())),
            "names the file: {w:?}"
        );
        assert!(w[0].contains("certificate expires in "), "{w:?}");
        assert!(w[1].contains("does not cover chat.example.com"), "{w:?}");

        let fine = causeway_pki::issue(
            &ca,
            &["example.com"],
            causeway_pki::Usage::ServerAndClient,
            365,
        )
        .expect("leaf");
        let ok = dir.join("fine.crt");
        std::fs::write(&ok, &fine.cert_pem).expect("write");
        assert!(certificate_warnings(&ok, &names[..1], WARN_DAYS).is_empty());
        assert_eq!(log_certificate_warnings([(&ok, names.clone())]), 1);

        let missing = certificate_warnings(&dir.join("missing.crt"), &names, WARN_DAYS);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("missing.crt"), "{missing:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csr_files_from_config_names() {
        let dir = temp_dir("csr");
        let ctx = CertContext {
            binary: "edge",
            default_stem: "edge-federation",
            names: |_| {
                Ok(CertNames {
                    fqdn: Some("edge.example.com".into()),
                    domains: vec!["example.com".into()],
                    aliases: vec!["conference.example.com".into()],
                })
            },
        };
        let cmd = |force| CertCommand::Csr {
            config: Some(dir.join("edge.toml")),
            out: dir.clone(),
            name: None,
            fqdn: None,
            domains: vec!["extra.example.com".into()],
            xmpp_addr: true,
            force,
            tunnel: false,
        };
        run(&ctx, cmd(false)).expect("csr");
        let key = dir.join("edge-federation.key");
        let csr = std::fs::read_to_string(dir.join("edge-federation.csr")).expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&key).expect("key");
        assert!(run(&ctx, cmd(false)).is_err(), "refuses to overwrite");
        assert_eq!(std::fs::read(&key).expect("key"), before);
        run(&ctx, cmd(true)).expect("forced");
        assert_ne!(std::fs::read(&key).expect("key"), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
