//! The weight side of the static form: a weight stored int8 and dequantized in front of its
//! users, each user reading its data input quantized, and its bias stored int32 at the scale
//! of input times weight (Conv's and Gemm's C, or the Add of a constant after a MatMul).

use super::Qdq;
use super::activations::Act;
use crate::onnx::{self, DataType, TensorData, attr_int, f32_tensor, int8_tensor, pb, raw_tensor};
use crate::passes::quant::QuantizeConfig;
use crate::passes::quant::int8::{self, tensor_report};
use crate::passes::weights::{Weight, weight_values};
use crate::passes::{PassReport, Result, math};
use math::{ChannelLayout, Quantized};
use std::collections::{HashMap, HashSet};

impl Qdq<'_> {
    /// Why a weight stays float, if it does: every user must be expressible (a calibrated
    /// input; a Conv's output quantized with the region; Gemm alpha 1; a bias that is one
    /// float initializer value per output channel).
    pub(super) fn unexpressible(
        &self,
        w: &Weight,
        chain_outputs: &HashSet<usize>,
    ) -> Option<String> {
        let g = self.g;
        let (_, out_axis) = w.axes(g);
        let channels = w.dims[out_axis];
        for (ni, op) in &w.users {
            let n = &g.node[*ni];
            let x = &n.input[0];
            if !self.ranges.contains_key(x) {
                return Some(format!("no calibrated range for its input `{x}`"));
            } else if op == "Conv" && !chain_outputs.contains(ni) {
                return Some("no calibrated range for its output".into());
            } else if op == "Gemm" && onnx::get_attr_float(n, "alpha", 1.0) != 1.0 {
                return Some("Gemm with alpha != 1 is left in float".into());
            } else if let Some(b) = bias_of(n) {
                let ok = self.init_of(&b).is_some_and(|i| {
                    let t = &g.initializer[i];
                    let d: Vec<i64> = t.dims.clone();
                    t.dtype() == DataType::Float
                        && (d == [channels as i64] || (op == "Gemm" && d == [1, channels as i64]))
                });
                if !ok {
                    return Some(format!(
                        "bias `{b}` is computed or not one float per output channel"
                    ));
                }
            }
        }
        None
    }

    fn init_of(&self, name: &str) -> Option<usize> {
        self.g
            .initializer
            .iter()
            .position(|t| t.name.as_deref() == Some(name))
    }

    /// Stores a weight int8 (dequantized in front of its first user) and rewires each user:
    /// its weight, its data input quantized, its bias int32.
    pub(super) fn quantize_weight(
        &mut self,
        cfg: &QuantizeConfig,
        w: &Weight,
        report: &mut PassReport,
    ) -> Result<()> {
        let g = self.g;
        let (in_axis, out_axis) = w.axes(g);
        let codes = int8::codes(cfg.weight_range, &w.users[0].1, &w.dims, in_axis, out_axis);
        let values = weight_values(self.model, w)?;
        let layout = if cfg.per_channel {
            ChannelLayout::along(&w.dims, out_axis)
        } else {
            ChannelLayout::PER_TENSOR
        };
        let q = math::quantize_symmetric(&values, layout, codes);
        drop(values);
        report.tensors.push(tensor_report(g, w, &q));
        let Quantized { values, scales, .. } = q;
        let sdims: Vec<i64> = if cfg.per_channel {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let wd = self.store_weight(cfg, w, values, &scales, &sdims, out_axis);
        for (ni, op) in &w.users {
            let ni = *ni;
            self.rw.input_renames.push((ni, 1, wd.clone()));
            let act = self.data_input(ni);
            self.int32_bias(cfg, ni, op, w.dims[out_axis], &scales, &sdims, &act)?;
            // Conv's output was quantized with the region.
        }
        Ok(())
    }

    /// The int8 weight, its scales and zero points, and the `DequantizeLinear` in front of
    /// its first user; returns the name the users read.
    fn store_weight(
        &mut self,
        cfg: &QuantizeConfig,
        w: &Weight,
        values: Vec<i8>,
        scales: &[f32],
        sdims: &[i64],
        out_axis: usize,
    ) -> String {
        let (first, _) = w.users[0];
        let idims: Vec<i64> = w.dims.iter().map(|&d| d as i64).collect();
        let rw = &mut self.rw;
        let wq = rw.fresh(&format!("{}_quantized", w.name));
        let ws = rw.fresh(&format!("{}_scale", w.name));
        let wz = rw.fresh(&format!("{}_zero_point", w.name));
        let wd = rw.fresh(&format!("{}_dequantized", w.name));
        rw.drop_inits.insert(w.init);
        rw.new_inits.push(int8_tensor(&wq, &idims, values));
        rw.new_inits.push(f32_tensor(&ws, sdims, scales));
        rw.new_inits
            .push(int8_tensor(&wz, sdims, vec![0; scales.len()]));
        let dq = onnx::node(
            "DequantizeLinear",
            rw.fresh(&format!("{}_DequantizeLinear", w.name)),
            vec![wq, ws, wz],
            vec![wd.clone()],
            if cfg.per_channel {
                vec![attr_int("axis", out_axis as i64)]
            } else {
                vec![]
            },
        );
        rw.before.entry(first).or_default().push(dq);
        wd
    }

    /// The quantized form of node `ni`'s data input: the region's, or a pair of its own in
    /// front of the node (shared by every later reader).
    fn data_input(&mut self, ni: usize) -> Act {
        let x = self.g.node[ni].input[0].clone();
        let act = match self.acts.get(&x) {
            Some(act) => act.clone(),
            None => {
                let read = self.rw.fresh(&format!("{x}_dequantized"));
                let (scale, nodes) = self.pair_at(&x, &x, &x, &read);
                let act = Act::of(scale, read, &nodes);
                self.rw.before.entry(ni).or_default().extend(nodes);
                self.acts.insert(x.clone(), act.clone());
                act
            }
        };
        if act.read != x {
            self.rw.input_renames.push((ni, 0, act.read.clone()));
        }
        act
    }

    /// The bias, int32 at scale_x · scale_w (beta folded in): Conv's and Gemm's input C, or
    /// the Add of a constant after a MatMul (ORT fuses MatMul + that Add into QGemm for 2-D
    /// inputs; with a float bias it would run float Gemm).
    #[allow(clippy::too_many_arguments)]
    fn int32_bias(
        &mut self,
        cfg: &QuantizeConfig,
        ni: usize,
        op: &str,
        channels: usize,
        wscales: &[f32],
        sdims: &[i64],
        act: &Act,
    ) -> Result<()> {
        let g = self.g;
        let n = &g.node[ni];
        let bias = match op {
            "MatMul" => matmul_bias(g, &self.consumers, &self.graph_outputs, ni, channels),
            _ => bias_of(n).map(|b| (ni, 2, b)),
        };
        let Some((bn, slot, b)) = bias else {
            return Ok(());
        };
        let bi = self.init_of(&b).expect("checked above");
        let beta = if op == "Gemm" {
            onnx::get_attr_float(n, "beta", 1.0)
        } else {
            1.0
        };
        let bv = onnx::tensor_f32_values(&g.initializer[bi])?;
        let scales: Vec<f32> = wscales.iter().map(|s| s * act.scale).collect();
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
        let rw = &mut self.rw;
        let bqn = rw.fresh(&format!("{b}_quantized"));
        let bsn = rw.fresh(&format!("{b}_scale"));
        let bdn = rw.fresh(&format!("{b}_dequantized"));
        rw.new_inits
            .push(int32_tensor(&bqn, &[channels as i64], &bq));
        rw.new_inits.push(f32_tensor(&bsn, sdims, &scales));
        // No zero point: 0 by default, and ORT fuses without it (4 bytes a channel).
        let dq = onnx::node(
            "DequantizeLinear",
            rw.fresh(&format!("{b}_DequantizeLinear")),
            vec![bqn, bsn],
            vec![bdn.clone()],
            if cfg.per_channel {
                vec![attr_int("axis", 0)]
            } else {
                vec![]
            },
        );
        rw.before.entry(bn).or_default().push(dq);
        rw.input_renames.push((bn, slot, bdn));
        if op == "Gemm" && beta != 1.0 {
            self.set_beta_one.push(ni);
        }
        *self.bias_rewired.entry(bi).or_default() += 1;
        Ok(())
    }

    /// A float bias no node reads any more goes.
    pub(super) fn drop_unread_biases(&mut self) {
        for (&bi, &n) in &self.bias_rewired {
            let name = self.g.initializer[bi].name.as_deref().unwrap_or("");
            if self.consumers.get(name).map_or(0, |u| u.len()) == n
                && !self.graph_outputs.contains(name)
            {
                self.rw.drop_inits.insert(bi);
            }
        }
    }
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

pub(super) fn int32_tensor(name: &str, dims: &[i64], values: &[i32]) -> pb::TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, DataType::Int32, raw)
}
