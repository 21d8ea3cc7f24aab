//! The lab federation topology on one loopback subnet `127.N.0.0/24`:
//!
//! ```text
//!  alice@example.com                                             bob@partner.test
//!  Prosody example.com .11 --s2s--> core .3 ==tunnel==> edge .2 <--s2s--> Prosody partner.test .21
//!  (route plugin -> core)          (relay .4 optional)          <--s2s--> ejabberd partner2.test .31
//!                                                     dnsmasq .53 (SRV for every domain)
//! ```
//!
//! With `second_edge`, a second edge runs at `.5` (same PKI and dialback secret, `edge2.toml`,
//! `edge2.log`, `edge2.sock`), the SRV records of example.com and conference.example.com list both
//! edges with equal priority and weight, and core keeps a tunnel to each. With `second_core`, a
//! second core `core2.example.com` runs at `.6` (`core2.*`), serving the same domains over the
//! same tunnels; the internal Prosody still routes its federation to the first core.
//!
//! Each test uses its own `N`, so labs run side by side. The edge and core binaries are given
//! by path (integration tests pass `CARGO_BIN_EXE_edge` / `CARGO_BIN_EXE_core`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    Certs, ChildGuard, Client, DnsRecord, DnsServer, Ejabberd, EjabberdSpec, Prosody, ProsodySpec,
    Relay, TempDir,
};

/// The internal domain.
pub const LOCAL: &str = "example.com";
/// Its MUC service (a chat node alias).
pub const LOCAL_MUC: &str = "conference.example.com";
/// The external Prosody's domain.
pub const PARTNER: &str = "partner.test";
/// The external ejabberd's domain.
pub const PARTNER2: &str = "partner2.test";
/// Every account's password is its localpart followed by this.
pub const PASSWORD_SUFFIX: &str = "-secret";

/// What to start.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The `N` of `127.N.0.0/24` (1..=254).
    pub subnet: u8,
    /// Also start ejabberd serving partner2.test.
    pub ejabberd: bool,
    /// Put a fault-injecting relay between core and edge.
    pub relay: bool,
    /// The `edge` binary.
    pub edge_bin: PathBuf,
    /// The `core` binary.
    pub core_bin: PathBuf,
    /// Prosody/ejabberd log level (`info` for load, `debug` for diagnosis).
    pub peer_log_level: String,
    /// Extra `RUST_LOG` for edge and core (default "info").
    pub rust_log: String,
    /// More domains on the edge's allow list.
    pub extra_allow: Vec<String>,
    /// More records in the internet view's DNS.
    pub extra_dns: Vec<DnsRecord>,
    /// One lab CA issues the edge's federation certificate and the external servers'
    /// certificates, and every one of them trusts it (SASL EXTERNAL becomes possible).
    pub federation_ca: bool,
    /// With `federation_ca`: ejabberd too (false: it keeps a self-signed certificate).
    pub ejabberd_trusted: bool,
    /// ejabberd's `s2s_use_starttls` (default `required`).
    pub ejabberd_starttls: String,
    /// TOML lines added to the edge's `[federation]` section.
    pub edge_federation_extra: String,
    /// TOML lines added to the edge's `[tunnel]` section (e.g. a small `window`).
    pub edge_tunnel_extra: String,
    /// More addresses for the edge's `federation.listen` (e.g. `[::1]:port`).
    pub edge_extra_listen: Vec<SocketAddr>,
    /// Lua lines added to partner.test's Prosody global section.
    pub partner_extra_global: String,
    /// Modules partner.test's Prosody loads besides the usual ones (e.g. "smacks").
    pub partner_extra_modules: Vec<String>,
    /// With `federation_ca`: issue a certificate for each of these names and revoke it in a
    /// CRL the edge loads (`Lab::revoked`).
    pub revoked_names: Vec<String>,
    /// Replaces the edge's whole `[policy]` section (TOML, without the header).
    pub edge_policy: Option<String>,
    /// TOML appended to the edge's config (e.g. `[[static_routes]]`).
    pub edge_extra: String,
    /// partner.test's s2s port (default: a free one).
    pub partner_s2s_port: Option<u16>,
    /// Also start a second edge at `.5`, listed in DNS and in core's config.
    pub second_edge: bool,
    /// Also start a second core at `.6` serving the same domains.
    pub second_core: bool,
    /// Also start a second internal Prosody for example.com at `.12` (same accounts, MUC and
    /// dialback secret as the first): another node of the same cluster.
    pub internal_node2: bool,
    /// core discovers its nodes: an internal DNS view (dnsmasq at `.54`) publishes
    /// `_xmpp-server._tcp.example.com` -> `imp1.example.com` (and `imp2.example.com`), and
    /// core.toml has `[discovery]` and `[[clusters]] domain = "example.com"` instead of its
    /// `[[domains]]` entry (so the chat node alias comes from disco).
    pub core_discovery: bool,
    /// With `core_discovery` and `internal_node2`: the internal DNS lists node 2 from the start.
    pub node2_in_dns: bool,
    /// With `core_discovery`: TOML lines added to core's `[discovery]` section.
    pub core_discovery_extra: String,
    /// Start the internal node(s) before core, so that core's first discovery reaches them.
    pub internal_first: bool,
    /// TOML appended to core's config `core.toml` (e.g. an `[email_translation]` section).
    pub core_extra: String,
}

impl LabOptions {
    /// Defaults for a subnet.
    pub fn new(subnet: u8, edge_bin: impl Into<PathBuf>, core_bin: impl Into<PathBuf>) -> Self {
        Self {
            subnet,
            ejabberd: false,
            relay: false,
            edge_bin: edge_bin.into(),
            core_bin: core_bin.into(),
            peer_log_level: "info".into(),
            rust_log: "info".into(),
            extra_allow: Vec::new(),
            extra_dns: Vec::new(),
            federation_ca: false,
            ejabberd_trusted: true,
            ejabberd_starttls: "required".into(),
            edge_federation_extra: String::new(),
            edge_tunnel_extra: String::new(),
            edge_extra_listen: Vec::new(),
            partner_extra_global: String::new(),
            partner_extra_modules: Vec::new(),
            revoked_names: Vec::new(),
            edge_policy: None,
            edge_extra: String::new(),
            partner_s2s_port: None,
            second_edge: false,
            second_core: false,
            internal_node2: false,
            core_discovery: false,
            node2_in_dns: true,
            core_discovery_extra: String::new(),
            internal_first: false,
            core_extra: String::new(),
        }
    }
}

/// A running lab; everything stops when it is dropped.
pub struct Lab {
    /// Options it was started with.
    pub opts: LabOptions,
    /// Configs, certificates, logs.
    pub dir: TempDir,
    /// Core's side of the tunnel dials this (the relay, or the edge).
    pub tunnel_target: SocketAddr,
    /// The relay between core and edge, if asked for.
    pub relay: Option<Relay>,
    /// The edge process.
    pub edge: Option<ChildGuard>,
    /// The core process.
    pub core: Option<ChildGuard>,
    /// The second edge (`LabOptions::second_edge`).
    pub edge2: Option<ChildGuard>,
    /// The second core (`LabOptions::second_core`).
    pub core2: Option<ChildGuard>,
    /// Internal Prosody (example.com, conference.example.com).
    pub internal: Prosody,
    /// The second internal node (`LabOptions::internal_node2`).
    pub internal2: Option<Prosody>,
    /// The internal DNS view (`LabOptions::core_discovery`).
    pub internal_dns: Option<DnsServer>,
    /// External Prosody (partner.test).
    pub partner: Prosody,
    /// External ejabberd (partner2.test).
    pub partner2: Option<Ejabberd>,
    /// The internet view's DNS.
    pub dns: DnsServer,
    /// The shared federation CA, with `federation_ca`.
    pub federation_ca: Option<Arc<Certs>>,
    /// Certificates issued by it and revoked (see `LabOptions::revoked_names`).
    pub revoked: Vec<crate::CertFiles>,
}

impl Lab {
    /// `127.N.0.host`.
    pub fn ip(subnet: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, subnet, 0, host)
    }

    /// Start the whole topology and wait until core's tunnel is up (a wiring function).
    pub fn start(opts: LabOptions) -> Result<Self> {
        let n = opts.subnet;
        let dir = crate::temp_dir(&format!("causeway-lab{n}-"))?;
        let pki = dir.path().join("pki");
        write_pki(&pki)?;

        let edge_s2s = SocketAddr::from((Self::ip(n, 2), 5269));
        let edge_tunnel = SocketAddr::from((Self::ip(n, 2), 7400));
        let core_s2s = SocketAddr::from((Self::ip(n, 3), 5269));
        let relay_addr = SocketAddr::from((Self::ip(n, 4), 7400));

        let mut internal = ProsodySpec::new(Self::ip(n, 11), LOCAL)
            .user("alice", &password("alice"))
            .user("dave", &password("dave"));
        internal.muc = Some(LOCAL_MUC.into());
        internal.route_s2s_to = Some(core_s2s);
        internal.log_level = opts.peer_log_level.clone();
        let internal2 = opts.internal_node2.then(|| {
            // Nodes of one cluster verify each other's dialback keys: one secret.
            internal.extra_global = "dialback_secret = \"lab-internal-dialback-0001\"\n".into();
            let mut spec = internal.clone();
            spec.ip = Self::ip(n, 12);
            spec.c2s_port = crate::free_port(spec.ip);
            spec.s2s_port = crate::free_port(spec.ip);
            spec
        });
        let internal_dns = if opts.core_discovery {
            let node1 = SocketAddr::from((internal.ip, internal.s2s_port));
            let node2 = internal2
                .as_ref()
                .filter(|_| opts.node2_in_dns)
                .map(|s| SocketAddr::from((s.ip, s.s2s_port)));
            let records = internal_dns_records(Some(node1), node2);
            Some(DnsServer::start(Self::ip(n, 54), &records)?)
        } else {
            None
        };
        let mut partner = ProsodySpec::new(Self::ip(n, 21), PARTNER).user("bob", &password("bob"));
        partner.muc = Some(format!("conference.{PARTNER}"));
        partner.log_level = opts.peer_log_level.clone();
        partner.extra_global = opts.partner_extra_global.clone();
        partner.extra_modules = opts.partner_extra_modules.clone();
        if let Some(port) = opts.partner_s2s_port {
            partner.s2s_port = port;
        }
        let mut federation_extra = opts.edge_federation_extra.clone();
        let federation_ca = if opts.federation_ca {
            let ca = Arc::new(Certs::new(&dir.path().join("federation-ca"))?);
            let edge_cert = ca.issue(&[LOCAL, LOCAL_MUC])?;
            std::fs::copy(&edge_cert.cert_pem, pki.join("edge-federation.crt"))?;
            std::fs::copy(&edge_cert.key_pem, pki.join("edge-federation.key"))?;
            federation_extra.push_str(&format!("\nca_bundle = \"{}\"\n", ca.ca_pem.display()));
            partner.ca = Some(ca.clone());
            Some(ca)
        } else {
            None
        };
        let mut revoked = Vec::new();
        if let (Some(ca), false) = (&federation_ca, opts.revoked_names.is_empty()) {
            let serials: Vec<u64> = (0..opts.revoked_names.len() as u64)
                .map(|i| 9000 + i)
                .collect();
            for (name, serial) in opts.revoked_names.iter().zip(&serials) {
                revoked.push(ca.issue_serial(&[name.as_str()], *serial)?);
            }
            let crl = ca.crl(&serials)?;
            federation_extra.push_str(&format!("crls = [\"{}\"]\n", crl.display()));
        }

        let dns_ip = Self::ip(n, 53);
        let ejabberd_ip = Self::ip(n, 31);
        let ejabberd_spec = opts.ejabberd.then(|| {
            let mut s = EjabberdSpec::new(ejabberd_ip, PARTNER2, SocketAddr::from((dns_ip, 53)))
                .user("carol", &password("carol"));
            s.loglevel = opts.peer_log_level.clone();
            s.s2s_use_starttls = opts.ejabberd_starttls.clone();
            if opts.ejabberd_trusted {
                s.ca = federation_ca.clone();
            }
            s
        });
        let mut edge_ips = vec![Self::ip(n, 2).to_string()];
        if opts.second_edge {
            edge_ips.push(Self::ip(n, 5).to_string());
        }
        let mut records: Vec<DnsRecord> = edge_ips
            .iter()
            .flat_map(|ip| {
                [
                    DnsRecord::xmpp_server(LOCAL, ip, 5269),
                    DnsRecord::xmpp_server(LOCAL_MUC, ip, 5269),
                ]
            })
            .collect();
        records.extend([
            DnsRecord::xmpp_server(PARTNER, &partner.ip.to_string(), partner.s2s_port),
            DnsRecord::xmpp_server(
                &format!("conference.{PARTNER}"),
                &partner.ip.to_string(),
                partner.s2s_port,
            ),
        ]);
        if let Some(s) = &ejabberd_spec {
            records.push(DnsRecord::xmpp_server(
                PARTNER2,
                &ejabberd_ip.to_string(),
                s.s2s_port,
            ));
        }
        records.extend(opts.extra_dns.iter().cloned());
        let dns = DnsServer::start(dns_ip, &records)?;
        partner.dns = Some(dns.addr);

        let tunnel_target = if opts.relay { relay_addr } else { edge_tunnel };
        let mut edge_toml = edge_config(
            edge_s2s,
            edge_tunnel,
            dns.addr,
            &opts.extra_allow,
            &federation_extra,
        );
        if !opts.edge_extra_listen.is_empty() {
            let list: Vec<String> = std::iter::once(edge_s2s)
                .chain(opts.edge_extra_listen.iter().copied())
                .map(|a| format!("\"{a}\""))
                .collect();
            edge_toml = edge_toml.replacen(
                &format!("listen = \"{edge_s2s}\""),
                &format!("listen = [{}]", list.join(", ")),
                1,
            );
        }
        if !opts.edge_tunnel_extra.is_empty() {
            edge_toml = edge_toml.replacen(
                "[tunnel]\n",
                &format!("[tunnel]\n{}\n", opts.edge_tunnel_extra),
                1,
            );
        }
        if let Some(policy) = &opts.edge_policy {
            let start = edge_toml.find("[policy]").unwrap_or(edge_toml.len());
            edge_toml.truncate(start);
            edge_toml.push_str(&format!("[policy]\n{policy}\n"));
        }
        edge_toml.push('\n');
        edge_toml.push_str(&opts.edge_extra);
        std::fs::write(dir.path().join("edge.toml"), &edge_toml)?;
        let mut edges = vec![tunnel_target];
        if opts.second_edge {
            // The same config at .5, with its own admin socket.
            let (ip2, ip5) = (Self::ip(n, 2).to_string(), Self::ip(n, 5).to_string());
            let edge2_toml = edge_toml
                .replace(&format!("\"{ip2}:"), &format!("\"{ip5}:"))
                .replace("socket = \"edge.sock\"", "socket = \"edge2.sock\"");
            std::fs::write(dir.path().join("edge2.toml"), edge2_toml)?;
            edges.push(SocketAddr::from((Self::ip(n, 5), 7400)));
        }
        let node = SocketAddr::from((internal.ip, internal.s2s_port));
        let core_lab = LabCore {
            id: "core1.example.com",
            file: "core",
            s2s: core_s2s,
            edges: &edges,
            node,
        };
        let mut core_toml = core_lab.config();
        if let Some(view) = &internal_dns {
            core_toml = with_discovery(&core_toml, view.addr, &opts.core_discovery_extra);
        }
        core_toml.push('\n');
        core_toml.push_str(&opts.core_extra);
        std::fs::write(dir.path().join("core.toml"), core_toml)?;
        let (internal, internal2) = if opts.internal_first {
            let first = Prosody::start(internal)?;
            let second = internal2.map(Prosody::start).transpose()?;
            (Ok(first), second.map(Ok))
        } else {
            (Err(internal), internal2.map(Err))
        };
        if opts.second_core {
            write_core2_pki(&pki)?;
            let core2 = LabCore {
                id: "core2.example.com",
                file: "core2",
                s2s: SocketAddr::from((Self::ip(n, 6), 5269)),
                ..core_lab
            };
            std::fs::write(dir.path().join("core2.toml"), core2.config())?;
        }

        // The edge's "core connected" line is how the lab knows the tunnel is up.
        let edge_log = format!("{},causeway_edge=info", opts.rust_log);
        let edge = spawn_daemon(&opts.edge_bin, "edge", dir.path(), &edge_log)?;
        let edge2 = opts
            .second_edge
            .then(|| spawn_daemon(&opts.edge_bin, "edge2", dir.path(), &edge_log))
            .transpose()?;
        let relay = if opts.relay {
            Some(Relay::start(relay_addr, edge_tunnel)?)
        } else {
            None
        };
        let core = spawn_daemon(&opts.core_bin, "core", dir.path(), &opts.rust_log)?;
        let core2 = opts
            .second_core
            .then(|| spawn_daemon(&opts.core_bin, "core2", dir.path(), &opts.rust_log))
            .transpose()?;
        let internal = match internal {
            Ok(started) => started,
            Err(spec) => Prosody::start(spec)?,
        };
        let internal2 = match internal2 {
            Some(Ok(started)) => Some(started),
            Some(Err(spec)) => Some(Prosody::start(spec)?),
            None => None,
        };
        let partner = Prosody::start(partner)?;
        let partner2 = ejabberd_spec.map(Ejabberd::start).transpose()?;
        let lab = Self {
            opts,
            dir,
            tunnel_target,
            relay,
            edge: Some(edge),
            core: Some(core),
            edge2,
            core2,
            internal,
            internal2,
            internal_dns,
            partner,
            partner2,
            dns,
            federation_ca,
            revoked,
        };
        lab.wait_tunnel_up(Duration::from_secs(20))?;
        Ok(lab)
    }

    /// Wait until every edge logged that every core connected (since it last started).
    pub fn wait_tunnel_up(&self, timeout: Duration) -> Result<()> {
        let mut edges = vec!["edge"];
        if self.opts.second_edge {
            edges.push("edge2");
        }
        let mut cores = vec!["core1.example.com"];
        if self.opts.second_core {
            cores.push("core2.example.com");
        }
        let ok = crate::wait_until(timeout, || {
            edges.iter().all(|edge| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{edge}.log")))
                    .unwrap_or_default();
                let connected: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("core connected"))
                    .collect();
                // One core: any "core connected" line (a test may run a core of another name).
                cores.len() == 1 && !connected.is_empty()
                    || cores
                        .iter()
                        .all(|c| connected.iter().any(|l| l.contains(c)))
            })
        });
        anyhow::ensure!(ok, "core never connected to edge:\n{}", self.diagnostics());
        Ok(())
    }

    /// A logged-in client for `user` at its server (alice: internal; bob: partner; carol:
    /// ejabberd).
    pub fn client(&self, user: &str) -> Result<Client> {
        let (domain, addr) = match user {
            "alice" | "dave" => (LOCAL, self.internal.c2s_addr()),
            "bob" => (PARTNER, self.partner.c2s_addr()),
            "carol" => (
                PARTNER2,
                self.partner2
                    .as_ref()
                    .context("ejabberd not started")?
                    .c2s_addr(),
            ),
            other => anyhow::bail!("no such lab user {other}"),
        };
        Client::connect(&format!("{user}@{domain}"), &password(user), addr)
    }

    /// Path of the lab's edge or core admin socket (`[admin].socket`, in the lab directory).
    pub fn admin_socket(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("{which}.sock"))
    }

    /// Path of the lab's edge or core config file.
    pub fn config_path(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("{which}.toml"))
    }

    /// Kill and restart core (same config).
    pub fn restart_core(&mut self) -> Result<()> {
        drop(self.core.take());
        self.core = Some(spawn_daemon(
            &self.opts.core_bin,
            "core",
            self.dir.path(),
            &self.opts.rust_log,
        )?);
        Ok(())
    }

    /// Replace the internal DNS view (`core_discovery`) with one listing the given nodes
    /// (`_xmpp-server._tcp.example.com` -> `imp1`/`imp2.example.com`).
    pub fn set_internal_dns(&mut self, node1: bool, node2: bool) -> Result<()> {
        let n = self.opts.subnet;
        drop(self.internal_dns.take());
        let node2 = match (&self.internal2, node2) {
            (Some(p), true) => Some(p.s2s_addr()),
            _ => None,
        };
        let node1 = node1.then(|| self.internal.s2s_addr());
        let records = internal_dns_records(node1, node2);
        self.internal_dns = Some(DnsServer::start(Self::ip(n, 54), &records)?);
        Ok(())
    }

    /// Logs of everything, for a failing test's message.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (name, guard) in [
            ("edge", &self.edge),
            ("edge2", &self.edge2),
            ("core", &self.core),
            ("core2", &self.core2),
        ] {
            if let Some(g) = guard {
                out.push_str(&format!("---- {name} ----\n{}\n", g.log_tail(40)));
            }
        }
        out.push_str(&format!(
            "---- prosody example.com ----\n{}\n",
            self.internal.log_tail(30)
        ));
        if let Some(p) = &self.internal2 {
            out.push_str(&format!(
                "---- prosody example.com node 2 ----\n{}\n",
                p.log_tail(30)
            ));
        }
        out.push_str(&format!(
            "---- prosody partner.test ----\n{}\n",
            self.partner.log_tail(30)
        ));
        if let Some(e) = &self.partner2 {
            out.push_str(&format!("---- ejabberd ----\n{}\n", e.log_tail(30)));
        }
        out
    }
}

/// The lab password of a user.
pub fn password(user: &str) -> String {
    format!("{user}{PASSWORD_SUFFIX}")
}

/// The lab PKI (`causeway_pki::lab_init` for example.com and its MUC) plus both dialback
/// secrets, in `pki`: what labs, config tests and benchmarks start from.
pub fn write_pki(pki: &Path) -> Result<()> {
    causeway_pki::lab_init(
        pki,
        &["edge.example.com"],
        "core1.example.com",
        &[LOCAL, LOCAL_MUC],
        &["core1.example.com"],
        true,
    )?;
    std::fs::write(
        pki.join("dialback-secret"),
        "lab-edge-dialback-secret-0001\n",
    )?;
    std::fs::write(
        pki.join("core-dialback-secret"),
        "lab-core-dialback-secret-0001\n",
    )?;
    Ok(())
}

/// edge and core alone between two synthetic servers (crates/testkit/src/synthetic.rs): a
/// generator serving PARTNER that the edge reaches by static route, and a sink serving LOCAL
/// as core's node. The benchmark's pair flood and the backpressure test start from it.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticPair {
    /// The edge's s2s address (where the generator sends).
    pub edge_s2s: SocketAddr,
    /// The edge's tunnel address.
    pub tunnel: SocketAddr,
    /// core's s2s address (the sink's route back, for dialback).
    pub core_s2s: SocketAddr,
    /// core's metrics listener.
    pub core_metrics: SocketAddr,
    /// Where the generator listens.
    pub generator: SocketAddr,
    /// Where the sink listens (core's node for LOCAL).
    pub sink: SocketAddr,
    /// The edge's nameserver: nothing listens there (PARTNER is a static route).
    pub dns: SocketAddr,
}

impl SyntheticPair {
    /// The addresses in 127.`subnet`.0.0/24.
    pub fn new(subnet: u8) -> Self {
        let at = |host, port| SocketAddr::from((Lab::ip(subnet, host), port));
        Self {
            edge_s2s: at(2, 5269),
            tunnel: at(2, 7400),
            core_s2s: at(3, 5269),
            core_metrics: at(3, 9100),
            generator: at(21, 5269),
            sink: at(11, 5269),
            dns: at(53, 53),
        }
    }

    /// Write the lab PKI and `edge.toml` and `core.toml` into `dir`. The edge applies no
    /// per-domain inbound rate: what is measured is the pair, not that default limit.
    pub fn write_configs(&self, dir: &Path) -> Result<()> {
        write_pki(&dir.join("pki"))?;
        let mut edge = edge_config(self.edge_s2s, self.tunnel, self.dns, &[], "");
        edge.push_str(&format!(
            "\n[[static_routes]]\ndomain = \"{PARTNER}\"\naddresses = [\"{}\"]\n\
             \n[limits]\ninbound_bytes_per_sec_per_domain = 0\n",
            self.generator
        ));
        std::fs::write(dir.join("edge.toml"), edge)?;
        let std::net::IpAddr::V4(sink_ip) = self.sink.ip() else {
            anyhow::bail!("the sink's address is IPv4");
        };
        let mut core = core_config(self.core_s2s, self.tunnel, sink_ip, self.sink.port());
        core.push_str(&format!(
            "\n[metrics]\nlisten = \"{}\"\n",
            self.core_metrics
        ));
        std::fs::write(dir.join("core.toml"), core)?;
        Ok(())
    }
}

/// What the lab's cores may announce (`[[tunnel.cores]]`): the local domains of every lab
/// topology and their subdomains (chat node aliases).
const LAB_GRANTS: &str = r#"["example.com", "*.example.com", "example.org", "*.example.org"]"#;

/// The edge's config for the lab. Every peer of the lab is on loopback, so the outbound
/// address filter allows 127.0.0.0/8 unless `federation_extra` sets
/// `outbound_allow_networks` itself.
pub fn edge_config(
    s2s: SocketAddr,
    tunnel: SocketAddr,
    dns: SocketAddr,
    extra_allow: &[String],
    federation_extra: &str,
) -> String {
    let extra: String = extra_allow.iter().map(|d| format!(", \"{d}\"")).collect();
    let allow_networks = if federation_extra.contains("outbound_allow_networks") {
        ""
    } else {
        "outbound_allow_networks = [\"127.0.0.0/8\"]"
    };
    format!(
        r#"[tunnel]
listen = "{tunnel}"
cert = "pki/edge-tunnel.crt"
key = "pki/edge-tunnel.key"
ca = "pki/traversal-ca.crt"
keepalive_secs = 2

[[tunnel.cores]]
id = "core1.example.com"
domains = {LAB_GRANTS}

[[tunnel.cores]]
id = "core2.example.com"
domains = {LAB_GRANTS}

[admin]
socket = "edge.sock"

[federation]
listen = "{s2s}"
cert = "pki/edge-federation.crt"
key = "pki/edge-federation.key"
dialback_secret_file = "pki/dialback-secret"
{allow_networks}
{federation_extra}

[dns]
nameservers = ["{dns}"]

[policy]
privacy_mode = "allow-list"
allow = ["{PARTNER}", "conference.{PARTNER}", "{PARTNER2}"{extra}]
"#
    )
}

/// core's config for the lab (one edge: `tunnel.edge` and `tunnel.edge_name`).
pub fn core_config(s2s: SocketAddr, edge: SocketAddr, node_ip: Ipv4Addr, node_port: u16) -> String {
    LabCore {
        id: "core1.example.com",
        file: "core",
        s2s,
        edges: &[edge],
        node: SocketAddr::from((node_ip, node_port)),
    }
    .config()
}

/// One lab core's config.
#[derive(Clone, Copy)]
struct LabCore<'a> {
    /// Its `core.id` (and tunnel certificate name).
    id: &'a str,
    /// Its file stem: `core` or `core2` (tunnel certificate `pki/{file}-tunnel.*`, admin
    /// socket `{file}.sock`).
    file: &'a str,
    /// Its `s2s.listen`.
    s2s: SocketAddr,
    /// The edges' tunnel addresses: one is written as `tunnel.edge`, several as
    /// `[[tunnel.edges]]`.
    edges: &'a [SocketAddr],
    /// The internal Prosody's s2s address.
    node: SocketAddr,
}

impl LabCore<'_> {
    fn config(&self) -> String {
        let LabCore {
            id,
            file,
            s2s,
            edges,
            node,
        } = *self;
        let (single, list) = match edges {
            [edge] => (
                format!("edge = \"{edge}\"\nedge_name = \"edge.example.com\"\n"),
                String::new(),
            ),
            _ => (
                String::new(),
                edges
                    .iter()
                    .map(|e| {
                        format!(
                            "\n[[tunnel.edges]]\naddress = \"{e}\"\nname = \"edge.example.com\"\n"
                        )
                    })
                    .collect(),
            ),
        };
        format!(
            r#"[core]
id = "{id}"

[tunnel]
{single}cert = "pki/{file}-tunnel.crt"
key = "pki/{file}-tunnel.key"
ca = "pki/traversal-ca.crt"
keepalive_secs = 2
{list}
[admin]
socket = "{file}.sock"

[s2s]
listen = "{s2s}"
cert = "pki/core-s2s.crt"
key = "pki/core-s2s.key"
dialback_secret_file = "pki/core-dialback-secret"

[[domains]]
name = "{LOCAL}"
nodes = ["{node}"]
chat_node_aliases = ["{LOCAL_MUC}"]
"#
        )
    }
}

/// The internal DNS view: `_xmpp-server._tcp.example.com` -> `imp1.example.com` (node 1),
/// `imp2.example.com` (node 2), with their A records.
fn internal_dns_records(node1: Option<SocketAddr>, node2: Option<SocketAddr>) -> Vec<DnsRecord> {
    let mut records = Vec::new();
    for (name, node) in [("imp1.example.com", node1), ("imp2.example.com", node2)] {
        if let Some(SocketAddr::V4(a)) = node {
            records.push(DnsRecord::a(name, *a.ip()));
            records.push(DnsRecord::xmpp_server(LOCAL, name, a.port()));
        }
    }
    records
}

/// core's config with discovery instead of its `[[domains]]` entry: `[discovery]` pointing at
/// the internal DNS view (plus `extra` lines) and `[[clusters]] domain = "example.com"`.
pub fn with_discovery(core_toml: &str, view: SocketAddr, extra: &str) -> String {
    let start = core_toml.find("[[domains]]").unwrap_or(core_toml.len());
    format!(
        "{}[discovery]\nnameservers = [\"{view}\"]\n{extra}\n\n[[clusters]]\ndomain = \"{LOCAL}\"\n",
        &core_toml[..start]
    )
}

/// The second core's traversal client certificate, from the lab's traversal CA.
fn write_core2_pki(pki: &Path) -> Result<()> {
    let ca = causeway_pki::CertPair {
        cert_pem: std::fs::read_to_string(pki.join("traversal-ca.crt"))?,
        key_pem: std::fs::read_to_string(pki.join("traversal-ca.key"))?,
    };
    let leaf = causeway_pki::issue(
        &ca,
        &["core2.example.com"],
        causeway_pki::Usage::ServerAndClient,
        30,
    )?;
    std::fs::write(pki.join("core2-tunnel.crt"), leaf.cert_pem)?;
    std::fs::write(pki.join("core2-tunnel.key"), leaf.key_pem)?;
    Ok(())
}

/// Start `edge run` or `core run` in `dir` and wait for its ready line.
pub fn spawn_daemon(bin: &Path, name: &str, dir: &Path, rust_log: &str) -> Result<ChildGuard> {
    // The daemon runs in `dir`; a relative binary path must not follow it there.
    let bin =
        std::fs::canonicalize(bin).with_context(|| format!("{name} binary {}", bin.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join(format!("{name}.toml")))
        .env("RUST_LOG", rust_log)
        .current_dir(dir);
    let log = dir.join(format!("{name}.log"));
    let (guard, _line) = ChildGuard::spawn_ready(
        name,
        cmd,
        &log,
        "\"event\":\"ready\"",
        Duration::from_secs(20),
    )?;
    Ok(guard)
}
