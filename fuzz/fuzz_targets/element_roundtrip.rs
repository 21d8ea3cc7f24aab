//! A stanza parsed by the framer, serialised, and parsed again is the same element: what the
//! edge forwards means what it received (no namespace or escaping can change on the way).

#![no_main]

use causeway_fuzz::{first_element, limits, Budget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let budget = Budget::new(40, 64 * 1024);
    let Some(element) = first_element(data, limits()).map(|tl| tl.element) else {
        return;
    };
    budget.check(data.len(), "element parse");
    let xml = element.to_xml("jabber:server");
    // Escaping may lengthen it: re-read without the size cap (the cost bound still holds).
    let roomy = causeway_xmpp::Limits {
        max_stanza_bytes: 8 * xml.len() + 1024,
        ..limits()
    };
    let again = first_element(xml.as_bytes(), roomy)
        .map(|tl| tl.element)
        .unwrap_or_else(|| panic!("our own serialisation does not parse: {xml}"));
    assert_eq!(element, again, "round trip changed the element: {xml}");
});
