//! The edges outside the gated `run` hold like it does: no credential in a URI is copied into
//! what a run records (report.json, promoted.json, the signed statement, its output);
//! `kompress verify` stays inside the folder it verifies and refuses malformed evidence with a
//! plain message; `cp`, `compress` and `inspect` never write through or read from a device,
//! FIFO or symlink; and the messages say what happened.

mod support;

use base64::Engine;
use serde_json::Value;
use std::path::Path;
use support::hostile::file_server;
use support::*;

/// Every file under `dir` as text, with each DSSE envelope's payload decoded next to it.
fn everything_written(dir: &Path) -> String {
    let mut all = String::new();
    for f in files_under(dir) {
        let text = String::from_utf8_lossy(&std::fs::read(dir.join(&f)).unwrap()).into_owned();
        if f.ends_with(".intoto.json") {
            let env: Value = serde_json::from_str(&text).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(env["payload"].as_str().unwrap())
                .unwrap();
            all.push_str(&String::from_utf8_lossy(&payload));
        }
        all.push_str(&text);
    }
    all
}

#[test]
fn a_presigned_or_sas_uri_never_reaches_the_report_the_manifest_or_the_statement() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["model.onnx", "eval.npz"] {
        std::fs::copy(repo().join("examples/digits").join(f), served.join(f)).unwrap();
    }
    let server = file_server(&served);
    let (key, public) = keypair(dir.path(), "signer", "ed25519");
    let model = format!(
        "http://{}/model.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDLEAK1&X-Amz-Signature=LEAKSIG1",
        server.addr
    );
    let dataset = format!(
        "http://reader:LEAKPW2@{}/eval.npz?sv=2022-11-02&sp=r&sig=LEAKSAS3",
        server.addr
    );
    let out = dir.path().join("out");
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: presigned\nspec:\n  model:\n    uri: '{model}'\n  dataset:\n    uri: '{dataset}'\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: {}\n    signing: {{keyFile: {}}}\n",
        out.join("candidates").display(),
        out.join("production").display(),
        key.display(),
    );
    let job = write_job(dir.path(), &yaml);
    let r = run_kompress(&["run", "-f", &job, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        server.requests().iter().any(|q| q.path == "/model.onnx"),
        "the model was fetched from the server"
    );
    let written = everything_written(&out);
    for secret in ["LEAK", "AKID", "X-Amz-Signature", "sig="] {
        assert!(
            !written.contains(secret),
            "`{secret}` was recorded under {}",
            out.display()
        );
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "`{secret}` was printed"
        );
    }
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        report["model"]["uri"],
        format!("http://{}/model.onnx?<redacted>", server.addr)
    );
    assert_eq!(
        report["dataset"]["uri"],
        format!("http://<redacted>@{}/eval.npz?<redacted>", server.addr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("production/promoted.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["source"]["uri"], report["model"]["uri"]);
    assert_eq!(
        manifest["source"]["sha256"],
        sha256_hex(&served.join("model.onnx")),
        "the digest, not the URL, binds the source"
    );
    // The redacted promotion still verifies.
    let prod = out.join("production");
    let v = run_kompress(
        &[
            "verify",
            prod.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

/// An unsigned promotion of the digits model under `dir/made/production` (its envelope is
/// still a DSSE envelope, without signatures).
fn promotion(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("made");
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: made\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: {}\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        out.join("candidates").display(),
        out.join("production").display(),
    );
    let r = run_kompress(&["run", "-f", &write_job(dir, &yaml), "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    out.join("production")
}

/// A copy of the promotion folder `prod` at `dir/name`, its manifest naming the copy, with
/// the manifest and the statement edited (the envelope's digest in the manifest follows).
fn tampered(
    prod: &Path,
    dir: &Path,
    name: &str,
    edit_manifest: impl FnOnce(&mut Value),
    edit_envelope: impl FnOnce(&mut Value, &mut Value),
) -> std::path::PathBuf {
    let copy = dir.join(name);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(prod)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    let text = std::fs::read_to_string(copy.join("promoted.json"))
        .unwrap()
        .replace(prod.to_str().unwrap(), copy.to_str().unwrap());
    let mut m: Value = serde_json::from_str(&text).unwrap();
    let env_path = std::path::PathBuf::from(m["evidence"]["uri"].as_str().unwrap());
    let mut env: Value = serde_json::from_slice(&std::fs::read(&env_path).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut statement: Value =
        serde_json::from_slice(&b64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    edit_envelope(&mut env, &mut statement);
    env["payload"] = b64.encode(statement.to_string()).into();
    let env_bytes = env.to_string().into_bytes();
    std::fs::write(&env_path, &env_bytes).unwrap();
    m["evidence"]["sha256"] = sha256_bytes(&env_bytes).into();
    edit_manifest(&mut m);
    std::fs::write(copy.join("promoted.json"), m.to_string()).unwrap();
    copy
}

fn verify_unsigned(folder: &Path) -> (i32, String) {
    let r = run_kompress(&["verify", folder.to_str().unwrap(), "--unsigned"], &[]);
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

#[test]
fn verify_stays_inside_the_promotion_folder_and_refuses_malformed_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let prod = promotion(dir.path());
    let (code, out) = verify_unsigned(&prod);
    assert_eq!(code, 0, "the untouched promotion verifies: {out}");
    subjects_outside_the_folder_are_refused(&prod, dir.path());
    a_model_folder_elsewhere_is_refused(&prod, dir.path());
    a_symlink_out_of_the_folder_is_refused(&prod, dir.path());
    multibyte_digests_are_refused(&prod, dir.path());
    payload_type_and_predicate_are_checked_unsigned(&prod, dir.path());
}

/// Subjects that name a file outside the folder: `..`, an absolute path.
fn subjects_outside_the_folder_are_refused(prod: &Path, dir: &Path) {
    let secret = dir.join("secret.onnx");
    std::fs::write(&secret, b"not for verify to read").unwrap();
    let secret_sha = sha256_hex(&secret);
    for (case, name) in [
        ("dotdot", "../../secret.onnx".to_string()),
        ("absolute", secret.display().to_string()),
    ] {
        let n = name.clone();
        let copy = tampered(
            prod,
            dir,
            case,
            |m| {
                m["files"][0] = serde_json::json!({"name": n, "sha256": secret_sha});
            },
            |_, st| {
                st["subject"][0] =
                    serde_json::json!({"name": name, "digest": {"sha256": secret_sha}});
            },
        );
        let (code, out) = verify_unsigned(&copy);
        assert_eq!(code, 1, "{case}: {out}");
        assert!(
            out.contains("is not inside the promotion folder"),
            "{case}: {out}"
        );
    }
}

/// The model's folder or the evidence named outside the promotion folder.
fn a_model_folder_elsewhere_is_refused(prod: &Path, dir: &Path) {
    let elsewhere = tampered(
        prod,
        dir,
        "elsewhere",
        |m| {
            m["uri"] = prod
                .join("sha256-x/model.onnx")
                .display()
                .to_string()
                .into();
        },
        |_, _| {},
    );
    let (code, out) = verify_unsigned(&elsewhere);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the model's folder") && out.contains("not inside"),
        "{out}"
    );
}

/// A symlink out of the folder to a file with the very bytes the evidence names.
fn a_symlink_out_of_the_folder_is_refused(prod: &Path, dir: &Path) {
    let linked = tampered(prod, dir, "linked", |_| {}, |_, _| {});
    let model = linked
        .read_dir()
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("sha256-"))
        .unwrap()
        .path()
        .join("model.onnx");
    let outside = dir.join("outside-model.onnx");
    std::fs::rename(&model, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &model).unwrap();
    let (code, out) = verify_unsigned(&linked);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("symlink out"), "{out}");
}

/// Multi-byte text where a sha256 belongs: refused, never a panic (exit 101).
fn multibyte_digests_are_refused(prod: &Path, dir: &Path) {
    let wide = "é".repeat(32);
    let w = wide.clone();
    let multibyte = tampered(
        prod,
        dir,
        "multibyte",
        |m| {
            m["files"][0]["sha256"] = w.into();
        },
        |_, st| {
            st["subject"][0]["digest"]["sha256"] = wide.into();
        },
    );
    let (code, out) = verify_unsigned(&multibyte);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not 64 lowercase hex"), "{out}");
    let only_manifest = tampered(
        prod,
        dir,
        "multibyte-manifest",
        |m| {
            m["files"][0]["sha256"] = "日本語".repeat(8).into();
        },
        |_, _| {},
    );
    let (code, out) = verify_unsigned(&only_manifest);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("are not the manifest's files"), "{out}");
}

/// --unsigned still checks the payload type; a statement without its checks is refused.
fn payload_type_and_predicate_are_checked_unsigned(prod: &Path, dir: &Path) {
    let lying = tampered(
        prod,
        dir,
        "payload-type",
        |_| {},
        |env, _| {
            env["payloadType"] = "text/plain".into();
        },
    );
    let (code, out) = verify_unsigned(&lying);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("payloadType is `text/plain`"), "{out}");
    for field in ["checks", "verdict", "runId"] {
        let stripped = tampered(
            prod,
            dir,
            &format!("no-{field}"),
            |_| {},
            |_, st| {
                st["predicate"].as_object_mut().unwrap().remove(field);
            },
        );
        let (code, out) = verify_unsigned(&stripped);
        assert_eq!(code, 1, "{field}: {out}");
        assert!(
            out.contains(&format!("the predicate has no `{field}`")),
            "{out}"
        );
    }
}

#[test]
fn malformed_references_exit_65_with_what_to_write() {
    for bad in [
        "oci://host:99999/x:v1",
        "oci://reg.example/a@sha256:zz",
        "oci://reg.example",
    ] {
        let r = run_kompress(&["verify", bad, "--unsigned"], &[]);
        assert_eq!(r.code, 65, "{bad}: {}", r.stderr);
        assert!(
            r.stderr.contains("oci://REGISTRY/REPOSITORY:TAG"),
            "{bad}: {}",
            r.stderr
        );
    }
    // The same grammar holds at validation, with the field's path.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: port\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes:\n    - quantize: {{mode: dynamic}}\n  output:\n    uri: {}\n    promoteTo: oci://host:99999/x:v1\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        dir.path().join("out").display(),
    );
    let r = run_kompress(&["run", "-f", &write_job(dir.path(), &yaml)], &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("spec.output.promoteTo") && r.stderr.contains("port `99999`"),
        "{}",
        r.stderr
    );
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// A compress job (dynamic int8, or static when `static_q`) whose spec validates.
fn compress_job(dir: &Path, static_q: bool) -> String {
    let mode = if static_q { "static" } else { "dynamic" };
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: c\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes:\n    - quantize: {{mode: {mode}}}\n  output:\n    uri: {}\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        dir.join("out").display(),
    );
    let sub = dir.join(format!("job-{mode}"));
    std::fs::create_dir_all(&sub).unwrap();
    write_job(&sub, &yaml)
}

#[test]
fn cp_and_compress_never_write_through_a_device_a_fifo_or_a_symlink() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, b"bytes to copy").unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let kept = dir.path().join("kept.txt");
    std::fs::write(&kept, b"keep me").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    // A device node of our own (the numbers of /dev/full), never the machine's.
    let full = dir.path().join("full");
    let mut targets = vec![(fifo.clone(), "a FIFO"), (link.clone(), "a symbolic link")];
    if std::process::Command::new("mknod")
        .args([full.to_str().unwrap(), "c", "1", "7"])
        .status()
        .is_ok_and(|s| s.success())
    {
        targets.push((full.clone(), "a device node"));
    } else {
        eprintln!("mknod is not allowed here: the device-node case is left out");
    }
    let model = repo().join("examples/digits/model.onnx");
    let job = compress_job(dir.path(), false);
    for (dst, kind) in &targets {
        let d = dst.to_str().unwrap();
        let cp = run_kompress(&["cp", src.to_str().unwrap(), d], &[]);
        let compress = run_kompress(&["compress", model.to_str().unwrap(), d, "-f", &job], &[]);
        for (cmd, r) in [("cp", &cp), ("compress", &compress)] {
            assert_eq!(r.code, 65, "{cmd} onto {kind}: {}", r.stderr);
            assert!(
                r.stderr.contains(kind) && r.stderr.contains("choose another destination"),
                "{cmd} onto {kind}: {}",
                r.stderr
            );
        }
    }
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&kept).unwrap(), b"keep me");
    if targets.len() == 3 {
        assert!(
            std::fs::symlink_metadata(&full)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
}

#[test]
fn inspect_and_compress_read_regular_files_only_and_never_hang() {
    use support::hostile::run_capped;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let out = dir.path().join("out.onnx");
    let (o, f) = (out.to_str().unwrap(), fifo.to_str().unwrap());
    let job = compress_job(dir.path(), false);
    let static_job = compress_job(dir.path(), true);
    let model = repo().join("examples/digits/model.onnx");
    let m = model.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("inspect /dev/zero", vec!["inspect", "/dev/zero"]),
        ("inspect a FIFO", vec!["inspect", f]),
        (
            "compress /dev/zero",
            vec!["compress", "/dev/zero", o, "-f", &job],
        ),
        ("compress a FIFO", vec!["compress", f, o, "-f", &job]),
        ("compress -f a FIFO", vec!["compress", m, o, "-f", f]),
        (
            "compress --calibration a FIFO",
            vec!["compress", m, o, "-f", &static_job, "--calibration", f],
        ),
    ];
    for (case, args) in cases {
        let r = run_capped(&args, &[], std::time::Duration::from_secs(30), 1024);
        assert!(!r.timed_out, "{case}: {}", r.describe());
        assert_eq!(r.code, Some(65), "{case}: {}", r.describe());
        assert!(
            r.stderr.contains("not a regular file"),
            "{case}: {}",
            r.describe()
        );
    }
    assert!(!out.exists());
}

#[test]
fn sigterm_ends_a_command_that_is_waiting() {
    use std::time::{Duration, Instant};
    let server = support::hostile::Server::start(|_| support::hostile::Answer::Silent);
    let reference = format!("oci://{}/m/x:v1", server.addr);
    let mut child = std::process::Command::new(bin())
        .args(["verify", &reference, "--unsigned", "--plain-http"])
        .env("KOMPRESS_REGISTRY_TIMEOUT_SECONDS", "600")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while server.requests().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no request came");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "SIGTERM did not end verify"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143), "{status:?}");
}

#[test]
fn cp_onto_a_full_disk_names_the_destination_not_a_scratch_folder() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a small tmpfs here (not root): the full-disk case is left out");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let src = dir.path().join("big.bin");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let dst = small.join("copy.bin");
    let r = run_kompress(&["cp", src.to_str().unwrap(), dst.to_str().unwrap()], &[]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr.contains(dst.to_str().unwrap())
            && r.stderr.contains("free space on the destination's disk")
            && !r.stderr.contains("scratch"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_all_nan_calibration_set_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("examples/digits/model.onnx");
    let data = dir.path().join("nan.npz");
    write_npz(
        &data,
        &[("input", f32_array(&[64, 64], &[f32::NAN; 64 * 64]))],
    );
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: nan\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes:\n    - quantize: {{mode: static, calibration: {{samples: 32}}}}\n  output:\n    uri: {}\n",
        model.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let job = write_job(dir.path(), &yaml);
    let out = dir.path().join("q.onnx");
    let r = run_kompress(&compress_args(&model, &out, &job, Some(&data)), &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("input `input` is NaN or infinite in all"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn a_search_whose_every_form_fails_on_a_nan_weight_says_nan() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = mlp(&[16, 32, 4], 5);
    edit_first_weight(&mut model, |v| v[3] = f32::NAN);
    let m = dir.path().join("m.onnx");
    write_model(&model, &m);
    let data = dir.path().join("d.npz");
    mlp_dataset(&data, 64, 16, 4);
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: nansearch\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes: []\n  search:\n    forms: [dynamic]\n  output:\n    uri: {}\n",
        m.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let r = run_kompress(&["run", "-f", &write_job(dir.path(), &yaml)], &[]);
    assert_eq!(r.code, 65, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("every form failed") && r.stderr.contains("NaN"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("budget (none)"), "{}", r.stderr);
}

#[test]
fn a_huge_promoted_json_at_the_target_is_replaced_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let prod = dir.path().join("production");
    std::fs::create_dir_all(&prod).unwrap();
    // 16 GiB, sparse: read whole, it would not fit in the run's address space.
    let huge = std::fs::File::create(prod.join("promoted.json")).unwrap();
    huge.set_len(16 << 30).unwrap();
    drop(huge);
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: huge\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: {}\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        dir.path().join("candidates").display(),
        prod.display(),
    );
    let job = write_job(dir.path(), &yaml);
    let r = support::hostile::run_capped(
        &["run", "-f", &job],
        &[],
        std::time::Duration::from_secs(180),
        8192,
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let m: Value =
        serde_json::from_slice(&std::fs::read(prod.join("promoted.json")).unwrap()).unwrap();
    assert_eq!(m["kind"], "PromotedModel");
}
