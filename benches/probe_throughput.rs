//! Probe throughput against a local docker-registry, side by side in one run:
//! pullcheck's probes vs a raw loop of HEAD requests at the same concurrency (the physical
//! limit here), and HTTP requests per probe in steady state for pullcheck and for oci-client,
//! anonymous and with token auth, counted where they arrive: pullcheck's in the registry's
//! access log (and the token issuer's count), oci-client's by a pass-through proxy.
//!
//! The CPU this process spends per request or probe (user + sys; the registry is another
//! process) is measured around each round: for the raw loop, for pullcheck's probes with no
//! subscriber, and for pullcheck's probes with every span recorded as `run` records them (the
//! tracing-opentelemetry bridge into the SDK's batch processor, its exporter discarding the
//! batches: encoding and sending are the SDK's and the collector's, not the probe path's).
//!
//! `cargo bench --bench probe_throughput` (env BENCH_PROBES, BENCH_CONCURRENCY, BENCH_ROUNDS).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pullcheck::config::RegistryConfig;
use pullcheck::credentials::Credential;
use pullcheck::image::ImageRef;
use pullcheck::registry::{ClientSettings, RegistryClient, State};
use support::Env;
use support::proxy::FaultProxy;
use support::registry::Registry;

const TAGS: usize = 50;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn references(registry: &str, probes: usize) -> Vec<ImageRef> {
    (0..probes).map(|i| ImageRef::parse(&format!("{registry}/bench/app:t{}", i % TAGS)).expect("valid")).collect()
}

async fn raw_heads(registry: &str, probes: usize, concurrency: usize) -> Duration {
    let http = reqwest::Client::new();
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    let started = Instant::now();
    let ok = futures_util::stream::iter(0..probes)
        .map(|i| {
            let request = http
                .head(format!("http://{registry}/v2/bench/app/manifests/t{}", i % TAGS))
                .header("accept", accept)
                .send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, probes, "every raw HEAD succeeds");
    started.elapsed()
}

async fn pullcheck_probes(
    client: &RegistryClient,
    refs: &[ImageRef],
    cred: Option<&Credential>,
    concurrency: usize,
) -> Duration {
    let started = Instant::now();
    let available = futures_util::stream::iter(refs)
        .map(|r| client.probe(r, cred))
        .buffer_unordered(concurrency)
        .filter(|r| std::future::ready(r.state == State::Available))
        .count()
        .await;
    assert_eq!(available, refs.len(), "every probe is available");
    started.elapsed()
}

/// `work`'s result, and the CPU seconds this process spent meanwhile (every thread).
async fn on_cpu<T>(work: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = support::process::cpu_seconds(std::process::id());
    let out = work.await;
    (out, support::process::cpu_seconds(std::process::id()) - before)
}

/// An exporter that drops what it is given: what the probe path pays for its spans, without
/// the encoding and sending a real exporter adds on the SDK's own thread.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        std::future::ready(Ok(()))
    }
}

/// Spans recorded as `run` records them (its layer and filter), into a batch processor whose
/// queue holds a whole round: none dropped, so none goes uncounted.
fn spans_recorded() -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let config = opentelemetry_sdk::trace::BatchConfigBuilder::default().with_max_queue_size(1 << 18).build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(Discard).with_batch_config(config).build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_span_processor(processor).build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("pullcheck"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("pullcheck", tracing::Level::INFO));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).expect("one subscriber");
    provider
}

async fn oci_client_requests(registry: &str, probes: usize, auth: oci_client::secrets::RegistryAuth) -> f64 {
    let proxy = FaultProxy::start(format!("http://{registry}")).await;
    let config =
        oci_client::client::ClientConfig { protocol: oci_client::client::ClientProtocol::Http, ..Default::default() };
    let client = oci_client::Client::new(config);
    for i in 0..probes {
        let reference: oci_client::Reference =
            format!("{}/bench/app:t{}", proxy.addr(), i % TAGS).parse().expect("valid");
        client.fetch_manifest_digest(&reference, &auth).await.expect("oci-client probe");
    }
    proxy.seen().len() as f64 / probes as f64
}

/// Requests `registry` answered to pullcheck (by its User-Agent) so far: the raw loop's HEADs
/// land in the same log.
fn served_to_pullcheck(registry: &Registry) -> usize {
    registry.served().iter().filter(|s| s.user_agent.starts_with("pullcheck/")).count()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let probes = env_or("BENCH_PROBES", 4000);
        let concurrency = env_or("BENCH_CONCURRENCY", 16);
        let rounds = env_or("BENCH_ROUNDS", 5);
        let env = Env::start().await;
        for t in 0..TAGS {
            env.pusher.image("bench/app", &format!("t{t}"), "amd64").await;
        }
        let anon = env.anon.addr.clone();
        let settings = ClientSettings::default();
        let client = RegistryClient::new(Arc::new(RegistryConfig::default()), settings.clone());
        let refs = references(&anon, probes);
        // Warm both paths (connections, first requests) before measuring.
        raw_heads(&anon, concurrency * 4, concurrency).await;
        pullcheck_probes(&client, &refs[..concurrency * 4], None, concurrency).await;

        let (mut raw_rates, mut ours_rates) = (Vec::new(), Vec::new());
        let (mut raw_cpu, mut ours_cpu) = (Vec::new(), Vec::new());
        let measured_from = served_to_pullcheck(&env.anon);
        for _ in 0..rounds {
            let (raw, cpu) = on_cpu(raw_heads(&anon, probes, concurrency)).await;
            raw_rates.push(probes as f64 / raw.as_secs_f64());
            raw_cpu.push(cpu / probes as f64);
            let (ours, cpu) = on_cpu(pullcheck_probes(&client, &refs, None, concurrency)).await;
            ours_rates.push(probes as f64 / ours.as_secs_f64());
            ours_cpu.push(cpu / probes as f64);
        }
        let (raw, ours) = (median(raw_rates), median(ours_rates));
        let ours_anon_rpp = (served_to_pullcheck(&env.anon) - measured_from) as f64 / (probes * rounds) as f64;

        // The same probes with every span recorded and handed to the SDK, as in `run`.
        let tracer_provider = spans_recorded();
        pullcheck_probes(&client, &refs[..concurrency * 4], None, concurrency).await;
        let (mut traced_rates, mut traced_cpu) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (traced, cpu) = on_cpu(pullcheck_probes(&client, &refs, None, concurrency)).await;
            traced_rates.push(probes as f64 / traced.as_secs_f64());
            traced_cpu.push(cpu / probes as f64);
        }
        let traced = median(traced_rates);
        let _ = tracer_provider.shutdown();
        let micros = |per: Vec<f64>| median(per) * 1e6;
        let (raw_cpu, ours_cpu, traced_cpu) = (micros(raw_cpu), micros(ours_cpu), micros(traced_cpu));

        // Steady state with token auth: the realm and the token are known after the first probes.
        let config = env.registry_config("", "");
        let token_client = RegistryClient::new(Arc::new(RegistryConfig::load(&config).expect("config")), settings);
        let alice = Credential::basic(support::USER, support::PASSWORD);
        let token_refs = references(&env.token.addr, TAGS * 10);
        pullcheck_probes(&token_client, &token_refs[..TAGS], Some(&alice), concurrency).await;
        let before = served_to_pullcheck(&env.token) + env.issuer.requests();
        pullcheck_probes(&token_client, &token_refs, Some(&alice), concurrency).await;
        let sent = served_to_pullcheck(&env.token) + env.issuer.requests() - before;
        let ours_token_rpp = sent as f64 / token_refs.len() as f64;

        let oci_anon_rpp = oci_client_requests(&anon, 200, oci_client::secrets::RegistryAuth::Anonymous).await;

        println!("probe throughput, {probes} probes x {rounds} rounds at concurrency {concurrency} (median round):");
        println!("  raw HEAD loop          {raw:>9.0} req/s");
        println!("  pullcheck probes       {ours:>9.0} probes/s");
        println!("  ratio pullcheck/raw    {:>9.3}   (goal >= 0.9)", ours / raw);
        println!("  pullcheck, spans on    {traced:>9.0} probes/s   ratio to raw {:.3}", traced / raw);
        println!("CPU of this process per request or probe (user+sys, median round):");
        println!("  raw HEAD loop          {raw_cpu:>9.1} us");
        println!("  pullcheck probes       {ours_cpu:>9.1} us");
        println!("  pullcheck, spans on    {traced_cpu:>9.1} us");
        println!("HTTP requests per probe, steady state:");
        println!("  pullcheck anonymous    {ours_anon_rpp:>9.3}");
        println!("  pullcheck token auth   {ours_token_rpp:>9.3}   (goal <= 1.02)");
        println!("  oci-client anonymous   {oci_anon_rpp:>9.3}   (fetch_manifest_digest, one client, 200 probes)");
    });
}
