//! Per-registry budgets: requests in flight, requests per second, and the pause a 429's
//! `Retry-After` asks for. Each registry host has its own, so one slow or rate-limiting
//! registry never holds back the others. A 429 is also evidence about the repository that got
//! it, kept apart from the host's budget: another repository's probe is never answered with it
//! (docs/states.md, "One repository's 429").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

pub struct HostLimits {
    in_flight: Semaphore,
    /// Spacing between request starts; `None` is unlimited.
    interval: Option<Duration>,
    next_start: Mutex<Instant>,
    paused_until: Mutex<Option<Instant>>,
    /// Repositories that were answered 429 themselves, and until when they asked us to wait.
    repositories_paused: Mutex<HashMap<String, Instant>>,
}

/// Past this many paused repositories, the expired ones are forgotten before another is added.
const PRUNE_REPOSITORIES_AT: usize = 1024;

impl HostLimits {
    pub fn new(max_concurrent: usize, requests_per_second: Option<f64>) -> Self {
        Self {
            in_flight: Semaphore::new(max_concurrent.max(1)),
            interval: requests_per_second.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r)),
            next_start: Mutex::new(Instant::now()),
            paused_until: Mutex::new(None),
            repositories_paused: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot in the budget; the permit is held for the request's duration.
    pub async fn acquire(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.in_flight.acquire().await.ok()?;
        if let Some(interval) = self.interval {
            let start = {
                let mut next = self.next_start.lock().unwrap_or_else(|p| p.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Some(permit)
    }

    /// The registry asked us to stay away until then.
    pub fn pause_until(&self, until: Instant) {
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        *paused = Some(paused.map_or(until, |p| p.max(until)));
    }

    /// How long the registry still asked us to stay away.
    pub fn pause_remaining(&self) -> Option<Duration> {
        let paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        remaining(*paused)
    }

    /// `repository` was answered 429 and asked us to wait until then.
    pub fn pause_repository_until(&self, repository: &str, until: Instant) {
        let mut paused = self.repositories_paused.lock().unwrap_or_else(|p| p.into_inner());
        if paused.len() >= PRUNE_REPOSITORIES_AT {
            let now = Instant::now();
            paused.retain(|_, until| *until > now);
        }
        let entry = paused.entry(repository.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How long `repository` itself still asked us to stay away.
    pub fn repository_pause_remaining(&self, repository: &str) -> Option<Duration> {
        let paused = self.repositories_paused.lock().unwrap_or_else(|p| p.into_inner());
        remaining(paused.get(repository).copied())
    }
}

fn remaining(until: Option<Instant>) -> Option<Duration> {
    until.and_then(|until| until.checked_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// How long a 429 pauses its repository and host: what `Retry-After` asked for (or the backoff
/// when it said nothing), never longer than `cap` — one repository's `Retry-After: 3600` must
/// not silence a registry past the probing window.
pub fn capped_pause(retry_after: Option<Duration>, backoff: Duration, cap: Duration) -> Duration {
    retry_after.unwrap_or(backoff).min(cap)
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("Sun, 32 Nov 1994 08:49:27 GMT", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_second_spaces_starts() {
        let limits = HostLimits::new(8, Some(10.0));
        let begin = Instant::now();
        for _ in 0..5 {
            drop(limits.acquire().await);
        }
        assert_eq!(begin.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_are_bounded() {
        let limits = HostLimits::new(2, None);
        let first = limits.acquire().await;
        let second = limits.acquire().await;
        assert!(first.is_some() && second.is_some());
        let third = tokio::time::timeout(Duration::from_secs(60), limits.acquire()).await;
        assert!(third.is_err(), "a third request waits while two are in flight");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(60), limits.acquire()).await;
        assert!(matches!(third, Ok(Some(_))), "and proceeds when one ends");
    }

    #[test]
    fn pauses_are_capped() {
        let (backoff, cap) = (Duration::from_millis(250), Duration::from_secs(600));
        assert_eq!(capped_pause(Some(Duration::from_secs(3600)), backoff, cap), cap);
        assert_eq!(capped_pause(Some(Duration::from_secs(3)), backoff, cap), Duration::from_secs(3));
        assert_eq!(capped_pause(None, backoff, cap), backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repository_pause_is_its_own() {
        let limits = HostLimits::new(1, None);
        limits.pause_repository_until("team/app", Instant::now() + Duration::from_secs(30));
        assert_eq!(limits.repository_pause_remaining("team/app"), Some(Duration::from_secs(30)));
        assert_eq!(limits.repository_pause_remaining("team/other"), None);
        assert_eq!(limits.pause_remaining(), None, "the host's budget is another thing");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(limits.repository_pause_remaining("team/app"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_extend_never_shrink() {
        let limits = HostLimits::new(1, None);
        limits.pause_until(Instant::now() + Duration::from_secs(30));
        limits.pause_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(limits.pause_remaining(), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(limits.pause_remaining(), None);
    }
}
