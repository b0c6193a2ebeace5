//! One CompressionJob, end to end: fetch -> baseline -> passes -> candidate -> gate -> publish.
//! `kompress run` and `kompress worker` both call `run`.

use crate::api::{
    ArtifactRef, CompressionJobSpec, JobResult, Metrics, PassSpec, Thresholds, Verdict, validate,
};
use crate::eval::{self, Dataset, EvalConfig};
use crate::gate;
use crate::onnx::{self, SaveOptions};
use crate::passes::{Pass, PassReport};
use crate::publish;
use crate::storage::{self, Location, Storage};
use crate::ui::Ui;
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    #[error("scratch directory {path}")]
    Scratch {
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

impl Error {
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Storage(e) => e.is_permanent(),
            Self::Model(onnx::Error::Write { .. }) | Self::Scratch { .. } => false,
            _ => true,
        }
    }

    /// A short, static category: metric label values and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::Storage(e) if e.is_permanent() => "StorageError",
            Self::Storage(_) => "StorageUnavailable",
            Self::Model(_) => "InvalidModel",
            Self::Pass { .. } => "PassFailed",
            Self::Eval {
                source: eval::Error::Runtime(_),
                ..
            } => "RuntimeUnavailable",
            Self::Eval { .. } => "EvaluationFailed",
            Self::Gate(_) => "ThresholdUnmeasurable",
            Self::Scratch { .. } => "ScratchError",
        }
    }
}

/// Full error text: the error and each cause, joined. Causes whose text an outer message
/// already includes (object_store's errors embed their sources) are not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who the run is for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

pub struct RunOptions {
    /// Working directory for downloads and the candidate.
    pub scratch: PathBuf,
    /// Folder name of this run under `output.uri/runs/`; defaults to `<name>-<UTC time>`.
    pub run_id: Option<String>,
}

/// Input provenance for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputRef {
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
}

/// report.json: everything needed to audit the decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub job: JobRef,
    pub run_id: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub model: InputRef,
    pub external_data: Vec<InputRef>,
    pub dataset: InputRef,
    pub recipe: Vec<PassSpec>,
    pub thresholds: Thresholds,
    pub passes: Vec<PassReport>,
    pub result: JobResult,
    pub tools: Tools,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tools {
    pub kompress: &'static str,
    pub onnxruntime_library: Option<String>,
    pub ort_crate: &'static str,
}

pub struct Outcome {
    pub result: JobResult,
    pub report: Report,
}

fn scratch_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Scratch {
        path: path.into(),
        source,
    })
}

async fn fetch(
    storage: &Storage,
    ui: &Ui,
    loc: &Location,
    dest: &Path,
    sha: Option<&str>,
    label: &str,
) -> Result<storage::Fetched> {
    let bar = ui.bar(label, true);
    let f = storage.fetch(loc, dest, sha, &|n, t| bar.set(n, t)).await?;
    bar.finish(f.bytes);
    Ok(f)
}

/// Runs one job. A rejected candidate is an `Ok` outcome with `Verdict::Rejected`.
pub async fn run(
    job: &JobRef,
    spec: &CompressionJobSpec,
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    validate(spec)?;
    let storage = Storage::new(spec.storage.as_ref());
    let input_dir = opts.scratch.join("input");
    let cand_dir = opts.scratch.join("candidate");
    scratch_dir(&input_dir)?;
    scratch_dir(&cand_dir)?;

    // 1. fetch
    let model_loc = Location::parse(&spec.model.uri)?;
    let model_name = match model_loc.file_name() {
        "" => "model.onnx",
        n => n,
    };
    ui.stage(&format!("fetching {}", model_loc));
    let model_file = fetch(
        &storage,
        ui,
        &model_loc,
        &input_dir.join(model_name),
        spec.model.sha256.as_deref(),
        "model",
    )
    .await?;
    let mut external_data = Vec::new();
    for location in onnx::external_locations(&model_file.path)? {
        let src = model_loc.parent().join(&location);
        let f = fetch(
            &storage,
            ui,
            &src,
            &input_dir.join(&location),
            None,
            &location,
        )
        .await?;
        external_data.push(InputRef {
            uri: src.uri,
            sha256: f.sha256,
            bytes: f.bytes,
        });
    }
    let data_loc = Location::parse(&spec.dataset.uri)?;
    let data_file = fetch(
        &storage,
        ui,
        &data_loc,
        &input_dir.join("dataset.npz"),
        spec.dataset.sha256.as_deref(),
        "dataset",
    )
    .await?;

    // 2. baseline
    let mut model = onnx::load(&model_file.path)?;
    let original_bytes = model.file_bytes;
    let dataset = Dataset::load(&data_file.path).map_err(|e| Error::Eval {
        which: "original",
        source: e.into(),
    })?;
    let cfg = EvalConfig::from_spec(
        &spec.evaluation(),
        spec.dataset.labels.clone(),
        spec.dataset.limit,
    );
    let baseline_err = |source| Error::Eval {
        which: "original",
        source,
    };
    let mut original = eval::open(&model_file.path, &cfg).map_err(baseline_err)?;
    let prep = eval::prepare(&original, &dataset, &cfg).map_err(baseline_err)?;
    ui.stage(&format!(
        "baseline: {} samples through the original model",
        prep.samples()
    ));
    let bar = ui.bar("evaluate original", false);
    let (base_out, base_times) =
        eval::evaluate(&mut original, &prep, &cfg, &|d, t| bar.set(d, Some(t)))
            .map_err(baseline_err)?;
    drop(original); // release ORT's copy of the weights before the passes run
    bar.finish(prep.samples() as u64);
    let baseline = eval::score(
        &base_out,
        &base_times,
        &prep,
        Some(&base_out),
        original_bytes,
    );

    // 3. passes
    let mut pass_reports = Vec::new();
    for (index, p) in spec.passes.iter().enumerate() {
        let pass = Pass::from_spec(p);
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
        pass_reports.push(report);
    }

    // 4. candidate
    let cand_path = cand_dir.join("model.onnx");
    let external = model.had_external_data.then_some(true);
    let saved = onnx::save(
        &model.proto,
        &cand_path,
        &SaveOptions {
            external_data: external,
        },
    )?;
    drop(model); // the candidate is on disk; free the weights before evaluating it
    let mut files = Vec::new();
    for f in &saved.files {
        let sha = storage::sha256_file(f).map_err(|source| Error::Scratch {
            path: f.clone(),
            source,
        })?;
        files.push((
            f.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model.onnx")
                .to_string(),
            f.clone(),
            sha,
        ));
    }
    let digest = publish::artifact_digest(&files);
    let cand_err = |source| Error::Eval {
        which: "candidate",
        source,
    };
    let bar = ui.bar("evaluate candidate", false);
    let (cand_out, cand_times) = eval::open(&cand_path, &cfg)
        .and_then(|mut c| eval::evaluate(&mut c, &prep, &cfg, &|d, t| bar.set(d, Some(t))))
        .map_err(cand_err)?;
    bar.finish(prep.samples() as u64);
    let candidate = eval::score(&cand_out, &cand_times, &prep, Some(&base_out), saved.bytes);

    // 5. gate
    let decision = gate::decide(&spec.thresholds, &baseline, &candidate)?;
    let mut result = JobResult {
        verdict: decision.verdict,
        original_bytes,
        compressed_bytes: saved.bytes,
        ratio: decision.ratio,
        accuracy_drop: decision.accuracy_drop,
        baseline: strip_self_comparison(baseline),
        candidate,
        checks: decision.checks,
        ..Default::default()
    };

    // 6. publish: the candidate and report always; promotion only on a pass.
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", job.name, started_at.strftime("%Y%m%dT%H%M%SZ")));
    let run_loc = Location::parse(&spec.output.uri)?.join(&format!("runs/{run_id}"));
    ui.stage(&format!("uploading candidate to {run_loc}"));
    for (name, path, _) in &files {
        let bar = ui.bar(&format!("upload {name}"), true);
        let n = storage
            .put_file(path, &run_loc.join(name), &|s, t| bar.set(s, t))
            .await?;
        bar.finish(n);
    }
    result.artifact = Some(ArtifactRef {
        uri: run_loc.join("model.onnx").uri,
        sha256: digest.clone(),
    });
    let report_loc = run_loc.join("report.json");
    result.report = Some(report_loc.uri.clone());
    let mut report = Report {
        api_version: "kompress.dev/v1alpha1",
        kind: "CompressionReport",
        job: job.clone(),
        run_id,
        started_at: started_at.to_string(),
        duration_seconds: 0.0,
        model: InputRef {
            uri: model_loc.uri.clone(),
            sha256: model_file.sha256.clone(),
            bytes: model_file.bytes,
        },
        external_data,
        dataset: InputRef {
            uri: data_loc.uri.clone(),
            sha256: data_file.sha256.clone(),
            bytes: data_file.bytes,
        },
        recipe: spec.passes.clone(),
        thresholds: spec.thresholds.clone(),
        passes: pass_reports,
        result: result.clone(),
        tools: Tools {
            kompress: env!("CARGO_PKG_VERSION"),
            onnxruntime_library: eval::runtime::library_path().map(|p| p.display().to_string()),
            ort_crate: "2.0.0-rc.15",
        },
    };
    match (&decision.verdict, &spec.output.promote_to) {
        (Verdict::Passed, Some(to)) => {
            let to = Location::parse(to)?;
            ui.stage(&format!("promoting sha256:{} to {to}", &digest[..12]));
            let promoted = publish::promote(&storage, &to, &files, &digest, &report).await?;
            result.promoted = Some(promoted);
        }
        (Verdict::Rejected, Some(_)) => ui.stage("candidate rejected: nothing promoted"),
        _ => {}
    }
    report.result = result.clone();
    report.duration_seconds = started.elapsed().as_secs_f64();
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    storage.put_bytes(&report_loc, json.into()).await?;
    Ok(Outcome { result, report })
}

/// The baseline compared with itself says nothing; keep those fields empty.
fn strip_self_comparison(mut m: Metrics) -> Metrics {
    m.agreement = None;
    m.cosine_similarity = None;
    m.mean_abs_error = None;
    m.max_abs_error = None;
    m
}
