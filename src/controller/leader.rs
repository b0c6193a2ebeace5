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
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen: Instant,
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
        if self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != spec.holder_identity || o.renew_time != spec.renew_time)
        {
            self.observed = Some(Observed {
                holder: spec.holder_identity.clone(),
                renew_time: spec.renew_time.clone(),
                seen: Instant::now(),
            });
        }
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let free = spec
            .holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty();
        let duration = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(LEASE_DURATION.as_secs() as i32)
                .max(1) as u64,
        );
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| o.seen.elapsed() > duration);
        if !(ours || free || expired) {
            return Ok(false);
        }
        if !ours {
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
                    tracing::warn!(error = %crate::pipeline::error_chain(&e), "leader election attempt failed; retrying")
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
                    tracing::warn!(error = %crate::pipeline::error_chain(&e), "renewing the leader Lease failed");
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
