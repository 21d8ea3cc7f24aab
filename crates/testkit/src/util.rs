//! Small helpers: ports, waiting, temporary directories, file ownership.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use tempfile::TempDir;

/// A TCP port that is free on `ip` right now (the kernel picks it).
///
/// There is a small window in which another process could take it; the
/// harness uses a distinct loopback address per server, which makes that
/// practically impossible.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind(SocketAddrV4::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a TCP port on {ip}: {e}"))
}

/// A port that is free for both TCP and UDP on `ip` (for DNS servers).
pub fn free_udp_tcp_port(ip: Ipv4Addr) -> u16 {
    for _ in 0..50 {
        let port = free_port(ip);
        if UdpSocket::bind(SocketAddrV4::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on {ip}");
}

/// Waits until a TCP connection to `addr` succeeds.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!("{addr} did not accept TCP connections within {timeout:?}: {e}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms until it returns true; false on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `CAUSEWAY_TESTKIT_KEEP` is set (to anything but `0`): temporary
/// directories are then kept after the test.
pub fn keep_temp_dirs() -> bool {
    std::env::var("CAUSEWAY_TESTKIT_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A new temporary directory under the system temp dir, mode 0755 so that the
/// service users (`prosody`, `ejabberd`) can traverse it. Kept after the test
/// when [`keep_temp_dirs`] says so.
pub fn temp_dir(prefix: &str) -> Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    builder.disable_cleanup(keep_temp_dirs());
    let dir = builder
        .tempdir()
        .context("creating a temporary directory")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    if keep_temp_dirs() {
        eprintln!("causeway-testkit: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// uid and gid of a system user, from /etc/passwd.
pub(crate) fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            return Ok((f[2].parse()?, f[3].parse()?));
        }
    }
    bail!("no system user {name:?} (is its package installed?)")
}

/// chown -R.
pub(crate) fn chown_recursive(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The last `n` lines of a text file (empty string if it does not exist).
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    const MAX: u64 = 4 << 20;
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = f.seek(SeekFrom::Start(len - MAX));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    out.push('\n');
    out
}

/// A Lua string literal for `s`.
pub(crate) fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A YAML double-quoted scalar for `s`.
pub(crate) fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_quoting() {
        assert_eq!(lua_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\010\"");
    }

    #[test]
    fn free_ports_differ_and_bind() {
        // An address nothing else uses: on 127.0.0.1 the peers started by the other tests
        // take ephemeral ports, and one once took the probed port in between.
        let ip = Ipv4Addr::new(127, 254, 0, 1);
        let p = free_udp_tcp_port(ip);
        assert!(p > 0);
        assert!(TcpListener::bind((ip, p)).is_ok());
    }
}
