//! The local admin API's plumbing, shared by both daemons: the `[admin]` config section, the
//! gRPC server on a private Unix socket (and optionally a loopback TCP port), the client the
//! `status` / `connections` / `reload` subcommands use, and the pieces of their output that the
//! edge and core print alike.
//!
//! What each daemon reports is its own business (`crates/edge/src/admin.rs`,
//! `crates/core/src/admin.rs`); both serve the `causeway.admin.v1.Admin` service.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use causeway_api::admin::admin_client::AdminClient;
use causeway_api::admin::admin_server::{Admin, AdminServer};
use causeway_api::admin::{
    ConnectionsRequest, Counters, DomainPair, DrainRequest, ReloadReply, ReloadRequest, Session,
    SessionCounts, StatusReply, StatusRequest, Tls, TunnelLink,
};
use serde::Deserialize;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Server};

/// Exit code of a daemon command when the daemon cannot be reached (or fails the request).
pub const EXIT_UNREACHABLE: i32 = 1;
/// Exit code of `status` when the daemon runs but is not doing its job (federation Inactive,
/// tunnel down).
pub const EXIT_DEGRADED: i32 = 2;

/// Longest path a Unix socket can be bound to (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `[admin]`: where the daemon serves its admin API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// The Unix socket (mode 0600, created at start). Default: the binary's
    /// (`/run/causeway-edge/edge.sock`, `/run/causeway-core/core.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address, e.g. `127.0.0.1:7401`. Off unless set; needs
    /// `tcp_token_file`.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// The token a client must present on `tcp` (the file's first line, at least 32
    /// characters; the file must not be readable by other users): any local user, or any
    /// container sharing the network namespace, can reach a loopback port.
    #[serde(default)]
    pub tcp_token_file: Option<PathBuf>,
}

/// The shortest token `admin.tcp_token_file` may hold.
pub const MIN_TOKEN_LEN: usize = 32;

/// The metadata key a TCP client sends its token in (`Bearer <token>`).
const AUTHORIZATION: &str = "authorization";

impl AdminSection {
    /// Take a relative `socket` from the config file's directory `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [self.socket.as_mut(), self.tcp_token_file.as_mut()]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
    }

    /// The TCP address and the token it requires, read from `tcp_token_file` now; errors name
    /// the setting.
    pub fn tcp_access(&self) -> anyhow::Result<Option<(SocketAddr, String)>> {
        let Some(addr) = self.tcp else {
            return Ok(None);
        };
        let Some(file) = &self.tcp_token_file else {
            bail!(
                "admin.tcp: set admin.tcp_token_file too: a loopback port is open to every local \
                 user, so TCP clients must present a token (e.g. `head -c 32 /dev/urandom | \
                 base64 > admin-token; chmod 0640 admin-token`), or use the Unix socket only"
            );
        };
        Ok(Some((addr, read_token(file)?)))
    }

    /// The socket path, or `default` when none is configured.
    pub fn socket_or(&self, default: &str) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(default))
    }

    /// Errors name the setting: the API has no authentication of its own, so TCP must stay
    /// on loopback, and the socket path must fit a Unix socket address.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.tcp.is_none() && self.tcp_token_file.is_some() {
            bail!("admin.tcp_token_file: set without admin.tcp");
        }
        self.tcp_access()?;
        if let Some(addr) = self.tcp {
            if !addr.ip().is_loopback() {
                bail!(
                    "admin.tcp: {addr} is not a loopback address; the admin API has no \
                     authentication of its own, so it only listens on 127.0.0.0/8 or [::1]"
                );
            }
        }
        if let Some(p) = &self.socket {
            if p.as_os_str().is_empty() {
                bail!("admin.socket: empty path");
            }
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "admin.socket: {} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)",
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// The token in `file`: its first line, trimmed; at least [`MIN_TOKEN_LEN`] characters, and the
/// file not readable or writable by other users.
pub fn read_token(file: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(file)
        .with_context(|| format!("admin.tcp_token_file: {}", file.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        bail!(
            "admin.tcp_token_file: {} is open to other users (mode {mode:04o}); chmod 0640 it",
            file.display()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("admin.tcp_token_file: {}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "admin.tcp_token_file: {}: the token must be at least {MIN_TOKEN_LEN} characters",
            file.display()
        );
    }
    Ok(token)
}

/// Equal without a timing that tells how much of `a` matches `b`.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `[admin]` section of a config file, read without validating the rest of the file (the
/// client commands need only the socket, and may run without access to keys and secrets).
pub fn admin_section_of(config: &Path) -> anyhow::Result<AdminSection> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading config {}", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config {}", config.display()))?;
    let mut section = match table.get("admin") {
        Some(v) => v
            .clone()
            .try_into::<AdminSection>()
            .with_context(|| format!("config {}: admin", config.display()))?,
        None => AdminSection::default(),
    };
    section.resolve_paths(config.parent().unwrap_or(Path::new(".")));
    section.validate()?;
    Ok(section)
}

// ---------------------------------------------------------------------------------------------
// Server

/// A running admin server. Dropping it stops the server and removes the socket file (unless
/// another process has replaced it since).
pub struct AdminServerHandle {
    socket: PathBuf,
    socket_id: (u64, u64),
    tcp: Option<SocketAddr>,
    _stop: watch::Sender<()>,
}

impl AdminServerHandle {
    /// The Unix socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The loopback TCP address it also serves on, if any (the bound one: port 0 resolved).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }
}

impl Drop for AdminServerHandle {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.socket)
            .map(|m| (m.dev(), m.ino()) == self.socket_id)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Serve `service` on a fresh Unix socket at `socket` (mode 0600; the parent directory is
/// created if missing; a stale socket file is replaced, a live one is an error) and, if given,
/// on the loopback TCP address of `tcp`, where every call must carry its token (else
/// `unauthenticated`). Returns once both are bound.
pub async fn serve<T: Admin>(
    service: T,
    socket: &Path,
    tcp: Option<(SocketAddr, String)>,
) -> anyhow::Result<AdminServerHandle> {
    let (tcp, token) = match tcp {
        Some((addr, token)) => (Some(addr), token),
        None => (None, String::new()),
    };
    let listener = bind_private(socket)?;
    let meta = std::fs::symlink_metadata(socket)
        .with_context(|| format!("admin.socket {}", socket.display()))?;
    let tcp_listener = match tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin.tcp {addr}"))?,
        ),
        None => None,
    };
    let tcp_bound = match &tcp_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let (stop, stopped) = watch::channel(());
    let svc = AdminServer::new(service);
    {
        let svc = svc.clone();
        let mut stopped = stopped.clone();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let path = socket.display().to_string();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(socket = %path, error = %error_chain(&e), "admin API stopped");
            }
        });
    }
    if let Some(listener) = tcp_listener {
        let mut stopped = stopped.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let expected = format!("Bearer {token}");
        let checked = tonic::service::interceptor::InterceptedService::new(
            svc,
            move |request: tonic::Request<()>| {
                let presented = request
                    .metadata()
                    .get(AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if same_secret(presented, expected.as_bytes()) {
                    Ok(request)
                } else {
                    tracing::warn!("admin API (TCP): a call without the right token refused");
                    Err(tonic::Status::unauthenticated(
                        "admin.tcp needs the token of admin.tcp_token_file (--token-file)",
                    ))
                }
            },
        );
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = Server::builder()
                .add_service(checked)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(error = %error_chain(&e), "admin API (TCP) stopped");
            }
        });
    }
    tracing::info!(socket = %socket.display(), tcp = ?tcp_bound, "admin API listening");
    Ok(AdminServerHandle {
        socket: socket.to_owned(),
        socket_id: (meta.dev(), meta.ino()),
        tcp: tcp_bound,
        _stop: stop,
    })
}

/// Bind a Unix socket that never exists with permissions wider than 0600: it is bound in a
/// private (0700) staging directory next to `path`, restricted, then renamed into place.
fn bind_private(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let setting = || format!("admin.socket {}", path.display());
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&parent)
            .with_context(|| format!("{}: creating {}", setting(), parent.display()))?;
    }
    remove_stale(path).with_context(setting)?;
    let staging = parent.join(format!(".admin-{}.tmp", std::process::id()));
    let staged = staging.join("s");
    if staged.as_os_str().len() > MAX_SOCKET_PATH {
        // No room for the staging name: bind in place and restrict at once.
        let listener = tokio::net::UnixListener::bind(path).with_context(setting)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(setting)?;
        return Ok(listener);
    }
    // A leftover of an earlier process with our pid.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("{}: creating {}", setting(), staging.display()))?;
    let bound = (|| -> std::io::Result<tokio::net::UnixListener> {
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    bound.with_context(setting)
}

/// Remove a socket file nobody listens on; refuse to touch anything else.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        bail!("exists and is not a socket; not replacing it");
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("in use: another daemon is listening on it (already running?)");
    }
    std::fs::remove_file(path).context("removing the stale socket")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client

/// Which daemon a command talks to by default.
#[derive(Debug, Clone, Copy)]
pub struct Daemon {
    /// "edge" or "core".
    pub binary: &'static str,
    /// The config file read for `[admin]` when `--config` is not given (if it exists).
    pub default_config: &'static str,
    /// The socket when no config names one.
    pub default_socket: &'static str,
}

/// Options of every subcommand that talks to a running daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// The daemon's admin socket [default: `[admin].socket` of the config file, else
    /// /run/causeway-<binary>/<binary>.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Talk to the admin API on this loopback TCP address (`[admin].tcp`) instead.
    #[arg(long, value_name = "ADDR", conflicts_with = "socket")]
    pub tcp: Option<SocketAddr>,
    /// With `--tcp`: the file holding the token [default: `[admin].tcp_token_file` of the
    /// config file].
    #[arg(long, value_name = "FILE", requires = "tcp")]
    pub token_file: Option<PathBuf>,
    /// Config file whose `[admin].socket` to use [default: /etc/causeway/<binary>.toml, when
    /// it exists].
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the admin API is.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// A loopback TCP address, and the token it requires.
    Tcp(SocketAddr, String),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "socket {}", p.display()),
            Target::Tcp(a, _) => write!(f, "tcp {a}"),
        }
    }
}

impl DaemonArgs {
    /// `--tcp` (with `--token-file` or the config's token), `--socket`, the config's
    /// `[admin].socket`, or the built-in default.
    pub fn target(&self, daemon: &Daemon) -> anyhow::Result<Target> {
        if let (Some(addr), Some(file)) = (self.tcp, &self.token_file) {
            return Ok(Target::Tcp(addr, read_token(file)?));
        }
        if let Some(p) = &self.socket {
            return Ok(Target::Unix(p.clone()));
        }
        let config = match &self.config {
            Some(c) => Some(c.clone()),
            None => {
                let d = PathBuf::from(daemon.default_config);
                d.is_file().then_some(d)
            }
        };
        let section = match config {
            Some(c) => admin_section_of(&c)?,
            None => AdminSection::default(),
        };
        if let Some(addr) = self.tcp {
            let Some(file) = &section.tcp_token_file else {
                bail!("--tcp {addr}: give --token-file, or --config with admin.tcp_token_file");
            };
            return Ok(Target::Tcp(addr, read_token(file)?));
        }
        Ok(Target::Unix(section.socket_or(daemon.default_socket)))
    }
}

/// A connected client, and what it is connected to.
pub struct Connection {
    /// The gRPC client.
    pub client: AdminClient<Channel>,
    /// Where.
    pub target: Target,
    /// Which daemon, for messages.
    pub binary: &'static str,
}

impl Connection {
    /// Connect, or say which socket could not be reached.
    pub async fn open(daemon: &Daemon, args: &DaemonArgs) -> anyhow::Result<Self> {
        let target = args.target(daemon)?;
        let endpoint = match &target {
            Target::Unix(p) => Endpoint::from_shared(format!("unix:{}", p.display())),
            Target::Tcp(a, _) => Endpoint::from_shared(format!("http://{a}")),
        }
        .with_context(|| format!("admin API address {target}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120));
        let channel = endpoint.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the {} daemon at {target}: {} (is it running, and is this its [admin] socket?)",
                daemon.binary,
                error_chain(&e)
            )
        })?;
        Ok(Self {
            client: AdminClient::new(channel),
            target,
            binary: daemon.binary,
        })
    }

    /// `message` as a request, with the token when the target is TCP.
    fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        if let Target::Tcp(_, token) = &self.target {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert(AUTHORIZATION, value);
            }
        }
        request
    }

    fn failed(&self, rpc: &str, status: &tonic::Status) -> anyhow::Error {
        anyhow::anyhow!(
            "{} daemon at {}: {rpc} failed: {}",
            self.binary,
            self.target,
            status.message()
        )
    }

    /// The Status RPC.
    pub async fn status(&mut self) -> anyhow::Result<StatusReply> {
        match self.client.status(self.request(StatusRequest {})).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed("Status", &s)),
        }
    }

    /// The Connections RPC.
    pub async fn connections(&mut self) -> anyhow::Result<Vec<Session>> {
        match self
            .client
            .connections(self.request(ConnectionsRequest {}))
            .await
        {
            Ok(r) => Ok(r.into_inner().sessions),
            Err(s) => Err(self.failed("Connections", &s)),
        }
    }

    /// The Reload RPC.
    pub async fn reload(&mut self) -> anyhow::Result<ReloadReply> {
        match self.client.reload(self.request(ReloadRequest {})).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed("Reload", &s)),
        }
    }

    /// The Servers RPC (core only); `refresh` runs discovery first.
    pub async fn servers(
        &mut self,
        refresh: bool,
    ) -> anyhow::Result<causeway_api::admin::ServersReply> {
        let request = causeway_api::admin::ServersRequest { refresh };
        match self.client.servers(self.request(request)).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed("Servers", &s)),
        }
    }
}

/// `<binary> drain`: drain the daemon without stopping it. Exit code 0 when everything was
/// handed over in time, 1 when the deadline passed first (it says what was left).
pub async fn drain_command(daemon: &Daemon, args: &DaemonArgs) -> anyhow::Result<i32> {
    let mut conn = Connection::open(daemon, args).await?;
    let reply = match conn.client.drain(conn.request(DrainRequest {})).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(conn.failed("Drain", &s)),
    };
    if args.json {
        print_json(&reply)?;
    } else {
        println!("{}", reply.summary);
    }
    Ok(if reply.complete { 0 } else { 1 })
}

/// The reply of a Drain RPC.
pub fn drain_reply(outcome: crate::drain::Outcome) -> causeway_api::admin::DrainReply {
    causeway_api::admin::DrainReply {
        complete: outcome.complete,
        summary: outcome.summary,
    }
}

/// `<binary> connections`: every s2s session, as a table or a JSON array. Exit code 0.
pub async fn connections_command(daemon: &Daemon, args: &DaemonArgs) -> anyhow::Result<i32> {
    let sessions = Connection::open(daemon, args).await?.connections().await?;
    if args.json {
        print_json(&sessions)?;
    } else {
        print!("{}", sessions_table(&sessions));
    }
    Ok(0)
}

/// `<binary> reload`: ask the daemon to apply its config file again. Exit code 0 when it did,
/// 1 when it refused (the running config stays).
pub async fn reload_command(daemon: &Daemon, args: &DaemonArgs) -> anyhow::Result<i32> {
    let reply = Connection::open(daemon, args).await?.reload().await?;
    if args.json {
        print_json(&reply)?;
    } else if reply.ok {
        println!("reloaded: {}", reply.message);
    } else {
        println!(
            "reload refused (the running config stays): {}",
            reply.message
        );
    }
    Ok(if reply.ok { 0 } else { 1 })
}

/// The reply of a Reload RPC from what `Edge::reload` / `Core::reload` returned.
pub fn reload_reply(result: anyhow::Result<String>) -> ReloadReply {
    match result {
        Ok(message) => {
            tracing::info!(summary = %message, "config reloaded (admin API)");
            ReloadReply { ok: true, message }
        }
        Err(e) => {
            let message = format!("{e:#}");
            tracing::warn!(error = %message, "config reload refused (admin API); the running config stays");
            ReloadReply { ok: false, message }
        }
    }
}

/// Flush stdout and end the process with `code` (for the non-zero codes that are not errors).
pub fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// The end of a daemon command: `Ok` for exit code 0, otherwise the process ends with `code`.
pub fn finish(code: i32) -> anyhow::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        exit(code)
    }
}

/// Pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// From the live state to the messages

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The parts of a StatusReply both daemons fill alike.
pub fn status_common(
    binary: &str,
    started: SystemTime,
    config: &Path,
    s2s: &causeway_s2s::S2s,
    tunnel: &causeway_tunnel::TunnelStats,
) -> StatusReply {
    let sessions = s2s.sessions();
    let count = |d| sessions.iter().filter(|s| s.direction == d).count() as u64;
    StatusReply {
        binary: binary.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_unix: unix_secs(started),
        uptime_secs: started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        config: config.display().to_string(),
        sessions: Some(SessionCounts {
            incoming: count(causeway_s2s::Direction::Inbound),
            outgoing: count(causeway_s2s::Direction::Outbound),
        }),
        counters: Some(counters(&s2s.counters)),
        tunnel_links: tunnel_links(tunnel),
        edge: None,
        core: None,
        warnings: Vec::new(),
    }
}

/// The s2s counters.
pub fn counters(c: &causeway_s2s::Counters) -> Counters {
    use std::sync::atomic::Ordering::Relaxed;
    Counters {
        stanzas_in: c.stanzas_in.load(Relaxed),
        stanzas_out: c.stanzas_out.load(Relaxed),
        stanzas_refused: c.stanzas_refused.load(Relaxed),
        stanzas_bounced: c.stanzas_bounced.load(Relaxed),
        tls_failures: c.tls_failures.load(Relaxed),
        dialback_failures: c.dialback_failures.load(Relaxed),
    }
}

/// Tunnel counters per peer.
pub fn tunnel_links(stats: &causeway_tunnel::TunnelStats) -> Vec<TunnelLink> {
    stats
        .links
        .iter()
        .map(|(peer, l)| TunnelLink {
            peer: peer.clone(),
            connected: l.connected,
            unacked: l.unacked as u64,
            queued: l.queued,
            sent: l.sent,
            replayed: l.replayed,
            acked: l.acked,
            received: l.received,
            duplicates: l.duplicates,
            reconnects: l.reconnects,
        })
        .collect()
}

/// Every live s2s session.
pub fn sessions(s2s: &causeway_s2s::S2s) -> Vec<Session> {
    s2s.sessions().iter().map(session).collect()
}

/// One session.
pub fn session(info: &causeway_s2s::SessionInfo) -> Session {
    let mut remote_domains: Vec<String> = Vec::new();
    let mut local_domains: Vec<String> = Vec::new();
    for (remote, local) in &info.pairs {
        if !remote_domains.contains(remote) {
            remote_domains.push(remote.clone());
        }
        if !local_domains.contains(local) {
            local_domains.push(local.clone());
        }
    }
    Session {
        id: info.id,
        direction: info.direction.as_str().to_owned(),
        address: info.peer.to_string(),
        remote_domains,
        local_domains,
        pairs: info
            .pairs
            .iter()
            .map(|(remote, local)| DomainPair {
                remote: remote.clone(),
                local: local.clone(),
            })
            .collect(),
        tls: info.tls.as_ref().map(|t| Tls {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            direct: t.direct,
        }),
        auth: info.auth.to_owned(),
        stanzas_in: info.stanzas_in,
        stanzas_out: info.stanzas_out,
        started_unix: unix_secs(info.started),
        idle_secs: info.idle.as_secs(),
    }
}

// ---------------------------------------------------------------------------------------------
// Text output

/// Columns padded to their widest cell, two spaces apart, each line indented by `indent`.
pub fn table(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(indent);
        let mut cells = cells.enumerate().peekable();
        while let Some((i, cell)) = cells.next() {
            s.push_str(cell);
            if cells.peek().is_some() {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// "3d 4h", "2h 5m", "4m 12s", "12s".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// "2026-05-01 12:34:56 UTC".
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// "2026-05-01 12:34:56 UTC (4m 12s ago)", or "unknown" for 0.
pub fn since(unix: u64) -> String {
    if unix == 0 {
        return "unknown".into();
    }
    let ago = unix_secs(SystemTime::now()).saturating_sub(unix);
    format!("{} ({} ago)", utc(unix), duration(ago))
}

/// The first lines of a status: what, version, uptime.
pub fn render_header(reply: &StatusReply, name: &str) -> String {
    format!(
        "{name} {}, up {} (since {}), config {}\n",
        reply.version,
        duration(reply.uptime_secs),
        utc(reply.started_unix),
        reply.config
    )
}

/// `<daemon> status`: ask the daemon, print its answer (a table from `render`, or JSON with
/// `--json`) and return the exit code `render` chose; an error (exit 1) when the daemon cannot
/// be reached.
pub async fn status_command(
    daemon: &Daemon,
    args: &DaemonArgs,
    render: fn(&StatusReply) -> (String, i32),
) -> anyhow::Result<i32> {
    let reply = Connection::open(daemon, args).await?.status().await?;
    let (text, code) = render(&reply);
    if args.json {
        print_json(&reply)?;
    } else {
        print!("{text}");
    }
    Ok(code)
}

/// Session counts and counters (and certificate warnings), as both daemons print them.
pub fn render_counters(reply: &StatusReply, sessions_with: &str) -> String {
    let mut out = render_counts(reply, sessions_with);
    if !reply.warnings.is_empty() {
        out.push_str("warnings:\n");
        for w in &reply.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}

fn render_counts(reply: &StatusReply, sessions_with: &str) -> String {
    let s = reply.sessions.unwrap_or_default();
    let c = reply.counters.unwrap_or_default();
    format!(
        "s2s sessions {sessions_with}: {} incoming, {} outgoing\n\
         stanzas: {} in, {} out, {} refused, {} bounced\n\
         failures: {} TLS handshakes, {} dialback\n",
        s.incoming,
        s.outgoing,
        c.stanzas_in,
        c.stanzas_out,
        c.stanzas_refused,
        c.stanzas_bounced,
        c.tls_failures,
        c.dialback_failures
    )
}

/// The tunnel counters table; `peer` names the first column.
pub fn render_tunnel_links(links: &[TunnelLink], peer: &str) -> String {
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            vec![
                l.peer.clone(),
                if l.connected { "yes" } else { "no" }.into(),
                l.unacked.to_string(),
                l.sent.to_string(),
                l.received.to_string(),
                l.acked.to_string(),
                l.replayed.to_string(),
                l.duplicates.to_string(),
                l.reconnects.to_string(),
            ]
        })
        .collect();
    table(
        "  ",
        &[
            peer,
            "CONNECTED",
            "UNACKED",
            "SENT",
            "RECEIVED",
            "ACKED",
            "REPLAYED",
            "DUPLICATES",
            "RECONNECTS",
        ],
        &rows,
    )
}

/// The sessions table of `connections`.
pub fn sessions_table(sessions: &[Session]) -> String {
    if sessions.is_empty() {
        return "no s2s sessions\n".into();
    }
    let or_dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(",")
        }
    };
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.direction.clone(),
                or_dash(&s.remote_domains),
                s.address.clone(),
                or_dash(&s.local_domains),
                match &s.tls {
                    Some(t) => format!(
                        "{} {} ({})",
                        t.version,
                        t.cipher,
                        if t.direct { "direct TLS" } else { "STARTTLS" }
                    ),
                    None => "none".into(),
                },
                if s.auth.is_empty() {
                    "-".into()
                } else {
                    s.auth.clone()
                },
                s.stanzas_in.to_string(),
                s.stanzas_out.to_string(),
                duration(s.idle_secs),
            ]
        })
        .collect();
    table(
        "",
        &[
            "ID",
            "DIRECTION",
            "REMOTE DOMAIN",
            "ADDRESS",
            "LOCAL DOMAIN",
            "TLS",
            "AUTH",
            "IN",
            "OUT",
            "IDLE",
        ],
        &rows,
    )
}

/// An error and its sources, one after the other (tonic's transport errors say little alone).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
        assert_eq!(utc(1_772_323_200), "2026-03-01 00:00:00 UTC");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(duration(2 * 86_400 + 5 * 3600), "2d 5h");
    }

    #[test]
    fn tables_align() {
        let t = table(
            "",
            &["A", "LONG HEADER"],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }

    #[test]
    fn tcp_must_be_loopback_and_need_a_private_token() {
        let dir = std::env::temp_dir().join(format!("causeway-admin-tok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let section = |tcp: &str, file: Option<&Path>| AdminSection {
            socket: None,
            tcp: Some(tcp.parse().expect("addr")),
            tcp_token_file: file.map(Path::to_path_buf),
        };
        let error = |s: AdminSection| {
            s.validate()
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(section("127.0.0.1:7401", Some(&token)).validate().is_ok());
        assert!(section("[::1]:7401", Some(&token)).validate().is_ok());
        let wide = error(section("0.0.0.0:7401", Some(&token)));
        assert!(wide.contains("not a loopback address"), "{wide}");
        let tokenless = error(section("127.0.0.1:7401", None));
        assert!(tokenless.contains("admin.tcp_token_file"), "{tokenless}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = error(section("127.0.0.1:7401", Some(&token)));
        assert!(open.contains("open to other users (mode 0644)"), "{open}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&token, "short\n").expect("token");
        let short = error(section("127.0.0.1:7401", Some(&token)));
        assert!(short.contains("at least 32 characters"), "{short}");
        let stray = AdminSection {
            tcp_token_file: Some(token.clone()),
            ..AdminSection::default()
        };
        assert!(error(stray).contains("without admin.tcp"));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn section_from_a_config_file() {
        let dir = std::env::temp_dir().join(format!("causeway-admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("edge.toml");
        std::fs::write(
            &file,
            "[tunnel]\nwhatever = 1\n[admin]\nsocket = \"run/e.sock\"\n",
        )
        .expect("write");
        let s = admin_section_of(&file).expect("section");
        assert_eq!(s.socket_or("/default"), dir.join("run/e.sock"));
        std::fs::write(&file, "[tunnel]\n").expect("write");
        let s = admin_section_of(&file).expect("section");
        assert_eq!(s.socket_or("/default"), PathBuf::from("/default"));
        std::fs::write(&file, "[admin]\nsockets = \"x\"\n").expect("write");
        assert!(admin_section_of(&file).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    struct Nothing;

    #[tonic::async_trait]
    impl Admin for Nothing {
        async fn status(
            &self,
            _: tonic::Request<StatusRequest>,
        ) -> Result<tonic::Response<StatusReply>, tonic::Status> {
            Ok(tonic::Response::new(StatusReply {
                binary: "test".into(),
                ..Default::default()
            }))
        }
        async fn connections(
            &self,
            _: tonic::Request<ConnectionsRequest>,
        ) -> Result<tonic::Response<causeway_api::admin::ConnectionsReply>, tonic::Status> {
            Ok(tonic::Response::new(Default::default()))
        }
        async fn reload(
            &self,
            _: tonic::Request<ReloadRequest>,
        ) -> Result<tonic::Response<ReloadReply>, tonic::Status> {
            Ok(tonic::Response::new(reload_reply(Err(anyhow::anyhow!(
                "not today"
            )))))
        }
        async fn servers(
            &self,
            _: tonic::Request<causeway_api::admin::ServersRequest>,
        ) -> Result<tonic::Response<causeway_api::admin::ServersReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("no servers here"))
        }
        async fn drain(
            &self,
            _: tonic::Request<causeway_api::admin::DrainRequest>,
        ) -> Result<tonic::Response<causeway_api::admin::DrainReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("no drain here"))
        }
    }

    #[tokio::test]
    async fn serves_on_a_private_socket_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("causeway-admin-srv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("sub/admin.sock");
        // A stale socket file (nobody listening) is replaced.
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale"));
        assert!(socket.exists());

        let token = "0123456789abcdef0123456789abcdef".to_owned();
        let tcp = Some(("127.0.0.1:0".parse().expect("addr"), token.clone()));
        let handle = serve(Nothing, &socket, tcp).await.expect("serve");
        let mode = std::fs::metadata(&socket)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A second server on the same live socket is refused.
        let again = serve(Nothing, &socket, None).await;
        assert!(again.is_err());

        let daemon = Daemon {
            binary: "test",
            default_config: "/nonexistent/test.toml",
            default_socket: "/nonexistent/test.sock",
        };
        let mut args = DaemonArgs {
            socket: Some(socket.clone()),
            tcp: None,
            token_file: None,
            config: None,
            json: false,
        };
        let mut conn = Connection::open(&daemon, &args).await.expect("connect");
        assert_eq!(conn.status().await.expect("status").binary, "test");
        let reload = conn.reload().await.expect("reload");
        assert!(!reload.ok);
        assert_eq!(reload.message, "not today");

        // TCP: only with the token.
        args.socket = None;
        args.tcp = handle.tcp_addr();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        args.token_file = Some(token_file.clone());
        let mut conn = Connection::open(&daemon, &args).await.expect("connect tcp");
        assert!(conn.connections().await.expect("connections").is_empty());
        std::fs::write(&token_file, "the-wrong-token-the-wrong-token-!\n").expect("token");
        let mut wrong = Connection::open(&daemon, &args).await.expect("connect tcp");
        let refused = wrong.status().await.err().map(|e| format!("{e:#}"));
        assert!(
            refused.as_deref().unwrap_or("").contains("needs the token"),
            "{refused:?}"
        );
        let Some(addr) = handle.tcp_addr() else {
            panic!("no tcp address")
        };
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let bare = AdminClient::new(channel).status(StatusRequest {}).await;
        assert_eq!(
            bare.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated),
            "a call without a token"
        );
        args.token_file = None;

        args.tcp = None;
        args.socket = Some(dir.join("nothing.sock"));
        let err = Connection::open(&daemon, &args)
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("nothing.sock"), "{err}");

        drop(handle);
        assert!(
            !socket.exists(),
            "the socket file stays after the server stopped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
