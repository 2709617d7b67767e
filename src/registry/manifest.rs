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

/// The part of a manifest or index a probe reads.
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

/// A HEAD's answer: the state its status means, with the digest the registry announced.
pub(crate) fn head_answer(host: &str, image: &ImageRef, response: &Response) -> Attempt {
    let insufficient_scope = response.insufficient_scope();
    let state = classify_status(response.status.as_u16(), &[], insufficient_scope);
    let retry_after = response.retry_after();
    if state == State::Available {
        let digest = image.digest().map(str::to_string).or_else(|| announced_digest(response));
        let media_type = response.header("content-type");
        return Attempt { state, digest, media_type, error: None, retry_after };
    }
    Attempt { retry_after, ..Attempt::failed(state, status_error(host, response.status, insufficient_scope, &[])) }
}

/// A GET's answer: the error it is, or the manifest, its digest, and whether an index covers
/// `platforms`.
pub(crate) fn get_answer(
    host: &str,
    image: &ImageRef,
    response: &Response,
    body: &[u8],
    platforms: &[Platform],
) -> Attempt {
    let insufficient_scope = response.insufficient_scope();
    let retry_after = response.retry_after();
    if !response.status.is_success() {
        let codes = error_codes(body);
        let state = classify_status(response.status.as_u16(), &codes, insufficient_scope);
        let error = status_error(host, response.status, insufficient_scope, &codes);
        return Attempt { retry_after, ..Attempt::failed(state, error) };
    }
    let head: ManifestHead = match serde_json::from_slice(body) {
        Ok(h) => h,
        Err(e) => return Attempt::failed(State::UnknownError, format!("{host}: manifest is not JSON: {e}")),
    };
    if head.schema_version.is_none() && head.media_type.is_none() {
        return Attempt::failed(State::UnknownError, format!("{host}: answer is not an image manifest"));
    }
    let computed = format!("sha256:{}", hex(&sha2::Sha256::digest(body)));
    let digest = announced_digest(response).unwrap_or(computed);
    let media_type = head.media_type.or_else(|| response.header("content-type"));
    let digest = Some(image.digest().map_or(digest, str::to_string));
    if let Some(entries) = head.manifests.filter(|_| !platforms.is_empty()) {
        let offered: Vec<Platform> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
            .collect();
        let missing = missing_platforms(platforms, &offered);
        if !missing.is_empty() {
            let list = |ps: Vec<String>| ps.join(", ");
            let error = format!(
                "{host}: the index lacks {} (it has {})",
                list(missing.iter().map(|p| p.to_string()).collect()),
                list(offered.iter().map(|p| p.to_string()).collect())
            );
            return Attempt { digest, media_type, ..Attempt::failed(State::PlatformMissing, error) };
        }
    }
    Attempt { state: State::Available, digest, media_type, error: None, retry_after: None }
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

pub(crate) fn status_error(host: &str, status: StatusCode, insufficient_scope: bool, codes: &[String]) -> String {
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
        Response { status: StatusCode::OK, headers: HeaderMap::new() }
    }

    #[test]
    fn an_index_must_cover_the_platforms() {
        let image = ImageRef::parse("r.example/app:1").expect("valid");
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let amd64: Platform = "linux/amd64".parse().expect("valid");
        let arm64: Platform = "linux/arm64".parse().expect("valid");
        let covered = get_answer("r.example", &image, &ok(), index, std::slice::from_ref(&amd64));
        assert_eq!(covered.state, State::Available);
        assert!(covered.digest.is_some_and(|d| d.starts_with("sha256:")), "the digest is computed from the body");
        let lacking = get_answer("r.example", &image, &ok(), index, &[amd64, arm64]);
        assert_eq!(lacking.state, State::PlatformMissing);
        assert_eq!(lacking.error.as_deref(), Some("r.example: the index lacks linux/arm64 (it has linux/amd64)"));
        assert_eq!(get_answer("r.example", &image, &ok(), b"[1]", &[]).state, State::UnknownError);
        assert_eq!(get_answer("r.example", &image, &ok(), b"{}", &[]).state, State::UnknownError);
    }
}
