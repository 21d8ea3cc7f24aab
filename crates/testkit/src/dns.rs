//! [`DnsServer`]: dnsmasq serving a private view on a loopback address.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::{wait_tcp_or_exit, ChildGuard};
use crate::util::{temp_dir, TempDir};

/// One record (or view rule) served by [`DnsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    /// `service` is the full owner name, e.g. `_xmpp-server._tcp.example.com`.
    /// `target` may be an IP literal (`127.0.0.21`): Prosody and ejabberd then
    /// connect to it without resolving it.
    Srv {
        service: String,
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
    /// An A record (dnsmasq `host-record`, so it also answers PTR).
    A { name: String, ip: Ipv4Addr },
    /// A wildcard view (dnsmasq `address=/#/IP`): every name without a more
    /// specific record resolves to `ip` (A); AAAA and SRV queries get NODATA.
    /// This is the "every federated domain is core" view for an internal
    /// ejabberd.
    Wildcard { ip: Ipv4Addr },
    /// A raw dnsmasq configuration line.
    Raw(String),
}

impl DnsRecord {
    /// `_xmpp-server._tcp.DOMAIN` -> `target:port`, priority 0, weight 5.
    pub fn xmpp_server(domain: &str, target: &str, port: u16) -> Self {
        DnsRecord::Srv {
            service: format!("_xmpp-server._tcp.{domain}"),
            target: target.to_owned(),
            port,
            priority: 0,
            weight: 5,
        }
    }

    /// An A record.
    pub fn a(name: &str, ip: Ipv4Addr) -> Self {
        DnsRecord::A {
            name: name.to_owned(),
            ip,
        }
    }

    fn config_line(&self) -> String {
        match self {
            DnsRecord::Srv {
                service,
                target,
                port,
                priority,
                weight,
            } => format!("srv-host={service},{target},{port},{priority},{weight}"),
            DnsRecord::A { name, ip } => format!("host-record={name},{ip}"),
            DnsRecord::Wildcard { ip } => format!("address=/#/{ip}"),
            DnsRecord::Raw(line) => line.clone(),
        }
    }
}

/// dnsmasq on a loopback address. Authoritative for its records only: every
/// other name is NXDOMAIN (`local=/#/`), nothing is ever forwarded. Queries are
/// logged (see [`log_tail`](Self::log_tail)).
pub struct DnsServer {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    /// The generated dnsmasq configuration.
    pub config_path: PathBuf,
    guard: ChildGuard,
    _dir: TempDir,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Starts dnsmasq on `ip:53` (port 53 so that a resolv.conf can point at
    /// it too). Use a loopback address of its own per test.
    pub fn start(ip: Ipv4Addr, records: &[DnsRecord]) -> Result<Self> {
        Self::start_on(SocketAddrV4::new(ip, 53), records)
    }

    /// Starts dnsmasq on `addr` (any port).
    pub fn start_on(addr: SocketAddrV4, records: &[DnsRecord]) -> Result<Self> {
        if !addr.ip().is_loopback() {
            bail!("DnsServer only listens on loopback addresses, not {addr}");
        }
        let dir = temp_dir("cw-dns-")?;
        let mut conf = String::new();
        let _ = writeln!(
            conf,
            "# causeway-testkit\nno-resolv\nno-hosts\nno-poll\nbind-interfaces\n\
             listen-address={}\nport={}\nlog-queries\nlocal=/#/",
            addr.ip(),
            addr.port()
        );
        for r in records {
            let _ = writeln!(conf, "{}", r.config_line());
        }
        let config_path = dir.path().join("dnsmasq.conf");
        fs::write(&config_path, conf)?;
        let log = dir.path().join("dnsmasq.log");
        let mut cmd = Command::new("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", config_path.display()))
            .arg("--log-facility=-")
            .arg("--pid-file=");
        let mut guard = ChildGuard::spawn("dnsmasq", cmd, &log)?.with_grace(Duration::from_secs(1));
        let addr = SocketAddr::V4(addr);
        wait_tcp_or_exit(&mut guard, &[addr], Duration::from_secs(10), None)?;
        // Also wait for the startup banner so that the UDP socket is bound.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !guard.log_tail(50).contains("started") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self {
            addr,
            config_path,
            guard,
            _dir: dir,
        })
    }

    /// The last `n` lines of dnsmasq's log (every query is logged).
    pub fn log_tail(&self, n: usize) -> String {
        self.guard.log_tail(n)
    }

    /// Stops dnsmasq now (also done on drop).
    pub fn stop(mut self) {
        self.guard.kill();
    }
}
