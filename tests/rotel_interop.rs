//! Interop with a real OTLP collector: rotel (PyPI `rotel`) receives what `pullcheck run`
//! pushes over gRPC and over HTTP/protobuf, and forwards it to the in-process receiver — so what
//! arrives there is what rotel accepted and decoded.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::apiserver::ApiServer;
use support::otlp::{Receiver, latest_points, spans};
use support::{Env, eventually, workload};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(40);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

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
    env.pusher.image("team/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    api.apply(workload("Deployment", "shop", "web", &format!("{}/team/app:v1", env.anon.addr)));
    let receiver = Receiver::grpc().await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let rotel_log = env.dir.path().join("rotel.log");
    let _rotel = Command::new(rotel_agent())
        .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
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
    let (port, endpoint_protocol) = if protocol == "grpc" { (grpc_port, "grpc") } else { (http_port, "http/protobuf") };
    assert!(eventually(WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await, "rotel listens");

    let kubeconfig = api.kubeconfig(env.dir.path());
    let log = env.dir.path().join("pullcheck.log");
    let _pullcheck = Command::new(env!("CARGO_BIN_EXE_pullcheck"))
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
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", endpoint_protocol)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start pullcheck");
    let arrived = |r: &support::otlp::Received| {
        latest_points(r, "pullcheck.image.available")
            .iter()
            .any(|(a, v)| *v == 1.0 && a.get("k8s.deployment.name").map(String::as_str) == Some("web"))
            && spans(r).iter().any(|s| s.name.starts_with("probe "))
    };
    assert!(
        eventually(WAIT, || receiver.received(arrived)).await,
        "rotel forwarded pullcheck's metrics and traces ({protocol})\npullcheck: {}\nrotel: {}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(&rotel_log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_otlp_grpc() {
    through_rotel("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_otlp_http_protobuf() {
    through_rotel("http").await;
}
