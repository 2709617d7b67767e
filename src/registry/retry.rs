//! Retries on one host: a 429, a 5xx or a transport failure is tried again, honouring
//! `Retry-After`; a 429 also pauses that registry for every probe, not just this one.

use std::time::Duration;

use tokio::time::Instant;

use super::http::Exchange;
use super::outcome::{Attempt, State};
use super::routes::Route;
use crate::credentials::Credential;
use crate::image::ImageRef;

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
        let (retries, max_wait) = (self.client.settings().retries, self.client.settings().max_retry_wait);
        let mut attempt_no = 0;
        loop {
            if let Some(wait) = host.limits.pause_remaining() {
                if wait > max_wait {
                    return Attempt::failed(
                        State::RateLimited,
                        format!(
                            "{registry} asked to wait {}s (Retry-After); not asked again before then",
                            wait.as_secs()
                        ),
                    );
                }
                tokio::time::sleep(wait).await;
            }
            let attempt = self.resolve(host, image, credential, route.ns.as_deref()).await;
            let retryable = matches!(attempt.state, State::RateLimited | State::RegistryUnavailable);
            if attempt.state == State::RateLimited {
                let pause = attempt.retry_after.unwrap_or_else(|| backoff(attempt_no));
                host.limits.pause_until(Instant::now() + pause);
            }
            if !retryable || attempt_no >= retries {
                return attempt;
            }
            let wait = attempt.retry_after.unwrap_or_else(|| backoff(attempt_no));
            if wait > max_wait {
                return attempt;
            }
            // A 429 paused the host: the wait happens at the top of the loop.
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
}
