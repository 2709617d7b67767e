//! `k8s.cluster.uid` on the resource of `pullcheck run`: the kube-system namespace's uid, read
//! once from the API-server harness at start; a value someone set wins and saves the request;
//! RBAC that refuses it costs one warning, not the start. Exports go to the in-process OTLP
//! receiver, probes to the real registry.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, attributes, latest_points, spans};
use support::proxy::{Fault, FaultProxy};
use support::{Env, RefusedPort, eventually, one_deployment, workload};

const WAIT: Duration = Duration::from_secs(30);
const KUBE_SYSTEM_GET: &str = "GET /api/v1/namespaces/kube-system";

struct Run {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl Run {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and a clean exit.
    async fn finish(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let status = tokio::time::timeout(WAIT, self.child.wait()).await;
        let log = self.stderr();
        assert!(!log.contains("panicked at"), "{log}");
        assert!(status.is_ok_and(|s| s.is_ok_and(|s| s.success())), "a clean exit on SIGTERM:\n{log}");
    }
}

/// `pullcheck run --cluster-name prod-eu` with `kubeconfig`, exporting to `receiver`.
fn start(env: &Env, kubeconfig: &std::path::Path, receiver: &Receiver, extra: &[&str], vars: &[(&str, &str)]) -> Run {
    let log = env.dir.path().join(format!("run-{}.log", support::rand_suffix()));
    let registry_config = env.registry_config("", "");
    let registry_config = registry_config.display().to_string();
    let mut args = vec!["--window", "4s", "--tick", "200ms", "--health-addr", "off", "--cluster-name", "prod-eu"];
    args.extend_from_slice(&["--registry-config", &registry_config, "--platform", "linux/amd64"]);
    args.extend_from_slice(extra);
    let (child, home) = support::process::spawn_run(kubeconfig, &args, Some(&receiver.endpoint), vars, &log);
    Run { child, log, _home: home }
}

/// The resource of every metrics and traces export so far.
fn resources(received: &Received) -> Vec<BTreeMap<String, String>> {
    let of = |resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>| {
        resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default()
    };
    let metrics = received.metrics.iter().flat_map(|r| r.resource_metrics.iter()).map(|rm| of(&rm.resource));
    let traces = received.traces.iter().flat_map(|r| r.resource_spans.iter()).map(|rs| of(&rs.resource));
    metrics.chain(traces).collect()
}

/// The image probed and exported as available, with its probe's span: both signals have arrived.
fn probed_and_exported(received: &Received) -> bool {
    latest_points(received, "pullcheck.image.available").iter().any(|(_, v)| *v == 1.0)
        && spans(received).iter().any(|s| s.name.starts_with("probe "))
}

/// `k8s.cluster.uid` of every resource exported so far, each once, with `k8s.cluster.name`.
fn cluster_identities(receiver: &Receiver) -> Vec<(Option<String>, Option<String>)> {
    let mut seen: Vec<_> = receiver
        .received(resources)
        .into_iter()
        .map(|r| (r.get("k8s.cluster.uid").cloned(), r.get("k8s.cluster.name").cloned()))
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

fn uid_warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("k8s.cluster.uid")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_system_uid_is_on_every_resource_beside_the_cluster_name() {
    let (env, api) = one_deployment().await;
    let receiver = Receiver::http().await;
    let run = start(&env, &api.kubeconfig(env.dir.path()), &receiver, &[], &[]);
    assert!(eventually(WAIT, || receiver.received(probed_and_exported)).await, "{}", run.stderr());
    let uid = api.kube_system_uid();
    assert_eq!(cluster_identities(&receiver), [(Some(uid), Some("prod-eu".to_string()))], "metrics and spans alike");
    let gets = api.requests().iter().filter(|r| r.starts_with(KUBE_SYSTEM_GET)).count();
    assert_eq!(gets, 1, "read once, at start: {:?}", api.requests());
    assert!(uid_warnings(&run.stderr()).is_empty(), "{}", run.stderr());
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_refusing_kube_system_costs_one_warning_not_the_start() {
    let (env, api) = one_deployment().await;
    api.forbid_verb("get", "Namespace", None);
    let receiver = Receiver::http().await;
    let run = start(&env, &api.kubeconfig(env.dir.path()), &receiver, &[], &[]);
    assert!(eventually(WAIT, || receiver.received(probed_and_exported)).await, "{}", run.stderr());
    // Exports go on after the start: the warning is not said again with them.
    let exports = receiver.received(|r| r.metrics.len());
    assert!(eventually(WAIT, || receiver.received(|r| r.metrics.len()) >= exports + 3).await);
    assert_eq!(cluster_identities(&receiver), [(None, Some("prod-eu".to_string()))], "exported without the uid");
    assert!(api.requests().iter().any(|r| r.starts_with(KUBE_SYSTEM_GET)), "it was asked for");
    let stderr = run.stderr();
    let warnings = uid_warnings(&stderr);
    assert_eq!(warnings.len(), 1, "one warning:\n{stderr}");
    let warning = warnings[0];
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(warning.contains("kube-system: forbidden by RBAC"), "the cause: {warning}");
    assert!(warning.contains("resourceNames [kube-system]") && warning.contains("--cluster-uid"), "the fix: {warning}");
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_down_at_start_costs_one_warning_not_the_start() {
    let env = Env::start().await;
    let api = ApiServer::start().await;
    let down = RefusedPort::bind();
    let kubeconfig = api.kubeconfig_via(env.dir.path(), &format!("http://{}", down.addr), "down");
    let receiver = Receiver::http().await;
    let run = start(&env, &kubeconfig, &receiver, &[], &[]);
    // With no inventory there is no probe: pullcheck's own metrics show it runs and exports.
    let exported = |r: &Received| r.metrics.len() >= 2;
    assert!(eventually(WAIT, || receiver.received(exported)).await, "{}", run.stderr());
    assert_eq!(cluster_identities(&receiver), [(None, Some("prod-eu".to_string()))]);
    let stderr = run.stderr();
    let warnings = uid_warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("kube-system: cannot reach the API server: connection refused"), "{}", warnings[0]);
    assert!(!warnings[0].contains("resourceNames"), "RBAC is not the fix here: {}", warnings[0]);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_delays_the_start_by_the_lookups_bound_only() {
    let (env, api) = one_deployment().await;
    let proxy = FaultProxy::start(api.url()).await;
    // The first request is the lookup: its answer starts and then hangs, a byte a minute.
    proxy.set_for(Fault::Drip(Duration::from_secs(60)), 1);
    let kubeconfig = api.kubeconfig_via(env.dir.path(), &format!("http://{}", proxy.addr()), "hangs");
    let receiver = Receiver::http().await;
    let started = Instant::now();
    let run = start(&env, &kubeconfig, &receiver, &[], &[]);
    assert!(eventually(WAIT, || receiver.received(probed_and_exported)).await, "{}", run.stderr());
    println!("from start to the first probe exported, the lookup hanging: {:?}", started.elapsed());
    let first = proxy.seen().first().map(|s| format!("{} {}", s.method, s.target));
    assert_eq!(first.as_deref(), Some("GET /api/v1/namespaces/kube-system"), "the lookup was the request that hung");
    assert_eq!(cluster_identities(&receiver), [(None, Some("prod-eu".to_string()))]);
    let stderr = run.stderr();
    let warnings = uid_warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("kube-system: cannot reach the API server: no answer within 5s"), "{}", warnings[0]);
    run.finish().await;
}

/// How a case sets the uid, and what is exported.
struct Given {
    case: &'static str,
    args: &'static [&'static str],
    vars: &'static [(&'static str, &'static str)],
    uid: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_uid_someone_set_wins_and_skips_the_lookup() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let cases = [
        Given { case: "--cluster-uid", args: &["--cluster-uid", "0f3c-given"], vars: &[], uid: Some("0f3c-given") },
        Given {
            case: "PULLCHECK_CLUSTER_UID",
            args: &[],
            vars: &[("PULLCHECK_CLUSTER_UID", "7a1e-env")],
            uid: Some("7a1e-env"),
        },
        Given {
            case: "OTEL_RESOURCE_ATTRIBUTES",
            args: &[],
            vars: &[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,k8s.cluster.uid=9b2d-otel")],
            uid: Some("9b2d-otel"),
        },
        Given { case: "--cluster-uid none", args: &["--cluster-uid", "none"], vars: &[], uid: None },
    ];
    for Given { case, args, vars, uid: expected } in cases {
        let api = ApiServer::start().await;
        api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
        let receiver = Receiver::http().await;
        let run = start(&env, &api.kubeconfig(env.dir.path()), &receiver, args, vars);
        assert!(eventually(WAIT, || receiver.received(probed_and_exported)).await, "{case}: {}", run.stderr());
        let identities = cluster_identities(&receiver);
        assert_eq!(identities, [(expected.map(str::to_string), Some("prod-eu".to_string()))], "{case}");
        let asked: Vec<String> = api.requests().into_iter().filter(|r| r.starts_with(KUBE_SYSTEM_GET)).collect();
        assert!(asked.is_empty(), "{case}: not looked up: {asked:?}");
        assert!(uid_warnings(&run.stderr()).is_empty(), "{case}: {}", run.stderr());
        run.finish().await;
    }
}
