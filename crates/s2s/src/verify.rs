//! Dialback verification as receiving server (XEP-0220 section 2.3): ask the originating
//! domain's authoritative server whether a key it sent us is genuine.

use std::sync::atomic::Ordering;

use causeway_xmpp::{dialback, ns};

use crate::outbound::next_element;
use crate::S2s;

/// The authoritative server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is genuine: `remote` really sent it.
    Valid,
    /// The key is not genuine.
    Invalid,
    /// No answer could be had (connection, TLS, timeout, dialback error).
    Failed(String),
}

impl S2s {
    /// Verify `key`, received on our stream `stream_id` from `remote` for `local`, by opening a
    /// connection to `remote`'s servers and sending `<db:verify/>`.
    pub async fn verify_key(
        &self,
        local: &str,
        remote: &str,
        stream_id: &str,
        key: &str,
    ) -> Verdict {
        let attempt = tokio::time::timeout(
            self.cfg().negotiation_timeout,
            self.verify_inner(local, remote, stream_id, key),
        )
        .await;
        let verdict = attempt.unwrap_or_else(|_| Verdict::Failed("verification timed out".into()));
        if verdict != Verdict::Valid {
            self.counters
                .dialback_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    async fn verify_inner(&self, local: &str, remote: &str, stream_id: &str, key: &str) -> Verdict {
        let mut conn = match self.open_stream(local, remote).await {
            Ok((conn, _, _)) => conn,
            Err(e) => return Verdict::Failed(e.reason),
        };
        let request = dialback::verify_request(local, remote, stream_id, key).to_xml(ns::SERVER);
        if let Err(e) = conn.send(request.as_bytes()).await {
            return Verdict::Failed(e.to_string());
        }
        let verdict = loop {
            let el = match next_element(&mut conn).await {
                Ok(el) => el,
                Err(e) => break Verdict::Failed(e.reason),
            };
            if !el.is("verify", ns::DIALBACK) || el.attr("id") != Some(stream_id) {
                continue;
            }
            break match el.attr("type") {
                Some("valid") => Verdict::Valid,
                Some("invalid") => Verdict::Invalid,
                other => Verdict::Failed(format!("db:verify answered with type={other:?}")),
            };
        };
        let _ = conn
            .send(causeway_xmpp::stream::STREAM_CLOSE.as_bytes())
            .await;
        conn.shutdown().await;
        verdict
    }
}
