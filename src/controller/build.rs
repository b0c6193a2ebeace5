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
    let namespace = cj.namespace().unwrap_or_default();
    let generation = cj.metadata.generation.unwrap_or(0);
    let labels = json!({
        (labels::NAME): "kompress",
        (labels::MANAGED_BY): "kompress",
        (labels::COMPONENT): "worker",
        (labels::JOB): label_value(&cj.name_any()),
        (labels::GENERATION): generation.to_string(),
    });

    let mut env = vec![
        json!({"name": wire::env::JOB, "value": worker_manifest(cj).to_string()}),
        json!({"name": wire::env::RUN_ID, "value": format!("{namespace}.{}.g{generation}", cj.name_any())}),
        json!({"name": wire::env::SCRATCH, "value": SCRATCH}),
        json!({"name": "TMPDIR", "value": SCRATCH}),
    ];
    if gpu {
        env.push(json!({"name": wire::env::EXECUTION_PROVIDER, "value": "cuda"}));
    }
    // The evidence's signing key: that one key of the Secret, mounted read-only; the worker
    // finds it through KOMPRESS_SIGNING_KEY_FILE.
    let mut volumes = vec![
        json!({"name": "scratch", "emptyDir": {"sizeLimit": res.scratch.clone().unwrap_or_else(|| cfg.default_scratch.clone())}}),
    ];
    let mut mounts = vec![json!({"name": "scratch", "mountPath": SCRATCH})];
    if let Some(r) = spec
        .output
        .signing
        .as_ref()
        .and_then(|s| s.secret_ref.as_ref())
    {
        volumes.push(json!({"name": "signing-key", "secret": {
            "secretName": r.name,
            "items": [{"key": r.key(), "path": SIGNING_KEY_FILE}],
            "defaultMode": 0o440,
        }}));
        mounts.push(json!({"name": "signing-key", "mountPath": SIGNING_DIR, "readOnly": true}));
        env.push(json!({"name": crate::pipeline::SIGNING_KEY_ENV, "value": format!("{SIGNING_DIR}/{SIGNING_KEY_FILE}")}));
    }
    // OCI registry credentials: the dockerconfigjson Secret as the worker's Docker config,
    // for pulling an oci:// model and pushing an oci:// promotion (validation refuses two
    // different Secrets: the worker has one Docker config).
    let registry_secret = [&spec.output.registry, &spec.model.registry]
        .into_iter()
        .find_map(|r| r.as_ref().and_then(|r| r.secret_ref.as_ref()));
    if let Some(r) = registry_secret {
        volumes.push(json!({"name": "registry-auth", "secret": {
            "secretName": r.name,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
            "defaultMode": 0o440,
        }}));
        mounts.push(json!({"name": "registry-auth", "mountPath": REGISTRY_DIR, "readOnly": true}));
        env.push(json!({"name": "DOCKER_CONFIG", "value": REGISTRY_DIR}));
    }
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
    if gpu {
        limits["nvidia.com/gpu"] = json!(res.gpu.to_string());
    }
    let requests = json!({"cpu": cpu, "memory": memory});

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

    let seccomp = json!({"type": "RuntimeDefault"});
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(cj),
            "namespace": namespace,
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
                "spec": {
                    "restartPolicy": "Never",
                    // The worker reports through its termination message: it needs no API access.
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": WORKER_UID,
                        "runAsGroup": WORKER_UID,
                        "fsGroup": WORKER_UID,
                        "seccompProfile": seccomp,
                    },
                    "nodeSelector": if node_selector.is_empty() { None } else { Some(node_selector) },
                    "tolerations": if tolerations.is_empty() { None } else { Some(tolerations) },
                    "containers": [{
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
                            "seccompProfile": seccomp,
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
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
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn cj(yaml: &str) -> CompressionJob {
        serde_saphyr::from_str(yaml).expect("test manifest parses")
    }

    const CPU: &str = r#"
apiVersion: kompress.dev/v1alpha1
kind: CompressionJob
metadata: {name: resnet50-int8, namespace: ml, generation: 3, uid: 7f1c2a9e-0000-4000-8000-000000000001}
spec:
  model: {uri: "s3://models/resnet50/model.onnx"}
  dataset: {uri: "s3://datasets/val.npz"}
  storage: {secretRef: {name: s3-creds}}
  passes: [{quantize: {mode: dynamic}}]
  output: {uri: "s3://models/resnet50/candidates/"}
  resources: {cpu: "2", memory: 4Gi, scratch: 20Gi}
  activeDeadlineSeconds: 1800
"#;

    const GPU: &str = r#"
apiVersion: kompress.dev/v1alpha1
kind: CompressionJob
metadata: {name: bert, namespace: ml, generation: 1, uid: 7f1c2a9e-0000-4000-8000-000000000002}
spec:
  model: {uri: "s3://models/bert/model.onnx"}
  dataset: {uri: "s3://datasets/val.npz"}
  passes: [{quantize: {mode: dynamic}}]
  output: {uri: "s3://models/bert/candidates/"}
  resources: {gpu: 1}
  nodeSelector: {pool: a100}
  tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]
"#;

    fn value(job: &Job) -> serde_json::Value {
        serde_json::to_value(job).unwrap()
    }

    fn env(job: &serde_json::Value, name: &str) -> Option<String> {
        job["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    }

    fn config() -> ControllerConfig {
        ControllerConfig {
            gpu_node_selector: [
                ("nvidia.com/gpu.present".to_string(), "true".to_string()),
                ("pool".to_string(), "default".to_string()),
            ]
            .into(),
            ..ControllerConfig::default()
        }
    }

    #[test]
    fn cpu_job_runs_the_worker_in_the_cpu_image_with_the_spec_resources() {
        let job = value(&build_job(&cj(CPU), &config()));
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], crate::controller::DEFAULT_WORKER_IMAGE);
        assert_eq!(c["command"], json!(["kompress", "worker"]));
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": "2", "memory": "4Gi"})
        );
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "2", "memory": "4Gi"})
        );
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(
            env(&job, "KOMPRESS_RUN_ID").as_deref(),
            Some("ml.resnet50-int8.g3")
        );
        assert_eq!(env(&job, "KOMPRESS_SCRATCH").as_deref(), Some("/scratch"));
        assert_eq!(env(&job, "KOMPRESS_EXECUTION_PROVIDER"), None);
        assert_eq!(env(&job, "KOMPRESS_TERMINATION_LOG"), None);
        let spec = &job["spec"]["template"]["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["volumes"][0]["emptyDir"]["sizeLimit"], "20Gi");
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/scratch");
        assert!(
            spec.get("nodeSelector").is_none() && spec.get("tolerations").is_none(),
            "CPU jobs get no GPU scheduling"
        );
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 1800);
        assert_eq!(job["spec"]["backoffLimit"], 2);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    }

    #[test]
    fn signing_key_and_registry_credentials_are_mounted_read_only_one_key_each() {
        let mut m = cj(CPU);
        m.spec.output.promote_to = Some("oci://registry.example:5000/models/resnet:prod".into());
        m.spec.output.signing = Some(crate::api::SigningSpec {
            secret_ref: Some(crate::api::SecretKeyRef {
                name: "evidence-key".into(),
                key: Some("ed25519.pem".into()),
            }),
            key_file: None,
        });
        m.spec.output.registry = Some(crate::api::RegistrySpec {
            secret_ref: Some(crate::api::SecretRef {
                name: "regcred".into(),
            }),
            plain_http: None,
        });
        let job = value(&build_job(&m, &config()));
        let spec = &job["spec"]["template"]["spec"];
        let volumes = spec["volumes"].as_array().unwrap();
        let vol = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
        assert_eq!(
            vol("signing-key")["secret"],
            json!({"secretName": "evidence-key", "items": [{"key": "ed25519.pem", "path": "key.pem"}], "defaultMode": 0o440})
        );
        assert_eq!(
            vol("registry-auth")["secret"],
            json!({"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}], "defaultMode": 0o440})
        );
        let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
        for (name, path) in [
            ("signing-key", SIGNING_DIR),
            ("registry-auth", REGISTRY_DIR),
        ] {
            let mnt = mounts.iter().find(|x| x["name"] == name).unwrap();
            assert_eq!(
                (mnt["mountPath"].as_str(), mnt["readOnly"].as_bool()),
                (Some(path), Some(true))
            );
        }
        assert_eq!(
            env(&job, crate::pipeline::SIGNING_KEY_ENV).as_deref(),
            Some("/var/run/secrets/kompress.dev/signing/key.pem")
        );
        assert_eq!(env(&job, "DOCKER_CONFIG").as_deref(), Some(REGISTRY_DIR));
        // Without them, neither appears.
        let plain = value(&build_job(&cj(CPU), &config()));
        assert_eq!(
            plain["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(env(&plain, "DOCKER_CONFIG"), None);
        // A model read from a registry: its Secret, mounted the same way.
        let mut pull = cj(CPU);
        pull.spec.model.uri = "oci://registry.example:5000/models/resnet:v1".into();
        pull.spec.model.registry = Some(crate::api::RegistrySpec {
            secret_ref: Some(crate::api::SecretRef {
                name: "pullcred".into(),
            }),
            plain_http: None,
        });
        let job = value(&build_job(&pull, &config()));
        let volumes = job["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let auth = volumes
            .iter()
            .find(|v| v["name"] == "registry-auth")
            .unwrap();
        assert_eq!(auth["secret"]["secretName"], "pullcred");
        assert_eq!(env(&job, "DOCKER_CONFIG").as_deref(), Some(REGISTRY_DIR));
    }

    #[test]
    fn defaults_fill_unset_resources() {
        let mut m = cj(CPU);
        m.spec.resources = None;
        let job = value(&build_job(&m, &config()));
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        use crate::controller::{
            DEFAULT_WORKER_CPU, DEFAULT_WORKER_MEMORY, DEFAULT_WORKER_SCRATCH,
        };
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": DEFAULT_WORKER_CPU, "memory": DEFAULT_WORKER_MEMORY})
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"],
            DEFAULT_WORKER_SCRATCH
        );
    }

    #[test]
    fn worker_reads_the_whole_job_identity_and_spec_from_kompress_job() {
        let m = cj(CPU);
        let job = value(&build_job(&m, &config()));
        let parsed =
            crate::api::manifest::parse_job(&env(&job, "KOMPRESS_JOB").unwrap(), "KOMPRESS_JOB")
                .expect("the worker parses it");
        assert_eq!(parsed.spec, m.spec);
        assert_eq!(parsed.metadata.generation, Some(3));
        assert_eq!(parsed.metadata.uid, m.metadata.uid);
        assert_eq!(parsed.metadata.namespace.as_deref(), Some("ml"));
    }

    #[test]
    fn storage_secret_becomes_env_from_and_nothing_else_reads_secrets() {
        let job = value(&build_job(&cj(CPU), &config()));
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["envFrom"],
            json!([{"secretRef": {"name": "s3-creds"}}])
        );
        let job = value(&build_job(&cj(GPU), &config()));
        assert!(
            job["spec"]["template"]["spec"]["containers"][0]
                .get("envFrom")
                .is_none()
        );
    }

    #[test]
    fn gpu_job_gets_the_gpu_image_limit_cuda_and_merged_scheduling() {
        let job = value(&build_job(&cj(GPU), &config()));
        let spec = &job["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        assert_eq!(c["image"], crate::controller::DEFAULT_WORKER_GPU_IMAGE);
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(
            env(&job, "KOMPRESS_EXECUTION_PROVIDER").as_deref(),
            Some("cuda")
        );
        // the spec's selector wins over the controller's default for the same key
        assert_eq!(
            spec["nodeSelector"],
            json!({"nvidia.com/gpu.present": "true", "pool": "a100"})
        );
        let tolerations: Vec<Toleration> =
            serde_json::from_value(spec["tolerations"].clone()).unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[1].key.as_deref(), Some("dedicated"));
    }

    #[test]
    fn spec_image_overrides_both_controller_images() {
        let mut m = cj(GPU);
        m.spec.image = Some("registry.local/kompress:dev".into());
        assert_eq!(
            value(&build_job(&m, &config()))["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.local/kompress:dev"
        );
    }

    #[test]
    fn pod_and_container_are_hardened() {
        let job = value(&build_job(&cj(CPU), &config()));
        let spec = &job["spec"]["template"]["spec"];
        assert_eq!(
            spec["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            spec["containers"][0]["securityContext"],
            json!({
                "runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
    }

    #[test]
    fn a_custom_evaluator_image_runs_as_a_native_sidecar_sharing_scratch() {
        let mut m = cj(CPU);
        m.spec.evaluation = Some(crate::api::EvaluationSpec {
            evaluator: Some(crate::api::EvaluatorSpec {
                command: vec!["python3".into(), "/eval/wer.py".into()],
                image: Some("registry.local/wer@sha256:abc".into()),
                timeout_seconds: Some(60),
            }),
            ..Default::default()
        });
        let job = value(&build_job(&m, &config()));
        let spec = &job["spec"]["template"]["spec"];
        let init = spec["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 2);
        assert_eq!(init[0]["image"], crate::controller::DEFAULT_WORKER_IMAGE);
        assert_eq!(
            init[0]["command"],
            json!(["kompress", "evaluator-agent", "--install", "/kompress-bin"])
        );
        let ev = &init[1];
        assert_eq!(ev["name"], "evaluator");
        assert_eq!(
            ev["restartPolicy"], "Always",
            "a native sidecar: stopped when the worker exits"
        );
        assert_eq!(ev["image"], "registry.local/wer@sha256:abc");
        assert_eq!(
            ev["command"],
            json!([
                "/kompress-bin/kompress",
                "evaluator-agent",
                "--dir",
                "/scratch/evaluator",
                "--timeout-seconds",
                "60",
                "--",
                "python3",
                "/eval/wer.py"
            ])
        );
        assert_eq!(
            ev["volumeMounts"][0],
            json!({"name": "scratch", "mountPath": "/scratch"})
        );
        assert_eq!(ev["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            ev["securityContext"], spec["containers"][0]["securityContext"],
            "hardened alike"
        );
        assert_eq!(
            ev["resources"]["limits"], ev["resources"]["requests"],
            "Guaranteed QoS kept"
        );
        assert_eq!(
            env(&job, "KOMPRESS_EVALUATOR_AGENT_DIR").as_deref(),
            Some("/scratch/evaluator")
        );
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "kompress-bin")
        );
        // Locally only (no image): the pod is unchanged.
        let mut local = cj(CPU);
        local.spec.evaluation = Some(crate::api::EvaluationSpec {
            evaluator: Some(crate::api::EvaluatorSpec {
                command: vec!["python3".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let plain = value(&build_job(&local, &config()));
        assert!(plain["spec"]["template"]["spec"]["initContainers"].is_null());
    }

    #[test]
    fn permanent_exit_code_fails_the_job_and_disruptions_are_ignored() {
        let job = value(&build_job(&cj(CPU), &config()));
        assert_eq!(
            job["spec"]["podFailurePolicy"]["rules"],
            json!([
                {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [65]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ])
        );
    }

    #[test]
    fn job_and_pods_carry_the_labels_and_the_controller_owner_reference() {
        let job = value(&build_job(&cj(CPU), &config()));
        let want = json!({
            "app.kubernetes.io/name": "kompress", "app.kubernetes.io/managed-by": "kompress", "app.kubernetes.io/component": "worker",
            "kompress.dev/job": "resnet50-int8", "kompress.dev/generation": "3",
        });
        assert_eq!(job["metadata"]["labels"], want);
        assert_eq!(job["spec"]["template"]["metadata"]["labels"], want);
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "CompressionJob");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["uid"], "7f1c2a9e-0000-4000-8000-000000000001");
    }

    #[test]
    fn a_queued_job_is_created_suspended_with_kueues_label_only_on_the_job() {
        let unqueued = value(&build_job(&cj(CPU), &config()));
        assert_eq!(unqueued["spec"]["suspend"], serde_json::Value::Null);
        assert_eq!(
            unqueued["metadata"]["labels"][labels::KUEUE_QUEUE],
            serde_json::Value::Null
        );

        let default_queue = ControllerConfig {
            queue_name: Some("default".into()),
            ..config()
        };
        let job = value(&build_job(&cj(CPU), &default_queue));
        assert_eq!(job["spec"]["suspend"], true);
        assert_eq!(job["metadata"]["labels"][labels::KUEUE_QUEUE], "default");
        // Kueue's Job integration reads the Job's label; the pods carry kompress' labels only
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"][labels::KUEUE_QUEUE],
            serde_json::Value::Null
        );

        let own = CPU.replace(
            "  activeDeadlineSeconds",
            "  queueName: gpu-batch\n  activeDeadlineSeconds",
        );
        let job = value(&build_job(&cj(&own), &default_queue));
        assert_eq!(
            job["metadata"]["labels"][labels::KUEUE_QUEUE],
            "gpu-batch",
            "the spec's queue wins"
        );
    }

    #[test]
    fn template_survives_the_round_trip_through_the_typed_job() {
        // from_value ignores unknown fields: a misspelt field would vanish silently
        let job = build_job(&cj(GPU), &config());
        let again: Job = serde_json::from_value(value(&job)).unwrap();
        assert_eq!(job, again);
        let spec = job.spec.unwrap();
        assert!(spec.pod_failure_policy.is_some() && spec.ttl_seconds_after_finished.is_some());
        let pod = spec.template.spec.unwrap();
        assert!(pod.security_context.unwrap().seccomp_profile.is_some());
        assert_eq!(
            pod.containers[0].volume_mounts.as_ref().map(Vec::len),
            Some(1)
        );
        assert!(
            pod.containers[0]
                .security_context
                .as_ref()
                .unwrap()
                .capabilities
                .is_some()
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn job_name_is_stable_per_generation_and_changes_with_it() {
        let mut m = cj(CPU);
        let first = job_name(&m);
        assert_eq!(first, job_name(&m));
        assert!(first.starts_with("resnet50-int8-g3-"), "{first}");
        m.metadata.generation = Some(4);
        assert_ne!(first, job_name(&m));
        assert!(job_name(&m).starts_with("resnet50-int8-g4-"));
    }

    #[test]
    fn long_names_are_cut_to_63_characters_and_stay_apart() {
        let mut a = cj(CPU);
        a.metadata.name = Some(format!("{}.v2", "x".repeat(250)));
        a.metadata.generation = Some(1234567);
        let mut b = a.clone();
        b.metadata.uid = Some("another-uid".into());
        let (na, nb) = (job_name(&a), job_name(&b));
        assert!(na.len() <= 63 && nb.len() <= 63, "{na}");
        assert_ne!(na, nb);
        assert!(
            na.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{na}"
        );
        assert!(label_value(a.metadata.name.as_deref().unwrap()).len() <= 63);
    }
}
