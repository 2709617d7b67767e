//! One registry request: within the host's budget, in its own CLIENT span (semantic
//! conventions' HTTP client attributes), with its body read up to a bound. Every request of a
//! probe — HEAD, GET, token fetch — goes through [`Exchange::send`].

use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use tracing::{Instrument, field};

use super::auth::parse_challenge;
use super::client::{Host, RegistryClient, RequestRecord};
use super::destination::refused_in;
use super::limits::parse_retry_after;
use super::manifest::MANIFEST_ACCEPT;
use super::outcome::{Attempt, State};
use super::rate_limit::RateLimit;
use crate::image::host_and_port;
use crate::platform::Platform;

/// Tokens and error documents are small; anything bigger is not what we asked for.
pub(crate) const MAX_SMALL_BODY: usize = 256 << 10;

/// The requests of one probe, counted for its result.
pub(crate) struct Exchange<'a> {
    pub client: &'a RegistryClient,
    pub requests: u32,
    /// The last pull budget a host announced in this probe, and which host.
    pub rate_limit: Option<(String, RateLimit)>,
    /// Platforms an index must cover; none: any manifest will do, and HEAD is enough.
    pub platforms: &'a [Platform],
}

/// A response's status and headers; the body is returned beside it.
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Sent over plain HTTP: a TLS server answers that with a bare 400.
    pub plain_http: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name)
    }

    /// The registry's `WWW-Authenticate` says the token lacks the pull scope.
    pub fn insufficient_scope(&self) -> bool {
        self.header(WWW_AUTHENTICATE.as_str()).and_then(|h| parse_challenge(&h)).is_some_and(|c| c.insufficient_scope())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.header(RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v, SystemTime::now()))
    }
}

/// A request that got no usable answer; `try_plain_http` when a host that may fall back is
/// worth asking over plain HTTP (containerd's `NewHTTPFallback`): the TLS handshake failed
/// because the peer answered in plain HTTP, or, for a host written without a port, HTTPS could
/// not connect (refused or timed out: plain HTTP is on another port, 80).
struct Failed {
    attempt: Attempt,
    /// The span's `error.type`: a short, low-cardinality name of what went wrong.
    error_type: &'static str,
    /// The status, when the failure came after the headers (a body cut short or too large).
    status: Option<u16>,
    try_plain_http: bool,
    /// The TLS handshake was answered in plain HTTP: the peer speaks it, so what plain HTTP
    /// then gives is the answer, not the handshake's failure.
    plain_http_peer: bool,
}

/// containerd falls back to plain HTTP only when the TLS error shows a plain-HTTP server (Go's
/// "first record does not look like a TLS handshake"); rustls says so as an invalid message. A
/// certificate the host does not trust is not a reason to drop TLS.
fn answered_in_plain_http(error: &reqwest::Error) -> bool {
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidMessage(_));
        }
        // An io::Error's `source()` skips the error it wraps: step into it instead.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(wrapped) => Some(wrapped as &dyn std::error::Error),
            None => e.source(),
        };
    }
    false
}

/// The kind of the first I/O error in the cause chain.
fn io_kind_in(error: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// containerd's `isPortError`: the connection was refused or timed out.
fn refused_or_timed_out(error: &reqwest::Error) -> bool {
    if error.is_timeout() {
        return true;
    }
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut) {
                return true;
            }
            if let Some(wrapped) = io.get_ref() {
                next = Some(wrapped as &dyn std::error::Error);
                continue;
            }
        }
        next = e.source();
    }
    false
}

impl Exchange<'_> {
    /// Sends one request and reads at most `limit` bytes of its body (`0`: none; error bodies
    /// at most [`MAX_SMALL_BODY`]). A transport failure or an oversized body is the attempt's
    /// answer, ready to return. A host that may fall back (containerd 2.x) is asked over plain
    /// HTTP when HTTPS shows a plain-HTTP peer (or, written without a port, cannot connect), and
    /// spoken to that way from then on.
    pub async fn send(
        &mut self,
        host: &Host,
        method: Method,
        url: Url,
        authorization: Option<&str>,
        limit: usize,
    ) -> Result<(Response, Vec<u8>), Attempt> {
        let url = host.current(url);
        let fallback = host.may_fall_back(&url).then(|| {
            let mut plain = url.clone();
            let _ = plain.set_scheme("http");
            plain
        });
        match (self.send_once(host, method.clone(), url, authorization, limit).await, fallback) {
            (Ok(answer), _) => Ok(answer),
            (Err(https), Some(plain)) if https.try_plain_http => {
                match self.send_once(host, method, plain, authorization, limit).await {
                    Ok(answer) => {
                        host.fall_back();
                        Ok(answer)
                    }
                    // The peer speaks plain HTTP: its failure (a reset, a stall, a redirect loop)
                    // is what went wrong. Otherwise neither port answered, and HTTPS's failure
                    // says more (it is the scheme the host was reached by).
                    Err(plain) if https.plain_http_peer => Err(plain.attempt),
                    Err(_) => Err(https.attempt),
                }
            }
            (Err(failed), _) => Err(failed.attempt),
        }
    }

    async fn send_once(
        &mut self,
        host: &Host,
        method: Method,
        url: Url,
        authorization: Option<&str>,
        limit: usize,
    ) -> Result<(Response, Vec<u8>), Failed> {
        let plain_http = url.scheme() == "http";
        if let Err(refused) = self.client.destinations().check_url(&url) {
            let attempt = Attempt::failed(State::UnknownError, format!("{}: {refused}", host.name));
            return Err(Failed {
                attempt,
                error_type: "destination_refused",
                status: None,
                try_plain_http: false,
                plain_http_peer: false,
            });
        }
        let (address, port) = host.address();
        let span = tracing::info_span!(
            "http",
            otel.name = %method,
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
            server.address = address,
            server.port = port,
            http.response.status_code = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
            network.protocol.version = field::Empty,
            tls.protocol.version = field::Empty,
            pullcheck.http.connection.reused = field::Empty,
            pullcheck.dns.duration = field::Empty,
            pullcheck.dns.addresses = field::Empty,
            pullcheck.http.connect.duration = field::Empty,
            pullcheck.tcp.connect.duration = field::Empty,
            pullcheck.tls.handshake.duration = field::Empty,
            pullcheck.http.response.wait = field::Empty,
        );
        let _permit = host.limits.acquire().instrument(span.clone()).await;
        self.requests += 1;
        self.client.count_request();
        let mut request = host.http.request(method.clone(), url).header(ACCEPT, MANIFEST_ACCEPT);
        for (name, value) in &host.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(auth) = authorization {
            request = request.header(AUTHORIZATION, auth);
        }
        let started = std::time::Instant::now();
        let result = async {
            let (sent, phases) = super::phases::measured(request.send()).await;
            record_phases(&phases, sent.as_ref().ok(), started.elapsed());
            let mut response = sent.map_err(|e| {
                let plain_http_peer = answered_in_plain_http(&e);
                Failed {
                    try_plain_http: plain_http_peer
                        || (host_and_port(&host.name).1.is_none() && e.is_connect() && refused_or_timed_out(&e)),
                    plain_http_peer,
                    error_type: error_type(&e),
                    status: None,
                    attempt: transport_error(&host.name, &e),
                }
            })?;
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", i64::from(status.as_u16()));
            let headers = response.headers().clone();
            if let Some(budget) = RateLimit::from_headers(&headers) {
                self.rate_limit = Some((host.name.clone(), budget));
            }
            let mut body = Vec::new();
            let read_limit = if status.is_success() { limit } else { limit.min(MAX_SMALL_BODY) };
            if method != Method::HEAD && read_limit > 0 {
                let declared = header(&headers, CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<usize>().ok());
                if declared.is_some_and(|l| l > read_limit) {
                    return Err(too_large(&host.name, read_limit, status.as_u16()));
                }
                let chunk_error = |e: reqwest::Error| Failed {
                    try_plain_http: false,
                    plain_http_peer: false,
                    error_type: error_type(&e),
                    status: Some(status.as_u16()),
                    attempt: transport_error(&host.name, &e),
                };
                while let Some(chunk) = response.chunk().await.map_err(chunk_error)? {
                    if body.len() + chunk.len() > read_limit {
                        return Err(too_large(&host.name, read_limit, status.as_u16()));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok((Response { status, headers, plain_http }, body))
        }
        .instrument(span.clone())
        .await;
        let (status, error_type) = match &result {
            Ok((response, _)) => {
                let code = response.status.as_u16();
                (Some(code), (code >= 400).then(|| response.status.as_str()))
            }
            Err(failed) => (failed.status, Some(failed.error_type)),
        };
        self.client.observe_request(&RequestRecord {
            host: &host.name,
            address,
            port,
            method: method.as_str(),
            status,
            error_type,
            duration: started.elapsed(),
        });
        // Semantic conventions: a CLIENT span without a response, or with a 4xx or 5xx, has
        // status Error and says why in a few words (docs/telemetry.md, "Spans").
        match &result {
            Err(failed) => {
                span.record("error.type", failed.error_type);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", failed.attempt.error.as_deref().unwrap_or(failed.error_type));
            }
            Ok((response, _)) if response.status.as_u16() >= 400 => {
                span.record("error.type", response.status.as_str());
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", format!("HTTP {}", response.status.as_u16()));
            }
            Ok(_) => {}
        }
        result
    }
}

/// The request's phases on its span (docs/telemetry.md, "Where a slow request spent its time"):
/// what was measured, nothing guessed — a reused connection has no lookup and no connect.
fn record_phases(
    phases: &super::phases::Phases,
    response: Option<&reqwest::Response>,
    to_headers: std::time::Duration,
) {
    let span = tracing::Span::current();
    if let Some(dns) = phases.dns {
        span.record("pullcheck.dns.duration", dns.as_secs_f64());
        let addresses: Vec<String> = phases.addresses.iter().map(|a| a.ip().to_string()).collect();
        span.record("pullcheck.dns.addresses", addresses.join(","));
    }
    if let Some(connect) = phases.connect {
        span.record("pullcheck.http.connect.duration", connect.as_secs_f64());
    }
    if let Some(tcp) = phases.tcp() {
        span.record("pullcheck.tcp.connect.duration", tcp.as_secs_f64());
    }
    if let Some(tls) = phases.tls {
        span.record("pullcheck.tls.handshake.duration", tls.as_secs_f64());
    }
    let Some(response) = response else { return };
    span.record("pullcheck.http.connection.reused", phases.connect.is_none());
    span.record("pullcheck.http.response.wait", phases.server_wait(to_headers).as_secs_f64());
    let http = match response.version() {
        reqwest::Version::HTTP_09 => "0.9",
        reqwest::Version::HTTP_10 => "1.0",
        reqwest::Version::HTTP_11 => "1.1",
        reqwest::Version::HTTP_2 => "2",
        reqwest::Version::HTTP_3 => "3",
        _ => "",
    };
    if !http.is_empty() {
        span.record("network.protocol.version", http);
    }
    let tls = response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|info| info.version());
    let tls = match tls {
        Some(reqwest::tls::Version::TLS_1_3) => "1.3",
        Some(reqwest::tls::Version::TLS_1_2) => "1.2",
        Some(_) => "other",
        None => "",
    };
    if !tls.is_empty() {
        span.record("tls.protocol.version", tls);
    }
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn too_large(host: &str, limit: usize, status: u16) -> Failed {
    let attempt = Attempt::failed(State::UnknownError, format!("{host}: response body larger than {limit} bytes"));
    Failed {
        attempt,
        error_type: "response_too_large",
        status: Some(status),
        try_plain_http: false,
        plain_http_peer: false,
    }
}

/// `error.type` of a request that got no answer: what kind of failure, in a word a backend can
/// group by (the semantic conventions' examples: `timeout`, `name_resolution_error`).
fn error_type(error: &reqwest::Error) -> &'static str {
    let (mut tls, mut dns) = (false, false);
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        tls |= e.downcast_ref::<rustls::Error>().is_some();
        dns |= e.to_string().contains("dns error");
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(wrapped) => Some(wrapped as &dyn std::error::Error),
            None => e.source(),
        };
    }
    if refused_in(error).is_some() {
        "destination_refused"
    } else if error.is_timeout() {
        "timeout"
    } else if tls {
        "tls_failure"
    } else if io_kind_in(error) == Some(std::io::ErrorKind::ConnectionReset) {
        "connection_reset"
    } else if dns {
        "name_resolution_error"
    } else if error.is_connect() {
        "connection_failed"
    } else if error.is_redirect() {
        "too_many_redirects"
    } else {
        "request_failed"
    }
}

/// Connect, DNS, TLS and timeouts: the registry cannot be reached. The cause chain is kept
/// (it says which), but reqwest's errors name only the URL, which carries no credential.
fn transport_error(host: &str, error: &reqwest::Error) -> Attempt {
    // A destination refused before connecting (a link-local redirect or address): not the
    // registry's being unreachable, and not worth retrying.
    if let Some(refused) = refused_in(error) {
        return Attempt::failed(State::UnknownError, format!("{host}: {refused}"));
    }
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
    } else if io_kind_in(error) == Some(std::io::ErrorKind::ConnectionReset) {
        "connection reset"
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
