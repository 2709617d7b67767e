//! The probe states (docs/states.md), the pure classification of registry answers into them,
//! and one host's answer before mirrors and retries are settled.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// One-hot: exactly one state is current per image key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    // Declared in the order problems are listed: the most actionable first.
    Absent,
    PlatformMissing,
    UnsupportedManifest,
    AuthenticationFailure,
    AuthorizationFailure,
    BadImageFormat,
    RateLimited,
    RegistryUnavailable,
    UnknownError,
    Pending,
    Available,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Absent,
        State::PlatformMissing,
        State::UnsupportedManifest,
        State::AuthenticationFailure,
        State::AuthorizationFailure,
        State::BadImageFormat,
        State::RateLimited,
        State::RegistryUnavailable,
        State::UnknownError,
        State::Pending,
        State::Available,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Available => "available",
            State::Absent => "absent",
            State::PlatformMissing => "platform_missing",
            State::UnsupportedManifest => "unsupported_manifest",
            State::BadImageFormat => "bad_image_format",
            State::AuthenticationFailure => "authentication_failure",
            State::AuthorizationFailure => "authorization_failure",
            State::RateLimited => "rate_limited",
            State::RegistryUnavailable => "registry_unavailable",
            State::UnknownError => "unknown_error",
            State::Pending => "pending",
        }
    }

    /// Whether a later attempt may give another answer without anything changing in the
    /// registry's content: these are retried, and the scheduler probes them again soon.
    pub fn is_transient(self) -> bool {
        matches!(self, State::RateLimited | State::RegistryUnavailable | State::UnknownError)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// One host's answer, before mirrors and retries are settled.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    pub state: State,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// The cause, for every state but `available`; never contains a credential.
    pub error: Option<String>,
    /// What the host's `Retry-After` asked for.
    pub retry_after: Option<Duration>,
}

impl Attempt {
    pub fn failed(state: State, error: impl Into<String>) -> Self {
        Self { state, digest: None, media_type: None, error: Some(error.into()), retry_after: None }
    }
}

/// What a manifest request's answer means, before retries.
pub fn classify_status(status: u16, error_codes: &[String], insufficient_scope: bool) -> State {
    // Entries may be `CODE: message`; the code decides.
    let has = |code: &str| {
        error_codes.iter().any(|c| c.split(':').next().is_some_and(|c| c.trim().eq_ignore_ascii_case(code)))
    };
    match status {
        200..=299 => State::Available,
        404 => State::Absent,
        401 if insufficient_scope => State::AuthorizationFailure,
        401 => State::AuthenticationFailure,
        403 => State::AuthorizationFailure,
        429 => State::RateLimited,
        500..=599 => State::RegistryUnavailable,
        _ if has("TOOMANYREQUESTS") => State::RateLimited,
        _ if has("MANIFEST_UNKNOWN") || has("NAME_UNKNOWN") => State::Absent,
        _ if has("DENIED") => State::AuthorizationFailure,
        _ if has("UNAUTHORIZED") => State::AuthenticationFailure,
        _ => State::UnknownError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify_status(200, &[], false), State::Available);
        assert_eq!(classify_status(404, &[], false), State::Absent);
        assert_eq!(classify_status(401, &[], false), State::AuthenticationFailure);
        assert_eq!(classify_status(401, &[], true), State::AuthorizationFailure);
        assert_eq!(classify_status(403, &[], false), State::AuthorizationFailure);
        assert_eq!(classify_status(429, &[], false), State::RateLimited);
        assert_eq!(classify_status(503, &[], false), State::RegistryUnavailable);
        assert_eq!(classify_status(418, &[], false), State::UnknownError);
    }

    #[test]
    fn error_codes_decide_odd_statuses() {
        let codes = |c: &str| vec![c.to_string()];
        assert_eq!(classify_status(400, &codes("MANIFEST_UNKNOWN"), false), State::Absent);
        assert_eq!(classify_status(400, &codes("NAME_UNKNOWN"), false), State::Absent);
        assert_eq!(classify_status(400, &codes("TOOMANYREQUESTS"), false), State::RateLimited);
        assert_eq!(classify_status(400, &codes("DENIED"), false), State::AuthorizationFailure);
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{s}\"")));
        }
    }
}
