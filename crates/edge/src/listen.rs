//! Listen addresses: one or several per listener, IPv4 and IPv6.
//!
//! A listener's setting is one address (`"0.0.0.0:5269"`) or a list
//! (`["0.0.0.0:5269", "[::]:5269"]`). IPv6 sockets are bound IPv6-only, so an IPv4 and an IPv6
//! wildcard on the same port live side by side (as Prosody's `interfaces = { "*", "::" }`).
//! The federation and tunnel defaults are both wildcards; a host without IPv6 gets a warning
//! for the IPv6 one instead of a failure. An address the administrator wrote must bind.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::warn;

/// Where one listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs {
    addrs: Vec<SocketAddr>,
    /// The built-in default (not written by the administrator): an address family the host
    /// lacks is skipped with a warning.
    default: bool,
}

impl ListenAddrs {
    /// The IPv4 and IPv6 wildcards on `port`: the default of the federation and tunnel
    /// listeners.
    pub fn wildcards(port: u16) -> Self {
        Self {
            addrs: vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ],
            default: true,
        }
    }

    /// Addresses as written (checked: at least one, no repeats).
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Self, String> {
        if addrs.is_empty() {
            return Err("at least one address".into());
        }
        if let Some(dup) = addrs
            .iter()
            .enumerate()
            .find_map(|(i, a)| addrs[..i].contains(a).then_some(a))
        {
            return Err(format!("{dup} is listed twice"));
        }
        Ok(Self {
            addrs,
            default: false,
        })
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Bind every address (`what` names the setting in errors and warnings).
    pub async fn bind(&self, what: &str) -> anyhow::Result<Vec<TcpListener>> {
        let mut out = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            match bind_one(*addr) {
                Ok(listener) => out.push(listener),
                Err(e) if self.default && addr.is_ipv6() && no_ipv6(&e) => {
                    warn!(module = causeway_s2s::LOG_MODULE, setting = what, %addr, error = %e, "IPv6 is not available on this host: listening on IPv4 only");
                }
                Err(e) => return Err(e).with_context(|| format!("{what} {addr}")),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for ListenAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.addrs.iter().map(SocketAddr::to_string).collect();
        f.write_str(&list.join(", "))
    }
}

impl<'de> Deserialize<'de> for ListenAddrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(SocketAddr),
            Many(Vec<SocketAddr>),
        }
        let addrs = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "an address (\"0.0.0.0:5269\") or a list of addresses ([\"0.0.0.0:5269\", \"[::]:5269\"])",
            )
        })? {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(v) => v,
        };
        ListenAddrs::new(addrs).map_err(serde::de::Error::custom)
    }
}

/// A listening socket; IPv6 ones IPv6-only, so the IPv4 wildcard can share the port.
fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Does this bind error mean the host has no IPv6 (disabled, or no address for it)?
fn no_ipv6(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::Unsupported
    ) || matches!(e.raw_os_error(), Some(97 /* EAFNOSUPPORT */))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        listen: ListenAddrs,
    }

    fn parse(s: &str) -> Result<ListenAddrs, String> {
        toml::from_str::<T>(s)
            .map(|t| t.listen)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_address_or_a_list() {
        let one = parse("listen = \"127.0.0.1:5269\"").expect("one");
        assert_eq!(one.addrs(), ["127.0.0.1:5269".parse().expect("addr")]);
        let two = parse("listen = [\"0.0.0.0:5269\", \"[::]:5269\"]").expect("two");
        assert_eq!(two.addrs().len(), 2);
        assert_eq!(two.to_string(), "0.0.0.0:5269, [::]:5269");
        assert!(!two.default);
        assert!(ListenAddrs::wildcards(5269).default);
    }

    #[test]
    fn bad_lists_say_why() {
        let e = parse("listen = []").expect_err("empty");
        assert!(e.contains("at least one address"), "{e}");
        let e = parse("listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"]").expect_err("dup");
        assert!(e.contains("listed twice"), "{e}");
        let e = parse("listen = \"localhost:5269\"").expect_err("name");
        assert!(e.contains("list of addresses"), "{e}");
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_share_a_port() {
        // Ports from the kernel: bind IPv4 first, then IPv6 on the same port.
        let v4 = bind_one("127.0.0.1:0".parse().expect("addr")).expect("v4");
        let port = v4.local_addr().expect("port").port();
        drop(v4);
        let both = ListenAddrs::new(vec![
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ])
        .expect("list");
        match both.bind("test.listen").await {
            Ok(listeners) => assert_eq!(listeners.len(), 2),
            Err(e) => {
                let io = e.downcast_ref::<std::io::Error>();
                assert!(io.is_some_and(no_ipv6), "binding both failed: {e:#}");
            }
        }
        let taken =
            ListenAddrs::new(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]).expect("list");
        let _held = taken.bind("test.listen").await.expect("bind");
        let again = taken.bind("test.listen").await.expect_err("in use");
        assert!(
            format!("{again:#}").contains("test.listen 127.0.0.1"),
            "{again:#}"
        );
    }
}
