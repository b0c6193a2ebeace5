//! `kompress verify REF --key PUB`: checks a promotion's evidence. REF is a promotion folder
//! (`output.promoteTo`) or its `promoted.json`. Every check reads what the store holds now:
//!
//! 1. the manifest names evidence, and the envelope's bytes are the ones it names (sha256);
//! 2. a signature of the envelope verifies with the key, over DSSE's PAE (or, with
//!    `--unsigned`, the envelope is read without checking one);
//! 3. the payload is an in-toto Statement v1 with kompress's evaluation predicate;
//! 4. its subjects are exactly the manifest's files, and each file in the promotion folder
//!    hashes to its subject's digest (read back whole);
//! 5. the predicate's verdict is Passed and every check in it passed.
//!
//! Everything read is confined: the evidence and the model's files must be inside the folder
//! that holds `promoted.json` (no `..`, no absolute or foreign name, no symlink out of it), and
//! every string from the evidence is checked before it is used.
//!
//! Exit 0 when all hold, 1 when one fails (the first failure is named), 65 on bad usage (a
//! malformed reference, a key that cannot be read).

use super::{Format, fail};
use crate::api::wire::{EXIT_PERMANENT, exit_code};
use crate::evidence::{self, PREDICATE_TYPE, STATEMENT_TYPE, Statement, VerifyingKey};
use crate::publish::{PromotedFile, PromotedManifest, artifact_digest};
use crate::storage::{Location, Storage};
use sha2::{Digest, Sha256};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A promotion folder (`output.promoteTo`) or its `promoted.json`.
    pub reference: String,
    /// The signer's public key (SubjectPublicKeyInfo PEM: `openssl pkey -in key.pem -pubout`).
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    /// Accept evidence without checking a signature (for promotions made without
    /// `spec.output.signing`); the digests and the verdict are still checked.
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// `oci://` references: talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// Why verification failed: the first check that did not hold.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("`{uri}` is not a promotion manifest ({reason})")]
    Manifest { uri: String, reason: String },
    #[error(
        "`{0}` names no evidence: it was promoted by a kompress without evidence, or written by hand"
    )]
    NoEvidence(String),
    #[error("evidence `{uri}` is missing")]
    EvidenceMissing { uri: String },
    #[error(
        "evidence `{uri}` changed since it was promoted: sha256 {actual}, the manifest says {expected}"
    )]
    EvidenceChanged {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("evidence `{uri}`: {source}")]
    Envelope {
        uri: String,
        #[source]
        source: evidence::Error,
    },
    #[error("evidence `{uri}` is not kompress evaluation evidence: {what}")]
    Statement { uri: String, what: String },
    #[error("the statement's subjects ({subjects}) are not the manifest's files ({files})")]
    Subjects { subjects: String, files: String },
    #[error("`{uri}` is missing")]
    FileMissing { uri: String },
    #[error(
        "`{uri}` does not hold the bytes the evidence names: sha256 {actual}, signed {expected}"
    )]
    FileChanged {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the manifest's digest {manifest} is not the digest of the evidence's subjects ({subjects})"
    )]
    Digest { manifest: String, subjects: String },
    #[error("the evidence records verdict {verdict}{failed}: this model did not pass its gate")]
    Verdict { verdict: String, failed: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Oci(#[from] crate::oci::Error),
    #[error("`{reference}` is not a kompress model artifact: {what}")]
    NotModel { reference: String, what: String },
    #[error("`{reference}` has no evidence referrer that verifies: {why}")]
    NoVerifiedReferrer { reference: String, why: String },
    #[error(
        "`{reference}` is not a reference to verify ({what}): give a promotion folder, its promoted.json, or oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST)"
    )]
    Reference { reference: String, what: String },
    #[error("{what} `{name}` is not inside the promotion folder `{folder}`: {why}")]
    Outside {
        what: &'static str,
        name: String,
        folder: String,
        why: String,
    },
}

/// What a successful verification established.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    pub manifest: String,
    pub digest: String,
    pub evidence: String,
    /// The key that verified the signature; None with `--unsigned`.
    pub keyid: Option<String>,
    pub subjects: Vec<PromotedFile>,
    pub verdict: String,
    pub checks: serde_json::Value,
    pub job: serde_json::Value,
    pub run_id: serde_json::Value,
    pub source_model: serde_json::Value,
    pub dataset: serde_json::Value,
}

impl VerifyArgs {
    pub async fn run(self) -> ExitCode {
        let key = match (&self.key, self.unsigned) {
            (Some(path), _) => {
                let text = match crate::onnx::read_small(path, crate::pipeline::MAX_KEY_BYTES) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("error: --key {}: {e}", path.display());
                        return super::exit(EXIT_PERMANENT);
                    }
                };
                match VerifyingKey::from_pem(&text, &path.display().to_string()) {
                    Ok(k) => Some(k),
                    Err(e) => return fail(&e, EXIT_PERMANENT),
                }
            }
            (None, true) => None,
            (None, false) => {
                eprintln!(
                    "error: give the signer's public key with --key PUB.pem (or --unsigned to check an unsigned promotion's digests and verdict only)"
                );
                return super::exit(EXIT_PERMANENT);
            }
        };
        let verified = if crate::oci::Target::is_oci(&self.reference) {
            verify_oci(&self.reference, self.plain_http, key.as_ref()).await
        } else {
            let loc = match Location::parse(&self.reference) {
                Ok(l) => l,
                Err(e) => return fail(&e, EXIT_PERMANENT),
            };
            let manifest = if loc.uri.ends_with(".json") {
                loc
            } else {
                loc.join("promoted.json")
            };
            verify(&Storage::new(None), &manifest, key.as_ref()).await
        };
        match verified {
            Ok(v) => {
                match self.output {
                    Format::Json => {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                    }
                    Format::Table => print_table(&v),
                }
                ExitCode::SUCCESS
            }
            Err(Failure::Storage(e)) => fail(&e, exit_code(e.is_permanent())),
            Err(e @ Failure::Reference { .. }) => fail(&e, EXIT_PERMANENT),
            Err(Failure::Oci(e)) => fail(&e, exit_code(e.is_permanent())),
            Err(e) => {
                eprintln!("verification FAILED: {}", crate::error::error_chain(&e));
                super::exit(1)
            }
        }
    }
}

fn print_table(v: &Verified) {
    println!("verified: {}", v.manifest);
    println!("  model digest   sha256:{}", v.digest);
    for f in &v.subjects {
        println!("  subject        {} sha256:{}", f.name, f.sha256);
    }
    println!("  evidence       {}", v.evidence);
    match &v.keyid {
        Some(k) => println!("  signed by      keyid {k}"),
        None => println!("  signed by      (not checked: --unsigned)"),
    }
    println!("  verdict        {}", v.verdict);
    if let Some(checks) = v.checks.as_array() {
        for c in checks {
            println!(
                "  check          {} = {} (limit {}): {}",
                c["name"].as_str().unwrap_or("?"),
                c["value"],
                c["limit"],
                if c["passed"].as_bool() == Some(true) {
                    "passed"
                } else {
                    "FAILED"
                }
            );
        }
    }
    println!("  job            {} run {}", v.job, v.run_id);
    println!("  source model   {}", v.source_model);
    println!("  dataset        {}", v.dataset);
}

/// A manifest or envelope from storage, None when missing. At most
/// [`crate::oci::MAX_METADATA_BYTES`]: a larger object is refused without being read past
/// that (`Storage::fetch_capped`, through a temporary file).
async fn get_capped(storage: &Storage, loc: &Location) -> Result<Option<Vec<u8>>, Failure> {
    use crate::storage::Error as E;
    let dir = tempfile::tempdir().map_err(|source| E::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let path = dir.path().join("object");
    match storage
        .fetch_capped(loc, &path, None, crate::oci::MAX_METADATA_BYTES, &|_, _| {})
        .await
    {
        Ok(_) => Ok(Some(
            std::fs::read(&path).map_err(|source| E::Io { path, source })?,
        )),
        Err(E::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Verifies the promotion whose manifest is at `manifest_loc`.
pub async fn verify(
    storage: &Storage,
    manifest_loc: &Location,
    key: Option<&VerifyingKey>,
) -> Result<Verified, Failure> {
    let bytes = get_capped(storage, manifest_loc)
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
    let ev_loc = Location::parse(&ev_ref.uri)
        .map_err(|e| Failure::Storage(crate::storage::Error::from(e)))?;
    inside(&folder, &ev_loc, "evidence")?;
    let env_bytes =
        get_capped(storage, &ev_loc)
            .await?
            .ok_or_else(|| Failure::EvidenceMissing {
                uri: ev_ref.uri.clone(),
            })?;
    let actual = hex::encode(Sha256::digest(&env_bytes));
    if actual != ev_ref.sha256 {
        return Err(Failure::EvidenceChanged {
            uri: ev_ref.uri.clone(),
            expected: ev_ref.sha256.clone(),
            actual,
        });
    }
    let env_err = |source| Failure::Envelope {
        uri: ev_ref.uri.clone(),
        source,
    };
    let envelope = evidence::parse_envelope(&env_bytes).map_err(env_err)?;
    let statement: Statement = match key {
        Some(k) => k.verify(&envelope).map_err(env_err)?,
        None => evidence::unverified_statement(&envelope).map_err(env_err)?,
    };
    let not_ours = |what: String| Failure::Statement {
        uri: ev_ref.uri.clone(),
        what,
    };
    if statement.type_ != STATEMENT_TYPE {
        return Err(not_ours(format!("_type is `{}`", statement.type_)));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(not_ours(format!(
            "predicateType is `{}`",
            statement.predicate_type
        )));
    }

    // Subjects: exactly the manifest's files, and each one's bytes as signed.
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
    let as_files: Vec<crate::publish::File> = subjects
        .iter()
        .map(|f| (f.name.clone(), Default::default(), f.sha256.clone()))
        .collect();
    let digest = artifact_digest(&as_files);
    if digest != manifest.digest {
        return Err(Failure::Digest {
            manifest: manifest.digest.clone(),
            subjects: digest,
        });
    }
    let model_loc = Location::parse(&manifest.uri)
        .map_err(|e| Failure::Storage(crate::storage::Error::from(e)))?;
    let dir = model_loc.parent();
    inside(&folder, &dir, "the model's folder")?;
    let root = folder.local_path();
    for f in &subjects {
        let loc = dir.join(&f.name);
        let got = match storage.sha256_within(&loc, root.as_deref()).await {
            Err(crate::storage::Error::Outside { resolved, .. }) => {
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

    verified(
        manifest_loc.uri.clone(),
        digest,
        ev_ref.uri.clone(),
        key,
        subjects,
        &statement,
    )
}

/// At most 80 characters of an untrusted string, for a message (cut on a char boundary).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A subject's name is a relative path of plain segments inside the promotion folder: no
/// `..` or `.`, no empty segment, nothing absolute, no backslash or control character.
fn plain_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.starts_with('/') || name.contains('\\') || name.contains(':') {
        return Err("an absolute or foreign path");
    }
    if name.chars().any(char::is_control) {
        return Err("a control character in the name");
    }
    if name.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Err("`..`, `.` or an empty segment in the name");
    }
    Ok(())
}

/// `loc` must be `folder` itself or under it, in the same store.
fn inside(folder: &Location, loc: &Location, what: &'static str) -> Result<(), Failure> {
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

/// The predicate fields verify relies on: a verdict, the checks (each named, passed or not),
/// the job, the run id and the inputs. A statement without them is not kompress's.
fn required_fields(p: &serde_json::Value) -> Result<(), String> {
    let missing = |f: &str| Err(format!("the predicate has no `{f}`"));
    if !p["verdict"].is_string() {
        return missing("verdict");
    }
    let Some(checks) = p["checks"].as_array() else {
        return missing("checks");
    };
    if let Some(i) = checks
        .iter()
        .position(|c| !c["name"].is_string() || !c["passed"].is_boolean())
    {
        return Err(format!(
            "the predicate's checks[{i}] has no `name` string or no `passed` boolean"
        ));
    }
    if !p["job"].is_object() {
        return missing("job");
    }
    if !p["runId"].is_string() {
        return missing("runId");
    }
    if !p["inputs"]["model"].is_object() {
        return missing("inputs.model");
    }
    Ok(())
}

/// The verdict the evidence records must be Passed with every check passed; then what was
/// verified.
fn verified(
    manifest: String,
    digest: String,
    evidence: String,
    key: Option<&VerifyingKey>,
    subjects: Vec<PromotedFile>,
    statement: &Statement,
) -> Result<Verified, Failure> {
    let p = &statement.predicate;
    required_fields(p).map_err(|what| Failure::Statement {
        uri: evidence.clone(),
        what,
    })?;
    let verdict = p["verdict"].as_str().unwrap_or("(none)").to_string();
    let failed: Vec<&str> = p["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["passed"].as_bool() != Some(true))
                .map(|c| c["name"].as_str().unwrap_or("?"))
                .collect()
        })
        .unwrap_or_default();
    if verdict != "Passed" || !failed.is_empty() {
        return Err(Failure::Verdict {
            verdict,
            failed: if failed.is_empty() {
                String::new()
            } else {
                format!(" with failed checks {}", failed.join(", "))
            },
        });
    }
    Ok(Verified {
        manifest,
        digest,
        evidence,
        keyid: key.map(|k| k.keyid().to_string()),
        subjects,
        verdict,
        checks: p["checks"].clone(),
        job: p["job"].clone(),
        run_id: p["runId"].clone(),
        source_model: p["inputs"]["model"].clone(),
        dataset: p["inputs"]["dataset"].clone(),
    })
}

/// Verifies a model pushed to an OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or `@sha256:`):
/// the manifest is a kompress ModelPack artifact; some evidence referrer's signature verifies
/// with the key; its statement names this manifest's digest and exactly its layers; each layer,
/// read back from the registry, hashes to its digest; the verdict is Passed.
pub async fn verify_oci(
    reference: &str,
    plain_http: bool,
    key: Option<&VerifyingKey>,
) -> Result<Verified, Failure> {
    use crate::oci::{self, EVIDENCE_ARTIFACT_TYPE, FILEPATH_ANNOTATION};
    let not_model = |what: &str| Failure::NotModel {
        reference: reference.into(),
        what: what.into(),
    };
    let r = oci::Target::reference(reference).map_err(|e| Failure::Reference {
        reference: reference.into(),
        what: e.to_string(),
    })?;
    let s = oci::Session::new(r.registry(), plain_http).await?;
    let (bytes, digest) = s.manifest(&r).await?.ok_or_else(|| Failure::Reference {
        reference: reference.into(),
        what:
            "the registry has no manifest for it (HTTP 404): check the repository and tag or digest"
                .into(),
    })?;
    let m: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| not_model(&e.to_string()))?;
    if m["artifactType"].as_str() != Some(oci::ARTIFACT_TYPE) {
        return Err(not_model(&format!(
            "artifactType is {}, not {}",
            m["artifactType"],
            oci::ARTIFACT_TYPE
        )));
    }
    let mut files = Vec::new();
    let mut sizes = Vec::new();
    for l in m["layers"].as_array().cloned().unwrap_or_default() {
        let (Some(name), Some(hex), Some(size)) = (
            l["annotations"][FILEPATH_ANNOTATION].as_str(),
            l["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")),
            l["size"].as_u64(),
        ) else {
            return Err(not_model(
                "a layer without a file path, a sha256 digest or a size",
            ));
        };
        if !is_sha256_hex(hex) {
            return Err(not_model("a layer digest that is not sha256:<64 hex>"));
        }
        files.push(PromotedFile {
            name: name.into(),
            sha256: hex.into(),
        });
        sizes.push(size);
    }
    let by_digest = oci_client::Reference::with_digest(
        r.registry().into(),
        r.repository().into(),
        digest.clone(),
    );
    let repo_uri = format!("{}{}/{}", oci::SCHEME, r.registry(), r.repository());
    let mut why = String::from("none found");
    for referrer in s.referrers(&by_digest, EVIDENCE_ARTIFACT_TYPE).await? {
        let Some(rd) = referrer["digest"].as_str() else {
            continue;
        };
        let at = oci_client::Reference::with_digest(
            r.registry().into(),
            r.repository().into(),
            rd.into(),
        );
        let ev_uri = format!("{repo_uri}@{rd}");
        let attempt = async {
            let (rb, _) = s
                .manifest(&at)
                .await?
                .ok_or_else(|| not_model("a listed referrer is missing"))?;
            let rm: serde_json::Value =
                serde_json::from_slice(&rb).map_err(|e| not_model(&e.to_string()))?;
            let env_digest = rm["layers"][0]["digest"]
                .as_str()
                .ok_or_else(|| not_model("an evidence referrer without a layer"))?
                .to_string();
            let env_bytes = s.blob(&at, &env_digest).await?;
            let env_err = |source| Failure::Envelope {
                uri: ev_uri.clone(),
                source,
            };
            let envelope = evidence::parse_envelope(&env_bytes).map_err(env_err)?;
            let statement = match key {
                Some(k) => k.verify(&envelope).map_err(env_err)?,
                None => evidence::unverified_statement(&envelope).map_err(env_err)?,
            };
            if statement.type_ != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
                return Err(Failure::Statement {
                    uri: ev_uri.clone(),
                    what: format!(
                        "_type is `{}`, predicateType `{}`",
                        shown(&statement.type_),
                        shown(&statement.predicate_type)
                    ),
                });
            }
            let mut subjects = statement.subject.clone();
            let manifest_hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
            let Some(at_repo) = subjects.iter().position(|x| {
                x.name == repo_uri
                    && x.digest.get("sha256").map(String::as_str) == Some(manifest_hex)
            }) else {
                return Err(Failure::Statement {
                    uri: ev_uri.clone(),
                    what: format!("no subject names {repo_uri}@{digest}"),
                });
            };
            subjects.remove(at_repo);
            let signed: Vec<PromotedFile> = subjects
                .iter()
                .map(|x| PromotedFile {
                    name: x.name.clone(),
                    sha256: x.digest.get("sha256").cloned().unwrap_or_default(),
                })
                .collect();
            if signed != files {
                return Err(Failure::Subjects {
                    subjects: signed
                        .iter()
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                    files: files
                        .iter()
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Ok((statement, ev_uri.clone()))
        };
        match attempt.await {
            Ok((statement, ev_uri)) => {
                // The layers as the registry serves them now.
                for (f, size) in files.iter().zip(&sizes) {
                    let want = format!("sha256:{}", f.sha256);
                    let actual = s.blob_sha256(&by_digest, &want, *size).await?;
                    if actual != want {
                        return Err(Failure::FileChanged {
                            uri: format!("{repo_uri}@{want} ({})", f.name),
                            expected: want,
                            actual,
                        });
                    }
                }
                let files_as: Vec<crate::publish::File> = files
                    .iter()
                    .map(|f| (f.name.clone(), Default::default(), f.sha256.clone()))
                    .collect();
                return verified(
                    format!("{repo_uri}@{digest}"),
                    artifact_digest(&files_as),
                    ev_uri,
                    key,
                    files,
                    &statement,
                );
            }
            // The registry failing (a timeout, a refusal, an answer over its cap) ends the
            // verification with its own class; bad evidence moves on to the next referrer.
            Err(Failure::Oci(e)) => return Err(Failure::Oci(e)),
            Err(e) => why = crate::error::error_chain(&e),
        }
    }
    Err(Failure::NoVerifiedReferrer {
        reference: reference.into(),
        why,
    })
}
