//! Gate thresholds (`spec.thresholds`, `spec.edgeCases.thresholds`).

use super::*;

/// Gate thresholds. Unset thresholds are not checked; every set one must pass.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    /// Largest allowed top-1 accuracy drop, absolute (0.01 = one percentage point). Needs labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_accuracy_drop: Option<f64>,
    /// Largest allowed accuracy drop relative to the baseline (0.02 = 2% of the baseline). Needs labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_relative_accuracy_drop: Option<f64>,
    /// Smallest allowed fraction of samples whose top-1 class matches the original model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_agreement: Option<f64>,
    /// Smallest allowed mean cosine similarity between original and candidate outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= -1.0 && self <= 1.0").message("must be in [-1, 1]"))]
    pub min_cosine_similarity: Option<f64>,
    /// Smallest allowed size ratio original/candidate (4.0 = four times smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("must be positive"))]
    pub min_compression_ratio: Option<f64>,
    /// Largest allowed p50 latency ratio candidate/original (1.0 = not slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("must be positive"))]
    pub max_latency_ratio: Option<f64>,
    /// Bounds on metrics printed by `spec.evaluation.evaluator`, e.g.
    /// `[{metric: wer, max: 0.15}]`; each becomes a check named `custom.<metric>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub custom: Vec<CustomThreshold>,
    /// Classification: smallest fraction of samples whose original top-1 class is among the
    /// candidate's top k (`task.classification.topK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_top_k_agreement: Option<f64>,
    /// Classification: largest top-k accuracy drop, absolute. Needs labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_top_k_accuracy_drop: Option<f64>,
    /// Classification: smallest macro-F1 of the candidate's top-1 classes against the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_macro_f1: Option<f64>,
    /// Sequence: smallest fraction of samples whose decoded sequence equals the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_sequence_match: Option<f64>,
    /// Sequence: largest character error rate (edit distance / original length) against the
    /// original's decoded sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("must not be negative"))]
    pub max_char_error_rate: Option<f64>,
    /// Detection: smallest F1 of the candidate's detections against the original's (IoU >= 0.5,
    /// same class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_detection_f1: Option<f64>,
    /// Detection: smallest mAP@0.5 of the candidate's detections, the original's taken as truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_map50: Option<f64>,
    /// Embedding: smallest recall@k of each sample's k nearest neighbours (by cosine, over the
    /// evaluation set) in the original's embedding among the candidate's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub min_neighbour_recall: Option<f64>,
    /// Regression: largest mean absolute error against the original's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("must not be negative"))]
    pub max_mean_abs_error: Option<f64>,
    /// Regression: largest absolute error of any value against the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("must not be negative"))]
    pub max_abs_error: Option<f64>,
    /// With `spec.dataset.slices`: largest drop of the task's headline metric in any one slice
    /// (baseline minus candidate; against the original the baseline is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("must not be negative"))]
    pub max_worst_slice_drop: Option<f64>,
    /// Sequence, with labels (`spec.dataset.labels`, target sequences): largest drop of the
    /// fraction of samples decoded exactly as their label, original minus candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_sequence_match_drop: Option<f64>,
    /// Sequence, with labels: largest rise of the character error rate against the labels,
    /// candidate minus original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("must not be negative"))]
    pub max_char_error_rate_increase: Option<f64>,
    /// Detection, with labels (`spec.dataset.labels`, true boxes): largest drop of F1 against
    /// the labels (IoU >= 0.5, same class), original minus candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_detection_f1_drop: Option<f64>,
    /// Detection, with labels: largest drop of mAP@0.5 against the labels, original minus
    /// candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be in [0, 1]"))]
    pub max_map50_drop: Option<f64>,
    /// `point` (default): quality checks judge the measured value. `upper`: they judge the far
    /// end of its paired bootstrap 95% interval, so a candidate passes only with confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Confidence>,
}

/// A threshold on a metric printed by `spec.evaluation.evaluator`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.min) != has(self.max)").message("set exactly one of min or max"))]
pub struct CustomThreshold {
    /// The metric's name as the evaluator prints it.
    #[schemars(length(min = 1, max = 63))]
    pub metric: String,
    /// Smallest allowed value (the check is named `custom.<metric>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}
