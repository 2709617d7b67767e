//! Credentials tried as kubelet tries them: each matching one in order until the registry
//! accepts one; anonymous only when none matches. The one that worked is remembered per image
//! and credential chain, so the steady state is still one request per probe.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use tracing::{Instrument, field};

use super::http::Exchange;
use super::outcome::{Attempt, State};
use super::routes::Route;
use crate::credentials::{CredentialSource, SourcedCredential};
use crate::image::ImageRef;

/// The answer a probe settles on, and whose credential gave it.
pub(crate) struct Decided {
    pub attempt: Attempt,
    pub credential: Option<CredentialSource>,
    /// The credential's place in the chain.
    pub index: Option<usize>,
}

impl Decided {
    pub fn failed(state: State, error: impl Into<String>) -> Self {
        Self { attempt: Attempt::failed(state, error), credential: None, index: None }
    }
}

/// Which credential of a chain worked last, per (image, chain). A fingerprint, not the
/// credentials: a collision only costs a wrong first guess.
#[derive(Default)]
pub(crate) struct WorkingCredentials {
    by_chain: Mutex<HashMap<u64, usize>>,
}

/// Forgotten wholesale past this many chains: rotated secrets leave old chains behind.
const MAX_REMEMBERED: usize = 1 << 16;

impl WorkingCredentials {
    fn fingerprint(image: &ImageRef, chain: &[SourcedCredential]) -> u64 {
        let mut hasher = DefaultHasher::new();
        (image, chain).hash(&mut hasher);
        hasher.finish()
    }

    fn get(&self, image: &ImageRef, chain: &[SourcedCredential]) -> Option<usize> {
        let by_chain = self.by_chain.lock().unwrap_or_else(|p| p.into_inner());
        by_chain.get(&Self::fingerprint(image, chain)).copied().filter(|i| *i < chain.len())
    }

    fn remember(&self, image: &ImageRef, chain: &[SourcedCredential], index: usize) {
        let mut by_chain = self.by_chain.lock().unwrap_or_else(|p| p.into_inner());
        if by_chain.len() >= MAX_REMEMBERED {
            by_chain.clear();
        }
        by_chain.insert(Self::fingerprint(image, chain), index);
    }
}

/// The order to try a chain in: the one that worked last first, then the others in order.
pub(crate) fn try_order(len: usize, worked_last: Option<usize>) -> Vec<usize> {
    let first = worked_last.filter(|i| *i < len);
    first.into_iter().chain((0..len).filter(|i| Some(*i) != first)).collect()
}

/// The answer when no credential was accepted: an answer about the image itself (`absent`,
/// `platform_missing`, ...) from any credential says more than the refusals; a credential that
/// is valid but not permitted (`authorization_failure`) more than one that is not valid.
pub(crate) fn settle(mut refused: Vec<(usize, Attempt)>) -> Option<(usize, Attempt)> {
    let rank = |state: State| match state {
        State::AuthenticationFailure => 2,
        State::AuthorizationFailure => 1,
        _ => 0,
    };
    // The first of the best ranked (min_by_key keeps the first of equals).
    let best = refused.iter().enumerate().min_by_key(|(_, (_, a))| rank(a.state)).map(|(i, _)| i)?;
    let summary: Vec<String> =
        refused.iter().map(|(_, a)| a.error.clone().unwrap_or_else(|| a.state.to_string())).collect();
    let (index, mut attempt) = refused.swap_remove(best);
    if summary.len() > 1 && rank(attempt.state) > 0 {
        attempt.error = Some(format!("every credential was refused: {}", summary.join("; ")));
    }
    Some((index, attempt))
}

impl Exchange<'_> {
    /// The registry's answer for `image`, trying `chain` in kubelet's order (anonymous when it
    /// is empty). With more than one credential, each attempt is a span of its own.
    pub(crate) async fn with_credentials(
        &mut self,
        route: &Route,
        image: &ImageRef,
        chain: &[SourcedCredential],
    ) -> Decided {
        if chain.is_empty() {
            let attempt = self.with_retries(route, image, None).await;
            return Decided { attempt, credential: None, index: None };
        }
        let working = self.client.working_credentials();
        let mut refused = Vec::new();
        for index in try_order(chain.len(), working.get(image, chain)) {
            let candidate = &chain[index];
            let attempt = if chain.len() == 1 {
                self.with_retries(route, image, Some(&candidate.credential)).await
            } else {
                let span = tracing::info_span!(
                    "credential",
                    otel.name = %format!("credential {}", candidate.source),
                    otel.kind = "internal",
                    pullcheck.credential.source = %candidate.source,
                    pullcheck.image.state = field::Empty,
                );
                let attempt =
                    self.with_retries(route, image, Some(&candidate.credential)).instrument(span.clone()).await;
                span.record("pullcheck.image.state", attempt.state.as_str());
                attempt
            };
            if attempt.state == State::Available {
                working.remember(image, chain, index);
                return Decided { attempt, credential: Some(candidate.source.clone()), index: Some(index) };
            }
            // A registry that is down or rate-limiting answers every credential alike.
            if attempt.state.is_transient() {
                return Decided { attempt, credential: Some(candidate.source.clone()), index: Some(index) };
            }
            tracing::debug!(source = %candidate.source, state = %attempt.state, "credential not accepted, trying the next");
            refused.push((index, attempt));
        }
        match settle(refused) {
            Some((index, attempt)) => {
                Decided { attempt, credential: chain.get(index).map(|c| c.source.clone()), index: Some(index) }
            }
            None => Decided {
                attempt: Attempt::failed(State::UnknownError, "no credential was tried"),
                credential: None,
                index: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(state: State, error: &str) -> Attempt {
        Attempt::failed(state, error)
    }

    #[test]
    fn the_credential_that_worked_goes_first() {
        assert_eq!(try_order(3, None), vec![0, 1, 2]);
        assert_eq!(try_order(3, Some(2)), vec![2, 0, 1]);
        assert_eq!(try_order(2, Some(5)), vec![0, 1], "a stale index is ignored");
        assert!(try_order(0, Some(0)).is_empty());
    }

    #[test]
    fn settling_prefers_what_the_image_is_over_refusals() {
        let (index, attempt) = settle(vec![
            (0, failed(State::AuthenticationFailure, "old: HTTP 401")),
            (1, failed(State::Absent, "HTTP 404")),
        ])
        .expect("attempts");
        assert_eq!((index, attempt.state), (1, State::Absent));

        let (index, attempt) = settle(vec![
            (0, failed(State::AuthenticationFailure, "old: HTTP 401")),
            (1, failed(State::AuthorizationFailure, "team: HTTP 403")),
        ])
        .expect("attempts");
        assert_eq!((index, attempt.state), (1, State::AuthorizationFailure));
        assert_eq!(attempt.error.as_deref(), Some("every credential was refused: old: HTTP 401; team: HTTP 403"));

        let (index, attempt) = settle(vec![(1, failed(State::AuthenticationFailure, "a"))]).expect("attempts");
        assert_eq!((index, attempt.error.as_deref()), (1, Some("a")), "one refusal is told as it is");
        assert!(settle(vec![]).is_none());
    }
}
