//! A report made at most once per period: a warning that would otherwise repeat for every
//! stanza of an outage (the rest go to debug).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one `due` per `period`.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Every {
    /// Due at once, then again `period` after each time it was due.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(None),
        }
    }

    /// True when the period since the last report has passed (and counts this one).
    pub fn due(&self) -> bool {
        let now = Instant::now();
        let mut last = match self.last.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|t| now.duration_since(t) < self.period) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period() {
        let every = Every::new(Duration::from_secs(3600));
        assert!(every.due());
        assert!(!every.due());
        let always = Every::new(Duration::ZERO);
        assert!(always.due() && always.due());
    }
}
