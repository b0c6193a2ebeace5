//! A CompressionPolicy over the S3 server (Garage) on the test control plane: the controller
//! binary lists the bucket with its own credentials (its environment), identifies versions by
//! the store's entity tag, and the worker pods read and promote with the Secret's.

mod support;

use kompress::api::{CompressionJob, CompressionPolicy, CompressionPolicyStatus};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use std::time::Duration;
use support::cluster::*;
use support::*;

#[tokio::test]
#[ignore = "needs the test control plane and the S3 server: run via `make test`"]
async fn an_s3_policy_makes_one_job_per_etag_and_promotes_each_version() {
    let env = s3_env();
    let client = client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "policy-s3").await;
    let p = unique("pol");
    upload_versions(&env, &p);
    create_credentials_secret(&client, &ns, &env).await;
    let _controller = spawn_controller(&ns, &env);
    let policies: Api<CompressionPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &digits_policy(&p, &ns, &env))
        .await
        .unwrap();
    let status = wait_for_two_successes(&policies).await;
    assert_eq!(status.versions_seen, 2, "{status:?}");
    for v in &status.versions {
        assert!(v.id.starts_with("etag:"), "the store's entity tag: {v:?}");
        assert_eq!(v.sha256, None, "nothing hashed by the controller: {v:?}");
    }
    let keys = boto(&env, &["list", &format!("s3://models/{p}/serving/")]);
    for v in ["v1", "v2"] {
        assert!(
            keys.contains(&format!("digits/{v}/promoted.json")),
            "{v} not promoted: {keys}"
        );
    }
    let cjs: Api<CompressionJob> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        cjs.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    // a later scan with nothing new makes nothing
    wait_for_a_later_scan(&policies, &status).await;
    assert_eq!(
        cjs.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    delete_namespace(&client, &ns).await;
}

/// The digits model as `models/<p>/digits/v1` and `v2`, an evaluation set beside v2 (not a
/// model: the pattern leaves it out), and the evaluation set under `datasets/<p>/`.
fn upload_versions(env: &[(String, String)], p: &str) {
    let (model, data) = (
        repo().join("examples/digits/model.onnx"),
        repo().join("examples/digits/eval.npz"),
    );
    for v in ["v1", "v2"] {
        s3_put(
            env,
            &model,
            &format!("s3://models/{p}/digits/{v}/model.onnx"),
        );
    }
    // not a model: the pattern leaves it out
    s3_put(env, &data, &format!("s3://models/{p}/digits/v2/eval.npz"));
    s3_put(env, &data, &format!("s3://datasets/{p}/eval.npz"));
}

/// The controller binary for `ns`, without election, with the S3 server's credentials in its
/// own environment.
fn spawn_controller(ns: &str, env: &[(String, String)]) -> KillOnDrop {
    KillOnDrop(
        controller_command(ns, "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KOMPRESS_WORKER_IMAGE", "kompress:test")
            .spawn()
            .unwrap(),
    )
}

/// CompressionPolicy `digits`: every `models/<p>/*/v*/model.onnx`, scanned every 10 s, int8,
/// promoted to `serving/<key>/<version>`.
fn digits_policy(p: &str, ns: &str, env: &[(String, String)]) -> CompressionPolicy {
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionPolicy\nmetadata: {{name: digits, namespace: {ns}}}\n\
         spec:\n  source: {{uri: 's3://models/{p}/*/v*/model.onnx', interval: 10s}}\n  jobTemplate:\n    spec:\n\
         \x20     storage: {{secretRef: {{name: s3-credentials}}, endpoint: '{endpoint}', allowHttp: true}}\n\
         \x20     dataset: {{uri: 's3://datasets/{p}/eval.npz'}}\n      passes: [{{quantize: {{perChannel: true}}}}]\n\
         \x20     thresholds: {{maxAccuracyDrop: 0.01}}\n\
         \x20     output: {{uri: 's3://models/{p}/candidates', promoteTo: 's3://models/{p}/serving/{{{{.key}}}}/{{{{.version}}}}'}}\n\
         \x20     evaluation: {{latency: {{warmup: 1, iterations: 5}}}}\n",
        endpoint = env_value(env, "AWS_ENDPOINT_URL"),
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

/// Waits (up to RUN_TIMEOUT) for two succeeded versions in `digits`' status, and returns it.
async fn wait_for_two_successes(policies: &Api<CompressionPolicy>) -> CompressionPolicyStatus {
    let done = |p: Option<&CompressionPolicy>| {
        p.and_then(|p| p.status.as_ref())
            .is_some_and(|s| s.phases.get("Succeeded") == Some(&2))
    };
    let got = tokio::time::timeout(
        RUN_TIMEOUT,
        await_condition(policies.clone(), "digits", done),
    )
    .await;
    let status = policies.get("digits").await.unwrap().status;
    assert!(
        matches!(got, Ok(Ok(Some(_)))),
        "two versions never succeeded: {}",
        serde_json::to_string_pretty(&status).unwrap()
    );
    status.unwrap()
}

/// Waits (up to a minute) for a scan of `digits` after the one `status` records.
async fn wait_for_a_later_scan(
    policies: &Api<CompressionPolicy>,
    status: &CompressionPolicyStatus,
) {
    let scanned = status.last_scan.clone().unwrap();
    let later = move |p: Option<&CompressionPolicy>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.last_scan.as_ref())
            .is_some_and(|t| t.0 > scanned.0)
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(policies.clone(), "digits", later),
    )
    .await
    .expect("a later scan")
    .unwrap();
}
