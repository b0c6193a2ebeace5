//! The compression cache end to end with `kompress run` on the bundled digits example (ONNX
//! Runtime evaluates every computed run): a second identical job reuses the first's result
//! (no baseline, compression or evaluation), publishes byte-identical files and says
//! `cachedFrom`; a changed threshold or dataset is a miss; a cached candidate changed after
//! the fact, a corrupt entry or a foreign one is a miss with a warning, and the changed bytes
//! are never promoted.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use support::*;

const QUANTIZE: &str = "    - quantize:\n        perChannel: true";
const GATE: &str =
    "    maxAccuracyDrop: 0.01\n    minAgreement: 0.98\n    minCompressionRatio: 3.5";

/// The digits model and dataset copied into `dir` (so a test may change them).
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let r = repo();
    let (model, data) = (dir.join("model.onnx"), dir.join("eval.npz"));
    std::fs::copy(r.join("examples/digits/model.onnx"), &model).unwrap();
    std::fs::copy(r.join("examples/digits/eval.npz"), &data).unwrap();
    (model, data)
}

fn job(dir: &Path, thresholds: &str, extra_output: &str) -> String {
    let (model, data) = (dir.join("model.onnx"), dir.join("eval.npz"));
    let mut yaml = job_yaml(
        "digits",
        &model.display().to_string(),
        &data.display().to_string(),
        QUANTIZE,
        thresholds,
        dir,
    );
    if !extra_output.is_empty() {
        yaml = yaml.replace(
            "\n  evaluation:",
            &format!("\n    {extra_output}\n  evaluation:"),
        );
    }
    write_job(dir, &yaml)
}

/// `kompress run -o json` (plus `extra` arguments): the report, stderr and the wall time.
fn run_json(job: &str, extra: &[&str]) -> (Value, String, f64) {
    let t = Instant::now();
    let mut args = vec!["run", "-f", job, "-o", "json"];
    args.extend_from_slice(extra);
    let r = run_kompress(&args, &[]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.stderr);
    (serde_json::from_str(&r.stdout).unwrap(), r.stderr, secs)
}

/// A warning on stderr (`WARN` in log lines, `warning:` on a terminal).
fn warned(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains(" WARN ") || l.starts_with("warning:"))
}

fn stages(report: &Value) -> Vec<String> {
    report["result"]["usage"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

fn computed(report: &Value) -> bool {
    let s = stages(report);
    s.contains(&"baseline".to_string()) && s.contains(&"compress".to_string())
}

/// The index entries under `<dir>/candidates/cache/`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("candidates/cache"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A run folder's local path from its artifact URI (`.../runs/<id>/model.onnx`).
fn run_folder(report: &Value) -> PathBuf {
    PathBuf::from(report["result"]["artifact"]["uri"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn a_second_identical_job_reuses_the_first_result_and_promotes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path());
    let job = job(dir.path(), GATE, "");
    let (first, _, t1) = run_json(&job, &[]);
    let (second, stderr, t2) = run_json(&job, &[]);
    eprintln!(
        "first run {t1:.2} s (stages {:?}), second {t2:.2} s (stages {:?}): {:.1}%",
        first["result"]["usage"]["stages"],
        second["result"]["usage"]["stages"],
        100.0 * t2 / t1
    );
    assert!(computed(&first) && first.get("cachedFrom").is_none());
    assert!(first["result"].get("cachedFrom").is_none());
    // The work was skipped: no baseline, compression or evaluation stage.
    assert_eq!(stages(&second), ["fetch", "cache", "publish"], "{stderr}");
    assert!(stderr.contains("cache: reusing"), "{stderr}");
    let from = &second["result"]["cachedFrom"];
    assert_eq!(from, &second["cachedFrom"], "report and result agree");
    let first_run = run_folder(&first);
    assert_eq!(from["run"], first_run.display().to_string());
    let key = from["key"].as_str().unwrap();
    assert_eq!(key.len(), 64);
    assert_eq!(
        entries(dir.path()),
        [dir.path().join(format!("candidates/cache/{key}.json"))]
    );
    // The same verdict, checks and evaluation; this run's own folder, id and report.
    for k in ["verdict", "checks", "ratio", "candidate", "baseline"] {
        assert_eq!(second["result"][k], first["result"][k], "{k}");
    }
    for k in ["passes", "recipe", "thresholds", "model", "dataset"] {
        assert_eq!(second[k], first[k], "{k}");
    }
    assert_ne!(second["runId"], first["runId"]);
    let second_run = run_folder(&second);
    assert_ne!(second_run, first_run);
    assert_eq!(
        std::fs::read(second_run.join("model.onnx")).unwrap(),
        std::fs::read(first_run.join("model.onnx")).unwrap(),
        "the new run folder holds the same candidate bytes"
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(second_run.join("report.json")).unwrap()).unwrap();
    assert_eq!(written["cachedFrom"], *from);
    // Promoted again, byte-identical, with this run's evidence naming where it came from.
    let digest = first["result"]["promoted"]["sha256"].as_str().unwrap();
    assert_eq!(second["result"]["promoted"], first["result"]["promoted"]);
    let promoted = dir
        .path()
        .join(format!("production/sha256-{digest}/model.onnx"));
    assert_eq!(sha256_hex(&promoted), digest);
    let evidence = second["result"]["evidence"]["uri"].as_str().unwrap();
    assert!(
        evidence.ends_with(&format!(
            "{}.intoto.json",
            second["runId"].as_str().unwrap()
        )),
        "{evidence}"
    );
    let envelope: Value = serde_json::from_slice(&std::fs::read(evidence).unwrap()).unwrap();
    use base64::Engine;
    let statement: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(statement["predicate"]["cachedFrom"], *from);
    let v = run_kompress(
        &[
            "verify",
            dir.path().join("production").to_str().unwrap(),
            "--unsigned",
        ],
        &[],
    );
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);

    // The table says so too; --no-cache computes and records the entry anew.
    let table = run_kompress(&["run", "-f", &job], &[]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("cached     from") && table.stdout.contains("--no-cache"),
        "{}",
        table.stdout
    );
    let (forced, _, _) = run_json(&job, &["--no-cache"]);
    assert!(computed(&forced) && forced["result"].get("cachedFrom").is_none());
    let entry: Value =
        serde_json::from_slice(&std::fs::read(&entries(dir.path())[0]).unwrap()).unwrap();
    assert_eq!(entry["run"], run_folder(&forced).display().to_string());
}

#[test]
fn a_changed_threshold_or_dataset_is_a_miss_and_cache_false_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = inputs(dir.path());
    let (first, _, _) = run_json(&job(dir.path(), GATE, ""), &[]);
    assert!(computed(&first));
    let looser = GATE.replace("0.01", "0.02");
    let (other, _, _) = run_json(&job(dir.path(), &looser, ""), &[]);
    assert!(
        computed(&other) && other["result"].get("cachedFrom").is_none(),
        "{other}"
    );
    // The same spec over other dataset bytes (an extra array: the evaluation is the same).
    npz_with(
        &repo().join("examples/digits/eval.npz"),
        &data,
        &[("unused", i64_array(&[1, 2, 3]))],
    );
    let (changed, _, _) = run_json(&job(dir.path(), GATE, ""), &[]);
    assert!(
        computed(&changed) && changed["result"].get("cachedFrom").is_none(),
        "{changed}"
    );
    assert_ne!(changed["dataset"]["sha256"], first["dataset"]["sha256"]);
    assert_eq!(entries(dir.path()).len(), 3, "one entry per key");
    // output.cache: false reads and records nothing.
    let off = tempfile::tempdir().unwrap();
    inputs(off.path());
    let job = job(off.path(), GATE, "cache: false");
    for _ in 0..2 {
        let (r, _, _) = run_json(&job, &[]);
        assert!(computed(&r) && r["result"].get("cachedFrom").is_none());
    }
    assert!(entries(off.path()).is_empty());
}

#[test]
fn a_tampered_cached_candidate_is_a_miss_that_recompresses_and_is_never_promoted() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path());
    let job = job(dir.path(), GATE, "");
    let (first, _, _) = run_json(&job, &[]);
    let digest = first["result"]["promoted"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    // The cached candidate's bytes change after the run; the promoted copy is removed, so
    // whatever the second run promotes, it promoted itself.
    let cached = run_folder(&first).join("model.onnx");
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    let tampered = sha256_bytes(&bytes);
    std::fs::remove_dir_all(dir.path().join("production")).unwrap();
    let (second, stderr, _) = run_json(&job, &[]);
    assert!(
        warned(&stderr) && stderr.contains("changed since it was recorded"),
        "{stderr}"
    );
    assert!(computed(&second) && second["result"].get("cachedFrom").is_none());
    assert_eq!(second["result"]["promoted"]["sha256"], digest.as_str());
    let promoted = dir
        .path()
        .join(format!("production/sha256-{digest}/model.onnx"));
    assert_eq!(sha256_hex(&promoted), digest);
    for f in files_under(&dir.path().join("production")) {
        let p = dir.path().join("production").join(&f);
        assert_ne!(sha256_hex(&p), tampered, "{f} holds the changed bytes");
    }
}

#[test]
fn a_corrupt_or_foreign_entry_is_a_miss_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path());
    let job = job(dir.path(), GATE, "");
    run_json(&job, &[]);
    let entry = entries(dir.path()).pop().unwrap();
    let good = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, b"{\"kind\": \"CompressionCacheEntry\", trunc").unwrap();
    let (second, stderr, _) = run_json(&job, &[]);
    assert!(
        warned(&stderr) && stderr.contains("is not a cache entry kompress wrote"),
        "{stderr}"
    );
    assert!(computed(&second) && second["result"].get("cachedFrom").is_none());
    // The computed run recorded a good entry again: the next run hits.
    let (third, _, _) = run_json(&job, &[]);
    assert_eq!(
        third["result"]["cachedFrom"]["run"],
        run_folder(&second).display().to_string()
    );
    // An entry naming a folder outside this output's runs/ is never followed.
    let mut foreign: Value = serde_json::from_slice(&good).unwrap();
    foreign["run"] = dir.path().join("elsewhere").display().to_string().into();
    std::fs::write(&entry, serde_json::to_vec(&foreign).unwrap()).unwrap();
    let (fourth, stderr, _) = run_json(&job, &[]);
    assert!(
        warned(&stderr) && stderr.contains("names a run folder outside"),
        "{stderr}"
    );
    assert!(computed(&fourth));
}

#[test]
fn a_cached_rejection_is_reported_rejected_again_and_promotes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path());
    let job = job(dir.path(), "    minCompressionRatio: 10", "");
    let (first, _, _) = run_json(&job, &[]);
    assert_eq!(first["result"]["verdict"], "Rejected");
    let (second, _, _) = run_json(&job, &[]);
    assert_eq!(second["result"]["verdict"], "Rejected");
    assert_eq!(stages(&second), ["fetch", "cache", "publish"]);
    assert_eq!(second["result"]["checks"], first["result"]["checks"]);
    assert!(second["result"].get("promoted").is_none());
    assert!(files_under(&dir.path().join("production")).is_empty());
}

#[test]
fn a_job_pinning_every_digest_reads_no_input_on_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = inputs(dir.path());
    let job = job(dir.path(), GATE, "");
    let mut yaml = std::fs::read_to_string(&job).unwrap();
    for f in [&model, &data] {
        let uri = format!("uri: {}\n", f.display());
        yaml = yaml.replace(&uri, &format!("{uri}    sha256: {}\n", sha256_hex(f)));
    }
    std::fs::write(&job, yaml).unwrap();
    let (first, _, t1) = run_json(&job, &[]);
    assert!(computed(&first));
    let (second, stderr, t2) = run_json(&job, &[]);
    eprintln!("pinned: first run {t1:.2} s, second {t2:.2} s");
    // The key came from the pinned digests: nothing was fetched.
    assert_eq!(stages(&second), ["cache", "publish"], "{stderr}");
    assert_eq!(
        second["result"]["cachedFrom"]["run"],
        run_folder(&first).display().to_string()
    );
    let read = second["result"]["usage"]["bytesRead"].as_u64().unwrap();
    let candidate = std::fs::metadata(run_folder(&first).join("model.onnx"))
        .unwrap()
        .len();
    assert!(
        read < candidate + (1 << 20),
        "read {read} bytes: the entry and the candidate only"
    );
    for k in ["model", "dataset"] {
        assert_eq!(second[k], first[k], "{k}");
    }
    assert_eq!(second["result"]["promoted"], first["result"]["promoted"]);
}
