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

/// The codes a symmetric int8 weight may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// [-qmax, qmax], scale = max|w| / qmax (127: 8 bits; 63: 7 bits).
    Max(i8),
    /// [-127, 127], with each scale large enough that no two weights an int16 multiply-add
    /// can pair have same-sign codes summing to more than 128. ONNX Runtime's x86 kernels
    /// without VNNI multiply uint8 activations by int8 weights with `vpmaddubsw`, which adds
    /// two products in int16 with saturation: 255·128 = 32,640 fits, so such weights are
    /// exact on every CPU, as 7-bit ones are, while keeping up to 8 bits of resolution.
    PairBounded(Pairs),
}

/// Which weights an integer kernel may pair in one int16 multiply-add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairs {
    /// Neighbours along the reduction axis (`len` long, consecutive elements `stride`
    /// apart): the K of a MatMul or Gemm weight, which ONNX Runtime's integer GEMM packs in
    /// order (both alignments are bounded, not only the (2i, 2i+1) pairs it uses today).
    Adjacent { stride: usize, len: usize },
    /// Any two within one of these channels (a Conv's output channel: its kernels lay K out
    /// their own way), or within the tensor (`ChannelLayout::PER_TENSOR`).
    AnyIn(ChannelLayout),
}

impl Codes {
    /// The largest code: every form's codes lie in [-max, max].
    pub fn max(self) -> i8 {
        match self {
            Codes::Max(q) => q,
            Codes::PairBounded(_) => 127,
        }
    }
}

/// The largest same-sign pair sum `|a| + |b|` that `pairs` allows, per channel of `layout`
/// (at least the channel's largest |w|, so a lone weight is bounded too).
fn pair_bounds(
    n: usize,
    w: &impl Fn(usize) -> f32,
    layout: ChannelLayout,
    pairs: Pairs,
    amax: &[f32],
) -> Vec<f32> {
    let mut bound = amax.to_vec();
    let same_sign = |a: f32, b: f32| (a > 0.0 && b > 0.0) || (a < 0.0 && b < 0.0);
    match pairs {
        Pairs::Adjacent { stride, len } => {
            for i in 0..n {
                let k = (i / stride.max(1)) % len.max(1);
                if k + 1 < len && i + stride < n {
                    let (a, b) = (w(i), w(i + stride));
                    if same_sign(a, b) {
                        let c = layout.channel(i);
                        bound[c] = bound[c].max(a.abs() + b.abs());
                    }
                }
            }
        }
        Pairs::AnyIn(groups) => {
            // The two largest positive and the two largest negative magnitudes per group.
            let mut top = vec![[0f32; 4]; groups.channels];
            for i in 0..n {
                let v = w(i);
                let t = &mut top[groups.channel(i)];
                let (hi, lo) = if v > 0.0 { (0, 1) } else { (2, 3) };
                let m = v.abs();
                if m > t[hi] {
                    t[lo] = t[hi];
                    t[hi] = m;
                } else if m > t[lo] {
                    t[lo] = m;
                }
            }
            for i in 0..n {
                let t = &top[groups.channel(i)];
                let c = layout.channel(i);
                bound[c] = bound[c].max(t[0] + t[1]).max(t[2] + t[3]);
            }
        }
    }
    bound
}

/// Symmetric quantization to [-qmax, qmax]: scale = max|w| / qmax per channel, q = round(w/scale).
/// Each element's error |w - q·scale| is at most scale/2. All-zero channels get scale 1 (their
/// values are exactly 0 either way). The caller rejects non-finite input first.
pub fn quantize_symmetric(w: &[f32], layout: ChannelLayout, codes: Codes) -> Quantized {
    debug_assert!(first_non_finite(w).is_none());
    quantize_symmetric_with(w.len(), |i| w[i], layout, codes)
}

/// `quantize_symmetric` over an element accessor, so weights can be read straight from a
/// tensor's raw little-endian bytes without a float copy of the tensor. Also records the
/// largest round-trip error, computed on the way.
///
/// `PairBounded` codes: scale = (largest pair sum) / 127 per channel, so any two paired
/// weights have |w1|/scale + |w2|/scale ≤ 127 and, each rounded by at most 1/2, codes
/// summing to at most 128 in magnitude.
pub fn quantize_symmetric_with(
    n: usize,
    w: impl Fn(usize) -> f32,
    layout: ChannelLayout,
    codes: Codes,
) -> Quantized {
    let mut amax = vec![0f32; layout.channels];
    for i in 0..n {
        let c = layout.channel(i);
        amax[c] = amax[c].max(w(i).abs());
    }
    let q = f32::from(codes.max());
    let bound = match codes {
        Codes::Max(_) => amax,
        Codes::PairBounded(pairs) => pair_bounds(n, &w, layout, pairs, &amax),
    };
    let scales: Vec<f32> = bound
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
        let q = quantize_symmetric(&w, ChannelLayout::PER_TENSOR, Codes::Max(127));
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
        let pc = quantize_symmetric(&w, layout, Codes::Max(127));
        let pt = quantize_symmetric(&w, ChannelLayout::PER_TENSOR, Codes::Max(127));
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
        let q = quantize_symmetric(&[0.0; 100], ChannelLayout::PER_TENSOR, Codes::Max(127));
        assert!(q.values.iter().all(|v| *v == 0));
        assert!(q.scales[0].is_finite() && q.scales[0] > 0.0);
    }

    #[test]
    fn all_equal_tensor_round_trips_exactly() {
        let q = quantize_symmetric(&[-0.75; 33], ChannelLayout::PER_TENSOR, Codes::Max(127));
        assert!(q.values.iter().all(|v| *v == -127));
        assert!(
            dequantize(&q, ChannelLayout::PER_TENSOR)
                .iter()
                .all(|v| (v + 0.75).abs() < 1e-7)
        );
    }

    #[test]
    fn reduce_range_stays_within_seven_bits() {
        let q = quantize_symmetric(&lcg(1000, 3), ChannelLayout::PER_TENSOR, Codes::Max(63));
        assert!(q.values.iter().all(|v| (-63..=63).contains(v)));
    }

    /// The largest same-sign pair sum of codes that `pairs` allows, through `pair_bounds`
    /// (checked against the brute force below).
    fn largest_pair_code(values: &[i8], pairs: Pairs) -> i32 {
        let w = |i: usize| f32::from(values[i]);
        let amax = [values
            .iter()
            .map(|v| f32::from(*v).abs())
            .fold(0.0, f32::max)];
        pair_bounds(values.len(), &w, ChannelLayout::PER_TENSOR, pairs, &amax)[0] as i32
    }

    /// The largest same-sign pair of codes along K (both alignments) in every column of a
    /// [K, N] tensor, brute force.
    fn worst_adjacent_pair(q: &[i8], k: usize, n: usize) -> i32 {
        let mut worst = 0;
        for col in 0..n {
            for r in 0..k {
                let a = i32::from(q[r * n + col]);
                worst = worst.max(a.abs());
                if r + 1 < k {
                    let b = i32::from(q[(r + 1) * n + col]);
                    if a.signum() == b.signum() {
                        worst = worst.max(a.abs() + b.abs());
                    }
                }
            }
        }
        worst
    }

    #[test]
    fn pair_bounded_codes_never_exceed_128_per_pair() {
        // Heavy-tailed weights (cubed uniforms) and a planted pair of equal maxima, per
        // tensor and per column, several shapes including odd K.
        for (k, n, seed) in [(64, 32, 1), (33, 7, 2), (384, 48, 3), (2, 1, 4), (1, 5, 5)] {
            let mut w: Vec<f32> = lcg(k * n, seed).iter().map(|v| v * v * v).collect();
            if k >= 2 {
                w[0] = 1.0;
                w[n] = 1.0;
            }
            let pairs = Pairs::Adjacent { stride: n, len: k };
            for layout in [ChannelLayout::PER_TENSOR, ChannelLayout::along(&[k, n], 1)] {
                let q = quantize_symmetric(&w, layout, Codes::PairBounded(pairs));
                assert!(worst_adjacent_pair(&q.values, k, n) <= 128, "k={k} n={n}");
                assert_eq!(
                    largest_pair_code(&q.values, pairs),
                    worst_adjacent_pair(&q.values, k, n)
                );
                // Never coarser than 7-bit codes, and each element within half a step.
                let seven = quantize_symmetric(&w, layout, Codes::Max(63));
                for (a, b) in q.scales.iter().zip(&seven.scales) {
                    assert!(a <= b, "scale {a} > 7-bit {b}");
                }
                let back = dequantize(&q, layout);
                for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                    assert!((a - b).abs() <= q.scales[layout.channel(i)] / 2.0 + 1e-6);
                }
            }
        }
    }

    #[test]
    fn pair_bounded_codes_use_8_bits_where_no_pair_is_large() {
        // One outlier among small weights: its neighbours are small, so the outlier keeps
        // code 127 (7-bit codes would stop at 63).
        let (k, n) = (16, 4);
        let mut w: Vec<f32> = lcg(k * n, 7).iter().map(|v| v * 0.01).collect();
        w[5 * n + 2] = 1.0;
        let pairs = Pairs::Adjacent { stride: n, len: k };
        let q = quantize_symmetric(&w, ChannelLayout::PER_TENSOR, Codes::PairBounded(pairs));
        let top = q.values.iter().map(|v| i32::from(*v).abs()).max().unwrap();
        assert!(top >= 126, "largest code {top}");
        // Two equal maxima side by side: each gets 64, summing to 128.
        let q = quantize_symmetric(
            &[0.5, 0.5, -0.1],
            ChannelLayout::PER_TENSOR,
            Codes::PairBounded(Pairs::Adjacent { stride: 1, len: 3 }),
        );
        let (a, b) = (i32::from(q.values[0]), i32::from(q.values[1]));
        assert!(a + b <= 128 && a >= 63 && b >= 63, "{a} + {b}");
    }

    #[test]
    fn pair_bounded_conv_codes_bound_any_two_in_an_output_channel() {
        // [M=6, C·kh·kw=27]: any order of K within an output channel stays bounded.
        let (m, k) = (6, 27);
        let w: Vec<f32> = lcg(m * k, 11).iter().map(|v| v * v * v).collect();
        let groups = ChannelLayout::along(&[m, k], 0);
        for layout in [ChannelLayout::PER_TENSOR, groups] {
            let q = quantize_symmetric(&w, layout, Codes::PairBounded(Pairs::AnyIn(groups)));
            for c in 0..m {
                let row = &q.values[c * k..(c + 1) * k];
                let mut pos: Vec<i32> = row.iter().map(|v| i32::from(*v).max(0)).collect();
                let mut neg: Vec<i32> = row.iter().map(|v| (-i32::from(*v)).max(0)).collect();
                pos.sort_unstable_by(|a, b| b.cmp(a));
                neg.sort_unstable_by(|a, b| b.cmp(a));
                assert!(
                    pos[0] + pos[1] <= 128 && neg[0] + neg[1] <= 128,
                    "channel {c}"
                );
            }
        }
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
