//! Certificate name matching (RFC 6125) on arbitrary presented names and reference domains:
//! no panic, bounded memory, and a name never matches a domain it does not name when it has
//! no wildcard (case, surrounding whitespace and one trailing dot aside).

#![no_main]

use causeway_fuzz::Budget;
use causeway_pki::name_matches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (presented, reference) = s.split_once('\n').unwrap_or((s, ""));
    let budget = Budget::new(8, 8 * 1024);
    let matched = name_matches(presented, reference);
    budget.check(data.len(), "name matching");
    // As the matcher reads names: surrounding whitespace and one trailing dot aside.
    let plain = |n: &str| {
        let n = n.trim();
        n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase()
    };
    if matched && !presented.contains('*') {
        assert_eq!(
            plain(presented),
            plain(reference),
            "{presented:?} matched {reference:?}"
        );
    }
});
