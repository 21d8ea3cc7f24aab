//! `pki` subcommands shared by both binaries: lab certificates, and revoking a core's
//! traversal certificate.

use std::path::PathBuf;

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
