//! Promotion that readers can trust: model bytes first under a content-addressed folder
//! (`sha256-<digest>/`), then `promoted.json` written last. Object stores make each object
//! visible only when complete, and readers follow the manifest, so nobody ever sees a partial
//! or unchecked model; no conditional writes are needed (not every S3-compatible server has them).

use crate::api::ArtifactRef;
use crate::pipeline::Report;
use crate::storage::{Location, Result, Storage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

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

/// One file: sha256 of the file. Several (model + external data): sha256 over "name sha\n" lines.
pub fn artifact_digest(files: &[(String, PathBuf, String)]) -> String {
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

/// Promotes the candidate files. Idempotent: files already stored under their digest are not
/// uploaded again, and a manifest already naming this digest is left as it is.
pub async fn promote(
    storage: &Storage,
    to: &Location,
    files: &[(String, PathBuf, String)],
    digest: &str,
    report: &Report,
) -> Result<ArtifactRef> {
    let dir = to.join(&format!("sha256-{digest}"));
    for (name, path, _) in files {
        let dest = dir.join(name);
        // Same digest folder and same size: already promoted (objects appear only whole).
        let local = std::fs::metadata(path).map(|m| m.len()).ok();
        if local.is_some() && storage.size(&dest).await? == local {
            continue;
        }
        storage.put_file(path, &dest, &|_, _| {}).await?;
    }
    let artifact = ArtifactRef {
        uri: dir.join("model.onnx").uri,
        sha256: digest.to_string(),
    };
    let manifest_loc = to.join("promoted.json");
    if let Some(existing) = storage.get_bytes(&manifest_loc).await?
        && serde_json::from_slice::<PromotedManifest>(&existing).is_ok_and(|m| m.digest == digest)
    {
        return Ok(artifact);
    }
    let manifest = PromotedManifest {
        api_version: "kompress.dev/v1alpha1".into(),
        kind: "PromotedModel".into(),
        digest: digest.into(),
        uri: artifact.uri.clone(),
        files: files
            .iter()
            .map(|(n, _, s)| PromotedFile {
                name: n.clone(),
                sha256: s.clone(),
            })
            .collect(),
        source: SourceRef {
            uri: report.model.uri.clone(),
            sha256: report.model.sha256.clone(),
        },
        job: serde_json::to_value(&report.job).unwrap_or_default(),
        recipe: serde_json::to_value(&report.recipe).unwrap_or_default(),
        metrics: serde_json::json!({
            "baseline": report.result.baseline,
            "candidate": report.result.candidate,
            "ratio": report.result.ratio,
            "accuracyDrop": report.result.accuracy_drop,
            "checks": report.result.checks,
        }),
        promoted_at: jiff::Timestamp::now().to_string(),
    };
    storage
        .put_bytes(
            &manifest_loc,
            serde_json::to_vec_pretty(&manifest)
                .expect("manifest serialises")
                .into(),
        )
        .await?;
    Ok(artifact)
}
