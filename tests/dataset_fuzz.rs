//! Property-based fuzzing of the evaluation set reader: random bytes, and valid `.npy` and
//! `.npz` files with random mutations, through the header parser, `Dataset::open` and the
//! whole and batch readers. Properties: nothing panics; whatever is accepted is exactly its
//! declared size and reads the same whole as in batches; no case allocates more than a small
//! bound above the file's size. Fixed case counts keep the run to seconds in CI.

mod support;

use kompress::eval::dataset::{ArrayData, Dataset, parse_header, parse_npy};
use proptest::prelude::*;
use proptest::sample::Index;
use std::io::Write;

// ---- memory: the process's peak resident set ----

/// The process's peak resident set (VmHWM), in bytes; 0 where /proc is missing.
fn peak_rss() -> usize {
    support::status_bytes("VmHWM:")
}

/// No case may take the process near the memory a lying header asks for: the inputs are at
/// most a few kB, so a quarter GiB of peak resident set means something was sized from a
/// header (a lying zip directory asked the old reader for 64 GiB).
const MAX_RSS: usize = 256 << 20;

// ---- generators ----

const DTYPES: &[(&str, usize)] = &[
    ("<f4", 4),
    ("<f8", 8),
    ("<f2", 2),
    ("<i8", 8),
    ("<i4", 4),
    ("|i1", 1),
    ("|u1", 1),
    ("|b1", 1),
];

/// Tokens that break headers in interesting ways.
const TOKENS: &[&str] = &[
    ")",
    "(",
    ",",
    "'",
    "\"",
    ":",
    "{",
    "}",
    "L",
    "-1",
    "True",
    "\u{ff}",
    "\u{e9}",
    "99999999999999999999",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296, 4294967296",
    "'shape': )",
    "'descr': '<f4', ",
    "\x00",
];

fn npy_bytes(version: u8, descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(" ")
    );
    let pre = if version == 1 { 10 } else { 12 };
    while !(pre + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((h.len() as u16).to_le_bytes());
    } else {
        out.extend((h.len() as u32).to_le_bytes());
    }
    out.extend(h.as_bytes());
    out.extend(body);
    out
}

/// A valid `.npy`: any version, dtype, rank 0-3 with small axes, random data.
fn valid_npy() -> impl Strategy<Value = Vec<u8>> {
    (
        1u8..=3,
        0..DTYPES.len(),
        prop::collection::vec(0usize..6, 0..4),
        any::<u64>(),
    )
        .prop_map(|(version, d, shape, seed)| {
            let (descr, size) = DTYPES[d];
            let n = shape.iter().product::<usize>() * size;
            let mut s = seed;
            let body: Vec<u8> = (0..n)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (s >> 56) as u8
                })
                .collect();
            npy_bytes(version, descr, &shape, &body)
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
    Token(Index, usize),
    /// Overwrite 2, 4 or 8 bytes with an extreme little-endian number (lengths, sizes).
    Number(Index, u8, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Token(i, t)),
        2 => (
            any::<Index>(),
            prop_oneof![Just(2u8), Just(4), Just(8)],
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(u16::MAX as u64),
                Just(u32::MAX as u64),
                Just(u32::MAX as u64 - 1),
                Just(64 << 30),
                Just(u64::MAX),
                any::<u64>()
            ]
        )
            .prop_map(|(i, w, v)| Mutation::Number(i, w, v)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if b.is_empty() {
            b.push(0);
        }
        match m {
            Mutation::Set(i, v) => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Mutation::Insert(i, v) => {
                let i = i.index(b.len() + 1);
                b.insert(i, *v);
            }
            Mutation::Delete(i) => {
                let i = i.index(b.len());
                b.remove(i);
            }
            Mutation::Truncate(i) => {
                let i = i.index(b.len());
                b.truncate(i);
            }
            Mutation::Token(i, t) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, TOKENS[*t].bytes());
            }
            Mutation::Number(i, w, v) => {
                let w = *w as usize;
                if b.len() >= w {
                    let i = i.index(b.len() - w + 1);
                    b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
        }
    }
    b
}

fn elements(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The bits of every element (NaN-safe equality).
fn bits(d: &ArrayData) -> Vec<u64> {
    match d {
        ArrayData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        ArrayData::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        ArrayData::F16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        ArrayData::I64(v) => v.iter().map(|&x| x as u64).collect(),
        ArrayData::I32(v) => v.iter().map(|&x| x as u64).collect(),
        ArrayData::I8(v) => v.iter().map(|&x| x as u64).collect(),
        ArrayData::U8(v) => v.iter().map(|&x| x as u64).collect(),
        ArrayData::Bool(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

/// The `.npy` properties: no panic; accepted means exactly the declared size.
fn check_npy(b: &[u8]) {
    if let Ok(a) = parse_npy(b) {
        assert_eq!(a.data.len(), elements(&a.shape));
        let h = parse_header(b).expect("parse_npy accepted it");
        assert_eq!(h.header_len as usize + h.data_bytes, b.len());
        assert_eq!(h.shape, a.shape);
    }
}

/// An npz of the given members, stored or deflated.
fn npz(members: &[Vec<u8>], deflate: bool) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    let names = ["input", "labels", "arr_0", "x"];
    for (m, name) in members.iter().zip(names) {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(m).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// The `.npz` properties: no panic; every accepted member reads as exactly its declared size,
/// the same whole as in batches; no accepted member declares more than its file can hold
/// (deflate inflates at most 1032x), so no read is ever sized beyond that; the process stays
/// far from the memory a lying header asks for.
fn check_npz(path: &std::path::Path, b: &[u8], batch: usize) {
    std::fs::write(path, b).unwrap();
    (|| {
        let Ok(ds) = Dataset::open(path, "fuzz.npz") else {
            return;
        };
        for m in ds.members() {
            let bound = 1032 * b.len() as u64 + (64 << 10);
            assert!(
                m.header.total_bytes() <= bound,
                "{}: {:?}",
                m.name,
                m.header
            );
            let whole = ds.read(&m.name);
            if let Ok(a) = &whole {
                assert_eq!(a.data.len(), m.header.elements);
                assert_eq!(a.shape, m.header.shape);
            }
            let Some(n) = m.header.samples() else {
                continue;
            };
            let mut archive = kompress::eval::Archive::default();
            let Ok(mut rows) = ds.rows(&m.name, &mut archive) else {
                continue;
            };
            let mut got = Vec::new();
            let mut start = 0;
            let streamed = loop {
                if start == n {
                    break rows.finish().is_ok();
                }
                let k = batch.min(n - start);
                match rows.read(k) {
                    Ok(a) => {
                        assert_eq!(a.shape[0], k);
                        got.extend(bits(&a.data));
                    }
                    Err(_) => break false,
                }
                start += k;
            };
            // The two readers agree on acceptance and on content.
            assert_eq!(streamed, whole.is_ok(), "{}", m.name);
            if let Ok(a) = whole {
                assert_eq!(got, bits(&a.data));
            }
        }
    })();
    let peak = peak_rss();
    assert!(peak < MAX_RSS, "peak resident set {peak} bytes");
}

/// `cases`, times KOMPRESS_FUZZ_SCALE when set (longer runs by hand: `KOMPRESS_FUZZ_SCALE=50
/// cargo test --release --test dataset_fuzz`).
fn config(cases: u32) -> ProptestConfig {
    let scale: u32 = std::env::var("KOMPRESS_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    ProptestConfig {
        cases: cases.saturating_mul(scale.max(1)),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn random_bytes_never_panic_the_npy_parser(b in prop::collection::vec(any::<u8>(), 0..200)) {
        check_npy(&b);
        let mut m = b"\x93NUMPY\x01\x00".to_vec();
        m.extend(&b);
        check_npy(&m);
    }

    #[test]
    fn mutated_npy_files_never_panic_the_parser(
        npy in valid_npy(),
        muts in prop::collection::vec(mutation(), 0..6),
    ) {
        let a = parse_npy(&npy).expect("the generator writes valid files");
        prop_assert_eq!(a.data.len(), elements(&a.shape));
        check_npy(&apply(npy, &muts));
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn mutated_npz_files_never_panic_the_reader(
        members in prop::collection::vec(
            (valid_npy(), prop::collection::vec(mutation(), 0..2), prop::bool::weighted(0.2)),
            1..4,
        ),
        deflate in any::<bool>(),
        muts in prop::collection::vec(mutation(), 0..4),
        batch in 1usize..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.npz");
        let members: Vec<Vec<u8>> = members
            .into_iter()
            .map(|(npy, m, mutate)| if mutate { apply(npy, &m) } else { npy })
            .collect();
        let good = npz(&members, deflate);
        check_npz(&path, &good, batch);
        check_npz(&path, &apply(good, &muts), batch);
    }

    #[test]
    fn random_bytes_never_panic_the_npz_reader(
        b in prop::collection::vec(any::<u8>(), 0..400),
        batch in 1usize..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.npz");
        check_npz(&path, &b, batch);
        // Behind a zip local header signature and ahead of an end-of-directory record.
        let mut z = b"PK\x03\x04".to_vec();
        z.extend(&b);
        z.extend(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
        z.extend(&b[..b.len().min(10)]);
        check_npz(&path, &z, batch);
    }
}
