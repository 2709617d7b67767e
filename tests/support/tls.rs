//! Test PKI made with the `openssl` command: a CA, a server certificate for 127.0.0.1 and
//! localhost, and the token issuer's RSA signing key with its self-signed certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// PEM certificate the registry trusts for tokens (`rootcertbundle`).
    pub signer_cert: PathBuf,
    /// DER of the same certificate, for the JWT `x5c` header.
    pub signer_cert_der: Vec<u8>,
    /// PKCS#8 DER of the signing key.
    pub signer_key_pkcs8: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost\n").expect("write");
        for command in [
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=pullcheck-test-ca",
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.cnf",
            "req -x509 -newkey rsa:2048 -nodes -keyout signer.key -out signer.pem -days 2 -subj /CN=pullcheck-test-token-signer",
            "x509 -in signer.pem -outform DER -out signer.der",
            "pkcs8 -topk8 -nocrypt -in signer.key -outform DER -out signer.pk8",
        ] {
            openssl(dir, &command.split_whitespace().collect::<Vec<_>>());
        }
        Pki {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            signer_cert: dir.join("signer.pem"),
            signer_cert_der: std::fs::read(dir.join("signer.der")).expect("read"),
            signer_key_pkcs8: std::fs::read(dir.join("signer.pk8")).expect("read"),
        }
    }
}
