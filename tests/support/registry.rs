//! Debian's `docker-registry` (the CNCF distribution registry) on loopback, and a pusher that
//! writes images into it through the registry API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
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
    /// Its stdout: one combined-format line per request it answered.
    access_log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as the registry's access log has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub status: u16,
    pub user_agent: String,
}

impl Served {
    /// `127.0.0.1 - - [date] "HEAD /v2/a/manifests/v1 HTTP/1.1" 200 0 "" "pullcheck/0.1.0"`
    fn parse(line: &str) -> Option<Served> {
        let quoted: Vec<&str> = line.split('"').collect();
        let mut request = quoted.get(1)?.split(' ');
        let (method, target) = (request.next()?.to_string(), request.next()?.to_string());
        let status = quoted.get(2)?.split_whitespace().next()?.parse().ok()?;
        Some(Served { method, target, status, user_agent: quoted.get(5)?.to_string() })
    }

    /// `METHOD target status`, for assertions that read as the log does.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.status)
    }
}

/// The address in the registry's `listening on 127.0.0.1:PORT[, tls]` line, if logged yet.
fn listening_address(log: &str) -> Option<String> {
    let rest = log.lines().find_map(|l| l.split_once("msg=\"listening on ").map(|(_, rest)| rest))?;
    Some(rest.split(['"', ',']).next()?.to_string())
}

impl Registry {
    /// Starts a registry serving `storage`; several registries may share one storage.
    pub async fn start(dir: &Path, name: &str, storage: &Path, tls: Option<(&Path, &Path)>, auth: Auth) -> Registry {
        Self::start_on(dir, name, storage, tls, auth, "127.0.0.1:0").await
    }

    /// [`Self::start`] listening on `addr` (`[::1]:0`: IPv6 loopback only).
    pub async fn start_on(
        dir: &Path,
        name: &str,
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Auth,
        addr: &str,
    ) -> Registry {
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
        // Port 0: the kernel picks the port and the registry logs it, at info level, on
        // `listening on`; a port picked here and released could be taken before it binds.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \"{addr}\"\n{tls_block}{auth_block}",
            storage.display()
        );
        let config_path = dir.join(format!("{name}.yml"));
        std::fs::write(&config_path, config).expect("write registry config");
        let log_path = dir.join(format!("{name}.log"));
        let access_log = dir.join(format!("{name}.access.log"));
        let log = std::fs::File::create(&log_path).expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(std::fs::File::create(&access_log).expect("registry access log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry is installed (.ci/run installs it)");
        let mut registry = Registry { addr: String::new(), child, access_log };
        // It logs the address once it listens; give up after 20 s, or at once if it exits.
        for _ in 0..400 {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = listening_address(&log) {
                registry.addr = addr;
                return registry;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("{name} exited ({status}): {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} did not start: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
    }

    /// Every request this registry answered so far, oldest first: what reached the server, not
    /// what a client believes it sent.
    pub fn served(&self) -> Vec<Served> {
        let log = std::fs::read_to_string(&self.access_log).expect("read the registry's access log");
        log.lines().filter_map(Served::parse).collect()
    }

    /// The access log (one combined-format line per request), for a reader that polls it
    /// by size or from an offset.
    pub fn access_log(&self) -> &Path {
        &self.access_log
    }

    /// The requests answered after the first `mark` ones, once there are at least `at_least`.
    /// The registry writes a line before the client has the whole answer, so the wait is only a
    /// bound (10 s) for when fewer come: the caller asserts on what is returned.
    pub async fn served_since(&self, mark: usize, at_least: usize) -> Vec<Served> {
        let since = || {
            let mut all = self.served();
            all.split_off(mark.min(all.len()))
        };
        super::eventually(Duration::from_secs(10), || since().len() >= at_least).await;
        since()
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
