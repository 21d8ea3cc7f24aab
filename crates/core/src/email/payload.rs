//! Addresses of users carried inside stanzas: where they are, and rewriting them.
//!
//! Translated, wherever they are in a stanza (at any depth, e.g. inside a MAM result):
//!
//! | element | namespace | attributes |
//! | --- | --- | --- |
//! | `<item>`, `<actor>` (room presence and messages, XEP-0045) | `http://jabber.org/protocol/muc#user` | `jid` |
//! | `<invite>`, `<decline>` (mediated invitations, XEP-0045) | `http://jabber.org/protocol/muc#user` | `from`, `to` |
//! | `<item>`, `<actor>` (affiliation and role lists, XEP-0045) | `http://jabber.org/protocol/muc#admin` | `jid` |
//! | `<address>` (extended addressing, XEP-0033) | `http://jabber.org/protocol/address` | `jid` |
//! | `<item>` (roster item exchange, XEP-0144) | `http://jabber.org/protocol/rosterx` | `jid` |
//! | `<delay>` (delayed delivery, XEP-0203) | `urn:xmpp:delay` | `from` |
//! | the `<message>`, `<presence>` or `<iq>` inside `<forwarded>` (XEP-0297: carbons, MAM) | `urn:xmpp:forward:0` | `from`, `to` |
//!
//! Not translated: a XEP-0249 direct invitation's `jid` (a room, never a user), a room's
//! `<destroy jid>` (a room too), and everything not listed (PubSub/PEP publishers, vCards,
//! roster pushes, which never cross federation, and any other payload).
//!
//! What an address becomes is the caller's rule ([`super::Translation`]): only addresses
//! with a local part are ever translated, and the resource is kept.

use causeway_xmpp::{Element, Node};

/// XEP-0045 occupant data.
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 affiliation and role administration.
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// XEP-0033 extended stanza addressing.
pub const ADDRESS: &str = "http://jabber.org/protocol/address";
/// XEP-0144 roster item exchange.
pub const ROSTERX: &str = "http://jabber.org/protocol/rosterx";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0297 stanza forwarding.
pub const FORWARD: &str = "urn:xmpp:forward:0";

/// Payload elements that carry users' addresses: (namespace, element, attributes).
const ADDRESS_ATTRIBUTES: &[(&str, &str, &[&str])] = &[
    (MUC_USER, "item", &["jid"]),
    (MUC_USER, "actor", &["jid"]),
    (MUC_USER, "invite", &["from", "to"]),
    (MUC_USER, "decline", &["from", "to"]),
    (MUC_ADMIN, "item", &["jid"]),
    (MUC_ADMIN, "actor", &["jid"]),
    (ADDRESS, "address", &["jid"]),
    (ROSTERX, "item", &["jid"]),
    (DELAY, "delay", &["from"]),
];

/// The addresses of a forwarded stanza.
const FORWARDED_STANZA: &[&str] = &["from", "to"];

/// Rewrite the users' addresses in the payload of `stanza` (its descendants: not its own
/// `from`/`to`) with `translate`, which gets an attribute's value and returns its new value,
/// or None to leave it. Returns whether anything changed.
pub fn translate(stanza: &mut Element, translate: &dyn Fn(&str) -> Option<String>) -> bool {
    children(stanza, false, translate)
}

/// [`translate`] on the element children of `el`; `forwarded`: `el` is a `<forwarded>`.
fn children(el: &mut Element, forwarded: bool, translate: &dyn Fn(&str) -> Option<String>) -> bool {
    let mut changed = false;
    for child in &mut el.children {
        if let Node::Element(child) = child {
            changed |= element(child, forwarded, translate);
        }
    }
    changed
}

/// One element and its descendants. Depth is bounded by the parser (`Limits::max_depth`).
fn element(
    el: &mut Element,
    in_forwarded: bool,
    translate: &dyn Fn(&str) -> Option<String>,
) -> bool {
    let attrs = if in_forwarded && matches!(el.name.as_str(), "message" | "presence" | "iq") {
        FORWARDED_STANZA
    } else {
        ADDRESS_ATTRIBUTES
            .iter()
            .find(|(ns, name, _)| el.is(name, ns))
            .map_or(&[][..], |(_, _, attrs)| attrs)
    };
    let mut changed = false;
    for &attr in attrs {
        if let Some(value) = el.attr(attr).and_then(translate) {
            el.set_attr(attr, &value);
            changed = true;
        }
    }
    let forwarded = el.is("forwarded", FORWARD);
    changed | children(el, forwarded, translate)
}

#[cfg(test)]
mod tests {
    use crate::email::testing::{on, out, text, tunnel, USERS};
    use crate::email::Inbound;

    /// Outbound through a translation with the test users: the payload as it leaves.
    fn outbound(xml: &str) -> String {
        let st = on(USERS).outbound(out("example.com", xml));
        text(&st.payload).to_owned()
    }

    /// Inbound through a translation with the test users: the payload as it is delivered.
    fn inbound(xml: &str) -> String {
        match on(USERS).inbound(tunnel("example.com", xml)) {
            Inbound::Deliver(st) => text(&st.payload).to_owned(),
            Inbound::Refused { .. } => panic!("refused {xml}"),
        }
    }

    #[test]
    fn muc_items_of_local_users_leave_as_email_addresses() {
        // A non-anonymous room on our chat node tells a partner who alice is.
        assert_eq!(
            outbound(
                "<presence from='room@conference.example.com/alice' to='bob@partner.test/p'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'>\
                 <item affiliation='owner' role='moderator' jid='alice@example.com/laptop'/>\
                 </x></presence>"
            ),
            "<presence from='room@conference.example.com/alice' to='bob@partner.test/p'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='owner' role='moderator' jid='alice.smith@example.com/laptop'/>\
             </x></presence>"
        );
        // A kick by erin: the actor too; a bare item jid stays bare.
        assert_eq!(
            outbound(
                "<presence from='room@conference.example.com/x' to='bob@partner.test/p' type='unavailable'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'>\
                 <item affiliation='none' role='none' jid='alice@example.com'>\
                 <actor jid='erin@example.com/desk' nick='erin'/></item>\
                 <status code='307'/></x></presence>"
            ),
            "<presence from='room@conference.example.com/x' to='bob@partner.test/p' type='unavailable'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='none' role='none' jid='alice.smith@example.com'>\
             <actor jid='erin.jones@example.org/desk' nick='erin'/></item>\
             <status code='307'/></x></presence>"
        );
        // An affiliation list sent to a partner admin.
        assert_eq!(
            outbound(
                "<iq from='room@conference.example.com' to='bob@partner.test/p' id='a' type='result'>\
                 <query xmlns='http://jabber.org/protocol/muc#admin'>\
                 <item affiliation='member' jid='erin@example.com'/>\
                 <item affiliation='member' jid='bob@partner.test'/></query></iq>"
            ),
            "<iq from='room@conference.example.com' to='bob@partner.test/p' id='a' type='result'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item affiliation='member' jid='erin.jones@example.org'/>\
             <item affiliation='member' jid='bob@partner.test'/></query></iq>"
        );
    }

    #[test]
    fn muc_items_naming_our_email_addresses_arrive_as_jids() {
        // alice in a partner's non-anonymous room sees her own JID, and an admin's list names
        // her by JID for our MUC service.
        assert_eq!(
            inbound(
                "<presence from='ops@conference.partner.test/alice' to='alice.smith@example.com/laptop'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'>\
                 <item affiliation='none' role='participant' jid='Alice.Smith@example.com/laptop'/>\
                 <status code='110'/></x></presence>"
            ),
            "<presence from='ops@conference.partner.test/alice' to='alice@example.com/laptop'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='none' role='participant' jid='alice@example.com/laptop'/>\
             <status code='110'/></x></presence>"
        );
        assert_eq!(
            inbound(
                "<iq from='bob@partner.test/p' to='room@conference.example.com' id='b' type='set'>\
                 <query xmlns='http://jabber.org/protocol/muc#admin'>\
                 <item affiliation='member' jid='erin.jones@example.org'/></query></iq>"
            ),
            "<iq from='bob@partner.test/p' to='room@conference.example.com' id='b' type='set'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item affiliation='member' jid='erin@example.com'/></query></iq>"
        );
    }

    #[test]
    fn mediated_invitations_and_declines_both_ways() {
        // Our room relays alice's invitation to bob.
        assert_eq!(
            outbound(
                "<message from='room@conference.example.com' to='bob@partner.test'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'>\
                 <invite from='alice@example.com/laptop'><reason>join us</reason></invite>\
                 </x></message>"
            ),
            "<message from='room@conference.example.com' to='bob@partner.test'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite from='alice.smith@example.com/laptop'><reason>join us</reason></invite>\
             </x></message>"
        );
        // bob declines to the address he knows; our room must reach alice's JID.
        assert_eq!(
            inbound(
                "<message from='bob@partner.test/p' to='room@conference.example.com'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'>\
                 <decline to='alice.smith@example.com'/></x></message>"
            ),
            "<message from='bob@partner.test/p' to='room@conference.example.com'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <decline to='alice@example.com'/></x></message>"
        );
        // bob invites erin into our room, by her email address.
        assert!(inbound(
            "<message from='bob@partner.test/p' to='room@conference.example.com'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><invite to='erin.jones@example.org'/></x></message>"
        )
        .contains("<invite to='erin@example.com'/>"));
        // A decline relayed by a partner's room to alice, from erin: both translated.
        assert!(inbound(
            "<message from='ops@conference.partner.test' to='alice.smith@example.com'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <decline from='erin.jones@example.org/desk'/></x></message>"
        )
        .contains("<decline from='erin@example.com/desk'/>"));
    }

    #[test]
    fn a_direct_invitation_names_a_room_and_is_left_alone() {
        // The room's address here equals a user's JID, to show the rule is not applied.
        let left = outbound(
            "<message from='alice@example.com/l' to='bob@partner.test'>\
             <x xmlns='jabber:x:conference' jid='erin@example.com' reason='join us'/></message>",
        );
        assert_eq!(
            left,
            "<message from='alice.smith@example.com/l' to='bob@partner.test'>\
             <x xmlns='jabber:x:conference' jid='erin@example.com' reason='join us'/></message>"
        );
    }

    #[test]
    fn extended_addresses_and_roster_exchange() {
        assert_eq!(
            outbound(
                "<message from='dave@example.com/x' to='bob@partner.test'>\
                 <addresses xmlns='http://jabber.org/protocol/address'>\
                 <address type='to' jid='bob@partner.test'/>\
                 <address type='cc' jid='alice@example.com/laptop'/>\
                 <address type='bcc' jid='conference.example.com'/>\
                 </addresses><body>hi</body></message>"
            ),
            "<message from='dave@example.com/x' to='bob@partner.test'>\
             <addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='to' jid='bob@partner.test'/>\
             <address type='cc' jid='alice.smith@example.com/laptop'/>\
             <address type='bcc' jid='conference.example.com'/>\
             </addresses><body>hi</body></message>"
        );
        assert_eq!(
            inbound(
                "<message from='bob@partner.test/p' to='dave@example.com'>\
                 <x xmlns='http://jabber.org/protocol/rosterx'>\
                 <item action='add' jid='erin.jones@example.org' name='Erin'/>\
                 <item action='add' jid='carol@partner2.test' name='Carol'/></x></message>"
            ),
            "<message from='bob@partner.test/p' to='dave@example.com'>\
             <x xmlns='http://jabber.org/protocol/rosterx'>\
             <item action='add' jid='erin@example.com' name='Erin'/>\
             <item action='add' jid='carol@partner2.test' name='Carol'/></x></message>"
        );
        assert!(outbound(
            "<message from='dave@example.com/x' to='bob@partner.test'>\
             <x xmlns='http://jabber.org/protocol/rosterx'><item action='add' jid='erin@example.com'/></x></message>"
        )
        .contains("jid='erin.jones@example.org'"));
        assert!(inbound(
            "<message from='bob@partner.test/p' to='dave@example.com'>\
             <addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='replyto' jid='Alice.Smith@example.com'/></addresses></message>"
        )
        .contains("jid='alice@example.com'"));
    }

    #[test]
    fn forwarded_stanzas_and_delays() {
        // A MUC MAM result from our room: the archived message's item, and the forwarded
        // stanza's own addresses, at depth.
        let archived = outbound(
            "<message from='room@conference.example.com' to='bob@partner.test/p'>\
             <result xmlns='urn:xmpp:mam:2' queryid='q' id='1'>\
             <forwarded xmlns='urn:xmpp:forward:0'>\
             <delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z' from='alice@example.com/laptop'/>\
             <message xmlns='jabber:client' from='alice@example.com/laptop' to='erin@example.com' type='chat'>\
             <body>hi</body></message></forwarded></result></message>",
        );
        assert_eq!(
            archived,
            "<message from='room@conference.example.com' to='bob@partner.test/p'>\
             <result xmlns='urn:xmpp:mam:2' queryid='q' id='1'>\
             <forwarded xmlns='urn:xmpp:forward:0'>\
             <delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z' from='alice.smith@example.com/laptop'/>\
             <message xmlns='jabber:client' from='alice.smith@example.com/laptop' to='erin.jones@example.org' type='chat'>\
             <body>hi</body></message></forwarded></result></message>"
        );
        let forwarded = inbound(
            "<message from='bob@partner.test/p' to='dave@example.com'>\
             <forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='carol@partner2.test/c' to='alice.smith@example.com/laptop'>\
             <body>fwd</body></message></forwarded></message>",
        );
        assert!(
            forwarded.contains("from='carol@partner2.test/c' to='alice@example.com/laptop'"),
            "{forwarded}"
        );
        // Only a forwarded stanza's from/to: a message elsewhere in a payload is not one.
        let other = outbound(
            "<message from='dave@example.com/x' to='bob@partner.test'>\
             <wrapper xmlns='urn:example'><message from='alice@example.com'/></wrapper></message>",
        );
        assert!(
            other.contains("<message from='alice@example.com'/>"),
            "{other}"
        );
    }

    #[test]
    fn inbound_payloads_naming_raw_jids_are_left_alone() {
        // A partner that names alice by her JID in a payload: not ours to correct (only her
        // email address is known outside), and not a reason to drop the stanza.
        let before = tunnel(
            "example.com",
            "<message from='bob@partner.test/p' to='dave@example.com'>\
             <addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='cc' jid='alice@example.com'/></addresses></message>",
        );
        let ptr = before.payload.as_ptr();
        let Inbound::Deliver(after) = on(USERS).inbound(before) else {
            panic!("refused");
        };
        assert_eq!(after.payload.as_ptr(), ptr, "re-serialized");
    }

    #[test]
    fn payloads_with_nothing_to_translate_keep_their_bytes() {
        let t = on(USERS);
        for xml in [
            // Other users, rooms, servers; a namespace we do not translate.
            "<presence from='room@conference.example.com/dave' to='bob@partner.test/p'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item jid='dave@example.com/x' role='participant'/></x></presence>",
            "<message from='dave@example.com/x' to='bob@partner.test'>\
             <x xmlns='jabber:x:conference' jid='room@conference.example.com'/></message>",
            "<message from='dave@example.com/x' to='bob@partner.test'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><destroy jid='alice@example.com'/></x></message>",
        ] {
            let before = out("example.com", xml);
            let ptr = before.payload.as_ptr();
            let after = t.outbound(before);
            assert_eq!(after.payload.as_ptr(), ptr, "re-serialized {xml}");
        }
        let before = tunnel(
            "example.com",
            "<presence from='ops@conference.partner.test/bob' to='dave@example.com/x'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item jid='bob@partner.test/p'/></x></presence>",
        );
        let ptr = before.payload.as_ptr();
        let Inbound::Deliver(after) = t.inbound(before) else {
            panic!("refused");
        };
        assert_eq!(after.payload.as_ptr(), ptr);
    }
}
