//! Credentials as the nodes find them: docker config files and pull secrets ([`docker`]),
//! gathered per workload in kubelet's order, and kubelet's credential-provider plugins
//! ([`provider`]). A credential's `Debug` never shows its secret.

pub mod docker;
pub mod provider;

use std::fmt;

use base64::Engine;

use crate::image::ImageRef;
pub use docker::{CredentialError, DockerCredentials};
pub use provider::{CredentialProviders, ProviderError};

/// A credential for one registry host. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// docker config's `registrytoken`: a bearer token sent as is.
    Bearer(String),
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic { username: username.into(), password: password.into() }
    }

    /// The `Authorization` header value for Basic, if this is a username and password.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => {
                let raw = format!("{username}:{password}");
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
            }
            Credential::Bearer(_) => None,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, password redacted)"),
            Credential::Bearer(_) => f.write_str("Bearer(redacted)"),
        }
    }
}

/// The pull secrets one workload brings, in kubelet's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadCredentials {
    /// (secret name, its credentials), in kubelet's order.
    pub secrets: Vec<(String, DockerCredentials)>,
}

impl WorkloadCredentials {
    /// The first secret with an entry for the image's registry, as kubelet tries them.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        self.secrets.iter().find_map(|(_, creds)| creds.lookup(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_debug_their_secret() {
        let shown = format!("{:?} {:?}", Credential::basic("alice", "s3cret"), Credential::Bearer("tok3n".into()));
        assert!(!shown.contains("s3cret") && !shown.contains("tok3n"), "{shown}");
    }
}
