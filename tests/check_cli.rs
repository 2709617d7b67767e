//! `pullcheck check -f` as a user runs it: a subprocess over manifest files, its JSON and exit
//! code — cut off from whatever cluster the machine running the tests can reach.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::apiserver::ApiServer;
use support::registry::{Auth, Registry};
use support::{Env, workload};

fn pullcheck(args: &[&str], stdin: Option<&str>) -> Output {
    let (mut command, _home) = support::process::pullcheck();
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pullcheck");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default().as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("pullcheck output")
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

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

fn manifests(registry: &str) -> String {
    format!(
        r#"# Source: shop/templates/web.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  template:
    spec:
      containers:
      - {{name: app, image: "{registry}/team/app:v1"}}
      - {{name: sidecar, image: "{registry}/team/app:gone"}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: report, namespace: shop}}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          initContainers: [{{name: setup, image: "Team/App:v1"}}]
          containers: [{{name: run, image: "{registry}/team/app:v1"}}]
"#
    )
}

#[tokio::test]
async fn json_report_and_exit_codes() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let dir = env.dir.path();
    let registry = &env.anon.addr;
    let file = write(dir, "app.yaml", &manifests(registry));

    let out = pullcheck(&["check", "-f", &file, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let app = entry(&report, &format!("{registry}/team/app:v1"));
    assert_eq!(app["state"], "available");
    assert_eq!(app["canonical"], format!("{registry}/team/app:v1"));
    assert_eq!(app["digest"], digest);
    assert_eq!(app["registry"], registry.as_str());
    assert!(app["duration_ms"].is_u64() && app["error"].is_null());
    let users: Vec<(String, String)> = app["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .map(|w| (w["kind"].as_str().unwrap_or_default().into(), w["container"].as_str().unwrap_or_default().into()))
        .collect();
    assert_eq!(users, [("CronJob".to_string(), "run".to_string()), ("Deployment".into(), "app".into())]);
    assert_eq!(entry(&report, &format!("{registry}/team/app:gone"))["state"], "absent");
    let bad = entry(&report, "Team/App:v1");
    assert_eq!(bad["state"], "bad_image_format");
    assert!(bad["canonical"].is_null() && bad["error"].as_str().is_some_and(|e| e.contains("lowercase")), "{bad}");
    assert_eq!(report["summary"], serde_json::json!({"absent": 1, "bad_image_format": 1, "available": 1}));
    assert_eq!(report["images"][0]["state"], "absent", "problems first");

    // Only the available image left: exit 0. Ignore and allow patterns select.
    let ok = pullcheck(
        &["check", "-f", &file, "-o", "json", "--ignore-images", ":gone$", "--allow-images", "^127\\.0\\.0\\.1"],
        None,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    assert_eq!(json(&ok)["summary"], serde_json::json!({"available": 1}));
}

#[tokio::test]
async fn malformed_documents_are_reported_and_do_not_stop_the_others() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let registry = &env.anon.addr;
    let text = format!(
        "kind: Pod\nmetadata: {{name: broken\nspec: [\n---\nkind: Pod\nmetadata: {{name: ok}}\nspec: {{containers: [{{name: c, image: \"{registry}/team/app:v1\"}}]}}\n"
    );
    let out = pullcheck(&["check", "-f", "-", "-o", "json"], Some(&text));
    assert_eq!(out.status.code(), Some(2), "an unreadable input is exit 2");
    let report = json(&out);
    assert_eq!(entry(&report, &format!("{registry}/team/app:v1"))["state"], "available");
    assert_eq!(report["input_errors"][0]["file"], "<stdin>");
    assert_eq!(report["input_errors"][0]["document"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("<stdin>: document 1:"), "{stderr}");
}

#[tokio::test]
async fn directories_table_output_and_registry_config() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let dir = env.dir.path().join("manifests/nested");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let registry = &env.basic.addr;
    write(
        &dir,
        "pod.yml",
        &format!(
            "kind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, image: \"{registry}/private/app:v1\"}}]}}\n"
        ),
    );
    write(&dir, "notes.txt", "kind: Pod\nthis is not read");
    let root = env.dir.path().join("manifests").display().to_string();
    let config = env.registry_config("", "");
    let config = config.display().to_string();

    let out = pullcheck(&["check", "-f", &root, "--registry-config", &config], None);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("STATE"), "{table}");
    assert!(table.contains("authentication_failure") && table.contains("Pod default/p (c)"), "{table}");
    assert!(table.contains("1 images: 1 authentication_failure"), "{table}");

    let with_auth = env.dir.path().join("auth.yaml");
    std::fs::write(
        &with_auth,
        format!(
            "registries:\n  {registry}:\n    plainHttp: false\n    caFile: {}\n    auth: {{username: {}, passwordFile: pw}}\n",
            env.pki.ca_cert.display(),
            support::USER
        ),
    )
    .expect("write");
    std::fs::write(env.dir.path().join("pw"), format!("{}\n", support::PASSWORD)).expect("write");
    let out = pullcheck(&["check", "-f", &root, "--registry-config", &with_auth.display().to_string()], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(support::PASSWORD));
}

#[test]
fn usage_and_config_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "registries:\n  r.example:\n    maxConcurrentRequests: 0\n").expect("write");
    let manifest =
        write(dir.path(), "m.yaml", "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n");
    let out = pullcheck(&["check", "-f", &manifest, "--registry-config", &bad.display().to_string()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml: registries.r.example.maxConcurrentRequests: must be at least 1"), "{stderr}");

    assert_eq!(pullcheck(&["check"], None).status.code(), Some(2), "no -f");
    assert_eq!(pullcheck(&["check", "-f", &manifest, "--ignore-images", "("], None).status.code(), Some(2));
    let missing = pullcheck(&["check", "-f", "/nonexistent/manifests"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/manifests"));
}

#[test]
fn log_lines_on_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write(
        dir.path(),
        "m.yaml",
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: \"127.0.0.1:9/nothing:1\"}]}\n",
    );
    let out = pullcheck(&["check", "-f", &manifest, "--log", "debug", "--retries", "0"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "debug lines were asked for: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "stderr is a pipe: no ANSI codes: {stderr}");
}

/// `pullcheck check` with no -f nor --kubeconfig, without blocking the harness's runtime.
async fn check_a_cluster(command: Command) -> Output {
    let mut command = tokio::process::Command::from(command);
    command.args(["check", "-o", "json"]).kill_on_drop(true).output().await.expect("run pullcheck")
}

/// A kubeconfig at every place pullcheck looks for one when not told (`KUBECONFIG`,
/// `PULLCHECK_KUBECONFIG`, `~/.kube/config`), all pointing at the harness: the tests' way of
/// starting pullcheck must get past none of them.
#[tokio::test]
async fn the_binary_under_test_finds_no_cluster_of_the_machine() {
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", "nginx:1.27"));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path());
    let machine_home = dir.path().join("home");
    std::fs::create_dir_all(machine_home.join(".kube")).expect("mkdir");
    std::fs::copy(&kubeconfig, machine_home.join(".kube/config")).expect("copy kubeconfig");
    let port = api.server.addr.port().to_string();
    let machine: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("KUBECONFIG", kubeconfig.as_os_str()),
        ("PULLCHECK_KUBECONFIG", kubeconfig.as_os_str()),
        ("PULLCHECK_ALL_NAMESPACES", "true".as_ref()),
        ("HOME", machine_home.as_os_str()),
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".as_ref()),
        ("KUBERNETES_SERVICE_PORT", port.as_ref()),
    ];
    // The bait works: a pullcheck that inherits these reads the harness.
    let mut exposed = Command::new(env!("CARGO_BIN_EXE_pullcheck"));
    exposed.envs(machine.iter().copied());
    let out = check_a_cluster(exposed).await;
    assert!(!api.requests().is_empty(), "the bait is taken: {}", String::from_utf8_lossy(&out.stderr));

    let before = api.requests().len();
    let empty_home = tempfile::tempdir().expect("tempdir");
    let mut isolated = Command::new(env!("CARGO_BIN_EXE_pullcheck"));
    isolated.envs(machine.iter().copied());
    support::process::cut_off(&mut isolated, machine.iter().map(|(name, _)| name.into()), empty_home.path());
    let out = check_a_cluster(isolated).await;
    assert_eq!(out.status.code(), Some(2), "no cluster to check: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(api.requests().len(), before, "{:?}", &api.requests()[before..]);
}

/// `pullcheck check` with `env` set on the command (after the cut-off, so they stay).
fn pullcheck_with_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let (mut command, _home) = support::process::pullcheck();
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pullcheck");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("pullcheck output")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect()
}

/// A gate that read nothing must not pass: an empty directory (a symlink loop in it is not
/// followed), an empty render on stdin, documents none of which is a workload — exit 2 saying
/// what was read, unless `--allow-empty` (or `PULLCHECK_ALLOW_EMPTY`).
#[test]
fn no_workload_found_is_exit_2_unless_empty_answers_are_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("chart");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::os::unix::fs::symlink(&empty, empty.join("loop")).expect("a symlink loop");
    let empty = empty.display().to_string();

    let out = pullcheck(&["check", "-f", &empty, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(2));
    let line = format!("no workload found in {empty}: no manifest file (.yaml, .yml, .json) read");
    assert_eq!(stderr_lines(&out), [format!("pullcheck: {line}")]);
    assert_eq!(json(&out)["errors"], serde_json::json!([line]));
    let out = pullcheck(&["check", "-f", &empty, "--allow-empty"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 images"));

    let out = pullcheck(&["check", "-f", "-"], Some(""));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        ["pullcheck: no workload found in <stdin>: 1 file read, no readable document in them"]
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("error: no workload found in <stdin>"),
        "the table says it too"
    );
    let out = pullcheck_with_env(&["check", "-f", "-"], "", &[("PULLCHECK_ALLOW_EMPTY", "true")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let services = write(
        dir.path(),
        "svc.yaml",
        "kind: Service\nmetadata: {name: a}\n---\nkind: ConfigMap\nmetadata: {name: b}\n",
    );
    let out = pullcheck(&["check", "-f", &services], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        [format!("pullcheck: no workload found in {services}: 1 file read, 2 documents, none of them a workload")]
    );

    // A workload left out by the selection (scaled to zero) is not a workload checked.
    let zero = write(
        dir.path(),
        "zero.yaml",
        "kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 0, template: {spec: {containers: [{name: c, image: x}]}}}\n",
    );
    let out = pullcheck(&["check", "-f", &zero], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 workload, none selected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `DIR/<name>/hosts.toml` sending the registry `name` to `addr` over plain HTTP only.
fn hosts_server(dir: &Path, name: &str, addr: &str) {
    std::fs::create_dir_all(dir.join(name)).expect("mkdir");
    std::fs::write(dir.join(name).join("hosts.toml"), format!("server = \"http://{addr}\"\n"))
        .expect("write hosts.toml");
}

/// `k8s.gcr.io` stood in for by a registry that froze before the image was pushed, and
/// `registry.k8s.io` by one that has it (a hosts directory sends each name to its stand-in and
/// nowhere else): the old reference is absent, the replacement available — the report says so.
/// The registry config adds a move (a path prefix) and removes the built-in one.
#[tokio::test]
async fn images_on_deprecated_registries_are_flagged_with_their_replacement_probed() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("pause", "3.9", "amd64").await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let frozen_storage = env.dir.path().join("frozen-storage");
    std::fs::create_dir_all(&frozen_storage).expect("mkdir");
    let frozen = Registry::start(env.dir.path(), "frozen", &frozen_storage, None, Auth::None).await;
    let hosts = env.dir.path().join("certs.d");
    hosts_server(&hosts, "k8s.gcr.io", &frozen.addr);
    hosts_server(&hosts, "registry.k8s.io", &env.anon.addr);
    let hosts = hosts.display().to_string();
    let anon = &env.anon.addr;
    let manifest = format!(
        "kind: Deployment\nmetadata: {{name: web, namespace: shop}}\nspec:\n  template:\n    spec:\n      containers:\n      - {{name: pause, image: \"k8s.gcr.io/pause:3.9\"}}\n      - {{name: pinned, image: \"k8s.gcr.io/pause@{digest}\"}}\n      - {{name: app, image: \"{anon}/team/app:v1\"}}\n      - {{name: moved, image: \"{}/team/app:v1\"}}\n",
        frozen.addr
    );
    let file = write(env.dir.path(), "web.yaml", &manifest);

    let out = pullcheck(&["check", "-f", &file, "--hosts-dir", &hosts, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1), "the old reference is absent: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let pause = entry(&report, "k8s.gcr.io/pause:3.9");
    assert_eq!(pause["state"], "absent", "{pause}");
    assert_eq!(pause["replacement"]["image"], "registry.k8s.io/pause:3.9");
    assert_eq!(pause["replacement"]["state"], "available", "{pause}");
    assert_eq!(pause["replacement"]["digest"], digest.as_str());
    let pinned = entry(&report, &format!("k8s.gcr.io/pause@{digest}"));
    assert_eq!(pinned["replacement"]["image"], format!("registry.k8s.io/pause@{digest}"), "the digest is kept");
    assert_eq!(pinned["replacement"]["state"], "available");
    assert!(
        entry(&report, &format!("{anon}/team/app:v1")).get("replacement").is_none(),
        "only flagged images have one"
    );
    assert!(
        entry(&report, &format!("{}/team/app:v1", frozen.addr)).get("replacement").is_none(),
        "not a built-in move"
    );

    let table = pullcheck(&["check", "-f", &file, "--hosts-dir", &hosts], None);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("deprecated registry: registry.k8s.io/pause:3.9 is available"), "{table}");

    // The registry config: the built-in move removed, a registry/path move added.
    let config = env.dir.path().join("moves.yaml");
    std::fs::write(
        &config,
        format!("deprecatedRegistries:\n  k8s.gcr.io: null\n  '{}/team': '{anon}/team'\n", frozen.addr),
    )
    .expect("write");
    let config = config.display().to_string();
    let out =
        pullcheck(&["check", "-f", &file, "--hosts-dir", &hosts, "--registry-config", &config, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert!(entry(&report, "k8s.gcr.io/pause:3.9").get("replacement").is_none(), "removed by the config: {report}");
    let moved = entry(&report, &format!("{}/team/app:v1", frozen.addr));
    assert_eq!(moved["state"], "absent");
    assert_eq!(
        moved["replacement"],
        serde_json::json!({"image": format!("{anon}/team/app:v1"), "state": "available", "digest": moved["replacement"]["digest"]})
    );
    assert!(moved["replacement"]["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{moved}");

    let bad = env.dir.path().join("bad-moves.yaml");
    std::fs::write(&bad, "deprecatedRegistries:\n  k8s.gcr.io: k8s.gcr.io\n").expect("write");
    let out = pullcheck(&["check", "-f", &file, "--registry-config", &bad.display().to_string()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad-moves.yaml: deprecatedRegistries.k8s.gcr.io: k8s.gcr.io cannot replace itself"),
        "{stderr}"
    );
}

/// A moved repository (Bitnami's move to bitnamilegacy, stood in for by `{registry}/old` moved
/// to `{registry}/new` through `movedRepositories`): an image the original still serves is not
/// flagged and its replacement never requested; one gone from it is reported with its
/// replacement's answer (available when pushed there, absent when not).
#[tokio::test]
async fn moved_repositories_replace_only_absent_images_and_probe_nothing_else() {
    let env = Env::start().await;
    let anon = &env.anon.addr;
    env.pusher.image("old/app", "latest", "amd64").await;
    let (moved_digest, _) = env.pusher.image("new/app", "7.2.4", "amd64").await;
    let manifest = format!(
        "kind: Deployment\nmetadata: {{name: web, namespace: shop}}\nspec:\n  template:\n    spec:\n      containers:\n      - {{name: kept, image: \"{anon}/old/app:latest\"}}\n      - {{name: gone, image: \"{anon}/old/app:7.2.4\"}}\n      - {{name: lost, image: \"{anon}/old/app:6.0.0\"}}\n"
    );
    let file = write(env.dir.path(), "web.yaml", &manifest);
    let config = env.dir.path().join("moved.yaml");
    std::fs::write(&config, format!("movedRepositories:\n  '{anon}/old': '{anon}/new'\n")).expect("write");
    let config = config.display().to_string();

    let mark = env.anon.served().len();
    let out = pullcheck(&["check", "-f", &file, "--registry-config", &config, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1), "two images are absent: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let kept = entry(&report, &format!("{anon}/old/app:latest"));
    assert_eq!(kept["state"], "available", "{kept}");
    assert!(kept.get("replacement").is_none(), "served: not flagged: {kept}");
    let gone = entry(&report, &format!("{anon}/old/app:7.2.4"));
    assert_eq!(gone["state"], "absent", "{gone}");
    assert_eq!(
        gone["replacement"],
        serde_json::json!({"image": format!("{anon}/new/app:7.2.4"), "state": "available", "digest": moved_digest})
    );
    let lost = entry(&report, &format!("{anon}/old/app:6.0.0"));
    assert_eq!(lost["replacement"]["image"], format!("{anon}/new/app:6.0.0"));
    assert_eq!(lost["replacement"]["state"], "absent", "{lost}");

    // What reached the registry: the replacements of the absent images, never the served one's.
    let served: Vec<String> = env.anon.served_since(mark, 1).await.iter().map(|s| s.target.clone()).collect();
    assert!(served.iter().any(|t| t == "/v2/new/app/manifests/7.2.4"), "{served:?}");
    assert!(served.iter().any(|t| t == "/v2/new/app/manifests/6.0.0"), "{served:?}");
    assert!(!served.iter().any(|t| t.starts_with("/v2/new/app/manifests/latest")), "{served:?}");

    let table = pullcheck(&["check", "-f", &file, "--registry-config", &config], None);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("moved repository: {anon}/new/app:7.2.4 is available")), "{table}");
    assert!(!table.contains("new/app:latest"), "{table}");
}

/// A registry announcing its pull budget (Docker Hub's `ratelimit-*` headers, added by a proxy in
/// front of the real registry): `check` shows the budget per registry and credential name in its
/// summary, in JSON and in the table.
#[tokio::test]
async fn a_registrys_announced_pull_budget_is_in_the_summary() {
    use support::proxy::{Fault, FaultProxy};
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    proxy.set(Fault::Headers(vec![
        ("ratelimit-limit".into(), "100;w=21600".into()),
        ("ratelimit-remaining".into(), "76;w=21600".into()),
        ("docker-ratelimit-source".into(), "203.0.113.7".into()),
    ]));
    let file = write(
        env.dir.path(),
        "app.yaml",
        &support::workload("Deployment", "shop", "web", &format!("{}/team/app:v1", proxy.addr())).to_string(),
    );
    let config = env.registry_config("", &format!("  {}:\n    plainHttp: true\n", proxy.addr()));
    let config = config.to_str().expect("utf-8 path");
    // Run without blocking the runtime that serves the proxy.
    let out = support::process::run_pullcheck(&["check", "-f", &file, "-o", "json", "--registry-config", config]).await;
    let report = json(&out);
    assert_eq!(report["summary"]["available"], 1, "{report}");
    assert_eq!(
        report["summary"]["rate_limits"],
        serde_json::json!([{"registry": proxy.addr(), "credential": "anonymous", "limit": 100, "remaining": 76, "window_seconds": 21600}])
    );
    let table = support::process::run_pullcheck(&["check", "-f", &file, "--registry-config", config]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("rate limit: {} has 76 of 100 per 21600s left for anonymous", proxy.addr())),
        "{text}"
    );
    assert!(!text.contains("203.0.113.7"), "the limit's source (an address or an account) is not shown");
}

/// The report on a stdout that fails: a full disk is an error (exit 2, said in one line), a
/// reader that stopped reading (`| head`) is not — the exit code is the report's own.
#[tokio::test]
async fn a_report_that_cannot_be_written_is_said_and_a_closed_pipe_is_not() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let file = write(env.dir.path(), "app.yaml", &manifests(&env.anon.addr));
    let start = |stdout: Stdio| {
        let (mut command, home) = support::process::pullcheck();
        let child = command
            .args(["check", "-f", &file, "-o", "json"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pullcheck");
        (child, home)
    };

    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let (child, _home) = start(full.into());
    let out = child.wait_with_output().expect("pullcheck output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pullcheck: cannot write the report:"), "{stderr}");

    let (mut child, _home) = start(Stdio::piped());
    // Closed before pullcheck has probed anything: its report meets a pipe nobody reads.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("pullcheck output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an absent image, as if the report had been read: {stderr}");
    assert!(!stderr.contains("cannot write") && !stderr.contains("panicked"), "{stderr}");
}
