//! Phase 2's ranking: each layer of a form probed alone (only it compressed, the rest
//! float) on the first rows, scored by the output's signal-to-noise ratio.

use super::{Layer, SENSITIVE_IN_STATUS, SQNR_CAP_DB, Search};
use crate::api::SearchForm;
use crate::pipeline::{Error, Result, build_candidate, probe_outputs};
use crate::report::{FormSensitivity, LayerSensitivity};
use crate::ui::Ui;
use std::collections::HashSet;
use std::time::Instant;

impl Search<'_> {
    /// Probes each layer alone on the first rows and ranks them, worst first; layers the
    /// probes' share of the budget left unprobed rank last, in graph order. `None` when no
    /// layer could be probed.
    pub(super) fn sensitivity(
        &mut self,
        form: SearchForm,
        layers: &[Layer],
    ) -> Result<Option<Vec<String>>> {
        let rows = self.s.sensitivity_samples as usize;
        self.ui.stage(&format!(
            "search: {} misses the thresholds as a whole; probing its {} layers one at a time on {} rows",
            form.name(),
            layers.len(),
            rows
        ));
        let bar = self.ui.bar("sensitivity", false);
        let mut measured = Vec::with_capacity(layers.len());
        let mut used_rows = 0;
        for (i, layer) in layers.iter().enumerate() {
            if self.out_of_time() || self.probes_spent() {
                break;
            }
            let started = Instant::now();
            let (m, n) = self.probe(form, layers, layer, rows)?;
            measured.push(m);
            used_rows = n;
            self.probes += 1;
            self.report.budget.probes.add(started);
            bar.set(i as u64 + 1, Some(layers.len() as u64));
        }
        bar.finish(measured.len() as u64);
        if measured.is_empty() {
            return Ok(None);
        }
        if measured.len() < layers.len() {
            let note = format!(
                "{}: probes stopped after {} of {} layers ({}); the rest rank after them, in graph order",
                form.name(),
                measured.len(),
                layers.len(),
                self.report.stopped_by.clone().unwrap_or_else(|| format!(
                    "their share of maxSeconds, {:.0} s",
                    self.report.budget.probe_seconds_limit
                ))
            );
            self.ui.stage(&format!("search: {note}"));
            self.report.notes.push(note);
        }
        // Stable: equal scores keep the graph's order.
        measured.sort_by(|a, b| a.output_sqnr_db.total_cmp(&b.output_sqnr_db));
        self.ui.stage(&format!(
            "search: most sensitive {}",
            measured
                .iter()
                .take(SENSITIVE_IN_STATUS)
                .map(|l| format!("{} ({:.1} dB)", l.layer, l.output_sqnr_db))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut ranked: Vec<String> = measured.iter().map(|l| l.layer.clone()).collect();
        let probed: HashSet<String> = ranked.iter().cloned().collect();
        ranked.extend(
            layers
                .iter()
                .filter(|l| !probed.contains(&l.key))
                .map(|l| l.key.clone()),
        );
        self.report.sensitivity.push(FormSensitivity {
            form: form.name(),
            samples: used_rows,
            layers: measured,
        });
        Ok(Some(ranked))
    }

    /// One probe: only `layer` compressed, the rest of the model float, on the first `rows`
    /// rows. Its files are removed before it returns; its outputs are dropped once scored.
    pub(super) fn probe(
        &self,
        form: SearchForm,
        layers: &[Layer],
        layer: &Layer,
        rows: usize,
    ) -> Result<(LayerSensitivity, usize)> {
        let float: Vec<String> = layers
            .iter()
            .filter(|l| l.key != layer.key)
            .map(|l| l.key.clone())
            .collect();
        let dir = self.dir.join(format!("probe-{}", self.probes));
        // The form's pass alone, without a mixed fp16 pass: the rest stays fp32.
        let mut recipe = self.spec.passes.clone();
        recipe.push(super::forms::pass(form, self.s, &float));
        let calibration = (form == SearchForm::Static)
            .then_some(self.calibration.as_ref())
            .flatten();
        let candidate = build_candidate(
            &self.base.model,
            &recipe,
            self.target,
            calibration,
            &dir,
            &Ui::quiet(),
        );
        let out = candidate.and_then(|c| probe_outputs(&c, self.base, rows));
        let _ = std::fs::remove_dir_all(&dir);
        let out = out?;
        let (output_sqnr_db, flips) =
            probe_scores(&self.base.outputs.values, &out).map_err(|e| Error::Eval {
                which: "candidate (probe)",
                source: crate::eval::Error::Spill(e),
            })?;
        let m = LayerSensitivity {
            layer: layer.key.clone(),
            op: layer.op.clone(),
            output_sqnr_db,
            flips,
        };
        Ok((m, out.values.len() / out.per_sample.max(1)))
    }

    /// Whether the probes have used their share of `maxSeconds`.
    pub(super) fn probes_spent(&self) -> bool {
        self.report.budget.probes.seconds >= self.report.budget.probe_seconds_limit
    }
}

/// 10·log10(Σ r² / Σ (r − c)²) over the compared outputs (`math::sqnr_db`), capped: an
/// exact output is the cap, a silent reference with noise its negative.
pub fn sqnr_db(reference: &[f32], candidate: &[f32]) -> f64 {
    let mut sn = (0f64, 0f64);
    add_signal_noise(&mut sn, reference, candidate);
    capped_db(sn)
}

pub(super) fn add_signal_noise(sn: &mut (f64, f64), reference: &[f32], candidate: &[f32]) {
    for (&r, &c) in reference.iter().zip(candidate) {
        let (r, c) = (f64::from(r), f64::from(c));
        sn.0 += r * r;
        sn.1 += (r - c) * (r - c);
    }
}

pub(super) fn capped_db((signal, noise): (f64, f64)) -> f64 {
    match crate::passes::math::sqnr_db((signal, noise)) {
        Some(db) => db.clamp(-SQNR_CAP_DB, SQNR_CAP_DB),
        None if noise == 0.0 => SQNR_CAP_DB,
        None => -SQNR_CAP_DB,
    }
}

/// A probe's [`sqnr_db`] against the original's first rows, and the fraction of rows whose
/// top-1 class differs (classes only); read sample by sample, wherever the values are kept.
pub(super) fn probe_scores(
    reference: &crate::eval::values::Values,
    out: &crate::eval::Outputs,
) -> std::io::Result<(f64, Option<f64>)> {
    use crate::eval::metrics::argmax;
    let (per, rows) = (out.per_sample, out.values.len() / out.per_sample.max(1));
    let (mut sn, mut flipped) = ((0f64, 0f64), 0usize);
    crate::eval::values::Values::zip_rows(reference, &out.values, per, rows, |_, r, c| {
        add_signal_noise(&mut sn, r, c);
        if out.classes.is_some() {
            let top = argmax(r);
            if top.is_none() || top != argmax(c) {
                flipped += 1;
            }
        }
    })?;
    let flips = out.classes.map(|_| flipped as f64 / rows.max(1) as f64);
    Ok((capped_db(sn), flips))
}
