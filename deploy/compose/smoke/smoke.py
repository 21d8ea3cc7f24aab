#!/usr/bin/python3
"""The container lab's smoke test (run by deploy/compose/run.sh in the `client` container).

Users on both sides of the gateway, each on its own server's client port:
  inside    alice@example.com (Prosody 13), erin@internal2.example (ejabberd 24.12)
  internet  bob@partner.test (Prosody 13), carol@partner2.test (ejabberd 24.12),
            frank@partner3.test (Prosody 0.12), grace@partner4.test (ejabberd 23.01)
Checks, each of which fails the run:
  * messages both ways between alice and every partner user, and between erin and two
    partners (one of each generation);
  * presence both ways: subscription and availability between alice and every partner user;
  * a room on conference.example.com (our MUC, behind the gateway) joined by a user of every
    partner server: a message from inside reaches all of them, and theirs reach inside;
  * a room on conference.partner.test (a partner's MUC) joined by alice, both ways.
Prints one line per check (with the delivery time) and, last, a JSON summary line.
Passwords are <user>-secret. The servers' client addresses are the container lab's unless
CAUSEWAY_SMOKE_SERVERS (domain=ip,...) says otherwise.
"""
import asyncio
import json
import os
import ssl
import sys
import time

import slixmpp

SERVERS = {
    "example.com": ("10.231.1.11", "Prosody 13 (inside)"),
    "internal2.example": ("10.231.1.12", "ejabberd 24.12 (inside)"),
    "partner.test": ("10.231.3.31", "Prosody 13"),
    "partner2.test": ("10.231.3.32", "ejabberd 24.12"),
    "partner3.test": ("10.231.3.33", "Prosody 0.12"),
    "partner4.test": ("10.231.3.34", "ejabberd 23.01"),
}
# Another deployment (the two-host test) gives its own addresses, and labels if it likes:
# "domain=ip,domain=ip=label".
for item in filter(None, os.environ.get("CAUSEWAY_SMOKE_SERVERS", "").split(",")):
    name, _, rest = item.partition("=")
    ip, _, lbl = rest.partition("=")
    SERVERS[name] = (ip, lbl or SERVERS.get(name, ("", name))[1])
ALICE, ERIN = "alice@example.com", "erin@internal2.example"
PARTNERS = ["bob@partner.test", "carol@partner2.test", "frank@partner3.test", "grace@partner4.test"]
# A smaller deployment (the two-host test: one internal server, one partner) names its users:
# CAUSEWAY_SMOKE_USERS="alice@example.com,bob@partner.test". bob@partner.test comes first
# among the partners (its server hosts conference.partner.test); erin only when listed.
_users = [u for u in os.environ.get("CAUSEWAY_SMOKE_USERS", "").split(",") if u]
if _users:
    PARTNERS = [p for p in PARTNERS if p in _users]
    if ERIN not in _users:
        ERIN = None
PATIENCE = 30.0


class Failure(Exception):
    pass


def domain(jid):
    return jid.split("@", 1)[1].split("/", 1)[0]


def label(jid):
    return f"{jid} ({SERVERS[domain(jid)][1]})"


class User(slixmpp.ClientXMPP):
    def __init__(self, jid):
        super().__init__(jid, jid.split("@")[0] + "-secret")
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0045")
        # The lab's certificates come from a CA no one is told to trust.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        self.ready = asyncio.get_event_loop().create_future()
        self.seen = []
        self.changed = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        # slixmpp 1.8 against Prosody 13 fails SCRAM-PLUS (tls-exporter) and retries: only
        # the end of the mechanism list is a failure.
        self.add_event_handler("no_auth", self.on_no_auth)
        self.add_event_handler("message", self.on_stanza)
        self.add_event_handler("presence", self.on_stanza)

    async def on_start(self, _):
        self.send_presence()
        await self.get_roster()
        if not self.ready.done():
            self.ready.set_result(True)

    def on_no_auth(self, _):
        if not self.ready.done():
            self.ready.set_exception(Failure(f"{self.boundjid.bare}: authentication failed"))

    def on_stanza(self, st):
        self.seen.append(st)
        self.changed.set()

    async def expect(self, pred, what, timeout=PATIENCE):
        """The first stanza seen (now or within `timeout`) that satisfies `pred`; an error
        stanza about the same exchange fails at once with its condition."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while True:
            for i, st in enumerate(self.seen):
                if pred(st):
                    del self.seen[i]
                    return st
            self.changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                errors = [s for s in self.seen if s["type"] == "error"]
                hint = f"; errors seen: {[str(e)[:300] for e in errors[:2]]}" if errors else ""
                raise Failure(f"{self.boundjid.bare}: no {what} within {timeout:.0f} s{hint}")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


def from_bare(st, jid):
    return st["from"].bare == jid


async def message(users, a, b, results):
    body = f"hello {b} from {a} at {time.time():.6f}"
    t0 = time.monotonic()
    users[a].send_message(mto=b, mbody=body, mtype="chat")
    await users[b].expect(
        lambda st: st.name == "message" and from_bare(st, a) and st["body"] == body,
        f"message from {a}",
    )
    ms = (time.monotonic() - t0) * 1e3
    results.append({"check": "message", "from": a, "to": b, "ms": round(ms, 1)})
    print(f"  OK message   {label(a):<40} -> {label(b):<36} {ms:6.0f} ms", flush=True)


async def presence(users, a, b, results):
    t0 = time.monotonic()
    # A lab kept up (--stay) and tested again: already subscribed both ways.
    if users[a].client_roster[b]["subscription"] != "both":
        users[a].send_presence(pto=b, ptype="subscribe")
        # b's client approves and subscribes back (auto_authorize, auto_subscribe); then
        # each server sends the other's availability.
        await users[a].expect(
            lambda st: st.name == "presence" and from_bare(st, b) and st["type"] == "subscribed",
            f"subscription approval from {b}",
        )
    await users[b].expect(
        lambda st: st.name == "presence" and from_bare(st, a) and st["type"] == "available",
        f"available presence of {a}",
    )
    await users[a].expect(
        lambda st: st.name == "presence" and from_bare(st, b) and st["type"] == "available",
        f"available presence of {b}",
    )
    ms = (time.monotonic() - t0) * 1e3
    results.append({"check": "presence", "between": [a, b], "ms": round(ms, 1)})
    print(f"  OK presence  {label(a):<40} <> {label(b):<36} {ms:6.0f} ms", flush=True)


async def join(user, room, nick):
    """Join `room` as `nick` and wait for the room's presence of ourselves (slixmpp's MUC
    plugin reports it as got_online; it does not pass it on as a plain presence event)."""
    joined = asyncio.get_event_loop().create_future()

    def online(p):
        if p["muc"]["nick"] == nick and not joined.done():
            joined.set_result(True)

    user.add_event_handler(f"muc::{room}::got_online", online)
    user.plugin["xep_0045"].join_muc(room, nick)
    try:
        await asyncio.wait_for(joined, PATIENCE)
    except asyncio.TimeoutError:
        errors = [str(st)[:300] for st in user.seen if st["type"] == "error"]
        raise Failure(f"{user.boundjid.bare}: not in {room} within {PATIENCE:.0f} s; errors: {errors[:2]}")
    finally:
        user.del_event_handler(f"muc::{room}::got_online", online)


async def groupchat(users, room, sender, receivers, results):
    body = f"groupchat in {room} from {sender} at {time.time():.6f}"
    t0 = time.monotonic()
    users[sender].send_message(mto=room, mbody=body, mtype="groupchat")
    for r in receivers:
        await users[r].expect(
            lambda st: st.name == "message" and st["type"] == "groupchat"
            and st["from"].bare == room and st["body"] == body,
            f"groupchat message in {room} from {sender}",
        )
    ms = (time.monotonic() - t0) * 1e3
    results.append({"check": "groupchat", "room": room, "from": sender, "to": receivers,
                    "ms": round(ms, 1)})
    print(f"  OK groupchat {room}: {sender} -> {len(receivers)} occupants {ms:6.0f} ms", flush=True)


async def main():
    results = []
    users = {}
    jids = [ALICE] + ([ERIN] if ERIN else []) + PARTNERS
    try:
        for jid in jids:
            u = User(jid)
            u.connect((SERVERS[domain(jid)][0], 5222), force_starttls=True)
            users[jid] = u
        for jid in jids:
            try:
                await asyncio.wait_for(users[jid].ready, PATIENCE)
            except asyncio.TimeoutError:
                raise Failure(f"{jid}: no session within {PATIENCE:.0f} s")
        print(f"  logged in: {', '.join(jids)}", flush=True)

        for p in PARTNERS:
            await message(users, ALICE, p, results)
            await message(users, p, ALICE, results)
        for p in (sorted({PARTNERS[0], PARTNERS[-1]}) if ERIN else []):
            await message(users, ERIN, p, results)
            await message(users, p, ERIN, results)
        for p in PARTNERS:
            await presence(users, ALICE, p, results)

        ours = "lab@conference.example.com"
        await join(users[ALICE], ours, "alice")
        for p in PARTNERS:
            await join(users[p], ours, p.split("@")[0])
        await groupchat(users, ours, ALICE, PARTNERS, results)
        await groupchat(users, ours, PARTNERS[-1], [ALICE] + PARTNERS[:-1], results)

        theirs = "lab@conference.partner.test"
        await join(users[PARTNERS[0]], theirs, "bob")
        await join(users[ALICE], theirs, "alice")
        await groupchat(users, theirs, PARTNERS[0], [ALICE], results)
        await groupchat(users, theirs, ALICE, [PARTNERS[0]], results)
        ok = True
    except Failure as e:
        print(f"  FAIL {e}", flush=True)
        ok = False
    for u in users.values():
        u.disconnect()
    await asyncio.sleep(0.5)
    print(json.dumps({"ok": ok, "results": results}), flush=True)
    return ok


if __name__ == "__main__":
    ok = asyncio.get_event_loop().run_until_complete(asyncio.wait_for(main(), 300))
    sys.exit(0 if ok else 1)
