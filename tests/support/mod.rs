//! Shared helpers for the end-to-end tests.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use causeway_testkit::lab::{Lab, LabOptions};

pub mod raw;

/// How long a federated message may take in these tests (first contact includes dialback).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Lab options for a test's subnet, with the binaries cargo built for this test run.
pub fn options(subnet: u8) -> LabOptions {
    LabOptions::new(
        subnet,
        env!("CARGO_BIN_EXE_edge"),
        env!("CARGO_BIN_EXE_core"),
    )
}

/// Start a lab or fail the test with the reason. Setting up is tried twice: the peers take
/// free ports by probing (ejabberd's distribution port on 127.0.0.1 among them), which another
/// process can take in between on a busy machine. Nothing the test asserts is retried.
pub fn start(opts: LabOptions) -> Lab {
    match Lab::start(opts.clone()) {
        Ok(lab) => lab,
        Err(first) => {
            eprintln!("lab did not start, trying once more: {first:#}");
            std::thread::sleep(Duration::from_secs(1));
            match Lab::start(opts) {
                Ok(lab) => lab,
                Err(e) => panic!("lab did not start: {e:#}\n(first attempt: {first:#})"),
            }
        }
    }
}

/// Unwrap a step of a story, printing the lab's logs when it fails.
pub trait Step<T> {
    /// The value, or a panic carrying `what` and the logs.
    fn step(self, lab: &Lab, what: &str) -> T;
}

impl<T> Step<T> for anyhow::Result<T> {
    fn step(self, lab: &Lab, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e:#}\n{}", lab.diagnostics()),
        }
    }
}

/// Give the lab's core a `[metrics]` listener on `listen` and restart it (the tunnel
/// reconnects).
pub fn restart_core_with_metrics(lab: &mut Lab, listen: SocketAddr) {
    let core_toml = lab.config_path("core");
    let mut text = std::fs::read_to_string(&core_toml).expect("core.toml");
    text.push_str(&format!("\n[metrics]\nlisten = \"{listen}\"\n"));
    std::fs::write(&core_toml, text).expect("core.toml");
    lab.restart_core().step(lab, "restart core with [metrics]");
}

/// Everything the edge logged so far.
pub fn edge_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.path().join("edge.log")).unwrap_or_default()
}

/// The `edge` binary under test.
pub const EDGE: &str = env!("CARGO_BIN_EXE_edge");
/// The `core` binary under test.
pub const CORE: &str = env!("CARGO_BIN_EXE_core");

/// What a command said.
pub struct Ran {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Ran {
    /// stdout parsed as JSON, or a panic showing both outputs.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}):\n{}\nstderr: {}", self.stdout, self.stderr),
        }
    }

    /// stdout and stderr together.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `<bin> <args>` to completion.
pub fn run(bin: &str, args: &[&str]) -> Ran {
    let out = Command::new(bin).args(args).output().expect("run the CLI");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A lab PKI and both dialback secrets in `dir/pki`, for config-file tests.
pub fn lab_pki(dir: &std::path::Path) {
    causeway_testkit::lab::write_pki(&dir.join("pki")).expect("lab pki");
}

/// First contact (dialback both ways) out of the way: one message alice -> bob and back.
pub fn warm_up(
    lab: &Lab,
    alice: &mut causeway_testkit::Client,
    bob: &mut causeway_testkit::Client,
) {
    let bob_jid = format!("bob@{}", causeway_testkit::lab::PARTNER);
    alice.send_message(&bob_jid, "warm-up").step(lab, "send");
    bob.expect_message("alice@example.com", "warm-up", PATIENCE)
        .step(lab, "warm-up a->b");
    bob.send_message("alice@example.com", "warm-up")
        .step(lab, "send");
    alice
        .expect_message(&bob_jid, "warm-up", PATIENCE)
        .step(lab, "warm-up b->a");
}

/// bob -> alice still works: an attack did not disturb legitimate federation.
pub fn legitimate_traffic_flows(lab: &Lab, body: &str) {
    let mut alice = lab.client("alice").step(lab, "alice connects");
    let mut bob = lab.client("bob").step(lab, "bob connects");
    bob.send_message("alice@example.com", body)
        .step(lab, "send");
    alice
        .expect_message(
            &format!("bob@{}", causeway_testkit::lab::PARTNER),
            body,
            PATIENCE,
        )
        .step(lab, "legitimate traffic beside the attack");
}

/// One HTTP GET; (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((status.to_string(), headers.to_string(), body.to_string()))
}

/// `GET /metrics` at `addr`: the body (empty when it cannot be read).
pub fn scrape(addr: SocketAddr) -> String {
    http_get(addr, "/metrics")
        .map(|(_, _, body)| body)
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels, e.g. `x_total{reason="full"}`) in a
/// metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Send `sig` (e.g. `-STOP`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Continues a stopped process even when the test fails, so cleanup can kill it.
pub struct Resume(pub u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Reload the lab's edge as systemd's ExecReload would (SIGHUP).
pub fn sighup_edge(lab: &Lab) {
    signal(lab.edge.as_ref().expect("edge running").pid(), "-HUP");
}

/// Where a test's own remote server listens: `127.N.0.41:5269`.
pub fn remote_addr(subnet: u8) -> SocketAddr {
    SocketAddr::from((Lab::ip(subnet, 41), 5269))
}

/// The lab's options plus one more remote domain, `domain`, served at [`remote_addr`]: on
/// the edge's allow list and in the internet view's DNS.
pub fn options_with_remote(subnet: u8, domain: &str) -> LabOptions {
    let mut opts = options(subnet);
    opts.extra_allow.push(domain.into());
    opts.extra_dns
        .push(causeway_testkit::DnsRecord::xmpp_server(
            domain,
            &Lab::ip(subnet, 41).to_string(),
            5269,
        ));
    opts
}

/// A synthetic server for `domain` at [`remote_addr`], sending to the lab's edge; `keep`
/// keeps what it receives, `cert` is what it presents (a self-signed one if none).
pub fn remote_server(
    rt: &tokio::runtime::Runtime,
    subnet: u8,
    domain: &str,
    keep: bool,
    cert: Option<&causeway_testkit::CertFiles>,
) -> causeway_testkit::synthetic::SyntheticServer {
    rt.block_on(
        causeway_testkit::synthetic::SyntheticServer::start_with_cert(
            domain,
            remote_addr(subnet),
            SocketAddr::from((Lab::ip(subnet, 2), 5269)),
            keep,
            cert,
        ),
    )
    .unwrap_or_else(|e| panic!("{domain}: {e:#}"))
}
