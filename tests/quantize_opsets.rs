//! Which int8 forms each opset allows: per-channel dynamic int8 needs nothing newer than
//! MatMulInteger (opset 10); only a per-channel DequantizeLinear (its `axis`) needs opset 13.

mod support;

use kompress::api::{PassSpec, QuantMode, QuantizeSpec};
use kompress::eval;
use kompress::onnx::{self, SaveOptions};
use kompress::passes::Pass;
use support::*;

fn at_opset(opset: i64) -> kompress::onnx::pb::ModelProto {
    let mut m = mlp(&[64, 128, 10], 21);
    m.opset_import[0].version = Some(opset);
    m
}

fn quantize(mode: QuantMode) -> Pass {
    Pass::from_spec(&PassSpec::Quantize(QuantizeSpec {
        mode,
        per_channel: Some(true),
        ..Default::default()
    }))
}

#[test]
fn per_channel_dynamic_int8_runs_on_an_opset_11_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&at_opset(11), &src);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 32, 64, 10);
    let mut m = onnx::load(&src).unwrap();
    let r = quantize(QuantMode::Dynamic).apply(&mut m).unwrap();
    assert_eq!(r.tensors.len(), 2, "{r:#?}");
    assert!(
        r.tensors
            .iter()
            .all(|t| t.scales == Some(if t.tensor == "W0" { 128 } else { 10 }))
    );
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    let (a, b) = (outputs(&src, &data, 32), outputs(&out, &data, 32));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    assert!(max < 0.05 * scale, "max |fp32 - int8| {max} of {scale}");
}

/// Per-channel weight-only below opset 13 upgrades the graph to 13 (never a silent fall back
/// to one scale per tensor), and the report says so; below opset 11 it is refused with what
/// to change.
#[test]
fn per_channel_weight_only_below_opset_13_upgrades_the_graph_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&at_opset(12), &src);
    let mut m = onnx::load(&src).unwrap();
    let r = quantize(QuantMode::WeightOnly).apply(&mut m).unwrap();
    assert!(
        r.description.contains("graph upgraded from opset 12 to 13"),
        "{}",
        r.description
    );
    assert_eq!(onnx::default_opset(&m.proto), Some(13));
    assert!(
        r.tensors.iter().all(|t| t.scales.unwrap_or(1) > 1),
        "{r:#?}"
    );
    let out = dir.path().join("candidate.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    eval::open(&out, &eval_cfg(32)).expect("ORT loads the upgraded model");

    write_model(&at_opset(10), &src);
    let mut m = onnx::load(&src).unwrap();
    let e = quantize(QuantMode::WeightOnly)
        .apply(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("opset 10") && e.contains("perChannel: false"),
        "{e}"
    );
}

/// ConvTranspose weights [C_in, C_out, k, k] are stored int8 and dequantized (no integer
/// ConvTranspose kernel on CPU), per channel along the output axis, and ORT runs the result.
#[test]
fn conv_transpose_weights_are_int8_weight_only_and_run_in_ort() {
    use kompress::onnx::{f32_tensor, pb};
    let (cin, cout, k) = (16usize, 16usize, 3usize);
    let w: Vec<f32> = lcg(cin * cout * k * k, 5).iter().map(|v| v * 0.2).collect();
    let model = model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("deconv".into()),
            node: vec![
                onnx::node(
                    "ConvTranspose",
                    "up".into(),
                    vec!["x".into(), "W".into()],
                    vec!["y".into()],
                    vec![onnx::attr_ints("strides", &[2, 2])],
                ),
                onnx::node(
                    "Flatten",
                    "flat".into(),
                    vec!["y".into()],
                    vec!["logits".into()],
                    vec![],
                ),
            ],
            initializer: vec![f32_tensor(
                "W",
                &[cin as i64, cout as i64, k as i64, k as i64],
                &w,
            )],
            input: vec![value_info("x", &[None, Some(16), Some(4), Some(4)])],
            output: vec![value_info("logits", &[None, None])],
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.onnx");
    write_model(&model, &src);
    let x = lcg(8 * 16 * 4 * 4, 9);
    let data = dir.path().join("data.npz");
    write_npz(&data, &[("x", f32_array(&[8, 16, 4, 4], &x))]);
    for mode in [QuantMode::WeightOnly, QuantMode::Dynamic] {
        let mut m = onnx::load(&src).unwrap();
        let r = Pass::from_spec(&PassSpec::Quantize(QuantizeSpec {
            mode,
            ops: Some(vec!["ConvTranspose".into()]),
            ..Default::default()
        }))
        .apply(&mut m)
        .unwrap();
        assert_eq!(r.tensors.len(), 1, "{r:#?}");
        assert_eq!(r.tensors[0].scales, Some(cout), "per channel along axis 1");
        let ops: Vec<&str> = m
            .graph()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(ops, ["DequantizeLinear", "ConvTranspose", "Flatten"]);
        let out = dir.path().join("candidate.onnx");
        onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
        let (a, b) = (outputs(&src, &data, 32), outputs(&out, &data, 32));
        // Each output sums at most cin*k*k products of |x| <= 1 and a weight error <= half a
        // step (max |w| / 127 / 2 per channel, |w| <= 0.2 here).
        let bound = (cin * k * k) as f32 * 0.2 / 127.0 / 2.0;
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max <= bound, "{mode:?}: max |fp32 - int8| {max} > {bound}");
    }
}
