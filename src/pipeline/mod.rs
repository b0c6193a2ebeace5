//! One CompressionJob, end to end, as typed stages, one file each:
//!
//! | stage | file | gives |
//! |---|---|---|
//! | 1. fetch | [`fetch`](fetch()) | [`Inputs`] |
//! | 2. baseline | [`baseline`](baseline()) | [`Baseline`] |
//! | 2b. calibrate (static quantization) | [`calibrate`](calibrate()) | [`Calibration`] |
//! | 3. candidate | [`build_candidate`] | [`Candidate`] |
//! | 4. evaluate and gate | [`evaluate`](evaluate()), [`judge`] | `Metrics`, `gate::Decision` |
//! | the whole run, publication | [`run`](run()) | [`Outcome`] |
//!
//! `kompress run` and `kompress worker` both call `run`; a search ([`search`]) calls
//! `calibrate_for`, `build_candidate`, `evaluate_outputs`, `measure_latency` and `decide`
//! many times against one `Inputs` and one `Baseline`; `kompress evaluate` ([`external`])
//! judges a model made elsewhere through the same stages. Publication and promotion are
//! `crate::promote`'s; the cache ([`cache`]) can stand in for stages 2 to 4.
//!
//! Scratch layout (nothing a model or dataset names can collide across these folders):
//! `model/` holds the model file and its external data (as the model names them),
//! `dataset/` the evaluation set (and a separate calibration set), `calibration/` the
//! original model with the calibrated activations as extra outputs, `candidate/` the
//! compressed model.

use crate::api::{JobResult, reason};
use crate::eval;
use crate::gate;
use crate::onnx::{self, Model, SaveOptions};
use crate::storage;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod baseline;
pub mod cache;
mod calibrate;
mod candidate;
mod evaluate;
mod external;
mod fetch;
mod opset_check;
mod run;
pub mod search;

/// Where the worker's run finds the mounted signing key (`crate::promote::signing_key`).
pub use crate::promote::SIGNING_KEY_ENV;
pub use baseline::{Baseline, CustomEvaluator, EdgeBaseline, baseline};
pub use calibrate::{
    Calibration, CalibrationData, calibrate, calibrate_for, calibrate_with, calibration_need,
    calibration_samples, static_pass,
};
pub use candidate::{Candidate, build_candidate};
pub use evaluate::{
    decide, evaluate, evaluate_outputs, judge, judge_edge_cases, measure_latency, probe_outputs,
};
pub use external::{evaluate_external, external_candidate};
pub use fetch::{Inputs, fetch};
pub use opset_check::{OpsetCheck, check_opset_upgrade};
pub use run::{Chosen, Judged, run, unique_run_id};
use run::{fetch_and_baseline, total_usage};

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

impl From<crate::promote::SigningError> for Error {
    fn from(e: crate::promote::SigningError) -> Self {
        Self::Signing {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<crate::promote::Error> for Error {
    fn from(e: crate::promote::Error) -> Self {
        match e {
            crate::promote::Error::Storage(e) => e.into(),
            crate::promote::Error::Signing(e) => e.into(),
        }
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

/// How long a stage took, from `since`.
fn stage(name: &str, since: Instant) -> crate::api::StageTime {
    crate::api::StageTime {
        stage: name.into(),
        seconds: since.elapsed().as_secs_f64(),
    }
}
