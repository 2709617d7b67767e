//! The registry configuration file (`--registry-config`): per registry host, transport, trust,
//! credentials, mirrors and request budgets, and the deprecated registries. Errors name the
//! file, the key and the problem.

pub mod deprecated;
pub mod hosts;
pub mod registries_conf;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::sync::Arc;

use crate::credentials::{Credential, CredentialProviders, DockerCredentials};
use crate::image::{DOCKER_HUB, ImageRef};
use deprecated::{Condition, DeprecatedRegistries};

/// What went wrong loading a node's registry files (a containerd hosts directory, CRI-O's
/// registries.conf and certs.d). Each names the file (or directory) and, for a field, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// A directory could not be listed.
    #[error("{}: {source}", .dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    /// A file could not be read, is too large, is not UTF-8, or is not TOML.
    #[error("{}: {problem}", .file.display())]
    File { file: PathBuf, problem: String },
    /// A field is wrong, or names a file that cannot be used.
    #[error("{}: {key}: {problem}", .file.display())]
    Key { file: PathBuf, key: String, problem: String },
}
use hosts::HostsDir;
use registries_conf::RegistriesConf;

/// Default limit of requests in flight to one registry host.
pub const DEFAULT_MAX_CONCURRENT: usize = 16;
/// Bounds on what a config file may reference, so a typo cannot make us read a disk image.
const MAX_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileRoot {
    default_registry: Option<String>,
    docker_config: Option<PathBuf>,
    #[serde(default)]
    registries: BTreeMap<String, FileHost>,
    /// Prefix → replacement prefix, or `null` to remove a built-in entry.
    #[serde(default)]
    deprecated_registries: BTreeMap<String, Option<String>>,
    /// Moved repositories, the same way: replacements only for images gone from the original.
    #[serde(default)]
    moved_repositories: BTreeMap<String, Option<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileHost {
    plain_http: Option<bool>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    skip_tls_verify: bool,
    auth: Option<FileAuth>,
    docker_config: Option<PathBuf>,
    #[serde(default)]
    mirrors: Vec<String>,
    max_concurrent_requests: Option<usize>,
    requests_per_second: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileAuth {
    username: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
}

/// How a host is spoken to, as containerd 2.x decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    Http,
    /// HTTPS, and plain HTTP when the TLS connection fails: an unconfigured loopback host on a
    /// port other than 80 and 443.
    HttpsThenHttp,
}

/// How to reach one registry host.
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// `None`: decided by [`HostConfig::transport`].
    pub plain_http: Option<bool>,
    pub ca_pem: Option<Vec<u8>>,
    pub skip_tls_verify: bool,
    /// Credentials configured for this host, used when the workload brings none.
    pub credential: Option<Credential>,
    /// Registry names tried in order before this one (containerd `hosts.toml` semantics).
    pub mirrors: Vec<String>,
    pub max_concurrent_requests: Option<usize>,
    pub requests_per_second: Option<f64>,
}

impl HostConfig {
    /// `plainHttp` when set; HTTPS for a host with TLS settings (`caFile`, `skipTlsVerify`);
    /// for an unconfigured loopback host HTTP on port 80, HTTPS on 443 (or none), and on any
    /// other port HTTPS first, then HTTP; HTTPS everywhere else.
    pub fn transport(&self, host: &str) -> Transport {
        match self.plain_http {
            Some(true) => Transport::Http,
            Some(false) => Transport::Https,
            None if self.ca_pem.is_some() || self.skip_tls_verify || !is_loopback(host) => Transport::Https,
            None => match crate::image::host_and_port(host).1 {
                Some(80) => Transport::Http,
                None | Some(443) => Transport::Https,
                Some(_) => Transport::HttpsThenHttp,
            },
        }
    }
}

/// The typed registry configuration.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub default_registry: String,
    hosts: HashMap<String, HostConfig>,
    docker_credentials: DockerCredentials,
    /// containerd hosts directories (`--hosts-dir`): a registry found there takes its
    /// endpoints, TLS and headers from it.
    hosts_dir: Option<Arc<HostsDir>>,
    /// CRI-O's registries.conf and certs.d (`--registries-conf`): an image one of its tables
    /// matches, or whose host has certificates there, is pulled as CRI-O would.
    registries_conf: Option<Arc<RegistriesConf>>,
    /// kubelet credential-provider plugins: node credentials after the registry config's.
    providers: Option<Arc<CredentialProviders>>,
    /// Registries that moved: the built-in table with `deprecatedRegistries` applied.
    deprecated: DeprecatedRegistries,
    /// Repositories that moved only what they no longer serve: `BUILT_IN_MOVED` with
    /// `movedRepositories` applied.
    moved: DeprecatedRegistries,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            default_registry: DOCKER_HUB.into(),
            hosts: HashMap::new(),
            docker_credentials: Default::default(),
            hosts_dir: None,
            registries_conf: None,
            providers: None,
            deprecated: DeprecatedRegistries::built_in(),
            moved: DeprecatedRegistries::built_in_moved(),
        }
    }
}

impl RegistryConfig {
    /// Registries with a directory under `dir` (or `_default`) are reached as containerd would.
    pub fn with_hosts_dir(mut self, dir: HostsDir) -> Self {
        self.hosts_dir = Some(Arc::new(dir));
        self
    }

    /// Images are pulled as CRI-O pulls them with `conf` (docs/registry-config.md, "CRI-O:
    /// registries.conf").
    pub fn with_registries_conf(mut self, conf: RegistriesConf) -> Self {
        self.registries_conf = Some(Arc::new(conf));
        self
    }

    pub fn registries_conf(&self) -> Option<&RegistriesConf> {
        self.registries_conf.as_deref()
    }

    pub fn with_providers(mut self, providers: CredentialProviders) -> Self {
        self.providers = Some(Arc::new(providers));
        self
    }

    pub fn hosts_dir(&self) -> Option<&HostsDir> {
        self.hosts_dir.as_deref()
    }

    pub fn providers(&self) -> Option<&CredentialProviders> {
        self.providers.as_deref()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text =
            read_text(path).map_err(|problem| ConfigError { file: file.clone(), key: "(file)".into(), problem })?;
        Self::parse(&text, &file, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses a config; relative paths inside are resolved against `base_dir`.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, problem: String| ConfigError { file: file.into(), key: key.into(), problem };
        let root: FileRoot = if text.trim().is_empty() {
            FileRoot::default()
        } else {
            // Said without the lines around the error: they hold the registries' passwords.
            crate::yaml::from_str(text).map_err(|e| err("(document)", crate::yaml::describe(&e).to_string()))?
        };
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
        let load_docker_config = |key: &str, p: &Path| -> Result<DockerCredentials, ConfigError> {
            let bytes = read_text(&resolve(p)).map_err(|e| err(key, e))?;
            DockerCredentials::parse(bytes.as_bytes()).map_err(|e| err(key, format!("{}: {e}", p.display())))
        };

        let default_registry = match root.default_registry {
            Some(r) => canonical_registry(&r).map_err(|p| err("defaultRegistry", p))?,
            None => DOCKER_HUB.to_string(),
        };
        let docker_credentials = match &root.docker_config {
            Some(p) => load_docker_config("dockerConfig", p)?,
            None => DockerCredentials::default(),
        };
        let mut hosts = HashMap::new();
        for (name, host) in root.registries {
            let key = |field: &str| format!("registries.{name}.{field}");
            let registry = canonical_registry(&name).map_err(|p| err(&format!("registries.{name}"), p))?;
            let ca_pem = match &host.ca_file {
                Some(p) => {
                    let pem = read_text(&resolve(p)).map_err(|e| err(&key("caFile"), e))?;
                    if !pem.contains("-----BEGIN CERTIFICATE-----") {
                        return Err(err(&key("caFile"), format!("{}: no PEM certificate in it", p.display())));
                    }
                    Some(pem.into_bytes())
                }
                None => None,
            };
            if ca_pem.is_some() && host.skip_tls_verify {
                return Err(err(&key("skipTlsVerify"), "set together with caFile: choose one".into()));
            }
            if host.plain_http == Some(true) && (ca_pem.is_some() || host.skip_tls_verify) {
                return Err(err(&key("plainHttp"), "plain HTTP has no TLS to configure".into()));
            }
            let credential = match (host.auth, &host.docker_config) {
                (Some(_), Some(_)) => {
                    return Err(err(&key("auth"), "set together with dockerConfig: choose one".into()));
                }
                (Some(auth), None) => {
                    let password = match (auth.password, auth.password_file) {
                        (Some(p), None) => p,
                        (None, Some(f)) => read_text(&resolve(&f))
                            .map_err(|e| err(&key("auth.passwordFile"), e))?
                            .trim_end_matches(['\n', '\r'])
                            .to_string(),
                        _ => return Err(err(&key("auth"), "needs exactly one of password, passwordFile".into())),
                    };
                    if auth.username.is_empty() {
                        return Err(err(&key("auth.username"), "is empty".into()));
                    }
                    Some(Credential::basic(auth.username, password))
                }
                (None, Some(p)) => {
                    let creds = load_docker_config(&key("dockerConfig"), p)?;
                    let probe = ImageRef::parse(&format!("{registry}/probe")).ok();
                    probe.and_then(|img| creds.lookup(&img).cloned())
                }
                (None, None) => None,
            };
            let mut mirrors = Vec::new();
            for (i, m) in host.mirrors.iter().enumerate() {
                mirrors.push(canonical_registry(m).map_err(|p| err(&key(&format!("mirrors[{i}]")), p))?);
            }
            if host.max_concurrent_requests == Some(0) {
                return Err(err(&key("maxConcurrentRequests"), "must be at least 1".into()));
            }
            if let Some(rps) = host.requests_per_second
                && !(rps.is_finite() && rps > 0.0)
            {
                return Err(err(&key("requestsPerSecond"), format!("must be a positive number, not {rps}")));
            }
            let config = HostConfig {
                plain_http: host.plain_http,
                ca_pem,
                skip_tls_verify: host.skip_tls_verify,
                credential,
                mirrors,
                max_concurrent_requests: host.max_concurrent_requests,
                requests_per_second: host.requests_per_second,
            };
            if hosts.insert(registry.clone(), config).is_some() {
                return Err(err(&format!("registries.{name}"), format!("{registry} is configured twice")));
            }
        }
        let deprecated = DeprecatedRegistries::built_in()
            .with_overrides(&root.deprecated_registries)
            .map_err(|e| err(&format!("deprecatedRegistries.{}", e.key), e.problem))?;
        let moved = DeprecatedRegistries::built_in_moved()
            .with_overrides(&root.moved_repositories)
            .map_err(|e| err(&format!("movedRepositories.{}", e.key), e.problem))?;
        Ok(Self {
            default_registry,
            hosts,
            docker_credentials,
            hosts_dir: None,
            registries_conf: None,
            providers: None,
            deprecated,
            moved,
        })
    }

    pub fn deprecated_registries(&self) -> &DeprecatedRegistries {
        &self.deprecated
    }

    pub fn moved_repositories(&self) -> &DeprecatedRegistries {
        &self.moved
    }

    /// The image under the registry that replaced its own, and when it stands in for it: a
    /// deprecated registry always (it wins over a moved repository it covers: nothing there
    /// is served any more), a moved repository only once the image is `absent`.
    pub fn replacement(&self, image: &ImageRef) -> Option<(ImageRef, Condition)> {
        if let Some(replacement) = self.deprecated.replacement(image) {
            return Some((replacement, Condition::Always));
        }
        self.moved.replacement(image).map(|replacement| (replacement, Condition::WhenAbsent))
    }

    pub fn host(&self, registry: &str) -> HostConfig {
        self.hosts.get(registry).cloned().unwrap_or_default()
    }

    /// Configured credentials for an image: its host's own, else the top-level docker config's.
    pub fn credential_for(&self, image: &ImageRef) -> Option<Credential> {
        self.hosts
            .get(image.registry())
            .and_then(|h| h.credential.clone())
            .or_else(|| self.docker_credentials.lookup(image).cloned())
    }

    /// Every host the operator named (`host[:port]`): the registries and mirrors configured here,
    /// and the hosts directory's. Only these may be reached at a link-local address
    /// (docs/registry-config.md, "Where credentials go").
    pub fn configured_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> =
            self.hosts.iter().flat_map(|(name, host)| std::iter::once(name).chain(&host.mirrors)).cloned().collect();
        if let Some(dir) = &self.hosts_dir {
            hosts.extend(dir.configured_hosts());
        }
        if let Some(conf) = &self.registries_conf {
            hosts.extend(conf.configured_hosts());
        }
        hosts
    }

    pub fn parse_image(&self, reference: &str) -> Result<ImageRef, crate::image::ImageRefError> {
        ImageRef::parse_with_default(reference, &self.default_registry)
    }
}

/// A registry name as it appears in canonical references (`index.docker.io` is `docker.io`).
fn canonical_registry(name: &str) -> Result<String, String> {
    let parsed = ImageRef::parse(&format!("{name}/pullcheck-probe"))
        .ok()
        .filter(|r| r.repository() == "pullcheck-probe" || r.registry() == DOCKER_HUB);
    match parsed {
        Some(r) if name.contains(['.', ':']) || name == "localhost" => Ok(r.registry().to_string()),
        _ => Err(format!("{name:?} is not a registry host (a host name with a dot or port, or localhost)")),
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A file's text, read up to the bound and no further (a FIFO or a /proc file has no size to
/// trust beforehand).
fn read_text(path: &Path) -> Result<String, String> {
    let bytes = read_bounded(path, MAX_FILE_BYTES).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// At most `limit` bytes of a file; more is an error, never read into memory.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegistryConfig, ConfigError> {
        RegistryConfig::parse(text, "reg.yaml", Path::new("/nonexistent"))
    }

    fn problem(text: &str) -> String {
        match parse(text) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_config() {
        let cfg = parse(
            "defaultRegistry: mirror.example:5000\nregistries:\n  docker.io:\n    mirrors: [mirror.example:5000]\n    auth: {username: u, password: p}\n    maxConcurrentRequests: 4\n    requestsPerSecond: 2.5\n  mirror.example:5000:\n    plainHttp: true\n",
        )
        .expect("valid");
        assert_eq!(cfg.default_registry, "mirror.example:5000");
        let hub = cfg.host("docker.io");
        assert_eq!(hub.mirrors, vec!["mirror.example:5000".to_string()]);
        assert_eq!(hub.max_concurrent_requests, Some(4));
        assert_eq!(cfg.host("mirror.example:5000").transport("mirror.example:5000"), Transport::Http);
        let img = ImageRef::parse("docker.io/library/nginx").expect("valid");
        assert_eq!(cfg.credential_for(&img), Some(Credential::basic("u", "p")));
    }

    #[test]
    fn configured_hosts_are_registries_and_their_mirrors() {
        let cfg = parse("registries:\n  169.254.10.5:5000:\n    mirrors: [mirror.example:5000]\n").expect("valid");
        let mut hosts = cfg.configured_hosts();
        hosts.sort();
        assert_eq!(hosts, ["169.254.10.5:5000", "mirror.example:5000"]);
        assert!(RegistryConfig::default().configured_hosts().is_empty());
    }

    #[test]
    fn index_docker_io_is_docker_io() {
        let cfg = parse("registries:\n  index.docker.io:\n    maxConcurrentRequests: 3\n").expect("valid");
        assert_eq!(cfg.host("docker.io").max_concurrent_requests, Some(3));
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        assert_eq!(
            problem("registries:\n  r.example:\n    requestsPerSecond: 0\n"),
            "reg.yaml: registries.r.example.requestsPerSecond: must be a positive number, not 0"
        );
        assert!(problem("registries:\n  r.example:\n    bogus: 1\n").starts_with("reg.yaml: (document): "));
        assert!(problem("registries:\n  r.example:\n    bogus: 1\n").contains("bogus"));
        assert!(problem("registries:\n  nohost:\n    plainHttp: true\n").starts_with("reg.yaml: registries.nohost: "));
        assert!(problem("registries:\n  r.example:\n    mirrors: ['Bad Host']\n").contains("mirrors[0]"));
        assert!(problem("registries:\n  r.example:\n    caFile: ca.pem\n").contains("registries.r.example.caFile"));
        assert!(problem("registries:\n  r.example:\n    auth: {username: u}\n").contains("exactly one of password"));
        assert!(
            problem("registries:\n  r.example:\n    plainHttp: true\n    skipTlsVerify: true\n").contains("plainHttp")
        );
        assert!(problem("registries: [").starts_with("reg.yaml: (document): "));
        assert_eq!(
            problem("deprecatedRegistries:\n  old.example: old.example\n"),
            "reg.yaml: deprecatedRegistries.old.example: old.example cannot replace itself"
        );
        assert!(
            problem("deprecatedRegistries:\n  nohost: new.example\n")
                .starts_with("reg.yaml: deprecatedRegistries.nohost: ")
        );
        assert!(
            problem("deprecatedRegistries:\n  old.example: 'quay.io/Org'\n")
                .contains("deprecatedRegistries.old.example")
        );
    }

    #[test]
    fn deprecated_registries_extend_and_override_the_built_in_table() {
        let image = |s: &str| ImageRef::parse(s).expect("valid");
        let default = RegistryConfig::default();
        assert_eq!(
            default.replacement(&image("k8s.gcr.io/pause:3.9")).map(|(r, c)| (r.to_string(), c)),
            Some(("registry.k8s.io/pause:3.9".into(), Condition::Always))
        );
        let cfg = parse("deprecatedRegistries:\n  k8s.gcr.io: null\n  old.example/team: new.example:5000/t\n  gcr.io/google-containers: ~\n").expect("valid");
        assert_eq!(cfg.replacement(&image("k8s.gcr.io/pause:3.9")), None, "removed by null");
        assert_eq!(cfg.replacement(&image("gcr.io/google-containers/pause:3.1")), None, "removed by ~");
        assert_eq!(
            cfg.replacement(&image("old.example/team/app:v1")).map(|(r, _)| r.to_string()).as_deref(),
            Some("new.example:5000/t/app:v1")
        );
        assert_eq!(cfg.deprecated_registries().entries().count(), super::deprecated::BUILT_IN.len() - 2 + 1);
    }

    #[test]
    fn moved_repositories_replace_only_when_absent_and_are_overridable() {
        let image = |s: &str| ImageRef::parse(s).expect("valid");
        let replaced = |cfg: &RegistryConfig, s: &str| cfg.replacement(&image(s)).map(|(r, c)| (r.to_string(), c));
        let default = RegistryConfig::default();
        assert_eq!(
            replaced(&default, "bitnami/redis:7.2.4"),
            Some(("docker.io/bitnamilegacy/redis:7.2.4".into(), Condition::WhenAbsent))
        );
        let cfg = parse(
            "movedRepositories:\n  docker.io/bitnami: null\n  old.example/team: new.example/team\n\
             deprecatedRegistries:\n  old.example/team/frozen: frozen.example\n",
        )
        .expect("valid");
        assert_eq!(replaced(&cfg, "bitnami/redis:7.2.4"), None, "removed by null");
        assert_eq!(
            replaced(&cfg, "old.example/team/app:1"),
            Some(("new.example/team/app:1".into(), Condition::WhenAbsent))
        );
        assert_eq!(
            replaced(&cfg, "old.example/team/frozen/app:1"),
            Some(("frozen.example/app:1".into(), Condition::Always)),
            "a deprecated registry wins over a moved repository covering it"
        );
        assert_eq!(
            problem("movedRepositories:\n  old.example: old.example\n"),
            "reg.yaml: movedRepositories.old.example: old.example cannot replace itself"
        );
    }

    #[test]
    fn loopback_hosts_as_containerd_reaches_them() {
        let unconfigured = HostConfig::default();
        for host in ["localhost:5000", "127.0.0.1:5000", "[::1]:5000"] {
            assert_eq!(unconfigured.transport(host), Transport::HttpsThenHttp, "{host}");
        }
        assert_eq!(unconfigured.transport("127.0.0.1:80"), Transport::Http);
        assert_eq!(unconfigured.transport("127.0.0.1:443"), Transport::Https);
        assert_eq!(unconfigured.transport("localhost"), Transport::Https);
        assert_eq!(unconfigured.transport("registry.example:5000"), Transport::Https);
        let with_ca = HostConfig { ca_pem: Some(b"pem".to_vec()), ..HostConfig::default() };
        assert_eq!(with_ca.transport("127.0.0.1:5443"), Transport::Https, "a CA means TLS, loopback or not");
        let skip = HostConfig { skip_tls_verify: true, ..HostConfig::default() };
        assert_eq!(skip.transport("127.0.0.1:5443"), Transport::Https);
        let plain = HostConfig { plain_http: Some(true), ..HostConfig::default() };
        assert_eq!(plain.transport("registry.example"), Transport::Http);
    }
}
