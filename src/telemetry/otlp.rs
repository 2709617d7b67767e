//! OTLP exporters configured by the OpenTelemetry environment variables, as the specification
//! defines them. The SDK reads endpoint, headers, compression and timeout itself; pullcheck
//! reads what it does not: the protocol (explicitly, both transports being compiled in),
//! CERTIFICATE / CLIENT_CERTIFICATE / CLIENT_KEY, the temporality preference and SDK_DISABLED.

use std::time::Duration;

use std::sync::Arc;

use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::Temporality;

use super::export_health::{ObservedHttpClient, SignalHealth};
use crate::error::{Error, Result};

/// A way of reading the environment, so the parsing is tested without touching the process's.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for std::collections::HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn env_name(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_<NAME>`, else `OTEL_EXPORTER_OTLP_<NAME>`.
fn signal_var(env: &dyn Env, signal: Signal, name: &str) -> Option<String> {
    env.var(&format!("OTEL_EXPORTER_OTLP_{}_{name}", signal.env_name()))
        .or_else(|| env.var(&format!("OTEL_EXPORTER_OTLP_{name}")))
}

/// The spec's default is `http/protobuf`.
pub fn protocol(env: &dyn Env, signal: Signal) -> Result<Protocol> {
    match signal_var(env, signal, "PROTOCOL").as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(Error::TelemetryEnv {
            variable: format!("OTEL_EXPORTER_OTLP_PROTOCOL={other}"),
            problem: "pullcheck speaks grpc and http/protobuf".into(),
        }),
    }
}

pub fn sdk_disabled(env: &dyn Env) -> bool {
    env.var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `cumulative` (default), `delta` (Datadog's agentless intake wants it) or `lowmemory`.
pub fn temporality(env: &dyn Env) -> Result<Temporality> {
    match env.var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE").map(|v| v.trim().to_ascii_lowercase()).as_deref()
    {
        None | Some("cumulative") => Ok(Temporality::Cumulative),
        Some("delta") => Ok(Temporality::Delta),
        Some("lowmemory") => Ok(Temporality::LowMemory),
        Some(other) => Err(Error::TelemetryEnv {
            variable: format!("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE={other}"),
            problem: "cumulative, delta or lowmemory".into(),
        }),
    }
}

/// PEM files for TLS to the collector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

pub fn tls_files(env: &dyn Env, signal: Signal) -> Result<TlsFiles> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        match signal_var(env, signal, name) {
            None => Ok(None),
            Some(path) => std::fs::read(&path)
                .map(Some)
                .map_err(|source| Error::Io { path: format!("OTEL_EXPORTER_OTLP_{name}={path}").into(), source }),
        }
    };
    let files = TlsFiles {
        ca: read("CERTIFICATE")?,
        client_cert: read("CLIENT_CERTIFICATE")?,
        client_key: read("CLIENT_KEY")?,
    };
    if files.client_cert.is_some() != files.client_key.is_some() {
        return Err(Error::TelemetryEnv {
            variable: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
            problem: "goes together with OTEL_EXPORTER_OTLP_CLIENT_KEY".into(),
        });
    }
    Ok(files)
}

fn timeout(env: &dyn Env, signal: Signal) -> Duration {
    signal_var(env, signal, "TIMEOUT")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The HTTP client of the http/protobuf exporters, with the collector's TLS settings. Blocking:
/// the SDK exports from its own threads. Build it outside any tokio runtime context.
fn http_client(env: &dyn Env, signal: Signal) -> Result<reqwest::blocking::Client> {
    let tls = tls_files(env, signal)?;
    let mut builder =
        reqwest::blocking::Client::builder().timeout(timeout(env, signal)).connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|source| Error::HttpClient { what: "OTLP CA certificate".into(), source })?;
        builder = builder.tls_certs_merge(certs);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = cert.clone();
        pem.extend_from_slice(key);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|source| Error::HttpClient { what: "OTLP client certificate".into(), source })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|source| Error::HttpClient { what: "OTLP HTTP client".into(), source })
}

fn tonic_tls(env: &dyn Env, signal: Signal) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    let tls = tls_files(env, signal)?;
    let endpoint = signal_var(env, signal, "ENDPOINT").unwrap_or_default();
    if !endpoint.starts_with("https://") && tls == TlsFiles::default() {
        return Ok(None);
    }
    let mut config = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
    if let Some(ca) = tls.ca {
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
    }
    if let (Some(cert), Some(key)) = (tls.client_cert, tls.client_key) {
        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Some(config))
}

/// Where `signal` is exported, read as the SDK reads the endpoint variables (the signal's own
/// as is; the common one with `/v1/<signal>` for HTTP) or its default. Given to the exporter
/// explicitly, so `env` is the one place the endpoint comes from.
fn endpoint(env: &dyn Env, signal: Signal) -> String {
    let grpc = protocol(env, signal).is_ok_and(|p| p == Protocol::Grpc);
    let specific = env.var(&format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.env_name()));
    match (specific, env.var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(endpoint), _) => endpoint,
        (None, Some(base)) if grpc => base,
        (None, Some(base)) => format!("{}/v1/{}", base.trim_end_matches('/'), signal.name()),
        (None, None) if grpc => "http://localhost:4317".into(),
        (None, None) => format!("http://localhost:4318/v1/{}", signal.name()),
    }
}

/// Where `signal` is exported, for the log: [`endpoint`] without user info or query (neither
/// belongs in a log line).
pub fn endpoint_for_log(env: &dyn Env, signal: Signal) -> String {
    let endpoint = endpoint(env, signal);
    let endpoint = endpoint.split(['?', '#']).next().unwrap_or_default().to_string();
    let Some((scheme, rest)) = endpoint.split_once("://") else { return endpoint };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// The SDK's retry (built into opentelemetry-otlp 0.33, no feature to enable): 3 retries with
/// exponential backoff from 100 ms to 1.6 s, a `Retry-After` (HTTP 429/503) or gRPC `RetryInfo`
/// (UNAVAILABLE, RESOURCE_EXHAUSTED) raising the delay to what the collector asked (at most 30 s),
/// all within OTEL_EXPORTER_OTLP_TIMEOUT. Explicit so a change of the SDK's default shows here.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
}

macro_rules! build_exporter {
    ($builder:expr, $env:expr, $signal:expr, $health:expr) => {{
        let env: &dyn Env = $env;
        let health: &Arc<SignalHealth> = $health;
        match protocol(env, $signal)? {
            Protocol::HttpProtobuf => $builder
                .with_http()
                .with_endpoint(endpoint(env, $signal))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(ObservedHttpClient::new(http_client(env, $signal)?, health.clone()))
                .with_retry_policy(retry_policy())
                .build(),
            Protocol::Grpc => {
                let builder =
                    $builder.with_tonic().with_endpoint(endpoint(env, $signal)).with_retry_policy(retry_policy());
                match tonic_tls(env, $signal)? {
                    Some(tls) => builder.with_tls_config(tls).build(),
                    None => builder.build(),
                }
            }
        }
        .map_err(|source| Error::Exporter { signal: $signal.name(), source })
    }};
}

/// The exporters below note their HTTP transport failures in `health` (see export_health.rs).
pub fn span_exporter(env: &dyn Env, health: &Arc<SignalHealth>) -> Result<opentelemetry_otlp::SpanExporter> {
    build_exporter!(opentelemetry_otlp::SpanExporter::builder(), env, Signal::Traces, health)
}

pub fn metric_exporter(env: &dyn Env, health: &Arc<SignalHealth>) -> Result<opentelemetry_otlp::MetricExporter> {
    let temporality = temporality(env)?;
    build_exporter!(
        opentelemetry_otlp::MetricExporter::builder().with_temporality(temporality),
        env,
        Signal::Metrics,
        health
    )
}

pub fn log_exporter(env: &dyn Env, health: &Arc<SignalHealth>) -> Result<opentelemetry_otlp::LogExporter> {
    build_exporter!(opentelemetry_otlp::LogExporter::builder(), env, Signal::Logs, health)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn protocol_per_signal_with_the_spec_default() {
        let env: HashMap<&str, &str> =
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")].into();
        assert_eq!(protocol(&env, Signal::Metrics).ok(), Some(Protocol::Grpc));
        assert_eq!(protocol(&env, Signal::Logs).ok(), Some(Protocol::HttpProtobuf));
        assert_eq!(protocol(&HashMap::new(), Signal::Traces).ok(), Some(Protocol::HttpProtobuf));
        let json: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")].into();
        assert!(protocol(&json, Signal::Traces).is_err());
    }

    #[test]
    fn temporality_and_disabled() {
        let delta: HashMap<&str, &str> =
            [("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"), ("OTEL_SDK_DISABLED", "true")].into();
        assert_eq!(temporality(&delta).ok(), Some(Temporality::Delta));
        assert!(sdk_disabled(&delta));
        assert_eq!(temporality(&HashMap::new()).ok(), Some(Temporality::Cumulative));
        assert!(!sdk_disabled(&HashMap::new()));
        let bad: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes")].into();
        assert!(temporality(&bad).is_err());
    }

    #[test]
    fn the_logged_endpoint_is_the_sdks_without_credentials() {
        let base: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:pw@otlp.example:4318/")].into();
        assert_eq!(endpoint_for_log(&base, Signal::Metrics), "https://otlp.example:4318/v1/metrics");
        let grpc: HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4318/v1/logs?token=x"),
        ]
        .into();
        assert_eq!(endpoint_for_log(&grpc, Signal::Traces), "http://collector:4317");
        assert_eq!(endpoint_for_log(&grpc, Signal::Logs), "http://logs:4318/v1/logs");
        assert_eq!(endpoint_for_log(&HashMap::new(), Signal::Logs), "http://localhost:4318/v1/logs");
    }

    #[test]
    fn tls_files_are_read_and_must_pair() {
        let dir = std::env::temp_dir().join(format!("pullcheck-otlp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"pem").expect("write");
        let ca_path = ca.display().to_string();
        let env: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_path.as_str())].into();
        assert_eq!(tls_files(&env, Signal::Traces).ok().and_then(|t| t.ca), Some(b"pem".to_vec()));
        assert_eq!(tls_files(&env, Signal::Metrics).ok(), Some(TlsFiles::default()));
        let half: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca_path.as_str())].into();
        assert!(tls_files(&half, Signal::Logs).is_err());
        let missing: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")].into();
        assert!(tls_files(&missing, Signal::Logs).is_err());
    }
}
