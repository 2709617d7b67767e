//! CRI-O's registry configuration (`--registries-conf`, `--containers-certs-dir`):
//! containers-registries.conf(5) version 2 with its `registries.conf.d/*.conf` drop-ins, and the
//! per-host certificates of `certs.d/<host[:port]>/`, resolved to the ordered pull sources
//! CRI-O (containers/image, `sysregistriesv2`) would try. docs/registry-config.md ("CRI-O:
//! registries.conf") states the semantics.
//!
//! Every file is read by [`RegistriesConf::load`]: probes never touch the disk. What cannot be
//! honoured (version 1 tables, an unknown `pull-from-mirror`, a location with a scheme) is an
//! error at load, never a silently different answer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

use super::hosts::{Capabilities, Endpoint, MAX_PEM_BYTES, check_identity, describe_toml_error, is_cert_pem};
use super::read_bounded;
use crate::image::{ImageRef, api_host};

/// Largest `registries.conf` (or drop-in) read.
const MAX_CONF_BYTES: u64 = 1 << 20;
/// The drop-in directory beside the file.
pub const DROP_IN_DIR: &str = "registries.conf.d";

/// What went wrong loading the configuration: `…/registries.conf:
/// registry[1].mirror[0].pull-from-mirror: …`. The same shape as the hosts directory's errors
/// (one [`super::ConfigFileError`]).
pub type RegistriesConfError = super::ConfigFileError;

/// `pull-from-mirror`: which references a mirror is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

impl PullFrom {
    fn serves(self, by_digest: bool) -> bool {
        match self {
            Self::All => true,
            Self::DigestOnly => by_digest,
            Self::TagOnly => !by_digest,
        }
    }
}

/// A mirror of a `[[registry]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from: PullFrom,
}

/// One `[[registry]]` table, validated; `prefix` defaulted to `location`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub prefix: String,
    /// Empty only under a wildcard prefix: the image's own host, not rewritten.
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
}

/// Where an image is pulled from, in order: the mirrors that serve the reference, then the
/// location; each with the reference rewritten from the prefix to its location.
#[derive(Debug)]
pub enum Sources {
    /// `blocked = true`: CRI-O refuses the pull without sending a request.
    Blocked {
        prefix: String,
    },
    Pull(Vec<PullSource>),
}

/// One endpoint and the reference asked for there.
#[derive(Debug)]
pub struct PullSource {
    pub endpoint: Endpoint,
    pub image: ImageRef,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct FileRoot {
    #[serde(default)]
    registry: Vec<FileRegistry>,
    /// Version 1's `[registries.search]` / `.insecure` / `.block` tables.
    registries: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<FileMirror>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileMirror {
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

/// TLS material of one `certs.d/<host[:port]>/` directory.
#[derive(Clone, Default)]
struct HostCerts {
    ca_pems: Vec<Vec<u8>>,
    client_identities: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for HostCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCerts")
            .field("ca_pems", &self.ca_pems.len())
            .field("client_identities", &self.client_identities.len())
            .finish()
    }
}

/// The merged `[[registry]]` tables and the certificates, loaded once.
#[derive(Clone, Debug, Default)]
pub struct RegistriesConf {
    /// By prefix: a later file's table replaces an earlier one with the same prefix.
    registries: BTreeMap<String, Registry>,
    certs: HashMap<String, HostCerts>,
}

impl RegistriesConf {
    /// Reads `file`, then `registries.conf.d/*.conf` beside it in name order, and every
    /// directory under each of `certs_dirs`: for a host, the first of them that has a directory
    /// for it is used (containers/image tries `/etc/containers/certs.d`, then
    /// `/etc/docker/certs.d`).
    pub fn load(file: &Path, certs_dirs: &[PathBuf]) -> Result<Self, RegistriesConfError> {
        let mut files = vec![file.to_path_buf()];
        let drop_ins = file.parent().unwrap_or(Path::new(".")).join(DROP_IN_DIR);
        if drop_ins.is_dir() {
            let dir_err = |source| RegistriesConfError::Dir { dir: drop_ins.clone(), source };
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&drop_ins).map_err(dir_err)? {
                let path = entry.map_err(dir_err)?.path();
                if path.extension().is_some_and(|e| e == "conf") && path.is_file() {
                    names.push(path);
                }
            }
            names.sort();
            files.extend(names);
        }
        let mut documents = Vec::with_capacity(files.len());
        for path in files {
            let bytes = read_bounded(&path, MAX_CONF_BYTES)
                .map_err(|e| RegistriesConfError::File { file: path.clone(), problem: e.to_string() })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| RegistriesConfError::File { file: path.clone(), problem: "not UTF-8".into() })?;
            documents.push((path, text));
        }
        let mut conf = Self::parse(&documents)?;
        // A certs directory that does not exist holds no certificates, as for containers/image.
        for dir in certs_dirs.iter().filter(|d| d.exists()) {
            for (host, certs) in load_certs_dir(dir)? {
                conf.certs.entry(host).or_insert(certs);
            }
        }
        Ok(conf)
    }

    /// Merges parsed documents in order (`(file, text)`): the same prefix later replaces earlier.
    pub fn parse(documents: &[(PathBuf, String)]) -> Result<Self, RegistriesConfError> {
        let mut registries = BTreeMap::new();
        for (file, text) in documents {
            for registry in parse_document(file, text)? {
                registries.insert(registry.prefix.clone(), registry);
            }
        }
        Ok(Self { registries, certs: HashMap::new() })
    }

    /// The `[[registry]]` whose prefix is the longest match for `image` (containers/image
    /// `FindRegistry`), if any.
    pub fn find(&self, image: &ImageRef) -> Option<&Registry> {
        let reference = image.to_string();
        self.registries.values().filter(|r| matches_prefix(&reference, &r.prefix)).fold(
            None,
            |best: Option<&Registry>, r| match best {
                Some(b) if b.prefix.len() >= r.prefix.len() => Some(b),
                _ => Some(r),
            },
        )
    }

    /// Where CRI-O pulls `image` from. `None` when no table matches and `certs.d` has nothing
    /// for its host: the registry config decides then, as without this flag.
    pub fn sources(&self, image: &ImageRef) -> Option<Result<Sources, String>> {
        let Some(registry) = self.find(image) else {
            if !self.certs.contains_key(image.registry()) {
                return None;
            }
            return Some(self.source(image.clone(), false, false).map(|s| Sources::Pull(vec![s])));
        };
        if registry.blocked {
            return Some(Ok(Sources::Blocked { prefix: registry.prefix.clone() }));
        }
        Some(self.pull_sources(registry, image).map(Sources::Pull))
    }

    /// containers/image `PullSourcesFromReference`: the mirrors for this kind of reference, in
    /// order, then the location.
    fn pull_sources(&self, registry: &Registry, image: &ImageRef) -> Result<Vec<PullSource>, String> {
        let by_digest = image.digest().is_some();
        let mut sources = Vec::new();
        for mirror in registry.mirrors.iter().filter(|m| m.pull_from.serves(by_digest)) {
            let rewritten = rewrite(image, &registry.prefix, &mirror.location)?;
            sources.push(self.source(rewritten, mirror.insecure, true)?);
        }
        let rewritten = rewrite(image, &registry.prefix, &registry.location)?;
        sources.push(self.source(rewritten, registry.insecure, false)?);
        Ok(sources)
    }

    /// The endpoint serving `image`'s registry: HTTPS, with its `certs.d` material; `insecure`
    /// skips verification and falls back to plain HTTP (containers/image's meaning).
    fn source(&self, image: ImageRef, insecure: bool, is_mirror: bool) -> Result<PullSource, String> {
        let registry = image.registry();
        let certs = self.certs.get(registry).cloned().unwrap_or_default();
        let host = api_host(registry).to_string();
        let url = Url::parse(&format!("https://{host}/v2")).map_err(|e| format!("{host}: {e}"))?;
        let endpoint = Endpoint {
            url,
            host,
            capabilities: Capabilities::ALL,
            ca_pems: certs.ca_pems,
            skip_verify: insecure.then_some(true),
            client_identities: certs.client_identities,
            headers: Vec::new(),
            is_mirror,
            http_fallback: insecure,
            dial_timeout: None,
        };
        Ok(PullSource { endpoint, image })
    }

    /// Every host named: prefixes' and locations' hosts, mirrors', and `certs.d`'s directories.
    pub fn configured_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for registry in self.registries.values() {
            let locations = std::iter::once(&registry.location).chain(registry.mirrors.iter().map(|m| &m.location));
            for name in std::iter::once(&registry.prefix).chain(locations) {
                let host = name.split('/').next().unwrap_or_default();
                if !host.is_empty() && !host.starts_with("*.") {
                    hosts.push(host.to_string());
                }
            }
        }
        hosts.extend(self.certs.keys().cloned());
        hosts
    }
}

/// containers/image `refMatchesPrefix`: `reference` starts with `prefix` and continues with a
/// separator (`/`, `:`, `@`) or ends; `*.example.com` matches any host ending `.example.com`.
pub fn matches_prefix(reference: &str, prefix: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix('*') {
        return reference.split_once('/').is_some_and(|(host, _)| host.ends_with(domain));
    }
    match reference.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

/// containers/image `rewriteReference`: the matched prefix (the host, for a wildcard) replaced
/// by `location`; an empty location (wildcard only) keeps the reference.
pub fn rewrite(image: &ImageRef, prefix: &str, location: &str) -> Result<ImageRef, String> {
    let reference = image.to_string();
    let matched = if prefix.starts_with("*.") { image.registry() } else { prefix };
    if location.is_empty() || !matches_prefix(&reference, prefix) {
        return Ok(image.clone());
    }
    let rewritten = format!("{location}{}", reference.get(matched.len()..).unwrap_or_default());
    ImageRef::parse(&rewritten).map_err(|e| format!("{reference} rewritten by prefix {prefix:?} to {rewritten:?}: {e}"))
}

/// One file's `[[registry]]` tables, validated as containers/image's `postProcess` does.
fn parse_document(file: &Path, text: &str) -> Result<Vec<Registry>, RegistriesConfError> {
    let key_err = |key: String, problem: String| RegistriesConfError::Key { file: file.to_path_buf(), key, problem };
    let root: FileRoot = toml::from_str(text).map_err(|e| RegistriesConfError::File {
        file: file.to_path_buf(),
        problem: format!("not valid TOML: {}", describe_toml_error(text, &e)),
    })?;
    if root.registries.is_some() {
        return Err(key_err(
            "registries".into(),
            "version 1 tables ([registries.search], .insecure, .block) are not supported: use [[registry]]".into(),
        ));
    }
    let mut registries = Vec::with_capacity(root.registry.len());
    for (i, table) in root.registry.into_iter().enumerate() {
        let key = |field: &str| format!("registry[{i}].{field}");
        let prefix_raw = table.prefix.as_deref().map(trim_location);
        let wildcard = prefix_raw.is_some_and(|p| p.starts_with("*."));
        let location = match table.location.as_deref().map(trim_location) {
            Some(l) if !l.is_empty() => check_location(l).map_err(|p| key_err(key("location"), p))?,
            _ if wildcard => String::new(),
            _ => return Err(key_err(key("location"), "cannot be empty (only a wildcard prefix may omit it)".into())),
        };
        let prefix = match prefix_raw {
            Some(p) if !p.is_empty() => check_prefix(p).map_err(|problem| key_err(key("prefix"), problem))?,
            _ => location.clone(),
        };
        let mut mirrors = Vec::with_capacity(table.mirror.len());
        for (j, mirror) in table.mirror.into_iter().enumerate() {
            let mkey = |field: &str| key(&format!("mirror[{j}].{field}"));
            let location = match mirror.location.as_deref().map(trim_location) {
                Some(l) if !l.is_empty() => check_location(l).map_err(|p| key_err(mkey("location"), p))?,
                _ => return Err(key_err(mkey("location"), "cannot be empty".into())),
            };
            let pull_from = match mirror.pull_from_mirror.as_deref() {
                Some(_) if table.mirror_by_digest_only => {
                    return Err(key_err(
                        mkey("pull-from-mirror"),
                        "set together with the registry's mirror-by-digest-only: choose one".into(),
                    ));
                }
                None | Some("") | Some("all") if table.mirror_by_digest_only => PullFrom::DigestOnly,
                None | Some("") | Some("all") => PullFrom::All,
                Some("digest-only") => PullFrom::DigestOnly,
                Some("tag-only") => PullFrom::TagOnly,
                Some(other) => {
                    return Err(key_err(
                        mkey("pull-from-mirror"),
                        format!("{other:?} is not one of all, digest-only, tag-only"),
                    ));
                }
            };
            mirrors.push(Mirror { location, insecure: mirror.insecure, pull_from });
        }
        registries.push(Registry { prefix, location, insecure: table.insecure, blocked: table.blocked, mirrors });
    }
    Ok(registries)
}

/// containers/image `parseLocation`: trailing slashes dropped.
fn trim_location(raw: &str) -> &str {
    raw.trim_end_matches('/')
}

/// A location is `host[:port][/namespace…]`, no scheme: the start of an image name.
fn check_location(location: &str) -> Result<String, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Err(format!("{location:?}: URI schemes are not supported"));
    }
    let host = location.split('/').next().unwrap_or_default();
    let qualified = host.contains(['.', ':']) || host == "localhost";
    match ImageRef::parse(&format!("{location}/pullcheck-probe")) {
        Ok(_) if qualified => Ok(location.to_string()),
        _ => Err(format!("{location:?} is not host[:port][/namespace…] with a host name that has a dot or port")),
    }
}

/// A prefix is a location, optionally with a tag or digest, or `*.domain`.
fn check_prefix(prefix: &str) -> Result<String, String> {
    if let Some(domain) = prefix.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['*', '/']) {
            return Err(format!("{prefix:?}: a wildcard is only `*.domain`, without a path"));
        }
        return Ok(prefix.to_string());
    }
    if prefix.contains('*') {
        return Err(format!("{prefix:?}: a wildcard may only start the prefix, as `*.domain`"));
    }
    let name = prefix.split('@').next().unwrap_or_default();
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let name = match name[last..].find(':') {
        Some(i) if last > 0 => &name[..last + i],
        _ => name,
    };
    check_location(name)?;
    Ok(prefix.to_string())
}

/// Every `certs.d/<host[:port]>/` (containers/image `SetupCertificates`): `*.crt` CAs, and a
/// client certificate `*.cert` with its key `*.key` of the same name (either alone is an error).
fn load_certs_dir(dir: &Path) -> Result<HashMap<String, HostCerts>, RegistriesConfError> {
    let dir_err = |d: &Path| {
        let d = d.to_path_buf();
        move |source| RegistriesConfError::Dir { dir: d, source }
    };
    let mut certs = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err(dir))? {
        let path = entry.map_err(dir_err(dir))?.path();
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        certs.insert(name, load_host_certs(&path)?);
    }
    Ok(certs)
}

fn load_host_certs(dir: &Path) -> Result<HostCerts, RegistriesConfError> {
    let dir_err = |source| RegistriesConfError::Dir { dir: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    let file_err = |path: &Path, problem: String| RegistriesConfError::File { file: path.to_path_buf(), problem };
    let read = |path: &Path| read_bounded(path, MAX_PEM_BYTES).map_err(|e| file_err(path, e.to_string()));
    let mut certs = HostCerts::default();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".crt") {
            let pem = read(&path)?;
            if !is_cert_pem(&pem) {
                return Err(file_err(&path, "no PEM certificate in it".into()));
            }
            certs.ca_pems.push(pem);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key_name = format!("{stem}.key");
            if !names.contains(&key_name) {
                return Err(file_err(&path, format!("missing key {key_name} for the client certificate")));
            }
            let (cert, key) = (read(&path)?, read(&dir.join(&key_name))?);
            check_identity(&cert, &key).map_err(|p| file_err(&path, p))?;
            certs.client_identities.push((cert, key));
        } else if let Some(stem) = name.strip_suffix(".key")
            && !names.contains(&format!("{stem}.cert"))
        {
            return Err(file_err(&path, format!("missing client certificate {stem}.cert for the key")));
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(files: &[&str]) -> Result<RegistriesConf, RegistriesConfError> {
        let docs: Vec<(PathBuf, String)> =
            files.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("/etc/r{i}.conf")), t.to_string())).collect();
        RegistriesConf::parse(&docs)
    }

    fn error(files: &[&str]) -> String {
        conf(files).map(|_| "accepted".to_string()).unwrap_or_else(|e| e.to_string())
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("valid test image")
    }

    /// `(url, asked reference, mirror, insecure)` of each source, or `blocked <prefix>`.
    fn plan(conf: &RegistriesConf, reference: &str) -> Vec<String> {
        match conf.sources(&image(reference)) {
            None => vec!["registry config".into()],
            Some(Err(e)) => vec![format!("error {e}")],
            Some(Ok(Sources::Blocked { prefix })) => vec![format!("blocked {prefix}")],
            Some(Ok(Sources::Pull(sources))) => sources
                .iter()
                .map(|s| {
                    let e = &s.endpoint;
                    let kind = if e.is_mirror { "mirror" } else { "location" };
                    let insecure = if e.http_fallback { " insecure" } else { "" };
                    format!("{kind} {} {}{insecure}", e.url, s.image)
                })
                .collect(),
        }
    }

    #[test]
    fn prefix_matching_follows_separators_and_wildcards() {
        assert!(matches_prefix("quay.io/foo/bar:1", "quay.io/foo"));
        assert!(matches_prefix("quay.io/foo:1", "quay.io/foo"));
        assert!(matches_prefix("quay.io/foo@sha256:ab", "quay.io/foo"));
        assert!(matches_prefix("quay.io/foo", "quay.io/foo"));
        assert!(!matches_prefix("quay.io/foobar/x:1", "quay.io/foo"));
        assert!(!matches_prefix("quay.io:5000/foo/x:1", "quay.io/foo"));
        assert!(matches_prefix("a.example.com/x:1", "*.example.com"));
        assert!(matches_prefix("b.a.example.com/x:1", "*.example.com"));
        assert!(!matches_prefix("example.com/x:1", "*.example.com"));
        assert!(!matches_prefix("other.com/a.example.com/x:1", "*.example.com"));
    }

    #[test]
    fn longest_prefix_wins_and_rewrites_the_repository() {
        let c = conf(&["[[registry]]\nlocation = \"quay.io\"\n\
             [[registry]]\nprefix = \"quay.io/foo\"\nlocation = \"mirror.example/quay-foo\"\n\
             [[registry]]\nprefix = \"docker.io/library\"\nlocation = \"hub.example:5000/lib\"\n"])
        .expect("valid");
        assert_eq!(plan(&c, "quay.io/foo/bar:1"), ["location https://mirror.example/v2 mirror.example/quay-foo/bar:1"]);
        assert_eq!(plan(&c, "quay.io/other/bar:1"), ["location https://quay.io/v2 quay.io/other/bar:1"]);
        assert_eq!(plan(&c, "nginx"), ["location https://hub.example:5000/v2 hub.example:5000/lib/nginx:latest"]);
        assert_eq!(plan(&c, "docker.io/team/app:1"), ["registry config"]);
    }

    #[test]
    fn mirrors_in_order_by_pull_from_mirror_then_the_location() {
        let c = conf(&["[[registry]]\nprefix = \"r.example/team\"\nlocation = \"r.example/team\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"digest.example/team\"\npull-from-mirror = \"digest-only\"\n\
             [[registry.mirror]]\nlocation = \"tag.example:5000/t\"\npull-from-mirror = \"tag-only\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"all.example\"\n"])
        .expect("valid");
        assert_eq!(
            plan(&c, "r.example/team/app:v1"),
            [
                "mirror https://tag.example:5000/v2 tag.example:5000/t/app:v1 insecure",
                "mirror https://all.example/v2 all.example/app:v1",
                "location https://r.example/v2 r.example/team/app:v1 insecure"
            ]
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            plan(&c, &format!("r.example/team/app@{digest}")),
            [
                format!("mirror https://digest.example/v2 digest.example/team/app@{digest}"),
                format!("mirror https://all.example/v2 all.example/app@{digest}"),
                format!("location https://r.example/v2 r.example/team/app@{digest} insecure")
            ]
        );
        let by_digest = conf(&["[[registry]]\nlocation = \"r.example\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"m.example\"\n"])
        .expect("valid");
        assert_eq!(plan(&by_digest, "r.example/app:v1"), ["location https://r.example/v2 r.example/app:v1"]);
        assert_eq!(plan(&by_digest, &format!("r.example/app@{digest}")).len(), 2);
    }

    #[test]
    fn blocked_and_wildcard_prefixes() {
        let c = conf(&["[[registry]]\nprefix = \"*.blocked.example\"\nblocked = true\n\
             [[registry]]\nprefix = \"*.corp.example\"\n[[registry.mirror]]\nlocation = \"cache.example\"\n\
             [[registry]]\nlocation = \"r.example/bad\"\nblocked = true\n"])
        .expect("valid");
        assert_eq!(plan(&c, "x.blocked.example/app:1"), ["blocked *.blocked.example"]);
        assert_eq!(plan(&c, "r.example/bad/app:1"), ["blocked r.example/bad"]);
        assert_eq!(plan(&c, "r.example/good/app:1"), ["registry config"]);
        assert_eq!(
            plan(&c, "reg.corp.example/team/app:1"),
            [
                "mirror https://cache.example/v2 cache.example/team/app:1",
                "location https://reg.corp.example/v2 reg.corp.example/team/app:1"
            ]
        );
    }

    #[test]
    fn drop_ins_replace_tables_with_the_same_prefix() {
        let c = conf(&[
            "[[registry]]\nlocation = \"r.example\"\n[[registry.mirror]]\nlocation = \"old.example\"\n\
             [[registry]]\nlocation = \"kept.example\"\ninsecure = true\n",
            "[[registry]]\nprefix = \"r.example\"\nlocation = \"r.example\"\n[[registry.mirror]]\nlocation = \"new.example\"\n",
        ])
        .expect("valid");
        assert_eq!(
            plan(&c, "r.example/app:1"),
            ["mirror https://new.example/v2 new.example/app:1", "location https://r.example/v2 r.example/app:1"]
        );
        assert_eq!(plan(&c, "kept.example/app:1"), ["location https://kept.example/v2 kept.example/app:1 insecure"]);
    }

    #[test]
    fn configured_hosts_are_prefix_location_and_mirror_hosts() {
        let c = conf(&["[[registry]]\nprefix = \"a.example/team\"\nlocation = \"b.example:5000/t\"\n\
             [[registry.mirror]]\nlocation = \"169.254.10.5:5000/m\"\n\
             [[registry]]\nprefix = \"*.corp.example\"\n"])
        .expect("valid");
        let mut hosts = c.configured_hosts();
        hosts.sort();
        assert_eq!(hosts, ["169.254.10.5:5000", "a.example", "b.example:5000"]);
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        let c = conf(&["[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"mirror.gcr.io\"\n"])
            .expect("valid");
        assert_eq!(
            plan(&c, "nginx:1"),
            [
                "mirror https://mirror.gcr.io/v2 mirror.gcr.io/library/nginx:1",
                "location https://registry-1.docker.io/v2 docker.io/library/nginx:1"
            ]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_file_and_key() {
        let cases = [
            ("[registries.search]\nregistries = [\"a.example\"]\n", "/etc/r0.conf: registries: version 1"),
            ("[[registry]]\nprefix = \"a.example\"\n", "registry[0].location: cannot be empty"),
            (
                "[[registry]]\nlocation = \"https://a.example\"\n",
                "registry[0].location: \"https://a.example\": URI schemes",
            ),
            ("[[registry]]\nlocation = \"nohost/x\"\n", "registry[0].location: \"nohost/x\" is not host"),
            ("[[registry]]\nprefix = \"a.*.example\"\nlocation = \"a.example\"\n", "registry[0].prefix: "),
            ("[[registry]]\nprefix = \"*.example/x\"\n", "registry[0].prefix: "),
            (
                "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"never\"\n",
                "registry[0].mirror[0].pull-from-mirror: \"never\" is not one of",
            ),
            (
                "[[registry]]\nlocation = \"a.example\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"all\"\n",
                "registry[0].mirror[0].pull-from-mirror: set together with",
            ),
            (
                "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\ninsecure = true\n",
                "mirror[0].location: cannot be empty",
            ),
            ("[[registry]\n", "/etc/r0.conf: not valid TOML: line 1"),
        ];
        for (text, expected) in cases {
            let e = error(&[text]);
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        // Keys containers/image has and pullcheck does not need are ignored, as there.
        assert_eq!(
            error(&["unqualified-search-registries = [\"a.example\"]\nshort-name-mode = \"enforcing\"\n"]),
            "accepted"
        );
        // A prefix may name a tag.
        assert_eq!(error(&["[[registry]]\nprefix = \"a.example/app:v1\"\nlocation = \"b.example/app\"\n"]), "accepted");
    }

    #[test]
    fn certs_dir_pairs_and_errors() {
        const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
        const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n";
        let root = tempfile::tempdir().expect("tempdir");
        let host = root.path().join("r.example:5000");
        std::fs::create_dir_all(&host).expect("mkdir");
        std::fs::write(host.join("ca.crt"), CERT).expect("write");
        std::fs::write(host.join("client.cert"), CERT).expect("write");
        std::fs::write(host.join("client.key"), KEY).expect("write");
        let certs = load_certs_dir(root.path()).expect("valid");
        let entry = certs.get("r.example:5000").expect("host dir");
        assert_eq!((entry.ca_pems.len(), entry.client_identities.len()), (1, 1));
        let c = RegistriesConf { certs, ..RegistriesConf::default() };
        let Some(Ok(Sources::Pull(sources))) = c.sources(&image("r.example:5000/app:1")) else {
            panic!("certs.d alone configures the host")
        };
        assert_eq!(sources[0].endpoint.ca_pems, [CERT.as_bytes().to_vec()]);
        assert!(format!("{:?}", sources[0]).find("MIIE").is_none(), "no key material in Debug");
        assert!(c.sources(&image("other.example/app:1")).is_none());

        // The first directory that has the host wins; a missing one is skipped.
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(other.path().join("r.example:5000")).expect("mkdir");
        let file = other.path().join("registries.conf");
        std::fs::write(&file, "").expect("write");
        let dirs = [other.path().join("missing"), other.path().to_path_buf(), root.path().to_path_buf()];
        let loaded = RegistriesConf::load(&file, &dirs).expect("valid");
        assert!(loaded.certs.get("r.example:5000").is_some_and(|c| c.ca_pems.is_empty()), "the first wins");

        std::fs::remove_file(host.join("client.key")).expect("rm");
        let e = load_certs_dir(root.path()).map(|_| ()).expect_err("cert without key").to_string();
        assert!(e.ends_with("client.cert: missing key client.key for the client certificate"), "{e}");
        std::fs::write(host.join("client.key"), KEY).expect("write");
        std::fs::remove_file(host.join("client.cert")).expect("rm");
        let e = load_certs_dir(root.path()).map(|_| ()).expect_err("key without cert").to_string();
        assert!(e.ends_with("client.key: missing client certificate client.cert for the key"), "{e}");
    }
}
