//! A synthetic XMPP server built on our own s2s crate: it authenticates honestly as its domain
//! (answering dialback for it), sends whatever stanzas it is given to one address, answers
//! XEP-0199 pings addressed to its domain, and counts what else it receives. Tests use it as a
//! hostile peer; the benchmark as load generator and sink.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use anyhow::{Context, Result};
use bytes::Bytes;
use causeway_s2s::{
    BoxFuture, Direction, Host, InboundStanza, OutboundStanza, S2s, S2sConfig, Target,
};
use causeway_xmpp::StanzaCondition;

use crate::TempDir;

/// What a [`SyntheticServer`] saw.
#[derive(Default)]
pub struct Received {
    /// Stanzas delivered to it (pings it answered are not counted).
    pub count: AtomicU64,
    /// Kept payloads (only when `keep` was asked for).
    pub kept: Mutex<Vec<Bytes>>,
    /// Stanzas bounced back to it (could not be sent).
    pub bounced: AtomicU64,
    /// While set, deliveries wait (the inbound stream stops reading, as a busy server's).
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
}

impl Received {
    /// Waits while deliveries are paused.
    async fn unpaused(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.paused.load(Ordering::Acquire) {
                return;
            }
            resumed.await;
        }
    }
}

struct SyntheticHost {
    domain: String,
    route: SocketAddr,
    keep: bool,
    received: Arc<Received>,
    /// Its own s2s service, for answering pings (set right after it is made).
    s2s: OnceLock<Weak<S2s>>,
}

impl SyntheticHost {
    /// The answer to `payload` if it is a ping (`<iq type='get'><ping/></iq>`), as a real
    /// server's: a result from the pinged address to the pinger.
    fn pong(payload: &[u8]) -> Option<(String, String)> {
        use causeway_xmpp::{ns, Element};
        let iq = causeway_s2s::parse_stanza(payload)?;
        if iq.name != "iq" || iq.attr("type") != Some("get") || iq.child("ping", ns::PING).is_none()
        {
            return None;
        }
        let (from, to) = (iq.attr("from")?, iq.attr("to")?);
        let to_domain = causeway_xmpp::addr::jid_domain(from).ok()?;
        let mut reply = Element::new("iq", ns::SERVER)
            .with_attr("type", "result")
            .with_attr("from", to)
            .with_attr("to", from);
        if let Some(id) = iq.attr("id") {
            reply = reply.with_attr("id", id);
        }
        Some((to_domain, reply.to_xml(ns::SERVER)))
    }
}

impl Host for SyntheticHost {
    fn serves(&self, domain: &str) -> bool {
        domain == self.domain
    }
    fn peer_allowed(&self, _remote: &str, _direction: Direction) -> bool {
        true
    }
    fn resolve<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, String>> {
        let route = Target::configured(self.route);
        Box::pin(async move { Ok(vec![route]) })
    }
    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, Result<(), StanzaCondition>> {
        if let Some((to_domain, pong)) = Self::pong(&stanza.payload) {
            if let Some(s2s) = self.s2s.get().and_then(Weak::upgrade) {
                let from_domain = self.domain.clone();
                // In a task of its own: never wait for queue room on the inbound stream.
                tokio::spawn(async move {
                    s2s.send(OutboundStanza {
                        from_domain,
                        to_domain,
                        payload: Bytes::from(pong),
                    })
                    .await;
                });
            }
            return Box::pin(async { Ok(()) });
        }
        Box::pin(async move {
            self.received.unpaused().await;
            self.received.count.fetch_add(1, Ordering::Relaxed);
            if self.keep {
                if let Ok(mut kept) = self.received.kept.lock() {
                    kept.push(stanza.payload);
                }
            }
            Ok(())
        })
    }
    fn bounce(&self, _stanza: OutboundStanza, _condition: StanzaCondition) -> BoxFuture<'_, ()> {
        self.received.bounced.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {})
    }
}

/// A running synthetic server (inside the caller's tokio runtime).
pub struct SyntheticServer {
    /// Its s2s service.
    pub s2s: Arc<S2s>,
    /// Where it listens (for dialback verification and inbound stanzas).
    pub addr: SocketAddr,
    /// What it received.
    pub received: Arc<Received>,
    domain: String,
    _dir: TempDir,
}

impl SyntheticServer {
    /// Serve `domain` on `listen`; every domain it talks to is reached at `route`. Must be
    /// called inside a tokio runtime.
    pub async fn start(
        domain: &str,
        listen: SocketAddr,
        route: SocketAddr,
        keep: bool,
    ) -> Result<Self> {
        Self::start_with_cert(domain, listen, route, keep, None).await
    }

    /// Like [`SyntheticServer::start`], presenting `cert` (also when it initiates, so it tries
    /// SASL EXTERNAL where offered) instead of a self-signed certificate.
    pub async fn start_with_cert(
        domain: &str,
        listen: SocketAddr,
        route: SocketAddr,
        keep: bool,
        cert: Option<&crate::CertFiles>,
    ) -> Result<Self> {
        let dir = crate::temp_dir("synthetic-")?;
        let (c, k) = match cert {
            Some(files) => (files.cert_pem.clone(), files.key_pem.clone()),
            None => {
                let pair = causeway_pki::self_signed(&[domain], 30)?;
                let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&c, &pair.cert_pem)?;
                std::fs::write(&k, &pair.key_pem)?;
                (c, k)
            }
        };
        let (certs, key) = (causeway_pki::load_certs(&c)?, causeway_pki::load_key(&k)?);
        let tls_server = causeway_pki::s2s_server_config(certs.clone(), key.clone_key())?;
        let tls_client = causeway_pki::s2s_client_config_presenting(certs, key, false)?;
        let secret = format!("synthetic-secret-for-{domain}");
        let mut cfg = S2sConfig::new(secret, Some(tls_server), tls_client);
        cfg.presents_client_cert = cert.is_some();
        let received = Arc::new(Received::default());
        let host = Arc::new(SyntheticHost {
            domain: domain.to_owned(),
            route,
            keep,
            received: received.clone(),
            s2s: OnceLock::new(),
        });
        let s2s = S2s::new(cfg, host.clone());
        let _ = host.s2s.set(Arc::downgrade(&s2s));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("synthetic server {domain} binding {listen}"))?;
        let addr = listener.local_addr()?;
        tokio::spawn(s2s.clone().serve(listener, std::future::pending()));
        Ok(Self {
            s2s,
            addr,
            received,
            domain: domain.to_owned(),
            _dir: dir,
        })
    }

    /// Send a serialized stanza to `to_domain` as this server's domain. Awaits queue room
    /// (backpressure, as a real server's full socket would give), never bounces for it.
    pub async fn send(&self, to_domain: &str, xml: impl Into<Bytes>) {
        self.s2s
            .send_waiting(OutboundStanza {
                from_domain: self.domain.clone(),
                to_domain: to_domain.to_owned(),
                payload: xml.into(),
            })
            .await;
    }

    /// Stop taking stanzas (each delivery waits, so its stream stops being read) until
    /// [`SyntheticServer::resume`]: a server that is busy, not gone.
    pub fn pause(&self) {
        self.received.paused.store(true, Ordering::Release);
    }

    /// Take stanzas again after [`SyntheticServer::pause`].
    pub fn resume(&self) {
        self.received.paused.store(false, Ordering::Release);
        self.received.resumed.notify_waiters();
    }

    /// Stanzas bounced back to it so far.
    pub fn bounced(&self) -> u64 {
        self.received.bounced.load(Ordering::Relaxed)
    }

    /// Stanzas received so far.
    pub fn count(&self) -> u64 {
        self.received.count.load(Ordering::Relaxed)
    }
}
