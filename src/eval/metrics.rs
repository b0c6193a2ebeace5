//! Metrics over model outputs (pure): accuracy, agreement, cosine similarity, errors, percentiles.

use super::values::Values;

/// Index of the largest value (first on ties); None for an empty row or one with NaN.
pub fn argmax(row: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Top-1 classes of `[n, classes]` outputs.
pub fn top1(values: &[f32], classes: usize) -> Vec<Option<usize>> {
    if classes == 0 {
        return Vec::new();
    }
    values.chunks_exact(classes).map(argmax).collect()
}

/// Fraction of predictions equal to the labels (a NaN prediction counts as wrong).
pub fn accuracy(pred: &[Option<usize>], labels: &[i64]) -> f64 {
    let hits = pred
        .iter()
        .zip(labels)
        .filter(|(p, l)| p.is_some_and(|p| p as i64 == **l))
        .count();
    hits as f64 / pred.len().max(1) as f64
}

/// Fraction of samples where both models predict the same class.
pub fn agreement(a: &[Option<usize>], b: &[Option<usize>]) -> f64 {
    let same = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_some() && x == y)
        .count();
    same as f64 / a.len().max(1) as f64
}

/// Output closeness per sample: mean cosine similarity, mean and max absolute error.
pub fn closeness(reference: &[f32], candidate: &[f32], per_sample: usize) -> (f64, f64, f64) {
    let mut c = Closeness::default();
    if per_sample > 0 {
        for (r, x) in reference
            .chunks_exact(per_sample)
            .zip(candidate.chunks_exact(per_sample))
        {
            c.add(r, x);
        }
    }
    c.finish()
}

/// [`closeness`] of values that may lie in a scratch file, read in blocks.
pub fn closeness_of(
    reference: &Values,
    candidate: &Values,
    per_sample: usize,
) -> std::io::Result<(f64, f64, f64)> {
    let mut c = Closeness::default();
    if let Some(n) = reference.len().min(candidate.len()).checked_div(per_sample) {
        Values::zip_rows(reference, candidate, per_sample, n, |_, r, x| c.add(r, x))?;
    }
    Ok(c.finish())
}

/// Mean cosine, mean and max absolute error, sample by sample.
#[derive(Default)]
struct Closeness {
    cos_sum: f64,
    abs_sum: f64,
    abs_max: f64,
    samples: usize,
    values: usize,
}

impl Closeness {
    fn add(&mut self, r: &[f32], c: &[f32]) {
        let (cos, sum, max) = closeness_one(r, c);
        self.cos_sum += cos;
        self.abs_sum += sum;
        self.abs_max = self.abs_max.max(max);
        self.samples += 1;
        self.values += r.len();
    }

    /// Empty outputs: nothing differs.
    fn finish(self) -> (f64, f64, f64) {
        if self.values == 0 {
            return (1.0, 0.0, 0.0);
        }
        (
            self.cos_sum / self.samples as f64,
            self.abs_sum / self.values as f64,
            self.abs_max,
        )
    }
}

/// One sample's cosine similarity, summed and largest absolute error.
pub fn closeness_one(r: &[f32], c: &[f32]) -> (f64, f64, f64) {
    let (mut dot, mut nr, mut nc, mut sum, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in r.iter().zip(c) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        nr += x * x;
        nc += y * y;
        let d = (x - y).abs();
        sum += d;
        max = max.max(d);
    }
    let cos = if nr == 0.0 && nc == 0.0 {
        1.0
    } else if nr == 0.0 || nc == 0.0 {
        0.0
    } else {
        dot / (nr.sqrt() * nc.sqrt())
    };
    (cos, sum, max)
}

/// Nearest-rank percentile (p in (0, 100]) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_picks_first_of_equals_and_refuses_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[1.0, f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn accuracy_and_agreement_count_matches() {
        let a = top1(&[0.9, 0.1, 0.2, 0.8, 0.6, 0.4], 2);
        let b = top1(&[0.1, 0.9, 0.2, 0.8, 0.6, 0.4], 2);
        assert_eq!(accuracy(&a, &[0, 1, 1]), 2.0 / 3.0);
        assert_eq!(agreement(&a, &b), 2.0 / 3.0);
    }

    #[test]
    fn identical_outputs_are_perfectly_close() {
        let v = [0.5, -1.0, 2.0, 0.0];
        let (cos, mae, max) = closeness(&v, &v, 2);
        assert!((cos - 1.0).abs() < 1e-12 && mae == 0.0 && max == 0.0);
        let (cos, mae, max) = closeness(&[1.0, 0.0], &[0.0, 1.0], 2);
        assert_eq!((cos, mae, max), (0.0, 1.0, 1.0));
    }

    #[test]
    fn empty_rows_do_not_panic() {
        assert!(top1(&[1.0, 2.0], 0).is_empty());
        assert_eq!(closeness(&[], &[], 0), (1.0, 0.0, 0.0));
        assert_eq!(closeness(&[1.0], &[1.0], 0), (1.0, 0.0, 0.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 95.0), 95.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
    }
}
