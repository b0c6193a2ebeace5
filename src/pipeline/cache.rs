//! The compression cache: a job whose key matches a finished run reuses that run's result
//! instead of computing it again.
//!
//! - **Key**: sha256 of a canonical JSON (object keys sorted, nulls dropped) of the digests of
//!   everything fetched (model, external data, dataset, calibration and edge-case sets), the
//!   spec without what does not change the result ([`NOT_IN_KEY`]: where things lie, where
//!   results go, credentials, pod settings), the kompress version, the ONNX Runtime library
//!   actually loaded (its release, else its file's sha256) and the execution provider, and,
//!   when latency decides the outcome (a `maxLatencyRatio` threshold, or a search, which
//!   weighs latency), this host's CPU. The spec goes through its typed form first, so field
//!   order, and an omitted field against its empty form (`thresholds: {}`), never change the
//!   key. A value spelled out equal to its default (`batchSize: 32`) does: that costs a miss,
//!   never a wrong hit.
//! - **Index**: `<output.uri>/cache/<key>.json`, written after a run's folder is complete (its
//!   candidate and report.json; Passed and Rejected alike, a failed run never), in one request:
//!   object stores make an object visible only when complete, and local writes go through a
//!   rename, so a half-written entry is never seen.
//! - **Hit**: the entry is read (capped at [`MAX_ENTRY_BYTES`]) and checked (kind, key, a run
//!   folder under this output's `runs/`, safe file names, the digest of its files), then its
//!   candidate files are fetched into scratch, each verified against the entry's sha256.
//!   Anything wrong (missing, corrupt, foreign, changed bytes, unreachable) is a miss with a
//!   warning, never an error: the job computes its result as if there were no entry. The
//!   caller publishes verified files through the same path as a computed result.
//!
//! A job with a custom evaluator is never cached: its program is not part of the key.

use super::Inputs;
use crate::api::{CachedFrom, CompressionJobSpec, JobResult, Plan, Verdict};
use crate::promote::{self, File};
use crate::report::InputRef;
use crate::storage::{self, Location, Storage};
use crate::ui::Ui;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The index entry's `kind`.
pub const ENTRY_KIND: &str = "CompressionCacheEntry";

/// Bumped when what a key stands for changes (the key's material or the entry's shape).
pub const KEY_SCHEMA: &str = "kompress.dev/cache/v1";

/// The most of an index entry read (it holds the run's report.json).
pub const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// Top-level spec fields that never change the result, left out of the key. Every other field
/// is in it (a test checks that each of the CRD's spec fields is in one list or the other).
/// `model`, `dataset`, `calibration.dataset` and `edgeCases` keep their settings; their `uri`
/// and `sha256` are replaced by the digest of what was fetched.
pub const NOT_IN_KEY: &[&str] = &[
    "storage",
    "output",
    "resources",
    "nodeSelector",
    "tolerations",
    "image",
    "activeDeadlineSeconds",
    "backoffLimit",
    "ttlSecondsAfterFinished",
    "queueName",
];

/// The spec fields that are in the key.
pub const IN_KEY: &[&str] = &[
    "model",
    "dataset",
    "passes",
    "search",
    "thresholds",
    "edgeCases",
    "evaluation",
    "calibration",
    "target",
];

/// A job's cache key and what it was made of.
#[derive(Debug, Clone)]
pub struct Key {
    /// sha256 of `material`'s canonical JSON, hex.
    pub hex: String,
    pub material: Value,
}

/// Whether this job uses the cache: `output.cache: false` turns it off, and a custom evaluator
/// (a program the key cannot see into) keeps it off.
pub fn applies(plan: &Plan) -> bool {
    plan.cache
}

/// The ONNX Runtime the evaluation uses, as the key names it: the library is loaded here (a
/// hit runs no model), then its release, else the sha256 of its file. None when it cannot be
/// loaded (the run then fails in the baseline, with the runtime's own message).
pub fn runtime_identity() -> Option<String> {
    crate::eval::runtime::environment().ok()?;
    if let Some(v) = crate::eval::runtime::library_version() {
        return Some(v);
    }
    let path = crate::eval::runtime::library_path()?;
    storage::sha256_file(&path)
        .ok()
        .map(|sha| format!("sha256:{sha}"))
}

/// This host's CPU, for keys whose outcome depends on measured latency: its model, cores and
/// the instruction sets ONNX Runtime's kernels are chosen by (an AVX2 node and a VNNI node of
/// the same model name measure different ratios).
fn host_cpu() -> String {
    let cpu = crate::usage::cpu();
    format!(
        "{}; {} cores; {}",
        cpu.model,
        cpu.logical_cpus,
        cpu.features.join(" ")
    )
}

/// The spec as the key sees it: typed, so order and empty forms do not matter; without
/// [`NOT_IN_KEY`]; the inputs' locations and expected digests removed (the fetched digests
/// stand for them).
pub fn canonical_spec(spec: &CompressionJobSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or_default();
    let Some(m) = v.as_object_mut() else {
        return v;
    };
    for k in NOT_IN_KEY {
        m.remove(*k);
    }
    // Sections whose absence means their default: the effective value, so `target: {}`,
    // `target: {cpu: auto}` and no target are one key.
    m.insert(
        "evaluation".into(),
        serde_json::to_value(spec.evaluation.clone().unwrap_or_default()).unwrap_or_default(),
    );
    m.insert(
        "target".into(),
        serde_json::to_value(spec.target.clone().unwrap_or_default()).unwrap_or_default(),
    );
    for path in ["/model", "/dataset", "/calibration/dataset", "/edgeCases"] {
        if let Some(m) = v.pointer_mut(path).and_then(Value::as_object_mut) {
            m.remove("uri");
            m.remove("sha256");
        }
    }
    // A calibration section left empty (its dataset is the calibration digest) is none.
    for (parent, child) in [("/calibration", "dataset"), ("", "calibration")] {
        if let Some(m) = v.pointer_mut(parent).and_then(Value::as_object_mut)
            && m.get(child)
                .and_then(Value::as_object)
                .is_some_and(|o| o.is_empty())
        {
            m.remove(child);
        }
    }
    v
}

/// The key of a job over fetched `inputs`, with ONNX Runtime `runtime` (see
/// [`runtime_identity`]).
pub fn key(spec: &CompressionJobSpec, inputs: &Inputs, runtime: &str) -> Key {
    let external: Vec<Value> = inputs
        .external_data
        .iter()
        .map(|e| {
            // The name the model gives it (relative to the model's folder), not where it lay.
            let name = e.uri.rsplit('/').next().unwrap_or_default();
            serde_json::json!({"name": name, "sha256": e.sha256})
        })
        .collect();
    key_of(
        spec,
        Digests {
            model: &inputs.model.sha256,
            external,
            dataset: &inputs.dataset.sha256,
            calibration: inputs.calibration.as_ref().map(|c| c.1.sha256.as_str()),
            edge_cases: inputs.edge_cases.as_ref().map(|e| e.1.sha256.as_str()),
        },
        runtime,
    )
}

/// The key before anything is fetched, from the digests the spec pins: Some only when it pins
/// every input it names (`model`, `dataset`, `calibration.dataset` and `edgeCases` sha256).
/// It is the key of a model that names no external data: an entry under it was recorded from a
/// model with these bytes that named none, so these bytes name none. (A model with external
/// data misses here, and is looked up again once fetched.) A hit then reads no input at all.
pub fn pinned_key(spec: &CompressionJobSpec, runtime: &str) -> Option<Key> {
    let calibration = spec.calibration.as_ref().and_then(|c| c.dataset.as_ref());
    let pinned = |sha: &Option<String>| sha.as_deref().map(str::to_ascii_lowercase);
    let (model, dataset) = (pinned(&spec.model.sha256)?, pinned(&spec.dataset.sha256)?);
    let calibration = match calibration {
        Some(c) => Some(pinned(&c.sha256)?),
        None => None,
    };
    let edge_cases = match &spec.edge_cases {
        Some(e) => Some(pinned(&e.sha256)?),
        None => None,
    };
    Some(key_of(
        spec,
        Digests {
            model: &model,
            external: Vec::new(),
            dataset: &dataset,
            calibration: calibration.as_deref(),
            edge_cases: edge_cases.as_deref(),
        },
        runtime,
    ))
}

/// The inputs' digests, as a key names them.
struct Digests<'a> {
    model: &'a str,
    external: Vec<Value>,
    dataset: &'a str,
    calibration: Option<&'a str>,
    edge_cases: Option<&'a str>,
}

fn key_of(spec: &CompressionJobSpec, d: Digests, runtime: &str) -> Key {
    let latency_decides = spec.search.is_some() || spec.thresholds.max_latency_ratio.is_some();
    let material = serde_json::json!({
        "schema": KEY_SCHEMA,
        "kompress": env!("CARGO_PKG_VERSION"),
        "onnxruntime": runtime,
        "executionProvider": format!("{:?}", crate::eval::runtime::Provider::from_env()),
        "host": latency_decides.then(host_cpu),
        "model": d.model,
        "externalData": d.external,
        "dataset": d.dataset,
        "calibration": d.calibration,
        "edgeCases": d.edge_cases,
        "spec": canonical_spec(spec),
    });
    let mut text = String::new();
    canonical_json(&material, &mut text);
    Key {
        hex: hex::encode(Sha256::digest(text.as_bytes())),
        material,
    }
}

/// The inputs of a job served by its [`pinned_key`], none of them fetched: where the spec
/// says they lie, the pinned digests, and their sizes as the cached report recorded them
/// (the same digests, so the same bytes).
pub fn pinned_inputs(spec: &CompressionJobSpec, cached: &Value) -> Option<Inputs> {
    let input = |uri: &str, sha: &Option<String>, recorded: &Value| -> Option<InputRef> {
        let uri = if crate::uri::OciTarget::is_oci(uri) {
            crate::uri::OciTarget::reference(uri).ok()?;
            uri.trim().to_string()
        } else {
            Location::parse(uri).ok()?.uri
        };
        Some(InputRef {
            uri: crate::uri::redact(&uri),
            sha256: sha.as_deref()?.to_ascii_lowercase(),
            bytes: recorded["bytes"].as_u64().unwrap_or(0),
        })
    };
    let calibration = match spec.calibration.as_ref().and_then(|c| c.dataset.as_ref()) {
        Some(c) => Some((PathBuf::new(), input(&c.uri, &c.sha256, &Value::Null)?)),
        None => None,
    };
    let edge_cases = match &spec.edge_cases {
        Some(e) => Some((
            PathBuf::new(),
            input(&e.uri, &e.sha256, &cached["edgeCases"]["dataset"])?,
        )),
        None => None,
    };
    Some(Inputs {
        model: input(&spec.model.uri, &spec.model.sha256, &cached["model"])?,
        model_path: PathBuf::new(),
        external_data: Vec::new(),
        dataset_path: PathBuf::new(),
        dataset: input(&spec.dataset.uri, &spec.dataset.sha256, &cached["dataset"])?,
        calibration,
        edge_cases,
    })
}

/// JSON with object keys sorted and null members dropped, whatever the map's own order.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| !m[*k].is_null()).collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One candidate file of a cached run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedFile {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `<output.uri>/cache/<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub api_version: String,
    pub kind: String,
    pub key: String,
    /// What went into the key (to see why a job missed: compare two entries' material).
    pub key_material: Value,
    pub recorded_at: String,
    /// The run folder (`<output.uri>/runs/<run-id>`) holding the files and report.json.
    pub run: String,
    /// The candidate's digest (`promote::artifact_digest` of `files`).
    pub digest: String,
    /// The model file first, then its external data.
    pub files: Vec<CachedFile>,
    pub verdict: Verdict,
    /// The run's report.json as it was written last.
    pub report: Value,
}

/// Where a key's entry lies.
pub fn entry_location(output: &Location, key: &str) -> Location {
    output.join(&format!("cache/{key}.json"))
}

/// A verified hit: the entry, its files fetched into scratch and checked, and the result.
pub struct Hit {
    pub entry: Entry,
    /// (name, local path, sha256), as a computed candidate's.
    pub files: Vec<File>,
    pub result: JobResult,
    pub from: CachedFrom,
    /// Bytes read from storage (the entry and the files).
    pub bytes_read: u64,
}

/// Records a finished run under `key`. A failure is a warning: the run's result stands.
pub async fn record(
    storage: &Storage,
    output: &Location,
    key: &Key,
    run: &Location,
    files: &[File],
    outcome: &super::Outcome,
    ui: &Ui,
) {
    let mut cached = Vec::new();
    for (name, path, sha) in files {
        let Ok(m) = std::fs::metadata(path) else {
            ui.warn(&format!(
                "cache: {name} left scratch before it was recorded; not cached"
            ));
            return;
        };
        cached.push(CachedFile {
            name: name.clone(),
            sha256: sha.clone(),
            bytes: m.len(),
        });
    }
    let entry = Entry {
        api_version: <crate::api::CompressionJob as kube::Resource>::api_version(&()).into_owned(),
        kind: ENTRY_KIND.into(),
        key: key.hex.clone(),
        key_material: key.material.clone(),
        recorded_at: jiff::Timestamp::now().to_string(),
        run: run.uri.clone(),
        digest: promote::artifact_digest(files),
        files: cached,
        verdict: outcome.result.verdict,
        report: outcome.report.clone(),
    };
    let loc = entry_location(output, &key.hex);
    let body = serde_json::to_vec_pretty(&entry).unwrap_or_default();
    match storage.put_bytes(&loc, body.into()).await {
        Ok(()) => ui.stage(&format!("cache: recorded as {}", loc.uri)),
        Err(e) => ui.warn(&format!(
            "cache: cannot record {} ({}); the next identical job computes again",
            loc.uri,
            crate::error::error_chain(&e)
        )),
    }
}

/// Looks `key` up under `output`: a verified [`Hit`], or None (a miss; anything wrong with the
/// entry or its files is a warning).
pub async fn lookup(
    storage: &Storage,
    output: &Location,
    key: &Key,
    scratch: &Path,
    ui: &Ui,
) -> Option<Hit> {
    let loc = entry_location(output, &key.hex);
    let dir = scratch.join("cache");
    let miss = |why: String| {
        ui.warn(&format!("cache: {} {why}; computing the result", loc.uri));
        None
    };
    let fetched = match storage
        .fetch_capped(
            &loc,
            &dir.join("entry.json"),
            None,
            MAX_ENTRY_BYTES,
            &|_, _| {},
        )
        .await
    {
        Ok(f) => f,
        Err(storage::Error::NotFound { .. }) => {
            ui.stage(&format!("cache: no entry for key {}", &key.hex[..16]));
            return None;
        }
        Err(e) => {
            return miss(format!(
                "cannot be read ({})",
                crate::error::error_chain(&e)
            ));
        }
    };
    let entry = match std::fs::read(&fetched.path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
    {
        Ok(e) => e,
        Err(e) => return miss(format!("is not a cache entry kompress wrote ({e})")),
    };
    let (run, result) = match checked(&entry, output, key) {
        Ok(c) => c,
        Err(why) => return miss(why),
    };
    ui.stage(&format!(
        "cache: key {} matches {} ({:?}); verifying its candidate",
        &key.hex[..16],
        entry.run,
        entry.verdict
    ));
    let mut files = Vec::new();
    let mut bytes_read = fetched.bytes;
    for f in &entry.files {
        let src = run.join(&f.name);
        let dest = dir.join("files").join(&f.name);
        let opts = storage::FetchOptions {
            expected_sha256: Some(&f.sha256),
            max_bytes: Some(f.bytes),
            confine_to: None,
        };
        match storage.fetch_with(&src, &dest, &opts, &|_, _| {}).await {
            Ok(got) => bytes_read += got.bytes,
            Err(storage::Error::Checksum { uri, actual, .. }) => {
                return miss(format!(
                    "names a candidate whose bytes changed since it was recorded: {uri} has \
                     sha256 {actual}, the entry recorded {}; it is not used",
                    f.sha256
                ));
            }
            Err(e) => {
                return miss(format!(
                    "names a candidate that cannot be read back: {}",
                    crate::error::error_chain(&e)
                ));
            }
        }
        files.push((f.name.clone(), dest, f.sha256.clone()));
    }
    let from = CachedFrom {
        run: run.uri.clone(),
        key: key.hex.clone(),
    };
    Some(Hit {
        entry,
        files,
        result,
        from,
        bytes_read,
    })
}

/// The entry's run folder (rebuilt under this output's `runs/`, never taken as written) and
/// result, or why the entry cannot be used.
fn checked(entry: &Entry, output: &Location, key: &Key) -> Result<(Location, JobResult), String> {
    if entry.kind != ENTRY_KIND || entry.key != key.hex {
        return Err(format!(
            "is not this key's entry (kind {:?}, key {:?})",
            entry.kind, entry.key
        ));
    }
    let runs = output.join("runs/");
    let run_id = entry
        .run
        .strip_prefix(runs.uri.trim_end_matches('/'))
        .and_then(|r| r.strip_prefix('/'))
        .filter(|id| safe_name(id) && !id.contains('/'))
        .ok_or_else(|| format!("names a run folder outside {}: {}", runs.uri, entry.run))?;
    let run = output.join(&format!("runs/{run_id}"));
    match entry.files.first() {
        Some(f) if f.name == "model.onnx" => {}
        _ => return Err("lists no model.onnx first".into()),
    }
    if let Some(f) = entry.files.iter().find(|f| {
        !safe_name(&f.name)
            || f.sha256.len() != 64
            || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit())
    }) {
        return Err(format!("lists a file it cannot name safely: {:?}", f.name));
    }
    let as_files: Vec<File> = entry
        .files
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                PathBuf::new(),
                f.sha256.to_ascii_lowercase(),
            )
        })
        .collect();
    if promote::artifact_digest(&as_files) != entry.digest {
        return Err("lists files whose digest is not its own".into());
    }
    let result: JobResult = serde_json::from_value(entry.report["result"].clone())
        .map_err(|e| format!("holds no result ({e})"))?;
    if result.verdict != entry.verdict || result.compressed_bytes == 0 {
        return Err("holds a result that does not match it".into());
    }
    Ok((run, result))
}

/// A relative path of plain segments (no `..`, `.`, empty segment, backslash or NUL).
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', '\0'])
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The cached result as this run's: what the gate decided, with this run's artifact, promotion
/// and usage still to fill in.
pub fn reused_result(hit: &Hit) -> JobResult {
    JobResult {
        artifact: None,
        promoted: None,
        report: None,
        evidence: None,
        oci: None,
        usage: None,
        cached_from: Some(hit.from.clone()),
        ..hit.result.clone()
    }
}

/// This run's report.json from the cached one: the cached run's evaluation (recipe, passes,
/// calibration, search, edge cases) with this run's job, id, times, inputs (the same digests;
/// their locations as this job names them), result, tools and where it came from.
pub fn replayed_report(
    cached: &Value,
    this: &crate::report::Report,
    inputs: &Inputs,
    result: &JobResult,
) -> Value {
    let mut r = cached.clone();
    let mine = serde_json::to_value(this).unwrap_or_default();
    if let (Some(r), Some(mine)) = (r.as_object_mut(), mine.as_object()) {
        for k in [
            "apiVersion",
            "kind",
            "job",
            "runId",
            "startedAt",
            "durationSeconds",
            "model",
            "externalData",
            "dataset",
            "thresholds",
            "evaluator",
            "tools",
        ] {
            match mine.get(k) {
                Some(v) => r.insert(k.into(), v.clone()),
                None => r.remove(k),
            };
        }
        r.insert(
            "result".into(),
            serde_json::to_value(result).unwrap_or_default(),
        );
        r.insert(
            "cachedFrom".into(),
            serde_json::to_value(&result.cached_from).unwrap_or_default(),
        );
    }
    if let (Some((_, e)), Some(d)) = (&inputs.edge_cases, r.pointer_mut("/edgeCases/dataset")) {
        *d = serde_json::to_value(e).unwrap_or_default();
    }
    if let Some(src) = r.pointer_mut("/calibration/source") {
        let uri = match (src["kind"].as_str(), &inputs.calibration) {
            (Some("calibration"), Some((_, c))) => &c.uri,
            _ => &inputs.dataset.uri,
        };
        src["uri"] = uri.clone().into();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CompressionJobSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn inputs(model_sha: &str) -> Inputs {
        let r = |sha: &str| InputRef {
            uri: "s3://b/x".into(),
            sha256: sha.into(),
            bytes: 1,
        };
        Inputs {
            model_path: PathBuf::new(),
            model: r(model_sha),
            external_data: vec![],
            dataset_path: PathBuf::new(),
            dataset: r("d"),
            calibration: None,
            edge_cases: None,
        }
    }

    const A: &str = "model: {uri: s3://m/model.onnx}\ndataset: {uri: s3://d/eval.npz, labels: labels}\npasses: [{quantize: {perChannel: true}}]\nthresholds: {maxAccuracyDrop: 0.01, minAgreement: 0.98}\noutput: {uri: s3://m/out, promoteTo: s3://m/prod}\n";
    // A reordered, written elsewhere, with other pod settings, an empty evaluation and the
    // default target spelled out.
    const A_REORDERED: &str = "output: {promoteTo: s3://x/prod2, uri: s3://x/out2}\nthresholds: {minAgreement: 0.98, maxAccuracyDrop: 0.01}\nresources: {cpu: '4'}\nbackoffLimit: 5\nevaluation: {}\ntarget: {cpu: auto}\ndataset: {labels: labels, uri: file:///data/eval.npz}\npasses: [{quantize: {perChannel: true}}]\nmodel: {uri: /models/model.onnx, sha256: '0000000000000000000000000000000000000000000000000000000000000000'}\n";

    fn key_of(yaml: &str, model_sha: &str) -> String {
        key(&spec(yaml), &inputs(model_sha), "1.31.1").hex
    }

    #[test]
    fn order_locations_and_pod_settings_do_not_change_the_key() {
        assert_eq!(key_of(A, "m"), key_of(A_REORDERED, "m"));
    }

    #[test]
    fn thresholds_passes_inputs_and_versions_do_change_it() {
        let base = key_of(A, "m");
        assert_ne!(base, key_of(&A.replace("0.01", "0.02"), "m"), "a threshold");
        assert_ne!(
            base,
            key_of(
                &A.replace(
                    "minAgreement: 0.98",
                    "minAgreement: 0.98, minCompressionRatio: 3"
                ),
                "m"
            ),
            "a threshold added"
        );
        assert_ne!(
            base,
            key_of(&A.replace("perChannel: true", "perChannel: false"), "m"),
            "a pass setting"
        );
        assert_ne!(
            base,
            key_of(&A.replace("labels: labels", "labels: y"), "m"),
            "a dataset setting"
        );
        assert_ne!(
            key_of(
                &A.replace("quantize: {perChannel: true}", "quantize: {}"),
                "m"
            ),
            key_of(&A.replace("quantize: {perChannel: true}", "fp16: {}"), "m"),
            "another pass, both with default settings"
        );
        assert_ne!(
            base,
            key_of(&format!("{A}target: {{cpu: x86-vnni}}\n"), "m"),
            "a target"
        );
        assert_ne!(base, key_of(A, "m2"), "other model bytes");
        let mut other_data = inputs("m");
        other_data.dataset.sha256 = "d2".into();
        assert_ne!(
            base,
            key(&spec(A), &other_data, "1.31.1").hex,
            "other dataset bytes"
        );
        assert_ne!(
            base,
            key(&spec(A), &inputs("m"), "1.32.0").hex,
            "another runtime"
        );
    }

    #[test]
    fn a_spec_pinning_every_digest_has_the_fetched_inputs_key_before_the_fetch() {
        let sha = |c: char| c.to_string().repeat(64);
        let pinned = A
            .replace(
                "model.onnx}",
                &format!("model.onnx, sha256: '{}'}}", sha('a')),
            )
            .replace(
                "labels: labels}",
                &format!("labels: labels, sha256: '{}'}}", sha('b')),
            );
        let mut fetched = inputs(&sha('a'));
        fetched.dataset.sha256 = sha('b');
        let p = pinned_key(&spec(&pinned), "1.31.1").expect("every input pinned");
        assert_eq!(p.hex, key(&spec(&pinned), &fetched, "1.31.1").hex);
        assert!(pinned_key(&spec(A), "1.31.1").is_none(), "nothing pinned");
        let with_edges = format!("{pinned}edgeCases: {{uri: s3://d/edge.npz}}\n");
        assert!(
            pinned_key(&spec(&with_edges), "1.31.1").is_none(),
            "the edge-case set is not pinned"
        );
    }

    #[test]
    fn every_spec_field_is_either_in_the_key_or_named_as_not_changing_the_result() {
        let crd = serde_json::to_value(crate::api::crd()).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        let fields: Vec<&String> = props.as_object().unwrap().keys().collect();
        for f in &fields {
            assert!(
                IN_KEY.contains(&f.as_str()) != NOT_IN_KEY.contains(&f.as_str()),
                "spec.{f}: add it to exactly one of IN_KEY and NOT_IN_KEY"
            );
        }
        assert_eq!(fields.len(), IN_KEY.len() + NOT_IN_KEY.len());
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_nulls() {
        let mut a = String::new();
        canonical_json(
            &serde_json::json!({"b": [1, {"y": null, "x": "s"}], "a": 1.5}),
            &mut a,
        );
        assert_eq!(a, r#"{"a":1.5,"b":[1,{"x":"s"}]}"#);
    }

    #[test]
    fn only_plain_relative_names_are_safe() {
        for ok in ["model.onnx", "data/w.bin"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/../b", "/abs", "a//b", "a\\b", ".", "a/."] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
