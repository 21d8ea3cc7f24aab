//! core's local admin API (`causeway.admin.v1.Admin` on `[admin].socket`) and the
//! `core status` / `connections` / `reload` commands that talk to it.
//!
//! Status says whether the tunnel to each edge is up, and lists the local domains with their
//! IM&P nodes (active or inactive, and why) and chat node aliases as the node table has them
//! now (crates/core/src/nodes.rs); `core servers` shows the table in full
//! (crates/core/src/servers.rs).

use std::sync::{Arc, RwLock};

use causeway_api::admin::admin_server::Admin;
use causeway_api::admin::{
    ConnectionsReply, ConnectionsRequest, CoreStatus, ReloadReply, ReloadRequest, ServersReply,
    ServersRequest, StatusReply, StatusRequest, Tunnel,
};
use causeway_app::admin::{self as plumbing, AdminServerHandle, Daemon, DaemonArgs};
use causeway_tunnel::TunnelState;
use tonic::{Request, Response};

use crate::config::Validated;
use crate::Core;

/// core's defaults for the daemon commands.
pub const DAEMON: Daemon = Daemon {
    binary: "core",
    default_config: "/etc/causeway/core.toml",
    default_socket: DEFAULT_SOCKET,
};

/// The admin socket when `[admin].socket` is not set.
pub const DEFAULT_SOCKET: &str = "/run/causeway-core/core.sock";

/// What status reports from core's config.
#[derive(Debug, Clone)]
pub struct ConfigView {
    core_id: String,
}

impl ConfigView {
    /// The parts of a validated config that status shows.
    pub fn of(cfg: &Validated) -> Self {
        Self {
            core_id: cfg.raw.core.id.clone(),
        }
    }
}

/// The admin API of a running core.
pub struct CoreAdmin {
    core: Arc<Core>,
    view: RwLock<ConfigView>,
}

impl CoreAdmin {
    /// Around a running core and the config it was started with.
    pub fn new(core: Arc<Core>, view: ConfigView) -> Arc<Self> {
        Arc::new(Self {
            core,
            view: RwLock::new(view),
        })
    }

    /// Serve it as `[admin]` says.
    pub async fn serve(
        self: &Arc<Self>,
        section: &causeway_app::admin::AdminSection,
    ) -> anyhow::Result<AdminServerHandle> {
        plumbing::serve(
            Service(self.clone()),
            &section.socket_or(DEFAULT_SOCKET),
            section.tcp_access()?,
        )
        .await
    }

    /// [`Core::reload`], then refresh what status shows from the config file it applied.
    pub async fn reload(&self) -> anyhow::Result<String> {
        let summary = self.core.reload().await?;
        match crate::config::load(&self.core.config_path) {
            Ok(cfg) => {
                let view = ConfigView::of(&cfg);
                match self.view.write() {
                    Ok(mut v) => *v = view,
                    Err(poisoned) => *poisoned.into_inner() = view,
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "admin: config changed again during the reload; status shows the previous domains")
            }
        }
        Ok(summary)
    }

    /// What core is doing now.
    pub fn status(&self) -> StatusReply {
        let core = &self.core;
        let view = match self.view.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut reply = plumbing::status_common(
            "core",
            core.started,
            &core.config_path,
            &core.s2s,
            &core.tunnel.stats(),
        );
        let tunnels: Vec<Tunnel> = core.tunnel.links().iter().map(tunnel_status).collect();
        reply.core = Some(CoreStatus {
            core_id: view.core_id,
            tunnel: tunnels.first().cloned(),
            tunnels,
            domains: crate::servers::local_domains(core.discovery.nodes()),
            s2s_listen: core.s2s_addr.to_string(),
            draining: core.s2s.is_draining(),
        });
        reply.warnings = certificate_warnings(core);
        reply
    }
}

/// Warnings about core's certificate files, read now: its s2s certificate must cover its
/// name and chat node aliases, its tunnel certificate its name.
fn certificate_warnings(core: &crate::Core) -> Vec<String> {
    let cfg = match crate::config::load(&core.config_path) {
        Ok(cfg) => cfg,
        Err(e) => return vec![format!("config {}: {e:#}", core.config_path.display())],
    };
    let names = cfg
        .raw
        .certificate_names()
        .map(|n| n.all())
        .unwrap_or_default();
    let days = causeway_app::cert::WARN_DAYS;
    let mut out = causeway_app::cert::certificate_warnings(&cfg.raw.s2s.cert, &names, days);
    out.extend(causeway_app::cert::certificate_warnings(
        &cfg.raw.tunnel.cert,
        std::slice::from_ref(&cfg.raw.core.id),
        days,
    ));
    out
}

/// The state of the tunnel to one edge.
fn tunnel_status(link: &crate::edges::EdgeLink) -> Tunnel {
    let mut tunnel = Tunnel {
        edge: link.address.clone(),
        edge_name: link.name.clone(),
        protocol: link.tunnel.protocol(),
        ..Default::default()
    };
    match link.tunnel.state() {
        TunnelState::Connected { since } => {
            tunnel.state = "connected".into();
            tunnel.since_unix = plumbing::unix_secs(since);
        }
        TunnelState::Connecting {
            last_error,
            attempts,
        } => {
            tunnel.state = "connecting".into();
            tunnel.last_error = last_error.unwrap_or_default();
            tunnel.attempts = attempts;
        }
        TunnelState::Stopped => tunnel.state = "stopped".into(),
    }
    tunnel
}

struct Service(Arc<CoreAdmin>);

#[tonic::async_trait]
impl Admin for Service {
    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, tonic::Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn connections(
        &self,
        _: Request<ConnectionsRequest>,
    ) -> Result<Response<ConnectionsReply>, tonic::Status> {
        Ok(Response::new(ConnectionsReply {
            sessions: plumbing::sessions(&self.0.core.s2s),
        }))
    }

    async fn drain(
        &self,
        _: Request<causeway_api::admin::DrainRequest>,
    ) -> Result<Response<causeway_api::admin::DrainReply>, tonic::Status> {
        Ok(Response::new(plumbing::drain_reply(
            self.0.core.drain().await,
        )))
    }

    async fn reload(
        &self,
        _: Request<ReloadRequest>,
    ) -> Result<Response<ReloadReply>, tonic::Status> {
        Ok(Response::new(plumbing::reload_reply(self.0.reload().await)))
    }

    async fn servers(
        &self,
        request: Request<ServersRequest>,
    ) -> Result<Response<ServersReply>, tonic::Status> {
        let refresh = request.into_inner().refresh;
        Ok(Response::new(
            crate::servers::reply(&self.0.core.discovery, refresh).await,
        ))
    }
}

/// `core status` as text, and its exit code: 0 when the tunnel to every edge is connected, 2 when
/// one is not.
pub fn render_status(reply: &StatusReply) -> (String, i32) {
    let core = reply.core.clone().unwrap_or_default();
    let mut tunnels = core.tunnels.clone();
    if tunnels.is_empty() {
        tunnels.extend(core.tunnel.clone());
    }
    let mut out = plumbing::render_header(reply, &format!("core {}", core.core_id));
    let up = tunnels.iter().filter(|t| t.state == "connected").count();
    let connected = up > 0 && up == tunnels.len() && !core.draining;
    if core.draining {
        out.push_str(
            "Draining (a planned stop): it takes nothing new; restart it to serve again\n",
        );
    }
    if tunnels.len() > 1 {
        out.push_str(&format!("edges: {up} of {} connected\n", tunnels.len()));
    }
    for tunnel in &tunnels {
        out.push_str(&render_tunnel(tunnel));
    }
    if !reply.tunnel_links.is_empty() {
        out.push_str(&plumbing::render_tunnel_links(&reply.tunnel_links, "EDGE"));
    }
    out.push('\n');
    out.push_str(&crate::servers::render_domains(&core.domains));
    out.push_str(&format!(
        "s2s listening for the nodes: {}\n\n",
        core.s2s_listen
    ));
    out.push_str(&plumbing::render_counters(reply, "with the IM&P nodes"));
    (
        out,
        if connected {
            0
        } else {
            plumbing::EXIT_DEGRADED
        },
    )
}

/// One line for the tunnel to one edge.
fn render_tunnel(tunnel: &Tunnel) -> String {
    let to = format!("tunnel to {} at {}", tunnel.edge_name, tunnel.edge);
    match tunnel.state.as_str() {
        "connected" => format!(
            "{to}: Connected since {} (tunnel protocol {})\n",
            plumbing::since(tunnel.since_unix),
            tunnel.protocol
        ),
        "connecting" => {
            let mut line = format!(
                "{to}: Not connected: connecting, {} attempt{} since the last session",
                tunnel.attempts,
                if tunnel.attempts == 1 { "" } else { "s" }
            );
            if !tunnel.last_error.is_empty() {
                line.push_str(&format!("; last error: {}", tunnel.last_error));
            }
            line + "\n"
        }
        other => format!("{to}: Not connected: {other}\n"),
    }
}

/// `core status`: exit code 0 when the tunnel to every edge is connected, 2 when one is not; an
/// error (exit 1) when the daemon cannot be reached.
pub async fn status_command(args: &DaemonArgs) -> anyhow::Result<i32> {
    plumbing::status_command(&DAEMON, args, render_status).await
}
