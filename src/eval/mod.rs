//! Evaluation with ONNX Runtime: the same dataset through the original and the candidate,
//! metrics against labels and against the original's outputs, and latency after warm-up.

pub mod dataset;
pub mod metrics;
pub mod runtime;

pub use dataset::{Array, ArrayData, Dataset};
pub use runtime::{Provider, RuntimeError};

use crate::api::{EvaluationSpec, Metrics};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    #[error("dataset {dataset} does not fit model {model}: {what}")]
    Mismatch {
        dataset: PathBuf,
        model: PathBuf,
        what: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings with defaults applied.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub batch_size: usize,
    pub threads: Option<usize>,
    pub output: Option<String>,
    pub labels: Option<String>,
    pub limit: Option<usize>,
    pub latency_batch: usize,
    pub warmup: usize,
    pub iterations: usize,
}

impl EvalConfig {
    pub fn from_spec(ev: &EvaluationSpec, labels: Option<String>, limit: Option<u32>) -> Self {
        let lat = ev.latency.clone().unwrap_or_default();
        Self {
            batch_size: ev.batch_size.unwrap_or(32) as usize,
            threads: ev.threads.map(|t| t as usize),
            output: ev.output.clone(),
            labels,
            limit: limit.map(|l| l as usize),
            latency_batch: lat.batch_size.unwrap_or(1) as usize,
            warmup: lat.warmup.unwrap_or(10) as usize,
            iterations: lat.iterations.unwrap_or(100) as usize,
        }
    }
}

/// One model's outputs on the whole dataset (the compared output, flattened).
#[derive(Debug, Clone)]
pub struct Outputs {
    pub values: Vec<f32>,
    pub per_sample: usize,
    /// Classes per sample when the output is `[N, C]` with C > 1.
    pub classes: Option<usize>,
}

/// The dataset checked against a model's inputs, ready for batching.
pub struct Prepared<'d> {
    inputs: Vec<(String, &'d Array)>,
    labels: Option<Vec<i64>>,
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
    let env = runtime::environment()?;
    let err = |message: String| Error::Session {
        path: path.into(),
        message,
    };
    let mut b = Session::builder(env).map_err(|e| err(e.to_string()))?;
    if let Some(t) = cfg.threads {
        b = b.with_intra_threads(t).map_err(|e| err(e.to_string()))?;
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

/// Checks that the dataset has every input the model needs, with the right dtype and shape.
pub fn prepare<'d>(opened: &Opened, ds: &'d Dataset, cfg: &EvalConfig) -> Result<Prepared<'d>> {
    let (sess, model) = (&opened.sess, opened.path.as_path());
    let mismatch = |what: String| Error::Mismatch {
        dataset: ds.path.clone(),
        model: model.into(),
        what,
    };
    let mut inputs = Vec::new();
    let mut samples: Option<usize> = None;
    for inp in sess.inputs() {
        let name = inp.name().to_string();
        let arr = ds.arrays.get(&name).ok_or_else(|| {
            mismatch(format!(
                "no array named `{name}` for model input `{name}` (arrays: {})",
                ds.names()
            ))
        })?;
        let ValueType::Tensor { ty, shape, .. } = inp.dtype() else {
            return Err(mismatch(format!("model input `{name}` is not a tensor")));
        };
        if element_name(ty) != arr.data.dtype() {
            return Err(mismatch(format!(
                "array `{name}` is {} but model input `{name}` expects {}: convert it, e.g. arr.astype(np.{})",
                arr.data.dtype(),
                element_name(ty),
                element_name(ty)
            )));
        }
        let want: Vec<i64> = shape.iter().copied().collect();
        let fits = arr.shape.len() == want.len()
            && want
                .iter()
                .zip(&arr.shape)
                .skip(1)
                .all(|(w, h)| *w < 0 || *w as usize == *h);
        if !fits {
            return Err(mismatch(format!(
                "array `{name}` has shape {:?} but model input `{name}` expects {:?} (-1 = any; axis 0 = samples)",
                arr.shape, want
            )));
        }
        let n = arr.shape[0];
        if samples.is_some_and(|s| s != n) {
            return Err(mismatch(format!(
                "array `{name}` has {n} samples, other inputs have {}",
                samples.unwrap_or(0)
            )));
        }
        samples = Some(n);
        inputs.push((name, arr));
    }
    let mut samples = samples.ok_or_else(|| mismatch("the model has no inputs".into()))?;
    if let Some(l) = cfg.limit {
        samples = samples.min(l);
    }
    let label_name = cfg.labels.clone().or_else(|| {
        ds.arrays
            .contains_key("labels")
            .then(|| "labels".to_string())
    });
    let labels = match label_name {
        None => None,
        Some(ln) => {
            let arr = ds.arrays.get(&ln).ok_or_else(|| {
                mismatch(format!(
                    "labels array `{ln}` (spec.dataset.labels) is missing (arrays: {})",
                    ds.names()
                ))
            })?;
            let l: Vec<i64> = match &arr.data {
                ArrayData::I64(v) => v.clone(),
                ArrayData::I32(v) => v.iter().map(|&x| x as i64).collect(),
                ArrayData::U8(v) => v.iter().map(|&x| x as i64).collect(),
                other => {
                    return Err(mismatch(format!(
                        "labels array `{ln}` is {}; it must hold integer class indices",
                        other.dtype()
                    )));
                }
            };
            if arr.shape.len() != 1 || l.len() < samples {
                return Err(mismatch(format!(
                    "labels array `{ln}` has shape {:?}; expected [{samples}]",
                    arr.shape
                )));
            }
            Some(l[..samples].to_vec())
        }
    };
    Ok(Prepared {
        inputs,
        labels,
        samples,
    })
}

fn batch_value(arr: &Array, start: usize, end: usize) -> ort::Result<DynValue> {
    let ps = arr.per_sample();
    let mut shape: Vec<i64> = arr.shape.iter().map(|&d| d as i64).collect();
    shape[0] = (end - start) as i64;
    macro_rules! t {
        ($v:expr) => {
            Tensor::from_array((shape, $v[start * ps..end * ps].to_vec()))?.into_dyn()
        };
    }
    Ok(match &arr.data {
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

fn run_batch(
    sess: &mut Session,
    prep: &Prepared,
    out_name: &str,
    start: usize,
    end: usize,
    path: &Path,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let err = |e: ort::Error| Error::Run {
        path: path.into(),
        message: e.to_string(),
    };
    let mut feed: Vec<(Cow<str>, ort::session::SessionInputValue)> =
        Vec::with_capacity(prep.inputs.len());
    for (name, arr) in &prep.inputs {
        feed.push((
            Cow::Owned(name.clone()),
            batch_value(arr, start, end).map_err(err)?.into(),
        ));
    }
    let outputs = sess.run(feed).map_err(err)?;
    let v = outputs.get(out_name).ok_or_else(|| Error::Run {
        path: path.into(),
        message: format!("output `{out_name}` missing"),
    })?;
    let as_f32 = |v: &DynValue| -> Result<(Vec<i64>, Vec<f32>)> {
        if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
            return Ok((s.to_vec(), d.to_vec()));
        }
        if let Ok((s, d)) = v.try_extract_tensor::<half::f16>() {
            return Ok((s.to_vec(), d.iter().map(|x| x.to_f32()).collect()));
        }
        if let Ok((s, d)) = v.try_extract_tensor::<f64>() {
            return Ok((s.to_vec(), d.iter().map(|&x| x as f32).collect()));
        }
        Err(Error::Run {
            path: path.into(),
            message: format!(
                "output `{out_name}` is not a float tensor; choose a float output with spec.evaluation.output"
            ),
        })
    };
    as_f32(v)
}

/// Runs the model over the dataset and measures latency. Progress gets (done, total) samples.
pub fn evaluate(
    opened: &mut Opened,
    prep: &Prepared,
    cfg: &EvalConfig,
    progress: &dyn Fn(u64, u64),
) -> Result<(Outputs, Vec<f64>)> {
    let (sess, model) = (&mut opened.sess, opened.path.as_path());
    let out_name = match &cfg.output {
        Some(o) => {
            if !sess.outputs().iter().any(|x| x.name() == o) {
                let names: Vec<&str> = sess.outputs().iter().map(|x| x.name()).collect();
                return Err(Error::Mismatch {
                    dataset: PathBuf::new(),
                    model: model.into(),
                    what: format!(
                        "spec.evaluation.output `{o}` is not an output of the model (outputs: {})",
                        names.join(", ")
                    ),
                });
            }
            o.clone()
        }
        None => sess.outputs()[0].name().to_string(),
    };
    let mut values = Vec::new();
    let mut out_shape = Vec::new();
    let mut start = 0;
    while start < prep.samples {
        let end = (start + cfg.batch_size).min(prep.samples);
        let (shape, v) = run_batch(sess, prep, &out_name, start, end, model)?;
        out_shape = shape;
        values.extend(v);
        progress(end as u64, prep.samples as u64);
        start = end;
    }
    let per_sample = values.len() / prep.samples.max(1);
    let classes = (out_shape.len() == 2 && out_shape[1] > 1).then_some(out_shape[1] as usize);
    // Latency: the first `latency_batch` samples, warm-up runs first.
    let lb = cfg.latency_batch.min(prep.samples).max(1);
    let mut times = Vec::with_capacity(cfg.iterations);
    for i in 0..cfg.warmup + cfg.iterations {
        let t = Instant::now();
        run_batch(sess, prep, &out_name, 0, lb, model)?;
        if i >= cfg.warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((
        Outputs {
            values,
            per_sample,
            classes,
        },
        times,
    ))
}

/// Metrics of a model's outputs, against the labels and (for a candidate) the reference.
pub fn score(
    out: &Outputs,
    times: &[f64],
    prep: &Prepared,
    reference: Option<&Outputs>,
    bytes: u64,
) -> Metrics {
    let pred = out.classes.map(|c| metrics::top1(&out.values, c));
    let accuracy = match (&pred, &prep.labels) {
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
            m.agreement = Some(metrics::agreement(p, &metrics::top1(&r.values, c)));
        }
        let (cos, mae, max) = metrics::closeness(&r.values, &out.values, out.per_sample);
        m.cosine_similarity = Some(cos);
        m.mean_abs_error = Some(mae);
        m.max_abs_error = Some(max);
    }
    m
}

impl Prepared<'_> {
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }

    pub fn samples(&self) -> usize {
        self.samples
    }
}
