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
mod http;
pub mod pull;

use self::http::Access;
pub use self::http::TIMEOUT_ENV;
use oci_client::Reference;
use reqwest::{Method, StatusCode, header};
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
/// Most tags a listing reads, pages it follows, and tags asked for per page.
pub const MAX_TAGS: usize = 10_000;
pub const MAX_TAG_PAGES: usize = 100;
const TAGS_PER_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Uri(#[from] crate::uri::Error),
    #[error("registry {registry}: {what}")]
    Registry {
        registry: String,
        what: String,
        /// Whether a retry cannot help (401/403/404/4xx, a cap exceeded, a bad answer).
        permanent: bool,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("Docker config `{path}`: {why}")]
    DockerConfig { path: String, why: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What a source artifact holds cannot be used (not a ModelPack, no `.onnx` layer, ...).
    #[error("{field} `{uri}`: {what}")]
    Artifact {
        field: &'static str,
        uri: String,
        what: String,
    },
    /// A registry failure while reading the source a spec field names.
    #[error("{field} `{uri}`: cannot read it from the registry")]
    Source {
        field: &'static str,
        uri: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Bad references, config files, credentials and answers need a person; 5xx, 408, 429,
    /// timeouts and refused connections may pass and are retried by the Job.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Registry { permanent, .. } => *permanent,
            Error::Source { source, .. } => source.is_permanent(),
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
/// `~/.docker/config.json`) as (user, password); None (anonymous) when there is no config or
/// no entry for it.
pub fn auth_for(registry: &str) -> Result<Option<(String, String)>, Error> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(None),
        },
    };
    let text = match crate::onnx::read_small(&path, MAX_DOCKER_CONFIG_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    auth_from_config(&text, registry).map_err(|why| Error::DockerConfig {
        path: path.display().to_string(),
        why,
    })
}

fn auth_from_config(text: &[u8], registry: &str) -> Result<Option<(String, String)>, String> {
    use base64::Engine;
    let cfg: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let Some(auths) = cfg.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let Some(entry) = auths.iter().find(|(k, _)| host(k) == registry).map(|e| e.1) else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some((u.into(), p.into())));
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
        return Ok(Some((u.into(), p.into())));
    }
    if entry.get("identitytoken").is_some() {
        return Err(format!(
            "auths.{registry} holds an identity token, which kompress does not use: give username and password (or auth)"
        ));
    }
    Ok(None)
}

/// The registry's HTTP for one registry ([`http`]: timeouts, caps, the token flow).
pub struct Session {
    http: http::Http,
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl Session {
    /// `plain_http`: talk HTTP instead of HTTPS (a registry on a private network or loopback).
    pub async fn new(registry: &str, plain_http: bool) -> Result<Self, Error> {
        Self::for_settings(registry, plain_http, "spec.output.registry").await
    }

    /// A session whose messages name `settings` (the spec field that configures the
    /// registry, e.g. `spec.model.registry`) as what to change.
    pub async fn for_settings(
        registry: &str,
        plain_http: bool,
        settings: &'static str,
    ) -> Result<Self, Error> {
        let credentials = auth_for(registry)?;
        let mut http = http::Http::new(registry, plain_http, credentials)?;
        http.settings = settings;
        Ok(Self { http })
    }

    /// Every tag of `repository` (`GET /v2/<repository>/tags/list`), following the
    /// registry's `Link: <...>; rel="next"` pages on the same origin. Bounded: each page at
    /// most [`MAX_METADATA_BYTES`], at most [`MAX_TAG_PAGES`] pages and [`MAX_TAGS`] tags (more
    /// is a permanent error: the repository wants a narrower source). Names that are not tags
    /// by the reference grammar are skipped (they never reach a URL).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, Error> {
        let what = format!("listing the tags of {repository}");
        let mut url = format!(
            "{}/v2/{repository}/tags/list?n={TAGS_PER_PAGE}",
            self.http.base
        );
        let mut out = Vec::new();
        for page in 0.. {
            if page == MAX_TAG_PAGES {
                return Err(self.http.fail(
                    &format!(
                        "{what}: more than {MAX_TAG_PAGES} pages of tags; kompress reads at most \
                         {MAX_TAGS} tags: use a repository with fewer tags"
                    ),
                    true,
                ));
            }
            let (body, link) = self
                .http
                .within(self.http.deadline(), &what, async {
                    let resp = self
                        .http
                        .send(
                            Method::GET,
                            &url,
                            repository,
                            Access::Pull,
                            &[],
                            None,
                            &what,
                        )
                        .await?;
                    let resp = self.http.expect(resp, &[StatusCode::OK], &what).await?;
                    let link = resp
                        .headers()
                        .get(header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = self
                        .http
                        .read_capped(resp, MAX_METADATA_BYTES, &what)
                        .await?;
                    Ok((body, link))
                })
                .await?;
            let tags =
                parse_tags(&body).map_err(|why| self.http.fail(&format!("{what}: {why}"), true))?;
            if out.len() + tags.len() > MAX_TAGS {
                return Err(self.http.fail(
                    &format!(
                        "{what}: more than {MAX_TAGS} tags, the most kompress reads: use a \
                         repository with fewer tags"
                    ),
                    true,
                ));
            }
            out.extend(tags);
            match link.as_deref().and_then(next_link) {
                Some(next) => {
                    url = same_origin(&url, next).ok_or_else(|| {
                        self.http.fail(
                            &format!(
                                "{what}: the registry's next page `{}` is not on the registry \
                                 itself; credentials are never sent elsewhere",
                                next.chars().take(200).collect::<String>().escape_debug()
                            ),
                            true,
                        )
                    })?
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn url(&self, r: &Reference, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.http.base, r.repository())
    }

    /// A digest from a registry or a manifest must be `sha256:<64 hex>` before it becomes
    /// part of a URL.
    fn check_digest(&self, digest: &str) -> Result<(), Error> {
        if valid_digest(digest) {
            Ok(())
        } else {
            Err(self.http.fail(
                &format!(
                    "`{}` is not a sha256 digest (sha256:<64 hex>)",
                    digest.chars().take(80).collect::<String>().escape_debug()
                ),
                true,
            ))
        }
    }

    async fn exists(&self, r: &Reference, digest: &str) -> Result<bool, Error> {
        self.check_digest(digest)?;
        let what = format!("looking up blob {digest}");
        let url = self.url(r, &format!("blobs/{digest}"));
        self.http
            .within(self.http.deadline(), &what, async {
                let resp = self
                    .http
                    .send(
                        Method::HEAD,
                        &url,
                        r.repository(),
                        Access::Push,
                        &[],
                        None,
                        &what,
                    )
                    .await?;
                match resp.status() {
                    StatusCode::OK => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    s => Err(self.http.status_error(&what, s, &[])),
                }
            })
            .await
    }

    /// Sends a blob unless the registry has it (POST an upload, PUT the bytes with their
    /// digest). Returns whether it was sent.
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
        let started = self.url(r, "blobs/uploads/");
        let location = self
            .http
            .within(self.http.deadline(), &what, async {
                let resp = self
                    .http
                    .send(
                        Method::POST,
                        &started,
                        r.repository(),
                        Access::Push,
                        &[],
                        None,
                        &what,
                    )
                    .await?;
                let resp = self
                    .http
                    .expect(resp, &[StatusCode::ACCEPTED], &what)
                    .await?;
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.http.fail(&format!("{what}: no upload Location"), true))?;
                url::Url::parse(&started)
                    .and_then(|base| base.join(loc))
                    .map_err(|_| {
                        self.http
                            .fail(&format!("{what}: a bad upload Location"), true)
                    })
            })
            .await?;
        let mut put = location;
        put.query_pairs_mut().append_pair("digest", digest);
        type Make = Box<dyn Fn() -> reqwest::Body + Send + Sync>;
        let (size, body): (u64, Make) = match data {
            BlobSource::Bytes(b) => {
                let b = bytes::Bytes::copy_from_slice(b);
                let len = b.len() as u64;
                let make: Make = Box::new(move || reqwest::Body::from(b.clone()));
                (len, make)
            }
            BlobSource::File(path, size) => {
                let path = path.to_path_buf();
                let make: Make =
                    Box::new(move || reqwest::Body::wrap_stream(file_stream(path.clone())));
                (size, make)
            }
        };
        let headers = [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ];
        self.http
            .within(self.http.upload_deadline(size), &what, async {
                let resp = self
                    .http
                    .send(
                        Method::PUT,
                        put.as_str(),
                        r.repository(),
                        Access::Push,
                        &headers,
                        Some(&*body),
                        &what,
                    )
                    .await?;
                self.http
                    .expect(
                        resp,
                        &[StatusCode::CREATED, StatusCode::OK, StatusCode::NO_CONTENT],
                        &what,
                    )
                    .await
                    .map(drop)
            })
            .await?;
        Ok(true)
    }

    async fn put_manifest(
        &self,
        r: &Reference,
        body: &[u8],
        media_type: &str,
    ) -> Result<(), Error> {
        let at = r.digest().or(r.tag()).unwrap_or("latest");
        let what = format!("putting manifest {r}");
        let url = self.url(r, &format!("manifests/{at}"));
        let body = bytes::Bytes::copy_from_slice(body);
        let make = move || reqwest::Body::from(body.clone());
        let make: http::MakeBody<'_> = &make;
        let headers = [(header::CONTENT_TYPE, media_type.to_string())];
        self.http
            .within(self.http.deadline(), &what, async {
                let resp = self
                    .http
                    .send(
                        Method::PUT,
                        &url,
                        r.repository(),
                        Access::Push,
                        &headers,
                        Some(make),
                        &what,
                    )
                    .await?;
                self.http
                    .expect(
                        resp,
                        &[StatusCode::CREATED, StatusCode::OK, StatusCode::NO_CONTENT],
                        &what,
                    )
                    .await
                    .map(drop)
            })
            .await
    }

    /// A GET of a manifest, index or referrers list within the call deadline: None on 404,
    /// else the 200 answer's body, at most [`MAX_METADATA_BYTES`].
    async fn get_metadata(
        &self,
        url: &str,
        repository: &str,
        accept: &[(header::HeaderName, String)],
        what: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.http
            .within(self.http.deadline(), what, async {
                let resp = self
                    .http
                    .send(
                        Method::GET,
                        url,
                        repository,
                        Access::Pull,
                        accept,
                        None,
                        what,
                    )
                    .await?;
                if resp.status() == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let resp = self.http.expect(resp, &[StatusCode::OK], what).await?;
                self.http
                    .read_capped(resp, MAX_METADATA_BYTES, what)
                    .await
                    .map(Some)
            })
            .await
    }

    /// The raw manifest a reference names and its digest; None when it does not exist. At
    /// most [`MAX_METADATA_BYTES`]; a digest reference must be answered with those bytes.
    pub async fn manifest(&self, r: &Reference) -> Result<Option<(Vec<u8>, String)>, Error> {
        if let Some(d) = r.digest() {
            self.check_digest(d)?;
        }
        let at = r.digest().or(r.tag()).unwrap_or("latest");
        let what = format!("reading manifest {r}");
        let url = self.url(r, &format!("manifests/{at}"));
        let accept = [(
            header::ACCEPT,
            format!("{MANIFEST_MEDIA_TYPE}, {INDEX_MEDIA_TYPE}"),
        )];
        let body = self
            .get_metadata(&url, r.repository(), &accept, &what)
            .await?;
        let Some(body) = body else {
            return Ok(None);
        };
        let digest = sha256_of(&body);
        if r.digest().is_some_and(|d| d != digest) {
            return Err(self.http.fail(
                &format!("{what}: the registry answered with bytes of digest {digest}"),
                true,
            ));
        }
        Ok(Some((body, digest)))
    }

    /// The referrers of `subject` (a digest reference) with `artifact_type`: the referrers
    /// API, or the referrers tag schema where the registry has no API (it answers 404).
    pub async fn referrers(
        &self,
        subject: &Reference,
        artifact_type: &str,
    ) -> Result<Vec<Value>, Error> {
        let digest = subject.digest().unwrap_or_default();
        self.check_digest(digest)?;
        let what = format!("listing referrers of {subject}");
        let kind: String = url::form_urlencoded::byte_serialize(artifact_type.as_bytes()).collect();
        let url = self.url(subject, &format!("referrers/{digest}?artifactType={kind}"));
        let accept = [(header::ACCEPT, INDEX_MEDIA_TYPE.to_string())];
        let body = self
            .get_metadata(&url, subject.repository(), &accept, &what)
            .await?;
        let body = match body {
            Some(b) => b,
            None => {
                let tag = Reference::with_tag(
                    subject.registry().into(),
                    subject.repository().into(),
                    digest.replace(':', "-"),
                );
                match self.manifest(&tag).await? {
                    Some((b, _)) => b,
                    None => return Ok(Vec::new()),
                }
            }
        };
        let index: Value = serde_json::from_slice(&body).map_err(|_| {
            self.http
                .fail(&format!("{what}: the answer is not a JSON index"), true)
        })?;
        Ok(index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m["artifactType"].as_str() == Some(artifact_type))
            .collect())
    }

    /// A GET of a blob, its answer checked.
    async fn get_blob(
        &self,
        r: &Reference,
        digest: &str,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        self.check_digest(digest)?;
        let url = self.url(r, &format!("blobs/{digest}"));
        self.http
            .within(self.http.deadline(), what, async {
                let resp = self
                    .http
                    .send(
                        Method::GET,
                        &url,
                        r.repository(),
                        Access::Pull,
                        &[],
                        None,
                        what,
                    )
                    .await?;
                self.http.expect(resp, &[StatusCode::OK], what).await
            })
            .await
    }

    /// A small blob's bytes (an envelope), at most [`MAX_METADATA_BYTES`]: a larger one is
    /// refused without reading past the limit, and the bytes must hash to `digest`.
    pub async fn blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, Error> {
        let what = format!("reading blob {digest}");
        let resp = self.get_blob(r, digest, &what).await?;
        let out = self
            .http
            .within(
                self.http.deadline(),
                &what,
                self.http.read_capped(resp, MAX_METADATA_BYTES, &what),
            )
            .await?;
        if sha256_of(&out) != digest {
            return Err(self
                .http
                .fail(&format!("blob {digest} does not hash to its digest"), true));
        }
        Ok(out)
    }

    /// sha256 of a blob as the registry serves it, streamed (large blobs: the model), never
    /// past its declared `size`: more bytes, or fewer, fail.
    pub async fn blob_sha256(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<String, Error> {
        self.stream_blob(r, digest, size, None, &|_| {}).await
    }

    /// Reads blob `digest` of declared `size` as a stream, never past that size, each chunk
    /// written to `file` when one is given; returns `sha256:<hex>` of the bytes read.
    async fn stream_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        mut file: Option<(&mut tokio::fs::File, &Path)>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<String, Error> {
        use tokio::io::AsyncWriteExt;
        let what = format!("reading blob {digest}");
        let mut resp = self.get_blob(r, digest, &what).await?;
        let wrong_size = |n: u64| {
            self.http.fail(
                &format!(
                    "{what}: the registry sent {n} bytes or more where the manifest declares {size}"
                ),
                true,
            )
        };
        if let Some(n) = resp.content_length().filter(|n| *n != size) {
            return Err(wrong_size(n));
        }
        let mut h = Sha256::new();
        let mut n = 0u64;
        // No overall deadline (a model may be large): the read timeout bounds each wait.
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.http.net_error(&what, e))?
        {
            n += chunk.len() as u64;
            if n > size {
                return Err(wrong_size(n));
            }
            h.update(&chunk);
            if let Some((f, path)) = file.as_mut() {
                f.write_all(&chunk).await.map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            progress(n);
        }
        if n != size {
            return Err(wrong_size(n));
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// A blob streamed to `dest` (never held in memory), as [`Session::blob_sha256`]: never
    /// past its declared `size`, and its bytes must hash to `digest`. On any failure `dest`
    /// is removed. `progress` gets the bytes written so far.
    pub async fn blob_to_file(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Error> {
        let result = self
            .blob_to_file_inner(r, digest, size, dest, progress)
            .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn blob_to_file_inner(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt;
        let io = |source| Error::Io {
            path: dest.to_path_buf(),
            source,
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let got = self
            .stream_blob(r, digest, size, Some((&mut file, dest)), progress)
            .await?;
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        if got != digest {
            return Err(self.http.fail(
                &format!("blob {digest} does not hash to its digest (its bytes are {got})"),
                true,
            ));
        }
        Ok(())
    }
}

/// The `tags` of a tag list answer (`{"name": ..., "tags": [...]}`; `null` tags: none),
/// names that are not tags by the reference grammar left out.
fn parse_tags(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "the tag list is not JSON".to_string())?;
    match &v["tags"] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| is_tag(t))
            .map(str::to_string)
            .collect()),
        _ => Err("the tag list has no `tags` array".into()),
    }
}

/// A tag by the distribution reference grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The target of the `rel="next"` link of a `Link` header, if any.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let part = part.trim();
        let rest = part.strip_prefix('<')?;
        let (target, params) = rest.split_once('>')?;
        params
            .split(';')
            .map(str::trim)
            .any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("next")
                })
            })
            .then_some(target.trim())
    })
}

/// `next` resolved against `current`, when it stays on the same scheme, host and port.
fn same_origin(current: &str, next: &str) -> Option<String> {
    let base = url::Url::parse(current).ok()?;
    let to = base.join(next).ok()?;
    (to.scheme() == base.scheme()
        && to.host_str() == base.host_str()
        && to.port_or_known_default() == base.port_or_known_default())
    .then(|| to.to_string())
}

enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

/// A file as a stream of 4 MiB chunks.
fn file_stream(
    path: PathBuf,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
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
                    Err(e) => return Some((Err(e), (None, path, true))),
                },
            };
            let mut buf = vec![0u8; 4 << 20];
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(e), (None, path, true))),
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
        let basic = |a: Option<(String, String)>| a.expect("credentials");
        assert_eq!(
            basic(auth_from_config(cfg, "reg.example:5000").unwrap()),
            ("user".into(), "pass".into())
        );
        assert_eq!(
            basic(auth_from_config(cfg, "other.io").unwrap()),
            ("u".into(), "p".into())
        );
        assert_eq!(auth_from_config(cfg, "third.io").unwrap(), None);
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
    fn tag_lists_parse_and_skip_what_is_not_a_tag() {
        let body = br#"{"name": "a/b", "tags": ["v1", "latest", "bad tag", "-x", "v2.0_rc-1", 7]}"#;
        assert_eq!(parse_tags(body).unwrap(), ["v1", "latest", "v2.0_rc-1"]);
        assert!(
            parse_tags(br#"{"name": "a/b", "tags": null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_tags(b"<html>").unwrap_err().contains("not JSON"));
        assert!(
            parse_tags(br#"{"tags": "v1"}"#)
                .unwrap_err()
                .contains("`tags` array")
        );
        assert!(is_tag(&"a".repeat(128)) && !is_tag(&"a".repeat(129)) && !is_tag(""));
    }

    #[test]
    fn the_next_page_is_the_link_with_rel_next_on_the_same_origin() {
        assert_eq!(
            next_link(r#"</v2/a/b/tags/list?last=v9&n=2>; rel="next""#),
            Some("/v2/a/b/tags/list?last=v9&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r/x?p=1>; rel="prev", <https://r/x?p=3>; rel=next"#),
            Some("https://r/x?p=3")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
        let cur = "http://127.0.0.1:5000/v2/a/tags/list?n=2";
        assert_eq!(
            same_origin(cur, "/v2/a/tags/list?last=v2&n=2").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=v2&n=2")
        );
        assert_eq!(
            same_origin(cur, "http://evil.example:5000/v2/a/tags/list"),
            None
        );
        assert_eq!(
            same_origin(cur, "https://127.0.0.1:5000/v2/a/tags/list"),
            None
        );
        assert_eq!(
            same_origin(cur, "http://127.0.0.1:5001/v2/a/tags/list"),
            None
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
