//! `spec.search`: several compressed forms against one fetch and one baseline, a per-layer
//! fallback where a form misses the gate, and the best candidate that passes every check.
//!
//! Phase 1, whole forms: every form is built and scored as a whole (one trial each, on every
//! row), forms needing no calibration first, then `static` (its calibration runs first), so a
//! passing answer exists early. Under `smallest`, a form more than 1% larger than a passing one
//! is not scored (it cannot win).
//!
//! Phase 2, per-layer fallback, only for the forms that missed a quality check and could still
//! beat the best passing candidate (smallest first): even with its cheapest layer reverted, the
//! form must stay smaller than that candidate.
//! 1. each layer is probed alone (only that layer compressed, the rest float) on the evaluation
//!    set's first `sensitivitySamples` rows, and the layers are ranked by the output's
//!    signal-to-noise ratio, worst first; probes, all forms together, get at most
//!    `PROBE_SHARE` of `maxSeconds` (layers left unprobed rank after the probed ones);
//! 2. bisection over k, the number of worst layers reverted (up to `maxFloatLayers`, and no
//!    more than keep the candidate smaller than the best passing one): the smallest passing k
//!    it finds, in about log2(k) trials. Where `fp16` is one of the forms, reverted layers are
//!    stored in float16 (a mixed candidate), else in float32.
//!
//! Latency: every candidate that passes the other checks (and could win) is measured
//! interleaved with the original. Without `maxLatencyRatio` a candidate measurably slower than
//! the original is never chosen; an integer form that is too slow gets one more trial with its
//! convolutions left in float.
//!
//! The winner: under `smallest`, the smallest passing trial, unless one within 1% of its size
//! is measurably faster (their latency intervals do not overlap); under `fastest`, the fastest
//! by the same test, the smaller on a tie. When none passes, the closest (smallest summed
//! relative miss over its failed checks) is reported and judged Rejected: nothing is
//! promoted. Forms, layers and rows are taken in a fixed order and ties break by order, so the
//! same inputs and spec give the same result (latency decides only between near-ties).
//!
//! Memory: one candidate's session and outputs at a time; candidates that may still win stay
//! on disk, not in memory.

use super::{
    Baseline, Calibration, Candidate, Chosen, Error, Inputs, Result, build_candidate,
    calibrate_for, evaluate_outputs, measure_latency, probe_outputs,
};
use crate::api::{
    Check, CompressionJobSpec, Fp16Spec, Metrics, PassSpec, SearchForm, SearchObjective,
    SearchSpec, SearchSummary, TargetCpu, Verdict,
};
use crate::error::error_chain;
use crate::gate;
use crate::report::{FormSensitivity, LayerPrecision, LayerSensitivity, SearchReport, TrialReport};
use crate::ui::Ui;
use std::collections::HashSet;
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
/// Probes, all forms together, may take this share of `maxSeconds`: the rest is kept for the
/// fallback trials the ranking is for.
pub const PROBE_SHARE: f64 = 0.5;
/// Under `smallest`, a passing candidate at most this much larger than the smallest passing
/// one wins when it is measurably faster.
pub const SIZE_TIE: f64 = 0.01;
/// Without `maxLatencyRatio`, a candidate is slower than the original (and not chosen) when
/// its whole latency-ratio interval lies above 1 + this: a margin for timer noise.
pub const SLOWER_MARGIN: f64 = 0.02;
/// ... and its median at least this many milliseconds above the original's: on a model that
/// runs in microseconds a call's own overhead is the difference, not the model.
pub const SLOWER_FLOOR_MS: f64 = 0.1;
/// The check a candidate slower than the original fails when no `maxLatencyRatio` is set:
/// the low end of its latency-ratio interval, at most 1 + [`SLOWER_MARGIN`].
pub const NOT_SLOWER: &str = "maxLatencyNotSlower";

/// Whether the gate check `name` measures quality (what reverting a layer can improve).
pub fn is_quality_check(name: &str) -> bool {
    gate::is_quality(name)
}

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
    let forms = cheapest_first(s.forms.clone().unwrap_or_else(|| SearchForm::ALL.to_vec()));
    let max_seconds = s.max_seconds.unwrap_or(DEFAULT_MAX_SECONDS);
    let mut run = Search {
        inputs,
        base,
        spec,
        s,
        ui,
        dir: scratch.join("search"),
        target: spec.target.clone().unwrap_or_default().cpu,
        started: Instant::now(),
        mixed: forms.contains(&SearchForm::Fp16),
        calibration: None,
        report: SearchReport {
            objective: s.objective,
            forms: forms.iter().map(|f| f.name()).collect(),
            max_trials: s.max_trials.unwrap_or(DEFAULT_MAX_TRIALS),
            max_seconds,
            ..Default::default()
        },
        probes: 0,
        layers: Vec::new(),
        missed: Vec::new(),
        passing: Vec::new(),
        closest: None,
        unchanged: None,
        slower: 0,
    };
    run.report.budget.probe_seconds_limit = PROBE_SHARE * f64::from(max_seconds);
    // As a fixed recipe does: before any form relies on an opset upgrade (per-channel
    // scales need 13, int4 21), the upgraded original must give the baseline's outputs.
    let every_form: Vec<PassSpec> = (spec.passes.iter().cloned())
        .chain(forms.iter().map(|f| f.pass(s, &[])))
        .collect();
    let upgrade =
        super::check_opset_upgrade(base, &every_form, run.target, &scratch.join("opset"), ui)?;
    if let Some(check) = &upgrade {
        run.report.notes.push(check.describe());
    }
    ui.stage(&format!(
        "search: forms {} (whole forms first), objective {}, budget {} trials / {} s ({:.0} s for probes)",
        run.report.forms.join(", "),
        objective_name(s.objective),
        run.report.max_trials,
        run.report.max_seconds,
        run.report.budget.probe_seconds_limit
    ));
    ui.stage(&format!(
        "{:>5}  {:<10} {:<9} {:>5} {:>7} {:>9} {:>9} {:>8}  verdict",
        "trial", "form", "kind", "float", "ratio", "accDrop", "agree", "cosine"
    ));
    for &form in &forms {
        if run.report.stopped_by.is_some() {
            break;
        }
        let r = run.whole(form);
        run.tolerate(form, r)?;
    }
    // The forms that missed, most promising first: under `smallest`, the smallest as a whole.
    let mut missed = std::mem::take(&mut run.missed);
    if s.objective == SearchObjective::Smallest {
        missed.sort_by_key(|m| m.bytes);
    }
    for m in missed {
        if run.report.stopped_by.is_some() {
            break;
        }
        let form = m.form;
        let r = run.fallback(m);
        run.tolerate(form, r)?;
    }
    let mut chosen = run.finish()?;
    if let Some(check) = &upgrade {
        super::opset_check::annotate(&mut chosen.candidate.passes, check);
    }
    Ok(chosen)
}

/// The forms in the spec's order, `static` (which calibrates first) after the others.
fn cheapest_first(forms: Vec<SearchForm>) -> Vec<SearchForm> {
    let (calibrated, plain): (Vec<_>, Vec<_>) =
        forms.into_iter().partition(|f| *f == SearchForm::Static);
    plain.into_iter().chain(calibrated).collect()
}

fn objective_name(o: SearchObjective) -> &'static str {
    match o {
        SearchObjective::Smallest => "smallest",
        SearchObjective::Fastest => "fastest",
    }
}

/// The precision a form stores its compressed weights in.
fn precision(form: SearchForm) -> &'static str {
    match form {
        SearchForm::Int4 => "int4",
        SearchForm::Static | SearchForm::Dynamic | SearchForm::WeightOnly => "int8",
        SearchForm::Fp16 => "fp16",
    }
}

/// Bytes per weight element in a form (scales and zero points aside).
fn bytes_per_element(precision: &str) -> f64 {
    match precision {
        "int4" => 0.5,
        "int8" => 1.0,
        "fp16" => 2.0,
        _ => 4.0,
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
    /// The reverted layers' weights stored in float16 (a mixed candidate).
    fp16_tensors: Vec<String>,
    /// Every check but latency passed.
    acc_ok: bool,
    /// Every check passed (latency included where it is a criterion).
    passed: bool,
    latency_measured: bool,
}

/// A layer a form compressed: the key that excludes it (node name; tensor name for fp16),
/// its op, its weights' elements and their tensor names.
#[derive(Clone)]
struct Layer {
    key: String,
    op: String,
    elements: u64,
    tensors: Vec<String>,
}

/// A form that missed a quality check as a whole: a fallback may still make it pass.
struct Missed {
    form: SearchForm,
    bytes: u64,
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
    /// `fp16` is one of the forms: reverted layers are stored in float16.
    mixed: bool,
    calibration: Option<Calibration>,
    report: SearchReport,
    probes: u32,
    /// Each scored form's compressed layers, from its whole-form trial.
    layers: Vec<(SearchForm, Vec<Layer>)>,
    missed: Vec<Missed>,
    /// Passing trials that may still win (on disk; under `smallest`, within 1% of the
    /// smallest).
    passing: Vec<Trial>,
    closest: Option<(f64, Trial)>,
    /// The first candidate that changed nothing (only used when no form applies at all).
    unchanged: Option<(SearchForm, Candidate, Vec<PassSpec>)>,
    /// Trials that passed every quality check but were slower than the original.
    slower: u32,
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

    /// A form this model cannot take (a pass refuses it, ONNX Runtime cannot load the
    /// result) is one failed option, not a failed search.
    fn tolerate(&mut self, form: SearchForm, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ (Error::Pass { .. } | Error::Eval { .. })) => {
                let note = format!("form failed: {}", error_chain(&e));
                self.ui.stage(&format!("search: {} {note}", form.name()));
                self.skipped(form, note);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Phase 1: the form as a whole. A miss of a quality check queues it for the fallback.
    fn whole(&mut self, form: SearchForm) -> Result<()> {
        if form == SearchForm::Static && self.calibration.is_none() {
            let started = Instant::now();
            let recipe = self.recipe(form, &[]).0;
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
            self.report.budget.calibration.add(started);
        }
        let Some(t) = self.trial(form, Vec::new(), "form")? else {
            return Ok(());
        };
        let layers = self.layers_of(form, &t.candidate);
        self.layers.push((form, layers));
        if t.acc_ok {
            return self.settle(t);
        }
        // Reverting layers to float can only help a quality check (it makes the candidate
        // larger): without one failing, there is nothing to search.
        let quality_missed = t
            .decision
            .checks
            .iter()
            .any(|c| !c.passed && is_quality_check(&c.name));
        if quality_missed {
            self.missed.push(Missed {
                form,
                bytes: t.candidate.bytes,
            });
        }
        self.consider(t);
        Ok(())
    }

    /// Bytes reverting `l` adds to a candidate of `form`.
    fn revert_cost(&self, form: SearchForm, l: &Layer) -> u64 {
        let to = if self.mixed && form != SearchForm::Fp16 {
            "fp16"
        } else {
            "fp32"
        };
        let per = bytes_per_element(to) - bytes_per_element(precision(form));
        (l.elements as f64 * per.max(0.0)).ceil() as u64
    }

    /// The smallest passing trial so far (under `smallest`, what a fallback has to beat).
    fn smallest_passing(&self) -> Option<&Trial> {
        self.passing
            .iter()
            .min_by_key(|t| (t.candidate.bytes, t.index))
    }

    /// Phase 2: rank the layers of a form that missed, and revert the worst, as few as pass.
    fn fallback(&mut self, m: Missed) -> Result<()> {
        let form = m.form;
        let layers = self
            .layers
            .iter()
            .find(|(f, _)| *f == form)
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        let max_float = match self.s.max_float_layers {
            Some(n) => n as usize,
            None => layers.len().div_ceil(2),
        }
        .min(layers.len().saturating_sub(1));
        if max_float == 0 || !self.allow_trial() {
            return Ok(());
        }
        // Under `smallest`: even its cheapest revert must leave it smaller than the best.
        let to_beat = (self.s.objective == SearchObjective::Smallest)
            .then(|| {
                self.smallest_passing()
                    .map(|b| (b.index, b.candidate.bytes))
            })
            .flatten();
        if let Some((index, bytes)) = to_beat {
            let cheapest = layers.iter().map(|l| self.revert_cost(form, l)).min();
            if m.bytes + cheapest.unwrap_or(0) >= bytes {
                let note = format!(
                    "no fallback: {} bytes as a whole, more with any layer reverted, cannot be smaller than trial {index} ({bytes} bytes), which passed",
                    m.bytes
                );
                self.ui.stage(&format!("search: {} {note}", form.name()));
                self.report.notes.push(format!("{}: {note}", form.name()));
                return Ok(());
            }
        }
        let Some(ranked) = self.sensitivity(form, &layers)? else {
            return Ok(());
        };
        // No more reverts than keep it smaller than the best passing trial.
        let mut cap = max_float;
        if let Some((index, bytes)) = to_beat {
            let mut size = m.bytes;
            let mut fits = 0;
            for key in ranked.iter().take(max_float) {
                let l = layers.iter().find(|l| &l.key == key);
                size += l.map_or(0, |l| self.revert_cost(form, l));
                if size >= bytes {
                    break;
                }
                fits += 1;
            }
            if fits < cap {
                self.report.notes.push(format!(
                    "{}: at most {fits} layers reverted (of {cap} allowed): more would not be smaller than trial {index} ({bytes} bytes)",
                    form.name()
                ));
                cap = fits;
            }
        }
        if cap == 0 {
            return Ok(());
        }
        self.bisect(form, &ranked[..cap])
    }

    /// Bisection over how many of the `ranked` layers (worst first) are reverted: the fewest
    /// that pass, in about log2(len) trials.
    fn bisect(&mut self, form: SearchForm, ranked: &[String]) -> Result<()> {
        let Some(mut pass) = self.trial(form, ranked.to_vec(), "fallback")? else {
            return Ok(());
        };
        if !pass.acc_ok {
            self.consider(pass);
            return Ok(());
        }
        // `lo` float layers fail, `pass`'s count passes.
        let (mut lo, mut hi) = (0, ranked.len());
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

    /// A trial that passed every check but latency: measured beside the original when it
    /// could win, and an integer form that is too slow tried once more with its convolutions
    /// in float.
    fn settle(&mut self, mut t: Trial) -> Result<()> {
        if let Some(b) = self.smallest_passing().filter(|_| !self.may_win(&t)) {
            let note = format!(
                "larger than trial {} ({} bytes) by more than {}%: cannot win, latency not measured",
                b.index,
                b.candidate.bytes,
                SIZE_TIE * 100.0
            );
            self.report.trials[t.index].note = Some(note);
            discard(t);
            return Ok(());
        }
        self.latency(&mut t)?;
        if !t.passed && matches!(t.form, SearchForm::Static | SearchForm::Dynamic) {
            let convs: Vec<String> = self
                .layers_of(t.form, &t.candidate)
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

    /// Under `smallest`: not more than 1% larger than the smallest passing trial.
    fn may_win(&self, t: &Trial) -> bool {
        match (self.s.objective, self.smallest_passing()) {
            (SearchObjective::Smallest, Some(b)) => {
                t.candidate.bytes as f64 <= b.candidate.bytes as f64 * (1.0 + SIZE_TIE)
            }
            _ => true,
        }
    }

    /// Measures latency beside the original and judges every check. Without
    /// `maxLatencyRatio`, a candidate measurably slower than the original fails
    /// [`NOT_SLOWER`].
    fn latency(&mut self, t: &mut Trial) -> Result<()> {
        let started = Instant::now();
        t.baseline = measure_latency(&t.candidate, self.base, &mut t.metrics, &self.ui.inner())?;
        self.report.budget.latency.add(started);
        t.latency_measured = true;
        t.decision = gate::decide(
            &self.spec.thresholds,
            &t.baseline,
            &t.metrics,
            t.candidate.tensors_changed(),
        )?;
        if self.spec.thresholds.max_latency_ratio.is_none()
            && let Some((slower, low)) = slower_than_original(&t.metrics, &t.baseline)
        {
            t.decision.checks.push(Check {
                name: NOT_SLOWER.into(),
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
    fn recipe(&self, form: SearchForm, float: &[String]) -> (Vec<PassSpec>, Vec<String>) {
        let mut recipe = self.spec.passes.clone();
        recipe.push(form.pass(self.s, float));
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

    fn build(
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
    fn spent(&mut self, kind: &str, started: Instant) {
        let b = &mut self.report.budget;
        match kind {
            "form" => b.whole_forms.add(started),
            _ => b.fallback.add(started),
        }
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
            fp16_tensors: Vec::new(),
            acc_ok,
            // Latency is judged once measured (every candidate that may win is measured).
            passed: false,
            latency_measured: false,
        })
    }

    /// Probes each layer alone on the first rows and ranks them, worst first; layers the
    /// probes' share of the budget left unprobed rank last, in graph order. `None` when no
    /// layer could be probed.
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
    fn probe(
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
        recipe.push(form.pass(self.s, &float));
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
    fn probes_spent(&self) -> bool {
        self.report.budget.probes.seconds >= self.report.budget.probe_seconds_limit
    }

    /// Keeps `t` if it may still win (passing) or is the closest failing trial so far; its
    /// files are removed otherwise.
    fn consider(&mut self, t: Trial) {
        if t.passed {
            self.passing.push(t);
            self.prune_passing();
            return;
        }
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

    /// Drops the passing trials that can no longer win: under `smallest`, those more than 1%
    /// larger than the smallest; under `fastest`, all but the best.
    fn prune_passing(&mut self) {
        let all = std::mem::take(&mut self.passing);
        let keep: Vec<bool> = match self.s.objective {
            SearchObjective::Smallest => {
                let min = all.iter().map(|t| t.candidate.bytes).min().unwrap_or(0);
                all.iter()
                    .map(|t| t.candidate.bytes as f64 <= min as f64 * (1.0 + SIZE_TIE))
                    .collect()
            }
            SearchObjective::Fastest => {
                let best =
                    (0..all.len()).reduce(|b, i| if self.better(&all[i], &all[b]) { i } else { b });
                (0..all.len()).map(|i| Some(i) == best).collect()
            }
        };
        for (t, k) in all.into_iter().zip(keep) {
            if k {
                self.passing.push(t);
            } else {
                discard(t);
            }
        }
    }

    /// Whether `a` beats `b` under `fastest`: faster with confidence (the intervals do not
    /// overlap), else the smaller when neither is.
    fn better(&self, a: &Trial, b: &Trial) -> bool {
        faster(&a.metrics, &b.metrics)
            || (!faster(&b.metrics, &a.metrics) && a.candidate.bytes < b.candidate.bytes)
    }

    /// The winner among the passing trials (the others' files removed), and what the size
    /// and speed rule decided, when it chose other than the smallest.
    fn pick(&mut self) -> Option<(Trial, Option<String>)> {
        let mut all = std::mem::take(&mut self.passing);
        let (win, note) = match self.s.objective {
            SearchObjective::Fastest => {
                let w = (0..all.len()).reduce(
                    |b, i| {
                        if self.better(&all[i], &all[b]) { i } else { b }
                    },
                )?;
                (w, None)
            }
            SearchObjective::Smallest => {
                let c: Vec<(u64, &Metrics)> = all
                    .iter()
                    .map(|t| (t.candidate.bytes, &t.metrics))
                    .collect();
                let (w, s) = smallest_or_faster(&c)?;
                let note = (w != s).then(|| {
                    let (f, s) = (&all[w], &all[s]);
                    format!(
                        "trial {} ({}) chosen over the smallest, trial {} ({}, {} bytes smaller): within {}% of its size and measurably faster ({} vs {} of the original's latency)",
                        f.index,
                        f.form.name(),
                        s.index,
                        s.form.name(),
                        f.candidate.bytes - s.candidate.bytes,
                        SIZE_TIE * 100.0,
                        latency_text(&f.metrics),
                        latency_text(&s.metrics)
                    )
                });
                (w, note)
            }
        };
        let t = all.swap_remove(win);
        all.into_iter().for_each(discard);
        Some((t, note))
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

    /// When no form changed a weight: the unchanged candidate, judged like a fixed recipe that
    /// changed nothing (Rejected by tensorsCompressed).
    fn unchanged_trial(&mut self) -> Result<Trial> {
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

    /// What the latency rules did, for the status: a near-tie won by speed, candidates
    /// refused as slower than the original, or a slower one allowed by `maxLatencyRatio`.
    fn latency_summary(&mut self, t: &Trial, tie: Option<String>) -> Option<String> {
        if let Some(n) = &tie {
            self.report.notes.push(n.clone());
        }
        if self.slower > 0 {
            self.report.notes.push(format!(
                "{} candidates that passed every quality check ran slower than the original and were not chosen: set thresholds.maxLatencyRatio to allow a slower model",
                self.slower
            ));
        }
        let ratio = t.metrics.latency_ratio?;
        let allowed = self
            .spec
            .thresholds
            .max_latency_ratio
            .filter(|_| ratio > 1.0);
        let line = match (tie, allowed) {
            (Some(n), _) => n,
            (None, Some(m)) => format!(
                "{} of the original's latency: slower, which maxLatencyRatio {m} allows",
                latency_text(&t.metrics)
            ),
            (None, None) if self.slower > 0 => format!(
                "{} of the original's latency; {} slower candidates not chosen (maxLatencyRatio allows none)",
                latency_text(&t.metrics),
                self.slower
            ),
            (None, None) => format!("{} of the original's latency", latency_text(&t.metrics)),
        };
        self.report.notes.push(format!("latency: {line}"));
        Some(line)
    }

    /// The chosen trial's layers (those its form compressed as a whole) and their precision.
    fn precisions(&self, t: &Trial) -> Vec<LayerPrecision> {
        let Some((_, layers)) = self.layers.iter().find(|(f, _)| *f == t.form) else {
            return Vec::new();
        };
        let float: HashSet<&str> = t.float_layers.iter().map(String::as_str).collect();
        let fp16: HashSet<&str> = t.fp16_tensors.iter().map(String::as_str).collect();
        layers
            .iter()
            .map(|l| LayerPrecision {
                layer: l.key.clone(),
                op: l.op.clone(),
                precision: if !float.contains(l.key.as_str()) {
                    precision(t.form)
                } else if l.tensors.iter().any(|x| fp16.contains(x.as_str())) {
                    "fp16"
                } else {
                    "fp32"
                },
            })
            .collect()
    }

    /// The chosen (or closest) trial with latency measured and every check judged.
    fn finish(mut self) -> Result<Chosen> {
        let (mut t, tie) = match (self.pick(), self.closest.take()) {
            (Some((b, tie)), closest) => {
                if let Some((_, c)) = closest {
                    discard(c);
                }
                self.report.chosen = Some(b.index);
                (b, tie)
            }
            (None, Some((_, c))) => {
                self.report.closest = Some(c.index);
                (c, None)
            }
            (None, None) => (self.unchanged_trial()?, None),
        };
        if !t.latency_measured {
            self.latency(&mut t)?;
        }
        self.report.seconds = self.started.elapsed().as_secs_f64();
        self.report.layers = self.precisions(&t);
        let latency = self.latency_summary(&t, tie);
        let summary = self.summary(&t, latency);
        self.ui.stage(&match self.report.chosen {
            Some(i) => format!(
                "search: chose trial {i} ({}, {} layers reverted{}, {:.2}x) after {} trials and {} probes in {:.0} s",
                t.form.name(),
                t.float_layers.len(),
                if summary.fp16_layers > 0 { " to fp16" } else { "" },
                t.decision.ratio,
                summary.trials,
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
        let b = &self.report.budget;
        self.ui.stage(&format!(
            "search: spent {:.0} s on whole forms ({} trials), {:.0} s calibrating, {:.0} s on probes ({}, limit {:.0} s), {:.0} s on fallback trials ({}), {:.0} s on latency ({})",
            b.whole_forms.seconds,
            b.whole_forms.runs,
            b.calibration.seconds,
            b.probes.seconds,
            b.probes.runs,
            b.probe_seconds_limit,
            b.fallback.seconds,
            b.fallback.runs,
            b.latency.seconds,
            b.latency.runs
        ));
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

    /// The status's bounded summary of the search.
    fn summary(&self, t: &Trial, latency: Option<String>) -> SearchSummary {
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
        SearchSummary {
            trials: evaluated as u32,
            probes: self.probes,
            form: Some(t.form.name().into()),
            trial: Some(t.index as u32),
            float_layers: t.float_layers.len() as u32,
            stopped_by: self.report.stopped_by.clone(),
            sensitive_layers: sensitive,
            fp16_layers: self
                .report
                .layers
                .iter()
                .filter(|l| l.precision == "fp16" && t.form != SearchForm::Fp16)
                .count() as u32,
            latency: latency.map(|l| shorten(&l)),
        }
    }

    /// The layers the form's pass compressed, in graph order.
    fn layers_of(&self, form: SearchForm, c: &Candidate) -> Vec<Layer> {
        let Some(p) = c.passes.get(self.spec.passes.len()) else {
            return Vec::new();
        };
        let mut layers: Vec<Layer> = Vec::new();
        for t in &p.tensors {
            let key = if form == SearchForm::Fp16 {
                &t.tensor
            } else {
                &t.node
            };
            match layers.iter_mut().find(|l| &l.key == key) {
                Some(l) => {
                    l.elements += t.elements;
                    l.tensors.push(t.tensor.clone());
                }
                None => layers.push(Layer {
                    key: key.clone(),
                    op: t.op.clone(),
                    elements: t.elements,
                    tensors: vec![t.tensor.clone()],
                }),
            }
        }
        layers
    }
}

/// Under `smallest`, among passing candidates (bytes, metrics) in trial order: the winner
/// and the smallest (the first of equal sizes). The smallest wins unless one within
/// [`SIZE_TIE`] of its size is measurably faster; then the fastest of those (median ratio).
fn smallest_or_faster(c: &[(u64, &Metrics)]) -> Option<(usize, usize)> {
    let s = (0..c.len()).min_by_key(|&i| (c[i].0, i))?;
    let limit = c[s].0 as f64 * (1.0 + SIZE_TIE);
    let ratio = |i: usize| c[i].1.latency_ratio.unwrap_or(f64::MAX);
    let w = (0..c.len())
        .filter(|&i| c[i].0 as f64 <= limit && faster(c[i].1, c[s].1))
        .min_by(|&a, &b| ratio(a).total_cmp(&ratio(b)))
        .unwrap_or(s);
    Some((w, s))
}

/// Without `maxLatencyRatio`: whether a candidate (`m`) is slower than the original (`base`,
/// measured beside it) beyond timer noise: its whole interval above 1 + [`SLOWER_MARGIN`],
/// and its median at least [`SLOWER_FLOOR_MS`] above the original's. Returns that and the
/// interval's low end; `None` before latency is measured.
fn slower_than_original(m: &Metrics, base: &Metrics) -> Option<(bool, f64)> {
    let low = m.latency_ratio_low?;
    let by_ms = m.latency_p50_ms - base.latency_p50_ms;
    Some((low > 1.0 + SLOWER_MARGIN && by_ms >= SLOWER_FLOOR_MS, low))
}

/// `a` is faster than `b` with confidence: their latency-ratio intervals do not overlap.
fn faster(a: &Metrics, b: &Metrics) -> bool {
    match (a.latency_ratio_high, b.latency_ratio_low) {
        (Some(ah), Some(bl)) => ah < bl,
        _ => false,
    }
}

fn latency_text(m: &Metrics) -> String {
    match (m.latency_ratio, m.latency_ratio_low, m.latency_ratio_high) {
        (Some(r), Some(l), Some(h)) => format!("{r:.2}x [{l:.2}, {h:.2}]"),
        (Some(r), _, _) => format!("{r:.2}x"),
        _ => "-".into(),
    }
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
    let mut sn = (0f64, 0f64);
    add_signal_noise(&mut sn, reference, candidate);
    capped_db(sn)
}

fn add_signal_noise(sn: &mut (f64, f64), reference: &[f32], candidate: &[f32]) {
    for (&r, &c) in reference.iter().zip(candidate) {
        let (r, c) = (f64::from(r), f64::from(c));
        sn.0 += r * r;
        sn.1 += (r - c) * (r - c);
    }
}

fn capped_db((signal, noise): (f64, f64)) -> f64 {
    match crate::passes::math::sqnr_db((signal, noise)) {
        Some(db) => db.clamp(-SQNR_CAP_DB, SQNR_CAP_DB),
        None if noise == 0.0 => SQNR_CAP_DB,
        None => -SQNR_CAP_DB,
    }
}

/// A probe's [`sqnr_db`] against the original's first rows, and the fraction of rows whose
/// top-1 class differs (classes only); read sample by sample, wherever the values are kept.
fn probe_scores(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_is_infinite_only_in_name() {
        assert_eq!(sqnr_db(&[1.0, 2.0], &[1.0, 2.0]), SQNR_CAP_DB);
        let s = sqnr_db(&[1.0, 0.0], &[1.1, 0.0]);
        assert!((s - 20.0).abs() < 1e-4, "{s}");
    }

    fn lat(median: f64, low: f64, high: f64) -> Metrics {
        Metrics {
            latency_ratio: Some(median),
            latency_ratio_low: Some(low),
            latency_ratio_high: Some(high),
            ..Default::default()
        }
    }

    #[test]
    fn a_near_tie_in_size_goes_to_the_measurably_faster_candidate() {
        let slow = lat(1.57, 1.50, 1.62);
        let fast = lat(0.67, 0.64, 0.70);
        // 0.5% larger and faster with confidence: it wins.
        assert_eq!(
            smallest_or_faster(&[(100_000, &slow), (100_500, &fast)]),
            Some((1, 0))
        );
        // 2% larger: the smallest wins however fast the other is.
        assert_eq!(
            smallest_or_faster(&[(100_000, &slow), (102_000, &fast)]),
            Some((0, 0))
        );
        // Overlapping intervals are not faster: the smallest wins.
        let close = lat(1.45, 1.30, 1.55);
        assert_eq!(
            smallest_or_faster(&[(100_000, &slow), (100_500, &close)]),
            Some((0, 0))
        );
        // Without latency measured, size alone decides.
        let none = Metrics::default();
        assert_eq!(
            smallest_or_faster(&[(100_500, &none), (100_000, &none)]),
            Some((1, 1))
        );
        assert_eq!(smallest_or_faster(&[]), None);
    }

    #[test]
    fn slower_means_the_whole_interval_above_the_noise_margin_and_by_a_tenth_of_a_ms() {
        let p50 = |ms: f64, mut m: Metrics| {
            m.latency_p50_ms = ms;
            m
        };
        let base = p50(10.0, Metrics::default());
        assert_eq!(
            slower_than_original(&p50(13.0, lat(1.3, 1.2, 1.4)), &base),
            Some((true, 1.2))
        );
        assert_eq!(
            slower_than_original(&p50(10.5, lat(1.05, 0.99, 1.10)), &base),
            Some((false, 0.99)),
            "an interval that reaches 1.0 is not slower"
        );
        let tiny = p50(0.04, Metrics::default());
        assert_eq!(
            slower_than_original(&p50(0.052, lat(1.3, 1.2, 1.4)), &tiny),
            Some((false, 1.2)),
            "12 microseconds is a call's overhead, not the model"
        );
        assert_eq!(slower_than_original(&Metrics::default(), &base), None);
    }

    #[test]
    fn quality_checks_are_looked_up_in_one_list() {
        assert!(is_quality_check("minCosineSimilarity"));
        assert!(!is_quality_check("maxLatencyRatio"));
        assert!(!is_quality_check(NOT_SLOWER));
    }

    #[test]
    fn whole_forms_that_need_no_calibration_come_first() {
        use SearchForm::*;
        assert_eq!(
            cheapest_first(SearchForm::ALL.to_vec()),
            vec![Int4, Dynamic, WeightOnly, Fp16, Static]
        );
        assert_eq!(cheapest_first(vec![Fp16, Dynamic]), vec![Fp16, Dynamic]);
    }

    #[test]
    fn a_reverted_layer_costs_what_its_new_precision_adds() {
        assert_eq!(bytes_per_element("fp16") - bytes_per_element("int8"), 1.0);
        assert_eq!(bytes_per_element("fp32") - bytes_per_element("int4"), 3.5);
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
