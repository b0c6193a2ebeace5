//! source: what a policy's `source` matches (pure). The URI pattern (`*` within one segment),
//! or an OCI repository's tags; the filter's named groups, a version's key and version, and
//! how versions are ordered.

use crate::api::{PolicySource, VersionOrdering};
use crate::uri::Location;
use regex::Regex;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Longest filter regex, compiled (bytes of the compiled program): a bound on the work one
/// path costs.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// A parsed `spec.source`: where listing starts and what a listed path must look like.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The segments before the first wildcard: where listing starts.
    pub prefix: Location,
    /// The path under `prefix` as a regex, one group per wildcard segment.
    segments: Regex,
    /// Number of wildcard segments (the last is the version).
    wildcards: usize,
    filter: Option<Regex>,
    pub ordering: VersionOrdering,
}

/// A listed model file that matched, with what the job template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub key: String,
    pub version: String,
    /// `path`, `key`, `version` and the filter's named groups.
    pub vars: BTreeMap<String, String>,
}

/// What is wrong with a source, and in which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: &'static str, message: impl Into<String>) -> SourceError {
    SourceError {
        field,
        message: message.into(),
    }
}

/// A parsed `spec.source`: a storage pattern, or an OCI repository's tags.
#[derive(Debug, Clone)]
pub enum Source {
    Store(Pattern),
    Oci(TagPattern),
}

impl Source {
    pub fn parse(source: &PolicySource) -> Result<Self, SourceError> {
        if source.uri.trim().starts_with(crate::uri::OCI_SCHEME) {
            TagPattern::parse(source).map(Self::Oci)
        } else {
            if source.registry.is_some() {
                return Err(err(
                    "spec.source.registry",
                    "applies to an oci:// spec.source.uri only",
                ));
            }
            Pattern::parse(source).map(Self::Store)
        }
    }

    pub fn ordering(&self) -> VersionOrdering {
        match self {
            Self::Store(p) => p.ordering,
            Self::Oci(t) => t.ordering,
        }
    }

    /// The names a job template may use.
    pub fn variables(&self) -> Vec<String> {
        match self {
            Self::Store(p) => p.variables(),
            Self::Oci(t) => t.variables(),
        }
    }
}

/// A parsed `oci://REGISTRY/REPOSITORY` source: its tags, filtered and ordered.
#[derive(Debug, Clone)]
pub struct TagPattern {
    pub registry: String,
    pub repository: String,
    /// `spec.source.registry.plainHttp`.
    pub plain_http: bool,
    filter: Option<Regex>,
    pub ordering: VersionOrdering,
}

fn filter_regex(f: &Option<String>) -> Result<Option<Regex>, SourceError> {
    f.as_ref()
        .map(|f| {
            regex::RegexBuilder::new(f)
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| err("spec.source.filter", format!("not a valid regex: {e}")))
        })
        .transpose()
}

impl TagPattern {
    pub fn parse(source: &PolicySource) -> Result<Self, SourceError> {
        const URI: &str = "spec.source.uri";
        let uri = source.uri.trim();
        let bad = |why: &str| {
            err(
                URI,
                format!(
                    "`{uri}`: {why} (write oci://REGISTRY/REPOSITORY; the tags are the versions)"
                ),
            )
        };
        let rest = uri
            .strip_prefix(crate::uri::OCI_SCHEME)
            .ok_or_else(|| bad("no oci:// prefix"))?
            .trim_end_matches('/');
        if rest.contains('@') || rest.contains('*') {
            return Err(bad(
                "a repository is listed whole: no digest and no wildcard",
            ));
        }
        let (registry, repository) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        if repository
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            return Err(bad(
                "a tag names one version: name the repository and choose tags with \
                 spec.source.filter",
            ));
        }
        crate::uri::check_registry(registry).map_err(|why| bad(&why))?;
        let r: oci_client::Reference = format!("{registry}/{repository}:latest")
            .parse()
            .map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        if r.registry() != registry || r.repository() != repository {
            return Err(bad(
                "not a repository name (lowercase letters, digits and separators) under a \
                 registry host name (with a dot or a port)",
            ));
        }
        Ok(Self {
            registry: registry.into(),
            repository: repository.into(),
            plain_http: source
                .registry
                .as_ref()
                .and_then(|r| r.plain_http)
                .unwrap_or(false),
            filter: filter_regex(&source.filter)?,
            ordering: source.ordering(),
        })
    }

    /// `oci://REGISTRY/REPOSITORY`.
    pub fn repo_uri(&self) -> String {
        format!(
            "{}{}/{}",
            crate::uri::OCI_SCHEME,
            self.registry,
            self.repository
        )
    }

    /// `oci://REGISTRY/REPOSITORY@<digest>`: what a job reads.
    pub fn uri_at(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repo_uri())
    }

    /// `tag`, `path` (the tag), `key` (the repository), `version`, `id` and the filter's
    /// named groups.
    pub fn variables(&self) -> Vec<String> {
        let mut v: Vec<String> = ["tag", "path", "key", "version", "id"]
            .map(String::from)
            .to_vec();
        if let Some(f) = &self.filter {
            for n in f.capture_names().flatten() {
                if !v.iter().any(|x| x == n) {
                    v.push(n.to_string());
                }
            }
        }
        v
    }

    /// A tag the filter keeps, with its version (the `version` group, else the tag) and
    /// variables; None when the filter does not match it or the ordering cannot place its
    /// version. The key is always the repository (a `key` group is a variable like another).
    pub fn matches(&self, tag: &str) -> Option<Matched> {
        let mut vars = BTreeMap::new();
        let mut version = tag.to_string();
        if let Some(f) = &self.filter {
            let caps = f.captures(tag)?;
            for name in f.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    vars.insert(name.to_string(), m.as_str().to_string());
                }
            }
            if let Some(v) = vars.get("version") {
                version = v.clone();
            }
        }
        if version.is_empty() || version_sort_key(self.ordering, &version).is_none() {
            return None;
        }
        let key = self.repository.clone();
        vars.insert("tag".into(), tag.to_string());
        vars.insert("path".into(), tag.to_string());
        vars.insert("key".into(), key.clone());
        vars.insert("version".into(), version.clone());
        Some(Matched { key, version, vars })
    }

    pub fn compare(&self, a: &str, b: &str) -> Ordering {
        compare_versions(self.ordering, a, b)
    }
}

impl Pattern {
    pub fn parse(source: &PolicySource) -> Result<Self, SourceError> {
        const URI: &str = "spec.source.uri";
        let uri = source.uri.trim();
        if uri.starts_with("https://") || uri.starts_with("http://") {
            return Err(err(
                URI,
                "must be an object storage prefix (s3://, gs://, az:// or file://) or an OCI \
                 repository (oci://REGISTRY/REPOSITORY): web servers cannot be listed",
            ));
        }
        let (scheme_host, path) = split_root(uri);
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let first = segs.iter().position(|s| s.contains('*')).ok_or_else(|| {
            err(
                URI,
                format!(
                    "`{uri}` has no `*`: write a pattern such as s3://models/*/v*/model.onnx \
                     (the last wildcard's segment is the version)"
                ),
            )
        })?;
        if segs.iter().any(|s| s.contains("**")) {
            return Err(err(
                URI,
                "`**` is not supported: `*` matches within one segment",
            ));
        }
        let prefix_uri = format!("{scheme_host}{}", segs[..first].join("/"));
        let prefix = Location::parse(&prefix_uri).map_err(|e| err(URI, e.to_string()))?;
        let mut re = String::from("^");
        let mut wildcards = 0;
        for (i, seg) in segs[first..].iter().enumerate() {
            if i > 0 {
                re.push('/');
            }
            if seg.contains('*') {
                wildcards += 1;
                re.push('(');
            }
            let parts: Vec<String> = seg.split('*').map(regex::escape).collect();
            re.push_str(&parts.join("[^/]+"));
            if seg.contains('*') {
                re.push(')');
            }
        }
        re.push('$');
        let segments = Regex::new(&re).map_err(|e| err(URI, e.to_string()))?;
        let filter = filter_regex(&source.filter)?;
        Ok(Self {
            prefix,
            segments,
            wildcards,
            filter,
            ordering: source.ordering(),
        })
    }

    /// The names a job template may use: `path`, `key`, `version`, `id` and the filter's
    /// named groups.
    pub fn variables(&self) -> Vec<String> {
        let mut v: Vec<String> = ["path", "key", "version", "id"].map(String::from).to_vec();
        if let Some(f) = &self.filter {
            for n in f.capture_names().flatten() {
                if !v.iter().any(|x| x == n) {
                    v.push(n.to_string());
                }
            }
        }
        v
    }

    /// `rel` (a path under the prefix, `/`-separated) when it matches the pattern and the
    /// filter, with its key, version and variables; None otherwise, or when the ordering
    /// cannot place its version.
    pub fn matches(&self, rel: &str) -> Option<Matched> {
        let caps = self.segments.captures(rel)?;
        let segs: Vec<&str> = (1..=self.wildcards)
            .filter_map(|i| caps.get(i).map(|m| m.as_str()))
            .collect();
        let (last, rest) = segs.split_last()?;
        let mut key = rest.join("/");
        let mut version = (*last).to_string();
        let mut vars = BTreeMap::new();
        if let Some(f) = &self.filter {
            let fc = f.captures(rel)?;
            for name in f.capture_names().flatten() {
                if let Some(m) = fc.name(name) {
                    vars.insert(name.to_string(), m.as_str().to_string());
                }
            }
            if let Some(k) = vars.get("key") {
                key = k.clone();
            }
            if let Some(v) = vars.get("version") {
                version = v.clone();
            }
        }
        if version.is_empty() || version_sort_key(self.ordering, &version).is_none() {
            return None;
        }
        vars.insert("path".into(), rel.to_string());
        vars.insert("key".into(), key.clone());
        vars.insert("version".into(), version.clone());
        Some(Matched { key, version, vars })
    }

    /// How two versions of one key compare under the policy's ordering (newest greatest).
    pub fn compare(&self, a: &str, b: &str) -> Ordering {
        compare_versions(self.ordering, a, b)
    }
}

/// `s3://bucket/` and `a/b` of `s3://bucket/a/b`; `file:///` and `x/y` of `file:///x/y`; a
/// plain path is a local one.
fn split_root(uri: &str) -> (String, &str) {
    match uri.split_once("://") {
        Some(("file", rest)) => ("file:///".into(), rest.trim_start_matches('/')),
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((host, path)) => (format!("{scheme}://{host}/"), path),
            None => (format!("{scheme}://{rest}/"), ""),
        },
        None => ("file:///".into(), uri.trim_start_matches('/')),
    }
}

/// What orders a version, or None when the ordering cannot place it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Semver(semver::Version),
    Number(u128),
    Natural(Vec<NaturalPart>),
    Text(String),
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NaturalPart {
    // digits sort before text at the same place: `v1` < `v1a`
    Digits(u128, usize),
    Text(String),
}

fn version_sort_key(ordering: VersionOrdering, v: &str) -> Option<SortKey> {
    match ordering {
        VersionOrdering::Semver => semver::Version::parse(v.strip_prefix('v').unwrap_or(v))
            .ok()
            .map(SortKey::Semver),
        VersionOrdering::Numerical => {
            let digits: String = v.chars().filter(char::is_ascii_digit).collect();
            digits.parse().ok().map(SortKey::Number)
        }
        VersionOrdering::Alphabetical => Some(SortKey::Text(v.to_string())),
        VersionOrdering::Natural => {
            let mut parts = Vec::new();
            let mut chars = v.chars().peekable();
            while let Some(&c) = chars.peek() {
                let digit = c.is_ascii_digit();
                let mut run = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() != digit {
                        break;
                    }
                    run.push(d);
                    chars.next();
                }
                parts.push(match run.parse::<u128>() {
                    Ok(n) if digit => NaturalPart::Digits(n, run.len()),
                    _ => NaturalPart::Text(run),
                });
            }
            Some(SortKey::Natural(parts))
        }
    }
}

/// `a` versus `b` (newest greatest); a version the ordering cannot place is oldest.
pub fn compare_versions(ordering: VersionOrdering, a: &str, b: &str) -> Ordering {
    version_sort_key(ordering, a)
        .cmp(&version_sort_key(ordering, b))
        .then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str, filter: Option<&str>, ordering: Option<VersionOrdering>) -> PolicySource {
        let ordering = ordering.unwrap_or_default();
        PolicySource {
            uri: uri.into(),
            filter: filter.map(String::from),
            registry: None,
            ordering,
            latest: None,
            interval: None,
            suspend: None,
        }
    }

    #[test]
    fn wildcards_match_within_one_segment_and_the_last_is_the_version() {
        let p = Pattern::parse(&source("s3://models/*/v*/model.onnx", None, None)).unwrap();
        assert_eq!(p.prefix.uri, "s3://models");
        let m = p.matches("resnet/v3/model.onnx").unwrap();
        assert_eq!((m.key.as_str(), m.version.as_str()), ("resnet", "v3"));
        assert_eq!(m.vars["path"], "resnet/v3/model.onnx");
        // `*` never crosses a `/`, and the rest of the path must match exactly
        assert_eq!(p.matches("a/b/v3/model.onnx"), None);
        assert_eq!(p.matches("resnet/v3/model.onnx.bak"), None);
        assert_eq!(p.matches("resnet/3/model.onnx"), None);
        assert_eq!(p.matches("resnet/v/model.onnx"), None);
    }

    #[test]
    fn listing_starts_before_the_first_wildcard() {
        let p = Pattern::parse(&source("file:///data/models/*/model.onnx", None, None)).unwrap();
        assert_eq!(
            p.prefix.local_path().unwrap().to_str(),
            Some("/data/models")
        );
        let m = p.matches("7/model.onnx").unwrap();
        assert_eq!((m.key.as_str(), m.version.as_str()), ("", "7"));
        let p = Pattern::parse(&source("gs://b/team/*/*/*.onnx", None, None)).unwrap();
        assert_eq!(p.prefix.uri, "gs://b/team");
        let m = p.matches("nlp/bert/v2.onnx").unwrap();
        assert_eq!(
            (m.key.as_str(), m.version.as_str()),
            ("nlp/bert", "v2.onnx")
        );
    }

    #[test]
    fn bad_patterns_name_their_field() {
        for (uri, filter, field, says) in [
            (
                "s3://models/resnet/model.onnx",
                None,
                "spec.source.uri",
                "has no `*`",
            ),
            ("s3://models/**/model.onnx", None, "spec.source.uri", "`**`"),
            (
                "https://web.example/m/*.onnx",
                None,
                "spec.source.uri",
                "web servers cannot be listed",
            ),
            (
                "s3://m/*/x",
                Some("(?P<v"),
                "spec.source.filter",
                "not a valid regex",
            ),
        ] {
            let e = Pattern::parse(&source(uri, filter, None)).unwrap_err();
            assert_eq!(e.field, field, "{uri}");
            assert!(e.message.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn filter_groups_become_variables_and_may_name_key_and_version() {
        let p = Pattern::parse(&source(
            "s3://models/*/*/model.onnx",
            Some(r"^(?P<team>[a-z]+)-(?P<key>[a-z]+)/release-(?P<version>[0-9.]+)/"),
            Some(VersionOrdering::Semver),
        ))
        .unwrap();
        let m = p.matches("nlp-bert/release-1.2.0/model.onnx").unwrap();
        assert_eq!((m.key.as_str(), m.version.as_str()), ("bert", "1.2.0"));
        assert_eq!(m.vars["team"], "nlp");
        assert!(p.variables().contains(&"team".to_string()));
        // the filter must match too; a version semver cannot place is skipped
        assert_eq!(p.matches("nlp-bert/nightly/model.onnx"), None);
        assert_eq!(p.matches("nlp-bert/release-1.2/model.onnx"), None);
    }

    #[test]
    fn oci_sources_are_repositories_whose_tags_the_filter_keeps() {
        let src = source(
            "oci://127.0.0.1:5000/team/digits",
            Some(r"^v(?P<version>[0-9]+)$"),
            Some(VersionOrdering::Numerical),
        );
        let Source::Oci(t) = Source::parse(&src).unwrap() else {
            panic!("an oci source")
        };
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str()),
            ("127.0.0.1:5000", "team/digits")
        );
        assert_eq!(
            t.uri_at("sha256:ab"),
            "oci://127.0.0.1:5000/team/digits@sha256:ab"
        );
        let m = t.matches("v12").unwrap();
        assert_eq!((m.key.as_str(), m.version.as_str()), ("team/digits", "12"));
        assert_eq!(m.vars["tag"], "v12");
        assert_eq!(m.vars["path"], "v12");
        for skipped in ["latest", "junk", "v1-rc", "v"] {
            assert_eq!(t.matches(skipped), None, "{skipped}");
        }
        // ordered by the version group: v2 < v10 numerically
        let mut tags = vec!["v10", "v2", "v9"];
        tags.sort_by(|a, b| {
            t.compare(
                &t.matches(a).unwrap().version,
                &t.matches(b).unwrap().version,
            )
        });
        assert_eq!(tags, ["v2", "v9", "v10"]);
        // without a filter, every tag is a version (semver skips what it cannot place)
        let t = TagPattern::parse(&source(
            "oci://reg.example/bert",
            None,
            Some(VersionOrdering::Semver),
        ))
        .unwrap();
        assert_eq!(t.matches("v1.2.3").unwrap().version, "v1.2.3");
        assert_eq!(t.matches("latest"), None);
        assert!(t.variables().contains(&"tag".to_string()));
    }

    #[test]
    fn bad_oci_sources_name_their_field() {
        let pinned = format!("oci://reg.example/bert@sha256:{}", "a".repeat(64));
        for (uri, says) in [
            ("oci://reg.example/bert:v1", "a tag names one version"),
            (pinned.as_str(), "no digest"),
            ("oci://reg.example", "no repository"),
            ("oci://reg.example/Bert", "invalid reference format"),
            ("oci://host:99999/bert", "port"),
        ] {
            let e = Source::parse(&source(uri, None, None)).unwrap_err();
            assert_eq!(e.field, "spec.source.uri", "{uri}");
            assert!(e.message.contains(says), "{uri}: {e}");
        }
        let mut s = source("s3://m/*/model.onnx", None, None);
        s.registry = Some(Default::default());
        assert_eq!(Source::parse(&s).unwrap_err().field, "spec.source.registry");
        let e = Source::parse(&source("oci://r.io/a", Some("(?P<v"), None)).unwrap_err();
        assert_eq!(e.field, "spec.source.filter");
    }

    #[test]
    fn natural_order_compares_digit_runs_as_numbers() {
        let mut v = vec!["v10", "v2", "v1", "v1a", "v2.10", "v2.9"];
        v.sort_by(|a, b| compare_versions(VersionOrdering::Natural, a, b));
        assert_eq!(v, ["v1", "v1a", "v2", "v2.9", "v2.10", "v10"]);
        v.sort_by(|a, b| compare_versions(VersionOrdering::Alphabetical, a, b));
        assert_eq!(v, ["v1", "v10", "v1a", "v2", "v2.10", "v2.9"]);
    }

    #[test]
    fn semver_and_numerical_orders() {
        let mut v = vec!["v1.10.0", "1.2.0", "v1.2.0-rc.1", "v1.9.3"];
        v.sort_by(|a, b| compare_versions(VersionOrdering::Semver, a, b));
        assert_eq!(v, ["v1.2.0-rc.1", "1.2.0", "v1.9.3", "v1.10.0"]);
        let mut n = vec!["build-120", "build-9", "build-1000"];
        n.sort_by(|a, b| compare_versions(VersionOrdering::Numerical, a, b));
        assert_eq!(n, ["build-9", "build-120", "build-1000"]);
    }
}
