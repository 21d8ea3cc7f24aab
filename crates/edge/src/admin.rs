//! The edge's local admin API (`causeway.admin.v1.Admin` on `[admin].socket`) and the
//! `edge status` / `connections` / `reload` commands that talk to it.
//!
//! Status says whether XMPP federation is Active: a core is connected and local domains are
//! known (learnt from the cores' hellos). Otherwise it is Inactive, with the reasons.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use causeway_api::admin::admin_server::Admin;
use causeway_api::admin::{
    ConnectedCore, ConnectionsReply, ConnectionsRequest, EdgeStatus, Federation, LearnedDomain,
    Listeners, ReloadReply, ReloadRequest, StatusReply, StatusRequest,
};
use causeway_app::admin::{self as plumbing, AdminServerHandle, Daemon, DaemonArgs};
use tonic::{Request, Response};

use crate::Edge;

/// The edge's defaults for the daemon commands.
pub const DAEMON: Daemon = Daemon {
    binary: "edge",
    default_config: "/etc/causeway/edge.toml",
    default_socket: DEFAULT_SOCKET,
};

/// The admin socket when `[admin].socket` is not set.
pub const DEFAULT_SOCKET: &str = "/run/causeway-edge/edge.sock";

/// Serve the admin API of a running edge as `[admin]` says.
pub async fn serve(
    edge: Arc<Edge>,
    section: &causeway_app::admin::AdminSection,
) -> anyhow::Result<AdminServerHandle> {
    plumbing::serve(
        Service { edge },
        &section.socket_or(DEFAULT_SOCKET),
        section.tcp_access()?,
    )
    .await
}

struct Service {
    edge: Arc<Edge>,
}

#[tonic::async_trait]
impl Admin for Service {
    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, tonic::Status> {
        Ok(Response::new(status(&self.edge)))
    }

    async fn connections(
        &self,
        _: Request<ConnectionsRequest>,
    ) -> Result<Response<ConnectionsReply>, tonic::Status> {
        Ok(Response::new(ConnectionsReply {
            sessions: plumbing::sessions(&self.edge.s2s),
        }))
    }

    async fn drain(
        &self,
        _: Request<causeway_api::admin::DrainRequest>,
    ) -> Result<Response<causeway_api::admin::DrainReply>, tonic::Status> {
        Ok(Response::new(plumbing::drain_reply(
            self.edge.drain().await,
        )))
    }

    async fn reload(
        &self,
        _: Request<ReloadRequest>,
    ) -> Result<Response<ReloadReply>, tonic::Status> {
        Ok(Response::new(plumbing::reload_reply(
            self.edge.reload().await,
        )))
    }

    /// IM&P servers are core's business.
    async fn servers(
        &self,
        _: Request<causeway_api::admin::ServersRequest>,
    ) -> Result<Response<causeway_api::admin::ServersReply>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the edge has no IM&P servers: ask core (core servers)",
        ))
    }
}

/// Warnings about the certificate files the config names, read now: the federation
/// certificate must cover the configured names and every domain and alias learnt from cores.
fn certificate_warnings(edge: &Edge, learned: &[(String, String)]) -> Vec<String> {
    let cfg = match crate::config::load(&edge.config_path) {
        Ok(cfg) => cfg,
        Err(e) => return vec![format!("config {}: {e:#}", edge.config_path.display())],
    };
    let fed = &cfg.raw.federation;
    let mut names = fed.certificate_names().map(|n| n.all()).unwrap_or_default();
    for (domain, _) in learned {
        if !names.contains(domain) {
            names.push(domain.clone());
        }
    }
    let mut out =
        causeway_app::cert::certificate_warnings(&fed.cert, &names, causeway_app::cert::WARN_DAYS);
    out.extend(causeway_app::cert::certificate_warnings(
        &cfg.raw.tunnel.cert,
        &[],
        causeway_app::cert::WARN_DAYS,
    ));
    out
}

/// One line for `systemctl status`, cheap enough for every second (no file is read): the
/// cores connected and the domains known, or why federation is not active.
pub fn summary(edge: &Edge) -> String {
    if edge.s2s.is_draining() {
        return format!("Inactive: {}", causeway_app::drain::REASON);
    }
    let cores = edge.tunnel.connected_cores().len();
    let domains = edge.host.domain_cores().entries().len();
    match (cores, domains) {
        (0, _) => "Inactive: no core is connected".to_owned(),
        (_, 0) => "Inactive: no local domains are known".to_owned(),
        _ => format!(
            "Active: {cores} core{} connected, {domains} domain{} and chat node alias{}",
            if cores == 1 { "" } else { "s" },
            if domains == 1 { "" } else { "s" },
            if domains == 1 { "" } else { "es" },
        ),
    }
}

/// What the edge is doing now.
pub fn status(edge: &Edge) -> StatusReply {
    let mut reply = plumbing::status_common(
        "edge",
        edge.started,
        &edge.config_path,
        &edge.s2s,
        &edge.tunnel.stats(),
    );
    let hellos: HashMap<String, (causeway_tunnel::CoreHello, std::time::SystemTime)> =
        match edge.host.hellos.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
    // (domain, core) pairs: one row per core serving the domain.
    let learned: Vec<(String, String)> = edge.host.domain_cores().entries();
    let connected = edge.tunnel.connected_cores();
    let connected_ids: HashSet<&str> = connected.iter().map(|h| h.core_id.as_str()).collect();
    let cores = connected
        .iter()
        .map(|h| ConnectedCore {
            id: h.core_id.clone(),
            version: h.version.clone(),
            protocol: h.protocol,
            since_unix: hellos
                .get(&h.core_id)
                .map(|(_, t)| plumbing::unix_secs(*t))
                .unwrap_or(0),
            domains: h.domains.clone(),
            chat_node_aliases: h.chat_node_aliases.clone(),
        })
        .collect();
    let mut domains: Vec<LearnedDomain> = learned
        .iter()
        .map(|(name, core)| {
            let alias = hellos.get(core).is_some_and(|(h, _)| {
                h.chat_node_aliases
                    .iter()
                    .any(|a| causeway_xmpp::addr::normalize_domain(a).is_ok_and(|a| a == *name))
            });
            LearnedDomain {
                name: name.clone(),
                kind: if alias { "chat node alias" } else { "domain" }.into(),
                core: core.clone(),
                core_connected: connected_ids.contains(core.as_str()),
            }
        })
        .collect();
    // Domains first, then chat node aliases, each by name.
    domains.sort_by(|a, b| (a.kind != "domain", &a.name).cmp(&(b.kind != "domain", &b.name)));
    let mut reasons = Vec::new();
    if edge.s2s.is_draining() {
        reasons.push(causeway_app::drain::REASON.to_owned());
    }
    if connected.is_empty() {
        reasons.push("no core is connected".to_owned());
    }
    reply.warnings = certificate_warnings(edge, &learned);
    if let Some(expired) = reply
        .warnings
        .iter()
        .find(|w| w.contains("federation") && w.contains("expired"))
    {
        reasons.push(expired.clone());
    }
    if learned.is_empty() {
        reasons.push("no local domains are known (no core has announced any)".to_owned());
    }
    let active = reasons.is_empty();
    reply.edge = Some(EdgeStatus {
        federation: Some(Federation {
            active,
            state: if active { "Active" } else { "Inactive" }.into(),
            reasons,
        }),
        cores,
        domains,
        listeners: Some(Listeners {
            s2s: crate::addr_list(&edge.listening.s2s),
            direct_tls: crate::addr_list(&edge.listening.direct_tls),
            tunnel: crate::addr_list(&edge.listening.tunnel),
        }),
    });
    reply
}

/// `edge status` as text, and its exit code: 0 when federation is Active, 2 when Inactive.
pub fn render_status(reply: &StatusReply) -> (String, i32) {
    let edge = reply.edge.clone().unwrap_or_default();
    let fed = edge.federation.clone().unwrap_or_default();
    let mut out = plumbing::render_header(reply, "edge");
    if fed.active {
        out.push_str("XMPP federation: Active\n");
    } else {
        out.push_str(&format!(
            "XMPP federation: Inactive: {}\n",
            fed.reasons.join("; ")
        ));
    }
    if let Some(l) = &edge.listeners {
        out.push_str(&format!("listening: s2s {}", l.s2s));
        if !l.direct_tls.is_empty() {
            out.push_str(&format!(", direct TLS {}", l.direct_tls));
        }
        out.push_str(&format!(", tunnel {}\n", l.tunnel));
    }
    out.push('\n');
    if edge.cores.is_empty() {
        out.push_str("connected cores: none\n");
    } else {
        out.push_str("connected cores:\n");
        let rows: Vec<Vec<String>> = edge
            .cores
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.version.clone(),
                    c.protocol.to_string(),
                    plumbing::since(c.since_unix),
                ]
            })
            .collect();
        out.push_str(&plumbing::table(
            "  ",
            &["ID", "VERSION", "PROTOCOL", "SINCE"],
            &rows,
        ));
    }
    if edge.domains.is_empty() {
        out.push_str("local domains: none known\n");
    } else {
        out.push_str("local domains (learnt from the cores):\n");
        let rows: Vec<Vec<String>> = edge
            .domains
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.kind.clone(),
                    if d.core_connected {
                        d.core.clone()
                    } else {
                        format!("{} (disconnected)", d.core)
                    },
                ]
            })
            .collect();
        out.push_str(&plumbing::table("  ", &["NAME", "KIND", "CORE"], &rows));
    }
    if !reply.tunnel_links.is_empty() {
        out.push_str("tunnel:\n");
        out.push_str(&plumbing::render_tunnel_links(&reply.tunnel_links, "CORE"));
    }
    out.push('\n');
    out.push_str(&plumbing::render_counters(reply, "with federated servers"));
    (
        out,
        if fed.active {
            0
        } else {
            plumbing::EXIT_DEGRADED
        },
    )
}

/// `edge status`: exit code 0 when Active, 2 when Inactive; an error (exit 1) when the daemon
/// cannot be reached.
pub async fn status_command(args: &DaemonArgs) -> anyhow::Result<i32> {
    plumbing::status_command(&DAEMON, args, render_status).await
}
