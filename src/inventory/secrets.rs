//! Pull credentials as kubelet finds them: the pod template's `imagePullSecrets`, else its
//! ServiceAccount's. Secrets are read with `get` by name and cached for a while — never a
//! cluster-wide list of every secret in memory. A namespace's secrets serve only its workloads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use tokio::time::Instant;

use super::WorkloadRecord;
use super::credentials::DockerCredentials;
use crate::image::ImageRef;
use crate::registry::Credential;

/// The credentials one workload brings, and why some of them are missing.
#[derive(Clone, Debug, Default)]
pub struct WorkloadCredentials {
    /// In kubelet's order.
    pub secrets: Vec<(String, DockerCredentials)>,
    pub problems: Vec<String>,
}

impl WorkloadCredentials {
    /// The first secret with an entry for the image's registry, as kubelet tries them.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        self.secrets.iter().find_map(|(_, creds)| creds.lookup(image))
    }
}

/// Reads of one object per (namespace, name), with when they were made.
type Cache<T> = Mutex<HashMap<(String, String), (Instant, Result<T, String>)>>;

pub struct PullSecrets {
    client: kube::Client,
    ttl: Duration,
    secrets: Cache<DockerCredentials>,
    service_accounts: Cache<Vec<String>>,
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

    pub async fn for_workload(&self, record: &WorkloadRecord) -> WorkloadCredentials {
        let namespace = &record.workload.namespace;
        let mut out = WorkloadCredentials::default();
        let names = if record.pull_secrets.is_empty() {
            match self.service_account_secrets(namespace, &record.service_account).await {
                Ok(names) => names,
                Err(problem) => {
                    out.problems.push(problem);
                    Vec::new()
                }
            }
        } else {
            record.pull_secrets.clone()
        };
        for name in names {
            match self.secret(namespace, &name).await {
                Ok(creds) => out.secrets.push((name, creds)),
                Err(problem) => out.problems.push(problem),
            }
        }
        out
    }

    /// The cached read of (namespace, name), or a fresh one once the cached one is `ttl` old.
    async fn cached<T: Clone, F>(
        &self,
        cache: &Cache<T>,
        namespace: &str,
        name: &str,
        read: impl FnOnce() -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>>,
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

    async fn secret(&self, namespace: &str, name: &str) -> Result<DockerCredentials, String> {
        self.cached(&self.secrets, namespace, name, || async {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            match api.get(name).await {
                Ok(secret) => parse_secret(namespace, name, &secret),
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    Err(format!("pull secret {namespace}/{name} not found; probing without it"))
                }
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    if !self.secrets_forbidden.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "pullcheck may not read secrets (RBAC: get secrets): images are probed anonymously, \
                             private images will show authentication_failure"
                        );
                    }
                    Err(format!("pull secret {namespace}/{name} is forbidden to pullcheck; probing anonymously"))
                }
                Err(e) => Err(format!("pull secret {namespace}/{name}: {e}")),
            }
        })
        .await
    }

    async fn service_account_secrets(&self, namespace: &str, name: &str) -> Result<Vec<String>, String> {
        self.cached(&self.service_accounts, namespace, name, || async {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
            match api.get(name).await {
                Ok(sa) => Ok(sa.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect()),
                // kubelet probes without credentials then too.
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(Vec::new()),
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    if !self.service_accounts_forbidden.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "pullcheck may not read service accounts (RBAC: get serviceaccounts): their pull secrets are not used"
                        );
                    }
                    Err(format!("service account {namespace}/{name} is forbidden to pullcheck"))
                }
                Err(e) => Err(format!("service account {namespace}/{name}: {e}")),
            }
        })
        .await
    }
}

/// `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`.
fn parse_secret(namespace: &str, name: &str, secret: &Secret) -> Result<DockerCredentials, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    let field = match kind {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        other => {
            return Err(format!("secret {namespace}/{name} has type {other}, not a pull secret; probing without it"));
        }
    };
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(field))
        .ok_or_else(|| format!("pull secret {namespace}/{name} has no {field}; probing without it"))?;
    DockerCredentials::parse(&data.0).map_err(|e| format!("pull secret {namespace}/{name}: {e}; probing without it"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
