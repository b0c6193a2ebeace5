//! What the int8 forms share: the 7- or 8-bit weight range, the opset-13 upgrade per-channel
//! weights dequantized whole need, and the per-weight loop of the dynamic and weight-only
//! forms ([`run`]): select, plan, quantize, report, write.

use super::gather;
use super::{QuantForm, QuantizeConfig};
use crate::api::WeightRange;
use crate::onnx::{self, Model, attr_int, f32_tensor, int8_tensor, pb};
use crate::passes::opset;
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::{Weight, node_label, non_finite, select_weights, weight_values};
use crate::passes::{Error, PassReport, Result, Skipped, TensorReport, math};
use math::{ChannelLayout, Codes, Pairs, Quantized};

/// What a form's description says of the weights' scales: "per-channel" or "per-tensor".
pub(super) fn granularity(cfg: &QuantizeConfig) -> &'static str {
    if cfg.per_channel {
        "per-channel"
    } else {
        "per-tensor"
    }
}

/// What a form's description says of weights that integer kernels multiply; `default`:
/// the range was chosen from `spec.target.cpu`, not set by `reduceRange`.
pub(super) fn weight_bits(range: WeightRange, default: bool) -> &'static str {
    match (range, default) {
        (WeightRange::PairBounded, _) => {
            "8-bit weights bounded in pairs (default for spec.target.cpu auto/x86-avx2: no two weights that an int16 multiply-add pairs exceed 128 together, so x86 CPUs without VNNI cannot saturate)"
        }
        (WeightRange::Seven, _) => "7-bit weights (reduceRange: true)",
        (WeightRange::Eight, true) => {
            "8-bit weights (default for spec.target.cpu x86-vnni/arm64, where 8-bit products do not saturate)"
        }
        (WeightRange::Eight, false) => {
            "8-bit weights (reduceRange: false; can saturate on x86 CPUs without VNNI)"
        }
    }
}

/// The codes of a weight that `op` multiplies in an integer kernel, reduced along `in_axis`
/// of `dims` with output channels along `out_axis`. Pair bounds follow how ONNX Runtime's
/// kernels pair weights: neighbours along K for MatMul and Gemm (2-D weights), any two in an
/// output channel for Conv, any two in the tensor otherwise.
pub(super) fn codes(
    range: WeightRange,
    op: &str,
    dims: &[usize],
    in_axis: usize,
    out_axis: usize,
) -> Codes {
    match range {
        WeightRange::Eight => Codes::Max(127),
        WeightRange::Seven => Codes::Max(63),
        WeightRange::PairBounded => Codes::PairBounded(match op {
            "MatMul" | "Gemm" if dims.len() == 2 => Pairs::Adjacent {
                stride: dims[in_axis + 1..].iter().product(),
                len: dims[in_axis],
            },
            "Conv" => Pairs::AnyIn(ChannelLayout::along(dims, out_axis)),
            _ => Pairs::AnyIn(ChannelLayout::PER_TENSOR),
        }),
    }
}

/// The error of a quantize pass.
pub(super) fn unsupported(what: String) -> Error {
    Error::Unsupported {
        pass: "quantize",
        what,
    }
}

/// Whether a selected weight would be dequantized whole (weight-only form, or Conv and
/// ConvTranspose in the dynamic form): per-channel scales on it need opset 13.
pub(super) fn dequantized_whole(cfg: &QuantizeConfig, model: &Model) -> bool {
    let weight_only = cfg.form == QuantForm::WeightOnly;
    select_weights(model, &cfg.select, &mut Vec::new())
        .iter()
        .flat_map(|w| w.users.iter())
        .any(|(_, op)| op != "Gather" && (weight_only || op == "Conv" || op == "ConvTranspose"))
}

/// What became of a per-channel form on a model importing opset < 13.
pub(super) enum Opset13 {
    /// Upgraded (losslessly; the pipeline checks it with ONNX Runtime).
    Upgraded(opset::Upgrade),
    /// Not upgradable, and per-channel was not asked for explicitly: per tensor, with why.
    Fallback(opset::Error),
}

/// Upgrades the graph to opset 13 for per-channel `DequantizeLinear` (its `axis`), where the
/// form has weights that need it (`needed`); refuses with `refusal` where the upgrade cannot
/// be done and per-channel was asked for explicitly.
pub(super) fn upgrade_to_13(
    cfg: &QuantizeConfig,
    model: &mut Model,
    needed: impl FnOnce(&Model) -> bool,
    refusal: impl FnOnce(&opset::Error) -> String,
) -> Result<Option<Opset13>> {
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    if !(cfg.per_channel && opset < 13 && needed(model)) {
        return Ok(None);
    }
    match opset::upgrade(model, 13) {
        Ok(up) => Ok(Some(Opset13::Upgraded(up))),
        Err(e) if cfg.per_channel_required => Err(unsupported(refusal(&e))),
        Err(e) => Ok(Some(Opset13::Fallback(e))),
    }
}

/// The report line of one quantized weight.
pub(super) fn tensor_report(g: &pb::GraphProto, w: &Weight, q: &Quantized) -> TensorReport {
    let (first, _) = w.users[0];
    TensorReport {
        tensor: w.name.clone(),
        node: node_label(&g.node[first], first),
        op: w.users[0].1.clone(),
        elements: w.numel() as u64,
        sparsity: q.values.iter().filter(|v| **v == 0).count() as f64
            / q.values.len().max(1) as f64,
        scales: Some(q.scales.len()),
        max_abs_error: Some(q.max_abs_error),
        sqnr_db: math::sqnr_db(q.energy),
    }
}

/// How the dynamic and weight-only forms write one weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Plan {
    /// MatMulInteger rewrite of every user; `transpose` for Gemm with transB=1.
    Integer { transpose: bool },
    /// Stored int8, `DequantizeLinear` in front of the float op.
    Dequantized,
    /// Embedding lookup (`Gather` on axis 0): int8 table, rows dequantized after the lookup.
    Gather,
}

/// One weight stored int8: the names of its tensors (the int8 values and the zero points are
/// written already), its scales, and their layout.
pub(super) struct Int8Weight {
    pub q: String,
    pub scale: String,
    pub zero_point: String,
    pub scales: Vec<f32>,
    /// One scale per channel (else one for the tensor).
    pub per_channel: bool,
    /// Dims of the scales and zero points: `[channels]`, or `[]` per tensor.
    pub sdims: Vec<i64>,
    /// The axis of the channels in the stored tensor.
    pub axis: usize,
}

/// A form run by [`run`]: how it describes itself, what it needs of the model, how it
/// writes a weight that is not an embedding table.
pub(super) trait Form {
    fn description(&self, cfg: &QuantizeConfig) -> String;

    /// Refuses a model the form cannot run on.
    fn check(&self, opset: i64) -> Result<()>;

    /// The plan of a weight that is not an embedding table, or `None` with why in `skipped`.
    fn plan(&self, g: &pb::GraphProto, w: &Weight, skipped: &mut Vec<Skipped>) -> Option<Plan>;

    /// Writes the users of a weight planned `Integer` or `Dequantized`.
    fn write(
        &mut self,
        rw: &mut Rewrite,
        g: &pb::GraphProto,
        w: &Weight,
        plan: Plan,
        q: &Int8Weight,
    ) -> Result<()>;
}

/// The dynamic and weight-only forms' pass: each selected weight planned, quantized int8
/// (per channel where the opset allows it), reported and written; embedding tables in the
/// row form ([`gather`]).
pub(super) fn run(
    cfg: &QuantizeConfig,
    model: &mut Model,
    form: &mut dyn Form,
) -> Result<PassReport> {
    let mut report = PassReport {
        pass: "quantize".into(),
        description: form.description(cfg),
        ..Default::default()
    };
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    form.check(opset)?;
    // Per-channel scales need DequantizeLinear's `axis` (opset 13) only where a weight is
    // dequantized whole (weight-only form, and Conv in the dynamic form); MatMulInteger's
    // per-column zero points and the per-row lookup form work from opset 10 / 1.
    // Such weights get the graph upgraded to opset 13; only where that cannot be done do they
    // fall back, and say why.
    let (opset, no_upgrade) = match upgrade_to_13(
        cfg,
        model,
        |m| dequantized_whole(cfg, m),
        |e| {
            format!(
                "per-channel weight-only scales need opset >= 13 (DequantizeLinear axis) and {e}; or set perChannel: false"
            )
        },
    )? {
        Some(Opset13::Upgraded(up)) => {
            report.description.push_str(&format!(
                "; {} for per-channel DequantizeLinear",
                up.describe()
            ));
            (up.to, None)
        }
        Some(Opset13::Fallback(e)) => (opset, Some(e)),
        None => (opset, None),
    };
    let weights = select_weights(model, &cfg.select, &mut report.skipped);
    let g = model.graph();
    let mut rw = Rewrite::new(g);
    let mut fallbacks = 0usize;
    for w in &weights {
        let plan = if w.users[0].1 == "Gather" {
            gather::rows_only(g, w, "are quantized", &mut report.skipped).then_some(Plan::Gather)
        } else {
            form.plan(g, w, &mut report.skipped)
        };
        let Some(plan) = plan else { continue };
        // Per channel where the opset allows it (see the upgrade above).
        let whole = plan == Plan::Dequantized;
        let pc = cfg.per_channel && !(whole && opset < 13);
        if cfg.per_channel && !pc && !cfg.per_channel_required {
            fallbacks += 1;
        }
        if whole && cfg.per_channel_required && opset < 13 {
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
        let (q, dims, axis) = quantize(model, w, plan, pc, cfg.weight_range)?;
        report.tensors.push(tensor_report(g, w, &q));
        let q = store(&mut rw, w, q, &dims, axis, pc, plan == Plan::Gather);
        match plan {
            Plan::Gather => {
                let table = gather::Int8Table {
                    q: &q.q,
                    scale: &q.scale,
                    zero_point: &q.zero_point,
                    scales: &q.scales,
                    per_row: q.per_channel,
                };
                gather::write_int8(&mut rw, g, w, &table)
            }
            _ => form.write(&mut rw, g, w, plan, &q)?,
        }
    }
    if fallbacks > 0 {
        report.description.push_str(&format!(
            "; {fallbacks} weights dequantized whole are per-tensor (per-channel DequantizeLinear needs opset >= 13, the model imports {opset}{})",
            no_upgrade.map(|e| format!(", and {e}")).unwrap_or_default()
        ));
    }
    if report.tensors.iter().any(|t| t.op == "Gather") {
        report.description.push_str(gather::INT8_ROWS);
    }
    rw.apply(model.graph_mut());
    Ok(report)
}

/// Quantizes a weight symmetric int8, per channel (`pc`) or per tensor; returns the result
/// with the dims and channel axis of the tensor as stored (Gemm transB=1 for MatMulInteger:
/// transposed).
fn quantize(
    model: &Model,
    w: &Weight,
    plan: Plan,
    pc: bool,
    range: WeightRange,
) -> Result<(Quantized, Vec<usize>, usize)> {
    let g = model.graph();
    let (in_axis, out_axis) = w.axes(g);
    let transpose = plan == Plan::Integer { transpose: true };
    // The weight as stored, and its channel axis: MatMulInteger's B is [K, N] (Gemm
    // transB=1 transposed), a table has a scale per row.
    let mut dims = w.dims.clone();
    if transpose {
        dims.swap(0, 1);
    }
    let axis = match plan {
        Plan::Gather => 0,
        Plan::Integer { .. } => 1,
        Plan::Dequantized => out_axis,
    };
    let codes = match (plan, range) {
        // No integer matmul follows a lookup, nor a float op reading the weight dequantized:
        // nothing can saturate, so 8 bits (7 only where reduceRange asks for them).
        (Plan::Gather, _) | (Plan::Dequantized, WeightRange::PairBounded) => Codes::Max(127),
        (Plan::Integer { .. }, _) => codes(range, &w.users[0].1, &dims, 0, 1),
        (Plan::Dequantized, _) => codes(range, &w.users[0].1, &dims, in_axis, out_axis),
    };
    let layout = if pc {
        ChannelLayout::along(&dims, axis)
    } else {
        ChannelLayout::PER_TENSOR
    };
    let t = &g.initializer[w.init];
    let q = match &t.raw_data {
        // The common case reads the weights straight from the file buffer: no float copy
        // of the tensor, which keeps peak memory near the model's size.
        Some(raw) if !transpose && raw.len() == w.numel() * 4 => {
            let at = |i: usize| {
                f32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]])
            };
            if let Some(i) = (0..w.numel()).find(|&i| !at(i).is_finite()) {
                return Err(non_finite(model, w, at(i), i));
            }
            math::quantize_symmetric_with(w.numel(), at, layout, codes)
        }
        _ => {
            let mut values = weight_values(model, w)?;
            if transpose {
                values = math::transpose(&values, w.dims[0], w.dims[1]);
            }
            math::quantize_symmetric(&values, layout, codes)
        }
    };
    Ok((q, dims, axis))
}

/// Writes a quantized weight's int8 values and zero points in place of the float weight (a
/// per-row table needs no zero points); the scales are left to the plan's writer.
fn store(
    rw: &mut Rewrite,
    w: &Weight,
    q: Quantized,
    dims: &[usize],
    axis: usize,
    pc: bool,
    gather: bool,
) -> Int8Weight {
    let idims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let qname = rw.fresh(&format!("{}_quantized", w.name));
    let sname = rw.fresh(&format!("{}_scale", w.name));
    let zname = rw.fresh(&format!("{}_zero_point", w.name));
    let sdims: Vec<i64> = if pc {
        vec![q.scales.len() as i64]
    } else {
        vec![]
    };
    let zeros = vec![0i8; q.scales.len()];
    rw.drop_inits.insert(w.init);
    rw.new_inits.push(int8_tensor(&qname, &idims, q.values));
    if !(gather && pc) {
        rw.new_inits.push(int8_tensor(&zname, &sdims, zeros));
    }
    Int8Weight {
        q: qname,
        scale: sname,
        zero_point: zname,
        scales: q.scales,
        per_channel: pc,
        sdims,
        axis,
    }
}

/// A weight read through one `DequantizeLinear` in front of its first user, which every user
/// reads in its weight slot: the weight-only form, and Conv weights in the dynamic form.
pub(super) fn dequantize_in_front(rw: &mut Rewrite, w: &Weight, q: &Int8Weight) {
    let (first, _) = w.users[0];
    rw.new_inits.push(f32_tensor(&q.scale, &q.sdims, &q.scales));
    let dq = rw.fresh(&format!("{}_dequantized", w.name));
    let mut attrs = vec![];
    if q.per_channel {
        attrs.push(attr_int("axis", q.axis as i64));
    }
    let name = rw.fresh(&format!("{}_DequantizeLinear", w.name));
    rw.before.entry(first).or_default().push(onnx::node(
        "DequantizeLinear",
        name,
        vec![q.q.clone(), q.scale.clone(), q.zero_point.clone()],
        vec![dq.clone()],
        attrs,
    ));
    for &(ni, _) in &w.users {
        rw.input_renames.push((ni, 1, dq.clone()));
    }
}
