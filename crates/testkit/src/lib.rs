//! causeway-testkit: a dev-only harness that runs real XMPP peers on loopback.
//!
//! Everything here starts real processes on `127.0.0.x` addresses, each with
//! its own configuration, data, log and pid files under a temporary directory,
//! and kills them (their whole process group and every descendant found under
//! them) when the handle is dropped:
//!
//! * [`DnsServer`]: dnsmasq serving SRV/A records (or a wildcard view) on a
//!   loopback address, port 53 by default.
//! * [`Prosody`]: Prosody 0.12 (Debian), run as the `prosody` user, with
//!   libunbound pointed at a [`DnsServer`] and optionally the shipped route
//!   plugin (`deploy/prosody/mod_causeway_route.lua`) that sends all outgoing
//!   s2s to one address.
//! * [`Ejabberd`]: ejabberd 23.01 (Debian), run as the `ejabberd` user,
//!   without epmd, with an inetrc that makes Erlang's resolver use a
//!   [`DnsServer`] only; users are registered through its HTTP API.
//! * [`Client`]: a real XMPP client (slixmpp under `/usr/bin/python3`) driven
//!   by JSON lines.
//! * [`relay::Relay`]: a fault-injecting TCP relay.
//! * [`Slapd`]: OpenLDAP's slapd (Debian) with its own config and mdb database, serving a
//!   test directory on a loopback address (the LDAP source of email address for federation).
//! * [`ChildGuard`]: spawn any process (the `edge`/`core` binaries) in its own
//!   process group, optionally wait for a READY line, kill on drop.
//!
//! Nothing here ever sends traffic to a non-loopback address: DNS resolvers
//! are always pointed at a loopback server (never at the system's
//! `/etc/resolv.conf`).
//!
//! Set `CAUSEWAY_TESTKIT_KEEP=1` to keep the temporary directories (configs
//! and logs) after the test for inspection.

mod certs;
mod client;
mod dns;
mod ejabberd;
pub mod lab;
mod process;
mod prosody;
pub mod relay;
pub mod slapd;
pub mod synthetic;
mod util;

pub use certs::{CertFiles, Certs};
pub use client::{Client, ClientEvent, ClientOptions};
pub use dns::{DnsRecord, DnsServer};
pub use ejabberd::{Ejabberd, EjabberdSpec};
pub use process::ChildGuard;
pub use prosody::{Prosody, ProsodySpec, ROUTE_PLUGIN_LUA};
pub use relay::Relay;
pub use slapd::Slapd;
pub use util::{
    free_port, free_udp_tcp_port, keep_temp_dirs, temp_dir, wait_for_tcp, wait_until, TempDir,
};
