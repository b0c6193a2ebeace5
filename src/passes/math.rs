//! The numeric cores of the passes (pure, no ONNX): symmetric int8 quantization and
//! magnitude selection. Tested for their error bounds and exact counts.

/// Int8 values with one scale per channel (one channel for per-tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    /// Largest |w - q·scale| over the tensor.
    pub max_abs_error: f32,
    /// Σ w² and Σ (w - q·scale)², for [`sqnr_db`].
    pub energy: (f64, f64),
}

/// Signal-to-quantization-noise ratio in dB from (Σ w², Σ (w − ŵ)²): 10·log10 of their
/// ratio; None when there is no noise (exact) or no signal.
pub fn sqnr_db((signal, noise): (f64, f64)) -> Option<f64> {
    (noise > 0.0 && signal > 0.0).then(|| 10.0 * (signal / noise).log10())
}

/// How elements map to channels: index i belongs to channel `(i / inner) % channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    pub channels: usize,
    pub inner: usize,
}

impl ChannelLayout {
    pub const PER_TENSOR: Self = Self {
        channels: 1,
        inner: 1,
    };

    /// Channels along `axis` of a tensor with `dims`.
    pub fn along(dims: &[usize], axis: usize) -> Self {
        Self {
            channels: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        }
    }

    #[inline]
    pub fn channel(&self, i: usize) -> usize {
        if self.channels == 1 {
            0
        } else {
            (i / self.inner) % self.channels
        }
    }
}

/// Index of the first non-finite element, if any.
pub fn first_non_finite(w: &[f32]) -> Option<usize> {
    w.iter().position(|v| !v.is_finite())
}

/// Symmetric quantization to [-qmax, qmax]: scale = max|w| / qmax per channel, q = round(w/scale).
/// Each element's error |w - q·scale| is at most scale/2. All-zero channels get scale 1 (their
/// values are exactly 0 either way). The caller rejects non-finite input first.
pub fn quantize_symmetric(w: &[f32], layout: ChannelLayout, qmax: i8) -> Quantized {
    debug_assert!(first_non_finite(w).is_none());
    quantize_symmetric_with(w.len(), |i| w[i], layout, qmax)
}

/// `quantize_symmetric` over an element accessor, so weights can be read straight from a
/// tensor's raw little-endian bytes without a float copy of the tensor. Also records the
/// largest round-trip error, computed on the way.
pub fn quantize_symmetric_with(
    n: usize,
    w: impl Fn(usize) -> f32,
    layout: ChannelLayout,
    qmax: i8,
) -> Quantized {
    let mut amax = vec![0f32; layout.channels];
    for i in 0..n {
        let c = layout.channel(i);
        amax[c] = amax[c].max(w(i).abs());
    }
    let q = f32::from(qmax);
    let scales: Vec<f32> = amax
        .iter()
        .map(|&m| if m > 0.0 { m / q } else { 1.0 })
        .collect();
    let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let mut max_abs_error = 0f32;
    let (mut signal, mut noise) = (0f64, 0f64);
    let values = (0..n)
        .map(|i| {
            let (v, c) = (w(i), layout.channel(i));
            let qv = (v * inv[c]).round().clamp(-q, q);
            let e = v - qv * scales[c];
            max_abs_error = max_abs_error.max(e.abs());
            signal += f64::from(v) * f64::from(v);
            noise += f64::from(e) * f64::from(e);
            qv as i8
        })
        .collect();
    Quantized {
        values,
        scales,
        max_abs_error,
        energy: (signal, noise),
    }
}

/// The float values a quantized tensor stands for.
pub fn dequantize(q: &Quantized, layout: ChannelLayout) -> Vec<f32> {
    q.values
        .iter()
        .enumerate()
        .map(|(i, &v)| f32::from(v) * q.scales[layout.channel(i)])
        .collect()
}

/// Bit pattern of |v|: for finite floats it orders like the magnitude, so a radix select on
/// it finds magnitude thresholds exactly with two passes and no copy of the data.
#[inline]
fn mag_bits(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// The magnitude key `t` such that exactly `below` of the elements have a smaller key and the
/// k-th smallest (0-based, k < total) has key `t`. Works across several slices (global scope).
pub fn kth_magnitude(slices: &[&[f32]], k: u64) -> (u32, u64) {
    let mut hist = vec![0u64; 1 << 16];
    for s in slices {
        for v in s.iter() {
            hist[(mag_bits(*v) >> 16) as usize] += 1;
        }
    }
    let (hi, mut before) = pick(&hist, k);
    hist.iter_mut().for_each(|h| *h = 0);
    for s in slices {
        for v in s.iter() {
            let b = mag_bits(*v);
            if b >> 16 == hi as u32 {
                hist[(b & 0xffff) as usize] += 1;
            }
        }
    }
    let (lo, before_lo) = pick(&hist, k - before);
    before += before_lo;
    (((hi as u32) << 16) | lo as u32, before)
}

/// Bucket holding the k-th element, and how many come before that bucket.
fn pick(hist: &[u64], k: u64) -> (usize, u64) {
    let mut acc = 0;
    for (b, &n) in hist.iter().enumerate() {
        if acc + n > k {
            return (b, acc);
        }
        acc += n;
    }
    unreachable!("k is below the element count")
}

/// Zeroes the `k` smallest-magnitude elements of the slices (ties broken by position), so
/// exactly `k` elements are zero-pruned. Existing zeros count among the smallest.
pub fn prune_smallest(slices: &mut [&mut [f32]], k: u64) {
    let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
    if k == 0 || total == 0 {
        return;
    }
    if k >= total {
        slices.iter_mut().for_each(|s| s.fill(0.0));
        return;
    }
    let views: Vec<&[f32]> = slices.iter().map(|s| &**s).collect();
    let (t, below) = kth_magnitude(&views, k - 1);
    // Everything strictly below the k-th key goes; of those equal to it, the first ones in
    // order until k are reached.
    let mut ties = k - below;
    for s in slices.iter_mut() {
        for v in s.iter_mut() {
            let b = mag_bits(*v);
            if b < t {
                *v = 0.0;
            } else if b == t && ties > 0 {
                *v = 0.0;
                ties -= 1;
            }
        }
    }
}

/// N:M pruning along an axis: in every group of `m` consecutive elements along the axis, keep
/// the `n` largest magnitudes (earlier index wins ties) and zero the rest. A trailing partial
/// group keeps at most `n`.
pub fn prune_n_m(w: &mut [f32], dims: &[usize], axis: usize, n: usize, m: usize) {
    let len = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let outer: usize = dims[..axis].iter().product();
    let mut order: Vec<usize> = Vec::with_capacity(m);
    for o in 0..outer {
        for i in 0..inner {
            let at = |c: usize| o * len * inner + c * inner + i;
            let mut start = 0;
            while start < len {
                let end = (start + m).min(len);
                order.clear();
                order.extend(start..end);
                // Largest first; stable sort keeps earlier indices first among equals.
                order.sort_by(|&a, &b| w[at(b)].abs().total_cmp(&w[at(a)].abs()));
                for &c in order.iter().skip(n) {
                    w[at(c)] = 0.0;
                }
                start = end;
            }
        }
    }
}

/// The row-major `rows x cols` matrix `v` transposed (row-major `cols x rows`).
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Deterministic values in [-1, 1) for unit tests (a 64-bit linear congruential generator).
#[cfg(test)]
pub(crate) fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tensor_round_trip_error_is_at_most_half_a_step() {
        let w: Vec<f32> = lcg(4096, 1).iter().map(|v| v * 3.0).collect();
        let q = quantize_symmetric(&w, ChannelLayout::PER_TENSOR, 127);
        assert_eq!(q.scales.len(), 1);
        let back = dequantize(&q, ChannelLayout::PER_TENSOR);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= q.scales[0] / 2.0 + 1e-6, "{a} vs {b}");
        }
        assert_eq!(q.values.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        let worst = w
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(q.max_abs_error, worst);
    }

    #[test]
    fn per_channel_beats_per_tensor_when_channels_differ_in_range() {
        // 64 rows x 8 columns, column c scaled by 10^(c-4): per-column scales adapt.
        let (rows, cols) = (64, 8);
        let w: Vec<f32> = lcg(rows * cols, 2)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 10f32.powi((i % cols) as i32 - 4))
            .collect();
        let layout = ChannelLayout::along(&[rows, cols], 1);
        let pc = quantize_symmetric(&w, layout, 127);
        let pt = quantize_symmetric(&w, ChannelLayout::PER_TENSOR, 127);
        assert_eq!(pc.scales.len(), cols);
        // Error relative to each column's range, averaged over columns: per-tensor scales
        // crush the small columns to zero, per-column scales keep every column at ~1/254.
        let rel_err = |q: &Quantized, l| {
            let back = dequantize(q, l);
            (0..cols)
                .map(|c| {
                    let range = (0..rows)
                        .map(|r| w[r * cols + c].abs())
                        .fold(0f32, f32::max) as f64;
                    (0..rows)
                        .map(|r| (back[r * cols + c] - w[r * cols + c]).abs() as f64)
                        .sum::<f64>()
                        / (rows as f64 * range)
                })
                .sum::<f64>()
                / cols as f64
        };
        assert!(rel_err(&pc, layout) * 10.0 < rel_err(&pt, ChannelLayout::PER_TENSOR));
        for (i, (a, b)) in w.iter().zip(dequantize(&pc, layout)).enumerate() {
            assert!((a - b).abs() <= pc.scales[i % cols] / 2.0 + 1e-9);
        }
    }

    #[test]
    fn zero_tensor_quantizes_to_zeros_with_a_finite_scale() {
        let q = quantize_symmetric(&[0.0; 100], ChannelLayout::PER_TENSOR, 127);
        assert!(q.values.iter().all(|v| *v == 0));
        assert!(q.scales[0].is_finite() && q.scales[0] > 0.0);
    }

    #[test]
    fn all_equal_tensor_round_trips_exactly() {
        let q = quantize_symmetric(&[-0.75; 33], ChannelLayout::PER_TENSOR, 127);
        assert!(q.values.iter().all(|v| *v == -127));
        assert!(
            dequantize(&q, ChannelLayout::PER_TENSOR)
                .iter()
                .all(|v| (v + 0.75).abs() < 1e-7)
        );
    }

    #[test]
    fn reduce_range_stays_within_seven_bits() {
        let q = quantize_symmetric(&lcg(1000, 3), ChannelLayout::PER_TENSOR, 63);
        assert!(q.values.iter().all(|v| (-63..=63).contains(v)));
    }

    #[test]
    fn non_finite_values_are_found() {
        assert_eq!(first_non_finite(&[1.0, f32::NAN]), Some(1));
        assert_eq!(first_non_finite(&[f32::NEG_INFINITY]), Some(0));
        assert_eq!(first_non_finite(&[1.0, 2.0]), None);
    }

    #[test]
    fn pruning_reaches_exact_sparsity() {
        for (n, k) in [(1000, 500), (1001, 1), (7, 6), (4096, 4095)] {
            let mut w = lcg(n, n as u64);
            prune_smallest(&mut [&mut w], k);
            assert_eq!(
                w.iter().filter(|v| **v == 0.0).count() as u64,
                k,
                "n={n} k={k}"
            );
        }
    }

    #[test]
    fn pruning_removes_the_smallest_magnitudes() {
        let mut w = vec![0.5, -0.1, 0.3, -0.9, 0.05, 0.2];
        prune_smallest(&mut [&mut w], 3);
        assert_eq!(w, vec![0.5, 0.0, 0.3, -0.9, 0.0, 0.0]);
    }

    #[test]
    fn pruning_with_ties_is_still_exact() {
        let mut w = vec![1.0; 10];
        prune_smallest(&mut [&mut w], 4);
        assert_eq!(w.iter().filter(|v| **v == 0.0).count(), 4);
    }

    #[test]
    fn already_sparse_input_counts_its_zeros() {
        let mut w = vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        prune_smallest(&mut [&mut w], 4);
        assert_eq!(w, vec![0.0, 0.0, 0.0, 0.0, 2.0, 3.0]);
    }

    #[test]
    fn global_pruning_counts_across_tensors() {
        let mut a = vec![0.1, 0.2, 0.3];
        let mut b = vec![5.0, 0.15, 6.0, 7.0];
        prune_smallest(&mut [&mut a, &mut b], 3);
        assert_eq!(a, vec![0.0, 0.0, 0.3]);
        assert_eq!(b, vec![5.0, 0.0, 6.0, 7.0]);
    }

    #[test]
    fn n_m_pattern_holds_in_every_group() {
        // [K=10, N=6], groups of 4 along K (axis 0), trailing group of 2.
        let (k, n) = (10, 6);
        let mut w = lcg(k * n, 9);
        prune_n_m(&mut w, &[k, n], 0, 2, 4);
        for col in 0..n {
            for start in (0..k).step_by(4) {
                let nz = (start..(start + 4).min(k))
                    .filter(|r| w[r * n + col] != 0.0)
                    .count();
                assert!(nz <= 2, "col {col} group {start}: {nz} nonzeros");
            }
        }
        assert_eq!(w.iter().filter(|v| **v == 0.0).count(), 6 * (2 + 2));
    }

    #[test]
    fn n_m_keeps_the_largest_in_each_group() {
        let mut w = vec![0.1, -0.9, 0.5, 0.2];
        prune_n_m(&mut w, &[4], 0, 2, 4);
        assert_eq!(w, vec![0.0, -0.9, 0.5, 0.0]);
    }
}
