//! OpenTelemetry for `run`: OTLP metrics, one trace per probe, a log per state change.
//! Exporters run on the SDK's own threads with bounded queues: a collector that is down or slow
//! never blocks probing and never grows memory without bound.

pub mod attributes;
pub mod export_health;
pub mod logs;
pub mod metrics;
pub mod otlp;

use opentelemetry::KeyValue;
use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::error::Result;
use export_health::{SignalHealth, Watched};
use otlp::{Env, Signal};

pub const SCOPE: &str = "pullcheck";

/// What the resource says about this instance.
#[derive(Clone, Debug, Default)]
pub struct ResourceSettings {
    /// `k8s.cluster.name`; OTEL_RESOURCE_ATTRIBUTES may set it too.
    pub cluster_name: Option<String>,
    /// `k8s.cluster.uid`, given or read from the cluster (see [`ClusterUidSource`]).
    pub cluster_uid: Option<String>,
    pub instance_id: String,
}

pub struct Telemetry {
    pub meter_provider: SdkMeterProvider,
    pub tracer_provider: SdkTracerProvider,
    pub logger_provider: SdkLoggerProvider,
    pub exporting: bool,
    /// `pullcheck.telemetry.export.failures` and `.dropped`, observed while these live.
    _export_health: Vec<opentelemetry::metrics::ObservableCounter<u64>>,
}

/// `--cluster-uid`'s value that turns the lookup off.
pub const CLUSTER_UID_OFF: &str = "none";

/// Where `k8s.cluster.uid` comes from (docs/telemetry.md, "Resource"): a value someone set wins
/// over the cluster's own, and setting one saves the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterUidSource {
    /// `--cluster-uid` / PULLCHECK_CLUSTER_UID: on the resource as given.
    Given(String),
    /// OTEL_RESOURCE_ATTRIBUTES names it: the SDK puts it on the resource.
    ResourceAttributes,
    /// `--cluster-uid none`, or OTEL_SDK_DISABLED (nothing is exported): not looked up.
    Off,
    /// The `kube-system` namespace's uid, read once at start.
    LookUp,
}

impl ClusterUidSource {
    /// `flag`: `--cluster-uid` (PULLCHECK_CLUSTER_UID); blank counts as not given.
    pub fn choose(flag: Option<&str>, env: &dyn Env) -> ClusterUidSource {
        match flag.map(str::trim).filter(|f| !f.is_empty()) {
            Some(CLUSTER_UID_OFF) => ClusterUidSource::Off,
            Some(uid) => ClusterUidSource::Given(uid.to_string()),
            None if sets_resource_attribute(env, "k8s.cluster.uid") => ClusterUidSource::ResourceAttributes,
            None if otlp::sdk_disabled(env) => ClusterUidSource::Off,
            None => ClusterUidSource::LookUp,
        }
    }
}

/// Whether OTEL_RESOURCE_ATTRIBUTES has `key`, read as the SDK reads it (`key=value` pairs
/// separated by commas, both sides trimmed).
fn sets_resource_attribute(env: &dyn Env, key: &str) -> bool {
    env.var("OTEL_RESOURCE_ATTRIBUTES")
        .is_some_and(|a| a.split(',').filter_map(|kv| kv.split_once('=')).any(|(k, _)| k.trim() == key))
}

fn resource(env: &dyn Env, settings: &ResourceSettings) -> Resource {
    let mut builder = Resource::builder();
    let named_by_env = env.var("OTEL_SERVICE_NAME").is_some() || sets_resource_attribute(env, "service.name");
    if !named_by_env {
        builder = builder.with_service_name(SCOPE);
    }
    builder = builder.with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", settings.instance_id.clone()),
    ]);
    if let Some(cluster) = &settings.cluster_name {
        builder = builder.with_attribute(KeyValue::new("k8s.cluster.name", cluster.clone()));
    }
    if let Some(uid) = &settings.cluster_uid {
        builder = builder.with_attribute(KeyValue::new("k8s.cluster.uid", uid.clone()));
    }
    builder.build()
}

impl Telemetry {
    /// Exporters from the environment; with OTEL_SDK_DISABLED=true, providers that export nothing.
    /// Call it outside the runtime's context: gRPC exporters are built on `runtime` (tonic's
    /// channel lives there), HTTP ones on a blocking client that must not be made inside it.
    pub fn init(env: &dyn Env, settings: &ResourceSettings, runtime: &tokio::runtime::Handle) -> Result<Self> {
        let resource = resource(env, settings);
        if otlp::sdk_disabled(env) {
            return Ok(Self {
                meter_provider: SdkMeterProvider::builder().with_resource(resource.clone()).build(),
                tracer_provider: SdkTracerProvider::builder().with_resource(resource.clone()).build(),
                logger_provider: SdkLoggerProvider::builder().with_resource(resource).build(),
                exporting: false,
                _export_health: Vec::new(),
            });
        }
        let on_runtime_if_grpc = |signal| -> Result<Option<tokio::runtime::EnterGuard<'_>>> {
            Ok((otlp::protocol(env, signal)? == otlp::Protocol::Grpc).then(|| runtime.enter()))
        };
        let health = |signal| SignalHealth::new(signal, otlp::endpoint_for_log(env, signal));
        let (metrics_health, traces_health, logs_health) =
            (health(Signal::Metrics), health(Signal::Traces), health(Signal::Logs));
        let metrics = {
            let _guard = on_runtime_if_grpc(Signal::Metrics)?;
            Watched::new(otlp::metric_exporter(env, &metrics_health)?, metrics_health.clone())
        };
        let spans = {
            let _guard = on_runtime_if_grpc(Signal::Traces)?;
            Watched::new(otlp::span_exporter(env, &traces_health)?, traces_health.clone())
        };
        let logs = {
            let _guard = on_runtime_if_grpc(Signal::Logs)?;
            Watched::new(otlp::log_exporter(env, &logs_health)?, logs_health.clone())
        };
        let meter_provider =
            SdkMeterProvider::builder().with_resource(resource.clone()).with_periodic_exporter(metrics).build();
        let export_health =
            export_health::instruments(&meter_provider.meter(SCOPE), &[metrics_health, traces_health, logs_health]);
        Ok(Self {
            meter_provider,
            tracer_provider: SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(spans)
                .build(),
            logger_provider: SdkLoggerProvider::builder().with_resource(resource).with_batch_exporter(logs).build(),
            exporting: true,
            _export_health: export_health,
        })
    }

    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meter_provider.meter(SCOPE)
    }

    pub fn tracer(&self) -> SdkTracer {
        self.tracer_provider.tracer(SCOPE)
    }

    pub fn logger(&self) -> SdkLogger {
        self.logger_provider.logger(SCOPE)
    }

    /// Flushes what is pending and stops the exporters (on SIGTERM, before exit).
    pub fn shutdown(&self) {
        for (signal, result) in [
            ("traces", self.tracer_provider.shutdown()),
            ("metrics", self.meter_provider.shutdown()),
            ("logs", self.logger_provider.shutdown()),
        ] {
            if let Err(e) = result {
                eprintln!("pullcheck: flushing {signal} at shutdown: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(resource_attributes: Option<&'static str>) -> HashMap<&'static str, &'static str> {
        resource_attributes.map(|a| ("OTEL_RESOURCE_ATTRIBUTES", a)).into_iter().collect()
    }

    #[test]
    fn a_cluster_uid_someone_set_wins_over_the_lookup() {
        let choose = ClusterUidSource::choose;
        assert_eq!(choose(None, &env(None)), ClusterUidSource::LookUp);
        assert_eq!(choose(Some("  "), &env(None)), ClusterUidSource::LookUp, "a blank env var is not a value");
        assert_eq!(choose(Some(" 1b2c "), &env(None)), ClusterUidSource::Given("1b2c".into()));
        assert_eq!(choose(Some("none"), &env(None)), ClusterUidSource::Off);
        let disabled = HashMap::from([("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(choose(None, &disabled), ClusterUidSource::Off, "nothing exported, nothing to look up");
        let attributes = env(Some("deployment.environment.name=prod, k8s.cluster.uid = 1b2c"));
        assert_eq!(choose(None, &attributes), ClusterUidSource::ResourceAttributes);
        assert_eq!(
            choose(Some("9f"), &attributes),
            ClusterUidSource::Given("9f".into()),
            "the flag wins, as --cluster-name"
        );
        for other in ["k8s.cluster.uid.extra=1", "k8s.cluster.name=k8s.cluster.uid", "k8s.cluster.uid"] {
            assert_eq!(choose(None, &env(Some(other))), ClusterUidSource::LookUp, "{other}");
        }
    }

    #[test]
    fn the_cluster_uid_goes_on_the_resource_beside_the_name() {
        let settings = ResourceSettings {
            cluster_name: Some("prod-eu".into()),
            cluster_uid: Some("1b2c".into()),
            instance_id: "pod-0".into(),
        };
        let with_uid = resource(&env(None), &settings);
        let get = |key: &'static str| with_uid.get(&opentelemetry::Key::from_static_str(key)).map(|v| v.to_string());
        assert_eq!(get("k8s.cluster.uid").as_deref(), Some("1b2c"));
        assert_eq!(get("k8s.cluster.name").as_deref(), Some("prod-eu"));
        let without = resource(&env(None), &ResourceSettings { cluster_uid: None, ..settings });
        assert!(without.get(&opentelemetry::Key::from_static_str("k8s.cluster.uid")).is_none());
    }
}
