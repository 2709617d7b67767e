//! Where a slow request spent its time, from the exported spans alone: a registry whose TLS
//! handshake is slow, one whose backend is slow, one reached by a name that needs a lookup, and
//! one whose name lookup is slow. Each delay must show in its own phase and not in the others
//! (docs/telemetry.md, "Where a slow request spent its time"). `pullcheck run` against the
//! API-server harness and real registries, or (for the slow lookup, which needs a resolver that
//! takes a known time) the registry client in this process with pullcheck's own telemetry; the
//! spans are read at the OTLP receiver either way.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::apiserver::ApiServer;
use support::otlp::{Received, Receiver, spans};
use support::proxy::{Fault, FaultProxy};
use support::{Env, eventually, workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(40);
/// The injected delay: far above what a loopback lookup, connect or handshake takes.
const DELAY: Duration = Duration::from_millis(1500);

/// A TCP relay to `upstream` that holds back the server's first bytes — its TLS ServerHello —
/// for [`DELAY`]: the handshake is slow, nothing else is.
async fn slow_handshake_relay(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay address").to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let upload = tokio::io::copy(&mut client_read, &mut server_write);
                let download = async {
                    let mut first = vec![0u8; 16 << 10];
                    let n = server_read.read(&mut first).await?;
                    tokio::time::sleep(DELAY).await;
                    client_write.write_all(&first[..n]).await?;
                    tokio::io::copy(&mut server_read, &mut client_write).await
                };
                let _ = tokio::join!(upload, download);
            });
        }
    });
    addr
}

/// A float attribute of a span, in seconds.
fn seconds(span: &Span, key: &str) -> Option<f64> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.clone()?.value?;
    match value {
        any_value::Value::DoubleValue(d) => Some(d),
        _ => None,
    }
}

/// Every phase of a span, for the messages.
fn phases(span: &Span) -> BTreeMap<&'static str, Option<f64>> {
    PHASES.map(|k| (k, seconds(span, k))).into_iter().collect()
}

const PHASES: [&str; 5] = [
    "pullcheck.dns.duration",
    "pullcheck.http.connect.duration",
    "pullcheck.tcp.connect.duration",
    "pullcheck.tls.handshake.duration",
    "pullcheck.http.response.wait",
];

fn text(span: &Span, key: &str) -> Option<String> {
    support::otlp::attributes(&span.attributes).get(key).cloned()
}

/// The CLIENT spans of requests to `port` that got an answer (a 401 challenge too: on a
/// token-protected registry, it is the one on the new connection).
fn answered(received: &Received, port: &str) -> Vec<Span> {
    spans(received)
        .into_iter()
        .filter(|s| s.kind == 3 && text(s, "server.port").as_deref() == Some(port))
        .filter(|s| text(s, "http.response.status_code").is_some())
        .collect()
}

fn port_of(addr: &str) -> String {
    addr.rsplit_once(':').map(|(_, p)| p.to_string()).expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_a_slow_backend_and_a_lookup_each_show_in_their_own_phase() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let tls_relay = slow_handshake_relay(env.basic.addr.clone()).await;
    let slow_backend = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    slow_backend.set(Fault::Delay(DELAY));
    let named = format!("localhost:{}", port_of(&env.anon.addr));
    let api = ApiServer::start().await;
    api.apply(support::pull_secret("shop", "regcred", &tls_relay, support::USER, support::PASSWORD));
    let tls_workload = workload("Deployment", "shop", "tls", &format!("{tls_relay}/team/app:v1"));
    api.apply(support::with_pull_secrets(tls_workload, &["regcred"]));
    api.apply(workload("Deployment", "shop", "backend", &format!("{}/team/app:v1", slow_backend.addr())));
    api.apply(workload("Deployment", "shop", "named", &format!("{named}/team/app:v1")));
    let extra = format!(
        "  {tls_relay}:\n    plainHttp: false\n    caFile: {}\n  {}:\n    plainHttp: true\n  {named}:\n    plainHttp: true\n",
        env.pki.ca_cert.display(),
        slow_backend.addr()
    );
    let config = env.registry_config("", &extra);
    let receiver = Receiver::http().await;
    let log = env.dir.path().join("phases.log");
    let args = ["--registry-config", config.to_str().expect("utf-8"), "--window", "4s", "--tick", "200ms"];
    let args = [&args[..], &["--request-timeout", "10s"]].concat();
    let (_run, _home) =
        support::process::spawn_run(&api.kubeconfig(env.dir.path()), &args, Some(&receiver.endpoint), &[], &log);
    let (tls_port, backend_port, named_port) = (port_of(&tls_relay), port_of(&slow_backend.addr()), port_of(&named));
    // Each host's first answered request on a new connection, and a later one on a reused one.
    let seen = |r: &Received| {
        [&tls_port, &backend_port, &named_port].map(|port| {
            let answered = answered(r, port);
            let fresh =
                answered.iter().find(|s| text(s, "pullcheck.http.connection.reused").as_deref() == Some("false"));
            let reused =
                answered.iter().find(|s| text(s, "pullcheck.http.connection.reused").as_deref() == Some("true"));
            (fresh.cloned(), reused.cloned())
        })
    };
    // The fault proxy serves one request per connection: only the others can be reused.
    let all_seen = |r: &Received| {
        let [tls, backend, named] = seen(r);
        tls.0.is_some() && tls.1.is_some() && backend.0.is_some() && named.0.is_some() && named.1.is_some()
    };
    assert!(
        eventually(WAIT, || receiver.received(all_seen)).await,
        "{:?}\n{}",
        receiver.received(seen).map(|(f, r)| (f.is_some(), r.is_some())),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let [(tls_fresh, tls_reused), (backend_fresh, _), (named_fresh, named_reused)] = receiver.received(seen);
    let (tls_fresh, tls_reused) = (tls_fresh.expect("tls"), tls_reused.expect("tls reused"));
    let (backend_fresh, named_fresh) = (backend_fresh.expect("backend"), named_fresh.expect("named"));
    let delay = DELAY.as_secs_f64();
    // The slow handshake is in the TLS phase: not in TCP, not in the wait for the registry.
    let connect = seconds(&tls_fresh, "pullcheck.http.connect.duration").expect("a new connection's connect phase");
    let tcp = seconds(&tls_fresh, "pullcheck.tcp.connect.duration").expect("its TCP connect");
    let tls = seconds(&tls_fresh, "pullcheck.tls.handshake.duration").expect("its handshake");
    let wait = seconds(&tls_fresh, "pullcheck.http.response.wait").expect("the wait for headers");
    assert!(tls >= delay && tcp < delay && wait < delay, "slow TLS handshake: {:?}", phases(&tls_fresh));
    assert!((connect - (tcp + tls)).abs() < 0.001, "connect is TCP then TLS: {:?}", phases(&tls_fresh));
    assert!(matches!(text(&tls_fresh, "tls.protocol.version").as_deref(), Some("1.2" | "1.3")), "{tls_fresh:?}");
    assert_eq!(seconds(&tls_fresh, "pullcheck.dns.duration"), None, "an address needs no lookup");
    // Once connected, the pool's connection is reused: no connect phase at all.
    let reused = phases(&tls_reused);
    assert!(
        reused.iter().filter(|(k, _)| **k != "pullcheck.http.response.wait").all(|(_, v)| v.is_none()),
        "{reused:?}"
    );

    // The slow backend is in the wait, not in the connection; plain HTTP has no handshake.
    let tcp = seconds(&backend_fresh, "pullcheck.tcp.connect.duration").expect("a new connection");
    let wait = seconds(&backend_fresh, "pullcheck.http.response.wait").expect("the wait");
    assert!(wait >= delay && tcp < delay, "slow backend: {:?}", phases(&backend_fresh));
    assert_eq!(seconds(&backend_fresh, "pullcheck.tls.handshake.duration"), None, "plain HTTP");
    assert_eq!(text(&backend_fresh, "network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(text(&backend_fresh, "tls.protocol.version"), None, "plain HTTP");

    // A name is looked up, and the lookup says what it gave; a reused connection looks nothing up.
    assert!(seconds(&named_fresh, "pullcheck.dns.duration").is_some(), "{:?}", phases(&named_fresh));
    let addresses = text(&named_fresh, "pullcheck.dns.addresses").unwrap_or_default();
    assert!(addresses.split(',').any(|a| a == "127.0.0.1"), "localhost's addresses: {addresses:?}");
    assert_eq!(seconds(&named_reused.expect("named reused"), "pullcheck.dns.duration"), None);
}

/// A resolver whose every lookup takes [`DELAY`], then answers loopback.
struct SlowLookup;

impl reqwest::dns::Resolve for SlowLookup {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            tokio::time::sleep(DELAY).await;
            let addresses: reqwest::dns::Addrs =
                Box::new(std::iter::once(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addresses)
        })
    }
}

#[test]
fn a_slow_lookup_shows_in_the_dns_phase_alone() {
    use tracing_subscriber::layer::SubscriberExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (env, receiver) = runtime.block_on(async {
        let env = Env::start().await;
        env.pusher.image("team/app", "v1", "amd64").await;
        (env, Receiver::http().await)
    });
    let named = format!("slow-lookup.test:{}", port_of(&env.anon.addr));
    let config = env.registry_config("", &format!("  {named}:\n    plainHttp: true\n"));
    let config = pullcheck::config::RegistryConfig::load(&config).expect("registry config");
    let vars = std::collections::HashMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ]);
    // pullcheck's own providers and exporters; `shutdown` below flushes them.
    let resource = pullcheck::telemetry::ResourceSettings::default();
    let telemetry = pullcheck::telemetry::Telemetry::init(&vars, &resource, runtime.handle()).expect("telemetry");
    let spans_layer = tracing_opentelemetry::layer().with_tracer(telemetry.tracer());
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans_layer));
    let settings = pullcheck::registry::ClientSettings {
        request_timeout: Duration::from_secs(10),
        resolver: Some(pullcheck::registry::NameResolver(std::sync::Arc::new(SlowLookup))),
        ..Default::default()
    };
    let client = pullcheck::registry::RegistryClient::new(std::sync::Arc::new(config), settings);
    let image = pullcheck::image::ImageRef::parse(&format!("{named}/team/app:v1")).expect("image");
    let probed = runtime.block_on(client.probe(&image, None));
    assert_eq!(probed.state, pullcheck::registry::State::Available, "{probed:?}");
    drop(guard);
    telemetry.shutdown();

    let port = port_of(&named);
    let fresh = runtime.block_on(async {
        let fresh = |r: &Received| {
            let answered = answered(r, &port);
            answered.into_iter().find(|s| text(s, "pullcheck.http.connection.reused").as_deref() == Some("false"))
        };
        let seen = eventually(WAIT, || receiver.received(|r| fresh(r).is_some())).await;
        let all =
            receiver.received(|r| spans(r).iter().map(|s| (s.name.clone(), s.attributes.len())).collect::<Vec<_>>());
        assert!(seen, "no span of the lookup's request: {all:?}");
        receiver.received(fresh).expect("seen")
    });
    let delay = DELAY.as_secs_f64();
    let dns = seconds(&fresh, "pullcheck.dns.duration").expect("a name is looked up");
    let tcp = seconds(&fresh, "pullcheck.tcp.connect.duration").expect("a new connection");
    let wait = seconds(&fresh, "pullcheck.http.response.wait").expect("the wait");
    assert!(dns >= delay && tcp < delay && wait < delay, "slow lookup: {:?}", phases(&fresh));
    assert_eq!(seconds(&fresh, "pullcheck.tls.handshake.duration"), None, "plain HTTP");
    assert_eq!(text(&fresh, "pullcheck.dns.addresses").as_deref(), Some("127.0.0.1"));
    assert_eq!(text(&fresh, "server.address").as_deref(), Some("slow-lookup.test"));
}
