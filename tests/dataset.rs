//! The evaluation set reader on hostile and large `.npz` files the tests build themselves
//! (stored and deflated members): lying zip directories, zip bombs, empty sets, batch
//! streaming equal to a whole read with memory bounded by the batch; and the evaluation loop
//! on those sets (needs the ONNX Runtime library, like tests/pipeline.rs).

mod support;

use kompress::eval::{self, ArrayData, Dataset, EvalConfig, dataset::Error};
use kompress::onnx::pb;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use zip::CompressionMethod::{Deflated, Stored};

// ---- memory accounting: the peak resident set while a closure runs ----
//
// Measured tests run alone in a child process (this test binary, that one test), so the
// process's peak RSS is theirs: Linux resets the peak on a write of 5 to clear_refs.

/// In the parent: runs `test` alone in a child process, forwards its output, checks it passed,
/// and returns false. In that child: true (run the body).
fn alone(test: &str) -> bool {
    if std::env::var_os("KOMPRESS_TEST_ALONE").is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("KOMPRESS_TEST_ALONE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} alone: {}\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// Runs `f`; returns its result, how far the process's peak resident set rose above the
/// resident set at the start (the whole child's peak where the kernel cannot reset it), and
/// the time taken. Only meaningful in a test that runs `alone`.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let base = if reset {
        support::status_bytes("VmRSS:")
    } else {
        0
    };
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    let peak = support::status_bytes("VmHWM:").saturating_sub(base);
    (out, peak, took)
}

const MB: usize = 1 << 20;

// ---- npy / npz builders ----

fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(" ")
    );
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out
}

fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let mut out = npy_header(descr, shape);
    out.extend(body);
    out
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An npz of `(name, member bytes)`, every member stored or deflated.
fn write_npz(path: &Path, method: zip::CompressionMethod, members: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// An npz with one member: `header` then `zeros` zero bytes, written in chunks.
fn write_zeros_npz(
    path: &Path,
    method: zip::CompressionMethod,
    name: &str,
    header: &[u8],
    zeros: usize,
) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(zeros > u32::MAX as usize / 2);
    z.start_file(format!("{name}.npy"), opts).unwrap();
    z.write_all(header).unwrap();
    let chunk = vec![0u8; MB];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len());
        z.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    z.finish().unwrap();
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Offsets of the central directory entries and of each entry's local header.
fn entries(b: &[u8]) -> Vec<(usize, usize)> {
    let eocd = (0..=b.len() - 22)
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .unwrap();
    let (n, mut at) = (u16_at(b, eocd + 10), u32_at(b, eocd + 16) as usize);
    let mut out = Vec::new();
    for _ in 0..n {
        assert_eq!(b[at..at + 4], [0x50, 0x4b, 0x01, 0x02]);
        out.push((at, u32_at(b, at + 42) as usize));
        at += 46 + u16_at(b, at + 28) + u16_at(b, at + 30) + u16_at(b, at + 32);
    }
    out
}

/// Rewrites what the zip directory (and the local header) says about an entry's sizes: in
/// the 32-bit fields, or in the zip64 extra field where the entry has one.
fn set_sizes(b: &mut [u8], entry: usize, uncompressed: Option<u64>, compressed: Option<u64>) {
    let (cd, local) = entries(b)[entry];
    for (base, csize_at, extra_len_at, name_len_at, fixed) in
        [(cd, 20, 30, 28, 46), (local, 18, 28, 26, 30)]
    {
        let zip64 = u32_at(b, base + csize_at + 4) == u32::MAX;
        if zip64 {
            let extra = base + fixed + u16_at(b, base + name_len_at);
            let end = extra + u16_at(b, base + extra_len_at);
            let mut at = extra;
            while at + 4 <= end {
                let (id, len) = (u16_at(b, at), u16_at(b, at + 2));
                if id == 1 {
                    if let Some(u) = uncompressed {
                        b[at + 4..at + 12].copy_from_slice(&u.to_le_bytes());
                    }
                    if let Some(c) = compressed {
                        b[at + 12..at + 20].copy_from_slice(&c.to_le_bytes());
                    }
                }
                at += 4 + len;
            }
        } else {
            if let Some(u) = uncompressed {
                b[base + csize_at + 4..base + csize_at + 8]
                    .copy_from_slice(&(u.min(u32::MAX as u64 - 1) as u32).to_le_bytes());
            }
            if let Some(c) = compressed {
                b[base + csize_at..base + csize_at + 4]
                    .copy_from_slice(&(c.min(u32::MAX as u64 - 1) as u32).to_le_bytes());
            }
        }
    }
}

fn open(path: &Path) -> Result<Dataset, Error> {
    Dataset::open(path, "s3://bucket/sets/eval.npz")
}

fn err_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(": ");
        s.push_str(&x.to_string());
        c = x.source();
    }
    s
}

/// The error of opening `path`, which must fail, name the URI, not the scratch path, and not
/// render an empty name.
fn open_err(path: &Path) -> String {
    let e = err_text(&open(path).expect_err("opened"));
    assert!(e.contains("s3://bucket/sets/eval.npz"), "{e}");
    assert!(!e.contains(&path.display().to_string()), "{e}");
    assert!(!e.contains("``") && !e.contains("  "), "{e}");
    e
}

/// Reads every member of `path` whole and in batches of each size, and checks both against the
/// arrays the test wrote.
fn check_streaming(path: &Path, want: &[(&str, Vec<usize>, ArrayData)]) {
    let ds = open(path).unwrap();
    for (name, shape, data) in want {
        let whole = ds.read(name).unwrap();
        assert_eq!(&whole.shape, shape, "{name}");
        assert_eq!(&whole.data, data, "{name}");
        let n = shape[0];
        for batch in [1, 2, 3, 7, n.max(1), n + 5] {
            let mut archive = eval::Archive::default();
            let mut rows = ds.rows(name, &mut archive).unwrap();
            let mut got: Vec<ArrayData> = Vec::new();
            let mut start = 0;
            while start < n {
                let k = batch.min(n - start);
                let a = rows.read(k).unwrap();
                assert_eq!(a.shape[0], k);
                assert_eq!(a.shape[1..], shape[1..]);
                got.push(a.data);
                start += k;
            }
            assert_eq!(rows.remaining(), 0);
            assert!(rows.read(1).is_err(), "past the end");
            rows.finish().unwrap();
            assert_eq!(concat(got, &whole.data), whole.data, "{name} batch {batch}");
        }
        // Random access agrees with the whole read too.
        for (start, count) in [(0, n), (n / 2, n - n / 2), (n.saturating_sub(1), 1.min(n))] {
            let a = ds.read_rows(name, start, count).unwrap();
            let per = whole.data.len() / n.max(1);
            assert_eq!(
                a.data,
                slice(&whole.data, start * per, (start + count) * per),
                "{name} rows {start}+{count}"
            );
        }
        assert!(ds.read_rows(name, n, 1).is_err());
        assert!(ds.read_rows(name, usize::MAX, 2).is_err());
    }
}

fn concat(parts: Vec<ArrayData>, like: &ArrayData) -> ArrayData {
    macro_rules! cat {
        ($variant:ident) => {{
            let mut v = Vec::new();
            for p in parts {
                let ArrayData::$variant(x) = p else {
                    panic!("dtype changed")
                };
                v.extend(x);
            }
            ArrayData::$variant(v)
        }};
    }
    match like {
        ArrayData::F32(_) => cat!(F32),
        ArrayData::F64(_) => cat!(F64),
        ArrayData::F16(_) => cat!(F16),
        ArrayData::I64(_) => cat!(I64),
        ArrayData::I32(_) => cat!(I32),
        ArrayData::I8(_) => cat!(I8),
        ArrayData::U8(_) => cat!(U8),
        ArrayData::Bool(_) => cat!(Bool),
    }
}

fn slice(d: &ArrayData, a: usize, b: usize) -> ArrayData {
    match d {
        ArrayData::F32(v) => ArrayData::F32(v[a..b].to_vec()),
        ArrayData::F64(v) => ArrayData::F64(v[a..b].to_vec()),
        ArrayData::F16(v) => ArrayData::F16(v[a..b].to_vec()),
        ArrayData::I64(v) => ArrayData::I64(v[a..b].to_vec()),
        ArrayData::I32(v) => ArrayData::I32(v[a..b].to_vec()),
        ArrayData::I8(v) => ArrayData::I8(v[a..b].to_vec()),
        ArrayData::U8(v) => ArrayData::U8(v[a..b].to_vec()),
        ArrayData::Bool(v) => ArrayData::Bool(v[a..b].to_vec()),
    }
}

#[test]
fn batch_streaming_is_bit_identical_to_a_whole_read_stored_and_deflated() {
    let dir = tempfile::tempdir().unwrap();
    for n in [1usize, 5, 33] {
        let x = support::lcg(n * 6, n as u64);
        let ids: Vec<i64> = (0..n as i64).map(|i| i * 7 - 3).collect();
        let bytes: Vec<u8> = (0..n * 4).map(|i| (i * 31 % 251) as u8).collect();
        let halfs: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let members = [
            ("input", npy("<f4", &[n, 2, 3], &f32s(&x))),
            ("ids", npy("<i8", &[n], &i64s(&ids))),
            ("pixels", npy("|u1", &[n, 4], &bytes)),
            (
                "h",
                npy(
                    "<f2",
                    &[n, 6],
                    &halfs
                        .iter()
                        .flat_map(|h| h.to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
            ),
            ("z", npy("<f4", &[n, 0], &[])),
        ];
        let want = [
            ("input", vec![n, 2, 3], ArrayData::F32(x.clone())),
            ("ids", vec![n], ArrayData::I64(ids.clone())),
            ("pixels", vec![n, 4], ArrayData::U8(bytes.clone())),
            ("h", vec![n, 6], ArrayData::F16(halfs.clone())),
            ("z", vec![n, 0], ArrayData::F32(vec![])),
        ];
        for method in [Stored, Deflated] {
            let p = dir.path().join(format!("d{n}-{method}.npz"));
            write_npz(&p, method, &members);
            let ds = open(&p).unwrap();
            assert_eq!(ds.members().count(), 5);
            assert_eq!(ds.get("input").unwrap().is_compressed(), method == Deflated);
            check_streaming(&p, &want);
        }
    }
}

#[test]
fn streaming_a_large_set_holds_one_batch_in_memory() {
    if !alone("streaming_a_large_set_holds_one_batch_in_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 128 MiB of float32 inputs, deflated (a small file), and 32 MiB stored.
    for (method, samples) in [(Deflated, 128 * 1024), (Stored, 32 * 1024)] {
        let p = dir.path().join(format!("big-{method}.npz"));
        let shape = [samples, 256];
        write_zeros_npz(
            &p,
            method,
            "input",
            &npy_header("<f4", &shape),
            samples * 1024,
        );
        let ds = open(&p).unwrap();
        let batch = 64; // 64 KiB of input per batch
        let ((), peak, took) = measured(|| {
            let mut archive = eval::Archive::default();
            let mut rows = ds.rows("input", &mut archive).unwrap();
            let mut start = 0;
            while start < samples {
                let a = rows.read(batch.min(samples - start)).unwrap();
                assert_eq!(a.data.len(), a.shape[0] * 256);
                start += a.shape[0];
            }
            rows.finish().unwrap();
        });
        eprintln!(
            "{method}: {} MiB of data streamed in {took:?}, peak RSS + {} KiB",
            samples / 1024,
            peak / 1024
        );
        assert!(
            peak < 16 * MB,
            "{method}: peak RSS + {peak} bytes for 64 KiB batches"
        );
        // Opening reads the directory and the headers only.
        let (_, peak, _) = measured(|| open(&p).unwrap());
        assert!(peak < 4 * MB, "{method}: open held {peak} bytes");
    }
}

#[test]
fn zip_bomb_stops_at_the_size_its_header_declares() {
    if !alone("zip_bomb_stops_at_the_size_its_header_declares") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bomb = 512 * MB;
    for declared in [vec![4usize], vec![3, 5], vec![1000, 64]] {
        let header = npy_header("<f4", &declared);
        let total = header.len() + declared.iter().product::<usize>() * 4;
        let p = dir.path().join("bomb.npz");
        write_zeros_npz(&p, Deflated, "input", &header, bomb);
        let file = std::fs::metadata(&p).unwrap().len();
        // An honest directory (it says 512 MiB) disagrees with the header: refused at open.
        let (e, peak, took) = measured(|| open_err(&p));
        assert!(
            e.contains("zip directory says") && e.contains("input"),
            "{e}"
        );
        assert!(
            peak < 4 * MB && took < Duration::from_secs(1),
            "{peak} {took:?}"
        );
        // A directory that agrees with the header: opens, and reading stops one byte past it.
        let mut b = std::fs::read(&p).unwrap();
        set_sizes(&mut b, 0, Some(total as u64), None);
        std::fs::write(&p, &b).unwrap();
        let ds = open(&p).unwrap();
        let (e, peak, took) = measured(|| err_text(&ds.read("input").unwrap_err()));
        assert!(
            e.contains("inflates to more than") && e.contains("s3://bucket"),
            "{e}"
        );
        eprintln!(
            "bomb of {} MiB in a {file}-byte npz declaring {declared:?}: refused after {took:?}, peak RSS + {} KiB",
            bomb / MB,
            peak / 1024
        );
        assert!(peak < 16 * MB, "peak RSS + {peak}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // Streamed by batches: the same, once the declared rows are read.
        let mut archive = eval::Archive::default();
        let mut rows = ds.rows("input", &mut archive).unwrap();
        rows.read(declared[0]).unwrap();
        let e = err_text(&rows.finish().unwrap_err());
        assert!(e.contains("inflates to more than"), "{e}");
    }
}

#[test]
fn a_member_that_inflates_to_less_than_declared_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    for (declared, actual) in [(100usize, 99usize), (100, 0), (4096, 1000)] {
        for method in [Deflated, Stored] {
            let p = dir.path().join("short.npz");
            let header = npy_header("<f4", &[declared]);
            write_zeros_npz(&p, method, "input", &header, actual * 4);
            let mut b = std::fs::read(&p).unwrap();
            let total = (header.len() + declared * 4) as u64;
            if method == Stored {
                // A stored member must hold its bytes: refused at open, whatever the directory says.
                let e = open_err(&p);
                assert!(e.contains("zip directory says"), "{e}");
                set_sizes(&mut b, 0, Some(total), Some(total));
                std::fs::write(&p, &b).unwrap();
                let e = open_err(&p);
                assert!(e.contains("past the end") || e.contains("input"), "{e}");
                continue;
            }
            set_sizes(&mut b, 0, Some(total), None);
            std::fs::write(&p, &b).unwrap();
            let ds = open(&p).unwrap();
            let e = err_text(&ds.read("input").unwrap_err());
            assert!(e.contains("truncated"), "{e}");
            let e = err_text(&ds.read_rows("input", 0, declared).unwrap_err());
            assert!(e.contains("truncated"), "{e}");
            if actual > 0 {
                assert_eq!(ds.read_rows("input", 0, actual).unwrap().data.len(), actual);
            }
        }
    }
}

#[test]
fn a_zip_directory_that_lies_about_sizes_is_refused_quickly() {
    if !alone("a_zip_directory_that_lies_about_sizes_is_refused_quickly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let x = support::lcg(40 * 8, 3);
    let members = [
        ("input", npy("<f4", &[40, 8], &f32s(&x))),
        ("labels", npy("<i8", &[40], &i64s(&[1; 40]))),
    ];
    let mut cases = 0;
    for method in [Stored, Deflated] {
        for large in [false, true] {
            let p = dir.path().join("lies.npz");
            let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .large_file(large);
            for (name, bytes) in &members {
                z.start_file(format!("{name}.npy"), opts).unwrap();
                z.write_all(bytes).unwrap();
            }
            z.finish().unwrap();
            let good = std::fs::read(&p).unwrap();
            let file = good.len() as u64;
            let real = members[0].1.len() as u64;
            let mut lies: Vec<(Option<u64>, Option<u64>)> = vec![
                (Some(0), None),
                (Some(1), None),
                (Some(real - 1), None),
                (Some(real + 1), None),
                (Some(u32::MAX as u64 - 1), None),
                (None, Some(file)),
                (None, Some(u32::MAX as u64 - 1)),
                (Some(real * 2), Some(real * 2)),
            ];
            if large {
                // The 143 kB npz that claimed 64 GiB, and claims at the edge of u64.
                lies.extend([
                    (Some(64 << 30), None),
                    (Some(u64::MAX), None),
                    (Some(u64::MAX), Some(u64::MAX)),
                    (None, Some(64 << 30)),
                    (Some(i64::MAX as u64), Some(i64::MAX as u64)),
                ]);
            }
            for (entry, (u, c)) in [0, 1]
                .into_iter()
                .flat_map(|e| lies.iter().map(move |l| (e, *l)))
            {
                let mut b = good.clone();
                set_sizes(&mut b, entry, u, c);
                std::fs::write(&p, &b).unwrap();
                let (r, peak, took) =
                    measured(|| open(&p).and_then(|ds| ds.read("input").map(|_| ds)));
                cases += 1;
                assert!(
                    peak < 8 * MB && took < Duration::from_secs(1),
                    "{method} large={large} entry {entry} {u:?} {c:?}: {peak} bytes, {took:?}"
                );
                match r {
                    Err(e) => {
                        let e = err_text(&e);
                        assert!(e.contains("s3://bucket/sets/eval.npz"), "{e}");
                    }
                    // Only a lie about what is never used can pass, e.g. a deflated member's
                    // compressed size pointing within the file.
                    Ok(ds) => assert_eq!(
                        ds.read("input").unwrap().data,
                        ArrayData::F32(x.clone()),
                        "{method} large={large} entry {entry} {u:?} {c:?}"
                    ),
                }
            }
        }
    }
    assert!(cases >= 50, "{cases}");
}

#[test]
fn every_offset_of_a_broken_archive_is_an_error_not_a_panic() {
    // Truncations at every length and a byte flipped at every offset of a small npz: each
    // open-and-read either errors (naming the URI) or yields exactly the declared arrays.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.npz");
    let members = [
        (
            "input",
            npy("<f4", &[3, 2], &f32s(&[1., 2., 3., 4., 5., 6.])),
        ),
        ("labels", npy("<i8", &[3], &i64s(&[0, 1, 2]))),
    ];
    for method in [Stored, Deflated] {
        write_npz(&p, method, &members);
        let good = std::fs::read(&p).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for at in 0..good.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] ^= x;
                variants.push(b);
            }
        }
        for b in variants {
            std::fs::write(&p, &b).unwrap();
            let r = open(&p).and_then(|ds| {
                let mut total = 0;
                for m in ds.members() {
                    let a = ds.read(&m.name)?;
                    assert_eq!(a.data.len(), m.header.elements);
                    total += m.header.data_bytes;
                }
                Ok(total)
            });
            if let Err(e) = r {
                let e = err_text(&e);
                assert!(e.contains("s3://bucket/sets/eval.npz"), "{e}");
            }
        }
    }
}

#[test]
fn empty_sets_scalars_and_odd_names_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.npz");
    for method in [Stored, Deflated] {
        write_npz(
            &p,
            method,
            &[
                ("input", npy("<f4", &[0, 64], &[])),
                ("scalar", npy("<f8", &[], &2.5f64.to_le_bytes())),
                ("labels", npy("<i8", &[0], &[])),
            ],
        );
        let ds = open(&p).unwrap();
        assert_eq!(ds.read("input").unwrap().data, ArrayData::F32(vec![]));
        assert_eq!(ds.read("scalar").unwrap().data, ArrayData::F64(vec![2.5]));
        let mut archive = eval::Archive::default();
        let mut rows = ds.rows("input", &mut archive).unwrap();
        assert_eq!(rows.read(0).unwrap().data.len(), 0);
        let e = err_text(&rows.read(1).unwrap_err());
        assert!(e.contains("has 0 samples"), "{e}");
        let e = err_text(&ds.read_rows("scalar", 0, 1).unwrap_err());
        assert!(e.contains("scalar") && e.contains("first axis"), "{e}");
        let e = err_text(&ds.read("nope").unwrap_err());
        assert!(
            e.contains("no such array") && e.contains("input float32[0, 64]"),
            "{e}"
        );

        // An array with no name, and archives without arrays.
        write_npz(&p, method, &[("", npy("<f4", &[1], &[0; 4]))]);
        let e = open_err(&p);
        assert!(
            e.contains("no array name") && e.contains("(empty name)"),
            "{e}"
        );
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"hello").unwrap();
        z.finish().unwrap();
        assert!(open_err(&p).contains("no .npy arrays"));
        zip::ZipWriter::new(std::fs::File::create(&p).unwrap())
            .finish()
            .unwrap();
        assert!(open_err(&p).contains("no .npy arrays"));
    }
    // Not a zip at all, an empty file, a missing file, a directory.
    std::fs::write(&p, b"").unwrap();
    assert!(open_err(&p).contains("not a NumPy .npz"));
    std::fs::write(&p, npy("<f4", &[1], &[0; 4])).unwrap();
    assert!(open_err(&p).contains("not a NumPy .npz"));
    let gone = dir.path().join("missing.npz");
    assert!(open_err(&gone).contains("cannot read dataset"));
    let e = err_text(&open(dir.path()).unwrap_err());
    assert!(e.contains("s3://bucket/sets/eval.npz"), "{e}");
}

#[test]
fn header_families_inside_an_archive_are_errors_naming_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npz");
    let texts = [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': )}",
            "expected `(`",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2)}",
            "more elements",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,)}",
            "more bytes",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\u{ff}",
            "not ASCII",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,)}",
            "zip directory says",
        ),
    ];
    for (i, (text, want)) in texts.iter().enumerate() {
        for method in [Stored, Deflated] {
            let mut h = text.as_bytes().to_vec();
            h.push(b'\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(&h);
            b.extend([0u8; 8]);
            let name = format!("arr_{i}");
            write_npz(
                &p,
                method,
                &[(name.as_str(), b), ("ok", npy("<f4", &[1], &[0; 4]))],
            );
            let e = open_err(&p);
            assert!(
                e.contains(want) && e.contains(&format!("array `arr_{i}`")),
                "{e}"
            );
        }
    }
    // Version 2 and 3 headers whose 32-bit length is over the cap or past the member.
    for version in [2u8, 3] {
        for hlen in [u32::MAX, 1 << 20, 65537, 5000] {
            for method in [Stored, Deflated] {
                let mut b = b"\x93NUMPY".to_vec();
                b.extend([version, 0]);
                b.extend(hlen.to_le_bytes());
                b.extend(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\n");
                write_npz(&p, method, &[("x", b)]);
                let e = open_err(&p);
                assert!(
                    e.contains("at most 65536") || e.contains("truncated header"),
                    "{hlen}: {e}"
                );
            }
        }
    }
}

// ---- the evaluation loop on these sets (ONNX Runtime) ----

fn cfg(batch: usize) -> EvalConfig {
    EvalConfig {
        iterations: 2,
        ..support::eval_cfg(batch)
    }
}

/// A one-node model `input -> Identity -> output` with the given input and output shapes
/// (`None` outputs: a graph without outputs).
fn identity_model(path: &Path, input: &[Option<i64>], output: Option<&[Option<i64>]>) {
    let model = support::model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("g".into()),
            node: vec![kompress::onnx::node(
                "Identity",
                "id".into(),
                vec!["input".into()],
                vec!["output".into()],
                vec![],
            )],
            input: vec![support::value_info("input", input)],
            output: output
                .map(|o| vec![support::value_info("output", o)])
                .unwrap_or_default(),
            ..Default::default()
        },
    );
    support::write_model(&model, path);
}

fn run_eval(
    model: &Path,
    ds: &Dataset,
    cfg: &EvalConfig,
) -> Result<(eval::Outputs, Vec<f64>), eval::Error> {
    let mut opened = eval::open(model, cfg)?;
    let prep = eval::prepare(&opened, ds, cfg)?;
    assert!(prep.samples() > 0);
    eval::evaluate(&mut opened, &prep, cfg, &|_, _| {})
}

#[test]
fn evaluation_streams_stored_and_deflated_sets_alike() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mlp.onnx");
    support::write_model(&support::mlp(&[8, 16, 4], 5), &model);
    let n = 37;
    let x = support::lcg(n * 8, 9);
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    let members = [
        ("input", npy("<f4", &[n, 8], &f32s(&x))),
        ("labels", npy("<i8", &[n], &i64s(&labels))),
    ];
    let mut by_batch = Vec::new();
    for batch in [1, 5, 37, 64] {
        let mut outs = Vec::new();
        for method in [Stored, Deflated] {
            let p = dir.path().join(format!("e-{method}.npz"));
            write_npz(&p, method, &members);
            let ds = open(&p).unwrap();
            let (out, times) = run_eval(&model, &ds, &cfg(batch)).unwrap();
            assert_eq!(
                (out.values.len(), out.per_sample, out.classes),
                (n * 4, 4, Some(4))
            );
            assert_eq!(times.len(), 2);
            outs.push(out.values.into_vec().unwrap());
        }
        assert_eq!(
            outs[0], outs[1],
            "stored and deflated differ at batch {batch}"
        );
        by_batch.push(outs.remove(0));
    }
    for v in &by_batch[1..] {
        let d = v
            .iter()
            .zip(&by_batch[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "batch size changed outputs by {d}");
    }
    // A limit reads only the first rows; a latency batch larger than the set is clamped.
    let p = dir.path().join("e-Deflated.npz");
    let ds = open(&p).unwrap();
    let c = EvalConfig {
        limit: Some(10),
        latency_batch: 1000,
        ..cfg(4)
    };
    let (out, _) = run_eval(&model, &ds, &c).unwrap();
    assert_eq!(out.values.tail(), &by_batch[0][..40]);
}

#[test]
fn sets_and_models_the_loop_cannot_evaluate_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("mlp.onnx");
    support::write_model(&support::mlp(&[8, 16, 4], 5), &model);
    let eval_err = |model: &Path, members: &[(&str, Vec<u8>)], cfg: &EvalConfig| -> String {
        let p = d.join("x.npz");
        write_npz(&p, Deflated, members);
        let ds = open(&p).unwrap();
        let e = err_text(&run_eval(model, &ds, cfg).expect_err("evaluated"));
        assert!(
            !e.contains(&p.display().to_string()) && !e.contains("``"),
            "{e}"
        );
        assert!(!e.contains("dataset  "), "{e}");
        e
    };
    let x = |n: usize| npy("<f4", &[n, 8], &f32s(&support::lcg(n * 8, 1)));

    // 0 samples, and a limit of 0.
    let e = eval_err(&model, &[("input", x(0))], &cfg(4));
    assert!(
        e.contains("no samples") && e.contains("s3://bucket/sets/eval.npz"),
        "{e}"
    );
    let c = EvalConfig {
        limit: Some(0),
        ..cfg(4)
    };
    let e = eval_err(&model, &[("input", x(3))], &c);
    assert!(e.contains("spec.dataset.limit is 0"), "{e}");
    // A rank-0 array for a model input.
    let e = eval_err(&model, &[("input", npy("<f4", &[], &[0; 4]))], &cfg(4));
    assert!(e.contains("has shape []") && e.contains("expects"), "{e}");
    // Labels of the wrong shape, type, length, or outside the classes.
    for (labels, want) in [
        (
            npy("<i8", &[3, 1], &i64s(&[0, 1, 2])),
            "labels array `labels` has shape [3, 1]",
        ),
        (npy("<i8", &[], &i64s(&[0])), "has shape []"),
        (
            npy("<i8", &[2], &i64s(&[0, 1])),
            "has shape [2]; expected [3]",
        ),
        (
            npy("<f4", &[3], &f32s(&[0., 1., 2.])),
            "integer class indices",
        ),
        (npy("<i8", &[3], &i64s(&[0, 4, 1])), "label 4 of sample 1"),
        (
            npy("<i4", &[3], &[0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]),
            "label -1 of sample 1",
        ),
    ] {
        let e = eval_err(&model, &[("input", x(3)), ("labels", labels)], &cfg(2));
        assert!(e.contains(want), "{want}: {e}");
    }
    // Labels longer than the set are fine (the first `samples` are used).
    let p = d.join("ok.npz");
    write_npz(
        &p,
        Stored,
        &[
            ("input", x(3)),
            ("labels", npy("|u1", &[5], &[3, 2, 1, 0, 9])),
        ],
    );
    run_eval(&model, &open(&p).unwrap(), &cfg(100)).unwrap();

    // A model with a rank-0 input, and one with no graph outputs (if ONNX Runtime loads it).
    let scalar = d.join("scalar.onnx");
    identity_model(&scalar, &[], Some(&[]));
    let e = eval_err(
        &scalar,
        &[("input", npy("<f4", &[3], &f32s(&[1., 2., 3.])))],
        &cfg(2),
    );
    assert!(e.contains("scalar (rank 0)"), "{e}");
    let none = d.join("none.onnx");
    identity_model(&none, &[None, Some(8)], None);
    let e = eval_err(&none, &[("input", x(3))], &cfg(2));
    assert!(e.contains("output"), "{e}");
    // An output whose first axis is not the samples.
    let e = eval_err(
        &model,
        &[("input", x(3))],
        &EvalConfig {
            output: Some("nope".into()),
            ..cfg(2)
        },
    );
    assert!(
        e.contains("spec.evaluation.output `nope`") && e.contains("logits"),
        "{e}"
    );
}

#[test]
fn evaluation_memory_is_bounded_by_the_batch() {
    if !alone("evaluation_memory_is_bounded_by_the_batch") {
        return;
    }
    // A deflated set of 128 MiB of inputs through a tiny model: the reader holds one batch;
    // what grows is the compared outputs (4 floats a sample, kept by design) and ONNX
    // Runtime's own buffers for a batch.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mlp.onnx");
    support::write_model(&support::mlp(&[256, 4], 5), &model);
    let n = 128 * 1024;
    let p = dir.path().join("big.npz");
    write_zeros_npz(
        &p,
        Deflated,
        "input",
        &npy_header("<f4", &[n, 256]),
        n * 1024,
    );
    let ds = open(&p).unwrap();
    let c = cfg(256);
    let mut opened = eval::open(&model, &c).unwrap();
    let prep = eval::prepare(&opened, &ds, &c).unwrap();
    let (r, peak, took) = measured(|| eval::evaluate(&mut opened, &prep, &c, &|_, _| {}));
    let (out, _) = r.unwrap();
    assert_eq!(out.values.len(), n * 4);
    let outputs = n * 4 * 4;
    eprintln!(
        "evaluated {} MiB of deflated input in {took:?}: peak RSS + {} KiB ({} KiB of it outputs)",
        n * 1024 / MB,
        peak / 1024,
        outputs / 1024
    );
    // Outputs (2 MiB, doubled while the Vec grows) + a few 256 KiB batches + ORT's arena.
    assert!(peak < 2 * outputs + 48 * MB, "peak RSS + {peak}");
}

#[test]
fn kompress_run_names_the_dataset_as_written_and_promotes_nothing() {
    // Broken sets through the real binary: a permanent error (65) whose message names the
    // dataset as the job wrote it (never the scratch copy), and nothing under promoteTo.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = npy("<i8", &[4], &i64s(&[0, 1, 2, 3]));
    let inputs = npy("<f4", &[4, 64], &f32s(&[0.5; 256]));
    let bomb = d.join("bomb.npz");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&bomb).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(Deflated);
        z.start_file("input.npy", opts).unwrap();
        z.write_all(&npy_header("<f4", &[4, 64])).unwrap();
        let chunk = vec![0u8; MB];
        for _ in 0..64 {
            z.write_all(&chunk).unwrap();
        }
        z.start_file("labels.npy", opts).unwrap();
        z.write_all(&labels).unwrap();
        z.finish().unwrap();
        let mut b = std::fs::read(&bomb).unwrap();
        let declared = (npy_header("<f4", &[4, 64]).len() + 4 * 64 * 4) as u64;
        set_sizes(&mut b, 0, Some(declared), None);
        std::fs::write(&bomb, b).unwrap();
    }
    let lies = d.join("lies.npz");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&lies).unwrap());
        let opts = zip::write::SimpleFileOptions::default().large_file(true);
        z.start_file("input.npy", opts).unwrap();
        z.write_all(&inputs).unwrap();
        z.finish().unwrap();
        let mut b = std::fs::read(&lies).unwrap();
        set_sizes(&mut b, 0, Some(64 << 30), None);
        std::fs::write(&lies, b).unwrap();
    }
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let text = b"{'descr': '<f4', 'fortran_order': False, 'shape': )}\n";
    header.extend((text.len() as u16).to_le_bytes());
    header.extend(text);
    type Members<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: Vec<(&str, Members, &str)> = vec![
        (
            "empty.npz",
            vec![
                ("input", npy("<f4", &[0, 64], &[])),
                ("labels", npy("<i8", &[0], &[])),
            ],
            "no samples",
        ),
        (
            "header.npz",
            vec![("input", header), ("labels", labels.clone())],
            "expected `(`",
        ),
        (
            "overflow.npz",
            vec![("input", npy_header("<f4", &[1 << 40, 1 << 40]))],
            "more elements",
        ),
        (
            "labels.npz",
            vec![
                ("input", inputs.clone()),
                ("labels", npy("<i8", &[4], &i64s(&[0, 1, 2, 10]))),
            ],
            "label 10 of sample 3",
        ),
    ];
    let mut files = vec![
        (bomb, "inflates to more than"),
        (lies, "zip directory says"),
    ];
    for (name, members, want) in cases {
        let p = d.join(name);
        write_npz(&p, Stored, &members);
        files.push((p, want));
    }
    for (p, want) in files {
        let shown = p.display().to_string();
        let job = support::write_job(
            d,
            &support::job_yaml(
                "bad-data",
                &support::repo()
                    .join("examples/digits/model.onnx")
                    .display()
                    .to_string(),
                &shown,
                "    - quantize:\n        perChannel: true",
                "    minAgreement: 0.98",
                d,
            ),
        );
        let r = support::run_kompress(&["run", "-f", &job], &[]);
        assert_eq!(r.code, 65, "{shown}: {} {}", r.stdout, r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert!(r.stderr.contains(&shown), "{}", r.stderr);
        assert_eq!(
            r.stderr.matches(".npz").count(),
            r.stderr.matches(&shown).count(),
            "only the dataset as written is named: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(support::files_under(&d.join("production")).is_empty());
    }
}

#[test]
fn corrupt_member_data_fails_its_crc() {
    // A flipped data byte: the header still parses and the sizes agree, so only the CRC tells.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("crc.npz");
    let x = support::lcg(6 * 8, 2);
    for method in [Stored, Deflated] {
        write_npz(&p, method, &[("input", npy("<f4", &[6, 8], &f32s(&x)))]);
        let good = std::fs::read(&p).unwrap();
        let (_, local) = entries(&good)[0];
        let data = local + 30 + u16_at(&good, local + 26) + u16_at(&good, local + 28);
        let at = if method == Stored {
            data + 128 + 50
        } else {
            data + 40
        };
        let mut b = good.clone();
        b[at] ^= 0x10;
        std::fs::write(&p, &b).unwrap();
        let ds = match open(&p) {
            Ok(ds) => ds,
            // A flipped deflate byte may already break the header: refused at open.
            Err(_) if method == Deflated => continue,
            Err(e) => panic!("{e}"),
        };
        let e = err_text(&ds.read("input").unwrap_err());
        assert!(
            e.contains("corrupt") || e.contains("checksum"),
            "{method}: {e}"
        );
        assert!(ds.read_rows("input", 0, 6).is_err(), "{method}");
        let mut archive = eval::Archive::default();
        let mut rows = ds.rows("input", &mut archive).unwrap();
        let streamed = (0..3)
            .try_for_each(|_| rows.read(2).map(drop))
            .and_then(|()| rows.finish());
        assert!(streamed.is_err(), "{method}");
        // A prefix that stops short of the end is not checked (a limit reads only that).
        if method == Stored {
            assert!(ds.read_rows("input", 0, 1).is_ok());
        }
    }
}
