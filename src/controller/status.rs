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
    let (t, f, u) = ("True", "False", "Unknown");
    let result = match observed {
        Observed::Finished(m) => m.result.clone().map(for_columns),
        _ => None,
    };
    // (type, status, reason) for Ready, Reconciling, Stalled, Evaluated, Promoted
    let (message, conds): (String, [(&str, &str, String); 5]) = match observed {
        Observed::Invalid(msg) => {
            let r = reason::INVALID_SPEC.to_string();
            (
                msg.clone(),
                [
                    (condition::READY, f, r.clone()),
                    (condition::RECONCILING, f, r.clone()),
                    (condition::STALLED, t, r.clone()),
                    (condition::EVALUATED, f, r.clone()),
                    (condition::PROMOTED, f, r),
                ],
            )
        }
        Observed::Queued { .. } | Observed::Pending | Observed::Running => {
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
                    (condition::READY, f, r.clone()),
                    (condition::RECONCILING, t, r.clone()),
                    (condition::STALLED, f, r.clone()),
                    (condition::EVALUATED, u, r.clone()),
                    (condition::PROMOTED, u, r),
                ],
            )
        }
        Observed::Finished(m) => match (m.phase, &m.result) {
            (Phase::Succeeded, Some(res)) => {
                let p = reason::PASSED.to_string();
                let (promoted, msg) = match &res.promoted {
                    Some(a) => (
                        (t, reason::PROMOTED),
                        format!(
                            "candidate passed every threshold ({:.2}x smaller) and was promoted to {}",
                            res.ratio, a.uri
                        ),
                    ),
                    None => (
                        (f, reason::NO_PROMOTE_TARGET),
                        format!(
                            "candidate passed every threshold ({:.2}x smaller); no promoteTo set, nothing promoted",
                            res.ratio
                        ),
                    ),
                };
                (
                    msg,
                    [
                        (condition::READY, t, p.clone()),
                        (condition::RECONCILING, f, p.clone()),
                        (condition::STALLED, f, p.clone()),
                        (condition::EVALUATED, t, p),
                        (condition::PROMOTED, promoted.0, promoted.1.into()),
                    ],
                )
            }
            // Stalled=True: a rejection is terminal and nothing changes until the spec does,
            // so kstatus (Flux, Argo CD, kpt) reads it Failed, with the reason, instead of
            // falling back to Ready=False (InProgress) and waiting out its timeout. What is
            // served does not change: the promotion target did not move.
            (Phase::Rejected, Some(res)) => {
                let r = reason::REJECTED.to_string();
                (
                    rejection(res),
                    [
                        (condition::READY, f, r.clone()),
                        (condition::RECONCILING, f, r.clone()),
                        (condition::STALLED, t, r.clone()),
                        (condition::EVALUATED, t, r),
                        (condition::PROMOTED, f, reason::NOT_PROMOTED.into()),
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
                let evaluated = if m.result.is_some() { t } else { f };
                (
                    msg,
                    [
                        (condition::READY, f, r.clone()),
                        (condition::RECONCILING, f, r.clone()),
                        (condition::STALLED, t, r.clone()),
                        (condition::EVALUATED, evaluated, r),
                        (condition::PROMOTED, f, reason::NOT_PROMOTED.into()),
                    ],
                )
            }
        },
    };
    // A result reused from the cache says so, and where it came from.
    let message = match result.as_ref().and_then(|r| r.cached_from.as_ref()) {
        Some(c) => format!(
            "{message} (result reused from {}, cache key {})",
            c.run,
            &c.key[..c.key.len().min(16)]
        ),
        None => message,
    };
    // Status and the Events made from it never carry a URI's query string or userinfo.
    let message = crate::uri::redact_in(&message);
    // a finished run is Succeeded or Rejected only with a result; anything else failed
    let phase = match observed {
        Observed::Finished(m) => match (m.phase, &m.result) {
            (Phase::Succeeded | Phase::Rejected, Some(_)) => m.phase,
            _ => Phase::Failed,
        },
        Observed::Invalid(_) => Phase::Failed,
        Observed::Queued { .. } | Observed::Pending => Phase::Pending,
        Observed::Running => Phase::Running,
    };
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = conds
        .into_iter()
        .map(|(type_, status, reason)| {
            let kept = old_conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone());
            // the why goes on Ready and on conditions that hold, not five copies of it
            let message = if type_ == condition::READY || status == t {
                message.clone()
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
        .collect();
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
mod tests {
    use super::*;
    use crate::api::{ArtifactRef, Check, Verdict};
    use jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn run() -> Run {
        Run {
            job_name: "digits-g2-0123abcd".into(),
            start_time: Some(at(100)),
            completion_time: Some(at(160)),
            worker: None,
        }
    }

    fn result(verdict: Verdict, promoted: bool) -> JobResult {
        JobResult {
            verdict,
            original_bytes: 4000,
            compressed_bytes: 1000,
            ratio: 4.0,
            accuracy_drop: Some(0.002),
            checks: vec![Check {
                name: "maxAccuracyDrop".into(),
                value: 0.002,
                limit: if verdict == Verdict::Passed {
                    0.01
                } else {
                    0.001
                },
                passed: verdict == Verdict::Passed,
                interval: None,
                note: None,
            }],
            promoted: promoted.then(|| ArtifactRef {
                uri: "s3://m/production/".into(),
                sha256: "ab".repeat(32),
            }),
            ..Default::default()
        }
    }

    fn finished(phase: Phase, result: Option<JobResult>) -> Observed {
        Observed::Finished(Box::new(WorkerMessage {
            phase,
            result,
            reason: None,
            permanent: None,
            message: None,
        }))
    }

    fn cond<'a>(s: &'a CompressionJobStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition"))
    }

    fn statuses(s: &CompressionJobStatus) -> Vec<(&str, &str)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect()
    }

    /// Generation 2's status once its Job finished with `r`.
    fn succeeded_with(r: JobResult) -> CompressionJobStatus {
        desired(
            Some(2),
            None,
            Some(&run()),
            &finished(Phase::Succeeded, Some(r)),
            &at(200),
        )
    }

    #[test]
    fn the_ratio_and_accuracy_drop_columns_are_rounded_and_the_checks_keep_every_digit() {
        let mut r = result(Verdict::Passed, true);
        r.ratio = 3.926_785_714;
        r.accuracy_drop = Some(0.001_851_851_9);
        r.checks[0].value = 0.001_851_851_9;
        let s = succeeded_with(r);
        let r = s.result.unwrap();
        assert_eq!((r.ratio, r.accuracy_drop), (3.93, Some(0.0019)));
        assert_eq!(r.checks[0].value, 0.001_851_851_9);
    }

    #[test]
    fn a_cached_result_says_where_it_came_from() {
        let mut r = result(Verdict::Passed, true);
        r.cached_from = Some(crate::api::CachedFrom {
            run: "s3://m/out/runs/digits-1".into(),
            key: "cd".repeat(32),
        });
        let s = succeeded_with(r);
        assert_eq!(s.phase, Some(Phase::Succeeded));
        let m = s.message.as_deref().unwrap();
        assert!(
            m.contains("promoted") && m.contains("reused from s3://m/out/runs/digits-1"),
            "{m}"
        );
        assert_eq!(
            s.result.unwrap().cached_from.unwrap().run,
            "s3://m/out/runs/digits-1"
        );
    }

    #[test]
    fn promoted_candidate_is_ready_evaluated_and_promoted() {
        let s = desired(
            Some(2),
            None,
            Some(&run()),
            &finished(Phase::Succeeded, Some(result(Verdict::Passed, true))),
            &at(200),
        );
        assert_eq!(s.phase, Some(Phase::Succeeded));
        assert_eq!(
            statuses(&s),
            [
                ("Ready", "True"),
                ("Reconciling", "False"),
                ("Stalled", "False"),
                ("Evaluated", "True"),
                ("Promoted", "True")
            ]
        );
        assert_eq!(cond(&s, "Promoted").reason, "Promoted");
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        assert_eq!(s.result.as_ref().unwrap().ratio, 4.0);
        assert_eq!(
            (s.start_time.clone(), s.completion_time.clone()),
            (Some(at(100)), Some(at(160)))
        );
        assert_eq!(s.job_name.as_deref(), Some("digits-g2-0123abcd"));
        assert!(s.message.as_deref().unwrap().contains("s3://m/production/"));
        assert_eq!(cond(&s, "Ready").message, *s.message.as_ref().unwrap());
        assert_eq!(
            cond(&s, "Stalled").message,
            "",
            "a False Stalled needs no story"
        );
    }

    #[test]
    fn passing_candidate_without_promote_target_is_ready_but_not_promoted() {
        let s = desired(
            Some(2),
            None,
            Some(&run()),
            &finished(Phase::Succeeded, Some(result(Verdict::Passed, false))),
            &at(200),
        );
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            (
                cond(&s, "Promoted").status.as_str(),
                cond(&s, "Promoted").reason.as_str()
            ),
            ("False", "NoPromoteTarget")
        );
    }

    #[test]
    fn rejected_candidate_is_evaluated_not_ready_stalled_and_never_promoted() {
        let s = desired(
            Some(2),
            None,
            Some(&run()),
            &finished(Phase::Rejected, Some(result(Verdict::Rejected, false))),
            &at(200),
        );
        assert_eq!(s.phase, Some(Phase::Rejected));
        assert_eq!(
            statuses(&s),
            [
                ("Ready", "False"),
                ("Reconciling", "False"),
                ("Stalled", "True"),
                ("Evaluated", "True"),
                ("Promoted", "False")
            ]
        );
        assert_eq!(cond(&s, "Ready").reason, "ThresholdsFailed");
        assert_eq!(cond(&s, "Stalled").reason, "ThresholdsFailed");
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("maxAccuracyDrop 0.002 (limit 0.001)"),
            "{:?}",
            s.message
        );
    }

    #[test]
    fn worker_failure_stalls_with_the_worker_category() {
        let m = WorkerMessage {
            phase: Phase::Failed,
            result: None,
            reason: Some("InvalidModel".into()),
            permanent: Some(true),
            message: Some("model.onnx: not an ONNX model".into()),
        };
        let s = desired(
            Some(2),
            None,
            Some(&run()),
            &Observed::Finished(Box::new(m)),
            &at(200),
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(
            (
                cond(&s, "Stalled").status.as_str(),
                cond(&s, "Stalled").reason.as_str()
            ),
            ("True", "InvalidModel")
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(s.message.as_deref(), Some("model.onnx: not an ONNX model"));
        assert_eq!(transition_event(None, &s).unwrap().reason, "InvalidModel");
    }

    #[test]
    fn unreadable_reason_falls_back_to_worker_failed() {
        let m = WorkerMessage {
            phase: Phase::Failed,
            result: None,
            reason: Some("oom killed!".into()),
            permanent: None,
            message: None,
        };
        let s = desired(
            Some(1),
            None,
            Some(&run()),
            &Observed::Finished(Box::new(m)),
            &at(200),
        );
        assert_eq!(cond(&s, "Stalled").reason, "WorkerFailed");
    }

    #[test]
    fn success_without_a_result_is_a_failure() {
        let s = desired(
            Some(1),
            None,
            Some(&run()),
            &finished(Phase::Succeeded, None),
            &at(200),
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(cond(&s, "Stalled").status, "True");
    }

    #[test]
    fn invalid_spec_stalls_without_a_job() {
        let s = desired(
            Some(5),
            None,
            None,
            &Observed::Invalid("invalid CompressionJob spec: spec.passes: at least one".into()),
            &at(200),
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.job_name, None);
        assert_eq!(
            statuses(&s),
            [
                ("Ready", "False"),
                ("Reconciling", "False"),
                ("Stalled", "True"),
                ("Evaluated", "False"),
                ("Promoted", "False")
            ]
        );
        assert!(s.conditions.iter().all(|c| c.reason == "InvalidSpec"));
        let ev = transition_event(None, &s).unwrap();
        assert_eq!(
            (ev.type_, ev.reason.as_str()),
            (EventType::Warning, "InvalidSpec")
        );
    }

    #[test]
    fn work_in_progress_is_reconciling_and_has_no_completion_time() {
        let s = desired(Some(1), None, Some(&run()), &Observed::Running, &at(200));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(
            statuses(&s),
            [
                ("Ready", "False"),
                ("Reconciling", "True"),
                ("Stalled", "False"),
                ("Evaluated", "Unknown"),
                ("Promoted", "Unknown")
            ]
        );
        assert_eq!(s.completion_time, None);
        assert_eq!(s.result, None);
    }

    #[test]
    fn unchanged_observation_keeps_every_transition_time_and_equals_the_old_status() {
        let first = desired(Some(1), None, Some(&run()), &Observed::Pending, &at(200));
        let again = desired(
            Some(1),
            Some(&first),
            Some(&run()),
            &Observed::Pending,
            &at(300),
        );
        assert_eq!(first, again, "no write and no Event when nothing changed");
        assert!(transition_event(Some(&first), &again).is_none());
    }

    #[test]
    fn only_conditions_whose_status_changes_get_a_new_transition_time() {
        let pending = desired(Some(1), None, Some(&run()), &Observed::Pending, &at(200));
        let running = desired(
            Some(1),
            Some(&pending),
            Some(&run()),
            &Observed::Running,
            &at(300),
        );
        // Pending -> Running: every status stays the same, only reasons change
        assert!(
            running
                .conditions
                .iter()
                .all(|c| c.last_transition_time == at(200))
        );
        assert_eq!(cond(&running, "Ready").reason, "Running");
        let done = desired(
            Some(1),
            Some(&running),
            Some(&run()),
            &finished(Phase::Succeeded, Some(result(Verdict::Passed, true))),
            &at(400),
        );
        assert_eq!(cond(&done, "Ready").last_transition_time, at(400));
        assert_eq!(
            cond(&done, "Stalled").last_transition_time,
            at(200),
            "Stalled stayed False"
        );
        assert_eq!(
            transition_event(Some(&running), &done).unwrap().reason,
            "Promoted"
        );
    }

    #[test]
    fn a_new_generation_is_a_transition_even_in_the_same_phase() {
        let old = desired(
            Some(1),
            None,
            None,
            &Observed::Invalid("bad".into()),
            &at(200),
        );
        let new = desired(
            Some(2),
            Some(&old),
            None,
            &Observed::Invalid("still bad".into()),
            &at(300),
        );
        assert!(transition_event(Some(&old), &new).is_some());
        assert!(
            new.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }

    #[test]
    fn status_survives_the_api_round_trip_unchanged() {
        // the old status comes back through JSON: equality must hold across it, or every
        // reconcile would write
        let s = desired(
            Some(2),
            None,
            Some(&run()),
            &finished(Phase::Succeeded, Some(result(Verdict::Passed, true))),
            &at(200),
        );
        let back: CompressionJobStatus =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(s, back);
    }
}
