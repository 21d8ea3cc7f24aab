//! The edge's local HTTP listener (`[metrics]`, crates/http): Prometheus text on `/metrics`,
//! `/healthz` from the loops the edge beats, and `/readyz`: ready while XMPP federation is
//! Active, with the reasons of `edge status` when it is not.

use std::net::SocketAddr;
use std::sync::Arc;

use causeway_app::metrics::MetricsSection;
use causeway_http::{Routes, Verdict};

use crate::Edge;

/// The listener's port when `[metrics]` gives no `listen` (on loopback).
pub const DEFAULT_PORT: u16 = 9464;

/// Serve the endpoints if `[metrics]` is configured; returns the bound address.
pub async fn serve(
    edge: &Arc<Edge>,
    section: Option<MetricsSection>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(section) = section else {
        return Ok(None);
    };
    let sources = crate::metrics::Sources::new(edge);
    let judged = edge.clone();
    let routes = Routes {
        metrics: Box::new(move || sources.snapshot().render()),
        health: edge.heartbeats.clone(),
        ready: Box::new(move || readiness(&judged)),
    };
    Ok(Some(section.serve(DEFAULT_PORT, routes).await?))
}

/// Ready when federation is Active: a core is connected and local domains are known (the
/// reasons of `edge status` otherwise).
pub fn readiness(edge: &Edge) -> Verdict {
    let status = crate::admin::status(edge);
    let reasons = status
        .edge
        .and_then(|e| e.federation)
        .map(|f| f.reasons)
        .unwrap_or_else(|| vec!["no status".to_owned()]);
    Verdict::from_reasons(reasons)
}
