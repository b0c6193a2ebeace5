//! The S3 test server (Garage): credentials, copies in and out, boto3.

use super::*;

/// The env of the real S3 server started by `hack/s3/up` (KOMPRESS_S3_ENV = its env file).
/// Panics with instructions when it is not running: these tests must not pass vacuously.
pub fn s3_env() -> Vec<(String, String)> {
    let path = std::env::var("KOMPRESS_S3_ENV").expect(
        "KOMPRESS_S3_ENV is not set: start the S3 server with `hack/s3/up` and export KOMPRESS_S3_ENV=<the path it prints> (make test does this)",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A variable of the S3 server's environment file (see [`s3_env`]).
pub fn env_value(env: &[(String, String)], k: &str) -> String {
    env.iter()
        .find(|(n, _)| n == k)
        .unwrap_or_else(|| panic!("{k} in the S3 env file"))
        .1
        .clone()
}

/// Puts the file `src` at `uri` (`s3://bucket/key`) with boto3.
pub fn s3_put(env: &[(String, String)], src: &Path, uri: &str) {
    boto(env, &["put", src.to_str().unwrap(), uri]);
}

/// Gets `uri` (`s3://bucket/key`) into the file `dst` with boto3.
pub fn s3_get(env: &[(String, String)], uri: &str, dst: &Path) {
    boto(env, &["get", uri, dst.to_str().unwrap()]);
}

/// The digits model and its evaluation set, put at `s3://models/<p>/model.onnx` and
/// `s3://datasets/<p>/eval.npz`: their URIs.
pub fn upload_digits(env: &[(String, String)], p: &str) -> (String, String) {
    let r = repo();
    let model = format!("s3://models/{p}/model.onnx");
    let data = format!("s3://datasets/{p}/eval.npz");
    s3_put(env, &r.join("examples/digits/model.onnx"), &model);
    s3_put(env, &r.join("examples/digits/eval.npz"), &data);
    (model, data)
}

/// A loopback port free now (the listener that found it is closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run_with_env(args: &[&str], env: &[(String, String)], extra: &[(&str, &str)]) -> Ran {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    run_kompress(args, &all)
}

/// A unique key prefix per test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// boto3 (an independent S3 client) against the test server: `put FILE s3://b/k`,
/// `get s3://b/k FILE`, or `list s3://b/prefix` (one key per line).
pub fn boto(env: &[(String, String)], args: &[&str]) -> String {
    let script = r#"
import sys, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
def split(u):
    b, _, k = u[len("s3://"):].partition("/")
    return b, k
op = sys.argv[1]
if op == "put":
    b, k = split(sys.argv[3]); s3.upload_file(sys.argv[2], b, k)
elif op == "get":
    b, k = split(sys.argv[2]); s3.download_file(b, k, sys.argv[3])
elif op == "list":
    b, k = split(sys.argv[2])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=k):
        for o in page.get("Contents", []):
            print(o["Key"])
"#;
    let mut c = std::process::Command::new("python3");
    c.arg("-c").arg(script).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("python3");
    assert!(
        o.status.success(),
        "boto3 {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}
