//! Registry and token-service faults: Debian's docker-registry behind the fault proxy, probed by
//! the `pullcheck check` binary. Each fault first on a host of its own, then all of them on one
//! host in one run, where one repository's answer could bleed into another's: each image must
//! get there exactly the state it got alone (docs/states.md, "One repository's 429").

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::figures::{Row, assert_no_leak, assert_no_panic, measure, record};
use super::support::proxy::{Fault, FaultProxy};
use super::support::registry::{Auth, Pusher, Registry, sha256};
use super::support::tls::Pki;
use super::support::token::{self, Grant, TokenIssuer};
use super::support::{PASSWORD, USER, process, rand_suffix};

/// A plain-HTTP registry the images are pushed to, and a token-auth registry over the same
/// storage whose token realm is reached through a proxy of its own, so the token service can
/// misbehave too.
struct Registries {
    dir: tempfile::TempDir,
    anon: Registry,
    token: Registry,
    issuer: TokenIssuer,
    realm_proxy: FaultProxy,
    pusher: Pusher,
}

impl Registries {
    async fn start() -> Registries {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let pki = Pki::create(dir.path());
        let issuer =
            TokenIssuer::start(&pki.signer_key_pkcs8, &pki.signer_cert_der, &[(USER, PASSWORD, Grant::Pull)]).await;
        let realm_proxy = FaultProxy::start(issuer.server.url()).await;
        let anon = Registry::start(dir.path(), "anon", &storage, None, Auth::None).await;
        let token_auth = Auth::Token {
            realm: format!("http://{}/token", realm_proxy.addr()),
            service: token::SERVICE.into(),
            issuer: token::ISSUER.into(),
            root_cert: pki.signer_cert.clone(),
        };
        let token = Registry::start(dir.path(), "token", &storage, None, token_auth).await;
        let pusher = Pusher::new(format!("http://{}", anon.addr));
        Registries { dir, anon, token, issuer, realm_proxy, pusher }
    }

    /// A registry config: every host plain HTTP, and `alice`'s password for the token registry
    /// (so the suite has a credential to look for in everything pullcheck writes).
    fn config(&self, hosts: &[&str]) -> PathBuf {
        let mut text = String::from("registries:\n");
        for host in hosts {
            text.push_str(&format!(
                "  {host}:\n    plainHttp: true\n    auth: {{username: {USER}, password: {PASSWORD}}}\n"
            ));
        }
        let path = self.dir.path().join(format!("registries-{}.yaml", rand_suffix()));
        std::fs::write(&path, text).expect("write registry config");
        path
    }

    /// A token the issuer really grants for `repository`: what a faulty token service wraps.
    async fn real_token(&self, repository: &str) -> String {
        token::granted(&self.issuer.realm(), repository).await
    }
}

/// One Deployment with one container per image.
fn manifest(dir: &Path, images: &[String]) -> PathBuf {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let object = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "faults", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": containers}}}
    });
    let path = dir.join(format!("manifest-{}.json", rand_suffix()));
    std::fs::write(&path, object.to_string()).expect("write manifest");
    path
}

/// `pullcheck check` over `images` with `config`, at `--log trace`, with short timeouts so a
/// stalled answer costs seconds, not the default's ten. With the nodes' platform given, as
/// `run` always has it from the nodes: the manifest is read (GET), not only resolved (HEAD),
/// so content that does not match its digest shows.
async fn check(dir: &Path, images: &[String], config: &Path) -> super::figures::Measured {
    let (mut command, _home) = process::pullcheck();
    command
        .args(["check", "-o", "json", "--log", "trace", "--request-timeout", "2s", "--max-retry-wait", "5s"])
        .args(["--platform", "linux/amd64"])
        .arg("--registry-config")
        .arg(config)
        .arg("-f")
        .arg(manifest(dir, images));
    measure(command).await
}

/// The report's entry for `image`.
fn entry<'a>(report: &'a Value, image: &str) -> &'a Value {
    report["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["image"] == image))
        .unwrap_or_else(|| panic!("{image} not in {report}"))
}

/// A fault and what it must give: the state, and words the error must carry.
struct Case {
    fault: &'static str,
    repository: &'static str,
    inject: Fault,
    state: &'static str,
    error_has: &'static str,
    /// At most this many requests reach the proxy for it (retries are bounded).
    max_requests: usize,
}

fn case(
    fault: &'static str,
    repository: &'static str,
    inject: Fault,
    state: &'static str,
    error_has: &'static str,
    max_requests: usize,
) -> Case {
    Case { fault, repository, inject, state, error_has, max_requests }
}

fn status(status: u16, retry_after: Option<&str>) -> Fault {
    Fault::Status { status, retry_after: retry_after.map(str::to_string) }
}

/// The registry faults, each for a repository of its own.
fn registry_cases() -> Vec<Case> {
    vec![
        case("HTTP 500", "faults/e500", status(500, None), "registry_unavailable", "HTTP 500", 3),
        case("HTTP 502", "faults/e502", status(502, None), "registry_unavailable", "HTTP 502", 3),
        case("HTTP 503, no Retry-After", "faults/e503", status(503, None), "registry_unavailable", "HTTP 503", 3),
        case(
            "HTTP 503, Retry-After: 1",
            "faults/e503-retry-after",
            status(503, Some("1")),
            "registry_unavailable",
            "HTTP 503",
            3,
        ),
        case("HTTP 429, Retry-After: 3600", "faults/e429", status(429, Some("3600")), "rate_limited", "HTTP 429", 1),
        case("HTML with HTTP 200", "faults/html", Fault::Garbage, "unknown_error", "", 2),
        case(
            "a manifest served as text/html",
            "faults/content-type",
            Fault::Headers(vec![("Content-Type".into(), "text/html".into())]),
            "unsupported_manifest",
            "served as text/html",
            2,
        ),
        case(
            "content that does not match Docker-Content-Digest",
            "faults/digest",
            Fault::WrongDigest(sha256(b"another manifest")),
            "unsupported_manifest",
            "digest",
            2,
        ),
        case("Docker schema 1", "faults/schema1", Fault::Schema1, "unsupported_manifest", "schema 1", 2),
        case(
            "WWW-Authenticate that does not parse",
            "faults/challenge",
            Fault::Reply {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), "Bearer realm".into())],
                body: vec![],
            },
            "authentication_failure",
            "401",
            1,
        ),
    ]
}

/// Faults of the connection and the body (tests/faults/transport.rs has each on a host of its
/// own): on a shared host, beside the status faults, each must still give its own answer.
fn body_cases() -> Vec<Case> {
    vec![
        case(
            "connection reset after the headers",
            "faults/reset-after-headers",
            Fault::ResetAfterHeaders,
            "registry_unavailable",
            "connection reset",
            3,
        ),
        case(
            "a stall in the middle of the body",
            "faults/stall",
            Fault::StallMidBody,
            "registry_unavailable",
            "timed out",
            3,
        ),
        case(
            "a slow trickle (one byte every 200 ms)",
            "faults/trickle",
            Fault::Drip(Duration::from_millis(200)),
            "registry_unavailable",
            "timed out",
            3,
        ),
        case("a body 1 MiB longer than announced", "faults/overlong", Fault::Overlong(1 << 20), "available", "", 2),
        case("an endless body", "faults/endless", Fault::Endless, "unknown_error", "larger than", 1),
        case(
            "a gzip bomb (Content-Encoding: gzip)",
            "faults/gzip",
            Fault::Gzip(super::transport::gzip_bomb()),
            "unknown_error",
            "not JSON",
            1,
        ),
    ]
}

/// Pushes an image for every case.
async fn push_all(registries: &Registries, cases: &[Case]) {
    for case in cases {
        registries.pusher.image(case.repository, "v1", "amd64").await;
    }
}

fn secrets() -> Vec<(Option<&'static str>, &'static str)> {
    vec![(Some(USER), PASSWORD)]
}

/// What every fault's run must show whatever the fault: no panic, no credential anywhere.
fn assert_clean(what: &str, run: &super::figures::Measured) {
    assert_no_panic(what, run);
    assert_no_leak(what, &run.stdout(), &secrets());
    assert_no_leak(what, &run.stderr(), &secrets());
}

fn got(entry: &Value) -> String {
    match entry["error"].as_str() {
        Some(error) => format!("{}: {error}", entry["state"].as_str().unwrap_or("?")),
        None => entry["state"].as_str().unwrap_or("?").to_string(),
    }
}

#[tokio::test]
async fn registry_faults_each_on_a_host_of_its_own() {
    let registries = Registries::start().await;
    let cases = registry_cases();
    push_all(&registries, &cases).await;
    for case in &cases {
        let proxy = FaultProxy::start(format!("http://{}", registries.anon.addr)).await;
        proxy.set(case.inject.clone());
        let image = format!("{}/{}:v1", proxy.addr(), case.repository);
        let run =
            check(registries.dir.path(), std::slice::from_ref(&image), &registries.config(&[&proxy.addr()])).await;
        assert_clean(case.fault, &run);
        let report = run.json();
        let found = entry(&report, &image);
        assert_eq!(found["state"], case.state, "{}: {found}", case.fault);
        let error = found["error"].as_str().unwrap_or_default();
        assert!(error.contains(case.error_has), "{}: error {error:?} lacks {:?}", case.fault, case.error_has);
        let requests = proxy.seen().len();
        assert!(requests <= case.max_requests, "{}: {requests} requests, at most {}", case.fault, case.max_requests);
        record(Row {
            group: "registry",
            fault: case.fault.into(),
            expected: case.state.into(),
            got: format!("{} ({requests} requests)", got(found)),
            peak_rss_kib: run.peak_rss_kib,
            millis: run.elapsed.as_millis(),
        });
    }
}

#[tokio::test]
async fn a_503_then_200_is_available_after_one_retry() {
    let registries = Registries::start().await;
    registries.pusher.image("faults/flaky", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", registries.anon.addr)).await;
    proxy.set_for(status(503, None), 1);
    let image = format!("{}/faults/flaky:v1", proxy.addr());
    let run = check(registries.dir.path(), std::slice::from_ref(&image), &registries.config(&[&proxy.addr()])).await;
    assert_clean("503 then 200", &run);
    let report = run.json();
    let found = entry(&report, &image);
    assert_eq!(found["state"], "available", "{found}");
    let requests = proxy.seen().len();
    let manifest_requests = proxy.seen().iter().filter(|s| s.target.contains("/manifests/")).count();
    assert_eq!(manifest_requests, 2, "one 503, one retry (then the config blob)");
    record(Row {
        group: "registry",
        fault: "HTTP 503, then 200".into(),
        expected: "available".into(),
        got: format!("{} ({requests} requests)", got(found)),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

/// Every registry fault, and the connection and body faults, on one host, in one run, beside a
/// healthy repository: each image gets the state it got alone. Before the per-repository pause,
/// the 429's `Retry-After: 3600` paused the whole host and every other repository read
/// `rate_limited`.
#[tokio::test]
async fn registry_faults_all_on_one_host() {
    let registries = Registries::start().await;
    let cases: Vec<Case> = registry_cases().into_iter().chain(body_cases()).collect();
    push_all(&registries, &cases).await;
    registries.pusher.image("faults/healthy", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", registries.anon.addr)).await;
    for case in &cases {
        proxy.set_for_repository(case.repository, case.inject.clone());
    }
    let healthy = format!("{}/faults/healthy:v1", proxy.addr());
    let mut images: Vec<String> = cases.iter().map(|c| format!("{}/{}:v1", proxy.addr(), c.repository)).collect();
    images.push(healthy.clone());
    let run = check(registries.dir.path(), &images, &registries.config(&[&proxy.addr()])).await;
    assert_clean("all faults on one host", &run);
    let report = run.json();
    assert_eq!(entry(&report, &healthy)["state"], "available", "a healthy repository beside the faults");
    for (case, image) in cases.iter().zip(&images) {
        let found = entry(&report, image);
        assert_eq!(found["state"], case.state, "{} on a shared host: {found}", case.fault);
        let requests =
            proxy.seen().iter().filter(|s| s.target.starts_with(&format!("/v2/{}/", case.repository))).count();
        assert!(requests <= case.max_requests, "{}: {requests} requests on a shared host", case.fault);
        record(Row {
            group: "registry (one host)",
            fault: case.fault.into(),
            expected: case.state.into(),
            got: format!("{} ({requests} requests)", got(found)),
            peak_rss_kib: run.peak_rss_kib,
            millis: run.elapsed.as_millis(),
        });
    }
    record(Row {
        group: "registry (one host)",
        fault: "a healthy repository beside all of the above".into(),
        expected: "available".into(),
        got: got(entry(&report, &healthy)),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

/// Token-service faults, through the proxy in front of the issuer; the image is on the
/// token-auth registry and alice's credentials go to the token service.
#[tokio::test]
async fn token_service_faults() {
    let registries = Registries::start().await;
    registries.pusher.image("faults/private", "v1", "amd64").await;
    let token = registries.real_token("faults/private").await;
    let image = format!("{}/faults/private:v1", registries.token.addr);
    let config = registries.config(&[&registries.token.addr]);
    let token_document = |expires_in: i64| Fault::Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::json!({"token": token, "expires_in": expires_in}).to_string().into_bytes(),
    };
    let cases = [
        ("a token with expires_in: 0", token_document(0), "available", ""),
        ("answers non-JSON", Fault::Garbage, "unknown_error", "not a token document"),
        ("answers HTTP 500", status(500, None), "registry_unavailable", "token service"),
        (
            "answers slowly (one byte a second)",
            Fault::Drip(Duration::from_secs(1)),
            "registry_unavailable",
            "timed out",
        ),
    ];
    let mut secrets = secrets();
    secrets.push((None, token.as_str()));
    for (fault, inject, state, error_has) in cases {
        registries.realm_proxy.set(inject);
        let run = check(registries.dir.path(), std::slice::from_ref(&image), &config).await;
        assert_no_panic(fault, &run);
        assert_no_leak(fault, &run.stdout(), &secrets);
        assert_no_leak(fault, &run.stderr(), &secrets);
        let report = run.json();
        let found = entry(&report, &image);
        assert_eq!(found["state"], state, "token service {fault}: {found}");
        let error = found["error"].as_str().unwrap_or_default();
        assert!(error.contains(error_has), "token service {fault}: {error:?} lacks {error_has:?}");
        record(Row {
            group: "token service",
            fault: fault.into(),
            expected: state.into(),
            got: got(found),
            peak_rss_kib: run.peak_rss_kib,
            millis: run.elapsed.as_millis(),
        });
    }
}

/// A token the token service issues, which the registry keeps refusing: a bounded number of
/// requests, then `authentication_failure` — not a loop.
#[tokio::test]
async fn a_registry_that_refuses_every_token_is_not_asked_forever() {
    let registries = Registries::start().await;
    registries.pusher.image("faults/refused", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", registries.token.addr)).await;
    proxy.set(Fault::DropAuthorization);
    let image = format!("{}/faults/refused:v1", proxy.addr());
    let run = check(registries.dir.path(), std::slice::from_ref(&image), &registries.config(&[&proxy.addr()])).await;
    assert_clean("401 loop", &run);
    let report = run.json();
    let found = entry(&report, &image);
    assert_eq!(found["state"], "authentication_failure", "{found}");
    let requests = proxy.seen().len();
    assert!(requests <= 4, "{requests} requests to a registry refusing every token");
    record(Row {
        group: "token service",
        fault: "the registry refuses every token it issued (401 loop)".into(),
        expected: "authentication_failure".into(),
        got: format!("{} ({requests} requests)", got(found)),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

/// A token service that failed for one repository is not blamed for the next: the host is
/// known to want tokens, the up-front token fetch fails, and the probe then asks the registry
/// itself — a public repository on the same host answers. In process (the library's client),
/// so the order of the two probes is fixed.
#[tokio::test]
async fn a_broken_token_service_is_not_blamed_for_another_repository() {
    let registries = Registries::start().await;
    registries.pusher.image("faults/private", "v1", "amd64").await;
    registries.pusher.image("faults/public", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", registries.anon.addr)).await;
    proxy.set_for_repository("faults/private", Fault::Upstream(format!("http://{}", registries.token.addr)));
    registries.realm_proxy.set(status(500, None));
    let config = pullcheck::config::RegistryConfig::load(&registries.config(&[&proxy.addr()])).expect("config");
    let settings = pullcheck::registry::ClientSettings {
        request_timeout: Duration::from_secs(2),
        max_retry_wait: Duration::from_secs(5),
        ..Default::default()
    };
    let client = pullcheck::registry::RegistryClient::new(std::sync::Arc::new(config), settings);
    let image = |reference: &str| pullcheck::image::ImageRef::parse(reference).expect("valid image");
    let started = std::time::Instant::now();
    let private = client.probe(&image(&format!("{}/faults/private:v1", proxy.addr())), None).await;
    assert_eq!(private.state, pullcheck::registry::State::RegistryUnavailable, "{private:?}");
    assert!(private.error.as_deref().is_some_and(|e| e.contains("token service")), "{private:?}");
    let public = client.probe(&image(&format!("{}/faults/public:v1", proxy.addr())), None).await;
    assert_eq!(public.state, pullcheck::registry::State::Available, "another repository's token service: {public:?}");
    record(Row {
        group: "token service",
        fault: "token service answers 500 for one repository; then another repository on that host".into(),
        expected: "registry_unavailable, then available".into(),
        got: format!("{}, then {} ({} requests)", private.state, public.state, public.http_requests),
        peak_rss_kib: 0,
        millis: started.elapsed().as_millis(),
    });
}
