//! Quantization, one module per form, the way ONNX Runtime's quantization tool keeps one
//! quantizer per form. The form is chosen once, from the spec ([`QuantForm`]); each writes the
//! operator pattern ONNX Runtime runs as integer (or 4-bit) kernels:
//!
//! - [`dynamic`]: int8 weights, activations quantized at run time (`MatMulInteger`);
//! - [`weight_only`]: int8 weights dequantized in front of the float op (QDQ);
//! - [`static_qdq`]: int8 weights and activations at calibrated ranges (QDQ, fused by ORT);
//! - [`int4`]: 4-bit blocked weights (`MatMulNBits`, `GatherBlockQuantized`).
//!
//! What they share sits beside them: [`int8`] (the per-weight loop and tensors of the int8
//! forms), [`gather`] (embedding tables, in every form), and, one level up, the weight
//! selection (`weights`) and the graph rewrite (`rewrite`). Forms use the shared modules and
//! never each other, except that the static form writes its embedding tables with the
//! weight-only form.

mod dynamic;
mod gather;
mod int4;
mod int8;
mod ms;
mod static_qdq;
mod weight_only;

pub use int4::Int4Config;
pub use static_qdq::{ActivationRanges, Activations, Calibrated};

use super::weights::Selection;
use super::{PassReport, Result};
use crate::api::WeightRange;
use crate::onnx::{self, Model};

/// How a quantize pass stores its weights: the form, chosen once from the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantForm {
    /// int8 weights; MatMul/Gemm inputs quantized at run time (`MatMulInteger`).
    Dynamic,
    /// int8 weights dequantized in front of the float op.
    WeightOnly,
    /// int8 weights and activations, at ranges calibrated ahead of time (QDQ).
    Static(Activations),
    /// 4-bit blocked weights (weight-only), with their settings.
    Int4(Int4Config),
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeConfig {
    pub form: QuantForm,
    pub per_channel: bool,
    /// Per-channel was asked for explicitly: where the opset cannot express it, fail (or
    /// skip the weight) instead of falling back to one scale per tensor.
    pub per_channel_required: bool,
    /// How int8 weights are ranged (7-bit, 8-bit, or 8-bit bounded in pairs).
    pub weight_range: WeightRange,
    /// `weight_range` was chosen from the target, not set by `reduceRange` (for the report).
    pub weight_range_default: bool,
    pub select: Selection,
}

impl QuantizeConfig {
    /// The 4-bit settings, for the int4 form.
    pub fn int4(&self) -> Option<&Int4Config> {
        match &self.form {
            QuantForm::Int4(c) => Some(c),
            _ => None,
        }
    }

    /// The activation side, for the static form.
    pub fn activations(&self) -> Option<&Activations> {
        match &self.form {
            QuantForm::Static(a) => Some(a),
            _ => None,
        }
    }
}

/// Applies the pass in its form.
pub fn apply(cfg: &QuantizeConfig, model: &mut Model) -> Result<PassReport> {
    match &cfg.form {
        QuantForm::Dynamic => dynamic::apply(cfg, model),
        QuantForm::WeightOnly => weight_only::apply(cfg, model),
        QuantForm::Static(a) => static_qdq::apply(cfg, a, model),
        QuantForm::Int4(c) => int4::apply(c, &cfg.select, model),
    }
}

/// The activation tensors the static form needs calibrated ranges for; `None` for the others.
pub fn calibration_tensors(cfg: &QuantizeConfig, model: &Model) -> Option<Vec<String>> {
    let a = cfg.activations()?;
    Some(static_qdq::calibration_tensors(a, &cfg.select, model))
}

/// The opset the form needs on `model` (13, where per-channel int8 weights are dequantized
/// whole and the model imports an older one).
pub fn opset_needed(cfg: &QuantizeConfig, model: &Model) -> Option<i64> {
    let opset = onnx::default_opset(&model.proto).unwrap_or(0);
    let needs = cfg.per_channel
        && opset < 13
        && match &cfg.form {
            QuantForm::Int4(_) => false,
            QuantForm::Static(a) => static_qdq::needs_weights(a, &cfg.select, model),
            QuantForm::Dynamic | QuantForm::WeightOnly => int8::dequantized_whole(cfg, model),
        };
    needs.then_some(13)
}

/// Brings `model` to the form the static form quantizes, before calibration runs it.
pub fn prepare_for_calibration(cfg: &QuantizeConfig, model: &mut Model) -> Result<()> {
    if let Some(a) = cfg.activations() {
        static_qdq::prepare(a, &cfg.select, model)?;
    }
    Ok(())
}

/// Hands the static form its calibrated ranges (the others ignore them).
pub fn set_calibration(cfg: &mut QuantizeConfig, calibrated: std::sync::Arc<Calibrated>) {
    if let QuantForm::Static(a) = &mut cfg.form {
        a.calibrated = Some(calibrated);
    }
}
