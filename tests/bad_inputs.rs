//! Issue 8's bad-input corpus, built by the tests themselves (small generated files, no
//! checked-in binaries), one module per family of the issue. Every case runs the real binary
//! with ONNX Runtime and asserts the exit code, words of the message, and that nothing was
//! promoted; every run also checks what must hold after any run: no panic (101) or abort
//! (134), the scratch base left empty, no staging file left under the output, and no message
//! that names the scratch copy instead of the user's URI.

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

mod scratch_collisions {
    use super::*;

    /// The digits evaluation set plus a 1 MiB `padding` array (not a model input, so unused):
    /// larger than the model's weights, so weights read from it by mistake would load and
    /// give a garbage model, as in the issue, instead of failing to load.
    fn padded_digits_dataset(path: &Path) {
        use std::io::Write;
        let src = std::fs::File::open(digits_data()).unwrap();
        let mut src = zip::ZipArchive::new(src).unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for i in 0..src.len() {
            z.raw_copy_file(src.by_index_raw(i).unwrap()).unwrap();
        }
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("padding.npy", opts).unwrap();
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (262144,), }".to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        npy.extend((h.len() as u16).to_le_bytes());
        npy.extend(h.as_bytes());
        npy.extend(
            lcg(262_144, 8)
                .iter()
                .flat_map(|v| (v * 0.01).to_le_bytes()),
        );
        z.write_all(&npy).unwrap();
        z.finish().unwrap();
    }

    /// (model file name, external location for each tensor kind, dataset file name, offsets)
    struct Layout {
        model_file: &'static str,
        weights: &'static str,
        biases: &'static str,
        dataset_file: &'static str,
        start: usize,
        gap: usize,
    }

    const LAYOUTS: &[Layout] = &[
        Layout {
            model_file: "model.onnx",
            weights: "dataset.npz",
            biases: "dataset.npz",
            dataset_file: "dataset.npz",
            start: 0,
            gap: 0,
        },
        Layout {
            model_file: "model.onnx",
            weights: "eval.npz",
            biases: "eval.npz",
            dataset_file: "eval.npz",
            start: 7,
            gap: 3,
        },
        Layout {
            model_file: "net.onnx",
            weights: "model.onnx",
            biases: "model.onnx.data",
            dataset_file: "model.onnx.data",
            start: 4096,
            gap: 64,
        },
        Layout {
            model_file: "model.onnx",
            weights: "candidate/model.onnx",
            biases: "candidate/model.onnx",
            dataset_file: "model.npz",
            start: 13,
            gap: 1000,
        },
        Layout {
            model_file: "model.onnx",
            weights: "dataset/eval.npz",
            biases: "model/model.onnx",
            dataset_file: "eval.npz",
            start: 1,
            gap: 1,
        },
        Layout {
            model_file: "m.onnx",
            weights: "verify/model.onnx",
            biases: "input/dataset.npz",
            dataset_file: "dataset.npz",
            start: 100,
            gap: 5,
        },
        Layout {
            model_file: "model.onnx",
            weights: "weights.bin",
            biases: "report.json",
            dataset_file: "weights.bin",
            start: 0,
            gap: 17,
        },
    ];

    #[test]
    fn external_data_named_like_scratch_files_is_evaluated_with_its_real_weights() {
        // The accuracy of the real weights: the bundled model, no external data.
        let base = Case::new();
        let (_, plain) = base.run_json(&base.digits().yaml());
        let real_accuracy = plain["result"]["baseline"]["accuracy"].as_f64().unwrap();

        // A harmless name first, then every colliding layout.
        let harmless = Layout {
            model_file: "model.onnx",
            weights: "weights-harmless.bin",
            biases: "weights-harmless.bin",
            dataset_file: "eval.npz",
            start: 0,
            gap: 0,
        };
        let mut checks = Cases::new();
        for (i, l) in std::iter::once(&harmless).chain(LAYOUTS).enumerate() {
            checks.case(format!("layout {i}"), || {
                let case = Case::new();
                let mdir = case.path().join("m");
                let mut m = decode(&digits_model());
                externalize(
                    &mut m,
                    &mdir,
                    &|name| {
                        Some(if name.contains("weight") {
                            l.weights.to_string()
                        } else {
                            l.biases.to_string()
                        })
                    },
                    l.start,
                    l.gap,
                );
                let model = mdir.join(l.model_file);
                encode(&m, &model);
                let data = case.path().join("d").join(l.dataset_file);
                std::fs::create_dir_all(data.parent().unwrap()).unwrap();
                padded_digits_dataset(&data);
                let mut job = case.digits();
                job.model = s(&model);
                job.dataset = s(&data);
                let (f, out) = case.run_json(&job.yaml());
                let what = format!(
                    "layout {i} ({} / {} / {} / dataset {})",
                    l.model_file, l.weights, l.biases, l.dataset_file
                );

                // The report read from where the run says it wrote it.
                let report_path = out["result"]["report"].as_str().unwrap();
                let report: Value =
                    serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
                assert_eq!(report["model"]["sha256"], sha256_hex(&model), "{what}");
                assert_eq!(report["dataset"]["sha256"], sha256_hex(&data), "{what}");
                let ext = report["externalData"].as_array().unwrap();
                let mut locations = vec![l.weights, l.biases];
                locations.dedup();
                assert_eq!(ext.len(), locations.len(), "{what}: {ext:?}");
                for loc in locations {
                    let e = ext
                        .iter()
                        .find(|e| e["uri"].as_str().unwrap().ends_with(loc))
                        .unwrap_or_else(|| {
                            panic!("{what}: no externalData entry for {loc}: {ext:?}")
                        });
                    assert_eq!(e["sha256"], sha256_hex(&mdir.join(loc)), "{what}: {loc}");
                }
                assert_eq!(
                    report["result"]["baseline"]["accuracy"].as_f64(),
                    Some(real_accuracy),
                    "{what}: the baseline must be the real weights' accuracy\n{}",
                    f.stderr
                );
                assert_eq!(report["result"]["verdict"], "Passed", "{what}");
                check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
            });
        }
        checks.finish();
    }
}

// ---- 2 + 4. storage write failures: exit codes, messages, termination messages --------------

mod storage_write_failures {
    use super::*;

    /// A tmpfs mounted for one test, unmounted on drop (even when the test fails).
    pub struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        pub fn mount(opts: &str) -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            match Command::new("mount")
                .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
                .arg(dir.path())
                .output()
            {
                Ok(o) if o.status.success() => Some(Self { dir }),
                Ok(o) => {
                    eprintln!(
                        "NOTE: cannot mount a tmpfs ({opts}): {}; this case is covered by the ENOTDIR tests only",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    None
                }
                Err(e) => {
                    eprintln!("NOTE: cannot run mount ({e}); covered by the ENOTDIR tests only");
                    None
                }
            }
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
        }
    }

    /// Runs `case` once on a tmpfs of each size (`size=<size>` mount options), each a case of
    /// its own; a size that cannot be mounted is passed over (see [`Tmpfs::mount`]).
    fn on_full_disks(sizes: &[&str], case: impl Fn(&str, &Tmpfs)) {
        let mut checks = Cases::new();
        for size in sizes {
            checks.case(format!("size={size}"), || {
                if let Some(fs) = Tmpfs::mount(&format!("size={size}")) {
                    case(size, &fs);
                }
            });
        }
        checks.finish();
    }

    /// Runs `job` with `kompress run` and `kompress worker`: both exit `code`, the message says
    /// `groups`, the worker's termination message is Failed with a reason, nothing promoted.
    fn both_fail(case: &Case, job: &Job, code: i32, groups: &[&str], envs: &[(&str, &str)]) {
        let yaml = job.yaml();
        let f = case.run_with(&yaml, &[], envs, 60);
        assert_eq!(f.code, Some(code), "run: {}", f.describe());
        assert_says(&f, groups);
        let (w, m) = case.worker(&yaml, envs);
        failed_message(&w, &m, code);
        let text = m["message"].as_str().unwrap_or_default();
        assert!(
            says(text, groups),
            "the termination message should say {groups:?}: {m}"
        );
        if let Some(p) = &job.promote {
            let p = PathBuf::from(p);
            if p.is_dir() {
                nothing_promoted(&p, &p);
            }
        }
        nothing_promoted(&case.out(), &case.production());
    }

    #[test]
    fn output_under_a_regular_file_fails_naming_the_uri() {
        let case = Case::new();
        let blocker = case.path().join("blocker");
        std::fs::write(&blocker, b"a file, not a folder").unwrap();
        let mut checks = Cases::new();
        for output in [
            blocker.clone(),
            blocker.join("candidates"),
            blocker.join("a/b/c"),
        ] {
            checks.case(s(&output), || {
                let mut job = case.digits();
                job.output = s(&output);
                both_fail(
                    &case,
                    &job,
                    NOT_A_DIRECTORY_EXIT,
                    &[&s(&output), "not a directory"],
                    &[],
                );
            });
        }
        checks.finish();
        assert_eq!(std::fs::read(&blocker).unwrap(), b"a file, not a folder");
    }

    #[test]
    fn promote_to_under_a_regular_file_fails_naming_the_uri() {
        let case = Case::new();
        let blocker = case.path().join("blocker");
        std::fs::write(&blocker, b"x").unwrap();
        let mut checks = Cases::new();
        for promote in [blocker.clone(), blocker.join("production")] {
            checks.case(s(&promote), || {
                let mut job = case.digits();
                job.promote = Some(s(&promote));
                both_fail(
                    &case,
                    &job,
                    NOT_A_DIRECTORY_EXIT,
                    &[&s(&promote), "not a directory"],
                    &[],
                );
            });
        }
        checks.finish();
    }

    #[test]
    /// A job name longer than a file name may be (the run folder is named after it): the run
    /// either shortens the folder name and completes soundly, or fails naming the output URI
    /// (see NOT_A_DIRECTORY_EXIT); never a crash.
    fn an_over_long_job_name_never_crashes() {
        let mut checks = Cases::new();
        for n in [256, 300, 1000] {
            checks.case(format!("{n} characters"), || {
                let case = Case::new();
                let mut job = case.digits();
                job.name = "j".repeat(n);
                let f = case.run_with(&job.yaml(), &["-o", "json"], &[], 60);
                if f.code != Some(0) {
                    return both_fail(
                        &case,
                        &job,
                        NOT_A_DIRECTORY_EXIT,
                        &[&s(&case.out().join("candidates")), "too long|name"],
                        &[],
                    );
                }
                let report: Value = serde_json::from_str(&f.stdout).unwrap();
                assert_eq!(report["job"]["name"], job.name.as_str());
                let artifact = PathBuf::from(report["result"]["artifact"]["uri"].as_str().unwrap());
                assert!(artifact.is_file(), "{}", artifact.display());
                let folder = artifact.parent().unwrap().file_name().unwrap();
                assert!(folder.len() <= 255, "{folder:?}");
                check_promote_dir(&case.production()).unwrap();
                let (w, m) = case.worker(&job.yaml(), &[]);
                assert_eq!(w.code, Some(0), "{}", w.describe());
                assert_eq!(m["phase"], "Succeeded", "{m}");
            });
        }
        checks.finish();
    }

    /// A loopback port nobody listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    const DUMMY_AWS: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "dummy-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "dummy-secret-never-shown"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("KOMPRESS_STORAGE_RETRY_SECONDS", "2"),
    ];

    #[test]
    fn an_s3_endpoint_that_refuses_connections_is_transient_and_named() {
        let port = closed_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let storage = format!("  storage: {{endpoint: {endpoint}, allowHttp: true}}\n");
        // The candidate upload is refused (model and data are local)...
        let case = Case::new();
        let mut job = case.digits();
        job.output = "s3://models/refused/candidates".into();
        job.promote = Some("s3://models/refused/production".into());
        job.extra.push_str(&storage);
        both_fail(
            &case,
            &job,
            TRANSIENT,
            &[&format!("127.0.0.1:{port}|s3://models/refused/candidates")],
            DUMMY_AWS,
        );
        // ...and so is the model's fetch.
        let case = Case::new();
        let mut job = case.digits();
        job.model = "s3://models/refused/model.onnx".into();
        job.extra.push_str(&storage);
        both_fail(
            &case,
            &job,
            TRANSIENT,
            &[&format!("127.0.0.1:{port}|s3://models/refused/model.onnx")],
            DUMMY_AWS,
        );
        let f = case.run_with(&job.yaml(), &[], DUMMY_AWS, 60);
        assert!(
            !f.stderr.contains("dummy-secret-never-shown"),
            "{}",
            f.stderr
        );
    }

    #[test]
    fn a_full_output_disk_is_transient_and_names_the_uri() {
        // The candidate is 92 kB: 16k fits nothing, 64k not the candidate, 160k the run folder
        // but not the promoted copy, so the failure comes at a different write each time.
        on_full_disks(&["16k", "64k", "160k"], |size, fs| {
            let case = Case::new();
            let mut job = case.digits();
            job.output = s(&fs.path().join("candidates"));
            job.promote = Some(s(&fs.path().join("production")));
            both_fail(
                &case,
                &job,
                TRANSIENT,
                &[&s(fs.path()), "no space|disk full|full|space left"],
                &[],
            );
            nothing_promoted(fs.path(), &fs.path().join("production"));
            let staging = staging_files(fs.path());
            assert!(staging.is_empty(), "{size}: staging left: {staging:?}");
        });
    }

    #[test]
    fn a_full_promote_disk_is_transient_and_promotes_nothing() {
        on_full_disks(&["8k", "64k"], |_, fs| {
            let case = Case::new();
            let mut job = case.digits();
            let promote = fs.path().join("production");
            job.promote = Some(s(&promote));
            both_fail(
                &case,
                &job,
                TRANSIENT,
                &[&s(&promote), "no space|disk full|full|space left"],
                &[],
            );
            nothing_promoted(fs.path(), &promote);
            assert!(staging_files(fs.path()).is_empty());
        });
    }

    #[test]
    fn a_read_only_output_is_transient_and_says_read_only() {
        let Some(ro) = Tmpfs::mount("ro,size=1m") else {
            return;
        };
        let case = Case::new();
        let mut checks = Cases::new();
        for (output, promote) in [
            (ro.path().join("candidates"), case.production()),
            (case.out().join("candidates"), ro.path().join("production")),
            (ro.path().to_path_buf(), ro.path().join("production")),
        ] {
            checks.case(
                format!(
                    "output {}, promoteTo {}",
                    output.display(),
                    promote.display()
                ),
                || {
                    let mut job = case.digits();
                    job.output = s(&output);
                    job.promote = Some(s(&promote));
                    both_fail(&case, &job, TRANSIENT, &["read-only|read only"], &[]);
                },
            );
        }
        checks.finish();
    }

    #[test]
    fn a_full_scratch_disk_is_transient_and_never_blames_the_inputs() {
        // 64k: the model (341 kB) does not fit; 400k: the model does, the dataset (143 kB)
        // does not (a truncated dataset must never be taken as the user's); 520k: both do, the
        // candidate does not.
        on_full_disks(&["64k", "400k", "520k"], |size, fs| {
            let mut case = Case::new();
            case.scratch = fs.path().to_path_buf();
            let yaml = case.digits().yaml();
            let f = case.run_with(&yaml, &[], &[], 60);
            assert_eq!(f.code, Some(TRANSIENT), "{size}: {}", f.describe());
            assert_says(&f, &["no space|disk full|full|space left"]);
            nothing_promoted(&case.out(), &case.production());
            let (w, m) = case.worker(&yaml, &[]);
            failed_message(&w, &m, TRANSIENT);
            drop(case);
        });
    }

    #[test]
    fn a_read_only_scratch_is_transient() {
        let Some(ro) = Tmpfs::mount("ro,size=1m") else {
            return;
        };
        let mut case = Case::new();
        case.scratch = ro.path().to_path_buf();
        let yaml = case.digits().yaml();
        let f = case.run_with(&yaml, &[], &[], 60);
        assert_eq!(f.code, Some(TRANSIENT), "{}", f.describe());
        assert_says(&f, &["read-only|read only"]);
        let (w, m) = case.worker(&yaml, &[]);
        failed_message(&w, &m, TRANSIENT);
    }
}

// ---- 3. external data is confined to the model's directory ---------------------------------

mod external_data_confinement {
    use super::*;

    const MARKER: &[u8] = b"KOMPRESS-TEST-SECRET-";

    /// 1024 bytes (the size of B0, 256 floats) that start with MARKER; every 4-byte group is a
    /// finite float, so a model reading it as weights runs.
    fn secret() -> Vec<u8> {
        let mut v = MARKER.to_vec();
        while v.len() < 1024 {
            v.extend(b"password=hunter2;");
        }
        v.truncate(1024);
        v
    }

    /// An MLP 64 -> 256 -> 10 whose bias B0 is external at `location`; the rest inline.
    /// Returns the model path. The directory is `case/m`.
    fn model_with_external_bias(case: &Case, location: &str) -> PathBuf {
        let mdir = case.path().join("m");
        std::fs::create_dir_all(&mdir).unwrap();
        let mut m = mlp(&[64, 256, 10], 5);
        for t in &mut m.graph.as_mut().unwrap().initializer {
            if t.name() == "B0" {
                assert_eq!(payload(t).len(), 1024);
                t.raw_data = None;
                t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                t.external_data = vec![entry("location", location)];
            }
        }
        let p = mdir.join("model.onnx");
        encode(&m, &p);
        p
    }

    fn job(case: &Case, model: &Path) -> String {
        let data = case.path().join("data.npz");
        mlp_dataset(&data, 16, 64, 10);
        let mut job = case.digits();
        job.model = s(model);
        job.dataset = s(&data);
        job.thresholds = LOOSE_GATE.into();
        job.yaml()
    }

    fn secret_is_nowhere(case: &Case) {
        for f in files_under(&case.out()) {
            let bytes = std::fs::read(case.out().join(&f)).unwrap();
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER),
                "the secret's bytes were published in {f}"
            );
        }
    }

    const OUTSIDE: &str = "outside the model's directory";
    const NOT_REGULAR: &str = "not a regular file";

    #[test]
    fn locations_that_lead_out_of_the_model_directory_or_to_special_files_are_refused() {
        use std::os::unix::fs::symlink;
        type Setup = fn(&Path, &Path) -> &'static str;
        // (what, setup(model dir, elsewhere) -> location, expected words)
        let cases: Vec<(&str, Setup, &str)> = vec![
            (
                "absolute symlink to a secret",
                |m, e| {
                    symlink(e.join("secret.txt"), m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                OUTSIDE,
            ),
            (
                "relative symlink to a secret",
                |m, _| {
                    symlink("../elsewhere/secret.txt", m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                OUTSIDE,
            ),
            (
                "a chain of symlinks, the last one out",
                |m, _| {
                    symlink("../elsewhere/secret.txt", m.join("hop.bin")).unwrap();
                    symlink("hop.bin", m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                OUTSIDE,
            ),
            (
                "a subfolder that is a symlink out",
                |m, e| {
                    std::fs::copy(e.join("secret.txt"), e.join("leak.bin")).unwrap();
                    symlink(e, m.join("sub")).unwrap();
                    "sub/leak.bin"
                },
                OUTSIDE,
            ),
            (
                "a symlink to /dev/zero",
                |m, _| {
                    symlink("/dev/zero", m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                "outside the model's directory|not a regular file",
            ),
            (
                "a symlink to /proc/self/environ",
                |m, _| {
                    symlink("/proc/self/environ", m.join("env.bin")).unwrap();
                    "env.bin"
                },
                "outside the model's directory|not a regular file",
            ),
            (
                "a symlink to a FIFO elsewhere",
                |m, e| {
                    mkfifo(&e.join("pipe"));
                    symlink(e.join("pipe"), m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                "outside the model's directory|not a regular file",
            ),
            (
                "a FIFO in the model's directory",
                |m, _| {
                    mkfifo(&m.join("fifo.bin"));
                    "fifo.bin"
                },
                NOT_REGULAR,
            ),
            (
                "a directory",
                |m, _| {
                    std::fs::create_dir(m.join("dir.bin")).unwrap();
                    "dir.bin"
                },
                NOT_REGULAR,
            ),
            (
                "a symlink to a directory inside",
                |m, _| {
                    std::fs::create_dir(m.join("inner")).unwrap();
                    symlink("inner", m.join("leak.bin")).unwrap();
                    "leak.bin"
                },
                NOT_REGULAR,
            ),
        ];
        let mut checks = Cases::new();
        for (what, setup, words) in cases {
            checks.case(what, || {
                let case = Case::new();
                let elsewhere = case.path().join("elsewhere");
                std::fs::create_dir(&elsewhere).unwrap();
                std::fs::write(elsewhere.join("secret.txt"), secret()).unwrap();
                let mdir = case.path().join("m");
                std::fs::create_dir(&mdir).unwrap();
                let location = setup(&mdir, &elsewhere);
                let model = model_with_external_bias(&case, location);
                let f = case.run_with(&job(&case, &model), &[], &[], 20);
                assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
                assert!(
                    says(&f.stderr, &[location, words]),
                    "{what}: the message should name `{location}` and say {words:?}: {}",
                    f.stderr
                );
                nothing_promoted(&case.out(), &case.production());
                secret_is_nowhere(&case);
            });
        }
        checks.finish();
    }

    fn mkfifo(p: &Path) {
        let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
        assert!(ok, "mkfifo {}", p.display());
    }

    #[test]
    fn locations_in_subfolders_of_the_model_directory_are_accepted() {
        let mut checks = Cases::new();
        for (i, layout) in [
            ["data/w.bin", "data/w.bin"],
            ["data/w.bin", "data/b.bin"],
            ["a/b/c/deep.bin", "./weights/b.bin"],
            ["model.onnx.d/ä ö.bin", "x.bin"],
        ]
        .iter()
        .enumerate()
        {
            checks.case(format!("{layout:?}"), || {
                let case = Case::new();
                let mdir = case.path().join("m");
                let mut m = mlp(&[64, 48, 10], 9);
                externalize(
                    &mut m,
                    &mdir,
                    &|n| {
                        Some(if n.starts_with('W') {
                            layout[0].to_string()
                        } else {
                            layout[1].to_string()
                        })
                    },
                    i * 37,
                    i * 11,
                );
                let model = mdir.join("model.onnx");
                encode(&m, &model);
                let f = case.run_with(&job(&case, &model), &["-o", "json"], &[], 60);
                assert_eq!(f.code, Some(0), "{layout:?}: {}", f.describe());
                let report: Value = serde_json::from_str(&f.stdout).unwrap();
                let ext = report["externalData"].as_array().unwrap();
                for loc in layout {
                    let file = mdir.join(loc);
                    assert!(
                        ext.iter().any(|e| e["sha256"] == sha256_hex(&file)),
                        "{layout:?}: {loc} not in the report: {ext:?}"
                    );
                }
            });
        }
        checks.finish();
    }
}

// ---- 5. promotion never trusts what is already at a content address -------------------------

mod promotion_trust {
    use super::*;

    #[test]
    fn bytes_already_at_the_promoted_address_are_verified_or_replaced() {
        // The digest an identical run promotes.
        let first = Case::new();
        let (_, out) = first.run_json(&first.digits().yaml());
        let digest = out["result"]["promoted"]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let good = std::fs::read(
            first
                .production()
                .join(format!("sha256-{digest}/model.onnx")),
        )
        .unwrap();
        let n = good.len();
        let mut flipped = good.clone();
        flipped[n / 2] ^= 0x01;
        let planted: Vec<(&str, Vec<u8>)> = vec![
            ("zeros of the same size", vec![0u8; n]),
            ("random bytes of the same size", {
                let v = lcg(n.div_ceil(4), 77);
                v.iter().flat_map(|x| x.to_le_bytes()).take(n).collect()
            }),
            ("one bit flipped", flipped),
            ("one byte short", good[..n - 1].to_vec()),
            ("100 bytes too long", {
                let mut v = good.clone();
                v.extend([0u8; 100]);
                v
            }),
            ("empty", Vec::new()),
        ];
        let mut checks = Cases::new();
        for (what, bytes) in planted {
            checks.case(what, || {
                let case = Case::new();
                let at = case
                    .production()
                    .join(format!("sha256-{digest}/model.onnx"));
                std::fs::create_dir_all(at.parent().unwrap()).unwrap();
                std::fs::write(&at, &bytes).unwrap();
                let (_, out) = case.run_json(&case.digits().yaml());
                assert_eq!(
                    out["result"]["promoted"]["sha256"],
                    digest.as_str(),
                    "{what}"
                );
                assert_eq!(
                    sha256_hex(&at),
                    digest,
                    "{what}: the planted bytes were kept"
                );
                let manifest: Value = serde_json::from_slice(
                    &std::fs::read(case.production().join("promoted.json")).unwrap(),
                )
                .unwrap();
                assert_eq!(manifest["digest"], digest.as_str(), "{what}");
                assert_eq!(
                    PathBuf::from(manifest["uri"].as_str().unwrap()),
                    at,
                    "{what}: {manifest}"
                );
                check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
            });
        }
        checks.finish();
    }
}

// ---- 6. every run gets its own run folder --------------------------------------------------

mod unique_run_folders {
    use super::*;
    use std::process::Stdio;

    /// Starts every job at once (same job name, same output), waits for all.
    fn together(case: &Case, yamls: &[String], run_id: Option<&str>) {
        let mut children = Vec::new();
        for (i, y) in yamls.iter().enumerate() {
            let job = case.write(&format!("job-{i}.yaml"), y);
            let scratch = case.scratch.join(format!("s{i}"));
            std::fs::create_dir_all(&scratch).unwrap();
            let mut c = Command::new(bin());
            c.args(["run", "-f", job.to_str().unwrap(), "-o", "json"])
                .arg("--scratch")
                .arg(&scratch)
                .current_dir(repo())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(id) = run_id {
                c.args(["--run-id", id]);
            }
            children.push((c.spawn().unwrap(), scratch));
        }
        for (c, scratch) in children {
            let o = c.wait_with_output().unwrap();
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(files_under(&scratch).is_empty(), "scratch left");
            std::fs::remove_dir(&scratch).unwrap();
        }
    }

    fn each_folder_is_one_run(case: &Case, expected: usize) {
        let runs = case.out().join("candidates/runs");
        let folders: Vec<PathBuf> = std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(folders.len(), expected, "{folders:?}");
        for f in &folders {
            let report: Value =
                serde_json::from_slice(&std::fs::read(f.join("report.json")).unwrap()).unwrap();
            let artifact = &report["result"]["artifact"];
            assert_eq!(
                artifact["sha256"],
                sha256_hex(&f.join("model.onnx")),
                "{}: report.json and model.onnx are of different runs",
                f.display()
            );
            assert_eq!(
                PathBuf::from(artifact["uri"].as_str().unwrap()),
                f.join("model.onnx")
            );
        }
        check_promote_dir(&case.production()).unwrap();
    }

    #[test]
    fn two_runs_of_one_job_started_together_get_two_folders() {
        let mut checks = Cases::new();
        for round in 0..3 {
            checks.case(format!("round {round}"), || {
                let case = Case::new();
                let mut int8 = case.digits();
                int8.name = "twins".into();
                let mut fp16 = int8.clone();
                fp16.passes = FP16.into();
                fp16.thresholds = "    minAgreement: 0.98".into();
                let (a, b) = (int8.yaml(), fp16.yaml());
                let yamls = if round % 2 == 0 { [a, b] } else { [b, a] };
                together(&case, &yamls, None);
                each_folder_is_one_run(&case, 2);
            });
        }
        checks.finish();
    }

    #[test]
    fn four_runs_with_the_same_run_id_get_four_folders() {
        let case = Case::new();
        let base = case.digits();
        let recipes = [
            INT8,
            FP16,
            "    - quantize:\n        mode: weightOnly",
            "    - prune:\n        sparsity: 0.1\n    - quantize: {}",
        ];
        let yamls: Vec<String> = recipes
            .iter()
            .map(|r| {
                let mut j = base.clone();
                j.passes = r.to_string();
                j.thresholds = LOOSE_GATE.into();
                j.yaml()
            })
            .collect();
        together(&case, &yamls, Some("same"));
        each_folder_is_one_run(&case, 4);
    }
}

// ---- 7. untrusted data: datasets and models that lie ---------------------------------------

mod untrusted_data {
    use super::*;

    /// A `.npy` file with this header text (padded and terminated as numpy does) and data.
    fn npy(header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = header.to_vec();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h);
        out.extend(data);
        out
    }

    fn header(descr: &str, shape: &str) -> Vec<u8> {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}").into_bytes()
    }

    fn f32s(n: usize) -> Vec<u8> {
        lcg(n, 3).iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn labels(n: usize) -> Vec<u8> {
        npy(
            &header("<i8", &format!("({n},)")),
            &(0..n as i64)
                .map(|i| i % 10)
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
    }

    /// An npz of raw members, stored or deflated (level 9), zip64 entries when `large`.
    fn npz(members: &[(&str, Vec<u8>)], deflate: bool, large: bool) -> Vec<u8> {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .compression_level(deflate.then_some(9))
            .large_file(large);
        for (name, bytes) in members {
            z.start_file(format!("{name}.npy"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    /// The digits job on a dataset file with these bytes.
    fn digits_on(case: &Case, file: &str, bytes: &[u8]) -> String {
        let p = case.path().join(file);
        std::fs::write(&p, bytes).unwrap();
        let mut job = case.digits();
        job.dataset = s(&p);
        job.yaml()
    }

    fn input_member(h: &[u8], data: &[u8]) -> Vec<u8> {
        npz(
            &[("input", npy(h, data)), ("labels", labels(4))],
            false,
            false,
        )
    }

    #[test]
    fn npy_headers_and_payloads_that_lie_fail_permanently() {
        let ok = || header("<f4", "(4, 64)");
        let huge = "shape|too large|overflow|elements|addressed|exceeds|more than";
        let bad_header = "header|shape";
        let mut non_ascii = ok();
        non_ascii[12] = 0xff; // inside 'descr'
        let mut utf8 = ok();
        utf8.splice(3..3, "é".bytes());
        let mut bad_magic = npy(&ok(), &f32s(256));
        bad_magic[1] = b'X';
        let mut version9 = npy(&ok(), &f32s(256));
        version9[6] = 9;
        let mut long_len = npy(&ok(), &f32s(4));
        long_len[8..10].copy_from_slice(&60000u16.to_le_bytes());
        let mut zero_len = npy(&ok(), &f32s(256));
        zero_len[8..10].copy_from_slice(&0u16.to_le_bytes());
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("zero samples", npz(&[("input", npy(&header("<f4", "(0, 64)"), &[])), ("labels", labels(0))], false, false), "0 samples|no samples|empty|zero"),
            ("zero samples, deflated", npz(&[("input", npy(&header("<f4", "(0, 64)"), &[])), ("labels", labels(0))], true, false), "0 samples|no samples|empty|zero"),
            ("fewer labels than samples", npz(&[("input", npy(&ok(), &f32s(256))), ("labels", labels(3))], false, false), "labels"),
            ("'shape': )", input_member(&header("<f4", ")"), &f32s(256)), bad_header),
            ("'shape': (", input_member(&header("<f4", "("), &f32s(256)), bad_header),
            ("'shape': (4, 64 unclosed", input_member(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64", &f32s(256)), bad_header),
            ("negative dimension", input_member(&header("<f4", "(-4, 64)"), &f32s(256)), bad_header),
            ("fractional dimension", input_member(&header("<f4", "(4.5, 64)"), &f32s(256)), bad_header),
            ("no shape key", input_member(b"{'descr': '<f4', 'fortran_order': False, }", &f32s(256)), bad_header),
            ("a non-ASCII byte in the header", input_member(&non_ascii, &f32s(256)), "ascii|header"),
            ("UTF-8 in the header", input_member(&utf8, &f32s(256)), "ascii|header"),
            ("shape product overflows u64", input_member(&header("<f4", "(1099511627776, 1099511627776)"), &f32s(256)), huge),
            ("a dimension of u64::MAX", input_member(&header("<f4", "(18446744073709551615, 64)"), &f32s(256)), huge),
            ("bytes overflow, elements do not", input_member(&header("<f4", "(4611686018427387904, 4)"), &f32s(256)), huge),
            ("a dimension past u64", input_member(&header("<f4", "(99999999999999999999999, 64)"), &f32s(256)), huge),
            ("a huge shape over a small payload", input_member(&header("<f4", "(1000000000, 64)"), &f32s(256)), "truncated|bytes|short|size|ends|expected"),
            ("payload cut short", input_member(&ok(), &f32s(25)), "truncated|bytes|short|size|ends|expected"),
            ("header only", input_member(&ok(), &[]), "truncated|bytes|short|size|ends|expected"),
            ("bad magic", input_member_raw(bad_magic), "magic|not a .npy|npy"),
            ("format version 9", input_member_raw(version9), "version"),
            ("header length past the end", input_member_raw(long_len), "header|truncated|ends|short"),
            ("header length 0", input_member_raw(zero_len), "header"),
            ("an empty member", input_member_raw(Vec::new()), "empty|magic|npy|truncated|short"),
            ("unknown dtype", input_member(&header("<f999", "(4, 64)"), &f32s(256)), "dtype|<f999"),
            ("big-endian floats", input_member(&header(">f4", "(4, 64)"), &f32s(256)), "dtype|>f4|endian"),
            ("not a zip at all", b"\x00\x01 this is not an npz file".to_vec(), "zip|npz"),
            ("an empty file", Vec::new(), "empty|zip|npz"),
            ("a zip cut in half", { let z = input_member(&ok(), &f32s(256)); z[..z.len() / 2].to_vec() }, "zip|npz|truncated|corrupt"),
        ];
        let n = cases.len();
        let mut checks = Cases::new();
        for (i, (what, bytes, words)) in cases.into_iter().enumerate() {
            checks.case(what, || {
                let case = Case::new();
                let file = format!("set {i} of {n}.npz");
                let f = fails(
                    &case,
                    &digits_on(&case, &file, &bytes),
                    PERMANENT,
                    &[],
                    10.0,
                );
                assert!(
                    says(&f.stderr, &[&file, words]),
                    "{what}: should name `{file}` and say {words:?}:\n{}",
                    f.stderr
                );
            });
        }
        checks.finish();
    }

    fn input_member_raw(npy_bytes: Vec<u8>) -> Vec<u8> {
        npz(&[("input", npy_bytes), ("labels", labels(4))], false, false)
    }

    /// Byte offsets of every `sig` in `z`.
    fn find_all(z: &[u8], sig: &[u8]) -> Vec<usize> {
        z.windows(sig.len())
            .enumerate()
            .filter(|(_, w)| *w == sig)
            .map(|(i, _)| i)
            .collect()
    }

    fn u16_at(z: &[u8], at: usize) -> usize {
        u16::from_le_bytes([z[at], z[at + 1]]) as usize
    }

    /// Rewrites the uncompressed size the zip records for the member named `member`: in its
    /// local header (`local`), its central directory entry (`central`), the 32-bit field, or the
    /// zip64 extra field when the entry has one.
    fn claim_size(z: &mut [u8], member: &str, size: u64, local: bool, central: bool) {
        let name = format!("{member}.npy");
        let mut patched = 0;
        // (patched?, signature, offset of the name's and the extra's lengths, header length,
        // offset of the 32-bit uncompressed size)
        for (on, sig, lens, header, field) in [
            (local, b"PK\x03\x04", 26, 30, 22),
            (central, b"PK\x01\x02", 28, 46, 24),
        ] {
            if !on {
                continue;
            }
            for at in find_all(z, sig) {
                let (nlen, xlen) = (u16_at(z, at + lens), u16_at(z, at + lens + 2));
                if &z[at + header..at + header + nlen] != name.as_bytes() {
                    continue;
                }
                let field = at + field;
                if u32::from_le_bytes(z[field..field + 4].try_into().unwrap()) == u32::MAX {
                    // zip64 extra: uncompressed (8) then compressed (8)
                    let x = at + header + nlen;
                    let z64 = zip64_field(&z[x..x + xlen]).expect("zip64 extra");
                    z[x + z64..x + z64 + 8].copy_from_slice(&size.to_le_bytes());
                } else {
                    z[field..field + 4]
                        .copy_from_slice(&(size.min(u32::MAX as u64 - 1) as u32).to_le_bytes());
                }
                patched += 1;
            }
        }
        assert!(patched > 0, "no entry for {name}");
    }

    /// Offset of the zip64 extra field's first value within an extra block.
    fn zip64_field(extra: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, i), u16_at(extra, i + 2));
            if id == 1 {
                return Some(i + 4);
            }
            i += 4 + len;
        }
        None
    }

    #[test]
    fn zip_directories_that_claim_huge_members_fail_permanently() {
        const GIB64: u64 = 64 << 30;
        let members = |large| {
            npz(
                &[
                    ("input", npy(&header("<f4", "(4, 64)"), &f32s(256))),
                    ("labels", labels(4)),
                ],
                false,
                large,
            )
        };
        let deflated = npz(
            &[
                ("input", npy(&header("<f4", "(4, 64)"), &f32s(256))),
                ("labels", labels(4)),
            ],
            true,
            true,
        );
        /// (what, zip, member, claimed size, in the local header, in the central directory)
        type Claim = (&'static str, Vec<u8>, &'static str, u64, bool, bool);
        let cases: Vec<Claim> = vec![
            (
                "64 GiB in zip64, both headers",
                members(true),
                "input",
                GIB64,
                true,
                true,
            ),
            (
                "64 GiB in zip64, central only",
                members(true),
                "input",
                GIB64,
                false,
                true,
            ),
            (
                "u64::MAX in zip64",
                members(true),
                "labels",
                u64::MAX,
                true,
                true,
            ),
            (
                "4 GiB in 32-bit fields",
                members(false),
                "input",
                u32::MAX as u64 - 1,
                true,
                true,
            ),
            (
                "one byte more than stored",
                members(false),
                "input",
                1024 + 129,
                true,
                true,
            ),
            (
                "64 GiB, deflated member",
                deflated,
                "input",
                GIB64,
                true,
                true,
            ),
        ];
        let mut checks = Cases::new();
        for (i, (what, mut z, member, size, local, central)) in cases.into_iter().enumerate() {
            checks.case(what, || {
                claim_size(&mut z, member, size, local, central);
                let case = Case::new();
                let file = format!("claims-{i}.npz");
                let f = case.run_with(&digits_on(&case, &file, &z), &[], &[], 30);
                assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
                assert!(
                    says(
                        &f.stderr,
                        &[&file, "zip|size|corrupt|member|claims|declares"]
                    ),
                    "{what}: {}",
                    f.stderr
                );
                nothing_promoted(&case.out(), &case.production());
                assert!(
                    f.elapsed < Duration::from_secs(10),
                    "{what}: {}",
                    f.describe()
                );
            });
        }
        checks.finish();
    }

    /// An npz whose `input` member declares [4, 64] float32 (1 kB) but inflates to `zeros`
    /// bytes of zeros after its header.
    fn zip_bomb(zeros: usize) -> Vec<u8> {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(9))
            .large_file(true);
        z.start_file("input.npy", opts).unwrap();
        z.write_all(&npy(&header("<f4", "(4, 64)"), &[])).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = zeros;
        while left > 0 {
            let n = left.min(chunk.len());
            z.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        z.start_file("labels.npy", opts).unwrap();
        z.write_all(&labels(4)).unwrap();
        z.finish().unwrap().into_inner()
    }

    #[test]
    fn a_zip_bomb_is_refused_with_bounded_memory() {
        let bomb = |mib: usize| {
            let t = std::time::Instant::now();
            let z = zip_bomb(mib << 20);
            eprintln!(
                "zip bomb: {} bytes inflating to {mib} MiB, made in {:.1}s",
                z.len(),
                t.elapsed().as_secs_f64()
            );
            z
        };
        let honest = bomb(200);
        let mut lying = honest.clone();
        claim_size(&mut lying, "input", 1024 + 128, true, true);
        // 1 GiB: inflated whole, it alone would be over the 500 MB bound.
        let big = bomb(1024);
        let mut checks = Cases::new();
        for (what, z) in [
            ("200 MiB, honest zip sizes", honest),
            ("200 MiB, zip sizes that lie", lying),
            ("1 GiB, honest zip sizes", big),
        ] {
            checks.case(what, || {
                let case = Case::new();
                let file = case.path().join("bomb.npz");
                std::fs::write(&file, &z).unwrap();
                let mut job = case.digits();
                job.dataset = s(&file);
                let f = case.run_measured(&job.yaml());
                assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
                assert!(says(&f.stderr, &["bomb.npz"]), "{what}: {}", f.stderr);
                nothing_promoted(&case.out(), &case.production());
                assert!(
                    f.elapsed < Duration::from_secs(10),
                    "{what}: {}",
                    f.describe()
                );
                eprintln!(
                    "{what}: exit {:?} in {:.2}s, peak RSS {:?} kB: {}",
                    f.code,
                    f.elapsed.as_secs_f64(),
                    f.max_rss_kb,
                    f.stderr.lines().last().unwrap_or_default()
                );
                match f.max_rss_kb {
                    Some(kb) => assert!(
                        kb < 500 * 1024,
                        "{what}: peak RSS {} MB >= 500 MB",
                        kb / 1024
                    ),
                    None => eprintln!("NOTE: no /usr/bin/time here: peak RSS not checked"),
                }
            });
        }
        checks.finish();
    }

    /// The MLP 64 -> 32 -> 10 with `edit` applied, and a dataset for it.
    fn model_job(
        case: &Case,
        edit: &dyn Fn(&mut pb::GraphProto),
        passes: &str,
    ) -> (PathBuf, String) {
        let mut m = mlp(&[64, 32, 10], 11);
        edit(m.graph.as_mut().unwrap());
        let (model, mut job) = mlp_job(case, &m, "edited model.onnx");
        job.passes = passes.into();
        job.thresholds = LOOSE_GATE.into();
        (model, job.yaml())
    }

    #[test]
    fn models_whose_graphs_lie_fail_permanently() {
        type Edit = fn(&mut pb::GraphProto);
        use pb::tensor_shape_proto::{Dimension, dimension::Value as Dim};
        fn input_dims(g: &mut pb::GraphProto, dims: Vec<Dimension>) {
            let t = g.input[0].r#type.as_mut().unwrap();
            let Some(pb::type_proto::Value::TensorType(tt)) = t.value.as_mut() else {
                unreachable!()
            };
            tt.shape.as_mut().unwrap().dim = dims;
        }
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("no graph outputs", |g| g.output.clear(), "output"),
            ("no graph inputs", |g| g.input.clear(), "input"),
            (
                "a rank-0 input",
                |g| input_dims(g, vec![]),
                "rank|scalar|shape|dimension",
            ),
            (
                "an input with a zero-width axis",
                |g| {
                    input_dims(
                        g,
                        vec![
                            Dimension {
                                value: Some(Dim::DimParam("batch".into())),
                                ..Default::default()
                            },
                            Dimension {
                                value: Some(Dim::DimValue(0)),
                                ..Default::default()
                            },
                        ],
                    )
                },
                "shape|expects|dimension|0",
            ),
            (
                "an output no node produces",
                |g| g.output[0].name = Some("nowhere".into()),
                "nowhere",
            ),
            ("no nodes", |g| g.node.clear(), "logits|output|node"),
        ];
        let mut checks = Cases::new();
        for (what, edit, words) in cases {
            checks.case(what, || {
                let case = Case::new();
                let (_, yaml) = model_job(&case, &edit, INT8);
                let f = fails(&case, &yaml, PERMANENT, &[], 10.0);
                assert!(
                    says(&f.stderr, &["edited model.onnx", words]),
                    "{what}: should name the model and say {words:?}:\n{}",
                    f.stderr
                );
            });
        }
        checks.finish();
    }

    /// Gives W0 these dims, keeping its small payload.
    fn w0_dims(dims: &'static [i64]) -> impl Fn(&mut pb::GraphProto) {
        move |g| {
            for t in &mut g.initializer {
                if t.name() == "W0" {
                    t.dims = dims.to_vec();
                }
            }
        }
    }

    /// `kompress compress` (passes only, no ORT) on the model: must exit 65 quickly naming W0,
    /// writing no large file.
    fn compress_fails(case: &Case, model: &Path, yaml: &str, what: &str) {
        let job = case.write("compress-job.yaml", yaml);
        let out = case.path().join("compressed.onnx");
        let f = run_bounded(
            &[
                "compress",
                model.to_str().unwrap(),
                out.to_str().unwrap(),
                "-f",
                job.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(60),
            true,
        );
        assert!(
            !f.timed_out && f.signal.is_none(),
            "{what}: {}",
            f.describe()
        );
        assert_eq!(
            f.code,
            Some(PERMANENT),
            "compress, {what}: {}",
            f.describe()
        );
        assert!(
            says(
                &f.stderr,
                &["W0", "dims|shape|elements|overflow|size|bytes"]
            ),
            "compress, {what}: {}",
            f.stderr
        );
        assert!(
            f.elapsed < Duration::from_secs(10),
            "{what}: {}",
            f.describe()
        );
        let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        assert!(written < 1 << 20, "{what}: compress wrote {written} bytes");
        if let Some(kb) = f.max_rss_kb {
            assert!(kb < 500 * 1024, "{what}: peak RSS {} MB", kb / 1024);
        }
    }

    #[test]
    fn n_m_pruning_on_tensors_whose_dims_overflow_fails_permanently() {
        const DIMS: &[&[i64]] = &[
            &[i64::MAX, 2],
            &[1 << 40, 1 << 40],
            &[1 << 31, 1 << 31],
            &[1 << 62, 4],
            &[-1, 32],
            &[64, -32],
        ];
        let mut checks = Cases::new();
        for dims in DIMS {
            checks.case(format!("{dims:?}"), || {
                for pattern in ["2:4", "1:8"] {
                    let what = format!("{dims:?}, pattern {pattern}");
                    let case = Case::new();
                    let passes = format!("    - prune:\n        pattern: \"{pattern}\"");
                    let (model, yaml) = model_job(&case, &w0_dims(dims), &passes);
                    let f = fails(&case, &yaml, PERMANENT, &[], 10.0);
                    assert!(
                        says(&f.stderr, &["edited model.onnx", "W0|dims|shape"]),
                        "{what}: {}",
                        f.stderr
                    );
                    compress_fails(&case, &model, &yaml, &what);
                }
            });
        }
        checks.finish();
    }

    #[test]
    fn passes_on_a_tensor_claiming_2_36_by_2_28_elements_fail_fast_and_small() {
        const DIMS: &[i64] = &[1 << 36, 1 << 28];
        let mut checks = Cases::new();
        for passes in [
            INT8,
            "    - quantize: {}",
            "    - quantize:\n        mode: weightOnly\n        perChannel: true",
            FP16,
            "    - prune:\n        sparsity: 0.5",
        ] {
            checks.case(passes.trim().to_string(), || {
                let case = Case::new();
                let (model, yaml) = model_job(&case, &w0_dims(DIMS), passes);
                let f = case.run_measured(&yaml);
                assert_eq!(f.code, Some(PERMANENT), "{passes}: {}", f.describe());
                assert!(
                    says(&f.stderr, &["edited model.onnx", "W0|dims|shape"]),
                    "{passes}: {}",
                    f.stderr
                );
                assert!(
                    f.elapsed < Duration::from_secs(10),
                    "{passes}: {}",
                    f.describe()
                );
                if let Some(kb) = f.max_rss_kb {
                    assert!(kb < 500 * 1024, "{passes}: peak RSS {} MB", kb / 1024);
                }
                nothing_promoted(&case.out(), &case.production());
                let total: u64 = files_under(&case.out())
                    .iter()
                    .map(|p| std::fs::metadata(case.out().join(p)).unwrap().len())
                    .sum();
                assert!(total < 1 << 20, "{passes}: {total} bytes written");
                compress_fails(&case, &model, &yaml, passes);
            });
        }
        checks.finish();
    }
}

// ---- 8. spec values that pass a schema but not sense ----------------------------------------

mod spec_values {
    use super::*;

    fn with(case: &Case, edit: impl Fn(&mut Job)) -> String {
        let mut j = case.digits();
        edit(&mut j);
        j.yaml()
    }

    fn latency(warmup: &str, iterations: &str) -> String {
        format!("  evaluation:\n    latency: {{warmup: {warmup}, iterations: {iterations}}}\n")
    }

    #[test]
    fn out_of_range_numbers_name_their_field_within_5_seconds() {
        let case = Case::new();
        let prune = |p: &str| format!("    - prune:\n        pattern: \"{p}\"");
        let mut cases: Vec<(String, String)> = Vec::new();
        for p in [
            "1:99999999999999",
            "1:4294967296",
            "1:65",
            "64:65",
            "2:18446744073709551617",
            "1:18446744073709551615",
        ] {
            cases.push((
                with(&case, |j| j.passes = prune(p)),
                "spec.passes[0].prune.pattern".into(),
            ));
        }
        cases.push((
            with(&case, |j| {
                j.passes = format!(
                    "    - prune:\n        sparsity: 0.1\n{}",
                    prune("1:4294967296")
                )
            }),
            "spec.passes[1].prune.pattern".into(),
        ));
        cases.push((
            with(&case, |j| j.extra = latency("4294967295", "2")),
            "spec.evaluation.latency.warmup".into(),
        ));
        cases.push((
            with(&case, |j| j.extra = latency("1", "4294967295")),
            "spec.evaluation.latency.iterations".into(),
        ));
        for threads in ["1000", "257", "4294967295"] {
            cases.push((
                with(&case, |j| {
                    j.extra = format!("  evaluation:\n    threads: {threads}\n")
                }),
                "spec.evaluation.threads".into(),
            ));
        }
        for n in [17, 201] {
            cases.push((
                with(&case, |j| {
                    j.passes = "    - prune:\n        sparsity: 0.01\n"
                        .repeat(n)
                        .trim_end()
                        .into();
                    j.thresholds = LOOSE_GATE.into();
                }),
                "spec.passes".into(),
            ));
        }
        let mut checks = Cases::new();
        for (yaml, field) in cases {
            checks.case(field.clone(), || {
                fails(&case, &yaml, PERMANENT, &[&field], 5.0);
            });
        }
        checks.finish();
        // The worker refuses the same as InvalidSpec, permanently.
        let yaml = with(&case, |j| {
            j.extra = "  evaluation:\n    threads: 1000\n".into()
        });
        let (w, m) = case.worker(&yaml, &[]);
        failed_message(&w, &m, PERMANENT);
        assert!(
            m["message"]
                .as_str()
                .is_some_and(|t| t.contains("spec.evaluation.threads")),
            "{m}"
        );
    }

    #[test]
    fn deeply_nested_and_oversized_manifests_are_refused_within_5_seconds() {
        let case = Case::new();
        let valid = case.digits().yaml();
        let nested = |open: &str, close: &str, n: usize| {
            format!(
                "{valid}  nodeSelector: {}{}\n",
                open.repeat(n),
                close.repeat(n)
            )
        };
        let mut indented = valid.clone();
        indented.push_str("  nodeSelector:\n");
        for depth in 2..600 {
            indented.push_str(&format!("{}a:\n", " ".repeat(depth * 2)));
        }
        let mut big = valid.clone();
        big.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
        let mut annotation = valid.replace(
            "metadata:\n",
            &format!(
                "metadata:\n  annotations:\n    pad: \"{}\"\n",
                "y".repeat(1_200_000)
            ),
        );
        annotation.push('\n');
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "100k `[`, balanced (200 kB)",
                nested("[", "]", 100_000),
                "nest|deep|depth",
            ),
            (
                "200k `[`, unclosed",
                format!("{valid}  nodeSelector: {}\n", "[".repeat(200_000)),
                "nest|deep|depth",
            ),
            (
                "50k `{{a: `",
                nested("{a: ", "}", 50_000),
                "nest|deep|depth",
            ),
            ("600 levels of indentation", indented, "nest|deep|depth"),
            ("a 2 MB comment", big, "bytes|too large|size|mib|mb"),
            (
                "a 1.2 MB annotation",
                annotation,
                "bytes|too large|size|mib|mb",
            ),
        ];
        let mut checks = Cases::new();
        for (what, yaml, words) in cases {
            checks.case(what, || {
                let f = fails(&case, &yaml, PERMANENT, &[words], 5.0);
                assert!(
                    says(&f.stderr, &["manifest|job.yaml"]),
                    "{what}: {}",
                    f.stderr
                );
            });
        }
        checks.finish();
    }
}

// ---- 9. exit codes and messages name what the user wrote ------------------------------------

mod exit_codes_and_messages {
    use super::*;

    #[test]
    fn a_model_or_dataset_uri_that_is_a_directory_is_permanent_and_named() {
        let case = Case::new();
        let dir = case.path().join("models");
        std::fs::create_dir_all(dir.join("model.onnx")).unwrap();
        let mut checks = Cases::new();
        for model in [
            s(&dir),
            format!("{}/", dir.display()),
            s(&dir.join("model.onnx")),
            s(&repo().join("examples/digits")),
        ] {
            checks.case(model.clone(), || {
                let mut job = case.digits();
                job.model = model.clone();
                let shown = model.trim_end_matches('/');
                fails(
                    &case,
                    &job.yaml(),
                    PERMANENT,
                    &[shown, "directory|folder"],
                    10.0,
                );
            });
        }
        checks.finish();
        let mut job = case.digits();
        job.dataset = s(&dir);
        fails(
            &case,
            &job.yaml(),
            PERMANENT,
            &[&s(&dir), "directory|folder"],
            10.0,
        );
    }

    #[test]
    fn dataset_errors_name_the_users_uri_not_the_scratch_copy() {
        // Shapes that do not fit the model, under several spellings of the same file.
        let case = Case::new();
        let data = case.path().join("d/wrong shape.npz");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        write_npz(
            &data,
            &[
                ("input", f32_array(&[4, 63], &[0.0; 252])),
                ("labels", i64_array(&[0, 1, 2, 3])),
            ],
        );
        let mut checks = Cases::new();
        for uri in [
            s(&data),
            format!("{}/d/./wrong shape.npz", case.path().display()),
        ] {
            checks.case(uri.clone(), || {
                let mut job = case.digits();
                job.dataset = uri.clone();
                let f = fails(
                    &case,
                    &job.yaml(),
                    PERMANENT,
                    &["wrong shape.npz", "63"],
                    10.0,
                );
                assert!(
                    f.stderr.contains(&uri) || f.stderr.contains(&s(&data)),
                    "{}",
                    f.stderr
                );
            });
        }
        checks.finish();
    }

    #[test]
    fn an_http_endpoint_without_allow_http_is_permanent_and_says_allow_http() {
        let case = Case::new();
        let mut job = case.digits();
        job.output = "s3://models/x/candidates".into();
        job.promote = None;
        job.extra
            .push_str("  storage: {endpoint: \"http://127.0.0.1:9\"}\n");
        fails(&case, &job.yaml(), PERMANENT, &["allowHttp"], 10.0);
    }

    #[test]
    fn an_unnamed_tensor_is_never_shown_as_an_empty_name() {
        let case = Case::new();
        let mut m = mlp(&[64, 32, 10], 4);
        let g = m.graph.as_mut().unwrap();
        for t in &mut g.initializer {
            if t.name() == "W0" {
                t.name = Some(String::new());
                t.dims = vec![1 << 40, 1 << 40];
            }
        }
        for n in &mut g.node {
            for i in &mut n.input {
                if i == "W0" {
                    i.clear();
                }
            }
        }
        let (_, job) = mlp_job(&case, &m, "unnamed.onnx");
        fails(&case, &job.yaml(), PERMANENT, &["unnamed.onnx"], 10.0);
    }
}

// ---- 10. local paths with spaces and non-ASCII letters round-trip ---------------------------

mod local_paths {
    use super::*;

    /// A path from a report or manifest, as a local file.
    fn exists(uri: &str, what: &str) {
        let p = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            repo().join(p)
        };
        assert!(p.is_file(), "{what}: {uri} is not a file on disk");
    }

    #[test]
    fn every_uri_a_passing_run_reports_names_a_file_that_exists() {
        let mut checks = Cases::new();
        for (out_dir, model_name, data_name) in [
            (
                "out dir/ünï",
                "my models/modèle 1.onnx",
                "dätä/eval set.npz",
            ),
            ("a%20b/ç", "m%41/model.onnx", "d/eval.npz"),
            ("日本語 フォルダ", "model.onnx", "données.npz"),
        ] {
            checks.case(out_dir, || {
                let case = Case::new();
                let root = case.path().join(out_dir);
                let model = case.path().join(model_name);
                let data = case.path().join(data_name);
                for (src, dst) in [(digits_model(), &model), (digits_data(), &data)] {
                    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                    std::fs::copy(src, dst).unwrap();
                }
                let mut job = Job::digits(&root);
                job.model = s(&model);
                job.dataset = s(&data);
                let yaml = job.yaml();

                let f = case.run_with(&yaml, &[], &[], 60);
                assert_eq!(f.code, Some(0), "{out_dir}: {}", f.describe());
                // The summary's paths: `  candidate  <path>  sha256:…`, `  promoted  <path>`,
                // `  report  <path>`.
                let mut seen = 0;
                for line in f.stdout.lines() {
                    let t = line.trim_start();
                    for label in ["candidate ", "promoted ", "report "] {
                        if let Some(rest) = t.strip_prefix(label) {
                            let path = rest.trim().split("  sha256:").next().unwrap().trim();
                            if path.starts_with('/') || path.contains(out_dir) {
                                exists(path, &format!("{out_dir}: summary `{line}`"));
                                seen += 1;
                            }
                        }
                    }
                }
                assert_eq!(seen, 3, "{out_dir}: summary paths: {}", f.stdout);

                let manifest: Value = serde_json::from_slice(
                    &std::fs::read(root.join("production/promoted.json")).unwrap(),
                )
                .unwrap();
                exists(manifest["uri"].as_str().unwrap(), "promoted.json uri");
                exists(
                    manifest["source"]["uri"].as_str().unwrap(),
                    "promoted.json source",
                );
                check_promote_dir(&root.join("production")).unwrap();
                let report_uri = f
                    .stdout
                    .lines()
                    .find_map(|l| l.trim_start().strip_prefix("report "))
                    .unwrap()
                    .trim()
                    .to_string();
                let report: Value = serde_json::from_slice(
                    &std::fs::read(report_uri.strip_prefix("file://").unwrap_or(&report_uri))
                        .unwrap(),
                )
                .unwrap();
                for (what, v) in [
                    ("report model", &report["model"]["uri"]),
                    ("report dataset", &report["dataset"]["uri"]),
                    ("report artifact", &report["result"]["artifact"]["uri"]),
                    ("report promoted", &report["result"]["promoted"]["uri"]),
                    ("report report", &report["result"]["report"]),
                ] {
                    exists(v.as_str().unwrap_or_else(|| panic!("{what}: {v}")), what);
                }
                assert_eq!(report["model"]["uri"], s(&model).as_str());
                assert_eq!(report["dataset"]["uri"], s(&data).as_str());
            });
        }
        checks.finish();
    }
}

// ---- 11. cleanup on every exit path the process survives ------------------------------------

mod cleanup {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    #[derive(Clone, Copy, Debug)]
    enum Trigger {
        /// When stderr shows a line containing this.
        Line(&'static str),
        /// This long after the spawn.
        After(Duration),
    }

    /// Starts the job (`run`, or `worker` with a termination log in the case folder), sends
    /// `signal` at `trigger`, waits. Returns the exit code, the signal that ended it, stderr.
    fn interrupt(
        case: &Case,
        yaml: &str,
        worker: bool,
        trigger: Trigger,
        signal: &str,
    ) -> (Option<i32>, Option<i32>, String) {
        let job = case.write("job.yaml", yaml);
        let log = case.path().join("termination-log");
        let mut c = Command::new(bin());
        if worker {
            c.args(["worker", "--spec-file"])
                .arg(&job)
                .arg("--termination-log")
                .arg(&log);
        } else {
            c.args(["run", "-o", "json", "-f"]).arg(&job);
        }
        c.arg("--scratch")
            .arg(&case.scratch)
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let send = |pid: u32| {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        };
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        match trigger {
            Trigger::Line(marker) => loop {
                let mut line = String::new();
                if err.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push_str(&line);
                if line.contains(marker) {
                    send(child.id());
                    break;
                }
            },
            Trigger::After(d) => {
                std::thread::sleep(d);
                send(child.id());
            }
        }
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        seen.push_str(&rest);
        let status = child.wait().unwrap();
        (status.code(), status.signal(), seen)
    }

    /// One interrupted run: the scratch base is empty afterwards, whatever the moment; the run
    /// ended normally (0), as interrupted (75), or, before it had made anything, by the signal
    /// itself. Returns whether it reported the interruption.
    fn one(what: &str, worker: bool, trigger: Trigger, signal: &str) -> bool {
        let case = Case::new();
        let mut job = case.digits();
        job.extra = "  evaluation:\n    latency: {warmup: 5, iterations: 200}\n".into();
        let (code, sig, stderr) = interrupt(&case, &job.yaml(), worker, trigger, signal);
        let left = files_under(&case.scratch);
        let folders: Vec<_> = std::fs::read_dir(&case.scratch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            folders.is_empty(),
            "{what}: exit {code:?} signal {sig:?}: scratch left: {folders:?} holding {left:?}\n{stderr}"
        );
        assert!(
            matches!(code, Some(0) | Some(75)) || sig.is_some(),
            "{what}: exit {code:?} signal {sig:?}\n{stderr}"
        );
        assert!(
            !matches!(code, Some(101) | Some(134) | Some(70)),
            "{what}: {stderr}"
        );
        let staging = staging_files(&case.out());
        assert!(staging.is_empty(), "{what}: staging left: {staging:?}");
        check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
        if code == Some(TRANSIENT) {
            assert!(stderr.contains("interrupted"), "{what}: {stderr}");
            if worker {
                let m: Value = serde_json::from_slice(
                    &std::fs::read(case.path().join("termination-log")).unwrap(),
                )
                .unwrap();
                assert_eq!(m["phase"], "Failed", "{what}: {m}");
                assert_eq!(m["permanent"], false, "{what}: {m}");
                assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
            }
            return true;
        }
        false
    }

    #[test]
    fn signals_at_each_stage_leave_no_scratch_and_no_staging_files() {
        let mut interrupted = 0;
        let markers = [
            "fetching",
            "dataset:",
            "baseline",
            "pass 0",
            "evaluate candidate",
            "uploading candidate",
            "upload model.onnx",
            "promoting",
        ];
        let mut checks = Cases::new();
        for (i, marker) in markers.iter().enumerate() {
            for signal in ["TERM", "INT"] {
                let worker = i % 2 == 1;
                let what = format!(
                    "SIG{signal} at `{marker}` ({})",
                    if worker { "worker" } else { "run" }
                );
                checks.case(what.clone(), || {
                    interrupted += one(&what, worker, Trigger::Line(marker), signal) as usize;
                });
            }
        }
        checks.case("most runs were interrupted mid-run", || {
            assert!(
                interrupted >= markers.len(),
                "only {interrupted} of {} runs were interrupted mid-run",
                markers.len() * 2
            )
        });
        checks.finish();
    }

    #[test]
    fn signals_during_start_up_leave_no_scratch() {
        // Every few milliseconds of the first 60: across the moment the scratch folder is made
        // and the signal handlers are installed.
        let mut checks = Cases::new();
        for ms in (0..60).step_by(4) {
            let signal = if ms % 8 == 0 { "TERM" } else { "INT" };
            let worker = ms % 12 == 0;
            let what = format!(
                "SIG{signal} {ms} ms after the start ({})",
                if worker { "worker" } else { "run" }
            );
            checks.case(what.clone(), || {
                one(
                    &what,
                    worker,
                    Trigger::After(Duration::from_millis(ms)),
                    signal,
                );
            });
        }
        checks.finish();
    }

    #[test]
    fn errors_and_successes_leave_no_scratch() {
        // (Every test here checks the scratch after each run; these are the plain paths.)
        let case = Case::new();
        assert_eq!(case.run(&case.digits().yaml()).code, Some(0));
        let mut job = case.digits();
        job.dataset = s(&case.path().join("missing.npz"));
        assert_eq!(case.run(&job.yaml()).code, Some(PERMANENT));
        let mut job = case.digits();
        job.thresholds = "    minCompressionRatio: 100".into();
        assert_eq!(case.run(&job.yaml()).code, Some(0), "a rejection");
    }
}

/// Issue 19: what the evaluation reads from the outputs (selection, pooling, the task) and
/// the dataset's slices, when they do not fit the model or the data.
mod task_evaluation {
    use super::*;

    /// The digits job with `spec.evaluation` and `spec.thresholds` replaced, on a set without
    /// labels (a `labels` array is read as the task reads labels: digits' class labels beside
    /// a detection task would fail first, naming `spec.dataset.labels`).
    fn job(case: &Case, evaluation: &str, thresholds: &str) -> String {
        let data = case.path().join("unlabelled.npz");
        let n = 12;
        write_npz(&data, &[("input", f32_array(&[n, 64], &lcg(n * 64, 5)))]);
        let mut j = case.digits();
        j.dataset = s(&data);
        j.thresholds = thresholds.into();
        j.extra = format!("  evaluation:\n    latency: {{warmup: 1, iterations: 2}}\n{evaluation}");
        j.yaml()
    }

    #[test]
    fn selections_tasks_and_slices_that_do_not_fit_fail_naming_the_field() {
        let mut cases = Cases::new();
        let bad: &[(&str, &str, &str, &[&str])] = &[
            (
                "an output the model lacks",
                "    output: embeddings\n",
                LOOSE_GATE,
                &["spec.evaluation.output", "embeddings", "logits"],
            ),
            (
                "a selected axis out of range",
                "    select: [{axis: 1, index: 0}]\n",
                LOOSE_GATE,
                &["spec.evaluation.select[0].axis", "1 axes|has 1 ax"],
            ),
            (
                "an index past the axis",
                "    select: [{axis: 0, index: 10}]\n",
                LOOSE_GATE,
                &["spec.evaluation.select[0].index", "10 positions"],
            ),
            (
                "a pooling mask naming no array",
                "    pool: {op: mean, axis: 0, mask: attention_mask}\n",
                LOOSE_GATE,
                &["spec.evaluation.pool.mask", "attention_mask"],
            ),
            (
                "a detection layout the output does not have",
                "    task: {detection: {layout: yolov8}}\n",
                "    minDetectionF1: 0.5",
                &["spec.evaluation.task.detection.layout", "yolov8", "[10]"],
            ),
            (
                "detection outputs the model lacks",
                "    task: {detection: {layout: boxes, outputs: {boxes: boxes, scores: scores, classes: classes}}}\n",
                "    minDetectionF1: 0.5",
                &[
                    "spec.evaluation.task.detection.outputs.boxes",
                    "not an output",
                ],
            ),
            (
                "a sequence task on a [samples, classes] output",
                "    task: {sequence: {blank: 0}}\n",
                "    minSequenceMatch: 0.5",
                &["spec.evaluation.task.sequence", "[steps, classes]"],
            ),
            (
                "a task threshold without its task",
                "",
                "    minSequenceMatch: 0.5",
                &[
                    "spec.thresholds.minSequenceMatch",
                    "spec.evaluation.task.sequence",
                ],
            ),
        ];
        for (what, evaluation, thresholds, says) in bad {
            cases.case(*what, || {
                let case = Case::new();
                fails(
                    &case,
                    &job(&case, evaluation, thresholds),
                    PERMANENT,
                    says,
                    30.0,
                );
            });
        }
        cases.finish();
    }

    #[test]
    fn a_slices_array_of_the_wrong_length_fails_naming_the_field() {
        let case = Case::new();
        let data = case.path().join("sliced.npz");
        let n = 12;
        let x: Vec<f32> = lcg(n * 64, 3);
        write_npz(
            &data,
            &[
                ("input", f32_array(&[n, 64], &x)),
                ("slices", i64_array(&[0, 1, 0, 1, 0])),
            ],
        );
        let mut j = case.digits();
        j.dataset = s(&data);
        j.thresholds = LOOSE_GATE.into();
        let yaml = j.yaml().replace(
            &format!("    uri: {}\n", yq(&s(&data))),
            &format!("    uri: {}\n    slices: slices\n", yq(&s(&data))),
        );
        assert!(yaml.contains("slices: slices"), "{yaml}");
        fails(
            &case,
            &yaml,
            PERMANENT,
            &["spec.dataset.slices", "[5]", "[12]"],
            30.0,
        );
    }
}
