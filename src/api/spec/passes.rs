//! Compression passes as written in `spec.passes`.

use super::*;

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
    /// `dynamic` (int8 weights, activations quantized at run time), `static` (int8 weights and
    /// activations with calibrated scales; needs calibration data) or `weightOnly` (int8 or 4-bit
    /// weights dequantized to float). See docs/src/passes.md.
    #[serde(default)]
    pub mode: QuantMode,
    /// Weight element type. `int8` (symmetric, all modes) or `int4` (blocked 4-bit,
    /// `mode: weightOnly` only: MatMul weights become `MatMulNBits`, embedding tables
    /// `GatherBlockQuantized`, both com.microsoft ops ONNX Runtime runs on CPU and GPU).
    #[serde(default)]
    pub weights: WeightType,
    /// One scale per output channel (per row for embedding tables) instead of one per tensor.
    /// Default true; below opset 13 the graph is upgraded when it can be, else the report says why a
    /// weight fell back to per tensor (set true to make that an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<bool>,
    /// true: int8 weights in 7 bits ([-63, 63]); false: full 8 bits, which ONNX Runtime's x86
    /// kernels without VNNI can saturate. Unset: 8 bits where `spec.target.cpu` has VNNI or is
    /// ARM, and for `weightOnly`; otherwise 8 bits bounded in pairs (each scale set so no two
    /// weights one int16 multiply-add pairs exceed 128 together): exact on every CPU, as 7 bits
    /// are, with up to 8 bits of resolution.
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
    /// Op types to quantize (MatMul, Gemm, Conv, Gather). Default MatMul, Gemm and Gather, plus
    /// Conv in static mode (integer Conv without calibrated outputs is slower than float); Gather
    /// means embedding tables, int8 per row or 4-bit blocks.
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
    /// Samples per calibration run, 1 to 1024, whatever `evaluation.batchSize` is. A run holds
    /// every calibrated activation of its batch at once. Default: up to 8, fewer when they
    /// would pass 256 MiB (measured on the first sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("must be between 1 and 1024"))]
    pub batch_size: Option<u32>,
}

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
