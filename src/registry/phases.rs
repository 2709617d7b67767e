//! Where one request's time went (docs/telemetry.md, "Where a slow request spent its time"): the
//! name lookup and the addresses it gave, the TCP connect and the TLS handshake when a new
//! connection was made, and the wait for the response headers. Measured where they happen — in
//! the resolver, in the TLS session store (`tls.rs`: rustls consults it as the handshake starts)
//! and in a layer around reqwest's connector, all run inside the request's own task — and
//! gathered through a task-local slot that [`measured`] opens around the request.

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
    /// A new connection: TCP connect and TLS handshake, the lookup excluded. `None`: reused, or
    /// a connection that never came up.
    pub connect: Option<Duration>,
    /// The TLS handshake of a new connection: to its end, or to the request's end for one that
    /// never finished (a stalled or refused handshake). `None`: plain HTTP, reused, or no TCP.
    pub tls: Option<Duration>,
    /// When the connector began, and when rustls began the handshake.
    connect_started: Option<Instant>,
    handshake_started: Option<Instant>,
}

impl Phases {
    /// Time from sending to the response headers that neither the lookup nor the connection
    /// took: the registry's (and the network's) own.
    pub fn server_wait(&self, to_headers: Duration) -> Duration {
        to_headers.saturating_sub(self.dns.unwrap_or_default()).saturating_sub(self.connect.unwrap_or_default())
    }

    /// The TCP connect of a new connection, the lookup excluded: up to the handshake's start
    /// (known even when the handshake then failed), or the whole connection for plain HTTP.
    pub fn tcp(&self) -> Option<Duration> {
        match (self.connect_started, self.handshake_started) {
            (Some(started), Some(handshake)) => {
                Some(handshake.saturating_duration_since(started).saturating_sub(self.dns.unwrap_or_default()))
            }
            _ => self.connect,
        }
    }

    /// The connector's part: the connection that began at `connect_started` is up at `now`.
    fn connected(&mut self, now: Instant) {
        let Some(started) = self.connect_started else { return };
        self.connect = Some(now.saturating_duration_since(started).saturating_sub(self.dns.unwrap_or_default()));
        self.tls = self.handshake_started.map(|at| now.saturating_duration_since(at));
    }

    /// The request ended at `now`: a handshake that began and never finished lasted until now.
    fn settle(&mut self, now: Instant) {
        if self.tls.is_none() && self.connect.is_none() {
            self.tls = self.handshake_started.map(|at| now.saturating_duration_since(at));
        }
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
    let mut phases = phases.lock().unwrap_or_else(|p| p.into_inner()).clone();
    phases.settle(Instant::now());
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

/// The TLS session store's part: the handshake starts now (the first time it asks).
pub(crate) fn record_handshake_start() {
    with_current(|phases| {
        phases.handshake_started.get_or_insert_with(Instant::now);
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
        with_current(|phases| phases.connect_started = Some(Instant::now()));
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connected = connecting.await;
            if connected.is_ok() {
                with_current(|phases| phases.connected(Instant::now()));
            }
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
        let fresh = Phases { dns: Some(ms(20)), connect: Some(ms(300)), ..Phases::default() };
        assert_eq!(fresh.server_wait(ms(400)), ms(80));
        let reused = Phases::default();
        assert_eq!(reused.server_wait(ms(400)), ms(400));
        assert_eq!(fresh.server_wait(ms(10)), Duration::ZERO, "never negative");
    }

    #[test]
    fn a_connection_splits_into_tcp_and_the_handshake_the_lookup_apart() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let at = |phases: Phases| Phases { connect_started: Some(t0), dns: Some(ms(20)), ..phases };
        let mut tls = at(Phases { handshake_started: Some(t0 + ms(70)), ..Phases::default() });
        tls.connected(t0 + ms(370));
        tls.settle(t0 + ms(900));
        assert_eq!((tls.connect, tls.tcp(), tls.tls), (Some(ms(350)), Some(ms(50)), Some(ms(300))));
        let mut plain = at(Phases::default());
        plain.connected(t0 + ms(60));
        assert_eq!((plain.connect, plain.tcp(), plain.tls), (Some(ms(40)), Some(ms(40)), None), "no handshake");
        let mut stalled = at(Phases { handshake_started: Some(t0 + ms(70)), ..Phases::default() });
        stalled.settle(t0 + ms(10_070));
        let told = (stalled.connect, stalled.tcp(), stalled.tls);
        assert_eq!(told, (None, Some(ms(50)), Some(ms(10_000))), "TCP was up; the handshake never ended");
        let mut refused = at(Phases::default());
        refused.settle(t0 + ms(5));
        assert_eq!((refused.connect, refused.tcp(), refused.tls), (None, None, None));
        assert_eq!(Phases::default().tcp(), None, "reused: no connection at all");
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
