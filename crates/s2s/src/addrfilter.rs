//! Which addresses we may connect to when DNS named them.
//!
//! A remote domain's DNS is written by whoever owns the domain, so a peer that asks us to verify
//! a dialback key (or a user who writes to its domain) chooses where we connect. Without a
//! filter the edge, which sits in a DMZ, would connect to its own loopback services, the
//! internal networks it can reach, or link-local metadata services on a peer's behalf, and the
//! timing of the answer would tell the peer what is there. [`AddrFilter::check`] refuses such
//! addresses; administrators list the networks their partners really live on (a partner on a
//! private network, the lab on 127.0.0.0/8) in an allow list.
//!
//! Only addresses learnt from DNS are filtered: static routes are written by the administrator.
//! Pure: no sockets, no DNS. The caller judges exactly the address it is about to connect to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why an address is refused: the kind of special-purpose address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 0.0.0.0 or :: (connecting to it reaches this host).
    Unspecified,
    /// 0.0.0.0/8, "this network" (RFC 791).
    ThisNetwork,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10 (cloud metadata services live here).
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, reserved for future use.
    Reserved,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (RFC 1918), fec0::/10 (deprecated site-local).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT shared space (RFC 6598).
    Shared,
    /// fc00::/7, unique local addresses (RFC 4193).
    UniqueLocal,
}

impl Refused {
    /// A short label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Unspecified => "unspecified",
            Refused::ThisNetwork => "this-network",
            Refused::Loopback => "loopback",
            Refused::LinkLocal => "link-local",
            Refused::Multicast => "multicast",
            Refused::Broadcast => "broadcast",
            Refused::Reserved => "reserved",
            Refused::Private => "private",
            Refused::Shared => "shared",
            Refused::UniqueLocal => "unique-local",
        }
    }

    /// Can an allow-list entry let this kind of address through? Loopback, link-local and the
    /// private and shared ranges can hold a real server (a partner on a private network, the
    /// lab on loopback); the unspecified address (which reaches this host), "this network",
    /// multicast, broadcast and reserved space never do, so no entry lets them through (not
    /// even `0.0.0.0/0`).
    pub fn can_be_allowed(self) -> bool {
        !matches!(
            self,
            Refused::Unspecified
                | Refused::ThisNetwork
                | Refused::Multicast
                | Refused::Broadcast
                | Refused::Reserved
        )
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP network in CIDR form: an address whose bits past the prefix are zero, and a prefix
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Is `ip` inside? An address of the other family never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Network {
    type Err = String;

    /// `10.1.0.0/16`, `fd00:1::/32`, or a single address (`192.0.2.7`: a /32 or /128). Bits
    /// past the prefix must be zero: `10.1.2.0/16` is refused as a probable typo.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a network like \"10.1.0.0/16\" or an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let net = Network { addr, prefix };
        let base = net.base();
        if base != addr {
            return Err(format!(
                "{s:?} has bits set past the prefix (the network is {base}/{prefix})"
            ));
        }
        Ok(net)
    }
}

impl Network {
    /// The address with the bits past the prefix cleared.
    fn base(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_u32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_u128(self.prefix))),
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The outbound address filter: special-purpose addresses are refused unless an allowed
/// network contains them. The default allows nothing special.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrFilter {
    allow: Vec<Network>,
}

/// An allow-list entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{index}]: {reason}")]
pub struct BadNetwork {
    /// Its index in the list.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl AddrFilter {
    /// A filter letting `allow` through.
    pub fn new(allow: Vec<Network>) -> Self {
        Self { allow }
    }

    /// A filter from allow-list entries as written in a config file (see [`Network`]'s
    /// `FromStr`); the error names the first bad entry's index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadNetwork> {
        let allow = entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                e.as_ref()
                    .trim()
                    .parse()
                    .map_err(|reason| BadNetwork { index, reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// The allowed networks.
    pub fn allowed(&self) -> &[Network] {
        &self.allow
    }

    /// May we connect to `ip`? IPv4-mapped, IPv4-compatible and NAT64 addresses are judged by
    /// the IPv4 address inside them (that is where the packets go); an allowed network may name
    /// either form.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let target = embedded_ipv4(ip).map_or(ip, IpAddr::V4);
        let Some(kind) = classify(target) else {
            return Ok(());
        };
        let allowed = kind.can_be_allowed()
            && self
                .allow
                .iter()
                .any(|n| n.contains(ip) || n.contains(target));
        if allowed {
            Ok(())
        } else {
            Err(kind)
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`, except
/// `::` and `::1`) or NAT64 well-known-prefix (`64:ff9b::/96`, RFC 6052) IPv6 address.
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let o = v6.octets();
    let inner = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !(v6.is_unspecified() || v6.is_loopback());
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    (mapped || compatible || nat64).then_some(inner)
}

/// The kind of special-purpose address `ip` is; None for an ordinary (global) address. Does
/// not look inside IPv6 forms of IPv4 addresses (see [`embedded_ipv4`]).
pub fn classify(ip: IpAddr) -> Option<Refused> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refused> {
    const RANGES: [([u8; 4], u8, Refused); 9] = [
        ([0, 0, 0, 0], 8, Refused::ThisNetwork),
        ([127, 0, 0, 0], 8, Refused::Loopback),
        ([169, 254, 0, 0], 16, Refused::LinkLocal),
        ([224, 0, 0, 0], 4, Refused::Multicast),
        ([240, 0, 0, 0], 4, Refused::Reserved),
        ([10, 0, 0, 0], 8, Refused::Private),
        ([172, 16, 0, 0], 12, Refused::Private),
        ([192, 168, 0, 0], 16, Refused::Private),
        ([100, 64, 0, 0], 10, Refused::Shared),
    ];
    if ip.is_unspecified() {
        return Some(Refused::Unspecified);
    }
    if ip.is_broadcast() {
        return Some(Refused::Broadcast);
    }
    RANGES.iter().find_map(|(net, prefix, kind)| {
        let n = Network {
            addr: IpAddr::V4(Ipv4Addr::from(*net)),
            prefix: *prefix,
        };
        n.contains(IpAddr::V4(ip)).then_some(*kind)
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refused> {
    if ip.is_unspecified() {
        return Some(Refused::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Refused::Loopback);
    }
    let first = ip.segments()[0];
    match first {
        _ if first & 0xffc0 == 0xfe80 => Some(Refused::LinkLocal),
        _ if first & 0xffc0 == 0xfec0 => Some(Refused::Private),
        _ if first & 0xff00 == 0xff00 => Some(Refused::Multicast),
        _ if first & 0xfe00 == 0xfc00 => Some(Refused::UniqueLocal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn filter(allow: &[&str]) -> AddrFilter {
        AddrFilter::parse(allow).expect("test allow list")
    }

    #[test]
    fn ordinary_addresses_pass() {
        let f = AddrFilter::default();
        for a in [
            "8.8.8.8",
            "192.0.2.1",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
            "2001:db8::1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(f.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn special_addresses_are_refused_by_kind() {
        let f = AddrFilter::default();
        for (a, kind) in [
            ("0.0.0.0", Refused::Unspecified),
            ("0.1.2.3", Refused::ThisNetwork),
            ("127.0.0.1", Refused::Loopback),
            ("127.200.1.77", Refused::Loopback),
            ("169.254.169.254", Refused::LinkLocal),
            ("224.0.0.1", Refused::Multicast),
            ("239.255.255.255", Refused::Multicast),
            ("240.0.0.1", Refused::Reserved),
            ("255.255.255.254", Refused::Reserved),
            ("255.255.255.255", Refused::Broadcast),
            ("10.1.2.3", Refused::Private),
            ("172.16.0.1", Refused::Private),
            ("172.31.255.255", Refused::Private),
            ("192.168.1.1", Refused::Private),
            ("100.64.0.1", Refused::Shared),
            ("100.127.255.255", Refused::Shared),
            ("::", Refused::Unspecified),
            ("::1", Refused::Loopback),
            ("fe80::1", Refused::LinkLocal),
            ("febf::1", Refused::LinkLocal),
            ("fec0::1", Refused::Private),
            ("ff02::1", Refused::Multicast),
            ("fc00::1", Refused::UniqueLocal),
            ("fd12:3456::1", Refused::UniqueLocal),
        ] {
            assert_eq!(f.check(ip(a)), Err(kind), "{a}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address() {
        let f = AddrFilter::default();
        for (a, kind) in [
            ("::ffff:127.0.0.1", Refused::Loopback),
            ("::ffff:10.0.0.1", Refused::Private),
            ("::ffff:169.254.169.254", Refused::LinkLocal),
            ("::ffff:0.0.0.0", Refused::Unspecified),
            ("::127.0.0.1", Refused::Loopback),
            ("::192.168.0.1", Refused::Private),
            ("::0.0.0.2", Refused::ThisNetwork),
            ("64:ff9b::7f00:1", Refused::Loopback),
            ("64:ff9b::10.0.0.1", Refused::Private),
            ("64:ff9b::100.64.0.1", Refused::Shared),
        ] {
            assert_eq!(f.check(ip(a)), Err(kind), "{a}");
        }
        assert_eq!(embedded_ipv4(ip("::1")), None);
        assert_eq!(embedded_ipv4(ip("::")), None);
        assert_eq!(embedded_ipv4(ip("2001:db8::7f00:1")), None);
        assert_eq!(embedded_ipv4(ip("127.0.0.1")), None);
        // Not the well-known NAT64 prefix: an ordinary address.
        assert_eq!(f.check(ip("64:ff9b:1::7f00:1")), Ok(()));
    }

    #[test]
    fn allowed_networks_let_their_addresses_through_in_any_form() {
        let f = filter(&[
            "10.1.0.0/16",
            "127.217.0.0/24",
            "fd00:1::/32",
            "169.254.1.1",
        ]);
        for a in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "64:ff9b::10.1.0.9",
            "127.217.0.21",
            "fd00:1:2::3",
            "169.254.1.1",
        ] {
            assert_eq!(f.check(ip(a)), Ok(()), "{a}");
        }
        for (a, kind) in [
            ("10.2.0.1", Refused::Private),
            ("127.217.1.77", Refused::Loopback),
            ("::ffff:127.217.1.78", Refused::Loopback),
            ("127.0.0.1", Refused::Loopback),
            ("fd00:2::1", Refused::UniqueLocal),
            ("169.254.1.2", Refused::LinkLocal),
        ] {
            assert_eq!(f.check(ip(a)), Err(kind), "{a}");
        }
    }

    #[test]
    fn some_addresses_are_never_allowed() {
        let f = filter(&["0.0.0.0/0", "::/0"]);
        assert_eq!(f.check(ip("10.0.0.1")), Ok(()));
        assert_eq!(f.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(f.check(ip("fe80::1")), Ok(()));
        for (a, kind) in [
            ("0.0.0.0", Refused::Unspecified),
            ("::", Refused::Unspecified),
            ("::ffff:0.0.0.0", Refused::Unspecified),
            ("0.0.0.1", Refused::ThisNetwork),
            ("224.0.0.1", Refused::Multicast),
            ("ff02::1", Refused::Multicast),
            ("255.255.255.255", Refused::Broadcast),
            ("240.0.0.1", Refused::Reserved),
        ] {
            assert_eq!(f.check(ip(a)), Err(kind), "{a}");
        }
    }

    #[test]
    fn networks_parse_strictly() {
        let n = |s: &str| s.parse::<Network>();
        assert_eq!(
            n("10.1.0.0/16").map(|n| n.to_string()),
            Ok("10.1.0.0/16".into())
        );
        assert_eq!(
            n("192.0.2.7").map(|n| n.to_string()),
            Ok("192.0.2.7/32".into())
        );
        assert_eq!(n("fd00::/8").map(|n| n.to_string()), Ok("fd00::/8".into()));
        assert_eq!(n("::1").map(|n| n.to_string()), Ok("::1/128".into()));
        assert_eq!(
            n("0.0.0.0/0").map(|n| n.to_string()),
            Ok("0.0.0.0/0".into())
        );
        for bad in [
            "",
            "10.1.0.0/",
            "10.1.0.0/33",
            "fd00::/129",
            "10.1.0.0/-1",
            "10.1/16",
            "example.com",
            "10.1.0.0/16/1",
        ] {
            assert!(n(bad).is_err(), "{bad:?} parsed");
        }
        let host_bits = n("10.1.2.0/16").expect_err("host bits");
        assert!(host_bits.contains("10.1.0.0/16"), "{host_bits}");
        let err = AddrFilter::parse(&["10.0.0.0/8", "nope"]).expect_err("bad entry");
        assert_eq!(err.index, 1);
        assert!(err.to_string().starts_with("[1]: "), "{err}");
        assert_eq!(
            AddrFilter::parse(&[" 10.0.0.0/8 "]).map(|f| f.allowed().len()),
            Ok(1)
        );
    }

    #[test]
    fn containment_respects_prefix_and_family() {
        let n = |s: &str| s.parse::<Network>().expect("network");
        assert!(n("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!n("0.0.0.0/0").contains(ip("::1")));
        assert!(n("172.16.0.0/12").contains(ip("172.31.0.1")));
        assert!(!n("172.16.0.0/12").contains(ip("172.32.0.1")));
        assert!(n("::/0").contains(ip("2001:db8::1")));
        assert!(n("2001:db8::/127").contains(ip("2001:db8::1")));
        assert!(!n("2001:db8::/128").contains(ip("2001:db8::1")));
    }
}
