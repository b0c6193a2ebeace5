//! What the evaluation reads from a model's outputs, as the application does: the selected
//! part of an output (`spec.evaluation.select`, `pool`, `normalize`) and the task that gives it
//! meaning (`spec.evaluation.task`), with the task's own metrics and thresholds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most selection steps (one per axis is all that makes sense).
pub const MAX_SELECT: usize = 8;
/// Largest `k` (top-k classes, nearest neighbours).
pub const MAX_K: u32 = 1000;

/// One axis of the compared output narrowed: a single `index` (the axis goes away, e.g.
/// token 0, the CLS vector) or a `start`/`end` range (the axis stays). Axes count from the
/// first axis after the samples axis (0 = the first per-sample axis); negative positions
/// count from the end, as in Python.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AxisSelect {
    /// The per-sample axis (0 = the first axis after the samples).
    pub axis: u32,
    /// Keep only this position (the axis is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// Keep positions from `start` (inclusive; default 0) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// ... to `end` (exclusive; default the axis length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// Pooling over one per-sample axis, after the selection.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// `mean` or `max`.
    pub op: PoolOp,
    /// The per-sample axis pooled over (numbered as in `select`, before it), e.g. 0 for the
    /// tokens of a `[samples, tokens, hidden]` output.
    pub axis: u32,
    /// A dataset array (usually a model input such as `attention_mask`) whose rows weigh the
    /// positions of the pooled axis: positions where it is 0 are left out (padding). Its rows
    /// have as many elements as the axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum PoolOp {
    #[default]
    Mean,
    Max,
}

/// The task of the compared output: which metrics are measured and which thresholds apply.
/// Exactly one key (`task: {sequence: {blank: 0}}`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(try_from = "RawTask", into = "RawTask")]
pub enum TaskSpec {
    Classification(ClassificationTask),
    Sequence(SequenceTask),
    Detection(DetectionTask),
    Embedding(EmbeddingTask),
    Regression(RegressionTask),
}

/// The task as written: exactly one key is set (checked on conversion).
#[derive(JsonSchema, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    description = "The task of the compared output: exactly one of classification, sequence, detection, embedding or regression."
)]
pub struct RawTask {
    /// `[samples, classes]` scores: top-1 and top-k accuracy (labels), agreement, top-k
    /// agreement and macro-F1 against the original's classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationTask>,
    /// `[samples, steps, classes]` CTC scores (a text recognizer): greedy decoding, then
    /// exact sequence match and character error rate against the original's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<SequenceTask>,
    /// Object detection: decoded boxes after NMS, F1 and mAP@0.5 against the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<DetectionTask>,
    /// One vector per sample (after selection and pooling): cosine, and recall@k of the
    /// original's nearest neighbours over the evaluation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingTask>,
    /// Real values: mean and largest absolute error against the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionTask>,
}

impl TryFrom<RawTask> for TaskSpec {
    type Error = String;

    fn try_from(r: RawTask) -> Result<Self, String> {
        match (
            r.classification,
            r.sequence,
            r.detection,
            r.embedding,
            r.regression,
        ) {
            (Some(c), None, None, None, None) => Ok(Self::Classification(c)),
            (None, Some(s), None, None, None) => Ok(Self::Sequence(s)),
            (None, None, Some(d), None, None) => Ok(Self::Detection(d)),
            (None, None, None, Some(e), None) => Ok(Self::Embedding(e)),
            (None, None, None, None, Some(g)) => Ok(Self::Regression(g)),
            _ => Err(
                "set exactly one of classification, sequence, detection, embedding or regression"
                    .into(),
            ),
        }
    }
}

impl From<TaskSpec> for RawTask {
    fn from(t: TaskSpec) -> Self {
        let mut r = RawTask::default();
        match t {
            TaskSpec::Classification(c) => r.classification = Some(c),
            TaskSpec::Sequence(s) => r.sequence = Some(s),
            TaskSpec::Detection(d) => r.detection = Some(d),
            TaskSpec::Embedding(e) => r.embedding = Some(e),
            TaskSpec::Regression(g) => r.regression = Some(g),
        }
        r
    }
}

impl TaskSpec {
    pub fn key(&self) -> &'static str {
        match self {
            Self::Classification(_) => "classification",
            Self::Sequence(_) => "sequence",
            Self::Detection(_) => "detection",
            Self::Embedding(_) => "embedding",
            Self::Regression(_) => "regression",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClassificationTask {
    /// k of top-k accuracy and top-k agreement, 1 to 1000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceTask {
    /// The CTC blank class. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectionTask {
    /// `yolov8`: one output `[samples, 4 + classes, anchors]` (cx, cy, w, h, then class
    /// scores); `yolov5`: `[samples, anchors, 5 + classes]` (cx, cy, w, h, objectness, class
    /// scores); `boxes`: three outputs named in `outputs` (`[samples, K, 4]` x1, y1, x2, y2;
    /// `[samples, K]` scores; `[samples, K]` classes).
    pub layout: DetectionLayout,
    /// With `layout: boxes`: the outputs' names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BoxOutputs>,
    /// Detections scoring below this are dropped before NMS. Default 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_threshold: Option<f64>,
    /// Class-aware NMS: a box overlapping a higher-scoring box of its class by more than
    /// this IoU is dropped. Default 0.45.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou_threshold: Option<f64>,
    /// Most detections kept per sample (highest scores first), 1 to 1000. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_detections: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum DetectionLayout {
    #[default]
    Yolov8,
    Yolov5,
    Boxes,
}

impl DetectionLayout {
    pub fn name(self) -> &'static str {
        match self {
            Self::Yolov8 => "yolov8",
            Self::Yolov5 => "yolov5",
            Self::Boxes => "boxes",
        }
    }
}

/// The three outputs of a detector that decodes its own boxes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BoxOutputs {
    pub boxes: String,
    pub scores: String,
    pub classes: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddingTask {
    /// Neighbours compared per sample (recall@k), 1 to 1000. Default 5 (fewer when the
    /// evaluation set is smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Written `regression: {}` (a map, room for options later), so not a unit struct.
#[allow(clippy::empty_structs_with_brackets)]
pub struct RegressionTask {}

/// Which value of a quality check the gate judges.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum Confidence {
    /// The measured value.
    #[default]
    Point,
    /// The far end of its paired bootstrap 95% interval (the low end of a `min...`, the
    /// high end of a `max...`): a candidate passes only when it passes with confidence.
    Upper,
}

/// Problems of `spec.evaluation`'s selection and task that need no model to see.
pub fn validate(ev: &super::EvaluationSpec, err: &mut dyn FnMut(String, String)) {
    if ev.select.len() > MAX_SELECT {
        err(
            "spec.evaluation.select".into(),
            format!("at most {MAX_SELECT} steps (one per axis)"),
        );
    }
    let mut seen = Vec::new();
    for (i, s) in ev.select.iter().enumerate() {
        let at = format!("spec.evaluation.select[{i}]");
        if s.index.is_some() && (s.start.is_some() || s.end.is_some()) {
            err(
                at.clone(),
                "set either index (one position) or start/end (a range), not both".into(),
            );
        }
        if s.index.is_none() && s.start.is_none() && s.end.is_none() {
            err(at.clone(), "set index, or start and/or end".into());
        }
        if seen.contains(&s.axis) {
            err(
                format!("{at}.axis"),
                format!("axis {} is selected twice", s.axis),
            );
        }
        seen.push(s.axis);
    }
    if let Some(p) = &ev.pool
        && ev
            .select
            .iter()
            .any(|s| s.axis == p.axis && s.index.is_some())
    {
        err(
            "spec.evaluation.pool.axis".into(),
            format!(
                "axis {} is removed by an index in spec.evaluation.select: pool another axis",
                p.axis
            ),
        );
    }
    let k = |field: &str, v: Option<u32>, err: &mut dyn FnMut(String, String)| {
        if let Some(v) = v
            && !(1..=MAX_K).contains(&v)
        {
            err(field.into(), format!("{v} is not between 1 and {MAX_K}"));
        }
    };
    match &ev.task {
        Some(TaskSpec::Classification(c)) => {
            k("spec.evaluation.task.classification.topK", c.top_k, err)
        }
        Some(TaskSpec::Embedding(e)) => k("spec.evaluation.task.embedding.k", e.k, err),
        Some(TaskSpec::Detection(d)) => validate_detection(d, err),
        _ => {}
    }
}

fn validate_detection(d: &DetectionTask, err: &mut dyn FnMut(String, String)) {
    let at = "spec.evaluation.task.detection";
    match (d.layout, &d.outputs) {
        (DetectionLayout::Boxes, None) => err(
            format!("{at}.outputs"),
            "layout boxes needs the names of the boxes, scores and classes outputs".into(),
        ),
        (DetectionLayout::Yolov8 | DetectionLayout::Yolov5, Some(_)) => err(
            format!("{at}.outputs"),
            format!(
                "applies to layout boxes only; layout {} reads the one compared output (spec.evaluation.output)",
                d.layout.name()
            ),
        ),
        _ => {}
    }
    for (name, v) in [
        ("scoreThreshold", d.score_threshold),
        ("iouThreshold", d.iou_threshold),
    ] {
        if let Some(v) = v
            && !(0.0..=1.0).contains(&v)
        {
            err(format!("{at}.{name}"), format!("{v} is not in [0, 1]"));
        }
    }
    if let Some(m) = d.max_detections
        && !(1..=1000).contains(&m)
    {
        err(
            format!("{at}.maxDetections"),
            format!("{m} is not between 1 and 1000"),
        );
    }
}

/// Every check the gate can record: one table for names, direction, whether a layer left in
/// float can improve it (a quality check: the search's fallback), and the task it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckName {
    MaxAccuracyDrop,
    MaxRelativeAccuracyDrop,
    MinAgreement,
    MinCosineSimilarity,
    MinCompressionRatio,
    MaxLatencyRatio,
    TensorsCompressed,
    MinTopKAgreement,
    MaxTopKAccuracyDrop,
    MinMacroF1,
    MinSequenceMatch,
    MaxCharErrorRate,
    MinDetectionF1,
    MinMap50,
    MinNeighbourRecall,
    MaxMeanAbsError,
    MaxAbsError,
    MaxWorstSliceDrop,
    MaxSequenceMatchDrop,
    MaxCharErrorRateIncrease,
    MaxDetectionF1Drop,
    MaxMap50Drop,
}

impl CheckName {
    /// In the order the checks are recorded (the first seven as before issue 19).
    pub const ALL: [CheckName; 22] = [
        Self::MaxAccuracyDrop,
        Self::MaxRelativeAccuracyDrop,
        Self::MaxLatencyRatio,
        Self::TensorsCompressed,
        Self::MinAgreement,
        Self::MinCosineSimilarity,
        Self::MinCompressionRatio,
        Self::MinTopKAgreement,
        Self::MaxTopKAccuracyDrop,
        Self::MinMacroF1,
        Self::MinSequenceMatch,
        Self::MaxCharErrorRate,
        Self::MinDetectionF1,
        Self::MinMap50,
        Self::MinNeighbourRecall,
        Self::MaxMeanAbsError,
        Self::MaxAbsError,
        Self::MaxWorstSliceDrop,
        Self::MaxSequenceMatchDrop,
        Self::MaxCharErrorRateIncrease,
        Self::MaxDetectionF1Drop,
        Self::MaxMap50Drop,
    ];

    /// The threshold's field name (and the check's name in status and report).
    pub fn name(self) -> &'static str {
        match self {
            Self::MaxAccuracyDrop => "maxAccuracyDrop",
            Self::MaxRelativeAccuracyDrop => "maxRelativeAccuracyDrop",
            Self::MinAgreement => "minAgreement",
            Self::MinCosineSimilarity => "minCosineSimilarity",
            Self::MinCompressionRatio => "minCompressionRatio",
            Self::MaxLatencyRatio => "maxLatencyRatio",
            Self::TensorsCompressed => "tensorsCompressed",
            Self::MinTopKAgreement => "minTopKAgreement",
            Self::MaxTopKAccuracyDrop => "maxTopKAccuracyDrop",
            Self::MinMacroF1 => "minMacroF1",
            Self::MinSequenceMatch => "minSequenceMatch",
            Self::MaxCharErrorRate => "maxCharErrorRate",
            Self::MinDetectionF1 => "minDetectionF1",
            Self::MinMap50 => "minMap50",
            Self::MinNeighbourRecall => "minNeighbourRecall",
            Self::MaxMeanAbsError => "maxMeanAbsError",
            Self::MaxAbsError => "maxAbsError",
            Self::MaxWorstSliceDrop => "maxWorstSliceDrop",
            Self::MaxSequenceMatchDrop => "maxSequenceMatchDrop",
            Self::MaxCharErrorRateIncrease => "maxCharErrorRateIncrease",
            Self::MaxDetectionF1Drop => "maxDetectionF1Drop",
            Self::MaxMap50Drop => "maxMap50Drop",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// A `max...` check passes at or below its limit; the others at or above.
    pub fn is_max(self) -> bool {
        self.name().starts_with("max")
    }

    /// Whether the check measures output quality (what leaving a layer in float can improve),
    /// as opposed to size, speed or the passes' effect.
    pub fn is_quality(self) -> bool {
        !matches!(
            self,
            Self::MinCompressionRatio | Self::MaxLatencyRatio | Self::TensorsCompressed
        )
    }

    /// A drop of a metric against the labels (a fraction): original minus candidate.
    pub fn is_label_drop(self) -> bool {
        matches!(
            self,
            Self::MaxTopKAccuracyDrop
                | Self::MaxSequenceMatchDrop
                | Self::MaxDetectionF1Drop
                | Self::MaxMap50Drop
        )
    }

    /// Error bounds that apply to any output (mean/max absolute error, the worst slice).
    fn is_error_bound(self) -> bool {
        matches!(
            self,
            Self::MaxMeanAbsError | Self::MaxAbsError | Self::MaxWorstSliceDrop
        )
    }

    /// The `spec.evaluation.task` key the check's metric needs (None: any output).
    pub fn task(self) -> Option<&'static str> {
        match self {
            Self::MinTopKAgreement | Self::MaxTopKAccuracyDrop | Self::MinMacroF1 => {
                Some("classification")
            }
            Self::MinSequenceMatch
            | Self::MaxCharErrorRate
            | Self::MaxSequenceMatchDrop
            | Self::MaxCharErrorRateIncrease => Some("sequence"),
            Self::MinDetectionF1
            | Self::MinMap50
            | Self::MaxDetectionF1Drop
            | Self::MaxMap50Drop => Some("detection"),
            Self::MinNeighbourRecall => Some("embedding"),
            _ => None,
        }
    }

    /// The limit `spec.thresholds` sets for this check (None: not checked).
    /// `tensorsCompressed` is always checked, with limit 1.
    pub fn limit(self, t: &super::Thresholds) -> Option<f64> {
        match self {
            Self::MaxAccuracyDrop => t.max_accuracy_drop,
            Self::MaxRelativeAccuracyDrop => t.max_relative_accuracy_drop,
            Self::MinAgreement => t.min_agreement,
            Self::MinCosineSimilarity => t.min_cosine_similarity,
            Self::MinCompressionRatio => t.min_compression_ratio,
            Self::MaxLatencyRatio => t.max_latency_ratio,
            Self::TensorsCompressed => Some(1.0),
            Self::MinTopKAgreement => t.min_top_k_agreement,
            Self::MaxTopKAccuracyDrop => t.max_top_k_accuracy_drop,
            Self::MinMacroF1 => t.min_macro_f1,
            Self::MinSequenceMatch => t.min_sequence_match,
            Self::MaxCharErrorRate => t.max_char_error_rate,
            Self::MinDetectionF1 => t.min_detection_f1,
            Self::MinMap50 => t.min_map50,
            Self::MinNeighbourRecall => t.min_neighbour_recall,
            Self::MaxMeanAbsError => t.max_mean_abs_error,
            Self::MaxAbsError => t.max_abs_error,
            Self::MaxWorstSliceDrop => t.max_worst_slice_drop,
            Self::MaxSequenceMatchDrop => t.max_sequence_match_drop,
            Self::MaxCharErrorRateIncrease => t.max_char_error_rate_increase,
            Self::MaxDetectionF1Drop => t.max_detection_f1_drop,
            Self::MaxMap50Drop => t.max_map50_drop,
        }
    }
}

/// Task thresholds without their task, and a slice bound without slices: refused before
/// anything runs.
pub fn validate_thresholds(spec: &super::CompressionJobSpec, err: &mut dyn FnMut(String, String)) {
    let task = spec
        .evaluation
        .as_ref()
        .and_then(|e| e.task.as_ref())
        .map(TaskSpec::key);
    for c in CheckName::ALL {
        let (Some(need), Some(_)) = (c.task(), c.limit(&spec.thresholds)) else {
            continue;
        };
        if task != Some(need) {
            err(
                format!("spec.thresholds.{}", c.name()),
                format!(
                    "is a {need} metric: set spec.evaluation.task.{need} (the task now is {})",
                    task.unwrap_or("unset")
                ),
            );
        }
    }
    if spec.thresholds.max_worst_slice_drop.is_some() && spec.dataset.slices.is_none() {
        err(
            "spec.thresholds.maxWorstSliceDrop".into(),
            "needs spec.dataset.slices (the npz array naming each sample's slice)".into(),
        );
    }
    // The task thresholds' ranges (the CRD's CEL says the same; the older ones are checked
    // in validate.rs).
    for c in CheckName::ALL
        .into_iter()
        .filter(|c| c.task().is_some() || c.is_error_bound())
    {
        let Some(v) = c.limit(&spec.thresholds) else {
            continue;
        };
        let fraction = !c.is_max() || c.is_label_drop();
        if !v.is_finite() || v < 0.0 || (fraction && v > 1.0) {
            let range = if fraction {
                "in [0, 1]"
            } else {
                "a number >= 0"
            };
            err(
                format!("spec.thresholds.{}", c.name()),
                format!("{v} must be {range}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_name_round_trips_and_only_size_speed_and_change_are_not_quality() {
        for c in CheckName::ALL {
            assert_eq!(CheckName::from_name(c.name()), Some(c));
        }
        let not_quality: Vec<_> = CheckName::ALL
            .into_iter()
            .filter(|c| !c.is_quality())
            .map(CheckName::name)
            .collect();
        assert_eq!(
            not_quality,
            [
                "maxLatencyRatio",
                "tensorsCompressed",
                "minCompressionRatio"
            ]
        );
    }

    #[test]
    fn a_task_is_exactly_one_key() {
        let t: TaskSpec = serde_json::from_str(r#"{"sequence": {"blank": 0}}"#).unwrap();
        assert_eq!(t, TaskSpec::Sequence(SequenceTask { blank: Some(0) }));
        let e = serde_json::from_str::<TaskSpec>(r#"{"sequence": {}, "regression": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one"), "{e}");
        let back = serde_json::to_string(&t).unwrap();
        assert_eq!(back, r#"{"sequence":{"blank":0}}"#);
    }
}
