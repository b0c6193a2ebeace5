//! The `CompressionJob` custom resource: spec, status, defaults and validation (pure).
//!
//! `///` docs on fields are user documentation: they become `kubectl explain` output.

pub mod manifest;
pub mod ops;
pub mod policy;
mod status;
pub mod task;
mod validate;
pub mod wire;

pub use policy::{
    CompressionPolicy, CompressionPolicySpec, CompressionPolicyStatus, JobTemplate, PolicySource,
    SeenVersion, VersionOrdering,
};
pub use status::*;
pub use task::{
    AxisSelect, BoxOutputs, ClassificationTask, Confidence, DetectionLayout, DetectionTask,
    EmbeddingTask, PoolOp, PoolSpec, RegressionTask, SequenceTask, TaskSpec,
};
pub use validate::{FieldError, InvalidSpec, parse_pattern, validate};

use k8s_openapi::api::core::v1::Toleration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A model compression run: pull an ONNX model, apply passes, evaluate original and candidate
/// with ONNX Runtime on the same data, and promote the candidate only if every threshold passes.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kompress.dev",
    version = "v1alpha1",
    kind = "CompressionJob",
    namespaced,
    // Not `cj`: that is CronJob's built-in short name, which kubectl resolves first.
    shortname = "cmpj",
    doc = "A model compression run: pull an ONNX model, apply passes, evaluate original and candidate with ONNX Runtime on the same data, and promote the candidate only if every threshold passes.",
    category = "kompress",
    status = "CompressionJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ratio","type":"number","format":"float","jsonPath":".status.result.ratio"}"#,
    printcolumn = r#"{"name":"Acc-Drop","type":"number","format":"float","jsonPath":".status.result.accuracyDrop"}"#,
    printcolumn = r#"{"name":"Promoted","type":"string","jsonPath":".status.conditions[?(@.type==\"Promoted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompressionJobSpec {
    /// The model to compress.
    pub model: ModelSource,
    /// The evaluation data: both the original and the candidate run on it.
    pub dataset: DatasetSource,
    /// Credentials and connection settings for object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Compression passes, applied in this order (pruning before quantization is the usual order).
    /// With `search`, only the passes that run before quantization (prune, lowRank, optimize)
    /// and may be empty: the search picks the quantization.
    // maxItems bounds the CEL cost estimate of the per-pass rules (the apiserver refuses the
    // CRD without it).
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(p, [has(p.prune), has(p.quantize), has(p.fp16), has(p.lowRank), has(p.optimize)].filter(x, x).size() == 1)").message("each pass sets exactly one of prune, quantize, fp16, lowRank or optimize"))]
    pub passes: Vec<PassSpec>,
    /// Instead of one fixed quantization: try several forms, fall back layer by layer where a
    /// form misses the thresholds, and keep the best candidate that passes every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpec>,
    /// Every threshold set here must pass for the candidate to be promoted.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// A second dataset: the rows that matter most (often few), in the same format as
    /// `dataset` (fed the same way, `dataset.inputs`). Scored on the original and the
    /// candidate, reported on its own (report.json `edgeCases`), and gated by its own
    /// thresholds, whose checks are named `edgeCases.<threshold>`; every one must pass for
    /// the candidate to be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_cases: Option<EdgeCasesSpec>,
    /// Where candidates, reports and promoted models go.
    pub output: OutputSpec,
    /// How the evaluation runs (batch size, latency measurement, threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
    /// Static quantization's calibration samples (default: set aside from the dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSource>,
    /// Where the compressed model will be served; it picks integer forms that are exact there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSpec>,
    /// Compute for the worker pod (in a cluster). `gpu > 0` runs the GPU image with the CUDA
    /// execution provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// Node selector for the worker pod (merged over the controller's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations for the worker pod (added to the controller's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Kueue LocalQueue (in this namespace) that admits the worker: the Job is created
    /// suspended with the `kueue.x-k8s.io/queue-name` label and runs once Kueue admits it
    /// against its ClusterQueue's quota; status says why it waits. Default: the controller's
    /// `--queue-name` (the chart's `worker.queueName`), else no queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("must be a LocalQueue name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    pub queue_name: Option<String>,
    /// Worker image override; the controller's CPU or GPU image by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Seconds the worker may run before it is stopped (batch/v1 Job `activeDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be positive"))]
    pub active_deadline_seconds: Option<i64>,
    /// Retries after transient failures (network, storage). Permanent errors and rejected
    /// candidates are never retried. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message("must be between 0 and 10"))]
    pub backoff_limit: Option<i32>,
    /// Seconds to keep the finished worker Job before Kubernetes deletes it. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must not be negative"))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// Where the model comes from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSource {
    /// URI of the ONNX model: s3://, gs://, az://, https://, file:// or a plain path.
    /// External data files named by the model are fetched from beside it. Or an OCI
    /// artifact, `oci://REGISTRY/REPOSITORY:TAG` or `oci://REGISTRY/REPOSITORY@sha256:<digest>`:
    /// a CNCF ModelPack as kompress promotes it (one layer per file, named by its
    /// `org.cncf.model.filepath` annotation); its one `.onnx` layer is the model and the layers
    /// its external data names are fetched with it, each checked against its layer digest.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the model file (64 hex digits); the run fails on mismatch. With an
    /// `oci://` uri: of the `.onnx` layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// With an `oci://` uri: how to reach the registry (as `spec.output.registry`). When both
    /// name a `secretRef`, it must be the same Secret: the worker has one Docker config, so
    /// put the credentials of both registries in one `kubernetes.io/dockerconfigjson` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
}

/// The evaluation data.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetSource {
    /// URI of a NumPy `.npz` file with one array per model input (named like the input, first
    /// axis = samples; scalars, other batch axes and streaming state: see `inputs`) and
    /// optionally a labels array.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the dataset file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// Name of the labels array in the npz. Default `labels` when the file has one; without
    /// labels, accuracy is not measured. Integer `[samples]` class indices; with the sequence
    /// task, integer `[samples, length]` target class indices padded with -1; with the
    /// detection task, `[samples, boxes, 5]` true boxes (x1, y1, x2, y2, class; class -1 pads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Use only the first N samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be positive"))]
    pub limit: Option<u32>,
    /// Name of an integer array in the npz (one value per sample) naming each sample's slice
    /// (e.g. 0 = short lines, 1 = long lines): the report gives every metric per slice, and
    /// `thresholds.maxWorstSliceDrop` bounds the worst slice's drop. At most 64 slices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<String>,
    /// How model inputs that are not "one array, samples on axis 0" are fed: a scalar (one
    /// value for every row, e.g. a sample rate), a batch axis other than 0 (e.g. a recurrent
    /// state shaped [layers, batch, hidden]), or a state fed back from an output row after row
    /// (a streaming model). Inputs not listed are fed from the array of their name, samples on
    /// axis 0; a rank-0 input with a rank-0 array of its name needs no entry. The calibration
    /// set and `edgeCases` are fed the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub inputs: Vec<InputFeed>,
}

/// How one model input is fed. Exactly one of: plain rows (only `batchAxis`), `scalar`, or
/// `stateFrom` (with `initial`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.scalar) || !self.scalar || (!has(self.batchAxis) && !has(self.stateFrom))").message("a scalar input has no batch axis and no state: remove batchAxis and stateFrom, or scalar"),
    validation = Rule::new("has(self.stateFrom) == has(self.initial)").message("a state input (stateFrom) needs initial, the array of its value at the start of each stream"),
    validation = Rule::new("!has(self.value) || (has(self.scalar) && self.scalar)").message("value applies to scalar inputs only (scalar: true)"),
    validation = Rule::new("!has(self.resetOn) || has(self.stateFrom)").message("resetOn applies to state inputs only (stateFrom)")
)]
pub struct InputFeed {
    /// The model input's name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The input has no batch axis: the same value is fed as is on every run, from `value` or
    /// from the dataset's array of the input's name, which has exactly the input's shape (a
    /// rank-0 array for a scalar input: `np.array(16000, dtype=np.int64)`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<bool>,
    /// With `scalar`: the value itself (converted to the input's type; an integer input needs
    /// a whole number in its range), instead of an array in the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The input's axis that holds the rows of a batch, e.g. 1 for a state shaped
    /// [2, batch, 128]. Default 0. The dataset's array always keeps samples on its first axis
    /// (the input's shape with the batch axis moved first, e.g. [N, 2, 128]); kompress moves
    /// them to this axis for every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 32))]
    pub batch_axis: Option<u32>,
    /// A recurrent state: the model output fed back into this input on the next row. Rows run
    /// in order, one at a time, each model (original and candidate) carrying its own state;
    /// the input needs no array of its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub state_from: Option<String>,
    /// With `stateFrom`: the dataset's array holding the state at the start of each stream,
    /// shaped like the input without its batch axis (e.g. [2, 128] for a [2, batch, 128]
    /// state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub initial: Option<String>,
    /// With `stateFrom`: the dataset's per-row integer or bool array marking stream starts; at
    /// a row where it is non-zero the state goes back to `initial`. Unset: one stream, from
    /// the first row to the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub reset_on: Option<String>,
}

/// The edge-case set and its thresholds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeCasesSpec {
    /// URI of a NumPy `.npz` file in the format of `dataset` (the same arrays, any number of
    /// rows).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// Name of the labels array (default `labels` when the file has one), shaped as
    /// `spec.dataset.labels` says for the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Use only the first N rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be positive"))]
    pub limit: Option<u32>,
    /// Quality thresholds on these rows (the model's size and latency are checked once, by
    /// `spec.thresholds`, so minCompressionRatio and maxLatencyRatio are not taken here).
    #[serde(default)]
    #[x_kube(validation = Rule::new("!has(self.minCompressionRatio) && !has(self.maxLatencyRatio)").message("size and latency are the model's, checked by spec.thresholds: remove them here"))]
    pub thresholds: Thresholds,
}

/// Object storage settings. Credentials come from the environment (AWS_*, GOOGLE_*, AZURE_*),
/// which in a cluster the controller fills from `secretRef`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// A Secret in the job's namespace whose keys become environment variables of the worker
    /// (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT_KEY,
    /// AZURE_STORAGE_ACCOUNT_KEY). Leave unset for workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// S3-compatible endpoint (e.g. http://minio.storage:9000). Overrides AWS_ENDPOINT_URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region for S3. Overrides AWS_REGION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Use virtual-hosted-style S3 addressing (bucket in the host name). Default false:
    /// path-style, which S3-compatible servers expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_hosted_style: Option<bool>,
    /// Allow plain http:// endpoints (in-cluster S3-compatible servers). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
}

/// A reference to a Secret in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// One compression pass: exactly one of `prune`, `quantize`, `fp16`, `lowRank` or `optimize`,
/// written as a map with one key (`- quantize: {mode: dynamic}`).
// On the wire a pass is a map with one key (`RawPass`), in YAML and JSON alike, whatever
// each format's own convention for enums (YAML libraries differ: some use `!quantize` tags).
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(try_from = "RawPass", into = "RawPass")]
pub enum PassSpec {
    /// Magnitude pruning of weights (unstructured or N:M).
    Prune(PruneSpec),
    /// int8 quantization of weights (and activations, dynamically).
    Quantize(QuantizeSpec),
    /// float16 weight storage: weights stored as float16 and cast back to float32 when the
    /// model loads (ONNX Runtime folds the casts), so the file is about half the size and
    /// runs everywhere fp32 runs. Not combinable with quantize.
    Fp16(Fp16Spec),
    /// Low-rank factorisation of MatMul/Gemm weights: W (m×n) becomes two factors of rank r
    /// from a truncated SVD, only where that is smaller (r < m·n/(m+n)).
    LowRank(LowRankSpec),
    /// ONNX Runtime's own offline graph optimisation (constant folding, node fusions), saved
    /// as a plain ONNX model before the other passes. Only as the first pass.
    Optimize(OptimizeSpec),
}

/// A pass as written: exactly one of the keys is set (checked on conversion).
#[derive(schemars::JsonSchema, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    description = "One compression pass: exactly one of `prune`, `quantize`, `fp16`, `lowRank` or `optimize`, written as a map with one key (`- quantize: {mode: dynamic}`)."
)]
pub struct RawPass {
    /// Magnitude pruning of weights (unstructured or N:M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneSpec>,
    /// int8 quantization of weights (and activations, dynamically).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeSpec>,
    /// float16 weight storage: weights stored as float16 and cast back to float32 when the
    /// model loads (ONNX Runtime folds the casts), so the file is about half the size and
    /// runs everywhere fp32 runs. Not combinable with quantize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp16: Option<Fp16Spec>,
    /// Low-rank factorisation of MatMul/Gemm weights (truncated SVD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank: Option<LowRankSpec>,
    /// ONNX Runtime's offline graph optimisation, before the other passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize: Option<OptimizeSpec>,
}

impl TryFrom<RawPass> for PassSpec {
    type Error = String;

    fn try_from(r: RawPass) -> Result<Self, String> {
        match (r.prune, r.quantize, r.fp16, r.low_rank, r.optimize) {
            (Some(p), None, None, None, None) => Ok(Self::Prune(p)),
            (None, Some(q), None, None, None) => Ok(Self::Quantize(q)),
            (None, None, Some(f), None, None) => Ok(Self::Fp16(f)),
            (None, None, None, Some(l), None) => Ok(Self::LowRank(l)),
            (None, None, None, None, Some(o)) => Ok(Self::Optimize(o)),
            _ => Err("set exactly one of prune, quantize, fp16, lowRank or optimize".into()),
        }
    }
}

impl From<PassSpec> for RawPass {
    fn from(p: PassSpec) -> Self {
        match p {
            PassSpec::Prune(p) => Self {
                prune: Some(p),
                ..Default::default()
            },
            PassSpec::Quantize(q) => Self {
                quantize: Some(q),
                ..Default::default()
            },
            PassSpec::Fp16(f) => Self {
                fp16: Some(f),
                ..Default::default()
            },
            PassSpec::LowRank(l) => Self {
                low_rank: Some(l),
                ..Default::default()
            },
            PassSpec::Optimize(o) => Self {
                optimize: Some(o),
                ..Default::default()
            },
        }
    }
}

impl PassSpec {
    /// The key the pass is written with (`prune`, `quantize`, `fp16`).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Prune(_) => "prune",
            Self::Quantize(_) => "quantize",
            Self::Fp16(_) => "fp16",
            Self::LowRank(_) => "lowRank",
            Self::Optimize(_) => "optimize",
        }
    }
}

/// float16 weight storage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fp16Spec {
    /// Initializers with fewer elements stay float32. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
    /// Initializer names left in float32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tensors: Vec<String>,
    /// Only these initializers, whatever their size (a search's mixed-precision candidate
    /// lists the layers it reverted from an integer form). Default every float32 initializer
    /// of at least `minElements`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<String>,
}

/// Magnitude pruning: set either `sparsity` (unstructured) or `pattern` (N:M).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.sparsity) != has(self.pattern)").message("set exactly one of sparsity or pattern"))]
pub struct PruneSpec {
    /// How weights are ranked. Only `magnitude` (smallest |w| pruned first).
    #[serde(default)]
    pub method: PruneMethod,
    /// Target fraction of zero weights in each pruned tensor (`scope: layer`) or across all of
    /// them (`scope: global`), in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self < 1.0").message("must be in [0, 1)"))]
    pub sparsity: Option<f64>,
    /// Semi-structured N:M sparsity along the input dimension, e.g. "2:4": in every group of M
    /// consecutive weights at most N are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]?:[1-9][0-9]?$') && int(self.split(':')[0]) < int(self.split(':')[1]) && int(self.split(':')[1]) <= 64").message("must be N:M with 0 < N < M <= 64, e.g. 2:4"))]
    pub pattern: Option<String>,
    /// `layer`: each tensor reaches the sparsity; `global`: one magnitude threshold across all
    /// pruned tensors. Default layer.
    #[serde(default)]
    pub scope: PruneScope,
    /// Op types whose weights are pruned (MatMul, Gemm, Conv, Gather). Default MatMul, Gemm
    /// and Conv: embedding rows (Gather) are not pruned unless listed, since a zeroed row
    /// changes every token that reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Node names left untouched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_nodes: Vec<String>,
    /// Tensors with fewer elements are left untouched. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum PruneMethod {
    #[default]
    Magnitude,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum PruneScope {
    #[default]
    Layer,
    Global,
}

/// Weight quantization: int8 (dynamic, static with calibration, or weight-only) or 4-bit
/// weight-only.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuantizeSpec {
    /// `dynamic`: int8 weights, activations quantized at run time (DynamicQuantizeLinear +
    /// MatMulInteger), which ONNX Runtime executes as integer math: smaller and usually faster
    /// on CPU. `static`: int8 weights and activations with scales calibrated ahead of time on
    /// sample data (QDQ pairs ONNX Runtime fuses into QLinear kernels; needs `calibration`
    /// data, see `spec.calibration`). `weightOnly`: weights stored int8 (or 4-bit, see
    /// `weights`) and dequantized, float math: smaller, runs wherever fp32 runs.
    #[serde(default)]
    pub mode: QuantMode,
    /// Weight element type. `int8` (symmetric, all modes) or `int4` (blocked 4-bit,
    /// `mode: weightOnly` only: MatMul weights become `MatMulNBits`, embedding tables
    /// `GatherBlockQuantized`, both com.microsoft ops ONNX Runtime runs on CPU and GPU).
    #[serde(default)]
    pub weights: WeightType,
    /// One scale per output channel (per row for embedding tables) instead of one per tensor:
    /// more accurate (with 7-bit weights, much more), a fraction of a percent larger. Default
    /// true, except where the model's opset cannot express it: below opset 13 a weight that
    /// is dequantized whole (weight-only mode, Conv) falls back to one scale per tensor; set
    /// true explicitly to make that an error instead. (4-bit weights have one scale per block.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<bool>,
    /// Quantize int8 weights to 7 bits ([-63, 63]). ONNX Runtime multiplies 8-bit activations
    /// by int8 weights; on x86 CPUs without VNNI (AVX2 only, many cloud nodes) those kernels
    /// add pairs of products in int16 and saturate with 8-bit weights, so the output depends on
    /// the serving CPU. Default: chosen from `spec.target.cpu` for the integer modes (`dynamic`,
    /// `static`): true unless the target is known to have VNNI or to be ARM; false in
    /// `weightOnly` mode (weights are dequantized to float, nothing saturates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_range: Option<bool>,
    /// 4-bit weights: elements per block sharing one scale (16, 32, 64, 128 or 256).
    /// Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [16, 32, 64, 128, 256]").message("must be 16, 32, 64, 128 or 256"))]
    pub block_size: Option<u32>,
    /// 4-bit weights: symmetric blocks (no zero points) or asymmetric (a zero point per
    /// block, better for skewed blocks, slightly larger). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// 4-bit MatMul weights: `MatMulNBits` `accuracy_level`, the precision of the
    /// activations in the matmul: 0 (unset, fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 (faster
    /// on some CPUs, less accurate). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 4").message("must be between 0 and 4"))]
    pub accuracy_level: Option<u32>,
    /// 4-bit weights: refine each block's scale (and zero point) by a small search against
    /// the block's squared error after round-to-nearest. Default false: measured on
    /// paraphrase-MiniLM-L3 it lowered the weights' error by about 5% but moved the output
    /// cosine by under 0.002, for 6-10x the compress time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<bool>,
    /// Static mode: the activation element type. `int8` (S8S8) or `uint8` (U8S8). Default
    /// from `spec.target.cpu`: uint8 on x86 (`auto`, `x86-avx2`, `x86-vnni`: ONNX Runtime's
    /// x86 integer kernels multiply u8 by s8 natively; S8S8 QLinearConv measured 1.6x slower
    /// than U8S8 on YOLOv8n with AVX2), int8 on `arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_type: Option<ActivationType>,
    /// Static mode: symmetric activation ranges (zero point 0). Default false (asymmetric:
    /// the full observed [min, max] range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_activations: Option<bool>,
    /// Static mode: how activation ranges are chosen from the calibration samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationMethodSpec>,
    /// Op types to quantize (MatMul, Gemm, Conv, Gather). Default MatMul, Gemm and Gather, and
    /// Conv in static mode (QLinearConv; dynamic and weight-only modes leave Conv float unless
    /// named: ONNX Runtime's integer Conv without calibrated outputs is slower than float). `Gather` quantizes embedding tables (float data [V, D] read along axis
    /// 0) in every mode: int8 rows with one scale per row (or 4-bit blocks), dequantized after
    /// the lookup; `reduceRange` does not apply (no integer matmul follows a lookup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Node names left in float.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_nodes: Vec<String>,
    /// Weights with fewer elements stay float. Default 1024, except Conv in static mode,
    /// quantized whatever its size unless this is set (its activations are what cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum QuantMode {
    #[default]
    Dynamic,
    Static,
    WeightOnly,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum WeightType {
    #[default]
    Int8,
    Int4,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum ActivationType {
    #[default]
    Int8,
    Uint8,
}

/// How static quantization turns observed activations into ranges.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationMethodSpec {
    /// `minMax`: the observed range; `percentile`: clip to the given percentile of |x| (robust
    /// to outliers); `entropy`: the clip that minimises the KL divergence between the float
    /// and quantized histograms (TensorRT's method). Default minMax.
    #[serde(default)]
    pub method: CalibrationMethod,
    /// Calibration samples to run, 1 to 100000. Default 128. Statistics are streamed
    /// (running min/max and fixed-size histograms), so memory does not grow with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("must be between 1 and 100000"))]
    pub samples: Option<u32>,
    /// `percentile` method: the percentile of |x| kept, in (50, 100]. Default 99.999.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 50.0 && self <= 100.0").message("must be in (50, 100]"))]
    pub percentile: Option<f64>,
    /// Samples per calibration run, 1 to 1024. Default 8, whatever `evaluation.batchSize`
    /// is: a run holds every calibrated activation of its batch at once, so peak memory
    /// grows with it (PP-OCRv4 rec, 10.8 MB: 0.42 GB at 4, 0.77 GB at 8, 2.7 GB at 32); the
    /// ranges found do not depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("must be between 1 and 1024"))]
    pub batch_size: Option<u32>,
}

/// Calibration runs' default batch (`calibration.batchSize`).
pub const DEFAULT_CALIBRATION_BATCH: u32 = 8;

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum CalibrationMethod {
    #[default]
    MinMax,
    Percentile,
    Entropy,
}

/// Where static quantization's calibration samples come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationSource {
    /// A separate calibration set (`.npz`, one array per model input, like the dataset). Unset:
    /// the last `samples` rows of the evaluation dataset are set aside for calibration and
    /// are not scored (the report says which rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<CalibrationDataset>,
}

/// A calibration `.npz`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationDataset {
    /// URI of the `.npz`: s3://, gs://, az://, https://, file:// or a plain path.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the file (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
}

/// Where the compressed model will be served: it decides integer forms that differ by CPU.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// The serving CPU. `auto` (unknown: the form that is exact on every CPU), `x86-vnni`
    /// (AVX512-VNNI, AVX-VNNI or AMX), `x86-avx2` (AVX2 without VNNI), `arm64`. Default auto.
    #[serde(default)]
    pub cpu: TargetCpu,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum TargetCpu {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "x86-vnni")]
    X86Vnni,
    #[serde(rename = "x86-avx2")]
    X86Avx2,
    #[serde(rename = "arm64")]
    Arm64,
}

impl TargetCpu {
    /// Whether 8-bit weights multiply 8-bit activations without int16 saturation there.
    pub fn integer_matmul_exact(self) -> bool {
        matches!(self, TargetCpu::X86Vnni | TargetCpu::Arm64)
    }

    /// Whether ONNX Runtime's integer kernels there are fastest with uint8 activations (U8S8:
    /// x86's u8 x s8 multiply-add) rather than int8 (S8S8: arm64's signed dot product).
    pub fn uint8_activations(self) -> bool {
        !matches!(self, TargetCpu::Arm64)
    }
}

/// Low-rank factorisation by truncated SVD.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LowRankSpec {
    /// Keep the smallest rank whose singular values hold this fraction of the weight's energy
    /// (sum of squared singular values), in (0, 1]. Default 0.95 when `ratio` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("must be in (0, 1]"))]
    pub energy: Option<f64>,
    /// Or: the rank that makes each factorised weight this fraction of its original elements,
    /// in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("must be in (0, 1)"))]
    pub ratio: Option<f64>,
    /// Op types whose weights are factorised (MatMul, Gemm). Default both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Node names left untouched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_nodes: Vec<String>,
    /// Weights with fewer elements are left untouched. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
}

/// ONNX Runtime's offline graph optimisation.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OptimizeSpec {
    /// `basic`: constant folding and redundant-node removal, portable ONNX. `extended`: also
    /// fusions into ONNX Runtime (com.microsoft) ops, which only ONNX Runtime runs. Default
    /// basic.
    #[serde(default)]
    pub level: OptimizeLevel,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum OptimizeLevel {
    #[default]
    Basic,
    Extended,
}

/// An accuracy- and latency-aware search over compressed forms (see the README's "Search").
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchSpec {
    /// Which passing candidate wins: `smallest` (fewest bytes; the faster on a tie) or
    /// `fastest` (lowest median latency ratio against the original; the smaller on a tie).
    /// Default smallest.
    #[serde(default)]
    pub objective: SearchObjective,
    /// The forms to try, in this order. Default every form: int4, static, dynamic, weightOnly,
    /// fp16 (a form that changes no weight of the model is skipped and says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub forms: Option<Vec<SearchForm>>,
    /// Op types the integer forms quantize. Default every op kompress quantizes (MatMul,
    /// Gemm, Conv, ConvTranspose, Gather): the per-layer fallback reverts the ones that hurt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Most candidates evaluated on the whole dataset (forms, fallback steps). Default 16.
    /// Sensitivity probes (one per layer, on `sensitivitySamples` rows) do not count here;
    /// `maxSeconds` bounds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("must be between 1 and 1000"))]
    pub max_trials: Option<u32>,
    /// Wall-clock budget of the search in seconds, checked before each trial or probe starts.
    /// Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be positive"))]
    pub max_seconds: Option<u32>,
    /// Per-layer fallback: most layers a form may leave in float. Default half of the form's
    /// quantized layers (rounded up); 0 turns the fallback off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_float_layers: Option<u32>,
    /// Rows (the evaluation set's first) on which each layer's sensitivity is measured.
    /// Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("must be between 1 and 100000"))]
    pub sensitivity_samples: Option<u32>,
    /// The static form's calibration (method, samples, percentile). Default minMax, 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationMethodSpec>,
    /// Weights with fewer elements stay float in the quantize forms. Default 1: every weight
    /// of the ops above is a candidate, and the per-layer fallback reverts those that hurt (a
    /// fixed `quantize` pass defaults to 1024, since nothing measures what it costs there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum SearchObjective {
    #[default]
    Smallest,
    Fastest,
}

/// A compressed form the search can try.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SearchForm {
    /// 4-bit weight-only (MatMulNBits, GatherBlockQuantized); other ops stay float.
    Int4,
    /// Static int8 with calibrated activations (QDQ).
    Static,
    /// Dynamic int8 (activations quantized at run time).
    Dynamic,
    /// int8 weights dequantized to float (float math).
    WeightOnly,
    /// float16 weights.
    Fp16,
}

impl SearchForm {
    /// Every form, smallest first: the default order.
    pub const ALL: [SearchForm; 5] = [
        SearchForm::Int4,
        SearchForm::Static,
        SearchForm::Dynamic,
        SearchForm::WeightOnly,
        SearchForm::Fp16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SearchForm::Int4 => "int4",
            SearchForm::Static => "static",
            SearchForm::Dynamic => "dynamic",
            SearchForm::WeightOnly => "weightOnly",
            SearchForm::Fp16 => "fp16",
        }
    }

    /// The pass this form adds after the recipe's own, with `float_layers` left in float
    /// (node names for the quantize forms, tensor names for fp16).
    pub fn pass(self, s: &SearchSpec, float_layers: &[String]) -> PassSpec {
        let q = |mode, weights, ops: Vec<&str>| {
            PassSpec::Quantize(QuantizeSpec {
                mode,
                weights,
                ops: Some(
                    s.ops
                        .clone()
                        .unwrap_or_else(|| ops.iter().map(|o| o.to_string()).collect()),
                ),
                exclude_nodes: float_layers.to_vec(),
                min_elements: Some(s.min_elements.unwrap_or(1)),
                calibration: (mode == QuantMode::Static)
                    .then(|| s.calibration.clone())
                    .flatten(),
                ..Default::default()
            })
        };
        // Conv has no 4-bit kernel and no integer ConvTranspose kernel exists: those forms
        // leave them out unless `ops` names them (then they are skipped with a reason).
        const ALL_OPS: [&str; 5] = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"];
        match self {
            SearchForm::Int4 => q(
                QuantMode::WeightOnly,
                WeightType::Int4,
                vec!["MatMul", "Gemm", "Gather"],
            ),
            SearchForm::Static => q(
                QuantMode::Static,
                WeightType::Int8,
                vec!["MatMul", "Gemm", "Conv", "Gather"],
            ),
            SearchForm::Dynamic => q(QuantMode::Dynamic, WeightType::Int8, ALL_OPS.to_vec()),
            SearchForm::WeightOnly => q(QuantMode::WeightOnly, WeightType::Int8, ALL_OPS.to_vec()),
            SearchForm::Fp16 => PassSpec::Fp16(Fp16Spec {
                min_elements: None,
                exclude_tensors: float_layers.to_vec(),
                tensors: Vec::new(),
            }),
        }
    }
}

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

/// Where results go.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// Prefix URI for every run's candidate and report.json (the audit trail): each run writes
    /// under `<uri>/runs/<run-id>/`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Where a passing candidate is promoted. Object storage (a prefix URI): the model goes to
    /// a content-addressed `sha256-<digest>/` folder first, then `promoted.json` (the manifest
    /// readers follow) is written last. An OCI registry, `oci://REGISTRY/REPOSITORY:TAG`: the
    /// model is pushed as a CNCF ModelPack artifact, blobs first, the manifest by digest, the
    /// evidence as its referrer, and the tag moved last. Unset: nothing is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_to: Option<String>,
    /// With an `oci://` promoteTo: how to reach the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// Signs each promotion's evidence (an in-toto statement of the evaluation, in a DSSE
    /// envelope beside the promoted model). Unset: the evidence is written unsigned. When set
    /// and the key cannot be read or used, the job fails before anything is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// Reuse a finished run's result when this job's cache key matches it (default true): the
    /// key is the digests of the model, its external data and every dataset, the spec's
    /// settings that change the result (passes or search, thresholds, evaluation, calibration
    /// and edge-case settings, target) and the kompress and ONNX Runtime versions. The index
    /// lives at `<uri>/cache/<key>.json`; a reused candidate is re-verified by digest before it
    /// is published, and the result names it (`cachedFrom`). False: never read nor record an
    /// entry. Jobs with a custom evaluator are never cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// Where the evidence's signing key comes from: an unencrypted PKCS#8 PEM private key,
/// Ed25519 or ECDSA P-256 (`openssl genpkey -algorithm ed25519 -out key.pem`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.keyFile)").message("set exactly one of secretRef or keyFile"))]
pub struct SigningSpec {
    /// In a cluster: a Secret in the job's namespace holding the key. The controller mounts
    /// that one key read-only into the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// With `kompress run`: a local file holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub key_file: Option<String>,
}

/// An OCI registry's connection settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrySpec {
    /// In a cluster: a `kubernetes.io/dockerconfigjson` Secret with the registry's
    /// credentials, mounted into the worker as its Docker config. With `kompress run`: the
    /// Docker config (`DOCKER_CONFIG`, else `~/.docker/config.json`). Unset: anonymous, or
    /// the local Docker config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Talk plain HTTP instead of HTTPS (a registry on loopback or a private network).
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
}

/// One key of a Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it. Default `key.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    pub const DEFAULT_KEY: &str = "key.pem";

    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(Self::DEFAULT_KEY)
    }
}

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

/// Compute for the worker pod.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesSpec {
    /// GPUs (nvidia.com/gpu). > 0 selects the GPU image and the CUDA execution provider.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 8").message("must be between 0 and 8"))]
    pub gpu: u32,
    /// CPU request and limit, e.g. "2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. "4Gi". Default: sized from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Scratch space (emptyDir size limit), e.g. "20Gi". Default: sized from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
}

/// The CRD as installed: kube's generated schema with unsigned integer formats (which the
/// apiserver does not know and warns about) mapped to int32/int64 with a minimum of 0.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut v = serde_json::to_value(CompressionJob::crd()).expect("CRD serialises");
    fix_formats(&mut v);
    serde_json::from_value(v).expect("CRD round-trips")
}

/// Unsigned integer formats (which the apiserver does not know and warns about) as
/// int32/int64 with a minimum of 0.
fn fix_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let signed = match m.get("format").and_then(|f| f.as_str()) {
                Some("uint64") => Some("int64"),
                Some("uint32") | Some("uint16") | Some("uint8") => Some("int32"),
                _ => None,
            };
            if let Some(f) = signed {
                m.insert("format".into(), f.into());
                m.entry("minimum").or_insert(0.into());
            }
            m.values_mut().for_each(fix_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(fix_formats),
        _ => {}
    }
}

/// The CompressionPolicy CRD, with the same integer formats as [`crd`] (its job template
/// holds a CompressionJob spec).
pub fn policy_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut v = serde_json::to_value(CompressionPolicy::crd()).expect("CRD serialises");
    fix_formats(&mut v);
    serde_json::from_value(v).expect("CRD round-trips")
}

impl CompressionJobSpec {
    pub fn evaluation(&self) -> EvaluationSpec {
        self.evaluation.clone().unwrap_or_default()
    }
}
