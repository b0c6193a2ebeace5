//! Stage 2c: when a pass needs a newer opset than the model imports (per-channel
//! `DequantizeLinear` needs 13), the upgraded original runs through ONNX Runtime on the
//! evaluation rows and must give the baseline's outputs within float tolerance, before any
//! pass relies on the upgrade. A mismatch stops the run and names what to do.

use super::{Baseline, Error, Result, save_in_scratch, scratch_dir};
use crate::api::{PassSpec, TargetCpu};
use crate::eval::values::Values;
use crate::eval::{self, EvalConfig};
use crate::passes::{self, Pass};
use crate::ui::Ui;
use std::path::Path;

/// Largest |upgraded - original| allowed, relative to the largest |original| output (the
/// rewrites only move attributes into inputs or split an op into exact steps).
pub const TOLERANCE: f64 = 1e-5;

/// What the check found, for the pass report.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsetCheck {
    pub from: i64,
    pub to: i64,
    pub rows: usize,
    pub max_abs_diff: f64,
    pub max_abs: f64,
}

impl OpsetCheck {
    pub fn describe(&self) -> String {
        format!(
            "opset {} -> {} checked with ONNX Runtime on {} rows: max |upgraded - original| {:.3e} (outputs up to {:.3e}; tolerance {TOLERANCE:e} relative)",
            self.from, self.to, self.rows, self.max_abs_diff, self.max_abs
        )
    }
}

/// Runs the check when `passes` will upgrade `base.model` (None when none will, or when
/// the upgrade cannot be done: the pass then says why).
pub fn check_opset_upgrade(
    base: &Baseline,
    passes_spec: &[PassSpec],
    target: TargetCpu,
    dir: &Path,
    ui: &Ui,
) -> Result<Option<OpsetCheck>> {
    let (mut model, _) = passes::with_constants_folded(&base.model);
    let from = crate::onnx::default_opset(&model.proto).unwrap_or(0);
    let Some((index, to)) = passes_spec
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            Pass::for_target(p, target)
                .opset_needed(&model)
                .map(|v| (i, v))
        })
        .max_by_key(|(_, v)| *v)
    else {
        return Ok(None);
    };
    if to <= from || passes::opset::upgrade(&mut model, to).is_err() {
        return Ok(None);
    }
    scratch_dir(dir)?;
    let path = dir.join("model.onnx");
    save_in_scratch(&model, &path, "saving the opset-upgraded model")?;
    drop(model);
    let eval_err = |source| Error::Eval {
        which: "opset-upgraded original",
        source,
    };
    let cfg = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..base.cfg.clone()
    };
    let mut opened = eval::open(&path, &cfg).map_err(eval_err)?;
    let prep = eval::prepare(&opened, &base.dataset, &cfg).map_err(eval_err)?;
    let (outputs, _) = eval::evaluate(&mut opened, &prep, &cfg, &|_, _| {}).map_err(eval_err)?;
    drop(opened);
    let _ = std::fs::remove_dir_all(dir);
    let (want, got) = (&base.outputs.values, &outputs.values);
    let (mut max_abs, mut max_abs_diff) = (0f64, 0f64);
    let per = outputs.per_sample.max(1);
    if got.len() == want.len() {
        Values::zip_rows(want, got, per, want.len() / per, |_, a, b| {
            for (a, b) in a.iter().zip(b) {
                max_abs = max_abs.max(f64::from(a.abs()));
                max_abs_diff = max_abs_diff.max(f64::from((a - b).abs()));
            }
        })
        .map_err(|e| eval_err(eval::Error::Spill(e)))?;
    } else {
        max_abs_diff = f64::INFINITY;
    }
    let check = OpsetCheck {
        from,
        to,
        rows: prep.samples(),
        max_abs_diff,
        max_abs,
    };
    // (NaN differences fail too.)
    if max_abs_diff.is_nan() || max_abs_diff > TOLERANCE * max_abs.max(1.0) {
        return Err(Error::Pass {
            index,
            name: "quantize",
            source: passes::Error::Unsupported {
                pass: "quantize",
                what: format!(
                    "the model's upgrade to opset {to} (needed for per-channel scales) changes its outputs: {}; re-export the model at opset {to} or later, or set perChannel: false",
                    check.describe()
                ),
            },
        });
    }
    ui.stage(&check.describe());
    Ok(Some(check))
}

/// Adds the check's figures to the report of the pass that upgraded the graph.
pub fn annotate(passes: &mut [crate::report::PassReport], check: &OpsetCheck) {
    for r in passes {
        if r.description.contains("graph upgraded from opset") {
            r.description.push_str(&format!(" ({})", check.describe()));
        }
    }
}
