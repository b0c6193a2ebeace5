//! CompressionPolicy against the real test control plane (hack/testenv): each test gets its
//! own namespace and in-process controller (both controllers: policies make CompressionJobs,
//! whose worker pods run `kompress worker` as local processes through the node agent).
//!
//! Run: `KUBECONFIG=$(KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up) cargo test --test controller_policy -- --include-ignored`

mod support;

use kompress::api::{CompressionJob, CompressionPolicy, condition};
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use std::path::Path;
use std::time::Duration;
use support::cluster::*;
use support::*;

const POLICY_TIMEOUT: Duration = Duration::from_secs(60);

/// A policy over `models` (`<key>/v<N>/model.onnx`), compressing each version of the digits
/// model and promoting it to `<out>/promoted/<key>/<version>`.
fn policy_yaml(
    env: &ControllerEnv,
    name: &str,
    models: &Path,
    extra: &str,
    promote: &str,
) -> String {
    let r = repo();
    let out = env.out();
    format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  source:\n    uri: file://{models}/*/v*/model.onnx\n    interval: 10s\n{extra}\
         \x20 concurrency: 2\n  successfulJobsHistoryLimit: 2\n  jobTemplate:\n    metadata:\n      labels: {{team: ml}}\n    spec:\n\
         \x20     dataset: {{uri: {data}}}\n      passes: [{{quantize: {{perChannel: true}}}}]\n\
         \x20     thresholds: {{maxAccuracyDrop: 0.01, minAgreement: 0.98}}\n\
         \x20     output: {{uri: '{out}/candidates/{{{{.key}}}}/{{{{.version}}}}', promoteTo: '{promote}'}}\n\
         \x20     evaluation: {{latency: {{warmup: 2, iterations: 5}}}}\n",
        ns = env.ns,
        models = models.display(),
        data = r.join("examples/digits/eval.npz").display(),
        out = out.display(),
    )
}

fn default_promote(env: &ControllerEnv) -> String {
    format!(
        "file://{}/promoted/{{{{.key}}}}/{{{{.version}}}}",
        env.out().display()
    )
}

/// Puts the digits model at `<models>/<key>/<version>/model.onnx`.
fn push_version(models: &Path, key: &str, version: &str) {
    let d = models.join(key).join(version);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        repo().join("examples/digits/model.onnx"),
        d.join("model.onnx"),
    )
    .unwrap();
}

async fn create_policy(env: &ControllerEnv, yaml: &str) -> CompressionPolicy {
    let p: CompressionPolicy =
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    policies(env)
        .create(&PostParams::default(), &p)
        .await
        .expect("create the CompressionPolicy")
}

fn policies(env: &ControllerEnv) -> Api<CompressionPolicy> {
    Api::namespaced(env.client.clone(), &env.ns)
}

/// Waits until the policy's status satisfies `ok`; on timeout fails with the status.
async fn wait_policy(
    env: &ControllerEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&kompress::api::CompressionPolicyStatus) -> bool + Send + 'static,
) -> CompressionPolicy {
    let cond =
        move |p: Option<&CompressionPolicy>| p.and_then(|p| p.status.as_ref()).is_some_and(&ok);
    match tokio::time::timeout(timeout, await_condition(policies(env), name, cond)).await {
        Ok(Ok(Some(p))) => p,
        other => {
            let p = policies(env).get_opt(name).await.ok().flatten();
            panic!(
                "policy {name} never got {what} within {timeout:?} ({other:?}); status: {}",
                serde_json::to_string_pretty(&p.and_then(|p| p.status)).unwrap()
            )
        }
    }
}

/// Waits until the policy's scan has failed (Ready False) and returns its status.
async fn failed_scan(env: &ControllerEnv, name: &str) -> kompress::api::CompressionPolicyStatus {
    let p = wait_policy(env, name, "a failed scan", POLICY_TIMEOUT, |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "False")
    })
    .await;
    p.status.expect("a status")
}

fn ready(s: &kompress::api::CompressionPolicyStatus) -> (String, String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .expect("a Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn stalled(s: &kompress::api::CompressionPolicyStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == condition::STALLED && c.status == "True")
}

async fn jobs_of(env: &ControllerEnv) -> Vec<CompressionJob> {
    env.cjs.list(&ListParams::default()).await.unwrap().items
}

fn succeeded(s: &kompress::api::CompressionPolicyStatus) -> u32 {
    s.phases.get("Succeeded").copied().unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_policy_compresses_each_new_version_once_and_promotes_it_to_its_templated_place() {
    let mut env = ControllerEnv::new("policy").await;
    let models = env.out().join("models");
    push_version(&models, "digits", "v1");
    push_version(&models, "digits", "v2");
    std::fs::write(models.join("digits/v2/README.md"), "not a model").unwrap();
    let yaml = policy_yaml(&env, "digits", &models, "", &default_promote(&env));
    let policy = create_policy(&env, &yaml).await;

    // one CompressionJob per version, owned by the policy, each run and promoted
    let p = wait_policy(&env, "digits", "two versions succeeded", RUN_TIMEOUT, |s| {
        succeeded(s) == 2
    })
    .await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.versions_seen, 2, "{status:?}");
    let jobs = jobs_of(&env).await;
    assert_eq!(
        jobs.len(),
        2,
        "{:?}",
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    for cj in &jobs {
        let owner = &cj.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller, Some(&owner.uid)),
            ("CompressionPolicy", Some(true), policy.uid().as_ref())
        );
        assert_eq!(cj.labels().get("team").map(String::as_str), Some("ml"));
        let sha = cj
            .spec
            .model
            .sha256
            .as_deref()
            .expect("the scan's sha256 pinned");
        assert_eq!(
            sha,
            kompress::storage::sha256_file(&repo().join("examples/digits/model.onnx")).unwrap()
        );
    }
    for v in ["v1", "v2"] {
        let manifest = env.out().join(format!("promoted/digits/{v}/promoted.json"));
        assert!(
            manifest.exists(),
            "{} (promoted by the worker)",
            manifest.display()
        );
    }
    assert_eq!(ready(status).0, "True", "{status:?}");
    assert_eq!(status.keys[0].latest, "v2");
    assert_eq!(status.keys[0].promoted_version.as_deref(), Some("v2"));
    assert!(status.last_scan.is_some() && status.next_scan.is_some());
    env.wait_event("digits", "NewVersion").await;
    env.wait_event("digits", "Promoted").await;

    // a third version, pushed later, is picked up by the next scan; the history limit (2
    // successful) deletes the oldest job, and its version is not compressed again
    push_version(&models, "digits", "v3");
    let p = wait_policy(
        &env,
        "digits",
        "three versions succeeded",
        RUN_TIMEOUT,
        |s| succeeded(s) == 3,
    )
    .await;
    assert!(env.out().join("promoted/digits/v3/promoted.json").exists());
    assert_eq!(
        p.status.as_ref().unwrap().latest_promoted.as_deref(),
        Some("digits/v3")
    );
    let names = |jobs: &[CompressionJob]| {
        let mut n: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
        n.sort();
        n
    };
    let deadline = tokio::time::Instant::now() + POLICY_TIMEOUT;
    while jobs_of(&env).await.len() > 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history limit never deleted a job"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // the deleted job's promoted model is still there
    assert!(env.out().join("promoted/digits/v1/promoted.json").exists());

    // a controller restart and two more scans create nothing new
    let before = names(&jobs_of(&env).await);
    let mut scanned = p.status.as_ref().unwrap().last_scan.clone().unwrap();
    env.restart_controller().await;
    for _ in 0..2 {
        let after = wait_policy(&env, "digits", "a later scan", POLICY_TIMEOUT, {
            let scanned = scanned.clone();
            move |s| s.last_scan.as_ref().is_some_and(|t| t.0 > scanned.0)
        })
        .await;
        let s = after.status.as_ref().unwrap();
        scanned = s.last_scan.clone().unwrap();
        assert_eq!((s.versions_seen, succeeded(s)), (3, 3), "{s:?}");
        assert_eq!(names(&jobs_of(&env).await), before);
    }
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_template_that_fails_validation_is_stalled_naming_the_field_and_makes_no_job() {
    let env = ControllerEnv::new("policy-invalid").await;
    let models = env.out().join("models");
    push_version(&models, "digits", "v1");
    let promote = format!("file://{}/promoted/{{{{.tag}}}}", env.out().display());
    create_policy(&env, &policy_yaml(&env, "bad", &models, "", &promote)).await;
    let p = wait_policy(&env, "bad", "Stalled", POLICY_TIMEOUT, stalled).await;
    let (status, reason, message) = ready(p.status.as_ref().unwrap());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        message.contains("spec.jobTemplate.spec.output.promoteTo") && message.contains("{{.tag}}"),
        "{message}"
    );
    assert!(jobs_of(&env).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_filter_that_matches_nothing_is_ready_with_zero_versions() {
    let env = ControllerEnv::new("policy-empty").await;
    let models = env.out().join("models");
    push_version(&models, "digits", "v1");
    let extra = "    filter: '^resnet/'\n";
    create_policy(
        &env,
        &policy_yaml(&env, "none", &models, extra, &default_promote(&env)),
    )
    .await;
    let p = wait_policy(&env, "none", "a scan", POLICY_TIMEOUT, |s| {
        s.last_scan.is_some()
    })
    .await;
    let s = p.status.as_ref().unwrap();
    let (status, reason, message) = ready(s);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Scanned"),
        "{message}"
    );
    assert!(message.contains("0 versions matched"), "{message}");
    assert_eq!(s.versions_seen, 0);
    assert!(!stalled(s));
    assert!(jobs_of(&env).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_second_policy_promoting_to_the_same_place_is_refused() {
    let env = ControllerEnv::new("policy-conflict").await;
    let models = env.out().join("models");
    let promote = default_promote(&env);
    // the first policy, over an empty prefix, finds nothing and makes no job
    create_policy(&env, &policy_yaml(&env, "first", &models, "", &promote)).await;
    wait_policy(&env, "first", "a scan", POLICY_TIMEOUT, |s| {
        s.last_scan.is_some()
    })
    .await;
    let other = env.out().join("other-models");
    push_version(&other, "digits", "v1");
    let same = format!(
        "file://{}/promoted/{{{{.name}}}}/{{{{.version}}}}/",
        env.out().display()
    );
    let extra = "    filter: '^(?P<name>[a-z]+)/'\n";
    create_policy(&env, &policy_yaml(&env, "second", &other, extra, &same)).await;
    let p = wait_policy(&env, "second", "Stalled", POLICY_TIMEOUT, stalled).await;
    let (_, reason, message) = ready(p.status.as_ref().unwrap());
    assert_eq!(reason, "PromoteConflict");
    assert!(message.contains("CompressionPolicy first"), "{message}");
    assert!(
        jobs_of(&env).await.is_empty(),
        "the refused policy made a job"
    );
    // the first one is unaffected
    let first = policies(&env).get("first").await.unwrap();
    assert_eq!(ready(first.status.as_ref().unwrap()).0, "True");
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn an_unreachable_source_says_why_and_makes_no_job() {
    let env = ControllerEnv::new("policy-down").await;
    let yaml = policy_yaml(&env, "down", Path::new("/unused"), "", &default_promote(&env))
        .replace(
            "file:///unused/*/v*/model.onnx",
            "s3://models/*/v*/model.onnx",
        )
        .replace(
            "      dataset:",
            "      storage: {endpoint: 'http://127.0.0.1:9', allowHttp: true, region: us-east-1}\n      dataset:",
        );
    assert!(yaml.contains("s3://models"), "{yaml}");
    create_policy(&env, &yaml).await;
    let s = &failed_scan(&env, "down").await;
    let (_, reason, message) = ready(s);
    assert!(
        reason == "SourceUnavailable" || reason == "SourceError",
        "{reason}: {message}"
    );
    assert!(message.contains("s3://models"), "{message}");
    assert!(s.next_scan.is_some(), "a retry is scheduled: {s:?}");
    assert!(jobs_of(&env).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn deleting_a_policy_garbage_collects_its_jobs_but_not_its_promotions() {
    let env = ControllerEnv::new("policy-gc").await;
    let models = env.out().join("models");
    push_version(&models, "digits", "v1");
    create_policy(
        &env,
        &policy_yaml(&env, "gc", &models, "", &default_promote(&env)),
    )
    .await;
    wait_policy(&env, "gc", "one version succeeded", RUN_TIMEOUT, |s| {
        succeeded(s) == 1
    })
    .await;
    let promoted = env.out().join("promoted/digits/v1/promoted.json");
    assert!(promoted.exists());
    policies(&env)
        .delete("gc", &kube::api::DeleteParams::foreground())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + POLICY_TIMEOUT;
    while !jobs_of(&env).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the garbage collector left the jobs"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        promoted.exists(),
        "a promoted model was deleted with its job"
    );
    env.cleanup().await;
}

/// Pushes `files` (names in `dir`) with oras as a ModelPack (its artifactType; oras names
/// each layer's file in its title annotation) at `reference`; returns the manifest digest.
fn oras_push(dir: &Path, reference: &str, files: &[&str]) -> String {
    let mut args = vec![
        "push".to_string(),
        "--plain-http".into(),
        "--artifact-type".into(),
        kompress::oci::ARTIFACT_TYPE.into(),
        reference.into(),
    ];
    args.extend(
        files
            .iter()
            .map(|f| format!("{f}:{}", kompress::oci::WEIGHT_MEDIA_TYPE)),
    );
    let o = std::process::Command::new(tools_bin("oras"))
        .current_dir(dir)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = std::process::Command::new(tools_bin("oras"))
        .args(["resolve", "--plain-http", reference])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn an_unreachable_registry_is_source_unavailable_with_backoff_and_makes_no_job() {
    let env = ControllerEnv::new("policy-oci-down").await;
    // nothing listens on port 9: connection refused, as for the unreachable S3 endpoint
    let yaml = policy_yaml(
        &env,
        "regdown",
        Path::new("/unused"),
        "",
        &default_promote(&env),
    )
    .replace(
        "file:///unused/*/v*/model.onnx\n",
        "oci://127.0.0.1:9/team/digits\n    registry: {plainHttp: true}\n",
    );
    assert!(yaml.contains("oci://127.0.0.1:9"), "{yaml}");
    create_policy(&env, &yaml).await;
    let s = &failed_scan(&env, "regdown").await;
    let (_, reason, message) = ready(s);
    assert_eq!(reason, "SourceUnavailable", "{message}");
    assert!(
        message.contains("oci://127.0.0.1:9/team/digits")
            && message.contains("could not be reached"),
        "{message}"
    );
    assert!(!stalled(s), "a transient failure is not Stalled: {s:?}");
    assert!(s.next_scan.is_some(), "a retry is scheduled: {s:?}");
    assert!(jobs_of(&env).await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn a_policy_over_a_registry_makes_one_pinned_job_per_tag_the_filter_keeps() {
    let env = ControllerEnv::new("policy-oci").await;
    let reg = support::registry::Registry::up(&["--kind", "distribution"]);
    let files = env.out().join("push");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::copy(
        repo().join("examples/digits/model.onnx"),
        files.join("model.onnx"),
    )
    .unwrap();
    let repo_ref = format!("{}/team/digits", reg.addr);
    let at = |tag: &str| format!("{repo_ref}:{tag}");
    // v1 and v2 differ (v2 carries a note beside the model); `latest` is v2 again and
    // `junk` is neither: the filter keeps v1 and v2 only.
    let v1 = oras_push(&files, &at("v1"), &["model.onnx"]);
    std::fs::write(files.join("NOTES.md"), "v2").unwrap();
    let v2 = oras_push(&files, &at("v2"), &["model.onnx", "NOTES.md"]);
    oras_push(&files, &at("latest"), &["model.onnx", "NOTES.md"]);
    oras_push(&files, &at("junk"), &["NOTES.md"]);
    assert_ne!(v1, v2);

    let out = env.out();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionPolicy\nmetadata:\n  name: reg\n  namespace: {ns}\n\
         spec:\n  source:\n    uri: oci://{repo_ref}\n    filter: '^v(?P<version>[0-9]+)$'\n    ordering: numerical\n\
         \x20   interval: 10s\n    registry: {{plainHttp: true}}\n  concurrency: 2\n  jobTemplate:\n    spec:\n\
         \x20     dataset: {{uri: {data}}}\n      passes: [{{quantize: {{}}}}]\n\
         \x20     thresholds: {{maxAccuracyDrop: 0.05}}\n\
         \x20     output: {{uri: '{out}/candidates/{{{{.tag}}}}', promoteTo: '{out}/promoted/{{{{.key}}}}/{{{{.tag}}}}-int8'}}\n\
         \x20     evaluation: {{latency: {{warmup: 1, iterations: 2}}}}\n",
        ns = env.ns,
        data = repo().join("examples/digits/eval.npz").display(),
        out = out.display(),
    );
    create_policy(&env, &yaml).await;
    let p = wait_policy(&env, "reg", "two versions succeeded", RUN_TIMEOUT, |s| {
        succeeded(s) == 2
    })
    .await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.versions_seen, 2, "{status:?}");
    assert!(ready(status).2.contains("4 tags listed"), "{status:?}");
    let pinned = |jobs: &[CompressionJob]| {
        let mut uris: Vec<(String, String)> = jobs
            .iter()
            .map(|j| {
                (
                    j.annotations()["kompress.dev/source-tag"].clone(),
                    j.spec.model.uri.clone(),
                )
            })
            .collect();
        uris.sort();
        uris
    };
    let jobs = jobs_of(&env).await;
    assert_eq!(
        pinned(&jobs),
        [
            ("v1".to_string(), format!("oci://{repo_ref}@{v1}")),
            ("v2".to_string(), format!("oci://{repo_ref}@{v2}")),
        ]
    );
    for cj in &jobs {
        assert_eq!(
            cj.spec.model.registry.as_ref().and_then(|r| r.plain_http),
            Some(true)
        );
    }
    for tag in ["v1", "v2"] {
        let promoted = out.join(format!("promoted/team/digits/{tag}-int8/promoted.json"));
        assert!(promoted.exists(), "{}", promoted.display());
    }

    // v2 moved to new bytes: a new version, a third job pinned to the new digest
    std::fs::write(files.join("NOTES.md"), "v2, rebuilt").unwrap();
    let v2b = oras_push(&files, &at("v2"), &["model.onnx", "NOTES.md"]);
    assert_ne!(v2b, v2);
    let p = wait_policy(&env, "reg", "three versions succeeded", RUN_TIMEOUT, |s| {
        s.versions_seen == 3 && succeeded(s) == 3
    })
    .await;
    let jobs = jobs_of(&env).await;
    let uris: Vec<String> = pinned(&jobs).into_iter().map(|(_, u)| u).collect();
    assert!(
        uris.contains(&format!("oci://{repo_ref}@{v2b}")) && uris.len() == 3,
        "{uris:?}; {:?}",
        p.status
    );
    env.cleanup().await;
}
