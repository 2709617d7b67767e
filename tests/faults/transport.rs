//! Transport faults and credential hygiene (docs/reliability.md, "Transport and credentials"):
//! TLS that cannot be trusted, an IPv6-only and an HTTP/2-only registry, connections reset,
//! stalled or trickling, bodies longer than announced, endless or gzip-bombed, redirects — and
//! where `Authorization` goes on a redirect, to a mirror and to a token realm, and that a
//! link-local (cloud metadata) destination is refused before any connection.
//!
//! Every test runs the real binary (`pullcheck check -f … -o json --log trace`) against Debian's
//! docker-registry, behind the fault proxy where the fault needs one, and scans everything the
//! binary wrote for every credential the suite hands it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::figures::{self, Measured, Row};
use super::support::proxy::{Fault, FaultProxy};
use super::support::registry::{Auth, Pusher, Registry};
use super::support::tls::Pki;
use super::support::{self, Env, NO_PULL_PASSWORD, NO_PULL_USER, PASSWORD, USER};

/// A registry token the suite configures (docker config `registrytoken`): sent up front as
/// `Authorization: Bearer`, so every request to its host carries it.
const REGISTRY_TOKEN: &str = "transport-suite-registry-token-6f1d0c";

/// Every credential the suite uses, with `extra` ones (an issued token's signed header).
fn secrets(extra: &[String]) -> Vec<(Option<&str>, &str)> {
    let mut all = vec![(Some(USER), PASSWORD), (Some(NO_PULL_USER), NO_PULL_PASSWORD), (None, REGISTRY_TOKEN)];
    all.extend(extra.iter().map(|s| (None, s.as_str())));
    all
}

/// One anonymous plain-HTTP registry (docker-registry on loopback) holding `team/app:v1`.
struct Anon {
    dir: tempfile::TempDir,
    registry: Registry,
    digest: String,
}

impl Anon {
    async fn start() -> Anon {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(addr: &str) -> Anon {
        // The suite's reqwest clients (pusher, proxy) are built without a provider of their own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let registry = Registry::start_on(dir.path(), "anon", &storage, None, Auth::None, addr).await;
        let (digest, _) = Pusher::new(format!("http://{}", registry.addr)).image("team/app", "v1", "amd64").await;
        Anon { dir, registry, digest }
    }

    fn url(&self) -> String {
        format!("http://{}", self.registry.addr)
    }
}

/// A file in `dir` holding `text`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{}-{name}", support::rand_suffix()));
    std::fs::write(&path, text).expect("write test file");
    path
}

/// A registry config: `hosts` are `(host, its settings as YAML flow mapping entries)`.
fn registry_config(dir: &Path, hosts: &[(&str, String)]) -> PathBuf {
    let mut text = String::from("registries:\n");
    for (host, settings) in hosts {
        text.push_str(&format!("  '{host}': {{{settings}}}\n"));
    }
    write(dir, "registries.yaml", &text)
}

/// A docker config giving `host` the suite's registry token.
fn token_docker_config(dir: &Path, host: &str) -> PathBuf {
    let json = serde_json::json!({"auths": {host: {"registrytoken": REGISTRY_TOKEN}}});
    write(dir, "docker-config.json", &json.to_string())
}

/// `pullcheck check` of one Pod using `image`, as the suite runs it: JSON, every log line at
/// trace, `config` as the registry config, `extra` flags.
async fn check(dir: &Path, image: &str, config: Option<&Path>, extra: &[&str]) -> Measured {
    let pod = format!(
        "kind: Pod\nmetadata: {{name: app, namespace: default}}\nspec: {{containers: [{{name: app, image: \"{image}\"}}]}}\n"
    );
    let manifest = write(dir, "pod.yaml", &pod);
    let (mut command, home) = support::process::pullcheck();
    command.arg("check").arg("-f").arg(&manifest).args(["-o", "json", "--log", "trace", "--no-progress"]);
    if let Some(config) = config {
        command.arg("--registry-config").arg(config);
    }
    command.args(extra);
    let run = figures::measure(command).await;
    drop(home);
    run
}

/// What a run gave for `image` — state, error, digest — after the checks every fault shares:
/// no panic, no credential anywhere in its output, a report (exit 0 or 1).
fn outcome(what: &str, run: &Measured, image: &str, extra_secrets: &[String]) -> (String, String, Option<String>) {
    figures::assert_no_panic(what, run);
    let everything = format!("{}\n{}", run.stdout(), run.stderr());
    figures::assert_no_leak(what, &everything, &secrets(extra_secrets));
    assert!(matches!(run.output.status.code(), Some(0 | 1)), "{what}: exit {:?}\n{}", run.output.status, run.stderr());
    let report = run.json();
    let entry: &Value = report["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["image"] == image))
        .unwrap_or_else(|| panic!("{what}: {image} in {report}"));
    let text = |key: &str| entry[key].as_str().map(str::to_string);
    (text("state").unwrap_or_default(), text("error").unwrap_or_default(), text("digest"))
}

/// Records the fault's row: the state and the first words of the error.
fn record(group: &'static str, fault: &str, expected: &str, state: &str, error: &str, run: &Measured) {
    let mut got = state.to_string();
    if !error.is_empty() {
        let mut cut = error.len().min(220);
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        got = format!("{state}: {}{}", &error[..cut], if cut < error.len() { "…" } else { "" });
    }
    figures::record(Row {
        group,
        fault: fault.into(),
        expected: expected.into(),
        got,
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

// --- A loopback host without TLS: the plain-HTTP attempt's failure is the answer -------------

/// A loopback registry on a port of its own, unconfigured, is asked over HTTPS first; the fault
/// proxy speaks plain HTTP (it answers the TLS handshake with a 400), so pullcheck falls back.
async fn behind_plain_http_proxy(fault_for: impl FnOnce(&FaultProxy) -> Fault) -> (Anon, FaultProxy, String) {
    let anon = Anon::start().await;
    let proxy = FaultProxy::start(anon.url()).await;
    proxy.set(fault_for(&proxy));
    let image = format!("{}/team/app:v1", proxy.addr());
    (anon, proxy, image)
}

#[tokio::test]
async fn loopback_without_tls_reset_is_reported_as_a_reset() {
    let (anon, proxy, image) = behind_plain_http_proxy(|_| Fault::Reset).await;
    let run = check(anon.dir.path(), &image, None, &["--retries", "0"]).await;
    let (state, error, _) = outcome("reset", &run, &image, &[]);
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("connection reset"), "names the reset: {error}");
    assert!(!error.contains("corrupt message"), "not the TLS attempt's failure: {error}");
    assert_eq!(proxy.seen().len(), 1, "the plain-HTTP request reached the proxy once: {:?}", proxy.seen());
    record(
        "transport",
        "loopback host without TLS (unconfigured): plain-HTTP connection reset",
        "registry_unavailable, naming the reset (not the TLS attempt)",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn loopback_without_tls_stall_times_out() {
    let (anon, _proxy, image) = behind_plain_http_proxy(|_| Fault::Stall).await;
    let run = check(anon.dir.path(), &image, None, &["--retries", "0", "--request-timeout", "2s"]).await;
    let (state, error, _) = outcome("stall", &run, &image, &[]);
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("timed out") && !error.contains("corrupt message"), "{error}");
    record(
        "transport",
        "loopback host without TLS (unconfigured): plain HTTP never answers (--request-timeout 2s)",
        "registry_unavailable: timed out",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn loopback_without_tls_redirect_loop_is_too_many_redirects() {
    let (anon, proxy, image) = behind_plain_http_proxy(|p| Fault::Redirect(format!("http://{}", p.addr()))).await;
    let run = check(anon.dir.path(), &image, None, &["--retries", "0"]).await;
    let (state, error, _) = outcome("redirect loop", &run, &image, &[]);
    assert_eq!(state, "unknown_error", "{error}");
    assert!(error.contains("too many redirects"), "{error}");
    // The first request and ten redirects followed (containerd's limit), then no more.
    assert_eq!(proxy.seen().len(), 11, "{:?}", proxy.seen());
    record(
        "transport",
        "loopback host without TLS (unconfigured): 307 to itself, forever",
        "unknown_error: too many redirects (after 10, containerd's limit)",
        &state,
        &error,
        &run,
    );
}

// --- TLS ----------------------------------------------------------------------------------

/// A TLS registry serving `cert`, trusted through the test CA, and what pullcheck made of it.
async fn tls_fault(what: &str, leaf: impl FnOnce(&Pki) -> (PathBuf, PathBuf)) -> (Measured, String, String) {
    let anon = Anon::start().await;
    let pki = Pki::create(anon.dir.path());
    let (cert, key) = leaf(&pki);
    let storage = anon.dir.path().join("storage");
    let tls = Registry::start(anon.dir.path(), "tls", &storage, Some((&cert, &key)), Auth::None).await;
    let config = registry_config(anon.dir.path(), &[(&tls.addr, format!("caFile: {}", pki.ca_cert.display()))]);
    let image = format!("{}/team/app:v1", tls.addr);
    let run = check(anon.dir.path(), &image, Some(&config), &["--retries", "0"]).await;
    let (state, error, _) = outcome(what, &run, &image, &[]);
    assert!(tls.served().is_empty(), "{what}: no request got through the handshake: {:?}", tls.served());
    (run, state, error)
}

#[tokio::test]
async fn certificate_for_another_name() {
    let (run, state, error) = tls_fault("wrong name", |pki| pki.leaf("wrong-name", "DNS:wrong.example")).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("certificate not valid for name"), "{error}");
    record(
        "transport",
        "TLS certificate for another name (wrong.example, trusted CA)",
        "registry_unavailable: certificate not valid for name",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn expired_certificate() {
    let (run, state, error) = tls_fault("expired", Pki::expired_leaf).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("certificate expired"), "{error}");
    record(
        "transport",
        "TLS certificate expired (January 2020, trusted CA)",
        "registry_unavailable: certificate expired",
        &state,
        &error,
        &run,
    );
}

// --- Where the registry listens, and what it speaks ----------------------------------------

#[tokio::test]
async fn registry_on_ipv6_loopback_only() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this machine has no IPv6 loopback (::1 cannot be bound); no row recorded");
        return;
    }
    let anon = Anon::start_on("[::1]:0").await;
    assert!(anon.registry.addr.starts_with("[::1]:"), "{}", anon.registry.addr);
    let image = format!("{}/team/app:v1", anon.registry.addr);
    let mark = anon.registry.served().len();
    let run = check(anon.dir.path(), &image, None, &[]).await;
    let (state, error, digest) = outcome("ipv6", &run, &image, &[]);
    assert_eq!((state.as_str(), digest.as_deref()), ("available", Some(anon.digest.as_str())), "{error}");
    let served = anon.registry.served_since(mark, 1).await;
    assert!(served.iter().any(|s| s.line() == "HEAD /v2/team/app/manifests/v1 200"), "{served:?}");
    record(
        "transport",
        "registry listening on [::1] only (unconfigured loopback: HTTPS, then plain HTTP)",
        "available",
        &state,
        &error,
        &run,
    );
}

/// A registry that speaks HTTP/2 only: TLS offering ALPN `h2` alone (a client without it is
/// turned away), then h2 — no HTTP/1.1 — each request forwarded to a plain registry.
struct H2Only {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Only {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Only {
    async fn start(pki: &Pki, upstream: String) -> H2Only {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = pki.server_der();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.into()], key)
            .expect("server certificate");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, http, upstream, counter) =
                    (acceptor.clone(), http.clone(), upstream.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return;
                    }
                    let Ok(mut connection) = h2::server::handshake(tls).await else { return };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(forward_h2(request, respond, http.clone(), upstream.clone()));
                    }
                });
            }
        });
        H2Only { addr, requests, task }
    }
}

async fn forward_h2(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    http: reqwest::Client,
    upstream: String,
) {
    let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let mut forward = http.request(request.method().clone(), format!("{upstream}{target}"));
    for (name, value) in request.headers() {
        forward = forward.header(name, value);
    }
    let (status, headers, body) = match forward.send().await {
        Ok(response) => {
            let (status, headers) = (response.status(), response.headers().clone());
            (status, headers, response.bytes().await.unwrap_or_default())
        }
        Err(_) => (http::StatusCode::BAD_GATEWAY, http::HeaderMap::new(), bytes::Bytes::new()),
    };
    let mut answer = http::Response::builder().status(status);
    for (name, value) in &headers {
        // Connection-specific headers do not exist in HTTP/2.
        if !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding") {
            answer = answer.header(name, value);
        }
    }
    let Ok(answer) = answer.body(()) else { return };
    if let Ok(mut stream) = respond.send_response(answer, body.is_empty()) {
        if !body.is_empty() {
            let _ = stream.send_data(body, true);
        }
    }
}

#[tokio::test]
async fn registry_speaking_http2_only() {
    let anon = Anon::start().await;
    let pki = Pki::create(anon.dir.path());
    let h2 = H2Only::start(&pki, anon.url()).await;
    let host = h2.addr.to_string();
    let docker_config = token_docker_config(anon.dir.path(), &host);
    let settings = format!("caFile: {}, dockerConfig: {}", pki.ca_cert.display(), docker_config.display());
    let config = registry_config(anon.dir.path(), &[(&host, settings)]);
    let image = format!("{host}/team/app:v1");
    let run = check(anon.dir.path(), &image, Some(&config), &[]).await;
    let (state, error, digest) = outcome("h2", &run, &image, &[]);
    assert_eq!((state.as_str(), digest.as_deref()), ("available", Some(anon.digest.as_str())), "{error}");
    assert!(h2.requests.load(Ordering::SeqCst) >= 1, "answered over HTTP/2");
    record(
        "transport",
        "registry speaking HTTP/2 only (TLS, ALPN h2 alone), a registry token sent over it",
        "available (h2 negotiated by ALPN)",
        &state,
        &error,
        &run,
    );
}

// --- Connections and bodies that go wrong --------------------------------------------------

/// The anonymous registry behind a fault proxy the registry config says is plain HTTP (no
/// HTTPS attempt first), and what `pullcheck` made of `fault` with `extra` flags.
async fn proxied(
    what: &str,
    fault: Fault,
    extra: &[&str],
) -> (Anon, FaultProxy, Measured, (String, String, Option<String>)) {
    let anon = Anon::start().await;
    let proxy = FaultProxy::start(anon.url()).await;
    proxy.set(fault);
    let config = registry_config(anon.dir.path(), &[(&proxy.addr(), "plainHttp: true".into())]);
    let image = format!("{}/team/app:v1", proxy.addr());
    let run = check(anon.dir.path(), &image, Some(&config), extra).await;
    let answer = outcome(what, &run, &image, &[]);
    (anon, proxy, run, answer)
}

#[tokio::test]
async fn reset_before_the_headers() {
    let (_anon, proxy, run, (state, error, _)) = proxied("reset before headers", Fault::Reset, &[]).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("connection reset"), "{error}");
    assert_eq!(proxy.seen().len(), 3, "retried twice (--retries 2): {:?}", proxy.seen());
    record(
        "transport",
        "connection reset before the headers",
        "registry_unavailable: connection reset (retried)",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn reset_after_the_headers() {
    let (_anon, proxy, run, (state, error, _)) =
        proxied("reset after headers", Fault::ResetAfterHeaders, &["--retries", "0"]).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("connection reset"), "{error}");
    let methods: Vec<String> = proxy.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET"], "HEAD refused, the GET's body cut by a reset");
    record(
        "transport",
        "connection reset after the headers (half the manifest sent)",
        "registry_unavailable: connection reset",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn stall_in_the_middle_of_the_body() {
    let (_anon, _proxy, run, (state, error, _)) =
        proxied("stall mid-body", Fault::StallMidBody, &["--retries", "0", "--request-timeout", "2s"]).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("timed out"), "{error}");
    record(
        "transport",
        "stall in the middle of the body (half the manifest, then nothing; --request-timeout 2s)",
        "registry_unavailable: timed out",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn slow_trickle() {
    let fault = Fault::Drip(Duration::from_millis(200));
    let (_anon, _proxy, run, (state, error, _)) =
        proxied("drip", fault, &["--retries", "0", "--request-timeout", "2s"]).await;
    assert_eq!(state, "registry_unavailable", "{error}");
    assert!(error.contains("timed out"), "{error}");
    record(
        "transport",
        "slow trickle: one byte every 200 ms (--request-timeout 2s covers the body)",
        "registry_unavailable: timed out",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn body_longer_than_announced() {
    let (anon, _proxy, run, (state, error, digest)) = proxied("overlong", Fault::Overlong(1 << 20), &[]).await;
    assert_eq!((state.as_str(), digest.as_deref()), ("available", Some(anon.digest.as_str())), "{error}");
    record(
        "transport",
        "body 1 MiB longer than its Content-Length",
        "available: read as announced, the rest never read",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn endless_body() {
    let (_anon, _proxy, run, (state, error, _)) = proxied("endless", Fault::Endless, &["--retries", "0"]).await;
    assert_eq!(state, "unknown_error", "{error}");
    assert!(error.contains("larger than 4194304 bytes"), "{error}");
    record(
        "transport",
        "endless body (no Content-Length, never ends)",
        "unknown_error: body larger than 4 MiB, reading stopped there",
        &state,
        &error,
        &run,
    );
}

/// 1 GiB of zeros as 1024 gzip members of 1 MiB each: about 1 MiB on the wire.
pub(super) fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; 1 << 20]).expect("compress");
    let member = member.finish().expect("compress");
    member.repeat(1024)
}

#[tokio::test]
async fn gzip_bomb_as_a_manifest() {
    let bomb = gzip_bomb();
    let wire = bomb.len();
    let (_anon, _proxy, run, (state, error, _)) = proxied("gzip bomb", Fault::Gzip(bomb), &["--retries", "0"]).await;
    assert_eq!(state, "unknown_error", "{error}");
    assert!(error.contains("not JSON"), "read as sent, never inflated: {error}");
    // Inflated, the body alone would be 1 GiB.
    assert!(run.peak_rss_kib < 256 << 10, "peak {} KiB", run.peak_rss_kib);
    record(
        "transport",
        &format!("gzip bomb: Content-Encoding gzip on a manifest, {} KiB inflating to 1 GiB", wire >> 10),
        "unknown_error: not JSON (pullcheck asks for no encoding and inflates none)",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn temporary_redirect_to_another_host() {
    let anon = Anon::start().await;
    let other = FaultProxy::start_on("127.0.0.2:0", anon.url()).await;
    let redirecting = FaultProxy::start(anon.url()).await;
    redirecting.set(Fault::Redirect(format!("http://{}", other.addr())));
    let config = registry_config(anon.dir.path(), &[(&redirecting.addr(), "plainHttp: true".into())]);
    let image = format!("{}/team/app:v1", redirecting.addr());
    let run = check(anon.dir.path(), &image, Some(&config), &[]).await;
    let (state, error, digest) = outcome("307", &run, &image, &[]);
    assert_eq!((state.as_str(), digest.as_deref()), ("available", Some(anon.digest.as_str())), "{error}");
    assert!(!other.seen().is_empty(), "followed to the other host");
    record("transport", "307 to another host", "available (followed)", &state, &error, &run);
}

// --- Where credentials go -------------------------------------------------------------------

/// A registry whose requests carry the suite's registry token, redirecting every request to
/// `target` (a proxy in front of the same registry): the token must not follow.
async fn token_through_redirect(fault: &str, target_bind: &str) {
    let anon = Anon::start().await;
    let other = FaultProxy::start_on(target_bind, anon.url()).await;
    let redirecting = FaultProxy::start(anon.url()).await;
    redirecting.set(Fault::Redirect(format!("http://{}", other.addr())));
    let docker_config = token_docker_config(anon.dir.path(), &redirecting.addr());
    let settings = format!("plainHttp: true, dockerConfig: {}", docker_config.display());
    let config = registry_config(anon.dir.path(), &[(&redirecting.addr(), settings)]);
    let image = format!("{}/team/app:v1", redirecting.addr());
    let run = check(anon.dir.path(), &image, Some(&config), &[]).await;
    let (state, error, digest) = outcome(fault, &run, &image, &[]);
    assert_eq!((state.as_str(), digest.as_deref()), ("available", Some(anon.digest.as_str())), "{error}");
    let (given, followed) = (redirecting.seen(), other.seen());
    assert!(!given.is_empty() && given.iter().all(|s| s.authorization), "the registry gets it: {given:?}");
    assert!(!followed.is_empty() && followed.iter().all(|s| !s.authorization), "{followed:?}");
    record(
        "credentials",
        fault,
        "available; the target saw no Authorization",
        &state,
        &format!(
            "{} of {} requests at the target carried Authorization",
            followed.iter().filter(|s| s.authorization).count(),
            followed.len()
        ),
        &run,
    );
}

#[tokio::test]
async fn authorization_does_not_follow_a_redirect_to_another_host() {
    token_through_redirect("307 to another host (127.0.0.2) with a registry token", "127.0.0.2:0").await;
}

#[tokio::test]
async fn authorization_does_not_follow_a_redirect_to_another_port() {
    token_through_redirect("307 to another port of the same address with a registry token", "127.0.0.1:0").await;
}

#[tokio::test]
async fn a_mirror_never_gets_the_registrys_credential() {
    let anon = Anon::start().await;
    let registry = FaultProxy::start(anon.url()).await;
    let mirror = FaultProxy::start(anon.url()).await;
    mirror.set(Fault::Status { status: 404, retry_after: None });
    let docker_config = token_docker_config(anon.dir.path(), &registry.addr());
    let config = registry_config(
        anon.dir.path(),
        &[
            (
                &registry.addr(),
                format!("plainHttp: true, dockerConfig: {}, mirrors: ['{}']", docker_config.display(), mirror.addr()),
            ),
            (&mirror.addr(), "plainHttp: true".into()),
        ],
    );
    let image = format!("{}/team/app:v1", registry.addr());
    let run = check(anon.dir.path(), &image, Some(&config), &[]).await;
    let (state, error, _) = outcome("mirror", &run, &image, &[]);
    assert_eq!(state, "available", "{error}");
    let asked = mirror.seen();
    assert!(!asked.is_empty() && asked.iter().all(|s| !s.authorization), "mirror asked first, bare: {asked:?}");
    assert!(registry.seen().iter().all(|s| s.authorization), "the registry gets its own: {:?}", registry.seen());
    record(
        "credentials",
        "mirror (404) before a registry with a registry token",
        "available from the registry; the mirror saw no Authorization",
        &state,
        &format!("mirror: {} requests, none with Authorization", asked.len()),
        &run,
    );
}

/// The signed header of every token the issuer gives (its first, constant segment): found in
/// any output, some issued token leaked.
async fn issued_token_header(env: &Env) -> String {
    let token = env.issuer_token("private/app").await;
    token.split('.').next().expect("a JWT").to_string()
}

#[tokio::test]
async fn basic_credentials_go_to_the_token_realm_on_another_host_as_containerd_sends_them() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let settings = format!("caFile: {}, auth: {{username: {USER}, password: {PASSWORD}}}", env.pki.ca_cert.display());
    let config = registry_config(env.dir.path(), &[(&env.token.addr, settings)]);
    let image = format!("{}/private/app:v1", env.token.addr);
    let before = env.issuer.requests();
    let run = check(env.dir.path(), &image, Some(&config), &[]).await;
    let header = issued_token_header(&env).await;
    let (state, error, _) = outcome("realm", &run, &image, &[header]);
    // private/ is pulled only with a token the issuer gives to alice: the credentials reached it.
    assert_eq!(state, "available", "{error}");
    assert!(env.issuer.requests() > before, "the realm was asked");
    record(
        "credentials",
        "token realm on another host:port (Basic credentials, private repository)",
        "available: the realm got the credentials, as containerd sends them; no token in any output",
        &state,
        &error,
        &run,
    );
}

#[tokio::test]
async fn a_token_realm_redirecting_elsewhere_gets_the_credentials_but_its_target_does_not() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let realm_target = FaultProxy::start_on("127.0.0.2:0", env.issuer.server.url()).await;
    let realm = FaultProxy::start(env.issuer.server.url()).await;
    realm.set(Fault::Redirect(format!("http://{}", realm_target.addr())));
    let storage = env.dir.path().join("storage");
    let auth = Auth::Token {
        realm: format!("http://{}/token", realm.addr()),
        service: super::support::token::SERVICE.into(),
        issuer: super::support::token::ISSUER.into(),
        root_cert: env.pki.signer_cert.clone(),
    };
    let registry = Registry::start(env.dir.path(), "realm-redirect", &storage, None, auth).await;
    let settings = format!("plainHttp: true, auth: {{username: {USER}, password: {PASSWORD}}}");
    let config = registry_config(env.dir.path(), &[(&registry.addr, settings)]);
    let image = format!("{}/private/app:v1", registry.addr);
    let run = check(env.dir.path(), &image, Some(&config), &[]).await;
    let header = issued_token_header(&env).await;
    let (state, error, _) = outcome("realm redirect", &run, &image, &[header]);
    // The target issued an anonymous token, without pull on private/.
    assert_eq!(state, "authorization_failure", "{error}");
    let (asked, followed) = (realm.seen(), realm_target.seen());
    assert!(asked.iter().any(|s| s.authorization), "the realm named by the registry got them: {asked:?}");
    assert!(!followed.is_empty() && followed.iter().all(|s| !s.authorization), "{followed:?}");
    record(
        "credentials",
        "token realm answering 307 to another host",
        "authorization_failure: the target saw no Authorization, so issued no pull",
        &state,
        &error,
        &run,
    );
}

/// Everything here must refuse before connecting: run these where 169.254.0.0/16 has no route
/// at all (`unshare -rn`), never against code that might connect.
async fn link_local(
    fault: &str,
    make: impl FnOnce(&FaultProxy) -> Fault,
    image_of: impl FnOnce(&FaultProxy) -> String,
) {
    let anon = Anon::start().await;
    let proxy = FaultProxy::start(anon.url()).await;
    proxy.set(make(&proxy));
    let settings = format!("plainHttp: true, auth: {{username: {USER}, password: {PASSWORD}}}");
    let config = registry_config(anon.dir.path(), &[(&proxy.addr(), settings)]);
    let image = image_of(&proxy);
    let run = check(anon.dir.path(), &image, Some(&config), &["--retries", "0", "--request-timeout", "30s"]).await;
    let (state, error, _) = outcome(fault, &run, &image, &[]);
    assert_eq!(state, "unknown_error", "{error}");
    assert!(error.contains("refused to connect to") && error.contains("link-local"), "{error}");
    assert!(proxy.seen().len() <= 1, "nothing retried: {:?}", proxy.seen());
    // Refused, not failed: a connection attempt would have waited out the 5 s connect timeout
    // or failed with a network error, which the error would name instead.
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    record("credentials", fault, "unknown_error: refused before connecting", &state, &error, &run);
}

#[tokio::test]
async fn a_token_realm_on_a_metadata_address_is_refused() {
    link_local(
        "token realm http://169.254.169.254/token (Basic credentials configured)",
        |_| Fault::Challenge(r#"Bearer realm="http://169.254.169.254/token",service="metadata""#.into()),
        |p| format!("{}/team/app:v1", p.addr()),
    )
    .await;
}

#[tokio::test]
async fn a_redirect_to_a_metadata_address_is_refused() {
    link_local(
        "307 to http://169.254.169.254",
        |_| Fault::Redirect("http://169.254.169.254".into()),
        |p| format!("{}/team/app:v1", p.addr()),
    )
    .await;
}

#[tokio::test]
async fn a_registry_on_the_ipv6_metadata_address_is_refused() {
    link_local(
        "image on [fd00:ec2::254] (AWS's IPv6 metadata address)",
        |_| Fault::None,
        |_| "[fd00:ec2::254]/latest/meta-data:v1".into(),
    )
    .await;
}

#[tokio::test]
async fn a_registry_on_a_link_local_address_is_refused_unless_configured() {
    link_local(
        "image on 169.254.169.254:80 (unconfigured)",
        |_| Fault::None,
        |_| "169.254.169.254:80/latest/meta-data:v1".into(),
    )
    .await;
}
