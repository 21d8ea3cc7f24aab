//! Test certificates made with rcgen (ECDSA P-256): a lab CA that issues leaf
//! certificates, or self-signed leaves.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Files of one leaf certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `NAME.crt`: the certificate, PEM.
    pub cert_pem: PathBuf,
    /// `NAME.key`: the private key, PEM (PKCS#8).
    pub key_pem: PathBuf,
    /// `NAME.pem`: certificate followed by key (what ejabberd's `certfiles` likes).
    pub combined_pem: PathBuf,
}

/// A lab CA in a directory; it issues leaf certificates into the same
/// directory.
///
/// Peers in these tests authenticate each other with dialback, so any
/// certificate will do for them; a CA lets tests that want verified TLS
/// (SASL EXTERNAL, the gRPC tunnel) trust `ca_pem`.
pub struct Certs {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("dir", &self.dir)
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// Validity from January 1st of last year to about nine years ahead: rcgen's
/// default (1975-4096) makes ejabberd's expiry timer crash (badarg).
fn set_validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(56);
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + 9, 1, 1);
}

fn leaf_params(names: &[&str]) -> Result<CertificateParams> {
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).context("certificate names")?;
    set_validity(&mut params);
    if let Some(cn) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *cn);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

fn write_files(dir: &Path, file_stem: &str, cert: &str, key: &str) -> Result<CertFiles> {
    fs::create_dir_all(dir)?;
    let files = CertFiles {
        cert_pem: dir.join(format!("{file_stem}.crt")),
        key_pem: dir.join(format!("{file_stem}.key")),
        combined_pem: dir.join(format!("{file_stem}.pem")),
    };
    fs::write(&files.cert_pem, cert)?;
    fs::write(&files.key_pem, key)?;
    fs::write(&files.combined_pem, format!("{cert}{key}"))?;
    // Test keys, readable by the service users that run the peers.
    for p in [&files.cert_pem, &files.key_pem, &files.combined_pem] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(files)
}

impl Certs {
    /// Creates a CA ("Causeway Test CA") in `dir` (`ca.crt`).
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        set_validity(&mut params);
        params
            .distinguished_name
            .push(DnType::CommonName, "Causeway Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("CA certificate")?;
        let ca_pem = dir.join("ca.crt");
        fs::write(&ca_pem, cert.pem())?;
        fs::set_permissions(&ca_pem, fs::Permissions::from_mode(0o644))?;
        Ok(Self {
            dir: dir.to_owned(),
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a leaf for `names` (the first is also the CN; IP literals become
    /// IP SANs), written as `dir/NAME.{crt,key,pem}` with NAME the first name.
    pub fn issue(&self, names: &[&str]) -> Result<CertFiles> {
        let params = leaf_params(names)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let stem = names.first().copied().unwrap_or("leaf");
        write_files(&self.dir, stem, &cert.pem(), &key.serialize_pem())
    }

    /// Issues a leaf like [`Certs::issue`] with a chosen serial number (to revoke it later).
    pub fn issue_serial(&self, names: &[&str], serial: u64) -> Result<CertFiles> {
        let mut params = leaf_params(names)?;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let stem = names.first().copied().unwrap_or("leaf");
        write_files(&self.dir, stem, &cert.pem(), &key.serialize_pem())
    }

    /// A CRL (PEM, `dir/crl.pem`) revoking the given serial numbers.
    pub fn crl(&self, serials: &[u64]) -> Result<PathBuf> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let year = 1970 + i32::try_from(now / 31_556_952).unwrap_or(56);
        let revoked_certs = serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: date_time_ymd(year - 1, 6, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: date_time_ymd(year - 1, 6, 1),
            next_update: date_time_ymd(year + 2, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).context("signing the CRL")?;
        let path = self.dir.join("crl.pem");
        fs::write(&path, crl.pem().context("CRL PEM")?)?;
        Ok(path)
    }

    /// A self-signed leaf for `names`, written to `dir/NAME.{crt,key,pem}`.
    pub fn self_signed(dir: &Path, names: &[&str]) -> Result<CertFiles> {
        let params = leaf_params(names)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let stem = names.first().copied().unwrap_or("leaf");
        write_files(dir, stem, &cert.pem(), &key.serialize_pem())
    }
}
