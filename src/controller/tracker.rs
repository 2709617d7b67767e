//! The inventory tracker: off the control loop, it turns the store's changes into image uses —
//! reading pull secrets and the nodes' platforms from the API server as it goes — and hands the
//! loop only what changed. A status-only update changes no record and costs nothing here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::tracked::{InventoryChange, WorkloadUses};
use crate::inventory::keys::{ImageUse, resolve};
use crate::inventory::selection::Selection;
use crate::inventory::store::{SharedStore, WatchScope, read, write};
use crate::inventory::{WorkloadRecord, WorkloadRef};
use crate::platform::Platform;
use crate::registry::RegistryClient;
use crate::sources::nodes::required_platforms;
use crate::sources::secrets::PullSecrets;

/// How often the store is looked at: a generation compare, nothing more when nothing changed.
const LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// Workloads per part of a reset: the uses of this many are held at once, not a cluster's.
const RESET_PART: usize = 256;

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
                if changes.send(InventoryChange::RunningChanged).await.is_err() {
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
            if refresh_due || taken.all {
                if refresh_due {
                    refreshed = Some(Instant::now());
                    self.refresh_platforms().await;
                }
                let records = read(&self.store).records();
                let mut parts = records.chunks(RESET_PART).peekable();
                loop {
                    let part: Vec<WorkloadRef> =
                        parts.next().unwrap_or_default().iter().map(|r| r.workload.clone()).collect();
                    let done = parts.peek().is_none();
                    let part = self.resolve_each(&part).await;
                    if changes.send(InventoryChange::Reset { part, done }).await.is_err() {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            } else if !taken.workloads.is_empty() {
                let updates = self.resolve_each(&taken.workloads).await;
                if changes.send(InventoryChange::Workloads(updates)).await.is_err() {
                    return;
                }
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

    /// Each workload's uses (`None`: gone, or not selected), its record read from the store.
    async fn resolve_each(&self, workloads: &[WorkloadRef]) -> WorkloadUses {
        let records: Vec<Option<Arc<WorkloadRecord>>> = {
            let store = read(&self.store);
            workloads.iter().map(|w| store.selected_record(w, &self.settings.selection)).collect()
        };
        let mut resolved = Vec::with_capacity(records.len());
        for (workload, record) in workloads.iter().zip(records) {
            let uses = match record {
                Some(record) => {
                    let uses = self.resolve_one(&record).await;
                    Some((record, uses))
                }
                None => None,
            };
            resolved.push((workload.clone(), uses));
        }
        resolved
    }

    /// One workload's uses, with the pull secrets of its own namespace.
    async fn resolve_one(&self, record: &WorkloadRecord) -> Vec<ImageUse> {
        let (credentials, problems) = self.secrets.for_workload_with_providers(record, self.registry.config()).await;
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
