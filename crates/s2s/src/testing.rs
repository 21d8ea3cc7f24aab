//! Test doubles for the engine's unit tests: a [`Host`] with fixed domains and routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use causeway_xmpp::StanzaCondition;

use crate::{
    BoxFuture, Direction, Host, InboundStanza, OutboundStanza, S2s, S2sConfig, Target, TlsMode,
};

/// Serves `domains`; every other domain is reached at its entry in `routes` (none: not found).
/// Keeps what it is given to deliver and to bounce.
#[derive(Default)]
pub(crate) struct TestHost {
    pub(crate) domains: Vec<String>,
    pub(crate) routes: Mutex<HashMap<String, Vec<Target>>>,
    pub(crate) delivered: Mutex<Vec<InboundStanza>>,
    pub(crate) bounced: Mutex<Vec<(OutboundStanza, StanzaCondition)>>,
}

impl TestHost {
    /// A host serving `domains`, with no routes yet.
    pub(crate) fn serving(domains: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Self::default()
        })
    }

    /// Reach `domain` at `targets`.
    pub(crate) fn route(&self, domain: &str, targets: Vec<Target>) {
        self.routes
            .lock()
            .expect("test routes")
            .insert(domain.to_owned(), targets);
    }
}

impl Host for TestHost {
    fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }
    fn peer_allowed(&self, _remote: &str, _direction: Direction) -> bool {
        true
    }
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, String>> {
        let found = self
            .routes
            .lock()
            .expect("test routes")
            .get(domain)
            .cloned();
        Box::pin(async move { found.ok_or_else(|| format!("no route to {domain}")) })
    }
    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, Result<(), StanzaCondition>> {
        self.delivered.lock().expect("test deliveries").push(stanza);
        Box::pin(async { Ok(()) })
    }
    fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) -> BoxFuture<'_, ()> {
        self.bounced
            .lock()
            .expect("test bounces")
            .push((stanza, condition));
        Box::pin(async {})
    }
}

/// A config without TLS (plain streams on loopback), adjusted by `adjust`.
pub(crate) fn config(secret: &str, adjust: impl FnOnce(&mut S2sConfig)) -> S2sConfig {
    let tls_client = causeway_pki::s2s_client_config_dialback().expect("test TLS client config");
    let mut cfg = S2sConfig::new(secret.to_owned(), None, tls_client);
    cfg.tls_mode = TlsMode::Disabled;
    adjust(&mut cfg);
    cfg
}

/// An engine serving local.test with no routes.
pub(crate) fn s2s(adjust: impl FnOnce(&mut S2sConfig)) -> Arc<S2s> {
    S2s::new(
        config("test-secret-local", adjust),
        TestHost::serving(&["local.test"]),
    )
}

/// An engine with `secret` for `host`, accepting plain streams on a loopback port.
pub(crate) async fn listening(secret: &str, host: Arc<TestHost>) -> (Arc<S2s>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s2s = S2s::new(config(secret, |_| {}), host);
    tokio::spawn(s2s.clone().serve(listener, std::future::pending()));
    (s2s, addr)
}
