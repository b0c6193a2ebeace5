//! Calibration for static quantization: the original model runs over the calibration rows
//! with the activations a pass will quantize added as graph outputs, a batch at a time, and
//! every batch is folded into fixed-size statistics per tensor (exact min/max and a histogram
//! of `BINS` bins over a symmetric range that doubles as values grow). No activation is kept,
//! so memory does not grow with the number of samples.

use super::feed::Feeder;
use super::{ArrayData, Error, EvalConfig, Opened, Result, tensor};
use crate::api::{CalibrationBatch, CalibrationMethod};
use crate::onnx::{self, Model, pb};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Histogram bins per tensor, over `[-range, range]` (an even number: bin `BINS / 2` starts
/// at zero).
pub const BINS: usize = 2048;

/// Quantized magnitude levels the entropy search compares against (int8: |q| in 0..128;
/// twice that for one-sided values with asymmetric ranges).
pub const ENTROPY_LEVELS: usize = 128;

/// Streamed statistics of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// Smallest and largest finite value seen (0 before any).
    pub min: f32,
    pub max: f32,
    /// Finite values seen.
    pub count: u64,
    /// NaN and infinities seen (left out of every statistic).
    pub non_finite: u64,
    /// Σ x² over the finite values (the signal of [`TensorStats::estimated_sqnr_db`]).
    pub sum_sq: f64,
    /// Half-width of the histogram's range; 0 while every value seen was 0.
    range: f64,
    hist: Vec<u64>,
}

impl Default for TensorStats {
    fn default() -> Self {
        Self {
            min: 0.0,
            max: 0.0,
            count: 0,
            non_finite: 0,
            sum_sq: 0.0,
            range: 0.0,
            hist: vec![0; BINS],
        }
    }
}

impl TensorStats {
    /// Statistics without the histogram (minMax needs none): min, max and counts only.
    pub fn min_max_only() -> Self {
        Self {
            hist: Vec::new(),
            ..Self::default()
        }
    }

    /// The histogram: `BINS` counts over `[-range, range]`, equal widths.
    pub fn histogram(&self) -> (&[u64], f64) {
        (&self.hist, self.range)
    }

    /// Folds a batch of values in.
    pub fn update(&mut self, values: &[f32]) {
        let (mut lo, mut hi, mut amax) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        let mut finite = 0u64;
        let mut sum_sq = 0f64;
        for &v in values {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
                amax = amax.max(v.abs());
                sum_sq += f64::from(v) * f64::from(v);
                finite += 1;
            }
        }
        self.sum_sq += sum_sq;
        self.non_finite += values.len() as u64 - finite;
        if finite == 0 {
            return;
        }
        if self.count == 0 {
            (self.min, self.max) = (lo, hi);
        } else {
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
        }
        self.count += finite;
        if self.hist.is_empty() {
            return;
        }
        if f64::from(amax) > self.range {
            self.grow(f64::from(amax));
        }
        if self.range == 0.0 {
            // Every value so far is 0: zero's bin is BINS / 2 whatever the range becomes.
            self.hist[BINS / 2] += finite;
            return;
        }
        let per = BINS as f64 / (2.0 * self.range);
        for &v in values {
            if v.is_finite() {
                let i = ((f64::from(v) + self.range) * per) as usize;
                self.hist[i.min(BINS - 1)] += 1;
            }
        }
    }

    /// Widens the range to cover `amax`: by a power of two, so old bins merge exactly.
    fn grow(&mut self, amax: f64) {
        if self.range == 0.0 {
            self.range = amax;
            return;
        }
        let mut k = 0u32;
        while self.range * 2f64.powi(k as i32) < amax {
            k += 1;
        }
        let old = std::mem::replace(&mut self.hist, vec![0; BINS]);
        let half = (BINS / 2) as u128;
        for (j, c) in old.into_iter().enumerate() {
            // Old bin j starts j units above -range; the new bins are 2^k units wide and
            // start (2^k - 1) * BINS/2 units below it.
            let n = if k >= 100 {
                if (j as u128) < half { half - 1 } else { half }
            } else {
                let f = 1u128 << k;
                ((f - 1) * half + j as u128) / f
            };
            self.hist[n as usize] += c;
        }
        self.range *= 2f64.powi(k as i32);
    }

    /// |x| histogram: `BINS / 2` bins over `[0, range]`.
    pub fn abs_histogram(&self) -> Vec<u64> {
        let h = BINS / 2;
        (0..h)
            .map(|k| self.hist[h + k] + self.hist[h - 1 - k])
            .collect()
    }

    /// The activation's quantization error over the calibration samples, estimated from the
    /// statistics for the range `[lo, hi]` on 256 levels: rounding noise of step²/12 per value
    /// inside it, plus the squared distance to the range of every value outside it (from the
    /// histogram, at bin centres; without one the range is `[min, max]` and nothing clips).
    /// In dB of signal (Σx²) over noise; None with no signal or no noise.
    pub fn estimated_sqnr_db(&self, lo: f32, hi: f32) -> Option<f64> {
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let step = (hi - lo) / 255.0;
        let mut clip = 0f64;
        let mut clipped = 0u64;
        if !self.hist.is_empty() && self.range > 0.0 {
            let w = 2.0 * self.range / BINS as f64;
            for (i, &c) in self.hist.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let x = -self.range + (i as f64 + 0.5) * w;
                let d = if x < lo {
                    lo - x
                } else if x > hi {
                    x - hi
                } else {
                    0.0
                };
                if d > 0.0 {
                    clip += c as f64 * d * d;
                    clipped += c;
                }
            }
        }
        let noise = (self.count - clipped.min(self.count)) as f64 * step * step / 12.0 + clip;
        (self.sum_sq > 0.0 && noise > 0.0).then(|| 10.0 * (self.sum_sq / noise).log10())
    }

    /// The range to quantize to, `[lo, hi]`, inside the observed `[min, max]`.
    /// `symmetric` picks how `percentile` cuts (|x|, or both tails). Without a histogram
    /// ([`TensorStats::min_max_only`]) every method gives `[min, max]`.
    pub fn range_for(
        &self,
        method: CalibrationMethod,
        percentile: f64,
        symmetric: bool,
    ) -> (f32, f32) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        if self.hist.is_empty() {
            return (self.min, self.max);
        }
        let clamp = |lo: f64, hi: f64| {
            let lo = (lo as f32).max(self.min);
            (lo, (hi as f32).min(self.max).max(lo))
        };
        match method {
            CalibrationMethod::MinMax => (self.min, self.max),
            CalibrationMethod::Percentile if symmetric => {
                let t = abs_percentile(&self.abs_histogram(), self.range, percentile);
                clamp(-t, t)
            }
            CalibrationMethod::Percentile => {
                let cut = (100.0 - percentile) / 200.0;
                let total = self.hist.iter().sum::<u64>() as f64;
                let w = 2.0 * self.range / BINS as f64;
                let mut cum = 0u64;
                let (mut left, mut right) = (None, None);
                for (i, &c) in self.hist.iter().enumerate() {
                    cum += c;
                    let frac = cum as f64 / total;
                    if left.is_none() && frac >= cut {
                        left = Some(i);
                    }
                    if right.is_none() && frac >= 1.0 - cut {
                        right = Some(i);
                    }
                }
                let l = left.unwrap_or(0) as f64 * w - self.range;
                let r = (right.unwrap_or(BINS - 1) + 1) as f64 * w - self.range;
                clamp(l, r)
            }
            CalibrationMethod::Entropy => {
                // One-sided values (a Relu's) get all 256 asymmetric levels on [0, t], not
                // the 128 a side gets when values straddle 0.
                let one_sided = !symmetric && (self.min >= 0.0 || self.max <= 0.0);
                let levels = if one_sided {
                    2 * ENTROPY_LEVELS
                } else {
                    ENTROPY_LEVELS
                };
                let t = entropy_threshold(&self.abs_histogram(), self.range, levels);
                clamp(-t, t)
            }
        }
    }
}

/// The upper edge of the first |x| bin whose cumulative share reaches `percentile`.
pub fn abs_percentile(abs_hist: &[u64], range: f64, percentile: f64) -> f64 {
    let total: u64 = abs_hist.iter().sum();
    let w = range / abs_hist.len() as f64;
    let want = percentile / 100.0 * total as f64;
    let mut cum = 0u64;
    for (k, &c) in abs_hist.iter().enumerate() {
        cum += c;
        if cum as f64 >= want {
            return (k + 1) as f64 * w;
        }
    }
    range
}

/// TensorRT's entropy calibration on an |x| histogram: for each candidate clip of `i` bins
/// (from `levels` to all), the clipped distribution P (outliers added to its last bin) and
/// its quantization Q to `levels` levels (each level's mass spread over its non-empty bins)
/// are compared by KL(P || Q); the clip with the least divergence wins. Returns the clip
/// value (the upper edge of bin `i - 1`).
pub fn entropy_threshold(abs_hist: &[u64], range: f64, levels: usize) -> f64 {
    let n = abs_hist.len();
    let w = range / n as f64;
    if n <= levels {
        return range;
    }
    let mut best = (f64::INFINITY, n);
    let mut outliers: u64 = abs_hist[levels..].iter().sum();
    let mut p = vec![0f64; n];
    let mut q = vec![0f64; n];
    for i in levels..=n {
        let hist = &abs_hist[..i];
        for (pj, &h) in p.iter_mut().zip(hist) {
            *pj = h as f64;
        }
        p[i - 1] += outliers as f64;
        if i < n {
            outliers -= abs_hist[i];
        }
        // Q: level l covers bins [l*i/levels, (l+1)*i/levels).
        for l in 0..levels {
            let (s, e) = (l * i / levels, (l + 1) * i / levels);
            let mass: u64 = hist[s..e].iter().sum();
            let nonzero = hist[s..e].iter().filter(|&&h| h > 0).count();
            for j in s..e {
                q[j] = if hist[j] > 0 {
                    mass as f64 / nonzero as f64
                } else {
                    0.0
                };
            }
        }
        let kl = kl_divergence(&p[..i], &q[..i]);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f64 * w
}

/// KL(P || Q) of two unnormalised distributions; a bin where P has mass and Q none costs as
/// if Q held a tiny share there (the usual smoothing).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    const EPS: f64 = 1e-10;
    let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if ps == 0.0 {
        return 0.0;
    }
    let mut kl = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        if a > 0.0 {
            let pa = a / ps;
            let qb = if qs > 0.0 { (b / qs).max(EPS) } else { EPS };
            kl += pa * (pa / qb).ln();
        }
    }
    kl
}

/// Where the calibration rows are: `count` rows from `start` of every model input's array.
#[derive(Debug, Clone, Copy)]
pub struct RowRange {
    pub start: usize,
    pub count: usize,
}

/// A copy of `model` that also outputs `tensors` (float32 values of any shape). Graph inputs
/// are not added: [`run`] reads them from the rows it feeds (an output that is an input
/// would alias the fed buffer, which the `ort` crate frees after the run).
pub fn with_outputs(model: &Model, tensors: &[String]) -> Model {
    let mut m = model.clone();
    let g = m.graph_mut();
    for t in tensors {
        if g.output
            .iter()
            .chain(&g.input)
            .any(|o| o.name.as_deref() == Some(t.as_str()))
        {
            continue;
        }
        g.output.push(pb::ValueInfoProto {
            name: Some(t.clone()),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(onnx::DataType::Float.to_i32()),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    m
}

/// What [`run`] found: each tensor's statistics, and the batch it ran.
pub struct Collected {
    pub stats: BTreeMap<String, TensorStats>,
    /// Rows per run after the first (a [`CalibrationBatch::UpTo`] runs the first row alone to
    /// measure what a row's calibrated activations take).
    pub batch: usize,
    /// Bytes of calibrated activations (and fed inputs) one row brought, measured on the first.
    pub row_bytes: u64,
}

/// Runs `opened` (a model from [`with_outputs`]) over `rows` of `ds`, `batch` rows at a time,
/// and folds each of `tensors` into its statistics (with histograms when `histograms`).
/// `progress` gets (done, total) rows.
#[allow(clippy::too_many_arguments)]
pub fn run(
    opened: &mut Opened,
    ds: &super::Dataset,
    rows: RowRange,
    tensors: &[String],
    histograms: bool,
    batch: CalibrationBatch,
    cfg: &EvalConfig,
    progress: &dyn Fn(u64, u64),
) -> Result<Collected> {
    // The inputs are matched to arrays as for evaluation; labels play no part.
    let check = EvalConfig {
        labels: None,
        output: None,
        limit: None,
        ..cfg.clone()
    };
    let prep = super::prepare(opened, ds, &check)?;
    let model = opened.path.clone();
    if rows
        .start
        .checked_add(rows.count)
        .is_none_or(|end| end > prep.samples)
    {
        return Err(Error::Mismatch {
            dataset: ds.display_name().to_string(),
            model: model.clone(),
            what: format!(
                "calibration rows {}..{} asked for, the arrays have {} rows",
                rows.start,
                rows.start.saturating_add(rows.count),
                prep.samples
            ),
        });
    }
    // Inputs are fed as for evaluation (a state fed back runs rows one at a time, in order).
    let mut archives = prep.plan.archives();
    let mut feeder = Feeder::new(&prep.plan, ds, &mut archives, rows.start)?;
    let mut stats = empty_stats(tensors, histograms);
    let stateful = prep.plan.is_stateful();
    let mut size = match batch {
        _ if stateful => 1,
        CalibrationBatch::Fixed(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
        CalibrationBatch::UpTo { .. } => 1,
    };
    let (mut done, mut row_bytes) = (0, 0);
    while done < rows.count {
        let n = size.min(rows.count - done);
        let bytes = calibrate_batch(opened, &mut feeder, n, &mut stats)?;
        if done == 0 {
            row_bytes = bytes / n as u64;
            if let CalibrationBatch::UpTo {
                rows: most,
                bytes: budget,
            } = batch
                && !stateful
            {
                size = rows_within(row_bytes, most, budget);
            }
        }
        done += n;
        progress(done as u64, rows.count as u64);
    }
    feeder.finish()?;
    let is_input = |name: &str| prep.plan.inputs.iter().any(|i| i.name == name);
    match never_finite(&stats, rows, is_input) {
        Some(what) => Err(Error::Mismatch {
            dataset: ds.display_name().to_string(),
            model,
            what,
        }),
        None => Ok(Collected {
            stats,
            batch: size,
            row_bytes,
        }),
    }
}

/// The most rows, up to `most`, whose calibrated activations (`row_bytes` each) fit in
/// `budget`; at least one.
pub fn rows_within(row_bytes: u64, most: u32, budget: u64) -> usize {
    let fit = budget.checked_div(row_bytes).unwrap_or(u64::MAX);
    usize::try_from(fit.min(u64::from(most)).max(1)).unwrap_or(1)
}

/// Empty statistics for each tensor (min and max only without `histograms`).
fn empty_stats(tensors: &[String], histograms: bool) -> BTreeMap<String, TensorStats> {
    tensors
        .iter()
        .map(|t| {
            let s = if histograms {
                TensorStats::default()
            } else {
                TensorStats::min_max_only()
            };
            (t.clone(), s)
        })
        .collect()
}

fn run_error(model: &Path, message: String) -> Error {
    Error::Run {
        path: model.to_path_buf(),
        message,
    }
}

/// Feeds the next `n` rows, runs the model once, and folds the fed inputs and the outputs
/// into `stats`; returns the bytes of what it folded (the activations the run held at once).
fn calibrate_batch(
    opened: &mut Opened,
    feeder: &mut Feeder<'_, '_>,
    n: usize,
    stats: &mut BTreeMap<String, TensorStats>,
) -> Result<u64> {
    let mut bytes = 0u64;
    let model = opened.path.clone();
    let run_err = |message: String| run_error(&model, message);
    let arrays = feeder.next(n)?;
    let fed: Vec<(String, Vec<usize>)> = arrays
        .iter()
        .map(|(name, a)| (name.clone(), a.shape.clone()))
        .collect();
    let mut feed: Vec<(Cow<str>, ort::session::SessionInputValue)> =
        Vec::with_capacity(arrays.len());
    for (name, arr) in arrays {
        if let Some(s) = stats.get_mut(&name) {
            match &arr.data {
                ArrayData::F32(v) => {
                    s.update(v);
                    bytes += std::mem::size_of_val(v.as_slice()) as u64;
                }
                other => {
                    return Err(run_err(format!(
                        "input `{name}` is {}, so it cannot be calibrated",
                        other.dtype()
                    )));
                }
            }
        }
        let t = tensor(arr).map_err(|e| run_err(e.to_string()))?;
        feed.push((Cow::Owned(name), t.into()));
    }
    let outputs = opened.sess.run(feed).map_err(|e| run_err(e.to_string()))?;
    feeder
        .feed_back(&fed, |name| outputs.get(name))
        .map_err(run_err)?;
    for (name, s) in stats.iter_mut() {
        if fed.iter().any(|(n, _)| n == name) {
            continue;
        }
        let v = outputs
            .get(name.as_str())
            .ok_or_else(|| run_err(format!("calibration output `{name}` missing")))?;
        let (_, data) = v.try_extract_tensor::<f32>().map_err(|_| {
            run_err(format!(
                "tensor `{name}` is not float32, so it cannot be calibrated"
            ))
        })?;
        s.update(data);
        bytes += std::mem::size_of_val(data) as u64;
    }
    Ok(bytes)
}

/// A tensor with no finite value has no range: calibrating it would invent one. What to say
/// about the first such tensor (an input is named before what it feeds); None when every
/// tensor had a finite value.
fn never_finite(
    stats: &BTreeMap<String, TensorStats>,
    rows: RowRange,
    is_input: impl Fn(&str) -> bool,
) -> Option<String> {
    let (name, s) = stats
        .iter()
        .filter(|(_, s)| s.count == 0 && s.non_finite > 0)
        .min_by_key(|(name, _)| !is_input(name.as_str()))?;
    let input = is_input(name);
    Some(format!(
        "{} `{name}` is NaN or infinite in all {} values of calibration rows {}..{}: {}",
        if input { "input" } else { "tensor" },
        s.non_finite,
        rows.start,
        rows.start + rows.count,
        if input {
            "give calibration data with finite values"
        } else {
            "the model computes no finite value from this data"
        }
    ))
}

/// Rows of the arrays feeding `opened`'s inputs.
pub fn rows(opened: &Opened, ds: &super::Dataset, cfg: &EvalConfig) -> Result<usize> {
    let check = EvalConfig {
        labels: None,
        output: None,
        limit: None,
        ..cfg.clone()
    };
    Ok(super::prepare(opened, ds, &check)?.samples)
}

/// Opens a calibration session on a model file (from [`with_outputs`], saved).
pub fn open(path: &Path, cfg: &EvalConfig) -> Result<Opened> {
    // Every calibrated activation is an output, and the first run's batch differs from the
    // rest: a lean session gives each run's memory back instead of keeping every peak.
    super::open_with(path, cfg, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calibration_batch_is_what_fits_the_budget_between_one_and_the_most() {
        let mib = 1u64 << 20;
        assert_eq!(rows_within(125 * mib, 8, 256 * mib), 2, "PP-OCRv4 rec");
        assert_eq!(rows_within(20 * mib, 8, 256 * mib), 8, "capped at the most");
        assert_eq!(rows_within(300 * mib, 8, 256 * mib), 1, "at least one row");
        assert_eq!(rows_within(0, 8, 256 * mib), 8, "a row of nothing");
        assert_eq!(rows_within(32 * mib, 8, 256 * mib), 8, "exactly the budget");
        assert_eq!(rows_within(32 * mib + 1, 8, 256 * mib), 7);
    }

    #[test]
    fn zeros_then_values_keep_zero_in_the_zero_bin() {
        let mut s = TensorStats::default();
        s.update(&[0.0; 10]);
        s.update(&[1.0, -1.0]);
        s.update(&[5.0]);
        let (h, r) = s.histogram();
        assert_eq!(r, 8.0);
        assert_eq!(h.iter().sum::<u64>(), 13);
        assert_eq!(h[BINS / 2], 10, "zeros stay in the bin starting at 0");
        assert_eq!((s.min, s.max, s.count), (-1.0, 5.0, 13));
    }

    #[test]
    fn min_max_only_statistics_keep_no_histogram() {
        let mut s = TensorStats::min_max_only();
        s.update(&[1.0, -2.0, 3.0]);
        assert_eq!((s.min, s.max, s.count), (-2.0, 3.0, 3));
        assert!(s.histogram().0.is_empty());
        assert_eq!(
            s.range_for(CalibrationMethod::Entropy, 99.0, false),
            (-2.0, 3.0)
        );
    }

    #[test]
    fn non_finite_values_are_counted_and_left_out() {
        let mut s = TensorStats::default();
        s.update(&[f32::NAN, 2.0, f32::INFINITY, -3.0]);
        assert_eq!((s.min, s.max, s.count, s.non_finite), (-3.0, 2.0, 2, 2));
    }

    #[test]
    fn estimated_activation_error_matches_the_rounding_and_clipping_it_stands_for() {
        // Uniform on [-1, 1] over 256 levels: noise step²/12 per value, signal 1/3 per value.
        let v: Vec<f32> = (0..=20_000).map(|i| i as f32 / 10_000.0 - 1.0).collect();
        let mut s = TensorStats::min_max_only();
        s.update(&v);
        let step = 2.0f64 / 255.0;
        let expected = 10.0 * ((1.0 / 3.0) / (step * step / 12.0)).log10();
        let got = s.estimated_sqnr_db(-1.0, 1.0).unwrap();
        assert!((got - expected).abs() < 0.05, "{got} vs {expected}");
        // Clipping to half the range costs far more than rounding saves.
        let mut h = TensorStats::default();
        h.update(&v);
        let clipped = h.estimated_sqnr_db(-0.5, 0.5).unwrap();
        assert!(clipped < got - 20.0, "{clipped} vs {got}");
        // All zeros: no signal, no estimate.
        let mut z = TensorStats::default();
        z.update(&[0.0; 8]);
        assert_eq!(z.estimated_sqnr_db(0.0, 0.0), None);
    }
}
