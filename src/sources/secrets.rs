//! Pull credentials as kubelet finds them: the pod template's `imagePullSecrets`, else its
//! ServiceAccount's. Secrets are read with `get` by name and cached for a while — never a
//! cluster-wide list of every secret in memory. A namespace's secrets serve only its workloads.
//! With `--service-account-token-providers`, the credential providers in service-account-token
//! mode run here too, per workload, with a token of its service account from the TokenRequest
//! API (docs/credential-providers.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

use crate::config::RegistryConfig;
use crate::credentials::{
    CredentialError, DockerCredentials, ProviderError, ServiceAccountData, ServiceAccountToken, ServiceAccountTokens,
    WorkloadCredentials,
};
use crate::error::{Warning, WarningKind};
use crate::inventory::WorkloadRecord;

/// Why a pull secret did not contribute credentials. Cloned out of the cache, hence the `Arc`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SecretError {
    #[error("pull secret {namespace}/{name} not found; probing without it")]
    NotFound { namespace: String, name: String },
    #[error("pull secret {namespace}/{name} is forbidden to pullcheck; probing anonymously")]
    SecretForbidden { namespace: String, name: String },
    #[error("secret {namespace}/{name} has type {kind}, not a pull secret; probing without it")]
    NotAPullSecret { namespace: String, name: String, kind: String },
    #[error("pull secret {namespace}/{name} has no {field}; probing without it")]
    MissingField { namespace: String, name: String, field: &'static str },
    #[error("pull secret {namespace}/{name}: {source}; probing without it")]
    Malformed { namespace: String, name: String, source: CredentialError },
    #[error("service account {namespace}/{name} is forbidden to pullcheck")]
    ServiceAccountForbidden { namespace: String, name: String },
    #[error("{what} {namespace}/{name}: {source}")]
    Api { what: &'static str, namespace: String, name: String, source: Arc<kube::Error> },
    /// A credential provider in service-account-token mode gave the workload nothing.
    #[error("{0}")]
    Provider(ProviderError),
}

impl SecretError {
    pub fn kind(&self) -> WarningKind {
        match self {
            SecretError::NotFound { .. } => WarningKind::SecretNotFound,
            SecretError::SecretForbidden { .. } | SecretError::ServiceAccountForbidden { .. } => WarningKind::Forbidden,
            SecretError::NotAPullSecret { .. } | SecretError::MissingField { .. } | SecretError::Malformed { .. } => {
                WarningKind::InvalidSecret
            }
            SecretError::Api { .. } => WarningKind::ApiError,
            SecretError::Provider(_) => WarningKind::CredentialProvider,
        }
    }

    /// The warning for a workload that named this secret.
    pub fn warning_for(&self, workload: &impl std::fmt::Display) -> Warning {
        Warning::new(self.kind(), format!("{workload}: {self}"))
    }
}

/// Reads of one object per (namespace, name), with when they were made.
type Cache<T> = Mutex<HashMap<(String, String), (Instant, Result<T, SecretError>)>>;

pub struct PullSecrets {
    client: kube::Client,
    ttl: Duration,
    /// Shared, not copied, into every workload that names the secret: at 50,000 workloads a
    /// copy each was `check -A`'s largest heap site (docs/architecture.md, "At Kubernetes' limits").
    secrets: Cache<Arc<DockerCredentials>>,
    service_accounts: Cache<Account>,
    secrets_forbidden: AtomicBool,
    service_accounts_forbidden: AtomicBool,
}

impl PullSecrets {
    /// `ttl`: how long a secret read is trusted before it is read again (rotations show up then).
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            secrets: Mutex::default(),
            service_accounts: Mutex::default(),
            secrets_forbidden: AtomicBool::new(false),
            service_accounts_forbidden: AtomicBool::new(false),
        }
    }

    /// The workload's pull secrets in kubelet's order, and why some of them are missing.
    pub async fn for_workload(&self, record: &WorkloadRecord) -> (WorkloadCredentials, Vec<SecretError>) {
        let namespace = &record.workload.namespace;
        let mut credentials = WorkloadCredentials::default();
        let mut problems = Vec::new();
        let names = if record.pull_secrets.is_empty() {
            match self.service_account(namespace, &record.service_account).await {
                Ok(account) => account.pull_secrets,
                Err(problem) => {
                    problems.push(problem);
                    Vec::new()
                }
            }
        } else {
            record.pull_secrets.iter().map(ToString::to_string).collect()
        };
        for name in names {
            match self.secret(namespace, &name).await {
                // Named with its namespace: the same name in two namespaces is two credentials,
                // and their budgets and answers must not read as one.
                Ok(creds) => credentials.secrets.push((format!("{namespace}/{name}"), creds)),
                Err(problem) => problems.push(problem),
            }
        }
        (credentials, problems)
    }

    /// [`for_workload`](Self::for_workload), and what the credential providers in
    /// service-account-token mode give its service account for each of its images.
    pub async fn for_workload_with_providers(
        &self,
        record: &WorkloadRecord,
        config: &RegistryConfig,
    ) -> (WorkloadCredentials, Vec<SecretError>) {
        let (mut credentials, mut problems) = self.for_workload(record).await;
        let Some(providers) = config.providers().filter(|p| p.runs_per_workload()) else {
            return (credentials, problems);
        };
        let mut seen = std::collections::HashSet::new();
        for container in &record.containers {
            let Ok(image) = config.parse_image(&container.image) else { continue };
            if !seen.insert(image.name()) {
                continue;
            }
            let results = providers
                .workload_credentials_for(&image, &record.workload.namespace, &record.service_account, self)
                .await;
            for (provider, result) in results {
                match result {
                    Ok(found) => credentials.providers.push((provider, image.name(), found)),
                    Err(e) => problems.push(SecretError::Provider(e)),
                }
            }
        }
        (credentials, problems)
    }

    /// The cached read of (namespace, name), or a fresh one once the cached one is `ttl` old.
    async fn cached<T: Clone, F>(
        &self,
        cache: &Cache<T>,
        namespace: &str,
        name: &str,
        read: impl FnOnce() -> F,
    ) -> Result<T, SecretError>
    where
        F: std::future::Future<Output = Result<T, SecretError>>,
    {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, cached)) = lock(cache).get(&key)
            && at.elapsed() < self.ttl
        {
            return cached.clone();
        }
        let result = read().await;
        lock(cache).insert(key, (Instant::now(), result.clone()));
        result
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Arc<DockerCredentials>, SecretError> {
        self.cached(&self.secrets, namespace, name, || async {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            match api.get(name).await {
                Ok(secret) => parse_secret(namespace, name, &secret).map(Arc::new),
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    Err(SecretError::NotFound { namespace: namespace.into(), name: name.into() })
                }
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    if !self.secrets_forbidden.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "pullcheck may not read secrets (RBAC: get secrets): images are probed anonymously, \
                             private images will show authentication_failure"
                        );
                    }
                    Err(SecretError::SecretForbidden { namespace: namespace.into(), name: name.into() })
                }
                Err(e) => Err(SecretError::Api {
                    what: "pull secret",
                    namespace: namespace.into(),
                    name: name.into(),
                    source: Arc::new(e),
                }),
            }
        })
        .await
    }

    async fn service_account(&self, namespace: &str, name: &str) -> Result<Account, SecretError> {
        self.cached(&self.service_accounts, namespace, name, || async {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
            match api.get(name).await {
                Ok(sa) => Ok(Account {
                    pull_secrets: sa.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect(),
                    data: sa.metadata.uid.map(|uid| ServiceAccountData {
                        uid,
                        annotations: sa.metadata.annotations.unwrap_or_default(),
                    }),
                }),
                // kubelet pulls without credentials then too.
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(Account::default()),
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    if !self.service_accounts_forbidden.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "pullcheck may not read service accounts (RBAC: get serviceaccounts): their pull secrets are not used"
                        );
                    }
                    Err(SecretError::ServiceAccountForbidden { namespace: namespace.into(), name: name.into() })
                }
                Err(e) => Err(SecretError::Api { what: "service account", namespace: namespace.into(), name: name.into(), source: Arc::new(e) }),
            }
        })
        .await
    }
}

/// What pullcheck keeps of a service account: its pull secrets' names, and its uid and
/// annotations for credential providers (`None`: not found).
#[derive(Clone, Debug, Default)]
struct Account {
    pull_secrets: Vec<String>,
    data: Option<ServiceAccountData>,
}

/// The lifetime asked of a token: the API server's minimum. pullcheck only hands it to a
/// plugin once; the less it lives, the less it is worth if leaked.
const TOKEN_SECONDS: i64 = 600;

impl ServiceAccountTokens for PullSecrets {
    fn account<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<ServiceAccountData, String>> {
        async move {
            match self.service_account(namespace, name).await {
                Ok(Account { data: Some(data), .. }) => Ok(data),
                Ok(Account { data: None, .. }) => Err("not found".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }

    fn token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ServiceAccountToken, String>> {
        async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.to_string()],
                    expiration_seconds: Some(TOKEN_SECONDS),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            };
            let issued =
                api.create_token_request(name, &PostParams::default(), &request).await.map_err(|e| match e {
                    // The API server's status message names the account and verb, never a token.
                    kube::Error::Api(status) if status.is_forbidden() => {
                        "forbidden to pullcheck (RBAC: create serviceaccounts/token)".to_string()
                    }
                    kube::Error::Api(status) => status.message,
                    other => other.to_string(),
                })?;
            let status = issued.status.ok_or("the API server issued no token")?;
            // The life asked for, the API server's minimum: it never issues less.
            Ok(ServiceAccountToken::new(status.token, Duration::from_secs(TOKEN_SECONDS.unsigned_abs())))
        }
        .boxed()
    }
}

/// `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`.
fn parse_secret(namespace: &str, name: &str, secret: &Secret) -> Result<DockerCredentials, SecretError> {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    let field = match kind {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        other => return Err(SecretError::NotAPullSecret { namespace, name, kind: other.to_string() }),
    };
    let Some(data) = secret.data.as_ref().and_then(|d| d.get(field)) else {
        return Err(SecretError::MissingField { namespace, name, field });
    };
    DockerCredentials::parse(&data.0).map_err(|source| SecretError::Malformed { namespace, name, source })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
