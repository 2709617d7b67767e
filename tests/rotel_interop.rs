//! Interop with a real OTLP collector: rotel (PyPI `rotel`) receives what `pullcheck run`
//! pushes over gRPC and over HTTP/protobuf, and forwards it to the in-process receiver — so what
//! arrives there is what rotel accepted and decoded.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, attributes, latest_points, logs, spans};
use support::{Env, eventually, workload};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(40);

/// rotel binds its gRPC and HTTP receivers on port 0 (it cannot take port 0 for both on one
/// address), on two loopback addresses so that each is known by its address.
const GRPC_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const HTTP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The rotel-agent binary the PyPI package ships (scripts/test installs it).
fn rotel_agent() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "rotel is installed (pip install rotel): {path}"
    );
    path
}

async fn through_rotel(protocol: &str) {
    let env = Env::start().await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let receiver = Receiver::grpc().await;
    let rotel_log = env.dir.path().join("rotel.log");
    let rotel = Command::new(rotel_agent())
        .args(["start", "--otlp-grpc-endpoint", &format!("{GRPC_IP}:0")])
        .args(["--otlp-http-endpoint", &format!("{HTTP_IP}:0")])
        .arg("--pid-file")
        .arg(env.dir.path().join("rotel.pid"))
        .args([
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &receiver.endpoint,
            "--otlp-exporter-protocol",
            "grpc",
        ])
        .args(["--batch-timeout", "100ms", "--log-file"])
        .arg(&rotel_log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start rotel");
    let listening = support::process::await_listening(rotel.id().expect("rotel runs"), 2, WAIT).await;
    let (ip, endpoint_protocol) = if protocol == "grpc" { (GRPC_IP, "grpc") } else { (HTTP_IP, "http/protobuf") };
    let endpoint = listening.iter().find(|a| a.ip() == IpAddr::V4(ip)).expect("rotel's receiver");

    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("pullcheck.log");
    let (mut pullcheck, _home) = support::process::pullcheck_async();
    let _pullcheck = pullcheck
        .args([
            "run",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--window",
            "4s",
            "--tick",
            "200ms",
            "--health-addr",
            "off",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", endpoint_protocol)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start pullcheck");
    let image = format!("{}/team/app", env.anon.addr);
    let probe = |r: &Received| spans(r).into_iter().find(|s| s.name == format!("probe {image}"));
    let said = format!("{image}:v1 is now available (was pending)");
    let first_log = |r: &Received| logs(r).into_iter().find(|(body, _)| *body == said).map(|(_, a)| a);
    let arrived = |r: &Received| {
        latest_points(r, "pullcheck.image.available")
            .iter()
            .any(|(a, v)| *v == 1.0 && a.get("k8s.deployment.name").map(String::as_str) == Some("web"))
            && probe(r).is_some()
            && first_log(r).is_some()
    };
    assert!(
        eventually(WAIT, || receiver.received(arrived)).await,
        "rotel forwarded pullcheck's metrics, traces and logs ({protocol})\npullcheck: {}\nrotel: {}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(&rotel_log).unwrap_or_default()
    );

    // What rotel decoded and passed on carries pullcheck's values, not only its names.
    let get = |a: &BTreeMap<String, String>, key: &str| a.get(key).cloned();
    let status = receiver.received(|r| latest_points(r, "pullcheck.image.status"));
    let states: Vec<(Option<String>, f64)> =
        status.iter().map(|(a, v)| (get(a, "pullcheck.image.state"), *v)).collect();
    assert_eq!(states, [(Some("available".into()), 1.0)], "{status:?}");
    let images = receiver.received(|r| latest_points(r, "pullcheck.images"));
    let counted: Vec<(Option<String>, f64)> =
        images.iter().filter(|(_, n)| *n > 0.0).map(|(a, n)| (get(a, "pullcheck.image.state"), *n)).collect();
    assert_eq!(counted, [(Some("available".into()), 1.0)], "{images:?}");
    let span = receiver.received(probe).expect("probe span");
    let span_attrs = attributes(&span.attributes);
    assert_eq!(get(&span_attrs, "pullcheck.image.state").as_deref(), Some("available"));
    assert_eq!(get(&span_attrs, "oci.manifest.digest"), Some(digest.clone()));
    assert_eq!(get(&span_attrs, "pullcheck.workloads.count").as_deref(), Some("1"));
    let log_attrs = receiver.received(first_log).expect("state-change log");
    assert_eq!(get(&log_attrs, "pullcheck.image.state").as_deref(), Some("available"));
    assert_eq!(get(&log_attrs, "pullcheck.image.previous_state").as_deref(), Some("pending"));
    assert_eq!(get(&log_attrs, "oci.manifest.digest"), Some(digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_otlp_grpc() {
    through_rotel("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_otlp_http_protobuf() {
    through_rotel("http").await;
}
