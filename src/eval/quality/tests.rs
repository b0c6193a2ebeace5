use super::*;
use crate::eval::task::{Det, Detector};

fn classes(rows: &[&[f32]]) -> Outputs {
    let c = rows[0].len();
    Outputs {
        values: rows.concat().into(),
        per_sample: c,
        classes: Some(c),
        samples: rows.len(),
        shape: vec![c],
        ..Default::default()
    }
}

fn seqs(s: Vec<Vec<u32>>) -> Outputs {
    Outputs {
        samples: s.len(),
        sequences: s,
        ..Default::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn top_k_agreement_and_macro_f1_by_hand() {
    // Original's top-1: 0, 1, 2, 2. Candidate's: 0, 2, 2, 1; top-2 contains the
    // original's class in rows 0, 1 (2 then 1), 2, 3 (1 then 2).
    let r = classes(&[
        &[0.9, 0.1, 0.0],
        &[0.1, 0.8, 0.1],
        &[0.0, 0.2, 0.8],
        &[0.1, 0.2, 0.7],
    ]);
    let c = classes(&[
        &[0.9, 0.1, 0.0],
        &[0.1, 0.4, 0.5],
        &[0.0, 0.2, 0.8],
        &[0.1, 0.5, 0.4],
    ]);
    let task = Task::Classification { top_k: 2 };
    let m = measure(
        &task,
        &c,
        &r,
        Some(&Labels::Classes(vec![0, 1, 2, 0])),
        None,
    )
    .unwrap();
    assert!(close(m.task["topKAgreement"], 1.0), "{m:?}");
    // Against the original: class 0 tp 1 -> F1 1; class 1: tp 0, fp 1, fn 1 -> 0;
    // class 2: tp 1, fp 1, fn 1 -> 0.5. Macro: 0.5.
    assert!(close(m.task["macroF1"], 0.5), "{m:?}");
    // Candidate against labels 0, 1, 2, 0: top-2 hits rows 0, 1, 2 (row 3: 1, 2).
    assert!(close(m.task["topKAccuracy"], 0.75), "{m:?}");
    // Labels: class 0: tp 1, fn 1 -> 2/3; class 1: fp 1, fn 1 -> 0; class 2: tp 1, fp 1
    // -> 2/3. Macro: 4/9.
    assert!(close(m.task["macroF1Labels"], 4.0 / 9.0), "{m:?}");
}

#[test]
fn sequence_match_and_character_error_rate_by_hand() {
    let r = seqs(vec![vec![1, 2, 3], vec![4, 5], vec![6]]);
    let c = seqs(vec![vec![1, 3], vec![4, 5], vec![6, 6]]);
    let m = measure(&Task::Sequence { blank: 0 }, &c, &r, None, None).unwrap();
    assert!(close(m.task["sequenceMatch"], 1.0 / 3.0), "{m:?}");
    // One deletion and one insertion over 6 original characters.
    assert!(close(m.task["charErrorRate"], 2.0 / 6.0), "{m:?}");
}

#[test]
fn sequences_against_labels_give_both_models_scores_and_the_drop() {
    // Labels: 1 2 3 / 4 5 / 6. The original reads rows 0 and 1 right and row 2 as 7;
    // the candidate reads only row 1 right (row 0 as 1 3: one deletion).
    let labels = Labels::Sequences(vec![vec![1, 2, 3], vec![4, 5], vec![6]]);
    let r = seqs(vec![vec![1, 2, 3], vec![4, 5], vec![7]]);
    let c = seqs(vec![vec![1, 3], vec![4, 5], vec![7]]);
    let task = Task::Sequence { blank: 0 };
    let own = measure(&task, &r, &r, Some(&labels), None).unwrap();
    assert!(close(own.task["sequenceMatchLabels"], 2.0 / 3.0), "{own:?}");
    assert!(close(own.task["charErrorRateLabels"], 1.0 / 6.0), "{own:?}");
    let m = measure(&task, &c, &r, Some(&labels), None).unwrap();
    assert!(close(m.task["sequenceMatchLabels"], 1.0 / 3.0), "{m:?}");
    assert!(close(m.task["charErrorRateLabels"], 2.0 / 6.0), "{m:?}");
    let p = Paired::new(&task, &c, &r, Some(&labels)).unwrap();
    let ones = [1.0; 3];
    let drop = p.check_value(CheckName::MaxSequenceMatchDrop, &ones, &[]);
    let rise = p.check_value(CheckName::MaxCharErrorRateIncrease, &ones, &[]);
    assert!(close(drop.unwrap(), 1.0 / 3.0) && close(rise.unwrap(), 1.0 / 6.0));
    assert!(m.intervals.contains_key("maxSequenceMatchDrop"), "{m:?}");
    // The worst slice's drop is against the labels too.
    assert!(close(p.headline_drop(&ones).unwrap(), 1.0 / 3.0));
    // Without labels, no label metric and no drop to judge.
    let p = Paired::new(&task, &c, &r, None).unwrap();
    assert_eq!(
        p.check_value(CheckName::MaxSequenceMatchDrop, &ones, &[]),
        None
    );
}

fn det(x: f32, score: f32, class: u32) -> Det {
    Det {
        x1: x,
        y1: 0.0,
        x2: x + 10.0,
        y2: 10.0,
        score,
        class,
    }
}

fn dets(d: Vec<Vec<Det>>) -> Outputs {
    Outputs {
        samples: d.len(),
        detections: d,
        ..Default::default()
    }
}

fn detection() -> Task {
    Task::Detection(Detector {
        layout: crate::api::DetectionLayout::Yolov8,
        outputs: None,
        score_threshold: 0.25,
        iou_threshold: 0.45,
        max_detections: 100,
    })
}

#[test]
fn detection_f1_and_map50_by_hand() {
    let task = detection();
    // Class 0: two true boxes (samples 0 and 1). The candidate ranks: 0.9 a match,
    // 0.8 a stray box, 0.7 a match: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1:
    // AP = 1/2 · 1 + 1/2 · 2/3 = 5/6. F1: tp 2, fp 1, missed 0 -> 4/5.
    let r = dets(vec![vec![det(0.0, 0.9, 0)], vec![det(0.0, 0.9, 0)]]);
    let c = dets(vec![
        vec![det(0.0, 0.9, 0), det(50.0, 0.8, 0)],
        vec![det(1.0, 0.7, 0)],
    ]);
    let m = measure(&task, &c, &r, None, None).unwrap();
    assert!(close(m.task["map50"], 5.0 / 6.0), "{m:?}");
    assert!(close(m.task["detectionF1"], 0.8), "{m:?}");
    // Same boxes, another class: nothing matches.
    let wrong = dets(vec![vec![det(0.0, 0.9, 1)], vec![det(0.0, 0.9, 1)]]);
    let m = measure(&task, &wrong, &r, None, None).unwrap();
    assert_eq!((m.task["map50"], m.task["detectionF1"]), (0.0, 0.0));
}

#[test]
fn detections_against_labels_give_both_models_scores_and_the_drop() {
    let task = detection();
    // Truth: one class-0 box per sample. The original finds both; the candidate finds
    // sample 0's and calls sample 1's class 1: F1 1 vs 1/2, mAP 1 vs 1/2 (class 0: AP
    // 1/2; class 1: no true box, left out).
    let labels = Labels::Boxes(vec![vec![det(0.0, 1.0, 0)], vec![det(0.0, 1.0, 0)]]);
    let r = dets(vec![vec![det(0.0, 0.9, 0)], vec![det(1.0, 0.8, 0)]]);
    let c = dets(vec![vec![det(0.0, 0.9, 0)], vec![det(1.0, 0.8, 1)]]);
    let own = measure(&task, &r, &r, Some(&labels), None).unwrap();
    assert_eq!(
        (own.task["detectionF1Labels"], own.task["map50Labels"]),
        (1.0, 1.0)
    );
    let m = measure(&task, &c, &r, Some(&labels), None).unwrap();
    assert!(close(m.task["detectionF1Labels"], 0.5), "{m:?}");
    assert!(close(m.task["map50Labels"], 0.5), "{m:?}");
    let p = Paired::new(&task, &c, &r, Some(&labels)).unwrap();
    let ones = [1.0; 2];
    assert!(close(
        p.check_value(CheckName::MaxDetectionF1Drop, &ones, &[])
            .unwrap(),
        0.5
    ));
    assert!(close(
        p.check_value(CheckName::MaxMap50Drop, &ones, &[]).unwrap(),
        0.5
    ));
}

#[test]
fn neighbour_recall_by_hand() {
    // Four unit vectors at 0, 10, 90 and 100 degrees; the candidate moves the second to
    // 60 degrees, where its nearest is the third (30 degrees away), not the first.
    let at = |deg: &[f32]| Outputs {
        values: deg
            .iter()
            .flat_map(|d| [d.to_radians().cos(), d.to_radians().sin()])
            .collect::<Vec<f32>>()
            .into(),
        per_sample: 2,
        samples: deg.len(),
        shape: vec![2],
        ..Default::default()
    };
    let r = at(&[0.0, 10.0, 90.0, 100.0]);
    let c = at(&[0.0, 60.0, 90.0, 100.0]);
    let m = measure(&Task::Embedding { k: 1 }, &c, &r, None, None).unwrap();
    assert!(close(m.task["neighbourRecall"], 0.75), "{m:?}");
}

#[test]
fn slices_get_every_metric_and_the_worst_slice_drop() {
    let r = seqs(vec![vec![1], vec![2], vec![3], vec![4]]);
    let c = seqs(vec![vec![1], vec![2], vec![3], vec![5]]);
    let m = measure(
        &Task::Sequence { blank: 0 },
        &c,
        &r,
        None,
        Some(&[7, 7, 9, 9]),
    )
    .unwrap();
    assert_eq!(m.slices.len(), 2);
    assert_eq!((m.slices[0].slice, m.slices[0].samples), (7, 2));
    assert_eq!(m.slices[0].metrics["sequenceMatch"], 1.0);
    assert_eq!(m.slices[1].metrics["sequenceMatch"], 0.5);
    assert!(close(m.task["worstSliceDrop"], 0.5), "{m:?}");
}

#[test]
fn intervals_are_seeded_paired_and_hold_the_value() {
    let n = 40;
    let r = seqs((0..n).map(|i| vec![i]).collect());
    let c = seqs(
        (0..n)
            .map(|i| vec![if i % 10 == 0 { 999 } else { i }])
            .collect(),
    );
    let task = Task::Sequence { blank: 0 };
    let a = measure(&task, &c, &r, None, None).unwrap();
    let b = measure(&task, &c, &r, None, None).unwrap();
    assert_eq!(a, b, "the same outputs give the same intervals");
    let i = &a.intervals["minSequenceMatch"];
    assert!(i.low < 0.9 && 0.9 < i.high && i.high <= 1.0, "{i:?}");
    // A perfect candidate has a degenerate interval at 1.
    let m = measure(&task, &r.clone(), &r, None, None).unwrap();
    assert_eq!(
        m.intervals["minSequenceMatch"],
        Interval {
            low: 1.0,
            high: 1.0
        }
    );
    // The original's own score has no intervals and no self-comparison metrics.
    let own = measure(&task, &r, &r, None, None).unwrap();
    assert!(own.intervals.is_empty() && own.task.is_empty(), "{own:?}");
}
