//! A fault-injecting TCP relay (std threads, independent of any runtime).
//!
//! Put it between two components (e.g. core -> relay -> edge's tunnel port)
//! and break the path on demand: [`Relay::cut_all`] resets every current
//! connection on both sides, [`Relay::set_refusing`] makes new connections
//! fail, [`Relay::set_paused`] stops forwarding without closing (a black
//! hole, for keepalive/timeout tests).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

struct Conn {
    client: TcpStream,
    upstream: TcpStream,
}

impl Conn {
    /// Abortive close of both sides: SO_LINGER 0, then shutdown so that the
    /// forwarding threads wake up; the last close sends RST.
    fn abort(&self) {
        for s in [&self.client, &self.upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct Inner {
    target: Mutex<Option<SocketAddr>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    bytes: AtomicU64,
    stop: AtomicBool,
    refusing: AtomicBool,
    paused: AtomicBool,
}

/// A TCP relay from a listening address to a target; stops on drop.
pub struct Relay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("connections", &self.connections())
            .finish()
    }
}

impl Relay {
    /// Listens on `listen` (port 0: any free port) and forwards every
    /// connection to `target`. Both must be loopback addresses.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Result<Self> {
        if !listen.ip().is_loopback() || !target.ip().is_loopback() {
            bail!("the relay only works between loopback addresses");
        }
        let listener = TcpListener::bind(listen).with_context(|| format!("relay bind {listen}"))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::default());
        *inner.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        let inner2 = inner.clone();
        let accept = std::thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || accept_loop(listener, inner2))?;
        Ok(Self {
            addr,
            inner,
            accept: Some(accept),
        })
    }

    /// Where the relay listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go.
    pub fn target(&self) -> Option<SocketAddr> {
        *self.inner.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes where new connections go (current ones are untouched).
    pub fn set_target(&self, target: SocketAddr) {
        *self.inner.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    /// Connections currently relayed.
    pub fn connections(&self) -> usize {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Connections accepted and relayed since start.
    pub fn total_accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded (both directions) since start.
    pub fn bytes_forwarded(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Abruptly closes every current connection, both sides (RST); returns
    /// how many were cut. New connections are still accepted.
    pub fn cut_all(&self) -> usize {
        let conns: Vec<Conn> = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in &conns {
            c.abort();
        }
        conns.len()
    }

    /// While true, new connections are accepted and reset at once (the far
    /// side looks down); current ones are untouched.
    pub fn set_refusing(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::SeqCst);
    }

    /// While true, no byte is forwarded in either direction (connections stay
    /// open: a black hole).
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.store(paused, Ordering::SeqCst);
    }

    /// Waits until at least `n` connections are current.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.connections() >= n)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.cut_all();
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = stream else { continue };
        let target = *inner.target.lock().unwrap_or_else(|e| e.into_inner());
        let upstream = match (inner.refusing.load(Ordering::SeqCst), target) {
            (false, Some(t)) => TcpStream::connect_timeout(&t, Duration::from_secs(5)).ok(),
            _ => None,
        };
        let Some(upstream) = upstream else {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            drop(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Conn { client, upstream });
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        for (from, to) in [(c2, u2), (u3, c3)] {
            let inner = inner.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                pump(from, to, &inner);
                if done.fetch_add(1, Ordering::SeqCst) == 1 {
                    inner
                        .conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
            });
        }
    }
}

/// Copies `from` to `to` until EOF or error; propagates EOF as a half-close
/// and errors as a full shutdown.
fn pump(mut from: TcpStream, mut to: TcpStream, inner: &Inner) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                while inner.paused.load(Ordering::SeqCst) && !inner.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                inner.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
