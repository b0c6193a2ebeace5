use super::*;

/// A path from a report or manifest, as a local file.
fn exists(uri: &str, what: &str) {
    let p = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        repo().join(p)
    };
    assert!(p.is_file(), "{what}: {uri} is not a file on disk");
}

#[test]
fn every_uri_a_passing_run_reports_names_a_file_that_exists() {
    let mut checks = Cases::new();
    for (out_dir, model_name, data_name) in [
        (
            "out dir/ünï",
            "my models/modèle 1.onnx",
            "dätä/eval set.npz",
        ),
        ("a%20b/ç", "m%41/model.onnx", "d/eval.npz"),
        ("日本語 フォルダ", "model.onnx", "données.npz"),
    ] {
        checks.case(out_dir, || {
            let case = Case::new();
            let root = case.path().join(out_dir);
            let model = case.path().join(model_name);
            let data = case.path().join(data_name);
            for (src, dst) in [(digits_model(), &model), (digits_data(), &data)] {
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(src, dst).unwrap();
            }
            let mut job = Job::digits(&root);
            job.model = s(&model);
            job.dataset = s(&data);
            let yaml = job.yaml();

            let f = case.run_with(&yaml, &[], &[], 60);
            assert_eq!(f.code, Some(0), "{out_dir}: {}", f.describe());
            // The summary's paths: `  candidate  <path>  sha256:…`, `  promoted  <path>`,
            // `  report  <path>`.
            let mut seen = 0;
            for line in f.stdout.lines() {
                let t = line.trim_start();
                for label in ["candidate ", "promoted ", "report "] {
                    if let Some(rest) = t.strip_prefix(label) {
                        let path = rest.trim().split("  sha256:").next().unwrap().trim();
                        if path.starts_with('/') || path.contains(out_dir) {
                            exists(path, &format!("{out_dir}: summary `{line}`"));
                            seen += 1;
                        }
                    }
                }
            }
            assert_eq!(seen, 3, "{out_dir}: summary paths: {}", f.stdout);

            let manifest: Value = serde_json::from_slice(
                &std::fs::read(root.join("production/promoted.json")).unwrap(),
            )
            .unwrap();
            exists(manifest["uri"].as_str().unwrap(), "promoted.json uri");
            exists(
                manifest["source"]["uri"].as_str().unwrap(),
                "promoted.json source",
            );
            check_promote_dir(&root.join("production")).unwrap();
            let report_uri = f
                .stdout
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("report "))
                .unwrap()
                .trim()
                .to_string();
            let report: Value = serde_json::from_slice(
                &std::fs::read(report_uri.strip_prefix("file://").unwrap_or(&report_uri)).unwrap(),
            )
            .unwrap();
            for (what, v) in [
                ("report model", &report["model"]["uri"]),
                ("report dataset", &report["dataset"]["uri"]),
                ("report artifact", &report["result"]["artifact"]["uri"]),
                ("report promoted", &report["result"]["promoted"]["uri"]),
                ("report report", &report["result"]["report"]),
            ] {
                exists(v.as_str().unwrap_or_else(|| panic!("{what}: {v}")), what);
            }
            assert_eq!(report["model"]["uri"], s(&model).as_str());
            assert_eq!(report["dataset"]["uri"], s(&data).as_str());
        });
    }
    checks.finish();
}
