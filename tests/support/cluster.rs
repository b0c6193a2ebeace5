//! Test support for the real control plane (hack/testenv): a client, the CRD installed, a
//! fresh namespace per test, the pinned kubectl/helm, and await-with-timeout (no sleeps).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Api, Client, Resource, ResourceExt};
use std::fmt::Debug;
use std::time::Duration;

pub const API_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Installs the CRD as shipped (idempotent: server-side apply) and waits until it serves.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kompress::api::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("kompress-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    await_for(
        crds,
        &name,
        "Established",
        API_TIMEOUT,
        conditions::is_crd_established(),
    )
    .await;
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
