use super::*;

/// The digits evaluation set plus a 1 MiB `padding` array (not a model input, so unused):
/// larger than the model's weights, so weights read from it by mistake would load and
/// give a garbage model, as in the issue, instead of failing to load.
fn padded_digits_dataset(path: &Path) {
    use std::io::Write;
    let src = std::fs::File::open(digits_data()).unwrap();
    let mut src = zip::ZipArchive::new(src).unwrap();
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..src.len() {
        z.raw_copy_file(src.by_index_raw(i).unwrap()).unwrap();
    }
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("padding.npy", opts).unwrap();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (262144,), }".to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    npy.extend((h.len() as u16).to_le_bytes());
    npy.extend(h.as_bytes());
    npy.extend(
        lcg(262_144, 8)
            .iter()
            .flat_map(|v| (v * 0.01).to_le_bytes()),
    );
    z.write_all(&npy).unwrap();
    z.finish().unwrap();
}

/// (model file name, external location for each tensor kind, dataset file name, offsets)
struct Layout {
    model_file: &'static str,
    weights: &'static str,
    biases: &'static str,
    dataset_file: &'static str,
    start: usize,
    gap: usize,
}

const LAYOUTS: &[Layout] = &[
    Layout {
        model_file: "model.onnx",
        weights: "dataset.npz",
        biases: "dataset.npz",
        dataset_file: "dataset.npz",
        start: 0,
        gap: 0,
    },
    Layout {
        model_file: "model.onnx",
        weights: "eval.npz",
        biases: "eval.npz",
        dataset_file: "eval.npz",
        start: 7,
        gap: 3,
    },
    Layout {
        model_file: "net.onnx",
        weights: "model.onnx",
        biases: "model.onnx.data",
        dataset_file: "model.onnx.data",
        start: 4096,
        gap: 64,
    },
    Layout {
        model_file: "model.onnx",
        weights: "candidate/model.onnx",
        biases: "candidate/model.onnx",
        dataset_file: "model.npz",
        start: 13,
        gap: 1000,
    },
    Layout {
        model_file: "model.onnx",
        weights: "dataset/eval.npz",
        biases: "model/model.onnx",
        dataset_file: "eval.npz",
        start: 1,
        gap: 1,
    },
    Layout {
        model_file: "m.onnx",
        weights: "verify/model.onnx",
        biases: "input/dataset.npz",
        dataset_file: "dataset.npz",
        start: 100,
        gap: 5,
    },
    Layout {
        model_file: "model.onnx",
        weights: "weights.bin",
        biases: "report.json",
        dataset_file: "weights.bin",
        start: 0,
        gap: 17,
    },
];

#[test]
fn external_data_named_like_scratch_files_is_evaluated_with_its_real_weights() {
    // The accuracy of the real weights: the bundled model, no external data.
    let base = Case::new();
    let (_, plain) = base.run_json(&base.digits().yaml());
    let real_accuracy = plain["result"]["baseline"]["accuracy"].as_f64().unwrap();

    // A harmless name first, then every colliding layout.
    let harmless = Layout {
        model_file: "model.onnx",
        weights: "weights-harmless.bin",
        biases: "weights-harmless.bin",
        dataset_file: "eval.npz",
        start: 0,
        gap: 0,
    };
    let mut checks = Cases::new();
    for (i, l) in std::iter::once(&harmless).chain(LAYOUTS).enumerate() {
        checks.case(format!("layout {i}"), || {
            let case = Case::new();
            let mdir = case.path().join("m");
            let mut m = decode(&digits_model());
            externalize(
                &mut m,
                &mdir,
                &|name| {
                    Some(if name.contains("weight") {
                        l.weights.to_string()
                    } else {
                        l.biases.to_string()
                    })
                },
                l.start,
                l.gap,
            );
            let model = mdir.join(l.model_file);
            encode(&m, &model);
            let data = case.path().join("d").join(l.dataset_file);
            std::fs::create_dir_all(data.parent().unwrap()).unwrap();
            padded_digits_dataset(&data);
            let mut job = case.digits();
            job.model = s(&model);
            job.dataset = s(&data);
            let (f, out) = case.run_json(&job.yaml());
            let what = format!(
                "layout {i} ({} / {} / {} / dataset {})",
                l.model_file, l.weights, l.biases, l.dataset_file
            );

            // The report read from where the run says it wrote it.
            let report_path = out["result"]["report"].as_str().unwrap();
            let report: Value =
                serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
            assert_eq!(report["model"]["sha256"], sha256_hex(&model), "{what}");
            assert_eq!(report["dataset"]["sha256"], sha256_hex(&data), "{what}");
            let ext = report["externalData"].as_array().unwrap();
            let mut locations = vec![l.weights, l.biases];
            locations.dedup();
            assert_eq!(ext.len(), locations.len(), "{what}: {ext:?}");
            for loc in locations {
                let e = ext
                    .iter()
                    .find(|e| e["uri"].as_str().unwrap().ends_with(loc))
                    .unwrap_or_else(|| panic!("{what}: no externalData entry for {loc}: {ext:?}"));
                assert_eq!(e["sha256"], sha256_hex(&mdir.join(loc)), "{what}: {loc}");
            }
            assert_eq!(
                report["result"]["baseline"]["accuracy"].as_f64(),
                Some(real_accuracy),
                "{what}: the baseline must be the real weights' accuracy\n{}",
                f.stderr
            );
            assert_eq!(report["result"]["verdict"], "Passed", "{what}");
            check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
        });
    }
    checks.finish();
}
