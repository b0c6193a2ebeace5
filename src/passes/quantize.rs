//! int8 weight quantization, in the operator form ONNX Runtime runs as integer math.
//!
//! Dynamic mode rewrites `Y = MatMul(A, W)` into the pattern ORT's own `quantize_dynamic`
//! emits, which ORT's graph optimizer fuses into one integer kernel:
//! `DynamicQuantizeLinear(A) -> MatMulInteger(A_q, W_q, A_zp, W_zp) -> Cast -> Mul(·, A_scale·W_scale)`.
//! Weight-only mode stores `W_q` and puts `DequantizeLinear` in front of the float op.
//!
//! Embedding tables (`Y = Gather(W, ids)`, axis 0) are stored int8 in both modes and the
//! gathered rows are dequantized after the lookup, so only the rows read become float:
//! per tensor `DequantizeLinear(Gather(W_q, ids), scale)`, per row
//! `Mul(Cast(Gather(W_q, ids)), Gather(scales[V, 1], ids))` (the gathered scales have shape
//! ids.shape + [1], which broadcasts over the row).

use super::nbits::Int4Config;
use super::{
    PassReport, Result, Selection, Skipped, TensorReport, Weight, math, node_label, select_weights,
    weight_values,
};
use crate::onnx::{self, Model, Namer, attr_int, f32_tensor, int8_tensor, pb, tensor_f32_values};
use math::ChannelLayout;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeConfig {
    pub weight_only: bool,
    /// Static int8 (QDQ with calibrated activation ranges).
    pub static_mode: bool,
    /// 4-bit blocked weights (weight-only), with their settings; None for int8.
    pub int4: Option<Int4Config>,
    pub per_channel: bool,
    /// Per-channel was asked for explicitly: where the opset cannot express it, fail (or
    /// skip the weight) instead of falling back to one scale per tensor.
    pub per_channel_required: bool,
    pub reduce_range: bool,
    pub select: Selection,
    /// Static mode: activation form and the calibrated ranges.
    pub activations: super::static_q::Activations,
}

/// Whether a selected weight would be dequantized whole (weight-only mode, or Conv and
/// ConvTranspose in dynamic mode): per-channel scales on it need opset 13.
pub(super) fn dequantized_whole(cfg: &QuantizeConfig, model: &Model) -> bool {
    select_weights(model, &cfg.select, &mut Vec::new())
        .iter()
        .flat_map(|w| w.users.iter())
        .any(|(_, op)| op != "Gather" && (cfg.weight_only || op == "Conv" || op == "ConvTranspose"))
}

/// What to do with one weight.
enum Plan {
    /// MatMulInteger rewrite of every user; `transpose` for Gemm with transB=1.
    Integer {
        transpose: bool,
    },
    WeightOnly,
    /// Embedding lookup (`Gather` on axis 0): int8 table, rows dequantized after the lookup.
    Gather,
}

pub fn apply(cfg: &QuantizeConfig, model: &mut Model) -> Result<PassReport> {
    let unsupported = |what: String| super::Error::Unsupported {
        pass: "quantize",
        what,
    };
    if let Some(int4) = &cfg.int4 {
        return super::nbits::apply(int4, &cfg.select, model);
    }
    if cfg.static_mode {
        return super::static_q::apply(cfg, model);
    }
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    let mut report = PassReport {
        pass: "quantize".into(),
        description: format!(
            "int8 {}, {}{}",
            if cfg.weight_only {
                "weight-only (QDQ)"
            } else {
                "dynamic (MatMulInteger)"
            },
            if cfg.per_channel {
                "per-channel"
            } else {
                "per-tensor"
            },
            match (cfg.reduce_range, cfg.weight_only) {
                (true, _) => ", 7-bit weights (no int16 saturation on CPUs without VNNI)",
                (false, false) => ", 8-bit weights (can saturate on x86 CPUs without VNNI)",
                (false, true) => "",
            }
        ),
        ..Default::default()
    };
    if !cfg.weight_only && opset < 11 {
        return Err(unsupported(format!(
            "the model imports opset {opset}; dynamic quantization needs opset >= 11 (DynamicQuantizeLinear): re-export the model or use mode: weightOnly"
        )));
    }
    // Per-channel scales need DequantizeLinear's `axis` (opset 13) only where a weight is
    // dequantized whole (weight-only mode, and Conv in dynamic mode); MatMulInteger's
    // per-column zero points and the per-row lookup form work from opset 10 / 1.
    // Such weights get the graph upgraded to opset 13 (losslessly; the pipeline checks it
    // with ONNX Runtime); only where that cannot be done do they fall back, and say why.
    let mut opset = opset;
    let mut no_upgrade: Option<super::opset::Error> = None;
    if cfg.per_channel && opset < 13 && dequantized_whole(cfg, model) {
        match super::opset::upgrade(model, 13) {
            Ok(up) => {
                opset = up.to;
                report.description.push_str(&format!(
                    "; {} for per-channel DequantizeLinear",
                    up.describe()
                ));
            }
            Err(e) if cfg.per_channel_required => {
                return Err(unsupported(format!(
                    "per-channel weight-only scales need opset >= 13 (DequantizeLinear axis) and {e}; or set perChannel: false"
                )));
            }
            Err(e) => no_upgrade = Some(e),
        }
    }
    let weights = select_weights(model, &cfg.select, &mut report.skipped);
    let qmax: i8 = if cfg.reduce_range { 63 } else { 127 };
    let g = model.graph();
    let mut namer = Namer::new(g);
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let mut drop_inits: HashSet<usize> = HashSet::new();
    let mut before: BTreeMap<usize, Vec<pb::NodeProto>> = BTreeMap::new();
    let mut replace: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
    let mut renames: HashMap<usize, (usize, String)> = HashMap::new();
    let mut activations: HashMap<String, [String; 3]> = HashMap::new();
    let mut fallbacks = 0usize;

    for w in &weights {
        let plan = plan_for(cfg, g, w, &mut report.skipped);
        let Some(plan) = plan else { continue };
        // Per channel where the opset allows it (see the check above).
        let whole_dq = matches!(plan, Plan::WeightOnly);
        let pc = cfg.per_channel && !(whole_dq && opset < 13);
        if cfg.per_channel && !pc && !cfg.per_channel_required {
            fallbacks += 1;
        }
        if whole_dq && cfg.per_channel_required && opset < 13 {
            let (ni, _) = w.users[0];
            report.skipped.push(Skipped {
                node: node_label(&g.node[ni], ni),
                reason: format!(
                    "weight `{}` would be dequantized per channel, which needs opset >= 13 (the model imports {opset})",
                    w.name
                ),
            });
            continue;
        }
        let (_, mut out_axis) = w.axes(g);
        let gather = matches!(plan, Plan::Gather);
        if gather {
            out_axis = 0; // one scale per table row
        }
        // No integer matmul follows a lookup, so nothing can saturate: always 8-bit.
        let qmax = if gather { 127 } else { qmax };
        let mut dims = w.dims.clone();
        let qmax_layout = |dims: &[usize], axis: usize| {
            if pc {
                ChannelLayout::along(dims, axis)
            } else {
                ChannelLayout::PER_TENSOR
            }
        };
        let t = &g.initializer[w.init];
        let q = match (&plan, &t.raw_data) {
            // The common case reads the weights straight from the file buffer: no float copy
            // of the tensor, which keeps peak memory near the model's size.
            (Plan::Integer { transpose: false } | Plan::WeightOnly | Plan::Gather, Some(raw))
                if raw.len() == w.numel() * 4 =>
            {
                let at = |i: usize| {
                    f32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]])
                };
                if let Some(i) = (0..w.numel()).find(|&i| !at(i).is_finite()) {
                    return Err(super::non_finite(model, w, at(i), i));
                }
                math::quantize_symmetric_with(w.numel(), at, qmax_layout(&dims, out_axis), qmax)
            }
            _ => {
                let mut values = weight_values(model, w)?;
                if let Plan::Integer { transpose: true } = plan {
                    values = transpose2(&values, dims[0], dims[1]);
                    dims.swap(0, 1);
                    out_axis = 1;
                }
                math::quantize_symmetric(&values, qmax_layout(&dims, out_axis), qmax)
            }
        };
        let max_abs_error = q.max_abs_error;
        let (first, _) = w.users[0];
        report.tensors.push(TensorReport {
            tensor: w.name.clone(),
            node: node_label(&g.node[first], first),
            op: w.users[0].1.clone(),
            elements: w.numel() as u64,
            sparsity: q.values.iter().filter(|v| **v == 0).count() as f64
                / q.values.len().max(1) as f64,
            scales: Some(q.scales.len()),
            max_abs_error: Some(max_abs_error),
            sqnr_db: math::sqnr_db(q.energy),
        });

        let idims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let qname = namer.fresh(&format!("{}_quantized", w.name));
        let sname = namer.fresh(&format!("{}_scale", w.name));
        let zname = namer.fresh(&format!("{}_zero_point", w.name));
        let sdims: Vec<i64> = if pc {
            vec![q.scales.len() as i64]
        } else {
            vec![]
        };
        let zeros = vec![0i8; q.scales.len()];
        drop_inits.insert(w.init);
        new_inits.push(int8_tensor(&qname, &idims, q.values));
        if !(gather && pc) {
            new_inits.push(int8_tensor(&zname, &sdims, zeros));
        }

        match plan {
            Plan::Gather => {
                if pc {
                    // [V, 1]: gathered with the ids it becomes ids.shape + [1].
                    new_inits.push(f32_tensor(&sname, &[q.scales.len() as i64, 1], &q.scales));
                } else {
                    new_inits.push(f32_tensor(&sname, &[], &q.scales));
                }
                for &(ni, _) in &w.users {
                    let node = &g.node[ni];
                    let base = node_label(node, ni);
                    let ids = node.input[1].clone();
                    let y = node.output[0].clone();
                    let gq = namer.fresh(&format!("{y}_quantized"));
                    let mut nodes = vec![onnx::node(
                        "Gather",
                        namer.fresh(&format!("{base}_quantized")),
                        vec![qname.clone(), ids.clone()],
                        vec![gq.clone()],
                        vec![attr_int("axis", 0)],
                    )];
                    if pc {
                        let cast = namer.fresh(&format!("{y}_cast"));
                        let gs = namer.fresh(&format!("{y}_scales"));
                        nodes.push(onnx::node(
                            "Cast",
                            namer.fresh(&format!("{base}_cast")),
                            vec![gq],
                            vec![cast.clone()],
                            vec![attr_int(
                                "to",
                                pb::tensor_proto::DataType::Float as i32 as i64,
                            )],
                        ));
                        nodes.push(onnx::node(
                            "Gather",
                            namer.fresh(&format!("{base}_scales")),
                            vec![sname.clone(), ids],
                            vec![gs.clone()],
                            vec![attr_int("axis", 0)],
                        ));
                        nodes.push(onnx::node(
                            "Mul",
                            namer.fresh(&format!("{base}_scales_mul")),
                            vec![cast, gs],
                            vec![y],
                            vec![],
                        ));
                    } else {
                        nodes.push(onnx::node(
                            "DequantizeLinear",
                            namer.fresh(&format!("{base}_DequantizeLinear")),
                            vec![gq, sname.clone(), zname.clone()],
                            vec![y],
                            vec![],
                        ));
                    }
                    replace.insert(ni, nodes);
                }
            }
            Plan::WeightOnly => {
                new_inits.push(f32_tensor(&sname, &sdims, &q.scales));
                let dq = namer.fresh(&format!("{}_dequantized", w.name));
                let mut attrs = vec![];
                if pc {
                    attrs.push(attr_int("axis", out_axis as i64));
                }
                let name = namer.fresh(&format!("{}_DequantizeLinear", w.name));
                before.entry(first).or_default().push(onnx::node(
                    "DequantizeLinear",
                    name,
                    vec![qname, sname, zname],
                    vec![dq.clone()],
                    attrs,
                ));
                for &(ni, _) in &w.users {
                    renames.insert(ni, (1, dq.clone()));
                }
            }
            Plan::Integer { .. } => {
                for &(ni, ref op) in &w.users {
                    let node = &g.node[ni];
                    let alpha = if op == "Gemm" {
                        onnx::get_attr_float(node, "alpha", 1.0)
                    } else {
                        1.0
                    };
                    let scales: Vec<f32> = q.scales.iter().map(|s| s * alpha).collect();
                    let sname_n = if alpha == 1.0 {
                        sname.clone()
                    } else {
                        namer.fresh(&format!("{}_scale_alpha", w.name))
                    };
                    if !new_inits
                        .iter()
                        .any(|t| t.name.as_deref() == Some(sname_n.as_str()))
                    {
                        new_inits.push(f32_tensor(&sname_n, &sdims, &scales));
                    }
                    let a = node.input[0].clone();
                    let [aq, ascale, azp] = activations
                        .entry(a.clone())
                        .or_insert_with(|| {
                            let names = [
                                namer.fresh(&format!("{a}_quantized")),
                                namer.fresh(&format!("{a}_scale")),
                                namer.fresh(&format!("{a}_zero_point")),
                            ];
                            let name = namer.fresh(&format!("{a}_DynamicQuantizeLinear"));
                            before.entry(ni).or_default().push(onnx::node(
                                "DynamicQuantizeLinear",
                                name,
                                vec![a.clone()],
                                names.to_vec(),
                                vec![],
                            ));
                            names
                        })
                        .clone();
                    let base = node_label(node, ni);
                    let y = node.output[0].clone();
                    let mmi = namer.fresh(&format!("{y}_MatMulInteger"));
                    let cast = namer.fresh(&format!("{y}_cast"));
                    let smul = namer.fresh(&format!("{y}_scales_mul"));
                    let scaled = if op == "Gemm" && gemm_bias(node, g).is_some() {
                        namer.fresh(&format!("{y}_no_bias"))
                    } else {
                        y.clone()
                    };
                    let mut nodes = vec![
                        onnx::node(
                            "MatMulInteger",
                            namer.fresh(&format!("{base}_MatMulInteger")),
                            vec![aq, qname.clone(), azp, zname.clone()],
                            vec![mmi.clone()],
                            vec![],
                        ),
                        onnx::node(
                            "Cast",
                            namer.fresh(&format!("{base}_cast")),
                            vec![mmi],
                            vec![cast.clone()],
                            vec![attr_int(
                                "to",
                                pb::tensor_proto::DataType::Float as i32 as i64,
                            )],
                        ),
                        onnx::node(
                            "Mul",
                            namer.fresh(&format!("{base}_scales_mul")),
                            vec![ascale, sname_n.clone()],
                            vec![smul.clone()],
                            vec![],
                        ),
                        onnx::node(
                            "Mul",
                            namer.fresh(&format!("{base}_output_scale_mul")),
                            vec![cast, smul],
                            vec![scaled.clone()],
                            vec![],
                        ),
                    ];
                    if let Some((bias, beta)) = gemm_bias(node, g) {
                        let bias = if beta == 1.0 {
                            bias
                        } else {
                            // beta·C folded into a new initializer (plan_for only allows initializer C here).
                            let c = g
                                .initializer
                                .iter()
                                .find(|t| t.name.as_deref() == Some(bias.as_str()))
                                .expect("checked in plan_for");
                            let v: Vec<f32> =
                                tensor_f32_values(c)?.iter().map(|x| x * beta).collect();
                            let n = namer.fresh(&format!("{bias}_beta"));
                            new_inits.push(f32_tensor(&n, &c.dims, &v));
                            n
                        };
                        nodes.push(onnx::node(
                            "Add",
                            namer.fresh(&format!("{base}_bias_add")),
                            vec![scaled, bias],
                            vec![y],
                            vec![],
                        ));
                    }
                    replace.insert(ni, nodes);
                }
            }
        }
    }

    if fallbacks > 0 {
        report.description.push_str(&format!(
            "; {fallbacks} weights dequantized whole are per-tensor (per-channel DequantizeLinear needs opset >= 13, the model imports {opset}{})",
            no_upgrade.map(|e| format!(", and {e}")).unwrap_or_default()
        ));
    }
    if report.tensors.iter().any(|t| t.op == "Gather") {
        report
            .description
            .push_str("; embedding tables (Gather): 8-bit rows, dequantized after the lookup");
    }
    let graph = model.graph_mut();
    let old_nodes = std::mem::take(&mut graph.node);
    for (i, mut node) in old_nodes.into_iter().enumerate() {
        if let Some(pre) = before.remove(&i) {
            graph.node.extend(pre);
        }
        if let Some(nodes) = replace.remove(&i) {
            graph.node.extend(nodes);
            continue;
        }
        if let Some((slot, name)) = renames.remove(&i) {
            node.input[slot] = name;
        }
        graph.node.push(node);
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

/// Decides how a weight is quantized, or records why it is skipped.
fn plan_for(
    cfg: &QuantizeConfig,
    g: &pb::GraphProto,
    w: &Weight,
    skipped: &mut Vec<Skipped>,
) -> Option<Plan> {
    let op = w.users[0].1.as_str();
    if op == "Gather" {
        for &(ni, _) in &w.users {
            let n = &g.node[ni];
            let axis = onnx::get_attr_int(n, "axis", 0);
            // The table is [V, D]: axis -2 is axis 0.
            if axis != 0 && axis != -2 {
                skipped.push(Skipped {
                    node: node_label(n, ni),
                    reason: format!(
                        "Gather with axis={axis} is left in float: only row lookups (axis 0, embeddings) are quantized"
                    ),
                });
                return None;
            }
        }
        return Some(Plan::Gather);
    }
    if cfg.weight_only {
        return Some(Plan::WeightOnly);
    }
    match op {
        // ConvInteger on ORT's CPU provider takes uint8 weights only; symmetric int8 conv
        // weights are stored and dequantized instead (smaller, float math).
        "Conv" => Some(Plan::WeightOnly),
        // No integer ConvTranspose kernel in ONNX Runtime's CPU provider: weight-only.
        "ConvTranspose" => Some(Plan::WeightOnly),
        "Gemm" => {
            for &(ni, _) in &w.users {
                let n = &g.node[ni];
                let label = node_label(n, ni);
                if onnx::get_attr_int(n, "transA", 0) != 0 {
                    skipped.push(Skipped {
                        node: label,
                        reason: "Gemm with transA=1 is left in float".into(),
                    });
                    return None;
                }
                if let Some(c) = n.input.get(2).filter(|c| !c.is_empty())
                    && onnx::get_attr_float(n, "beta", 1.0) != 1.0
                    && !g
                        .initializer
                        .iter()
                        .any(|t| t.name.as_deref() == Some(c.as_str()))
                {
                    skipped.push(Skipped {
                        node: label,
                        reason: "Gemm with beta != 1 and a computed C is left in float".into(),
                    });
                    return None;
                }
            }
            let transpose = onnx::get_attr_int(&g.node[w.users[0].0], "transB", 0) != 0;
            if w.users
                .iter()
                .any(|&(ni, _)| (onnx::get_attr_int(&g.node[ni], "transB", 0) != 0) != transpose)
            {
                skipped.push(Skipped {
                    node: w.name.clone(),
                    reason: "weight shared by Gemms with different transB".into(),
                });
                return None;
            }
            Some(Plan::Integer { transpose })
        }
        _ => Some(Plan::Integer { transpose: false }),
    }
}

/// Gemm's C input and beta, when it has a bias that contributes.
fn gemm_bias(node: &pb::NodeProto, _g: &pb::GraphProto) -> Option<(String, f32)> {
    if node.op_type.as_deref() != Some("Gemm") {
        return None;
    }
    let beta = onnx::get_attr_float(node, "beta", 1.0);
    node.input
        .get(2)
        .filter(|c| !c.is_empty() && beta != 0.0)
        .map(|c| (c.clone(), beta))
}

fn transpose2(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
