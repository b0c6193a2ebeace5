//! The passes that reshape the graph rather than the numbers: low-rank factorisation and
//! ONNX Runtime's offline optimisation, each checked by running the result in ONNX Runtime.

mod support;

use kompress::api::{LowRankSpec, OptimizeLevel, OptimizeSpec, PassSpec, QuantizeSpec};

use kompress::onnx::{self, SaveOptions, TensorData, f32_tensor, pb};
use kompress::passes::{Pass, PassReport};
use support::*;

/// Applies `passes` to `model`, saves both, and returns (candidate, reports, fp32 outputs,
/// candidate outputs) on 64 generated samples.
fn run(
    model: &pb::ModelProto,
    passes: &[PassSpec],
    din: usize,
    dout: usize,
) -> (onnx::Model, Vec<PassReport>, Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(model, &src);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 64, din, dout);
    let mut m = onnx::load(&src).unwrap();
    let reports = passes
        .iter()
        .map(|p| Pass::from_spec(p).apply(&mut m).unwrap())
        .collect();
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let (a, b) = (outputs(&src, &data, 32), outputs(&out, &data, 32));
    (onnx::load(&out).unwrap(), reports, a, b)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn weight_elements(m: &onnx::Model) -> usize {
    m.graph()
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| t.numel())
        .sum()
}

/// A `rows x cols` row-major matrix of rank (at most) `r`: A [rows, r] times B [r, cols], both
/// from the seeded generator (`seeds` of A and B).
fn rank_r(rows: usize, cols: usize, r: usize, seeds: (u64, u64)) -> Vec<f32> {
    let a = lcg(rows * r, seeds.0);
    let b = lcg(r * cols, seeds.1);
    let mut w = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            w[i * cols + j] = (0..r).map(|k| a[i * r + k] * b[k * cols + j]).sum();
        }
    }
    w
}

/// An MLP whose first weight (128x96) is exactly rank 4.
fn mlp_with_rank4_first_layer() -> pb::ModelProto {
    let (din, dout, r) = (128usize, 96usize, 4usize);
    let mut m = mlp(&[din, dout, 10], 3);
    let w = rank_r(din, dout, r, (41, 42));
    let g = m.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("W0"))
        .unwrap();
    *t = f32_tensor("W0", &[din as i64, dout as i64], &w);
    m
}

fn low_rank(energy: Option<f64>, ratio: Option<f64>, min_elements: u64) -> PassSpec {
    PassSpec::LowRank(LowRankSpec {
        energy,
        ratio,
        min_elements: Some(min_elements),
        ..Default::default()
    })
}

#[test]
fn an_exactly_low_rank_weight_is_factorised_at_its_rank_and_ort_matches_fp32() {
    let (m, reports, base, cand) = run(
        &mlp_with_rank4_first_layer(),
        &[low_rank(Some(0.9999), None, 512)],
        128,
        10,
    );
    let r = &reports[0];
    assert_eq!(r.tensors.len(), 1, "{r:#?}");
    assert_eq!(r.tensors[0].tensor, "W0");
    // The 96x10 weight needs (nearly) full rank for 99.99%: skipped with the break-even reason.
    assert!(
        r.skipped
            .iter()
            .any(|s| s.reason.contains("smaller only below rank")),
        "{r:#?}"
    );
    let a = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("W0_lowrank_a"))
        .unwrap();
    let b = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("W0_lowrank_b"))
        .unwrap();
    assert_eq!(
        (a.dims.clone(), b.dims.clone()),
        (vec![128, 4], vec![4, 96])
    );
    assert_eq!(ops(&m).iter().filter(|o| *o == "MatMul").count(), 3);
    let d = max_abs_diff(&base, &cand);
    assert!(d < 1e-4, "max |fp32 - low rank| = {d}");
}

#[test]
fn ratio_rule_shrinks_a_full_rank_weight_and_quantize_then_compresses_both_factors() {
    let before = mlp(&[256, 256, 10], 5);
    let (m, reports, base, cand) = run(
        &before,
        &[
            low_rank(None, Some(0.5), 4096),
            PassSpec::Quantize(QuantizeSpec::default()),
        ],
        256,
        10,
    );
    // 256x256 at half the elements: rank floor(0.5 * 65536 / 512) = 64.
    let lr = &reports[0];
    assert_eq!(lr.tensors.len(), 1, "{lr:#?}");
    let q = &reports[1];
    let quantized: Vec<&str> = q.tensors.iter().map(|t| t.tensor.as_str()).collect();
    assert!(
        quantized.contains(&"W0_lowrank_a") && quantized.contains(&"W0_lowrank_b"),
        "{quantized:?}"
    );
    assert_eq!(
        ops(&m).iter().filter(|o| *o == "MatMulInteger").count(),
        3,
        "{:?}",
        ops(&m)
    );
    // A random (full-rank) weight at half its rank loses information: the outputs move, but
    // they still correlate with fp32, and every value is finite.
    assert!(cand.iter().all(|v| v.is_finite()));
    let dot: f64 = base.iter().zip(&cand).map(|(a, b)| (*a * *b) as f64).sum();
    let na: f64 = base.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = cand.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    assert!(dot / (na * nb) > 0.5, "cosine {}", dot / (na * nb));
    let dims: Vec<Vec<i64>> = m
        .graph()
        .initializer
        .iter()
        .filter(|t| {
            t.name
                .as_deref()
                .is_some_and(|n| n.starts_with("W0_lowrank"))
        })
        .map(|t| t.dims.clone())
        .collect();
    assert!(
        dims.contains(&vec![256, 64]) && dims.contains(&vec![64, 256]),
        "{dims:?}"
    );
}

#[test]
fn gemm_with_trans_b_and_bias_keeps_its_semantics() {
    // Gemm(X, Wᵀ, C, transB=1, alpha=0.5, beta=2) with a rank-3 W [N=48, K=64].
    let (k, n, r) = (64usize, 48usize, 3usize);
    let w = rank_r(n, k, r, (7, 8));
    let model = model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("gemm".into()),
            node: vec![onnx::node(
                "Gemm",
                "gemm".into(),
                vec!["input".into(), "W".into(), "C".into()],
                vec!["logits".into()],
                vec![
                    onnx::attr_int("transB", 1),
                    onnx::attr_float("alpha", 0.5),
                    onnx::attr_float("beta", 2.0),
                ],
            )],
            initializer: vec![
                f32_tensor("W", &[n as i64, k as i64], &w),
                f32_tensor("C", &[n as i64], &lcg(n, 9)),
            ],
            input: vec![value_info("input", &[None, Some(k as i64)])],
            output: vec![value_info("logits", &[None, Some(n as i64)])],
            ..Default::default()
        },
    );
    let (m, reports, base, cand) = run(&model, &[low_rank(Some(0.99999), None, 1024)], k, n);
    assert_eq!(reports[0].tensors.len(), 1, "{:#?}", reports[0]);
    assert_eq!(ops(&m), ["MatMul", "Gemm"]);
    assert!(weight_elements(&m) < n * k);
    let d = max_abs_diff(&base, &cand);
    assert!(d < 1e-4, "max |fp32 - low rank| = {d}");
}

#[test]
fn ort_basic_optimisation_removes_redundant_nodes_and_keeps_the_outputs() {
    // The MLP with an Identity in front of every MatMul: basic optimisation removes them.
    let mut model = mlp(&[32, 64, 10], 4);
    let g = model.graph.as_mut().unwrap();
    let mut nodes = Vec::new();
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        if n.op_type.as_deref() == Some("MatMul") {
            let id = format!("id{i}");
            nodes.push(onnx::node(
                "Identity",
                format!("Identity_{i}"),
                vec![n.input[0].clone()],
                vec![id.clone()],
                vec![],
            ));
            n.input[0] = id;
        }
        nodes.push(n);
    }
    g.node = nodes;
    let (m, reports, base, cand) = run(
        &model,
        &[PassSpec::Optimize(OptimizeSpec {
            level: OptimizeLevel::Basic,
        })],
        32,
        10,
    );
    // The Identities go, and ONNX Runtime also fuses each MatMul + Add into a Gemm.
    assert!(!ops(&m).contains(&"Identity".to_string()), "{:?}", ops(&m));
    assert!(
        reports[0].description.contains("7 -> 3 nodes"),
        "{}",
        reports[0].description
    );
    let d = max_abs_diff(&base, &cand);
    assert!(d < 1e-5, "max |fp32 - optimised| = {d}");
}

#[test]
fn inspect_coverage_counts_the_bytes_each_pass_would_touch() {
    // An embedding table [500, 64] (128 KB) read by Gather, then whatever the fixture adds.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    write_model(&embedding(500, 64, 0, false, 3), &p);
    let m = onnx::load(&p).unwrap();
    let c = kompress::passes::coverage(&m);
    assert_eq!(c.by_op["Gather"].weights, 1, "{c:#?}");
    assert_eq!(c.by_op["Gather"].bytes, 500 * 64 * 4);
    let int8 = &c.modes[0];
    assert!(int8.ops.contains(&"Gather".to_string()));
    assert!(int8.bytes >= 500 * 64 * 4, "{c:#?}");
    let prune = c.modes.iter().find(|m| m.mode == "prune").unwrap();
    assert_eq!(prune.bytes, int8.bytes - 500 * 64 * 4, "{c:#?}");
    let text = c.to_string();
    assert!(
        text.contains("Gather") && text.contains("0.13 MB"),
        "{text}"
    );
}
