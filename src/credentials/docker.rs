//! Docker credentials as kubelet reads them: `config.json` / `kubernetes.io/dockerconfigjson`
//! (`{"auths": {...}}`) and the legacy `.dockercfg` / `kubernetes.io/dockercfg` (the map alone),
//! matched to an image's registry with kubelet's rules (globs per host label, port, path prefix).

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::Credential;
use crate::image::{DOCKER_HUB, ImageRef};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("not a docker config: {0}")]
    Malformed(String),
    #[error("entry {0:?}: `auth` is not base64 of `username:password`")]
    BadAuthField(String),
    #[error("entry {0:?}: no username/password, `auth` or `registrytoken`")]
    Empty(String),
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
struct ConfigJson {
    auths: BTreeMap<String, Entry>,
}

/// Credentials keyed by the registry patterns they were written for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerCredentials {
    /// In kubelet's keyring order: patterns sorted in reverse (so `r.example/team` comes before
    /// `r.example`: the more specific match is tried first).
    entries: Vec<(String, Credential)>,
}

impl DockerCredentials {
    /// Parses `config.json` (with `auths`) or the legacy `.dockercfg` map.
    pub fn parse(bytes: &[u8]) -> Result<Self, CredentialError> {
        let malformed = |e: serde_json::Error| CredentialError::Malformed(e.to_string());
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        let entries: BTreeMap<String, Entry> = if value.get("auths").is_some() {
            serde_json::from_value::<ConfigJson>(value).map_err(malformed)?.auths
        } else {
            serde_json::from_value(value).map_err(malformed)?
        };
        let mut parsed = Vec::with_capacity(entries.len());
        for (pattern, entry) in entries {
            // An entry docker wrote for a credential helper has no secret: not ours to use.
            if entry.auth.is_none() && entry.username.is_none() && entry.registrytoken.is_none() {
                continue;
            }
            parsed.push((normalise_pattern(&pattern), entry_credential(&pattern, entry)?));
        }
        parsed.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(Self { entries: parsed })
    }

    pub fn single(registry: &str, credential: Credential) -> Self {
        Self { entries: vec![(normalise_pattern(registry), credential)] }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credential kubelet would send first for this image.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        self.matching(image).next().map(|(_, c)| c)
    }

    /// Every entry for this image, with its pattern, in kubelet's order.
    pub fn matching<'a>(&'a self, image: &ImageRef) -> impl Iterator<Item = (&'a str, &'a Credential)> + 'a {
        let target = format!("{}/{}", image.registry(), image.repository());
        self.entries.iter().filter(move |(pattern, _)| pattern_matches(pattern, &target)).map(|(p, c)| (p.as_str(), c))
    }
}

fn entry_credential(pattern: &str, entry: Entry) -> Result<Credential, CredentialError> {
    if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Credential::Bearer(token));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password)
        && !username.is_empty()
    {
        return Ok(Credential::basic(username.clone(), password.clone()));
    }
    let auth = entry.auth.filter(|a| !a.is_empty()).ok_or_else(|| CredentialError::Empty(pattern.into()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| CredentialError::BadAuthField(pattern.into()))?;
    match decoded.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok(Credential::basic(user, pass)),
        _ => Err(CredentialError::BadAuthField(pattern.into())),
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; scheme and trailing slash dropped.
fn normalise_pattern(pattern: &str) -> String {
    let without_scheme = pattern.split_once("://").map_or(pattern, |(_, rest)| rest);
    let trimmed = without_scheme.trim_end_matches('/');
    let (host, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let host = host.to_ascii_lowercase();
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" { DOCKER_HUB.to_string() } else { host };
    // `index.docker.io/v1` names Docker Hub as a whole, not a repository path.
    if host == DOCKER_HUB && (path == "v1" || path == "v2") || path.is_empty() {
        host
    } else {
        format!("{host}/{path}")
    }
}

/// kubelet's `URLsMatch`: same number of host labels each matching as a glob, equal ports,
/// and the pattern's path a prefix of the image's path.
pub(crate) fn pattern_matches(pattern: &str, target: &str) -> bool {
    let split = |s: &str| -> (String, String) {
        let (host, path) = s.split_once('/').map_or((s, ""), |(h, p)| (h, p));
        (host.to_string(), path.to_string())
    };
    let (p_hostport, p_path) = split(pattern);
    let (t_hostport, t_path) = split(target);
    let (p_host, p_port) = split_port(&p_hostport);
    let (t_host, t_port) = split_port(&t_hostport);
    if p_port != t_port {
        return false;
    }
    let p_labels: Vec<&str> = p_host.split('.').collect();
    let t_labels: Vec<&str> = t_host.split('.').collect();
    if p_labels.len() != t_labels.len() || !p_labels.iter().zip(&t_labels).all(|(p, t)| glob_match(p, t)) {
        return false;
    }
    t_path.starts_with(&p_path)
}

fn split_port(hostport: &str) -> (&str, &str) {
    if hostport.starts_with('[') {
        return match hostport.rsplit_once("]:") {
            Some((h, p)) => (h, p),
            None => (hostport, ""),
        };
    }
    hostport.rsplit_once(':').unwrap_or((hostport, ""))
}

/// `filepath.Match` for one host label: `*` and `?` (labels never contain `/`).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("valid test image")
    }

    fn user_of(creds: &DockerCredentials, img: &str) -> Option<String> {
        creds.lookup(&image(img)).map(|c| match c {
            Credential::Basic { username, .. } => username.clone(),
            Credential::Bearer(_) => "bearer".into(),
        })
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_hub_legacy_key_and_auth_field() {
        let json = format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#, b64("hub:pw"));
        let creds = DockerCredentials::parse(json.as_bytes()).expect("parses");
        assert_eq!(user_of(&creds, "nginx"), Some("hub".into()));
        assert_eq!(user_of(&creds, "quay.io/x/y"), None);
    }

    #[test]
    fn ports_paths_globs_and_specificity() {
        let json = format!(
            r#"{{"auths":{{
              "registry.example:5000":{{"username":"port","password":"p"}},
              "registry.example":{{"username":"noport","password":"p"}},
              "registry.example/team-a":{{"username":"team","password":"p"}},
              "*.gcr.example":{{"auth":"{}"}},
              "tok.example":{{"registrytoken":"xyz"}}
            }}}}"#,
            b64("glob:p")
        );
        let creds = DockerCredentials::parse(json.as_bytes()).expect("parses");
        assert_eq!(user_of(&creds, "registry.example:5000/app"), Some("port".into()));
        assert_eq!(user_of(&creds, "registry.example/app"), Some("noport".into()));
        assert_eq!(user_of(&creds, "registry.example/team-a/app"), Some("team".into()));
        assert_eq!(user_of(&creds, "eu.gcr.example/p/app"), Some("glob".into()));
        assert_eq!(user_of(&creds, "a.b.gcr.example/p/app"), None, "a glob matches one label");
        assert_eq!(user_of(&creds, "tok.example/app"), Some("bearer".into()));
    }

    #[test]
    fn legacy_dockercfg_and_helper_entries() {
        let json = format!(r#"{{"quay.io":{{"auth":"{}","email":"x"}},"helper.example":{{}}}}"#, b64("q:p"));
        let creds = DockerCredentials::parse(json.as_bytes()).expect("parses");
        assert_eq!(user_of(&creds, "quay.io/a/b"), Some("q".into()));
        assert_eq!(user_of(&creds, "helper.example/a"), None);
    }

    #[test]
    fn malformed_configs_are_errors_not_panics() {
        assert!(matches!(DockerCredentials::parse(b"{"), Err(CredentialError::Malformed(_))));
        assert!(matches!(DockerCredentials::parse(b"[]"), Err(CredentialError::Malformed(_))));
        assert_eq!(
            DockerCredentials::parse(br#"{"auths":{"r.example":{"auth":"!!!"}}}"#),
            Err(CredentialError::BadAuthField("r.example".into()))
        );
        let no_colon = format!(r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#, b64("nocolon"));
        assert_eq!(
            DockerCredentials::parse(no_colon.as_bytes()),
            Err(CredentialError::BadAuthField("r.example".into()))
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "abc"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("abc", "abd"));
    }
}
