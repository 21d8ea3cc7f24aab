//! `[limits]`: the edge's deadlines and connection limits, parsed and checked with the rest of
//! the config. Every setting has a default an internet-facing edge can run with; the README's
//! deadline table lists them.

use std::time::Duration;

use anyhow::bail;
use causeway_s2s::{AdmissionLimits, Deadlines, QueueLimits, RateLimit, S2sConfig, LOG_MODULE};
use serde::Deserialize;
use tracing::{info, warn};

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Seconds from accept (and from each stream restart) to the peer's stream header.
    pub stream_header_secs: u64,
    /// Seconds for a TLS handshake (STARTTLS or direct TLS) on federation connections.
    pub tls_handshake_secs: u64,
    /// Seconds from accept to an authenticated stream (and for a whole outgoing negotiation).
    pub authentication_secs: u64,
    /// Seconds a write may make no progress before the connection is closed (a peer that
    /// does not read).
    pub write_stall_secs: u64,
    /// Largest element accepted before a stream is authenticated, in bytes.
    pub preauth_stanza_bytes: usize,
    /// Inbound federation connections at once, over every listener.
    pub max_inbound: usize,
    /// Unauthenticated inbound connections one source (IPv4 address, IPv6 /64) may hold.
    pub unauthenticated_per_source: usize,
    /// New inbound connections per second one source may open, sustained...
    pub connections_per_sec_per_source: f64,
    /// ...and in a burst.
    pub connection_burst_per_source: u32,
    /// Authenticated inbound streams per remote domain.
    pub streams_per_domain: usize,
    /// Seconds for the tunnel's TLS handshake with a core.
    pub tunnel_handshake_secs: u64,
    /// Tunnel connections (cores, authenticated or not) at once.
    pub max_tunnel_connections: usize,
    /// Bytes per second one remote domain may send over its authenticated inbound streams
    /// (all of them together); beyond it they pause reading. 0: unlimited.
    pub inbound_bytes_per_sec_per_domain: u64,
    /// ...and in a burst.
    pub inbound_burst_bytes_per_domain: u64,
    /// Stanzas queued for one (local domain, remote domain) pair while its stream opens or
    /// is slow; beyond it stanzas bounce with `resource-constraint`.
    pub outbound_queue_stanzas: usize,
    /// Bytes queued for one pair, likewise.
    pub outbound_queue_bytes: usize,
    /// Bytes queued for every pair together.
    pub outbound_queue_total_bytes: usize,
    /// Seconds a stanza may wait in its pair's queue before it bounces with
    /// `remote-server-timeout`.
    pub outbound_queue_secs: u64,
}

/// Default inbound rate per remote domain: generous, since a big provider carries many users.
const DEFAULT_INBOUND_BYTES_PER_SEC: u64 = 1024 * 1024;
/// Default inbound burst per remote domain.
const DEFAULT_INBOUND_BURST_BYTES: u64 = 4 * 1024 * 1024;

impl Default for LimitsSection {
    fn default() -> Self {
        let d = Deadlines::default();
        let a = AdmissionLimits::default();
        let q = QueueLimits::default();
        Self {
            stream_header_secs: d.stream_header.as_secs(),
            tls_handshake_secs: d.tls_handshake.as_secs(),
            authentication_secs: d.authentication.as_secs(),
            write_stall_secs: d.write_stall.as_secs(),
            preauth_stanza_bytes: 8192,
            max_inbound: 10_000,
            unauthenticated_per_source: a.unauthenticated_per_source,
            connections_per_sec_per_source: a.connections_per_sec,
            connection_burst_per_source: a.connection_burst,
            streams_per_domain: a.streams_per_domain,
            tunnel_handshake_secs: 10,
            max_tunnel_connections: 64,
            inbound_bytes_per_sec_per_domain: DEFAULT_INBOUND_BYTES_PER_SEC,
            inbound_burst_bytes_per_domain: DEFAULT_INBOUND_BURST_BYTES,
            outbound_queue_stanzas: q.stanzas,
            outbound_queue_bytes: q.bytes,
            outbound_queue_total_bytes: q.total_bytes,
            outbound_queue_secs: q.max_age.as_secs(),
        }
    }
}

impl LimitsSection {
    /// Check every value; errors name the setting.
    pub fn validate(&self, max_stanza_bytes: usize) -> anyhow::Result<()> {
        for (key, secs) in [
            ("stream_header_secs", self.stream_header_secs),
            ("tls_handshake_secs", self.tls_handshake_secs),
            ("authentication_secs", self.authentication_secs),
            ("write_stall_secs", self.write_stall_secs),
            ("tunnel_handshake_secs", self.tunnel_handshake_secs),
            ("outbound_queue_secs", self.outbound_queue_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                bail!("limits.{key}: between 1 and 3600 seconds");
            }
        }
        if self.stream_header_secs > self.authentication_secs {
            bail!("limits.stream_header_secs: no longer than limits.authentication_secs");
        }
        if !(1024..=max_stanza_bytes).contains(&self.preauth_stanza_bytes) {
            bail!(
                "limits.preauth_stanza_bytes: between 1024 and federation.max_stanza_bytes ({max_stanza_bytes})"
            );
        }
        for (key, n) in [
            ("max_inbound", self.max_inbound),
            (
                "unauthenticated_per_source",
                self.unauthenticated_per_source,
            ),
            ("streams_per_domain", self.streams_per_domain),
            ("max_tunnel_connections", self.max_tunnel_connections),
            ("outbound_queue_stanzas", self.outbound_queue_stanzas),
        ] {
            if n == 0 {
                bail!("limits.{key}: at least 1");
            }
        }
        if self.max_inbound > 1_000_000 {
            bail!("limits.max_inbound: at most 1000000");
        }
        if !(self.connections_per_sec_per_source.is_finite()
            && self.connections_per_sec_per_source > 0.0)
        {
            bail!("limits.connections_per_sec_per_source: a positive number");
        }
        if self.connection_burst_per_source == 0 {
            bail!("limits.connection_burst_per_source: at least 1");
        }
        if self.inbound_bytes_per_sec_per_domain > 0 && self.inbound_burst_bytes_per_domain == 0 {
            bail!("limits.inbound_burst_bytes_per_domain: at least 1 (or set limits.inbound_bytes_per_sec_per_domain to 0 for no limit)");
        }
        if self.outbound_queue_bytes < max_stanza_bytes {
            bail!("limits.outbound_queue_bytes: at least federation.max_stanza_bytes ({max_stanza_bytes}), so the largest stanza fits");
        }
        if self.outbound_queue_total_bytes < self.outbound_queue_bytes {
            bail!("limits.outbound_queue_total_bytes: at least limits.outbound_queue_bytes");
        }
        Ok(())
    }

    /// Put the s2s part in force.
    pub fn apply(&self, s2s: &mut S2sConfig) {
        s2s.deadlines = Deadlines {
            stream_header: Duration::from_secs(self.stream_header_secs),
            tls_handshake: Duration::from_secs(self.tls_handshake_secs),
            authentication: Duration::from_secs(self.authentication_secs),
            write_stall: Duration::from_secs(self.write_stall_secs),
        };
        s2s.preauth_stanza_bytes = self.preauth_stanza_bytes;
        s2s.max_inbound = self.max_inbound;
        s2s.admission = AdmissionLimits {
            unauthenticated_per_source: self.unauthenticated_per_source,
            connections_per_sec: self.connections_per_sec_per_source,
            connection_burst: self.connection_burst_per_source,
            streams_per_domain: self.streams_per_domain,
        };
        s2s.inbound_rate = self.inbound_rate();
        s2s.queue = QueueLimits {
            stanzas: self.outbound_queue_stanzas,
            bytes: self.outbound_queue_bytes,
            total_bytes: self.outbound_queue_total_bytes,
            max_age: Duration::from_secs(self.outbound_queue_secs),
        };
    }

    /// The inbound rate per remote domain; None when `inbound_bytes_per_sec_per_domain` is 0.
    pub fn inbound_rate(&self) -> Option<RateLimit> {
        (self.inbound_bytes_per_sec_per_domain > 0).then_some(RateLimit {
            bytes_per_sec: self.inbound_bytes_per_sec_per_domain,
            burst_bytes: self.inbound_burst_bytes_per_domain,
        })
    }

    /// File descriptors the process may need at these limits: every inbound connection,
    /// outgoing sessions and dialback verifications (bounded by the same order), the tunnel,
    /// and some room for files, DNS and the admin socket.
    pub fn descriptors_needed(&self) -> u64 {
        let inbound = self.max_inbound as u64;
        inbound * 2 + self.max_tunnel_connections as u64 + 1024
    }

    /// Raise the soft file-descriptor limit to what these limits need (up to the hard
    /// limit), and say so when the hard limit is lower: the process otherwise keeps whatever
    /// limit it was started with (often 1024) and refuses connections long before
    /// `max_inbound`.
    pub fn raise_descriptor_limit(&self) {
        let need = self.descriptors_needed();
        match rlimit::increase_nofile_limit(need) {
            Ok(got) if got < need => {
                warn!(module = LOG_MODULE, need, got, "the file-descriptor limit is below what limits.max_inbound needs: raise the hard limit (LimitNOFILE= in the unit, ulimit -Hn) or lower limits.max_inbound");
            }
            Ok(got) => info!(module = LOG_MODULE, limit = got, "file-descriptor limit"),
            Err(e) => {
                warn!(module = LOG_MODULE, error = %e, "could not raise the file-descriptor limit")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_s2s_defaults() {
        let l = LimitsSection::default();
        l.validate(262_144).expect("defaults");
        let client = causeway_pki::s2s_client_config_dialback().expect("client config");
        let mut cfg = S2sConfig::new("s".into(), None, client);
        let before = (
            cfg.deadlines,
            cfg.admission,
            cfg.preauth_stanza_bytes,
            cfg.queue,
        );
        l.apply(&mut cfg);
        assert_eq!(
            before,
            (
                cfg.deadlines,
                cfg.admission,
                cfg.preauth_stanza_bytes,
                cfg.queue
            )
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(LimitsSection, &str)> = vec![
            (
                LimitsSection {
                    write_stall_secs: 0,
                    ..Default::default()
                },
                "limits.write_stall_secs",
            ),
            (
                LimitsSection {
                    stream_header_secs: 60,
                    ..Default::default()
                },
                "limits.stream_header_secs",
            ),
            (
                LimitsSection {
                    preauth_stanza_bytes: 300_000,
                    ..Default::default()
                },
                "limits.preauth_stanza_bytes",
            ),
            (
                LimitsSection {
                    unauthenticated_per_source: 0,
                    ..Default::default()
                },
                "limits.unauthenticated_per_source",
            ),
            (
                LimitsSection {
                    connections_per_sec_per_source: f64::NAN,
                    ..Default::default()
                },
                "limits.connections_per_sec_per_source",
            ),
            (
                LimitsSection {
                    inbound_burst_bytes_per_domain: 0,
                    ..Default::default()
                },
                "limits.inbound_burst_bytes_per_domain",
            ),
            (
                LimitsSection {
                    outbound_queue_bytes: 1000,
                    ..Default::default()
                },
                "limits.outbound_queue_bytes",
            ),
            (
                LimitsSection {
                    outbound_queue_total_bytes: 1 << 20,
                    ..Default::default()
                },
                "limits.outbound_queue_total_bytes",
            ),
            (
                LimitsSection {
                    outbound_queue_secs: 0,
                    ..Default::default()
                },
                "limits.outbound_queue_secs",
            ),
            (
                LimitsSection {
                    outbound_queue_stanzas: 0,
                    ..Default::default()
                },
                "limits.outbound_queue_stanzas",
            ),
        ];
        for (limits, key) in cases {
            let err = limits.validate(262_144).expect_err(key).to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn the_inbound_rate_is_generous_by_default_and_zero_turns_it_off() {
        let client = causeway_pki::s2s_client_config_dialback().expect("client config");
        let mut cfg = S2sConfig::new("s".into(), None, client);
        assert_eq!(cfg.inbound_rate, None, "core and tests: unlimited");
        LimitsSection::default().apply(&mut cfg);
        assert_eq!(
            cfg.inbound_rate,
            Some(RateLimit {
                bytes_per_sec: 1024 * 1024,
                burst_bytes: 4 * 1024 * 1024
            })
        );
        let off = LimitsSection {
            inbound_bytes_per_sec_per_domain: 0,
            inbound_burst_bytes_per_domain: 0,
            ..Default::default()
        };
        off.validate(262_144).expect("0 is valid");
        off.apply(&mut cfg);
        assert_eq!(cfg.inbound_rate, None);
    }
}
