//! `pullcheck run` end to end: the API-server harness, the real registries, and an in-process
//! OTLP receiver decoding what it pushes — metrics, one trace per probe, state-change logs.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::json;
use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, every_point, latest_histogram, latest_points, logs, metrics, spans};
use support::{Env, RefusedPort, eventually, one_deployment, workload};
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(30);

struct Running {
    child: Child,
    log: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where /healthz and /readyz are served: pullcheck binds port 0 there and does not log
    /// the port it got, so it is read from the process's listening socket.
    async fn health(&self) -> String {
        let pid = self.child.id().expect("running");
        support::process::await_listening(pid, 1, WAIT).await[0].to_string()
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let code = tokio::time::timeout(WAIT, self.child.wait()).await.ok().and_then(|s| s.ok()).and_then(|s| s.code());
        if code != Some(0) {
            eprintln!("pullcheck exited with {code:?}:\n{}", self.stderr());
        }
        code
    }
}

/// `pullcheck run` against the harness and the registries, cut off from the machine's clusters
/// and collectors: only `otel` (after the fast export defaults) says where telemetry goes.
fn start(env: &Env, api: &ApiServer, otel: &[(&str, String)], extra: &[&str]) -> Running {
    let kubeconfig = api.kubeconfig(env.dir.path());
    let registry_config = env.registry_config("", "");
    let log = env.dir.path().join(format!("run-{}.log", support::rand_suffix()));
    let (mut command, home) = support::process::pullcheck_async();
    command
        .args(["run", "--kubeconfig", &kubeconfig.display().to_string(), "--registry-config"])
        .arg(&registry_config)
        .args(["--window", "4s", "--tick", "200ms", "--failure-retry", "500ms", "--health-addr", "127.0.0.1:0"])
        .args(["--cluster-name", "test-cluster", "--request-timeout", "2s", "--retries", "0"])
        .args(extra)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in otel {
        command.env(k, v);
    }
    Running { child: command.spawn().expect("start pullcheck run"), log, _home: home }
}

async fn http_get(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

type Points = Vec<(BTreeMap<String, String>, f64)>;

fn point_for<'a>(points: &'a Points, container: &str) -> Option<&'a (BTreeMap<String, String>, f64)> {
    points.iter().find(|(a, _)| a.get("k8s.container.name").map(String::as_str) == Some(container))
}

/// `namespace/workload/container` of a per-container series, whatever the workload's kind.
fn series(attributes: &BTreeMap<String, String>) -> String {
    let get = |key: &str| attributes.get(key).map_or("?", String::as_str);
    let workload = ["k8s.deployment.name", "k8s.pod.name", "k8s.statefulset.name", "k8s.cronjob.name"]
        .iter()
        .find_map(|k| attributes.get(*k))
        .map_or("?", String::as_str);
    format!("{}/{workload}/{}", get("k8s.namespace.name"), get("k8s.container.name"))
}

/// A metric's newest points keyed by the values of `keys` (joined by a space).
fn by(points: &Points, keys: &[&str]) -> BTreeMap<String, f64> {
    points
        .iter()
        .map(|(a, v)| {
            let key: Vec<&str> = keys.iter().map(|k| a.get(*k).map_or("-", String::as_str)).collect();
            (key.join(" "), *v)
        })
        .collect()
}

fn attr<'a>(attributes: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    attributes.get(key).map(String::as_str)
}

/// The attributes of the state-change log saying `…image is now STATE (was PREVIOUS)`.
fn transition(r: &Received, image: &str, state: &str, previous: &str) -> Option<BTreeMap<String, String>> {
    let said = format!("{image} is now {state} (was {previous})");
    logs(r).into_iter().find(|(body, _)| body.contains(&said)).map(|(_, attributes)| attributes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_traces_and_logs_over_http_protobuf() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let (sidecar_digest, _) = env.pusher.image("team/sidecar", "v2", "amd64").await;
    let (private_digest, _) = env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let anon = env.anon.addr.clone();
    let mut web = workload("Deployment", "shop", "web", &format!("{anon}/team/app:v1"));
    web["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "sidecar", "image": format!("{anon}/team/sidecar:v2")}));
    api.apply(web);
    api.apply(workload("Pod", "shop", "debug", "Bad/Image:1"));
    api.apply(support::pull_secret("team-a", "regcred", &env.token.addr, support::USER, support::PASSWORD));
    let mut private = workload("Deployment", "team-a", "api", &format!("{}/private/app:v1", env.token.addr));
    private["spec"]["template"]["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    api.apply(private);

    let receiver = Receiver::http().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Basic dGVzdDpzZWNyZXQ=,x-team=platform".to_string()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test".to_string()),
    ];
    let run = start(&env, &api, &otel, &[]);
    let available = |r: &support::otlp::Received| latest_points(r, "pullcheck.image.available");
    let all_up = |points: &Points| {
        ["main", "sidecar"].iter().all(|c| {
            points.iter().filter(|(a, _)| a.get("k8s.container.name").map(String::as_str) == Some(*c)).count() >= 1
        }) && points.len() == 4
    };
    assert!(
        eventually(WAIT, || receiver.received(|r| all_up(&available(r)))).await,
        "four series: {:?}\n{}",
        receiver.received(available),
        run.stderr()
    );
    let health = run.health().await;
    assert_eq!(http_get(&health, "/readyz").await, Some(200));
    assert_eq!(http_get(&health, "/healthz").await, Some(200));

    // Series, values and attributes.
    let points = receiver.received(available);
    let expected = BTreeMap::from([
        ("shop/debug/main".to_string(), 0.0),
        ("shop/web/main".to_string(), 1.0),
        ("shop/web/sidecar".to_string(), 1.0),
        ("team-a/api/main".to_string(), 1.0),
    ]);
    let values: BTreeMap<String, f64> = points.iter().map(|(a, v)| (series(a), *v)).collect();
    assert_eq!(values, expected, "1 where the image can be pulled, 0 where not");
    let sidecar = point_for(&points, "sidecar").expect("sidecar series");
    assert_eq!(sidecar.1, 1.0);
    let attrs = &sidecar.0;
    assert_eq!(attrs.get("k8s.namespace.name").map(String::as_str), Some("shop"));
    assert_eq!(attrs.get("k8s.deployment.name").map(String::as_str), Some("web"));
    assert_eq!(attrs.get("pullcheck.workload.kind").map(String::as_str), Some("Deployment"));
    assert_eq!(attrs.get("container.image.name"), Some(&format!("{anon}/team/sidecar")));
    assert_eq!(attrs.get("container.image.tags").map(String::as_str), Some("v2"));
    let (anon_host, anon_port) = anon.rsplit_once(':').expect("host:port");
    assert_eq!(attrs.get("server.address").map(String::as_str), Some(anon_host), "the host alone");
    assert_eq!(attrs.get("server.port").map(String::as_str), Some(anon_port));
    let bad =
        points.iter().find(|(a, _)| a.get("k8s.pod.name").map(String::as_str) == Some("debug")).expect("bad series");
    assert_eq!(bad.1, 0.0);
    let private = points
        .iter()
        .find(|(a, _)| a.get("k8s.namespace.name").map(String::as_str) == Some("team-a"))
        .expect("private");
    assert_eq!(private.1, 1.0, "the pull secret of team-a serves its workload");
    let status = receiver.received(|r| latest_points(r, "pullcheck.image.status"));
    let state_of = |status: &Points, container: &str| {
        point_for(status, container).and_then(|(a, _)| a.get("pullcheck.image.state").cloned())
    };
    assert_eq!(state_of(&status, "sidecar").as_deref(), Some("available"));
    let debug_state = status.iter().find(|(a, _)| a.get("k8s.pod.name").map(String::as_str) == Some("debug"));
    assert_eq!(
        debug_state.and_then(|(a, _)| a.get("pullcheck.image.state")).map(String::as_str),
        Some("bad_image_format")
    );
    let states: BTreeMap<String, (String, f64)> = status
        .iter()
        .map(|(a, v)| (series(a), (attr(a, "pullcheck.image.state").unwrap_or("-").to_string(), *v)))
        .collect();
    let expected_states = BTreeMap::from([
        ("shop/debug/main".to_string(), ("bad_image_format".to_string(), 1.0)),
        ("shop/web/main".to_string(), ("available".to_string(), 1.0)),
        ("shop/web/sidecar".to_string(), ("available".to_string(), 1.0)),
        ("team-a/api/main".to_string(), ("available".to_string(), 1.0)),
    ]);
    assert_eq!(states, expected_states, "always 1, the state in the attribute");
    let resource = receiver.received(|r| metrics(r).last().map(|(res, _)| res.clone())).expect("resource");
    assert_eq!(resource.get("service.name").map(String::as_str), Some("pullcheck"));
    assert_eq!(resource.get("k8s.cluster.name").map(String::as_str), Some("test-cluster"));
    assert_eq!(resource.get("deployment.environment.name").map(String::as_str), Some("test"));
    let names: std::collections::BTreeSet<String> =
        receiver.received(|r| metrics(r).into_iter().map(|(_, m)| m.name).collect());
    for name in [
        "pullcheck.probes",
        "pullcheck.probe.duration",
        "pullcheck.images",
        "pullcheck.workloads",
        "pullcheck.schedule.batch.size",
        "pullcheck.schedule.window.coverage",
        "pullcheck.registry.requests",
    ] {
        assert!(names.contains(name), "{name} in {names:?}");
    }
    // Their values: three image keys (the bad reference is no key but counts as its state), three
    // workloads, every probe so far available, and the requests they took.
    let token_registry = env.token.addr.clone();
    let issuer = env.issuer.server.addr.to_string();
    let images = receiver.received(|r| by(&latest_points(r, "pullcheck.images"), &["pullcheck.image.state"]));
    let images: BTreeMap<String, f64> = images.into_iter().filter(|(_, n)| *n > 0.0).collect();
    assert_eq!(images, BTreeMap::from([("available".into(), 3.0), ("bad_image_format".into(), 1.0)]));
    assert_eq!(receiver.received(|r| latest_points(r, "pullcheck.workloads")).first().map(|(_, v)| *v), Some(3.0));
    // `server.address` and `server.port` apart: `127.0.0.1:5000` is the series "127.0.0.1 5000".
    let spaced = |registry: &str| registry.replacen(':', " ", 1);
    let probes = receiver.received(|r| {
        by(&latest_points(r, "pullcheck.probes"), &["server.address", "server.port", "pullcheck.image.state"])
    });
    assert!(probes.keys().all(|k| k.ends_with(" available")), "nothing failed: {probes:?}");
    assert!(probes.get(&format!("{} available", spaced(&anon))).is_some_and(|n| *n >= 2.0), "{probes:?}");
    assert!(probes.get(&format!("{} available", spaced(&token_registry))).is_some_and(|n| *n >= 1.0), "{probes:?}");
    let durations = receiver.received(|r| latest_histogram(r, "pullcheck.probe.duration"));
    for (registry, at_least) in [(&anon, 2), (&token_registry, 1)] {
        let (_, count, sum) = durations
            .iter()
            .find(|(a, _, _)| {
                let (host, port) = registry.rsplit_once(':').unwrap_or((registry.as_str(), ""));
                attr(a, "server.address") == Some(host) && attr(a, "server.port") == Some(port)
            })
            .unwrap_or_else(|| panic!("durations of {registry}: {durations:?}"));
        assert!(*count >= at_least && *sum > 0.0, "{registry}: {durations:?}");
    }
    let requests = receiver.received(|r| {
        by(
            &latest_points(r, "pullcheck.registry.requests"),
            &["server.address", "server.port", "http.response.status_code"],
        )
    });
    for (series, at_least) in [
        (format!("{} 200", spaced(&anon)), 2.0),
        (format!("{} 401", spaced(&token_registry)), 1.0),
        (format!("{} 200", spaced(&issuer)), 1.0),
        (format!("{} 200", spaced(&token_registry)), 1.0),
    ] {
        assert!(requests.get(&series).is_some_and(|n| *n >= at_least), "{series} >= {at_least}: {requests:?}");
    }
    let batches = receiver.received(|r| every_point(r, "pullcheck.schedule.batch.size"));
    assert!(!batches.is_empty() && batches.iter().all(|(_, n)| (0.0..=3.0).contains(n)), "{batches:?}");
    let coverage = |r: &Received| every_point(r, "pullcheck.schedule.window.coverage");
    assert!(eventually(WAIT, || receiver.received(|r| coverage(r).iter().any(|(_, c)| *c == 1.0))).await);
    assert!(receiver.received(coverage).iter().all(|(_, c)| (0.0..=1.0).contains(c)));
    let headers = receiver.received(|r| r.headers.clone());
    assert!(headers.iter().all(|h| h.iter().any(|(k, v)| k == "authorization" && v == "Basic dGVzdDpzZWNyZXQ=")));
    assert!(headers.iter().all(|h| h.iter().any(|(k, v)| k == "x-team" && v == "platform")));

    // One trace per probe: the root and one CLIENT span per HTTP request, the token fetch visible.
    let probe_trace = |r: &support::otlp::Received| {
        let all = spans(r);
        let root = all
            .iter()
            .find(|s| s.name == format!("probe {token_registry}/private/app") && s.parent_span_id.is_empty())?
            .clone();
        let children: Vec<_> =
            all.iter().filter(|s| s.trace_id == root.trace_id && s.parent_span_id == root.span_id).cloned().collect();
        Some((root, children))
    };
    assert!(eventually(WAIT, || receiver.received(|r| probe_trace(r).is_some_and(|(_, c)| c.len() == 3))).await);
    let (root, children) = receiver.received(probe_trace).expect("trace");
    let root_attrs = support::otlp::attributes(&root.attributes);
    assert_eq!(root_attrs.get("pullcheck.image.state").map(String::as_str), Some("available"));
    assert_eq!(root_attrs.get("pullcheck.workloads.count").map(String::as_str), Some("1"));
    assert_eq!(attr(&root_attrs, "oci.manifest.digest"), Some(private_digest.as_str()));
    assert_eq!(attr(&root_attrs, "container.image.name"), Some(format!("{token_registry}/private/app").as_str()));
    assert_eq!(attr(&root_attrs, "container.image.tags"), Some("v1"));
    assert_eq!(attr(&root_attrs, "server.address"), token_registry.rsplit_once(':').map(|(host, _)| host));
    assert_eq!(root.status.as_ref().map(|s| s.code), Some(1), "status OK: {:?}", root.status);
    let calls: Vec<(String, String, i32)> = children
        .iter()
        .map(|s| {
            let a = support::otlp::attributes(&s.attributes);
            (
                a.get("http.request.method").cloned().unwrap_or_default(),
                a.get("http.response.status_code").cloned().unwrap_or_default(),
                s.kind,
            )
        })
        .collect();
    let client = 3; // SpanKind::Client
    assert_eq!(
        calls,
        vec![
            ("HEAD".into(), "401".into(), client),
            ("GET".into(), "200".into(), client),
            ("HEAD".into(), "200".into(), client)
        ],
        "HEAD 401, token fetch, HEAD"
    );
    // Semantic conventions to the letter: ints where they are ints, the host and port apart,
    // and nothing of the tracing bridge's bookkeeping (code.*, thread.*, target, busy/idle).
    let (token_host, token_port) = token_registry.rsplit_once(':').expect("host:port");
    for span in children.iter().chain([&root]) {
        let value = |key: &str| span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone());
        let int = |key: &str| match value(key).and_then(|v| v.value) {
            Some(any_value::Value::IntValue(i)) => Some(i),
            _ => None,
        };
        // The probe and its registry requests name the registry; the token fetch its issuer.
        let url = support::otlp::value_string(&value("url.full"));
        let (host, port) = match reqwest::Url::parse(&url) {
            Ok(u) => (u.host_str().unwrap_or_default().to_string(), u.port().map(|p| p.to_string())),
            Err(_) => (token_host.to_string(), Some(token_port.to_string())),
        };
        assert_eq!(int("server.port").map(|p| p.to_string()), port, "{}", span.name);
        assert_eq!(support::otlp::value_string(&value("server.address")), host, "{}", span.name);
        if span.parent_span_id.is_empty() {
            continue;
        }
        assert!(int("http.response.status_code").is_some(), "status code is an int: {:?}", span.attributes);
        let internals: Vec<&str> = span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .filter(|k| {
                k.starts_with("code.") || k.starts_with("thread.") || ["target", "busy_ns", "idle_ns"].contains(k)
            })
            .collect();
        assert!(internals.is_empty(), "bridge internals exported: {internals:?}");
    }
    let child_attrs: Vec<_> = children.iter().map(|s| support::otlp::attributes(&s.attributes)).collect();
    let manifest_url = format!("https://{token_registry}/v2/private/app/manifests/v1");
    for head in [&child_attrs[0], &child_attrs[2]] {
        assert_eq!(attr(head, "url.full"), Some(manifest_url.as_str()));
        assert_eq!(attr(head, "server.address"), Some(token_host));
    }
    let token_url = attr(&child_attrs[1], "url.full").unwrap_or_default();
    assert!(token_url.starts_with(&format!("{}?", env.issuer.realm())), "{token_url}");
    let query: BTreeMap<String, String> = reqwest::Url::parse(token_url)
        .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    assert_eq!(query.get("scope").map(String::as_str), Some("repository:private/app:pull"), "{token_url}");
    assert_eq!(query.get("service").map(String::as_str), Some(support::token::SERVICE), "{token_url}");
    assert_eq!(attr(&child_attrs[1], "server.address"), issuer.rsplit_once(':').map(|(host, _)| host));
    let all_span_text = receiver.received(|r| format!("{:?}", spans(r)));
    assert!(!all_span_text.contains(support::PASSWORD) && !all_span_text.contains("dGVzdDpzZWNyZXQ"));

    // Each image's first result is logged as a change from pending.
    let first = |r: &Received| transition(r, "team/sidecar:v2", "available", "pending");
    assert!(eventually(WAIT, || receiver.received(|r| first(r).is_some())).await, "{:?}", receiver.received(logs));
    let first = receiver.received(first).expect("log");
    assert_eq!(attr(&first, "pullcheck.image.state"), Some("available"));
    assert_eq!(attr(&first, "pullcheck.image.previous_state"), Some("pending"));
    assert_eq!(attr(&first, "oci.manifest.digest"), Some(sidecar_digest.as_str()));

    // A tag deleted by a cleanup policy: the series moves to absent, and a log says so.
    env.pusher.delete("team/sidecar", &sidecar_digest).await;
    let moved = |r: &support::otlp::Received| {
        state_of(&latest_points(r, "pullcheck.image.status"), "sidecar").as_deref() == Some("absent")
            && point_for(&available(r), "sidecar").is_some_and(|(_, v)| *v == 0.0)
    };
    assert!(eventually(WAIT, || receiver.received(moved)).await, "{}", run.stderr());
    let transition = |r: &support::otlp::Received| {
        logs(r).into_iter().find(|(body, a)| {
            body.contains("team/sidecar:v2 is now absent (was available)")
                && a.get("pullcheck.image.state").map(String::as_str) == Some("absent")
        })
    };
    assert!(eventually(WAIT, || receiver.received(|r| transition(r).is_some())).await, "{:?}", receiver.received(logs));
    let (_, log_attrs) = receiver.received(transition).expect("log");
    assert_eq!(log_attrs.get("pullcheck.workloads").map(String::as_str), Some("Deployment shop/web (sidecar)"));
    assert_eq!(attr(&log_attrs, "pullcheck.image.previous_state"), Some("available"));
    assert_eq!(attr(&log_attrs, "error.type"), Some("absent"));
    assert_eq!(attr(&log_attrs, "oci.manifest.digest"), None, "nothing to pull, no digest");
    assert!(run.stderr().contains("is now absent (was available)"), "stderr has the transition too");

    // A workload deleted: its series are gone.
    api.delete("Pod", "shop", "debug");
    let gone = |r: &support::otlp::Received| {
        let points = available(r);
        points.len() == 3 && !points.iter().any(|(a, _)| a.contains_key("k8s.pod.name"))
    };
    assert!(eventually(WAIT, || receiver.received(gone)).await, "{:?}", receiver.received(available));

    // That telemetry is flushed at shutdown is shown where no periodic export can stand in for
    // it: telemetry_waiting_for_its_interval_is_flushed_at_shutdown.
    assert_eq!(run.terminate().await, Some(0), "a clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_waiting_for_its_interval_is_flushed_at_shutdown() {
    flushed_at_shutdown(Receiver::http().await, "http/protobuf").await;
}

/// Over gRPC the exporters' channel is a task on pullcheck's one-thread runtime: the last
/// export must still find it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_waiting_for_its_interval_is_flushed_at_shutdown_over_grpc() {
    flushed_at_shutdown(Receiver::grpc().await, "grpc").await;
}

async fn flushed_at_shutdown(receiver: Receiver, protocol: &str) {
    let (env, api) = one_deployment().await;
    let an_hour = "3600000".to_string();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", an_hour.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", an_hour.clone()),
        ("OTEL_BLRP_SCHEDULE_DELAY", an_hour),
    ];
    let run = start(&env, &api, &otel, &[]);
    assert!(
        eventually(WAIT, || run.stderr().contains("team/app:v1 is now available (was pending)")).await,
        "{}",
        run.stderr()
    );
    let nothing_yet = receiver.received(|r| (r.metrics.len(), r.traces.len(), r.logs.len()));
    assert_eq!(nothing_yet, (0, 0, 0), "no export is due within the hour");
    assert_eq!(run.terminate().await, Some(0), "a clean exit on SIGTERM");
    let available = receiver.received(|r| latest_points(r, "pullcheck.image.available"));
    assert_eq!(available.iter().map(|(a, v)| (series(a), *v)).collect::<Vec<_>>(), [("shop/web/main".into(), 1.0)]);
    let image = format!("{}/team/app", env.anon.addr);
    let probe = |r: &Received| spans(r).into_iter().find(|s| s.name == format!("probe {image}"));
    let probe = receiver.received(probe).expect("the probe's span, flushed");
    let probe_attrs = support::otlp::attributes(&probe.attributes);
    assert_eq!(attr(&probe_attrs, "pullcheck.image.state"), Some("available"));
    let log = receiver.received(|r| transition(r, "team/app:v1", "available", "pending")).expect("the log, flushed");
    assert_eq!(attr(&log, "pullcheck.image.previous_state"), Some("pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_and_delta_temporality() {
    let (env, api) = one_deployment().await;
    let receiver = Receiver::grpc().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_string()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "dd-api-key=not-a-real-key".to_string()),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta".to_string()),
    ];
    let run = start(&env, &api, &otel, &["--log-format", "json"]);
    let probes_delta = |r: &support::otlp::Received| {
        metrics(r).into_iter().any(|(_, m)| {
            m.name == "pullcheck.probes"
                && matches!(&m.data, Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) if s.aggregation_temporality == 1)
        })
    };
    assert!(eventually(WAIT, || receiver.received(probes_delta)).await, "delta sums over gRPC: {}", run.stderr());
    // Deltas add up to the probes made: at least the first one, all available.
    let probed = |r: &Received| {
        let deltas = every_point(r, "pullcheck.probes");
        let all_available = deltas.iter().all(|(a, _)| attr(a, "pullcheck.image.state") == Some("available"));
        (all_available, deltas.iter().map(|(_, n)| n).sum::<f64>())
    };
    assert!(eventually(WAIT, || receiver.received(probed).1 >= 1.0).await, "{:?}", receiver.received(probed));
    assert!(receiver.received(probed).0, "nothing failed");
    let available_now = |r: &Received| by(&latest_points(r, "pullcheck.image.available"), &["k8s.deployment.name"]);
    let available = BTreeMap::from([("web".to_string(), 1.0)]);
    assert!(
        eventually(WAIT, || receiver.received(available_now) == available).await,
        "{:?}",
        receiver.received(available_now)
    );
    assert!(
        receiver
            .received(|r| r.headers.iter().any(|h| h.iter().any(|(k, v)| k == "dd-api-key" && v == "not-a-real-key")))
    );
    let image = format!("{}/team/app", env.anon.addr);
    let probe = |r: &Received| spans(r).into_iter().find(|s| s.name == format!("probe {image}"));
    assert!(eventually(WAIT, || receiver.received(|r| probe(r).is_some())).await, "traces over gRPC");
    let probe_attrs = receiver.received(|r| probe(r).map(|s| support::otlp::attributes(&s.attributes)));
    assert_eq!(probe_attrs.as_ref().and_then(|a| attr(a, "pullcheck.image.state")), Some("available"));
    let stderr = run.stderr();
    let first_json = stderr.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(first_json).is_ok(), "JSON log lines: {stderr}");
    assert_eq!(run.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_stop_probing() {
    let (env, api) = one_deployment().await;
    let nobody = RefusedPort::bind();
    let run = start(&env, &api, &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", nobody.addr))], &[]);
    assert!(
        eventually(WAIT, || run.stderr().contains("team/app:v1 is now available (was pending)")).await,
        "{}",
        run.stderr()
    );
    assert_eq!(http_get(&run.health().await, "/readyz").await, Some(200));
    assert_eq!(run.terminate().await, Some(0), "shutdown does not hang on the dead collector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_pull_secret_is_picked_up() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(support::pull_secret("team-a", "regcred", &env.basic.addr, support::USER, "expired-password"));
    let mut private = workload("Deployment", "team-a", "api", &format!("{}/private/app:v1", env.basic.addr));
    private["spec"]["template"]["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    api.apply(private);
    let receiver = Receiver::http().await;
    let run =
        start(&env, &api, &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone())], &["--secret-ttl", "500ms"]);
    let state = |r: &support::otlp::Received| {
        point_for(&latest_points(r, "pullcheck.image.status"), "main")
            .and_then(|(a, _)| a.get("pullcheck.image.state").cloned())
    };
    let available = |r: &Received| point_for(&latest_points(r, "pullcheck.image.available"), "main").map(|(_, v)| *v);
    assert!(
        eventually(WAIT, || receiver.received(state).as_deref() == Some("authentication_failure")).await,
        "{:?}\n{}",
        receiver.received(state),
        run.stderr()
    );
    assert_eq!(receiver.received(available), Some(0.0), "cannot be pulled with the expired password");
    api.apply(support::pull_secret("team-a", "regcred", &env.basic.addr, support::USER, support::PASSWORD));
    assert!(eventually(WAIT, || receiver.received(state).as_deref() == Some("available")).await, "{}", run.stderr());
    assert_eq!(receiver.received(available), Some(1.0));
    // The new credential makes a new image key (image + credential): its first result is a
    // change from pending, next to the old key's failure.
    let failed = |r: &Received| transition(r, "private/app:v1", "authentication_failure", "pending");
    assert!(eventually(WAIT, || receiver.received(|r| failed(r).is_some())).await, "{:?}", receiver.received(logs));
    let failed = receiver.received(failed).expect("the expired password's log");
    assert_eq!(attr(&failed, "pullcheck.image.state"), Some("authentication_failure"));
    assert_eq!(attr(&failed, "pullcheck.image.previous_state"), Some("pending"));
    assert_eq!(attr(&failed, "error.type"), Some("authentication_failure"));
    let rotated = |r: &Received| transition(r, "private/app:v1", "available", "pending");
    assert!(eventually(WAIT, || receiver.received(|r| rotated(r).is_some())).await, "{:?}", receiver.received(logs));
    let log = receiver.received(rotated).expect("log");
    assert_eq!(attr(&log, "pullcheck.image.state"), Some("available"));
    assert_eq!(attr(&log, "pullcheck.image.previous_state"), Some("pending"));
    assert_eq!(attr(&log, "pullcheck.workloads"), Some("Deployment team-a/api (main)"));
    assert_eq!(run.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_the_collector_ca_from_otel_exporter_otlp_certificate() {
    let (env, api) = one_deployment().await;
    let cert = std::fs::read(&env.pki.server_cert).expect("cert");
    let key = std::fs::read(&env.pki.server_key).expect("key");
    let receiver = Receiver::grpc_tls(&cert, &key).await;
    assert!(receiver.endpoint.starts_with("https://"));
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", env.pki.ca_cert.display().to_string()),
    ];
    let run = start(&env, &api, &otel, &[]);
    let arrived =
        |r: &support::otlp::Received| latest_points(r, "pullcheck.image.available").iter().any(|(_, v)| *v == 1.0);
    assert!(eventually(WAIT, || receiver.received(arrived)).await, "metrics over TLS: {}", run.stderr());
    assert_eq!(run.terminate().await, Some(0));
}

/// A CLIENT span that ends without a response carries `error.type` and, as the semantic
/// conventions require, status Error with a short description: backends' error views see it.
/// Every request is timed on `http.client.request.duration` with the conventions' attributes
/// and bucket boundaries, answered or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_spans_and_request_durations_follow_the_semantic_conventions() {
    let (env, api) = one_deployment().await;
    let nobody = RefusedPort::bind();
    api.apply(workload("Deployment", "shop", "gone", &format!("{}/team/app:v1", nobody.addr)));
    let receiver = Receiver::http().await;
    let run = start(&env, &api, &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone())], &[]);
    let refused_request = |r: &Received| {
        spans(r).into_iter().find(|s| {
            s.kind == 3 // SpanKind::Client
                && support::otlp::attributes(&s.attributes).get("error.type").map(String::as_str)
                    == Some("connection_failed")
        })
    };
    assert!(eventually(WAIT, || receiver.received(|r| refused_request(r).is_some())).await, "{}", run.stderr());
    let span = receiver.received(refused_request).expect("the refused request's span");
    let status = span.status.expect("a status");
    assert_eq!(status.code, 2, "status Error: {status:?}");
    assert!(status.message.contains("connection failed"), "a short description: {status:?}");
    assert!(
        !support::otlp::attributes(&span.attributes).contains_key("http.response.status_code"),
        "no response, no status code"
    );

    let durations = |r: &Received| {
        metrics(r).into_iter().rev().find(|(_, m)| m.name == "http.client.request.duration").map(|(_, m)| m)
    };
    let both = |r: &Received| {
        let points = latest_histogram(r, "http.client.request.duration");
        let has = |key: &str, value: &str| points.iter().any(|(a, _, _)| a.get(key).map(String::as_str) == Some(value));
        has("error.type", "connection_failed") && has("http.response.status_code", "200")
    };
    assert!(eventually(WAIT, || receiver.received(both)).await, "{:?}", receiver.received(durations));
    let metric = receiver.received(durations).expect("http.client.request.duration");
    assert_eq!(metric.unit, "s");
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(histogram)) = metric.data else {
        panic!("a histogram: {metric:?}")
    };
    let (anon_host, anon_port) = env.anon.addr.rsplit_once(':').expect("host:port");
    for point in &histogram.data_points {
        assert_eq!(
            point.explicit_bounds,
            [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
            "the semantic conventions' boundaries"
        );
        let int = |key: &str| {
            point.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
        };
        assert!(matches!(int("server.port"), Some(any_value::Value::IntValue(_))), "server.port is an int");
        let attributes = support::otlp::attributes(&point.attributes);
        assert!(["GET", "HEAD"].contains(&attributes["http.request.method"].as_str()), "{attributes:?}");
        assert!(!attributes.keys().any(|k| k.contains("authorization") || k == "url.full"), "{attributes:?}");
        match attributes.get("http.response.status_code") {
            Some(status) => {
                assert_eq!(status, "200", "{attributes:?}");
                assert_eq!(
                    (attributes["server.address"].as_str(), attributes["server.port"].as_str()),
                    (anon_host, anon_port)
                );
                assert!(!attributes.contains_key("error.type"), "a 200 has no error.type");
            }
            // The refused port; or the HTTPS attempt at the plain-HTTP registry before it fell back.
            None => assert!(
                matches!(attributes.get("error.type").map(String::as_str), Some("connection_failed" | "tls_failure")),
                "{attributes:?}"
            ),
        }
    }
}

/// Docker Hub's `ratelimit-*` headers (added by a proxy in front of the real registry) reach the
/// budget gauges, by registry and credential name; the alert reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrys_announced_pull_budget_reaches_the_gauges() {
    use support::proxy::{Fault, FaultProxy};
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    proxy.set(Fault::Headers(vec![
        ("ratelimit-limit".into(), "100;w=21600".into()),
        ("ratelimit-remaining".into(), "9;w=21600".into()),
    ]));
    let api = ApiServer::start().await;
    let image = format!("{}/team/app:v1", proxy.addr());
    api.apply(workload("Deployment", "shop", "web", &image));
    // The same image with a pull secret: a budget of its own, named namespace/name.
    api.apply(support::pull_secret("team-b", "hub", &proxy.addr(), support::USER, support::PASSWORD));
    api.apply(support::with_pull_secrets(workload("Deployment", "team-b", "web", &image), &["hub"]));
    let receiver = Receiver::http().await;
    let config = env.registry_config("", &format!("  {}:\n    plainHttp: true\n", proxy.addr()));
    let log = env.dir.path().join("budget.log");
    let args = ["--registry-config", config.to_str().expect("utf-8"), "--window", "4s", "--tick", "200ms"];
    let (_child, _home) =
        support::process::spawn_run(&api.kubeconfig(env.dir.path()), &args, Some(&receiver.endpoint), &[], &log);
    let budget = |r: &Received| {
        let remaining = latest_points(r, "pullcheck.registry.rate_limit.remaining");
        let limit = latest_points(r, "pullcheck.registry.rate_limit.limit");
        (remaining, limit)
    };
    assert!(
        eventually(WAIT, || receiver.received(|r| budget(r).0.len() == 2 && budget(r).1.len() == 2)).await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (mut remaining, mut limit) = receiver.received(budget);
    remaining.sort_by(|a, b| a.0.cmp(&b.0));
    limit.sort_by(|a, b| a.0.cmp(&b.0));
    let (host, port) = proxy.addr().rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).expect("host:port");
    let series = |credential: &str| {
        BTreeMap::from([
            ("pullcheck.credential.source".to_string(), credential.to_string()),
            ("server.address".to_string(), host.clone()),
            ("server.port".to_string(), port.clone()),
        ])
    };
    let (anonymous, secret) = (series("anonymous"), series("pull secret team-b/hub"));
    assert_eq!(remaining, vec![(anonymous.clone(), 9.0), (secret.clone(), 9.0)]);
    assert_eq!(limit, vec![(anonymous, 100.0), (secret, 100.0)]);
}
