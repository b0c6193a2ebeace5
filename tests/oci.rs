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
use support::*;

/// A registry started by hack/tools/registry-up, stopped (and its data removed) on drop.
struct Registry {
    addr: String,
    dir: PathBuf,
}

impl Registry {
    fn up(args: &[&str]) -> Self {
        let o = Command::new(repo().join("hack/tools/registry-up"))
            .args(args)
            .env(
                "KOMPRESS_TOOLS_BIN",
                tools_bin("registry").parent().unwrap(),
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "registry-up {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let mut lines = out.lines();
        Self {
            addr: lines.next().unwrap().trim().into(),
            dir: PathBuf::from(lines.next().unwrap().trim()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("hack/tools/registry-down"))
            .arg(&self.dir)
            .env(
                "KOMPRESS_TOOLS_BIN",
                tools_bin("registry").parent().unwrap(),
            )
            .output();
    }
}

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
    let tagged_auth = format!("{}/models/digits:prod", with_auth.addr);

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

        // oras pulls the model back: the bytes promoted.
        let pulled = dir.path().join(format!("pulled-{expect_referrers}"));
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

    // Without credentials, or with a wrong password, the authenticated registry refuses: a
    // permanent failure (a retry cannot fix it) that names the registry and the Docker config.
    let promote_to = format!("oci://{}/models/other:prod", with_auth.addr);
    let wrong = dir.path().join("wrong");
    let wrong = docker_config(&wrong, &with_auth.addr, "kompress", "not-the-password");
    for (case, docker) in [
        ("no credentials", None),
        ("a wrong password", Some(wrong.as_path())),
    ] {
        let (code, _, err) = run(
            &job(dir.path(), "noauth", &promote_to, &key, DYNAMIC),
            docker,
        );
        assert_eq!(code, 65, "{case}: {err}");
        assert!(
            err.contains(&with_auth.addr)
                && err.contains("HTTP 401")
                && err.contains("Docker config"),
            "{case}: {err}"
        );
        let (code, text) = verify(&format!("oci://{tagged_auth}"), &public, docker);
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
