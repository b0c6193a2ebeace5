//! scan: list a policy's source and keep the newest `latest` versions of each key, each with
//! what identifies its content. Memory is bounded by what is kept (keys x `latest`), never by
//! the size of the prefix: the listing is streamed page by page through a filter.

use super::source::{Matched, Pattern, TagPattern};
use crate::api::policy::MAX_TRACKED_VERSIONS;
use crate::storage::{Listed, Storage};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most objects one scan lists before it stops (a prefix that large wants a narrower
/// pattern); what was listed until then is used.
pub const MAX_OBJECTS: u64 = 1_000_000;

/// A model version found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub version: String,
    pub uri: String,
    /// `sha256:<hex>`, or `etag:<etag>/<size>` / `version:<id>/<size>` as the store reports.
    pub id: String,
    /// The content's sha256 when the controller hashed it.
    pub sha256: Option<String>,
    /// With an `oci://` source: the tag it was found at.
    pub tag: Option<String>,
    pub vars: BTreeMap<String, String>,
}

/// What one scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The newest `latest` versions of each key, oldest first within a key.
    pub found: Vec<Found>,
    /// Objects listed.
    pub listed: u64,
    /// False when the listing stopped at [`MAX_OBJECTS`].
    pub complete: bool,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot list {uri}")]
    Storage {
        uri: String,
        #[source]
        source: crate::storage::Error,
    },
    #[error("cannot list {uri}")]
    Registry {
        uri: String,
        #[source]
        source: crate::oci::Error,
    },
    #[error(
        "the source has more than {keys} keys; at {latest} versions each that is more than \
         {MAX_TRACKED_VERSIONS} versions to track: lower spec.source.latest or narrow \
         spec.source.uri / spec.source.filter"
    )]
    TooManyKeys { keys: usize, latest: usize },
}

impl ScanError {
    /// Whether waiting can help (an unreachable store) or the spec must change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Storage { source, .. } => !source.is_permanent(),
            Self::Registry { source, .. } => !source.is_permanent(),
            Self::TooManyKeys { .. } => false,
        }
    }
}

/// sha256 of local model files, by (uri, size, modification second): a rescan hashes only
/// what changed. A stale entry can only pin an old digest, which the worker then refuses.
#[derive(Default)]
pub struct HashCache(Mutex<HashMap<HashKey, String>>);

/// A local file as listed: URI, size, modification second.
type HashKey = (String, u64, Option<i64>);

impl HashCache {
    /// Most entries kept: one per tracked version of many policies.
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, k: &HashKey) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .cloned()
    }

    fn put(&self, k: HashKey, v: String) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= Self::MAX_ENTRIES {
            m.clear();
        }
        m.insert(k, v);
    }
}

/// Lists `pattern`'s prefix and keeps the newest `latest` versions of each key.
pub async fn scan(
    storage: &Storage,
    pattern: &Pattern,
    latest: usize,
    hashes: &HashCache,
) -> Result<Scan, ScanError> {
    let max_keys = (MAX_TRACKED_VERSIONS / latest.max(1)).max(1);
    let mut kept: BTreeMap<String, Vec<(Matched, Listed)>> = BTreeMap::new();
    let mut listed = 0u64;
    let mut too_many = false;
    let mut visit = |obj: Listed| {
        listed += 1;
        let Some(m) = pattern.matches(&obj.key) else {
            return;
        };
        if !kept.contains_key(&m.key) && kept.len() == max_keys {
            too_many = true;
            return;
        }
        let versions = kept.entry(m.key.clone()).or_default();
        let at = versions.partition_point(|(v, _)| pattern.compare(&v.version, &m.version).is_lt());
        if versions
            .get(at)
            .is_some_and(|(v, _)| v.version == m.version)
        {
            return; // the same version twice (a filter's version group): the first wins
        }
        versions.insert(at, (m, obj));
        if versions.len() > latest {
            versions.remove(0);
        }
    };
    let complete = storage
        .scan(&pattern.prefix, MAX_OBJECTS, &mut visit)
        .await
        .map_err(|source| ScanError::Storage {
            uri: pattern.prefix.uri.clone(),
            source,
        })?;
    if too_many {
        return Err(ScanError::TooManyKeys {
            keys: max_keys,
            latest,
        });
    }
    let mut found = Vec::new();
    for (m, obj) in kept.into_values().flatten() {
        let loc = pattern.prefix.join(&obj.key);
        let (id, sha256) = identify(storage, &loc, &obj, hashes).await?;
        let mut vars = m.vars;
        vars.insert("id".into(), short_id(&id));
        found.push(Found {
            key: m.key,
            version: m.version,
            uri: loc.uri.clone(),
            id,
            sha256,
            tag: None,
            vars,
        });
    }
    Ok(Scan {
        found,
        listed,
        complete,
    })
}

/// Lists an OCI repository's tags (bounded: [`crate::oci::MAX_TAGS`]), keeps the newest
/// `latest` the filter matches, and resolves each to its manifest digest (a GET of the
/// manifest, capped, hashed here): the identity, and what the job is pinned to. Two kept tags
/// naming the same manifest are one version (the newer tag's). The controller's own Docker
/// config is its credentials.
pub async fn scan_oci(pattern: &TagPattern, latest: usize) -> Result<Scan, ScanError> {
    let err = |source| ScanError::Registry {
        uri: pattern.repo_uri(),
        source,
    };
    let session = crate::oci::Session::for_settings(
        &pattern.registry,
        pattern.plain_http,
        "spec.source.registry",
    )
    .await
    .map_err(err)?;
    let tags = session.tags(&pattern.repository).await.map_err(err)?;
    let listed = tags.len() as u64;
    let kept = newest_tags(pattern, tags, latest);
    let mut found: Vec<Found> = Vec::new();
    for (tag, m) in kept {
        let r = oci_client::Reference::with_tag(
            pattern.registry.clone(),
            pattern.repository.clone(),
            tag.clone(),
        );
        // A tag deleted since the listing is skipped: the next scan will not list it.
        let Some((_, digest)) = session.manifest(&r).await.map_err(err)? else {
            continue;
        };
        let v = Found {
            key: m.key,
            version: m.version,
            uri: pattern.uri_at(&digest),
            id: digest.clone(),
            sha256: None,
            tag: Some(tag),
            vars: m.vars,
        };
        // oldest first: a later (newer) tag of the same manifest replaces the earlier one
        found.retain(|f| f.id != v.id);
        found.push(v);
    }
    for f in &mut found {
        f.vars.insert("id".into(), short_id(&f.id));
    }
    Ok(Scan {
        found,
        listed,
        complete: true,
    })
}

/// The newest `latest` tags the pattern matches, oldest first, with what they matched; a
/// version two tags share (a filter's version group) is the first listed tag's.
pub fn newest_tags(
    pattern: &TagPattern,
    tags: Vec<String>,
    latest: usize,
) -> Vec<(String, Matched)> {
    let mut kept: Vec<(String, Matched)> = Vec::new();
    for tag in tags {
        let Some(m) = pattern.matches(&tag) else {
            continue;
        };
        let at = kept.partition_point(|(_, v)| pattern.compare(&v.version, &m.version).is_lt());
        if kept.get(at).is_some_and(|(_, v)| v.version == m.version) {
            continue;
        }
        kept.insert(at, (tag, m));
        if kept.len() > latest.max(1) {
            kept.remove(0);
        }
    }
    kept
}

/// What identifies a version's content: the store's entity tag or version id with the size
/// when it reports one, else the sha256 of the content (local files: always).
async fn identify(
    storage: &Storage,
    loc: &crate::uri::Location,
    obj: &Listed,
    hashes: &HashCache,
) -> Result<(String, Option<String>), ScanError> {
    if let Some(v) = &obj.version {
        return Ok((format!("version:{v}/{}", obj.size), None));
    }
    if let Some(e) = &obj.e_tag {
        return Ok((format!("etag:{}/{}", e.trim_matches('"'), obj.size), None));
    }
    let key = (loc.uri.clone(), obj.size, obj.modified_s);
    if let Some(h) = hashes.get(&key) {
        return Ok((format!("sha256:{h}"), Some(h)));
    }
    let err = |source| ScanError::Storage {
        uri: loc.uri.clone(),
        source,
    };
    let (_, h) = storage.sha256_of(loc).await.map_err(err)?.ok_or_else(|| {
        err(crate::storage::Error::NotFound {
            uri: loc.uri.clone(),
            where_: "removed while the policy's scan hashed it".into(),
            source: None,
        })
    })?;
    hashes.put(key, h.clone());
    Ok((format!("sha256:{h}"), Some(h)))
}

/// 12 hex digits of an identity: `{{.id}}` in templates.
pub fn short_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))[..12].to_string()
}

/// Longest CompressionJob name a policy makes: its worker Job's name (`<name>-g<N>-<8 hex>`)
/// then fits in 63 characters without truncation.
const MAX_JOB_NAME: usize = 50;

/// `<policy>-<10 hex>`: the same for a policy and a version (its URI and identity) however
/// often it is scanned or the controller restarts, so a version gets one CompressionJob.
pub fn job_name(policy: &str, uri: &str, id: &str) -> String {
    let digest = hex::encode(Sha256::digest(format!("{policy}\n{uri}\n{id}")));
    let mut prefix: String = policy.chars().take(MAX_JOB_NAME - 11).collect();
    while prefix.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        prefix.pop();
    }
    format!("{prefix}-{}", &digest[..10])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PolicySource;

    #[test]
    fn job_names_are_stable_short_and_differ_by_version() {
        let a = job_name("digits", "file:///m/a/v1/model.onnx", "sha256:00");
        assert_eq!(
            a,
            job_name("digits", "file:///m/a/v1/model.onnx", "sha256:00")
        );
        assert_ne!(
            a,
            job_name("digits", "file:///m/a/v1/model.onnx", "sha256:01")
        );
        assert_ne!(
            a,
            job_name("digits", "file:///m/a/v2/model.onnx", "sha256:00")
        );
        assert!(a.starts_with("digits-") && a.len() == "digits-".len() + 10);
        let long = job_name(&"p-".repeat(60), "u", "i");
        assert!(long.len() <= MAX_JOB_NAME, "{long}");
        assert!(!long.contains("--"), "{long}");
    }

    #[test]
    fn the_newest_tags_the_filter_keeps_are_the_versions() {
        let source = PolicySource {
            uri: "oci://reg.example/team/digits".into(),
            filter: Some(r"^v(?P<version>[0-9]+)$".into()),
            registry: None,
            ordering: crate::api::VersionOrdering::Numerical,
            latest: Some(2),
            interval: None,
            suspend: None,
        };
        let t = TagPattern::parse(&source).unwrap();
        let tags = ["v1", "latest", "v10", "junk", "v2", "v02", "sha256-abc"]
            .map(String::from)
            .to_vec();
        let kept = newest_tags(&t, tags.clone(), 2);
        let got: Vec<(&str, &str)> = kept
            .iter()
            .map(|(tag, m)| (tag.as_str(), m.version.as_str()))
            .collect();
        // the newest two by the version group, numerically (v10 after v2); v02 orders just
        // before v2 (equal numbers fall back to the text)
        assert_eq!(got, [("v2", "2"), ("v10", "10")]);
        assert_eq!(kept[1].1.vars["tag"], "v10");
        assert_eq!(kept[1].1.key, "team/digits");
        let all: Vec<String> = newest_tags(&t, tags, 5)
            .into_iter()
            .map(|(tag, _)| tag)
            .collect();
        assert_eq!(all, ["v1", "v02", "v2", "v10"]);
        assert!(newest_tags(&t, vec!["latest".into()], 5).is_empty());
    }

    #[tokio::test]
    async fn a_scan_keeps_the_newest_versions_of_each_key_with_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        for (key, v) in [("a", "v1"), ("a", "v2"), ("a", "v10"), ("b", "v1")] {
            let d = dir.path().join(key).join(v);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("model.onnx"), format!("{key}{v}")).unwrap();
            std::fs::write(d.join("README"), "not a model").unwrap();
        }
        let source = PolicySource {
            uri: format!("file://{}/*/v*/model.onnx", dir.path().display()),
            filter: None,
            registry: None,
            ordering: Default::default(),
            latest: Some(2),
            interval: None,
            suspend: None,
        };
        let pattern = Pattern::parse(&source).unwrap();
        let hashes = HashCache::default();
        let s = scan(&Storage::new(None), &pattern, 2, &hashes)
            .await
            .unwrap();
        let got: Vec<(&str, &str)> = s
            .found
            .iter()
            .map(|f| (f.key.as_str(), f.version.as_str()))
            .collect();
        assert_eq!(got, [("a", "v2"), ("a", "v10"), ("b", "v1")]);
        assert_eq!(s.listed, 8);
        assert!(s.complete);
        let a10 = &s.found[1];
        let want = hex::encode(Sha256::digest(b"av10"));
        assert_eq!(a10.sha256.as_deref(), Some(want.as_str()));
        assert_eq!(a10.id, format!("sha256:{want}"));
        assert_eq!(a10.vars["path"], "a/v10/model.onnx");
        // one key too many for latest=60 (100 / 60 = 1 key)
        let e = scan(&Storage::new(None), &pattern, 60, &hashes)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("spec.source.latest"), "{e}");
    }
}
