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
    use crate::controller::{DEFAULT_WORKER_CPU, DEFAULT_WORKER_MEMORY, DEFAULT_WORKER_SCRATCH};
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
    let tolerations: Vec<Toleration> = serde_json::from_value(spec["tolerations"].clone()).unwrap();
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
