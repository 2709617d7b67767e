//! Bearer tokens from the realm a registry's challenge names (distribution's token protocol),
//! cached per (host, repository, credential).

use reqwest::{Method, Url};
use serde::Deserialize;

use super::auth::token_ttl;
use super::client::Host;
use super::http::{Exchange, MAX_SMALL_BODY};
use super::outcome::{Attempt, State};
use crate::credentials::Credential;

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Exchange<'_> {
    /// A pull token for `repository` on `registry`, fetched from `realm` with the credential.
    pub(crate) async fn fetch_token(
        &mut self,
        registry: &Host,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        credential: Option<&Credential>,
    ) -> Result<String, Attempt> {
        let mut url = Url::parse(realm)
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
        // Checked again before sending; here the error can say which registry named the realm.
        if let Err(refused) = self.client.destinations().check_url(&url) {
            let error = format!("token realm of {}: {refused}", registry.name);
            return Err(Attempt::failed(State::UnknownError, error));
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let realm_host = self
            .client
            .realm_host(&authority, url.scheme(), registry)
            .map_err(|e| Attempt::failed(State::UnknownError, e.to_string()))?;
        let basic = credential.and_then(Credential::basic_header);
        let (response, body) = self.send(&realm_host, Method::GET, url, basic.as_deref(), MAX_SMALL_BODY).await?;
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
        self.client.tokens().insert(
            &registry.name,
            repository,
            credential,
            token.clone(),
            token_ttl(parsed.expires_in),
        );
        Ok(token)
    }
}
