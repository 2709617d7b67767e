//! The inventory tracker: off the control loop, it turns the store's changes into image uses —
//! reading pull secrets and the nodes' platforms from the API server as it goes — and hands the
//! loop only what changed. A status-only update changes no record and costs nothing here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::tracked::InventoryChange;
use crate::inventory::keys::{ImageUse, resolve};
use crate::inventory::running::running_digests;
use crate::inventory::selection::Selection;
use crate::inventory::store::{SharedStore, WatchScope, read, write};
use crate::inventory::{WorkloadRecord, WorkloadRef};
use crate::platform::Platform;
use crate::registry::RegistryClient;
use crate::sources::nodes::required_platforms;
use crate::sources::secrets::PullSecrets;

/// How often the store is looked at: a generation compare, nothing more when nothing changed.
const LOOK_INTERVAL: Duration = Duration::from_millis(100);

pub struct TrackerSettings {
    pub scopes: Vec<WatchScope>,
    pub selection: Selection,
    /// Secrets and the nodes' platforms are read again this often (rotations show up then).
    pub refresh: Duration,
    /// `--platform`; `None`: the nodes'.
    pub platforms: Option<Vec<Platform>>,
}

pub struct Tracker {
    store: SharedStore,
    secrets: PullSecrets,
    kube: kube::Client,
    registry: RegistryClient,
    settings: TrackerSettings,
    platforms: Arc<[Platform]>,
    nodes_warning_said: bool,
}

impl Tracker {
    pub fn new(
        store: SharedStore,
        secrets: PullSecrets,
        kube: kube::Client,
        registry: RegistryClient,
        settings: TrackerSettings,
    ) -> Self {
        let platforms = Arc::from(settings.platforms.clone().unwrap_or_default());
        Self { store, secrets, kube, registry, settings, platforms, nodes_warning_said: false }
    }

    /// Sends every change until the loop's receiver is gone.
    pub async fn run(mut self, changes: mpsc::Sender<InventoryChange>) {
        let mut look = tokio::time::interval(LOOK_INTERVAL);
        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refreshed: Option<Instant> = None;
        let mut seen_generation = None;
        let mut seen_running = None;
        loop {
            look.tick().await;
            let needs_namespaces = self.settings.selection.needs_namespace_labels();
            let (synced, generation, running_generation) = {
                let store = read(&self.store);
                (store.is_synced(&self.settings.scopes, needs_namespaces), store.generation, store.running_generation)
            };
            if !synced {
                continue;
            }
            // What runs (pods' digests): apart from the records, only when it changed.
            if seen_running != Some(running_generation) && seen_generation.is_some() {
                seen_running = Some(running_generation);
                let running = {
                    let store = read(&self.store);
                    let (pods, owners) = store.running();
                    running_digests(pods, owners)
                };
                if changes.send(InventoryChange::Running(running)).await.is_err() {
                    return;
                }
            }
            let refresh_due = refreshed.is_none_or(|at| at.elapsed() >= self.settings.refresh);
            if !refresh_due && seen_generation == Some(generation) {
                continue;
            }
            seen_generation = Some(generation);
            let taken = write(&self.store).take_changes();
            // Everything anew when secrets may have rotated or platforms moved (the refresh), or
            // when a change concerns every workload (namespace labels).
            let change = if refresh_due || taken.all {
                if refresh_due {
                    refreshed = Some(Instant::now());
                    self.refresh_platforms().await;
                }
                let records = read(&self.store).selected(&self.settings.selection);
                InventoryChange::Reset(self.resolve_all(&records).await)
            } else if taken.workloads.is_empty() {
                continue;
            } else {
                let records: Vec<(WorkloadRef, Option<WorkloadRecord>)> = {
                    let store = read(&self.store);
                    let selected = |w: WorkloadRef| {
                        let record = store.selected_record(&w, &self.settings.selection);
                        (w, record)
                    };
                    taken.workloads.into_iter().map(selected).collect()
                };
                let mut updates = Vec::with_capacity(records.len());
                for (workload, record) in records {
                    let uses = match record {
                        Some(record) => Some(self.resolve_one(&record).await),
                        None => None,
                    };
                    updates.push((workload, uses));
                }
                InventoryChange::Workloads(updates)
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    }

    async fn refresh_platforms(&mut self) {
        if self.settings.platforms.is_some() {
            return;
        }
        match required_platforms(None, &self.kube).await {
            (found, None) => self.platforms = Arc::from(found),
            (_, Some(warning)) if !self.nodes_warning_said => {
                self.nodes_warning_said = true;
                tracing::warn!("{warning}");
            }
            (_, Some(_)) => {}
        }
    }

    async fn resolve_all(&self, records: &[WorkloadRecord]) -> Vec<(WorkloadRef, Vec<ImageUse>)> {
        let mut all = Vec::with_capacity(records.len());
        for record in records {
            all.push((record.workload.clone(), self.resolve_one(record).await));
        }
        all
    }

    /// One workload's uses, with the pull secrets of its own namespace.
    async fn resolve_one(&self, record: &WorkloadRecord) -> Vec<ImageUse> {
        let (credentials, problems) = self.secrets.for_workload(record).await;
        for problem in &problems {
            tracing::debug!(workload = %record.workload, "{problem}");
        }
        resolve(
            [record],
            |_| Some(&credentials),
            self.registry.config(),
            &self.settings.selection.images,
            &self.platforms,
        )
    }
}
