//! Watch events taken in batches. The API server sends each change on its own, so at a
//! thousand Pod status updates a second a watcher that waits for every event is woken a
//! thousand times a second, and each wake-up (the socket's readiness, the connection task, the
//! watcher's task) cost more than decoding the event (docs/architecture.md, "At Kubernetes'
//! limits"). Once a watch has listed, an event that ends a wait is followed by a [`PAUSE`]:
//! what arrives meanwhile waits in the socket and is then read and decoded in one go, and the
//! watch waits again only when nothing is left. A quiet watch pays one timer per event; a busy
//! one, one wait and one pause per quarter second instead of one wait per event.

use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;

/// How long a busy watch lets changes gather. Nothing pullcheck reports is fresher than a tick
/// (seconds), and a quarter of a second keeps a rollout's new image inside the tick it happened in.
pub const PAUSE: Duration = Duration::from_millis(250);

/// A wait shorter than this was the connection task handing over what was already read, not a
/// quiet watch: no pause follows it, so that a backlog is read at full speed.
const HAND_OVER: Duration = Duration::from_micros(100);

/// A watch stream's events, taken in batches once `settle` has been called (see the module).
pub struct Coalesced<S> {
    events: S,
    pause: Duration,
    /// Listed: events are changes, and may wait. During a list they come page by page, and a
    /// pause between pages would only make the list slower.
    settled: bool,
}

impl<S: Stream + Unpin> Coalesced<S> {
    pub fn new(events: S, pause: Duration) -> Coalesced<S> {
        Coalesced { events, pause, settled: false }
    }

    /// Listed: from now on the events are changes.
    pub fn settle(&mut self) {
        self.settled = true;
    }

    /// A new list begins: its pages are read without pauses.
    pub fn unsettle(&mut self) {
        self.settled = false;
    }

    /// The next event: at once if one is waiting; else when it comes, and then, on a settled
    /// watch, after a pause.
    pub async fn next(&mut self) -> Option<S::Item> {
        if let Some(item) = self.events.next().now_or_never() {
            return item;
        }
        // Nothing ready may only mean that the runtime's budget for this task is spent, or that
        // the connection task has not run since the last chunk was taken: let both happen.
        tokio::task::yield_now().await;
        if let Some(item) = self.events.next().now_or_never() {
            return item;
        }
        let waited = Instant::now();
        let item = self.events.next().await;
        if self.settled && item.is_some() && waited.elapsed() >= HAND_OVER {
            tokio::time::sleep(self.pause).await;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    type Events<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

    /// Counts the times the stream was polled and found nothing: each is a wake-up to come.
    struct Counting<T> {
        inner: Events<T>,
        pending: usize,
    }

    impl<T> Stream for Counting<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            let polled = self.inner.poll_next_unpin(cx);
            if polled.is_pending() {
                self.pending += 1;
            }
            polled
        }
    }

    /// `n` events, each sent `gap` after the last (in paused time) with the time it was sent.
    fn steady(n: usize, gap: Duration) -> Counting<(usize, Instant)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep(gap).await;
                if tx.send((i, Instant::now())).is_err() {
                    return;
                }
            }
        });
        let inner = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Counting { inner: Box::pin(inner), pending: 0 }
    }

    /// Every event, with how long after its sending it was read.
    async fn drain(events: &mut Coalesced<Counting<(usize, Instant)>>) -> Vec<(usize, Duration)> {
        let mut seen = Vec::new();
        while let Some((i, sent)) = events.next().await {
            seen.push((i, sent.elapsed()));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_settled_watch_waits_once_per_pause_not_once_per_event() {
        // 1,000 events a second for 2 s.
        let mut events = Coalesced::new(steady(2_000, Duration::from_millis(1)), PAUSE);
        events.settle();
        let seen = drain(&mut events).await;
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), (0..2_000).collect::<Vec<_>>(), "all, in order");
        let late = seen.iter().map(|s| s.1).max().unwrap_or_default();
        assert!(late <= PAUSE, "each read within a pause of its sending: {late:?}");
        // Listing (no pauses), the same events are each waited for.
        let mut unsettled = Coalesced::new(steady(2_000, Duration::from_millis(1)), PAUSE);
        drain(&mut unsettled).await;
        let (settled, unsettled) = (events.events.pending, unsettled.events.pending);
        assert!(unsettled >= 2_000, "each event waited for when listing: {unsettled}");
        assert!(settled * 50 <= unsettled, "{settled} looks that found nothing, against {unsettled}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_watch_never_pauses() {
        let mut events = Coalesced::new(steady(200, Duration::from_millis(1)), PAUSE);
        let seen = drain(&mut events).await;
        assert_eq!(seen.len(), 200);
        assert!(seen.iter().all(|s| s.1.is_zero()), "each read as it came");
        assert!(events.events.pending >= 200, "each event waited for: {}", events.events.pending);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_settled_watch_reads_each_event_after_one_pause() {
        // One event every 10 s.
        let mut events = Coalesced::new(steady(5, Duration::from_secs(10)), PAUSE);
        events.settle();
        let seen = drain(&mut events).await;
        assert_eq!(seen.len(), 5);
        assert!(seen.iter().all(|s| s.1 == PAUSE), "each read a pause after it came: {seen:?}");
        assert_eq!(events.events.pending, 3 * 5, "two looks, then a wait, per event");
    }
}
