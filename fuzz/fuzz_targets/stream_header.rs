//! Arbitrary bytes as the start of a stream: no panic, bounded memory, and a header that was
//! accepted, written out again with `StreamHeader::to_xml` (which writes our own headers:
//! version 1.0, the standard `stream` and `db` prefixes, `jabber:server` when no default
//! namespace was given), is accepted as the header it describes.

#![no_main]

use causeway_fuzz::{limits, Budget};
use causeway_xmpp::{ns, Event, Framer, StreamHeader};
use libfuzzer_sys::fuzz_target;

fn header_of(bytes: &[u8], limits: causeway_xmpp::Limits) -> Option<StreamHeader> {
    let mut framer = Framer::new(limits);
    framer.push(bytes);
    match framer.next_event() {
        Ok(Some(Event::StreamOpen(h))) => Some(h),
        _ => None,
    }
}

/// What `to_xml` promises to write for `h`, prefixes sorted.
fn as_written(h: &StreamHeader) -> StreamHeader {
    let mut out = h.clone();
    if out.default_ns.is_empty() {
        out.default_ns = ns::SERVER.into();
    }
    if out.version.is_some() {
        out.version = Some("1.0".into());
    }
    out.prefixes
        .retain(|(p, _)| !matches!(p.as_str(), "stream" | "db" | "xml" | ""));
    out.prefixes.push(("stream".into(), ns::STREAM.into()));
    out.prefixes.push(("db".into(), ns::DIALBACK.into()));
    out.prefixes.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let budget = Budget::new(16, 32 * 1024);
    let Some(header) = header_of(data, limits()) else {
        return;
    };
    budget.check(data.len(), "stream header");
    let xml = header.to_xml();
    // Escaping may lengthen it (`>` in a value becomes `&gt;`), and `to_xml` declares the
    // `stream` and `db` prefixes the input may have left out (one more declaration each, over
    // a header that was at the cap): re-read with room for both.
    let roomy = causeway_xmpp::Limits {
        max_header_bytes: 8 * xml.len() + 1024,
        max_attributes: limits().max_attributes + 2,
        max_namespace_declarations: limits().max_namespace_declarations + 2,
        ..limits()
    };
    let mut again = header_of(xml.as_bytes(), roomy)
        .unwrap_or_else(|| panic!("our own header does not parse: {xml}"));
    again.prefixes.sort();
    assert_eq!(
        as_written(&header),
        again,
        "round trip changed the header: {xml}"
    );
});
