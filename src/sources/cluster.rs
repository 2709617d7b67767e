//! Workloads from the Kubernetes API: one paged list per kind (`check`), or kube-runtime
//! watchers feeding the store (`run`). Objects are decoded slim (`SlimObject`: only the fields
//! pullcheck reads, `managedFields` and `status` skipped while parsing) and reduced by the
//! same code as manifests on disk, so a cluster and its manifests give the same answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Warning, WarningKind};
use crate::inventory::record::{RecordError, controller_of, namespace_of, record_from_object, running_pod};
use crate::inventory::running::{ObjectKey, OwnedBy, RunningPod};
use crate::inventory::slim::SlimObject;
use crate::inventory::store::{SharedStore, Update, WatchScope, write};
use crate::inventory::{WorkloadKind, WorkloadRecord, WorkloadRef};
use crate::name::Interner;
use crate::sources::coalesce::{self, Coalesced};

/// The kinds whose objects run pods: all but PodTemplate (last in `ALL`), which is not a
/// workload in a cluster.
pub const CLUSTER_KINDS: &[WorkloadKind] = WorkloadKind::ALL.split_at(WorkloadKind::ALL.len() - 1).0;

/// Objects per list page (`--list-page-size`). A page is held whole while it is read and
/// decoded: at 500 (kube-runtime's and client-go's default) a page of Pods was the heap's peak
/// at sync, 1.55× the steady heap; at 100 the peak is 1.15× and the lists take 3 % longer
/// (docs/architecture.md, "Footprint").
pub const DEFAULT_PAGE_SIZE: u32 = 100;

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

/// `cluster-wide` or `in <namespace>`, as messages name where something was asked.
pub(crate) fn place(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "cluster-wide".to_string(), |ns| format!("in {ns}"))
}

/// Every object a list yields, page by page (`continue`), each handed to `each` as it arrives.
pub(crate) async fn list_each<K>(api: &Api<K>, page_size: u32, mut each: impl FnMut(K)) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(page_size);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        page.items.into_iter().for_each(&mut each);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
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
        namespace: object.metadata.namespace.as_deref().unwrap_or_default().into(),
        name: object.metadata.name.as_deref().unwrap_or_default().into(),
    }
}

pub(crate) fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_forbidden())
}

fn watcher_forbidden(error: &watcher::Error) -> bool {
    WatchTrouble::of(error) == WatchTrouble::Forbidden
}

/// One pass over the cluster.
#[derive(Debug, Default)]
pub struct ClusterSnapshot {
    pub records: Vec<WorkloadRecord>,
    /// Objects that could not be read.
    pub warnings: Vec<Warning>,
    /// Kinds that could not be listed, each with why.
    pub failures: Vec<ListFailure>,
    /// What the pods run, and the owners mapping them to workloads (for drift).
    pub pods: Vec<RunningPod>,
    pub owners: Vec<(ObjectKey, OwnedBy)>,
}

impl ClusterSnapshot {
    /// How much is held, to go back to with [`ClusterSnapshot::truncate`].
    fn lengths(&self) -> [usize; 4] {
        [self.records.len(), self.warnings.len(), self.pods.len(), self.owners.len()]
    }

    /// Drops what came after `lengths`: a list started again.
    fn truncate(&mut self, [records, warnings, pods, owners]: [usize; 4]) {
        self.records.truncate(records);
        self.warnings.truncate(warnings);
        self.pods.truncate(pods);
        self.owners.truncate(owners);
    }

    /// Whether the API server answered and accepted the credentials: when not, every other
    /// request (nodes, namespaces, secrets) would fail the same way and say it again.
    pub fn reached(&self) -> bool {
        !self.failures.iter().any(|f| f.cause.is_connection())
    }
}

/// Why a request to the API server failed, as a person needs to hear it: the same cause for
/// several kinds is one cause, so it is said once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiFailure {
    /// No answer: connection refused, name resolution, TLS, timeout.
    Unreachable(String),
    /// 401: the API server does not accept pullcheck's credentials.
    Unauthorized,
    /// 403: RBAC does not grant the request.
    Forbidden,
    /// Any other answer or failure, in one line.
    Other(String),
}

impl ApiFailure {
    pub fn of(error: &kube::Error) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 401 => ApiFailure::Unauthorized,
            kube::Error::Api(status) if status.is_forbidden() => ApiFailure::Forbidden,
            // kube's Display of a Status is a Debug dump of it: its parts are said instead.
            kube::Error::Api(status) => {
                let reason = if status.reason.is_empty() { String::new() } else { format!(" {}", status.reason) };
                let message = if status.message.is_empty() { String::new() } else { format!(": {}", status.message) };
                ApiFailure::Other(format!("the API server answered {}{reason}{message}", status.code))
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => ApiFailure::Unreachable(transport_cause(error)),
            other => ApiFailure::Other(other.to_string()),
        }
    }

    /// No request can succeed: the API server was not reached, or refused the credentials.
    pub fn is_connection(&self) -> bool {
        matches!(self, ApiFailure::Unreachable(_) | ApiFailure::Unauthorized)
    }

    pub fn warning_kind(&self) -> WarningKind {
        match self {
            ApiFailure::Unreachable(_) => WarningKind::Unreachable,
            ApiFailure::Unauthorized => WarningKind::Unauthorized,
            ApiFailure::Forbidden => WarningKind::Forbidden,
            ApiFailure::Other(_) => WarningKind::ApiError,
        }
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiFailure::Unreachable(cause) => write!(f, "cannot reach the API server: {cause}"),
            ApiFailure::Unauthorized => f.write_str("the API server refused the credentials (401)"),
            ApiFailure::Forbidden => f.write_str("forbidden by RBAC"),
            ApiFailure::Other(message) => f.write_str(message),
        }
    }
}

/// What stopped a connection, from the innermost I/O error when there is one (hyper and tower
/// wrap it in layers whose own messages say nothing: `client error (Connect)`).
fn transport_cause(error: &kube::Error) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut innermost = error.to_string();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        innermost = e.to_string();
        current = e.source();
    }
    innermost
}

/// A kind that could not be listed in a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFailure {
    pub kind: WorkloadKind,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
    pub cause: ApiFailure,
}

impl ListFailure {
    /// The failure of one kind, for the JSON `warnings` (each with its kind).
    pub fn warning(&self) -> Warning {
        let kind = self.kind;
        let place = place(self.namespace.as_deref());
        Warning::new(
            self.cause.warning_kind(),
            format!("cannot list {kind}s {place}: {}; {kind}s are skipped", self.cause),
        )
    }
}

/// One line per cause, for people: the kinds sharing a cause named together, and scopes with the
/// same kinds on one line. `server` is the API server's URL.
///
/// `cannot reach https://127.0.0.1:6443: connection refused`,
/// `the API server refused the credentials (401)`,
/// `forbidden by RBAC: list deployments, statefulsets cluster-wide`,
/// `cannot list jobs in a, b: the API server answered 500 InternalError: …`.
pub fn failure_lines(failures: &[ListFailure], server: &str) -> Vec<String> {
    let mut by_cause: BTreeMap<&ApiFailure, BTreeMap<Option<&str>, Vec<WorkloadKind>>> = BTreeMap::new();
    for failure in failures {
        let kinds = by_cause.entry(&failure.cause).or_default().entry(failure.namespace.as_deref()).or_default();
        if !kinds.contains(&failure.kind) {
            kinds.push(failure.kind);
        }
    }
    let mut lines = Vec::new();
    for (cause, places) in by_cause {
        match cause {
            ApiFailure::Unreachable(why) => lines.push(format!("cannot reach {server}: {why}")),
            ApiFailure::Unauthorized => lines.push(cause.to_string()),
            ApiFailure::Forbidden => lines.extend(listed(places).map(|what| format!("forbidden by RBAC: list {what}"))),
            ApiFailure::Other(why) => lines.extend(listed(places).map(|what| format!("cannot list {what}: {why}"))),
        }
    }
    lines
}

/// `deployments, jobs cluster-wide`, `pods in a, b`: scopes that lack the same kinds share a line.
fn listed(places: BTreeMap<Option<&str>, Vec<WorkloadKind>>) -> impl Iterator<Item = String> {
    let mut groups: Vec<(Vec<WorkloadKind>, Vec<Option<&str>>)> = Vec::new();
    for (place, mut kinds) in places {
        kinds.sort_by_key(|k| CLUSTER_KINDS.iter().position(|c| c == k));
        match groups.iter_mut().find(|(k, _)| *k == kinds) {
            Some((_, places)) => places.push(place),
            None => groups.push((kinds, vec![place])),
        }
    }
    groups.into_iter().map(|(kinds, places)| {
        let kinds: Vec<String> = kinds.iter().map(|k| api_resource(*k).plural).collect();
        let namespaces: Vec<&str> = places.iter().flatten().copied().collect();
        let place = match (places.contains(&None), namespaces.is_empty()) {
            (true, true) => "cluster-wide".to_string(),
            (false, _) => format!("in {}", namespaces.join(", ")),
            (true, false) => format!("cluster-wide and in {}", namespaces.join(", ")),
        };
        format!("{} {place}", kinds.join(", "))
    })
}

/// Lists every kind in pages. A kind that fails (403 included) is recorded and skipped; once the
/// API server has not been reached or has refused the credentials, the kinds left are recorded
/// with that cause without asking again (a server that drops packets would cost a connect
/// timeout per kind). A kind whose `continue` token expired mid-list (410) is listed again from
/// the start, its pages read so far dropped.
pub async fn list_workloads(client: &kube::Client, namespaces: Option<&[String]>, page_size: u32) -> ClusterSnapshot {
    let mut snapshot = ClusterSnapshot::default();
    // Equal names and pods' container lists held once, as `run`'s store holds them: at 150,000
    // pods a copy each was a large part of `check -A`'s peak (docs/architecture.md, "At
    // Kubernetes' limits").
    let (mut names, mut pod_lists) = (Interner::default(), Interner::default());
    for scope in scopes(namespaces) {
        if let Some(cause) = snapshot.failures.iter().map(|f| &f.cause).find(|c| c.is_connection()).cloned() {
            snapshot.failures.push(ListFailure { kind: scope.kind, namespace: scope.namespace.clone(), cause });
            continue;
        }
        let held = snapshot.lengths();
        let mut attempts = 0;
        let listed = loop {
            attempts += 1;
            let listed = list_each(&api(client, &scope), page_size, |object| {
                match running_of(scope.kind, &object) {
                    Running::Pod(_, Some(running)) => snapshot.pods.push(running.shared(&mut names, &mut pod_lists)),
                    Running::Owned(owned, Some(owner)) => snapshot.owners.push((owned, owner)),
                    _ => {}
                }
                match record_from_object(scope.kind, &object) {
                    Ok(Some(record)) => snapshot.records.push(record.interned(&mut names)),
                    Ok(None) => {}
                    Err(e) => snapshot
                        .warnings
                        .push(Warning::new(WarningKind::InvalidObject, describe(&identity(scope.kind, &object), &e))),
                }
            })
            .await;
            match listed {
                // The snapshot the pages came from was compacted away mid-list: the pages read
                // are dropped and the kind listed again from the start, as client-go's pager does.
                Err(kube::Error::Api(status)) if status.code == 410 && attempts < LIST_ATTEMPTS => {
                    snapshot.truncate(held);
                }
                other => break other,
            }
        };
        if let Err(e) = listed {
            let cause = ApiFailure::of(&e);
            snapshot.failures.push(ListFailure { kind: scope.kind, namespace: scope.namespace.clone(), cause });
        }
    }
    snapshot
}

/// Lists of one kind started when the last one's `continue` token expired (410).
const LIST_ATTEMPTS: usize = 3;

/// Labels of every namespace (for `--namespace-selector`).
pub async fn list_namespaces(client: &kube::Client) -> Result<BTreeMap<String, BTreeMap<String, String>>, kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut out = BTreeMap::new();
    list_each(&api, DEFAULT_PAGE_SIZE, |ns| {
        out.insert(ns.metadata.name.unwrap_or_default(), ns.metadata.labels.unwrap_or_default());
    })
    .await?;
    Ok(out)
}

/// How long `run` waits at start for the `kube-system` namespace: the resource cannot be
/// built before, so an API server that does not answer delays startup by this much at most.
pub const CLUSTER_UID_TIMEOUT: Duration = Duration::from_secs(5);

/// The `kube-system` namespace's uid: the cluster's identity, as OpenTelemetry's Kubernetes
/// conventions define `k8s.cluster.uid` (docs/telemetry.md, "Resource"). One `get`, by name.
pub async fn kube_system_uid(client: &kube::Client, timeout: Duration) -> Result<String, ApiFailure> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match tokio::time::timeout(timeout, api.get("kube-system")).await {
        Err(_) => Err(ApiFailure::Unreachable(format!("no answer within {timeout:?}"))),
        Ok(Err(error)) => Err(ApiFailure::of(&error)),
        Ok(Ok(namespace)) => namespace
            .metadata
            .uid
            .filter(|uid| !uid.is_empty())
            .ok_or_else(|| ApiFailure::Other("namespace kube-system has no metadata.uid".into())),
    }
}

/// The one warning `run` logs when it could not read the uid: what is missing, why, and the
/// two ways to fix it (docs/rbac.md).
pub fn cluster_uid_unknown(cause: &ApiFailure) -> String {
    let grant = match cause {
        ApiFailure::Forbidden => "grant `get` on namespaces with resourceNames [kube-system] (docs/rbac.md), or ",
        _ => "",
    };
    format!(
        "k8s.cluster.uid is left off the telemetry resource: reading namespace kube-system: {cause}; \
         {grant}set it with --cluster-uid (PULLCHECK_CLUSTER_UID, `none` not to look it up)"
    )
}

fn describe(workload: &WorkloadRef, problem: &RecordError) -> String {
    format!("{workload}: {problem}")
}

/// How the watchers list: in pages of `page_size`, each while it holds a turn: two initial
/// lists at a time, one relist at a time. Each page is held whole while it is decoded, so the
/// size of a page and the number of lists at once set the process's peak. The watchers also
/// share what they said of their failures, so that a cause is said once, not once per retry
/// and kind.
#[derive(Clone)]
pub struct Lists {
    /// [`INITIAL_LISTS`] of them: an initial list takes one, a relist all.
    turns: Arc<Semaphore>,
    page_size: u32,
    outages: Arc<Mutex<Outages>>,
    /// How long a forbidden scope waits before it is tried again.
    rbac_recheck: Duration,
}

/// `--rbac-recheck`'s default.
pub const RBAC_RECHECK: Duration = Duration::from_secs(300);

/// Initial lists at a time. While pullcheck decodes one list's page, the API server serves
/// the other's next page: at sync the decode (pullcheck's one thread) and the serving overlap
/// instead of taking turns (docs/architecture.md, "At Kubernetes' limits"). Relists stay one
/// at a time: a forced relist reaches every watch at once, in churn, where the peak is set.
pub const INITIAL_LISTS: u32 = 2;

impl Lists {
    pub fn new(page_size: u32) -> Lists {
        let turns = Arc::new(Semaphore::new(INITIAL_LISTS as usize));
        Lists { turns, page_size, outages: Arc::default(), rbac_recheck: RBAC_RECHECK }
    }

    /// A turn to list: one of the turns for a scope's first list, all of them for a relist.
    async fn turn(&self, first: bool) -> Option<OwnedSemaphorePermit> {
        let needed = if first { 1 } else { INITIAL_LISTS };
        self.turns.clone().acquire_many_owned(needed).await.ok()
    }

    pub fn with_rbac_recheck(self, rbac_recheck: Duration) -> Lists {
        Lists { rbac_recheck, ..self }
    }

    fn outages(&self) -> std::sync::MutexGuard<'_, Outages> {
        self.outages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a watcher could not go on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WatchTrouble {
    /// 403: the scope is given up and its workloads withdrawn.
    Forbidden,
    /// 410 Gone: the version the watch resumed from was compacted away; kube-runtime lists again.
    Expired,
    /// The version the watch resumed from is ahead of the API server's history ("Too large
    /// resource version"): the API server came back with another history (etcd restored or
    /// replaced). Resuming can never succeed; only a new list does.
    HistoryRestarted,
    /// Anything else (unreachable, 401, 429 past the client's retries, 5xx): retried with
    /// kube-runtime's backoff.
    Api(ApiFailure),
}

impl WatchTrouble {
    pub fn of(error: &watcher::Error) -> WatchTrouble {
        match error {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => match e {
                kube::Error::Api(status) => WatchTrouble::of_status(status),
                other => WatchTrouble::Api(ApiFailure::of(other)),
            },
            watcher::Error::WatchError(status) => WatchTrouble::of_status(status),
            other => WatchTrouble::Api(ApiFailure::Other(other.to_string())),
        }
    }

    fn of_status(status: &kube::core::Status) -> WatchTrouble {
        let too_large = status.message.contains("Too large resource version")
            || status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "ResourceVersionTooLarge"));
        match status.code {
            403 => WatchTrouble::Forbidden,
            410 => WatchTrouble::Expired,
            504 if too_large => WatchTrouble::HistoryRestarted,
            _ => WatchTrouble::Api(ApiFailure::of(&kube::Error::Api(Box::new(status.clone())))),
        }
    }
}

impl fmt::Display for WatchTrouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchTrouble::Forbidden => f.write_str("forbidden by RBAC"),
            WatchTrouble::Expired => f.write_str("the watch expired (410 Gone); listing again"),
            WatchTrouble::HistoryRestarted => f.write_str(
                "the API server no longer knows the version watched from (its history restarted); listing again",
            ),
            WatchTrouble::Api(failure) => write!(f, "{failure}; retrying"),
        }
    }
}

/// A cause is said again after this long at the soonest, however often it recurs.
pub const SAY_AGAIN: Duration = Duration::from_secs(300);

/// What the watchers said of their failures: each cause once per [`SAY_AGAIN`], whatever the
/// number of kinds and retries, and one line when every watch works again.
#[derive(Debug, Default)]
pub struct Outages {
    said: HashMap<WatchTrouble, Instant>,
    failing: HashSet<WatchScope>,
    /// A warning was said since the watches last all worked.
    unresolved: bool,
}

impl Outages {
    /// The warning to log for `scope` failing with `trouble`, unless it was said lately.
    pub fn failed(&mut self, scope: &WatchScope, trouble: &WatchTrouble, now: Instant) -> Option<String> {
        self.failing.insert(scope.clone());
        if self.said.get(trouble).is_some_and(|at| now.saturating_duration_since(*at) < SAY_AGAIN) {
            return None;
        }
        self.said.insert(trouble.clone(), now);
        self.unresolved = true;
        let place = place(scope.namespace.as_deref());
        Some(format!(
            "watching {}s {place}: {trouble} (said once for every kind, again in {} at the soonest)",
            scope.kind,
            humantime::format_duration(SAY_AGAIN)
        ))
    }

    /// The line to log when `scope` works again and with it every watch that failed.
    pub fn worked(&mut self, scope: &WatchScope) -> Option<String> {
        if !self.failing.remove(scope) || !self.failing.is_empty() || !self.unresolved {
            return None;
        }
        self.unresolved = false;
        Some("the API server answers every watch again".to_string())
    }
}

/// How one watcher ended.
enum Ended {
    Forbidden,
    /// A new list is needed: the watcher is started afresh.
    Relist,
    /// The stream ended (it does not, short of the process ending).
    Closed,
}

/// Keeps the store current for one scope. A 403 is reported once, the scope given up and its
/// workloads withdrawn, and tried again every `--rbac-recheck` (a grant given back shows without
/// a restart, and is said); a version the API server no longer has history for starts a new list;
/// other errors are retried with kube-runtime's default backoff, each cause said once
/// ([`Outages`]). The initial list waits for its turn; a failing one gives its turn up before
/// retrying.
pub async fn watch_scope(client: kube::Client, scope: WatchScope, store: SharedStore, lists: Lists) {
    let place = place(scope.namespace.as_deref());
    // Said when it was forbidden, until a list works again.
    let mut forbidden = false;
    // Whether a list of the scope has ended: the next is a relist, and waits for every turn.
    let mut listed = false;
    loop {
        match watch_once(&client, &scope, &store, &lists, &mut forbidden, &mut listed).await {
            Ended::Relist => continue,
            Ended::Closed => return,
            Ended::Forbidden => {
                if !forbidden {
                    forbidden = true;
                    tracing::warn!(
                        kind = %scope.kind,
                        "cannot watch {}s {place}: forbidden by RBAC; they are skipped and no longer reported \
                         (tried again every {})",
                        scope.kind,
                        humantime::format_duration(lists.rbac_recheck)
                    );
                }
                write(&store).apply(Update::GaveUp(scope.clone()));
                tokio::time::sleep(lists.rbac_recheck).await;
            }
        }
    }
}

async fn watch_once(
    client: &kube::Client,
    scope: &WatchScope,
    store: &SharedStore,
    lists: &Lists,
    forbidden: &mut bool,
    listed: &mut bool,
) -> Ended {
    let mut turn = lists.turn(!*listed).await;
    let config = watcher::Config::default().page_size(lists.page_size);
    let watch = watcher::watcher(api(client, scope), config).default_backoff().boxed();
    let mut events = Coalesced::new(watch, coalesce::PAUSE);
    let apply = |update: Update| write(store).apply(update);
    while let Some(event) = events.next().await {
        if matches!(event, Ok(Event::InitDone) | Err(_)) {
            drop(turn.take());
        }
        match event {
            // A relist (after a 410) waits for every turn: a forced relist reaches every watch
            // at once, and side by side their lists would each hold a page and its decode
            // (docs/architecture.md, "At Kubernetes' limits"). The watcher asks for the first
            // page only when polled again, so nothing is read before the turn.
            Ok(Event::Init) => {
                events.unsettle();
                if turn.is_none() {
                    turn = lists.turn(!*listed).await;
                }
            }
            Ok(Event::InitDone) => {
                *listed = true;
                events.settle();
            }
            _ => {}
        }
        if matches!(event, Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) {
            if let Some(line) = lists.outages().worked(scope) {
                tracing::info!("{line}");
            }
        }
        match event {
            Ok(Event::Init) => apply(Update::Init(scope.clone())),
            Ok(Event::InitApply(object)) => {
                if let Some(record) = read(scope.kind, &object) {
                    apply(Update::InitRecord(scope.clone(), record));
                }
                match running_of(scope.kind, &object) {
                    Running::Pod(pod, Some(running)) => apply(Update::InitPod(scope.clone(), pod, running)),
                    Running::Owned(owned, Some(owner)) => apply(Update::InitOwner(scope.clone(), owned, owner)),
                    _ => {}
                }
            }
            Ok(Event::InitDone) => {
                apply(Update::InitDone(scope.clone()));
                if std::mem::take(forbidden) {
                    let place = place(scope.namespace.as_deref());
                    tracing::info!(kind = %scope.kind, "{}s {place} may be watched again: reported again", scope.kind);
                }
            }
            Ok(Event::Apply(object)) => {
                match read(scope.kind, &object) {
                    Some(record) => apply(Update::Upsert(record)),
                    None => apply(Update::Remove(identity(scope.kind, &object))),
                }
                match running_of(scope.kind, &object) {
                    Running::Pod(pod, running) => apply(Update::Pod(scope.clone(), pod, running)),
                    Running::Owned(owned, owner) => apply(Update::Owner(scope.clone(), owned, owner)),
                    Running::Nothing => {}
                }
            }
            Ok(Event::Delete(object)) => {
                apply(Update::Remove(identity(scope.kind, &object)));
                match running_of(scope.kind, &object) {
                    Running::Pod(pod, _) => apply(Update::Pod(scope.clone(), pod, None)),
                    Running::Owned(owned, _) => apply(Update::Owner(scope.clone(), owned, None)),
                    Running::Nothing => {}
                }
            }
            Err(e) => {
                let trouble = WatchTrouble::of(&e);
                tracing::debug!(kind = %scope.kind, error = %e, "watch failed");
                if trouble == WatchTrouble::Forbidden {
                    return Ended::Forbidden;
                }
                if let Some(line) = lists.outages().failed(scope, &trouble, Instant::now()) {
                    tracing::warn!(kind = %scope.kind, "{line}");
                }
                if trouble == WatchTrouble::HistoryRestarted {
                    return Ended::Relist;
                }
            }
        }
    }
    Ended::Closed
}

/// What an object says of what runs: a Pod's digests, a ReplicaSet's or Job's owner.
pub enum Running {
    Pod(ObjectKey, Option<RunningPod>),
    Owned(ObjectKey, Option<OwnedBy>),
    Nothing,
}

pub fn running_of(kind: WorkloadKind, object: &SlimObject) -> Running {
    let key = ObjectKey::of(kind, namespace_of(object), object.metadata.name.as_deref().unwrap_or_default());
    match kind {
        WorkloadKind::Pod => Running::Pod(key, running_pod(object, key)),
        WorkloadKind::ReplicaSet | WorkloadKind::Job => Running::Owned(key, controller_of(object)),
        _ => Running::Nothing,
    }
}

fn read(kind: WorkloadKind, object: &SlimObject) -> Option<WorkloadRecord> {
    match record_from_object(kind, object) {
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
    let apply = |update: Update| write(&store).apply(update);
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

/// A cluster as pullcheck reaches it.
#[derive(Clone)]
pub struct Connection {
    pub client: kube::Client,
    /// The kubeconfig context's namespace.
    pub namespace: String,
    /// The API server's URL, to name it when it cannot be reached.
    pub server: String,
    /// Objects per list page.
    pub page_size: u32,
}

/// No answer for this long on a connection is a dead API server: the request fails and is
/// retried. kube sets no read timeout, so a list that never answered held `check` and every
/// watcher's list turn for good. Longer than the watches' own server-side timeout (290 s, after
/// which the API server ends them) and than any list worth waiting for (docs/operations.md,
/// "API server faults").
pub const READ_TIMEOUT: Duration = Duration::from_secs(330);

/// A client for the cluster of a kubeconfig (`kubeconfig`, else $KUBECONFIG or ~/.kube/config,
/// else the in-cluster service account) and context, with that context's namespace and the API
/// server's URL. A kubeconfig `exec` credential plugin runs while the client is built and gets
/// `exec_timeout` to print its credential.
pub async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    exec_timeout: Duration,
) -> crate::Result<Connection> {
    use crate::Error;
    let options = kube::config::KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let mut config = match kubeconfig {
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
    config.read_timeout = Some(READ_TIMEOUT);
    // From when a request is sent, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    let namespace = config.default_namespace.clone();
    let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
    let client = build_client(config, exec_timeout).await?;
    Ok(Connection { client, namespace, server, page_size: DEFAULT_PAGE_SIZE })
}

/// The client, built off the runtime: building it runs an `exec` credential plugin and waits
/// for it with no bound of its own, so a plugin that hangs would hang pullcheck (and, on the
/// runtime's blocking pool, keep it from ever shutting down). On a thread of its own it is left
/// behind when `exec_timeout` passes.
async fn build_client(config: kube::Config, exec_timeout: Duration) -> crate::Result<kube::Client> {
    use crate::Error;
    let plugin = config.auth_info.exec.as_ref().and_then(|e| e.command.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The client's buffer task is spawned on this runtime.
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("kube-client".into())
        .spawn(move || {
            let _entered = runtime.enter();
            let _ = tx.send(kube::Client::try_from(config));
        })
        .map_err(|e| Error::Kubeconfig(format!("cannot start building the client: {e}")))?;
    let built = tokio::time::timeout(exec_timeout, rx).await;
    let plugin_name = || plugin.clone().unwrap_or_default();
    match built {
        Ok(Ok(Ok(client))) => Ok(client),
        Ok(Ok(Err(e))) if plugin.is_some() => {
            // The parser's first line says where the output went wrong; the lines after quote the
            // output, which may hold a credential.
            let error = e.to_string();
            let first = error.lines().next().unwrap_or_default();
            Err(Error::Kubeconfig(format!(
                "the exec credential plugin `{}` gave no credential: {first}",
                plugin_name()
            )))
        }
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_)) => Err(Error::Kubeconfig("building the client failed".into())),
        Err(_) => Err(Error::Kubeconfig(format!(
            "the exec credential plugin `{}` printed no credential within {} (--kube-exec-timeout)",
            plugin_name(),
            humantime::format_duration(exec_timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: WorkloadKind, namespace: Option<&str>, cause: ApiFailure) -> ListFailure {
        ListFailure { kind, namespace: namespace.map(str::to_string), cause }
    }

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": code, "reason": reason, "message": message}))
                .expect("a Status");
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn causes_in_one_line_each() {
        assert_eq!(ApiFailure::of(&status(401, "Unauthorized", "Unauthorized")), ApiFailure::Unauthorized);
        assert_eq!(ApiFailure::of(&status(403, "Forbidden", "deployments.apps is forbidden")), ApiFailure::Forbidden);
        assert_eq!(
            ApiFailure::of(&status(500, "InternalError", "etcdserver: request timed out")),
            ApiFailure::Other("the API server answered 500 InternalError: etcdserver: request timed out".into())
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let wrapped: Box<dyn std::error::Error + Send + Sync> = Box::new(refused);
        assert_eq!(
            ApiFailure::of(&kube::Error::Service(wrapped)),
            ApiFailure::Unreachable("connection refused".into())
        );
        assert!(ApiFailure::Unauthorized.is_connection() && !ApiFailure::Forbidden.is_connection());
    }

    #[test]
    fn identical_causes_are_grouped_across_kinds() {
        let server = "https://127.0.0.1:6443";
        let unreachable = ApiFailure::Unreachable("connection refused".into());
        let every: Vec<ListFailure> = CLUSTER_KINDS.iter().map(|k| failure(*k, None, unreachable.clone())).collect();
        assert_eq!(failure_lines(&every, server), ["cannot reach https://127.0.0.1:6443: connection refused"]);

        let unauthorized: Vec<ListFailure> =
            CLUSTER_KINDS.iter().map(|k| failure(*k, None, ApiFailure::Unauthorized)).collect();
        assert_eq!(failure_lines(&unauthorized, server), ["the API server refused the credentials (401)"]);

        let forbidden: Vec<ListFailure> =
            CLUSTER_KINDS.iter().map(|k| failure(*k, None, ApiFailure::Forbidden)).collect();
        assert_eq!(
            failure_lines(&forbidden, server),
            [
                "forbidden by RBAC: list deployments, statefulsets, daemonsets, replicasets, replicationcontrollers, jobs, cronjobs, pods cluster-wide"
            ]
        );

        let error = ApiFailure::Other("the API server answered 500 InternalError".into());
        let mixed = [
            failure(WorkloadKind::Deployment, Some("a"), ApiFailure::Forbidden),
            failure(WorkloadKind::Job, Some("a"), ApiFailure::Forbidden),
            failure(WorkloadKind::Deployment, Some("b"), ApiFailure::Forbidden),
            failure(WorkloadKind::Job, Some("b"), ApiFailure::Forbidden),
            failure(WorkloadKind::Pod, Some("c"), ApiFailure::Forbidden),
            failure(WorkloadKind::CronJob, Some("a"), error.clone()),
            failure(WorkloadKind::StatefulSet, Some("a"), error),
        ];
        assert_eq!(
            failure_lines(&mixed, server),
            [
                "forbidden by RBAC: list deployments, jobs in a, b",
                "forbidden by RBAC: list pods in c",
                "cannot list statefulsets, cronjobs in a: the API server answered 500 InternalError",
            ]
        );
        assert!(failure_lines(&[], server).is_empty());
    }

    fn status_value(value: serde_json::Value) -> kube::core::Status {
        serde_json::from_value(value).expect("a Status")
    }

    #[test]
    fn watch_troubles_by_what_the_api_server_said() {
        let gone =
            status_value(serde_json::json!({"code": 410, "reason": "Expired", "message": "too old resource version"}));
        assert_eq!(WatchTrouble::of(&watcher::Error::WatchError(Box::new(gone))), WatchTrouble::Expired);
        let too_large = status_value(serde_json::json!({"code": 504, "reason": "Timeout",
            "message": "Too large resource version: 40, current: 12",
            "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]}}));
        assert_eq!(WatchTrouble::of(&watcher::Error::WatchError(Box::new(too_large))), WatchTrouble::HistoryRestarted);
        let timeout =
            status_value(serde_json::json!({"code": 504, "reason": "Timeout", "message": "request timed out"}));
        assert!(matches!(WatchTrouble::of(&watcher::Error::WatchError(Box::new(timeout))), WatchTrouble::Api(_)));
        assert_eq!(
            WatchTrouble::of(&watcher::Error::WatchStartFailed(status(403, "Forbidden", "no"))),
            WatchTrouble::Forbidden
        );
        assert_eq!(
            WatchTrouble::of(&watcher::Error::InitialListFailed(status(500, "InternalError", "etcd"))),
            WatchTrouble::Api(ApiFailure::Other("the API server answered 500 InternalError: etcd".into()))
        );
    }

    #[test]
    fn a_cause_is_said_once_per_while_whatever_the_kinds_and_retries() {
        let scope = |kind| WatchScope { kind, namespace: None };
        let refused = WatchTrouble::Api(ApiFailure::Unreachable("connection refused".into()));
        let start = Instant::now();
        let mut outages = Outages::default();
        let first = outages.failed(&scope(WorkloadKind::Deployment), &refused, start);
        assert_eq!(
            first.as_deref(),
            Some(
                "watching Deployments cluster-wide: cannot reach the API server: connection refused; retrying \
                 (said once for every kind, again in 5m at the soonest)"
            )
        );
        for kind in CLUSTER_KINDS {
            assert_eq!(outages.failed(&scope(*kind), &refused, start + Duration::from_secs(10)), None);
        }
        assert!(outages.failed(&scope(WorkloadKind::Pod), &WatchTrouble::Expired, start).is_some(), "another cause");
        // Works again only when every failing scope does, and says so once.
        for kind in &CLUSTER_KINDS[..CLUSTER_KINDS.len() - 1] {
            assert_eq!(outages.worked(&scope(*kind)), None);
        }
        assert_eq!(
            outages.worked(&scope(WorkloadKind::Pod)).as_deref(),
            Some("the API server answers every watch again")
        );
        assert_eq!(outages.worked(&scope(WorkloadKind::Pod)), None);
        // The same cause within the while: said no more, and nothing to recover from.
        assert_eq!(outages.failed(&scope(WorkloadKind::Job), &refused, start + Duration::from_secs(60)), None);
        assert_eq!(outages.worked(&scope(WorkloadKind::Job)), None);
        assert!(outages.failed(&scope(WorkloadKind::Job), &refused, start + SAY_AGAIN).is_some(), "said again");
    }

    #[test]
    fn each_kind_keeps_its_warning() {
        let warning = failure(WorkloadKind::StatefulSet, None, ApiFailure::Unauthorized).warning();
        assert_eq!(warning.kind, WarningKind::Unauthorized);
        assert_eq!(
            warning.message,
            "cannot list StatefulSets cluster-wide: the API server refused the credentials (401); StatefulSets are skipped"
        );
        let forbidden = failure(WorkloadKind::Job, Some("shop"), ApiFailure::Forbidden).warning();
        assert_eq!(forbidden.message, "cannot list Jobs in shop: forbidden by RBAC; Jobs are skipped");
    }

    #[test]
    fn a_missing_cluster_uid_names_its_cause_and_fix() {
        let forbidden = cluster_uid_unknown(&ApiFailure::Forbidden);
        assert!(forbidden.contains("kube-system: forbidden by RBAC"), "{forbidden}");
        assert!(
            forbidden.contains("resourceNames [kube-system]") && forbidden.contains("--cluster-uid"),
            "{forbidden}"
        );
        let down = cluster_uid_unknown(&ApiFailure::Unreachable("connection refused".into()));
        assert!(down.contains("cannot reach the API server: connection refused"), "{down}");
        assert!(!down.contains("resourceNames"), "RBAC is not the fix when the API server is down: {down}");
        assert!(down.contains("--cluster-uid"), "{down}");
    }
}
