//! Task decoding (pure): what an application reads from each sample's selected output. CTC
//! greedy decoding of a text recognizer's scores, and a detector's boxes after class-aware
//! NMS, in the common layouts. The metrics over them are in [`super::score`].

use crate::api::{DetectionLayout, TaskSpec};

/// Defaults of `spec.evaluation.task`.
use crate::api::defaults::{
    IOU_THRESHOLD as DEFAULT_IOU_THRESHOLD, MAX_DETECTIONS as DEFAULT_MAX_DETECTIONS,
    NEIGHBOURS as DEFAULT_NEIGHBOURS, SCORE_THRESHOLD as DEFAULT_SCORE_THRESHOLD, SEQUENCE_BLANK,
    TOP_K as DEFAULT_TOP_K,
};
/// IoU at which a detection matches the original's (F1, mAP@0.5).
pub const MATCH_IOU: f32 = 0.5;

/// The task with its defaults applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Task {
    /// No task: the output is compared as numbers (and as classes when it is `[N, C]`).
    #[default]
    Plain,
    Classification {
        top_k: usize,
    },
    Sequence {
        blank: usize,
    },
    Detection(Detector),
    Embedding {
        k: usize,
    },
    Regression,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    pub layout: DetectionLayout,
    /// With layout boxes: the (boxes, scores, classes) output names.
    pub outputs: Option<(String, String, String)>,
    pub score_threshold: f32,
    pub iou_threshold: f32,
    pub max_detections: usize,
}

impl Task {
    pub fn from_spec(t: Option<&TaskSpec>) -> Self {
        match t {
            None => Self::Plain,
            Some(TaskSpec::Classification(c)) => Self::Classification {
                top_k: c.top_k.map_or(DEFAULT_TOP_K, |k| k as usize),
            },
            Some(TaskSpec::Sequence(s)) => Self::Sequence {
                blank: s.blank.unwrap_or(SEQUENCE_BLANK) as usize,
            },
            Some(TaskSpec::Detection(d)) => Self::Detection(Detector {
                layout: d.layout,
                outputs: d
                    .outputs
                    .as_ref()
                    .map(|o| (o.boxes.clone(), o.scores.clone(), o.classes.clone())),
                score_threshold: d
                    .score_threshold
                    .map_or(DEFAULT_SCORE_THRESHOLD, |v| v as f32),
                iou_threshold: d.iou_threshold.map_or(DEFAULT_IOU_THRESHOLD, |v| v as f32),
                max_detections: d
                    .max_detections
                    .map_or(DEFAULT_MAX_DETECTIONS, |m| m as usize),
            }),
            Some(TaskSpec::Embedding(e)) => Self::Embedding {
                k: e.k.map_or(DEFAULT_NEIGHBOURS, |k| k as usize),
            },
            Some(TaskSpec::Regression(_)) => Self::Regression,
        }
    }

    /// Whether `[N, C]` outputs are read as classes (top-1, agreement, labels).
    pub fn reads_classes(&self) -> bool {
        matches!(self, Self::Plain | Self::Classification { .. })
    }

    /// Extra outputs the task reads besides the compared one.
    pub fn extra_outputs(&self) -> Vec<String> {
        match self {
            Self::Detection(Detector {
                outputs: Some((b, s, c)),
                ..
            }) => vec![b.clone(), s.clone(), c.clone()],
            _ => Vec::new(),
        }
    }
}

/// Checks a sequence output's per-sample shape: `[steps, classes]` with the blank a class.
pub fn check_sequence(name: &str, shape: &[usize], blank: usize) -> Result<(), String> {
    if shape.len() != 2 {
        return Err(format!(
            "spec.evaluation.task.sequence reads [steps, classes] per sample, but output `{name}` is {shape:?} per sample (after the samples axis and the selection)"
        ));
    }
    if blank >= shape[1] {
        return Err(format!(
            "spec.evaluation.task.sequence.blank is {blank}, but output `{name}` has {} classes",
            shape[1]
        ));
    }
    Ok(())
}

/// CTC greedy decoding: the best class per step, repeats collapsed, blanks dropped.
pub fn ctc_greedy(v: &[f32], classes: usize, blank: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut prev = None;
    for step in v.chunks_exact(classes.max(1)) {
        let best = super::metrics::argmax(step);
        if best != prev
            && let Some(b) = best
            && b != blank
        {
            out.push(b as u32);
        }
        prev = best;
    }
    out
}

/// Levenshtein distance (insertions, deletions, substitutions).
pub fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(x != y));
            diag = up;
        }
    }
    row[b.len()]
}

/// One detected box (corners), its score and class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Det {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
    pub class: u32,
}

pub fn iou(a: &Det, b: &Det) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let area = |d: &Det| (d.x2 - d.x1).max(0.0) * (d.y2 - d.y1).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Checks a single-output detector's per-sample shape against its layout.
pub fn check_layout(name: &str, layout: DetectionLayout, shape: &[usize]) -> Result<(), String> {
    let field = "spec.evaluation.task.detection.layout";
    let (want, ok, hint) = match layout {
        DetectionLayout::Yolov8 => (
            "[4 + classes, anchors]",
            shape.len() == 2 && shape[0] > 4 && shape[0] < shape[1],
            "anchors first looks like layout yolov5 ([anchors, 5 + classes])",
        ),
        DetectionLayout::Yolov5 => (
            "[anchors, 5 + classes]",
            shape.len() == 2 && shape[1] > 5 && shape[1] < shape[0],
            "classes first looks like layout yolov8 ([4 + classes, anchors])",
        ),
        DetectionLayout::Boxes => return Ok(()),
    };
    if ok {
        return Ok(());
    }
    let hint = if shape.len() == 2 {
        format!(": {hint}")
    } else {
        String::new()
    };
    Err(format!(
        "{field} is {} ({want} per sample), but output `{name}` is {shape:?} per sample (after the samples axis){hint}",
        layout.name()
    ))
}

/// Decodes one sample of a single-output detector (shape checked by [`check_layout`]).
pub fn decode(d: &Detector, shape: &[usize], v: &[f32]) -> Vec<Det> {
    let mut dets = Vec::new();
    let mut push = |cx: f32, cy: f32, w: f32, h: f32, score: f32, class: usize| {
        if score >= d.score_threshold && score.is_finite() {
            dets.push(Det {
                x1: cx - w / 2.0,
                y1: cy - h / 2.0,
                x2: cx + w / 2.0,
                y2: cy + h / 2.0,
                score,
                class: class as u32,
            });
        }
    };
    match d.layout {
        DetectionLayout::Yolov8 => {
            let (ch, a) = (shape[0], shape[1]);
            for i in 0..a {
                let at = |c: usize| v[c * a + i];
                let (best, score) = (4..ch).fold((4, f32::NEG_INFINITY), |(b, s), c| {
                    if at(c) > s { (c, at(c)) } else { (b, s) }
                });
                push(at(0), at(1), at(2), at(3), score, best - 4);
            }
        }
        DetectionLayout::Yolov5 => {
            let ch = shape[1];
            for row in v.chunks_exact(ch) {
                let (best, score) = (5..ch).fold((5, f32::NEG_INFINITY), |(b, s), c| {
                    if row[c] > s { (c, row[c]) } else { (b, s) }
                });
                push(row[0], row[1], row[2], row[3], score * row[4], best - 5);
            }
        }
        DetectionLayout::Boxes => {}
    }
    nms(dets, d.iou_threshold, d.max_detections)
}

/// Decodes one sample of a detector with boxes `[K, 4]` (corners), scores `[K]`, classes `[K]`.
pub fn decode_boxes(d: &Detector, boxes: &[f32], scores: &[f32], classes: &[f32]) -> Vec<Det> {
    let dets = boxes
        .chunks_exact(4)
        .zip(scores)
        .zip(classes)
        .filter(|((_, s), c)| **s >= d.score_threshold && s.is_finite() && **c >= 0.0)
        .map(|((b, &score), &c)| Det {
            x1: b[0].min(b[2]),
            y1: b[1].min(b[3]),
            x2: b[0].max(b[2]),
            y2: b[1].max(b[3]),
            score,
            class: c as u32,
        })
        .collect();
    nms(dets, d.iou_threshold, d.max_detections)
}

/// Class-aware non-maximum suppression: highest scores first, a box is dropped when it
/// overlaps a kept box of its class by more than `iou_threshold`; at most `max` kept.
pub fn nms(mut dets: Vec<Det>, iou_threshold: f32, max: usize) -> Vec<Det> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Det> = Vec::new();
    for d in dets {
        if kept.len() == max {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class != d.class || iou(k, &d) <= iou_threshold)
        {
            kept.push(d);
        }
    }
    kept
}

/// (true positives, false positives, missed) and each candidate detection's (class, score,
/// matched).
pub type Matched = ((usize, usize, usize), Vec<(u32, f32, bool)>);

/// Candidate detections matched to the original's (the truth): same class, IoU >= 0.5,
/// greedily by score. Returns (true positives, false positives, missed) and, per candidate
/// detection, (class, score, matched).
pub fn match_detections(truth: &[Det], cand: &[Det]) -> Matched {
    let mut used = vec![false; truth.len()];
    let mut order: Vec<&Det> = cand.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut items = Vec::with_capacity(cand.len());
    let (mut tp, mut fp) = (0, 0);
    for c in order {
        let best = truth
            .iter()
            .enumerate()
            .filter(|(j, t)| !used[*j] && t.class == c.class)
            .map(|(j, t)| (j, iou(t, c)))
            .filter(|&(_, o)| o >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((j, _)) => {
                used[j] = true;
                tp += 1;
                items.push((c.class, c.score, true));
            }
            None => {
                fp += 1;
                items.push((c.class, c.score, false));
            }
        }
    }
    ((tp, fp, truth.len() - tp), items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class: u32) -> Det {
        Det {
            x1,
            y1,
            x2,
            y2,
            score,
            class,
        }
    }

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        // Steps' best classes: 1 1 0 1 2 2 0 -> "1 1 2".
        let best = [1, 1, 0, 1, 2, 2, 0];
        let v: Vec<f32> = best
            .iter()
            .flat_map(|&b| (0..3).map(move |c| if c == b { 0.9 } else { 0.05 }))
            .collect();
        assert_eq!(ctc_greedy(&v, 3, 0), [1, 1, 2]);
        assert_eq!(ctc_greedy(&v, 3, 1), [0, 2, 0]);
    }

    #[test]
    fn edit_distance_counts_each_kind_of_edit() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 4, 3, 5]), 2);
        assert_eq!(edit_distance(&[], &[7, 7]), 2);
        // kitten -> sitting: 3
        let w = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        assert_eq!(edit_distance(&w("kitten"), &w("sitting")), 3);
    }

    #[test]
    fn iou_of_half_overlapping_boxes_is_one_third() {
        let a = det(0.0, 0.0, 2.0, 2.0, 1.0, 0);
        let b = det(1.0, 0.0, 3.0, 2.0, 1.0, 0);
        assert!((iou(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&a, &det(5.0, 5.0, 6.0, 6.0, 1.0, 0)), 0.0);
    }

    #[test]
    fn nms_is_class_aware() {
        let dets = vec![
            det(0.0, 0.0, 10.0, 10.0, 0.9, 0),
            det(1.0, 1.0, 10.0, 10.0, 0.8, 0), // IoU 0.81 with the first: dropped
            det(1.0, 1.0, 10.0, 10.0, 0.7, 1), // another class: kept
            det(20.0, 20.0, 30.0, 30.0, 0.6, 0),
        ];
        let kept = nms(dets, 0.45, 10);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.6]);
        assert_eq!(nms(kept, 0.45, 2).len(), 2);
    }

    #[test]
    fn yolov8_and_yolov5_layouts_decode_the_same_box() {
        let d = |layout| Detector {
            layout,
            outputs: None,
            score_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 10,
        };
        // Two anchors, two classes: anchor 1 is a class-1 box at (50, 40) 20x10, score 0.8.
        let v8 = [
            0.0, 50.0, // cx
            0.0, 40.0, // cy
            1.0, 20.0, // w
            1.0, 10.0, // h
            0.1, 0.1, // class 0
            0.2, 0.8, // class 1
        ];
        check_layout("out", DetectionLayout::Yolov8, &[6, 2]).unwrap_err();
        let got = decode(&d(DetectionLayout::Yolov8), &[6, 2], &v8);
        assert_eq!(got, [det(40.0, 35.0, 60.0, 45.0, 0.8, 1)]);
        let v5 = [
            0.0, 0.0, 1.0, 1.0, 0.5, 0.1, 0.2, // anchor 0: 0.5 * 0.2 < 0.25
            50.0, 40.0, 20.0, 10.0, 1.0, 0.1, 0.8,
        ];
        let got = decode(&d(DetectionLayout::Yolov5), &[2, 7], &v5);
        assert_eq!(got, [det(40.0, 35.0, 60.0, 45.0, 0.8, 1)]);
    }

    #[test]
    fn a_layout_that_does_not_fit_the_shape_says_which_it_looks_like() {
        let e = check_layout("output0", DetectionLayout::Yolov8, &[2100, 22]).unwrap_err();
        assert!(
            e.contains("spec.evaluation.task.detection.layout is yolov8")
                && e.contains("[2100, 22]")
                && e.contains("yolov5"),
            "{e}"
        );
        check_layout("output0", DetectionLayout::Yolov8, &[22, 2100]).unwrap();
        check_layout("output0", DetectionLayout::Yolov5, &[2100, 22]).unwrap();
        let e = check_layout("o", DetectionLayout::Yolov5, &[10]).unwrap_err();
        assert!(e.contains("[10]"), "{e}");
    }

    #[test]
    fn matching_needs_the_same_class_and_half_overlap() {
        let truth = [
            det(0.0, 0.0, 10.0, 10.0, 0.9, 0),
            det(20.0, 20.0, 30.0, 30.0, 0.9, 1),
        ];
        let cand = [
            det(0.0, 0.0, 10.0, 9.0, 0.8, 0),    // IoU 0.9: match
            det(20.0, 20.0, 30.0, 30.0, 0.7, 2), // wrong class
            det(0.0, 0.0, 10.0, 10.0, 0.6, 0),   // duplicate of a matched truth
        ];
        let ((tp, fp, missed), items) = match_detections(&truth, &cand);
        assert_eq!((tp, fp, missed), (1, 2, 1));
        assert_eq!(items[0], (0, 0.8, true));
    }
}
