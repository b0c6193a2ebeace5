//! Object storage behind one small interface: URIs (s3://, gs://, az://, https://, file://,
//! plain paths) to stores, streamed fetch with sha256, and uploads (multipart for large files)
//! that hash what they send. Credentials come from the standard environment variables of each
//! cloud.
//!
//! Local locations go straight to the file system (`local`): atomic writes through a hidden
//! staging file, no percent-encoding of names. Remote ones go through `object_store`, one
//! client per store, cached. Every failure maps to an [`Error`] whose `is_permanent` says
//! whether retrying can help; the mapping of HTTP answers lives in one place (`error`).

// Sizes, offsets, counts and dimensions here come from outside (files, servers): numeric
// casts that could truncate, wrap or lose a sign are checked conversions, or allowed where the
// value is bounded by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod clients;
mod error;
mod local;
mod location;

pub use crate::uri::{Location, Scheme};
pub use error::{Cause, Error};
pub use local::{STAGING_MARKER, begin_shutdown, is_staging_name, shutting_down};

use crate::api::StorageSpec;
use bytes::Bytes;
use error::{StoreInfo, classify};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Environment variables each scheme reads credentials from. Only their NAMES are ever shown.
const CREDENTIAL_VARS: &[(Scheme, &[&str])] = &[
    (
        Scheme::S3,
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
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

/// Variables whose VALUES are secret: removed from every message that could echo them.
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
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

/// One object of a [`Storage::scan`]: its key under the prefix and what the store reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The store's entity tag, when it reports one (S3, GCS, Azure).
    pub e_tag: Option<String>,
    /// The object's version id, when the store keeps versions.
    pub version: Option<String>,
    /// Last modification, seconds since the epoch.
    pub modified_s: Option<i64>,
}

/// What a fetch produced.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// What an upload sent: its length and the sha256 of exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    pub sha256: String,
}

/// Options of [`Storage::fetch_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions<'a> {
    /// Refuse the object (Error::Checksum) unless its sha256 is this.
    pub expected_sha256: Option<&'a str>,
    /// Refuse (Error::TooLarge, permanent) an object larger than this; never read past it.
    pub max_bytes: Option<u64>,
    /// Local sources only: refuse (Error::Outside, permanent) a source whose real path (all
    /// symlinks resolved) is not inside this directory's real path.
    pub confine_to: Option<&'a Path>,
}

/// A cached client and what classifying its errors needs.
#[derive(Clone)]
struct Store {
    store: Arc<dyn ObjectStore>,
    info: StoreInfo,
}

/// Builds stores for locations (once per store URL), with the job's overrides and a bounded
/// retry policy. Clones share the cache.
#[derive(Clone, Default)]
pub struct Storage {
    spec: StorageSpec,
    /// (max retries, retry timeout); None: `KOMPRESS_STORAGE_RETRY_SECONDS` or 60 s, 5 retries.
    retry: Option<(usize, Duration)>,
    /// Extra builder settings (object_store config keys such as `aws_access_key_id`), applied
    /// after the environment.
    options: Vec<(String, String)>,
    stores: Arc<Mutex<HashMap<String, Store>>>,
}

/// Progress of a transfer: (bytes so far, total if known).
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

const PART_BYTES: usize = 8 * 1024 * 1024;
/// Multipart parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
const READ_BYTES: usize = 1 << 20;

impl Storage {
    pub fn new(spec: Option<&StorageSpec>) -> Self {
        Self {
            spec: spec.cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Retry policy for remote requests (instead of the `KOMPRESS_STORAGE_RETRY_SECONDS`
    /// environment variable, which tests running in parallel threads cannot set safely).
    pub fn with_retries(mut self, max_retries: usize, timeout: Duration) -> Self {
        self.retry = Some((max_retries, timeout));
        self.stores = Default::default();
        self
    }

    /// Sets an object_store configuration key (e.g. `aws_access_key_id`,
    /// `aws_skip_signature`, `aws_metadata_endpoint`) on the stores of every scheme that knows
    /// it, after the environment. Values are never shown in messages.
    pub fn with_option(mut self, key: &str, value: &str) -> Self {
        self.options
            .push((key.to_ascii_lowercase(), value.to_string()));
        self.stores = Default::default();
        self
    }

    fn retry_config(&self) -> RetryConfig {
        // object_store's default retries for up to 3 minutes; a worker pod should fail sooner
        // and let the Job's backoff retry the whole run.
        let (max_retries, timeout) = self.retry.unwrap_or_else(|| {
            let secs = std::env::var("KOMPRESS_STORAGE_RETRY_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60);
            (5, Duration::from_secs(secs))
        });
        RetryConfig {
            max_retries,
            retry_timeout: timeout,
            ..Default::default()
        }
    }

    /// The client for a remote location's store, built on first use.
    fn store(&self, loc: &Location) -> Result<Store> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(loc.store_url()) {
            return Ok(s.clone());
        }
        let s = self.build(loc)?;
        stores.insert(loc.store_url().to_string(), s.clone());
        Ok(s)
    }

    fn read_only(loc: &Location) -> Result<()> {
        if loc.is_read_only() {
            return Err(Error::ReadOnly {
                uri: loc.uri.clone(),
            });
        }
        Ok(())
    }

    /// Size of an object, or None when it does not exist.
    pub async fn size(&self, loc: &Location) -> Result<Option<u64>> {
        if let Some(path) = loc.local_path() {
            return local::size(loc, &path).await;
        }
        let s = self.store(loc)?;
        match s.store.head(&loc.path()?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match classify(loc, "head", &s.info, e) {
                Error::NotFound { .. } => Ok(None),
                e => Err(e),
            },
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
        let opts = FetchOptions {
            expected_sha256,
            ..Default::default()
        };
        self.fetch_with(loc, dest, &opts, progress).await
    }

    /// [`fetch`](Self::fetch) that refuses (permanently, naming the URI) an object larger than
    /// `max_bytes`, and never reads more than that.
    pub async fn fetch_capped(
        &self,
        loc: &Location,
        dest: &Path,
        expected_sha256: Option<&str>,
        max_bytes: u64,
        progress: ProgressFn<'_>,
    ) -> Result<Fetched> {
        let opts = FetchOptions {
            expected_sha256,
            max_bytes: Some(max_bytes),
            ..Default::default()
        };
        self.fetch_with(loc, dest, &opts, progress).await
    }

    /// [`fetch`](Self::fetch) for files that must stay inside `root_dir` (ONNX external data
    /// beside its model): a local source whose real path is outside `root_dir`'s real path (a
    /// symlink out), or that is not a regular file, is refused permanently. Remote sources have
    /// no symlinks; only the cap applies to them. `dest`'s parent directories are created
    /// (`data/w.bin` works).
    pub async fn fetch_confined(
        &self,
        loc: &Location,
        dest: &Path,
        root_dir: &Path,
        max_bytes: Option<u64>,
        progress: ProgressFn<'_>,
    ) -> Result<Fetched> {
        let opts = FetchOptions {
            max_bytes,
            confine_to: Some(root_dir),
            ..Default::default()
        };
        self.fetch_with(loc, dest, &opts, progress).await
    }

    /// The general fetch: streams `loc` to a staging file beside `dest` (parents created),
    /// hashing what is read, checks that every byte landed (a full disk is an error, never a
    /// short file), then renames it onto `dest`. Local sources must be regular files.
    pub async fn fetch_with(
        &self,
        loc: &Location,
        dest: &Path,
        opts: &FetchOptions<'_>,
        progress: ProgressFn<'_>,
    ) -> Result<Fetched> {
        let scratch = |source| Error::Scratch {
            uri: loc.uri.clone(),
            path: dest.into(),
            source,
        };
        let too_large = |max_bytes| Error::TooLarge {
            uri: loc.uri.clone(),
            max_bytes,
        };
        let mut hasher = Sha256::new();
        let mut w;
        if let Some(src) = loc.local_path() {
            let (mut f, len) =
                local::open_source(loc, &src, opts.confine_to, opts.max_bytes).await?;
            w = local::Writer::create(dest).await.map_err(scratch)?;
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                let n = f.read(&mut buf).await.map_err(|source| Error::Read {
                    uri: loc.uri.clone(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                if let Some(max) = opts.max_bytes
                    && w.written + n as u64 > max
                {
                    return Err(too_large(max));
                }
                hasher.update(&buf[..n]);
                w.write(&buf[..n]).await.map_err(scratch)?;
                progress(w.written, Some(len));
            }
        } else {
            let s = self.store(loc)?;
            let got = s
                .store
                .get(&loc.path()?)
                .await
                .map_err(|e| classify(loc, "get", &s.info, e))?;
            let total = got.meta.size;
            if let Some(max) = opts.max_bytes
                && total > max
            {
                return Err(too_large(max));
            }
            w = local::Writer::create(dest).await.map_err(scratch)?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| classify(loc, "get", &s.info, e))?;
                if let Some(max) = opts.max_bytes
                    && w.written + chunk.len() as u64 > max
                {
                    return Err(too_large(max));
                }
                hasher.update(&chunk);
                w.write(&chunk).await.map_err(scratch)?;
                progress(w.written, Some(total));
            }
        }
        w.finish_data().await.map_err(scratch)?;
        let bytes = w.written;
        let sha256 = hex::encode(hasher.finalize());
        if let Some(expected) = opts.expected_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(Error::Checksum {
                uri: loc.uri.clone(),
                expected: expected.into(),
                actual: sha256,
            });
        }
        w.commit().await.map_err(scratch)?;
        Ok(Fetched {
            path: dest.into(),
            sha256,
            bytes,
        })
    }

    /// Uploads a local file; returns the bytes sent. See [`put_file_checked`]
    /// (Self::put_file_checked) for the digest of what was sent.
    pub async fn put_file(
        &self,
        src: &Path,
        loc: &Location,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        self.put_file_checked(src, loc, None, progress)
            .await
            .map(|u| u.bytes)
    }

    /// Uploads a local file and returns the length and sha256 of the bytes actually sent.
    /// With `expected_sha256`, bytes that hash differently are never made visible at `loc`
    /// (the upload is abandoned) and the result is a permanent `Error::UploadChecksum`.
    ///
    /// Remote stores: one request up to 8 MiB, else a multipart upload that is completed only
    /// after every part was sent and the digest checked (aborted on any failure); objects
    /// appear only whole. Local: a staging file renamed into place.
    pub async fn put_file_checked(
        &self,
        src: &Path,
        loc: &Location,
        expected_sha256: Option<&str>,
        progress: ProgressFn<'_>,
    ) -> Result<Uploaded> {
        Self::read_only(loc)?;
        let io = |source| Error::Io {
            path: src.into(),
            source,
        };
        let f = tokio::fs::File::open(src).await.map_err(io)?;
        let total = f.metadata().await.map_err(io)?.len();
        let upload = Upload {
            src,
            loc,
            expected_sha256,
            total,
            progress,
        };
        match loc.local_path() {
            Some(path) => upload.to_local_file(f, &path).await,
            None => self.upload_to_store(f, &upload).await,
        }
    }

    /// A remote upload: one request when the file fits in one part, else multipart.
    async fn upload_to_store(&self, mut f: tokio::fs::File, u: &Upload<'_>) -> Result<Uploaded> {
        let s = self.store(u.loc)?;
        let path = u.loc.path()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; PART_BYTES];
        let n = read_full(&mut f, &mut buf).await.map_err(|e| u.io(e))?;
        if n >= PART_BYTES {
            return u.multipart(&s, &path, f, buf, hasher).await;
        }
        // Small: one request, sent only after the digest is known.
        hasher.update(&buf[..n]);
        let sha256 = hex::encode(hasher.finalize());
        if let Some(e) = u.mismatch(&sha256) {
            return Err(e);
        }
        buf.truncate(n);
        s.store
            .put(&path, PutPayload::from(buf))
            .await
            .map_err(|e| classify(u.loc, "upload", &s.info, e))?;
        (u.progress)(n as u64, Some(u.total));
        Ok(Uploaded {
            bytes: n as u64,
            sha256,
        })
    }

    /// Writes a small object in one request (local: atomically).
    pub async fn put_bytes(&self, loc: &Location, data: Bytes) -> Result<()> {
        Self::read_only(loc)?;
        if let Some(path) = loc.local_path() {
            return local::put_bytes(loc, &path, &data).await;
        }
        let s = self.store(loc)?;
        s.store
            .put(&loc.path()?, data.into())
            .await
            .map_err(|e| classify(loc, "put", &s.info, e))?;
        Ok(())
    }

    /// Reads a small object whole; None when it does not exist.
    pub async fn get_bytes(&self, loc: &Location) -> Result<Option<Bytes>> {
        if let Some(path) = loc.local_path() {
            return Ok(local::get_bytes(loc, &path).await?.map(Bytes::from));
        }
        let s = self.store(loc)?;
        let fail = |e| classify(loc, "get", &s.info, e);
        match s.store.get(&loc.path()?).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(fail)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match fail(e) {
                Error::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Length and sha256 of an existing object, streamed (nothing is kept); None when it does
    /// not exist. For re-verifying what is already stored instead of trusting its size.
    pub async fn sha256_of(&self, loc: &Location) -> Result<Option<(u64, String)>> {
        self.sha256_within(loc, None).await
    }

    /// [`Storage::sha256_of`], a local file confined to `root`: a symlink out of it is refused
    /// (`Error::Outside`) before a byte is read.
    pub async fn sha256_within(
        &self,
        loc: &Location,
        root: Option<&Path>,
    ) -> Result<Option<(u64, String)>> {
        let mut h = Sha256::new();
        let mut n = 0u64;
        if let Some(path) = loc.local_path() {
            let mut f = match local::open_source(loc, &path, root, None).await {
                Ok((f, _)) => f,
                Err(Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                let k = f.read(&mut buf).await.map_err(|source| Error::Read {
                    uri: loc.uri.clone(),
                    source,
                })?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
        } else {
            let s = self.store(loc)?;
            let fail = |e| classify(loc, "get", &s.info, e);
            let got = match s.store.get(&loc.path()?).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => {
                    return match fail(e) {
                        Error::NotFound { .. } => Ok(None),
                        e => Err(e),
                    };
                }
            };
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(fail)?;
                h.update(&chunk);
                n += chunk.len() as u64;
            }
        }
        Ok(Some((n, hex::encode(h.finalize()))))
    }

    /// Every object under a prefix, streamed to `visit` one page at a time (nothing is
    /// collected here: what the caller keeps is all the memory a listing holds). Stops after
    /// `max_objects` objects and returns false then; true when the listing was complete.
    pub async fn scan(
        &self,
        loc: &Location,
        max_objects: u64,
        visit: &mut (dyn FnMut(Listed) + Send),
    ) -> Result<bool> {
        if let Some(path) = loc.local_path() {
            return local::scan(loc, &path, max_objects, visit).await;
        }
        let s = self.store(loc)?;
        let prefix = loc.path()?;
        let mut stream = s.store.list(Some(&prefix));
        let mut n = 0u64;
        while let Some(meta) = stream.next().await {
            match meta {
                Ok(m) => {
                    if n == max_objects {
                        return Ok(false);
                    }
                    n += 1;
                    visit(Listed {
                        key: m
                            .location
                            .as_ref()
                            .strip_prefix(prefix.as_ref())
                            .unwrap_or(m.location.as_ref())
                            .trim_start_matches('/')
                            .to_string(),
                        size: m.size,
                        e_tag: m.e_tag,
                        version: m.version,
                        modified_s: Some(m.last_modified.timestamp()),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(classify(loc, "list", &s.info, e)),
            }
        }
        Ok(true)
    }

    /// Keys (relative to `loc`) of every object under a prefix.
    pub async fn list(&self, loc: &Location) -> Result<Vec<String>> {
        if let Some(path) = loc.local_path() {
            return local::list(loc, &path).await;
        }
        let s = self.store(loc)?;
        let prefix = loc.path()?;
        let mut out = Vec::new();
        let mut stream = s.store.list(Some(&prefix));
        while let Some(meta) = stream.next().await {
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
                Err(e) => return Err(classify(loc, "list", &s.info, e)),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// One upload of [`Storage::put_file_checked`]: the file, where it goes, the digest it must
/// have.
struct Upload<'a> {
    src: &'a Path,
    loc: &'a Location,
    expected_sha256: Option<&'a str>,
    total: u64,
    progress: ProgressFn<'a>,
}

impl Upload<'_> {
    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.src.into(),
            source,
        }
    }

    /// The refusal of bytes that hash to `actual`, when a digest was expected and differs.
    fn mismatch(&self, actual: &str) -> Option<Error> {
        self.expected_sha256
            .filter(|e| !e.eq_ignore_ascii_case(actual))
            .map(|e| Error::UploadChecksum {
                uri: self.loc.uri.clone(),
                expected: e.into(),
                actual: actual.into(),
            })
    }

    /// A local destination: a staging file renamed into place once the digest is checked.
    async fn to_local_file(&self, mut f: tokio::fs::File, path: &Path) -> Result<Uploaded> {
        let write = |source| Error::Write {
            uri: self.loc.uri.clone(),
            path: path.to_path_buf(),
            source,
        };
        let mut hasher = Sha256::new();
        let mut w = local::Writer::create(path).await.map_err(write)?;
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            let n = f.read(&mut buf).await.map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            w.write(&buf[..n]).await.map_err(write)?;
            (self.progress)(w.written, Some(self.total));
        }
        w.finish_data().await.map_err(write)?;
        let sha256 = hex::encode(hasher.finalize());
        if let Some(e) = self.mismatch(&sha256) {
            return Err(e);
        }
        let bytes = w.written;
        w.commit().await.map_err(write)?;
        Ok(Uploaded { bytes, sha256 })
    }

    /// A multipart upload of `f`, whose first full part is in `buf`: completed only after
    /// every part was sent and the digest checked, aborted on any failure.
    async fn multipart(
        &self,
        s: &Store,
        path: &object_store::path::Path,
        mut f: tokio::fs::File,
        mut buf: Vec<u8>,
        mut hasher: Sha256,
    ) -> Result<Uploaded> {
        let fail = |e| classify(self.loc, "upload", &s.info, e);
        let mut upload = s.store.put_multipart(path).await.map_err(fail)?;
        let result: Result<Uploaded> = async {
            let mut in_flight = FuturesUnordered::new();
            let mut sent = 0u64;
            let mut n = buf.len();
            while n > 0 {
                hasher.update(&buf[..n]);
                in_flight
                    .push(upload.put_part(PutPayload::from(Bytes::copy_from_slice(&buf[..n]))));
                sent += n as u64;
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    if let Some(r) = in_flight.next().await {
                        r.map_err(fail)?;
                    }
                }
                (self.progress)(sent, Some(self.total));
                n = read_full(&mut f, &mut buf).await.map_err(|e| self.io(e))?;
            }
            while let Some(r) = in_flight.next().await {
                r.map_err(fail)?;
            }
            let sha256 = hex::encode(hasher.clone().finalize());
            if let Some(e) = self.mismatch(&sha256) {
                return Err(e);
            }
            Ok(Uploaded {
                bytes: sent,
                sha256,
            })
        }
        .await;
        match result {
            Ok(done) => match upload.complete().await {
                Ok(_) => Ok(done),
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(fail(e))
                }
            },
            Err(e) => {
                // Best effort: the parts already sent are dropped; nothing became visible.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }
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
mod tests;
