//! The `.npy` format: element types, the header (parsed without trusting a size in it) and
//! whole arrays.

use std::io::{self, Read};

/// Largest `.npy` header accepted (numpy writes a few hundred bytes; its own reader refuses
/// headers over 10 kB unless told otherwise).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most axes an array may have (numpy's own limit).
pub const MAX_RANK: usize = 64;

/// Element types kompress reads (little-endian, the types ONNX models take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::F16 => "float16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    fn from_descr(descr: &str) -> Result<Self, String> {
        Ok(match descr {
            "<f4" => Self::F32,
            "<f8" => Self::F64,
            "<f2" => Self::F16,
            "<i8" => Self::I64,
            "<i4" => Self::I32,
            "|i1" => Self::I8,
            "|u1" => Self::U8,
            "|b1" => Self::Bool,
            other => {
                return Err(format!(
                    "unsupported dtype `{}` (use little-endian float32/float64/float16/int64/int32/int8/uint8/bool)",
                    other.escape_debug()
                ));
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<half::f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl ArrayData {
    pub fn dtype(&self) -> &'static str {
        self.kind().name()
    }

    pub fn kind(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::F64(_) => Dtype::F64,
            Self::F16(_) => Dtype::F16,
            Self::I64(_) => Dtype::I64,
            Self::I32(_) => Dtype::I32,
            Self::I8(_) => Dtype::I8,
            Self::U8(_) => Dtype::U8,
            Self::Bool(_) => Dtype::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U8(v) => v.len(),
            Self::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Little-endian bytes of `dtype`, decoded (`bytes.len()` is a multiple of the size).
    pub(super) fn decode(dtype: Dtype, bytes: Vec<u8>) -> Self {
        macro_rules! le {
            ($t:ty, $n:expr) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    })
                    .collect()
            };
        }
        match dtype {
            Dtype::F32 => Self::F32(le!(f32, 4)),
            Dtype::F64 => Self::F64(le!(f64, 8)),
            Dtype::F16 => Self::F16(le!(half::f16, 2)),
            Dtype::I64 => Self::I64(le!(i64, 8)),
            Dtype::I32 => Self::I32(le!(i32, 4)),
            Dtype::I8 => Self::I8(bytes.iter().map(|&b| i8::from_le_bytes([b])).collect()),
            Dtype::U8 => Self::U8(bytes),
            Dtype::Bool => Self::Bool(bytes.iter().map(|&b| b != 0).collect()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl Array {
    /// Elements per sample (product of all but the first axis).
    pub fn per_sample(&self) -> usize {
        self.shape
            .iter()
            .skip(1)
            .fold(1usize, |a, &d| a.saturating_mul(d))
    }
}

/// A parsed `.npy` header: what the data that follows it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length field, header text).
    pub header_len: u64,
    /// Elements (the product of `shape`; checked to fit, as is `data_bytes`).
    pub elements: usize,
    /// Bytes of data: `elements * dtype.size()`.
    pub data_bytes: usize,
}

impl Header {
    /// [`Header::header_len`] as a length in memory.
    // header_len <= 12 + MAX_HEADER_BYTES (read_header refuses more): it fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    pub fn header_bytes(&self) -> usize {
        self.header_len as usize
    }

    /// Samples: the length of the first axis; None for a rank-0 (scalar) array.
    pub fn samples(&self) -> Option<usize> {
        self.shape.first().copied()
    }

    /// Bytes per sample (per row of the first axis); for a rank-0 array, the one element.
    pub fn row_bytes(&self) -> usize {
        if self.shape.iter().skip(1).any(|&d| d == 0) {
            return 0;
        }
        // The product of all axes times the size fits in usize and, when the first axis is
        // non-zero, bounds this one; a zero first axis can hide an overflow, so saturate.
        self.shape
            .iter()
            .skip(1)
            .fold(self.dtype.size(), |a, &d| a.saturating_mul(d))
    }

    /// Header plus data: the member's whole size.
    pub fn total_bytes(&self) -> u64 {
        // Cannot overflow: header_len is at most 12 + MAX_HEADER_BYTES and data_bytes at most
        // i64::MAX (checked when parsed).
        self.header_len + self.data_bytes as u64
    }

    pub fn describe(&self) -> String {
        format!("{}{:?}", self.dtype.name(), self.shape)
    }
}

/// Why a `.npy` could not be read: bad content, or the reader failed.
#[derive(Debug)]
pub(super) enum Fault {
    Bad(String),
    Io(io::Error),
}

impl From<String> for Fault {
    fn from(s: String) -> Self {
        Self::Bad(s)
    }
}

impl From<&str> for Fault {
    fn from(s: &str) -> Self {
        Self::Bad(s.into())
    }
}

/// Reads exactly `buf.len()` bytes; a short read is the given truncation message.
fn fill(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), Fault> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Fault::Bad(what.into())),
        Err(e) => Err(Fault::Io(e)),
    }
}

/// Reads and parses a `.npy` header (format versions 1-3) from the start of `r`, leaving `r`
/// at the first data byte.
pub(super) fn read_header(r: &mut impl Read) -> Result<Header, Fault> {
    let mut pre = [0u8; 8];
    fill(r, &mut pre, "not a .npy array (shorter than its magic)")?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (hlen, start) = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            fill(r, &mut l, "truncated header")?;
            (u16::from_le_bytes(l) as usize, 10u64)
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            fill(r, &mut l, "truncated header")?;
            let n = u32::from_le_bytes(l);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        v => return Err(format!("unsupported .npy format version {v}").into()),
    };
    if hlen > MAX_HEADER_BYTES {
        return Err(format!(
            "header claims {hlen} bytes; at most {MAX_HEADER_BYTES} are accepted (numpy writes a few hundred)"
        )
        .into());
    }
    let mut text = vec![0u8; hlen];
    fill(r, &mut text, "truncated header")?;
    let (dtype, shape) = parse_dict(&text)?;
    // An empty axis makes the array empty, however large the others are.
    let elements = if shape.contains(&0) {
        Some(0)
    } else {
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
    .ok_or_else(|| format!("shape {shape:?} has more elements than can be addressed"))?;
    let data_bytes = elements
        .checked_mul(dtype.size())
        // No file holds more than i64::MAX bytes (numpy's own limit too); this keeps every
        // offset and header + data sum below u64::MAX.
        .filter(|&b| i64::try_from(b).is_ok())
        .ok_or_else(|| {
            format!(
                "shape {shape:?} of {} holds more bytes than can be addressed",
                dtype.name()
            )
        })?;
    Ok(Header {
        dtype,
        shape,
        header_len: start + hlen as u64,
        elements,
        data_bytes,
    })
}

/// Parses one `.npy` header from the start of `buf` (see [`read_header`]).
pub fn parse_header(buf: &[u8]) -> Result<Header, String> {
    read_header(&mut &buf[..]).map_err(|f| match f {
        Fault::Bad(s) => s,
        Fault::Io(e) => e.to_string(),
    })
}

/// The header dictionary: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, a
/// Python literal, parsed strictly (ASCII, the three keys once each, nothing else).
fn parse_dict(text: &[u8]) -> Result<(Dtype, Vec<usize>), String> {
    if let Some(at) = text.iter().position(|b| !b.is_ascii()) {
        return Err(format!(
            "bad .npy header: byte {at} is not ASCII (0x{:02x})",
            text[at]
        ));
    }
    let mut p = Parser { s: text, at: 0 };
    p.ws();
    p.expect(b'{', "the header dictionary")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string("a key")?;
        p.ws();
        p.expect(b':', &format!("'{key}'"))?;
        p.ws();
        let dup = match key {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err(
                        "structured (record) dtypes are not supported: save one plain array per input".into(),
                    );
                }
                descr
                    .replace(Dtype::from_descr(p.string("the dtype of 'descr'")?)?)
                    .is_some()
            }
            "fortran_order" => fortran.replace(p.boolean()?).is_some(),
            "shape" => shape.replace(p.tuple()?).is_some(),
            other => {
                return Err(format!(
                    "bad .npy header: unexpected key '{}'",
                    other.escape_debug()
                ));
            }
        };
        if dup {
            return Err(format!("bad .npy header: key '{key}' appears twice"));
        }
        p.ws();
        if p.eat(b'}') {
            break;
        }
        p.expect(b',', "a `,` or `}` after a value")?;
    }
    p.ws();
    if p.at < p.s.len() {
        return Err(format!(
            "bad .npy header: text after the dictionary at byte {}",
            p.at
        ));
    }
    let descr = descr.ok_or("header lacks 'descr'")?;
    let fortran = fortran.ok_or("header lacks 'fortran_order'")?;
    let shape = shape.ok_or("header lacks 'shape'")?;
    // A Fortran-ordered array of rank < 2 has the same layout as a C-ordered one.
    if fortran && shape.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(
            "Fortran-ordered arrays are not supported: save with numpy.ascontiguousarray".into(),
        );
    }
    Ok((descr, shape))
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn fail(&self, what: &str) -> String {
        match self.peek() {
            Some(c) => format!(
                "bad .npy header: expected {what} at byte {}, found `{}`",
                self.at,
                (c as char).escape_debug()
            ),
            None => format!("bad .npy header: expected {what}, found the end"),
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.fail(&format!("`{}` ({what})", c as char)))
        }
    }

    /// A quoted string without escapes ('...' or "...").
    fn string(&mut self, what: &str) -> Result<&'a str, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.fail(&format!("a quoted string ({what})"))),
        };
        let from = self.at + 1;
        let len = self.s[from..]
            .iter()
            .position(|&c| c == q || c == b'\\')
            .filter(|&n| self.s[from + n] == q)
            .ok_or_else(|| format!("bad .npy header: unterminated string at byte {}", self.at))?;
        self.at = from + len + 1;
        // ASCII was checked, so this cannot fail.
        std::str::from_utf8(&self.s[from..from + len]).map_err(|e| e.to_string())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.at..].starts_with(word) {
                self.at += word.len();
                return Ok(v);
            }
        }
        Err(self.fail("True or False ('fortran_order')"))
    }

    /// `()`, `(n,)`, `(n, m)`, `(n, m,)`: non-negative integers that fit in i64.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(', "'shape' as a tuple")?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                break;
            }
            if dims.len() == MAX_RANK {
                return Err(format!(
                    "bad .npy header: shape has more than {MAX_RANK} axes"
                ));
            }
            dims.push(self.dim()?);
            self.ws();
            if self.eat(b')') {
                break;
            }
            self.expect(b',', "`,` or `)` in 'shape'")?;
        }
        Ok(dims)
    }

    fn dim(&mut self) -> Result<usize, String> {
        let from = self.at;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or_else(|| {
                    format!("bad .npy header: shape entry at byte {from} is too large")
                })?;
            self.at += 1;
        }
        if self.at == from {
            return Err(self.fail("a non-negative integer in 'shape'"));
        }
        self.eat(b'L'); // Python 2's long literals
        usize::try_from(v)
            .map_err(|_| format!("bad .npy header: shape entry {v} is too large for this machine"))
    }
}

/// Parses one whole `.npy` file (format versions 1-3, little-endian, C order): the data must
/// be exactly the size the header declares.
pub fn parse_npy(buf: &[u8]) -> Result<Array, String> {
    let h = parse_header(buf)?;
    // The header was read from buf: in range.
    let body = &buf[h.header_bytes()..];
    if body.len() < h.data_bytes {
        return Err(format!(
            "data truncated: {} bytes for {} elements of {} bytes",
            body.len(),
            h.elements,
            h.dtype.size()
        ));
    }
    if body.len() > h.data_bytes {
        return Err(format!(
            "{} bytes follow the {} bytes of data the header declares",
            body.len() - h.data_bytes,
            h.data_bytes
        ));
    }
    Ok(Array {
        data: ArrayData::decode(h.dtype, body.to_vec()),
        shape: h.shape,
    })
}
