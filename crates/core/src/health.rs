//! Health of the IM&P nodes: every node is probed every `discovery.health_secs`.
//!
//! A probe is s2s reachability: TCP connect, our stream header (to one of the node's domains,
//! from the probe domain), the node's header and stream features back, then a clean close, all
//! within `discovery.probe_timeout_secs`. A node that answers is active; one that refuses, does
//! not answer in time (a stopped process still accepts TCP: the header never comes), or sends a
//! stream error (e.g. `<host-unknown/>`) is inactive, with the reason kept as its last error.
//! When a node turns inactive, core closes its s2s sessions with it, so queued and new stanzas
//! go to an active node at once; a node that comes back is used again for new sessions.

use std::net::SocketAddr;
use std::time::Duration;

use causeway_s2s::{S2s, XmlConn, LOG_MODULE};
use causeway_xmpp::{ns, Event, Limits, StreamHeader};
use tracing::{info, warn};

use crate::discovery::DiscoverySettings;
use crate::nodes::{NodeState, NodeTable};

/// Probe one node: is it answering s2s for `domain`?
pub async fn probe(
    addr: SocketAddr,
    domain: &str,
    from: &str,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, exchange(addr, domain, from)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no s2s stream header from {addr} within {}s",
            timeout.as_secs()
        )),
    }
}

async fn exchange(addr: SocketAddr, domain: &str, from: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut conn = XmlConn::new(tcp, Limits::default()).map_err(|e| e.to_string())?;
    let ours = StreamHeader {
        to: Some(domain.to_owned()),
        from: Some(from.to_owned()),
        version: Some("1.0".into()),
        default_ns: ns::SERVER.into(),
        ..Default::default()
    };
    conn.send(ours.to_xml().as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let theirs = match conn.next_event().await {
        Ok(Event::StreamOpen(h)) => h,
        Ok(_) => return Err(format!("{addr} sent no stream header")),
        Err(e) => return Err(format!("{addr}: {e}")),
    };
    if theirs.version.as_deref() == Some("1.0") {
        match conn.next_event().await {
            Ok(Event::Element(tl)) if tl.element.is("error", ns::STREAM) => {
                let (cond, text) = causeway_xmpp::error::parse_stream_error(&tl.element);
                return Err(format!(
                    "{addr} refused a stream to {domain}: {} {}",
                    cond.as_str(),
                    text.unwrap_or_default()
                ));
            }
            Ok(Event::Element(_)) => {}
            Ok(_) => return Err(format!("{addr} closed the stream without features")),
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let _ = conn
        .send(causeway_xmpp::stream::STREAM_CLOSE.as_bytes())
        .await;
    conn.shutdown().await;
    Ok(())
}

/// Probe every node of the table at once and record the results; log state changes and close
/// the sessions of nodes that turned inactive.
pub async fn probe_all(table: &NodeTable, s2s: &S2s, settings: &DiscoverySettings) {
    let targets = table.probe_targets();
    let probes = targets.iter().map(|(addr, domain)| {
        probe(
            *addr,
            domain,
            &settings.probe_domain,
            settings.probe_timeout,
        )
    });
    let results = futures::future::join_all(probes).await;
    for ((addr, domain), result) in targets.into_iter().zip(results) {
        let Some(t) = table.record_probe(addr, result) else {
            continue;
        };
        match t.state {
            NodeState::Active => {
                info!(module = LOG_MODULE, node = %addr, domain = %domain, "IM&P node is active")
            }
            NodeState::Inactive => {
                let closed = s2s.close_sessions_with(addr);
                warn!(module = LOG_MODULE, node = %addr, domain = %domain, error = %t.error.unwrap_or_default(), sessions_closed = closed, "IM&P node is inactive: its traffic goes to the other nodes of its cluster");
            }
        }
    }
}
