//! Kueue admission against the real test control plane (hack/testenv) and a real Kueue
//! manager (sigs.k8s.io/kueue, built from its Go module and started by
//! hack/testenv/kueue-up): a ClusterQueue with the CPU quota of one worker, two
//! CompressionJobs in its LocalQueue. The first is admitted and runs; the second waits, and
//! its status says it is queued and Kueue's reason; once the first has ended the second is
//! admitted, runs, and is promoted. The first worker's model is served by a gated HTTP
//! server, so it is still running when the second is judged, however fast the machine.
//!
//! Run: `KUBECONFIG=$(KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up) cargo test --test controller_kueue -- --ignored`

mod support;

use k8s_openapi::api::batch::v1::Job;
use kompress::api::{CompressionJob, Phase, condition};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::cluster::*;
use support::hostile::{Answer, Server};

/// Starts Kueue on the running test environment (idempotent).
fn kueue_up() {
    let out = std::process::Command::new(support::repo().join("hack/testenv/kueue-up"))
        .output()
        .expect("run hack/testenv/kueue-up");
    assert!(
        out.status.success(),
        "hack/testenv/kueue-up failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kueue_api(client: &Client, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind));
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn create(api: &Api<DynamicObject>, obj: serde_json::Value) {
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &o)
        .await
        .unwrap_or_else(|e| panic!("create {:?}: {e}", o.metadata.name));
}

/// A ResourceFlavor, a ClusterQueue with `cpu` of CPU for this namespace, and the LocalQueue
/// `lq` pointing at it.
async fn queues(env: &ControllerEnv, cpu: &str) -> String {
    let cq = format!("{}-cq", env.ns);
    let flavor = format!("{}-flavor", env.ns);
    create(
        &kueue_api(&env.client, "ResourceFlavor", None),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}}),
    )
    .await;
    create(
        &kueue_api(&env.client, "ClusterQueue", None),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
                "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "8Gi"}]}]}]}}),
    )
    .await;
    create(
        &kueue_api(&env.client, "LocalQueue", Some(&env.ns)),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "lq", "namespace": env.ns},
            "spec": {"clusterQueue": cq}}),
    )
    .await;
    cq
}

/// The digits example with one CPU, 1 GiB, and `model` as its model.
fn job(env: &ControllerEnv, name: &str, model: &str) -> String {
    let yaml = env.digits(name, "    minCompressionRatio: 2.0");
    let original = support::repo()
        .join("examples/digits/model.onnx")
        .display()
        .to_string();
    yaml.replace(&format!("uri: {original}"), &format!("uri: {model}"))
        .replacen(
            "spec:\n",
            "spec:\n  resources: {cpu: \"1\", memory: 1Gi}\n",
            1,
        )
}

fn worker_job<'a>(jobs: &'a [Job], cj: &str) -> &'a Job {
    jobs.iter()
        .find(|j| {
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kompress.dev/job"))
                .map(String::as_str)
                == Some(cj)
        })
        .unwrap_or_else(|| panic!("no worker Job for {cj}"))
}

#[tokio::test]
#[ignore = "needs the test control plane (hack/testenv) with Kueue: make test"]
async fn a_second_job_waits_for_quota_says_why_and_runs_when_the_first_ends() {
    kueue_up();
    // the controller's default queue: neither job names one
    let env = ControllerEnv::with("kueue", |c| c.queue_name = Some("lq".into())).await;
    let cq = queues(&env, "1").await;

    // The first worker's model download waits until the test opens the gate.
    let model = std::fs::read(support::repo().join("examples/digits/model.onnx")).unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let server = Server::start(move |_| {
        let until = std::time::Instant::now() + Duration::from_secs(180);
        while !gate.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        Answer::Full {
            status: 200,
            headers: vec![],
            body: model.clone(),
        }
    });
    let local = support::repo()
        .join("examples/digits/model.onnx")
        .display()
        .to_string();
    env.create(&job(
        &env,
        "first",
        &format!("http://{}/model.onnx", server.addr),
    ))
    .await;
    env.wait_phase("first", Phase::Running, 1).await;

    env.create(&job(&env, "second", &local)).await;
    let queued = env
        .wait(
            "second",
            "Reconciling=Queued with Kueue's reason",
            Duration::from_secs(60),
            |o: Option<&CompressionJob>| {
                o.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition::RECONCILING
                            && c.reason == "Queued"
                            && c.message.contains("quota")
                    })
                })
            },
        )
        .await;
    let s = queued.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    let msg = &s
        .conditions
        .iter()
        .find(|c| c.type_ == condition::RECONCILING)
        .unwrap()
        .message;
    assert!(
        msg.contains("LocalQueue lq") && msg.contains("insufficient"),
        "{msg}"
    );
    println!("queued: {msg}");
    let jobs = env.jobs.list(&ListParams::default()).await.unwrap().items;
    let second = worker_job(&jobs, "second");
    assert_eq!(
        second.spec.as_ref().unwrap().suspend,
        Some(true),
        "not admitted while the first holds the quota"
    );
    assert_eq!(
        second
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("kueue.x-k8s.io/queue-name")
            .map(String::as_str),
        Some("lq")
    );

    open.store(true, Ordering::Relaxed);
    let first = env.wait_phase("first", Phase::Succeeded, 1).await;
    let second = env.wait_phase("second", Phase::Succeeded, 1).await;
    for cj in [&first, &second] {
        assert_eq!(cond(cj, condition::PROMOTED).0, "True", "{:?}", cj.status);
    }
    // one worker at a time: the second started once the first had finished
    let jobs = env.jobs.list(&ListParams::default()).await.unwrap().items;
    let (a, b) = (worker_job(&jobs, "first"), worker_job(&jobs, "second"));
    let done = a
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone())
        .expect("first completed");
    let started = b
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .expect("second started");
    assert!(
        started.0 >= done.0,
        "second started {started:?} before the first ended {done:?}"
    );

    for (kind, name) in [
        ("ClusterQueue", cq.clone()),
        ("ResourceFlavor", format!("{}-flavor", env.ns)),
    ] {
        kueue_api(&env.client, kind, None)
            .delete(&name, &Default::default())
            .await
            .ok();
    }
    drop(server);
    env.cleanup().await;
}
