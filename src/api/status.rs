//! Status of a CompressionJob, and the result record the worker reports (the same shape lands
//! in `status.result`, the termination message and report.json).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompressionJobStatus {
    /// Pending, Running, Succeeded (promoted or passed), Rejected (a threshold failed) or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled (kstatus), Evaluated, Promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The batch/v1 Job running this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The pod that ran the last finished run, its node and what it requested: what cost
    /// tools (OpenCost) join the run's usage on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerRef>,
    /// Sizes, metrics, checks and artifacts of the last finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Rejected,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Rejected => "Rejected",
            Self::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Rejected | Self::Failed)
    }
}

/// Condition types (metav1.Condition `type`).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const EVALUATED: &str = "Evaluated";
    pub const PROMOTED: &str = "Promoted";
}

/// Condition and Event reasons.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const JOB_CREATED: &str = "JobCreated";
    pub const RUNNING: &str = "Running";
    pub const PASSED: &str = "ThresholdsPassed";
    pub const REJECTED: &str = "ThresholdsFailed";
    pub const PROMOTED: &str = "Promoted";
    pub const NOT_PROMOTED: &str = "NotPromoted";
    pub const NO_PROMOTE_TARGET: &str = "NoPromoteTarget";
    pub const WORKER_FAILED: &str = "WorkerFailed";
    pub const PENDING: &str = "Pending";
    /// The worker Job waits for Kueue to admit it (`spec.queueName`); the message says why.
    pub const QUEUED: &str = "Queued";
    /// Event reasons of the terminal transitions (the conditions carry the reasons above).
    pub const SUCCEEDED: &str = "Succeeded";
    pub const CANDIDATE_REJECTED: &str = "Rejected";
    /// The Event of a finished `spec.search` (beside the terminal one).
    pub const SEARCH_FINISHED: &str = "SearchFinished";
    /// Worker failure reasons (the termination message's `reason`, then the Stalled
    /// condition's and the Event's). First those that are not a pipeline error category:
    pub const WORKER_PANICKED: &str = "WorkerPanicked";
    pub const INTERRUPTED: &str = "Interrupted";
    pub const SCRATCH_ERROR: &str = "ScratchError";
    /// The pipeline's error categories (`pipeline::Error::category`), besides INVALID_SPEC
    /// and SCRATCH_ERROR above. Permanent storage errors (missing object, denied, bad URI):
    pub const STORAGE_ERROR: &str = "StorageError";
    /// Storage errors worth retrying (unavailable, 5xx, refused connection, full disk).
    pub const STORAGE_UNAVAILABLE: &str = "StorageUnavailable";
    pub const INVALID_MODEL: &str = "InvalidModel";
    pub const PASS_FAILED: &str = "PassFailed";
    /// The ONNX Runtime library could not be loaded.
    pub const RUNTIME_UNAVAILABLE: &str = "RuntimeUnavailable";
    pub const EVALUATION_FAILED: &str = "EvaluationFailed";
    /// A threshold is set whose metric cannot be measured (e.g. accuracy without labels).
    pub const THRESHOLD_UNMEASURABLE: &str = "ThresholdUnmeasurable";
    /// `spec.output.signing` is set and the key cannot be read or used: nothing is promoted.
    pub const SIGNING_FAILED: &str = "SigningFailed";
}

/// The outcome of one run: what the gate decided and why.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// `Passed` or `Rejected`.
    pub verdict: Verdict,
    pub original_bytes: u64,
    pub compressed_bytes: u64,
    /// original_bytes / compressed_bytes (2 decimals in a CompressionJob's status; report.json keeps every digit).
    pub ratio: f64,
    /// Baseline accuracy minus candidate accuracy (absolute), when labels exist (4 decimals in a
    /// CompressionJob's status; the maxAccuracyDrop check keeps every digit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_drop: Option<f64>,
    pub baseline: Metrics,
    pub candidate: Metrics,
    /// Every threshold that was set, with its value, limit and verdict.
    pub checks: Vec<Check>,
    /// The candidate in the output location (always written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    /// The promoted model (only when every check passed and promoteTo is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<ArtifactRef>,
    /// URI of the full report.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The promotion's evidence: a DSSE envelope (in-toto statement of this evaluation) beside
    /// the promoted model; `kompress verify` checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRef>,
    /// With an `oci://` promoteTo: what the push did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciPush>,
    /// CPU, memory, wall time and bytes the run used (the worker's own measurement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// With `spec.search`: what the search tried and chose (the trial log is in the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSummary>,
    /// Set when this result was reused from an earlier run with the same cache key instead of
    /// being computed again (its candidate re-verified by digest before it was published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<CachedFrom>,
}

/// The earlier run a cached result comes from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedFrom {
    /// That run's folder (`<output.uri>/runs/<run-id>`), holding its candidate and report.json.
    pub run: String,
    /// The cache key (sha256, hex); the index entry is `<output.uri>/cache/<key>.json`.
    pub key: String,
}

/// A promotion to an OCI registry.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OciPush {
    /// The model manifest's digest (`sha256:...`); `promoted.uri` is `oci://...@` it.
    pub manifest_digest: String,
    /// Blobs sent, and blobs the registry already had (not sent again).
    pub blobs_uploaded: u32,
    pub blobs_reused: u32,
    /// How the evidence referrer is found: `api` (the registry's referrers API) or
    /// `tagSchema` (the `sha256-<hex>` index tag kompress maintains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<String>,
}

/// The worker pod of a run, as the controller saw it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRef {
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// CPU cores requested (= limit: the worker runs with Guaranteed QoS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<f64>,
    /// Memory requested, bytes (= limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request_bytes: Option<f64>,
}

/// What a run used, measured by the worker process itself.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU time of the process, user + system, all threads (getrusage).
    pub cpu_seconds: f64,
    /// Peak resident memory of the process (getrusage's max RSS).
    pub peak_memory_bytes: u64,
    /// Wall time from start to the result.
    pub wall_seconds: f64,
    /// Bytes read from storage (model, external data, datasets).
    pub bytes_read: u64,
    /// Bytes written to storage (candidate, reports, promoted files, evidence).
    pub bytes_written: u64,
    /// Wall time per stage, in order: fetch, baseline, compress (the passes and the
    /// candidate's evaluation, or the whole search), publish.
    pub stages: Vec<StageTime>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

/// Where a promotion's evidence is, and who signed it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceRef {
    pub uri: String,
    /// sha256 of the envelope's bytes.
    pub sha256: String,
    /// The signing key's id (sha256 of its public key, DER SubjectPublicKeyInfo); unset when
    /// the evidence is unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
}

/// A search's outcome, bounded in size (the full trial log is in report.json).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SearchSummary {
    /// Candidates evaluated on the whole dataset.
    pub trials: u32,
    /// Layers whose sensitivity was measured (one probe each, on a few rows).
    pub probes: u32,
    /// The chosen form (the closest trial's when nothing passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// The trial the result comes from (index into the report's trial log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<u32>,
    /// Layers that trial leaves in float.
    pub float_layers: u32,
    /// Why the search stopped before trying everything (`maxTrials`, `maxSeconds`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// The most sensitive layers measured (at most 5), worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_layers: Vec<String>,
    /// Reverted layers stored in float16 (the rest of them float32).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub fp16_layers: u32,
    /// What the latency rules decided: a near-tie in size won by speed, a candidate slower
    /// than the original refused, or allowed by `maxLatencyRatio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Passed,
    Rejected,
}

/// Evaluation of one model on the dataset.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub bytes: u64,
    pub samples: u64,
    /// Top-1 accuracy against the labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Fraction of samples whose top-1 class matches the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Mean per-sample cosine similarity of outputs with the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_similarity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_abs_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// Candidate only: median latency candidate/original, from rounds interleaved with the
    /// original in the same process (so machine noise hits both alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<f64>,
    /// Candidate only: 95% bootstrap interval of `latencyRatio`, low end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio_low: Option<f64>,
    /// Candidate only: 95% bootstrap interval of `latencyRatio`, high end; `maxLatencyRatio`
    /// is judged on it, so a candidate passes only when it is that fast with confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio_high: Option<f64>,
    /// Candidate only: the metrics `spec.evaluation.evaluator` printed, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom: std::collections::BTreeMap<String, f64>,
    /// Task metrics (`spec.evaluation.task`) by name, e.g. `sequenceMatch`, `charErrorRate`,
    /// `detectionF1`, `map50`, `neighbourRecall` (against the original's outputs) and
    /// `topKAccuracy`, `macroF1Labels` (against the labels).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task: std::collections::BTreeMap<String, f64>,
    /// Candidate only: the paired bootstrap 95% interval of each quality value the gate
    /// checks, by check name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub intervals: std::collections::BTreeMap<String, Interval>,
    /// With `spec.dataset.slices`: every metric per slice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceMetrics>,
}

/// A 95% interval.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The metrics of one slice of the evaluation set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SliceMetrics {
    /// The slice's value in the dataset's slices array.
    pub slice: i64,
    pub samples: u64,
    /// Metric name -> value, as in `task` (plus accuracy, agreement, cosineSimilarity,
    /// meanAbsError, maxAbsError).
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// One threshold check.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// The threshold's field name, e.g. maxAccuracyDrop.
    pub name: super::CheckId,
    pub value: f64,
    pub limit: f64,
    pub passed: bool,
    /// Quality checks: the paired bootstrap 95% interval of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// Set when the interval reaches both sides of the limit: the evaluation set is too small
    /// to tell this result from noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A stored model.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    pub uri: String,
    pub sha256: String,
}
