//! Pure helpers for several tunnels side by side (high availability): which peer carries a
//! stanza, and when a peer that stays away counts as gone. No I/O, no clock of their own; core
//! uses them over its edges, the edge over its cores.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Rendezvous (highest random weight) choice of the peer for a `(from, to)` domain pair: the
/// connected candidate with the highest score, or with none connected the highest of all;
/// None only without candidates.
///
/// A score depends on the pair and the candidate's `key` only, so a pair stays with its peer
/// for as long as that peer is connected, whatever the others do; pairs spread evenly; and
/// when a peer goes away only its pairs move.
pub fn pick<'a, T>(
    candidates: &'a [T],
    key: impl Fn(&T) -> &str,
    connected: impl Fn(&T) -> bool,
    from: &str,
    to: &str,
) -> Option<&'a T> {
    let best = |only_connected: bool| {
        candidates
            .iter()
            .filter(|c| !only_connected || connected(c))
            .max_by_key(|c| score(key(c), from, to))
    };
    best(true).or_else(|| best(false))
}

/// A stable 64-bit score of (peer, pair): FNV-1a over the three names (case-insensitive), then
/// a 64-bit finalizer (FNV alone separates similar inputs poorly). The same in every process
/// and release.
fn score(key: &str, from: &str, to: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [key, from, to] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// When a peer's unacknowledged stanzas should be taken back and sent through another peer:
/// after it has been without a session for a whole grace period while some other peer has one;
/// at once if it said it drains (a planned stop: it is not coming back soon).
///
/// Call order: [`observe`](Self::observe) each peer's state whenever one may have changed (a
/// peer first observed down counts as down since then), then [`gone`](Self::gone) for the
/// peers to take back from now, then sleep until [`next_check`](Self::next_check) or the next
/// state change.
#[derive(Debug, Clone)]
pub struct Failover<K> {
    grace: Duration,
    /// Per peer: since when it has been without a session (None: connected), and whether it
    /// said it drains.
    down_since: BTreeMap<K, (Option<Instant>, bool)>,
}

impl<K: Ord + Clone> Failover<K> {
    /// No peers known yet; a peer is gone after `grace` without a session.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            down_since: BTreeMap::new(),
        }
    }

    /// Record a peer's state as seen at `now`: whether it has a session, and whether it said
    /// it drains.
    pub fn observe(&mut self, peer: &K, connected: bool, draining: bool, now: Instant) {
        let (slot, drains) = self
            .down_since
            .entry(peer.clone())
            .or_insert((Some(now), false));
        *drains = draining;
        match (connected, *slot) {
            (true, _) => *slot = None,
            (false, None) => *slot = Some(now),
            (false, Some(_)) => {}
        }
    }

    /// When a peer that is down (since `since`, draining or not) counts as gone.
    fn gone_at(&self, since: Instant, draining: bool) -> Instant {
        if draining {
            since
        } else {
            since + self.grace
        }
    }

    /// The peers down for at least the grace period, while another peer is connected (taking
    /// back stanzas with nowhere else to go would only reorder them).
    pub fn gone(&self, now: Instant) -> Vec<K> {
        if !self.any_connected() {
            return Vec::new();
        }
        self.down_since
            .iter()
            .filter(|(_, (d, drains))| d.is_some_and(|since| now >= self.gone_at(since, *drains)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// When [`gone`](Self::gone) next needs a look if no state changes: the end of the
    /// earliest grace period still running, but no sooner than a second from `now` (or the
    /// grace, if shorter), which is also how often peers already gone are looked at again
    /// (stanzas may still land in their windows, e.g. a send that chose a peer just before it
    /// went down). None when no peer is connected: only a state change matters then.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        if !self.any_connected() {
            return None;
        }
        let soonest = now + self.grace.min(Duration::from_secs(1));
        self.down_since
            .values()
            .filter_map(|(d, drains)| d.map(|since| self.gone_at(since, *drains).max(soonest)))
            .min()
    }

    fn any_connected(&self) -> bool {
        self.down_since.values().any(|(d, _)| d.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'x>(s: &'x &str) -> &'x str {
        s
    }

    #[test]
    fn a_pair_stays_with_its_peer_and_pairs_spread() {
        let peers = ["10.0.0.2:7400", "10.0.0.5:7400", "10.0.0.8:7400"];
        let pairs: Vec<String> = (0..300).map(|i| format!("partner{i}.test")).collect();
        let choose = |down: Option<&str>, to: &str| {
            pick(&peers, key, |p| Some(*p) != down, "example.com", to).copied()
        };
        let mut per_peer = [0usize; 3];
        for to in &pairs {
            let p = choose(None, to).expect("a peer");
            assert_eq!(choose(None, to), Some(p), "stable");
            assert_eq!(
                pick(&peers, key, |_| true, "EXAMPLE.com", &to.to_uppercase()).copied(),
                Some(p),
                "domain case does not matter"
            );
            per_peer[peers.iter().position(|x| *x == p).expect("known")] += 1;
        }
        assert!(per_peer.iter().all(|n| *n > 60), "spread: {per_peer:?}");
        // The second peer goes down: only its pairs move, and never to it.
        for to in &pairs {
            let before = choose(None, to).expect("a peer");
            let after = choose(Some(peers[1]), to).expect("a peer");
            assert_ne!(after, peers[1]);
            if before != peers[1] {
                assert_eq!(after, before, "{to} moved although its peer is up");
            }
        }
        // None connected: the same stable choice among all. No candidates: none.
        let to = &pairs[0];
        assert_eq!(
            pick(&peers, key, |_| false, "example.com", to).copied(),
            choose(None, to)
        );
        assert_eq!(pick(&peers[..0], key, |_| true, "example.com", to), None);
        assert_eq!(
            pick(&peers[..1], key, |_| false, "example.com", to).copied(),
            Some(peers[0])
        );
    }

    #[test]
    fn a_peer_is_gone_after_the_grace_period_while_another_is_up() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(6);
        let s = Duration::from_secs(1);
        let mut f = Failover::new(grace);
        // At start nobody is connected: nothing is gone, nothing to wait for.
        f.observe(&0, false, false, t0);
        f.observe(&1, false, false, t0);
        assert!(f.gone(t0 + grace * 2).is_empty());
        assert_eq!(f.next_check(t0), None);
        // Both come up; peer 0 drops at t0+10s.
        f.observe(&0, true, false, t0 + s);
        f.observe(&1, true, false, t0 + s);
        assert!(f.gone(t0 + s).is_empty());
        assert_eq!(f.next_check(t0 + s), None);
        let drop_at = t0 + 10 * s;
        f.observe(&0, false, false, drop_at);
        f.observe(&0, false, false, drop_at + 2 * s); // still down: the clock keeps running
        assert_eq!(f.next_check(drop_at), Some(drop_at + grace));
        assert!(f.gone(drop_at + grace - s).is_empty());
        assert_eq!(f.gone(drop_at + grace), vec![0]);
        // While it is gone, look again every second.
        let later = drop_at + grace + 3 * s;
        assert_eq!(f.next_check(later), Some(later + s));
        // Peer 1 drops too: nowhere to send, so nothing is gone.
        f.observe(&1, false, false, later);
        assert!(f.gone(later + grace * 2).is_empty());
        assert_eq!(f.next_check(later), None);
        // Peer 1 returns: peer 0 (down long ago) is gone at once.
        f.observe(&1, true, false, later + grace * 3);
        assert_eq!(f.gone(later + grace * 3), vec![0]);
        // Peer 0 returns: nothing is gone.
        f.observe(&0, true, false, later + grace * 3);
        assert!(f.gone(later + grace * 4).is_empty());
    }

    #[test]
    fn a_short_cut_is_not_a_failover() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::from_secs(6));
        f.observe(&"a", true, false, t0);
        f.observe(&"b", true, false, t0);
        f.observe(&"a", false, false, t0 + Duration::from_secs(1));
        assert_eq!(
            f.next_check(t0 + Duration::from_secs(1)),
            Some(t0 + Duration::from_secs(7))
        );
        f.observe(&"a", true, false, t0 + Duration::from_secs(3));
        assert!(f.gone(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(f.next_check(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn a_peer_that_drained_is_gone_as_it_leaves_if_another_is_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut f = Failover::new(Duration::from_secs(6));
        f.observe(&"a", true, false, t0);
        f.observe(&"b", true, false, t0);
        // "a" drains: while it still has its session, nothing is gone.
        f.observe(&"a", true, true, t0 + s);
        assert!(f.gone(t0 + s).is_empty());
        // It leaves: gone at once, not after the grace.
        f.observe(&"a", false, true, t0 + 2 * s);
        assert_eq!(f.gone(t0 + 2 * s), vec!["a"]);
        assert_eq!(f.next_check(t0 + 2 * s), Some(t0 + 3 * s));
        // Alone, a drained peer's stanzas stay where they are (nowhere else to go).
        let mut lone = Failover::new(Duration::from_secs(6));
        lone.observe(&"a", true, true, t0);
        lone.observe(&"a", false, true, t0 + s);
        assert!(lone.gone(t0 + 10 * s).is_empty());
        // Back with a new session (and no longer draining): not gone.
        f.observe(&"a", true, false, t0 + 3 * s);
        assert!(f.gone(t0 + 3 * s).is_empty());
    }
}
