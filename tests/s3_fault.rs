//! Fault injection on the real S3 server: it is stopped while the candidate uploads. The run
//! must fail as a transient error with nothing promoted; after a restart a rerun promotes once.
//! (A test binary of its own: stopping the server would break tests running beside it.)

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::*;

fn s3_script(env: &[(String, String)], name: &str) {
    let mut c = Command::new(repo().join("hack/s3").join(name));
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "hack/s3/{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
fn server_stopped_during_candidate_upload_fails_transiently_and_promotes_nothing() {
    let env = s3_env();
    let p = unique("fault");
    let dir = tempfile::tempdir().unwrap();
    // ~135 MB model; `prune sparsity: 0` keeps the candidate that size, so its multipart
    // upload takes long enough to be interrupted.
    let model = dir.path().join("model.onnx");
    write_model(&mlp(&[64, 4096, 4096, 4096, 10], 3), &model);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 8, 64, 10);
    boto(
        &env,
        &[
            "put",
            model.to_str().unwrap(),
            &format!("s3://models/{p}/model.onnx"),
        ],
    );
    boto(
        &env,
        &[
            "put",
            data.to_str().unwrap(),
            &format!("s3://datasets/{p}/data.npz"),
        ],
    );
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: fault\nspec:\n  model:\n    uri: s3://models/{p}/model.onnx\n  dataset:\n    uri: s3://datasets/{p}/data.npz\n  passes:\n    - prune:\n        sparsity: 0.0\n  thresholds:\n    minCosineSimilarity: 0.99\n  output:\n    uri: s3://models/{p}/candidates\n    promoteTo: s3://models/{p}/production\n  evaluation:\n    latency: {{warmup: 0, iterations: 1}}\n"
        ),
    )
    .unwrap();

    let mut child = Command::new(bin());
    child
        .args(["run", "-f", job.to_str().unwrap()])
        .env("KOMPRESS_STORAGE_RETRY_SECONDS", "2")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in &env {
        child.env(k, v);
    }
    let mut child = child.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "kompress ended before uploading: {seen}"
        );
        seen.push_str(&line);
        if line.contains("uploading candidate") {
            break;
        }
    }
    // SIGKILL straight away (no script start-up delay): the upload takes far longer.
    let pid = env
        .iter()
        .find(|(k, _)| k == "KOMPRESS_S3_PID")
        .expect("KOMPRESS_S3_PID in the env file")
        .1
        .clone();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    s3_script(&env, "start");
    let env = s3_env(); // start rewrites the env file (new pid, same port)
    assert_eq!(
        status.code(),
        Some(kompress::api::wire::EXIT_TRANSIENT),
        "a storage outage is transient: {seen}{rest}"
    );
    assert!(
        rest.contains("retry later") && rest.contains(&format!("s3://models/{p}/candidates")),
        "{rest}"
    );
    assert_eq!(
        boto(&env, &["list", &format!("s3://models/{p}/production/")]),
        "",
        "promoteTo must hold nothing new"
    );

    // Server back: the same job now promotes exactly once.
    let r = run_with_env(&["run", "-f", job.to_str().unwrap()], &env, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let keys = boto(&env, &["list", &format!("s3://models/{p}/production/")]);
    assert_eq!(
        keys.lines().filter(|k| !k.contains("/evidence/")).count(),
        2,
        "one model and one manifest (and the evidence): {keys}"
    );
    assert_eq!(
        keys.lines().filter(|k| k.ends_with("/model.onnx")).count(),
        1
    );
}
