//! `pullcheck check --kubeconfig` against the API-server harness and the real registries:
//! pull secrets and service accounts as kubelet uses them, namespace isolation, selection,
//! and the same answer as `check -f` on the same manifests.

mod support;

use std::process::Output;

use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::process::{json_report, run_pullcheck};
use support::{Env, pull_secret, with_pull_secrets, workload};

/// (state, namespaces using it) per image entry, sorted.
fn states(report: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = report["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            let mut namespaces: Vec<String> = i["workloads"]
                .as_array()
                .expect("workloads")
                .iter()
                .map(|w| w["namespace"].as_str().unwrap_or_default().to_string())
                .collect();
            namespaces.dedup();
            (i["image"].as_str().unwrap_or_default().into(), i["state"].as_str().unwrap_or_default().into(), namespaces)
        })
        .collect();
    out.sort();
    out
}

struct Cluster {
    env: Env,
    api: ApiServer,
    private: String,
    kubeconfig: String,
    registry_config: String,
}

async fn cluster() -> Cluster {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.page_size(2);
    let registry = env.basic.addr.clone();
    let private = format!("{registry}/private/app:v1");
    for (ns, team) in [("team-a", "a"), ("team-b", "b"), ("team-c", "c"), ("team-d", "d"), ("team-e", "e")] {
        api.apply(json!({"kind": "Namespace", "metadata": {"name": ns, "labels": {"team": team}}}));
    }
    // team-a: its own pull secret.
    api.apply(pull_secret("team-a", "regcred", &registry, support::USER, support::PASSWORD));
    api.apply(with_pull_secrets(workload("Deployment", "team-a", "web", &private), &["regcred"]));
    // team-b: nothing — anonymous, as kubelet would pull.
    api.apply(workload("Deployment", "team-b", "web", &private));
    // team-c: the service account's pull secrets.
    api.apply(pull_secret("team-c", "robot", &registry, support::USER, support::PASSWORD));
    api.apply(json!({"kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "team-c"}, "imagePullSecrets": [{"name": "robot"}]}));
    let mut builder = workload("Deployment", "team-c", "web", &private);
    builder["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    api.apply(builder);
    // team-d: a secret that does not exist.
    api.apply(with_pull_secrets(workload("Deployment", "team-d", "web", &private), &["missing"]));
    // team-e: names team-a's secret, which must not serve it.
    api.apply(with_pull_secrets(workload("Deployment", "team-e", "web", &private), &["regcred"]));
    let kubeconfig = api.kubeconfig(env.dir.path()).display().to_string();
    let registry_config = env.registry_config("", "").display().to_string();
    Cluster { env, api, private, kubeconfig, registry_config }
}

/// `check` of the cluster with its registry config, JSON out, and `extra` flags.
async fn check(c: &Cluster, extra: &[&str]) -> Output {
    let mut args = vec!["check", "--kubeconfig", &c.kubeconfig, "-o", "json", "--registry-config", &c.registry_config];
    args.extend_from_slice(extra);
    run_pullcheck(&args).await
}

/// The namespaces whose workloads a selection checks.
async fn selected(c: &Cluster, extra: &[&str]) -> Vec<String> {
    let r = json_report(&check(c, extra).await);
    let mut namespaces: Vec<String> = states(&r).into_iter().flat_map(|(_, _, ns)| ns).collect();
    namespaces.sort();
    namespaces
}

#[tokio::test]
async fn pull_secrets_service_accounts_and_namespace_isolation() {
    let c = cluster().await;
    let out = check(&c, &["-A"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json_report(&out);
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        states(&r),
        vec![
            (c.private.clone(), "authentication_failure".into(), strs(&["team-b", "team-d", "team-e"])),
            (c.private.clone(), "available".into(), strs(&["team-a", "team-c"])),
        ],
        "one probe per credential; team-e does not get team-a's secret"
    );
    let warnings = r["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w["message"].as_str().unwrap_or_default())
        .collect::<Vec<_>>();
    let missing = r["warnings"].as_array().and_then(|ws| {
        ws.iter().find(|w| w["message"].as_str().is_some_and(|m| m.contains("pull secret team-d/missing not found")))
    });
    assert_eq!(missing.map(|w| w["kind"].clone()), Some(json!("secret_not_found")), "warnings carry their kind: {r}");
    assert!(
        warnings.iter().any(|w| w.contains("team-d/web") && w.contains("pull secret team-d/missing not found")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("team-e/web") && w.contains("team-e/regcred not found")),
        "{warnings:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(support::PASSWORD) && !String::from_utf8_lossy(&out.stderr).contains(support::PASSWORD));
    let gets: Vec<String> = c.api.requests().into_iter().filter(|r| r.contains("/secrets")).collect();
    assert!(
        gets.iter().all(|g| g.contains("/namespaces/") && g.contains("/secrets/")),
        "secrets only by name: {gets:?}"
    );

    // Selection: by namespace labels, by namespace list, by exclusion.
    assert_eq!(selected(&c, &["-A", "--namespace-selector", "team in (a,c)"]).await, strs(&["team-a", "team-c"]));
    assert_eq!(selected(&c, &["-n", "team-b,team-d"]).await, strs(&["team-b", "team-d"]));
    assert_eq!(
        selected(&c, &["-A", "--namespace-selector", "team!=a", "--exclude-namespace", "team-b"]).await,
        strs(&["team-c", "team-d", "team-e"])
    );
}

#[tokio::test]
async fn forbidden_secrets_and_kinds_degrade_with_one_clear_warning_when_partial_answers_are_allowed() {
    let c = cluster().await;
    c.api.forbid("Secret");
    c.api.forbid("StatefulSet");
    let out = check(&c, &["-A", "--allow-partial"]).await;
    assert_eq!(out.status.code(), Some(1), "exit per images: {}", String::from_utf8_lossy(&out.stderr));
    let r = json_report(&out);
    let every: Vec<String> = states(&r).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(every, ["authentication_failure"], "anonymous everywhere");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("may not read secrets").count(), 1, "said once: {stderr}");
    assert!(stderr.contains("pullcheck: warning: forbidden by RBAC: list statefulsets cluster-wide\n"), "{stderr}");
    let forbidden = r["warnings"].as_array().and_then(|ws| {
        ws.iter()
            .find(|w| w["message"].as_str().is_some_and(|m| m.starts_with("cannot list StatefulSets cluster-wide")))
    });
    assert_eq!(forbidden.map(|w| w["kind"].clone()), Some(json!("forbidden")), "{r}");
    assert!(r.get("errors").is_none(), "allowed: not an error: {r}");
}

/// A kubeconfig for a server at `url` with a token.
fn kubeconfig_for(dir: &std::path::Path, url: &str) -> String {
    let path = dir.join(format!("kubeconfig-{}", support::rand_suffix()));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{url}'}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path.display().to_string()
}

/// stderr's lines, for exact assertions.
fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect()
}

/// A check that could not look fails (exit 2) with one line per cause and no Debug dump of a
/// Status, and its JSON keeps a warning per kind; `--allow-partial` lets it go on.
#[tokio::test]
async fn a_cluster_that_cannot_be_read_fails_the_check_with_one_line_per_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_dump = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("Status {") && !stderr.contains("ApiError") && !stderr.contains("os error"),
            "{stderr}"
        );
    };
    let kinds_warned = |r: &Value, kind: &str| {
        r["warnings"].as_array().expect("warnings").iter().filter(|w| w["kind"] == kind).count()
    };

    // Unreachable: said once, not once per kind.
    let refused = support::RefusedPort::bind();
    let url = format!("http://{}", refused.addr);
    let kubeconfig = kubeconfig_for(dir.path(), &url);
    let out = run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr_lines(&out), [format!("pullcheck: cannot reach {url}: connection refused")]);
    no_dump(&out);
    let r = json_report(&out);
    assert_eq!(kinds_warned(&r, "unreachable"), 8, "one warning per kind in the JSON: {r}");
    assert_eq!(r["errors"], json!([format!("cannot reach {url}: connection refused")]));
    // Allowed to be partial, it still found nothing: that is its own failure, and allowed too.
    let out = run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json", "--allow-partial"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        [
            format!(
                "pullcheck: no workload found in any namespace of {url}: no workload listed (8 kinds could not be listed)"
            ),
            format!("pullcheck: warning: cannot reach {url}: connection refused"),
        ]
    );
    let out =
        run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json", "--allow-partial", "--allow-empty"])
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // Credentials refused: one request, one line.
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", "registry.invalid/app:1"));
    let stale = api.kubeconfig_with_token(dir.path(), "stale-token").display().to_string();
    let out = run_pullcheck(&["check", "--kubeconfig", &stale, "-A", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr_lines(&out), ["pullcheck: the API server refused the credentials (401)"]);
    no_dump(&out);
    assert_eq!(kinds_warned(&json_report(&out), "unauthorized"), 8);
    assert_eq!(api.requests().len(), 1, "the other kinds are not asked again: {:?}", api.requests());

    // Every kind forbidden: the kinds on one line.
    for kind in
        ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob", "Pod"]
    {
        api.forbid_verb("list", kind, None);
    }
    let kubeconfig = api.kubeconfig(dir.path()).display().to_string();
    let out =
        run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json", "--platform", "linux/amd64"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        [
            "pullcheck: forbidden by RBAC: list deployments, statefulsets, daemonsets, replicasets, replicationcontrollers, jobs, cronjobs, pods cluster-wide"
        ]
    );
    no_dump(&out);
    assert_eq!(kinds_warned(&json_report(&out), "forbidden"), 8);
}

/// One kind forbidden fails the check, whose report still has the images of the others; with
/// `PULLCHECK_ALLOW_PARTIAL` the exit code is the images' again.
#[tokio::test]
async fn one_kind_not_listed_is_exit_2_unless_partial_answers_are_allowed() {
    let c = cluster().await;
    c.api.forbid_verb("list", "StatefulSet", None);
    let out = check(&c, &["-A"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pullcheck: forbidden by RBAC: list statefulsets cluster-wide\n"), "{stderr}");
    let r = json_report(&out);
    assert_eq!(states(&r).len(), 2, "the kinds that could be listed are still checked: {r}");
    assert_eq!(r["errors"], json!(["forbidden by RBAC: list statefulsets cluster-wide"]));

    let (mut command, _home) = support::process::pullcheck_async();
    command.env("PULLCHECK_ALLOW_PARTIAL", "true").args([
        "check",
        "--kubeconfig",
        &c.kubeconfig,
        "-A",
        "-o",
        "json",
        "--registry-config",
        &c.registry_config,
    ]);
    let out = command.output().await.expect("run pullcheck");
    assert_eq!(out.status.code(), Some(1), "per images: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_namespace_without_workloads_is_exit_2_unless_empty_answers_are_allowed() {
    let api = ApiServer::start().await;
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "empty"}}));
    api.apply(workload("Deployment", "elsewhere", "web", "registry.invalid/app:1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path()).display().to_string();
    let args = ["check", "--kubeconfig", &kubeconfig, "-n", "empty", "-o", "json", "--platform", "linux/amd64"];
    let out = run_pullcheck(&args).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        [format!("pullcheck: no workload found in namespace empty of {}: no workload listed", api.url())]
    );
    let mut allowed = args.to_vec();
    allowed.push("--allow-empty");
    let out = run_pullcheck(&allowed).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json_report(&out)["images"], json!([]));
}

#[tokio::test]
async fn a_cluster_and_its_manifests_give_the_same_answer() {
    let c = cluster().await;
    c.env.pusher.image("team/app", "v1", "amd64").await;
    let anon = &c.env.anon.addr;
    let objects = vec![
        workload("Deployment", "plain", "web", &format!("{anon}/team/app:v1")),
        workload("CronJob", "plain", "report", &format!("{anon}/team/app:gone")),
        workload("Pod", "plain", "debug", "Bad/Image"),
        workload("StatefulSet", "plain", "db", &format!("{anon}/team/app:v1")),
    ];
    let mut file = String::new();
    for object in &objects {
        c.api.apply(object.clone());
        file.push_str(&format!("---\n{object}\n"));
    }
    let path = c.env.dir.path().join("plain.yaml");
    std::fs::write(&path, file).expect("write");
    let from_cluster =
        json_report(&run_pullcheck(&["check", "--kubeconfig", &c.kubeconfig, "-n", "plain", "-o", "json"]).await);
    let from_files = json_report(&run_pullcheck(&["check", "-f", &path.display().to_string(), "-o", "json"]).await);
    let comparable = |r: &Value| -> Vec<Value> {
        r["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| json!([i["image"], i["canonical"], i["state"], i["digest"], i["workloads"]]))
            .collect()
    };
    assert_eq!(comparable(&from_cluster), comparable(&from_files));
    assert_eq!(from_cluster["summary"], json!({"absent": 1, "bad_image_format": 1, "available": 1}));
}

#[tokio::test]
async fn indexes_are_checked_for_the_platforms_of_the_nodes() {
    let c = cluster().await;
    c.env.pusher.index("multi/app", "v1", &["amd64", "arm64"]).await;
    let anon = &c.env.anon.addr;
    c.api.apply(workload("Deployment", "plain", "web", &format!("{anon}/multi/app:v1")));
    for (name, arch) in [("node-a", "amd64"), ("node-b", "arm64")] {
        c.api.apply(json!({"kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch}}}));
    }
    let state = |r: &Value| r["images"][0]["state"].as_str().unwrap_or_default().to_string();
    let args = ["check", "--kubeconfig", &c.kubeconfig, "-n", "plain", "-o", "json"];
    let out = run_pullcheck(&args).await;
    assert_eq!(state(&json_report(&out)), "available", "{}", String::from_utf8_lossy(&out.stderr));

    c.api.apply(json!({"kind": "Node", "metadata": {"name": "node-z", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "s390x"}}}));
    let out = run_pullcheck(&args).await;
    assert_eq!(out.status.code(), Some(1));
    let r = json_report(&out);
    assert_eq!(state(&r), "platform_missing");
    assert!(r["images"][0]["error"].as_str().is_some_and(|e| e.contains("linux/s390x")), "{r}");

    // --platform overrides the nodes; manifests on disk can be checked the same way.
    let out = run_pullcheck(&[
        "check",
        "--kubeconfig",
        &c.kubeconfig,
        "-n",
        "plain",
        "-o",
        "json",
        "--platform",
        "linux/arm64",
    ])
    .await;
    assert_eq!(state(&json_report(&out)), "available");
    let path = c.env.dir.path().join("multi.yaml");
    std::fs::write(&path, workload("Deployment", "plain", "web", &format!("{anon}/multi/app:v1")).to_string())
        .expect("write");
    let out = run_pullcheck(&[
        "check",
        "-f",
        &path.display().to_string(),
        "-o",
        "json",
        "--platform",
        "linux/amd64,windows/amd64",
    ])
    .await;
    assert_eq!(state(&json_report(&out)), "platform_missing");

    c.api.forbid("Node");
    let out = run_pullcheck(&args).await;
    assert_eq!(state(&json_report(&out)), "available", "no node list, no platform check");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot list nodes: forbidden by RBAC"));
}

#[tokio::test]
async fn two_secrets_for_one_registry_work_in_either_order() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let registry = env.basic.addr.clone();
    let private = format!("{registry}/private/app:v1");
    for ns in ["old-first", "current-first"] {
        api.apply(json!({"kind": "Namespace", "metadata": {"name": ns}}));
        api.apply(pull_secret(ns, "old", &registry, support::USER, "rotated-out"));
        api.apply(pull_secret(ns, "current", &registry, support::USER, support::PASSWORD));
    }
    api.apply(with_pull_secrets(workload("Deployment", "old-first", "web", &private), &["old", "current"]));
    api.apply(with_pull_secrets(workload("Deployment", "current-first", "web", &private), &["current", "old"]));
    let kubeconfig = api.kubeconfig(env.dir.path()).display().to_string();
    let config = env.registry_config("", "").display().to_string();
    let out =
        run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json", "--registry-config", &config]).await;
    assert_eq!(out.status.code(), Some(0), "kubelet pulls with either order: {}", String::from_utf8_lossy(&out.stdout));
    let r = json_report(&out);
    let images = r["images"].as_array().expect("images");
    assert_eq!(images.len(), 2, "two chains, two entries: {r}");
    let mut answered: Vec<&str> = Vec::new();
    for image in images {
        assert_eq!(image["state"], "available", "{image}");
        answered.extend(image["credential"].as_str());
    }
    answered.sort_unstable();
    // Each namespace's own secret answered, named with its namespace.
    assert_eq!(answered, ["pull secret current-first/current", "pull secret old-first/current"], "{r}");
}

#[tokio::test]
async fn list_page_size_sets_the_pages_asked_for() {
    let c = cluster().await;
    let deployment_pages = |api: &ApiServer, from: usize| -> Vec<String> {
        api.requests()[from..].iter().filter(|r| r.starts_with("GET /apis/apps/v1/deployments?")).cloned().collect()
    };
    let out = check(&c, &["-A"]).await;
    let by_default = deployment_pages(&c.api, 0);
    assert!(by_default.iter().all(|r| r.contains("limit=100")), "{by_default:?}");
    let before = c.api.requests().len();
    let paged = check(&c, &["-A", "--list-page-size", "1"]).await;
    let pages = deployment_pages(&c.api, before);
    assert_eq!(pages.len(), 5, "one Deployment per page: {pages:?}");
    assert!(pages.iter().all(|r| r.contains("limit=1&") || r.ends_with("limit=1")), "{pages:?}");
    assert_eq!(states(&json_report(&paged)), states(&json_report(&out)), "the same workloads, however paged");
    let refused = run_pullcheck(&["check", "--kubeconfig", &c.kubeconfig, "--list-page-size", "0"]).await;
    assert_eq!(refused.status.code(), Some(2), "a page of nothing is refused");
}
