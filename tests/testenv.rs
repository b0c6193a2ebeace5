//! The test control plane itself (hack/testenv): a batch/v1 Job goes through the real
//! controller-manager and scheduler to the test node agent, which runs it as a local process
//! and reports its exit code and termination message like a kubelet. And the CRD installs
//! and explains with the built kubectl.

mod support;

use support::cluster::*;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn job(name: &str, script: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]
            }}
        }
    }))
    .unwrap()
}

async fn finished_pod(client: &Client, ns: &str, job: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "one pod for the job");
    list.items.into_iter().next().unwrap()
}

fn terminated(p: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    p.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .expect("terminated state")
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_job_runs_on_the_test_node_and_completes_with_its_termination_message() {
    let client = client().await;
    let ns = create_namespace(&client, "testenv-ok").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &job("hello", "echo done-ok > /dev/termination-log"),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        TIMEOUT,
        await_condition(jobs.clone(), "hello", conditions::is_job_completed()),
    )
    .await
    .expect("Job completes in time")
    .unwrap();
    let pod = finished_pod(&client, &ns, "hello").await;
    assert!(
        pod.spec.as_ref().unwrap().node_name.is_some(),
        "the real scheduler bound the pod"
    );
    let t = terminated(&pod);
    assert_eq!(
        (t.exit_code, t.message.as_deref().map(str::trim)),
        (0, Some("done-ok"))
    );
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .ok();
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_failing_command_gives_a_failed_job_with_its_exit_code() {
    let client = client().await;
    let ns = create_namespace(&client, "testenv-fail").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &job("boom", "echo bad-input > /dev/termination-log; exit 65"),
    )
    .await
    .unwrap();
    let failed = |j: Option<&Job>| {
        j.and_then(|j| j.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
    };
    tokio::time::timeout(TIMEOUT, await_condition(jobs.clone(), "boom", failed))
        .await
        .expect("Job fails in time")
        .unwrap();
    let t = terminated(&finished_pod(&client, &ns, "boom").await);
    assert_eq!(
        (t.exit_code, t.message.as_deref().map(str::trim)),
        (65, Some("bad-input"))
    );
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .ok();
}

#[test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
fn the_crd_applies_with_kubectl_and_explains_its_fields() {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG: run hack/testenv/up");
    let cache = std::env::var("KOMPRESS_TESTENV_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kompress-testenv", std::env::var("HOME").unwrap()));
    let kubectl = format!("{cache}/v1.36.3/bin/kubectl");
    let try_run = |args: &[&str]| {
        let o = std::process::Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .current_dir(support::repo())
            .output()
            .expect("kubectl");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let run = |args: &[&str]| {
        let (ok, out, err) = try_run(args);
        assert!(ok, "kubectl {args:?}: {err}");
        (out, err)
    };
    // The apiserver publishes a new CRD's OpenAPI schema a moment after it is Established;
    // `kubectl explain` reads that, so poll it (bounded) instead of sleeping.
    let explain = |path: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = try_run(&["explain", path]);
            if ok {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl explain {path} never succeeded: {err}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let (_, warnings) = run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "crds/compressionjob.yaml",
    ]);
    assert!(
        !warnings.contains("Warning"),
        "the apiserver warned about the CRD: {warnings}"
    );
    run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/compressionjobs.kompress.dev",
    ]);
    let spec = explain("compressionjob.spec");
    for field in [
        "passes",
        "thresholds",
        "output",
        "Compression passes, applied in this order",
    ] {
        assert!(spec.contains(field), "explain lacks {field}: {spec}");
    }
    let thresholds = explain("compressionjob.spec.thresholds.maxAccuracyDrop");
    assert!(thresholds.contains("one percentage point"), "{thresholds}");

    // the CompressionPolicy CRD: accepted without warnings (its template carries the job's
    // CEL rules one level deeper), documented
    let (_, warnings) = run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "crds/compressionpolicy.yaml",
    ]);
    assert!(
        !warnings.contains("Warning"),
        "the apiserver warned about the policy CRD: {warnings}"
    );
    run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/compressionpolicies.kompress.dev",
    ]);
    let source = explain("compressionpolicy.spec.source");
    assert!(source.contains("wildcards"), "{source}");
    let template = explain("compressionpolicy.spec.jobTemplate.spec.output.promoteTo");
    assert!(template.contains("promoted"), "{template}");
}
