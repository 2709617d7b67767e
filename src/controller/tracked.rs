//! The inventory as `run` tracks it: image keys with the containers using them, and one series
//! per container. Kept up to date one workload at a time, so a change costs what it touches,
//! not the size of the inventory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::credentials::SourcedCredential;
use crate::inventory::keys::{ContainerSeries, ImageKey, ImageUse, Series, WorkloadSeries};
use crate::inventory::running::Digest;
use crate::inventory::{ByWorkload, WorkloadRecord, WorkloadRef};
use crate::registry::{ProbeResult, State};

/// A workload's record and the uses resolved from it.
pub type Resolved = (Arc<WorkloadRecord>, Vec<ImageUse>);

/// Workloads' uses, each replacing what is held of the workload (`None`: the workload is gone
/// or no longer selected).
pub type WorkloadUses = Vec<(WorkloadRef, Option<Resolved>)>;

/// What the tracker found: everything anew, or some workloads' uses.
#[derive(Debug)]
pub enum InventoryChange {
    /// Every workload anew, in parts: a part is applied as `Workloads` is, and the last part
    /// (`done`) also drops the workloads no part of the reset named. In parts so that a whole
    /// cluster's uses are never held at once (they were the peak of the heap at sync).
    Reset {
        part: WorkloadUses,
        done: bool,
    },
    Workloads(WorkloadUses),
    /// What the pods run changed (digests, pods, owners): drift is to be looked at again.
    RunningChanged,
}

impl InventoryChange {
    /// A reset in one part.
    pub fn whole(all: Vec<Resolved>) -> Self {
        InventoryChange::Reset {
            part: all.into_iter().map(|resolved| (resolved.0.workload.clone(), Some(resolved))).collect(),
            done: true,
        }
    }

    /// Whether the inventory is whole once this is applied: anything but a reset's part
    /// before its last.
    pub fn completes(&self) -> bool {
        !matches!(self, InventoryChange::Reset { done: false, .. })
    }
}

/// What is kept of a key's last answer: its state and the digest its tag resolved to (all
/// drift needs). The answer itself is told when it comes, then dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub state: State,
    pub digest: Option<Digest>,
}

impl Known {
    pub fn of(result: &ProbeResult) -> Self {
        Known { state: result.state, digest: result.digest.as_deref().and_then(Digest::parse) }
    }
}

/// What is known of one key: its users and its last answer.
#[derive(Debug)]
pub struct KeyUsers {
    /// The containers that run this image, sorted, each once.
    pub users: Vec<Series>,
    /// The containers whose deprecated registry this image replaces: probed for them, but
    /// not theirs (no state change is told for them, no key counted by state). Sorted.
    pub replacing: Vec<Series>,
    /// The key's credentials, named as the first user to bring them knows them. Boxed: set
    /// once, and one of thousands of keys' entries (docs/architecture.md, "Footprint").
    pub chain: Box<[SourcedCredential]>,
    /// The last answer (`None` until the first probe ends).
    pub known: Option<Known>,
}

impl KeyUsers {
    /// `Kind namespace/name (container)` of each user, sorted.
    pub fn names(&self) -> Vec<String> {
        self.users.iter().map(|u| u.user().to_string()).collect()
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
    /// Still there, with the same users (other containers it replaces for, perhaps): whether
    /// it is to be probed may have changed all the same (`Tracked::wanted`).
    pub kept: Vec<ImageKey>,
    /// How many workloads' series were built anew or dropped: none, and the published series
    /// stand as they are.
    pub workloads: usize,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The keys whose probing may have started or stopped being wanted.
    pub fn present(&self) -> impl Iterator<Item = &ImageKey> {
        self.added.iter().chain(&self.changed).chain(&self.kept)
    }
}

/// Each touched key's users as they were before a change (`None`: the key was new).
type Before = HashMap<ImageKey, Option<Vec<Series>>>;

#[derive(Debug, Default)]
pub struct Tracked {
    /// Boxed: the table's empty slots (a third to a half of them) cost a pointer, not an
    /// entry (docs/architecture.md, "Footprint").
    keys: HashMap<ImageKey, Box<KeyUsers>>,
    /// Each workload's series, shared with the published snapshots.
    by_workload: HashSet<ByWorkload<Arc<WorkloadSeries>>>,
    /// The reset under way or last ended: series inserted since it began, or named by one of
    /// its parts, carry it (`WorkloadSeries::reset`); the others go at its end.
    reset: u32,
    /// A reset has begun and its last part has not come.
    resetting: bool,
}

impl Tracked {
    pub fn keys(&self) -> &HashMap<ImageKey, Box<KeyUsers>> {
        &self.keys
    }

    /// A key's users and last answer, to record an answer in.
    pub fn users_mut(&mut self, key: &ImageKey) -> Option<&mut KeyUsers> {
        self.keys.get_mut(key).map(|users| &mut **users)
    }

    /// Whether a key is to be probed: a container runs it, or it replaces a deprecated
    /// registry's image, or a moved repository's image last known `absent`. A moved
    /// repository's replacement waits otherwise: no request for an image the original still
    /// serves (Docker Hub counts each against the pull limit; docs/states.md).
    pub fn wanted(&self, key: &ImageKey) -> bool {
        let Some(users) = self.keys.get(key) else { return false };
        !users.users.is_empty() || users.replacing.iter().any(|series| self.replaces_now(series.container()))
    }

    /// Whether a container's replacement stands in for its image now (`ContainerSeries`):
    /// always on a deprecated registry, while the image is known `absent` in a moved one.
    pub fn replaces_now(&self, container: &ContainerSeries) -> bool {
        container.replacement.is_some()
            && (!container.replacement_when_absent
                || container
                    .key
                    .as_ref()
                    .and_then(|key| self.keys.get(key))
                    .and_then(|users| users.known)
                    .map(|k| k.state)
                    == Some(State::Absent))
    }

    pub fn workloads(&self) -> usize {
        self.by_workload.len()
    }

    /// Every container's series, with its workload's.
    pub fn series(&self) -> impl Iterator<Item = (&Arc<WorkloadSeries>, usize, &ContainerSeries)> {
        self.by_workload
            .iter()
            .map(|w| &w.0)
            .flat_map(|w| w.containers().iter().enumerate().map(move |(i, c)| (w, i, c)))
    }

    /// Applies a change; says which keys came, went, or got other users.
    pub fn apply(&mut self, change: InventoryChange) -> KeyChanges {
        let mut before = Before::new();
        let mut touched = HashSet::new();
        let mut workloads = 0;
        match change {
            InventoryChange::Reset { part, done } => {
                if !self.resetting {
                    self.resetting = true;
                    self.reset = self.reset.wrapping_add(1);
                }
                workloads += self.replace(part, &mut touched, &mut before);
                if done {
                    self.resetting = false;
                    let unnamed: Vec<WorkloadRef> = (self.by_workload.iter())
                        .filter(|series| series.0.reset() != self.reset)
                        .map(|series| series.0.workload().clone())
                        .collect();
                    for workload in &unnamed {
                        self.remove(workload, &mut touched, &mut before);
                    }
                    workloads += unnamed.len();
                    self.keys.shrink_to_fit();
                }
            }
            // Not the tracked set's business: the controller keeps what runs.
            InventoryChange::RunningChanged => return KeyChanges::default(),
            InventoryChange::Workloads(changes) => workloads += self.replace(changes, &mut touched, &mut before),
        }
        self.settle(&touched);
        let mut changes = self.classify(touched, &before);
        changes.workloads = workloads;
        changes
    }

    /// Each workload's uses in place of what is held of it, unless they are what is held (a
    /// reset resolves every workload, and most to what they were). Returns how many changed.
    fn replace(&mut self, changes: WorkloadUses, touched: &mut HashSet<ImageKey>, before: &mut Before) -> usize {
        let mut replaced = 0;
        for (workload, resolved) in changes {
            let held = self.by_workload.get(&workload).map(|series| &series.0);
            let unchanged = match (held, &resolved) {
                (Some(held), Some((record, uses))) => held.is_built_from(record, uses),
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                // Named: kept at the reset's end (`insert` marks the series it builds).
                if let Some(held) = held {
                    held.mark_reset(self.reset);
                }
                continue;
            }
            replaced += 1;
            self.remove(&workload, touched, before);
            if let Some((record, uses)) = resolved {
                self.insert(record, &uses, touched, before);
            }
        }
        replaced
    }

    /// Users were pushed as they came: sorted and made unique once per change. A key left
    /// without users goes only now, so that a workload removed and added again in one change
    /// (an update, a reset) keeps its keys' last answers.
    fn settle(&mut self, touched: &HashSet<ImageKey>) {
        for key in touched {
            let Some(users) = self.keys.get_mut(key) else { continue };
            if users.users.is_empty() && users.replacing.is_empty() {
                self.keys.remove(key);
                continue;
            }
            for list in [&mut users.users, &mut users.replacing] {
                list.sort_unstable();
                list.dedup();
                list.shrink_to_fit();
            }
        }
    }

    fn classify(&self, touched: HashSet<ImageKey>, before: &Before) -> KeyChanges {
        let mut changes = KeyChanges::default();
        for key in touched {
            match (before.get(&key).and_then(Option::as_ref), self.keys.get(&key)) {
                (None, Some(_)) => changes.added.push(key),
                (Some(_), None) => changes.removed.push(key),
                (Some(old), Some(now)) if *old != now.users && !now.only_replacing() => changes.changed.push(key),
                (_, Some(_)) => changes.kept.push(key),
                _ => {}
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes.kept.sort();
        changes
    }

    /// Notes a key's users before its first change, or that it was new: a key two workloads
    /// bring in one change is added, not changed.
    fn remember(&self, key: &ImageKey, before: &mut Before) {
        if !before.contains_key(key) {
            before.insert(key.clone(), self.keys.get(key).map(|users| users.users.clone()));
        }
    }

    fn remove(&mut self, workload: &WorkloadRef, touched: &mut HashSet<ImageKey>, before: &mut Before) {
        let Some(ByWorkload(series)) = self.by_workload.take(workload) else { return };
        for container in series.containers() {
            for key in container.key.iter().chain(&container.replacement) {
                self.remember(key, before);
                if let Some(users) = self.keys.get_mut(key) {
                    users.users.retain(|u| u.workload() != workload);
                    users.replacing.retain(|u| u.workload() != workload);
                }
                touched.insert(key.clone());
            }
        }
    }

    /// The key as the table holds it (or held before a reset, as the schedule still does),
    /// for a use to share; the given one when it is new.
    fn held(&self, key: &ImageKey, before: &Before) -> ImageKey {
        let held = self.keys.get_key_value(key).map(|(k, _)| k).or_else(|| before.get_key_value(key).map(|(k, _)| k));
        held.unwrap_or(key).clone()
    }

    /// A workload's uses, each key's users before the change noted first.
    fn insert(
        &mut self,
        record: Arc<WorkloadRecord>,
        uses: &[ImageUse],
        touched: &mut HashSet<ImageKey>,
        before: &mut Before,
    ) {
        let series = WorkloadSeries::new(record, uses, |image_use| {
            let mut hold = |key: &ImageKey, chain: &dyn Fn() -> Vec<SourcedCredential>| {
                let key = self.held(key, before);
                self.remember(&key, before);
                self.keys.entry(key.clone()).or_insert_with(|| {
                    Box::new(KeyUsers { users: Vec::new(), replacing: Vec::new(), chain: chain().into(), known: None })
                });
                touched.insert(key.clone());
                key
            };
            let key = image_use.key.as_ref().ok().map(|key| hold(key, &|| image_use.chain()));
            let replacement = image_use.replacement.as_deref().map(|r| hold(&r.key, &|| r.chain()));
            (key, replacement)
        });
        let series = Arc::new(series);
        series.mark_reset(self.reset);
        // Each container is its keys' user: the series itself, not a copy of who it is.
        for (index, container) in series.containers().iter().enumerate() {
            let Some(user) = Series::new(series.clone(), index) else { continue };
            if let Some(users) = container.key.as_ref().and_then(|k| self.keys.get_mut(k)) {
                users.users.push(user.clone());
            }
            if let Some(users) = container.replacement.as_ref().and_then(|k| self.keys.get_mut(k)) {
                users.replacing.push(user);
            }
        }
        self.by_workload.replace(ByWorkload(series));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;
    use crate::inventory::keys::resolve;
    use crate::inventory::selection::ImageFilter;

    fn record(name: &str, images: &[&str]) -> WorkloadRecord {
        crate::inventory::fixtures::deployment("ns", name, images)
    }

    fn update(record: &WorkloadRecord) -> (WorkloadRef, Option<Resolved>) {
        (record.workload.clone(), Some(uses(record)))
    }

    fn uses(record: &WorkloadRecord) -> Resolved {
        resolved(Arc::new(record.clone()))
    }

    /// The uses of the very record given, resolved afresh (keys equal to, not the same as,
    /// any resolved before).
    fn resolved(record: Arc<WorkloadRecord>) -> Resolved {
        resolved_for(record, Vec::new())
    }

    fn resolved_for(record: Arc<WorkloadRecord>, platforms: Vec<crate::platform::Platform>) -> Resolved {
        let uses =
            resolve([&*record], |_| None, &RegistryConfig::default(), &ImageFilter::default(), &Arc::from(platforms));
        (record, uses)
    }

    fn names(keys: &[ImageKey]) -> Vec<String> {
        keys.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn changes_touch_only_what_moved() {
        let mut tracked = Tracked::default();
        let (web, api) = (record("web", &["nginx:1", "redis:7"]), record("api", &["nginx:1"]));
        let changes = tracked.apply(InventoryChange::whole(vec![uses(&web), uses(&api)]));
        assert_eq!(names(&changes.added), ["docker.io/library/nginx:1", "docker.io/library/redis:7"]);
        assert_eq!((tracked.keys().len(), tracked.workloads(), tracked.series().count()), (2, 2, 3));
        let nginx: Vec<&ImageKey> = tracked
            .series()
            .filter_map(|(_, _, c)| c.key.as_ref())
            .filter(|k| k.to_string().contains("nginx"))
            .collect();
        assert!(nginx[0].is_same(nginx[1]), "both containers hold the key the table holds, not copies");

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

        // Two new workloads bringing one new key in one change: it is added.
        let (one, two) = (record("one", &["busybox:1"]), record("two", &["busybox:1"]));
        let changes = tracked.apply(InventoryChange::Workloads(vec![update(&one), update(&two)]));
        assert_eq!(names(&changes.added), ["docker.io/library/busybox:1"], "{changes:?}");
        assert!(changes.changed.is_empty(), "{changes:?}");
        tracked.apply(InventoryChange::Workloads(vec![(one.workload.clone(), None), (two.workload.clone(), None)]));

        // A reset that changes nothing reports nothing.
        let changes = tracked.apply(InventoryChange::whole(vec![uses(&record("web", &["nginx:1"]))]));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(tracked.workloads(), 1);
    }

    #[test]
    fn a_moved_repositorys_replacement_is_wanted_only_while_an_image_it_replaces_is_absent() {
        let mut tracked = Tracked::default();
        let key = |tracked: &Tracked, image: &str| {
            tracked.keys().keys().find(|k| k.to_string() == image).cloned().unwrap_or_else(|| panic!("{image}"))
        };
        let web = record("web", &["bitnami/redis:7.2.4", "k8s.gcr.io/pause:3.9"]);
        let api = record("api", &["bitnami/redis:7.2.4"]);
        let changes = tracked.apply(InventoryChange::whole(vec![uses(&web), uses(&api)]));
        assert_eq!(changes.added.len(), 4, "both replacements are held: {changes:?}");
        let (redis, legacy) =
            (key(&tracked, "docker.io/bitnami/redis:7.2.4"), key(&tracked, "docker.io/bitnamilegacy/redis:7.2.4"));
        assert!(tracked.wanted(&redis));
        assert!(tracked.wanted(&key(&tracked, "registry.k8s.io/pause:3.9")), "a deprecated registry's: always");
        assert!(!tracked.wanted(&legacy), "nothing known of the image yet");
        let answer = |tracked: &mut Tracked, state| {
            tracked.users_mut(&redis).expect("tracked").known = Some(Known { state, digest: None });
        };
        for (state, wanted) in [(State::Available, false), (State::Absent, true), (State::RateLimited, false)] {
            answer(&mut tracked, state);
            assert_eq!(tracked.wanted(&legacy), wanted, "{state}");
        }
        // A container running the replacement itself: wanted whatever the image's state.
        tracked.apply(InventoryChange::Workloads(vec![update(&record("db", &["bitnamilegacy/redis:7.2.4"]))]));
        assert!(tracked.wanted(&legacy));
    }

    #[test]
    fn a_reset_in_parts_drops_at_its_end_what_no_part_named() {
        let mut tracked = Tracked::default();
        let (web, api, db) = (record("web", &["nginx:1"]), record("api", &["redis:7"]), record("db", &["postgres:16"]));
        tracked.apply(InventoryChange::whole(vec![uses(&web), uses(&api), uses(&db)]));
        // web moves to nginx:2 in the first part; db is in the second; api is in none.
        let changes =
            tracked.apply(InventoryChange::Reset { part: vec![update(&record("web", &["nginx:2"]))], done: false });
        assert_eq!(names(&changes.added), ["docker.io/library/nginx:2"]);
        assert_eq!(names(&changes.removed), ["docker.io/library/nginx:1"]);
        assert_eq!(tracked.workloads(), 3, "nothing is dropped before the last part");
        let changes = tracked.apply(InventoryChange::Reset { part: vec![update(&db)], done: true });
        assert_eq!(names(&changes.removed), ["docker.io/library/redis:7"], "api was named by no part");
        assert!(changes.added.is_empty() && changes.changed.is_empty(), "{changes:?}");
        assert_eq!(tracked.workloads(), 2);
        // The next reset starts afresh: what the last one named is held, not remembered.
        let changes = tracked.apply(InventoryChange::Reset { part: vec![], done: true });
        assert_eq!(names(&changes.removed), ["docker.io/library/nginx:2", "docker.io/library/postgres:16"]);
        assert_eq!(tracked.workloads(), 0);
    }

    #[test]
    fn a_reset_keeps_the_series_of_workloads_that_resolve_as_they_did() {
        let series_of = |tracked: &Tracked, name: &str| {
            let found = tracked.series().find(|(w, _, _)| w.workload().name.as_str() == name);
            found.map(|(w, _, _)| w.clone()).unwrap_or_else(|| panic!("{name} is tracked"))
        };
        let (web, api) = (Arc::new(record("web", &["nginx:1"])), Arc::new(record("api", &["redis:7"])));
        let mut tracked = Tracked::default();
        let changes = tracked.apply(InventoryChange::whole(vec![resolved(web.clone()), resolved(api.clone())]));
        assert_eq!(changes.workloads, 2);
        let (web_series, api_series) = (series_of(&tracked, "web"), series_of(&tracked, "api"));

        // The refresh: both records as they were, their keys resolved again.
        let changes = tracked.apply(InventoryChange::whole(vec![resolved(web.clone()), resolved(api.clone())]));
        assert_eq!(changes, KeyChanges::default(), "nothing moved, nothing is told");
        assert!(Arc::ptr_eq(&series_of(&tracked, "web"), &web_series), "web's series are kept, not built again");
        assert!(Arc::ptr_eq(&series_of(&tracked, "api"), &api_series));

        // A reset naming only web, as it was: web is kept as it is, api goes at the end.
        let changes = tracked.apply(InventoryChange::Reset { part: vec![], done: false });
        assert_eq!((changes.workloads, tracked.workloads()), (0, 2), "nothing goes before the last part");
        let part = vec![(web.workload.clone(), Some(resolved(web.clone())))];
        let changes = tracked.apply(InventoryChange::Reset { part, done: true });
        assert_eq!(names(&changes.removed), ["docker.io/library/redis:7"]);
        assert_eq!((changes.workloads, tracked.workloads()), (1, 1));
        assert!(Arc::ptr_eq(&series_of(&tracked, "web"), &web_series));

        // An equal record in a new allocation (the store replaced it): built anew.
        let changes = tracked.apply(InventoryChange::whole(vec![uses(&web)]));
        assert_eq!((changes.workloads, changes.is_empty()), (1, true), "{changes:?}");
        assert!(!Arc::ptr_eq(&series_of(&tracked, "web"), &web_series));
        // The same record with other keys (the nodes' platforms moved): built anew too.
        let web_series = series_of(&tracked, "web");
        let web = web_series.record().clone();
        let arm = crate::platform::Platform::new("linux", "arm64", None);
        let changes = tracked.apply(InventoryChange::whole(vec![resolved_for(web, vec![arm])]));
        assert_eq!((changes.workloads, changes.added.len(), changes.removed.len()), (1, 1, 1), "{changes:?}");
        assert!(!Arc::ptr_eq(&series_of(&tracked, "web"), &web_series));
    }
}
