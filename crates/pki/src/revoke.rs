//! Revoking certificates of a CA the administrator holds (the traversal CA): one CRL file,
//! kept up to date, that the edge loads (`tunnel.crl`) and reloads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::files::io_err;
use crate::generate::{crl_serials, issued_serial, make_crl_serials};
use crate::{read_file, CertPair, PkiError};

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Certificates newly revoked (one already in the CRL is not counted again).
    pub added: usize,
    /// Certificates the CRL revokes now.
    pub total: usize,
}

/// Add the certificates `certs` (PEM files, each issued by the CA `ca_cert`/`ca_key`) to the
/// CRL at `crl` (created if missing; the serials it already revokes are kept), signed anew by
/// the CA with a fresh `thisUpdate` and a `nextUpdate` 30 days ahead. The file is replaced
/// atomically (PEM), so a daemon reloading it never reads half of it.
///
/// Errors if a certificate was not issued by this CA, or if an existing CRL cannot be read or
/// was not issued by this CA.
pub fn revoke(
    ca_cert: &Path,
    ca_key: &Path,
    crl: &Path,
    certs: &[PathBuf],
) -> Result<Revoked, PkiError> {
    let text = |path: &Path| -> Result<String, PkiError> {
        String::from_utf8(read_file(path)?)
            .map_err(|_| PkiError::Gen(format!("{}: not PEM text", path.display())))
    };
    let ca = CertPair {
        cert_pem: text(ca_cert)?,
        key_pem: text(ca_key)?,
    };
    let mut serials = BTreeSet::new();
    if crl.exists() {
        let label = crl.display().to_string();
        for der in crate::peer::crl_ders_of_file(&read_file(crl)?, &label)? {
            check_issuer(&ca, &der, &label)?;
            serials.extend(crl_serials(&der)?);
        }
    }
    let before = serials.len();
    for path in certs {
        serials.insert(issued_serial(
            &ca,
            &text(path)?,
            &path.display().to_string(),
        )?);
    }
    let list: Vec<Vec<u8>> = serials.into_iter().collect();
    let der = make_crl_serials(&ca, &list)?;
    let pem = pem::encode(&pem::Pem::new("X509 CRL", der));
    let tmp = crl.with_extension("crl.tmp");
    std::fs::write(&tmp, pem).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, crl).map_err(|e| io_err(crl, e))?;
    Ok(Revoked {
        added: list.len() - before,
        total: list.len(),
    })
}

/// An existing CRL must come from the same CA (else its serials mean other certificates).
fn check_issuer(ca: &CertPair, crl_der: &[u8], label: &str) -> Result<(), PkiError> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::*;
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|e| PkiError::Gen(format!("CA certificate: {e}")))?;
    let (_, ca_x) = parse_x509_certificate(&ca_der)
        .map_err(|e| PkiError::Gen(format!("cannot parse CA certificate: {e}")))?;
    let (_, crl) = parse_x509_crl(crl_der).map_err(|e| PkiError::Gen(format!("{label}: {e}")))?;
    if crl.issuer().as_raw() != ca_x.subject().as_raw() {
        return Err(PkiError::Gen(format!(
            "{label} was issued by {}, not by {}",
            crl.issuer(),
            ca_x.subject()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_ca, issue, PeerTrust, Usage};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn chain(pair: &CertPair) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs")
    }

    #[test]
    fn revocations_accumulate_and_the_crl_is_honoured() {
        let dir = tempfile_dir();
        let ca = generate_ca("Test Traversal CA").expect("ca");
        let ca_crt = write(&dir, "ca.crt", &ca.cert_pem);
        let ca_key = write(&dir, "ca.key", &ca.key_pem);
        let one = issue(&ca, &["core1.test"], Usage::ServerAndClient, 30).expect("leaf");
        let two = issue(&ca, &["core2.test"], Usage::ServerAndClient, 30).expect("leaf");
        let keep = issue(&ca, &["core3.test"], Usage::ServerAndClient, 30).expect("leaf");
        let one_p = write(&dir, "one.crt", &one.cert_pem);
        let two_p = write(&dir, "two.crt", &two.cert_pem);
        let crl = dir.join("traversal.crl");

        let r = revoke(&ca_crt, &ca_key, &crl, std::slice::from_ref(&one_p)).expect("first");
        assert_eq!(r, Revoked { added: 1, total: 1 });
        let r = revoke(&ca_crt, &ca_key, &crl, &[one_p, two_p]).expect("second");
        assert_eq!(r, Revoked { added: 1, total: 2 }, "one was revoked already");

        let trust = PeerTrust::load(&ca_crt, std::slice::from_ref(&crl)).expect("trust");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(trust.verify_chain(&chain(&one), true, now).is_err());
        assert!(trust.verify_chain(&chain(&two), true, now).is_err());
        trust
            .verify_chain(&chain(&keep), true, now)
            .expect("a certificate not revoked still verifies");
    }

    #[test]
    fn a_certificate_or_crl_of_another_ca_is_refused() {
        let dir = tempfile_dir();
        let ca = generate_ca("Test Traversal CA").expect("ca");
        let other = generate_ca("Other CA").expect("ca");
        let ca_crt = write(&dir, "ca.crt", &ca.cert_pem);
        let ca_key = write(&dir, "ca.key", &ca.key_pem);
        let stranger = issue(&other, &["x.test"], Usage::ServerAndClient, 30).expect("leaf");
        let stranger_p = write(&dir, "stranger.crt", &stranger.cert_pem);
        let crl = dir.join("traversal.crl");
        let e = revoke(&ca_crt, &ca_key, &crl, &[stranger_p]).expect_err("foreign");
        assert!(e.to_string().contains("was not issued by"), "{e}");
        assert!(!crl.exists(), "nothing written on error");

        let other_crt = write(&dir, "other.crt", &other.cert_pem);
        let other_key = write(&dir, "other.key", &other.key_pem);
        revoke(&other_crt, &other_key, &crl, &[]).expect("an empty CRL of the other CA");
        let e = revoke(&ca_crt, &ca_key, &crl, &[]).expect_err("foreign CRL");
        assert!(e.to_string().contains("not by"), "{e}");
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempfile_dir() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "causeway-revoke-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("dir");
        TempDir(p)
    }
}
