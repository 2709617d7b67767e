//! The metrics of docs/telemetry.md. Per-series gauges are observable: each collection reports exactly
//! the series of the current inventory, so a deleted workload's series is simply gone and a
//! recovered image flips back to 1 at once.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use super::attributes::{replacement_attributes, series_attributes, server_attributes};
use crate::inventory::keys::{Series, WorkloadSeries};
use crate::registry::{RateLimit, RequestRecord, State};

/// What one workload container's gauges report: each value only when known. 16 bytes: the
/// container's series is held flat (its workload's series and which container), since a
/// [`Series`] beside three bytes would take 24 (docs/architecture.md, "Footprint").
#[derive(Clone, Debug)]
pub struct ContainerGauges {
    workload: Arc<WorkloadSeries>,
    container: u32,
    /// Its image's state (`None` while pending: no point then).
    pub state: Option<State>,
    /// Whether some running pod runs another digest than the tag's.
    pub drift: Option<bool>,
    /// On a deprecated registry: whether the replacement can be pulled today.
    pub replacement: Option<bool>,
}

impl ContainerGauges {
    /// The gauges of `series`' container (`None` only for an index past `u32`).
    pub fn new(series: Series, state: Option<State>, drift: Option<bool>, replacement: Option<bool>) -> Option<Self> {
        let (workload, container) = series.into_parts();
        let container = u32::try_from(container).ok()?;
        Some(Self { workload, container, state, drift, replacement })
    }

    pub fn series(&self) -> Option<Series> {
        Series::new(self.workload.clone(), self.container as usize)
    }
}

/// What the observable gauges report at the next collection.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per (workload, container) with something known, one entry for all its gauges (one
    /// list, not one per gauge: 16 bytes a container, docs/architecture.md "Footprint").
    /// Shared: rebuilt only when a state or the inventory changes, not every tick. The
    /// attributes are built at collection: between collections the uses are all there is.
    pub containers: Arc<Vec<ContainerGauges>>,
    /// Tracked image keys per state, `pending` included.
    pub keys_by_state: Vec<(State, u64)>,
    pub workloads: u64,
    pub window_coverage: f64,
    pub batch_size: u64,
    /// This replica leads (always, without leader election): only a leader has image series.
    pub leader: bool,
}

pub struct Metrics {
    probes: Counter<u64>,
    probe_duration: Histogram<f64>,
    registry_requests: Counter<u64>,
    request_duration: Histogram<f64>,
    /// The last pull budget each registry announced, per credential name.
    rate_limits: Arc<RwLock<RateLimits>>,
    snapshot: Arc<RwLock<Snapshot>>,
    _gauges: Vec<ObservableGauge<i64>>,
    _ratios: Vec<ObservableGauge<f64>>,
}

pub const STATE_ATTRIBUTE: &str = "pullcheck.image.state";
/// Whose pull budget a rate-limit gauge reports (its name, never its content).
pub const CREDENTIAL_ATTRIBUTE: &str = "pullcheck.credential.source";

/// (registry host, credential name) → the last budget it announced. Bounded by the registries
/// times the credentials in use: names, never contents.
pub type RateLimits = BTreeMap<(String, String), RateLimit>;

/// The semantic conventions' explicit bucket boundaries for `http.client.request.duration`.
pub const HTTP_CLIENT_DURATION_BOUNDARIES: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

fn read(snapshot: &RwLock<Snapshot>) -> std::sync::RwLockReadGuard<'_, Snapshot> {
    snapshot.read().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn new(meter: &Meter) -> Self {
        let snapshot = Arc::new(RwLock::new(Snapshot::default()));
        let s = snapshot.clone();
        let available = meter
            .i64_observable_gauge("pullcheck.image.available")
            .with_description(
                "1 when the image of a workload's container can be pulled now, 0 when not (no point while pending)",
            )
            .with_callback(move |observer| {
                for c in read(&s).containers.iter() {
                    let (Some(state), Some(series)) = (c.state, c.series()) else { continue };
                    observer.observe(i64::from(state == State::Available), &series_attributes(&series));
                }
            })
            .build();
        let s = snapshot.clone();
        let status = meter
            .i64_observable_gauge("pullcheck.image.status")
            .with_description(
                "Always 1; pullcheck.image.state carries the current probe state of the workload's container",
            )
            .with_callback(move |observer| {
                for c in read(&s).containers.iter() {
                    let (Some(state), Some(series)) = (c.state, c.series()) else { continue };
                    let mut with_state = series_attributes(&series);
                    with_state.push(KeyValue::new(STATE_ATTRIBUTE, state.as_str()));
                    observer.observe(1, &with_state);
                }
            })
            .build();
        let s = snapshot.clone();
        let images = meter
            .i64_observable_gauge("pullcheck.images")
            .with_description("Tracked image keys (image + credential) by current state")
            .with_callback(move |observer| {
                for (state, n) in &read(&s).keys_by_state {
                    observer.observe(*n as i64, &[KeyValue::new(STATE_ATTRIBUTE, state.as_str())]);
                }
            })
            .build();
        let s = snapshot.clone();
        let workloads = meter
            .i64_observable_gauge("pullcheck.workloads")
            .with_description("Tracked workloads")
            .with_callback(move |observer| observer.observe(read(&s).workloads as i64, &[]))
            .build();
        let s = snapshot.clone();
        let batch = meter
            .i64_observable_gauge("pullcheck.schedule.batch.size")
            .with_description("Keys probed in the last scheduler tick")
            .with_callback(move |observer| {
                let snapshot = read(&s);
                // A standby schedules nothing: it reports no schedule.
                if snapshot.leader {
                    observer.observe(snapshot.batch_size as i64, &[]);
                }
            })
            .build();
        let s = snapshot.clone();
        let drift = meter
            .i64_observable_gauge("pullcheck.image.drift")
            .with_description(
                "1 when some running pod of the workload's container runs another digest than its tag resolves to now, 0 when all match; no point when unknown",
            )
            .with_callback(move |observer| {
                for c in read(&s).containers.iter() {
                    let (Some(drifted), Some(series)) = (c.drift, c.series()) else { continue };
                    observer.observe(i64::from(drifted), &series_attributes(&series));
                }
            })
            .build();
        let s = snapshot.clone();
        let replacement = meter
            .i64_observable_gauge("pullcheck.image.replacement.available")
            .with_description(
                "For a container whose image is on a deprecated registry: 1 when the same image under the replacement registry can be pulled now, 0 when not",
            )
            .with_callback(move |observer| {
                for c in read(&s).containers.iter() {
                    let (Some(available), Some(series)) = (c.replacement, c.series()) else { continue };
                    observer.observe(i64::from(available), &replacement_attributes(&series));
                }
            })
            .build();
        let s = snapshot.clone();
        let leader = meter
            .i64_observable_gauge("pullcheck.leader")
            .with_description("1 on the replica that probes and exports image series, 0 on standbys")
            .with_callback(move |observer| observer.observe(i64::from(read(&s).leader), &[]))
            .build();
        let rate_limits: Arc<RwLock<RateLimits>> = Arc::default();
        let budget_gauge = |name: &'static str, description: &'static str, value: fn(&RateLimit) -> u64| {
            let budgets = rate_limits.clone();
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    let budgets = budgets.read().unwrap_or_else(|p| p.into_inner());
                    for ((host, credential), budget) in budgets.iter() {
                        let mut attributes = server_attributes(host);
                        attributes.push(KeyValue::new(CREDENTIAL_ATTRIBUTE, credential.clone()));
                        observer.observe(i64::try_from(value(budget)).unwrap_or(i64::MAX), &attributes);
                    }
                })
                .build()
        };
        let remaining = budget_gauge(
            "pullcheck.registry.rate_limit.remaining",
            "Requests left in the registry's current rate-limit window (its ratelimit-remaining header), per credential",
            |b| b.remaining,
        );
        let limit = budget_gauge(
            "pullcheck.registry.rate_limit.limit",
            "Requests the registry allows per rate-limit window (its ratelimit-limit header), per credential",
            |b| b.limit,
        );
        let s = snapshot.clone();
        let coverage = meter
            .f64_observable_gauge("pullcheck.schedule.window.coverage")
            .with_description("Fraction of image keys probed within the current window")
            .with_callback(move |observer| {
                let snapshot = read(&s);
                if snapshot.leader {
                    observer.observe(snapshot.window_coverage, &[]);
                }
            })
            .build();
        Self {
            probes: meter.u64_counter("pullcheck.probes").with_description("Registry probes by outcome").build(),
            probe_duration: meter
                .f64_histogram("pullcheck.probe.duration")
                .with_unit("s")
                .with_description("Duration of a registry probe, retries and token fetches included")
                .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .build(),
            registry_requests: meter
                .u64_counter("pullcheck.registry.requests")
                .with_description("HTTP requests to registries and token services")
                .build(),
            request_duration: meter
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP client requests.")
                .with_boundaries(HTTP_CLIENT_DURATION_BOUNDARIES.to_vec())
                .build(),
            snapshot,
            _gauges: vec![available, status, images, workloads, batch, leader, drift, replacement, remaining, limit],
            rate_limits,
            _ratios: vec![coverage],
        }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    pub fn record_probe(&self, registry: &str, state: State, duration: Duration) {
        let mut attributes = server_attributes(registry);
        attributes.push(KeyValue::new(STATE_ATTRIBUTE, state.as_str()));
        self.probes.add(1, &attributes);
        self.probe_duration.record(duration.as_secs_f64(), &attributes);
    }

    /// The pull budget `host` announced to `credential` (a name: `credentials::credential_name`).
    pub fn record_rate_limit(&self, host: &str, credential: &str, budget: RateLimit) {
        let mut budgets = self.rate_limits.write().unwrap_or_else(|p| p.into_inner());
        budgets.insert((host.to_string(), credential.to_string()), budget);
    }

    /// A request to a registry or token service ended: counted on `pullcheck.registry.requests`
    /// (as before) and timed on the semantic conventions' `http.client.request.duration`, so
    /// backends' ready-made HTTP client dashboards work unchanged.
    pub fn record_request(&self, request: &RequestRecord<'_>) {
        let status = request.status.map(|s| KeyValue::new("http.response.status_code", i64::from(s)));
        let mut attributes = server_attributes(request.host);
        attributes.extend(status.clone());
        self.registry_requests.add(1, &attributes);
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method.to_string()),
            KeyValue::new("server.address", request.address.to_string()),
            KeyValue::new("server.port", request.port),
        ];
        attributes.extend(status);
        if let Some(error_type) = request.error_type {
            attributes.push(KeyValue::new("error.type", error_type.to_string()));
        }
        self.request_duration.record(request.duration.as_secs_f64(), &attributes);
    }
}
