use super::*;

fn with(case: &Case, edit: impl Fn(&mut Job)) -> String {
    let mut j = case.digits();
    edit(&mut j);
    j.yaml()
}

fn latency(warmup: &str, iterations: &str) -> String {
    format!("  evaluation:\n    latency: {{warmup: {warmup}, iterations: {iterations}}}\n")
}

#[test]
fn out_of_range_numbers_name_their_field_within_5_seconds() {
    let case = Case::new();
    let prune = |p: &str| format!("    - prune:\n        pattern: \"{p}\"");
    let mut cases: Vec<(String, String)> = Vec::new();
    for p in [
        "1:99999999999999",
        "1:4294967296",
        "1:65",
        "64:65",
        "2:18446744073709551617",
        "1:18446744073709551615",
    ] {
        cases.push((
            with(&case, |j| j.passes = prune(p)),
            "spec.passes[0].prune.pattern".into(),
        ));
    }
    cases.push((
        with(&case, |j| {
            j.passes = format!(
                "    - prune:\n        sparsity: 0.1\n{}",
                prune("1:4294967296")
            )
        }),
        "spec.passes[1].prune.pattern".into(),
    ));
    cases.push((
        with(&case, |j| j.extra = latency("4294967295", "2")),
        "spec.evaluation.latency.warmup".into(),
    ));
    cases.push((
        with(&case, |j| j.extra = latency("1", "4294967295")),
        "spec.evaluation.latency.iterations".into(),
    ));
    for threads in ["1000", "257", "4294967295"] {
        cases.push((
            with(&case, |j| {
                j.extra = format!("  evaluation:\n    threads: {threads}\n")
            }),
            "spec.evaluation.threads".into(),
        ));
    }
    for n in [17, 201] {
        cases.push((
            with(&case, |j| {
                j.passes = "    - prune:\n        sparsity: 0.01\n"
                    .repeat(n)
                    .trim_end()
                    .into();
                j.thresholds = LOOSE_GATE.into();
            }),
            "spec.passes".into(),
        ));
    }
    let mut checks = Cases::new();
    for (yaml, field) in cases {
        checks.case(field.clone(), || {
            fails(&case, &yaml, PERMANENT, &[&field], 5.0);
        });
    }
    checks.finish();
    // The worker refuses the same as InvalidSpec, permanently.
    let yaml = with(&case, |j| {
        j.extra = "  evaluation:\n    threads: 1000\n".into()
    });
    let (w, m) = case.worker(&yaml, &[]);
    failed_message(&w, &m, PERMANENT);
    assert!(
        m["message"]
            .as_str()
            .is_some_and(|t| t.contains("spec.evaluation.threads")),
        "{m}"
    );
}

#[test]
fn deeply_nested_and_oversized_manifests_are_refused_within_5_seconds() {
    let case = Case::new();
    let valid = case.digits().yaml();
    let nested = |open: &str, close: &str, n: usize| {
        format!(
            "{valid}  nodeSelector: {}{}\n",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let mut indented = valid.clone();
    indented.push_str("  nodeSelector:\n");
    for depth in 2..600 {
        indented.push_str(&format!("{}a:\n", " ".repeat(depth * 2)));
    }
    let mut big = valid.clone();
    big.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
    let mut annotation = valid.replace(
        "metadata:\n",
        &format!(
            "metadata:\n  annotations:\n    pad: \"{}\"\n",
            "y".repeat(1_200_000)
        ),
    );
    annotation.push('\n');
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "100k `[`, balanced (200 kB)",
            nested("[", "]", 100_000),
            "nest|deep|depth",
        ),
        (
            "200k `[`, unclosed",
            format!("{valid}  nodeSelector: {}\n", "[".repeat(200_000)),
            "nest|deep|depth",
        ),
        (
            "50k `{{a: `",
            nested("{a: ", "}", 50_000),
            "nest|deep|depth",
        ),
        ("600 levels of indentation", indented, "nest|deep|depth"),
        ("a 2 MB comment", big, "bytes|too large|size|mib|mb"),
        (
            "a 1.2 MB annotation",
            annotation,
            "bytes|too large|size|mib|mb",
        ),
    ];
    let mut checks = Cases::new();
    for (what, yaml, words) in cases {
        checks.case(what, || {
            let f = fails(&case, &yaml, PERMANENT, &[words], 5.0);
            assert!(
                says(&f.stderr, &["manifest|job.yaml"]),
                "{what}: {}",
                f.stderr
            );
        });
    }
    checks.finish();
}
