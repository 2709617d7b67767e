//! Credentials as the nodes find them: docker config files and pull secrets ([`docker`]),
//! gathered per workload in kubelet's order, and kubelet's credential-provider plugins
//! ([`provider`]). A credential's `Debug` never shows its secret.

pub mod docker;
pub mod provider;

use std::fmt;
use std::sync::Arc;

use base64::Engine;

use crate::image::ImageRef;
pub use docker::{CredentialError, DockerCredentials};
pub use provider::{
    CredentialProviders, ProviderError, ServiceAccountData, ServiceAccountToken, ServiceAccountTokens, TokenProviders,
};

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

/// Where a credential comes from: named in traces, logs and reports — never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialSource {
    /// A pull secret of the workload's namespace (its pod spec's, or its service account's), as
    /// `namespace/name`.
    PullSecret(String),
    /// `--registry-config`: a host's `auth` or `dockerConfig`, or the top-level `dockerConfig`
    /// (the node's own docker config, as kubelet reads it).
    RegistryConfig,
    /// A kubelet credential-provider plugin, by name.
    Provider(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::PullSecret(name) => write!(f, "pull secret {name}"),
            CredentialSource::RegistryConfig => f.write_str("registry config"),
            CredentialSource::Provider(name) => write!(f, "credential provider {name}"),
        }
    }
}

/// Whose answer or budget it is: `pull secret <namespace>/<name>`, `registry config`, `credential provider
/// <name>`, or `anonymous` — the credential's name, never its content.
pub fn credential_name(source: Option<&CredentialSource>) -> String {
    source.map_or_else(|| "anonymous".to_string(), ToString::to_string)
}

/// A credential with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcedCredential {
    pub source: CredentialSource,
    pub credential: Credential,
}

/// The pull secrets one workload brings, in kubelet's order, and what credential providers in
/// service-account-token mode give its service account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadCredentials {
    /// (the secret's `namespace/name`, its credentials), in kubelet's order.
    pub secrets: Vec<(String, Arc<DockerCredentials>)>,
    /// (provider, the image's `registry/repository`, its credentials for it), in config order.
    pub providers: Vec<(String, String, Vec<Credential>)>,
}

impl WorkloadCredentials {
    /// The first credential kubelet would send for the image.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        self.matching(image).into_iter().next().map(|(_, c)| c)
    }

    /// Every credential of the workload's pull secrets for the image, in the order kubelet
    /// tries them: its keyring sorts the entries of all secrets by pattern, in reverse (the more
    /// specific first), keeping the secrets' order among equal patterns. The same credential
    /// twice is tried once.
    pub fn matching(&self, image: &ImageRef) -> Vec<(&str, &Credential)> {
        let mut found: Vec<(&str, usize, &str, &Credential)> = Vec::new();
        for (index, (name, creds)) in self.secrets.iter().enumerate() {
            found.extend(creds.matching(image).map(|(pattern, c)| (pattern, index, name.as_str(), c)));
        }
        found.sort_by(|a, b| b.0.cmp(a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<(&str, &Credential)> = Vec::new();
        for (_, _, name, credential) in found {
            if !out.iter().any(|(_, c)| *c == credential) {
                out.push((name, credential));
            }
        }
        out
    }

    /// [`matching`](Self::matching), each named by its secret, then the providers' credentials
    /// for this image.
    pub fn chain(&self, image: &ImageRef) -> Vec<SourcedCredential> {
        let target = image.name();
        let mut chain: Vec<SourcedCredential> = self
            .matching(image)
            .into_iter()
            .map(|(name, credential)| SourcedCredential {
                source: CredentialSource::PullSecret(name.to_string()),
                credential: credential.clone(),
            })
            .collect();
        for (provider, _, credentials) in self.providers.iter().filter(|(_, name, _)| *name == target) {
            for credential in credentials {
                if !chain.iter().any(|c| c.credential == *credential) {
                    chain.push(SourcedCredential {
                        source: CredentialSource::Provider(provider.clone()),
                        credential: credential.clone(),
                    });
                }
            }
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("valid test image")
    }

    #[test]
    fn every_matching_secret_in_kubelets_order() {
        let old = DockerCredentials::single("r.example", Credential::basic("old", "rotated-out"));
        let current = DockerCredentials::single("r.example", Credential::basic("current", "pw"));
        let team = DockerCredentials::single("r.example/team", Credential::basic("team", "pw"));
        let duplicate = DockerCredentials::single("r.example", Credential::basic("current", "pw"));
        let creds = WorkloadCredentials {
            secrets: vec![
                ("old".into(), Arc::new(old)),
                ("current".into(), Arc::new(current)),
                ("team".into(), Arc::new(team)),
                ("copy".into(), Arc::new(duplicate)),
            ],
            ..WorkloadCredentials::default()
        };
        let names: Vec<String> =
            creds.chain(&image("r.example/team/app")).iter().map(|c| c.source.to_string()).collect();
        assert_eq!(
            names,
            ["pull secret team", "pull secret old", "pull secret current"],
            "specific first, then secret order, once each"
        );
        assert!(creds.chain(&image("other.example/app")).is_empty());
    }

    #[test]
    fn provider_credentials_follow_the_secrets_for_their_image_only() {
        let creds = WorkloadCredentials {
            secrets: vec![(
                "s".into(),
                Arc::new(DockerCredentials::single("r.example", Credential::basic("secret", "pw"))),
            )],
            providers: vec![
                (
                    "sa".into(),
                    "r.example/app".into(),
                    vec![Credential::basic("sa", "pw"), Credential::basic("secret", "pw")],
                ),
                ("sa".into(), "r.example/other".into(), vec![Credential::basic("other", "pw")]),
            ],
        };
        let names: Vec<String> = creds.chain(&image("r.example/app:v1")).iter().map(|c| c.source.to_string()).collect();
        assert_eq!(names, ["pull secret s", "credential provider sa"], "after the secrets, the same credential once");
        let other: Vec<String> = creds.chain(&image("r.example/other")).iter().map(|c| c.source.to_string()).collect();
        assert_eq!(other, ["pull secret s", "credential provider sa"]);
    }

    #[test]
    fn credentials_never_debug_their_secret() {
        let shown = format!("{:?} {:?}", Credential::basic("alice", "s3cret"), Credential::Bearer("tok3n".into()));
        assert!(!shown.contains("s3cret") && !shown.contains("tok3n"), "{shown}");
    }
}
