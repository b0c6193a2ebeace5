//! Fixtures the tests build themselves: small ONNX MLPs, npz files, job manifests.
#![allow(dead_code)]

pub mod cluster;
pub mod hostile;
pub mod registry;

use kompress::onnx::{f32_tensor, pb};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kompress"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluation settings of the pass tests: `batch_size` rows a batch, one thread, one timed
/// run without warmup, no labels, every input fed by rows.
pub fn eval_cfg(batch_size: usize) -> kompress::eval::EvalConfig {
    kompress::eval::EvalConfig {
        batch_size,
        threads: Some(1),
        output: None,
        labels: None,
        labels_field: kompress::eval::labels::FIELD,
        limit: None,
        latency_batch: 1,
        warmup: 0,
        iterations: 1,
        inputs: Vec::new(),
        selection: Default::default(),
        task: Default::default(),
        slices: None,
        spill: None,
    }
}

/// A `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`), in bytes; 0 where /proc is missing.
pub fn status_bytes(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .map_or(0, |kib: usize| kib * 1024)
}

/// Deterministic values in [-1, 1).
pub fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9e3779b97f4a7c15);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(
                                d.map(Value::DimValue)
                                    .unwrap_or_else(|| Value::DimParam("batch".into())),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An MLP `input [batch, widths[0]] -> logits [batch, widths.last()]`: MatMul + Add (+ Relu
/// between layers), weights from a seeded generator scaled like He init.
pub fn mlp(widths: &[usize], seed: u64) -> pb::ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    for (i, w) in widths.windows(2).enumerate() {
        let (din, dout) = (w[0], w[1]);
        let scale = (2.0 / din as f32).sqrt();
        let wv: Vec<f32> = lcg(din * dout, seed + i as u64)
            .iter()
            .map(|v| v * scale)
            .collect();
        let bv: Vec<f32> = lcg(dout, seed + 100 + i as u64)
            .iter()
            .map(|v| v * 0.1)
            .collect();
        inits.push(f32_tensor(
            &format!("W{i}"),
            &[din as i64, dout as i64],
            &wv,
        ));
        inits.push(f32_tensor(&format!("B{i}"), &[dout as i64], &bv));
        let last = i == widths.len() - 2;
        let mm = format!("mm{i}");
        let out = if last {
            "logits".to_string()
        } else {
            format!("h{i}")
        };
        let add = if last { out.clone() } else { format!("pre{i}") };
        nodes.push(kompress::onnx::node(
            "MatMul",
            format!("MatMul_{i}"),
            vec![x.clone(), format!("W{i}")],
            vec![mm.clone()],
            vec![],
        ));
        nodes.push(kompress::onnx::node(
            "Add",
            format!("Add_{i}"),
            vec![mm, format!("B{i}")],
            vec![add.clone()],
            vec![],
        ));
        if !last {
            nodes.push(kompress::onnx::node(
                "Relu",
                format!("Relu_{i}"),
                vec![add],
                vec![out.clone()],
                vec![],
            ));
        }
        x = out;
    }
    pb::ModelProto {
        producer_name: Some("kompress-tests".into()),
        metadata_props: vec![pb::StringStringEntryProto {
            key: Some("fixture".into()),
            value: Some("mlp".into()),
        }],
        ..model_of(
            9,
            17,
            pb::GraphProto {
                name: Some("mlp".into()),
                node: nodes,
                initializer: inits,
                input: vec![value_info("input", &[None, Some(widths[0] as i64)])],
                output: vec![value_info(
                    "logits",
                    &[None, Some(*widths.last().unwrap() as i64)],
                )],
                ..Default::default()
            },
        )
    }
}

/// A model of `graph` at IR version `ir`, importing the default ONNX domain at `opset`.
pub fn model_of(ir: i64, opset: i64, graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(ir),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// The model's outputs on every sample of `ds`, flat, through ONNX Runtime with
/// `eval_cfg(batch_size)` (the model opened and its inputs prepared on its own session).
pub fn outputs_on(model: &Path, ds: &kompress::eval::Dataset, batch_size: usize) -> Vec<f32> {
    use kompress::eval;
    let cfg = eval_cfg(batch_size);
    let mut s = eval::open(model, &cfg).unwrap();
    let prep = eval::prepare(&s, ds, &cfg).unwrap();
    eval::evaluate(&mut s, &prep, &cfg, &|_, _| {})
        .unwrap()
        .0
        .values
        .into_vec()
        .unwrap()
}

/// [`outputs_on`] the npz at `data`.
pub fn outputs(model: &Path, data: &Path, batch_size: usize) -> Vec<f32> {
    outputs_on(
        model,
        &kompress::eval::Dataset::load(data).unwrap(),
        batch_size,
    )
}

/// The op types of the model's nodes, in order.
pub fn ops(m: &kompress::onnx::Model) -> Vec<String> {
    m.graph()
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap_or_default())
        .collect()
}

/// Rewrites the values of the model's first initializer (`W0` of an [`mlp`]) with `edit`.
pub fn edit_first_weight(model: &mut pb::ModelProto, edit: impl FnOnce(&mut Vec<f32>)) {
    let w = &mut model.graph.as_mut().unwrap().initializer[0];
    let mut v = kompress::onnx::tensor_f32_values(w).unwrap();
    edit(&mut v);
    kompress::onnx::set_f32_values(w, &v);
}

/// `model` written to `path` and loaded back as the pipeline loads it.
pub fn write_and_load(model: &pb::ModelProto, path: &Path) -> kompress::onnx::Model {
    write_model(model, path);
    kompress::onnx::load(path).unwrap()
}

pub fn write_model(model: &pb::ModelProto, path: &Path) {
    use prost::Message;
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A model with one node appended to its output `out`: `op(out, constant)` (Gather takes
/// `axis`), under the output's name, so the dataset and the spec fit it unchanged.
pub fn planted(
    src: &Path,
    dst: &Path,
    out: &str,
    op: &str,
    constant: pb::TensorProto,
    axis: Option<i64>,
) {
    use prost::Message;
    let mut m = pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let inner = format!("{out}__before_plant");
    for n in &mut g.node {
        for o in &mut n.output {
            if o == out {
                *o = inner.clone();
            }
        }
    }
    let cname = constant.name.clone().unwrap();
    g.initializer.push(constant);
    g.node.push(kompress::onnx::node(
        op,
        "planted".into(),
        vec![inner, cname],
        vec![out.into()],
        axis.map(|a| vec![kompress::onnx::attr_int("axis", a)])
            .unwrap_or_default(),
    ));
    std::fs::write(dst, m.encode_to_vec()).unwrap();
}

pub fn i64_tensor(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// One array for an npz: (.npy descr, shape, little-endian bytes).
pub struct Npy {
    pub descr: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32_array(shape: &[usize], v: &[f32]) -> Npy {
    Npy {
        descr: "<f4",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

pub fn i64_array(v: &[i64]) -> Npy {
    Npy {
        descr: "<i8",
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn npy_bytes(a: &Npy) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if a.shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        a.descr
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(&a.bytes);
    out
}

/// An int64 array of any shape.
pub fn i64_shaped(shape: &[usize], v: &[i64]) -> Npy {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    Npy {
        shape: shape.to_vec(),
        ..i64_array(v)
    }
}

/// A copy of the npz at `src` with `arrays` added (its own members kept as they are).
pub fn npz_with(src: &Path, dst: &Path, arrays: &[(&str, Npy)]) {
    std::fs::copy(src, dst).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap();
    add_members(zip::ZipWriter::new_append(f).unwrap(), arrays);
}

pub fn write_npz(path: &Path, arrays: &[(&str, Npy)]) {
    add_members(
        zip::ZipWriter::new(std::fs::File::create(path).unwrap()),
        arrays,
    );
}

/// Stores `arrays` as `<name>.npy` members and finishes the archive.
fn add_members(mut z: zip::ZipWriter<std::fs::File>, arrays: &[(&str, Npy)]) {
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, a) in arrays {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(&npy_bytes(a)).unwrap();
    }
    z.finish().unwrap();
}

/// A dataset for `mlp(widths)`: inputs and labels = the fp32 model's own argmax would need
/// ORT; labels here are arbitrary but fixed, so accuracy is just a number both models share.
pub fn mlp_dataset(path: &Path, n: usize, din: usize, classes: usize) {
    let x = lcg(n * din, 42);
    let labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    write_npz(
        path,
        &[
            ("input", f32_array(&[n, din], &x)),
            ("labels", i64_array(&labels)),
        ],
    );
}

/// Writes a manifest to `dir/job.yaml` and returns its path.
pub fn write_job(dir: &Path, yaml: &str) -> String {
    let p = dir.join("job.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

/// A CompressionJob manifest.
pub fn job_yaml(
    name: &str,
    model: &str,
    dataset: &str,
    passes: &str,
    thresholds: &str,
    out: &Path,
) -> String {
    format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {model}\n  dataset:\n    uri: {dataset}\n  passes:\n{passes}\n  thresholds:\n{thresholds}\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    latency:\n      warmup: 2\n      iterations: 5\n",
        out.join("candidates").display(),
        out.join("production").display()
    )
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_kompress(args: &[&str], envs: &[(&str, &str)]) -> Ran {
    let mut c = std::process::Command::new(bin());
    c.args(args).current_dir(repo());
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().expect("spawn kompress");
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// Writes `yaml` to `dir/job.yaml` and runs it (`kompress run -o json`): it must exit 0; its
/// JSON report.
pub fn run_report(dir: &Path, yaml: &str) -> serde_json::Value {
    run_json(&write_job(dir, yaml))
}

/// Runs the job manifest at `job` (`kompress run -o json`): it must exit 0; its JSON report.
pub fn run_json(job: &str) -> serde_json::Value {
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    serde_json::from_str(&r.stdout).unwrap()
}

/// The arguments of `kompress compress MODEL OUT -f JOB [--calibration DATA]`.
pub fn compress_args<'a>(
    model: &'a Path,
    out: &'a Path,
    job: &'a str,
    calibration: Option<&'a Path>,
) -> Vec<&'a str> {
    let mut args = vec![
        "compress",
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        "-f",
        job,
    ];
    if let Some(data) = calibration {
        args.extend(["--calibration", data.to_str().unwrap()]);
    }
    args
}

/// Every file under a directory (relative paths), empty when it does not exist.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The env of the real S3 server started by `hack/s3/up` (KOMPRESS_S3_ENV = its env file).
/// Panics with instructions when it is not running: these tests must not pass vacuously.
pub fn s3_env() -> Vec<(String, String)> {
    let path = std::env::var("KOMPRESS_S3_ENV").expect(
        "KOMPRESS_S3_ENV is not set: start the S3 server with `hack/s3/up` and export KOMPRESS_S3_ENV=<the path it prints> (make test does this)",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A variable of the S3 server's environment file (see [`s3_env`]).
pub fn env_value(env: &[(String, String)], k: &str) -> String {
    env.iter()
        .find(|(n, _)| n == k)
        .unwrap_or_else(|| panic!("{k} in the S3 env file"))
        .1
        .clone()
}

/// Puts the file `src` at `uri` (`s3://bucket/key`) with boto3.
pub fn s3_put(env: &[(String, String)], src: &Path, uri: &str) {
    boto(env, &["put", src.to_str().unwrap(), uri]);
}

/// Gets `uri` (`s3://bucket/key`) into the file `dst` with boto3.
pub fn s3_get(env: &[(String, String)], uri: &str, dst: &Path) {
    boto(env, &["get", uri, dst.to_str().unwrap()]);
}

/// The digits model and its evaluation set, put at `s3://models/<p>/model.onnx` and
/// `s3://datasets/<p>/eval.npz`: their URIs.
pub fn upload_digits(env: &[(String, String)], p: &str) -> (String, String) {
    let r = repo();
    let model = format!("s3://models/{p}/model.onnx");
    let data = format!("s3://datasets/{p}/eval.npz");
    s3_put(env, &r.join("examples/digits/model.onnx"), &model);
    s3_put(env, &r.join("examples/digits/eval.npz"), &data);
    (model, data)
}

/// A loopback port free now (the listener that found it is closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run_with_env(args: &[&str], env: &[(String, String)], extra: &[(&str, &str)]) -> Ran {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    run_kompress(args, &all)
}

/// A unique key prefix per test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// boto3 (an independent S3 client) against the test server: `put FILE s3://b/k`,
/// `get s3://b/k FILE`, or `list s3://b/prefix` (one key per line).
pub fn boto(env: &[(String, String)], args: &[&str]) -> String {
    let script = r#"
import sys, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
def split(u):
    b, _, k = u[len("s3://"):].partition("/")
    return b, k
op = sys.argv[1]
if op == "put":
    b, k = split(sys.argv[3]); s3.upload_file(sys.argv[2], b, k)
elif op == "get":
    b, k = split(sys.argv[2]); s3.download_file(b, k, sys.argv[3])
elif op == "list":
    b, k = split(sys.argv[2])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=k):
        for o in page.get("Contents", []):
            print(o["Key"])
"#;
    let mut c = std::process::Command::new("python3");
    c.arg("-c").arg(script).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("python3");
    assert!(
        o.status.success(),
        "boto3 {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}

// ---- issue 8: bounded runs, digests, promotion invariants (bad_inputs.rs, kill_trials.rs) ----

/// sha256 of bytes, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// sha256 of a file, lowercase hex (panics when it cannot be read).
pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_bytes(&bytes)
}

/// How a bounded kompress process ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; None when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
    /// It ran past its limit and was killed (with its process group).
    pub timed_out: bool,
    /// Peak RSS in kB, from `/usr/bin/time -f %M`, when asked for and available.
    pub max_rss_kb: Option<u64>,
}

impl Finished {
    /// The exit code, or `-signal` when a signal ended it.
    pub fn status(&self) -> i32 {
        self.code.unwrap_or(-self.signal.unwrap_or(0))
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {:?} signal {:?} after {:.2}s{}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.signal,
            self.elapsed.as_secs_f64(),
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Whether `/usr/bin/time` (GNU time, for peak RSS) is there.
pub fn gnu_time() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/time");
    let ok = std::process::Command::new(&p)
        .args(["-f", "%M", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(p)
}

/// Runs kompress (cwd = the repo) in its own process group, stdout/stderr to files (no pipe can
/// fill up), killing the whole group after `limit`. With `measure_rss`, it runs under
/// `/usr/bin/time -f %M` when that exists.
pub fn run_bounded(
    args: &[&str],
    envs: &[(&str, &str)],
    limit: std::time::Duration,
    measure_rss: bool,
) -> Finished {
    use std::os::unix::process::ExitStatusExt;
    let logs = tempfile::tempdir().unwrap();
    let rss_p = logs.path().join("rss");
    let time = if measure_rss { gnu_time() } else { None };
    let mut c = match &time {
        Some(t) => {
            let mut c = std::process::Command::new(t);
            c.arg("-f").arg("%M").arg("-o").arg(&rss_p).arg(bin());
            c
        }
        None => std::process::Command::new(bin()),
    };
    c.args(args);
    let Logged {
        status,
        timed_out,
        stdout,
        stderr,
        elapsed,
    } = run_logged(&mut c, envs, limit);
    let rss_text = String::from_utf8_lossy(&std::fs::read(&rss_p).unwrap_or_default()).into_owned();
    // GNU time reports a child killed by a signal as "Command terminated by signal N" and exits
    // 128+N; its %M is the last line of its output file.
    let mut code = status.code();
    let mut signal = status.signal();
    if time.is_some()
        && let Some(sig) = rss_text
            .lines()
            .find_map(|l| l.strip_prefix("Command terminated by signal "))
            .and_then(|s| s.trim().parse().ok())
    {
        code = None;
        signal = Some(sig);
    }
    let max_rss_kb = rss_text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok());
    Finished {
        code,
        signal,
        stdout,
        stderr,
        elapsed,
        timed_out,
        max_rss_kb,
    }
}

/// How a [`run_logged`] process ended.
pub struct Logged {
    pub status: std::process::ExitStatus,
    /// It ran past its limit and was killed (with its process group).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Runs `c` (cwd = the repo, `envs` added) in its own process group with stdin closed and
/// stdout/stderr to files (no pipe can fill up), killing the whole group after `limit`.
pub fn run_logged(
    c: &mut std::process::Command,
    envs: &[(&str, &str)],
    limit: std::time::Duration,
) -> Logged {
    use std::os::unix::process::CommandExt;
    let logs = tempfile::tempdir().unwrap();
    let (out_p, err_p) = (logs.path().join("stdout"), logs.path().join("stderr"));
    c.current_dir(repo())
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap());
    for (k, v) in envs {
        c.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = c.spawn().expect("spawn kompress");
    let (status, timed_out) = wait_or_kill(&mut child, start, limit);
    let elapsed = start.elapsed();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Logged {
        status,
        timed_out,
        stdout: read(&out_p),
        stderr: read(&err_p),
        elapsed,
    }
}

/// Files under `dir` whose name marks a staging (temporary) upload: `kompress-tmp` or `#`.
pub fn staging_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let name = Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.contains("kompress-tmp") || name.contains('#')
        })
        .collect()
}

/// Checks what readers of a local `promoteTo` may see, whatever happened before: if
/// `promoted.json` exists it parses, and every file it lists exists beside its `uri` with
/// exactly its sha256; every `sha256-<D>/model.onnx` that is the only file of its folder (no
/// external data) hashes to D. Returns the manifest's digest, if any.
pub fn check_promote_dir(prod: &Path) -> Result<Option<String>, String> {
    for f in files_under(prod) {
        let p = Path::new(&f);
        let (Some(folder), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let folder_s = folder.display().to_string();
        if let Some(d) = folder_s.strip_prefix("sha256-")
            && name == "model.onnx"
        {
            let siblings: Vec<_> = std::fs::read_dir(prod.join(folder))
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains("kompress-tmp"))
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                // The promotions' evidence (DSSE envelopes) is kept beside the model files.
                .filter(|e| e.file_name() != "evidence")
                .collect();
            if siblings.len() == 1 {
                let got = sha256_hex(&prod.join(&f));
                if got != d {
                    return Err(format!("{f} is at a final name but hashes to {got}"));
                }
            }
        }
    }
    let mpath = prod.join("promoted.json");
    if !mpath.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&mpath).map_err(|e| e.to_string())?;
    let m: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "promoted.json does not parse ({e}): {:?}",
            String::from_utf8_lossy(&text)
        )
    })?;
    let digest = m["digest"]
        .as_str()
        .ok_or(format!("promoted.json has no digest: {m}"))?
        .to_string();
    let uri = m["uri"]
        .as_str()
        .ok_or(format!("promoted.json has no uri: {m}"))?;
    let model = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    if !model.is_file() {
        return Err(format!("promoted.json names {uri}, which is not a file"));
    }
    let folder = model.parent().unwrap();
    let files = m["files"]
        .as_array()
        .ok_or(format!("promoted.json has no files: {m}"))?;
    if files.is_empty() {
        return Err(format!("promoted.json lists no files: {m}"));
    }
    for f in files {
        let name = f["name"]
            .as_str()
            .ok_or(format!("file without name: {f}"))?;
        let want = f["sha256"]
            .as_str()
            .ok_or(format!("file without sha256: {f}"))?;
        let p = folder.join(name);
        if !p.is_file() {
            return Err(format!(
                "promoted.json lists {}, which is missing",
                p.display()
            ));
        }
        let got = sha256_hex(&p);
        if got != want {
            return Err(format!(
                "promoted.json says {} has sha256 {want}, it has {got}",
                p.display()
            ));
        }
    }
    if files.len() == 1 && files[0]["sha256"].as_str() != Some(digest.as_str()) {
        return Err(format!("digest {digest} is not the one file's sha256: {m}"));
    }
    if !folder.ends_with(format!("sha256-{digest}")) {
        return Err(format!("{uri} is not under sha256-{digest}/"));
    }
    Ok(Some(digest))
}

/// An embedding lookup `ids int64 [batch, seq] -> Gather(table [v, d], axis) -> emb`, table
/// from the seeded generator with rows of different magnitudes (so per-row scales differ).
/// `computed` feeds the table through an `Identity`, so the Gather's data is not an initializer.
pub fn embedding(v: usize, d: usize, axis: i64, computed: bool, seed: u64) -> pb::ModelProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let vi = |name: &str, ty: pb::tensor_proto::DataType, dims: &[Option<i64>]| {
        let mut i = value_info(name, dims);
        if let Some(pb::type_proto::Value::TensorType(t)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(ty as i32);
            if let Some(s) = t.shape.as_mut() {
                for (k, dim) in s.dim.iter_mut().enumerate() {
                    if k == 1 && dims[k].is_none() {
                        *dim = Dimension {
                            value: Some(Value::DimParam("seq".into())),
                            ..Default::default()
                        };
                    }
                }
            }
        }
        i
    };
    let table: Vec<f32> = lcg(v * d, seed)
        .iter()
        .enumerate()
        .map(|(i, x)| x * (0.05 + (i / d % 7) as f32 * 0.1))
        .collect();
    let mut nodes = Vec::new();
    let data = if computed {
        nodes.push(kompress::onnx::node(
            "Identity",
            "table_identity".to_string(),
            vec!["table".into()],
            vec!["table_copy".into()],
            vec![],
        ));
        "table_copy"
    } else {
        "table"
    };
    nodes.push(kompress::onnx::node(
        "Gather",
        "embed".to_string(),
        vec![data.into(), "ids".into()],
        vec!["emb".into()],
        vec![kompress::onnx::attr_int("axis", axis)],
    ));
    pb::ModelProto {
        producer_name: Some("kompress-tests".into()),
        ..model_of(
            9,
            17,
            pb::GraphProto {
                name: Some("embedding".into()),
                node: nodes,
                initializer: vec![f32_tensor("table", &[v as i64, d as i64], &table)],
                input: vec![vi("ids", pb::tensor_proto::DataType::Int64, &[None, None])],
                output: vec![vi(
                    "emb",
                    pb::tensor_proto::DataType::Float,
                    &[None, None, Some(d as i64)],
                )],
                ..Default::default()
            },
        )
    }
}

/// Token ids [n, seq] for `embedding(v, ..)`, every id in range, including 0 and v - 1.
pub fn embedding_dataset(path: &Path, n: usize, seq: usize, v: usize) -> Vec<i64> {
    let ids: Vec<i64> = (0..n * seq)
        .map(|i| ((i * 7919 + i / seq) % v) as i64)
        .collect();
    write_npz(
        path,
        &[(
            "ids",
            Npy {
                descr: "<i8",
                shape: vec![n, seq],
                bytes: ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        )],
    );
    ids
}

/// A binary hack/tools/build made (promtool, oras, registry, crane, kstatus): under
/// `KOMPRESS_TOOLS_BIN`, which `make test` sets.
pub fn tools_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KOMPRESS_TOOLS_BIN").unwrap_or_else(|| {
        panic!(
            "KOMPRESS_TOOLS_BIN is unset: run via `make test`, or export KOMPRESS_TOOLS_BIN=$(hack/tools/build | tail -n1)"
        )
    });
    let p = PathBuf::from(dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: run hack/tools/build",
        p.display()
    );
    p
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM), made by openssl:
/// `<dir>/<name>.pem` and `<dir>/<name>.pub`; `alg` is `ed25519` or `p256`.
pub fn keypair(dir: &Path, name: &str, alg: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub")),
    );
    let key_s = key.to_str().unwrap();
    let generate: Vec<&str> = match alg {
        "ed25519" => vec!["genpkey", "-algorithm", "ed25519", "-out", key_s],
        "p256" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key_s,
        ],
        other => panic!("no key type {other}"),
    };
    openssl(&generate);
    openssl(&[
        "pkey",
        "-in",
        key_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

/// Runs openssl (the test control plane needs it too); panics with its stderr on failure.
pub fn openssl(args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Waits for `child` (the leader of its own process group) until `limit` after `start`; past
/// it the whole group is killed. Returns its status and whether it was killed.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    start: std::time::Instant,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, bool) {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, false);
        }
        if start.elapsed() > limit {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            return (child.wait().unwrap(), true);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The check named `name` in a run's JSON report (`-o json`); panics listing the checks when
/// there is none.
pub fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["result"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {}", report["result"]["checks"]))
}

/// The start of a pure-Python custom evaluator (no numpy): loads the original's and the
/// candidate's `.npz` files kompress writes (`o`, `c`), the compared output's shape and
/// values (`shape`, `ov`, `cv`), and their top-1 agreement (`agree`); a test's evaluator
/// appends what it prints.
pub const NPZ_AGREEMENT_PY: &str = r#"import ast, json, os, struct, zipfile

def load(path):
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            b = z.read(name)
            hl = struct.unpack('<H', b[8:10])[0]
            h = ast.literal_eval(b[10:10 + hl].decode())
            data = b[10 + hl:]
            fmt = {'<f4': 'f', '<i8': 'q'}[h['descr']]
            n = len(data) // struct.calcsize(fmt)
            out[name[:-4]] = (h['shape'], struct.unpack('<%d%s' % (n, fmt), data))
    return out

o = load(os.environ['KOMPRESS_ORIGINAL'])
c = load(os.environ['KOMPRESS_CANDIDATE'])
shape, ov = o['output']
_, cv = c['output']
n = shape[0]
k = len(ov) // n
top = lambda v, i: max(range(k), key=lambda j: v[i * k + j])
agree = sum(top(ov, i) == top(cv, i) for i in range(n)) / n
"#;
