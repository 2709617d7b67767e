//! A registry's pull budget as it announces it: Docker Hub answers manifest requests with
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (HEAD requests do not
//! count against it). Any registry sending these headers is read the same way; the values go
//! to the `pullcheck.registry.rate_limit.*` gauges and `check`'s summary (docs/telemetry.md).

use reqwest::header::HeaderMap;
use serde::Serialize;

/// The budget a registry announced on one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests left in the current window.
    pub remaining: u64,
    /// The window, in seconds, when the registry says (`w=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
}

impl RateLimit {
    /// Both headers, each `N` or `N;w=SECONDS` (the IETF RateLimit header draft Docker Hub
    /// follows); `None` unless both parse.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let read = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(parse_quota);
        let (limit, limit_window) = read("ratelimit-limit")?;
        let (remaining, remaining_window) = read("ratelimit-remaining")?;
        Some(Self { limit, remaining, window_seconds: remaining_window.or(limit_window) })
    }

    /// What is left, as a fraction of the limit (0 when the limit is 0).
    pub fn remaining_ratio(&self) -> f64 {
        if self.limit == 0 { 0.0 } else { self.remaining as f64 / self.limit as f64 }
    }
}

/// `76;w=21600` → (76, Some(21600)); `76` → (76, None).
fn parse_quota(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';');
    let quota = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| p.trim().strip_prefix("w=")).and_then(|w| w.trim().parse().ok());
    Some((quota, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("valid header"));
        }
        map
    }

    #[test]
    fn docker_hubs_headers() {
        let limit = RateLimit::from_headers(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]));
        assert_eq!(limit, Some(RateLimit { limit: 100, remaining: 76, window_seconds: Some(21600) }));
        assert!((limit.map_or(0.0, |l| l.remaining_ratio()) - 0.76).abs() < 1e-9);
    }

    #[test]
    fn bare_numbers_and_garbage() {
        let bare = RateLimit::from_headers(&headers(&[("ratelimit-limit", "10"), ("ratelimit-remaining", "0")]));
        assert_eq!(bare, Some(RateLimit { limit: 10, remaining: 0, window_seconds: None }));
        assert_eq!(RateLimit::from_headers(&headers(&[("ratelimit-limit", "10")])), None, "both or nothing");
        assert_eq!(
            RateLimit::from_headers(&headers(&[("ratelimit-limit", "many"), ("ratelimit-remaining", "1")])),
            None
        );
        assert_eq!(RateLimit { limit: 0, remaining: 0, window_seconds: None }.remaining_ratio(), 0.0);
    }
}
