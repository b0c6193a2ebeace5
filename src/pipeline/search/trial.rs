//! One trial: a candidate built from the recipe and a form (some layers left in float),
//! scored on every row, judged on every check but latency, and timed beside the original once
//! it passes the rest; all through the pipeline's stages.

use super::choose::{latency_text, slower_than_original, verdict_text};
use super::{SIZE_TIE, SLOWER_MARGIN, Search, Trial};
use crate::api::{
    Check, CheckId, Fp16Spec, Metrics, PassSpec, SearchForm, SearchObjective, Verdict,
};
use crate::pipeline::{
    Candidate, Error, Result, build_candidate, decide, evaluate_outputs, measure_latency,
};
use crate::report::TrialReport;
use crate::ui::Ui;
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

impl Search<'_> {
    /// Measures latency beside the original and judges every check. Without
    /// `maxLatencyRatio`, a candidate measurably slower than the original fails
    /// [`super::NOT_SLOWER`].
    pub(super) fn latency(&mut self, t: &mut Trial) -> Result<()> {
        let started = Instant::now();
        t.baseline = measure_latency(&t.candidate, self.base, &mut t.metrics, &self.ui.inner())?;
        self.report.budget.latency.add(started);
        t.latency_measured = true;
        t.decision = decide(&self.spec.thresholds, &t.baseline, &t.metrics, &t.candidate)?;
        if self.spec.thresholds.max_latency_ratio.is_none()
            && let Some((slower, low)) = slower_than_original(&t.metrics, &t.baseline)
        {
            t.decision.checks.push(Check {
                name: CheckId::NotSlower,
                value: low,
                limit: 1.0 + SLOWER_MARGIN,
                passed: !slower,
                interval: None,
                note: None,
            });
            if slower {
                t.decision.verdict = Verdict::Rejected;
                if t.acc_ok {
                    self.slower += 1;
                }
            }
        }
        t.passed = t.decision.verdict == Verdict::Passed;
        let r = &mut self.report.trials[t.index];
        r.latency_ratio = t.metrics.latency_ratio.map(|m| {
            [
                m,
                t.metrics.latency_ratio_low.unwrap_or(m),
                t.metrics.latency_ratio_high.unwrap_or(m),
            ]
        });
        r.checks = t.decision.checks.clone();
        r.passed = t.passed;
        self.ui.stage(&format!(
            "{:>5}  latency {} of the original: {}",
            t.index,
            latency_text(&t.metrics),
            verdict_text(&t.decision),
        ));
        Ok(())
    }

    /// The recipe's own passes, then the form with `float` left in float; in a mixed search
    /// an fp16 pass stores those layers' weights in float16. Returns the recipe and the fp16
    /// tensors.
    pub(super) fn recipe(
        &self,
        form: SearchForm,
        float: &[String],
    ) -> (Vec<PassSpec>, Vec<String>) {
        let mut recipe = self.spec.passes.clone();
        recipe.push(super::forms::pass(form, self.s, float));
        let mut fp16 = Vec::new();
        if self.mixed && form != SearchForm::Fp16 && !float.is_empty() {
            let layers = self.layers.iter().find(|(f, _)| *f == form);
            let mut seen = HashSet::new();
            for l in layers.map(|(_, l)| l.as_slice()).unwrap_or_default() {
                if float.contains(&l.key) {
                    fp16.extend(l.tensors.iter().filter(|t| seen.insert(*t)).cloned());
                }
            }
            if !fp16.is_empty() {
                recipe.push(PassSpec::Fp16(Fp16Spec {
                    min_elements: Some(1),
                    exclude_tensors: Vec::new(),
                    tensors: fp16.clone(),
                }));
            }
        }
        (recipe, fp16)
    }

    pub(super) fn build(
        &self,
        form: SearchForm,
        float: &[String],
        dir: &Path,
    ) -> Result<(Candidate, Vec<PassSpec>, Vec<String>)> {
        let (recipe, fp16) = self.recipe(form, float);
        let calibration = (form == SearchForm::Static)
            .then_some(self.calibration.as_ref())
            .flatten();
        let c = build_candidate(
            &self.base.model,
            &recipe,
            self.target,
            calibration,
            dir,
            &Ui::quiet(),
        )?;
        Ok((c, recipe, fp16))
    }

    /// Builds and scores one candidate on every row (latency not yet), and logs it. `None`
    /// when the budget is spent, or the candidate cannot win (then it is logged as skipped).
    pub(super) fn trial(
        &mut self,
        form: SearchForm,
        float: Vec<String>,
        kind: &'static str,
    ) -> Result<Option<Trial>> {
        if !self.allow_trial() {
            return Ok(None);
        }
        let started = Instant::now();
        let index = self.report.trials.len();
        let dir = self.dir.join(format!("trial-{index}"));
        let (candidate, recipe, fp16) = self.build(form, &float, &dir)?;
        let changed = candidate.tensors_changed();
        let cannot_win = match (self.smallest_passing(), self.s.objective) {
            (Some(b), SearchObjective::Smallest)
                if kind == "form"
                    && candidate.bytes as f64 > b.candidate.bytes as f64 * (1.0 + SIZE_TIE) =>
            {
                Some(format!(
                    "{} bytes as a whole: more than {}% larger than trial {} ({} bytes), which passed",
                    candidate.bytes,
                    SIZE_TIE * 100.0,
                    b.index,
                    b.candidate.bytes
                ))
            }
            _ => None,
        };
        let reverted_to =
            (!float.is_empty()).then_some(if fp16.is_empty() { "fp32" } else { "fp16" });
        if changed == 0 || cannot_win.is_some() {
            let note = cannot_win.unwrap_or_else(|| {
                "changes no weight of this model (see the skipped reasons of a fixed recipe)".into()
            });
            self.ui
                .stage(&format!("{index:>5}  {:<10} skipped: {note}", form.name()));
            self.report.trials.push(TrialReport {
                index,
                form: form.name(),
                kind: "skipped",
                float_layers: float,
                reverted_to,
                tensors_compressed: changed,
                bytes: candidate.bytes,
                note: Some(note),
                seconds: started.elapsed().as_secs_f64(),
                ..Default::default()
            });
            if changed == 0 && self.unchanged.is_none() {
                self.unchanged = Some((form, candidate, recipe));
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            self.spent(kind, started);
            return Ok(None);
        }
        let metrics = evaluate_outputs(&candidate, self.base, &self.ui.inner())?;
        let mut t = self.judged(index, form, candidate, metrics, recipe, float)?;
        t.fp16_tensors = fp16;
        self.report.trials.push(TrialReport {
            index,
            form: form.name(),
            kind,
            float_layers: t.float_layers.clone(),
            reverted_to,
            tensors_compressed: changed,
            bytes: t.candidate.bytes,
            ratio: t.decision.ratio,
            accuracy_drop: t.decision.accuracy_drop,
            agreement: t.metrics.agreement,
            cosine_similarity: t.metrics.cosine_similarity,
            latency_ratio: None,
            checks: t.decision.checks.clone(),
            passed: t.passed,
            note: None,
            seconds: started.elapsed().as_secs_f64(),
        });
        self.spent(kind, started);
        let opt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        self.ui.stage(&format!(
            "{index:>5}  {:<10} {:<9} {:>5} {:>6.2}x {:>9} {:>9} {:>8}  {}",
            form.name(),
            kind,
            t.float_layers.len(),
            t.decision.ratio,
            opt(t.decision.accuracy_drop, 4),
            opt(t.metrics.agreement, 4),
            opt(t.metrics.cosine_similarity, 4),
            verdict_text(&t.decision),
        ));
        Ok(Some(t))
    }

    /// Books a trial's time to its phase.
    pub(super) fn spent(&mut self, kind: &str, started: Instant) {
        let b = &mut self.report.budget;
        match kind {
            "form" => b.whole_forms.add(started),
            _ => b.fallback.add(started),
        }
    }

    /// Judges a scored candidate on every check but latency (measured later, and only for
    /// candidates that pass the rest).
    pub(super) fn judged(
        &self,
        index: usize,
        form: SearchForm,
        candidate: Candidate,
        metrics: Metrics,
        recipe: Vec<PassSpec>,
        float_layers: Vec<String>,
    ) -> Result<Trial> {
        let mut t = self.spec.thresholds.clone();
        t.max_latency_ratio = None;
        let decision = decide(&t, &self.base.metrics, &metrics, &candidate)?;
        let acc_ok = decision.verdict == Verdict::Passed;
        Ok(Trial {
            index,
            form,
            candidate,
            metrics,
            baseline: self.base.metrics.clone(),
            decision,
            recipe,
            float_layers,
            fp16_tensors: Vec::new(),
            acc_ok,
            // Latency is judged once measured (every candidate that may win is measured).
            passed: false,
            latency_measured: false,
        })
    }

    /// When no form changed a weight: the unchanged candidate, judged like a fixed recipe that
    /// changed nothing (Rejected by tensorsCompressed).
    pub(super) fn unchanged_trial(&mut self) -> Result<Trial> {
        let Some((form, candidate, recipe)) = self.unchanged.take() else {
            return Err(Error::Pass {
                index: self.spec.passes.len(),
                name: "search",
                source: crate::passes::Error::Unsupported {
                    pass: "search",
                    what: self.nothing_scored(),
                },
            });
        };
        let metrics = evaluate_outputs(&candidate, self.base, self.ui)?;
        let index = self.report.trials.len();
        self.report.closest = Some(index);
        let t = self.judged(index, form, candidate, metrics, recipe, Vec::new())?;
        self.report.trials.push(TrialReport {
            index,
            form: form.name(),
            kind: "form",
            tensors_compressed: 0,
            bytes: t.candidate.bytes,
            ratio: t.decision.ratio,
            checks: t.decision.checks.clone(),
            note: Some("no form changed any weight of this model".into()),
            ..Default::default()
        });
        Ok(t)
    }
}
