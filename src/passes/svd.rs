//! Truncated SVD of a weight matrix through the eigendecomposition of its smaller Gram matrix,
//! in f64: Householder reduction to tridiagonal form, then the implicit QL algorithm (the
//! classic EISPACK `tred2`/`tql2` pair). O(k³) for the k×k Gram matrix, k = min(rows, cols).
// The index loops follow the textbook algorithm line by line, which is how it is checked.
#![allow(clippy::needless_range_loop)]

/// Eigenvalues (descending) and eigenvectors (`vectors[i * n + j]` = component i of vector j,
/// columns in the same order) of a symmetric n×n matrix given row-major.
pub struct Eigen {
    pub values: Vec<f64>,
    pub vectors: Vec<f64>,
    pub n: usize,
}

pub fn symmetric_eigen(a: &[f64], n: usize) -> Eigen {
    assert_eq!(a.len(), n * n);
    let mut v = a.to_vec();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    if n == 0 {
        return Eigen {
            values: d,
            vectors: v,
            n,
        };
    }
    tred2(&mut v, &mut d, &mut e, n);
    tql2(&mut v, &mut d, &mut e, n);
    // Descending order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let values = order.iter().map(|&i| d[i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (newj, &oldj) in order.iter().enumerate() {
        for i in 0..n {
            vectors[i * n + newj] = v[i * n + oldj];
        }
    }
    Eigen { values, vectors, n }
}

/// Householder tridiagonalisation; `v` becomes the accumulated transform.
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal (d, e), accumulating into `v`.
fn tql2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        let m = m.min(n - 1);
        if m > l {
            // At most 60 sweeps per eigenvalue: far beyond what convergence needs.
            for _ in 0..60 {
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for i in l + 2..n {
                    d[i] -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        h = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * h;
                        v[at(k, i)] = c * v[at(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

/// W (rows×cols, row-major) ≈ P·Q with P rows×r and Q r×cols, from the top-r eigenvectors of
/// the smaller Gram matrix. Returns the factors and the squared singular values (descending),
/// so callers can choose r from them first with [`gram_spectrum`].
pub struct Factors {
    pub p: Vec<f32>,
    pub q: Vec<f32>,
}

/// The Gram matrix of the smaller side and its eigendecomposition (squared singular values).
pub struct Spectrum {
    eig: Eigen,
    /// True when the Gram matrix is WᵀW (cols×cols), false for WWᵀ (rows×rows).
    right: bool,
}

impl Spectrum {
    /// Squared singular values, descending (clamped at 0: rounding can make tiny ones negative).
    pub fn energies(&self) -> Vec<f64> {
        self.eig.values.iter().map(|v| v.max(0.0)).collect()
    }
}

pub fn gram_spectrum(w: &[f32], rows: usize, cols: usize) -> Spectrum {
    let right = cols <= rows;
    let k = if right { cols } else { rows };
    let mut g = vec![0f64; k * k];
    if right {
        // G = WᵀW: accumulate row by row (each row's outer product).
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for i in 0..cols {
                let a = row[i] as f64;
                if a == 0.0 {
                    continue;
                }
                let gi = &mut g[i * k..(i + 1) * k];
                for j in i..cols {
                    gi[j] += a * row[j] as f64;
                }
            }
        }
    } else {
        for i in 0..rows {
            let ri = &w[i * cols..(i + 1) * cols];
            for j in i..rows {
                let rj = &w[j * cols..(j + 1) * cols];
                g[i * k + j] = ri.iter().zip(rj).map(|(a, b)| *a as f64 * *b as f64).sum();
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            g[i * k + j] = g[j * k + i];
        }
    }
    Spectrum {
        eig: symmetric_eigen(&g, k),
        right,
    }
}

/// The rank-`r` factors of W from its spectrum.
pub fn factors(w: &[f32], rows: usize, cols: usize, s: &Spectrum, r: usize) -> Factors {
    let k = s.eig.n;
    let vec = |i: usize, j: usize| s.eig.vectors[i * k + j];
    if s.right {
        // W ≈ (W V_r) V_rᵀ.
        let mut p = vec![0f32; rows * r];
        for row in 0..rows {
            let wr = &w[row * cols..(row + 1) * cols];
            for j in 0..r {
                let mut acc = 0f64;
                for (i, x) in wr.iter().enumerate() {
                    acc += *x as f64 * vec(i, j);
                }
                p[row * r + j] = acc as f32;
            }
        }
        let mut q = vec![0f32; r * cols];
        for j in 0..r {
            for i in 0..cols {
                q[j * cols + i] = vec(i, j) as f32;
            }
        }
        Factors { p, q }
    } else {
        // W ≈ U_r (U_rᵀ W).
        let mut p = vec![0f32; rows * r];
        for i in 0..rows {
            for j in 0..r {
                p[i * r + j] = vec(i, j) as f32;
            }
        }
        let mut q = vec![0f32; r * cols];
        for j in 0..r {
            let qj = &mut q[j * cols..(j + 1) * cols];
            let mut acc = vec![0f64; cols];
            for i in 0..rows {
                let u = vec(i, j);
                if u == 0.0 {
                    continue;
                }
                for (a, x) in acc.iter_mut().zip(&w[i * cols..(i + 1) * cols]) {
                    *a += u * *x as f64;
                }
            }
            for (o, a) in qj.iter_mut().zip(acc) {
                *o = a as f32;
            }
        }
        Factors { p, q }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2,1],[1,2]]: eigenvalues 3 and 1, vectors (1,1)/√2 and (1,-1)/√2.
        let e = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((e.values[0] - 3.0).abs() < 1e-12 && (e.values[1] - 1.0).abs() < 1e-12);
        let (a, b) = (e.vectors[0], e.vectors[2]);
        assert!((a.abs() - 0.5f64.sqrt()).abs() < 1e-12 && (a - b).abs() < 1e-12);
    }

    #[test]
    fn eigenvectors_reconstruct_a_random_symmetric_matrix() {
        let n = 37;
        let mut seed = 7;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let x = lcg(&mut seed) as f64;
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        let e = symmetric_eigen(&a, n);
        for w in e.values.windows(2) {
            assert!(w[0] >= w[1]);
        }
        // A = V Λ Vᵀ, and V orthonormal.
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                let mut o = 0.0;
                for k in 0..n {
                    s += e.vectors[i * n + k] * e.values[k] * e.vectors[j * n + k];
                    o += e.vectors[k * n + i] * e.vectors[k * n + j];
                }
                assert!((s - a[i * n + j]).abs() < 1e-10, "A[{i},{j}]");
                assert!(
                    (o - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10,
                    "VᵀV[{i},{j}]"
                );
            }
        }
    }

    /// An exactly rank-3 matrix is rebuilt exactly from 3 factors, whichever side is smaller,
    /// and the spectrum has 3 non-zero energies summing to ‖W‖².
    #[test]
    fn a_rank_three_matrix_is_rebuilt_from_three_factors() {
        for (rows, cols) in [(40, 24), (24, 40)] {
            let mut seed = 11;
            let a: Vec<f32> = (0..rows * 3).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..3 * cols).map(|_| lcg(&mut seed)).collect();
            let mut w = vec![0f32; rows * cols];
            for i in 0..rows {
                for j in 0..cols {
                    w[i * cols + j] = (0..3).map(|k| a[i * 3 + k] * b[k * cols + j]).sum();
                }
            }
            let s = gram_spectrum(&w, rows, cols);
            let en = s.energies();
            let total: f64 = w.iter().map(|x| (*x as f64).powi(2)).sum();
            assert!((en.iter().sum::<f64>() - total).abs() < 1e-6 * total);
            assert!(en[3] < 1e-9 * total, "{rows}x{cols}: 4th energy {}", en[3]);
            let f = factors(&w, rows, cols, &s, 3);
            for i in 0..rows {
                for j in 0..cols {
                    let x: f32 = (0..3).map(|k| f.p[i * 3 + k] * f.q[k * cols + j]).sum();
                    assert!(
                        (x - w[i * cols + j]).abs() < 1e-5,
                        "{rows}x{cols} [{i},{j}]"
                    );
                }
            }
        }
    }
}
