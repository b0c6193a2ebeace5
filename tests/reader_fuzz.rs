//! Property-based fuzzing of the two other readers of untrusted bytes: the CompressionJob
//! manifest reader (`api::manifest::parse_job`, then `validate`) and the ONNX model reader
//! (`onnx::load`, which also checks every tensor against its dims). Inputs: random text,
//! valid manifests and the bundled model with random edits (bytes flipped, cut, spliced,
//! repeated). Properties: nothing panics, and each case ends quickly. Fixed case counts keep
//! the run to seconds in CI (KOMPRESS_FUZZ_SCALE multiplies them for longer runs).

mod support;

use kompress::api::manifest::parse_job;
use kompress::api::validate;
use kompress::onnx;
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn cases(n: u32) -> u32 {
    n * std::env::var("KOMPRESS_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

const JOB: &str = "apiVersion: kompress.dev/v1alpha1
kind: CompressionJob
metadata: {name: fuzz, namespace: ml}
spec:
  model: {uri: s3://m/model.onnx, sha256: 0000000000000000000000000000000000000000000000000000000000000000}
  dataset: {uri: d.npz, labels: labels, limit: 100}
  storage: {endpoint: http://127.0.0.1:9000, allowHttp: true}
  passes:
    - prune: {pattern: '2:4', ops: [MatMul]}
    - quantize: {mode: dynamic, perChannel: true, reduceRange: false, excludeNodes: [a]}
  thresholds: {maxAccuracyDrop: 0.01, minAgreement: 0.98, minCompressionRatio: 3}
  evaluation: {batchSize: 16, threads: 2, latency: {batchSize: 1, warmup: 2, iterations: 5}}
  output: {uri: out, promoteTo: out/prod}
";

/// Fragments YAML mutations splice in: structure, numbers at the edges, odd scalars.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ":",
    "- ",
    "\n",
    "  ",
    "'",
    "\"",
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!quantize ",
    "~",
    "null",
    "4294967296",
    "-1",
    "1e400",
    ".nan",
    "99999999999999999999",
    "0x7fffffff",
    "'1:99999999999999'",
    "? ",
    "|\n",
    ">-\n",
    "#",
    "\t",
    "\u{feff}",
    "é",
    "\\u0000",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(5000), ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics_the_manifest_reader(text in "\\PC{0,400}") {
        let t = Instant::now();
        if let Ok(job) = parse_job(&text, "fuzz.yaml") {
            let _ = validate(&job.spec);
        }
        prop_assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn edited_manifests_never_panic_the_reader_or_validation(
        edits in prop::collection::vec((0usize..JOB.len(), 0usize..FRAGMENTS.len(), 0usize..8), 1..6)
    ) {
        let mut text = JOB.to_string();
        for (at, frag, cut) in edits {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(at..end, FRAGMENTS[frag]);
        }
        let t = Instant::now();
        if let Ok(job) = parse_job(&text, "fuzz.yaml") {
            let _ = validate(&job.spec);
        }
        prop_assert!(t.elapsed() < Duration::from_secs(2), "{text}");
    }
}

fn digits() -> Vec<u8> {
    std::fs::read(support::repo().join("examples/digits/model.onnx")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1000), ..ProptestConfig::default() })]

    /// Protobuf fields are length-delimited: edits near the start hit the graph's structure,
    /// tensor dims and data types (the bundled model keeps its weights after the nodes).
    #[test]
    fn edited_models_never_panic_the_onnx_reader(
        edits in prop::collection::vec((0usize..4096, any::<u8>(), 0u8..4), 1..8)
    ) {
        let mut bytes = digits();
        for (at, value, how) in edits {
            let at = at.min(bytes.len() - 1);
            match how {
                0 => bytes[at] = value,
                1 => bytes[at] ^= 1 << (value % 8),
                2 => bytes.truncate(at.max(1)),
                _ => {
                    let chunk: Vec<u8> = bytes[at..(at + 16).min(bytes.len())].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let t = Instant::now();
        if let Ok(m) = onnx::load(&path) {
            // What loads can be inspected and listed without panicking too.
            let _ = onnx::inspect(&m).to_string();
            let _ = onnx::external_locations(&path, &path);
        }
        prop_assert!(t.elapsed() < Duration::from_secs(2));
    }
}
