//! The resource limits applied to untrusted XML (the framer, the stream header parser and the
//! tree builder all read them).

/// Resource limits applied to untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size in bytes of one top-level element (default 262 144).
    pub max_stanza_bytes: usize,
    /// Maximum element nesting depth, the top-level element counting as 1 (default 64).
    pub max_depth: usize,
    /// Maximum size in bytes of the XML declaration and of the stream header (default 4096).
    pub max_header_bytes: usize,
    /// Maximum number of attributes on one start tag, namespace declarations included
    /// (default 64; real stanzas carry fewer than 10).
    pub max_attributes: usize,
    /// Maximum number of namespace declarations on one start tag, the stream header's
    /// included (default 16; real stanzas declare one or two).
    pub max_namespace_declarations: usize,
    /// The tree built from a top-level element may cost at most this many times the
    /// element's size in bytes, plus 16 KiB (default 16; the realistic stanzas measured in
    /// the tests cost 3.8 to 5.4 times their size, a small indented vCard of empty fields 14).
    /// The cost is the builder's estimate of the heap it holds; see the `parse` module.
    pub parse_cost_factor: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 64,
            max_header_bytes: 4096,
            max_attributes: 64,
            max_namespace_declarations: 16,
            parse_cost_factor: 16,
        }
    }
}
