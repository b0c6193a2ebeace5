//! Issue 8's bad-input corpus, built by the tests themselves (small generated files, no
//! checked-in binaries), one module per family of the issue. Every case runs the real binary
//! with ONNX Runtime and asserts the exit code, words of the message, and that nothing was
//! promoted; every run also checks what must hold after any run: no panic (101) or abort
//! (134), the scratch base left empty, no staging file left under the output, and no message
//! that names the scratch copy instead of the user's URI.

#[path = "../support/mod.rs"]
mod support;

use kompress::onnx::pb;
use prost::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

const PERMANENT: i32 = kompress::cli::EXIT_PERMANENT;
const TRANSIENT: i32 = kompress::cli::EXIT_TRANSIENT;
/// What a write under a regular file (ENOTDIR) or an over-long name (ENAMETOOLONG) exits with:
/// 65, as the rule says ("everything retrying cannot fix -> 65"); a retry would meet
/// the same file in the way.
const NOT_A_DIRECTORY_EXIT: i32 = PERMANENT;

const INT8: &str = "    - quantize:\n        perChannel: true";
const FP16: &str = "    - fp16: {}";
const DIGITS_GATE: &str = "    maxAccuracyDrop: 0.02\n    minCompressionRatio: 1.5";
const LOOSE_GATE: &str = "    minCosineSimilarity: 0.5";

fn digits_model() -> PathBuf {
    repo().join("examples/digits/model.onnx")
}

fn digits_data() -> PathBuf {
    repo().join("examples/digits/eval.npz")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A CompressionJob manifest with every part settable.
#[derive(Clone)]
struct Job {
    name: String,
    model: String,
    dataset: String,
    passes: String,
    thresholds: String,
    output: String,
    promote: Option<String>,
    /// More `spec` fields, indented by two spaces (storage, evaluation, ...).
    extra: String,
}

impl Job {
    fn digits(out: &Path) -> Self {
        Self {
            name: "digits".into(),
            model: s(&digits_model()),
            dataset: s(&digits_data()),
            passes: INT8.into(),
            thresholds: DIGITS_GATE.into(),
            output: s(&out.join("candidates")),
            promote: Some(s(&out.join("production"))),
            extra: "  evaluation:\n    latency: {warmup: 1, iterations: 2}\n".into(),
        }
    }

    fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {}\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes:\n{}\n  thresholds:\n{}\n  output:\n    uri: {}\n",
            yq(&self.name),
            yq(&self.model),
            yq(&self.dataset),
            self.passes,
            self.thresholds,
            yq(&self.output)
        );
        if let Some(p) = &self.promote {
            y.push_str(&format!("    promoteTo: {}\n", yq(p)));
        }
        y.push_str(&self.extra);
        y
    }
}

/// A YAML double-quoted scalar.
fn yq(v: &str) -> String {
    serde_json::to_string(v).unwrap()
}

/// One case's sandbox: `out/` (output `out/candidates`, promoteTo `out/production`) and a
/// scratch base that must be empty after every run.
struct Case {
    dir: tempfile::TempDir,
    scratch: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        Self { dir, scratch }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn out(&self) -> PathBuf {
        self.path().join("out")
    }

    fn production(&self) -> PathBuf {
        self.out().join("production")
    }

    fn digits(&self) -> Job {
        Job::digits(&self.out())
    }

    fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// `kompress run -f job.yaml --scratch <scratch> [args]`, bounded by `limit`.
    fn run_with(&self, yaml: &str, args: &[&str], envs: &[(&str, &str)], limit: u64) -> Finished {
        self.run_bounded(yaml, args, envs, limit, false)
    }

    /// [`Case::run`] with its peak RSS measured (where GNU time is there).
    fn run_measured(&self, yaml: &str) -> Finished {
        self.run_bounded(yaml, &[], &[], 60, true)
    }

    fn run_bounded(
        &self,
        yaml: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        limit: u64,
        measure_rss: bool,
    ) -> Finished {
        let job = self.write("job.yaml", yaml);
        let mut all = vec!["run", "-f", job.to_str().unwrap()];
        all.extend(["--scratch", self.scratch.to_str().unwrap()]);
        all.extend(args);
        let f = run_bounded(&all, envs, Duration::from_secs(limit), measure_rss);
        self.after(&f, true);
        f
    }

    fn run(&self, yaml: &str) -> Finished {
        self.run_with(yaml, &[], &[], 60)
    }

    fn run_json(&self, yaml: &str) -> (Finished, Value) {
        let f = self.run_with(yaml, &["-o", "json"], &[], 60);
        assert_eq!(f.code, Some(0), "{}", f.describe());
        let v = serde_json::from_str(&f.stdout)
            .unwrap_or_else(|e| panic!("-o json output does not parse: {e}\n{}", f.describe()));
        (f, v)
    }

    /// `kompress worker --spec-file job.yaml --termination-log <log> --scratch <scratch>`:
    /// the run and its termination message (parsed).
    fn worker(&self, yaml: &str, envs: &[(&str, &str)]) -> (Finished, Value) {
        let job = self.write("worker-job.yaml", yaml);
        let log = self.path().join("termination-log");
        let _ = std::fs::remove_file(&log);
        let f = run_bounded(
            &[
                "worker",
                "--spec-file",
                job.to_str().unwrap(),
                "--termination-log",
                log.to_str().unwrap(),
                "--scratch",
                self.scratch.to_str().unwrap(),
            ],
            envs,
            Duration::from_secs(60),
            false,
        );
        self.after(&f, true);
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| {
            panic!(
                "the worker wrote no termination message ({e}):\n{}",
                f.describe()
            )
        });
        let m: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("termination message {text:?} does not parse: {e}"));
        (f, m)
    }

    /// What holds after any run the process survives.
    fn after(&self, f: &Finished, scratch_is_not_the_fault: bool) {
        assert!(!f.timed_out, "it hung: {}", f.describe());
        assert!(
            f.signal.is_none() && !matches!(f.code, Some(101) | Some(134)),
            "crashed (101 = panic, 134 = abort): {}",
            f.describe()
        );
        assert_ne!(
            f.code,
            Some(kompress::cli::EXIT_INTERNAL),
            "internal error: {}",
            f.describe()
        );
        let left = files_under(&self.scratch);
        let dirs: Vec<_> = std::fs::read_dir(&self.scratch)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty() && dirs.is_empty(),
            "scratch not cleaned: {left:?} {dirs:?}\n{}",
            f.describe()
        );
        let staging = staging_files(&self.out());
        assert!(
            staging.is_empty(),
            "staging files left under the output: {staging:?}"
        );
        if f.code != Some(0) {
            message_is_clean(&f.stderr, &self.scratch, scratch_is_not_the_fault);
        }
    }
}

/// Messages name what the user wrote, never the scratch copy, and have no empty names.
fn message_is_clean(stderr: &str, scratch: &Path, scratch_is_not_the_fault: bool) {
    let run_folder = format!("{}/{}", scratch.display(), kompress::cli::SCRATCH_PREFIX);
    let tmp_folder = format!(
        "{}/{}",
        std::env::temp_dir().display(),
        kompress::cli::SCRATCH_PREFIX
    );
    for bad in [
        run_folder.as_str(),
        tmp_folder.as_str(),
        "tensor ``",
        "  does not fit",
    ] {
        assert!(
            !stderr.contains(bad),
            "the message contains {bad:?}: {stderr}"
        );
    }
    if scratch_is_not_the_fault {
        assert!(
            !stderr.contains(&s(scratch)),
            "the message names the scratch folder: {stderr}"
        );
    }
}

/// Every `|`-separated group must match (one of its alternatives), case-insensitively.
fn says(text: &str, groups: &[&str]) -> bool {
    let t = text.to_lowercase();
    groups
        .iter()
        .all(|g| g.split('|').any(|w| t.contains(&w.to_lowercase())))
}

fn assert_says(f: &Finished, groups: &[&str]) {
    assert!(
        says(&f.stderr, groups),
        "the message should say {groups:?}:\n{}",
        f.describe()
    );
}

/// The cases of one family: each runs even after another failed; the test fails at the end
/// listing every failed case with its message (exit code and output).
/// The digits job on `m` (an MLP 64 -> .. -> 10) saved as `<case>/<file>`, with a dataset
/// for it: (the model's path, the job).
fn mlp_job(case: &Case, m: &pb::ModelProto, file: &str) -> (PathBuf, Job) {
    let model = case.path().join(file);
    encode(m, &model);
    let data = case.path().join("data.npz");
    mlp_dataset(&data, 8, 64, 10);
    let mut job = case.digits();
    job.model = s(&model);
    job.dataset = s(&data);
    (model, job)
}

struct Cases {
    failed: Vec<String>,
    total: usize,
}

impl Cases {
    fn new() -> Self {
        Self {
            failed: Vec::new(),
            total: 0,
        }
    }

    fn case(&mut self, what: impl Into<String>, f: impl FnOnce()) {
        let what = what.into();
        self.total += 1;
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            self.failed.push(format!("[{what}] {msg}"));
        }
    }

    fn finish(self) {
        eprintln!(
            "{} of {} cases passed",
            self.total - self.failed.len(),
            self.total
        );
        assert!(
            self.failed.is_empty(),
            "{} of {} cases failed:\n\n{}",
            self.failed.len(),
            self.total,
            self.failed.join("\n\n")
        );
    }
}

/// Nothing reached promoteTo: no promoted.json anywhere under `root`, no sha256-* folder.
fn nothing_promoted(root: &Path, promote: &Path) {
    let all = files_under(root);
    assert!(
        !all.iter().any(|f| f.ends_with("promoted.json")),
        "a manifest was written: {all:?}"
    );
    let folders: Vec<_> = std::fs::read_dir(promote)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("sha256-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        folders.is_empty(),
        "promoted folders left under {}: {folders:?}, holding {:?}",
        promote.display(),
        files_under(promote)
    );
}

/// Runs a job that must fail with `code` saying `groups`, promoting nothing; with `limit_s` as
/// the most it may take.
fn fails(case: &Case, yaml: &str, code: i32, groups: &[&str], limit_s: f64) -> Finished {
    let f = case.run_with(yaml, &[], &[], 60);
    eprintln!(
        "  exit {:?} in {:.2}s: {}",
        f.code,
        f.elapsed.as_secs_f64(),
        f.stderr.lines().last().unwrap_or_default()
    );
    assert_eq!(f.code, Some(code), "{}", f.describe());
    assert_says(&f, groups);
    assert!(
        f.elapsed.as_secs_f64() < limit_s,
        "took {:.1}s (limit {limit_s}s): {}",
        f.elapsed.as_secs_f64(),
        f.describe()
    );
    nothing_promoted(&case.out(), &case.production());
    f
}

/// The termination message of a failed worker: phase Failed, a reason, `permanent` matching
/// the exit code.
fn failed_message(f: &Finished, m: &Value, code: i32) {
    assert_eq!(f.code, Some(code), "{}\nmessage: {m}", f.describe());
    assert_eq!(m["phase"], "Failed", "{m}");
    assert!(
        m["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "no reason: {m}"
    );
    assert_eq!(m["permanent"], Value::Bool(code == PERMANENT), "{m}");
}

/// The model as a protobuf.
fn decode(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn encode(m: &pb::ModelProto, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

/// A tensor's little-endian payload.
fn payload(t: &pb::TensorProto) -> Vec<u8> {
    match &t.raw_data {
        Some(b) if !b.is_empty() => b.to_vec(),
        _ => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn entry(k: &str, v: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// Moves initializers into external files under `dir`: `place(name)` gives each tensor's
/// location (None keeps it inline). In each file, tensors follow one another from offset
/// `start` with `gap` bytes between them (0xA5 filler before and between them; the file ends
/// with the last tensor, as its declared size caps it).
fn externalize(
    m: &mut pb::ModelProto,
    dir: &Path,
    place: &dyn Fn(&str) -> Option<String>,
    start: usize,
    gap: usize,
) {
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        let Some(loc) = place(t.name()) else {
            continue;
        };
        let data = payload(t);
        let buf = files
            .entry(loc.clone())
            .or_insert_with(|| vec![0xA5; start]);
        if buf.len() > start {
            buf.extend(std::iter::repeat_n(0xA5, gap));
        }
        let offset = buf.len();
        buf.extend(&data);
        t.raw_data = None;
        t.float_data.clear();
        t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        t.external_data = vec![
            entry("location", &loc),
            entry("offset", &offset.to_string()),
            entry("length", &data.len().to_string()),
        ];
    }
    for (loc, bytes) in files {
        let p = dir.join(&loc);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

// ---- 1. scratch names cannot collide with what a model or dataset names --------------------

mod scratch_collisions;

// ---- 2 + 4. storage write failures: exit codes, messages, termination messages --------------

mod storage_write_failures;

// ---- 3. external data is confined to the model's directory ---------------------------------

mod external_data_confinement;

// ---- 5. promotion never trusts what is already at a content address -------------------------

mod promotion_trust;

// ---- 6. every run gets its own run folder --------------------------------------------------

mod unique_run_folders;

// ---- 7. untrusted data: datasets and models that lie ---------------------------------------

mod untrusted_data;

// ---- 8. spec values that pass a schema but not sense ----------------------------------------

mod spec_values;

// ---- 9. exit codes and messages name what the user wrote ------------------------------------

mod exit_codes_and_messages;

// ---- 10. local paths with spaces and non-ASCII letters round-trip ---------------------------

mod local_paths;

// ---- 11. cleanup on every exit path the process survives ------------------------------------

mod cleanup;

mod task_evaluation;
