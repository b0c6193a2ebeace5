//! NumPy `.npz` datasets: one array per model input (first axis = samples), optional labels.
//!
//! The file is untrusted and may be far larger than memory (real evaluation sets are tens of
//! GB), so [`Dataset::open`] reads only the zip directory and each member's `.npy` header, and
//! the data is read later, a batch of rows at a time ([`Rows`]): stored members by seeking to
//! the rows, deflated members (`numpy.savez_compressed`) by inflating the member sequentially.
//! Every size taken from a header is checked before it becomes an allocation or an offset;
//! the zip directory's sizes are never trusted for allocation; a member is never inflated past
//! the size its `.npy` header declares.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest `.npy` header accepted (numpy writes a few hundred bytes; its own reader refuses
/// headers over 10 kB unless told otherwise).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most axes an array may have (numpy's own limit).
pub const MAX_RANK: usize = 64;
/// Deflate cannot inflate more than 1032 bytes per compressed byte; a member that declares
/// more than that of its compressed size (plus slack for tiny members) is lying.
const DEFLATE_MAX_RATIO: u64 = 1032;
const DEFLATE_SLACK: u64 = 64 * 1024;
/// Largest buffer reserved ahead of the bytes actually arriving (a read grows past it only as
/// data is really there).
const RESERVE_AHEAD: usize = 8 << 20;

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
    fn decode(dtype: Dtype, bytes: Vec<u8>) -> Self {
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
            Dtype::I8 => Self::I8(bytes.iter().map(|&b| b as i8).collect()),
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
enum Fault {
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
fn read_header(r: &mut impl Read) -> Result<Header, Fault> {
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
        .filter(|&b| b <= i64::MAX as usize)
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
    // header_len <= 12 + MAX_HEADER_BYTES, and the header was read from buf: in range.
    let body = &buf[h.header_len as usize..];
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read dataset {dataset}")]
    Read {
        dataset: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read dataset {dataset}, array `{array}`")]
    ReadArray {
        dataset: String,
        array: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "dataset {dataset} is not a NumPy .npz archive (a zip of .npy files): save it with numpy.savez"
    )]
    NotNpz {
        dataset: String,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("dataset {dataset}, array `{array}`: {what}")]
    BadArray {
        dataset: String,
        array: String,
        what: String,
    },
    #[error("dataset {dataset}: {what}")]
    Bad { dataset: String, what: String },
}

/// One `.npy` member of the archive: its header and where its data is.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub header: Header,
    /// Index in the zip directory.
    index: usize,
    /// Stored (seekable) rather than deflated.
    stored: bool,
    /// For a stored member: the file offset of its first data byte.
    data_offset: u64,
    /// The zip directory's CRC-32 of the member (header and data).
    crc32: u32,
}

impl Member {
    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    /// Deflated (numpy.savez_compressed) rather than stored (numpy.savez).
    pub fn is_compressed(&self) -> bool {
        !self.stored
    }
}

/// The name an array is shown by in messages (never empty, control characters escaped).
fn shown(name: &str) -> String {
    if name.is_empty() {
        "(empty name)".into()
    } else {
        name.escape_debug().to_string()
    }
}

/// An opened `.npz`: the directory and every member's header, no data.
#[derive(Debug, Clone)]
pub struct Dataset {
    path: PathBuf,
    display: String,
    members: BTreeMap<String, Member>,
}

type Zip = zip::ZipArchive<BufReader<File>>;

/// The zip archive a deflated member is streamed from; one per concurrent [`Rows`] (each
/// holds its archive while it reads). Opened on first use.
#[derive(Default)]
pub struct Archive {
    zip: Option<Zip>,
}

impl Dataset {
    /// Opens `path`, reading only the zip directory and the `.npy` headers. `display` names the
    /// dataset in every message (the URI the user wrote, not a scratch path).
    pub fn open(path: &Path, display: &str) -> Result<Self, Error> {
        let display = if display.is_empty() {
            path.display().to_string()
        } else {
            display.to_string()
        };
        let read = |source| Error::Read {
            dataset: display.clone(),
            source,
        };
        let f = File::open(path).map_err(read)?;
        let file_len = f.metadata().map_err(read)?.len();
        let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|source| Error::NotNpz {
            dataset: display.clone(),
            source,
        })?;
        let mut members = BTreeMap::new();
        for index in 0..zip.len() {
            let m = Self::member(&mut zip, index, file_len, &display)?;
            let Some(m) = m else { continue };
            if members.contains_key(&m.name) {
                return Err(Error::BadArray {
                    dataset: display,
                    array: shown(&m.name),
                    what: "the archive holds two members of this name".into(),
                });
            }
            members.insert(m.name.clone(), m);
        }
        if members.is_empty() {
            return Err(Error::Bad {
                dataset: display,
                what: "the archive holds no .npy arrays".into(),
            });
        }
        Ok(Self {
            path: path.into(),
            display,
            members,
        })
    }

    /// Opens `path`, named by its path in messages.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::open(path, &path.display().to_string())
    }

    /// Reads one member's header and checks its sizes; None for a member that is not `.npy`.
    fn member(
        zip: &mut Zip,
        index: usize,
        file_len: u64,
        display: &str,
    ) -> Result<Option<Member>, Error> {
        // Member data lies before the central directory (and within the file).
        let data_end = file_len.min(zip.central_directory_start());
        let raw_name = zip.name_for_index(index).unwrap_or("");
        let Some(name) = raw_name.strip_suffix(".npy").map(str::to_string) else {
            return Ok(None);
        };
        let bad = |what: String| Error::BadArray {
            dataset: display.into(),
            array: shown(&name),
            what,
        };
        if name.is_empty() {
            return Err(bad(
                "a member named `.npy` has no array name: save arrays with names, e.g. numpy.savez(path, input=x)".into(),
            ));
        }
        let mut e = zip
            .by_index(index)
            .map_err(|e| member_error(e, display, &name))?;
        let stored = match e.compression() {
            zip::CompressionMethod::Stored => true,
            zip::CompressionMethod::Deflated => false,
            other => {
                return Err(bad(format!(
                    "compression method {other} is not supported: save with numpy.savez or numpy.savez_compressed"
                )));
            }
        };
        if e.encrypted() {
            return Err(bad("the member is encrypted".into()));
        }
        let (data_start, compressed, size, crc32) =
            (e.data_start(), e.compressed_size(), e.size(), e.crc32());
        let h = read_header(&mut e).map_err(|f| fault(f, display, &name))?;
        drop(e);
        let total = h.total_bytes();
        if size != total {
            return Err(bad(format!(
                "the zip directory says the member holds {size} bytes but its .npy header declares {total} ({} of header, {} of {} data): the archive is damaged",
                h.header_len,
                h.data_bytes,
                h.describe()
            )));
        }
        let end = data_start
            .checked_add(compressed)
            .filter(|&e| e <= data_end);
        if end.is_none() {
            return Err(bad(format!(
                "the zip directory places {compressed} bytes at offset {data_start}, past the end of the member data ({data_end} bytes): the archive is truncated or damaged"
            )));
        }
        if stored && compressed != total {
            return Err(bad(format!(
                "a stored member of {compressed} bytes cannot hold the {total} bytes its .npy header declares: the archive is damaged"
            )));
        }
        if !stored
            && total
                > compressed
                    .saturating_mul(DEFLATE_MAX_RATIO)
                    .saturating_add(DEFLATE_SLACK)
        {
            return Err(bad(format!(
                "{compressed} compressed bytes cannot inflate to the {total} bytes its .npy header declares: the archive is damaged"
            )));
        }
        Ok(Some(Member {
            name,
            index,
            stored,
            // Within the file (checked above), so no overflow.
            data_offset: data_start.saturating_add(h.header_len),
            header: h,
            crc32,
        }))
    }

    /// The file read (scratch).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name messages use.
    pub fn display_name(&self) -> &str {
        &self.display
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Members in name order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// `name dtype[shape]` of every array, for messages.
    pub fn names(&self) -> String {
        self.members
            .values()
            .map(|m| format!("{} {}", shown(&m.name), m.header.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn find(&self, name: &str) -> Result<&Member, Error> {
        self.members.get(name).ok_or_else(|| Error::BadArray {
            dataset: self.display.clone(),
            array: shown(name),
            what: format!("no such array (arrays: {})", self.names()),
        })
    }

    fn bad(&self, name: &str, what: String) -> Error {
        Error::BadArray {
            dataset: self.display.clone(),
            array: shown(name),
            what,
        }
    }

    /// A sequential reader of `name`'s rows (samples, first axis) from row 0. A deflated
    /// member is inflated from `archive`, which the reader holds while it lives.
    pub fn rows<'a>(&'a self, name: &str, archive: &'a mut Archive) -> Result<Rows<'a>, Error> {
        let m = self.find(name)?;
        let mut crc = Crc32::new();
        let src = if m.stored {
            let mut f = File::open(&self.path).map_err(|source| Error::Read {
                dataset: self.display.clone(),
                source,
            })?;
            // The header's bytes start the member's CRC (checked when the data is read through).
            let mut header = vec![0u8; m.header.header_len as usize];
            f.seek(SeekFrom::Start(m.data_offset - m.header.header_len))
                .and_then(|_| f.read_exact(&mut header))
                .map_err(|e| fault(Fault::Io(e), &self.display, &m.name))?;
            crc.update(&header);
            Src::Stored(f)
        } else {
            let zip = match archive.zip.take() {
                Some(zip) => archive.zip.insert(zip),
                None => {
                    let f = File::open(&self.path).map_err(|source| Error::Read {
                        dataset: self.display.clone(),
                        source,
                    })?;
                    let zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|source| {
                        Error::NotNpz {
                            dataset: self.display.clone(),
                            source,
                        }
                    })?;
                    archive.zip.insert(zip)
                }
            };
            let mut e = zip
                .by_index(m.index)
                .map_err(|e| member_error(e, &self.display, &m.name))?;
            let h = read_header(&mut e).map_err(|f| fault(f, &self.display, &m.name))?;
            if h != m.header {
                return Err(self.bad(
                    &m.name,
                    "the .npy header changed since the dataset was opened".into(),
                ));
            }
            Src::Deflated(Box::new(e))
        };
        Ok(Rows {
            ds: self,
            member: m,
            src,
            pos: 0,
            row: 0,
            crc: Some(crc),
        })
    }

    /// Rows `[start, start + count)` of `name` (seeks in a stored member; inflates a deflated
    /// one from its start). Rows that reach the end are checked as [`Rows::finish`] does.
    pub fn read_rows(&self, name: &str, start: usize, count: usize) -> Result<Array, Error> {
        let mut archive = Archive::default();
        let mut rows = self.rows(name, &mut archive)?;
        rows.skip(start)?;
        let a = rows.read(count)?;
        rows.finish()?;
        Ok(a)
    }

    /// The whole array (a rank-0 array too), checked to be exactly its declared size.
    pub fn read(&self, name: &str) -> Result<Array, Error> {
        let mut archive = Archive::default();
        let mut rows = self.rows(name, &mut archive)?;
        let m = rows.member;
        let h = &m.header;
        let bytes = rows.bytes(h.data_bytes)?;
        let arr = Array {
            shape: h.shape.clone(),
            data: ArrayData::decode(h.dtype, bytes),
        };
        rows.finish()?;
        Ok(arr)
    }
}

enum Src<'a> {
    /// The file, seeked to each read.
    Stored(File),
    /// The member's inflating reader, past the `.npy` header.
    Deflated(Box<zip::read::ZipFile<'a, BufReader<File>>>),
}

/// Reads one array's rows in order, a batch at a time: memory is one batch.
pub struct Rows<'a> {
    ds: &'a Dataset,
    member: &'a Member,
    src: Src<'a>,
    /// Data bytes consumed.
    pos: usize,
    /// Rows consumed.
    row: usize,
    /// CRC-32 of a stored member's bytes so far, while they were all read in order.
    crc: Option<Crc32>,
}

impl Rows<'_> {
    pub fn member(&self) -> &Member {
        self.member
    }

    /// Rows not read yet.
    pub fn remaining(&self) -> usize {
        self.member
            .header
            .samples()
            .unwrap_or(0)
            .saturating_sub(self.row)
    }

    fn samples(&self) -> Result<usize, Error> {
        self.member.header.samples().ok_or_else(|| {
            self.ds.bad(
                &self.member.name,
                format!(
                    "is a scalar ({}); it needs a first axis of samples",
                    self.member.header.describe()
                ),
            )
        })
    }

    /// Byte range of `count` rows from the current position, checked against the shape.
    fn span(&self, count: usize) -> Result<usize, Error> {
        let n = self.samples()?;
        let row = self.member.header.row_bytes();
        let done = self.row;
        if done.checked_add(count).is_none_or(|end| end > n) {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "has {n} samples; rows {done}..{} were asked for",
                    done.saturating_add(count)
                ),
            ));
        }
        // count rows fit in the data, whose size fits in usize.
        Ok(count.saturating_mul(row))
    }

    /// The next `count` rows.
    pub fn read(&mut self, count: usize) -> Result<Array, Error> {
        let len = self.span(count)?;
        let h = &self.member.header;
        let mut shape = h.shape.clone();
        shape[0] = count;
        let bytes = self.bytes(len)?;
        self.row += count;
        Ok(Array {
            shape,
            data: ArrayData::decode(h.dtype, bytes),
        })
    }

    /// Skips `count` rows.
    pub fn skip(&mut self, count: usize) -> Result<(), Error> {
        let len = self.span(count)?;
        let (ds, m) = (self.ds, self.member);
        match &mut self.src {
            Src::Deflated(r) => {
                let got = io::copy(&mut r.as_mut().take(len as u64), &mut io::sink())
                    .map_err(|e| fault(Fault::Io(e), &ds.display, &m.name))?;
                self.short(got, len as u64)?;
            }
            Src::Stored(_) if len > 0 => self.crc = None,
            Src::Stored(_) => {}
        }
        self.pos += len;
        self.row += count;
        Ok(())
    }

    /// Exactly `len` bytes at the current position; a buffer grows only as bytes arrive.
    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let (ds, m) = (self.ds, self.member);
        let mut buf = Vec::with_capacity(len.min(RESERVE_AHEAD));
        let got = match &mut self.src {
            Src::Stored(f) => {
                let at = m.data_offset.saturating_add(self.pos as u64);
                match f.seek(SeekFrom::Start(at)) {
                    Ok(_) => f.take(len as u64).read_to_end(&mut buf),
                    Err(e) => Err(e),
                }
            }
            Src::Deflated(r) => r.as_mut().take(len as u64).read_to_end(&mut buf),
        }
        .map_err(|e| fault(Fault::Io(e), &ds.display, &m.name))?;
        self.short(got as u64, len as u64)?;
        if let (Src::Stored(_), Some(crc)) = (&self.src, &mut self.crc) {
            crc.update(&buf);
        }
        self.pos += len;
        Ok(buf)
    }

    fn short(&self, got: u64, want: u64) -> Result<(), Error> {
        if got < want {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "data truncated: the member ends {} bytes into its data; the .npy header declares {} ({})",
                    self.pos as u64 + got,
                    self.member.header.data_bytes,
                    self.member.header.describe()
                ),
            ));
        }
        Ok(())
    }

    /// After the last row: a member read to its end must match its CRC, and a deflated one
    /// must end exactly where its header says (reading stops one byte past the declared
    /// size, whatever the member would inflate to). A member not read to its end (a limit)
    /// is not checked.
    pub fn finish(self) -> Result<(), Error> {
        if self.pos != self.member.header.data_bytes {
            return Ok(());
        }
        if let Some(crc) = &self.crc
            && matches!(self.src, Src::Stored(_))
            && crc.value() != self.member.crc32
        {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "corrupt member data: CRC-32 {:08x}, the zip directory says {:08x}",
                    crc.value(),
                    self.member.crc32
                ),
            ));
        }
        if let Src::Deflated(mut r) = self.src {
            let mut probe = [0u8; 1];
            let n = loop {
                match r.read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
            .map_err(|e| fault(Fault::Io(e), &self.ds.display, &self.member.name))?;
            if n != 0 {
                return Err(self.ds.bad(
                    &self.member.name,
                    format!(
                        "the member inflates to more than the {} bytes its .npy header declares ({})",
                        self.member.header.total_bytes(),
                        self.member.header.describe()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// CRC-32 (IEEE, as zip uses), a byte at a time.
#[derive(Debug, Clone)]
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

impl Crc32 {
    fn new() -> Self {
        Self(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    fn value(&self) -> u32 {
        !self.0
    }
}

/// A member's read failure: corrupt data is the dataset's fault, anything else a read error.
fn fault(f: Fault, dataset: &str, name: &str) -> Error {
    match f {
        Fault::Bad(what) => Error::BadArray {
            dataset: dataset.into(),
            array: shown(name),
            what,
        },
        Fault::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Error::BadArray {
                dataset: dataset.into(),
                array: shown(name),
                what: format!("corrupt member data: {e}"),
            }
        }
        Fault::Io(e) => Error::ReadArray {
            dataset: dataset.into(),
            array: shown(name),
            source: e,
        },
    }
}

fn member_error(e: zip::result::ZipError, dataset: &str, name: &str) -> Error {
    match e {
        zip::result::ZipError::Io(e) => fault(Fault::Io(e), dataset, name),
        other => Error::BadArray {
            dataset: dataset.into(),
            array: shown(name),
            what: format!("cannot open the zip member: {other}"),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
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
                    let body: Vec<u8> = (0..n * dtype.size()).map(|i| (i % 2) as u8).collect();
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
                    assert_eq!(h.header_len as usize + h.data_bytes, buf.len());
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

    /// Every malformed header family, in several sizes and positions: an error, never a panic.
    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let bad: Vec<(String, &str)> = vec![
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
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}".into(),
                "too large",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808,)}".into(),
                "too large",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}"
                    .into(),
                "more elements",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,)}".into(),
                "more bytes",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3037000500, 3037000500, 3)}"
                    .into(),
                "more elements",
            ),
            (
                format!(
                    "{{'descr': '<f4', 'fortran_order': False, 'shape': ({})}}",
                    "1,".repeat(65)
                ),
                "64 axes",
            ),
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
        ];
        for version in [1u8, 2, 3] {
            for (text, want) in &bad {
                for body in [&[][..], &[0u8; 8][..], &[0u8; 100][..]] {
                    let err = parse_npy(&npy_text(version, text, body))
                        .expect_err(&format!("accepted {text}"));
                    assert!(err.contains(want), "{text}: {err} (wanted {want})");
                }
            }
        }
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
                (MAX_HEADER_BYTES + 1) as u32,
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
}
