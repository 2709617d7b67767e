//! containerd registry hosts directories (`--hosts-dir`, containerd's `config_path`):
//! `DIR/<host>/hosts.toml`, resolved to the ordered endpoints the node's containerd would try.
//!
//! The semantics are containerd's (`core/remotes/docker/config/hosts.go`, `config_unix.go`,
//! `core/remotes/docker/resolver.go`, `registry.go`); docs/registry-config.md states them. Every
//! file is read by [`HostsDir::load`]: probes never touch the disk.
//!
//! Deliberate differences, all on broken input: containerd logs a `hosts.toml` that does not
//! parse and falls back to the directory's docker-style certificate files, and fails a pull when a
//! referenced file cannot be read; here both are a [`HostsError`] at load, naming file and key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use toml::{Table, Value};

use crate::image::{DOCKER_HUB, DOCKER_HUB_API};

use super::read_bounded;

/// Largest `hosts.toml` read.
const MAX_HOSTS_TOML_BYTES: u64 = 1 << 20;
/// Largest CA, certificate or key file read.
pub(super) const MAX_PEM_BYTES: u64 = 4 << 20;
const HOSTS_TOML: &str = "hosts.toml";
/// The directory used for a registry that has none of its own.
pub const DEFAULT_HOST_DIR: &str = "_default";

/// What went wrong loading a hosts directory: `…/hosts.toml: host."https://m": ca: /x.pem: No
/// such file…`. The same shape as registries.conf's errors (one [`super::ConfigFileError`]).
pub type HostsError = super::ConfigFileError;

/// What an endpoint may be used for (containerd `HostCapabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    /// containerd's default for every entry, and the only value of a defaulted `server`.
    pub const ALL: Self = Self { pull: true, resolve: true, push: true };
    const NONE: Self = Self { pull: false, resolve: false, push: false };
}

/// One endpoint a registry's requests go to, in containerd's order.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Scheme, host, port and API base path: `/v2`-terminated, or the path as written with
    /// `override_path`. `https` when [`Self::http_fallback`] is set.
    pub url: Url,
    /// containerd's `RegistryHost.Host`: the URL's `host[:port]` exactly as written (not
    /// normalised), which containerd compares with the registry name to decide on `?ns=`.
    pub host: String,
    pub capabilities: Capabilities,
    /// CA bundles added to the system roots, in file order.
    pub ca_pems: Vec<Vec<u8>>,
    /// `Some(true)`: accept any certificate. `None`: not configured.
    pub skip_verify: Option<bool>,
    /// Client certificates, `(cert PEM, key PEM)`. A one-file entry has the whole file in both.
    pub client_identities: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sent on every request to this endpoint (containerd 2.1+: to its token realm too); a name
    /// may repeat.
    pub headers: Vec<(String, String)>,
    /// A `[host]` entry; `false` for the `server` (configured or default).
    pub is_mirror: bool,
    /// containerd's `NewHTTPFallback`: the entry is `http://` (port not 80) with TLS settings, so
    /// HTTPS is tried first and, on a TLS error that shows a plain-HTTP server (or a connection
    /// error when no port is written), the request is retried at [`Self::fallback_url`].
    pub http_fallback: bool,
    /// `dial_timeout`: connection timeout (containerd's default 30 s when `None`; zero: none).
    pub dial_timeout: Option<Duration>,
}

impl Endpoint {
    /// A tag is resolved only on endpoints with both `pull` and `resolve` (containerd
    /// `Resolve`: `filterHosts(HostCapabilityPull | HostCapabilityResolve)`, all bits required).
    pub fn resolves_tags(&self) -> bool {
        self.capabilities.pull && self.capabilities.resolve
    }

    /// A digest (manifest or blob) is fetched from every endpoint with `pull`.
    pub fn pulls_digests(&self) -> bool {
        self.capabilities.pull
    }

    /// containerd's `isProxy`: requests to this endpoint carry `?ns=<registry>` unless it is the
    /// registry itself (`docker.io` is itself at `registry-1.docker.io`).
    pub fn is_proxy_for(&self, registry: &str) -> bool {
        registry != self.host && !(registry == DOCKER_HUB && self.host == DOCKER_HUB_API)
    }

    /// The plain-HTTP base URL tried after a TLS failure, when [`Self::http_fallback`] is set.
    pub fn fallback_url(&self) -> Option<Url> {
        if !self.http_fallback {
            return None;
        }
        let mut url = self.url.clone();
        url.set_scheme("http").ok()?;
        if let Some(port) = split_host_port(&self.host).and_then(|(_, p)| p.parse::<u16>().ok()) {
            url.set_port(Some(port)).ok()?;
        }
        Some(url)
    }

    /// The URL of a request as containerd builds it: the base path joined with `tail`
    /// (`library/nginx/manifests/latest`), plus `ns=<registry>` when [`Self::is_proxy_for`].
    pub fn request_url(&self, registry: &str, tail: &str) -> Url {
        join_request(&self.url, self.is_proxy_for(registry).then_some(registry), tail)
    }

    /// [`Self::request_url`] on [`Self::fallback_url`].
    pub fn fallback_request_url(&self, registry: &str, tail: &str) -> Option<Url> {
        let base = self.fallback_url()?;
        Some(join_request(&base, self.is_proxy_for(registry).then_some(registry), tail))
    }
}

fn join_request(base: &Url, ns: Option<&str>, tail: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{}", base.path().trim_end_matches('/'), tail.trim_start_matches('/'));
    url.set_path(&path);
    if let Some(ns) = ns {
        url.query_pairs_mut().append_pair("ns", ns);
    }
    url
}

/// Key material stays out of logs: PEMs are counted, never printed.
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .field("host", &self.host)
            .field("capabilities", &self.capabilities)
            .field("ca_pems", &self.ca_pems.len())
            .field("skip_verify", &self.skip_verify)
            .field("client_identities", &self.client_identities.len())
            .field("headers", &self.headers)
            .field("is_mirror", &self.is_mirror)
            .field("http_fallback", &self.http_fallback)
            .field("dial_timeout", &self.dial_timeout)
            .finish()
    }
}

/// Every host directory under a `--hosts-dir`, loaded once.
#[derive(Clone, Debug, Default)]
pub struct HostsDir {
    root: PathBuf,
    dirs: HashMap<String, HostDir>,
}

/// One `DIR/<name>/`: its `[host]` entries, resolved, and its server, resolved per registry
/// (a defaulted server, as in `_default`, is the registry's own).
#[derive(Clone, Debug)]
struct HostDir {
    path: PathBuf,
    mirrors: Vec<Endpoint>,
    server: Option<Location>,
    server_settings: Settings,
}

#[derive(Clone, Debug)]
struct Location {
    host: String,
    url: Url,
}

/// containerd's `hostConfig` minus the location, with its files read. `Option`s keep
/// "configured" apart from "empty": any of `ca`, `client`, `skip_verify` set is explicit TLS.
#[derive(Clone, Default)]
struct Settings {
    capabilities: Option<Capabilities>,
    ca_pems: Option<Vec<Vec<u8>>>,
    client_identities: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    skip_verify: Option<bool>,
    headers: Vec<(String, String)>,
    dial_timeout: Option<Duration>,
    override_path: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("capabilities", &self.capabilities)
            .field("ca_pems", &self.ca_pems.as_ref().map(Vec::len))
            .field("client_identities", &self.client_identities.as_ref().map(Vec::len))
            .field("skip_verify", &self.skip_verify)
            .field("headers", &self.headers)
            .field("dial_timeout", &self.dial_timeout)
            .finish()
    }
}

impl HostsDir {
    /// Reads every directory under `dir`: its `hosts.toml`, or, when that is missing or empty,
    /// its docker-style certificate files (`*.crt`, `*.cert` + `*.key`), and every file they name.
    pub fn load(dir: &Path) -> Result<Self, HostsError> {
        let dir_err = |source| HostsError::Dir { dir: dir.to_path_buf(), source };
        let mut dirs = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            // containerd stats `DIR/<name>`, following symbolic links.
            let path = entry.path();
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else { continue };
            let host_dir = load_host_dir(&path)?;
            dirs.insert(name, host_dir);
        }
        Ok(Self { root: dir.to_path_buf(), dirs })
    }

    /// The directory containerd would use for `registry` (`host[:port]` as in canonical image
    /// references; Docker Hub is `docker.io`): `<host>_<port>_`, `<host>:<port>`, `_default`.
    pub fn host_directory(&self, registry: &str) -> Option<&Path> {
        self.lookup(registry).map(|d| d.path.as_path())
    }

    /// The endpoints containerd would try for `registry`, in order: the `[host]` entries in file
    /// order, then the server. `None` when neither the registry's directory nor `_default` exists.
    pub fn endpoints(&self, registry: &str) -> Option<Vec<Endpoint>> {
        let dir = self.lookup(registry)?;
        let mut endpoints = dir.mirrors.clone();
        let settings = &dir.server_settings;
        let server = match &dir.server {
            Some(location) => {
                Some(endpoint(location, settings, settings.capabilities.unwrap_or(Capabilities::ALL), false))
            }
            None => default_server(registry, settings),
        };
        endpoints.extend(server);
        Some(endpoints)
    }

    /// The hosts named here: each directory's (`host_port_` as `host:port`; not `_default`) and
    /// every endpoint's URL host.
    pub fn configured_hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for (name, dir) in &self.dirs {
            if name != DEFAULT_HOST_DIR {
                hosts.push(
                    name.strip_suffix('_').and_then(|n| n.rsplit_once('_')).map_or(name.clone(), |(h, _)| h.into()),
                );
            }
            let urls = dir.mirrors.iter().map(|e| &e.url).chain(dir.server.as_ref().map(|s| &s.url));
            hosts.extend(urls.filter_map(|u| u.host_str()).map(str::to_string));
        }
        hosts
    }

    /// A hosts directory holding one registry directory, `registry`'s, whose `hosts.toml` is
    /// `text`; files it names are resolved against `root/<registry>`, as [`Self::load`] would.
    /// The entry point of the fuzz target `hosts_toml` (docs/reliability.md, Fuzzing); not an API.
    #[doc(hidden)]
    pub fn from_hosts_toml(root: &Path, registry: &str, text: &str) -> Result<Self, HostsError> {
        let name = host_directory(registry);
        let dir = root.join(&name);
        let host_dir = parse_hosts_file(text, &dir.join(HOSTS_TOML), &dir)?;
        Ok(Self { root: root.to_path_buf(), dirs: HashMap::from([(name, host_dir)]) })
    }

    /// The directory given to [`Self::load`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lookup(&self, registry: &str) -> Option<&HostDir> {
        host_paths(registry).iter().find_map(|name| self.dirs.get(name))
    }
}

/// containerd `hostPaths` (config_unix.go): `host_port_` when the name has a port, the name as
/// is, then `_default`; the first that exists is used, whatever it holds.
fn host_paths(host: &str) -> Vec<String> {
    let mut paths = Vec::with_capacity(3);
    let with_port = host_directory(host);
    if with_port != host {
        paths.push(with_port);
    }
    paths.push(host.to_string());
    paths.push(DEFAULT_HOST_DIR.to_string());
    paths
}

/// containerd `hostDirectory`: the last `:` (not at the start) becomes `_`, and `_` is appended.
fn host_directory(host: &str) -> String {
    match host.rfind(':') {
        Some(i) if i > 0 => format!("{}_{}_", &host[..i], &host[i + 1..]),
        _ => host.to_string(),
    }
}

/// containerd `loadHostDir`: `hosts.toml` when present and not empty, else certificate files.
fn load_host_dir(dir: &Path) -> Result<HostDir, HostsError> {
    let file = dir.join(HOSTS_TOML);
    let bytes = match read_bounded(&file, MAX_HOSTS_TOML_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(HostsError::File { file, problem: e.to_string() }),
    };
    if bytes.is_empty() {
        let server_settings = load_cert_files(dir)?;
        return Ok(HostDir { path: dir.to_path_buf(), mirrors: Vec::new(), server: None, server_settings });
    }
    let text =
        String::from_utf8(bytes).map_err(|_| HostsError::File { file: file.clone(), problem: "not UTF-8".into() })?;
    parse_hosts_file(&text, &file, dir)
}

/// containerd `loadCertFiles`, Docker's layout: `*.crt` are CAs, `*.cert` client certificates
/// with the key in the same-named `*.key`, else in the certificate file. Name order.
fn load_cert_files(dir: &Path) -> Result<Settings, HostsError> {
    let dir_err = |source| HostsError::Dir { dir: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        // Like Go's DirEntry.IsDir: a symbolic link is not a directory here.
        if entry.file_type().map_err(dir_err)?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    let read = |path: &Path| {
        read_bounded(path, MAX_PEM_BYTES)
            .map_err(|e| HostsError::File { file: path.to_path_buf(), problem: e.to_string() })
    };
    let mut settings = Settings::default();
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(".crt") {
            let pem = read(&path)?;
            if !is_cert_pem(&pem) {
                return Err(HostsError::File { file: path, problem: "no PEM certificate in it".into() });
            }
            settings.ca_pems.get_or_insert_with(Vec::new).push(pem);
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let cert = read(&path)?;
            let key_path = dir.join(format!("{stem}.key"));
            let key = match std::fs::metadata(&key_path) {
                Ok(_) => read(&key_path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert.clone(),
                Err(e) => return Err(HostsError::File { file: key_path, problem: e.to_string() }),
            };
            check_identity(&cert, &key).map_err(|problem| HostsError::File { file: path.clone(), problem })?;
            settings.client_identities.get_or_insert_with(Vec::new).push((cert, key));
        }
    }
    Ok(settings)
}

/// Where one entry's fields come from, for errors and relative paths.
struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
    /// `host."https://m"` for a `[host]` entry, empty for the top level.
    table: String,
}

impl Ctx<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> HostsError {
        let key = if self.table.is_empty() { key.to_string() } else { format!("{}: {key}", self.table) };
        HostsError::Key { file: self.file.to_path_buf(), key, problem: problem.into() }
    }

    fn read_pem(&self, key: &str, path: &str) -> Result<Vec<u8>, HostsError> {
        let full = make_abs_path(path, self.base);
        read_bounded(&full, MAX_PEM_BYTES).map_err(|e| {
            let hint = if path.is_empty() {
                " (an empty path is the hosts.toml directory itself, as containerd joins it)"
            } else {
                ""
            };
            self.err(key, format!("{}: {e}{hint}", full.display()))
        })
    }
}

/// containerd `parseHostsFile`: the `[host]` tables in the order of their headers, then the
/// top level as the server. Unknown keys are ignored (go-toml's `Unmarshal`, not strict).
fn parse_hosts_file(text: &str, file: &Path, base: &Path) -> Result<HostDir, HostsError> {
    let root: Table = toml::from_str(text).map_err(|e| HostsError::File {
        file: file.to_path_buf(),
        problem: format!("not valid TOML: {}", describe_toml_error(text, &e)),
    })?;
    let top = Ctx { file, base, table: String::new() };
    let hosts = match field(&root, "host") {
        None => None,
        Some(Value::Table(t)) => Some(t),
        Some(_) => return Err(top.err("host", "must be a table of [host.\"<url>\"] tables")),
    };
    let mut mirrors = Vec::new();
    for name in host_table_order(text) {
        let ctx = Ctx { file, base, table: format!("host.{}", quote_key(&name)) };
        let empty = Table::new();
        let table = match hosts.and_then(|h| h.get(&name)) {
            None => &empty,
            Some(Value::Table(t)) => t,
            Some(_) => return Err(ctx.err("(table)", "must be a table")),
        };
        let settings = parse_settings(table, &ctx)?;
        let location = parse_location(&name, settings.override_path).map_err(|p| ctx.err("(url)", p))?;
        let caps = settings.capabilities.unwrap_or(Capabilities::ALL);
        mirrors.push(endpoint(&location, &settings, caps, true));
    }
    // Tables under `host` with no `[host."…"]` header (dotted keys, inline tables) are parsed
    // by containerd but never used; they are still type-checked here.
    if let Some(hosts) = hosts {
        for (name, value) in hosts {
            let ctx = Ctx { file, base, table: format!("host.{}", quote_key(name)) };
            match value {
                Value::Table(t) => parse_settings_types(t, &ctx)?,
                _ => return Err(ctx.err("(table)", "must be a table")),
            }
        }
    }
    let server_settings = parse_settings(&root, &top)?;
    let server = match field(&root, "server") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            Some(parse_location(s, server_settings.override_path).map_err(|p| top.err("server", p))?)
        }
        Some(_) => return Err(top.err("server", "must be a string")),
    };
    Ok(HostDir { path: base.to_path_buf(), mirrors, server, server_settings })
}

/// A field by name as go-toml finds it: the exact key, else one equal in lower case.
fn field<'t>(table: &'t Table, name: &str) -> Option<&'t Value> {
    table.get(name).or_else(|| table.iter().find(|(k, _)| k.to_lowercase() == name).map(|(_, v)| v))
}

fn quote_key(key: &str) -> String {
    format!("{key:?}")
}

/// The type checks of [`parse_settings`] without reading files, for entries containerd ignores.
fn parse_settings_types(table: &Table, ctx: &Ctx<'_>) -> Result<(), HostsError> {
    parse_capabilities(table, ctx)?;
    for key in ["ca", "client", "header"] {
        if let Some(v) = field(table, key) {
            let ok = match key {
                "ca" => string_or_strings(v).is_some(),
                "client" => client_paths(v).is_some(),
                _ => matches!(v, Value::Table(_)),
            };
            if !ok {
                return Err(ctx.err(key, "has the wrong type"));
            }
        }
    }
    bool_field(table, "skip_verify", ctx)?;
    bool_field(table, "override_path", ctx)?;
    Ok(())
}

/// containerd `parseHostConfig`, all but the URL: capabilities (none listed: all), `ca`,
/// `client`, `skip_verify`, `header`, `override_path`, `dial_timeout`.
fn parse_settings(table: &Table, ctx: &Ctx<'_>) -> Result<Settings, HostsError> {
    let mut settings = Settings { capabilities: parse_capabilities(table, ctx)?, ..Settings::default() };
    settings.skip_verify = bool_field(table, "skip_verify", ctx)?;
    settings.override_path = bool_field(table, "override_path", ctx)?.unwrap_or(false);

    if let Some(v) = field(table, "ca") {
        let paths = string_or_strings(v).ok_or_else(|| ctx.err("ca", "must be a path or an array of paths"))?;
        let mut pems = Vec::with_capacity(paths.len());
        for path in paths {
            let pem = ctx.read_pem("ca", path)?;
            if !is_cert_pem(&pem) {
                return Err(
                    ctx.err("ca", format!("{}: no PEM certificate in it", make_abs_path(path, ctx.base).display()))
                );
            }
            pems.push(pem);
        }
        settings.ca_pems = Some(pems);
    }

    if let Some(v) = field(table, "client") {
        let pairs = client_paths(v).ok_or_else(|| {
            ctx.err("client", "must be a path, an array of paths, or an array of [cert, key] path pairs")
        })?;
        let mut identities = Vec::with_capacity(pairs.len());
        for (cert_path, key_path) in pairs {
            let cert = ctx.read_pem("client", cert_path)?;
            let key = match key_path {
                Some(k) => ctx.read_pem("client", k)?,
                None => cert.clone(),
            };
            check_identity(&cert, &key)
                .map_err(|p| ctx.err("client", format!("{}: {p}", make_abs_path(cert_path, ctx.base).display())))?;
            identities.push((cert, key));
        }
        settings.client_identities = Some(identities);
    }

    match field(table, "header") {
        None => {}
        Some(Value::Table(headers)) => {
            for (name, value) in headers {
                let key = format!("header.{name}");
                let values =
                    string_or_strings(value).ok_or_else(|| ctx.err(&key, "must be a string or an array of strings"))?;
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(ctx.err(&key, "is not a valid HTTP header name"));
                }
                for v in values {
                    if HeaderValue::from_str(v).is_err() {
                        return Err(ctx.err(&key, format!("{v:?} is not a valid HTTP header value")));
                    }
                    settings.headers.push((name.clone(), v.to_string()));
                }
            }
        }
        Some(_) => return Err(ctx.err("header", "must be a table")),
    }

    match field(table, "dial_timeout") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            settings.dial_timeout = Some(parse_go_duration(s).map_err(|p| ctx.err("dial_timeout", p))?);
        }
        Some(_) => return Err(ctx.err("dial_timeout", "must be a duration string such as \"5s\"")),
    }
    Ok(settings)
}

fn parse_capabilities(table: &Table, ctx: &Ctx<'_>) -> Result<Option<Capabilities>, HostsError> {
    let Some(value) = field(table, "capabilities") else { return Ok(None) };
    let Value::Array(items) = value else {
        return Err(ctx.err("capabilities", "must be an array of \"pull\", \"resolve\", \"push\""));
    };
    if items.is_empty() {
        return Ok(None);
    }
    let mut caps = Capabilities::NONE;
    for (i, item) in items.iter().enumerate() {
        let Value::String(s) = item else { return Err(ctx.err(&format!("capabilities[{i}]"), "must be a string")) };
        match s.to_lowercase().as_str() {
            "pull" => caps.pull = true,
            "resolve" => caps.resolve = true,
            "push" => caps.push = true,
            _ => return Err(ctx.err("capabilities", format!("unknown capability {s:?} (pull, resolve, push)"))),
        }
    }
    Ok(Some(caps))
}

fn bool_field(table: &Table, key: &str, ctx: &Ctx<'_>) -> Result<Option<bool>, HostsError> {
    match field(table, key) {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(*b)),
        Some(_) => Err(ctx.err(key, "must be true or false")),
    }
}

fn string_or_strings(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(|v| v.as_str()).collect(),
        _ => None,
    }
}

/// `client`: a path, or an array whose items are each a path (cert and key in one file) or a
/// `[cert, key]` pair. Two strings in a flat array are two one-file entries, not a pair.
fn client_paths(value: &Value) -> Option<Vec<(&str, Option<&str>)>> {
    match value {
        Value::String(s) => Some(vec![(s.as_str(), None)]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some((s.as_str(), None)),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(cert), Value::String(key)] => Some((cert.as_str(), Some(key.as_str()))),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// An entry's URL as containerd parses it: `https://` prefixed unless it starts with `http`;
/// the path cleaned and `/v2` appended unless it already ends so or `override_path` is set.
fn parse_location(raw: &str, override_path: bool) -> Result<Location, String> {
    if let Some((scheme, _)) = raw.split_once("://").filter(|_| !raw.starts_with("http")) {
        // containerd would prefix `https://` and go to a host named after the scheme.
        return Err(format!("{raw:?}: scheme {scheme:?} (containerd speaks http and https, lower case)"));
    }
    let text = if raw.starts_with("http") { raw.to_string() } else { format!("https://{raw}") };
    let mut url = Url::parse(&text).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: scheme {:?} (containerd speaks http and https)", url.scheme()));
    }
    let host = raw_authority(&text);
    if host.is_empty() || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    let cleaned = clean_url_path(url.path());
    let path = if override_path || cleaned.ends_with("/v2") {
        cleaned
    } else {
        format!("{}/v2", cleaned.trim_end_matches('/'))
    };
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    // Go's `u.Host` has no user information; containerd never sends it.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(Location { host, url })
}

/// Go `url.URL.Host`: the authority without user information, as written.
fn raw_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_string()
}

/// Go `path.Clean` on an absolute URL path.
fn clean_url_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The `server` containerd fills in when `server` is not set (`ConfigureHosts`): Docker Hub's
/// API host, a loopback registry over HTTP with HTTPS tried first, or `https://<registry>`;
/// always `/v2` with every capability, whatever the top-level `capabilities`/`override_path`.
fn default_server(registry: &str, settings: &Settings) -> Option<Endpoint> {
    let mut settings = settings.clone();
    let (scheme, host) = if registry == DOCKER_HUB {
        ("https", DOCKER_HUB_API)
    } else if is_localhost(registry) {
        let port = split_host_port(registry).map_or("", |(_, p)| p);
        if port != "80" {
            settings.skip_verify = Some(true);
        }
        (if port.is_empty() || port == "443" { "https" } else { "http" }, registry)
    } else {
        ("https", registry)
    };
    let url = Url::parse(&format!("{scheme}://{host}/v2")).ok()?;
    Some(endpoint(&Location { host: host.to_string(), url }, &settings, Capabilities::ALL, false))
}

/// The endpoint of one entry, with containerd's HTTP fallback: an `http` entry with TLS settings
/// (`ca`, `client` or `skip_verify` given) and a port other than 80 tries HTTPS first.
fn endpoint(location: &Location, settings: &Settings, capabilities: Capabilities, is_mirror: bool) -> Endpoint {
    let explicit_tls =
        settings.ca_pems.is_some() || settings.client_identities.is_some() || settings.skip_verify.is_some();
    let mut url = location.url.clone();
    let mut http_fallback = false;
    if url.scheme() == "http" && explicit_tls {
        let port = split_host_port(&location.host).map_or("", |(_, p)| p);
        if port != "80" && url.set_scheme("https").is_ok() {
            http_fallback = true;
        }
    }
    Endpoint {
        url,
        host: location.host.clone(),
        capabilities,
        ca_pems: settings.ca_pems.clone().unwrap_or_default(),
        skip_verify: settings.skip_verify,
        client_identities: settings.client_identities.clone().unwrap_or_default(),
        headers: settings.headers.clone(),
        is_mirror,
        http_fallback,
        dial_timeout: settings.dial_timeout,
    }
}

/// Go `net.SplitHostPort`, enough for registry names: `None` when there is no port.
fn split_host_port(host: &str) -> Option<(&str, &str)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((name, port));
    }
    let (name, port) = host.rsplit_once(':')?;
    if name.contains(':') {
        return None;
    }
    Some((name, port))
}

/// containerd `docker.IsLocalhost`: `localhost` or a loopback IP, port stripped when present
/// (a bracketed IPv6 address without a port is not recognised, as in containerd).
fn is_localhost(registry: &str) -> bool {
    let name = split_host_port(registry).map_or(registry, |(h, _)| h);
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// containerd `getSortedHosts`: the second key part of every `[host.<name>…]` table header, in
/// document order, skipping a name equal to the one just added (sub-tables such as
/// `[host."…".header]`). Dotted keys and inline tables under `host` are not headers: not listed.
fn host_table_order(text: &str) -> Vec<String> {
    use toml_parser::parser::{Event, EventKind, parse_document};
    let source = toml_parser::Source::new(text);
    let tokens = source.lex().into_vec();
    let mut events: Vec<Event> = Vec::new();
    parse_document(&tokens, &mut events, &mut ());
    let mut order = Vec::new();
    let mut last = String::new();
    let mut header: Option<Vec<String>> = None;
    for event in &events {
        match event.kind() {
            EventKind::StdTableOpen => header = Some(Vec::new()),
            EventKind::SimpleKey => {
                if let (Some(parts), Some(raw)) = (header.as_mut(), source.get(event)) {
                    let mut key = String::new();
                    raw.decode_key(&mut key, &mut ());
                    parts.push(key);
                }
            }
            EventKind::StdTableClose => {
                if let Some(parts) = header.take()
                    && parts.len() >= 2
                    && parts[0] == "host"
                    && parts[1] != last
                {
                    last = parts[1].clone();
                    order.push(last.clone());
                }
            }
            _ => {}
        }
    }
    order
}

/// Go `filepath.Join(base, p)` for a relative `p` (lexically cleaned); an absolute `p` as is.
fn make_abs_path(p: &str, base: &Path) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

pub(super) fn is_cert_pem(pem: &[u8]) -> bool {
    contains(pem, b"-----BEGIN CERTIFICATE-----")
}

/// What Go's `tls.X509KeyPair` needs first: a certificate block, and a private key block.
pub(super) fn check_identity(cert: &[u8], key: &[u8]) -> Result<(), String> {
    if !is_cert_pem(cert) {
        return Err("no PEM certificate in it".into());
    }
    if !(contains(key, b"-----BEGIN ") && contains(key, b"PRIVATE KEY-----")) {
        return Err("no PEM private key for the certificate".into());
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Go `time.ParseDuration` (`1m30s`, `1.5h`, `300ms`, `0`); negative durations are refused.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as \"5s\", \"1m30s\" or \"500ms\"");
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        nanos += value * scale;
        rest = next;
    }
    if !nanos.is_finite() || nanos > i64::MAX as f64 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// `line L, column C: message` from a toml error.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n";

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self { dir: tempfile::tempdir().expect("tempdir") }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Writes `DIR/<rel>`, creating parent directories.
        fn file(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.root().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
            path
        }

        fn hosts(&self, host_dir: &str, toml: &str) -> PathBuf {
            self.file(&format!("{host_dir}/hosts.toml"), toml)
        }

        fn dir(&self, rel: &str) {
            std::fs::create_dir_all(self.root().join(rel)).expect("mkdir");
        }

        fn load(&self) -> HostsDir {
            HostsDir::load(self.root()).expect("loads")
        }

        fn error(&self) -> String {
            match HostsDir::load(self.root()) {
                Ok(_) => "loaded".into(),
                Err(e) => e.to_string(),
            }
        }

        fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
            self.load().endpoints(registry).expect("a host directory applies")
        }
    }

    fn urls(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.url.to_string()).collect()
    }

    #[test]
    fn one_hosts_toml_text_is_read_as_its_directory_would_be() {
        let f = Fixture::new();
        let text = "server = \"https://r.example:5000\"\n\n[host.\"mirror.example\"]\n  ca = \"ca.pem\"\n";
        f.hosts("r.example_5000_", text);
        f.file("r.example_5000_/ca.pem", CERT);
        let from_text = HostsDir::from_hosts_toml(f.root(), "r.example:5000", text).expect("parses");
        assert_eq!(from_text.endpoints("r.example:5000"), Some(f.endpoints("r.example:5000")));
        assert_eq!(from_text.host_directory("r.example:5000"), Some(f.root().join("r.example_5000_").as_path()));

        let missing = HostsDir::from_hosts_toml(f.root(), "r.example:5000", "[host.\"m.example\"]\nca = \"no.pem\"\n");
        let problem = missing.map(|_| ()).expect_err("names a missing file").to_string();
        assert!(problem.contains("r.example_5000_/hosts.toml: host.\"m.example\": ca:"), "{problem}");
    }

    #[test]
    fn configured_hosts_are_directories_and_endpoint_urls() {
        let f = Fixture::new();
        f.hosts("_default", "[host.\"https://mirror.example:5000\"]\n");
        f.hosts("169.254.10.5_5000_", "");
        f.hosts("quay.io", "server = \"https://[fe80::1]:8443\"\n");
        let mut hosts = f.load().configured_hosts();
        hosts.sort();
        assert_eq!(hosts, ["169.254.10.5", "[fe80::1]", "mirror.example", "quay.io"], "never `_default`");
    }

    #[test]
    fn no_directory_for_the_registry_is_none() {
        let f = Fixture::new();
        f.hosts("quay.io", "");
        let hosts = f.load();
        assert!(hosts.endpoints("ghcr.io").is_none());
        assert!(hosts.host_directory("ghcr.io").is_none());
        assert_eq!(hosts.root(), f.root());
    }

    #[test]
    fn default_directory_applies_to_registries_without_their_own() {
        let f = Fixture::new();
        f.hosts("_default", "[host.\"https://mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        f.hosts("quay.io", "server = \"https://quay.example\"\n");
        let hosts = f.load();

        let ghcr = hosts.endpoints("ghcr.io").expect("_default applies");
        assert_eq!(urls(&ghcr), ["https://mirror.example/v2", "https://ghcr.io/v2"]);
        assert!(ghcr[0].is_mirror && !ghcr[1].is_mirror);
        assert_eq!(ghcr[0].capabilities, Capabilities { pull: true, resolve: true, push: false });
        assert_eq!(ghcr[1].capabilities, Capabilities::ALL);
        assert_eq!(hosts.host_directory("ghcr.io"), Some(f.root().join("_default").as_path()));

        // The default server is the registry's own, per registry.
        let hub = hosts.endpoints("docker.io").expect("_default applies");
        assert_eq!(urls(&hub), ["https://mirror.example/v2", "https://registry-1.docker.io/v2"]);

        // A registry with its own directory never sees `_default`.
        assert_eq!(urls(&hosts.endpoints("quay.io").expect("own dir")), ["https://quay.example/v2"]);
    }

    #[test]
    fn an_empty_host_directory_still_shadows_default() {
        let f = Fixture::new();
        f.hosts("_default", "server = \"https://everything.example\"\n");
        f.dir("r.example");
        assert_eq!(urls(&f.endpoints("r.example")), ["https://r.example/v2"]);
    }

    #[test]
    fn port_directories_are_host_underscore_port_underscore_first() {
        assert_eq!(host_directory("r.example:5000"), "r.example_5000_");
        assert_eq!(host_directory("[::1]:5000"), "[::1]_5000_");
        assert_eq!(host_directory("r.example"), "r.example");
        assert_eq!(host_paths("r.example:5000"), ["r.example_5000_", "r.example:5000", "_default"]);
        assert_eq!(host_paths("r.example"), ["r.example", "_default"]);

        let f = Fixture::new();
        f.hosts("r.example:5000", "server = \"https://colon.example\"\n");
        assert_eq!(urls(&f.endpoints("r.example:5000")), ["https://colon.example/v2"]);
        f.hosts("r.example_5000_", "server = \"https://underscore.example\"\n");
        assert_eq!(urls(&f.endpoints("r.example:5000")), ["https://underscore.example/v2"]);
        // The port belongs to the name: `r.example` has no directory here.
        assert!(f.load().endpoints("r.example").is_none());
        assert!(f.load().endpoints("r.example:5001").is_none());
    }

    #[test]
    fn server_defaults_and_docker_hub() {
        let f = Fixture::new();
        f.hosts("docker.io", "[host.\"https://mirror.example\"]\n");
        let hub = f.endpoints("docker.io");
        assert_eq!(urls(&hub), ["https://mirror.example/v2", "https://registry-1.docker.io/v2"]);
        assert_eq!(hub[1].host, "registry-1.docker.io");
        assert!(!hub[1].is_proxy_for("docker.io"));
        assert!(hub[0].is_proxy_for("docker.io"));

        // `server` is used as written, `https://` added when the scheme is missing.
        f.hosts("docker.io", "server = \"https://docker.io\"\n");
        assert_eq!(urls(&f.endpoints("docker.io")), ["https://docker.io/v2"]);
        f.hosts("docker.io", "server = \"mirror.example:5000\"\n");
        let hub = f.endpoints("docker.io");
        assert_eq!(urls(&hub), ["https://mirror.example:5000/v2"]);
        assert_eq!(hub[0].host, "mirror.example:5000");
    }

    #[test]
    fn top_level_capabilities_and_override_path_only_apply_to_a_configured_server() {
        let f = Fixture::new();
        f.hosts("r.example", "capabilities = [\"pull\"]\noverride_path = true\nskip_verify = true\n");
        let eps = f.endpoints("r.example");
        assert_eq!(urls(&eps), ["https://r.example/v2"]);
        assert_eq!(eps[0].capabilities, Capabilities::ALL);
        assert_eq!(eps[0].skip_verify, Some(true));

        f.hosts("r.example", "server = \"https://up.example/api\"\ncapabilities = [\"pull\"]\noverride_path = true\n");
        let eps = f.endpoints("r.example");
        assert_eq!(urls(&eps), ["https://up.example/api"]);
        assert_eq!(eps[0].capabilities, Capabilities { pull: true, resolve: false, push: false });
    }

    #[test]
    fn pull_only_mirror_does_not_resolve_tags() {
        let f = Fixture::new();
        f.hosts(
            "docker.io",
            "[host.\"https://public-mirror.example\"]\n  capabilities = [\"pull\"]\n\
             [host.\"https://private-mirror.example\"]\n  capabilities = [\"PULL\", \"Resolve\"]\n\
             [host.\"https://resolve-only.example\"]\n  capabilities = [\"resolve\"]\n\
             [host.\"https://all.example\"]\n  capabilities = []\n",
        );
        let eps = f.endpoints("docker.io");
        let flags: Vec<_> = eps.iter().map(|e| (e.pulls_digests(), e.resolves_tags())).collect();
        assert_eq!(flags, [(true, false), (true, true), (false, false), (true, true), (true, true)]);
        assert_eq!(eps[3].capabilities, Capabilities::ALL, "an empty list is every capability");
        assert_eq!(eps[1].capabilities, Capabilities { pull: true, resolve: true, push: false });
    }

    #[test]
    fn hosts_are_tried_in_file_order_as_containerd_lists_table_headers() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "server = \"https://upstream.example\"\n\
             [host.\"https://zeta.example\"]\n\
             [host.\"https://alpha.example\"]\n\
               [host.\"https://alpha.example\".header]\n  x-a = \"1\"\n\
             [host.'https://mid.example']\n",
        );
        assert_eq!(
            urls(&f.endpoints("r.example")),
            [
                "https://zeta.example/v2",
                "https://alpha.example/v2",
                "https://mid.example/v2",
                "https://upstream.example/v2"
            ]
        );
        // getSortedHosts skips only a repeat of the previous header's host: a sub-table after
        // another host lists the host again; hosts without a header are never listed.
        assert_eq!(
            host_table_order(
                "host.\"https://dotted\".capabilities = [\"pull\"]\n[host.\"a\"]\n[host.\"b\"]\n[host.\"a\".header]\n[other.\"x\"]\n[host]\n"
            ),
            ["a", "b", "a"]
        );
        f.hosts("r.example", "host.\"https://dotted.example\".capabilities = [\"pull\"]\n");
        assert_eq!(urls(&f.endpoints("r.example")), ["https://r.example/v2"]);
    }

    #[test]
    fn ca_as_string_or_array_relative_to_the_hosts_directory() {
        let f = Fixture::new();
        f.file("r.example/mirror-ca.pem", CERT);
        f.file("shared/ca.pem", &CERT.replace("fake", "shared"));
        let absolute = f.file("abs/ca.pem", &CERT.replace("fake", "abs"));
        f.hosts(
            "r.example",
            &format!(
                "ca = \"../shared/ca.pem\"\n\
                 [host.\"https://m.example\"]\n  ca = [\"mirror-ca.pem\", {absolute:?}]\n"
            ),
        );
        let eps = f.endpoints("r.example");
        assert_eq!(eps[0].ca_pems, [CERT.as_bytes().to_vec(), CERT.replace("fake", "abs").into_bytes()]);
        assert_eq!(eps[1].ca_pems, [CERT.replace("fake", "shared").into_bytes()]);
        assert_eq!(eps[0].skip_verify, None);
    }

    #[test]
    fn missing_ca_names_file_key_and_path() {
        let f = Fixture::new();
        let file = f.hosts("r.example", "[host.\"https://m\"]\n  ca = \"/nonexistent/x.pem\"\n");
        assert_eq!(
            f.error(),
            format!(
                "{}: host.\"https://m\": ca: /nonexistent/x.pem: No such file or directory (os error 2)",
                file.display()
            )
        );
        f.hosts("r.example", "ca = \"\"\n");
        assert!(f.error().contains("hosts.toml directory itself"), "{}", f.error());
        f.file("r.example/not-a-cert.pem", "hello");
        f.hosts("r.example", "ca = [\"not-a-cert.pem\"]\n");
        assert!(f.error().ends_with("not-a-cert.pem: no PEM certificate in it"), "{}", f.error());
        f.hosts("r.example", "ca = 5\n");
        assert!(f.error().ends_with(": ca: must be a path or an array of paths"), "{}", f.error());
        f.hosts("r.example", "ca = [\"a.pem\", 5]\n");
        assert!(f.error().contains(": ca: "), "{}", f.error());
    }

    #[test]
    fn client_forms() {
        let f = Fixture::new();
        let combined = format!("{CERT}{KEY}");
        f.file("r.example/one.pem", &combined);
        f.file("r.example/two.pem", &combined.replace("fake", "two"));
        f.file("r.example/c.cert", CERT);
        f.file("r.example/c.key", KEY);
        f.hosts(
            "r.example",
            "[host.\"https://single.example\"]\n  client = \"one.pem\"\n\
             [host.\"https://flat.example\"]\n  client = [\"one.pem\", \"two.pem\"]\n\
             [host.\"https://pairs.example\"]\n  client = [[\"c.cert\", \"c.key\"], \"one.pem\"]\n",
        );
        let eps = f.endpoints("r.example");
        let one = (combined.clone().into_bytes(), combined.clone().into_bytes());
        let two = (combined.replace("fake", "two").into_bytes(), combined.replace("fake", "two").into_bytes());
        assert_eq!(eps[0].client_identities, std::slice::from_ref(&one));
        // Two strings in a flat array are two one-file identities, not a cert/key pair.
        assert_eq!(eps[1].client_identities, [one.clone(), two]);
        assert_eq!(eps[2].client_identities, [(CERT.as_bytes().to_vec(), KEY.as_bytes().to_vec()), one]);
        assert!(eps[3].client_identities.is_empty());

        // containerd joins "" to the directory, so `[cert, ""]` cannot be read.
        f.hosts("r.example", "client = [[\"one.pem\", \"\"]]\n");
        assert!(f.error().contains(": client: ") && f.error().contains("directory itself"), "{}", f.error());
        f.hosts("r.example", "client = [[\"one.pem\"]]\n");
        assert!(f.error().ends_with("array of [cert, key] path pairs"), "{}", f.error());
        f.hosts("r.example", "client = \"c.cert\"\n");
        assert!(f.error().ends_with("c.cert: no PEM private key for the certificate"), "{}", f.error());
    }

    #[test]
    fn override_path_keeps_the_path_otherwise_v2_is_appended_once() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "[host.\"https://a.example/custom/api\"]\n  override_path = true\n\
             [host.\"https://b.example/custom/api\"]\n\
             [host.\"https://c.example/v2\"]\n\
             [host.\"https://d.example/x/v2/\"]\n\
             [host.\"https://e.example/\"]\n  override_path = true\n\
             [host.\"https://user:pw@f.example:8443/p?q=1#frag\"]\n",
        );
        assert_eq!(
            urls(&f.endpoints("r.example")),
            [
                "https://a.example/custom/api",
                "https://b.example/custom/api/v2",
                "https://c.example/v2",
                "https://d.example/x/v2",
                "https://e.example/",
                "https://f.example:8443/p/v2",
                "https://r.example/v2"
            ]
        );
        let eps = f.endpoints("r.example");
        assert_eq!(eps[5].host, "f.example:8443");
        assert_eq!(
            eps[0].request_url("r.example", "library/nginx/manifests/latest").as_str(),
            "https://a.example/custom/api/library/nginx/manifests/latest?ns=r.example"
        );
        assert_eq!(
            eps[4].request_url("r.example", "app/manifests/v1").as_str(),
            "https://e.example/app/manifests/v1?ns=r.example"
        );
        assert_eq!(
            eps[6].request_url("r.example", "app/manifests/v1").as_str(),
            "https://r.example/v2/app/manifests/v1"
        );
    }

    #[test]
    fn namespace_query_for_registries_with_ports() {
        let f = Fixture::new();
        f.hosts("r.example_5000_", "[host.\"https://m.example\"]\n");
        let eps = f.endpoints("r.example:5000");
        assert_eq!(
            eps[0].request_url("r.example:5000", "a/b/manifests/t").as_str(),
            "https://m.example/v2/a/b/manifests/t?ns=r.example%3A5000"
        );
        assert!(!eps[1].is_proxy_for("r.example:5000"));
    }

    #[test]
    fn skip_verify_true_false_and_unset() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "skip_verify = false\n[host.\"https://a.example\"]\n  skip_verify = true\n[host.\"https://b.example\"]\n",
        );
        let eps = f.endpoints("r.example");
        let flags: Vec<_> = eps.iter().map(|e| e.skip_verify).collect();
        assert_eq!(flags, [Some(true), None, Some(false)]);
        f.hosts("r.example", "skip_verify = \"yes\"\n");
        assert!(f.error().ends_with(": skip_verify: must be true or false"), "{}", f.error());
    }

    #[test]
    fn headers_string_or_array() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "[header]\n  x-top = \"t\"\n\
             [host.\"https://m.example\"]\n\
             [host.\"https://m.example\".header]\n  x-one = \"1\"\n  x-many = [\"a\", \"b\"]\n",
        );
        let eps = f.endpoints("r.example");
        let mut mirror = eps[0].headers.clone();
        mirror.sort();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(mirror, [pair("x-many", "a"), pair("x-many", "b"), pair("x-one", "1")]);
        assert_eq!(eps[1].headers, [pair("x-top", "t")]);

        f.hosts("r.example", "[header]\n  x-n = 5\n");
        assert!(f.error().ends_with(": header.x-n: must be a string or an array of strings"), "{}", f.error());
        f.hosts("r.example", "[header]\n  \"bad name\" = \"v\"\n");
        assert!(f.error().contains("not a valid HTTP header name"), "{}", f.error());
        f.hosts("r.example", "[header]\n  x-v = \"a\\nb\"\n");
        assert!(f.error().contains("not a valid HTTP header value"), "{}", f.error());
    }

    #[test]
    fn plain_http_hosts_and_containerd_https_first_fallback() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "[host.\"http://plain.example:5000\"]\n\
             [host.\"http://tls.example:5000\"]\n  skip_verify = false\n\
             [host.\"http://port80.example:80\"]\n  skip_verify = true\n\
             [host.\"http://noport.example\"]\n  skip_verify = true\n",
        );
        let eps = f.endpoints("r.example");
        let seen: Vec<_> = eps.iter().map(|e| (e.url.to_string(), e.http_fallback)).collect();
        assert_eq!(
            seen,
            [
                ("http://plain.example:5000/v2".to_string(), false),
                ("https://tls.example:5000/v2".to_string(), true),
                ("http://port80.example/v2".to_string(), false),
                ("https://noport.example/v2".to_string(), true),
                ("https://r.example/v2".to_string(), false),
            ]
        );
        assert_eq!(eps[0].fallback_url(), None);
        assert_eq!(eps[1].fallback_url().map(String::from).as_deref(), Some("http://tls.example:5000/v2"));
        assert_eq!(eps[3].fallback_url().map(String::from).as_deref(), Some("http://noport.example/v2"));
        assert_eq!(
            eps[1].fallback_request_url("r.example", "a/manifests/t").map(String::from).as_deref(),
            Some("http://tls.example:5000/v2/a/manifests/t?ns=r.example")
        );
    }

    #[test]
    fn loopback_registries_default_to_http_with_https_tried_first() {
        let f = Fixture::new();
        f.dir("_default");
        let hosts = f.load();
        let one = |r: &str| hosts.endpoints(r).expect("_default").remove(0);

        let local = one("localhost:5000");
        assert_eq!(
            (local.url.as_str(), local.http_fallback, local.skip_verify),
            ("https://localhost:5000/v2", true, Some(true))
        );
        assert_eq!(local.fallback_url().map(String::from).as_deref(), Some("http://localhost:5000/v2"));
        let port80 = one("127.0.0.1:80");
        assert_eq!(
            (port80.url.as_str(), port80.http_fallback, port80.skip_verify),
            ("http://127.0.0.1/v2", false, None)
        );
        let bare = one("127.0.0.1");
        assert_eq!(
            (bare.url.as_str(), bare.http_fallback, bare.skip_verify),
            ("https://127.0.0.1/v2", false, Some(true))
        );
        let v6 = one("[::1]:5000");
        assert_eq!((v6.url.as_str(), v6.http_fallback), ("https://[::1]:5000/v2", true));
        let remote = one("r.example:5000");
        assert_eq!((remote.url.as_str(), remote.skip_verify), ("https://r.example:5000/v2", None));
        assert!(is_localhost("localhost") && !is_localhost("[::1]") && !is_localhost("localhost.example"));
    }

    #[test]
    fn docker_certificate_files_when_hosts_toml_is_missing_or_empty() {
        let f = Fixture::new();
        f.file("r.example_5000_/ca.crt", CERT);
        f.file("r.example_5000_/client.cert", CERT);
        f.file("r.example_5000_/client.key", KEY);
        f.file("r.example_5000_/combined.cert", &format!("{CERT}{KEY}"));
        f.file("r.example_5000_/notes.txt", "ignored");
        let eps = f.endpoints("r.example:5000");
        assert_eq!(urls(&eps), ["https://r.example:5000/v2"]);
        assert_eq!(eps[0].ca_pems, [CERT.as_bytes().to_vec()]);
        let combined = format!("{CERT}{KEY}").into_bytes();
        assert_eq!(
            eps[0].client_identities,
            [(CERT.as_bytes().to_vec(), KEY.as_bytes().to_vec()), (combined.clone(), combined)]
        );

        // An empty hosts.toml is no hosts.toml; whitespace is a document, and the files are not read.
        f.file("r.example_5000_/hosts.toml", "");
        assert_eq!(f.endpoints("r.example:5000")[0].ca_pems.len(), 1);
        f.file("r.example_5000_/hosts.toml", "\n");
        assert!(f.endpoints("r.example:5000")[0].ca_pems.is_empty());
    }

    #[test]
    fn malformed_toml_names_the_file_and_line() {
        let f = Fixture::new();
        let file = f.hosts("r.example", "server = \"https://a\"\n[host.\"https://m\"\n");
        let error = f.error();
        assert!(error.starts_with(&format!("{}: not valid TOML: line 2, column ", file.display())), "{error}");
    }

    #[test]
    fn wrong_types_and_values_name_the_key() {
        let f = Fixture::new();
        let cases = [
            (
                "capabilities = [\"pull\", \"fetch\"]\n",
                "capabilities: unknown capability \"fetch\" (pull, resolve, push)",
            ),
            ("capabilities = \"pull\"\n", "capabilities: must be an array"),
            ("server = 5\n", "server: must be a string"),
            ("server = \"ftp://x\"\n", "server: \"ftp://x\": scheme \"ftp\""),
            ("server = \"httpx://x\"\n", "server: \"httpx://x\": scheme \"httpx\""),
            ("[host.\"HTTP://m\"]\n", "host.\"HTTP://m\": (url): \"HTTP://m\": scheme \"HTTP\""),
            ("host = 5\n", "host: must be a table"),
            ("[host.\"https://m\"]\n  override_path = 1\n", "host.\"https://m\": override_path: must be true or false"),
            (
                "[host.\"https://m\"]\n  dial_timeout = \"5 parsecs\"\n",
                "host.\"https://m\": dial_timeout: \"5 parsecs\" is not a duration",
            ),
            ("host.\"https://m\".capabilities = [\"fetch\"]\n", "host.\"https://m\": capabilities: unknown capability"),
        ];
        for (toml, expected) in cases {
            f.hosts("r.example", toml);
            assert!(f.error().contains(expected), "{toml:?}: {}", f.error());
        }
    }

    #[test]
    fn unknown_keys_are_ignored_like_containerd() {
        let f = Fixture::new();
        f.hosts(
            "r.example",
            "future_option = true\nproxy = \"http://proxy:8080\"\n[host.\"https://m.example\"]\n  dial_addr = \"unix:///x\"\n  weird = [1, 2]\n[elsewhere]\n  x = 1\n",
        );
        assert_eq!(urls(&f.endpoints("r.example")), ["https://m.example/v2", "https://r.example/v2"]);
    }

    #[test]
    fn keys_match_case_insensitively_as_in_go_toml() {
        let f = Fixture::new();
        f.hosts("r.example", "Server = \"https://up.example\"\nSKIP_VERIFY = true\n");
        let eps = f.endpoints("r.example");
        assert_eq!(urls(&eps), ["https://up.example/v2"]);
        assert_eq!(eps[0].skip_verify, Some(true));
    }

    #[test]
    fn dial_timeout_is_a_go_duration() {
        assert_eq!(parse_go_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "-1s", "1x", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        let f = Fixture::new();
        f.hosts("r.example", "dial_timeout = \"2s\"\n[host.\"https://m\"]\n");
        let eps = f.endpoints("r.example");
        assert_eq!((eps[0].dial_timeout, eps[1].dial_timeout), (None, Some(Duration::from_secs(2))));
    }

    #[test]
    fn oversized_files_are_refused() {
        let f = Fixture::new();
        let file = f.hosts("r.example", &"#".repeat(MAX_HOSTS_TOML_BYTES as usize + 1));
        assert_eq!(f.error(), format!("{}: larger than {MAX_HOSTS_TOML_BYTES} bytes", file.display()));
    }

    #[test]
    fn a_missing_hosts_dir_is_an_error_and_stray_files_are_skipped() {
        let f = Fixture::new();
        f.file("README", "not a host");
        assert!(f.load().endpoints("README").is_none());
        let missing = f.root().join("nope");
        let error = HostsDir::load(&missing).map(|_| ()).expect_err("missing");
        assert!(matches!(error, HostsError::Dir { .. }));
        assert!(error.to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn debug_never_prints_key_material() {
        let f = Fixture::new();
        f.file("r.example/id.pem", &format!("{CERT}{KEY}"));
        f.hosts("r.example", "client = \"id.pem\"\n");
        let hosts = f.load();
        let eps = hosts.endpoints("r.example").expect("dir");
        for text in [format!("{eps:?}"), format!("{hosts:?}")] {
            assert!(!text.contains("PRIVATE") && !text.contains("MIIE"), "{text}");
        }
    }
}
