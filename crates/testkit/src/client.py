# causeway-testkit XMPP client: slixmpp driven by JSON lines.
#
# argv[1]: a JSON object {jid, password, host, port, tls, initial_presence,
#          auto_authorize, resource}.
# stdin:  one JSON command per line, {"cmd": ..., "id": N, ...}.
# stdout: one JSON event per line, {"event": ...}.
# Logs go to stderr. EOF on stdin disconnects and exits.
import asyncio
import json
import logging
import ssl
import sys
import threading

from slixmpp import ClientXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp.xmlstream import ET

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"

out_lock = threading.Lock()


def emit(**obj):
    line = json.dumps(obj)
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def child_text(xml, ns, name):
    el = xml.find("{%s}%s" % (ns, name))
    return el.text if el is not None and el.text is not None else None


class Driver:
    def __init__(self, conf):
        self.conf = conf
        jid = conf["jid"]
        if conf.get("resource"):
            jid = jid + "/" + conf["resource"]
        x = ClientXMPP(jid, conf["password"])
        self.x = x
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        # None: subscription requests are left to the test.
        x.auto_authorize = conf.get("auto_authorize")
        x.auto_subscribe = bool(conf.get("auto_authorize"))
        x.whitespace_keepalive = False
        self.ns = "jabber:client"
        self.muc_waiters = {}  # room bare jid -> (future, nick)
        self.started = False
        x.add_event_handler("session_start", self.on_session_start)
        x.add_event_handler("failed_auth", self.on_failed_auth)
        x.add_event_handler("disconnected", self.on_disconnected)
        x.add_event_handler("connection_failed", self.on_connection_failed)
        x.add_event_handler("stream_error", self.on_stream_error)
        x.register_handler(Callback("cw message", MatchXPath("{%s}message" % self.ns), self.on_message))
        x.register_handler(Callback("cw presence", MatchXPath("{%s}presence" % self.ns), self.on_presence))
        x.register_handler(Callback("cw iq", MatchXPath("{%s}iq" % self.ns), self.on_iq))

    # ---- events -------------------------------------------------------
    async def on_session_start(self, _ev):
        try:
            await self.x.get_roster(timeout=20)
        except Exception as e:  # noqa: BLE001
            logging.warning("roster fetch failed: %s", e)
        if self.conf.get("initial_presence", True):
            self.x.send_presence()
        self.started = True
        emit(event="session_start", jid=str(self.x.boundjid))

    def on_failed_auth(self, _ev):
        emit(event="error", text="authentication failed")

    def on_connection_failed(self, ev):
        emit(event="error", text="connection failed: %s" % (ev,))

    def on_stream_error(self, ev):
        emit(event="error", text="stream error: %s" % (ev,))

    def on_disconnected(self, reason):
        emit(event="disconnected", reason=str(reason) if reason is not None else None)

    def on_message(self, msg):
        xml = msg.xml
        emit(
            event="message",
            **{
                "from": xml.get("from", ""),
                "to": xml.get("to", ""),
                "mtype": xml.get("type", "normal"),
                "id": xml.get("id"),
                "body": child_text(xml, self.ns, "body"),
                "xml": str(msg),
            },
        )

    def on_presence(self, pres):
        xml = pres.xml
        frm = xml.get("from", "")
        ptype = xml.get("type")
        bare, _, res = frm.partition("/")
        waiter = self.muc_waiters.get(bare)
        if waiter is not None:
            fut, nick = waiter
            codes = set()
            for x in xml.findall("{%s}x" % NS_MUC_USER):
                for st in x.findall("{%s}status" % NS_MUC_USER):
                    codes.add(st.get("code"))
            if ptype == "error" and not fut.done():
                fut.set_result(("error", str(pres)))
            elif res == nick and ("110" in codes) and not fut.done():
                fut.set_result(("ok", codes))
        emit(
            event="presence",
            **{
                "from": frm,
                "to": xml.get("to", ""),
                "ptype": ptype,
                "status": child_text(xml, self.ns, "status"),
                "show": child_text(xml, self.ns, "show"),
                "xml": str(pres),
            },
        )

    def on_iq(self, iq):
        xml = iq.xml
        if xml.get("type") in ("result", "error"):
            emit(
                event="iq",
                **{
                    "from": xml.get("from", ""),
                    "itype": xml.get("type"),
                    "id": xml.get("id"),
                    "xml": str(iq),
                },
            )

    # ---- commands -----------------------------------------------------
    def dispatch(self, line):
        try:
            cmd = json.loads(line)
        except ValueError as e:
            emit(event="error", text="bad command line: %s" % e)
            return
        self.queue.put_nowait(cmd)

    async def worker(self):
        # One command at a time, in order.
        while True:
            cmd = await self.queue.get()
            await self.run(cmd)

    async def run(self, cmd):
        cid = cmd.get("id")
        noack = cmd.get("noack", False)
        try:
            result = await self.execute(cmd)
            if cmd.get("cmd") == "roster":
                emit(event="roster", id=cid, items=result)
            elif not noack:
                emit(event="ack", id=cid, ok=True, error=None)
        except Exception as e:  # noqa: BLE001
            logging.exception("command failed")
            err = "%s: %s" % (type(e).__name__, e)
            if noack:
                emit(event="error", text="command %s failed: %s" % (cmd.get("cmd"), err))
            else:
                emit(event="ack", id=cid, ok=False, error=err)

    async def execute(self, cmd):
        x = self.x
        c = cmd["cmd"]
        if c == "message":
            x.send_message(mto=cmd["to"], mbody=cmd["body"], mtype=cmd.get("mtype") or "chat")
        elif c == "burst":
            to, n, prefix = cmd["to"], int(cmd["n"]), cmd.get("prefix", "msg-")
            mtype = cmd.get("mtype") or "chat"
            for i in range(n):
                x.send_message(mto=to, mbody="%s%d" % (prefix, i), mtype=mtype)
                if i % 200 == 199:
                    await asyncio.sleep(0)
        elif c == "raw":
            x.send_raw(cmd["xml"])
        elif c == "presence":
            kw = {}
            if cmd.get("to"):
                kw["pto"] = cmd["to"]
            if cmd.get("ptype"):
                kw["ptype"] = cmd["ptype"]
            if cmd.get("status"):
                kw["pstatus"] = cmd["status"]
            x.send_presence(**kw)
        elif c == "join_muc":
            await self.join_muc(
                cmd["room"], cmd["nick"], float(cmd.get("timeout", 20)), int(cmd.get("history", 0))
            )
        elif c == "roster":
            # Without 'ver': always the full roster (no versioning shortcut).
            req = x.Iq()
            req["type"] = "get"
            req.enable("roster")
            iq = await req.send(timeout=20)
            items = {}
            for jid, it in iq["roster"]["items"].items():
                items[str(jid)] = {
                    "name": it.get("name") or None,
                    "subscription": it.get("subscription") or "none",
                    "ask": it.get("ask") or None,
                    "groups": list(it.get("groups") or []),
                }
            return items
        elif c == "ping":
            pass
        elif c == "disconnect":
            x.disconnect()
        else:
            raise ValueError("unknown command %r" % c)
        return None

    async def join_muc(self, room, nick, timeout, history=0):
        loop = asyncio.get_event_loop()
        fut = loop.create_future()
        self.muc_waiters[room] = (fut, nick)
        try:
            pres = self.x.make_presence(pto="%s/%s" % (room, nick))
            muc = ET.Element("{%s}x" % NS_MUC)
            hist = ET.SubElement(muc, "{%s}history" % NS_MUC)
            hist.set("maxstanzas", str(history))
            pres.xml.append(muc)
            pres.send()
            kind, info = await asyncio.wait_for(fut, timeout)
            if kind == "error":
                raise RuntimeError("MUC join refused: %s" % info)
            if "201" in info:
                # A new room: accept the default configuration (instant room).
                iq = self.x.make_iq_set(ito=room)
                q = ET.SubElement(iq.xml, "{%s}query" % NS_MUC_OWNER)
                form = ET.SubElement(q, "{jabber:x:data}x")
                form.set("type", "submit")
                await iq.send(timeout=timeout)
        finally:
            self.muc_waiters.pop(room, None)


def main():
    conf = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.DEBUG if conf.get("debug") else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    d = Driver(conf)
    d.queue = asyncio.Queue()
    x = d.x
    x.loop = loop
    loop.create_task(d.worker())

    def stdin_reader():
        for line in sys.stdin:
            line = line.strip()
            if line:
                loop.call_soon_threadsafe(d.dispatch, line)
        loop.call_soon_threadsafe(shutdown)

    def shutdown():
        try:
            x.disconnect(wait=0.5)
        except Exception:  # noqa: BLE001
            pass
        loop.call_later(1.0, loop.stop)

    tls = conf.get("tls", "starttls")
    x.connect(
        address=(conf["host"], int(conf["port"])),
        use_ssl=(tls == "direct"),
        force_starttls=(tls == "required"),
        disable_starttls=(tls in ("none", "direct")),
    )
    threading.Thread(target=stdin_reader, daemon=True).start()
    loop.run_forever()


if __name__ == "__main__":
    main()
