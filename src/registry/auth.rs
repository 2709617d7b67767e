//! Registry authentication: `WWW-Authenticate` challenges and the token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::credentials::Credential;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, error: Option<String> },
}

impl Challenge {
    pub fn insufficient_scope(&self) -> bool {
        matches!(self, Challenge::Bearer { error: Some(e), .. } if e == "insufficient_scope")
    }
}

/// Parses the first challenge of a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_auth_params(rest);
    let get = |k: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), error: get("error") })
    } else {
        None
    }
}

/// `key=value` or `key="quoted, with \"escapes\""` pairs separated by commas.
fn parse_auth_params(input: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.trim().is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        params.push((key.trim().to_string(), value));
    }
    params
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    host: String,
    repository: String,
    credential: Option<Credential>,
}

/// Bearer tokens per (registry host, repository, credential) until they expire: a steady-state
/// probe is one request. Keyed by credential so one namespace's token never serves another.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

/// Entries are pruned of expired tokens whenever the map grows past this.
const PRUNE_AT: usize = 4096;

impl TokenCache {
    pub fn get(&self, host: &str, repository: &str, credential: Option<&Credential>) -> Option<String> {
        let key = TokenKey { host: host.into(), repository: repository.into(), credential: credential.cloned() };
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(&key).filter(|(_, expiry)| *expiry > Instant::now()).map(|(t, _)| t.clone())
    }

    pub fn insert(&self, host: &str, repository: &str, credential: Option<&Credential>, token: String, ttl: Duration) {
        let key = TokenKey { host: host.into(), repository: repository.into(), credential: credential.cloned() };
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= PRUNE_AT {
            tokens.retain(|_, (_, expiry)| *expiry > now);
        }
        tokens.insert(key, (token, now + ttl));
    }

    pub fn remove(&self, host: &str, repository: &str, credential: Option<&Credential>) {
        let key = TokenKey { host: host.into(), repository: repository.into(), credential: credential.cloned() };
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }
}

/// How long to use a token: its lifetime less a margin for clock skew and request time,
/// with the distribution spec's 60 s when the issuer says nothing.
pub fn token_ttl(expires_in: Option<u64>) -> Duration {
    let secs = expires_in.filter(|s| *s > 0).unwrap_or(60);
    let margin = (secs / 10).clamp(1, 30);
    Duration::from_secs(secs.saturating_sub(margin).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                error: None
            })
        );
    }

    #[test]
    fn insufficient_scope_and_escapes() {
        let c = parse_challenge(r#"bearer realm="https://a/t?x=\"y\"", error="insufficient_scope""#).expect("parses");
        assert!(c.insufficient_scope());
        assert!(matches!(c, Challenge::Bearer { realm, .. } if realm == r#"https://a/t?x="y""#));
    }

    #[test]
    fn basic_and_garbage() {
        assert_eq!(parse_challenge(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer"), None, "a bearer challenge without realm is unusable");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge("Bearer =,=,\"\"\\"), None);
    }

    #[test]
    fn token_cache_is_per_credential() {
        let cache = TokenCache::default();
        let alice = Credential::basic("alice", "a");
        cache.insert("r", "app", Some(&alice), "t1".into(), Duration::from_secs(60));
        assert_eq!(cache.get("r", "app", Some(&alice)), Some("t1".into()));
        assert_eq!(cache.get("r", "app", None), None);
        assert_eq!(cache.get("r", "app", Some(&Credential::basic("alice", "b"))), None);
        assert_eq!(cache.get("r", "other", Some(&alice)), None);
        cache.insert("r", "app", None, "t2".into(), Duration::ZERO);
        assert_eq!(cache.get("r", "app", None), None, "expired tokens are not served");
    }

    #[test]
    fn ttl_keeps_a_margin() {
        assert_eq!(token_ttl(None), Duration::from_secs(54));
        assert_eq!(token_ttl(Some(300)), Duration::from_secs(270));
        assert_eq!(token_ttl(Some(1)), Duration::from_secs(1));
        assert_eq!(token_ttl(Some(3600)), Duration::from_secs(3570));
    }
}
