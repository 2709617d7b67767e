//! A fault-injecting proxy in front of a real registry: what the registry cannot be made to do
//! (429, 5xx, slow and truncated bodies, resets, redirects, huge bodies) on demand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{Reply, Request, Server};

#[derive(Clone, Debug, Default)]
pub enum Fault {
    #[default]
    None,
    /// This status (with a `Retry-After` when given) instead of the registry's answer.
    Status { status: u16, retry_after: Option<String> },
    /// The registry's headers, then its body one byte per interval.
    Drip(Duration),
    /// Headers promising more body than is sent.
    Truncate,
    /// The connection closed without an answer.
    Reset,
    /// 307 to this base URL (same path).
    Redirect(String),
    /// A 200 with this many bytes of body.
    Huge(usize),
    /// HEAD answered 405, as some registries do.
    HeadNotAllowed,
    /// The registry's answer without `Docker-Content-Digest`.
    StripDigest,
    /// A 200 whose body is not a manifest.
    Garbage,
    /// A Docker schema 1 manifest (`application/vnd.docker.distribution.manifest.v1+prettyjws`,
    /// `schemaVersion: 1`) for HEAD and GET alike, with its own digest announced: what a registry
    /// still holding an image pushed by Docker before 1.10 serves (docker-registry 2.8 refuses
    /// to store one without a libtrust signature).
    Schema1,
    /// The registry's answer with `Docker-Content-Digest` replaced by this digest.
    WrongDigest(String),
    /// The registry's status and headers with this body instead of its own (GET; HEAD is
    /// forwarded as is): content corrupted between the registry and the client.
    Body(Vec<u8>),
    /// This whole answer instead of the registry's.
    Reply { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// The registry's answer, held back this long before its headers: a slow backend.
    Delay(Duration),
    /// The registry's answer with these headers set to these values.
    Headers(Vec<(String, String)>),
    /// The request forwarded without its `Authorization`: the registry keeps refusing a token
    /// its token service issued.
    DropAuthorization,
    /// Forwarded to this base URL instead: one host serving repositories from two registries.
    Upstream(String),
    /// 401 with this `WWW-Authenticate`, whatever the request carried.
    Challenge(String),
    /// The registry's headers and half its body (GET), then a connection reset.
    ResetAfterHeaders,
    /// Nothing at all, the connection held open: a registry that stopped answering.
    Stall,
    /// The registry's headers and half its body (GET), then nothing, the connection held open.
    StallMidBody,
    /// The registry's answer followed by this many more bytes than its `Content-Length` says.
    Overlong(usize),
    /// A 200 without `Content-Length` whose body never ends (GET).
    Endless,
    /// A 200 manifest answer with `Content-Encoding: gzip` and this body (GET).
    Gzip(Vec<u8>),
}

/// The schema 1 manifest [`Fault::Schema1`] serves.
pub fn schema1_manifest() -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 1,
        "name": "legacy/app",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
        "history": [{"v1Compatibility": "{\"id\":\"e45a5af57b00862e5ef5782a9925979a02ba2b12dff832fd0991335f4a11e5c5\"}"}],
        "signatures": [{"header": {"alg": "ES256"}, "signature": "c2lnbmF0dXJl", "protected": "e30"}]
    })
    .to_string()
    .into_bytes()
}

pub const SCHEMA1_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

impl Fault {
    /// Faults of the body reach the client only on GET: HEAD is refused so the client falls back.
    fn is_body_fault(&self) -> bool {
        matches!(
            self,
            Fault::Drip(_)
                | Fault::Truncate
                | Fault::Huge(_)
                | Fault::Garbage
                | Fault::HeadNotAllowed
                | Fault::ResetAfterHeaders
                | Fault::StallMidBody
                | Fault::Overlong(_)
                | Fault::Endless
                | Fault::Gzip(_)
        )
    }
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub authorization: bool,
}

pub struct FaultProxy {
    pub server: Server,
    /// The fault and how many more requests it applies to (`None`: all).
    state: Arc<Mutex<(Fault, Option<usize>)>>,
    /// Faults of one repository each (`/v2/<repository>/…`), before the proxy-wide one.
    repositories: Arc<Mutex<Vec<(String, Fault)>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        Self::start_on("127.0.0.1:0", upstream).await
    }

    pub async fn start_on(bind: &str, upstream: String) -> FaultProxy {
        let state: Arc<Mutex<(Fault, Option<usize>)>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let repositories: Arc<Mutex<Vec<(String, Fault)>>> = Arc::default();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let (st, sn, repos) = (state.clone(), seen.clone(), repositories.clone());
        let server = Server::start(bind, move |req: Request| {
            sn.lock().expect("lock").push(Seen {
                method: req.method.clone(),
                target: req.target.clone(),
                authorization: req.header("authorization").is_some(),
            });
            let of_repository = repos
                .lock()
                .expect("lock")
                .iter()
                .find(|(repository, _)| req.target.starts_with(&format!("/v2/{repository}/")))
                .map(|(_, fault)| fault.clone());
            let fault = if let Some(fault) = of_repository {
                fault
            } else {
                let mut s = st.lock().expect("lock");
                let fault = s.0.clone();
                match &mut s.1 {
                    Some(0) => Fault::None,
                    Some(n) => {
                        *n -= 1;
                        fault
                    }
                    None => fault,
                }
            };
            let (http, upstream) = (http.clone(), upstream.clone());
            async move { apply(fault, req, &http, &upstream).await }
        })
        .await;
        FaultProxy { server, state, repositories, seen }
    }

    /// Applies `fault` to every following request for `repository`, whatever the proxy-wide
    /// fault is.
    pub fn set_for_repository(&self, repository: &str, fault: Fault) {
        let mut repositories = self.repositories.lock().expect("lock");
        repositories.retain(|(r, _)| r != repository);
        repositories.push((repository.to_string(), fault));
    }

    /// Applies `fault` to every following request.
    pub fn set(&self, fault: Fault) {
        *self.state.lock().expect("lock") = (fault, None);
    }

    /// Applies `fault` to the next `n` requests only.
    pub fn set_for(&self, fault: Fault, n: usize) {
        *self.state.lock().expect("lock") = (fault, Some(n));
    }

    pub fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn apply(fault: Fault, req: Request, http: &reqwest::Client, upstream: &str) -> Reply {
    match &fault {
        Fault::Status { status, retry_after } => {
            let headers = retry_after.iter().map(|r| ("Retry-After".to_string(), r.clone())).collect();
            return Reply::Full { status: *status, headers, body: vec![] };
        }
        Fault::Reset => return Reply::Reset,
        Fault::Reply { status, headers, body } => {
            return Reply::Full { status: *status, headers: headers.clone(), body: body.clone() };
        }
        Fault::Stall => return Reply::Hang,
        Fault::Challenge(challenge) => {
            return Reply::Full {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), challenge.clone())],
                body: vec![],
            };
        }
        Fault::Redirect(base) => {
            return Reply::Full {
                status: 307,
                headers: vec![("Location".into(), format!("{base}{}", req.target))],
                body: vec![],
            };
        }
        f if f.is_body_fault() && req.method == "HEAD" => return Reply::status(405),
        Fault::Huge(n) => {
            return Reply::Full {
                status: 200,
                headers: vec![("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into())],
                body: vec![b' '; *n],
            };
        }
        Fault::Garbage => {
            return Reply::Full { status: 200, headers: vec![], body: b"<html>not a manifest</html>".to_vec() };
        }
        Fault::Endless => {
            let (sender, chunks) = tokio::sync::mpsc::channel(4);
            // Ends when the client hangs up: the server drops the receiver, the send fails.
            tokio::spawn(async move { while sender.send(vec![b' '; 64 << 10]).await.is_ok() {} });
            let headers = vec![("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into())];
            return Reply::Stream { status: 200, headers, chunks };
        }
        Fault::Gzip(body) => {
            let headers = vec![
                ("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()),
                ("Content-Encoding".into(), "gzip".into()),
            ];
            return Reply::Full { status: 200, headers, body: body.clone() };
        }
        Fault::Schema1 => {
            let body = schema1_manifest();
            let headers = vec![
                ("Content-Type".into(), SCHEMA1_MEDIA_TYPE.into()),
                ("Docker-Content-Digest".into(), super::registry::sha256(&body)),
            ];
            return Reply::Full { status: 200, headers, body };
        }
        _ => {}
    }
    if let Fault::Delay(delay) = &fault {
        tokio::time::sleep(*delay).await;
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let upstream = match &fault {
        Fault::Upstream(other) => other.as_str(),
        _ => upstream,
    };
    let mut forward = http.request(method, format!("{upstream}{}", req.target));
    for (k, v) in &req.headers {
        let dropped = matches!(fault, Fault::DropAuthorization) && k.eq_ignore_ascii_case("authorization");
        if !k.eq_ignore_ascii_case("host") && !dropped {
            forward = forward.header(k, v);
        }
    }
    let Ok(response) = forward.body(req.body.clone()).send().await else { return Reply::status(502) };
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(fault, Fault::StripDigest) || k.as_str() != "docker-content-digest")
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
        .collect();
    if let Fault::Headers(set) = &fault {
        for (name, value) in set {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.clone(), value.clone()));
        }
    }
    if let Fault::WrongDigest(digest) = &fault {
        for (k, v) in &mut headers {
            if k.eq_ignore_ascii_case("docker-content-digest") {
                *v = digest.clone();
            }
        }
    }
    let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    match fault {
        Fault::Body(replaced) if req.method != "HEAD" => Reply::Full { status, headers, body: replaced },
        Fault::Drip(delay) => Reply::Drip { status, headers, body, delay },
        Fault::Truncate => {
            let declared = body.len() + 100;
            Reply::Truncated { status, headers, body: body[..body.len() / 2].to_vec(), declared }
        }
        Fault::ResetAfterHeaders => {
            let declared = body.len();
            Reply::ResetAfter { status, headers, body: body[..body.len() / 2].to_vec(), declared }
        }
        Fault::StallMidBody => {
            let declared = body.len();
            Reply::Stall { status, headers, body: body[..body.len() / 2].to_vec(), declared }
        }
        Fault::Overlong(extra) => {
            let declared = body.len();
            let mut longer = body;
            longer.resize(declared + extra, b' ');
            Reply::Truncated { status, headers, body: longer, declared }
        }
        _ => Reply::Full { status, headers, body },
    }
}
