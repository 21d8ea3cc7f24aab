//! Tunnel protocol revisions, so that core N-1 works with edge N (and the reverse) during a
//! rolling upgrade.
//!
//! Each side says in its hello which revision it speaks ([`PROTOCOL`]); a session runs at the
//! lower of the two, and a side refuses a peer older than [`MIN_PROTOCOL`]. A sender that
//! predates the field says nothing (0), which means revision 1. What each revision adds:
//!
//! | revision | adds |
//! |---|---|
//! | 1 | hello, stanzas, selective acks, keepalives (the first release) |
//! | 2 | `protocol` in the hello; `Drain`: the sender is stopping, route around it |
//!
//! Frames a peer does not know are ignored by it (an unknown `oneof` kind decodes as none), so
//! a new frame kind is only sent once the session's revision includes it.

/// The revision this build speaks.
pub const PROTOCOL: u32 = 2;
/// The oldest revision this build still speaks.
pub const MIN_PROTOCOL: u32 = 1;
/// The first revision with `Drain`.
pub const DRAIN: u32 = 2;

/// The revision a session runs at when this side said `ours` and the peer `peer` (0: the
/// field is unset, revision 1), or why there is none.
pub fn negotiate(ours: u32, peer: u32) -> Result<u32, String> {
    let (ours, peer) = (ours.max(1), peer.max(1));
    if peer < MIN_PROTOCOL {
        return Err(format!(
            "the peer speaks tunnel protocol {peer}, older than the oldest this side speaks \
             ({MIN_PROTOCOL}): upgrade it"
        ));
    }
    Ok(peer.min(ours).min(PROTOCOL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_runs_at_the_lower_revision() {
        // A peer from before the field (core N-1 with edge N): revision 1, no Drain.
        assert_eq!(negotiate(PROTOCOL, 0), Ok(1));
        assert_eq!(negotiate(PROTOCOL, 1), Ok(1));
        assert_eq!(negotiate(PROTOCOL, PROTOCOL), Ok(PROTOCOL));
        // A newer peer (edge N+1 with core N): this side's revision.
        assert_eq!(negotiate(PROTOCOL, PROTOCOL + 5), Ok(PROTOCOL));
        assert!(negotiate(PROTOCOL, 0).is_ok_and(|r| r < DRAIN));
        assert!(negotiate(PROTOCOL, PROTOCOL).is_ok_and(|r| r >= DRAIN));
        // This side told the peer it speaks less (a core configured as an older one).
        assert_eq!(negotiate(0, PROTOCOL), Ok(1));
    }
}
