//! No credential in anything pullcheck writes: `pullcheck run` at `--log trace` against a
//! cluster whose workloads pull with Basic credentials, with a token service, with a refused
//! password — then every byte of its
//! stderr and of every span, metric and log record the collector received is searched for each
//! credential, as is and in base64 (figures::leak_forms).

use std::time::{Duration, Instant};

use super::figures::{Row, assert_no_leak, record};
use super::support::apiserver::ApiServer;
use super::support::otlp::{Receiver, latest_points, logs, spans};
use super::support::{Env, PASSWORD, USER, eventually, process, pull_secret, with_pull_secrets, workload};

const WAIT: Duration = Duration::from_secs(30);
const WRONG_PASSWORD: &str = "not-alice-pw-7f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_level_exports_and_logs_no_credential() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let workloads = [
        ("token", env.token.addr.clone(), PASSWORD),
        ("basic", env.basic.addr.clone(), PASSWORD),
        ("refused", env.basic.addr.clone(), WRONG_PASSWORD),
    ];
    for (name, registry, password) in &workloads {
        api.apply(pull_secret(name, "regcred", registry, USER, password));
        let object = workload("Deployment", name, "app", &format!("{registry}/private/app:v1"));
        api.apply(with_pull_secrets(object, &["regcred"]));
    }
    let token = env.issuer_token("private/app").await;
    let receiver = Receiver::http().await;
    let log = env.dir.path().join("run-trace.log");
    let config = env.registry_config("", "");
    let args = [
        "--registry-config",
        config.to_str().expect("utf-8 path"),
        "--window",
        "4s",
        "--tick",
        "200ms",
        "--request-timeout",
        "2s",
        "--retries",
        "0",
        "--log",
        "trace",
    ];
    let started = Instant::now();
    let (mut child, _home) =
        process::spawn_run(&api.kubeconfig(env.dir.path()), &args, Some(&receiver.endpoint), &[], &log);
    // Every workload's state, and every probe's trace and state-change log record, exported.
    let everything_exported = |r: &super::support::otlp::Received| {
        let states: Vec<String> = latest_points(r, "pullcheck.image.status")
            .into_iter()
            .filter_map(|(attributes, _)| attributes.get("pullcheck.image.state").cloned())
            .collect();
        states.iter().filter(|s| *s == "available").count() == 2
            && states.iter().any(|s| s == "authentication_failure")
            && spans(r).len() >= workloads.len() * 2
            && logs(r).len() >= workloads.len()
    };
    let all_probed = eventually(WAIT, || receiver.received(everything_exported)).await;
    let pid = child.id().expect("running");
    let peak = process::status_kib(pid, "VmHWM");
    let _ = child.kill().await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(all_probed, "every workload probed: {stderr}");
    let exported = receiver.received(|r| format!("{:?}\n{:?}\n{:?}\n{:?}", r.metrics, r.traces, r.logs, r.headers));
    assert!(stderr.contains("TRACE") || stderr.contains("trace"), "--log trace took effect");
    let mut secrets = vec![(Some(USER), PASSWORD), (Some(USER), WRONG_PASSWORD), (None, token.as_str())];
    // The JWT's signed header: every token the issuer hands out starts with it.
    let jwt_header = token.split('.').next().unwrap_or_default().to_string();
    secrets.push((None, jwt_header.as_str()));
    assert_no_leak("run's stderr at --log trace", &stderr, &secrets);
    assert_no_leak("exported spans, metrics and logs", &exported, &secrets);
    let scanned = stderr.len() + exported.len();
    record(Row {
        group: "credentials",
        fault: "run --log trace: Basic, token and refused credentials; stderr and every export searched".into(),
        expected: "no credential, plain or base64".into(),
        got: format!("0 hits in {} KiB scanned", scanned / 1024),
        peak_rss_kib: peak,
        millis: started.elapsed().as_millis(),
    });
}
