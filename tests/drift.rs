//! Digest drift: a tag re-pushed to another digest under pods that run the old one. `check`
//! says so per workload container (`running_digests`, `drift`), `run` exports
//! `pullcheck.image.drift` 1, then 0 once the pods run the new digest.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::otlp::{Receiver, latest_points};
use support::process::{json_report, run_pullcheck};
use support::{Env, eventually, workload};

const WAIT: Duration = Duration::from_secs(30);

/// A Deployment `web` (container `main`) with its ReplicaSet and one pod that runs `digest`.
fn deployment_running(api: &ApiServer, image: &str, repository: &str, digest: &str) {
    api.apply(workload("Deployment", "shop", "web", image));
    let owner = |kind: &str, name: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]);
    let mut rs = workload("ReplicaSet", "shop", "web-5d8", image);
    rs["metadata"]["ownerReferences"] = owner("Deployment", "web");
    api.apply(rs);
    pod_running(api, image, repository, digest);
}

fn pod_running(api: &ApiServer, image: &str, repository: &str, digest: &str) {
    let mut pod = workload("Pod", "shop", "web-5d8-x", image);
    pod["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8", "uid": "u", "controller": true}]);
    pod["status"] = json!({"phase": "Running", "containerStatuses": [
        {"name": "main", "image": image, "imageID": format!("{repository}@{digest}"), "ready": true}
    ]});
    api.apply(pod);
}

async fn check(env: &Env, api: &ApiServer) -> Value {
    let kubeconfig = api.kubeconfig(env.dir.path()).display().to_string();
    json_report(&run_pullcheck(&["check", "--kubeconfig", &kubeconfig, "-A", "-o", "json"]).await)
}

fn web_entry(report: &Value) -> Value {
    report["images"][0]["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["kind"] == "Deployment").cloned())
        .unwrap_or_else(|| panic!("web in {report}"))
}

#[tokio::test]
async fn check_reports_running_digests_and_drift() {
    let env = Env::start().await;
    let (old, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let repository = format!("{}/team/app", env.anon.addr);
    let image = format!("{repository}:v1");
    let api = ApiServer::start().await;
    deployment_running(&api, &image, &repository, &old);

    let entry = web_entry(&check(&env, &api).await);
    assert_eq!(entry["running_digests"], json!([old]), "{entry}");
    assert_eq!(entry["drift"], json!(false), "{entry}");

    // The tag moves; the pod still runs the old digest.
    let (new, _) = env.pusher.image("team/app", "v1", "arm64").await;
    assert_ne!(new, old);
    let report = check(&env, &api).await;
    let entry = web_entry(&report);
    assert_eq!(entry["drift"], json!(true), "{entry}");
    assert_eq!(report["images"][0]["state"], "available", "the tag still pulls: {report}");
    assert_eq!(report["images"][0]["digest"], json!(new));

    // No running pod: unknown, left out.
    api.delete("Pod", "shop", "web-5d8-x");
    let entry = web_entry(&check(&env, &api).await);
    assert!(entry.get("drift").is_none() && entry.get("running_digests").is_none(), "{entry}");
}

#[tokio::test]
async fn run_exports_drift_then_clears_it_when_pods_move() {
    let env = Env::start().await;
    let (old, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let repository = format!("{}/team/app", env.anon.addr);
    let image = format!("{repository}:v1");
    let api = ApiServer::start().await;
    deployment_running(&api, &image, &repository, &old);
    let receiver = Receiver::http().await;
    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("run.log");
    let args = ["--window", "1s", "--tick", "100ms", "--health-addr", "off"];
    let (mut child, _home) = support::process::spawn_run(&kubeconfig, &args, Some(&receiver.endpoint), &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let drift = |r: &support::otlp::Received| {
        latest_points(r, "pullcheck.image.drift")
            .into_iter()
            .find(|(a, _)| a.get("k8s.deployment.name").map(String::as_str) == Some("web"))
            .map(|(_, v)| v)
    };
    assert!(eventually(WAIT, || receiver.received(drift) == Some(0.0)).await, "{}", stderr());

    env.pusher.image("team/app", "v1", "arm64").await;
    assert!(eventually(WAIT, || receiver.received(drift) == Some(1.0)).await, "the tag moved: {}", stderr());

    // The pods are replaced by ones running the new digest.
    let new = reqwest::Client::new()
        .head(format!("http://{}/v2/team/app/manifests/v1", env.anon.addr))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .ok()
        .and_then(|r| r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string))
        .expect("the tag's digest");
    pod_running(&api, &image, &repository, &new);
    assert!(eventually(WAIT, || receiver.received(drift) == Some(0.0)).await, "pods moved: {}", stderr());
    assert!(stderr().contains("but running pods run"), "the change is logged: {}", stderr());
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// `run` on an image of a deprecated registry: its series say so, and its replacement is
/// probed too, exported as `pullcheck.image.replacement.available`.
#[tokio::test]
async fn run_probes_the_replacement_of_a_deprecated_registry() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    // The "frozen" registry answers nothing; its replacement is the registry that has the image.
    let frozen = support::RefusedPort::bind();
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", frozen.addr)));
    let config = env.dir.path().join("deprecated.yaml");
    std::fs::write(&config, format!("deprecatedRegistries:\n  \"{}\": \"{}\"\n", frozen.addr, env.anon.addr))
        .expect("registry config");
    let receiver = Receiver::http().await;
    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("run-deprecated.log");
    let config = config.display().to_string();
    let args = ["--registry-config", &config, "--window", "2s", "--tick", "100ms", "--health-addr", "off"];
    let args = [&args[..], &["--retries", "0", "--request-timeout", "1s"]].concat();
    let (mut child, _home) = support::process::spawn_run(&kubeconfig, &args, Some(&receiver.endpoint), &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let replacement = |r: &support::otlp::Received| {
        latest_points(r, "pullcheck.image.replacement.available")
            .into_iter()
            .find(|(a, _)| a.get("k8s.deployment.name").map(String::as_str) == Some("web"))
    };
    assert!(eventually(WAIT, || receiver.received(replacement).is_some_and(|(_, v)| v == 1.0)).await, "{}", stderr());
    let (attributes, _) = receiver.received(replacement).expect("a point");
    assert_eq!(attributes.get("pullcheck.replacement.image"), Some(&format!("{}/team/app:v1", env.anon.addr)));
    assert_eq!(attributes.get("pullcheck.registry.deprecated").map(String::as_str), Some("true"));
    let available = receiver.received(|r| latest_points(r, "pullcheck.image.available"));
    assert_eq!(available.len(), 1, "the replacement is not a series of its own: {available:?}");
    assert_eq!(available[0].1, 0.0, "the frozen registry itself answers nothing");
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The newest export holding `pullcheck.image.available`: web's availability, and the
/// replacement gauge's points in that same export (none: the gauge is not published).
type Export = (Option<f64>, Vec<(std::collections::BTreeMap<String, String>, f64)>);

fn newest_export(received: &support::otlp::Received) -> Export {
    for request in received.metrics.iter().rev() {
        let metrics: Vec<_> = request
            .resource_metrics
            .iter()
            .flat_map(|rm| rm.scope_metrics.iter())
            .flat_map(|sm| sm.metrics.iter().cloned())
            .collect();
        let points = |name: &str| -> Vec<_> {
            metrics.iter().filter(|m| m.name == name).flat_map(|m| support::otlp::number_points(m.clone())).collect()
        };
        let available = points("pullcheck.image.available");
        if available.is_empty() {
            continue;
        }
        let web = available.iter().find(|(a, _)| a.get("k8s.deployment.name").map(String::as_str) == Some("web"));
        return (web.map(|(_, v)| *v), points("pullcheck.image.replacement.available"));
    }
    (None, Vec::new())
}

/// `run` on an image of a moved repository (Bitnami's move to bitnamilegacy, stood in for by
/// `{registry}/old` moved to `{registry}/new` through `movedRepositories`): while the image is
/// served, no replacement gauge and no request for the replacement; once it is deleted, the
/// replacement is probed and its gauge published (the series not marked deprecated); once it
/// is pushed again, the gauge goes.
#[tokio::test]
async fn run_probes_a_moved_repositorys_replacement_only_while_the_image_is_absent() {
    let env = Env::start().await;
    let anon = env.anon.addr.clone();
    let (digest, _) = env.pusher.image("old/app", "v1", "amd64").await;
    env.pusher.image("new/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{anon}/old/app:v1")));
    let config = env.dir.path().join("moved.yaml");
    std::fs::write(&config, format!("movedRepositories:\n  \"{anon}/old\": \"{anon}/new\"\n"))
        .expect("registry config");
    let receiver = Receiver::http().await;
    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("run-moved.log");
    let config = config.display().to_string();
    let args = ["--registry-config", &config, "--window", "1s", "--tick", "100ms", "--health-addr", "off"];
    let (mut child, _home) = support::process::spawn_run(&kubeconfig, &args, Some(&receiver.endpoint), &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    // Reads only: the pushes above are in the access log too.
    let requests = |path: &str| env.anon.served().iter().filter(|s| s.target == path && s.method != "PUT").count();

    // Served: probed window after window, its replacement never.
    assert!(
        eventually(WAIT, || requests("/v2/old/app/manifests/v1") >= 3
            && receiver.received(newest_export).0 == Some(1.0))
        .await,
        "{}",
        stderr()
    );
    let (_, replacement) = receiver.received(newest_export);
    assert!(replacement.is_empty(), "no replacement gauge while the image is served: {replacement:?}");
    assert_eq!(requests("/v2/new/app/manifests/v1"), 0, "no request for the replacement");
    let available = receiver.received(|r| latest_points(r, "pullcheck.image.available"));
    assert!(available.iter().all(|(a, _)| !a.contains_key("pullcheck.registry.deprecated")), "{available:?}");

    // Gone from the original: the replacement is probed, and published beside the image.
    env.pusher.delete("old/app", &digest).await;
    let moved = |export: &Export| export.0 == Some(0.0) && export.1.iter().any(|(_, v)| *v == 1.0);
    assert!(eventually(WAIT, || receiver.received(|r| moved(&newest_export(r)))).await, "{}", stderr());
    let (_, replacement) = receiver.received(newest_export);
    let (attributes, _) = &replacement[0];
    assert_eq!(attributes.get("pullcheck.replacement.image"), Some(&format!("{anon}/new/app:v1")));
    assert_eq!(attributes.get("k8s.deployment.name").map(String::as_str), Some("web"));
    assert!(!attributes.contains_key("pullcheck.registry.deprecated"), "moved, not deprecated: {attributes:?}");
    assert!(requests("/v2/new/app/manifests/v1") >= 1);

    // Served again: the gauge goes.
    env.pusher.image("old/app", "v1", "amd64").await;
    let served_again = |export: &Export| export.0 == Some(1.0) && export.1.is_empty();
    assert!(eventually(WAIT, || receiver.received(|r| served_again(&newest_export(r)))).await, "{}", stderr());
    let _ = child.start_kill();
    let _ = child.wait().await;
}
