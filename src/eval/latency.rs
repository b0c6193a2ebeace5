//! Latency of a candidate against its original, measured so that machine noise cancels:
//! both sessions open at once, rounds interleaved (original, candidate, then candidate,
//! original: ABBA, so a slow drift hits both alike), medians of each, and a bootstrap interval
//! for the ratio of medians (paired: each resample draws whole rounds).

use super::{Opened, Prepared, Result, output_name, run_batch};
use crate::eval::EvalConfig;
use std::time::Instant;

/// Resamples for the interval; fixed seed, so the same timings give the same interval.
const BOOTSTRAP: usize = 2000;
const SEED: u64 = 0x6b6f_6d70_7265_7373; // "kompress"
/// Most element draws of one bootstrap (rounds × resamples), and the fewest resamples.
const BOOTSTRAP_WORK: usize = 20_000_000;
const MIN_RESAMPLES: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct LatencyComparison {
    /// Per-round times in ms (after warm-up), original and candidate.
    pub original_ms: Vec<f64>,
    pub candidate_ms: Vec<f64>,
    /// median(candidate) / median(original).
    pub ratio: f64,
    /// 95% bootstrap interval of the ratio.
    pub ratio_low: f64,
    pub ratio_high: f64,
}

/// Runs `cfg.warmup` warm-up rounds and `cfg.iterations` measured rounds of the first
/// `cfg.latency_batch` samples through both sessions, interleaved.
pub fn interleaved(
    original: (&mut Opened, &Prepared),
    candidate: (&mut Opened, &Prepared),
    cfg: &EvalConfig,
) -> Result<LatencyComparison> {
    let (o, po) = original;
    let (c, pc) = candidate;
    let lb = cfg.latency_batch.clamp(1, po.samples.max(1));
    let read = |p: &Prepared| super::feed::first_rows(&p.plan, p.ds, lb);
    let (in_o, in_c) = (read(po)?, read(pc)?);
    let (name_o, name_c) = (output_name(o, cfg)?, output_name(c, cfg)?);
    let mut time = |which: bool| -> Result<f64> {
        let t = Instant::now();
        if which {
            run_batch(&mut c.sess, in_c.clone(), &[name_c.as_str()], &c.path, None)?;
        } else {
            run_batch(&mut o.sess, in_o.clone(), &[name_o.as_str()], &o.path, None)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..cfg.warmup {
        time(false)?;
        time(true)?;
    }
    let rounds = cfg.iterations.max(1);
    let (mut a, mut b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        if i % 2 == 0 {
            a.push(time(false)?);
            b.push(time(true)?);
        } else {
            b.push(time(true)?);
            a.push(time(false)?);
        }
    }
    Ok(compare(a, b))
}

/// The ratio of medians and its paired bootstrap interval.
pub fn compare(original_ms: Vec<f64>, candidate_ms: Vec<f64>) -> LatencyComparison {
    let ratio_of = |a: &[f64], b: &[f64]| {
        let ma = median(a);
        if ma > 0.0 { median(b) / ma } else { 1.0 }
    };
    let ratio = ratio_of(&original_ms, &candidate_ms);
    let n = original_ms.len().min(candidate_ms.len());
    let mut rng = SEED;
    let mut next = || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    // Work grows with rounds × resamples: past BOOTSTRAP_WORK element draws, fewer resamples
    // (never under MIN_RESAMPLES; with that many rounds the interval is narrow anyway).
    let resamples = BOOTSTRAP.min((BOOTSTRAP_WORK / n.max(1)).max(MIN_RESAMPLES));
    let mut ratios = Vec::with_capacity(resamples);
    if n > 1 {
        let (mut ra, mut rb) = (vec![0.0; n], vec![0.0; n]);
        for _ in 0..resamples {
            for k in 0..n {
                let j = (next() % n as u64) as usize;
                ra[k] = original_ms[j];
                rb[k] = candidate_ms[j];
            }
            ratios.push(ratio_of(&ra, &rb));
        }
        ratios.sort_by(f64::total_cmp);
    }
    let (ratio_low, ratio_high) = if ratios.is_empty() {
        (ratio, ratio)
    } else {
        let at = |q: f64| {
            ratios[((q * (ratios.len() - 1) as f64).round() as usize).min(ratios.len() - 1)]
        };
        (at(0.025), at(0.975))
    };
    LatencyComparison {
        original_ms,
        candidate_ms,
        ratio,
        ratio_low,
        ratio_high,
    }
}

/// The median, by selection (linear time: the bootstrap takes thousands of them).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    let m = s.len() / 2;
    let (low, mid, _) = s.select_nth_unstable_by(m, f64::total_cmp);
    let mid = *mid;
    if v.len() % 2 == 1 {
        mid
    } else {
        let below = low.iter().copied().max_by(f64::total_cmp).unwrap_or(mid);
        (below + mid) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clearly_faster_candidate_has_an_interval_below_one_and_noise_widens_it() {
        // Candidate takes 0.5x, with the same noise pattern in both (shared machine drift).
        let drift: Vec<f64> = (0..101).map(|i| 10.0 + ((i * 37) % 11) as f64).collect();
        let cand: Vec<f64> = drift.iter().map(|d| d * 0.5).collect();
        let c = compare(drift.clone(), cand);
        assert!((c.ratio - 0.5).abs() < 1e-12, "{c:?}");
        assert!(c.ratio_high < 0.6 && c.ratio_low > 0.4, "{c:?}");
        // Equal distributions, independent noise: the interval straddles 1.
        let other: Vec<f64> = (0..101).map(|i| 10.0 + ((i * 53) % 11) as f64).collect();
        let c = compare(drift, other);
        assert!(c.ratio_low < 1.0 && c.ratio_high > 1.0, "{c:?}");
    }

    #[test]
    fn the_interval_is_reproducible_and_contains_the_ratio() {
        let a: Vec<f64> = (0..50).map(|i| 5.0 + (i % 7) as f64 * 0.3).collect();
        let b: Vec<f64> = (0..50).map(|i| 6.0 + (i % 5) as f64 * 0.4).collect();
        let (x, y) = (compare(a.clone(), b.clone()), compare(a, b));
        assert_eq!(x, y);
        assert!(x.ratio_low <= x.ratio && x.ratio <= x.ratio_high, "{x:?}");
    }

    #[test]
    fn medians_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
