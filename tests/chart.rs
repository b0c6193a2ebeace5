//! The Helm chart against the real test apiserver: lint, server-side dry-run of every
//! rendering, and the controller ServiceAccount's RBAC checked with `kubectl auth can-i`:
//! what the controller needs, and nothing more (no Secrets).

mod support;

use std::process::Command;

struct Tools {
    helm: String,
    kubectl: String,
    kubeconfig: String,
}

fn tools() -> Tools {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG is not set: start the test control plane with `hack/testenv/up` (make test does)");
    let cache = std::env::var("KOMPRESS_TESTENV_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kompress-testenv", std::env::var("HOME").unwrap()));
    Tools {
        helm: format!("{cache}/v1.36.3/bin/helm"),
        kubectl: format!("{cache}/v1.36.3/bin/kubectl"),
        kubeconfig,
    }
}

/// Runs a command in the repo; returns (success, stdout, stderr).
fn run(t: &Tools, program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut c = Command::new(program);
    c.args(args)
        .env("KUBECONFIG", &t.kubeconfig)
        .current_dir(support::repo());
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok(t: &Tools, program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (success, out, err) = run(t, program, args, stdin);
    assert!(success, "{program} {args:?} failed: {err}");
    out
}

/// `kubectl apply --server-side --dry-run=server ARGS` (with `stdin`): must succeed; its output.
fn dry_run(t: &Tools, args: &[&str], stdin: Option<&str>) -> String {
    let mut all = vec!["apply", "--server-side", "--dry-run=server"];
    all.extend_from_slice(args);
    ok(t, &t.kubectl, &all, stdin)
}

fn render(t: &Tools, namespace: &str, sets: &[&str]) -> String {
    let mut args = vec![
        "template",
        "kompress",
        "charts/kompress",
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    ok(t, &t.helm, &args, None)
}

#[test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
fn chart_lints_and_every_rendering_passes_a_server_side_dry_run() {
    let t = tools();
    ok(&t, &t.helm, &["lint", "--strict", "charts/kompress"], None);
    ok(
        &t,
        &t.helm,
        &[
            "lint",
            "--strict",
            "charts/kompress",
            "--set",
            "rbac.namespaced=true,grafana.dashboard.enabled=true",
        ],
        None,
    );
    // Namespaces must exist for namespaced objects to dry-run (a release namespace of its own,
    // so the RBAC test beside it does not interfere).
    for ns in ["kompress-dryrun", "ml"] {
        let _ = run(&t, &t.kubectl, &["create", "namespace", ns], None);
    }
    ok(
        &t,
        &t.kubectl,
        &["apply", "--server-side", "--force-conflicts", "-f", "crds/"],
        None,
    );
    for sets in [
        &[][..],
        &[
            "rbac.namespaced=true",
            "grafana.dashboard.enabled=true",
            "controller.watchNamespace=ml",
        ][..],
    ] {
        let manifest = render(&t, "kompress-dryrun", sets);
        let out = dry_run(&t, &["-f", "-"], Some(&manifest));
        assert!(
            out.contains("deployment.apps/kompress") && out.contains("(server dry run)"),
            "{sets:?}: {out}"
        );
    }
    // the checked-in manifests are the default rendering (drift is checked by hack/ci/render-manifests --check)
    let out = dry_run(&t, &["-f", "manifests/kompress.yaml"], None);
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/kompress"),
        "{out}"
    );
    // the example jobs validate against the CRD's schema and CEL rules
    let out = dry_run(&t, &["-n", "ml", "-f", "examples/cluster/"], None);
    assert!(
        out.matches("compressionjob.kompress.dev").count() >= 3,
        "{out}"
    );
    // and the example policies (an object-store prefix and an OCI repository)
    assert!(
        out.matches("compressionpolicy.kompress.dev").count() >= 2,
        "{out}"
    );
    let bad = "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: bad, namespace: ml}\nspec:\n  model: {uri: m.onnx}\n  dataset: {uri: d.npz}\n  output: {uri: out}\n  passes:\n    - prune: {pattern: '4:2'}\n";
    let (success, _, err) = run(
        &t,
        &t.kubectl,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(bad),
    );
    assert!(
        !success && err.contains("must be N:M with 0 < N < M"),
        "the CEL rule rejects 4:2: {err}"
    );
}

#[test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
fn controller_service_account_can_do_what_it_needs_and_nothing_more() {
    let t = tools();
    let _ = run(
        &t,
        &t.kubectl,
        &["create", "namespace", "kompress-system"],
        None,
    );
    // Real objects this time (no controller pods: replicas 0), so RBAC can be evaluated.
    let manifest = render(&t, "kompress-system", &["controller.replicas=0"]);
    ok(
        &t,
        &t.kubectl,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&manifest),
    );
    let sa = "system:serviceaccount:kompress-system:kompress";
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i", "--as", sa];
        a.extend_from_slice(args);
        let (_, out, _) = run(&t, &t.kubectl, &a, None);
        out.trim() == "yes"
    };
    let allowed: &[&[&str]] = &[
        &["watch", "compressionjobs.kompress.dev", "-A"],
        &["patch", "compressionjobs.kompress.dev", "-n", "ml"],
        &["patch", "compressionjobs.kompress.dev/status", "-n", "ml"],
        // a CompressionPolicy creates its CompressionJobs and trims them to its history limits
        &["create", "compressionjobs.kompress.dev", "-n", "ml"],
        &["delete", "compressionjobs.kompress.dev", "-n", "ml"],
        &["watch", "compressionpolicies.kompress.dev", "-A"],
        &[
            "patch",
            "compressionpolicies.kompress.dev/status",
            "-n",
            "ml",
        ],
        &["create", "jobs.batch", "-n", "ml"],
        &["delete", "jobs.batch", "-n", "ml"],
        &["list", "pods", "-n", "ml"],
        &["create", "events.events.k8s.io", "-n", "ml"],
        &[
            "update",
            "leases.coordination.k8s.io/kompress-controller",
            "-n",
            "kompress-system",
        ],
    ];
    for a in allowed {
        assert!(can(a), "the controller needs: {a:?}");
    }
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", "ml"],
        &["list", "secrets", "-A"],
        &["create", "pods", "-n", "ml"],
        &["update", "compressionjobs.kompress.dev", "-n", "ml"],
        &["create", "compressionpolicies.kompress.dev", "-n", "ml"],
        &["delete", "compressionpolicies.kompress.dev", "-n", "ml"],
        &["create", "leases.coordination.k8s.io", "-n", "ml"],
        &["create", "deployments.apps", "-n", "ml"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
    ];
    for a in denied {
        assert!(!can(a), "the controller must NOT be able to: {a:?}");
    }
}
