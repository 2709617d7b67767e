//! `pullcheck run` never waits on the API server: with every API request hanging, SIGTERM still
//! ends it within 2 s (Kubernetes kills a pod that does not stop in its grace period).

mod support;

use std::time::Duration;

use support::apiserver::ApiServer;
use support::proxy::{Fault, FaultProxy};
use support::{Env, eventually, workload};
use tokio::time::Instant;

#[tokio::test]
async fn sigterm_ends_run_within_two_seconds_while_the_api_server_hangs() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    let proxy = FaultProxy::start(api.url()).await;
    let kubeconfig = api.kubeconfig_via(env.dir.path(), &format!("http://{}", proxy.addr()), "proxy");
    let log = env.dir.path().join("run.log");
    let args = ["--window", "2s", "--tick", "100ms", "--health-addr", "off", "--secret-ttl", "200ms"];
    let (mut child, _home) = support::process::spawn_run(&kubeconfig, &args, None, &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let probed = || env.anon.served().iter().any(|s| s.line().starts_with("HEAD /v2/team/app/manifests/v1"));
    assert!(eventually(Duration::from_secs(30), probed).await, "{}", stderr());
    // From now on every API request hangs: lists, watches, secrets and nodes on refresh.
    proxy.set(Fault::Drip(Duration::from_secs(600)));
    api.disconnect_watches();
    let hanging = proxy.seen().len();
    assert!(eventually(Duration::from_secs(30), || proxy.seen().len() > hanging).await, "a request is hanging");

    let pid = child.id().expect("running").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let asked = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let took = asked.elapsed();
    println!("SIGTERM to exit with the API server hanging: {took:?}");
    assert!(status.is_ok_and(|s| s.is_ok_and(|s| s.success())), "exits cleanly: {}", stderr());
    assert!(took < Duration::from_secs(2), "took {took:?}: {}", stderr());
}
