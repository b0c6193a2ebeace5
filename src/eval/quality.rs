//! Quality metrics of a candidate against the original (and the labels), pure.
//!
//! Every metric is a function of per-sample weights: all ones gives the metric on the whole
//! evaluation set, a slice's indicator gives it on that slice, and the counts of a resample
//! (drawn with replacement, the same rows for both models: paired) give one bootstrap draw.
//! One implementation serves the value, the slices and the interval.

use super::metrics::argmax;
use super::task::{Det, Task, edit_distance, match_detections};
use super::values::Values;
use super::{Labels, Outputs};
use crate::api::task::CheckName;
use crate::api::{Interval, SliceMetrics};
use std::collections::BTreeMap;
use std::io;

/// Resamples of the bootstrap; a fixed seed, so the same outputs give the same interval.
pub const RESAMPLES: usize = 1000;
const SEED: u64 = 0x7175_616c_6974_7921; // "quality!"
/// Most per-sample visits of one bootstrap (resamples × samples × metrics).
const WORK: usize = 50_000_000;
const MIN_RESAMPLES: usize = 100;
/// Most distinct slices in `spec.dataset.slices`.
pub const MAX_SLICES: usize = 64;
/// Most samples whose neighbours are searched (recall@k is quadratic in them).
pub const MAX_NEIGHBOUR_SAMPLES: usize = 20_000;

/// Which model a label metric is of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Of {
    Base,
    Cand,
}

/// The metrics measured, each over weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum M {
    Cosine,
    MeanAbsError,
    MaxAbsError,
    Agreement,
    Accuracy(Of),
    TopKAccuracy(Of),
    TopKAgreement,
    MacroF1,
    MacroF1Labels(Of),
    SequenceMatch,
    CharErrorRate,
    DetectionF1,
    Map50,
    NeighbourRecall,
    SequenceMatchLabels(Of),
    CharErrorRateLabels(Of),
    DetectionF1Labels(Of),
    Map50Labels(Of),
}

impl M {
    fn key(self) -> &'static str {
        match self {
            M::Cosine => "cosineSimilarity",
            M::MeanAbsError => "meanAbsError",
            M::MaxAbsError => "maxAbsError",
            M::Agreement => "agreement",
            M::Accuracy(_) => "accuracy",
            M::TopKAccuracy(_) => "topKAccuracy",
            M::TopKAgreement => "topKAgreement",
            M::MacroF1 => "macroF1",
            M::MacroF1Labels(_) => "macroF1Labels",
            M::SequenceMatch => "sequenceMatch",
            M::CharErrorRate => "charErrorRate",
            M::DetectionF1 => "detectionF1",
            M::Map50 => "map50",
            M::NeighbourRecall => "neighbourRecall",
            M::SequenceMatchLabels(_) => "sequenceMatchLabels",
            M::CharErrorRateLabels(_) => "charErrorRateLabels",
            M::DetectionF1Labels(_) => "detectionF1Labels",
            M::Map50Labels(_) => "map50Labels",
        }
    }
}

/// Per sample: exact match, edits, the truth's length.
type SeqStats = (Vec<bool>, Vec<f64>, Vec<f64>);

/// Decoded sequences against the truth's (the original's, or the labels).
fn seq_stats(truth: &[Vec<u32>], pred: &[Vec<u32>]) -> SeqStats {
    let mut m = (Vec::new(), Vec::new(), Vec::new());
    for (t, p) in truth.iter().zip(pred) {
        m.0.push(t == p);
        m.1.push(edit_distance(t, p) as f64);
        m.2.push(t.len() as f64);
    }
    m
}

/// The original's and the candidate's statistics against the labels.
fn of<T>(pair: Option<&(T, T)>, of: Of) -> Option<&T> {
    pair.map(|(b, c)| if of == Of::Base { b } else { c })
}

/// Detection statistics per sample, and every candidate detection for mAP.
#[derive(Debug, Default)]
struct DetStats {
    tp: Vec<f64>,
    fp: Vec<f64>,
    missed: Vec<f64>,
    /// Per class: (score, matched, sample), highest score first.
    ranked: BTreeMap<u32, Vec<(f32, bool, usize)>>,
    /// Per class: the original's detections per sample.
    truth: BTreeMap<u32, Vec<(usize, f64)>>,
}

/// Each sample's top-1 class (None for a NaN row).
type Top1 = Vec<Option<usize>>;

/// Per-sample statistics of both models.
#[derive(Debug, Default)]
pub struct Paired {
    n: usize,
    elements: usize,
    cos: Vec<f64>,
    abs_sum: Vec<f64>,
    abs_max: Vec<f64>,
    /// Top-1 of the original and the candidate.
    top1: Option<(Top1, Top1)>,
    labels: Option<Vec<i64>>,
    /// Whether the label is in the top k, original and candidate.
    topk_hit: Option<(Vec<bool>, Vec<bool>)>,
    /// Whether the original's top-1 is in the candidate's top k.
    topk_agree: Option<Vec<bool>>,
    /// Exact match, edits, the original's length.
    seq: Option<SeqStats>,
    det: Option<DetStats>,
    /// The original's and the candidate's sequences against the labels.
    seq_labels: Option<(SeqStats, SeqStats)>,
    /// The original's and the candidate's detections against the labels.
    det_labels: Option<(DetStats, DetStats)>,
    recall: Option<Vec<f64>>,
    task: Task,
    /// Whether the candidate is the original itself (the baseline's own score).
    same: bool,
}

/// The top `k` classes of a row, best first (NaN rows: none).
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    if row.iter().any(|x| x.is_nan()) {
        return Vec::new();
    }
    let mut ix: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    ix.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    ix.truncate(k);
    ix.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    ix
}

impl Paired {
    /// Per-sample statistics of `cand` against `reference` (the same rows).
    pub fn new(
        task: &Task,
        cand: &Outputs,
        reference: &Outputs,
        labels: Option<&Labels>,
    ) -> io::Result<Self> {
        let same = std::ptr::eq(cand, reference);
        let ps = cand.per_sample;
        let n = cand.values.len().checked_div(ps).unwrap_or(cand.samples);
        let mut p = Paired {
            n,
            elements: ps,
            task: task.clone(),
            same,
            labels: labels
                .and_then(Labels::classes)
                .map(|l| l[..n.min(l.len())].to_vec()),
            ..Default::default()
        };
        p.closeness(cand, reference)?;
        if let (Some(c), Some(rc)) = (cand.classes, reference.classes)
            && c == rc
            && task.reads_classes()
        {
            p.classes(cand, reference, c)?;
        }
        match task {
            Task::Sequence { .. } => {
                p.seq = Some(seq_stats(&reference.sequences, &cand.sequences));
                p.seq_labels = labels.and_then(Labels::sequences).map(|l| {
                    (
                        seq_stats(l, &reference.sequences),
                        seq_stats(l, &cand.sequences),
                    )
                });
            }
            Task::Detection(_) => {
                p.det = Some(det_stats(&reference.detections, &cand.detections));
                p.det_labels = labels.and_then(Labels::boxes).map(|l| {
                    (
                        det_stats(l, &reference.detections),
                        det_stats(l, &cand.detections),
                    )
                });
            }
            Task::Embedding { k } if !same => p.neighbours(cand, reference, *k)?,
            _ => {}
        }
        Ok(p)
    }

    fn closeness(&mut self, cand: &Outputs, reference: &Outputs) -> io::Result<()> {
        let (ps, n) = (self.elements, self.n);
        Values::zip_rows(&reference.values, &cand.values, ps, n, |_, r, c| {
            let (cos, sum, max) = super::metrics::closeness_one(r, c);
            self.cos.push(cos);
            self.abs_sum.push(sum);
            self.abs_max.push(max);
        })
    }

    fn classes(&mut self, cand: &Outputs, reference: &Outputs, c: usize) -> io::Result<()> {
        let n = self.n;
        let (rt, ct) = (
            reference.values.map_rows(c, n, argmax)?,
            cand.values.map_rows(c, n, argmax)?,
        );
        if let Task::Classification { top_k: k } = self.task {
            let rows = |o: &Outputs| o.values.map_rows(c, n, |r| top_k(r, k));
            let (rk, ck) = (rows(reference)?, rows(cand)?);
            self.topk_agree = Some(
                rt.iter()
                    .zip(&ck)
                    .map(|(t, k)| t.is_some_and(|t| k.contains(&t)))
                    .collect(),
            );
            if let Some(l) = &self.labels {
                let hit = |k: &[Vec<usize>]| -> Vec<bool> {
                    k.iter()
                        .zip(l)
                        .map(|(k, &l)| k.iter().any(|&x| x as i64 == l))
                        .collect()
                };
                self.topk_hit = Some((hit(&rk), hit(&ck)));
            }
        }
        self.top1 = Some((rt, ct));
        Ok(())
    }

    /// recall@k of each sample's k nearest neighbours (cosine, itself excluded).
    fn neighbours(&mut self, cand: &Outputs, reference: &Outputs, k: usize) -> io::Result<()> {
        let d = cand.per_sample;
        let n = self.n.min(MAX_NEIGHBOUR_SAMPLES);
        let k = k.min(n.saturating_sub(1));
        if d == 0 || k == 0 {
            return Ok(());
        }
        let unit = |o: &Outputs| -> io::Result<Vec<f32>> {
            let mut v = o.values.read(0, n * d)?.into_owned();
            for row in v.chunks_exact_mut(d) {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    row.iter_mut().for_each(|x| *x /= norm);
                }
            }
            Ok(v)
        };
        let (r, c) = (unit(reference)?, unit(cand)?);
        let nearest = |v: &[f32], i: usize| -> Vec<usize> {
            let q = &v[i * d..(i + 1) * d];
            let sims: Vec<f32> = v
                .chunks_exact(d)
                .enumerate()
                .map(|(j, row)| {
                    if j == i {
                        f32::NEG_INFINITY
                    } else {
                        row.iter().zip(q).map(|(a, b)| a * b).sum()
                    }
                })
                .collect();
            top_k(&sims, k)
        };
        let recall = (0..n)
            .map(|i| {
                let (a, b) = (nearest(&r, i), nearest(&c, i));
                a.iter().filter(|x| b.contains(x)).count() as f64 / k as f64
            })
            .collect();
        self.recall = Some(recall);
        Ok(())
    }
}

/// Detections matched to the truth's (the original's, or the labels), per sample.
fn det_stats(truth: &[Vec<Det>], pred: &[Vec<Det>]) -> DetStats {
    let mut d = DetStats::default();
    for (i, (r, c)) in truth.iter().zip(pred).enumerate() {
        let ((tp, fp, missed), items) = match_detections(r, c);
        d.tp.push(tp as f64);
        d.fp.push(fp as f64);
        d.missed.push(missed as f64);
        for (class, score, ok) in items {
            d.ranked.entry(class).or_default().push((score, ok, i));
        }
        let mut per_class: BTreeMap<u32, f64> = BTreeMap::new();
        for t in r {
            *per_class.entry(t.class).or_default() += 1.0;
        }
        for (class, count) in per_class {
            d.truth.entry(class).or_default().push((i, count));
        }
    }
    for v in d.ranked.values_mut() {
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
    }
    d
}

/// The fraction of samples decoded exactly as the truth.
fn sequence_match(s: &SeqStats, w: &[f64]) -> Option<f64> {
    wmean(w, |i| f64::from(u8::from(s.0[i])))
}

/// Edits per character of the truth.
fn char_error_rate(s: &SeqStats, w: &[f64]) -> Option<f64> {
    let edits = wmean(w, |i| s.1[i])?;
    let len = wmean(w, |i| s.2[i])?;
    Some(if len > 0.0 {
        edits / len
    } else {
        f64::from(u8::from(edits > 0.0))
    })
}

fn detection_f1(d: &DetStats, w: &[f64]) -> Option<f64> {
    let tp = wmean(w, |i| d.tp[i])?;
    let (fp, missed) = (wmean(w, |i| d.fp[i])?, wmean(w, |i| d.missed[i])?);
    let den = 2.0 * tp + fp + missed;
    Some(if den > 0.0 { 2.0 * tp / den } else { 1.0 })
}

/// mAP@0.5 over the classes of the truth and the detections.
fn map50(d: &DetStats, w: &[f64]) -> Option<f64> {
    w.iter().any(|&x| x > 0.0).then_some(())?;
    let mut aps = Vec::new();
    let mut stray = false;
    for (class, ranked) in &d.ranked {
        let truth: f64 = d
            .truth
            .get(class)
            .map_or(0.0, |t| t.iter().map(|&(s, c)| w[s] * c).sum());
        if truth > 0.0 {
            aps.push(average_precision(ranked, truth, w));
        } else {
            stray |= ranked.iter().any(|&(_, _, s)| w[s] > 0.0);
        }
    }
    // Classes the truth has and the detections never do: AP 0.
    for (class, t) in &d.truth {
        if !d.ranked.contains_key(class) && t.iter().any(|&(s, _)| w[s] > 0.0) {
            aps.push(0.0);
        }
    }
    Some(if aps.is_empty() {
        f64::from(u8::from(!stray))
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    })
}

/// Σ w·x / Σ w over the samples (None without weight).
fn wmean(w: &[f64], x: impl Fn(usize) -> f64) -> Option<f64> {
    let (mut s, mut t) = (0.0, 0.0);
    for (i, &wi) in w.iter().enumerate() {
        if wi > 0.0 {
            s += wi * x(i);
            t += wi;
        }
    }
    (t > 0.0).then(|| s / t)
}

/// Macro-F1 of predictions against truths, over the classes either names.
fn macro_f1(w: &[f64], pairs: impl Fn(usize) -> (Option<usize>, Option<usize>)) -> Option<f64> {
    let mut counts: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
    let mut any = false;
    for (i, &wi) in w.iter().enumerate() {
        if wi == 0.0 {
            continue;
        }
        any = true;
        let (p, t) = pairs(i);
        match (p, t) {
            (Some(p), Some(t)) if p == t => counts.entry(p).or_default().0 += wi,
            _ => {
                if let Some(p) = p {
                    counts.entry(p).or_default().1 += wi;
                }
                if let Some(t) = t {
                    counts.entry(t).or_default().2 += wi;
                }
            }
        }
    }
    if !any {
        return None;
    }
    if counts.is_empty() {
        return Some(1.0);
    }
    let f1s: f64 = counts
        .values()
        .map(|&(tp, fp, fn_)| 2.0 * tp / (2.0 * tp + fp + fn_))
        .sum();
    Some(f1s / counts.len() as f64)
}

/// Average precision (all points, the precision envelope) of detections ranked by score,
/// against `truth` weighted true boxes.
fn average_precision(ranked: &[(f32, bool, usize)], truth: f64, w: &[f64]) -> f64 {
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(ranked.len());
    for &(_, ok, s) in ranked {
        if w[s] == 0.0 {
            continue;
        }
        if ok {
            tp += w[s];
        } else {
            fp += w[s];
        }
        points.push((tp / truth, tp / (tp + fp)));
    }
    for i in (0..points.len().saturating_sub(1)).rev() {
        points[i].1 = points[i].1.max(points[i + 1].1);
    }
    let mut prev = 0.0;
    let mut ap = 0.0;
    for (r, p) in points {
        ap += (r - prev) * p;
        prev = r;
    }
    ap
}

impl Paired {
    fn value(&self, m: M, w: &[f64]) -> Option<f64> {
        let labels = || self.labels.as_ref();
        let top1 = || self.top1.as_ref();
        match m {
            M::Cosine => wmean(w, |i| self.cos[i]),
            M::MeanAbsError => {
                wmean(w, |i| self.abs_sum[i]).map(|s| s / self.elements.max(1) as f64)
            }
            M::MaxAbsError => w
                .iter()
                .zip(&self.abs_max)
                .filter(|(w, _)| **w > 0.0)
                .map(|(_, m)| *m)
                .reduce(f64::max),
            M::Agreement => {
                let (r, c) = top1()?;
                wmean(w, |i| f64::from(u8::from(c[i].is_some() && c[i] == r[i])))
            }
            M::Accuracy(of) => {
                let (r, c) = top1()?;
                let l = labels()?;
                let p = if of == Of::Base { r } else { c };
                wmean(w, |i| {
                    f64::from(u8::from(p[i].is_some_and(|p| p as i64 == l[i])))
                })
            }
            M::TopKAccuracy(of) => {
                let (r, c) = self.topk_hit.as_ref()?;
                let h = if of == Of::Base { r } else { c };
                wmean(w, |i| f64::from(u8::from(h[i])))
            }
            M::TopKAgreement => {
                let a = self.topk_agree.as_ref()?;
                wmean(w, |i| f64::from(u8::from(a[i])))
            }
            M::MacroF1 => {
                let (r, c) = top1()?;
                macro_f1(w, |i| (c[i], r[i]))
            }
            M::MacroF1Labels(of) => {
                let (r, c) = top1()?;
                let l = labels()?;
                let p = if of == Of::Base { r } else { c };
                macro_f1(w, |i| (p[i], usize::try_from(l[i]).ok()))
            }
            _ => self.task_value(m, w),
        }
    }

    fn task_value(&self, m: M, w: &[f64]) -> Option<f64> {
        let seq = |o| of(self.seq_labels.as_ref(), o);
        let det = |o| of(self.det_labels.as_ref(), o);
        match m {
            M::SequenceMatch => sequence_match(self.seq.as_ref()?, w),
            M::CharErrorRate => char_error_rate(self.seq.as_ref()?, w),
            M::DetectionF1 => detection_f1(self.det.as_ref()?, w),
            M::Map50 => map50(self.det.as_ref()?, w),
            M::SequenceMatchLabels(o) => sequence_match(seq(o)?, w),
            M::CharErrorRateLabels(o) => char_error_rate(seq(o)?, w),
            M::DetectionF1Labels(o) => detection_f1(det(o)?, w),
            M::Map50Labels(o) => map50(det(o)?, w),
            M::NeighbourRecall => {
                let r = self.recall.as_ref()?;
                let w = &w[..r.len().min(w.len())];
                wmean(w, |i| r[i])
            }
            _ => None,
        }
    }

    /// The metrics a report shows for this pair: the candidate's, and the label metrics of
    /// the original when `self.same`.
    fn shown(&self) -> Vec<M> {
        let mut all = vec![
            M::Accuracy(Of::Cand),
            M::TopKAccuracy(Of::Cand),
            M::MacroF1Labels(Of::Cand),
            M::SequenceMatchLabels(Of::Cand),
            M::CharErrorRateLabels(Of::Cand),
            M::DetectionF1Labels(Of::Cand),
            M::Map50Labels(Of::Cand),
        ];
        if !self.same {
            all.extend([
                M::Cosine,
                M::MeanAbsError,
                M::MaxAbsError,
                M::Agreement,
                M::TopKAgreement,
                M::MacroF1,
                M::SequenceMatch,
                M::CharErrorRate,
                M::DetectionF1,
                M::Map50,
                M::NeighbourRecall,
            ]);
        }
        all
    }

    /// The task's headline drop (baseline minus candidate; against the original the
    /// baseline is perfect: 1 for agreement-like metrics, 0 for errors).
    fn headline_drop(&self, w: &[f64]) -> Option<f64> {
        let acc =
            || Some(self.value(M::Accuracy(Of::Base), w)? - self.value(M::Accuracy(Of::Cand), w)?);
        let one_minus = |m| self.value(m, w).map(|v| 1.0 - v);
        let labels_drop =
            |m: fn(Of) -> M| Some(self.value(m(Of::Base), w)? - self.value(m(Of::Cand), w)?);
        match self.task {
            Task::Sequence { .. } => {
                labels_drop(M::SequenceMatchLabels).or_else(|| one_minus(M::SequenceMatch))
            }
            Task::Detection(_) => {
                labels_drop(M::DetectionF1Labels).or_else(|| one_minus(M::DetectionF1))
            }
            Task::Embedding { .. } => one_minus(M::NeighbourRecall),
            Task::Regression => self.value(M::MeanAbsError, w),
            Task::Plain | Task::Classification { .. } if self.top1.is_some() => {
                acc().or_else(|| one_minus(M::Agreement))
            }
            _ => one_minus(M::Cosine),
        }
    }

    /// The value of a quality check, over weights.
    fn check_value(&self, c: CheckName, w: &[f64], slices: &[(i64, Vec<f64>)]) -> Option<f64> {
        use CheckName as C;
        let drop = |b, c| Some(self.value(b, w)? - self.value(c, w)?);
        match c {
            C::MaxAccuracyDrop => drop(M::Accuracy(Of::Base), M::Accuracy(Of::Cand)),
            C::MaxRelativeAccuracyDrop => {
                let b = self.value(M::Accuracy(Of::Base), w)?;
                let d = drop(M::Accuracy(Of::Base), M::Accuracy(Of::Cand))?;
                Some(if b > 0.0 { d / b } else { 0.0 })
            }
            C::MaxTopKAccuracyDrop => drop(M::TopKAccuracy(Of::Base), M::TopKAccuracy(Of::Cand)),
            C::MinAgreement => self.value(M::Agreement, w),
            C::MinCosineSimilarity => self.value(M::Cosine, w),
            C::MinTopKAgreement => self.value(M::TopKAgreement, w),
            C::MinMacroF1 => self.value(M::MacroF1, w),
            C::MinSequenceMatch => self.value(M::SequenceMatch, w),
            C::MaxCharErrorRate => self.value(M::CharErrorRate, w),
            C::MinDetectionF1 => self.value(M::DetectionF1, w),
            C::MinMap50 => self.value(M::Map50, w),
            C::MinNeighbourRecall => self.value(M::NeighbourRecall, w),
            C::MaxSequenceMatchDrop => drop(
                M::SequenceMatchLabels(Of::Base),
                M::SequenceMatchLabels(Of::Cand),
            ),
            C::MaxCharErrorRateIncrease => drop(
                M::CharErrorRateLabels(Of::Cand),
                M::CharErrorRateLabels(Of::Base),
            ),
            C::MaxDetectionF1Drop => drop(
                M::DetectionF1Labels(Of::Base),
                M::DetectionF1Labels(Of::Cand),
            ),
            C::MaxMap50Drop => drop(M::Map50Labels(Of::Base), M::Map50Labels(Of::Cand)),
            C::MaxMeanAbsError => self.value(M::MeanAbsError, w),
            C::MaxAbsError => self.value(M::MaxAbsError, w),
            C::MaxWorstSliceDrop => slices
                .iter()
                .filter_map(|(_, ind)| {
                    let ws: Vec<f64> = w.iter().zip(ind).map(|(a, b)| a * b).collect();
                    self.headline_drop(&ws)
                })
                .reduce(f64::max),
            C::MinCompressionRatio | C::MaxLatencyRatio | C::TensorsCompressed => None,
        }
    }
}

/// What [`measure`] adds to a model's metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Measured {
    /// Task metrics by name (`Metrics::task`).
    pub task: BTreeMap<String, f64>,
    /// Per quality check: its 95% interval.
    pub intervals: BTreeMap<String, Interval>,
    pub slices: Vec<SliceMetrics>,
}

/// Task metrics, per-slice metrics and the quality checks' bootstrap intervals of `cand`
/// against `reference` (pass the same object twice for the original's own label metrics).
pub fn measure(
    task: &Task,
    cand: &Outputs,
    reference: &Outputs,
    labels: Option<&Labels>,
    slices: Option<&[i64]>,
) -> io::Result<Measured> {
    let p = Paired::new(task, cand, reference, labels)?;
    let ones = vec![1.0; p.n];
    let slices: Vec<(i64, Vec<f64>)> = slice_indicators(slices, p.n);
    let mut out = Measured::default();
    for m in p.shown() {
        // The generic metrics stay in their own Metrics fields.
        if matches!(
            m,
            M::Cosine | M::MeanAbsError | M::MaxAbsError | M::Agreement | M::Accuracy(_)
        ) {
            continue;
        }
        if let Some(v) = p.value(m, &ones) {
            out.task.insert(m.key().into(), v);
        }
    }
    if !p.same {
        if let Some(v) = p.check_value(CheckName::MaxWorstSliceDrop, &ones, &slices) {
            out.task.insert("worstSliceDrop".into(), v);
        }
        out.intervals = intervals(&p, &slices);
    }
    for (s, ind) in &slices {
        let metrics: BTreeMap<String, f64> = p
            .shown()
            .into_iter()
            .filter_map(|m| Some((m.key().to_string(), p.value(m, ind)?)))
            .collect();
        out.slices.push(SliceMetrics {
            slice: *s,
            samples: ind.iter().filter(|&&x| x > 0.0).count() as u64,
            metrics,
        });
    }
    Ok(out)
}

/// One indicator per distinct slice value, in ascending order.
fn slice_indicators(slices: Option<&[i64]>, n: usize) -> Vec<(i64, Vec<f64>)> {
    let Some(s) = slices else {
        return Vec::new();
    };
    let mut values: Vec<i64> = s.iter().take(n).copied().collect();
    values.sort_unstable();
    values.dedup();
    values
        .into_iter()
        .map(|v| {
            let ind = (0..n)
                .map(|i| f64::from(u8::from(s.get(i) == Some(&v))))
                .collect();
            (v, ind)
        })
        .collect()
}

/// Paired bootstrap: the same resampled rows for both models and every check.
fn intervals(p: &Paired, slices: &[(i64, Vec<f64>)]) -> BTreeMap<String, Interval> {
    let ones = vec![1.0; p.n];
    let checks: Vec<CheckName> = CheckName::ALL
        .into_iter()
        .filter(|c| c.is_quality() && p.check_value(*c, &ones, slices).is_some())
        .collect();
    if p.n < 2 || checks.is_empty() {
        return BTreeMap::new();
    }
    let per =
        p.n.saturating_mul(checks.len())
            .saturating_mul(slices.len().max(1));
    let resamples = RESAMPLES.min((WORK / per.max(1)).max(MIN_RESAMPLES));
    let mut rng = SEED;
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); checks.len()];
    let mut w = vec![0.0; p.n];
    for _ in 0..resamples {
        w.iter_mut().for_each(|x| *x = 0.0);
        for _ in 0..p.n {
            w[(xorshift(&mut rng) % p.n as u64) as usize] += 1.0;
        }
        for (c, d) in checks.iter().zip(draws.iter_mut()) {
            if let Some(v) = p.check_value(*c, &w, slices) {
                d.push(v);
            }
        }
    }
    checks
        .iter()
        .zip(draws)
        .filter_map(|(c, mut d)| {
            if d.is_empty() {
                return None;
            }
            d.sort_by(f64::total_cmp);
            let at = |q: f64| d[((q * (d.len() - 1) as f64).round() as usize).min(d.len() - 1)];
            Some((
                c.name().to_string(),
                Interval {
                    low: at(0.025),
                    high: at(0.975),
                },
            ))
        })
        .collect()
}

/// xorshift64*: a small, seeded generator (the same draws on every machine).
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests;
