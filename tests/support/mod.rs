//! Fixtures the tests build themselves: small ONNX MLPs, npz files, job manifests.
#![allow(dead_code)]

pub mod cluster;
mod data;
pub mod hostile;
mod models;
mod process;
pub mod registry;
mod s3;

#[allow(unused_imports)]
pub use data::*;
#[allow(unused_imports)]
pub use models::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use s3::*;

use kompress::onnx::{f32_tensor, pb};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kompress"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluation settings of the pass tests: `batch_size` rows a batch, one thread, one timed
/// run without warmup, no labels, every input fed by rows.
pub fn eval_cfg(batch_size: usize) -> kompress::eval::EvalConfig {
    kompress::eval::EvalConfig {
        batch_size,
        threads: Some(1),
        output: None,
        labels: None,
        labels_field: kompress::eval::labels::FIELD,
        limit: None,
        latency_batch: 1,
        warmup: 0,
        iterations: 1,
        inputs: Vec::new(),
        selection: Default::default(),
        task: Default::default(),
        slices: None,
        spill: None,
    }
}

/// A `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`), in bytes; 0 where /proc is missing.
pub fn status_bytes(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .map_or(0, |kib: usize| kib * 1024)
}

/// A binary hack/tools/build made (promtool, oras, registry, crane, kstatus): under
/// `KOMPRESS_TOOLS_BIN`, which `make test` sets.
pub fn tools_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KOMPRESS_TOOLS_BIN").unwrap_or_else(|| {
        panic!(
            "KOMPRESS_TOOLS_BIN is unset: run via `make test`, or export KOMPRESS_TOOLS_BIN=$(hack/tools/build | tail -n1)"
        )
    });
    let p = PathBuf::from(dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: run hack/tools/build",
        p.display()
    );
    p
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM), made by openssl:
/// `<dir>/<name>.pem` and `<dir>/<name>.pub`; `alg` is `ed25519` or `p256`.
pub fn keypair(dir: &Path, name: &str, alg: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub")),
    );
    let key_s = key.to_str().unwrap();
    let generate: Vec<&str> = match alg {
        "ed25519" => vec!["genpkey", "-algorithm", "ed25519", "-out", key_s],
        "p256" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key_s,
        ],
        other => panic!("no key type {other}"),
    };
    openssl(&generate);
    openssl(&[
        "pkey",
        "-in",
        key_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

/// Runs openssl (the test control plane needs it too); panics with its stderr on failure.
pub fn openssl(args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The check named `name` in a run's JSON report (`-o json`); panics listing the checks when
/// there is none.
pub fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["result"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {}", report["result"]["checks"]))
}

/// The start of a pure-Python custom evaluator (no numpy): loads the original's and the
/// candidate's `.npz` files kompress writes (`o`, `c`), the compared output's shape and
/// values (`shape`, `ov`, `cv`), and their top-1 agreement (`agree`); a test's evaluator
/// appends what it prints.
pub const NPZ_AGREEMENT_PY: &str = r#"import ast, json, os, struct, zipfile

def load(path):
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            b = z.read(name)
            hl = struct.unpack('<H', b[8:10])[0]
            h = ast.literal_eval(b[10:10 + hl].decode())
            data = b[10 + hl:]
            fmt = {'<f4': 'f', '<i8': 'q'}[h['descr']]
            n = len(data) // struct.calcsize(fmt)
            out[name[:-4]] = (h['shape'], struct.unpack('<%d%s' % (n, fmt), data))
    return out

o = load(os.environ['KOMPRESS_ORIGINAL'])
c = load(os.environ['KOMPRESS_CANDIDATE'])
shape, ov = o['output']
_, cv = c['output']
n = shape[0]
k = len(ov) // n
top = lambda v, i: max(range(k), key=lambda j: v[i * k + j])
agree = sum(top(ov, i) == top(cv, i) for i in range(n)) / n
"#;
