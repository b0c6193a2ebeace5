//! `kompress evaluate -f JOB --candidate MODEL`: a model made elsewhere judged by the job's
//! own evaluation and gate (the same numbers `run` gives its own candidate), promoted nowhere;
//! exit 0 when it passes, 1 when rejected, 65 for a file that is no fitting ONNX model. The
//! real task models' case is in tests/task_metrics.rs.

mod support;

use serde_json::Value;
use std::path::Path;
use support::*;

/// The digits job: int8, gated on accuracy and agreement, with edge cases of its own.
fn digits_job(dir: &Path, thresholds: &str) -> String {
    let r = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: digits-eval\nspec:\n  model:\n    uri: {m}\n  dataset:\n    uri: {d}\n  edgeCases:\n    uri: {d}\n    limit: 40\n    thresholds: {{minAgreement: 0.8}}\n  passes: [{{quantize: {{mode: dynamic, perChannel: true}}}}]\n  thresholds: {thresholds}\n  output:\n    uri: {out}\n    promoteTo: {prod}\n  evaluation:\n    latency: {{warmup: 1, iterations: 3}}\n",
        m = r.join("examples/digits/model.onnx").display(),
        d = r.join("examples/digits/eval.npz").display(),
        out = dir.join("candidates").display(),
        prod = dir.join("production").display()
    );
    write_job(dir, &yaml)
}

fn evaluate(job: &str, candidate: &Path, json: bool) -> (i32, Value, String, String) {
    let c = candidate.display().to_string();
    let mut args = vec!["evaluate", "-f", job, "--candidate", &c];
    if json {
        args.extend(["-o", "json"]);
    }
    let r = run_kompress(&args, &[]);
    let v = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    (r.code, v, r.stdout, r.stderr)
}

fn failed(report: &Value) -> Vec<String> {
    report["result"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn another_tools_candidate_gets_the_numbers_run_gives_its_own_and_nothing_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let job = digits_job(dir.path(), "{maxAccuracyDrop: 0.02, minAgreement: 0.95}");
    // The candidate made "elsewhere": kompress compress, the job's own passes, no gate.
    let cand = dir.path().join("int8.onnx");
    let model = repo().join("examples/digits/model.onnx");
    let r = run_kompress(
        &[
            "compress",
            &model.display().to_string(),
            &cand.display().to_string(),
            "-f",
            &job,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (code, ev, _, err) = evaluate(&job, &cand, true);
    assert_eq!(code, 0, "{err}");
    let res = &ev["result"];
    assert_eq!(res["verdict"], "Passed", "{res}");
    assert!(failed(&ev).is_empty(), "{res}");
    for name in [
        "maxAccuracyDrop",
        "minAgreement",
        "tensorsCompressed",
        "edgeCases.minAgreement",
    ] {
        assert_eq!(check(&ev, name)["passed"], true, "{name}: {res}");
    }
    assert_eq!(ev["edgeCases"]["baseline"]["samples"], 40, "{ev}");
    let pass = &ev["passes"][0];
    assert_eq!(pass["pass"], "external", "{pass}");
    assert!(!pass["tensors"].as_array().unwrap().is_empty(), "{pass}");
    assert!(
        res["compressedBytes"].as_u64().unwrap() < res["originalBytes"].as_u64().unwrap(),
        "{res}"
    );
    assert!(res["candidate"]["latencyP50Ms"].as_f64().unwrap() > 0.0);
    // Nothing written where the job promotes or keeps candidates.
    assert!(!dir.path().join("candidates").exists());
    assert!(!dir.path().join("production").exists());
    // `run` builds the same candidate and measures it the same way: the same quality numbers.
    let run = run_json(&job);
    for field in ["accuracy", "agreement", "cosineSimilarity", "samples"] {
        assert_eq!(
            run["result"]["candidate"][field], res["candidate"][field],
            "{field}"
        );
        assert_eq!(
            run["result"]["baseline"][field], res["baseline"][field],
            "{field}"
        );
    }
}

#[test]
fn a_candidate_that_misses_a_threshold_is_rejected_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let job = digits_job(dir.path(), "{maxAccuracyDrop: 0.02, minAgreement: 0.95}");
    // Planted: every logit of class 0 raised by 1000: every row now reads as a 0.
    let mut bias = vec![0f32; 10];
    bias[0] = 1000.0;
    let cand = dir.path().join("biased.onnx");
    planted(
        &repo().join("examples/digits/model.onnx"),
        &cand,
        "logits",
        "Add",
        kompress::onnx::f32_tensor("plant_bias", &[10], &bias),
        None,
    );
    let (code, ev, _, err) = evaluate(&job, &cand, true);
    assert_eq!(code, 1, "{err}");
    assert_eq!(ev["result"]["verdict"], "Rejected");
    let f = failed(&ev);
    assert!(
        f.contains(&"maxAccuracyDrop".to_string()) && f.contains(&"minAgreement".to_string()),
        "{f:?}"
    );
    assert!(!dir.path().join("production").exists());
    // The original with its weights stored as typed floats instead of raw bytes: the same
    // values, so no weight is compressed.
    let mut m = kompress::onnx::load(&repo().join("examples/digits/model.onnx"))
        .unwrap()
        .proto;
    for t in &mut m.graph.as_mut().unwrap().initializer {
        t.float_data = kompress::onnx::tensor_f32_values(t).unwrap();
        t.raw_data = None;
    }
    let copy = dir.path().join("copy.onnx");
    write_model(&m, &copy);
    let (code, ev, _, err) = evaluate(&job, &copy, true);
    assert_eq!(code, 1, "{err}");
    assert_eq!(check(&ev, "tensorsCompressed")["value"], 0.0, "{ev}");
    assert_eq!(failed(&ev), ["tensorsCompressed"], "{ev}");
    // The table says so too; the original itself is no compressed model.
    let (code, _, out, err) = evaluate(&job, &repo().join("examples/digits/model.onnx"), false);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("REJECTED (evaluated only, nothing promoted)")
            && out.contains("✗ tensorsCompressed"),
        "{out}"
    );
}

#[test]
fn a_candidate_that_is_no_onnx_model_or_does_not_fit_is_refused_with_exit_65_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let job = digits_job(dir.path(), "{minAgreement: 0.95}");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let (code, _, _, err) = evaluate(&job, &junk, true);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains(&junk.display().to_string()) && err.contains("not a valid ONNX model"),
        "{err}"
    );
    let missing = dir.path().join("missing.onnx");
    let (code, _, _, err) = evaluate(&job, &missing, true);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    // A model with other inputs: 8 features where digits has 64.
    let other = dir.path().join("other.onnx");
    write_model(&mlp(&[8, 16, 10], 3), &other);
    let (code, _, _, err) = evaluate(&job, &other, true);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains(&format!(
            "candidate {} does not fit the job's model",
            other.display()
        )) && err.contains("inputs"),
        "{err}"
    );
}
