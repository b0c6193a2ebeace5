//! reconcile: validate -> build -> apply -> observe -> update_status for one CompressionJob,
//! and the per-object exponential backoff of the error policy.

use super::error::{Error, Result};
use super::events::Recorder;
use super::status::{Observed, apply_status, desired, search_event, transition_event};
use super::{ControllerConfig, State, apply, build, observe};
use crate::api::{CompressionJob, CompressionJobStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// While a Job runs, its watch drives progress; this is only a safety net.
const REQUEUE_RUNNING: Duration = Duration::from_secs(300);
/// While a Job waits for Kueue: how soon to look for the Workload's reason, then how often.
const REQUEUE_QUEUED_FIRST: Duration = Duration::from_secs(5);
const REQUEUE_QUEUED: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub recorder: Recorder,
    pub state: Arc<State>,
    /// Consecutive failures per object; cleared by a successful reconcile.
    pub failures: Mutex<HashMap<ObjectRef<CompressionJob>, u32>>,
}

/// `BACKOFF_BASE * 2^(failures-1)`, capped at BACKOFF_MAX.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

pub fn error_policy(cj: Arc<CompressionJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().expect("failure map lock");
        let n = map.entry(ObjectRef::from_obj(&*cj)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(failures);
    tracing::warn!(
        namespace = cj.namespace().unwrap_or_default(), name = %cj.name_any(), category = error.category(), failures, retry_in_s = delay.as_secs(),
        error = %crate::error::error_chain(error), "reconcile failed"
    );
    Action::requeue(delay)
}

pub async fn reconcile(cj: Arc<CompressionJob>, ctx: Arc<Context>) -> Result<Action> {
    let mut timer = ctx.state.metrics.reconcile_timer();
    let result = steps(&cj, &ctx).await;
    timer.set_result(match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    });
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failure map lock")
            .remove(&ObjectRef::from_obj(&*cj));
    }
    result
}

/// Now, at the second precision metav1.Time keeps, so a status compares equal after the
/// round trip through the API.
pub(crate) fn now() -> Time {
    Time(
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .expect("now is a valid timestamp"),
    )
}

async fn steps(cj: &CompressionJob, ctx: &Context) -> Result<Action> {
    let namespace = cj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    cj.uid().ok_or(Error::MissingMetadata("uid"))?;
    let api: Api<CompressionJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = cj.metadata.generation;
    let old = cj.status.as_ref();

    // validate: an invalid spec waits for a change; nothing to retry
    if let Err(invalid) = super::validate::validate(cj) {
        let status = desired(
            generation,
            old,
            None,
            &Observed::Invalid(invalid.to_string()),
            &now(),
        );
        update_status(ctx, &api, cj, old, status).await?;
        return Ok(Action::await_change());
    }

    // a finished generation is never run again, even after its Job's TTL removed it
    let job_name = build::job_name(cj);
    if let Some(s) = old
        && s.observed_generation == generation
        && s.job_name.as_deref() == Some(job_name.as_str())
        && s.phase.is_some_and(Phase::is_terminal)
    {
        return Ok(Action::await_change());
    }

    // build + apply
    let (job, created) = apply::apply(&ctx.client, cj, build::build_job(cj, &ctx.config)).await?;
    if created {
        tracing::info!(%namespace, name = %cj.name_any(), job = %job_name, ?generation, "created worker Job");
        let note = format!(
            "created worker Job {job_name} for generation {}",
            generation.unwrap_or(0)
        );
        publish(
            ctx,
            cj,
            Event {
                type_: EventType::Normal,
                reason: crate::api::reason::JOB_CREATED.into(),
                note: Some(note),
                action: "CreateJob".into(),
                secondary: Some(job.object_ref(&())),
            },
        )
        .await;
    }

    // observe + update_status
    let (run, observed) = observe::observe(&ctx.client, &job).await?;
    let status = desired(generation, old, Some(&run), &observed, &now());
    let terminal = status.phase.is_some_and(Phase::is_terminal);
    update_status(ctx, &api, cj, old, status).await?;
    Ok(match &observed {
        _ if terminal => Action::await_change(),
        // Kueue's account of the wait lives on its Workload, which this controller does not
        // watch: look again soon until there is one, then now and then (admission itself
        // unsuspends the Job, whose watch wakes the reconcile at once).
        Observed::Queued { why: None, .. } => Action::requeue(REQUEUE_QUEUED_FIRST),
        Observed::Queued { .. } => Action::requeue(REQUEUE_QUEUED),
        _ => Action::requeue(REQUEUE_RUNNING),
    })
}

/// Writes the status when it changed; on a phase transition also the Event and counters.
async fn update_status(
    ctx: &Context,
    api: &Api<CompressionJob>,
    cj: &CompressionJob,
    old: Option<&CompressionJobStatus>,
    status: CompressionJobStatus,
) -> Result<()> {
    if old == Some(&status) {
        return Ok(());
    }
    apply_status(api, cj, &status).await?;
    if let Some(event) = search_event(old, &status) {
        let trials = status
            .result
            .as_ref()
            .and_then(|r| r.search.as_ref())
            .map_or(0, |s| s.trials);
        ctx.state.metrics.search_finished(
            &cj.namespace().unwrap_or_default(),
            status.phase,
            trials,
        );
        publish(ctx, cj, event).await;
    }
    if let Some(event) = transition_event(old, &status) {
        let namespace = cj.namespace().unwrap_or_default();
        match status.phase {
            Some(Phase::Succeeded)
                if status.result.as_ref().is_some_and(|r| r.promoted.is_some()) =>
            {
                ctx.state.metrics.promoted(&namespace)
            }
            Some(Phase::Rejected) => ctx.state.metrics.rejected(&namespace),
            _ => {}
        }
        tracing::info!(%namespace, name = %cj.name_any(), phase = ?status.phase, reason = %event.reason, "phase changed");
        publish(ctx, cj, event).await;
    }
    Ok(())
}

/// Events are best effort: a failure to record one is logged, never retried.
async fn publish(ctx: &Context, cj: &CompressionJob, mut event: Event) {
    event.note = event.note.map(|n| crate::uri::redact_in(&n));
    if let Err(e) = ctx.recorder.publish(&event, &cj.object_ref(&())).await {
        tracing::warn!(name = %cj.name_any(), reason = %event.reason, error = %e, "could not record Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_and_caps_at_five_minutes() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
