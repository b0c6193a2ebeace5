//! Signed evaluation evidence end to end through `kompress run` and `kompress verify`, with
//! keys made by openssl and every envelope checked again by an independent verifier
//! (hack/verify_evidence.py: securesystemslib's DSSE code on pyca/cryptography; no kompress
//! code). Flipping one byte of the model or of the statement, or using another key, must fail
//! both verifiers; a key that cannot be used fails the job before anything is promoted.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::*;

fn job(dir: &Path, name: &str, signing: &str) -> String {
    let repo = repo();
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.02\n  output:\n    uri: {}\n    promoteTo: {}\n{signing}",
        repo.join("examples/digits/model.onnx").display(),
        repo.join("examples/digits/eval.npz").display(),
        dir.join("candidates").display(),
        dir.join("production").display(),
    );
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    write_job(&sub, &yaml)
}

/// `kompress verify` of the promotion folder: (exit code, stdout + stderr).
fn verify(prod: &Path, key: Option<&Path>) -> (i32, String) {
    let prod = prod.display().to_string();
    let mut args = vec!["verify", prod.as_str(), "-o", "json"];
    let key_s;
    match key {
        Some(k) => {
            key_s = k.display().to_string();
            args.extend(["--key", key_s.as_str()]);
        }
        None => args.push("--unsigned"),
    }
    let r = run_kompress(&args, &[]);
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

/// The independent verifier: (passed, its JSON line).
fn independent(envelope: &Path, public: &Path, model_dir: &Path) -> (bool, Value) {
    let o = std::process::Command::new("python3")
        .arg("-B")
        .arg(repo().join("hack/verify_evidence.py"))
        .args([envelope, public, model_dir])
        .output()
        .expect("python3");
    let out: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "hack/verify_evidence.py printed no JSON ({e}); securesystemslib missing? \
             hack/test installs it. stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), out)
}

fn manifest(prod: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(prod.join("promoted.json")).unwrap()).unwrap()
}

fn local(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

#[test]
fn signed_evidence_verifies_with_both_verifiers_and_any_tampering_fails() {
    for alg in ["ed25519", "p256"] {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path(), "signer", alg);
        let (_, other_public) = keypair(dir.path(), "other", alg);
        let (result, prod) = promote_signed(dir.path(), &key);
        // The result and the manifest name the same envelope, signed by this key.
        let m = manifest(&prod);
        assert_eq!(result["evidence"], m["evidence"], "{result:#}");
        let envelope = local(m["evidence"]["uri"].as_str().unwrap());
        assert_eq!(
            sha256_hex(&envelope),
            m["evidence"]["sha256"].as_str().unwrap()
        );
        let model_dir = local(m["uri"].as_str().unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        let e = Signed {
            alg,
            prod,
            public,
            envelope,
            model_dir,
            manifest: m,
        };
        both_verifiers_accept_it(&e);
        the_statement_records_source_recipe_and_checks(&e, &result);
        both_refuse_another_key(&e, &other_public);
        both_refuse_a_flipped_statement_byte(&e);
        both_refuse_a_flipped_model_byte(&e);
    }
}

/// A signed promotion and where it lies.
struct Signed {
    alg: &'static str,
    prod: PathBuf,
    public: PathBuf,
    envelope: PathBuf,
    model_dir: PathBuf,
    manifest: Value,
}

/// Runs the digits job signed with `key`; its result and the promotion folder.
fn promote_signed(dir: &Path, key: &Path) -> (Value, PathBuf) {
    let signing = format!("    signing:\n      keyFile: {}\n", key.display());
    let r = run_kompress(
        &["run", "-f", &job(dir, "signed", &signing), "-o", "json"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).unwrap();
    let result = out["result"].clone();
    assert_eq!(result["verdict"], "Passed", "{out:#}");
    let prod = dir.join("production");
    check_promote_dir(&prod).unwrap();
    (result, prod)
}

/// Both verifiers accept it, and agree on the key id.
fn both_verifiers_accept_it(e: &Signed) {
    let (alg, m) = (e.alg, &e.manifest);
    let (code, text) = verify(&e.prod, Some(&e.public));
    assert_eq!(code, 0, "{alg}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["verdict"], "Passed");
    assert_eq!(v["digest"], m["digest"]);
    let (ok, ind) = independent(&e.envelope, &e.public, &e.model_dir);
    assert!(ok, "{alg}: {ind}");
    assert_eq!(ind["keyid"], v["keyid"], "{alg}: key ids differ");
    assert_eq!(m["evidence"]["keyid"], v["keyid"]);
}

/// The envelope's payload: the in-toto statement's bytes.
fn statement_bytes(envelope: &Path) -> Vec<u8> {
    use base64::Engine;
    let env: Value = serde_json::from_slice(&std::fs::read(envelope).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap()
}

/// What the statement records: the source's digest, the recipe, every check.
fn the_statement_records_source_recipe_and_checks(e: &Signed, result: &Value) {
    let st: Value = serde_json::from_slice(&statement_bytes(&e.envelope)).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["subject"][0]["digest"]["sha256"], e.manifest["digest"]);
    let p = &st["predicate"];
    assert_eq!(
        p["inputs"]["model"]["sha256"],
        sha256_hex(&repo().join("examples/digits/model.onnx"))
    );
    assert_eq!(
        p["inputs"]["dataset"]["sha256"],
        sha256_hex(&repo().join("examples/digits/eval.npz"))
    );
    assert_eq!(p["checks"], result["checks"]);
    assert_eq!(p["recipe"][0]["quantize"]["mode"], "dynamic");
    assert_eq!(p["tools"]["kompress"], env!("CARGO_PKG_VERSION"));
    assert!(p["tools"]["onnxruntime"].is_string(), "{p:#}");
}

/// Another key: both refuse.
fn both_refuse_another_key(e: &Signed, other_public: &Path) {
    let (code, text) = verify(&e.prod, Some(other_public));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no signature"), "{text}");
    assert!(!independent(&e.envelope, other_public, &e.model_dir).0);
}

/// One byte of the statement flipped (the manifest updated to the new envelope's hash, so
/// only the signature can catch it): both refuse. Restored afterwards.
fn both_refuse_a_flipped_statement_byte(e: &Signed) {
    let (prod, public, envelope) = (&e.prod, &e.public, &e.envelope);
    let original_env = std::fs::read(envelope).unwrap();
    let mut st_bytes = statement_bytes(envelope);
    let at = st_bytes.windows(6).position(|w| w == b"Passed").unwrap();
    st_bytes[at] = b'p';
    let mut tampered: Value = serde_json::from_slice(&original_env).unwrap();
    tampered["payload"] = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(&st_bytes)
            .into()
    };
    let bytes = serde_json::to_vec_pretty(&tampered).unwrap();
    std::fs::write(envelope, &bytes).unwrap();
    let (code, text) = verify(prod, Some(public));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("changed since it was promoted"), "{text}");
    let mut m2 = e.manifest.clone();
    m2["evidence"]["sha256"] = sha256_bytes(&bytes).into();
    std::fs::write(
        prod.join("promoted.json"),
        serde_json::to_vec_pretty(&m2).unwrap(),
    )
    .unwrap();
    let (code, text) = verify(prod, Some(public));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no signature"), "{text}");
    assert!(!independent(envelope, public, &e.model_dir).0);
    std::fs::write(envelope, &original_env).unwrap();
    std::fs::write(
        prod.join("promoted.json"),
        serde_json::to_vec_pretty(&e.manifest).unwrap(),
    )
    .unwrap();
    assert_eq!(verify(prod, Some(public)).0, 0, "restored");
}

/// One byte of the model flipped: both refuse.
fn both_refuse_a_flipped_model_byte(e: &Signed) {
    let model = e.model_dir.join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, &bytes).unwrap();
    let (code, text) = verify(&e.prod, Some(&e.public));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("does not hold the bytes the evidence names"),
        "{text}"
    );
    let (ok, ind) = independent(&e.envelope, &e.public, &e.model_dir);
    assert!(!ok, "{ind}");
}

#[test]
fn unsigned_evidence_is_written_and_checked_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair(dir.path(), "k", "ed25519");
    let r = run_kompress(
        &["run", "-f", &job(dir.path(), "unsigned", ""), "-o", "json"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let prod = dir.path().join("production");
    let m = manifest(&prod);
    assert!(m["evidence"]["keyid"].is_null(), "{m:#}");
    let (code, text) = verify(&prod, None);
    assert_eq!(code, 0, "{text}");
    let (code, text) = verify(&prod, Some(&public));
    assert_eq!(code, 1, "a key given: an unsigned promotion fails: {text}");
    // A manifest far larger than any kompress writes is refused without being read whole.
    let huge = dir.path().join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::write(huge.join("promoted.json"), vec![b' '; 5 << 20]).unwrap();
    let r = run_kompress(&["verify", huge.to_str().unwrap(), "--unsigned"], &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("larger than"), "{}", r.stderr);
    // Without --key or --unsigned, verify says what to give.
    let r = run_kompress(&["verify", prod.to_str().unwrap()], &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("--key"), "{}", r.stderr);
}

#[test]
fn a_key_that_cannot_be_used_fails_the_job_before_anything_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "k", "ed25519");
    let rsa = dir.path().join("rsa.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa.to_str().unwrap(),
    ]);
    let cases: [(&str, String, &str); 5] = [
        ("device", "/dev/zero".to_string(), "not a regular file"),
        (
            "missing",
            dir.path().join("nope.pem").display().to_string(),
            "cannot read",
        ),
        (
            "public",
            public.display().to_string(),
            "no `-----BEGIN PRIVATE KEY-----` block",
        ),
        (
            "rsa",
            rsa.display().to_string(),
            "not an Ed25519 or ECDSA P-256",
        ),
        (
            "dir",
            key.parent().unwrap().display().to_string(),
            "cannot read",
        ),
    ];
    for (name, path, says) in cases {
        let signing = format!("    signing:\n      keyFile: {path}\n");
        let r = run_kompress(&["run", "-f", &job(dir.path(), name, &signing)], &[]);
        assert_eq!(r.code, 65, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("spec.output.signing.keyFile"),
            "{name}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert!(
            !r.stderr.contains("PRIVATE KEY-----\n"),
            "no key bytes in errors"
        );
        assert!(
            files_under(&dir.path().join("production")).is_empty(),
            "{name}"
        );
        assert!(
            files_under(&dir.path().join("candidates")).is_empty(),
            "{name}: failed before any work"
        );
    }
    // A secretRef outside a cluster names what to do.
    let signing = "    signing:\n      secretRef: {name: signing-key}\n";
    let r = run_kompress(&["run", "-f", &job(dir.path(), "secret", signing)], &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("KOMPRESS_SIGNING_KEY_FILE"),
        "{}",
        r.stderr
    );
    // Both set: refused by validation, naming the field.
    let signing = format!(
        "    signing:\n      secretRef: {{name: s}}\n      keyFile: {}\n",
        key.display()
    );
    let r = run_kompress(&["run", "-f", &job(dir.path(), "both", &signing)], &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("spec.output.signing"), "{}", r.stderr);
}
