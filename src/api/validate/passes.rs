//! `spec.passes`, `spec.search` and calibration: each pass's fields, the order passes may
//! run in, and the search's forms.

use super::{MAX_PASSES, MAX_PATTERN_M, Sink};
use crate::api::{
    CalibrationMethod, CompressionJobSpec, LowRankSpec, PassSpec, PruneScope, PruneSpec, QuantMode,
    QuantizeSpec, SearchForm, SearchSpec, WeightType, ops,
};

/// `N:M` with 0 < N < M <= 64.
pub fn parse_pattern(p: &str) -> Option<(usize, usize)> {
    let (n, m) = p.split_once(':')?;
    // The CRD's pattern: one or two digits each, no leading zero.
    let digits = |s: &str| {
        (1..=2).contains(&s.len()) && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(n) || !digits(m) {
        return None;
    }
    let (n, m) = (n.parse().ok()?, m.parse().ok()?);
    (0 < n && n < m && m <= MAX_PATTERN_M).then_some((n, m))
}

/// The quantize pass's own combinations.
fn check_quantize(at: &str, q: &QuantizeSpec, err: Sink) {
    let int4 = q.weights == WeightType::Int4;
    if int4 && q.mode != QuantMode::WeightOnly {
        err(
            format!("{at}.weights"),
            "int4 weights are weight-only (MatMulNBits / GatherBlockQuantized): set mode: weightOnly".into(),
        );
    }
    if int4 && q.per_channel == Some(true) {
        err(
            format!("{at}.perChannel"),
            "int4 weights have one scale per block (blockSize); remove perChannel".into(),
        );
    }
    if let Some(b) = q.block_size
        && !(b.is_power_of_two() && (16..=256).contains(&b))
    {
        err(
            format!("{at}.blockSize"),
            format!("{b} is not one of 16, 32, 64, 128, 256"),
        );
    }
    for (name, set) in [
        ("blockSize", q.block_size.is_some()),
        ("symmetric", q.symmetric.is_some()),
        ("accuracyLevel", q.accuracy_level.is_some()),
        ("refine", q.refine.is_some()),
    ] {
        if set && !int4 {
            err(
                format!("{at}.{name}"),
                "applies to 4-bit weights only (weights: int4)".into(),
            );
        }
    }
    if let Some(l) = q.accuracy_level
        && l > 4
    {
        err(
            format!("{at}.accuracyLevel"),
            format!("{l} is outside [0, 4]"),
        );
    }
    for (name, set) in [
        ("activationType", q.activation_type.is_some()),
        ("symmetricActivations", q.symmetric_activations.is_some()),
        ("calibration", q.calibration.is_some()),
    ] {
        if set && q.mode != QuantMode::Static {
            err(
                format!("{at}.{name}"),
                "applies to mode: static only".into(),
            );
        }
    }
    if q.reduce_range.is_some() && (q.mode == QuantMode::WeightOnly) {
        err(
            format!("{at}.reduceRange"),
            "applies to the integer modes (dynamic, static); weight-only weights are dequantized to float".into(),
        );
    }
    if let Some(c) = &q.calibration {
        if let Some(n) = c.samples
            && !(1..=MAX_CALIBRATION_SAMPLES).contains(&n)
        {
            err(
                format!("{at}.calibration.samples"),
                format!("{n} is outside [1, {MAX_CALIBRATION_SAMPLES}]"),
            );
        }
        if let Some(p) = c.percentile
            && !(p > 50.0 && p <= 100.0)
        {
            err(
                format!("{at}.calibration.percentile"),
                format!("{p} is outside (50, 100]"),
            );
        }
        if let Some(b) = c.batch_size
            && !(1..=1024).contains(&b)
        {
            err(
                format!("{at}.calibration.batchSize"),
                format!("{b} is outside [1, 1024]"),
            );
        }
        if c.percentile.is_some() && c.method != CalibrationMethod::Percentile {
            err(
                format!("{at}.calibration.percentile"),
                "applies to method: percentile only".into(),
            );
        }
    }
}

/// Most calibration samples a static pass may ask for.
pub const MAX_CALIBRATION_SAMPLES: u32 = 100_000;

/// Op names a pass or the search lists: each one kompress knows weights of.
fn check_ops(field: &str, ops: &Option<Vec<String>>, err: Sink) {
    for (j, op) in ops.iter().flatten().enumerate() {
        if ops::weight_op(op).is_none() {
            err(
                format!("{field}.ops[{j}]"),
                format!("unsupported op `{op}`; supported: {}", ops::names()),
            );
        }
    }
}

/// `spec.passes`: how many, each one's fields, and their order (once weights are int8 or
/// fp16 no later pass can prune or quantize them).
pub(super) fn check_passes(spec: &CompressionJobSpec, err: Sink) {
    if spec.passes.is_empty() && spec.search.is_none() {
        err(
            "spec.passes".into(),
            "at least one pass is required (prune or quantize), or a spec.search".into(),
        );
    }
    if spec.passes.len() > MAX_PASSES {
        err(
            "spec.passes".into(),
            format!(
                "{} passes; at most {MAX_PASSES} are allowed",
                spec.passes.len()
            ),
        );
    }
    let mut quantized = false;
    for (i, pass) in spec.passes.iter().enumerate() {
        let at = format!("spec.passes[{i}].{}", pass.key());
        match pass {
            PassSpec::Fp16(_) => {
                if quantized {
                    err(
                        at,
                        "fp16 after int8 quantization is not supported: choose one".into(),
                    );
                }
                quantized = true;
            }
            PassSpec::Prune(p) => check_prune(&at, p, quantized, err),
            PassSpec::Quantize(q) => {
                if quantized {
                    err(
                        at.clone(),
                        "the model is already quantized (int8 or fp16) by an earlier pass".into(),
                    );
                }
                quantized = true;
                check_quantize(&at, q, err);
                check_ops(&at, &q.ops, err);
            }
            PassSpec::LowRank(l) => check_low_rank(&at, l, quantized, err),
            PassSpec::Optimize(_) => {
                if i != 0 {
                    err(
                        at,
                        "optimize must be the first pass (it rewrites the graph the other passes read)".into(),
                    );
                }
            }
        }
    }
}

/// A prune pass (`quantized`: an earlier pass quantized the weights).
fn check_prune(at: &str, p: &PruneSpec, quantized: bool, err: Sink) {
    if quantized {
        err(
            at.into(),
            "pruning after quantization is not supported: put prune passes first".into(),
        );
    }
    match (p.sparsity, &p.pattern) {
        (Some(_), Some(_)) | (None, None) => {
            err(at.into(), "set exactly one of sparsity or pattern".into())
        }
        (Some(s), None) if !(0.0..1.0).contains(&s) => {
            err(format!("{at}.sparsity"), format!("{s} is outside [0, 1)"))
        }
        (None, Some(pat)) if parse_pattern(pat).is_none() => err(
            format!("{at}.pattern"),
            format!("`{pat}` is not N:M with 0 < N < M <= {MAX_PATTERN_M} (e.g. 2:4)"),
        ),
        _ => {}
    }
    if p.pattern.is_some() && p.scope == PruneScope::Global {
        err(
            format!("{at}.scope"),
            "global scope applies to `sparsity`, not to an N:M pattern".into(),
        );
    }
    check_ops(at, &p.ops, err);
}

/// A low-rank pass (`quantized`: an earlier pass quantized the weights).
fn check_low_rank(at: &str, l: &LowRankSpec, quantized: bool, err: Sink) {
    if quantized {
        err(
            at.into(),
            "low-rank factorisation after quantization is not supported: put lowRank before quantize".into(),
        );
    }
    if l.energy.is_some() && l.ratio.is_some() {
        err(at.into(), "set at most one of energy or ratio".into());
    }
    if let Some(e) = l.energy
        && !(e > 0.0 && e <= 1.0)
    {
        err(format!("{at}.energy"), format!("{e} is outside (0, 1]"));
    }
    if let Some(r) = l.ratio
        && !(r > 0.0 && r < 1.0)
    {
        err(format!("{at}.ratio"), format!("{r} is outside (0, 1)"));
    }
    for (j, op) in l.ops.iter().flatten().enumerate() {
        if op != "MatMul" && op != "Gemm" {
            err(
                format!("{at}.ops[{j}]"),
                format!("`{op}`: low-rank factorisation applies to MatMul and Gemm"),
            );
        }
    }
}

/// `spec.search`: no fixed quantization beside it, its forms, ops, static calibration and
/// budget.
pub(super) fn check_search(spec: &CompressionJobSpec, search: &SearchSpec, err: Sink) {
    for (i, pass) in spec.passes.iter().enumerate() {
        if matches!(pass, PassSpec::Quantize(_) | PassSpec::Fp16(_)) {
            err(
                format!("spec.passes[{i}].{}", pass.key()),
                "with spec.search the search chooses the quantization: remove this pass (keep prune, lowRank and optimize passes, which run before every form), or remove spec.search".into(),
            );
        }
    }
    let forms = search
        .forms
        .clone()
        .unwrap_or_else(|| SearchForm::ALL.to_vec());
    if forms.is_empty() {
        err(
            "spec.search.forms".into(),
            "name at least one form, or leave it unset for all".into(),
        );
    }
    for (j, f) in forms.iter().enumerate() {
        if forms[..j].contains(f) {
            err(
                format!("spec.search.forms[{j}]"),
                format!("`{}` is listed twice", f.name()),
            );
        }
    }
    check_ops("spec.search", &search.ops, err);
    // The static form's calibration settings, checked as a static pass's.
    let calibration = QuantizeSpec {
        mode: QuantMode::Static,
        calibration: search.calibration.clone(),
        ..Default::default()
    };
    check_quantize("spec.search", &calibration, err);
    for (name, v, lo, hi) in [
        ("maxTrials", search.max_trials, 1, 1000),
        ("maxSeconds", search.max_seconds, 1, u32::MAX),
        ("sensitivitySamples", search.sensitivity_samples, 1, 100_000),
    ] {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            err(
                format!("spec.search.{name}"),
                format!("{v} is outside [{lo}, {hi}]"),
            );
        }
    }
}

/// One calibration per run (its rows are set aside once and the report names one), and
/// calibration data only where something calibrates.
pub(super) fn check_calibration(spec: &CompressionJobSpec, err: Sink) {
    let is_static =
        |p: &PassSpec| matches!(p, PassSpec::Quantize(q) if q.mode == QuantMode::Static);
    let static_pass = spec.passes.iter().any(is_static);
    let statics = spec.passes.iter().enumerate().filter(|(_, p)| is_static(p));
    for (i, _) in statics.skip(1) {
        err(
            format!("spec.passes[{i}].quantize.mode"),
            "only one `mode: static` pass per recipe (calibration runs once)".into(),
        );
    }
    let static_form = spec.search.as_ref().is_some_and(|s| {
        s.forms
            .as_ref()
            .is_none_or(|f| f.contains(&SearchForm::Static))
    });
    let calib_data = spec.calibration.as_ref().and_then(|c| c.dataset.as_ref());
    if calib_data.is_some() && !static_pass && !static_form {
        err(
            "spec.calibration.dataset".into(),
            "calibration data is only used by a `quantize: {mode: static}` pass or a search with the static form; remove it or add one".into(),
        );
    }
}
