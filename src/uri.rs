//! Storage URIs (s3://, gs://, az://, abfss://, https://, file://, plain paths): which store,
//! and the object key in it. Pure: parsing touches neither the network nor the file system, and
//! this module imports nothing of the crate, so the API layer (spec validation) and the storage
//! layer (clients) both use it without depending on each other. `storage` re-exports it.

use oci_client::Reference;
use std::path::{Component, PathBuf};

/// A URI that names no storage location. Always permanent: retrying cannot fix a URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported URI scheme `{scheme}` in `{uri}`: use s3://, gs://, az://, https://, file:// or a local path"
    )]
    UnsupportedScheme { uri: String, scheme: String },
    #[error("malformed URI `{uri}`: {what}")]
    Malformed { uri: String, what: String },
}

impl Error {
    /// Always true: a malformed URI stays malformed.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// The URI as the user wrote it, normalised (no trailing slash). For local locations it
    /// names the real file: nothing is percent-encoded.
    pub uri: String,
    /// What identifies the store: `s3://bucket`, `https://host`, ... (empty for local).
    store_url: String,
    /// Object key inside the store (for local: the absolute path without its leading `/`),
    /// exactly as stored: never percent-encoded.
    key: String,
}

const DOTDOT: &str = "`..` is not allowed in a storage path";

/// Checks a `/`-separated key the way object stores need it, with plain messages.
fn check_key(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Ok(());
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty path segment (`//`) in a storage path"),
            "." => return Err("`.` segments are not allowed in a storage path"),
            ".." => return Err(DOTDOT),
            s if s.chars().any(|c| c.is_control()) => {
                return Err("control characters are not allowed in a storage path");
            }
            _ => {}
        }
    }
    Ok(())
}

/// `%XX` decoding of a URL path (http(s) locations); None when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

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
                // The URL path is percent-encoded; object keys are not.
                let path = percent_decode(url.path().trim_start_matches('/'))
                    .ok_or_else(|| malformed("the path is not UTF-8 after %-decoding"))?;
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
        check_key(&key).map_err(malformed)?;
        Ok(Self {
            scheme,
            uri: uri.trim_end_matches('/').to_string(),
            store_url,
            key,
        })
    }

    fn local(uri: &str, path: &str) -> Result<Self> {
        let malformed = |what: &str| Error::Malformed {
            uri: uri.into(),
            what: what.into(),
        };
        let abs = std::path::absolute(path).map_err(|e| malformed(&e.to_string()))?;
        // The key is the path's normal components: `.` and repeated `/` go, `..` is refused
        // (as for every other scheme). Nothing is encoded: the key names the real file.
        let mut parts = Vec::new();
        for c in abs.components() {
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => return Err(malformed(DOTDOT)),
                Component::Normal(s) => parts.push(
                    s.to_str()
                        .ok_or_else(|| malformed("the path is not UTF-8"))?
                        .to_string(),
                ),
            }
        }
        let key = parts.join("/");
        check_key(&key).map_err(malformed)?;
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

    /// A location under this one (`rel` uses `/`). Nothing is encoded; a `..` segment makes
    /// every later storage call on the result fail with a plain message.
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

    /// What identifies the store (`s3://bucket`, `https://host`, ...; empty for local): one
    /// client per store.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The object key inside the store, never percent-encoded (for local locations: the
    /// absolute path without its leading `/`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks the key again: a `..` segment that `join` let in is refused here, with the same
    /// words as `parse`.
    pub fn check(&self) -> Result<()> {
        check_key(&self.key).map_err(|what| Error::Malformed {
            uri: self.uri.clone(),
            what: what.into(),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// What replaces a query string or userinfo in a recorded URI.
pub const REDACTED: &str = "<redacted>";

/// A URI as it may be recorded (status, Events, logs, report.json, promoted.json, evidence):
/// what identifies, never what authorises. An http(s) URL loses its userinfo, query string and
/// fragment (presigned `X-Amz-Signature=`, SAS `sig=`, `user:password@`); any other remote
/// scheme loses what follows a `?`. Local paths and `file://` URIs are unchanged (`?` and `#`
/// are file name characters there). The digest, not the URL, is what evidence binds.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    if scheme_lc == "file" || scheme.is_empty() {
        return uri.to_string();
    }
    let web = matches!(scheme_lc.as_str(), "http" | "https" | "oci");
    let cut = if web {
        rest.find(['?', '#'])
    } else {
        rest.find('?')
    };
    let (kept, redacted_query) = match cut {
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    let (authority, path) = kept.split_at(kept.find('/').unwrap_or(kept.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) if web => format!("{REDACTED}@{host}"),
        _ => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if redacted_query {
        out.push('?');
        out.push_str(REDACTED);
    }
    out
}

/// [`redact`] applied to every URI inside a free text (an error message, a log line): a URI
/// starts at `scheme://` and runs to the next blank, quote, backtick or angle bracket.
pub fn redact_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |j| {
                j + rest[j..].chars().next().map_or(1, char::len_utf8)
            });
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The scheme of OCI registry references.
pub const OCI_SCHEME: &str = "oci://";

/// An OCI promotion target, `oci://REGISTRY/REPOSITORY:TAG` (pushed by `crate::oci`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciTarget {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl OciTarget {
    pub fn is_oci(uri: &str) -> bool {
        uri.starts_with(OCI_SCHEME)
    }

    pub fn parse(uri: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Malformed {
            uri: uri.into(),
            what: format!("{why} (write oci://REGISTRY/REPOSITORY:TAG)"),
        };
        let rest = uri
            .strip_prefix(OCI_SCHEME)
            .ok_or_else(|| bad("no oci:// prefix"))?;
        if rest.contains('@') {
            return Err(bad(
                "a digest names fixed content; promotion needs a tag to move",
            ));
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        check_registry(registry).map_err(|why| bad(&why))?;
        let (repository, tag) = path
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .ok_or_else(|| bad("no :TAG"))?;
        let r: Reference = format!("{registry}/{repository}:{tag}")
            .parse()
            .map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        if r.registry() != registry || r.repository() != repository {
            return Err(bad(
                "the registry must be a host name (with a dot or a port)",
            ));
        }
        Ok(Self {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
        })
    }

    /// A reference to read (`kompress verify`): `oci://REGISTRY/REPOSITORY:TAG` or
    /// `@sha256:<64 hex>`, the registry a host name or address with a port in 1..=65535.
    pub fn reference(uri: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::Malformed {
            uri: uri.into(),
            what: format!("{why} (write oci://REGISTRY/REPOSITORY:TAG or @sha256:DIGEST)"),
        };
        let rest = uri
            .strip_prefix(OCI_SCHEME)
            .ok_or_else(|| bad("no oci:// prefix"))?;
        let (registry, _) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        check_registry(registry).map_err(|why| bad(&why))?;
        let r: Reference = rest
            .parse()
            .map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        if r.registry() != registry {
            return Err(bad(
                "the registry must be a host name (with a dot or a port)",
            ));
        }
        if let Some(d) = r.digest() {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("the digest is not sha256:<64 lowercase hex>"));
            }
        }
        Ok(r)
    }

    pub fn tagged(&self) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            self.tag.clone(),
        )
    }

    pub fn at(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.into(),
        )
    }

    /// `oci://REGISTRY/REPOSITORY@DIGEST`.
    pub fn uri_at(&self, digest: &str) -> String {
        format!("{OCI_SCHEME}{}/{}@{digest}", self.registry, self.repository)
    }

    pub fn repo_uri(&self) -> String {
        format!("{OCI_SCHEME}{}/{}", self.registry, self.repository)
    }
}

/// A registry as references write it: `host[:port]`, the host DNS labels, an IPv4 address
/// or a bracketed IPv6 one, the port 1..=65535.
pub fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("registry `{registry}`: an unclosed `[`"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry `{registry}`: not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "registry host `{host}` is not a host name or address"
            ));
        }
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => {
                return Err(format!("registry port `{p}` is not a port (1 to 65535)"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_and_ports_follow_the_reference_grammar() {
        for ok in [
            "ghcr.io",
            "127.0.0.1:5000",
            "localhost:1",
            "reg.example:65535",
            "[::1]:5000",
        ] {
            assert_eq!(check_registry(ok), Ok(()), "{ok}");
        }
        for bad in [
            "host:99999",
            "host:0",
            "host:",
            "host:+80",
            "ho_st:5000",
            "-a.io",
            "a..io",
            "[zz]:1",
        ] {
            assert!(check_registry(bad).is_err(), "{bad}");
        }
        let e = OciTarget::parse("oci://host:99999/x:v1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("port `99999`") && e.contains("oci://host:99999/x:v1"),
            "{e}"
        );
        let d = format!("oci://reg.example:5000/a/b@sha256:{}", "ab".repeat(32));
        assert_eq!(OciTarget::reference(&d).unwrap().repository(), "a/b");
        assert!(OciTarget::reference("oci://reg.example/a/b:v1").is_ok());
        for bad in [
            "oci://host:99999/x:v1",
            "oci://reg.example/a@sha256:xyz",
            "oci://reg.example/a@sha256:ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
            "oci://reg.example",
            "reg.example/a:v1",
        ] {
            assert!(OciTarget::reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recorded_uris_keep_no_signature_password_or_sas_token() {
        let cases = [
            (
                "https://b.s3.amazonaws.com/m.onnx?X-Amz-Signature=abc&X-Amz-Credential=k",
                "https://b.s3.amazonaws.com/m.onnx?<redacted>",
            ),
            (
                "https://acct.blob.core.windows.net/c/d.npz?sv=1&sig=s3cr3t#frag",
                "https://acct.blob.core.windows.net/c/d.npz?<redacted>",
            ),
            (
                "https://user:pw@host:8443/m.onnx",
                "https://<redacted>@host:8443/m.onnx",
            ),
            ("http://host/m.onnx#sig=x", "http://host/m.onnx?<redacted>"),
            ("s3://b/k.onnx?sig=x", "s3://b/k.onnx?<redacted>"),
            // What identifies stays as it was.
            (
                "s3://b/my dir/modèle #1.onnx",
                "s3://b/my dir/modèle #1.onnx",
            ),
            (
                "abfss://data@acct.dfs.core.windows.net/m.onnx",
                "abfss://data@acct.dfs.core.windows.net/m.onnx",
            ),
            ("/tmp/a?b#c.onnx", "/tmp/a?b#c.onnx"),
            ("file:///tmp/a?b.onnx", "file:///tmp/a?b.onnx"),
            ("oci://reg:5000/m:v1", "oci://reg:5000/m:v1"),
        ];
        for (uri, want) in cases {
            assert_eq!(redact(uri), want, "{uri}");
        }
    }

    #[test]
    fn every_uri_in_a_message_is_redacted() {
        let msg = "fetching `https://h/m.onnx?sig=SECRET` failed (see https://u:p@h/x): \
                   ERROR \"s3://b/k?X-Amz-Signature=SECRET2\" ü";
        let r = redact_in(msg);
        assert!(!r.contains("SECRET") && !r.contains("u:p@"), "{r}");
        assert_eq!(
            r,
            "fetching `https://h/m.onnx?<redacted>` failed (see https://<redacted>@h/x): \
             ERROR \"s3://b/k?<redacted>\" ü"
        );
        assert_eq!(redact_in("no uri here: a://"), "no uri here: a://");
        assert_eq!(redact_in("ü://x?y"), "ü://x?y");
    }

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
    fn http_paths_are_decoded_into_keys() {
        let web = Location::parse("https://example.com/my%20models/mod%C3%A8le.onnx").unwrap();
        assert_eq!(web.key(), "my models/modèle.onnx");
    }

    #[test]
    fn keys_are_never_percent_encoded() {
        let l = Location::parse("s3://b/my dir/modèle #1.onnx").unwrap();
        assert_eq!(l.key(), "my dir/modèle #1.onnx");
    }

    #[test]
    fn local_paths_and_file_uris_are_absolute_keys() {
        let l = Location::parse("file:///tmp/x/model.onnx").unwrap();
        assert_eq!(l.local_path(), Some(PathBuf::from("/tmp/x/model.onnx")));
        let rel = Location::parse("examples/m.onnx").unwrap();
        assert!(rel.local_path().unwrap().is_absolute());
        let dotted = Location::parse("/tmp//a/./b.onnx").unwrap();
        assert_eq!(dotted.local_path(), Some(PathBuf::from("/tmp/a/b.onnx")));
    }

    #[test]
    fn local_paths_with_spaces_and_letters_round_trip() {
        for p in [
            "/tmp/my models/modèle v1.onnx",
            "/tmp/数据/模型.onnx",
            "/tmp/a%20b/c#1.onnx",
        ] {
            let l = Location::parse(p).unwrap();
            assert_eq!(l.local_path(), Some(PathBuf::from(p)), "{p}");
            assert_eq!(l.uri, p);
            let j = l.parent().join("runs/r 1/modèle.onnx");
            let want = format!("{}/runs/r 1/modèle.onnx", p.rsplit_once('/').unwrap().0);
            assert_eq!(j.uri, want);
            assert_eq!(j.local_path(), Some(PathBuf::from(&want)));
        }
        let f = Location::parse("file:///tmp/my models/x.onnx").unwrap();
        assert_eq!(
            f.join("a b").local_path(),
            Some(PathBuf::from("/tmp/my models/x.onnx/a b"))
        );
        assert_eq!(f.join("a b").uri, "file:///tmp/my models/x.onnx/a b");
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
        for uri in ["s3://b/a/../c", "/tmp/../etc/passwd", "gs://b/..", "x/../y"] {
            let e = Location::parse(uri).unwrap_err();
            assert!(e.is_permanent());
            let e = e.to_string();
            assert!(
                e.contains("`..` is not allowed in a storage path") && e.contains(uri),
                "{e}"
            );
        }
        let e = Location::parse("s3://b/a//c").unwrap_err().to_string();
        assert!(e.contains("empty path segment"), "{e}");
        // A `..` joined later is refused when used, with the same words.
        let j = Location::parse("s3://b/m/model.onnx")
            .unwrap()
            .parent()
            .join("../secret");
        let e = j.check().unwrap_err().to_string();
        assert!(e.contains("`..` is not allowed"), "{e}");
    }
}
