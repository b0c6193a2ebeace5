//! The whole run, `run -> Outcome`: validation and the signing key first, then the cache
//! lookup, fetch, baseline, the spec's one recipe (calibrate, build_candidate, judge) or a
//! search, the edge cases, and publication (`crate::promote`), with each stage's time.

use super::baseline::{Baseline, baseline};
use super::calibrate::calibrate;
use super::candidate::{Candidate, build_candidate};
use super::evaluate::{edge_cases_of, judge};
use super::fetch::{Inputs, fetch, input_bytes};
use super::opset_check::{self, check_opset_upgrade};
use super::{Outcome, Result, RunOptions, cache, search, stage};
use crate::api::{JobResult, Metrics, PassSpec, Plan};
use crate::eval;
use crate::gate;
use crate::promote::{self, evidence::SigningKey};
use crate::report::{CalibrationReport, JobRef, PassReport, Report, Tools};
use crate::storage::{Location, Storage};
use crate::ui::Ui;
use kube::Resource;
use std::path::Path;
use std::time::Instant;

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
    spec: &Plan,
    scratch: &Path,
    ui: &Ui,
) -> Result<Chosen> {
    let target = spec.target;
    let upgrade = check_opset_upgrade(base, &spec.passes, target, &scratch.join("opset"), ui)?;
    let calibration = calibrate(inputs, base, spec, &scratch.join("calibration"), ui)?;
    let mut candidate = build_candidate(
        &base.model,
        &spec.passes,
        spec.target,
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

/// A judged candidate with what its result and report are made of.
pub struct Judged<'a> {
    /// The run's identity and inputs.
    this: ThisRun<'a>,
    pub chosen: Chosen,
    pub edge_cases: Option<crate::report::EdgeCasesReport>,
}

impl<'a> Judged<'a> {
    /// Stage 4c on the chosen candidate of `this` run (`spec.edgeCases`, its checks joining
    /// the decision), timed into `stages`.
    pub(super) fn new(
        this: ThisRun<'a>,
        base: &Baseline,
        mut chosen: Chosen,
        stages: &mut Vec<crate::api::StageTime>,
        ui: &Ui,
    ) -> Result<Self> {
        let t = Instant::now();
        let edge_cases = edge_cases_of(this.inputs, base, this.spec, &mut chosen, ui)?;
        if edge_cases.is_some() {
            stages.push(stage("edgeCases", t));
        }
        Ok(Judged {
            this,
            chosen,
            edge_cases,
        })
    }

    /// The result before anything is published; `stages` times the run so far.
    pub(super) fn result(
        &self,
        original_bytes: u64,
        stages: Vec<crate::api::StageTime>,
    ) -> JobResult {
        let c = &self.chosen;
        let bytes_read = input_bytes(self.this.inputs);
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
    pub(super) fn report(&self, result: &JobResult, passes: &[PassReport]) -> Report {
        let c = &self.chosen;
        Report {
            recipe: c.recipe.clone(),
            folded_constants: c.candidate.folded_constants,
            passes: passes.to_vec(),
            calibration: c.calibration.clone(),
            search: c.search.as_ref().map(|s| s.0.clone()),
            edge_cases: self.edge_cases.clone(),
            ..self.this.report(result)
        }
    }
}

/// What a run's report says of the run itself, whatever made its candidate.
pub(super) struct ThisRun<'a> {
    job: &'a JobRef,
    spec: &'a Plan,
    inputs: &'a Inputs,
    run_id: String,
    started: Instant,
    started_at: jiff::Timestamp,
}

impl<'a> ThisRun<'a> {
    /// The run `run_id` of `job` (`spec`) on `inputs`, started at `started` (`started_at`).
    pub(super) fn new(
        job: &'a JobRef,
        spec: &'a Plan,
        inputs: &'a Inputs,
        run_id: String,
        (started, started_at): (Instant, jiff::Timestamp),
    ) -> Self {
        ThisRun {
            job,
            spec,
            inputs,
            run_id,
            started,
            started_at,
        }
    }

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
                .evaluation
                .evaluator
                .as_ref()
                .map(crate::report::EvaluatorRef::from_plan),
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

/// Runs one job. A rejected candidate is an `Ok` outcome with `Verdict::Rejected`. With the
/// cache on (see [`cache`]), a job whose key matches a finished run's publishes that run's
/// verified candidate and result instead of computing them.
pub async fn run(job: &JobRef, spec: &Plan, opts: &RunOptions, ui: &Ui) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let signer = promote::signing_key(spec)?;
    let storage = Storage::new(spec.storage.as_ref());
    let output = Location::parse(&spec.output.uri)?;
    let promote_to = spec
        .output
        .promote_to
        .as_deref()
        .map(|p| promote::Promotion::parse(p, spec.output.registry.as_ref()))
        .transpose()?;
    let run_id = unique_run_id(opts.run_id.as_deref().unwrap_or(&job.name), started_at);
    let to = Publishing {
        job,
        storage: &storage,
        signer: signer.as_ref(),
        target: promote::Destination {
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
    let this = |inputs, run_id| ThisRun::new(job, spec, inputs, run_id, (started, started_at));
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
    let judged = Judged::new(this(&inputs, run_id), &base, chosen, &mut stages, ui)?;
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
    spec: &Plan,
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
fn cache_key(spec: &Plan, inputs: &Inputs, opts: &RunOptions, ui: &Ui) -> Option<cache::Key> {
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

/// Where and as whom a run publishes.
struct Publishing<'a> {
    job: &'a JobRef,
    storage: &'a Storage,
    signer: Option<&'a SigningKey>,
    target: promote::Destination,
    started: Instant,
}

impl Publishing<'_> {
    /// Uploads `files` and the report to the run folder and promotes a Passed result, its
    /// evidence sealed first (`promote::publish`); the outcome's usage is totalled. `report`
    /// renders report.json for a result.
    async fn publish(
        &self,
        files: &[promote::File],
        inputs: &Inputs,
        recipe: serde_json::Value,
        result: JobResult,
        report: &(dyn Fn(&JobResult) -> serde_json::Value + Sync),
        ui: &Ui,
    ) -> Result<Outcome> {
        let digest = promote::artifact_digest(files);
        let artifact = promote::Artifact {
            files,
            digest: &digest,
            source: promote::SourceRef {
                uri: inputs.model.uri.clone(),
                sha256: inputs.model.sha256.clone(),
            },
            job: serde_json::to_value(self.job).unwrap_or_default(),
            recipe,
        };
        let t = Instant::now();
        let published = promote::publish(
            self.storage,
            &self.target,
            &artifact,
            result,
            &promote::Reporting {
                report,
                finish: &|r| {
                    if let Some(u) = r.usage.as_mut() {
                        u.stages.push(stage("publish", t));
                    }
                    total_usage(r, self.started);
                },
            },
            self.signer,
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
pub(super) async fn fetch_and_baseline(
    spec: &Plan,
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

/// The run's totals (wall time, CPU time, peak memory) in its usage.
pub(super) fn total_usage(result: &mut JobResult, started: Instant) {
    if let Some(u) = result.usage.as_mut() {
        u.wall_seconds = started.elapsed().as_secs_f64();
        u.cpu_seconds = crate::usage::cpu_seconds().unwrap_or_default();
        u.peak_memory_bytes = crate::usage::peak_memory_bytes().unwrap_or_default();
    }
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
