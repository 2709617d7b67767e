//! The library's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    RegistryConfig(#[from] crate::config::ConfigError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid regular expression {pattern:?}: {source}")]
    Regex { pattern: String, source: regex::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
