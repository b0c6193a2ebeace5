//! The `CompressionPolicy` custom resource: "compress every new version of these models this
//! way". Its controller (crate::controller::policy) scans `source` each `interval` and creates
//! one CompressionJob per new model version from `jobTemplate`.
//!
//! `///` docs on fields are user documentation: they become `kubectl explain` output.

use super::{CompressionJobSpec, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default of `spec.source.interval`.
pub const DEFAULT_INTERVAL: &str = "5m";
/// Default of `spec.source.latest`.
pub const DEFAULT_LATEST: u32 = 5;
/// Default of `spec.concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 2;
/// Defaults of the history limits (CronJob's).
pub const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;
pub const DEFAULT_FAILED_HISTORY: u32 = 1;
/// Most versions a policy tracks at once (keys x `latest`), and so most entries of
/// `status.versions`: the status stays small however large the source is.
pub const MAX_TRACKED_VERSIONS: usize = 100;

/// Compress every new version of a set of models the same way: scan a storage prefix each
/// interval and create one CompressionJob per new model version from a template.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kompress.dev",
    version = "v1alpha1",
    kind = "CompressionPolicy",
    namespaced,
    shortname = "cmpp",
    doc = "Compress every new version of a set of models the same way: scan a storage prefix each interval and create one CompressionJob per new model version from a template.",
    category = "kompress",
    status = "CompressionPolicyStatus",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.uri"}"#,
    printcolumn = r#"{"name":"Latest","type":"string","jsonPath":".status.latestVersion"}"#,
    printcolumn = r#"{"name":"Promoted","type":"string","jsonPath":".status.latestPromoted"}"#,
    printcolumn = r#"{"name":"Versions","type":"integer","jsonPath":".status.versionsSeen"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompressionPolicySpec {
    /// Where new model versions appear.
    pub source: PolicySource,
    /// The CompressionJob made for each new version.
    pub job_template: JobTemplate,
    /// Most of this policy's CompressionJobs unfinished at once; new versions wait their turn.
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
    /// Finished CompressionJobs that succeeded to keep; older ones are deleted (their promoted
    /// models are never touched). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub successful_jobs_history_limit: Option<u32>,
    /// Finished CompressionJobs that were rejected or failed to keep. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub failed_jobs_history_limit: Option<u32>,
}

impl CompressionPolicySpec {
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }
    pub fn successful_history(&self) -> u32 {
        self.successful_jobs_history_limit
            .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY)
    }
    pub fn failed_history(&self) -> u32 {
        self.failed_jobs_history_limit
            .unwrap_or(DEFAULT_FAILED_HISTORY)
    }
}

/// A storage prefix with a pattern for model files, or an OCI repository whose tags are the
/// versions.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySource {
    /// The model files: a URI (s3://, gs://, az://, file://) whose path may hold `*`
    /// wildcards, each matching within one path segment, e.g.
    /// `s3://models/*/v*/model.onnx`. The segment of the last wildcard is the version
    /// (`v3`); the segments of the others make the key (`resnet`), which names one model
    /// whose versions are compared. Listing starts at the segments before the first wildcard.
    /// Or an OCI repository, `oci://REGISTRY/REPOSITORY` (no tag): its tags are listed, each
    /// tag the filter keeps is a version of the one key (the repository), and each job reads
    /// the ModelPack the tag named when it was scanned, pinned by its manifest digest
    /// (`oci://REGISTRY/REPOSITORY@sha256:...`): a tag moved to new bytes is a new version.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// A regular expression (RE2 syntax, unanchored: use ^ and $) the path under the listing
    /// prefix must match, e.g. `^(?P<name>[^/]+)/v(?P<version>[0-9.]+)/model.onnx$`. Its
    /// named groups can be used in the job template (`{{.name}}`); the groups `key` and
    /// `version`, when present, replace the wildcard's key and version. With an `oci://`
    /// source it is matched against each tag, e.g. `^v(?P<version>[0-9]+)$`: the group
    /// `version` is what `ordering` orders (else the whole tag); tags it does not match are
    /// left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub filter: Option<String>,
    /// With an `oci://` source: how to reach the registry. `plainHttp` applies to the
    /// controller's listing and to each job's pull; `secretRef` is given to each job as
    /// `spec.model.registry.secretRef` (the controller lists with the Docker config of its
    /// own environment and reads no Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<super::RegistrySpec>,
    /// How the versions of one key are ordered (newest last): `natural` (default; digit runs
    /// compare as numbers: v2 < v10), `semver` (a leading v is allowed; versions that are not
    /// semver are skipped), `numerical` (the version's digits as one number; others skipped)
    /// or `alphabetical`.
    #[serde(default)]
    pub ordering: VersionOrdering,
    /// Compress only the newest N versions of each key (older ones present when the policy
    /// is created are left alone). Default 5. Keys times `latest` may be at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub latest: Option<u32>,
    /// Time between scans, e.g. `30s`, `5m`, `1h`. Default 5m; at least 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub interval: Option<String>,
    /// Stop scanning and creating CompressionJobs (the ones already made run on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

impl PolicySource {
    pub fn latest(&self) -> u32 {
        self.latest.unwrap_or(DEFAULT_LATEST)
    }
    pub fn ordering(&self) -> VersionOrdering {
        self.ordering
    }
    pub fn suspended(&self) -> bool {
        self.suspend.unwrap_or(false)
    }
}

/// How the versions of one key compare.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum VersionOrdering {
    #[default]
    Natural,
    Semver,
    Numerical,
    Alphabetical,
}

/// The CompressionJob made for each version: `metadata` (labels, annotations) and `spec`, a
/// CompressionJob spec without `model` (the version found is the model).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobTemplate {
    /// Labels and annotations of every CompressionJob made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// A CompressionJob spec without `model`. Every string in it may use what the source
    /// matched: `{{.path}}` (the path under the listing prefix), `{{.key}}`, `{{.version}}`,
    /// `{{.id}}` (the version's short digest) and the filter's named groups, e.g.
    /// `promoteTo: s3://serving/{{.key}}/{{.version}}`; with an `oci://` source also
    /// `{{.tag}}` (`{{.key}}` is the repository, `{{.path}}` the tag), e.g.
    /// `promoteTo: oci://reg/team/bert:{{.tag}}-int8`. Unknown placeholders are refused.
    pub spec: TemplateSpec,
}

/// Labels and annotations of every CompressionJob a policy makes.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A CompressionJob spec without `model`, kept as written (placeholders are strings of any
/// field), checked by rendering it for a version and validating the CompressionJob.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct TemplateSpec(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for TemplateSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TemplateSpec".into()
    }

    // The CompressionJob spec's own schema (bounds, enums, CEL rules) less `model`: the API
    // server checks a template as it checks a job.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = <CompressionJobSpec as JsonSchema>::json_schema(generator);
        if let Some(props) = schema
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            props.remove("model");
        }
        if let Some(req) = schema
            .get_mut("required")
            .and_then(serde_json::Value::as_array_mut)
        {
            req.retain(|r| r != "model");
        }
        schema.insert(
            "description".into(),
            "A CompressionJob spec without `model`.".into(),
        );
        schema
    }
}

/// What the policy has found and made.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompressionPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the source was last scanned successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan: Option<Time>,
    /// When the source will be scanned next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scan: Option<Time>,
    /// Versions tracked (at most 100): the newest `latest` of each key, and those found
    /// earlier while their CompressionJobs are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<SeenVersion>,
    /// Per key: its newest version and the last one promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// This policy's versions by the phase of their CompressionJob (`Waiting`: not created
    /// yet, behind `concurrency`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phases: BTreeMap<String, u32>,
    /// Number of versions tracked.
    #[serde(default)]
    pub versions_seen: u32,
    /// `key/version` of the newest version found last (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
    /// `key/version` of the last version promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_promoted: Option<String>,
}

/// One model version the policy found.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeenVersion {
    pub key: String,
    pub version: String,
    /// The model file (with an `oci://` source: the artifact, pinned by its manifest digest).
    pub uri: String,
    /// With an `oci://` source: the tag it was found at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// What identifies this content: `sha256:<hex>` (hashed by the controller) or
    /// `etag:<etag>` / `version:<id>` with the size, as the store reports them.
    pub id: String,
    /// The model's sha256 when the controller hashed it (pinned in the job's `model.sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The CompressionJob made (or to be made) for it.
    pub job: String,
    /// Its phase; unset while it waits to be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where it was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<String>,
    pub first_seen: Time,
}

/// The versions of one key.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub key: String,
    /// The newest version found.
    pub latest: String,
    /// The newest version promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_version: Option<String>,
    /// Where it was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_uri: Option<String>,
}

/// Condition reasons and Event reasons of policies.
pub mod policy_reason {
    pub const SCANNED: &str = "Scanned";
    pub const SUSPENDED: &str = "Suspended";
    pub const SCANNING: &str = "Scanning";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PROMOTE_CONFLICT: &str = "PromoteConflict";
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    pub const SOURCE_ERROR: &str = "SourceError";
    pub const NEW_VERSION: &str = "NewVersion";
    pub const PROMOTED: &str = "Promoted";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_a_job_spec_without_model() {
        let crd = serde_json::to_value(crate::api::policy_crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let template = &spec["properties"]["jobTemplate"]["properties"]["spec"];
        let props = template["properties"].as_object().unwrap();
        assert!(!props.contains_key("model"), "{template}");
        for f in ["dataset", "passes", "thresholds", "output", "search"] {
            assert!(props.contains_key(f), "the template lacks {f}");
        }
        let required: Vec<&str> = template["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        assert_eq!(required, ["dataset", "output"]);
        // the job's CEL rules come along
        assert!(template["properties"]["passes"]["x-kubernetes-validations"].is_array());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "cmpp");
        assert_eq!(crd["spec"]["names"]["categories"][0], "kompress");
        let columns: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["Source", "Latest", "Promoted", "Versions", "Ready", "Age"]
        );
    }

    #[test]
    fn defaults_are_cronjobs_and_documented() {
        let spec: CompressionPolicySpec = serde_json::from_value(serde_json::json!({
            "source": {"uri": "s3://m/*/model.onnx"},
            "jobTemplate": {"spec": {}}
        }))
        .unwrap();
        assert_eq!(
            (
                spec.concurrency(),
                spec.successful_history(),
                spec.failed_history(),
                spec.source.latest(),
                spec.source.suspended()
            ),
            (2, 3, 1, 5, false)
        );
    }
}
