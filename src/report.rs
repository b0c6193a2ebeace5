//! report.json: what a run did, for audit. A leaf: it names API types only, so the pipeline
//! that fills it, `publish` that writes it and the passes that contribute to it all depend on
//! it, never on each other.

use crate::api::{CompressionJob, JobResult, PassSpec, Thresholds};
use serde::Serialize;

/// The `ort` crate this binary is built with (the `=` pin in Cargo.toml); a test checks it
/// against Cargo.lock.
pub const ORT_CRATE_VERSION: &str = "2.0.0-rc.15";

/// Who the run is for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl JobRef {
    /// The job's identity from its metadata (`compressionjob` when it has no name).
    pub fn of(job: &CompressionJob) -> Self {
        Self {
            name: job
                .metadata
                .name
                .clone()
                .unwrap_or_else(|| "compressionjob".into()),
            namespace: job.metadata.namespace.clone(),
            generation: job.metadata.generation,
        }
    }
}

/// Input provenance for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputRef {
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
}

/// report.json: everything needed to audit the decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The CompressionJob's API version (kompress.dev/v1alpha1).
    pub api_version: String,
    pub kind: &'static str,
    pub job: JobRef,
    pub run_id: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub model: InputRef,
    pub external_data: Vec<InputRef>,
    pub dataset: InputRef,
    pub recipe: Vec<PassSpec>,
    pub thresholds: Thresholds,
    /// `Constant` nodes holding weights, folded into initializers (losslessly) before the
    /// passes ran, so that the passes see them as weights.
    #[serde(skip_serializing_if = "is_zero")]
    pub folded_constants: usize,
    pub passes: Vec<PassReport>,
    /// How static quantization's activation ranges were calibrated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
    /// With `spec.search`: every trial and probe, in order, and what was chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
    /// With `spec.edgeCases`: that set's metrics and checks, on their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_cases: Option<EdgeCasesReport>,
    /// With `spec.evaluation.evaluator`: what ran (its metrics are the candidate's `custom`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluator: Option<EvaluatorRef>,
    pub result: JobResult,
    pub tools: Tools,
    /// Set when the result was reused from an earlier run (see `JobResult::cached_from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<crate::api::CachedFrom>,
}

/// The custom evaluator that scored the candidate: its command and, in a cluster, its image
/// (the digest when the spec pins one: `repo@sha256:...`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluatorRef {
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub timeout_seconds: u32,
}

impl EvaluatorRef {
    pub fn from_plan(e: &crate::api::EvaluatorPlan) -> Self {
        Self {
            command: e.command.clone(),
            image: e.image.clone(),
            image_digest: e
                .image
                .as_deref()
                .and_then(|i| i.split_once('@'))
                .map(|(_, d)| d.to_string()),
            timeout_seconds: e.timeout_seconds,
        }
    }
}

/// The edge-case set scored on its own: its checks (named `edgeCases.<threshold>`) are also
/// in `result.checks`, where every one must pass for promotion.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeCasesReport {
    pub dataset: InputRef,
    /// Passed when every edge-case check passed.
    pub verdict: crate::api::Verdict,
    pub baseline: crate::api::Metrics,
    pub candidate: crate::api::Metrics,
    pub checks: Vec<crate::api::Check>,
}

/// A search's full log: enough to see why each form won or lost, and to reproduce it.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SearchReport {
    pub objective: crate::api::SearchObjective,
    /// The forms in the order they were tried.
    pub forms: Vec<&'static str>,
    pub max_trials: u32,
    pub max_seconds: u32,
    /// Candidates evaluated on the whole dataset, in order.
    pub trials: Vec<TrialReport>,
    /// Per form with a fallback: each quantized layer's sensitivity, worst first.
    pub sensitivity: Vec<FormSensitivity>,
    /// Index of the chosen trial (one that passed every check), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<usize>,
    /// When none passed: the trial that came closest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closest: Option<usize>,
    /// `maxTrials` or `maxSeconds` when the budget ended the search early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    pub seconds: f64,
    /// Where the budget went, phase by phase.
    pub budget: SearchBudget,
    /// The chosen (or closest) trial's layers and the precision each ends in, graph order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerPrecision>,
    /// What the size/latency rules decided (a near-tie won by speed, a slower candidate
    /// refused or allowed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Seconds and runs spent in each phase of a search.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SearchBudget {
    /// Each form as a whole, one trial each (building included).
    pub whole_forms: PhaseSpend,
    /// The static form's activation calibration.
    pub calibration: PhaseSpend,
    /// Per-layer sensitivity probes.
    pub probes: PhaseSpend,
    /// The most seconds probes may take, all forms together (a share of `maxSeconds`).
    pub probe_seconds_limit: f64,
    /// Candidates with layers reverted (and integer forms retried with Conv in float).
    pub fallback: PhaseSpend,
    /// Interleaved latency measurements beside the original.
    pub latency: PhaseSpend,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PhaseSpend {
    pub seconds: f64,
    pub runs: u32,
}

impl PhaseSpend {
    pub fn add(&mut self, since: std::time::Instant) {
        self.seconds += since.elapsed().as_secs_f64();
        self.runs += 1;
    }
}

/// A layer of a search's candidate and the precision its weight is stored in.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LayerPrecision {
    /// Node name (the weight's tensor name for the fp16 form).
    pub layer: String,
    pub op: String,
    /// `int4`, `int8`, `fp16` or `fp32`.
    pub precision: &'static str,
}

/// One candidate of a search.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrialReport {
    pub index: usize,
    pub form: &'static str,
    /// `form` (the form as a whole), `fallback` (layers reverted to float by sensitivity),
    /// `latency` (Conv left in float because the integer form was slower), or `skipped`.
    pub kind: &'static str,
    /// Layers left in float (node names; tensor names for fp16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub float_layers: Vec<String>,
    /// What those layers are stored in: `fp16` (a mixed candidate) or `fp32`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted_to: Option<&'static str>,
    pub tensors_compressed: usize,
    pub bytes: u64,
    pub ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_drop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_similarity: Option<f64>,
    /// Median latency ratio and its 95% interval, when latency was measured for this trial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<[f64; 3]>,
    /// Every check, with its value, limit and verdict (latency only where measured).
    pub checks: Vec<crate::api::Check>,
    pub passed: bool,
    /// Why it was skipped, or what it shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub seconds: f64,
}

/// A form's quantized layers ranked by measured sensitivity.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FormSensitivity {
    pub form: &'static str,
    /// Rows each probe ran on (the evaluation set's first).
    pub samples: usize,
    pub layers: Vec<LayerSensitivity>,
}

/// The output error when only this layer is quantized (the rest float).
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LayerSensitivity {
    pub layer: String,
    pub op: String,
    /// Signal-to-noise ratio of the compared output, in dB (lower: more sensitive).
    pub output_sqnr_db: f64,
    /// Fraction of the probe rows whose top-1 class changed (classification outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flips: Option<f64>,
}

/// The calibration of a static quantization pass.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CalibrationReport {
    /// Index of the pass in `recipe`.
    pub pass: usize,
    /// `minMax`, `percentile` or `entropy`.
    pub method: crate::api::CalibrationMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Samples run through the original model.
    pub samples: u64,
    /// The file they came from and which rows (`[start, end)`); rows set aside from the
    /// evaluation dataset are never scored.
    pub source: CalibrationSourceRef,
    /// Activation tensors whose ranges were calibrated.
    pub tensors: usize,
    /// Rows per calibration run (`calibration.batchSize`; unset, as many as fit the memory
    /// budget by what the first row's activations took).
    pub batch: usize,
    /// Bytes of calibrated activations one row brought (its inputs included).
    pub row_bytes: u64,
    /// Each one's range and its estimated int8 quantization error on the calibration samples,
    /// worst first.
    pub activations: Vec<ActivationError>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CalibrationSourceRef {
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `dataset` (the last rows of the evaluation set, set aside) or `calibration`
    /// (spec.calibration.dataset, or `--calibration`).
    pub kind: &'static str,
    pub rows: [u64; 2],
}

/// A calibrated activation: the range chosen and the error it costs on the calibration data.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActivationError {
    pub tensor: String,
    pub range: [f32; 2],
    /// Estimated signal-to-quantization-noise ratio in dB (rounding plus clipping), from the
    /// streamed statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqnr_db: Option<f64>,
}

impl Report {
    pub const KIND: &str = "CompressionReport";

    /// The predicate of the promotion's in-toto statement: see [`evidence_predicate`].
    pub fn evidence_predicate(&self) -> serde_json::Value {
        evidence_predicate(&serde_json::to_value(self).unwrap_or_default())
    }
}

/// The predicate of the promotion's in-toto statement (`evidence::PREDICATE_TYPE`), from a
/// report as written to report.json (a run's own, or a cached run's replayed one): what was
/// evaluated, against which thresholds, with which result, by which tools, and where a reused
/// result came from. Bounded: the per-tensor pass details and the search's trial log stay in
/// report.json.
pub fn evidence_predicate(report: &serde_json::Value) -> serde_json::Value {
    let (r, edge) = (&report["result"], &report["edgeCases"]);
    let mut p = serde_json::json!({
        "verdict": r["verdict"],
        "job": report["job"],
        "runId": report["runId"],
        "startedAt": report["startedAt"],
        "finishedAt": jiff::Timestamp::now().to_string(),
        "inputs": {
            "model": report["model"],
            "externalData": report["externalData"],
            "dataset": report["dataset"],
            "calibration": report["calibration"]["source"],
            "edgeCases": edge["dataset"],
        },
        "edgeCases": (!edge.is_null()).then(|| serde_json::json!({
            "verdict": edge["verdict"],
            "baseline": edge["baseline"],
            "candidate": edge["candidate"],
        })),
        "recipe": report["recipe"],
        "thresholds": report["thresholds"],
        "evaluator": report["evaluator"],
        "checks": r["checks"],
        "baseline": r["baseline"],
        "candidate": r["candidate"],
        "originalBytes": r["originalBytes"],
        "compressedBytes": r["compressedBytes"],
        "ratio": r["ratio"],
        "accuracyDrop": r["accuracyDrop"],
        "search": r["search"],
        "candidateUri": r["artifact"]["uri"],
        "tools": report["tools"],
    });
    if let Some(c) = report.get("cachedFrom") {
        p["cachedFrom"] = c.clone();
    }
    p
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The software that made the decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tools {
    pub kompress: &'static str,
    /// The ONNX Runtime release that evaluated the models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
    pub onnxruntime_library: Option<String>,
    pub ort_crate: &'static str,
    /// The CPU the models were evaluated on (latency ratios and integer kernels depend on it).
    pub cpu: crate::usage::Cpu,
}

impl Tools {
    /// This binary's versions, with the ONNX Runtime library it loaded (if known).
    /// (`onnxruntime`: the release, `onnxruntime_library`: the file it was loaded from.)
    pub fn this_binary(onnxruntime: Option<String>, onnxruntime_library: Option<String>) -> Self {
        Self {
            kompress: env!("CARGO_PKG_VERSION"),
            onnxruntime,
            onnxruntime_library,
            ort_crate: ORT_CRATE_VERSION,
            cpu: crate::usage::cpu(),
        }
    }
}

/// What a pass did, for the report.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PassReport {
    pub pass: String,
    pub description: String,
    pub tensors: Vec<TensorReport>,
    /// Weights left alone, and why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TensorReport {
    pub tensor: String,
    pub node: String,
    pub op: String,
    pub elements: u64,
    /// Fraction of exact zeros after the pass.
    pub sparsity: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scales: Option<usize>,
    /// Largest |w - dequant(quant(w))| over the tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f32>,
    /// Signal-to-quantization-noise ratio of the weight, 10·log10(Σw² / Σ(w − ŵ)²) in dB
    /// (int8 per channel on trained weights: typically 35-45 dB; 4-bit: 18-25 dB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqnr_db: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ort_crate_version_is_the_locked_one() {
        let lock = include_str!("../Cargo.lock");
        let locked = lock
            .split("[[package]]")
            .find(|p| p.contains("\nname = \"ort\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"'))
            .expect("Cargo.lock has the ort crate");
        assert_eq!(ORT_CRATE_VERSION, locked);
    }
}
