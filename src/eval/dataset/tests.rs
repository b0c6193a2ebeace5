use super::*;

/// A version-1 `.npy` with a numpy-style header (padded to 64 bytes).
pub(crate) fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    npy_text(
        1,
        &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}"),
        body,
    )
}

/// A `.npy` of any version with the given header text.
pub(crate) fn npy_text(version: u8, text: &str, body: &[u8]) -> Vec<u8> {
    let pre = if version == 1 { 10 } else { 12 };
    let mut h = text.to_string();
    while !(pre + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend(u16::try_from(h.len()).unwrap().to_le_bytes());
    } else {
        out.extend(u32::try_from(h.len()).unwrap().to_le_bytes());
    }
    out.extend(h.as_bytes());
    out.extend(body);
    out
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn parses_float32_matrix() {
    let a = parse_npy(&npy("<f4", &[2, 3], &f32s(&[1., 2., 3., 4., 5., 6.]))).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, ArrayData::F32(vec![1., 2., 3., 4., 5., 6.]));
    assert_eq!(a.per_sample(), 3);
}

#[test]
fn every_dtype_and_version_round_trips() {
    for (descr, dtype) in [
        ("<f4", Dtype::F32),
        ("<f8", Dtype::F64),
        ("<f2", Dtype::F16),
        ("<i8", Dtype::I64),
        ("<i4", Dtype::I32),
        ("|i1", Dtype::I8),
        ("|u1", Dtype::U8),
        ("|b1", Dtype::Bool),
    ] {
        for version in [1, 2, 3] {
            for shape in [vec![], vec![0], vec![3], vec![2, 3], vec![1, 2, 1, 2]] {
                let n: usize = shape.iter().product();
                let body: Vec<u8> = (0..n * dtype.size())
                    .map(|i| u8::from(i % 2 == 1))
                    .collect();
                let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
                let text = format!(
                    "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
                    dims.join(" ")
                );
                let buf = npy_text(version, &text, &body);
                let a = parse_npy(&buf).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(a.shape, shape);
                assert_eq!(a.data.kind(), dtype);
                assert_eq!(a.data.len(), n);
                let h = parse_header(&buf).unwrap();
                assert_eq!(h.header_bytes() + h.data_bytes, buf.len());
            }
        }
    }
}

#[test]
fn header_spellings_numpy_and_python_write_are_accepted() {
    for text in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}",
        "{'shape': (2L,), 'fortran_order': False, 'descr': '<f4'}",
        "  { 'descr' : '<f4' ,'fortran_order':True,'shape':( 2 , ) }  ",
    ] {
        let a = parse_npy(&npy_text(1, text, &[0u8; 8])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.shape, vec![2], "{text}");
    }
}

#[test]
fn truncated_data_is_an_error() {
    let err = parse_npy(&npy("<i8", &[4], &[0u8; 16])).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    let err = parse_npy(&npy("<i8", &[1], &[0u8; 9])).unwrap_err();
    assert!(err.contains("1 bytes follow"), "{err}");
}

#[test]
fn crc32_matches_the_standard_check_value() {
    let mut c = Crc32::new();
    c.update(b"1234");
    c.update(b"56789");
    assert_eq!(c.value(), 0xCBF4_3926);
    assert_eq!(Crc32::new().value(), 0);
}

#[test]
fn big_endian_is_refused_with_advice() {
    let err = parse_npy(&npy(">f4", &[1], &[0u8; 4])).unwrap_err();
    assert!(err.contains("little-endian"), "{err}");
}

/// Headers whose shape is not a tuple of integers, with what the error names.
fn malformed_shapes() -> Vec<(String, &'static str)> {
    vec![
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': )}".into(),
            "expected `(`",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (}".into(),
            "integer",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,".into(),
            "found the end",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}".into(),
            "integer",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}".into(),
            "`,` or `)`",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': 2}".into(),
            "expected `(`",
        ),
    ]
}

/// Headers whose dictionary is malformed: keys missing, repeated or unknown, bad values, text around it.
fn malformed_dictionaries() -> Vec<(String, &'static str)> {
    vec![
        (
            "{'descr': '<f4', 'fortran_order': False}".into(),
            "lacks 'shape'",
        ),
        (
            "{'fortran_order': False, 'shape': (2,)}".into(),
            "lacks 'descr'",
        ),
        (
            "{'descr': '<f4', 'shape': (2,)}".into(),
            "lacks 'fortran_order'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}".into(),
            "True or False",
        ),
        (
            "{'descr': <f4, 'fortran_order': False, 'shape': (2,)}".into(),
            "quoted string",
        ),
        (
            "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}".into(),
            "unsupported dtype",
        ),
        (
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}".into(),
            "twice",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}".into(),
            "unexpected key",
        ),
        (
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}".into(),
            "structured",
        ),
        (
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}".into(),
            "Fortran",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x".into(),
            "after the dictionary",
        ),
        ("'descr': '<f4'".into(), "`{`"),
        ("".into(), "`{`"),
    ]
}

/// Shapes whose elements or bytes overflow, or with too many axes.
fn oversized_shapes() -> Vec<(String, &'static str)> {
    vec![
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}".into(),
            "too large",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808,)}".into(),
            "too large",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}".into(),
            "more elements",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,)}".into(),
            "more bytes",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3037000500, 3037000500, 3)}".into(),
            "more elements",
        ),
        (
            format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': ({})}}",
                "1,".repeat(65)
            ),
            "64 axes",
        ),
    ]
}

/// Headers with non-ASCII text.
fn non_ascii_headers() -> Vec<(String, &'static str)> {
    vec![
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\u{e9}".into(),
            "not ASCII",
        ),
        (
            "{'descr': '<f\u{e9}', 'fortran_order': False, 'shape': (2,), }".into(),
            "not ASCII",
        ),
        (
            "{'descr': '\u{1F600}', 'fortran_order': False, 'shape': (2,), }".into(),
            "not ASCII",
        ),
    ]
}

/// Every malformed header family, in several sizes and positions: an error, never a panic.
#[test]
fn malformed_headers_are_errors_not_panics() {
    let bad = [
        malformed_shapes(),
        malformed_dictionaries(),
        oversized_shapes(),
        non_ascii_headers(),
    ]
    .concat();
    for version in [1u8, 2, 3] {
        for (text, want) in &bad {
            for body in [&[][..], &[0u8; 8][..], &[0u8; 100][..]] {
                let err = parse_npy(&npy_text(version, text, body))
                    .expect_err(&format!("accepted {text}"));
                assert!(err.contains(want), "{text}: {err} (wanted {want})");
            }
        }
    }
}

#[test]
fn a_non_ascii_byte_anywhere_in_a_header_is_an_error() {
    // A non-ASCII byte at every position of a valid header.
    let good = npy("<f4", &[2], &[0u8; 8]);
    for at in 10..good.len() - 8 {
        let mut b = good.clone();
        b[at] = 0xC3;
        let err = parse_npy(&b).expect_err("non-ASCII accepted");
        assert!(
            err.contains("not ASCII") && err.contains(&format!("byte {}", at - 10)),
            "{err}"
        );
    }
}

#[test]
fn header_lengths_that_lie_are_errors() {
    // Version 2/3 length fields near u32::MAX, just above the cap, and longer than the file.
    for version in [2u8, 3] {
        for hlen in [
            u32::MAX,
            u32::MAX - 11,
            u32::try_from(MAX_HEADER_BYTES + 1).unwrap(),
            1 << 20,
        ] {
            let mut b = b"\x93NUMPY".to_vec();
            b.extend([version, 0]);
            b.extend(hlen.to_le_bytes());
            b.extend(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}");
            let err = parse_npy(&b).unwrap_err();
            assert!(err.contains("at most 65536"), "{hlen}: {err}");
        }
        for hlen in [200u32, 65536] {
            let mut b = b"\x93NUMPY".to_vec();
            b.extend([version, 0]);
            b.extend(hlen.to_le_bytes());
            b.extend(b"{'descr'");
            let err = parse_npy(&b).unwrap_err();
            assert!(err.contains("truncated header"), "{hlen}: {err}");
        }
    }
    // Version 1, length past the end; short preambles; unknown versions.
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend(1000u16.to_le_bytes());
    assert!(parse_npy(&b).unwrap_err().contains("truncated header"));
    for n in 0..12 {
        let good = npy("<f4", &[1], &[0u8; 4]);
        assert!(parse_npy(&good[..n]).is_err());
    }
    for v in [0u8, 4, 255] {
        let mut b = npy("<f4", &[1], &[0u8; 4]);
        b[6] = v;
        assert!(parse_npy(&b).unwrap_err().contains("version"));
    }
    assert!(
        parse_npy(b"\x93NUMPX\x01\x00\x00\x00")
            .unwrap_err()
            .contains("magic")
    );
}

#[test]
fn sizes_are_checked_not_wrapped() {
    // Shapes whose element count fits but whose byte size would not, for each item size,
    // and products that wrap to small numbers in modular arithmetic.
    for (descr, size) in [("<f8", 8u128), ("<f4", 4), ("<f2", 2), ("|u1", 1)] {
        for shape in [
            vec![1usize << 62],
            vec![1 << 32, 1 << 31],
            vec![1 << 21, 1 << 21, 1 << 21],
            vec![3, 6148914691236517206],
            vec![1 << 32, 1 << 32, 0], // zero elements: accepted, 0 bytes
            vec![1 << 61, 3],
            vec![(1 << 60) - 1, 4],
        ] {
            let total: u128 = shape.iter().map(|&d| d as u128).product::<u128>() * size;
            let r = parse_header(&npy(descr, &shape, &[]));
            if total <= i64::MAX as u128 {
                let h = r.unwrap();
                assert_eq!(h.data_bytes as u128, total, "{shape:?}");
            } else {
                let e = r.unwrap_err();
                assert!(e.contains("can be addressed"), "{shape:?}: {e}");
            }
        }
    }
    // A zero-length first axis with huge other axes: 0 bytes, row size saturates.
    let h = parse_header(&npy("<f4", &[0, usize::MAX >> 1, 4], &[])).unwrap();
    assert_eq!((h.elements, h.data_bytes), (0, 0));
    assert_eq!(h.row_bytes(), usize::MAX);
}
