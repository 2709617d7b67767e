//! Export failures seen, counted and told (docs/operations.md, "When the collector fails"): each
//! OTLP exporter is wrapped in [`Watched`], which sees every export's result. A failure is logged
//! at WARN with the endpoint and its cause once per [`REPORT_INTERVAL`] and cause (repeats are
//! counted, not logged), the first success after failures is logged once at INFO, and the
//! counts feed `pullcheck.telemetry.export.failures` and `pullcheck.telemetry.dropped`.
//!
//! The SDK's own reports of these errors (`otel_error!`) are compiled out: pullcheck builds it
//! without `internal-logs`, which would log every failed export, without the endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp::Signal;

/// A cause is logged at most once per interval and signal; what repeats in between is counted.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

pub const SIGNAL_ATTRIBUTE: &str = "pullcheck.telemetry.signal";

/// Why an export failed, as `error.type` says it: low-cardinality, no message text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    ConnectionRefused,
    /// No answer within OTEL_EXPORTER_OTLP_TIMEOUT.
    Timeout,
    /// Another transport failure (reset, TLS, name resolution).
    Transport,
    /// The collector answered with this HTTP status.
    HttpStatus(u16),
    /// The collector answered with this gRPC code (snake case: `unavailable`).
    Grpc(String),
    Other,
}

impl Cause {
    /// The `error.type` attribute: the status code for HTTP as the semantic conventions do.
    pub fn error_type(&self) -> String {
        match self {
            Cause::ConnectionRefused => "connection_refused".into(),
            Cause::Timeout => "timeout".into(),
            Cause::Transport => "transport_error".into(),
            Cause::HttpStatus(status) => status.to_string(),
            Cause::Grpc(code) => code.clone(),
            Cause::Other => "_OTHER".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Cause::ConnectionRefused => "connection refused".into(),
            Cause::Timeout => "no answer within the export timeout (OTEL_EXPORTER_OTLP_TIMEOUT)".into(),
            Cause::Transport => "transport error".into(),
            Cause::HttpStatus(413) => "HTTP 413: the collector refuses a batch this large".into(),
            Cause::HttpStatus(status) => format!("HTTP {status}"),
            Cause::Grpc(code) => format!("gRPC {code}"),
            Cause::Other => "export error".into(),
        }
    }
}

/// `ResourceExhausted` → `resource_exhausted`.
fn snake_case(code: &str) -> String {
    let mut out = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The cause of a failed export from the SDK's error text (0.33 carries the HTTP status or the
/// gRPC code, never the collector's message) and, for HTTP transport failures — which the SDK
/// reports as a bare "network error" — the cause [`ObservedHttpClient`] saw.
pub fn classify(message: &str, transport: Option<Cause>) -> Cause {
    let lower = message.to_ascii_lowercase();
    if let Some(status) = message.split("status code: ").nth(1) {
        let digits: String = status.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(status) = digits.parse() {
            return Cause::HttpStatus(status);
        }
    }
    if lower.contains("refused") {
        return Cause::ConnectionRefused;
    }
    if lower.contains("timed out") || lower.contains("timeout expired") || lower.contains("deadlineexceeded") {
        return Cause::Timeout;
    }
    if lower.contains("network error") {
        return transport.unwrap_or(Cause::Transport);
    }
    if let Some(code) = message.split("gRPC code: ").nth(1) {
        let code = code.split(':').next().unwrap_or_default().trim();
        if lower.contains("transport error") {
            return Cause::Transport;
        }
        if !code.is_empty() {
            return Cause::Grpc(snake_case(code));
        }
    }
    Cause::Other
}

/// What to log after an export.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A cause not logged within the interval: `repeats` more failures of it since it last was.
    Failing { cause: Cause, repeats: u64, failed_exports: u64, dropped: u64 },
    /// The first success after failures.
    Recovered { failed_exports: u64, dropped: u64, lasted: Duration },
}

/// Per signal: which failures to log and when the exporter recovered. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct FailureLog {
    /// Since when exports have been failing, and how much so far.
    outage: Option<(Instant, u64, u64)>,
    /// When each cause was last logged, and its repeats since.
    logged: BTreeMap<Cause, (Instant, u64)>,
}

impl FailureLog {
    pub fn failed(&mut self, now: Instant, cause: Cause, items: u64) -> Option<Report> {
        let (_, failed_exports, dropped) = self.outage.get_or_insert((now, 0, 0));
        *failed_exports += 1;
        *dropped += items;
        let (failed_exports, dropped) = (*failed_exports, *dropped);
        match self.logged.get_mut(&cause) {
            Some((at, repeats)) if now.duration_since(*at) < REPORT_INTERVAL => {
                *repeats += 1;
                None
            }
            Some((at, repeats)) => {
                let report = Report::Failing { cause, repeats: *repeats, failed_exports, dropped };
                (*at, *repeats) = (now, 0);
                Some(report)
            }
            None => {
                self.logged.insert(cause.clone(), (now, 0));
                Some(Report::Failing { cause, repeats: 0, failed_exports, dropped })
            }
        }
    }

    pub fn succeeded(&mut self, now: Instant) -> Option<Report> {
        let (since, failed_exports, dropped) = self.outage.take()?;
        self.logged.clear();
        Some(Report::Recovered { failed_exports, dropped, lasted: now.duration_since(since) })
    }
}

/// Failed exports and the items they carried, by cause: what the metrics report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub failed_exports: u64,
    pub dropped: u64,
}

/// One signal's export health, shared by its exporter, its HTTP client and the metrics.
#[derive(Debug)]
pub struct SignalHealth {
    signal: Signal,
    /// Where the exports go, without credentials, for the log.
    endpoint: String,
    log: Mutex<FailureLog>,
    counts: Mutex<BTreeMap<String, Counts>>,
    /// The last transport failure the HTTP client saw (the SDK does not pass it on).
    transport: Mutex<Option<Cause>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SignalHealth {
    pub fn new(signal: Signal, endpoint: String) -> Arc<Self> {
        Arc::new(Self {
            signal,
            endpoint,
            log: Mutex::default(),
            counts: Mutex::default(),
            transport: Mutex::default(),
        })
    }

    pub fn counts(&self) -> BTreeMap<String, Counts> {
        lock(&self.counts).clone()
    }

    fn saw_transport_failure(&self, cause: Cause) {
        *lock(&self.transport) = Some(cause);
    }

    /// Counts and, when due, logs the outcome of one export of `items` items.
    fn record(&self, result: &OTelSdkResult, items: u64) {
        let now = Instant::now();
        let transport = lock(&self.transport).take();
        let report = match result {
            Ok(()) => lock(&self.log).succeeded(now),
            Err(OTelSdkError::AlreadyShutdown) => None,
            Err(error) => {
                let cause = match error {
                    OTelSdkError::Timeout(_) => Cause::Timeout,
                    OTelSdkError::InternalFailure(message) => classify(message, transport),
                    _ => Cause::Other,
                };
                let mut counts = lock(&self.counts);
                let entry = counts.entry(cause.error_type()).or_default();
                entry.failed_exports += 1;
                entry.dropped += items;
                drop(counts);
                lock(&self.log).failed(now, cause, items)
            }
        };
        let (signal, endpoint) = (self.signal.name(), self.endpoint.as_str());
        match report {
            Some(Report::Failing { cause, repeats, failed_exports, dropped }) => {
                let repeated = match repeats {
                    0 => String::new(),
                    n => format!("; {n} more like it since it was last logged"),
                };
                tracing::warn!(
                    signal,
                    endpoint,
                    error.type = cause.error_type(),
                    "exporting {signal} to {endpoint} failed: {}{repeated} ({failed_exports} failed exports, \
                     {dropped} items dropped since exports began failing)",
                    cause.describe()
                )
            }
            Some(Report::Recovered { failed_exports, dropped, lasted }) => tracing::info!(
                signal,
                endpoint,
                "exporting {signal} to {endpoint} works again after {failed_exports} failed exports over {:.1}s \
                 ({dropped} items dropped)",
                lasted.as_secs_f64()
            ),
            None => {}
        }
    }
}

/// An exporter whose every export's result is counted and, when due, logged.
#[derive(Debug)]
pub struct Watched<E> {
    inner: E,
    health: Arc<SignalHealth>,
}

impl<E> Watched<E> {
    pub fn new(inner: E, health: Arc<SignalHealth>) -> Self {
        Self { inner, health }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let items = batch.len() as u64;
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            self.health.record(&result, items);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Watched<E> {
    fn export(&self, batch: LogBatch<'_>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let items = batch.iter().count() as u64;
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            self.health.record(&result, items);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(&self, level: opentelemetry::logs::Severity, target: &str, name: Option<&str>) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Data points in one collection: the items a failed metrics export drops.
fn data_points(metrics: &ResourceMetrics) -> u64 {
    fn points<T>(data: &MetricData<T>) -> usize {
        match data {
            MetricData::Gauge(g) => g.data_points().count(),
            MetricData::Sum(s) => s.data_points().count(),
            MetricData::Histogram(h) => h.data_points().count(),
            MetricData::ExponentialHistogram(e) => e.data_points().count(),
        }
    }
    metrics
        .scope_metrics()
        .flat_map(|scope| scope.metrics())
        .map(|metric| match metric.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        })
        .sum::<usize>() as u64
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    fn export(&self, metrics: &ResourceMetrics) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let items = data_points(metrics);
        let export = self.inner.export(metrics);
        async move {
            let result = export.await;
            self.health.record(&result, items);
            result
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The blocking HTTP client of the http/protobuf exporters, noting why a request got no answer:
/// the SDK turns every transport failure into "network error".
#[derive(Debug)]
pub struct ObservedHttpClient {
    inner: reqwest::blocking::Client,
    health: Arc<SignalHealth>,
}

impl ObservedHttpClient {
    pub fn new(inner: reqwest::blocking::Client, health: Arc<SignalHealth>) -> Self {
        Self { inner, health }
    }
}

/// The cause of a reqwest transport failure.
fn transport_cause(error: &(dyn std::error::Error + 'static)) -> Cause {
    let Some(error) = error.downcast_ref::<reqwest::Error>() else { return Cause::Transport };
    if error.is_timeout() {
        return Cause::Timeout;
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Cause::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return Cause::Timeout,
                _ => {}
            }
        }
        source = inner.source();
    }
    Cause::Transport
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ObservedHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let result = self.inner.send_bytes(request).await;
        if let Err(error) = &result {
            self.health.saw_transport_failure(transport_cause(error.as_ref()));
        }
        result
    }
}

/// `pullcheck.telemetry.export.failures` and `pullcheck.telemetry.dropped`, observed from the
/// signals' counts at each collection. Keep them as long as the meter provider.
pub fn instruments(meter: &Meter, signals: &[Arc<SignalHealth>]) -> Vec<ObservableCounter<u64>> {
    let observe = |pick: fn(&Counts) -> u64| {
        let signals: Vec<Arc<SignalHealth>> = signals.to_vec();
        move |observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            for health in &signals {
                for (error_type, counts) in health.counts() {
                    let attributes = [
                        KeyValue::new(SIGNAL_ATTRIBUTE, health.signal.name()),
                        KeyValue::new("error.type", error_type),
                    ];
                    observer.observe(pick(&counts), &attributes);
                }
            }
        }
    };
    vec![
        meter
            .u64_observable_counter("pullcheck.telemetry.export.failures")
            .with_description("Failed OTLP exports (batches) by signal and cause")
            .with_callback(observe(|c| c.failed_exports))
            .build(),
        meter
            .u64_observable_counter("pullcheck.telemetry.dropped")
            .with_description("Spans, log records and metric data points in failed OTLP exports, by signal and cause")
            .with_callback(observe(|c| c.dropped))
            .build(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_from_the_sdks_error_text() {
        assert_eq!(classify("HTTP export failed with status code: 413", None), Cause::HttpStatus(413));
        assert_eq!(classify("HTTP export failed: network error", None), Cause::Transport);
        assert_eq!(classify("HTTP export failed: network error", Some(Cause::Timeout)), Cause::Timeout);
        let refused = "TonicMetricsClient export failed with gRPC code: Unavailable: transport error: tcp connect \
                       error: Connection refused (os error 111)";
        assert_eq!(classify(refused, None), Cause::ConnectionRefused);
        let unavailable = "TonicTracesClient export failed with gRPC code: Unavailable";
        assert_eq!(classify(unavailable, None), Cause::Grpc("unavailable".into()));
        let exhausted = "TonicLogsClient export failed with gRPC code: ResourceExhausted";
        assert_eq!(classify(exhausted, None).error_type(), "resource_exhausted");
        assert_eq!(
            classify("TonicLogsClient export failed with gRPC code: Cancelled: Timeout expired", None),
            Cause::Timeout
        );
        assert_eq!(classify("Exporter already shutdown", None), Cause::Other);
        assert_eq!(Cause::HttpStatus(503).error_type(), "503");
    }

    #[test]
    fn a_cause_is_logged_once_per_interval_and_a_recovery_once() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        let refused = Cause::ConnectionRefused;
        assert_eq!(
            log.failed(start, refused.clone(), 10),
            Some(Report::Failing { cause: refused.clone(), repeats: 0, failed_exports: 1, dropped: 10 })
        );
        for i in 1..100 {
            assert_eq!(log.failed(start + Duration::from_millis(200 * i), refused.clone(), 10), None, "counted only");
        }
        // Another cause within the interval is news.
        let later = start + Duration::from_secs(30);
        assert!(matches!(log.failed(later, Cause::HttpStatus(503), 5), Some(Report::Failing { repeats: 0, .. })));
        // The first cause again once the interval has passed: said again, with the repeats.
        let next = start + REPORT_INTERVAL;
        assert_eq!(
            log.failed(next, refused.clone(), 10),
            Some(Report::Failing { cause: refused.clone(), repeats: 99, failed_exports: 102, dropped: 1015 })
        );
        assert_eq!(
            log.succeeded(next + Duration::from_secs(1)),
            Some(Report::Recovered {
                failed_exports: 102,
                dropped: 1015,
                lasted: REPORT_INTERVAL + Duration::from_secs(1)
            })
        );
        assert_eq!(log.succeeded(next + Duration::from_secs(2)), None, "a recovery is said once");
        // A new outage starts afresh: its first failure is logged at once.
        assert!(matches!(
            log.failed(next + Duration::from_secs(3), refused, 1),
            Some(Report::Failing { failed_exports: 1, .. })
        ));
    }

    #[test]
    fn failures_are_counted_by_cause() {
        let health = SignalHealth::new(Signal::Metrics, "http://collector:4318".into());
        health.record(&Err(OTelSdkError::InternalFailure("HTTP export failed with status code: 413".into())), 7);
        health.record(&Err(OTelSdkError::InternalFailure("HTTP export failed with status code: 413".into())), 3);
        health.saw_transport_failure(Cause::ConnectionRefused);
        health.record(&Err(OTelSdkError::InternalFailure("HTTP export failed: network error".into())), 2);
        health.record(&Ok(()), 9);
        let counts = health.counts();
        assert_eq!(counts.get("413"), Some(&Counts { failed_exports: 2, dropped: 10 }));
        assert_eq!(counts.get("connection_refused"), Some(&Counts { failed_exports: 1, dropped: 2 }));
        assert_eq!(counts.len(), 2, "a success counts nothing: {counts:?}");
    }
}
