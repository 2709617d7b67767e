//! The decisions of `run`, without I/O: what an inventory change, a tick, a finished probe do
//! to the schedule, the states and the published series. The loop around it (`run`) only moves
//! events in and probes out, so everything here is tested under paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::tracked::{InventoryChange, Known, Tracked};
use crate::credentials::SourcedCredential;
use crate::image::ImageRef;
use crate::inventory::ContainerRef;
use crate::inventory::keys::{ImageKey, Series};
use crate::inventory::running::{self, ObjectKey, Running};
use crate::registry::{ProbeResult, State, Trigger};
use crate::schedule::{ScheduleSettings, Scheduler};
use crate::sources::events::PullFailure;
use crate::telemetry::attributes::{image_attributes, series_attributes};
use crate::telemetry::logs::TransitionLog;
use crate::telemetry::metrics::{ContainerGauges, Metrics, Snapshot};

/// A probe to start: the key, its credentials as its users name them, and how many workload
/// containers it answers for.
#[derive(Debug)]
pub struct ProbeJob {
    pub key: ImageKey,
    pub chain: Vec<SourcedCredential>,
    pub workloads: usize,
    /// The failed pull that set it off, if one did.
    pub trigger: Option<Trigger>,
    /// An image a failed pull named that no tracked workload uses: told once, not tracked.
    pub orphan: bool,
}

/// What each workload container's pods run now.
pub type RunningSource = Box<dyn Fn() -> Running + Send>;

pub struct Controller {
    scheduler: Scheduler<ImageKey>,
    tracked: Tracked,
    metrics: Arc<Metrics>,
    log: TransitionLog,
    /// The inventory arrived once: probing may start.
    ready: bool,
    /// Series are rebuilt only when a state or the inventory changed.
    series_stale: bool,
    /// The containers' gauges as last published, shared with the metrics snapshot.
    published: Arc<Vec<ContainerGauges>>,
    /// Of those, the containers whose reference does not parse: counted when they are rebuilt,
    /// not by walking every series each tick.
    bad_image_series: u64,
    /// Probes started since the last tick (the tick's batch and what refills added).
    last_batch: usize,
    /// This replica probes and exports image series (always, without leader election).
    leading: bool,
    /// When a failed pull last set each key's probe off: at most once per failure retry.
    last_triggered: HashMap<ImageKey, Instant>,
    /// Failed pulls waiting for their key's next probe, then riding along with it.
    triggers: HashMap<ImageKey, Trigger>,
    /// What each workload's pods run, read when drift is looked at, never held: at 20,000
    /// pods the list is 0.5 MB, and drift is looked at only when series are rebuilt.
    running: RunningSource,
    /// The containers last published as drifting, to log when that changes.
    drifted: HashSet<ContainerRef>,
}

impl Controller {
    /// `phase` shifts the window (replicas and clusters do not probe a registry in step).
    pub fn new(
        settings: ScheduleSettings,
        now: Instant,
        phase: std::time::Duration,
        metrics: Arc<Metrics>,
        log: TransitionLog,
    ) -> Self {
        Self {
            scheduler: Scheduler::new(settings, now, phase),
            tracked: Tracked::default(),
            metrics,
            log,
            ready: false,
            series_stale: true,
            published: Arc::new(Vec::new()),
            bad_image_series: 0,
            last_batch: 0,
            leading: true,
            last_triggered: HashMap::new(),
            triggers: HashMap::new(),
            running: Box::new(Running::default),
            drifted: HashSet::new(),
        }
    }

    /// Where what the pods run is read from (the store, in `run`); nothing runs without it.
    pub fn with_running(mut self, source: RunningSource) -> Self {
        self.running = source;
        self
    }

    /// A node failed to pull `image` (as the event wrote it, canonicalised) for a pod in
    /// `failure.namespace`: its keys in that namespace go to the front, probed within one tick;
    /// an image no tracked workload uses is probed once, now. At most once per failure retry
    /// per key.
    pub fn on_pull_failure(&mut self, failure: PullFailure, image: ImageRef, now: Instant) -> Vec<ProbeJob> {
        if !self.ready || !self.leading {
            return Vec::new();
        }
        let retry = self.scheduler.settings().failure_retry;
        self.last_triggered.retain(|_, at| now.duration_since(*at) < retry);
        let trigger = Trigger {
            reason: failure.reason,
            namespace: failure.namespace,
            pod: failure.pod,
            message: failure.message,
        };
        let keys: Vec<ImageKey> = self
            .tracked
            .keys()
            .iter()
            .filter(|(key, users)| {
                key.image == image && users.users.iter().any(|u| u.workload().namespace == trigger.namespace)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if keys.is_empty() {
            let key = ImageKey::new(image, Vec::new(), Arc::from(Vec::new()));
            if self.last_triggered.contains_key(&key) {
                return Vec::new();
            }
            self.last_triggered.insert(key.clone(), now);
            return vec![ProbeJob { key, chain: Vec::new(), workloads: 0, trigger: Some(trigger), orphan: true }];
        }
        for key in keys {
            if self.last_triggered.contains_key(&key) {
                continue;
            }
            self.last_triggered.insert(key.clone(), now);
            self.scheduler.mark_changed(&key);
            self.triggers.insert(key, trigger.clone());
        }
        Vec::new()
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// Leadership won: every key is probed first, within the per-registry budgets and the
    /// scheduler's bound on new keys a tick, so no series is missing for longer than the
    /// takeover and that first pass.
    pub fn on_leading(&mut self) {
        self.leading = true;
        self.scheduler.mark_all_changed();
        self.series_stale = true;
    }

    /// Leadership lost (or not won): no probe, no image series — another replica reports them.
    /// The inventory stays warm for a takeover.
    pub fn on_standby(&mut self) {
        self.leading = false;
        self.series_stale = true;
        self.publish();
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn tracked(&self) -> &Tracked {
        &self.tracked
    }

    pub fn state_of(&self, key: &ImageKey) -> Option<State> {
        self.known(key).map(|k| k.state)
    }

    /// A tracked key's last answer.
    fn known(&self, key: &ImageKey) -> Option<Known> {
        self.tracked.keys().get(key).and_then(|users| users.known)
    }

    /// New keys are probed first; keys whose users changed are probed again soon; keys no one
    /// uses are forgotten with their state.
    pub fn on_inventory_change(&mut self, change: InventoryChange) {
        if let InventoryChange::RunningChanged = change {
            self.series_stale = true;
            return;
        }
        let completes = change.completes();
        let changes = self.tracked.apply(change);
        for key in &changes.removed {
            self.scheduler.remove(key);
        }
        for key in changes.present() {
            self.schedule_if_wanted(key);
        }
        for key in &changes.changed {
            self.scheduler.mark_changed(key);
        }
        self.ready |= completes;
        // A refresh's reset names every workload, and most resolve to the series they have.
        self.series_stale |= changes.workloads > 0;
    }

    /// Keeps a key in the schedule exactly while it is wanted (`Tracked::wanted`): a moved
    /// repository's replacement enters when an image it stands in for is found absent (probed
    /// first, as new keys are), and leaves with its answer when none is absent any more.
    fn schedule_if_wanted(&mut self, key: &ImageKey) {
        if self.tracked.wanted(key) {
            self.scheduler.insert(key.clone(), key.registry());
        } else {
            self.scheduler.remove(key);
            if let Some(users) = self.tracked.users_mut(key) {
                self.series_stale |= users.known.take().is_some();
            }
        }
    }

    /// The tick's batch (none before the inventory arrived); publishes the metrics snapshot.
    pub fn on_tick(&mut self, now: Instant, registry_open: impl Fn(&str) -> bool) -> Vec<ProbeJob> {
        if !self.ready || !self.leading {
            self.publish();
            return Vec::new();
        }
        let batch = self.scheduler.next_batch(now, registry_open);
        self.publish();
        self.last_batch = batch.len();
        self.jobs(batch)
    }

    /// What the tick could not start, as in-flight room frees.
    pub fn on_refill(&mut self, now: Instant, registry_open: impl Fn(&str) -> bool) -> Vec<ProbeJob> {
        if !self.leading {
            return Vec::new();
        }
        let more = self.scheduler.take(now, registry_open);
        self.last_batch += more.len();
        self.jobs(more)
    }

    /// Records a result; a changed state is logged. Returns whether waiting probes may start.
    pub fn on_probe_done(&mut self, done: ProbeJob, result: ProbeResult, now: Instant) -> bool {
        self.metrics.record_probe(&result.registry, result.state, result.duration);
        if let Some((host, budget)) = &result.rate_limit {
            self.metrics.record_rate_limit(
                host,
                &crate::credentials::credential_name(result.credential.as_ref()),
                *budget,
            );
        }
        let ProbeJob { key, trigger, orphan, .. } = done;
        if orphan {
            if let Some(trigger) = &trigger {
                self.log.triggered_probe(&key.to_string(), &result, trigger);
            }
            return false;
        }
        let room_freed = self.scheduler.wants_room();
        let retry = retry_soon(result.state, self.known(&key).map(|k| k.state));
        self.scheduler.complete(&key, now, retry);
        // A key dropped (or no longer wanted) while its probe ran: nothing to record it for.
        if !self.tracked.wanted(&key) {
            return room_freed;
        }
        let Some(users) = self.tracked.users_mut(&key) else { return room_freed };
        let known = Known::of(&result);
        let previous = users.known.replace(known);
        if previous.map(|k| k.state == State::Absent) != Some(known.state == State::Absent) {
            // Moved repositories' replacements of this image start or stop being wanted.
            let moved: Vec<ImageKey> = users
                .users
                .iter()
                .filter(|u| u.container().replacement_when_absent)
                .filter_map(|u| u.container().replacement.clone())
                .collect();
            for replacement in &moved {
                self.schedule_if_wanted(replacement);
            }
            self.series_stale |= !moved.is_empty();
        }
        let Some(users) = self.tracked.users_mut(&key) else { return room_freed };
        if users.only_replacing() {
            // A replacement's answer is published beside the deprecated image's series.
            self.series_stale |= previous.map(|k| k.state) != Some(result.state);
            return room_freed;
        }
        // A tag moved to another digest: drift may have changed, though the state has not.
        self.series_stale |= previous.map(|k| k.digest) != Some(known.digest);
        let previous = previous.map(|k| k.state);
        if previous != Some(result.state) {
            self.log.transition(
                &key.to_string(),
                &image_attributes(&key.image),
                previous,
                &result,
                &users.names(),
                trigger.as_ref(),
            );
            self.series_stale = true;
        }
        room_freed
    }

    /// The gauges' snapshot: per-container series (rebuilt only when stale), keys by state.
    pub fn publish(&mut self) {
        if !self.leading {
            self.published = Arc::new(Vec::new());
            self.metrics.publish(Snapshot {
                leader: false,
                workloads: self.tracked.workloads() as u64,
                ..Snapshot::default()
            });
            return;
        }
        if std::mem::take(&mut self.series_stale) {
            self.publish_containers();
        }
        let mut by_state: BTreeMap<State, u64> = BTreeMap::new();
        for users in self.tracked.keys().values().filter(|u| !u.only_replacing()) {
            *by_state.entry(users.known.map_or(State::Pending, |k| k.state)).or_default() += 1;
        }
        if self.bad_image_series > 0 {
            *by_state.entry(State::BadImageFormat).or_default() += self.bad_image_series;
        }
        self.metrics.publish(Snapshot {
            containers: self.published.clone(),
            keys_by_state: by_state.into_iter().collect(),
            workloads: self.tracked.workloads() as u64,
            window_coverage: self.scheduler.coverage(),
            batch_size: self.last_batch as u64,
            leader: true,
        });
    }

    /// Every container's gauges, in one list of exactly its length. Drift, per container: do
    /// its running pods run another digest than the tag resolves to now? Known only with
    /// running pods, a resolved digest and a tag (a pinned digest cannot drift). A container
    /// that starts drifting is logged, and one that stops (its pods now run what the tag
    /// resolves to); one that never drifted is not, so a start tells nothing per container.
    ///
    /// At 100,000 series this ran every tick of a first window or a rollout: each series' key
    /// is looked up by identity ([`KnownByIdentity`]), its workload's pod key computed once per
    /// workload, and its pods' digests read only when the tag's digest is known.
    fn publish_containers(&mut self) {
        let mut published = Vec::with_capacity(self.tracked.series().count());
        let mut now_drifted = HashSet::new();
        let running_now = (self.running)();
        let known_by_identity = KnownByIdentity::of(&self.tracked);
        let mut workload_key = None;
        let mut running = Vec::new();
        let mut bad_image_series = 0;
        for (workload, index, container) in self.tracked.series() {
            bad_image_series += u64::from(container.key.is_none());
            let Some(series) = Series::new(workload.clone(), index) else { continue };
            let known = container.key.as_ref().and_then(|key| known_by_identity.get(key, &self.tracked));
            let state = match &container.key {
                Some(_) => known.map(|k| k.state),
                None => Some(State::BadImageFormat),
            };
            let replacement = container
                .replacement
                .as_ref()
                .filter(|_| self.tracked.replaces_now(container))
                .and_then(|r| known_by_identity.get(r, &self.tracked))
                .map(|r| r.state == State::Available);
            let mut drift = None;
            let tagged = container.key.as_ref().filter(|key| key.image.digest().is_none());
            // Drift is unknown without the tag's digest, whatever the pods run.
            if let (Some(key), Some(current)) = (tagged, known.and_then(|k| k.digest)) {
                let of_workload = match workload_key {
                    Some((at, of_workload)) if at == Arc::as_ptr(workload) => of_workload,
                    _ => {
                        let of_workload = ObjectKey::of_workload(series.workload());
                        workload_key = Some((Arc::as_ptr(workload), of_workload));
                        of_workload
                    }
                };
                running_now.digests_into(of_workload, &series.spec().name, &mut running);
                drift = running::drift(&running, Some(current));
                // Without a drifting container before or now there is nothing to tell.
                if let Some(drifted) = drift.filter(|d| *d || !self.drifted.is_empty()) {
                    let user = series.user();
                    if self.drifted.contains(&user) != drifted {
                        let running: Vec<String> = running.iter().map(ToString::to_string).collect();
                        let attributes = series_attributes(&series);
                        let current = current.to_string();
                        self.log.drift(&key.to_string(), &attributes, drifted, &current, &running);
                    }
                    if drifted {
                        now_drifted.insert(user);
                    }
                }
            }
            if state.is_some() || drift.is_some() || replacement.is_some() {
                published.extend(ContainerGauges::new(series, state, drift, replacement));
            }
        }
        self.drifted = now_drifted;
        self.bad_image_series = bad_image_series;
        self.published = Arc::new(published);
    }

    fn jobs(&mut self, keys: Vec<ImageKey>) -> Vec<ProbeJob> {
        keys.into_iter()
            .map(|key| {
                let (workloads, chain) =
                    self.tracked.keys().get(&key).map_or((0, Vec::new()), |u| (u.users.len(), u.chain.to_vec()));
                let trigger = self.triggers.remove(&key);
                ProbeJob { key, chain, workloads, trigger, orphan: false }
            })
            .collect()
    }
}

/// Each tracked key's last answer by the key's identity ([`ImageKey::identity`]): one integer
/// hashed per series instead of the whole key, twice for a series with a replacement. A key
/// not found by identity (an equal key held apart) is looked up as before.
struct KnownByIdentity(HashMap<usize, Option<Known>>);

impl KnownByIdentity {
    fn of(tracked: &Tracked) -> Self {
        Self(tracked.keys().iter().map(|(key, users)| (key.identity(), users.known)).collect())
    }

    fn get(&self, key: &ImageKey, tracked: &Tracked) -> Option<Known> {
        match self.0.get(&key.identity()) {
            Some(known) => *known,
            None => tracked.keys().get(key).and_then(|users| users.known),
        }
    }
}

/// Whether a key is probed again after `--failure-retry` rather than in the next window: after
/// a transient failure (rate limited, unavailable, unknown error) every time; after any other
/// answer that is not `available` (absent, refused credentials) once, to confirm it — a tag
/// just pushed to one replica of a registry may not be on the next yet — and not again for as
/// long as it lasts: 25,000 deleted tags probed every minute were 400 requests a second at the
/// registries (docs/architecture.md, "At Kubernetes' limits").
pub fn retry_soon(state: State, previous: Option<State>) -> bool {
    state != State::Available && (state.is_transient() || previous != Some(state))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::logs::LoggerProvider as _;
    use opentelemetry::metrics::MeterProvider as _;

    use super::*;
    use crate::config::RegistryConfig;
    use crate::controller::tracked::Resolved;
    use crate::inventory::keys::resolve;
    use crate::inventory::selection::ImageFilter;
    use crate::inventory::{ContainerRole, ContainerSpec, WorkloadKind, WorkloadRecord, WorkloadRef};

    fn controller(now: Instant) -> Controller {
        let meter = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build().meter("test");
        let logger = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build().logger("test");
        let settings = ScheduleSettings {
            window: Duration::from_secs(60),
            tick: Duration::from_secs(10),
            failure_retry: Duration::from_secs(20),
            max_in_flight_per_registry: 16,
        };
        Controller::new(settings, now, Duration::ZERO, Arc::new(Metrics::new(&meter)), TransitionLog::new(logger))
    }

    fn workload(name: &str, image: &str) -> Resolved {
        let record = WorkloadRecord {
            workload: WorkloadRef { kind: WorkloadKind::Deployment, namespace: "ns".into(), name: name.into() },
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
        };
        let uses =
            resolve([&record], |_| None, &RegistryConfig::default(), &ImageFilter::default(), &Arc::from(Vec::new()));
        (Arc::new(record), uses)
    }

    fn result(state: State) -> ProbeResult {
        ProbeResult {
            state,
            digest: None,
            media_type: None,
            error: None,
            registry: "docker.io".into(),
            credential: None,
            credential_index: None,
            duration: Duration::from_millis(5),
            http_requests: 1,
            rate_limit: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_probed_before_the_inventory_then_new_keys_at_once() {
        let start = Instant::now();
        let mut ctl = controller(start);
        assert!(ctl.on_tick(start, |_| true).is_empty(), "not ready: no probe");
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "nginx:1"), workload("api", "redis:7")]));
        assert!(ctl.is_ready());
        let jobs = ctl.on_tick(start, |_| true);
        assert_eq!(jobs.len(), 2, "new keys go in the first batch: {jobs:?}");
        assert!(jobs.iter().all(|j| j.workloads == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_inventory_is_whole_before_anything_is_probed() {
        let start = Instant::now();
        let mut ctl = controller(start);
        let part = |name, image| {
            let resolved = workload(name, image);
            vec![(resolved.0.workload.clone(), Some(resolved))]
        };
        ctl.on_inventory_change(InventoryChange::Reset { part: part("web", "nginx:1"), done: false });
        assert!(!ctl.is_ready(), "a reset's first part is not the inventory");
        assert!(ctl.on_tick(start, |_| true).is_empty());
        ctl.on_inventory_change(InventoryChange::Reset { part: part("api", "redis:7"), done: true });
        assert!(ctl.is_ready());
        let jobs = ctl.on_tick(start, |_| true);
        assert_eq!(jobs.len(), 2, "both parts' keys in the first batch: {jobs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn results_are_kept_per_key_and_forgotten_with_it() {
        let start = Instant::now();
        let mut ctl = controller(start);
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "nginx:1")]));
        let job = ctl.on_tick(start, |_| true).pop().expect("one job");
        let key = job.key.clone();
        tokio::time::advance(Duration::from_secs(1)).await;
        ctl.on_probe_done(job, result(State::Absent), Instant::now());
        assert_eq!(ctl.state_of(&key), Some(State::Absent));
        // The failed key comes back after failure_retry, not before.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(ctl.on_tick(Instant::now(), |_| true).is_empty());
        tokio::time::advance(Duration::from_secs(15)).await;
        let mut retried = ctl.on_tick(Instant::now(), |_| true);
        assert_eq!(retried.len(), 1, "retried after failure_retry");
        // The workload goes: its key and state go with it, and a late result is ignored.
        ctl.on_inventory_change(InventoryChange::Workloads(vec![(
            WorkloadRef { kind: WorkloadKind::Deployment, namespace: "ns".into(), name: "web".into() },
            None,
        )]));
        assert_eq!(ctl.state_of(&key), None);
        let late = retried.pop().expect("the retry");
        ctl.on_probe_done(late, result(State::Available), Instant::now());
        assert_eq!(ctl.state_of(&key), None);
        assert!(ctl.tracked().keys().is_empty());
    }

    #[test]
    fn a_lasting_answer_is_confirmed_once_and_a_transient_failure_retried_every_time() {
        assert!(retry_soon(State::Absent, None), "a first absent is confirmed");
        assert!(retry_soon(State::Absent, Some(State::Available)), "so is a tag that just went");
        assert!(!retry_soon(State::Absent, Some(State::Absent)), "confirmed: the next window's");
        assert!(!retry_soon(State::AuthenticationFailure, Some(State::AuthenticationFailure)));
        assert!(retry_soon(State::RegistryUnavailable, Some(State::RegistryUnavailable)));
        assert!(retry_soon(State::RateLimited, Some(State::RateLimited)));
        assert!(!retry_soon(State::Available, Some(State::Absent)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_image_still_absent_when_confirmed_waits_for_the_next_window() {
        let start = Instant::now();
        let mut ctl = controller(start);
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "nginx:1")]));
        let job = ctl.on_tick(start, |_| true).pop().expect("one job");
        ctl.on_probe_done(job, result(State::Absent), Instant::now());
        tokio::time::advance(Duration::from_secs(25)).await;
        let confirm = ctl.on_tick(Instant::now(), |_| true).pop().expect("confirmed after failure_retry");
        ctl.on_probe_done(confirm, result(State::Absent), Instant::now());
        // failure_retry is 20 s: a retry would be due at 45 s, inside the 60 s window.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(15)).await;
            assert!(ctl.on_tick(Instant::now(), |_| true).is_empty(), "not probed every failure_retry");
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(ctl.on_tick(Instant::now(), |_| true).len(), 1, "probed again in the next window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_keeps_its_answer_while_its_only_workload_changes_or_is_reset() {
        let start = Instant::now();
        let mut ctl = controller(start);
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "nginx:1")]));
        let job = ctl.on_tick(start, |_| true).pop().expect("one job");
        let key = job.key.clone();
        ctl.on_probe_done(job, result(State::Available), Instant::now());
        // The same workload again (a changed record, an update): removed and added in one change.
        ctl.on_inventory_change(InventoryChange::Workloads(vec![{
            let resolved = workload("web", "nginx:1");
            (resolved.0.workload.clone(), Some(resolved))
        }]));
        assert_eq!(ctl.state_of(&key), Some(State::Available), "an update keeps the key's answer");
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "nginx:1")]));
        assert_eq!(ctl.state_of(&key), Some(State::Available), "so does a reset (every --secret-ttl)");
        assert_eq!(ctl.tracked().keys().len(), 1);
    }

    fn failure(namespace: &str, image: &str) -> PullFailure {
        PullFailure {
            namespace: namespace.into(),
            pod: "web-1".into(),
            reason: "BackOff".into(),
            message: format!("Back-off pulling image \"{image}\""),
            image: image.into(),
        }
    }

    fn canonical(image: &str) -> ImageRef {
        ImageRef::parse(image).expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pull_puts_its_key_first_at_most_once_per_failure_retry() {
        let start = Instant::now();
        let mut ctl = controller(start);
        let many: Vec<_> = (0..10).map(|i| workload(&format!("w{i}"), &format!("img{i}:1"))).collect();
        ctl.on_inventory_change(InventoryChange::whole(many));
        for job in ctl.on_tick(start, |_| true) {
            ctl.on_probe_done(job, result(State::Available), start);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        // Probed a moment ago, not due for a window: the event brings it back at the next tick.
        let jobs = ctl.on_pull_failure(failure("ns", "img7:1"), canonical("img7:1"), Instant::now());
        assert!(jobs.is_empty(), "a tracked key waits for the tick");
        tokio::time::advance(Duration::from_secs(10)).await;
        let jobs = ctl.on_tick(Instant::now(), |_| true);
        let first = jobs.first().expect("a job");
        assert_eq!(first.key.to_string(), "docker.io/library/img7:1");
        assert_eq!(first.trigger.as_ref().map(|t| t.pod.as_str()), Some("web-1"), "the trigger rides with it");
        // Another event within failure_retry (20s): nothing more.
        for job in jobs {
            ctl.on_probe_done(job, result(State::Absent), Instant::now());
        }
        ctl.on_pull_failure(failure("ns", "img7:1"), canonical("img7:1"), Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(ctl.on_tick(Instant::now(), |_| true).iter().all(|j| j.trigger.is_none()));
        // Another namespace's pod failing on the same image is not this key's business: an orphan.
        let orphan = ctl.on_pull_failure(failure("elsewhere", "img3:1"), canonical("img3:1"), Instant::now());
        assert_eq!(orphan.len(), 1, "probed once, now");
        assert!(orphan[0].key.credentials.is_empty() && orphan[0].workloads == 0);
        let key = orphan[0].key.clone();
        let before = ctl.state_of(&key);
        for job in orphan {
            ctl.on_probe_done(job, result(State::RateLimited), Instant::now());
        }
        assert_eq!(ctl.state_of(&key), before, "an orphan is told, not tracked: w3's own state stands");
        assert!(ctl.on_pull_failure(failure("elsewhere", "img3:1"), canonical("img3:1"), Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_probes_nothing_and_a_new_leader_probes_everything_at_once() {
        let start = Instant::now();
        let mut ctl = controller(start);
        ctl.on_standby();
        let many: Vec<_> = (0..8).map(|i| workload(&format!("w{i}"), &format!("img{i}:1"))).collect();
        ctl.on_inventory_change(InventoryChange::whole(many));
        assert!(ctl.on_tick(start, |_| true).is_empty(), "a standby keeps its inventory warm but probes nothing");
        ctl.on_leading();
        let first = ctl.on_tick(start, |_| true);
        assert_eq!(first.len(), 8);
        for job in first {
            ctl.on_probe_done(job, result(State::Available), start);
        }
        // Leadership lost and won back within the window: everything again, at once.
        tokio::time::advance(Duration::from_secs(5)).await;
        ctl.on_standby();
        assert!(ctl.on_tick(Instant::now(), |_| true).is_empty());
        ctl.on_leading();
        assert_eq!(ctl.on_tick(Instant::now(), |_| true).len(), 8, "a takeover probes every key first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_workload_that_changes_image_gets_its_new_key_probed_first() {
        let start = Instant::now();
        let mut ctl = controller(start);
        let many: Vec<_> = (0..10).map(|i| workload(&format!("w{i}"), &format!("img{i}:1"))).collect();
        ctl.on_inventory_change(InventoryChange::whole(many));
        let first = ctl.on_tick(start, |_| true);
        assert_eq!(first.len(), 10);
        for job in first {
            ctl.on_probe_done(job, result(State::Available), start);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let resolved = workload("w0", "nginx:2");
        ctl.on_inventory_change(InventoryChange::Workloads(vec![(resolved.0.workload.clone(), Some(resolved))]));
        let jobs = ctl.on_tick(Instant::now(), |_| true);
        let keys: Vec<String> = jobs.iter().map(|j| j.key.to_string()).collect();
        assert_eq!(keys.first().map(String::as_str), Some("docker.io/library/nginx:2"), "{keys:?}");
        assert!(!keys.contains(&"docker.io/library/img0:1".to_string()), "w0's old key is gone: {keys:?}");
    }

    /// Ticks 10 s apart until a batch holds a job (at most two windows' worth).
    async fn next_jobs(ctl: &mut Controller) -> Vec<ProbeJob> {
        for _ in 0..12 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let jobs = ctl.on_tick(Instant::now(), |_| true);
            if !jobs.is_empty() {
                return jobs;
            }
        }
        Vec::new()
    }

    fn images(jobs: &[ProbeJob]) -> Vec<String> {
        jobs.iter().map(|j| j.key.to_string()).collect()
    }

    /// The published replacement gauge of the only container.
    fn replacement_gauge(ctl: &mut Controller) -> Option<bool> {
        ctl.series_stale = true;
        ctl.publish();
        ctl.published.first().and_then(|g| g.replacement)
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_repositorys_replacement_is_probed_and_published_only_while_the_image_is_absent() {
        let (original, moved) = ("docker.io/bitnami/redis:7.2.4", "docker.io/bitnamilegacy/redis:7.2.4");
        let start = Instant::now();
        let mut ctl = controller(start);
        ctl.on_inventory_change(InventoryChange::whole(vec![workload("web", "bitnami/redis:7.2.4")]));
        assert_eq!(ctl.tracked().keys().len(), 2, "the replacement's key is held, to be probed when needed");
        let jobs = ctl.on_tick(start, |_| true);
        assert_eq!(images(&jobs), [original], "not the replacement while the image may be served");
        for job in jobs {
            ctl.on_probe_done(job, result(State::Available), Instant::now());
        }
        assert_eq!(replacement_gauge(&mut ctl), None);
        // Still served a window later: only the image again.
        let jobs = next_jobs(&mut ctl).await;
        assert_eq!(images(&jobs), [original]);
        // Gone (Bitnami deleted the tag): the replacement is probed at the next tick.
        for job in jobs {
            ctl.on_probe_done(job, result(State::Absent), Instant::now());
        }
        assert_eq!(replacement_gauge(&mut ctl), None, "no answer for the replacement yet");
        let jobs = ctl.on_tick(Instant::now(), |_| true);
        assert_eq!(images(&jobs), [moved]);
        for job in jobs {
            ctl.on_probe_done(job, result(State::Available), Instant::now());
        }
        assert_eq!(replacement_gauge(&mut ctl), Some(true));
        // Served again (re-pushed): the replacement's gauge and probes stop.
        let jobs = next_jobs(&mut ctl).await;
        assert_eq!(images(&jobs), [original], "the failed image is retried; the replacement is not due");
        for job in jobs {
            ctl.on_probe_done(job, result(State::Available), Instant::now());
        }
        assert_eq!(replacement_gauge(&mut ctl), None);
        let later = next_jobs(&mut ctl).await;
        assert_eq!(images(&later), [original]);
    }
}
