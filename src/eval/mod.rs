//! Evaluation with ONNX Runtime: the same dataset through the original and the candidate,
//! metrics against labels and against the original's outputs, and latency after warm-up.

pub mod calibrate;
pub mod capture;
pub mod dataset;
pub mod evaluator;
pub mod feed;
pub mod labels;
pub mod latency;
pub mod metrics;
pub mod quality;
pub mod runtime;
pub mod select;
pub mod task;
pub mod values;

pub use dataset::{Archive, Array, ArrayData, Dataset, Dtype, Member, Rows};
pub use labels::Labels;
pub use runtime::{Provider, RuntimeError};

use crate::api::{EvaluationPlan, EvaluationSpec, InputFeed, Metrics};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Most ONNX Runtime intra-op threads a session gets, whatever the spec says (validation
/// refuses more; this keeps a spec that skipped it from spawning thousands).
pub const MAX_THREADS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("ONNX Runtime cannot load model {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("ONNX Runtime failed running model {path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error(transparent)]
    Dataset(#[from] dataset::Error),
    /// The dataset (named as the user wrote it) and the model disagree. The model's file is
    /// a scratch copy, so messages say "the model"; callers say which one.
    #[error("dataset {dataset} does not fit the model: {what}")]
    Mismatch {
        dataset: String,
        model: PathBuf,
        what: String,
    },
    #[error("the model cannot be evaluated: {what}")]
    Model { model: PathBuf, what: String },
    #[error(transparent)]
    Evaluator(#[from] evaluator::Error),
    /// The outputs kept in the scratch folder could not be written or read back.
    #[error(
        "keeping the outputs in the scratch folder failed: {0}; free space or give the job more scratch (spec.resources.scratch; --scratch or KOMPRESS_SCRATCH locally)"
    )]
    Spill(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings with defaults applied.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub batch_size: usize,
    pub threads: Option<usize>,
    pub output: Option<String>,
    pub labels: Option<String>,
    /// The field that names the labels (messages name it).
    pub labels_field: &'static str,
    pub limit: Option<usize>,
    pub latency_batch: usize,
    pub warmup: usize,
    pub iterations: usize,
    /// How inputs are fed (`spec.dataset.inputs`; empty: every input by rows on axis 0).
    pub inputs: Vec<InputFeed>,
    /// What part of the compared output is scored (`spec.evaluation.select`, `pool`,
    /// `normalize`).
    pub selection: select::Selection,
    /// `spec.evaluation.task`, defaults applied.
    pub task: task::Task,
    /// `spec.dataset.slices`: the array naming each sample's slice.
    pub slices: Option<String>,
    /// Where large outputs go instead of memory (None: all in memory).
    pub spill: Option<values::Spill>,
}

impl EvalConfig {
    /// The settings of `ev`, its defaults resolved by `api::defaults`.
    pub fn from_spec(ev: &EvaluationSpec, labels: Option<String>, limit: Option<u32>) -> Self {
        Self::from_plan(&EvaluationPlan::of(ev), labels, limit)
    }

    pub fn from_plan(ev: &EvaluationPlan, labels: Option<String>, limit: Option<u32>) -> Self {
        Self {
            batch_size: (ev.batch_size as usize).max(1),
            threads: ev.threads.map(|t| (t as usize).clamp(1, MAX_THREADS)),
            output: ev.spec.output.clone(),
            labels,
            labels_field: labels::FIELD,
            limit: limit.map(|l| l as usize),
            latency_batch: (ev.latency_batch as usize).max(1),
            warmup: ev.warmup as usize,
            iterations: ev.iterations as usize,
            inputs: Vec::new(),
            selection: select::Selection {
                select: ev.spec.select.clone(),
                pool: ev.spec.pool.clone(),
                normalize: ev.normalize,
            },
            task: task::Task::from_spec(ev.spec.task.as_ref()),
            slices: None,
            spill: None,
        }
    }

    /// The same settings, feeding inputs as `inputs` says.
    pub fn with_inputs(self, inputs: &[InputFeed]) -> Self {
        Self {
            inputs: inputs.to_vec(),
            ..self
        }
    }
}

/// One model's outputs on the whole dataset: the compared output after the selection,
/// flattened, and the task's decoded form of each sample.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// The selected values, sample after sample (in a scratch file once large).
    pub values: values::Values,
    pub per_sample: usize,
    /// Classes per sample when the selected output is `[N, C]` with C > 1 (and the task, if
    /// any, reads classes).
    pub classes: Option<usize>,
    pub samples: usize,
    /// Per-sample shape of `values` (after the selection).
    pub shape: Vec<usize>,
    /// Sequence task: each sample's greedy CTC decoding.
    pub sequences: Vec<Vec<u32>>,
    /// Detection task: each sample's detections after NMS.
    pub detections: Vec<Vec<task::Det>>,
}

/// The dataset checked against a model's inputs: which arrays feed which inputs, the labels,
/// and how many samples. The input data stays on disk until [`evaluate`] reads it by batches.
pub struct Prepared<'d> {
    ds: &'d Dataset,
    /// Where each model input's values come from, in the model's input order.
    plan: feed::Plan<'d>,
    labels: Option<Labels>,
    labels_field: &'static str,
    /// `spec.dataset.slices`, the first `samples` values.
    slices: Option<Vec<i64>>,
    task: task::Task,
    samples: usize,
}

/// An ONNX Runtime session on one model file: opened once, then used to check the dataset
/// against the model's inputs and to run the evaluation (a large model is loaded once).
pub struct Opened {
    sess: Session,
    path: PathBuf,
}

/// Opens a session with the evaluation's settings.
pub fn open(path: &Path, cfg: &EvalConfig) -> Result<Opened> {
    open_with(path, cfg, false)
}

/// [`open`], and with `lean` a session that returns its memory after every run: no memory
/// pattern (planned per input shape) and, on the CPU, no arena (which keeps its peak). For
/// runs whose outputs are large and whose batch changes (calibration); a little slower.
pub fn open_with(path: &Path, cfg: &EvalConfig, lean: bool) -> Result<Opened> {
    let env = runtime::environment()?;
    let err = |message: String| Error::Session {
        path: path.into(),
        message,
    };
    let mut b = Session::builder(env).map_err(|e| err(e.to_string()))?;
    if let Some(t) = cfg.threads {
        b = b
            .with_intra_threads(t.clamp(1, MAX_THREADS))
            .map_err(|e| err(e.to_string()))?;
    }
    if lean {
        b = b
            .with_memory_pattern(false)
            .map_err(|e| err(e.to_string()))?;
        if runtime::Provider::from_env() == runtime::Provider::Cpu {
            b = b
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let sess = b.commit_from_file(path).map_err(|e| err(e.to_string()))?;
    Ok(Opened {
        sess,
        path: path.into(),
    })
}

fn element_name(t: &TensorElementType) -> &'static str {
    match t {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float64 => "float64",
        TensorElementType::Float16 => "float16",
        TensorElementType::Int64 => "int64",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int8 => "int8",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Bool => "bool",
        _ => "an unsupported type",
    }
}

/// The output compared between the models: `spec.evaluation.output`, else the first.
fn output_name(opened: &Opened, cfg: &EvalConfig) -> Result<String> {
    let outs = opened.sess.outputs();
    let model_err = |what: String| Error::Model {
        model: opened.path.clone(),
        what,
    };
    if outs.is_empty() {
        return Err(model_err(
            "the model has no graph outputs, so there is nothing to compare".into(),
        ));
    }
    match &cfg.output {
        Some(o) if !outs.iter().any(|x| x.name() == o) => {
            let names: Vec<&str> = outs.iter().map(|x| x.name()).collect();
            Err(model_err(format!(
                "spec.evaluation.output `{o}` is not an output of the model (outputs: {})",
                names.join(", ")
            )))
        }
        Some(o) => Ok(o.clone()),
        None if outs[0].name().is_empty() => Err(model_err(
            "the model's first output has an empty name: name it, or choose an output with spec.evaluation.output".into(),
        )),
        None => Ok(outs[0].name().to_string()),
    }
}

/// The outputs a detection task names (layout boxes) are outputs of the model.
fn check_task_outputs(opened: &Opened, cfg: &EvalConfig) -> Result<()> {
    let outs = opened.sess.outputs();
    let fields = ["boxes", "scores", "classes"];
    for (name, field) in cfg.task.extra_outputs().iter().zip(fields) {
        if !outs.iter().any(|x| x.name() == name) {
            let names: Vec<&str> = outs.iter().map(|x| x.name()).collect();
            return Err(Error::Model {
                model: opened.path.clone(),
                what: format!(
                    "spec.evaluation.task.detection.outputs.{field} `{name}` is not an output of the model (outputs: {})",
                    names.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Checks that the dataset has every input the model needs, with the right dtype and shape,
/// and reads the labels (the first `samples` of them). Input data is not read.
pub fn prepare<'d>(opened: &Opened, ds: &'d Dataset, cfg: &EvalConfig) -> Result<Prepared<'d>> {
    let (sess, model) = (&opened.sess, opened.path.as_path());
    let mismatch = |what: String| Error::Mismatch {
        dataset: ds.display_name().to_string(),
        model: model.into(),
        what,
    };
    output_name(opened, cfg)?;
    check_task_outputs(opened, cfg)?;
    let mut model_inputs = Vec::with_capacity(sess.inputs().len());
    for inp in sess.inputs() {
        let name = inp.name().to_string();
        let ValueType::Tensor { ty, shape, .. } = inp.dtype() else {
            return Err(mismatch(format!("model input `{name}` is not a tensor")));
        };
        model_inputs.push(feed::ModelInput {
            name,
            dtype: element_name(ty),
            shape: shape.iter().copied().collect(),
        });
    }
    let outputs: Vec<String> = sess
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let plan = feed::plan(&model_inputs, &outputs, ds, &cfg.inputs).map_err(mismatch)?;
    let all = plan.rows;
    if cfg.limit == Some(0) {
        return Err(mismatch(
            "spec.dataset.limit is 0, which leaves nothing to evaluate".into(),
        ));
    }
    let samples = cfg.limit.map_or(all, |l| all.min(l));
    if samples == 0 {
        let arrays: Vec<String> = plan
            .inputs
            .iter()
            .filter_map(|i| match &i.source {
                feed::Source::Rows { member: m, .. } => {
                    Some(format!("`{}` {}", m.name, m.header.describe()))
                }
                _ => None,
            })
            .collect();
        return Err(mismatch(format!(
            "the dataset has no samples (input arrays: {})",
            arrays.join(", ")
        )));
    }
    let label_name = cfg
        .labels
        .clone()
        .or_else(|| ds.get("labels").map(|_| "labels".to_string()));
    let labels = label_name
        .map(|ln| labels::read(ds, &ln, cfg.labels_field, &cfg.task, samples))
        .transpose()
        .map_err(mismatch)?;
    let slices = read_slices(ds, cfg, all, samples).map_err(mismatch)?;
    if let Some(m) = cfg.selection.mask() {
        check_mask(ds, m, all).map_err(mismatch)?;
    }
    Ok(Prepared {
        ds,
        plan,
        labels,
        labels_field: cfg.labels_field,
        slices,
        task: cfg.task.clone(),
        samples,
    })
}

/// An ORT tensor owning the array's data.
fn tensor(arr: Array) -> ort::Result<DynValue> {
    // Every dimension fits in i64 (checked when the header was parsed).
    let shape: Vec<i64> = arr.shape.iter().map(|&d| d as i64).collect();
    macro_rules! t {
        ($v:expr) => {
            Tensor::from_array((shape, $v))?.into_dyn()
        };
    }
    Ok(match arr.data {
        ArrayData::F32(v) => t!(v),
        ArrayData::F64(v) => t!(v),
        ArrayData::F16(v) => t!(v),
        ArrayData::I64(v) => t!(v),
        ArrayData::I32(v) => t!(v),
        ArrayData::I8(v) => t!(v),
        ArrayData::U8(v) => t!(v),
        ArrayData::Bool(v) => t!(v),
    })
}

/// Runs one batch (one array per model input, named); returns the shape and values of each
/// output named (the compared output first). With a feeder, each state output is kept for its
/// next run.
fn run_batch(
    sess: &mut Session,
    batch: Vec<(String, Array)>,
    out_names: &[&str],
    path: &Path,
    feeder: Option<&mut feed::Feeder>,
) -> Result<Vec<(Vec<i64>, Vec<f32>)>> {
    let err = |e: ort::Error| Error::Run {
        path: path.into(),
        message: e.to_string(),
    };
    let fed: Vec<(String, Vec<usize>)> = match feeder {
        Some(_) => batch
            .iter()
            .map(|(n, a)| (n.clone(), a.shape.clone()))
            .collect(),
        None => Vec::new(),
    };
    let mut feed: Vec<(Cow<str>, ort::session::SessionInputValue)> =
        Vec::with_capacity(batch.len());
    for (name, arr) in batch {
        feed.push((Cow::Owned(name), tensor(arr).map_err(err)?.into()));
    }
    let outputs = sess.run(feed).map_err(err)?;
    if let Some(f) = feeder {
        f.feed_back(&fed, |n| outputs.get(n))
            .map_err(|message| Error::Run {
                path: path.into(),
                message,
            })?;
    }
    out_names
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let v = outputs.get(name).ok_or_else(|| Error::Run {
                path: path.into(),
                message: format!("output `{name}` missing"),
            })?;
            float_tensor(v, i > 0).ok_or_else(|| Error::Run {
                path: path.into(),
                message: format!(
                    "output `{name}` is not a float tensor; choose a float output with spec.evaluation.output"
                ),
            })
        })
        .collect()
}

/// A tensor's shape and values as f32 (float types; integer types too when `ints`, for a
/// detector's classes).
fn float_tensor(v: &DynValue, ints: bool) -> Option<(Vec<i64>, Vec<f32>)> {
    if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
        return Some((s.to_vec(), d.to_vec()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<half::f16>() {
        return Some((s.to_vec(), d.iter().map(|x| x.to_f32()).collect()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<f64>() {
        return Some((s.to_vec(), d.iter().map(|&x| x as f32).collect()));
    }
    if !ints {
        return None;
    }
    if let Ok((s, d)) = v.try_extract_tensor::<i64>() {
        return Some((s.to_vec(), d.iter().map(|&x| x as f32).collect()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<i32>() {
        return Some((s.to_vec(), d.iter().map(|&x| x as f32).collect()));
    }
    None
}

/// Runs the model over the dataset, a batch at a time (each batch's rows are read from the
/// file as it is needed: memory holds one batch of inputs, plus the compared outputs), and
/// measures latency. Progress gets (done, total) samples.
pub fn evaluate(
    opened: &mut Opened,
    prep: &Prepared,
    cfg: &EvalConfig,
    progress: &dyn Fn(u64, u64),
) -> Result<(Outputs, Vec<f64>)> {
    let out_name = output_name(opened, cfg)?;
    let (sess, model) = (&mut opened.sess, opened.path.as_path());
    let ds = prep.ds;
    // One archive per input: a deflated member is inflated sequentially by its own reader.
    let mut archives = prep.plan.archives();
    let mut feeder = feed::Feeder::new(&prep.plan, ds, &mut archives, 0)?;
    // A state fed back runs rows one at a time, in order.
    let batch = if prep.plan.is_stateful() {
        1
    } else {
        cfg.batch_size.max(1)
    };
    let extra = cfg.task.extra_outputs();
    let names: Vec<&str> = std::iter::once(out_name.as_str())
        .chain(extra.iter().map(String::as_str))
        .collect();
    let mut mask_archive = Archive::default();
    let mut mask = match cfg.selection.mask() {
        Some(m) => Some(ds.rows(m, &mut mask_archive)?),
        None => None,
    };
    let mut capture = capture::Capture::new(cfg, &out_name);
    let mut start = 0;
    while start < prep.samples {
        let rows = batch.min(prep.samples - start);
        let arrays = feeder.next(rows)?;
        let outs = run_batch(sess, arrays, &names, model, Some(&mut feeder))?;
        let mask_rows = match mask.as_mut() {
            Some(r) => Some(as_f32(r.read(rows)?.data)),
            None => None,
        };
        capture
            .push(rows, &outs, mask_rows.as_deref())
            .map_err(|what| Error::Model {
                model: model.into(),
                what,
            })?;
        capture.spill().map_err(Error::Spill)?;
        if start == 0 {
            check_labels(prep, &capture, &out_name, model)?;
        }
        start += rows;
        progress(start as u64, prep.samples as u64);
    }
    if let Some(r) = mask {
        r.finish()?;
    }
    // Where a member was read to its end, it must end there (a deflated member must not
    // inflate further; its CRC is checked).
    feeder.finish()?;
    drop(archives);
    // Latency: the first `latency_batch` samples (only those are read), warm-up runs first;
    // a state input gets its initial value.
    let lb = cfg.latency_batch.clamp(1, prep.samples);
    let lat = feed::first_rows(&prep.plan, ds, lb)?;
    let mut times = Vec::with_capacity(cfg.iterations.min(1 << 16));
    for i in 0..cfg.warmup.saturating_add(cfg.iterations) {
        let t = Instant::now();
        run_batch(sess, lat.clone(), &[out_name.as_str()], model, None)?;
        if i >= cfg.warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((capture.finish(), times))
}

/// Array values as f32 (a pooling mask of any numeric type; bool is 0 or 1).
fn as_f32(d: ArrayData) -> Vec<f32> {
    match d {
        ArrayData::F32(v) => v,
        ArrayData::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        ArrayData::F16(v) => v.into_iter().map(|x| x.to_f32()).collect(),
        ArrayData::I64(v) => v.into_iter().map(|x| x as f32).collect(),
        ArrayData::I32(v) => v.into_iter().map(|x| x as f32).collect(),
        ArrayData::I8(v) => v.into_iter().map(f32::from).collect(),
        ArrayData::U8(v) => v.into_iter().map(f32::from).collect(),
        ArrayData::Bool(v) => v.into_iter().map(|b| f32::from(u8::from(b))).collect(),
    }
}

/// `spec.dataset.slices`: an integer array with one value per row of the dataset, at most
/// [`quality::MAX_SLICES`] distinct values; the first `samples` are kept.
fn read_slices(
    ds: &Dataset,
    cfg: &EvalConfig,
    all: usize,
    samples: usize,
) -> Result<Option<Vec<i64>>, String> {
    let Some(name) = &cfg.slices else {
        return Ok(None);
    };
    let field = "spec.dataset.slices";
    let arr = ds.get(name).ok_or_else(|| {
        format!(
            "{field}: no array `{name}` in the dataset (arrays: {})",
            ds.names()
        )
    })?;
    if !matches!(arr.dtype(), Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::I8) {
        return Err(format!(
            "{field}: array `{name}` is {}; it must hold an integer slice per sample",
            arr.dtype().name()
        ));
    }
    if arr.shape() != [all] {
        return Err(format!(
            "{field}: array `{name}` has shape {:?}, but the dataset has {all} samples: it needs shape [{all}] (one slice per sample)",
            arr.shape()
        ));
    }
    let v: Vec<i64> = match ds
        .read_rows(name, 0, samples)
        .map_err(|e| e.to_string())?
        .data
    {
        ArrayData::I64(v) => v,
        ArrayData::I32(v) => v.into_iter().map(i64::from).collect(),
        ArrayData::U8(v) => v.into_iter().map(i64::from).collect(),
        ArrayData::I8(v) => v.into_iter().map(i64::from).collect(),
        _ => unreachable!("dtype checked above"),
    };
    let mut distinct = v.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > quality::MAX_SLICES {
        return Err(format!(
            "{field}: array `{name}` names {} slices; at most {} are reported",
            distinct.len(),
            quality::MAX_SLICES
        ));
    }
    Ok(Some(v))
}

/// `spec.evaluation.pool.mask` names an array with one row per sample.
fn check_mask(ds: &Dataset, name: &str, all: usize) -> Result<(), String> {
    let arr = ds.get(name).ok_or_else(|| {
        format!(
            "spec.evaluation.pool.mask: no array `{name}` in the dataset (arrays: {})",
            ds.names()
        )
    })?;
    if arr.shape().first() != Some(&all) {
        return Err(format!(
            "spec.evaluation.pool.mask: array `{name}` has shape {:?}; its first axis must be the {all} samples",
            arr.shape()
        ));
    }
    Ok(())
}

/// Labels must be classes of the compared output (checked once its width is known): a
/// class index per sample for `[N, C]` scores, a sequence's classes for a sequence task (the
/// blank is never a target).
fn check_labels(
    prep: &Prepared,
    out: &capture::Capture,
    out_name: &str,
    model: &Path,
) -> Result<()> {
    let bad = match (&prep.labels, out.classes(), &prep.task) {
        (Some(Labels::Classes(l)), Some(c), _) => l
            .iter()
            .enumerate()
            .find(|(_, l)| !(0..c as i64).contains(*l))
            .map(|(i, l)| {
                format!(
                    "label {l} of sample {i} is not a class of output `{out_name}`, which has {c} classes (0 to {})",
                    c - 1
                )
            }),
        (Some(Labels::Sequences(s)), _, task::Task::Sequence { blank }) => {
            let c = out.shape().get(1).copied().unwrap_or(0);
            s.iter().enumerate().find_map(|(i, seq)| {
                let l = *seq.iter().find(|&&l| l as usize >= c || l as usize == *blank)?;
                Some(format!(
                    "{}: label {l} of sample {i} is not a class output `{out_name}` decodes (it has {c} classes, blank {blank})",
                    prep.labels_field
                ))
            })
        }
        _ => None,
    };
    match bad {
        None => Ok(()),
        Some(what) => Err(Error::Mismatch {
            dataset: prep.ds.display_name().to_string(),
            model: model.into(),
            what,
        }),
    }
}

/// Metrics of a model's outputs, against the labels and (for a candidate) the reference:
/// the generic ones here, the task's, the slices' and the intervals in [`quality`].
pub fn score(
    out: &Outputs,
    times: &[f64],
    prep: &Prepared,
    reference: Option<&Outputs>,
    bytes: u64,
) -> Result<Metrics> {
    let rows = |o: &Outputs, c: usize| {
        o.values
            .map_rows(c, o.values.len() / c, metrics::argmax)
            .map_err(Error::Spill)
    };
    let pred = out.classes.map(|c| rows(out, c)).transpose()?;
    let accuracy = match (&pred, prep.labels()) {
        (Some(p), Some(l)) => Some(metrics::accuracy(p, l)),
        _ => None,
    };
    let mut m = Metrics {
        bytes,
        samples: prep.samples as u64,
        accuracy,
        latency_p50_ms: metrics::percentile(times, 50.0),
        latency_p95_ms: metrics::percentile(times, 95.0),
        ..Default::default()
    };
    if let Some(r) = reference {
        if let (Some(p), Some(c)) = (&pred, r.classes) {
            m.agreement = Some(metrics::agreement(p, &rows(r, c)?));
        }
        let (cos, mae, max) =
            metrics::closeness_of(&r.values, &out.values, out.per_sample).map_err(Error::Spill)?;
        m.cosine_similarity = Some(cos);
        m.mean_abs_error = Some(mae);
        m.max_abs_error = Some(max);
        let q = quality::measure(
            &prep.task,
            out,
            r,
            prep.labels.as_ref(),
            prep.slices.as_deref(),
        )
        .map_err(Error::Spill)?;
        m.task = q.task;
        m.intervals = q.intervals;
        m.slices = q.slices;
    }
    Ok(m)
}

impl Prepared<'_> {
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The class labels of the evaluated rows, when the dataset has them.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_ref().and_then(Labels::classes)
    }

    /// Where each model input's values come from.
    pub fn plan(&self) -> &feed::Plan<'_> {
        &self.plan
    }
}

/// ONNX Runtime's offline graph optimisation: `src` optimised at `level` (1 = basic, portable
/// ONNX; 2 = extended, with ONNX Runtime's fused com.microsoft ops) and written to `dst`, on
/// the CPU execution provider so the result runs on every provider that runs those ops.
pub fn optimize_offline(src: &Path, dst: &Path, level: u8, threads: Option<usize>) -> Result<()> {
    use ort::session::builder::GraphOptimizationLevel;
    let env = runtime::environment()?;
    let err = |message: String| Error::Session {
        path: src.into(),
        message,
    };
    let mut b = Session::builder(env).map_err(|e| err(e.to_string()))?;
    if let Some(t) = threads {
        b = b
            .with_intra_threads(t.clamp(1, MAX_THREADS))
            .map_err(|e| err(e.to_string()))?;
    }
    let mut b = b
        .with_optimization_level(if level >= 2 {
            GraphOptimizationLevel::Level2
        } else {
            GraphOptimizationLevel::Level1
        })
        .map_err(|e| err(e.to_string()))?
        .with_optimized_model_path(dst)
        .map_err(|e| err(e.to_string()))?;
    let sess = b.commit_from_file(src).map_err(|e| err(e.to_string()))?;
    drop(sess);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LatencySpec;

    #[test]
    fn spec_values_are_clamped_to_what_can_run() {
        let ev = EvaluationSpec {
            batch_size: Some(0),
            threads: Some(100_000),
            latency: Some(LatencySpec {
                batch_size: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = EvalConfig::from_spec(&ev, None, Some(0));
        assert_eq!(
            (c.batch_size, c.threads, c.latency_batch),
            (1, Some(256), 1)
        );
        assert_eq!(c.limit, Some(0), "refused by prepare with a message");
        let ev = EvaluationSpec {
            threads: Some(0),
            ..Default::default()
        };
        let c = EvalConfig::from_spec(&ev, None, None);
        assert_eq!(
            (c.batch_size, c.threads, c.warmup, c.iterations),
            (32, Some(1), 10, 100)
        );
    }
}
