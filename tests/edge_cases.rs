//! `spec.edgeCases`: a second dataset scored on the original and the candidate, reported on
//! its own, and gated by its own thresholds (checks `edgeCases.<threshold>`, all needed for
//! promotion).

mod support;

use kompress::eval::{self, ArrayData, Dataset, EvalConfig};
use std::path::Path;
use support::*;

/// The bundled digits rows `rows`, each with one pixel set to `spike` (an outlier that
/// stretches int8 activation ranges), and their labels.
fn digits_edge(path: &Path, rows: std::ops::Range<usize>, spike: f32) {
    let ds = Dataset::load(&repo().join("examples/digits/eval.npz")).unwrap();
    let ArrayData::F32(x) = ds.read("input").unwrap().data else {
        panic!("digits input is float32")
    };
    let ArrayData::I64(l) = ds.read("labels").unwrap().data else {
        panic!("digits labels are int64")
    };
    let n = rows.len();
    let mut sub: Vec<f32> = x[rows.start * 64..rows.end * 64].to_vec();
    for (i, row) in sub.chunks_mut(64).enumerate() {
        row[(i * 7) % 64] = spike;
    }
    write_npz(
        path,
        &[
            ("input", f32_array(&[n, 64], &sub)),
            ("labels", i64_array(&l[rows])),
        ],
    );
}

fn job(dir: &Path, edge: &str, edge_thresholds: &str) -> String {
    let r = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: digits-edges\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  edgeCases:\n    uri: {edge}\n    thresholds: {edge_thresholds}\n  passes: [{{quantize: {{mode: dynamic}}}}]\n  thresholds: {{minAgreement: 0.9, minCompressionRatio: 2}}\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    latency: {{warmup: 1, iterations: 3}}\n",
        r.join("examples/digits/model.onnx").display(),
        r.join("examples/digits/eval.npz").display(),
        dir.join("candidates").display(),
        dir.join("production").display()
    );
    write_job(dir, &yaml)
}

fn run(job: &str) -> (i32, serde_json::Value, String, String) {
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &[]);
    let v = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r.code, v, r.stdout, r.stderr)
}

#[test]
fn edge_cases_are_scored_on_their_own_and_pass_with_the_main_set() {
    let dir = tempfile::tempdir().unwrap();
    let edge = dir.path().join("edge.npz");
    digits_edge(&edge, 0..40, 1.0);
    let (code, report, _, err) = run(&job(
        dir.path(),
        &edge.display().to_string(),
        "{minAgreement: 0.8, maxAccuracyDrop: 0.1}",
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["result"]["verdict"], "Passed", "{report}");
    let e = &report["edgeCases"];
    assert_eq!(e["verdict"], "Passed", "{e}");
    assert_eq!(e["dataset"]["uri"], edge.display().to_string());
    assert_eq!(e["dataset"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(e["baseline"]["samples"], 40, "its own rows: {e}");
    assert_eq!(report["result"]["baseline"]["samples"], 540);
    assert!(
        e["baseline"]["accuracy"].as_f64().is_some(),
        "labels of its own: {e}"
    );
    for name in ["edgeCases.minAgreement", "edgeCases.maxAccuracyDrop"] {
        assert_eq!(check(&report, name)["passed"], true, "{name}");
    }
    assert_eq!(
        e["checks"].as_array().unwrap().len(),
        2,
        "no tensorsCompressed twice: {e}"
    );
    // The evidence names the edge-case set and carries its metrics.
    let prod = dir.path().join("production");
    let evidence: Vec<String> = files_under(&prod)
        .into_iter()
        .filter(|f| f.contains("/evidence/"))
        .collect();
    assert_eq!(
        evidence.len(),
        1,
        "promoted with its evidence: {evidence:?}"
    );
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prod.join(&evidence[0])).unwrap()).unwrap();
    use base64::Engine;
    let statement: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let p = &statement["predicate"];
    assert_eq!(
        p["inputs"]["edgeCases"]["sha256"], e["dataset"]["sha256"],
        "{p}"
    );
    assert_eq!(p["edgeCases"]["verdict"], "Passed", "{p}");
}

#[test]
fn an_edge_case_threshold_that_fails_rejects_a_candidate_the_main_set_passes() {
    let dir = tempfile::tempdir().unwrap();
    let edge = dir.path().join("edge.npz");
    digits_edge(&edge, 100..130, 1.0);
    // The main gate passes; the edge gate asks for more than int8 gives.
    let (code, report, _, err) = run(&job(
        dir.path(),
        &edge.display().to_string(),
        "{minCosineSimilarity: 0.99999999}",
    ));
    assert_eq!(code, 0, "a rejection is a normal outcome: {err}");
    assert_eq!(check(&report, "minAgreement")["passed"], true);
    let c = check(&report, "edgeCases.minCosineSimilarity");
    assert_eq!(c["passed"], false, "{c}");
    assert_eq!(report["result"]["verdict"], "Rejected");
    assert_eq!(report["edgeCases"]["verdict"], "Rejected");
    assert!(
        files_under(&dir.path().join("production")).is_empty(),
        "nothing promoted"
    );
    // The summary names the failed edge-case check.
    let r = run_kompress(
        &[
            "run",
            "-f",
            &job(
                dir.path(),
                &edge.display().to_string(),
                "{minCosineSimilarity: 0.99999999}",
            ),
        ],
        &[],
    );
    assert!(
        r.stdout.contains("edgeCases.minCosineSimilarity"),
        "{}",
        r.stdout
    );
}

/// Rows on the original's decision boundary: for each of `pairs` pairs of neighbouring
/// digits, the blend of the two (of 51 weights) where the original's top two logits are
/// closest. Few rows, and the ones a compressed model gets wrong first.
fn boundary_rows(dir: &Path, path: &Path, pairs: usize) {
    let ds = Dataset::load(&repo().join("examples/digits/eval.npz")).unwrap();
    let ArrayData::F32(x) = ds.read("input").unwrap().data else {
        panic!("digits input is float32")
    };
    let steps = 51;
    let mut blends = Vec::with_capacity(pairs * steps * 64);
    for i in 0..pairs {
        let (a, b) = (&x[i * 64..(i + 1) * 64], &x[(i + 1) * 64..(i + 2) * 64]);
        for k in 0..steps {
            let w = k as f32 / (steps - 1) as f32;
            blends.extend(a.iter().zip(b).map(|(p, q)| w * p + (1.0 - w) * q));
        }
    }
    let all = dir.join("blends.npz");
    write_npz(&all, &[("input", f32_array(&[pairs * steps, 64], &blends))]);
    let cfg = EvalConfig {
        iterations: 0,
        ..eval_cfg(256)
    };
    let set = Dataset::load(&all).unwrap();
    let mut opened = eval::open(&repo().join("examples/digits/model.onnx"), &cfg).unwrap();
    let prep = eval::prepare(&opened, &set, &cfg).unwrap();
    let (out, _) = eval::evaluate(&mut opened, &prep, &cfg, &|_, _| {}).unwrap();
    let margin = |row: usize| {
        let mut v = out.values.read(row * 10, 10).unwrap().to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        v[0] - v[1]
    };
    let mut rows = Vec::with_capacity(pairs * 64);
    for i in 0..pairs {
        let best = (i * steps..(i + 1) * steps)
            .min_by(|&a, &b| margin(a).total_cmp(&margin(b)))
            .unwrap();
        rows.extend_from_slice(&blends[best * 64..(best + 1) * 64]);
    }
    write_npz(path, &[("input", f32_array(&[pairs, 64], &rows))]);
}

#[test]
fn boundary_rows_catch_a_drop_the_main_set_averages_away() {
    // int8 agrees with the original on 99.8% of the digits, and on fewer of the rows where
    // the original itself hesitates (92% with the default pair-bounded weights, under 90% with
    // 7-bit ones): the main gate passes, the edge-case gate asking for 97% does not.
    let dir = tempfile::tempdir().unwrap();
    let edge = dir.path().join("edge.npz");
    boundary_rows(dir.path(), &edge, 60);
    let (code, report, _, err) = run(&job(
        dir.path(),
        &edge.display().to_string(),
        "{minAgreement: 0.97}",
    ));
    assert_eq!(code, 0, "{err}");
    let main = check(&report, "minAgreement");
    let edge_check = check(&report, "edgeCases.minAgreement");
    assert!(main["value"].as_f64().unwrap() > 0.99, "{main}");
    assert_eq!(main["passed"], true, "{main}");
    assert!(edge_check["value"].as_f64().unwrap() < 0.97, "{edge_check}");
    assert_eq!(edge_check["passed"], false, "{edge_check}");
    assert_eq!(report["result"]["verdict"], "Rejected");
    assert!(files_under(&dir.path().join("production")).is_empty());
}

#[test]
fn a_bad_edge_case_spec_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let edge = dir.path().join("edge.npz");
    digits_edge(&edge, 0..10, 1.0);
    for (thresholds, says) in [
        (
            "{minCompressionRatio: 2}",
            "spec.edgeCases.thresholds.minCompressionRatio",
        ),
        (
            "{maxLatencyRatio: 2}",
            "spec.edgeCases.thresholds.maxLatencyRatio",
        ),
    ] {
        let r = run_kompress(
            &[
                "run",
                "-f",
                &job(dir.path(), &edge.display().to_string(), thresholds),
            ],
            &[],
        );
        assert_eq!(r.code, 65, "{}", r.stderr);
        assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
    }
    // An edge set whose arrays do not fit the model.
    let bad = dir.path().join("bad.npz");
    write_npz(&bad, &[("input", f32_array(&[3, 10], &[0.0; 30]))]);
    let r = run_kompress(
        &[
            "run",
            "-f",
            &job(
                dir.path(),
                &bad.display().to_string(),
                "{minAgreement: 0.5}",
            ),
        ],
        &[],
    );
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("edge cases") && r.stderr.contains("bad.npz"),
        "{}",
        r.stderr
    );
    // A missing edge set is a storage error naming it.
    let r = run_kompress(
        &[
            "run",
            "-f",
            &job(dir.path(), "/nonexistent/edge.npz", "{minAgreement: 0.5}"),
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("edge.npz"), "{}", r.stderr);
}
