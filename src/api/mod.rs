//! The `CompressionJob` custom resource: spec, status, defaults and validation (pure).
//!
//! `///` docs on fields are user documentation: they become `kubectl explain` output.

mod check;
pub mod defaults;
pub mod manifest;
pub mod ops;
mod plan;
pub mod policy;
mod spec;
mod status;
pub mod task;
mod validate;
pub mod wire;

pub use check::CheckId;
pub use plan::*;
pub use policy::{
    CompressionPolicy, CompressionPolicySpec, CompressionPolicyStatus, JobTemplate, PolicySource,
    SeenVersion, VersionOrdering,
};
pub use spec::*;
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
