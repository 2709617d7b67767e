//! Workloads from the Kubernetes API: one paged list per kind (`check`), or kube-runtime
//! watchers feeding the store (`run`). Objects are decoded slim (`SlimObject`: only the fields
//! pullcheck reads, `managedFields` and `status` skipped while parsing) and reduced by the
//! same code as manifests on disk, so a cluster and its manifests give the same answer.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::error::{Warning, WarningKind};
use crate::inventory::record::{RecordError, record_from_object};
use crate::inventory::slim::SlimObject;
use crate::inventory::store::{SharedStore, Update, WatchScope};
use crate::inventory::{WorkloadKind, WorkloadRecord, WorkloadRef};

/// The kinds whose objects run pods: all but PodTemplate (last in `ALL`), which is not a
/// workload in a cluster.
pub const CLUSTER_KINDS: &[WorkloadKind] = WorkloadKind::ALL.split_at(WorkloadKind::ALL.len() - 1).0;

pub(crate) const PAGE_SIZE: u32 = 500;

pub fn api_resource(kind: WorkloadKind) -> ApiResource {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    match kind {
        WorkloadKind::Deployment => ApiResource::erase::<apps::Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<apps::StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<apps::DaemonSet>(&()),
        WorkloadKind::ReplicaSet => ApiResource::erase::<apps::ReplicaSet>(&()),
        WorkloadKind::ReplicationController => ApiResource::erase::<core::ReplicationController>(&()),
        WorkloadKind::Job => ApiResource::erase::<batch::Job>(&()),
        WorkloadKind::CronJob => ApiResource::erase::<batch::CronJob>(&()),
        WorkloadKind::Pod => ApiResource::erase::<core::Pod>(&()),
        WorkloadKind::PodTemplate => ApiResource::erase::<core::PodTemplate>(&()),
    }
}

/// The watch scopes for the kinds: cluster-wide, or one per listed namespace (for RBAC that
/// grants namespaces one by one).
pub fn scopes(namespaces: Option<&[String]>) -> Vec<WatchScope> {
    CLUSTER_KINDS
        .iter()
        .copied()
        .flat_map(|kind| match namespaces {
            None => vec![WatchScope { kind, namespace: None }],
            Some(list) => list.iter().map(|ns| WatchScope { kind, namespace: Some(ns.clone()) }).collect(),
        })
        .collect()
}

fn api(client: &kube::Client, scope: &WatchScope) -> Api<SlimObject> {
    let resource = api_resource(scope.kind);
    match &scope.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn identity(kind: WorkloadKind, object: &SlimObject) -> WorkloadRef {
    WorkloadRef {
        kind,
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// The slim record of an object; `Ok(None)` when another workload manages it.
pub fn record_of(kind: WorkloadKind, object: &SlimObject) -> Result<Option<WorkloadRecord>, RecordError> {
    record_from_object(kind, object)
}

pub(crate) fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_forbidden())
}

fn watcher_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            is_forbidden(e)
        }
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

/// One pass over the cluster.
#[derive(Debug, Default)]
pub struct ClusterSnapshot {
    pub records: Vec<WorkloadRecord>,
    /// Kinds that could not be listed (403 and others), objects that could not be read.
    pub warnings: Vec<Warning>,
}

/// Lists every kind in pages. A kind that fails (403 included) is reported and skipped.
pub async fn list_workloads(client: &kube::Client, namespaces: Option<&[String]>) -> ClusterSnapshot {
    let mut snapshot = ClusterSnapshot::default();
    for scope in scopes(namespaces) {
        let api = api(client, &scope);
        let mut params = ListParams::default().limit(PAGE_SIZE);
        loop {
            match api.list(&params).await {
                Ok(page) => {
                    for object in &page.items {
                        match record_of(scope.kind, object) {
                            Ok(Some(record)) => snapshot.records.push(record),
                            Ok(None) => {}
                            Err(e) => snapshot.warnings.push(Warning::new(
                                WarningKind::InvalidObject,
                                describe(&identity(scope.kind, object), &e),
                            )),
                        }
                    }
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => params = params.continue_token(&token),
                        None => break,
                    }
                }
                Err(e) => {
                    snapshot.warnings.push(list_problem(&scope, &e));
                    break;
                }
            }
        }
    }
    snapshot
}

/// Labels of every namespace (for `--namespace-selector`).
pub async fn list_namespaces(client: &kube::Client) -> Result<BTreeMap<String, BTreeMap<String, String>>, kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut out = BTreeMap::new();
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for ns in page.items {
            out.insert(ns.metadata.name.unwrap_or_default(), ns.metadata.labels.unwrap_or_default());
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

fn list_problem(scope: &WatchScope, error: &kube::Error) -> Warning {
    let kind = scope.kind;
    let place = scope.namespace.as_deref().map_or_else(|| "cluster-wide".to_string(), |ns| format!("in {ns}"));
    if is_forbidden(error) {
        Warning::new(
            WarningKind::Forbidden,
            format!("cannot list {kind}s {place}: forbidden by RBAC; {kind}s are skipped"),
        )
    } else {
        Warning::new(WarningKind::ApiError, format!("cannot list {kind}s {place}: {error}"))
    }
}

fn describe(workload: &WorkloadRef, problem: &RecordError) -> String {
    format!("{workload}: {problem}")
}

/// Keeps the store current for one scope until the stream ends. A 403 is reported once and the
/// scope given up; other errors are retried with kube-runtime's default backoff.
pub async fn watch_scope(client: kube::Client, scope: WatchScope, store: SharedStore) {
    let mut events = watcher::watcher(api(&client, &scope), watcher::Config::default()).default_backoff().boxed();
    let apply = |update: Update| store.write().unwrap_or_else(|p| p.into_inner()).apply(update);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => apply(Update::Init(scope.clone())),
            Ok(Event::InitApply(object)) => {
                if let Some(record) = read(scope.kind, &object) {
                    apply(Update::InitRecord(scope.clone(), record));
                }
            }
            Ok(Event::InitDone) => apply(Update::InitDone(scope.clone())),
            Ok(Event::Apply(object)) => match read(scope.kind, &object) {
                Some(record) => apply(Update::Upsert(record)),
                None => apply(Update::Remove(identity(scope.kind, &object))),
            },
            Ok(Event::Delete(object)) => apply(Update::Remove(identity(scope.kind, &object))),
            Err(e) if watcher_forbidden(&e) => {
                let place = scope.namespace.as_deref().map_or_else(|| "cluster-wide".into(), |ns| format!("in {ns}"));
                tracing::warn!(kind = %scope.kind, "cannot watch {}s {place}: forbidden by RBAC; they are skipped", scope.kind);
                apply(Update::GaveUp(scope.clone()));
                return;
            }
            Err(e) => tracing::warn!(kind = %scope.kind, error = %e, "watch failed; retrying"),
        }
    }
}

fn read(kind: WorkloadKind, object: &SlimObject) -> Option<WorkloadRecord> {
    match record_of(kind, object) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!("{}", describe(&identity(kind, object), &e));
            None
        }
    }
}

/// Keeps namespace labels current in the store (for `--namespace-selector`).
pub async fn watch_namespaces(client: kube::Client, store: SharedStore) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let apply = |update: Update| store.write().unwrap_or_else(|p| p.into_inner()).apply(update);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(ns) | Event::InitApply(ns)) => apply(Update::Namespace(
                ns.metadata.name.unwrap_or_default(),
                Some(ns.metadata.labels.unwrap_or_default()),
            )),
            Ok(Event::Delete(ns)) => apply(Update::Namespace(ns.metadata.name.unwrap_or_default(), None)),
            Ok(Event::InitDone) => apply(Update::NamespacesSynced),
            Ok(Event::Init) => {}
            Err(e) if watcher_forbidden(&e) => {
                tracing::error!("cannot watch namespaces: forbidden by RBAC; --namespace-selector matches nothing");
                apply(Update::NamespacesSynced);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
        }
    }
}

/// A client for the cluster of a kubeconfig (`kubeconfig`, else $KUBECONFIG or ~/.kube/config,
/// else the in-cluster service account) and context, with that context's namespace.
pub async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> crate::Result<(kube::Client, String)> {
    use crate::Error;
    let options = kube::config::KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        None if context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}
