//! Passes on real models, checked with ONNX Runtime.

mod support;

use kompress::api::{PassSpec, PruneScope, PruneSpec, QuantMode, QuantizeSpec};

use kompress::onnx::{self, SaveOptions, TensorData};
use kompress::passes::Pass;
use support::*;

fn quantize(mode: QuantMode, per_channel: bool) -> Pass {
    Pass::from_spec(&PassSpec::Quantize(QuantizeSpec {
        mode,
        per_channel: Some(per_channel),
        ..Default::default()
    }))
}

fn prune(spec: PruneSpec) -> Pass {
    Pass::from_spec(&PassSpec::Prune(spec))
}

/// Applies passes to a fixture MLP, saves it, and returns (fp32 outputs, candidate outputs).
fn run(passes: &[Pass], widths: &[usize]) -> (onnx::Model, Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&mlp(widths, 11), &src);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 64, widths[0], *widths.last().unwrap());
    let mut m = onnx::load(&src).unwrap();
    for p in passes {
        p.apply(&mut m).unwrap();
    }
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let (base, cand) = (outputs(&src, &data, 32), outputs(&out, &data, 32));
    (onnx::load(&out).unwrap(), base, cand)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    kompress::eval::metrics::closeness(a, b, a.len()).0
}

#[test]
fn dynamic_quantization_emits_integer_ops_ort_runs_close_to_fp32() {
    let (m, base, cand) = run(&[quantize(QuantMode::Dynamic, false)], &[64, 256, 128, 10]);
    let ops = ops(&m);
    assert_eq!(
        ops.iter().filter(|o| *o == "MatMulInteger").count(),
        3,
        "{ops:?}"
    );
    assert!(ops.contains(&"DynamicQuantizeLinear".to_string()));
    assert!(!ops.contains(&"MatMul".to_string()));
    assert!(
        m.graph()
            .initializer
            .iter()
            .all(|t| t.dtype() != onnx::DataType::Float || t.numel() <= 256),
        "float weights left behind"
    );
    assert!(cosine(&base, &cand) > 0.999, "cos {}", cosine(&base, &cand));
}

#[test]
fn per_channel_has_one_scale_per_output_column() {
    let (m, base, cand) = run(&[quantize(QuantMode::Dynamic, true)], &[64, 256, 10]);
    let scale = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("W0_scale"))
        .unwrap();
    assert_eq!(scale.dims, vec![256]);
    assert!(cosine(&base, &cand) > 0.999);
}

#[test]
fn weight_only_mode_dequantizes_in_front_of_float_matmul() {
    let (m, base, cand) = run(&[quantize(QuantMode::WeightOnly, true)], &[64, 128, 10]);
    let ops = ops(&m);
    assert_eq!(ops.iter().filter(|o| *o == "DequantizeLinear").count(), 2);
    assert_eq!(ops.iter().filter(|o| *o == "MatMul").count(), 2);
    assert!(cosine(&base, &cand) > 0.999);
}

#[test]
fn excluded_nodes_and_small_tensors_stay_float() {
    let p = Pass::from_spec(&PassSpec::Quantize(QuantizeSpec {
        exclude_nodes: vec!["MatMul_0".into()],
        min_elements: Some(2000),
        ..Default::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_model(&mlp(&[64, 128, 10], 5), &src);
    let mut m = onnx::load(&src).unwrap();
    let report = p.apply(&mut m).unwrap();
    // MatMul_0 excluded; MatMul_1 (1280 elements) below minElements: nothing quantized.
    assert!(report.tensors.is_empty(), "{:?}", report.tensors);
    assert_eq!(report.skipped.len(), 2);
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.node == "MatMul_0" && s.reason.contains("excludeNodes"))
    );
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.reason.contains("minElements"))
    );
}

#[test]
fn nan_weights_are_a_clear_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = mlp(&[64, 128, 10], 6);
    edit_first_weight(&mut model, |v| v[17] = f32::NAN);
    let mut m = write_and_load(&model, &dir.path().join("m.onnx"));
    let e = quantize(QuantMode::Dynamic, false)
        .apply(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("W0") && e.contains("NaN") && e.contains("element 17"),
        "{e}"
    );
}

#[test]
fn magnitude_pruning_hits_the_exact_sparsity_per_tensor() {
    let p = prune(PruneSpec {
        sparsity: Some(0.5),
        ..Default::default()
    });
    let (m, _, _) = run(&[p], &[64, 256, 10]);
    for name in ["W0", "W1"] {
        let t = m
            .graph()
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap();
        let v = onnx::tensor_f32_values(t).unwrap();
        let zeros = v.iter().filter(|x| **x == 0.0).count();
        assert_eq!(zeros, v.len() / 2, "{name}");
    }
}

#[test]
fn global_pruning_reaches_the_target_across_tensors() {
    let p = prune(PruneSpec {
        sparsity: Some(0.7),
        scope: PruneScope::Global,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_model(&mlp(&[64, 256, 128], 8), &src);
    let mut m = onnx::load(&src).unwrap();
    let r = p.apply(&mut m).unwrap();
    assert_eq!(
        r.tensors.len(),
        2,
        "both weights are pruned (an empty list would compare 0 == 0)"
    );
    let total: u64 = r.tensors.iter().map(|t| t.elements).sum();
    assert!(total > 0);
    let zeros: f64 = r
        .tensors
        .iter()
        .map(|t| t.sparsity * t.elements as f64)
        .sum();
    assert_eq!(zeros.round() as u64, (0.7 * total as f64).round() as u64);
}

#[test]
fn two_four_pattern_holds_in_every_group_after_quantization_too() {
    let passes = [
        prune(PruneSpec {
            pattern: Some("2:4".into()),
            ..Default::default()
        }),
        quantize(QuantMode::Dynamic, true),
    ];
    let (m, base, cand) = run(&passes, &[64, 256, 10]);
    let t = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("W0_quantized"))
        .unwrap();
    let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
    let raw = t.raw_data.as_ref().unwrap();
    for col in 0..n {
        for g in (0..k).step_by(4) {
            let nz = (g..g + 4).filter(|r| raw[r * n + col] != 0).count();
            assert!(nz <= 2, "column {col} group {g} has {nz} nonzeros");
        }
    }
    // pruning half the weights changes outputs, but they stay correlated
    assert!(cosine(&base, &cand) > 0.5);
}

#[test]
fn pruning_an_already_sparse_model_keeps_existing_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = mlp(&[64, 128, 10], 9);
    // 50% zeros already
    edit_first_weight(&mut model, |v| {
        v.iter_mut().step_by(2).for_each(|x| *x = 0.0)
    });
    let mut m = write_and_load(&model, &dir.path().join("m.onnx"));
    let r = prune(PruneSpec {
        sparsity: Some(0.3),
        ..Default::default()
    })
    .apply(&mut m)
    .unwrap();
    let w0 = r.tensors.iter().find(|t| t.tensor == "W0").unwrap();
    assert_eq!(
        w0.sparsity, 0.5,
        "already sparser than the target: untouched"
    );
}

/// Quantizes a generated embedding model (table [v, d], ids [n, seq]) and runs both in ORT.
/// Returns (candidate model, report, fp32 table, ids, fp32 outputs, candidate outputs,
/// fp32 file bytes, candidate file bytes).
#[allow(clippy::type_complexity)]
fn run_embedding(
    pass: &Pass,
    v: usize,
    d: usize,
) -> (
    onnx::Model,
    kompress::passes::PassReport,
    Vec<f32>,
    Vec<i64>,
    Vec<f32>,
    Vec<f32>,
    u64,
    u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    let model = embedding(v, d, 0, false, 21);
    let table = onnx::tensor_f32_values(&model.graph.as_ref().unwrap().initializer[0]).unwrap();
    write_model(&model, &src);
    let data = dir.path().join("data.npz");
    let ids = embedding_dataset(&data, 16, 12, v);
    let mut m = onnx::load(&src).unwrap();
    let report = pass.apply(&mut m).unwrap();
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let (base, cand) = (outputs(&src, &data, 32), outputs(&out, &data, 32));
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let (a, b) = (size(&src), size(&out));
    (
        onnx::load(&out).unwrap(),
        report,
        table,
        ids,
        base,
        cand,
        a,
        b,
    )
}

/// |cand - base| <= scale(row)/2 for every gathered element (plus float rounding).
fn assert_within_half_step(
    base: &[f32],
    cand: &[f32],
    ids: &[i64],
    d: usize,
    scale: impl Fn(usize) -> f32,
) -> f32 {
    assert_eq!(base.len(), ids.len() * d);
    assert_eq!(cand.len(), base.len());
    let mut worst = 0f32;
    for (i, (b, c)) in base.iter().zip(cand).enumerate() {
        let row = ids[i / d] as usize;
        let bound = scale(row) / 2.0 * (1.0 + 1e-4) + 1e-7;
        let err = (b - c).abs();
        assert!(
            err <= bound,
            "element {i} (row {row}): |{b} - {c}| = {err} > {bound}"
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn embedding_table_per_tensor_int8_runs_in_ort_within_half_a_step() {
    let (v, d) = (1000, 64);
    let (m, report, table, ids, base, cand, before, after) =
        run_embedding(&quantize(QuantMode::Dynamic, false), v, d);
    let ops = ops(&m);
    assert_eq!(ops, ["Gather", "DequantizeLinear"], "{ops:?}");
    let t = &report.tensors[0];
    assert_eq!(
        (t.op.as_str(), t.elements, t.scales),
        ("Gather", 64_000, Some(1))
    );
    // Always 8-bit: reduceRange (on by default in dynamic mode) does not apply to lookups.
    let scale = table.iter().fold(0f32, |a, x| a.max(x.abs())) / 127.0;
    assert!(t.max_abs_error.unwrap() <= scale / 2.0 * 1.0001);
    let worst = assert_within_half_step(&base, &cand, &ids, d, |_| scale);
    assert!(worst > 0.0, "outputs identical: nothing was quantized?");
    let ratio = before as f64 / after as f64;
    assert!(ratio > 3.8, "{before} -> {after} bytes: {ratio:.2}x");
    eprintln!(
        "per-tensor: max |err| {worst:.3e} (bound {:.3e}), {before} -> {after} bytes ({ratio:.2}x)",
        scale / 2.0
    );
}

#[test]
fn embedding_table_per_row_has_v_scales_and_each_row_within_half_its_step() {
    let (v, d) = (1000, 64);
    for mode in [QuantMode::Dynamic, QuantMode::WeightOnly] {
        let (m, report, table, ids, base, cand, before, after) =
            run_embedding(&quantize(mode, true), v, d);
        let ops = ops(&m);
        assert_eq!(ops, ["Gather", "Cast", "Gather", "Mul"], "{ops:?}");
        let scales = m
            .graph()
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some("table_scale"))
            .unwrap();
        assert_eq!(scales.dims, vec![v as i64, 1]);
        assert_eq!(report.tensors[0].scales, Some(v));
        let q = m
            .graph()
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some("table_quantized"))
            .unwrap();
        assert_eq!(q.dtype(), onnx::DataType::Int8);
        assert_eq!(q.dims, vec![v as i64, d as i64]);
        let row_scale = |r: usize| {
            table[r * d..(r + 1) * d]
                .iter()
                .fold(0f32, |a, x| a.max(x.abs()))
                / 127.0
        };
        let worst = assert_within_half_step(&base, &cand, &ids, d, row_scale);
        assert!(worst > 0.0);
        let ratio = before as f64 / after as f64;
        assert!(ratio > 3.6, "{before} -> {after} bytes: {ratio:.2}x");
        eprintln!(
            "per-row ({mode:?}): max |err| {worst:.3e}, {before} -> {after} bytes ({ratio:.2}x)"
        );
    }
}

#[test]
fn gather_on_axis_1_or_on_a_computed_table_is_skipped_with_a_reason() {
    for (axis, computed, reason) in [
        (1, false, "axis=1"),
        (0, true, "computed, not an initializer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.onnx");
        write_model(&embedding(100, 32, axis, computed, 3), &src);
        let mut m = onnx::load(&src).unwrap();
        let before = m.proto.clone();
        let report = quantize(QuantMode::Dynamic, true).apply(&mut m).unwrap();
        assert!(report.tensors.is_empty(), "{:?}", report.tensors);
        assert!(
            report
                .skipped
                .iter()
                .any(|s| s.node == "embed" && s.reason.contains(reason)),
            "{:?}",
            report.skipped
        );
        assert_eq!(
            m.proto, before,
            "a skipped Gather leaves the model unchanged"
        );
    }
}

/// Whether this CPU's int8 dot products cannot saturate int16 (VNNI on x86, any ARM): on
/// x86 without it ONNX Runtime multiplies with `vpmaddubsw`. Under `hack/avx2/as-avx2` the
/// masked CPUID says no, to this check and to ONNX Runtime alike.
fn integer_dot_exact() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    true
}

/// The candidate's outputs on activations that quantize to 255 against the exact integer
/// product of its stored codes: the largest relative difference over the outputs.
fn saturation_error(per_channel: bool, reduce_range: Option<bool>) -> f64 {
    let (k, n) = (96, 24);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    let mut model = mlp(&[k, n], 5);
    // Heavy-tailed weights, and large same-sign neighbours along K at both alignments
    // (rows 0-1, 3-4) and around one column's largest weight (rows 9-11).
    edit_first_weight(&mut model, |w| {
        for v in w.iter_mut() {
            *v = *v * *v * *v;
        }
        for (r, c, v) in [(0, 0, 1.0), (1, 0, 0.9), (3, 1, -1.0), (4, 1, -0.95)] {
            w[r * n + c] = v;
        }
        for (r, v) in [(9, 0.6), (10, 0.7), (11, 0.65)] {
            w[r * n + 2] = v;
        }
    });
    write_model(&model, &src);
    // Every input 1.0: DynamicQuantizeLinear's range is [0, 1], every code 255.
    let data = dir.path().join("data.npz");
    let ones = vec![1f32; 4 * k];
    write_npz(&data, &[("input", f32_array(&[4, k], &ones))]);
    let mut m = onnx::load(&src).unwrap();
    Pass::from_spec(&PassSpec::Quantize(QuantizeSpec {
        mode: QuantMode::Dynamic,
        per_channel: Some(per_channel),
        reduce_range,
        ..Default::default()
    }))
    .apply(&mut m)
    .unwrap();
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let got = outputs(&out, &data, 4);
    let q = initializer(&m, "W0_quantized").raw_data.clone().unwrap();
    let scales = onnx::tensor_f32_values(initializer(&m, "W0_scale")).unwrap();
    let bias = onnx::tensor_f32_values(initializer(&m, "B0")).unwrap();
    let mut worst = 0f64;
    for (i, y) in got.iter().enumerate() {
        let c = i % n;
        let dot: i64 = (0..k).map(|r| 255 * i64::from(q[r * n + c] as i8)).sum();
        let s = scales[if per_channel { c } else { 0 }];
        let exact = dot as f64 * f64::from(s) / 255.0 + f64::from(bias[c]);
        worst = worst.max((f64::from(*y) - exact).abs() / exact.abs().max(1e-3));
    }
    worst
}

#[test]
fn default_int8_weights_are_exact_under_this_cpus_integer_kernel() {
    let exact = integer_dot_exact();
    for per_channel in [false, true] {
        // The default (pair-bounded 8-bit, target auto) and reduceRange: true never
        // saturate, whatever the CPU.
        for reduce_range in [None, Some(true)] {
            let err = saturation_error(per_channel, reduce_range);
            assert!(
                err < 1e-4,
                "perChannel {per_channel}, reduceRange {reduce_range:?}: relative error {err:.3e}"
            );
        }
        // Plain 8-bit codes do where the CPU lacks VNNI: the check has teeth there.
        let err = saturation_error(per_channel, Some(false));
        eprintln!("perChannel {per_channel}: 8-bit codes off by {err:.3e} (exact CPU: {exact})");
        assert_eq!(err < 1e-4, exact, "8-bit codes: relative error {err:.3e}");
    }
}
