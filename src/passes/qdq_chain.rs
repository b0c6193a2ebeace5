//! Which activations a static pass quantizes around its Convs, so that a CNN runs as a chain
//! of integer kernels instead of `QLinearConv -> float -> QLinearConv`.
//!
//! ONNX Runtime's QDQ transformers (CPU provider, 1.31) turn `DQ -> op -> Q` groups into
//! integer kernels: `Add`/`Mul` into `QLinearAdd`/`QLinearMul`, `Sigmoid`, `LeakyRelu`,
//! `AveragePool`, `GlobalAveragePool` into their `QLinear*` forms, `Concat` into
//! `QLinearConcat`; for `MaxPool`, `Resize`, `Reshape`, `Transpose`, `Flatten`, `Squeeze`,
//! `Unsqueeze` and `Split` they drop the pair when input and output share one scale and zero
//! point (the op then runs on int8 data). A `Relu` (or a `Clip` whose range holds 0) right
//! after a quantized op goes: the output quantizer takes its range and clamps as it did.
//! Ops without an integer kernel (`HardSwish`, `HardSigmoid`) stay float between a DQ and a
//! Q, which keeps their neighbours integer. A `Mul` or `Div` by a positive scalar constant
//! (HardSwish's `/ 6` as exporters write it, a learnable scale) is no kernel at all: its
//! consumers dequantize its input's int8 values at the scale times the constant
//! (`DQ(q, s, z) * c = DQ(q, s * c, z)`, exact), and the node goes; without this it ran in
//! float between a DQ and a Q (`Div`) or as a `QLinearMul` that requantizes.
//!
//! The region grows from the outputs of the Convs the pass quantizes, in graph order: an op
//! of the list joins when one of its data inputs is in the region, its other data inputs are
//! activations (not constants), and none of its outputs is a graph output (the model's
//! outputs stay float). Each tensor in the region is quantized once, at its producer, and
//! every consumer reads the dequantized value (as ONNX Runtime's own QDQ quantizer does).

use crate::onnx::{self, TensorData, pb};
use std::collections::{HashMap, HashSet};

/// How an op behaves inside the integer region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An integer kernel with its own output range.
    Integer,
    /// Moves int8 values without changing them: the output shares the input's scale.
    SameScale,
    /// No integer kernel: runs float between a DQ and a Q.
    Float,
}

/// The ops the region extends through, their role, and which inputs are data (the rest are
/// shapes, scales or axes).
fn role(op: &str) -> Option<(Role, DataInputs)> {
    use DataInputs::{All, First};
    Some(match op {
        "Add" | "Mul" | "Concat" => (Role::Integer, All),
        "Sigmoid" | "LeakyRelu" | "AveragePool" | "GlobalAveragePool" => (Role::Integer, First),
        "MaxPool" | "Resize" | "Reshape" | "Transpose" | "Flatten" | "Squeeze" | "Unsqueeze"
        | "Split" | "Pad" => (Role::SameScale, First),
        "HardSwish" | "HardSigmoid" | "Relu" | "Clip" => (Role::Float, First),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataInputs {
    All,
    First,
}

/// One activation quantized at its producer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainTensor {
    /// The tensor consumers read (the DQ writes it; for a graph input, a fresh name).
    pub name: String,
    /// What the Q reads: `name` itself, or the input of a removed Relu/Clip.
    pub source: String,
    /// The node that writes `source` (None: a graph input).
    pub producer: Option<usize>,
    /// Output slot of `source` on `producer`.
    pub slot: usize,
    /// The tensor whose calibrated range the pair uses (a same-scale op's input's).
    pub range_of: String,
    /// A scalar constant (initializer) an `Add` or `Mul` in the region reads: stored
    /// quantized over its own value (exact), dequantized for that one node: (node, slot).
    pub constant_for: Option<(usize, usize)>,
    /// The output of a `Mul`/`Div` by a positive scalar that goes: (the region tensor it
    /// scales, the factor); it is dequantized from that tensor's int8 values at its scale
    /// times the factor.
    pub rescale_of: Option<(String, f32)>,
}

/// The integer region around the quantized Convs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain {
    /// In graph order of their producers.
    pub tensors: Vec<ChainTensor>,
    /// Relu/Clip nodes folded into the quantizer before them, and `Mul`/`Div` nodes by a
    /// positive scalar folded into their consumers' dequantizers.
    pub removed: HashSet<usize>,
    /// Op type -> how many nodes of it the region holds (besides the Convs).
    pub ops: std::collections::BTreeMap<String, usize>,
}

impl Chain {
    /// The tensors whose calibrated ranges the region needs.
    pub fn range_tensors(&self) -> impl Iterator<Item = &str> {
        self.tensors
            .iter()
            .filter(|t| t.constant_for.is_none())
            .map(|t| t.range_of.as_str())
    }
}

struct Ctx<'a> {
    g: &'a pb::GraphProto,
    consumers: HashMap<&'a str, Vec<(usize, usize)>>,
    graph_outputs: HashSet<&'a str>,
    constants: HashSet<&'a str>,
    producer: HashMap<&'a str, (usize, usize)>,
    symmetric: bool,
}

/// Plans the region grown from the outputs of `convs` (node indices) on graph `g`.
/// `symmetric`: activations quantized symmetrically (a Relu/Clip then cannot be folded).
pub fn plan(g: &pb::GraphProto, convs: &HashSet<usize>, symmetric: bool) -> Chain {
    let mut producer = HashMap::new();
    for (ni, n) in g.node.iter().enumerate() {
        for (slot, o) in n.output.iter().enumerate() {
            producer.insert(o.as_str(), (ni, slot));
        }
    }
    let mut constants: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    for n in &g.node {
        if n.op_type.as_deref() == Some("Constant") {
            constants.extend(n.output.iter().map(String::as_str));
        }
    }
    let cx = Ctx {
        g,
        consumers: onnx::consumers(g),
        graph_outputs: g.output.iter().filter_map(|v| v.name.as_deref()).collect(),
        constants,
        producer,
        symmetric,
    };
    let mut chain = Chain::default();
    // Tensor name (as read by consumers) -> index in chain.tensors.
    let mut region: HashMap<String, usize> = HashMap::new();
    for (ni, n) in g.node.iter().enumerate() {
        if chain.removed.contains(&ni) || !is_default_domain(n) {
            continue;
        }
        if convs.contains(&ni) {
            if let Some(y) = n.output.first().filter(|y| !y.is_empty()) {
                add_output(&cx, &mut chain, &mut region, ni, 0, y, None);
            }
            continue;
        }
        let op = n.op_type.as_deref().unwrap_or("");
        if let Some((x, factor)) = rescale(&cx, &region, n) {
            // Its own range: a same-scale op after it quantizes at that range (the pair
            // then stays, but nothing clips).
            let y = n.output[0].clone();
            let range_of = y.clone();
            chain.removed.insert(ni);
            *chain
                .ops
                .entry(format!("{op} by a constant (folded)"))
                .or_default() += 1;
            region.insert(y.clone(), chain.tensors.len());
            chain.tensors.push(ChainTensor {
                name: y.clone(),
                source: y,
                producer: Some(ni),
                slot: 0,
                range_of,
                constant_for: None,
                rescale_of: Some((x, factor)),
            });
            continue;
        }
        let Some((role, data)) = role(op) else {
            continue;
        };
        let inputs: Vec<&String> = match data {
            DataInputs::All => n.input.iter().collect(),
            DataInputs::First => n.input.iter().take(1).collect(),
        };
        // Add and Mul may read one scalar constant (HardSwish's `x + 3`, a scale): it is
        // quantized exactly over its own value.
        let scalar = |x: &str| matches!(op, "Add" | "Mul") && is_scalar_initializer(g, x);
        let joins = inputs.iter().any(|x| region.contains_key(x.as_str()))
            && inputs.iter().all(|x| {
                !x.is_empty() && (!cx.constants.contains(x.as_str()) || scalar(x.as_str()))
            })
            && n.output
                .iter()
                .all(|y| !y.is_empty() && !cx.graph_outputs.contains(y.as_str()))
            && (op != "Resize" || resize_keeps_range(n))
            && (op != "Pad" || pads_with_zero(g, n));
        if !joins {
            continue;
        }
        for (slot, x) in inputs.iter().enumerate() {
            if cx.constants.contains(x.as_str()) {
                chain.tensors.push(ChainTensor {
                    name: (*x).clone(),
                    source: (*x).clone(),
                    producer: None,
                    slot: 0,
                    range_of: (*x).clone(),
                    constant_for: Some((ni, slot)),
                    rescale_of: None,
                });
            } else if !region.contains_key(x.as_str()) {
                add_input(&cx, &mut chain, &mut region, x);
            }
        }
        *chain.ops.entry(op.to_string()).or_default() += 1;
        let shared = (role == Role::SameScale)
            .then(|| chain.tensors[region[inputs[0].as_str()]].range_of.clone());
        for (slot, y) in n.output.iter().enumerate() {
            add_output(&cx, &mut chain, &mut region, ni, slot, y, shared.clone());
        }
    }
    chain
}

/// `Mul(x, c)`, `Mul(c, x)` or `Div(x, c)` with `x` in the region and `c` a positive finite
/// scalar initializer, whose output is no graph output: (x, the factor x is multiplied by).
fn rescale(cx: &Ctx, region: &HashMap<String, usize>, n: &pb::NodeProto) -> Option<(String, f32)> {
    let op = n.op_type.as_deref()?;
    if !matches!(op, "Mul" | "Div")
        || n.input.len() != 2
        || n.output.len() != 1
        || n.output[0].is_empty()
        || cx.graph_outputs.contains(n.output[0].as_str())
    {
        return None;
    }
    let slots: &[(usize, usize)] = if op == "Mul" {
        &[(0, 1), (1, 0)]
    } else {
        &[(0, 1)]
    };
    slots.iter().find_map(|&(xs, cs)| {
        let (x, c) = (&n.input[xs], &n.input[cs]);
        if !region.contains_key(x.as_str()) || !is_scalar_initializer(cx.g, c) {
            return None;
        }
        let t =
            cx.g.initializer
                .iter()
                .find(|t| t.name.as_ref() == Some(c))?;
        let v = *onnx::tensor_f32_values(t).ok()?.first()?;
        let factor = if op == "Div" { 1.0 / v } else { v };
        (v > 0.0 && factor.is_finite() && factor > 0.0 && factor.is_normal())
            .then(|| (x.clone(), factor))
    })
}

fn is_scalar_initializer(g: &pb::GraphProto, name: &str) -> bool {
    g.initializer.iter().any(|t| {
        t.name.as_deref() == Some(name)
            && t.dtype() == onnx::DataType::Float
            && t.dims.iter().product::<i64>() == 1
    })
}

fn is_default_domain(n: &pb::NodeProto) -> bool {
    n.domain
        .as_deref()
        .is_none_or(|d| d.is_empty() || d == "ai.onnx")
}

/// Nearest and linear resizing never leave the input's range (cubic can overshoot).
fn resize_keeps_range(n: &pb::NodeProto) -> bool {
    let mode = n
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("mode"))
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| "nearest".into());
    mode == "nearest" || mode == "linear"
}

/// A constant-mode Pad with value 0 (held by every range, which is widened to hold 0).
fn pads_with_zero(g: &pb::GraphProto, n: &pb::NodeProto) -> bool {
    let mode = n
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("mode"))
        .and_then(|a| a.s.as_deref())
        .unwrap_or(b"constant");
    let value = match n.input.get(2).filter(|v| !v.is_empty()) {
        None => Some(0.0),
        Some(v) => g
            .initializer
            .iter()
            .find(|t| t.name.as_ref() == Some(v))
            .and_then(|t| onnx::tensor_f32_values(t).ok())
            .and_then(|v| v.first().copied()),
    };
    mode == b"constant" && value == Some(0.0)
}

/// A data input from outside the region: quantized at its producer (or, for a graph input,
/// in front of the graph).
fn add_input(cx: &Ctx, chain: &mut Chain, region: &mut HashMap<String, usize>, x: &str) {
    let (producer, slot) = match cx.producer.get(x) {
        Some(&(p, s)) => (Some(p), s),
        None => (None, 0),
    };
    region.insert(x.to_string(), chain.tensors.len());
    chain.tensors.push(ChainTensor {
        name: x.to_string(),
        source: x.to_string(),
        producer,
        slot,
        range_of: x.to_string(),
        constant_for: None,
        rescale_of: None,
    });
}

/// Output `y` (slot `slot`) of node `ni` joins the region; a Relu (or Clip holding 0) that
/// alone reads it is folded into its quantizer.
fn add_output(
    cx: &Ctx,
    chain: &mut Chain,
    region: &mut HashMap<String, usize>,
    ni: usize,
    slot: usize,
    y: &str,
    shared: Option<String>,
) {
    if region.contains_key(y) {
        return;
    }
    let folded = (shared.is_none() && !cx.symmetric && !cx.graph_outputs.contains(y))
        .then(|| foldable_activation(cx, y))
        .flatten();
    let (name, range_of) = match folded {
        Some(ri) => {
            chain.removed.insert(ri);
            let op = cx.g.node[ri].op_type.clone().unwrap_or_default();
            *chain.ops.entry(format!("{op} (folded)")).or_default() += 1;
            let out = cx.g.node[ri].output[0].clone();
            (out.clone(), out)
        }
        None => (y.to_string(), shared.unwrap_or_else(|| y.to_string())),
    };
    region.insert(name.clone(), chain.tensors.len());
    chain.tensors.push(ChainTensor {
        name,
        source: y.to_string(),
        producer: Some(ni),
        slot,
        range_of,
        constant_for: None,
        rescale_of: None,
    });
}

/// The Relu, or Clip with constant bounds `min <= 0 <= max`, that alone reads `y` (and whose
/// output is no graph output): quantizing `y` with that op's output range (zero point at or
/// below the type's minimum) clamps as the op did.
fn foldable_activation(cx: &Ctx, y: &str) -> Option<usize> {
    let [(ri, 0)] = cx.consumers.get(y)?.as_slice() else {
        return None;
    };
    let r = &cx.g.node[*ri];
    if !is_default_domain(r)
        || r.output.len() != 1
        || cx.graph_outputs.contains(r.output[0].as_str())
    {
        return None;
    }
    match r.op_type.as_deref() {
        Some("Relu") => Some(*ri),
        Some("Clip") => {
            let (lo, hi) = clip_bounds(cx.g, r)?;
            (lo <= 0.0 && hi >= 0.0).then_some(*ri)
        }
        _ => None,
    }
}

/// A Clip's constant bounds: attributes before opset 11, initializer inputs after (an absent
/// bound is unbounded).
fn clip_bounds(g: &pb::GraphProto, n: &pb::NodeProto) -> Option<(f32, f32)> {
    if n.input.len() <= 1 {
        return Some((
            onnx::get_attr_float(n, "min", f32::NEG_INFINITY),
            onnx::get_attr_float(n, "max", f32::INFINITY),
        ));
    }
    let scalar = |slot: usize, default: f32| -> Option<f32> {
        let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else {
            return Some(default);
        };
        let t = g
            .initializer
            .iter()
            .find(|t| t.name.as_ref() == Some(name))?;
        let v = onnx::tensor_f32_values(t).ok()?;
        (v.len() == 1).then(|| v[0])
    };
    Some((scalar(1, f32::NEG_INFINITY)?, scalar(2, f32::INFINITY)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{f32_tensor, node};

    fn graph(
        nodes: Vec<pb::NodeProto>,
        inits: Vec<pb::TensorProto>,
        outputs: &[&str],
    ) -> pb::GraphProto {
        pb::GraphProto {
            node: nodes,
            initializer: inits,
            output: outputs
                .iter()
                .map(|o| pb::ValueInfoProto {
                    name: Some(o.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn n(op: &str, i: &[&str], o: &[&str]) -> pb::NodeProto {
        node(
            op,
            format!("{op}_{}", o[0]),
            i.iter().map(|s| s.to_string()).collect(),
            o.iter().map(|s| s.to_string()).collect(),
            vec![],
        )
    }

    #[test]
    fn silu_and_residual_add_stay_in_the_region_and_relu6_is_folded() {
        // x -> Conv -> c1 -> Sigmoid -> s; Mul(c1, s) -> m; Conv(m) -> c2 -> Clip(0, 6) -> r;
        // Add(m, r) -> a; Conv(a) -> out (graph output)
        let g = graph(
            vec![
                n("Conv", &["x", "w1"], &["c1"]),
                n("Sigmoid", &["c1"], &["s"]),
                n("Mul", &["c1", "s"], &["m"]),
                n("Conv", &["m", "w2"], &["c2"]),
                n("Clip", &["c2", "lo", "hi"], &["r"]),
                n("Add", &["m", "r"], &["a"]),
                n("Conv", &["a", "w3"], &["out"]),
            ],
            vec![f32_tensor("lo", &[], &[0.0]), f32_tensor("hi", &[], &[6.0])],
            &["out"],
        );
        let chain = plan(&g, &HashSet::from([0, 3, 6]), false);
        let names: Vec<&str> = chain.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c1", "s", "m", "r", "a", "out"]);
        assert_eq!(chain.removed, HashSet::from([4]));
        let r = &chain.tensors[3];
        assert_eq!(
            (r.source.as_str(), r.producer, r.range_of.as_str()),
            ("c2", Some(3), "r")
        );
        assert_eq!(chain.ops["Mul"], 1);
        assert_eq!(chain.ops["Clip (folded)"], 1);
    }

    #[test]
    fn same_scale_ops_share_their_input_range_and_graph_outputs_stay_float() {
        let g = graph(
            vec![
                n("Conv", &["x", "w1"], &["c1"]),
                n("MaxPool", &["c1"], &["p"]),
                n("Conv", &["p", "w2"], &["c2"]),
                n("Sigmoid", &["c2"], &["y"]),
                n("Add", &["c2", "bias"], &["z"]),
            ],
            vec![f32_tensor("bias", &[2], &[1.0, 2.0])],
            &["y", "z"],
        );
        let chain = plan(&g, &HashSet::from([0, 2]), false);
        let t: Vec<(&str, &str)> = chain
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.range_of.as_str()))
            .collect();
        // The Sigmoid writes a graph output and the Add reads a constant vector: both stay
        // float.
        assert_eq!(t, [("c1", "c1"), ("p", "c1"), ("c2", "c2")]);
    }

    #[test]
    fn a_scalar_constant_joins_add_and_mul_for_that_node_only() {
        // HardSwish as exporters write it: x * Clip(x + 3, 0, 6) * (1/6)
        let g = graph(
            vec![
                n("Conv", &["x", "w"], &["c"]),
                n("Add", &["c", "three"], &["a"]),
                n("Clip", &["a", "lo", "hi"], &["r"]),
                n("Mul", &["c", "r"], &["m"]),
                n("Mul", &["m", "sixth"], &["h"]),
                n("Conv", &["h", "w2"], &["o"]),
            ],
            vec![
                f32_tensor("three", &[], &[3.0]),
                f32_tensor("lo", &[], &[0.0]),
                f32_tensor("hi", &[], &[6.0]),
                f32_tensor("sixth", &[1], &[1.0 / 6.0]),
            ],
            &["o"],
        );
        let chain = plan(&g, &HashSet::from([0, 5]), false);
        let t: Vec<(&str, Option<(usize, usize)>)> = chain
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.constant_for))
            .collect();
        // The `* (1/6)` is a positive scalar: folded into the dequantizer of `m`.
        assert_eq!(
            t,
            [
                ("c", None),
                ("three", Some((1, 1))),
                ("r", None),
                ("m", None),
                ("h", None),
                ("o", None)
            ]
        );
        assert_eq!(chain.tensors[4].rescale_of, Some(("m".into(), 1.0 / 6.0)));
        assert_eq!(chain.removed, HashSet::from([2, 4]));
        assert!(chain.range_tensors().all(|r| r != "three" && r != "sixth"));
    }

    #[test]
    fn mul_and_div_by_a_positive_scalar_fold_into_the_dequantizer() {
        // Conv -> Div(c, 6) -> d; Mul(k, d) -> m; Mul(m, -1) -> n (negative: a QLinearMul);
        // Div(6, n) -> e (the constant divided: stays); Conv(m)
        let g = graph(
            vec![
                n("Conv", &["x", "w"], &["c"]),
                n("Div", &["c", "six"], &["d"]),
                n("Mul", &["k", "d"], &["m"]),
                n("Mul", &["m", "neg"], &["n"]),
                n("Div", &["six", "n"], &["e"]),
                n("Conv", &["m", "w2"], &["o"]),
            ],
            vec![
                f32_tensor("six", &[], &[6.0]),
                f32_tensor("k", &[1], &[0.5]),
                f32_tensor("neg", &[], &[-1.0]),
            ],
            &["o", "e"],
        );
        let chain = plan(&g, &HashSet::from([0, 5]), false);
        let r: Vec<(&str, Option<(String, f32)>)> = chain
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.rescale_of.clone()))
            .collect();
        assert_eq!(
            r,
            [
                ("c", None),
                ("d", Some(("c".into(), 1.0 / 6.0))),
                ("m", Some(("d".into(), 0.5))),
                ("neg", None),
                ("n", None),
                ("o", None)
            ]
        );
        assert_eq!(chain.removed, HashSet::from([1, 2]));
        assert_eq!(chain.ops["Div by a constant (folded)"], 1);
        assert_eq!(chain.ops["Mul by a constant (folded)"], 1);
        assert_eq!(chain.ops["Mul"], 1);
    }

    #[test]
    fn symmetric_activations_keep_the_relu() {
        let g = graph(
            vec![
                n("Conv", &["x", "w"], &["c"]),
                n("Relu", &["c"], &["r"]),
                n("Conv", &["r", "w2"], &["o"]),
            ],
            vec![],
            &["o"],
        );
        let chain = plan(&g, &HashSet::from([0, 2]), true);
        assert!(chain.removed.is_empty());
        let names: Vec<&str> = chain.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c", "r", "o"]);
    }
}
