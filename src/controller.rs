//! `pullcheck run`: watchers → store → image keys → scheduler → probes → telemetry, every tick,
//! until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::credentials::SourcedCredential;
use crate::health::serve_health;
use crate::inventory::keys::{ImageKey, by_key, resolve};
use crate::inventory::selection::Selection;
use crate::inventory::store::{SharedStore, Store};
use crate::inventory::{WorkloadRecord, WorkloadRef};
use crate::platform::Platform;
use crate::registry::{ProbeResult, RegistryClient, State};
use crate::schedule::{Jitter, ScheduleSettings, Scheduler};
use crate::sources::cluster::{scopes, watch_namespaces, watch_scope};
use crate::sources::nodes::required_platforms;
use crate::sources::secrets::PullSecrets;
use crate::telemetry::attributes::{image_attributes, use_attributes};
use crate::telemetry::logs::TransitionLog;
use crate::telemetry::metrics::{Metrics, Snapshot};

pub struct ControllerSettings {
    pub schedule: ScheduleSettings,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub selection: Selection,
    pub health_addr: Option<SocketAddr>,
    pub secret_ttl: Duration,
    /// Platforms every index must cover; `None`: those of the cluster's nodes, read again
    /// with the pull secrets.
    pub platforms: Option<Vec<Platform>>,
}

type Key = ImageKey;

/// What is known of one key's users.
struct KeyUsers {
    /// `Kind namespace/name (container)`, sorted.
    workloads: Vec<String>,
    /// Image attributes shared by its series and its state-change logs.
    attributes: Vec<KeyValue>,
    /// The key's credentials, named as its first user knows them.
    chain: Vec<SourcedCredential>,
}

/// The inventory turned into keys and series.
#[derive(Default)]
struct Tracked {
    keys: HashMap<Key, KeyUsers>,
    /// One per (workload, container): attributes and the key behind it (`None`: the reference
    /// does not parse, `bad_image_format`).
    series: Vec<(Vec<KeyValue>, Option<Key>)>,
    workloads: usize,
}

async fn track(
    records: &[WorkloadRecord],
    secrets: &PullSecrets,
    registry: &RegistryClient,
    selection: &Selection,
    platforms: &Arc<[Platform]>,
) -> Tracked {
    let mut credentials = HashMap::new();
    for record in records {
        let (found, problems) = secrets.for_workload(record).await;
        for problem in &problems {
            tracing::debug!(workload = %record.workload, "{problem}");
        }
        credentials.insert(&record.workload, found);
    }
    let uses = resolve(
        records,
        |r: &WorkloadRecord| credentials.get::<WorkloadRef>(&r.workload),
        registry.config(),
        &selection.images,
        platforms,
    );
    let keys = by_key(&uses)
        .into_iter()
        .map(|(key, users)| {
            let mut workloads: Vec<String> = users.iter().map(|u| u.user.to_string()).collect();
            workloads.sort();
            let chain = users.first().map(|u| u.chain()).unwrap_or_default();
            (key.clone(), KeyUsers { workloads, attributes: image_attributes(&key.image), chain })
        })
        .collect();
    let series = uses.iter().map(|u| (use_attributes(u), u.key.as_ref().ok().cloned())).collect();
    Tracked { keys, series, workloads: records.len() }
}

/// The per-container series with their current states (none while pending).
fn series(tracked: &Tracked, states: &HashMap<Key, ProbeResult>) -> Arc<Vec<(Vec<KeyValue>, State)>> {
    Arc::new(
        tracked
            .series
            .iter()
            .filter_map(|(attributes, key)| {
                let state = match key {
                    Some(key) => states.get(key)?.state,
                    None => State::BadImageFormat,
                };
                Some((attributes.clone(), state))
            })
            .collect(),
    )
}

fn snapshot(
    tracked: &Tracked,
    states: &HashMap<Key, ProbeResult>,
    series: Arc<Vec<(Vec<KeyValue>, State)>>,
    scheduler: &Scheduler<Key>,
    batch: usize,
) -> Snapshot {
    let mut by_state: BTreeMap<State, u64> = BTreeMap::new();
    for key in tracked.keys.keys() {
        *by_state.entry(states.get(key).map_or(State::Pending, |r| r.state)).or_default() += 1;
    }
    let bad = tracked.series.iter().filter(|(_, k)| k.is_none()).count() as u64;
    if bad > 0 {
        *by_state.entry(State::BadImageFormat).or_default() += bad;
    }
    Snapshot {
        series,
        keys_by_state: by_state.into_iter().collect(),
        workloads: tracked.workloads as u64,
        window_coverage: scheduler.coverage(),
        batch_size: batch as u64,
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    kube_client: kube::Client,
    registry: RegistryClient,
    metrics: Arc<Metrics>,
    log: TransitionLog,
    settings: ControllerSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let store: SharedStore = Arc::new(RwLock::new(Store::default()));
    let watch_scopes = scopes(settings.namespaces.as_deref());
    let needs_namespaces = settings.selection.needs_namespace_labels();
    let mut background = JoinSet::new();
    for scope in watch_scopes.iter().cloned() {
        background.spawn(watch_scope(kube_client.clone(), scope, store.clone()));
    }
    if needs_namespaces {
        background.spawn(watch_namespaces(kube_client.clone(), store.clone()));
    }
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = settings.health_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                background.spawn(serve_health(listener, ready.clone()));
            }
            Err(e) => tracing::error!(%addr, "cannot serve /healthz and /readyz: {e}"),
        }
    }

    let mut platforms: Arc<[Platform]> = Arc::from(settings.platforms.clone().unwrap_or_default());
    let mut nodes_warning_said = false;
    let secrets = PullSecrets::new(kube_client.clone(), settings.secret_ttl);
    let tick = settings.schedule.tick;
    let mut jitter = Jitter::from_entropy();
    let mut scheduler: Scheduler<Key> = Scheduler::new(settings.schedule.clone(), Instant::now(), jitter.below(tick));
    let mut tracked = Tracked::default();
    let mut states: HashMap<Key, ProbeResult> = HashMap::new();
    let mut seen_generation = None;
    let mut tracked_at = Instant::now();
    let mut probes: JoinSet<(Key, ProbeResult)> = JoinSet::new();
    let mut last_batch = 0;
    let mut published_series = Arc::new(Vec::new());
    // Series are rebuilt only when a state or the inventory changed.
    let mut series_stale = true;
    // Replicas started together do not tick together.
    tokio::time::sleep(jitter.below(tick)).await;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Probes that finished free in-flight room; what the tick could not start then starts here.
    let mut refill = tokio::time::interval(REFILL_INTERVAL.min(tick));
    refill.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut room_freed = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                let (synced, generation) = {
                    let store = store.read().unwrap_or_else(|p| p.into_inner());
                    (store.is_synced(&watch_scopes, needs_namespaces), store.generation)
                };
                if !synced {
                    continue;
                }
                if !ready.swap(true, Ordering::Relaxed) {
                    tracing::info!("inventory synced");
                }
                // Pull secrets are read again after their TTL: a rotated secret changes the keys.
                if seen_generation != Some(generation) || tracked_at.elapsed() >= settings.secret_ttl {
                    seen_generation = Some(generation);
                    tracked_at = Instant::now();
                    if settings.platforms.is_none() {
                        match required_platforms(None, &kube_client).await {
                            (found, None) => platforms = Arc::from(found),
                            (_, Some(warning)) if !nodes_warning_said => {
                                nodes_warning_said = true;
                                tracing::warn!("{warning}");
                            }
                            (_, Some(_)) => {}
                        }
                    }
                    let records = store.read().unwrap_or_else(|p| p.into_inner()).selected(&settings.selection);
                    let fresh = track(&records, &secrets, &registry, &settings.selection, &platforms).await;
                    let removed = scheduler.sync(fresh.keys.keys().map(|k| (k.clone(), k.registry().to_string())));
                    for key in removed {
                        states.remove(&key);
                    }
                    for (key, users) in &fresh.keys {
                        if tracked.keys.get(key).is_some_and(|old| old.workloads != users.workloads) {
                            scheduler.mark_changed(key);
                        }
                    }
                    tracked = fresh;
                    series_stale = true;
                }
                let batch = scheduler.next_batch(Instant::now(), |r| registry.pause_remaining(r).is_none());
                if std::mem::take(&mut series_stale) {
                    published_series = series(&tracked, &states);
                }
                metrics.publish(snapshot(&tracked, &states, published_series.clone(), &scheduler, last_batch));
                last_batch = batch.len();
                start_probes(&mut probes, batch, &tracked, &registry);
            }
            _ = refill.tick(), if room_freed => {
                room_freed = false;
                let more = scheduler.take(Instant::now(), |r| registry.pause_remaining(r).is_none());
                last_batch += more.len();
                start_probes(&mut probes, more, &tracked, &registry);
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((key, result)) = done else { continue };
                room_freed |= scheduler.wants_room();
                scheduler.complete(&key, Instant::now(), result.state != State::Available);
                metrics.record_probe(&result.registry, result.state, result.duration);
                let Some(users) = tracked.keys.get(&key) else { continue };
                let previous = states.get(&key).map(|r| r.state);
                if previous != Some(result.state) {
                    log.transition(&key.to_string(), &users.attributes, previous, &result, &users.workloads);
                    series_stale = true;
                }
                states.insert(key, result);
            }
        }
    }
    tracing::info!("shutting down");
    probes.abort_all();
    background.abort_all();
    metrics.publish(snapshot(&tracked, &states, series(&tracked, &states), &scheduler, last_batch));
}

const REFILL_INTERVAL: Duration = Duration::from_millis(10);

fn start_probes(
    probes: &mut JoinSet<(Key, ProbeResult)>,
    keys: Vec<Key>,
    tracked: &Tracked,
    registry: &RegistryClient,
) {
    for key in keys {
        let (workloads, chain) =
            tracked.keys.get(&key).map_or((0, Vec::new()), |u| (u.workloads.len(), u.chain.clone()));
        let client = registry.clone();
        probes.spawn(async move {
            let result = client.probe_for(&key.image, &chain, &key.platforms, workloads).await;
            (key, result)
        });
    }
}
