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

fn resource(env: &dyn Env, settings: &ResourceSettings) -> Resource {
    let mut builder = Resource::builder();
    let named_by_env = env.var("OTEL_SERVICE_NAME").is_some()
        || env
            .var("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
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
