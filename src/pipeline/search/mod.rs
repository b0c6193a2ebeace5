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
//!
//! Files: this one runs the two phases ([`search`]); `trial` builds, scores and times one
//! candidate with the pipeline's stages (`build_candidate`, `evaluate_outputs`,
//! `measure_latency`, `decide`); `sensitivity` probes layers one at a time; `choose` keeps
//! the trials that may still win and picks the answer.

use super::opset_check;
use super::{Baseline, Calibration, Candidate, Chosen, Error, Inputs, Result, calibrate_for};
use crate::api::{
    CheckId, Metrics, PassSpec, Plan, SearchForm, SearchObjective, SearchPlan, TargetCpu,
};
use crate::error::error_chain;
use crate::gate;
use crate::report::SearchReport;
use crate::ui::Ui;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod choose;
mod forms;
mod sensitivity;
mod trial;

use choose::discard;
pub use sensitivity::sqnr_db;

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
pub const NOT_SLOWER: CheckId = CheckId::NotSlower;

/// Runs the search and returns the candidate to publish: the best that passed, or the closest
/// (judged Rejected) when none did.
pub fn search(
    inputs: &Inputs,
    base: &Baseline,
    spec: &Plan,
    s: &SearchPlan,
    scratch: &Path,
    ui: &Ui,
) -> Result<Chosen> {
    let forms = cheapest_first(s.forms.clone());
    let max_seconds = s.max_seconds;
    let mut run = Search {
        inputs,
        base,
        spec,
        s,
        ui,
        dir: scratch.join("search"),
        target: spec.target,
        started: Instant::now(),
        mixed: forms.contains(&SearchForm::Fp16),
        calibration: None,
        report: SearchReport {
            objective: s.objective,
            forms: forms.iter().map(|f| f.name()).collect(),
            max_trials: s.max_trials,
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
        .chain(forms.iter().map(|&f| forms::pass(f, s, &[])))
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
        opset_check::annotate(&mut chosen.candidate.passes, check);
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
    spec: &'a Plan,
    s: &'a SearchPlan,
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
            .any(|c| !c.passed && c.name.is_quality());
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

#[cfg(test)]
mod tests {
    use super::choose::{miss, slower_than_original, smallest_or_faster};
    use super::*;
    use crate::api::Verdict;

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
        assert!(CheckId::parse("minCosineSimilarity").is_quality());
        assert!(!CheckId::parse("maxLatencyRatio").is_quality());
        assert!(!NOT_SLOWER.is_quality());
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
