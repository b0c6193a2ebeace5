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

/// A worker that failed with `reason` (and, when given, `message`).
fn failed(reason: &str, permanent: Option<bool>, message: Option<&str>) -> Observed {
    Observed::Finished(Box::new(WorkerMessage {
        phase: Phase::Failed,
        result: None,
        reason: Some(reason.into()),
        permanent,
        message: message.map(Into::into),
    }))
}

/// The first status of `generation` (no old status) with its Job in `observed`, at 200s.
fn first(generation: i64, observed: &Observed) -> CompressionJobStatus {
    desired(Some(generation), None, Some(&run()), observed, &at(200))
}

/// Generation 1's status after `old`, with its Job now in `observed`, at `secs`.
fn next(old: &CompressionJobStatus, observed: &Observed, secs: i64) -> CompressionJobStatus {
    desired(Some(1), Some(old), Some(&run()), observed, &at(secs))
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
    first(2, &finished(Phase::Succeeded, Some(r)))
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
    let s = succeeded_with(result(Verdict::Passed, true));
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
    let s = succeeded_with(result(Verdict::Passed, false));
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
    let s = first(
        2,
        &finished(Phase::Rejected, Some(result(Verdict::Rejected, false))),
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
    let s = first(
        2,
        &failed(
            "InvalidModel",
            Some(true),
            Some("model.onnx: not an ONNX model"),
        ),
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
    let s = first(1, &failed("oom killed!", None, None));
    assert_eq!(cond(&s, "Stalled").reason, "WorkerFailed");
}

#[test]
fn success_without_a_result_is_a_failure() {
    let s = first(1, &finished(Phase::Succeeded, None));
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
    let s = first(1, &Observed::Running);
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
    let before = first(1, &Observed::Pending);
    let again = next(&before, &Observed::Pending, 300);
    assert_eq!(before, again, "no write and no Event when nothing changed");
    assert!(transition_event(Some(&before), &again).is_none());
}

#[test]
fn only_conditions_whose_status_changes_get_a_new_transition_time() {
    let pending = first(1, &Observed::Pending);
    let running = next(&pending, &Observed::Running, 300);
    // Pending -> Running: every status stays the same, only reasons change
    assert!(
        running
            .conditions
            .iter()
            .all(|c| c.last_transition_time == at(200))
    );
    assert_eq!(cond(&running, "Ready").reason, "Running");
    let done = next(
        &running,
        &finished(Phase::Succeeded, Some(result(Verdict::Passed, true))),
        400,
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
    let s = succeeded_with(result(Verdict::Passed, true));
    let back: CompressionJobStatus =
        serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(s, back);
}
