//! The framer on arbitrary bytes, fed whole and in arbitrary chunks: no panic, the same events
//! and the same error condition however the bytes are split, and memory within a small
//! multiple of the input (the parse cost bound plus the framer's buffer).

#![no_main]

use causeway_fuzz::{limits, Budget};
use causeway_xmpp::{Event, Framer, StreamCondition};
use libfuzzer_sys::fuzz_target;

/// Events until the input runs out, and the condition of the error that ended it, if any.
fn frame(input: &[u8], chunk: impl Fn(usize) -> usize) -> (Vec<Event>, Option<StreamCondition>) {
    let mut framer = Framer::new(limits());
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = chunk(i).clamp(1, input.len() - at);
        framer.push(&input[at..at + n]);
        at += n;
        i += 1;
        loop {
            match framer.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e.condition())),
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let budget = Budget::new(40, 64 * 1024);
    let whole = frame(input, |_| usize::MAX);
    budget.check(input.len(), "framer, whole");
    let sizes = [1 + (seed as usize & 7), 1 + (seed as usize >> 3), 1];
    let chunked = frame(input, |i| sizes[i % sizes.len()]);
    assert_eq!(whole, chunked, "chunking changed what the framer saw");
});
