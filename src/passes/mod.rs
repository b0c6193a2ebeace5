//! Compression passes: each a typed unit (config in, model out, report back), registered in
//! one place (`Pass`), applied in the spec's order.

mod conv_fold;
mod coverage;
mod fp16;
mod lowrank;
pub mod math;
pub mod nbits;
pub mod opset;
mod optimize;
mod prune;
mod qdq_chain;
mod quantize;
mod static_q;
mod svd;

pub use coverage::{Coverage, ModeCoverage, OpWeights, coverage};
pub use fp16::Fp16Config;
pub use lowrank::{LowRankConfig, RankRule};
pub use nbits::Int4Config;
pub use optimize::OptimizeConfig;
pub use prune::{PruneConfig, PruneTarget};
pub use quantize::QuantizeConfig;
pub use static_q::{ActivationRanges, Activations, Calibrated};

use crate::api::{
    ActivationType, PassSpec, PruneScope, QuantMode, TargetCpu, WeightType, ops, parse_pattern,
};
use crate::onnx::{self, DataType, Model, TensorData, pb};
use std::collections::HashSet;

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
        const DEFAULT_MIN_ELEMENTS: u64 = 1024;
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
                    p.ops.clone().unwrap_or_else(|| ops::defaults(false)),
                    &p.exclude_nodes,
                    p.min_elements.unwrap_or(DEFAULT_MIN_ELEMENTS),
                ),
            }),
            PassSpec::Fp16(f) => Pass::Fp16(Fp16Config {
                min_elements: f.min_elements.unwrap_or(DEFAULT_MIN_ELEMENTS),
                exclude_tensors: f.exclude_tensors.iter().cloned().collect(),
                only_tensors: (!f.tensors.is_empty()).then(|| f.tensors.iter().cloned().collect()),
            }),
            PassSpec::LowRank(l) => Pass::LowRank(LowRankConfig {
                rule: match (l.ratio, l.energy) {
                    (Some(r), _) => RankRule::Ratio(r),
                    (None, e) => RankRule::Energy(e.unwrap_or(0.95)),
                },
                select: Selection::new(
                    l.ops
                        .clone()
                        .unwrap_or_else(|| vec!["MatMul".into(), "Gemm".into()]),
                    &l.exclude_nodes,
                    l.min_elements.unwrap_or(65536),
                ),
            }),
            PassSpec::Optimize(o) => Pass::Optimize(OptimizeConfig { level: o.level }),
            PassSpec::Quantize(q) => Pass::Quantize(QuantizeConfig {
                weight_only: q.mode == QuantMode::WeightOnly,
                static_mode: q.mode == QuantMode::Static,
                int4: (q.weights == WeightType::Int4).then(|| Int4Config {
                    block_size: q.block_size.map_or(32, |b| b as usize),
                    symmetric: q.symmetric.unwrap_or(true),
                    accuracy_level: q.accuracy_level.unwrap_or(0),
                    refine: q.refine.unwrap_or(false),
                }),
                per_channel: q.per_channel.unwrap_or(true),
                per_channel_required: q.per_channel == Some(true),
                // Integer matmuls are exact on every CPU only with 7-bit weights (see
                // QuantizeSpec); the target can say they are exact with 8.
                reduce_range: q
                    .reduce_range
                    .unwrap_or(q.mode != QuantMode::WeightOnly && !target.integer_matmul_exact()),
                select: Selection::new(
                    q.ops
                        .clone()
                        .unwrap_or_else(|| quantize_default_ops(q.mode)),
                    &q.exclude_nodes,
                    q.min_elements.unwrap_or(DEFAULT_MIN_ELEMENTS),
                ),
                activations: Activations {
                    uint8: q
                        .activation_type
                        .map_or(target.uint8_activations(), |t| t == ActivationType::Uint8),
                    symmetric: q.symmetric_activations.unwrap_or(false),
                    reduce_range_default: q.reduce_range.is_none(),
                    calibrated: None,
                    // ONNX Runtime's int8 Convs are no faster than float on x86 without VNNI:
                    // narrow ones stay float there (and where the CPU is unknown).
                    narrow_convs_float: matches!(target, TargetCpu::Auto | TargetCpu::X86Avx2),
                    small_convs: q.mode == QuantMode::Static && q.min_elements.is_none(),
                },
            }),
        }
    }

    /// The activation tensors a static quantization pass needs calibrated ranges for (the
    /// inputs of the ops it quantizes, and the outputs its QDQ form quantizes); `None` for
    /// any other pass.
    pub fn calibration_tensors(&self, model: &Model) -> Option<Vec<String>> {
        match self {
            Pass::Quantize(c) if c.static_mode => Some(static_q::calibration_tensors(c, model)),
            _ => None,
        }
    }

    /// The opset this pass's form needs on `model` when the model imports an older one
    /// (per-channel int8 weights dequantized whole need 13): the pass upgrades the graph
    /// itself ([`opset::upgrade`]); the pipeline checks the upgrade with ONNX Runtime first.
    pub fn opset_needed(&self, model: &Model) -> Option<i64> {
        let Pass::Quantize(c) = self else {
            return None;
        };
        let opset = onnx::default_opset(&model.proto).unwrap_or(0);
        let needs = c.int4.is_none()
            && c.per_channel
            && opset < 13
            && if c.static_mode {
                static_q::needs_weights(c, model)
            } else {
                quantize::dequantized_whole(c, model)
            };
        needs.then_some(13)
    }

    /// Brings `model` to the form this pass quantizes, before calibration runs it (a static
    /// pass: see `static_q::prepare`); other passes leave it as it is.
    pub fn prepare_for_calibration(&self, model: &mut Model) -> Result<()> {
        if let Pass::Quantize(c) = self
            && c.static_mode
        {
            static_q::prepare(c, model)?;
        }
        Ok(())
    }

    /// Hands a static quantization pass its calibrated ranges (other passes ignore them).
    pub fn set_calibration(&mut self, calibrated: std::sync::Arc<Calibrated>) {
        if let Pass::Quantize(c) = self
            && c.static_mode
        {
            c.activations.calibrated = Some(calibrated);
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
            Pass::Quantize(c) => quantize::apply(c, model),
            Pass::Fp16(c) => fp16::apply(c, model),
            Pass::LowRank(c) => lowrank::apply(c, model),
            Pass::Optimize(c) => optimize::apply(c, model),
        }
    }
}

/// The ops a quantize pass touches when its spec names none: static mode adds Conv, whose
/// QDQ form ONNX Runtime runs as `QLinearConv` (faster than float on CNNs); dynamic and
/// weight-only modes leave it float (no `ConvInteger`: slower than float Conv on CPU).
fn quantize_default_ops(mode: QuantMode) -> Vec<String> {
    let mut ops = ops::defaults(true);
    if mode == QuantMode::Static && !ops.iter().any(|o| o == "Conv") {
        ops.push("Conv".into());
    }
    ops
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

/// Which weights a pass touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub ops: Vec<String>,
    pub exclude_nodes: HashSet<String>,
    pub min_elements: u64,
}

impl Selection {
    fn new(ops: Vec<String>, exclude: &[String], min_elements: u64) -> Self {
        Self {
            ops,
            exclude_nodes: exclude.iter().cloned().collect(),
            min_elements,
        }
    }
}

// What a pass did lives with the report it goes into (a leaf module the pipeline and
// publish share); the passes fill it.
pub use crate::report::{PassReport, Skipped, TensorReport};

/// A float32 weight initializer consumed by exactly the selected nodes in their weight slot.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub init: usize,
    pub name: String,
    /// (node index, op type) of every consumer; all are selected ops using it as their weight.
    pub users: Vec<(usize, String)>,
    pub dims: Vec<usize>,
}

impl Weight {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The axis of the input (reduction) dimension, and of the output channels.
    pub fn axes(&self, graph: &pb::GraphProto) -> (usize, usize) {
        let (ni, op) = &self.users[0];
        match op.as_str() {
            "Gemm" if onnx::get_attr_int(&graph.node[*ni], "transB", 0) != 0 => (1, 0),
            "Conv" => (1, 0),
            _ => (0, 1),
        }
    }
}

/// The weight slot of each supported op (from the one table, `api::ops`).
fn weight_slot(op: &str) -> Option<usize> {
    ops::weight_op(op).map(|w| w.weight_input)
}

pub(crate) fn node_label(n: &pb::NodeProto, i: usize) -> String {
    n.name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("#{i}:{}", n.op_type.as_deref().unwrap_or("")))
}

/// Finds the weights a selection applies to, and records why others were skipped.
pub(crate) fn select_weights(
    model: &Model,
    sel: &Selection,
    skipped: &mut Vec<Skipped>,
) -> Vec<Weight> {
    let g = model.graph();
    let consumers = onnx::consumers(g);
    let graph_inputs: HashSet<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut out: Vec<Weight> = Vec::new();
    let mut seen = HashSet::new();
    for (ni, node) in g.node.iter().enumerate() {
        let op = node.op_type.as_deref().unwrap_or("");
        if node
            .domain
            .as_deref()
            .is_some_and(|d| !d.is_empty() && d != "ai.onnx")
            || !sel.ops.iter().any(|o| o == op)
        {
            continue;
        }
        let label = node_label(node, ni);
        let mut skip = |reason: String| {
            skipped.push(Skipped {
                node: label.clone(),
                reason,
            })
        };
        if sel.exclude_nodes.contains(&label) {
            skip("excluded by excludeNodes".into());
            continue;
        }
        let Some(slot) = weight_slot(op) else {
            continue;
        };
        let Some(wname) = node.input.get(slot) else {
            continue;
        };
        let Some(init) = g
            .initializer
            .iter()
            .position(|t| t.name.as_deref() == Some(wname.as_str()))
        else {
            skip(format!("weight `{wname}` is computed, not an initializer"));
            continue;
        };
        if !seen.insert(init) {
            continue; // shared weight already handled via its first user
        }
        let t = &g.initializer[init];
        if graph_inputs.contains(wname.as_str()) {
            skip(format!(
                "weight `{wname}` is also a graph input (overridable at run time)"
            ));
            continue;
        }
        if t.dtype() != DataType::Float {
            skip(format!(
                "weight `{wname}` is {}, not float32",
                t.dtype().name()
            ));
            continue;
        }
        let rank_ok =
            ops::weight_op(op).is_some_and(|w| (w.ranks.0..=w.ranks.1).contains(&t.dims.len()));
        if !rank_ok {
            skip(format!("weight `{wname}` has rank {}", t.dims.len()));
            continue;
        }
        if t.numel() == 0 {
            // Nothing to compress; and a zero dim would leave the others unbounded by the
            // payload (per-channel scales sized from them).
            skip(format!("weight `{wname}` is empty (dims {:?})", t.dims));
            continue;
        }
        if (t.numel() as u64) < sel.min_elements {
            skip(format!(
                "weight `{wname}` has {} elements, below minElements {}",
                t.numel(),
                sel.min_elements
            ));
            continue;
        }
        let uses = consumers.get(wname.as_str()).cloned().unwrap_or_default();
        let all_selected = uses.iter().all(|&(ci, cs)| {
            let c = &g.node[ci];
            let cop = c.op_type.as_deref().unwrap_or("");
            cop == op
                && Some(cs) == weight_slot(cop)
                && !sel.exclude_nodes.contains(&node_label(c, ci))
        });
        if !all_selected {
            skip(format!(
                "weight `{wname}` is also used by other nodes or inputs"
            ));
            continue;
        }
        out.push(Weight {
            init,
            name: wname.clone(),
            users: uses.iter().map(|&(ci, _)| (ci, op.to_string())).collect(),
            dims: t.dims.iter().map(|&d| d as usize).collect(),
        });
    }
    out
}

/// Reads a weight's values, refusing NaN and infinities with the tensor's name.
pub(crate) fn weight_values(model: &Model, w: &Weight) -> Result<Vec<f32>> {
    let values = onnx::tensor_f32_values(&model.graph().initializer[w.init])?;
    if let Some(i) = math::first_non_finite(&values) {
        return Err(non_finite(model, w, values[i], i));
    }
    Ok(values)
}

/// The error for a NaN or infinite weight, naming the tensor, its node and the element.
pub(crate) fn non_finite(model: &Model, w: &Weight, value: f32, index: usize) -> Error {
    let (ni, _) = w.users[0];
    Error::NonFinite {
        tensor: w.name.clone(),
        node: node_label(&model.graph().node[ni], ni),
        what: if value.is_nan() { "NaN" } else { "an infinity" },
        index,
    }
}

pub(crate) fn sparsity(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
    }
}
