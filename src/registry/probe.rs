//! One probe: does the manifest of an image resolve, with these credentials, through the
//! mirrors and then the registry, as the runtime would resolve it before pulling?

use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::image::{ImageRef, api_host};
use crate::registry::auth::{Challenge, Credential, parse_challenge, token_ttl};
use crate::registry::client::{Host, KnownScheme, RegistryClient};
use crate::registry::limits::parse_retry_after;
use crate::registry::outcome::{State, classify_status};
use crate::registry::platform::{Platform, missing as missing_platforms};

const MANIFEST_ACCEPT: &str = const_format_accept();
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Tokens and error documents are small; anything bigger is not what we asked for.
const MAX_SMALL_BODY: usize = 256 << 10;

const fn const_format_accept() -> &'static str {
    // Keep in step with oci-client's constants (checked in a unit test).
    "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
}

/// What a probe found.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub state: State,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// The cause, for every state but `available`; never contains a credential.
    pub error: Option<String>,
    /// The registry host that gave this answer (a mirror's when a mirror served it).
    pub registry: String,
    pub duration: Duration,
    pub http_requests: u32,
}

/// An answer before mirrors and retries are settled.
struct Attempt {
    state: State,
    digest: Option<String>,
    media_type: Option<String>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Attempt {
    fn failed(state: State, error: impl Into<String>) -> Self {
        Self { state, digest: None, media_type: None, error: Some(error.into()), retry_after: None }
    }
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
}

/// Requests of one probe, counted for its result.
struct Exchange<'a> {
    client: &'a RegistryClient,
    requests: u32,
    /// Platforms an index must cover; none: any manifest will do, and HEAD is enough.
    platforms: &'a [Platform],
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    code: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestHead {
    schema_version: Option<u32>,
    media_type: Option<String>,
    /// Present in image indexes (and Docker manifest lists).
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    platform: Option<IndexPlatform>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl RegistryClient {
    /// Probes an image with the workload's credential (or, without one, the configured one).
    /// Mirrors are tried first, with their own configured credentials only.
    pub async fn probe(&self, image: &ImageRef, credential: Option<&Credential>) -> ProbeResult {
        self.probe_for(image, credential, &[], 0).await
    }

    /// A probe on behalf of `workloads` workload containers, whose nodes need `platforms`
    /// (an index must cover each; a single manifest is not checked, as the runtime pulls it
    /// anywhere): the root span of its own trace.
    pub async fn probe_for(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
        platforms: &[Platform],
        workloads: usize,
    ) -> ProbeResult {
        let started = Instant::now();
        let span = tracing::info_span!(
            parent: None,
            "probe",
            otel.name = %format!("probe {}", image.name()),
            otel.kind = "internal",
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
            container.image.name = %image.name(),
            container.image.tags = image.tag().unwrap_or_default(),
            server.address = %image.registry(),
            pullcheck.workloads.count = workloads as i64,
            pullcheck.image.state = field::Empty,
            oci.manifest.digest = field::Empty,
            error.type = field::Empty,
        );
        let mut exchange = Exchange { client: self, requests: 0, platforms };
        let result = async {
            let config = self.config();
            for mirror in config.host(image.registry()).mirrors {
                let on_mirror = image.with_registry(&mirror);
                let mirror_credential = config.host(&mirror).credential;
                let attempt = exchange.probe_host(&mirror, &on_mirror, mirror_credential.as_ref(), Some(image.registry())).await;
                if attempt.state == State::Available {
                    return (mirror, attempt);
                }
                tracing::debug!(%mirror, state = %attempt.state, "mirror did not serve the image, trying the next host");
            }
            let configured = config.credential_for(image);
            let credential = credential.or(configured.as_ref());
            let attempt = exchange.probe_host(image.registry(), image, credential, None).await;
            (image.registry().to_string(), attempt)
        }
        .instrument(span.clone())
        .await;
        let (registry, attempt) = result;
        span.record("pullcheck.image.state", attempt.state.as_str());
        if let Some(d) = &attempt.digest {
            span.record("oci.manifest.digest", d.as_str());
        }
        if attempt.state == State::Available {
            span.record("otel.status_code", "OK");
        } else {
            span.record("error.type", attempt.state.as_str());
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", attempt.error.as_deref().unwrap_or(attempt.state.as_str()));
        }
        ProbeResult {
            state: attempt.state,
            digest: attempt.digest,
            media_type: attempt.media_type,
            error: attempt.error,
            registry,
            duration: started.elapsed(),
            http_requests: exchange.requests,
        }
    }
}

impl Exchange<'_> {
    /// Retries 429, 5xx and transport failures on one host, honouring `Retry-After`.
    /// `mirror_of` names the upstream registry when `registry` is one of its mirrors.
    async fn probe_host(
        &mut self,
        registry: &str,
        image: &ImageRef,
        credential: Option<&Credential>,
        mirror_of: Option<&str>,
    ) -> Attempt {
        let host = match self.client.host(api_host(registry)) {
            Ok(h) => h,
            Err(e) => return Attempt::failed(State::UnknownError, e.to_string()),
        };
        let settings = &self.client.inner.settings;
        let mut attempt_no = 0;
        loop {
            if let Some(wait) = host.limits.pause_remaining() {
                if wait > settings.max_retry_wait {
                    return Attempt::failed(
                        State::RateLimited,
                        format!(
                            "{registry} asked to wait {}s (Retry-After); not asked again before then",
                            wait.as_secs()
                        ),
                    );
                }
                tokio::time::sleep(wait).await;
            }
            let attempt = self.manifest(&host, image, credential, mirror_of).await;
            let retryable = matches!(attempt.state, State::RateLimited | State::RegistryUnavailable);
            if attempt.state == State::RateLimited {
                let pause = attempt.retry_after.unwrap_or_else(|| backoff(attempt_no));
                host.limits.pause_until(Instant::now() + pause);
            }
            if !retryable || attempt_no >= settings.retries {
                return attempt;
            }
            let wait = attempt.retry_after.unwrap_or_else(|| backoff(attempt_no));
            if wait > settings.max_retry_wait {
                return attempt;
            }
            if attempt.state != State::RateLimited {
                tokio::time::sleep(wait).await;
            }
            attempt_no += 1;
        }
    }

    /// HEAD the manifest (GET when HEAD is refused or carries no digest), authenticating as
    /// the registry's challenge asks.
    async fn manifest(
        &mut self,
        host: &Host,
        image: &ImageRef,
        credential: Option<&Credential>,
        mirror_of: Option<&str>,
    ) -> Attempt {
        let scheme = if host.plain_http { "http" } else { "https" };
        let mut url =
            format!("{scheme}://{}/v2/{}/manifests/{}", host.name, image.repository(), image.manifest_reference());
        // containerd names the upstream to a mirror, so one mirror can serve several registries.
        if let Some(upstream) = mirror_of {
            url.push_str("?ns=");
            url.push_str(upstream);
        }
        let repository = image.repository();
        let mut authorization = match self.authorization(host, repository, credential).await {
            Ok(a) => a,
            Err(attempt) => return attempt,
        };
        // With platforms to check, the body is needed: GET at once rather than HEAD then GET.
        let method = if self.platforms.is_empty() { Method::HEAD } else { Method::GET };
        let limit = if method == Method::GET { self.client.inner.settings.max_body_bytes } else { 0 };
        let (mut response, mut body) =
            match self.send_with_body(host, method.clone(), &url, authorization.as_deref(), limit).await {
                Ok(r) => r,
                Err(a) => return a,
            };
        if response.status == StatusCode::UNAUTHORIZED {
            let challenge = header(&response.headers, WWW_AUTHENTICATE.as_str()).and_then(|h| parse_challenge(&h));
            let retry_with = match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.client.inner.tokens.remove(&host.name, repository, credential);
                    *lock(&host.scheme) = Some(KnownScheme::Bearer { realm: realm.clone(), service: service.clone() });
                    match self.fetch_token(host, &realm, service.as_deref(), repository, credential).await {
                        Ok(token) => Some(format!("Bearer {token}")),
                        Err(attempt) => return attempt,
                    }
                }
                Some(Challenge::Basic) => {
                    *lock(&host.scheme) = Some(KnownScheme::Basic);
                    credential.and_then(Credential::basic_header).filter(|h| Some(h) != authorization.as_ref())
                }
                None => None,
            };
            if let Some(auth) = retry_with {
                authorization = Some(auth);
                (response, body) =
                    match self.send_with_body(host, method.clone(), &url, authorization.as_deref(), limit).await {
                        Ok(r) => r,
                        Err(a) => return a,
                    };
            }
        }
        if method == Method::GET {
            return self.manifest_answer(host, image, &response, &body);
        }
        let digest = header(&response.headers, DOCKER_CONTENT_DIGEST).filter(|d| is_digest(d));
        let needs_get = response.status == StatusCode::METHOD_NOT_ALLOWED
            || (response.status.is_success() && digest.is_none() && image.digest().is_none());
        if needs_get {
            return self.get_manifest(host, &url, image, authorization.as_deref()).await;
        }
        let insufficient_scope = insufficient_scope(&response.headers);
        let state = classify_status(response.status.as_u16(), &[], insufficient_scope);
        let retry_after = retry_after(&response.headers);
        if state == State::Available {
            let media_type = header(&response.headers, "content-type");
            let digest = image.digest().map(str::to_string).or(digest);
            return Attempt { state, digest, media_type, error: None, retry_after };
        }
        Attempt {
            retry_after,
            ..Attempt::failed(state, status_error(&host.name, response.status, insufficient_scope, &[]))
        }
    }

    /// For registries that refuse HEAD or leave out the digest: GET, bounded, and hash the body.
    async fn get_manifest(&mut self, host: &Host, url: &str, image: &ImageRef, authorization: Option<&str>) -> Attempt {
        let limit = self.client.inner.settings.max_body_bytes;
        let (response, body) = match self.send_with_body(host, Method::GET, url, authorization, limit).await {
            Ok(r) => r,
            Err(a) => return a,
        };
        self.manifest_answer(host, image, &response, &body)
    }

    /// A GET's answer: the error it is, or the manifest, its digest, and whether an index
    /// covers the platforms needed.
    fn manifest_answer(&self, host: &Host, image: &ImageRef, response: &Response, body: &[u8]) -> Attempt {
        let insufficient_scope = insufficient_scope(&response.headers);
        let retry_after = retry_after(&response.headers);
        if !response.status.is_success() {
            let codes = error_codes(body);
            let state = classify_status(response.status.as_u16(), &codes, insufficient_scope);
            let error = status_error(&host.name, response.status, insufficient_scope, &codes);
            return Attempt { retry_after, ..Attempt::failed(state, error) };
        }
        let head: ManifestHead = match serde_json::from_slice(body) {
            Ok(h) => h,
            Err(e) => return Attempt::failed(State::UnknownError, format!("{}: manifest is not JSON: {e}", host.name)),
        };
        if head.schema_version.is_none() && head.media_type.is_none() {
            return Attempt::failed(State::UnknownError, format!("{}: answer is not an image manifest", host.name));
        }
        let computed = format!("sha256:{}", hex(&sha2::Sha256::digest(body)));
        let digest = header(&response.headers, DOCKER_CONTENT_DIGEST).filter(|d| is_digest(d)).unwrap_or(computed);
        let media_type = head.media_type.or_else(|| header(&response.headers, "content-type"));
        let digest = Some(image.digest().map_or(digest, str::to_string));
        if let Some(entries) = head.manifests.filter(|_| !self.platforms.is_empty()) {
            let offered: Vec<Platform> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
                .collect();
            let missing = missing_platforms(self.platforms, &offered);
            if !missing.is_empty() {
                let list = |ps: Vec<String>| ps.join(", ");
                let error = format!(
                    "{}: the index lacks {} (it has {})",
                    host.name,
                    list(missing.iter().map(|p| p.to_string()).collect()),
                    list(offered.iter().map(|p| p.to_string()).collect())
                );
                return Attempt { digest, media_type, ..Attempt::failed(State::PlatformMissing, error) };
            }
        }
        Attempt { state: State::Available, digest, media_type, error: None, retry_after: None }
    }

    /// What to send up front: a cached token, a token fetched because the host is known to
    /// want one, or Basic for a host known to take it.
    async fn authorization(
        &mut self,
        host: &Host,
        repository: &str,
        credential: Option<&Credential>,
    ) -> Result<Option<String>, Attempt> {
        if let Some(Credential::Bearer(token)) = credential {
            return Ok(Some(format!("Bearer {token}")));
        }
        if let Some(token) = self.client.inner.tokens.get(&host.name, repository, credential) {
            return Ok(Some(format!("Bearer {token}")));
        }
        let known = lock(&host.scheme).clone();
        match known {
            Some(KnownScheme::Bearer { realm, service }) => {
                let token = self.fetch_token(host, &realm, service.as_deref(), repository, credential).await?;
                Ok(Some(format!("Bearer {token}")))
            }
            Some(KnownScheme::Basic) => Ok(credential.and_then(Credential::basic_header)),
            None => Ok(None),
        }
    }

    async fn fetch_token(
        &mut self,
        registry: &Host,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        credential: Option<&Credential>,
    ) -> Result<String, Attempt> {
        let mut url = reqwest::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Attempt::failed(State::UnknownError, format!("{}: token realm is not a URL", registry.name))
            })?;
        // Credentials go to the realm the registry named, never in its URL.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{repository}:pull"));
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let realm_host =
            self.client.host(&authority).map_err(|e| Attempt::failed(State::UnknownError, e.to_string()))?;
        let basic = credential.and_then(Credential::basic_header);
        let (response, body) =
            self.send_url_with_body(&realm_host, Method::GET, url, basic.as_deref(), MAX_SMALL_BODY).await?;
        let status = response.status;
        let fail = |state: State, what: &str| {
            Attempt::failed(state, format!("token service {authority} for {}: {what}", registry.name))
        };
        match status.as_u16() {
            200..=299 => {}
            401 => return Err(fail(State::AuthenticationFailure, "credentials rejected (HTTP 401)")),
            403 => return Err(fail(State::AuthorizationFailure, "pull refused (HTTP 403)")),
            429 => return Err(fail(State::RateLimited, "HTTP 429")),
            500..=599 => return Err(fail(State::RegistryUnavailable, &format!("HTTP {}", status.as_u16()))),
            other => return Err(fail(State::UnknownError, &format!("HTTP {other}"))),
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| fail(State::UnknownError, "answer is not a token document"))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(State::UnknownError, "answer has no token"))?;
        self.client.inner.tokens.insert(
            &registry.name,
            repository,
            credential,
            token.clone(),
            token_ttl(parsed.expires_in),
        );
        Ok(token)
    }

    async fn send_with_body(
        &mut self,
        host: &Host,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        limit: usize,
    ) -> Result<(Response, Vec<u8>), Attempt> {
        let url =
            reqwest::Url::parse(url).map_err(|e| Attempt::failed(State::UnknownError, format!("bad URL: {e}")))?;
        self.send_url_with_body(host, method, url, authorization, limit).await
    }

    /// One HTTP request in its own CLIENT span; reads at most `limit` bytes of the body.
    async fn send_url_with_body(
        &mut self,
        host: &Host,
        method: Method,
        url: reqwest::Url,
        authorization: Option<&str>,
        limit: usize,
    ) -> Result<(Response, Vec<u8>), Attempt> {
        let span = tracing::info_span!(
            "http",
            otel.name = %method,
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
            server.address = %host.name,
            http.response.status_code = field::Empty,
            error.type = field::Empty,
        );
        let _permit = host.limits.acquire().instrument(span.clone()).await;
        self.requests += 1;
        self.client.count_request();
        let mut request = host.http.request(method.clone(), url).header(ACCEPT, MANIFEST_ACCEPT);
        if let Some(auth) = authorization {
            request = request.header(AUTHORIZATION, auth);
        }
        let result = async {
            let sent = request.send().await;
            self.client.observe_request(&host.name, sent.as_ref().ok().map(|r| r.status().as_u16()));
            let mut response = sent.map_err(|e| transport_error(&host.name, &e))?;
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            let headers = response.headers().clone();
            let mut body = Vec::new();
            let read_limit = if status.is_success() { limit } else { limit.min(MAX_SMALL_BODY) };
            if method != Method::HEAD && read_limit > 0 {
                let declared = header(&headers, CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<usize>().ok());
                if declared.is_some_and(|l| l > read_limit) {
                    return Err(too_large(&host.name, read_limit));
                }
                while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&host.name, &e))? {
                    if body.len() + chunk.len() > read_limit {
                        return Err(too_large(&host.name, read_limit));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok((Response { status, headers }, body))
        }
        .instrument(span.clone())
        .await;
        if let Err(attempt) = &result {
            span.record("error.type", attempt.state.as_str());
        }
        result
    }
}

fn too_large(host: &str, limit: usize) -> Attempt {
    Attempt::failed(State::UnknownError, format!("{host}: response body larger than {limit} bytes"))
}

/// Connect, DNS, TLS and timeouts: the registry cannot be reached. The cause chain is kept
/// (it says which), but reqwest's errors name only the URL, which carries no credential.
fn transport_error(host: &str, error: &reqwest::Error) -> Attempt {
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        if !cause.is_empty() {
            cause.push_str(": ");
        }
        cause.push_str(&e.to_string());
        source = e.source();
    }
    let kind = if error.is_timeout() {
        "timed out"
    } else if cause.contains("dns error") {
        "DNS lookup failed"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    let state = if error.is_redirect() { State::UnknownError } else { State::RegistryUnavailable };
    Attempt::failed(state, format!("{host}: {kind}: {cause}"))
}

fn status_error(host: &str, status: StatusCode, insufficient_scope: bool, codes: &[String]) -> String {
    let mut message = format!("{host}: HTTP {}", status.as_u16());
    if insufficient_scope {
        message.push_str(" (token lacks the pull scope: insufficient_scope)");
    }
    if !codes.is_empty() {
        message.push_str(&format!(" ({})", codes.join(", ")));
    }
    message
}

fn error_codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorDocument>(body)
        .map(|doc| {
            doc.errors
                .into_iter()
                .map(|e| match e.message.filter(|m| !m.is_empty()) {
                    Some(m) => format!("{}: {}", e.code, truncate(&m, 200)),
                    None => e.code,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn insufficient_scope(headers: &HeaderMap) -> bool {
    header(headers, WWW_AUTHENTICATE.as_str()).and_then(|h| parse_challenge(&h)).is_some_and(|c| c.insufficient_scope())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header(headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v, SystemTime::now()))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn is_digest(value: &str) -> bool {
    value.split_once(':').is_some_and(|(alg, hex)| !alg.is_empty() && hex.len() >= 32)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 250 ms, 500 ms, 1 s, ... for retries without `Retry-After`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(8)))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    };

    #[test]
    fn accept_lists_every_manifest_media_type() {
        for media_type in [
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
        ] {
            assert!(MANIFEST_ACCEPT.contains(media_type), "{media_type}");
        }
    }

    #[test]
    fn error_documents() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(error_codes(body), vec!["MANIFEST_UNKNOWN: manifest unknown".to_string()]);
        assert!(error_codes(b"<html>").is_empty());
    }

    #[test]
    fn backoff_grows_and_saturates() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(40), backoff(8));
    }
}
