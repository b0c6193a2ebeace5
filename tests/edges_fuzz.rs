//! Seeded fuzzing, bounded in time, of what `kompress verify` reads: the promotion manifest and
//! the evidence envelope (mutated values: `..`, absolute paths, multi-byte text, huge numbers,
//! wrong types, missing keys, cut bytes), and a registry's answers (random statuses, lengths
//! and bodies: honest, cut, random, endless). Whatever the input, verify ends within its
//! deadline and memory with 0, 1, 65 or 75: never a panic (101), never a signal.
//! `KOMPRESS_FUZZ_CASES` sets the number of cases per target (default 120); `KOMPRESS_FUZZ_SEED`
//! the seed (default: fixed, so CI is reproducible).

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::hostile::{Answer, Artifact, REPO, Server, run_capped};
use support::*;

/// splitmix64: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn cases() -> usize {
    std::env::var("KOMPRESS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

fn seed() -> u64 {
    std::env::var("KOMPRESS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b6f_6d70)
}

/// A hostile value for a JSON slot.
fn hostile_value(r: &mut Rng) -> Value {
    let pool = [
        json!(""),
        json!(".."),
        json!("../../etc/passwd"),
        json!("/etc/passwd"),
        json!("é".repeat(32)),
        json!("日本".repeat(11)),
        json!("a\u{0}b"),
        json!("x".repeat(70_000)),
        json!("sha256:".to_string() + &"0".repeat(64)),
        json!(1e308),
        json!(-1),
        json!(u64::MAX),
        json!(null),
        json!([]),
        json!({}),
        json!(true),
        json!("Passed"),
        json!("file:///etc/passwd"),
        json!("s3://b/../k"),
    ];
    pool[r.below(pool.len())].clone()
}

/// Every JSON pointer under `v` (objects and arrays, at most depth 6).
fn pointers(v: &Value, at: String, depth: usize, out: &mut Vec<String>) {
    out.push(at.clone());
    if depth == 0 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    depth - 1,
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), depth - 1, out);
            }
        }
        _ => {}
    }
}

/// One to three mutations of `v`: a slot replaced, a key removed, or an array doubled.
fn mutate(v: &mut Value, r: &mut Rng) {
    for _ in 0..1 + r.below(3) {
        let mut ps = Vec::new();
        pointers(v, String::new(), 6, &mut ps);
        let p = ps[r.below(ps.len())].clone();
        match r.below(3) {
            0 => {
                if let Some(slot) = v.pointer_mut(&p) {
                    *slot = hostile_value(r);
                }
            }
            1 => {
                if let Some((parent, key)) = p.rsplit_once('/')
                    && let Some(Value::Object(m)) = v.pointer_mut(parent)
                {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
            }
            _ => {
                if let Some(Value::Array(a)) = v.pointer_mut(&p)
                    && let Some(first) = a.first().cloned()
                {
                    a.push(first);
                }
            }
        }
    }
}

#[track_caller]
fn ended_well(f: &support::hostile::Capped, case: &str) {
    assert!(!f.timed_out, "{case}: {}", f.describe());
    assert!(
        matches!(f.code, Some(0 | 1 | 65 | 75)),
        "{case}: {}",
        f.describe()
    );
    assert!(!f.stderr.contains("panicked"), "{case}: {}", f.describe());
}

fn made_promotion(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("made");
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: fuzz\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: {}\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        out.join("candidates").display(),
        out.join("production").display(),
    );
    let r = run_kompress(&["run", "-f", &write_job(dir, &yaml)], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    out.join("production")
}

#[test]
fn verify_survives_fuzzed_manifests_and_envelopes() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let prod = made_promotion(dir.path());
    let manifest_path = prod.join("promoted.json");
    let manifest_text = std::fs::read_to_string(&manifest_path).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    let env_path = std::path::PathBuf::from(manifest["evidence"]["uri"].as_str().unwrap());
    let env_text = std::fs::read_to_string(&env_path).unwrap();
    let envelope: Value = serde_json::from_str(&env_text).unwrap();
    let statement: Value =
        serde_json::from_slice(&b64.decode(envelope["payload"].as_str().unwrap()).unwrap())
            .unwrap();
    let mut r = Rng(seed());
    let mut codes = std::collections::BTreeMap::new();
    for case in 0..cases() {
        let (mut m, mut env, mut st) = (manifest.clone(), envelope.clone(), statement.clone());
        match r.below(4) {
            0 => mutate(&mut m, &mut r),
            1 => mutate(&mut st, &mut r),
            2 => mutate(&mut env, &mut r),
            _ => {}
        }
        if env["payload"].is_string() && r.chance(90) {
            env["payload"] = b64.encode(st.to_string()).into();
        }
        let mut env_bytes = env.to_string().into_bytes();
        if r.chance(10) {
            let cut = r.below(env_bytes.len());
            env_bytes.truncate(cut);
        }
        if r.chance(80) && m["evidence"].is_object() {
            m["evidence"]["sha256"] = sha256_bytes(&env_bytes).into();
        }
        let mut m_bytes = m.to_string().into_bytes();
        if r.chance(5) {
            let i = r.below(m_bytes.len());
            m_bytes[i] ^= 0x80;
        }
        std::fs::write(&env_path, &env_bytes).unwrap();
        std::fs::write(&manifest_path, &m_bytes).unwrap();
        let f = run_capped(
            &["verify", prod.to_str().unwrap(), "--unsigned"],
            &[],
            Duration::from_secs(20),
            1024,
        );
        ended_well(&f, &format!("case {case}"));
        *codes.entry(f.code).or_insert(0) += 1;
    }
    eprintln!("verify exit codes over {} cases: {codes:?}", cases());
    assert!(
        codes.len() > 1,
        "the mutations reached more than one outcome"
    );
}

/// A random answer for a registry request: the honest one, cut, random, with a lying length,
/// another status, endless, or (rarely) none.
fn fuzzed_answer(r: &mut Rng, honest: Answer) -> Answer {
    let honest_body = match &honest {
        Answer::Full { body, .. } => body.clone(),
        _ => Vec::new(),
    };
    let statuses = [
        200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 408, 429, 500, 503, 599,
    ];
    match r.below(10) {
        0..=3 => honest,
        4 => Answer::Full {
            status: 200,
            headers: vec![],
            body: honest_body[..r.below(honest_body.len() + 1)].to_vec(),
        },
        5 => Answer::Full {
            status: 200,
            headers: vec![],
            body: (0..r.below(4096)).map(|_| r.next() as u8).collect(),
        },
        6 => Answer::Full {
            status: statuses[r.below(statuses.len())],
            headers: vec![(
                "WWW-Authenticate".into(),
                [
                    "Basic realm=\"r\"",
                    "Bearer realm=\"http://127.0.0.1:1/t\"",
                    "Bearer",
                    "x",
                ][r.below(4)]
                .into(),
            )],
            body: json!({"errors": [{"code": "DENIED", "message": "é".repeat(r.below(500))}]})
                .to_string()
                .into_bytes(),
        },
        7 => {
            let mut v: Value = serde_json::from_slice(&honest_body).unwrap_or(json!({}));
            mutate(&mut v, r);
            Answer::Full {
                status: 200,
                headers: vec![],
                body: v.to_string().into_bytes(),
            }
        }
        8 => Answer::Endless {
            status: 200,
            headers: if r.chance(50) {
                vec![("Content-Length".into(), (r.next() >> 8).to_string())]
            } else {
                vec![]
            },
        },
        _ if r.chance(15) => Answer::Silent,
        _ => honest,
    }
}

#[test]
fn verify_survives_fuzzed_registry_answers() {
    let rng = Arc::new(Mutex::new(Rng(seed() ^ 0xa5a5)));
    let slot: Arc<std::sync::OnceLock<Artifact>> = Arc::new(std::sync::OnceLock::new());
    let (s, g) = (slot.clone(), rng.clone());
    let server = Server::start(move |req| {
        let honest = s.get().expect("artifact set").answer(req);
        fuzzed_answer(&mut g.lock().unwrap(), honest)
    });
    let _ = slot.set(Artifact::new(&server.addr));
    let reference = format!("oci://{}/{REPO}:v1", server.addr);
    let docker = tempfile::tempdir().unwrap();
    let mut codes = std::collections::BTreeMap::new();
    for case in 0..cases() {
        let f = run_capped(
            &["verify", &reference, "--unsigned", "--plain-http"],
            &[
                ("KOMPRESS_REGISTRY_TIMEOUT_SECONDS", "1"),
                ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
            ],
            Duration::from_secs(30),
            1024,
        );
        ended_well(&f, &format!("case {case}"));
        *codes.entry(f.code).or_insert(0) += 1;
    }
    eprintln!(
        "verify exit codes over {} registry cases: {codes:?}",
        cases()
    );
    assert!(
        codes.len() > 2,
        "the answers reached several outcomes: {codes:?}"
    );
}
