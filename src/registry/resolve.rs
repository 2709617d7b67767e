//! Resolving a reference on one host as containerd's resolver does: HEAD the manifest (GET when
//! the platforms must be read, HEAD is refused, or no digest came), authenticating as the
//! registry's challenge asks and remembering the scheme, so the steady state is one request.

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode, Url};

use super::auth::{Challenge, parse_challenge};
use super::client::{Host, KnownScheme};
use super::http::Exchange;
use super::manifest::{Answer, config_platform, get_answer, head_answer, needs_get, single_platform_answer};
use super::outcome::{Attempt, State};
use crate::credentials::Credential;
use crate::image::ImageRef;

impl Exchange<'_> {
    /// One endpoint's answer for `image`. `mirror_of` names the registry whose content a mirror
    /// is asked for (`?ns=`).
    pub(crate) async fn resolve(
        &mut self,
        host: &Host,
        image: &ImageRef,
        credential: Option<&Credential>,
        mirror_of: Option<&str>,
    ) -> Attempt {
        let url = match manifest_url(host, image, mirror_of) {
            Ok(url) => url,
            Err(attempt) => return attempt,
        };
        let repository = image.repository();
        // A token service that failed up front (learned from another repository's challenge)
        // is not this probe's answer: it asks the registry without a token, and the failure
        // counts only if the registry's own challenge names that realm again.
        let (mut authorization, upfront_failure) = match self.authorization(host, repository, credential).await {
            Ok(a) => (a, None),
            Err(failed) => (None, Some(failed)),
        };
        // With platforms to check, the body is needed: GET at once rather than HEAD then GET.
        let method = if self.platforms.is_empty() { Method::HEAD } else { Method::GET };
        let limit = if method == Method::GET { self.client.settings().max_body_bytes } else { 0 };
        let (mut response, mut body) =
            match self.send(host, method.clone(), url.clone(), authorization.as_deref(), limit).await {
                Ok(r) => r,
                Err(a) => return a,
            };
        if response.status == StatusCode::UNAUTHORIZED {
            let challenge = response.header(WWW_AUTHENTICATE.as_str()).and_then(|h| parse_challenge(&h));
            let retry_with = match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.client.tokens().remove(&host.name, repository, credential);
                    host.remember_scheme(KnownScheme::Bearer { realm: realm.clone(), service: service.clone() });
                    if let Some(UpfrontFailure { realm: failed_realm, attempt }) = upfront_failure
                        && failed_realm == realm
                    {
                        return attempt;
                    }
                    match self.fetch_token(host, &realm, service.as_deref(), repository, credential).await {
                        Ok(token) => Some(format!("Bearer {token}")),
                        Err(attempt) => return attempt,
                    }
                }
                Some(Challenge::Basic) => {
                    host.remember_scheme(KnownScheme::Basic);
                    credential.and_then(Credential::basic_header).filter(|h| Some(h) != authorization.as_ref())
                }
                None => None,
            };
            if let Some(auth) = retry_with {
                authorization = Some(auth);
                (response, body) =
                    match self.send(host, method.clone(), url.clone(), authorization.as_deref(), limit).await {
                        Ok(r) => r,
                        Err(a) => return a,
                    };
            }
        }
        if method == Method::GET {
            let answer = get_answer(&host.name, image, &response, &body, self.platforms);
            return self.settle(host, image, answer, mirror_of, authorization.as_deref()).await;
        }
        if needs_get(image, &response) {
            let limit = self.client.settings().max_body_bytes;
            return match self.send(host, Method::GET, url, authorization.as_deref(), limit).await {
                Ok((response, body)) => {
                    let answer = get_answer(&host.name, image, &response, &body, self.platforms);
                    self.settle(host, image, answer, mirror_of, authorization.as_deref()).await
                }
                Err(attempt) => attempt,
            };
        }
        head_answer(&host.name, image, &response)
    }

    /// A single-platform manifest runs where its config says: the config blob is read once per
    /// digest (a digest's content never changes), so the steady state adds no request.
    async fn settle(
        &mut self,
        host: &Host,
        image: &ImageRef,
        answer: Answer,
        mirror_of: Option<&str>,
        authorization: Option<&str>,
    ) -> Attempt {
        let (available, config_digest) = match answer {
            Answer::Settled(attempt) => return attempt,
            Answer::CheckConfig { available, config_digest } => (available, config_digest),
        };
        let runs_on = match self.client.config_platforms().get(&config_digest) {
            Some(platform) => platform,
            None => {
                let url = match blob_url(host, image, &config_digest, mirror_of) {
                    Ok(url) => url,
                    Err(attempt) => return attempt,
                };
                let limit = self.client.settings().max_body_bytes;
                let body = match self.send(host, Method::GET, url, authorization, limit).await {
                    Ok((response, body)) if response.status.is_success() => body,
                    Ok((response, _)) => {
                        let error = format!(
                            "{}: the image's config blob {config_digest} answers HTTP {}",
                            host.name,
                            response.status.as_u16()
                        );
                        return Attempt { digest: available.digest, ..Attempt::failed(State::UnknownError, error) };
                    }
                    Err(attempt) => return attempt,
                };
                let Some(platform) = config_platform(&body) else {
                    // A config that names no platform (an artifact, not an image): the runtime
                    // does not refuse it on platform grounds either.
                    return available;
                };
                self.client.config_platforms().insert(config_digest, platform.clone());
                platform
            }
        };
        single_platform_answer(&host.name, available, &runs_on, self.platforms)
    }

    /// What to send up front: a cached token, a token fetched because the host is known to
    /// want one, or Basic for a host known to take it.
    async fn authorization(
        &mut self,
        host: &Host,
        repository: &str,
        credential: Option<&Credential>,
    ) -> Result<Option<String>, UpfrontFailure> {
        if let Some(Credential::Bearer(token)) = credential {
            return Ok(Some(format!("Bearer {token}")));
        }
        if let Some(token) = self.client.tokens().get(&host.name, repository, credential) {
            return Ok(Some(format!("Bearer {token}")));
        }
        match host.known_scheme() {
            Some(KnownScheme::Bearer { realm, service }) => {
                match self.fetch_token(host, &realm, service.as_deref(), repository, credential).await {
                    Ok(token) => Ok(Some(format!("Bearer {token}"))),
                    Err(attempt) => Err(UpfrontFailure { realm, attempt }),
                }
            }
            Some(KnownScheme::Basic) => Ok(credential.and_then(Credential::basic_header)),
            None => Ok(None),
        }
    }
}

/// A token fetched before asking, because the host was known to want one, that failed.
struct UpfrontFailure {
    realm: String,
    attempt: Attempt,
}

/// `<base>/<repository>/manifests/<tag or digest>`, with `?ns=` on a mirror.
fn manifest_url(host: &Host, image: &ImageRef, mirror_of: Option<&str>) -> Result<Url, Attempt> {
    let tail = format!("manifests/{}", image.manifest_reference());
    host.url(image.repository(), &tail, mirror_of).map_err(|e| Attempt::failed(State::UnknownError, e))
}

fn blob_url(host: &Host, image: &ImageRef, digest: &str, mirror_of: Option<&str>) -> Result<Url, Attempt> {
    host.url(image.repository(), &format!("blobs/{digest}"), mirror_of)
        .map_err(|e| Attempt::failed(State::UnknownError, e))
}
