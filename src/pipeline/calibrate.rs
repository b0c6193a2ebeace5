//! Stage 2b, `calibrate -> Calibration`: for a static quantization pass, the original model
//! (as the passes before it leave it) runs over the calibration rows (a separate set, or the
//! evaluation set's last rows, which the baseline and candidate then never score) with the
//! pass's activations as extra outputs, saved in `calibration/`; the statistics are folded
//! into fixed-size form and the spec's method picks each tensor's range.

use super::baseline::Baseline;
use super::fetch::Inputs;
use super::{Error, Result, save_in_scratch, scratch_dir};
use crate::api::{
    CalibrationBatch, CalibrationMethod, CalibrationPlan, CompressionJobSpec, PassSpec, Plan,
    QuantMode, QuantizeSpec, SearchForm, TargetCpu,
};
use crate::eval::calibrate::{self as calib, RowRange};
use crate::eval::{Dataset, EvalConfig};
use crate::onnx::Model;
use crate::passes::{self, ActivationRanges, Calibrated, Pass};
use crate::report::{ActivationError, CalibrationReport, CalibrationSourceRef};
use crate::ui::Ui;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Calibrated activation ranges for the static quantization pass.
pub struct Calibration {
    pub pass: usize,
    pub calibrated: Arc<Calibrated>,
    pub report: CalibrationReport,
}

/// The recipe's static quantization pass (validation allows one).
pub fn static_pass(spec: &CompressionJobSpec) -> Option<(usize, &QuantizeSpec)> {
    spec.passes.iter().enumerate().find_map(|(i, p)| match p {
        PassSpec::Quantize(q) if q.mode == QuantMode::Static => Some((i, q)),
        _ => None,
    })
}

/// Calibration samples a static pass asks for.
pub fn calibration_samples(q: &QuantizeSpec) -> usize {
    q.resolved_calibration().samples as usize
}

/// Whether the run calibrates (a static pass in the recipe, or the static form in a search):
/// the field that sets the sample count, and the count.
pub fn calibration_need(spec: &Plan) -> Option<(String, usize)> {
    if let Some(s) = &spec.search {
        return s.forms.contains(&SearchForm::Static).then(|| {
            (
                "spec.search.calibration.samples".to_string(),
                CalibrationPlan::of(s.calibration.as_ref()).samples as usize,
            )
        });
    }
    static_pass(spec).map(|(index, q)| {
        (
            format!("spec.passes[{index}].quantize.calibration.samples"),
            calibration_samples(q),
        )
    })
}

/// Where calibration rows come from.
pub struct CalibrationData<'a> {
    pub dataset: &'a Dataset,
    /// `None`: the first `samples` rows (all of them when there are fewer).
    pub rows: Option<RowRange>,
    pub uri: String,
    pub sha256: Option<String>,
    /// `dataset` or `calibration` (see [`CalibrationSourceRef`]).
    pub kind: &'static str,
}

/// Calibrates pass `index` of `passes` (a static quantization pass) on `data`: the original
/// model (Constant weights folded) runs with the pass's activations as extra outputs, saved
/// in `dir`; statistics are streamed; the spec's method picks each tensor's range.
#[allow(clippy::too_many_arguments)]
pub fn calibrate_with(
    original: &Model,
    passes: &[PassSpec],
    index: usize,
    target: TargetCpu,
    data: &CalibrationData,
    cfg: &EvalConfig,
    dir: &Path,
    ui: &Ui,
) -> Result<Calibration> {
    let started = Instant::now();
    let PassSpec::Quantize(q) = &passes[index] else {
        unreachable!("static_pass returns quantize passes")
    };
    let settings = Settings::of(q);
    let cal_err = |source| Error::Eval {
        which: "original (calibration)",
        source,
    };
    let (path, tensors) = calibration_model(original, passes, index, target, dir)?;
    let mut opened = calib::open(&path, cfg).map_err(cal_err)?;
    let rows = match data.rows {
        Some(r) => r,
        None => {
            let all = calib::rows(&opened, data.dataset, cfg).map_err(cal_err)?;
            RowRange {
                start: 0,
                count: settings.samples.min(all),
            }
        }
    };
    let method = settings.method;
    ui.stage(&format!(
        "calibration: {} samples (rows {}..{} of {}), {} activation tensors, {}, batch {}",
        rows.count,
        rows.start,
        rows.start + rows.count,
        data.uri,
        tensors.len(),
        method_name(method),
        match settings.batch {
            CalibrationBatch::Fixed(n) => n.to_string(),
            CalibrationBatch::UpTo { rows, bytes } => {
                format!("up to {rows} within {} MiB of activations", bytes >> 20)
            }
        }
    ));
    let bar = ui.bar("calibrate", false);
    let histograms = method != CalibrationMethod::MinMax;
    let collected = calib::run(
        &mut opened,
        data.dataset,
        rows,
        &tensors,
        histograms,
        settings.batch,
        cfg,
        &|d, t| bar.set(d, Some(t)),
    )
    .map_err(cal_err)?;
    bar.finish(rows.count as u64);
    let stats = collected.stats;
    if matches!(settings.batch, CalibrationBatch::UpTo { .. }) {
        ui.stage(&format!(
            "calibration: {:.1} MiB of activations a row, so {} rows a run",
            collected.row_bytes as f64 / f64::from(1 << 20),
            collected.batch
        ));
    }
    drop(opened);
    let _ = std::fs::remove_dir_all(dir);
    let (calibrated, activations) = settings.ranges(&stats, rows, &data.uri);
    Ok(Calibration {
        pass: index,
        calibrated: Arc::new(calibrated),
        report: CalibrationReport {
            pass: index,
            method,
            percentile: (method == CalibrationMethod::Percentile).then_some(settings.percentile),
            samples: rows.count as u64,
            source: CalibrationSourceRef {
                uri: data.uri.clone(),
                sha256: data.sha256.clone(),
                kind: data.kind,
                rows: [rows.start as u64, (rows.start + rows.count) as u64],
            },
            tensors: tensors.len(),
            batch: collected.batch,
            row_bytes: collected.row_bytes,
            activations,
            seconds: started.elapsed().as_secs_f64(),
        },
    })
}

/// The original model as the passes before pass `index` leave it (an `optimize` pass renames
/// and fuses nodes: calibrate that model, so the tensor names match), with the pass's
/// activations as extra outputs, saved as `dir/model.onnx`; and those activations' names.
fn calibration_model(
    original: &Model,
    passes: &[PassSpec],
    index: usize,
    target: TargetCpu,
    dir: &Path,
) -> Result<(PathBuf, Vec<String>)> {
    let pass = Pass::for_target(&passes[index], target);
    let (mut model, _) = passes::with_constants_folded(original);
    for (i, p) in passes[..index].iter().enumerate() {
        let before = Pass::for_target(p, target);
        before.apply(&mut model).map_err(|source| Error::Pass {
            index: i,
            name: before.name(),
            source,
        })?;
    }
    pass.prepare_for_calibration(&mut model)
        .map_err(|source| Error::Pass {
            index,
            name: pass.name(),
            source,
        })?;
    let tensors = pass.calibration_tensors(&model).unwrap_or_default();
    scratch_dir(dir)?;
    let path = dir.join("model.onnx");
    let with = calib::with_outputs(&model, &tensors);
    drop(model);
    save_in_scratch(&with, &path, "saving the calibration model")?;
    Ok((path, tensors))
}

/// A static pass's calibration settings, defaults applied.
struct Settings {
    method: CalibrationMethod,
    percentile: f64,
    symmetric: bool,
    samples: usize,
    /// Its own batch: memory follows it, not evaluation.batchSize.
    batch: CalibrationBatch,
}

impl Settings {
    fn of(q: &QuantizeSpec) -> Self {
        let c = q.resolved_calibration();
        Self {
            method: c.method,
            percentile: c.percentile,
            symmetric: q.resolved_symmetric_activations(),
            samples: c.samples as usize,
            batch: c.batch,
        }
    }

    /// Each tensor's range by the method, with its estimated error (worst first), and the
    /// summary the pass reports.
    fn ranges(
        &self,
        stats: &std::collections::BTreeMap<String, calib::TensorStats>,
        rows: RowRange,
        uri: &str,
    ) -> (Calibrated, Vec<ActivationError>) {
        let (method, percentile) = (self.method, self.percentile);
        let ranges: ActivationRanges = stats
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.range_for(method, percentile, self.symmetric),
                )
            })
            .collect();
        let mut activations: Vec<ActivationError> = ranges
            .iter()
            .map(|(name, &(lo, hi))| ActivationError {
                tensor: name.clone(),
                range: [lo, hi],
                sqnr_db: stats.get(name).and_then(|s| s.estimated_sqnr_db(lo, hi)),
            })
            .collect();
        activations.sort_by(|a, b| {
            a.sqnr_db
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.sqnr_db.unwrap_or(f64::INFINITY))
                .then_with(|| a.tensor.cmp(&b.tensor))
        });
        let summary = format!(
            "{}{} over {} samples (rows {}..{} of {})",
            method_name(method),
            if method == CalibrationMethod::Percentile {
                format!(" {percentile}")
            } else {
                String::new()
            },
            rows.count,
            rows.start,
            rows.start + rows.count,
            uri
        );
        (Calibrated { ranges, summary }, activations)
    }
}

fn method_name(m: CalibrationMethod) -> &'static str {
    match m {
        CalibrationMethod::MinMax => "minMax",
        CalibrationMethod::Percentile => "percentile",
        CalibrationMethod::Entropy => "entropy",
    }
}

/// Stage 2b: calibration for a static quantization pass (none without one).
pub fn calibrate(
    inputs: &Inputs,
    base: &Baseline,
    spec: &Plan,
    dir: &Path,
    ui: &Ui,
) -> Result<Option<Calibration>> {
    let Some((index, _)) = static_pass(spec) else {
        return Ok(None);
    };
    calibrate_for(inputs, base, spec, &spec.passes, index, dir, ui).map(Some)
}

/// Calibrates pass `index` of `passes` (a static quantization pass) on the run's calibration
/// data: the separate set when the spec names one, else the rows the baseline set aside.
pub fn calibrate_for(
    inputs: &Inputs,
    base: &Baseline,
    spec: &Plan,
    passes: &[PassSpec],
    index: usize,
    dir: &Path,
    ui: &Ui,
) -> Result<Calibration> {
    let target = spec.target;
    let separate;
    let data = match &inputs.calibration {
        Some((path, r)) => {
            separate = Dataset::open(path, &r.uri).map_err(|e| Error::Eval {
                which: "original (calibration)",
                source: e.into(),
            })?;
            CalibrationData {
                dataset: &separate,
                rows: None,
                uri: r.uri.clone(),
                sha256: Some(r.sha256.clone()),
                kind: "calibration",
            }
        }
        None => CalibrationData {
            dataset: &base.dataset,
            rows: base.calibration_rows,
            uri: inputs.dataset.uri.clone(),
            sha256: Some(inputs.dataset.sha256.clone()),
            kind: "dataset",
        },
    };
    calibrate_with(
        &base.model,
        passes,
        index,
        target,
        &data,
        &base.cfg,
        dir,
        ui,
    )
}
