//! The pipeline against a real S3-compatible server (Garage, started by hack/s3/up):
//! s3:// to s3://, promotion only on pass, permanent errors for bad locations and
//! credentials, and secrets never printed or stored.

mod support;

use support::*;

/// The gate of the passing jobs.
const GATE: &str = "    maxAccuracyDrop: 0.01\n    minCompressionRatio: 3.5";

/// [`s3_job`] named `name`, its candidates and promotions under `s3://models/<p>/`.
fn digits_s3_job(name: &str, model: &str, data: &str, thresholds: &str, p: &str) -> String {
    s3_job(
        name,
        model,
        data,
        thresholds,
        &format!("s3://models/{p}/candidates"),
        &format!("s3://models/{p}/production"),
    )
}

fn s3_job(
    name: &str,
    model: &str,
    data: &str,
    thresholds: &str,
    out: &str,
    promote: &str,
) -> String {
    format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {model}\n  dataset:\n    uri: {data}\n  passes:\n    - quantize:\n        perChannel: true\n  thresholds:\n{thresholds}\n  output:\n    uri: {out}\n    promoteTo: {promote}\n  evaluation:\n    latency: {{warmup: 1, iterations: 3}}\n"
    )
}

#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn s3_to_s3_promotes_a_passing_candidate() {
    let env = s3_env();
    let p = unique("pass");
    let (model, data) = upload_digits(&env, &p);
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &digits_s3_job("digits", &model, &data, GATE, &p),
    );
    let r = run_with_env(&["run", "-f", &job, "-o", "json"], &env, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let digest = report["result"]["promoted"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let keys = boto(&env, &["list", &format!("s3://models/{p}/production/")]);
    let keys: Vec<&str> = keys.lines().collect();
    let evidence = report["result"]["evidence"]["uri"].as_str().unwrap();
    let expected = [
        format!("{p}/production/promoted.json"),
        evidence
            .strip_prefix("s3://models/")
            .unwrap_or(evidence)
            .to_string(),
        format!("{p}/production/sha256-{digest}/model.onnx"),
    ];
    assert_eq!(
        keys,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // the promoted object, read back by another client, has the digest the manifest names
    let got = dir.path().join("promoted.onnx");
    s3_get(
        &env,
        &format!("s3://models/{p}/production/sha256-{digest}/model.onnx"),
        &got,
    );
    assert_eq!(kompress::storage::sha256_file(&got).unwrap(), digest);
    let manifest = dir.path().join("promoted.json");
    s3_get(
        &env,
        &format!("s3://models/{p}/production/promoted.json"),
        &manifest,
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["digest"], digest.as_str());
    assert_eq!(m["source"]["uri"], model.as_str());
    // audit trail: the candidate and the report under the run prefix
    let runs = boto(
        &env,
        &["list", &format!("s3://models/{p}/candidates/runs/")],
    );
    assert!(
        runs.contains("report.json") && runs.contains("model.onnx"),
        "{runs}"
    );
}

#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn s3_rejected_candidate_leaves_promote_to_empty() {
    let env = s3_env();
    let p = unique("reject");
    let (model, data) = upload_digits(&env, &p);
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &digits_s3_job("digits", &model, &data, "    minCompressionRatio: 50", &p),
    );
    let r = run_with_env(&["run", "-f", &job], &env, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("REJECTED"));
    assert_eq!(
        boto(&env, &["list", &format!("s3://models/{p}/production/")]),
        ""
    );
    assert!(boto(&env, &["list", &format!("s3://models/{p}/candidates/")]).contains("report.json"));
}

/// Runs a job that must fail permanently; returns stderr + stdout for message checks.
fn permanent_failure(
    env: &[(String, String)],
    extra: &[(&str, &str)],
    model: &str,
    data: &str,
    p: &str,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &digits_s3_job("bad", model, data, "    minCompressionRatio: 1", p),
    );
    let r = run_with_env(&["run", "-f", &job], env, extra);
    assert_eq!(
        r.code,
        kompress::api::wire::EXIT_PERMANENT,
        "expected a permanent error; stderr: {}",
        r.stderr
    );
    assert_eq!(
        boto(env, &["list", &format!("s3://models/{p}/production/")]),
        "",
        "nothing promoted"
    );
    format!("{}{}", r.stderr, r.stdout)
}

#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn bad_locations_and_credentials_are_permanent_errors_that_never_show_secrets() {
    let env = s3_env();
    let secret = env_value(&env, "AWS_SECRET_ACCESS_KEY");
    let p = unique("bad");
    let (model, data) = upload_digits(&env, &p);
    let no_leak = |text: &str| assert!(!text.contains(&secret), "the secret key leaked: {text}");

    let e = permanent_failure(&env, &[], "s3://no-such-bucket/model.onnx", &data, &p);
    assert!(
        e.contains("s3://no-such-bucket/model.onnx") && e.contains("AWS_ACCESS_KEY_ID"),
        "names the URI and the credential source: {e}"
    );
    no_leak(&e);

    let e = permanent_failure(
        &env,
        &[],
        &format!("s3://models/{p}/missing.onnx"),
        &data,
        &p,
    );
    assert!(e.contains("does not exist"), "{e}");

    let e = permanent_failure(
        &env,
        &[(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )],
        &model,
        &data,
        &p,
    );
    assert!(e.contains("denied") || e.contains("credentials"), "{e}");
    no_leak(&e);

    let e = permanent_failure(&env, &[], "s3:///model.onnx", &data, &p);
    assert!(e.contains("malformed") && e.contains("bucket"), "{e}");

    let e = permanent_failure(&env, &[], "ftp://example/model.onnx", &data, &p);
    assert!(e.contains("unsupported URI scheme `ftp`"), "{e}");

    // sha256 mismatch: the spec pins a digest the file does not have
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_job(
        "bad",
        &model,
        &data,
        "    minCompressionRatio: 1",
        &format!("s3://models/{p}/c"),
        &format!("s3://models/{p}/production"),
    )
    .replace(
        &format!("uri: {model}\n"),
        &format!("uri: {model}\n    sha256: {}\n", "0".repeat(64)),
    );
    let r = run_with_env(&["run", "-f", &write_job(dir.path(), &yaml)], &env, &[]);
    assert_eq!(r.code, kompress::api::wire::EXIT_PERMANENT);
    assert!(
        r.stderr.contains("sha256") && r.stderr.contains(&"0".repeat(64)),
        "{}",
        r.stderr
    );

    // success path output and report carry no secret either
    let job = write_job(
        dir.path(),
        &s3_job(
            "ok",
            &model,
            &data,
            "    minCompressionRatio: 1",
            &format!("s3://models/{p}/ok"),
            &format!("s3://models/{p}/prod-ok"),
        ),
    );
    let r = run_with_env(&["run", "-f", &job, "-o", "json"], &env, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    no_leak(&r.stdout);
    no_leak(&r.stderr);
}

#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn https_404_is_a_permanent_error() {
    // A real HTTP server on loopback that has no such file.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            dir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let env = s3_env();
    let p = unique("http");
    let (_, data) = upload_digits(&env, &p);
    let e = permanent_failure(
        &env,
        &[],
        &format!("http://127.0.0.1:{port}/models/missing.onnx"),
        &data,
        &p,
    );
    server.kill().ok();
    server.wait().ok();
    assert!(
        e.contains(&format!("http://127.0.0.1:{port}/models/missing.onnx"))
            && e.contains("does not exist"),
        "{e}"
    );
}

/// `Storage::scan` (what a CompressionPolicy lists with): every object under a prefix with its
/// size and entity tag, streamed; stopped after `max_objects`.
#[tokio::test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
async fn a_scan_streams_objects_with_their_etags_and_stops_at_its_bound() {
    use kompress::storage::{Listed, Location, Storage};
    let env = s3_env();
    let get = |k: &str| env_value(&env, k);
    let p = unique("scan");
    let r = repo();
    for v in ["v1", "v2", "v3"] {
        s3_put(
            &env,
            &r.join("examples/digits/model.onnx"),
            &format!("s3://models/{p}/digits/{v}/model.onnx"),
        );
    }
    let spec = kompress::api::StorageSpec {
        endpoint: Some(get("AWS_ENDPOINT_URL")),
        region: Some(get("AWS_REGION")),
        allow_http: Some(true),
        ..Default::default()
    };
    let storage = Storage::new(Some(&spec))
        .with_option("aws_access_key_id", &get("AWS_ACCESS_KEY_ID"))
        .with_option("aws_secret_access_key", &get("AWS_SECRET_ACCESS_KEY"));
    let prefix = Location::parse(&format!("s3://models/{p}")).unwrap();
    let mut seen: Vec<Listed> = Vec::new();
    let complete = storage
        .scan(&prefix, 10, &mut |o| seen.push(o))
        .await
        .unwrap();
    assert!(complete);
    let keys: Vec<&str> = seen.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "digits/v1/model.onnx",
            "digits/v2/model.onnx",
            "digits/v3/model.onnx"
        ]
    );
    let size = std::fs::metadata(r.join("examples/digits/model.onnx"))
        .unwrap()
        .len();
    for o in &seen {
        assert_eq!(o.size, size, "{o:?}");
        assert!(o.e_tag.as_deref().is_some_and(|e| !e.is_empty()), "{o:?}");
    }
    let mut n = 0;
    let complete = storage.scan(&prefix, 2, &mut |_| n += 1).await.unwrap();
    assert_eq!((complete, n), (false, 2));
}

/// The compression cache's index lives in the output store: a second `kompress run` process
/// (another machine, another cluster: nothing is shared but the bucket) finds the first one's
/// entry on s3://, re-verifies the candidate it names and promotes the same bytes.
#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn the_cache_index_on_s3_serves_a_second_process() {
    let env = s3_env();
    let p = unique("cache");
    let (model, data) = upload_digits(&env, &p);
    let dir = tempfile::tempdir().unwrap();
    let out = format!("s3://models/{p}/candidates");
    let job = write_job(
        dir.path(),
        &digits_s3_job("digits", &model, &data, GATE, &p),
    );
    let run = || {
        // Each run in its own scratch folder: the second process sees only the bucket.
        let scratch = tempfile::tempdir().unwrap();
        let r = run_with_env(
            &[
                "run",
                "-f",
                &job,
                "-o",
                "json",
                "--scratch",
                scratch.path().to_str().unwrap(),
            ],
            &env,
            &[],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let first = run();
    assert!(first["result"].get("cachedFrom").is_none());
    let second = run();
    let from = &second["result"]["cachedFrom"];
    let first_run = first["result"]["artifact"]["uri"]
        .as_str()
        .unwrap()
        .strip_suffix("/model.onnx")
        .unwrap();
    assert_eq!(from["run"], first_run, "{second}");
    let stages: Vec<&str> = second["result"]["usage"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["fetch", "cache", "publish"]);
    assert_eq!(second["result"]["promoted"], first["result"]["promoted"]);
    let key = from["key"].as_str().unwrap();
    let listed = boto(&env, &["list", &format!("{out}/cache/")]);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [format!("{p}/candidates/cache/{key}.json")]
    );
}
