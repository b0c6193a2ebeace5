//! 4-bit weight-only quantization (`weights: int4`): every emitted form run by ONNX Runtime on
//! generated models and checked against a dequantized reference computed here from the
//! emitted initializers (so a layout or packing mistake shows as a mismatch with ORT), and
//! against fp32 within the weight error the pass reports.

mod support;

use kompress::api::{PassSpec, QuantMode, QuantizeSpec, WeightType};

use kompress::onnx::{self, SaveOptions, TensorData, f32_tensor, pb};
use kompress::passes::{Int4Config, Pass, PassReport, QuantForm};
use std::path::Path;
use support::*;

fn int4(block: u32, symmetric: bool, accuracy_level: u32) -> QuantizeSpec {
    QuantizeSpec {
        mode: QuantMode::WeightOnly,
        weights: WeightType::Int4,
        block_size: Some(block),
        symmetric: Some(symmetric),
        accuracy_level: Some(accuracy_level),
        ..Default::default()
    }
}

fn pass(spec: QuantizeSpec) -> Pass {
    Pass::from_spec(&PassSpec::Quantize(spec))
}

fn f32s(t: &pb::TensorProto) -> Vec<f32> {
    onnx::tensor_f32_values(t).unwrap()
}

fn attr(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

/// Written independently of the pass: element i of a packed row is in byte i/2, low nibble
/// for even i.
fn nibble(bytes: &[u8], i: usize) -> f32 {
    f32::from((bytes[i / 2] >> (4 * (i % 2))) & 0xf)
}

/// The float matrix [rows, len] a blocked 4-bit tensor stands for: `row_bytes` bytes per
/// packed row, blocks of `bs`, zero points packed per row or implied 8.
fn dequantize(
    data: &[u8],
    scales: &[f32],
    zp: Option<&[u8]>,
    rows: usize,
    len: usize,
    row_bytes: usize,
    bs: usize,
) -> Vec<f32> {
    let nb = len.div_ceil(bs);
    let zb = nb.div_ceil(2);
    let mut out = vec![0f32; rows * len];
    for r in 0..rows {
        for k in 0..len {
            let b = k / bs;
            let z = zp.map_or(8.0, |z| nibble(&z[r * zb..], b));
            let q = nibble(&data[r * row_bytes..], k);
            out[r * len + k] = (q - z) * scales[r * nb + b];
        }
    }
    out
}

/// `Y = A · W (+ bias)` with A [m, k] and W given as [n, k] rows, in f64.
fn matmul_rows(a: &[f32], w_rows: &[f32], bias: Option<&[f32]>, k: usize, n: usize) -> Vec<f64> {
    let m = a.len() / k;
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| f64::from(a[i * k + t]) * f64::from(w_rows[j * k + t]))
                .sum();
            y[i * n + j] = s + bias.map_or(0.0, |b| f64::from(b[j]));
        }
    }
    y
}

/// A single-op model: `input [batch, (seq,) K] -> op(input, W) -> output`.
fn one_op_model(
    op: &str,
    shape_in: &[Option<i64>],
    w: pb::TensorProto,
    bias: Option<pb::TensorProto>,
    attrs: Vec<pb::AttributeProto>,
    n: usize,
    opset: i64,
) -> pb::ModelProto {
    let mut inputs = vec!["input".to_string(), "W".to_string()];
    let mut inits = vec![w];
    if let Some(b) = bias {
        inputs.push("C".into());
        inits.push(b);
    }
    let mut out_shape = shape_in.to_vec();
    *out_shape.last_mut().unwrap() = Some(n as i64);
    model_of(
        8,
        opset,
        pb::GraphProto {
            name: Some("one_op".into()),
            node: vec![onnx::node(
                op,
                format!("{op}_0"),
                inputs,
                vec!["output".into()],
                attrs,
            )],
            initializer: inits,
            input: vec![value_info("input", shape_in)],
            output: vec![value_info("output", &out_shape)],
            ..Default::default()
        },
    )
}

struct Ran {
    m: onnx::Model,
    report: PassReport,
    a: Vec<f32>,
    base: Vec<f32>,
    cand: Vec<f32>,
    fp32_bytes: u64,
    int4_bytes: u64,
}

/// Saves `model`, applies `pass`, runs both in ORT on `samples` inputs of `sample_shape`.
fn run(model: &pb::ModelProto, pass: &Pass, sample_shape: &[usize], samples: usize) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(model, &src);
    let per: usize = sample_shape.iter().product();
    let a = lcg(samples * per, 77);
    let mut shape = vec![samples];
    shape.extend_from_slice(sample_shape);
    let data = dir.path().join("data.npz");
    write_npz(&data, &[("input", f32_array(&shape, &a))]);
    let mut m = onnx::load(&src).unwrap();
    let report = pass.apply(&mut m).unwrap();
    let out = dir.path().join("int4.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let (base, cand) = outputs_of(&src, &out, &data);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    Ran {
        m: onnx::load(&out).unwrap(),
        report,
        a,
        base,
        cand,
        fp32_bytes: size(&src),
        int4_bytes: size(&out),
    }
}

fn outputs_of(src: &Path, out: &Path, data: &Path) -> (Vec<f32>, Vec<f32>) {
    (outputs(src, data, 16), outputs(out, data, 16))
}

/// The shape and settings of one MatMulNBits case.
#[derive(Clone, Copy)]
struct Form {
    k: usize,
    n: usize,
    bs: usize,
    symmetric: bool,
    level: u32,
}

/// Checks one MatMulNBits rewrite of W (given as [n, k] rows) against ORT's output:
/// ORT = the dequantized reference (tight, or within int8 activation error at level 4), and
/// fp32 - ORT within sum_k |a_k| * max_abs_error. Returns the dequantized rows.
fn check_matmul_nbits(
    r: &Ran,
    w_rows: &[f32],
    bias: Option<&[f32]>,
    alpha: f32,
    form: Form,
) -> Vec<f32> {
    let Form {
        k,
        n,
        bs,
        symmetric,
        level: accuracy_level,
    } = form;
    assert_eq!(ops(&r.m), ["MatMulNBits"], "{:?}", r.report);
    let node = &r.m.graph().node[0];
    assert_eq!(node.domain.as_deref(), Some("com.microsoft"));
    assert_eq!(
        (attr(node, "K"), attr(node, "N"), attr(node, "bits")),
        (Some(k as i64), Some(n as i64), Some(4))
    );
    assert_eq!(attr(node, "block_size"), Some(bs as i64));
    assert_eq!(
        attr(node, "accuracy_level").unwrap_or(0),
        i64::from(accuracy_level)
    );
    assert!(
        r.m.proto
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some("com.microsoft") && o.version == Some(1))
    );
    let nb = k.div_ceil(bs);
    let b = initializer(&r.m, &node.input[1]);
    assert_eq!(b.dtype(), onnx::DataType::Uint8);
    assert_eq!(b.dims, vec![n as i64, nb as i64, (bs / 2) as i64]);
    let scales = initializer(&r.m, &node.input[2]);
    assert_eq!(scales.dims, vec![n as i64, nb as i64]);
    let zp = node
        .input
        .get(3)
        .filter(|z| !z.is_empty())
        .map(|z| initializer(&r.m, z));
    assert_eq!(zp.is_none(), symmetric, "zero points iff asymmetric");
    if let Some(z) = zp {
        assert_eq!(z.dims, vec![n as i64, nb.div_ceil(2) as i64]);
    }
    let deq = dequantize(
        b.raw_data.as_ref().unwrap(),
        &f32s(scales),
        zp.map(|z| &z.raw_data.as_ref().unwrap()[..]),
        n,
        k,
        nb * bs / 2,
        bs,
    );
    let reported = r.report.tensors[0].max_abs_error.unwrap();
    let worst_w = w_rows
        .iter()
        .zip(&deq)
        .map(|(w, d)| (w * alpha - d).abs())
        .fold(0f32, f32::max);
    assert!(
        worst_w <= reported * alpha.abs() * 1.0001 + 1e-7,
        "weights off by {worst_w}, report says {reported}"
    );
    assert!(worst_w > 0.0, "nothing was quantized?");
    let reference = matmul_rows(&r.a, &deq, bias, k, n);
    let fp32 = matmul_rows(
        &r.a,
        &w_rows.iter().map(|w| w * alpha).collect::<Vec<_>>(),
        bias,
        k,
        n,
    );
    assert_eq!(r.cand.len(), reference.len());
    let (mut worst_ref, mut worst_fp) = (0f64, 0f64);
    for (i, ((&c, &y), &f)) in r.cand.iter().zip(&reference).zip(&fp32).enumerate() {
        let row = &r.a[(i / n) * k..(i / n + 1) * k];
        let abs_a: f64 = row.iter().map(|x| f64::from(x.abs())).sum();
        let j = i % n;
        let abs_aw: f64 = (0..k)
            .map(|t| f64::from(row[t].abs() * deq[j * k + t].abs()))
            .sum();
        let tol_ref = if accuracy_level == 4 {
            // int8 activations: each a_k off by at most max|a| / 255 (blockwise, so less).
            let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            f64::from(amax) / 127.0 * (0..k).map(|t| f64::from(deq[j * k + t].abs())).sum::<f64>()
                + 1e-4
        } else {
            1e-5 * abs_aw + 1e-5
        };
        let e = (f64::from(c) - y).abs();
        assert!(
            e <= tol_ref,
            "output {i}: ORT {c} vs reference {y} (tol {tol_ref})"
        );
        worst_ref = worst_ref.max(e);
        let bound = abs_a * f64::from(reported * alpha.abs()) + tol_ref;
        let ef = (f64::from(c) - f).abs();
        assert!(
            ef <= bound,
            "output {i}: ORT {c} vs fp32 {f}: {ef} > {bound}"
        );
        worst_fp = worst_fp.max(ef);
        // The ORT fp32 model agrees with the f64 product (the fixture is read right).
        assert!((f64::from(r.base[i]) - f).abs() <= 1e-5 * abs_a + 1e-5);
    }
    let ratio = r.fp32_bytes as f64 / r.int4_bytes as f64;
    eprintln!(
        "K={k} N={n} bs={bs} sym={symmetric} level={accuracy_level}: |ORT - reference| <= {worst_ref:.2e}, |ORT - fp32| <= {worst_fp:.2e}, max weight err {reported:.3e}, {} -> {} bytes ({ratio:.2}x)",
        r.fp32_bytes, r.int4_bytes
    );
    deq
}

fn matmul_case(k: usize, n: usize, seq: Option<usize>, bs: usize, symmetric: bool, level: u32) {
    let w = lcg(k * n, (k * 31 + n) as u64);
    let shape: Vec<Option<i64>> = match seq {
        Some(s) => vec![None, Some(s as i64), Some(k as i64)],
        None => vec![None, Some(k as i64)],
    };
    let model = one_op_model(
        "MatMul",
        &shape,
        f32_tensor("W", &[k as i64, n as i64], &w),
        None,
        vec![],
        n,
        17,
    );
    let sample: Vec<usize> = seq.map_or(vec![k], |s| vec![s, k]);
    let r = run(&model, &pass(int4(bs as u32, symmetric, level)), &sample, 8);
    // W [K, N] -> rows [N, K].
    let rows: Vec<f32> = (0..n)
        .flat_map(|j| (0..k).map(move |t| (j, t)))
        .map(|(j, t)| w[t * n + j])
        .collect();
    check_matmul_nbits(
        &r,
        &rows,
        None,
        1.0,
        Form {
            k,
            n,
            bs,
            symmetric,
            level,
        },
    );
    let t = &r.report.tensors[0];
    assert_eq!((t.op.as_str(), t.elements), ("MatMul", (k * n) as u64));
    assert_eq!(t.scales, Some(n * k.div_ceil(bs)));
    assert!(
        r.report.description.contains(&format!("blocks of {bs}"))
            && r.report.description.contains("MatMulNBits"),
        "{}",
        r.report.description
    );
    // Weight bytes: fp32 4 per element; int4 1/2 per element of K padded to whole blocks, a
    // 4-byte scale per block (+ 1/2 byte zero point).
    let ratio = r.fp32_bytes as f64 / r.int4_bytes as f64;
    let nb = k.div_ceil(bs) as f64;
    let per_row = nb * bs as f64 / 2.0 + nb * 4.0 + if symmetric { 0.0 } else { nb / 2.0 };
    let expected = (4 * k) as f64 / per_row;
    assert!(
        ratio > 0.9 * expected && ratio > 4.0,
        "{} -> {} bytes: {ratio:.2}x (weights alone: {expected:.2}x)",
        r.fp32_bytes,
        r.int4_bytes
    );
}

#[test]
fn matmul_2d_symmetric_blocks_of_32_run_in_ort_as_the_reference_says() {
    matmul_case(256, 192, None, 32, true, 0);
}

#[test]
fn matmul_3d_input_asymmetric_blocks_of_16() {
    matmul_case(128, 160, Some(5), 16, false, 0);
}

#[test]
fn matmul_with_k_not_a_multiple_of_the_block_is_zero_padded() {
    // K = 300: blocks of 128 -> 3 blocks, the last with 44 values; odd block count (zp byte half used).
    matmul_case(300, 96, None, 128, false, 0);
    matmul_case(300, 96, Some(3), 128, true, 0);
    matmul_case(200, 64, None, 16, true, 0); // 12.5 blocks of 16
}

#[test]
fn matmul_accuracy_level_4_stays_within_int8_activation_error() {
    matmul_case(256, 128, None, 32, true, 4);
    matmul_case(256, 128, Some(4), 32, false, 4);
}

#[test]
fn gemm_trans_b_with_bias_and_alpha_becomes_matmul_nbits_with_a_bias_input() {
    let (k, n) = (192, 80);
    for (trans_b, alpha) in [(true, 1.0f32), (false, 1.0), (true, 0.5)] {
        let w = lcg(k * n, 5);
        let bias = lcg(n, 6);
        let dims = if trans_b {
            [n as i64, k as i64]
        } else {
            [k as i64, n as i64]
        };
        let mut attrs = vec![onnx::attr_int("transB", trans_b as i64)];
        if alpha != 1.0 {
            attrs.push(pb::AttributeProto {
                name: Some("alpha".into()),
                f: Some(alpha),
                r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
                ..Default::default()
            });
        }
        let model = one_op_model(
            "Gemm",
            &[None, Some(k as i64)],
            f32_tensor("W", &dims, &w),
            Some(f32_tensor("C", &[n as i64], &bias)),
            attrs,
            n,
            13,
        );
        let r = run(&model, &pass(int4(32, true, 0)), &[k], 8);
        let node = &r.m.graph().node[0];
        assert_eq!(
            node.input.get(5).map(String::as_str),
            Some("C"),
            "{:?}",
            node.input
        );
        let rows: Vec<f32> = if trans_b {
            w.clone()
        } else {
            (0..n)
                .flat_map(|j| (0..k).map(move |t| (j, t)))
                .map(|(j, t)| w[t * n + j])
                .collect()
        };
        let form = Form {
            k,
            n,
            bs: 32,
            symmetric: true,
            level: 0,
        };
        check_matmul_nbits(&r, &rows, Some(&bias), alpha, form);
    }
}

#[test]
fn gemm_forms_matmul_nbits_cannot_take_are_skipped_with_a_reason() {
    let (k, n) = (64, 32);
    let beta = pb::AttributeProto {
        name: Some("beta".into()),
        f: Some(2.0),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        ..Default::default()
    };
    for (attrs, bias_dims, reason) in [
        (
            vec![onnx::attr_int("transA", 1)],
            vec![n as i64],
            "transA=1",
        ),
        (vec![beta], vec![n as i64], "beta != 1"),
        (vec![], vec![1, n as i64], "shape [32]"),
    ] {
        let model = one_op_model(
            "Gemm",
            &[None, Some(k as i64)],
            f32_tensor("W", &[k as i64, n as i64], &lcg(k * n, 1)),
            Some(f32_tensor("C", &bias_dims, &lcg(n, 2))),
            attrs,
            n,
            13,
        );
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.onnx");
        write_model(&model, &src);
        let mut m = onnx::load(&src).unwrap();
        let before = m.proto.clone();
        let report = pass(int4(32, true, 0)).apply(&mut m).unwrap();
        assert!(report.tensors.is_empty());
        assert!(
            report.skipped.iter().any(|s| s.reason.contains(reason)),
            "{reason}: {:?}",
            report.skipped
        );
        assert_eq!(m.proto, before, "a skipped Gemm leaves the model unchanged");
    }
}

#[test]
fn conv_weights_are_skipped_pointing_at_int8() {
    let w = f32_tensor("W", &[8, 4, 3, 3], &lcg(288, 3));
    let model = model_of(
        8,
        13,
        pb::GraphProto {
            node: vec![onnx::node(
                "Conv",
                "conv".into(),
                vec!["input".into(), "W".into()],
                vec!["output".into()],
                vec![],
            )],
            initializer: vec![w],
            input: vec![value_info("input", &[None, Some(4), Some(8), Some(8)])],
            output: vec![value_info("output", &[None, Some(8), Some(6), Some(6)])],
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_model(&model, &src);
    let mut m = onnx::load(&src).unwrap();
    let spec = QuantizeSpec {
        ops: Some(vec!["Conv".into(), "MatMul".into()]),
        min_elements: Some(1),
        ..int4(32, true, 0)
    };
    let report = pass(spec).apply(&mut m).unwrap();
    assert!(report.tensors.is_empty());
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert_eq!(report.skipped[0].node, "conv");
    assert!(
        report.skipped[0].reason.contains("no 4-bit kernel")
            && report.skipped[0].reason.contains("int8"),
        "{}",
        report.skipped[0].reason
    );
    assert_eq!(ops(&m), ["Conv"]);
    assert!(
        !m.proto
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some("com.microsoft")),
        "no com.microsoft import when nothing was rewritten"
    );
}

/// Runs the int4 pass on `embedding(v, d)` at `opset` and checks ORT's rows against the
/// reference dequantized from the emitted table. Returns (report, fp32 bytes, int4 bytes).
fn gather_case(
    v: usize,
    d: usize,
    bs: usize,
    symmetric: bool,
    opset: i64,
) -> (PassReport, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    let mut model = embedding(v, d, 0, false, 21);
    model.opset_import[0].version = Some(opset);
    let table = f32s(&model.graph.as_ref().unwrap().initializer[0]);
    write_model(&model, &src);
    let data = dir.path().join("data.npz");
    let ids = embedding_dataset(&data, 16, 12, v);
    let mut m = onnx::load(&src).unwrap();
    let report = pass(int4(bs as u32, symmetric, 0)).apply(&mut m).unwrap();
    let out = dir.path().join("int4.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    assert_eq!(ops(&m), ["GatherBlockQuantized"], "{report:?}");
    let node = &m.graph().node[0];
    assert_eq!(node.domain.as_deref(), Some("com.microsoft"));
    assert_eq!(
        (
            attr(node, "bits"),
            attr(node, "block_size"),
            attr(node, "gather_axis"),
            attr(node, "quantize_axis")
        ),
        (Some(4), Some(bs as i64), Some(0), Some(1))
    );
    let nb = d.div_ceil(bs);
    let q = initializer(&m, &node.input[0]);
    assert_eq!(q.dtype(), onnx::DataType::Uint8);
    assert_eq!(q.dims, vec![v as i64, (d / 2) as i64]);
    let scales = initializer(&m, &node.input[2]);
    assert_eq!(scales.dims, vec![v as i64, nb as i64]);
    let zp = node.input.get(3).map(|z| initializer(&m, z));
    assert_eq!(zp.is_none(), symmetric);
    if let Some(z) = zp {
        assert_eq!(z.dims, vec![v as i64, nb.div_ceil(2) as i64]);
    }
    let deq = dequantize(
        q.raw_data.as_ref().unwrap(),
        &f32s(scales),
        zp.map(|z| &z.raw_data.as_ref().unwrap()[..]),
        v,
        d,
        d / 2,
        bs,
    );
    let (base, cand) = outputs_of(&src, &out, &data);
    let reported = report.tensors[0].max_abs_error.unwrap();
    assert!(reported > 0.0);
    assert_eq!(cand.len(), ids.len() * d);
    for (i, (&b, &c)) in base.iter().zip(&cand).enumerate() {
        let (row, col) = (ids[i / d] as usize, i % d);
        assert_eq!(b, table[row * d + col]);
        assert!(
            (c - deq[row * d + col]).abs() <= 1e-6 * deq[row * d + col].abs() + 1e-7,
            "element {i}: ORT {c} vs reference {}",
            deq[row * d + col]
        );
        assert!((c - b).abs() <= reported * 1.0001 + 1e-7);
    }
    let (a, b) = (
        std::fs::metadata(&src).unwrap().len(),
        std::fs::metadata(&out).unwrap().len(),
    );
    eprintln!(
        "Gather V={v} D={d} bs={bs} sym={symmetric} opset {opset}: max weight err {reported:.3e}, {a} -> {b} bytes ({:.2}x)",
        a as f64 / b as f64
    );
    (report, a, b)
}

#[test]
fn embedding_tables_become_gather_block_quantized_in_opset_11_and_17_models() {
    for (opset, symmetric, bs) in [
        (11, true, 32),
        (11, false, 16),
        (17, true, 64),
        (17, false, 32),
    ] {
        let (report, a, b) = gather_case(1000, 64, bs, symmetric, opset);
        assert!(report.description.contains("GatherBlockQuantized"));
        assert!(a as f64 / b as f64 > 4.0, "{a} -> {b}");
    }
}

#[test]
fn embedding_width_not_a_multiple_of_the_block_is_stored_unpadded() {
    // ORT derives D from the packed width: D = 40 with blocks of 16 is [V, 20] bytes and 3
    // scales per row (a padded [V, 24] would make ORT return rows of 48).
    gather_case(300, 40, 16, true, 17);
    gather_case(300, 40, 32, false, 17);
}

#[test]
fn an_odd_embedding_width_is_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_model(&embedding(100, 33, 0, false, 3), &src);
    let mut m = onnx::load(&src).unwrap();
    let before = m.proto.clone();
    let report = pass(int4(16, true, 0)).apply(&mut m).unwrap();
    assert!(report.tensors.is_empty());
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.node == "embed" && s.reason.contains("odd")),
        "{:?}",
        report.skipped
    );
    assert_eq!(m.proto, before);
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let mut model = mlp(&[64, 128, 10], 6);
    edit_first_weight(&mut model, |v| v[70] = f32::INFINITY);
    let dir = tempfile::tempdir().unwrap();
    let mut m = write_and_load(&model, &dir.path().join("m.onnx"));
    let e = pass(int4(32, true, 0))
        .apply(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("W0") && e.contains("infinity") && e.contains("element 70"),
        "{e}"
    );
}

#[test]
fn an_mlp_keeps_its_outputs_close_and_refinement_lowers_the_error() {
    // Two MatMuls and their Adds/Relu: a whole graph rewritten, compared end to end.
    let widths = [256, 512, 64];
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&mlp(&widths, 11), &src);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 64, widths[0], widths[2]);
    let mut errs = Vec::new();
    for refine in [false, true] {
        let Pass::Quantize(mut c) = pass(int4(32, true, 0)) else {
            unreachable!()
        };
        let QuantForm::Int4(int4) = &mut c.form else {
            unreachable!()
        };
        int4.refine = refine;
        let mut m = onnx::load(&src).unwrap();
        let report = Pass::Quantize(c).apply(&mut m).unwrap();
        assert_eq!(report.tensors.len(), 2);
        assert_eq!(
            report.description.contains("refined"),
            refine,
            "{}",
            report.description
        );
        let out = dir.path().join(format!("int4-{refine}.onnx"));
        onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
        let (base, cand) = outputs_of(&src, &out, &data);
        let cos = kompress::eval::metrics::closeness(&base, &cand, base.len()).0;
        let mse: f64 = base
            .iter()
            .zip(&cand)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / base.len() as f64;
        eprintln!(
            "mlp {widths:?} int4 bs32 sym refine={refine}: cosine {cos:.5}, output MSE {mse:.3e}"
        );
        assert!(cos > 0.99, "cos {cos}");
        errs.push(mse);
    }
    assert!(
        errs[1] < errs[0],
        "refined output MSE {} vs RTN {}",
        errs[1],
        errs[0]
    );
}

#[test]
fn weights_int4_in_a_spec_builds_the_int4_config() {
    let Pass::Quantize(c) = pass(int4(64, false, 4)) else {
        panic!("not a quantize pass")
    };
    assert_eq!(
        c.int4(),
        Some(&Int4Config {
            block_size: 64,
            symmetric: false,
            accuracy_level: 4,
            refine: false,
        })
    );
    // The 4-bit form is weight-only.
    assert!(matches!(c.form, QuantForm::Int4(_)));
    // Unset fields take the documented defaults: blocks of 32, symmetric, level 0.
    let Pass::Quantize(c) = pass(QuantizeSpec {
        mode: QuantMode::WeightOnly,
        weights: WeightType::Int4,
        ..Default::default()
    }) else {
        panic!()
    };
    assert_eq!(c.int4(), Some(&Int4Config::default()));
    assert_eq!(
        (
            Int4Config::default().block_size,
            Int4Config::default().symmetric,
            Int4Config::default().accuracy_level
        ),
        (32, true, 0)
    );
    // int8 has no int4 settings.
    let Pass::Quantize(c) = pass(QuantizeSpec::default()) else {
        panic!()
    };
    assert_eq!(c.int4(), None);
    // And from the manifest's JSON form: the field names reach the config.
    let spec: QuantizeSpec = from_json(
        r#"{"mode": "weightOnly", "weights": "int4", "blockSize": 128, "symmetric": false, "accuracyLevel": 1}"#,
    );
    let Pass::Quantize(c) = pass(spec) else {
        panic!()
    };
    assert_eq!(
        c.int4()
            .map(|i| (i.block_size, i.symmetric, i.accuracy_level)),
        Some((128, false, 1))
    );
}

fn from_json(json: &str) -> QuantizeSpec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn an_invalid_block_size_that_skipped_validation_is_refused_not_a_panic() {
    let mut model = mlp(&[64, 128, 10], 6);
    model.opset_import[0].version = Some(17);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_model(&model, &src);
    let mut m = onnx::load(&src).unwrap();
    let e = pass(int4(48, true, 0))
        .apply(&mut m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blockSize 48"), "{e}");
}

fn digits_int4_job(dir: &Path, quantize: &str) -> String {
    let r = repo();
    write_job(
        dir,
        &job_yaml(
            "digits-int4",
            &r.join("examples/digits/model.onnx").display().to_string(),
            &r.join("examples/digits/eval.npz").display().to_string(),
            &format!("    - quantize: {quantize}"),
            "    maxAccuracyDrop: 0.02\n    minAgreement: 0.95\n    minCompressionRatio: 3",
            dir,
        ),
    )
}

#[test]
fn kompress_run_evaluates_gates_and_promotes_an_int4_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let job = digits_int4_job(
        dir.path(),
        "{mode: weightOnly, weights: int4, blockSize: 16, symmetric: false}",
    );
    let report = run_json(&job);
    let res = &report["result"];
    eprintln!("digits int4: {res}");
    assert_eq!(res["verdict"], "Passed", "{res}");
    let pass = &report["passes"][0];
    let desc = pass["description"].as_str().unwrap();
    assert!(
        desc.contains("int4") && desc.contains("blocks of 16") && desc.contains("asymmetric"),
        "{desc}"
    );
    assert!(!pass["tensors"].as_array().unwrap().is_empty());
}

#[test]
fn int4_outside_weight_only_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = digits_int4_job(dir.path(), "{mode: dynamic, weights: int4}");
    let r = run_kompress(&["run", "-f", &job], &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("weights") && r.stderr.contains("weightOnly"),
        "{}",
        r.stderr
    );
}
