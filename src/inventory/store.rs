//! The live inventory: workload records kept current from watch events. A relist applies what
//! it lists as it comes and, when it ends, removes from the watcher's scope what it did not
//! list, so a dropped watch or a 410 Gone neither loses nor duplicates a workload.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::key_table::{KeyTable, Relist};
use super::running::{Digest, ObjectKey, OwnedBy, Running, RunningPod, running_digests};
use super::selection::Selection;
use super::{ByWorkload, WorkloadKind, WorkloadRecord, WorkloadRef};
use crate::name::{Interner, Name};

/// What one watcher covers: a kind, in one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchScope {
    pub kind: WorkloadKind,
    pub namespace: Option<String>,
}

impl WatchScope {
    fn covers(&self, workload: &WorkloadRef) -> bool {
        workload.kind == self.kind && self.namespace.as_ref().is_none_or(|ns| workload.namespace == *ns)
    }
}

#[derive(Clone, Debug)]
pub enum Update {
    /// A (re)list starts: records of the scope arrive again until `InitDone`.
    Init(WatchScope),
    InitRecord(WatchScope, WorkloadRecord),
    InitDone(WatchScope),
    Upsert(WorkloadRecord),
    Remove(WorkloadRef),
    /// What a pod runs (`None`: gone, or nothing reported yet); during a relist, as `InitPod`.
    Pod(WatchScope, ObjectKey, Option<RunningPod>),
    InitPod(WatchScope, ObjectKey, RunningPod),
    /// Whose a ReplicaSet's or Job's pods are (`None`: gone, or no controller owns it); during a
    /// relist, as `InitOwner`.
    Owner(WatchScope, ObjectKey, Option<OwnedBy>),
    InitOwner(WatchScope, ObjectKey, OwnedBy),
    /// The scope can no longer be read (403): readiness must not wait for it, and what it held is
    /// withdrawn — a workload nobody can see any more is not reported as current
    /// (docs/operations.md, "API server faults").
    GaveUp(WatchScope),
    /// A namespace's labels (`None`: deleted).
    Namespace(String, Option<BTreeMap<String, String>>),
    NamespacesSynced,
}

#[derive(Debug, Default)]
pub struct Store {
    /// Shared: the series `run` keeps are built on these records, not on copies of their
    /// names; and the table's empty slots cost a pointer, not a record.
    records: HashSet<ByWorkload<Arc<WorkloadRecord>>>,
    /// The lists under way, by scope.
    listings: HashMap<WatchScope, Listing>,
    synced: HashSet<WatchScope>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    namespaces_synced: bool,
    /// Bumped on every change that matters (never on an update that changes no record, such
    /// as a Deployment's status), so consumers can tell whether to look again.
    pub generation: u64,
    /// Workloads added, changed or removed since [`Store::take_changes`].
    changed: HashSet<WorkloadRef>,
    /// A change that concerns every workload (namespace labels, for the selector).
    changed_all: bool,
    /// What pods run, by the scope that watches them (a relist replaces its scope's table).
    pods: HashMap<WatchScope, KeyTable<RunningPod>>,
    /// Whose pods the ReplicaSets and Jobs own are, by the scope that watches them.
    owners: HashMap<WatchScope, KeyTable<OwnedBy>>,
    /// Bumped when what runs changed (a pod's digests, an owner), apart from the records.
    pub running_generation: u64,
    /// Every name held here, once: namespaces, images, container names.
    names: Interner,
    /// Pods' container lists, once per distinct list (a template's pods share one).
    pod_containers: Interner<[(Name, Digest)]>,
}

/// What changed since the last look.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Every workload must be looked at again.
    pub all: bool,
    pub workloads: Vec<WorkloadRef>,
}

pub type SharedStore = Arc<RwLock<Store>>;

/// The store to read; a panic elsewhere while holding it leaves the data usable.
pub fn read(store: &SharedStore) -> std::sync::RwLockReadGuard<'_, Store> {
    store.read().unwrap_or_else(|p| p.into_inner())
}

/// The store to change.
pub fn write(store: &SharedStore) -> std::sync::RwLockWriteGuard<'_, Store> {
    store.write().unwrap_or_else(|p| p.into_inner())
}

/// A list under way for one scope. What it lists is applied as it comes (an equal record or
/// pod changes nothing) and only what it named is remembered, so that a relist holds the names
/// it saw, not a second copy of the scope beside the held one: that copy was the peak of the
/// forced relists at 150,000 pods (docs/architecture.md, "At Kubernetes' limits").
#[derive(Debug, Default)]
struct Listing {
    workloads: Vec<WorkloadRef>,
    pods: Relist<RunningPod>,
    owners: Relist<OwnedBy>,
}

impl Store {
    pub fn apply(&mut self, update: Update) {
        match update {
            // A list that starts again (its watcher failed in the middle) forgets what the
            // failed one named: what only that one listed goes when this one ends.
            Update::Init(scope) => {
                self.listings.insert(scope, Listing::default());
            }
            Update::InitRecord(scope, record) => {
                let workload = self.upsert(record);
                self.listings.entry(scope).or_default().workloads.push(workload);
            }
            Update::InitPod(scope, pod, running) => {
                let listing = self.listings.entry(scope.clone()).or_default();
                let pods = self.pods.entry(scope).or_default();
                let (names, lists) = (&mut self.names, &mut self.pod_containers);
                listing.pods.apply(pods, pod, running, |running| running.shared(names, lists));
            }
            Update::InitOwner(scope, owned, owner) => {
                let listing = self.listings.entry(scope.clone()).or_default();
                listing.owners.apply(self.owners.entry(scope).or_default(), owned, owner, |owner| owner);
            }
            Update::Pod(scope, pod, running) => {
                let changed = match running {
                    Some(running) => self.insert_pod(scope, pod, running),
                    None => self.pods.get_mut(&scope).is_some_and(|pods| pods.remove(pod).is_some()),
                };
                self.running_generation += u64::from(changed);
            }
            Update::Owner(scope, owned, owned_by) => {
                let owners = self.owners.entry(scope).or_default();
                let changed = match owned_by {
                    Some(owned_by) => owners.insert(owned, owned_by) != Some(owned_by),
                    None => owners.remove(owned).is_some(),
                };
                self.running_generation += u64::from(changed);
            }
            Update::InitDone(scope) => {
                let Listing { mut workloads, pods, owners } = self.listings.remove(&scope).unwrap_or_default();
                let running_changed = match scope.kind {
                    WorkloadKind::Pod => pods.finish(self.pods.entry(scope.clone()).or_default()),
                    WorkloadKind::ReplicaSet | WorkloadKind::Job => {
                        owners.finish(self.owners.entry(scope.clone()).or_default())
                    }
                    _ => false,
                };
                self.running_generation += u64::from(running_changed);
                workloads.sort_unstable();
                let listed = |w: &WorkloadRef| workloads.binary_search(w).is_ok();
                let gone: Vec<WorkloadRef> = self
                    .records
                    .iter()
                    .map(|r| &r.0.workload)
                    .filter(|w| scope.covers(w) && !listed(w))
                    .cloned()
                    .collect();
                for workload in gone {
                    self.records.remove(&workload);
                    self.mark(workload);
                }
                if self.synced.insert(scope) {
                    self.generation += 1;
                }
            }
            Update::Upsert(record) => {
                self.upsert(record);
            }
            Update::Remove(workload) => {
                if self.records.remove(&workload) {
                    self.mark(workload);
                }
            }
            Update::GaveUp(scope) => {
                self.withdraw(&scope);
                if self.synced.insert(scope) {
                    self.generation += 1;
                }
            }
            Update::Namespace(name, labels) => {
                let before = match labels {
                    Some(labels) => self.namespaces.insert(name.clone(), labels.clone()).filter(|old| *old == labels),
                    None => self.namespaces.remove(&name).filter(|_| false),
                };
                if before.is_none() {
                    self.changed_all = true;
                    self.generation += 1;
                }
            }
            Update::NamespacesSynced => {
                if !self.namespaces_synced {
                    self.namespaces_synced = true;
                    self.changed_all = true;
                    self.generation += 1;
                }
            }
        }
    }

    /// Forgets everything `scope` brought: its records, its pods and owners, a relist under way.
    fn withdraw(&mut self, scope: &WatchScope) {
        self.listings.remove(scope);
        let gone: Vec<WorkloadRef> =
            self.records.iter().map(|r| &r.0.workload).filter(|w| scope.covers(w)).cloned().collect();
        for workload in gone {
            self.records.remove(&workload);
            self.mark(workload);
        }
        let running = self.pods.remove(scope).is_some_and(|t| !t.is_empty())
            | self.owners.remove(scope).is_some_and(|t| !t.is_empty());
        self.running_generation += u64::from(running);
    }

    /// Holds what a pod runs, its container list shared; says whether anything changed.
    fn insert_pod(&mut self, scope: WatchScope, pod: ObjectKey, running: RunningPod) -> bool {
        if self.pods.get(&scope).and_then(|pods| pods.get(pod)) == Some(&running) {
            return false;
        }
        let running = self.shared(running);
        self.pods.entry(scope).or_default().insert(pod, running);
        true
    }

    /// The pod with its container list as held here (one allocation for every pod of a
    /// template), its names shared.
    fn shared(&mut self, running: RunningPod) -> RunningPod {
        running.shared(&mut self.names, &mut self.pod_containers)
    }

    /// What every workload container's pods run.
    pub fn running(&self) -> Running {
        let pods = self.pods.values().flat_map(KeyTable::values);
        running_digests(pods, |owned| self.owners.values().find_map(|owners| owners.get(owned)).copied())
    }

    /// Inserts or replaces a record; a record equal to the one held changes nothing. The
    /// workload, its names as held here.
    fn upsert(&mut self, record: WorkloadRecord) -> WorkloadRef {
        if let Some(held) = self.records.get(&record.workload).filter(|held| *held.0 == record) {
            return held.0.workload.clone();
        }
        let record = record.interned(&mut self.names);
        let workload = record.workload.clone();
        self.records.replace(ByWorkload(Arc::new(record)));
        self.mark(workload.clone());
        workload
    }

    fn mark(&mut self, workload: WorkloadRef) {
        self.changed.insert(workload);
        self.generation += 1;
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        // Taken, not drained: the initial sync marks every workload, and a drained set would
        // keep that table for good.
        let mut workloads: Vec<WorkloadRef> = std::mem::take(&mut self.changed).into_iter().collect();
        workloads.sort();
        Changes { all: std::mem::take(&mut self.changed_all), workloads }
    }

    /// Every record held, sorted by workload: shared, not copied (a list of 52,000 workloads'
    /// names was 2.1 MiB of a refresh's peak, the records' pointers are 0.4 MiB).
    pub fn records(&self) -> Vec<Arc<WorkloadRecord>> {
        let mut records: Vec<Arc<WorkloadRecord>> = self.records.iter().map(|r| r.0.clone()).collect();
        records.sort_unstable_by(|a, b| a.workload.cmp(&b.workload));
        records
    }

    /// A workload's record, when it exists and the selection admits it.
    pub fn selected_record(&self, workload: &WorkloadRef, selection: &Selection) -> Option<Arc<WorkloadRecord>> {
        let record = &self.records.get(workload)?.0;
        self.admits(record, selection).then(|| record.clone())
    }

    fn admits(&self, record: &WorkloadRecord, selection: &Selection) -> bool {
        selection.admits(record, self.namespaces.get(record.workload.namespace.as_str()))
    }

    /// Every scope listed once (or given up on), and namespaces too when a selector needs them.
    pub fn is_synced(&self, scopes: &[WatchScope], needs_namespaces: bool) -> bool {
        scopes.iter().all(|s| self.synced.contains(s)) && (!needs_namespaces || self.namespaces_synced)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records the selection admits, sorted by workload.
    pub fn selected(&self, selection: &Selection) -> Vec<Arc<WorkloadRecord>> {
        let mut records = self.records();
        records.retain(|record| self.admits(record, selection));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::selector::LabelSelector;
    use crate::inventory::{ContainerRef, ContainerRole, ContainerSpec};

    fn record(kind: WorkloadKind, ns: &str, name: &str, image: &str) -> WorkloadRecord {
        WorkloadRecord {
            workload: WorkloadRef { kind, namespace: ns.into(), name: name.into() },
            containers: Box::new([ContainerSpec {
                name: "c".into(),
                role: ContainerRole::Container,
                image: image.into(),
            }]),
            pull_secrets: Box::default(),
            service_account: "default".into(),
            replicas: Some(1),
            suspended: false,
            platforms: None,
        }
    }

    fn names(store: &Store) -> Vec<String> {
        store.selected(&Selection::default()).iter().map(|r| r.workload.name.to_string()).collect()
    }

    #[test]
    fn a_scope_given_up_withdraws_its_records_and_no_other() {
        let daemonsets = WatchScope { kind: WorkloadKind::DaemonSet, namespace: None };
        let mut store = Store::default();
        store.apply(Update::Upsert(record(WorkloadKind::DaemonSet, "a", "agent", "x")));
        store.apply(Update::Upsert(record(WorkloadKind::Deployment, "a", "web", "y")));
        store.take_changes();
        store.apply(Update::GaveUp(daemonsets.clone()));
        assert_eq!(names(&store), ["web"].map(String::from).to_vec());
        let agent = WorkloadRef { kind: WorkloadKind::DaemonSet, namespace: "a".into(), name: "agent".into() };
        assert_eq!(store.take_changes().workloads, vec![agent], "the withdrawn workload is a change");
        assert!(store.is_synced(&[daemonsets], false), "readiness does not wait for it");
    }

    #[test]
    fn relist_replaces_only_its_scope() {
        let deployments = WatchScope { kind: WorkloadKind::Deployment, namespace: None };
        let mut store = Store::default();
        store.apply(Update::Init(deployments.clone()));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "web", "x")));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "gone", "x")));
        assert!(!store.is_synced(std::slice::from_ref(&deployments), false), "not synced before the list completes");
        store.apply(Update::InitDone(deployments.clone()));
        store.apply(Update::Upsert(record(WorkloadKind::Pod, "a", "pod", "y")));
        assert_eq!(names(&store), ["gone", "web", "pod"].map(String::from).to_vec());
        // A relist after a 410 no longer has `gone`: it goes; the pod of another scope stays.
        store.apply(Update::Init(deployments.clone()));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "web", "x2")));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "web", "x3")));
        store.apply(Update::InitDone(deployments.clone()));
        assert_eq!(names(&store), ["web", "pod"].map(String::from).to_vec());
        let images: Vec<String> =
            store.selected(&Selection::default()).iter().map(|r| r.containers[0].image.to_string()).collect();
        assert_eq!(images, ["x3", "y"], "of a workload listed twice, the later copy");
        assert!(store.is_synced(&[deployments], false));
    }

    #[test]
    fn only_real_changes_move_the_generation() {
        let mut store = Store::default();
        let web = record(WorkloadKind::Deployment, "a", "web", "x");
        store.apply(Update::Upsert(web.clone()));
        let changes = store.take_changes();
        assert_eq!(changes.workloads, vec![web.workload.clone()]);
        let generation = store.generation;
        // A status-only update reduces to the same record: nothing moves.
        for _ in 0..100 {
            store.apply(Update::Upsert(web.clone()));
        }
        assert_eq!(store.generation, generation);
        assert_eq!(store.take_changes(), Changes::default());
        store.apply(Update::Upsert(record(WorkloadKind::Deployment, "a", "web", "y")));
        assert_eq!(store.generation, generation + 1);
        store.apply(Update::Remove(web.workload.clone()));
        store.apply(Update::Remove(web.workload.clone()));
        assert_eq!(store.generation, generation + 2, "removing what is gone changes nothing");
        assert_eq!(store.take_changes().workloads, vec![web.workload]);
        store.apply(Update::Namespace("a".into(), Some(BTreeMap::new())));
        store.apply(Update::Namespace("a".into(), Some(BTreeMap::new())));
        assert_eq!(store.take_changes(), Changes { all: true, workloads: vec![] });
    }

    #[test]
    fn pods_of_one_template_share_their_container_list_and_map_to_their_workload() {
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).expect("a digest");
        let replica_set = ObjectKey::of(WorkloadKind::ReplicaSet, "ns", "web-5d8");
        let pod = |name: &str| {
            // As a watch event brings it: every string its own allocation.
            let running = RunningPod {
                owner: replica_set,
                containers: Arc::from(vec![(Name::from(String::from("app")), digest)]),
            };
            (ObjectKey::of(WorkloadKind::Pod, "ns", name), running)
        };
        let pods = WatchScope { kind: WorkloadKind::Pod, namespace: None };
        let replica_sets = WatchScope { kind: WorkloadKind::ReplicaSet, namespace: None };
        let mut store = Store::default();
        let ((a, pod_a), (b, pod_b)) = (pod("web-5d8-a"), pod("web-5d8-b"));
        store.apply(Update::Pod(pods.clone(), a, Some(pod_a.clone())));
        let generation = store.running_generation;
        store.apply(Update::Pod(pods.clone(), a, Some(pod_a)));
        assert_eq!(store.running_generation, generation, "the same pod again changes nothing");
        store.apply(Update::Pod(pods.clone(), b, Some(pod_b)));
        let held: Vec<&RunningPod> = store.pods.values().flat_map(KeyTable::values).collect();
        assert!(Arc::ptr_eq(&held[0].containers, &held[1].containers), "one container list for both pods");
        let web = ContainerRef {
            workload: WorkloadRef { kind: WorkloadKind::Deployment, namespace: "ns".into(), name: "web".into() },
            container: "app".into(),
        };
        let solo = ContainerRef {
            workload: WorkloadRef { kind: WorkloadKind::ReplicaSet, namespace: "ns".into(), name: "web-5d8".into() },
            container: "app".into(),
        };
        assert_eq!(store.running().of(&solo), [digest], "before its owner is known, the ReplicaSet");
        let deployment = ObjectKey::of_workload(&web.workload);
        store.apply(Update::Owner(replica_sets.clone(), replica_set, Some(OwnedBy::Workload(deployment))));
        assert_eq!(store.running().of(&web), [digest], "through the ReplicaSet to the Deployment");
        assert!(store.running().of(&solo).is_empty());
        store.apply(Update::Owner(replica_sets.clone(), replica_set, Some(OwnedBy::Workload(deployment))));
        assert_eq!(store.running_generation, generation + 2, "the same owner again changes nothing");
        store.apply(Update::Owner(replica_sets, replica_set, Some(OwnedBy::Untracked)));
        assert_eq!(store.running().pods(), 0, "a ReplicaSet an untracked kind owns runs for no workload");
        store.apply(Update::Pod(pods.clone(), a, None));
        store.apply(Update::Pod(pods, b, None));
        assert_eq!(store.pods.values().map(KeyTable::len).sum::<usize>(), 0);
        assert_eq!(store.running_generation, generation + 5);
    }

    #[test]
    fn a_relist_of_pods_replaces_only_its_namespace() {
        let digest = Digest::parse(&format!("sha256:{}", "b".repeat(64))).expect("a digest");
        let pod = |ns: &str, name: &str| {
            let key = ObjectKey::of(WorkloadKind::Pod, ns, name);
            (key, RunningPod { owner: key, containers: Arc::from(vec![(Name::from("app"), digest)]) })
        };
        let scope = |ns: &str| WatchScope { kind: WorkloadKind::Pod, namespace: Some(ns.into()) };
        let mut store = Store::default();
        for (ns, name) in [("a", "old"), ("a", "kept"), ("b", "other")] {
            let (key, running) = pod(ns, name);
            store.apply(Update::Pod(scope(ns), key, Some(running)));
        }
        store.apply(Update::Init(scope("a")));
        for (ns, name) in [("a", "kept"), ("a", "new")] {
            let (key, running) = pod(ns, name);
            store.apply(Update::InitPod(scope("a"), key, running));
        }
        let generation = store.running_generation;
        store.apply(Update::InitDone(scope("a")));
        assert_eq!(store.running_generation, generation + 1);
        let running = store.running();
        let runs = |ns: &str, name: &str| {
            let pod = ContainerRef {
                workload: WorkloadRef { kind: WorkloadKind::Pod, namespace: ns.into(), name: name.into() },
                container: "app".into(),
            };
            !running.of(&pod).is_empty()
        };
        assert!(runs("a", "kept") && runs("a", "new") && runs("b", "other"));
        assert!(!runs("a", "old"), "gone from the relist");
        store.apply(Update::Init(scope("a")));
        for (ns, name) in [("a", "kept"), ("a", "new")] {
            let (key, running) = pod(ns, name);
            store.apply(Update::InitPod(scope("a"), key, running));
        }
        store.apply(Update::InitDone(scope("a")));
        assert_eq!(store.running_generation, generation + 1, "the same relist again changes nothing");
    }

    #[test]
    fn selection_by_namespace_labels() {
        let mut store = Store::default();
        store.apply(Update::Upsert(record(WorkloadKind::Pod, "team-a", "p1", "x")));
        store.apply(Update::Upsert(record(WorkloadKind::Pod, "team-b", "p2", "x")));
        store.apply(Update::Namespace("team-a".into(), Some([("team".to_string(), "a".to_string())].into())));
        let selection = Selection {
            namespace_selector: LabelSelector::parse("team in (a)").expect("valid"),
            ..Selection::default()
        };
        let selected: Vec<String> = store.selected(&selection).iter().map(|r| r.workload.name.to_string()).collect();
        assert_eq!(selected, ["p1"]);
        let excluded = Selection { exclude_namespaces: vec!["team-a".into()], ..Selection::default() };
        assert_eq!(store.selected(&excluded).len(), 1);
    }
}
