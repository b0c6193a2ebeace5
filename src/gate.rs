//! The gate (pure): every threshold that is set becomes a recorded check; the candidate passes
//! only if all of them do.

use crate::api::task::CheckName;
use crate::api::{Check, CheckId, Confidence, Metrics, Thresholds, Verdict};

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub checks: Vec<Check>,
    pub ratio: f64,
    pub accuracy_drop: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec.thresholds.{threshold} is set, but {why}: remove the threshold or {fix}")]
pub struct MissingMetric {
    pub threshold: &'static str,
    pub why: &'static str,
    pub fix: &'static str,
}

// Metrics are computed in f64 from counts; a tolerance keeps 0.01 == 1 - 0.99 a pass.
const EPS: f64 = 1e-9;

/// Name of the check every run has: a candidate no pass changed is the original re-encoded,
/// and is never promoted as a compressed model.
pub const TENSORS_COMPRESSED: CheckId = CheckId::TENSORS_COMPRESSED;

/// `tensors_changed`: weight tensors the passes changed.
pub fn decide(
    t: &Thresholds,
    base: &Metrics,
    cand: &Metrics,
    tensors_changed: usize,
) -> Result<Decision, MissingMetric> {
    let ratio = if cand.bytes == 0 {
        0.0
    } else {
        base.bytes as f64 / cand.bytes as f64
    };
    let accuracy_drop = base.accuracy.zip(cand.accuracy).map(|(b, c)| b - c);
    let upper = t.confidence == Some(Confidence::Upper);
    let mut checks = Vec::new();
    for name in CheckName::ALL {
        let Some(limit) = name.limit(t) else {
            continue;
        };
        let value = value_of(name, base, cand, ratio, tensors_changed)?;
        let interval = cand.intervals.get(name.name()).cloned();
        let judged = match (&interval, upper) {
            (Some(i), true) if name.is_max() => i.high,
            (Some(i), true) => i.low,
            _ => value,
        };
        let passed = if name.is_max() {
            judged <= limit + EPS
        } else {
            judged + EPS >= limit
        };
        let note = interval.as_ref().and_then(|i| {
            (i.low < limit - EPS && i.high > limit + EPS).then(|| {
                format!(
                    "the 95% interval [{:.4}, {:.4}] of {} samples reaches both sides of the limit: the evaluation set is too small to tell this result from noise",
                    i.low, i.high, cand.samples
                )
            })
        });
        checks.push(Check {
            name: name.into(),
            value: judged,
            limit,
            passed,
            interval,
            note,
        });
    }
    // A metric the evaluator did not print is refused before the gate (the pipeline names
    // it); here it would fail its check (NaN passes nothing).
    for c in &t.custom {
        let v = cand.custom.get(&c.metric).copied().unwrap_or(f64::NAN);
        let name = CheckId::Custom(c.metric.clone());
        if let Some(limit) = c.min {
            checks.push(Check {
                name: name.clone(),
                value: v,
                limit,
                passed: v + EPS >= limit,
                interval: None,
                note: None,
            });
        }
        if let Some(limit) = c.max {
            checks.push(Check {
                name,
                value: v,
                limit,
                passed: v <= limit + EPS,
                interval: None,
                note: None,
            });
        }
    }
    let verdict = if checks.iter().all(|c| c.passed) {
        Verdict::Passed
    } else {
        Verdict::Rejected
    };
    Ok(Decision {
        verdict,
        checks,
        ratio,
        accuracy_drop,
    })
}

/// The measured value a check compares with its limit.
fn value_of(
    name: CheckName,
    base: &Metrics,
    cand: &Metrics,
    ratio: f64,
    tensors_changed: usize,
) -> Result<f64, MissingMetric> {
    use CheckName as C;
    let no_labels = |threshold| MissingMetric {
        threshold,
        why: "the dataset has no labels (or the output is not [samples, classes])",
        fix: "add an integer `labels` array to the npz",
    };
    let task = |key: &str| cand.task.get(key).copied();
    // Original minus candidate of a metric against the labels (`up`: candidate minus original).
    let labels_drop =
        |threshold: &'static str, key: &str, up: bool| -> Result<f64, MissingMetric> {
            let (b, c) = base.task.get(key).zip(task(key)).ok_or(MissingMetric {
                threshold,
                why: "the dataset has no labels for the task",
                fix: "add a labels array shaped for the task (spec.dataset.labels)",
            })?;
            Ok(if up { c - b } else { b - c })
        };
    let missing = |threshold: &'static str| MissingMetric {
        threshold,
        why: "its metric was not measured on this output",
        fix: "set the matching spec.evaluation.task (see the README's task metrics)",
    };
    let accuracy_drop = base.accuracy.zip(cand.accuracy).map(|(b, c)| b - c);
    let n = name.name();
    Ok(match name {
        C::MaxAccuracyDrop => accuracy_drop.ok_or_else(|| no_labels(n))?,
        C::MaxRelativeAccuracyDrop => {
            let (b, d) = base
                .accuracy
                .zip(accuracy_drop)
                .ok_or_else(|| no_labels(n))?;
            if b > 0.0 { d / b } else { 0.0 }
        }
        // The high end of the interleaved measurement's 95% interval when there is one: a
        // candidate passes only when it is that fast with confidence, not by a lucky median.
        C::MaxLatencyRatio => cand
            .latency_ratio_high
            .unwrap_or(if base.latency_p50_ms > 0.0 {
                cand.latency_p50_ms / base.latency_p50_ms
            } else {
                1.0
            }),
        C::TensorsCompressed => tensors_changed as f64,
        C::MinAgreement => cand.agreement.ok_or(MissingMetric {
            threshold: n,
            why: "the compared output is not [samples, classes]",
            fix: "choose a classification output with spec.evaluation.output",
        })?,
        C::MinCosineSimilarity => cand.cosine_similarity.unwrap_or(0.0),
        C::MinCompressionRatio => ratio,
        C::MaxTopKAccuracyDrop => base
            .task
            .get("topKAccuracy")
            .zip(task("topKAccuracy"))
            .map(|(b, c)| b - c)
            .ok_or_else(|| no_labels(n))?,
        C::MaxSequenceMatchDrop
        | C::MaxCharErrorRateIncrease
        | C::MaxDetectionF1Drop
        | C::MaxMap50Drop => labels_drop(n, metric_key(name), name == C::MaxCharErrorRateIncrease)?,
        C::MaxMeanAbsError => cand.mean_abs_error.ok_or_else(|| missing(n))?,
        C::MaxAbsError => cand.max_abs_error.ok_or_else(|| missing(n))?,
        C::MinTopKAgreement
        | C::MinMacroF1
        | C::MinSequenceMatch
        | C::MaxCharErrorRate
        | C::MinDetectionF1
        | C::MinMap50
        | C::MinNeighbourRecall
        | C::MaxWorstSliceDrop => task(metric_key(name)).ok_or_else(|| missing(n))?,
    })
}

/// The key in `Metrics::task` of a task check's value.
pub fn metric_key(name: CheckName) -> &'static str {
    use CheckName as C;
    match name {
        C::MinTopKAgreement => "topKAgreement",
        C::MinMacroF1 => "macroF1",
        C::MinSequenceMatch => "sequenceMatch",
        C::MaxCharErrorRate => "charErrorRate",
        C::MinDetectionF1 => "detectionF1",
        C::MinMap50 => "map50",
        C::MinNeighbourRecall => "neighbourRecall",
        C::MaxWorstSliceDrop => "worstSliceDrop",
        C::MaxTopKAccuracyDrop => "topKAccuracy",
        C::MaxSequenceMatchDrop => "sequenceMatchLabels",
        C::MaxCharErrorRateIncrease => "charErrorRateLabels",
        C::MaxDetectionF1Drop => "detectionF1Labels",
        C::MaxMap50Drop => "map50Labels",
        C::MaxAccuracyDrop | C::MaxRelativeAccuracyDrop => "accuracy",
        C::MinAgreement => "agreement",
        C::MinCosineSimilarity => "cosineSimilarity",
        C::MaxMeanAbsError => "meanAbsError",
        C::MaxAbsError => "maxAbsError",
        C::MinCompressionRatio => "ratio",
        C::MaxLatencyRatio => "latencyRatio",
        C::TensorsCompressed => "tensorsCompressed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(bytes: u64, acc: f64, agree: f64, p50: f64) -> Metrics {
        Metrics {
            bytes,
            accuracy: Some(acc),
            agreement: Some(agree),
            cosine_similarity: Some(0.999),
            latency_p50_ms: p50,
            ..Default::default()
        }
    }

    #[test]
    fn every_set_threshold_is_checked_and_recorded() {
        let t = Thresholds {
            max_accuracy_drop: Some(0.01),
            max_relative_accuracy_drop: Some(0.02),
            min_agreement: Some(0.98),
            min_cosine_similarity: Some(0.99),
            min_compression_ratio: Some(3.5),
            max_latency_ratio: Some(1.0),
            ..Default::default()
        };
        let d = decide(&t, &m(400, 0.98, 1.0, 1.0), &m(100, 0.975, 0.99, 0.5), 3).unwrap();
        assert_eq!(d.checks.len(), 7, "six thresholds and tensorsCompressed");
        assert_eq!(d.verdict, Verdict::Passed, "{:?}", d.checks);
        assert_eq!(d.ratio, 4.0);
    }

    #[test]
    fn one_failing_threshold_rejects() {
        let t = Thresholds {
            min_compression_ratio: Some(5.0),
            max_accuracy_drop: Some(0.5),
            ..Default::default()
        };
        let d = decide(&t, &m(400, 0.9, 1.0, 1.0), &m(100, 0.9, 1.0, 1.0), 3).unwrap();
        assert_eq!(d.verdict, Verdict::Rejected);
        let c = d
            .checks
            .iter()
            .find(|c| c.name == "minCompressionRatio")
            .unwrap();
        assert!(!c.passed && c.value == 4.0 && c.limit == 5.0);
    }

    #[test]
    fn latency_is_judged_on_the_high_end_of_the_interleaved_interval() {
        let t = Thresholds {
            max_latency_ratio: Some(1.0),
            ..Default::default()
        };
        // Median says faster (0.95), but the interval reaches 1.08: not faster with confidence.
        let mut c = m(100, 0.9, 1.0, 0.95);
        c.latency_ratio = Some(0.95);
        c.latency_ratio_low = Some(0.85);
        c.latency_ratio_high = Some(1.08);
        let d = decide(&t, &m(400, 0.9, 1.0, 1.0), &c, 3).unwrap();
        let check = d
            .checks
            .iter()
            .find(|c| c.name == "maxLatencyRatio")
            .unwrap();
        assert!(!check.passed && check.value == 1.08, "{check:?}");
        c.latency_ratio_high = Some(0.99);
        let d = decide(&t, &m(400, 0.9, 1.0, 1.0), &c, 3).unwrap();
        assert_eq!(d.verdict, Verdict::Passed, "{:?}", d.checks);
    }

    #[test]
    fn exactly_at_the_limit_passes() {
        let t = Thresholds {
            max_accuracy_drop: Some(0.01),
            ..Default::default()
        };
        let d = decide(&t, &m(1, 0.99, 1.0, 1.0), &m(1, 0.98, 1.0, 1.0), 1).unwrap();
        assert_eq!(d.verdict, Verdict::Passed);
    }

    #[test]
    fn accuracy_threshold_without_labels_is_an_error_not_a_pass() {
        let t = Thresholds {
            max_accuracy_drop: Some(0.01),
            ..Default::default()
        };
        let mut b = m(1, 0.9, 1.0, 1.0);
        b.accuracy = None;
        let e = decide(&t, &b, &m(1, 0.9, 1.0, 1.0), 1).unwrap_err();
        assert_eq!(e.threshold, "maxAccuracyDrop");
        assert!(e.to_string().contains("labels"));
    }

    #[test]
    fn label_drops_are_original_minus_candidate_and_need_labels() {
        let t = Thresholds {
            max_sequence_match_drop: Some(0.05),
            max_char_error_rate_increase: Some(0.01),
            ..Default::default()
        };
        let with = |matched: f64, cer: f64| {
            let mut x = m(1, 0.9, 1.0, 1.0);
            x.task.insert("sequenceMatchLabels".into(), matched);
            x.task.insert("charErrorRateLabels".into(), cer);
            x
        };
        let d = decide(&t, &with(0.9, 0.02), &with(0.8, 0.025), 1).unwrap();
        let v = |n: &str| d.checks.iter().find(|c| c.name == n).unwrap().clone();
        let drop = v("maxSequenceMatchDrop");
        assert!((drop.value - 0.1).abs() < 1e-12 && !drop.passed, "{drop:?}");
        let rise = v("maxCharErrorRateIncrease");
        assert!(
            (rise.value - 0.005).abs() < 1e-12 && rise.passed,
            "{rise:?}"
        );
        let e = decide(&t, &m(1, 0.9, 1.0, 1.0), &with(0.8, 0.0), 1).unwrap_err();
        assert_eq!(e.threshold, "maxSequenceMatchDrop");
        assert!(e.to_string().contains("labels"), "{e}");
    }

    #[test]
    fn no_thresholds_pass_with_only_the_change_check() {
        let d = decide(
            &Thresholds::default(),
            &m(2, 0.9, 1.0, 1.0),
            &m(1, 0.1, 0.1, 9.0),
            2,
        )
        .unwrap();
        assert_eq!(d.checks.len(), 1);
        assert_eq!(d.checks[0].name, TENSORS_COMPRESSED);
        assert_eq!(d.verdict, Verdict::Passed);
    }

    #[test]
    fn a_candidate_no_pass_changed_is_rejected_whatever_the_thresholds() {
        let t = Thresholds {
            max_accuracy_drop: Some(0.01),
            ..Default::default()
        };
        let same = m(400, 0.9, 1.0, 1.0);
        let d = decide(&t, &same, &same, 0).unwrap();
        assert_eq!(d.verdict, Verdict::Rejected);
        let c = d
            .checks
            .iter()
            .find(|c| c.name == TENSORS_COMPRESSED)
            .unwrap();
        assert!(!c.passed && c.value == 0.0 && c.limit == 1.0);
    }

    #[test]
    fn a_task_check_reads_its_metric_and_upper_confidence_judges_the_far_end() {
        use crate::api::Interval;
        let t = Thresholds {
            min_sequence_match: Some(0.9),
            max_char_error_rate: Some(0.05),
            ..Default::default()
        };
        let mut c = m(100, 0.9, 1.0, 1.0);
        c.samples = 40;
        c.task.insert("sequenceMatch".into(), 0.92);
        c.task.insert("charErrorRate".into(), 0.02);
        c.intervals.insert(
            "minSequenceMatch".into(),
            Interval {
                low: 0.85,
                high: 0.98,
            },
        );
        c.intervals.insert(
            "maxCharErrorRate".into(),
            Interval {
                low: 0.01,
                high: 0.04,
            },
        );
        let d = decide(&t, &m(400, 0.9, 1.0, 1.0), &c, 3).unwrap();
        assert_eq!(d.verdict, Verdict::Passed, "{:?}", d.checks);
        let seq = d
            .checks
            .iter()
            .find(|c| c.name == "minSequenceMatch")
            .unwrap();
        assert_eq!(seq.value, 0.92);
        assert!(
            seq.note.as_deref().unwrap().contains("too small to tell"),
            "{seq:?}"
        );
        let upper = Thresholds {
            confidence: Some(Confidence::Upper),
            ..t
        };
        let d = decide(&upper, &m(400, 0.9, 1.0, 1.0), &c, 3).unwrap();
        assert_eq!(d.verdict, Verdict::Rejected);
        let seq = d
            .checks
            .iter()
            .find(|c| c.name == "minSequenceMatch")
            .unwrap();
        assert!(
            !seq.passed && seq.value == 0.85,
            "the low end of a min: {seq:?}"
        );
        let cer = d
            .checks
            .iter()
            .find(|c| c.name == "maxCharErrorRate")
            .unwrap();
        assert!(
            cer.passed && cer.value == 0.04,
            "the high end of a max: {cer:?}"
        );
        assert!(
            cer.note.is_none(),
            "an interval below the limit is not noise: {cer:?}"
        );
    }

    #[test]
    fn a_task_threshold_without_its_metric_is_an_error_not_a_pass() {
        let t = Thresholds {
            min_map50: Some(0.5),
            ..Default::default()
        };
        let e = decide(&t, &m(1, 0.9, 1.0, 1.0), &m(1, 0.9, 1.0, 1.0), 1).unwrap_err();
        assert_eq!(e.threshold, "minMap50");
    }

    #[test]
    fn every_task_and_error_check_is_quality_and_size_is_not() {
        for name in [
            "minSequenceMatch",
            "minMap50",
            "minNeighbourRecall",
            "maxAbsError",
            "maxWorstSliceDrop",
            "minCosineSimilarity",
        ] {
            assert!(CheckId::parse(name).is_quality(), "{name}");
        }
        for name in [
            "minCompressionRatio",
            "maxLatencyRatio",
            "tensorsCompressed",
            "custom.wer",
            "nonsense",
        ] {
            assert!(!CheckId::parse(name).is_quality(), "{name}");
        }
        assert!(!TENSORS_COMPRESSED.is_quality());
    }
}
