//! Hostile-peer memory benchmark: `cargo bench --bench hostile`. The edge's resident memory
//! while it holds connections that never authenticate, next to its idle baseline measured in
//! the same run (the machines are shared: read the ratios).
//!
//! Each hostile connection comes from a source address of its own (so the per-source limits
//! do not refuse it), sends a stream header and then most of an element that it never
//! finishes (just under the 8 KiB pre-authentication cap): the most a peer can make the edge
//! hold before it authenticates. Two kinds: plaintext, and after STARTTLS (rustls's buffers
//! on top). Figures: RSS idle, RSS with the connections held, bytes per connection.
//!
//! Environment: CAUSEWAY_BENCH_CONNECTIONS (default 400; the benchmark's own file-descriptor
//! limit bounds it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use causeway_s2s::XmlConn;
use causeway_testkit::lab::{self, Lab, LOCAL, PARTNER};
use causeway_xmpp::{ns, Event, Limits, StreamHeader};
use tokio::net::{TcpSocket, TcpStream};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("hostile-peer benchmark: run it with `cargo bench --bench hostile`");
        return;
    }
    let n = std::env::var("CAUSEWAY_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400usize);
    if let Err(e) = run(n) {
        eprintln!("hostile-peer benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

const SUBNET: u8 = 202;

/// Resident set size of a process, bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// The `i`th hostile source: 127.202.1.10, 127.202.1.11, ... (200 per third octet).
fn source(i: usize) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::new(
        127,
        SUBNET,
        1 + (i / 200) as u8,
        10 + (i % 200) as u8,
    ))
}

/// Most of an element, never finished: a dialback key of `bytes` characters.
fn unfinished(bytes: usize) -> Vec<u8> {
    let mut el = format!("<db:result from='{PARTNER}' to='{LOCAL}'>").into_bytes();
    el.resize(bytes, b'k');
    el
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(socket.connect(to).await?)
}

/// Send our stream header and read the edge's header and features.
async fn exchange_headers(conn: &mut XmlConn) -> Result<()> {
    let ours = StreamHeader {
        from: Some(PARTNER.into()),
        to: Some(LOCAL.into()),
        version: Some("1.0".into()),
        default_ns: ns::SERVER.into(),
        ..Default::default()
    };
    conn.send(ours.to_xml().as_bytes()).await?;
    anyhow::ensure!(
        matches!(conn.next_event().await?, Event::StreamOpen(_)),
        "no stream header from the edge"
    );
    anyhow::ensure!(
        matches!(conn.next_event().await?, Event::Element(_)),
        "no features from the edge"
    );
    Ok(())
}

/// One hostile connection, left holding its unfinished element.
async fn hostile(i: usize, edge: SocketAddr, tls: bool) -> Result<XmlConn> {
    let tcp = connect_from(source(i), edge).await?;
    let mut conn = XmlConn::new(tcp, Limits::default())?;
    exchange_headers(&mut conn).await?;
    if tls {
        conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        match conn.next_event().await? {
            Event::Element(tl) if tl.element.is("proceed", ns::TLS) => {}
            other => anyhow::bail!("connection {i}: expected <proceed/>, got {other:?}"),
        }
        let cfg = causeway_pki::s2s_client_config_dialback()?;
        conn.connect_tls(cfg, LOCAL).await?;
        exchange_headers(&mut conn).await?;
    }
    conn.send(&unfinished(8000)).await?;
    Ok(conn)
}

/// Open `n` hostile connections (16 at a time) and return them, held.
async fn open_all(n: usize, edge: SocketAddr, tls: bool) -> Result<Vec<XmlConn>> {
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| tokio::spawn(hostile(i, edge, tls)))
            .collect();
        for t in tasks {
            held.push(t.await??);
        }
    }
    Ok(held)
}

/// How many of `held` the edge has not closed (nothing to read within a moment); drops them.
async fn still_open(held: Vec<XmlConn>) -> usize {
    let checks = held.into_iter().map(|mut conn| async move {
        tokio::time::timeout(Duration::from_millis(200), conn.next_event())
            .await
            .is_err()
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter(|open| *open)
        .count()
}

fn run(n: usize) -> Result<()> {
    let ip = |h| Lab::ip(SUBNET, h);
    let dir = causeway_testkit::temp_dir("causeway-bench-hostile-")?;
    let pki = dir.path().join("pki");
    lab::write_pki(&pki)?;
    let edge_s2s = SocketAddr::from((ip(2), 5269));
    let edge_cfg = lab::edge_config(
        edge_s2s,
        SocketAddr::from((ip(2), 7400)),
        SocketAddr::from((ip(53), 53)),
        &[],
        "",
    );
    std::fs::write(dir.path().join("edge.toml"), edge_cfg)?;
    // A core, so that the edge serves example.com (its node need not exist: nothing is
    // delivered).
    std::fs::write(
        dir.path().join("core.toml"),
        lab::core_config(
            SocketAddr::from((ip(3), 5269)),
            SocketAddr::from((ip(2), 7400)),
            ip(11),
            5269,
        ),
    )?;
    let edge = lab::spawn_daemon(
        Path::new(env!("CARGO_BIN_EXE_edge")),
        "edge",
        dir.path(),
        "info",
    )?;
    let _core = lab::spawn_daemon(
        Path::new(env!("CARGO_BIN_EXE_core")),
        "core",
        dir.path(),
        "warn",
    )?;
    anyhow::ensure!(
        causeway_testkit::wait_until(Duration::from_secs(20), || edge
            .log_tail(50)
            .contains("core connected")),
        "core never connected:\n{}",
        edge.log_tail(20)
    );
    let pid = edge.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Settle, then the idle baseline.
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss(pid)?;
    let mut rows = Vec::new();
    for (label, tls) in [("plaintext", false), ("after STARTTLS", true)] {
        let started = std::time::Instant::now();
        let held = rt
            .block_on(open_all(n, edge_s2s, tls))
            .with_context(|| format!("edge log:\n{}", edge.log_tail(20)))?;
        std::thread::sleep(Duration::from_millis(500));
        let with = rss(pid)?;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(25),
            "opening took {:?}: the authentication deadline (30 s) would close them first",
            started.elapsed()
        );
        let open = rt.block_on(still_open(held));
        anyhow::ensure!(
            open == n,
            "only {open} of {n} {label} connections were still open when measured:\n{}",
            edge.log_tail(20)
        );
        rows.push((label, with));
        // Let the edge see them close before the next kind.
        std::thread::sleep(Duration::from_secs(2));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("== edge memory under hostile pre-authentication connections ({n} each, one source each) ==");
    println!("idle baseline               : {:>7.1} MiB", mib(idle));
    for (label, with) in rows {
        let per = with.saturating_sub(idle) as f64 / n as f64;
        println!(
            "{n} held, {label:<14}: {:>7.1} MiB   {:>6.1} KiB per connection   {:.2}x idle",
            mib(with),
            per / 1024.0,
            with as f64 / idle as f64
        );
    }
    Ok(())
}
