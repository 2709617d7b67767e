//! Real parts for the integration tests: Debian's docker-registry in three set-ups sharing one
//! storage, a token issuer, a fault-injecting proxy, and a pusher.
#![allow(dead_code)]

pub mod apiserver;
pub mod http;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;

use registry::{Auth, Pusher, Registry};
use tls::Pki;
use token::{Grant, TokenIssuer};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-pw";
/// Authenticates at the token issuer but is granted nothing.
pub const NO_PULL_USER: &str = "mallory";
pub const NO_PULL_PASSWORD: &str = "mallory-pw";

/// Three registries over one storage: anonymous HTTP (where the tests push), TLS + htpasswd,
/// and TLS + token auth.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub anon: Registry,
    pub basic: Registry,
    pub token: Registry,
    pub issuer: TokenIssuer,
    pub pusher: Pusher,
}

impl Env {
    pub async fn start() -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let pki = Pki::create(dir.path());
        let htpasswd = dir.path().join("htpasswd");
        let out = std::process::Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd is installed (.ci/run installs apache2-utils)");
        std::fs::write(&htpasswd, out.stdout).expect("write htpasswd");
        let issuer = TokenIssuer::start(
            &pki.signer_key_pkcs8,
            &pki.signer_cert_der,
            &[(USER, PASSWORD, Grant::Pull), (NO_PULL_USER, NO_PULL_PASSWORD, Grant::Nothing)],
        )
        .await;
        let tls = Some((pki.server_cert.as_path(), pki.server_key.as_path()));
        let anon = Registry::start(dir.path(), "anon", &storage, None, Auth::None).await;
        let basic = Registry::start(dir.path(), "basic", &storage, tls, Auth::Htpasswd(htpasswd)).await;
        let token_auth = Auth::Token {
            realm: issuer.realm(),
            service: token::SERVICE.into(),
            issuer: token::ISSUER.into(),
            root_cert: pki.signer_cert.clone(),
        };
        let token = Registry::start(dir.path(), "token", &storage, tls, token_auth).await;
        let pusher = Pusher::new(format!("http://{}", anon.addr));
        Env { dir, pki, anon, basic, token, issuer, pusher }
    }

    /// A pull token the issuer really grants alice for `repository`.
    pub async fn issuer_token(&self, repository: &str) -> String {
        token::granted(&self.issuer.realm(), repository).await
    }

    /// A registry config trusting the test CA for the TLS registries, plus `extra` lines under
    /// `registries:` (indented two spaces) and `top` lines at the top level.
    pub fn registry_config(&self, top: &str, extra: &str) -> PathBuf {
        let ca = self.pki.ca_cert.display();
        let text = format!(
            "{top}registries:\n  {}:\n    plainHttp: false\n    caFile: {ca}\n  {}:\n    plainHttp: false\n    caFile: {ca}\n{extra}",
            self.basic.addr, self.token.addr
        );
        let path = self.dir.path().join(format!("registries-{}.yaml", rand_suffix()));
        std::fs::write(&path, text).expect("write registry config");
        path
    }
}

/// A number no other call in this process gets, for file names.
pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Polls `condition` until it holds or `timeout` passes: for state that another task reaches
/// through real I/O (a watch event arriving), not a sleep that hopes.
pub async fn eventually(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    condition()
}

/// A loopback address where nothing listens, kept so while this lives: the socket is bound but
/// never listens, so connections are refused and no other process can take the port (as one
/// could a port found free and released).
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn bind() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a loopback port");
        let addr = socket.local_addr().expect("local addr");
        RefusedPort { addr, _socket: socket }
    }

    /// The same port, listening from now on: a collector that comes back where it was.
    pub fn listen(self) -> tokio::net::TcpListener {
        self._socket.listen(128).expect("listen on the refused port")
    }
}

/// A workload object for the API-server harness or a manifest file.
pub fn workload(kind: &str, namespace: &str, name: &str, image: &str) -> serde_json::Value {
    let pod_spec = serde_json::json!({"containers": [{"name": "main", "image": image}]});
    let mut object = serde_json::json!({"kind": kind, "metadata": {"name": name, "namespace": namespace}});
    match kind {
        "Pod" => object["spec"] = pod_spec,
        "CronJob" => {
            object["spec"] =
                serde_json::json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": pod_spec}}}})
        }
        _ => object["spec"] = serde_json::json!({"template": {"spec": pod_spec}}),
    }
    object
}

/// A `kubernetes.io/dockerconfigjson` Secret holding `user:password` for `registry`.
pub fn pull_secret(namespace: &str, name: &str, registry: &str, user: &str, password: &str) -> serde_json::Value {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string();
    serde_json::json!({
        "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": namespace},
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)}
    })
}

/// A workload object (from [`workload`]) whose pod template names these pull secrets.
pub fn with_pull_secrets(mut object: serde_json::Value, names: &[&str]) -> serde_json::Value {
    object["spec"]["template"]["spec"]["imagePullSecrets"] =
        serde_json::json!(names.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>());
    object
}

/// The registries with team/app:v1, and a cluster with one Deployment using it.
pub async fn one_deployment() -> (Env, apiserver::ApiServer) {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = apiserver::ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    (env, api)
}
