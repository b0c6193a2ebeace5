//! update_status: the status for what was observed (pure, unit-tested), the Event and metric
//! for a phase transition (pure), and the server-side apply that writes the status.

use super::error::{Error, Result};
use crate::api::wire::WorkerMessage;
use crate::api::{CompressionJob, CompressionJobStatus, JobResult, Phase, condition, reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt, api::Patch, api::PatchParams};
use serde_json::json;

/// What the controller knows about the current generation's run.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The spec failed validation (the message lists every problem); no Job exists for it.
    Invalid(String),
    /// The Job exists, suspended until Kueue admits it in `queue`; `why` is the Workload's
    /// account of the wait once Kueue has given one.
    Queued { queue: String, why: Option<String> },
    /// The Job exists; no worker pod is running yet.
    Pending,
    /// A worker pod is running.
    Running,
    /// The Job has finished; what the worker reported (or what the controller could tell
    /// when the worker left no readable message).
    Finished(Box<WorkerMessage>),
}

/// The current generation's worker Job, as far as status shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub job_name: String,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
    /// The pod that finished last, once the Job has finished.
    pub worker: Option<crate::api::WorkerRef>,
}

/// A condition reason must be CamelCase-ish (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`);
/// the worker's category always is, anything else falls back.
fn valid_reason(r: Option<&str>, fallback: &'static str) -> String {
    match r {
        Some(r)
            if r.len() <= 128
                && r.starts_with(|c: char| c.is_ascii_alphabetic())
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_,:".contains(c))
                && !r.ends_with([',', ':']) =>
        {
            r.into()
        }
        _ => fallback.into(),
    }
}

/// The checks a candidate failed, each as `name value (limit L)`.
fn failed_checks(r: &JobResult) -> Vec<String> {
    r.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {} (limit {})", c.name, c.value, c.limit))
        .collect()
}

/// Why a run failed, for people: the failing checks of a rejected candidate.
fn rejection(r: &JobResult) -> String {
    let failed = failed_checks(r);
    format!(
        "candidate rejected, nothing promoted: {}",
        if failed.is_empty() {
            "a threshold failed".into()
        } else {
            failed.join(", ")
        }
    )
}

/// `kubectl get cmpj` prints the Ratio and Acc-Drop columns as they are stored: the status keeps
/// the ratio to 2 decimals and the accuracy drop to 4 (report.json keeps every digit).
fn for_columns(mut r: crate::api::JobResult) -> crate::api::JobResult {
    let round = |v: f64, d: i32| {
        let f = 10f64.powi(d);
        (v * f).round() / f
    };
    r.ratio = round(r.ratio, 2);
    r.accuracy_drop = r.accuracy_drop.map(|a| round(a, 4));
    r
}

const TRUE: &str = "True";
const FALSE: &str = "False";
const UNKNOWN: &str = "Unknown";

/// (type, status, reason) for Ready, Reconciling, Stalled, Evaluated, Promoted.
type Conditions = [(&'static str, &'static str, String); 5];

/// The status for `observed` at `generation`. Conditions keep their `lastTransitionTime` from
/// `old` while their status stays the same, so an unchanged observation yields an equal status
/// (and no write).
pub fn desired(
    generation: Option<i64>,
    old: Option<&CompressionJobStatus>,
    run: Option<&Run>,
    observed: &Observed,
    now: &Time,
) -> CompressionJobStatus {
    let job = run.map(|r| r.job_name.as_str()).unwrap_or_default();
    let result = match observed {
        Observed::Finished(m) => m.result.clone().map(for_columns),
        _ => None,
    };
    let (message, conds) = match observed {
        Observed::Invalid(msg) => (msg.clone(), invalid_conditions()),
        Observed::Queued { .. } | Observed::Pending | Observed::Running => {
            waiting_conditions(observed, job)
        }
        Observed::Finished(m) => finished_conditions(m, job),
    };
    let message = with_cache_origin(message, result.as_ref());
    // Status and the Events made from it never carry a URI's query string or userinfo.
    let message = crate::uri::redact_in(&message);
    let phase = phase_of(observed);
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = stamp_conditions(conds, &message, old_conditions, generation, now);
    CompressionJobStatus {
        phase: Some(phase),
        observed_generation: generation,
        conditions,
        job_name: run.map(|r| r.job_name.clone()),
        start_time: run.and_then(|r| r.start_time.clone()),
        completion_time: if phase.is_terminal() {
            run.and_then(|r| r.completion_time.clone())
        } else {
            None
        },
        message: Some(message),
        worker: if phase.is_terminal() {
            run.and_then(|r| r.worker.clone())
        } else {
            None
        },
        result,
    }
}

/// An invalid spec: stalled until the spec changes, nothing evaluated or promoted.
fn invalid_conditions() -> Conditions {
    let r = reason::INVALID_SPEC.to_string();
    [
        (condition::READY, FALSE, r.clone()),
        (condition::RECONCILING, FALSE, r.clone()),
        (condition::STALLED, TRUE, r.clone()),
        (condition::EVALUATED, FALSE, r.clone()),
        (condition::PROMOTED, FALSE, r),
    ]
}

/// Queued, pending or running: reconciling, the outcome unknown yet.
fn waiting_conditions(observed: &Observed, job: &str) -> (String, Conditions) {
    let (r, msg) = match observed {
        Observed::Queued { queue, why } => (
            reason::QUEUED,
            format!(
                "worker Job {job} is queued in Kueue LocalQueue {queue}: {}",
                why.as_deref()
                    .unwrap_or("waiting for Kueue to admit it (no reason reported yet)")
            ),
        ),
        Observed::Pending => (
            reason::PENDING,
            format!("worker Job {job} created; waiting for its pod to run"),
        ),
        _ => (reason::RUNNING, format!("worker Job {job} is running")),
    };
    let r = r.to_string();
    (
        msg,
        [
            (condition::READY, FALSE, r.clone()),
            (condition::RECONCILING, TRUE, r.clone()),
            (condition::STALLED, FALSE, r.clone()),
            (condition::EVALUATED, UNKNOWN, r.clone()),
            (condition::PROMOTED, UNKNOWN, r),
        ],
    )
}

/// A finished run: passed (promoted or not), rejected, or failed.
fn finished_conditions(m: &WorkerMessage, job: &str) -> (String, Conditions) {
    match (m.phase, &m.result) {
        (Phase::Succeeded, Some(res)) => passed_conditions(res),
        // Stalled=True: a rejection is terminal and nothing changes until the spec does,
        // so kstatus (Flux, Argo CD, kpt) reads it Failed, with the reason, instead of
        // falling back to Ready=False (InProgress) and waiting out its timeout. What is
        // served does not change: the promotion target did not move.
        (Phase::Rejected, Some(res)) => {
            let r = reason::REJECTED.to_string();
            (
                rejection(res),
                [
                    (condition::READY, FALSE, r.clone()),
                    (condition::RECONCILING, FALSE, r.clone()),
                    (condition::STALLED, TRUE, r.clone()),
                    (condition::EVALUATED, TRUE, r),
                    (condition::PROMOTED, FALSE, reason::NOT_PROMOTED.into()),
                ],
            )
        }
        // Failed, or a message claiming success without a result: a failed run.
        _ => {
            let r = valid_reason(m.reason.as_deref(), reason::WORKER_FAILED);
            let msg = m
                .message
                .clone()
                .unwrap_or_else(|| format!("worker Job {job} failed"));
            let evaluated = if m.result.is_some() { TRUE } else { FALSE };
            (
                msg,
                [
                    (condition::READY, FALSE, r.clone()),
                    (condition::RECONCILING, FALSE, r.clone()),
                    (condition::STALLED, TRUE, r.clone()),
                    (condition::EVALUATED, evaluated, r),
                    (condition::PROMOTED, FALSE, reason::NOT_PROMOTED.into()),
                ],
            )
        }
    }
}

/// A candidate that passed every threshold: Ready, and Promoted when it had somewhere to go.
fn passed_conditions(res: &JobResult) -> (String, Conditions) {
    let p = reason::PASSED.to_string();
    let (promoted, msg) = match &res.promoted {
        Some(a) => (
            (TRUE, reason::PROMOTED),
            format!(
                "candidate passed every threshold ({:.2}x smaller) and was promoted to {}",
                res.ratio, a.uri
            ),
        ),
        None => (
            (FALSE, reason::NO_PROMOTE_TARGET),
            format!(
                "candidate passed every threshold ({:.2}x smaller); no promoteTo set, nothing promoted",
                res.ratio
            ),
        ),
    };
    (
        msg,
        [
            (condition::READY, TRUE, p.clone()),
            (condition::RECONCILING, FALSE, p.clone()),
            (condition::STALLED, FALSE, p.clone()),
            (condition::EVALUATED, TRUE, p),
            (condition::PROMOTED, promoted.0, promoted.1.into()),
        ],
    )
}

/// A result reused from the cache says so, and where it came from.
fn with_cache_origin(message: String, result: Option<&JobResult>) -> String {
    match result.and_then(|r| r.cached_from.as_ref()) {
        Some(c) => format!(
            "{message} (result reused from {}, cache key {})",
            c.run,
            &c.key[..c.key.len().min(16)]
        ),
        None => message,
    }
}

/// A finished run is Succeeded or Rejected only with a result; anything else failed.
fn phase_of(observed: &Observed) -> Phase {
    match observed {
        Observed::Finished(m) => match (m.phase, &m.result) {
            (Phase::Succeeded | Phase::Rejected, Some(_)) => m.phase,
            _ => Phase::Failed,
        },
        Observed::Invalid(_) => Phase::Failed,
        Observed::Queued { .. } | Observed::Pending => Phase::Pending,
        Observed::Running => Phase::Running,
    }
}

/// The conditions with their message, generation and transition time (kept from `old` while
/// a condition's status stays the same).
fn stamp_conditions(
    conds: Conditions,
    message: &str,
    old: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    conds
        .into_iter()
        .map(|(type_, status, reason)| {
            let kept = old
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone());
            // the why goes on Ready and on conditions that hold, not five copies of it
            let message = if type_ == condition::READY || status == TRUE {
                message.to_string()
            } else {
                String::new()
            };
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason,
                message,
                observed_generation: generation,
                last_transition_time: kept.unwrap_or_else(|| now.clone()),
            }
        })
        .collect()
}

/// The Event for a change from `old` to `new` (a new phase, or the same phase for a new
/// generation); None when nothing changed. Pending has none: apply records JobCreated.
pub fn transition_event(
    old: Option<&CompressionJobStatus>,
    new: &CompressionJobStatus,
) -> Option<Event> {
    let same = old.is_some_and(|o| {
        o.phase == new.phase
            && o.observed_generation == new.observed_generation
            && o.job_name == new.job_name
    });
    if same {
        return None;
    }
    let ready = new.conditions.iter().find(|c| c.type_ == condition::READY);
    let (type_, reason) = match new.phase? {
        Phase::Pending => return None,
        Phase::Running => (EventType::Normal, reason::RUNNING.to_string()),
        Phase::Succeeded if new.result.as_ref().is_some_and(|r| r.promoted.is_some()) => {
            (EventType::Normal, reason::PROMOTED.into())
        }
        Phase::Succeeded => (EventType::Normal, reason::SUCCEEDED.into()),
        Phase::Rejected => (EventType::Warning, reason::CANDIDATE_REJECTED.into()),
        // the static category: InvalidSpec, the worker's (StorageError, InvalidModel, ...) or the Job's
        Phase::Failed => (
            EventType::Warning,
            ready
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| reason::WORKER_FAILED.into()),
        ),
    };
    let mut note = new.message.clone().unwrap_or_default();
    cut_note(&mut note);
    Some(Event {
        type_,
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    })
}

/// Event notes stay under 1000 bytes (the API server's limit is 1 KiB), cut on a char boundary.
fn cut_note(note: &mut String) {
    if note.len() > 1000 {
        let cut = (0..=1000)
            .rev()
            .find(|&i| note.is_char_boundary(i))
            .unwrap_or(0);
        note.truncate(cut);
    }
}

/// The Event of a finished search, on the same transition as [`transition_event`]'s terminal
/// one: what it tried and chose, or which trial came closest and the most sensitive layers.
pub fn search_event(
    old: Option<&CompressionJobStatus>,
    new: &CompressionJobStatus,
) -> Option<Event> {
    let phase = new.phase.filter(|p| p.is_terminal())?;
    transition_event(old, new)?;
    let result = new.result.as_ref()?;
    let s = result.search.as_ref()?;
    let chosen = format!(
        "{} trials and {} sensitivity probes{}",
        s.trials,
        s.probes,
        s.stopped_by
            .as_deref()
            .map(|b| format!(", stopped by its budget ({b})"))
            .unwrap_or_default()
    );
    let form = s.form.as_deref().unwrap_or("none");
    let trial = s.trial.map_or("-".into(), |t| t.to_string());
    let mut note = if phase == Phase::Succeeded {
        format!(
            "search: {chosen}; chose trial {trial}: {form} with {} layers in float, {:.2}x smaller",
            s.float_layers, result.ratio
        )
    } else {
        format!(
            "search: {chosen}; nothing passed. Closest: trial {trial} ({form}, {} layers in float), missed {}",
            s.float_layers,
            failed_checks(result).join(", ")
        )
    };
    if !s.sensitive_layers.is_empty() {
        note.push_str(&format!(
            "; most sensitive: {}",
            s.sensitive_layers.join(", ")
        ));
    }
    cut_note(&mut note);
    Some(Event {
        type_: if phase == Phase::Succeeded {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason::SEARCH_FINISHED.into(),
        note: Some(note),
        action: "Search".into(),
        secondary: None,
    })
}

/// Writes `status` with server-side apply on the status subresource (field manager
/// "kompress"): fields it no longer sets, like an earlier generation's result, go away.
pub async fn apply_status(
    api: &Api<CompressionJob>,
    cj: &CompressionJob,
    status: &CompressionJobStatus,
) -> Result<()> {
    let body = json!({
        "apiVersion": CompressionJob::api_version(&()),
        "kind": CompressionJob::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cj.name_any(),
        &PatchParams::apply(super::build::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(|source| Error::UpdateStatus {
        name: cj.name_any(),
        source,
    })
}

#[cfg(test)]
mod tests;
