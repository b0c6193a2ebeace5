//! `kompress evaluate`: a model made elsewhere (ONNX Runtime's quantizer, Olive, NNCF, an
//! earlier run) judged as the candidate of a job, by the job's own evaluation and gate, and
//! promoted nowhere. The stages are `run`'s: fetch, baseline, [`judge`], edge cases.

use super::run::ThisRun;
use super::{
    Candidate, Chosen, Error, Judged, Outcome, Result, RunOptions, fetch_and_baseline, judge,
    stage, total_usage, unique_run_id,
};
use crate::api::Plan;
use crate::onnx::{self, DataType, Model, pb};
use crate::report::{JobRef, PassReport, TensorReport};
use crate::storage::{self, Storage};
use crate::ui::Ui;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

/// Name of the one "pass" an outside candidate's report lists: the weights that differ.
pub const EXTERNAL_PASS: &str = "external";

/// One graph input or output: name, element type, and each dimension (None: symbolic).
#[derive(Debug, PartialEq)]
struct Io {
    name: String,
    ty: String,
    dims: Vec<Option<i64>>,
}

impl Io {
    fn of(v: &pb::ValueInfoProto) -> Self {
        let (ty, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => (
                DataType::from_i32(t.elem_type.unwrap_or(0)).name(),
                t.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                    Some(v)
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => ("not a tensor".to_string(), Vec::new()),
        };
        Io {
            name: v.name.clone().unwrap_or_default(),
            ty,
            dims,
        }
    }

    /// The same name and type, the same rank, and no fixed dimension that differs.
    fn fits(&self, other: &Io) -> bool {
        self.name == other.name
            && self.ty == other.ty
            && self.dims.len() == other.dims.len()
            && self
                .dims
                .iter()
                .zip(&other.dims)
                .all(|(a, b)| a.is_none() || b.is_none() || a == b)
    }

    fn show(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| d.map_or("?".into(), |v| v.to_string()))
            .collect();
        format!("{} {}[{}]", self.name, self.ty, dims.join(", "))
    }
}

/// A graph's inputs (without initializers) and outputs.
fn signature(g: &pb::GraphProto) -> [Vec<Io>; 2] {
    let init: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    [
        g.input
            .iter()
            .filter(|v| !init.contains(v.name.as_deref().unwrap_or_default()))
            .map(Io::of)
            .collect(),
        g.output.iter().map(Io::of).collect(),
    ]
}

/// The first difference between the original's and the candidate's inputs or outputs.
fn mismatch(original: &pb::GraphProto, candidate: &pb::GraphProto) -> Option<String> {
    let show = |v: &[Io]| v.iter().map(Io::show).collect::<Vec<_>>().join(", ");
    let (o, c) = (signature(original), signature(candidate));
    ["inputs", "outputs"]
        .into_iter()
        .zip(o.iter().zip(&c))
        .find(|(_, (o, c))| o.len() != c.len() || o.iter().zip(c.iter()).any(|(a, b)| !a.fits(b)))
        .map(|(what, (o, c))| {
            format!(
                "its {what} are [{}], the original's are [{}]: a candidate must take and give what the original does",
                show(c),
                show(o)
            )
        })
}

/// A weight's content: its type, shape and values, whatever its name and however they are
/// stored (a tool may rename what it leaves alone, or write raw bytes where the original had
/// typed fields).
fn content_key(t: &pb::TensorProto) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(t.data_type.unwrap_or(0).to_le_bytes());
    for d in &t.dims {
        h.update(d.to_le_bytes());
    }
    match (onnx::tensor_f32_values(t), &t.raw_data) {
        (Ok(v), _) => h.update(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        (Err(_), Some(raw)) => h.update(raw),
        (Err(_), None) => {
            let mut t = t.clone();
            t.name = None;
            t.doc_string = None;
            h.update(t.encode_to_vec());
        }
    }
    h.finalize().into()
}

/// The candidate's weights whose content no weight of the original has: what the other tool
/// changed (none for a copy of the original, which the gate never passes as compressed).
fn changed_weights(original: &Model, candidate: &Model) -> Vec<TensorReport> {
    let known: HashSet<[u8; 32]> = original
        .graph()
        .initializer
        .iter()
        .map(content_key)
        .collect();
    candidate
        .graph()
        .initializer
        .iter()
        .filter(|t| !known.contains(&content_key(t)))
        .map(|t| TensorReport {
            tensor: t.name.clone().unwrap_or_default(),
            elements: t.dims.iter().map(|&d| d.max(0) as u64).product(),
            ..Default::default()
        })
        .collect()
}

/// `path` (a local ONNX file, with its external data beside it) as the candidate of `original`:
/// read, checked to take and give what the original does, hashed. Errors name `path`.
pub fn external_candidate(path: &Path, original: &Model) -> Result<Candidate> {
    let shown = path.display().to_string();
    let model = onnx::load_as(path, path)?;
    if let Some(what) = mismatch(original.graph(), model.graph()) {
        return Err(Error::CandidateMismatch { path: shown, what });
    }
    let mut files = Vec::new();
    let mut paths = vec![path.to_path_buf()];
    let dir = path.parent().unwrap_or(Path::new("."));
    for ext in onnx::external_locations(path, path)? {
        paths.push(dir.join(&ext.location));
    }
    for f in paths {
        let sha = storage::sha256_file(&f).map_err(|e| onnx::Error::Read {
            path: f.clone(),
            source: e,
        })?;
        let name = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        files.push((name, f, sha));
    }
    let tensors = changed_weights(original, &model);
    Ok(Candidate {
        digest: crate::promote::artifact_digest(&files),
        path: path.to_path_buf(),
        shown,
        files,
        bytes: model.file_bytes,
        folded_constants: 0,
        passes: vec![PassReport {
            pass: EXTERNAL_PASS.into(),
            description: format!(
                "made outside this job: {} of its {} weights differ from the original's",
                tensors.len(),
                model.graph().initializer.len()
            ),
            tensors,
            skipped: Vec::new(),
        }],
    })
}

/// Judges the model at `candidate` against the job's original, as `run` judges its own
/// candidate (the same dataset, evaluation, edge cases and gate), and publishes nothing. A
/// rejected candidate is an `Ok` outcome with `Verdict::Rejected`.
pub async fn evaluate_external(
    job: &JobRef,
    spec: &Plan,
    candidate: &Path,
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    // A file that is no ONNX model fails before anything is fetched.
    let shown = candidate.display().to_string();
    onnx::load_as(candidate, candidate)?;
    let storage = Storage::new(spec.storage.as_ref());
    let run_id = unique_run_id(opts.run_id.as_deref().unwrap_or(&job.name), started_at);
    let mut stages = Vec::new();
    let (inputs, base) = fetch_and_baseline(spec, &storage, opts, ui, &mut stages).await?;
    let t = Instant::now();
    ui.stage(&format!("candidate: {shown}"));
    let cand = external_candidate(candidate, &base.model)?;
    let (metrics, base_metrics, decision) = judge(&cand, &base, spec, ui)?;
    stages.push(stage("evaluate", t));
    let chosen = Chosen {
        candidate: cand,
        metrics,
        baseline: base_metrics,
        decision,
        recipe: Vec::new(),
        calibration: None,
        search: None,
    };
    let this = ThisRun::new(job, spec, &inputs, run_id, (started, started_at));
    let judged = Judged::new(this, &base, chosen, &mut stages, ui)?;
    let mut result = judged.result(base.model.file_bytes, stages);
    total_usage(&mut result, started);
    Ok(Outcome {
        report: serde_json::to_value(judged.report(&result, &judged.chosen.candidate.passes))
            .unwrap_or_default(),
        result,
    })
}
