//! The gate (pure): every threshold that is set becomes a recorded check; the candidate passes
//! only if all of them do.

use crate::api::{Check, Metrics, Thresholds, Verdict};

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
pub const TENSORS_COMPRESSED: &str = "tensorsCompressed";

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
    let no_labels = |threshold| MissingMetric {
        threshold,
        why: "the dataset has no labels (or the output is not [samples, classes])",
        fix: "add an integer `labels` array to the npz",
    };
    let mut checks = Vec::new();
    let mut max = |name: &str, value: f64, limit: f64| {
        checks.push(Check {
            name: name.into(),
            value,
            limit,
            passed: value <= limit + EPS,
        })
    };
    if let Some(limit) = t.max_accuracy_drop {
        max(
            "maxAccuracyDrop",
            accuracy_drop.ok_or_else(|| no_labels("maxAccuracyDrop"))?,
            limit,
        );
    }
    if let Some(limit) = t.max_relative_accuracy_drop {
        let (b, d) = base
            .accuracy
            .zip(accuracy_drop)
            .ok_or_else(|| no_labels("maxRelativeAccuracyDrop"))?;
        max(
            "maxRelativeAccuracyDrop",
            if b > 0.0 { d / b } else { 0.0 },
            limit,
        );
    }
    if let Some(limit) = t.max_latency_ratio {
        // The high end of the interleaved measurement's 95% interval when there is one: a
        // candidate passes only when it is that fast with confidence, not by a lucky median.
        let v = cand
            .latency_ratio_high
            .unwrap_or(if base.latency_p50_ms > 0.0 {
                cand.latency_p50_ms / base.latency_p50_ms
            } else {
                1.0
            });
        max("maxLatencyRatio", v, limit);
    }
    let mut min = |name: &str, value: f64, limit: f64| {
        checks.push(Check {
            name: name.into(),
            value,
            limit,
            passed: value + EPS >= limit,
        })
    };
    min(TENSORS_COMPRESSED, tensors_changed as f64, 1.0);
    if let Some(limit) = t.min_agreement {
        let v = cand.agreement.ok_or(MissingMetric {
            threshold: "minAgreement",
            why: "the compared output is not [samples, classes]",
            fix: "choose a classification output with spec.evaluation.output",
        })?;
        min("minAgreement", v, limit);
    }
    if let Some(limit) = t.min_cosine_similarity {
        min(
            "minCosineSimilarity",
            cand.cosine_similarity.unwrap_or(0.0),
            limit,
        );
    }
    if let Some(limit) = t.min_compression_ratio {
        min("minCompressionRatio", ratio, limit);
    }
    // A metric the evaluator did not print is refused before the gate (the pipeline names
    // it); here it would fail its check (NaN passes nothing).
    for c in &t.custom {
        let v = cand.custom.get(&c.metric).copied().unwrap_or(f64::NAN);
        let name = format!("custom.{}", c.metric);
        if let Some(limit) = c.min {
            checks.push(Check {
                name: name.clone(),
                value: v,
                limit,
                passed: v + EPS >= limit,
            });
        }
        if let Some(limit) = c.max {
            checks.push(Check {
                name,
                value: v,
                limit,
                passed: v <= limit + EPS,
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
            custom: vec![],
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
}
