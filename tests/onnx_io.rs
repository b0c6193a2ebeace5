//! ONNX I/O: lossless round trips, external data, and clear errors for broken files.

mod support;

use kompress::eval::{self, Dataset, EvalConfig};
use kompress::onnx::{self, SaveOptions, TensorData};
use prost::Message;
use support::*;

fn cfg() -> EvalConfig {
    EvalConfig {
        batch_size: 16,
        threads: Some(1),
        output: None,
        labels: None,
        limit: None,
        latency_batch: 1,
        warmup: 0,
        iterations: 1,
    }
}

fn outputs(model: &std::path::Path, data: &std::path::Path) -> Vec<f32> {
    let ds = Dataset::load(data).unwrap();
    let prep = eval::prepare(&eval::open(model, &cfg()).unwrap(), &ds, &cfg()).unwrap();
    eval::evaluate(
        &mut eval::open(model, &cfg()).unwrap(),
        &prep,
        &cfg(),
        &|_, _| {},
    )
    .unwrap()
    .0
    .values
}

#[test]
fn load_save_load_is_byte_for_byte_lossless_on_the_bundled_model() {
    let src = repo().join("examples/digits/model.onnx");
    let original = std::fs::read(&src).unwrap();
    let m = onnx::load(&src).unwrap();
    assert_eq!(
        m.proto.encode_to_vec(),
        original,
        "re-encoding changed the bytes"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.onnx");
    onnx::save(&m.proto, &out, &SaveOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), original);
    // everything else of the model is intact: metadata, opsets, doc string
    let again = onnx::load(&out).unwrap();
    assert_eq!(again.proto.metadata_props, m.proto.metadata_props);
    assert_eq!(again.proto.opset_import, m.proto.opset_import);
    assert_eq!(again.proto.doc_string, m.proto.doc_string);
}

#[test]
fn external_data_round_trips_and_ort_runs_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let model = mlp(&[32, 256, 64, 10], 1);
    let inline = dir.path().join("inline.onnx");
    write_model(&model, &inline);
    let data = dir.path().join("data.npz");
    mlp_dataset(&data, 40, 32, 10);

    let ext_dir = dir.path().join("ext");
    std::fs::create_dir(&ext_dir).unwrap();
    let ext = ext_dir.join("model.onnx");
    let saved = onnx::save(
        &model,
        &ext,
        &SaveOptions {
            external_data: Some(true),
        },
    )
    .unwrap();
    assert_eq!(saved.files.len(), 2, "{:?}", saved.files);
    assert!(ext_dir.join("model.onnx.data").exists());
    assert!(
        std::fs::metadata(&ext).unwrap().len() < 4096,
        "weights left the protobuf"
    );
    assert_eq!(
        onnx::external_locations(&ext).unwrap(),
        vec!["model.onnx.data".to_string()]
    );

    let loaded = onnx::load(&ext).unwrap();
    assert!(loaded.had_external_data);
    for (a, b) in model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .zip(&loaded.graph().initializer)
    {
        assert_eq!(a.name, b.name);
        assert_eq!(
            onnx::tensor_f32_values(a).unwrap(),
            onnx::tensor_f32_values(b).unwrap()
        );
        assert_eq!(a.payload_bytes(), b.payload_bytes());
    }
    // ONNX Runtime reads our external-data layout and computes the same outputs.
    assert_eq!(outputs(&inline, &data), outputs(&ext, &data));
}

#[test]
fn missing_external_data_names_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    onnx::save(
        &mlp(&[32, 64, 10], 2),
        &path,
        &SaveOptions {
            external_data: Some(true),
        },
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("model.onnx.data")).unwrap();
    let e = onnx::load(&path).unwrap_err().to_string();
    assert!(e.contains("W0") && e.contains("model.onnx.data"), "{e}");
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = mlp(&[32, 64, 10], 3);
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.raw_data = None;
    t.data_location = Some(onnx::pb::tensor_proto::DataLocation::External as i32);
    t.external_data = vec![onnx::pb::StringStringEntryProto {
        key: Some("location".into()),
        value: Some("../../etc/passwd".into()),
    }];
    let path = dir.path().join("evil.onnx");
    write_model(&m, &path);
    let e = onnx::load(&path).unwrap_err().to_string();
    assert!(e.contains("relative path inside"), "{e}");
}

#[test]
fn broken_files_get_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert!(
        onnx::load(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(
        &garbage,
        lcg(4000, 7)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let e = onnx::load(&garbage).unwrap_err().to_string();
    assert!(
        e.contains("not a valid ONNX model") || e.contains("not an ONNX model"),
        "{e}"
    );

    let truncated = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(repo().join("examples/digits/model.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = onnx::load(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");

    let missing = dir.path().join("nope.onnx");
    assert!(
        onnx::load(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope.onnx")
    );
}

#[test]
fn inspect_counts_ops_parameters_and_bytes() {
    let m = onnx::load(&repo().join("examples/digits/model.onnx")).unwrap();
    let i = onnx::inspect(&m);
    assert_eq!(i.ops.get("MatMul"), Some(&3));
    assert_eq!(
        i.parameters,
        64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    );
    assert_eq!(i.bytes_by_dtype.get("float"), Some(&(i.parameters * 4)));
}
