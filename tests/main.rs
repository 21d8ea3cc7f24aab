//! End-to-end tests: real Prosody, ejabberd, dnsmasq and slixmpp clients on loopback, with the
//! real `edge` and `core` binaries between them. One test binary; each test has its own
//! 127.N.0.0/24 subnet so they run side by side.

mod support;

mod certs_metrics;
mod config;
mod deadlines;
mod discovery;
mod email;
mod federation;
mod groupchat;
mod ha;
mod hostile;
mod internal;
mod ipv6;
mod isolation;
mod limits;
mod liveness;
mod modes;
mod operations;
mod readiness;
mod reload;
mod renewal;
mod security;
mod tunnel;
