//! causeway-dns: XMPP server-to-server target resolution.
//!
//! [`Resolver`] wraps a hickory resolver and implements the connection
//! target selection of RFC 6120 section 3.2 with the SRV ordering rules of
//! RFC 2782, plus XEP-0368 direct-TLS (`_xmpps-server._tcp`) lookups.
//!
//! * [`Resolver::resolve_xmpp_server`]: SRV `_xmpp-server._tcp.<domain>`,
//!   ordered by [`order_srv`], each target's addresses resolved; when the
//!   domain has no such SRV records, the domain itself on port 5269.
//! * [`Resolver::resolve_xmpps_server`]: SRV `_xmpps-server._tcp.<domain>`
//!   only, no fallback.
//! * [`Resolver::lookup_ip`]: A/AAAA of a host (IP literals returned as is).
//!
//! Outcomes for a domain:
//!
//! | DNS data                                   | `resolve_xmpp_server`        | `resolve_xmpps_server` |
//! |--------------------------------------------|------------------------------|------------------------|
//! | SRV records                                | ordered targets              | ordered targets        |
//! | a single SRV record with target `.`        | `Ok(vec![])` (not available) | `Ok(vec![])`           |
//! | no SRV (NODATA), domain has A/AAAA         | `[domain:5269]`              | `Ok(vec![])`           |
//! | domain does not exist (NXDOMAIN)           | `Err(DnsError::Lookup)`      | `Ok(vec![])`           |
//! | SRV targets that all fail to resolve       | `Err(DnsError::Lookup)`      | `Err(DnsError::Lookup)`|
//! | time-out / server failure                  | `Err(DnsError::Lookup)`      | `Err(DnsError::Lookup)`|

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use rand::Rng;

/// Default XMPP server-to-server port (RFC 6120), used by the A/AAAA fallback.
pub const XMPP_SERVER_PORT: u16 = 5269;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A lookup failed (including "no such domain" and "no address").
    #[error("DNS lookup for {name} failed: {msg}")]
    Lookup {
        /// The name that was looked up.
        name: String,
        /// What went wrong.
        msg: String,
    },
}

fn lookup_err(name: impl Into<String>, msg: impl std::fmt::Display) -> DnsError {
    DnsError::Lookup {
        name: name.into(),
        msg: msg.to_string(),
    }
}

/// One place to connect to: a host name (the SRV target, or the domain itself
/// for the fallback), a port, and the host's addresses in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name without trailing dot (or the IP literal text).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Addresses of `host`, never empty in results of this crate.
    pub addrs: Vec<IpAddr>,
}

impl Target {
    /// The socket addresses of this target, in order.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }
}

/// An SRV record, as input to [`order_srv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative weight among records of the same priority.
    pub weight: u16,
    /// TCP port.
    pub port: u16,
    /// Target host, without trailing dot; `"."` or `""` for "not available".
    pub target: String,
}

/// Order SRV records for connection attempts (RFC 2782): ascending priority;
/// within one priority, a weighted random order where each remaining record
/// is picked next with probability proportional to its weight. Records of
/// weight 0 are placed first in the running sum, so they have a very small
/// chance of being picked before heavier records, as RFC 2782 prescribes;
/// when every remaining record weighs 0 the pick is uniform.
pub fn order_srv<R: Rng + ?Sized>(mut records: Vec<SrvRecord>, rng: &mut R) -> Vec<SrvRecord> {
    // Stable sort: zero weights before others inside each priority.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let prio = first.priority;
        let mut group = vec![first];
        while let Some(r) = rest.next_if(|r| r.priority == prio) {
            group.push(r);
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let idx = if total == 0 {
                rng.random_range(0..group.len())
            } else {
                let pick = rng.random_range(0..=total);
                let mut running = 0u32;
                group
                    .iter()
                    .position(|r| {
                        running += u32::from(r.weight);
                        running >= pick
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(idx));
        }
    }
    out
}

/// Is this SRV target the root, meaning "service decidedly not available"?
fn is_root_target(target: &str) -> bool {
    target.is_empty() || target == "."
}

/// Construction options for [`Resolver::with_options`].
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// `None`: the system configuration (`/etc/resolv.conf`, and `/etc/hosts`
    /// for [`Resolver::lookup_ip`]). `Some(list)`: only these servers, over
    /// UDP with TCP for truncated answers; the hosts file is not consulted.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per-query time-out.
    pub timeout: Duration,
    /// Attempts per query.
    pub attempts: usize,
    /// Keep hickory's answer cache (positive and negative).
    pub cache: bool,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            nameservers: None,
            timeout: Duration::from_secs(2),
            attempts: 2,
            cache: true,
        }
    }
}

/// An XMPP-aware DNS resolver. Cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.inner.config().name_servers())
            .finish()
    }
}

/// Normalize a domain for lookups: trim, strip one trailing dot, lowercase.
fn normalize(domain: &str) -> Result<String, DnsError> {
    let d = domain.trim();
    let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
    if d.is_empty() || d.starts_with('.') || d.contains("..") || d.contains(char::is_whitespace) {
        return Err(lookup_err(domain, "invalid domain name"));
    }
    Ok(d)
}

/// Parse an IP literal, accepting `[v6]` brackets.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// Outcome of an SRV query.
enum SrvAnswer {
    /// The name has no SRV records (NXDOMAIN or NODATA).
    NoRecords,
    /// The records, as returned.
    Records(Vec<SrvRecord>),
}

impl Resolver {
    /// A resolver with short time-outs (2 s, 2 attempts) and hickory's cache.
    ///
    /// `nameservers`: `None` = system `resolv.conf`; `Some(list)` = only
    /// those servers (`ip:port`, UDP and TCP), e.g. a test dnsmasq on
    /// `127.0.0.53:5353`.
    pub fn new(nameservers: Option<Vec<SocketAddr>>) -> Result<Self, DnsError> {
        Self::with_options(ResolverOptions {
            nameservers,
            ..ResolverOptions::default()
        })
    }

    /// Like [`Resolver::new`] but without answer cache (for tests that
    /// change DNS data between queries).
    pub fn new_uncached(nameservers: Option<Vec<SocketAddr>>) -> Result<Self, DnsError> {
        Self::with_options(ResolverOptions {
            nameservers,
            cache: false,
            ..ResolverOptions::default()
        })
    }

    /// A resolver with explicit options.
    pub fn with_options(options: ResolverOptions) -> Result<Self, DnsError> {
        let (config, mut opts) = match &options.nameservers {
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| lookup_err("<system configuration>", e))?,
            Some(list) => {
                if list.is_empty() {
                    return Err(lookup_err("<configuration>", "empty name server list"));
                }
                let mut config = ResolverConfig::new();
                for addr in list {
                    config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                    config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
                }
                let mut opts = ResolverOpts::default();
                opts.use_hosts_file = ResolveHosts::Never;
                (config, opts)
            }
        };
        // Both families: a target may be reachable over only one of them.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = options.timeout;
        opts.attempts = options.attempts.max(1);
        if !options.cache {
            opts.cache_size = 0;
            opts.positive_max_ttl = Some(Duration::ZERO);
            opts.negative_max_ttl = Some(Duration::ZERO);
        }
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Ok(Resolver { inner })
    }

    /// XMPP s2s targets for `domain` (RFC 6120 3.2, RFC 2782).
    ///
    /// SRV `_xmpp-server._tcp.<domain>`, ordered by [`order_srv`]; each
    /// target's A/AAAA resolved (IP-literal targets used directly; targets
    /// that fail to resolve are skipped with a warning, and it is an error
    /// if none resolves). A single SRV record with target `.` means the
    /// service is decidedly not available: `Ok(vec![])`. Without SRV records
    /// (NXDOMAIN or NODATA) the A/AAAA records of the domain itself are used
    /// on port 5269; a domain that does not exist at all is therefore an
    /// error. An IP-literal domain yields that address on port 5269.
    pub async fn resolve_xmpp_server(&self, domain: &str) -> Result<Vec<Target>, DnsError> {
        if let Some(ip) = ip_literal(domain) {
            return Ok(vec![Target {
                host: ip.to_string(),
                port: XMPP_SERVER_PORT,
                addrs: vec![ip],
            }]);
        }
        let domain = normalize(domain)?;
        match self.srv("_xmpp-server._tcp", &domain).await? {
            SrvAnswer::Records(records) => self.resolve_srv_targets(&domain, records).await,
            SrvAnswer::NoRecords => {
                tracing::debug!(%domain, "no _xmpp-server SRV records, falling back to A/AAAA");
                let addrs = self.lookup_ip(&domain).await?;
                Ok(vec![Target {
                    host: domain,
                    port: XMPP_SERVER_PORT,
                    addrs,
                }])
            }
        }
    }

    /// XEP-0368 direct-TLS targets: SRV `_xmpps-server._tcp.<domain>` only.
    /// No SRV records (NXDOMAIN or NODATA), or a single `.` target:
    /// `Ok(vec![])`. Otherwise as [`Resolver::resolve_xmpp_server`].
    pub async fn resolve_xmpps_server(&self, domain: &str) -> Result<Vec<Target>, DnsError> {
        if ip_literal(domain).is_some() {
            return Ok(Vec::new());
        }
        let domain = normalize(domain)?;
        match self.srv("_xmpps-server._tcp", &domain).await? {
            SrvAnswer::Records(records) => self.resolve_srv_targets(&domain, records).await,
            SrvAnswer::NoRecords => Ok(Vec::new()),
        }
    }

    /// The SRV records of `<service>.<domain>`, ordered by [`order_srv`]
    /// (not resolved to addresses). Empty when there are none.
    pub async fn lookup_srv(
        &self,
        service: &str,
        domain: &str,
    ) -> Result<Vec<SrvRecord>, DnsError> {
        let domain = normalize(domain)?;
        match self.srv(service, &domain).await? {
            SrvAnswer::NoRecords => Ok(Vec::new()),
            SrvAnswer::Records(r) => Ok(order_srv(r, &mut rand::rng())),
        }
    }

    /// A and AAAA addresses of `host` (IPv4 first). An IP literal (also in
    /// `[v6]` form) is returned as is without a query. No address is an
    /// error.
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![ip]);
        }
        let name = normalize(host)?;
        // Fully qualified when it has a dot, so no search domain is appended;
        // single labels go through the configured search list.
        let query = if name.contains('.') {
            format!("{name}.")
        } else {
            name.clone()
        };
        let lookup = self
            .inner
            .lookup_ip(query.as_str())
            .await
            .map_err(|e| describe(&name, e))?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        if addrs.is_empty() {
            return Err(lookup_err(name, "no A/AAAA records"));
        }
        // Deterministic order: IPv4 first, each family in answer order.
        addrs.sort_by_key(|ip| ip.is_ipv6());
        Ok(addrs)
    }

    async fn srv(&self, service: &str, domain: &str) -> Result<SrvAnswer, DnsError> {
        let name = format!("{service}.{domain}.");
        match self.inner.srv_lookup(name.as_str()).await {
            Ok(lookup) => {
                let records: Vec<SrvRecord> = lookup
                    .iter()
                    .map(|srv| {
                        let t = srv.target().to_utf8();
                        let t = if t == "." {
                            t
                        } else {
                            t.trim_end_matches('.').to_ascii_lowercase()
                        };
                        SrvRecord {
                            priority: srv.priority(),
                            weight: srv.weight(),
                            port: srv.port(),
                            target: t,
                        }
                    })
                    .collect();
                if records.is_empty() {
                    Ok(SrvAnswer::NoRecords)
                } else {
                    Ok(SrvAnswer::Records(records))
                }
            }
            Err(e) if e.is_no_records_found() => Ok(SrvAnswer::NoRecords),
            Err(e) => Err(describe(name.trim_end_matches('.'), e)),
        }
    }

    async fn resolve_srv_targets(
        &self,
        domain: &str,
        records: Vec<SrvRecord>,
    ) -> Result<Vec<Target>, DnsError> {
        if records.len() == 1 && is_root_target(&records[0].target) {
            tracing::debug!(%domain, "SRV target '.': service not available");
            return Ok(Vec::new());
        }
        let ordered: Vec<SrvRecord> = order_srv(records, &mut rand::rng())
            .into_iter()
            .filter(|r| !is_root_target(&r.target))
            .collect();
        let lookups = ordered.iter().map(|r| self.lookup_ip(&r.target));
        let results = futures::future::join_all(lookups).await;
        let mut targets = Vec::with_capacity(ordered.len());
        let mut failures = Vec::new();
        for (record, result) in ordered.into_iter().zip(results) {
            match result {
                Ok(addrs) => targets.push(Target {
                    host: record.target,
                    port: record.port,
                    addrs,
                }),
                Err(e) => {
                    tracing::warn!(%domain, target = %record.target, error = %e, "SRV target does not resolve, skipped");
                    failures.push(e.to_string());
                }
            }
        }
        if targets.is_empty() {
            return Err(lookup_err(
                domain,
                format!("no SRV target resolved: {}", failures.join("; ")),
            ));
        }
        Ok(targets)
    }
}

/// A readable message for a hickory error.
fn describe(name: &str, e: ResolveError) -> DnsError {
    let msg = if e.is_nx_domain() {
        "no such domain (NXDOMAIN)".to_string()
    } else if e.is_no_records_found() {
        "no records of the requested type".to_string()
    } else {
        e.to_string()
    };
    lookup_err(name, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5269,
            target: target.to_string(),
        }
    }

    fn targets(v: &[SrvRecord]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn priorities_ascending() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let out = order_srv(
                vec![
                    rec(20, 100, "c"),
                    rec(10, 1, "a1"),
                    rec(30, 0, "d"),
                    rec(10, 50, "a2"),
                    rec(15, 5, "b"),
                ],
                &mut rng,
            );
            let prios: Vec<u16> = out.iter().map(|r| r.priority).collect();
            assert_eq!(prios, [10, 10, 15, 20, 30]);
            let mut first_two = targets(&out[..2]);
            first_two.sort_unstable();
            assert_eq!(first_two, ["a1", "a2"]);
        }
    }

    #[test]
    fn keeps_every_record_once() {
        let mut rng = StdRng::seed_from_u64(2);
        let input = vec![
            rec(0, 0, "z1"),
            rec(0, 0, "z2"),
            rec(0, 10, "w"),
            rec(1, 0, "x"),
            rec(1, 65535, "y"),
        ];
        for _ in 0..100 {
            let out = order_srv(input.clone(), &mut rng);
            assert_eq!(out.len(), input.len());
            for r in &input {
                assert_eq!(out.iter().filter(|o| *o == r).count(), 1);
            }
        }
        assert!(order_srv(Vec::new(), &mut rng).is_empty());
    }

    #[test]
    fn higher_weight_first_more_often() {
        let mut rng = StdRng::seed_from_u64(3);
        let trials = 10_000;
        let mut heavy_first = 0;
        for _ in 0..trials {
            let out = order_srv(vec![rec(5, 10, "light"), rec(5, 90, "heavy")], &mut rng);
            if out[0].target == "heavy" {
                heavy_first += 1;
            }
        }
        // Expected ~ 90/101 (the pick range includes 0): about 8900.
        assert!(
            (8_400..=9_400).contains(&heavy_first),
            "heavy first {heavy_first} of {trials}"
        );
    }

    #[test]
    fn zero_weight_rarely_first_but_allowed() {
        let mut rng = StdRng::seed_from_u64(4);
        let trials = 10_000;
        let mut zero_first = 0;
        for _ in 0..trials {
            let out = order_srv(vec![rec(1, 100, "w"), rec(1, 0, "zero")], &mut rng);
            assert_eq!(out.len(), 2);
            if out[0].target == "zero" {
                zero_first += 1;
            }
        }
        // Probability 1/101: about 99.
        assert!(zero_first > 0, "zero-weight never first");
        assert!(zero_first < 300, "zero-weight first {zero_first} times");
    }

    #[test]
    fn all_zero_weights_are_uniform() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut counts = [0u32; 3];
        for _ in 0..9_000 {
            let out = order_srv(
                vec![rec(1, 0, "0"), rec(1, 0, "1"), rec(1, 0, "2")],
                &mut rng,
            );
            let i: usize = out[0].target.parse().expect("index");
            counts[i] += 1;
        }
        for c in counts {
            assert!((2_600..=3_400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn root_target_detection() {
        assert!(is_root_target("."));
        assert!(is_root_target(""));
        assert!(!is_root_target("xmpp.example.com"));
    }

    #[test]
    fn normalization_and_literals() {
        assert_eq!(normalize(" Example.COM. ").expect("ok"), "example.com");
        assert!(normalize("").is_err());
        assert!(normalize(".").is_err());
        assert!(normalize("a..b").is_err());
        assert!(normalize("a b.test").is_err());
        assert_eq!(ip_literal("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().expect("v6")));
        assert_eq!(ip_literal("::1"), Some("::1".parse().expect("v6")));
        assert_eq!(ip_literal("example.com"), None);
    }

    #[test]
    fn target_socket_addrs() {
        let t = Target {
            host: "h".into(),
            port: 5270,
            addrs: vec![IpAddr::from([127, 0, 0, 2]), "::1".parse().expect("v6")],
        };
        assert_eq!(
            t.socket_addrs(),
            [
                "127.0.0.2:5270".parse::<SocketAddr>().expect("v4"),
                "[::1]:5270".parse().expect("v6")
            ]
        );
    }

    #[tokio::test]
    async fn literals_need_no_dns() {
        // A resolver pointed at a closed loopback port: any real query would fail.
        let r = Resolver::with_options(ResolverOptions {
            nameservers: Some(vec!["127.0.0.1:9".parse().expect("addr")]),
            timeout: Duration::from_millis(200),
            attempts: 1,
            cache: false,
        })
        .expect("resolver");
        assert_eq!(
            r.lookup_ip("127.0.0.9").await.expect("literal"),
            [IpAddr::from([127, 0, 0, 9])]
        );
        let t = r.resolve_xmpp_server("127.0.0.9").await.expect("literal");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].port, XMPP_SERVER_PORT);
        assert!(r
            .resolve_xmpps_server("[::1]")
            .await
            .expect("literal")
            .is_empty());
        assert!(r.lookup_ip("").await.is_err());
        // And a real query does fail, as an error, not a panic.
        assert!(r.resolve_xmpp_server("partner.test").await.is_err());
    }

    #[test]
    fn empty_nameserver_list_is_an_error() {
        assert!(Resolver::new(Some(Vec::new())).is_err());
    }
}
