//! The whole operator path with every part real: a CompressionJob whose model and dataset sit
//! in the S3 server (Garage) and whose credentials come from a Secret -> the controller binary
//! creates the Job -> the scheduler binds the pod to the test node -> the node agent runs
//! `kompress worker` -> termination message -> status Succeeded, Ready=True, the promoted
//! object in S3, Events, and the controller's /metrics.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kompress::api::{CompressionJob, Phase};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use std::time::Duration;
use support::cluster::*;
use support::*;

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test]
#[ignore = "needs the test control plane and the S3 server: run via `make test`"]
async fn s3_compression_job_runs_as_a_pod_and_is_promoted_with_status_events_and_metrics() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: start hack/testenv/up (make test does)"
    );
    let env = s3_env();
    let client = client().await;
    let p = unique("op");
    let ns = create_namespace(&client, "op").await;
    install_crd(&client).await;
    upload_digits(&env, &p);
    let secret_value = env_value(&env, "AWS_SECRET_ACCESS_KEY");
    create_credentials_secret(&client, &ns, &env).await;
    let port = free_port();
    let _controller = spawn_controller(&ns, port);

    let cjs: Api<CompressionJob> = Api::namespaced(client.clone(), &ns);
    cjs.create(&PostParams::default(), &digits_job(&p, &env))
        .await
        .unwrap();
    let cj = wait_until_finished(&cjs).await;
    let status = cj.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{:#?}", status);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    let result = status.result.clone().unwrap();
    let digest = result.promoted.as_ref().expect("promoted").sha256.clone();
    assert!(result.ratio >= 3.5);
    let keys = boto(&env, &["list", &format!("s3://models/{p}/production/")]);
    assert!(
        keys.contains(&format!("sha256-{digest}/model.onnx")) && keys.contains("promoted.json"),
        "{keys}"
    );
    assert!(
        !serde_json::to_string(&cj).unwrap().contains(&secret_value),
        "the secret never reaches status"
    );
    assert_job_events(&client, &ns).await;
    let metrics = http_get(port, "/metrics").expect("metrics endpoint");
    assert_job_metrics(&metrics, &ns, &cj);
    promtool_checks_metrics(&metrics);
    assert!(
        http_get(port, "/readyz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .ok();
}

/// The controller binary for `ns`, without election, its metrics on `port`.
fn spawn_controller(ns: &str, port: u16) -> KillOnDrop {
    KillOnDrop(
        controller_command(ns, &format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap(),
    )
}

/// CompressionJob `digits`: int8 of the uploaded model, gated, promoted within the bucket.
fn digits_job(p: &str, env: &[(String, String)]) -> CompressionJob {
    serde_saphyr::from_str(&format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {{name: digits}}\nspec:\n  model: {{uri: 's3://models/{p}/model.onnx'}}\n  dataset: {{uri: 's3://datasets/{p}/eval.npz'}}\n  storage: {{secretRef: {{name: s3-credentials}}, endpoint: '{}', allowHttp: true}}\n  passes: [{{quantize: {{perChannel: true}}}}]\n  thresholds: {{maxAccuracyDrop: 0.01, minCompressionRatio: 3.5}}\n  output: {{uri: 's3://models/{p}/candidates', promoteTo: 's3://models/{p}/production'}}\n  evaluation: {{latency: {{warmup: 1, iterations: 5}}}}\n",
        env_value(env, "AWS_ENDPOINT_URL")
    ))
    .unwrap()
}

/// Waits (up to 4 minutes) for `digits` to reach a terminal phase, and returns it.
async fn wait_until_finished(cjs: &Api<CompressionJob>) -> CompressionJob {
    let done = |c: Option<&CompressionJob>| {
        c.and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal())
    };
    await_for(
        cjs.clone(),
        "digits",
        "finished",
        Duration::from_secs(240),
        done,
    )
    .await;
    cjs.get("digits").await.unwrap()
}

/// The job's Events say the Job was created and the candidate promoted.
async fn assert_job_events(client: &kube::Client, ns: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("digits"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "JobCreated") && reasons.iter().any(|r| r == "Promoted"),
        "{reasons:?}"
    );
}

/// The job's ratio and promotion, and the worker's own usage, labelled with its pod and node
/// for cost tools.
fn assert_job_metrics(metrics: &str, ns: &str, cj: &CompressionJob) {
    let series = format!("kompress_job_compression_ratio{{name=\"digits\",namespace=\"{ns}\"}}");
    assert!(
        metrics.contains(&series),
        "{series} missing from:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "kompress_promotions_total{{namespace=\"{ns}\"}} 1"
        )),
        "{metrics}"
    );
    let status = cj.status.as_ref().unwrap();
    let worker = status.worker.as_ref().expect("the worker pod in status");
    let node = worker.node.as_deref().expect("the pod's node");
    let usage = status
        .result
        .as_ref()
        .unwrap()
        .usage
        .as_ref()
        .expect("usage in the result");
    assert!(
        usage.cpu_seconds > 0.0 && usage.peak_memory_bytes > 1 << 20,
        "{usage:?}"
    );
    assert!(usage.bytes_read > 0 && usage.bytes_written > 0, "{usage:?}");
    let cpu = format!(
        "kompress_job_cpu_seconds{{name=\"digits\",namespace=\"{ns}\",node=\"{node}\",pod=\"{}\"}}",
        worker.pod
    );
    assert!(metrics.contains(&cpu), "{cpu} missing from:\n{metrics}");
    assert!(
        metrics.contains("kompress_job_cpu_request_cores{"),
        "{metrics}"
    );
}

/// The whole scrape (an HTTP response) as Prometheus's own checker reads it.
fn promtool_checks_metrics(response: &str) {
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let mut check = std::process::Command::new(tools_bin("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
