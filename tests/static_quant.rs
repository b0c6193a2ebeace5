//! Static int8 quantization (QDQ) on generated MatMul, Gemm and Conv models: calibrated on
//! sample rows, run by ONNX Runtime close to fp32, and fused by ORT's optimizer into the
//! integer kernels the pass's form is chosen for.

mod support;

use kompress::api::{
    ActivationType, CalibrationMethod, CalibrationMethodSpec, PassSpec, QuantMode, QuantizeSpec,
    TargetCpu,
};
use kompress::eval::{self, Dataset};
use kompress::onnx::{self, SaveOptions, f32_tensor, pb};
use kompress::passes::{Pass, PassReport};
use kompress::pipeline::{Calibration, CalibrationData, calibrate_with};
use std::path::Path;
use support::*;

fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: &[Option<i64>],
) -> pb::ModelProto {
    model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", input)],
            output: vec![pb::ValueInfoProto {
                name: Some("y".into()),
                r#type: value_info("y", &[None]).r#type.map(|mut t| {
                    if let Some(pb::type_proto::Value::TensorType(tt)) = &mut t.value {
                        tt.shape = None;
                    }
                    t
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

fn weights(n: usize, seed: u64, fan_in: usize) -> Vec<f32> {
    let s = (2.0 / fan_in as f32).sqrt();
    lcg(n, seed).iter().map(|v| v * s).collect()
}

fn node(op: &str, i: &[&str], o: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    onnx::node(
        op,
        format!("{op}_{o}"),
        i.iter().map(|s| s.to_string()).collect(),
        vec![o.into()],
        attrs,
    )
}

/// input [N, 64] -> MatMul + Add -> Relu -> MatMul + Add -> y [N, 16]
fn matmul_model() -> (pb::ModelProto, Vec<usize>) {
    let inits = vec![
        f32_tensor("W0", &[64, 128], &weights(64 * 128, 1, 64)),
        f32_tensor("B0", &[128], &lcg(128, 2)),
        f32_tensor("W1", &[128, 16], &weights(128 * 16, 3, 128)),
        f32_tensor("B1", &[16], &lcg(16, 4)),
    ];
    let nodes = vec![
        node("MatMul", &["input", "W0"], "m0", vec![]),
        node("Add", &["m0", "B0"], "a0", vec![]),
        node("Relu", &["a0"], "h0", vec![]),
        node("MatMul", &["h0", "W1"], "m1", vec![]),
        node("Add", &["m1", "B1"], "y", vec![]),
    ];
    (model(nodes, inits, &[None, Some(64)]), vec![64])
}

/// input [N, 4, 64] (3-D, as in transformers) -> MatMul + Add -> y
fn matmul_3d_model() -> (pb::ModelProto, Vec<usize>) {
    let inits = vec![
        f32_tensor("W0", &[64, 96], &weights(64 * 96, 5, 64)),
        f32_tensor("B0", &[96], &lcg(96, 6)),
    ];
    let nodes = vec![
        node("MatMul", &["input", "W0"], "m0", vec![]),
        node("Add", &["m0", "B0"], "y", vec![]),
    ];
    (model(nodes, inits, &[None, Some(4), Some(64)]), vec![4, 64])
}

/// input [N, 64] -> Gemm(transB, bias C, beta) -> Relu -> Gemm(no bias) -> y
fn gemm_model(trans_b: bool, beta: f32) -> (pb::ModelProto, Vec<usize>) {
    let w0 = weights(64 * 128, 7, 64);
    let w0_dims: [i64; 2] = if trans_b { [128, 64] } else { [64, 128] };
    let inits = vec![
        f32_tensor("W0", &w0_dims, &w0),
        f32_tensor("C0", &[128], &lcg(128, 8)),
        f32_tensor("W1", &[128, 16], &weights(128 * 16, 9, 128)),
    ];
    let mut a0 = vec![attr_f("beta", beta)];
    if trans_b {
        a0.push(onnx::attr_int("transB", 1));
    }
    let nodes = vec![
        node("Gemm", &["input", "W0", "C0"], "g0", a0),
        node("Relu", &["g0"], "h0", vec![]),
        node("Gemm", &["h0", "W1"], "y", vec![]),
    ];
    (model(nodes, inits, &[None, Some(64)]), vec![64])
}

/// input [N, 3, 12, 12] -> Conv(16, 3x3, bias) -> Relu -> Conv(16, 3x3, bias) -> y
fn conv_model() -> (pb::ModelProto, Vec<usize>) {
    let inits = vec![
        f32_tensor("K0", &[16, 3, 3, 3], &weights(16 * 27, 10, 27)),
        f32_tensor("C0", &[16], &lcg(16, 11)),
        f32_tensor("K1", &[16, 16, 3, 3], &weights(16 * 144, 12, 144)),
        f32_tensor("C1", &[16], &lcg(16, 13)),
    ];
    let pads = || vec![attr_ints("pads", &[1, 1, 1, 1])];
    let nodes = vec![
        node("Conv", &["input", "K0", "C0"], "c0", pads()),
        node("Relu", &["c0"], "h0", vec![]),
        node("Conv", &["h0", "K1", "C1"], "y", pads()),
    ];
    (
        model(nodes, inits, &[None, Some(3), Some(12), Some(12)]),
        vec![3, 12, 12],
    )
}

fn spec(ops: &[&str], act: ActivationType, symmetric: bool, method: CalibrationMethod) -> PassSpec {
    PassSpec::Quantize(QuantizeSpec {
        mode: QuantMode::Static,
        per_channel: Some(true),
        ops: Some(ops.iter().map(|s| s.to_string()).collect()),
        min_elements: Some(1),
        activation_type: Some(act),
        symmetric_activations: Some(symmetric),
        calibration: Some(CalibrationMethodSpec {
            method,
            samples: Some(48),
            percentile: None,
            batch_size: None,
        }),
        ..Default::default()
    })
}

struct Quantized {
    ops: Vec<String>,
    optimized_ops: Vec<String>,
    /// max |y - y_fp32| / max |y_fp32|, and the cosine similarity, over held-out rows.
    rel_max_err: f64,
    cosine: f64,
    report: kompress::report::PassReport,
    model: onnx::Model,
}

/// ORT's own optimized graph of `path` (what it will actually run).
fn optimized_ops(path: &Path, dir: &Path) -> Vec<String> {
    let out = dir.join("optimized.onnx");
    let env = eval::runtime::environment().unwrap();
    let _sess = ort::session::Session::builder(env)
        .unwrap()
        .with_optimized_model_path(&out)
        .unwrap()
        .commit_from_file(path)
        .unwrap();
    ops(&onnx::load(&out).unwrap())
}

/// Calibrates `passes[0]` on every row of `ds` (as `calibration` data, in `dir`) and applies
/// it to a copy of `original`: (the calibration, the quantized model, the pass's report).
fn calibrate_and_apply(
    original: &onnx::Model,
    passes: &[PassSpec],
    ds: &Dataset,
    dir: &Path,
) -> (Calibration, onnx::Model, PassReport) {
    let c = calibrate_with(
        original,
        passes,
        0,
        TargetCpu::Auto,
        &CalibrationData {
            dataset: ds,
            rows: None,
            uri: "calib.npz".into(),
            sha256: None,
            kind: "calibration",
        },
        &eval_cfg(16),
        &dir.join("calibration"),
        &kompress::ui::Ui::plain(),
    )
    .unwrap();
    let mut p = Pass::for_target(&passes[0], TargetCpu::Auto);
    p.set_calibration(c.calibrated.clone());
    let mut q = original.clone();
    let report = p.apply(&mut q).unwrap();
    (c, q, report)
}

/// Calibrates on 48 rows, quantizes, and compares with fp32 on 64 other rows.
fn quantize(m: &pb::ModelProto, sample: &[usize], pass: &PassSpec) -> Quantized {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(m, &src);
    let per: usize = sample.iter().product();
    let write = |name: &str, n: usize, seed: u64| {
        let p = dir.path().join(name);
        // inputs in [0, 1.5): skewed like image pixels or post-ReLU features
        let x: Vec<f32> = lcg(n * per, seed)
            .iter()
            .map(|v| (v + 1.0) * 0.75)
            .collect();
        let mut shape = vec![n];
        shape.extend(sample);
        write_npz(&p, &[("input", f32_array(&shape, &x))]);
        p
    };
    let calib = write("calib.npz", 48, 100);
    let held_out = write("eval.npz", 64, 200);
    let original = onnx::load(&src).unwrap();
    let ds = Dataset::open(&calib, "calib.npz").unwrap();
    let passes = vec![pass.clone()];
    let (c, q, report) = calibrate_and_apply(&original, &passes, &ds, dir.path());
    assert_eq!(c.report.samples, 48);
    let out = dir.path().join("candidate.onnx");
    onnx::save(&q.proto, &out, &SaveOptions::default()).unwrap();
    let ds = Dataset::open(&held_out, "eval.npz").unwrap();
    let (base, cand) = (outputs_on(&src, &ds, 16), outputs_on(&out, &ds, 16));
    let amax = base.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let err = base
        .iter()
        .zip(&cand)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
    Quantized {
        ops: ops(&q),
        optimized_ops: optimized_ops(&out, dir.path()),
        rel_max_err: err / amax,
        cosine: eval::metrics::closeness(&base, &cand, base.len()).0,
        report,
        model: q,
    }
}

fn count(ops: &[String], op: &str) -> usize {
    ops.iter().filter(|o| *o == op).count()
}

/// The stated bound: outputs within 5% of the fp32 output's largest magnitude, cosine
/// similarity above 0.999. (Percentile and entropy may clip the largest values, where the
/// largest errors then are; on these models they stay inside the same bound.)
fn assert_close(q: &Quantized, method: CalibrationMethod) {
    let (err, cos) = (0.05, 0.999);
    assert!(
        q.rel_max_err < err && q.cosine > cos,
        "{method:?}: max error {:.4} of max|y|, cosine {:.6}",
        q.rel_max_err,
        q.cosine
    );
}

#[test]
fn matmul_with_bias_add_fuses_into_qgemm_and_stays_close_to_fp32() {
    let (m, s) = matmul_model();
    let q = quantize(
        &m,
        &s,
        &spec(
            &["MatMul"],
            ActivationType::Int8,
            false,
            CalibrationMethod::MinMax,
        ),
    );
    assert_eq!(count(&q.ops, "QuantizeLinear"), 2, "{:?}", q.ops);
    assert_eq!(q.report.tensors.len(), 2);
    assert_eq!(
        count(&q.optimized_ops, "QGemm"),
        2,
        "ORT ran {:?}",
        q.optimized_ops
    );
    for float in ["MatMul", "Gemm", "Add"] {
        assert_eq!(count(&q.optimized_ops, float), 0, "{:?}", q.optimized_ops);
    }
    assert_close(&q, CalibrationMethod::MinMax);
}

#[test]
fn matmul_on_3d_inputs_fuses_into_matmul_integer_to_float() {
    let (m, s) = matmul_3d_model();
    let q = quantize(
        &m,
        &s,
        &spec(
            &["MatMul"],
            ActivationType::Uint8,
            false,
            CalibrationMethod::Percentile,
        ),
    );
    assert_eq!(
        count(&q.optimized_ops, "MatMulIntegerToFloat"),
        1,
        "ORT ran {:?}",
        q.optimized_ops
    );
    assert_eq!(count(&q.optimized_ops, "MatMul"), 0);
    assert_close(&q, CalibrationMethod::Percentile);
}

#[test]
fn gemm_with_and_without_trans_b_and_bias_fuses_into_qgemm() {
    for (trans_b, beta) in [(false, 1.0), (true, 1.0), (true, 0.5)] {
        let (m, s) = gemm_model(trans_b, beta);
        let q = quantize(
            &m,
            &s,
            &spec(
                &["Gemm"],
                ActivationType::Int8,
                false,
                CalibrationMethod::MinMax,
            ),
        );
        assert_eq!(
            q.report.tensors.len(),
            2,
            "transB {trans_b}: {:?}",
            q.report
        );
        assert_eq!(
            count(&q.optimized_ops, "QGemm"),
            2,
            "transB {trans_b} beta {beta}: ORT ran {:?}",
            q.optimized_ops
        );
        assert_eq!(count(&q.optimized_ops, "Gemm"), 0);
        assert_close(&q, CalibrationMethod::MinMax);
    }
}

#[test]
fn conv_fuses_into_qlinearconv_in_s8s8_and_u8s8() {
    for (act, symmetric, method) in [
        (ActivationType::Int8, false, CalibrationMethod::MinMax),
        (ActivationType::Uint8, false, CalibrationMethod::Entropy),
        (ActivationType::Int8, true, CalibrationMethod::Percentile),
    ] {
        let (m, s) = conv_model();
        let q = quantize(&m, &s, &spec(&["Conv"], act, symmetric, method));
        assert_eq!(q.report.tensors.len(), 2);
        // input, the first Conv's output, the Relu's output (the second's input), the
        // second's output; with asymmetric activations the Relu goes and its range
        // quantizes the first Conv's output (the zero point at the minimum clamps as it did)
        let pairs = if symmetric { 4 } else { 3 };
        assert_eq!(count(&q.ops, "QuantizeLinear"), pairs, "{:?}", q.ops);
        assert_eq!(count(&q.ops, "Relu"), pairs - 3, "{:?}", q.ops);
        if !symmetric {
            // one Q in front, one DQ behind: the QLinearConvs chain in integers
            assert_eq!(
                count(&q.optimized_ops, "QuantizeLinear")
                    + count(&q.optimized_ops, "DequantizeLinear"),
                2,
                "ORT ran {:?}",
                q.optimized_ops
            );
        }
        assert_eq!(
            count(&q.optimized_ops, "QLinearConv"),
            2,
            "{act:?} symmetric {symmetric}: ORT ran {:?}",
            q.optimized_ops
        );
        assert_eq!(count(&q.optimized_ops, "Conv"), 0);
        assert!(
            q.report
                .description
                .contains(if act == ActivationType::Uint8 {
                    "U8S8"
                } else {
                    "S8S8"
                }),
            "{}",
            q.report.description
        );
        eprintln!(
            "conv {act:?} symmetric {symmetric} {method:?}: max error {:.4}, cosine {:.6}",
            q.rel_max_err, q.cosine
        );
        assert_close(&q, method);
    }
}

#[test]
fn without_calibrated_ranges_the_pass_refuses_with_what_to_do() {
    let (m, _) = matmul_model();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&m, &src);
    let mut model = onnx::load(&src).unwrap();
    let p = Pass::for_target(
        &spec(
            &["MatMul"],
            ActivationType::Int8,
            false,
            CalibrationMethod::MinMax,
        ),
        TargetCpu::Auto,
    );
    let e = p.apply(&mut model).unwrap_err().to_string();
    assert!(e.contains("--calibration"), "{e}");
}

/// On an opset-12 model, per-channel static weights upgrade the graph to opset 13 (the
/// report says so) rather than fall back to one scale per tensor; ORT still fuses it.
#[test]
fn per_channel_on_opset_12_upgrades_the_graph_to_13_and_still_fuses() {
    let (mut m, s) = conv_model();
    m.opset_import[0].version = Some(12);
    let q = quantize(
        &m,
        &s,
        &spec(
            &["Conv"],
            ActivationType::Int8,
            false,
            CalibrationMethod::MinMax,
        ),
    );
    assert!(
        q.report
            .description
            .contains("graph upgraded from opset 12 to 13")
            && q.report.description.contains("per-channel"),
        "{}",
        q.report.description
    );
    assert!(
        q.report.tensors.iter().all(|t| t.scales == Some(16)),
        "{:?}",
        q.report.tensors
    );
    assert_eq!(
        count(&q.optimized_ops, "QLinearConv"),
        2,
        "{:?}",
        q.optimized_ops
    );
    assert_close(&q, CalibrationMethod::MinMax);
}

#[test]
fn embedding_tables_keep_the_int8_row_form_and_the_matmul_after_them_is_static() {
    // ids [N, 8] -> Gather(table [500, 64]) -> emb [N, 8, 64] -> MatMul(W [64, 32]) -> y
    let mut m = embedding(500, 64, 0, false, 3);
    let g = m.graph.as_mut().unwrap();
    g.initializer
        .push(f32_tensor("W", &[64, 32], &weights(64 * 32, 4, 64)));
    g.node.push(node("MatMul", &["emb", "W"], "y", vec![]));
    g.output = vec![pb::ValueInfoProto {
        name: Some("y".into()),
        ..g.output[0].clone()
    }];
    if let Some(pb::type_proto::Value::TensorType(t)) =
        g.output[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&m, &src);
    let calib = dir.path().join("calib.npz");
    embedding_dataset(&calib, 40, 8, 500);
    let ds = Dataset::open(&calib, "calib.npz").unwrap();
    let passes = vec![spec(
        &["Gather", "MatMul"],
        ActivationType::Int8,
        false,
        CalibrationMethod::MinMax,
    )];
    let original = onnx::load(&src).unwrap();
    let (c, q, report) = calibrate_and_apply(&original, &passes, &ds, dir.path());
    assert_eq!(
        c.report.tensors, 1,
        "only the MatMul's input (the Gather's output)"
    );
    assert_eq!(c.report.samples, 40);
    let ops: Vec<&str> = report.tensors.iter().map(|t| t.op.as_str()).collect();
    assert_eq!(ops, ["Gather", "MatMul"], "{report:?}");
    assert!(
        report.description.contains("embedding tables"),
        "{}",
        report.description
    );
    let out = dir.path().join("candidate.onnx");
    onnx::save(&q.proto, &out, &SaveOptions::default()).unwrap();
    let optimized = optimized_ops(&out, dir.path());
    assert_eq!(
        count(&optimized, "MatMulIntegerToFloat"),
        1,
        "{optimized:?}"
    );
    let (base, cand) = (outputs_on(&src, &ds, 16), outputs_on(&out, &ds, 16));
    let cos = eval::metrics::closeness(&base, &cand, base.len()).0;
    assert!(cos > 0.999, "cosine {cos}");
}

#[test]
fn compress_without_calibration_data_says_how_to_give_it() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = matmul_model();
    let src = dir.path().join("model.onnx");
    write_model(&m, &src);
    let job = write_job(
        dir.path(),
        &job_yaml(
            "s",
            &src.display().to_string(),
            "unused.npz",
            "    - quantize:\n        mode: static",
            "    {}",
            dir.path(),
        ),
    );
    let out = dir.path().join("q.onnx");
    let r = run_kompress(
        &[
            "compress",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "-f",
            &job,
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--calibration") && r.stderr.contains("spec.passes[0]"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

/// `--calibration` without a static pass is a mistake the user should hear about, not a flag
/// silently ignored; and a static pass without it names the flag.
#[test]
fn compress_refuses_calibration_data_it_would_not_use_and_asks_for_it_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let data = dir.path().join("calib.npz");
    mlp_dataset(&data, 8, 64, 10);
    let compress = |job: &str, calibration: &[&str]| {
        let mut args = vec![
            "compress",
            "examples/digits/model.onnx",
            out.to_str().unwrap(),
            "-f",
            job,
        ];
        args.extend_from_slice(calibration);
        run_kompress(&args, &[])
    };
    let r = compress(
        "examples/digits-int8.yaml",
        &["--calibration", data.to_str().unwrap()],
    );
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(
        r.stderr.contains("--calibration") && r.stderr.contains("mode: static"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    // A static job that names no spec.calibration.dataset (the example does, and compress
    // calibrates on it: tests/pipeline.rs) asks for the flag.
    let example = std::fs::read_to_string("examples/digits-static.yaml").unwrap();
    let no_cal = example.replace(
        "  calibration:\n    dataset:\n      uri: examples/digits/calib.npz\n",
        "",
    );
    assert_ne!(no_cal, example, "the example names its calibration set");
    let job = dir.path().join("static-no-calibration.yaml");
    std::fs::write(&job, no_cal).unwrap();
    let r = compress(job.to_str().unwrap(), &[]);
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("--calibration DATA.npz"), "{}", r.stderr);
    assert!(!out.exists());
}

/// Kernel `K<name>` [cout, cin, k, k] and bias `B<name>` [cout] of each Conv
/// `(name, cout, cin, k, seed)`.
fn conv_inits(convs: &[(&str, usize, usize, usize, u64)]) -> Vec<pb::TensorProto> {
    let mut inits = Vec::new();
    for &(name, cout, cin, k, seed) in convs {
        inits.push(f32_tensor(
            &format!("K{name}"),
            &[cout as i64, cin as i64, k as i64, k as i64],
            &weights(cout * cin * k * k, seed, cin * k * k),
        ));
        inits.push(f32_tensor(
            &format!("B{name}"),
            &[cout as i64],
            &lcg(cout, seed + 50),
        ));
    }
    inits
}

/// A CNN block of the kinds real models use: SiLU (Sigmoid, Mul), MaxPool, Relu6 (Clip),
/// a residual Add, LeakyRelu, Concat, a nearest Resize, HardSwish and a global average pool.
/// input [N, 3, 16, 16] -> ... -> y [N, 16] (Flatten, a graph output, stays float). Every
/// Conv has a multiple of 16 output channels (narrower ones stay float on x86 without VNNI).
fn cnn_block_model() -> (pb::ModelProto, Vec<usize>) {
    let mut inits = conv_inits(&[
        ("0", 16, 3, 3, 20),
        ("1", 16, 16, 3, 21),
        ("2", 16, 16, 1, 22),
        ("3", 16, 32, 3, 23),
        ("4", 16, 16, 1, 24),
    ]);
    inits.push(f32_tensor("lo", &[], &[0.0]));
    inits.push(f32_tensor("hi", &[], &[6.0]));
    inits.push(f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0]));
    let pads = || vec![attr_ints("pads", &[1, 1, 1, 1])];
    let mode = pb::AttributeProto {
        name: Some("mode".into()),
        s: Some(b"nearest".to_vec()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        ..Default::default()
    };
    let nodes = vec![
        node("Conv", &["input", "K0", "B0"], "c0", pads()),
        node("Sigmoid", &["c0"], "s0", vec![]),
        node("Mul", &["c0", "s0"], "m0", vec![]),
        node(
            "MaxPool",
            &["m0"],
            "p0",
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node("Conv", &["p0", "K1", "B1"], "c1", pads()),
        node("Clip", &["c1", "lo", "hi"], "r1", vec![]),
        node("Add", &["p0", "r1"], "a1", vec![]),
        node("Conv", &["a1", "K2", "B2"], "c2", vec![]),
        node("LeakyRelu", &["c2"], "l2", vec![attr_f("alpha", 0.1)]),
        node(
            "Concat",
            &["l2", "a1"],
            "cat",
            vec![onnx::attr_int("axis", 1)],
        ),
        node("Resize", &["cat", "", "scales"], "u", vec![mode]),
        node("Conv", &["u", "K3", "B3"], "c3", pads()),
        node("HardSwish", &["c3"], "h3", vec![]),
        node("Conv", &["h3", "K4", "B4"], "c4", vec![]),
        node("GlobalAveragePool", &["c4"], "g", vec![]),
        node("Flatten", &["g"], "y", vec![]),
    ];
    (
        model(nodes, inits, &[None, Some(3), Some(16), Some(16)]),
        vec![3, 16, 16],
    )
}

/// The ops between the Convs stay integer in ORT's optimized graph: QLinearSigmoid,
/// QLinearMul (SiLU), QLinearAdd (residual), QLinearLeakyRelu, QLinearConcat,
/// QLinearGlobalAveragePool; MaxPool and Resize run on uint8 data (their QDQ pairs dropped);
/// the Clip is folded into the quantizer. Only the input's Q, the HardSigmoid's DQ -> Q (no
/// integer kernel) and the last DQ stay.
#[test]
fn cnn_activations_and_joins_stay_integer_between_convs() {
    // U8S8, the x86 default: on x86 without VNNI ONNX Runtime 1.31 fuses the int8 (S8S8)
    // forms of these ops only for Conv, which is why uint8 is the default there.
    for act in [ActivationType::Uint8] {
        let (m, s) = cnn_block_model();
        let q = quantize(
            &m,
            &s,
            &spec(&["Conv"], act, false, CalibrationMethod::MinMax),
        );
        let o = &q.optimized_ops;
        eprintln!("{act:?}: ORT ran {o:?}");
        assert_eq!(count(o, "QLinearConv"), 5, "{act:?}: {o:?}");
        // HardSwish reaches ORT as HardSigmoid -> Mul (its basic optimisation in `prepare`):
        // the Mul is integer, the HardSigmoid runs float between a DQ and a Q.
        assert_eq!(count(o, "QLinearMul"), 2, "{act:?}: {o:?}");
        for op in [
            "QLinearSigmoid",
            "QLinearAdd",
            "QLinearLeakyRelu",
            "QLinearConcat",
            "QLinearGlobalAveragePool",
            "NhwcMaxPool",
            "Resize",
            "HardSigmoid",
        ] {
            assert_eq!(count(o, op), 1, "{act:?} {op}: {o:?}");
        }
        for float in [
            "Conv",
            "Sigmoid",
            "Mul",
            "Add",
            "Clip",
            "LeakyRelu",
            "Concat",
        ] {
            assert_eq!(count(o, float), 0, "{act:?} {float} left float: {o:?}");
        }
        assert_eq!(
            count(o, "QuantizeLinear") + count(o, "DequantizeLinear"),
            4,
            "{act:?}: {o:?}"
        );
        assert!(
            q.report.description.contains("kept integer between Convs"),
            "{}",
            q.report.description
        );
        eprintln!(
            "{act:?}: max error {:.4}, cosine {:.6}",
            q.rel_max_err, q.cosine
        );
        assert!(q.cosine > 0.995, "{act:?}: cosine {}", q.cosine);
    }
}

/// HardSwish as PaddlePaddle's exporter writes it (`x * Clip(x + 3, 0, 6) / 6`), then a
/// learnable affine (`* a + b`, scalars), between two Convs (PP-OCR's backbone). The `/ 6`
/// and the `* a` are positive scalars: folded into the dequantizer that the next op reads, so
/// ONNX Runtime runs no float Div and no Mul for them; the Add and the HardSwish's own Mul
/// stay integer (QLinearAdd, QLinearMul).
#[test]
fn scalar_mul_and_div_fold_into_dequantizers_and_stay_close_to_fp32() {
    let mut inits = vec![
        f32_tensor("K0", &[16, 3, 3, 3], &weights(16 * 27, 30, 27)),
        f32_tensor("B0", &[16], &lcg(16, 31)),
        f32_tensor("K1", &[16, 16, 1, 1], &weights(256, 32, 16)),
        f32_tensor("B1", &[16], &lcg(16, 33)),
    ];
    inits.push(f32_tensor("three", &[], &[3.0]));
    inits.push(f32_tensor("lo", &[], &[0.0]));
    inits.push(f32_tensor("hi", &[], &[6.0]));
    inits.push(f32_tensor("six", &[], &[6.0]));
    inits.push(f32_tensor("a", &[1], &[0.8]));
    inits.push(f32_tensor("b", &[1], &[0.25]));
    let nodes = vec![
        node(
            "Conv",
            &["input", "K0", "B0"],
            "c0",
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        ),
        node("Add", &["c0", "three"], "p3", vec![]),
        node("Clip", &["p3", "lo", "hi"], "r6", vec![]),
        node("Mul", &["c0", "r6"], "m", vec![]),
        node("Div", &["m", "six"], "hs", vec![]),
        node("Mul", &["a", "hs"], "scaled", vec![]),
        node("Add", &["scaled", "b"], "shifted", vec![]),
        node("Conv", &["shifted", "K1", "B1"], "c1", vec![]),
        node("GlobalAveragePool", &["c1"], "g", vec![]),
        node("Flatten", &["g"], "y", vec![]),
    ];
    let m = model(nodes, inits, &[None, Some(3), Some(8), Some(8)]);
    let q = quantize(
        &m,
        &[3, 8, 8],
        &spec(
            &["Conv"],
            ActivationType::Uint8,
            false,
            CalibrationMethod::MinMax,
        ),
    );
    let o = &q.optimized_ops;
    eprintln!(
        "ORT ran {o:?}; max error {:.4}, cosine {:.6}",
        q.rel_max_err, q.cosine
    );
    assert_eq!(count(&q.ops, "Div"), 0, "{:?}", q.ops);
    assert_eq!(count(&q.ops, "Mul"), 1, "{:?}", q.ops);
    assert_eq!(count(o, "QLinearConv"), 2, "{o:?}");
    assert_eq!(count(o, "QLinearMul"), 1, "{o:?}");
    assert_eq!(count(o, "QLinearAdd"), 2, "{o:?}");
    for float in ["Div", "Mul", "Add", "Clip", "Conv"] {
        assert_eq!(count(o, float), 0, "{float} left float: {o:?}");
    }
    assert!(
        q.report
            .description
            .contains("Div by a constant (folded) 1")
            && q.report
                .description
                .contains("Mul by a constant (folded) 1"),
        "{}",
        q.report.description
    );
    assert_close(&q, CalibrationMethod::MinMax);
}

/// Two narrow Convs (16 -> 24) joined by a Concat that stays float, then a 48 -> 16 Conv: on
/// x86 without VNNI (and an unknown CPU) the 24-channel Convs stay float, said in the
/// report. A narrow Conv whose output the plan quantizes anyway (a Relu, then an integer
/// Conv) would be fused by ONNX Runtime into QLinearConv all the same: it is quantized.
#[test]
fn convs_with_output_channels_not_a_multiple_of_16_stay_float_without_vnni() {
    let pads = || vec![attr_ints("pads", &[1, 1, 1, 1])];
    let pass = spec(
        &["Conv"],
        ActivationType::Uint8,
        false,
        CalibrationMethod::MinMax,
    );
    let quantize_8x8 = |nodes, inits| {
        quantize(
            &model(nodes, inits, &[None, Some(3), Some(8), Some(8)]),
            &[3, 8, 8],
            &pass,
        )
    };
    fn narrow(name: &str) -> impl Fn(&kompress::passes::Skipped) -> bool + '_ {
        move |s| s.node.contains(name) && s.reason.contains("24 output channels")
    }

    let inits = conv_inits(&[
        ("0", 16, 3, 3, 40),
        ("1", 24, 16, 3, 41),
        ("2", 24, 16, 1, 42),
        ("3", 16, 48, 1, 43),
    ]);
    let nodes = vec![
        node("Conv", &["input", "K0", "B0"], "c0", pads()),
        node("Relu", &["c0"], "r0", vec![]),
        node("Conv", &["r0", "K1", "B1"], "c1", pads()),
        node("Conv", &["r0", "K2", "B2"], "c2", vec![]),
        node(
            "Concat",
            &["c1", "c2"],
            "cat",
            vec![onnx::attr_int("axis", 1)],
        ),
        node("Conv", &["cat", "K3", "B3"], "c3", vec![]),
        node("GlobalAveragePool", &["c3"], "g", vec![]),
        node("Flatten", &["g"], "y", vec![]),
    ];
    let q = quantize_8x8(nodes, inits);
    let o = &q.optimized_ops;
    eprintln!(
        "narrow: ORT ran {o:?}; max error {:.4}, cosine {:.6}",
        q.rel_max_err, q.cosine
    );
    assert_eq!(count(o, "QLinearConv"), 2, "{o:?}");
    assert_eq!(count(o, "Conv") + count(o, "FusedConv"), 2, "{o:?}");
    assert!(
        q.report.skipped.iter().any(narrow("c1")),
        "{:?}",
        q.report.skipped
    );
    assert!(
        q.report.skipped.iter().any(narrow("c2")),
        "{:?}",
        q.report.skipped
    );
    assert_close(&q, CalibrationMethod::MinMax);

    // Conv 16 -> 24 -> Relu -> Conv 24 -> 16: the Relu's output is quantized for the last
    // Conv, so ORT would fuse the narrow Conv anyway: all three are integer.
    let inits = conv_inits(&[
        ("0", 16, 3, 3, 40),
        ("1", 24, 16, 3, 41),
        ("2", 16, 24, 1, 42),
    ]);
    let nodes = vec![
        node("Conv", &["input", "K0", "B0"], "c0", pads()),
        node("Relu", &["c0"], "r0", vec![]),
        node("Conv", &["r0", "K1", "B1"], "c1", pads()),
        node("Relu", &["c1"], "r1", vec![]),
        node("Conv", &["r1", "K2", "B2"], "c2", vec![]),
        node("GlobalAveragePool", &["c2"], "g", vec![]),
        node("Flatten", &["g"], "y", vec![]),
    ];
    let q = quantize_8x8(nodes, inits);
    let o = &q.optimized_ops;
    assert_eq!(count(o, "QLinearConv"), 3, "{o:?}");
    assert!(
        !q.report.skipped.iter().any(narrow("c1")),
        "{:?}",
        q.report.skipped
    );

    // The rule is the target's: with VNNI every Conv is quantized.
    let Pass::Quantize(c) = Pass::for_target(&pass, TargetCpu::X86Vnni) else {
        unreachable!()
    };
    assert!(!c.activations().unwrap().narrow_convs_float);
    let Pass::Quantize(c) = Pass::for_target(&pass, TargetCpu::X86Avx2) else {
        unreachable!()
    };
    assert!(c.activations().unwrap().narrow_convs_float);
}

/// A stored int8 weight's codes.
fn codes(m: &onnx::Model, name: &str) -> Vec<i32> {
    initializer(m, name)
        .raw_data
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| i32::from(*b as i8))
        .collect()
}

/// The largest sum of two same-sign codes among `groups` (each a list of indices) that a
/// kernel may pair: `adjacent` ones along the list, or any two.
fn worst_pair(q: &[i32], groups: &[Vec<usize>], adjacent: bool) -> i32 {
    let mut worst = 0;
    for g in groups {
        for (x, &i) in g.iter().enumerate() {
            worst = worst.max(q[i].abs());
            let partners: Vec<usize> = if adjacent {
                g.get(x + 1).copied().into_iter().collect()
            } else {
                g[x + 1..].to_vec()
            };
            for j in partners {
                if q[i].signum() == q[j].signum() {
                    worst = worst.max(q[i].abs() + q[j].abs());
                }
            }
        }
    }
    worst
}

#[test]
fn default_static_weights_bound_every_pair_a_kernel_may_add_in_int16() {
    // Target auto: 8-bit codes with no two that one `vpmaddubsw` adds (neighbours along a
    // MatMul's K; any two in a Conv's output channel) above 128 together, so a uint8
    // activation of 255 cannot overflow int16 on x86 without VNNI; and more than 7 bits used.
    for per_channel in [true, false] {
        // Static U8S8 minMax on `op` only, per channel or per tensor.
        let run = |(m, s): (pb::ModelProto, Vec<usize>), op: &str| {
            let mut p = spec(
                &[op],
                ActivationType::Uint8,
                false,
                CalibrationMethod::MinMax,
            );
            if let PassSpec::Quantize(q) = &mut p {
                q.per_channel = Some(per_channel);
            }
            quantize(&m, &s, &p)
        };
        let q = run(matmul_model(), "MatMul");
        assert!(
            q.report
                .description
                .contains("8-bit weights bounded in pairs"),
            "{}",
            q.report.description
        );
        let (k, n) = (64, 128);
        let w0 = codes(&q.model, "W0_quantized");
        let columns: Vec<Vec<usize>> = (0..n)
            .map(|c| (0..k).map(|r| r * n + c).collect())
            .collect();
        let worst = worst_pair(&w0, &columns, true);
        let top = w0.iter().map(|v| v.abs()).max().unwrap();
        eprintln!("MatMul per-channel {per_channel}: largest code {top}, largest pair {worst}");
        assert!(worst <= 128 && top > 63, "largest code {top}, pair {worst}");
        assert_close(&q, CalibrationMethod::MinMax);

        let q = run(conv_model(), "Conv");
        for (name, per) in [("K0_quantized", 27), ("K1_quantized", 144)] {
            let k = codes(&q.model, name);
            let channels: Vec<Vec<usize>> = (0..16)
                .map(|c| (c * per..(c + 1) * per).collect())
                .collect();
            let worst = worst_pair(&k, &channels, false);
            eprintln!("Conv {name} per-channel {per_channel}: largest pair {worst}");
            assert!(worst <= 128, "{name}: pair {worst}");
        }
        assert_close(&q, CalibrationMethod::MinMax);
    }
}
