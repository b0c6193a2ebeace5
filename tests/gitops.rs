//! What GitOps tools see, against the real test control plane (hack/testenv):
//!
//! - kstatus (sigs.k8s.io/cli-utils: the health check of Flux Kustomizations and kpt) on
//!   `kubectl get cmpj NAME -o json` for each outcome: Succeeded is Current, a running job and
//!   a changed spec are InProgress, a failed job (worker error or invalid spec) is Failed, and
//!   a Rejected one is Failed too (Stalled=True: terminal until the spec changes), with the
//!   missed check in kstatus's message.
//! - examples/gitops/ (a Flux OCIRepository following the promoted tag, a KServe
//!   InferenceService pinned to the promoted folder) is accepted by the upstream CRDs
//!   (hack/tools/crds/fetch) in a server-side dry run, and broken copies are refused.
//!
//! Run: `KUBECONFIG=... KOMPRESS_TOOLS_BIN=$(hack/tools/build | tail -n1) cargo test --test gitops -- --ignored`

mod support;

use kompress::api::{Phase, condition};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::cluster::*;
use support::*;

/// Timed latency runs that keep the worker busy for several seconds (as in controller_ha.rs),
/// so the job is still running when the test looks.
const SLOW_ITERATIONS: u32 = 200_000;
const GATE: &str =
    "    maxAccuracyDrop: 0.01\n    minAgreement: 0.98\n    minCompressionRatio: 3.5";

type Env = ControllerEnv;

/// Checks on a CompressionJob as GitOps tools see it.
trait Kstatus {
    /// `kubectl get cmpj NAME -o json | kstatus`: (the object kubectl printed, kstatus' verdict).
    fn kstatus(&self, name: &str) -> (Value, Value);
    fn expect_kstatus(&self, name: &str, want: &str) -> (Value, Value);
}

impl Kstatus for Env {
    fn kstatus(&self, name: &str) -> (Value, Value) {
        let got = kubectl(&["get", "cmpj", name, "-n", &self.ns, "-o", "json"]);
        assert!(got.ok, "kubectl get cmpj {name}: {}", got.stderr);
        let verdict = kstatus(got.stdout.as_bytes());
        let obj: Value = serde_json::from_str(&got.stdout).expect("kubectl printed JSON");
        (obj, verdict)
    }

    /// Asserts kstatus' verdict on `name` and returns it with the object it judged.
    fn expect_kstatus(&self, name: &str, want: &str) -> (Value, Value) {
        let (obj, verdict) = self.kstatus(name);
        assert_eq!(
            verdict["status"].as_str(),
            Some(want),
            "kstatus of {name}: {verdict}\nmetadata.generation {}, status: {:#}",
            obj["metadata"]["generation"],
            obj["status"]
        );
        (obj, verdict)
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The pinned kubectl of hack/testenv, on $KUBECONFIG.
fn kubectl(args: &[&str]) -> Out {
    let kubectl = testenv_bin("kubectl");
    let o = Command::new(&kubectl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{kubectl}: {e} (run hack/testenv/build)"));
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// hack/tools' kstatus on one object (JSON on stdin): `{"status": ..., "message": ...}`.
fn kstatus(object: &[u8]) -> Value {
    let mut child = Command::new(tools_bin("kstatus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kstatus");
    child.stdin.take().unwrap().write_all(object).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "kstatus: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("kstatus prints one JSON object")
}

/// The condition `type_` of the object kubectl printed: (status, reason).
fn cond(obj: &Value, type_: &str) -> (String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {:#}", obj["status"]));
    (
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
    )
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn kstatus_reads_finished_jobs_as_gitops_tools_do() {
    let mut env = Env::new("gitops-done").await;
    let missing_model = env
        .digits_in("failed", &env.dir.path().join("failed"), GATE)
        .replacen(
            &repo()
                .join("examples/digits/model.onnx")
                .display()
                .to_string(),
            "/nonexistent/model.onnx",
            1,
        );
    // valid for the CRD, invalid for kompress: the controller marks it Failed, no Job
    let invalid = env
        .digits_in("invalid", &env.dir.path().join("invalid"), GATE)
        .replacen(
            &format!(
                "uri: {}",
                env.dir.path().join("invalid/candidates").display()
            ),
            "uri: https://example.com/out/",
            1,
        );
    assert!(invalid.contains("https://example.com/out/"), "{invalid}");
    for yaml in [
        env.digits_in("passed", &env.dir.path().join("passed"), GATE),
        env.digits_in(
            "rejected",
            &env.dir.path().join("rejected"),
            "    minCompressionRatio: 100",
        ),
        missing_model,
        invalid,
    ] {
        env.create(&yaml).await;
    }

    // Succeeded: Current, Ready=True
    env.wait_phase("passed", Phase::Succeeded, 1).await;
    let (obj, _) = env.expect_kstatus("passed", "Current");
    assert_eq!(cond(&obj, condition::READY).0, "True");

    // Rejected: terminal, nothing promoted for a GitOps source to pick up, Ready=False and
    // Stalled=True saying why. kstatus reads Failed: a GitOps tool shows the rejection at once
    // instead of waiting out its timeout (with Stalled=False it would fall back to Ready=False
    // and read InProgress forever: cli-utils since PR #109).
    env.wait_phase("rejected", Phase::Rejected, 1).await;
    let (obj, verdict) = env.expect_kstatus("rejected", "Failed");
    assert!(
        verdict["message"]
            .as_str()
            .unwrap_or_default()
            .contains("minCompressionRatio"),
        "the GitOps tool shows why: {verdict}"
    );
    assert_eq!(
        cond(&obj, condition::READY),
        ("False".into(), "ThresholdsFailed".into())
    );
    assert_eq!(
        cond(&obj, condition::STALLED),
        ("True".into(), "ThresholdsFailed".into())
    );
    assert_eq!(cond(&obj, condition::RECONCILING).0, "False");
    assert!(obj["status"]["result"]["promoted"].is_null(), "{obj:#}");
    assert!(
        !env.dir.path().join("rejected/production").exists(),
        "nothing promoted"
    );

    // Failed by the worker (a permanent error) and by an invalid spec: Failed (Stalled=True)
    env.wait_phase("failed", Phase::Failed, 1).await;
    let (_, verdict) = env.expect_kstatus("failed", "Failed");
    assert!(
        !verdict["message"].as_str().unwrap_or_default().is_empty(),
        "{verdict}"
    );
    env.wait_phase("invalid", Phase::Failed, 1).await;
    let (_, verdict) = env.expect_kstatus("invalid", "Failed");
    assert!(
        verdict["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.output.uri"),
        "the reason reaches the GitOps tool: {verdict}"
    );

    // A spec change the controller has not seen yet (it is stopped, so it never will):
    // generation 2, observedGeneration 1, the conditions still those of the Succeeded run.
    // kstatus reads it InProgress on the generation alone, not as the old Current.
    env.stop_controller().await;
    env.cjs
        .patch(
            "passed",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"thresholds": {"minCompressionRatio": 3.0}}}),
            ),
        )
        .await
        .expect("change the spec");
    let (obj, verdict) = env.expect_kstatus("passed", "InProgress");
    assert_eq!(
        (
            obj["metadata"]["generation"].as_i64(),
            obj["status"]["observedGeneration"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(cond(&obj, condition::RECONCILING).0, "False", "{verdict}");
    assert_eq!(cond(&obj, condition::READY).0, "True", "{verdict}");
    env.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn kstatus_reads_a_running_job_as_in_progress() {
    let mut env = Env::new("gitops-running").await;
    let yaml = env
        .digits_in("slow", &env.dir.path().join("slow"), GATE)
        .replacen(
            "iterations: 5",
            &format!("iterations: {SLOW_ITERATIONS}"),
            1,
        );
    assert!(yaml.contains(&SLOW_ITERATIONS.to_string()), "{yaml}");
    env.create(&yaml).await;
    env.wait_phase("slow", Phase::Running, 1).await;
    // freeze the status at Running: the test then reads what a GitOps tool would have read
    // at that moment, however long the check takes
    env.stop_controller().await;
    let (obj, verdict) = env.expect_kstatus("slow", "InProgress");
    assert_eq!(
        obj["status"]["phase"].as_str(),
        Some("Running"),
        "{verdict}"
    );
    assert_eq!(
        cond(&obj, condition::RECONCILING),
        ("True".into(), "Running".into())
    );
    assert_eq!(
        obj["metadata"]["generation"].as_i64(),
        obj["status"]["observedGeneration"].as_i64(),
        "InProgress through Reconciling=True, not a generation lag"
    );
    env.cleanup().await;
}

/// The directory with the upstream CRDs: `KOMPRESS_GITOPS_CRDS`, or what hack/tools/crds/fetch
/// prints (cached after its first run).
fn gitops_crds() -> PathBuf {
    if let Some(dir) = std::env::var_os("KOMPRESS_GITOPS_CRDS") {
        return dir.into();
    }
    let o = Command::new(repo().join("hack/tools/crds/fetch"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/tools/crds/fetch");
    assert!(o.status.success(), "hack/tools/crds/fetch failed");
    let out = String::from_utf8(o.stdout).unwrap();
    PathBuf::from(out.lines().last().expect("fetch prints the CRD dir"))
}

/// `kubectl apply --server-side --dry-run=server` of `text` into `ns`: the API server runs the
/// CRD's schema (structural pruning, types, enums, patterns, strict field validation) and
/// stores nothing.
fn dry_run(ns: &str, dir: &Path, name: &str, text: &str) -> Out {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kompress-tests",
        "-n",
        ns,
        "-f",
        p.to_str().unwrap(),
    ])
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn gitops_examples_are_valid_for_the_upstream_crds() {
    let client = client().await;
    install_upstream_crds(&client).await;
    let ns = create_namespace(&client, "kt-gitops-examples").await;
    let scratch = tempfile::tempdir().unwrap();
    let read = |f: &str| {
        std::fs::read_to_string(repo().join("examples/gitops").join(f))
            .unwrap_or_else(|e| panic!("examples/gitops/{f}: {e}"))
    };
    let oci = read("ocirepository.yaml");
    let isvc = read("inferenceservice.yaml");
    examples_pass_a_dry_run_and_store_nothing(&ns, scratch.path(), &oci, &isvc);
    let uri = examples_follow_the_promotion_layout(&oci, &isvc);
    broken_copies_are_refused(&ns, scratch.path(), &oci, &isvc, &uri);
    delete_namespace(&client, &ns).await;
}

/// The upstream Flux OCIRepository and KServe InferenceService CRDs, installed and Established.
async fn install_upstream_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::conditions;
    let crds = gitops_crds();
    let files = [
        (
            "source.toolkit.fluxcd.io_ocirepositories.yaml",
            "ocirepositories.source.toolkit.fluxcd.io",
        ),
        (
            "serving.kserve.io_inferenceservices.yaml",
            "inferenceservices.serving.kserve.io",
        ),
    ];
    for (file, crd) in files {
        // server-side: the KServe CRD (1 MB) does not fit the 256 KiB last-applied annotation
        let path = crds.join(file);
        let o = kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kompress-tests",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(o.ok, "install {}: {}", path.display(), o.stderr);
        // (`kubectl wait --for=condition=Established` fails on a CRD with no status yet)
        await_for(
            Api::<CustomResourceDefinition>::all(client.clone()),
            crd,
            "Established",
            API_TIMEOUT,
            conditions::is_crd_established(),
        )
        .await;
    }
}

/// Both examples pass the server-side dry run as what they are, and nothing is stored.
fn examples_pass_a_dry_run_and_store_nothing(ns: &str, scratch: &Path, oci: &str, isvc: &str) {
    for (name, text, kind) in [
        (
            "ocirepository.yaml",
            oci,
            "ocirepository.source.toolkit.fluxcd.io/digits-model",
        ),
        (
            "inferenceservice.yaml",
            isvc,
            "inferenceservice.serving.kserve.io/digits",
        ),
    ] {
        let o = dry_run(ns, scratch, name, text);
        assert!(
            o.ok,
            "examples/gitops/{name} refused by the upstream CRD:\n{}",
            o.stderr
        );
        assert!(
            o.stdout.contains(kind) && o.stdout.contains("server dry run"),
            "{name}: {}",
            o.stdout
        );
    }
    // a dry run stores nothing
    let o = kubectl(&[
        "get",
        "ocirepositories,inferenceservices",
        "-n",
        ns,
        "-o",
        "name",
    ]);
    assert!(
        o.ok && o.stdout.trim().is_empty(),
        "{} {}",
        o.stdout,
        o.stderr
    );
}

/// What the examples promise about kompress' layout: the InferenceService names one
/// content-addressed promotion folder, the OCIRepository takes the raw weight layer.
/// Returns the InferenceService's storageUri.
fn examples_follow_the_promotion_layout(oci: &str, isvc: &str) -> String {
    let uri = isvc
        .lines()
        .find_map(|l| l.trim().strip_prefix("storageUri: "))
        .expect("a storageUri");
    let digest = uri
        .strip_prefix("s3://models/production/digits/sha256-")
        .and_then(|d| d.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{uri} is not <promoteTo>/sha256-<digest>/"));
    assert!(
        digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{digest} is not a sha256"
    );
    assert!(oci.contains("mediaType: application/vnd.cncf.model.weight.v1.raw"));
    assert!(oci.contains("operation: copy"));
    uri.to_string()
}

/// The schema is enforced: each broken copy is refused, naming what is wrong.
fn broken_copies_are_refused(ns: &str, scratch: &Path, oci: &str, isvc: &str, uri: &str) {
    let broken = [
        (
            "isvc-misspelled.yaml",
            isvc.replacen("storageUri:", "storageURI:", 1),
            ".spec.predictor.model.storageURI: field not declared in schema",
        ),
        (
            "isvc-wrong-type.yaml",
            isvc.replacen(&format!("storageUri: {uri}"), "storageUri: 42", 1),
            ".spec.predictor.model.storageUri: expected string",
        ),
        (
            "isvc-no-format-name.yaml",
            isvc.replacen("        name: onnx\n", "        version: \"1\"\n", 1),
            "spec.predictor.model.modelFormat.name: Required value",
        ),
        (
            "oci-bad-operation.yaml",
            oci.replacen("operation: copy", "operation: unpack", 1),
            "spec.layerSelector.operation: Unsupported value: \"unpack\"",
        ),
        (
            "oci-not-oci-url.yaml",
            oci.replacen(
                "url: oci://registry.example.com",
                "url: https://registry.example.com",
                1,
            ),
            "spec.url in body should match '^oci://.*$'",
        ),
    ];
    for (name, text, why) in &broken {
        let original = if name.starts_with("isvc") { isvc } else { oci };
        assert_ne!(text, original, "{name}: the edit did not apply");
        let o = dry_run(ns, scratch, name, text);
        assert!(!o.ok, "{name} was accepted:\n{}", o.stdout);
        assert!(
            o.stderr.contains(why),
            "{name}: refused, but not with {why:?}:\n{}",
            o.stderr
        );
    }
}
