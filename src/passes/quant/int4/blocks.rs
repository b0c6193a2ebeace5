//! The 4-bit numerics (pure): blocks, round-to-nearest as MLAS does it, the optional
//! refinement, packing two codes to a byte.

/// `rows` rows of `len` elements, cut into blocks of `block` along the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub rows: usize,
    pub len: usize,
    pub block: usize,
    /// Store every row as whole blocks (MatMulNBits: K zero-padded to `blocks() * block`);
    /// otherwise a row stores exactly `len` codes (GatherBlockQuantized; `len` even).
    pub pad: bool,
}

impl BlockLayout {
    pub fn blocks(&self) -> usize {
        self.len.div_ceil(self.block)
    }

    /// Packed bytes per row.
    pub fn row_bytes(&self) -> usize {
        if self.pad {
            self.blocks() * self.block / 2
        } else {
            self.len.div_ceil(2)
        }
    }

    /// Packed zero-point bytes per row.
    pub fn zp_row_bytes(&self) -> usize {
        self.blocks().div_ceil(2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    pub symmetric: bool,
    pub refine: bool,
}

/// A 4-bit blocked tensor: codes packed low nibble first, row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub data: Vec<u8>,
    /// [rows, blocks].
    pub scales: Vec<f32>,
    /// [rows, ceil(blocks / 2)] packed low nibble first; None when symmetric (implied 8).
    pub zero_points: Option<Vec<u8>>,
    /// Largest |w - dequant(q)| over the tensor.
    pub max_abs_error: f32,
    /// Elements that dequantize to exactly 0.
    pub zero_codes: u64,
    /// Σ w² and Σ (w - dequant(q))² (see `math::sqnr_db`).
    pub energy: (f64, f64),
}

/// One block's result: codes (unpacked, 0..=15), scale, zero point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ {
    pub scale: f32,
    pub zero_point: u8,
}

const SYM_ZP: u8 = 8;

/// Round-to-nearest of one block, as MLAS does it. Symmetric: the value of largest magnitude
/// (the negative one on a tie) maps exactly to code 0 (i.e. -8), `scale = that / -8`, so the
/// scale is negative when the extreme is positive. Asymmetric: min/max widened to include 0,
/// `scale = (max - min) / 15`, `zp = round(-min / scale)` in [0, 15]. An all-zero block gets
/// scale 0 (its codes are the zero point and dequantize to exactly 0).
pub fn rtn(x: &[f32], symmetric: bool) -> BlockQ {
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    if symmetric {
        let m = if hi.abs() > lo.abs() { hi } else { lo };
        BlockQ {
            scale: m / -8.0,
            zero_point: SYM_ZP,
        }
    } else {
        let scale = (hi - lo) / 15.0;
        let zp = if scale != 0.0 {
            (-lo / scale).round().clamp(0.0, 15.0) as u8
        } else {
            0
        };
        BlockQ {
            scale,
            zero_point: zp,
        }
    }
}

/// The nearest code to `v` for a block: `clamp(round(v / scale) + zp, 0, 15)`, rounding half
/// away from zero (C `roundf`, as MLAS), with `v * (1 / scale)` as MLAS computes it.
#[inline]
pub fn code(v: f32, inv_scale: f32, zp: u8) -> u8 {
    // roundf without a libm call (x86-64 without SSE4.1 has no rounding instruction): in f64
    // the half-step add is exact for any f32, so truncating gives roundf's result. Clamped
    // first, so a huge ratio cannot overflow the integer.
    let x = f64::from(v * inv_scale).clamp(-64.0, 64.0);
    let r = (x + 0.5f64.copysign(x)) as i32 + i32::from(zp);
    r.clamp(0, 15) as u8
}

#[inline]
fn inv(scale: f32) -> f32 {
    if scale != 0.0 { 1.0 / scale } else { 0.0 }
}

#[inline]
pub fn dequant(c: u8, q: BlockQ) -> f32 {
    (f32::from(c) - f32::from(q.zero_point)) * q.scale
}

/// A block under `q` (codes by nearest rounding): its squared error, and the sums that give
/// the least-squares scale for those codes (`sum v·d / sum d²`, d = code - zp).
#[inline]
fn eval(x: &[f32], q: BlockQ) -> (f32, f32, f32) {
    let is = inv(q.scale);
    let zp = f32::from(q.zero_point);
    let (mut sse, mut num, mut den) = (0f32, 0f32, 0f32);
    for &v in x {
        let d = f32::from(code(v, is, q.zero_point)) - zp;
        let e = v - d * q.scale;
        sse += e * e;
        num += v * d;
        den += d * d;
    }
    (sse, num, den)
}

#[cfg(test)]
fn block_sse(x: &[f32], q: BlockQ) -> f32 {
    eval(x, q).0
}

/// Scale factors tried besides RTN's own: shrinking the range clips the extremes but rounds
/// the rest more finely.
const GRID: [f32; 6] = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7];
/// Symmetric blocks also try the extreme at +7 instead of -8 (the other sign gets 8 levels).
const MIRRORED: [f32; 4] = [
    -8.0 / 7.0,
    -0.95 * 8.0 / 7.0,
    -0.9 * 8.0 / 7.0,
    -0.85 * 8.0 / 7.0,
];

/// RTN, then the candidate of least squared error among RTN and a grid of scales around RTN's
/// (asymmetric blocks: each with the zero point that keeps the block's low end and its two
/// neighbours), then least-squares refits of the best one's scale for its codes while they
/// lower the error. Every step keeps the best so far, so a block's squared error is never
/// above RTN's. About 13 (symmetric) or 21 (asymmetric) passes over the block.
pub fn refine(x: &[f32], symmetric: bool) -> BlockQ {
    let base = rtn(x, symmetric);
    if base.scale == 0.0 {
        return base;
    }
    let mut best = (eval(x, base), base);
    let mut consider = |q: BlockQ| {
        let r = eval(x, q);
        if r.0 < best.0.0 {
            best = (r, q);
        }
    };
    if symmetric {
        for f in GRID.iter().chain(&MIRRORED) {
            consider(BlockQ {
                scale: base.scale * f,
                zero_point: SYM_ZP,
            });
        }
    } else {
        let lo = x.iter().fold(0f32, |l, &v| l.min(v));
        for f in std::iter::once(1.0).chain(GRID) {
            let scale = base.scale * f;
            let c = (-lo / scale).round().clamp(0.0, 15.0) as i32;
            for zp in (c - 1).max(0)..=(c + 1).min(15) {
                if f != 1.0 || zp as u8 != base.zero_point {
                    consider(BlockQ {
                        scale,
                        zero_point: zp as u8,
                    });
                }
            }
        }
    }
    for _ in 0..2 {
        let ((_, num, den), q) = best;
        if den <= 0.0 {
            break;
        }
        let fit = BlockQ {
            scale: num / den,
            zero_point: q.zero_point,
        };
        let r = eval(x, fit);
        if r.0 < best.0.0 {
            best = (r, fit);
        } else {
            break;
        }
    }
    best.1
}

/// Quantizes `layout.rows` rows. `fill(first, buf)` writes rows `first..first + buf.len() / len`
/// into `buf` (row-major). Rows are split over threads for large tensors.
pub fn quantize_blocks(
    layout: BlockLayout,
    numerics: Numerics,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Packed {
    let BlockLayout { rows, len, .. } = layout;
    let nb = layout.blocks();
    let (rb, zb) = (layout.row_bytes(), layout.zp_row_bytes());
    let mut data = vec![0u8; rows * rb];
    let mut scales = vec![0f32; rows * nb];
    let mut zps = vec![0u8; if numerics.symmetric { 0 } else { rows * zb }];
    let work = rows * len * if numerics.refine { 16 } else { 1 };
    let threads = if work < (1 << 18) {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16)
            .min(rows)
    };
    let per = rows.div_ceil(threads.max(1)).max(1);
    let results: Vec<(f32, u64, (f64, f64))> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut zp_chunks: Vec<&mut [u8]> = if numerics.symmetric {
            (0..rows.div_ceil(per)).map(|_| &mut [][..]).collect()
        } else {
            zps.chunks_mut(per * zb).collect()
        };
        for (i, ((d, sc), zp)) in data
            .chunks_mut(per * rb)
            .zip(scales.chunks_mut(per * nb))
            .zip(zp_chunks.drain(..))
            .enumerate()
        {
            let first = i * per;
            handles.push(s.spawn(move || rows_worker(layout, numerics, fill, first, d, sc, zp)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("quantize worker panicked"))
            .collect()
    });
    let max_abs_error = results.iter().map(|r| r.0).fold(0f32, f32::max);
    let zero_codes = results.iter().map(|r| r.1).sum();
    let energy = results
        .iter()
        .fold((0f64, 0f64), |(s, n), r| (s + r.2.0, n + r.2.1));
    Packed {
        data,
        scales,
        zero_points: (!numerics.symmetric).then_some(zps),
        max_abs_error,
        zero_codes,
        energy,
    }
}

/// Quantizes the rows starting at `first` whose outputs are `data`/`scales`/`zps`.
fn rows_worker(
    layout: BlockLayout,
    numerics: Numerics,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
    first: usize,
    data: &mut [u8],
    scales: &mut [f32],
    zps: &mut [u8],
) -> (f32, u64, (f64, f64)) {
    const TILE: usize = 32;
    let BlockLayout { len, block, .. } = layout;
    let nb = layout.blocks();
    let (rb, zb) = (layout.row_bytes(), layout.zp_row_bytes());
    let n = scales.len() / nb;
    let mut buf = vec![0f32; TILE * len];
    let mut codes = vec![0u8; nb * block];
    let mut zrow = vec![0u8; zb * 2];
    let (mut max_err, mut zeros) = (0f32, 0u64);
    let (mut signal, mut noise) = (0f64, 0f64);
    let mut r = 0;
    while r < n {
        let t = TILE.min(n - r);
        fill(first + r, &mut buf[..t * len]);
        for j in 0..t {
            let row = &buf[j * len..(j + 1) * len];
            let i = r + j;
            for b in 0..nb {
                let x = &row[b * block..((b + 1) * block).min(len)];
                let q = if numerics.refine {
                    refine(x, numerics.symmetric)
                } else {
                    rtn(x, numerics.symmetric)
                };
                let is = inv(q.scale);
                let out = &mut codes[b * block..(b + 1) * block];
                for (k, c) in out.iter_mut().enumerate() {
                    *c = match x.get(k) {
                        Some(&v) => {
                            let c = code(v, is, q.zero_point);
                            let e = v - dequant(c, q);
                            max_err = max_err.max(e.abs());
                            signal += f64::from(v) * f64::from(v);
                            noise += f64::from(e) * f64::from(e);
                            zeros += u64::from(dequant(c, q) == 0.0);
                            c
                        }
                        // K padding: the code of 0.
                        None => q.zero_point,
                    };
                }
                scales[i * nb + b] = q.scale;
                zrow[b] = q.zero_point;
            }
            pack_into(&codes[..rb * 2], &mut data[i * rb..(i + 1) * rb]);
            if !numerics.symmetric {
                zrow[nb..].fill(0);
                pack_into(&zrow, &mut zps[i * zb..(i + 1) * zb]);
            }
        }
        r += t;
    }
    (max_err, zeros, (signal, noise))
}

/// Packs 4-bit codes two to a byte, element 2j in the low nibble and 2j+1 in the high one. An
/// odd count leaves the last high nibble 0.
pub fn pack_into(codes: &[u8], out: &mut [u8]) {
    for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
        *o = (pair[0] & 0x0f) | (pair.get(1).copied().unwrap_or(0) << 4);
    }
}

/// Unpacks `n` codes (the inverse of `pack_into`).
#[cfg(test)]
pub fn unpack(packed: &[u8], n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (packed[i / 2] >> (4 * (i % 2))) & 0x0f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::math::lcg;

    /// `rows` rows of `len` values in blocks of `block`, `pad`ded to whole blocks or not.
    fn layout(rows: usize, len: usize, block: usize, pad: bool) -> BlockLayout {
        BlockLayout {
            rows,
            len,
            block,
            pad,
        }
    }

    fn contiguous(w: &[f32], len: usize) -> impl Fn(usize, &mut [f32]) + Sync + '_ {
        move |first, buf: &mut [f32]| buf.copy_from_slice(&w[first * len..first * len + buf.len()])
    }

    /// Half a step inside the range the codes 0..=15 cover; outside it (symmetric blocks reach
    /// only +7 steps on the side opposite the extreme, asymmetric ones lose up to half a step at
    /// an end to the rounded zero point) the distance to the nearest end.
    fn step_bound(v: f32, q: BlockQ) -> f32 {
        let (a, b) = (dequant(0, q), dequant(15, q));
        let (lo, hi) = (a.min(b), a.max(b));
        (q.scale.abs() / 2.0).max(lo - v).max(v - hi)
    }

    const RTN_SYM: Numerics = Numerics {
        symmetric: true,
        refine: false,
    };
    const RTN_ASYM: Numerics = Numerics {
        symmetric: false,
        refine: false,
    };

    #[test]
    fn packing_puts_the_first_element_in_the_low_nibble() {
        let mut out = [0u8; 2];
        pack_into(&[0x1, 0xa, 0xf, 0x3], &mut out);
        assert_eq!(out, [0xa1, 0x3f]);
        assert_eq!(unpack(&out, 4), vec![0x1, 0xa, 0xf, 0x3]);
        let mut odd = [0u8; 2];
        pack_into(&[0x7, 0x2, 0x5], &mut odd);
        assert_eq!(odd, [0x27, 0x05]);
    }

    #[test]
    fn symmetric_rtn_maps_the_extreme_to_minus_eight_with_a_signed_scale() {
        // Largest magnitude is positive (+2): scale = 2 / -8 = -0.25, 2 -> code 0.
        let q = rtn(&[2.0, -1.0, 0.5, 0.0], true);
        assert_eq!(
            q,
            BlockQ {
                scale: -0.25,
                zero_point: 8
            }
        );
        let is = inv(q.scale);
        let codes: Vec<u8> = [2.0, -1.0, 0.5, 0.0]
            .iter()
            .map(|&v| code(v, is, 8))
            .collect();
        // 2/-0.25 = -8 -> 0; -1/-0.25 = 4 -> 12; 0.5/-0.25 = -2 -> 6; 0 -> 8.
        assert_eq!(codes, vec![0, 12, 6, 8]);
        // Largest magnitude negative: positive scale. A tie picks the negative one.
        assert_eq!(rtn(&[-4.0, 1.0], true).scale, 0.5);
        assert_eq!(rtn(&[4.0, -4.0], true).scale, 0.5);
        // +7 is the top code: 3.5 with scale 0.5 is 7 -> 15; the extreme -4 -> 0.
        assert_eq!(code(3.5, 2.0, 8), 15);
        assert_eq!(code(-4.0, 2.0, 8), 0);
    }

    #[test]
    fn asymmetric_rtn_widens_the_range_to_zero_and_rounds_the_zero_point() {
        // min -1, max 2: scale 3/15 = 0.2, zp = round(1 / 0.2) = 5.
        let q = rtn(&[-1.0, 2.0, 0.3], false);
        assert!((q.scale - 0.2).abs() < 1e-7 && q.zero_point == 5, "{q:?}");
        let is = inv(q.scale);
        assert_eq!(code(-1.0, is, 5), 0);
        assert_eq!(code(2.0, is, 5), 15);
        assert_eq!(code(0.0, is, 5), 5);
        // All positive: min widened to 0, zp 0, scale max/15.
        let q = rtn(&[1.5, 3.0], false);
        assert_eq!((q.scale, q.zero_point), (0.2, 0));
        // All negative: max widened to 0, zp 15.
        let q = rtn(&[-1.5, -3.0], false);
        assert_eq!((q.scale, q.zero_point), (0.2, 15));
    }

    #[test]
    fn ties_round_half_away_from_zero_like_roundf() {
        // scale 0.125 (inverse 8 exactly): 0.3125 * 8 = 2.5 -> 3 (numpy would give 2).
        let q = rtn(&[-1.0, 0.3125], true);
        assert_eq!(q.scale, 0.125);
        assert_eq!(code(0.3125, inv(q.scale), 8), 11);
        assert_eq!(code(-0.3125, inv(q.scale), 8), 5);
        assert_eq!(code(0.1875, inv(q.scale), 8), 10); // 1.5 -> 2
    }

    #[test]
    fn an_all_zero_block_has_scale_zero_and_no_nan() {
        for numerics in [
            RTN_SYM,
            RTN_ASYM,
            Numerics {
                symmetric: true,
                refine: true,
            },
            Numerics {
                symmetric: false,
                refine: true,
            },
        ] {
            let w = vec![0f32; 2 * 32];
            let layout = layout(2, 32, 16, true);
            let p = quantize_blocks(layout, numerics, &contiguous(&w, 32));
            assert!(p.scales.iter().all(|s| *s == 0.0), "{:?}", p.scales);
            assert_eq!(p.max_abs_error, 0.0);
            assert_eq!(p.zero_codes, 64);
            let zp = if numerics.symmetric { 8 } else { 0 };
            assert!(unpack(&p.data, 64).iter().all(|c| *c == zp));
        }
    }

    #[test]
    fn a_row_not_a_multiple_of_the_block_is_padded_with_the_code_of_zero() {
        // K = 20, blocks of 16: 2 blocks, the second holds 4 values and 12 padding codes.
        let w: Vec<f32> = (0..20).map(|i| i as f32 - 10.0).collect();
        let layout = layout(1, 20, 16, true);
        assert_eq!(
            (layout.blocks(), layout.row_bytes(), layout.zp_row_bytes()),
            (2, 16, 1)
        );
        for numerics in [RTN_SYM, RTN_ASYM] {
            let p = quantize_blocks(layout, numerics, &contiguous(&w, 20));
            assert_eq!(p.data.len(), 16);
            assert_eq!(p.scales.len(), 2);
            let codes = unpack(&p.data, 32);
            let blocks = [
                rtn(&w[..16], numerics.symmetric),
                rtn(&w[16..], numerics.symmetric),
            ];
            assert_eq!(p.scales, vec![blocks[0].scale, blocks[1].scale]);
            for k in 0..32 {
                let q = blocks[k / 16];
                let want = if k < 20 {
                    code(w[k], inv(q.scale), q.zero_point)
                } else {
                    q.zero_point
                };
                assert_eq!(codes[k], want, "element {k}");
            }
            // Second block [6, 7, 8, 9]: symmetric scale 9/-8; asymmetric (9-0)/15, zp 0.
            if numerics.symmetric {
                assert_eq!(p.scales[1], -1.125);
                assert!(p.zero_points.is_none());
            } else {
                assert_eq!(p.scales[1], 0.6);
                let z = p.zero_points.as_ref().unwrap();
                // Block 0 [-10..5]: scale 1, zp 10; block 1 zp 0; packed low nibble first.
                assert_eq!(p.scales[0], 1.0);
                assert_eq!(z, &vec![0x0a]);
            }
        }
    }

    #[test]
    fn unpadded_rows_store_exactly_len_codes() {
        // GatherBlockQuantized: D = 40 with blocks of 16 stores 20 bytes per row, 3 scales.
        let w = lcg(3 * 40, 5);
        let layout = layout(3, 40, 16, false);
        let p = quantize_blocks(layout, RTN_SYM, &contiguous(&w, 40));
        assert_eq!((p.data.len(), p.scales.len()), (60, 9));
        let codes = unpack(&p.data, 120);
        for r in 0..3 {
            for k in 0..40 {
                let q = BlockQ {
                    scale: p.scales[r * 3 + k / 16],
                    zero_point: 8,
                };
                let back = dequant(codes[r * 40 + k], q);
                assert!((back - w[r * 40 + k]).abs() <= step_bound(w[r * 40 + k], q) + 1e-6);
            }
        }
    }

    #[test]
    fn rtn_error_is_half_a_step_inside_the_code_range_and_at_most_one_step_outside() {
        let w = lcg(64 * 100, 7);
        for numerics in [RTN_SYM, RTN_ASYM] {
            let layout = layout(64, 100, 32, true);
            let p = quantize_blocks(layout, numerics, &contiguous(&w, 100));
            let codes = unpack(&p.data, 64 * 128);
            let zps = p.zero_points.as_ref().map(|z| unpack(z, 64 * 4));
            let mut worst = 0f32;
            for r in 0..64 {
                for k in 0..100 {
                    let b = k / 32;
                    let q = BlockQ {
                        scale: p.scales[r * 4 + b],
                        zero_point: zps.as_ref().map_or(8, |z| z[r * 4 + b]),
                    };
                    let e = (dequant(codes[r * 128 + k], q) - w[r * 100 + k]).abs();
                    let bound = step_bound(w[r * 100 + k], q);
                    assert!(
                        bound <= q.scale.abs() * 1.0001,
                        "r{r} k{k}: clipped by {bound}"
                    );
                    assert!(e <= bound * 1.0001 + 1e-7, "r{r} k{k}: {e} > {bound}");
                    worst = worst.max(e);
                }
            }
            assert_eq!(worst, p.max_abs_error);
        }
    }

    #[test]
    fn refinement_never_raises_a_blocks_error_and_lowers_the_total() {
        // Gaussian-like blocks (sum of uniforms): outliers make RTN's scale too coarse.
        let u = lcg(4 * 32 * 512, 11);
        let w: Vec<f32> = u.chunks(4).map(|c| c.iter().sum::<f32>()).collect();
        for symmetric in [true, false] {
            let (mut rtn_sse, mut ref_sse) = (0f64, 0f64);
            for x in w.chunks(32) {
                let (a, b) = (
                    block_sse(x, rtn(x, symmetric)),
                    block_sse(x, refine(x, symmetric)),
                );
                assert!(b <= a, "{b} > {a}");
                rtn_sse += f64::from(a);
                ref_sse += f64::from(b);
            }
            eprintln!("symmetric {symmetric}: block SSE refined {ref_sse:.3} vs RTN {rtn_sse:.3}");
            assert!(
                ref_sse < 0.92 * rtn_sse,
                "sym {symmetric}: {ref_sse} vs {rtn_sse}"
            );
        }
    }

    #[test]
    fn threads_give_the_same_result_as_one() {
        // Large enough to be split over threads; compared with rows quantized one at a time.
        let (rows, len) = (300, 1000);
        let w = lcg(rows * len, 3);
        let layout = BlockLayout {
            rows,
            len,
            block: 64,
            pad: true,
        };
        let numerics = Numerics {
            symmetric: false,
            refine: true,
        };
        let all = quantize_blocks(layout, numerics, &contiguous(&w, len));
        let one_row = BlockLayout { rows: 1, ..layout };
        for r in [0, 1, 149, 299] {
            let p = quantize_blocks(
                one_row,
                numerics,
                &contiguous(&w[r * len..(r + 1) * len], len),
            );
            let rb = layout.row_bytes();
            assert_eq!(&all.data[r * rb..(r + 1) * rb], &p.data[..]);
            assert_eq!(&all.scales[r * 16..(r + 1) * 16], &p.scales[..]);
        }
    }
}
