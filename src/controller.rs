//! `pullcheck run`: watchers → store → image keys → scheduler → probes → telemetry, every tick,
//! until shutdown. Health on a small HTTP port: `/healthz` while the loop runs, `/readyz` once
//! the inventory is synced.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::{Array, KeyValue, StringValue, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::check::ImageFilter;
use crate::image::ImageRef;
use crate::inventory::kube::{list_node_platforms, scopes, watch_namespaces, watch_scope};
use crate::inventory::secrets::PullSecrets;
use crate::inventory::store::{Selection, SharedStore, Store};
use crate::inventory::{WorkloadKind, WorkloadRecord};
use crate::registry::{Credential, Platform, ProbeResult, RegistryClient, State};
use crate::schedule::{Jitter, ScheduleSettings, Scheduler};
use crate::telemetry::logs::TransitionLog;
use crate::telemetry::metrics::{Metrics, Snapshot};

pub struct ControllerSettings {
    pub schedule: ScheduleSettings,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub selection: Selection,
    pub filter: ImageFilter,
    pub health_addr: Option<SocketAddr>,
    pub secret_ttl: Duration,
    /// Platforms every index must cover; `None`: those of the cluster's nodes, read again
    /// with the pull secrets.
    pub platforms: Option<Vec<Platform>>,
}

/// An image key: the canonical reference and the credential kubelet would use.
type Key = (ImageRef, Option<Credential>);

/// What is known of one key's users.
struct KeyUsers {
    /// `Kind namespace/name (container)`, sorted.
    workloads: Vec<String>,
    /// Image attributes shared by its series and its state-change logs.
    attributes: Vec<KeyValue>,
}

/// The inventory turned into keys and series.
#[derive(Default)]
struct Tracked {
    keys: HashMap<Key, KeyUsers>,
    /// One per (workload, container): attributes and the key (or the parse error) behind it.
    series: Vec<(Vec<KeyValue>, Result<Key, String>)>,
    workloads: usize,
}

/// `k8s.<kind>.name`, as the semantic conventions name each workload kind.
pub fn workload_name_attribute(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "k8s.deployment.name",
        WorkloadKind::StatefulSet => "k8s.statefulset.name",
        WorkloadKind::DaemonSet => "k8s.daemonset.name",
        WorkloadKind::ReplicaSet => "k8s.replicaset.name",
        WorkloadKind::ReplicationController => "k8s.replicationcontroller.name",
        WorkloadKind::Job => "k8s.job.name",
        WorkloadKind::CronJob => "k8s.cronjob.name",
        WorkloadKind::Pod => "k8s.pod.name",
        WorkloadKind::PodTemplate => "k8s.podtemplate.name",
    }
}

/// `container.image.name`, `container.image.tags`, `server.address` of a reference.
pub fn image_attributes(image: &ImageRef) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("container.image.name", image.name()),
        KeyValue::new("server.address", image.registry().to_string()),
    ];
    if let Some(tag) = image.tag() {
        let tags = Array::String(vec![StringValue::from(tag.to_string())]);
        attributes.push(KeyValue::new("container.image.tags", Value::Array(tags)));
    }
    attributes
}

async fn track(
    records: &[WorkloadRecord],
    secrets: &PullSecrets,
    registry: &RegistryClient,
    filter: &ImageFilter,
) -> Tracked {
    let mut tracked = Tracked { workloads: records.len(), ..Tracked::default() };
    let mut users: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for record in records {
        let credentials = secrets.for_workload(record).await;
        let w = &record.workload;
        for problem in &credentials.problems {
            tracing::debug!(workload = %format!("{} {}/{}", w.kind, w.namespace, w.name), "{problem}");
        }
        for container in &record.containers {
            let parsed = registry.config().parse_image(&container.image);
            if !filter.admits(&container.image, parsed.as_ref().ok().map(|r| r.to_string()).as_deref()) {
                continue;
            }
            let mut attributes = vec![
                KeyValue::new("k8s.namespace.name", w.namespace.clone()),
                KeyValue::new(workload_name_attribute(w.kind), w.name.clone()),
                KeyValue::new("pullcheck.workload.kind", w.kind.as_str()),
                KeyValue::new("k8s.container.name", container.name.clone()),
            ];
            let key = match parsed {
                Ok(image) => {
                    attributes.extend(image_attributes(&image));
                    let credential = credentials.lookup(&image).cloned();
                    let key = (image, credential);
                    users
                        .entry(key.clone())
                        .or_default()
                        .push(format!("{} {}/{} ({})", w.kind, w.namespace, w.name, container.name));
                    Ok(key)
                }
                Err(e) => {
                    attributes.push(KeyValue::new("container.image.name", container.image.clone()));
                    Err(e.to_string())
                }
            };
            tracked.series.push((attributes, key));
        }
    }
    tracked.keys = users
        .into_iter()
        .map(|(key, mut workloads)| {
            workloads.sort();
            let attributes = image_attributes(&key.0);
            (key, KeyUsers { workloads, attributes })
        })
        .collect();
    tracked
}

/// The per-container series with their current states (none while pending).
fn series(tracked: &Tracked, states: &HashMap<Key, ProbeResult>) -> Arc<Vec<(Vec<KeyValue>, State)>> {
    Arc::new(
        tracked
            .series
            .iter()
            .filter_map(|(attributes, key)| {
                let state = match key {
                    Ok(key) => states.get(key)?.state,
                    Err(_) => State::BadImageFormat,
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
    let bad = tracked.series.iter().filter(|(_, k)| k.is_err()).count() as u64;
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
    let needs_namespaces = !settings.selection.namespace_selector.is_empty();
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

    let mut platforms = Arc::new(settings.platforms.clone().unwrap_or_default());
    let mut nodes_forbidden_said = false;
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
                        match list_node_platforms(&kube_client).await {
                            Ok(found) => platforms = Arc::new(found),
                            Err(e) if !nodes_forbidden_said => {
                                nodes_forbidden_said = true;
                                tracing::warn!("{e}; indexes are not checked for the nodes' platforms");
                            }
                            Err(_) => {}
                        }
                    }
                    let records = store.read().unwrap_or_else(|p| p.into_inner()).selected(&settings.selection);
                    let fresh = track(&records, &secrets, &registry, &settings.filter).await;
                    let removed = scheduler.sync(fresh.keys.keys().map(|k| (k.clone(), k.0.registry().to_string())));
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
                start_probes(&mut probes, batch, &tracked, &registry, &platforms);
            }
            _ = refill.tick(), if room_freed => {
                room_freed = false;
                let more = scheduler.take(Instant::now(), |r| registry.pause_remaining(r).is_none());
                last_batch += more.len();
                start_probes(&mut probes, more, &tracked, &registry, &platforms);
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((key, result)) = done else { continue };
                room_freed |= scheduler.wants_room();
                scheduler.complete(&key, Instant::now(), result.state != State::Available);
                metrics.record_probe(&result.registry, result.state, result.duration);
                let Some(users) = tracked.keys.get(&key) else { continue };
                let previous = states.get(&key).map(|r| r.state);
                if previous != Some(result.state) {
                    log.transition(&key.0.to_string(), &users.attributes, previous, &result, &users.workloads);
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
    platforms: &Arc<Vec<Platform>>,
) {
    for key in keys {
        let workloads = tracked.keys.get(&key).map_or(0, |u| u.workloads.len());
        let client = registry.clone();
        let platforms = platforms.clone();
        probes.spawn(async move {
            let result = client.probe_for(&key.0, key.1.as_ref(), &platforms, workloads).await;
            (key, result)
        });
    }
}

/// `/healthz`: 200 while the process serves. `/readyz`: 200 once the inventory is synced.
async fn serve_health(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let (status, body) = match path {
                "/healthz" | "/livez" => ("200 OK", "ok\n"),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "ready\n"),
                "/readyz" => ("503 Service Unavailable", "inventory not synced yet\n"),
                _ => ("404 Not Found", "not found\n"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
