//! The OCI registry client: blobs, manifests, referrers and tags over the distribution API
//! ([`Session`], with [`http`]'s timeouts, caps and token flow), and a model read back from a
//! registry ([`pull`]). What kompress pushes (a CNCF ModelPack artifact, its evidence as a
//! referrer) is built in `crate::promote::oci`; the media types both sides use are here.
//!
//! Credentials: the Docker config at `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
//! (`auths.<registry>.auth` or `username`/`password`); in a cluster the controller mounts a
//! `kubernetes.io/dockerconfigjson` Secret there. Without an entry: anonymous.

// Sizes, offsets, counts and dimensions here come from outside (files, servers): numeric
// casts that could truncate, wrap or lose a sign are checked conversions, or allowed where the
// value is bounded by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub use crate::uri::OciTarget as Target;
mod auth;
mod http;
pub mod pull;
mod tags;

pub use auth::auth_for;
pub use tags::is_tag;

use self::http::Access;
pub use self::http::TIMEOUT_ENV;
use oci_client::Reference;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
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
/// Largest manifest, index or evidence envelope read from a registry (they are a few KiB).
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Most tags a listing reads, pages it follows, and tags asked for per page.
pub const MAX_TAGS: usize = 10_000;
pub const MAX_TAG_PAGES: usize = 100;
pub(crate) const TAGS_PER_PAGE: usize = 1000;

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

    fn url(&self, r: &Reference, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.http.base, r.repository())
    }

    /// `Http::send` of a push request to the repository of `r`.
    async fn send_push(
        &self,
        method: Method,
        url: &str,
        r: &Reference,
        headers: &[(header::HeaderName, String)],
        body: Option<http::MakeBody<'_>>,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        self.http
            .send(
                method,
                url,
                r.repository(),
                Access::Push,
                headers,
                body,
                what,
            )
            .await
    }

    /// `Http::send` of a GET (a pull) from `repository`.
    async fn send_get(
        &self,
        url: &str,
        repository: &str,
        accept: &[(header::HeaderName, String)],
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        self.http
            .send(
                Method::GET,
                url,
                repository,
                Access::Pull,
                accept,
                None,
                what,
            )
            .await
    }

    /// A PUT of `body` to `url` in `r`'s repository within `deadline`, answered 201, 200 or 204.
    async fn put(
        &self,
        deadline: std::time::Duration,
        url: &str,
        r: &Reference,
        headers: &[(header::HeaderName, String)],
        body: http::MakeBody<'_>,
        what: &str,
    ) -> Result<(), Error> {
        self.http
            .within(deadline, what, async {
                let resp = self
                    .send_push(Method::PUT, url, r, headers, Some(body), what)
                    .await?;
                self.http
                    .expect(
                        resp,
                        &[StatusCode::CREATED, StatusCode::OK, StatusCode::NO_CONTENT],
                        what,
                    )
                    .await
                    .map(drop)
            })
            .await
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
                    .send_push(Method::HEAD, &url, r, &[], None, &what)
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
    pub async fn put_blob(
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
                    .send_push(Method::POST, &started, r, &[], None, &what)
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
        let deadline = self.http.upload_deadline(size);
        self.put(deadline, put.as_str(), r, &headers, &*body, &what)
            .await?;
        Ok(true)
    }

    pub async fn put_manifest(
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
        self.put(self.http.deadline(), &url, r, &headers, make, &what)
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
                let resp = self.send_get(url, repository, accept, what).await?;
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
                let resp = self.send_get(&url, r.repository(), &[], what).await?;
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
        use tokio::io::AsyncWriteExt;
        let io = |source| Error::Io {
            path: dest.to_path_buf(),
            source,
        };
        let result = async {
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
            Ok::<(), Error>(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

/// What a blob upload sends.
pub enum BlobSource<'a> {
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
}
