//! The model, its evaluation data (inputs, edge cases, calibration set) and object storage settings.

use super::*;

/// Where the model comes from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSource {
    /// URI of the ONNX model (s3://, gs://, az://, https://, file://, a path, or
    /// `oci://REGISTRY/REPOSITORY:TAG|@sha256:…` for a ModelPack); external data is fetched from
    /// beside it and checked.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the model file (64 hex digits); the run fails on mismatch. With an
    /// `oci://` uri: of the `.onnx` layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// With an `oci://` uri: how to reach the registry (as `spec.output.registry`). When both
    /// name a `secretRef`, it must be the same Secret: the worker has one Docker config, so
    /// put the credentials of both registries in one `kubernetes.io/dockerconfigjson` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
}

/// The evaluation data.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetSource {
    /// URI of a NumPy `.npz` file with one array per model input (named like the input, first
    /// axis = samples; scalars, other batch axes and streaming state: see `inputs`) and
    /// optionally a labels array.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the dataset file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// Name of the labels array in the npz. Default `labels` when the file has one; without
    /// labels, accuracy is not measured. Integer `[samples]` class indices; with the sequence
    /// task, integer `[samples, length]` target class indices padded with -1; with the
    /// detection task, `[samples, boxes, 5]` true boxes (x1, y1, x2, y2, class; class -1 pads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Use only the first N samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be positive"))]
    pub limit: Option<u32>,
    /// Name of an integer array in the npz (one value per sample) naming each sample's slice
    /// (e.g. 0 = short lines, 1 = long lines): the report gives every metric per slice, and
    /// `thresholds.maxWorstSliceDrop` bounds the worst slice's drop. At most 64 slices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<String>,
    /// How inputs that are not "one array, samples on axis 0" are fed: a scalar, another batch
    /// axis, or a state fed back from an output (streaming models). Unlisted inputs read the array of
    /// their name; calibration and `edgeCases` are fed the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub inputs: Vec<InputFeed>,
}

/// How one model input is fed. Exactly one of: plain rows (only `batchAxis`), `scalar`, or
/// `stateFrom` (with `initial`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.scalar) || !self.scalar || (!has(self.batchAxis) && !has(self.stateFrom))").message("a scalar input has no batch axis and no state: remove batchAxis and stateFrom, or scalar"),
    validation = Rule::new("has(self.stateFrom) == has(self.initial)").message("a state input (stateFrom) needs initial, the array of its value at the start of each stream"),
    validation = Rule::new("!has(self.value) || (has(self.scalar) && self.scalar)").message("value applies to scalar inputs only (scalar: true)"),
    validation = Rule::new("!has(self.resetOn) || has(self.stateFrom)").message("resetOn applies to state inputs only (stateFrom)")
)]
pub struct InputFeed {
    /// The model input's name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The input has no batch axis: the same value is fed as is on every run, from `value` or
    /// from the dataset's array of the input's name, which has exactly the input's shape (a
    /// rank-0 array for a scalar input: `np.array(16000, dtype=np.int64)`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<bool>,
    /// With `scalar`: the value itself (converted to the input's type; an integer input needs
    /// a whole number in its range), instead of an array in the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The input's axis that holds the rows of a batch, e.g. 1 for a state shaped
    /// [2, batch, 128]. Default 0. The dataset's array always keeps samples on its first axis
    /// (the input's shape with the batch axis moved first, e.g. [N, 2, 128]); kompress moves
    /// them to this axis for every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 32))]
    pub batch_axis: Option<u32>,
    /// A recurrent state: the model output fed back into this input on the next row. Rows run
    /// in order, one at a time, each model (original and candidate) carrying its own state;
    /// the input needs no array of its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub state_from: Option<String>,
    /// With `stateFrom`: the dataset's array holding the state at the start of each stream,
    /// shaped like the input without its batch axis (e.g. [2, 128] for a [2, batch, 128]
    /// state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub initial: Option<String>,
    /// With `stateFrom`: the dataset's per-row integer or bool array marking stream starts; at
    /// a row where it is non-zero the state goes back to `initial`. Unset: one stream, from
    /// the first row to the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub reset_on: Option<String>,
}

/// The edge-case set and its thresholds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeCasesSpec {
    /// URI of a NumPy `.npz` file in the format of `dataset` (the same arrays, any number of
    /// rows).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
    /// Name of the labels array (default `labels` when the file has one), shaped as
    /// `spec.dataset.labels` says for the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Use only the first N rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be positive"))]
    pub limit: Option<u32>,
    /// Quality thresholds on these rows (the model's size and latency are checked once, by
    /// `spec.thresholds`, so minCompressionRatio and maxLatencyRatio are not taken here).
    #[serde(default)]
    #[x_kube(validation = Rule::new("!has(self.minCompressionRatio) && !has(self.maxLatencyRatio)").message("size and latency are the model's, checked by spec.thresholds: remove them here"))]
    pub thresholds: Thresholds,
}

/// Object storage settings. Credentials come from the environment (AWS_*, GOOGLE_*, AZURE_*),
/// which in a cluster the controller fills from `secretRef`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// A Secret in the job's namespace whose keys become environment variables of the worker
    /// (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT_KEY,
    /// AZURE_STORAGE_ACCOUNT_KEY). Leave unset for workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// S3-compatible endpoint (e.g. http://minio.storage:9000). Overrides AWS_ENDPOINT_URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region for S3. Overrides AWS_REGION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Use virtual-hosted-style S3 addressing (bucket in the host name). Default false:
    /// path-style, which S3-compatible servers expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_hosted_style: Option<bool>,
    /// Allow plain http:// endpoints (in-cluster S3-compatible servers). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
}

/// A reference to a Secret in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// Where static quantization's calibration samples come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationSource {
    /// A separate calibration set (`.npz`, one array per model input, like the dataset). Unset:
    /// the last `samples` rows of the evaluation dataset are set aside for calibration and
    /// are not scored (the report says which rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<CalibrationDataset>,
}

/// A calibration `.npz`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationDataset {
    /// URI of the `.npz`: s3://, gs://, az://, https://, file:// or a plain path.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self != ''").message("must not be empty"))]
    pub uri: String,
    /// Expected sha256 of the file (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lowercase hex digits"))]
    pub sha256: Option<String>,
}
