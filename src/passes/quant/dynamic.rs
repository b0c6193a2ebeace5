//! The dynamic int8 form, in the operator pattern ONNX Runtime's own `quantize_dynamic`
//! emits and its graph optimizer fuses into one integer kernel: `Y = MatMul(A, W)` becomes
//! `DynamicQuantizeLinear(A) -> MatMulInteger(A_q, W_q, A_zp, W_zp) -> Cast -> Mul(·, A_scale·W_scale)`
//! (Gemm: alpha folded into the scales, its bias added after). Conv and ConvTranspose have
//! no integer kernel worth using on CPU: their weights are stored as in the weight-only form.
//! Embedding tables in the row form ([`super::gather`]).

use super::QuantizeConfig;
use super::int8::{self, Form, Int8Weight, Plan, unsupported};
use crate::onnx::{self, Model, f32_tensor, pb, tensor_f32_values};
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::{Weight, node_label};
use crate::passes::{PassReport, Result, Skipped};
use std::collections::HashMap;

pub(super) fn apply(cfg: &QuantizeConfig, model: &mut Model) -> Result<PassReport> {
    int8::run(cfg, model, &mut Dynamic::default())
}

/// The form's state across weights: the activations already quantized (one
/// `DynamicQuantizeLinear` per tensor, read by every MatMulInteger on it).
#[derive(Default)]
struct Dynamic {
    /// Activation -> its (int8 values, scale, zero point).
    activations: HashMap<String, [String; 3]>,
}

impl Form for Dynamic {
    fn description(&self, cfg: &QuantizeConfig) -> String {
        format!(
            "int8 dynamic (MatMulInteger), {}, {}",
            int8::granularity(cfg),
            int8::weight_bits(cfg.weight_range, cfg.weight_range_default)
        )
    }

    fn check(&self, opset: i64) -> Result<()> {
        if opset < 11 {
            return Err(unsupported(format!(
                "the model imports opset {opset}; dynamic quantization needs opset >= 11 (DynamicQuantizeLinear): re-export the model or use mode: weightOnly"
            )));
        }
        Ok(())
    }

    fn plan(&self, g: &pb::GraphProto, w: &Weight, skipped: &mut Vec<Skipped>) -> Option<Plan> {
        match w.users[0].1.as_str() {
            // ConvInteger on ORT's CPU provider takes uint8 weights only; symmetric int8 conv
            // weights are stored and dequantized instead (smaller, float math).
            "Conv" => Some(Plan::Dequantized),
            // No integer ConvTranspose kernel in ONNX Runtime's CPU provider: weight-only.
            "ConvTranspose" => Some(Plan::Dequantized),
            "Gemm" => gemm_plan(g, w, skipped),
            _ => Some(Plan::Integer { transpose: false }),
        }
    }

    fn write(
        &mut self,
        rw: &mut Rewrite,
        g: &pb::GraphProto,
        w: &Weight,
        plan: Plan,
        q: &Int8Weight,
    ) -> Result<()> {
        if plan == Plan::Dequantized {
            int8::dequantize_in_front(rw, w, q);
            return Ok(());
        }
        for &(ni, ref op) in &w.users {
            let node = &g.node[ni];
            let scale = user_scale(rw, w, q, op, node);
            let a = self.quantized_input(rw, ni, &node.input[0]);
            let mut nodes = matmul_integer(rw, node, ni, q, a, scale);
            if let Some((bias, beta)) = gemm_bias(node) {
                let bias = scaled_bias(rw, g, bias, beta)?;
                let (base, y) = (node_label(node, ni), node.output[0].clone());
                let scaled = nodes.last().expect("the output scale Mul").output[0].clone();
                nodes.push(onnx::node(
                    "Add",
                    rw.fresh(&format!("{base}_bias_add")),
                    vec![scaled, bias],
                    vec![y],
                    vec![],
                ));
            }
            rw.replace.insert(ni, nodes);
        }
        Ok(())
    }
}

impl Dynamic {
    /// The int8 form of activation `a`: a `DynamicQuantizeLinear` in front of node `ni`, the
    /// first to read it.
    fn quantized_input(&mut self, rw: &mut Rewrite, ni: usize, a: &str) -> [String; 3] {
        self.activations
            .entry(a.to_string())
            .or_insert_with(|| {
                let names = [
                    rw.fresh(&format!("{a}_quantized")),
                    rw.fresh(&format!("{a}_scale")),
                    rw.fresh(&format!("{a}_zero_point")),
                ];
                let name = rw.fresh(&format!("{a}_DynamicQuantizeLinear"));
                rw.before.entry(ni).or_default().push(onnx::node(
                    "DynamicQuantizeLinear",
                    name,
                    vec![a.to_string()],
                    names.to_vec(),
                    vec![],
                ));
                names
            })
            .clone()
    }
}

/// Decides how a Gemm's weight is written, or records why it stays float.
fn gemm_plan(g: &pb::GraphProto, w: &Weight, skipped: &mut Vec<Skipped>) -> Option<Plan> {
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

/// The weight scales a user multiplies by: the weight's own, or (Gemm with alpha != 1) a
/// copy with alpha folded in.
fn user_scale(
    rw: &mut Rewrite,
    w: &Weight,
    q: &Int8Weight,
    op: &str,
    node: &pb::NodeProto,
) -> String {
    let alpha = if op == "Gemm" {
        onnx::get_attr_float(node, "alpha", 1.0)
    } else {
        1.0
    };
    let scales: Vec<f32> = q.scales.iter().map(|s| s * alpha).collect();
    let name = if alpha == 1.0 {
        q.scale.clone()
    } else {
        rw.fresh(&format!("{}_scale_alpha", w.name))
    };
    if !rw.adds_init(&name) {
        rw.new_inits.push(f32_tensor(&name, &q.sdims, &scales));
    }
    name
}

/// `MatMulInteger(A_q, W_q, A_zp, W_zp) -> Cast -> Mul(·, A_scale·W_scale)` for node `ni`;
/// the last Mul writes the node's output, or (a Gemm with a bias) the input of its bias Add.
fn matmul_integer(
    rw: &mut Rewrite,
    node: &pb::NodeProto,
    ni: usize,
    q: &Int8Weight,
    [aq, ascale, azp]: [String; 3],
    scale: String,
) -> Vec<pb::NodeProto> {
    let base = node_label(node, ni);
    let y = node.output[0].clone();
    let mmi = rw.fresh(&format!("{y}_MatMulInteger"));
    let cast = rw.fresh(&format!("{y}_cast"));
    let smul = rw.fresh(&format!("{y}_scales_mul"));
    let scaled = if gemm_bias(node).is_some() {
        rw.fresh(&format!("{y}_no_bias"))
    } else {
        y.clone()
    };
    vec![
        onnx::node(
            "MatMulInteger",
            rw.fresh(&format!("{base}_MatMulInteger")),
            vec![aq, q.q.clone(), azp, q.zero_point.clone()],
            vec![mmi.clone()],
            vec![],
        ),
        onnx::cast_to_float(rw.fresh(&format!("{base}_cast")), mmi, cast.clone()),
        onnx::node(
            "Mul",
            rw.fresh(&format!("{base}_scales_mul")),
            vec![ascale, scale],
            vec![smul.clone()],
            vec![],
        ),
        onnx::node(
            "Mul",
            rw.fresh(&format!("{base}_output_scale_mul")),
            vec![cast, smul],
            vec![scaled],
            vec![],
        ),
    ]
}

/// The bias a Gemm adds: C itself (beta 1), or beta·C folded into a new initializer
/// (`gemm_plan` allows only an initializer C there).
fn scaled_bias(rw: &mut Rewrite, g: &pb::GraphProto, bias: String, beta: f32) -> Result<String> {
    if beta == 1.0 {
        return Ok(bias);
    }
    let c = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(bias.as_str()))
        .expect("checked in gemm_plan");
    let v: Vec<f32> = tensor_f32_values(c)?.iter().map(|x| x * beta).collect();
    let n = rw.fresh(&format!("{bias}_beta"));
    rw.new_inits.push(f32_tensor(&n, &c.dims, &v));
    Ok(n)
}

/// Gemm's C input and beta, when it has a bias that contributes.
fn gemm_bias(node: &pb::NodeProto) -> Option<(String, f32)> {
    if node.op_type.as_deref() != Some("Gemm") {
        return None;
    }
    let beta = onnx::get_attr_float(node, "beta", 1.0);
    node.input
        .get(2)
        .filter(|c| !c.is_empty() && beta != 0.0)
        .map(|c| (c.clone(), beta))
}
