//! Inputs of every shape (`spec.dataset.inputs`): a scalar fed as is every run, a batch axis
//! other than 0, and a recurrent state fed back from an output row after row, in evaluation,
//! calibration and latency; on a small stateful fixture (exact reference arithmetic) and on
//! Silero VAD from its PyPI wheel.

mod support;

use kompress::api::InputFeed;
use kompress::eval::{self, Dataset, EvalConfig};
use kompress::onnx::{attr_int, attr_ints, f32_tensor, node, pb};
use std::path::{Path, PathBuf};
use support::*;

const DIN: usize = 64;
const HID: usize = 16;

fn tensor_info(
    name: &str,
    elem: pb::tensor_proto::DataType,
    dims: &[Option<i64>],
) -> pb::ValueInfoProto {
    let mut v = value_info(name, dims);
    if let Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(t)),
        ..
    }) = &mut v.r#type
    {
        t.elem_type = Some(elem as i32);
    }
    v
}

/// A streaming model shaped like Silero VAD: `input [B, 64]`, `state [2, B, 16]` (batch on
/// axis 1), `sr` an int64 scalar; `stateN = tanh(0.5 state + input W)`,
/// `output [B, 1] = sigmoid(mean over axis 0 of stateN · V · sr / 16000)`.
fn stateful_model() -> pb::ModelProto {
    let w = lcg(DIN * HID, 7);
    let v = lcg(HID, 8);
    let n = |op: &str, i: &[&str], o: &str, a: Vec<pb::AttributeProto>| {
        node(
            op,
            format!("{op}_{o}"),
            i.iter().map(|s| s.to_string()).collect(),
            vec![o.into()],
            a,
        )
    };
    let float = pb::tensor_proto::DataType::Float as i64;
    model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("stateful".into()),
            node: vec![
                n("MatMul", &["input", "W"], "h", vec![]),
                n("Mul", &["state", "half"], "decayed", vec![]),
                n("Add", &["decayed", "h"], "pre", vec![]),
                n("Tanh", &["pre"], "stateN", vec![]),
                n(
                    "ReduceMean",
                    &["stateN"],
                    "mean",
                    vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
                ),
                n("MatMul", &["mean", "V"], "logit", vec![]),
                n("Cast", &["sr"], "srf", vec![attr_int("to", float)]),
                n("Div", &["srf", "k16000"], "srs", vec![]),
                n("Mul", &["logit", "srs"], "scaled", vec![]),
                n("Sigmoid", &["scaled"], "output", vec![]),
            ],
            initializer: vec![
                f32_tensor("W", &[DIN as i64, HID as i64], &w),
                f32_tensor("V", &[HID as i64, 1], &v),
                f32_tensor("half", &[], &[0.5]),
                f32_tensor("k16000", &[], &[16000.0]),
            ],
            input: vec![
                value_info("input", &[None, Some(DIN as i64)]),
                value_info("state", &[Some(2), None, Some(HID as i64)]),
                tensor_info("sr", pb::tensor_proto::DataType::Int64, &[]),
            ],
            output: vec![
                value_info("output", &[None, Some(1)]),
                value_info("stateN", &[Some(2), None, Some(HID as i64)]),
            ],
            ..Default::default()
        },
    )
}

/// The fixture's arithmetic in f64: one row from `state` ([2][HID]); returns (output, stateN).
fn reference_step(x: &[f32], state: &[f64], sr: f64) -> (f64, Vec<f64>) {
    let (w, v) = (lcg(DIN * HID, 7), lcg(HID, 8));
    let mut next = vec![0f64; 2 * HID];
    for l in 0..2 {
        for j in 0..HID {
            let h: f64 = (0..DIN).map(|i| x[i] as f64 * w[i * HID + j] as f64).sum();
            next[l * HID + j] = (0.5 * state[l * HID + j] + h).tanh();
        }
    }
    let logit: f64 = (0..HID)
        .map(|j| (next[j] + next[HID + j]) / 2.0 * v[j] as f64)
        .sum();
    (1.0 / (1.0 + (-(logit * sr / 16000.0)).exp()), next)
}

fn i64_scalar(v: i64) -> Npy {
    Npy {
        descr: "<i8",
        shape: vec![],
        bytes: v.to_le_bytes().to_vec(),
    }
}

/// `n` rows of input, a zero initial state, stream starts every 4 rows, and `sr` as a rank-0
/// array.
fn stream_data(path: &Path, n: usize) -> Vec<f32> {
    let x = lcg(n * DIN, 11);
    let starts: Vec<i64> = (0..n).map(|i| (i % 4 == 0) as i64).collect();
    write_npz(
        path,
        &[
            ("input", f32_array(&[n, DIN], &x)),
            ("state0", f32_array(&[2, HID], &[0.0; 2 * HID])),
            ("starts", i64_array(&starts)),
            ("sr", i64_scalar(16000)),
        ],
    );
    x
}

fn feeds(yaml: &str) -> Vec<InputFeed> {
    serde_saphyr::from_str(yaml).unwrap()
}

fn cfg(batch: usize, inputs: Vec<InputFeed>) -> EvalConfig {
    EvalConfig {
        latency_batch: 3,
        warmup: 1,
        iterations: 2,
        inputs,
        ..eval_cfg(batch)
    }
}

fn outputs(model: &Path, data: &Path, cfg: &EvalConfig) -> Result<Vec<f32>, String> {
    let ds = Dataset::open(data, "data.npz").map_err(|e| e.to_string())?;
    let mut opened = eval::open(model, cfg).map_err(|e| e.to_string())?;
    let prep = eval::prepare(&opened, &ds, cfg).map_err(|e| e.to_string())?;
    let (out, times) =
        eval::evaluate(&mut opened, &prep, cfg, &|_, _| {}).map_err(|e| e.to_string())?;
    assert_eq!(times.len(), cfg.iterations, "latency feeds the same inputs");
    Ok(out.values.into_vec().unwrap())
}

#[test]
fn a_state_is_fed_back_row_after_row_and_reset_where_a_stream_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    let n = 10;
    let x = stream_data(&data, n);
    let inputs =
        feeds("[{name: state, batchAxis: 1, stateFrom: stateN, initial: state0, resetOn: starts}]");
    // The evaluation batch size does not matter: a state runs rows one at a time.
    let got = outputs(&model, &data, &cfg(8, inputs)).unwrap();
    let mut state = vec![0f64; 2 * HID];
    for (i, g) in got.iter().enumerate() {
        if i % 4 == 0 {
            state = vec![0.0; 2 * HID];
        }
        let (want, next) = reference_step(&x[i * DIN..(i + 1) * DIN], &state, 16000.0);
        state = next;
        assert!(
            (*g as f64 - want).abs() < 1e-5,
            "row {i}: kompress fed {g}, the reference says {want}"
        );
    }
    // Without the state carried, rows after a stream start differ: the test can tell.
    let (fresh, _) = reference_step(&x[DIN..2 * DIN], &[0.0; 2 * HID], 16000.0);
    assert!(
        (got[1] as f64 - fresh).abs() > 1e-4,
        "row 1 depends on row 0"
    );
}

#[test]
fn a_scalar_value_from_the_spec_replaces_the_array_and_is_fed_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    let x = stream_data(&data, 3);
    let inputs = feeds(
        "[{name: sr, scalar: true, value: 8000}, {name: state, batchAxis: 1, stateFrom: stateN, initial: state0}]",
    );
    let got = outputs(&model, &data, &cfg(1, inputs)).unwrap();
    let mut state = vec![0f64; 2 * HID];
    for (i, g) in got.iter().enumerate() {
        let (want, next) = reference_step(&x[i * DIN..(i + 1) * DIN], &state, 8000.0);
        state = next;
        assert!((*g as f64 - want).abs() < 1e-5, "row {i}: {g} vs {want}");
    }
}

#[test]
fn rows_read_along_a_batch_axis_other_than_zero_are_batched_on_that_axis() {
    // The state read from the dataset per row (not fed back): [N, 2, 16] in the file,
    // [2, B, 16] in each run; batches of 4 must give what rows one at a time give.
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    let n = 9;
    let x = lcg(n * DIN, 3);
    let states = lcg(n * 2 * HID, 4);
    write_npz(
        &data,
        &[
            ("input", f32_array(&[n, DIN], &x)),
            ("state", f32_array(&[n, 2, HID], &states)),
            ("sr", i64_scalar(16000)),
        ],
    );
    let inputs = feeds("[{name: state, batchAxis: 1}]");
    let got = outputs(&model, &data, &cfg(4, inputs)).unwrap();
    assert_eq!(got.len(), n);
    for (i, g) in got.iter().enumerate() {
        let s: Vec<f64> = states[i * 2 * HID..(i + 1) * 2 * HID]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (want, _) = reference_step(&x[i * DIN..(i + 1) * DIN], &s, 16000.0);
        assert!((*g as f64 - want).abs() < 1e-5, "row {i}: {g} vs {want}");
    }
}

#[test]
fn bad_feeds_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    let n = 4;
    write_npz(
        &data,
        &[
            ("input", f32_array(&[n, DIN], &lcg(n * DIN, 1))),
            ("state0", f32_array(&[2, HID], &[0.0; 2 * HID])),
            ("sr", i64_array(&[16000, 16000, 16000, 16000])),
            ("sr0", i64_scalar(16000)),
        ],
    );
    let state = "{name: state, batchAxis: 1, stateFrom: stateN, initial: state0}";
    let cases = [
        (
            format!("[{state}, {{name: sr, scalar: true}}]"),
            &["spec.dataset.inputs[1].scalar", "shape [4]", "rank-0"][..],
        ),
        (
            format!("[{state}]"),
            &["model input `sr` is a scalar", "scalar: true"][..],
        ),
        (
            "[{name: state, batchAxis: 3, stateFrom: stateN, initial: state0}]".to_string(),
            &["spec.dataset.inputs[0].batchAxis is 3", "3 axes"][..],
        ),
        (
            "[{name: state, batchAxis: 1, stateFrom: hidden, initial: state0}, {name: sr, scalar: true, value: 16000}]".to_string(),
            &["spec.dataset.inputs[0].stateFrom `hidden`", "outputs: output, stateN"][..],
        ),
        (
            "[{name: state, batchAxis: 1, stateFrom: stateN, initial: input}, {name: sr, scalar: true, value: 16000}]".to_string(),
            &["spec.dataset.inputs[0].initial", "[2, 16]"][..],
        ),
        (
            format!("[{state}, {{name: sr, scalar: true, value: 0.5}}]"),
            &["spec.dataset.inputs[1].value 0.5", "whole numbers"][..],
        ),
        (
            format!("[{state}, {{name: sr, scalar: true, value: 1}}, {{name: speed, scalar: true}}]"),
            &["spec.dataset.inputs[2].name `speed` is not an input"][..],
        ),
    ];
    for (yaml, says) in cases {
        let err = outputs(&model, &data, &cfg(2, feeds(&yaml))).unwrap_err();
        for s in says {
            assert!(err.contains(s), "{yaml}: `{s}` not in: {err}");
        }
    }
}

/// A `kompress run` manifest over `model` and `data`, inputs and passes as given.
fn job(
    dir: &Path,
    model: &Path,
    data: &Path,
    inputs: &str,
    passes: &str,
    thresholds: &str,
) -> String {
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: streaming\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    inputs: {inputs}\n  passes: {passes}\n  thresholds: {thresholds}\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    latency: {{batchSize: 2, warmup: 1, iterations: 5}}\n",
        model.display(),
        data.display(),
        dir.join("candidates").display(),
        dir.join("production").display()
    );
    write_job(dir, &yaml)
}

fn run_json(job: &str) -> (i32, serde_json::Value, String) {
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &[]);
    let v = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r.code, v, r.stderr)
}

const FIXTURE_FEEDS: &str =
    "[{name: state, batchAxis: 1, stateFrom: stateN, initial: state0, resetOn: starts}]";

#[test]
fn a_stateful_job_runs_gates_and_calibrates_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    stream_data(&data, 24);
    for (passes, why) in [
        ("[{quantize: {mode: dynamic}}]", "dynamic"),
        (
            "[{quantize: {mode: static, calibration: {samples: 8}}}]",
            "static: calibration feeds the state too",
        ),
    ] {
        let j = job(
            dir.path(),
            &model,
            &data,
            FIXTURE_FEEDS,
            passes,
            "{minCosineSimilarity: 0.99, maxLatencyRatio: 100}",
        );
        let (code, report, err) = run_json(&j);
        assert_eq!(code, 0, "{why}: {err}");
        let res = &report["result"];
        assert_eq!(res["verdict"], "Passed", "{why}: {res}");
        assert!(
            res["candidate"]["meanAbsError"].as_f64().unwrap() < 0.05,
            "{why}: {res}"
        );
        assert!(
            res["baseline"]["latencyP50Ms"].as_f64().unwrap() > 0.0,
            "{why}: {res}"
        );
    }
}

#[test]
fn bad_feeds_in_a_job_exit_65_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m.onnx"), dir.path().join("d.npz"));
    write_model(&stateful_model(), &model);
    stream_data(&data, 8);
    for (inputs, says) in [
        (
            "[{name: state, batchAxis: 1, stateFrom: stateN}]",
            "spec.dataset.inputs[0].initial",
        ),
        (
            "[{name: state, batchAxis: 5, stateFrom: stateN, initial: state0}]",
            "spec.dataset.inputs[0].batchAxis is 5",
        ),
        (
            "[{name: state, batchAxis: 1, stateFrom: state_out, initial: state0}]",
            "spec.dataset.inputs[0].stateFrom `state_out`",
        ),
        (
            "[{name: state, batchAxis: 1, stateFrom: stateN, initial: starts}]",
            "spec.dataset.inputs[0].initial",
        ),
    ] {
        let j = job(dir.path(), &model, &data, inputs, "[{quantize: {}}]", "{}");
        let r = run_kompress(&["run", "-f", &j], &[]);
        assert_eq!(r.code, 65, "{inputs}: {}", r.stderr);
        assert!(
            r.stderr.contains(says),
            "{inputs}: `{says}` not in {}",
            r.stderr
        );
    }
}

/// Silero VAD 6.2.3 from its PyPI wheel (cached under ~/.cache/kompress/bench-models; fetched
/// with pip when missing): `member` of `silero_vad/data/`.
fn silero(member: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = PathBuf::from(home).join(".cache/kompress/bench-models");
    let wheel = cache.join("silero_vad-6.2.3-py3-none-any.whl");
    if !wheel.exists() {
        std::fs::create_dir_all(&cache).unwrap();
        let ok = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "silero-vad==6.2.3",
                "-d",
            ])
            .arg(&cache)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && wheel.exists(),
            "cannot fetch silero-vad==6.2.3: run `python3 -m pip download --no-deps silero-vad==6.2.3 -d {}`",
            cache.display()
        );
    }
    let out = cache.join(member);
    if !out.exists() {
        let mut z = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
        let mut f = z.by_name(&format!("silero_vad/data/{member}")).unwrap();
        let tmp = cache.join(format!("{member}.part-{}", std::process::id()));
        std::io::copy(&mut f, &mut std::fs::File::create(&tmp).unwrap()).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// `streams` streams of `chunks` rows at 16 kHz: each row a 512-sample chunk after the 64
/// samples before it (as silero-vad's own wrapper feeds the model). The signal is voiced-like:
/// a harmonic series with formant-shaped amplitudes (a different pitch per stream), three
/// syllables a second, plus noise. A zero initial state; stream starts flagged.
fn audio_data(path: &Path, streams: usize, chunks: usize) {
    use std::f32::consts::PI;
    let n = streams * chunks;
    let noise = lcg(n * 512, 99);
    let mut rows = Vec::with_capacity(n * 576);
    for s in 0..streams {
        let f0 = 120.0 + 40.0 * s as f32;
        let len = chunks * 512;
        let mut x: Vec<f32> = (0..len)
            .map(|i| {
                let t = i as f32 / 16000.0;
                let voiced: f32 = (1..30)
                    .map(|k| {
                        let fk = k as f32 * f0;
                        let formants = 1.0 / (1.0 + ((fk - 700.0) / 200.0).powi(2))
                            + 0.6 / (1.0 + ((fk - 1200.0) / 250.0).powi(2))
                            + 0.3 / (1.0 + ((fk - 2500.0) / 300.0).powi(2));
                        formants * (2.0 * PI * fk * t).sin()
                    })
                    .sum();
                voiced * 0.5 * (1.0 + (2.0 * PI * 3.0 * t).sin())
            })
            .collect();
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, v) in x.iter_mut().enumerate() {
            *v = 0.3 * *v / peak + 0.01 * noise[s * len + i];
        }
        for c in 0..chunks {
            let start = c * 512;
            for k in 0..64 {
                rows.push(if start >= 64 { x[start - 64 + k] } else { 0.0 });
            }
            rows.extend_from_slice(&x[start..start + 512]);
        }
    }
    let starts: Vec<i64> = (0..n).map(|i| (i % chunks == 0) as i64).collect();
    write_npz(
        path,
        &[
            ("input", f32_array(&[n, 576], &rows)),
            ("state0", f32_array(&[2, 128], &[0.0; 256])),
            ("starts", i64_array(&starts)),
        ],
    );
}

const SILERO_FEEDS: &str = "[{name: sr, scalar: true, value: 16000}, {name: state, batchAxis: 1, stateFrom: stateN, initial: state0, resetOn: starts}]";

#[test]
fn silero_vad_is_evaluated_with_its_scalar_rate_and_its_state_on_axis_one() {
    // The wheel's default model keeps every weight inside an If on `sr`: evaluation only
    // (no pass can change a weight), against ONNX Runtime fed by hand row after row.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("audio.npz");
    audio_data(&data, 2, 12);
    let model = silero("silero_vad.onnx");
    let inputs = feeds(SILERO_FEEDS);
    let with_state = outputs(&model, &data, &cfg(16, inputs)).unwrap();
    assert_eq!(with_state.len(), 24);
    // Resetting on every row (no state carried) must change what the model says.
    let mut all = feeds(SILERO_FEEDS);
    let d2 = dir.path().join("audio-reset.npz");
    {
        let ds = Dataset::open(&data, "a").unwrap();
        let input = ds.read("input").unwrap();
        let kompress::eval::ArrayData::F32(x) = input.data else {
            panic!()
        };
        write_npz(
            &d2,
            &[
                ("input", f32_array(&[24, 576], &x)),
                ("state0", f32_array(&[2, 128], &[0.0; 256])),
                ("starts", i64_array(&[1; 24])),
            ],
        );
    }
    all[1].reset_on = Some("starts".into());
    let fresh = outputs(&model, &d2, &cfg(16, all)).unwrap();
    assert_eq!(
        with_state[0], fresh[0],
        "row 0 starts from the initial state both ways"
    );
    let differs = with_state
        .iter()
        .zip(&fresh)
        .filter(|(a, b)| (**a - **b).abs() > 0.1 * a.abs().max(b.abs()))
        .count();
    assert!(
        differs >= 12,
        "the carried state changes the output: {with_state:?} vs {fresh:?}"
    );
}

#[test]
fn silero_vad_jobs_compress_gate_and_calibrate_with_the_state_fed_back() {
    // The 16 kHz export keeps its convolution weights at the top level, so passes change them.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("audio.npz");
    audio_data(&data, 3, 16);
    let model = silero("silero_vad_16k_op15.onnx");
    // (passes, gate, verdict, the largest output difference a sound candidate shows)
    for (passes, gate, verdict, max_err) in [
        (
            "[{fp16: {}}]",
            "{minCosineSimilarity: 0.99, minCompressionRatio: 1.2}",
            "Passed",
            0.01,
        ),
        (
            "[{fp16: {}}]",
            "{minCompressionRatio: 4.0}",
            "Rejected",
            0.01,
        ),
        (
            "[{quantize: {mode: static, ops: [Conv, MatMul, Gemm], calibration: {samples: 16}}}]",
            "{minCompressionRatio: 1.5}",
            "Passed",
            0.15,
        ),
    ] {
        let j = job(dir.path(), &model, &data, SILERO_FEEDS, passes, gate);
        let (code, report, err) = run_json(&j);
        assert_eq!(code, 0, "{passes}: {err}");
        let res = &report["result"];
        assert_eq!(res["verdict"], verdict, "{passes} {gate}: {res}");
        let cand = &res["candidate"];
        assert!(
            cand["maxAbsError"].as_f64().unwrap() < max_err,
            "{passes}: the candidate tracks the original: {res}"
        );
        assert!(
            cand["meanAbsError"].as_f64().unwrap() > 0.0,
            "{passes}: the weights changed, so do the probabilities: {res}"
        );
        assert_eq!(
            cand["samples"],
            if passes.contains("static") { 32 } else { 48 }
        );
    }
}
