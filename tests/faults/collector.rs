//! The collector fails: down (connections refused), 413, 503 with `Retry-After`, gRPC
//! UNAVAILABLE with `RetryInfo`, and a collector that accepts and never answers. Each runs
//! `pullcheck run` against the API-server harness and a real registry, exporting to the
//! in-process OTLP receiver at fast intervals (metrics every 100 ms) so a 25 s outage spans many
//! export attempts, then brings the collector back. For each: probing goes on (the registry's
//! access log), the failure is logged once at WARN with the endpoint and cause and the recovery
//! once at INFO, resident memory stays bounded (VmHWM), and the failures and drops arrive on
//! `pullcheck.telemetry.export.failures` and `pullcheck.telemetry.dropped` once the collector is
//! back (docs/operations.md, "When the collector fails").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::figures::{self, Row};
use super::support::apiserver::ApiServer;
use super::support::otlp::{Behaviour, Received, Receiver, latest_points};
use super::support::{Env, RefusedPort, eventually, workload};

const WAIT: Duration = Duration::from_secs(60);
/// Long enough for ~100 metric exports at the intervals below; far below the 60 s in which a
/// cause is logged once (REPORT_INTERVAL), so each cause must be logged exactly once.
const OUTAGE: Duration = Duration::from_secs(25);
/// What a dev build of pullcheck watching one Deployment may reach: the deployment's request is
/// 64 MiB; a queue that grew with the outage would pass it.
const PEAK_BOUND_KIB: u64 = 64 * 1024;
/// The collector's credential, sent with every export: never in what pullcheck writes.
const COLLECTOR_TOKEN: &str = "collector-token-s3cr3t";
const COLLECTOR_HEADERS: &str = "authorization=Bearer collector-token-s3cr3t";

/// The registries with team/app:v1 and a cluster with one Deployment using it.
async fn cluster() -> (Env, ApiServer) {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    (env, api)
}

/// Manifest requests the registry served: the probes made so far.
fn probes(env: &Env) -> usize {
    env.anon.served().iter().filter(|s| s.line().contains("/v2/team/app/manifests/v1")).count()
}

/// The newest value of one of our export-health counters for the metrics signal and `error_type`.
fn export_counter(r: &Received, name: &str, error_type: &str) -> f64 {
    latest_points(r, name)
        .into_iter()
        .filter(|(a, _)| {
            a.get("pullcheck.telemetry.signal").map(String::as_str) == Some("metrics")
                && a.get("error.type").map(String::as_str) == Some(error_type)
        })
        .map(|(_, v)| v)
        .sum()
}

fn available(r: &Received) -> BTreeMap<String, f64> {
    latest_points(r, "pullcheck.image.available")
        .into_iter()
        .filter_map(|(a, v)| Some((a.get("k8s.deployment.name")?.clone(), v)))
        .collect()
}

/// How the collector fails, and how it comes back.
enum Collector {
    /// Nothing listens; it comes back on the same port.
    Down(RefusedPort),
    /// The receiver answers as `Behaviour` says; it comes back answering as it should.
    Failing(Receiver),
}

struct Case {
    fault: &'static str,
    expected: &'static str,
    /// `error.type` the failures are counted under.
    error_type: &'static str,
    /// What the WARN line says the cause is.
    logged_cause: &'static str,
    /// OTEL_EXPORTER_OTLP_TIMEOUT, ms.
    timeout_ms: u64,
    /// OTLP/gRPC instead of OTLP/HTTP.
    grpc: bool,
}

struct Outcome {
    failed_exports: f64,
    dropped: f64,
    probes_during: usize,
    peak_rss_kib: u64,
    recovered_after: Duration,
    collector: Receiver,
}

async fn outage(case: &Case, collector: Collector) -> Outcome {
    let (env, api) = cluster().await;
    let endpoint = match &collector {
        Collector::Down(port) => format!("http://{}", port.addr),
        Collector::Failing(receiver) => receiver.endpoint.clone(),
    };
    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("run.log");
    // At trace, as the suite reads every log for credentials: the collector's token must not be in it.
    let args =
        ["--window", "2s", "--tick", "100ms", "--failure-retry", "500ms", "--health-addr", "off", "--log", "trace"];
    let timeout = case.timeout_ms.to_string();
    let protocol = if case.grpc { "grpc" } else { "http/protobuf" };
    let otel = [
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", timeout.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_HEADERS", COLLECTOR_HEADERS),
    ];
    let (mut child, _home) = super::support::process::spawn_run(&kubeconfig, &args, Some(&endpoint), &otel, &log);
    let pid = child.id().expect("running");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let metrics_endpoint = if case.grpc { endpoint.clone() } else { format!("{endpoint}/v1/metrics") };
    let warned = format!("exporting metrics to {metrics_endpoint} failed: {}", case.logged_cause);
    assert!(eventually(WAIT, || stderr().contains(&warned)).await, "{warned:?} in the log:\n{}", stderr());
    let probes_before = probes(&env);
    tokio::time::sleep(OUTAGE).await;
    let probes_during = probes(&env) - probes_before;
    // Window 2 s: a dozen probes in 25 s when nothing blocks them.
    assert!(probes_during >= 6, "probing goes on through the outage: {probes_during} probes\n{}", stderr());
    let peak_rss_kib = super::support::process::status_kib(pid, "VmHWM");

    let back = Instant::now();
    let receiver = match collector {
        Collector::Down(port) => Receiver::http_on(port.listen()),
        Collector::Failing(receiver) => {
            receiver.behave(Behaviour::Accept);
            receiver
        }
    };
    let counted = |r: &Received| export_counter(r, "pullcheck.telemetry.export.failures", case.error_type) > 0.0;
    assert!(
        eventually(WAIT, || receiver.received(counted)).await,
        "the failures arrive once the collector is back\n{}",
        stderr()
    );
    let recovered_after = back.elapsed();
    let web = BTreeMap::from([("web".to_string(), 1.0)]);
    assert!(eventually(WAIT, || receiver.received(available) == web).await, "image series arrive again");
    let recovery = "exporting metrics to";
    assert!(
        eventually(WAIT, || stderr()
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains(recovery) && l.contains("works again")))
        .await,
        "the recovery is logged at INFO\n{}",
        stderr()
    );
    let failed_exports =
        receiver.received(|r| export_counter(r, "pullcheck.telemetry.export.failures", case.error_type));
    let dropped = receiver.received(|r| export_counter(r, "pullcheck.telemetry.dropped", case.error_type));
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    let stderr = stderr();
    assert!(!stderr.contains("panicked at"), "{stderr}");
    figures::assert_no_leak("stderr at --log trace", &stderr, &[(None, COLLECTOR_TOKEN)]);
    let sent = receiver.received(|r| {
        r.headers.iter().any(|h| h.iter().any(|(k, v)| k == "authorization" && v.contains(COLLECTOR_TOKEN)))
    });
    assert!(sent, "the exports carried the collector's credential (so its absence from the log means something)");
    let warnings = stderr.lines().filter(|l| l.contains(" WARN ") && l.contains(&warned)).count();
    assert_eq!(warnings, 1, "one WARN for the cause within the interval, the repeats counted:\n{stderr}");
    let recoveries = stderr.lines().filter(|l| l.contains("exporting metrics to") && l.contains("works again")).count();
    assert_eq!(recoveries, 1, "one recovery line:\n{stderr}");
    assert!(
        dropped >= failed_exports,
        "every failed metrics export dropped its data points: {dropped} < {failed_exports}"
    );
    assert!(peak_rss_kib > 0 && peak_rss_kib < PEAK_BOUND_KIB, "VmHWM {peak_rss_kib} KiB");
    Outcome { failed_exports, dropped, probes_during, peak_rss_kib, recovered_after, collector: receiver }
}

fn record(case: &Case, outcome: &Outcome, extra: &str) {
    figures::record(Row {
        group: "collector",
        fault: case.fault.to_string(),
        expected: case.expected.to_string(),
        got: format!(
            "{} failed metric exports over {} s counted as `{}` ({} data points dropped), one WARN, {} probes \
             meanwhile, values back {:.1} s after the collector{extra}",
            outcome.failed_exports,
            OUTAGE.as_secs(),
            case.error_type,
            outcome.dropped,
            outcome.probes_during,
            outcome.recovered_after.as_secs_f64()
        ),
        peak_rss_kib: outcome.peak_rss_kib,
        millis: OUTAGE.as_millis() + outcome.recovered_after.as_millis(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_for_a_hundred_exports() {
    let case = Case {
        fault: "collector down (connection refused), 25 s at a 100 ms metric interval",
        expected: "probing goes on; one WARN per signal and cause; exports resume and the failures arrive counted",
        error_type: "connection_refused",
        logged_cause: "connection refused",
        timeout_ms: 250,
        grpc: false,
    };
    let outcome = outage(&case, Collector::Down(RefusedPort::bind())).await;
    assert!(outcome.failed_exports >= 50.0, "the outage spanned many exports: {}", outcome.failed_exports);
    record(&case, &outcome, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answers_413() {
    let receiver = Receiver::http().await;
    receiver.behave(Behaviour::Status { status: 413, retry_after: None });
    let case = Case {
        fault: "collector answers 413 Payload Too Large",
        expected: "not retried (the SDK's classification); counted as 413; one WARN naming the cause",
        error_type: "413",
        logged_cause: "HTTP 413",
        timeout_ms: 1000,
        grpc: false,
    };
    let outcome = outage(&case, Collector::Failing(receiver)).await;
    let refused = outcome.collector.received(|r| r.refused.iter().filter(|(p, ..)| p == "/v1/metrics").count());
    // Not retried: one request per failed export (fewer counted only if an export was still out).
    assert!(
        (refused as f64) <= outcome.failed_exports + 1.0,
        "{refused} requests for {} failed exports",
        outcome.failed_exports
    );
    record(&case, &outcome, &format!("; {refused} requests: one per export, none retried"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answers_503_with_retry_after() {
    let receiver = Receiver::http().await;
    receiver.behave(Behaviour::Status { status: 503, retry_after: Some("2".into()) });
    let case = Case {
        fault: "collector answers 503 with Retry-After: 2",
        expected: "the retry waits the 2 s asked for (within the 2.5 s export timeout), then the batch is dropped and counted",
        error_type: "503",
        logged_cause: "HTTP 503",
        timeout_ms: 2500,
        grpc: false,
    };
    let outcome = outage(&case, Collector::Failing(receiver)).await;
    let requests = assert_waited_two_seconds(&outcome.collector);
    record(&case, &outcome, &format!("; {requests} requests, never 3 within 1.9 s"));
}

/// Never more than two requests (an export's last and the next one's first) in any 1.9 s when a
/// 2 s delay is honoured between attempts; the SDK's own backoff would send four in 0.7 s.
fn assert_waited_two_seconds(receiver: &Receiver) -> usize {
    let times: Vec<Instant> =
        receiver.received(|r| r.refused.iter().filter(|(p, ..)| p == "/v1/metrics").map(|(_, _, at)| *at).collect());
    let crowded = times.windows(3).filter(|w| w[2].duration_since(w[0]) < Duration::from_millis(1900)).count();
    assert_eq!(crowded, 0, "the asked-for delay honoured between attempts: {} requests", times.len());
    assert!(times.len() >= 10, "the collector was asked again and again: {}", times.len());
    times.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answers_grpc_unavailable_with_retry_info() {
    let receiver = Receiver::grpc().await;
    receiver.behave(Behaviour::Grpc { code: tonic::Code::Unavailable, retry_delay: Some(Duration::from_secs(2)) });
    let case = Case {
        fault: "collector answers gRPC UNAVAILABLE with RetryInfo 2 s",
        expected: "the retry waits the 2 s asked for (within the 2.5 s export timeout), then the batch is dropped and counted",
        error_type: "unavailable",
        logged_cause: "gRPC unavailable",
        timeout_ms: 2500,
        grpc: true,
    };
    let outcome = outage(&case, Collector::Failing(receiver)).await;
    let requests = assert_waited_two_seconds(&outcome.collector);
    record(&case, &outcome, &format!("; {requests} requests, never 3 within 1.9 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_accepts_and_never_answers() {
    let receiver = Receiver::http().await;
    receiver.behave(Behaviour::Hang);
    let case = Case {
        fault: "collector accepts the connection and never answers",
        expected: "each export ends at OTEL_EXPORTER_OTLP_TIMEOUT (500 ms); counted as timeout",
        error_type: "timeout",
        logged_cause: "no answer within the export timeout",
        timeout_ms: 500,
        grpc: false,
    };
    let outcome = outage(&case, Collector::Failing(receiver)).await;
    // Bounded by the timeout: 25 s of 500 ms exports is ~40 of them, not one stuck for ever.
    assert!(outcome.failed_exports >= 20.0, "exports time out and go on: {}", outcome.failed_exports);
    record(&case, &outcome, "");
}
