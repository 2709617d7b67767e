//! Two `pullcheck run` replicas with `--leader-elect` against the API-server harness (Leases with
//! resourceVersion conflicts), the real registry and an OTLP receiver: exactly one exports image
//! series; SIGKILL, SIGTERM and an API server that stops answering hand leadership over as the
//! issue of record says, never with two leaders exporting.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, metrics};
use support::proxy::{Fault, FaultProxy};
use support::{Env, eventually, workload};
use tokio::process::Child;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);

struct Replica {
    name: String,
    child: Child,
    log: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl Replica {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args([signal, &pid]).status();
    }

    async fn wait(mut self) {
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// A replica named `name` (its POD_NAME and `service.instance.id`) against `server`.
fn replica(env: &Env, api: &ApiServer, server: &str, receiver: &Receiver, name: &str) -> Replica {
    let kubeconfig = api.kubeconfig_via(env.dir.path(), server, name);
    let log = env.dir.path().join(format!("replica-{name}.log"));
    let args = ["--window", "4s", "--tick", "200ms", "--health-addr", "off", "--request-timeout", "2s"];
    let election = ["--leader-elect", "--leader-elect-lease-duration", "3s", "--leader-elect-renew-deadline", "2s"];
    let args = [&args[..], &election, &["--leader-elect-retry-period", "500ms"]].concat();
    let env_vars = [("POD_NAME", name), ("POD_NAMESPACE", "pullcheck")];
    let (child, home) = support::process::spawn_run(&kubeconfig, &args, Some(&receiver.endpoint), &env_vars, &log);
    Replica { name: name.into(), child, log, _home: home }
}

/// Per metrics export since `from` (in arrival order): the replica, its `pullcheck.leader`, and
/// how many `pullcheck.image.available` points it carried.
fn exports(received: &Received, from: usize) -> Vec<(String, Option<f64>, usize)> {
    let mut out = Vec::new();
    let later =
        Received { metrics: received.metrics[from.min(received.metrics.len())..].to_vec(), ..Received::default() };
    let mut per_export: BTreeMap<usize, (String, Option<f64>, usize)> = BTreeMap::new();
    for (index, request) in later.metrics.iter().enumerate() {
        let one = Received { metrics: vec![request.clone()], ..Received::default() };
        for (resource, metric) in metrics(&one) {
            let entry = per_export
                .entry(index)
                .or_insert_with(|| (resource.get("service.instance.id").cloned().unwrap_or_default(), None, 0));
            let points = support::otlp::number_points(metric.clone());
            match metric.name.as_str() {
                "pullcheck.leader" => entry.1 = points.first().map(|(_, v)| *v),
                "pullcheck.image.available" => entry.2 += points.len(),
                _ => {}
            }
        }
    }
    out.extend(per_export.into_values());
    out
}

/// The replicas that exported image series since `from`.
fn exporting(receiver: &Receiver, from: usize) -> Vec<String> {
    let mut names: Vec<String> = receiver
        .received(|r| exports(r, from))
        .into_iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(name, _, _)| name)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn mark(receiver: &Receiver) -> usize {
    receiver.received(|r| r.metrics.len())
}

fn holder(api: &ApiServer) -> Option<String> {
    api.object("Lease", "pullcheck", "pullcheck")
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_string))
        .filter(|h| !h.is_empty())
}

async fn cluster() -> (Env, ApiServer, Receiver) {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    (env, api, Receiver::http().await)
}

#[tokio::test]
async fn one_leader_exports_and_a_killed_leader_is_replaced_within_the_lease() {
    let (env, api, receiver) = cluster().await;
    let a = replica(&env, &api, &api.url(), &receiver, "replica-a");
    let b = replica(&env, &api, &api.url(), &receiver, "replica-b");
    let first = |r: &Receiver| exporting(r, 0);
    assert!(eventually(WAIT, || !first(&receiver).is_empty()).await, "{}\n{}", a.stderr(), b.stderr());
    // Both report, one leads; across a few exports only the leader ever has image series.
    let settle = mark(&receiver);
    assert!(eventually(WAIT, || receiver.received(|r| exports(r, settle)).len() >= 10).await);
    let leaders = exporting(&receiver, 0);
    assert_eq!(leaders.len(), 1, "exactly one replica exports image series: {leaders:?}");
    let leader_name = leaders[0].clone();
    let lease_holder = holder(&api).expect("a lease holder");
    assert!(lease_holder.starts_with(&format!("{leader_name}_")), "{lease_holder} holds, {leader_name} exports");
    let reported: BTreeMap<String, f64> = receiver
        .received(|r| exports(r, settle))
        .into_iter()
        .filter_map(|(name, leader, _)| leader.map(|l| (name, l)))
        .collect();
    assert_eq!(reported.values().filter(|v| **v == 1.0).count(), 1, "pullcheck.leader: {reported:?}");
    assert_eq!(reported.len(), 2, "every replica reports pullcheck.leader: {reported:?}");

    let (leader, standby) = if a.name == leader_name { (a, b) } else { (b, a) };
    leader.signal("-KILL");
    let killed = Instant::now();
    let after = mark(&receiver);
    assert!(
        eventually(WAIT, || exporting(&receiver, after) == [standby.name.clone()]).await,
        "the standby takes over: {}",
        standby.stderr()
    );
    let takeover = killed.elapsed();
    println!("SIGKILL takeover (lease {LEASE:?}): {takeover:?} to image series from the new leader");
    assert!(holder(&api).is_some_and(|h| h.starts_with(&format!("{}_", standby.name))));
    leader.wait().await;
    standby.signal("-TERM");
    standby.wait().await;
}

#[tokio::test]
async fn a_graceful_leader_hands_over_within_a_retry_period() {
    let (env, api, receiver) = cluster().await;
    let a = replica(&env, &api, &api.url(), &receiver, "replica-a");
    assert!(eventually(WAIT, || holder(&api).is_some()).await, "{}", a.stderr());
    let b = replica(&env, &api, &api.url(), &receiver, "replica-b");
    // b is a warm standby: its leader gauge says 0.
    assert!(
        eventually(WAIT, || receiver
            .received(|r| exports(r, 0))
            .iter()
            .any(|(n, l, _)| n == "replica-b" && *l == Some(0.0)))
        .await,
        "{}",
        b.stderr()
    );
    a.signal("-TERM");
    let terminated = Instant::now();
    assert!(
        eventually(WAIT, || holder(&api).is_some_and(|h| h.starts_with("replica-b_"))).await,
        "{}\n{}",
        a.stderr(),
        b.stderr()
    );
    let takeover = terminated.elapsed();
    println!("SIGTERM takeover (retry period {RETRY:?}): {takeover:?} to the lease changing hands");
    // Released, not expired: well within the lease duration.
    assert!(takeover < LEASE, "the lease was released, not left to expire: {takeover:?}\n{}", a.stderr());
    assert!(a.stderr().contains("lease released"), "{}", a.stderr());
    let after = mark(&receiver);
    assert!(eventually(WAIT, || exporting(&receiver, after) == ["replica-b".to_string()]).await);
    a.wait().await;
    b.signal("-TERM");
    b.wait().await;
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_lease_can_pass() {
    let (env, api, receiver) = cluster().await;
    // The first replica reaches the API server through a proxy that can stop answering.
    let proxy = FaultProxy::start(api.url()).await;
    let cut = replica(&env, &api, &format!("http://{}", proxy.addr()), &receiver, "replica-cut");
    assert!(eventually(WAIT, || holder(&api).is_some()).await, "{}", cut.stderr());
    assert!(eventually(WAIT, || exporting(&receiver, 0) == ["replica-cut".to_string()]).await, "{}", cut.stderr());
    let other = replica(&env, &api, &api.url(), &receiver, "replica-other");
    assert!(
        eventually(WAIT, || receiver
            .received(|r| exports(r, 0))
            .iter()
            .any(|(n, l, _)| n == "replica-other" && *l == Some(0.0)))
        .await
    );
    proxy.set(Fault::Drip(Duration::from_secs(60)));
    let from = mark(&receiver);
    assert!(
        eventually(WAIT, || holder(&api).is_some_and(|h| h.starts_with("replica-other_"))).await,
        "{}\n{}",
        cut.stderr(),
        other.stderr()
    );
    assert!(
        eventually(WAIT, || exporting(&receiver, mark(&receiver).saturating_sub(4)) == ["replica-other".to_string()])
            .await
    );
    // In arrival order: once the other replica exports image series, the cut-off one never does again.
    let sequence = receiver.received(|r| exports(r, from));
    let first_new =
        sequence.iter().position(|(n, _, count)| n == "replica-other" && *count > 0).expect("the new leader");
    let late = sequence[first_new..].iter().filter(|(n, _, count)| n == "replica-cut" && *count > 0).count();
    assert_eq!(late, 0, "two leaders exported at once: {sequence:?}");
    assert!(cut.stderr().contains("no longer leading"), "{}", cut.stderr());
    cut.signal("-KILL");
    cut.wait().await;
    other.signal("-TERM");
    other.wait().await;
}
