//! One CompressionJob, end to end, as typed stages:
//! `fetch -> Inputs`, `baseline -> Baseline`, `build_candidate -> Candidate`,
//! `evaluate -> Metrics`, `gate::decide`, `publish -> Published`.
//! `kompress run` and `kompress worker` both call `run`; a later search calls
//! `build_candidate` and `evaluate` many times against one `Inputs` and one `Baseline`.
//!
//! Scratch layout (nothing a model or dataset names can collide across these folders):
//! `model/` holds the model file and its external data (as the model names them),
//! `dataset/` the evaluation set (and a separate calibration set), `calibration/` the
//! original model with the calibrated activations as extra outputs, `candidate/` the
//! compressed model.
//!
//! A static quantization pass adds a stage between baseline and build_candidate:
//! `calibrate -> Calibration` runs the original model over the calibration rows (a separate
//! set, or the evaluation set's last rows, which the baseline and candidate then never
//! score) and folds the activations into fixed-size statistics.

use crate::api::{
    CalibrationMethod, CompressionJobSpec, FieldError, InvalidSpec, JobResult, Metrics, PassSpec,
    QuantMode, QuantizeSpec, SearchForm, TargetCpu, reason, validate,
};
use crate::eval::calibrate::{self as calib, RowRange};
use crate::eval::{self, Dataset, EvalConfig};
use crate::gate;
use crate::onnx::{self, Model, SaveOptions};
use crate::passes::{self, ActivationRanges, Calibrated, Pass};
use crate::publish;
use crate::report::{
    ActivationError, CalibrationReport, CalibrationSourceRef, InputRef, JobRef, PassReport, Report,
    Tools,
};
use crate::storage::{self, Location, Storage};
use crate::ui::Ui;
use kube::Resource;

pub mod cache;
mod external;
mod opset_check;
pub mod search;

pub use external::{evaluate_external, external_candidate};

pub use opset_check::{OpsetCheck, check_opset_upgrade};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Why a run failed. `is_permanent` decides retries; `category` labels metrics and Events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidSpec(#[from] crate::api::InvalidSpec),
    #[error(transparent)]
    Storage(Box<storage::Error>),
    #[error(transparent)]
    Model(#[from] onnx::Error),
    #[error("pass {index} ({name}) failed")]
    Pass {
        index: usize,
        name: &'static str,
        #[source]
        source: crate::passes::Error,
    },
    #[error("evaluating the {which} model failed")]
    Eval {
        which: &'static str,
        #[source]
        source: eval::Error,
    },
    #[error(transparent)]
    Gate(#[from] gate::MissingMetric),
    /// `kompress evaluate`'s candidate does not take or give what the original does.
    #[error("candidate {path} does not fit the job's model: {what}")]
    CandidateMismatch { path: String, what: String },
    /// The evidence's signing key (`field` says which setting named it) cannot be read or
    /// used; checked before anything is fetched, and nothing is promoted.
    #[error("{field}: {reason}")]
    Signing { field: String, reason: String },
    // The path is kept for debugging but not shown: it is a folder of this run, not a name
    // the user wrote.
    #[error(
        "{what} in the scratch folder failed: free space or give the job more scratch \
         (spec.resources.scratch; --scratch or KOMPRESS_SCRATCH locally)"
    )]
    Scratch {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Self::Storage(Box::new(e))
    }
}

impl From<crate::uri::Error> for Error {
    fn from(e: crate::uri::Error) -> Self {
        storage::Error::from(e).into()
    }
}

impl Error {
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Storage(e) => e.is_permanent(),
            Self::Model(onnx::Error::Write { .. })
            | Self::Scratch { .. }
            | Self::Eval {
                source: eval::Error::Spill(_),
                ..
            } => false,
            _ => true,
        }
    }

    /// A short, static category (an `api::reason` constant): metric label values, Event
    /// reasons and the worker's termination message.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => reason::INVALID_SPEC,
            Self::Storage(e) if e.is_permanent() => reason::STORAGE_ERROR,
            Self::Storage(_) => reason::STORAGE_UNAVAILABLE,
            Self::Model(onnx::Error::Write { .. })
            | Self::Eval {
                source: eval::Error::Spill(_),
                ..
            } => reason::SCRATCH_ERROR,
            Self::Model(_) | Self::CandidateMismatch { .. } => reason::INVALID_MODEL,
            Self::Pass { .. } => reason::PASS_FAILED,
            Self::Eval {
                source: eval::Error::Runtime(_),
                ..
            } => reason::RUNTIME_UNAVAILABLE,
            Self::Eval { .. } => reason::EVALUATION_FAILED,
            Self::Gate(_) => reason::THRESHOLD_UNMEASURABLE,
            Self::Scratch { .. } => reason::SCRATCH_ERROR,
            Self::Signing { .. } => reason::SIGNING_FAILED,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct RunOptions {
    /// Working directory for downloads and the candidate (empty or new).
    pub scratch: PathBuf,
    /// Prefix of this run's folder under `output.uri/runs/` (default: the job's name). A UTC
    /// time and a random suffix are always appended, so no two runs share a folder.
    pub run_id: Option<String>,
    /// Skip the cache lookup and compute (`kompress run --no-cache`); the result is still
    /// recorded, replacing the entry. `spec.output.cache: false` turns the cache off entirely.
    pub no_cache: bool,
}

pub struct Outcome {
    pub result: JobResult,
    /// report.json as written (a cached result's is the earlier run's evaluation, replayed).
    pub report: serde_json::Value,
}

/// Fetched inputs, verified, in their own scratch folders.
pub struct Inputs {
    /// The model file (its external data lies beside it, as the model names it).
    pub model_path: PathBuf,
    pub model: InputRef,
    pub external_data: Vec<InputRef>,
    pub dataset_path: PathBuf,
    pub dataset: InputRef,
    /// `spec.calibration.dataset`, fetched beside the dataset.
    pub calibration: Option<(PathBuf, InputRef)>,
    /// `spec.edgeCases`, fetched beside the dataset.
    pub edge_cases: Option<(PathBuf, InputRef)>,
}

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
    fn from_spec(spec: &CompressionJobSpec, scratch: &Path) -> Option<Self> {
        let e = spec.evaluation().evaluator?;
        Some(Self {
            evaluator: eval::evaluator::Evaluator {
                command: e.command.clone(),
                timeout: std::time::Duration::from_secs(u64::from(
                    e.timeout_seconds
                        .unwrap_or(eval::evaluator::DEFAULT_TIMEOUT_SECONDS),
                )),
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

/// Calibrated activation ranges for the static quantization pass.
pub struct Calibration {
    pub pass: usize,
    pub calibrated: Arc<Calibrated>,
    pub report: CalibrationReport,
}

/// A compressed model on disk, with what each pass did.
pub struct Candidate {
    pub path: PathBuf,
    /// How messages name it (the scratch copy's path is never shown).
    pub shown: String,
    /// (file name, local path, sha256): the model file first, then its external data.
    pub files: Vec<(String, PathBuf, String)>,
    /// sha256 of the model (of its file list when it has external data).
    pub digest: String,
    pub bytes: u64,
    /// `Constant` weights folded into initializers before the passes.
    pub folded_constants: usize,
    pub passes: Vec<PassReport>,
}

impl Candidate {
    /// Weight tensors the passes changed (0: the candidate is the original, re-encoded).
    pub fn tensors_changed(&self) -> usize {
        self.passes.iter().map(|p| p.tensors.len()).sum()
    }
}

fn scratch_dir(path: &Path) -> Result<()> {
    let made = if storage::shutting_down() {
        Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the process is shutting down",
        ))
    } else {
        std::fs::create_dir_all(path)
    };
    made.map_err(|source| Error::Scratch {
        what: "making a folder",
        path: path.into(),
        source,
    })
}

/// Fetches `loc` to `dest` (its folders are made by the storage layer) with a progress bar.
async fn fetch_one(
    storage: &Storage,
    ui: &Ui,
    loc: &Location,
    dest: &Path,
    opts: &storage::FetchOptions<'_>,
    label: &str,
) -> Result<storage::Fetched> {
    let bar = ui.bar(label, true);
    let f = storage
        .fetch_with(loc, dest, opts, &|n, t| bar.set(n, t))
        .await?;
    bar.finish(f.bytes);
    Ok(f)
}

/// Fetch options that check a digest when the spec gives one.
fn expecting(sha256: Option<&str>) -> storage::FetchOptions<'_> {
    storage::FetchOptions {
        expected_sha256: sha256,
        ..Default::default()
    }
}

/// A file name for scratch: the URI's last segment, or `fallback` when it has none.
fn file_name_of(loc: &Location, fallback: &str) -> String {
    match loc.file_name() {
        "" | "." | ".." => fallback.into(),
        n => n.into(),
    }
}

/// Stage 1: the model, its external data and the dataset, each verified on the way.
pub async fn fetch(
    spec: &CompressionJobSpec,
    storage: &Storage,
    scratch: &Path,
    ui: &Ui,
) -> Result<Inputs> {
    let model_dir = scratch.join("model");
    let (model, model_path, external_data) = if crate::uri::OciTarget::is_oci(&spec.model.uri) {
        fetch_oci_model(spec, &model_dir, ui).await?
    } else {
        fetch_model(spec, storage, &model_dir, ui).await?
    };
    let data_loc = Location::parse(&spec.dataset.uri)?;
    let dataset_path = scratch
        .join("dataset")
        .join(file_name_of(&data_loc, "dataset.npz"));
    let data_file = fetch_one(
        storage,
        ui,
        &data_loc,
        &dataset_path,
        &expecting(spec.dataset.sha256.as_deref()),
        "dataset",
    )
    .await?;
    let calibration = match spec.calibration.as_ref().and_then(|c| c.dataset.as_ref()) {
        None => None,
        Some(c) => {
            let loc = Location::parse(&c.uri)?;
            let mut name = file_name_of(&loc, "calibration.npz");
            if dataset_path.file_name() == Some(std::ffi::OsStr::new(&name)) {
                name = format!("calibration-{name}");
            }
            let path = scratch.join("dataset").join(name);
            let f = fetch_one(
                storage,
                ui,
                &loc,
                &path,
                &expecting(c.sha256.as_deref()),
                "calibration",
            )
            .await?;
            Some((
                path,
                InputRef {
                    uri: crate::uri::redact(&loc.uri),
                    sha256: f.sha256,
                    bytes: f.bytes,
                },
            ))
        }
    };
    let edge_cases = match &spec.edge_cases {
        None => None,
        Some(e) => Some(
            fetch_beside(
                storage,
                ui,
                scratch,
                &e.uri,
                e.sha256.as_deref(),
                "edge-cases",
            )
            .await?,
        ),
    };
    Ok(Inputs {
        edge_cases,
        model,
        model_path,
        external_data,
        dataset_path,
        dataset: InputRef {
            uri: crate::uri::redact(&data_loc.uri),
            sha256: data_file.sha256,
            bytes: data_file.bytes,
        },
        calibration,
    })
}

/// The model from object storage or a local path, and its external data from beside it:
/// (its record, its path in scratch, the external data's records).
async fn fetch_model(
    spec: &CompressionJobSpec,
    storage: &Storage,
    model_dir: &Path,
    ui: &Ui,
) -> Result<(InputRef, PathBuf, Vec<InputRef>)> {
    let model_loc = Location::parse(&spec.model.uri)?;
    let model_path = model_dir.join(file_name_of(&model_loc, "model.onnx"));
    ui.stage(&format!("fetching {}", crate::uri::redact(&model_loc.uri)));
    let model_file = fetch_one(
        storage,
        ui,
        &model_loc,
        &model_path,
        &expecting(spec.model.sha256.as_deref()),
        "model",
    )
    .await?;
    let shown = Path::new(&model_loc.uri);
    let mut external_data = Vec::new();
    for ext in onnx::external_locations(&model_path, shown)? {
        let src = model_loc.parent().join(&ext.location);
        // External data must be regular files inside the model's directory: a symlink out of
        // it (its bytes would be published), a device or a pipe is refused; no more is read than
        // the tensors declare.
        let confine = model_loc.parent().local_path();
        let opts = storage::FetchOptions {
            expected_sha256: None,
            max_bytes: Some(ext.max_bytes),
            confine_to: confine.as_deref(),
        };
        let dest = model_dir.join(&ext.location);
        let f = fetch_one(storage, ui, &src, &dest, &opts, &ext.location).await?;
        external_data.push(InputRef {
            uri: crate::uri::redact(&src.uri),
            sha256: f.sha256,
            bytes: f.bytes,
        });
    }
    // Recorded (report.json, promoted.json, the statement): without query or userinfo.
    let model = InputRef {
        uri: crate::uri::redact(&model_loc.uri),
        sha256: model_file.sha256,
        bytes: model_file.bytes,
    };
    Ok((model, model_path, external_data))
}

/// The model from an `oci://` artifact ([`crate::oci::pull`]): its `.onnx` layer and the
/// layers its external data names, each streamed to scratch and checked against its layer
/// digest. The model's record names the manifest it resolved to
/// (`oci://REGISTRY/REPOSITORY:TAG@sha256:...`).
async fn fetch_oci_model(
    spec: &CompressionJobSpec,
    model_dir: &Path,
    ui: &Ui,
) -> Result<(InputRef, PathBuf, Vec<InputRef>)> {
    use crate::oci::{self, pull};
    const FIELD: &str = "spec.model.uri";
    let uri = spec.model.uri.trim();
    let plain_http = spec
        .model
        .registry
        .as_ref()
        .and_then(|r| r.plain_http)
        .unwrap_or(false);
    ui.stage(&format!("fetching {}", crate::uri::redact(uri)));
    let src = pull::Source::open(uri, plain_http, FIELD, "spec.model.registry")
        .await
        .map_err(storage::Error::from)?;
    let resolved = src.resolved_uri();
    let artifact = |what: String| -> Error {
        storage::Error::from(oci::Error::Artifact {
            field: FIELD,
            uri: uri.to_string(),
            what,
        })
        .into()
    };
    let fetch_layer = async |layer: &pull::Layer, dest: &Path, label: &str| -> Result<InputRef> {
        let bar = ui.bar(label, true);
        src.fetch(layer, dest, &|n| bar.set(n, Some(layer.size)))
            .await
            .map_err(|e| {
                storage::Error::from(oci::Error::Source {
                    field: FIELD,
                    uri: uri.to_string(),
                    source: Box::new(e),
                })
            })?;
        bar.finish(layer.size);
        Ok(InputRef {
            uri: format!("{resolved}/{}", layer.path),
            sha256: layer.digest.trim_start_matches("sha256:").to_string(),
            bytes: layer.size,
        })
    };
    let layer = &src.pack.model;
    let (folder, name) = match layer.path.rsplit_once('/') {
        Some((dir, name)) => (format!("{dir}/"), name),
        None => (String::new(), layer.path.as_str()),
    };
    let model_path = model_dir.join(name);
    // The layer's bytes must hash to its digest, so a mismatch is known before a byte is read.
    let layer_sha = layer.digest.trim_start_matches("sha256:");
    if let Some(want) = spec.model.sha256.as_deref()
        && !want.eq_ignore_ascii_case(layer_sha)
    {
        return Err(storage::Error::Checksum {
            uri: crate::uri::redact(uri),
            expected: want.to_string(),
            actual: layer_sha.to_string(),
        }
        .into());
    }
    let mut model = fetch_layer(layer, &model_path, "model").await?;
    model.uri = resolved.clone();
    let mut external_data = Vec::new();
    for ext in onnx::external_locations(&model_path, Path::new(uri))? {
        let path = format!("{folder}{}", ext.location);
        let Some(layer) = src.pack.layer(&path) else {
            return Err(artifact(format!(
                "the model names external data `{}`, and the artifact has no layer for `{path}`: \
                 push the model with its external data files",
                ext.location
            )));
        };
        if layer.size > ext.max_bytes {
            return Err(artifact(format!(
                "layer `{path}` declares {} bytes, more than the {} the model's tensors read \
                 from it",
                layer.size, ext.max_bytes
            )));
        }
        let dest = model_dir.join(&ext.location);
        external_data.push(fetch_layer(layer, &dest, &ext.location).await?);
    }
    Ok((model, model_path, external_data))
}

/// Fetches a second dataset (`label` names its bar and prefixes its scratch file name).
async fn fetch_beside(
    storage: &Storage,
    ui: &Ui,
    scratch: &Path,
    uri: &str,
    sha256: Option<&str>,
    label: &str,
) -> Result<(PathBuf, InputRef)> {
    let loc = Location::parse(uri)?;
    let name = format!("{label}-{}", file_name_of(&loc, "data.npz"));
    let path = scratch.join("dataset").join(name);
    let f = fetch_one(storage, ui, &loc, &path, &expecting(sha256), label).await?;
    Ok((
        path,
        InputRef {
            uri: crate::uri::redact(&loc.uri),
            sha256: f.sha256,
            bytes: f.bytes,
        },
    ))
}

/// ONNX Runtime's messages name the file it was given, a scratch copy: name the model as the
/// user knows it instead.
fn named(e: eval::Error, scratch: &Path, shown: &str) -> eval::Error {
    let fix = |path: PathBuf, message: String| {
        let message = message.replace(&scratch.display().to_string(), shown);
        let path = if path == scratch {
            PathBuf::from(shown)
        } else {
            path
        };
        (path, message)
    };
    match e {
        eval::Error::Session { path, message } => {
            let (path, message) = fix(path, message);
            eval::Error::Session { path, message }
        }
        eval::Error::Run { path, message } => {
            let (path, message) = fix(path, message);
            eval::Error::Run { path, message }
        }
        e => e,
    }
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
pub fn baseline(inputs: &Inputs, spec: &CompressionJobSpec, ui: &Ui) -> Result<Baseline> {
    let model = onnx::load_as(&inputs.model_path, Path::new(&inputs.model.uri))?;
    let eval_err = |source| Error::Eval {
        which: "original",
        source: named(source, &inputs.model_path, &inputs.model.uri),
    };
    let dataset =
        Dataset::open(&inputs.dataset_path, &inputs.dataset.uri).map_err(|e| eval_err(e.into()))?;
    let mut cfg = EvalConfig::from_spec(
        &spec.evaluation(),
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
    spec: &CompressionJobSpec,
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
        ..EvalConfig::from_spec(&spec.evaluation(), e.labels.clone(), e.limit)
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

/// Stage 4c: the chosen candidate on `spec.edgeCases`, gated by its thresholds; the checks
/// (named `edgeCases.<threshold>`) join `decision`'s, and a failed one rejects the candidate.
pub fn judge_edge_cases(
    candidate: &Candidate,
    base: &Baseline,
    spec: &CompressionJobSpec,
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
            name: format!("edgeCases.{}", c.name),
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

/// The recipe's static quantization pass (validation allows one).
pub fn static_pass(spec: &CompressionJobSpec) -> Option<(usize, &QuantizeSpec)> {
    spec.passes.iter().enumerate().find_map(|(i, p)| match p {
        PassSpec::Quantize(q) if q.mode == QuantMode::Static => Some((i, q)),
        _ => None,
    })
}

/// Calibration samples a static pass asks for (default 128).
pub fn calibration_samples(q: &QuantizeSpec) -> usize {
    q.calibration
        .as_ref()
        .and_then(|c| c.samples)
        .unwrap_or(128) as usize
}

/// Whether the run calibrates (a static pass in the recipe, or the static form in a search):
/// the field that sets the sample count, and the count.
pub fn calibration_need(spec: &CompressionJobSpec) -> Option<(String, usize)> {
    if let Some(s) = &spec.search {
        let forms = s.forms.as_deref().unwrap_or(&SearchForm::ALL);
        return forms.contains(&SearchForm::Static).then(|| {
            (
                "spec.search.calibration.samples".to_string(),
                s.calibration
                    .as_ref()
                    .and_then(|c| c.samples)
                    .unwrap_or(128) as usize,
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
    let pass = Pass::for_target(&passes[index], target);
    let (mut model, _) = passes::with_constants_folded(original);
    // The static pass sees the model as the passes before it leave it (an `optimize` pass
    // renames and fuses nodes): calibrate that model, so the tensor names match.
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
    let method = q.calibration.as_ref().map(|c| c.method).unwrap_or_default();
    let percentile = q
        .calibration
        .as_ref()
        .and_then(|c| c.percentile)
        .unwrap_or(99.999);
    let symmetric = q.symmetric_activations.unwrap_or(false);
    let samples = calibration_samples(q);
    // Its own batch: memory follows it, not evaluation.batchSize.
    let batch = q
        .calibration
        .as_ref()
        .and_then(|c| c.batch_size)
        .unwrap_or(crate::api::DEFAULT_CALIBRATION_BATCH);
    let cfg = &EvalConfig {
        batch_size: (batch as usize).max(1),
        ..cfg.clone()
    };
    let cal_err = |source| Error::Eval {
        which: "original (calibration)",
        source,
    };
    scratch_dir(dir)?;
    let path = dir.join("model.onnx");
    let with = calib::with_outputs(&model, &tensors);
    drop(model);
    save_in_scratch(&with, &path, "saving the calibration model")?;
    drop(with);
    let mut opened = calib::open(&path, cfg).map_err(cal_err)?;
    let rows = match data.rows {
        Some(r) => r,
        None => {
            let all = calib::rows(&opened, data.dataset, cfg).map_err(cal_err)?;
            RowRange {
                start: 0,
                count: samples.min(all),
            }
        }
    };
    ui.stage(&format!(
        "calibration: {} samples (rows {}..{} of {}), {} activation tensors, {}, batch {}",
        rows.count,
        rows.start,
        rows.start + rows.count,
        data.uri,
        tensors.len(),
        method_name(method),
        cfg.batch_size
    ));
    let bar = ui.bar("calibrate", false);
    let histograms = method != CalibrationMethod::MinMax;
    let stats = calib::run(
        &mut opened,
        data.dataset,
        rows,
        &tensors,
        histograms,
        cfg,
        &|d, t| bar.set(d, Some(t)),
    )
    .map_err(cal_err)?;
    bar.finish(rows.count as u64);
    drop(opened);
    let _ = std::fs::remove_dir_all(dir);
    let ranges: ActivationRanges = stats
        .iter()
        .map(|(name, s)| (name.clone(), s.range_for(method, percentile, symmetric)))
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
        data.uri
    );
    Ok(Calibration {
        pass: index,
        calibrated: Arc::new(Calibrated { ranges, summary }),
        report: CalibrationReport {
            pass: index,
            method,
            percentile: (method == CalibrationMethod::Percentile).then_some(percentile),
            samples: rows.count as u64,
            source: CalibrationSourceRef {
                uri: data.uri.clone(),
                sha256: data.sha256.clone(),
                kind: data.kind,
                rows: [rows.start as u64, (rows.start + rows.count) as u64],
            },
            tensors: tensors.len(),
            activations,
            seconds: started.elapsed().as_secs_f64(),
        },
    })
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
    spec: &CompressionJobSpec,
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
    spec: &CompressionJobSpec,
    passes: &[PassSpec],
    index: usize,
    dir: &Path,
    ui: &Ui,
) -> Result<Calibration> {
    let target = spec.target.clone().unwrap_or_default().cpu;
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

/// Saves a model made in this run to scratch (its external data beside it when it had some);
/// a failed write is a scratch error (retryable), naming `what`.
fn save_in_scratch(model: &Model, path: &Path, what: &'static str) -> Result<onnx::Saved> {
    onnx::save(
        &model.proto,
        path,
        &SaveOptions {
            external_data: model.had_external_data.then_some(true),
        },
    )
    .map_err(|e| match e {
        onnx::Error::Write { path, source } => Error::Scratch { what, path, source },
        e => Error::Model(e),
    })
}

/// Stage 3: the passes, in order, on a copy of the original; the candidate saved in `dir`.
pub fn build_candidate(
    original: &Model,
    passes: &[PassSpec],
    target: TargetCpu,
    calibration: Option<&Calibration>,
    dir: &Path,
    ui: &Ui,
) -> Result<Candidate> {
    scratch_dir(dir)?;
    // Weights some exporters keep in Constant nodes become initializers first (lossless).
    let (mut model, folded) = passes::with_constants_folded(original);
    if folded > 0 {
        ui.stage(&format!(
            "{folded} weights held in Constant nodes folded into initializers"
        ));
    }
    let mut reports = Vec::new();
    for (index, p) in passes.iter().enumerate() {
        let mut pass = Pass::for_target(p, target);
        if let Some(c) = calibration.filter(|c| c.pass == index) {
            pass.set_calibration(c.calibrated.clone());
        }
        let report = pass.apply(&mut model).map_err(|source| Error::Pass {
            index,
            name: pass.name(),
            source,
        })?;
        ui.stage(&format!(
            "pass {index} {}: {} ({} tensors, {} skipped)",
            pass.name(),
            report.description,
            report.tensors.len(),
            report.skipped.len()
        ));
        reports.push(report);
    }
    let path = dir.join("model.onnx");
    let saved = save_in_scratch(&model, &path, "saving the candidate model")?;
    drop(model); // the candidate is on disk; free the weights before evaluating it
    let mut files = Vec::new();
    for f in &saved.files {
        let sha = storage::sha256_file(f).map_err(|source| Error::Scratch {
            what: "hashing the candidate",
            path: f.clone(),
            source,
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.onnx".into());
        files.push((name, f.clone(), sha));
    }
    Ok(Candidate {
        digest: publish::artifact_digest(&files),
        path,
        shown: "candidate model.onnx".into(),
        files,
        bytes: saved.bytes,
        folded_constants: folded,
        passes: reports,
    })
}

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

/// The candidate a run publishes, with how it was judged.
pub struct Chosen {
    pub candidate: Candidate,
    pub metrics: Metrics,
    /// The baseline's metrics, with the latency measured beside this candidate.
    pub baseline: Metrics,
    pub decision: gate::Decision,
    /// The passes that made it (for a search: the recipe's own and the chosen form's).
    pub recipe: Vec<PassSpec>,
    pub calibration: Option<CalibrationReport>,
    /// With `spec.search`: the trial log and its summary for the status.
    pub search: Option<(crate::report::SearchReport, crate::api::SearchSummary)>,
}

/// Stages 2b-4 and the gate for the spec's one recipe.
fn fixed_recipe(
    inputs: &Inputs,
    base: &Baseline,
    spec: &CompressionJobSpec,
    scratch: &Path,
    ui: &Ui,
) -> Result<Chosen> {
    let target = spec.target.clone().unwrap_or_default().cpu;
    let upgrade = check_opset_upgrade(base, &spec.passes, target, &scratch.join("opset"), ui)?;
    let calibration = calibrate(inputs, base, spec, &scratch.join("calibration"), ui)?;
    let mut candidate = build_candidate(
        &base.model,
        &spec.passes,
        spec.target.clone().unwrap_or_default().cpu,
        calibration.as_ref(),
        &scratch.join("candidate"),
        ui,
    )?;
    if let Some(check) = upgrade {
        opset_check::annotate(&mut candidate.passes, &check);
    }
    let (metrics, baseline, decision) = judge(&candidate, base, spec, ui)?;
    Ok(Chosen {
        candidate,
        metrics,
        baseline,
        decision,
        recipe: spec.passes.clone(),
        calibration: calibration.map(|c| c.report),
        search: None,
    })
}

/// Stage 4 and the gate: the candidate's metrics, the baseline's (with the latency measured
/// beside the candidate's) and the decision on `spec.thresholds`.
pub fn judge(
    candidate: &Candidate,
    base: &Baseline,
    spec: &CompressionJobSpec,
    ui: &Ui,
) -> Result<(Metrics, Metrics, gate::Decision)> {
    let (metrics, baseline) = evaluate(candidate, base, ui)?;
    if candidate.tensors_changed() == 0 {
        ui.stage("no pass changed any weight: the candidate is the original model (see the skipped reasons in the report)");
    }
    let decision = gate::decide(
        &spec.thresholds,
        &baseline,
        &metrics,
        candidate.tensors_changed(),
    )?;
    Ok((metrics, baseline, decision))
}

/// Stage 4c for the chosen candidate (nothing without `spec.edgeCases`).
fn edge_cases_of(
    inputs: &Inputs,
    base: &Baseline,
    spec: &CompressionJobSpec,
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

/// A judged candidate with what its result and report are made of.
pub struct Judged<'a> {
    pub job: &'a JobRef,
    pub spec: &'a CompressionJobSpec,
    pub inputs: &'a Inputs,
    pub run_id: String,
    pub started: Instant,
    pub started_at: jiff::Timestamp,
    pub chosen: Chosen,
    pub edge_cases: Option<crate::report::EdgeCasesReport>,
}

impl<'a> Judged<'a> {
    /// Stage 4c on the chosen candidate (`spec.edgeCases`, its checks joining the decision),
    /// timed into `stages`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        job: &'a JobRef,
        spec: &'a CompressionJobSpec,
        inputs: &'a Inputs,
        base: &Baseline,
        mut chosen: Chosen,
        (run_id, started, started_at): (String, Instant, jiff::Timestamp),
        stages: &mut Vec<crate::api::StageTime>,
        ui: &Ui,
    ) -> Result<Self> {
        let t = Instant::now();
        let edge_cases = edge_cases_of(inputs, base, spec, &mut chosen, ui)?;
        if edge_cases.is_some() {
            stages.push(stage("edgeCases", t));
        }
        Ok(Judged {
            job,
            spec,
            inputs,
            run_id,
            started,
            started_at,
            chosen,
            edge_cases,
        })
    }

    /// The result before anything is published; `stages` times the run so far.
    fn result(&self, original_bytes: u64, stages: Vec<crate::api::StageTime>) -> JobResult {
        let c = &self.chosen;
        let bytes_read = input_bytes(self.inputs);
        JobResult {
            verdict: c.decision.verdict,
            original_bytes,
            compressed_bytes: c.candidate.bytes,
            ratio: c.decision.ratio,
            accuracy_drop: c.decision.accuracy_drop,
            baseline: c.baseline.clone(),
            candidate: c.metrics.clone(),
            checks: c.decision.checks.clone(),
            search: c.search.as_ref().map(|s| s.1.clone()),
            usage: Some(crate::api::Usage {
                bytes_read,
                stages,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The run's report with `result` and the passes' reports.
    fn report(&self, result: &JobResult, passes: &[PassReport]) -> Report {
        let c = &self.chosen;
        let this = ThisRun {
            job: self.job,
            spec: self.spec,
            inputs: self.inputs,
            run_id: self.run_id.clone(),
            started: self.started,
            started_at: self.started_at,
        };
        Report {
            recipe: c.recipe.clone(),
            folded_constants: c.candidate.folded_constants,
            passes: passes.to_vec(),
            calibration: c.calibration.clone(),
            search: c.search.as_ref().map(|s| s.0.clone()),
            edge_cases: self.edge_cases.clone(),
            ..this.report(result)
        }
    }
}

/// What a run's report says of the run itself, whatever made its candidate.
struct ThisRun<'a> {
    job: &'a JobRef,
    spec: &'a CompressionJobSpec,
    inputs: &'a Inputs,
    run_id: String,
    started: Instant,
    started_at: jiff::Timestamp,
}

impl ThisRun<'_> {
    /// The report with `result`, this run's identity, inputs and tools, and nothing of how a
    /// candidate was made.
    fn report(&self, result: &JobResult) -> Report {
        let (inputs, spec) = (self.inputs, self.spec);
        Report {
            api_version: crate::api::CompressionJob::api_version(&()).into_owned(),
            kind: Report::KIND,
            job: self.job.clone(),
            run_id: self.run_id.clone(),
            started_at: self.started_at.to_string(),
            duration_seconds: self.started.elapsed().as_secs_f64(),
            model: inputs.model.clone(),
            external_data: inputs.external_data.clone(),
            dataset: inputs.dataset.clone(),
            recipe: Vec::new(),
            thresholds: spec.thresholds.clone(),
            folded_constants: 0,
            passes: Vec::new(),
            calibration: None,
            search: None,
            edge_cases: None,
            evaluator: spec
                .evaluation()
                .evaluator
                .as_ref()
                .map(crate::report::EvaluatorRef::from_spec),
            result: result.clone(),
            tools: Tools::this_binary(
                eval::runtime::library_version(),
                eval::runtime::library_path().map(|p| p.display().to_string()),
            ),
            cached_from: result.cached_from.clone(),
        }
    }
}

/// A run folder name no other run shares: `<prefix>-<UTC time>-<random>`, one path segment.
pub fn unique_run_id(prefix: &str, at: jiff::Timestamp) -> String {
    let mut prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // A file name holds 255 bytes; leave room for the suffix.
    prefix.truncate(200);
    let prefix = prefix.trim_matches('.');
    let mut random = [0u8; 4];
    if getrandom::fill(&mut random).is_err() {
        // No entropy source: the time in nanoseconds and the pid still separate runs.
        random = (at.as_nanosecond() as u32 ^ std::process::id()).to_le_bytes();
    }
    format!(
        "{}-{}-{}",
        if prefix.is_empty() { "run" } else { prefix },
        at.strftime("%Y%m%dT%H%M%S%.3fZ"),
        hex::encode(random)
    )
}

/// The environment variable the controller sets in the worker pod: the path where it mounted
/// `spec.output.signing.secretRef`'s key.
pub const SIGNING_KEY_ENV: &str = "KOMPRESS_SIGNING_KEY_FILE";

/// Largest key file read (a PEM key is well under 1 KiB).
pub const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The evidence's signing key, read and parsed before any work starts (a bad key fails the
/// job at once, not after an hour of search). None when `spec.output.signing` is unset.
pub fn signing_key(spec: &CompressionJobSpec) -> Result<Option<crate::evidence::SigningKey>> {
    let Some(signing) = &spec.output.signing else {
        return Ok(None);
    };
    let (path, field, source_name) = match (&signing.key_file, &signing.secret_ref) {
        (Some(f), _) => (
            PathBuf::from(f),
            "spec.output.signing.keyFile".to_string(),
            f.clone(),
        ),
        (None, Some(r)) => match std::env::var_os(SIGNING_KEY_ENV) {
            Some(p) => (
                PathBuf::from(&p),
                "spec.output.signing.secretRef".to_string(),
                format!("key `{}` of Secret `{}`", r.key(), r.name),
            ),
            None => {
                return Err(Error::Signing {
                    field: "spec.output.signing.secretRef".into(),
                    reason: format!(
                        "Secret `{}` is mounted by the controller in a cluster; outside one set \
                         spec.output.signing.keyFile, or {SIGNING_KEY_ENV} to the key's path",
                        r.name
                    ),
                });
            }
        },
        (None, None) => {
            return Err(Error::Signing {
                field: "spec.output.signing".into(),
                reason: "set secretRef or keyFile".into(),
            });
        }
    };
    let text = onnx::read_small(&path, MAX_KEY_BYTES).map_err(|e| Error::Signing {
        field: field.clone(),
        reason: format!("cannot read {source_name} ({e})"),
    })?;
    crate::evidence::SigningKey::from_pem(&text, &source_name)
        .map(Some)
        .map_err(|e| Error::Signing {
            field,
            reason: e.to_string(),
        })
}

/// Seals a passing result's evidence: an in-toto statement whose subjects are the candidate's
/// files and whose predicate is `report`'s evaluation, in a DSSE envelope signed by `key` (or
/// with no signature when none is set).
/// With an OCI promotion, the model manifest (`oci://REGISTRY/REPOSITORY`, `sha256:<hex>`) is
/// a subject too.
fn seal(
    predicate: &serde_json::Value,
    files: &[publish::File],
    oci_manifest: Option<(&str, &str)>,
    key: Option<&crate::evidence::SigningKey>,
    run: &Location,
) -> Result<publish::Sealed> {
    use crate::evidence::{Envelope, PAYLOAD_TYPE, Statement, Subject};
    let mut subjects: Vec<Subject> = files
        .iter()
        .map(|(name, _, sha)| Subject::sha256(name, sha))
        .collect();
    if let Some((repo, digest)) = oci_manifest {
        subjects.push(Subject::sha256(
            repo,
            digest.strip_prefix("sha256:").unwrap_or(digest),
        ));
    }
    let statement = Statement::new(subjects, predicate.clone());
    let envelope = match key {
        Some(k) => k.sign(&statement).map_err(|e| Error::Signing {
            field: "spec.output.signing".into(),
            reason: e.to_string(),
        })?,
        None => {
            use base64::Engine;
            Envelope {
                payload_type: PAYLOAD_TYPE.into(),
                payload: base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&statement).unwrap_or_default()),
                signatures: vec![],
            }
        }
    };
    Ok(publish::Sealed {
        bytes: serde_json::to_vec_pretty(&envelope).unwrap_or_default(),
        keyid: key.map(|k| k.keyid()),
        run_id: run.file_name().to_string(),
    })
}

/// Runs one job. A rejected candidate is an `Ok` outcome with `Verdict::Rejected`. With the
/// cache on (see [`cache`]), a job whose key matches a finished run's publishes that run's
/// verified candidate and result instead of computing them.
pub async fn run(
    job: &JobRef,
    spec: &CompressionJobSpec,
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    validate(spec)?;
    let signer = signing_key(spec)?;
    let storage = Storage::new(spec.storage.as_ref());
    let output = Location::parse(&spec.output.uri)?;
    let promote_to = spec
        .output
        .promote_to
        .as_deref()
        .map(|p| publish::Promotion::parse(p, spec.output.registry.as_ref()))
        .transpose()?;
    let run_id = unique_run_id(opts.run_id.as_deref().unwrap_or(&job.name), started_at);
    let to = Publishing {
        job,
        storage: &storage,
        signer: signer.as_ref(),
        target: publish::Target {
            run: output.join(&format!("runs/{run_id}")),
            promote_to,
        },
        started,
    };

    let mut stages = Vec::new();
    // With every input's digest pinned, the key is known before the fetch: a hit reads none.
    let t = Instant::now();
    let (pinned, hit) = pinned_hit(spec, &storage, &output, opts, ui).await;
    // A reused result is published as this run (its identity, the inputs it stands for).
    let this = |inputs, run_id| ThisRun {
        job,
        spec,
        inputs,
        run_id,
        started,
        started_at,
    };
    if let Some((inputs, hit)) = hit {
        stages.push(stage("cache", t));
        return reuse(&to, &this(&inputs, run_id), hit, (0, stages), ui).await;
    }
    let t = Instant::now();
    let inputs = fetch(spec, &storage, &opts.scratch, ui).await?;
    stages.push(stage("fetch", t));
    let key = cache_key(spec, &inputs, opts, ui);
    // (A pinned key already looked up is not looked up again.)
    let unseen = |k: &&cache::Key| !opts.no_cache && pinned.as_deref() != Some(k.hex.as_str());
    if let Some(key) = key.as_ref().filter(unseen) {
        let t = Instant::now();
        if let Some(hit) = cache::lookup(&storage, &output, key, &opts.scratch, ui).await {
            stages.push(stage("cache", t));
            let this = this(&inputs, run_id);
            return reuse(&to, &this, hit, (input_bytes(&inputs), stages), ui).await;
        }
    }
    let t = Instant::now();
    let base = baseline(&inputs, spec, ui)?;
    stages.push(stage("baseline", t));
    let t = Instant::now();
    let chosen = match &spec.search {
        Some(s) => search::search(&inputs, &base, spec, s, &opts.scratch, ui)?,
        None => fixed_recipe(&inputs, &base, spec, &opts.scratch, ui)?,
    };
    stages.push(stage("compress", t));
    let judged = Judged::new(
        job,
        spec,
        &inputs,
        &base,
        chosen,
        (run_id, started, started_at),
        &mut stages,
        ui,
    )?;
    let result = judged.result(base.model.file_bytes, stages);
    let candidate = &judged.chosen.candidate;
    let report = |r: &JobResult| {
        serde_json::to_value(judged.report(r, &candidate.passes)).unwrap_or_default()
    };
    let outcome = to
        .publish(
            &candidate.files,
            &inputs,
            serde_json::to_value(&judged.chosen.recipe).unwrap_or_default(),
            result,
            &report,
            ui,
        )
        .await?;
    if let Some(key) = &key {
        cache::record(
            &storage,
            &output,
            key,
            &to.target.run,
            &candidate.files,
            &outcome,
            ui,
        )
        .await;
    }
    Ok(outcome)
}

/// The lookup of a job whose spec pins every input's digest ([`cache::pinned_key`]): the key
/// looked up, and on a hit the inputs as the spec names them with the verified hit.
async fn pinned_hit(
    spec: &CompressionJobSpec,
    storage: &Storage,
    output: &Location,
    opts: &RunOptions,
    ui: &Ui,
) -> (Option<String>, Option<(Inputs, cache::Hit)>) {
    if opts.no_cache || !cache::applies(spec) {
        return (None, None);
    }
    let Some(key) = cache::runtime_identity().and_then(|r| cache::pinned_key(spec, &r)) else {
        return (None, None);
    };
    let hit = match cache::lookup(storage, output, &key, &opts.scratch, ui).await {
        Some(hit) => cache::pinned_inputs(spec, &hit.entry.report).map(|i| (i, hit)),
        None => None,
    };
    (Some(key.hex), hit)
}

/// The job's cache key, or None when the cache is off for it (`spec.output.cache: false`, a
/// custom evaluator) or the ONNX Runtime library cannot be identified.
fn cache_key(
    spec: &CompressionJobSpec,
    inputs: &Inputs,
    opts: &RunOptions,
    ui: &Ui,
) -> Option<cache::Key> {
    if !cache::applies(spec) {
        return None;
    }
    let key = cache::key(spec, inputs, &cache::runtime_identity()?);
    if opts.no_cache {
        ui.stage(&format!(
            "cache: lookup skipped (--no-cache); key {} is recorded again after this run",
            &key.hex[..16]
        ));
    }
    Some(key)
}

/// Publishes a cached result as this run's: the verified files through the same path as a
/// computed candidate (a new run folder, promotion when the cached verdict is Passed, evidence
/// sealed and signed anew), with `cachedFrom` in the result and report.
async fn reuse(
    to: &Publishing<'_>,
    this: &ThisRun<'_>,
    hit: cache::Hit,
    (inputs_read, stages): (u64, Vec<crate::api::StageTime>),
    ui: &Ui,
) -> Result<Outcome> {
    ui.stage(&format!(
        "cache: reusing {} ({:?}, sha256:{}); baseline, compression and evaluation skipped",
        hit.from.run,
        hit.entry.verdict,
        &hit.entry.digest[..12]
    ));
    let mut result = cache::reused_result(&hit);
    let inputs = this.inputs;
    result.usage = Some(crate::api::Usage {
        bytes_read: inputs_read + hit.bytes_read,
        stages,
        ..Default::default()
    });
    let cached = &hit.entry.report;
    let report = |r: &JobResult| cache::replayed_report(cached, &this.report(r), inputs, r);
    to.publish(
        &hit.files,
        inputs,
        cached["recipe"].clone(),
        result,
        &report,
        ui,
    )
    .await
}

/// Bytes of every fetched input.
fn input_bytes(inputs: &Inputs) -> u64 {
    inputs.model.bytes
        + inputs.external_data.iter().map(|e| e.bytes).sum::<u64>()
        + inputs.dataset.bytes
        + inputs.calibration.as_ref().map_or(0, |c| c.1.bytes)
        + inputs.edge_cases.as_ref().map_or(0, |e| e.1.bytes)
}

/// Where and as whom a run publishes.
struct Publishing<'a> {
    job: &'a JobRef,
    storage: &'a Storage,
    signer: Option<&'a crate::evidence::SigningKey>,
    target: publish::Target,
    started: Instant,
}

impl Publishing<'_> {
    /// Seals the evidence (before anything is promoted: a signing failure promotes nothing),
    /// uploads `files` and the report to the run folder and promotes a Passed result; the
    /// outcome's usage is totalled. `report` renders report.json for a result.
    async fn publish(
        &self,
        files: &[publish::File],
        inputs: &Inputs,
        recipe: serde_json::Value,
        result: JobResult,
        report: &(dyn Fn(&JobResult) -> serde_json::Value + Sync),
        ui: &Ui,
    ) -> Result<Outcome> {
        let digest = publish::artifact_digest(files);
        let promote_to = &self.target.promote_to;
        // An OCI promotion's manifest is built first: its digest is a subject of the evidence.
        let passed = result.verdict == crate::api::Verdict::Passed;
        let oci = match promote_to {
            Some(publish::Promotion::Oci { target, .. }) if passed => Some((
                target.repo_uri(),
                crate::oci::prepare(files, &target.repository).map_err(storage::Error::from)?,
            )),
            _ => None,
        };
        let sealed = match promote_to {
            Some(_) if passed => Some(seal(
                &crate::report::evidence_predicate(&report(&result)),
                files,
                oci.as_ref()
                    .map(|(repo, p)| (repo.as_str(), p.manifest_digest.as_str())),
                self.signer,
                &self.target.run,
            )?),
            _ => None,
        };
        let artifact = publish::Artifact {
            files,
            digest: &digest,
            oci: oci.as_ref().map(|(_, p)| p),
            source: publish::SourceRef {
                uri: inputs.model.uri.clone(),
                sha256: inputs.model.sha256.clone(),
            },
            job: serde_json::to_value(self.job).unwrap_or_default(),
            recipe,
        };
        let t = Instant::now();
        let published = publish::publish(
            self.storage,
            &self.target,
            &artifact,
            result,
            &publish::Reporting {
                render: &|r| serde_json::to_vec_pretty(&report(r)).unwrap_or_default(),
                finish: &|r| {
                    if let Some(u) = r.usage.as_mut() {
                        u.stages.push(stage("publish", t));
                    }
                    total_usage(r, self.started);
                },
            },
            sealed.as_ref(),
            ui,
        )
        .await?;
        Ok(Outcome {
            report: report(&published),
            result: published,
        })
    }
}

/// Stages 1 and 2, timed into `stages`.
async fn fetch_and_baseline(
    spec: &CompressionJobSpec,
    storage: &Storage,
    opts: &RunOptions,
    ui: &Ui,
    stages: &mut Vec<crate::api::StageTime>,
) -> Result<(Inputs, Baseline)> {
    let t = Instant::now();
    let inputs = fetch(spec, storage, &opts.scratch, ui).await?;
    stages.push(stage("fetch", t));
    let t = Instant::now();
    let base = baseline(&inputs, spec, ui)?;
    stages.push(stage("baseline", t));
    Ok((inputs, base))
}

/// How long a stage took, from `since`.
fn stage(name: &str, since: Instant) -> crate::api::StageTime {
    crate::api::StageTime {
        stage: name.into(),
        seconds: since.elapsed().as_secs_f64(),
    }
}

/// The run's totals (wall time, CPU time, peak memory) in its usage.
fn total_usage(result: &mut JobResult, started: Instant) {
    if let Some(u) = result.usage.as_mut() {
        u.wall_seconds = started.elapsed().as_secs_f64();
        u.cpu_seconds = crate::usage::cpu_seconds().unwrap_or_default();
        u.peak_memory_bytes = crate::usage::peak_memory_bytes().unwrap_or_default();
    }
}

/// The baseline compared with itself says nothing; keep those fields empty.
fn strip_self_comparison(mut m: Metrics) -> Metrics {
    m.agreement = None;
    m.cosine_similarity = None;
    m.mean_abs_error = None;
    m.max_abs_error = None;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_single_segments_of_bounded_length() {
        let at = jiff::Timestamp::now();
        let a = unique_run_id("digits-int8", at);
        let b = unique_run_id("digits-int8", at);
        assert_ne!(a, b, "same name, same millisecond: still two folders");
        assert!(a.starts_with("digits-int8-"), "{a}");
        let long = unique_run_id(&"x".repeat(300), at);
        assert!(long.len() <= 255, "{}", long.len());
        for odd in ["a/b", "..", "../../etc", "ns.name.g3", "sp ace/ü"] {
            let id = unique_run_id(odd, at);
            assert!(
                !id.contains('/') && !id.starts_with('.') && !id.contains(' '),
                "{odd} -> {id}"
            );
        }
    }
}
