//! The `core` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Causeway core: the inside half of the XMPP federation gateway pair.
#[derive(Debug, Parser)]
#[command(name = "core", version = causeway_app::cli::VERSION, about, after_help = causeway_app::cli::EXIT_STATUS)]
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
    /// Validate a config file and exit (0 when valid, 1 when not), printing its warnings.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "/etc/causeway/core.toml")]
        config: PathBuf,
        /// One JSON object: config, valid, warnings, error.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon how it is doing.
    ///
    /// Exit code 0: the tunnel to every edge is connected; 2: one is not; 1: the daemon cannot
    /// be reached.
    Status(causeway_app::admin::DaemonArgs),
    /// List the running daemon's s2s sessions with the IM&P nodes.
    Connections(causeway_app::admin::DaemonArgs),
    /// Make the running daemon apply its config file again (exit code 0: applied, 1: refused).
    Reload(causeway_app::admin::DaemonArgs),
    /// Drain the running daemon without stopping it, before a restart: stop accepting, route
    /// the tunnel's other side around it, close sessions, hand over what is queued (exit code
    /// 0: everything handed over within [tunnel] drain_secs; 1: not). Restart it to resume.
    Drain(causeway_app::admin::DaemonArgs),
    /// List the IM&P clusters: their nodes (active or inactive, last error, last probe) and
    /// chat node aliases. Exit code 0; 1 when the daemon cannot be reached.
    Servers {
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: causeway_app::admin::DaemonArgs,
        /// Run discovery now (DNS SRV, XEP-0030), print what changed and apply it.
        #[arg(long)]
        refresh: bool,
    },
    /// Lab certificates.
    Pki {
        /// What to generate.
        #[command(subcommand)]
        command: causeway_app::pki::PkiCommand,
    },
    /// Certificate signing requests with the names of the config file.
    Cert {
        /// What to do.
        #[command(subcommand)]
        command: causeway_app::cert::CertCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: causeway_app::cli::Shell,
    },
    /// Write the man pages (one per command, section 1) into a directory.
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
}

/// The process's command line; a usage error exits 64, help and `--version` 0.
pub fn parse() -> Cli {
    causeway_app::cli::parse()
}

/// Run one parsed command line (used by main).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config, json } => {
            let outcome = crate::config::load(&config).map(|cfg| crate::config::warnings(&cfg));
            causeway_app::admin::finish(causeway_app::cli::check_report(&config, outcome, json))
        }
        Command::Run { config } => {
            let cfg = crate::config::load(&config)?;
            let admin_section = cfg.raw.admin.clone();
            let admin_view = crate::admin::ConfigView::of(&cfg);
            causeway_app::init_logging(&cfg.raw.log.format, &cfg.raw.log.level)?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let metrics = cfg.raw.metrics.clone();
            let core = crate::start(cfg, async move {
                let _ = stop_rx.await;
            })
            .await?;
            let core = std::sync::Arc::new(core);
            crate::http::serve(&core, metrics).await?;
            let admin_api = crate::admin::CoreAdmin::new(core.clone(), admin_view);
            let admin = admin_api.serve(&admin_section).await?;
            causeway_app::announce_ready(
                "core",
                serde_json::json!({
                    "s2s": core.s2s_addr.to_string(),
                    "admin": admin.socket().display().to_string(),
                }),
            );
            causeway_app::systemd::ready(&crate::http::summary(&core));
            let summarised = core.clone();
            causeway_app::systemd::supervise(&core.heartbeats, move || {
                crate::http::summary(&summarised)
            });
            // Through the admin API's reload: status then shows the domains it applied.
            let reloader = admin_api.clone();
            causeway_app::reload_on_sighup(move || {
                let core = reloader.clone();
                async move { core.reload().await }
            });
            causeway_app::shutdown_signal().await;
            causeway_app::stop_draining(core.drain()).await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(());
            drop(admin);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Ok(())
        }
        Command::Status(args) => {
            causeway_app::admin::finish(crate::admin::status_command(&args).await?)
        }
        Command::Connections(args) => causeway_app::admin::finish(
            causeway_app::admin::connections_command(&crate::admin::DAEMON, &args).await?,
        ),
        Command::Reload(args) => causeway_app::admin::finish(
            causeway_app::admin::reload_command(&crate::admin::DAEMON, &args).await?,
        ),
        Command::Drain(args) => causeway_app::admin::finish(
            causeway_app::admin::drain_command(&crate::admin::DAEMON, &args).await?,
        ),
        Command::Servers { daemon, refresh } => {
            causeway_app::admin::finish(crate::servers::servers_command(&daemon, refresh).await?)
        }
        Command::Pki { command } => causeway_app::pki::run(command),
        Command::Completions { shell } => {
            causeway_app::cli::print_completions::<Cli>(shell, "core");
            Ok(())
        }
        Command::Man { dir } => causeway_app::cli::write_man_pages::<Cli>(&dir),
        Command::Cert { command } => causeway_app::cert::run(
            &causeway_app::cert::CertContext {
                binary: "core",
                default_stem: "core-s2s",
                names: crate::config::certificate_names,
            },
            command,
        ),
    }
}
