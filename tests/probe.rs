//! The probe engine against real registries: every state of docs/states.md's table but
//! `platform_missing`, produced by Debian's docker-registry or the fault proxy in front of it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pullcheck::config::RegistryConfig;
use pullcheck::credentials::{Credential, CredentialSource, SourcedCredential};
use pullcheck::image::ImageRef;
use pullcheck::platform::Platform;
use pullcheck::registry::{ClientSettings, ProbeResult, RegistryClient, State};
use support::proxy::{Fault, FaultProxy};
use support::registry::{Registry, Served};
use support::{Env, NO_PULL_PASSWORD, NO_PULL_USER, PASSWORD, RefusedPort, USER};

fn client_with(config: Option<&std::path::Path>, settings: ClientSettings) -> RegistryClient {
    let config = config.map(|p| RegistryConfig::load(p).expect("valid test config")).unwrap_or_default();
    RegistryClient::new(Arc::new(config), settings)
}

fn fast() -> ClientSettings {
    ClientSettings {
        request_timeout: Duration::from_secs(2),
        retries: 2,
        max_retry_wait: Duration::from_secs(5),
        ..ClientSettings::default()
    }
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("valid test image")
}

async fn probe(client: &RegistryClient, reference: &str, credential: Option<&Credential>) -> ProbeResult {
    client.probe(&image(reference), credential).await
}

/// Runs `probe` and returns what `registry` answered meanwhile (`METHOD target status`), read from
/// the registry's own access log: the client's count of its requests cannot vouch for itself.
/// `expected` is how many lines to wait for; more are returned if more came.
async fn served_during<T>(registry: &Registry, expected: usize, probe: impl Future<Output = T>) -> (T, Vec<String>) {
    let mark = registry.served().len();
    let result = probe.await;
    let served = registry.served_since(mark, expected).await.iter().map(Served::line).collect();
    (result, served)
}

/// Requests the proxy received since it had seen `mark`, as `METHOD target`.
fn seen_since(proxy: &FaultProxy, mark: usize) -> Vec<String> {
    proxy.seen().iter().skip(mark).map(|s| format!("{} {}", s.method, s.target)).collect()
}

#[tokio::test]
async fn anonymous_registry_available_then_absent_after_cleanup() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let client = client_with(None, fast());
    let (r, served) =
        served_during(&env.anon, 1, probe(&client, &format!("{}/team/app:v1", env.anon.addr), None)).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(served, ["HEAD /v2/team/app/manifests/v1 200"], "no ping, no token: one HEAD");
    // A loopback host on its own port is tried over HTTPS first, as containerd 2.x does: one
    // attempt more on first contact, which the plain-HTTP registry answers before any request.
    assert_eq!(r.http_requests, 2, "and the client counts what it sent, the HTTPS attempt too");
    let again = probe(&client, &format!("{}/team/app:v1", env.anon.addr), None).await;
    assert_eq!((again.state, again.http_requests), (State::Available, 1), "then plain HTTP, remembered: {again:?}");

    let pinned = probe(&client, &format!("{}/team/app@{digest}", env.anon.addr), None).await;
    assert_eq!(pinned.state, State::Available, "{pinned:?}");

    env.pusher.delete("team/app", &digest).await;
    let r = probe(&client, &format!("{}/team/app:v1", env.anon.addr), None).await;
    assert_eq!(r.state, State::Absent, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("404")), "{r:?}");
    let never = probe(&client, &format!("{}/never/pushed:v1", env.anon.addr), None).await;
    assert_eq!(never.state, State::Absent, "{never:?}");
}

#[tokio::test]
async fn multi_platform_index_reports_the_index_digest() {
    let env = Env::start().await;
    let index = env.pusher.index("multi/app", "v1", &["amd64", "arm64"]).await;
    let r = probe(&client_with(None, fast()), &format!("{}/multi/app:v1", env.anon.addr), None).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.digest.as_deref(), Some(index.as_str()));
    assert_eq!(r.media_type.as_deref(), Some(support::registry::OCI_INDEX));
}

#[tokio::test]
async fn basic_auth_over_tls() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let config = env.registry_config("", "");
    let client = client_with(Some(&config), fast());
    let reference = format!("{}/private/app:v1", env.basic.addr);
    let good = Credential::basic(USER, PASSWORD);
    let bad = Credential::basic(USER, "wrong");

    let manifest = "/v2/private/app/manifests/v1";
    let (r, served) = served_during(&env.basic, 2, probe(&client, &reference, Some(&good))).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    let challenge_then_head = [format!("HEAD {manifest} 401"), format!("HEAD {manifest} 200")];
    assert_eq!(served, challenge_then_head, "first probe learns the scheme from the challenge");
    assert_eq!(r.http_requests, 2);
    let (r, served) = served_during(&env.basic, 1, probe(&client, &reference, Some(&good))).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(served, [format!("HEAD {manifest} 200")], "then Basic goes up front");
    assert_eq!(r.http_requests, 1);
    let r = probe(&client, &reference, Some(&bad)).await;
    assert_eq!(r.state, State::AuthenticationFailure, "{r:?}");
    let r = probe(&client, &reference, None).await;
    assert_eq!(r.state, State::AuthenticationFailure, "{r:?}");
    assert!(!format!("{r:?}").contains(PASSWORD) && !format!("{r:?}").contains("wrong"));
}

#[tokio::test]
async fn basic_auth_from_registry_config() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let ca = env.pki.ca_cert.display();
    let extra = format!(
        "  {}:\n    plainHttp: false\n    caFile: {ca}\n    auth: {{username: {USER}, password: {PASSWORD}}}\n",
        env.basic.addr
    );
    // The generic entry for the host is replaced by this one: write the config by hand.
    let path = env.dir.path().join("with-auth.yaml");
    std::fs::write(&path, format!("registries:\n{extra}")).expect("write");
    let r = probe(&client_with(Some(&path), fast()), &format!("{}/private/app:v1", env.basic.addr), None).await;
    assert_eq!(r.state, State::Available, "{r:?}");
}

#[tokio::test]
async fn token_auth_scopes_and_cache() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    env.pusher.image("public/app", "v1", "amd64").await;
    let config = env.registry_config("", "");
    let client = client_with(Some(&config), fast());
    let private = format!("{}/private/app:v1", env.token.addr);
    let alice = Credential::basic(USER, PASSWORD);
    let mallory = Credential::basic(NO_PULL_USER, NO_PULL_PASSWORD);

    let manifest = "/v2/private/app/manifests/v1";
    let (r, served) = served_during(&env.token, 2, probe(&client, &private, Some(&alice))).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(served, [format!("HEAD {manifest} 401"), format!("HEAD {manifest} 200")], "HEAD 401, (token), HEAD");
    assert_eq!(env.issuer.requests(), 1, "one token fetched");
    assert_eq!(r.http_requests, 3);
    for _ in 0..5 {
        let (r, served) = served_during(&env.token, 1, probe(&client, &private, Some(&alice))).await;
        assert_eq!(r.state, State::Available, "{r:?}");
        assert_eq!(served, [format!("HEAD {manifest} 200")], "cached token");
        assert_eq!(r.http_requests, 1);
    }
    assert_eq!(env.issuer.requests(), 1, "no token fetched for the cached ones");

    // Another credential never rides on alice's token.
    let r = probe(&client, &private, Some(&mallory)).await;
    assert_eq!(r.state, State::AuthorizationFailure, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("insufficient_scope")), "{r:?}");
    let r = probe(&client, &private, Some(&Credential::basic(USER, "wrong"))).await;
    assert_eq!(r.state, State::AuthenticationFailure, "{r:?}");
    let r = probe(&client, &private, None).await;
    assert_eq!(r.state, State::AuthorizationFailure, "anonymous token without pull: {r:?}");
    let tokens_before = env.issuer.requests();
    let (r, served) =
        served_during(&env.token, 1, probe(&client, &format!("{}/public/app:v1", env.token.addr), None)).await;
    assert_eq!(r.state, State::Available, "anonymous pull of a public repository: {r:?}");
    assert_eq!(served, ["HEAD /v2/public/app/manifests/v1 200"], "the realm is known: (token), HEAD");
    assert_eq!(env.issuer.requests(), tokens_before + 1);
    assert_eq!(r.http_requests, 2);
    let r = probe(&client, &format!("{}/public/gone:v1", env.token.addr), None).await;
    assert_eq!(r.state, State::Absent, "{r:?}");
}

#[tokio::test]
async fn tls_trust_decides_reachability() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let reference = format!("{}/private/app:v1", env.basic.addr);
    let path = env.dir.path().join("no-ca.yaml");
    std::fs::write(&path, format!("registries:\n  {}:\n    plainHttp: false\n", env.basic.addr)).expect("write");
    let r = probe(&client_with(Some(&path), fast()), &reference, Some(&Credential::basic(USER, PASSWORD))).await;
    assert_eq!(r.state, State::RegistryUnavailable, "untrusted certificate: {r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("certificate")), "{r:?}");

    std::fs::write(
        &path,
        format!("registries:\n  {}:\n    plainHttp: false\n    skipTlsVerify: true\n", env.basic.addr),
    )
    .expect("write");
    let r = probe(&client_with(Some(&path), fast()), &reference, Some(&Credential::basic(USER, PASSWORD))).await;
    assert_eq!(r.state, State::Available, "{r:?}");
}

#[tokio::test]
async fn rate_limits_are_retried_or_honoured_per_registry() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let client = client_with(None, fast());
    let via_proxy = format!("{}/team/app:v1", proxy.addr());

    let head = "HEAD /v2/team/app/manifests/v1";
    proxy.set_for(Fault::Status { status: 429, retry_after: Some("1".into()) }, 1);
    let mark = proxy.seen().len();
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::Available, "a short Retry-After is waited out: {r:?}");
    assert_eq!(seen_since(&proxy, mark), [head, head], "the 429, then the retry");
    assert_eq!(r.http_requests, 3, "the HTTPS attempt of a first contact, the 429, the retry");

    proxy.set(Fault::Status { status: 429, retry_after: Some("120".into()) });
    let mark = proxy.seen().len();
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::RateLimited, "{r:?}");
    assert_eq!(seen_since(&proxy, mark), [head], "a long Retry-After is not waited for");
    assert_eq!(r.http_requests, 1);
    let before = proxy.seen().len();
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!((r.state, r.http_requests), (State::RateLimited, 0), "the registry is left alone: {r:?}");
    assert_eq!(proxy.seen().len(), before);
    assert!(r.error.as_deref().is_some_and(|e| e.contains("Retry-After")), "{r:?}");
    let other = probe(&client, &format!("{}/team/app:v1", env.anon.addr), None).await;
    assert_eq!(other.state, State::Available, "other registries are not paused: {other:?}");
}

#[tokio::test]
async fn server_errors_resets_and_slow_bodies_are_registry_unavailable() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let client = client_with(None, ClientSettings { request_timeout: Duration::from_millis(800), ..fast() });
    let via_proxy = format!("{}/team/app:v1", proxy.addr());

    proxy.set(Fault::Status { status: 503, retry_after: None });
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    assert_eq!(seen_since(&proxy, 0).len(), 3, "retried twice: {:?}", proxy.seen());
    assert_eq!(r.http_requests, 4, "the first contact's HTTPS attempt, then three: {r:?}");

    proxy.set_for(Fault::Status { status: 502, retry_after: None }, 1);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::Available, "a passing 5xx is retried: {r:?}");

    proxy.set(Fault::Reset);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");

    proxy.set(Fault::Drip(Duration::from_millis(300)));
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("timed out")), "{r:?}");

    proxy.set(Fault::Truncate);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "truncated body: {r:?}");

    proxy.set(Fault::None);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!((r.state, r.digest.as_deref()), (State::Available, Some(digest.as_str())), "{r:?}");
}

#[tokio::test]
async fn get_fallback_and_malformed_answers() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let proxy = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let client = client_with(None, fast());
    let via_proxy = format!("{}/team/app:v1", proxy.addr());

    proxy.set(Fault::HeadNotAllowed);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!((r.state, r.digest.as_deref()), (State::Available, Some(digest.as_str())), "HEAD 405 → GET: {r:?}");
    proxy.set(Fault::StripDigest);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!((r.state, r.digest.as_deref()), (State::Available, Some(digest.as_str())), "digest of the body: {r:?}");
    let methods: Vec<String> = proxy.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET", "HEAD", "GET"]);

    proxy.set(Fault::Huge(64 << 20));
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::UnknownError, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("larger than")), "{r:?}");
    proxy.set(Fault::Garbage);
    let r = probe(&client, &via_proxy, None).await;
    assert_eq!(r.state, State::UnknownError, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("not JSON")), "{r:?}");
}

#[tokio::test]
async fn redirects_to_another_host_carry_no_credentials() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let upstream = format!("http://{}", env.anon.addr);
    let other_host = FaultProxy::start_on("127.0.0.2:0", upstream.clone()).await;
    let redirecting = FaultProxy::start(upstream).await;
    redirecting.set(Fault::Redirect(format!("http://{}", other_host.addr())));
    let token = Credential::Bearer("registry-token-secret".into());
    let r = probe(&client_with(None, fast()), &format!("{}/team/app:v1", redirecting.addr()), Some(&token)).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert!(redirecting.seen().iter().all(|s| s.authorization), "the registry gets the credential");
    let followed = other_host.seen();
    assert!(!followed.is_empty() && followed.iter().all(|s| !s.authorization), "{followed:?}");
}

#[tokio::test]
async fn unreachable_registries() {
    let refused = RefusedPort::bind();
    let client = client_with(None, ClientSettings { retries: 0, ..fast() });
    let r = probe(&client, &format!("{}/team/app:v1", refused.addr), None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    assert!(r.error.as_deref().is_some_and(|e| e.contains("connection failed")), "{r:?}");
    let r = probe(&client, "registry.does-not-exist.invalid/team/app:v1", None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "DNS: {r:?}");
}

#[tokio::test]
async fn mirrors_are_tried_in_order_then_the_registry() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let dead = RefusedPort::bind();
    let empty_mirror = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    empty_mirror.set(Fault::Status { status: 404, retry_after: None });
    let path = env.dir.path().join("mirrors.yaml");
    std::fs::write(
        &path,
        format!(
            "registries:\n  upstream.example:\n    mirrors: ['{}', '{}', '{}']\n",
            dead.addr,
            empty_mirror.addr(),
            env.anon.addr
        ),
    )
    .expect("write");
    let client = client_with(Some(&path), ClientSettings { retries: 0, ..fast() });
    let r = probe(&client, "upstream.example/team/app:v1", None).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.registry, env.anon.addr, "served by the third mirror");
    assert!(
        empty_mirror.seen().iter().all(|s| s.target.ends_with("?ns=upstream.example")),
        "{:?}",
        empty_mirror.seen()
    );
    let r = probe(&client, "upstream.example/team/other:v1", None).await;
    assert_eq!(r.state, State::RegistryUnavailable, "falls back to the (unresolvable) upstream: {r:?}");
    assert_eq!(r.registry, "upstream.example");
}

#[tokio::test]
async fn an_index_must_cover_the_platforms_the_nodes_need() {
    let env = Env::start().await;
    let index = env.pusher.index("multi/app", "v1", &["amd64", "arm64"]).await;
    let (single, _) = env.pusher.image("single/app", "v1", "amd64").await;
    let client = client_with(None, fast());
    let platforms = |list: &[&str]| list.iter().map(|p| p.parse::<Platform>().expect("platform")).collect::<Vec<_>>();
    let multi = image(&format!("{}/multi/app:v1", env.anon.addr));

    let needed = platforms(&["linux/amd64", "linux/arm64/v8"]);
    let (both, served) = served_during(&env.anon, 1, client.probe_for(&multi, &[], &needed, 1)).await;
    assert_eq!((both.state, both.digest.as_deref()), (State::Available, Some(index.as_str())), "{both:?}");
    assert_eq!(served, ["GET /v2/multi/app/manifests/v1 200"], "one GET reads the index");
    assert_eq!(both.http_requests, 2, "and a first contact's HTTPS attempt");

    let s390x = client.probe_for(&multi, &[], &platforms(&["linux/amd64", "linux/s390x"]), 1).await;
    assert_eq!(s390x.state, State::PlatformMissing, "{s390x:?}");
    let error = s390x.error.unwrap_or_default();
    assert!(error.contains("lacks linux/s390x") && error.contains("has linux/amd64, linux/arm64"), "{error}");

    // A single-platform manifest runs where its config says: containerd refuses it elsewhere.
    let single_image = image(&format!("{}/single/app:v1", env.anon.addr));
    let one = client.probe_for(&single_image, &[], &platforms(&["linux/s390x"]), 1).await;
    assert_eq!((one.state, one.digest.as_deref()), (State::PlatformMissing, Some(single.as_str())), "{one:?}");
    assert!(one.error.as_deref().is_some_and(|e| e.contains("linux/amd64 only")), "{one:?}");
    let (amd64, served) =
        served_during(&env.anon, 1, client.probe_for(&single_image, &[], &platforms(&["linux/amd64"]), 1)).await;
    assert_eq!(amd64.state, State::Available, "{amd64:?}");
    assert_eq!(served, ["GET /v2/single/app/manifests/v1 200"], "the config is read once per digest: {served:?}");

    // Through token auth, the GET goes through the same challenge.
    env.pusher.index("private/multi", "v1", &["amd64"]).await;
    let config = env.registry_config("", "");
    let token_client = client_with(Some(&config), fast());
    let alice = [pull_secret("alice", Credential::basic(USER, PASSWORD))];
    let private = image(&format!("{}/private/multi:v1", env.token.addr));
    let r = token_client.probe_for(&private, &alice, &platforms(&["linux/arm64"]), 1).await;
    assert_eq!(r.state, State::PlatformMissing, "{r:?}");
    let gone = token_client
        .probe_for(&image(&format!("{}/private/none:v1", env.token.addr)), &alice, &platforms(&["linux/arm64"]), 1)
        .await;
    assert_eq!(gone.state, State::Absent, "{gone:?}");
}

fn pull_secret(name: &str, credential: Credential) -> SourcedCredential {
    SourcedCredential { source: CredentialSource::PullSecret(name.into()), credential }
}
