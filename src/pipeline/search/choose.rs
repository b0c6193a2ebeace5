//! Which trials may still win, and the answer: the best that passed (size, then measured
//! speed on a near-tie), or the closest when none did.

use super::{
    QUALITY_MISS, SENSITIVE_IN_STATUS, SIZE_TIE, SLOWER_FLOOR_MS, SLOWER_MARGIN, Search, Trial,
    precision,
};
use crate::api::{Metrics, SearchForm, SearchObjective, SearchSummary};
use crate::gate;
use crate::pipeline::{Chosen, Result};
use crate::report::{LayerPrecision, TrialReport};
use std::collections::HashSet;

impl Search<'_> {
    /// Keeps `t` if it may still win (passing) or is the closest failing trial so far; its
    /// files are removed otherwise.
    pub(super) fn consider(&mut self, t: Trial) {
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
    pub(super) fn prune_passing(&mut self) {
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
    pub(super) fn better(&self, a: &Trial, b: &Trial) -> bool {
        faster(&a.metrics, &b.metrics)
            || (!faster(&b.metrics, &a.metrics) && a.candidate.bytes < b.candidate.bytes)
    }

    /// The winner among the passing trials (the others' files removed), and what the size
    /// and speed rule decided, when it chose other than the smallest.
    pub(super) fn pick(&mut self) -> Option<(Trial, Option<String>)> {
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

    pub(super) fn skipped(&mut self, form: SearchForm, note: String) {
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
    pub(super) fn nothing_scored(&self) -> String {
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

    /// What the latency rules did, for the status: a near-tie won by speed, candidates
    /// refused as slower than the original, or a slower one allowed by `maxLatencyRatio`.
    pub(super) fn latency_summary(&mut self, t: &Trial, tie: Option<String>) -> Option<String> {
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
    pub(super) fn precisions(&self, t: &Trial) -> Vec<LayerPrecision> {
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
    pub(super) fn finish(mut self) -> Result<Chosen> {
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
    pub(super) fn summary(&self, t: &Trial, latency: Option<String>) -> SearchSummary {
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
}

/// Under `smallest`, among passing candidates (bytes, metrics) in trial order: the winner
/// and the smallest (the first of equal sizes). The smallest wins unless one within
/// [`SIZE_TIE`] of its size is measurably faster; then the fastest of those (median ratio).
pub(super) fn smallest_or_faster(c: &[(u64, &Metrics)]) -> Option<(usize, usize)> {
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
pub(super) fn slower_than_original(m: &Metrics, base: &Metrics) -> Option<(bool, f64)> {
    let low = m.latency_ratio_low?;
    let by_ms = m.latency_p50_ms - base.latency_p50_ms;
    Some((low > 1.0 + SLOWER_MARGIN && by_ms >= SLOWER_FLOOR_MS, low))
}

/// `a` is faster than `b` with confidence: their latency-ratio intervals do not overlap.
pub(super) fn faster(a: &Metrics, b: &Metrics) -> bool {
    match (a.latency_ratio_high, b.latency_ratio_low) {
        (Some(ah), Some(bl)) => ah < bl,
        _ => false,
    }
}

pub(super) fn latency_text(m: &Metrics) -> String {
    match (m.latency_ratio, m.latency_ratio_low, m.latency_ratio_high) {
        (Some(r), Some(l), Some(h)) => format!("{r:.2}x [{l:.2}, {h:.2}]"),
        (Some(r), _, _) => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

/// A layer name for the status: at most 120 bytes (node names can be paths).
pub(super) fn shorten(name: &str) -> String {
    if name.len() <= 120 {
        return name.into();
    }
    let cut = (0..=117)
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &name[..cut])
}

pub(super) fn discard(t: Trial) {
    if let Some(dir) = t.candidate.path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Summed relative miss of the failed checks (0 for a pass): how far a trial is from passing.
pub(super) fn miss(d: &gate::Decision) -> f64 {
    d.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| (c.value - c.limit).abs() / c.limit.abs().max(1e-3))
        .sum()
}

pub(super) fn verdict_text(d: &gate::Decision) -> String {
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
