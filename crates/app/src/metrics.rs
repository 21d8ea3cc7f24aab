//! Prometheus metrics: the `[metrics]` config section (the listener that also serves
//! `/healthz` and `/readyz`, crates/http), what both daemons count, and a writer for the text
//! exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]` (both binaries): the HTTP listener of `/metrics`, `/healthz` and `/readyz`.
/// Absent: no listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to listen; default loopback, port 9464 (edge) or 9465 (core). Anything else
    /// than loopback makes `check` warn: the endpoints have no authentication.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl MetricsSection {
    /// The address to listen on: `listen`, or loopback with `default_port`.
    pub fn listen_or(&self, default_port: u16) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }

    /// Bind the listener (`listen`, or loopback with `default_port`) and serve `routes` on it
    /// (crates/http); logs and returns the bound address.
    pub async fn serve(
        &self,
        default_port: u16,
        routes: causeway_http::Routes,
    ) -> anyhow::Result<SocketAddr> {
        let listener = causeway_http::server::bind(self.listen_or(default_port)).await?;
        let addr = listener.local_addr()?;
        causeway_http::server::spawn(listener, std::sync::Arc::new(routes), Default::default());
        tracing::info!(listen = %addr, "http: serving /metrics, /healthz and /readyz on http://{addr}");
        Ok(addr)
    }

    /// The warnings of `check` about an optional `[metrics]` section.
    pub fn warnings(section: Option<&Self>, default_port: u16) -> Vec<String> {
        section
            .and_then(|m| m.warning(default_port))
            .into_iter()
            .collect()
    }

    /// A warning when the listener is bound beyond loopback.
    pub fn warning(&self, default_port: u16) -> Option<String> {
        let addr = self.listen_or(default_port);
        (!addr.ip().is_loopback()).then(|| {
            format!("metrics.listen {addr} is not a loopback address: /metrics, /healthz and /readyz have no authentication, so only a management network should reach it")
        })
    }
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A Prometheus text exposition (format 0.0.4) being written: a family's `# HELP` and `# TYPE`
/// lines, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) -> &mut Self {
        self.family(name, help, kind).sample(name, &[], value)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Integers without a fraction; `NaN`, `+Inf`, `-Inf` as Prometheus spells them.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A u64 counter as a sample value (exact up to 2^53).
pub fn value(v: u64) -> f64 {
    v as f64
}

/// s2s sessions by direction and state, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Peer-initiated sessions with at least one authenticated domain pair.
    pub incoming_authenticated: u64,
    /// Peer-initiated sessions still negotiating (TLS, dialback, SASL).
    pub incoming_negotiating: u64,
    /// Sessions we initiated, authenticated.
    pub outgoing_authenticated: u64,
    /// Sessions we initiated, connected and still negotiating.
    pub outgoing_negotiating: u64,
}

impl SessionCounts {
    /// Count one session.
    pub fn add(&mut self, outgoing: bool, authenticated: bool) {
        let slot = match (outgoing, authenticated) {
            (false, true) => &mut self.incoming_authenticated,
            (false, false) => &mut self.incoming_negotiating,
            (true, true) => &mut self.outgoing_authenticated,
            (true, false) => &mut self.outgoing_negotiating,
        };
        *slot += 1;
    }
}

/// One tunnel peer (a core on the edge; the edge on a core).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelPeer {
    /// core_id on the edge, the edge's name on a core.
    pub peer: String,
    /// A session with it is established.
    pub connected: bool,
    /// Stanzas sent to it and not yet acknowledged (replayed after a reconnect).
    pub unacked: u64,
    /// Sessions established after the first one.
    pub reconnects: u64,
}

/// Everything a daemon exposes, read from its s2s service and tunnel at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Live s2s sessions.
    pub sessions: SessionCounts,
    /// Outgoing (local, remote) domain pairs with a session open or opening.
    pub outgoing_routes: u64,
    /// Stanzas accepted from s2s peers.
    pub stanzas_in: u64,
    /// Stanzas written to s2s peers.
    pub stanzas_out: u64,
    /// Stanzas refused (spoofed, unroutable, refused by policy).
    pub stanzas_refused: u64,
    /// Refused stanzas by reason label.
    pub refused_by: Vec<(&'static str, u64)>,
    /// Stanzas bounced to their sender with a stanza error.
    pub stanzas_bounced: u64,
    /// Of those, bounced by the outgoing queues: (queue full, waited too long).
    pub bounced_by_queue: (u64, u64),
    /// Bytes queued for remote servers now, over every outgoing pair.
    pub queued_bytes: u64,
    /// Stanzas held back until their pair's queue has room (core).
    pub held_for_room: u64,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: u64,
    /// Dialback verifications that failed or said invalid.
    pub dialback_failures: u64,
    /// Dialback verifications refused without network traffic: too many were running.
    pub verifications_refused: u64,
    /// Inbound connections refused at accept (or at authentication), by limit.
    pub connections_refused: Vec<(&'static str, u64)>,
    /// Connections closed because a phase deadline passed.
    pub deadline_closes: u64,
    /// Tunnel peers.
    pub tunnels: Vec<TunnelPeer>,
    /// DNS lookups for remote servers (the edge only).
    pub dns_lookups: Option<u64>,
    /// Addresses from DNS the outbound address filter refused (the edge only).
    pub outbound_addresses_refused: Option<u64>,
    /// Pauses of authenticated inbound streams over their domain's inbound rate, and the
    /// seconds they lasted (summed over streams) (the edge only).
    pub inbound_throttled: Option<(u64, f64)>,
}

impl Snapshot {
    /// Read a daemon's numbers now: its s2s service, its tunnel links' stats, and (edge only)
    /// its DNS lookup count.
    pub fn read(
        s2s: &causeway_s2s::S2s,
        tunnel: causeway_tunnel::TunnelStats,
        dns_lookups: Option<u64>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let mut sessions = SessionCounts::default();
        for s in s2s.sessions() {
            sessions.add(
                s.direction == causeway_s2s::Direction::Outbound,
                !s.pairs.is_empty(),
            );
        }
        let c = &s2s.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            sessions,
            outgoing_routes: s2s.outgoing_count() as u64,
            stanzas_in: load(&c.stanzas_in),
            stanzas_out: load(&c.stanzas_out),
            stanzas_refused: load(&c.stanzas_refused),
            refused_by: c.refused_by_reason(),
            stanzas_bounced: load(&c.stanzas_bounced),
            bounced_by_queue: (load(&c.bounced_queue_full), load(&c.bounced_queue_expired)),
            queued_bytes: s2s.queued_bytes() as u64,
            held_for_room: load(&c.held_for_room),
            tls_handshake_failures: load(&c.tls_failures),
            dialback_failures: load(&c.dialback_failures),
            verifications_refused: load(&c.verifications_refused),
            connections_refused: c.connections_refused_by_reason(),
            deadline_closes: load(&c.deadline_closes),
            tunnels: tunnel
                .links
                .into_iter()
                .map(|(peer, l)| TunnelPeer {
                    peer,
                    connected: l.connected,
                    unacked: l.unacked as u64,
                    reconnects: l.reconnects,
                })
                .collect(),
            dns_lookups,
            outbound_addresses_refused: None,
            inbound_throttled: None,
        }
    }

    /// The Prometheus text of this snapshot (`causeway_*` families, HELP and TYPE for each).
    pub fn render(&self) -> String {
        use Kind::{Counter, Gauge};
        let mut e = Exposition::new();
        e.single("causeway_up", "1 while the daemon runs.", Gauge, 1.0);
        let n = "causeway_s2s_sessions";
        e.family(n, "Live s2s sessions by direction and state.", Gauge);
        let s = &self.sessions;
        for (direction, state, v) in [
            ("incoming", "authenticated", s.incoming_authenticated),
            ("incoming", "negotiating", s.incoming_negotiating),
            ("outgoing", "authenticated", s.outgoing_authenticated),
            ("outgoing", "negotiating", s.outgoing_negotiating),
        ] {
            e.sample(n, &[("direction", direction), ("state", state)], value(v));
        }
        e.single(
            "causeway_s2s_outgoing_routes",
            "Outgoing (local, remote) domain pairs with an s2s session open or opening.",
            Gauge,
            value(self.outgoing_routes),
        );
        let n = "causeway_stanzas_total";
        e.family(
            n,
            "Stanzas received from (in) and written to (out) s2s peers.",
            Counter,
        )
        .sample(n, &[("direction", "in")], value(self.stanzas_in))
        .sample(n, &[("direction", "out")], value(self.stanzas_out));
        e.single(
            "causeway_stanzas_refused_total",
            "Stanzas refused: spoofed, unroutable or refused by the privacy policy.",
            Counter,
            value(self.stanzas_refused),
        );
        let n = "causeway_stanzas_refused_by_reason_total";
        e.family(n, "Stanzas refused, by reason.", Counter);
        for (reason, count) in &self.refused_by {
            e.sample(n, &[("reason", reason)], value(*count));
        }
        e.single(
            "causeway_stanzas_bounced_total",
            "Stanzas returned to their sender with a stanza error.",
            Counter,
            value(self.stanzas_bounced),
        );
        e.single(
            "causeway_tls_handshake_failures_total",
            "s2s TLS handshakes that failed.",
            Counter,
            value(self.tls_handshake_failures),
        );
        e.single(
            "causeway_dialback_failures_total",
            "Dialback verifications that failed or said invalid.",
            Counter,
            value(self.dialback_failures),
        );
        e.single(
            "causeway_dialback_verifications_refused_total",
            "Dialback verifications refused without network traffic: too many were running.",
            Counter,
            value(self.verifications_refused),
        );
        let n = "causeway_connections_refused_total";
        e.family(
            n,
            "Inbound s2s connections refused by a limit (README: deadlines and limits).",
            Counter,
        );
        for (reason, count) in &self.connections_refused {
            e.sample(n, &[("reason", reason)], value(*count));
        }
        let n = "causeway_stanzas_bounced_by_queue_total";
        e.family(
            n,
            "Stanzas bounced by an outgoing pair's queue: full (resource-constraint) or waited past limits.outbound_queue_secs (remote-server-timeout).",
            Counter,
        );
        let (full, expired) = self.bounced_by_queue;
        e.sample(n, &[("reason", "full")], value(full));
        e.sample(n, &[("reason", "expired")], value(expired));
        e.single(
            "causeway_outbound_queued_bytes",
            "Bytes queued for remote servers, over every outgoing (local, remote) pair.",
            Gauge,
            value(self.queued_bytes),
        );
        e.single(
            "causeway_outbound_held_for_room",
            "Stanzas held back, unacknowledged on the tunnel, until their pair's queue has room (core: the node reads slower than the partner writes).",
            Gauge,
            value(self.held_for_room),
        );
        e.single(
            "causeway_deadline_closes_total",
            "s2s connections closed because a negotiation deadline passed.",
            Counter,
            value(self.deadline_closes),
        );
        let peers =
            |e: &mut Exposition, name: &str, help: &str, kind, f: &dyn Fn(&TunnelPeer) -> f64| {
                e.family(name, help, kind);
                for t in &self.tunnels {
                    e.sample(name, &[("peer", &t.peer)], f(t));
                }
            };
        peers(
            &mut e,
            "causeway_tunnel_connected",
            "1 while the traversal tunnel to this peer is established.",
            Gauge,
            &|t| if t.connected { 1.0 } else { 0.0 },
        );
        peers(
            &mut e,
            "causeway_tunnel_reconnects_total",
            "Tunnel sessions with this peer established after the first one.",
            Counter,
            &|t| value(t.reconnects),
        );
        peers(
            &mut e,
            "causeway_tunnel_replay_depth",
            "Stanzas sent to this peer and not yet acknowledged (replayed after a reconnect).",
            Gauge,
            &|t| value(t.unacked),
        );
        if let Some(n) = self.dns_lookups {
            e.single(
                "causeway_dns_lookups_total",
                "DNS lookups (SRV, then addresses) for remote servers.",
                Counter,
                value(n),
            );
        }
        if let Some(n) = self.outbound_addresses_refused {
            e.single(
                "causeway_outbound_addresses_refused_total",
                "Addresses from DNS the outbound address filter refused to connect to.",
                Counter,
                value(n),
            );
        }
        if let Some((pauses, seconds)) = self.inbound_throttled {
            e.single(
                "causeway_inbound_throttled_total",
                "Times an authenticated inbound s2s stream paused reading: its remote domain was over limits.inbound_bytes_per_sec_per_domain.",
                Counter,
                value(pauses),
            );
            e.single(
                "causeway_inbound_throttled_seconds_total",
                "Seconds inbound s2s streams spent paused by the per-domain inbound rate (summed over streams).",
                Counter,
                seconds,
            );
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_text() {
        let mut e = Exposition::new();
        e.family("x_total", "Things.\nMore", Kind::Counter)
            .sample("x_total", &[("a", "b\"c\\d"), ("e", "f")], 3.0)
            .sample("x_total", &[], 0.5);
        e.single("up", "Up.", Kind::Gauge, 1.0);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{a=\"b\\\"c\\\\d\",e=\"f\"} 3\nx_total 0.5\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1e20), "100000000000000000000");
    }

    #[test]
    fn the_listener_defaults_to_loopback_and_warns_beyond_it() {
        let default = MetricsSection::default();
        assert_eq!(default.listen_or(9464).to_string(), "127.0.0.1:9464");
        assert_eq!(default.warning(9464), None);
        let v6 = MetricsSection {
            listen: Some("[::1]:9000".parse().expect("addr")),
        };
        assert_eq!(v6.warning(9464), None);
        let wide = MetricsSection {
            listen: Some("0.0.0.0:9464".parse().expect("addr")),
        };
        let w = wide.warning(9464).unwrap_or_default();
        assert!(
            w.starts_with("metrics.listen 0.0.0.0:9464 is not a loopback"),
            "{w}"
        );
    }
}
