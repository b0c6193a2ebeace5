//! Promotion to object storage (or a local folder): the candidate's files under a
//! content-addressed folder `promoteTo/sha256-<digest>/`, each one verified by reading back
//! what the store holds (a file already there is re-verified, and replaced when its bytes
//! differ: nothing is trusted by name or size), the evidence under
//! `evidence/<run-id>.intoto.json` in that folder, and `promoted.json` written last, so the
//! manifest only ever points at verified bytes.
//!
//! Verification (`kompress verify FOLDER`) reads what the store holds now, confined to the
//! folder that holds `promoted.json`: the evidence the manifest names, its subjects (exactly
//! the manifest's files) and each file's bytes.

use super::evidence::{self, FILE_SUFFIX, Sealed, VerifyingKey};
use super::verify::{Failure, Verified, files_as, is_sha256_hex, plain_name, shown, statement_of};
use super::{Artifact, File, Promoted, Target, artifact_digest, sha256_hex, upload_verified};
use crate::api::{ArtifactRef, EvidenceRef, JobResult};
use crate::storage::{Error, Location, Result, Storage};
use crate::ui::Ui;
use serde::{Deserialize, Serialize};

/// The most of an existing `promoted.json` read (kompress writes a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

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

/// A promotion folder in object storage.
#[derive(Debug, Clone)]
pub struct Store(pub Location);

impl Store {
    pub fn parse(uri: &str) -> Result<Self> {
        Ok(Self(Location::parse(uri)?))
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Target for Store {
    type Prepared = ();

    fn prepare(&self, _: &[File]) -> Result<()> {
        Ok(())
    }

    fn subject(&self, _: &()) -> Option<(String, String)> {
        None
    }

    async fn promote(
        &self,
        storage: &Storage,
        artifact: &Artifact<'_>,
        _: (),
        result: &JobResult,
        evidence: Option<&Sealed>,
        ui: &Ui,
    ) -> Result<Promoted> {
        let dest = &self.0;
        ui.stage(&format!(
            "promoting sha256:{} to {dest}",
            &artifact.digest[..12]
        ));
        let (promoted, evidence, n) = promote(storage, dest, artifact, result, evidence).await?;
        Ok(Promoted {
            promoted,
            evidence,
            oci: None,
            bytes_written: n,
        })
    }
}

/// The `promoted.json` already at `loc`, read through a capped fetch: None when there is none,
/// or when it is larger than [`MAX_MANIFEST_BYTES`] (not one kompress wrote: it is replaced,
/// never read whole).
async fn existing_manifest(storage: &Storage, loc: &Location) -> Result<Option<Vec<u8>>> {
    match get_capped(storage, loc, MAX_MANIFEST_BYTES, "promoted.json").await {
        Err(Error::TooLarge { .. }) => Ok(None),
        r => r,
    }
}

/// An object of at most `cap` bytes, None when missing: a larger one is refused without being
/// read past that (`Storage::fetch_capped`, through a temporary file named `name`).
async fn get_capped(
    storage: &Storage,
    loc: &Location,
    cap: u64,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let dir = tempfile::tempdir().map_err(|source| Error::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let path = dir.path().join(name);
    match storage
        .fetch_capped(loc, &path, None, cap, &|_, _| {})
        .await
    {
        Ok(_) => Ok(Some(
            std::fs::read(&path).map_err(|source| Error::Io { path, source })?,
        )),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the object at `loc` holds exactly the bytes whose sha256 is `sha` (read back whole
/// and hashed). Missing -> false.
async fn holds(storage: &Storage, loc: &Location, sha: &str) -> Result<bool> {
    Ok(storage
        .sha256_of(loc)
        .await?
        .is_some_and(|(_, actual)| actual == sha))
}

/// Uploads `path` to `dest` unless `dest` already holds its bytes, then reads it back: the
/// bytes written.
async fn put_and_check(
    storage: &Storage,
    path: &std::path::Path,
    sha: &str,
    dest: &Location,
) -> Result<u64> {
    if holds(storage, dest, sha).await? {
        return Ok(0);
    }
    let n = upload_verified(storage, path, sha, dest, &|_, _| {}).await?;
    if !holds(storage, dest, sha).await? {
        return Err(Error::Checksum {
            uri: dest.uri.clone(),
            expected: sha.to_string(),
            actual: "different bytes after the upload (read back)".into(),
        });
    }
    Ok(n)
}

/// The sealed evidence into the digest folder, read back.
async fn put_evidence(
    storage: &Storage,
    dir: &Location,
    sealed: &Sealed,
) -> Result<(EvidenceRef, u64)> {
    let loc = dir.join(&format!("evidence/{}{FILE_SUFFIX}", sealed.run_id));
    let sha = sha256_hex(&sealed.bytes);
    storage.put_bytes(&loc, sealed.bytes.clone().into()).await?;
    if !holds(storage, &loc, &sha).await? {
        return Err(Error::Checksum {
            uri: loc.uri.clone(),
            expected: sha,
            actual: "different bytes after the upload (read back)".into(),
        });
    }
    let evidence = EvidenceRef {
        uri: loc.uri,
        sha256: sha,
        keyid: sealed.keyid.clone(),
    };
    Ok((evidence, sealed.bytes.len() as u64))
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
        written += put_and_check(storage, path, sha, &dir.join(name)).await?;
    }
    let promoted = ArtifactRef {
        uri: dir.join("model.onnx").uri,
        sha256: digest.to_string(),
    };
    let evidence = match evidence {
        Some(sealed) => {
            let (e, n) = put_evidence(storage, &dir, sealed).await?;
            written += n;
            Some(e)
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

/// `kompress verify` of a promotion folder or its `promoted.json`.
pub async fn verify_reference(
    reference: &str,
    key: Option<&VerifyingKey>,
) -> std::result::Result<Verified, Failure> {
    let loc = Location::parse(reference)?;
    let manifest = if loc.uri.ends_with(".json") {
        loc
    } else {
        loc.join("promoted.json")
    };
    verify(&Storage::new(None), &manifest, key).await
}

/// A manifest or envelope from storage, None when missing. At most
/// [`crate::oci::MAX_METADATA_BYTES`].
async fn get_metadata(
    storage: &Storage,
    loc: &Location,
) -> std::result::Result<Option<Vec<u8>>, Failure> {
    Ok(get_capped(storage, loc, crate::oci::MAX_METADATA_BYTES, "object").await?)
}

/// Verifies the promotion whose manifest is at `manifest_loc`: the evidence the manifest
/// names, its statement, its subjects (the manifest's files, each hashed where it lies) and
/// its verdict.
pub async fn verify(
    storage: &Storage,
    manifest_loc: &Location,
    key: Option<&VerifyingKey>,
) -> std::result::Result<Verified, Failure> {
    let bytes = get_metadata(storage, manifest_loc)
        .await?
        .ok_or_else(|| Failure::Manifest {
            uri: manifest_loc.uri.clone(),
            reason: "it does not exist".into(),
        })?;
    let manifest: PromotedManifest =
        serde_json::from_slice(&bytes).map_err(|e| Failure::Manifest {
            uri: manifest_loc.uri.clone(),
            reason: e.to_string(),
        })?;
    let ev_ref = manifest
        .evidence
        .as_ref()
        .ok_or_else(|| Failure::NoEvidence(manifest_loc.uri.clone()))?;
    let folder = manifest_loc.parent();
    let ev_loc = Location::parse(&ev_ref.uri).map_err(|e| Failure::Storage(Error::from(e)))?;
    inside(&folder, &ev_loc, "evidence")?;
    let env_bytes =
        get_metadata(storage, &ev_loc)
            .await?
            .ok_or_else(|| Failure::EvidenceMissing {
                uri: ev_ref.uri.clone(),
            })?;
    let actual = sha256_hex(&env_bytes);
    if actual != ev_ref.sha256 {
        return Err(Failure::EvidenceChanged {
            uri: ev_ref.uri.clone(),
            expected: ev_ref.sha256.clone(),
            actual,
        });
    }
    let statement = statement_of(&env_bytes, &ev_ref.uri, key)?;
    let not_ours = |what: String| Failure::Statement {
        uri: ev_ref.uri.clone(),
        what,
    };
    if statement.type_ != evidence::STATEMENT_TYPE {
        return Err(not_ours(format!("_type is `{}`", statement.type_)));
    }
    if statement.predicate_type != evidence::PREDICATE_TYPE {
        return Err(not_ours(format!(
            "predicateType is `{}`",
            statement.predicate_type
        )));
    }
    let subjects = subjects_of(&statement, &ev_ref.uri, &folder, &manifest)?;
    let digest = artifact_digest(&files_as(&subjects));
    if digest != manifest.digest {
        return Err(Failure::Digest {
            manifest: manifest.digest.clone(),
            subjects: digest,
        });
    }
    files_hold(storage, &folder, &manifest, &subjects).await?;
    super::verify::verified(
        manifest_loc.uri.clone(),
        digest,
        ev_ref.uri.clone(),
        key,
        subjects,
        &statement,
    )
}

/// The statement's subjects, each a sha256 and a plain name: exactly the manifest's files.
fn subjects_of(
    statement: &evidence::Statement,
    ev_uri: &str,
    folder: &Location,
    manifest: &PromotedManifest,
) -> std::result::Result<Vec<PromotedFile>, Failure> {
    let not_ours = |what: String| Failure::Statement {
        uri: ev_uri.to_string(),
        what,
    };
    let mut subjects: Vec<PromotedFile> = Vec::new();
    for s in &statement.subject {
        let sha = s
            .digest
            .get("sha256")
            .ok_or_else(|| not_ours(format!("subject `{}` has no sha256 digest", s.name)))?;
        if !is_sha256_hex(sha) {
            return Err(not_ours(format!(
                "subject `{}` has sha256 `{}`, not 64 lowercase hex digits",
                s.name,
                shown(sha)
            )));
        }
        plain_name(&s.name).map_err(|why| Failure::Outside {
            what: "subject",
            name: shown(&s.name),
            folder: folder.uri.clone(),
            why: why.into(),
        })?;
        subjects.push(PromotedFile {
            name: s.name.clone(),
            sha256: sha.clone(),
        });
    }
    let list = |fs: &[PromotedFile]| {
        fs.iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f.name,
                    f.sha256.chars().take(12).collect::<String>()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if subjects != manifest.files {
        return Err(Failure::Subjects {
            subjects: list(&subjects),
            files: list(&manifest.files),
        });
    }
    Ok(subjects)
}

/// Each subject, in the model's folder (inside the promotion folder, no symlink out), hashes
/// to its digest (read back whole).
async fn files_hold(
    storage: &Storage,
    folder: &Location,
    manifest: &PromotedManifest,
    subjects: &[PromotedFile],
) -> std::result::Result<(), Failure> {
    let model_loc = Location::parse(&manifest.uri).map_err(|e| Failure::Storage(Error::from(e)))?;
    let dir = model_loc.parent();
    inside(folder, &dir, "the model's folder")?;
    let root = folder.local_path();
    for f in subjects {
        let loc = dir.join(&f.name);
        let got = match storage.sha256_within(&loc, root.as_deref()).await {
            Err(Error::Outside { resolved, .. }) => {
                return Err(Failure::Outside {
                    what: "subject",
                    name: f.name.clone(),
                    folder: folder.uri.clone(),
                    why: format!("it resolves to `{}` (a symlink out)", resolved.display()),
                });
            }
            r => r?,
        };
        match got {
            None => return Err(Failure::FileMissing { uri: loc.uri }),
            Some((_, actual)) if actual != f.sha256 => {
                return Err(Failure::FileChanged {
                    uri: loc.uri,
                    expected: f.sha256.clone(),
                    actual,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `loc` must be `folder` itself or under it, in the same store.
fn inside(
    folder: &Location,
    loc: &Location,
    what: &'static str,
) -> std::result::Result<(), Failure> {
    let (f, k) = (folder.key(), loc.key());
    let under = folder.store_url() == loc.store_url()
        && (f.is_empty() || k == f || k.strip_prefix(f).is_some_and(|r| r.starts_with('/')));
    if under {
        Ok(())
    } else {
        Err(Failure::Outside {
            what,
            name: shown(&loc.uri),
            folder: folder.uri.clone(),
            why: "promoted.json may only name what the promotion folder holds".into(),
        })
    }
}
