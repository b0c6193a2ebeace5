use super::*;

const MARKER: &[u8] = b"KOMPRESS-TEST-SECRET-";

/// 1024 bytes (the size of B0, 256 floats) that start with MARKER; every 4-byte group is a
/// finite float, so a model reading it as weights runs.
fn secret() -> Vec<u8> {
    let mut v = MARKER.to_vec();
    while v.len() < 1024 {
        v.extend(b"password=hunter2;");
    }
    v.truncate(1024);
    v
}

/// An MLP 64 -> 256 -> 10 whose bias B0 is external at `location`; the rest inline.
/// Returns the model path. The directory is `case/m`.
fn model_with_external_bias(case: &Case, location: &str) -> PathBuf {
    let mdir = case.path().join("m");
    std::fs::create_dir_all(&mdir).unwrap();
    let mut m = mlp(&[64, 256, 10], 5);
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if t.name() == "B0" {
            assert_eq!(payload(t).len(), 1024);
            t.raw_data = None;
            t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            t.external_data = vec![entry("location", location)];
        }
    }
    let p = mdir.join("model.onnx");
    encode(&m, &p);
    p
}

fn job(case: &Case, model: &Path) -> String {
    let data = case.path().join("data.npz");
    mlp_dataset(&data, 16, 64, 10);
    let mut job = case.digits();
    job.model = s(model);
    job.dataset = s(&data);
    job.thresholds = LOOSE_GATE.into();
    job.yaml()
}

fn secret_is_nowhere(case: &Case) {
    for f in files_under(&case.out()) {
        let bytes = std::fs::read(case.out().join(&f)).unwrap();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            "the secret's bytes were published in {f}"
        );
    }
}

const OUTSIDE: &str = "outside the model's directory";
const NOT_REGULAR: &str = "not a regular file";

#[test]
fn locations_that_lead_out_of_the_model_directory_or_to_special_files_are_refused() {
    use std::os::unix::fs::symlink;
    type Setup = fn(&Path, &Path) -> &'static str;
    // (what, setup(model dir, elsewhere) -> location, expected words)
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "absolute symlink to a secret",
            |m, e| {
                symlink(e.join("secret.txt"), m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            OUTSIDE,
        ),
        (
            "relative symlink to a secret",
            |m, _| {
                symlink("../elsewhere/secret.txt", m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            OUTSIDE,
        ),
        (
            "a chain of symlinks, the last one out",
            |m, _| {
                symlink("../elsewhere/secret.txt", m.join("hop.bin")).unwrap();
                symlink("hop.bin", m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            OUTSIDE,
        ),
        (
            "a subfolder that is a symlink out",
            |m, e| {
                std::fs::copy(e.join("secret.txt"), e.join("leak.bin")).unwrap();
                symlink(e, m.join("sub")).unwrap();
                "sub/leak.bin"
            },
            OUTSIDE,
        ),
        (
            "a symlink to /dev/zero",
            |m, _| {
                symlink("/dev/zero", m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            "outside the model's directory|not a regular file",
        ),
        (
            "a symlink to /proc/self/environ",
            |m, _| {
                symlink("/proc/self/environ", m.join("env.bin")).unwrap();
                "env.bin"
            },
            "outside the model's directory|not a regular file",
        ),
        (
            "a symlink to a FIFO elsewhere",
            |m, e| {
                mkfifo(&e.join("pipe"));
                symlink(e.join("pipe"), m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            "outside the model's directory|not a regular file",
        ),
        (
            "a FIFO in the model's directory",
            |m, _| {
                mkfifo(&m.join("fifo.bin"));
                "fifo.bin"
            },
            NOT_REGULAR,
        ),
        (
            "a directory",
            |m, _| {
                std::fs::create_dir(m.join("dir.bin")).unwrap();
                "dir.bin"
            },
            NOT_REGULAR,
        ),
        (
            "a symlink to a directory inside",
            |m, _| {
                std::fs::create_dir(m.join("inner")).unwrap();
                symlink("inner", m.join("leak.bin")).unwrap();
                "leak.bin"
            },
            NOT_REGULAR,
        ),
    ];
    let mut checks = Cases::new();
    for (what, setup, words) in cases {
        checks.case(what, || {
            let case = Case::new();
            let elsewhere = case.path().join("elsewhere");
            std::fs::create_dir(&elsewhere).unwrap();
            std::fs::write(elsewhere.join("secret.txt"), secret()).unwrap();
            let mdir = case.path().join("m");
            std::fs::create_dir(&mdir).unwrap();
            let location = setup(&mdir, &elsewhere);
            let model = model_with_external_bias(&case, location);
            let f = case.run_with(&job(&case, &model), &[], &[], 20);
            assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
            assert!(
                says(&f.stderr, &[location, words]),
                "{what}: the message should name `{location}` and say {words:?}: {}",
                f.stderr
            );
            nothing_promoted(&case.out(), &case.production());
            secret_is_nowhere(&case);
        });
    }
    checks.finish();
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

#[test]
fn locations_in_subfolders_of_the_model_directory_are_accepted() {
    let mut checks = Cases::new();
    for (i, layout) in [
        ["data/w.bin", "data/w.bin"],
        ["data/w.bin", "data/b.bin"],
        ["a/b/c/deep.bin", "./weights/b.bin"],
        ["model.onnx.d/ä ö.bin", "x.bin"],
    ]
    .iter()
    .enumerate()
    {
        checks.case(format!("{layout:?}"), || {
            let case = Case::new();
            let mdir = case.path().join("m");
            let mut m = mlp(&[64, 48, 10], 9);
            externalize(
                &mut m,
                &mdir,
                &|n| {
                    Some(if n.starts_with('W') {
                        layout[0].to_string()
                    } else {
                        layout[1].to_string()
                    })
                },
                i * 37,
                i * 11,
            );
            let model = mdir.join("model.onnx");
            encode(&m, &model);
            let f = case.run_with(&job(&case, &model), &["-o", "json"], &[], 60);
            assert_eq!(f.code, Some(0), "{layout:?}: {}", f.describe());
            let report: Value = serde_json::from_str(&f.stdout).unwrap();
            let ext = report["externalData"].as_array().unwrap();
            for loc in layout {
                let file = mdir.join(loc);
                assert!(
                    ext.iter().any(|e| e["sha256"] == sha256_hex(&file)),
                    "{layout:?}: {loc} not in the report: {ext:?}"
                );
            }
        });
    }
    checks.finish();
}
