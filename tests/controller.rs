//! `kompress controller` against the real test control plane (hack/testenv: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and a node agent that runs pods as
//! local processes, `kompress` from its PATH). Each test gets its own namespace and its own
//! in-process controller watching only that namespace, so the tests run in parallel.
//!
//! Run: `KUBECONFIG=$(KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up) cargo test --test controller -- --ignored`

mod support;

use k8s_openapi::api::core::v1::Pod;
use kompress::api::{Phase, condition};
use kompress::controller::leader::LeaseLock;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use std::path::Path;
use std::time::Duration;
use support::cluster::*;
use support::*;

const NEEDS: &str = "needs the test control plane: run via `make test`";
const API_TIMEOUT: Duration = Duration::from_secs(30);

type Env = ControllerEnv;

const GATE: &str =
    "    maxAccuracyDrop: 0.01\n    minAgreement: 0.98\n    minCompressionRatio: 3.5";

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn compression_job_gets_one_hardened_worker_job_per_generation() {
    let env = Env::new("shape").await;
    let cj = env.create(&env.digits("shape", GATE)).await;
    let name = kompress::controller::job_name(&cj);
    let job = tokio::time::timeout(
        API_TIMEOUT,
        await_condition(env.jobs.clone(), &name, conditions::is_created()),
    )
    .await
    .expect(NEEDS)
    .unwrap()
    .unwrap();

    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, owner.uid.as_str()),
        ("CompressionJob", Some(true), cj.uid().unwrap().as_str())
    );
    assert!(
        job.managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("kompress")),
        "created by kompress (its field manager)"
    );
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(2));
    let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
    assert_eq!(rules[0].action, "FailJob");
    assert_eq!(rules[0].on_exit_codes.as_ref().unwrap().values, [65]);
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let c = &pod.containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&["kompress".to_string(), "worker".to_string()][..])
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation,
            sc.run_as_non_root
        ),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        job.labels()
            .get("kompress.dev/generation")
            .map(String::as_str),
        Some("1")
    );
    // the API server accepted and defaulted it: the podFailurePolicy made it past validation
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn digits_example_succeeds_is_promoted_and_records_events() {
    let env = Env::new("digits").await;
    env.create(&env.digits("digits", GATE)).await;
    let cj = env.wait_phase("digits", Phase::Succeeded, 1).await;

    let status = cj.status.as_ref().unwrap();
    let result = status
        .result
        .as_ref()
        .expect("the worker's result in status");
    assert!(result.ratio >= 3.5, "ratio {}", result.ratio);
    assert!(
        result.promoted.as_ref().is_some_and(|p| p
            .uri
            .starts_with(&env.out().join("production").display().to_string())),
        "{result:?}"
    );
    assert_eq!(cond(&cj, condition::READY), ("True", "ThresholdsPassed"));
    assert_eq!(cond(&cj, condition::PROMOTED), ("True", "Promoted"));
    assert_eq!(cond(&cj, condition::RECONCILING).0, "False");
    assert_eq!(cond(&cj, condition::STALLED).0, "False");
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(
        status.job_name.as_deref(),
        Some(kompress::controller::job_name(&cj).as_str())
    );
    assert!(
        env.out().join("production/promoted.json").exists(),
        "promoted.json written by the worker pod"
    );

    env.wait_event("digits", "JobCreated").await;
    env.wait_event("digits", "Promoted").await;
    // one Job for the generation, however many reconciles happened
    assert_eq!(env.job_list().await.len(), 1);
    env.cleanup().await;
}

/// A second CompressionJob with the same spec (another name, the same output) is served from
/// the cache the first one's worker recorded: its status says `cachedFrom` and promotes the
/// same digest.
#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn an_identical_second_job_is_served_from_the_cache_and_says_so_in_status() {
    let env = Env::new("cache").await;
    env.create(&env.digits("digits-a", GATE)).await;
    let a = env.wait_phase("digits-a", Phase::Succeeded, 1).await;
    env.create(&env.digits("digits-b", GATE)).await;
    let b = env.wait_phase("digits-b", Phase::Succeeded, 1).await;
    let (a, b) = (a.status.unwrap().result.unwrap(), b.status.unwrap());
    let from = b
        .result
        .as_ref()
        .and_then(|r| r.cached_from.clone())
        .expect("cachedFrom in the second job's status");
    let a_run = a
        .artifact
        .as_ref()
        .unwrap()
        .uri
        .trim_end_matches("/model.onnx");
    assert_eq!(from.run, a_run);
    assert_eq!(from.key.len(), 64);
    assert_eq!(b.result.as_ref().unwrap().promoted, a.promoted);
    let message = b.message.unwrap_or_default();
    assert!(message.contains("result reused from"), "{message}");
    assert!(a.cached_from.is_none());
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_search_job_ends_with_its_chosen_form_in_status_and_a_search_event() {
    let env = Env::new("search").await;
    // The recipe replaced by a search over two forms; the digits gate passes with int8.
    let yaml = env.digits("search", GATE).replacen(
        "  passes:\n    - quantize:\n        perChannel: true\n",
        "  passes: []\n  search:\n    forms: [dynamic, fp16]\n",
        1,
    );
    assert!(yaml.contains("search:"), "{yaml}");
    env.create(&yaml).await;
    let cj = env.wait_phase("search", Phase::Succeeded, 1).await;
    let result = cj.status.as_ref().unwrap().result.as_ref().unwrap();
    let search = result
        .search
        .as_ref()
        .expect("the search summary in status");
    assert_eq!(search.form.as_deref(), Some("dynamic"), "{search:?}");
    assert!(search.trials >= 1, "{search:?}");
    assert!(result.promoted.is_some(), "{result:?}");
    env.wait_event("search", "SearchFinished").await;
    env.wait_event("search", "Promoted").await;
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn evidence_is_signed_with_the_key_from_a_secret_and_verifies() {
    use k8s_openapi::api::core::v1::Secret;
    let env = Env::new("signing").await;
    let (key, public) = keypair(&env.out(), "signer", "ed25519");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "evidence-key"},
        "stringData": {"signer.pem": std::fs::read_to_string(&key).unwrap()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let signing = "    signing:\n      secretRef: {name: evidence-key, key: signer.pem}\n";
    let yaml = env.digits("signed", GATE);
    let yaml = yaml.replacen("  evaluation:\n", &format!("{signing}  evaluation:\n"), 1);
    assert!(yaml.contains("secretRef"), "{yaml}");
    env.create(&yaml).await;
    let cj = env.wait_phase("signed", Phase::Succeeded, 1).await;
    let result = cj.status.as_ref().unwrap().result.as_ref().unwrap();
    let evidence = result.evidence.as_ref().expect("the evidence in status");
    assert!(evidence.keyid.is_some(), "{evidence:?}");
    let prod = env.out().join("production");
    let r = run_kompress(
        &[
            "verify",
            prod.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["keyid"].as_str(), evidence.keyid.as_deref());
    assert_eq!(v["job"]["namespace"].as_str(), Some(env.ns.as_str()));

    // A keyFile names a path on the machine that runs `kompress run`: refused in a cluster,
    // naming the field, and no Job is made.
    let local = env.digits("keyfile", GATE).replacen(
        "  evaluation:\n",
        &format!(
            "    signing:\n      keyFile: {}\n  evaluation:\n",
            key.display()
        ),
        1,
    );
    env.create(&local).await;
    let cj = env.wait_phase("keyfile", Phase::Failed, 1).await;
    assert_eq!(cond(&cj, condition::STALLED), ("True", "InvalidSpec"));
    let msg = status_message(&cj);
    assert!(msg.contains("spec.output.signing.keyFile"), "{msg}");
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_job_promoting_to_an_oci_registry_ends_succeeded_with_the_reference_in_status() {
    use k8s_openapi::api::core::v1::Secret;
    let env = Env::new("oci").await;
    // A registry with basic auth on loopback (hack/tools), its credentials in a
    // kubernetes.io/dockerconfigjson Secret as `kubectl create secret docker-registry` makes it.
    let tools = tools_bin("registry").parent().unwrap().to_path_buf();
    let up = std::process::Command::new(repo().join("hack/tools/registry-up"))
        .args(["--kind", "distribution", "--auth", "puller:pw-123"])
        .env("KOMPRESS_TOOLS_BIN", &tools)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let out = String::from_utf8_lossy(&up.stdout).to_string();
    let (addr, state) = (
        out.lines().next().unwrap().to_string(),
        out.lines().nth(1).unwrap().to_string(),
    );
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("puller:pw-123")
    };
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": serde_json::json!({"auths": {&addr: {"auth": auth}}}).to_string()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let yaml = env.digits("to-oci", GATE).replacen(
        &format!("promoteTo: {}", env.out().join("production").display()),
        &format!(
            "promoteTo: oci://{addr}/models/digits:prod\n    registry: {{secretRef: {{name: regcred}}, plainHttp: true}}"
        ),
        1,
    );
    assert!(yaml.contains("oci://"), "{yaml}");
    env.create(&yaml).await;
    let cj = env.wait_phase("to-oci", Phase::Succeeded, 1).await;
    let result = cj.status.as_ref().unwrap().result.as_ref().unwrap();
    let promoted = result.promoted.as_ref().expect("promoted");
    let oci = result.oci.as_ref().expect("the push in status");
    assert_eq!(
        promoted.uri,
        format!("oci://{addr}/models/digits@{}", oci.manifest_digest)
    );
    assert!(
        result
            .evidence
            .as_ref()
            .is_some_and(|e| e.uri.starts_with("oci://"))
    );
    assert_eq!(cond(&cj, condition::PROMOTED), ("True", "Promoted"));
    env.wait_event("to-oci", "Promoted").await;
    let _ = std::process::Command::new(repo().join("hack/tools/registry-down"))
        .arg(&state)
        .env("KOMPRESS_TOOLS_BIN", &tools)
        .output();
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn invalid_spec_fails_without_a_job_until_the_spec_is_fixed() {
    let env = Env::new("invalid").await;
    // valid for the CRD's CEL rules, invalid for kompress: output on read-only https
    let bad = env.digits("fixme", GATE).replacen(
        &format!("uri: {}", env.out().join("candidates").display()),
        "uri: https://example.com/out/",
        1,
    );
    env.create(&bad).await;
    let cj = env.wait_phase("fixme", Phase::Failed, 1).await;
    assert_eq!(cond(&cj, condition::STALLED), ("True", "InvalidSpec"));
    assert_eq!(cond(&cj, condition::READY), ("False", "InvalidSpec"));
    assert!(
        status_message(&cj).contains("spec.output.uri"),
        "{:?}",
        cj.status
    );
    assert!(
        env.job_list().await.is_empty(),
        "no Job for an invalid spec"
    );
    env.wait_event("fixme", "InvalidSpec").await;

    let fixed = serde_json::json!({"spec": {"output": {"uri": env.out().join("candidates").display().to_string()}}});
    env.cjs
        .patch("fixme", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    let cj = env.wait_phase("fixme", Phase::Succeeded, 2).await;
    assert!(
        cj.status
            .as_ref()
            .unwrap()
            .job_name
            .as_deref()
            .unwrap()
            .contains("-g2-")
    );
    assert_eq!(cond(&cj, condition::STALLED), ("False", "ThresholdsPassed"));
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn gate_failing_candidate_is_rejected_and_its_job_is_not_retried() {
    let env = Env::new("reject").await;
    env.create(&env.digits("strict", "    minCompressionRatio: 100"))
        .await;
    let cj = env.wait_phase("strict", Phase::Rejected, 1).await;
    assert_eq!(cond(&cj, condition::READY), ("False", "ThresholdsFailed"));
    assert_eq!(cond(&cj, condition::EVALUATED).0, "True");
    assert_eq!(cond(&cj, condition::PROMOTED), ("False", "NotPromoted"));
    assert_eq!(
        cond(&cj, condition::STALLED),
        ("True", "ThresholdsFailed"),
        "terminal until the spec changes: kstatus reads it Failed"
    );
    assert!(
        status_message(&cj).contains("minCompressionRatio"),
        "{:?}",
        cj.status
    );
    assert!(
        !env.out().join("production/promoted.json").exists(),
        "nothing promoted"
    );

    let job = env
        .jobs
        .get(&kompress::controller::job_name(&cj))
        .await
        .unwrap();
    let js = job.status.unwrap();
    assert_eq!(
        (js.succeeded, js.failed.unwrap_or(0)),
        (Some(1), 0),
        "the worker exited 0: one pod, no retry"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    env.wait_event("strict", "Rejected").await;
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn permanent_worker_error_fails_the_job_at_once_and_stalls() {
    let env = Env::new("permanent").await;
    let missing = Path::new("/nonexistent/model.onnx").display().to_string();
    let yaml = env.digits("broken", GATE).replacen(
        &repo()
            .join("examples/digits/model.onnx")
            .display()
            .to_string(),
        &missing,
        1,
    );
    env.create(&yaml).await;
    let cj = env.wait_phase("broken", Phase::Failed, 1).await;
    let (stalled, reason) = cond(&cj, condition::STALLED);
    assert_eq!(stalled, "True");
    assert_ne!(
        reason, "InvalidSpec",
        "the spec is valid; the worker failed"
    );
    let job = env
        .jobs
        .get(&kompress::controller::job_name(&cj))
        .await
        .unwrap();
    assert_eq!(
        job.status.unwrap().failed,
        Some(1),
        "exit 65 fails the Job through podFailurePolicy, without the 2 retries"
    );
    env.wait_event("broken", reason).await;
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn one_leader_at_a_time_and_a_released_lease_passes_on() {
    let client = client().await;
    let ns = create_namespace(&client, "kt-lease").await;
    let mut a = LeaseLock::new(client.clone(), &ns, "replica-a".into());
    let mut b = LeaseLock::new(client.clone(), &ns, "replica-b".into());
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "the first candidate takes the free Lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a held, fresh Lease is not taken"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    a.release().await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "a released Lease is free at once"
    );
    assert!(!a.try_acquire_or_renew().await.unwrap());
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_repeated_event_is_one_event_with_a_series_and_another_reason_is_its_own() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Reporter};
    let client = client().await;
    let ns = create_namespace(&client, "events").await;
    let recorder = kompress::controller::events::Recorder::new(
        client.clone(),
        Reporter {
            controller: "kompress".into(),
            instance: Some("test".into()),
        },
    );
    let regarding = ObjectReference {
        api_version: Some("kompress.dev/v1alpha1".into()),
        kind: Some("CompressionJob".into()),
        namespace: Some(ns.clone()),
        name: Some("digits".into()),
        uid: Some("0000-1".into()),
        ..Default::default()
    };
    let event = |reason: &str| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(format!("{reason} for the test")),
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder
            .publish(&event("WorkerFailed"), &regarding)
            .await
            .unwrap();
    }
    recorder
        .publish(&event("Promoted"), &regarding)
        .await
        .unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let mut got: Vec<(String, Option<i32>, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.series.map(|s| s.count),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("Promoted".to_string(), None, "test".to_string()),
            ("WorkerFailed".to_string(), Some(3), "test".to_string())
        ]
    );
    delete_namespace(&client, &ns).await;
}

/// A spec change while the last generation's Job is still unfinished stops that Job (its pod
/// could never be scheduled here: it asks for more CPUs than the test node has) and runs the
/// new generation to the end.
#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_new_generation_stops_the_unfinished_job_of_the_last() {
    let env = Env::new("supersede").await;
    let yaml = format!(
        "{}  resources:\n    cpu: \"4000\"\n",
        env.digits("digits", GATE)
    );
    let cj = env.create(&yaml).await;
    let first = kompress::controller::job_name(&cj);
    let uid = tokio::time::timeout(
        API_TIMEOUT,
        await_condition(env.jobs.clone(), &first, conditions::is_created()),
    )
    .await
    .expect(NEEDS)
    .unwrap()
    .and_then(|j| j.metadata.uid)
    .unwrap();
    // generation 2: a CPU request the node can meet
    env.cjs
        .patch(
            "digits",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"resources": {"cpu": "1"}}})),
        )
        .await
        .unwrap();
    let cj = env.wait_phase("digits", Phase::Succeeded, 2).await;
    let second = kompress::controller::job_name(&cj);
    assert_ne!(first, second);
    tokio::time::timeout(
        API_TIMEOUT,
        await_condition(env.jobs.clone(), &first, conditions::is_deleted(&uid)),
    )
    .await
    .expect("the first generation's Job is deleted")
    .unwrap();
    env.cleanup().await;
}
