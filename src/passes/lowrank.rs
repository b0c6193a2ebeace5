//! Low-rank factorisation of MatMul/Gemm weights by truncated SVD: `Y = X·W` with W [K, N]
//! becomes `Y = (X·P)·Q` with P [K, r] and Q [r, N], only where that stores fewer numbers
//! (r < K·N / (K + N)). Both factors are ordinary MatMul weights, so a later quantize pass
//! compresses them too. Gemm (transA = 0) keeps its alpha, beta and bias: `Gemm(X·P, Q, C)`.

use super::rewrite::Rewrite;
use super::weights::{Selection, Weight, node_label, select_weights, weight_values};
use super::{PassReport, Result, Skipped, TensorReport, svd};
use crate::onnx::{self, Model, f32_tensor, pb};

#[derive(Debug, Clone, PartialEq)]
pub enum RankRule {
    /// Smallest rank holding this fraction of the squared singular values.
    Energy(f64),
    /// The rank making the factors this fraction of the original elements.
    Ratio(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LowRankConfig {
    pub rule: RankRule,
    pub select: Selection,
}

/// Largest Gram side factorised: the eigensolver is O(k³) in f64 (k = 4096 is ~1 minute).
const MAX_SIDE: usize = 4096;

/// The rank a rule picks from the energies (descending), and the break-even rank.
pub fn choose_rank(rule: &RankRule, energies: &[f64], rows: usize, cols: usize) -> usize {
    let break_even = rows * cols / (rows + cols);
    match *rule {
        RankRule::Ratio(r) => ((r * (rows * cols) as f64) / (rows + cols) as f64).floor() as usize,
        RankRule::Energy(e) => {
            let total: f64 = energies.iter().sum();
            if total <= 0.0 {
                return 1;
            }
            let mut acc = 0.0;
            for (i, x) in energies.iter().enumerate() {
                acc += x;
                if acc >= e * total * (1.0 - 1e-12) {
                    return i + 1;
                }
            }
            energies.len().max(break_even)
        }
    }
    .max(1)
}

pub fn apply(cfg: &LowRankConfig, model: &mut Model) -> Result<PassReport> {
    let mut report = PassReport {
        pass: "lowRank".into(),
        description: match cfg.rule {
            RankRule::Energy(e) => format!(
                "truncated SVD keeping {:.2}% of each weight's energy",
                e * 100.0
            ),
            RankRule::Ratio(r) => format!(
                "truncated SVD to {:.0}% of each weight's elements",
                r * 100.0
            ),
        },
        ..Default::default()
    };
    let weights = select_weights(model, &cfg.select, &mut report.skipped);
    let g = model.graph();
    let mut rw = Rewrite::new(g);
    let mut min_kept = 1f64;
    for w in &weights {
        let (ni0, op) = (w.users[0].0, w.users[0].1.as_str());
        let skip = |reason: String| Skipped {
            node: node_label(&g.node[ni0], ni0),
            reason,
        };
        if let Err(reason) = factorisable(g, w) {
            report.skipped.push(skip(reason));
            continue;
        }
        let values = weight_values(model, w)?;
        let f = match factorise(cfg, w, &values, trans_b(g, op, ni0)) {
            Ok(f) => f,
            Err(reason) => {
                report.skipped.push(skip(reason));
                continue;
            }
        };
        report.tensors.push(TensorReport {
            tensor: w.name.clone(),
            node: node_label(&g.node[ni0], ni0),
            op: op.into(),
            elements: w.numel() as u64,
            sparsity: 0.0,
            scales: None,
            max_abs_error: Some(f.max_err),
            sqnr_db: None,
        });
        min_kept = min_kept.min(f.kept);
        emit(&mut rw, g, w, f);
    }
    if !report.tensors.is_empty() {
        report
            .description
            .push_str(&format!("; least energy kept {:.2}%", min_kept * 100.0));
    }
    rw.apply(model.graph_mut());
    Ok(report)
}

/// Why a weight's users cannot take two factors in its place, if they cannot.
fn factorisable(g: &pb::GraphProto, w: &Weight) -> Result<(), String> {
    let (ni0, op) = (w.users[0].0, w.users[0].1.as_str());
    if op == "Gemm"
        && w.users
            .iter()
            .any(|&(ni, _)| onnx::get_attr_int(&g.node[ni], "transA", 0) != 0)
    {
        return Err("Gemm with transA=1 is left as it is".into());
    }
    if w.users
        .iter()
        .any(|&(ni, _)| trans_b(g, op, ni) != trans_b(g, op, ni0))
    {
        return Err("weight shared by Gemms with different transB".into());
    }
    // As stored: [K, N], or [N, K] for Gemm transB=1.
    let (rows, cols) = (w.dims[0], w.dims[1]);
    if rows.min(cols) > MAX_SIDE {
        return Err(format!(
            "weight `{}` is {rows}x{cols}; factorising needs min side <= {MAX_SIDE}",
            w.name
        ));
    }
    Ok(())
}

fn trans_b(g: &pb::GraphProto, op: &str, ni: usize) -> bool {
    op == "Gemm" && onnx::get_attr_int(&g.node[ni], "transB", 0) != 0
}

/// A weight's two factors, as stored in X·W order, and what they cost.
struct Factored {
    /// First factor [K, r] and its dims, second [r, N] and its dims.
    first: (Vec<f32>, Vec<i64>),
    second: (Vec<f32>, Vec<i64>),
    /// Max |W - P·Q|.
    max_err: f32,
    /// Fraction of the energy kept.
    kept: f64,
}

/// The factors of a weight at the rule's rank, or why it stays whole (no rank under the
/// break-even one holds the rule).
fn factorise(
    cfg: &LowRankConfig,
    w: &Weight,
    values: &[f32],
    trans_b: bool,
) -> Result<Factored, String> {
    let (rows, cols) = (w.dims[0], w.dims[1]);
    let spectrum = svd::gram_spectrum(values, rows, cols);
    let energies = spectrum.energies();
    let rank = choose_rank(&cfg.rule, &energies, rows, cols);
    let break_even = rows * cols / (rows + cols);
    if rank >= break_even || rank == 0 {
        return Err(format!(
            "weight `{}` ({rows}x{cols}) needs rank {rank} for the rule; factors are smaller only below rank {break_even}",
            w.name
        ));
    }
    let f = svd::factors(values, rows, cols, &spectrum, rank);
    let total: f64 = energies.iter().sum();
    let kept: f64 = energies[..rank].iter().sum();
    // Max |W - P·Q| for the report.
    let mut max_err = 0f32;
    for i in 0..rows {
        for j in 0..cols {
            let x: f32 = (0..rank)
                .map(|k| f.p[i * rank + k] * f.q[k * cols + j])
                .sum();
            max_err = max_err.max((x - values[i * cols + j]).abs());
        }
    }
    // In X·W order: first factor [K, r], second [r, N]. For transB=1 the stored matrix is
    // Wᵀ = P·Q, so W = Qᵀ·Pᵀ and the factors swap and transpose.
    let (first, second) = if trans_b {
        (
            (
                super::math::transpose(&f.q, rank, cols),
                vec![cols as i64, rank as i64],
            ),
            (
                super::math::transpose(&f.p, rows, rank),
                vec![rank as i64, rows as i64],
            ),
        )
    } else {
        (
            (f.p, vec![rows as i64, rank as i64]),
            (f.q, vec![rank as i64, cols as i64]),
        )
    };
    Ok(Factored {
        first,
        second,
        max_err,
        kept: if total > 0.0 { kept / total } else { 1.0 },
    })
}

/// Each user `op(X, W, ...)` becomes `MatMul(X, P)` then `op(·, Q, ...)`.
fn emit(rw: &mut Rewrite, g: &pb::GraphProto, w: &Weight, f: Factored) {
    let op = w.users[0].1.as_str();
    let pn = rw.fresh(&format!("{}_lowrank_a", w.name));
    let qn = rw.fresh(&format!("{}_lowrank_b", w.name));
    rw.new_inits.push(f32_tensor(&pn, &f.first.1, &f.first.0));
    rw.new_inits.push(f32_tensor(&qn, &f.second.1, &f.second.0));
    rw.drop_inits.insert(w.init);
    for &(ni, _) in &w.users {
        let node = &g.node[ni];
        let base = node_label(node, ni);
        let mid = rw.fresh(&format!("{}_lowrank", node.output[0]));
        let mut head = onnx::node(
            "MatMul",
            rw.fresh(&format!("{base}_lowrank_a")),
            vec![node.input[0].clone(), pn.clone()],
            vec![mid.clone()],
            vec![],
        );
        head.domain = node.domain.clone();
        let mut tail = node.clone();
        tail.name = Some(rw.fresh(&format!("{base}_lowrank_b")));
        tail.input[0] = mid;
        tail.input[1] = qn.clone();
        if op == "Gemm" {
            tail.attribute
                .retain(|a| a.name.as_deref() != Some("transB"));
        }
        rw.replace.insert(ni, vec![head, tail]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_rule_and_the_break_even_point() {
        // 100x100: break-even rank 50.
        let e = vec![50.0, 30.0, 10.0, 5.0, 5.0];
        assert_eq!(choose_rank(&RankRule::Energy(0.5), &e, 100, 100), 1);
        assert_eq!(choose_rank(&RankRule::Energy(0.8), &e, 100, 100), 2);
        assert_eq!(choose_rank(&RankRule::Energy(0.9), &e, 100, 100), 3);
        assert_eq!(choose_rank(&RankRule::Energy(1.0), &e, 100, 100), 5);
        assert_eq!(choose_rank(&RankRule::Ratio(0.5), &e, 100, 100), 25);
        assert_eq!(choose_rank(&RankRule::Ratio(0.01), &e, 100, 100), 1);
    }
}
