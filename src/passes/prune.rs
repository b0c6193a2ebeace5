//! Magnitude pruning: unstructured (per tensor or one global threshold) or N:M along the
//! input dimension. Zeros are written into the float weights; a later quantize pass keeps
//! them exactly zero.

use super::weights::{Selection, node_label, select_weights, weight_values};
use super::{PassReport, Result, TensorReport, math, sparsity};
use crate::onnx::{Model, set_f32_values};

#[derive(Debug, Clone, PartialEq)]
pub enum PruneTarget {
    Sparsity { sparsity: f64, global: bool },
    NM { n: usize, m: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PruneConfig {
    pub target: PruneTarget,
    pub select: Selection,
}

pub fn apply(cfg: &PruneConfig, model: &mut Model) -> Result<PassReport> {
    let mut report = PassReport {
        pass: "prune".into(),
        ..Default::default()
    };
    let weights = select_weights(model, &cfg.select, &mut report.skipped);
    let mut values: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| weight_values(model, w))
        .collect::<Result<_>>()?;
    let g = model.graph();
    match cfg.target {
        PruneTarget::Sparsity {
            sparsity: s,
            global: false,
        } => {
            report.description = format!("magnitude, {:.1}% per tensor", s * 100.0);
            for v in &mut values {
                let k = (s * v.len() as f64).round() as u64;
                math::prune_smallest(&mut [v.as_mut_slice()], k);
            }
        }
        PruneTarget::Sparsity {
            sparsity: s,
            global: true,
        } => {
            report.description = format!("magnitude, {:.1}% global", s * 100.0);
            let total: usize = values.iter().map(Vec::len).sum();
            let k = (s * total as f64).round() as u64;
            let mut slices: Vec<&mut [f32]> = values.iter_mut().map(Vec::as_mut_slice).collect();
            math::prune_smallest(&mut slices, k);
        }
        PruneTarget::NM { n, m } => {
            report.description = format!("magnitude, {n}:{m} along the input dimension");
            for (w, v) in weights.iter().zip(&mut values) {
                let (input_axis, _) = w.axes(g);
                math::prune_n_m(v, &w.dims, input_axis, n, m);
            }
        }
    }
    for (w, v) in weights.iter().zip(&values) {
        let (ni, op) = &w.users[0];
        report.tensors.push(TensorReport {
            tensor: w.name.clone(),
            node: node_label(&g.node[*ni], *ni),
            op: op.clone(),
            elements: v.len() as u64,
            sparsity: sparsity(v),
            ..Default::default()
        });
    }
    let graph = model.graph_mut();
    for (w, v) in weights.iter().zip(&values) {
        set_f32_values(&mut graph.initializer[w.init], v);
    }
    Ok(report)
}
