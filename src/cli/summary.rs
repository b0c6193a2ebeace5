//! The end-of-run table of `kompress run`: original vs candidate, every check, and where the
//! candidate, the promoted model and the report went.

use crate::api::{JobResult, Verdict};

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// The end-of-run table: original vs candidate, and every check.
pub fn summary(name: &str, r: &JobResult) -> String {
    let verdict = match (r.verdict, &r.promoted) {
        (Verdict::Passed, Some(_)) => "PASSED, promoted",
        (Verdict::Passed, None) => "PASSED (no promoteTo set)",
        (Verdict::Rejected, _) => "REJECTED, nothing promoted",
    };
    table(&format!("CompressionJob {name}: {verdict}"), r)
}

/// `kompress evaluate`'s table: the job's gate on a model made elsewhere (never promoted).
pub fn evaluation_summary(name: &str, candidate: &str, r: &JobResult) -> String {
    let verdict = match r.verdict {
        Verdict::Passed => "PASSED",
        Verdict::Rejected => "REJECTED",
    };
    table(
        &format!(
            "CompressionJob {name}, candidate {candidate}: {verdict} (evaluated only, nothing promoted)"
        ),
        r,
    )
}

/// Original vs candidate and every check, under `heading`.
fn table(heading: &str, r: &JobResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "\n{heading}\n");
    write_models(&mut s, r);
    write_task_metrics(&mut s, &r.baseline, &r.candidate);
    write_checks(&mut s, r);
    write_search(&mut s, r);
    s.push('\n');
    write_locations(&mut s, r);
    s
}

/// A metric to 5 decimals, `—` when not measured.
fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.5}")).unwrap_or_else(|| "—".into())
}

/// Size, accuracy, agreement, error, latency and samples of both models.
fn write_models(s: &mut String, r: &JobResult) {
    use std::fmt::Write;
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.2}%", v * 100.0))
            .unwrap_or_else(|| "—".into())
    };
    let (b, c) = (&r.baseline, &r.candidate);
    let _ = writeln!(s, "  {:<14} {:>14} {:>14}", "", "original", "candidate");
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}   {:.2}x smaller",
        "size",
        human_bytes(r.original_bytes),
        human_bytes(r.compressed_bytes),
        r.ratio
    );
    let drop = r
        .accuracy_drop
        .map(|d| format!("   {:+.2} points", if d == 0.0 { 0.0 } else { -d * 100.0 }))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}{drop}",
        "accuracy",
        pct(b.accuracy),
        pct(c.accuracy)
    );
    // Candidate-only rows: measured against the original, which has no value of its own.
    for (name, value) in [
        ("agreement", pct(c.agreement)),
        ("cosine", num(c.cosine_similarity)),
        ("max |error|", num(c.max_abs_error)),
    ] {
        let _ = writeln!(s, "  {:<14} {:>14} {:>14}", name, "—", value);
    }
    for (name, base, cand) in [
        ("latency p50", b.latency_p50_ms, c.latency_p50_ms),
        ("latency p95", b.latency_p95_ms, c.latency_p95_ms),
    ] {
        let _ = writeln!(s, "  {:<14} {:>11.3} ms {:>11.3} ms", name, base, cand);
    }
    if let (Some(r), Some(lo), Some(hi)) =
        (c.latency_ratio, c.latency_ratio_low, c.latency_ratio_high)
    {
        let _ = writeln!(
            s,
            "  {:<14} {:>14} {:>14}   95% [{lo:.2}, {hi:.2}], interleaved",
            "latency ratio",
            "—",
            format!("{r:.2}x")
        );
    }
    let _ = writeln!(s, "  {:<14} {:>14} {:>14}", "samples", b.samples, c.samples);
}

/// Task metrics: against the labels for both models, against the original for the candidate.
fn write_task_metrics(s: &mut String, b: &crate::api::Metrics, c: &crate::api::Metrics) {
    use std::fmt::Write;
    let keys: std::collections::BTreeSet<&String> = b.task.keys().chain(c.task.keys()).collect();
    if !keys.is_empty() {
        let _ = writeln!(
            s,
            "\n  {:<22} {:>10} {:>10}",
            "task metrics", "original", "candidate"
        );
    }
    for k in keys {
        let v = |m: &crate::api::Metrics| num(m.task.get(k).copied());
        let _ = writeln!(s, "  {:<22} {:>10} {:>10}", k, v(b), v(c));
    }
}

/// Every check, with its value and limit (or that no threshold was set).
fn write_checks(s: &mut String, r: &JobResult) {
    use std::fmt::Write;
    if r.checks
        .iter()
        .all(|c| c.name == crate::gate::TENSORS_COMPRESSED)
    {
        let _ = writeln!(
            s,
            "\n  no thresholds set: only that the passes changed some weight is checked"
        );
    } else {
        let _ = writeln!(s, "\n  checks");
    }
    for ch in &r.checks {
        let op = if ch.name.is_max() { "<=" } else { ">=" };
        let _ = writeln!(
            s,
            "  {} {:<26} {:>10.5} {op} {}",
            if ch.passed { "✓" } else { "✗" },
            ch.name,
            ch.value,
            ch.limit
        );
    }
}

/// What a search tried and what it chose.
fn write_search(s: &mut String, r: &JobResult) {
    use std::fmt::Write;
    let Some(sr) = &r.search else { return };
    let from = match (r.verdict, sr.trial) {
        (Verdict::Passed, Some(t)) => format!("chose trial {t}"),
        (_, Some(t)) => format!("none passed; closest was trial {t}"),
        _ => "no trial".into(),
    };
    let _ = writeln!(
        s,
        "\n  search: {} trials, {} sensitivity probes{}; {from}: {} with {} layers in float{}",
        sr.trials,
        sr.probes,
        sr.stopped_by
            .as_deref()
            .map(|b| format!(", stopped by {b}"))
            .unwrap_or_default(),
        sr.form.as_deref().unwrap_or("-"),
        sr.float_layers,
        if sr.fp16_layers > 0 {
            format!(" ({} of them fp16)", sr.fp16_layers)
        } else {
            String::new()
        }
    );
    if let Some(l) = &sr.latency {
        let _ = writeln!(s, "  latency: {l}");
    }
    if !sr.sensitive_layers.is_empty() {
        let _ = writeln!(s, "  most sensitive: {}", sr.sensitive_layers.join(", "));
    }
}

/// Where the candidate, the promoted model and the report went, and the cache it came from.
fn write_locations(s: &mut String, r: &JobResult) {
    use std::fmt::Write;
    if let Some(a) = &r.artifact {
        let _ = writeln!(s, "  candidate  {}  sha256:{}", a.uri, a.sha256);
    }
    if let Some(p) = &r.promoted {
        let _ = writeln!(s, "  promoted   {}", p.uri);
    }
    if let Some(rep) = &r.report {
        let _ = writeln!(s, "  report     {rep}");
    }
    if let Some(c) = &r.cached_from {
        let _ = writeln!(
            s,
            "  cached     from {} (key {}): not computed again; --no-cache recomputes",
            c.run,
            &c.key[..c.key.len().min(16)]
        );
    }
}
