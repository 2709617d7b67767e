//! Failed pulls kubelet reports (Warning Events on Pods) make `pullcheck run` probe the image at
//! once — not at its turn in the window — with the event on the probe's trace and the log; an
//! image no tracked workload uses is probed once and told.

mod support;

use std::time::Duration;

use serde_json::json;
use support::apiserver::ApiServer;
use support::otlp::{Receiver, logs, spans};
use support::{Env, eventually, workload};

const WAIT: Duration = Duration::from_secs(30);

fn event(name: &str, namespace: &str, pod: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace, "apiVersion": "v1"},
        "type": "Warning", "reason": reason, "message": message, "count": 1
    })
}

#[tokio::test]
async fn a_failed_pull_is_probed_at_once_and_an_unused_image_once() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let image = format!("{}/team/app:v1", env.anon.addr);
    api.apply(workload("Deployment", "shop", "web", &image));
    let receiver = Receiver::http().await;
    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("run.log");
    // A window of an hour: without the event, the image would not be probed again for long.
    let args = ["--window", "1h", "--tick", "200ms", "--failure-retry", "2s", "--health-addr", "off"];
    let (mut child, _home) = support::process::spawn_run(&kubeconfig, &args, Some(&receiver.endpoint), &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    // Probes only: HEAD or GET of the manifest (the push's PUT is not one).
    let manifests = |repository: &str| {
        let path = format!("/v2/{repository}/manifests/v1");
        env.anon.served().iter().filter(|s| s.line().contains(&path) && !s.line().starts_with("PUT")).count()
    };
    assert!(eventually(WAIT, || manifests("team/app") >= 1).await, "first probe: {}", stderr());
    // Events that were there before the watch are old news: send ours once it watches.
    let watching_events = || api.requests().iter().any(|r| r.contains("/events?") && r.contains("watch=true"));
    assert!(eventually(WAIT, watching_events).await, "{:?}", api.requests());
    let before = manifests("team/app");

    api.apply(event("web-1.a", "shop", "web-1", "BackOff", &format!("Back-off pulling image \"{image}\"")));
    assert!(eventually(WAIT, || manifests("team/app") > before).await, "probed again at once: {}", stderr());
    let triggered = |r: &support::otlp::Received| {
        spans(r).into_iter().any(|s| {
            let a = support::otlp::attributes(&s.attributes);
            s.parent_span_id.is_empty()
                && a.get("pullcheck.trigger.reason").map(String::as_str) == Some("BackOff")
                && a.get("k8s.pod.name").map(String::as_str) == Some("web-1")
        })
    };
    assert!(
        eventually(WAIT, || receiver.received(triggered)).await,
        "the probe's trace names the event: {:?}\n{}",
        receiver.received(|r| spans(r)
            .into_iter()
            .filter(|s| s.parent_span_id.is_empty())
            .map(|s| support::otlp::attributes(&s.attributes))
            .collect::<Vec<_>>()),
        stderr()
    );

    // An image no workload of the inventory uses (a Job's pod already gone): probed once, told.
    let gone = format!("{}/team/gone:v1", env.anon.addr);
    let message = format!("Failed to pull image \"{gone}\": rpc error: code = NotFound");
    api.apply(event("job-x.b", "shop", "job-x", "Failed", &message));
    assert!(eventually(WAIT, || manifests("team/gone") == 1).await, "{}", stderr());
    let told = |r: &support::otlp::Received| {
        logs(r).into_iter().any(|(body, a)| {
            a.get("pullcheck.image.state").map(String::as_str) == Some("absent")
                && a.get("k8s.pod.name").map(String::as_str) == Some("job-x")
                && body.contains("team/gone")
        })
    };
    assert!(eventually(WAIT, || receiver.received(told)).await, "{}", stderr());
    // The same event again within --failure-retry: not probed again. Events arrive in order, so
    // once a later one (another image) is probed, the repeat has been seen and let go.
    api.apply(event("job-x.c", "shop", "job-x", "Failed", &message));
    let other = format!("{}/team/other:v1", env.anon.addr);
    api.apply(event("job-y.d", "shop", "job-y", "Failed", &format!("Failed to pull image \"{other}\": x")));
    assert!(eventually(WAIT, || manifests("team/other") == 1).await, "{}", stderr());
    assert_eq!(manifests("team/gone"), 1, "at most once per failure retry: {}", stderr());

    let _ = child.start_kill();
    let _ = child.wait().await;
}
