//! [`Client`]: a real XMPP client (slixmpp) driven over JSON lines.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ChildStdin, Command};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::json;

use crate::process::ChildGuard;
use crate::util::{temp_dir, TempDir};

const CLIENT_PY: &str = include_str!("client.py");
const PYTHON: &str = "/usr/bin/python3";

/// Something the client saw (or a result of one of its commands).
///
/// `from`/`to` are full JIDs as on the wire; `xml` is the whole stanza.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    /// The session is established (bound JID), roster fetched, initial
    /// presence sent (unless disabled).
    SessionStart { jid: String },
    /// Any `<message/>`; `mtype` is `normal` when the stanza has no type.
    Message {
        from: String,
        to: String,
        mtype: String,
        id: Option<String>,
        body: Option<String>,
        xml: String,
    },
    /// Any `<presence/>`; `ptype` is `None` for available presence.
    Presence {
        from: String,
        to: String,
        ptype: Option<String>,
        status: Option<String>,
        show: Option<String>,
        xml: String,
    },
    /// An `<iq type='result'/>` or `<iq type='error'/>` (also those answering
    /// the client's own requests).
    Iq {
        from: String,
        itype: String,
        id: Option<String>,
        xml: String,
    },
    /// Completion of a command (internal; not returned by `next_event`).
    Ack {
        id: Option<u64>,
        ok: bool,
        error: Option<String>,
    },
    /// Answer to [`Client::roster`] (internal).
    Roster {
        id: Option<u64>,
        items: serde_json::Value,
    },
    /// Authentication failure, stream error, a failed fire-and-forget command...
    Error { text: String },
    /// The stream was closed.
    Disconnected { reason: Option<String> },
    /// An event this version does not know.
    #[serde(other)]
    Other,
}

impl ClientEvent {
    /// For a message with a body (not of type error) from `from_bare`: the body.
    fn message_body_from(&self, from_bare: &str) -> Option<&str> {
        match self {
            ClientEvent::Message {
                from,
                mtype,
                body: Some(body),
                ..
            } if mtype != "error" && bare(from) == from_bare => Some(body.as_str()),
            _ => None,
        }
    }
}

/// The bare part of a JID string.
fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `starttls` (use it when offered, the default), `required` (fail
    /// without it), `none` (plaintext), `direct` (TLS from the first byte).
    /// Certificates are never verified.
    pub tls: String,
    /// Send initial presence after session start (default true; needed to
    /// receive messages addressed to the bare JID).
    pub initial_presence: bool,
    /// Answer subscription requests automatically: `None` (default) leaves
    /// them to the test, `Some(true)` accepts and subscribes back.
    pub auto_authorize: Option<bool>,
    /// Resource to bind (server-assigned when `None`).
    pub resource: Option<String>,
    /// How long to wait for the session.
    pub connect_timeout: Duration,
    /// slixmpp debug logging to the client's log.
    pub debug: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls: "starttls".to_owned(),
            initial_presence: true,
            auto_authorize: None,
            resource: None,
            connect_timeout: Duration::from_secs(20),
            debug: false,
        }
    }
}

/// A slixmpp client process (`/usr/bin/python3`), killed on drop.
///
/// Event handling: every event is kept in arrival order. [`next_event`]
/// returns them one by one. The `expect_*`/`collect_*` helpers take the
/// events they match (looking first at events kept from earlier calls) and
/// keep every other event, in order, for later calls, so nothing is lost.
///
/// [`next_event`]: Client::next_event
pub struct Client {
    jid: String,
    stdin: ChildStdin,
    rx: Receiver<ClientEvent>,
    backlog: VecDeque<ClientEvent>,
    next_id: u64,
    log: PathBuf,
    guard: ChildGuard,
    _dir: TempDir,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("jid", &self.jid).finish()
    }
}

impl Client {
    /// Connects `jid` (bare) to the c2s port at `server` (STARTTLS when
    /// offered, no certificate verification) and waits for the session.
    pub fn connect(jid: &str, password: &str, server: SocketAddr) -> Result<Self> {
        Self::connect_with(jid, password, server, ClientOptions::default())
    }

    /// [`connect`](Self::connect) with options.
    pub fn connect_with(
        jid: &str,
        password: &str,
        server: SocketAddr,
        opts: ClientOptions,
    ) -> Result<Self> {
        if !server.ip().is_loopback() {
            bail!("test clients only connect to loopback addresses, not {server}");
        }
        let dir = temp_dir("cw-client-")?;
        let script = dir.path().join("client.py");
        fs::write(&script, CLIENT_PY)?;
        let conf = json!({
            "jid": jid,
            "password": password,
            "host": server.ip().to_string(),
            "port": server.port(),
            "tls": opts.tls,
            "initial_presence": opts.initial_presence,
            "auto_authorize": opts.auto_authorize,
            "resource": opts.resource,
            "debug": opts.debug,
        });
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-u")
            .arg(&script)
            .arg(conf.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir.path());
        let log = dir.path().join("client.log");
        let (guard, stdin, stdout) = ChildGuard::spawn_piped(&format!("client {jid}"), cmd, &log)?;
        let guard = guard.with_grace(Duration::ZERO);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ev = serde_json::from_str::<ClientEvent>(&line).unwrap_or_else(|e| {
                    ClientEvent::Error {
                        text: format!("unparsable client output {line:?}: {e}"),
                    }
                });
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        let mut client = Self {
            jid: jid.to_owned(),
            stdin,
            rx,
            backlog: VecDeque::new(),
            next_id: 1,
            log,
            guard,
            _dir: dir,
        };
        let deadline = Instant::now() + opts.connect_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.recv(left) {
                Ok(Some(ClientEvent::SessionStart { .. })) => return Ok(client),
                Ok(Some(ev @ (ClientEvent::Error { .. } | ClientEvent::Disconnected { .. }))) => {
                    bail!(
                        "{jid} could not connect to {server}: {ev:?}; log:\n{}",
                        client.log_tail(30)
                    )
                }
                Ok(Some(ev)) => client.backlog.push_back(ev),
                Ok(None) => bail!(
                    "{jid}: no session with {server} within {:?}; log:\n{}",
                    opts.connect_timeout,
                    client.log_tail(30)
                ),
                Err(e) => bail!("{jid}: {e:#}; log:\n{}", client.log_tail(30)),
            }
        }
    }

    /// True while the client process runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    /// The JID given at connect.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// The last `n` lines of the client's own log (stderr of slixmpp).
    pub fn log_tail(&self, n: usize) -> String {
        crate::util::tail_file(&self.log, n)
    }

    /// Raw receive from the process (no backlog).
    fn recv(&mut self, timeout: Duration) -> Result<Option<ClientEvent>> {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => Ok(Some(ev)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(anyhow!("the client process of {} has exited", self.jid))
            }
        }
    }

    fn write_cmd(&mut self, mut cmd: serde_json::Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        let line = format!("{cmd}\n");
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("writing to the client of {}", self.jid))?;
        Ok(id)
    }

    /// Sends a command and waits for its completion (ack or roster answer);
    /// other events are kept.
    fn request(&mut self, cmd: serde_json::Value, timeout: Duration) -> Result<ClientEvent> {
        let what = cmd["cmd"].as_str().unwrap_or("?").to_owned();
        let id = self.write_cmd(cmd)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(ClientEvent::Ack {
                    id: Some(i),
                    ok,
                    error,
                }) if i == id => {
                    if ok {
                        return Ok(ClientEvent::Ack {
                            id: Some(i),
                            ok,
                            error,
                        });
                    }
                    bail!(
                        "{}: command {what} failed: {}",
                        self.jid,
                        error.unwrap_or_default()
                    );
                }
                Some(ev @ ClientEvent::Roster { id: Some(i), .. }) if i == id => return Ok(ev),
                Some(ClientEvent::Ack { .. } | ClientEvent::Roster { .. }) => {}
                Some(ev) => self.backlog.push_back(ev),
                None => bail!("{}: command {what} not done within {timeout:?}", self.jid),
            }
        }
    }

    /// Sends a command without waiting (the client reports a failure as an
    /// [`ClientEvent::Error`]).
    fn fire(&mut self, mut cmd: serde_json::Value) -> Result<()> {
        cmd["noack"] = json!(true);
        self.write_cmd(cmd).map(|_| ())
    }

    /// Sends a `chat` message.
    pub fn send_message(&mut self, to: &str, body: &str) -> Result<()> {
        self.fire(json!({"cmd": "message", "to": to, "body": body, "mtype": "chat"}))
    }

    /// Sends a message of type `mtype` (`chat`, `normal`, `groupchat`, `headline`).
    pub fn send_message_typed(&mut self, to: &str, body: &str, mtype: &str) -> Result<()> {
        self.fire(json!({"cmd": "message", "to": to, "body": body, "mtype": mtype}))
    }

    /// Sends raw XML on the stream (a whole stanza).
    pub fn send_raw(&mut self, xml: &str) -> Result<()> {
        self.fire(json!({"cmd": "raw", "xml": xml}))
    }

    /// Sends presence: `to` None is broadcast; `ptype` e.g. `subscribe`,
    /// `subscribed`, `unsubscribe`, `unavailable`, None for available.
    pub fn send_presence(
        &mut self,
        to: Option<&str>,
        ptype: Option<&str>,
        status: Option<&str>,
    ) -> Result<()> {
        self.fire(json!({"cmd": "presence", "to": to, "ptype": ptype, "status": status}))
    }

    /// Sends `n` chat messages `msg-0` .. `msg-{n-1}` to `to` as fast as the
    /// client can, and returns once all were written to the stream.
    pub fn send_burst(&mut self, to: &str, n: usize) -> Result<()> {
        self.send_burst_prefixed(to, n, "msg-")
    }

    /// [`send_burst`](Self::send_burst) with bodies `{prefix}{i}`.
    pub fn send_burst_prefixed(&mut self, to: &str, n: usize, prefix: &str) -> Result<()> {
        let timeout = Duration::from_secs(30) + Duration::from_millis(n as u64);
        self.request(
            json!({"cmd": "burst", "to": to, "n": n, "prefix": prefix}),
            timeout,
        )
        .map(|_| ())
    }

    /// Round trip to the client process: every command sent before has been
    /// handed to slixmpp when this returns.
    pub fn sync(&mut self) -> Result<()> {
        self.request(json!({"cmd": "ping"}), Duration::from_secs(10))
            .map(|_| ())
    }

    /// Joins a MUC room (`room@conference.example.com`) as `nick`, waiting for
    /// the self-presence (status 110); a new room is configured as an
    /// instant room. No history is requested.
    pub fn join_muc(&mut self, room_jid: &str, nick: &str) -> Result<()> {
        self.join_muc_with_history(room_jid, nick, 0)
    }

    /// [`join_muc`](Self::join_muc) asking for up to `history` past messages of the room
    /// (they arrive as groupchat messages with a delay element).
    pub fn join_muc_with_history(
        &mut self,
        room_jid: &str,
        nick: &str,
        history: u32,
    ) -> Result<()> {
        self.request(
            json!({"cmd": "join_muc", "room": room_jid, "nick": nick, "timeout": 20, "history": history}),
            Duration::from_secs(25),
        )
        .map(|_| ())
    }

    /// Sends a groupchat message to a room.
    pub fn send_groupchat(&mut self, room: &str, body: &str) -> Result<()> {
        self.send_message_typed(room, body, "groupchat")
    }

    /// Fetches the roster from the server: `{"jid": {"subscription": "both",
    /// "ask": null|"subscribe", "name": .., "groups": [..]}}`.
    pub fn roster(&mut self) -> Result<serde_json::Value> {
        match self.request(json!({"cmd": "roster"}), Duration::from_secs(25))? {
            ClientEvent::Roster { items, .. } => Ok(items),
            other => bail!("unexpected answer to roster: {other:?}"),
        }
    }

    /// The next event (kept events first), or `None` after `timeout`.
    /// Command acknowledgements are not returned.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<ClientEvent>> {
        if let Some(ev) = self.backlog.pop_front() {
            return Ok(Some(ev));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(ClientEvent::Ack { .. } | ClientEvent::Roster { .. }) => continue,
                other => return Ok(other),
            }
        }
    }

    /// Waits for the first event that `pred` accepts (kept events first);
    /// every other event is kept for later.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ClientEvent) -> bool,
    ) -> Result<Option<ClientEvent>> {
        if let Some(pos) = self.backlog.iter().position(&mut pred) {
            return Ok(self.backlog.remove(pos));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(ClientEvent::Ack { .. } | ClientEvent::Roster { .. }) => {}
                Some(ev) if pred(&ev) => return Ok(Some(ev)),
                Some(ev) => self.backlog.push_back(ev),
                None => return Ok(None),
            }
        }
    }

    /// Waits for a message (not of type error) from `from_bare` with exactly
    /// `body`. Other events are kept for later calls.
    pub fn expect_message(&mut self, from_bare: &str, body: &str, timeout: Duration) -> Result<()> {
        let found = self.wait_for(timeout, |ev| ev.message_body_from(from_bare) == Some(body))?;
        if found.is_none() {
            bail!(
                "{}: no message {body:?} from {from_bare} within {timeout:?}; kept events: {}",
                self.jid,
                self.backlog_summary()
            );
        }
        Ok(())
    }

    /// Waits for a presence from `from_bare` (any resource) whose type is
    /// `ptype` (`None`: available) and returns it. Other events are kept.
    pub fn expect_presence(
        &mut self,
        from_bare: &str,
        ptype: Option<&str>,
        timeout: Duration,
    ) -> Result<ClientEvent> {
        let found = self.wait_for(timeout, |ev| {
            matches!(ev, ClientEvent::Presence { from, ptype: t, .. }
                if bare(from) == from_bare && t.as_deref() == ptype)
        })?;
        found.ok_or_else(|| {
            anyhow!(
                "{}: no presence type {ptype:?} from {from_bare} within {timeout:?}; kept events: {}",
                self.jid,
                self.backlog_summary()
            )
        })
    }

    /// Collects the bodies of the next `n` messages (with a body, not of type
    /// error) from `from_bare`, in arrival order. Fails on timeout with the
    /// number received. Other events are kept.
    pub fn collect_messages(
        &mut self,
        from_bare: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(n);
        let mut kept = VecDeque::new();
        while out.len() < n {
            match self.backlog.pop_front() {
                Some(ev) => match ev.message_body_from(from_bare) {
                    Some(b) => out.push(b.to_owned()),
                    None => kept.push_back(ev),
                },
                None => break,
            }
        }
        kept.append(&mut self.backlog);
        self.backlog = kept;
        let deadline = Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(ClientEvent::Ack { .. } | ClientEvent::Roster { .. }) => {}
                Some(ev) => match ev.message_body_from(from_bare) {
                    Some(b) => out.push(b.to_owned()),
                    None => self.backlog.push_back(ev),
                },
                None => bail!(
                    "{}: {} of {n} messages from {from_bare} within {timeout:?} (last: {:?}); kept events: {}",
                    self.jid,
                    out.len(),
                    out.last(),
                    self.backlog_summary()
                ),
            }
        }
        Ok(out)
    }

    /// Short description of kept events, for error messages.
    fn backlog_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .backlog
            .iter()
            .take(20)
            .map(|ev| match ev {
                ClientEvent::Message {
                    from, mtype, body, ..
                } => format!("message({mtype}) from {from}: {body:?}"),
                ClientEvent::Presence { from, ptype, .. } => {
                    format!(
                        "presence({}) from {from}",
                        ptype.as_deref().unwrap_or("available")
                    )
                }
                other => format!("{other:?}"),
            })
            .collect();
        if self.backlog.len() > 20 {
            parts.push(format!("... {} more", self.backlog.len() - 20));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// Closes the stream cleanly (`</stream:stream>`) and ends the process.
    pub fn disconnect(mut self) {
        let _ = self.fire(json!({"cmd": "disconnect"}));
        let _ = self.wait_for(Duration::from_secs(3), |ev| {
            matches!(ev, ClientEvent::Disconnected { .. })
        });
    }
}
