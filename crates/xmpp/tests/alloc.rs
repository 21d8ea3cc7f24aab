//! The heap a framer uses for one top-level element, measured with dhat: a hostile element
//! is refused or costs at most [`PEAK_FACTOR`] times its bytes, and realistic stanzas parse.
//!
//! dhat counts the whole process's heap and allows one profiler at a time, so each test holds
//! a lock from its start (building its input included) and measures under its own profiler.

use std::sync::{Mutex, MutexGuard};

use causeway_xmpp::{Event, FrameError, Framer, Limits};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod stanzas {
    include!("fixtures/stanzas.rs");
}

/// Peak heap while framing one element, over the bytes pushed (header and element): the
/// default parse budget (16 times the element's size, plus a constant) plus the receive
/// buffer, the element's raw copy and the parser's transient state...
const PEAK_FACTOR: usize = 20;
/// ...plus this much for any element, however small: the receive buffer's first 8 KiB, the
/// stream header and the parser's fixed state.
const PEAK_BASE: usize = 32 * 1024;

/// The largest element the default limits accept.
const STANZA_LIMIT: usize = 262_144;

static SERIAL: Mutex<()> = Mutex::new(());

/// Run one test at a time: another test's allocations would count in this one's peak.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What framing one element after the header gave, and the peak heap meanwhile.
#[derive(Debug)]
struct Measured {
    /// Elements framed, or the error.
    outcome: Result<usize, FrameError>,
    /// The most bytes allocated at once while framing.
    peak: usize,
    /// Bytes pushed into the framer.
    input: usize,
}

/// Frame the fixtures' header then `element` with default limits, under a heap profiler.
/// The caller holds [`serial`].
fn frame(element: &[u8]) -> Measured {
    let profiler = dhat::Profiler::builder().testing().build();
    let outcome = {
        let mut framer = Framer::new(Limits::default());
        framer.push(stanzas::HEADER.as_bytes());
        framer.push(element);
        let mut elements = 0;
        loop {
            match framer.next_event() {
                Ok(Some(Event::Element(_))) => elements += 1,
                Ok(Some(_)) => {}
                Ok(None) => break Ok(elements),
                Err(e) => break Err(e),
            }
        }
    };
    let peak = dhat::HeapStats::get().max_bytes;
    drop(profiler);
    Measured {
        outcome,
        peak,
        input: stanzas::HEADER.len() + element.len(),
    }
}

/// An element at the size limit whose root declares a namespace URI of `uri_len` bytes,
/// followed by as many copies of `child` as fit.
fn long_namespace_attack(uri_len: usize, declaration: &str, child: &str) -> Vec<u8> {
    let uri = format!("urn:{}", "x".repeat(uri_len - 4));
    let open = format!("<r {declaration}='{uri}'>");
    let close = "</r>";
    let room = STANZA_LIMIT - open.len() - close.len();
    let mut element = open;
    element.push_str(&child.repeat(room / child.len()));
    element.push_str(close);
    assert!(element.len() <= STANZA_LIMIT);
    element.into_bytes()
}

fn assert_bounded(name: &str, m: &Measured) {
    println!(
        "{name}: input {} bytes, peak heap {} bytes ({:.1}x), outcome {:?}",
        m.input,
        m.peak,
        m.peak as f64 / m.input as f64,
        m.outcome
    );
    assert!(
        matches!(m.outcome, Ok(1) | Err(FrameError::TooExpensive { .. })),
        "{name}: {:?}",
        m.outcome
    );
    assert!(
        m.peak <= PEAK_FACTOR * m.input + PEAK_BASE,
        "{name}: peak {} over {PEAK_FACTOR} x {} + {PEAK_BASE}",
        m.peak,
        m.input
    );
}

#[test]
fn long_namespace_with_many_empty_children_is_bounded() {
    let _serial = serial();
    let m = frame(&long_namespace_attack(131_000, "xmlns", "<a/>"));
    assert_bounded("default namespace, <a/> children", &m);
    // With a longer URI, fewer children fit: the tree is within budget and is built, every
    // child sharing the root's URI (copied, it would take 15,000 x 200 kB = 3 GB).
    let m = frame(&long_namespace_attack(200_000, "xmlns", "<a/>"));
    assert_bounded("default namespace, fewer <a/> children", &m);
    assert_eq!(m.outcome, Ok(1));
}

#[test]
fn long_namespace_with_prefixed_attributes_is_bounded() {
    let _serial = serial();
    let m = frame(&long_namespace_attack(131_000, "xmlns:p", "<a p:x='1'/>"));
    assert_bounded("prefix, <a p:x='1'/> children", &m);
    // Each attribute's Clark name would copy the 131 kB URI: refused early.
    assert!(matches!(m.outcome, Err(FrameError::TooExpensive { .. })));
}

#[test]
fn realistic_stanzas_parse_within_the_bound() {
    let _serial = serial();
    for (name, stanza) in stanzas::realistic() {
        let m = frame(stanza.as_bytes());
        assert_eq!(m.outcome, Ok(1), "{name}");
        assert_bounded(name, &m);
    }
}
