//! Storage errors, and the one place that decides what a store's failure means: by HTTP status
//! code, transport error kind, or object_store's own error variant.

use super::Location;
use crate::error::error_chain;
use object_store::client::{HttpError, HttpErrorKind};
use std::io;
use std::path::PathBuf;

/// Storage failures. `is_permanent` says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URI names no location (unsupported scheme, malformed).
    #[error(transparent)]
    Uri(#[from] crate::uri::Error),
    /// Promotion to an OCI registry.
    #[error(transparent)]
    Oci(#[from] crate::oci::Error),
    #[error("`{uri}` cannot be written: https:// locations are read-only")]
    ReadOnly { uri: String },
    #[error("cannot configure storage for `{uri}` ({credentials})")]
    Config {
        uri: String,
        credentials: String,
        #[source]
        source: Cause,
    },
    /// A storage setting that cannot work (e.g. a plain-http endpoint without allowHttp).
    #[error("cannot use `{uri}`: {what}")]
    Misconfigured { uri: String, what: String },
    /// No credentials at all, and none from instance metadata either.
    #[error("no credentials for `{uri}`: {hint}")]
    NoCredentials {
        uri: String,
        hint: String,
        #[source]
        source: Cause,
    },
    #[error("`{uri}` does not exist ({where_})")]
    NotFound {
        uri: String,
        /// What was looked up, and with which credentials (names only).
        where_: String,
        #[source]
        source: Option<Cause>,
    },
    #[error(
        "access to `{uri}` was denied: check the credentials ({credentials}) and their permissions"
    )]
    Denied {
        uri: String,
        credentials: String,
        #[source]
        source: Cause,
    },
    /// An HTTP 4xx answer (other than 401/403/404/408/429): retrying the same request cannot
    /// help.
    #[error("storage refused the {op} of `{uri}` with HTTP {status}; retrying will not help")]
    Rejected {
        uri: String,
        op: &'static str,
        /// Code and reason, e.g. `400 Bad Request`.
        status: String,
        #[source]
        source: Cause,
    },
    #[error(
        "storage request for `{uri}` failed ({op}: {cause}); this may be temporary, retry later"
    )]
    Transient {
        uri: String,
        op: &'static str,
        /// A short cause: `HTTP 503 Service Unavailable`, `cannot connect to http://host:9000:
        /// Connection refused (os error 111)`, ...
        cause: String,
        #[source]
        source: Cause,
    },
    #[error(
        "sha256 of `{uri}` is {actual}, but the spec expects {expected}: the file changed or the digest is wrong"
    )]
    Checksum {
        uri: String,
        expected: String,
        actual: String,
    },
    /// The bytes sent in an upload hash differently from what the caller expected: the
    /// upload was abandoned (nothing is visible at `uri`).
    #[error(
        "upload to `{uri}` abandoned: the bytes sent have sha256 {actual}, but {expected} was expected (the local file changed)"
    )]
    UploadChecksum {
        uri: String,
        expected: String,
        actual: String,
    },
    /// A local source that is not a regular file (a directory, FIFO, device, socket).
    #[error("`{uri}` is {kind}, not a regular file: {hint}")]
    NotAFile {
        uri: String,
        kind: &'static str,
        hint: &'static str,
    },
    /// A local source that resolves outside the directory it must stay in (a symlink out).
    #[error(
        "`{uri}` resolves to `{}`, outside the model's directory `{}`: external data must stay inside it (no symlinks out of it)",
        resolved.display(),
        root.display()
    )]
    Outside {
        uri: String,
        resolved: PathBuf,
        root: PathBuf,
    },
    /// A source larger than the caller's cap.
    #[error("`{uri}` is larger than the {max_bytes} bytes allowed for it")]
    TooLarge { uri: String, max_bytes: u64 },
    #[error("local file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading a local location failed.
    #[error("cannot read `{uri}`: {source}")]
    Read {
        uri: String,
        #[source]
        source: io::Error,
    },
    /// Writing a local location failed (nothing was left at its name).
    #[error("cannot write `{uri}`: {source}")]
    Write {
        uri: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the local copy of a fetched object failed (scratch disk full, ...).
    // The scratch path is not shown: it is a folder of this run that the user never named.
    #[error(
        "cannot store the copy of `{uri}` in the scratch folder: {source}: free space or give the \
         job more scratch (spec.resources.scratch; --scratch or KOMPRESS_SCRATCH locally)"
    )]
    Scratch {
        uri: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether retrying the same request can succeed (network trouble, a full or read-only
    /// disk) or not (bad URI, missing object, wrong credentials, digest mismatch, a path that
    /// cannot name a file).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Transient { .. } => false,
            Self::Io { source, .. }
            | Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Scratch { source, .. } => io_is_permanent(source),
            Self::Oci(e) => e.is_permanent(),
            _ => true,
        }
    }
}

/// Local I/O errors that no retry can fix: the path itself cannot name a file.
fn io_is_permanent(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::NotADirectory | K::IsADirectory | K::InvalidFilename | K::InvalidInput
    )
}

/// An object_store error as shown to users: its whole chain in one line, with query strings of
/// URLs and the values of credential variables redacted. It ends the chain (`source()` is
/// None) so nothing unredacted is printed after it.
pub struct Cause(Box<object_store::Error>);

impl Cause {
    pub fn new(e: object_store::Error) -> Self {
        Self(Box::new(e))
    }

    pub fn inner(&self) -> &object_store::Error {
        &self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cause({self})")
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&error_chain(&*self.0)))
    }
}

impl std::error::Error for Cause {}

impl From<object_store::Error> for Cause {
    fn from(e: object_store::Error) -> Self {
        Self::new(e)
    }
}

/// Removes URL query strings (SAS tokens, presigned signatures) and the values of credential
/// variables from a message.
pub(super) fn redact(text: &str) -> String {
    let mut out = crate::uri::redact_in(text);
    for var in super::SECRET_VARS {
        if let Ok(v) = std::env::var(var)
            && v.len() >= 8
        {
            out = out.replace(&v, "<redacted>");
        }
    }
    out
}

/// What an HTTP-level failure was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// An HTTP answer: the code and the status line's reason (`400 Bad Request`).
    Status(u16, String),
    /// No answer: connect error, timeout, ...
    Transport(HttpErrorKind),
}

/// Finds the HTTP status or transport failure in an object_store error's chain.
///
/// object_store 0.14 keeps the status in its `RetryError`, which is not public; its `Display`
/// (and its inner `RequestError`'s) reads `Server returned non-2xx status code: 400 Bad
/// Request: <body>`. The transport kind comes from the public `HttpError`.
pub(super) fn failure(e: &object_store::Error) -> Option<Failure> {
    const STATUS: &str = "non-2xx status code: ";
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            return Some(Failure::Transport(h.kind()));
        }
        let text = c.to_string();
        if let Some(i) = text.find(STATUS) {
            let after = &text[i + STATUS.len()..];
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(code) = digits.parse::<u16>() {
                let line = after.split(':').next().unwrap_or(after).trim().to_string();
                return Some(Failure::Status(code, line));
            }
        }
        cur = c.source();
    }
    None
}

/// The deepest message of a chain (e.g. `Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(c) = cur.source() {
        cur = c;
    }
    cur.to_string()
}

/// The origin (`scheme://host:port`) of the first request URL object_store names.
fn endpoint_in(text: &str) -> Option<String> {
    let i = text.find("Error performing ")?;
    let mut words = text[i..].split_whitespace().skip(3);
    let u = url::Url::parse(words.next()?).ok()?;
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{}{port}", u.scheme(), u.host_str()?))
}

/// What the store knows about its own configuration, for classifying its errors.
#[derive(Debug, Clone, Default)]
pub(super) struct StoreInfo {
    /// Set when the store has no credentials of its own and asks instance metadata at this
    /// endpoint: a failure there means "no credentials anywhere".
    pub imds: Option<String>,
}

/// Maps an object_store error to ours. One place: status codes first, then transport errors,
/// then object_store's own variants.
pub(super) fn classify(
    loc: &Location,
    op: &'static str,
    info: &StoreInfo,
    source: object_store::Error,
) -> Error {
    use object_store::Error as E;
    let uri = loc.uri.clone();
    let credentials = || super::credential_source(loc.scheme);
    let text = source.to_string();
    if let Some(imds) = &info.imds
        && text.contains(&format!("{imds}/latest/"))
    {
        return Error::NoCredentials {
            uri,
            hint: format!(
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (e.g. through spec.storage.secretRef), \
                 use workload identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or set \
                 AWS_SKIP_SIGNATURE=true for a public bucket; the instance metadata endpoint {imds} \
                 gave none"
            ),
            source: Cause::new(source),
        };
    }
    let not_found = |source: E| Error::NotFound {
        uri: loc.uri.clone(),
        where_: format!(
            "no such bucket, container or key; credentials: {}",
            credentials()
        ),
        source: Some(Cause::new(source)),
    };
    let denied = |source: E| Error::Denied {
        uri: loc.uri.clone(),
        credentials: credentials(),
        source: Cause::new(source),
    };
    match source {
        E::NotFound { .. } => return not_found(source),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return denied(source),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => {
            return Error::Config {
                uri,
                credentials: credentials(),
                source: Cause::new(source),
            };
        }
        _ => {}
    }
    match failure(&source) {
        Some(Failure::Status(code, line)) => match code {
            401 | 403 => denied(source),
            404 => not_found(source),
            408 | 429 => Error::Transient {
                uri,
                op,
                cause: format!("HTTP {line}"),
                source: Cause::new(source),
            },
            400..=499 => Error::Rejected {
                uri,
                op,
                status: line,
                source: Cause::new(source),
            },
            _ => Error::Transient {
                uri,
                op,
                cause: format!("HTTP {line}"),
                source: Cause::new(source),
            },
        },
        Some(Failure::Transport(kind)) => {
            let what = match kind {
                HttpErrorKind::Connect => "cannot connect",
                HttpErrorKind::Timeout => "timed out",
                HttpErrorKind::Interrupted => "connection interrupted",
                HttpErrorKind::Decode => "unreadable answer",
                _ => "request failed",
            };
            let to = endpoint_in(&text)
                .map(|e| format!(" to {e}"))
                .unwrap_or_default();
            Error::Transient {
                uri,
                op,
                cause: redact(&format!("{what}{to}: {}", root_cause(&source))),
                source: Cause::new(source),
            }
        }
        None => Error::Transient {
            uri,
            op,
            cause: redact(&root_cause(&source)),
            source: Cause::new(source),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        }
    }

    #[test]
    fn permanence_follows_the_error_kind() {
        let missing = Error::NotFound {
            uri: "s3://b/k".into(),
            where_: String::new(),
            source: None,
        };
        assert!(missing.is_permanent());
        let loc = Location::parse("s3://b/k").unwrap();
        let down = classify(
            &loc,
            "get",
            &StoreInfo::default(),
            generic("connection reset"),
        );
        assert!(!down.is_permanent());
        let full = Error::Write {
            uri: "/out/m".into(),
            path: "/out/m".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert!(!full.is_permanent());
        let ro = Error::Write {
            uri: "/out/m".into(),
            path: "/out/m".into(),
            source: io::Error::from(io::ErrorKind::ReadOnlyFilesystem),
        };
        assert!(!ro.is_permanent());
        let notdir = Error::Write {
            uri: "/out/m".into(),
            path: "/out/m".into(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        };
        assert!(notdir.is_permanent());
    }

    #[test]
    fn status_codes_decide_the_class() {
        let loc = Location::parse("s3://b/k").unwrap();
        let with = |code: &str| {
            classify(
                &loc,
                "get",
                &StoreInfo::default(),
                generic(&format!(
                    "Error performing GET http://127.0.0.1:9/b/k in 1ms - Server returned non-2xx status code: {code}: <Error/>"
                )),
            )
        };
        let e = with("400 Bad Request");
        assert!(
            matches!(&e, Error::Rejected { status, .. } if status == "400 Bad Request"),
            "{e:?}"
        );
        assert!(e.is_permanent());
        assert!(matches!(with("403 Forbidden"), Error::Denied { .. }));
        assert!(matches!(with("401 Unauthorized"), Error::Denied { .. }));
        assert!(matches!(with("404 Not Found"), Error::NotFound { .. }));
        for t in [
            "408 Request Timeout",
            "429 Too Many Requests",
            "500 Internal Server Error",
            "503 Service Unavailable",
        ] {
            let e = with(t);
            assert!(!e.is_permanent(), "{t}: {e}");
            assert!(e.to_string().contains(t), "{e}");
        }
        let e = with("409 Conflict");
        assert!(
            e.is_permanent() && e.to_string().contains("HTTP 409 Conflict"),
            "{e}"
        );
    }

    #[test]
    fn no_credentials_is_permanent_only_when_instance_metadata_was_the_source() {
        let loc = Location::parse("s3://b/k").unwrap();
        let imds = StoreInfo {
            imds: Some("http://169.254.169.254".into()),
        };
        let e = classify(
            &loc,
            "get",
            &imds,
            generic(
                "Error performing PUT http://169.254.169.254/latest/api/token in 1s - HTTP error: connect",
            ),
        );
        assert!(e.is_permanent(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("AWS_ACCESS_KEY_ID") && text.contains("AWS_SECRET_ACCESS_KEY"),
            "{text}"
        );
        let e = classify(&loc, "get", &imds, generic("connection reset"));
        assert!(!e.is_permanent());
        let e = classify(
            &loc,
            "get",
            &StoreInfo::default(),
            generic("Error performing PUT http://169.254.169.254/latest/api/token in 1s"),
        );
        assert!(!e.is_permanent(), "with credentials configured: {e}");
    }

    #[test]
    fn query_strings_are_redacted() {
        let r = redact(
            "Error performing GET https://acct.blob.core.windows.net/c/k?sv=2020&sig=SECRET in 1s - http://x/y ok",
        );
        assert!(!r.contains("SECRET") && r.contains("k?<redacted>"), "{r}");
        assert!(r.ends_with("http://x/y ok"), "{r}");
        assert_eq!(redact("no urls, httpd"), "no urls, httpd");
    }
}
