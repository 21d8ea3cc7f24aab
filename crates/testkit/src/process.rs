//! [`ChildGuard`]: a spawned process (and everything under it) killed on drop.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::util::tail_file;

/// A child process started in its own process group.
///
/// On [`kill`](Self::kill) or drop it sends SIGTERM to the process group and
/// to every descendant found under the child in `/proc` (some, like Erlang's
/// `erl_child_setup`, start their own session), waits up to the grace period
/// (default 3 s; 0 means SIGKILL at once), then SIGKILLs whatever is left and
/// waits until all of it is gone. Only processes started by this guard are
/// ever signalled.
pub struct ChildGuard {
    name: String,
    child: Child,
    pid: i32,
    log_path: PathBuf,
    grace: Duration,
    reader: Option<JoinHandle<()>>,
    killed: bool,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log", &self.log_path)
            .finish()
    }
}

fn open_log(log: &Path) -> Result<File> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group with stdin from /dev/null and
    /// stdout/stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = open_log(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self::from_child(name, child, log, None))
    }

    /// Spawns `cmd` in a new process group with piped stdin and stdout
    /// (returned) and stderr appended to `log`.
    pub fn spawn_piped(
        name: &str,
        mut cmd: Command,
        log: &Path,
    ) -> Result<(Self, std::process::ChildStdin, std::process::ChildStdout)> {
        let err = open_log(log)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        Ok((Self::from_child(name, child, log, None), stdin, stdout))
    }

    /// Spawns `cmd` like [`spawn`](Self::spawn) but reads its stdout (copied
    /// to `log` as well) until a line containing `ready` appears, and returns
    /// that line (e.g. `READY 127.0.0.1:7400`). Fails, with the log tail, if
    /// the process exits or `timeout` passes first.
    pub fn spawn_ready(
        name: &str,
        mut cmd: Command,
        log: &Path,
        ready: &str,
        timeout: Duration,
    ) -> Result<(Self, String)> {
        let mut log_out = open_log(log)?;
        let err = log_out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        let ready_pat = ready.to_owned();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_out, "{line}");
                if line.contains(&ready_pat) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut guard = Self::from_child(name, child, log, Some(reader));
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => return Ok((guard, line)),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{name} closed stdout before printing {ready:?} (exit: {status:?}); log:\n{}",
                        guard.log_tail(40)
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not print {ready:?} within {timeout:?}; log:\n{}",
                    guard.log_tail(40)
                );
            }
        }
    }

    fn from_child(name: &str, child: Child, log: &Path, reader: Option<JoinHandle<()>>) -> Self {
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        Self {
            name: name.to_owned(),
            child,
            pid,
            log_path: log.to_owned(),
            grace: Duration::from_secs(3),
            reader,
            killed: false,
        }
    }

    /// Sets the grace period between SIGTERM and SIGKILL (0: SIGKILL at once).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the grace period between SIGTERM and SIGKILL.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where stdout/stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the stdout/stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log_path, n)
    }

    /// True while the direct child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the direct child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids (with their start times) of every live descendant of the child.
    fn descendants(&self) -> BTreeMap<i32, u64> {
        let mut children: HashMap<i32, Vec<(i32, u64)>> = HashMap::new();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if let Some(st) = proc_stat(pid) {
                    if !st.zombie {
                        children.entry(st.ppid).or_default().push((pid, st.start));
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        let mut stack = vec![self.pid];
        while let Some(p) = stack.pop() {
            if let Some(kids) = children.get(&p) {
                for &(k, start) in kids {
                    if out.insert(k, start).is_none() {
                        stack.push(k);
                    }
                }
            }
        }
        out
    }

    /// Kills the process group and all descendants; idempotent.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        let t0 = Instant::now();
        let desc = self.descendants();
        let signal_all = |sig: Signal| {
            if let Some(pg) = Pid::from_raw(self.pid) {
                let _ = kill_process_group(pg, sig);
            }
            for (&p, &start) in &desc {
                if alive(p, start) {
                    if let Some(pid) = Pid::from_raw(p) {
                        let _ = kill_process(pid, sig);
                    }
                }
            }
        };
        let all_gone = |child: &mut Child| {
            !matches!(child.try_wait(), Ok(None)) && desc.iter().all(|(&p, &s)| !alive(p, s))
        };
        if !self.grace.is_zero() {
            signal_all(Signal::TERM);
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && !all_gone(&mut self.child) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !all_gone(&mut self.child) {
            signal_all(Signal::KILL);
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !all_gone(&mut self.child) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if std::env::var_os("CAUSEWAY_TESTKIT_DEBUG").is_some() {
            eprintln!(
                "causeway-testkit: {} stopped in {:?}",
                self.name,
                t0.elapsed()
            );
        }
    }
}

/// Waits until every address in `addrs` accepts TCP connections, failing
/// early (with the log tail) if the guarded process exits.
pub(crate) fn wait_tcp_or_exit(
    guard: &mut ChildGuard,
    addrs: &[std::net::SocketAddr],
    timeout: Duration,
    extra_log: Option<&Path>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for addr in addrs {
        loop {
            if std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            let logs = |guard: &ChildGuard| {
                let mut s = guard.log_tail(30);
                if let Some(p) = extra_log {
                    s.push_str(&format!("--- {} ---\n{}", p.display(), tail_file(p, 40)));
                }
                s
            };
            if let Ok(Some(st)) = guard.child.try_wait() {
                bail!(
                    "{} exited ({st}) before {addr} accepted; log:\n{}",
                    guard.name,
                    logs(guard)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {addr} not accepting after {timeout:?}; log:\n{}",
                    guard.name,
                    logs(guard)
                );
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    Ok(())
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

struct ProcStat {
    ppid: i32,
    start: u64,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(f.first(), Some(&"Z") | Some(&"X")),
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// True if `pid` is the same (start time) process and not a zombie.
fn alive(pid: i32, start: u64) -> bool {
    matches!(proc_stat(pid), Some(st) if st.start == start && !st.zombie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_group_and_detached_descendants() {
        let dir = crate::temp_dir("cw-proc-").expect("tmp");
        let log = dir.path().join("sh.log");
        let mut cmd = Command::new("/bin/sh");
        // A grandchild in its own session (like erl_child_setup) and one in
        // the group; then READY.
        cmd.arg("-c")
            .arg("setsid sleep 300 & sleep 300 & echo READY now; wait");
        let (mut g, line) =
            ChildGuard::spawn_ready("sh", cmd, &log, "READY", Duration::from_secs(5))
                .expect("spawn");
        assert_eq!(line, "READY now");
        assert!(wait_until_desc(&g, 2));
        let desc = g.descendants();
        g.kill();
        for (p, s) in desc {
            assert!(!alive(p, s), "descendant {p} survived");
        }
    }

    fn wait_until_desc(g: &ChildGuard, n: usize) -> bool {
        crate::wait_until(Duration::from_secs(3), || g.descendants().len() >= n)
    }
}
