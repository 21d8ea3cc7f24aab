//! core's local HTTP listener (`[metrics]`, crates/http): Prometheus text on `/metrics`,
//! `/healthz` from the loops core beats, and `/readyz`: ready while at least one edge tunnel
//! is up (with HA, one edge down leaves core ready) and every federated local domain has an
//! active IM&P node.

use std::net::SocketAddr;
use std::sync::Arc;

use causeway_app::metrics::MetricsSection;
use causeway_http::{Routes, Verdict};
use causeway_tunnel::TunnelState;

use crate::Core;

/// The listener's port when `[metrics]` gives no `listen` (on loopback).
pub const DEFAULT_PORT: u16 = 9465;

/// Serve the endpoints if `[metrics]` is configured; returns the bound address.
pub async fn serve(
    core: &Arc<Core>,
    section: Option<MetricsSection>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(section) = section else {
        return Ok(None);
    };
    let sources = crate::metrics::Sources::new(core);
    let judged = core.clone();
    let routes = Routes {
        metrics: Box::new(move || sources.snapshot().render()),
        health: core.heartbeats.clone(),
        ready: Box::new(move || readiness(&judged)),
    };
    Ok(Some(section.serve(DEFAULT_PORT, routes).await?))
}

/// One line for `systemctl status`: ready, or not and why.
pub fn summary(core: &Core) -> String {
    let verdict = readiness(core);
    if verdict.is_ok() {
        format!(
            "ready: {} of {} edge tunnels up",
            core.tunnel.connected(),
            core.tunnel.links().len()
        )
    } else {
        format!("not ready: {}", verdict.reasons.join("; "))
    }
}

/// Ready when an edge tunnel is up and every federated local domain has an active node.
pub fn readiness(core: &Core) -> Verdict {
    let mut reasons = Vec::new();
    if core.s2s.is_draining() {
        reasons.push(causeway_app::drain::REASON.to_owned());
    }
    let links = core.tunnel.links();
    if core.tunnel.connected() == 0 {
        let mut why = format!(
            "no edge tunnel is up ({} edge{} configured)",
            links.len(),
            if links.len() == 1 { "" } else { "s" }
        );
        let errors: Vec<String> = links
            .iter()
            .filter_map(|l| match l.tunnel.state() {
                TunnelState::Connecting {
                    last_error: Some(e),
                    ..
                } => Some(format!("{}: {e}", l.name)),
                _ => None,
            })
            .collect();
        if !errors.is_empty() {
            why.push_str(&format!("; last error: {}", errors.join("; ")));
        }
        reasons.push(why);
    }
    let domains = crate::servers::local_domains(core.discovery.nodes());
    if domains.is_empty() {
        reasons.push("no local domain is known (none configured or discovered)".to_owned());
    }
    for d in domains {
        let federated = d.node_state != "federation off";
        let active = d.node_status.iter().any(|n| n.state == "active");
        if federated && !active {
            reasons.push(format!(
                "{}: no active IM&P node ({})",
                d.name, d.node_state
            ));
        }
    }
    Verdict::from_reasons(reasons)
}
