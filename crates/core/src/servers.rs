//! The node table as the admin API shows it: `core servers [--refresh]` (clusters, nodes with
//! their state, last error and last probe, chat node aliases) and the local domains of
//! `core status`.

use causeway_api::admin::{
    ChatNodeAlias, ClusterDomain, DiscoveryChanges, ImpCluster, ImpNode, LocalDomain, ServersReply,
};
use causeway_app::admin::{self as plumbing, DaemonArgs};

use crate::discovery::unix;
use crate::nodes::{Changes, Cluster, Node, NodeState, NodeTable};

/// Every cluster of the table.
pub fn clusters(table: &NodeTable) -> Vec<ImpCluster> {
    table.clusters().iter().map(cluster).collect()
}

fn cluster(c: &Cluster) -> ImpCluster {
    ImpCluster {
        name: c.source.name(),
        source: c.source.kind().to_owned(),
        domains: c
            .domains
            .iter()
            .map(|d| ClusterDomain {
                name: d.name.clone(),
                im_presence: d.im_presence,
                xmpp_federation: d.xmpp_federation,
                federated: d.federated(),
            })
            .collect(),
        aliases: c
            .aliases
            .iter()
            .map(|a| ChatNodeAlias {
                name: a.name.clone(),
                domain: a.domain.clone(),
                discovered: a.discovered,
            })
            .collect(),
        nodes: c.nodes.iter().map(node).collect(),
        discovered_unix: unix(c.discovered),
        discovery_error: c.discovery_error.clone().unwrap_or_default(),
    }
}

fn node(n: &Node) -> ImpNode {
    ImpNode {
        address: n.addr.to_string(),
        host: n.host.clone(),
        state: n.state.as_str().to_owned(),
        last_error: if n.state == NodeState::Active {
            String::new()
        } else {
            n.last_error.clone().unwrap_or_default()
        },
        last_probe_unix: unix(n.last_probe),
        since_unix: unix(Some(n.since)),
    }
}

/// What a discovery run changed.
pub fn changes(c: &Changes) -> DiscoveryChanges {
    DiscoveryChanges {
        added_nodes: c.added_nodes.clone(),
        removed_nodes: c.removed_nodes.clone(),
        added_aliases: c.added_aliases.clone(),
        removed_aliases: c.removed_aliases.clone(),
        added_domains: c.added_domains.clone(),
        removed_domains: c.removed_domains.clone(),
        errors: c.errors.clone(),
        summary: c.summary(),
    }
}

/// The local domains for `core status`: one row per domain, its cluster's nodes with their
/// state, and its aliases.
pub fn local_domains(table: &NodeTable) -> Vec<LocalDomain> {
    let mut out = Vec::new();
    for c in table.clusters() {
        for d in &c.domains {
            let nodes: Vec<ImpNode> = c.nodes.iter().map(node).collect();
            let active = nodes.iter().filter(|n| n.state == "active").count();
            let node_state = if !d.federated() {
                "federation off".to_owned()
            } else if nodes.is_empty() {
                "no node known".to_owned()
            } else if active == nodes.len() {
                "active".to_owned()
            } else if active == 0 {
                let why = nodes
                    .iter()
                    .map(|n| n.last_error.as_str())
                    .find(|e| !e.is_empty())
                    .unwrap_or("not probed yet");
                format!("inactive: {why}")
            } else {
                format!("{active} of {} active", nodes.len())
            };
            out.push(LocalDomain {
                name: d.name.clone(),
                nodes: nodes.iter().map(|n| n.address.clone()).collect(),
                chat_node_aliases: c
                    .aliases
                    .iter()
                    .filter(|a| a.domain == d.name)
                    .map(|a| a.name.clone())
                    .collect(),
                node_state,
                node_status: nodes,
            });
        }
    }
    out
}

/// The local domains and node tables of `core status`.
pub fn render_domains(domains: &[LocalDomain]) -> String {
    let mut out = String::from("local domains:\n");
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                or_dash(&d.nodes.join(",")),
                or_dash(&d.chat_node_aliases.join(",")),
                d.node_state.clone(),
            ]
        })
        .collect();
    out.push_str(&plumbing::table(
        "  ",
        &["DOMAIN", "IM&P NODES", "CHAT NODE ALIASES", "NODE STATE"],
        &rows,
    ));
    let mut rows: Vec<Vec<String>> = Vec::new();
    for d in domains {
        for n in &d.node_status {
            if rows.iter().any(|r| r.first() == Some(&n.address)) {
                continue;
            }
            rows.push(node_row(n, Some(&d.name)));
        }
    }
    if !rows.is_empty() {
        out.push_str("IM&P nodes:\n");
        out.push_str(&plumbing::table(
            "  ",
            &[
                "NODE",
                "DOMAIN",
                "STATE",
                "SINCE",
                "LAST PROBE",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn ago(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let now = plumbing::unix_secs(std::time::SystemTime::now());
    format!("{} ago", plumbing::duration(now.saturating_sub(unix)))
}

fn node_row(n: &ImpNode, domain: Option<&str>) -> Vec<String> {
    let mut row = vec![n.address.clone()];
    match domain {
        Some(d) => row.push(d.to_owned()),
        None => row.push(n.host.clone()),
    }
    row.extend([
        n.state.clone(),
        ago(n.since_unix),
        ago(n.last_probe_unix),
        or_dash(&n.last_error),
    ]);
    row
}

/// `core servers` as text.
pub fn render_servers(reply: &ServersReply) -> String {
    let mut out = String::new();
    if reply.refreshed {
        let c = reply.changes.clone().unwrap_or_default();
        out.push_str(&format!("discovery ran: {}\n", c.summary));
        for e in &c.errors {
            out.push_str(&format!("discovery error: {e}\n"));
        }
        out.push('\n');
    }
    for c in &reply.clusters {
        out.push_str(&format!("cluster {} ({})", c.name, c.source));
        if c.source != "static" {
            out.push_str(&format!(", discovered {}", ago(c.discovered_unix)));
        }
        out.push('\n');
        let domains: Vec<String> = c
            .domains
            .iter()
            .map(|d| {
                let mut s = d.name.clone();
                if !d.federated {
                    s.push_str(&format!(
                        " (not federated: IM and presence {}, XMPP federation {})",
                        on_off(d.im_presence),
                        on_off(d.xmpp_federation)
                    ));
                }
                s
            })
            .collect();
        out.push_str(&format!("  domains: {}\n", or_dash(&domains.join(", "))));
        let aliases: Vec<String> = c
            .aliases
            .iter()
            .map(|a| {
                format!(
                    "{} ({}, {})",
                    a.name,
                    a.domain,
                    if a.discovered {
                        "discovered"
                    } else {
                        "configured"
                    }
                )
            })
            .collect();
        out.push_str(&format!(
            "  chat node aliases: {}\n",
            or_dash(&aliases.join(", "))
        ));
        if !c.discovery_error.is_empty() {
            out.push_str(&format!("  discovery error: {}\n", c.discovery_error));
        }
        let rows: Vec<Vec<String>> = c.nodes.iter().map(|n| node_row(n, None)).collect();
        if rows.is_empty() {
            out.push_str("  no IM&P node known\n");
        } else {
            out.push_str(&plumbing::table(
                "  ",
                &["NODE", "HOST", "STATE", "SINCE", "LAST PROBE", "LAST ERROR"],
                &rows,
            ));
        }
        out.push('\n');
    }
    out
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// `core servers [--refresh]`: exit code 0; an error (exit 1) when the daemon cannot be reached.
pub async fn servers_command(args: &DaemonArgs, refresh: bool) -> anyhow::Result<i32> {
    let reply = plumbing::Connection::open(&crate::admin::DAEMON, args)
        .await?
        .servers(refresh)
        .await?;
    if args.json {
        plumbing::print_json(&reply)?;
    } else {
        print!("{}", render_servers(&reply));
    }
    Ok(0)
}

/// The Servers RPC: the node table, after a discovery run when `refresh` (applied at once).
pub async fn reply(discovery: &crate::discovery::Discovery, refresh: bool) -> ServersReply {
    let changes = if refresh {
        let c = discovery.refresh().await;
        tracing::info!(module = causeway_s2s::LOG_MODULE, changes = %c.summary(), errors = ?c.errors, "IM&P discovery run (admin API)");
        Some(changes(&c))
    } else {
        None
    };
    ServersReply {
        clusters: clusters(discovery.nodes()),
        changes,
        refreshed: refresh,
    }
}
