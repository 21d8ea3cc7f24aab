//! [`Prosody`]: a real Prosody 0.12 on a loopback address.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::certs::{CertFiles, Certs};
use crate::process::{wait_tcp_or_exit, ChildGuard};
use crate::util::{chown_recursive, free_port, lua_str, tail_file, temp_dir, user_ids, TempDir};

/// The shipped route plugin (`deploy/prosody/mod_causeway_route.lua`).
pub const ROUTE_PLUGIN_LUA: &str = include_str!("../../../deploy/prosody/mod_causeway_route.lua");

/// What to run. Build one with [`ProsodySpec::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct ProsodySpec {
    /// Loopback address it listens on (c2s and s2s). Its outgoing s2s
    /// connections come from 127.0.0.1 whatever this is.
    pub ip: Ipv4Addr,
    /// The VirtualHost.
    pub domain: String,
    /// Accounts (localpart, password), written before start (internal_plain).
    pub users: Vec<(String, String)>,
    /// A MUC component (e.g. `conference.example.com`), rooms unlocked on
    /// creation (`muc_room_locking = false`).
    pub muc: Option<String>,
    /// DNS server for libunbound (forward to it; `test.` made resolvable).
    /// `None`: libunbound is pointed at a dead loopback port (never at the
    /// system resolver), so nothing resolves.
    pub dns: Option<SocketAddr>,
    /// Load the route plugin and send ALL outgoing s2s to this address.
    pub route_s2s_to: Option<SocketAddr>,
    /// c2s port (STARTTLS offered, not required; PLAIN allowed).
    pub c2s_port: u16,
    /// s2s port (STARTTLS required, dialback enabled).
    pub s2s_port: u16,
    /// Lua lines appended to the global section.
    pub extra_global: String,
    /// Lua lines appended inside the VirtualHost section.
    pub extra_host: String,
    /// Extra entries for the global `modules_enabled`.
    pub extra_modules: Vec<String>,
    /// Issue the host certificates from this CA and trust it (`cafile`), so
    /// that peers with certificates from the same CA are verified (SASL
    /// EXTERNAL). `None`: self-signed certificates, dialback only.
    pub ca: Option<Arc<Certs>>,
    /// Minimum log level to the log file (`debug` by default; `info` for
    /// throughput tests).
    pub log_level: String,
    /// SIGTERM grace on stop before SIGKILL (default 3 s; a Prosody with
    /// open s2s sessions takes about 1 s to stop cleanly; 0: SIGKILL at once).
    pub stop_grace: Duration,
}

impl ProsodySpec {
    /// A spec for `domain` on `ip` with free ports and no users.
    pub fn new(ip: Ipv4Addr, domain: &str) -> Self {
        Self {
            ip,
            domain: domain.to_owned(),
            users: Vec::new(),
            muc: None,
            dns: None,
            route_s2s_to: None,
            c2s_port: free_port(ip),
            s2s_port: free_port(ip),
            extra_global: String::new(),
            extra_host: String::new(),
            extra_modules: Vec::new(),
            ca: None,
            log_level: "debug".to_owned(),
            stop_grace: Duration::from_secs(3),
        }
    }

    /// Adds an account.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }
}

/// A running Prosody (as the `prosody` user), killed on drop.
pub struct Prosody {
    /// What it runs with.
    pub spec: ProsodySpec,
    /// Its directory (config, data, certs, logs).
    pub dir: PathBuf,
    /// The generated configuration file.
    pub config_path: PathBuf,
    /// Its log file (level per `spec.log_level`).
    pub log_path: PathBuf,
    /// The host certificate.
    pub cert: CertFiles,
    guard: ChildGuard,
    _tmp: TempDir,
}

impl std::fmt::Debug for Prosody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prosody")
            .field("domain", &self.spec.domain)
            .field("c2s", &self.c2s_addr())
            .field("s2s", &self.s2s_addr())
            .field("dir", &self.dir)
            .finish()
    }
}

/// Prosody's datamanager file-name encoding (every non-alphanumeric byte as %xx).
fn dm_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

fn ssl_block(cert: &CertFiles, ca: Option<&Path>) -> String {
    let mut s = format!(
        "ssl = {{ certificate = {}; key = {};",
        lua_str(&cert.cert_pem.to_string_lossy()),
        lua_str(&cert.key_pem.to_string_lossy())
    );
    if let Some(ca) = ca {
        let _ = write!(s, " cafile = {};", lua_str(&ca.to_string_lossy()));
    }
    s.push_str(" }\n");
    s
}

impl Prosody {
    /// Writes the configuration, accounts and certificates, starts Prosody and
    /// waits until its c2s and s2s ports accept.
    pub fn start(spec: ProsodySpec) -> Result<Self> {
        if !spec.ip.is_loopback() {
            bail!("Prosody must listen on a loopback address, not {}", spec.ip);
        }
        let tmp = temp_dir(&format!("cw-prosody-{}-", spec.domain))?;
        let dir = tmp.path().to_owned();
        let p = |name: &str| dir.join(name);
        let data = p("data");
        let certs_dir = p("certs");
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&certs_dir)?;

        // Certificates: Prosody also finds them by name in `certificates`.
        let mut names = vec![spec.domain.as_str()];
        if let Some(m) = &spec.muc {
            names.push(m.as_str());
        }
        let issue = |names: &[&str]| match &spec.ca {
            Some(ca) => {
                let files = ca.issue(names)?;
                // Copy into our own directory (owned by prosody).
                let stem = names[0];
                let local = CertFiles {
                    cert_pem: certs_dir.join(format!("{stem}.crt")),
                    key_pem: certs_dir.join(format!("{stem}.key")),
                    combined_pem: certs_dir.join(format!("{stem}.pem")),
                };
                fs::copy(&files.cert_pem, &local.cert_pem)?;
                fs::copy(&files.key_pem, &local.key_pem)?;
                fs::copy(&files.combined_pem, &local.combined_pem)?;
                anyhow::Ok(local)
            }
            None => Certs::self_signed(&certs_dir, names),
        };
        let cert = issue(&names)?;
        let muc_cert = match &spec.muc {
            Some(m) => Some(issue(&[m.as_str()])?),
            None => None,
        };
        let ca_file = match &spec.ca {
            Some(ca) => {
                let f = certs_dir.join("ca.pem");
                fs::copy(&ca.ca_pem, &f)?;
                Some(f)
            }
            None => None,
        };

        // Accounts (mod_auth_internal_plain's store).
        for (user, pass) in &spec.users {
            let acc = data.join(dm_encode(&spec.domain)).join("accounts");
            fs::create_dir_all(&acc)?;
            fs::write(
                acc.join(format!("{}.dat", dm_encode(user))),
                format!("return {{\n\t[\"password\"] = {};\n}};\n", lua_str(pass)),
            )?;
        }

        let mut modules: Vec<String> = [
            "roster",
            "saslauth",
            "tls",
            "dialback",
            "disco",
            "ping",
            "admin_shell",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cfg = String::new();
        let q = |path: &Path| lua_str(&path.to_string_lossy());
        let _ = writeln!(cfg, "-- generated by causeway-testkit");
        let _ = writeln!(cfg, "pidfile = {}", q(&p("prosody.pid")));
        let _ = writeln!(cfg, "data_path = {}", q(&data));
        let _ = writeln!(cfg, "certificates = {}", q(&certs_dir));
        let log_path = p("prosody.log");
        let _ = writeln!(
            cfg,
            "log = {{ {{ levels = {{ min = {} }}, to = \"file\", filename = {} }} }}",
            lua_str(&spec.log_level),
            q(&log_path)
        );
        let ip = lua_str(&spec.ip.to_string());
        let _ = writeln!(cfg, "interfaces = {{ {ip} }}");
        let _ = writeln!(cfg, "local_interfaces = {{ {ip} }}");
        let _ = writeln!(cfg, "c2s_ports = {{ {} }}", spec.c2s_port);
        let _ = writeln!(cfg, "s2s_ports = {{ {} }}", spec.s2s_port);
        let _ = writeln!(
            cfg,
            "c2s_direct_tls_ports = {{ }}\ns2s_direct_tls_ports = {{ }}\n\
             http_ports = {{ }}\nhttps_ports = {{ }}\n\
             http_interfaces = {{ {ip} }}\nhttps_interfaces = {{ {ip} }}"
        );
        let _ = writeln!(cfg, "admin_socket = {}", q(&p("prosody.sock")));
        let _ = writeln!(
            cfg,
            "authentication = \"internal_plain\"\nstorage = \"internal\"\n\
             c2s_require_encryption = false\nallow_unencrypted_plain_auth = true\n\
             s2s_require_encryption = true\ns2s_secure_auth = false\n\
             muc_room_locking = false"
        );
        let forward = match spec.dns {
            Some(addr) => format!("{}@{}", addr.ip(), addr.port()),
            // Never fall back to the system resolver: a dead loopback port.
            None => "127.0.0.1@9".to_owned(),
        };
        let _ = writeln!(
            cfg,
            "unbound = {{ resolvconf = false; hoststxt = false; forward = {{ {} }}; \
             options = {{ [\"local-zone:\"] = \"test. transparent\" }} }}",
            lua_str(&forward)
        );
        if let Some(route) = spec.route_s2s_to {
            let plugins = p("plugins");
            fs::create_dir_all(&plugins)?;
            fs::write(plugins.join("mod_causeway_route.lua"), ROUTE_PLUGIN_LUA)?;
            let _ = writeln!(cfg, "plugin_paths = {{ {} }}", q(&plugins));
            let _ = writeln!(
                cfg,
                "causeway_route_host = {}\ncauseway_route_port = {}",
                lua_str(&route.ip().to_string()),
                route.port()
            );
            modules.push("causeway_route".to_owned());
        }
        modules.extend(spec.extra_modules.iter().cloned());
        let list: Vec<String> = modules.iter().map(|m| lua_str(m)).collect();
        let _ = writeln!(cfg, "modules_enabled = {{ {} }}", list.join("; "));
        cfg.push_str(&spec.extra_global);
        cfg.push('\n');
        let _ = writeln!(cfg, "\nVirtualHost {}", lua_str(&spec.domain));
        cfg.push_str(&ssl_block(&cert, ca_file.as_deref()));
        cfg.push_str(&spec.extra_host);
        cfg.push('\n');
        if let (Some(muc), Some(mc)) = (&spec.muc, &muc_cert) {
            let _ = writeln!(cfg, "\nComponent {} \"muc\"", lua_str(muc));
            cfg.push_str(&ssl_block(mc, ca_file.as_deref()));
        }
        let config_path = p("prosody.cfg.lua");
        fs::write(&config_path, cfg)?;

        let (uid, gid) = user_ids("prosody")?;
        chown_recursive(&dir, uid, gid)?;

        // Run as prosody directly (not through runuser, whose signal
        // handling adds seconds to every stop).
        let mut cmd = Command::new("prosody");
        cmd.arg("--config")
            .arg(&config_path)
            .uid(uid)
            .gid(gid)
            .env("HOME", &dir)
            .env("USER", "prosody")
            .env("LOGNAME", "prosody")
            .current_dir(&dir);
        let mut guard = ChildGuard::spawn(
            &format!("prosody {}", spec.domain),
            cmd,
            &p("prosody.stdout"),
        )?
        .with_grace(spec.stop_grace);
        let addrs = [
            SocketAddr::V4(SocketAddrV4::new(spec.ip, spec.c2s_port)),
            SocketAddr::V4(SocketAddrV4::new(spec.ip, spec.s2s_port)),
        ];
        wait_tcp_or_exit(&mut guard, &addrs, Duration::from_secs(20), Some(&log_path))
            .with_context(|| format!("starting Prosody for {}", spec.domain))?;
        Ok(Self {
            spec,
            dir,
            config_path,
            log_path,
            cert,
            guard,
            _tmp: tmp,
        })
    }

    /// The Prosody process id (to stop or continue it in liveness tests).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Where clients connect.
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.spec.ip, self.spec.c2s_port))
    }

    /// Where servers connect.
    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.spec.ip, self.spec.s2s_port))
    }

    /// Runs a `prosodyctl shell` command (e.g. `s2s:show()`,
    /// `user:create("u@d", "pw")`) and returns its output.
    pub fn shell(&self, command: &str) -> Result<String> {
        let (uid, gid) = user_ids("prosody")?;
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.config_path)
            .uid(uid)
            .gid(gid)
            .env("HOME", &self.dir)
            .args(["shell", command])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .context("running prosodyctl shell")?;
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(s)
    }

    /// `prosodyctl shell "s2s:show()"`: s2s sessions with direction, TLS and
    /// authentication method (for diagnostics; errors are returned as text).
    pub fn s2s_show(&self) -> String {
        self.shell("s2s:show()")
            .unwrap_or_else(|e| format!("s2s:show() failed: {e:#}"))
    }

    /// Creates an account on the running server.
    pub fn add_user(&self, user: &str, password: &str) -> Result<()> {
        let jid = format!("{user}@{}", self.spec.domain);
        let out = self.shell(&format!(
            "user:create({}, {})",
            lua_str(&jid),
            lua_str(password)
        ))?;
        if !out.contains("OK") {
            bail!("user:create failed: {out}");
        }
        Ok(())
    }

    /// The last `n` lines of Prosody's log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = tail_file(&self.log_path, n);
        let stdout = self.guard.log_tail(20);
        if !stdout.trim().is_empty() {
            s.push_str("--- stdout/stderr ---\n");
            s.push_str(&stdout);
        }
        s
    }

    /// Stops Prosody (SIGTERM, then SIGKILL after `spec.stop_grace`); also
    /// done on drop.
    pub fn stop(mut self) {
        self.guard.kill();
    }
}
