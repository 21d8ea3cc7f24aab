//! The daemons' local HTTP listener and what it reports.
//!
//! * [`server`]: `GET /metrics` (Prometheus text), `GET /healthz` (liveness) and `GET /readyz`
//!   (readiness) on hyper, with a bound on request bytes, deadlines and concurrent connections.
//! * [`health`]: the liveness model: the loops a daemon depends on beat, and `/healthz` fails
//!   (and the systemd watchdog is no longer fed) when one stops turning.

pub mod health;
pub mod server;

pub use health::{Beat, Heartbeats, Verdict};
pub use server::{Limits, Routes};
