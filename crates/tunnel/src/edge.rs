//! Edge side: the gRPC server that cores dial into.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use causeway_api::traversal::traversal_server::{Traversal, TraversalServer};
use causeway_api::traversal::{frame, Frame, Hello};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::link::{
    hello_frame, lock, random_instance, Link, Receipt, Session, MAX_FRAME_BYTES, OUTBOUND_BUFFER,
};
use crate::{
    tls, CoreHello, PeerCheck, TlsFiles, TunnelError, TunnelOptions, TunnelStanza, TunnelStats,
};
use rustls_pki_types::CertificateDer;

/// Something that happened on the edge's side of the tunnel. Events of one
/// core arrive in order: `CoreUp`, its stanzas, `CoreDown`, `CoreUp`, ...
#[derive(Debug)]
pub enum EdgeEvent {
    /// A core completed its hello (first connect or reconnect).
    CoreUp(CoreHello),
    /// A core's session ended. Its queued stanzas are kept for its reconnect.
    CoreDown {
        /// The core whose session ended.
        core_id: String,
    },
    /// A stanza from a core, delivered exactly once and in order.
    Stanza {
        /// The sending core.
        core_id: String,
        /// The stanza.
        stanza: TunnelStanza,
    },
}

/// Handle to a running edge tunnel server. Cheap to clone.
#[derive(Clone)]
pub struct EdgeTunnel {
    inner: Arc<EdgeInner>,
}

struct EdgeInner {
    instance: u64,
    opts: TunnelOptions,
    events: mpsc::Sender<EdgeEvent>,
    cores: Mutex<HashMap<String, Arc<CoreEntry>>>,
    cancel: CancellationToken,
    /// Applied to a core's certificate chain when it connects (replaceable: CRL reload).
    peer_check: Mutex<Option<PeerCheck>>,
    /// Non-zero once the edge drains: the seconds within which it ends its sessions.
    drain_within: std::sync::atomic::AtomicU32,
    /// The TLS config new connections are accepted with ([`EdgeTunnel::set_tls`] replaces it).
    tls: Mutex<Arc<rustls::ServerConfig>>,
}

/// Per-core state, kept for the life of the edge process.
struct CoreEntry {
    core_id: String,
    link: Arc<Link>,
    hello: Mutex<Option<CoreHello>>,
    session: tokio::sync::Mutex<Option<ActiveSession>>,
}

struct ActiveSession {
    cancel: CancellationToken,
    done: JoinHandle<()>,
    /// The certificate chain the core presented for this session.
    chain: Arc<Vec<CertificateDer<'static>>>,
}

impl EdgeTunnel {
    /// Serves the Traversal service with mutual TLS on `listener` until
    /// `shutdown` resolves.
    ///
    /// Clients must present a certificate signed by `tls.ca_pem`; the first
    /// DNS name (or CN) of that certificate is the core's identity, and its
    /// hello's `core_id` must equal it. Events (in order per core) go to
    /// `events`; when that channel is full the tunnel stops reading from the
    /// core (backpressure). Returns the handle immediately plus the server
    /// task, which ends after `shutdown` (and the draining of connections).
    ///
    /// Must be called within a Tokio runtime.
    pub fn serve(
        listener: tokio::net::TcpListener,
        tls: TlsFiles,
        opts: TunnelOptions,
        events: mpsc::Sender<EdgeEvent>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(EdgeTunnel, JoinHandle<Result<(), TunnelError>>), TunnelError> {
        Self::serve_all(vec![listener], tls, opts, events, shutdown)
    }

    /// Like [`EdgeTunnel::serve`] on several listeners at once (an IPv4 and an IPv6 address,
    /// say); the connection cap covers them all.
    pub fn serve_all(
        listeners: Vec<tokio::net::TcpListener>,
        tls: TlsFiles,
        opts: TunnelOptions,
        events: mpsc::Sender<EdgeEvent>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(EdgeTunnel, JoinHandle<Result<(), TunnelError>>), TunnelError> {
        let server_tls = tls::server_config(&tls)?;
        let keepalive = opts.keepalive_or_min();
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive * 2));
        let peer_check = opts.peer_check.clone();
        let inner = Arc::new(EdgeInner {
            instance: random_instance(),
            opts,
            events,
            cores: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            peer_check: Mutex::new(peer_check),
            drain_within: std::sync::atomic::AtomicU32::new(0),
            tls: Mutex::new(server_tls),
        });
        let service = TraversalServer::new(TraversalService {
            inner: inner.clone(),
        })
        .max_decoding_message_size(MAX_FRAME_BYTES);
        let router = builder.add_service(service);
        let incoming = handshaken(
            capped(
                futures::stream::select_all(
                    listeners
                        .into_iter()
                        .map(|l| TcpIncoming::from(l).with_nodelay(Some(true))),
                ),
                inner.opts.max_connections,
            ),
            inner.clone(),
        );
        let server_inner = inner.clone();
        let handle = tokio::spawn(async move {
            let cancel = server_inner.cancel.clone();
            let signal_inner = server_inner.clone();
            let signal = async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = cancel.cancelled() => {}
                }
                signal_inner.stop();
            };
            let result = router
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .map_err(|e| TunnelError::Transport(error_chain(&e)));
            server_inner.stop();
            result
        });
        Ok((EdgeTunnel { inner }, handle))
    }

    /// Queues a stanza for the core `core_id`, waiting for room in its replay
    /// window. The stanza is kept (and replayed) across that core's
    /// reconnects until acknowledged.
    ///
    /// Errors: [`TunnelError::UnknownCore`] if that core never completed a
    /// hello, [`TunnelError::Closed`] after shutdown.
    pub async fn send(&self, core_id: &str, stanza: TunnelStanza) -> Result<(), TunnelError> {
        self.send_tracked(core_id, stanza).await.map(drop)
    }

    /// Like [`EdgeTunnel::send`], with a [`Receipt`] that settles once the core acknowledged
    /// the stanza (or it was taken back to go to another core).
    pub async fn send_tracked(
        &self,
        core_id: &str,
        stanza: TunnelStanza,
    ) -> Result<Receipt, TunnelError> {
        let link = lock(&self.inner.cores)
            .get(core_id)
            .map(|e| e.link.clone())
            .ok_or_else(|| TunnelError::UnknownCore(core_id.to_owned()))?;
        link.send(stanza).await
    }

    /// Replace the check applied to cores' certificates (see [`PeerCheck`]) and apply it to
    /// every connected core at once: a core whose certificate it refuses (revoked by a
    /// reloaded CRL, say) loses its session, and its reconnects are refused. Returns those
    /// cores' ids.
    pub async fn set_peer_check(&self, check: Option<PeerCheck>) -> Vec<String> {
        *lock(&self.inner.peer_check) = check.clone();
        let Some(check) = check else {
            return Vec::new();
        };
        let entries: Vec<Arc<CoreEntry>> = lock(&self.inner.cores).values().cloned().collect();
        let mut cut = Vec::new();
        for entry in entries {
            let slot = entry.session.lock().await;
            let Some(active) = slot.as_ref() else {
                continue;
            };
            if let Err(why) = (check.0)(&active.chain) {
                warn!(core_id = %entry.core_id, reason = %why, "a connected core's traversal certificate is no longer accepted: its session is closed");
                active.cancel.cancel();
                cut.push(entry.core_id.clone());
            }
        }
        cut
    }

    /// Replace the tunnel's certificate, key and trusted CAs (a reload, a CA rotation): the
    /// connections accepted from now on use them; established sessions keep going. An error
    /// (unreadable PEM, a key that does not match) leaves the running config in place.
    pub fn set_tls(&self, tls: &TlsFiles) -> Result<(), TunnelError> {
        let config = tls::server_config(tls)?;
        *lock(&self.inner.tls) = config;
        Ok(())
    }

    /// The edge drains: tell every core (now and when one connects later; sessions at protocol
    /// revision 2 or later) to send it nothing new and to expect its session to end within
    /// `within_secs`.
    pub fn drain(&self, within_secs: u32) {
        let within_secs = within_secs.max(1);
        self.inner
            .drain_within
            .store(within_secs, std::sync::atomic::Ordering::Relaxed);
        for entry in lock(&self.inner.cores).values() {
            entry.link.drain(within_secs);
        }
    }

    /// True while the core `core_id` has a session and has not said it drains.
    pub fn is_usable(&self, core_id: &str) -> bool {
        lock(&self.inner.cores)
            .get(core_id)
            .is_some_and(|e| e.link.is_connected() && !e.link.peer_draining())
    }

    /// The core `core_id` said it drains (its last session did; reset by its next hello).
    pub fn peer_draining(&self, core_id: &str) -> bool {
        lock(&self.inner.cores)
            .get(core_id)
            .is_some_and(|e| e.link.peer_draining())
    }

    /// Stanzas sent to cores and not yet acknowledged, over every core.
    pub fn unacked(&self) -> usize {
        self.stats().links.values().map(|l| l.unacked).sum()
    }

    /// True while the core `core_id` has a session.
    pub fn is_connected(&self, core_id: &str) -> bool {
        lock(&self.inner.cores)
            .get(core_id)
            .is_some_and(|e| e.link.is_connected())
    }

    /// Takes back every stanza queued for the core `core_id` and not yet
    /// acknowledged, in order, so the caller can send it to another core when
    /// this one is gone for good. They leave the replay window as if
    /// acknowledged. Returns nothing for an unknown core and while the core
    /// has a session. The core may have delivered some of them without its
    /// acknowledgement reaching us: sending those elsewhere duplicates them.
    pub fn take_unacked(&self, core_id: &str) -> Vec<TunnelStanza> {
        let Some(link) = lock(&self.inner.cores).get(core_id).map(|e| e.link.clone()) else {
            return Vec::new();
        };
        if link.is_connected() {
            return Vec::new();
        }
        link.take_unacked()
    }

    /// The hellos of the cores that currently have a session.
    pub fn connected_cores(&self) -> Vec<CoreHello> {
        let mut out: Vec<CoreHello> = lock(&self.inner.cores)
            .values()
            .filter(|e| e.link.stats().connected)
            .filter_map(|e| lock(&e.hello).clone())
            .collect();
        out.sort_by(|a, b| a.core_id.cmp(&b.core_id));
        out
    }

    /// Per-core counters, keyed by core_id (every core that ever said hello).
    pub fn stats(&self) -> TunnelStats {
        let cores = lock(&self.inner.cores);
        TunnelStats {
            links: cores
                .iter()
                .map(|(id, e)| (id.clone(), e.link.stats()))
                .collect(),
        }
    }

    /// This edge's random instance id (changes at every start).
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    /// Stops the server as if `shutdown` had resolved.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl EdgeInner {
    /// Cancels every session and makes pending and future sends fail.
    fn stop(&self) {
        self.cancel.cancel();
        for entry in lock(&self.cores).values() {
            entry.link.close();
        }
    }

    fn entry(&self, core_id: &str) -> Arc<CoreEntry> {
        lock(&self.cores)
            .entry(core_id.to_owned())
            .or_insert_with(|| {
                let link = Arc::new(Link::new(
                    self.opts.window,
                    self.opts.window_bytes,
                    self.opts.destination_share,
                ));
                if self.cancel.is_cancelled() {
                    link.close();
                }
                Arc::new(CoreEntry {
                    core_id: core_id.to_owned(),
                    link,
                    hello: Mutex::new(None),
                    session: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

struct TraversalService {
    inner: Arc<EdgeInner>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Traversal for TraversalService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() || inner.events.is_closed() {
            return Err(Status::unavailable("edge tunnel is shutting down"));
        }
        let remote = request.remote_addr();
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let identity = tls::peer_identity(leaf.as_ref())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let check = lock(&inner.peer_check).clone();
        if let Some(check) = check {
            if let Err(why) = (check.0)(&certs) {
                warn!(?remote, core_id = %identity, reason = %why, "refusing core: its traversal certificate is not accepted");
                return Err(Status::permission_denied(format!(
                    "certificate not accepted: {why}"
                )));
            }
        }

        let mut inbound = request.into_inner();
        let dead_after = inner.opts.dead_after();
        let first = match tokio::time::timeout(dead_after, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello received")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before hello")),
            Ok(Ok(Some(frame))) => frame,
        };
        let hello: Hello = match first.kind {
            Some(frame::Kind::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("first frame must be a hello")),
        };
        if hello.core_id != identity {
            warn!(
                ?remote,
                cert_identity = %identity,
                hello_core_id = %hello.core_id,
                "refusing core: hello core_id does not match its certificate"
            );
            return Err(Status::permission_denied(format!(
                "core_id {:?} does not match the client certificate identity {:?}",
                hello.core_id, identity
            )));
        }
        if hello.instance == 0 {
            return Err(Status::invalid_argument("hello instance must be non-zero"));
        }
        let protocol = match crate::protocol::negotiate(crate::protocol::PROTOCOL, hello.protocol) {
            Ok(p) => p,
            Err(why) => {
                warn!(core_id = %hello.core_id, %why, "refusing core: tunnel protocol");
                return Err(Status::failed_precondition(why));
            }
        };

        let entry = inner.entry(&hello.core_id);
        // One session per core: end the previous one (e.g. a connection that
        // died without us noticing yet) before resuming.
        let mut slot = entry.session.lock().await;
        if let Some(old) = slot.take() {
            debug!(core_id = %entry.core_id, "replacing previous session");
            old.cancel.cancel();
            let _ = old.done.await;
        }
        if inner.cancel.is_cancelled() {
            return Err(Status::unavailable("edge tunnel is shutting down"));
        }

        let core_hello = CoreHello {
            core_id: hello.core_id.clone(),
            domains: hello.domains.clone(),
            chat_node_aliases: hello.chat_node_aliases.clone(),
            version: hello.version.clone(),
            protocol,
        };
        entry.link.resume_from(&hello, inner.instance, protocol);
        let drain_within = inner
            .drain_within
            .load(std::sync::atomic::Ordering::Relaxed);
        if drain_within != 0 {
            entry.link.drain(drain_within);
        }
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_BUFFER);
        let our_hello = hello_frame(
            &entry.link,
            inner.instance,
            String::new(),
            env!("CARGO_PKG_VERSION").to_owned(),
            Vec::new(),
            Vec::new(),
            crate::protocol::PROTOCOL,
        );
        out_tx
            .try_send(our_hello)
            .map_err(|_| Status::internal("cannot queue hello"))?;
        *lock(&entry.hello) = Some(core_hello.clone());

        let cancel = inner.cancel.child_token();
        let core_id = hello.core_id.clone();
        let wrap_id = core_id.clone();
        let session = Session {
            link: entry.link.clone(),
            inbound,
            out_tx,
            deliver: inner.events.clone(),
            // The edge's consumer takes a stanza at once (it queues or answers it): handing
            // it over settles it.
            wrap: Arc::new(move |stanza, settle| {
                drop(settle);
                EdgeEvent::Stanza {
                    core_id: wrap_id.clone(),
                    stanza,
                }
            }),
            keepalive: inner.opts.keepalive_or_min(),
            dead_after,
            cancel: cancel.clone(),
        };
        info!(%core_id, ?remote, version = %hello.version, protocol, "core connected");
        let done = tokio::spawn(run_edge_session(
            inner.events.clone(),
            entry.clone(),
            core_hello,
            session,
        ));
        *slot = Some(ActiveSession {
            cancel,
            done,
            chain: certs,
        });
        drop(slot);

        let stream: FrameStream = Box::pin(ReceiverStream::new(out_rx).map(Ok));
        Ok(Response::new(stream))
    }
}

async fn run_edge_session(
    events: mpsc::Sender<EdgeEvent>,
    entry: Arc<CoreEntry>,
    hello: CoreHello,
    session: Session<EdgeEvent>,
) {
    let cancel = session.cancel.clone();
    entry.link.set_connected(true);
    let up = tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        r = events.send(EdgeEvent::CoreUp(hello)) => r.is_ok(),
    };
    if !up {
        // Cancelled or nobody listens: the session never started.
        entry.link.set_connected(false);
        return;
    }
    let end = session.run().await;
    entry.link.set_connected(false);
    info!(core_id = %entry.core_id, reason = %end.describe(), "core session ended");
    let _ = events
        .send(EdgeEvent::CoreDown {
            core_id: entry.core_id.clone(),
        })
        .await;
}

/// Text of an error and all its sources.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Accepted connections, at most `max` at once: each carries a slot it gives back when the
/// connection ends; one accepted beyond the cap is dropped at once (before any TLS work).
fn capped(
    incoming: impl Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
    max: usize,
) -> impl Stream<Item = std::io::Result<Capped>> + Send + 'static {
    let slots = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    incoming.filter_map(move |accepted| match accepted {
        Ok(tcp) => match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Ok(Capped { tcp, _slot: slot })),
            Err(_) => {
                let peer = tcp.peer_addr().ok();
                warn!(?peer, limit = max, "too many tunnel connections; refused");
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

/// TLS handshakes of the accepted connections, each in a task of its own bounded by the
/// handshake timeout (a slow client holds only its own connection slot), with the config in
/// force when it was accepted; the established ones, in completion order.
fn handshaken(
    incoming: impl Stream<Item = std::io::Result<Capped>> + Send + 'static,
    inner: Arc<EdgeInner>,
) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<Capped>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(incoming);
        loop {
            let next = tokio::select! {
                _ = inner.cancel.cancelled() => return,
                next = incoming.next() => next,
            };
            let capped = match next {
                None => return,
                Some(Err(e)) => {
                    debug!(error = %e, "tunnel accept failed");
                    continue;
                }
                Some(Ok(c)) => c,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(lock(&inner.tls).clone());
            let limit = inner.opts.handshake_timeout;
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = capped.tcp.peer_addr().ok();
                match tokio::time::timeout(limit, acceptor.accept(capped)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(?peer, error = %e, "tunnel TLS handshake failed"),
                    Err(_) => debug!(?peer, "tunnel TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A tunnel TCP connection holding its slot of the connection cap.
struct Capped {
    tcp: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        <tokio::net::TcpStream as tonic::transport::server::Connected>::connect_info(&self.tcp)
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
