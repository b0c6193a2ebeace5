//! The resolved plan: a spec that passed [`validate`](super::validate), with every default
//! applied once (the values come from [`defaults`](super::defaults)). Later stages take a
//! `Plan`, so none of them reads an unset field or applies a default of its own.

use super::{
    CalibrationMethod, CalibrationMethodSpec, CompressionJobSpec, SearchForm, SearchObjective,
    TargetCpu,
};

/// A validated spec and its resolved settings. Only `validate` makes one. It dereferences to
/// the spec as written (sources, passes, thresholds, output: what the cache key, the report
/// and the evidence record as the user wrote them); the fields below shadow the spec's
/// optional ones with their resolved values.
// The private field, not `#[non_exhaustive]`: that would still let the rest of this crate
// build a plan without validating.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The spec as written.
    pub spec: CompressionJobSpec,
    /// `spec.target.cpu` (default auto).
    pub target: TargetCpu,
    /// `spec.evaluation`, defaults applied.
    pub evaluation: EvaluationPlan,
    /// `spec.search`, defaults applied.
    pub search: Option<SearchPlan>,
    /// `spec.output.cache` (default true): false also for a job with a custom evaluator,
    /// whose results are never cached.
    pub cache: bool,
    /// Only `validate` makes a plan (through `defaults`).
    pub(super) validated: (),
}

impl std::ops::Deref for Plan {
    type Target = CompressionJobSpec;

    fn deref(&self) -> &CompressionJobSpec {
        &self.spec
    }
}

/// How evaluation runs (`spec.evaluation`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationPlan {
    /// The spec's part as written (its task, selection and pooling are read as they are).
    pub spec: super::EvaluationSpec,
    pub batch_size: u32,
    /// None: ONNX Runtime's choice.
    pub threads: Option<u32>,
    pub latency_batch: u32,
    pub warmup: u32,
    pub iterations: u32,
    pub normalize: bool,
    pub evaluator: Option<EvaluatorPlan>,
}

/// A custom evaluator (`spec.evaluation.evaluator`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatorPlan {
    pub command: Vec<String>,
    pub image: Option<String>,
    pub timeout_seconds: u32,
}

/// The search (`spec.search`).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub objective: SearchObjective,
    /// In the spec's order (the search orders them cheapest first).
    pub forms: Vec<SearchForm>,
    /// None: each form's own ops.
    pub ops: Option<Vec<String>>,
    pub max_trials: u32,
    pub max_seconds: u32,
    /// None: half of each form's quantized layers (known only once the model is read).
    pub max_float_layers: Option<u32>,
    pub sensitivity_samples: u32,
    /// As written: it goes into the static form's pass as is.
    pub calibration: Option<CalibrationMethodSpec>,
    pub min_elements: u64,
}

/// A static quantization's calibration (`calibration` of a quantize pass or of the search).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationPlan {
    pub method: CalibrationMethod,
    pub samples: u32,
    pub percentile: f64,
    /// Samples per calibration run (its own: memory follows it, not evaluation.batchSize).
    pub batch: CalibrationBatch,
}

/// How many samples a calibration run takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationBatch {
    /// `calibration.batchSize` as set.
    Fixed(u32),
    /// Unset: at most `rows`, and fewer when that many rows' calibrated activations would pass
    /// `bytes` (measured on the first row).
    UpTo { rows: u32, bytes: u64 },
}

/// How int8 weights that integer kernels multiply are ranged (`reduceRange` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRange {
    /// [-127, 127] everywhere (`reduceRange: false`, or a target whose kernels are exact).
    Eight,
    /// [-63, 63] (`reduceRange: true`, ONNX Runtime's `reduce_range`).
    Seven,
    /// [-127, 127] with each scale chosen so that two weights an int16 multiply-add pairs
    /// cannot overflow it (the default where the target may lack VNNI): exact on every CPU,
    /// like 7 bits, with as much of the 8 bits as the weights allow.
    PairBounded,
}
