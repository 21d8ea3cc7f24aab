//! Live reconfiguration: read the config file again and apply what changed without dropping
//! sessions the new config still allows (Expressway restarts its connection manager for any
//! change). Triggered by SIGHUP and by the admin API.
//!
//! Applied live: privacy policy, static routes, DNS servers, security mode, certificates, CA
//! bundle and CRLs, required client certificates, SASL EXTERNAL, limits and timeouts, the
//! dialback secret, the outbound address filter, the verification caps, the cores' grants and
//! the traversal CA's CRLs (a connected core they revoke is cut off). Every live session
//! re-checks itself; those the new config forbids close with a stream error. Listen addresses
//! and the tunnel's other settings need a restart: the reload applies the rest and says so.

use std::sync::Mutex;

use anyhow::Context;
use tracing::info;

use crate::config::Validated;
use crate::{Edge, Rules, LOG_MODULE};

/// Reloads one at a time.
static RELOADING: Mutex<()> = Mutex::new(());

impl Edge {
    /// Re-read the config file and apply it. A config that does not load or validate (or whose
    /// certificates or DNS servers cannot be used) is refused and the running one is kept.
    /// Returns a one-line summary.
    pub async fn reload(&self) -> anyhow::Result<String> {
        let next = crate::config::load(&self.config_path)?;
        let _one_at_a_time = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
        let s2s_cfg = crate::s2s_config(&next).context("new config refused")?;
        let rules = Rules::from_config(&next).context("new config refused")?;
        // New tunnel connections use the files as they are now (a CA rotation, a renewal);
        // established sessions keep theirs. Refused here, nothing else is applied either.
        self.tunnel
            .set_tls(&crate::tunnel_tls(&next).context("new config refused")?)
            .context("new config refused: tunnel.cert, tunnel.key or tunnel.ca")?;
        crate::warn_shadowed(&rules.policy);
        let summary = summarize(&next, &rules);
        let restart = self.needs_restart(&next);
        self.host.set_rules(rules);
        self.host.reapply_grants(&self.s2s);
        self.s2s.reconfigure(s2s_cfg);
        let check = crate::tunnel_peer_check(next.tunnel_trust.clone());
        drop(_one_at_a_time);
        let cut = self.tunnel.set_peer_check(check).await;
        let summary = if cut.is_empty() {
            summary
        } else {
            format!(
                "{summary}; cores cut off (certificate revoked): {}",
                cut.join(", ")
            )
        };
        let summary = if restart.is_empty() {
            summary
        } else {
            format!(
                "{summary}; needs a restart to apply: {}",
                restart.join(", ")
            )
        };
        info!(module = LOG_MODULE, %summary, "configuration reloaded");
        Ok(summary)
    }

    /// Settings that changed but only take effect after a restart.
    fn needs_restart(&self, next: &Validated) -> Vec<&'static str> {
        let mut out = Vec::new();
        let (t, f) = (&next.raw.tunnel, &next.raw.federation);
        let (s2s, direct_tls, tunnel) = &self.listening.configured;
        if t.listen != *tunnel {
            out.push("tunnel.listen");
        }
        if f.listen != *s2s {
            out.push("federation.listen");
        }
        if f.direct_tls_listen != *direct_tls {
            out.push("federation.direct_tls_listen");
        }
        out
    }
}

fn summarize(next: &Validated, rules: &Rules) -> String {
    let f = &next.raw.federation;
    format!(
        "policy {:?} ({} allow, {} deny), {} static routes, security {:?}, require_client_certs {}, sasl_external {}, tunnel CRLs {}",
        rules.policy.mode,
        rules.policy.allow.len(),
        rules.policy.deny.len(),
        rules.routes.len(),
        f.security_mode,
        f.require_client_certs,
        f.sasl_external,
        next.tunnel_trust.as_ref().map_or(0, |t| t.crl_count()),
    )
}
