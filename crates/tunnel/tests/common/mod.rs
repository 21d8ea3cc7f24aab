//! Shared test fixtures: an in-test PKI (rcgen), a cuttable TCP relay and
//! small helpers for starting both sides of the tunnel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use causeway_tunnel::{
    CoreHello, CoreTunnel, CoreTunnelConfig, EdgeEvent, EdgeTunnel, TlsFiles, TunnelError,
    TunnelOptions, TunnelStanza,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const EDGE_NAME: &str = "edge.lab.test";
pub const CORE_ID: &str = "core1.lab.test";

/// Upper bound for waits that should succeed; only guards against hangs.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `name` (DNS SAN and CN), for server or client use.
    pub fn leaf(&self, name: &str, server: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// TLS files for a leaf of this CA that trusts `trust` for its peer.
    pub fn files(&self, name: &str, server: bool, trust: &Ca) -> TlsFiles {
        let (cert, key) = self.leaf(name, server);
        TlsFiles {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
            ca_pem: trust.pem.clone().into_bytes(),
        }
    }
}

/// The traversal CA with an edge and a core identity, plus an unrelated CA.
pub struct Pki {
    pub ca: Ca,
    pub other_ca: Ca,
    pub edge: TlsFiles,
    pub core1: TlsFiles,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("Causeway traversal CA");
        let other_ca = Ca::new("Unrelated CA");
        let edge = ca.files(EDGE_NAME, true, &ca);
        let core1 = ca.files(CORE_ID, false, &ca);
        Pki {
            ca,
            other_ca,
            edge,
            core1,
        }
    }
}

pub fn fast_opts() -> TunnelOptions {
    TunnelOptions {
        window: 4096,
        keepalive: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..TunnelOptions::default()
    }
}

pub fn stanza(n: u64) -> TunnelStanza {
    TunnelStanza {
        from_domain: "a.example".into(),
        to_domain: "b.example".into(),
        payload: Bytes::from(n.to_string()),
    }
}

pub fn stanza_num(s: &TunnelStanza) -> u64 {
    std::str::from_utf8(&s.payload).unwrap().parse().unwrap()
}

pub struct Edge {
    pub tunnel: EdgeTunnel,
    pub events: mpsc::Receiver<EdgeEvent>,
    pub addr: SocketAddr,
    pub server: JoinHandle<Result<(), TunnelError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Edge {
    pub async fn start(tls: TlsFiles, opts: TunnelOptions, events_capacity: usize) -> Edge {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Edge::start_on(listener, tls, opts, events_capacity)
    }

    pub fn start_on(
        listener: TcpListener,
        tls: TlsFiles,
        opts: TunnelOptions,
        events_capacity: usize,
    ) -> Edge {
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::channel(events_capacity);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (tunnel, server) = EdgeTunnel::serve(listener, tls, opts, events_tx, async move {
            let _ = stop_rx.await;
        })
        .unwrap();
        Edge {
            tunnel,
            events,
            addr,
            server,
            stop: Some(stop),
        }
    }

    /// Resolves `shutdown` and waits for the server task to finish.
    pub async fn stop(mut self) -> Result<(), TunnelError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("edge server did not stop")
            .expect("edge server task panicked")
    }

    /// Next event, failing the test if none comes.
    pub async fn next_event(&mut self) -> EdgeEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no edge event")
            .expect("edge events closed")
    }

    /// Skips events until a `CoreUp`, returning its hello.
    pub async fn wait_core_up(&mut self) -> CoreHello {
        loop {
            if let EdgeEvent::CoreUp(h) = self.next_event().await {
                return h;
            }
        }
    }
}

pub fn core_config(
    addr: SocketAddr,
    tls: TlsFiles,
    core_id: &str,
    opts: TunnelOptions,
) -> CoreTunnelConfig {
    CoreTunnelConfig {
        edge_addr: addr.to_string(),
        edge_name: EDGE_NAME.into(),
        tls,
        hello: CoreHello {
            core_id: core_id.into(),
            domains: vec!["inside.example".into()],
            chat_node_aliases: vec!["conference.inside.example".into()],
            version: "test-1".into(),
            protocol: causeway_tunnel::protocol::PROTOCOL,
        },
        opts,
    }
}

pub fn start_core(
    addr: SocketAddr,
    tls: TlsFiles,
    opts: TunnelOptions,
) -> (CoreTunnel, mpsc::Receiver<causeway_tunnel::Delivered>) {
    CoreTunnel::start(core_config(addr, tls, CORE_ID, opts))
}

/// A TCP relay whose connections can all be cut at once.
pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    freeze: tokio::sync::watch::Sender<u64>,
    frozen: Arc<std::sync::atomic::AtomicUsize>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (freeze, _) = tokio::sync::watch::channel(0u64);
        let frozen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (t, c, f, fz) = (
            target.clone(),
            conns.clone(),
            freeze.clone(),
            frozen.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let dest = *t.lock().unwrap();
                let mut freezing = f.subscribe();
                freezing.mark_unchanged();
                let fz = fz.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(dest).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            biased;
                            _ = freezing.changed() => {
                                // Black hole: keep both sockets open, forward nothing.
                                fz.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                std::future::pending::<()>().await;
                            }
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    }
                });
                let mut conns = c.lock().unwrap();
                conns.retain(|h| !h.is_finished());
                conns.push(task);
            }
        });
        Relay {
            addr,
            target,
            freeze,
            frozen,
            conns,
            accept,
        }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Existing connections silently stop forwarding (sockets stay open, as
    /// with a dead middlebox); new connections work normally.
    /// Returns once every live connection has stopped forwarding.
    pub async fn black_hole(&self) {
        use std::sync::atomic::Ordering;
        let live = self
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|h| !h.is_finished())
            .count();
        let before = self.frozen.load(Ordering::SeqCst);
        self.freeze.send_modify(|g| *g += 1);
        while self.frozen.load(Ordering::SeqCst) < before + live {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops every relayed connection (both sockets); returns how many were live.
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let live = conns.iter().filter(|h| !h.is_finished()).count();
        for h in conns.drain(..) {
            h.abort();
        }
        live
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
