//! The monitoring the chart ships, checked with Prometheus's own tool (promtool, built from
//! Go modules by hack/tools/build): the recording rules price runs as a hand computation says
//! (charts/kompress/rules/kompress.rules.test.yaml, synthetic OpenCost series), the alert
//! rules fire when they should, the chart's PrometheusRule carries exactly those rules, the
//! controller's exposition passes `promtool check metrics`, and every kompress series the
//! dashboard and the rules query is one the controller exports.

mod support;

use kompress::api::CompressionJob;
use kompress::controller::metrics::Metrics;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use support::*;

const RULES: &str = "charts/kompress/rules/kompress.rules.yaml";
const RULES_TEST: &str = "charts/kompress/rules/kompress.rules.test.yaml";
const DASHBOARD: &str = "charts/kompress/dashboards/kompress.json";

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut c = Command::new(tools_bin("promtool"));
    c.args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("promtool");
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A finished, promoted CompressionJob with every field the metrics read.
fn finished_job() -> CompressionJob {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kompress.dev/v1alpha1", "kind": "CompressionJob",
        "metadata": {"name": "digits", "namespace": "ml", "ownerReferences": [{"apiVersion": "kompress.dev/v1alpha1",
            "kind": "CompressionPolicy", "name": "digits-nightly", "uid": "u1", "controller": true}]},
        "spec": {"model": {"uri": "m.onnx"}, "dataset": {"uri": "d.npz"}, "passes": [], "output": {"uri": "out"}},
        "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z",
            "worker": {"pod": "digits-g1-abc-x7", "node": "n1", "cpuRequest": 2.0, "memoryRequestBytes": 4294967296.0},
            "result": {"verdict": "Passed", "originalBytes": 4000, "compressedBytes": 1000, "ratio": 4.0, "checks": [],
                "promoted": {"uri": "s3://p/sha256-ab/model.onnx", "sha256": "ab12"},
                "usage": {"cpuSeconds": 61.5, "peakMemoryBytes": 300000000, "wallSeconds": 42.0, "bytesRead": 5000,
                    "bytesWritten": 2100, "stages": [{"stage": "fetch", "seconds": 1.5}]},
                "baseline": {"bytes": 4000, "samples": 10, "accuracy": 0.97, "latencyP50Ms": 2.0, "latencyP95Ms": 3.0},
                "candidate": {"bytes": 1000, "samples": 10, "accuracy": 0.96, "latencyP50Ms": 1.0, "latencyP95Ms": 2.0,
                    "latencyRatio": 0.5, "latencyRatioLow": 0.45, "latencyRatioHigh": 0.56}}},
    }))
    .unwrap()
}

/// The controller's exposition with every series present (counters touched once).
fn exposition() -> String {
    let m = Metrics::new();
    m.refresh_jobs(&[Arc::new(finished_job())]);
    m.policy_observed(
        "ml",
        "digits-nightly",
        &kompress::api::CompressionPolicyStatus {
            versions_seen: 1,
            ..Default::default()
        },
    );
    m.promoted("ml");
    m.rejected("ml");
    m.search_finished("ml", None, 1);
    m.policy_scanned(
        "ml",
        "digits-nightly",
        std::time::Duration::from_millis(250),
        Some(3),
    );
    m.set_leader(true);
    drop(m.reconcile_timer());
    m.encode()
}

#[test]
fn recording_rules_price_runs_as_the_hand_computation_and_alerts_fire() {
    let (ok, out) = promtool(&["check", "rules", RULES], None);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", RULES_TEST], None);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_exposition_passes_promtool_and_covers_every_series_the_dashboard_and_rules_use() {
    let text = exposition();
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");

    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let rules = std::fs::read_to_string(repo().join(RULES)).unwrap();
    let dashboard = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(|s| s.trim().to_string())
        .collect();
    assert!(recorded.len() >= 5, "{recorded:?}");
    let mut used = BTreeSet::new();
    for source in [&rules, &dashboard] {
        let bytes = source.as_bytes();
        let mut i = 0;
        while let Some(at) = source[i..].find("kompress_") {
            let start = i + at;
            let before = start.checked_sub(1).map(|b| bytes[b]);
            let end = start
                + source[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(source.len() - start);
            // A series name, not part of a recording rule's name (`namespace:kompress_...`).
            if !before.is_some_and(|b| b == b':' || b.is_ascii_alphanumeric() || b == b'_') {
                used.insert(source[start..end].to_string());
            }
            i = end;
        }
    }
    assert!(used.len() >= 15, "the scan found too few series: {used:?}");
    assert!(used.contains("kompress_job_cpu_request_cores") && used.contains("kompress_jobs"));
    let missing: Vec<_> = used
        .iter()
        .filter(|n| {
            let base = n
                .strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_count"))
                .or_else(|| n.strip_suffix("_sum"))
                .unwrap_or(n);
            !exported.contains(*n) && !exported.contains(base)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The dashboard's cost row reads the recording rules by name.
    for r in [
        "kompress:job_cost:dollars",
        "kompress:job_cpu_core_seconds:billed",
        "namespace_policy:kompress_job_cost:dollars_sum",
    ] {
        assert!(recorded.contains(r) && dashboard.contains(r), "{r}");
    }
    // Digests only on the info series.
    for l in text.lines().filter(|l| l.contains("digest=")) {
        assert!(l.starts_with("kompress_job_promoted_info{"), "{l}");
    }
}

#[test]
fn the_charts_prometheus_rule_carries_exactly_the_rule_file() {
    let helm = support::cluster::testenv_bin("helm");
    let o = Command::new(&helm)
        .args([
            "template",
            "k",
            "charts/kompress",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{helm}: {e} (hack/testenv/build builds helm)"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rendered: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(rendered["kind"], "PrometheusRule");
    let file: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join(RULES)).unwrap()).unwrap();
    assert_eq!(rendered["spec"]["groups"], file["groups"]);
}
