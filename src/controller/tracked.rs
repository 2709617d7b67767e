//! The inventory as `run` tracks it: image keys with the containers using them, and one series
//! per container. Kept up to date one workload at a time, so a change costs what it touches,
//! not the size of the inventory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use opentelemetry::KeyValue;

use crate::credentials::SourcedCredential;
use crate::inventory::keys::{ImageKey, ImageUse};
use crate::inventory::running::Digest;
use crate::inventory::{ContainerRef, WorkloadRef};
use crate::telemetry::attributes::{image_attributes, use_attributes};

/// What the tracker found: everything anew, or some workloads' uses (`None`: the workload is
/// gone or no longer selected).
#[derive(Debug)]
pub enum InventoryChange {
    Reset(Vec<(WorkloadRef, Vec<ImageUse>)>),
    Workloads(Vec<(WorkloadRef, Option<Vec<ImageUse>>)>),
    /// What the pods run now, per workload container.
    Running(HashMap<ContainerRef, BTreeSet<Digest>>),
}

/// One container's series.
#[derive(Clone, Debug)]
pub struct Series {
    pub user: ContainerRef,
    pub attributes: Arc<[KeyValue]>,
    /// `None`: the reference does not parse (`bad_image_format`), never probed.
    pub key: Option<ImageKey>,
    /// On a deprecated registry: the same image under its replacement, probed too.
    pub replacement: Option<ImageKey>,
}

/// What is known of one key's users.
#[derive(Debug)]
pub struct KeyUsers {
    /// The containers that run this image.
    pub users: BTreeSet<ContainerRef>,
    /// The containers whose deprecated registry this image replaces: probed for them, but
    /// not theirs (no state change is told for them, no key counted by state).
    pub replacing: BTreeSet<ContainerRef>,
    /// Image attributes shared by its series' logs.
    pub attributes: Vec<KeyValue>,
    /// The key's credentials, named as the first user to bring them knows them.
    pub chain: Vec<SourcedCredential>,
}

impl KeyUsers {
    /// `Kind namespace/name (container)` of each user, sorted.
    pub fn names(&self) -> Vec<String> {
        self.users.iter().map(ToString::to_string).collect()
    }

    /// A replacement only: no container runs it.
    pub fn only_replacing(&self) -> bool {
        self.users.is_empty()
    }
}

/// How the key set moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub added: Vec<ImageKey>,
    pub removed: Vec<ImageKey>,
    /// Still there, with other users.
    pub changed: Vec<ImageKey>,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Tracked {
    keys: HashMap<ImageKey, KeyUsers>,
    by_workload: HashMap<WorkloadRef, Vec<Series>>,
}

impl Tracked {
    pub fn keys(&self) -> &HashMap<ImageKey, KeyUsers> {
        &self.keys
    }

    pub fn workloads(&self) -> usize {
        self.by_workload.len()
    }

    pub fn series(&self) -> impl Iterator<Item = &Series> {
        self.by_workload.values().flatten()
    }

    /// Applies a change; says which keys came, went, or got other users.
    pub fn apply(&mut self, change: InventoryChange) -> KeyChanges {
        // Each touched key's users as they were before the change (absent: the key was new).
        let mut before: HashMap<ImageKey, BTreeSet<ContainerRef>> = HashMap::new();
        match change {
            InventoryChange::Reset(all) => {
                before = self.keys.drain().map(|(k, u)| (k, u.users)).collect();
                self.by_workload.clear();
                let mut seen = HashSet::new();
                for (workload, uses) in all {
                    self.insert(workload, uses, &mut seen, &mut HashMap::new());
                }
                let mut touched: HashSet<ImageKey> = before.keys().cloned().collect();
                touched.extend(seen);
                self.classify(touched, &before)
            }
            // Not the tracked set's business: the controller keeps what runs.
            InventoryChange::Running(_) => KeyChanges::default(),
            InventoryChange::Workloads(changes) => {
                let mut touched = HashSet::new();
                for (workload, uses) in changes {
                    self.remove(&workload, &mut touched, &mut before);
                    if let Some(uses) = uses {
                        self.insert(workload, uses, &mut touched, &mut before);
                    }
                }
                self.classify(touched, &before)
            }
        }
    }

    fn classify(&self, touched: HashSet<ImageKey>, before: &HashMap<ImageKey, BTreeSet<ContainerRef>>) -> KeyChanges {
        let mut changes = KeyChanges::default();
        for key in touched {
            match (before.get(&key), self.keys.get(&key)) {
                (None, Some(_)) => changes.added.push(key),
                (Some(_), None) => changes.removed.push(key),
                (Some(old), Some(now)) if *old != now.users && !now.only_replacing() => changes.changed.push(key),
                _ => {}
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes
    }

    /// Notes a key's users before its first change.
    fn remember(&self, key: &ImageKey, before: &mut HashMap<ImageKey, BTreeSet<ContainerRef>>) {
        if !before.contains_key(key)
            && let Some(users) = self.keys.get(key)
        {
            before.insert(key.clone(), users.users.clone());
        }
    }

    fn remove(
        &mut self,
        workload: &WorkloadRef,
        touched: &mut HashSet<ImageKey>,
        before: &mut HashMap<ImageKey, BTreeSet<ContainerRef>>,
    ) {
        for series in self.by_workload.remove(workload).into_iter().flatten() {
            for key in series.key.into_iter().chain(series.replacement) {
                self.remember(&key, before);
                if let Some(users) = self.keys.get_mut(&key) {
                    users.users.retain(|u| u.workload != *workload);
                    users.replacing.retain(|u| u.workload != *workload);
                    if users.users.is_empty() && users.replacing.is_empty() {
                        self.keys.remove(&key);
                    }
                }
                touched.insert(key);
            }
        }
    }

    fn insert(
        &mut self,
        workload: WorkloadRef,
        uses: Vec<ImageUse>,
        touched: &mut HashSet<ImageKey>,
        before: &mut HashMap<ImageKey, BTreeSet<ContainerRef>>,
    ) {
        let mut series = Vec::with_capacity(uses.len());
        for image_use in uses {
            let attributes: Arc<[KeyValue]> = use_attributes(&image_use).into();
            let key = image_use.key.as_ref().ok().cloned();
            if let Some(key) = &key {
                self.remember(key, before);
                let users = self.keys.entry(key.clone()).or_insert_with(|| KeyUsers {
                    users: BTreeSet::new(),
                    replacing: BTreeSet::new(),
                    attributes: image_attributes(&key.image),
                    chain: image_use.chain(),
                });
                users.users.insert(image_use.user.clone());
                touched.insert(key.clone());
            }
            let replacement = image_use.replacement.as_deref().map(|r| {
                self.remember(&r.key, before);
                let users = self.keys.entry(r.key.clone()).or_insert_with(|| KeyUsers {
                    users: BTreeSet::new(),
                    replacing: BTreeSet::new(),
                    attributes: image_attributes(&r.key.image),
                    chain: r.chain(),
                });
                users.replacing.insert(image_use.user.clone());
                touched.insert(r.key.clone());
                r.key.clone()
            });
            series.push(Series { user: image_use.user.clone(), attributes, key, replacement });
        }
        self.by_workload.insert(workload, series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;
    use crate::inventory::WorkloadRecord;
    use crate::inventory::keys::resolve;
    use crate::inventory::selection::ImageFilter;

    fn record(name: &str, images: &[&str]) -> WorkloadRecord {
        crate::inventory::fixtures::deployment("ns", name, images)
    }

    fn update(record: &WorkloadRecord) -> (WorkloadRef, Option<Vec<ImageUse>>) {
        let (workload, uses) = uses(record);
        (workload, Some(uses))
    }

    fn uses(record: &WorkloadRecord) -> (WorkloadRef, Vec<ImageUse>) {
        let uses =
            resolve([record], |_| None, &RegistryConfig::default(), &ImageFilter::default(), &Arc::from(Vec::new()));
        (record.workload.clone(), uses)
    }

    fn names(keys: &[ImageKey]) -> Vec<String> {
        keys.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn changes_touch_only_what_moved() {
        let mut tracked = Tracked::default();
        let (web, api) = (record("web", &["nginx:1", "redis:7"]), record("api", &["nginx:1"]));
        let changes = tracked.apply(InventoryChange::Reset(vec![uses(&web), uses(&api)]));
        assert_eq!(names(&changes.added), ["docker.io/library/nginx:1", "docker.io/library/redis:7"]);
        assert_eq!((tracked.keys().len(), tracked.workloads(), tracked.series().count()), (2, 2, 3));

        // web moves off redis: redis goes, nginx loses a user.
        let changes = tracked.apply(InventoryChange::Workloads(vec![update(&record("web", &["nginx:1"]))]));
        assert_eq!(names(&changes.removed), ["docker.io/library/redis:7"]);
        assert!(changes.added.is_empty() && changes.changed.is_empty(), "web still uses nginx as c0: {changes:?}");

        // The same record again: nothing moves.
        let changes = tracked.apply(InventoryChange::Workloads(vec![update(&record("web", &["nginx:1"]))]));
        assert!(changes.is_empty(), "{changes:?}");

        // api goes: nginx keeps web.
        let changes = tracked.apply(InventoryChange::Workloads(vec![(api.workload.clone(), None)]));
        assert_eq!(names(&changes.changed), ["docker.io/library/nginx:1"]);
        assert_eq!(tracked.keys().values().map(|u| u.names()).collect::<Vec<_>>(), [["Deployment ns/web (c0)"]]);

        // A reset that changes nothing reports nothing.
        let changes = tracked.apply(InventoryChange::Reset(vec![uses(&record("web", &["nginx:1"]))]));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(tracked.workloads(), 1);
    }
}
