//! The `core` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Causeway core: the inside half of the XMPP federation gateway pair.
#[derive(Debug, Parser)]
#[command(name = "core", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "/etc/causeway/core.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit (0 when valid).
    Check {
        /// Config file.
        #[arg(short, long, default_value = "/etc/causeway/core.toml")]
        config: PathBuf,
    },
    /// Lab certificates.
    Pki {
        /// What to generate.
        #[command(subcommand)]
        command: causeway_app::pki::PkiCommand,
    },
}

/// Run one parsed command line (used by main).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            crate::config::load(&config)?;
            println!("{}: OK", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let cfg = crate::config::load(&config)?;
            causeway_app::init_logging(&cfg.raw.log.format, &cfg.raw.log.level)?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let core = crate::start(cfg, async move {
                let _ = stop_rx.await;
            })
            .await?;
            causeway_app::announce_ready(
                "core",
                serde_json::json!({ "s2s": core.s2s_addr.to_string() }),
            );
            let core = std::sync::Arc::new(core);
            let reloader = core.clone();
            causeway_app::reload_on_sighup(move || {
                let core = reloader.clone();
                async move { core.reload().await }
            });
            causeway_app::shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Ok(())
        }
        Command::Pki { command } => causeway_app::pki::run(command),
    }
}
