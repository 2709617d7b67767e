//! Retries on one host: a 429, a 5xx or a transport failure is tried again, honouring
//! `Retry-After`. A 429 pauses the repository that got it and, as a budget, its registry; both
//! pauses are capped at `max_pause`. A probe's state is always what its own exchange observed:
//! another repository's 429 may delay it, never answer it (docs/states.md, "One repository's
//! 429").

use std::time::Duration;

use tokio::time::Instant;

use super::http::Exchange;
use super::limits::capped_pause;
use super::outcome::{Attempt, State};
use super::routes::Route;
use crate::credentials::Credential;
use crate::image::ImageRef;

/// What a probe does before asking a host, given the pauses it finds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// Ask after this wait (zero: at once).
    Ask(Duration),
    /// Its own repository was answered 429 and asked for longer than a probe waits: that
    /// answer stands, and the registry is not asked again before then.
    RepositoryPaused(Duration),
}

/// The pure rule behind [`Before`]: `repository` and `host` are the pauses left. A host pause
/// that another repository's 429 set is waited out when short; a long one is the scheduler's
/// budget (`run` starts no probe on a paused registry), not this probe's answer.
pub(crate) fn before_asking(repository: Option<Duration>, host: Option<Duration>, max_wait: Duration) -> Before {
    match (repository, host) {
        (Some(own), _) if own > max_wait => Before::RepositoryPaused(own),
        (own, Some(host)) if host > max_wait => Before::Ask(own.unwrap_or_default()),
        (own, host) => Before::Ask(own.max(host).unwrap_or_default()),
    }
}

impl Exchange<'_> {
    /// An endpoint's answer for `image` after retries.
    pub(crate) async fn with_retries(
        &mut self,
        route: &Route,
        image: &ImageRef,
        credential: Option<&Credential>,
    ) -> Attempt {
        let host = &route.host;
        let registry = &host.name;
        let repository = image.repository();
        let settings = self.client.settings();
        let (retries, max_wait, max_pause) = (settings.retries, settings.max_retry_wait, settings.max_pause);
        let mut attempt_no = 0;
        loop {
            let before = before_asking(
                host.limits.repository_pause_remaining(repository),
                host.limits.pause_remaining(),
                max_wait,
            );
            match before {
                Before::Ask(wait) if wait.is_zero() => {}
                Before::Ask(wait) => tokio::time::sleep(wait).await,
                Before::RepositoryPaused(wait) => {
                    return Attempt::failed(
                        State::RateLimited,
                        format!(
                            "{registry} answered 429 for {repository} and asked to wait {}s more (Retry-After); \
                             not asked again before then",
                            wait.as_secs()
                        ),
                    );
                }
            }
            let attempt = self.resolve(host, image, credential, route.ns.as_deref()).await;
            let retryable = matches!(attempt.state, State::RateLimited | State::RegistryUnavailable);
            if attempt.state == State::RateLimited {
                let until = Instant::now() + capped_pause(attempt.retry_after, backoff(attempt_no), max_pause);
                host.limits.pause_repository_until(repository, until);
                host.limits.pause_until(until);
            }
            if !retryable || attempt_no >= retries {
                return attempt;
            }
            let wait = attempt.retry_after.unwrap_or_else(|| backoff(attempt_no));
            if wait > max_wait {
                return attempt;
            }
            // A 429 paused the repository: the wait happens at the top of the loop.
            if attempt.state != State::RateLimited {
                tokio::time::sleep(wait).await;
            }
            attempt_no += 1;
        }
    }
}

/// 250 ms, 500 ms, 1 s, ... for retries without `Retry-After`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_saturates() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(40), backoff(8));
    }

    #[test]
    fn another_repositorys_429_never_answers_a_probe() {
        let secs = Duration::from_secs;
        let max_wait = secs(30);
        let ask = |wait: u64| Before::Ask(secs(wait));
        assert_eq!(before_asking(None, None, max_wait), ask(0));
        assert_eq!(before_asking(None, Some(secs(5)), max_wait), ask(5));
        // Another repository's long pause: asked at once, its own answer reported.
        assert_eq!(before_asking(None, Some(secs(600)), max_wait), ask(0));
        assert_eq!(before_asking(Some(secs(3)), Some(secs(600)), max_wait), ask(3));
        assert_eq!(before_asking(Some(secs(600)), Some(secs(600)), max_wait), Before::RepositoryPaused(secs(600)));
        assert_eq!(before_asking(Some(secs(3)), Some(secs(10)), max_wait), ask(10));
    }
}
