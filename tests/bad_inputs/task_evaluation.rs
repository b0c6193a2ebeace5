//! Issue 19: what the evaluation reads from the outputs (selection, pooling, the task) and
//! the dataset's slices, when they do not fit the model or the data.

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
