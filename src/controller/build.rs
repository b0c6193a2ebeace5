//! build: the worker Job for one generation of a CompressionJob (pure; no client).

use super::ControllerConfig;
use crate::api::wire::{self, EXIT_PERMANENT};
use crate::api::{CompressionJob, defaults};
use k8s_openapi::api::batch::v1::Job;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The one field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "kompress";
/// Name of the worker container (the pod failure policy's exit-code rule names it).
pub const CONTAINER: &str = "worker";
/// Where the scratch emptyDir is mounted; also TMPDIR, since the root filesystem is read-only.
pub const SCRATCH: &str = "/scratch";
/// Where the evidence signing key's Secret is mounted, and the file name of the key in it.
pub const SIGNING_DIR: &str = "/var/run/secrets/kompress.dev/signing";
pub const SIGNING_KEY_FILE: &str = "key.pem";
/// Where an OCI registry's dockerconfigjson Secret is mounted (the worker's DOCKER_CONFIG).
pub const REGISTRY_DIR: &str = "/var/run/secrets/kompress.dev/registry";
/// With a custom evaluator image: where an init container copies the kompress binary (the
/// evaluator's agent), the folder the worker and the agent share on the scratch volume, and
/// the native sidecar's name and fixed resources (requests == limits, as the worker's).
pub const AGENT_BIN_DIR: &str = "/kompress-bin";
pub const EVALUATOR_DIR: &str = "/scratch/evaluator";
pub const EVALUATOR_CONTAINER: &str = "evaluator";
const EVALUATOR_CPU: &str = "500m";
const EVALUATOR_MEMORY: &str = "1Gi";
/// The non-root user of the worker image (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The CompressionJob's name (truncated to a valid label value).
    pub const JOB: &str = "kompress.dev/job";
    /// The CompressionJob generation the Job runs.
    pub const GENERATION: &str = "kompress.dev/generation";
    /// Kueue's label: the LocalQueue that admits the Job.
    pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
    /// Selects every Job this controller made (its Job watch uses it).
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=kompress";
}

/// Longest Job name: the Job controller copies it into the `job-name` label of its pods.
const MAX_JOB_NAME: usize = 63;

/// `<name>-g<generation>-<hash>`: the same for a generation however often the controller
/// restarts (so it never runs a generation twice), new with each spec change. The hash of
/// namespace/name/uid keeps truncated names of different objects apart.
pub fn job_name(cj: &CompressionJob) -> String {
    let uid = cj.uid().unwrap_or_default();
    let digest = Sha256::digest(format!(
        "{}/{}/{uid}",
        cj.namespace().unwrap_or_default(),
        cj.name_any()
    ));
    let suffix = format!(
        "-g{}-{}",
        cj.metadata.generation.unwrap_or(0),
        &hex::encode(digest)[..8]
    );
    let mut prefix: String = cj
        .name_any()
        .replace('.', "-")
        .chars()
        .take(MAX_JOB_NAME - suffix.len())
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    prefix + &suffix
}

/// A label value (at most 63 characters, alphanumeric at both ends) from an object name.
pub fn label_value(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// What the worker reads from KOMPRESS_JOB: identity and spec, no status or managed fields.
pub fn worker_manifest(cj: &CompressionJob) -> serde_json::Value {
    json!({
        "apiVersion": CompressionJob::api_version(&()),
        "kind": CompressionJob::kind(&()),
        "metadata": {
            "name": cj.metadata.name,
            "namespace": cj.metadata.namespace,
            "generation": cj.metadata.generation,
            "uid": cj.metadata.uid,
        },
        "spec": cj.spec,
    })
}

/// The batch/v1 Job that runs `kompress worker` for the current generation.
pub fn build_job(cj: &CompressionJob, cfg: &ControllerConfig) -> Job {
    let spec = &cj.spec;
    let res = spec.resources.clone().unwrap_or_default();
    let gpu = res.gpu > 0;
    let image = spec.image.clone().unwrap_or_else(|| {
        if gpu {
            cfg.gpu_image.clone()
        } else {
            cfg.worker_image.clone()
        }
    });
    let generation = cj.metadata.generation.unwrap_or(0);
    let labels = json!({
        (labels::NAME): "kompress",
        (labels::MANAGED_BY): "kompress",
        (labels::COMPONENT): "worker",
        (labels::JOB): label_value(&cj.name_any()),
        (labels::GENERATION): generation.to_string(),
    });
    let mut pod = WorkerPod::new(cj, cfg, &res);
    pod.mount_signing_key(spec);
    pod.mount_registry_auth(spec);
    let container = worker_container(&image, pod.env, pod.mounts, spec, cfg, &res);
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(cj),
            "namespace": cj.namespace().unwrap_or_default(),
            "labels": labels,
            "ownerReferences": cj.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "backoffLimit": spec.backoff_limit.unwrap_or(defaults::BACKOFF_LIMIT),
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec
                .ttl_seconds_after_finished
                .unwrap_or(defaults::TTL_SECONDS_AFTER_FINISHED),
            // A permanent error (bad spec, bad model) fails the Job at once; a node drain or
            // preemption does not count against backoffLimit.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(container, pod.volumes, spec, cfg, gpu),
            },
        },
    });
    if let Some(e) = spec.evaluation.as_ref().and_then(|e| e.evaluator.as_ref())
        && let Some(evaluator_image) = &e.image
    {
        add_evaluator(
            &mut job["spec"]["template"]["spec"],
            &image,
            evaluator_image,
            e,
        );
    }
    // Queued: created suspended with Kueue's label; Kueue unsuspends it once admitted (the
    // controller never patches an existing Job, so it does not fight that).
    if let Some(q) = queue_name(cj, cfg) {
        job["metadata"]["labels"][labels::KUEUE_QUEUE] = json!(q);
        job["spec"]["suspend"] = json!(true);
    }
    serde_json::from_value(job).expect("the worker Job template matches batch/v1 Job")
}

/// The worker container's environment and the volumes it mounts.
struct WorkerPod {
    env: Vec<serde_json::Value>,
    volumes: Vec<serde_json::Value>,
    mounts: Vec<serde_json::Value>,
}

impl WorkerPod {
    /// The job's manifest, run id and scratch folder (an emptyDir, also TMPDIR), and CUDA on
    /// a GPU.
    fn new(cj: &CompressionJob, cfg: &ControllerConfig, res: &crate::api::ResourcesSpec) -> Self {
        let namespace = cj.namespace().unwrap_or_default();
        let generation = cj.metadata.generation.unwrap_or(0);
        let mut env = vec![
            json!({"name": wire::env::JOB, "value": worker_manifest(cj).to_string()}),
            json!({"name": wire::env::RUN_ID, "value": format!("{namespace}.{}.g{generation}", cj.name_any())}),
            json!({"name": wire::env::SCRATCH, "value": SCRATCH}),
            json!({"name": "TMPDIR", "value": SCRATCH}),
        ];
        if res.gpu > 0 {
            env.push(json!({"name": wire::env::EXECUTION_PROVIDER, "value": "cuda"}));
        }
        let scratch = res
            .scratch
            .clone()
            .unwrap_or_else(|| cfg.default_scratch.clone());
        Self {
            env,
            volumes: vec![json!({"name": "scratch", "emptyDir": {"sizeLimit": scratch}})],
            mounts: vec![json!({"name": "scratch", "mountPath": SCRATCH})],
        }
    }

    /// The evidence's signing key: that one key of the Secret, mounted read-only; the worker
    /// finds it through KOMPRESS_SIGNING_KEY_FILE.
    fn mount_signing_key(&mut self, spec: &crate::api::CompressionJobSpec) {
        let Some(r) = spec
            .output
            .signing
            .as_ref()
            .and_then(|s| s.secret_ref.as_ref())
        else {
            return;
        };
        self.volumes.push(json!({"name": "signing-key", "secret": {
            "secretName": r.name,
            "items": [{"key": r.key(), "path": SIGNING_KEY_FILE}],
            "defaultMode": 0o440,
        }}));
        self.mounts
            .push(json!({"name": "signing-key", "mountPath": SIGNING_DIR, "readOnly": true}));
        self.env.push(json!({"name": crate::pipeline::SIGNING_KEY_ENV, "value": format!("{SIGNING_DIR}/{SIGNING_KEY_FILE}")}));
    }

    /// OCI registry credentials: the dockerconfigjson Secret as the worker's Docker config,
    /// for pulling an oci:// model and pushing an oci:// promotion (validation refuses two
    /// different Secrets: the worker has one Docker config).
    fn mount_registry_auth(&mut self, spec: &crate::api::CompressionJobSpec) {
        let registry_secret = [&spec.output.registry, &spec.model.registry]
            .into_iter()
            .find_map(|r| r.as_ref().and_then(|r| r.secret_ref.as_ref()));
        let Some(r) = registry_secret else { return };
        self.volumes
            .push(json!({"name": "registry-auth", "secret": {
                "secretName": r.name,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                "defaultMode": 0o440,
            }}));
        self.mounts
            .push(json!({"name": "registry-auth", "mountPath": REGISTRY_DIR, "readOnly": true}));
        self.env
            .push(json!({"name": "DOCKER_CONFIG", "value": REGISTRY_DIR}));
    }
}

/// The worker container: storage credentials from the Secret as environment, requests ==
/// limits, read-only root, no capabilities.
fn worker_container(
    image: &str,
    env: Vec<serde_json::Value>,
    mounts: Vec<serde_json::Value>,
    spec: &crate::api::CompressionJobSpec,
    cfg: &ControllerConfig,
    res: &crate::api::ResourcesSpec,
) -> serde_json::Value {
    let env_from: Vec<_> = spec
        .storage
        .as_ref()
        .and_then(|s| s.secret_ref.as_ref())
        .map(|r| json!({"secretRef": {"name": r.name}}))
        .into_iter()
        .collect();
    // requests == limits: Guaranteed QoS, so latency is measured without CPU contention.
    let cpu = res.cpu.clone().unwrap_or_else(|| cfg.default_cpu.clone());
    let memory = res
        .memory
        .clone()
        .unwrap_or_else(|| cfg.default_memory.clone());
    let mut limits = json!({"cpu": cpu, "memory": memory});
    if res.gpu > 0 {
        limits["nvidia.com/gpu"] = json!(res.gpu.to_string());
    }
    let requests = json!({"cpu": cpu, "memory": memory});
    json!({
        "name": CONTAINER,
        "image": image,
        "command": ["kompress", "worker"],
        "env": env,
        "envFrom": if env_from.is_empty() { None } else { Some(env_from) },
        "resources": {"limits": limits, "requests": requests},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": WORKER_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    })
}

/// The worker pod: non-root, no API token, on a GPU node (the controller's selector and
/// tolerations for GPUs, then the job's own) when the job asks for one.
fn pod_spec(
    container: serde_json::Value,
    volumes: Vec<serde_json::Value>,
    spec: &crate::api::CompressionJobSpec,
    cfg: &ControllerConfig,
    gpu: bool,
) -> serde_json::Value {
    let mut node_selector = if gpu {
        cfg.gpu_node_selector.clone()
    } else {
        Default::default()
    };
    node_selector.extend(spec.node_selector.clone().unwrap_or_default());
    let mut tolerations = if gpu {
        cfg.gpu_tolerations.clone()
    } else {
        Vec::new()
    };
    tolerations.extend(spec.tolerations.clone().unwrap_or_default());
    json!({
        "restartPolicy": "Never",
        // The worker reports through its termination message: it needs no API access.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": if node_selector.is_empty() { None } else { Some(node_selector) },
        "tolerations": if tolerations.is_empty() { None } else { Some(tolerations) },
        "containers": [container],
        "volumes": volumes,
    })
}

/// The Kueue LocalQueue of this job: its own, else the controller's default.
pub fn queue_name<'a>(cj: &'a CompressionJob, cfg: &'a ControllerConfig) -> Option<&'a str> {
    cj.spec.queue_name.as_deref().or(cfg.queue_name.as_deref())
}

/// A custom evaluator in the cluster: a native sidecar (an init container that keeps running,
/// stopped by the kubelet once the worker exits) of the evaluator's image, sharing the scratch
/// volume. An init container of the worker image first copies the kompress binary into a
/// volume the sidecar runs it from: `kompress evaluator-agent` runs the evaluator's command for
/// each request the worker writes (the worker finds the folder in its environment).
fn add_evaluator(
    pod: &mut serde_json::Value,
    worker_image: &str,
    image: &str,
    e: &crate::api::EvaluatorSpec,
) {
    let security = pod["containers"][0]["securityContext"].clone();
    if let Some(v) = pod["volumes"].as_array_mut() {
        v.push(json!({"name": "kompress-bin", "emptyDir": {"sizeLimit": "512Mi"}}));
    }
    if let Some(env) = pod["containers"][0]["env"].as_array_mut() {
        env.push(json!({"name": crate::eval::evaluator::ENV_AGENT_DIR, "value": EVALUATOR_DIR}));
    }
    let timeout = crate::api::EvaluatorPlan::of(e).timeout_seconds.to_string();
    let mut command: Vec<String> = [
        &format!("{AGENT_BIN_DIR}/kompress"),
        "evaluator-agent",
        "--dir",
        EVALUATOR_DIR,
        "--timeout-seconds",
        &timeout,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    command.extend(e.command.iter().cloned());
    let small = json!({"cpu": "100m", "memory": "64Mi"});
    let sized = json!({"cpu": EVALUATOR_CPU, "memory": EVALUATOR_MEMORY});
    pod["initContainers"] = json!([
        {
            "name": "install-agent",
            "image": worker_image,
            "command": ["kompress", "evaluator-agent", "--install", AGENT_BIN_DIR],
            "resources": {"limits": small, "requests": small},
            "securityContext": security,
            "volumeMounts": [{"name": "kompress-bin", "mountPath": AGENT_BIN_DIR}],
        },
        {
            "name": EVALUATOR_CONTAINER,
            "image": image,
            "restartPolicy": "Always",
            "command": command,
            "env": [
                {"name": "TMPDIR", "value": SCRATCH},
                {"name": "HOME", "value": SCRATCH},
            ],
            "resources": {"limits": sized, "requests": sized},
            "securityContext": security,
            "volumeMounts": [
                {"name": "scratch", "mountPath": SCRATCH},
                {"name": "kompress-bin", "mountPath": AGENT_BIN_DIR, "readOnly": true},
            ],
        },
    ]);
}

#[cfg(test)]
mod tests;
