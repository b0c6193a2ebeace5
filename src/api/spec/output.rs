//! `spec.output`: where runs and promotions go, registries and signing.

use super::*;

/// Where results go.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// Prefix URI for every run's candidate and report.json (the audit trail): each run writes
    /// under `<uri>/runs/<run-id>/`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Where a passing candidate is promoted: an object-storage prefix (a content-addressed
    /// `sha256-<digest>/` folder, `promoted.json` written last) or `oci://REGISTRY/REPOSITORY:TAG` (a
    /// CNCF ModelPack, the tag moved last). Unset: nothing is promoted; see docs/src/promotion.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_to: Option<String>,
    /// With an `oci://` promoteTo: how to reach the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// Signs each promotion's evidence (an in-toto statement of the evaluation, in a DSSE
    /// envelope beside the promoted model). Unset: the evidence is written unsigned. When set
    /// and the key cannot be read or used, the job fails before anything is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// Reuse a finished run's result when this job's cache key (inputs' digests, result-changing
    /// settings, kompress and ONNX Runtime versions) matches; the index is `<uri>/cache/`. Default
    /// true; never with a custom evaluator. See docs/src/pipeline.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// Where the evidence's signing key comes from: an unencrypted PKCS#8 PEM private key,
/// Ed25519 or ECDSA P-256 (`openssl genpkey -algorithm ed25519 -out key.pem`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.keyFile)").message("set exactly one of secretRef or keyFile"))]
pub struct SigningSpec {
    /// In a cluster: a Secret in the job's namespace holding the key. The controller mounts
    /// that one key read-only into the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// With `kompress run`: a local file holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub key_file: Option<String>,
}

/// An OCI registry's connection settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrySpec {
    /// In a cluster: a `kubernetes.io/dockerconfigjson` Secret with the registry's
    /// credentials, mounted into the worker as its Docker config. With `kompress run`: the
    /// Docker config (`DOCKER_CONFIG`, else `~/.docker/config.json`). Unset: anonymous, or
    /// the local Docker config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Talk plain HTTP instead of HTTPS (a registry on loopback or a private network).
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
}

/// One key of a Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it. Default `key.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}
