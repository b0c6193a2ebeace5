//! Which weights a pass touches: the float32 initializers the selected ops read in their
//! weight slot ([`select_weights`]), each other one said in `skipped` with why it is left as it
//! is; and reading a selected weight's values, refusing NaN and infinities.

use super::{Error, Result, Skipped, math};
use crate::api::ops;
use crate::onnx::{self, DataType, Model, TensorData, pb};
use std::collections::HashSet;

/// Which weights a pass touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub ops: Vec<String>,
    pub exclude_nodes: HashSet<String>,
    pub min_elements: u64,
}

impl Selection {
    pub(super) fn new(ops: Vec<String>, exclude: &[String], min_elements: u64) -> Self {
        Self {
            ops,
            exclude_nodes: exclude.iter().cloned().collect(),
            min_elements,
        }
    }
}

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
