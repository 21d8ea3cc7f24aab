//! core's tunnels to its edges: one [`CoreTunnel`] per configured edge, all announcing the same
//! hello (high availability).
//!
//! * **Outbound** (an IM&P node -> federation): each stanza goes to one edge chosen by its
//!   `(from_domain, to_domain)` pair, by rendezvous hashing over the edges whose tunnel is
//!   connected ([`causeway_tunnel::ha::pick`]): a pair's s2s session stays on one edge, pairs
//!   spread over the edges, and when an edge goes away only its pairs move. With no edge
//!   connected the hash runs over every edge, and the stanza waits in that edge's replay window
//!   as it would with one edge.
//! * **Failover**: an edge that stays disconnected for a grace period (three times the
//!   keepalive, [`TunnelOptions::dead_after`]) while another edge is connected is taken for
//!   gone: the stanzas left unacknowledged in its window are taken back
//!   ([`CoreTunnel::take_unacked`]) and sent again through the connected edges. An edge that
//!   had delivered some of them without its acknowledgement reaching core (acks are batched,
//!   at most 20 ms late) makes those arrive twice; nothing is lost.
//!   [`causeway_tunnel::ha::Failover`] is the pure bookkeeping of when to do that.
//! * **Inbound**: the stanzas of every edge's tunnel are merged into one receiver for core's
//!   inbound pump.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use causeway_s2s::LOG_MODULE;
use causeway_tunnel::ha::{self, Failover};
use causeway_tunnel::{
    CoreHello, CoreTunnel, CoreTunnelConfig, Delivered, TlsFiles, TunnelError, TunnelOptions,
    TunnelStanza, TunnelState, TunnelStats, CORE_DELIVERY_BUFFER,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{EdgeEntry, TunnelSection};

/// How long a stanza for the internet waits for room in a connected edge's tunnel window
/// before it is refused (the internal server's stream is not read meanwhile).
pub const EDGE_WAIT: Duration = Duration::from_secs(30);

/// Why [`Edges::send_bounded`] did not queue a stanza.
#[derive(Debug)]
pub enum Refused {
    /// No edge is connected and the chosen edge's window is full.
    NoEdge,
    /// The chosen edge is connected but its window stayed full for [`EDGE_WAIT`].
    WindowFull,
    /// The tunnel refused it (shutting down).
    Failed(TunnelError),
}

impl Refused {
    /// The stanza error the sender gets.
    pub fn condition(&self) -> causeway_xmpp::StanzaCondition {
        use causeway_xmpp::StanzaCondition as C;
        match self {
            Refused::NoEdge => C::RemoteServerTimeout,
            Refused::WindowFull => C::ResourceConstraint,
            Refused::Failed(_) => C::ServiceUnavailable,
        }
    }
}

/// The edges of a `[tunnel]` section: `tunnel.edge` with `tunnel.edge_name`, or every
/// `[[tunnel.edges]]` entry; errors name the setting.
pub fn edges_of(t: &TunnelSection) -> anyhow::Result<Vec<EdgeEntry>> {
    let edges = match (&t.edge, &t.edge_name, t.edges.is_empty()) {
        (Some(_), _, false) | (_, Some(_), false) => bail!(
            "tunnel.edges: use either tunnel.edge and tunnel.edge_name (one edge) or \
             [[tunnel.edges]] entries (several), not both"
        ),
        (None, None, true) => bail!(
            "tunnel.edges: no edge configured: set tunnel.edge and tunnel.edge_name, or add \
             [[tunnel.edges]] entries with address and name"
        ),
        (Some(address), Some(name), true) => {
            check_entry("tunnel.edge", address, "tunnel.edge_name", name)?;
            return Ok(vec![EdgeEntry {
                address: address.clone(),
                name: name.clone(),
            }]);
        }
        (Some(_), None, true) => bail!("tunnel.edge_name: required with tunnel.edge"),
        (None, Some(_), true) => bail!("tunnel.edge: required with tunnel.edge_name"),
        (None, None, false) => &t.edges,
    };
    for (i, e) in edges.iter().enumerate() {
        let key = format!("tunnel.edges[{i}]");
        check_entry(
            &format!("{key}.address"),
            &e.address,
            &format!("{key}.name"),
            &e.name,
        )?;
        if let Some(j) = edges[..i]
            .iter()
            .position(|o| o.address.eq_ignore_ascii_case(&e.address))
        {
            bail!("{key}.address: {} is already tunnel.edges[{j}]", e.address);
        }
    }
    Ok(edges.clone())
}

/// An edge's address must be `host:port` (what core dials) and its name a DNS name.
fn check_entry(address_key: &str, address: &str, name_key: &str, name: &str) -> anyhow::Result<()> {
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("{address_key}: {address:?} is not host:port");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') || !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        bail!("{address_key}: {address:?} is not host:port");
    }
    if causeway_xmpp::addr::normalize_domain(name).is_err() {
        bail!("{name_key}: {name:?} is not a DNS name (the name in the edge's certificate)");
    }
    Ok(())
}

/// One edge and core's tunnel to it.
pub struct EdgeLink {
    /// Where core dials it.
    pub address: String,
    /// The name its certificate must carry.
    pub name: String,
    /// How status and metrics call it: its name, or `name@address` when several configured
    /// edges share the name.
    pub label: String,
    /// The tunnel.
    pub tunnel: CoreTunnel,
}

/// core's tunnels to every configured edge. Cheap to clone.
#[derive(Clone)]
pub struct Edges {
    links: Arc<[EdgeLink]>,
}

impl Edges {
    /// Start a tunnel to each edge (a wiring function): the returned receiver merges the
    /// stanzas of every tunnel, and a task takes back the stanzas of edges that stay away
    /// (see the module docs). Must be called within a Tokio runtime.
    pub fn start(
        edges: &[EdgeEntry],
        tls: TlsFiles,
        hello: CoreHello,
        opts: TunnelOptions,
    ) -> (Edges, mpsc::Receiver<Delivered>) {
        let (merged_tx, merged_rx) = mpsc::channel(CORE_DELIVERY_BUFFER);
        let links: Vec<EdgeLink> = edges
            .iter()
            .map(|e| {
                let (tunnel, mut rx) = CoreTunnel::start(CoreTunnelConfig {
                    edge_addr: e.address.clone(),
                    edge_name: e.name.clone(),
                    tls: tls.clone(),
                    hello: hello.clone(),
                    opts: opts.clone(),
                });
                let tx = merged_tx.clone();
                tokio::spawn(async move {
                    while let Some(stanza) = rx.recv().await {
                        if tx.send(stanza).await.is_err() {
                            break;
                        }
                    }
                });
                let shared = edges.iter().filter(|o| o.name == e.name).count() > 1;
                EdgeLink {
                    address: e.address.clone(),
                    name: e.name.clone(),
                    label: if shared {
                        format!("{}@{}", e.name, e.address)
                    } else {
                        e.name.clone()
                    },
                    tunnel,
                }
            })
            .collect();
        let edges = Edges {
            links: links.into(),
        };
        tokio::spawn(supervise(edges.clone(), opts.dead_after()));
        (edges, merged_rx)
    }

    /// Every edge, in config order.
    pub fn links(&self) -> &[EdgeLink] {
        &self.links
    }

    /// The edge for stanzas from `from_domain` to `to_domain` now: by rendezvous hashing over
    /// the edges that are connected and not draining (over every edge when none is).
    pub fn pick(&self, from_domain: &str, to_domain: &str) -> &EdgeLink {
        ha::pick(
            &self.links,
            |l| &l.address,
            |l| l.tunnel.is_usable(),
            from_domain,
            to_domain,
        )
        // The config needs at least one edge.
        .unwrap_or(&self.links[0])
    }

    /// Queue a stanza on the edge [`pick`](Self::pick) chooses for it, waiting for room in its
    /// replay window.
    pub async fn send(&self, stanza: TunnelStanza) -> Result<(), TunnelError> {
        let link = self.pick(&stanza.from_domain, &stanza.to_domain);
        link.tunnel.send(stanza).await
    }

    /// Like [`send`](Self::send), but never waits long: room in a connected edge's window is
    /// waited for up to [`EDGE_WAIT`]; with no edge connected the chosen one's window keeps what
    /// fits (replayed when it is back) and the rest is refused at once. So an outage of every
    /// edge costs bounded memory, and the internal servers get errors instead of streams that
    /// block forever.
    pub async fn send_bounded(&self, stanza: TunnelStanza) -> Result<(), Refused> {
        let link = self.pick(&stanza.from_domain, &stanza.to_domain);
        let connected = link.tunnel.is_connected();
        let wait = if connected { EDGE_WAIT } else { Duration::ZERO };
        // Sending is cancel-safe, and a timeout polls it once before looking at the clock.
        match tokio::time::timeout(wait, link.tunnel.send(stanza)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Refused::Failed(e)),
            Err(_) if connected => Err(Refused::WindowFull),
            Err(_) => Err(Refused::NoEdge),
        }
    }

    /// Announce new domain and chat node alias lists to every edge (each tunnel says hello
    /// again; see [`CoreTunnel::reannounce`]).
    pub fn reannounce(&self, domains: Vec<String>, chat_node_aliases: Vec<String>) {
        for l in self.links.iter() {
            l.tunnel
                .reannounce(domains.clone(), chat_node_aliases.clone());
        }
    }

    /// New tunnel certificate, key and CAs for every edge's next connection.
    pub fn set_tls(&self, tls: &TlsFiles) -> Result<(), TunnelError> {
        for l in self.links.iter() {
            l.tunnel.set_tls(tls.clone())?;
        }
        Ok(())
    }

    /// Tell every edge this core drains (see crates/core/src/drain.rs).
    pub fn drain(&self, within_secs: u32) {
        for l in self.links.iter() {
            l.tunnel.drain(within_secs);
        }
    }

    /// How many edges have a tunnel session now.
    pub fn connected(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.tunnel.is_connected())
            .count()
    }

    /// Stanzas sent to the edges and not yet acknowledged, over every edge.
    pub fn unacked(&self) -> usize {
        self.links
            .iter()
            .map(|l| l.tunnel.link_stats().unacked)
            .sum()
    }

    /// Counters per edge, keyed by [`EdgeLink::label`].
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            links: self
                .links
                .iter()
                .map(|l| (l.label.clone(), l.tunnel.link_stats()))
                .collect(),
        }
    }
}

/// The failover task: watches every tunnel's state and re-sends what edges that are gone
/// left unacknowledged (a wiring loop around [`Failover`]).
async fn supervise(edges: Edges, grace: Duration) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    for link in edges.links.iter() {
        let mut state = link.tunnel.watch_state();
        let tx = changed_tx.clone();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                if matches!(*state.borrow_and_update(), TunnelState::Stopped) {
                    break;
                }
                // Full: a wake-up is pending already.
                let _ = tx.try_send(());
            }
        });
    }
    drop(changed_tx);
    let mut failover = Failover::new(grace);
    loop {
        let now = Instant::now();
        for (i, link) in edges.links.iter().enumerate() {
            // An edge that said it drains is gone as soon as it leaves.
            failover.observe(
                &i,
                link.tunnel.is_connected(),
                link.tunnel.peer_draining(),
                now,
            );
        }
        for i in failover.gone(now) {
            take_back(&edges, &edges.links[i]);
        }
        // Without a deadline only a state change matters (an hour is "never").
        let wake = failover
            .next_check(now)
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            c = changed.recv() => if c.is_none() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Take the unacknowledged stanzas out of a gone edge's window and send them again, in order,
/// through the edges [`Edges::pick`] chooses now.
fn take_back(edges: &Edges, gone: &EdgeLink) {
    let stanzas = gone.tunnel.take_unacked();
    if stanzas.is_empty() {
        return;
    }
    warn!(module = LOG_MODULE, edge = %gone.label, address = %gone.address, stanzas = stanzas.len(), taken_back_total = gone.tunnel.link_stats().taken_back, "edge gone: re-sending its unacknowledged stanzas through the other edges (those it delivered unacknowledged arrive twice)");
    let edges = edges.clone();
    tokio::spawn(async move {
        for stanza in stanzas {
            if let Err(e) = edges.send(stanza).await {
                warn!(module = LOG_MODULE, error = %e, "re-send after failover failed; stanzas dropped");
                return;
            }
        }
        info!(module = LOG_MODULE, "failover re-send done");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> TunnelSection {
        let full = format!("cert = \"c\"\nkey = \"k\"\nca = \"a\"\n{toml_text}");
        toml::from_str(&full).expect("parses")
    }

    fn err(toml_text: &str) -> String {
        format!("{:#}", edges_of(&section(toml_text)).expect_err("refused"))
    }

    #[test]
    fn one_edge_the_old_way_or_several_in_a_list() {
        let one = edges_of(&section(
            "edge = \"e1:7400\"\nedge_name = \"edge.example.com\"",
        ))
        .expect("valid");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].address, "e1:7400");
        assert_eq!(one[0].name, "edge.example.com");
        let two = edges_of(&section(
            "[[edges]]\naddress = \"10.0.0.2:7400\"\nname = \"e.example.com\"\n\
             [[edges]]\naddress = \"[fd00::5]:7400\"\nname = \"e.example.com\"",
        ))
        .expect("valid");
        let addrs: Vec<&str> = two.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.2:7400", "[fd00::5]:7400"]);
    }

    #[test]
    fn bad_edge_settings_are_named() {
        assert!(err("").contains("tunnel.edges: no edge configured"));
        assert!(err("edge = \"e:1\"").contains("tunnel.edge_name: required"));
        assert!(err("edge_name = \"e\"").contains("tunnel.edge: required"));
        let both = "edge = \"e:1\"\nedge_name = \"e\"\n[[edges]]\naddress = \"f:1\"\nname = \"f\"";
        assert!(err(both).contains("not both"));
        assert!(err("[[edges]]\naddress = \"nohost\"\nname = \"e\"")
            .contains("tunnel.edges[0].address: \"nohost\" is not host:port"));
        assert!(err("[[edges]]\naddress = \"e:0\"\nname = \"e\"").contains("not host:port"));
        assert!(err("edge = \"e:x\"\nedge_name = \"e\"").contains("tunnel.edge: \"e:x\""));
        assert!(err("[[edges]]\naddress = \"e:1\"\nname = \"not a name\"")
            .contains("tunnel.edges[0].name"));
        let dup = "[[edges]]\naddress = \"e:1\"\nname = \"e\"\n[[edges]]\naddress = \"E:1\"\nname = \"f\"";
        assert!(err(dup).contains("tunnel.edges[1].address: E:1 is already tunnel.edges[0]"));
    }
}
