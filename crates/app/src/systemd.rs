//! What the service manager is told (systemd `Type=notify`, sd_notify(3)): `READY=1` once
//! every listener is bound, `STOPPING=1` when shutdown starts, a `STATUS=` line that
//! `systemctl status` shows, and `WATCHDOG=1` while every loop turns (when the unit sets
//! `WatchdogSec=`). Not under systemd (no `NOTIFY_SOCKET`), every call does nothing.

use std::sync::Arc;

use causeway_http::{Heartbeats, Verdict};
use sd_notify::NotifyState;

/// Send `states`; a failure is logged, never fatal (the daemon works without a manager).
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The daemon is serving: every listener is bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has started.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Every second: feed the watchdog while no loop is stuck, and keep the `STATUS=` line
/// current (sent when it changes). `status` says what the daemon is doing, in one line.
pub fn supervise(heartbeats: &Arc<Heartbeats>, status: impl Fn() -> String + Send + 'static) {
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let mut last = String::new();
    heartbeats.spawn_runtime_ticker(move |verdict: &Verdict| {
        if watchdog && verdict.is_ok() {
            send(&[NotifyState::Watchdog]);
        }
        if !under_systemd {
            return;
        }
        let mut now = status();
        if !verdict.is_ok() {
            now = format!("stuck: {}", verdict.reasons.join("; "));
        }
        if now != last {
            send(&[NotifyState::Status(&now)]);
            last = now;
        }
    });
}
