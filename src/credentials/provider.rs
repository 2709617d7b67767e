//! kubelet's image credential-provider plugins (KEP-2133), run the way kubelet runs them: the
//! `CredentialProviderConfig` that kubelet reads with `--image-credential-provider-config`, the
//! plugins in `--image-credential-provider-bin-dir` (a `CredentialProviderRequest` on stdin, a
//! `CredentialProviderResponse` on stdout), and kubelet's in-memory cache of their answers by
//! `cacheKeyType` and `cacheDuration`. On EKS, GKE and AKS the nodes get registry credentials this
//! way (`ecr-credential-provider`, `auth-provider-gcp`, `acr-credential-provider`), not from
//! pull secrets.
//!
//! A plugin's output is a secret: its stderr is discarded unread, its stdout is only parsed, and
//! no error carries any of either.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;

use super::Credential;
use super::docker::pattern_matches;
use crate::image::{DOCKER_HUB, ImageRef};

/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The most a plugin may print on stdout; more is an error.
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

const CONFIG_KIND: &str = "CredentialProviderConfig";
const CONFIG_GROUP: &str = "kubelet.config.k8s.io";
const PLUGIN_GROUP: &str = "credentialprovider.kubelet.k8s.io";
/// The versions kubelet registers for both the config and the plugin API.
const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];
const REQUEST_KIND: &str = "CredentialProviderRequest";
const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// Cache entries a duration too large for the clock are kept this long instead.
const LONGEST_CACHE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the config (or the bin dir it names binaries in) cannot be used. Names the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ProviderConfigError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: larger than {limit} bytes", file.display())]
    TooLarge { file: PathBuf, limit: u64 },
    #[error("{}: no *.json, *.yaml or *.yml file in this directory", dir.display())]
    EmptyDirectory { dir: PathBuf },
    #[error("{}: not a CredentialProviderConfig: {reason}", file.display())]
    Parse { file: PathBuf, reason: String },
    #[error("{}: {field}: {reason}", file.display())]
    Invalid { file: PathBuf, field: String, reason: String },
    #[error("credential provider bin dir {}: {reason}", dir.display())]
    BinDir { dir: PathBuf, reason: String },
}

/// Why one provider gave no credentials for an image. Never carries the plugin's output.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("credential provider {provider}: cannot run {}: {reason}", path.display())]
    Spawn { provider: String, path: PathBuf, reason: String },
    #[error("credential provider {provider}: no response within {timeout:?}")]
    Timeout { provider: String, timeout: Duration },
    #[error("credential provider {provider}: {status}")]
    Exit { provider: String, status: String },
    #[error("credential provider {provider}: printed more than {limit} bytes")]
    OutputTooLarge { provider: String, limit: u64 },
    #[error("credential provider {provider}: reading its output: {reason}")]
    Io { provider: String, reason: String },
    #[error("credential provider {provider}: invalid response: {problem}")]
    InvalidResponse { provider: String, problem: ResponseProblem },
    /// `tokenAttributes`: the plugin wants each pod's service account token, which pullcheck has not.
    #[error(
        "credential provider {provider}: tokenAttributes (service account token mode) gives credentials per pod, \
         not per node; pullcheck does not run it"
    )]
    ServiceAccountTokenMode { provider: String },
    /// Service-account-token mode is on but there is no workload: `check -f` has no cluster to
    /// ask for a token.
    #[error(
        "credential provider {provider}: tokenAttributes (service account token mode) needs the workload's \
         service account token, which only a cluster gives (check -A, run)"
    )]
    NoServiceAccount { provider: String },
    /// kubelet does not run the plugin for a service account without one of
    /// `requiredServiceAccountAnnotationKeys`.
    #[error(
        "credential provider {provider}: service account {namespace}/{service_account} has no annotation {key} \
         (requiredServiceAccountAnnotationKeys): the provider gives it nothing"
    )]
    RequiredAnnotation { provider: String, namespace: String, service_account: String, key: String },
    /// Reading the service account or requesting its token failed. Never carries the token.
    #[error("credential provider {provider}: service account {namespace}/{service_account}: {reason}")]
    ServiceAccount { provider: String, namespace: String, service_account: String, reason: String },
}

impl ProviderError {
    /// The provider's name (its binary's file name).
    pub fn provider(&self) -> &str {
        match self {
            ProviderError::Spawn { provider, .. }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Exit { provider, .. }
            | ProviderError::OutputTooLarge { provider, .. }
            | ProviderError::Io { provider, .. }
            | ProviderError::InvalidResponse { provider, .. }
            | ProviderError::ServiceAccountTokenMode { provider }
            | ProviderError::NoServiceAccount { provider }
            | ProviderError::RequiredAnnotation { provider, .. }
            | ProviderError::ServiceAccount { provider, .. } => provider,
        }
    }
}

/// What is wrong with a response, in words of our own: never a value the plugin printed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseProblem {
    #[error("stdout is not a JSON CredentialProviderResponse (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("kind is not {RESPONSE_KIND}")]
    WrongKind,
    #[error("apiVersion is not {expected}, the one the config names")]
    WrongApiVersion { expected: String },
    #[error("cacheKeyType is not Image, Registry or Global")]
    CacheKeyType,
    #[error("cacheDuration is not a duration")]
    CacheDuration,
    #[error("an auth entry has a password but no username")]
    MissingUsername,
}

/// A Go duration string that does not parse.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoDurationError {
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
    #[error("duration {0:?} out of range")]
    Overflow(String),
}

/// Go's `time.ParseDuration`, as `metav1.Duration` reads `defaultCacheDuration` and
/// `cacheDuration`: a sign, then numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`),
/// decimals allowed: `12h`, `6h0m0s`, `1m30s`, `1.5h`, `500ms`, `-1s`, and `0` alone.
/// Returns nanoseconds, Go's `time.Duration`.
pub fn parse_go_duration(text: &str) -> Result<i64, GoDurationError> {
    let invalid = || GoDurationError::Invalid(text.to_string());
    let overflow = || GoDurationError::Overflow(text.to_string());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        // Units run to the next number; ASCII never splits a multi-byte character.
        let unit_len = after.bytes().take_while(|b| *b != b'.' && !b.is_ascii_digit()).count();
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "" => return Err(GoDurationError::MissingUnit(text.to_string())),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(GoDurationError::UnknownUnit { unit: unit.to_string(), text: text.to_string() }),
        };
        let whole: u128 = if int_digits.is_empty() {
            0
        } else if int_digits.len() > 30 {
            return Err(overflow());
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        // Digits past the 20th are below a nanosecond even for hours: read, then ignored, as Go does.
        let kept = &frac_digits[..frac_digits.len().min(20)];
        let fraction: u128 = if kept.is_empty() { 0 } else { kept.parse().map_err(|_| invalid())? };
        let fraction_ns = fraction * scale / 10u128.pow(kept.len() as u32);
        total = whole
            .checked_mul(scale)
            .and_then(|v| v.checked_add(fraction_ns))
            .and_then(|v| v.checked_add(total))
            .ok_or_else(overflow)?;
        if total > 1u128 << 63 {
            return Err(overflow());
        }
        rest = after;
    }
    if negative {
        // -(2^63) is the one value whose magnitude is not an i64.
        Ok(if total == 1u128 << 63 { i64::MIN } else { -(total as i64) })
    } else {
        i64::try_from(total).map_err(|_| overflow())
    }
}

/// kubelet's `URLsMatchStr` for a `matchImages` entry or a response's `auth` key: a scheme is
/// ignored, each host label matches as a glob, same number of labels, equal ports, and the
/// glob's path a prefix of the image's path. `target` is `registry/repository`.
pub fn image_matches(glob: &str, target: &str) -> bool {
    pattern_matches(strip_scheme(glob), target)
}

fn strip_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// A response's `auth` key as kubelet's keyring stores it: scheme dropped, `/v1/` and `/v2/` mean
/// the host alone, and Docker Hub's legacy hosts are `docker.io` (kubelet's default-registry match).
fn normalise_auth_key(key: &str) -> String {
    let rest = strip_scheme(key);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = match path {
        "v1" | "v2" => "",
        _ => path.strip_prefix("v1/").or_else(|| path.strip_prefix("v2/")).unwrap_or(path),
    };
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" { DOCKER_HUB } else { host };
    if path.is_empty() { host.to_string() } else { format!("{host}/{path}") }
}

/// Whether a `matchImages` entry parses as kubelet's `ParseSchemelessURL` would: a host, a numeric
/// port if any, no whitespace.
fn match_image_problem(entry: &str) -> Option<&'static str> {
    let rest = strip_scheme(entry);
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace or control characters");
    }
    let hostport = rest.split('/').next().unwrap_or_default();
    let port = if hostport.starts_with('[') {
        match hostport.split_once(']') {
            Some((_, tail)) => tail.strip_prefix(':'),
            None => return Some("unclosed [ in host"),
        }
    } else {
        hostport.split_once(':').map(|(_, port)| port)
    };
    let host = hostport.split(':').next().unwrap_or_default();
    if host.is_empty() {
        return Some("no host");
    }
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return Some("port is not a number");
    }
    None
}

// ---- config ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    providers: Option<Vec<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    match_images: Option<Vec<String>>,
    #[serde(default)]
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<RawEnv>>,
    #[serde(default)]
    token_attributes: Option<RawTokenAttributes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTokenAttributes {
    #[serde(default)]
    service_account_token_audience: Option<String>,
    #[serde(default)]
    require_service_account: Option<bool>,
    #[serde(default)]
    cache_type: Option<String>,
    #[serde(default)]
    required_service_account_annotation_keys: Option<Vec<String>>,
    #[serde(default)]
    optional_service_account_annotation_keys: Option<Vec<String>>,
}

/// A provider's `tokenAttributes`: it wants the pod's service account token for `audience`
/// and the listed annotations of the service account (docs/credential-providers.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenAttributes {
    pub audience: String,
    pub require_service_account: bool,
    pub required_annotation_keys: Vec<String>,
    pub optional_annotation_keys: Vec<String>,
}

#[derive(Deserialize)]
struct RawEnv {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

/// One provider as the config describes it, validated; the binary not yet looked for.
#[derive(Clone, PartialEq, Eq)]
struct ProviderSpec {
    name: String,
    match_images: Vec<String>,
    default_cache_duration: Duration,
    api_version: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    token: Option<TokenAttributes>,
}

impl fmt::Debug for ProviderSpec {
    // `env` values may be secrets: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("match_images", &self.match_images)
            .field("default_cache_duration", &self.default_cache_duration)
            .field("api_version", &self.api_version)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>())
            .field("token", &self.token)
            .finish()
    }
}

/// Parses and validates one config file's text, JSON or YAML, as kubelet does.
fn parse_config(text: &str, file: &Path) -> Result<Vec<ProviderSpec>, ProviderConfigError> {
    // Never the lines around an error (`crate::yaml`): they may hold `env` secrets. The first
    // line only, should a message ever span more.
    let parse_error = |reason: String| ProviderConfigError::Parse {
        file: file.to_path_buf(),
        reason: reason.lines().next().unwrap_or_default().to_string(),
    };
    let raw: RawConfig = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?
    } else {
        crate::yaml::from_str(text).map_err(|e| parse_error(crate::yaml::describe(&e).to_string()))?
    };
    let invalid =
        |field: String, reason: String| ProviderConfigError::Invalid { file: file.to_path_buf(), field, reason };
    if raw.kind.as_deref() != Some(CONFIG_KIND) {
        return Err(invalid("kind".into(), format!("must be {CONFIG_KIND}")));
    }
    let api_version = raw.api_version.unwrap_or_default();
    if !versions_of(CONFIG_GROUP).any(|v| v == api_version) {
        return Err(invalid(
            "apiVersion".into(),
            format!("{api_version:?} is not one of {}", versions_of(CONFIG_GROUP).collect::<Vec<_>>().join(", ")),
        ));
    }
    let providers = raw.providers.unwrap_or_default();
    if providers.is_empty() {
        return Err(invalid("providers".into(), "at least one provider is required".into()));
    }
    providers.into_iter().enumerate().map(|(i, p)| validate_provider(i, p, &invalid)).collect()
}

fn versions_of(group: &str) -> impl Iterator<Item = String> + '_ {
    VERSIONS.iter().map(move |v| format!("{group}/{v}"))
}

fn validate_provider(
    index: usize,
    raw: RawProvider,
    invalid: &impl Fn(String, String) -> ProviderConfigError,
) -> Result<ProviderSpec, ProviderConfigError> {
    let field = |name: &str| format!("providers[{index}].{name}");
    let name = raw.name.unwrap_or_default();
    let name_problem = if name.is_empty() {
        Some("is required")
    } else if name.contains('/') {
        Some("cannot contain '/'")
    } else if name.contains(' ') {
        Some("cannot contain spaces")
    } else if name == "." || name == ".." {
        Some("cannot be '.' or '..'")
    } else if name.contains('\0') {
        Some("cannot contain NUL")
    } else {
        None
    };
    if let Some(problem) = name_problem {
        return Err(invalid(field("name"), format!("{name:?} {problem}")));
    }
    let api_version = raw.api_version.unwrap_or_default();
    if api_version.is_empty() {
        return Err(invalid(field("apiVersion"), "is required".into()));
    }
    if !versions_of(PLUGIN_GROUP).any(|v| v == api_version) {
        return Err(invalid(
            field("apiVersion"),
            format!("{api_version:?} is not one of {}", versions_of(PLUGIN_GROUP).collect::<Vec<_>>().join(", ")),
        ));
    }
    let match_images = raw.match_images.unwrap_or_default();
    if match_images.is_empty() {
        return Err(invalid(field("matchImages"), "at least one image pattern is required".into()));
    }
    for (j, entry) in match_images.iter().enumerate() {
        if let Some(problem) = match_image_problem(entry) {
            return Err(invalid(format!("providers[{index}].matchImages[{j}]"), format!("{entry:?}: {problem}")));
        }
    }
    let duration_text =
        raw.default_cache_duration.ok_or_else(|| invalid(field("defaultCacheDuration"), "is required".into()))?;
    let nanos = parse_go_duration(&duration_text).map_err(|e| invalid(field("defaultCacheDuration"), e.to_string()))?;
    let default_cache_duration = u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| invalid(field("defaultCacheDuration"), format!("{duration_text:?} is negative")))?;
    let args = raw.args.unwrap_or_default();
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid(field("args"), "an argument contains NUL".into()));
    }
    let mut env = Vec::new();
    for (j, var) in raw.env.unwrap_or_default().into_iter().enumerate() {
        let var_field = format!("providers[{index}].env[{j}]");
        let var_name = var.name.unwrap_or_default();
        if var_name.is_empty() || var_name.contains(['=', '\0']) {
            return Err(invalid(format!("{var_field}.name"), format!("{var_name:?} is not a variable name")));
        }
        // The value may be a secret: never echoed.
        let value = var.value.unwrap_or_default();
        if value.contains('\0') {
            return Err(invalid(format!("{var_field}.value"), "contains NUL".into()));
        }
        env.push((var_name, value));
    }
    Ok(ProviderSpec {
        name,
        match_images,
        default_cache_duration,
        api_version,
        args,
        env,
        token: raw.token_attributes.map(|t| validate_token_attributes(index, t, invalid)).transpose()?,
    })
}

/// kubelet's validation of `tokenAttributes`: an audience, `requireServiceAccount` and
/// `cacheType` (`Token` or `ServiceAccount`, required since 1.34) set, and annotation keys that
/// are unique and in neither list twice. Both cache types behave alike here: pullcheck asks for a
/// token only on a cache miss, and caches per service account no longer than the token lives.
fn validate_token_attributes(
    index: usize,
    raw: RawTokenAttributes,
    invalid: &impl Fn(String, String) -> ProviderConfigError,
) -> Result<TokenAttributes, ProviderConfigError> {
    let field = |name: &str| format!("providers[{index}].tokenAttributes.{name}");
    let audience = raw.service_account_token_audience.unwrap_or_default();
    if audience.trim().is_empty() {
        return Err(invalid(field("serviceAccountTokenAudience"), "is required".into()));
    }
    let require_service_account =
        raw.require_service_account.ok_or_else(|| invalid(field("requireServiceAccount"), "is required".into()))?;
    match raw.cache_type.as_deref() {
        Some("Token" | "ServiceAccount") => {}
        Some(other) => return Err(invalid(field("cacheType"), format!("{other:?} is not Token or ServiceAccount"))),
        None => return Err(invalid(field("cacheType"), "is required".into())),
    }
    let required_annotation_keys = raw.required_service_account_annotation_keys.unwrap_or_default();
    let optional_annotation_keys = raw.optional_service_account_annotation_keys.unwrap_or_default();
    if !required_annotation_keys.is_empty() && !require_service_account {
        return Err(invalid(
            field("requiredServiceAccountAnnotationKeys"),
            "requires requireServiceAccount: true".into(),
        ));
    }
    let mut seen = HashSet::new();
    for (list, keys) in [
        ("requiredServiceAccountAnnotationKeys", &required_annotation_keys),
        ("optionalServiceAccountAnnotationKeys", &optional_annotation_keys),
    ] {
        for key in keys {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(field(list), format!("{key:?} is not an annotation key")));
            }
            if !seen.insert(key.as_str()) {
                return Err(invalid(field(list), format!("{key:?} is listed twice")));
            }
        }
    }
    Ok(TokenAttributes { audience, require_service_account, required_annotation_keys, optional_annotation_keys })
}

/// The config file, or like recent kubelets every `*.json`, `*.yaml`, `*.yml` of a directory in
/// name order, merged; each provider with the file it came from and its index there.
fn read_configs(path: &Path) -> Result<Vec<(PathBuf, usize, ProviderSpec)>, ProviderConfigError> {
    let read_error = |path: &Path, source| ProviderConfigError::Read { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| read_error(path, e))? {
            let entry = entry.map_err(|e| read_error(path, e))?;
            let file = entry.path();
            let wanted =
                file.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "json" | "yaml" | "yml"));
            if wanted && !file.is_dir() {
                files.push(file);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ProviderConfigError::EmptyDirectory { dir: path.to_path_buf() });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut providers = Vec::new();
    let mut seen = HashSet::new();
    for file in files {
        let mut bytes = Vec::new();
        std::fs::File::open(&file)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| read_error(&file, e))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ProviderConfigError::TooLarge { file, limit: MAX_CONFIG_BYTES });
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| ProviderConfigError::Parse { file: file.clone(), reason: "not UTF-8".into() })?;
        for (i, spec) in parse_config(&text, &file)?.into_iter().enumerate() {
            if !seen.insert(spec.name.clone()) {
                return Err(ProviderConfigError::Invalid {
                    file,
                    field: format!("providers[{i}].name"),
                    reason: format!("duplicate provider name {:?}", spec.name),
                });
            }
            providers.push((file.clone(), i, spec));
        }
    }
    Ok(providers)
}

/// kubelet's `exec.LookPath` on the provider's binary: an executable file in the bin dir.
fn binary_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("{}: {e}", path.display())),
        Ok(meta) if !meta.is_file() => Some(format!("{} is not a file", path.display())),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o111 == 0 {
                    return Some(format!("{} is not executable", path.display()));
                }
            }
            let _ = meta;
            None
        }
    }
}

// ---- plugin API ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    kind: &'static str,
    api_version: &'a str,
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_annotations: Option<&'a BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResponse {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    cache_key_type: Option<String>,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: Option<BTreeMap<String, RawAuth>>,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A response's credentials by normalised `auth` key, longest (most specific) key first.
#[derive(Debug, Default)]
struct AuthSet(Vec<(String, Credential)>);

impl AuthSet {
    fn for_image(&self, target: &str) -> Vec<Credential> {
        self.0.iter().filter(|(key, _)| image_matches(key, target)).map(|(_, c)| c.clone()).collect()
    }
}

struct Response {
    auth: Arc<AuthSet>,
    cache_key_type: CacheKeyType,
    /// Go nanoseconds; `None` when the response has no `cacheDuration`.
    cache_duration: Option<i64>,
}

/// Parses stdout as the response to a request made with `api_version`.
fn parse_response(stdout: &[u8], api_version: &str) -> Result<Response, ResponseProblem> {
    let raw: RawResponse =
        serde_json::from_slice(stdout).map_err(|e| ResponseProblem::NotJson { line: e.line(), column: e.column() })?;
    if raw.kind.as_deref() != Some(RESPONSE_KIND) {
        return Err(ResponseProblem::WrongKind);
    }
    if raw.api_version.as_deref() != Some(api_version) {
        return Err(ResponseProblem::WrongApiVersion { expected: api_version.to_string() });
    }
    let cache_key_type = match raw.cache_key_type.as_deref() {
        Some("Image") => CacheKeyType::Image,
        Some("Registry") => CacheKeyType::Registry,
        Some("Global") => CacheKeyType::Global,
        _ => return Err(ResponseProblem::CacheKeyType),
    };
    let cache_duration = match raw.cache_duration {
        Some(text) => Some(parse_go_duration(&text).map_err(|_| ResponseProblem::CacheDuration)?),
        None => None,
    };
    let mut entries = Vec::new();
    for (key, auth) in raw.auth.unwrap_or_default() {
        let (username, password) = (auth.username.unwrap_or_default(), auth.password.unwrap_or_default());
        if username.is_empty() {
            // No username and no password is anonymous access, not a credential: acr-credential-provider
            // answers `"*.azurecr.*": {"username": "", "password": ""}` beside its real entry.
            if password.is_empty() {
                continue;
            }
            return Err(ResponseProblem::MissingUsername);
        }
        entries.push((normalise_auth_key(&key), Credential::basic(username, password)));
    }
    entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(Response { auth: Arc::new(AuthSet(entries)), cache_key_type, cache_duration })
}

/// The credentials a plugin's stdout gives `target` (`registry/repository`) for a request made
/// with `api_version`: the response parsed, then matched as kubelet matches it. The entry point of
/// the fuzz target `provider_response` (docs/reliability.md, Fuzzing); not an API.
#[doc(hidden)]
pub fn response_credentials(
    stdout: &[u8],
    api_version: &str,
    target: &str,
) -> Result<Vec<Credential>, ResponseProblem> {
    parse_response(stdout, api_version).map(|response| response.auth.for_image(target))
}

// ---- service-account-token mode ----

/// Whether providers with `tokenAttributes` run, and where (`--service-account-token-providers`,
/// docs/credential-providers.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenProviders {
    /// Off (the default): such a provider gives `ServiceAccountTokenMode`.
    #[default]
    Refused,
    /// On, with a cluster: they run per workload, with its service account's token.
    PerWorkload,
    /// On, without a cluster (`check -f`): no token to give, `NoServiceAccount`.
    NoCluster,
}

/// What a provider in service-account-token mode learns of a service account besides its token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccountData {
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
}

/// A service account token from the TokenRequest API: a credential, never shown.
pub struct ServiceAccountToken {
    token: String,
    /// How long it stays valid: credentials made from it are cached no longer.
    pub expires_in: Duration,
}

impl ServiceAccountToken {
    pub fn new(token: String, expires_in: Duration) -> Self {
        Self { token, expires_in }
    }

    fn secret(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountToken").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

/// Service accounts and their tokens, as kubelet gets them from the API server: implemented
/// with kube in `sources::secrets`, faked in tests. Errors are in words, never a token.
pub trait ServiceAccountTokens: Send + Sync {
    fn account<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<ServiceAccountData, String>>;
    fn token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        audience: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<ServiceAccountToken, String>>;
}

/// The annotations kubelet passes the plugin: every required key (the first missing one is the
/// error) and the optional keys present; no other.
fn plugin_annotations(
    attributes: &TokenAttributes,
    annotations: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut passed = BTreeMap::new();
    for key in &attributes.required_annotation_keys {
        let value = annotations.get(key).ok_or_else(|| key.clone())?;
        passed.insert(key.clone(), value.clone());
    }
    for key in &attributes.optional_annotation_keys {
        if let Some(value) = annotations.get(key) {
            passed.insert(key.clone(), value.clone());
        }
    }
    Ok(passed)
}

/// The service account's part of a cache key, as kubelet's: namespace, name, uid and the
/// annotations passed, so a recreated account or a changed annotation misses the cache.
fn account_cache_key(namespace: &str, name: &str, uid: &str, annotations: &BTreeMap<String, String>) -> String {
    serde_json::json!([namespace, name, uid, annotations]).to_string()
}

/// One workload's service account, for one provider's run.
struct Workload<'a> {
    namespace: &'a str,
    name: &'a str,
    audience: &'a str,
    annotations: BTreeMap<String, String>,
    cache_key: String,
    tokens: &'a dyn ServiceAccountTokens,
}

// ---- providers ----

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CacheKey {
    Image(String),
    Registry(String),
    Global,
}

struct CacheEntry {
    auth: Arc<AuthSet>,
    expires_at: Instant,
}

/// A cache key: the response's `cacheKeyType` key and, in service-account-token mode, the
/// service account's (kubelet's: namespace, name, uid and the annotations passed).
type FullKey = (CacheKey, Option<String>);
/// An image and, in service-account-token mode, the service account's cache key.
type FullImageKey = (String, Option<String>);

#[derive(Default)]
struct State {
    cache: HashMap<FullKey, CacheEntry>,
    /// Execs finished so far, and the last one's image, service account key and outcome: a
    /// caller that waited while that exec ran for the same ones shares its outcome, as kubelet's
    /// singleflight does.
    finished: u64,
    last: Option<(FullImageKey, Result<Arc<AuthSet>, ProviderError>)>,
}

impl State {
    /// kubelet's lookup order: the image, then its registry, then the global entry. Expired
    /// entries found on the way are dropped.
    fn cached(&mut self, image: &str, registry: &str, account: Option<&str>, now: Instant) -> Option<Arc<AuthSet>> {
        let account = account.map(str::to_string);
        for key in [CacheKey::Image(image.to_string()), CacheKey::Registry(registry.to_string()), CacheKey::Global] {
            let key = (key, account.clone());
            match self.cache.get(&key) {
                Some(entry) if now <= entry.expires_at => return Some(entry.auth.clone()),
                Some(_) => {
                    self.cache.remove(&key);
                }
                None => {}
            }
        }
        None
    }
}

struct Provider {
    spec: ProviderSpec,
    path: PathBuf,
    state: Mutex<State>,
    /// Held while the plugin runs: one exec at a time per provider.
    flight: tokio::sync::Mutex<()>,
}

impl Provider {
    fn matches(&self, target: &str) -> bool {
        self.spec.match_images.iter().any(|glob| image_matches(glob, target))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The provider's credentials for the image: from the cache or one exec. `workload`: the
    /// service account it runs for, in service-account-token mode (`None` otherwise).
    async fn credentials(
        &self,
        image: &ImageRef,
        timeout: Duration,
        workload: Option<&Workload<'_>>,
    ) -> Result<Vec<Credential>, ProviderError> {
        // What kubelet hands the plugin: the repository to pull, `registry/repository`.
        let target = image.name();
        let registry = image.registry();
        let account = workload.map(|w| w.cache_key.as_str());
        let finished_before = {
            let mut state = self.state();
            if let Some(auth) = state.cached(&target, registry, account, Instant::now()) {
                return Ok(auth.for_image(&target));
            }
            state.finished
        };
        let _flight = self.flight.lock().await;
        {
            let mut state = self.state();
            if let Some(auth) = state.cached(&target, registry, account, Instant::now()) {
                return Ok(auth.for_image(&target));
            }
            if state.finished != finished_before
                && let Some(((image, last_account), outcome)) = &state.last
                && *image == target
                && last_account.as_deref() == account
            {
                return outcome.as_ref().map(|auth| auth.for_image(&target)).map_err(Clone::clone);
            }
        }
        let outcome = match workload {
            None => self.exec(&target, timeout, None).await.map(|response| (response, None)),
            Some(workload) => match workload.tokens.token(workload.namespace, workload.name, workload.audience).await {
                Ok(token) => self
                    .exec(&target, timeout, Some((token.secret(), &workload.annotations)))
                    .await
                    .map(|response| (response, Some(token.expires_in))),
                Err(reason) => Err(ProviderError::ServiceAccount {
                    provider: self.spec.name.clone(),
                    namespace: workload.namespace.to_string(),
                    service_account: workload.name.to_string(),
                    reason: format!("token request: {reason}"),
                }),
            },
        };
        let mut state = self.state();
        state.finished += 1;
        let shared = match outcome {
            Ok((response, token_life)) => {
                let nanos = response.cache_duration.unwrap_or(self.spec.default_cache_duration.as_nanos() as i64);
                // Credentials made from a token are not kept past the token's life.
                let nanos = match token_life {
                    Some(life) => nanos.min(i64::try_from(life.as_nanos()).unwrap_or(i64::MAX)),
                    None => nanos,
                };
                if let Ok(nanos @ 1..) = u64::try_from(nanos) {
                    let now = Instant::now();
                    let expires_at =
                        now.checked_add(Duration::from_nanos(nanos)).or_else(|| now.checked_add(LONGEST_CACHE));
                    if let Some(expires_at) = expires_at {
                        let key = match response.cache_key_type {
                            CacheKeyType::Image => CacheKey::Image(target.clone()),
                            CacheKeyType::Registry => CacheKey::Registry(registry.to_string()),
                            CacheKeyType::Global => CacheKey::Global,
                        };
                        let key = (key, account.map(str::to_string));
                        state.cache.retain(|_, entry| now <= entry.expires_at);
                        state.cache.insert(key, CacheEntry { auth: response.auth.clone(), expires_at });
                    }
                }
                Ok(response.auth)
            }
            Err(e) => Err(e),
        };
        let result = shared.as_ref().map(|auth| auth.for_image(&target)).map_err(Clone::clone);
        state.last = Some(((target, account.map(str::to_string)), shared));
        result
    }

    /// Runs the plugin once: request on stdin, bounded stdout, stderr discarded, killed at the timeout.
    /// `account`: the service account token and annotations, in service-account-token mode.
    async fn exec(
        &self,
        image: &str,
        timeout: Duration,
        account: Option<(&str, &BTreeMap<String, String>)>,
    ) -> Result<Response, ProviderError> {
        let provider = || self.spec.name.clone();
        let request = Request {
            kind: REQUEST_KIND,
            api_version: &self.spec.api_version,
            image,
            service_account_token: account.map(|(token, _)| token),
            service_account_annotations: account.map(|(_, annotations)| annotations),
        };
        let request = serde_json::to_vec(&request)
            .map_err(|e| ProviderError::Io { provider: provider(), reason: e.to_string() })?;
        let mut child = Command::new(&self.path)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProviderError::Spawn {
                provider: provider(),
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let run = async {
            let write = async {
                // A plugin may exit without reading its request: a broken pipe is not our error.
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(&request).await;
                }
            };
            let read = async {
                let mut out = Vec::new();
                if let Some(stdout) = stdout {
                    stdout.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut out).await?;
                }
                Ok::<_, std::io::Error>(out)
            };
            let ((), out) = tokio::join!(write, read);
            let out = out.map_err(|e| ProviderError::Io { provider: provider(), reason: e.kind().to_string() })?;
            if out.len() as u64 > MAX_RESPONSE_BYTES {
                return Err(ProviderError::OutputTooLarge { provider: provider(), limit: MAX_RESPONSE_BYTES });
            }
            let status = child
                .wait()
                .await
                .map_err(|e| ProviderError::Io { provider: provider(), reason: e.kind().to_string() })?;
            Ok((out, status))
        };
        let (out, status) = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(e);
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(ProviderError::Timeout { provider: provider(), timeout });
            }
        };
        if !status.success() {
            return Err(ProviderError::Exit { provider: provider(), status: exit_description(status) });
        }
        parse_response(&out, &self.spec.api_version)
            .map_err(|problem| ProviderError::InvalidResponse { provider: provider(), problem })
    }
}

fn exit_description(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    "exited abnormally".to_string()
}

/// The credential providers of a kubelet `CredentialProviderConfig`, run as kubelet runs them.
pub struct CredentialProviders {
    providers: Vec<Provider>,
    exec_timeout: Duration,
    token_providers: TokenProviders,
}

impl fmt::Debug for CredentialProviders {
    // `env` may hold secrets: only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialProviders")
            .field("providers", &self.providers.iter().map(|p| &p.spec.name).collect::<Vec<_>>())
            .field("exec_timeout", &self.exec_timeout)
            .field("token_providers", &self.token_providers)
            .finish()
    }
}

impl CredentialProviders {
    /// Reads and validates the config as kubelet does (`config_file` may also be a directory of
    /// configs, merged), and checks that every provider's binary is an executable file in `bin_dir`.
    /// A plugin that has not answered after `exec_timeout` is killed (kubelet allows one minute).
    pub fn load(config_file: &Path, bin_dir: &Path, exec_timeout: Duration) -> Result<Self, ProviderConfigError> {
        match std::fs::metadata(bin_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ProviderConfigError::BinDir {
                    dir: bin_dir.to_path_buf(),
                    reason: "not a directory".into(),
                });
            }
            Err(e) => return Err(ProviderConfigError::BinDir { dir: bin_dir.to_path_buf(), reason: e.to_string() }),
        }
        let mut providers = Vec::new();
        for (file, index, spec) in read_configs(config_file)? {
            let path = bin_dir.join(&spec.name);
            if let Some(problem) = binary_problem(&path) {
                return Err(ProviderConfigError::Invalid {
                    file,
                    field: format!("providers[{index}].name"),
                    reason: format!("no executable provider binary: {problem}"),
                });
            }
            providers.push(Provider { spec, path, state: Mutex::default(), flight: tokio::sync::Mutex::new(()) });
        }
        Ok(Self { providers, exec_timeout, token_providers: TokenProviders::default() })
    }

    /// Whether and where providers with `tokenAttributes` run.
    pub fn with_token_providers(mut self, mode: TokenProviders) -> Self {
        self.token_providers = mode;
        self
    }

    /// Whether some provider runs per workload, with its service account's token.
    pub fn runs_per_workload(&self) -> bool {
        self.token_providers == TokenProviders::PerWorkload && self.providers.iter().any(|p| p.spec.token.is_some())
    }

    /// The providers' names, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.spec.name.as_str())
    }

    /// Whether any provider's matchImages matches the image (no exec): kubelet then has node
    /// credentials for it. Providers in service-account-token mode give per-pod credentials and
    /// are not counted.
    pub fn matches(&self, image: &ImageRef) -> bool {
        let target = image.name();
        self.providers.iter().any(|p| p.spec.token.is_none() && p.matches(&target))
    }

    /// Whether any provider's matchImages matches the image, service-account-token mode included.
    pub fn any_matches(&self, image: &ImageRef) -> bool {
        let target = image.name();
        self.providers.iter().any(|p| p.matches(&target))
    }

    /// The credentials every matching provider gives for the image, in config order; per provider
    /// its name and either its credentials (most specific auth key first) or why it gave none.
    /// Providers in service-account-token mode are not node credentials: refused, skipped (run
    /// per workload by [`workload_credentials_for`](Self::workload_credentials_for)) or without
    /// a service account, as [`TokenProviders`] says.
    pub async fn credentials_for(&self, image: &ImageRef) -> Vec<(String, Result<Vec<Credential>, ProviderError>)> {
        let target = image.name();
        let matching = self
            .providers
            .iter()
            .filter(|p| p.matches(&target))
            .filter(|p| p.spec.token.is_none() || self.token_providers != TokenProviders::PerWorkload);
        let runs = matching.map(|p| async move {
            let provider = p.spec.name.clone();
            let result = match (&p.spec.token, self.token_providers) {
                (None, _) => p.credentials(image, self.exec_timeout, None).await,
                (Some(_), TokenProviders::NoCluster) => {
                    Err(ProviderError::NoServiceAccount { provider: provider.clone() })
                }
                (Some(_), _) => Err(ProviderError::ServiceAccountTokenMode { provider: provider.clone() }),
            };
            (provider, result)
        });
        futures_util::future::join_all(runs).await
    }

    /// The credentials the providers in service-account-token mode give one workload's
    /// service account for the image, run as kubelet runs them for its pods: the account's
    /// uid and the listed annotations read, a token for each provider's audience requested
    /// on a cache miss. Empty unless [`TokenProviders::PerWorkload`].
    pub async fn workload_credentials_for(
        &self,
        image: &ImageRef,
        namespace: &str,
        service_account: &str,
        tokens: &dyn ServiceAccountTokens,
    ) -> Vec<(String, Result<Vec<Credential>, ProviderError>)> {
        if self.token_providers != TokenProviders::PerWorkload {
            return Vec::new();
        }
        let target = image.name();
        let matching: Vec<_> = self
            .providers
            .iter()
            .filter_map(|p| p.spec.token.as_ref().map(|t| (p, t)))
            .filter(|(p, _)| p.matches(&target))
            .collect();
        if matching.is_empty() {
            return Vec::new();
        }
        let account =
            if service_account.is_empty() { None } else { Some(tokens.account(namespace, service_account).await) };
        let mut results = Vec::new();
        for (provider, attributes) in matching {
            let name = provider.spec.name.clone();
            let result = match &account {
                // kubelet: nothing without a service account when one is required, else a run without a token.
                None if attributes.require_service_account => Ok(Vec::new()),
                None => provider.credentials(image, self.exec_timeout, None).await,
                Some(Err(reason)) => Err(ProviderError::ServiceAccount {
                    provider: name.clone(),
                    namespace: namespace.to_string(),
                    service_account: service_account.to_string(),
                    reason: reason.clone(),
                }),
                Some(Ok(data)) => match plugin_annotations(attributes, &data.annotations) {
                    Err(key) => Err(ProviderError::RequiredAnnotation {
                        provider: name.clone(),
                        namespace: namespace.to_string(),
                        service_account: service_account.to_string(),
                        key,
                    }),
                    Ok(annotations) => {
                        let cache_key = account_cache_key(namespace, service_account, &data.uid, &annotations);
                        let workload = Workload {
                            namespace,
                            name: service_account,
                            audience: &attributes.audience,
                            annotations,
                            cache_key,
                            tokens,
                        };
                        provider.credentials(image, self.exec_timeout, Some(&workload)).await
                    }
                },
            };
            results.push((name, result));
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn go_durations() {
        let cases = [
            ("0", 0),
            ("0s", 0),
            ("+0", 0),
            ("-0", 0),
            ("12h", 12 * 3600 * SECOND),
            ("6h0m0s", 6 * 3600 * SECOND),
            ("1m30s", 90 * SECOND),
            ("500ms", SECOND / 2),
            ("1.5h", 5400 * SECOND),
            ("1.s", SECOND),
            (".5s", SECOND / 2),
            ("-1s", -SECOND),
            ("1h2m3s4ms5us6ns", 3723 * SECOND + 4_005_006),
            ("3\u{b5}s", 3000),
            ("3\u{3bc}s", 3000),
            ("1.0000000000000000000001s", SECOND),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("2562047h", 2_562_047 * 3600 * SECOND),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_go_durations() {
        for text in ["", "-", "s", "12", "1.5", ".", ".s", "1hh", "1 h", "h1", "1d", "1x", "+-1s", "1e3s"] {
            assert!(parse_go_duration(text).is_err(), "{text:?} should not parse");
        }
        assert_eq!(parse_go_duration("12"), Err(GoDurationError::MissingUnit("12".into())));
        assert!(matches!(parse_go_duration("1d"), Err(GoDurationError::UnknownUnit { .. })));
        for text in ["9223372036854775808ns", "2562048h", "99999999999999999999999999999999999h"] {
            assert_eq!(parse_go_duration(text), Err(GoDurationError::Overflow(text.into())), "{text}");
        }
    }

    #[test]
    fn kubelet_urls_match_examples() {
        // pkg/credentialprovider/keyring_test.go TestURLsMatch, as (glob, target, matches).
        let cases = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.kubernetes.io", "prefix.foo.kubernetes.io", false),
            ("prefix.kubernetes.io", "prefix.kubernetes.io/foo", true),
            ("prefix.kubernetes.io/foo", "prefix.kubernetes.io", false),
            ("prefix.kubernetes.io/foo", "prefix.kubernetes.io/foo/bar", true),
            ("prefix.kubernetes.io/foo", "prefix.kubernetes.io/bar", false),
            ("*.kubernetes.io:8080", "prefix.kubernetes.io:8080", true),
            ("*.kubernetes.io:8080", "prefix.kubernetes.io", false),
            ("*.kubernetes.io", "prefix.kubernetes.io:8080", false),
            ("*.*.io", "prefix.kubernetes.io", true),
            ("*.*.*", "prefix.kubernetes.io", true),
            ("*.*.*.*", "prefix.kubernetes.io", false),
            ("https://*.kubernetes.io", "prefix.kubernetes.io", true),
            ("http://prefix.kubernetes.io/foo", "prefix.kubernetes.io/foo/bar", true),
        ];
        for (glob, target, want) in cases {
            assert_eq!(image_matches(glob, target), want, "{glob} vs {target}");
        }
    }

    #[test]
    fn cloud_match_images() {
        let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app";
        assert!(image_matches("*.dkr.ecr.*.amazonaws.com", ecr));
        assert!(!image_matches("*.dkr.ecr.*.amazonaws.com.cn", ecr));
        assert!(image_matches("*.dkr.ecr.*.amazonaws.com.cn", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app"));
        assert!(image_matches("*.pkg.dev", "europe-west1-docker.pkg.dev/proj/repo/app"));
        assert!(image_matches("gcr.io", "gcr.io/proj/app"));
        assert!(!image_matches("gcr.io", "eu.gcr.io/proj/app"));
        assert!(image_matches("*.gcr.io", "eu.gcr.io/proj/app"));
        assert!(image_matches("*.azurecr.io", "myacr.azurecr.io/app"));
        assert!(!image_matches("*.azurecr.io", "docker.io/library/nginx"));
    }

    #[test]
    fn auth_keys_normalise_like_the_keyring() {
        assert_eq!(normalise_auth_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalise_auth_key("registry.example/v2/team"), "registry.example/team");
        assert_eq!(normalise_auth_key("http://registry.example:5000"), "registry.example:5000");
        assert_eq!(normalise_auth_key("*.dkr.ecr.*.amazonaws.com"), "*.dkr.ecr.*.amazonaws.com");
    }

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn user(c: &Credential) -> &str {
        match c {
            Credential::Basic { username, .. } => username,
            Credential::Bearer(_) => "bearer",
        }
    }

    #[test]
    fn responses_parse_with_most_specific_key_first() {
        let json = br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
            "cacheKeyType":"Registry","cacheDuration":"6h0m0s",
            "auth":{"*.example.com":{"username":"wide","password":"p"},
                    "reg.example.com/team":{"username":"narrow","password":"p"},
                    "other.example.org":{"username":"other"}}}"#;
        let response = parse_response(json, V1).expect("parses");
        assert_eq!(response.cache_key_type, CacheKeyType::Registry);
        assert_eq!(response.cache_duration, Some(6 * 3600 * SECOND));
        let users: Vec<_> =
            response.auth.for_image("reg.example.com/team/app").iter().map(|c| user(c).to_string()).collect();
        assert_eq!(users, ["narrow", "wide"]);
        assert!(response.auth.for_image("quay.io/x/y").is_empty());
    }

    #[test]
    fn response_credentials_are_the_parsed_response_matched_to_the_target() {
        let json = br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
            "cacheKeyType":"Image","auth":{"*.example.com":{"username":"wide","password":"p"},
                    "reg.example.com/team":{"username":"narrow","password":"p"}}}"#;
        let users = |target| -> Vec<String> {
            let credentials = response_credentials(json, V1, target).expect("parses");
            credentials.iter().map(|c| user(c).to_string()).collect()
        };
        assert_eq!(users("reg.example.com/team/app"), ["narrow", "wide"]);
        assert!(users("quay.io/x/y").is_empty());
        assert_eq!(
            response_credentials(b"hunter2", V1, "quay.io/x/y"),
            Err(ResponseProblem::NotJson { line: 1, column: 1 })
        );
    }

    #[test]
    fn anonymous_entries_are_not_credentials() {
        // The shape of acr-credential-provider's answer (cloud-provider-azure
        // pkg/credentialprovider/azure_credentials.go): an anonymous `*.azurecr.*` beside the real entry.
        let json = br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
            "cacheKeyType":"Registry","cacheDuration":"5m0s",
            "auth":{"*.azurecr.*":{"username":"","password":""},
                    "myacr.azurecr.io":{"username":"00000000-0000-0000-0000-000000000000","password":"refresh"}}}"#;
        let response = parse_response(json, V1).expect("parses");
        let users: Vec<_> =
            response.auth.for_image("myacr.azurecr.io/app").iter().map(|c| user(c).to_string()).collect();
        assert_eq!(users, ["00000000-0000-0000-0000-000000000000"]);
        assert!(response.auth.for_image("other.azurecr.io/app").is_empty());
    }

    #[test]
    fn bad_responses_are_typed_and_say_nothing_of_the_output() {
        let cases: [(&[u8], ResponseProblem); 7] = [
            (b"hunter2", ResponseProblem::NotJson { line: 1, column: 1 }),
            (br#"{"kind":"hunter2","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image"}"#, ResponseProblem::WrongKind),
            (
                br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","cacheKeyType":"Image"}"#,
                ResponseProblem::WrongApiVersion { expected: V1.into() },
            ),
            (br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}"#, ResponseProblem::CacheKeyType),
            (
                br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"hunter2"}"#,
                ResponseProblem::CacheKeyType,
            ),
            (
                br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","cacheDuration":"hunter2"}"#,
                ResponseProblem::CacheDuration,
            ),
            (
                br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","auth":{"r.example":{"password":"hunter2"}}}"#,
                ResponseProblem::MissingUsername,
            ),
        ];
        for (stdout, want) in cases {
            let Err(problem) = parse_response(stdout, V1) else { panic!("{want:?} accepted") };
            assert_eq!(problem, want);
            assert!(!problem.to_string().contains("hunter2"), "{problem}");
        }
    }

    fn config(text: &str) -> Result<Vec<ProviderSpec>, ProviderConfigError> {
        parse_config(text, Path::new("/etc/config.yaml"))
    }

    fn field_of(result: Result<Vec<ProviderSpec>, ProviderConfigError>) -> String {
        match result {
            Err(ProviderConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const EKS_JSON: &str = r#"{
  "apiVersion": "kubelet.config.k8s.io/v1",
  "kind": "CredentialProviderConfig",
  "providers": [
    {
      "name": "ecr-credential-provider",
      "matchImages": ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"],
      "defaultCacheDuration": "12h",
      "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
      "env": [{"name": "AWS_PROFILE", "value": "default"}]
    }
  ]
}"#;

    #[test]
    fn eks_json_and_gke_yaml_configs() {
        let eks = config(EKS_JSON).expect("EKS config");
        assert_eq!(eks.len(), 1);
        assert_eq!(eks[0].name, "ecr-credential-provider");
        assert_eq!(eks[0].default_cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(eks[0].env, [("AWS_PROFILE".to_string(), "default".to_string())]);
        let gke = config(
            "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders:\n  - name: auth-provider-gcp\n    \
             apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages:\n    - \"container.cloud.google.com\"\n    \
             - \"gcr.io\"\n    - \"*.gcr.io\"\n    - \"*.pkg.dev\"\n    args:\n    - get-credentials\n    - --v=3\n    \
             defaultCacheDuration: 1m\n",
        )
        .expect("GKE config");
        assert_eq!(gke[0].args, ["get-credentials", "--v=3"]);
        assert_eq!(gke[0].match_images.len(), 4);
        assert_eq!(gke[0].default_cache_duration, Duration::from_secs(60));
        let beta = EKS_JSON
            .replace("kubelet.config.k8s.io/v1\"", "kubelet.config.k8s.io/v1beta1\"")
            .replace(V1, "credentialprovider.kubelet.k8s.io/v1alpha1");
        assert_eq!(config(&beta).expect("older versions")[0].api_version, "credentialprovider.kubelet.k8s.io/v1alpha1");
    }

    #[test]
    fn configs_are_validated_like_kubelet() {
        let with = |from: &str, to: &str| config(&EKS_JSON.replace(from, to));
        assert_eq!(field_of(with(V1, "credentialprovider.kubelet.k8s.io/v2")), "providers[0].apiVersion");
        assert_eq!(field_of(with("\"12h\"", "\"12 hours\"")), "providers[0].defaultCacheDuration");
        assert_eq!(field_of(with("\"12h\"", "\"-1s\"")), "providers[0].defaultCacheDuration");
        assert_eq!(field_of(with("\"defaultCacheDuration\": \"12h\",", "")), "providers[0].defaultCacheDuration");
        assert_eq!(field_of(with("\"ecr-credential-provider\"", "\"../ecr\"")), "providers[0].name");
        assert_eq!(field_of(with("\"ecr-credential-provider\"", "\"..\"")), "providers[0].name");
        assert_eq!(field_of(with("\"ecr-credential-provider\"", "\"ecr provider\"")), "providers[0].name");
        assert_eq!(field_of(with("\"ecr-credential-provider\"", "\"\"")), "providers[0].name");
        assert_eq!(
            field_of(with(r#"["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]"#, "[]")),
            "providers[0].matchImages"
        );
        assert_eq!(
            field_of(with("\"*.dkr.ecr.*.amazonaws.com.cn\"", "\"registry:http\"")),
            "providers[0].matchImages[1]"
        );
        assert_eq!(field_of(with("\"CredentialProviderConfig\"", "\"KubeletConfiguration\"")), "kind");
        assert_eq!(field_of(with("kubelet.config.k8s.io/v1\"", "kubelet.config.k8s.io/v2\"")), "apiVersion");
        assert_eq!(field_of(with("\"AWS_PROFILE\"", "\"A=B\"")), "providers[0].env[0].name");
        assert_eq!(
            field_of(config("kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\n")),
            "providers"
        );
        assert!(matches!(config("{"), Err(ProviderConfigError::Parse { .. })));
        assert!(matches!(config("providers: 3\n"), Err(ProviderConfigError::Parse { .. })));
        // A YAML error is reported without the lines around it, which may hold env values.
        let yaml = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: [p]\n    \
                    env: [{name: TOKEN, value: hunter2}]\n";
        let shown = config(yaml).map(|_| ()).map_err(|e| e.to_string()).expect_err("bad name");
        assert!(shown.contains("line 4") && !shown.contains("hunter2") && !shown.contains('\n'), "{shown}");
        let message = with("\"default\"", "\"hunter2\"").map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(message, Ok(()), "env values are not validated beyond NUL");
    }

    #[test]
    fn token_attributes_are_read_but_mark_the_provider() {
        let text =
            EKS_JSON.replace("\"env\"", "\"tokenAttributes\": {\"serviceAccountTokenAudience\": \"x\"}, \"env\"");
        assert!(config(&text).is_err(), "requireServiceAccount is required");
        let text = EKS_JSON.replace(
            "\"env\"",
            "\"tokenAttributes\": {\"serviceAccountTokenAudience\": \"x\", \"requireServiceAccount\": true, \"cacheType\": \"Token\", \
             \"requiredServiceAccountAnnotationKeys\": [\"a/role\"], \"optionalServiceAccountAnnotationKeys\": [\"a/host\"]}, \"env\"",
        );
        let token = config(&text).expect("parses")[0].token.clone().expect("token mode");
        assert_eq!(token.audience, "x");
        assert_eq!(token.required_annotation_keys, ["a/role"]);
        assert_eq!(token.optional_annotation_keys, ["a/host"]);
    }

    #[test]
    fn token_attributes_are_validated_like_kubelet() {
        let with = |attributes: &str| {
            config(&EKS_JSON.replace("\"env\"", &format!("\"tokenAttributes\": {attributes}, \"env\"")))
        };
        assert_eq!(
            field_of(with(r#"{"requireServiceAccount": true}"#)),
            "providers[0].tokenAttributes.serviceAccountTokenAudience"
        );
        assert_eq!(
            field_of(with(
                r#"{"serviceAccountTokenAudience": "x", "requireServiceAccount": false, "cacheType": "Token", "requiredServiceAccountAnnotationKeys": ["k"]}"#
            )),
            "providers[0].tokenAttributes.requiredServiceAccountAnnotationKeys"
        );
        assert_eq!(
            field_of(with(
                r#"{"serviceAccountTokenAudience": "x", "requireServiceAccount": true, "cacheType": "ServiceAccount", "requiredServiceAccountAnnotationKeys": ["k"], "optionalServiceAccountAnnotationKeys": ["k"]}"#
            )),
            "providers[0].tokenAttributes.optionalServiceAccountAnnotationKeys"
        );
        for (cache_type, field) in [("", "cacheType"), (r#", "cacheType": "Pod""#, "cacheType")] {
            let attributes =
                format!(r#"{{"serviceAccountTokenAudience": "x", "requireServiceAccount": true{cache_type}}}"#);
            assert_eq!(field_of(with(&attributes)), format!("providers[0].tokenAttributes.{field}"));
        }
    }

    #[test]
    fn plugins_get_the_required_and_present_optional_annotations_only() {
        let attributes = TokenAttributes {
            audience: "x".into(),
            require_service_account: true,
            required_annotation_keys: vec!["role".into()],
            optional_annotation_keys: vec!["host".into(), "absent".into()],
        };
        let annotations: BTreeMap<String, String> =
            [("role", "r"), ("host", "h"), ("other", "o")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let passed = plugin_annotations(&attributes, &annotations).expect("role present");
        assert_eq!(passed.into_iter().collect::<Vec<_>>(), [("host".into(), "h".into()), ("role".into(), "r".into())]);
        let mut without_role = annotations.clone();
        without_role.remove("role");
        assert_eq!(plugin_annotations(&attributes, &without_role), Err("role".to_string()));
    }

    #[test]
    fn account_cache_keys_tell_accounts_uids_and_annotations_apart() {
        let none = BTreeMap::new();
        let one: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let base = account_cache_key("ns", "sa", "u1", &none);
        assert_eq!(base, account_cache_key("ns", "sa", "u1", &BTreeMap::new()));
        for other in [
            account_cache_key("ns", "sa", "u2", &none),
            account_cache_key("ns", "sb", "u1", &none),
            account_cache_key("nt", "sa", "u1", &none),
            account_cache_key("ns", "sa", "u1", &one),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn tokens_are_not_shown() {
        let token = ServiceAccountToken::new("hunter2".into(), Duration::from_secs(600));
        assert!(!format!("{token:?}").contains("hunter2"));
    }
}
