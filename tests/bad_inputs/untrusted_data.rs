use super::*;

/// A `.npy` file with this header text (padded and terminated as numpy does) and data.
fn npy(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h);
    out.extend(data);
    out
}

fn header(descr: &str, shape: &str) -> Vec<u8> {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}").into_bytes()
}

fn f32s(n: usize) -> Vec<u8> {
    lcg(n, 3).iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn labels(n: usize) -> Vec<u8> {
    npy(
        &header("<i8", &format!("({n},)")),
        &(0..n as i64)
            .map(|i| i % 10)
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// An npz of raw members, stored or deflated (level 9), zip64 entries when `large`.
fn npz(members: &[(&str, Vec<u8>)], deflate: bool, large: bool) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(deflate.then_some(9))
        .large_file(large);
    for (name, bytes) in members {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// The digits job on a dataset file with these bytes.
fn digits_on(case: &Case, file: &str, bytes: &[u8]) -> String {
    let p = case.path().join(file);
    std::fs::write(&p, bytes).unwrap();
    let mut job = case.digits();
    job.dataset = s(&p);
    job.yaml()
}

fn input_member(h: &[u8], data: &[u8]) -> Vec<u8> {
    npz(
        &[("input", npy(h, data)), ("labels", labels(4))],
        false,
        false,
    )
}

#[test]
fn npy_headers_and_payloads_that_lie_fail_permanently() {
    let ok = || header("<f4", "(4, 64)");
    let huge = "shape|too large|overflow|elements|addressed|exceeds|more than";
    let bad_header = "header|shape";
    let mut non_ascii = ok();
    non_ascii[12] = 0xff; // inside 'descr'
    let mut utf8 = ok();
    utf8.splice(3..3, "é".bytes());
    let mut bad_magic = npy(&ok(), &f32s(256));
    bad_magic[1] = b'X';
    let mut version9 = npy(&ok(), &f32s(256));
    version9[6] = 9;
    let mut long_len = npy(&ok(), &f32s(4));
    long_len[8..10].copy_from_slice(&60000u16.to_le_bytes());
    let mut zero_len = npy(&ok(), &f32s(256));
    zero_len[8..10].copy_from_slice(&0u16.to_le_bytes());
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero samples", npz(&[("input", npy(&header("<f4", "(0, 64)"), &[])), ("labels", labels(0))], false, false), "0 samples|no samples|empty|zero"),
        ("zero samples, deflated", npz(&[("input", npy(&header("<f4", "(0, 64)"), &[])), ("labels", labels(0))], true, false), "0 samples|no samples|empty|zero"),
        ("fewer labels than samples", npz(&[("input", npy(&ok(), &f32s(256))), ("labels", labels(3))], false, false), "labels"),
        ("'shape': )", input_member(&header("<f4", ")"), &f32s(256)), bad_header),
        ("'shape': (", input_member(&header("<f4", "("), &f32s(256)), bad_header),
        ("'shape': (4, 64 unclosed", input_member(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64", &f32s(256)), bad_header),
        ("negative dimension", input_member(&header("<f4", "(-4, 64)"), &f32s(256)), bad_header),
        ("fractional dimension", input_member(&header("<f4", "(4.5, 64)"), &f32s(256)), bad_header),
        ("no shape key", input_member(b"{'descr': '<f4', 'fortran_order': False, }", &f32s(256)), bad_header),
        ("a non-ASCII byte in the header", input_member(&non_ascii, &f32s(256)), "ascii|header"),
        ("UTF-8 in the header", input_member(&utf8, &f32s(256)), "ascii|header"),
        ("shape product overflows u64", input_member(&header("<f4", "(1099511627776, 1099511627776)"), &f32s(256)), huge),
        ("a dimension of u64::MAX", input_member(&header("<f4", "(18446744073709551615, 64)"), &f32s(256)), huge),
        ("bytes overflow, elements do not", input_member(&header("<f4", "(4611686018427387904, 4)"), &f32s(256)), huge),
        ("a dimension past u64", input_member(&header("<f4", "(99999999999999999999999, 64)"), &f32s(256)), huge),
        ("a huge shape over a small payload", input_member(&header("<f4", "(1000000000, 64)"), &f32s(256)), "truncated|bytes|short|size|ends|expected"),
        ("payload cut short", input_member(&ok(), &f32s(25)), "truncated|bytes|short|size|ends|expected"),
        ("header only", input_member(&ok(), &[]), "truncated|bytes|short|size|ends|expected"),
        ("bad magic", input_member_raw(bad_magic), "magic|not a .npy|npy"),
        ("format version 9", input_member_raw(version9), "version"),
        ("header length past the end", input_member_raw(long_len), "header|truncated|ends|short"),
        ("header length 0", input_member_raw(zero_len), "header"),
        ("an empty member", input_member_raw(Vec::new()), "empty|magic|npy|truncated|short"),
        ("unknown dtype", input_member(&header("<f999", "(4, 64)"), &f32s(256)), "dtype|<f999"),
        ("big-endian floats", input_member(&header(">f4", "(4, 64)"), &f32s(256)), "dtype|>f4|endian"),
        ("not a zip at all", b"\x00\x01 this is not an npz file".to_vec(), "zip|npz"),
        ("an empty file", Vec::new(), "empty|zip|npz"),
        ("a zip cut in half", { let z = input_member(&ok(), &f32s(256)); z[..z.len() / 2].to_vec() }, "zip|npz|truncated|corrupt"),
    ];
    let n = cases.len();
    let mut checks = Cases::new();
    for (i, (what, bytes, words)) in cases.into_iter().enumerate() {
        checks.case(what, || {
            let case = Case::new();
            let file = format!("set {i} of {n}.npz");
            let f = fails(
                &case,
                &digits_on(&case, &file, &bytes),
                PERMANENT,
                &[],
                10.0,
            );
            assert!(
                says(&f.stderr, &[&file, words]),
                "{what}: should name `{file}` and say {words:?}:\n{}",
                f.stderr
            );
        });
    }
    checks.finish();
}

fn input_member_raw(npy_bytes: Vec<u8>) -> Vec<u8> {
    npz(&[("input", npy_bytes), ("labels", labels(4))], false, false)
}

/// Byte offsets of every `sig` in `z`.
fn find_all(z: &[u8], sig: &[u8]) -> Vec<usize> {
    z.windows(sig.len())
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect()
}

fn u16_at(z: &[u8], at: usize) -> usize {
    u16::from_le_bytes([z[at], z[at + 1]]) as usize
}

/// Rewrites the uncompressed size the zip records for the member named `member`: in its
/// local header (`local`), its central directory entry (`central`), the 32-bit field, or the
/// zip64 extra field when the entry has one.
fn claim_size(z: &mut [u8], member: &str, size: u64, local: bool, central: bool) {
    let name = format!("{member}.npy");
    let mut patched = 0;
    // (patched?, signature, offset of the name's and the extra's lengths, header length,
    // offset of the 32-bit uncompressed size)
    for (on, sig, lens, header, field) in [
        (local, b"PK\x03\x04", 26, 30, 22),
        (central, b"PK\x01\x02", 28, 46, 24),
    ] {
        if !on {
            continue;
        }
        for at in find_all(z, sig) {
            let (nlen, xlen) = (u16_at(z, at + lens), u16_at(z, at + lens + 2));
            if &z[at + header..at + header + nlen] != name.as_bytes() {
                continue;
            }
            let field = at + field;
            if u32::from_le_bytes(z[field..field + 4].try_into().unwrap()) == u32::MAX {
                // zip64 extra: uncompressed (8) then compressed (8)
                let x = at + header + nlen;
                let z64 = zip64_field(&z[x..x + xlen]).expect("zip64 extra");
                z[x + z64..x + z64 + 8].copy_from_slice(&size.to_le_bytes());
            } else {
                z[field..field + 4]
                    .copy_from_slice(&(size.min(u32::MAX as u64 - 1) as u32).to_le_bytes());
            }
            patched += 1;
        }
    }
    assert!(patched > 0, "no entry for {name}");
}

/// Offset of the zip64 extra field's first value within an extra block.
fn zip64_field(extra: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, i), u16_at(extra, i + 2));
        if id == 1 {
            return Some(i + 4);
        }
        i += 4 + len;
    }
    None
}

#[test]
fn zip_directories_that_claim_huge_members_fail_permanently() {
    const GIB64: u64 = 64 << 30;
    let members = |large| {
        npz(
            &[
                ("input", npy(&header("<f4", "(4, 64)"), &f32s(256))),
                ("labels", labels(4)),
            ],
            false,
            large,
        )
    };
    let deflated = npz(
        &[
            ("input", npy(&header("<f4", "(4, 64)"), &f32s(256))),
            ("labels", labels(4)),
        ],
        true,
        true,
    );
    /// (what, zip, member, claimed size, in the local header, in the central directory)
    type Claim = (&'static str, Vec<u8>, &'static str, u64, bool, bool);
    let cases: Vec<Claim> = vec![
        (
            "64 GiB in zip64, both headers",
            members(true),
            "input",
            GIB64,
            true,
            true,
        ),
        (
            "64 GiB in zip64, central only",
            members(true),
            "input",
            GIB64,
            false,
            true,
        ),
        (
            "u64::MAX in zip64",
            members(true),
            "labels",
            u64::MAX,
            true,
            true,
        ),
        (
            "4 GiB in 32-bit fields",
            members(false),
            "input",
            u32::MAX as u64 - 1,
            true,
            true,
        ),
        (
            "one byte more than stored",
            members(false),
            "input",
            1024 + 129,
            true,
            true,
        ),
        (
            "64 GiB, deflated member",
            deflated,
            "input",
            GIB64,
            true,
            true,
        ),
    ];
    let mut checks = Cases::new();
    for (i, (what, mut z, member, size, local, central)) in cases.into_iter().enumerate() {
        checks.case(what, || {
            claim_size(&mut z, member, size, local, central);
            let case = Case::new();
            let file = format!("claims-{i}.npz");
            let f = case.run_with(&digits_on(&case, &file, &z), &[], &[], 30);
            assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
            assert!(
                says(
                    &f.stderr,
                    &[&file, "zip|size|corrupt|member|claims|declares"]
                ),
                "{what}: {}",
                f.stderr
            );
            nothing_promoted(&case.out(), &case.production());
            assert!(
                f.elapsed < Duration::from_secs(10),
                "{what}: {}",
                f.describe()
            );
        });
    }
    checks.finish();
}

/// An npz whose `input` member declares [4, 64] float32 (1 kB) but inflates to `zeros`
/// bytes of zeros after its header.
fn zip_bomb(zeros: usize) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9))
        .large_file(true);
    z.start_file("input.npy", opts).unwrap();
    z.write_all(&npy(&header("<f4", "(4, 64)"), &[])).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len());
        z.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    z.start_file("labels.npy", opts).unwrap();
    z.write_all(&labels(4)).unwrap();
    z.finish().unwrap().into_inner()
}

#[test]
fn a_zip_bomb_is_refused_with_bounded_memory() {
    let bomb = |mib: usize| {
        let t = std::time::Instant::now();
        let z = zip_bomb(mib << 20);
        eprintln!(
            "zip bomb: {} bytes inflating to {mib} MiB, made in {:.1}s",
            z.len(),
            t.elapsed().as_secs_f64()
        );
        z
    };
    let honest = bomb(200);
    let mut lying = honest.clone();
    claim_size(&mut lying, "input", 1024 + 128, true, true);
    // 1 GiB: inflated whole, it alone would be over the 500 MB bound.
    let big = bomb(1024);
    let mut checks = Cases::new();
    for (what, z) in [
        ("200 MiB, honest zip sizes", honest),
        ("200 MiB, zip sizes that lie", lying),
        ("1 GiB, honest zip sizes", big),
    ] {
        checks.case(what, || {
            let case = Case::new();
            let file = case.path().join("bomb.npz");
            std::fs::write(&file, &z).unwrap();
            let mut job = case.digits();
            job.dataset = s(&file);
            let f = case.run_measured(&job.yaml());
            assert_eq!(f.code, Some(PERMANENT), "{what}: {}", f.describe());
            assert!(says(&f.stderr, &["bomb.npz"]), "{what}: {}", f.stderr);
            nothing_promoted(&case.out(), &case.production());
            eprintln!(
                "{what}: exit {:?} in {:.2}s, peak RSS {:?} kB: {}",
                f.code,
                f.elapsed.as_secs_f64(),
                f.max_rss_kb,
                f.stderr.lines().last().unwrap_or_default()
            );
            fast_and_small(&f, what);
        });
    }
    checks.finish();
}

/// The MLP 64 -> 32 -> 10 with `edit` applied, and a dataset for it.
fn model_job(case: &Case, edit: &dyn Fn(&mut pb::GraphProto), passes: &str) -> (PathBuf, String) {
    let mut m = mlp(&[64, 32, 10], 11);
    edit(m.graph.as_mut().unwrap());
    let (model, mut job) = mlp_job(case, &m, "edited model.onnx");
    job.passes = passes.into();
    job.thresholds = LOOSE_GATE.into();
    (model, job.yaml())
}

#[test]
fn models_whose_graphs_lie_fail_permanently() {
    type Edit = fn(&mut pb::GraphProto);
    use pb::tensor_shape_proto::{Dimension, dimension::Value as Dim};
    fn input_dims(g: &mut pb::GraphProto, dims: Vec<Dimension>) {
        let t = g.input[0].r#type.as_mut().unwrap();
        let Some(pb::type_proto::Value::TensorType(tt)) = t.value.as_mut() else {
            unreachable!()
        };
        tt.shape.as_mut().unwrap().dim = dims;
    }
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("no graph outputs", |g| g.output.clear(), "output"),
        ("no graph inputs", |g| g.input.clear(), "input"),
        (
            "a rank-0 input",
            |g| input_dims(g, vec![]),
            "rank|scalar|shape|dimension",
        ),
        (
            "an input with a zero-width axis",
            |g| {
                input_dims(
                    g,
                    vec![
                        Dimension {
                            value: Some(Dim::DimParam("batch".into())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(Dim::DimValue(0)),
                            ..Default::default()
                        },
                    ],
                )
            },
            "shape|expects|dimension|0",
        ),
        (
            "an output no node produces",
            |g| g.output[0].name = Some("nowhere".into()),
            "nowhere",
        ),
        ("no nodes", |g| g.node.clear(), "logits|output|node"),
    ];
    let mut checks = Cases::new();
    for (what, edit, words) in cases {
        checks.case(what, || {
            let case = Case::new();
            let (_, yaml) = model_job(&case, &edit, INT8);
            let f = fails(&case, &yaml, PERMANENT, &[], 10.0);
            assert!(
                says(&f.stderr, &["edited model.onnx", words]),
                "{what}: should name the model and say {words:?}:\n{}",
                f.stderr
            );
        });
    }
    checks.finish();
}

/// Gives W0 these dims, keeping its small payload.
fn w0_dims(dims: &'static [i64]) -> impl Fn(&mut pb::GraphProto) {
    move |g| {
        for t in &mut g.initializer {
            if t.name() == "W0" {
                t.dims = dims.to_vec();
            }
        }
    }
}

/// `kompress compress` (passes only, no ORT) on the model: must exit 65 quickly naming W0,
/// writing no large file.
fn compress_fails(case: &Case, model: &Path, yaml: &str, what: &str) {
    let job = case.write("compress-job.yaml", yaml);
    let out = case.path().join("compressed.onnx");
    let f = run_bounded(
        &[
            "compress",
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            "-f",
            job.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
        true,
    );
    assert!(
        !f.timed_out && f.signal.is_none(),
        "{what}: {}",
        f.describe()
    );
    assert_eq!(
        f.code,
        Some(PERMANENT),
        "compress, {what}: {}",
        f.describe()
    );
    assert!(
        says(
            &f.stderr,
            &["W0", "dims|shape|elements|overflow|size|bytes"]
        ),
        "compress, {what}: {}",
        f.stderr
    );
    fast_and_small(&f, what);
    let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(written < 1 << 20, "{what}: compress wrote {written} bytes");
}

/// A failure that came fast (under 10 s) and small (peak RSS under 500 MB, where
/// `/usr/bin/time` measured it).
fn fast_and_small(f: &Finished, what: &str) {
    assert!(
        f.elapsed < Duration::from_secs(10),
        "{what}: {}",
        f.describe()
    );
    match f.max_rss_kb {
        Some(kb) => assert!(
            kb < 500 * 1024,
            "{what}: peak RSS {} MB >= 500 MB",
            kb / 1024
        ),
        None => eprintln!("NOTE: no /usr/bin/time here: peak RSS not checked"),
    }
}

#[test]
fn n_m_pruning_on_tensors_whose_dims_overflow_fails_permanently() {
    const DIMS: &[&[i64]] = &[
        &[i64::MAX, 2],
        &[1 << 40, 1 << 40],
        &[1 << 31, 1 << 31],
        &[1 << 62, 4],
        &[-1, 32],
        &[64, -32],
    ];
    let mut checks = Cases::new();
    for dims in DIMS {
        checks.case(format!("{dims:?}"), || {
            for pattern in ["2:4", "1:8"] {
                let what = format!("{dims:?}, pattern {pattern}");
                let case = Case::new();
                let passes = format!("    - prune:\n        pattern: \"{pattern}\"");
                let (model, yaml) = model_job(&case, &w0_dims(dims), &passes);
                let f = fails(&case, &yaml, PERMANENT, &[], 10.0);
                assert!(
                    says(&f.stderr, &["edited model.onnx", "W0|dims|shape"]),
                    "{what}: {}",
                    f.stderr
                );
                compress_fails(&case, &model, &yaml, &what);
            }
        });
    }
    checks.finish();
}

#[test]
fn passes_on_a_tensor_claiming_2_36_by_2_28_elements_fail_fast_and_small() {
    const DIMS: &[i64] = &[1 << 36, 1 << 28];
    let mut checks = Cases::new();
    for passes in [
        INT8,
        "    - quantize: {}",
        "    - quantize:\n        mode: weightOnly\n        perChannel: true",
        FP16,
        "    - prune:\n        sparsity: 0.5",
    ] {
        checks.case(passes.trim().to_string(), || {
            let case = Case::new();
            let (model, yaml) = model_job(&case, &w0_dims(DIMS), passes);
            let f = case.run_measured(&yaml);
            assert_eq!(f.code, Some(PERMANENT), "{passes}: {}", f.describe());
            assert!(
                says(&f.stderr, &["edited model.onnx", "W0|dims|shape"]),
                "{passes}: {}",
                f.stderr
            );
            fast_and_small(&f, passes);
            nothing_promoted(&case.out(), &case.production());
            let total: u64 = files_under(&case.out())
                .iter()
                .map(|p| std::fs::metadata(case.out().join(p)).unwrap().len())
                .sum();
            assert!(total < 1 << 20, "{passes}: {total} bytes written");
            compress_fails(&case, &model, &yaml, passes);
        });
    }
    checks.finish();
}
