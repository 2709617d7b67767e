//! One probe: does the manifest of an image resolve, with these credentials, through the
//! mirrors and then the registry, as the runtime would resolve it before pulling? The root span
//! of its own trace; every HTTP request below it is a CLIENT span.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{Instrument, field};

use super::client::RegistryClient;
use super::credentials::Decided;
use super::http::Exchange;
use super::outcome::State;
use super::rate_limit::RateLimit;
use crate::credentials::{Credential, CredentialSource, SourcedCredential};
use crate::image::{ImageRef, host_and_port};
use crate::platform::Platform;

/// Why a probe runs out of turn: a node just failed to pull the image. Carried on the probe's
/// span so the trace says what set it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub reason: String,
    pub namespace: String,
    pub pod: String,
    pub message: String,
}

/// What a probe found.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub state: State,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// The cause, for every state but `available`; never contains a credential.
    pub error: Option<String>,
    /// The registry host that gave this answer (a mirror's when a mirror served it).
    pub registry: String,
    /// The credential whose answer this is (`None`: anonymous, or a mirror's own).
    pub credential: Option<CredentialSource>,
    /// Its place in the chain the probe was given (`None`: not one of those).
    pub credential_index: Option<usize>,
    pub duration: Duration,
    pub http_requests: u32,
    /// The pull budget a registry announced during the probe (`ratelimit-*` headers), and the
    /// host that announced it.
    pub rate_limit: Option<(String, RateLimit)>,
}

impl ProbeResult {
    /// An answer that no registry gave: the probe itself failed.
    pub fn failed(registry: &str, state: State, error: impl Into<String>) -> Self {
        Self {
            state,
            digest: None,
            media_type: None,
            error: Some(error.into()),
            registry: registry.to_string(),
            credential: None,
            credential_index: None,
            duration: Duration::ZERO,
            http_requests: 0,
            rate_limit: None,
        }
    }
}

impl RegistryClient {
    /// The node's own credentials for an image, after the workload's: the registry config's,
    /// then each matching credential-provider plugin's; and why a plugin gave none. The registry
    /// config's is looked up for `asked`, the reference the endpoint is asked for (CRI-O looks a
    /// node credential up by the rewritten reference); kubelet's plugins match the pod's `image`.
    async fn node_credentials(&self, image: &ImageRef, asked: &ImageRef) -> (Vec<SourcedCredential>, Vec<String>) {
        let config = self.config();
        let mut chain: Vec<SourcedCredential> = config
            .credential_for(asked)
            .map(|credential| SourcedCredential { source: CredentialSource::RegistryConfig, credential })
            .into_iter()
            .collect();
        let mut problems = Vec::new();
        if let Some(providers) = config.providers().filter(|p| p.any_matches(image)) {
            for (name, result) in providers.credentials_for(image).await {
                match result {
                    Ok(credentials) => chain.extend(credentials.into_iter().map(|credential| SourcedCredential {
                        source: CredentialSource::Provider(name.clone()),
                        credential,
                    })),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        (chain, problems)
    }

    /// Probes an image with one credential (or, without one, those configured for its host).
    pub async fn probe(&self, image: &ImageRef, credential: Option<&Credential>) -> ProbeResult {
        let given: Vec<SourcedCredential> = credential
            .map(|c| SourcedCredential { source: CredentialSource::PullSecret("given".into()), credential: c.clone() })
            .into_iter()
            .collect();
        self.probe_for(image, &given, &[], 0).await
    }

    /// A probe on behalf of `workloads` workload containers, whose nodes need `platforms`
    /// (an index must cover each; so must a single-platform manifest, whose config names the one
    /// platform it runs on: the runtime refuses it elsewhere). `credentials` are the workload's,
    /// in kubelet's order; the node's (the registry config's) follow them. Each is tried until
    /// the registry accepts one, the one that worked last time first; anonymous only when none
    /// matches the registry. Mirrors are tried before the registry, with their own configured
    /// credentials only.
    pub async fn probe_for(
        &self,
        image: &ImageRef,
        credentials: &[SourcedCredential],
        platforms: &[Platform],
        workloads: usize,
    ) -> ProbeResult {
        self.probe_triggered(image, credentials, platforms, workloads, None).await
    }

    /// [`probe_for`](Self::probe_for), set off by `trigger` (on the span).
    pub async fn probe_triggered(
        &self,
        image: &ImageRef,
        credentials: &[SourcedCredential],
        platforms: &[Platform],
        workloads: usize,
        trigger: Option<&Trigger>,
    ) -> ProbeResult {
        let started = Instant::now();
        let (address, port) = host_and_port(image.registry());
        let span = tracing::info_span!(
            parent: None,
            "probe",
            otel.name = %format!("probe {}", image.name()),
            otel.kind = "internal",
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
            container.image.name = %image.name(),
            container.image.tags = image.tag().unwrap_or_default(),
            server.address = address,
            server.port = port.map(i64::from),
            pullcheck.workloads.count = i64::try_from(workloads).unwrap_or(i64::MAX),
            pullcheck.credential.source = field::Empty,
            pullcheck.trigger.reason = field::Empty,
            pullcheck.trigger.message = field::Empty,
            k8s.namespace.name = field::Empty,
            k8s.pod.name = field::Empty,
            pullcheck.image.state = field::Empty,
            oci.manifest.digest = field::Empty,
            error.type = field::Empty,
        );
        if let Some(trigger) = trigger {
            span.record("pullcheck.trigger.reason", trigger.reason.as_str());
            span.record("pullcheck.trigger.message", trigger.message.as_str());
            span.record("k8s.namespace.name", trigger.namespace.as_str());
            span.record("k8s.pod.name", trigger.pod.as_str());
        }
        let mut exchange = Exchange { client: self, requests: 0, platforms, rate_limit: None };
        let (registry, decided) = async {
            let routes = match self.routes(image) {
                Ok(routes) => routes,
                Err(e) => return (image.registry().to_string(), Decided::failed(State::UnknownError, e.to_string())),
            };
            let by_digest = image.digest().is_some();
            let mut last_mirror = None;
            for route in routes.iter().filter(|r| r.serves(by_digest)) {
                let asked = route.asked(image);
                if route.mirror {
                    let attempt = exchange.with_retries(route, asked, route.credential.as_ref()).await;
                    let mirror = route.host.name.clone();
                    if attempt.state == State::Available {
                        return (mirror, Decided { attempt, credential: None, index: None });
                    }
                    tracing::debug!(%mirror, state = %attempt.state, "mirror did not serve the image, trying the next host");
                    last_mirror = Some((mirror, Decided { attempt, credential: None, index: None }));
                    continue;
                }
                let (node, problems) = self.node_credentials(image, asked).await;
                let chain: Vec<SourcedCredential> = credentials.iter().cloned().chain(node).collect();
                let mut decided = exchange.with_credentials(route, asked, &chain).await;
                if decided.attempt.state != State::Available && !problems.is_empty() {
                    let error = decided.attempt.error.take().unwrap_or_else(|| decided.attempt.state.to_string());
                    decided.attempt.error = Some(format!("{error}; {}", problems.join("; ")));
                }
                return (asked.registry().to_string(), decided);
            }
            last_mirror.unwrap_or_else(|| {
                let error = format!(
                    "no endpoint of {} may {} (hosts.toml capabilities)",
                    image.registry(),
                    if by_digest { "pull" } else { "resolve tags" }
                );
                (image.registry().to_string(), Decided::failed(State::UnknownError, error))
            })
        }
        .instrument(span.clone())
        .await;
        let attempt = decided.attempt;
        if let Some(source) = &decided.credential {
            span.record("pullcheck.credential.source", source.to_string());
        }
        span.record("pullcheck.image.state", attempt.state.as_str());
        if let Some(d) = &attempt.digest {
            span.record("oci.manifest.digest", d.as_str());
        }
        if attempt.state == State::Available {
            span.record("otel.status_code", "OK");
        } else {
            span.record("error.type", attempt.state.as_str());
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", attempt.error.as_deref().unwrap_or(attempt.state.as_str()));
        }
        ProbeResult {
            state: attempt.state,
            digest: attempt.digest,
            media_type: attempt.media_type,
            error: attempt.error,
            registry,
            credential: decided.credential,
            credential_index: decided.index.filter(|i| *i < credentials.len()),
            duration: started.elapsed(),
            http_requests: exchange.requests,
            rate_limit: exchange.rate_limit,
        }
    }
}
