//! `spec.search` end to end through `kompress run`, on a generated MLP with one planted
//! sensitive layer: a small MatMul whose weights carry an outlier row (1000x the rest, on an
//! input the layer before keeps near zero), so that int8 with one scale per channel rounds
//! the rest of its weights away. Labels are the fp32 model's own top-1 classes (measured
//! with ONNX Runtime), so the baseline is 100% accurate and every flipped sample costs.

mod support;

use kompress::eval::{self, Dataset, EvalConfig};
use kompress::onnx::{f32_tensor, pb};
use serde_json::Value;
use std::path::Path;
use support::*;

const WIDTHS: [usize; 6] = [64, 160, 160, 16, 160, 10];
/// The planted layer: MatMul_2 (160x16, 6% of the weights).
const PLANTED: &str = "MatMul_2";
const ROWS: usize = 1000;

fn planted_model() -> pb::ModelProto {
    let mut m = mlp(&WIDTHS, 7);
    let g = m.graph.as_mut().unwrap();
    let k = 5usize; // the input feature of MatMul_2 that carries the outlier row
    let tensor = |g: &mut pb::GraphProto, name: &str| -> (Vec<i64>, Vec<f32>) {
        let t = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap();
        (
            t.dims.clone(),
            kompress::onnx::tensor_f32_values(t).unwrap(),
        )
    };
    let set = |g: &mut pb::GraphProto, name: &str, dims: &[i64], v: &[f32]| {
        let i = g
            .initializer
            .iter()
            .position(|t| t.name.as_deref() == Some(name))
            .unwrap();
        g.initializer[i] = f32_tensor(name, dims, v);
    };
    // Feature k of the layer before stays near zero: its column scaled down, no bias.
    let (d1, mut w1) = tensor(g, "W1");
    let cols = d1[1] as usize;
    for r in 0..d1[0] as usize {
        w1[r * cols + k] *= 0.001;
    }
    set(g, "W1", &d1, &w1);
    let (db, mut b1) = tensor(g, "B1");
    b1[k] = 0.0;
    set(g, "B1", &db, &b1);
    // Row k of the planted layer: 1000x the others in every output channel.
    let (d2, mut w2) = tensor(g, "W2");
    let cols = d2[1] as usize;
    for c in 0..cols {
        w2[k * cols + c] *= 1000.0;
    }
    set(g, "W2", &d2, &w2);
    m
}

fn fp32_outputs(model: &Path, data: &Path) -> eval::Outputs {
    let cfg = EvalConfig {
        iterations: 0,
        ..eval_cfg(100)
    };
    let ds = Dataset::open(data, "data.npz").unwrap();
    let mut opened = eval::open(model, &cfg).unwrap();
    let prep = eval::prepare(&opened, &ds, &cfg).unwrap();
    eval::evaluate(&mut opened, &prep, &cfg, &|_, _| {})
        .unwrap()
        .0
}

/// The model and a dataset labelled with the fp32 model's own classes. The last bias is
/// shifted by the mean logit of each class first: a random ReLU MLP otherwise puts every
/// input in the class whose weights sum highest.
fn fixture(dir: &Path) -> (String, String) {
    let mut m = planted_model();
    let model = dir.join("planted.onnx");
    write_model(&m, &model);
    // Inputs around 20 prototypes (noise a fifth of their spread): classes with margins, as
    // a trained classifier's data has, rather than points scattered over every boundary.
    let protos = lcg(20 * WIDTHS[0], 11);
    let noise = lcg(ROWS * WIDTHS[0], 12);
    let inputs: Vec<f32> = (0..ROWS * WIDTHS[0])
        .map(|i| {
            let (row, col) = (i / WIDTHS[0], i % WIDTHS[0]);
            protos[(row % 20) * WIDTHS[0] + col] + 0.2 * noise[i]
        })
        .collect();
    let unlabelled = dir.join("unlabelled.npz");
    write_npz(
        &unlabelled,
        &[("input", f32_array(&[ROWS, WIDTHS[0]], &inputs))],
    );
    let out = fp32_outputs(&model, &unlabelled);
    let classes = out.classes.unwrap();
    let last = format!("B{}", WIDTHS.len() - 2);
    let g = m.graph.as_mut().unwrap();
    let i = g
        .initializer
        .iter()
        .position(|t| t.name.as_deref() == Some(last.as_str()))
        .unwrap();
    let mut b = kompress::onnx::tensor_f32_values(&g.initializer[i]).unwrap();
    for (c, bc) in b.iter_mut().enumerate() {
        let mean: f32 = out
            .values
            .tail()
            .iter()
            .skip(c)
            .step_by(classes)
            .sum::<f32>()
            / ROWS as f32;
        *bc -= mean;
    }
    g.initializer[i] = f32_tensor(&last, &[classes as i64], &b);
    write_model(&m, &model);
    let out = fp32_outputs(&model, &unlabelled);
    // The evaluation set keeps the rows the fp32 model classifies with a margin (top-2 gap at
    // least a tenth of the logits' norm), as a trained model's validation data mostly is:
    // then only a real loss of precision flips a label, not rounding on a tie.
    let mut keep = Vec::new();
    let mut labels = Vec::new();
    for (r, row) in out.values.tail().chunks_exact(classes).enumerate() {
        let mut sorted = row.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if sorted[0] - sorted[1] >= 0.1 * norm {
            keep.push(r);
            labels.push(kompress::eval::metrics::argmax(row).unwrap() as i64);
        }
    }
    assert!(keep.len() >= 300, "{} rows with a margin", keep.len());
    let inputs: Vec<f32> = keep
        .iter()
        .flat_map(|&r| inputs[r * WIDTHS[0]..(r + 1) * WIDTHS[0]].to_vec())
        .collect();
    let mut seen = vec![0; classes];
    for &l in &labels {
        seen[l as usize] += 1;
    }
    assert!(
        seen.iter().filter(|&&n| n > 0).count() >= 4,
        "the labels are not one class: {seen:?}"
    );
    let data = dir.join("data.npz");
    write_npz(
        &data,
        &[
            ("input", f32_array(&[keep.len(), WIDTHS[0]], &inputs)),
            ("labels", i64_array(&labels)),
        ],
    );
    (model.display().to_string(), data.display().to_string())
}

fn job(dir: &Path, name: &str, model: &str, data: &str, body: &str) -> String {
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {model}\n  dataset:\n    uri: {data}\n{body}\n  thresholds:\n    maxAccuracyDrop: 0.005\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    threads: 1\n    latency:\n      warmup: 2\n      iterations: 10\n",
        dir.join("candidates").display(),
        dir.join("production").display()
    );
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    write_job(&sub, &yaml)
}

fn run_json(job: &str) -> Value {
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn the_search_reverts_the_planted_layer_first_and_meets_the_budget_plain_int8_misses() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());

    // The plain int8 candidate misses the 0.5-point budget.
    let plain = run_json(&job(
        dir.path(),
        "plain",
        &model,
        &data,
        "  passes:\n    - quantize: {}",
    ));
    assert_eq!(plain["result"]["verdict"], "Rejected", "{plain:#}");
    let drop = plain["result"]["accuracyDrop"].as_f64().unwrap();
    assert!(drop > 0.05, "the planted layer must hurt: drop {drop}");
    let original = plain["result"]["originalBytes"].as_f64().unwrap();
    let plain_saved = original - plain["result"]["compressedBytes"].as_f64().unwrap();

    // The search ranks the planted layer worst, reverts it, and passes.
    let body = "  passes: []\n  search:\n    forms: [dynamic]";
    let searched = run_json(&job(dir.path(), "search", &model, &data, body));
    let result = &searched["result"];
    assert_eq!(result["verdict"], "Passed", "{searched:#}");
    let s = &searched["search"];
    let ranked = s["sensitivity"][0]["layers"].as_array().unwrap();
    assert_eq!(
        ranked.len(),
        WIDTHS.len() - 1,
        "one probe per quantized layer"
    );
    assert_eq!(ranked[0]["layer"], PLANTED, "{:#}", s["sensitivity"]);
    let chosen = s["chosen"].as_u64().unwrap() as usize;
    let trial = &s["trials"][chosen];
    let float: Vec<&str> = trial["floatLayers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(float.first(), Some(&PLANTED), "{trial:#}");
    assert!(result["accuracyDrop"].as_f64().unwrap() <= 0.005);
    // The recipe in the report is the chosen form, with the reverted layers named.
    assert_eq!(
        searched["recipe"][0]["quantize"]["excludeNodes"][0], PLANTED,
        "{:#}",
        searched["recipe"]
    );
    let saved = original - result["compressedBytes"].as_f64().unwrap();
    assert!(
        saved >= 0.8 * plain_saved,
        "keeps {:.0}% of the plain candidate's size reduction",
        100.0 * saved / plain_saved
    );
    // Bisection: full trials stay near log2(layers) + 2, not one per layer.
    let trials = result["search"]["trials"].as_u64().unwrap();
    assert!(trials <= 5, "{trials} trials: {:#}", s["trials"]);
    assert_eq!(result["search"]["probes"].as_u64().unwrap(), 5);
    assert_eq!(result["search"]["sensitiveLayers"][0], PLANTED);
    assert!(!files_under(&dir.path().join("production")).is_empty());

    // Same inputs, same spec: the same trials and the same bytes.
    let again = run_json(&job(dir.path(), "search-again", &model, &data, body));
    assert_eq!(
        again["search"]["trials"].as_array().unwrap().len(),
        s["trials"].as_array().unwrap().len()
    );
    assert_eq!(again["search"]["chosen"], s["chosen"]);
    assert_eq!(
        again["result"]["artifact"]["sha256"], result["artifact"]["sha256"],
        "the chosen candidate is byte-identical"
    );
}

#[test]
fn a_spent_budget_stops_the_search_rejects_and_promotes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let body = "  passes: []\n  search:\n    forms: [dynamic]\n    maxTrials: 1";
    let r = run_json(&job(dir.path(), "budget", &model, &data, body));
    assert_eq!(r["result"]["verdict"], "Rejected", "{r:#}");
    assert_eq!(r["search"]["stoppedBy"], "maxTrials");
    assert_eq!(r["result"]["search"]["stoppedBy"], "maxTrials");
    assert_eq!(r["search"]["closest"], 0);
    assert!(
        r["result"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "maxAccuracyDrop" && c["passed"] == false),
        "the closest trial's misses are reported"
    );
    assert!(files_under(&dir.path().join("production")).is_empty());
}

#[test]
fn quantize_passes_beside_a_search_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let body = "  passes:\n    - quantize: {}\n  search:\n    forms: [dynamic, dynamic]";
    let r = run_kompress(
        &["run", "-f", &job(dir.path(), "bad", &model, &data, body)],
        &[],
    );
    assert_eq!(r.code, kompress::api::wire::EXIT_PERMANENT, "{}", r.stderr);
    assert!(r.stderr.contains("spec.passes[0].quantize"), "{}", r.stderr);
    assert!(r.stderr.contains("spec.search.forms[1]"), "{}", r.stderr);
}

#[test]
fn the_digits_search_example_runs_and_says_what_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("examples/digits-search.yaml")).unwrap();
    let out = dir.path().display().to_string();
    let text = text
        .replace(
            "examples/digits/",
            &format!("{}/examples/digits/", repo().display()),
        )
        .replace("out/digits-search/", &format!("{out}/"));
    let job = write_job(dir.path(), &text);
    let r = run_kompress(&["run", "-f", &job], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The trial table as the trials finish, then the summary's search line.
    assert!(r.stderr.contains("trial  form"), "{}", r.stderr);
    assert!(r.stdout.contains("PASSED, promoted"), "{}", r.stdout);
    assert!(
        r.stdout.contains("search: ") && r.stdout.contains("chose trial 0: int4"),
        "the smallest form passes at once and the others cannot beat it: {}",
        r.stdout
    );
}

/// The trial log's entries, by index.
fn trial(s: &Value, i: u64) -> &Value {
    &s["trials"][i as usize]
}

#[test]
fn whole_forms_come_first_so_fp16_is_reached_within_two_trials_when_int8_misses() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    // Two trials in all: the whole forms take them, before any probe.
    let body = "  passes: []\n  search:\n    forms: [dynamic, fp16]\n    maxTrials: 2";
    let r = run_json(&job(dir.path(), "tiny", &model, &data, body));
    let s = &r["search"];
    assert_eq!(r["result"]["verdict"], "Passed", "{s:#}");
    assert_eq!(trial(s, 0)["form"], "dynamic");
    assert_eq!(
        trial(s, 0)["passed"],
        false,
        "the planted layer makes int8 miss"
    );
    assert_eq!(trial(s, 1)["form"], "fp16");
    assert_eq!(trial(s, 1)["kind"], "form");
    assert_eq!(s["chosen"], 1, "{s:#}");
    assert_eq!(
        r["result"]["search"]["probes"], 0,
        "no probe before every form was scored"
    );
    assert_eq!(
        s["stoppedBy"], "maxTrials",
        "the fallback found the budget spent"
    );
    assert_eq!(s["budget"]["wholeForms"]["runs"], 2);
    assert_eq!(s["budget"]["probes"]["runs"], 0);
}

#[test]
fn reverted_layers_go_to_fp16_so_mixed_int8_beats_fp16_alone_and_the_budget_is_accounted() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let body = "  passes: []\n  search:\n    forms: [dynamic, fp16]";
    let r = run_json(&job(dir.path(), "mixed", &model, &data, body));
    let s = &r["search"];
    assert_eq!(r["result"]["verdict"], "Passed", "{s:#}");
    let fp16 = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["form"] == "fp16" && t["kind"] == "form")
        .expect("fp16 scored as a whole form");
    assert_eq!(fp16["passed"], true, "{fp16:#}");
    let chosen = trial(s, s["chosen"].as_u64().unwrap());
    assert_eq!(chosen["form"], "dynamic", "{s:#}");
    assert_eq!(chosen["kind"], "fallback");
    assert_eq!(chosen["revertedTo"], "fp16");
    assert_eq!(chosen["floatLayers"][0], PLANTED);
    assert!(
        chosen["bytes"].as_u64().unwrap() < fp16["bytes"].as_u64().unwrap(),
        "mixed {} bytes, fp16 alone {}",
        chosen["bytes"],
        fp16["bytes"]
    );
    // Each layer's final precision: the planted one fp16, the rest int8.
    let layers = s["layers"].as_array().unwrap();
    assert_eq!(layers.len(), WIDTHS.len() - 1, "{layers:#?}");
    for l in layers {
        let want = if l["layer"] == PLANTED {
            "fp16"
        } else {
            "int8"
        };
        assert_eq!(l["precision"], want, "{l}");
    }
    // The recipe reproduces it: the int form without the layer, an fp16 pass for its weight.
    assert_eq!(r["recipe"][0]["quantize"]["excludeNodes"][0], PLANTED);
    assert_eq!(
        r["recipe"][1]["fp16"]["tensors"][0], "W2",
        "{:#}",
        r["recipe"]
    );
    assert_eq!(r["result"]["search"]["fp16Layers"], 1);
    // Where the time went: every phase accounted, within the search's own time.
    let b = &s["budget"];
    assert_eq!(b["wholeForms"]["runs"], 2);
    assert_eq!(
        b["probes"]["runs"], 5,
        "one probe per layer of the form that missed"
    );
    assert!(b["fallback"]["runs"].as_u64().unwrap() >= 1);
    assert!(b["latency"]["runs"].as_u64().unwrap() >= 1, "{b:#}");
    assert_eq!(b["probeSecondsLimit"], 1800.0, "half of the default 3600 s");
    let spent: f64 = ["wholeForms", "calibration", "probes", "fallback", "latency"]
        .iter()
        .map(|p| b[p]["seconds"].as_f64().unwrap())
        .sum();
    assert!(spent <= s["seconds"].as_f64().unwrap() + 1e-3, "{b:#}");
}

/// A wider MLP (1024-wide layers at batch 1), where int8 weights alone (weightOnly: a
/// DequantizeLinear on every run) and dynamic int8 are about the same size but not the same
/// speed. Labels are unused: the gate is cosine to the original's outputs.
#[test]
fn the_smallest_wins_unless_a_near_tie_is_measurably_faster_and_nothing_slower_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("wide.onnx");
    write_model(&mlp(&[256, 1024, 1024, 10], 3), &model);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 64, 256, 10);
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: tie\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes: []\n  search:\n    forms: [weightOnly, dynamic]\n  thresholds:\n    minCosineSimilarity: 0.99\n  output:\n    uri: {}\n  evaluation:\n    threads: 1\n    latency:\n      warmup: 5\n      iterations: 40\n",
        model.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let r = run_json(&write_job(dir.path(), &yaml));
    let s = &r["search"];
    assert_eq!(r["result"]["verdict"], "Passed", "{s:#}");
    let passed: Vec<&Value> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["passed"] == true)
        .collect();
    let smallest = passed
        .iter()
        .min_by_key(|t| t["bytes"].as_u64().unwrap())
        .unwrap();
    let chosen = trial(s, s["chosen"].as_u64().unwrap());
    let lat = |t: &Value, i: usize| t["latencyRatio"][i].as_f64().unwrap();
    let near =
        |t: &Value| t["bytes"].as_f64().unwrap() <= 1.01 * smallest["bytes"].as_f64().unwrap();
    if chosen["index"] != smallest["index"] {
        assert!(near(chosen), "{s:#}");
        assert!(
            lat(chosen, 2) < lat(smallest, 1),
            "only a measurably faster near-tie beats the smallest: {s:#}"
        );
        assert!(
            r["result"]["search"]["latency"]
                .as_str()
                .unwrap()
                .contains("measurably faster"),
            "{:#}",
            r["result"]["search"]
        );
    }
    for t in passed.iter().filter(|t| near(t)) {
        assert!(
            lat(t, 2).partial_cmp(&lat(chosen, 1)) != Some(std::cmp::Ordering::Less),
            "trial {} is a near-tie measurably faster than the chosen: {s:#}",
            t["index"]
        );
    }
    // Never slower than the original without maxLatencyRatio, and the check says so.
    let check = chosen["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "maxLatencyNotSlower")
        .expect("the chosen trial's latency is judged");
    assert_eq!(check["passed"], true, "{chosen:#}");
}

/// A form that needs a newer opset than the model imports (per-channel weight-only int8 needs
/// DequantizeLinear's `axis`, opset 13) is not tried on an upgrade taken on trust: as a fixed
/// recipe does, the search first runs the upgraded original through ONNX Runtime on the
/// evaluation rows, and the report says what that check measured.
#[test]
fn a_form_that_needs_a_newer_opset_is_checked_against_the_original_first() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let mut m = kompress::onnx::load(Path::new(&model)).unwrap().proto;
    m.opset_import[0].version = Some(12);
    let old = dir.path().join("opset12.onnx");
    write_model(&m, &old);
    let body = "  passes: []\n  search:\n    forms: [weightOnly]\n    maxTrials: 1";
    let r = run_json(&job(
        dir.path(),
        "opset12",
        &old.display().to_string(),
        &data,
        body,
    ));
    let notes = r["search"]["notes"].as_array().cloned().unwrap_or_default();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("opset 12 -> 13 checked with ONNX Runtime on"))),
        "{:#}",
        r["search"]
    );
}
