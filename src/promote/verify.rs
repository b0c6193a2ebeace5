//! Checking a promotion's evidence (`kompress verify`): what every target's verification
//! shares. Every check reads what the store or registry holds now:
//!
//! 1. the evidence is the one the promotion names (a store's manifest names it by sha256; a
//!    registry lists it as a referrer of the model's manifest);
//! 2. a signature of the envelope verifies with the key, over DSSE's PAE (or, with
//!    `--unsigned`, the envelope is read without checking one);
//! 3. the payload is an in-toto Statement v1 with kompress's evaluation predicate;
//! 4. its subjects are exactly the promotion's files, and each file hashes to its subject's
//!    digest (read back whole);
//! 5. the predicate's verdict is Passed and every check in it passed.
//!
//! Every string from the evidence is checked before it is used.

use super::evidence::{self, Statement, VerifyingKey};
use super::store::PromotedFile;

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
    /// The reference is not a location.
    #[error(transparent)]
    Uri(#[from] crate::uri::Error),
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

/// The envelope's statement: its signature verified with `key`, or read without one.
pub(super) fn statement_of(
    env_bytes: &[u8],
    uri: &str,
    key: Option<&VerifyingKey>,
) -> Result<Statement, Failure> {
    let env_err = |source| Failure::Envelope {
        uri: uri.to_string(),
        source,
    };
    let envelope = evidence::parse_envelope(env_bytes).map_err(env_err)?;
    match key {
        Some(k) => k.verify(&envelope).map_err(env_err),
        None => evidence::unverified_statement(&envelope).map_err(env_err),
    }
}

/// Subjects as files (no local path), for [`super::artifact_digest`].
pub(super) fn files_as(files: &[PromotedFile]) -> Vec<super::File> {
    files
        .iter()
        .map(|f| (f.name.clone(), Default::default(), f.sha256.clone()))
        .collect()
}

/// At most 80 characters of an untrusted string, for a message (cut on a char boundary).
pub(super) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A subject's name is a relative path of plain segments inside the promotion folder: no
/// `..` or `.`, no empty segment, nothing absolute, no backslash or control character.
pub(super) fn plain_name(name: &str) -> Result<(), &'static str> {
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
pub(super) fn verified(
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
