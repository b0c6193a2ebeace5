//! A custom evaluator (`spec.evaluation.evaluator`) through `kompress controller` against the
//! real test control plane (hack/testenv), as tests/controller.rs runs it: its own namespace
//! and an in-process controller per test.
//!
//! What runs here: without `image` the worker runs the evaluator's command itself, so on the
//! test node agent (pods as local processes) a Python evaluator scores the candidate, its
//! metric is gated by `thresholds.custom` (check `custom.<metric>`), and the job ends
//! Succeeded (promoted) or Rejected. With `image` the worker pod gets the native sidecar
//! (`restartPolicy: Always` init container running `kompress evaluator-agent`); the test node
//! agent does not run sidecars (it runs init containers one after the other, so the agent
//! would block the worker: hack/testenv/README.md), so for that job only the pod the real API
//! server and Job controller accept and create is checked, kept unschedulable.
//!
//! Run: `KUBECONFIG=$(KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up) cargo test --test controller_evaluator -- --ignored`

mod support;

use k8s_openapi::api::core::v1::Pod;
use kompress::api::{CompressionJob, Phase, condition};
use kube::Api;
use kube::api::ListParams;
use std::time::Duration;
use support::NPZ_AGREEMENT_PY;
use support::cluster::*;

type Env = ControllerEnv;

const GATE: &str = "    minCompressionRatio: 3.5";

/// A pure-Python evaluator (no numpy): top-1 agreement of the candidate with the original,
/// from the two `.npz` files the worker writes.
fn score_py() -> String {
    format!(
        "{NPZ_AGREEMENT_PY}{}",
        r#"print(json.dumps({"metrics": {"top1_agreement": agree, "rows": n}}))
"#
    )
}

/// The digits example as `name` with the custom evaluator `evaluator` (a flow mapping) and
/// the custom thresholds `custom` (a flow sequence), each job writing under its own folder.
fn with_evaluator(env: &Env, name: &str, evaluator: &str, custom: &str) -> String {
    let yaml = env.digits_in(
        name,
        &env.out().join(name),
        &format!("{GATE}\n    custom: {custom}"),
    );
    assert!(yaml.ends_with("      iterations: 5\n"), "{yaml}");
    format!("{yaml}    evaluator: {evaluator}\n")
}

fn check<'a>(cj: &'a CompressionJob, name: &str) -> &'a kompress::api::Check {
    let result = cj.status.as_ref().unwrap().result.as_ref().unwrap();
    result
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {:?}", result.checks))
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn custom_evaluator_metrics_gate_jobs_in_the_cluster_and_its_image_becomes_a_native_sidecar()
{
    let env = Env::new("evaluator").await;
    let py = env.out().join("score.py");
    std::fs::write(&py, score_py()).unwrap();
    let local = format!(
        "{{command: [python3, '{}'], timeoutSeconds: 120}}",
        py.display()
    );

    // Both jobs at once: one whose custom metric passes, one whose bound it cannot meet.
    env.create(&with_evaluator(
        &env,
        "custom-pass",
        &local,
        "[{metric: top1_agreement, min: 0.9}]",
    ))
    .await;
    env.create(&with_evaluator(
        &env,
        "custom-fail",
        &local,
        "[{metric: top1_agreement, max: 0.5}]",
    ))
    .await;
    the_passing_job_is_promoted(&env).await;
    the_failing_job_is_rejected(&env).await;
    env.wait_event("custom-pass", "Promoted").await;
    env.wait_event("custom-fail", "Rejected").await;
    the_image_becomes_a_native_sidecar(&env).await;
    env.cleanup().await;
}

/// `custom-pass`: its custom metric passes and is in status; Ready, promoted.
async fn the_passing_job_is_promoted(env: &Env) {
    let cj = env.wait_phase("custom-pass", Phase::Succeeded, 1).await;
    let c = check(&cj, "custom.top1_agreement");
    assert!(c.passed && c.value >= 0.9 && c.limit == 0.9, "{c:?}");
    let result = cj.status.as_ref().unwrap().result.as_ref().unwrap();
    assert_eq!(
        result.candidate.custom.get("top1_agreement"),
        Some(&c.value),
        "the evaluator's metrics in status: {:?}",
        result.candidate.custom
    );
    assert!(
        result
            .candidate
            .custom
            .get("rows")
            .is_some_and(|&n| n >= 1.0),
        "{:?}",
        result.candidate.custom
    );
    assert!(result.promoted.is_some(), "{result:?}");
    assert_eq!(cond(&cj, condition::READY), ("True", "ThresholdsPassed"));
    assert_eq!(cond(&cj, condition::PROMOTED), ("True", "Promoted"));
    assert!(
        env.out()
            .join("custom-pass/production/promoted.json")
            .exists()
    );
}

/// `custom-fail`: its custom metric misses the bound; Rejected, nothing promoted.
async fn the_failing_job_is_rejected(env: &Env) {
    let cj = env.wait_phase("custom-fail", Phase::Rejected, 1).await;
    let c = check(&cj, "custom.top1_agreement");
    assert!(!c.passed && c.value > 0.5 && c.limit == 0.5, "{c:?}");
    assert_eq!(cond(&cj, condition::READY), ("False", "ThresholdsFailed"));
    assert_eq!(cond(&cj, condition::PROMOTED), ("False", "NotPromoted"));
    assert!(
        !env.out()
            .join("custom-fail/production/promoted.json")
            .exists(),
        "nothing promoted"
    );
}

/// With an image: the real API server and Job controller accept the worker pod with the
/// native sidecar. Kept off every node (the test node agent runs no sidecars).
async fn the_image_becomes_a_native_sidecar(env: &Env) {
    let sidecar = with_evaluator(
        env,
        "custom-image",
        "{command: [python3, /eval/score.py], image: 'registry.local/score@sha256:0123', timeoutSeconds: 120}",
        "[{metric: top1_agreement, min: 0.9}]",
    )
    .replacen(
        "spec:\n",
        "spec:\n  nodeSelector: {kompress.dev/no-such-node: \"true\"}\n",
        1,
    );
    let cj = env.create(&sidecar).await;
    let job = kompress::controller::job_name(&cj);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let selector = ListParams::default().labels(&format!("job-name={job}"));
    let pod = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(p) = pods.list(&selector).await.unwrap().items.pop() {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the Job controller creates the worker pod with the evaluator sidecar");
    let spec = pod.spec.unwrap();
    let init = spec.init_containers.unwrap_or_default();
    let names: Vec<_> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["install-agent", "evaluator"]);
    assert_eq!(init[0].restart_policy, None);
    assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        init[1].image.as_deref(),
        Some("registry.local/score@sha256:0123")
    );
    let command = init[1].command.clone().unwrap_or_default();
    assert_eq!(command[..2], ["/kompress-bin/kompress", "evaluator-agent"]);
    assert_eq!(command[command.len() - 2..], ["python3", "/eval/score.py"]);
    let worker_env = spec.containers[0].env.clone().unwrap_or_default();
    assert!(
        worker_env
            .iter()
            .any(|e| e.name == "KOMPRESS_EVALUATOR_AGENT_DIR"
                && e.value.as_deref() == Some("/scratch/evaluator")),
        "{worker_env:?}"
    );
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "unschedulable: never run by the test node agent"
    );
}
