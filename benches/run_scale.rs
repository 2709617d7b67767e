//! `pullcheck run` at scale: 20,000 image keys (20,000 workloads through the API-server harness,
//! each its own tag in the local registry), a short window, OTLP over HTTP to the in-process
//! receiver. Reports time to full window coverage, probes per second, CPU time per probe,
//! resident memory, and OTLP bytes exported per series per interval.
//!
//! `cargo bench --bench run_scale` (env BENCH_KEYS, BENCH_WINDOW_SECS).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::apiserver::ApiServer;
use support::otlp::{Receiver, latest_points};
use support::process::{cpu_seconds, status_kib};
use support::{Env, workload};

fn total(receiver: &Receiver, name: &str) -> f64 {
    receiver.received(|r| latest_points(r, name).iter().map(|(_, v)| v).sum())
}

fn main() {
    let keys: usize = std::env::var("BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let window: u64 = std::env::var("BENCH_WINDOW_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let env = Env::start().await;
        let (_, _) = env.pusher.image("bench/app", "seed", "amd64").await;
        let manifest = reqwest::Client::new()
            .get(format!("http://{}/v2/bench/app/manifests/seed", env.anon.addr))
            .header("accept", support::registry::OCI_MANIFEST)
            .send()
            .await
            .expect("get");
        let body = manifest.bytes().await.expect("body").to_vec();
        let pusher = &env.pusher;
        futures_util::stream::iter(0..keys)
            .map(|i| {
                let body = body.clone();
                async move { pusher.manifest("bench/app", &format!("t{i}"), support::registry::OCI_MANIFEST, &body).await }
            })
            .buffer_unordered(16)
            .count()
            .await;
        let api = ApiServer::start().await;
        for i in 0..keys {
            api.apply(workload("Deployment", &format!("ns-{}", i % 100), &format!("app-{i}"), &format!("{}/bench/app:t{i}", env.anon.addr)));
        }
        let receiver = Receiver::http().await;
        let kubeconfig = api.kubeconfig(env.dir.path());
        let export_interval_ms = 5_000u64;
        let started = Instant::now();
        let (mut command, _home) = support::process::pullcheck_async();
        let mut child = command
            .args(["run", "--kubeconfig", &kubeconfig.display().to_string(), "--window", &format!("{window}s"), "--tick", "1s"])
            .args(["--failure-retry", "10m", "--health-addr", "off"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", export_interval_ms.to_string())
            .env("OTEL_TRACES_SAMPLER", "traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0.01")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pullcheck run");
        let pid = child.id().expect("pid");
        // First window: every key is new, so all are probed as fast as the per-registry budget allows.
        let mut covered_at = None;
        while started.elapsed() < Duration::from_secs(window * 3) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let probed_once = receiver.received(|r| {
                let by_state = latest_points(r, "pullcheck.images");
                let tracked: f64 = by_state.iter().map(|(_, v)| v).sum();
                let pending: f64 = by_state.iter().filter(|(a, _)| a.get("pullcheck.image.state").map(String::as_str) == Some("pending")).map(|(_, v)| v).sum();
                tracked as usize == keys && pending == 0.0
            });
            if covered_at.is_none() && probed_once {
                covered_at = Some(started.elapsed());
                break;
            }
        }
        // Then one steady window, from when the next one begins (coverage falls back).
        let coverage_now = || receiver.received(|r| latest_points(r, "pullcheck.schedule.window.coverage").first().map_or(1.0, |(_, v)| *v));
        while coverage_now() >= 0.5 && started.elapsed() < Duration::from_secs(window * 4) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let first_probes = total(&receiver, "pullcheck.probes");
        let first_cpu = cpu_seconds(pid);
        let steady_start = Instant::now();
        tokio::time::sleep(Duration::from_secs(window)).await;
        let steady_probes = total(&receiver, "pullcheck.probes") - first_probes;
        let steady_cpu = cpu_seconds(pid) - first_cpu;
        let steady_secs = steady_start.elapsed().as_secs_f64();
        let coverage = coverage_now();
        let rss = status_kib(pid, "VmRSS:");
        let (exports, bytes) = receiver.received(|r| {
            let metrics: Vec<usize> = r.http_bytes.iter().filter(|(p, _)| p == "/v1/metrics").map(|(_, b)| *b).collect();
            (metrics.len(), metrics.iter().sum::<usize>())
        });
        let states: Vec<String> = receiver.received(|r| {
            latest_points(r, "pullcheck.images")
                .iter()
                .map(|(a, v)| format!("{} {v}", a.get("pullcheck.image.state").cloned().unwrap_or_default()))
                .collect()
        });
        let _ = child.kill().await;
        let series = keys * 2;
        println!("pullcheck run, {keys} image keys, window {window}s, tick 1s, OTLP/HTTP every {}s:", export_interval_ms / 1000);
        match covered_at {
            Some(t) => println!("  first full coverage after       {:>8.1} s ({:.0} probes/s)", t.as_secs_f64(), keys as f64 / t.as_secs_f64()),
            None => println!("  first full coverage             not reached in {}s", window * 3),
        }
        println!("  steady window: probes           {steady_probes:>8.0} in {steady_secs:.0}s ({:.0} probes/s)", steady_probes / steady_secs);
        println!("  window coverage at its end      {:>8.3}", coverage);
        println!("  CPU time per probe (steady)     {:>8.1} µs", steady_cpu / steady_probes.max(1.0) * 1e6);
        println!("  CPU time per probe (first)      {:>8.1} µs", first_cpu / first_probes.max(1.0) * 1e6);
        println!("  resident memory                 {:>8} KiB", rss);
        println!("  image keys by state             {}", states.join(", "));
        println!(
            "  OTLP metric bytes per series per interval {:>6.1} B ({exports} exports, {series} per-container series)",
            bytes as f64 / exports.max(1) as f64 / series as f64
        );
    });
}
