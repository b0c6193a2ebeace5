//! Stage 4, `evaluate -> Metrics`: the candidate through ONNX Runtime on the baseline's rows,
//! compared with the original's outputs; latency of both, interleaved in one process; the gate
//! on the thresholds ([`judge`]); and stage 4c, the chosen candidate on `spec.edgeCases`.
//! A search calls the parts one by one: [`evaluate_outputs`], [`measure_latency`], [`decide`].

use super::baseline::Baseline;
use super::candidate::Candidate;
use super::fetch::Inputs;
use super::run::Chosen;
use super::{Error, Result, named};
use crate::api::{FieldError, InvalidSpec, Metrics, Plan, Thresholds};
use crate::eval::{self, EvalConfig};
use crate::gate;
use crate::report::InputRef;
use crate::ui::Ui;

/// Stage 4: the candidate through ONNX Runtime on the same data, compared with the baseline;
/// then the latency of both, interleaved in one process. Returns the candidate's metrics and
/// the baseline's with its latency filled in.
pub fn evaluate(candidate: &Candidate, base: &Baseline, ui: &Ui) -> Result<(Metrics, Metrics)> {
    let (mut opened, prep, mut metrics) = scored(candidate, base, ui)?;
    let baseline = latency_with(&mut opened, &prep, candidate, base, &mut metrics, ui)?;
    Ok((metrics, baseline))
}

/// Stage 4a: the candidate's outputs on every evaluation row, compared with the baseline's
/// (no latency: a search measures it only for candidates that pass the other checks).
pub fn evaluate_outputs(candidate: &Candidate, base: &Baseline, ui: &Ui) -> Result<Metrics> {
    scored(candidate, base, ui).map(|(_, _, metrics)| metrics)
}

/// The candidate's session, its prepared rows and its metrics against the baseline (latency
/// fields empty).
fn scored<'b>(
    candidate: &Candidate,
    base: &'b Baseline,
    ui: &Ui,
) -> Result<(eval::Opened, eval::Prepared<'b>, Metrics)> {
    let mut opened = open_candidate(candidate, base)?;
    let prep = eval::prepare(&opened, &base.dataset, &base.cfg).map_err(cand_err(candidate))?;
    let out = candidate_outputs(
        &mut opened,
        &prep,
        candidate,
        base,
        ui,
        "evaluate candidate",
    )?;
    let mut metrics = eval::score(&out, &[], &prep, Some(&base.outputs), candidate.bytes)
        .map_err(cand_err(candidate))?;
    custom_metrics(&out, &prep, base, &mut metrics).map_err(cand_err(candidate))?;
    Ok((opened, prep, metrics))
}

/// The custom evaluator's metrics of the candidate's outputs against the original's (none
/// without one); a metric a threshold names must be among them.
fn custom_metrics(
    out: &eval::Outputs,
    prep: &eval::Prepared,
    base: &Baseline,
    metrics: &mut Metrics,
) -> Result<(), eval::Error> {
    let Some(c) = &base.evaluator else {
        return Ok(());
    };
    let got = eval::evaluator::score(&c.evaluator, &c.dir, &base.outputs, out, prep.labels())?;
    if let Some(w) = c.wanted.iter().find(|w| !got.contains_key(*w)) {
        return Err(eval::evaluator::Error::Missing {
            metric: w.clone(),
            printed: got.keys().cloned().collect::<Vec<_>>().join(", "),
        }
        .into());
    }
    metrics.custom = got;
    Ok(())
}

/// The candidate's compared output on the evaluation set's first `rows` rows (a sensitivity
/// probe), flattened like [`Baseline::outputs`].
pub fn probe_outputs(candidate: &Candidate, base: &Baseline, rows: usize) -> Result<eval::Outputs> {
    let mut opened = open_candidate(candidate, base)?;
    let cfg = EvalConfig {
        limit: Some(base.cfg.limit.map_or(rows, |l| l.min(rows))),
        ..base.cfg.clone()
    };
    let prep = eval::prepare(&opened, &base.dataset, &cfg).map_err(cand_err(candidate))?;
    let outputs_only = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..cfg
    };
    let (out, _) = eval::evaluate(&mut opened, &prep, &outputs_only, &|_, _| {})
        .map_err(cand_err(candidate))?;
    Ok(out)
}

/// Stage 4b: latency of the original and the candidate, interleaved in one process; fills the
/// candidate's latency fields in `metrics` and returns the baseline's metrics with its own.
pub fn measure_latency(
    candidate: &Candidate,
    base: &Baseline,
    metrics: &mut Metrics,
    ui: &Ui,
) -> Result<Metrics> {
    let mut opened = open_candidate(candidate, base)?;
    let prep = eval::prepare(&opened, &base.dataset, &base.cfg).map_err(cand_err(candidate))?;
    latency_with(&mut opened, &prep, candidate, base, metrics, ui)
}

fn cand_err(candidate: &Candidate) -> impl Fn(eval::Error) -> Error + '_ {
    move |source| Error::Eval {
        which: "candidate",
        source: named(source, &candidate.path, &candidate.shown),
    }
}

fn open_candidate(candidate: &Candidate, base: &Baseline) -> Result<eval::Opened> {
    eval::open(&candidate.path, &base.cfg).map_err(cand_err(candidate))
}

fn candidate_outputs(
    opened: &mut eval::Opened,
    prep: &eval::Prepared,
    candidate: &Candidate,
    base: &Baseline,
    ui: &Ui,
    label: &str,
) -> Result<eval::Outputs> {
    let outputs_only = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..base.cfg.clone()
    };
    let bar = ui.bar(label, false);
    let (out, _) = eval::evaluate(opened, prep, &outputs_only, &|d, t| bar.set(d, Some(t)))
        .map_err(cand_err(candidate))?;
    bar.finish(prep.samples() as u64);
    Ok(out)
}

fn latency_with(
    opened: &mut eval::Opened,
    prep: &eval::Prepared,
    candidate: &Candidate,
    base: &Baseline,
    metrics: &mut Metrics,
    ui: &Ui,
) -> Result<Metrics> {
    let orig_err = |source| Error::Eval {
        which: "original",
        source: named(source, &base.model.path, "original model"),
    };
    let mut original = eval::open(&base.model.path, &base.cfg).map_err(orig_err)?;
    let prep_o = eval::prepare(&original, &base.dataset, &base.cfg).map_err(orig_err)?;
    ui.stage(&format!(
        "latency: {} rounds of original and candidate, interleaved",
        base.cfg.iterations.max(1)
    ));
    let lat = eval::latency::interleaved((&mut original, &prep_o), (opened, prep), &base.cfg)
        .map_err(cand_err(candidate))?;
    metrics.latency_p50_ms = eval::metrics::percentile(&lat.candidate_ms, 50.0);
    metrics.latency_p95_ms = eval::metrics::percentile(&lat.candidate_ms, 95.0);
    metrics.latency_ratio = Some(lat.ratio);
    metrics.latency_ratio_low = Some(lat.ratio_low);
    metrics.latency_ratio_high = Some(lat.ratio_high);
    let mut baseline = base.metrics.clone();
    baseline.latency_p50_ms = eval::metrics::percentile(&lat.original_ms, 50.0);
    baseline.latency_p95_ms = eval::metrics::percentile(&lat.original_ms, 95.0);
    Ok(baseline)
}

/// Stage 4 and the gate: the candidate's metrics, the baseline's (with the latency measured
/// beside the candidate's) and the decision on `spec.thresholds`.
pub fn judge(
    candidate: &Candidate,
    base: &Baseline,
    spec: &Plan,
    ui: &Ui,
) -> Result<(Metrics, Metrics, gate::Decision)> {
    let (metrics, baseline) = evaluate(candidate, base, ui)?;
    if candidate.tensors_changed() == 0 {
        ui.stage("no pass changed any weight: the candidate is the original model (see the skipped reasons in the report)");
    }
    let decision = decide(&spec.thresholds, &baseline, &metrics, candidate)?;
    Ok((metrics, baseline, decision))
}

/// The gate on `thresholds`: the candidate's metrics against the baseline's (a threshold that
/// cannot be measured is an error).
pub fn decide(
    thresholds: &Thresholds,
    baseline: &Metrics,
    metrics: &Metrics,
    candidate: &Candidate,
) -> Result<gate::Decision> {
    Ok(gate::decide(
        thresholds,
        baseline,
        metrics,
        candidate.tensors_changed(),
    )?)
}

/// Stage 4c: the chosen candidate on `spec.edgeCases`, gated by its thresholds; the checks
/// (named `edgeCases.<threshold>`) join `decision`'s, and a failed one rejects the candidate.
pub fn judge_edge_cases(
    candidate: &Candidate,
    base: &Baseline,
    spec: &Plan,
    dataset: &InputRef,
    decision: &mut gate::Decision,
    ui: &Ui,
) -> Result<Option<crate::report::EdgeCasesReport>> {
    let (Some(e), Some(edge)) = (&spec.edge_cases, &base.edge_cases) else {
        return Ok(None);
    };
    let mut opened = open_candidate(candidate, base)?;
    let prep = eval::prepare(&opened, &edge.dataset, &edge.cfg).map_err(cand_err(candidate))?;
    let (out, _) =
        eval::evaluate(&mut opened, &prep, &edge.cfg, &|_, _| {}).map_err(cand_err(candidate))?;
    let metrics = eval::score(&out, &[], &prep, Some(&edge.outputs), candidate.bytes)
        .map_err(cand_err(candidate))?;
    let judged = gate::decide(
        &e.thresholds,
        &edge.metrics,
        &metrics,
        candidate.tensors_changed(),
    )
    .map_err(|m| {
        Error::from(InvalidSpec(vec![FieldError {
            field: format!("spec.edgeCases.thresholds.{}", m.threshold),
            message: format!("is set, but {}: remove it or {}", m.why, m.fix),
        }]))
    })?;
    let checks: Vec<crate::api::Check> = judged
        .checks
        .into_iter()
        .filter(|c| c.name != gate::TENSORS_COMPRESSED)
        .map(|c| crate::api::Check {
            name: c.name.clone().on_edge_cases(),
            ..c
        })
        .collect();
    let passed = checks.iter().all(|c| c.passed);
    ui.stage(&format!(
        "edge cases: {} samples, {} of {} checks passed",
        prep.samples(),
        checks.iter().filter(|c| c.passed).count(),
        checks.len()
    ));
    decision.checks.extend(checks.iter().cloned());
    if !passed {
        decision.verdict = crate::api::Verdict::Rejected;
    }
    Ok(Some(crate::report::EdgeCasesReport {
        dataset: dataset.clone(),
        verdict: if passed {
            crate::api::Verdict::Passed
        } else {
            crate::api::Verdict::Rejected
        },
        baseline: edge.metrics.clone(),
        candidate: metrics,
        checks,
    }))
}

/// Stage 4c for the chosen candidate (nothing without `spec.edgeCases`).
pub(super) fn edge_cases_of(
    inputs: &Inputs,
    base: &Baseline,
    spec: &Plan,
    chosen: &mut Chosen,
    ui: &Ui,
) -> Result<Option<crate::report::EdgeCasesReport>> {
    match &inputs.edge_cases {
        Some((_, dataset)) => judge_edge_cases(
            &chosen.candidate,
            base,
            spec,
            dataset,
            &mut chosen.decision,
            ui,
        ),
        None => Ok(None),
    }
}
