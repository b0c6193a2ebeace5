//! Object storage behind one small interface: URIs (s3://, gs://, az://, https://, file://,
//! plain paths) to `object_store` stores, streamed fetch with sha256, and uploads (multipart
//! for large files). Credentials come from the standard environment variables of each cloud.

use crate::api::StorageSpec;
use bytes::Bytes;
use futures::StreamExt;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, path::Path as ObjPath,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Local,
    S3,
    Gcs,
    Azure,
    Http,
}

/// A parsed storage URI: which store, and the object key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Scheme,
    /// The URI as the user wrote it, normalised (no trailing slash).
    pub uri: String,
    /// What identifies the store: `s3://bucket`, `https://host`, ... (empty for local).
    store_url: String,
    /// Object key inside the store (for local: the absolute path without its leading `/`).
    key: String,
}

/// Storage failures. `is_permanent` says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported URI scheme `{scheme}` in `{uri}`: use s3://, gs://, az://, https://, file:// or a local path"
    )]
    UnsupportedScheme { uri: String, scheme: String },
    #[error("malformed URI `{uri}`: {what}")]
    Malformed { uri: String, what: String },
    #[error("`{uri}` cannot be written: https:// locations are read-only")]
    ReadOnly { uri: String },
    #[error("cannot configure storage for `{uri}` ({credentials})")]
    Config {
        uri: String,
        credentials: String,
        #[source]
        source: object_store::Error,
    },
    #[error("`{uri}` does not exist ({where_})")]
    NotFound {
        uri: String,
        /// What was looked up, and with which credentials (names only).
        where_: String,
        #[source]
        source: Option<object_store::Error>,
    },
    #[error(
        "access to `{uri}` was denied: check the credentials ({credentials}) and their permissions"
    )]
    Denied {
        uri: String,
        credentials: String,
        #[source]
        source: object_store::Error,
    },
    #[error("storage request for `{uri}` failed ({op}); this may be temporary, retry later")]
    Transient {
        uri: String,
        op: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "sha256 of `{uri}` is {actual}, but the spec expects {expected}: the file changed or the digest is wrong"
    )]
    Checksum {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("local file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying the same request can succeed (network trouble) or not (bad URI, missing
    /// object, wrong credentials, digest mismatch).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Transient { .. } | Self::Io { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Location {
    /// Parses a URI without touching the network or the file system.
    pub fn parse(uri: &str) -> Result<Self> {
        let uri = uri.trim();
        let malformed = |what: &str| Error::Malformed {
            uri: uri.into(),
            what: what.into(),
        };
        if uri.is_empty() {
            return Err(malformed("empty"));
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Self::local(uri, uri);
        };
        let scheme_lc = scheme.to_ascii_lowercase();
        let (scheme, store_url, key) = match scheme_lc.as_str() {
            "file" => return Self::local(uri, rest),
            "s3" | "s3a" | "gs" | "az" | "azure" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(malformed("no bucket/container after the scheme"));
                }
                let s = match scheme_lc.as_str() {
                    "s3" | "s3a" => Scheme::S3,
                    "gs" => Scheme::Gcs,
                    _ => Scheme::Azure,
                };
                (s, format!("{scheme_lc}://{bucket}"), key.to_string())
            }
            "abfs" | "abfss" => {
                // abfss://container@account.dfs.core.windows.net/path
                let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
                if !authority.contains('@') {
                    return Err(malformed(
                        "expected abfss://<container>@<account>.dfs.core.windows.net/<path>",
                    ));
                }
                (
                    Scheme::Azure,
                    format!("{scheme_lc}://{authority}"),
                    key.to_string(),
                )
            }
            "http" | "https" => {
                let url = url::Url::parse(uri).map_err(|e| malformed(&e.to_string()))?;
                let host = url
                    .host_str()
                    .ok_or_else(|| malformed("no host"))?
                    .to_string();
                let path = url.path().trim_start_matches('/').to_string();
                if host.ends_with(".blob.core.windows.net")
                    || host.ends_with(".dfs.core.windows.net")
                {
                    let (container, key) = path.split_once('/').unwrap_or((path.as_str(), ""));
                    if container.is_empty() {
                        return Err(malformed("no container in the Azure URL"));
                    }
                    (
                        Scheme::Azure,
                        format!("https://{host}/{container}"),
                        key.to_string(),
                    )
                } else {
                    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                    (
                        Scheme::Http,
                        format!("{}://{host}{port}", url.scheme()),
                        path,
                    )
                }
            }
            other => {
                return Err(Error::UnsupportedScheme {
                    uri: uri.into(),
                    scheme: other.into(),
                });
            }
        };
        let key = key.trim_matches('/').to_string();
        ObjPath::parse(&key).map_err(|e| malformed(&e.to_string()))?;
        Ok(Self {
            scheme,
            uri: uri.trim_end_matches('/').to_string(),
            store_url,
            key,
        })
    }

    fn local(uri: &str, path: &str) -> Result<Self> {
        let abs = std::path::absolute(path).map_err(|e| Error::Malformed {
            uri: uri.into(),
            what: e.to_string(),
        })?;
        let key = abs.to_string_lossy().trim_matches('/').to_string();
        ObjPath::parse(&key).map_err(|e| Error::Malformed {
            uri: uri.into(),
            what: e.to_string(),
        })?;
        Ok(Self {
            scheme: Scheme::Local,
            uri: uri.trim_end_matches('/').to_string(),
            store_url: String::new(),
            key,
        })
    }

    pub fn is_read_only(&self) -> bool {
        self.scheme == Scheme::Http
    }

    /// The local file system path, for local locations.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.scheme == Scheme::Local).then(|| PathBuf::from(format!("/{}", self.key)))
    }

    /// A location under this one (`rel` uses `/`).
    pub fn join(&self, rel: &str) -> Self {
        let rel = rel.trim_matches('/');
        let join = |a: &str| {
            if a.is_empty() {
                rel.to_string()
            } else {
                format!("{a}/{rel}")
            }
        };
        Self {
            scheme: self.scheme,
            uri: format!("{}/{rel}", self.uri),
            store_url: self.store_url.clone(),
            key: join(&self.key),
        }
    }

    /// The location's directory (the key minus its last segment).
    pub fn parent(&self) -> Self {
        let cut = |s: &str| {
            s.rsplit_once('/')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default()
        };
        Self {
            scheme: self.scheme,
            uri: cut(&self.uri),
            store_url: self.store_url.clone(),
            key: cut(&self.key),
        }
    }

    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or("")
    }

    fn path(&self) -> ObjPath {
        ObjPath::from(self.key.as_str())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Environment variables each scheme reads credentials from. Only their NAMES are ever shown.
const CREDENTIAL_VARS: &[(Scheme, &[&str])] = &[
    (
        Scheme::S3,
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ],
    ),
    (
        Scheme::Gcs,
        &[
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
        ],
    ),
    (
        Scheme::Azure,
        &[
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
        ],
    ),
];

/// Names (never values) of the credential variables set for a scheme.
pub fn credential_source(scheme: Scheme) -> String {
    let vars = CREDENTIAL_VARS
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, v)| *v)
        .unwrap_or(&[]);
    let set: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
    match (scheme, set.is_empty()) {
        (Scheme::Local, _) => "local file system".into(),
        (Scheme::Http, _) => "anonymous https".into(),
        (_, true) => {
            "no credential variables set: instance metadata / workload identity or anonymous".into()
        }
        (_, false) => format!("{} from the environment", set.join(", ")),
    }
}

/// What a fetch produced.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// Builds stores for locations, with the job's overrides and a bounded retry policy.
#[derive(Clone, Default)]
pub struct Storage {
    spec: StorageSpec,
}

/// Progress of a transfer: (bytes so far, total if known).
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

const PART_BYTES: usize = 8 * 1024 * 1024;

impl Storage {
    pub fn new(spec: Option<&StorageSpec>) -> Self {
        Self {
            spec: spec.cloned().unwrap_or_default(),
        }
    }

    fn retry() -> RetryConfig {
        // object_store's default retries for up to 3 minutes; a worker pod should fail sooner
        // and let the Job's backoff retry the whole run.
        let secs = std::env::var("KOMPRESS_STORAGE_RETRY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(secs),
            ..Default::default()
        }
    }

    fn store(&self, loc: &Location) -> Result<Arc<dyn ObjectStore>> {
        let config = |source| Error::Config {
            uri: loc.uri.clone(),
            credentials: credential_source(loc.scheme),
            source,
        };
        let opts = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        Ok(match loc.scheme {
            Scheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            Scheme::S3 => {
                // Client options first: from_env() puts AWS_ALLOW_HTTP etc. into the client
                // options, which a later with_client_options() would throw away.
                let mut b = from_env(
                    "AWS_",
                    object_store::aws::AmazonS3Builder::new().with_client_options(opts),
                    |b, k, v| k.parse().map(|k| b.with_config(k, v)).ok(),
                )
                .with_url(&loc.store_url)
                .with_retry(Self::retry());
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    b = b.with_region("us-east-1");
                }
                if let Some(e) = &self.spec.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &self.spec.region {
                    b = b.with_region(r);
                }
                if let Some(v) = self.spec.virtual_hosted_style {
                    b = b.with_virtual_hosted_style_request(v);
                }
                if let Some(h) = self.spec.allow_http {
                    b = b.with_allow_http(h);
                }
                Arc::new(b.build().map_err(config)?)
            }
            Scheme::Gcs => Arc::new(
                from_env(
                    "GOOGLE_",
                    object_store::gcp::GoogleCloudStorageBuilder::new().with_client_options(opts),
                    |b, k, v| k.parse().map(|k| b.with_config(k, v)).ok(),
                )
                .with_url(&loc.store_url)
                .with_retry(Self::retry())
                .build()
                .map_err(config)?,
            ),
            Scheme::Azure => {
                let mut b = from_env(
                    "AZURE_",
                    object_store::azure::MicrosoftAzureBuilder::new().with_client_options(opts),
                    |b, k, v| k.parse().map(|k| b.with_config(k, v)).ok(),
                )
                .with_url(&loc.store_url)
                .with_retry(Self::retry());
                if let Some(e) = &self.spec.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(h) = self.spec.allow_http {
                    b = b.with_allow_http(h);
                }
                Arc::new(b.build().map_err(config)?)
            }
            Scheme::Http => Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(&loc.store_url)
                    .with_retry(Self::retry())
                    .with_client_options(opts.with_allow_http(true))
                    .build()
                    .map_err(config)?,
            ),
        })
    }

    fn classify(loc: &Location, op: &'static str, source: object_store::Error) -> Error {
        use object_store::Error as E;
        let (uri, credentials) = (loc.uri.clone(), credential_source(loc.scheme));
        match source {
            E::NotFound { .. } => Error::NotFound {
                uri,
                where_: format!("no such bucket, container or key; credentials: {credentials}"),
                source: Some(source),
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::Denied {
                uri,
                credentials,
                source,
            },
            E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => Error::Config {
                uri,
                credentials,
                source,
            },
            // S3-compatible servers answer a missing bucket or bad key with 4xx codes that
            // object_store reports as Generic; only 5xx and transport errors are worth retrying.
            source if is_client_error(&source) => Error::Denied {
                uri,
                credentials,
                source,
            },
            source => Error::Transient { uri, op, source },
        }
    }

    /// Size of an object, or None when it does not exist.
    pub async fn size(&self, loc: &Location) -> Result<Option<u64>> {
        match self.store(loc)?.head(&loc.path()).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::classify(loc, "head", e)),
        }
    }

    /// Streams an object to `dest`, hashing on the way; checks `expected_sha256` if given. The
    /// file appears at `dest` only when complete and verified.
    pub async fn fetch(
        &self,
        loc: &Location,
        dest: &Path,
        expected_sha256: Option<&str>,
        progress: ProgressFn<'_>,
    ) -> Result<Fetched> {
        let io = |source| Error::Io {
            path: dest.into(),
            source,
        };
        let part = dest.with_extension("part");
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        {
            let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
            if let Some(src) = loc.local_path() {
                // Local files: plain reads (object_store's local store is no faster, and this
                // gives the same error kinds as the remote path).
                let mut f = tokio::fs::File::open(&src)
                    .await
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Error::NotFound {
                            uri: loc.uri.clone(),
                            where_: "no such local file".into(),
                            source: None,
                        },
                        _ => Error::Io {
                            path: src.clone(),
                            source: e,
                        },
                    })?;
                let total = f.metadata().await.map(|m| m.len()).ok();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).await.map_err(|e| Error::Io {
                        path: src.clone(),
                        source: e,
                    })?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    file.write_all(&buf[..n]).await.map_err(io)?;
                    bytes += n as u64;
                    progress(bytes, total);
                }
            } else {
                let got = self
                    .store(loc)?
                    .get(&loc.path())
                    .await
                    .map_err(|e| Self::classify(loc, "get", e))?;
                let total = Some(got.meta.size);
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| Self::classify(loc, "get", e))?;
                    hasher.update(&chunk);
                    file.write_all(&chunk).await.map_err(io)?;
                    bytes += chunk.len() as u64;
                    progress(bytes, total);
                }
            }
            file.sync_all().await.map_err(io)?;
        }
        let sha256 = hex::encode(hasher.finalize());
        if let Some(expected) = expected_sha256
            && expected != sha256
        {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::Checksum {
                uri: loc.uri.clone(),
                expected: expected.into(),
                actual: sha256,
            });
        }
        tokio::fs::rename(&part, dest).await.map_err(io)?;
        Ok(Fetched {
            path: dest.into(),
            sha256,
            bytes,
        })
    }

    /// Uploads a local file (multipart above 8 MiB). On S3-compatible stores an object becomes
    /// visible only when complete; local writes go through a temporary file and a rename.
    pub async fn put_file(
        &self,
        src: &Path,
        loc: &Location,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        if loc.is_read_only() {
            return Err(Error::ReadOnly {
                uri: loc.uri.clone(),
            });
        }
        let io = |source| Error::Io {
            path: src.into(),
            source,
        };
        let mut f = tokio::fs::File::open(src).await.map_err(io)?;
        let total = f.metadata().await.map_err(io)?.len();
        let store = self.store(loc)?;
        let mut w = object_store::buffered::BufWriter::with_capacity(store, loc.path(), PART_BYTES);
        let mut sent = 0u64;
        let result: Result<()> = async {
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = read_full(&mut f, &mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                w.put(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .map_err(|e| Self::classify(loc, "upload", e))?;
                sent += n as u64;
                progress(sent, Some(total));
            }
            w.shutdown()
                .await
                .map_err(|e| Self::classify(loc, "upload", object_store_error(e)))
        }
        .await;
        if result.is_err() {
            let _ = w.abort().await;
        }
        result.map(|_| sent)
    }

    /// Writes a small object in one request.
    pub async fn put_bytes(&self, loc: &Location, data: Bytes) -> Result<()> {
        if loc.is_read_only() {
            return Err(Error::ReadOnly {
                uri: loc.uri.clone(),
            });
        }
        self.store(loc)?
            .put(&loc.path(), data.into())
            .await
            .map_err(|e| Self::classify(loc, "put", e))?;
        Ok(())
    }

    /// Reads a small object whole; None when it does not exist.
    pub async fn get_bytes(&self, loc: &Location) -> Result<Option<Bytes>> {
        match self.store(loc)?.get(&loc.path()).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(|e| Self::classify(loc, "get", e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::classify(loc, "get", e)),
        }
    }

    /// Keys (relative to `loc`) of every object under a prefix.
    pub async fn list(&self, loc: &Location) -> Result<Vec<String>> {
        let store = self.store(loc)?;
        let prefix = loc.path();
        let mut out = Vec::new();
        let mut s = store.list(Some(&prefix));
        while let Some(meta) = s.next().await {
            match meta {
                Ok(m) => out.push(
                    m.location
                        .as_ref()
                        .strip_prefix(prefix.as_ref())
                        .unwrap_or(m.location.as_ref())
                        .trim_start_matches('/')
                        .to_string(),
                ),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(Self::classify(loc, "list", e)),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Applies every `<PREFIX>*` environment variable the builder knows (as object_store's own
/// `from_env` does), on top of a builder that already has our client options.
fn from_env<B: Clone>(prefix: &str, mut b: B, apply: impl Fn(B, &str, &str) -> Option<B>) -> B {
    for (k, v) in std::env::vars() {
        if k.starts_with(prefix)
            && let Some(next) = apply(b.clone(), &k.to_ascii_lowercase(), &v)
        {
            b = next;
        }
    }
    b
}

async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn object_store_error(e: std::io::Error) -> object_store::Error {
    match e.downcast::<object_store::Error>() {
        Ok(e) => e,
        Err(e) => object_store::Error::Generic {
            store: "upload",
            source: Box::new(e),
        },
    }
}

/// True for HTTP 4xx answers (other than 408/429), which retrying cannot fix.
fn is_client_error(e: &object_store::Error) -> bool {
    let text = format!("{e}");
    // object_store's retry errors render as "... Client error with status 400 Bad Request ..."
    text.contains("Client error with status")
        && !text.contains("status 408")
        && !text.contains("status 429")
}

/// sha256 of a local file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_uris_map_to_their_store_and_key() {
        let l = Location::parse("s3://models/resnet/model.onnx").unwrap();
        assert_eq!(
            (l.scheme, l.store_url.as_str(), l.key.as_str()),
            (Scheme::S3, "s3://models", "resnet/model.onnx")
        );
        assert_eq!(Location::parse("gs://b/k").unwrap().scheme, Scheme::Gcs);
        assert_eq!(
            Location::parse("az://container/a/b").unwrap().scheme,
            Scheme::Azure
        );
        let abfs = Location::parse("abfss://data@acct.dfs.core.windows.net/m/model.onnx").unwrap();
        assert_eq!(
            (abfs.scheme, abfs.key.as_str()),
            (Scheme::Azure, "m/model.onnx")
        );
        let blob =
            Location::parse("https://acct.blob.core.windows.net/models/x/model.onnx").unwrap();
        assert_eq!(
            (blob.scheme, blob.store_url.as_str(), blob.key.as_str()),
            (
                Scheme::Azure,
                "https://acct.blob.core.windows.net/models",
                "x/model.onnx"
            )
        );
        let web = Location::parse("https://example.com:8443/files/model.onnx").unwrap();
        assert_eq!(
            (web.scheme, web.store_url.as_str(), web.key.as_str()),
            (Scheme::Http, "https://example.com:8443", "files/model.onnx")
        );
        assert!(web.is_read_only());
    }

    #[test]
    fn local_paths_and_file_uris_are_absolute_keys() {
        let l = Location::parse("file:///tmp/x/model.onnx").unwrap();
        assert_eq!(l.local_path(), Some(PathBuf::from("/tmp/x/model.onnx")));
        let rel = Location::parse("examples/m.onnx").unwrap();
        assert!(rel.local_path().unwrap().is_absolute());
    }

    #[test]
    fn join_parent_and_file_name_compose() {
        let l = Location::parse("s3://b/runs/")
            .unwrap()
            .join("r1/model.onnx");
        assert_eq!(l.uri, "s3://b/runs/r1/model.onnx");
        assert_eq!(l.file_name(), "model.onnx");
        assert_eq!(
            l.parent().join("model.onnx.data").key,
            "runs/r1/model.onnx.data"
        );
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        let e = Location::parse("ftp://host/m.onnx")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported URI scheme `ftp`") && e.contains("s3://"),
            "{e}"
        );
        assert!(
            Location::parse("s3:///key")
                .unwrap_err()
                .to_string()
                .contains("no bucket")
        );
        assert!(
            Location::parse("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            Location::parse("abfss://nocontainer/x")
                .unwrap_err()
                .to_string()
                .contains("abfss://<container>@")
        );
        assert!(
            Location::parse("s3://b/a/../c").is_err(),
            "`..` segments are refused"
        );
    }

    #[test]
    fn permanence_follows_the_error_kind() {
        let missing = Error::NotFound {
            uri: "s3://b/k".into(),
            where_: String::new(),
            source: None,
        };
        assert!(missing.is_permanent());
        let down = Error::Transient {
            uri: "s3://b/k".into(),
            op: "get",
            source: object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        };
        assert!(!down.is_permanent());
    }
}
