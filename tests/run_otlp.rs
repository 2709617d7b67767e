//! `pullcheck run` end to end: the API-server harness, the real registries, and an in-process
//! OTLP receiver decoding what it pushes — metrics, one trace per probe, state-change logs.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::json;
use support::apiserver::ApiServer;
use support::otlp::{Receiver, latest_points, logs, metrics, spans};
use support::{Env, eventually, workload};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

struct Running {
    child: Child,
    log: std::path::PathBuf,
    health: String,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        tokio::time::timeout(WAIT, self.child.wait()).await.ok().and_then(|s| s.ok()).and_then(|s| s.code())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn start(env: &Env, api: &ApiServer, otel: &[(&str, String)], extra: &[&str]) -> Running {
    let kubeconfig = api.kubeconfig(env.dir.path());
    let registry_config = env.registry_config("", "");
    let health = format!("127.0.0.1:{}", free_port());
    let log = env.dir.path().join(format!("run-{}.log", free_port()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullcheck"));
    command
        .args(["run", "--kubeconfig", &kubeconfig.display().to_string(), "--registry-config"])
        .arg(&registry_config)
        .args(["--window", "4s", "--tick", "200ms", "--failure-retry", "500ms", "--health-addr", &health])
        .args(["--cluster-name", "test-cluster", "--request-timeout", "2s", "--retries", "0"])
        .args(extra)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true);
    for (k, v) in otel {
        command.env(k, v);
    }
    Running { child: command.spawn().expect("start pullcheck run"), log, health }
}

/// The registries with team/app:v1, and a cluster with one Deployment using it.
async fn one_deployment() -> (Env, ApiServer) {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    (env, api)
}

fn pull_secret(namespace: &str, registry: &str) -> serde_json::Value {
    pull_secret_with(namespace, registry, support::PASSWORD)
}

fn pull_secret_with(namespace: &str, registry: &str, password: &str) -> serde_json::Value {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", support::USER));
    let config = json!({"auths": {registry: {"auth": auth}}}).to_string();
    json!({"kind": "Secret", "type": "kubernetes.io/dockerconfigjson", "metadata": {"name": "regcred", "namespace": namespace},
           "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)}})
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_traces_and_logs_over_http_protobuf() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let (sidecar_digest, _) = env.pusher.image("team/sidecar", "v2", "amd64").await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let anon = env.anon.addr.clone();
    let mut web = workload("Deployment", "shop", "web", &format!("{anon}/team/app:v1"));
    web["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "sidecar", "image": format!("{anon}/team/sidecar:v2")}));
    api.apply(web);
    api.apply(workload("Pod", "shop", "debug", "Bad/Image:1"));
    api.apply(pull_secret("team-a", &env.token.addr));
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
    assert_eq!(http_get(&run.health, "/readyz").await, Some(200));
    assert_eq!(http_get(&run.health, "/healthz").await, Some(200));

    // Series, values and attributes.
    let points = receiver.received(available);
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
    let headers = receiver.received(|r| r.headers.clone());
    assert!(headers.iter().all(|h| h.iter().any(|(k, v)| k == "authorization" && v == "Basic dGVzdDpzZWNyZXQ=")));
    assert!(headers.iter().all(|h| h.iter().any(|(k, v)| k == "x-team" && v == "platform")));

    // One trace per probe: the root and one CLIENT span per HTTP request, the token fetch visible.
    let token_registry = env.token.addr.clone();
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
    assert!(root_attrs.get("oci.manifest.digest").is_some_and(|d| d.starts_with("sha256:")));
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
    let token_url = support::otlp::attributes(&children[1].attributes).get("url.full").cloned().unwrap_or_default();
    assert!(token_url.contains("/token?") && token_url.contains("scope=repository"), "{token_url}");
    let all_span_text = receiver.received(|r| format!("{:?}", spans(r)));
    assert!(!all_span_text.contains(support::PASSWORD) && !all_span_text.contains("dGVzdDpzZWNyZXQ"));

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
    assert!(run.stderr().contains("is now absent (was available)"), "stderr has the transition too");

    // A workload deleted: its series are gone.
    api.delete("Pod", "shop", "debug");
    let gone = |r: &support::otlp::Received| {
        let points = available(r);
        points.len() == 3 && !points.iter().any(|(a, _)| a.contains_key("k8s.pod.name"))
    };
    assert!(eventually(WAIT, || receiver.received(gone)).await, "{:?}", receiver.received(available));

    let exports_before = receiver.received(|r| r.metrics.len());
    assert_eq!(run.terminate().await, Some(0), "a clean exit on SIGTERM");
    assert!(receiver.received(|r| r.metrics.len()) > exports_before, "telemetry flushed at shutdown");
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
    assert!(
        eventually(WAIT, || receiver
            .received(|r| latest_points(r, "pullcheck.image.available").iter().any(|(_, v)| *v == 1.0)))
        .await
    );
    assert!(
        receiver
            .received(|r| r.headers.iter().any(|h| h.iter().any(|(k, v)| k == "dd-api-key" && v == "not-a-real-key")))
    );
    assert!(eventually(WAIT, || receiver.received(|r| !spans(r).is_empty())).await, "traces over gRPC");
    let stderr = run.stderr();
    let first_json = stderr.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(first_json).is_ok(), "JSON log lines: {stderr}");
    assert_eq!(run.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_stop_probing() {
    let (env, api) = one_deployment().await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let run = start(&env, &api, &[("OTEL_EXPORTER_OTLP_ENDPOINT", nobody)], &[]);
    assert!(
        eventually(WAIT, || run.stderr().contains("team/app:v1 is now available (was pending)")).await,
        "{}",
        run.stderr()
    );
    assert_eq!(http_get(&run.health, "/readyz").await, Some(200));
    assert_eq!(run.terminate().await, Some(0), "shutdown does not hang on the dead collector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_pull_secret_is_picked_up() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(pull_secret_with("team-a", &env.basic.addr, "expired-password"));
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
    assert!(
        eventually(WAIT, || receiver.received(state).as_deref() == Some("authentication_failure")).await,
        "{:?}\n{}",
        receiver.received(state),
        run.stderr()
    );
    api.apply(pull_secret("team-a", &env.basic.addr));
    assert!(eventually(WAIT, || receiver.received(state).as_deref() == Some("available")).await, "{}", run.stderr());
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
