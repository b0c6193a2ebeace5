//! Which weight bytes each pass and mode would touch, for `kompress inspect`: the same
//! selection the passes run (`select_weights`, after the same Constant folding), per op, so
//! the answer is what a job would do, not a guess from op counts.

use super::Skipped;
use super::weights::{Selection, select_weights};
use crate::api::ops;
use crate::onnx::{self, Model, TensorData};
use serde::Serialize;
use std::collections::BTreeMap;

/// The float weights of one op type that the passes can select.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OpWeights {
    pub weights: usize,
    pub bytes: u64,
    /// Weights of this op left alone (shared, computed, too small...), with why.
    pub skipped: usize,
}

/// One mode and what it would touch with its default `ops` and `minElements`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeCoverage {
    pub mode: &'static str,
    pub ops: Vec<String>,
    pub bytes: u64,
    /// Touched bytes as a fraction of all float32 initializer bytes.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Weights held in Constant nodes, folded into initializers before any pass.
    pub folded_constants: usize,
    pub float_bytes: u64,
    pub by_op: BTreeMap<String, OpWeights>,
    pub modes: Vec<ModeCoverage>,
    /// Why weights of the supported ops were skipped (first few per op).
    pub skipped: Vec<Skipped>,
}

/// What each mode would touch in `model` (which is not changed).
pub fn coverage(model: &Model) -> Coverage {
    let (m, folded) = super::with_constants_folded(model);
    let g = m.graph();
    let float_bytes: u64 = g
        .initializer
        .iter()
        .filter(|t| t.dtype() == onnx::DataType::Float)
        .map(|t| t.payload_bytes() as u64)
        .sum();
    let mut by_op = BTreeMap::new();
    let mut skipped = Vec::new();
    for w in ops::WEIGHT_OPS {
        let mut sk = Vec::new();
        let sel = Selection::new(vec![w.op.to_string()], &[], 1024);
        let found = select_weights(&m, &sel, &mut sk);
        let bytes = found
            .iter()
            .map(|x| g.initializer[x.init].payload_bytes() as u64)
            .sum();
        by_op.insert(
            w.op.to_string(),
            OpWeights {
                weights: found.len(),
                bytes,
                skipped: sk.len(),
            },
        );
        skipped.extend(sk.into_iter().take(5));
    }
    let of = |ops: &[&str]| -> u64 {
        ops.iter()
            .map(|o| by_op.get(*o).map_or(0, |w: &OpWeights| w.bytes))
            .sum()
    };
    let share = |b: u64| {
        if float_bytes == 0 {
            0.0
        } else {
            b as f64 / float_bytes as f64
        }
    };
    let quant = ops::defaults(true);
    let quant: Vec<&str> = quant.iter().map(String::as_str).collect();
    let prune = ops::defaults(false);
    let prune: Vec<&str> = prune.iter().map(String::as_str).collect();
    let modes_ops: [(&'static str, Vec<&str>); 5] = [
        ("quantize int8 (dynamic, static, weightOnly)", quant.clone()),
        ("quantize int8 with ops: [.., Conv, ConvTranspose]", {
            let mut v = quant.clone();
            v.push("Conv");
            v.push("ConvTranspose");
            v
        }),
        (
            "quantize int4 (weightOnly)",
            vec!["MatMul", "Gemm", "Gather"],
        ),
        ("prune", prune),
        ("lowRank", vec!["MatMul", "Gemm"]),
    ];
    let mut modes: Vec<ModeCoverage> = modes_ops
        .into_iter()
        .map(|(mode, ops)| {
            let bytes = of(&ops);
            ModeCoverage {
                mode,
                ops: ops.iter().map(|s| s.to_string()).collect(),
                bytes,
                share: share(bytes),
            }
        })
        .collect();
    // fp16 stores every float initializer with at least minElements elements.
    let fp16: u64 = g
        .initializer
        .iter()
        .filter(|t| t.dtype() == onnx::DataType::Float && t.numel() >= 1024)
        .map(|t| t.payload_bytes() as u64)
        .sum();
    modes.push(ModeCoverage {
        mode: "fp16",
        ops: vec!["every float initializer".into()],
        bytes: fp16,
        share: share(fp16),
    });
    Coverage {
        folded_constants: folded,
        float_bytes,
        by_op,
        modes,
        skipped,
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
        writeln!(
            f,
            "compressible float32 weights: {}{}",
            mb(self.float_bytes),
            if self.folded_constants > 0 {
                format!(
                    " ({} held in Constant nodes, folded first)",
                    self.folded_constants
                )
            } else {
                String::new()
            }
        )?;
        for (op, w) in &self.by_op {
            writeln!(
                f,
                "  {op:<10} {:>4} weights {:>12}{}",
                w.weights,
                mb(w.bytes),
                if w.skipped > 0 {
                    format!("   ({} skipped)", w.skipped)
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(f, "touched by each pass (default ops, minElements 1024):")?;
        for m in &self.modes {
            writeln!(
                f,
                "  {:<44} {:>12} {:>6.1}%",
                m.mode,
                mb(m.bytes),
                m.share * 100.0
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "  skipped {}: {}", s.node, s.reason)?;
        }
        Ok(())
    }
}
