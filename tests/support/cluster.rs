//! Test support for the real control plane (hack/testenv): a client, the CRD installed, a
//! fresh namespace per test, the pinned kubectl/helm, and await-with-timeout (no sleeps).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kompress::api::CompressionJob;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Api, Client, Resource, ResourceExt};
use std::fmt::Debug;
use std::time::Duration;

pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A process killed (and reaped) however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller binary for `ns` without election, its metrics on `metrics_addr`, logging
/// at info; the caller adds its environment and spawns it.
pub fn controller_command(ns: &str, metrics_addr: &str) -> std::process::Command {
    let mut c = std::process::Command::new(super::bin());
    c.args([
        "controller",
        "--leader-elect=false",
        "--namespace",
        ns,
        "--metrics-addr",
        metrics_addr,
    ])
    .env("RUST_LOG", "info");
    c
}

/// The Secret `s3-credentials` in `ns` with the S3 server's key and region (from its `env`),
/// for the worker pods.
pub async fn create_credentials_secret(client: &Client, ns: &str, env: &[(String, String)]) {
    use super::env_value;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": env_value(env, "AWS_ACCESS_KEY_ID"),
            "AWS_SECRET_ACCESS_KEY": env_value(env, "AWS_SECRET_ACCESS_KEY"),
            "AWS_REGION": env_value(env, "AWS_REGION"),
        }
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A client for the running test control plane; fails with instructions when there is none.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: these tests need the test control plane. Start it with \
         `KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up` (it prints the kubeconfig \
         path) and export KUBECONFIG=<that path>; `make test` does all of this"
    );
    Client::try_default()
        .await
        .expect("a client from KUBECONFIG")
}

/// Installs the CRDs as shipped (CompressionJob, CompressionPolicy; idempotent: server-side
/// apply) and waits until they serve.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [kompress::api::crd(), kompress::api::policy_crd()] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("kompress-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply the CRD");
        await_for(
            crds.clone(),
            &name,
            "Established",
            API_TIMEOUT,
            conditions::is_crd_established(),
        )
        .await;
    }
}

/// A unique suffix for names in a shared cluster.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0x100000)
}

/// Creates a fresh namespace `<prefix>-<unique>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", unique_suffix());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the test namespace");
    name
}

/// Deletes a namespace (passing tests call it; failing ones leave theirs for the post-mortem).
pub async fn delete_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
        .ok();
}

/// Waits until `cond` holds for the named object, or fails saying what was awaited.
pub async fn await_for<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> K
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api, name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        other => panic!("{name} never became {what} within {timeout:?}: {other:?}"),
    }
}

/// Waits for `cond` on a CompressionJob; on timeout fails with its status, the namespace's
/// Jobs, and where the worker logs are.
pub async fn await_compression_job(
    cjs: &Api<kompress::api::CompressionJob>,
    jobs: &Api<k8s_openapi::api::batch::v1::Job>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<kompress::api::CompressionJob>,
) -> kompress::api::CompressionJob {
    match tokio::time::timeout(timeout, await_condition(cjs.clone(), name, cond)).await {
        Ok(Ok(Some(cj))) => cj,
        other => {
            let cj = cjs.get_opt(name).await.ok().flatten();
            let jobs = jobs
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let jobs: Vec<_> = jobs
                .iter()
                .map(|j| (j.name_any(), j.status.clone()))
                .collect();
            panic!(
                "{name} never got {what} ({other:?} after {timeout:?}).\nstatus: {}\njobs: {}\n(worker logs: the node agent's state dir, $KOMPRESS_TESTENV_DIR/agents/*/logs)",
                serde_json::to_string_pretty(&cj.and_then(|c| c.status)).unwrap(),
                serde_json::to_string_pretty(&jobs).unwrap()
            )
        }
    }
}

/// The pinned binaries hack/testenv built (kubectl, helm, ...).
pub fn testenv_bin(name: &str) -> String {
    let cache = std::env::var("KOMPRESS_TESTENV_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/kompress-testenv",
            std::env::var("HOME").expect("HOME")
        )
    });
    format!("{cache}/v1.36.3/bin/{name}")
}

/// A fresh namespace with an in-process controller watching only it, so that cluster tests
/// run in parallel (tests/controller.rs, tests/gitops.rs). Only passing tests call `cleanup`:
/// a failing one leaves its namespace (CompressionJob, Jobs, Events) for the post-mortem.
pub struct ControllerEnv {
    pub client: Client,
    pub ns: String,
    pub cjs: Api<kompress::api::CompressionJob>,
    pub jobs: Api<k8s_openapi::api::batch::v1::Job>,
    pub dir: tempfile::TempDir,
    controller: tokio::task::JoinHandle<()>,
    /// What the controller was started with (a restart starts the same).
    config: kompress::controller::ControllerConfig,
}

/// A worker run of the digits example takes seconds; the margin is for a busy machine.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

impl ControllerEnv {
    pub async fn new(test: &str) -> Self {
        Self::with(test, |_| {}).await
    }

    /// As [`new`](Self::new), with the controller's configuration adjusted by `adjust`.
    pub async fn with(
        test: &str,
        adjust: impl FnOnce(&mut kompress::controller::ControllerConfig),
    ) -> Self {
        use kompress::controller::ControllerConfig;
        let client = client().await;
        install_crd(&client).await;
        let ns = create_namespace(&client, &format!("kt-{test}")).await;
        let mut config = ControllerConfig {
            namespace: Some(ns.clone()),
            worker_image: "kompress:test".into(),
            ..ControllerConfig::default()
        };
        adjust(&mut config);
        let controller = Self::spawn_controller(&client, config.clone());
        Self {
            cjs: Api::namespaced(client.clone(), &ns),
            jobs: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            dir: tempfile::tempdir().unwrap(),
            controller,
            config,
        }
    }

    fn spawn_controller(
        client: &Client,
        config: kompress::controller::ControllerConfig,
    ) -> tokio::task::JoinHandle<()> {
        use kompress::controller::{State, run_controller};
        let client = client.clone();
        tokio::spawn(async move {
            let _ = run_controller(client, config, std::sync::Arc::new(State::default())).await;
        })
    }

    /// Stops the controller and starts a fresh one (empty caches, as after a crash).
    pub async fn restart_controller(&mut self) {
        self.stop_controller().await;
        self.controller = Self::spawn_controller(&self.client, self.config.clone());
    }

    pub async fn create(&self, yaml: &str) -> kompress::api::CompressionJob {
        let cj: kompress::api::CompressionJob =
            serde_saphyr::from_str(yaml).expect("test manifest parses");
        self.cjs
            .create(&PostParams::default(), &cj)
            .await
            .expect("create the CompressionJob")
    }

    /// Waits for `cond` on the CompressionJob; on timeout fails with its status, its Jobs and
    /// where the worker logs are.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Condition<kompress::api::CompressionJob>,
    ) -> kompress::api::CompressionJob {
        await_compression_job(&self.cjs, &self.jobs, name, what, timeout, cond).await
    }

    pub async fn wait_phase(
        &self,
        name: &str,
        phase: kompress::api::Phase,
        generation: i64,
    ) -> kompress::api::CompressionJob {
        self.wait(
            name,
            &format!("phase {phase:?} for generation {generation}"),
            RUN_TIMEOUT,
            move |o: Option<&kompress::api::CompressionJob>| {
                o.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.phase == Some(phase) && s.observed_generation == Some(generation)
                })
            },
        )
        .await
    }

    pub fn out(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The digits example as `name` in this namespace, writing under `out`.
    pub fn digits_in(&self, name: &str, out: &std::path::Path, thresholds: &str) -> String {
        let r = super::repo();
        let yaml = super::job_yaml(
            name,
            &r.join("examples/digits/model.onnx").display().to_string(),
            &r.join("examples/digits/eval.npz").display().to_string(),
            "    - quantize:\n        perChannel: true",
            thresholds,
            out,
        );
        yaml.replacen(
            "metadata:\n",
            &format!("metadata:\n  namespace: {}\n", self.ns),
            1,
        )
    }

    /// The Jobs in the namespace.
    pub async fn job_list(&self) -> Vec<k8s_openapi::api::batch::v1::Job> {
        self.jobs
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// The digits example as `name`, writing under [`out`](Self::out).
    pub fn digits(&self, name: &str, thresholds: &str) -> String {
        self.digits_in(name, &self.out(), thresholds)
    }

    /// Stops the controller and waits until it has stopped: from then on no status changes.
    pub async fn stop_controller(&mut self) {
        self.controller.abort();
        let stopped = (&mut self.controller).await;
        assert!(
            stopped.as_ref().is_err_and(|e| e.is_cancelled()),
            "the controller was still running until stopped: {stopped:?}"
        );
    }

    /// Stops the controller and deletes the namespace.
    pub async fn cleanup(self) {
        self.controller.abort();
        delete_namespace(&self.client, &self.ns).await;
    }

    /// Waits until an Event with `reason` regards the CompressionJob `name` (the controller
    /// records it right after the status write that the test awaited).
    pub async fn wait_event(&self, name: &str, reason: &str) {
        use futures::TryStreamExt;
        use k8s_openapi::api::events::v1::Event;
        use kube::runtime::{WatchStreamExt, watcher};
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let stream = watcher(events, watcher::Config::default()).applied_objects();
        let found = stream.try_filter(|e| {
            let hit = e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason);
            std::future::ready(hit)
        });
        futures::pin_mut!(found);
        match tokio::time::timeout(Duration::from_secs(30), found.try_next()).await {
            Ok(Ok(Some(_))) => {}
            other => panic!("no {reason} Event for {name} ({other:?})"),
        }
    }
}

/// The status and reason of `cj`'s condition `type_` (it must have one).
/// The message of `cj`'s status ("" without one).
pub fn status_message(cj: &CompressionJob) -> String {
    cj.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

pub fn cond<'a>(cj: &'a CompressionJob, type_: &str) -> (&'a str, &'a str) {
    let c = cj
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}
