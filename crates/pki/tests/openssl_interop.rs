//! Interoperability with the system `openssl` binary (what Prosody and
//! ejabberd link against). Every test skips cleanly, with a message, when
//! `openssl` is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use causeway_pki::{generate_ca, issue, lab_init, load_certs, load_key, s2s_server_config, Usage};

fn openssl_available() -> bool {
    match Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => true,
        _ => {
            eprintln!("SKIP: the `openssl` binary is not available");
            false
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "causeway-pki-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `openssl verify`; returns (success, combined output).
fn verify(ca: &Path, leaf: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .args(extra)
        .arg("-CAfile")
        .arg(ca)
        .arg(leaf)
        .output()
        .expect("run openssl verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_issued_certificates() {
    if !openssl_available() {
        return;
    }
    let tmp = TempDir::new("verify");
    let d = &tmp.0;
    let ca = generate_ca("Interop CA").expect("ca");
    let server = issue(&ca, &["xmpp.example.test"], Usage::Server, 5).expect("server");
    let dual = issue(
        &ca,
        &["example.test", "*.example.test"],
        Usage::ServerAndClient,
        5,
    )
    .expect("dual");
    let other_ca = generate_ca("Other CA").expect("other ca");
    let stranger = issue(&other_ca, &["xmpp.example.test"], Usage::Server, 5).expect("stranger");
    for (name, pem) in [
        ("ca.crt", &ca.cert_pem),
        ("server.crt", &server.cert_pem),
        ("dual.crt", &dual.cert_pem),
        ("stranger.crt", &stranger.cert_pem),
    ] {
        std::fs::write(d.join(name), pem).expect("write");
    }
    let ca_path = d.join("ca.crt");

    let (ok, out) = verify(&ca_path, &d.join("server.crt"), &[]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = verify(
        &ca_path,
        &d.join("server.crt"),
        &[
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "xmpp.example.test",
        ],
    );
    assert!(ok, "{out}");
    // Wrong host name.
    let (ok, out) = verify(
        &ca_path,
        &d.join("server.crt"),
        &["-verify_hostname", "other.example.test"],
    );
    assert!(!ok, "{out}");
    // A server-only certificate is not a TLS client certificate.
    let (ok, out) = verify(&ca_path, &d.join("server.crt"), &["-purpose", "sslclient"]);
    assert!(!ok, "{out}");
    // The dual-use certificate is both, and its wildcard covers one label.
    for purpose in ["sslserver", "sslclient"] {
        let (ok, out) = verify(&ca_path, &d.join("dual.crt"), &["-purpose", purpose]);
        assert!(ok, "{purpose}: {out}");
    }
    let (ok, out) = verify(
        &ca_path,
        &d.join("dual.crt"),
        &["-verify_hostname", "conference.example.test"],
    );
    assert!(ok, "{out}");
    // Signed by another CA.
    let (ok, out) = verify(&ca_path, &d.join("stranger.crt"), &[]);
    assert!(!ok, "{out}");
}

#[test]
fn openssl_verifies_lab_init_files() {
    if !openssl_available() {
        return;
    }
    let tmp = TempDir::new("lab");
    let d = &tmp.0;
    lab_init(
        d,
        &["edge.dmz.test"],
        "core.internal.test",
        &["example.test", "conference.example.test"],
        &["gw.internal.test"],
        false,
    )
    .expect("lab_init");
    for (ca, leaf, purpose) in [
        ("traversal-ca", "edge-tunnel", "sslserver"),
        ("traversal-ca", "core-tunnel", "sslclient"),
        ("traversal-ca", "core-tunnel", "sslserver"),
        ("federation-ca", "edge-federation", "sslserver"),
        ("federation-ca", "edge-federation", "sslclient"),
        ("federation-ca", "core-s2s", "sslclient"),
    ] {
        let (ok, out) = verify(
            &d.join(format!("{ca}.crt")),
            &d.join(format!("{leaf}.crt")),
            &["-purpose", purpose],
        );
        assert!(ok, "{leaf} as {purpose}: {out}");
    }
    // Cross-CA must fail: the two hierarchies are independent.
    let (ok, out) = verify(
        &d.join("federation-ca.crt"),
        &d.join("edge-tunnel.crt"),
        &[],
    );
    assert!(!ok, "{out}");
    // OpenSSL reads the keys too, and they match their certificates.
    for stem in ["edge-federation", "core-s2s"] {
        let pubkey = |args: &[&str], path: PathBuf| {
            let out = Command::new("openssl")
                .args(args)
                .arg(path)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let from_key = pubkey(&["pkey", "-pubout", "-in"], d.join(format!("{stem}.key")));
        let from_crt = pubkey(
            &["x509", "-noout", "-pubkey", "-in"],
            d.join(format!("{stem}.crt")),
        );
        assert_eq!(from_key, from_crt, "{stem}");
    }
}

/// `openssl s_client` (TLS 1.2 and 1.3) completes a verified handshake with
/// our rustls s2s server on loopback.
#[tokio::test]
async fn openssl_s_client_against_rustls_server() {
    if !openssl_available() {
        return;
    }
    let tmp = TempDir::new("sclient");
    let d = tmp.0.clone();
    lab_init(
        &d,
        &["edge.dmz.test"],
        "core.internal.test",
        &["example.test"],
        &["gw.internal.test"],
        false,
    )
    .expect("lab_init");
    let config = s2s_server_config(
        load_certs(&d.join("edge-federation.crt")).expect("certs"),
        load_key(&d.join("edge-federation.key")).expect("key"),
    )
    .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let server = tokio::spawn(async move {
        let mut handshakes = 0;
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                handshakes += 1;
                // Send close_notify so OpenSSL sees a clean end of stream.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
        }
        handshakes
    });
    for version in ["-tls1_2", "-tls1_3"] {
        let ca = d.join("federation-ca.crt");
        let out = tokio::task::spawn_blocking(move || {
            Command::new("openssl")
                .args(["s_client", version, "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args([
                    "-servername",
                    "example.test",
                    "-verify_hostname",
                    "example.test",
                ])
                .args(["-verify_return_error", "-brief", "-CAfile"])
                .arg(ca)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl s_client")
        })
        .await
        .expect("join");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{version}: {text}");
        assert!(text.contains("Verification: OK"), "{version}: {text}");
    }
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server finished")
        .expect("join");
    assert_eq!(n, 2);
}

/// OpenSSL accepts our CRLs: the revoked leaf fails `-crl_check`, the other
/// passes, and the CRL signature verifies against the CA.
#[test]
fn openssl_honours_make_crl() {
    if !openssl_available() {
        return;
    }
    let tmp = TempDir::new("crl");
    let d = &tmp.0;
    let ca = generate_ca("CRL CA").expect("ca");
    let bad = issue(&ca, &["bad.example.test"], Usage::ServerAndClient, 5).expect("bad");
    let good = issue(&ca, &["good.example.test"], Usage::ServerAndClient, 5).expect("good");
    let crl = causeway_pki::make_crl(&ca, &[&bad.cert_pem]).expect("crl");
    for (name, pem) in [
        ("ca.crt", &ca.cert_pem),
        ("bad.crt", &bad.cert_pem),
        ("good.crt", &good.cert_pem),
    ] {
        std::fs::write(d.join(name), pem).expect("write");
    }
    std::fs::write(d.join("crl.der"), &crl).expect("write");
    // DER -> PEM with OpenSSL, checking the CRL's signature on the way.
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(d.join("crl.der"))
        .arg("-CAfile")
        .arg(d.join("ca.crt"))
        .arg("-out")
        .arg(d.join("crl.pem"))
        .output()
        .expect("run openssl crl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verify OK"), "{text}");
    let crl_pem = d.join("crl.pem");
    let crl_arg = crl_pem.to_str().expect("utf-8 path");
    let (ok, out) = verify(
        &d.join("ca.crt"),
        &d.join("bad.crt"),
        &["-crl_check", "-CRLfile", crl_arg],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("revoked"), "{out}");
    let (ok, out) = verify(
        &d.join("ca.crt"),
        &d.join("good.crt"),
        &["-crl_check", "-CRLfile", crl_arg],
    );
    assert!(ok, "{out}");
}
