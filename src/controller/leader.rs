//! Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes controllers do it: one
//! replica probes and exports image series, the others stand by warm. Expiry is judged on this
//! process's clock from when the lease record was last seen to change (as client-go does), so
//! clock skew between nodes cannot shorten a lease. A leader that cannot renew within the
//! renew deadline stops leading at once — before any other replica may take the lease over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub name: String,
    pub namespace: String,
    /// Unique per process: the pod name plus a per-process suffix.
    pub identity: String,
}

/// What the lease says, as far as the election goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// The next move on the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it, holding it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free (released) or expired: take it over.
    TakeOver,
    /// Another replica's, still valid.
    Wait,
}

/// Pure: what to do given the lease (`None`: none exists), when its record was last seen to
/// change, and now.
pub fn next_step(
    record: Option<&LeaseRecord>,
    observed_at: Instant,
    now: Instant,
    me: &str,
    lease_duration: Duration,
) -> Step {
    match record {
        None => Step::Create,
        Some(r) if r.holder.as_deref() == Some(me) => Step::Renew,
        Some(r) if r.holder.is_none() => Step::TakeOver,
        Some(_) if now.duration_since(observed_at) >= lease_duration => Step::TakeOver,
        Some(_) => Step::Wait,
    }
}

/// A running election: whether this process leads, and how to give the lease back.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts campaigning.
    pub fn start(client: kube::Client, settings: LeaderSettings) -> Self {
        let (leading_tx, leading) = watch::channel(false);
        let (release, released) = oneshot::channel();
        let elector = Elector { api: Api::namespaced(client, &settings.namespace), settings, observed: None };
        let task = tokio::spawn(elector.run(leading_tx, released));
        Self { leading, release: Some(release), task }
    }

    /// Gives the lease back (when held) so a standby takes over at its next retry, waiting at
    /// most `within`.
    pub async fn release(mut self, within: Duration) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

struct Elector {
    api: Api<Lease>,
    settings: LeaderSettings,
    /// The last record seen and when it was first seen so.
    observed: Option<(LeaseRecord, Instant)>,
}

impl Elector {
    async fn run(mut self, leading: watch::Sender<bool>, mut released: oneshot::Receiver<()>) {
        let settings = self.settings.clone();
        let mut renewed_at: Option<Instant> = None;
        loop {
            let attempt = tokio::time::timeout(settings.retry_period, self.try_acquire_or_renew());
            let outcome = tokio::select! {
                _ = &mut released => break,
                outcome = attempt => outcome,
            };
            let now = Instant::now();
            let failure = match outcome {
                Ok(Ok(true)) => {
                    renewed_at = Some(now);
                    if !*leading.borrow() {
                        tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader");
                        leading.send_replace(true);
                    }
                    None
                }
                Ok(Ok(false)) => {
                    if leading.send_replace(false) {
                        tracing::warn!(identity = %settings.identity, "another replica holds the lease: standing by");
                    }
                    renewed_at = None;
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {:?}", settings.retry_period)),
            };
            if let Some(failed) = failure {
                // Past the renew deadline the lease may soon pass: stop before it can.
                if *leading.borrow() && renewed_at.is_none_or(|at| now.duration_since(at) >= settings.renew_deadline) {
                    tracing::error!(identity = %settings.identity, "could not renew the lease ({failed}): no longer leading");
                    leading.send_replace(false);
                } else {
                    tracing::warn!("lease {}/{}: {failed}", settings.namespace, settings.name);
                }
            }
            let wait = if *leading.borrow() {
                // A leader renews every retry period, but never waits past its deadline.
                let left = renewed_at.map_or(Duration::ZERO, |at| settings.renew_deadline.saturating_sub(at.elapsed()));
                settings.retry_period.min(left.max(Duration::from_millis(100)))
            } else {
                settings.retry_period
            };
            tokio::select! {
                _ = &mut released => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            match tokio::time::timeout(settings.retry_period, self.give_back()).await {
                Ok(Ok(())) => tracing::info!(identity = %settings.identity, "lease released"),
                Ok(Err(e)) => tracing::warn!("releasing the lease: {e}"),
                Err(_) => tracing::warn!("releasing the lease: no answer"),
            }
        }
    }

    /// One round: `Ok(true)` when this process holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get(&self.settings.name).await {
            Ok(lease) => Some(lease),
            Err(kube::Error::Api(status)) if status.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let record = current.as_ref().map(LeaseRecord::of);
        let observed_at = match (&self.observed, &record) {
            (Some((seen, at)), Some(r)) if seen == r => *at,
            _ => now,
        };
        if let Some(r) = &record {
            self.observed = Some((r.clone(), observed_at));
        }
        let me = self.settings.identity.clone();
        let step = next_step(record.as_ref(), observed_at, now, &me, self.settings.lease_duration);
        let written = match (step, current) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.settings.name.clone()), ..ObjectMeta::default() },
                    spec: Some(self.spec(None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
                spec.lease_duration_seconds = Some(seconds(self.settings.lease_duration));
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await
            }
            (Step::TakeOver, Some(mut lease)) => {
                let transitions = record.as_ref().map_or(0, |r| r.transitions) + 1;
                lease.spec = Some(self.spec(lease.spec.take(), transitions));
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await
            }
            (Step::Renew | Step::TakeOver, None) => return Ok(false),
        };
        match written {
            Ok(lease) => {
                self.observed = Some((LeaseRecord::of(&lease), Instant::now()));
                Ok(true)
            }
            // Another replica wrote first (409): not ours this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The spec of a lease this process takes: held by it, acquired and renewed now.
    fn spec(&self, previous: Option<LeaseSpec>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(seconds(self.settings.lease_duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..previous.unwrap_or_default()
        }
    }

    /// The lease freed for the next leader (client-go's release on cancel).
    async fn give_back(&mut self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(&self.settings.name).await?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.settings.name, &PostParams::default(), &lease).await.map(|_| ())
    }
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>) -> LeaseRecord {
        LeaseRecord { holder: holder.map(str::to_string), renew_time: Some("t".into()), transitions: 0 }
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_passes_only_when_expired_on_our_clock_or_released() {
        let lease = Duration::from_secs(15);
        let seen = Instant::now();
        assert_eq!(next_step(None, seen, seen, "me", lease), Step::Create);
        assert_eq!(next_step(Some(&held_by(Some("me"))), seen, seen, "me", lease), Step::Renew);
        assert_eq!(next_step(Some(&held_by(None)), seen, seen, "me", lease), Step::TakeOver, "released");
        let other = held_by(Some("other"));
        assert_eq!(next_step(Some(&other), seen, seen + Duration::from_secs(14), "me", lease), Step::Wait);
        assert_eq!(next_step(Some(&other), seen, seen + lease, "me", lease), Step::TakeOver, "unchanged for a lease");
    }
}
