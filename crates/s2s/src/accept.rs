//! Accepting inbound s2s connections: the listeners' loops and admission (a global slot, and
//! an unauthenticated slot per source). Each admitted connection is handed to
//! [`crate::inbound`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use crate::admission::{Refusal, Source};
use crate::{S2s, LOG_MODULE};

impl S2s {
    /// Accept inbound s2s connections (STARTTLS) on `listener` until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.accept_loop(listener, false, shutdown).await;
    }

    /// Accept direct-TLS (XEP-0368) s2s connections on `listener` until `shutdown` resolves:
    /// TLS first (ALPN `xmpp-server`), then the stream. Needs `tls_server`.
    pub async fn serve_direct_tls(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        self.accept_loop(listener, true, shutdown).await;
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        direct_tls: bool,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut draining = self.draining.subscribe();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = async { draining.wait_for(Option::is_some).await.is_ok() } => {
                    tracing::info!(module = LOG_MODULE, listen = ?listener.local_addr().ok(), "draining: no longer accepting s2s connections");
                    break;
                }
                accepted = listener.accept() => {
                    let (tcp, addr) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(module = LOG_MODULE, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(admitted) = self.admit(addr) else {
                        continue;
                    };
                    let s2s = self.clone();
                    tokio::spawn(async move { s2s.handle_inbound(tcp, direct_tls, admitted).await });
                }
            }
        }
    }

    /// A slot for a connection from `addr` (global, and unauthenticated per source), or None:
    /// refused (the socket is dropped unread), counted, and logged at most once a minute per
    /// source.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Admitted> {
        let Ok(slot) = self.inbound_slots.clone().try_acquire_owned() else {
            self.counters.refuse_connection(Refusal::MaxInbound);
            warn!(module = LOG_MODULE, peer = %addr, limit = self.cfg().max_inbound, "too many inbound connections; refused");
            return None;
        };
        let admitted = match self.admission.lock() {
            Ok(mut a) => a.admit(addr.ip(), std::time::Instant::now()),
            Err(_) => return None,
        };
        match admitted {
            Ok(source) => Some(Admitted {
                _slot: slot,
                source: Some(SourceSlot {
                    s2s: self.clone(),
                    source,
                }),
            }),
            Err(refused) => {
                self.counters.refuse_connection(refused.why);
                if refused.report {
                    warn!(module = LOG_MODULE, peer = %addr, source = %Source::of(addr.ip()), limit = refused.why.as_str(), "inbound connection refused by a per-source limit (further refusals of this source are counted, and logged once a minute)");
                }
                None
            }
        }
    }
}

/// What an admitted connection holds until it closes: a global slot, and an unauthenticated
/// slot of its source until it authenticates. Both are given back when dropped, on every path.
pub(crate) struct Admitted {
    _slot: OwnedSemaphorePermit,
    pub(crate) source: Option<SourceSlot>,
}

/// An unauthenticated slot of a source, given back when dropped.
pub(crate) struct SourceSlot {
    s2s: Arc<S2s>,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut a) = self.s2s.admission.lock() {
            a.release(self.source);
        }
    }
}
