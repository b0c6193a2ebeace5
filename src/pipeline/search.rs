//! `spec.search`: several compressed forms against one fetch and one baseline, a per-layer
//! fallback where a form misses the gate, and the best candidate that passes every check.
//!
//! For each form, in the spec's order:
//! 1. the form as a whole (every layer it applies to) is built and scored on every row;
//! 2. if it misses a check other than latency, each of its layers is probed alone (only that
//!    layer compressed, the rest float) on the evaluation set's first `sensitivitySamples`
//!    rows, and the layers are ranked by the output's signal-to-noise ratio, worst first;
//! 3. bisection over k, the number of worst layers reverted to float (up to
//!    `maxFloatLayers`): the smallest passing k it finds, in about log2(maxFloatLayers) trials;
//! 4. when latency matters (`maxLatencyRatio`, or objective `fastest`), a passing candidate's
//!    latency is measured interleaved with the original's; an integer form that is slower
//!    than allowed gets one more trial with its convolutions left in float.
//!
//! The winner is the best passing trial by the objective. When none passes, the closest
//! (smallest summed relative miss over its failed checks) is reported and judged Rejected:
//! nothing is promoted. Forms, layers and rows are taken in a fixed order and ties break by
//! order, so the same inputs and spec give the same result.

use super::{
    Baseline, Calibration, Candidate, Chosen, Error, Inputs, Result, build_candidate,
    calibrate_for, evaluate_outputs, measure_latency, probe_outputs,
};
use crate::api::{
    CompressionJobSpec, Metrics, PassSpec, SearchForm, SearchObjective, SearchSpec, SearchSummary,
    TargetCpu, Verdict,
};
use crate::error::error_chain;
use crate::gate;
use crate::report::{FormSensitivity, LayerSensitivity, SearchReport, TrialReport};
use crate::ui::Ui;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const DEFAULT_MAX_TRIALS: u32 = 16;
pub const DEFAULT_MAX_SECONDS: u32 = 3600;
pub const DEFAULT_SENSITIVITY_SAMPLES: u32 = 64;
/// Sensitive layers named in the status (the report has them all).
const SENSITIVE_IN_STATUS: usize = 5;
/// Added to the miss of a trial that fails a quality check: any such trial ranks behind every
/// trial that misses only latency.
const QUALITY_MISS: f64 = 1e6;
/// An output identical to the original's has infinite SNR; JSON has no infinity.
const SQNR_CAP_DB: f64 = 300.0;

/// Runs the search and returns the candidate to publish: the best that passed, or the closest
/// (judged Rejected) when none did.
pub fn search(
    inputs: &Inputs,
    base: &Baseline,
    spec: &CompressionJobSpec,
    s: &SearchSpec,
    scratch: &Path,
    ui: &Ui,
) -> Result<Chosen> {
    let forms = s.forms.clone().unwrap_or_else(|| SearchForm::ALL.to_vec());
    let mut run = Search {
        inputs,
        base,
        spec,
        s,
        ui,
        dir: scratch.join("search"),
        target: spec.target.clone().unwrap_or_default().cpu,
        started: Instant::now(),
        needs_latency: spec.thresholds.max_latency_ratio.is_some()
            || s.objective == SearchObjective::Fastest,
        calibration: None,
        report: SearchReport {
            objective: s.objective,
            forms: forms.iter().map(|f| f.name()).collect(),
            max_trials: s.max_trials.unwrap_or(DEFAULT_MAX_TRIALS),
            max_seconds: s.max_seconds.unwrap_or(DEFAULT_MAX_SECONDS),
            ..Default::default()
        },
        probes: 0,
        best: None,
        closest: None,
        unchanged: None,
    };
    ui.stage(&format!(
        "search: forms {}, objective {}, budget {} trials / {} s",
        run.report.forms.join(", "),
        objective_name(s.objective),
        run.report.max_trials,
        run.report.max_seconds
    ));
    ui.stage(&format!(
        "{:>5}  {:<10} {:<9} {:>5} {:>7} {:>9} {:>9} {:>8}  verdict",
        "trial", "form", "kind", "float", "ratio", "accDrop", "agree", "cosine"
    ));
    for form in forms {
        if run.report.stopped_by.is_some() {
            break;
        }
        match run.form(form) {
            Ok(()) => {}
            // A form this model cannot take (a pass refuses it, ONNX Runtime cannot load the
            // result) is one failed option, not a failed search.
            Err(e @ (Error::Pass { .. } | Error::Eval { .. })) => {
                let note = format!("form failed: {}", error_chain(&e));
                ui.stage(&format!("search: {} {note}", form.name()));
                run.skipped(form, note);
            }
            Err(e) => return Err(e),
        }
    }
    run.finish()
}

fn objective_name(o: SearchObjective) -> &'static str {
    match o {
        SearchObjective::Smallest => "smallest",
        SearchObjective::Fastest => "fastest",
    }
}

/// One evaluated candidate.
struct Trial {
    index: usize,
    form: SearchForm,
    candidate: Candidate,
    metrics: Metrics,
    /// The baseline's metrics (with latency once it is measured beside this candidate).
    baseline: Metrics,
    decision: gate::Decision,
    recipe: Vec<PassSpec>,
    float_layers: Vec<String>,
    /// Every check but latency passed.
    acc_ok: bool,
    /// Every check passed (latency included where it is a criterion).
    passed: bool,
    latency_measured: bool,
}

/// A layer a form compressed: the key that excludes it (node name; tensor name for fp16)
/// and its op.
struct Layer {
    key: String,
    op: String,
}

struct Search<'a> {
    inputs: &'a Inputs,
    base: &'a Baseline,
    spec: &'a CompressionJobSpec,
    s: &'a SearchSpec,
    ui: &'a Ui,
    dir: PathBuf,
    target: TargetCpu,
    started: Instant,
    needs_latency: bool,
    calibration: Option<Calibration>,
    report: SearchReport,
    probes: u32,
    best: Option<Trial>,
    closest: Option<(f64, Trial)>,
    /// The first candidate that changed nothing (only used when no form applies at all).
    unchanged: Option<(SearchForm, Candidate, Vec<PassSpec>)>,
}

impl Search<'_> {
    fn out_of_time(&mut self) -> bool {
        if self.report.stopped_by.is_none()
            && self.started.elapsed().as_secs_f64() >= f64::from(self.report.max_seconds)
        {
            self.report.stopped_by = Some("maxSeconds".into());
        }
        self.report.stopped_by.is_some()
    }

    /// Whether another full trial fits the budget (and says why not when it does not).
    fn allow_trial(&mut self) -> bool {
        if self.out_of_time() {
            return false;
        }
        if self.report.trials.len() >= self.report.max_trials as usize {
            self.report.stopped_by = Some("maxTrials".into());
            return false;
        }
        true
    }

    fn form(&mut self, form: SearchForm) -> Result<()> {
        if form == SearchForm::Static && self.calibration.is_none() {
            let recipe = self.recipe(form, &[]);
            let c = calibrate_for(
                self.inputs,
                self.base,
                self.spec,
                &recipe,
                recipe.len() - 1,
                &self.dir.join("calibration"),
                self.ui,
            )?;
            self.calibration = Some(c);
        }
        let Some(t) = self.trial(form, Vec::new(), "form")? else {
            return Ok(());
        };
        if t.acc_ok {
            return self.settle(t);
        }
        // The whole form misses. Reverting layers to float can only help a quality check
        // (it makes the candidate larger): without one failing, there is nothing to search.
        let quality_missed = t
            .decision
            .checks
            .iter()
            .any(|c| !c.passed && gate::is_quality(&c.name));
        if !quality_missed {
            self.consider(t);
            return Ok(());
        }
        // Rank its layers and revert the worst.
        let layers = layers_of(form, &t.candidate);
        let max_float = match self.s.max_float_layers {
            Some(m) => m as usize,
            None => layers.len().div_ceil(2),
        }
        .min(layers.len().saturating_sub(1));
        self.consider(t);
        if max_float == 0 {
            return Ok(());
        }
        let Some(ranked) = self.sensitivity(form, &layers)? else {
            return Ok(());
        };
        let Some(mut pass) = self.trial(form, ranked[..max_float].to_vec(), "fallback")? else {
            return Ok(());
        };
        if !pass.acc_ok {
            self.consider(pass);
            return Ok(());
        }
        // Bisection: `lo` float layers fail, `pass`'s count passes.
        let (mut lo, mut hi) = (0, max_float);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let Some(t) = self.trial(form, ranked[..mid].to_vec(), "fallback")? else {
                break;
            };
            if t.acc_ok {
                discard(std::mem::replace(&mut pass, t));
                hi = mid;
            } else {
                self.consider(t);
                lo = mid;
            }
        }
        self.settle(pass)
    }

    /// A trial that passed every check but latency: latency measured where it matters, and
    /// an integer form that is too slow tried once more with its convolutions in float.
    fn settle(&mut self, mut t: Trial) -> Result<()> {
        if !self.needs_latency {
            self.consider(t);
            return Ok(());
        }
        self.latency(&mut t)?;
        if !t.passed && matches!(t.form, SearchForm::Static | SearchForm::Dynamic) {
            let convs: Vec<String> = layers_of(t.form, &t.candidate)
                .into_iter()
                .filter(|l| matches!(l.op.as_str(), "Conv" | "ConvTranspose"))
                .map(|l| l.key)
                .collect();
            if !convs.is_empty() {
                let mut float = t.float_layers.clone();
                float.extend(convs);
                let form = t.form;
                self.consider(t);
                if let Some(mut t2) = self.trial(form, float, "latency")? {
                    if t2.acc_ok {
                        self.latency(&mut t2)?;
                    }
                    self.consider(t2);
                }
                return Ok(());
            }
        }
        self.consider(t);
        Ok(())
    }

    /// Measures latency beside the original and judges every check.
    fn latency(&mut self, t: &mut Trial) -> Result<()> {
        t.baseline = measure_latency(&t.candidate, self.base, &mut t.metrics, &self.ui.inner())?;
        t.latency_measured = true;
        t.decision = gate::decide(
            &self.spec.thresholds,
            &t.baseline,
            &t.metrics,
            t.candidate.tensors_changed(),
        )?;
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
            "{:>5}  latency {:.2}x [{:.2}, {:.2}] of the original: {}",
            t.index,
            t.metrics.latency_ratio.unwrap_or(0.0),
            t.metrics.latency_ratio_low.unwrap_or(0.0),
            t.metrics.latency_ratio_high.unwrap_or(0.0),
            verdict_text(&t.decision),
        ));
        Ok(())
    }

    /// The recipe's own passes, then the form with `float` left in float.
    fn recipe(&self, form: SearchForm, float: &[String]) -> Vec<PassSpec> {
        let mut recipe = self.spec.passes.clone();
        recipe.push(form.pass(self.s, float));
        recipe
    }

    fn build(
        &self,
        form: SearchForm,
        float: &[String],
        dir: &Path,
    ) -> Result<(Candidate, Vec<PassSpec>)> {
        let recipe = self.recipe(form, float);
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
        Ok((c, recipe))
    }

    /// Builds and scores one candidate on every row (latency not yet), and logs it. `None`
    /// when the budget is spent, or the candidate cannot win (then it is logged as skipped).
    fn trial(
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
        let (candidate, recipe) = self.build(form, &float, &dir)?;
        let changed = candidate.tensors_changed();
        let cannot_win = match (&self.best, self.s.objective) {
            (Some(b), SearchObjective::Smallest) if kind == "form" => {
                (candidate.bytes >= b.candidate.bytes).then(|| {
                    format!(
                        "{} bytes as a whole cannot be smaller than trial {} ({} bytes), which passed",
                        candidate.bytes, b.index, b.candidate.bytes
                    )
                })
            }
            _ => None,
        };
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
            return Ok(None);
        }
        let metrics = evaluate_outputs(&candidate, self.base, &self.ui.inner())?;
        let t = self.judged(index, form, candidate, metrics, recipe, float)?;
        self.report.trials.push(TrialReport {
            index,
            form: form.name(),
            kind,
            float_layers: t.float_layers.clone(),
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

    /// Judges a scored candidate on every check but latency (measured later, and only for
    /// candidates that pass the rest).
    fn judged(
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
        let decision = gate::decide(
            &t,
            &self.base.metrics,
            &metrics,
            candidate.tensors_changed(),
        )?;
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
            acc_ok,
            // Without a latency criterion the checks above are all of them.
            passed: acc_ok && self.spec.thresholds.max_latency_ratio.is_none(),
            latency_measured: false,
        })
    }

    /// Probes each layer alone on the first rows and ranks them, worst first. `None` when the
    /// time budget ends first.
    fn sensitivity(&mut self, form: SearchForm, layers: &[Layer]) -> Result<Option<Vec<String>>> {
        let rows = self
            .s
            .sensitivity_samples
            .unwrap_or(DEFAULT_SENSITIVITY_SAMPLES) as usize;
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
            if self.out_of_time() {
                return Ok(None);
            }
            let float: Vec<String> = layers
                .iter()
                .filter(|l| l.key != layer.key)
                .map(|l| l.key.clone())
                .collect();
            let dir = self.dir.join(format!("probe-{}", self.probes));
            let (candidate, _) = self.build(form, &float, &dir)?;
            let out = probe_outputs(&candidate, self.base, rows)?;
            let _ = std::fs::remove_dir_all(&dir);
            let reference = &self.base.outputs.values[..out.values.len()];
            used_rows = out.values.len() / out.per_sample.max(1);
            measured.push(LayerSensitivity {
                layer: layer.key.clone(),
                op: layer.op.clone(),
                output_sqnr_db: sqnr_db(reference, &out.values),
                flips: out.classes.map(|c| flip_rate(reference, &out.values, c)),
            });
            self.probes += 1;
            bar.set(i as u64 + 1, Some(layers.len() as u64));
        }
        bar.finish(layers.len() as u64);
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
        let ranked = measured.iter().map(|l| l.layer.clone()).collect();
        self.report.sensitivity.push(FormSensitivity {
            form: form.name(),
            samples: used_rows,
            layers: measured,
        });
        Ok(Some(ranked))
    }

    /// Keeps `t` if it is the best passing or the closest failing trial so far; its files are
    /// removed otherwise.
    fn consider(&mut self, t: Trial) {
        if t.passed {
            match self.best.take() {
                Some(b) if !self.better(&t, &b) => {
                    discard(t);
                    self.best = Some(b);
                }
                other => {
                    if let Some(b) = other {
                        discard(b);
                    }
                    self.best = Some(t);
                }
            }
        } else {
            // A trial that misses only latency is closer than one that misses quality (whose
            // latency may not even have been measured): rank by that first, then by the miss.
            let m = miss(&t.decision) + if t.acc_ok { 0.0 } else { QUALITY_MISS };
            match self.closest.take() {
                Some((cm, c)) if cm <= m => {
                    discard(t);
                    self.closest = Some((cm, c));
                }
                other => {
                    if let Some((_, c)) = other {
                        discard(c);
                    }
                    self.closest = Some((m, t));
                }
            }
        }
    }

    /// Whether `a` beats `b` under the objective. Latency counts only when the two intervals
    /// do not overlap: a candidate is faster with confidence, or not faster.
    fn better(&self, a: &Trial, b: &Trial) -> bool {
        let faster = |x: &Metrics, y: &Metrics| match (x.latency_ratio_high, y.latency_ratio_low) {
            (Some(xh), Some(yl)) => xh < yl,
            _ => false,
        };
        match self.s.objective {
            SearchObjective::Smallest => {
                a.candidate.bytes < b.candidate.bytes
                    || (a.candidate.bytes == b.candidate.bytes && faster(&a.metrics, &b.metrics))
            }
            SearchObjective::Fastest => {
                faster(&a.metrics, &b.metrics)
                    || (!faster(&b.metrics, &a.metrics) && a.candidate.bytes < b.candidate.bytes)
            }
        }
    }

    fn skipped(&mut self, form: SearchForm, note: String) {
        let index = self.report.trials.len();
        self.report.trials.push(TrialReport {
            index,
            form: form.name(),
            kind: "skipped",
            note: Some(note),
            ..Default::default()
        });
    }

    /// Why no candidate was scored: the budget ended, or every form failed (the first
    /// failure named: a NaN weight says NaN).
    fn nothing_scored(&self) -> String {
        let failed: Vec<String> = self
            .report
            .trials
            .iter()
            .filter(|t| t.kind == "skipped")
            .map(|t| format!("{} {}", t.form, t.note.as_deref().unwrap_or("failed")))
            .collect();
        match (&self.report.stopped_by, failed.first()) {
            (None, Some(first)) => format!(
                "every form failed before a candidate was scored; {first}{}",
                match failed.len() {
                    1 => String::new(),
                    n => format!(" (and {} more forms failed)", n - 1),
                }
            ),
            (stopped, _) => format!(
                "the budget ({}) ended before any candidate was scored: raise spec.search.maxSeconds or maxTrials",
                stopped.as_deref().unwrap_or("none")
            ),
        }
    }

    /// The chosen (or closest) trial with latency measured and every check judged.
    fn finish(mut self) -> Result<Chosen> {
        let winner = match (self.best.take(), self.closest.take()) {
            (Some(b), closest) => {
                if let Some((_, c)) = closest {
                    discard(c);
                }
                self.report.chosen = Some(b.index);
                Some(b)
            }
            (None, Some((_, c))) => {
                self.report.closest = Some(c.index);
                Some(c)
            }
            (None, None) => None,
        };
        let mut t = match winner {
            Some(t) => t,
            None => {
                // No form changed a weight: the unchanged candidate, judged like a fixed
                // recipe that changed nothing (Rejected by tensorsCompressed).
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
                t
            }
        };
        if !t.latency_measured {
            self.latency(&mut t)?;
        }
        self.report.seconds = self.started.elapsed().as_secs_f64();
        let sensitive: Vec<String> = self
            .report
            .sensitivity
            .iter()
            .find(|s| s.form == t.form.name())
            .or(self.report.sensitivity.first())
            .map(|s| {
                s.layers
                    .iter()
                    .take(SENSITIVE_IN_STATUS)
                    .map(|l| shorten(&l.layer))
                    .collect()
            })
            .unwrap_or_default();
        let evaluated = self
            .report
            .trials
            .iter()
            .filter(|r| r.kind != "skipped")
            .count();
        let summary = SearchSummary {
            trials: evaluated as u32,
            probes: self.probes,
            form: Some(t.form.name().into()),
            trial: Some(t.index as u32),
            float_layers: t.float_layers.len() as u32,
            stopped_by: self.report.stopped_by.clone(),
            sensitive_layers: sensitive,
        };
        self.ui.stage(&match self.report.chosen {
            Some(i) => format!(
                "search: chose trial {i} ({}, {} layers in float, {:.2}x) after {} trials and {} probes in {:.0} s",
                t.form.name(),
                t.float_layers.len(),
                t.decision.ratio,
                evaluated,
                self.probes,
                self.report.seconds
            ),
            None => format!(
                "search: no candidate passed every check{}; closest: trial {} ({}), which missed {}",
                self.report
                    .stopped_by
                    .as_deref()
                    .map(|b| format!(" before the budget ({b}) ended it"))
                    .unwrap_or_default(),
                t.index,
                t.form.name(),
                verdict_text(&t.decision)
            ),
        });
        let calibration = (t.form == SearchForm::Static)
            .then(|| self.calibration.as_ref().map(|c| c.report.clone()))
            .flatten();
        Ok(Chosen {
            candidate: t.candidate,
            metrics: t.metrics,
            baseline: t.baseline,
            decision: t.decision,
            recipe: t.recipe,
            calibration,
            search: Some((self.report, summary)),
        })
    }
}

/// The layers the form's pass compressed, in graph order.
fn layers_of(form: SearchForm, c: &Candidate) -> Vec<Layer> {
    let Some(p) = c.passes.last() else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    p.tensors
        .iter()
        .map(|t| Layer {
            key: if form == SearchForm::Fp16 {
                t.tensor.clone()
            } else {
                t.node.clone()
            },
            op: t.op.clone(),
        })
        .filter(|l| seen.insert(l.key.clone()))
        .collect()
}

/// A layer name for the status: at most 120 bytes (node names can be paths).
fn shorten(name: &str) -> String {
    if name.len() <= 120 {
        return name.into();
    }
    let cut = (0..=117)
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &name[..cut])
}

fn discard(t: Trial) {
    if let Some(dir) = t.candidate.path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Summed relative miss of the failed checks (0 for a pass): how far a trial is from passing.
fn miss(d: &gate::Decision) -> f64 {
    d.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| (c.value - c.limit).abs() / c.limit.abs().max(1e-3))
        .sum()
}

fn verdict_text(d: &gate::Decision) -> String {
    let failed: Vec<String> = d
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {:.4} (limit {})", c.name, c.value, c.limit))
        .collect();
    if failed.is_empty() {
        "pass".into()
    } else {
        failed.join(", ")
    }
}

/// 10·log10(Σ r² / Σ (r − c)²) over the compared outputs (`math::sqnr_db`), capped: an
/// exact output is the cap, a silent reference with noise its negative.
pub fn sqnr_db(reference: &[f32], candidate: &[f32]) -> f64 {
    let (mut signal, mut noise) = (0f64, 0f64);
    for (&r, &c) in reference.iter().zip(candidate) {
        let (r, c) = (f64::from(r), f64::from(c));
        signal += r * r;
        noise += (r - c) * (r - c);
    }
    match crate::passes::math::sqnr_db((signal, noise)) {
        Some(db) => db.clamp(-SQNR_CAP_DB, SQNR_CAP_DB),
        None if noise == 0.0 => SQNR_CAP_DB,
        None => -SQNR_CAP_DB,
    }
}

/// Fraction of rows whose top-1 class differs.
fn flip_rate(reference: &[f32], candidate: &[f32], classes: usize) -> f64 {
    let a = crate::eval::metrics::top1(reference, classes);
    let b = crate::eval::metrics::top1(candidate, classes);
    1.0 - crate::eval::metrics::agreement(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_is_infinite_only_in_name() {
        assert_eq!(sqnr_db(&[1.0, 2.0], &[1.0, 2.0]), SQNR_CAP_DB);
        let s = sqnr_db(&[1.0, 0.0], &[1.1, 0.0]);
        assert!((s - 20.0).abs() < 1e-4, "{s}");
    }

    #[test]
    fn a_passing_decision_misses_by_nothing() {
        use crate::api::Check;
        let mut d = gate::Decision {
            verdict: Verdict::Passed,
            checks: vec![Check {
                name: "maxAccuracyDrop".into(),
                value: 0.004,
                limit: 0.005,
                passed: true,
                interval: None,
                note: None,
            }],
            ratio: 3.0,
            accuracy_drop: Some(0.004),
        };
        assert_eq!(miss(&d), 0.0);
        d.checks[0].value = 0.01;
        d.checks[0].passed = false;
        assert!((miss(&d) - 1.0).abs() < 1e-9);
    }
}
