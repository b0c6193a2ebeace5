//! Every default of a CompressionJob spec, in one place: the values the CRD's field docs
//! state, and how each unset field resolves. `validate` applies the job's once, into the
//! [`Plan`]; a pass entry (the spec's own, or one the search builds after validation)
//! resolves its fields here when it becomes a `passes::Pass`.

use super::{ActivationType, CalibrationBatch, CalibrationPlan, SecretKeyRef};
use super::{
    CalibrationMethodSpec, CompressionJobSpec, EvaluationPlan, EvaluationSpec, EvaluatorPlan,
    EvaluatorSpec, Fp16Spec, InputFeed, LowRankSpec, Plan, PruneSpec, QuantMode, QuantizeSpec,
    SearchForm, SearchPlan, SearchSpec, TargetCpu, WeightRange, ops,
};

/// `spec.output.cache`.
pub const CACHE: bool = true;
/// `spec.evaluation.batchSize`.
pub const EVAL_BATCH: u32 = 32;
/// `spec.evaluation.latency`: batch, untimed and timed runs.
pub const LATENCY_BATCH: u32 = 1;
pub const LATENCY_WARMUP: u32 = 10;
pub const LATENCY_ITERATIONS: u32 = 100;
/// `spec.evaluation.evaluator.timeoutSeconds`.
pub const EVALUATOR_TIMEOUT_SECONDS: u32 = 300;
/// `spec.evaluation.task`: classification's k, embedding's neighbours, detection's score
/// and IoU thresholds and most detections per sample.
pub const TOP_K: usize = 5;
pub const NEIGHBOURS: usize = 5;
pub const SCORE_THRESHOLD: f32 = 0.25;
pub const IOU_THRESHOLD: f32 = 0.45;
pub const MAX_DETECTIONS: usize = 100;
/// `spec.evaluation.task.sequence.blank`.
pub const SEQUENCE_BLANK: u32 = 0;
/// `spec.dataset.inputs[].batchAxis`.
pub const BATCH_AXIS: u32 = 0;

/// `minElements` of prune, quantize and fp16 passes.
pub const MIN_ELEMENTS: u64 = 1024;
/// `lowRank`: `minElements`, and `energy` when `ratio` is unset.
pub const LOW_RANK_MIN_ELEMENTS: u64 = 65_536;
pub const LOW_RANK_ENERGY: f64 = 0.95;
/// `quantize` with 4-bit weights: `blockSize`, `symmetric`, `accuracyLevel`, `refine`.
pub const INT4_BLOCK_SIZE: u32 = 32;
pub const INT4_SYMMETRIC: bool = true;
pub const INT4_ACCURACY_LEVEL: u32 = 0;
pub const INT4_REFINE: bool = false;
/// `quantize.perChannel`.
pub const PER_CHANNEL: bool = true;
/// Static calibration: `samples`, `percentile`, `batchSize`.
pub const CALIBRATION_SAMPLES: u32 = 128;
pub const CALIBRATION_PERCENTILE: f64 = 99.999;
pub const CALIBRATION_BATCH: u32 = 8;
/// With `batchSize` unset, a calibration run holds at most this many bytes of calibrated
/// activations (fewer rows than [`CALIBRATION_BATCH`] when that many would pass it).
pub const CALIBRATION_BATCH_BYTES: u64 = 256 << 20;

/// `spec.search`: `maxTrials`, `maxSeconds`, `sensitivitySamples`, `minElements`.
pub const SEARCH_MAX_TRIALS: u32 = 16;
pub const SEARCH_MAX_SECONDS: u32 = 3600;
pub const SENSITIVITY_SAMPLES: u32 = 64;
pub const SEARCH_MIN_ELEMENTS: u64 = 1;

/// The worker Job: `spec.backoffLimit`, `spec.ttlSecondsAfterFinished`.
pub const BACKOFF_LIMIT: i32 = 2;
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;
/// `spec.output.signing.secretRef.key`.
pub const SIGNING_KEY: &str = "key.pem";

impl Plan {
    /// Called by `validate` only, on a spec it accepted.
    pub(super) fn new(spec: &CompressionJobSpec) -> Self {
        let evaluation = EvaluationPlan::of(&spec.evaluation.clone().unwrap_or_default());
        Self {
            target: spec.target.as_ref().map(|t| t.cpu).unwrap_or_default(),
            search: spec.search.as_ref().map(SearchPlan::of),
            cache: spec.output.cache.unwrap_or(CACHE) && evaluation.evaluator.is_none(),
            evaluation,
            spec: spec.clone(),
            validated: (),
        }
    }
}

impl EvaluationPlan {
    pub fn of(ev: &EvaluationSpec) -> Self {
        let lat = ev.latency.clone().unwrap_or_default();
        Self {
            batch_size: ev.batch_size.unwrap_or(EVAL_BATCH),
            threads: ev.threads,
            latency_batch: lat.batch_size.unwrap_or(LATENCY_BATCH),
            warmup: lat.warmup.unwrap_or(LATENCY_WARMUP),
            iterations: lat.iterations.unwrap_or(LATENCY_ITERATIONS),
            normalize: ev.normalize.unwrap_or(false),
            evaluator: ev.evaluator.as_ref().map(EvaluatorPlan::of),
            spec: ev.clone(),
        }
    }
}

impl EvaluatorPlan {
    pub fn of(e: &EvaluatorSpec) -> Self {
        Self {
            command: e.command.clone(),
            image: e.image.clone(),
            timeout_seconds: e.timeout_seconds.unwrap_or(EVALUATOR_TIMEOUT_SECONDS),
        }
    }
}

impl SearchPlan {
    pub fn of(s: &SearchSpec) -> Self {
        Self {
            objective: s.objective,
            forms: s.forms.clone().unwrap_or_else(|| SearchForm::ALL.to_vec()),
            ops: s.ops.clone(),
            max_trials: s.max_trials.unwrap_or(SEARCH_MAX_TRIALS),
            max_seconds: s.max_seconds.unwrap_or(SEARCH_MAX_SECONDS),
            max_float_layers: s.max_float_layers,
            sensitivity_samples: s.sensitivity_samples.unwrap_or(SENSITIVITY_SAMPLES),
            calibration: s.calibration.clone(),
            min_elements: s.min_elements.unwrap_or(SEARCH_MIN_ELEMENTS),
        }
    }
}

impl CalibrationPlan {
    /// A static quantization's calibration, from the pass's (or the search's) `calibration`.
    pub fn of(c: Option<&CalibrationMethodSpec>) -> Self {
        Self {
            method: c.map(|c| c.method).unwrap_or_default(),
            samples: c.and_then(|c| c.samples).unwrap_or(CALIBRATION_SAMPLES),
            percentile: c
                .and_then(|c| c.percentile)
                .unwrap_or(CALIBRATION_PERCENTILE),
            batch: match c.and_then(|c| c.batch_size) {
                Some(n) => CalibrationBatch::Fixed(n),
                None => CalibrationBatch::UpTo {
                    rows: CALIBRATION_BATCH,
                    bytes: CALIBRATION_BATCH_BYTES,
                },
            },
        }
    }
}

impl InputFeed {
    /// `batchAxis` (default 0).
    pub fn axis(&self) -> u32 {
        self.batch_axis.unwrap_or(BATCH_AXIS)
    }
}

impl PruneSpec {
    /// Op types pruned: MatMul, Gemm and Conv unless listed.
    pub fn resolved_ops(&self) -> Vec<String> {
        self.ops.clone().unwrap_or_else(|| ops::defaults(false))
    }

    pub fn resolved_min_elements(&self) -> u64 {
        self.min_elements.unwrap_or(MIN_ELEMENTS)
    }
}

impl Fp16Spec {
    pub fn resolved_min_elements(&self) -> u64 {
        self.min_elements.unwrap_or(MIN_ELEMENTS)
    }
}

impl LowRankSpec {
    /// `energy`, when `ratio` is unset.
    pub fn resolved_energy(&self) -> f64 {
        self.energy.unwrap_or(LOW_RANK_ENERGY)
    }

    pub fn resolved_ops(&self) -> Vec<String> {
        self.ops
            .clone()
            .unwrap_or_else(|| vec!["MatMul".into(), "Gemm".into()])
    }

    pub fn resolved_min_elements(&self) -> u64 {
        self.min_elements.unwrap_or(LOW_RANK_MIN_ELEMENTS)
    }
}

impl QuantizeSpec {
    /// Op types quantized: MatMul, Gemm and Gather, and Conv in static mode.
    pub fn resolved_ops(&self) -> Vec<String> {
        self.ops.clone().unwrap_or_else(|| {
            let mut ops = ops::defaults(true);
            if self.mode == QuantMode::Static && !ops.iter().any(|o| o == "Conv") {
                ops.push("Conv".into());
            }
            ops
        })
    }

    pub fn resolved_min_elements(&self) -> u64 {
        self.min_elements.unwrap_or(MIN_ELEMENTS)
    }

    pub fn resolved_per_channel(&self) -> bool {
        self.per_channel.unwrap_or(PER_CHANNEL)
    }

    /// How int8 weights are ranged. Unset, on a target whose integer kernels may saturate
    /// (`auto`, `x86-avx2`): pair-bounded, exact on every CPU with up to 8 bits; weight-only
    /// weights are dequantized to float, where nothing saturates, so they get all 8.
    /// `reduceRange: true` is ONNX Runtime's 7 bits; `false` is 8 bits everywhere.
    pub fn resolved_weight_range(&self, target: TargetCpu) -> WeightRange {
        match self.reduce_range {
            Some(true) => WeightRange::Seven,
            Some(false) => WeightRange::Eight,
            None if self.mode == QuantMode::WeightOnly || target.integer_matmul_exact() => {
                WeightRange::Eight
            }
            None => WeightRange::PairBounded,
        }
    }

    /// Static mode's activations: uint8 unless the target's kernels prefer int8.
    pub fn resolved_uint8_activations(&self, target: TargetCpu) -> bool {
        self.activation_type
            .map_or(target.uint8_activations(), |t| t == ActivationType::Uint8)
    }

    pub fn resolved_symmetric_activations(&self) -> bool {
        self.symmetric_activations.unwrap_or(false)
    }

    /// 4-bit weights: block size, symmetric blocks, MatMulNBits accuracy level, refinement.
    pub fn resolved_int4(&self) -> (usize, bool, u32, bool) {
        (
            self.block_size.unwrap_or(INT4_BLOCK_SIZE) as usize,
            self.symmetric.unwrap_or(INT4_SYMMETRIC),
            self.accuracy_level.unwrap_or(INT4_ACCURACY_LEVEL),
            self.refine.unwrap_or(INT4_REFINE),
        )
    }

    /// The pass's calibration.
    pub fn resolved_calibration(&self) -> CalibrationPlan {
        CalibrationPlan::of(self.calibration.as_ref())
    }
}

impl SecretKeyRef {
    /// The Secret's key holding the signing key (default `key.pem`).
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(SIGNING_KEY)
    }
}
