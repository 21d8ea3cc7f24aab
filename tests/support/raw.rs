//! A hostile peer's view of the edge: raw TCP, bytes written by hand, timing of what the edge
//! does. Nothing here speaks XMPP properly on purpose.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A stream header from `from` to example.com, plaintext, with the dialback prefix.
pub fn header(from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='example.com' version='1.0'>"
    )
}

/// Run a hostile peer's script to completion on a runtime of its own.
pub fn script<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Runtime::new().expect("runtime").block_on(f)
}

/// Connect to `to`.
pub async fn connect(to: SocketAddr) -> TcpStream {
    TcpStream::connect(to).await.expect("connect")
}

/// How long from now until the edge closes the connection (at most 20 s), and what it said.
pub async fn time_to_close(tcp: &mut TcpStream) -> (Duration, String) {
    until_closed(tcp, Instant::now(), Duration::from_secs(20)).await
}

/// Connect to `to` from the loopback address `from` (a source of its own).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// Read until `needle` appears (or fail after `within`); returns everything read.
pub async fn read_until(tcp: &mut TcpStream, needle: &str, within: Duration) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        if String::from_utf8_lossy(&seen).contains(needle) {
            return String::from_utf8_lossy(&seen).into_owned();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no {needle:?} within {within:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Read until the edge closes the connection (EOF or reset), at most `within`; returns how
/// long that took from `since` and what was read.
pub async fn until_closed(
    tcp: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> (Duration, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = since + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (since.elapsed(), String::from_utf8_lossy(&seen).into_owned())
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Whether the edge closed the connection within `within` (EOF or reset), reading and
/// discarding what it sent.
pub async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Write all of `data`, or fail the test.
pub async fn write(tcp: &mut TcpStream, data: &[u8]) {
    tcp.write_all(data).await.expect("write");
}

/// The edge process's resident and peak resident memory (VmRSS, VmHWM) in bytes.
pub fn edge_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
