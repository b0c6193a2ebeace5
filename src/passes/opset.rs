//! Lossless upgrade of a graph's default-domain opset, for forms that need a newer one:
//! per-channel `DequantizeLinear` (`axis`) needs 13, int4 types need 21.
//!
//! Most ops keep their meaning across versions; the ones whose signature changed between 11
//! and 21 are rewritten to the new form with the same values: attributes that became inputs
//! (`Dropout` ratio at 12; `Split` split, `Squeeze`/`Unsqueeze`/`ReduceSum` axes at 13; the
//! other `Reduce*` axes at 18), `Softmax`/`LogSoftmax`/`Hardmax` (13: one axis instead of a
//! 2-D coercion; kept exact with `Flatten -> op -> Reshape` where the axis is not the
//! last), `RoiAlign` (16: default coordinate mode changed), `GridSample` (20: mode names).
//! An op that cannot be carried over is refused by name (the caller then says what to do).
//! Subgraphs (`If`, `Loop`, `Scan`) are converted too. The pipeline checks the result by
//! running both models with ONNX Runtime on the dataset.

use crate::onnx::{self, Model, Namer, pb};

/// Lowest source opset handled (Clip, Pad, Resize, Slice, TopK changed form before 11).
pub const MIN_SOURCE: i64 = 11;

/// What an upgrade did, for the report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Upgrade {
    pub from: i64,
    pub to: i64,
    /// Op type -> nodes rewritten.
    pub rewritten: std::collections::BTreeMap<String, usize>,
}

impl Upgrade {
    pub fn describe(&self) -> String {
        let ops: Vec<String> = self
            .rewritten
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        format!(
            "graph upgraded from opset {} to {} ({})",
            self.from,
            self.to,
            if ops.is_empty() {
                "no node changed form".to_string()
            } else {
                format!("rewritten: {}", ops.join(", "))
            }
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error(
        "the model imports opset {from}; upgrading it to {to} is supported from opset {MIN_SOURCE}: re-export the model at opset {to} or later"
    )]
    TooOld { from: i64, to: i64 },
    #[error(
        "node `{node}` ({op}) cannot be carried from opset {from} to {to} losslessly: re-export the model at opset {to} or later, or exclude the form that needs it"
    )]
    Unconvertible {
        node: String,
        op: String,
        from: i64,
        to: i64,
    },
}

/// Upgrades `model`'s default-domain opset to `to` (no-op when it is already there).
pub fn upgrade(model: &mut Model, to: i64) -> Result<Upgrade, Error> {
    let from = onnx::default_opset(&model.proto).unwrap_or(0);
    let mut up = Upgrade {
        from,
        to,
        ..Default::default()
    };
    if from >= to {
        up.to = from;
        return Ok(up);
    }
    if from < MIN_SOURCE {
        return Err(Error::TooOld { from, to });
    }
    let mut namer = Namer::new(model.graph());
    let mut cx = Cx {
        from,
        to,
        namer: &mut namer,
        up: &mut up,
    };
    convert_graph(&mut cx, model.graph_mut())?;
    for o in &mut model.proto.opset_import {
        if o.domain
            .as_deref()
            .is_none_or(|d| d.is_empty() || d == "ai.onnx")
        {
            o.version = Some(to);
        }
    }
    // IR versions that can hold the new opset (ONNX's table: 13 -> 7, 21 -> 10).
    let ir = if to >= 21 { 10 } else { 7 };
    if model.proto.ir_version.unwrap_or(0) < ir {
        model.proto.ir_version = Some(ir);
    }
    Ok(up)
}

struct Cx<'a> {
    from: i64,
    to: i64,
    namer: &'a mut Namer,
    up: &'a mut Upgrade,
}

impl Cx<'_> {
    /// The op's form changed at opset `v`, inside the upgrade's span.
    fn crosses(&self, v: i64) -> bool {
        self.from < v && self.to >= v
    }
}

fn convert_graph(cx: &mut Cx, g: &mut pb::GraphProto) -> Result<(), Error> {
    let old = std::mem::take(&mut g.node);
    let mut inits: Vec<pb::TensorProto> = Vec::new();
    for mut n in old {
        for a in &mut n.attribute {
            if let Some(sub) = a.g.as_mut() {
                convert_graph(cx, sub)?;
            }
            for sub in &mut a.graphs {
                convert_graph(cx, sub)?;
            }
        }
        if n.domain
            .as_deref()
            .is_some_and(|d| !d.is_empty() && d != "ai.onnx")
        {
            g.node.push(n);
            continue;
        }
        let op = n.op_type.clone().unwrap_or_default();
        let before = g.node.len();
        let changed = convert_node(cx, g, &mut inits, n)?;
        if changed {
            *cx.up.rewritten.entry(op).or_default() += 1;
        }
        debug_assert!(g.node.len() > before);
    }
    g.initializer.extend(inits);
    Ok(())
}

fn take_attr(n: &mut pb::NodeProto, name: &str) -> Option<pb::AttributeProto> {
    let i = n
        .attribute
        .iter()
        .position(|a| a.name.as_deref() == Some(name))?;
    Some(n.attribute.remove(i))
}

fn i64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(onnx::DataType::Int64.to_i32()),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn unconvertible(cx: &Cx, n: &pb::NodeProto) -> Error {
    Error::Unconvertible {
        node: n.name.clone().unwrap_or_default(),
        op: n.op_type.clone().unwrap_or_default(),
        from: cx.from,
        to: cx.to,
    }
}

/// An int list attribute moved to input `slot` (an int64 initializer); absent stays absent.
fn ints_to_input(
    cx: &mut Cx,
    n: &mut pb::NodeProto,
    inits: &mut Vec<pb::TensorProto>,
    attr: &str,
    slot: usize,
) -> bool {
    let Some(a) = take_attr(n, attr) else {
        return false;
    };
    let base = format!("{}_{attr}", n.name.as_deref().unwrap_or("node"));
    let name = cx.namer.fresh(&base);
    inits.push(i64_tensor(&name, &a.ints));
    while n.input.len() < slot {
        n.input.push(String::new());
    }
    n.input.insert(slot, name);
    true
}

/// Rewrites one node for the new opset, pushing it (or its replacement) onto `g`.
/// Returns whether its form changed.
fn convert_node(
    cx: &mut Cx,
    g: &mut pb::GraphProto,
    inits: &mut Vec<pb::TensorProto>,
    mut n: pb::NodeProto,
) -> Result<bool, Error> {
    let op = n.op_type.clone().unwrap_or_default();
    const REDUCE_18: &[&str] = &[
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    ];
    let changed = match op.as_str() {
        "Dropout" if cx.crosses(12) => match take_attr(&mut n, "ratio") {
            Some(a) => {
                let name = cx
                    .namer
                    .fresh(&format!("{}_ratio", n.name.as_deref().unwrap_or("dropout")));
                inits.push(onnx::f32_tensor(&name, &[], &[a.f.unwrap_or(0.5)]));
                n.input.truncate(1);
                n.input.push(name);
                true
            }
            None => false,
        },
        "Split" if cx.crosses(13) => ints_to_input(cx, &mut n, inits, "split", 1),
        "Squeeze" | "Unsqueeze" | "ReduceSum" if cx.crosses(13) => {
            ints_to_input(cx, &mut n, inits, "axes", 1)
        }
        r if REDUCE_18.contains(&r) && cx.crosses(18) => {
            ints_to_input(cx, &mut n, inits, "axes", 1)
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if cx.crosses(13) => {
            return Ok(one_axis(cx, g, n));
        }
        "RoiAlign"
            if cx.crosses(16)
                && !n
                    .attribute
                    .iter()
                    .any(|a| a.name.as_deref() == Some("coordinate_transformation_mode")) =>
        {
            n.attribute.push(str_attr(
                "coordinate_transformation_mode",
                "output_half_pixel",
            ));
            true
        }
        "GridSample" if cx.crosses(20) => {
            let mut changed = false;
            for a in &mut n.attribute {
                if a.name.as_deref() == Some("mode") {
                    let new: &[u8] = match a.s.as_deref() {
                        Some(s) if s == b"bilinear" => b"linear",
                        Some(s) if s == b"bicubic" => b"cubic",
                        _ => continue,
                    };
                    a.s = Some(new.to_vec());
                    changed = true;
                }
            }
            changed
        }
        // Semantics changed with no equivalent rewrite here.
        "DFT" if cx.crosses(20) => return Err(unconvertible(cx, &n)),
        "GroupNormalization" if cx.crosses(21) => return Err(unconvertible(cx, &n)),
        "Upsample" | "Scatter" => return Err(unconvertible(cx, &n)),
        _ => false,
    };
    g.node.push(n);
    Ok(changed)
}

fn str_attr(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        ..Default::default()
    }
}

/// Softmax-like ops before 13 coerce the input to 2-D at `axis` (default 1) and normalise
/// the second dimension; from 13 they normalise one axis (default -1). The last axis is the
/// same either way; any other is written as `Flatten(axis) -> op(axis 1) -> Reshape(shape)`.
fn one_axis(cx: &mut Cx, g: &mut pb::GraphProto, mut n: pb::NodeProto) -> bool {
    let axis = onnx::get_attr_int(&n, "axis", 1);
    let rank = rank_of(g, &n.input[0]);
    let last = axis == -1 || rank.is_some_and(|r| axis == r - 1);
    n.attribute.retain(|a| a.name.as_deref() != Some("axis"));
    if last {
        n.attribute.push(onnx::attr_int("axis", -1));
        g.node.push(n);
        return rank.is_none_or(|r| axis != r - 1) && axis != -1;
    }
    let base = n.name.clone().unwrap_or_else(|| "softmax".into());
    let x = n.input[0].clone();
    let y = n.output[0].clone();
    let flat = cx.namer.fresh(&format!("{base}_2d"));
    let soft = cx.namer.fresh(&format!("{base}_2d_out"));
    let shape = cx.namer.fresh(&format!("{base}_shape"));
    g.node.push(onnx::node(
        "Flatten",
        cx.namer.fresh(&format!("{base}_Flatten")),
        vec![x.clone()],
        vec![flat.clone()],
        vec![onnx::attr_int("axis", axis)],
    ));
    g.node.push(onnx::node(
        "Shape",
        cx.namer.fresh(&format!("{base}_Shape")),
        vec![x],
        vec![shape.clone()],
        vec![],
    ));
    n.input[0] = flat;
    n.output[0] = soft.clone();
    n.attribute.push(onnx::attr_int("axis", 1));
    g.node.push(n);
    g.node.push(onnx::node(
        "Reshape",
        cx.namer.fresh(&format!("{base}_Reshape")),
        vec![soft, shape],
        vec![y],
        vec![],
    ));
    true
}

/// The rank of value `name` where the graph records its shape.
fn rank_of(g: &pb::GraphProto, name: &str) -> Option<i64> {
    let v = g
        .input
        .iter()
        .chain(&g.value_info)
        .chain(&g.output)
        .find(|v| v.name.as_deref() == Some(name))?;
    match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(t.shape.as_ref()?.dim.len() as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(opset: i64, nodes: Vec<pb::NodeProto>) -> Model {
        Model {
            proto: pb::ModelProto {
                ir_version: Some(6),
                opset_import: vec![pb::OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(opset),
                }],
                graph: Some(pb::GraphProto {
                    node: nodes,
                    ..Default::default()
                }),
                ..Default::default()
            },
            path: Default::default(),
            file_bytes: 0,
            had_external_data: false,
        }
    }

    fn n(op: &str, i: &[&str], o: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
        onnx::node(
            op,
            format!("{op}_{}", o[0]),
            i.iter().map(|s| s.to_string()).collect(),
            o.iter().map(|s| s.to_string()).collect(),
            attrs,
        )
    }

    #[test]
    fn attributes_that_became_inputs_move_to_initializers() {
        let mut m = model(
            11,
            vec![
                n(
                    "Unsqueeze",
                    &["x"],
                    &["u"],
                    vec![onnx::attr_ints("axes", &[0, 2])],
                ),
                n(
                    "Split",
                    &["u"],
                    &["a", "b"],
                    vec![onnx::attr_ints("split", &[1, 2])],
                ),
                n(
                    "ReduceMean",
                    &["a"],
                    &["r"],
                    vec![onnx::attr_ints("axes", &[1])],
                ),
            ],
        );
        let up = upgrade(&mut m, 13).unwrap();
        assert_eq!(onnx::default_opset(&m.proto), Some(13));
        assert_eq!(m.proto.ir_version, Some(7));
        let g = m.graph();
        assert_eq!(g.node[0].input.len(), 2);
        assert!(g.node[0].attribute.is_empty());
        let axes = g
            .initializer
            .iter()
            .find(|t| t.name.as_ref() == Some(&g.node[0].input[1]));
        assert_eq!(axes.unwrap().int64_data, [0, 2]);
        assert_eq!(g.node[1].input.len(), 2);
        // ReduceMean keeps its attribute until 18.
        assert_eq!(g.node[2].attribute.len(), 1);
        assert_eq!(up.rewritten.len(), 2, "{up:?}");
        let up = upgrade(&mut m, 21).unwrap();
        assert_eq!(up.from, 13);
        assert_eq!(m.graph().node[2].input.len(), 2);
        assert_eq!(m.proto.ir_version, Some(10));
    }

    #[test]
    fn softmax_on_an_inner_axis_keeps_its_2d_meaning() {
        let mut m = model(
            12,
            vec![n(
                "Softmax",
                &["x"],
                &["y"],
                vec![onnx::attr_int("axis", 1)],
            )],
        );
        upgrade(&mut m, 13).unwrap();
        let ops: Vec<&str> = m
            .graph()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert_eq!(ops, ["Flatten", "Shape", "Softmax", "Reshape"]);
        assert_eq!(m.graph().node[3].output[0], "y");
    }

    #[test]
    fn old_models_and_unconvertible_ops_are_refused_by_name() {
        let mut m = model(10, vec![]);
        let e = upgrade(&mut m, 13).unwrap_err().to_string();
        assert!(e.contains("opset 10") && e.contains("re-export"), "{e}");
        let mut m = model(
            17,
            vec![n("GroupNormalization", &["x", "s", "b"], &["y"], vec![])],
        );
        let e = upgrade(&mut m, 21).unwrap_err().to_string();
        assert!(
            e.contains("GroupNormalization") && e.contains("GroupNormalization_y"),
            "{e}"
        );
    }
}
