//! The dataset's labels, read as the task reads them: one class index per sample (the
//! classification task, or no task), each sample's target sequence (the sequence task) or
//! each sample's true boxes (the detection task). Metrics against them are in
//! [`super::quality`].

// Values here come from the dataset (labels, array elements, shapes): numeric casts that could
// truncate, wrap or lose a sign are checked conversions, or allowed where the value is bounded
// by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::task::{Det, Task};
use super::{ArrayData, Dataset, Dtype};

/// The labels of the evaluated rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// `[samples]` integers: one class index per sample.
    Classes(Vec<i64>),
    /// `[samples, length]` integers: each sample's target class indices (the CTC classes,
    /// blank excluded), padded with negative values.
    Sequences(Vec<Vec<u32>>),
    /// `[samples, boxes, 5]` numbers: x1, y1, x2, y2, class of each true box (corners, in the
    /// decoded boxes' coordinates); a row whose class is negative is padding.
    Boxes(Vec<Vec<Det>>),
}

impl Labels {
    pub fn classes(&self) -> Option<&[i64]> {
        match self {
            Self::Classes(c) => Some(c),
            _ => None,
        }
    }

    pub fn sequences(&self) -> Option<&[Vec<u32>]> {
        match self {
            Self::Sequences(s) => Some(s),
            _ => None,
        }
    }

    pub fn boxes(&self) -> Option<&[Vec<Det>]> {
        match self {
            Self::Boxes(b) => Some(b),
            _ => None,
        }
    }
}

/// The field that names the main dataset's labels array (`spec.edgeCases.labels` for the
/// edge cases).
pub const FIELD: &str = "spec.dataset.labels";

fn is_int(d: Dtype) -> bool {
    matches!(d, Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::I8)
}

/// What `task` reads as labels: the shape in words, and whether `shape`/`dtype` fit it.
fn expected(task: &Task, shape: &[usize], dtype: Dtype) -> (&'static str, bool) {
    match task {
        Task::Sequence { .. } => (
            "the sequence task reads [samples, length] integers (each sample's target class indices, padded with -1)",
            is_int(dtype) && shape.len() == 2,
        ),
        Task::Detection(_) => (
            "the detection task reads [samples, boxes, 5] numbers (x1, y1, x2, y2, class of each true box; a row with class -1 is padding)",
            dtype != Dtype::Bool && shape.len() == 3 && shape[2] == 5,
        ),
        _ => (
            "it must hold integer class indices, one per sample",
            is_int(dtype) && shape.len() == 1,
        ),
    }
}

/// Reads the first `samples` rows of array `name` as `task` reads labels. Errors name the
/// field and say which shape and type it needs.
// Class labels are integer arrays (`expected` refuses others), read through f64: each is a
// whole number, so `as i64` gives it back (saturating past 2^63, where no class is).
#[allow(clippy::cast_possible_truncation)]
pub fn read(
    ds: &Dataset,
    name: &str,
    field: &str,
    task: &Task,
    samples: usize,
) -> Result<Labels, String> {
    let at = format!("{field}: labels array `{name}`");
    let arr = ds
        .get(name)
        .ok_or_else(|| format!("{at} is missing (arrays: {})", ds.names()))?;
    let (shape, dtype) = (arr.shape().to_vec(), arr.dtype());
    let (want, fits) = expected(task, &shape, dtype);
    if !fits {
        return Err(format!(
            "{at} has shape {shape:?} and type {}; {want}",
            dtype.name()
        ));
    }
    if shape[0] < samples {
        return Err(format!(
            "{at} has shape {shape:?}; expected [{samples}{}] (one row per evaluated sample)",
            if shape.len() > 1 { ", ..." } else { "" }
        ));
    }
    let data = as_f64(
        ds.read_rows(name, 0, samples)
            .map_err(|e| e.to_string())?
            .data,
    );
    Ok(match task {
        Task::Sequence { .. } => Labels::Sequences(sequences(&data, shape[1], &at)?),
        Task::Detection(_) => Labels::Boxes(boxes(&data, shape[1], &at)?),
        _ => Labels::Classes(data.into_iter().map(|x| x as i64).collect()),
    })
}

/// Values as f64 (integers up to 2^53 exactly: class indices and coordinates).
fn as_f64(d: ArrayData) -> Vec<f64> {
    match d {
        ArrayData::F32(v) => v.into_iter().map(f64::from).collect(),
        ArrayData::F64(v) => v,
        ArrayData::F16(v) => v.into_iter().map(|x| f64::from(x.to_f32())).collect(),
        ArrayData::I64(v) => v.into_iter().map(|x| x as f64).collect(),
        ArrayData::I32(v) => v.into_iter().map(f64::from).collect(),
        ArrayData::I8(v) => v.into_iter().map(f64::from).collect(),
        ArrayData::U8(v) => v.into_iter().map(f64::from).collect(),
        ArrayData::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    }
}

/// Rows of `len` class indices; negative values are padding (anywhere in the row).
// Integer arrays (`expected`), read through f64: `as i64` is exact for whole numbers and
// saturates past 2^63, which the u32 conversion then refuses.
#[allow(clippy::cast_possible_truncation)]
fn sequences(v: &[f64], len: usize, at: &str) -> Result<Vec<Vec<u32>>, String> {
    if len == 0 {
        return Ok(vec![Vec::new(); v.len()]);
    }
    v.chunks_exact(len)
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .filter(|&&x| x >= 0.0)
                .map(|&x| {
                    u32::try_from(x as i64)
                        .map_err(|_| format!("{at}: value {x} of sample {i} is not a class index"))
                })
                .collect()
        })
        .collect()
}

/// Rows of `m` boxes (x1, y1, x2, y2, class); a box with a negative class is padding.
// Coordinates are f32 in the metrics (rounding only: each is checked finite); the class is
// checked finite and in [0, u32::MAX] before `as u32`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn boxes(v: &[f64], m: usize, at: &str) -> Result<Vec<Vec<Det>>, String> {
    if m == 0 {
        return Ok(vec![Vec::new(); v.len()]);
    }
    v.chunks_exact(m * 5)
        .enumerate()
        .map(|(i, row)| {
            let mut out = Vec::new();
            for b in row.chunks_exact(5).filter(|b| b[4] >= 0.0) {
                if b.iter().any(|x| !x.is_finite()) || b[4] > f64::from(u32::MAX) {
                    return Err(format!("{at}: box {b:?} of sample {i} is not a box"));
                }
                out.push(Det {
                    x1: b[0].min(b[2]) as f32,
                    y1: b[1].min(b[3]) as f32,
                    x2: b[0].max(b[2]) as f32,
                    y2: b[1].max(b[3]) as f32,
                    score: 1.0,
                    class: b[4] as u32,
                });
            }
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_values_are_padding() {
        let s = sequences(&[3.0, 5.0, -1.0, -1.0, 7.0, -1.0, -1.0, -1.0], 4, "x").unwrap();
        assert_eq!(s, [vec![3, 5], vec![7]]);
        let b = boxes(
            &[
                0.0, 0.0, 2.0, 2.0, 1.0, //
                -1.0, -1.0, -1.0, -1.0, -1.0, //
            ],
            2,
            "x",
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].len(), b[0][0].class, b[0][0].x2), (1, 1, 2.0));
        let e = boxes(&[0.0, 0.0, f64::NAN, 2.0, 1.0], 1, "labels").unwrap_err();
        assert!(e.contains("sample 0"), "{e}");
    }
}
