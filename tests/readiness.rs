//! Health and readiness over HTTP, on the `[metrics]` listener: what a load balancer, an
//! orchestrator or a monitoring check polls.

use std::net::SocketAddr;
use std::time::Duration;

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use causeway_testkit::lab::Lab;
use causeway_testkit::ChildGuard;

use crate::support::{http_get, options, signal, start, Step, PATIENCE};

/// `GET path` at `addr`: the status code and the body (0 and the error when it fails).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match http_get(addr, path) {
        Ok((status, _, body)) => {
            let code = status
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, body)
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Poll `path` at `addr` until it answers `code` with a body containing `text`.
fn until(lab: &Lab, addr: SocketAddr, path: &str, code: u16, text: &str) {
    let mut last = (0, String::new());
    let ok = causeway_testkit::wait_until(PATIENCE, || {
        last = get(addr, path);
        last.0 == code && last.1.contains(text)
    });
    assert!(
        ok,
        "{path} at {addr} never answered {code} with {text:?}; last: {last:?}\n{}",
        lab.diagnostics()
    );
}

/// /readyz follows the tunnel on both sides: ready once the tunnel is up and the node active,
/// not ready with the reason when the other side is gone, ready again when it is back.
/// /healthz stays ok throughout: the daemons are alive, only not ready.
#[test]
fn readyz_follows_the_tunnel_and_healthz_stays_ok() {
    let n = 251;
    let edge_http = SocketAddr::from((Lab::ip(n, 2), 9464));
    let core_http = SocketAddr::from((Lab::ip(n, 3), 9465));
    let mut opts = options(n);
    opts.edge_extra = format!("[metrics]\nlisten = \"{edge_http}\"\n");
    let mut lab = start(opts);
    crate::support::restart_core_with_metrics(&mut lab, core_http);

    until(&lab, edge_http, "/readyz", 200, "ready\n");
    until(&lab, core_http, "/readyz", 200, "ready\n");
    assert_eq!(get(edge_http, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(core_http, "/healthz"), (200, "ok\n".to_owned()));

    // core stops: the edge is not ready, and says why.
    drop(lab.core.take());
    until(&lab, edge_http, "/readyz", 503, "- no core is connected\n");
    assert_eq!(get(edge_http, "/healthz").0, 200);

    // The edge stops too; core starts alone: alive, not ready, naming the tunnel.
    drop(lab.edge.take());
    lab.restart_core().step(&lab, "start core without its edge");
    until(&lab, core_http, "/healthz", 200, "ok\n");
    until(
        &lab,
        core_http,
        "/readyz",
        503,
        "- no edge tunnel is up (1 edge configured)",
    );

    // The edge is back, started as systemd starts a Type=notify unit with WatchdogSec=: it
    // says READY=1 with a status line, feeds the watchdog, and the status follows the tunnel.
    let notify_path = lab.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // systemd sets WATCHDOG_PID to the main process: the shell's pid, kept by exec.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_edge"))
        .arg(lab.config_path("edge"))
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "2000000")
        .current_dir(lab.dir.path());
    let (edge, _) = ChildGuard::spawn_ready(
        "edge",
        cmd,
        &lab.dir.path().join("edge.log"),
        "\"event\":\"ready\"",
        Duration::from_secs(20),
    )
    .step(&lab, "start the edge again, under a notify socket");
    let pid = edge.pid();
    lab.edge = Some(edge);
    until(&lab, core_http, "/readyz", 200, "ready\n");
    until(&lab, edge_http, "/readyz", 200, "ready\n");

    let mut said: Vec<String> = Vec::new();
    let heard = causeway_testkit::wait_until(PATIENCE, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        said.iter()
            .any(|m| m.contains("STATUS=Active: 1 core connected"))
            && said.iter().filter(|m| m.as_str() == "WATCHDOG=1\n").count() >= 2
    });
    assert!(
        heard,
        "the edge told the service manager: {said:#?}\n{}",
        lab.diagnostics()
    );
    let first = said.first().cloned().unwrap_or_default();
    assert!(
        first.starts_with("READY=1\nSTATUS="),
        "the first message is READY=1 with a status: {said:#?}"
    );

    // SIGTERM (systemctl stop): STOPPING=1 before it exits.
    signal(pid, "-TERM");
    let stopping = causeway_testkit::wait_until(PATIENCE, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        said.iter().any(|m| m.starts_with("STOPPING=1"))
    });
    assert!(stopping, "no STOPPING=1 after SIGTERM: {said:#?}");
    until(&lab, core_http, "/readyz", 503, "- no edge tunnel is up");

    // `core drain`: drained without exiting, and /readyz says so first.
    let socket = lab.admin_socket("core");
    let drained = crate::support::run(
        env!("CARGO_BIN_EXE_core"),
        &["drain", "--socket", socket.to_str().expect("utf-8")],
    );
    assert_eq!(drained.code, 0, "{}", drained.text());
    assert!(
        drained.stdout.starts_with("drained in"),
        "{}",
        drained.text()
    );
    let (code, body) = get(core_http, "/readyz");
    assert_eq!(code, 503);
    assert!(
        body.starts_with("not ready\n- draining (a planned stop)"),
        "{body}"
    );
    assert_eq!(get(core_http, "/healthz").0, 200, "drained, still alive");
    let status = crate::support::run(
        env!("CARGO_BIN_EXE_core"),
        &["status", "--socket", socket.to_str().expect("utf-8")],
    );
    assert_eq!(
        status.code,
        2,
        "a drained core is not doing its job: {}",
        status.text()
    );
    assert!(
        status.stdout.contains("Draining (a planned stop)"),
        "{}",
        status.text()
    );
}
