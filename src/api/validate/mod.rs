//! Spec validation (pure). The same rules as the CRD's CEL, plus what CEL cannot see (URI
//! schemes, op names), so `kompress run` rejects what the apiserver would and more.

mod passes;
#[cfg(test)]
mod tests;

pub use passes::parse_pattern;

use super::{CompressionJobSpec, Plan};
use crate::uri::Location;

/// Where a check records a problem: the field's path and the message.
type Sink<'a> = &'a mut dyn FnMut(String, String);

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
fn check_inputs(inputs: &[super::InputFeed], err: Sink) {
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
fn check_evaluator(spec: &CompressionJobSpec, err: Sink) {
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

/// `spec.model.uri` as an OCI reference, `spec.model.registry` only with one, and one
/// registry Secret for the worker (it has one Docker config).
fn model_source(spec: &CompressionJobSpec, oci: bool, err: Sink) {
    if oci {
        if let Err(e) = crate::uri::OciTarget::reference(&spec.model.uri) {
            err("spec.model.uri".into(), e.to_string());
        }
    } else if spec.model.registry.is_some() {
        err(
            "spec.model.registry".into(),
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
            "spec.model.registry.secretRef".into(),
            format!(
                "names Secret `{m}` and spec.output.registry.secretRef names `{o}`: the worker \
                 has one Docker config, so put both registries' credentials in one \
                 kubernetes.io/dockerconfigjson Secret and name it in both"
            ),
        );
    }
}

/// Checks `spec` (every problem, not just the first) and applies its defaults once: the
/// [`Plan`] the later stages run.
pub fn validate(spec: &CompressionJobSpec) -> Result<Plan, InvalidSpec> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });
    check_locations(spec, &mut err);
    passes::check_passes(spec, &mut err);
    if let Some(search) = &spec.search {
        passes::check_search(spec, search, &mut err);
    }
    check_thresholds(spec, &mut err);
    check_evaluation(spec, &mut err);
    passes::check_calibration(spec, &mut err);
    check_data(spec, &mut err);
    if errs.is_empty() {
        Ok(Plan::new(spec))
    } else {
        Err(InvalidSpec(errs))
    }
}

/// A URI the run reads (`writable`: or writes).
fn check_uri(err: Sink, field: &str, value: &str, writable: bool) {
    match Location::parse(value) {
        Err(e) => err(field.into(), e.to_string()),
        Ok(loc) if writable && loc.is_read_only() => err(
            field.into(),
            format!("`{value}` is read-only (https): write to s3://, gs://, az:// or a local path"),
        ),
        Ok(_) => {}
    }
}

/// Every URI, promotion target, signing key and pinned digest.
fn check_locations(spec: &CompressionJobSpec, err: Sink) {
    let oci_model = crate::uri::OciTarget::is_oci(&spec.model.uri);
    model_source(spec, oci_model, err);
    if !oci_model {
        check_uri(err, "spec.model.uri", &spec.model.uri, false);
    }
    check_uri(err, "spec.dataset.uri", &spec.dataset.uri, false);
    let calib_data = spec.calibration.as_ref().and_then(|c| c.dataset.as_ref());
    if let Some(c) = calib_data {
        check_uri(err, "spec.calibration.dataset.uri", &c.uri, false);
    }
    if let Some(e) = &spec.edge_cases {
        check_uri(err, "spec.edgeCases.uri", &e.uri, false);
    }
    check_uri(err, "spec.output.uri", &spec.output.uri, true);
    match &spec.output.promote_to {
        Some(p) if crate::uri::OciTarget::is_oci(p) => {
            if let Err(e) = crate::uri::OciTarget::parse(p) {
                err("spec.output.promoteTo".into(), e.to_string());
            }
        }
        Some(p) => {
            check_uri(err, "spec.output.promoteTo", p, true);
            if spec.output.registry.is_some() {
                err(
                    "spec.output.registry".into(),
                    "applies to an oci:// promoteTo only".into(),
                );
            }
        }
        None => {}
    }
    check_signing(spec, err);
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
}

/// `spec.output.signing`: one key source, and something to sign.
fn check_signing(spec: &CompressionJobSpec, err: Sink) {
    let Some(s) = &spec.output.signing else {
        return;
    };
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

/// `spec.thresholds`: the bounds of every field, and the task each task threshold needs.
fn check_thresholds(spec: &CompressionJobSpec, err: Sink) {
    use super::task::CheckName as C;
    let t = &spec.thresholds;
    let unit = [
        (C::MaxAccuracyDrop, t.max_accuracy_drop, 0.0, 1.0),
        (
            C::MaxRelativeAccuracyDrop,
            t.max_relative_accuracy_drop,
            0.0,
            1.0,
        ),
        (C::MinAgreement, t.min_agreement, 0.0, 1.0),
        (C::MinCosineSimilarity, t.min_cosine_similarity, -1.0, 1.0),
    ];
    for (name, v, lo, hi) in unit {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            err(
                format!("spec.thresholds.{}", name.name()),
                format!("{v} is outside [{lo}, {hi}]"),
            );
        }
    }
    for (name, v) in [
        (C::MinCompressionRatio, t.min_compression_ratio),
        (C::MaxLatencyRatio, t.max_latency_ratio),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v > 0.0)
        {
            err(
                format!("spec.thresholds.{}", name.name()),
                format!("{v} must be a positive number"),
            );
        }
    }
    super::task::validate_thresholds(spec, err);
}

/// `spec.evaluation`: the task's settings and the numeric bounds.
fn check_evaluation(spec: &CompressionJobSpec, err: Sink) {
    let Some(ev) = &spec.evaluation else {
        return;
    };
    super::task::validate(ev, err);
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

/// The dataset's rows and inputs, the custom evaluator, and the edge-case set.
fn check_data(spec: &CompressionJobSpec, err: Sink) {
    use super::task::CheckName as C;
    if spec.dataset.limit == Some(0) {
        err("spec.dataset.limit".into(), "must be positive".into());
    }
    check_inputs(&spec.dataset.inputs, err);
    check_evaluator(spec, err);
    if let Some(e) = &spec.edge_cases {
        if e.limit == Some(0) {
            err("spec.edgeCases.limit".into(), "must be positive".into());
        }
        for (name, set) in [
            (
                C::MinCompressionRatio,
                e.thresholds.min_compression_ratio.is_some(),
            ),
            (C::MaxLatencyRatio, e.thresholds.max_latency_ratio.is_some()),
        ] {
            if set {
                err(
                    format!("spec.edgeCases.thresholds.{}", name.name()),
                    "size and latency are the model's, checked once by spec.thresholds: remove it here".into(),
                );
            }
        }
    }
}
