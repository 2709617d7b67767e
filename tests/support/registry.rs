//! Debian's `docker-registry` (the CNCF distribution registry) on loopback, and a pusher that
//! writes images into it through the registry API.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

pub const REGISTRY_BIN: &str = "docker-registry";

pub enum Auth {
    None,
    Htpasswd(PathBuf),
    Token { realm: String, service: String, issuer: String, root_cert: PathBuf },
}

pub struct Registry {
    pub addr: String,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Registry {
    /// Starts a registry serving `storage`; several registries may share one storage.
    pub async fn start(dir: &Path, name: &str, storage: &Path, tls: Option<(&Path, &Path)>, auth: Auth) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let tls_block = tls
            .map(|(cert, key)| format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()))
            .unwrap_or_default();
        let auth_block = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd(path) => {
                format!("auth:\n  htpasswd:\n    realm: pullcheck-test\n    path: {}\n", path.display())
            }
            Auth::Token { realm, service, issuer, root_cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_block}{auth_block}",
            storage.display()
        );
        let config_path = dir.join(format!("{name}.yml"));
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry is installed (.ci/run installs it)");
        let registry = Registry { addr, child };
        // Ready when it accepts connections; give up after 20 s with the registry's own log.
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(&registry.addr).await.is_ok() {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{name} did not start: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Pushes through the registry API of an anonymous plain-HTTP registry at `base` (`http://host:port`).
pub struct Pusher {
    pub base: String,
    http: reqwest::Client,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl Pusher {
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into(), http: reqwest::Client::new() }
    }

    pub async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let started =
            self.http.post(format!("{}/v2/{repo}/blobs/uploads/", self.base)).send().await.expect("start upload");
        assert_eq!(started.status(), 202, "start upload");
        let location = started.headers()["location"].to_str().expect("location").to_string();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", self.base) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(done.status(), 201, "finish upload of {repo}");
        digest
    }

    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let response = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest");
        let status = response.status();
        assert_eq!(status, 201, "put manifest {repo}:{reference}: {}", response.text().await.unwrap_or_default());
        sha256(body)
    }

    /// A single-platform image; returns (manifest digest, manifest size).
    pub async fn image(&self, repo: &str, tag: &str, arch: &str) -> (String, usize) {
        let layer = format!("layer of {repo} for {arch}").into_bytes();
        let layer_digest = self.blob(repo, &layer).await;
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        })
        .to_string()
        .into_bytes();
        let config_digest = self.blob(repo, &config).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        })
        .to_string()
        .into_bytes();
        let digest = self.manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        (digest, manifest.len())
    }

    /// A multi-platform index over freshly pushed images, one per architecture.
    pub async fn index(&self, repo: &str, tag: &str, arches: &[&str]) -> String {
        let mut manifests = Vec::new();
        for arch in arches {
            let (digest, size) = self.image(repo, &format!("{tag}-{arch}"), arch).await;
            manifests.push(serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                "platform": {"architecture": arch, "os": "linux"}
            }));
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
            .to_string()
            .into_bytes();
        self.manifest(repo, tag, OCI_INDEX, &index).await
    }

    /// Deletes a manifest (and so every tag on it), as a registry cleanup policy does.
    pub async fn delete(&self, repo: &str, digest: &str) {
        let response =
            self.http.delete(format!("{}/v2/{repo}/manifests/{digest}", self.base)).send().await.expect("delete");
        assert_eq!(response.status(), 202, "delete {repo}@{digest}");
    }
}
