//! Core side: dials the edge, keeps the session alive, reconnects with
//! exponential backoff and resumes without loss.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use causeway_api::traversal::traversal_client::TraversalClient;
use causeway_api::traversal::{frame, Hello};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::edge::error_chain;
use crate::link::{
    hello_frame, lock, random_instance, status_text, Delivered, Link, Session, SessionEnd,
    MAX_FRAME_BYTES, OUTBOUND_BUFFER,
};
use crate::{
    tls, CoreHello, LinkStats, TlsFiles, TunnelError, TunnelOptions, TunnelStanza, TunnelState,
    TunnelStats,
};

/// Capacity of the channel that delivers the edge's stanzas to the core.
pub const CORE_DELIVERY_BUFFER: usize = 256;

/// Configuration of a [`CoreTunnel`].
#[derive(Debug, Clone)]
pub struct CoreTunnelConfig {
    /// Where to dial: `"host:port"` or `"ip:port"`.
    pub edge_addr: String,
    /// The DNS name expected in the edge's server certificate.
    pub edge_name: String,
    /// This core's certificate and key, and the traversal CA.
    pub tls: TlsFiles,
    /// What to announce; `core_id` must match this core's certificate.
    pub hello: CoreHello,
    /// Window, keepalive and backoff settings.
    pub opts: TunnelOptions,
}

/// Handle to the core's side of the tunnel. Cheap to clone.
#[derive(Clone)]
pub struct CoreTunnel {
    inner: Arc<CoreInner>,
}

struct CoreInner {
    link: Arc<Link>,
    state: watch::Sender<TunnelState>,
    cancel: CancellationToken,
    edge_name: String,
    instance: u64,
    /// What the next hello announces, and its revision (bumped by `reannounce`).
    hello: Mutex<(u64, CoreHello)>,
    /// Ends the current session (so that the next one says hello again), with the hello
    /// revision that session announced.
    session: Mutex<Option<(u64, CancellationToken)>>,
    /// The certificate, key and CAs the next connection uses ([`CoreTunnel::set_tls`]).
    tls: Mutex<TlsFiles>,
}

impl CoreTunnel {
    /// Spawns the connect/reconnect loop. Stanzas from the edge are delivered
    /// exactly once and in order to the returned receiver (capacity
    /// [`CORE_DELIVERY_BUFFER`]); when it is full the tunnel stops reading
    /// (backpressure). The loop runs until [`shutdown`](Self::shutdown) or
    /// until the receiver is dropped.
    ///
    /// Must be called within a Tokio runtime.
    pub fn start(cfg: CoreTunnelConfig) -> (CoreTunnel, mpsc::Receiver<Delivered>) {
        let (deliver_tx, deliver_rx) = mpsc::channel(CORE_DELIVERY_BUFFER);
        let (state, _) = watch::channel(TunnelState::Connecting {
            last_error: None,
            attempts: 0,
        });
        let inner = Arc::new(CoreInner {
            link: Arc::new(Link::new(
                cfg.opts.window,
                cfg.opts.window_bytes,
                cfg.opts.destination_share,
            )),
            state,
            cancel: CancellationToken::new(),
            edge_name: cfg.edge_name.clone(),
            instance: random_instance(),
            hello: Mutex::new((0, cfg.hello.clone())),
            session: Mutex::new(None),
            tls: Mutex::new(cfg.tls.clone()),
        });
        tokio::spawn(run_loop(inner.clone(), cfg, deliver_tx));
        (CoreTunnel { inner }, deliver_rx)
    }

    /// Replace the tunnel's certificate, key and trusted CAs (a reload, a CA rotation): the
    /// next connection uses them; the established session keeps going. Invalid PEM is refused
    /// and the running files stay.
    pub fn set_tls(&self, tls: TlsFiles) -> Result<(), TunnelError> {
        tls::validate(&tls)?;
        *lock(&self.inner.tls) = tls;
        Ok(())
    }

    /// Queues a stanza for the edge, waiting for room in the replay window.
    /// Works while disconnected: the stanza is sent when a session is up and
    /// replayed after reconnects until the edge acknowledges it.
    ///
    /// Errors: [`TunnelError::Closed`] after [`shutdown`](Self::shutdown).
    pub async fn send(&self, stanza: TunnelStanza) -> Result<(), TunnelError> {
        self.inner.link.send(stanza).await.map(drop)
    }

    /// Current connection state.
    pub fn state(&self) -> TunnelState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that observes every state change.
    pub fn watch_state(&self) -> watch::Receiver<TunnelState> {
        self.inner.state.subscribe()
    }

    /// Counters, keyed by the edge's name.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            links: [(self.inner.edge_name.clone(), self.inner.link.stats())]
                .into_iter()
                .collect(),
        }
    }

    /// Counters of the link to the edge.
    pub fn link_stats(&self) -> LinkStats {
        self.inner.link.stats()
    }

    /// True while a session with the edge is established.
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.state.borrow(), TunnelState::Connected { .. })
    }

    /// The edge said it drains (a planned stop): send it nothing new. Stays true after its
    /// session ends, until it says hello again.
    pub fn peer_draining(&self) -> bool {
        self.inner.link.peer_draining()
    }

    /// Connected and not draining: a fit edge for new stanzas.
    pub fn is_usable(&self) -> bool {
        self.is_connected() && !self.peer_draining()
    }

    /// This core drains: tell the edge (sessions at protocol revision 2 or later) to send it
    /// nothing new and to expect the session to end within `within_secs`.
    pub fn drain(&self, within_secs: u32) {
        self.inner.link.drain(within_secs);
    }

    /// The session's tunnel protocol revision (of the last session when none is up).
    pub fn protocol(&self) -> u32 {
        self.inner.link.protocol()
    }

    /// Takes back every stanza the edge has not acknowledged, in order, so
    /// the caller can send it through another edge when this one is gone for
    /// good. They leave the replay window as if acknowledged: a later session
    /// with this edge does not replay them. Returns nothing while a session
    /// is established (the edge is alive and will acknowledge them).
    ///
    /// The edge may have delivered some of them without its acknowledgement
    /// reaching us (acks are batched, at most 20 ms late): sending those
    /// elsewhere duplicates them.
    pub fn take_unacked(&self) -> Vec<TunnelStanza> {
        if self.is_connected() {
            return Vec::new();
        }
        self.inner.link.take_unacked()
    }

    /// Waits up to `timeout` for a session to be established; true if it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.state.subscribe();
        let connected = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| matches!(s, TunnelState::Connected { .. })),
        )
        .await;
        matches!(connected, Ok(Ok(_)))
    }

    /// This core's random instance id (changes at every start).
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    /// Announces new domain and chat node alias lists to the edge. The hello is the only frame
    /// that carries them, so a running session ends and the tunnel reconnects at once with the
    /// new hello, replaying whatever the edge had not acknowledged (nothing is lost). Every
    /// later reconnect announces them too.
    pub fn reannounce(&self, domains: Vec<String>, chat_node_aliases: Vec<String>) {
        let revision = {
            let mut h = lock(&self.inner.hello);
            h.0 += 1;
            h.1.domains = domains;
            h.1.chat_node_aliases = chat_node_aliases;
            h.0
        };
        if let Some((announced, session)) = lock(&self.inner.session).as_ref() {
            if *announced < revision {
                session.cancel();
            }
        }
    }

    /// Stops the tunnel: ends the session, stops reconnecting and makes
    /// pending and future sends fail with [`TunnelError::Closed`].
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.link.close();
    }
}

/// Outcome of one connection attempt.
enum Attempt {
    /// A session was established and has now ended.
    Ended(SessionEnd),
    /// No session could be established.
    Failed(TunnelError),
}

async fn run_loop(inner: Arc<CoreInner>, cfg: CoreTunnelConfig, deliver: mpsc::Sender<Delivered>) {
    let backoff_min = cfg.opts.backoff_min.max(Duration::from_millis(1));
    let backoff_max = cfg.opts.backoff_max.max(backoff_min);
    let mut delay = backoff_min;
    let mut attempts: u32 = 0;
    let mut last_error: Option<String> = None;

    while !inner.cancel.is_cancelled() {
        attempts = attempts.saturating_add(1);
        inner.state.send_replace(TunnelState::Connecting {
            last_error: last_error.clone(),
            attempts,
        });
        match attempt(&inner, &cfg, &deliver).await {
            // Only `reannounce` ends a session this way: say hello again at once.
            Attempt::Ended(SessionEnd::Cancelled) if !inner.cancel.is_cancelled() => {
                info!(edge = %cfg.edge_addr, "tunnel session ended to announce new domains; reconnecting");
                attempts = 0;
                delay = backoff_min;
                continue;
            }
            Attempt::Ended(end) => {
                info!(edge = %cfg.edge_addr, reason = %end.describe(), "tunnel session ended");
                if matches!(end, SessionEnd::DeliveryClosed) {
                    break;
                }
                last_error = Some(end.describe());
                attempts = 0;
                delay = backoff_min;
            }
            Attempt::Failed(e) => {
                debug!(edge = %cfg.edge_addr, error = %e, attempts, "tunnel connect failed");
                if attempts == 1 || attempts.is_power_of_two() {
                    warn!(edge = %cfg.edge_addr, error = %e, attempts, "cannot reach edge");
                }
                last_error = Some(e.to_string());
            }
        }
        if inner.cancel.is_cancelled() {
            break;
        }
        inner.state.send_replace(TunnelState::Connecting {
            last_error: last_error.clone(),
            attempts,
        });
        let pause = jitter(delay);
        delay = (delay * 2).min(backoff_max);
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    inner.link.close();
    inner.link.set_connected(false);
    inner.state.send_replace(TunnelState::Stopped);
}

/// A random delay in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=extra_ns))
}

fn transport_error(text: String) -> TunnelError {
    if tls::looks_like_tls(&text) {
        TunnelError::Tls(text)
    } else {
        TunnelError::Transport(text)
    }
}

async fn attempt(
    inner: &Arc<CoreInner>,
    cfg: &CoreTunnelConfig,
    deliver: &mpsc::Sender<Delivered>,
) -> Attempt {
    tokio::select! {
        biased;
        _ = inner.cancel.cancelled() => Attempt::Ended(SessionEnd::Cancelled),
        r = establish(inner, cfg) => match r {
            Err(e) => Attempt::Failed(e),
            Ok(est) => Attempt::Ended(run_session(inner, cfg, deliver, est).await),
        },
    }
}

/// An established session, hellos exchanged.
struct Established {
    // Keeps the connection alive for the duration of the session.
    _client: TraversalClient<tonic::transport::Channel>,
    inbound: tonic::Streaming<causeway_api::traversal::Frame>,
    out_tx: mpsc::Sender<causeway_api::traversal::Frame>,
    peer: Hello,
    /// The revision of the hello we sent.
    revision: u64,
    /// The session's tunnel protocol revision.
    protocol: u32,
}

async fn establish(inner: &CoreInner, cfg: &CoreTunnelConfig) -> Result<Established, TunnelError> {
    let files = lock(&inner.tls).clone();
    tls::validate(&files)?;
    let keepalive = cfg.opts.keepalive_or_min();
    let dead_after = cfg.opts.dead_after();
    let endpoint = Endpoint::from_shared(format!("https://{}", cfg.edge_addr))
        .map_err(|e| TunnelError::Transport(format!("bad edge address: {}", error_chain(&e))))?
        .tls_config(tls::client_config(&files, &cfg.edge_name).timeout(dead_after))
        .map_err(|e| TunnelError::Tls(error_chain(&e)))?
        .connect_timeout(dead_after)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive * 2)
        .keep_alive_while_idle(true);

    let channel = match tokio::time::timeout(dead_after, endpoint.connect()).await {
        Err(_) => return Err(TunnelError::Timeout(dead_after)),
        Ok(Err(e)) => return Err(transport_error(error_chain(&e))),
        Ok(Ok(c)) => c,
    };
    let mut client = TraversalClient::new(channel).max_decoding_message_size(MAX_FRAME_BYTES);

    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_BUFFER);
    let (revision, h) = lock(&inner.hello).clone();
    let hello = hello_frame(
        &inner.link,
        inner.instance,
        h.core_id,
        h.version,
        h.domains,
        h.chat_node_aliases,
        h.protocol,
    );
    out_tx
        .try_send(hello)
        .map_err(|_| TunnelError::Protocol("cannot queue hello".into()))?;

    let response =
        match tokio::time::timeout(dead_after, client.connect(ReceiverStream::new(out_rx))).await {
            Err(_) => return Err(TunnelError::Timeout(dead_after)),
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                        TunnelError::Refused(status_text(&status))
                    }
                    _ => transport_error(status_text(&status)),
                })
            }
            Ok(Ok(r)) => r,
        };
    let mut inbound = response.into_inner();
    let first = match tokio::time::timeout(dead_after, inbound.message()).await {
        Err(_) => return Err(TunnelError::Timeout(dead_after)),
        Ok(Err(status)) => return Err(transport_error(status_text(&status))),
        Ok(Ok(None)) => {
            return Err(TunnelError::Protocol(
                "edge closed the stream before its hello".into(),
            ))
        }
        Ok(Ok(Some(f))) => f,
    };
    let peer = match first.kind {
        Some(frame::Kind::Hello(h)) if h.instance != 0 => h,
        Some(frame::Kind::Hello(_)) => {
            return Err(TunnelError::Protocol("edge hello has instance 0".into()))
        }
        _ => {
            return Err(TunnelError::Protocol(
                "first frame from the edge is not a hello".into(),
            ))
        }
    };
    // The revision our hello advertised against the edge's.
    let protocol = crate::protocol::negotiate(lock(&inner.hello).1.protocol, peer.protocol)
        .map_err(TunnelError::Protocol)?;
    Ok(Established {
        _client: client,
        inbound,
        out_tx,
        peer,
        revision,
        protocol,
    })
}

async fn run_session(
    inner: &Arc<CoreInner>,
    cfg: &CoreTunnelConfig,
    deliver: &mpsc::Sender<Delivered>,
    est: Established,
) -> SessionEnd {
    let Established {
        _client,
        inbound,
        out_tx,
        peer,
        revision,
        protocol,
    } = est;
    let cancel = inner.cancel.child_token();
    *lock(&inner.session) = Some((revision, cancel.clone()));
    if lock(&inner.hello).0 != revision {
        // Re-announced while we were saying hello: say it again.
        cancel.cancel();
    }
    inner.link.resume_from(&peer, inner.instance, protocol);
    inner.link.set_connected(true);
    inner.state.send_replace(TunnelState::Connected {
        since: SystemTime::now(),
    });
    info!(edge = %cfg.edge_addr, edge_version = %peer.version, protocol, "tunnel connected");
    let end = Session {
        link: inner.link.clone(),
        inbound,
        out_tx,
        deliver: deliver.clone(),
        wrap: Arc::new(|stanza, settle| Delivered { stanza, settle }),
        keepalive: cfg.opts.keepalive_or_min(),
        dead_after: cfg.opts.dead_after(),
        cancel,
    }
    .run()
    .await;
    *lock(&inner.session) = None;
    inner.link.set_connected(false);
    drop(_client);
    end
}
