//! What a manifest answer says: the registry's error document, the manifest's digest (announced
//! or computed), and whether an index covers the platforms the nodes need. Pure: no I/O.

use reqwest::StatusCode;
use serde::Deserialize;
use sha2::Digest as _;

use super::http::Response;
use super::outcome::{Attempt, State, classify_status};
use crate::image::ImageRef;
use crate::platform::{Platform, missing as missing_platforms};

/// The four manifest media types, indexes first. Kept in step with oci-client's constants
/// (checked in a unit test).
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

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

/// Docker image manifest schema 1 (signed or not): containerd 2.0 refuses to pull it by
/// default and 2.1 removed it.
const SCHEMA1_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The part of a manifest or index a probe reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestHead {
    schema_version: Option<u32>,
    media_type: Option<String>,
    /// Present in image indexes (and Docker manifest lists).
    manifests: Option<Vec<IndexEntry>>,
    /// Present in single-platform manifests: the config blob names the platform.
    config: Option<ConfigDescriptor>,
}

#[derive(Deserialize)]
struct ConfigDescriptor {
    digest: String,
}

/// The part of an image config blob that says where it runs.
#[derive(Deserialize)]
struct ImageConfigPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// What a GET's answer leaves to do.
pub(crate) enum Answer {
    Settled(Attempt),
    /// A single-platform manifest, available so far: its config blob says whether it runs on
    /// the platforms needed.
    CheckConfig {
        available: Attempt,
        config_digest: String,
    },
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

/// A HEAD's answer: the state its status means, with the digest the registry announced.
pub(crate) fn head_answer(host: &str, image: &ImageRef, response: &Response) -> Attempt {
    let insufficient_scope = response.insufficient_scope();
    let state = classify_status(response.status.as_u16(), &[], insufficient_scope);
    let retry_after = response.retry_after();
    if state == State::Available {
        let digest = image.digest().map(str::to_string).or_else(|| announced_digest(response));
        let media_type = response.header("content-type");
        if let Some(schema1) = media_type.as_deref().filter(|t| is_schema1(t, None)) {
            return Attempt { digest, ..schema1_refused(host, schema1) };
        }
        if let Some(refused) = media_type.as_deref().and_then(|t| not_a_manifest_type(host, t)) {
            return Attempt { digest, ..refused };
        }
        return Attempt { state, digest, media_type, error: None, retry_after };
    }
    Attempt { retry_after, ..Attempt::failed(state, status_error(host, response, insufficient_scope, &[])) }
}

/// A GET's answer: the error it is, or the manifest, its digest, and whether an index covers
/// `platforms` — or, for a single manifest with platforms to check, its config to read.
pub(crate) fn get_answer(
    host: &str,
    image: &ImageRef,
    response: &Response,
    body: &[u8],
    platforms: &[Platform],
) -> Answer {
    let insufficient_scope = response.insufficient_scope();
    let retry_after = response.retry_after();
    if !response.status.is_success() {
        let codes = error_codes(body);
        let state = classify_status(response.status.as_u16(), &codes, insufficient_scope);
        let error = status_error(host, response, insufficient_scope, &codes);
        return Answer::Settled(Attempt { retry_after, ..Attempt::failed(state, error) });
    }
    let head: ManifestHead = match serde_json::from_slice(body) {
        Ok(h) => h,
        Err(e) => {
            return Answer::Settled(Attempt::failed(State::UnknownError, format!("{host}: manifest is not JSON: {e}")));
        }
    };
    if head.schema_version.is_none() && head.media_type.is_none() {
        let error = format!("{host}: answer is not an image manifest");
        return Answer::Settled(Attempt::failed(State::UnknownError, error));
    }
    let media_type = head.media_type.clone().or_else(|| response.header("content-type"));
    let computed = Digest::of(body);
    // The runtime verifies what it fetched against the digest it asked for or was told.
    let expected = image.digest().map(str::to_string).or_else(|| announced_digest(response));
    if let Some(expected) = &expected
        && let Some(mismatch) = computed.mismatch(expected)
    {
        let error =
            format!("{host}: the manifest's content does not match its digest {expected} (it hashes to {mismatch})");
        return Answer::Settled(Attempt {
            digest: Some(expected.clone()),
            ..Attempt::failed(State::UnsupportedManifest, error)
        });
    }
    let digest = Some(expected.unwrap_or(computed.sha256));
    if is_schema1(media_type.as_deref().unwrap_or_default(), head.schema_version) {
        let schema1 = media_type.as_deref().unwrap_or("schema 1");
        return Answer::Settled(Attempt { digest, ..schema1_refused(host, schema1) });
    }
    if let Some(refused) = response.header("content-type").and_then(|t| not_a_manifest_type(host, &t)) {
        return Answer::Settled(Attempt { digest, ..refused });
    }
    if platforms.is_empty() {
        return Answer::Settled(Attempt {
            state: State::Available,
            digest,
            media_type,
            error: None,
            retry_after: None,
        });
    }
    if let Some(entries) = &head.manifests {
        let offered: Vec<Platform> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
            .collect();
        let missing = missing_platforms(platforms, &offered);
        if !missing.is_empty() {
            let error =
                format!("{host}: the index lacks {} (it has {})", list(missing), list(offered.iter().collect()));
            return Answer::Settled(Attempt { digest, media_type, ..Attempt::failed(State::PlatformMissing, error) });
        }
        return Answer::Settled(Attempt {
            state: State::Available,
            digest,
            media_type,
            error: None,
            retry_after: None,
        });
    }
    let available = Attempt { state: State::Available, digest, media_type, error: None, retry_after: None };
    match head.config {
        Some(config) => Answer::CheckConfig { available, config_digest: config.digest },
        None => Answer::Settled(available),
    }
}

/// A config blob's platform, bounded and parsed; `None` when it does not say.
pub(crate) fn config_platform(body: &[u8]) -> Option<Platform> {
    let config: ImageConfigPlatform = serde_json::from_slice(body).ok()?;
    Some(Platform::new(&config.os, &config.architecture, config.variant.as_deref()))
}

/// A single-platform image's answer: `platform_missing` unless it runs on every platform needed.
pub(crate) fn single_platform_answer(
    host: &str,
    available: Attempt,
    runs_on: &Platform,
    needed: &[Platform],
) -> Attempt {
    let missing: Vec<&Platform> = needed.iter().filter(|p| !p.is_served_by(runs_on)).collect();
    if missing.is_empty() {
        return available;
    }
    let error =
        format!("{host}: the image is {runs_on} only (a single-platform manifest); the nodes need {}", list(missing));
    Attempt {
        digest: available.digest,
        media_type: available.media_type,
        ..Attempt::failed(State::PlatformMissing, error)
    }
}

fn list(platforms: Vec<&Platform>) -> String {
    platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

fn is_schema1(media_type: &str, schema_version: Option<u32>) -> bool {
    schema_version == Some(1) || SCHEMA1_MEDIA_TYPES.iter().any(|t| media_type.starts_with(t))
}

fn schema1_refused(host: &str, media_type: &str) -> Attempt {
    let error = format!(
        "{host}: a Docker schema 1 manifest ({media_type}): containerd 2.0 refuses to pull it and 2.1 removed it; \
         re-push the image as Docker schema 2 or OCI"
    );
    Attempt { media_type: Some(media_type.to_string()), ..Attempt::failed(State::UnsupportedManifest, error) }
}

/// A manifest answered with a `Content-Type` that is no manifest media type (`text/html` from a
/// proxy in front of the registry): containerd takes the descriptor's media type from that
/// header and fails the pull ("unexpected media type"), so the node cannot pull it either.
fn not_a_manifest_type(host: &str, content_type: &str) -> Option<Attempt> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.is_empty() || MANIFEST_ACCEPT.split(", ").any(|known| known.eq_ignore_ascii_case(essence)) {
        return None;
    }
    let error = format!(
        "{host}: the manifest is served as {essence}, not a manifest media type: containerd refuses it \
         (\"unexpected media type\"); check what answers in front of the registry"
    );
    Some(Attempt { media_type: Some(essence.to_string()), ..Attempt::failed(State::UnsupportedManifest, error) })
}

/// A body's digests, to check against an announced or requested one.
struct Digest {
    sha256: String,
    sha512: String,
}

impl Digest {
    fn of(body: &[u8]) -> Self {
        Self {
            sha256: format!("sha256:{}", hex(&sha2::Sha256::digest(body))),
            sha512: format!("sha512:{}", hex(&sha2::Sha512::digest(body))),
        }
    }

    /// The body's own digest when `expected` (of an algorithm we compute) names another.
    fn mismatch(&self, expected: &str) -> Option<&str> {
        let own = match expected.split_once(':').map(|(alg, _)| alg) {
            Some("sha256") => &self.sha256,
            Some("sha512") => &self.sha512,
            _ => return None,
        };
        (!own.eq_ignore_ascii_case(expected)).then_some(own.as_str())
    }
}

/// Whether a HEAD's answer leaves the manifest to be read with a GET: HEAD refused, or a
/// success without the digest a tag probe needs.
pub(crate) fn needs_get(image: &ImageRef, response: &Response) -> bool {
    response.status == StatusCode::METHOD_NOT_ALLOWED
        || (response.status.is_success() && announced_digest(response).is_none() && image.digest().is_none())
}

fn announced_digest(response: &Response) -> Option<String> {
    response.header(DOCKER_CONTENT_DIGEST).filter(|d| is_digest(d))
}

pub(crate) fn status_error(host: &str, response: &Response, insufficient_scope: bool, codes: &[String]) -> String {
    let mut message = format!("{host}: HTTP {}", response.status.as_u16());
    if response.status == StatusCode::BAD_REQUEST && response.plain_http && codes.is_empty() {
        message.push_str(
            " to a plain-HTTP request: a TLS server answers those so; speak HTTPS to it: plainHttp: false in \
             the registry config (with caFile or skipTlsVerify for a certificate not publicly trusted), or an \
             https:// URL in its hosts.toml (with ca or skip_verify)",
        );
    }
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

fn is_digest(value: &str) -> bool {
    value.split_once(':').is_some_and(|(alg, hex)| !alg.is_empty() && hex.len() >= 32)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    };
    use reqwest::header::HeaderMap;

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

    fn ok() -> Response {
        Response { status: StatusCode::OK, headers: HeaderMap::new(), plain_http: false }
    }

    fn settled(answer: Answer) -> Attempt {
        match answer {
            Answer::Settled(attempt) => attempt,
            Answer::CheckConfig { .. } => panic!("settled expected"),
        }
    }

    fn platform(s: &str) -> Platform {
        s.parse().expect("valid test platform")
    }

    #[test]
    fn an_index_must_cover_the_platforms() {
        let image = ImageRef::parse("r.example/app:1").expect("valid");
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let (amd64, arm64) = (platform("linux/amd64"), platform("linux/arm64"));
        let covered = settled(get_answer("r.example", &image, &ok(), index, std::slice::from_ref(&amd64)));
        assert_eq!(covered.state, State::Available);
        assert!(covered.digest.is_some_and(|d| d.starts_with("sha256:")), "the digest is computed from the body");
        let lacking = settled(get_answer("r.example", &image, &ok(), index, &[amd64, arm64]));
        assert_eq!(lacking.state, State::PlatformMissing);
        assert_eq!(lacking.error.as_deref(), Some("r.example: the index lacks linux/arm64 (it has linux/amd64)"));
        assert_eq!(settled(get_answer("r.example", &image, &ok(), b"[1]", &[])).state, State::UnknownError);
        assert_eq!(settled(get_answer("r.example", &image, &ok(), b"{}", &[])).state, State::UnknownError);
    }

    #[test]
    fn a_single_manifest_is_checked_against_its_config() {
        let image = ImageRef::parse("r.example/app:1").expect("valid");
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:c0"}}"#;
        let Answer::CheckConfig { available, config_digest } =
            get_answer("r.example", &image, &ok(), manifest, &[platform("linux/amd64")])
        else {
            panic!("a single manifest's config is to be read");
        };
        assert_eq!(config_digest, "sha256:c0");
        let runs_on = config_platform(br#"{"os":"linux","architecture":"arm64","rootfs":{}}"#).expect("a platform");
        let refused = single_platform_answer("r.example", available.clone(), &runs_on, &[platform("linux/amd64")]);
        assert_eq!(refused.state, State::PlatformMissing);
        assert!(refused.error.as_deref().is_some_and(|e| e.contains("linux/arm64 only")), "{refused:?}");
        let fine = single_platform_answer("r.example", available, &runs_on, &[platform("linux/arm64/v8")]);
        assert_eq!(fine.state, State::Available);
        assert!(config_platform(b"not json").is_none());
    }

    #[test]
    fn a_content_type_that_is_no_manifest_type_is_refused() {
        let image = ImageRef::parse("r.example/app:1").expect("valid");
        let answer = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", content_type.parse().expect("valid"));
            head_answer("r.example", &image, &Response { status: StatusCode::OK, headers, plain_http: false })
        };
        let refused = answer("text/html; charset=utf-8");
        assert_eq!(refused.state, State::UnsupportedManifest);
        assert!(refused.error.as_deref().is_some_and(|e| e.contains("served as text/html")), "{refused:?}");
        assert_eq!(answer("application/vnd.oci.image.index.v1+json").state, State::Available);
        assert_eq!(
            answer("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8").state,
            State::Available
        );
    }

    #[test]
    fn schema1_and_digest_mismatches_are_unsupported() {
        let image = ImageRef::parse("r.example/app:1").expect("valid");
        let schema1 = br#"{"schemaVersion":1,"name":"app","tag":"1","fsLayers":[]}"#;
        let refused = settled(get_answer("r.example", &image, &ok(), schema1, &[]));
        assert_eq!(refused.state, State::UnsupportedManifest);
        assert!(refused.error.as_deref().is_some_and(|e| e.contains("re-push")), "{refused:?}");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws".parse().expect("valid"),
        );
        let head = Response { status: StatusCode::OK, headers, plain_http: false };
        assert_eq!(head_answer("r.example", &image, &head).state, State::UnsupportedManifest);

        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let mut headers = HeaderMap::new();
        let wrong = format!("sha256:{}", "0".repeat(64));
        headers.insert(DOCKER_CONTENT_DIGEST, wrong.parse().expect("valid"));
        let lying = Response { status: StatusCode::OK, headers, plain_http: false };
        let mismatch = settled(get_answer("r.example", &image, &lying, body, &[]));
        assert_eq!(mismatch.state, State::UnsupportedManifest, "{mismatch:?}");
        assert!(mismatch.error.as_deref().is_some_and(|e| e.contains("does not match its digest")), "{mismatch:?}");
        let pinned = ImageRef::parse(&format!("r.example/app@{wrong}")).expect("valid");
        assert_eq!(settled(get_answer("r.example", &pinned, &ok(), body, &[])).state, State::UnsupportedManifest);
        assert_eq!(settled(get_answer("r.example", &image, &ok(), body, &[])).state, State::Available);
    }
}
