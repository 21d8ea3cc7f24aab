//! [`Ejabberd`]: a real ejabberd 23.01 on a loopback address.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::certs::{CertFiles, Certs};
use crate::process::{wait_tcp_or_exit, ChildGuard};
use crate::util::{chown_recursive, free_port, tail_file, temp_dir, user_ids, yaml_str, TempDir};

/// What to run. Build one with [`EjabberdSpec::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct EjabberdSpec {
    /// Loopback address of its listeners (c2s, s2s, HTTP API).
    pub ip: Ipv4Addr,
    /// The host.
    pub domain: String,
    /// Accounts (user, password), registered through the HTTP API at start.
    pub users: Vec<(String, String)>,
    /// The only DNS server Erlang's resolver uses (inetrc: `lookup` is
    /// `[file, dns]`, no resolv.conf, no hosts file; libc is never asked).
    pub dns: SocketAddr,
    /// c2s port (STARTTLS offered).
    pub c2s_port: u16,
    /// s2s port (STARTTLS; dialback via mod_s2s_dialback).
    pub s2s_port: u16,
    /// A MUC service host (e.g. `conference.partner2.test`).
    pub muc: Option<String>,
    /// HTTP port of mod_http_api (`/api`, open to 127.0.0.0/8).
    pub http_port: u16,
    /// `outgoing_s2s_port`: the port used when no SRV record exists (the
    /// "DNS view" recipe: wildcard A to core, no SRV, this = core's port).
    pub outgoing_s2s_port: Option<u16>,
    /// YAML appended at the top level of ejabberd.yml (must not repeat keys
    /// that are already set).
    pub extra_config: String,
    /// `s2s_use_starttls`: `required` (default), `optional` or `false`.
    pub s2s_use_starttls: String,
    /// Issue the certificates from this CA and trust it (`ca_file`);
    /// `None`: self-signed (peers fall back to dialback).
    pub ca: Option<Arc<Certs>>,
    /// `loglevel` (`info` by default; `debug` logs every stanza).
    pub loglevel: String,
    /// SIGTERM grace on stop (default 0: SIGKILL at once, ejabberd's clean
    /// shutdown takes 1-2 s).
    pub stop_grace: Duration,
    /// Run in a private mount namespace (`unshare -m`) with its own
    /// /etc/resolv.conf (nameserver = `dns` when on port 53, else an unused
    /// loopback address) and /etc/hosts (localhost only). Default true:
    /// ejabberd 23.01 resolves SRV targets and the A/AAAA fallback with libc
    /// `getaddrinfo` (p1_xmpp's `net:getaddrinfo`), which would otherwise
    /// ask the machine's resolver.
    pub private_etc: bool,
}

impl EjabberdSpec {
    /// A spec for `domain` on `ip` resolving through `dns`, with free ports.
    pub fn new(ip: Ipv4Addr, domain: &str, dns: SocketAddr) -> Self {
        Self {
            ip,
            domain: domain.to_owned(),
            users: Vec::new(),
            dns,
            c2s_port: free_port(ip),
            s2s_port: free_port(ip),
            muc: None,
            http_port: free_port(ip),
            outgoing_s2s_port: None,
            extra_config: String::new(),
            s2s_use_starttls: "required".into(),
            ca: None,
            loglevel: "info".to_owned(),
            stop_grace: Duration::ZERO,
            private_etc: true,
        }
    }

    /// Adds an account.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }
}

/// A running ejabberd (as the `ejabberd` user, no epmd: `ERL_DIST_PORT`),
/// killed on drop together with its port programs.
pub struct Ejabberd {
    /// What it runs with.
    pub spec: EjabberdSpec,
    /// Its directory (config, inetrc, certs, spool, logs).
    pub dir: PathBuf,
    /// The Erlang node name.
    pub node: String,
    /// The host certificate.
    pub cert: CertFiles,
    guard: ChildGuard,
    _tmp: TempDir,
}

impl std::fmt::Debug for Ejabberd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ejabberd")
            .field("domain", &self.spec.domain)
            .field("c2s", &self.c2s_addr())
            .field("s2s", &self.s2s_addr())
            .field("dir", &self.dir)
            .finish()
    }
}

fn erl_ip(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{{{},{},{},{}}}", o[0], o[1], o[2], o[3])
        }
        std::net::IpAddr::V6(v6) => {
            let s: Vec<String> = v6.segments().iter().map(|x| x.to_string()).collect();
            format!("{{{}}}", s.join(","))
        }
    }
}

static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Ejabberd {
    /// Writes the configuration, starts ejabberd, waits for its listeners and
    /// registers the users.
    pub fn start(spec: EjabberdSpec) -> Result<Self> {
        if !spec.ip.is_loopback() || !spec.dns.ip().is_loopback() {
            bail!("ejabberd and its DNS must be on loopback addresses");
        }
        let tmp = temp_dir(&format!("cw-ejabberd-{}-", spec.domain))?;
        let dir = tmp.path().to_owned();
        let p = |name: &str| dir.join(name);
        for d in ["certs", "logs", "spool", "home", "modules.d", "contrib"] {
            fs::create_dir_all(p(d))?;
        }
        let certs_dir = p("certs");
        let issue = |names: &[&str]| match &spec.ca {
            Some(ca) => {
                let f = ca.issue(names)?;
                let local = CertFiles {
                    cert_pem: certs_dir.join(format!("{}.crt", names[0])),
                    key_pem: certs_dir.join(format!("{}.key", names[0])),
                    combined_pem: certs_dir.join(format!("{}.pem", names[0])),
                };
                fs::copy(&f.cert_pem, &local.cert_pem)?;
                fs::copy(&f.key_pem, &local.key_pem)?;
                fs::copy(&f.combined_pem, &local.combined_pem)?;
                anyhow::Ok(local)
            }
            None => Certs::self_signed(&certs_dir, names),
        };
        let cert = issue(&[spec.domain.as_str()])?;
        let mut certfiles = vec![cert.combined_pem.clone()];
        if let Some(m) = &spec.muc {
            certfiles.push(issue(&[m.as_str()])?.combined_pem);
        }

        // Erlang resolver (SRV lookups, inet:gethostbyname): only our DNS
        // server; resolv_conf first (it resets the nameserver list), no hosts
        // file but localhost and the machine's name (looked up at start).
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let mut names = vec![yaml_str("localhost")];
        if !hostname.is_empty() && hostname != "localhost" {
            names.push(yaml_str(&hostname));
        }
        let inetrc = format!(
            "{{resolv_conf, \"\"}}.\n{{hosts_file, \"\"}}.\n{{nameserver, {}, {}}}.\n\
             {{lookup, [file, dns]}}.\n{{host, {{127,0,0,1}}, [{}]}}.\n",
            erl_ip(spec.dns.ip()),
            spec.dns.port(),
            names.join(",")
        );
        fs::write(p("inetrc"), inetrc)?;
        // libc's view (used for SRV targets and the A fallback), bind-mounted
        // over /etc in a private mount namespace.
        let libc_ns = if spec.dns.port() == 53 {
            spec.dns.ip().to_string()
        } else {
            // An unused loopback address: libc lookups fail fast.
            "127.255.255.254".to_owned()
        };
        fs::write(
            p("resolv.conf"),
            format!("nameserver {libc_ns}\noptions attempts:1 timeout:1\n"),
        )?;
        let mut hosts = "127.0.0.1\tlocalhost\n".to_owned();
        if !hostname.is_empty() && hostname != "localhost" {
            hosts.push_str(&format!("127.0.0.1\t{hostname}\n"));
        }
        fs::write(p("hosts"), hosts)?;

        let dist_port = free_port(Ipv4Addr::LOCALHOST);
        let node = format!(
            "cw{}x{}@localhost",
            std::process::id(),
            NODE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ctl = format!(
            "ERL_DIST_PORT={dist_port}\n\
             ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {{127,0,0,1}}\"\n\
             EJABBERD_PID_PATH={}\nCONTRIB_MODULES_PATH={}\nCONTRIB_MODULES_CONF_DIR={}\n",
            p("ejabberd.pid").display(),
            p("contrib").display(),
            p("modules.d").display()
        );
        fs::write(p("ejabberdctl.cfg"), ctl)?;

        let ip = spec.ip;
        let mut y = String::new();
        let _ = writeln!(y, "# generated by causeway-testkit");
        let _ = writeln!(y, "hosts:\n  - {}", yaml_str(&spec.domain));
        let _ = writeln!(y, "loglevel: {}", spec.loglevel);
        let _ = writeln!(y, "log_rotate_count: 0");
        let _ = writeln!(y, "certfiles:");
        for f in &certfiles {
            let _ = writeln!(y, "  - {}", yaml_str(&f.to_string_lossy()));
        }
        if let Some(ca) = &spec.ca {
            let local = certs_dir.join("ca.pem");
            fs::copy(&ca.ca_pem, &local)?;
            let _ = writeln!(y, "ca_file: {}", yaml_str(&local.to_string_lossy()));
        }
        let _ = writeln!(
            y,
            "listen:\n\
             \x20 - port: {c2s}\n    ip: \"{ip}\"\n    module: ejabberd_c2s\n    starttls: true\n    max_stanza_size: 262144\n\
             \x20 - port: {s2s}\n    ip: \"{ip}\"\n    module: ejabberd_s2s_in\n    max_stanza_size: 524288\n\
             \x20 - port: {http}\n    ip: \"{ip}\"\n    module: ejabberd_http\n    request_handlers:\n      /api: mod_http_api",
            c2s = spec.c2s_port,
            s2s = spec.s2s_port,
            http = spec.http_port,
        );
        let _ = writeln!(
            y,
            "s2s_use_starttls: {}\noutgoing_s2s_families:\n  - ipv4\n\
             auth_method: internal\nauth_password_format: plain",
            spec.s2s_use_starttls
        );
        if let Some(port) = spec.outgoing_s2s_port {
            let _ = writeln!(y, "outgoing_s2s_port: {port}");
        }
        let _ = writeln!(
            y,
            "acl:\n  loopback:\n    ip:\n      - 127.0.0.0/8\n\
             access_rules:\n  local:\n    allow: all\n  c2s:\n    allow: all\n\
             api_permissions:\n  \"loopback api\":\n    from:\n      - ejabberd_ctl\n      - mod_http_api\n\
             \x20   who:\n      - acl: loopback\n    what: \"*\"\n\
             modules:\n  mod_disco: {{}}\n  mod_roster: {{}}\n  mod_s2s_dialback: {{}}\n\
             \x20 mod_http_api: {{}}\n  mod_ping: {{}}\n  mod_offline: {{}}"
        );
        if let Some(m) = &spec.muc {
            let _ = writeln!(
                y,
                "  mod_muc:\n    hosts:\n      - {}\n    access_create: all\n    access_persistent: all",
                yaml_str(m)
            );
        }
        y.push_str(&spec.extra_config);
        y.push('\n');
        fs::write(p("ejabberd.yml"), y)?;

        let (uid, gid) = user_ids("ejabberd")?;
        chown_recursive(&dir, uid, gid)?;

        // Run as ejabberd without su/runuser in between (their signal
        // handling delays stops by seconds): setpriv execs, and so do
        // unshare and sh.
        let mut cmd = if spec.private_etc {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(
                    "mount --bind \"$1\" /etc/resolv.conf && mount --bind \"$2\" /etc/hosts && \
                     shift 2 && exec setpriv --reuid=ejabberd --regid=ejabberd --init-groups -- \
                     /usr/sbin/ejabberdctl \"$@\"",
                )
                .arg("sh")
                .arg(p("resolv.conf"))
                .arg(p("hosts"));
            c
        } else {
            let mut c = Command::new("/usr/sbin/ejabberdctl");
            c.uid(uid).gid(gid);
            c
        };
        cmd.env("HOME", p("home"))
            .env("USER", "ejabberd")
            .env("LOGNAME", "ejabberd")
            .arg("--config-dir")
            .arg(&dir)
            .arg("--config")
            .arg(p("ejabberd.yml"))
            .arg("--ctl-config")
            .arg(p("ejabberdctl.cfg"))
            .arg("--logs")
            .arg(p("logs"))
            .arg("--spool")
            .arg(p("spool"))
            .arg("--node")
            .arg(&node)
            .arg("foreground")
            .current_dir(&dir);
        let mut guard = ChildGuard::spawn(
            &format!("ejabberd {}", spec.domain),
            cmd,
            &p("ejabberdctl.out"),
        )?
        .with_grace(spec.stop_grace);
        let addrs = [
            SocketAddr::V4(SocketAddrV4::new(ip, spec.c2s_port)),
            SocketAddr::V4(SocketAddrV4::new(ip, spec.s2s_port)),
            SocketAddr::V4(SocketAddrV4::new(ip, spec.http_port)),
        ];
        let ejlog = p("logs").join("ejabberd.log");
        wait_tcp_or_exit(&mut guard, &addrs, Duration::from_secs(60), Some(&ejlog))
            .with_context(|| format!("starting ejabberd for {}", spec.domain))?;
        let me = Self {
            spec,
            dir,
            node,
            cert,
            guard,
            _tmp: tmp,
        };
        for (u, pw) in me.spec.users.clone() {
            me.register(&u, &pw)?;
        }
        Ok(me)
    }

    /// Where clients connect.
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.spec.ip, self.spec.c2s_port))
    }

    /// Where servers connect.
    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.spec.ip, self.spec.s2s_port))
    }

    /// Calls an ejabberd API command through mod_http_api
    /// (`POST /api/COMMAND` with a JSON body), returning the JSON answer.
    pub fn api(&self, command: &str, args: &serde_json::Value) -> Result<serde_json::Value> {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.spec.ip, self.spec.http_port));
        let body = args.to_string();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "POST /api/{command} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("ejabberd API {command}: HTTP {status}: {body}");
        }
        serde_json::from_str(body.trim()).with_context(|| format!("API {command} answer {body:?}"))
    }

    /// Registers an account on the running server.
    pub fn register(&self, user: &str, password: &str) -> Result<()> {
        self.api(
            "register",
            &serde_json::json!({"user": user, "host": self.spec.domain, "password": password}),
        )
        .map(|_| ())
    }

    /// Numbers of incoming and outgoing s2s connections, for diagnostics.
    pub fn s2s_show(&self) -> String {
        let get = |c: &str| {
            self.api(c, &serde_json::json!({}))
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string())
        };
        format!(
            "incoming_s2s_number: {}\noutgoing_s2s_number: {}",
            get("incoming_s2s_number"),
            get("outgoing_s2s_number")
        )
    }

    /// The last `n` lines of ejabberd.log (and of error.log and the
    /// ejabberdctl output when not empty).
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.dir.join("logs");
        let mut s = tail_file(&logs.join("ejabberd.log"), n);
        for (name, path) in [
            ("error.log", logs.join("error.log")),
            ("ejabberdctl", self.dir.join("ejabberdctl.out")),
        ] {
            let t = tail_file(&path, 20);
            if !t.trim().is_empty() {
                let _ = write!(s, "--- {name} ---\n{t}");
            }
        }
        s
    }

    /// Stops ejabberd (also done on drop).
    pub fn stop(mut self) {
        self.guard.kill();
    }
}
