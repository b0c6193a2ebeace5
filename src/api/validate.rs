//! Spec validation (pure). The same rules as the CRD's CEL, plus what CEL cannot see (URI
//! schemes, op names), so `kompress run` rejects what the apiserver would and more.

use super::CompressionJobSpec;
use crate::storage::Location;

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

pub const QUANTIZABLE_OPS: &[&str] = &["MatMul", "Gemm", "Conv"];

pub fn parse_pattern(p: &str) -> Option<(usize, usize)> {
    let (n, m) = p.split_once(':')?;
    let (n, m) = (n.parse().ok()?, m.parse().ok()?);
    (0 < n && n < m).then_some((n, m))
}

pub fn validate(spec: &CompressionJobSpec) -> Result<(), InvalidSpec> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });

    let mut uri = |field: &str, value: &str, writable: bool| match Location::parse(value) {
        Err(e) => err(field.into(), e.to_string()),
        Ok(loc) if writable && loc.is_read_only() => err(
            field.into(),
            format!("`{value}` is read-only (https): write to s3://, gs://, az:// or a local path"),
        ),
        Ok(_) => {}
    };
    uri("spec.model.uri", &spec.model.uri, false);
    uri("spec.dataset.uri", &spec.dataset.uri, false);
    uri("spec.output.uri", &spec.output.uri, true);
    if let Some(p) = &spec.output.promote_to {
        uri("spec.output.promoteTo", p, true);
    }
    for (field, sha) in [
        ("spec.model.sha256", &spec.model.sha256),
        ("spec.dataset.sha256", &spec.dataset.sha256),
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

    if spec.passes.is_empty() {
        err(
            "spec.passes".into(),
            "at least one pass is required (prune or quantize)".into(),
        );
    }
    let check_ops =
        |field: String, ops: &Option<Vec<String>>, err: &mut dyn FnMut(String, String)| {
            for (j, op) in ops.iter().flatten().enumerate() {
                if !QUANTIZABLE_OPS.contains(&op.as_str()) {
                    err(
                        format!("{field}.ops[{j}]"),
                        format!(
                            "unsupported op `{op}`; supported: {}",
                            QUANTIZABLE_OPS.join(", ")
                        ),
                    );
                }
            }
        };
    let mut quantized = false;
    for (i, pass) in spec.passes.iter().enumerate() {
        let at = format!("spec.passes[{i}]");
        let set = [
            pass.prune.is_some(),
            pass.quantize.is_some(),
            pass.fp16.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            err(
                at.clone(),
                "set exactly one of prune, quantize or fp16".into(),
            );
            continue;
        }
        if pass.fp16.is_some() {
            if quantized {
                err(
                    format!("{at}.fp16"),
                    "fp16 after int8 quantization is not supported: choose one".into(),
                );
            }
            quantized = true;
            continue;
        }
        match (&pass.prune, &pass.quantize) {
            (Some(p), _) => {
                let at = format!("{at}.prune");
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
                        format!("`{pat}` is not N:M with 0 < N < M (e.g. 2:4)"),
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
            (None, None) => {} // fp16, handled above
            (None, Some(q)) => {
                let at = format!("{at}.quantize");
                if quantized {
                    err(
                        at.clone(),
                        "the model is already quantized (int8 or fp16) by an earlier pass".into(),
                    );
                }
                quantized = true;
                check_ops(at, &q.ops, &mut err);
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
    if let Some(ev) = &spec.evaluation {
        for (name, v) in [("batchSize", ev.batch_size), ("threads", ev.threads)] {
            if v == Some(0) {
                err(format!("spec.evaluation.{name}"), "must be positive".into());
            }
        }
        if let Some(l) = &ev.latency {
            for (name, v) in [("batchSize", l.batch_size), ("iterations", l.iterations)] {
                if v == Some(0) {
                    err(
                        format!("spec.evaluation.latency.{name}"),
                        "must be positive".into(),
                    );
                }
            }
        }
    }
    if spec.dataset.limit == Some(0) {
        err("spec.dataset.limit".into(), "must be positive".into());
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
        serde_yaml::from_str(yaml).unwrap()
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
            "{BASE}passes:\n- quantize: {{}}\n- prune: {{sparsity: 0.5}}\n- {{}}\nthresholds: {{minAgreement: 2, maxLatencyRatio: 0}}\n"
        ));
        let fields: Vec<String> = validate(&s)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.passes[1].prune",
                "spec.passes[2]",
                "spec.thresholds.minAgreement",
                "spec.thresholds.maxLatencyRatio"
            ]
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
    fn patterns_parse_only_when_n_is_below_m() {
        assert_eq!(parse_pattern("2:4"), Some((2, 4)));
        assert_eq!(parse_pattern("4:4"), None);
        assert_eq!(parse_pattern("0:4"), None);
        assert_eq!(parse_pattern("x"), None);
    }
}
