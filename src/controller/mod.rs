//! `pullcheck run`: watchers → store → [`tracker`] (image uses, off the loop) → [`core`]
//! (scheduler, states, series) → probes → telemetry, until shutdown. The loop here only moves
//! events: it never waits on the API server, so probes, refills and shutdown are always served.

pub mod core;
pub mod leader;
pub mod tracked;
pub mod tracker;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use self::core::{Controller, ProbeJob};
use self::leader::{Election, LeaderSettings};
use self::tracker::{Tracker, TrackerSettings};
use crate::health::serve_health;
use crate::inventory::selection::Selection;
use crate::inventory::store::{SharedStore, Store};
use crate::platform::Platform;
use crate::registry::{ProbeResult, RegistryClient, State};
use crate::schedule::{Jitter, ScheduleSettings};
use crate::sources::cluster::{Lists, scopes, watch_namespaces, watch_scope};
use crate::sources::events::watch_pull_failures;
use crate::sources::secrets::PullSecrets;
use crate::telemetry::logs::TransitionLog;
use crate::telemetry::metrics::Metrics;

pub struct ControllerSettings {
    pub schedule: ScheduleSettings,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub selection: Selection,
    pub health_addr: Option<SocketAddr>,
    pub secret_ttl: Duration,
    /// Objects per list page of the watchers' initial lists.
    pub list_page_size: u32,
    /// How often a kind RBAC forbids is tried again.
    pub rbac_recheck: Duration,
    /// Platforms every index must cover; `None`: those of the cluster's nodes, read again
    /// with the pull secrets.
    pub platforms: Option<Vec<Platform>>,
    /// `--leader-elect`: probe and export image series only while holding the lease.
    pub leader_election: Option<LeaderSettings>,
}

/// Waits for a leadership change; `None` when there is no election (or it ended).
async fn leadership_change(leading: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    let Some(receiver) = leading.as_mut() else { return std::future::pending().await };
    match receiver.changed().await {
        Ok(()) => Some(*receiver.borrow_and_update()),
        Err(_) => {
            *leading = None;
            None
        }
    }
}

/// Probes that finished free in-flight room; what the tick could not start then starts here.
const REFILL_INTERVAL: Duration = Duration::from_millis(10);

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
    let mut background = JoinSet::new();
    let lists = Lists::new(settings.list_page_size).with_rbac_recheck(settings.rbac_recheck);
    for scope in watch_scopes.iter().cloned() {
        background.spawn(watch_scope(kube_client.clone(), scope, store.clone(), lists.clone()));
    }
    if settings.selection.needs_namespace_labels() {
        background.spawn(watch_namespaces(kube_client.clone(), store.clone()));
    }
    // Failed pulls kubelet reports: their images are probed at once.
    let (failures_tx, mut failures) = mpsc::channel(256);
    match &settings.namespaces {
        None => {
            background.spawn(watch_pull_failures(kube_client.clone(), None, failures_tx));
        }
        Some(namespaces) => {
            for namespace in namespaces {
                background.spawn(watch_pull_failures(
                    kube_client.clone(),
                    Some(namespace.clone()),
                    failures_tx.clone(),
                ));
            }
        }
    }
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = settings.health_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
                tracing::info!(address = %bound, "serving /healthz and /readyz");
                background.spawn(serve_health(listener, ready.clone()));
            }
            Err(e) => tracing::error!(%addr, "cannot serve /healthz and /readyz: {e}"),
        }
    }
    let (changes_tx, mut changes) = mpsc::channel(16);
    let tracker = Tracker::new(
        store.clone(),
        PullSecrets::new(kube_client.clone(), settings.secret_ttl),
        kube_client.clone(),
        registry.clone(),
        TrackerSettings {
            scopes: watch_scopes,
            selection: settings.selection.clone(),
            refresh: settings.secret_ttl,
            platforms: settings.platforms.clone(),
        },
    );
    background.spawn(tracker.run(changes_tx));

    let tick = settings.schedule.tick;
    let mut jitter = Jitter::from_entropy();
    let now = Instant::now();
    let running_of = store.clone();
    let mut controller = Controller::new(settings.schedule.clone(), now, jitter.below(tick), metrics, log)
        .with_running(Box::new(move || crate::inventory::store::read(&running_of).running()));
    // Replicas started together do not tick together; the first batch goes as soon as the
    // inventory is in, not at the first tick, and the ticks then start again a tick after it:
    // a jittered tick that fell during the initial lists came at once after the first batch,
    // two batches in one tick at the registries (docs/architecture.md, "At Kubernetes' limits").
    let mut ticker = ticks(now + jitter.below(tick), tick);
    let mut refill = tokio::time::interval(REFILL_INTERVAL.min(tick));
    refill.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut room_freed = false;
    let mut probes: JoinSet<(ProbeJob, ProbeResult)> = JoinSet::new();
    let election = settings.leader_election.clone().map(|s| Election::start(kube_client.clone(), s));
    let mut leading = election.as_ref().map(|e| e.leading.clone());
    if election.is_some() {
        controller.on_standby();
    }
    let open = |registry: &RegistryClient| {
        let registry = registry.clone();
        move |r: &str| registry.pause_remaining(r).is_none()
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(now_leading) = leadership_change(&mut leading) => {
                if now_leading && !controller.is_leading() {
                    controller.on_leading();
                    start(&mut probes, controller.on_tick(Instant::now(), open(&registry)), &registry);
                    ticker.reset();
                } else if !now_leading && controller.is_leading() {
                    // Stop at once: the lease may pass to another replica soon.
                    probes.abort_all();
                    controller.on_standby();
                }
            }
            Some(failure) = failures.recv() => {
                if !settings.selection.admits_namespace_name(&failure.namespace) {
                    continue;
                }
                match registry.config().parse_image(&failure.image) {
                    Ok(image) => start(&mut probes, controller.on_pull_failure(failure, image, Instant::now()), &registry),
                    Err(e) => tracing::debug!(image = %failure.image, "failed-pull event names an unparsable image: {e}"),
                }
            }
            Some(change) = changes.recv() => {
                let first = !controller.is_ready();
                controller.on_inventory_change(change);
                if first && controller.is_ready() {
                    ready.store(true, Ordering::Relaxed);
                    tracing::info!(workloads = controller.tracked().workloads(), "inventory synced");
                    start(&mut probes, controller.on_tick(Instant::now(), open(&registry)), &registry);
                    ticker.reset();
                }
            }
            _ = ticker.tick() => {
                start(&mut probes, controller.on_tick(Instant::now(), open(&registry)), &registry);
            }
            _ = refill.tick(), if room_freed => {
                room_freed = false;
                start(&mut probes, controller.on_refill(Instant::now(), open(&registry)), &registry);
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                // Only cancellation fails a join: a probe that panics still reports (see `start`).
                let Ok((job, result)) = done else { continue };
                room_freed |= controller.on_probe_done(job, result, Instant::now());
            }
        }
    }
    tracing::info!("shutting down");
    probes.abort_all();
    background.abort_all();
    controller.publish();
    if let Some(election) = election {
        // A graceful exit hands the lease over: the standby takes over at its next retry.
        election.release(Duration::from_secs(1)).await;
    }
}

/// The ticks, on a grid from `first`: a tick served late (the one thread busy with a batch of
/// watch events) does not move the ones after it. With `Delay`, each late tick pushed all later
/// ones back, and the batches drifted against the registries' clock: one tick-long span there
/// then held a batch and part of the next (docs/architecture.md, "At Kubernetes' limits").
fn ticks(first: Instant, tick: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(first, tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}

fn start(probes: &mut JoinSet<(ProbeJob, ProbeResult)>, jobs: Vec<ProbeJob>, registry: &RegistryClient) {
    for job in jobs {
        let client = registry.clone();
        probes.spawn(async move {
            let key = &job.key;
            let probe =
                client.probe_triggered(&key.image, &job.chain, &key.platforms, job.workloads, job.trigger.as_ref());
            // A probe that panics completes its key as an error, so its in-flight slot is freed.
            let result = match AssertUnwindSafe(probe).catch_unwind().await {
                Ok(result) => result,
                Err(_) => {
                    ProbeResult::failed(key.registry(), State::UnknownError, "the probe panicked (a pullcheck bug)")
                }
            };
            (job, result)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tick_served_late_keeps_the_grid() {
        let tick = Duration::from_secs(15);
        let first = Instant::now() + tick;
        let mut ticker = ticks(first, tick);
        ticker.tick().await;
        // The loop was busy past the second tick's time by 40 ms: it is served late, at once.
        tokio::time::advance(tick + Duration::from_millis(40)).await;
        ticker.tick().await;
        ticker.tick().await;
        assert_eq!(Instant::now() - first, 2 * tick, "the third tick on the grid, not 40 ms after it");
    }
}
