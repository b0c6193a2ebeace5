//! Stage 2, `baseline -> Baseline`: the original model through ONNX Runtime on the whole
//! evaluation set (and `spec.edgeCases`), measured once; every candidate is compared with it.
//! A run that calibrates on the evaluation set's last rows sets them aside here.

use super::calibrate::calibration_need;
use super::fetch::Inputs;
use super::{Error, Result, named};
use crate::api::{FieldError, InvalidSpec, Metrics, Plan};
use crate::eval::calibrate::RowRange;
use crate::eval::{self, Dataset, EvalConfig};
use crate::onnx::{self, Model};
use crate::ui::Ui;
use std::path::{Path, PathBuf};

/// The original model measured once; every candidate is compared with it.
pub struct Baseline {
    /// The original model in memory (payloads shared with candidates until a pass replaces them).
    pub model: Model,
    pub dataset: Dataset,
    pub cfg: EvalConfig,
    pub outputs: eval::Outputs,
    /// Metrics of the original (without the self-comparison fields).
    pub metrics: Metrics,
    /// The dataset's last rows, set aside for calibration (never scored).
    pub calibration_rows: Option<RowRange>,
    /// `spec.edgeCases` through the original.
    pub edge_cases: Option<EdgeBaseline>,
    /// `spec.evaluation.evaluator`, run on every candidate's outputs.
    pub evaluator: Option<CustomEvaluator>,
}

/// The custom evaluator and the metrics the thresholds need from it.
pub struct CustomEvaluator {
    pub evaluator: eval::evaluator::Evaluator,
    /// Its folder in scratch: each run's input files are written there.
    pub dir: PathBuf,
    /// The metrics `spec.thresholds.custom` names.
    pub wanted: Vec<String>,
}

impl CustomEvaluator {
    fn from_spec(spec: &Plan, scratch: &Path) -> Option<Self> {
        let e = spec.evaluation.evaluator.as_ref()?;
        Some(Self {
            evaluator: eval::evaluator::Evaluator {
                command: e.command.clone(),
                timeout: std::time::Duration::from_secs(u64::from(e.timeout_seconds)),
            },
            dir: scratch.join("evaluator"),
            wanted: spec
                .thresholds
                .custom
                .iter()
                .map(|c| c.metric.clone())
                .collect(),
        })
    }
}

/// The edge-case set measured once on the original.
pub struct EdgeBaseline {
    pub dataset: Dataset,
    pub cfg: EvalConfig,
    pub outputs: eval::Outputs,
    pub metrics: Metrics,
}

/// Outputs over [`eval::values::SPILL_ABOVE_BYTES`] go to an unnamed file beside the fetched
/// dataset (in scratch), so what the original's and a candidate's outputs hold in memory does
/// not grow with the dataset.
fn spill_to(inputs: &Inputs) -> Option<eval::values::Spill> {
    let above_bytes = std::env::var("KOMPRESS_SPILL_ABOVE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(eval::values::SPILL_ABOVE_BYTES);
    Some(eval::values::Spill {
        dir: inputs.dataset_path.parent()?.to_path_buf(),
        above_bytes,
    })
}

/// Stage 2: the original model through ONNX Runtime on the whole dataset.
pub fn baseline(inputs: &Inputs, spec: &Plan, ui: &Ui) -> Result<Baseline> {
    let model = onnx::load_as(&inputs.model_path, Path::new(&inputs.model.uri))?;
    let eval_err = |source| Error::Eval {
        which: "original",
        source: named(source, &inputs.model_path, &inputs.model.uri),
    };
    let dataset =
        Dataset::open(&inputs.dataset_path, &inputs.dataset.uri).map_err(|e| eval_err(e.into()))?;
    let mut cfg = EvalConfig::from_plan(
        &spec.evaluation,
        spec.dataset.labels.clone(),
        spec.dataset.limit,
    )
    .with_inputs(&spec.dataset.inputs);
    cfg.slices = spec.dataset.slices.clone();
    cfg.spill = spill_to(inputs);
    let mut original = eval::open(&inputs.model_path, &cfg).map_err(eval_err)?;
    // Static quantization without a calibration set: the last rows are set aside and the
    // evaluation scores only the rows before them.
    let calibration_rows = match calibration_need(spec) {
        Some((field, samples)) if inputs.calibration.is_none() => {
            let all = eval::prepare(
                &original,
                &dataset,
                &EvalConfig {
                    limit: None,
                    ..cfg.clone()
                },
            )
            .map_err(eval_err)?
            .samples();
            if all <= samples {
                return Err(InvalidSpec(vec![FieldError {
                    field,
                    message: format!(
                        "{samples} calibration samples set aside from the dataset's {all} rows leave none to evaluate: lower it, or give a separate calibration set (spec.calibration.dataset)"
                    ),
                }])
                .into());
            }
            let start = all - samples;
            cfg.limit = Some(cfg.limit.map_or(start, |l| l.min(start)));
            Some(RowRange {
                start,
                count: samples,
            })
        }
        _ => None,
    };
    let prep = eval::prepare(&original, &dataset, &cfg).map_err(eval_err)?;
    // Outputs only: latency is measured later, interleaved with the candidate's.
    let outputs_only = EvalConfig {
        warmup: 0,
        iterations: 0,
        ..cfg.clone()
    };
    ui.stage(&format!(
        "baseline: {} samples through the original model",
        prep.samples()
    ));
    let bar = ui.bar("evaluate original", false);
    let (outputs, times) = eval::evaluate(&mut original, &prep, &outputs_only, &|d, t| {
        bar.set(d, Some(t))
    })
    .map_err(eval_err)?;
    bar.finish(prep.samples() as u64);
    let metrics = strip_self_comparison(
        eval::score(&outputs, &times, &prep, Some(&outputs), model.file_bytes).map_err(eval_err)?,
    );
    drop(prep);
    let edge_cases = edge_baseline(&mut original, inputs, spec, model.file_bytes, ui)?;
    drop(original); // release ORT's copy of the weights before the passes run
    Ok(Baseline {
        model,
        dataset,
        cfg,
        outputs,
        metrics,
        calibration_rows,
        edge_cases,
        // The dataset lies in `<scratch>/dataset/`.
        evaluator: CustomEvaluator::from_spec(
            spec,
            inputs
                .dataset_path
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new(".")),
        ),
    })
}

/// `spec.edgeCases` through the original (none without it).
fn edge_baseline(
    original: &mut eval::Opened,
    inputs: &Inputs,
    spec: &Plan,
    bytes: u64,
    ui: &Ui,
) -> Result<Option<EdgeBaseline>> {
    let (Some(e), Some((path, r))) = (&spec.edge_cases, &inputs.edge_cases) else {
        return Ok(None);
    };
    let eval_err = |source| Error::Eval {
        which: "original (edge cases)",
        source: named(source, &inputs.model_path, &inputs.model.uri),
    };
    let dataset = Dataset::open(path, &r.uri).map_err(|e| eval_err(e.into()))?;
    let cfg = EvalConfig {
        warmup: 0,
        iterations: 0,
        spill: spill_to(inputs),
        labels_field: "spec.edgeCases.labels",
        ..EvalConfig::from_plan(&spec.evaluation, e.labels.clone(), e.limit)
            .with_inputs(&spec.dataset.inputs)
    };
    let prep = eval::prepare(original, &dataset, &cfg).map_err(eval_err)?;
    ui.stage(&format!(
        "edge cases: {} samples through the original model",
        prep.samples()
    ));
    let (outputs, _) = eval::evaluate(original, &prep, &cfg, &|_, _| {}).map_err(eval_err)?;
    let metrics = strip_self_comparison(
        eval::score(&outputs, &[], &prep, Some(&outputs), bytes).map_err(eval_err)?,
    );
    drop(prep);
    Ok(Some(EdgeBaseline {
        dataset,
        cfg,
        outputs,
        metrics,
    }))
}

/// The baseline compared with itself says nothing; keep those fields empty.
fn strip_self_comparison(mut m: Metrics) -> Metrics {
    m.agreement = None;
    m.cosine_similarity = None;
    m.mean_abs_error = None;
    m.max_abs_error = None;
    m
}
