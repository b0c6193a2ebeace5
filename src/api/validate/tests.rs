//! `validate`'s rules, field by field.

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
    assert_eq!(validate(&s).map(|_| ()), Ok(()));
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
        assert_eq!(validate(&s).map(|_| ()), Ok(()), "{uri}");
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
