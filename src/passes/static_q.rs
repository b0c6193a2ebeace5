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
//! Weights are symmetric int8 (zero point 0), per output channel or per tensor, 7-bit when
//! `reduce_range`. Activation pairs use the calibrated `[lo, hi]` (widened to hold 0),
//! int8 or uint8, asymmetric or symmetric. A tensor quantized once is read dequantized by
//! every quantized consumer (one pair per tensor). Embedding tables (`Gather`) keep the int8
//! per-row form of the other modes.

use super::quantize::QuantizeConfig;
use super::{
    PassReport, Result, Selection, Skipped, TensorReport, conv_fold, math, node_label, qdq_chain,
};
use super::{select_weights, weight_values};
use crate::onnx::{
    self, DataType, Model, Namer, TensorData, attr_int, f32_tensor, int8_tensor, pb,
};
use bytes::Bytes;
use math::ChannelLayout;
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
    /// `reduce_range` was chosen from the target, not set in the spec (for the report).
    pub reduce_range_default: bool,
    /// Filled by the calibration stage before the pass runs.
    pub calibrated: Option<Arc<Calibrated>>,
    /// Keep Convs whose output channels are not a multiple of 16 in float (x86 without VNNI,
    /// or an unknown CPU): see [`narrow_conv`].
    pub narrow_convs_float: bool,
    /// Quantize Convs whatever their weights' size (`minElements` not set): in a static
    /// chain the activations, not the weights, are what costs (a stem Conv of 432 weights
    /// on a 160x160 map left float kept its activation ops float too).
    pub small_convs: bool,
}

/// Scale and zero point of an activation range (ONNX Runtime's rule): asymmetric widens
/// `[lo, hi]` to hold 0 and maps it onto the whole type; symmetric maps `[-m, m]`,
/// `m = max(|lo|, |hi|)`, onto [-127, 127] (int8, zero point 0) or [0, 255] (uint8, zero
/// point 128). An empty range gets scale 1.
pub fn activation_qparams(lo: f32, hi: f32, uint8: bool, symmetric: bool) -> (f32, i32) {
    let (qmin, qmax) = match (uint8, symmetric) {
        (true, _) => (0i32, 255i32),
        (false, true) => (-127, 127),
        (false, false) => (-128, 127),
    };
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if symmetric {
        let m = lo.abs().max(hi.abs());
        let scale = 2.0 * m / (qmax - qmin) as f32;
        let zp = if uint8 { 128 } else { 0 };
        return if scale > 0.0 && scale.is_normal() {
            (scale, zp)
        } else {
            (1.0, zp)
        };
    }
    let scale = (hi - lo) / (qmax - qmin) as f32;
    if !(scale > 0.0 && scale.is_normal()) {
        return (1.0, 0);
    }
    let zp = (qmin as f32 - lo / scale).round() as i32;
    (scale, zp.clamp(qmin, qmax))
}

fn without_gather(sel: &Selection) -> Selection {
    Selection {
        ops: sel.ops.iter().filter(|o| *o != "Gather").cloned().collect(),
        ..sel.clone()
    }
}

/// Output channels per pass of ONNX Runtime 1.31's AVX2 int8 convolution kernel
/// (`MlasConvSymDispatchAvx2`: 16 channels a pass, the rest at half width).
const AVX2_CONV_CHANNELS: usize = 16;

/// The largest narrow Conv weight kept float (64 Ki values: at most 192 KiB more than int8).
const NARROW_CONV_MAX_WEIGHTS: usize = 65536;

/// Why a Conv stays float on x86 without VNNI: its output channels are not a multiple of 16.
/// ONNX Runtime's AVX2 int8 kernel (u8 x s8 `vpmaddubsw` + `vpmaddwd`, on AMD Zen one
/// multiply pipe) is at best even with its float NCHWc kernel (two FMA pipes, 8-channel
/// blocks), and the last partial block of 16 channels runs at half width: measured on a
/// 2-core AMD EPYC (AVX2, no VNNI), 1 thread, PP-OCRv4 det's 96 -> 24 3x3 Convs ran 1.33-1.39x
/// their float time and YOLOv8n's 64 -> 18 class Convs 1.4x, where Convs with 16, 32, 64, ...
/// output channels ran 0.96-1.19x. A float Conv between integer ones costs a DQ before and
/// a Q after it, which the narrow output keeps small. Only small weights (at most
/// [`NARROW_CONV_MAX_WEIGHTS`] values) stay float, so the size given up stays small: in
/// these models a narrow Conv with many weights has a long reduction over a small map
/// (PP-OCRv4 rec's 960 -> 60 1x3 Conv on a 1x40 map), where the time at stake is small too.
fn narrow_conv(w: &super::Weight) -> Option<String> {
    let conv = w.users.iter().any(|(_, op)| op == "Conv");
    let cout = *w.dims.first()?;
    (conv && cout % AVX2_CONV_CHANNELS != 0 && w.numel() <= NARROW_CONV_MAX_WEIGHTS).then(|| {
        format!(
            "Conv with {cout} output channels (not a multiple of {AVX2_CONV_CHANNELS}): ONNX              Runtime's int8 kernel on x86 without VNNI runs it slower than float; kept float              (spec.target.cpu auto or x86-avx2; x86-vnni quantizes it)"
        )
    })
}

/// The weights the static pass quantizes: the selection, less Convs that stay float on the
/// target ([`narrow_conv`]), each said in `skipped`.
fn static_weights(
    cfg: &QuantizeConfig,
    model: &Model,
    skipped: &mut Vec<Skipped>,
) -> Vec<super::Weight> {
    let g = model.graph();
    let sel = without_gather(&cfg.select);
    let mut weights = if cfg.activations.small_convs {
        let all = Selection {
            min_elements: 0,
            ..sel.clone()
        };
        let mut weights = select_weights(model, &all, skipped);
        weights.retain(|w| {
            let convs = w.users.iter().all(|(_, op)| op == "Conv");
            let keep = convs || w.numel() as u64 >= sel.min_elements;
            if !keep {
                let (ni, _) = w.users[0];
                skipped.push(Skipped {
                    node: node_label(&g.node[ni], ni),
                    reason: format!(
                        "weight `{}` has {} elements, below minElements {}",
                        w.name,
                        w.numel(),
                        sel.min_elements
                    ),
                });
            }
            keep
        });
        weights
    } else {
        select_weights(model, &sel, skipped)
    };
    if cfg.activations.narrow_convs_float {
        let mut narrow: Vec<(usize, String)> = weights
            .iter()
            .enumerate()
            .filter_map(|(i, w)| narrow_conv(w).map(|r| (i, r)))
            .collect();
        // ONNX Runtime fuses `DQ -> Conv -> Q` into QLinearConv whatever the weight's type:
        // a narrow Conv whose output (or the Relu/Clip after it) the plan quantizes anyway
        // runs integer, so it is quantized (its weights stored int8) instead.
        for _ in 0..4 {
            let float: HashSet<usize> = narrow.iter().map(|(i, _)| *i).collect();
            let kept: Vec<super::Weight> = weights
                .iter()
                .enumerate()
                .filter(|(i, _)| !float.contains(i))
                .map(|(_, w)| w.clone())
                .collect();
            let chain = qdq_chain::plan(g, &conv_users(&kept), cfg.activations.symmetric);
            let quantized: HashSet<&str> = chain
                .tensors
                .iter()
                .map(|t| t.source.as_str())
                .chain(
                    kept.iter()
                        .flat_map(|w| w.users.iter().map(|(ni, _)| g.node[*ni].input[0].as_str())),
                )
                .collect();
            let consumers = onnx::consumers(g);
            let fused = |w: &super::Weight| {
                w.users.iter().any(|(ni, _)| {
                    let y = g.node[*ni].output[0].as_str();
                    quantized.contains(y)
                        || consumers.get(y).is_some_and(|c| {
                            c.iter().any(|(ri, _)| {
                                matches!(g.node[*ri].op_type.as_deref(), Some("Relu" | "Clip"))
                                    && quantized.contains(g.node[*ri].output[0].as_str())
                            })
                        })
                })
            };
            let before = narrow.len();
            narrow.retain(|(i, _)| !fused(&weights[*i]));
            if narrow.len() == before {
                break;
            }
        }
        let float: HashMap<usize, String> = narrow.into_iter().collect();
        let mut i = 0;
        weights.retain(|w| {
            let reason = float.get(&i);
            i += 1;
            match reason {
                Some(reason) => {
                    for (ni, _) in &w.users {
                        skipped.push(Skipped {
                            node: node_label(&g.node[*ni], *ni),
                            reason: reason.clone(),
                        });
                    }
                    false
                }
                None => true,
            }
        });
    }
    weights
}

/// The activations the pass will quantize on `model`: each selected node's data input, and
/// the integer region around its Convs ([`qdq_chain`]), in graph order, without repeats.
pub fn calibration_tensors(cfg: &QuantizeConfig, model: &Model) -> Vec<String> {
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
    let weights = static_weights(cfg, model, &mut skipped);
    let chain = qdq_chain::plan(g, &conv_users(&weights), cfg.activations.symmetric);
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

/// The Conv nodes among the users of `weights`.
fn conv_users(weights: &[super::Weight]) -> HashSet<usize> {
    weights
        .iter()
        .flat_map(|w| w.users.iter())
        .filter(|(_, op)| op == "Conv")
        .map(|(ni, _)| *ni)
        .collect()
}

/// A scalar constant quantized over its own value (exactly: it is an end of its range) and
/// dequantized in front of the graph; returns the name its reader reads.
fn constant_pair(
    g: &pb::GraphProto,
    name: &str,
    a: &Activations,
    namer: &mut Namer,
    new_inits: &mut Vec<pb::TensorProto>,
    before: &mut BTreeMap<usize, Vec<pb::NodeProto>>,
) -> Result<String> {
    let t = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .expect("the chain plans initializers only");
    let v = onnx::tensor_f32_values(t)?[0];
    let (scale, zp) = activation_qparams(v.min(0.0), v.max(0.0), a.uint8, a.symmetric);
    let q = ((v / scale).round() as i32 + zp).clamp(
        if a.uint8 { 0 } else { -128 },
        if a.uint8 { 255 } else { 127 },
    );
    let (qn, sn, zn, dn) = (
        namer.fresh(&format!("{name}_quantized")),
        namer.fresh(&format!("{name}_scale")),
        namer.fresh(&format!("{name}_zero_point")),
        namer.fresh(&format!("{name}_dequantized")),
    );
    let dims = t.dims.clone();
    new_inits.push(if a.uint8 {
        raw_tensor(&qn, &dims, DataType::Uint8, vec![q as u8])
    } else {
        int8_tensor(&qn, &dims, vec![q as i8])
    });
    new_inits.push(f32_tensor(&sn, &[], &[scale]));
    new_inits.push(zero_point(&zn, zp, a.uint8));
    before.entry(0).or_default().push(onnx::node(
        "DequantizeLinear",
        namer.fresh(&format!("{name}_DequantizeLinear")),
        vec![qn, sn, zn],
        vec![dn.clone()],
        vec![],
    ));
    Ok(dn)
}

/// The graph as the pass quantizes it, made the same way before calibration (so tensor
/// names match): with Convs to quantize, ONNX Runtime's basic optimisation first (portable
/// ONNX: no-op Casts gone, Transposes cancelled, Conv+BatchNorm/Add/Mul fused, as ORT does
/// at load for a float model), then the per-channel ops left after Convs folded into them
/// ([`conv_fold`]): without this they would run in float between integer convolutions.
/// Returns what it did, for the report.
pub(super) fn prepare(cfg: &QuantizeConfig, model: &mut Model) -> Result<Option<String>> {
    let mut skipped = Vec::new();
    let convs = static_weights(cfg, model, &mut skipped)
        .iter()
        .any(|w| w.users.iter().any(|(_, op)| op == "Conv"));
    if !convs {
        return Ok(None);
    }
    let before = model.graph().node.len();
    let opt = super::optimize::OptimizeConfig {
        level: crate::api::OptimizeLevel::Basic,
    };
    // ONNX Runtime's optimiser copies an outer-scope weight into every `If` branch that reads
    // it (Silero VAD's LSTM: 528 kB twice), which would undo what quantizing saves: its graph
    // is kept only when it holds no more weight bytes than the original.
    let mut optimized = model.clone();
    super::optimize::apply(&opt, &mut optimized)?;
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
pub(super) fn needs_weights(cfg: &QuantizeConfig, model: &Model) -> bool {
    !static_weights(cfg, model, &mut Vec::new()).is_empty()
}

fn raw_tensor(name: &str, dims: &[i64], dtype: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(dtype.to_i32()),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

fn int32_tensor(name: &str, dims: &[i64], values: &[i32]) -> pb::TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, DataType::Int32, raw)
}

/// A scalar zero point of the activation type.
fn zero_point(name: &str, zp: i32, uint8: bool) -> pb::TensorProto {
    if uint8 {
        raw_tensor(name, &[], DataType::Uint8, vec![zp as u8])
    } else {
        int8_tensor(name, &[], vec![zp as i8])
    }
}

/// One quantized activation: its scale, the name quantized consumers read, and the int8
/// tensor and zero point its dequantizer reads.
#[derive(Clone)]
struct Act {
    scale: f32,
    read: String,
    q: String,
    zero_point: String,
}

impl Act {
    /// From the `Q -> DQ` pair that quantizes it.
    fn of(scale: f32, read: String, pair: &[pb::NodeProto]) -> Act {
        let dq = &pair[1].input;
        Act {
            scale,
            read,
            q: dq[0].clone(),
            zero_point: dq[2].clone(),
        }
    }
}

pub(super) fn apply(cfg: &QuantizeConfig, model: &mut Model) -> Result<PassReport> {
    let unsupported = |what: String| super::Error::Unsupported {
        pass: "quantize",
        what,
    };
    let a = &cfg.activations;
    let Some(cal) = a.calibrated.clone() else {
        return Err(unsupported(
            "mode: static needs calibrated activation ranges: `kompress run` calibrates on \
             spec.calibration.dataset (or rows set aside from the dataset); `kompress compress` \
             needs --calibration DATA.npz"
                .into(),
        ));
    };
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    if opset < 10 {
        return Err(unsupported(format!(
            "the model imports opset {opset}; static quantization needs opset >= 10 \
             (QuantizeLinear, DequantizeLinear): re-export the model"
        )));
    }
    // First, as calibration did (the opset upgrade below renames nothing it reads).
    let prepared = prepare(cfg, model)?;
    // Per-channel DequantizeLinear needs opset 13: the graph is upgraded to it (losslessly;
    // the pipeline checks the outputs with ONNX Runtime). Only where that cannot be done does
    // perChannel left to its default fall back to one scale per tensor, and says why.
    let mut upgraded = None;
    let mut fallback = None;
    if cfg.per_channel && opset < 13 && needs_weights(cfg, model) {
        match super::opset::upgrade(model, 13) {
            Ok(up) => upgraded = Some(up),
            Err(e) if cfg.per_channel_required => {
                return Err(unsupported(format!(
                    "per-channel scales need opset >= 13 and {e}; or set perChannel: false"
                )));
            }
            Err(e) => fallback = Some(e),
        }
    }
    // Embedding rows keep one scale each: the lookup form needs no opset 13.
    let rows_per_channel = cfg.per_channel;
    let per_tensor;
    let cfg = if fallback.is_some() {
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
        description: describe(cfg, &cal),
        ..Default::default()
    };
    if let Some(what) = prepared {
        report.description.push_str(&format!("; {what}"));
    }
    if let Some(up) = &upgraded {
        report.description.push_str(&format!(
            "; {} for per-channel DequantizeLinear",
            up.describe()
        ));
    }
    if let Some(e) = fallback {
        report.description.push_str(&format!(
            "; per-tensor weights: per-channel DequantizeLinear needs opset >= 13, and {e}"
        ));
    }

    // Embedding tables first, in the form every mode uses.
    let gather: Vec<String> = cfg
        .select
        .ops
        .iter()
        .filter(|o| *o == "Gather")
        .cloned()
        .collect();
    if !gather.is_empty() {
        let sub = QuantizeConfig {
            weight_only: true,
            static_mode: false,
            int4: None,
            select: Selection {
                ops: gather,
                ..cfg.select.clone()
            },
            activations: Activations::default(),
            per_channel: rows_per_channel,
            ..cfg.clone()
        };
        let r = super::quantize::apply(&sub, model)?;
        if !r.tensors.is_empty() {
            report
                .description
                .push_str("; embedding tables (Gather): 8-bit rows, dequantized after the lookup");
        }
        report.tensors.extend(r.tensors);
        report.skipped.extend(r.skipped);
    }

    let weights = static_weights(cfg, model, &mut report.skipped);
    let qmax: i8 = if cfg.reduce_range { 63 } else { 127 };
    let g = model.graph();
    let consumers = onnx::consumers(g);
    let graph_outputs: HashSet<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
    let init_of = |name: &str| {
        g.initializer
            .iter()
            .position(|t| t.name.as_deref() == Some(name))
    };
    let mut namer = Namer::new(g);
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let mut drop_inits: HashSet<usize> = HashSet::new();
    let mut before: BTreeMap<usize, Vec<pb::NodeProto>> = BTreeMap::new();
    let mut after: BTreeMap<usize, Vec<pb::NodeProto>> = BTreeMap::new();
    let mut input_renames: Vec<(usize, usize, String)> = Vec::new();
    let mut output_renames: Vec<(usize, usize, String)> = Vec::new();
    let mut set_beta_one: Vec<usize> = Vec::new();
    let mut acts: HashMap<String, Act> = HashMap::new();
    let mut bias_rewired: HashMap<usize, usize> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    let ranges = &cal.ranges;

    // Q -> DQ on `t`, whose float values come from `src`; the DQ writes `out`.
    // Q -> DQ on `t` at the range calibrated for `range_of`.
    let pair_at = |namer: &mut Namer,
                   new_inits: &mut Vec<pb::TensorProto>,
                   t: &str,
                   range_of: &str,
                   src: &str,
                   out: &str|
     -> (f32, Vec<pb::NodeProto>) {
        let (lo, hi) = ranges[range_of];
        let (scale, zp) = activation_qparams(lo, hi, a.uint8, a.symmetric);
        let s = namer.fresh(&format!("{t}_scale"));
        let z = namer.fresh(&format!("{t}_zero_point"));
        let q = namer.fresh(&format!("{t}_quantized"));
        new_inits.push(f32_tensor(&s, &[], &[scale]));
        new_inits.push(zero_point(&z, zp, a.uint8));
        let nodes = vec![
            onnx::node(
                "QuantizeLinear",
                namer.fresh(&format!("{t}_QuantizeLinear")),
                vec![src.to_string(), s.clone(), z.clone()],
                vec![q.clone()],
                vec![],
            ),
            onnx::node(
                "DequantizeLinear",
                namer.fresh(&format!("{t}_DequantizeLinear")),
                vec![q, s, z],
                vec![out.to_string()],
                vec![],
            ),
        ];
        (scale, nodes)
    };
    let pair =
        |namer: &mut Namer, new_inits: &mut Vec<pb::TensorProto>, t: &str, src: &str, out: &str| {
            pair_at(namer, new_inits, t, t, src, out)
        };

    // The integer region around the Convs first: its tensors are quantized at their
    // producers, and the Convs below read them.
    let chain = qdq_chain::plan(g, &conv_users(&weights), a.symmetric);
    // The Mul/Div nodes folded into dequantizers: a tensor only they read needs no DQ of
    // its own (its int8 values are read at their scales instead).
    let rescaled: HashSet<usize> = chain
        .tensors
        .iter()
        .filter(|t| t.rescale_of.is_some())
        .filter_map(|t| t.producer)
        .collect();
    let only_rescaled = |name: &str| {
        !graph_outputs.contains(name)
            && consumers
                .get(name)
                .is_some_and(|c| c.iter().all(|(ni, _)| rescaled.contains(ni)))
    };
    for t in &chain.tensors {
        // A Mul/Div by a positive scalar: dequantized from its input's int8 values at the
        // scaled scale, in place of the node (which goes).
        if let Some((x, factor)) = &t.rescale_of {
            let Some(src) = acts.get(x).cloned() else {
                continue;
            };
            let ni = t.producer.expect("a rescaled tensor has its node");
            let scale = src.scale * factor;
            if !only_rescaled(&t.name) {
                let s = namer.fresh(&format!("{}_scale", t.name));
                new_inits.push(f32_tensor(&s, &[], &[scale]));
                before.entry(ni).or_default().push(onnx::node(
                    "DequantizeLinear",
                    namer.fresh(&format!("{}_DequantizeLinear", t.name)),
                    vec![src.q.clone(), s, src.zero_point.clone()],
                    vec![t.name.clone()],
                    vec![],
                ));
            }
            acts.insert(
                t.name.clone(),
                Act {
                    scale,
                    read: t.name.clone(),
                    ..src
                },
            );
            continue;
        }
        if let Some((ni, slot)) = t.constant_for {
            let read = constant_pair(g, &t.name, a, &mut namer, &mut new_inits, &mut before)?;
            input_renames.push((ni, slot, read));
            continue;
        }
        if !ranges.contains_key(&t.range_of) {
            continue;
        }
        let act = match t.producer {
            Some(p) => {
                let src = if t.source == t.name {
                    let pre = namer.fresh(&format!("{}_float", t.name));
                    output_renames.push((p, t.slot, pre.clone()));
                    pre
                } else {
                    t.source.clone()
                };
                let (scale, nodes) = pair_at(
                    &mut namer,
                    &mut new_inits,
                    &t.name,
                    &t.range_of,
                    &src,
                    &t.name,
                );
                let act = Act::of(scale, t.name.clone(), &nodes);
                let keep = if only_rescaled(&t.name) { 1 } else { 2 };
                after
                    .entry(p)
                    .or_default()
                    .extend(nodes.into_iter().take(keep));
                act
            }
            None => {
                let read = namer.fresh(&format!("{}_dequantized", t.name));
                let (scale, nodes) = pair_at(
                    &mut namer,
                    &mut new_inits,
                    &t.name,
                    &t.range_of,
                    &t.name,
                    &read,
                );
                let act = Act::of(scale, read.clone(), &nodes);
                before.entry(0).or_default().extend(nodes);
                for &(ni, slot) in consumers.get(t.name.as_str()).into_iter().flatten() {
                    input_renames.push((ni, slot, read.clone()));
                }
                act
            }
        };
        acts.insert(t.name.clone(), act);
    }
    removed.extend(chain.removed.iter().copied().filter(|r| {
        let out = &g.node[*r].output[0];
        acts.contains_key(out)
    }));

    for w in &weights {
        let (_, out_axis) = w.axes(g);
        let channels = w.dims[out_axis];
        // Every user must be expressible; otherwise the weight stays float.
        let mut why: Option<String> = None;
        for (ni, op) in &w.users {
            let n = &g.node[*ni];
            let x = &n.input[0];
            if !ranges.contains_key(x) {
                why = Some(format!("no calibrated range for its input `{x}`"));
            } else if op == "Conv"
                && !chain
                    .tensors
                    .iter()
                    .any(|t| t.producer == Some(*ni) && t.slot == 0 && acts.contains_key(&t.name))
            {
                why = Some("no calibrated range for its output".into());
            } else if op == "Gemm" && onnx::get_attr_float(n, "alpha", 1.0) != 1.0 {
                why = Some("Gemm with alpha != 1 is left in float".into());
            } else if let Some(b) = bias_of(n) {
                let ok = init_of(&b).is_some_and(|i| {
                    let t = &g.initializer[i];
                    let d: Vec<i64> = t.dims.clone();
                    t.dtype() == DataType::Float
                        && (d == [channels as i64] || (op == "Gemm" && d == [1, channels as i64]))
                });
                if !ok {
                    why = Some(format!(
                        "bias `{b}` is computed or not one float per output channel"
                    ));
                }
            }
            if why.is_some() {
                break;
            }
        }
        if let Some(reason) = why {
            let (ni, _) = w.users[0];
            report.skipped.push(Skipped {
                node: node_label(&g.node[ni], ni),
                reason,
            });
            continue;
        }

        let values = weight_values(model, w)?;
        let layout = if cfg.per_channel {
            ChannelLayout::along(&w.dims, out_axis)
        } else {
            ChannelLayout::PER_TENSOR
        };
        let q = math::quantize_symmetric(&values, layout, qmax);
        drop(values);
        let (first, _) = w.users[0];
        report.tensors.push(TensorReport {
            tensor: w.name.clone(),
            node: node_label(&g.node[first], first),
            op: w.users[0].1.clone(),
            elements: w.numel() as u64,
            sparsity: q.values.iter().filter(|v| **v == 0).count() as f64
                / q.values.len().max(1) as f64,
            scales: Some(q.scales.len()),
            max_abs_error: Some(q.max_abs_error),
            sqnr_db: super::math::sqnr_db(q.energy),
        });
        let sdims: Vec<i64> = if cfg.per_channel {
            vec![q.scales.len() as i64]
        } else {
            vec![]
        };
        let axis_attr = || {
            if cfg.per_channel {
                vec![attr_int("axis", out_axis as i64)]
            } else {
                vec![]
            }
        };
        let idims: Vec<i64> = w.dims.iter().map(|&d| d as i64).collect();
        let wq = namer.fresh(&format!("{}_quantized", w.name));
        let ws = namer.fresh(&format!("{}_scale", w.name));
        let wz = namer.fresh(&format!("{}_zero_point", w.name));
        let wd = namer.fresh(&format!("{}_dequantized", w.name));
        drop_inits.insert(w.init);
        new_inits.push(int8_tensor(&wq, &idims, q.values));
        new_inits.push(f32_tensor(&ws, &sdims, &q.scales));
        new_inits.push(int8_tensor(&wz, &sdims, vec![0; q.scales.len()]));
        before.entry(first).or_default().push(onnx::node(
            "DequantizeLinear",
            namer.fresh(&format!("{}_DequantizeLinear", w.name)),
            vec![wq, ws, wz],
            vec![wd.clone()],
            axis_attr(),
        ));

        for (ni, op) in &w.users {
            let ni = *ni;
            let n = &g.node[ni];
            input_renames.push((ni, 1, wd.clone()));
            // The data input.
            let x = n.input[0].clone();
            let act = match acts.get(&x) {
                Some(act) => act.clone(),
                None => {
                    let read = namer.fresh(&format!("{x}_dequantized"));
                    let (scale, nodes) = pair(&mut namer, &mut new_inits, &x, &x, &read);
                    let act = Act::of(scale, read, &nodes);
                    before.entry(ni).or_default().extend(nodes);
                    acts.insert(x.clone(), act.clone());
                    act
                }
            };
            if act.read != x {
                input_renames.push((ni, 0, act.read.clone()));
            }
            // The bias, int32 at scale_x · scale_w (beta folded in): Conv's and Gemm's input
            // C, or the Add of a constant after a MatMul (ORT fuses MatMul + that Add into
            // QGemm for 2-D inputs; with a float bias it would run float Gemm).
            let bias = match op.as_str() {
                "MatMul" => matmul_bias(g, &consumers, &graph_outputs, ni, channels),
                _ => bias_of(n).map(|b| (ni, 2, b)),
            };
            if let Some((bn, slot, b)) = bias {
                let bi = init_of(&b).expect("checked above");
                let beta = if op == "Gemm" {
                    onnx::get_attr_float(n, "beta", 1.0)
                } else {
                    1.0
                };
                let bv = onnx::tensor_f32_values(&g.initializer[bi])?;
                let scales: Vec<f32> = q.scales.iter().map(|s| s * act.scale).collect();
                let bq: Vec<i32> = bv
                    .iter()
                    .enumerate()
                    .map(|(c, v)| {
                        let s = scales[if scales.len() == 1 { 0 } else { c }];
                        let r = f64::from(v * beta) / f64::from(s);
                        if r.is_finite() {
                            r.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
                        } else {
                            0
                        }
                    })
                    .collect();
                let bqn = namer.fresh(&format!("{b}_quantized"));
                let bsn = namer.fresh(&format!("{b}_scale"));
                let bdn = namer.fresh(&format!("{b}_dequantized"));
                new_inits.push(int32_tensor(&bqn, &[channels as i64], &bq));
                new_inits.push(f32_tensor(&bsn, &sdims, &scales));
                // No zero point: 0 by default, and ORT fuses without it (4 bytes a channel).
                before.entry(bn).or_default().push(onnx::node(
                    "DequantizeLinear",
                    namer.fresh(&format!("{b}_DequantizeLinear")),
                    vec![bqn, bsn],
                    vec![bdn.clone()],
                    if cfg.per_channel {
                        vec![attr_int("axis", 0)]
                    } else {
                        vec![]
                    },
                ));
                input_renames.push((bn, slot, bdn));
                if op == "Gemm" && beta != 1.0 {
                    set_beta_one.push(ni);
                }
                *bias_rewired.entry(bi).or_default() += 1;
            }
            // Conv's output was quantized with the region above.
        }
    }
    // A float bias no node reads any more goes.
    for (bi, n) in bias_rewired {
        let name = g.initializer[bi].name.as_deref().unwrap_or("");
        if consumers.get(name).map_or(0, |u| u.len()) == n && !graph_outputs.contains(name) {
            drop_inits.insert(bi);
        }
    }
    report
        .description
        .push_str(&format!("; {} activation tensors quantized", acts.len()));
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

    let graph = model.graph_mut();
    for (ni, slot, name) in input_renames {
        graph.node[ni].input[slot] = name;
    }
    for (ni, slot, name) in output_renames {
        graph.node[ni].output[slot] = name;
    }
    for ni in set_beta_one {
        let n = &mut graph.node[ni];
        n.attribute.retain(|a| a.name.as_deref() != Some("beta"));
        n.attribute.push(pb::AttributeProto {
            name: Some("beta".into()),
            f: Some(1.0),
            r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
            ..Default::default()
        });
    }
    let old_nodes = std::mem::take(&mut graph.node);
    for (i, node) in old_nodes.into_iter().enumerate() {
        if let Some(pre) = before.remove(&i) {
            graph.node.extend(pre);
        }
        if !removed.contains(&i) {
            graph.node.push(node);
        }
        if let Some(post) = after.remove(&i) {
            graph.node.extend(post);
        }
    }
    let old_inits = std::mem::take(&mut graph.initializer);
    graph.initializer = old_inits
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop_inits.contains(i))
        .map(|(_, t)| t)
        .collect();
    graph.initializer.extend(new_inits);
    Ok(report)
}

/// The bias Add after MatMul node `ni`: its output's only reader is an `Add` whose other
/// input is a float initializer of shape `[channels]`. Returns (Add node, slot, bias name).
fn matmul_bias(
    g: &pb::GraphProto,
    consumers: &HashMap<&str, Vec<(usize, usize)>>,
    graph_outputs: &HashSet<&str>,
    ni: usize,
    channels: usize,
) -> Option<(usize, usize, String)> {
    let y = g.node[ni].output.first()?;
    if graph_outputs.contains(y.as_str()) {
        return None;
    }
    let [(ai, slot)] = consumers.get(y.as_str())?.as_slice() else {
        return None;
    };
    let add = &g.node[*ai];
    if add.op_type.as_deref() != Some("Add")
        || add.domain.as_deref().is_some_and(|d| !d.is_empty())
        || add.input.len() != 2
    {
        return None;
    }
    let other = 1 - *slot;
    let b = &add.input[other];
    let t = g.initializer.iter().find(|t| t.name.as_ref() == Some(b))?;
    (t.dtype() == DataType::Float && t.dims == [channels as i64]).then(|| (*ai, other, b.clone()))
}

/// The bias input of a Conv or Gemm that contributes (Gemm's C with beta != 0).
fn bias_of(n: &pb::NodeProto) -> Option<String> {
    let op = n.op_type.as_deref().unwrap_or("");
    if op == "Gemm" && onnx::get_attr_float(n, "beta", 1.0) == 0.0 {
        return None;
    }
    if op != "Gemm" && op != "Conv" {
        return None;
    }
    n.input.get(2).filter(|b| !b.is_empty()).cloned()
}

fn describe(cfg: &QuantizeConfig, cal: &Calibrated) -> String {
    let a = &cfg.activations;
    let bits = match (cfg.reduce_range, a.reduce_range_default) {
        (true, true) => {
            "7-bit weights (default for spec.target.cpu auto/x86-avx2: no int16 saturation on x86 CPUs without VNNI)"
        }
        (true, false) => "7-bit weights (reduceRange: true)",
        (false, true) => {
            "8-bit weights (default for spec.target.cpu x86-vnni/arm64, where 8-bit products do not saturate)"
        }
        (false, false) => {
            "8-bit weights (reduceRange: false; can saturate on x86 CPUs without VNNI)"
        }
    };
    format!(
        "int8 static (QDQ), {} ({} activations, {}), {} weights, {bits}; calibration: {}",
        if a.uint8 { "U8S8" } else { "S8S8" },
        if a.uint8 { "uint8" } else { "int8" },
        if a.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        if cfg.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        cal.summary
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_qparams_follow_onnx_runtime() {
        // asymmetric int8 over [0, 2.55]: the whole [-128, 127]
        let (s, z) = activation_qparams(0.0, 2.55, false, false);
        assert!((s - 0.01).abs() < 1e-7 && z == -128, "{s} {z}");
        // asymmetric uint8 over [-1, 1]
        let (s, z) = activation_qparams(-1.0, 1.0, true, false);
        // (0 - (-1)/scale is 127.5 up to float rounding)
        assert!(
            (s - 2.0 / 255.0).abs() < 1e-7 && (127..=128).contains(&z),
            "{s} {z}"
        );
        // symmetric int8: [-127, 127], zero point 0
        let (s, z) = activation_qparams(-0.5, 1.27, false, true);
        assert!((s - 0.01).abs() < 1e-7 && z == 0, "{s} {z}");
        // symmetric uint8: zero point 128
        assert_eq!(activation_qparams(-1.0, 1.0, true, true).1, 128);
        // a range not holding 0 is widened to hold it
        let (s, z) = activation_qparams(1.0, 2.0, false, false);
        assert!((s - 2.0 / 255.0).abs() < 1e-7 && z == -128, "{s} {z}");
        // empty range
        assert_eq!(activation_qparams(0.0, 0.0, false, false), (1.0, 0));
    }
}
