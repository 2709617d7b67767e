//! The registry client: one HTTP client per registry host (its TLS settings and budgets),
//! shared token cache, and the counters the benchmarks and telemetry read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{DEFAULT_MAX_CONCURRENT, RegistryConfig, Transport};
use crate::error::{Error, Result};
use crate::image::host_and_port;
use crate::registry::auth::TokenCache;
use crate::registry::credentials::WorkingCredentials;
use crate::registry::destination::{Destinations, GuardedResolver, redirect_policy};
use crate::registry::limits::HostLimits;

/// Timeouts, retries and bounds for every registry call.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Whole request, body included: a registry that drips its body is `registry_unavailable`.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Further attempts after a 429, 5xx or transport failure.
    pub retries: u32,
    /// The longest `Retry-After` or backoff a probe waits for; longer ones end it as is.
    pub max_retry_wait: Duration,
    /// The longest a 429 pauses its repository and its registry, whatever `Retry-After` asked:
    /// `run` sets it to the probing window (docs/states.md, "One repository's 429").
    pub max_pause: Duration,
    /// Largest manifest, token or error body read.
    pub max_body_bytes: usize,
    /// Names resolved by this instead of the system resolver.
    pub resolver: Option<super::destination::NameResolver>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            max_retry_wait: Duration::from_secs(30),
            max_pause: Duration::from_secs(600),
            max_body_bytes: 4 << 20,
            resolver: None,
        }
    }
}

/// What one endpoint is: where its API lives and how it is spoken to. Endpoints with the same
/// spec share one [`Host`].
#[derive(Clone, Debug)]
pub(crate) struct HostSpec {
    /// `host[:port]`: names it in spans and metrics, and keys its request budget.
    pub name: String,
    /// Scheme, authority and API base path (`/v2`, or a hosts.toml `override_path`).
    pub base: reqwest::Url,
    pub transport: Transport,
    pub ca_pems: Vec<Vec<u8>>,
    pub skip_verify: bool,
    /// A client certificate and its key, PEM.
    pub identity: Option<Vec<u8>>,
    /// Sent on every request (hosts.toml `[header]`).
    pub headers: Vec<(String, String)>,
    /// hosts.toml `dial_timeout`: a shorter connect timeout than the client's.
    pub connect_timeout: Option<Duration>,
}

impl HostSpec {
    /// The cache key: the same base with other TLS material or headers is another client.
    fn key(&self) -> String {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        (&self.ca_pems, self.skip_verify, &self.identity, &self.headers, self.connect_timeout).hash(&mut hasher);
        format!("{}#{:?}#{:x}", self.base, self.transport, hasher.finish())
    }
}

/// How one registry endpoint (or token realm) is reached.
pub(crate) struct Host {
    pub name: String,
    pub http: reqwest::Client,
    base: reqwest::Url,
    transport: Transport,
    /// For [`Transport::HttpsThenHttp`]: plain HTTP, once HTTPS failed and HTTP answered.
    fell_back: std::sync::atomic::AtomicBool,
    pub headers: Vec<(String, String)>,
    /// The TLS material it was built with: its token realm is reached with the same.
    ca_pems: Vec<Vec<u8>>,
    skip_verify: bool,
    identity: Option<Vec<u8>>,
    pub limits: Arc<HostLimits>,
    /// What the host asked for last time, so later probes authenticate up front.
    scheme: Mutex<Option<KnownScheme>>,
}

impl Host {
    /// `<base>/<repository>/<tail>` in the scheme spoken now, with `?ns=<registry>` when this
    /// endpoint serves another registry's content (a mirror).
    pub fn url(&self, repository: &str, tail: &str, ns: Option<&str>) -> std::result::Result<reqwest::Url, String> {
        let mut url = self.current(self.base.clone());
        let path = format!("{}/{repository}/{tail}", self.base.path().trim_end_matches('/'));
        url.set_path(&path);
        if let Some(ns) = ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        if url.cannot_be_a_base() {
            return Err(format!("bad URL {url}"));
        }
        Ok(url)
    }

    pub fn known_scheme(&self) -> Option<KnownScheme> {
        self.scheme.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn remember_scheme(&self, scheme: KnownScheme) {
        *self.scheme.lock().unwrap_or_else(|p| p.into_inner()) = Some(scheme);
    }

    /// `server.address` and `server.port`: the port given, else the scheme's.
    pub fn address(&self) -> (&str, i64) {
        let (address, port) = host_and_port(&self.name);
        let default = if self.scheme() == "http" { 80 } else { 443 };
        (address, port.map_or(default, i64::from))
    }

    /// The scheme to speak now.
    pub fn scheme(&self) -> &'static str {
        match self.transport {
            Transport::Http => "http",
            Transport::Https => "https",
            Transport::HttpsThenHttp if self.fell_back.load(std::sync::atomic::Ordering::Relaxed) => "http",
            Transport::HttpsThenHttp => "https",
        }
    }

    /// Whether a failed HTTPS request to this host is tried again over plain HTTP.
    pub fn may_fall_back(&self, url: &reqwest::Url) -> bool {
        self.transport == Transport::HttpsThenHttp && url.scheme() == "https" && self.scheme() == "https"
    }

    /// `url` in the scheme the host speaks now: a URL made before the host fell back to plain
    /// HTTP (a HEAD's, reused for its GET) follows it.
    pub fn current(&self, mut url: reqwest::Url) -> reqwest::Url {
        if self.transport == Transport::HttpsThenHttp && self.scheme() == "http" && url.scheme() == "https" {
            let _ = url.set_scheme("http");
        }
        url
    }

    /// Plain HTTP answered where HTTPS failed: speak it from now on.
    pub fn fall_back(&self) {
        self.fell_back.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Clone, Debug)]
pub(crate) enum KnownScheme {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// The platform each image config blob names, by digest: content-addressed, so never stale.
#[derive(Default)]
pub(crate) struct ConfigPlatforms {
    by_digest: Mutex<HashMap<String, crate::platform::Platform>>,
}

/// Forgotten wholesale past this many: a config is re-read at worst.
const MAX_CONFIG_PLATFORMS: usize = 1 << 16;

impl ConfigPlatforms {
    pub fn get(&self, digest: &str) -> Option<crate::platform::Platform> {
        self.by_digest.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }

    pub fn insert(&self, digest: String, platform: crate::platform::Platform) {
        let mut by_digest = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if by_digest.len() >= MAX_CONFIG_PLATFORMS {
            by_digest.clear();
        }
        by_digest.insert(digest, platform);
    }
}

/// One finished HTTP request to a registry or token service, as the semantic conventions'
/// `http.client.request.duration` describes it.
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord<'a> {
    /// The endpoint's name (`host[:port]`), as `pullcheck.registry.requests` names it.
    pub host: &'a str,
    /// `server.address` and `server.port` (the scheme's port when none is written).
    pub address: &'a str,
    pub port: i64,
    pub method: &'a str,
    /// `None` when no answer came (connect, TLS, timeout).
    pub status: Option<u16>,
    /// What went wrong, as the request's span says it (`timeout`, `503`, …).
    pub error_type: Option<&'a str>,
    /// From sending to the last byte of the body read (or the failure).
    pub duration: Duration,
}

/// Told of every HTTP request once it has ended.
pub type RequestObserver = Arc<dyn Fn(&RequestRecord<'_>) + Send + Sync>;

/// Cheap to clone; every clone shares hosts, tokens and counters.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<RegistryConfig>,
    settings: ClientSettings,
    tokens: TokenCache,
    working: WorkingCredentials,
    config_platforms: ConfigPlatforms,
    /// Where requests may go: link-local addresses only for hosts the config names.
    destinations: Arc<Destinations>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// Request budgets per endpoint name, shared by every client of that name.
    limits: Mutex<HashMap<String, Arc<HostLimits>>>,
    requests: AtomicU64,
    observer: Option<RequestObserver>,
}

impl RegistryClient {
    pub fn new(config: Arc<RegistryConfig>, settings: ClientSettings) -> Self {
        Self::with_observer(config, settings, None)
    }

    pub fn with_observer(
        config: Arc<RegistryConfig>,
        settings: ClientSettings,
        observer: Option<RequestObserver>,
    ) -> Self {
        // reqwest is built without a rustls provider; ring is the process's one (no-op if set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let destinations = Arc::new(Destinations::new(config.configured_hosts().iter().map(String::as_str)));
        Self {
            inner: Arc::new(Inner {
                destinations,
                config,
                settings,
                tokens: TokenCache::default(),
                working: WorkingCredentials::default(),
                config_platforms: ConfigPlatforms::default(),
                hosts: Mutex::new(HashMap::new()),
                limits: Mutex::new(HashMap::new()),
                requests: AtomicU64::new(0),
                observer,
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    pub(crate) fn working_credentials(&self) -> &WorkingCredentials {
        &self.inner.working
    }

    pub(crate) fn config_platforms(&self) -> &ConfigPlatforms {
        &self.inner.config_platforms
    }

    pub(crate) fn destinations(&self) -> &Destinations {
        &self.inner.destinations
    }

    /// HTTP requests sent since the client was made (token fetches included).
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn observe_request(&self, record: &RequestRecord<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer(record);
        }
    }

    /// How long a registry (as named in references) still asked us to stay away.
    pub fn pause_remaining(&self, registry: &str) -> Option<Duration> {
        let limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits.get(crate::image::api_host(registry)).and_then(|l| l.pause_remaining())
    }

    /// The client for a token realm's host (`auth.example:443`), as containerd reaches it: with
    /// the TLS material and headers of the registry endpoint that named it, and whatever the
    /// registry config says of the realm's own host.
    pub(crate) fn realm_host(&self, authority: &str, scheme: &str, named_by: &Host) -> Result<Arc<Host>> {
        let config = self.inner.config.host(authority);
        let transport = if scheme == "http" { Transport::Http } else { Transport::Https };
        let base = reqwest::Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| Error::Endpoint { name: authority.to_string(), problem: e.to_string() })?;
        let mut ca_pems = named_by.ca_pems.clone();
        ca_pems.extend(config.ca_pem);
        self.host(HostSpec {
            name: authority.to_string(),
            base,
            transport,
            ca_pems,
            skip_verify: named_by.skip_verify || config.skip_tls_verify,
            identity: named_by.identity.clone(),
            headers: named_by.headers.clone(),
            connect_timeout: None,
        })
    }

    /// The client for an endpoint, built on first use.
    pub(crate) fn host(&self, spec: HostSpec) -> Result<Arc<Host>> {
        let key = spec.key();
        let mut hosts = self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(host) = hosts.get(&key) {
            return Ok(host.clone());
        }
        let host = Arc::new(self.build_host(spec)?);
        hosts.insert(key, host.clone());
        Ok(host)
    }

    fn limits_of(&self, name: &str) -> Arc<HostLimits> {
        let mut limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(name.to_string())
            .or_insert_with(|| {
                let config = self.inner.config.host(name);
                Arc::new(HostLimits::new(
                    config.max_concurrent_requests.unwrap_or(DEFAULT_MAX_CONCURRENT),
                    config.requests_per_second,
                ))
            })
            .clone()
    }

    fn build_host(&self, spec: HostSpec) -> Result<Host> {
        let name = &spec.name;
        let settings = &self.inner.settings;
        let builder = reqwest::Client::builder()
            .user_agent(concat!("pullcheck/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.request_timeout)
            .connect_timeout(
                spec.connect_timeout
                    .filter(|t| !t.is_zero())
                    .map_or(settings.connect_timeout, |t| t.min(settings.connect_timeout)),
            )
            // reqwest drops Authorization when a redirect leaves the scheme, host or port; the
            // policy and the resolver refuse link-local destinations before connecting.
            .redirect(redirect_policy(self.inner.destinations.clone()))
            .dns_resolver(Arc::new(GuardedResolver {
                destinations: self.inner.destinations.clone(),
                resolver: settings.resolver.clone(),
            }))
            .connector_layer(super::phases::TimedConnect)
            .tls_info(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .tls_backend_preconfigured(super::tls::client_config(
                name,
                &spec.ca_pems,
                spec.skip_verify,
                spec.identity.as_deref(),
            )?);
        let http =
            builder.build().map_err(|source| Error::HttpClient { what: format!("HTTP client for {name}"), source })?;
        Ok(Host {
            limits: self.limits_of(name),
            name: spec.name,
            http,
            base: spec.base,
            transport: spec.transport,
            fell_back: std::sync::atomic::AtomicBool::new(false),
            headers: spec.headers,
            ca_pems: spec.ca_pems,
            skip_verify: spec.skip_verify,
            identity: spec.identity,
            scheme: Mutex::new(None),
        })
    }
}
