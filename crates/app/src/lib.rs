//! Plumbing shared by the `edge` and `core` daemons: logging set-up, secrets from config,
//! the machine-readable ready line, shutdown signals, and the local admin API ([`admin`]).

use std::path::Path;

use anyhow::{bail, Context};

pub mod admin;
pub mod cert;
pub mod cli;
pub mod drain;
pub mod metrics;
pub mod pki;
pub mod systemd;

/// The default of `[tunnel] drain_secs`: how long a planned stop may take to hand over.
pub const DEFAULT_DRAIN_SECS: u64 = 30;

/// `[tunnel] drain_secs` checked: 1 to 600.
pub fn drain_within(secs: u64) -> anyhow::Result<std::time::Duration> {
    if !(1..=600).contains(&secs) {
        bail!("tunnel.drain_secs: {secs} is not between 1 and 600");
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// Install the global tracing subscriber: text or JSON to stderr, filtered by `level` (an
/// env-filter directive) unless `RUST_LOG` is set.
pub fn init_logging(format: &str, level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .with_context(|| format!("log.level {level:?}"))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("logging: {e}"))
}

/// A secret setting `name` given inline (as is) or as `name_file` (the file's first line,
/// trimmed), not both; `None` when neither is set. `section` names the config section for errors.
pub fn secret_setting(
    section: &str,
    name: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("{section}.{name}: set {name} or {name}_file, not both"),
        (Some(s), None) => Ok(Some(s.to_owned())),
        (None, Some(p)) => Ok(Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("{section}.{name}_file: {}", p.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// The dialback secret of `section`, inline or in a file (see [`secret_setting`]), trimmed: it
/// must be set and at least 16 bytes.
pub fn resolve_secret(
    section: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<String> {
    let Some(secret) = secret_setting(section, "dialback_secret", inline, file)? else {
        bail!("{section}.dialback_secret: missing (or dialback_secret_file)");
    };
    let secret = secret.trim().to_owned();
    if secret.len() < 16 {
        bail!("{section}.dialback_secret: at least 16 characters");
    }
    Ok(secret)
}

/// The previous dialback secret of `section` during a rollover (inline or in a file, see
/// [`secret_setting`]): optional; at least 16 characters and not the current one.
pub fn previous_secret(
    section: &str,
    inline: Option<&str>,
    file: Option<&Path>,
    current: &str,
) -> anyhow::Result<Option<String>> {
    let Some(previous) = secret_setting(section, "dialback_secret_previous", inline, file)?
        .map(|s| s.trim().to_owned())
    else {
        return Ok(None);
    };
    if previous.len() < 16 {
        bail!("{section}.dialback_secret_previous: at least 16 characters");
    }
    if previous == current {
        bail!("{section}.dialback_secret_previous: the same as dialback_secret; remove it, or set the new secret");
    }
    Ok(Some(previous))
}

/// Print the one machine-readable line tests and supervisors wait for, on stdout.
pub fn announce_ready(binary: &str, fields: serde_json::Value) {
    let mut obj = serde_json::json!({ "event": "ready", "binary": binary });
    if let (Some(o), serde_json::Value::Object(extra)) = (obj.as_object_mut(), fields) {
        o.extend(extra);
    }
    println!("{obj}");
}

/// Call `reload` on every SIGHUP (in a task of its own), logging what it says: a refused
/// reload leaves the running config in place.
pub fn reload_on_sighup<F, Fut>(reload: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<String>> + Send,
{
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through the admin API only");
            return;
        };
        while hup.recv().await.is_some() {
            match reload().await {
                Ok(summary) => tracing::info!(%summary, "config reloaded (SIGHUP)"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "config reload refused; the running config stays")
                }
            }
        }
    });
}

/// A planned stop has begun (the first SIGINT or SIGTERM): tell systemd, and run `drain`,
/// which a second signal cuts short.
pub async fn stop_draining<F: std::future::Future>(drain: F) {
    systemd::stopping();
    tracing::info!("stopping: draining first (a second SIGTERM or SIGINT stops at once)");
    tokio::select! {
        _ = drain => {}
        _ = shutdown_signal() => tracing::warn!("drain cut short by a second signal"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules() {
        assert!(resolve_secret("s", None, None).is_err());
        assert!(resolve_secret("s", Some("short"), None).is_err());
        assert!(resolve_secret("s", Some("0123456789abcdef"), Some(Path::new("/x"))).is_err());
        let ok = resolve_secret("s", Some(" 0123456789abcdef \n"), None);
        assert_eq!(ok.ok().as_deref(), Some("0123456789abcdef"));
        let missing = resolve_secret("fed", None, Some(Path::new("/nonexistent/secret")));
        let msg = format!(
            "{:#}",
            missing.err().map(|e| e.to_string()).unwrap_or_default()
        );
        assert!(msg.contains("fed.dialback_secret_file"), "{msg}");
    }
}
