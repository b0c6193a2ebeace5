use super::*;

#[test]
fn a_model_or_dataset_uri_that_is_a_directory_is_permanent_and_named() {
    let case = Case::new();
    let dir = case.path().join("models");
    std::fs::create_dir_all(dir.join("model.onnx")).unwrap();
    let mut checks = Cases::new();
    for model in [
        s(&dir),
        format!("{}/", dir.display()),
        s(&dir.join("model.onnx")),
        s(&repo().join("examples/digits")),
    ] {
        checks.case(model.clone(), || {
            let mut job = case.digits();
            job.model = model.clone();
            let shown = model.trim_end_matches('/');
            fails(
                &case,
                &job.yaml(),
                PERMANENT,
                &[shown, "directory|folder"],
                10.0,
            );
        });
    }
    checks.finish();
    let mut job = case.digits();
    job.dataset = s(&dir);
    fails(
        &case,
        &job.yaml(),
        PERMANENT,
        &[&s(&dir), "directory|folder"],
        10.0,
    );
}

#[test]
fn dataset_errors_name_the_users_uri_not_the_scratch_copy() {
    // Shapes that do not fit the model, under several spellings of the same file.
    let case = Case::new();
    let data = case.path().join("d/wrong shape.npz");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    write_npz(
        &data,
        &[
            ("input", f32_array(&[4, 63], &[0.0; 252])),
            ("labels", i64_array(&[0, 1, 2, 3])),
        ],
    );
    let mut checks = Cases::new();
    for uri in [
        s(&data),
        format!("{}/d/./wrong shape.npz", case.path().display()),
    ] {
        checks.case(uri.clone(), || {
            let mut job = case.digits();
            job.dataset = uri.clone();
            let f = fails(
                &case,
                &job.yaml(),
                PERMANENT,
                &["wrong shape.npz", "63"],
                10.0,
            );
            assert!(
                f.stderr.contains(&uri) || f.stderr.contains(&s(&data)),
                "{}",
                f.stderr
            );
        });
    }
    checks.finish();
}

#[test]
fn an_http_endpoint_without_allow_http_is_permanent_and_says_allow_http() {
    let case = Case::new();
    let mut job = case.digits();
    job.output = "s3://models/x/candidates".into();
    job.promote = None;
    job.extra
        .push_str("  storage: {endpoint: \"http://127.0.0.1:9\"}\n");
    fails(&case, &job.yaml(), PERMANENT, &["allowHttp"], 10.0);
}

#[test]
fn an_unnamed_tensor_is_never_shown_as_an_empty_name() {
    let case = Case::new();
    let mut m = mlp(&[64, 32, 10], 4);
    let g = m.graph.as_mut().unwrap();
    for t in &mut g.initializer {
        if t.name() == "W0" {
            t.name = Some(String::new());
            t.dims = vec![1 << 40, 1 << 40];
        }
    }
    for n in &mut g.node {
        for i in &mut n.input {
            if i == "W0" {
                i.clear();
            }
        }
    }
    let (_, job) = mlp_job(&case, &m, "unnamed.onnx");
    fails(&case, &job.yaml(), PERMANENT, &["unnamed.onnx"], 10.0);
}
