//! What the node would make of a manifest, end to end: the platforms each workload can be
//! scheduled on (the nodes' `kubernetes.io/os`/`arch`, narrowed by its nodeSelector and required
//! node affinity) against indexes and single-platform images, the steady state of one request
//! per probe once a config's platform is known, and the manifests containerd refuses to pull
//! (Docker schema 1, content that does not hash to its digest) — through `check` on the
//! API-server harness, the library against Debian's docker-registry and the fault proxy, and
//! `pullcheck run` with its OTLP series and traces.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pullcheck::config::RegistryConfig;
use pullcheck::credentials::{Credential, CredentialSource, SourcedCredential};
use pullcheck::image::ImageRef;
use pullcheck::platform::Platform;
use pullcheck::registry::{ClientSettings, RegistryClient, State};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, attributes, latest_points, spans};
use support::process::{json_report, run_pullcheck};
use support::proxy::{Fault, FaultProxy, schema1_manifest};
use support::registry::{Registry, Served, sha256};
use support::{Env, PASSWORD, USER, eventually, pull_secret, with_pull_secrets, workload};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers

/// (state, error) of every workload of a report, by workload name.
fn by_workload(report: &Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for image in report["images"].as_array().expect("images") {
        let state = image["state"].as_str().unwrap_or_default().to_string();
        let error = image["error"].as_str().unwrap_or_default().to_string();
        for w in image["workloads"].as_array().expect("workloads") {
            let name = w["name"].as_str().unwrap_or_default().to_string();
            let previous = out.insert(name.clone(), (state.clone(), error.clone()));
            assert!(previous.is_none(), "{name} is in two entries: {report}");
        }
    }
    out
}

fn node(name: &str, arch: &str) -> Value {
    json!({"kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch}}})
}

/// Pinned to `arch` by `nodeSelector`.
fn on_arch_by_selector(mut object: Value, arch: &str) -> Value {
    object["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": arch, "disktype": "ssd"});
    object
}

/// Pinned to `arch` by required node affinity (`nodeSelectorTerms` / `matchExpressions` `In`).
fn on_arch_by_affinity(mut object: Value, arch: &str) -> Value {
    object["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": [arch]}
        ]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
        ]}}]
    }});
    object
}

fn client_with(config: Option<&std::path::Path>) -> RegistryClient {
    let config = config.map(|p| RegistryConfig::load(p).expect("valid test config")).unwrap_or_default();
    let settings = ClientSettings {
        request_timeout: Duration::from_secs(2),
        retries: 1,
        max_retry_wait: Duration::from_secs(5),
        ..ClientSettings::default()
    };
    RegistryClient::new(Arc::new(config), settings)
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("valid test image")
}

fn platforms(list: &[&str]) -> Vec<Platform> {
    list.iter().map(|p| p.parse::<Platform>().expect("platform")).collect()
}

/// Runs `probe` and returns what `registry` answered meanwhile (`METHOD target status`), from
/// its own access log; waits for `expected` lines, returns more if more came.
async fn served_during<T>(registry: &Registry, expected: usize, probe: impl Future<Output = T>) -> (T, Vec<String>) {
    let mark = registry.served().len();
    let result = probe.await;
    let served = registry.served_since(mark, expected).await.iter().map(Served::line).collect();
    (result, served)
}

/// Requests the proxy received since it had seen `mark`, as `METHOD target`.
fn seen_since(proxy: &FaultProxy, mark: usize) -> Vec<String> {
    proxy.seen().iter().skip(mark).map(|s| format!("{} {}", s.method, s.target)).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Per-workload platforms in `check` on a cluster

#[tokio::test]
async fn check_narrows_the_nodes_platforms_to_each_workloads_nodes() {
    let env = Env::start().await;
    let anon = env.anon.addr.clone();
    env.pusher.index("multi/both", "v1", &["amd64", "arm64"]).await;
    env.pusher.index("multi/amd", "v1", &["amd64"]).await;
    env.pusher.image("single/arm", "v1", "arm64").await;
    let (both, amd_only, arm_single) =
        (format!("{anon}/multi/both:v1"), format!("{anon}/multi/amd:v1"), format!("{anon}/single/arm:v1"));
    let api = ApiServer::start().await;
    api.apply(node("node-amd", "amd64"));
    api.apply(node("node-arm", "arm64"));
    api.apply(workload("Deployment", "plat", "both-anywhere", &both));
    api.apply(on_arch_by_selector(workload("Deployment", "plat", "amd-index-on-arm", &amd_only), "arm64"));
    api.apply(on_arch_by_affinity(workload("Deployment", "plat", "amd-index-on-amd", &amd_only), "amd64"));
    api.apply(workload("Deployment", "plat", "arm-image-anywhere", &arm_single));
    api.apply(on_arch_by_selector(workload("Deployment", "plat", "arm-image-on-arm", &arm_single), "arm64"));
    let kubeconfig = api.kubeconfig(env.dir.path()).display().to_string();

    let out = run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "some image cannot be pulled: {}", String::from_utf8_lossy(&out.stderr));
    let r = json_report(&out);
    let found = by_workload(&r);
    let states: BTreeMap<&str, &str> = found.iter().map(|(w, (s, _))| (w.as_str(), s.as_str())).collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("amd-index-on-amd", "available"),
            ("amd-index-on-arm", "platform_missing"),
            ("arm-image-anywhere", "platform_missing"),
            ("arm-image-on-arm", "available"),
            ("both-anywhere", "available"),
        ]),
        "one answer per workload's platforms: {r}"
    );
    let error = |w: &str| found[w].1.clone();
    assert!(error("amd-index-on-arm").contains("lacks linux/arm64"), "names the missing platform: {r}");
    assert!(!error("amd-index-on-arm").contains("lacks linux/amd64"), "only the arm64 nodes count: {r}");
    let single = error("arm-image-anywhere");
    assert!(single.contains("linux/arm64 only") && single.contains("need linux/amd64"), "{single}");
    assert_eq!(error("amd-index-on-amd"), "", "{r}");
    assert_eq!(r["summary"], json!({"available": 3, "platform_missing": 2}), "{r}");

    // A manifest on disk has no nodes: --platform says which.
    let path = env.dir.path().join("arm-image.yaml");
    std::fs::write(&path, workload("Deployment", "plat", "arm-image", &arm_single).to_string()).expect("write");
    let path = path.display().to_string();
    let out = run_pullcheck(&["check", "-f", &path, "-o", "json", "--platform", "linux/amd64"]).await;
    assert_eq!(out.status.code(), Some(1));
    let r = json_report(&out);
    assert_eq!(r["images"][0]["state"], "platform_missing", "{r}");
    assert!(r["images"][0]["error"].as_str().is_some_and(|e| e.contains("linux/arm64 only")), "{r}");
    let out = run_pullcheck(&["check", "-f", &path, "-o", "json", "--platform", "linux/arm64/v8"]).await;
    assert_eq!((out.status.code(), json_report(&out)["images"][0]["state"].clone()), (Some(0), json!("available")));
}

// ---------------------------------------------------------------------------------------------
// 2. Steady state: one request per probe

#[tokio::test]
async fn a_single_platform_image_costs_one_request_once_its_config_is_known() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("single/app", "v1", "amd64").await;
    let client = client_with(None);
    let amd64 = platforms(&["linux/amd64"]);
    let v1 = image(&format!("{}/single/app:v1", env.anon.addr));

    let (first, served) = served_during(&env.anon, 2, client.probe_for(&v1, &[], &amd64, 1)).await;
    assert_eq!((first.state, first.digest.as_deref()), (State::Available, Some(digest.as_str())), "{first:?}");
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(served[0], "GET /v2/single/app/manifests/v1 200", "{served:?}");
    assert!(
        served[1].starts_with("GET /v2/single/app/blobs/sha256:") && served[1].ends_with(" 200"),
        "the config is read on first sight: {served:?}"
    );
    let (again, served) = served_during(&env.anon, 1, client.probe_for(&v1, &[], &amd64, 1)).await;
    assert_eq!(again.state, State::Available, "{again:?}");
    assert_eq!(served, ["GET /v2/single/app/manifests/v1 200"], "then one request per probe");
    assert_eq!(again.http_requests, 1, "{again:?}");

    // Per config digest, not per reference: another tag on the same content reads no config.
    env.pusher.image("single/app", "v2", "amd64").await;
    let v2 = image(&format!("{}/single/app:v2", env.anon.addr));
    let (other_tag, served) = served_during(&env.anon, 1, client.probe_for(&v2, &[], &amd64, 1)).await;
    assert_eq!(other_tag.state, State::Available, "{other_tag:?}");
    assert_eq!(served, ["GET /v2/single/app/manifests/v2 200"]);

    // Behind Basic auth: the challenge and the config on first sight, then one request.
    env.pusher.image("private/arm", "v1", "arm64").await;
    let config = env.registry_config("", "");
    let client = client_with(Some(&config));
    let alice = [SourcedCredential {
        source: CredentialSource::PullSecret("regcred".into()),
        credential: Credential::basic(USER, PASSWORD),
    }];
    let arm64 = platforms(&["linux/arm64"]);
    let private = image(&format!("{}/private/arm:v1", env.basic.addr));
    let (first, served) = served_during(&env.basic, 3, client.probe_for(&private, &alice, &arm64, 1)).await;
    assert_eq!(first.state, State::Available, "{first:?}");
    assert_eq!(served[..2], ["GET /v2/private/arm/manifests/v1 401", "GET /v2/private/arm/manifests/v1 200"]);
    assert!(served.len() == 3 && served[2].starts_with("GET /v2/private/arm/blobs/sha256:"), "{served:?}");
    assert!(served[2].ends_with(" 200"), "the config blob is read with the credential: {served:?}");
    let (again, served) = served_during(&env.basic, 1, client.probe_for(&private, &alice, &arm64, 1)).await;
    assert_eq!(again.state, State::Available, "{again:?}");
    assert_eq!(served, ["GET /v2/private/arm/manifests/v1 200"]);
    assert_eq!(again.http_requests, 1);
}

// ---------------------------------------------------------------------------------------------
// 3. unsupported_manifest

#[tokio::test]
async fn schema1_and_digest_mismatches_are_unsupported_manifest() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let client = client_with(None);
    let amd64 = platforms(&["linux/amd64"]);
    let tag = image(&format!("{}/team/app:v1", proxy.addr()));
    let pinned = image(&format!("{}/team/app@{digest}", proxy.addr()));

    // Through the proxy as it is: the same image, available.
    for (reference, needed) in [(&tag, &[][..]), (&tag, &amd64[..]), (&pinned, &amd64[..])] {
        let r = client.probe_for(reference, &[], needed, 1).await;
        assert_eq!((r.state, r.digest.as_deref()), (State::Available, Some(digest.as_str())), "{r:?}");
    }

    // (a) Docker schema 1: told by the HEAD's media type, and by the GET's body.
    proxy.set(Fault::Schema1);
    let manifest = "/v2/team/app/manifests/v1";
    for (needed, method) in [(&[][..], "HEAD"), (&amd64[..], "GET")] {
        let mark = proxy.seen().len();
        let r = client.probe_for(&tag, &[], needed, 1).await;
        assert_eq!(r.state, State::UnsupportedManifest, "{method}: {r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains("schema 1") && error.contains("re-push the image as Docker schema 2 or OCI"), "{error}");
        assert_eq!(seen_since(&proxy, mark), [format!("{method} {manifest}")], "one request decides it");
        assert_eq!(r.digest.as_deref(), Some(sha256(&schema1_manifest()).as_str()));
    }

    // (b) An announced digest the content does not hash to.
    let wrong = sha256(b"some other content");
    proxy.set(Fault::WrongDigest(wrong.clone()));
    let r = client.probe_for(&tag, &[], &amd64, 1).await;
    assert_eq!(r.state, State::UnsupportedManifest, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains(&format!("does not match its digest {wrong}")), "{error}");
    assert!(error.contains(&format!("hashes to {digest}")), "names the content's own digest: {error}");

    // A pinned digest the served content does not hash to.
    let other = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": support::registry::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": wrong, "size": 18},
        "layers": []
    }))
    .expect("json");
    proxy.set(Fault::Body(other.clone()));
    let r = client.probe_for(&pinned, &[], &amd64, 1).await;
    assert_eq!(r.state, State::UnsupportedManifest, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains(&format!("does not match its digest {digest}")), "{error}");
    assert!(error.contains(&format!("hashes to {}", sha256(&other))), "{error}");
    assert_eq!(r.digest.as_deref(), Some(digest.as_str()), "the digest asked for");

    // Through the CLI: the state's JSON name and exit code 1.
    proxy.set(Fault::Schema1);
    let path = env.dir.path().join("legacy.yaml");
    std::fs::write(&path, workload("Deployment", "legacy", "web", &tag.to_string()).to_string()).expect("write");
    let path = path.display().to_string();
    let out = run_pullcheck(&["check", "-f", &path, "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json_report(&out);
    assert_eq!(r["images"][0]["state"], "unsupported_manifest", "{r}");
    assert!(r["images"][0]["error"].as_str().is_some_and(|e| e.contains("re-push")), "{r}");
    assert_eq!(r["summary"], json!({"unsupported_manifest": 1}));
    proxy.set(Fault::WrongDigest(wrong.clone()));
    let out = run_pullcheck(&["check", "-f", &path, "-o", "json", "--platform", "linux/amd64"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_report(&out)["images"][0]["state"], "unsupported_manifest", "{}", json_report(&out));
}

// ---------------------------------------------------------------------------------------------
// 4. `run` gives the node's answer too

struct Running {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        tokio::time::timeout(WAIT, self.child.wait()).await.ok().and_then(|s| s.ok()).and_then(|s| s.code())
    }
}

/// `pullcheck run` against the harness, exporting to `endpoint` (as tests/run_otlp.rs starts it).
fn start_run(env: &Env, api: &ApiServer, endpoint: &str) -> Running {
    let kubeconfig = api.kubeconfig(env.dir.path());
    let registry_config = env.registry_config("", "");
    let registry_config = registry_config.display().to_string();
    let log = env.dir.path().join(format!("run-{}.log", support::rand_suffix()));
    let args = ["--registry-config", &registry_config, "--window", "4s", "--tick", "200ms", "--failure-retry", "500ms"];
    let args = [&args[..], &["--health-addr", "127.0.0.1:0", "--request-timeout", "2s", "--retries", "0"]].concat();
    let (child, home) = support::process::spawn_run(&kubeconfig, &args, Some(endpoint), &[], &log);
    Running { child, log, _home: home }
}

/// The newest value of a per-container metric and its state attribute, by deployment name.
fn by_deployment(r: &Received, metric: &str) -> BTreeMap<String, (String, f64)> {
    latest_points(r, metric)
        .into_iter()
        .map(|(a, v)| {
            let get = |k: &str| a.get(k).cloned().unwrap_or_default();
            (get("k8s.deployment.name"), (get("pullcheck.image.state"), v))
        })
        .collect()
}

/// Every probe trace of `name`, oldest first: its root's credential source, and the credential
/// spans under it as (source, state), oldest first.
fn credential_traces(r: &Received, name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let all = spans(r);
    let mut roots: Vec<_> = all.iter().filter(|s| s.name == name && s.parent_span_id.is_empty()).collect();
    roots.sort_by_key(|s| s.start_time_unix_nano);
    roots
        .into_iter()
        .map(|root| {
            let mut children: Vec<_> = all
                .iter()
                .filter(|s| s.trace_id == root.trace_id && s.parent_span_id == root.span_id)
                .filter(|s| s.name.starts_with("credential "))
                .collect();
            children.sort_by_key(|s| s.start_time_unix_nano);
            let attribute = |attrs: &BTreeMap<String, String>, k: &str| attrs.get(k).cloned().unwrap_or_default();
            let credentials = children
                .into_iter()
                .map(|s| {
                    let a = attributes(&s.attributes);
                    assert_eq!(s.name, format!("credential {}", attribute(&a, "pullcheck.credential.source")));
                    (attribute(&a, "pullcheck.credential.source"), attribute(&a, "pullcheck.image.state"))
                })
                .collect();
            (attribute(&attributes(&root.attributes), "pullcheck.credential.source"), credentials)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_what_the_nodes_would_get() {
    let env = Env::start().await;
    let (basic, anon) = (env.basic.addr.clone(), env.anon.addr.clone());
    env.pusher.index("private/app", "v1", &["amd64", "arm64"]).await;
    env.pusher.index("multi/amd", "v1", &["amd64"]).await;
    let api = ApiServer::start().await;
    api.apply(node("node-amd", "amd64"));
    api.apply(node("node-arm", "arm64"));
    // (a) A rotated-out secret left in front of the current one.
    api.apply(pull_secret("team-a", "old", &basic, USER, "rotated-out"));
    api.apply(pull_secret("team-a", "current", &basic, USER, PASSWORD));
    let private = format!("{basic}/private/app:v1");
    api.apply(with_pull_secrets(workload("Deployment", "team-a", "rotating", &private), &["old", "current"]));
    // (b) An amd64-only index on arm64 nodes; the same index where only amd64 nodes run it.
    let amd_only = format!("{anon}/multi/amd:v1");
    api.apply(on_arch_by_selector(workload("Deployment", "team-b", "on-arm", &amd_only), "arm64"));
    api.apply(on_arch_by_affinity(workload("Deployment", "team-b", "on-amd", &amd_only), "amd64"));

    let receiver = Receiver::http().await;
    let run = start_run(&env, &api, &receiver.endpoint);
    let expected = BTreeMap::from([
        ("on-amd".to_string(), ("available".to_string(), 1.0)),
        ("on-arm".to_string(), ("platform_missing".to_string(), 1.0)),
        ("rotating".to_string(), ("available".to_string(), 1.0)),
    ]);
    let status = |r: &Received| by_deployment(r, "pullcheck.image.status");
    assert!(
        eventually(WAIT, || receiver.received(status) == expected).await,
        "{:?}\n{}",
        receiver.received(status),
        run.stderr()
    );
    let available: BTreeMap<String, f64> = receiver
        .received(|r| by_deployment(r, "pullcheck.image.available"))
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect();
    let expected = [("on-amd", 1.0), ("on-arm", 0.0), ("rotating", 1.0)].map(|(w, v)| (w.to_string(), v));
    assert_eq!(available, BTreeMap::from(expected));

    // (a)'s first probe tried both secrets, each attempt a span; the next ones start with the
    // one that worked, so the rotated-out secret costs nothing in steady state.
    let name = format!("probe {basic}/private/app");
    let traces = |r: &Received| credential_traces(r, &name);
    assert!(
        eventually(WAIT, || receiver.received(traces).len() >= 2).await,
        "{:?}\n{}",
        receiver.received(traces),
        run.stderr()
    );
    let traces = receiver.received(traces);
    let pair = |source: &str, state: &str| (source.to_string(), state.to_string());
    assert_eq!(
        traces[0],
        (
            "pull secret team-a/current".to_string(),
            vec![
                pair("pull secret team-a/old", "authentication_failure"),
                pair("pull secret team-a/current", "available")
            ]
        ),
        "first probe: {traces:?}"
    );
    assert_eq!(
        traces[1],
        ("pull secret team-a/current".to_string(), vec![pair("pull secret team-a/current", "available")]),
        "next probe: {traces:?}"
    );
    assert_eq!(run.terminate().await, Some(0));
}
