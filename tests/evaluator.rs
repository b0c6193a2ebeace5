//! A custom evaluator (`spec.evaluation.evaluator`): a command that reads the original's and
//! the candidate's outputs as `.npz` and prints named metrics, which `thresholds.custom`
//! gates on; bounded in time and output, with a clear exit-65 error when it hangs, fails or
//! prints garbage; named in the report and the evidence.

mod support;

use std::path::Path;
use support::*;

/// A pure-Python evaluator (no numpy): top-1 agreement and the largest output difference,
/// computed from the two `.npz` files kompress wrote.
fn score_py() -> String {
    format!(
        "{NPZ_AGREEMENT_PY}{}",
        r#"print("scoring", n, "rows", file=__import__('sys').stderr)
print(json.dumps({"metrics": {
    "top1_agreement": agree,
    "max_abs_diff": max(abs(a - b) for a, b in zip(ov, cv)),
    "rows": n,
    "labelled": len(o.get('labels', ((), ()))[1]),
    "classes": shape[1],
}}))
"#
    )
}

fn job(dir: &Path, evaluator: &str, custom: &str) -> String {
    let r = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: digits-custom\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes: [{{quantize: {{mode: dynamic}}}}]\n  thresholds: {{minCompressionRatio: 2, custom: {custom}}}\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    latency: {{warmup: 1, iterations: 3}}\n    evaluator: {evaluator}\n",
        r.join("examples/digits/model.onnx").display(),
        r.join("examples/digits/eval.npz").display(),
        dir.join("candidates").display(),
        dir.join("production").display()
    );
    write_job(dir, &yaml)
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn a_python_evaluator_s_metrics_are_gated_reported_and_in_the_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "score.py", &score_py());
    let j = job(
        dir.path(),
        &format!(
            "{{command: [python3, '{py}'], image: 'registry.local/wer@sha256:0123', timeoutSeconds: 60}}"
        ),
        "[{metric: top1_agreement, min: 0.9}, {metric: max_abs_diff, max: 5.0}]",
    );
    let r = run_kompress(&["run", "-f", &j, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let res = &report["result"];
    assert_eq!(res["verdict"], "Passed", "{res}");
    let custom = &res["candidate"]["custom"];
    // The evaluator saw every row, labels too, and computed what kompress computes.
    assert_eq!(custom["rows"], 540.0, "{custom}");
    assert_eq!(custom["labelled"], 540.0, "{custom}");
    assert_eq!(
        custom["classes"], 10.0,
        "the output's shape per sample: {custom}"
    );
    let agreement = res["candidate"]["agreement"].as_f64().unwrap();
    assert!(
        (custom["top1_agreement"].as_f64().unwrap() - agreement).abs() < 1e-9,
        "{custom} vs kompress's agreement {agreement}"
    );
    assert_eq!(check(&report, "custom.top1_agreement")["passed"], true);
    assert_eq!(check(&report, "custom.max_abs_diff")["limit"], 5.0);
    // The command and the image (with its digest) are recorded.
    let ev = &report["evaluator"];
    assert_eq!(ev["command"][0], "python3", "{ev}");
    assert_eq!(ev["imageDigest"], "sha256:0123", "{ev}");
    let evidence: Vec<String> = files_under(&dir.path().join("production"))
        .into_iter()
        .filter(|f| f.contains("evidence"))
        .collect();
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    let env: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("production").join(&evidence[0])).unwrap(),
    )
    .unwrap();
    use base64::Engine;
    let statement = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    let p = &statement["predicate"];
    assert_eq!(
        p["evaluator"]["image"], "registry.local/wer@sha256:0123",
        "{p}"
    );
    assert!(
        p["candidate"]["custom"]["top1_agreement"]
            .as_f64()
            .is_some(),
        "{p}"
    );
}

#[test]
fn a_custom_threshold_the_candidate_misses_rejects_it() {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "score.py", &score_py());
    let j = job(
        dir.path(),
        &format!("{{command: [python3, '{py}']}}"),
        "[{metric: max_abs_diff, max: 0.0000001}]",
    );
    let r = run_kompress(&["run", "-f", &j, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["result"]["verdict"], "Rejected");
    let c = check(&report, "custom.max_abs_diff");
    assert_eq!(c["passed"], false, "{c}");
    assert!(c["value"].as_f64().unwrap() > 0.0000001);
    assert!(files_under(&dir.path().join("production")).is_empty());
}

/// Runs a job whose evaluator is `command`; asserts exit 65 and that stderr says `says`.
fn fails(command: &str, timeout: u32, says: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        &format!("{{command: {command}, timeoutSeconds: {timeout}}}"),
        "[{metric: wer, max: 0.15}]",
    );
    let t = std::time::Instant::now();
    let r = run_kompress(&["run", "-f", &j], &[]);
    assert_eq!(r.code, 65, "{command}: {}", r.stderr);
    for s in says {
        assert!(
            r.stderr.contains(s),
            "{command}: `{s}` not in: {}",
            r.stderr
        );
    }
    assert!(t.elapsed().as_secs() < 120, "bounded: {:?}", t.elapsed());
    assert!(files_under(&dir.path().join("production")).is_empty());
}

#[test]
fn a_hanging_evaluator_is_stopped_at_its_time_limit() {
    fails(
        "[python3, -c, 'import time; time.sleep(600)']",
        2,
        &[
            "time limit of 2 s",
            "spec.evaluation.evaluator.timeoutSeconds",
        ],
    );
}

#[test]
fn an_evaluator_that_prints_garbage_is_refused() {
    fails(
        "[python3, -c, 'print(\"WER is low, trust me\")']",
        30,
        &["it must print one JSON object", "WER is low"],
    );
    fails(
        "[python3, -c, 'import json; print(json.dumps({\"metrics\": {\"wer\": \"low\"}}))']",
        30,
        &["metric `wer` that is not a finite number"],
    );
}

#[test]
fn an_evaluator_that_fails_says_why_with_its_stderr() {
    fails(
        "[python3, -c, 'import sys; sys.stderr.write(\"no GPU here\\n\"); sys.exit(3)']",
        30,
        &["exit code 3", "no GPU here"],
    );
    fails(
        "[/nonexistent/evaluator]",
        30,
        &[
            "spec.evaluation.evaluator.command",
            "/nonexistent/evaluator",
        ],
    );
}

#[test]
fn a_threshold_on_a_metric_the_evaluator_does_not_print_is_refused() {
    fails(
        "[python3, -c, 'print(\"{\\\"metrics\\\": {\\\"cer\\\": 0.1}}\")']",
        30,
        &["spec.thresholds.custom names metric `wer`", "[cer]"],
    );
}

#[test]
fn custom_thresholds_without_an_evaluator_are_an_invalid_spec() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: x\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes: [{{quantize: {{}}}}]\n  thresholds: {{custom: [{{metric: wer, max: 0.1, min: 0.0}}]}}\n  output:\n    uri: {}\n",
        r.join("examples/digits/model.onnx").display(),
        r.join("examples/digits/eval.npz").display(),
        dir.path().join("out").display()
    );
    let j = write_job(dir.path(), &yaml);
    let out = run_kompress(&["run", "-f", &j], &[]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    for s in [
        "spec.thresholds.custom[0]: set exactly one of min or max",
        "spec.thresholds.custom[0].metric: `wer` comes from a custom evaluator",
    ] {
        assert!(out.stderr.contains(s), "`{s}` not in: {}", out.stderr);
    }
}

#[test]
fn in_a_cluster_the_agent_in_the_evaluator_s_container_runs_it_for_the_worker() {
    // The pod's two containers, as processes: the agent (what the evaluator's sidecar runs)
    // serving a shared folder, and a run told to ask it (the worker's env in the pod).
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "score.py", &score_py());
    let shared = dir.path().join("shared");
    let mut agent = std::process::Command::new(bin())
        .args(["evaluator-agent", "--dir"])
        .arg(&shared)
        .args(["--timeout-seconds", "60", "--", "python3", &py])
        .spawn()
        .unwrap();
    let j = job(
        dir.path(),
        "{command: [does-not-run-here]}",
        "[{metric: top1_agreement, min: 0.9}]",
    );
    let r = run_kompress(
        &["run", "-f", &j, "-o", "json"],
        &[(
            "KOMPRESS_EVALUATOR_AGENT_DIR",
            &shared.display().to_string(),
        )],
    );
    // The worker's release: the agent stops.
    std::fs::write(shared.join("exit"), b"").unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed().as_secs() > 10 {
            agent.kill().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["result"]["verdict"], "Passed");
    assert_eq!(report["result"]["candidate"]["custom"]["rows"], 540.0);
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent exits when released"
    );
}
