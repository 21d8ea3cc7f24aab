//! The one domain normaliser and the policy patterns built on it: no panic, bounded work, a
//! canonical form that is a fixed point (ASCII, lowercase, no trailing dot, at most 253
//! characters), and an exact policy rule written any way matches the domain it names.

#![no_main]

use causeway_fuzz::Budget;
use causeway_policy::Pattern;
use causeway_xmpp::addr::{jid_domain, normalize_domain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // UTS-46 works on chars (4 bytes each) and copies a label a few times while mapping,
    // normalising and encoding it: about 55 bytes per input byte for one long label. The
    // normaliser refuses input over 1 KiB before any of that, so this stays under 80 KiB.
    let budget = Budget::new(64, 16 * 1024);
    let normal = normalize_domain(s);
    let _ = jid_domain(s);
    let pattern = Pattern::parse(s);
    budget.check(data.len(), "domain normaliser");
    if let Ok(d) = &normal {
        assert!(
            d.is_ascii() && !d.bytes().any(|b| b.is_ascii_uppercase()),
            "{d:?}"
        );
        assert!(
            !d.ends_with('.') && !d.is_empty() && d.len() <= 253,
            "{d:?}"
        );
        assert_eq!(
            normalize_domain(d).ok().as_deref(),
            Some(d.as_str()),
            "not a fixed point"
        );
        if !s.trim_start().starts_with('*') {
            if let Ok(p) = &pattern {
                assert!(
                    p.matches(s) && p.matches(d),
                    "rule {s:?} does not match {d:?}"
                );
            }
        }
    }
});
