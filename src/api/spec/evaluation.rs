//! `spec.evaluation`: batching, latency, the compared output and a custom evaluator.

use super::*;

/// How evaluation runs.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Samples per inference batch for the accuracy pass, 1 to 4096. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: Option<u32>,
    /// Model output compared between original and candidate. Default: the first output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// ONNX Runtime intra-op threads, 1 to 256. Default: ONNX Runtime's choice (all cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<u32>,
    /// Latency measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySpec>,
    /// Narrow the compared output per sample before it is scored: an index (e.g. token 0,
    /// the CLS vector) or a range along an axis, applied to every axis listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub select: Vec<AxisSelect>,
    /// Pool the selected output over one axis (mean or max), optionally masked by a dataset
    /// array such as `attention_mask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// L2-normalise each sample's selected (and pooled) vector. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// What the output means (classification, sequence, detection, embedding, regression):
    /// the task's metrics are measured and its thresholds apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// A program of your own that scores what no built-in metric covers (word error rate,
    /// a business rule): it reads the original's and the candidate's compared outputs and
    /// prints named metrics, which `thresholds.custom` can name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluator: Option<EvaluatorSpec>,
}

/// A custom evaluator. It runs once per candidate, in a folder holding `original.npz` and
/// `candidate.npz` (paths also in `KOMPRESS_ORIGINAL` and `KOMPRESS_CANDIDATE`), each with
/// `output` (the compared output: samples first, then its shape per sample, float32) and
/// `labels` when the dataset has them. It must print one JSON object on stdout,
/// `{"metrics": {"wer": 0.12}}` (at most 1 MiB; logs go to stderr), and exit 0. A failure, a
/// timeout or anything else on stdout fails the job (exit 65).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluatorSpec {
    /// The program and its arguments (no shell), e.g. `[python3, /eval/wer.py]`. With
    /// `kompress run` it runs on this machine; in a cluster it runs in `image`.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// In a cluster: the image of the evaluator's container, started in the worker's pod
    /// beside it and sharing its scratch volume (the image needs `command` and glibc; kompress
    /// adds a small agent that runs it). Pin it by digest (`repo@sha256:...`): the image
    /// goes into the evidence. Ignored by `kompress run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Seconds one run may take before it is stopped, 1 to 3600. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<u32>,
}

/// Latency is measured on repeated runs of one batch after warm-up.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencySpec {
    /// Batch size of the timed runs, 1 to 4096. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: Option<u32>,
    /// Untimed runs first, 0 to 10000. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub warmup: Option<u32>,
    /// Timed runs, 1 to 1000000. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub iterations: Option<u32>,
}
