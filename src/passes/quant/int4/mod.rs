//! 4-bit blocked weight-only quantization, in the two com.microsoft forms ONNX Runtime runs
//! on CPU (layouts verified in hack/MODELS.md, "4-bit forms that run on CPU"):
//!
//! - `Y = MatMul(A, W)` and `Y = Gemm(A, W[, C])` become `MatMulNBits(A, B, scales[, zp][, bias])`:
//!   W [K, N] is stored transposed, each of its N rows cut into blocks of `block_size` along K
//!   (K zero-padded to whole blocks), codes packed two to a byte low nibble first, one scale per
//!   block (and one 4-bit zero point per block when asymmetric; symmetric blocks imply 8).
//! - `Y = Gather(W, ids)` on an embedding table [V, D] becomes `GatherBlockQuantized` with the
//!   rows [V, D/2] packed the same way (not padded: ORT derives D from the packed width), so
//!   only the rows read are dequantized.
//!
//! Conv and the other ops have no 4-bit kernel in ONNX Runtime and are skipped with a reason.
//!
//! Numerics: round-to-nearest as ORT's `MatMulNBitsQuantizer` (MLAS `MlasQuantizeBlockwise`)
//! does it (on paraphrase-MiniLM-L3's 18 MatMul weights the scales are bit-identical to its
//! output, and 4 of 2,654,208 code bytes differ, each on a value within an ulp of a rounding
//! tie), and optionally (`Int4Config::refine`, off by default: it did not pay
//! for its time, see there) an error-minimising refinement per block: a grid of scales and
//! zero points, then least-squares refits of the scale for the chosen codes, keeping the RTN
//! candidate, so a block's squared error never grows.

use super::int8::unsupported;
use super::{gather, ms};
use crate::onnx::{self, DataType, Model, TensorData, attr_int, f32_tensor, pb};
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::{Selection, Weight, node_label, non_finite, select_weights};
use crate::passes::{PassReport, Result, Skipped, TensorReport, math};
use blocks::{BlockLayout, Numerics, Packed, quantize_blocks};
use bytes::Bytes;

mod blocks;

/// The settings of the 4-bit form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int4Config {
    /// Elements per block sharing one scale: 16, 32, 64, 128 or 256.
    pub block_size: usize,
    /// No zero points (implied 8) when true; one 4-bit zero point per block when false.
    pub symmetric: bool,
    /// `MatMulNBits` `accuracy_level` (0 leaves it unset).
    pub accuracy_level: u32,
    /// Search each block's scale (and zero point) for the least squared error after RTN.
    /// Not the default, and not in the spec: on paraphrase-MiniLM-L3-v2 (blocks of 32) it
    /// lowered the weights' relative error 0.089 -> 0.084 but moved the pooled output's
    /// cosine to fp32 by +0.0005 mean / -0.002 min (symmetric) and +0.0015 / +0.0026
    /// (asymmetric), for 6-10x the compress time (0.7 s -> 4-7 s on a loaded 2-core machine).
    pub refine: bool,
}

impl Default for Int4Config {
    fn default() -> Self {
        Self {
            block_size: 32,
            symmetric: true,
            accuracy_level: 0,
            refine: false,
        }
    }
}

/// Rewrites the selected weights into the 4-bit forms.
pub fn apply(cfg: &Int4Config, select: &Selection, model: &mut Model) -> Result<PassReport> {
    check(cfg)?;
    let mut report = PassReport {
        pass: "quantize".into(),
        description: describe(cfg),
        ..Default::default()
    };
    let weights = select_weights(model, select, &mut report.skipped);
    let g = model.graph();
    let mut rw = Rewrite::new(g);
    for w in &weights {
        let Some(plan) = plan_for(g, w, &mut report.skipped) else {
            continue;
        };
        let (q, layout) = quantize(cfg, model, w, plan)?;
        let (first, _) = w.users[0];
        report.tensors.push(TensorReport {
            tensor: w.name.clone(),
            node: node_label(&g.node[first], first),
            op: w.users[0].1.clone(),
            elements: w.numel() as u64,
            sparsity: q.zero_codes as f64 / w.numel().max(1) as f64,
            scales: Some(q.scales.len()),
            max_abs_error: Some(q.max_abs_error),
            sqnr_db: math::sqnr_db(q.energy),
        });
        write(&mut rw, cfg, g, w, plan, q, layout);
    }
    describe_forms(cfg, &mut report);
    if report.tensors.is_empty() {
        return Ok(report);
    }
    ms::import(model);
    rw.apply(model.graph_mut());
    Ok(report)
}

/// Refuses settings `validate` would have refused.
fn check(cfg: &Int4Config) -> Result<()> {
    let bs = cfg.block_size;
    if !(bs.is_power_of_two() && (16..=256).contains(&bs)) {
        return Err(unsupported(format!(
            "blockSize {bs} is not one of 16, 32, 64, 128, 256"
        )));
    }
    if cfg.accuracy_level > 4 {
        return Err(unsupported(format!(
            "accuracyLevel {} is outside [0, 4]",
            cfg.accuracy_level
        )));
    }
    Ok(())
}

fn describe(cfg: &Int4Config) -> String {
    format!(
        "int4 weight-only, blocks of {}, {}, {}",
        cfg.block_size,
        if cfg.symmetric {
            "symmetric (no zero points, implied 8)"
        } else {
            "asymmetric (a 4-bit zero point per block)"
        },
        if cfg.refine {
            "round-to-nearest refined per block (least-squared-error scale search)"
        } else {
            "round-to-nearest (as ORT's MatMulNBitsQuantizer)"
        }
    )
}

/// The ops rewritten, added to the description.
fn describe_forms(cfg: &Int4Config, report: &mut PassReport) {
    let mut forms = Vec::new();
    if report.tensors.iter().any(|t| t.op != "Gather") {
        forms.push(match cfg.accuracy_level {
            0 => "MatMul/Gemm -> MatMulNBits".to_string(),
            l => format!("MatMul/Gemm -> MatMulNBits (accuracy_level {l})"),
        });
    }
    if report.tensors.iter().any(|t| t.op == "Gather") {
        forms.push("Gather -> GatherBlockQuantized".to_string());
    }
    if !forms.is_empty() {
        report.description.push_str("; ");
        report.description.push_str(&forms.join(", "));
    }
}

/// Quantizes a weight in blocks along its stored rows: MatMul W [K, N] is read by columns
/// (N rows of K, padded to whole blocks), Gemm transB=1 and embedding tables by rows.
fn quantize(
    cfg: &Int4Config,
    model: &Model,
    w: &Weight,
    plan: Plan,
) -> Result<(Packed, BlockLayout)> {
    let t = &model.graph().initializer[w.init];
    let copy;
    let src = match &t.raw_data {
        Some(raw) if raw.len() == w.numel() * 4 => Src::Raw(raw),
        _ => {
            copy = onnx::tensor_f32_values(t)?;
            Src::F32(&copy)
        }
    };
    if let Some(i) = (0..w.numel()).find(|&i| !src.get(i).is_finite()) {
        return Err(non_finite(model, w, src.get(i), i));
    }
    let (r0, r1) = (w.dims[0], w.dims[1]);
    // Rows of the stored form: MatMul W [K, N] is read by columns (N rows of K).
    let (rows, len, by_columns) = match plan {
        Plan::Gemm { trans_b: true, .. } | Plan::Gather => (r0, r1, false),
        Plan::MatMul | Plan::Gemm { trans_b: false, .. } => (r1, r0, true),
    };
    let layout = BlockLayout {
        rows,
        len,
        block: cfg.block_size,
        pad: plan != Plan::Gather,
    };
    let fill = |first: usize, buf: &mut [f32]| {
        let n = buf.len() / len;
        if by_columns {
            for k in 0..len {
                let base = k * rows + first;
                for j in 0..n {
                    buf[j * len + k] = src.get(base + j);
                }
            }
        } else {
            for (i, v) in buf.iter_mut().enumerate() {
                *v = src.get(first * len + i);
            }
        }
    };
    let numerics = Numerics {
        symmetric: cfg.symmetric,
        refine: cfg.refine,
    };
    Ok((quantize_blocks(layout, numerics, &fill), layout))
}

/// Writes a weight's packed blocks, scales (Gemm: alpha folded in) and zero points in place
/// of the float weight, and each user's 4-bit op.
fn write(
    rw: &mut Rewrite,
    cfg: &Int4Config,
    g: &pb::GraphProto,
    w: &Weight,
    plan: Plan,
    q: Packed,
    layout: BlockLayout,
) {
    let (bs, rows, len, nb) = (cfg.block_size, layout.rows, layout.len, layout.blocks());
    let gather = plan == Plan::Gather;
    rw.drop_inits.insert(w.init);
    let qname = rw.fresh(&format!("{}_q4", w.name));
    let sname = rw.fresh(&format!("{}_scales", w.name));
    let zname = q
        .zero_points
        .as_ref()
        .map(|_| rw.fresh(&format!("{}_zero_points", w.name)));
    let (rows_i, nb_i) = (rows as i64, nb as i64);
    let zp_bytes = nb.div_ceil(2) as i64;
    let data_dims: Vec<i64> = if gather {
        vec![rows_i, (len / 2) as i64]
    } else {
        vec![rows_i, nb_i, (bs / 2) as i64]
    };
    rw.new_inits.push(uint8_tensor(&qname, &data_dims, q.data));
    let scales = match plan {
        Plan::Gemm { alpha, .. } if alpha != 1.0 => {
            q.scales.iter().map(|s| s * alpha).collect::<Vec<_>>()
        }
        _ => q.scales,
    };
    rw.new_inits
        .push(f32_tensor(&sname, &[rows_i, nb_i], &scales));
    if let (Some(z), Some(zn)) = (q.zero_points, &zname) {
        rw.new_inits.push(uint8_tensor(zn, &[rows_i, zp_bytes], z));
    }
    for &(ni, _) in &w.users {
        let node = &g.node[ni];
        let base = node_label(node, ni);
        let new = if gather {
            gather::block_quantized(rw, node, &base, &qname, &sname, zname.as_ref(), bs)
        } else {
            matmul_nbits(
                rw,
                cfg,
                node,
                &base,
                plan,
                [&qname, &sname],
                zname.as_ref(),
                layout,
            )
        };
        rw.replace.insert(ni, vec![new]);
    }
}

/// `MatMulNBits(A, B, scales[, zero_points][, g_idx, bias])` in place of a MatMul or Gemm.
#[allow(clippy::too_many_arguments)]
fn matmul_nbits(
    rw: &mut Rewrite,
    cfg: &Int4Config,
    node: &pb::NodeProto,
    base: &str,
    plan: Plan,
    [qname, sname]: [&String; 2],
    zname: Option<&String>,
    layout: BlockLayout,
) -> pb::NodeProto {
    let mut inputs = vec![node.input[0].clone(), qname.clone(), sname.clone()];
    let bias = match plan {
        Plan::Gemm { .. } => node.input.get(2).filter(|c| !c.is_empty()).cloned(),
        _ => None,
    };
    if zname.is_some() || bias.is_some() {
        inputs.push(zname.cloned().unwrap_or_default());
    }
    if let Some(b) = bias {
        inputs.push(String::new()); // g_idx
        inputs.push(b);
    }
    let mut attrs = vec![
        attr_int("K", layout.len as i64),
        attr_int("N", layout.rows as i64),
        attr_int("bits", 4),
        attr_int("block_size", cfg.block_size as i64),
    ];
    if cfg.accuracy_level != 0 {
        attrs.push(attr_int("accuracy_level", i64::from(cfg.accuracy_level)));
    }
    ms::node(
        "MatMulNBits",
        rw.fresh(&format!("{base}_q4")),
        inputs,
        vec![node.output[0].clone()],
        attrs,
    )
}

/// How one weight is rewritten.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    MatMul,
    /// `alpha` is folded into the scales; C (beta 1) becomes the `bias` input.
    Gemm {
        trans_b: bool,
        alpha: f32,
    },
    Gather,
}

/// Decides the form of a weight, or records why it stays float.
fn plan_for(g: &pb::GraphProto, w: &Weight, skipped: &mut Vec<Skipped>) -> Option<Plan> {
    let op = w.users[0].1.as_str();
    let skip = |skipped: &mut Vec<Skipped>, ni: usize, reason: String| {
        skipped.push(Skipped {
            node: node_label(&g.node[ni], ni),
            reason,
        });
        None
    };
    match op {
        "MatMul" => Some(Plan::MatMul),
        "Gather" => {
            if !gather::rows_only(g, w, "have a 4-bit form", skipped) {
                return None;
            }
            if !w.dims[1].is_multiple_of(2) {
                return skip(
                    skipped,
                    w.users[0].0,
                    format!(
                        "embedding width {} is odd: GatherBlockQuantized packs two 4-bit values per byte and cannot represent it; use weights: int8",
                        w.dims[1]
                    ),
                );
            }
            Some(Plan::Gather)
        }
        "Gemm" => {
            let (n0, _) = w.users[0];
            let trans_b = onnx::get_attr_int(&g.node[n0], "transB", 0) != 0;
            let alpha = onnx::get_attr_float(&g.node[n0], "alpha", 1.0);
            let n_out = if trans_b { w.dims[0] } else { w.dims[1] };
            for &(ni, _) in &w.users {
                let n = &g.node[ni];
                if onnx::get_attr_int(n, "transA", 0) != 0 {
                    return skip(skipped, ni, "Gemm with transA=1 is left in float".into());
                }
                if (onnx::get_attr_int(n, "transB", 0) != 0) != trans_b
                    || onnx::get_attr_float(n, "alpha", 1.0) != alpha
                {
                    return skip(
                        skipped,
                        ni,
                        format!(
                            "weight `{}` is shared by Gemms with different transB or alpha",
                            w.name
                        ),
                    );
                }
                if let Some(c) = n.input.get(2).filter(|c| !c.is_empty()) {
                    if onnx::get_attr_float(n, "beta", 1.0) != 1.0 {
                        return skip(
                            skipped,
                            ni,
                            "Gemm with a bias and beta != 1 is left in float".into(),
                        );
                    }
                    let is_vector = g.initializer.iter().any(|t| {
                        t.name.as_deref() == Some(c.as_str())
                            && t.dtype() == DataType::Float
                            && t.dims == [n_out as i64]
                    });
                    if !is_vector {
                        return skip(
                            skipped,
                            ni,
                            format!(
                                "Gemm bias `{c}` is not a float initializer of shape [{n_out}] (MatMulNBits takes a bias of shape [N] only)"
                            ),
                        );
                    }
                }
            }
            Some(Plan::Gemm { trans_b, alpha })
        }
        other => {
            for &(ni, _) in &w.users {
                skip(
                    skipped,
                    ni,
                    format!(
                        "{other} has no 4-bit kernel in ONNX Runtime (4-bit covers MatMul, Gemm and Gather); use weights: int8 for {other}"
                    ),
                );
            }
            None
        }
    }
}

fn uint8_tensor(name: &str, dims: &[i64], values: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Uint8.to_i32()),
        raw_data: Some(Bytes::from(values)),
        ..Default::default()
    }
}

/// A float32 weight's elements, read from the file's raw little-endian bytes when it has them
/// (no float copy of the tensor) or from a decoded copy.
enum Src<'a> {
    Raw(&'a [u8]),
    F32(&'a [f32]),
}

impl Src<'_> {
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Src::Raw(r) => f32::from_le_bytes([r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]]),
            Src::F32(v) => v[i],
        }
    }
}
