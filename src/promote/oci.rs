//! Promotion to an OCI registry: the model's files as a CNCF ModelPack artifact (one raw
//! weight layer per file, a ModelPack config, artifactType
//! `application/vnd.cncf.model.manifest.v1+json`), pushed blobs first, the manifest by digest,
//! the evidence as a referrer (its `subject` is the model manifest), and the tag moved last, so
//! a tag only ever names a complete manifest whose evidence is already there. Registries
//! without the referrers API get the referrers tag schema (`sha256-<hex>` index) instead.
//!
//! The manifest and config are built once, deterministically from the files (no timestamps),
//! before the evidence is sealed (the manifest's digest is one of its subjects), so promoting
//! the same bytes again yields the same manifest digest and uploads no blob twice (each blob
//! is looked up before it is sent). The registry client is [`crate::oci`].
//!
//! Verification (`kompress verify oci://...`): the manifest is a kompress ModelPack artifact;
//! some evidence referrer's signature verifies with the key; its statement names this
//! manifest's digest and exactly its layers; each layer, read back from the registry, hashes
//! to its digest; the verdict is Passed.

use super::evidence::{PREDICATE_TYPE, STATEMENT_TYPE, Sealed, Statement, VerifyingKey};
use super::store::PromotedFile;
use super::verify::{Failure, Verified, files_as, is_sha256_hex, shown, statement_of, verified};
use super::{Artifact, File, Promoted, Target, artifact_digest};
use crate::api::{ArtifactRef, EvidenceRef, JobResult, OciPush};
use crate::oci::{
    ARTIFACT_TYPE, BlobSource, CONFIG_MEDIA_TYPE, DSSE_MEDIA_TYPE, EVIDENCE_ARTIFACT_TYPE, Error,
    FILEPATH_ANNOTATION, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, SCHEME, Session, TITLE_ANNOTATION,
    WEIGHT_MEDIA_TYPE,
};
use crate::storage::{self, Storage};
use crate::ui::Ui;
use crate::uri::OciTarget;
use oci_client::Reference;
use serde_json::{Value, json};

const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", super::sha256_hex(bytes))
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// A repository and tag in an OCI registry.
#[derive(Debug, Clone)]
pub struct Oci {
    pub target: OciTarget,
    /// Talk HTTP instead of HTTPS (`spec.output.registry.plainHttp`).
    pub plain_http: bool,
}

impl Oci {
    /// Whether `uri` names a registry (`oci://`).
    pub fn claims(uri: &str) -> bool {
        OciTarget::is_oci(uri)
    }

    pub fn parse(uri: &str, registry: Option<&crate::api::RegistrySpec>) -> storage::Result<Self> {
        Ok(Self {
            target: OciTarget::parse(uri)?,
            plain_http: registry.and_then(|r| r.plain_http).unwrap_or(false),
        })
    }
}

impl std::fmt::Display for Oci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.target.repo_uri(), self.target.tag)
    }
}

impl Target for Oci {
    type Prepared = Prepared;

    fn prepare(&self, files: &[File]) -> storage::Result<Prepared> {
        Ok(prepare(files, &self.target.repository)?)
    }

    fn subject(&self, p: &Prepared) -> Option<(String, String)> {
        Some((self.target.repo_uri(), p.manifest_digest.clone()))
    }

    async fn promote(
        &self,
        _: &Storage,
        artifact: &Artifact<'_>,
        prepared: Prepared,
        _: &JobResult,
        evidence: Option<&Sealed>,
        ui: &Ui,
    ) -> storage::Result<Promoted> {
        let (target, digest) = (&self.target, artifact.digest);
        ui.stage(&format!(
            "pushing sha256:{} to {}:{}",
            &digest[..12],
            target.repo_uri(),
            target.tag
        ));
        let session = Session::new(&target.registry, self.plain_http).await?;
        let pushed = push(
            &session,
            target,
            &prepared,
            evidence.map(|e| e.bytes.as_slice()),
        )
        .await?;
        Ok(Promoted {
            promoted: ArtifactRef {
                uri: pushed.reference.clone(),
                sha256: digest.to_string(),
            },
            evidence: match (evidence, &pushed.evidence) {
                (Some(e), Some(uri)) => Some(EvidenceRef {
                    uri: uri.clone(),
                    sha256: super::sha256_hex(&e.bytes),
                    keyid: e.keyid.clone(),
                }),
                _ => None,
            },
            oci: Some(OciPush {
                manifest_digest: pushed.manifest_digest.clone(),
                blobs_uploaded: pushed.blobs_uploaded,
                blobs_reused: pushed.blobs_reused,
                referrers: pushed.referrers.map(str::to_string),
            }),
            bytes_written: pushed.bytes_uploaded,
        })
    }
}

/// The artifact for a set of files, built before anything is pushed (its digest goes into the
/// evidence, which is signed before anything is promoted).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// (file, `sha256:<hex>`, size) per layer, in the manifest's order.
    pub layers: Vec<(File, String, u64)>,
}

/// Builds the ModelPack manifest and config for the files (deterministic: same files, same
/// bytes). `name` (the repository: not the job, so that any job promoting the same bytes
/// there makes the same manifest) goes into the config's descriptor.
pub fn prepare(files: &[File], name: &str) -> Result<Prepared, Error> {
    let mut layers = Vec::new();
    for f in files {
        let size = std::fs::metadata(&f.1)
            .map_err(|source| Error::Io {
                path: f.1.clone(),
                source,
            })?
            .len();
        layers.push((f.clone(), format!("sha256:{}", f.2), size));
    }
    let config = serde_json::to_vec(&json!({
        "descriptor": {"name": name},
        "config": {"format": "onnx"},
        "modelfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.1).collect::<Vec<_>>()},
    }))
    .unwrap_or_default();
    let config_digest = sha256_of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        "layers": layers.iter().map(|((n, _, _), d, s)| {
            let mut l = descriptor(WEIGHT_MEDIA_TYPE, d, *s);
            l["annotations"] = json!({FILEPATH_ANNOTATION: n, TITLE_ANNOTATION: n});
            l
        }).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    Ok(Prepared {
        manifest_digest: sha256_of(&manifest),
        manifest,
        config,
        config_digest,
        layers,
    })
}

/// What a push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// `oci://REGISTRY/REPOSITORY@sha256:...` of the model manifest.
    pub reference: String,
    pub manifest_digest: String,
    /// The evidence referrer, `oci://...@sha256:...`.
    pub evidence: Option<String>,
    /// `api` (the registry indexes referrers) or `tagSchema` (kompress keeps the
    /// `sha256-<hex>` index tag).
    pub referrers: Option<&'static str>,
    pub blobs_uploaded: u32,
    pub blobs_reused: u32,
    pub bytes_uploaded: u64,
}

/// Pushes the prepared artifact and its evidence envelope, then moves the tag.
pub async fn push(
    s: &Session,
    target: &OciTarget,
    p: &Prepared,
    envelope: Option<&[u8]>,
) -> Result<Pushed, Error> {
    let repo = target.tagged();
    let mut out = Pushed {
        manifest_digest: p.manifest_digest.clone(),
        reference: target.uri_at(&p.manifest_digest),
        ..Default::default()
    };
    let mut count = |sent: bool, size: u64| {
        if sent {
            out.blobs_uploaded += 1;
            out.bytes_uploaded += size;
        } else {
            out.blobs_reused += 1;
        }
    };
    // 1. Blobs: the layers, then the config.
    for ((_, path, _), digest, size) in &p.layers {
        let sent = s
            .put_blob(&repo, digest, BlobSource::File(path, *size))
            .await?;
        count(sent, *size);
    }
    let sent = s
        .put_blob(&repo, &p.config_digest, BlobSource::Bytes(&p.config))
        .await?;
    count(sent, p.config.len() as u64);
    // 2. The manifest, by digest: complete, but no tag names it yet.
    let by_digest = target.at(&p.manifest_digest);
    s.put_manifest(&by_digest, &p.manifest, MANIFEST_MEDIA_TYPE)
        .await?;
    // 3. The evidence as a referrer of that manifest.
    if let Some(env) = envelope {
        let env_digest = sha256_of(env);
        let sent = s
            .put_blob(&repo, &env_digest, BlobSource::Bytes(env))
            .await?;
        count(sent, env.len() as u64);
        let sent = s
            .put_blob(&repo, &sha256_of(EMPTY), BlobSource::Bytes(EMPTY))
            .await?;
        count(sent, EMPTY.len() as u64);
        let referrer = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": EVIDENCE_ARTIFACT_TYPE,
            "config": descriptor(EMPTY_MEDIA_TYPE, &sha256_of(EMPTY), EMPTY.len() as u64),
            "layers": [descriptor(DSSE_MEDIA_TYPE, &env_digest, env.len() as u64)],
            "subject": descriptor(MANIFEST_MEDIA_TYPE, &p.manifest_digest, p.manifest.len() as u64),
        }))
        .unwrap_or_default();
        let ref_digest = sha256_of(&referrer);
        s.put_manifest(&target.at(&ref_digest), &referrer, MANIFEST_MEDIA_TYPE)
            .await?;
        let listed = s
            .referrers(&by_digest, EVIDENCE_ARTIFACT_TYPE)
            .await?
            .iter()
            .any(|m| m["digest"].as_str() == Some(&ref_digest));
        out.referrers = Some(if listed {
            "api"
        } else {
            add_to_tag_schema(s, target, &p.manifest_digest, &ref_digest, referrer.len()).await?;
            "tagSchema"
        });
        out.evidence = Some(target.uri_at(&ref_digest));
    }
    // 4. The tag, last.
    s.put_manifest(&repo, &p.manifest, MANIFEST_MEDIA_TYPE)
        .await?;
    Ok(out)
}

/// The referrers tag schema: the index at tag `sha256-<hex>` of the subject lists its
/// referrers; read it (or start one), add this referrer, write it back.
async fn add_to_tag_schema(
    s: &Session,
    target: &OciTarget,
    subject: &str,
    referrer: &str,
    size: usize,
) -> Result<(), Error> {
    let tag = subject.replace(':', "-");
    let at = Reference::with_tag(
        target.registry.clone(),
        target.repository.clone(),
        tag.clone(),
    );
    let mut index = match s.manifest(&at).await? {
        Some((bytes, _)) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        None => Value::Null,
    };
    if !index["manifests"].is_array() {
        index = json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []});
    }
    let list = index["manifests"].as_array_mut().expect("an array");
    if !list.iter().any(|m| m["digest"].as_str() == Some(referrer)) {
        let mut d = descriptor(MANIFEST_MEDIA_TYPE, referrer, size as u64);
        d["artifactType"] = json!(EVIDENCE_ARTIFACT_TYPE);
        list.push(d);
    }
    let body = serde_json::to_vec(&index).unwrap_or_default();
    s.put_manifest(&at, &body, INDEX_MEDIA_TYPE).await
}

/// Verifies a model pushed to an OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or `@sha256:`):
/// the manifest is a kompress ModelPack artifact; some evidence referrer's signature verifies
/// with the key; its statement names this manifest's digest and exactly its layers; each layer,
/// read back from the registry, hashes to its digest; the verdict is Passed.
pub async fn verify(
    reference: &str,
    plain_http: bool,
    key: Option<&VerifyingKey>,
) -> Result<Verified, Failure> {
    let r = OciTarget::reference(reference).map_err(|e| Failure::Reference {
        reference: reference.into(),
        what: e.to_string(),
    })?;
    let s = Session::new(r.registry(), plain_http).await?;
    let (bytes, digest) = s.manifest(&r).await?.ok_or_else(|| Failure::Reference {
        reference: reference.into(),
        what:
            "the registry has no manifest for it (HTTP 404): check the repository and tag or digest"
                .into(),
    })?;
    let (files, sizes) = model_layers(&bytes, reference)?;
    let by_digest =
        Reference::with_digest(r.registry().into(), r.repository().into(), digest.clone());
    let v = Model {
        session: &s,
        reference,
        repo_uri: format!("{}{}/{}", SCHEME, r.registry(), r.repository()),
        digest,
        files,
    };
    let mut why = String::from("none found");
    for referrer in s.referrers(&by_digest, EVIDENCE_ARTIFACT_TYPE).await? {
        let Some(rd) = referrer["digest"].as_str() else {
            continue;
        };
        match v.referrer(&r, rd, key).await {
            Ok((statement, ev_uri)) => {
                v.layers_hold(&by_digest, &sizes).await?;
                return verified(
                    format!("{}@{}", v.repo_uri, v.digest),
                    artifact_digest(&files_as(&v.files)),
                    ev_uri,
                    key,
                    v.files,
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

fn not_model(reference: &str, what: &str) -> Failure {
    Failure::NotModel {
        reference: reference.into(),
        what: what.into(),
    }
}

/// The files a kompress ModelPack manifest names (path annotation and sha256 of each layer),
/// and the layers' sizes.
fn model_layers(bytes: &[u8], reference: &str) -> Result<(Vec<PromotedFile>, Vec<u64>), Failure> {
    let not_model = |what: &str| not_model(reference, what);
    let m: Value = serde_json::from_slice(bytes).map_err(|e| not_model(&e.to_string()))?;
    if m["artifactType"].as_str() != Some(ARTIFACT_TYPE) {
        return Err(not_model(&format!(
            "artifactType is {}, not {}",
            m["artifactType"], ARTIFACT_TYPE
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
    Ok((files, sizes))
}

/// The model manifest being verified.
struct Model<'a> {
    session: &'a Session,
    reference: &'a str,
    /// `oci://REGISTRY/REPOSITORY`.
    repo_uri: String,
    /// The manifest's `sha256:<hex>`.
    digest: String,
    files: Vec<PromotedFile>,
}

impl Model<'_> {
    /// The statement of the evidence referrer `rd`, when it verifies and names this manifest
    /// and exactly its layers; with the referrer's URI.
    async fn referrer(
        &self,
        r: &Reference,
        rd: &str,
        key: Option<&VerifyingKey>,
    ) -> Result<(Statement, String), Failure> {
        let (s, repo_uri, digest) = (self.session, &self.repo_uri, &self.digest);
        let not_model = |what: &str| not_model(self.reference, what);
        let at = Reference::with_digest(r.registry().into(), r.repository().into(), rd.into());
        let ev_uri = format!("{repo_uri}@{rd}");
        let (rb, _) = s
            .manifest(&at)
            .await?
            .ok_or_else(|| not_model("a listed referrer is missing"))?;
        let rm: Value = serde_json::from_slice(&rb).map_err(|e| not_model(&e.to_string()))?;
        let env_digest = rm["layers"][0]["digest"]
            .as_str()
            .ok_or_else(|| not_model("an evidence referrer without a layer"))?
            .to_string();
        let env_bytes = s.blob(&at, &env_digest).await?;
        let statement = statement_of(&env_bytes, &ev_uri, key)?;
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
        let manifest_hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let Some(at_repo) = subjects.iter().position(|x| {
            &x.name == repo_uri && x.digest.get("sha256").map(String::as_str) == Some(manifest_hex)
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
        if signed != self.files {
            let names = |fs: &[PromotedFile]| {
                fs.iter()
                    .map(|f| f.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Failure::Subjects {
                subjects: names(&signed),
                files: names(&self.files),
            });
        }
        Ok((statement, ev_uri))
    }

    /// The layers as the registry serves them now hash to their digests.
    async fn layers_hold(&self, by_digest: &Reference, sizes: &[u64]) -> Result<(), Failure> {
        for (f, size) in self.files.iter().zip(sizes) {
            let want = format!("sha256:{}", f.sha256);
            let actual = self.session.blob_sha256(by_digest, &want, *size).await?;
            if actual != want {
                return Err(Failure::FileChanged {
                    uri: format!("{}@{want} ({})", self.repo_uri, f.name),
                    expected: want,
                    actual,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_same_files_make_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.onnx");
        std::fs::write(&p, b"onnx bytes").unwrap();
        let sha = hex::encode(Sha256::digest(b"onnx bytes"));
        let files = vec![("model.onnx".to_string(), p, sha.clone())];
        let a = prepare(&files, "digits").unwrap();
        let b = prepare(&files, "digits").unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.manifest_digest, sha256_of(&a.manifest));
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["artifactType"], ARTIFACT_TYPE);
        assert_eq!(m["layers"][0]["digest"], format!("sha256:{sha}"));
        assert_eq!(m["layers"][0]["size"], 10);
        assert_eq!(
            m["layers"][0]["annotations"][FILEPATH_ANNOTATION],
            "model.onnx"
        );
        assert_eq!(m["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    }
}
