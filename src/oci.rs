//! Promotion to an OCI registry: the model's files as a CNCF ModelPack artifact (one raw
//! weight layer per file, a ModelPack config, artifactType
//! `application/vnd.cncf.model.manifest.v1+json`), pushed blobs first, the manifest by digest,
//! the evidence as a referrer (its `subject` is the model manifest), and the tag moved last, so
//! a tag only ever names a complete manifest whose evidence is already there. Registries
//! without the referrers API get the referrers tag schema (`sha256-<hex>` index) instead.
//!
//! The manifest and config are built deterministically from the files (no timestamps), so
//! promoting the same bytes again yields the same manifest digest and uploads no blob twice
//! (each blob is looked up before it is sent).
//!
//! Credentials: the Docker config at `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
//! (`auths.<registry>.auth` or `username`/`password`); in a cluster the controller mounts a
//! `kubernetes.io/dockerconfigjson` Secret there. Without an entry: anonymous.

/// A file to push: (name, local path, sha256 hex), as `publish::File`.
pub type File = (String, PathBuf, String);
pub use crate::uri::OciTarget as Target;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::uri::OCI_SCHEME as SCHEME;
pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const WEIGHT_MEDIA_TYPE: &str = "application/vnd.cncf.model.weight.v1.raw";
pub const FILEPATH_ANNOTATION: &str = "org.cncf.model.filepath";
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The evidence referrer: an in-toto statement in a DSSE envelope.
pub const EVIDENCE_ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
/// Largest Docker config read.
const MAX_DOCKER_CONFIG_BYTES: u64 = 4 << 20;
/// Largest manifest, index or evidence envelope read from a registry (they are a few KiB).
pub const MAX_METADATA_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Uri(#[from] crate::uri::Error),
    #[error("registry {registry}: {what}")]
    Registry {
        registry: String,
        what: String,
        #[source]
        source: Option<oci_client::errors::OciDistributionError>,
    },
    #[error("Docker config `{path}`: {why}")]
    DockerConfig { path: String, why: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Bad references and config files need a person; registry errors may pass (5xx,
    /// connection refused) and are retried by the Job.
    pub fn is_permanent(&self) -> bool {
        use oci_client::errors::OciDistributionError as E;
        match self {
            Error::Registry { source, .. } => match source {
                Some(E::AuthenticationFailure(_) | E::UnauthorizedError { .. }) => true,
                Some(E::ServerError { code, .. }) => (400..500).contains(code) && *code != 429,
                _ => false,
            },
            _ => true,
        }
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
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

/// The registry's credentials from the Docker config (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`); anonymous when there is no config or no entry for it.
pub fn auth_for(registry: &str) -> Result<RegistryAuth, Error> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    let text = match crate::onnx::read_small(&path, MAX_DOCKER_CONFIG_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(source) => return Err(Error::Io { path, source }),
    };
    auth_from_config(&text, registry).map_err(|why| Error::DockerConfig {
        path: path.display().to_string(),
        why,
    })
}

fn auth_from_config(text: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    use base64::Engine;
    let cfg: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let Some(auths) = cfg.get("auths").and_then(Value::as_object) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let Some(entry) = auths.iter().find(|(k, _)| host(k) == registry).map(|e| e.1) else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(RegistryAuth::Basic(u.into(), p.into()));
    }
    if let Some(a) = entry.get("auth").and_then(Value::as_str) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a)
            .map_err(|_| format!("auths.{registry}.auth is not base64"))?;
        let s = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{registry}.auth is not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| format!("auths.{registry}.auth is not user:password"))?;
        return Ok(RegistryAuth::Basic(u.into(), p.into()));
    }
    if entry.get("identitytoken").is_some() {
        return Err(format!(
            "auths.{registry} holds an identity token, which kompress does not use: give username and password (or auth)"
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

/// A client and the credentials for one registry.
pub struct Session {
    client: Client,
    auth: RegistryAuth,
    registry: String,
}

impl Session {
    /// `plain_http`: talk HTTP instead of HTTPS (a registry on a private network or loopback).
    pub async fn new(registry: &str, plain_http: bool) -> Result<Self, Error> {
        let client = Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // One streamed PUT per blob: every registry takes it (chunked PATCH uploads are
            // where registries differ: go-containerregistry's answers without a Location).
            use_monolithic_push: true,
            ..Default::default()
        });
        let auth = auth_for(registry)?;
        client.store_auth_if_needed(registry, &auth).await;
        Ok(Self {
            client,
            auth,
            registry: registry.into(),
        })
    }

    fn err(&self, what: String) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
        let registry = self.registry.clone();
        move |e| Error::Registry {
            registry,
            what,
            source: Some(e),
        }
    }

    async fn exists(&self, r: &Reference, digest: &str) -> Result<bool, Error> {
        self.client
            .blob_exists(r, digest)
            .await
            .map_err(self.err(format!("looking up blob {digest}")))
    }

    /// Sends a blob unless the registry has it. Returns whether it was sent.
    async fn put_blob(
        &self,
        r: &Reference,
        digest: &str,
        data: BlobSource<'_>,
    ) -> Result<bool, Error> {
        if self.exists(r, digest).await? {
            return Ok(false);
        }
        let what = format!("uploading blob {digest}");
        let sent = match data {
            BlobSource::Bytes(b) => {
                // The same streamed PUT as files (go-containerregistry's registry answers the
                // one-request POST upload without a Location).
                let chunk = bytes::Bytes::copy_from_slice(b);
                let stream = futures::stream::once(async move { Ok(chunk) });
                self.client
                    .push_blob_stream(r, stream, digest, Some(b.len() as u64))
                    .await
            }
            BlobSource::File(path, size) => {
                let stream = file_stream(path.to_path_buf());
                self.client
                    .push_blob_stream(r, stream, digest, Some(size))
                    .await
            }
        };
        match sent {
            Ok(_) => {}
            // The upload was committed (the registry checks the digest when it commits) but the
            // answer had no Location (go-containerregistry's registry, some cloud registries):
            // the blob counts as sent once the registry says it holds that digest.
            Err(oci_client::errors::OciDistributionError::RegistryNoLocationError)
                if self.exists(r, digest).await? => {}
            Err(e) => return Err(self.err(what)(e)),
        }
        Ok(true)
    }

    async fn put_manifest(
        &self,
        r: &Reference,
        body: &[u8],
        media_type: &str,
    ) -> Result<(), Error> {
        // A digest reference goes as a tag-shaped one naming the digest: the URL is the same
        // (`/manifests/sha256:...`), and oci-client 0.18 panics on a digest reference when the
        // registry answers without a Location (it strips the tag from the URL).
        let as_tag;
        let r = match (r.digest(), r.tag()) {
            (Some(d), None) => {
                as_tag = Reference::with_tag(
                    r.registry().to_string(),
                    r.repository().to_string(),
                    d.to_string(),
                );
                &as_tag
            }
            _ => r,
        };
        self.client
            .push_manifest_raw(
                r,
                body.to_vec(),
                media_type.parse().expect("a valid header value"),
            )
            .await
            .map_err(self.err(format!("putting manifest {r}")))?;
        Ok(())
    }

    /// The raw manifest a reference names and its digest; None when it does not exist.
    pub async fn manifest(&self, r: &Reference) -> Result<Option<(Vec<u8>, String)>, Error> {
        match self
            .client
            .pull_manifest_raw(r, &self.auth, &[MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE])
            .await
        {
            Ok((b, d)) => Ok(Some((b.to_vec(), d))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err(format!("reading manifest {r}"))(e)),
        }
    }

    /// The referrers of `subject` with `artifact_type` (the API, or the tag schema).
    pub async fn referrers(
        &self,
        subject: &Reference,
        artifact_type: &str,
    ) -> Result<Vec<Value>, Error> {
        let index = self
            .client
            .pull_referrers(subject, Some(artifact_type))
            .await
            .map_err(self.err(format!("listing referrers of {subject}")))?;
        let v = serde_json::to_value(&index).unwrap_or_default();
        Ok(v["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m["artifactType"].as_str() == Some(artifact_type))
            .collect())
    }

    /// A small blob's bytes (an envelope), at most [`MAX_METADATA_BYTES`]: a larger one is
    /// refused without reading past the limit, and the bytes must hash to `digest`.
    pub async fn blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, Error> {
        use futures::StreamExt;
        let fail = |what: String| Error::Registry {
            registry: self.registry.clone(),
            what,
            source: None,
        };
        let mut s = self
            .client
            .pull_blob_stream(r, digest)
            .await
            .map_err(self.err(format!("reading blob {digest}")))?;
        let mut out = Vec::new();
        while let Some(chunk) = s.stream.next().await {
            let chunk = chunk.map_err(|e| fail(format!("reading blob {digest}: {e}")))?;
            if (out.len() + chunk.len()) as u64 > MAX_METADATA_BYTES {
                return Err(fail(format!(
                    "blob {digest} is larger than {MAX_METADATA_BYTES} bytes: not an evidence envelope"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        if sha256_of(&out) != digest {
            return Err(fail(format!("blob {digest} does not hash to its digest")));
        }
        Ok(out)
    }

    /// sha256 of a blob as the registry serves it, streamed (large blobs: the model).
    pub async fn blob_sha256(&self, r: &Reference, digest: &str) -> Result<String, Error> {
        use futures::StreamExt;
        let mut s = self
            .client
            .pull_blob_stream(r, digest)
            .await
            .map_err(self.err(format!("reading blob {digest}")))?;
        let mut h = Sha256::new();
        while let Some(chunk) = s.stream.next().await {
            h.update(&chunk.map_err(|e| Error::Registry {
                registry: self.registry.clone(),
                what: format!("reading blob {digest}: {e}"),
                source: None,
            })?);
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, oci_client::errors::OciErrorCode::ManifestUnknown)),
        _ => false,
    }
}

enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

/// A file as a stream of 4 MiB chunks.
fn file_stream(
    path: PathBuf,
) -> impl futures::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(
        (None::<tokio::fs::File>, path, false),
        |(file, path, done)| async move {
            if done {
                return None;
            }
            let mut f = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(io_err(e)), (None, path, true))),
                },
            };
            let mut buf = vec![0u8; 4 << 20];
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(io_err(e)), (None, path, true))),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(bytes::Bytes::from(buf)), (Some(f), path, false)))
        },
    )
}

fn io_err(e: std::io::Error) -> oci_client::errors::OciDistributionError {
    oci_client::errors::OciDistributionError::IoError(e)
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
    target: &Target,
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
    target: &Target,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_registry_repository_and_tag() {
        let t = Target::parse("oci://127.0.0.1:5000/models/digits:prod").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("127.0.0.1:5000", "models/digits", "prod")
        );
        assert_eq!(
            t.uri_at("sha256:ab"),
            "oci://127.0.0.1:5000/models/digits@sha256:ab"
        );
        let t = Target::parse("oci://ghcr.io/acme/ml/bert:v1.2").unwrap();
        assert_eq!(t.repository, "acme/ml/bert");
        for bad in [
            "s3://b/k",
            "oci://ghcr.io/acme/bert",
            "oci://ghcr.io/acme/bert@sha256:abcd",
            "oci://ghcr.io",
            "oci://ghcr.io/Acme/bert:v1",
            "oci://localhost/acme/bert:bad tag",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn docker_config_entries_become_credentials() {
        let cfg = br#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dXNlcjpwYXNz"}, "other.io": {"username": "u", "password": "p"}}}"#;
        let basic = |a: RegistryAuth| match a {
            RegistryAuth::Basic(u, p) => (u, p),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            basic(auth_from_config(cfg, "reg.example:5000").unwrap()),
            ("user".into(), "pass".into())
        );
        assert_eq!(
            basic(auth_from_config(cfg, "other.io").unwrap()),
            ("u".into(), "p".into())
        );
        assert!(matches!(
            auth_from_config(cfg, "third.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(
            auth_from_config(b"{", "x")
                .unwrap_err()
                .contains("not JSON")
        );
        let bad = br#"{"auths": {"x.io": {"auth": "@@"}}}"#;
        assert!(
            auth_from_config(bad, "x.io")
                .unwrap_err()
                .contains("base64")
        );
    }

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
