//! Publishing a run, and promotion that readers can trust.
//!
//! Every run: the candidate files, then `report.json`, under `output.uri/runs/<run-id>/` (the
//! audit trail; run ids are unique, so runs never share a folder). A passing candidate is then
//! promoted to its [`Target`]: object storage ([`store`]: a content-addressed folder
//! `promoteTo/sha256-<digest>/`, each file verified by reading back what the store holds, and
//! `promoted.json` written last) or an OCI registry ([`oci`]: a ModelPack artifact, the tag
//! moved last). Each promotion's evidence ([`evidence`]: a DSSE envelope of an in-toto
//! statement about those files, signed when a key is set) is sealed before anything is
//! promoted and stored beside the model; `kompress verify` checks it ([`verify`]). Object
//! stores make an object visible only when complete and local writes go through a rename, so
//! nobody reads a partial file at a final name; no conditional writes are needed.
//!
//! A new promotion target is one file here implementing [`Target`] (and its verification),
//! plus its arm in [`Promotion`] and in [`verify()`].

use crate::api::{ArtifactRef, EvidenceRef, JobResult, OciPush, Verdict};
use crate::storage::{self, Location, Storage};
use crate::ui::Ui;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub mod evidence;
pub mod oci;
pub mod store;
pub mod verify;

pub use evidence::{MAX_KEY_BYTES, SIGNING_KEY_ENV, Sealed, SigningError, signing_key};
pub use store::{MAX_MANIFEST_BYTES, PromotedFile, PromotedManifest, SourceRef};
pub use verify::{Failure, Verified};

/// Why publishing failed: the stores (a storage or registry error), or the evidence's key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    Signing(#[from] SigningError),
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

/// What a promotion did, for the result.
pub struct Promoted {
    /// Where the model now is (with its digest).
    pub promoted: ArtifactRef,
    pub evidence: Option<EvidenceRef>,
    /// An OCI push's manifest digest and blob counts.
    pub oci: Option<OciPush>,
    /// Bytes this promotion wrote.
    pub bytes_written: u64,
}

/// A place a passing candidate is promoted to.
// Only ever called on concrete types (through [`Promotion`]), so the futures' auto traits are
// known where they are awaited.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// What is fixed before the evidence is sealed: an OCI manifest (its digest is a subject
    /// of the evidence); nothing for a store.
    type Prepared;

    /// Prepares the promotion of `files` (once: what is sealed is what is promoted).
    fn prepare(&self, files: &[File]) -> storage::Result<Self::Prepared>;

    /// The evidence's subject besides the files, as (name, `sha256:<hex>`), if any.
    fn subject(&self, prepared: &Self::Prepared) -> Option<(String, String)>;

    /// Promotes the files and the sealed evidence; `result` is the run's (for a manifest).
    async fn promote(
        &self,
        storage: &Storage,
        artifact: &Artifact<'_>,
        prepared: Self::Prepared,
        result: &JobResult,
        evidence: Option<&Sealed>,
        ui: &Ui,
    ) -> storage::Result<Promoted>;
}

/// Where a passing candidate is promoted (`output.promoteTo`).
#[derive(Debug, Clone)]
pub enum Promotion {
    /// Object storage: `sha256-<digest>/` folder, then `promoted.json`.
    Store(store::Store),
    /// An OCI registry.
    Oci(oci::Oci),
}

impl Promotion {
    pub fn parse(uri: &str, registry: Option<&crate::api::RegistrySpec>) -> storage::Result<Self> {
        if oci::Oci::claims(uri) {
            Ok(Self::Oci(oci::Oci::parse(uri, registry)?))
        } else {
            Ok(Self::Store(store::Store::parse(uri)?))
        }
    }
}

impl std::fmt::Display for Promotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(s) => s.fmt(f),
            Self::Oci(o) => o.fmt(f),
        }
    }
}

/// Verifies the promotion `reference` names (`kompress verify`): an `oci://` reference, else
/// a promotion folder or its `promoted.json`.
pub async fn verify(
    reference: &str,
    plain_http: bool,
    key: Option<&evidence::VerifyingKey>,
) -> Result<Verified, Failure> {
    if oci::Oci::claims(reference) {
        oci::verify(reference, plain_http, key).await
    } else {
        store::verify_reference(reference, key).await
    }
}

/// Where a run goes.
pub struct Destination {
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
    pub source: SourceRef,
    pub job: serde_json::Value,
    pub recipe: serde_json::Value,
}

/// How report.json is made, and what completes the result (the run's final usage) before
/// its last write.
pub struct Reporting<'a> {
    /// report.json for a result (its predicate is the evidence's).
    pub report: &'a (dyn Fn(&JobResult) -> serde_json::Value + Sync),
    pub finish: &'a (dyn Fn(&mut JobResult) + Sync),
}

/// Uploads the candidate and its report, and promotes it when the verdict is Passed. Returns
/// the result with `artifact`, `report` and (when promoted) `promoted` set. The evidence is
/// sealed (and signed by `signer`) first, so a signing failure promotes nothing. report.json
/// is written before promotion (so a failed promotion still leaves a report) and again last,
/// after it, with the usage `finish` completes.
pub async fn publish(
    storage: &Storage,
    to: &Destination,
    artifact: &Artifact<'_>,
    result: JobResult,
    report: &Reporting<'_>,
    signer: Option<&evidence::SigningKey>,
    ui: &Ui,
) -> Result<JobResult, Error> {
    let run = Run {
        storage,
        to: &to.run,
        artifact,
        report,
        signer,
        ui,
    };
    match &to.promote_to {
        Some(Promotion::Store(t)) => run.publish(Some(t), result).await,
        Some(Promotion::Oci(t)) => run.publish(Some(t), result).await,
        None => run.publish(None::<&store::Store>, result).await,
    }
}

/// One run's publication.
struct Run<'a> {
    storage: &'a Storage,
    to: &'a Location,
    artifact: &'a Artifact<'a>,
    report: &'a Reporting<'a>,
    signer: Option<&'a evidence::SigningKey>,
    ui: &'a Ui,
}

impl Run<'_> {
    async fn publish<T: Target>(
        &self,
        target: Option<&T>,
        mut result: JobResult,
    ) -> Result<JobResult, Error> {
        let Reporting { report, finish } = self.report;
        let (storage, files) = (self.storage, self.artifact.files);
        let passed = result.verdict == Verdict::Passed;
        // Prepared once, before the evidence: an OCI manifest's digest is one of its subjects.
        let prepared = match target {
            Some(t) if passed => Some((t, t.prepare(files)?)),
            _ => None,
        };
        let sealed = match &prepared {
            Some((t, p)) => Some(evidence::seal(
                &crate::report::evidence_predicate(&report(&result)),
                files,
                t.subject(p).as_ref().map(|(n, d)| (n.as_str(), d.as_str())),
                self.signer,
                self.to.file_name(),
            )?),
            None => None,
        };
        let mut written = self.upload(&mut result).await?;
        let report_loc = self.to.join("report.json");
        match prepared {
            Some((t, p)) => {
                let promoted = t
                    .promote(storage, self.artifact, p, &result, sealed.as_ref(), self.ui)
                    .await?;
                result.promoted = Some(promoted.promoted);
                result.evidence = promoted.evidence;
                if let Some(o) = promoted.oci {
                    result.oci = Some(o);
                }
                written += promoted.bytes_written;
            }
            None if target.is_some() && !passed => {
                self.ui.stage("candidate rejected: nothing promoted")
            }
            None => {}
        }
        // The last word: report.json written once more with the run's final usage (this stage's
        // time and bytes included; the bytes of this last copy of the report itself are not).
        if let Some(u) = result.usage.as_mut() {
            u.bytes_written += written;
        }
        finish(&mut result);
        let body = serde_json::to_vec_pretty(&report(&result)).unwrap_or_default();
        storage.put_bytes(&report_loc, body.into()).await?;
        Ok(result)
    }

    /// The files and the first report.json to the run folder; returns the bytes written.
    async fn upload(&self, result: &mut JobResult) -> storage::Result<u64> {
        let (storage, to) = (self.storage, self.to);
        let mut written = 0u64;
        self.ui.stage(&format!("uploading candidate to {to}"));
        for (name, path, sha) in self.artifact.files {
            let bar = self.ui.bar(&format!("upload {name}"), true);
            let n =
                upload_verified(storage, path, sha, &to.join(name), &|s, t| bar.set(s, t)).await?;
            bar.finish(n);
            written += n;
        }
        result.artifact = Some(ArtifactRef {
            uri: to.join("model.onnx").uri,
            sha256: self.artifact.digest.to_string(),
        });
        let report_loc = to.join("report.json");
        result.report = Some(report_loc.uri.clone());
        let body = serde_json::to_vec_pretty(&(self.report.report)(result)).unwrap_or_default();
        written += body.len() as u64;
        storage.put_bytes(&report_loc, body.into()).await?;
        Ok(written)
    }
}

/// Uploads a local file whose sha256 is `sha` (computed when it was written). The bytes are
/// hashed as they are sent; if they differ (the file changed since), nothing becomes visible
/// at `dest` and the upload fails.
async fn upload_verified(
    storage: &Storage,
    path: &Path,
    sha: &str,
    dest: &Location,
    progress: storage::ProgressFn<'_>,
) -> storage::Result<u64> {
    Ok(storage
        .put_file_checked(path, dest, Some(sha), progress)
        .await?
        .bytes)
}

/// sha256 hex of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
