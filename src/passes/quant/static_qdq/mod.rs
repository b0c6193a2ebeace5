//! Static int8 quantization: weights and activations int8 with activation ranges calibrated
//! ahead of time, written in the QDQ form ONNX Runtime's graph optimizer fuses into integer
//! kernels (checked on ORT 1.31.1's saved optimized model, CPU provider, S8S8 and U8S8):
//!
//! - `MatMul`: `DQ(Q(A)) x DQ(W_q)`, output float: fused into `MatMulIntegerToFloat`.
//! - `Gemm`: `DQ(Q(A))`, `DQ(W_q)`, bias as `DQ(C_q int32, scale_A·scale_W)`, output float:
//!   fused into `QGemm` (with a float bias and no output Q ORT leaves it float).
//! - `Conv`: `DQ(Q(X))`, `DQ(W_q)`, int32 bias, and `Q -> DQ` on the output: fused into
//!   `QLinearConv` (without an output Q ORT runs float Conv).
//!
//! Weights are symmetric int8 (zero point 0), per output channel or per tensor, in the range
//! `weight_range` gives (7-bit, 8-bit, or 8-bit bounded in pairs). Activation pairs use the
//! calibrated `[lo, hi]` (widened to hold 0), int8 or uint8, asymmetric or symmetric. A tensor quantized once is read dequantized by
//! every quantized consumer (one pair per tensor). Embedding tables (`Gather`) keep the int8
//! per-row form of the other forms ([`super::gather`]).

mod activations;
mod select;
mod weights;

use super::int8::{self, Opset13, unsupported};
use super::{QuantForm, QuantizeConfig, weight_only};
use crate::onnx::{self, Model, pb};
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::Selection;
use crate::passes::{PassReport, Result, Skipped, conv_fold, optimize, qdq_chain};
use activations::Act;
use select::{conv_users, static_weights};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Calibrated `[lo, hi]` of each activation tensor, by name.
pub type ActivationRanges = BTreeMap<String, (f32, f32)>;

/// What calibration produced, for one static pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Calibrated {
    pub ranges: ActivationRanges,
    /// How they were obtained (method, samples, source), for the pass report.
    pub summary: String,
}

/// The activation side of a static pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Activations {
    /// uint8 activations (U8S8) instead of int8 (S8S8).
    pub uint8: bool,
    /// Zero point at the middle of the type (range `[-max|x|, max|x|]`).
    pub symmetric: bool,
    /// Filled by the calibration stage before the pass runs.
    pub calibrated: Option<Arc<Calibrated>>,
    /// Keep Convs whose output channels are not a multiple of 16 in float (x86 without VNNI,
    /// or an unknown CPU): see `select::narrow_conv`.
    pub narrow_convs_float: bool,
    /// Quantize Convs whatever their weights' size (`minElements` not set): in a static
    /// chain the activations, not the weights, are what costs (a stem Conv of 432 weights
    /// on a 160x160 map left float kept its activation ops float too).
    pub small_convs: bool,
}

/// The static pass's view of the graph while it writes: what it reads, and what it has
/// written so far (the quantized activations, the rewrite).
struct Qdq<'g> {
    model: &'g Model,
    g: &'g pb::GraphProto,
    a: &'g Activations,
    ranges: &'g ActivationRanges,
    consumers: HashMap<&'g str, Vec<(usize, usize)>>,
    graph_outputs: HashSet<&'g str>,
    rw: Rewrite,
    /// The activations quantized, by name.
    acts: HashMap<String, Act>,
    /// Gemms whose beta went into their int32 bias.
    set_beta_one: Vec<usize>,
    /// Float biases by initializer, and how many of their readers now read the int32 one.
    bias_rewired: HashMap<usize, usize>,
}

impl<'g> Qdq<'g> {
    fn new(model: &'g Model, a: &'g Activations, ranges: &'g ActivationRanges) -> Self {
        let g = model.graph();
        Self {
            model,
            g,
            a,
            ranges,
            consumers: onnx::consumers(g),
            graph_outputs: g.output.iter().filter_map(|v| v.name.as_deref()).collect(),
            rw: Rewrite::new(g),
            acts: HashMap::new(),
            set_beta_one: Vec::new(),
            bias_rewired: HashMap::new(),
        }
    }

    /// The Convs whose output the region quantized.
    fn quantized_outputs(&self, chain: &qdq_chain::Chain) -> HashSet<usize> {
        chain
            .tensors
            .iter()
            .filter(|t| t.slot == 0 && self.acts.contains_key(&t.name))
            .filter_map(|t| t.producer)
            .collect()
    }
}

pub(super) fn apply(
    cfg: &QuantizeConfig,
    a: &Activations,
    model: &mut Model,
) -> Result<PassReport> {
    let cal = calibrated(a)?;
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    if opset < 10 {
        return Err(unsupported(format!(
            "the model imports opset {opset}; static quantization needs opset >= 10 \
             (QuantizeLinear, DequantizeLinear): re-export the model"
        )));
    }
    // First, as calibration did (the opset upgrade below renames nothing it reads).
    let prepared = prepare(a, &cfg.select, model)?;
    // Per-channel DequantizeLinear needs opset 13: the graph is upgraded to it. Only where
    // that cannot be done does perChannel left to its default fall back to one scale per
    // tensor, and says why.
    let opset13 = int8::upgrade_to_13(
        cfg,
        model,
        |m| needs_weights(a, &cfg.select, m),
        |e| format!("per-channel scales need opset >= 13 and {e}; or set perChannel: false"),
    )?;
    // Embedding rows keep one scale each: the lookup form needs no opset 13.
    let rows_per_channel = cfg.per_channel;
    let per_tensor;
    let cfg = if let Some(Opset13::Fallback(_)) = opset13 {
        per_tensor = QuantizeConfig {
            per_channel: false,
            ..cfg.clone()
        };
        &per_tensor
    } else {
        cfg
    };
    let mut report = PassReport {
        pass: "quantize".into(),
        description: describe(cfg, a, &cal),
        ..Default::default()
    };
    if let Some(what) = prepared {
        report.description.push_str(&format!("; {what}"));
    }
    match opset13 {
        Some(Opset13::Upgraded(up)) => report.description.push_str(&format!(
            "; {} for per-channel DequantizeLinear",
            up.describe()
        )),
        Some(Opset13::Fallback(e)) => report.description.push_str(&format!(
            "; per-tensor weights: per-channel DequantizeLinear needs opset >= 13, and {e}"
        )),
        None => {}
    }
    embedding_tables(cfg, rows_per_channel, model, &mut report)?;
    let weights = static_weights(a, &cfg.select, model, &mut report.skipped);
    let mut q = Qdq::new(model, a, &cal.ranges);
    // The integer region around the Convs first: its tensors are quantized at their
    // producers, and the Convs below read them.
    let chain = qdq_chain::plan(q.g, &conv_users(&weights), a.symmetric);
    q.quantize_region(&chain)?;
    let outputs = q.quantized_outputs(&chain);
    for w in &weights {
        if let Some(reason) = q.unexpressible(w, &outputs) {
            let (ni, _) = w.users[0];
            report.skipped.push(Skipped {
                node: crate::passes::weights::node_label(&q.g.node[ni], ni),
                reason,
            });
            continue;
        }
        q.quantize_weight(cfg, w, &mut report)?;
    }
    q.drop_unread_biases();
    report
        .description
        .push_str(&format!("; {} activation tensors quantized", q.acts.len()));
    if !chain.ops.is_empty() {
        let ops: Vec<String> = chain
            .ops
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        report
            .description
            .push_str(&format!("; kept integer between Convs: {}", ops.join(", ")));
    }
    let Qdq {
        rw, set_beta_one, ..
    } = q;
    let graph = model.graph_mut();
    set_beta_to_one(graph, &set_beta_one);
    rw.apply(graph);
    Ok(report)
}

/// The calibrated ranges, or what to do to get them.
fn calibrated(a: &Activations) -> Result<Arc<Calibrated>> {
    a.calibrated.clone().ok_or_else(|| {
        unsupported(
            "mode: static needs calibrated activation ranges: `kompress run` calibrates on \
             spec.calibration.dataset (or rows set aside from the dataset); `kompress compress` \
             needs --calibration DATA.npz"
                .into(),
        )
    })
}

/// Embedding tables first, in the row form every int8 form writes (the weight-only form's,
/// on the tables only), at one scale per row whatever the opset.
fn embedding_tables(
    cfg: &QuantizeConfig,
    rows_per_channel: bool,
    model: &mut Model,
    report: &mut PassReport,
) -> Result<()> {
    let gather: Vec<String> = cfg
        .select
        .ops
        .iter()
        .filter(|o| *o == "Gather")
        .cloned()
        .collect();
    if gather.is_empty() {
        return Ok(());
    }
    let tables = QuantizeConfig {
        form: QuantForm::WeightOnly,
        select: Selection {
            ops: gather,
            ..cfg.select.clone()
        },
        per_channel: rows_per_channel,
        ..cfg.clone()
    };
    let r = weight_only::apply(&tables, model)?;
    if !r.tensors.is_empty() {
        report.description.push_str(super::gather::INT8_ROWS);
    }
    report.tensors.extend(r.tensors);
    report.skipped.extend(r.skipped);
    Ok(())
}

/// Gemms whose beta went into the int32 bias get beta 1.
fn set_beta_to_one(graph: &mut pb::GraphProto, nodes: &[usize]) {
    for &ni in nodes {
        let n = &mut graph.node[ni];
        n.attribute.retain(|a| a.name.as_deref() != Some("beta"));
        n.attribute.push(pb::AttributeProto {
            name: Some("beta".into()),
            f: Some(1.0),
            r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
            ..Default::default()
        });
    }
}

/// The activations the pass will quantize on `model`: each selected node's data input, and
/// the integer region around its Convs ([`qdq_chain`]), in graph order, without repeats.
pub(super) fn calibration_tensors(
    a: &Activations,
    select: &Selection,
    model: &Model,
) -> Vec<String> {
    // As the pass will see it: affine ops after Convs folded (the names that remain are the
    // original graph's).
    let mut model = model.clone();
    conv_fold::fold(model.graph_mut());
    let model = &model;
    let g = model.graph();
    let inits: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut skipped = Vec::new();
    let weights = static_weights(a, select, model, &mut skipped);
    let chain = qdq_chain::plan(g, &conv_users(&weights), a.symmetric);
    let inputs = weights
        .iter()
        .flat_map(|w| w.users.iter().map(|(ni, _)| g.node[*ni].input[0].as_str()));
    for t in inputs.chain(chain.range_tensors()) {
        if !t.is_empty() && !inits.contains(t) && seen.insert(t.to_string()) {
            out.push(t.to_string());
        }
    }
    out
}

/// The graph as the pass quantizes it, made the same way before calibration (so tensor
/// names match): with Convs to quantize, ONNX Runtime's basic optimisation first (portable
/// ONNX: no-op Casts gone, Transposes cancelled, Conv+BatchNorm/Add/Mul fused, as ORT does
/// at load for a float model), then the per-channel ops left after Convs folded into them
/// ([`conv_fold`]): without this they would run in float between integer convolutions.
/// Returns what it did, for the report.
pub(super) fn prepare(
    a: &Activations,
    select: &Selection,
    model: &mut Model,
) -> Result<Option<String>> {
    let mut skipped = Vec::new();
    let convs = static_weights(a, select, model, &mut skipped)
        .iter()
        .any(|w| w.users.iter().any(|(_, op)| op == "Conv"));
    if !convs {
        return Ok(None);
    }
    let before = model.graph().node.len();
    let opt = optimize::OptimizeConfig {
        level: crate::api::OptimizeLevel::Basic,
    };
    // ONNX Runtime's optimiser copies an outer-scope weight into every `If` branch that reads
    // it (Silero VAD's LSTM: 528 kB twice), which would undo what quantizing saves: its graph
    // is kept only when it holds no more weight bytes than the original.
    let mut optimized = model.clone();
    optimize::apply(&opt, &mut optimized)?;
    let ort = if weight_bytes(optimized.graph()) <= weight_bytes(model.graph()) {
        *model = optimized;
        "ONNX Runtime basic optimisation and"
    } else {
        "no ONNX Runtime optimisation (it copied outer-scope weights into subgraphs), and"
    };
    let folded = conv_fold::fold(model.graph_mut());
    Ok(Some(format!(
        "graph prepared for integer convolutions: {ort} {folded} per-channel ops after Convs (BatchNormalization, Add/Sub/Mul/Div by constants) folded into them ({before} -> {} nodes)",
        model.graph().node.len()
    )))
}

/// Bytes of every initializer and Constant value in a graph and its subgraphs.
fn weight_bytes(g: &pb::GraphProto) -> usize {
    let tensor = |t: &pb::TensorProto| {
        t.raw_data.as_ref().map_or(0, |r| r.len())
            + 4 * (t.float_data.len() + t.int32_data.len())
            + 8 * (t.int64_data.len() + t.double_data.len() + t.uint64_data.len())
    };
    let inits: usize = g.initializer.iter().map(tensor).sum();
    let nested: usize = g
        .node
        .iter()
        .flat_map(|n| n.attribute.iter())
        .map(|a| {
            a.t.as_ref().map_or(0, tensor)
                + a.g.as_ref().map_or(0, weight_bytes)
                + a.graphs.iter().map(weight_bytes).sum::<usize>()
        })
        .sum();
    inits + nested
}

/// Whether the pass has a weight to quantize besides embedding tables (which need no opset
/// 13), so an upgrade is worth doing.
pub(super) fn needs_weights(a: &Activations, select: &Selection, model: &Model) -> bool {
    !static_weights(a, select, model, &mut Vec::new()).is_empty()
}

fn describe(cfg: &QuantizeConfig, a: &Activations, cal: &Calibrated) -> String {
    let bits = int8::weight_bits(cfg.weight_range, cfg.weight_range_default);
    format!(
        "int8 static (QDQ), {} ({} activations, {}), {} weights, {bits}; calibration: {}",
        if a.uint8 { "U8S8" } else { "S8S8" },
        if a.uint8 { "uint8" } else { "int8" },
        if a.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        int8::granularity(cfg),
        cal.summary
    )
}
