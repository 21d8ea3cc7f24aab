//! Reading PEM files and writing the lab PKI directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::generate::{generate_ca, issue, CertPair, Usage};
use crate::PkiError;

/// Validity of lab leaf certificates, in days.
const LEAF_DAYS: u32 = 825;

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pem_err(path: &Path, msg: impl std::fmt::Display) -> PkiError {
    PkiError::Pem {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Read a whole file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|e| io_err(path, e))
}

/// Read every `CERTIFICATE` PEM block of `path`, in order (leaf first for a
/// chain file). Other PEM blocks (keys) are skipped. It is an error if the
/// file holds no certificate or a malformed PEM block.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Read the first private key (PKCS#8, SEC1 EC or PKCS#1 RSA PEM block) of
/// `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_err(path, "no private key found"),
        other => pem_err(path, other),
    })
}

/// Write `contents` to `path`, creating or truncating it; `private` files get
/// mode 0600 (on Unix), also when they already existed.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| io_err(path, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
    }
    f.write_all(contents.as_bytes())
        .map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// One `<stem>.crt` + `<stem>.key` pair in the lab directory.
struct Slot {
    crt: PathBuf,
    key: PathBuf,
}

impl Slot {
    fn new(dir: &Path, stem: &str) -> Self {
        Slot {
            crt: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// `Some(true)`: both files exist; `Some(false)`: neither; `None`: only one.
    fn state(&self) -> Option<bool> {
        match (self.crt.exists(), self.key.exists()) {
            (true, true) => Some(true),
            (false, false) => Some(false),
            _ => None,
        }
    }

    fn incomplete(&self) -> PkiError {
        let (present, missing) = if self.crt.exists() {
            (&self.crt, &self.key)
        } else {
            (&self.key, &self.crt)
        };
        io_err(
            missing,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "missing while {} exists (use force to regenerate the pair)",
                    present.display()
                ),
            ),
        )
    }

    fn read(&self) -> Result<CertPair, PkiError> {
        let text = |p: &Path| -> Result<String, PkiError> {
            String::from_utf8(read_file(p)?).map_err(|_| pem_err(p, "not UTF-8 text"))
        };
        Ok(CertPair {
            cert_pem: text(&self.crt)?,
            key_pem: text(&self.key)?,
        })
    }

    fn write(&self, pair: &CertPair, written: &mut Vec<PathBuf>) -> Result<(), PkiError> {
        write_file(&self.key, &pair.key_pem, true)?;
        written.push(self.key.clone());
        write_file(&self.crt, &pair.cert_pem, false)?;
        written.push(self.crt.clone());
        Ok(())
    }
}

/// A leaf to issue in [`lab_init`].
struct LeafSpec<'a> {
    stem: &'static str,
    names: &'a [&'a str],
    usage: Usage,
}

/// Create (or complete) one CA and its leaves.
fn lab_group(
    dir: &Path,
    ca_stem: &str,
    ca_cn: &str,
    leaves: &[LeafSpec<'_>],
    force: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), PkiError> {
    let ca_slot = Slot::new(dir, ca_stem);
    let leaf_slots: Vec<Slot> = leaves.iter().map(|l| Slot::new(dir, l.stem)).collect();

    // Check everything before writing anything.
    let mut ca_exists = false;
    if !force {
        ca_exists = ca_slot.state().ok_or_else(|| ca_slot.incomplete())?;
        for slot in &leaf_slots {
            let exists = slot.state().ok_or_else(|| slot.incomplete())?;
            if exists && !ca_exists {
                // Its issuer would be replaced: the old leaf could no longer
                // be verified against the new CA.
                return Err(io_err(
                    &ca_slot.crt,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "CA missing while {} exists (use force to regenerate)",
                            slot.crt.display()
                        ),
                    ),
                ));
            }
        }
    }
    for spec in leaves {
        if spec.names.is_empty() {
            return Err(PkiError::Gen(format!("{}: no names given", spec.stem)));
        }
    }

    let ca = if ca_exists {
        ca_slot.read()?
    } else {
        let ca = generate_ca(ca_cn)?;
        ca_slot.write(&ca, written)?;
        ca
    };
    for (spec, slot) in leaves.iter().zip(&leaf_slots) {
        if !force && slot.state() == Some(true) {
            continue;
        }
        let leaf = issue(&ca, spec.names, spec.usage, LEAF_DAYS)?;
        slot.write(&leaf, written)?;
    }
    Ok(())
}

/// Create a lab PKI in `dir` (created if missing).
///
/// Files (`.crt` certificate PEM, `.key` PKCS#8 PEM with mode 0600):
///
/// * `traversal-ca` — CA of the edge/core gRPC tunnel;
/// * `edge-tunnel` — server certificate of edge for the tunnel, names `edge_names`;
/// * `core-tunnel` — client+server certificate of core for the tunnel, name `core_name`;
/// * `federation-ca` — CA of the federation certificates;
/// * `edge-federation` — client+server certificate edge presents on s2s links,
///   names `federation_names` (the federated domains and chat node aliases);
/// * `core-s2s` — client+server certificate core presents to the internal XMPP
///   servers, names `core_s2s_names`.
///
/// Existing pairs are kept unless `force`; a missing leaf is issued by the
/// existing CA. Without `force` it is an error if only one file of a pair
/// exists, or if a CA is missing while one of its leaves exists. Leaves are
/// valid 825 days, CAs ten years. Returns the paths written, keys before
/// their certificates.
pub fn lab_init(
    dir: &Path,
    edge_names: &[&str],
    core_name: &str,
    federation_names: &[&str],
    core_s2s_names: &[&str],
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let core_names = [core_name];
    let mut written = Vec::new();
    lab_group(
        dir,
        "traversal-ca",
        "Causeway Traversal CA",
        &[
            LeafSpec {
                stem: "edge-tunnel",
                names: edge_names,
                usage: Usage::Server,
            },
            LeafSpec {
                stem: "core-tunnel",
                names: &core_names,
                usage: Usage::ServerAndClient,
            },
        ],
        force,
        &mut written,
    )?;
    lab_group(
        dir,
        "federation-ca",
        "Causeway Federation CA",
        &[
            LeafSpec {
                stem: "edge-federation",
                names: federation_names,
                usage: Usage::ServerAndClient,
            },
            LeafSpec {
                stem: "core-s2s",
                names: core_s2s_names,
                usage: Usage::ServerAndClient,
            },
        ],
        force,
        &mut written,
    )?;
    tracing::info!(dir = %dir.display(), files = written.len(), "lab PKI written");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::cert_names;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "causeway-pki-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const STEMS: [&str; 6] = [
        "traversal-ca",
        "edge-tunnel",
        "core-tunnel",
        "federation-ca",
        "edge-federation",
        "core-s2s",
    ];

    fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>, PkiError> {
        lab_init(
            dir,
            &["edge.dmz.test", "127.0.0.1"],
            "core.internal.test",
            &["example.test", "conference.example.test"],
            &["gw.internal.test"],
            force,
        )
    }

    #[test]
    fn lab_init_writes_and_loads_back() {
        let tmp = TempDir::new("lab");
        let dir = tmp.0.join("pki");
        let written = init(&dir, false).expect("lab_init");
        assert_eq!(written.len(), 12);
        for stem in STEMS {
            let crt = dir.join(format!("{stem}.crt"));
            let key = dir.join(format!("{stem}.key"));
            assert!(written.contains(&crt), "{stem}.crt written");
            assert!(written.contains(&key), "{stem}.key written");
            let certs = load_certs(&crt).expect("certs");
            assert_eq!(certs.len(), 1);
            load_key(&key).expect("key");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{stem}.key mode");
            }
        }
        let fed = load_certs(&dir.join("edge-federation.crt")).expect("fed");
        assert_eq!(
            cert_names(&fed[0]).expect("names"),
            ["example.test", "conference.example.test"]
        );
        let core = load_certs(&dir.join("core-tunnel.crt")).expect("core");
        assert_eq!(cert_names(&core[0]).expect("names"), ["core.internal.test"]);
        // IP literals become iPAddress SANs, which are not DNS names.
        let edge = load_certs(&dir.join("edge-tunnel.crt")).expect("edge");
        assert_eq!(cert_names(&edge[0]).expect("names"), ["edge.dmz.test"]);
    }

    #[test]
    fn lab_init_does_not_overwrite_without_force() {
        let tmp = TempDir::new("noforce");
        let dir = &tmp.0;
        init(dir, false).expect("first");
        let before = fs::read(dir.join("edge-federation.key")).expect("read");
        let again = init(dir, false).expect("second");
        assert!(again.is_empty(), "nothing rewritten: {again:?}");
        assert_eq!(
            fs::read(dir.join("edge-federation.key")).expect("read"),
            before
        );

        // A missing leaf is re-issued by the existing CA.
        fs::remove_file(dir.join("core-s2s.crt")).expect("rm");
        fs::remove_file(dir.join("core-s2s.key")).expect("rm");
        let ca_before = fs::read(dir.join("federation-ca.crt")).expect("read");
        let third = init(dir, false).expect("third");
        assert_eq!(third, [dir.join("core-s2s.key"), dir.join("core-s2s.crt")]);
        assert_eq!(
            fs::read(dir.join("federation-ca.crt")).expect("read"),
            ca_before
        );

        // Force rewrites everything.
        let forced = init(dir, true).expect("forced");
        assert_eq!(forced.len(), 12);
        assert_ne!(
            fs::read(dir.join("edge-federation.key")).expect("read"),
            before
        );
    }

    #[test]
    fn lab_init_refuses_inconsistent_state() {
        let tmp = TempDir::new("partial");
        let dir = &tmp.0;
        init(dir, false).expect("first");
        fs::remove_file(dir.join("edge-tunnel.key")).expect("rm");
        assert!(matches!(init(dir, false), Err(PkiError::Io { .. })));
        init(dir, true).expect("force repairs");

        fs::remove_file(dir.join("federation-ca.crt")).expect("rm");
        fs::remove_file(dir.join("federation-ca.key")).expect("rm");
        let err = init(dir, false).expect_err("CA missing but leaves exist");
        assert!(err.to_string().contains("federation-ca.crt"), "{err}");
    }

    #[test]
    fn load_errors() {
        let tmp = TempDir::new("load");
        let missing = tmp.0.join("missing.crt");
        assert!(matches!(load_certs(&missing), Err(PkiError::Io { .. })));
        assert!(matches!(read_file(&missing), Err(PkiError::Io { .. })));
        let empty = tmp.0.join("empty.pem");
        fs::write(&empty, "hello\n").expect("write");
        assert!(matches!(load_certs(&empty), Err(PkiError::Pem { .. })));
        assert!(matches!(load_key(&empty), Err(PkiError::Pem { .. })));
        // A key file has no certificate, and a certificate file no key.
        let pair = crate::self_signed(&["a.test"], 1).expect("ss");
        let key = tmp.0.join("k.pem");
        fs::write(&key, &pair.key_pem).expect("write");
        assert!(matches!(load_certs(&key), Err(PkiError::Pem { .. })));
        let crt = tmp.0.join("c.pem");
        fs::write(&crt, &pair.cert_pem).expect("write");
        assert!(matches!(load_key(&crt), Err(PkiError::Pem { .. })));
        // A combined file yields both.
        let both = tmp.0.join("both.pem");
        fs::write(&both, format!("{}{}", pair.cert_pem, pair.key_pem)).expect("write");
        assert_eq!(load_certs(&both).expect("certs").len(), 1);
        load_key(&both).expect("key");
        // Truncated PEM is an error, not a panic.
        let trunc = tmp.0.join("t.pem");
        fs::write(&trunc, &pair.cert_pem[..pair.cert_pem.len() / 2]).expect("write");
        assert!(load_certs(&trunc).is_err());
    }
}
