//! leader: election on a coordination.k8s.io/v1 Lease, like client-go's leaderelection:
//! take the Lease when it is free, expired or ours, renew it, and write with the
//! resourceVersion read so that two candidates can never both win (the loser gets 409).
//!
//! Expiry is judged on this process's clock from when the holder's record last changed
//! (not from the holder's renewTime), so clock skew between replicas does not matter.

use super::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::time::{Duration, Instant};

pub const LEASE_NAME: &str = "kompress-controller";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_PERIOD: Duration = Duration::from_secs(5);
/// A leader that could not renew for this long stops (before others may take over at 15s).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    observed: Option<Observed>,
}

/// The last holder record seen and when this process first saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen: Instant,
}

/// Who may write the Lease now, as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it: take it.
    Free,
    /// We hold it: renew it.
    Ours,
    /// Another holder's record has not changed for longer than its lease duration (on our
    /// clock): take it over.
    Expired,
    /// Another holder renews it: stand by.
    Held,
}

impl Decision {
    pub fn may_write(&self) -> bool {
        !matches!(self, Self::Held)
    }
}

/// The pure election rule: the Lease's holder record, our identity, the record we saw before
/// (with when we first saw it) and the time now give the decision and the record to remember.
/// Expiry is measured from when the record last changed on this process's clock, never from
/// the holder's renewTime, so clock skew between replicas cannot make a live leader look dead.
pub fn decide(
    spec: &LeaseSpec,
    identity: &str,
    before: Option<&Observed>,
    now: Instant,
) -> (Decision, Observed) {
    let observed = match before {
        Some(o) if o.holder == spec.holder_identity && o.renew_time == spec.renew_time => o.clone(),
        _ => Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            seen: now,
        },
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let duration = Duration::from_secs(
        spec.lease_duration_seconds
            .unwrap_or(LEASE_DURATION.as_secs() as i32)
            .max(1) as u64,
    );
    let decision = if holder.is_empty() {
        Decision::Free
    } else if holder == identity {
        Decision::Ours
    } else if now.saturating_duration_since(observed.seen) > duration {
        Decision::Expired
    } else {
        Decision::Held
    };
    (decision, observed)
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            identity,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn err(&self, source: kube::Error) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: LEASE_NAME.into(),
            source,
        }
    }

    /// One attempt: true when this process holds the Lease afterwards. Losing a race (409) is
    /// `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let lost_race = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists());
        let Some(mut lease) = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if lost_race(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let (decision, observed) =
            decide(spec, &self.identity, self.observed.as_ref(), Instant::now());
        self.observed = Some(observed);
        if !decision.may_write() {
            return Ok(false);
        }
        if decision != Decision::Ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        spec.renew_time = Some(now());
        // replace carries metadata.resourceVersion: a concurrent writer makes this a 409
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up (on shutdown) so the next leader need not wait for it to expire.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(e) = self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "could not release the leader Lease; it expires on its own");
        }
    }

    /// Waits until this process holds the Lease; `on_standby` runs after each lost attempt
    /// (the state is then known: someone else leads).
    pub async fn acquire(&mut self, mut on_standby: impl FnMut()) {
        let mut announced = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {
                    if !announced {
                        tracing::info!(identity = %self.identity, "another replica leads; waiting for the Lease");
                        announced = true;
                    }
                    on_standby();
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), "leader election attempt failed; retrying")
                }
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews every RENEW_PERIOD; returns when leadership is lost (another holder, or no
    /// successful renewal within RENEW_DEADLINE).
    pub async fn hold(&mut self) -> Error {
        let mut renewed = Instant::now();
        let mut wait = RENEW_PERIOD;
        loop {
            tokio::time::sleep(wait).await;
            // Each attempt is bounded by the time left before the renew deadline: a request
            // that hangs (kube's client has no read timeout by default) must not keep a
            // leader acting after a standby may already have taken the Lease over.
            let left = RENEW_DEADLINE.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = Instant::now();
                    wait = RENEW_PERIOD;
                }
                Ok(Ok(false)) => {
                    return Error::LeadershipLost(format!(
                        "{}/{LEASE_NAME} (taken by another replica)",
                        self.namespace
                    ));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), "renewing the leader Lease failed");
                    wait = RETRY_PERIOD; // retry sooner than a routine renewal, as client-go does
                }
                Err(_) => tracing::warn!("renewing the leader Lease timed out"),
            }
            if renewed.elapsed() >= RENEW_DEADLINE {
                return Error::LeadershipLost(format!(
                    "{}/{LEASE_NAME} (not renewed for {}s)",
                    self.namespace,
                    RENEW_DEADLINE.as_secs()
                ));
            }
            wait = wait.min(RENEW_DEADLINE.saturating_sub(renewed.elapsed()));
        }
    }
}

/// POD_NAME where the Downward API gives it; else hostname and pid.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "kompress".into());
            format!("{host}-{}", std::process::id())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs: i64, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_second(1_700_000_000 + renewed_secs).unwrap(),
            )),
            lease_duration_seconds: duration,
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_without_a_holder_is_free_and_ours_is_renewed() {
        let t0 = Instant::now();
        assert_eq!(
            decide(&spec(None, 0, None), "a", None, t0).0,
            Decision::Free
        );
        assert_eq!(
            decide(&spec(Some(""), 0, None), "a", None, t0).0,
            Decision::Free
        );
        assert_eq!(
            decide(&spec(Some("a"), 0, None), "a", None, t0).0,
            Decision::Ours
        );
    }

    #[test]
    fn another_holder_is_held_until_its_record_stops_changing_for_a_lease_duration() {
        let t0 = Instant::now();
        let s = spec(Some("b"), 0, Some(15));
        let (d, seen) = decide(&s, "a", None, t0);
        assert_eq!(
            d,
            Decision::Held,
            "first sight starts the clock: never expired at once"
        );
        let (d, seen) = decide(&s, "a", Some(&seen), t0 + Duration::from_secs(15));
        assert_eq!(d, Decision::Held, "exactly the duration: not yet");
        let (d, _) = decide(&s, "a", Some(&seen), t0 + Duration::from_secs(16));
        assert_eq!(d, Decision::Expired);
    }

    #[test]
    fn a_renewal_restarts_the_clock_whatever_the_holders_clock_says() {
        let t0 = Instant::now();
        // The holder's renewTime is far in the past (skewed clock): irrelevant.
        let (_, seen) = decide(&spec(Some("b"), -86_400, Some(15)), "a", None, t0);
        let later = t0 + Duration::from_secs(14);
        let (d, seen) = decide(&spec(Some("b"), -86_399, Some(15)), "a", Some(&seen), later);
        assert_eq!(d, Decision::Held);
        assert_eq!(seen.seen, later, "a changed record is seen anew");
        let (d, _) = decide(
            &spec(Some("b"), -86_399, Some(15)),
            "a",
            Some(&seen),
            later + Duration::from_secs(14),
        );
        assert_eq!(
            d,
            Decision::Held,
            "14s after the renewal, not 28s after the first sight"
        );
        // A new holder is a new record too.
        let (d, _) = decide(
            &spec(Some("c"), -86_399, Some(15)),
            "a",
            Some(&seen),
            later + Duration::from_secs(60),
        );
        assert_eq!(d, Decision::Held);
    }

    #[test]
    fn missing_or_zero_durations_fall_back_safely() {
        let t0 = Instant::now();
        let (_, seen) = decide(&spec(Some("b"), 0, None), "a", None, t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            decide(&spec(Some("b"), 0, None), "a", Some(&seen), at(15)).0,
            Decision::Held
        );
        assert_eq!(
            decide(&spec(Some("b"), 0, None), "a", Some(&seen), at(16)).0,
            Decision::Expired
        );
        let (_, seen) = decide(&spec(Some("b"), 0, Some(0)), "a", None, t0);
        assert_eq!(
            decide(&spec(Some("b"), 0, Some(0)), "a", Some(&seen), at(1)).0,
            Decision::Held
        );
        assert_eq!(
            decide(&spec(Some("b"), 0, Some(0)), "a", Some(&seen), at(2)).0,
            Decision::Expired
        );
        // A clock that goes backwards never expires anyone.
        assert_eq!(
            decide(&spec(Some("b"), 0, Some(15)), "a", Some(&seen), t0).0,
            Decision::Held
        );
    }
}
