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

impl Pki {
    /// The directory the PKI was made in (its CA key lives there).
    fn dir(&self) -> &Path {
        self.ca_cert.parent().expect("the CA certificate is in the PKI's directory")
    }

    /// A server certificate and key named `name`, signed by the test CA for `san` only (an
    /// openssl `subjectAltName` value: `DNS:wrong.example`), valid from now.
    pub fn leaf(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir();
        std::fs::write(dir.join(format!("{name}.cnf")), format!("subjectAltName={san}\n")).expect("write");
        for command in [
            format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"
            ),
            format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.cnf"
            ),
        ] {
            openssl(dir, &command.split_whitespace().collect::<Vec<_>>());
        }
        (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by the test CA, valid in January
    /// 2020 only (openssl 3.0's `x509` takes no start date: `ca` does).
    pub fn expired_leaf(&self) -> (PathBuf, PathBuf) {
        let dir = self.dir();
        std::fs::write(dir.join("expired-index.txt"), "").expect("write");
        std::fs::write(dir.join("expired-serial"), "01\n").expect("write");
        std::fs::write(
            dir.join("expired-ca.cnf"),
            "[ca]\ndefault_ca=test\n[test]\ndatabase=expired-index.txt\nnew_certs_dir=.\nserial=expired-serial\n\
             default_md=sha256\npolicy=any\nunique_subject=no\n[any]\ncommonName=supplied\n\
             [ext]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write");
        for command in [
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout expired.key -out expired.csr -subj /CN=localhost",
            "ca -batch -config expired-ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem -startdate 20200101000000Z -enddate 20200201000000Z -extensions ext -notext",
        ] {
            openssl(dir, &command.split_whitespace().collect::<Vec<_>>());
        }
        (dir.join("expired.pem"), dir.join("expired.key"))
    }

    /// The server certificate (DER) and its key (PKCS#8 DER), for a TLS server in the test.
    pub fn server_der(&self) -> (Vec<u8>, Vec<u8>) {
        let dir = self.dir();
        for command in [
            "x509 -in server.pem -outform DER -out server.der",
            "pkcs8 -topk8 -nocrypt -in server.key -outform DER -out server.pk8",
        ] {
            openssl(dir, &command.split_whitespace().collect::<Vec<_>>());
        }
        (std::fs::read(dir.join("server.der")).expect("read"), std::fs::read(dir.join("server.pk8")).expect("read"))
    }
}
