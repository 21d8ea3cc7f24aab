//! `pki` subcommands shared by both binaries: lab certificates; the production traversal
//! PKI (a CA made offline, tunnel certificates issued from CSRs); revoking a core's traversal
//! certificate.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

/// `edge pki ...` / `core pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Generate a lab PKI: traversal CA and mTLS pair, federation certificate.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Names in the edge's traversal certificate (its FQDN first).
        #[arg(long = "edge-name", required = true)]
        edge_names: Vec<String>,
        /// The core's name (its traversal client certificate and core_id).
        #[arg(long = "core-name")]
        core_name: String,
        /// Federated domains and chat node aliases for the edge's federation certificate.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Names for core's internal s2s certificate.
        #[arg(long = "core-s2s-name")]
        core_s2s_names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create the traversal CA for production, on an offline machine: traversal-ca.crt
    /// (give it to the edges and cores: tunnel.ca) and traversal-ca.key (mode 0600; keep it
    /// offline). Ten years, ECDSA P-256, signs leaves only.
    Ca {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Causeway traversal CA")]
        name: String,
        /// The organisation in its subject.
        #[arg(long, default_value = "Causeway")]
        organization: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a tunnel certificate from a CSR (`edge cert csr --tunnel`, `core cert csr
    /// --tunnel`) with the traversal CA: the request's names, serverAuth for an edge,
    /// clientAuth for a core. Writes the certificate and the CA's after it (PEM).
    Sign {
        /// The CA's certificate (PEM).
        #[arg(long = "ca-cert")]
        ca_cert: PathBuf,
        /// The CA's private key (PEM).
        #[arg(long = "ca-key")]
        ca_key: PathBuf,
        /// The certificate signing request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Whose certificate: `edge` (server) or `core` (client).
        #[arg(long, value_parser = ["edge", "core"])]
        role: String,
        /// Days of validity.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Where to write the certificate chain.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke certificates issued by the traversal CA (a core's, say): add them to the CRL
    /// file the edge loads (`tunnel.crl`), creating it if needed; then `edge reload`.
    Revoke {
        /// The CA's certificate (PEM).
        #[arg(long = "ca-cert")]
        ca_cert: PathBuf,
        /// The CA's private key (PEM).
        #[arg(long = "ca-key")]
        ca_key: PathBuf,
        /// The CRL file to update (PEM; kept entries stay revoked).
        #[arg(long)]
        crl: PathBuf,
        /// The certificates to revoke (PEM files); none: re-sign the CRL with fresh dates.
        certs: Vec<PathBuf>,
    },
}

/// Run a `pki` subcommand.
pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            edge_names,
            core_name,
            domains,
            core_s2s_names,
            force,
        } => {
            let e: Vec<&str> = edge_names.iter().map(String::as_str).collect();
            let d: Vec<&str> = domains.iter().map(String::as_str).collect();
            let mut c: Vec<&str> = core_s2s_names.iter().map(String::as_str).collect();
            if c.is_empty() {
                c.push(&core_name);
            }
            let written = causeway_pki::lab_init(&dir, &e, &core_name, &d, &c, force)?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
        PkiCommand::Ca {
            dir,
            name,
            organization,
            force,
        } => {
            let ca = causeway_pki::generate_ca_for(&name, &organization)?;
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            let (cert, key) = (dir.join("traversal-ca.crt"), dir.join("traversal-ca.key"));
            if !force && (cert.exists() || key.exists()) {
                bail!("{} exists (use --force to replace it)", cert.display());
            }
            crate::cert::write_file(&key, &ca.key_pem, true)?;
            crate::cert::write_file(&cert, &ca.cert_pem, false)?;
            println!("{}\n{}", cert.display(), key.display());
            println!(
                "keep {} offline: it signs every tunnel certificate",
                key.display()
            );
            Ok(())
        }
        PkiCommand::Sign {
            ca_cert,
            ca_key,
            csr,
            role,
            days,
            out,
        } => {
            let text =
                |p: &PathBuf| std::fs::read_to_string(p).with_context(|| p.display().to_string());
            let ca = causeway_pki::CertPair {
                cert_pem: text(&ca_cert)?,
                key_pem: text(&ca_key)?,
            };
            let usage = if role == "edge" {
                causeway_pki::Usage::Server
            } else {
                causeway_pki::Usage::Client
            };
            let cert = causeway_pki::sign_csr(&ca, &text(&csr)?, usage, days)
                .with_context(|| csr.display().to_string())?;
            crate::cert::write_file(&out, &format!("{cert}{}", ca.cert_pem), false)?;
            let names = causeway_pki::load_certs(&out)
                .ok()
                .and_then(|c| c.first().and_then(|d| causeway_pki::cert_names(d).ok()))
                .unwrap_or_default();
            println!(
                "{}: {role} certificate for {}, {days} days",
                out.display(),
                names.join(", ")
            );
            Ok(())
        }
        PkiCommand::Revoke {
            ca_cert,
            ca_key,
            crl,
            certs,
        } => {
            let r = causeway_pki::revoke(&ca_cert, &ca_key, &crl, &certs)?;
            println!(
                "{}: {} newly revoked, {} in all; run `edge reload` to apply",
                crl.display(),
                r.added,
                r.total
            );
            Ok(())
        }
    }
}
