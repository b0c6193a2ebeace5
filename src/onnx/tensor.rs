//! Typed views of `TensorProto` payloads and constructors for the tensors passes emit.

use super::{Error, Result, pb};
use bytes::Bytes;

/// The ONNX element types kompress reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Int32,
    Int64,
    Float16,
    Double,
    Other(i32),
}

impl DataType {
    pub fn from_i32(v: i32) -> Self {
        use pb::tensor_proto::DataType as D;
        match D::try_from(v) {
            Ok(D::Float) => Self::Float,
            Ok(D::Uint8) => Self::Uint8,
            Ok(D::Int8) => Self::Int8,
            Ok(D::Int32) => Self::Int32,
            Ok(D::Int64) => Self::Int64,
            Ok(D::Float16) => Self::Float16,
            Ok(D::Double) => Self::Double,
            _ => Self::Other(v),
        }
    }

    pub fn to_i32(self) -> i32 {
        use pb::tensor_proto::DataType as D;
        match self {
            Self::Float => D::Float as i32,
            Self::Uint8 => D::Uint8 as i32,
            Self::Int8 => D::Int8 as i32,
            Self::Int32 => D::Int32 as i32,
            Self::Int64 => D::Int64 as i32,
            Self::Float16 => D::Float16 as i32,
            Self::Double => D::Double as i32,
            Self::Other(v) => v,
        }
    }

    /// Bytes per element (None for types kompress does not size, e.g. strings).
    pub fn size(self) -> Option<usize> {
        use pb::tensor_proto::DataType as D;
        Some(match self {
            Self::Float | Self::Int32 => 4,
            Self::Uint8 | Self::Int8 => 1,
            Self::Int64 | Self::Double => 8,
            Self::Float16 => 2,
            Self::Other(v) => match D::try_from(v).ok()? {
                D::Bool
                | D::Float8e4m3fn
                | D::Float8e4m3fnuz
                | D::Float8e5m2
                | D::Float8e5m2fnuz => 1,
                D::Int16 | D::Uint16 | D::Bfloat16 => 2,
                D::Uint32 => 4,
                D::Uint64 | D::Complex64 => 8,
                D::Complex128 => 16,
                _ => return None,
            },
        })
    }

    pub fn name(self) -> String {
        pb::tensor_proto::DataType::try_from(self.to_i32())
            .map(|d| d.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| format!("dtype{}", self.to_i32()))
    }
}

/// The element count of `dims`, or None when a dim is negative or the product overflows.
pub fn checked_numel(dims: &[i64]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// Read access to a tensor's shape, element type and byte size.
pub trait TensorData {
    fn dtype(&self) -> DataType;
    fn numel(&self) -> usize;
    /// Bytes of payload (raw or typed fields).
    fn payload_bytes(&self) -> usize;
    fn label(&self) -> &str;
}

impl TensorData for pb::TensorProto {
    fn dtype(&self) -> DataType {
        DataType::from_i32(self.data_type.unwrap_or(0))
    }

    fn numel(&self) -> usize {
        // `load` refuses tensors whose dims overflow, so saturating only guards hand-built ones.
        checked_numel(&self.dims).unwrap_or(usize::MAX)
    }

    fn payload_bytes(&self) -> usize {
        if let Some(raw) = &self.raw_data {
            return raw.len();
        }
        self.float_data.len() * 4
            + self.int32_data.len() * 4
            + self.int64_data.len() * 8
            + self.double_data.len() * 8
            + self.uint64_data.len() * 8
            + self.string_data.iter().map(Vec::len).sum::<usize>()
    }

    fn label(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("<unnamed>")
    }
}

/// The values of a float32 tensor, copied out (raw_data or float_data).
pub fn tensor_f32_values(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.dtype() != DataType::Float {
        return Err(Error::Tensor {
            tensor: t.label().into(),
            what: format!("expected float32, found {}", t.dtype().name()),
        });
    }
    let n = t.numel();
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) => {
            if raw.len() != n * 4 {
                return Err(Error::Tensor {
                    tensor: t.label().into(),
                    what: format!(
                        "raw_data holds {} bytes but dims {:?} need {}",
                        raw.len(),
                        t.dims,
                        n * 4
                    ),
                });
            }
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        None if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) => {
            return Err(Error::Tensor {
                tensor: t.label().into(),
                what: "external data was not loaded".into(),
            });
        }
        None => {
            if t.float_data.len() != n {
                return Err(Error::Tensor {
                    tensor: t.label().into(),
                    what: format!(
                        "float_data holds {} values but dims {:?} need {n}",
                        t.float_data.len(),
                        t.dims
                    ),
                });
            }
            t.float_data.clone()
        }
    };
    Ok(values)
}

/// A tensor of `dtype` whose little-endian bytes are `raw`.
pub fn raw_tensor(name: &str, dims: &[i64], dtype: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(dtype.to_i32()),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    raw_tensor(
        name,
        dims,
        DataType::Float,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn int8_tensor(name: &str, dims: &[i64], values: Vec<i8>) -> pb::TensorProto {
    raw_tensor(
        name,
        dims,
        DataType::Int8,
        values.into_iter().map(|v| v.to_le_bytes()[0]).collect(),
    )
}

pub fn scalar_f32(name: &str, v: f32) -> pb::TensorProto {
    f32_tensor(name, &[], &[v])
}

/// Replaces a float32 tensor's payload with new values of the same shape, keeping its other
/// fields (name, doc string, metadata).
pub fn set_f32_values(t: &mut pb::TensorProto, values: &[f32]) {
    t.float_data.clear();
    t.raw_data = Some(Bytes::from(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    ));
}
