//! Folds per-channel affine ops that follow a Conv into its weights and bias, before static
//! quantization: `BatchNormalization`, and `Add`/`Sub`/`Mul`/`Div` by a constant that is a
//! scalar or one value per output channel (`[C, 1, 1]`, `[1, C, 1, 1]`), as exporters write
//! a decomposed BatchNorm. ONNX Runtime folds them at load for float models, but in a QDQ
//! graph they would sit in float between two integer convolutions. The folded Conv writes
//! the last folded op's output, so tensor names (and calibrated ranges) stay those of the
//! original graph. Exact up to float rounding (one product or sum per weight).

use crate::onnx::{self, DataType, TensorData, pb};
use std::collections::{HashMap, HashSet};

/// Folds what it can in `g`; returns how many ops went.
pub fn fold(g: &mut pb::GraphProto) -> usize {
    let mut folded = 0;
    let mut removed: HashSet<usize> = HashSet::new();
    let mut replaced: HashSet<String> = HashSet::new();
    let outputs: HashSet<String> = g.output.iter().filter_map(|v| v.name.clone()).collect();
    for ci in 0..g.node.len() {
        if g.node[ci].op_type.as_deref() != Some("Conv") || !default_domain(&g.node[ci]) {
            continue;
        }
        loop {
            let consumers = onnx::consumers(g);
            let Some(next) = foldable_next(g, &consumers, &outputs, ci) else {
                break;
            };
            let y = g.node[ci].output[0].clone();
            let Some((scale, shift)) = affine_of(g, next, &y) else {
                break;
            };
            let old: Vec<String> = g.node[ci].input.iter().skip(1).cloned().collect();
            if !apply(g, ci, &scale, &shift) {
                break;
            }
            replaced.extend(old);
            let out = g.node[next].output[0].clone();
            g.node[ci].output[0] = out;
            removed.insert(next);
            // The folded node stays in the list (indices stay valid) but reads nothing.
            g.node[next].input.clear();
            g.node[next].output.clear();
            folded += 1;
        }
    }
    if folded > 0 {
        // Weights and biases replaced by folded copies go, unless something else reads them.
        let read: HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(g.output.iter().filter_map(|v| v.name.as_deref()))
            .collect();
        // (A subgraph may read outer initializers: then nothing goes.)
        let subgraphs = g.node.iter().any(|n| {
            n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
        });
        let dead: HashSet<String> = replaced
            .into_iter()
            .filter(|r| !subgraphs && !read.contains(r.as_str()))
            .collect();
        g.initializer
            .retain(|t| !t.name.as_ref().is_some_and(|n| dead.contains(n)));
        let old = std::mem::take(&mut g.node);
        g.node = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !removed.contains(i))
            .map(|(_, n)| n)
            .collect();
    }
    folded
}

fn default_domain(n: &pb::NodeProto) -> bool {
    n.domain
        .as_deref()
        .is_none_or(|d| d.is_empty() || d == "ai.onnx")
}

/// The node that alone reads Conv `ci`'s output, when that output is no graph output.
fn foldable_next(
    g: &pb::GraphProto,
    consumers: &HashMap<&str, Vec<(usize, usize)>>,
    outputs: &HashSet<String>,
    ci: usize,
) -> Option<usize> {
    let y = g.node[ci].output.first()?;
    if outputs.contains(y) {
        return None;
    }
    let [(ni, slot)] = consumers.get(y.as_str())?.as_slice() else {
        return None;
    };
    let n = &g.node[*ni];
    let ok = default_domain(n)
        && n.output.len() == 1
        && match n.op_type.as_deref() {
            Some("Add" | "Mul") => n.input.len() == 2,
            Some("Sub" | "Div") => n.input.len() == 2 && *slot == 0,
            Some("BatchNormalization") => *slot == 0,
            _ => false,
        };
    ok.then_some(*ni)
}

fn init<'a>(g: &'a pb::GraphProto, name: &str) -> Option<&'a pb::TensorProto> {
    g.initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
}

/// A constant per output channel (or scalar): its values, or None.
fn channel_values(g: &pb::GraphProto, name: &str) -> Option<Vec<f32>> {
    let t = init(g, name)?;
    if t.dtype() != DataType::Float {
        return None;
    }
    let d: Vec<i64> = t.dims.clone();
    let per_channel = matches!(d.as_slice(), [] | [1] | [_, 1, 1] | [1, _, 1, 1]);
    per_channel
        .then(|| onnx::tensor_f32_values(t).ok())
        .flatten()
}

/// `y = x * scale + shift` per channel (vectors of length 1 broadcast).
fn affine_of(g: &pb::GraphProto, ni: usize, y: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    let n = &g.node[ni];
    let other: &str = if n.input[0] == y {
        &n.input[1]
    } else {
        &n.input[0]
    };
    Some(match n.op_type.as_deref()? {
        "Add" => (vec![1.0], channel_values(g, other)?),
        "Sub" => (
            vec![1.0],
            channel_values(g, &n.input[1])?.iter().map(|v| -v).collect(),
        ),
        "Mul" => (channel_values(g, other)?, vec![0.0]),
        "Div" => {
            let d = channel_values(g, &n.input[1])?;
            if d.iter().any(|v| *v == 0.0 || !v.is_finite()) {
                return None;
            }
            (d.iter().map(|v| 1.0 / v).collect(), vec![0.0])
        }
        "BatchNormalization" => {
            if n.input.len() != 5 || onnx::get_attr_int(n, "training_mode", 0) != 0 {
                return None;
            }
            let eps = onnx::get_attr_float(n, "epsilon", 1e-5);
            let vals = |i: usize| onnx::tensor_f32_values(init(g, &n.input[i])?).ok();
            let (s, b, m, v) = (vals(1)?, vals(2)?, vals(3)?, vals(4)?);
            let a: Vec<f32> = s
                .iter()
                .zip(&v)
                .map(|(s, v)| s / (v + eps).sqrt())
                .collect();
            let shift = b
                .iter()
                .zip(&m)
                .zip(&a)
                .map(|((b, m), a)| b - m * a)
                .collect();
            (a, shift)
        }
        _ => return None,
    })
}

/// Scales Conv `ci`'s weight rows and bias by `scale` and adds `shift` to the bias, as new
/// initializers (the old ones may be shared). False when the shapes do not fit.
fn apply(g: &mut pb::GraphProto, ci: usize, scale: &[f32], shift: &[f32]) -> bool {
    let n = &g.node[ci];
    let Some(w) = n.input.get(1).and_then(|w| init(g, w)) else {
        return false;
    };
    let Some(&cout) = w.dims.first() else {
        return false;
    };
    let cout = cout as usize;
    let fits = |v: &[f32]| v.len() == 1 || v.len() == cout;
    if !fits(scale) || !fits(shift) || w.dtype() != DataType::Float {
        return false;
    }
    let Ok(mut wv) = onnx::tensor_f32_values(w) else {
        return false;
    };
    let wdims = w.dims.clone();
    let mut bv = match n.input.get(2).filter(|b| !b.is_empty()) {
        Some(b) => match init(g, b).and_then(|t| onnx::tensor_f32_values(t).ok()) {
            Some(v) if v.len() == cout => v,
            _ => return false,
        },
        None => vec![0.0; cout],
    };
    let at = |v: &[f32], c: usize| v[if v.len() == 1 { 0 } else { c }];
    let per = wv.len() / cout.max(1);
    for c in 0..cout {
        let s = at(scale, c);
        for x in &mut wv[c * per..(c + 1) * per] {
            *x *= s;
        }
        bv[c] = bv[c] * s + at(shift, c);
    }
    let mut namer = onnx::Namer::new(g);
    let base = n.name.clone().unwrap_or_else(|| "conv".into());
    let (wn, bn) = (
        namer.fresh(&format!("{base}_folded_W")),
        namer.fresh(&format!("{base}_folded_B")),
    );
    g.initializer.push(onnx::f32_tensor(&wn, &wdims, &wv));
    g.initializer
        .push(onnx::f32_tensor(&bn, &[cout as i64], &bv));
    let n = &mut g.node[ci];
    n.input[1] = wn;
    n.input.truncate(2);
    n.input.push(bn);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{f32_tensor, node};

    #[test]
    fn a_decomposed_batchnorm_folds_into_the_conv_and_keeps_the_last_name() {
        let mut g = pb::GraphProto {
            node: vec![
                node(
                    "Conv",
                    "conv".into(),
                    vec!["x".into(), "W".into()],
                    vec!["c".into()],
                    vec![],
                ),
                node(
                    "Sub",
                    "sub".into(),
                    vec!["c".into(), "m".into()],
                    vec!["s".into()],
                    vec![],
                ),
                node(
                    "Mul",
                    "mul".into(),
                    vec!["k".into(), "s".into()],
                    vec!["p".into()],
                    vec![],
                ),
                node(
                    "Add",
                    "add".into(),
                    vec!["p".into(), "b".into()],
                    vec!["a".into()],
                    vec![],
                ),
                node(
                    "Relu",
                    "relu".into(),
                    vec!["a".into()],
                    vec!["y".into()],
                    vec![],
                ),
            ],
            initializer: vec![
                f32_tensor("W", &[2, 1, 1, 1], &[1.0, 2.0]),
                f32_tensor("m", &[1, 2, 1, 1], &[0.5, 1.0]),
                f32_tensor("k", &[2, 1, 1], &[2.0, 3.0]),
                f32_tensor("b", &[], &[0.25]),
            ],
            ..Default::default()
        };
        assert_eq!(fold(&mut g), 3);
        let ops: Vec<&str> = g
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert_eq!(ops, ["Conv", "Relu"]);
        assert_eq!(g.node[0].output[0], "a");
        let get = |name: &str| onnx::tensor_f32_values(init(&g, name).unwrap()).unwrap();
        // ((w x - m) * k + b): weights w*k, bias -m*k + b
        assert_eq!(get(&g.node[0].input[1]), [2.0, 6.0]);
        assert_eq!(get(&g.node[0].input[2]), [-0.75, -2.75]);
    }
}
