//! Publishing a run, and promotion that readers can trust.
//!
//! Every run: the candidate files, then `report.json`, under `output.uri/runs/<run-id>/` (the
//! audit trail; run ids are unique, so runs never share a folder). A passing candidate is then
//! promoted: its files under a content-addressed folder `promoteTo/sha256-<digest>/`, each one
//! verified by reading back what the store holds (a file already there is re-verified, and
//! replaced when its bytes differ: nothing is trusted by name or size), and `promoted.json`
//! written last, so the manifest only ever points at verified bytes. Each promotion's evidence
//! (a DSSE envelope of an in-toto statement about those files, signed when a key is set, see
//! `crate::evidence`) is sealed before anything is promoted, stored in the digest folder under
//! `evidence/<run-id>.intoto.json` after the files and before the manifest, and named by it. Object stores make an
//! object visible only when complete and local writes go through a rename, so nobody reads a
//! partial file at a final name; no conditional writes are needed.

use crate::api::{ArtifactRef, EvidenceRef, JobResult, Verdict};
use crate::storage::{Error, Location, Result, Storage};
use crate::ui::Ui;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The most of an existing `promoted.json` read (kompress writes a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The `promoted.json` already at `loc`, read through a capped fetch: None when there is none,
/// or when it is larger than [`MAX_MANIFEST_BYTES`] (not one kompress wrote: it is replaced,
/// never read whole).
async fn existing_manifest(storage: &Storage, loc: &Location) -> Result<Option<Vec<u8>>> {
    use crate::storage::Error as E;
    let dir = tempfile::tempdir().map_err(|source| E::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let path = dir.path().join("promoted.json");
    match storage
        .fetch_capped(loc, &path, None, MAX_MANIFEST_BYTES, &|_, _| {})
        .await
    {
        Ok(_) => Ok(Some(
            std::fs::read(&path).map_err(|source| E::Io { path, source })?,
        )),
        Err(E::NotFound { .. } | E::TooLarge { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The manifest at `<promoteTo>/promoted.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotedManifest {
    pub api_version: String,
    pub kind: String,
    /// sha256 of the model (of its file list, when it has external data).
    pub digest: String,
    /// The model file to load.
    pub uri: String,
    pub files: Vec<PromotedFile>,
    pub source: SourceRef,
    pub job: serde_json::Value,
    pub recipe: serde_json::Value,
    pub metrics: serde_json::Value,
    pub promoted_at: String,
    /// The evidence of the promotion that wrote this manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromotedFile {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRef {
    pub uri: String,
    pub sha256: String,
}

/// A local file to publish: (name in the folder, local path, sha256 computed when it was written).
pub type File = (String, PathBuf, String);

/// One file: sha256 of the file. Several (model + external data): sha256 over "name sha\n" lines.
pub fn artifact_digest(files: &[File]) -> String {
    match files {
        [(_, _, sha)] => sha.clone(),
        _ => {
            let mut h = Sha256::new();
            for (name, _, sha) in files {
                h.update(format!("{name} {sha}\n"));
            }
            hex::encode(h.finalize())
        }
    }
}

/// A promotion's evidence, sealed (and signed, when a key is set) before anything is promoted.
pub struct Sealed {
    /// The DSSE envelope's JSON.
    pub bytes: Vec<u8>,
    /// The signing key's id; None when unsigned.
    pub keyid: Option<String>,
    /// The run's id: the envelope is stored as `evidence/<run-id>.intoto.json`.
    pub run_id: String,
}

/// Where a passing candidate is promoted.
#[derive(Debug, Clone)]
pub enum Promotion {
    /// Object storage: `sha256-<digest>/` folder, then `promoted.json`.
    Store(Location),
    /// An OCI registry (`crate::oci`).
    Oci {
        target: crate::oci::Target,
        plain_http: bool,
    },
}

impl Promotion {
    pub fn parse(uri: &str, registry: Option<&crate::api::RegistrySpec>) -> Result<Self> {
        if crate::oci::Target::is_oci(uri) {
            Ok(Self::Oci {
                target: crate::oci::Target::parse(uri)?,
                plain_http: registry.and_then(|r| r.plain_http).unwrap_or(false),
            })
        } else {
            Ok(Self::Store(Location::parse(uri)?))
        }
    }
}

impl std::fmt::Display for Promotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(l) => write!(f, "{l}"),
            Self::Oci { target, .. } => write!(f, "{}:{}", target.repo_uri(), target.tag),
        }
    }
}

/// Where a run goes.
pub struct Target {
    /// `output.uri/runs/<run-id>`.
    pub run: Location,
    /// `output.promoteTo`, if set.
    pub promote_to: Option<Promotion>,
}

/// What is published: the candidate's files and digest, and what the manifest says about
/// where the model came from.
pub struct Artifact<'a> {
    pub files: &'a [File],
    pub digest: &'a str,
    /// With an OCI promotion: the manifest and config, built before the evidence was sealed.
    pub oci: Option<&'a crate::oci::Prepared>,
    pub source: SourceRef,
    pub job: serde_json::Value,
    pub recipe: serde_json::Value,
}

/// How report.json is rendered, and what completes the result (the run's final usage) before
/// its last write.
pub struct Reporting<'a> {
    pub render: &'a (dyn Fn(&JobResult) -> Vec<u8> + Sync),
    pub finish: &'a (dyn Fn(&mut JobResult) + Sync),
}

/// Uploads the candidate and its report, and promotes it when the verdict is Passed. Returns
/// the result with `artifact`, `report` and (when promoted) `promoted` set. `report` renders
/// report.json for a result; it is written before promotion (so a failed promotion still leaves
/// a report) and again last, after it, with the usage `finish` completes.
pub async fn publish(
    storage: &Storage,
    to: &Target,
    artifact: &Artifact<'_>,
    mut result: JobResult,
    report: &Reporting<'_>,
    evidence: Option<&Sealed>,
    ui: &Ui,
) -> Result<JobResult> {
    let Reporting {
        render: report,
        finish,
    } = report;
    let (files, digest) = (artifact.files, artifact.digest);
    let mut written = 0u64;
    ui.stage(&format!("uploading candidate to {}", to.run));
    for (name, path, sha) in files {
        let bar = ui.bar(&format!("upload {name}"), true);
        let n = upload_verified(storage, path, sha, &to.run.join(name), &|s, t| {
            bar.set(s, t)
        })
        .await?;
        bar.finish(n);
        written += n;
    }
    result.artifact = Some(ArtifactRef {
        uri: to.run.join("model.onnx").uri,
        sha256: digest.to_string(),
    });
    let report_loc = to.run.join("report.json");
    result.report = Some(report_loc.uri.clone());
    let body = report(&result);
    written += body.len() as u64;
    storage.put_bytes(&report_loc, body.into()).await?;
    match (&result.verdict, &to.promote_to) {
        (Verdict::Passed, Some(Promotion::Oci { target, plain_http })) => {
            ui.stage(&format!(
                "pushing sha256:{} to {}:{}",
                &digest[..12],
                target.repo_uri(),
                target.tag
            ));
            let prepared = match artifact.oci {
                Some(p) => p.clone(),
                None => crate::oci::prepare(files, &target.repository)?,
            };
            let session = crate::oci::Session::new(&target.registry, *plain_http).await?;
            let pushed = crate::oci::push(
                &session,
                target,
                &prepared,
                evidence.map(|e| e.bytes.as_slice()),
            )
            .await?;
            written += pushed.bytes_uploaded;
            result.promoted = Some(ArtifactRef {
                uri: pushed.reference.clone(),
                sha256: digest.to_string(),
            });
            result.evidence = match (evidence, &pushed.evidence) {
                (Some(e), Some(uri)) => Some(EvidenceRef {
                    uri: uri.clone(),
                    sha256: hex::encode(Sha256::digest(&e.bytes)),
                    keyid: e.keyid.clone(),
                }),
                _ => None,
            };
            result.oci = Some(crate::api::OciPush {
                manifest_digest: pushed.manifest_digest.clone(),
                blobs_uploaded: pushed.blobs_uploaded,
                blobs_reused: pushed.blobs_reused,
                referrers: pushed.referrers.map(str::to_string),
            });
        }
        (Verdict::Passed, Some(Promotion::Store(dest))) => {
            ui.stage(&format!("promoting sha256:{} to {dest}", &digest[..12]));
            let (promoted, evidence, n) =
                promote(storage, dest, artifact, &result, evidence).await?;
            result.promoted = Some(promoted);
            result.evidence = evidence;
            written += n;
        }
        (Verdict::Rejected, Some(_)) => ui.stage("candidate rejected: nothing promoted"),
        _ => {}
    }
    // The last word: report.json written once more with the run's final usage (this stage's
    // time and bytes included; the bytes of this last copy of the report itself are not).
    if let Some(u) = result.usage.as_mut() {
        u.bytes_written += written;
    }
    finish(&mut result);
    let body = report(&result);
    storage.put_bytes(&report_loc, body.into()).await?;
    Ok(result)
}

/// Uploads a local file whose sha256 is `sha` (computed when it was written). The bytes are
/// hashed as they are sent; if they differ (the file changed since), nothing becomes visible
/// at `dest` and the upload fails.
async fn upload_verified(
    storage: &Storage,
    path: &Path,
    sha: &str,
    dest: &Location,
    progress: crate::storage::ProgressFn<'_>,
) -> Result<u64> {
    Ok(storage
        .put_file_checked(path, dest, Some(sha), progress)
        .await?
        .bytes)
}

/// Whether the object at `loc` holds exactly the bytes whose sha256 is `sha` (read back whole
/// and hashed). Missing -> false.
async fn holds(storage: &Storage, loc: &Location, sha: &str) -> Result<bool> {
    Ok(storage
        .sha256_of(loc)
        .await?
        .is_some_and(|(_, actual)| actual == sha))
}

/// Promotes the candidate files, then the evidence, then the manifest. Idempotent: files
/// already stored under their digest are verified and kept, and a manifest already naming this
/// digest (and some evidence) is left as it is; this run's evidence is stored beside it either
/// way.
async fn promote(
    storage: &Storage,
    to: &Location,
    artifact: &Artifact<'_>,
    result: &JobResult,
    evidence: Option<&Sealed>,
) -> Result<(ArtifactRef, Option<EvidenceRef>, u64)> {
    let (files, digest) = (artifact.files, artifact.digest);
    let dir = to.join(&format!("sha256-{digest}"));
    let mut written = 0u64;
    for (name, path, sha) in files {
        let dest = dir.join(name);
        if holds(storage, &dest, sha).await? {
            continue;
        }
        written += upload_verified(storage, path, sha, &dest, &|_, _| {}).await?;
        if !holds(storage, &dest, sha).await? {
            return Err(Error::Checksum {
                uri: dest.uri.clone(),
                expected: sha.clone(),
                actual: "different bytes after the upload (read back)".into(),
            });
        }
    }
    let promoted = ArtifactRef {
        uri: dir.join("model.onnx").uri,
        sha256: digest.to_string(),
    };
    let evidence = match evidence {
        Some(sealed) => {
            let loc = dir.join(&format!(
                "evidence/{}{}",
                sealed.run_id,
                crate::evidence::FILE_SUFFIX
            ));
            let sha = hex::encode(Sha256::digest(&sealed.bytes));
            storage.put_bytes(&loc, sealed.bytes.clone().into()).await?;
            written += sealed.bytes.len() as u64;
            if !holds(storage, &loc, &sha).await? {
                return Err(Error::Checksum {
                    uri: loc.uri.clone(),
                    expected: sha,
                    actual: "different bytes after the upload (read back)".into(),
                });
            }
            Some(EvidenceRef {
                uri: loc.uri,
                sha256: sha,
                keyid: sealed.keyid.clone(),
            })
        }
        None => None,
    };
    let manifest_loc = to.join("promoted.json");
    if let Some(existing) = existing_manifest(storage, &manifest_loc).await?
        && serde_json::from_slice::<PromotedManifest>(&existing)
            .is_ok_and(|m| m.digest == digest && (m.evidence.is_some() || evidence.is_none()))
    {
        return Ok((promoted, evidence, written));
    }
    let manifest = PromotedManifest {
        api_version: <crate::api::CompressionJob as kube::Resource>::api_version(&()).into_owned(),
        kind: "PromotedModel".into(),
        digest: digest.into(),
        uri: promoted.uri.clone(),
        files: files
            .iter()
            .map(|(n, _, s)| PromotedFile {
                name: n.clone(),
                sha256: s.clone(),
            })
            .collect(),
        source: artifact.source.clone(),
        job: artifact.job.clone(),
        recipe: artifact.recipe.clone(),
        metrics: serde_json::json!({
            "baseline": result.baseline,
            "candidate": result.candidate,
            "ratio": result.ratio,
            "accuracyDrop": result.accuracy_drop,
            "checks": result.checks,
        }),
        promoted_at: jiff::Timestamp::now().to_string(),
        evidence: evidence.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    written += json.len() as u64;
    storage.put_bytes(&manifest_loc, json.into()).await?;
    Ok((promoted, evidence, written))
}
