//! `kompress run` and `kompress worker` end to end with ONNX Runtime: promotion on pass,
//! nothing promoted on reject, and bad input rejected clearly with nothing written to promoteTo.

mod support;

use std::path::Path;
use support::*;

const QUANTIZE: &str = "    - quantize:\n        perChannel: true";
const GATE: &str =
    "    maxAccuracyDrop: 0.01\n    minAgreement: 0.98\n    minCompressionRatio: 3.5";

/// `kompress compress MODEL OUT -f JOB`.
fn compress(model: &Path, out: &Path, job: &str) -> Ran {
    run_kompress(&compress_args(model, out, job, None), &[])
}

/// Runs the job in `dir/job.yaml` (`yaml`), expecting a rejection: it exits 0, says REJECTED,
/// and promotes nothing. Returns what it printed.
fn rejected(dir: &Path, yaml: &str) -> Ran {
    let job = write_job(dir, yaml);
    let r = run_kompress(&["run", "-f", &job], &[]);
    assert_eq!(r.code, 0, "a rejection is a normal outcome: {}", r.stderr);
    assert!(r.stdout.contains("REJECTED"), "{}", r.stdout);
    assert!(files_under(&dir.join("production")).is_empty());
    r
}

/// `kompress worker` on `yaml` with its termination log at `log` (and `env` besides).
fn worker(yaml: &str, log: &Path, env: &[(&str, &str)]) -> Ran {
    let mut all = vec![
        ("KOMPRESS_JOB", yaml),
        ("KOMPRESS_TERMINATION_LOG", log.to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    run_kompress(&["worker"], &all)
}

fn digits_job(name: &str, passes: &str, thresholds: &str, out: &Path) -> String {
    let r = repo();
    job_yaml(
        name,
        &r.join("examples/digits/model.onnx").display().to_string(),
        &r.join("examples/digits/eval.npz").display().to_string(),
        passes,
        thresholds,
        out,
    )
}

#[test]
fn the_bundled_example_is_promoted_at_least_3_5x_smaller_within_one_point() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_report(
        dir.path(),
        &digits_job("digits", QUANTIZE, GATE, dir.path()),
    );
    let res = &report["result"];
    assert_eq!(res["verdict"], "Passed");
    assert!(res["ratio"].as_f64().unwrap() >= 3.5, "{res}");
    assert!(res["accuracyDrop"].as_f64().unwrap() <= 0.01, "{res}");
    assert_eq!(
        res["checks"].as_array().unwrap().len(),
        4,
        "three thresholds and tensorsCompressed"
    );
    // provenance in the report
    assert_eq!(report["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["passes"][0]["tensors"].as_array().unwrap().len(), 3);

    let prod = dir.path().join("production");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prod.join("promoted.json")).unwrap()).unwrap();
    let digest = manifest["digest"].as_str().unwrap();
    assert_eq!(res["promoted"]["sha256"], digest);
    let promoted = prod.join(format!("sha256-{digest}/model.onnx"));
    assert_eq!(
        kompress::storage::sha256_file(&promoted).unwrap(),
        digest,
        "promoted bytes match their digest"
    );
    // the audit trail: candidate + report under the run prefix
    let runs = files_under(&dir.path().join("candidates"));
    assert!(
        runs.iter().any(|f| f.ends_with("model.onnx"))
            && runs.iter().any(|f| f.ends_with("report.json")),
        "{runs:?}"
    );
    // the stored report holds the run's final usage: the publish stage and its bytes included
    let stored = dir
        .path()
        .join("candidates")
        .join(runs.iter().find(|f| f.ends_with("report.json")).unwrap());
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored).unwrap()).unwrap();
    let usage = &stored["result"]["usage"];
    let stages: Vec<&str> = usage["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.last(), Some(&"publish"), "{usage}");
    let promoted_bytes = std::fs::metadata(&promoted).unwrap().len();
    assert!(
        usage["bytesWritten"].as_u64().unwrap() > 2 * promoted_bytes,
        "the candidate and its promoted copy: {usage}"
    );
    assert_eq!(
        usage, &res["usage"],
        "the report on disk is the one printed"
    );
}

#[test]
fn rerunning_an_identical_job_promotes_the_same_digest_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &digits_job("digits", QUANTIZE, GATE, dir.path()),
    );
    assert_eq!(
        run_kompress(&["run", "-f", &job, "--run-id", "a"], &[]).code,
        0
    );
    let manifest1 = std::fs::read(dir.path().join("production/promoted.json")).unwrap();
    assert_eq!(
        run_kompress(&["run", "-f", &job, "--run-id", "b"], &[]).code,
        0
    );
    let prod = files_under(&dir.path().join("production"));
    let (evidence, rest): (Vec<_>, Vec<_>) = prod.iter().partition(|f| f.contains("/evidence/"));
    assert_eq!(rest.len(), 2, "one model folder and one manifest: {prod:?}");
    assert_eq!(
        evidence.len(),
        2,
        "each promotion's evidence is kept: {prod:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("production/promoted.json")).unwrap(),
        manifest1,
        "manifest untouched"
    );
}

#[test]
fn a_gate_that_must_reject_rejects_and_promotes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = rejected(
        dir.path(),
        &digits_job(
            "digits",
            QUANTIZE,
            "    minCompressionRatio: 10",
            dir.path(),
        ),
    );
    assert!(r.stdout.contains("✗ minCompressionRatio"), "{}", r.stdout);
    assert!(
        files_under(&dir.path().join("candidates"))
            .iter()
            .any(|f| f.ends_with("report.json")),
        "the audit trail is still written"
    );
}

#[test]
fn prune_then_quantize_runs_and_reports_sparsity() {
    let dir = tempfile::tempdir().unwrap();
    let passes = "    - prune:\n        sparsity: 0.5\n    - quantize: {}";
    let report = run_report(
        dir.path(),
        &digits_job("digits", passes, "    maxAccuracyDrop: 0.05", dir.path()),
    );
    let tensors = report["passes"][0]["tensors"].as_array().unwrap();
    // The digits MLP has three weight matrices (64x256, 256x256, 256x10): all are pruned.
    assert_eq!(tensors.len(), 3, "{tensors:?}");
    for t in tensors {
        assert_eq!(t["sparsity"].as_f64().unwrap(), 0.5, "{t}");
    }
}

#[test]
fn the_worker_writes_a_compact_result_to_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = digits_job("digits", QUANTIZE, GATE, dir.path());
    let log = dir.path().join("termination-log");
    let r = worker(&yaml, &log, &[("KOMPRESS_RUN_ID", "ns.digits.g1")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let msg = std::fs::read_to_string(&log).unwrap();
    assert!(msg.len() <= 4096, "{} bytes", msg.len());
    let m: kompress::api::wire::WorkerMessage = serde_json::from_str(&msg).unwrap();
    assert_eq!(m.phase, kompress::api::Phase::Succeeded);
    assert!(
        m.result
            .unwrap()
            .artifact
            .unwrap()
            .uri
            .contains("runs/ns.digits.g1-"),
        "the run id is the folder's prefix; a time and a random suffix make it unique: {msg}"
    );
}

#[test]
fn the_worker_marks_permanent_errors_with_their_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = job_yaml(
        "x",
        "/nonexistent/model.onnx",
        "/nonexistent/d.npz",
        QUANTIZE,
        GATE,
        dir.path(),
    );
    let log = dir.path().join("termination-log");
    let r = worker(&yaml, &log, &[]);
    assert_eq!(r.code, kompress::api::wire::EXIT_PERMANENT);
    let m: kompress::api::wire::WorkerMessage =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(m.phase, kompress::api::Phase::Failed);
    assert_eq!(m.permanent, Some(true));
    assert_eq!(m.reason.as_deref(), Some("StorageError"));
}

/// Runs a job expected to fail permanently; returns stderr. Asserts nothing was promoted.
fn fails(dir: &Path, yaml: &str) -> String {
    let job = write_job(dir, yaml);
    let r = run_kompress(&["run", "-f", &job], &[]);
    assert_eq!(
        r.code,
        kompress::api::wire::EXIT_PERMANENT,
        "stdout {} stderr {}",
        r.stdout,
        r.stderr
    );
    assert!(
        files_under(&dir.join("production")).is_empty(),
        "nothing may reach promoteTo"
    );
    r.stderr
}

fn model_job(dir: &Path, model: &Path) -> String {
    job_yaml(
        "bad",
        &model.display().to_string(),
        &repo()
            .join("examples/digits/eval.npz")
            .display()
            .to_string(),
        QUANTIZE,
        GATE,
        dir,
    )
}

#[test]
fn bad_model_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = fails(d, &model_job(d, &d.join("missing.onnx")));
    assert!(
        e.contains("missing.onnx") && e.contains("does not exist"),
        "{e}"
    );

    std::fs::write(d.join("empty.onnx"), b"").unwrap();
    let e = fails(d, &model_job(d, &d.join("empty.onnx")));
    assert!(e.contains("empty.onnx") && e.contains("empty"), "{e}");

    std::fs::write(
        d.join("garbage.onnx"),
        b"\xff\xfe this is not a model at all \x00\x01",
    )
    .unwrap();
    let e = fails(d, &model_job(d, &d.join("garbage.onnx")));
    assert!(e.contains("garbage.onnx") && e.contains("ONNX"), "{e}");

    let full = std::fs::read(repo().join("examples/digits/model.onnx")).unwrap();
    std::fs::write(d.join("truncated.onnx"), &full[..full.len() - 1000]).unwrap();
    let e = fails(d, &model_job(d, &d.join("truncated.onnx")));
    assert!(
        e.contains("truncated.onnx") && e.contains("not a valid ONNX model"),
        "{e}"
    );
}

#[test]
fn a_model_whose_external_data_is_missing_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mdir = d.join("m");
    std::fs::create_dir(&mdir).unwrap();
    let m = kompress::onnx::load(&repo().join("examples/digits/model.onnx")).unwrap();
    kompress::onnx::save(
        &m.proto,
        &mdir.join("model.onnx"),
        &kompress::onnx::SaveOptions {
            external_data: Some(true),
        },
    )
    .unwrap();
    std::fs::remove_file(mdir.join("model.onnx.data")).unwrap();
    let e = fails(d, &model_job(d, &mdir.join("model.onnx")));
    assert!(e.contains("model.onnx.data"), "{e}");
}

fn dataset_job(dir: &Path, arrays: &[(&str, Npy)]) -> String {
    let p = dir.join("data.npz");
    write_npz(&p, arrays);
    job_yaml(
        "bad",
        &repo()
            .join("examples/digits/model.onnx")
            .display()
            .to_string(),
        &p.display().to_string(),
        QUANTIZE,
        GATE,
        dir,
    )
}

#[test]
fn datasets_that_do_not_fit_the_model_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = || i64_array(&[0, 1, 2, 3]);
    let e = fails(
        d,
        &dataset_job(
            d,
            &[
                ("pixels", f32_array(&[4, 64], &[0.0; 256])),
                ("labels", labels()),
            ],
        ),
    );
    assert!(
        e.contains("no array named `input`") && e.contains("pixels"),
        "{e}"
    );

    let e = fails(
        d,
        &dataset_job(
            d,
            &[
                ("input", f32_array(&[4, 63], &[0.0; 252])),
                ("labels", labels()),
            ],
        ),
    );
    assert!(e.contains("shape [4, 63]") && e.contains("expects"), "{e}");

    let e = fails(
        d,
        &dataset_job(
            d,
            &[
                (
                    "input",
                    Npy {
                        descr: "<f8",
                        shape: vec![4, 64],
                        bytes: vec![0; 4 * 64 * 8],
                    },
                ),
                ("labels", labels()),
            ],
        ),
    );
    assert!(e.contains("float64") && e.contains("float32"), "{e}");

    let e = fails(
        d,
        &dataset_job(d, &[("input", f32_array(&[4, 64], &[0.0; 256]))]),
    );
    assert!(
        e.contains("maxAccuracyDrop") && e.contains("labels"),
        "accuracy thresholds need labels: {e}"
    );
}

#[test]
fn spec_mistakes_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = fails(d, &digits_job("x", "    - quantise: {}", GATE, d));
    assert!(e.contains("quantise") && e.contains("unknown field"), "{e}");

    let e = fails(
        d,
        &digits_job(
            "x",
            QUANTIZE,
            "    maxAccuracyDrop: 1.5\n    minCompressionRatio: -2",
            d,
        ),
    );
    assert!(
        e.contains("spec.thresholds.maxAccuracyDrop")
            && e.contains("spec.thresholds.minCompressionRatio"),
        "all problems at once: {e}"
    );

    let e = fails(
        d,
        &digits_job("x", "    - prune:\n        pattern: \"4:2\"", GATE, d),
    );
    assert!(e.contains("spec.passes[0].prune.pattern"), "{e}");

    let e = fails(
        d,
        &digits_job("x", "    - prune:\n        sparsity: 1.0", GATE, d),
    );
    assert!(e.contains("spec.passes[0].prune.sparsity"), "{e}");

    let e = fails(
        d,
        &job_yaml("x", "ftp://host/model.onnx", "d.npz", QUANTIZE, GATE, d),
    );
    assert!(e.contains("spec.model.uri") && e.contains("ftp"), "{e}");
}

#[test]
fn fp16_storage_halves_the_model_and_keeps_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_report(
        dir.path(),
        &digits_job(
            "digits",
            "    - fp16: {}",
            "    minAgreement: 0.99\n    minCompressionRatio: 1.9",
            dir.path(),
        ),
    );
    assert_eq!(
        report["result"]["verdict"], "Passed",
        "{}",
        report["result"]
    );
    assert!(report["result"]["ratio"].as_f64().unwrap() > 1.9);
    assert!(
        report["result"]["candidate"]["cosineSimilarity"]
            .as_f64()
            .unwrap()
            > 0.9999
    );
}

#[test]
fn fp16_and_int8_in_one_recipe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = fails(
        dir.path(),
        &digits_job("x", "    - fp16: {}\n    - quantize: {}", GATE, dir.path()),
    );
    assert!(
        e.contains("spec.passes[1].quantize") && e.contains("already quantized"),
        "{e}"
    );
}

#[test]
fn a_missing_onnx_runtime_library_says_what_to_do() {
    // No ORT_DYLIB_PATH, no cache under HOME, no python3 on PATH: nothing to find.
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &digits_job("digits", QUANTIZE, GATE, dir.path()),
    );
    let exe = dir.path().join("kompress");
    std::fs::copy(bin(), &exe).unwrap(); // away from any library beside the build output
    let o = std::process::Command::new(&exe)
        .args(["run", "-f", &job])
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(kompress::api::wire::EXIT_PERMANENT),
        "{err}"
    );
    assert!(
        err.contains("ONNX Runtime shared library not found")
            && err.contains("ORT_DYLIB_PATH")
            && err.contains("hack/ort-lib"),
        "{err}"
    );
    assert!(files_under(&dir.path().join("production")).is_empty());
}

/// The digits model with every weight moved into a `Constant` node, as some exporters
/// (paddle2onnx) write models.
fn digits_with_constant_weights(path: &Path) {
    use prost::Message;
    let bytes = std::fs::read(repo().join("examples/digits/model.onnx")).unwrap();
    let mut m = kompress::onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    for t in std::mem::take(&mut g.initializer).into_iter().rev() {
        let name = t.name.clone().unwrap();
        let mut n = kompress::onnx::node(
            "Constant",
            format!("const_{name}"),
            vec![],
            vec![name],
            vec![],
        );
        n.attribute.push(kompress::onnx::pb::AttributeProto {
            name: Some("value".into()),
            r#type: Some(kompress::onnx::pb::attribute_proto::AttributeType::Tensor as i32),
            t: Some(t),
            ..Default::default()
        });
        g.node.insert(0, n);
    }
    write_model(&m, path);
}

#[test]
fn weights_held_in_constant_nodes_are_folded_and_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("constants.onnx");
    digits_with_constant_weights(&model);
    let report = run_report(dir.path(), &model_job(dir.path(), &model));
    assert_eq!(report["foldedConstants"], 6, "3 weights and 3 biases");
    assert_eq!(
        report["passes"][0]["tensors"].as_array().unwrap().len(),
        3,
        "the three MatMul weights are quantized"
    );
    assert_eq!(report["result"]["verdict"], "Passed", "{report}");
}

/// `kompress compress` sees the same weights `kompress run` does: Constant weights folded.
#[test]
fn compress_folds_constant_weights_before_the_passes_too() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("constants.onnx");
    digits_with_constant_weights(&model);
    let out = dir.path().join("out.onnx");
    let r = compress(&model, &out, "examples/digits-int8.yaml");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("6 weights held in Constant nodes folded"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("(3 tensors, 0 skipped)"), "{}", r.stderr);
    let ratio = std::fs::metadata(&model).unwrap().len() as f64
        / std::fs::metadata(&out).unwrap().len() as f64;
    assert!(ratio > 3.0, "ratio {ratio}");
}

/// As `kompress run` rejects it, `kompress compress` refuses a recipe that changes nothing:
/// exit 65, nothing written.
#[test]
fn compress_that_changes_no_weight_exits_65_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let passes = "    - quantize:\n        ops: [Conv]";
    let job = write_job(
        dir.path(),
        &digits_job("nothing", passes, "    maxAccuracyDrop: 0.01", dir.path()),
    );
    let out = dir.path().join("out.onnx");
    let model = repo().join("examples/digits/model.onnx");
    let r = compress(&model, &out, &job);
    assert_eq!(r.code, kompress::api::wire::EXIT_PERMANENT, "{}", r.stderr);
    assert!(r.stderr.contains("changed any weight"), "{}", r.stderr);
    assert!(!out.exists(), "an unchanged copy is not written");
}

/// A static recipe whose job names `spec.calibration.dataset` needs no `--calibration`.
#[test]
fn compress_calibrates_on_the_jobs_calibration_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let r0 = repo();
    let text = std::fs::read_to_string(r0.join("examples/digits-static.yaml"))
        .unwrap()
        .replace(
            "examples/digits/",
            &format!("{}/examples/digits/", r0.display()),
        );
    assert!(
        text.contains("calib.npz"),
        "the example names its calibration set"
    );
    let job = write_job(dir.path(), &text);
    let out = dir.path().join("out.onnx");
    let model = r0.join("examples/digits/model.onnx");
    let r = compress(&model, &out, &job);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("calibration: "), "{}", r.stderr);
    assert!(out.exists());
}

#[test]
fn a_recipe_that_changes_no_weight_is_rejected_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Conv only, on a model without Conv: nothing to quantize.
    let passes = "    - quantize:\n        ops: [Conv]";
    let r = rejected(
        dir.path(),
        &digits_job("nothing", passes, "    maxAccuracyDrop: 0.01", dir.path()),
    );
    assert!(
        r.stdout.contains("✗ tensorsCompressed"),
        "the summary names the failed check: {}",
        r.stdout
    );
    assert!(
        r.stderr.contains("no pass changed any weight"),
        "{}",
        r.stderr
    );
}

const STATIC: &str = "    - quantize:\n        mode: static\n        perChannel: true";
const STATIC_GATE: &str = "    maxAccuracyDrop: 0.01\n    minAgreement: 0.98";

#[test]
fn static_quantization_sets_the_last_rows_aside_for_calibration_and_never_scores_them() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_report(
        dir.path(),
        &digits_job("digits-static", STATIC, STATIC_GATE, dir.path()),
    );
    let res = &report["result"];
    assert_eq!(res["verdict"], "Passed", "{res}");
    // eval.npz has 540 rows: the last 128 (the default) calibrate, the first 412 are scored.
    assert_eq!(res["baseline"]["samples"], 412, "{res}");
    assert_eq!(res["candidate"]["samples"], 412, "{res}");
    let cal = &report["calibration"];
    assert_eq!(cal["method"], "minMax", "{cal}");
    assert_eq!(cal["samples"], 128);
    assert_eq!(cal["source"]["kind"], "dataset");
    assert_eq!(cal["source"]["rows"], serde_json::json!([412, 540]));
    assert_eq!(cal["source"]["sha256"], report["dataset"]["sha256"]);
    assert_eq!(cal["tensors"], 3, "the inputs of the three MatMuls");
    let pass = &report["passes"][0];
    let d = pass["description"].as_str().unwrap();
    assert!(
        // uint8 activations by default except on arm64 (ORT fuses U8S8 joins on x86).
        d.contains("U8S8")
            && d.contains("8-bit weights bounded in pairs")
            && d.contains("minMax over 128 samples"),
        "{d}"
    );
    assert_eq!(pass["tensors"].as_array().unwrap().len(), 3, "{pass}");
}

#[test]
fn static_quantization_with_a_calibration_set_scores_every_dataset_row() {
    let dir = tempfile::tempdir().unwrap();
    let calib = repo().join("examples/digits/calib.npz");
    let passes = format!(
        "{STATIC}\n        activationType: uint8\n        calibration:\n          method: entropy\n          samples: 200"
    );
    let yaml = format!(
        "{}  calibration:\n    dataset:\n      uri: {}\n",
        digits_job("digits-static", &passes, STATIC_GATE, dir.path()),
        calib.display()
    );
    let report = run_report(dir.path(), &yaml);
    let res = &report["result"];
    assert_eq!(res["verdict"], "Passed", "{res}");
    assert_eq!(res["candidate"]["samples"], 540);
    let cal = &report["calibration"];
    assert_eq!(cal["method"], "entropy");
    assert_eq!(cal["samples"], 200);
    assert_eq!(cal["source"]["kind"], "calibration");
    assert_eq!(cal["source"]["rows"], serde_json::json!([0, 200]));
    assert_eq!(
        cal["source"]["sha256"].as_str().unwrap(),
        sha256_hex(&calib)
    );
    assert!(
        report["passes"][0]["description"]
            .as_str()
            .unwrap()
            .contains("U8S8"),
        "{}",
        report["passes"][0]
    );
}

#[test]
fn calibration_samples_that_leave_nothing_to_score_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let passes = format!("{STATIC}\n        calibration:\n          samples: 540");
    let job = write_job(
        dir.path(),
        &digits_job("digits-static", &passes, STATIC_GATE, dir.path()),
    );
    let r = run_kompress(&["run", "-f", &job], &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("spec.passes[0].quantize.calibration.samples")
            && r.stderr.contains("540"),
        "{}",
        r.stderr
    );
    assert!(files_under(&dir.path().join("production")).is_empty());
}
