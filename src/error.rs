//! The library's one error type, and the warnings that limit an answer without stopping it.

use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    RegistryConfig(#[from] crate::config::ConfigError),
    /// An OpenTelemetry environment variable pullcheck cannot honour.
    #[error("{variable}: {problem}")]
    TelemetryEnv { variable: String, problem: String },
    #[error("OTLP {signal} exporter: {source}")]
    Exporter { signal: &'static str, source: opentelemetry_otlp::ExporterBuildError },
    /// An HTTP client could not be built from its TLS material (CA bundle, client certificate).
    #[error("{what}: {source}")]
    HttpClient { what: String, source: reqwest::Error },
    /// A host's TLS material that cannot be used (CA bundle, client certificate, trust store).
    #[error("TLS for {what}: {problem}")]
    Tls { what: String, problem: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An endpoint that cannot be addressed (a token realm or hosts.toml URL).
    #[error("endpoint {name}: {problem}")]
    Endpoint { name: String, problem: String },
    /// An image a `blocked = true` table of registries.conf matches: CRI-O refuses to pull it.
    #[error("blocked by registries.conf (prefix {prefix})")]
    Blocked { prefix: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What limited an answer without stopping it; `check -o json` lists them with their kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

/// The kinds of [`Warning`], so scripts can tell a 403 from a missing secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// RBAC refused pullcheck a read: a kind, secrets, service accounts, nodes, namespaces.
    Forbidden,
    /// The API server could not be reached (connection refused, name resolution, TLS, timeout).
    Unreachable,
    /// The API server refused pullcheck's credentials (401).
    Unauthorized,
    /// A list or read failed for another reason (an API server error).
    ApiError,
    /// An object that could not be reduced to a workload record.
    InvalidObject,
    /// A pull secret named by a workload does not exist.
    SecretNotFound,
    /// A pull secret that is not a readable docker config.
    InvalidSecret,
    /// A credential provider in service-account-token mode gave a workload nothing.
    CredentialProvider,
}

impl Warning {
    pub fn new(kind: WarningKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
