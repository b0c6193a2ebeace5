use super::*;
use std::process::Stdio;

/// Starts every job at once (same job name, same output), waits for all.
fn together(case: &Case, yamls: &[String], run_id: Option<&str>) {
    let mut children = Vec::new();
    for (i, y) in yamls.iter().enumerate() {
        let job = case.write(&format!("job-{i}.yaml"), y);
        let scratch = case.scratch.join(format!("s{i}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let mut c = Command::new(bin());
        c.args(["run", "-f", job.to_str().unwrap(), "-o", "json"])
            .arg("--scratch")
            .arg(&scratch)
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = run_id {
            c.args(["--run-id", id]);
        }
        children.push((c.spawn().unwrap(), scratch));
    }
    for (c, scratch) in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(files_under(&scratch).is_empty(), "scratch left");
        std::fs::remove_dir(&scratch).unwrap();
    }
}

fn each_folder_is_one_run(case: &Case, expected: usize) {
    let runs = case.out().join("candidates/runs");
    let folders: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(folders.len(), expected, "{folders:?}");
    for f in &folders {
        let report: Value =
            serde_json::from_slice(&std::fs::read(f.join("report.json")).unwrap()).unwrap();
        let artifact = &report["result"]["artifact"];
        assert_eq!(
            artifact["sha256"],
            sha256_hex(&f.join("model.onnx")),
            "{}: report.json and model.onnx are of different runs",
            f.display()
        );
        assert_eq!(
            PathBuf::from(artifact["uri"].as_str().unwrap()),
            f.join("model.onnx")
        );
    }
    check_promote_dir(&case.production()).unwrap();
}

#[test]
fn two_runs_of_one_job_started_together_get_two_folders() {
    let mut checks = Cases::new();
    for round in 0..3 {
        checks.case(format!("round {round}"), || {
            let case = Case::new();
            let mut int8 = case.digits();
            int8.name = "twins".into();
            let mut fp16 = int8.clone();
            fp16.passes = FP16.into();
            fp16.thresholds = "    minAgreement: 0.98".into();
            let (a, b) = (int8.yaml(), fp16.yaml());
            let yamls = if round % 2 == 0 { [a, b] } else { [b, a] };
            together(&case, &yamls, None);
            each_folder_is_one_run(&case, 2);
        });
    }
    checks.finish();
}

#[test]
fn four_runs_with_the_same_run_id_get_four_folders() {
    let case = Case::new();
    let base = case.digits();
    let recipes = [
        INT8,
        FP16,
        "    - quantize:\n        mode: weightOnly",
        "    - prune:\n        sparsity: 0.1\n    - quantize: {}",
    ];
    let yamls: Vec<String> = recipes
        .iter()
        .map(|r| {
            let mut j = base.clone();
            j.passes = r.to_string();
            j.thresholds = LOOSE_GATE.into();
            j.yaml()
        })
        .collect();
    together(&case, &yamls, Some("same"));
    each_folder_is_one_run(&case, 4);
}
