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
    pub result: JobResult,
    pub tools: Tools,
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

impl Report {
    pub const KIND: &str = "CompressionReport";
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The software that made the decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tools {
    pub kompress: &'static str,
    pub onnxruntime_library: Option<String>,
    pub ort_crate: &'static str,
}

impl Tools {
    /// This binary's versions, with the ONNX Runtime library it loaded (if known).
    pub fn this_binary(onnxruntime_library: Option<String>) -> Self {
        Self {
            kompress: env!("CARGO_PKG_VERSION"),
            onnxruntime_library,
            ort_crate: ORT_CRATE_VERSION,
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
