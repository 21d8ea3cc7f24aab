//! What every fuzz target shares: an allocator that counts, so a target can check that the
//! memory one input makes the code hold stays within a small multiple of the input's size
//! (the bound the edge relies on for hostile bytes), and the framer's inputs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes held now and the most held since [`Budget::new`].
pub struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = HELD.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A bound on what one input may make the code hold: `factor` times the input's size plus
/// `slack` bytes, over what was held when the budget was made.
pub struct Budget {
    base: usize,
    factor: usize,
    slack: usize,
}

impl Budget {
    /// Start measuring.
    pub fn new(factor: usize, slack: usize) -> Self {
        let base = HELD.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Budget {
            base,
            factor,
            slack,
        }
    }

    /// Panic (a finding) if the most held since [`Budget::new`] exceeded the bound for an
    /// input of `input_len` bytes.
    pub fn check(&self, input_len: usize, what: &str) {
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(self.base);
        let bound = self.factor * input_len + self.slack;
        assert!(
            peak <= bound,
            "{what}: held {peak} bytes for {input_len} bytes of input (bound {bound})"
        );
    }
}

/// A stream header the framer accepts, for targets that fuzz what follows it.
pub const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
from='partner.example' to='example.com' version='1.0'>";

/// Limits small enough for the fuzzer to reach them often.
pub fn limits() -> causeway_xmpp::Limits {
    causeway_xmpp::Limits {
        max_stanza_bytes: 16 * 1024,
        max_header_bytes: 1024,
        ..causeway_xmpp::Limits::default()
    }
}

/// The first top-level element of [`HEADER`] + `body`, if the framer yields one.
pub fn first_element(
    body: &[u8],
    limits: causeway_xmpp::Limits,
) -> Option<causeway_xmpp::TopLevel> {
    let mut framer = causeway_xmpp::Framer::new(limits);
    framer.push(HEADER);
    framer.push(body);
    loop {
        match framer.next_event() {
            Ok(Some(causeway_xmpp::Event::Element(tl))) => return Some(tl),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// A fuzz input read a byte at a time, for targets that turn it into a sequence of events
/// (zeros once it runs out).
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// One of `of`, chosen by the next byte.
    pub fn pick<'s>(&mut self, of: &[&'s str]) -> &'s str {
        of[usize::from(self.byte()) % of.len()]
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}

/// A certificate's worth, chosen by `b`.
pub fn cert_status(b: u8) -> causeway_xmpp::negotiation::CertStatus {
    use causeway_xmpp::negotiation::CertStatus;
    match b % 3 {
        0 => CertStatus::Absent,
        1 => CertStatus::Valid,
        _ => CertStatus::Invalid("fuzz".into()),
    }
}

/// The deadlines the negotiation targets run their machines with.
pub fn deadlines() -> causeway_xmpp::negotiation::Deadlines {
    use std::time::Duration;
    causeway_xmpp::negotiation::Deadlines {
        stream_header: Duration::from_secs(10),
        tls_handshake: Duration::from_secs(10),
        authentication: Duration::from_secs(30),
        idle: Duration::from_secs(600),
    }
}
