//! The live inventory: workload records kept current from watch events. Relists replace a
//! watcher's whole scope at once, so a dropped watch or a 410 Gone neither loses nor duplicates
//! a workload.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::selection::Selection;
use super::{WorkloadKind, WorkloadRecord, WorkloadRef};

/// What one watcher covers: a kind, in one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchScope {
    pub kind: WorkloadKind,
    pub namespace: Option<String>,
}

impl WatchScope {
    fn covers(&self, workload: &WorkloadRef) -> bool {
        workload.kind == self.kind && self.namespace.as_ref().is_none_or(|ns| *ns == workload.namespace)
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
    /// The scope will never sync (403): readiness must not wait for it.
    GaveUp(WatchScope),
    /// A namespace's labels (`None`: deleted).
    Namespace(String, Option<BTreeMap<String, String>>),
    NamespacesSynced,
}

#[derive(Debug, Default)]
pub struct Store {
    records: HashMap<WorkloadRef, WorkloadRecord>,
    buffers: HashMap<WatchScope, Vec<WorkloadRecord>>,
    synced: HashSet<WatchScope>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    namespaces_synced: bool,
    /// Bumped on every change, so consumers can tell whether to look again.
    pub generation: u64,
}

pub type SharedStore = Arc<RwLock<Store>>;

impl Store {
    pub fn apply(&mut self, update: Update) {
        self.generation += 1;
        match update {
            Update::Init(scope) => {
                self.buffers.insert(scope, Vec::new());
            }
            Update::InitRecord(scope, record) => self.buffers.entry(scope).or_default().push(record),
            Update::InitDone(scope) => {
                let fresh = self.buffers.remove(&scope).unwrap_or_default();
                self.records.retain(|workload, _| !scope.covers(workload));
                self.records.extend(fresh.into_iter().map(|r| (r.workload.clone(), r)));
                self.synced.insert(scope);
            }
            Update::Upsert(record) => {
                self.records.insert(record.workload.clone(), record);
            }
            Update::Remove(workload) => {
                self.records.remove(&workload);
            }
            Update::GaveUp(scope) => {
                self.synced.insert(scope);
            }
            Update::Namespace(name, Some(labels)) => {
                self.namespaces.insert(name, labels);
            }
            Update::Namespace(name, None) => {
                self.namespaces.remove(&name);
            }
            Update::NamespacesSynced => self.namespaces_synced = true,
        }
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

    /// The records the selection admits, in a stable order.
    pub fn selected(&self, selection: &Selection) -> Vec<WorkloadRecord> {
        let mut records: Vec<WorkloadRecord> = self
            .records
            .values()
            .filter(|r| selection.admits(r, self.namespaces.get(&r.workload.namespace)))
            .cloned()
            .collect();
        records.sort_by(|a, b| a.workload.cmp(&b.workload));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::selector::LabelSelector;
    use crate::inventory::{ContainerRole, ContainerSpec};

    fn record(kind: WorkloadKind, ns: &str, name: &str, image: &str) -> WorkloadRecord {
        WorkloadRecord {
            workload: WorkloadRef { kind, namespace: ns.into(), name: name.into() },
            containers: vec![ContainerSpec { name: "c".into(), role: ContainerRole::Container, image: image.into() }],
            pull_secrets: vec![],
            service_account: "default".into(),
            replicas: Some(1),
            suspended: false,
            platforms: None,
        }
    }

    fn names(store: &Store) -> Vec<String> {
        store.selected(&Selection::default()).iter().map(|r| r.workload.name.clone()).collect()
    }

    #[test]
    fn relist_replaces_only_its_scope() {
        let deployments = WatchScope { kind: WorkloadKind::Deployment, namespace: None };
        let mut store = Store::default();
        store.apply(Update::Init(deployments.clone()));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "web", "x")));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "gone", "x")));
        assert!(store.is_empty(), "nothing is visible before the list completes");
        store.apply(Update::InitDone(deployments.clone()));
        store.apply(Update::Upsert(record(WorkloadKind::Pod, "a", "pod", "y")));
        assert_eq!(names(&store), ["gone", "web", "pod"].map(String::from).to_vec());
        // A relist after a 410 no longer has `gone`: it goes; the pod of another scope stays.
        store.apply(Update::Init(deployments.clone()));
        store.apply(Update::InitRecord(deployments.clone(), record(WorkloadKind::Deployment, "a", "web", "x2")));
        store.apply(Update::InitDone(deployments.clone()));
        assert_eq!(names(&store), ["web", "pod"].map(String::from).to_vec());
        assert!(store.is_synced(&[deployments], false));
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
        let selected: Vec<String> = store.selected(&selection).iter().map(|r| r.workload.name.clone()).collect();
        assert_eq!(selected, ["p1"]);
        let excluded = Selection { exclude_namespaces: vec!["team-a".into()], ..Selection::default() };
        assert_eq!(store.selected(&excluded).len(), 1);
    }
}
