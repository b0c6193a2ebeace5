//! Compression passes: each a typed unit (config in, model out, report back), registered in
//! one place (`Pass`), applied in the spec's order.

mod conv_fold;
mod coverage;
mod fp16;
mod lowrank;
pub mod math;
pub mod opset;
mod optimize;
mod prune;
mod qdq_chain;
mod quant;
mod rewrite;
mod svd;
mod weights;

pub use coverage::{Coverage, ModeCoverage, OpWeights, coverage};
pub use fp16::Fp16Config;
pub use lowrank::{LowRankConfig, RankRule};
pub use optimize::OptimizeConfig;
pub use prune::{PruneConfig, PruneTarget};
pub use quant::{ActivationRanges, Activations, Calibrated, Int4Config, QuantForm, QuantizeConfig};
pub use weights::Selection;

use crate::api::{
    PassSpec, PruneScope, QuantMode, QuantizeSpec, TargetCpu, WeightType, parse_pattern,
};
use crate::onnx::{self, Model};

/// Errors a pass can hit on a given model (all permanent: the same model fails the same way).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "weight `{tensor}` (used by node `{node}`) contains {what} at element {index}: fix or \
         retrain the model, or exclude the node (excludeNodes)"
    )]
    NonFinite {
        tensor: String,
        node: String,
        what: &'static str,
        index: usize,
    },
    #[error("pass `{pass}`: {what}")]
    Unsupported { pass: &'static str, what: String },
    #[error(transparent)]
    Onnx(#[from] onnx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The registry: one variant per pass, each with its own config type.
#[derive(Debug, Clone, PartialEq)]
pub enum Pass {
    Prune(PruneConfig),
    Quantize(QuantizeConfig),
    Fp16(Fp16Config),
    LowRank(LowRankConfig),
    Optimize(OptimizeConfig),
}

impl Pass {
    /// Builds a pass from a spec entry for a model served on an unknown CPU.
    pub fn from_spec(spec: &PassSpec) -> Self {
        Self::for_target(spec, TargetCpu::Auto)
    }

    /// Builds a pass from a spec entry for a model served on `target`. Unvalidated values
    /// cannot panic here: an N:M pattern that does not parse is refused by `validate`, and is
    /// treated as no pruning here.
    pub fn for_target(spec: &PassSpec, target: TargetCpu) -> Self {
        match spec {
            PassSpec::Prune(p) => Pass::Prune(PruneConfig {
                target: match (p.pattern.as_deref().map(parse_pattern), p.sparsity) {
                    (Some(Some((n, m))), _) => PruneTarget::NM { n, m },
                    (_, s) => PruneTarget::Sparsity {
                        sparsity: s.unwrap_or(0.0),
                        global: p.scope == PruneScope::Global,
                    },
                },
                select: Selection::new(
                    p.resolved_ops(),
                    &p.exclude_nodes,
                    p.resolved_min_elements(),
                ),
            }),
            PassSpec::Fp16(f) => Pass::Fp16(Fp16Config {
                min_elements: f.resolved_min_elements(),
                exclude_tensors: f.exclude_tensors.iter().cloned().collect(),
                only_tensors: (!f.tensors.is_empty()).then(|| f.tensors.iter().cloned().collect()),
            }),
            PassSpec::LowRank(l) => Pass::LowRank(LowRankConfig {
                rule: match l.ratio {
                    Some(r) => RankRule::Ratio(r),
                    None => RankRule::Energy(l.resolved_energy()),
                },
                select: Selection::new(
                    l.resolved_ops(),
                    &l.exclude_nodes,
                    l.resolved_min_elements(),
                ),
            }),
            PassSpec::Optimize(o) => Pass::Optimize(OptimizeConfig { level: o.level }),
            PassSpec::Quantize(q) => Pass::Quantize(quantize_config(q, target)),
        }
    }

    /// The activation tensors a static quantization pass needs calibrated ranges for (the
    /// inputs of the ops it quantizes, and the outputs its QDQ form quantizes); `None` for
    /// any other pass.
    pub fn calibration_tensors(&self, model: &Model) -> Option<Vec<String>> {
        match self {
            Pass::Quantize(c) => quant::calibration_tensors(c, model),
            _ => None,
        }
    }

    /// The opset this pass's form needs on `model` when the model imports an older one
    /// (per-channel int8 weights dequantized whole need 13): the pass upgrades the graph
    /// itself ([`opset::upgrade`]); the pipeline checks the upgrade with ONNX Runtime first.
    pub fn opset_needed(&self, model: &Model) -> Option<i64> {
        match self {
            Pass::Quantize(c) => quant::opset_needed(c, model),
            _ => None,
        }
    }

    /// Brings `model` to the form this pass quantizes, before calibration runs it (the
    /// static form: see `quant::static_qdq::prepare`); other passes leave it as it is.
    pub fn prepare_for_calibration(&self, model: &mut Model) -> Result<()> {
        match self {
            Pass::Quantize(c) => quant::prepare_for_calibration(c, model),
            _ => Ok(()),
        }
    }

    /// Hands a static quantization pass its calibrated ranges (other passes ignore them).
    pub fn set_calibration(&mut self, calibrated: std::sync::Arc<Calibrated>) {
        if let Pass::Quantize(c) = self {
            quant::set_calibration(c, calibrated);
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pass::Prune(_) => "prune",
            Pass::Quantize(_) => "quantize",
            Pass::Fp16(_) => "fp16",
            Pass::LowRank(_) => "lowRank",
            Pass::Optimize(_) => "optimize",
        }
    }

    pub fn apply(&self, model: &mut Model) -> Result<PassReport> {
        match self {
            Pass::Prune(c) => prune::apply(c, model),
            Pass::Quantize(c) => quant::apply(c, model),
            Pass::Fp16(c) => fp16::apply(c, model),
            Pass::LowRank(c) => lowrank::apply(c, model),
            Pass::Optimize(c) => optimize::apply(c, model),
        }
    }
}

/// The ops a quantize pass touches when its spec names none: static mode adds Conv, whose
/// QDQ form ONNX Runtime runs as `QLinearConv` (faster than float on CNNs); dynamic and
/// weight-only modes leave it float (no `ConvInteger`: slower than float Conv on CPU).
/// A quantize entry's config for `target`, its defaults resolved by `api::defaults`.
fn quantize_config(q: &QuantizeSpec, target: TargetCpu) -> QuantizeConfig {
    QuantizeConfig {
        form: match (q.weights, q.mode) {
            (WeightType::Int4, _) => {
                let (block_size, symmetric, accuracy_level, refine) = q.resolved_int4();
                QuantForm::Int4(Int4Config {
                    block_size,
                    symmetric,
                    accuracy_level,
                    refine,
                })
            }
            (WeightType::Int8, QuantMode::Dynamic) => QuantForm::Dynamic,
            (WeightType::Int8, QuantMode::WeightOnly) => QuantForm::WeightOnly,
            (WeightType::Int8, QuantMode::Static) => QuantForm::Static(Activations {
                uint8: q.resolved_uint8_activations(target),
                symmetric: q.resolved_symmetric_activations(),
                calibrated: None,
                // ONNX Runtime's int8 Convs are no faster than float on x86 without
                // VNNI: narrow ones stay float there (and where the CPU is unknown).
                narrow_convs_float: matches!(target, TargetCpu::Auto | TargetCpu::X86Avx2),
                small_convs: q.min_elements.is_none(),
            }),
        },
        per_channel: q.resolved_per_channel(),
        per_channel_required: q.per_channel == Some(true),
        weight_range: q.resolved_weight_range(target),
        weight_range_default: q.reduce_range.is_none(),
        select: Selection::new(
            q.resolved_ops(),
            &q.exclude_nodes,
            q.resolved_min_elements(),
        ),
    }
}

/// The model as every pass sees it: weights that exporters keep in `Constant` nodes (or
/// behind an Identity of one) folded into initializers, losslessly; with how many. IR < 4
/// would also need them listed as graph inputs, so those models are left as they are.
pub fn with_constants_folded(original: &Model) -> (Model, usize) {
    let mut model = original.clone(); // cheap: payloads are shared `Bytes`
    let folded = if model.proto.ir_version.unwrap_or(0) >= 4 {
        onnx::fold_constants(model.graph_mut()).constants
    } else {
        0
    };
    (model, folded)
}

// What a pass did lives with the report it goes into (a leaf module the pipeline and
// publish share); the passes fill it.
pub use crate::report::{PassReport, Skipped, TensorReport};

pub(crate) fn sparsity(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
    }
}
