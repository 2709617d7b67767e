//! An in-process OTLP receiver over gRPC and HTTP/protobuf, built from opentelemetry-proto: it
//! decodes what pullcheck pushes, so tests assert on names, attributes and values.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::http::{Reply, Request, Server};

#[derive(Default)]
pub struct Received {
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub traces: Vec<ExportTraceServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Request headers (gRPC metadata) of every export.
    pub headers: Vec<Vec<(String, String)>>,
    /// Body bytes as sent (compressed if it was) of every HTTP export: (path, bytes).
    pub http_bytes: Vec<(String, usize)>,
    /// Exports answered with a [`Behaviour::Status`] or left hanging, not kept: (path, status;
    /// 0 for a hang, when it came), oldest first.
    pub refused: Vec<(String, u16, std::time::Instant)>,
}

/// How the HTTP receiver answers: as a collector should, or as a failing one does.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Behaviour {
    #[default]
    Accept,
    /// This status, with `Retry-After` when given, and nothing kept.
    Status { status: u16, retry_after: Option<String> },
    /// The request read and never answered, until the behaviour changes (HTTP and gRPC).
    Hang,
    /// gRPC only: this code, with a `RetryInfo` detail asking for this delay when given.
    Grpc { code: tonic::Code, retry_delay: Option<std::time::Duration> },
}

#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Received>>, Arc<Mutex<Behaviour>>);

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.0.lock().expect("otlp sink lock")
    }

    fn behaviour(&self) -> Behaviour {
        self.1.lock().expect("behaviour lock").clone()
    }

    /// A failing gRPC collector's answer to an export on `path`, or `None` to accept it.
    async fn refusal(&self, path: &str) -> Option<tonic::Status> {
        use tonic_types::{ErrorDetails, StatusExt};
        match self.behaviour() {
            Behaviour::Grpc { code, retry_delay } => {
                self.lock().refused.push((path.to_string(), code as u16, std::time::Instant::now()));
                let details = ErrorDetails::with_retry_info(retry_delay);
                Some(tonic::Status::with_error_details(code, "the test collector refuses", details))
            }
            Behaviour::Hang => {
                self.lock().refused.push((path.to_string(), 0, std::time::Instant::now()));
                while self.behaviour() == Behaviour::Hang {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Some(tonic::Status::unavailable("the test collector hung"))
            }
            Behaviour::Accept | Behaviour::Status { .. } => None,
        }
    }

    fn headers_of<T>(request: &tonic::Request<T>) -> Vec<(String, String)> {
        request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if let Some(status) = self.refusal("/v1/metrics").await {
            return Err(status);
        }
        let headers = Self::headers_of(&request);
        let mut received = self.lock();
        received.headers.push(headers);
        received.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(status) = self.refusal("/v1/traces").await {
            return Err(status);
        }
        let headers = Self::headers_of(&request);
        let mut received = self.lock();
        received.headers.push(headers);
        received.traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if let Some(status) = self.refusal("/v1/logs").await {
            return Err(status);
        }
        let headers = Self::headers_of(&request);
        let mut received = self.lock();
        received.headers.push(headers);
        received.logs.push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

pub struct Receiver {
    pub sink: Sink,
    pub endpoint: String,
    behaviour: Arc<Mutex<Behaviour>>,
    _http: Option<Server>,
    _grpc: Option<tokio::task::JoinHandle<()>>,
}

fn gunzip_if(request: &Request) -> Vec<u8> {
    if request.header("content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip")) {
        let mut out = Vec::new();
        let _ = flate2::read::GzDecoder::new(&request.body[..]).read_to_end(&mut out);
        out
    } else {
        request.body.clone()
    }
}

impl Receiver {
    /// OTLP/HTTP on `http://127.0.0.1:<port>` (paths /v1/metrics, /v1/traces, /v1/logs).
    pub async fn http() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/HTTP receiver");
        Self::http_on(listener)
    }

    /// OTLP/HTTP on a listener the caller bound; answering as [`Receiver::behave`] says.
    pub fn http_on(listener: tokio::net::TcpListener) -> Receiver {
        let sink = Sink::default();
        let behaviour = sink.1.clone();
        let (shared, behaving) = (sink.clone(), behaviour.clone());
        let server = Server::start_on(listener, move |request: Request| {
            let (sink, behaviour) = (shared.clone(), behaving.clone());
            async move {
                let now = || behaviour.lock().expect("behaviour lock").clone();
                match now() {
                    Behaviour::Accept | Behaviour::Grpc { .. } => {}
                    Behaviour::Status { status, retry_after } => {
                        sink.lock().refused.push((request.target.clone(), status, std::time::Instant::now()));
                        let headers = retry_after.into_iter().map(|r| ("Retry-After".to_string(), r)).collect();
                        return Reply::Full { status, headers, body: vec![] };
                    }
                    Behaviour::Hang => {
                        sink.lock().refused.push((request.target.clone(), 0, std::time::Instant::now()));
                        while now() == Behaviour::Hang {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        return Reply::Reset;
                    }
                }
                let body = gunzip_if(&request);
                let mut received = sink.lock();
                received.http_bytes.push((request.target.clone(), request.body.len()));
                received
                    .headers
                    .push(request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect());
                let ok = match request.target.as_str() {
                    "/v1/metrics" => {
                        ExportMetricsServiceRequest::decode(&body[..]).map(|m| received.metrics.push(m)).is_ok()
                    }
                    "/v1/traces" => {
                        ExportTraceServiceRequest::decode(&body[..]).map(|t| received.traces.push(t)).is_ok()
                    }
                    "/v1/logs" => ExportLogsServiceRequest::decode(&body[..]).map(|l| received.logs.push(l)).is_ok(),
                    _ => false,
                };
                let status = if ok { 200 } else { 400 };
                Reply::Full {
                    status,
                    headers: vec![("Content-Type".into(), "application/x-protobuf".into())],
                    body: vec![],
                }
            }
        });
        let endpoint = server.url();
        Receiver { sink, endpoint, behaviour, _http: Some(server), _grpc: None }
    }

    /// How the receiver answers from now on.
    pub fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    /// OTLP/gRPC on `http://127.0.0.1:<port>`, accepting gzip.
    pub async fn grpc() -> Receiver {
        Self::grpc_with_tls(None).await
    }

    /// OTLP/gRPC over TLS with this PEM certificate and key, on `https://127.0.0.1:<port>`.
    pub async fn grpc_tls(cert_pem: &[u8], key_pem: &[u8]) -> Receiver {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        Self::grpc_with_tls(Some(tonic::transport::ServerTlsConfig::new().identity(identity))).await
    }

    async fn grpc_with_tls(tls: Option<tonic::transport::ServerTlsConfig>) -> Receiver {
        let sink = Sink::default();
        // Bound here and handed to tonic, so the address is known and already accepting.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/gRPC receiver");
        let addr = listener.local_addr().expect("local addr");
        let gzip = tonic::codec::CompressionEncoding::Gzip;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("server TLS config");
        }
        let router = builder
            .add_service(MetricsServiceServer::new(sink.clone()).accept_compressed(gzip))
            .add_service(TraceServiceServer::new(sink.clone()).accept_compressed(gzip))
            .add_service(LogsServiceServer::new(sink.clone()).accept_compressed(gzip));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Receiver {
            behaviour: sink.1.clone(),
            sink,
            endpoint: format!("{scheme}://{addr}"),
            _http: None,
            _grpc: Some(task),
        }
    }

    pub fn received<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.sink.lock())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self._grpc {
            task.abort();
        }
    }
}

pub fn value_string(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            a.values.iter().map(|v| value_string(&Some(v.clone()))).collect::<Vec<_>>().join(",")
        }
        _ => String::new(),
    }
}

pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), value_string(&kv.value))).collect()
}

/// Every metric of every export, newest last, with its resource attributes.
pub fn metrics(received: &Received) -> Vec<(BTreeMap<String, String>, Metric)> {
    received
        .metrics
        .iter()
        .flat_map(|r| r.resource_metrics.iter())
        .flat_map(|rm| {
            let resource = rm.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
            rm.scope_metrics.iter().flat_map(move |sm| {
                sm.metrics.iter().map({
                    let resource = resource.clone();
                    move |m| (resource.clone(), m.clone())
                })
            })
        })
        .collect()
}

/// The points of a gauge or sum: (attributes, value).
pub fn number_points(metric: Metric) -> Vec<(BTreeMap<String, String>, f64)> {
    let points = match metric.data {
        Some(metric::Data::Gauge(g)) => g.data_points,
        Some(metric::Data::Sum(s)) => s.data_points,
        _ => Vec::new(),
    };
    points
        .into_iter()
        .map(|p| {
            let value = match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => f64::NAN,
            };
            (attributes(&p.attributes), value)
        })
        .collect()
}

/// The points of the newest export of a gauge or sum: (attributes, value).
pub fn latest_points(received: &Received, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let newest = metrics(received).into_iter().rev().find(|(_, m)| m.name == name);
    newest.map(|(_, metric)| number_points(metric)).unwrap_or_default()
}

/// The points of every export of a gauge or sum, oldest first.
pub fn every_point(received: &Received, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    metrics(received).into_iter().filter(|(_, m)| m.name == name).flat_map(|(_, m)| number_points(m)).collect()
}

/// The points of the newest export of a histogram: (attributes, count, sum).
pub fn latest_histogram(received: &Received, name: &str) -> Vec<(BTreeMap<String, String>, u64, f64)> {
    let newest = metrics(received).into_iter().rev().find(|(_, m)| m.name == name);
    let Some((_, Metric { data: Some(metric::Data::Histogram(h)), .. })) = newest else { return Vec::new() };
    h.data_points.into_iter().map(|p| (attributes(&p.attributes), p.count, p.sum.unwrap_or(f64::NAN))).collect()
}

pub fn spans(received: &Received) -> Vec<Span> {
    received
        .traces
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter().cloned())
        .collect()
}

/// Log records: (body, attributes), oldest first.
pub fn logs(received: &Received) -> Vec<(String, BTreeMap<String, String>)> {
    received
        .logs
        .iter()
        .flat_map(|r| r.resource_logs.iter())
        .flat_map(|rl| rl.scope_logs.iter())
        .flat_map(|sl| sl.log_records.iter())
        .map(|l| (value_string(&l.body), attributes(&l.attributes)))
        .collect()
}
