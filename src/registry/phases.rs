//! Where one request's time went (docs/telemetry.md, "Where a slow request spent its time"): the
//! name lookup and the addresses it gave, the connection (TCP and TLS) when a new one was made,
//! and the wait for the response headers. Measured where they happen — in the resolver and in a
//! layer around reqwest's connector, both run inside the request's own task — and gathered
//! through a task-local slot that [`measured`] opens around the request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The phases one request went through. A request on a pooled connection has no DNS and no
/// connect phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Phases {
    /// The name lookup, when one was made (not for an address written as such).
    pub dns: Option<Duration>,
    /// What the lookup gave, before any was refused or tried.
    pub addresses: Vec<SocketAddr>,
    /// A new connection: TCP connect and TLS handshake, the lookup excluded. `None`: reused.
    pub connect: Option<Duration>,
}

impl Phases {
    /// Time from sending to the response headers that neither the lookup nor the connection
    /// took: the registry's (and the network's) own.
    pub fn server_wait(&self, to_headers: Duration) -> Duration {
        to_headers.saturating_sub(self.dns.unwrap_or_default()).saturating_sub(self.connect.unwrap_or_default())
    }
}

tokio::task_local! {
    static CURRENT: Arc<Mutex<Phases>>;
}

/// Runs `request` with a slot the resolver and the connector fill, and returns what they put
/// there beside its output.
pub(crate) async fn measured<F: Future>(request: F) -> (F::Output, Phases) {
    let phases = Arc::new(Mutex::new(Phases::default()));
    let output = CURRENT.scope(phases.clone(), request).await;
    let phases = phases.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (output, phases)
}

fn with_current(update: impl FnOnce(&mut Phases)) {
    let _ = CURRENT.try_with(|phases| update(&mut phases.lock().unwrap_or_else(|p| p.into_inner())));
}

/// The resolver's part: how long the lookup took and what it gave.
pub(crate) fn record_lookup(took: Duration, addresses: &[SocketAddr]) {
    with_current(|phases| {
        phases.dns = Some(took);
        phases.addresses = addresses.to_vec();
    });
}

/// A layer around reqwest's connector: times each new connection (the lookup inside it is the
/// resolver's to report, and is taken out).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimedConnect;

impl<S> tower_layer::Layer<S> for TimedConnect {
    type Service = TimedConnector<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimedConnector { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TimedConnector<S> {
    inner: S,
}

impl<S, R> tower_service::Service<R> for TimedConnector<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let started = Instant::now();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connected = connecting.await;
            let took = started.elapsed();
            with_current(|phases| phases.connect = Some(took.saturating_sub(phases.dns.unwrap_or_default())));
            connected
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_wait_is_what_the_lookup_and_connection_did_not_take() {
        let ms = Duration::from_millis;
        let fresh = Phases { dns: Some(ms(20)), addresses: Vec::new(), connect: Some(ms(300)) };
        assert_eq!(fresh.server_wait(ms(400)), ms(80));
        let reused = Phases::default();
        assert_eq!(reused.server_wait(ms(400)), ms(400));
        assert_eq!(fresh.server_wait(ms(10)), Duration::ZERO, "never negative");
    }

    #[tokio::test]
    async fn the_slot_is_filled_only_inside_its_request() {
        let addresses = [SocketAddr::from(([127, 0, 0, 1], 443))];
        let ((), phases) = measured(async { record_lookup(Duration::from_millis(7), &addresses) }).await;
        assert_eq!(phases.dns, Some(Duration::from_millis(7)));
        assert_eq!(phases.addresses, addresses);
        record_lookup(Duration::from_millis(9), &addresses); // outside any request: nowhere, no panic
        let ((), untouched) = measured(async {}).await;
        assert_eq!(untouched, Phases::default());
    }
}
