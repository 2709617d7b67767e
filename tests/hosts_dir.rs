//! Probes that go where the node's pulls go: containerd hosts directories (`--hosts-dir`) with
//! mirrors, capabilities, `override_path`, a server with its own CA, `_default`, `host_port_`
//! naming and headers; their precedence over the registry config's mirrors; loopback TLS as
//! containerd 2.x reaches it; and kubelet credential-provider plugins end to end. Real
//! docker-registry processes behind every endpoint, the binary run as a user runs it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pullcheck::config::RegistryConfig;
use pullcheck::config::hosts::HostsDir;
use pullcheck::credentials::{Credential, CredentialProviders, CredentialSource, SourcedCredential};
use pullcheck::image::ImageRef;
use pullcheck::registry::{ClientSettings, ProbeResult, RegistryClient, State};
use serde_json::Value;
use support::http::{Reply, Request, Server};
use support::proxy::FaultProxy;
use support::registry::{Registry, Served};
use support::{Env, PASSWORD, USER};

fn settings() -> ClientSettings {
    ClientSettings { request_timeout: Duration::from_secs(2), retries: 0, ..ClientSettings::default() }
}

fn client(config: RegistryConfig) -> RegistryClient {
    RegistryClient::new(Arc::new(config), settings())
}

/// A client reaching registries through the hosts directory `dir` (and `config`, if any).
fn hosts_client(config: Option<&Path>, dir: &Path) -> RegistryClient {
    let config = config.map(|p| RegistryConfig::load(p).expect("valid test config")).unwrap_or_default();
    client(config.with_hosts_dir(HostsDir::load(dir).expect("valid hosts directory")))
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("valid test image")
}

fn pull_secret(name: &str, password: &str) -> SourcedCredential {
    SourcedCredential {
        source: CredentialSource::PullSecret(name.into()),
        credential: Credential::basic(USER, password),
    }
}

async fn probe(client: &RegistryClient, reference: &str, chain: &[SourcedCredential]) -> ProbeResult {
    client.probe_for(&image(reference), chain, &[], 1).await
}

/// `DIR/<name>/hosts.toml` holding `text`.
fn hosts_toml(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name)).expect("mkdir host dir");
    std::fs::write(dir.join(name).join("hosts.toml"), text).expect("write hosts.toml");
}

/// `METHOD target status` of what `registry` answered after the first `mark` lines.
async fn served_since(registry: &Registry, mark: usize, at_least: usize) -> Vec<String> {
    registry.served_since(mark, at_least).await.iter().map(Served::line).collect()
}

fn seen_targets(proxy: &FaultProxy) -> Vec<String> {
    proxy.seen().iter().map(|s| format!("{} {}", s.method, s.target)).collect()
}

/// A small HTTP server in front of the anonymous registry: it records every request as it got
/// it (target and headers), forwards `<prefix><rest>` to the registry's `/v2/<rest>`, and
/// answers 404 to everything while `missing` is set.
struct Recorder {
    server: Server,
    seen: Arc<Mutex<Vec<Request>>>,
    missing: Arc<AtomicBool>,
}

impl Recorder {
    async fn start(upstream: &str, prefix: &'static str) -> Recorder {
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let missing: Arc<AtomicBool> = Arc::default();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let upstream = format!("http://{upstream}");
        let (sn, ms) = (seen.clone(), missing.clone());
        let server = Server::start("127.0.0.1:0", move |req: Request| {
            sn.lock().expect("lock").push(req.clone());
            let missing = ms.load(Ordering::SeqCst);
            let (http, upstream) = (http.clone(), upstream.clone());
            async move {
                let Some(rest) = req.target.strip_prefix(prefix).filter(|_| !missing) else {
                    return Reply::status(404);
                };
                let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
                let mut forward = http.request(method, format!("{upstream}/v2/{rest}"));
                for (k, v) in req.headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("host")) {
                    forward = forward.header(k, v);
                }
                let Ok(response) = forward.send().await else { return Reply::status(502) };
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                    .collect();
                let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                Reply::Full { status, headers, body }
            }
        })
        .await;
        Recorder { server, seen, missing }
    }

    fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    fn answer_404(&self, missing: bool) {
        self.missing.store(missing, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }

    fn targets(&self) -> Vec<String> {
        self.seen().iter().map(|r| format!("{} {}", r.method, r.target)).collect()
    }
}

/// Every value of header `name` on a request, in order.
fn header_values(request: &Request, name: &str) -> Vec<String> {
    request.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
}

#[tokio::test]
async fn mirrors_by_capability_override_path_then_the_server_trusted_through_its_ca() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let pull_only = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let rewriting = Recorder::start(&env.anon.addr, "/mirror/").await;
    let dir = env.dir.path().join("certs.d");
    let server = format!("server = \"https://{}\"\nca = \"{}\"\n", env.basic.addr, env.pki.ca_cert.display());
    let mirrors = format!(
        "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n\
         [host.\"http://{}/mirror\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
        pull_only.addr(),
        rewriting.addr()
    );
    hosts_toml(&dir, "mirror.test", &format!("{server}{mirrors}"));
    let client = hosts_client(None, &dir);
    let tag = "mirror.test/team/app:v1";

    // A tag: only the endpoint that may resolve answers, at its own path with `?ns=`.
    let basic_mark = env.basic.served().len();
    let r = probe(&client, tag, &[]).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!((r.registry.as_str(), r.digest.as_deref()), (rewriting.addr().as_str(), Some(digest.as_str())));
    assert_eq!(
        rewriting.targets(),
        ["HEAD /mirror/team/app/manifests/v1?ns=mirror.test"],
        "override_path: no /v2 added; the registry named in ns"
    );
    assert!(pull_only.seen().is_empty(), "a pull-only mirror resolves no tag: {:?}", seen_targets(&pull_only));

    // A digest: the first endpoint that may pull, in file order.
    let pinned = format!("mirror.test/team/app@{digest}");
    let r = probe(&client, &pinned, &[]).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.registry, pull_only.addr(), "{r:?}");
    assert_eq!(seen_targets(&pull_only), [format!("HEAD /v2/team/app/manifests/{digest}?ns=mirror.test")]);
    assert_eq!(rewriting.seen().len(), 1, "the pull-only mirror answered first: {:?}", rewriting.targets());
    assert_eq!(env.basic.served().len(), basic_mark, "the server was not asked while a mirror served");

    // The resolving mirror lacks it: the server, over TLS trusted through `ca`, with the
    // workload's credential (never given to the mirrors).
    rewriting.answer_404(true);
    let alice = [pull_secret("regcred", PASSWORD)];
    let mark = env.basic.served().len();
    let r = probe(&client, tag, &alice).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.credential, Some(CredentialSource::PullSecret("regcred".into())), "{r:?}");
    let manifest = "HEAD /v2/team/app/manifests/v1?ns=mirror.test";
    assert_eq!(served_since(&env.basic, mark, 2).await, [format!("{manifest} 401"), format!("{manifest} 200")]);
    assert_eq!(rewriting.targets().len(), 2, "the mirror was asked first: {:?}", rewriting.targets());
    assert!(rewriting.seen().iter().all(|r| r.header("authorization").is_none()), "no workload credential to a mirror");
    let r = probe(&client, tag, &[]).await;
    assert_eq!(r.state, State::AuthenticationFailure, "no credential: {r:?}");
    assert_eq!(pull_only.seen().len(), 1, "tags never went to the pull-only mirror: {:?}", seen_targets(&pull_only));

    // Without the server's `ca`, its certificate is not trusted: unavailable, not downgraded.
    let no_ca = env.dir.path().join("certs-no-ca.d");
    hosts_toml(&no_ca, "mirror.test", &format!("server = \"https://{}\"\n{mirrors}", env.basic.addr));
    let r = probe(&hosts_client(None, &no_ca), tag, &alice).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains(&env.basic.addr) && error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_host_entry_at_the_servers_own_url_keeps_its_own_tls_settings() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let registry = env.basic.addr.clone();
    let tag = format!("{registry}/team/app:v1");
    let alice = [pull_secret("regcred", PASSWORD)];
    // containerd's documented shapes: the server's CA (or skip_verify) in a `[host]` table whose
    // URL is the server's, with and without the `server` line.
    let shapes = [
        (
            "ca",
            format!(
                "server = \"https://{registry}\"\n[host.\"https://{registry}\"]\n  ca = \"{}\"\n",
                env.pki.ca_cert.display()
            ),
        ),
        (
            "skip_verify",
            format!("server = \"https://{registry}\"\n[host.\"https://{registry}\"]\n  skip_verify = true\n"),
        ),
        ("ca, no server line", format!("[host.\"https://{registry}\"]\n  ca = \"{}\"\n", env.pki.ca_cert.display())),
    ];
    for (shape, text) in shapes {
        let dir = env.dir.path().join(format!("certs-{}.d", support::rand_suffix()));
        hosts_toml(&dir, &registry, &text);
        let client = hosts_client(None, &dir);
        let r = probe(&client, &tag, &alice).await;
        assert_eq!(r.state, State::Available, "{shape}: the pull secret's credential over the entry's TLS: {r:?}");
        assert_eq!(r.credential, Some(CredentialSource::PullSecret("regcred".into())), "{shape}: {r:?}");
        let r = probe(&client, &tag, &[]).await;
        assert_eq!(r.state, State::AuthenticationFailure, "{shape}: no credential, the registry's own 401: {r:?}");
    }
}

#[tokio::test]
async fn default_directory_and_host_port_directories_with_their_headers() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let recorder = Recorder::start(&env.anon.addr, "/v2/").await;
    let port = recorder.server.addr.port();
    let dir = env.dir.path().join("certs.d");
    hosts_toml(
        &dir,
        "_default",
        &format!("server = \"http://{}\"\n[header]\n  x-hosts-dir = \"_default\"\n", recorder.addr()),
    );
    // `127.0.0.1:<port>` is looked up as `127.0.0.1_<port>_`.
    hosts_toml(
        &dir,
        &format!("127.0.0.1_{port}_"),
        &format!(
            "server = \"http://127.0.0.1:{port}\"\n[header]\n  x-hosts-dir = \"host_port_\"\n  x-many = [\"a\", \"b\"]\n"
        ),
    );
    let client = hosts_client(None, &dir);

    // No directory of its own (and a name no resolver knows): `_default` takes it.
    let r = probe(&client, "elsewhere.test/team/app:v1", &[]).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    let seen = recorder.seen();
    assert_eq!(recorder.targets(), ["HEAD /v2/team/app/manifests/v1?ns=elsewhere.test"]);
    assert_eq!(header_values(&seen[0], "x-hosts-dir"), ["_default"]);

    let r = probe(&client, &format!("127.0.0.1:{port}/team/app:v1"), &[]).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.http_requests, 1, "an http:// server without TLS settings is plain HTTP at once: {r:?}");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 2, "{:?}", recorder.targets());
    assert_eq!(seen[1].target, "/v2/team/app/manifests/v1", "the server is the registry itself: no ns");
    assert_eq!(header_values(&seen[1], "x-hosts-dir"), ["host_port_"], "its own directory, not _default");
    assert_eq!(header_values(&seen[1], "x-many"), ["a", "b"], "every value of an array header");
}

/// A registry config whose `mirrors:` for both registries point at `mirror`.
fn mirrors_config(dir: &Path, mirror: &str) -> PathBuf {
    let path = dir.join("mirrors.yaml");
    let text = format!(
        "registries:\n  precedence.test:\n    mirrors: ['{mirror}']\n  other.test:\n    mirrors: ['{mirror}']\n"
    );
    std::fs::write(&path, text).expect("write registry config");
    path
}

#[tokio::test]
async fn a_hosts_directory_entry_wins_over_the_registry_configs_mirrors() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let upstream = format!("http://{}", env.anon.addr);
    let config_mirror = FaultProxy::start(upstream.clone()).await;
    let hosts_mirror = FaultProxy::start(upstream).await;
    let config = mirrors_config(env.dir.path(), &config_mirror.addr());
    let dir = env.dir.path().join("certs.d");
    hosts_toml(&dir, "precedence.test", &format!("[host.\"http://{}\"]\n", hosts_mirror.addr()));
    let client = hosts_client(Some(&config), &dir);

    let r = probe(&client, "precedence.test/team/app:v1", &[]).await;
    assert_eq!((r.state, r.registry.as_str()), (State::Available, hosts_mirror.addr().as_str()), "{r:?}");
    assert_eq!(seen_targets(&hosts_mirror), ["HEAD /v2/team/app/manifests/v1?ns=precedence.test"]);
    assert!(config_mirror.seen().is_empty(), "the config's mirror is not asked: {:?}", seen_targets(&config_mirror));

    let r = probe(&client, "other.test/team/app:v1", &[]).await;
    assert_eq!((r.state, r.registry.as_str()), (State::Available, config_mirror.addr().as_str()), "{r:?}");
    assert_eq!(hosts_mirror.seen().len(), 1, "no hosts entry for other.test");

    // The same through the binary's flags.
    let manifest = env.dir.path().join("pods.yaml");
    let pods: Vec<String> = [("a", "precedence.test"), ("b", "other.test")]
        .iter()
        .map(|(name, r)| format!("kind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: \"{r}/team/app:v1\"}}]}}\n"))
        .collect();
    std::fs::write(&manifest, pods.join("\n---\n")).expect("write manifest");
    let (hosts_before, config_before) = (hosts_mirror.seen().len(), config_mirror.seen().len());
    let out = check(&[
        "-f",
        &manifest.display().to_string(),
        "--registry-config",
        &config.display().to_string(),
        "--hosts-dir",
        &dir.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(entry(&report, "precedence.test/team/app:v1")["registry"], hosts_mirror.addr().as_str());
    assert_eq!(entry(&report, "other.test/team/app:v1")["registry"], config_mirror.addr().as_str());
    assert_eq!(hosts_mirror.seen().len(), hosts_before + 1, "{:?}", seen_targets(&hosts_mirror));
    assert!(
        config_mirror.seen()[config_before..].iter().all(|s| s.target.ends_with("?ns=other.test")),
        "{:?}",
        seen_targets(&config_mirror)
    );
}

#[tokio::test]
async fn loopback_tls_as_containerd_2_reaches_it() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let basic = format!("{}/private/app:v1", env.basic.addr);
    let alice = [pull_secret("regcred", PASSWORD)];
    let config = |name: &str, text: String| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).expect("write registry config");
        client(RegistryConfig::load(&path).expect("valid registry config"))
    };

    // A CA alone means TLS, loopback or not.
    let with_ca =
        config("ca.yaml", format!("registries:\n  {}:\n    caFile: {}\n", env.basic.addr, env.pki.ca_cert.display()));
    let r = probe(&with_ca, &basic, &alice).await;
    assert_eq!(r.state, State::Available, "{r:?}");

    // Unconfigured, on a port of its own: HTTPS first, without verifying the certificate, as
    // containerd 2.x reaches a local registry — so a self-signed one pulls.
    let mark = env.basic.served().len();
    let r = probe(&client(RegistryConfig::default()), &basic, &alice).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    let served: Vec<String> = env.basic.served_since(mark, 2).await.iter().map(|s| s.line()).collect();
    assert_eq!(served, ["HEAD /v2/private/app/manifests/v1 401", "HEAD /v2/private/app/manifests/v1 200"]);

    // HTTPS asked for explicitly, no CA: an untrusted certificate is no reason to try plain HTTP.
    let mark = env.basic.served().len();
    let https = config("https.yaml", format!("registries:\n  {}:\n    plainHttp: false\n", env.basic.addr));
    let r = probe(&https, &basic, &alice).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("certificate")), "{r:?}");
    assert_eq!(r.http_requests, 1, "no plain-HTTP attempt after the TLS failure: {r:?}");
    assert_eq!(env.basic.served().len(), mark);

    // Plain HTTP forced on a TLS server: its 400, explained.
    let plain = config("plain.yaml", format!("registries:\n  {}:\n    plainHttp: true\n", env.basic.addr));
    let r = probe(&plain, &basic, &alice).await;
    assert_eq!(r.state, State::UnknownError, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains("HTTP 400") && error.contains("a TLS server answers those so"), "{error}");
    assert!(error.contains("plainHttp: false") && error.contains("caFile"), "says how to fix it: {error}");
    // The same from a hosts.toml `http://` server: the fix is in the hosts.toml, which it names.
    let dir = env.dir.path().join("certs.d");
    hosts_toml(&dir, "tls.test", &format!("server = \"http://{}\"\n", env.basic.addr));
    let r = probe(&hosts_client(None, &dir), "tls.test/private/app:v1", &alice).await;
    assert_eq!(r.state, State::UnknownError, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("a TLS server answers those so") && error.contains("https:// URL in its hosts.toml"),
        "{error}"
    );

    // A plain-HTTP loopback registry, unconfigured: HTTPS tried, then HTTP, remembered.
    let anon = format!("{}/private/app:v1", env.anon.addr);
    let unconfigured = client(RegistryConfig::default());
    let mark = env.anon.served().len();
    let r = probe(&unconfigured, &anon, &[]).await;
    assert_eq!((r.state, r.http_requests), (State::Available, 2), "HTTPS attempt, then HTTP: {r:?}");
    assert_eq!(served_since(&env.anon, mark, 1).await, ["HEAD /v2/private/app/manifests/v1 200"]);
    let mark = env.anon.served().len();
    let r = probe(&unconfigured, &anon, &[]).await;
    assert_eq!((r.state, r.http_requests), (State::Available, 1), "{r:?}");
    assert_eq!(served_since(&env.anon, mark, 1).await, ["HEAD /v2/private/app/manifests/v1 200"]);
}

const PROVIDER_API: &str = "credentialprovider.kubelet.k8s.io/v1";

/// A bin dir of `/bin/sh` plugins, each counting its calls in `<name>.calls`, and configs
/// naming them.
struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        Self { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// A plugin that counts its call, reads its request, then prints `stdout`.
    fn plugin(&self, name: &str, stdout: &str) {
        let calls = self.dir.path().join(format!("{name}.calls"));
        let script =
            format!("#!/bin/sh\necho call >> '{}'\ncat > /dev/null\ncat <<'EOF'\n{stdout}\nEOF\n", calls.display());
        let path = self.bin().join(name);
        std::fs::write(&path, script).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    }

    fn calls(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.calls"))).map_or(0, |s| s.lines().count())
    }

    /// A CredentialProviderConfig of `(name, matchImages)` providers.
    fn config(&self, file: &str, providers: &[(&str, &str)]) -> PathBuf {
        let mut text =
            String::from("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n");
        for (name, matching) in providers {
            text.push_str(&format!(
                "  - name: {name}\n    apiVersion: {PROVIDER_API}\n    matchImages: [\"{matching}\"]\n    defaultCacheDuration: \"0s\"\n"
            ));
        }
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write provider config");
        path
    }
}

/// The plugin answer kubelet expects, giving alice's credential for `registry`.
fn provider_response(registry: &str) -> String {
    format!(
        r#"{{"kind":"CredentialProviderResponse","apiVersion":"{PROVIDER_API}","cacheKeyType":"Registry","auth":{{"{registry}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#
    )
}

const GARBAGE: &str = "token=leaked-secret-1234 this is not JSON";

async fn check(args: &[&str]) -> Output {
    let (mut command, _home) = support::process::pullcheck_async();
    command.arg("check").args(args).args(["-o", "json"]).output().await.expect("run pullcheck")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn entry<'a>(report: &'a Value, image: &str) -> &'a Value {
    report["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["image"] == image))
        .unwrap_or_else(|| panic!("{image} in {report}"))
}

#[tokio::test]
async fn credential_provider_plugins_end_to_end() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let registry = &env.basic.addr;
    let reference = format!("{registry}/private/app:v1");
    let ca_only = env.dir.path().join("ca-only.yaml");
    std::fs::write(&ca_only, format!("registries:\n  {registry}:\n    caFile: {}\n", env.pki.ca_cert.display()))
        .expect("write registry config");
    let manifest = env.dir.path().join("pod.yaml");
    let pod = support::workload("Pod", "shop", "app", &reference);
    std::fs::write(&manifest, serde_json::to_string(&pod).expect("json")).expect("write manifest");

    let plugins = Plugins::new();
    plugins.plugin("node-creds", &provider_response(registry));
    plugins.plugin("broken-creds", GARBAGE);
    plugins.plugin("elsewhere-creds", &provider_response("unmatched.example"));
    let run = |config: PathBuf| {
        let (manifest, ca_only, bin) = (manifest.clone(), ca_only.clone(), plugins.bin());
        async move {
            let path = |p: &Path| p.display().to_string();
            let args = [
                "-f".to_string(),
                path(&manifest),
                "--registry-config".into(),
                path(&ca_only),
                "--image-credential-provider-config".into(),
                path(&config),
                "--image-credential-provider-bin-dir".into(),
                path(&bin),
            ];
            check(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
        }
    };

    let good = plugins.config("good.yaml", &[("node-creds", registry), ("elsewhere-creds", "unmatched.example")]);
    let out = run(good.clone()).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let app = entry(&report, &reference);
    assert_eq!(app["state"], "available", "{app}");
    assert_eq!(app["credential"], "credential provider node-creds", "{app}");
    assert_eq!(plugins.calls("node-creds"), 1);
    assert_eq!(plugins.calls("elsewhere-creds"), 0, "a plugin whose matchImages do not match is never run");

    let broken = plugins.config("broken.yaml", &[("broken-creds", registry), ("elsewhere-creds", "unmatched.example")]);
    let out = run(broken).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let app = entry(&report, &reference);
    assert_eq!(app["state"], "authentication_failure", "{app}");
    let error = app["error"].as_str().unwrap_or_default();
    assert!(error.contains("credential provider broken-creds: invalid response"), "{error}");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for printed in ["leaked-secret-1234", "token=", "not JSON"] {
        assert!(!stdout.contains(printed) && !stderr.contains(printed), "{printed:?} in {stdout}\n{stderr}");
    }
    assert_eq!(plugins.calls("broken-creds"), 1);
    assert_eq!(plugins.calls("elsewhere-creds"), 0);

    // kubelet's order: the workload's pull secret (a stale one), then the node's plugin.
    let providers = CredentialProviders::load(&good, &plugins.bin(), Duration::from_secs(5)).expect("providers load");
    let config = RegistryConfig::load(&ca_only).expect("valid registry config").with_providers(providers);
    let client = client(config);
    let mark = env.basic.served().len();
    let r = probe(&client, &reference, &[pull_secret("stale", "rotated-out")]).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.credential, Some(CredentialSource::Provider("node-creds".into())), "{r:?}");
    assert_eq!(r.credential_index, None, "not one of the workload's credentials");
    let statuses: Vec<u16> = env.basic.served_since(mark, 3).await.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [401, 401, 200], "challenge, the stale secret refused, the plugin's accepted");
    assert_eq!(plugins.calls("node-creds"), 2);
}

/// containerd's HTTP fallback for an `http://` entry with TLS settings written without a port:
/// HTTPS (443) refused, so plain HTTP on 80 is asked; with a port written, no other port is.
#[tokio::test]
async fn an_http_entry_without_a_port_falls_back_to_port_80_when_https_is_refused() {
    // Port 80 of a loopback address of its own, which needs root (as on CI).
    const PORT_80: &str = "127.0.80.1:80";
    if let Err(e) = std::net::TcpListener::bind(PORT_80)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        eprintln!("skipped: binding {PORT_80} needs root or CAP_NET_BIND_SERVICE");
        return;
    }
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let on_80 = FaultProxy::start_on(PORT_80, format!("http://{}", env.anon.addr)).await;
    let refused = support::RefusedPort::bind();
    let dir = env.dir.path().join("certs.d");
    hosts_toml(
        &dir,
        "noport.test",
        &format!(
            "[host.\"http://{}\"]\n  skip_verify = true\n[host.\"http://127.0.80.1\"]\n  skip_verify = true\n",
            refused.addr
        ),
    );
    let client = hosts_client(None, &dir);
    let r = probe(&client, "noport.test/team/app:v1", &[]).await;
    assert_eq!((r.state, r.registry.as_str()), (State::Available, "127.0.80.1"), "{r:?}");
    assert_eq!(r.http_requests, 3, "the port written: HTTPS only; without: HTTPS, then HTTP on 80: {r:?}");
    assert_eq!(seen_targets(&on_80), ["HEAD /v2/team/app/manifests/v1?ns=noport.test"]);
    let r = probe(&client, "noport.test/team/app:v1", &[]).await;
    assert_eq!((r.state, r.http_requests), (State::Available, 2), "plain HTTP remembered: {r:?}");
}
