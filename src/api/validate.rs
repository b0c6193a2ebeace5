//! Spec validation (pure). The same rules as the CRD's CEL, plus what CEL cannot see (URI
//! schemes, op names), so `kompress run` rejects what the apiserver would and more.

use super::{CompressionJobSpec, PassSpec, SearchForm, ops};
use crate::uri::Location;

/// One problem, with the field's path in the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in a spec, not just the first.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid CompressionJob spec:{}", .0.iter().map(|e| format!("\n  - {}: {}", e.field, e.message)).collect::<String>())]
pub struct InvalidSpec(pub Vec<FieldError>);

// Upper bounds of numeric spec fields. The CRD schema states the same numbers (a test reads
// them back from `crd()`), so the apiserver and `kompress run` refuse the same specs.
/// Most passes in one recipe.
pub const MAX_PASSES: usize = 16;
/// Largest M of an N:M pattern (groups are scanned per row; 64 covers every sparse kernel).
pub const MAX_PATTERN_M: usize = 64;
/// Most ONNX Runtime intra-op threads (more only adds contention and memory per thread).
pub const MAX_THREADS: u32 = 256;
/// Largest evaluation and latency batch.
pub const MAX_BATCH: u32 = 4096;
/// Most untimed and timed latency runs.
pub const MAX_WARMUP: u32 = 10_000;
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Largest `spec.dataset.inputs[].batchAxis` (no ONNX tensor has more axes in practice).
pub const MAX_BATCH_AXIS: u32 = 32;

/// `spec.dataset.inputs`: the CRD's CEL rules, and one entry per input name.
fn check_inputs(inputs: &[super::InputFeed], err: &mut dyn FnMut(String, String)) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in inputs.iter().enumerate() {
        let at = format!("spec.dataset.inputs[{i}]");
        let scalar = f.scalar == Some(true);
        if f.name.is_empty() {
            err(format!("{at}.name"), "must name a model input".into());
        } else if !seen.insert(f.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("input `{}` is listed twice: keep one entry", f.name),
            );
        }
        if scalar && (f.batch_axis.is_some() || f.state_from.is_some()) {
            err(
                format!("{at}.scalar"),
                "a scalar input has no batch axis and no state: remove batchAxis and stateFrom, or scalar".into(),
            );
        }
        if f.value.is_some() && !scalar {
            err(
                format!("{at}.value"),
                "applies to scalar inputs only (scalar: true)".into(),
            );
        }
        if f.value.is_some_and(|v| !v.is_finite()) {
            err(format!("{at}.value"), "must be a finite number".into());
        }
        match (&f.state_from, &f.initial) {
            (Some(_), None) => err(
                format!("{at}.initial"),
                "a state input (stateFrom) needs initial: the dataset's array of its value at the start of each stream".into(),
            ),
            (None, Some(_)) => err(
                format!("{at}.initial"),
                "applies to state inputs only: set stateFrom to the output fed back".into(),
            ),
            _ => {}
        }
        if f.reset_on.is_some() && f.state_from.is_none() {
            err(
                format!("{at}.resetOn"),
                "applies to state inputs only (stateFrom)".into(),
            );
        }
        if let Some(a) = f.batch_axis
            && a > MAX_BATCH_AXIS
        {
            err(
                format!("{at}.batchAxis"),
                format!("{a} is outside [0, {MAX_BATCH_AXIS}]"),
            );
        }
    }
}

/// Longest time limit of a custom evaluator run.
pub const MAX_EVALUATOR_SECONDS: u32 = 3600;

/// `spec.evaluation.evaluator` and `spec.thresholds.custom`.
fn check_evaluator(spec: &CompressionJobSpec, err: &mut dyn FnMut(String, String)) {
    let ev = spec.evaluation.as_ref().and_then(|e| e.evaluator.as_ref());
    if let Some(e) = ev {
        let at = "spec.evaluation.evaluator";
        if e.command.first().is_none_or(|p| p.is_empty()) {
            err(
                format!("{at}.command"),
                "must name the program to run, e.g. [python3, score.py]".into(),
            );
        }
        if let Some(t) = e.timeout_seconds
            && !(1..=MAX_EVALUATOR_SECONDS).contains(&t)
        {
            err(
                format!("{at}.timeoutSeconds"),
                format!("{t} is outside [1, {MAX_EVALUATOR_SECONDS}]"),
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in spec.thresholds.custom.iter().enumerate() {
        let at = format!("spec.thresholds.custom[{i}]");
        if c.min.is_some() == c.max.is_some() {
            err(at.clone(), "set exactly one of min or max".into());
        }
        if !seen.insert((c.metric.as_str(), c.min.is_some())) {
            err(
                format!("{at}.metric"),
                format!("`{}` is bounded twice the same way: keep one", c.metric),
            );
        }
        if ev.is_none() {
            err(
                format!("{at}.metric"),
                format!(
                    "`{}` comes from a custom evaluator, and spec.evaluation.evaluator is unset: set it, or remove the threshold",
                    c.metric
                ),
            );
        }
    }
    if spec
        .edge_cases
        .as_ref()
        .is_some_and(|e| !e.thresholds.custom.is_empty())
    {
        err(
            "spec.edgeCases.thresholds.custom".into(),
            "the custom evaluator scores spec.dataset only: bound its metrics in spec.thresholds.custom".into(),
        );
    }
}

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
fn check_quantize(at: &str, q: &super::QuantizeSpec, err: &mut dyn FnMut(String, String)) {
    use super::{QuantMode, WeightType};
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
        if c.percentile.is_some() && c.method != super::CalibrationMethod::Percentile {
            err(
                format!("{at}.calibration.percentile"),
                "applies to method: percentile only".into(),
            );
        }
    }
}

/// Most calibration samples a static pass may ask for.
pub const MAX_CALIBRATION_SAMPLES: u32 = 100_000;

/// `spec.model.uri` as an OCI reference, `spec.model.registry` only with one, and one
/// registry Secret for the worker (it has one Docker config).
fn model_source(spec: &CompressionJobSpec, oci: bool, errs: &mut Vec<FieldError>) {
    let mut err = |field: &str, message: String| {
        errs.push(FieldError {
            field: field.into(),
            message,
        })
    };
    if oci {
        if let Err(e) = crate::uri::OciTarget::reference(&spec.model.uri) {
            err("spec.model.uri", e.to_string());
        }
    } else if spec.model.registry.is_some() {
        err(
            "spec.model.registry",
            "applies to an oci:// spec.model.uri only".into(),
        );
    }
    let secret = |r: &Option<crate::api::RegistrySpec>| {
        r.as_ref()
            .and_then(|r| r.secret_ref.as_ref())
            .map(|s| s.name.clone())
    };
    if let (Some(m), Some(o)) = (secret(&spec.model.registry), secret(&spec.output.registry))
        && m != o
    {
        err(
            "spec.model.registry.secretRef",
            format!(
                "names Secret `{m}` and spec.output.registry.secretRef names `{o}`: the worker \
                 has one Docker config, so put both registries' credentials in one \
                 kubernetes.io/dockerconfigjson Secret and name it in both"
            ),
        );
    }
}

pub fn validate(spec: &CompressionJobSpec) -> Result<(), InvalidSpec> {
    let mut errs = Vec::new();
    // The model's source and registry settings (before the closures below borrow `errs`).
    let oci_model = crate::uri::OciTarget::is_oci(&spec.model.uri);
    model_source(spec, oci_model, &mut errs);
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });

    let mut uri = |field: &str, value: &str, writable: bool| match Location::parse(value) {
        Err(e) => err(field.into(), e.to_string()),
        Ok(loc) if writable && loc.is_read_only() => err(
            field.into(),
            format!("`{value}` is read-only (https): write to s3://, gs://, az:// or a local path"),
        ),
        Ok(_) => {}
    };
    if !oci_model {
        uri("spec.model.uri", &spec.model.uri, false);
    }
    uri("spec.dataset.uri", &spec.dataset.uri, false);
    let calib_data = spec.calibration.as_ref().and_then(|c| c.dataset.as_ref());
    if let Some(c) = calib_data {
        uri("spec.calibration.dataset.uri", &c.uri, false);
    }
    if let Some(e) = &spec.edge_cases {
        uri("spec.edgeCases.uri", &e.uri, false);
    }
    uri("spec.output.uri", &spec.output.uri, true);
    match &spec.output.promote_to {
        Some(p) if crate::uri::OciTarget::is_oci(p) => {
            if let Err(e) = crate::uri::OciTarget::parse(p) {
                err("spec.output.promoteTo".into(), e.to_string());
            }
        }
        Some(p) => {
            uri("spec.output.promoteTo", p, true);
            if spec.output.registry.is_some() {
                err(
                    "spec.output.registry".into(),
                    "applies to an oci:// promoteTo only".into(),
                );
            }
        }
        None => {}
    }
    if let Some(s) = &spec.output.signing {
        match (&s.secret_ref, &s.key_file) {
            (Some(_), Some(_)) | (None, None) => err(
                "spec.output.signing".into(),
                "set exactly one of secretRef (in a cluster) or keyFile (kompress run)".into(),
            ),
            _ => {}
        }
        if spec.output.promote_to.is_none() {
            err(
                "spec.output.signing".into(),
                "signs promotions, and spec.output.promoteTo is unset: set it, or remove signing"
                    .into(),
            );
        }
    }
    for (field, sha) in [
        ("spec.model.sha256", &spec.model.sha256),
        ("spec.dataset.sha256", &spec.dataset.sha256),
        (
            "spec.calibration.dataset.sha256",
            &calib_data.and_then(|c| c.sha256.clone()),
        ),
        (
            "spec.edgeCases.sha256",
            &spec.edge_cases.as_ref().and_then(|e| e.sha256.clone()),
        ),
    ] {
        if let Some(s) = sha
            && !(s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            err(
                field.into(),
                format!("`{s}` is not a sha256 (64 lowercase hex digits)"),
            );
        }
    }

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
    let check_ops =
        |field: String, ops: &Option<Vec<String>>, err: &mut dyn FnMut(String, String)| {
            for (j, op) in ops.iter().flatten().enumerate() {
                if ops::weight_op(op).is_none() {
                    err(
                        format!("{field}.ops[{j}]"),
                        format!("unsupported op `{op}`; supported: {}", ops::names()),
                    );
                }
            }
        };
    // Once weights are int8 or fp16 no later pass can prune or quantize them.
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
            PassSpec::Prune(p) => {
                if quantized {
                    err(
                        at.clone(),
                        "pruning after quantization is not supported: put prune passes first"
                            .into(),
                    );
                }
                match (p.sparsity, &p.pattern) {
                    (Some(_), Some(_)) | (None, None) => {
                        err(at.clone(), "set exactly one of sparsity or pattern".into())
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
                if p.pattern.is_some() && p.scope == super::PruneScope::Global {
                    err(
                        format!("{at}.scope"),
                        "global scope applies to `sparsity`, not to an N:M pattern".into(),
                    );
                }
                check_ops(at, &p.ops, &mut err);
            }
            PassSpec::Quantize(q) => {
                if quantized {
                    err(
                        at.clone(),
                        "the model is already quantized (int8 or fp16) by an earlier pass".into(),
                    );
                }
                quantized = true;
                check_quantize(&at, q, &mut err);
                check_ops(at, &q.ops, &mut err);
            }
            PassSpec::LowRank(l) => {
                if quantized {
                    err(
                        at.clone(),
                        "low-rank factorisation after quantization is not supported: put lowRank before quantize".into(),
                    );
                }
                if l.energy.is_some() && l.ratio.is_some() {
                    err(at.clone(), "set at most one of energy or ratio".into());
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

    if let Some(search) = &spec.search {
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
        check_ops("spec.search".into(), &search.ops, &mut err);
        if let PassSpec::Quantize(q) = SearchForm::Static.pass(search, &[]) {
            check_quantize("spec.search", &q, &mut err);
        }
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

    let t = &spec.thresholds;
    let unit = [
        ("maxAccuracyDrop", t.max_accuracy_drop, 0.0, 1.0),
        (
            "maxRelativeAccuracyDrop",
            t.max_relative_accuracy_drop,
            0.0,
            1.0,
        ),
        ("minAgreement", t.min_agreement, 0.0, 1.0),
        ("minCosineSimilarity", t.min_cosine_similarity, -1.0, 1.0),
    ];
    for (name, v, lo, hi) in unit {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            err(
                format!("spec.thresholds.{name}"),
                format!("{v} is outside [{lo}, {hi}]"),
            );
        }
    }
    for (name, v) in [
        ("minCompressionRatio", t.min_compression_ratio),
        ("maxLatencyRatio", t.max_latency_ratio),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v > 0.0)
        {
            err(
                format!("spec.thresholds.{name}"),
                format!("{v} must be a positive number"),
            );
        }
    }
    super::task::validate_thresholds(spec, &mut err);
    if let Some(ev) = &spec.evaluation {
        super::task::validate(ev, &mut err);
        let lat = ev.latency.clone().unwrap_or_default();
        for (name, v, lo, hi) in [
            ("batchSize", ev.batch_size, 1, MAX_BATCH),
            ("threads", ev.threads, 1, MAX_THREADS),
            ("latency.batchSize", lat.batch_size, 1, MAX_BATCH),
            ("latency.warmup", lat.warmup, 0, MAX_WARMUP),
            ("latency.iterations", lat.iterations, 1, MAX_ITERATIONS),
        ] {
            if let Some(v) = v
                && !(lo..=hi).contains(&v)
            {
                err(
                    format!("spec.evaluation.{name}"),
                    format!("{v} is outside [{lo}, {hi}]"),
                );
            }
        }
    }
    let static_pass = spec
        .passes
        .iter()
        .any(|p| matches!(p, PassSpec::Quantize(q) if q.mode == super::QuantMode::Static));
    // One calibration per run: its rows are set aside once and the report names one.
    let statics =
        spec.passes.iter().enumerate().filter(
            |(_, p)| matches!(p, PassSpec::Quantize(q) if q.mode == super::QuantMode::Static),
        );
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
    if calib_data.is_some() && !static_pass && !static_form {
        err(
            "spec.calibration.dataset".into(),
            "calibration data is only used by a `quantize: {mode: static}` pass or a search with the static form; remove it or add one".into(),
        );
    }
    if spec.dataset.limit == Some(0) {
        err("spec.dataset.limit".into(), "must be positive".into());
    }
    check_inputs(&spec.dataset.inputs, &mut err);
    check_evaluator(spec, &mut err);
    if let Some(e) = &spec.edge_cases {
        if e.limit == Some(0) {
            err("spec.edgeCases.limit".into(), "must be positive".into());
        }
        for (name, set) in [
            (
                "minCompressionRatio",
                e.thresholds.min_compression_ratio.is_some(),
            ),
            ("maxLatencyRatio", e.thresholds.max_latency_ratio.is_some()),
        ] {
            if set {
                err(
                    format!("spec.edgeCases.thresholds.{name}"),
                    "size and latency are the model's, checked once by spec.thresholds: remove it here".into(),
                );
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CompressionJobSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// The field paths `validate` reports for a spec that must fail.
    fn failed_fields(s: &CompressionJobSpec) -> Vec<String> {
        validate(s)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    const BASE: &str = "model: {uri: s3://m/model.onnx}\ndataset: {uri: s3://d/eval.npz}\noutput: {uri: s3://m/out, promoteTo: s3://m/prod}\n";

    #[test]
    fn a_sound_spec_passes() {
        let s = spec(&format!(
            "{BASE}passes:\n- prune: {{pattern: '2:4'}}\n- quantize: {{perChannel: true}}\nthresholds: {{maxAccuracyDrop: 0.01, minCompressionRatio: 3}}\n"
        ));
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_field_path() {
        let s = spec(&format!(
            "{BASE}passes:\n- quantize: {{}}\n- prune: {{sparsity: 0.5}}\n- prune: {{}}\nthresholds: {{minAgreement: 2, maxLatencyRatio: 0}}\n"
        ));
        let fields = failed_fields(&s);
        assert_eq!(
            fields,
            [
                "spec.passes[1].prune",
                "spec.passes[2].prune",
                "spec.passes[2].prune",
                "spec.thresholds.minAgreement",
                "spec.thresholds.maxLatencyRatio"
            ]
        );
    }

    #[test]
    fn one_static_quantization_per_recipe() {
        let s = spec(&format!(
            "{BASE}passes:\n- quantize: {{mode: static}}\n- prune: {{sparsity: 0.5}}\n- quantize: {{mode: static}}\n"
        ));
        let e = validate(&s).unwrap_err();
        let mode =
            e.0.iter()
                .find(|f| f.field == "spec.passes[2].quantize.mode");
        assert!(
            mode.is_some_and(|f| f.message.contains("only one `mode: static`")),
            "{e:?}"
        );
        assert!(
            !e.0.iter()
                .any(|f| f.field == "spec.passes[0].quantize.mode"),
            "{e:?}"
        );
    }

    #[test]
    fn oci_models_are_references_with_their_registry_settings() {
        let d = "a".repeat(64);
        for uri in [
            "oci://reg.example:5000/team/digits:v1".to_string(),
            format!("oci://reg.example/team/digits@sha256:{d}"),
        ] {
            let s = spec(&format!(
                "model: {{uri: '{uri}', registry: {{plainHttp: true, secretRef: {{name: regcred}}}}}}\ndataset: {{uri: d.npz}}\noutput: {{uri: out, promoteTo: 'oci://reg.example:5000/team/digits:v1-int8', registry: {{secretRef: {{name: regcred}}}}}}\npasses: [{{quantize: {{}}}}]\n"
            ));
            assert_eq!(validate(&s), Ok(()), "{uri}");
        }
        let s = spec(
            "model: {uri: 'oci://reg.example/a@sha256:xyz'}\ndataset: {uri: d.npz}\noutput: {uri: out}\npasses: [{quantize: {}}]\n",
        );
        assert_eq!(failed_fields(&s), ["spec.model.uri"]);
        let s = spec(
            "model: {uri: s3://m/x.onnx, registry: {plainHttp: true}}\ndataset: {uri: d.npz}\noutput: {uri: out}\npasses: [{quantize: {}}]\n",
        );
        assert_eq!(failed_fields(&s), ["spec.model.registry"]);
        let s = spec(
            "model: {uri: 'oci://r.io/a:v1', registry: {secretRef: {name: a}}}\ndataset: {uri: d.npz}\noutput: {uri: out, promoteTo: 'oci://r.io/a:v2', registry: {secretRef: {name: b}}}\npasses: [{quantize: {}}]\n",
        );
        let e = validate(&s).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e:?}");
        assert_eq!(e.0[0].field, "spec.model.registry.secretRef");
        assert!(
            e.0[0].message.contains("`a`") && e.0[0].message.contains("one Docker config"),
            "{e:?}"
        );
    }

    #[test]
    fn promotion_to_a_read_only_location_is_refused() {
        let s = spec(
            "model: {uri: s3://m/x.onnx}\ndataset: {uri: d.npz}\noutput: {uri: out, promoteTo: 'https://example.com/prod'}\npasses: [{quantize: {}}]\n",
        );
        let e = validate(&s).unwrap_err();
        assert_eq!(e.0[0].field, "spec.output.promoteTo");
        assert!(e.0[0].message.contains("read-only"));
    }

    #[test]
    fn the_forms_of_issue_10_are_checked_field_by_field() {
        let s = spec(&format!(
            "{BASE}passes:\n- lowRank: {{energy: 0.9, ratio: 0.5, ops: [Conv]}}\n- optimize: {{}}\n- quantize: {{mode: dynamic, weights: int4, blockSize: 48, perChannel: true, calibration: {{samples: 0, percentile: 99}}}}\ncalibration: {{dataset: {{uri: c.npz}}}}\n"
        ));
        let got = failed_fields(&s);
        for want in [
            "spec.passes[0].lowRank",
            "spec.passes[0].lowRank.ops[0]",
            "spec.passes[1].optimize",
            "spec.passes[2].quantize.weights",
            "spec.passes[2].quantize.perChannel",
            "spec.passes[2].quantize.blockSize",
            "spec.passes[2].quantize.calibration",
            "spec.passes[2].quantize.calibration.samples",
            "spec.passes[2].quantize.calibration.percentile",
            "spec.calibration.dataset",
        ] {
            assert!(got.iter().any(|f| f == want), "{want} not in {got:?}");
        }
        let ok = spec(&format!(
            "{BASE}passes:\n- optimize: {{level: extended}}\n- lowRank: {{ratio: 0.5}}\n- quantize: {{mode: weightOnly, weights: int4, blockSize: 64, symmetric: false, accuracyLevel: 4}}\ntarget: {{cpu: x86-avx2}}\n"
        ));
        assert!(validate(&ok).is_ok(), "{:?}", validate(&ok));
        let st = spec(&format!(
            "{BASE}passes:\n- quantize: {{mode: static, activationType: uint8, calibration: {{method: percentile, samples: 64, percentile: 99.99}}}}\ncalibration: {{dataset: {{uri: c.npz}}}}\ntarget: {{cpu: arm64}}\n"
        ));
        assert!(validate(&st).is_ok(), "{:?}", validate(&st));
    }

    #[test]
    fn unknown_ops_and_bad_patterns_are_named() {
        let s = spec(&format!(
            "{BASE}passes:\n- prune: {{pattern: '3:3', ops: [LSTM]}}\n"
        ));
        let e = validate(&s).unwrap_err().to_string();
        assert!(
            e.contains("spec.passes[0].prune.pattern")
                && e.contains("spec.passes[0].prune.ops[0]")
                && e.contains("LSTM"),
            "{e}"
        );
    }

    #[test]
    fn patterns_parse_only_when_n_is_below_m_and_m_is_bounded() {
        assert_eq!(parse_pattern("2:4"), Some((2, 4)));
        assert_eq!(parse_pattern("63:64"), Some((63, 64)));
        for bad in [
            "4:4",
            "0:4",
            "x",
            "1:65",
            "1:99",
            "1:99999999999999",
            "1:4294967296",
            "01:4",
            "1:",
            ":4",
        ] {
            assert_eq!(parse_pattern(bad), None, "{bad}");
        }
    }

    #[test]
    fn numeric_fields_are_bounded_with_their_field_paths() {
        let s = spec(&format!(
            "{BASE}passes: [{{quantize: {{}}}}]\nevaluation: {{batchSize: 5000, threads: 1000, latency: {{batchSize: 0, warmup: 4294967295, iterations: 4294967295}}}}\n"
        ));
        let fields = failed_fields(&s);
        assert_eq!(
            fields,
            [
                "spec.evaluation.batchSize",
                "spec.evaluation.threads",
                "spec.evaluation.latency.batchSize",
                "spec.evaluation.latency.warmup",
                "spec.evaluation.latency.iterations"
            ]
        );
        let many = format!("{BASE}passes:\n{}", "- prune: {sparsity: 0.1}\n".repeat(17));
        let e = validate(&spec(&many)).unwrap_err().to_string();
        assert!(e.contains("spec.passes: 17 passes; at most 16"), "{e}");
    }

    /// The CRD states the same bounds as `validate`, so the apiserver refuses what `run` does.
    #[test]
    fn crd_schema_carries_the_same_bounds() {
        let crd = serde_json::to_value(crate::api::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let ev = &spec["evaluation"]["properties"];
        let lat = &ev["latency"]["properties"];
        let max = |v: &serde_json::Value| v["maximum"].as_f64().unwrap_or(-1.0);
        assert_eq!(max(&ev["batchSize"]), MAX_BATCH as f64);
        assert_eq!(max(&ev["threads"]), MAX_THREADS as f64);
        assert_eq!(max(&lat["batchSize"]), MAX_BATCH as f64);
        assert_eq!(max(&lat["warmup"]), MAX_WARMUP as f64);
        assert_eq!(max(&lat["iterations"]), MAX_ITERATIONS as f64);
        assert_eq!(spec["passes"]["maxItems"].as_u64(), Some(MAX_PASSES as u64));
    }

    #[test]
    fn task_thresholds_need_their_task_their_range_and_slices_their_array() {
        let s = spec(&format!(
            "{BASE}passes: [{{fp16: {{}}}}]\nthresholds: {{minMap50: 1.5, maxCharErrorRate: -1, maxWorstSliceDrop: 0.1}}\nevaluation: {{task: {{sequence: {{}}}}, select: [{{axis: 0, index: 0, start: 1}}, {{axis: 0, end: 2}}], pool: {{op: mean, axis: 0}}}}\n"
        ));
        assert_eq!(
            failed_fields(&s),
            [
                "spec.thresholds.minMap50",
                "spec.thresholds.maxWorstSliceDrop",
                "spec.thresholds.maxCharErrorRate",
                "spec.thresholds.minMap50",
                "spec.evaluation.select[0]",
                "spec.evaluation.select[1].axis",
                "spec.evaluation.pool.axis",
            ]
        );
        let base = BASE.replace("eval.npz}", "eval.npz, slices: slice}");
        let ok = spec(&format!(
            "{base}passes: [{{fp16: {{}}}}]\nthresholds: {{minSequenceMatch: 0.9, maxWorstSliceDrop: 0.1, confidence: upper}}\nevaluation: {{task: {{sequence: {{blank: 0}}}}}}\n"
        ));
        assert!(validate(&ok).is_ok(), "{:?}", validate(&ok));
    }
}

#[cfg(test)]
mod search_form_tests {
    use super::*;
    use crate::api::SearchSpec;

    fn min_elements(p: PassSpec) -> Option<u64> {
        match p {
            PassSpec::Quantize(q) => q.min_elements,
            PassSpec::Fp16(f) => f.min_elements,
            other => panic!("unexpected pass {}", other.key()),
        }
    }

    /// The search's quantize forms take every weight by default (the fallback reverts what
    /// hurts), `search.minElements` overrides it, and fp16 keeps its own default.
    #[test]
    fn search_forms_carry_their_min_elements() {
        let mut s = SearchSpec::default();
        for form in [
            SearchForm::Int4,
            SearchForm::Static,
            SearchForm::Dynamic,
            SearchForm::WeightOnly,
        ] {
            assert_eq!(min_elements(form.pass(&s, &[])), Some(1), "{}", form.name());
        }
        assert_eq!(min_elements(SearchForm::Fp16.pass(&s, &[])), None);
        s.min_elements = Some(4096);
        assert_eq!(min_elements(SearchForm::Static.pass(&s, &[])), Some(4096));
    }
}
