//! ONNX I/O: lossless round trips, external data, and clear errors for broken files.

mod support;

use kompress::onnx::{self, SaveOptions, TensorData};
use prost::Message;
use support::*;

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
    let files = onnx::external_locations(&ext, &ext).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].location, "model.onnx.data");
    assert_eq!(
        files[0].max_bytes,
        std::fs::metadata(ext_dir.join("model.onnx.data"))
            .unwrap()
            .len(),
        "the cap is the end of the last tensor, which is the end of the file save() wrote"
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
    assert_eq!(outputs(&inline, &data, 16), outputs(&ext, &data, 16));
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

/// Moves initializer `idx` of `m` to `dir/location` (at `offset`), with an explicit length.
fn externalize(
    m: &mut onnx::pb::ModelProto,
    idx: usize,
    dir: &std::path::Path,
    location: &str,
    offset: usize,
) {
    let t = &mut m.graph.as_mut().unwrap().initializer[idx];
    let raw = t.raw_data.take().unwrap();
    let file = dir.join(location);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(&raw);
    std::fs::write(&file, bytes).unwrap();
    let kv = |k: &str, v: String| onnx::pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    t.data_location = Some(onnx::pb::tensor_proto::DataLocation::External as i32);
    t.external_data = vec![
        kv("location", location.into()),
        kv("offset", offset.to_string()),
        kv("length", raw.len().to_string()),
    ];
}

fn load_err(path: &std::path::Path) -> String {
    kompress::error::error_chain(&onnx::load(path).unwrap_err())
}

#[test]
fn external_data_in_subfolders_loads_like_inline_data() {
    let dir = tempfile::tempdir().unwrap();
    let inline = mlp(&[32, 64, 10], 4);
    for (i, location) in ["data/w.bin", "./deep/er/w 1.bin", "ünï.bin"]
        .iter()
        .enumerate()
    {
        let mut m = inline.clone();
        externalize(&mut m, 0, dir.path(), location, 64 * i);
        let path = dir.path().join(format!("m{i}.onnx"));
        write_model(&m, &path);
        let loaded = onnx::load(&path).unwrap_or_else(|e| panic!("{location}: {e}"));
        assert_eq!(
            loaded.graph().initializer[0].raw_data,
            inline.graph.as_ref().unwrap().initializer[0].raw_data,
            "{location}"
        );
        let files = onnx::external_locations(&path, &path).unwrap();
        assert_eq!(files[0].location, location.trim_start_matches("./"));
    }
}

#[test]
fn external_data_never_leaves_the_model_directory_or_reads_special_files() {
    let root = tempfile::tempdir().unwrap();
    let (dir, outside) = (root.path().join("model"), root.path().join("secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let base = mlp(&[32, 64, 10], 5);
    let need = base.graph.as_ref().unwrap().initializer[0]
        .raw_data
        .as_ref()
        .unwrap()
        .len();
    std::fs::write(outside.join("secret.txt"), vec![b'S'; need]).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("leak.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.bin")).unwrap();
    std::fs::create_dir_all(dir.join("adir")).unwrap();
    let fifo = dir.join("fifo.bin");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink("fifo.bin", dir.join("tofifo.bin")).unwrap();
    let cases = [
        ("leak.bin", "outside the model's directory"),
        ("sub/secret.txt", "outside the model's directory"),
        ("zero.bin", "outside the model's directory"),
        ("fifo.bin", "not a regular file"),
        ("tofifo.bin", "not a regular file"),
        ("adir", "not a regular file"),
    ];
    for (i, (location, why)) in cases.iter().enumerate() {
        let mut m = base.clone();
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        t.raw_data = None;
        t.data_location = Some(onnx::pb::tensor_proto::DataLocation::External as i32);
        t.external_data = vec![onnx::pb::StringStringEntryProto {
            key: Some("location".into()),
            value: Some(location.to_string()),
        }];
        let path = dir.join(format!("m{i}.onnx"));
        write_model(&m, &path);
        let e = load_err(&path);
        assert!(e.contains(why) && e.contains(location), "{location}: {e}");
    }
}

#[test]
fn external_reads_stop_at_what_the_tensors_declare() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = mlp(&[32, 64, 10], 6);
    externalize(&mut m, 0, dir.path(), "w.bin", 0);
    let declared = std::fs::metadata(dir.path().join("w.bin")).unwrap().len();
    // 8 MiB of trailing junk is neither read nor counted.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("w.bin"))
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![0u8; 8 << 20]).unwrap();
    let path = dir.path().join("model.onnx");
    write_model(&m, &path);
    let loaded = onnx::load(&path).unwrap();
    assert_eq!(
        loaded.file_bytes,
        std::fs::metadata(&path).unwrap().len() + declared
    );
    let files = onnx::external_locations(&path, &path).unwrap();
    assert_eq!(files[0].max_bytes, declared);

    // A length that disagrees with the dims, and a location naming the model itself.
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.external_data[2].value = Some("12".into());
    write_model(&m, &path);
    assert!(load_err(&path).contains("`length` is 12 bytes but dims"));
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.external_data = vec![onnx::pb::StringStringEntryProto {
        key: Some("location".into()),
        value: Some("./model.onnx".into()),
    }];
    write_model(&m, &path);
    assert!(load_err(&path).contains("names the model file itself"));
}

#[test]
fn tensors_whose_payload_disagrees_with_their_dims_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    let base = mlp(&[32, 64, 10], 7);
    let cases: Vec<(Vec<i64>, &str)> = vec![
        (vec![1 << 36, 1 << 28], "overflows"),
        (vec![-1, 64], "negative"),
        (vec![i64::MAX, 2], "overflow"),
        (vec![64, 64], "raw_data holds"),
        (vec![33, 64], "raw_data holds"),
        (vec![16, 64, 3], "raw_data holds"),
    ];
    for (dims, why) in cases {
        let mut m = base.clone();
        m.graph.as_mut().unwrap().initializer[0].dims = dims.clone();
        write_model(&m, &path);
        let e = load_err(&path);
        assert!(e.contains(why) && e.contains("W0"), "{dims:?}: {e}");
    }
    let mut m = base.clone();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    let raw = t.raw_data.take().unwrap();
    t.float_data = raw
        .chunks_exact(4)
        .skip(1)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    write_model(&m, &path);
    assert!(load_err(&path).contains("float_data holds 2047 values"));
}
