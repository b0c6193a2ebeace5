//! Promotion to real OCI registries on 127.0.0.1 (hack/tools: the distribution registry, with
//! basic auth and no referrers API, and go-containerregistry's registry with the referrers
//! API), read back by an independent client (oras): the bytes pulled are the bytes promoted,
//! the evidence is a referrer oras discovers, `kompress verify oci://...` accepts it and
//! refuses another key; promoting the same bytes again sends no blob twice (the registry's own
//! request log agrees); and a registry killed in the middle of a push leaves the tag on the
//! last complete manifest.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::registry::Registry;
use support::*;

/// A Docker config with credentials for `addr` (what `docker login` writes).
fn docker_config(dir: &Path, addr: &str, user: &str, pass: &str) -> PathBuf {
    use base64::Engine;
    let d = dir.join("docker");
    std::fs::create_dir_all(&d).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        d.join("config.json"),
        serde_json::json!({"auths": {addr: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    d
}

/// A digits job promoting to `promote_to`, signed with `key`; `passes` chooses the content.
fn job(dir: &Path, name: &str, promote_to: &str, key: &Path, passes: &str) -> String {
    let r = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n{passes}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: {promote_to}\n    registry: {{plainHttp: true}}\n    signing: {{keyFile: {}}}\n",
        r.join("examples/digits/model.onnx").display(),
        r.join("examples/digits/eval.npz").display(),
        dir.join("candidates").display(),
        key.display(),
    );
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    write_job(&sub, &yaml)
}

const DYNAMIC: &str = "    - quantize: {mode: dynamic}";
const FP16: &str = "    - fp16: {}";

fn run(job: &str, docker: Option<&Path>) -> (i32, Value, String) {
    let d = docker.map(|d| d.display().to_string());
    let envs: Vec<(&str, &str)> = d.iter().map(|d| ("DOCKER_CONFIG", d.as_str())).collect();
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &envs);
    let v = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    (r.code, v, r.stderr)
}

fn oras(args: &[&str], docker: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(tools_bin("oras"));
    c.args(args);
    if let Some(d) = docker {
        c.args(["--registry-config", d.join("config.json").to_str().unwrap()]);
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn verify(reference: &str, public: &Path, docker: Option<&Path>) -> (i32, String) {
    let d = docker.map(|d| d.display().to_string());
    let envs: Vec<(&str, &str)> = d.iter().map(|d| ("DOCKER_CONFIG", d.as_str())).collect();
    let r = run_kompress(
        &[
            "verify",
            reference,
            "--key",
            public.to_str().unwrap(),
            "--plain-http",
            "-o",
            "json",
        ],
        &envs,
    );
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

/// Completed blob uploads the distribution registry logged (its request log).
fn blob_commits(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("http.request.method=PUT") && l.contains("/blobs/uploads/"))
        .filter(|l| l.contains("response completed"))
        .count()
}

#[test]
fn promotion_to_both_registries_reads_back_verifies_and_never_sends_a_blob_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "key", "ed25519");
    let (_, other_public) = keypair(dir.path(), "other", "ed25519");
    let with_auth = Registry::up(&["--kind", "distribution", "--auth", "kompress:s3cret"]);
    let referrers_api = Registry::up(&["--kind", "ggcr"]);
    let docker = docker_config(dir.path(), &with_auth.addr, "kompress", "s3cret");

    for (reg, docker, expect_referrers) in [
        (&with_auth, Some(docker.as_path()), "tagSchema"),
        (&referrers_api, None, "api"),
    ] {
        let tagged = format!("{}/models/digits:prod", reg.addr);
        let promote_to = format!("oci://{tagged}");
        let (code, out, err) = run(
            &job(dir.path(), "first", &promote_to, &key, DYNAMIC),
            docker,
        );
        assert_eq!(code, 0, "{err}");
        let r = &out["result"];
        assert_eq!(r["verdict"], "Passed", "{out:#}");
        let manifest = r["oci"]["manifestDigest"].as_str().unwrap().to_string();
        assert_eq!(
            r["promoted"]["uri"],
            format!("oci://{}/models/digits@{manifest}", reg.addr)
        );
        assert_eq!(r["oci"]["referrers"], expect_referrers, "{out:#}");
        assert_eq!(r["oci"]["blobsReused"], 0, "a fresh repository: {out:#}");
        oras_pulls_the_model_and_discovers_the_evidence(
            dir.path(),
            reg,
            docker,
            r,
            &manifest,
            expect_referrers,
        );

        // kompress verify: the key passes, another key fails.
        let (code, text) = verify(&promote_to, &public, docker);
        assert_eq!(code, 0, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["verdict"], "Passed");
        assert_eq!(v["digest"], r["promoted"]["sha256"]);
        let (code, text) = verify(&promote_to, &other_public, docker);
        assert_eq!(code, 1, "{text}");

        // The same bytes again: only the new evidence is sent.
        let before = blob_commits(&reg.log());
        let (code, again, err) = run(
            &job(dir.path(), "again", &promote_to, &key, DYNAMIC),
            docker,
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(again["result"]["oci"]["manifestDigest"], manifest.as_str());
        assert_eq!(again["result"]["oci"]["blobsUploaded"], 1, "{again:#}");
        assert_eq!(again["result"]["oci"]["blobsReused"], 3, "{again:#}");
        if expect_referrers == "tagSchema" {
            // The distribution registry's own log: one blob upload completed (the envelope).
            assert_eq!(blob_commits(&reg.log()) - before, 1, "{}", reg.log());
        }
        assert_eq!(verify(&promote_to, &public, docker).0, 0);
    }
    the_authenticated_registry_refuses_without_credentials(dir.path(), &with_auth, &key, &public);
}

/// oras pulls the model promoted to `reg` (result `r`) back, the bytes promoted, and finds
/// the evidence as a referrer of the manifest.
fn oras_pulls_the_model_and_discovers_the_evidence(
    dir: &Path,
    reg: &Registry,
    docker: Option<&Path>,
    r: &Value,
    manifest: &str,
    expect_referrers: &str,
) {
    let tagged = format!("{}/models/digits:prod", reg.addr);
    // oras pulls the model back: the bytes promoted.
    let pulled = dir.join(format!("pulled-{expect_referrers}"));
    let (ok, text) = oras(
        &[
            "pull",
            "--plain-http",
            &tagged,
            "-o",
            pulled.to_str().unwrap(),
        ],
        docker,
    );
    assert!(ok, "{text}");
    let candidate = local(r["artifact"]["uri"].as_str().unwrap());
    assert_eq!(
        std::fs::read(pulled.join("model.onnx")).unwrap(),
        std::fs::read(&candidate).unwrap()
    );
    assert_eq!(
        sha256_hex(&pulled.join("model.onnx")),
        r["promoted"]["sha256"].as_str().unwrap()
    );
    // ... and finds the evidence as a referrer of the manifest.
    let (ok, text) = oras(
        &[
            "discover",
            "--plain-http",
            "--format",
            "json",
            &format!("{}/models/digits@{manifest}", reg.addr),
        ],
        docker,
    );
    assert!(ok, "{text}");
    let evidence_digest = r["evidence"]["uri"]
        .as_str()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap();
    assert!(text.contains(evidence_digest), "oras discover: {text}");
    assert!(text.contains("application/vnd.in-toto+json"), "{text}");
}

/// Without credentials, or with a wrong password, the authenticated registry refuses: a
/// permanent failure (a retry cannot fix it) that names the registry and the Docker config.
fn the_authenticated_registry_refuses_without_credentials(
    dir: &Path,
    with_auth: &Registry,
    key: &Path,
    public: &Path,
) {
    let tagged_auth = format!("{}/models/digits:prod", with_auth.addr);
    let promote_to = format!("oci://{}/models/other:prod", with_auth.addr);
    let wrong = dir.join("wrong");
    let wrong = docker_config(&wrong, &with_auth.addr, "kompress", "not-the-password");
    for (case, docker) in [
        ("no credentials", None),
        ("a wrong password", Some(wrong.as_path())),
    ] {
        let (code, _, err) = run(&job(dir, "noauth", &promote_to, key, DYNAMIC), docker);
        assert_eq!(code, 65, "{case}: {err}");
        assert!(
            err.contains(&with_auth.addr)
                && err.contains("HTTP 401")
                && err.contains("Docker config"),
            "{case}: {err}"
        );
        let (code, text) = verify(&format!("oci://{tagged_auth}"), public, docker);
        assert_eq!(code, 65, "{case}: {text}");
    }
}

fn local(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// A TCP proxy in front of the registry that kills it (SIGKILL) when the first blob upload
/// is committed (`PUT .../blobs/uploads/...`), mid-push.
fn killing_proxy(upstream: String, pid: i32, killed: Arc<AtomicBool>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let (upstream, killed) = (upstream.clone(), killed.clone());
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
                let mut buf = [0u8; 65536];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = String::from_utf8_lossy(&buf[..n]);
                    if chunk.starts_with("PUT ") && chunk.contains("/blobs/uploads/") {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                        killed.store(true, Ordering::SeqCst);
                        let _ = s_write.shutdown(std::net::Shutdown::Both);
                        let _ = c_read.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// A process killed (and reaped) when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the `prod` tag of `repo_ref` names, as oras reads it (its descriptor).
fn tag_descriptor(repo_ref: &str) -> (bool, String) {
    oras(
        &[
            "manifest",
            "fetch",
            "--plain-http",
            "--descriptor",
            &format!("{repo_ref}:prod"),
        ],
        None,
    )
}

/// Restarts a distribution registry killed by the proxy, on its own config and data.
fn restart(reg: &Registry) -> Killed {
    let child = Killed(
        Command::new(tools_bin("registry"))
            .args(["serve", reg.dir.join("config.yml").to_str().unwrap()])
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .stdout(std::fs::File::create(reg.dir.join("restart.log")).unwrap())
            .stderr(std::fs::File::create(reg.dir.join("restart.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(&reg.addr) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() {
                return child;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the registry did not come back: {}", reg.dir.display());
}

#[test]
fn a_registry_killed_mid_push_leaves_the_tag_on_the_last_complete_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "key", "ed25519");
    let reg = Registry::up(&["--kind", "distribution"]);
    let repo_ref = format!("{}/models/digits", reg.addr);

    // A first promotion: the tag names manifest M1.
    let (code, first, err) = run(
        &job(
            dir.path(),
            "m1",
            &format!("oci://{repo_ref}:prod"),
            &key,
            DYNAMIC,
        ),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let m1 = first["result"]["oci"]["manifestDigest"]
        .as_str()
        .unwrap()
        .to_string();

    // Other bytes (fp16), pushed through a proxy that kills the registry at the first blob
    // commit: the job fails, and nothing it did is visible at the tag.
    let killed = Arc::new(AtomicBool::new(false));
    let proxy = killing_proxy(reg.addr.clone(), reg.pid(), killed.clone());
    let (code, out, err) = run(
        &job(
            dir.path(),
            "m2-killed",
            &format!("oci://{proxy}/models/digits:prod"),
            &key,
            FP16,
        ),
        None,
    );
    assert!(
        killed.load(Ordering::SeqCst),
        "the proxy saw no blob upload: {err}"
    );
    assert_ne!(code, 0, "the push cannot have succeeded: {out:#}");
    assert!(err.contains("registry"), "{err}");

    let restarted = restart(&reg);
    // The tag still names M1, whose every blob is there: oras pulls it whole.
    let (ok, text) = tag_descriptor(&repo_ref);
    assert!(ok, "{text}");
    assert!(text.contains(&m1), "the tag moved: {text}");
    let pulled = dir.path().join("after-kill");
    let (ok, text) = oras(
        &[
            "pull",
            "--plain-http",
            &format!("{repo_ref}:prod"),
            "-o",
            pulled.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{text}");
    assert_eq!(
        sha256_hex(&pulled.join("model.onnx")),
        first["result"]["promoted"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        verify(&format!("oci://{repo_ref}:prod"), &public, None).0,
        0
    );

    // The same promotion again, with the registry back: the tag moves to the new manifest.
    let (code, second, err) = run(
        &job(
            dir.path(),
            "m2",
            &format!("oci://{repo_ref}:prod"),
            &key,
            FP16,
        ),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let m2 = second["result"]["oci"]["manifestDigest"].as_str().unwrap();
    assert_ne!(m2, m1);
    let (ok, text) = tag_descriptor(&repo_ref);
    assert!(ok && text.contains(m2), "{text}");
    assert_eq!(
        verify(&format!("oci://{repo_ref}:prod"), &public, None).0,
        0
    );
    drop(restarted);
}

/// A digits-style job over `model` (the YAML of `spec.model`'s fields), quantizing it,
/// writing under `dir/<name>/out`, promoting nowhere; the dataset's sha256 pinned (so a spec
/// that pins the model's too is looked up in the cache before anything is fetched).
fn source_job(dir: &Path, name: &str, model: &str) -> String {
    let data = repo().join("examples/digits/eval.npz");
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model: {{{model}}}\n  dataset:\n    uri: {data}\n    sha256: {data_sha}\n    labels: labels\n  passes:\n{DYNAMIC}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  evaluation: {{latency: {{warmup: 1, iterations: 2}}}}\n  output:\n    uri: {}\n",
        dir.join(name).join("out").display(),
        data = data.display(),
        data_sha = sha256_hex(&data),
    );
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    write_job(&sub, &yaml)
}

/// What a run measured, without the timings (which differ run to run).
fn measured(result: &Value) -> Value {
    let strip = |m: &Value| {
        let mut m = m.clone();
        if let Some(o) = m.as_object_mut() {
            o.retain(|k, _| !k.starts_with("latency"));
        }
        m
    };
    serde_json::json!({
        "verdict": result["verdict"],
        "originalBytes": result["originalBytes"],
        "compressedBytes": result["compressedBytes"],
        "accuracyDrop": result["accuracyDrop"],
        "baseline": strip(&result["baseline"]),
        "candidate": strip(&result["candidate"]),
    })
}

/// The model report.json says the run read.
fn report_model(result: &Value) -> Value {
    let report: Value =
        serde_json::from_slice(&std::fs::read(local(result["report"].as_str().unwrap())).unwrap())
            .unwrap();
    report["model"].clone()
}

#[test]
fn a_model_promoted_to_a_registry_is_read_back_as_a_job_source_by_tag_and_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::up(&["--kind", "distribution"]);
    let v1 = push_pruned_digits(dir.path(), &reg);
    // The same bytes from a file: the reference.
    let (code, file_run, err) = run_fresh(&source_job(
        dir.path(),
        "from-file",
        &format!("uri: 'file://{}'", v1.file.display()),
    ));
    assert_eq!(code, 0, "{err}");
    let want = measured(&file_run["result"]);
    assert_eq!(
        want["verdict"], "Passed",
        "{:#}",
        file_run["result"]["checks"]
    );
    read_back_by_tag_and_by_digest_measures_the_same(dir.path(), &reg, &v1, &want);
    a_pinned_model_hits_the_cache_without_a_blob_read(dir.path(), &reg, &v1, &want);
    bad_sources_are_permanent_and_say_what_to_do(dir.path(), &reg, &v1);
}

/// What [`push_pruned_digits`] pushed.
struct Pushed {
    /// `oci://<registry>/team/digits:v1`
    uri: String,
    manifest: String,
    model_sha: String,
    /// The promoted model's local copy (the run's artifact).
    file: PathBuf,
}

/// v1: the digits model lightly pruned (float32 still, so quantizable again), promoted as
/// kompress promotes: a ModelPack, one layer per file.
fn push_pruned_digits(dir: &Path, reg: &Registry) -> Pushed {
    let (key, _) = keypair(dir, "key", "ed25519");
    let uri = format!("oci://{}/team/digits:v1", reg.addr);
    let (code, out, err) = run(
        &job(dir, "push", &uri, &key, "    - prune: {sparsity: 0.2}"),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let pushed = &out["result"];
    assert_eq!(pushed["verdict"], "Passed", "{out:#}");
    let manifest = pushed["oci"]["manifestDigest"]
        .as_str()
        .unwrap()
        .to_string();
    let model_sha = pushed["promoted"]["sha256"].as_str().unwrap().to_string();
    let file = local(pushed["artifact"]["uri"].as_str().unwrap());
    assert_eq!(sha256_hex(&file), model_sha);
    Pushed {
        uri,
        manifest,
        model_sha,
        file,
    }
}

/// `kompress run` with the cache off (each run computes): exit code, JSON output, stderr.
fn run_fresh(job: &str) -> (i32, Value, String) {
    let r = run_kompress(&["run", "-f", job, "-o", "json", "--no-cache"], &[]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    (r.code, v, r.stderr)
}

/// By tag, and pinned by the manifest digest (with the .onnx layer's sha256 as well): the
/// same measurements as from the file, and report.json records what was read.
fn read_back_by_tag_and_by_digest_measures_the_same(
    dir: &Path,
    reg: &Registry,
    v1: &Pushed,
    want: &Value,
) {
    let (manifest, model_sha) = (&v1.manifest, &v1.model_sha);
    let pinned = format!("oci://{}/team/digits@{manifest}", reg.addr);
    for (name, model, recorded) in [
        (
            "by-tag",
            format!("uri: '{}', registry: {{plainHttp: true}}", v1.uri),
            format!("oci://{}/team/digits:v1@{manifest}", reg.addr),
        ),
        (
            "by-digest",
            format!("uri: '{pinned}', sha256: {model_sha}, registry: {{plainHttp: true}}"),
            pinned.clone(),
        ),
    ] {
        let (code, oci_run, err) = run_fresh(&source_job(dir, name, &model));
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(&measured(&oci_run["result"]), want, "{name}: {oci_run:#}");
        let m = report_model(&oci_run["result"]);
        assert_eq!(m["uri"], recorded.as_str(), "{name}: {m}");
        assert_eq!(m["sha256"], model_sha.as_str(), "{name}: {m}");
    }
}

/// The cache: the by-digest job again, with the cache on. Its spec pins the model's and the
/// dataset's sha256, so the lookup happens before any fetch: the result is reused and the
/// registry serves no blob for it (its own request log).
fn a_pinned_model_hits_the_cache_without_a_blob_read(
    dir: &Path,
    reg: &Registry,
    v1: &Pushed,
    want: &Value,
) {
    let blob_gets = |log: &str| {
        log.lines()
            .filter(|l| l.contains("http.request.method=GET") && l.contains("/blobs/sha256:"))
            .filter(|l| l.contains("response completed"))
            .count()
    };
    let before = blob_gets(&reg.log());
    assert!(before > 0, "the registry logs blob reads: {}", reg.log());
    let pinned = format!("oci://{}/team/digits@{}", reg.addr, v1.manifest);
    let again = source_job(
        dir,
        "by-digest",
        &format!(
            "uri: '{pinned}', sha256: {}, registry: {{plainHttp: true}}",
            v1.model_sha
        ),
    );
    let (code, cached, err) = run(&again, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        !cached["result"]["cachedFrom"].is_null(),
        "a pinned oci model hits the cache: {cached:#}"
    );
    assert_eq!(&measured(&cached["result"]), want);
    assert_eq!(
        blob_gets(&reg.log()),
        before,
        "no blob read for a cache hit"
    );
}

/// A README pushed with oras as `team/readme:v1`: an artifact that is not a model.
fn push_readme(dir: &Path, reg: &Registry) {
    let readme = dir.join("README.md");
    std::fs::write(&readme, "not a model").unwrap();
    let mut c = Command::new(tools_bin("oras"));
    c.current_dir(dir).args([
        "push",
        "--plain-http",
        "--artifact-type",
        "application/vnd.acme.docs",
        &format!("{}/team/readme:v1", reg.addr),
        "README.md:text/markdown",
    ]);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "oras push: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Bad input: permanent (65), naming spec.model.uri or the setting, and what to do.
fn bad_sources_are_permanent_and_say_what_to_do(dir: &Path, reg: &Registry, pushed: &Pushed) {
    push_readme(dir, reg);
    let zeros = "0".repeat(64);
    let (v1, plain) = (&pushed.uri, "registry: {plainHttp: true}");
    for (name, model, says) in [
        (
            "no-tag",
            format!("uri: 'oci://{}/team/digits:v9', {plain}", reg.addr),
            vec!["spec.model.uri", ":v9", "no such repository, tag or digest"],
        ),
        (
            "no-digest",
            format!(
                "uri: 'oci://{}/team/digits@sha256:{zeros}', {plain}",
                reg.addr
            ),
            vec!["spec.model.uri", "no such repository, tag or digest"],
        ),
        (
            "wrong-sha",
            format!("uri: '{v1}', sha256: {zeros}, {plain}"),
            vec![zeros.as_str(), pushed.model_sha.as_str()],
        ),
        (
            "not-modelpack",
            format!("uri: 'oci://{}/team/readme:v1', {plain}", reg.addr),
            vec![
                "spec.model.uri",
                "is not a model artifact",
                "application/vnd.acme.docs",
                "ModelPack",
            ],
        ),
        (
            "https",
            format!("uri: '{v1}'"),
            vec!["spec.model.uri", "spec.model.registry.plainHttp: true"],
        ),
    ] {
        let (code, _, err) = run_fresh(&source_job(dir, name, &model));
        assert_eq!(code, 65, "{name}: {err}");
        for s in says {
            assert!(err.contains(s), "{name}: `{s}` not in: {err}");
        }
    }
}
