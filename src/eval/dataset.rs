//! NumPy `.npz` datasets: one array per model input (first axis = samples), optional labels.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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
        match self {
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::F16(_) => "float16",
            Self::I64(_) => "int64",
            Self::I32(_) => "int32",
            Self::I8(_) => "int8",
            Self::U8(_) => "uint8",
            Self::Bool(_) => "bool",
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
        self.shape.iter().skip(1).product()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read dataset {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "dataset {path} is not a NumPy .npz archive (a zip of .npy files): save it with numpy.savez"
    )]
    NotNpz {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("dataset {path}, array `{array}`: {what}")]
    BadArray {
        path: PathBuf,
        array: String,
        what: String,
    },
}

/// Arrays by name, in name order.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub path: PathBuf,
    pub arrays: BTreeMap<String, Array>,
}

impl Dataset {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let f = std::fs::File::open(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        let mut zip =
            zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|source| Error::NotNpz {
                path: path.into(),
                source,
            })?;
        let mut arrays = BTreeMap::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|source| Error::NotNpz {
                path: path.into(),
                source,
            })?;
            let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
                continue;
            };
            let mut buf = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut buf).map_err(|source| Error::Read {
                path: path.into(),
                source,
            })?;
            let arr = parse_npy(&buf).map_err(|what| Error::BadArray {
                path: path.into(),
                array: name.clone(),
                what,
            })?;
            arrays.insert(name, arr);
        }
        if arrays.is_empty() {
            return Err(Error::BadArray {
                path: path.into(),
                array: "*".into(),
                what: "the archive holds no .npy arrays".into(),
            });
        }
        Ok(Self {
            path: path.into(),
            arrays,
        })
    }

    pub fn names(&self) -> String {
        self.arrays
            .iter()
            .map(|(k, a)| format!("{k} {}{:?}", a.data.dtype(), a.shape))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses one `.npy` file (format versions 1-3, little-endian, C order).
pub fn parse_npy(buf: &[u8]) -> Result<Array, String> {
    if buf.len() < 10 || &buf[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (hlen, start) = match buf[6] {
        1 => (u16::from_le_bytes([buf[8], buf[9]]) as usize, 10),
        2 | 3 if buf.len() >= 12 => (
            u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = std::str::from_utf8(buf.get(start..start + hlen).ok_or("truncated header")?)
        .map_err(|_| "header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or(format!("header lacks '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("");
    if field("fortran_order")?.starts_with("True") {
        return Err(
            "Fortran-ordered arrays are not supported: save with numpy.ascontiguousarray".into(),
        );
    }
    let shape_s = field("shape")?;
    let shape_s = &shape_s[1..shape_s.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry `{s}`"))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &buf[start + hlen..];
    let need = |size: usize| -> Result<&[u8], String> {
        body.get(..n * size).ok_or(format!(
            "data truncated: {} bytes for {n} elements of {size} bytes",
            body.len()
        ))
    };
    macro_rules! le {
        ($t:ty, $size:expr) => {
            need($size)?
                .chunks_exact($size)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
    }
    let data = match descr {
        "<f4" => ArrayData::F32(le!(f32, 4)),
        "<f8" => ArrayData::F64(le!(f64, 8)),
        "<f2" => ArrayData::F16(
            need(2)?
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "<i8" => ArrayData::I64(le!(i64, 8)),
        "<i4" => ArrayData::I32(le!(i32, 4)),
        "|i1" => ArrayData::I8(need(1)?.iter().map(|&b| b as i8).collect()),
        "|u1" => ArrayData::U8(need(1)?.to_vec()),
        "|b1" => ArrayData::Bool(need(1)?.iter().map(|&b| b != 0).collect()),
        other => {
            return Err(format!(
                "unsupported dtype `{other}` (use little-endian float32/float64/float16/int64/int32/int8/uint8/bool)"
            ));
        }
    };
    Ok(Array { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_s = if shape.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn parses_float32_matrix() {
        let body: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", &[2, 3], &body)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, ArrayData::F32(vec![1., 2., 3., 4., 5., 6.]));
        assert_eq!(a.per_sample(), 3);
    }

    #[test]
    fn truncated_data_is_an_error() {
        let err = parse_npy(&npy("<i8", &[4], &[0u8; 16])).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn big_endian_is_refused_with_advice() {
        let err = parse_npy(&npy(">f4", &[1], &[0u8; 4])).unwrap_err();
        assert!(err.contains("little-endian"), "{err}");
    }
}
