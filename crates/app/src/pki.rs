//! `pki` subcommands shared by both binaries: lab certificates.

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
    }
}
