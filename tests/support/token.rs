//! A token issuer for the registry's `auth: token` mode: answers
//! `GET /token?service=…&scope=repository:NAME:pull` with an RS256 JWT carrying an `x5c` header,
//! as Docker Hub's and every distribution token service does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use super::http::{Reply, Server};

pub const SERVICE: &str = "pullcheck-test-registry";
pub const ISSUER: &str = "pullcheck-test-issuer";

/// What a user may do with any repository.
#[derive(Clone, Copy)]
pub enum Grant {
    Pull,
    /// Authenticated, but the token carries no actions: the registry answers `insufficient_scope`.
    Nothing,
}

pub struct TokenIssuer {
    pub server: Server,
    pub requests: Arc<AtomicUsize>,
}

impl TokenIssuer {
    /// Anonymous callers may pull repositories under `public/` only.
    pub async fn start(key_pkcs8: &[u8], cert_der: &[u8], users: &[(&str, &str, Grant)]) -> TokenIssuer {
        let key = Arc::new(RsaKeyPair::from_pkcs8(key_pkcs8).expect("signing key"));
        let x5c = STANDARD.encode(cert_der);
        let users: Arc<HashMap<String, (String, Grant)>> =
            Arc::new(users.iter().map(|(u, p, g)| (u.to_string(), (p.to_string(), *g))).collect());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let server = Server::start("127.0.0.1:0", move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            let (key, users, x5c) = (key.clone(), users.clone(), x5c.clone());
            async move {
                let subject = match req.header("authorization") {
                    None => None,
                    Some(h) => {
                        let decoded = h
                            .strip_prefix("Basic ")
                            .and_then(|b| STANDARD.decode(b).ok())
                            .and_then(|d| String::from_utf8(d).ok());
                        let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                            return Reply::status(401);
                        };
                        match users.get(user) {
                            Some((p, grant)) if p == pass => Some((user.to_string(), *grant)),
                            _ => {
                                return Reply::json(
                                    401,
                                    &serde_json::json!({"details": "incorrect username or password"}),
                                );
                            }
                        }
                    }
                };
                let scope = req.query("scope").unwrap_or_default();
                let mut access = Vec::new();
                if let Some(name) = scope.strip_prefix("repository:").and_then(|s| s.strip_suffix(":pull")) {
                    let actions = match subject {
                        Some((_, Grant::Pull)) => vec!["pull"],
                        Some((_, Grant::Nothing)) => vec![],
                        None if name.starts_with("public/") => vec!["pull"],
                        None => vec![],
                    };
                    access.push(serde_json::json!({"type": "repository", "name": name, "actions": actions}));
                }
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
                let claims = serde_json::json!({
                    "iss": ISSUER, "sub": subject.map(|(u, _)| u).unwrap_or_default(), "aud": SERVICE,
                    "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_id()),
                    "access": access,
                });
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let signing_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header.to_string()),
                    URL_SAFE_NO_PAD.encode(claims.to_string())
                );
                let mut signature = vec![0u8; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
                    .expect("sign");
                let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
                Reply::json(200, &serde_json::json!({"token": token, "expires_in": 300}))
            }
        })
        .await;
        TokenIssuer { server, requests }
    }

    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn rand_id() -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
    u64::from_le_bytes(bytes)
}

/// A pull token the issuer at `realm` really grants alice for `repository`: what the suites
/// look for in everything pullcheck writes.
pub async fn granted(realm: &str, repository: &str) -> String {
    let answer: serde_json::Value = reqwest::Client::new()
        .get(realm)
        .query(&[("service", SERVICE), ("scope", &format!("repository:{repository}:pull"))])
        .basic_auth(super::USER, Some(super::PASSWORD))
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    answer["token"].as_str().expect("a token").to_string()
}
