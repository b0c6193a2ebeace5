//! `spec.search`: the forms tried and the search's budget.

use super::*;

/// An accuracy- and latency-aware search over compressed forms (see the README's "Search").
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchSpec {
    /// Which passing candidate wins: `smallest` (fewest bytes; the faster on a tie) or
    /// `fastest` (lowest median latency ratio against the original; the smaller on a tie).
    /// Default smallest.
    #[serde(default)]
    pub objective: SearchObjective,
    /// The forms to try, in this order. Default every form: int4, static, dynamic, weightOnly,
    /// fp16 (a form that changes no weight of the model is skipped and says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub forms: Option<Vec<SearchForm>>,
    /// Op types the integer forms quantize. Default every op kompress quantizes (MatMul,
    /// Gemm, Conv, ConvTranspose, Gather): the per-layer fallback reverts the ones that hurt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Most candidates evaluated on the whole dataset (forms, fallback steps). Default 16.
    /// Sensitivity probes (one per layer, on `sensitivitySamples` rows) do not count here;
    /// `maxSeconds` bounds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("must be between 1 and 1000"))]
    pub max_trials: Option<u32>,
    /// Wall-clock budget of the search in seconds, checked before each trial or probe starts.
    /// Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be positive"))]
    pub max_seconds: Option<u32>,
    /// Per-layer fallback: most layers a form may leave in float. Default half of the form's
    /// quantized layers (rounded up); 0 turns the fallback off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_float_layers: Option<u32>,
    /// Rows (the evaluation set's first) on which each layer's sensitivity is measured.
    /// Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("must be between 1 and 100000"))]
    pub sensitivity_samples: Option<u32>,
    /// The static form's calibration (method, samples, percentile). Default minMax, 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationMethodSpec>,
    /// Weights with fewer elements stay float in the quantize forms. Default 1: every weight
    /// of the ops above is a candidate, and the per-layer fallback reverts those that hurt (a
    /// fixed `quantize` pass defaults to 1024, since nothing measures what it costs there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_elements: Option<u64>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum SearchObjective {
    #[default]
    Smallest,
    Fastest,
}

/// A compressed form the search can try.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SearchForm {
    /// 4-bit weight-only (MatMulNBits, GatherBlockQuantized); other ops stay float.
    Int4,
    /// Static int8 with calibrated activations (QDQ).
    Static,
    /// Dynamic int8 (activations quantized at run time).
    Dynamic,
    /// int8 weights dequantized to float (float math).
    WeightOnly,
    /// float16 weights.
    Fp16,
}

impl SearchForm {
    /// Every form, smallest first: the default order.
    pub const ALL: [SearchForm; 5] = [
        SearchForm::Int4,
        SearchForm::Static,
        SearchForm::Dynamic,
        SearchForm::WeightOnly,
        SearchForm::Fp16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SearchForm::Int4 => "int4",
            SearchForm::Static => "static",
            SearchForm::Dynamic => "dynamic",
            SearchForm::WeightOnly => "weightOnly",
            SearchForm::Fp16 => "fp16",
        }
    }
}
