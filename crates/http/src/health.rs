//! Liveness and readiness verdicts.
//!
//! A daemon registers each loop it depends on with [`Heartbeats::register`] and calls
//! [`Beat::beat`] every time the loop turns. [`Heartbeats::check`] says which loops have not
//! turned for much longer than they should (three periods plus [`GRACE`]): the process is alive
//! but stuck, and `/healthz` answers 503 naming the loop. Readiness is the daemon's own
//! judgement (a core connected, nodes active); both are expressed as a [`Verdict`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Slack added to three periods before a loop counts as stuck: a loaded machine delays timers.
pub const GRACE: Duration = Duration::from_secs(10);

/// Ok, or the reasons it is not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why not; empty means ok.
    pub reasons: Vec<String>,
}

impl Verdict {
    /// All is well.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Not well when `reasons` is not empty.
    pub fn from_reasons(reasons: Vec<String>) -> Self {
        Self { reasons }
    }

    /// True when there is no reason against.
    pub fn is_ok(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The body of a health answer: `ok_word` alone, or `not_word` and one reason per line.
    pub fn render(&self, ok_word: &str, not_word: &str) -> String {
        if self.is_ok() {
            return format!("{ok_word}\n");
        }
        let mut out = format!("{not_word}\n");
        for r in &self.reasons {
            out.push_str("- ");
            out.push_str(r);
            out.push('\n');
        }
        out
    }
}

/// One registered loop.
#[derive(Debug)]
struct Loop {
    name: &'static str,
    /// How often it should turn, in milliseconds.
    every_ms: AtomicU64,
    /// When it last turned, in milliseconds since the registry's origin.
    last_ms: AtomicU64,
}

/// The registry of the loops a daemon depends on.
#[derive(Debug)]
pub struct Heartbeats {
    origin: Instant,
    grace: Duration,
    loops: Mutex<Vec<Arc<Loop>>>,
}

/// The handle a loop beats with.
#[derive(Debug, Clone)]
pub struct Beat {
    origin: Instant,
    state: Arc<Loop>,
}

impl Heartbeats {
    /// An empty registry with the default [`GRACE`].
    pub fn new() -> Arc<Self> {
        Self::with_grace(GRACE)
    }

    /// An empty registry whose loops are stuck after three periods plus `grace`.
    pub fn with_grace(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            grace,
            loops: Mutex::new(Vec::new()),
        })
    }

    /// Register loop `name` that turns every `every`; it counts as having turned now.
    pub fn register(&self, name: &'static str, every: Duration) -> Beat {
        let state = Arc::new(Loop {
            name,
            every_ms: AtomicU64::new(millis(every)),
            last_ms: AtomicU64::new(millis(self.origin.elapsed())),
        });
        self.loops_mut().push(state.clone());
        Beat {
            origin: self.origin,
            state,
        }
    }

    /// The loops that have not turned for longer than three periods plus the grace at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let mut reasons = Vec::new();
        for l in self.loops_mut().iter() {
            let every = l.every_ms.load(Ordering::Relaxed);
            let age = now_ms.saturating_sub(l.last_ms.load(Ordering::Relaxed));
            if age > every.saturating_mul(3).saturating_add(millis(self.grace)) {
                reasons.push(format!(
                    "the {} loop has not turned for {} s (it should every {} s)",
                    l.name,
                    age / 1000,
                    every.div_ceil(1000)
                ));
            }
        }
        Verdict::from_reasons(reasons)
    }

    /// Register the runtime itself as a loop and turn it every second in a task of its own,
    /// calling `on_tick` with the verdict of [`Heartbeats::check`] (the daemon feeds the
    /// systemd watchdog only while it is ok, so that systemd restarts a stuck daemon).
    pub fn spawn_runtime_ticker(
        self: &Arc<Self>,
        mut on_tick: impl FnMut(&Verdict) + Send + 'static,
    ) {
        let me = self.clone();
        let beat = me.register("runtime", Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut was_ok = true;
            loop {
                tick.tick().await;
                beat.beat();
                let verdict = me.check(Instant::now());
                if verdict.is_ok() != was_ok {
                    was_ok = verdict.is_ok();
                    if was_ok {
                        tracing::info!("liveness: every loop turns again");
                    } else {
                        tracing::warn!(reasons = ?verdict.reasons, "liveness: a loop is stuck; /healthz answers 503 and the systemd watchdog is not fed");
                    }
                }
                on_tick(&verdict);
            }
        });
    }

    fn loops_mut(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Loop>>> {
        match self.loops.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Beat {
    /// The loop turned now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// The loop turned at `now`.
    pub fn beat_at(&self, now: Instant) {
        let ms = millis(now.saturating_duration_since(self.origin));
        self.state.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The loop now turns every `every` (a reloaded setting).
    pub fn set_every(&self, every: Duration) {
        self.state.every_ms.store(millis(every), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stuck_after_three_periods_and_the_grace() {
        let hb = Heartbeats::new();
        let start = hb.origin;
        let probe = hb.register("probe", Duration::from_secs(30));
        let fast = hb.register("failover", Duration::from_secs(1));
        assert!(hb.check(start + Duration::from_secs(13)).is_ok());
        fast.beat_at(start + Duration::from_secs(13));
        // probe: 3 x 30 s + 10 s = 100 s; failover: 3 s + 10 s after its beat at 13 s.
        assert!(hb.check(start + Duration::from_secs(26)).is_ok());
        let v = hb.check(start + Duration::from_millis(26_001));
        assert_eq!(v.reasons.len(), 1, "{v:?}");
        assert!(v.reasons[0].starts_with("the failover loop"), "{v:?}");
        fast.beat_at(start + Duration::from_secs(99));
        assert!(hb.check(start + Duration::from_secs(100)).is_ok());
        let v = hb.check(start + Duration::from_millis(100_001));
        assert_eq!(
            v.reasons,
            ["the probe loop has not turned for 100 s (it should every 30 s)"]
        );
        probe.set_every(Duration::from_secs(60));
        assert!(hb.check(start + Duration::from_secs(101)).is_ok());
        // A beat from the past does not move the last beat back.
        probe.beat_at(start + Duration::from_secs(150));
        probe.beat_at(start + Duration::from_secs(10));
        fast.beat_at(start + Duration::from_secs(299));
        assert!(hb.check(start + Duration::from_secs(300)).is_ok());
    }

    #[test]
    fn verdict_bodies() {
        assert_eq!(Verdict::ok().render("ready", "not ready"), "ready\n");
        let v = Verdict::from_reasons(vec!["no core is connected".into(), "b".into()]);
        assert!(!v.is_ok());
        assert_eq!(
            v.render("ready", "not ready"),
            "not ready\n- no core is connected\n- b\n"
        );
    }
}
