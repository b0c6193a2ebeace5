//! How dataset rows become model inputs, for evaluation, calibration and latency alike:
//! arrays read by rows (samples on the array's first axis, moved to the input's batch axis),
//! scalars fed as is on every run, and recurrent state fed back from an output row after row
//! (`spec.dataset.inputs`). Each session that runs a [`Feeder`] carries its own state, so the
//! original and the candidate never share one.

// Values here come from the dataset (labels, array elements, shapes): numeric casts that could
// truncate, wrap or lose a sign are checked conversions, or allowed where the value is bounded
// by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::dataset::{Archive, Array, ArrayData, Dataset, Member, Rows};
use crate::api::InputFeed;
use ort::value::DynValue;

/// A model input as the session declares it.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub name: String,
    /// `Dtype::name()` spelling (`float32`, `int64`, ...).
    pub dtype: &'static str,
    /// -1 = any.
    pub shape: Vec<i64>,
}

/// Where one model input's values come from.
#[derive(Debug)]
pub enum Source<'d> {
    /// Rows of the dataset's array (samples on its first axis), placed on `axis` of the input.
    Rows { member: &'d Member, axis: usize },
    /// One value fed as is on every run.
    Fixed(Array),
    /// A recurrent state: `initial` (one row, the input's shape without `axis`) at each stream
    /// start, then the output `from` of the run before.
    State {
        initial: Array,
        from: String,
        axis: usize,
        /// Per dataset row: a new stream starts here (row 0 always does).
        resets: Option<Vec<bool>>,
    },
}

#[derive(Debug)]
pub struct Input<'d> {
    pub name: String,
    pub source: Source<'d>,
}

/// Every model input's source, in the model's input order, and the rows they hold.
#[derive(Debug)]
pub struct Plan<'d> {
    pub inputs: Vec<Input<'d>>,
    /// Rows of the arrays read by rows (all agree).
    pub rows: usize,
}

impl Plan<'_> {
    /// Rows run one at a time, in order (a state is fed back).
    pub fn is_stateful(&self) -> bool {
        self.inputs
            .iter()
            .any(|i| matches!(i.source, Source::State { .. }))
    }

    /// Archives for a [`Feeder`]: one per input read by rows.
    pub fn archives(&self) -> Vec<Archive> {
        self.inputs.iter().map(|_| Archive::default()).collect()
    }
}

/// Builds the plan: `specs` (spec.dataset.inputs) checked against the model's inputs and
/// outputs and the dataset's arrays. Errors are messages naming the field or array.
pub fn plan<'d>(
    model: &[ModelInput],
    outputs: &[String],
    ds: &'d Dataset,
    specs: &[InputFeed],
) -> Result<Plan<'d>, String> {
    for (i, s) in specs.iter().enumerate() {
        if !model.iter().any(|m| m.name == s.name) {
            let names: Vec<&str> = model.iter().map(|m| m.name.as_str()).collect();
            return Err(format!(
                "spec.dataset.inputs[{i}].name `{}` is not an input of the model (inputs: {})",
                s.name,
                names.join(", ")
            ));
        }
    }
    let mut inputs = Vec::with_capacity(model.len());
    let mut rows: Option<(usize, &str)> = None;
    for (k, inp) in model.iter().enumerate() {
        let name = &inp.name;
        if name.is_empty() {
            return Err(format!(
                "model input {k} has an empty name; arrays are matched to inputs by name"
            ));
        }
        let spec = specs.iter().enumerate().find(|(_, s)| &s.name == name);
        let source = source(inp, spec, outputs, ds)?;
        if let Source::Rows { member, .. } = &source {
            let n = member.shape()[0];
            match rows {
                Some((r, other)) if r != n => {
                    return Err(format!(
                        "array `{name}` has {n} samples, array `{other}` has {r}"
                    ));
                }
                _ => rows = Some((n, &member.name)),
            }
        }
        inputs.push(Input {
            name: name.clone(),
            source,
        });
    }
    let rows = match rows {
        Some((r, _)) => r,
        None if model.is_empty() => return Err("the model has no inputs".into()),
        None => {
            return Err(
                "no model input is read by rows (every one is a scalar or a state): nothing says how many samples there are".into(),
            );
        }
    };
    for (i, s) in specs.iter().enumerate() {
        if let Some(r) = &s.reset_on {
            let flags = resets(ds, r, rows, i)?;
            for inp in &mut inputs {
                if let Source::State { resets, .. } = &mut inp.source
                    && inp.name == s.name
                {
                    *resets = Some(flags.clone());
                }
            }
        }
    }
    Ok(Plan { inputs, rows })
}

/// One input's source: from its spec entry, else its array (a rank-0 array for a rank-0
/// input is a scalar).
fn source<'d>(
    inp: &ModelInput,
    spec: Option<(usize, &InputFeed)>,
    outputs: &[String],
    ds: &'d Dataset,
) -> Result<Source<'d>, String> {
    let name = &inp.name;
    let rank = inp.shape.len();
    let Some((i, spec)) = spec else {
        let arr = array(ds, name, inp, None)?;
        if rank == 0 && arr.shape().is_empty() {
            return Ok(Source::Fixed(ds.read(name).map_err(|e| e.to_string())?));
        }
        if rank == 0 {
            return Err(format!(
                "model input `{name}` is a scalar (rank 0) and array `{name}` has shape {:?}: save one value as a rank-0 array (np.array(v, dtype=...)), or give it in spec.dataset.inputs: [{{name: {name}, scalar: true, value: ...}}]",
                arr.shape()
            ));
        }
        rows_fit(arr, inp, 0, None)?;
        return Ok(Source::Rows {
            member: arr,
            axis: 0,
        });
    };
    let at = format!("spec.dataset.inputs[{i}]");
    if spec.scalar == Some(true) {
        return scalar(inp, spec, ds, &at).map(Source::Fixed);
    }
    let axis = spec.axis() as usize;
    if axis >= rank.max(1) {
        return Err(format!(
            "{at}.batchAxis is {axis} but model input `{name}` has {rank} axes (shape {:?}): choose an axis below {rank}{}",
            inp.shape,
            if rank == 0 {
                ", or feed it as a scalar (scalar: true)"
            } else {
                ""
            }
        ));
    }
    if let Some(from) = &spec.state_from {
        if !outputs.iter().any(|o| o == from) {
            return Err(format!(
                "{at}.stateFrom `{from}` is not an output of the model (outputs: {})",
                outputs.join(", ")
            ));
        }
        let Some(init) = &spec.initial else {
            return Err(format!(
                "{at}.initial is unset: a state input needs the dataset's array of its value at the start of each stream"
            ));
        };
        let m = array(ds, init, inp, Some(&format!("{at}.initial")))?;
        let row = row_shape(&inp.shape, axis);
        if !dims_fit(&row, m.shape()) {
            return Err(format!(
                "{at}.initial: array `{init}` has shape {:?} but one row of state input `{name}` is {row:?} (its shape {:?} without axis {axis}; -1 = any)",
                m.shape(),
                inp.shape
            ));
        }
        return Ok(Source::State {
            initial: ds.read(init).map_err(|e| e.to_string())?,
            from: from.clone(),
            axis,
            resets: None,
        });
    }
    let arr = array(ds, name, inp, None)?;
    rows_fit(arr, inp, axis, Some(&at))?;
    Ok(Source::Rows { member: arr, axis })
}

/// The dataset's array `name`, of the input's type.
fn array<'d>(
    ds: &'d Dataset,
    name: &str,
    inp: &ModelInput,
    field: Option<&str>,
) -> Result<&'d Member, String> {
    let by = field.map_or(String::new(), |f| format!(" ({f})"));
    let arr = ds.get(name).ok_or_else(|| {
        format!(
            "no array named `{name}`{by} for model input `{}` (arrays: {})",
            inp.name,
            ds.names()
        )
    })?;
    if arr.dtype().name() != inp.dtype {
        return Err(format!(
            "array `{name}`{by} is {} but model input `{}` expects {}: convert it, e.g. arr.astype(np.{})",
            arr.dtype().name(),
            inp.name,
            inp.dtype,
            inp.dtype
        ));
    }
    Ok(arr)
}

/// The input's shape without its batch axis.
fn row_shape(shape: &[i64], axis: usize) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != axis)
        .map(|(_, &d)| d)
        .collect()
}

/// Whether concrete dims `have` fit `want` (-1 = any).
fn dims_fit(want: &[i64], have: &[usize]) -> bool {
    want.len() == have.len()
        && want
            .iter()
            .zip(have)
            .all(|(w, h)| *w < 0 || u64::try_from(*w).ok() == u64::try_from(*h).ok())
}

/// An array read by rows: samples first, then the input's shape without its batch axis.
fn rows_fit(arr: &Member, inp: &ModelInput, axis: usize, at: Option<&str>) -> Result<(), String> {
    let row = row_shape(&inp.shape, axis);
    let have = arr.shape();
    if have.is_empty() || !dims_fit(&row, &have[1..]) {
        let name = &inp.name;
        if axis == 0 {
            return Err(format!(
                "array `{}` has shape {have:?} but model input `{name}` expects {:?} (-1 = any; axis 0 = samples)",
                arr.name, inp.shape
            ));
        }
        let mut want = vec![-1];
        want.extend(&row);
        return Err(format!(
            "array `{}` has shape {have:?} but model input `{name}` {:?} expects {want:?} in the dataset: samples on the array's first axis, then the input's shape without its batch axis {axis} ({}.batchAxis; -1 = any)",
            arr.name,
            inp.shape,
            at.unwrap_or("spec.dataset.inputs[]")
        ));
    }
    Ok(())
}

/// A scalar input's value: `value`, else its array of exactly the input's shape.
fn scalar(inp: &ModelInput, spec: &InputFeed, ds: &Dataset, at: &str) -> Result<Array, String> {
    let name = &inp.name;
    if let Some(v) = spec.value {
        if !inp.shape.is_empty() {
            return Err(format!(
                "{at}.value gives one number but model input `{name}` has shape {:?}: store its value as an array `{name}` of that shape instead",
                inp.shape
            ));
        }
        return value_array(v, inp.dtype)
            .map_err(|why| format!("{at}.value {v} does not fit model input `{name}`: {why}"));
    }
    let arr = array(ds, name, inp, Some(&format!("{at}.scalar")))?;
    if !dims_fit(&inp.shape, arr.shape()) {
        let hint = if inp.shape.is_empty() {
            format!(
                "save one value as a rank-0 array (np.array(16000, dtype=np.{})), or set {at}.value",
                inp.dtype
            )
        } else {
            "a scalar input is fed as is, so the array has the input's shape".to_string()
        };
        return Err(format!(
            "{at}.scalar: array `{name}` has shape {:?} but model input `{name}` has shape {:?} (rank {}): {hint}",
            arr.shape(),
            inp.shape,
            inp.shape.len()
        ));
    }
    ds.read(name).map_err(|e| e.to_string())
}

/// A rank-0 array of `dtype` holding `v` (whole and in range for an integer type).
// A float32 input's value rounds to the nearest f32; every integer type's value is first
// checked whole and in the type's range (`int`), so its cast is exact.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn value_array(v: f64, dtype: &str) -> Result<Array, String> {
    let int = |lo: f64, hi: f64| -> Result<f64, String> {
        if v.fract() != 0.0 || v < lo || v > hi {
            Err(format!("{dtype} holds whole numbers in [{lo}, {hi}]"))
        } else {
            Ok(v)
        }
    };
    let data = match dtype {
        "float32" => ArrayData::F32(vec![v as f32]),
        "float64" => ArrayData::F64(vec![v]),
        "float16" => ArrayData::F16(vec![half::f16::from_f64(v)]),
        // 2^53: the largest whole f64 range that converts exactly.
        "int64" => ArrayData::I64(vec![int(-9007199254740992.0, 9007199254740992.0)? as i64]),
        "int32" => ArrayData::I32(vec![int(i32::MIN as f64, i32::MAX as f64)? as i32]),
        "int8" => ArrayData::I8(vec![int(-128.0, 127.0)? as i8]),
        "uint8" => ArrayData::U8(vec![int(0.0, 255.0)? as u8]),
        "bool" => ArrayData::Bool(vec![int(0.0, 1.0)? != 0.0]),
        other => return Err(format!("inputs of type {other} cannot be given a value")),
    };
    Ok(Array {
        shape: Vec::new(),
        data,
    })
}

/// The per-row reset flags of `name` (spec.dataset.inputs[i].resetOn).
fn resets(ds: &Dataset, name: &str, rows: usize, i: usize) -> Result<Vec<bool>, String> {
    let at = format!("spec.dataset.inputs[{i}].resetOn");
    let m = ds
        .get(name)
        .ok_or_else(|| format!("{at}: no array named `{name}` (arrays: {})", ds.names()))?;
    if m.shape() != [rows] {
        return Err(format!(
            "{at}: array `{name}` has shape {:?}; expected [{rows}] (one flag per row)",
            m.shape()
        ));
    }
    let flags = match ds.read(name).map_err(|e| e.to_string())?.data {
        ArrayData::Bool(v) => v,
        ArrayData::U8(v) => v.into_iter().map(|x| x != 0).collect(),
        ArrayData::I8(v) => v.into_iter().map(|x| x != 0).collect(),
        ArrayData::I32(v) => v.into_iter().map(|x| x != 0).collect(),
        ArrayData::I64(v) => v.into_iter().map(|x| x != 0).collect(),
        other => {
            return Err(format!(
                "{at}: array `{name}` is {}; it must hold integer or bool flags",
                other.dtype()
            ));
        }
    };
    Ok(flags)
}

/// Applies a generic function to the vector inside an [`ArrayData`], keeping the variant.
macro_rules! each {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            ArrayData::F32($v) => ArrayData::F32($body),
            ArrayData::F64($v) => ArrayData::F64($body),
            ArrayData::F16($v) => ArrayData::F16($body),
            ArrayData::I64($v) => ArrayData::I64($body),
            ArrayData::I32($v) => ArrayData::I32($body),
            ArrayData::I8($v) => ArrayData::I8($body),
            ArrayData::U8($v) => ArrayData::U8($body),
            ArrayData::Bool($v) => ArrayData::Bool($body),
        }
    };
}

/// `[rows, outer, inner]` -> `[outer, rows, inner]` (row-major).
fn permute<T: Clone>(v: &[T], rows: usize, outer: usize, inner: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for o in 0..outer {
        for r in 0..rows {
            let at = (r * outer + o) * inner;
            out.extend_from_slice(&v[at..at + inner]);
        }
    }
    out
}

/// Rows read from the dataset (`[rows, row shape...]`) in the input's layout: the first
/// axis moved to `axis`.
pub fn to_axis(arr: Array, axis: usize) -> Array {
    if axis == 0 || arr.shape.is_empty() {
        return arr;
    }
    let rows = arr.shape[0];
    let axis = axis.min(arr.shape.len() - 1);
    let outer: usize = arr.shape[1..=axis].iter().product();
    let inner: usize = arr.shape[axis + 1..].iter().product();
    let mut shape = arr.shape[1..].to_vec();
    shape.insert(axis, rows);
    if rows == 1 || outer == 1 {
        return Array {
            shape,
            data: arr.data,
        };
    }
    Array {
        shape,
        data: each!(&arr.data, v => permute(v, rows, outer, inner)),
    }
}

/// `rows` copies of one row of state, in the input's layout.
pub fn tile(initial: &Array, rows: usize, axis: usize) -> Array {
    let mut shape = vec![rows];
    shape.extend(&initial.shape);
    let data = each!(&initial.data, v => {
        let mut out = Vec::with_capacity(v.len() * rows);
        for _ in 0..rows {
            out.extend_from_slice(v);
        }
        out
    });
    to_axis(Array { shape, data }, axis)
}

/// An output as an array (of the types datasets hold); None for another type.
pub fn array_of(v: &DynValue) -> Option<Array> {
    macro_rules! try_as {
        ($t:ty, $variant:ident) => {
            if let Ok((s, d)) = v.try_extract_tensor::<$t>() {
                let shape = s.iter().map(|&x| usize::try_from(x).unwrap_or(0)).collect();
                return Some(Array {
                    shape,
                    data: ArrayData::$variant(d.to_vec()),
                });
            }
        };
    }
    try_as!(f32, F32);
    try_as!(half::f16, F16);
    try_as!(f64, F64);
    try_as!(i64, I64);
    try_as!(i32, I32);
    try_as!(i8, I8);
    try_as!(u8, U8);
    try_as!(bool, Bool);
    None
}

/// The first `rows` rows of every input, as one run feeds them (a state from its initial
/// value): what latency times.
pub fn first_rows(
    plan: &Plan,
    ds: &Dataset,
    rows: usize,
) -> Result<Vec<(String, Array)>, super::Error> {
    plan.inputs
        .iter()
        .map(|i| {
            let a = match &i.source {
                Source::Rows { member, axis } => {
                    to_axis(ds.read_rows(&member.name, 0, rows)?, *axis)
                }
                Source::Fixed(a) => a.clone(),
                Source::State { initial, axis, .. } => tile(initial, rows, *axis),
            };
            Ok((i.name.clone(), a))
        })
        .collect()
}

/// Feeds a plan's inputs run after run: reads rows in order and carries each state from one
/// run's outputs to the next run's inputs.
pub struct Feeder<'a, 'd> {
    plan: &'a Plan<'d>,
    readers: Vec<Option<Rows<'a>>>,
    /// Each state input's value for the next run (None: its initial value).
    state: Vec<Option<Array>>,
    /// The dataset row of the next run.
    row: usize,
}

impl<'a, 'd: 'a> Feeder<'a, 'd> {
    /// A feeder from row `start` (`archives` from [`Plan::archives`]).
    pub fn new(
        plan: &'a Plan<'d>,
        ds: &'a Dataset,
        archives: &'a mut [Archive],
        start: usize,
    ) -> Result<Self, super::Error> {
        let mut readers = Vec::with_capacity(plan.inputs.len());
        for (i, a) in plan.inputs.iter().zip(archives.iter_mut()) {
            readers.push(match &i.source {
                Source::Rows { member, .. } => {
                    let mut r = ds.rows(&member.name, a)?;
                    r.skip(start)?;
                    Some(r)
                }
                _ => None,
            });
        }
        Ok(Self {
            plan,
            readers,
            state: plan.inputs.iter().map(|_| None).collect(),
            row: start,
        })
    }

    /// The next `rows` rows of every input (one row at a time for a stateful plan).
    pub fn next(&mut self, rows: usize) -> Result<Vec<(String, Array)>, super::Error> {
        let mut out = Vec::with_capacity(self.plan.inputs.len());
        for (k, i) in self.plan.inputs.iter().enumerate() {
            let a = match &i.source {
                Source::Rows { axis, .. } => match &mut self.readers[k] {
                    Some(r) => to_axis(r.read(rows)?, *axis),
                    None => unreachable!("a reader per input read by rows"),
                },
                Source::Fixed(a) => a.clone(),
                Source::State {
                    initial,
                    axis,
                    resets,
                    ..
                } => {
                    let reset = resets
                        .as_ref()
                        .is_some_and(|r| r.get(self.row).copied().unwrap_or(false));
                    match self.state[k].take() {
                        Some(s) if !reset => s,
                        _ => tile(initial, rows, *axis),
                    }
                }
            };
            out.push((i.name.clone(), a));
        }
        self.row += rows;
        Ok(out)
    }

    /// Keeps each state output of the run just made for the next run; `fed` is the shape each
    /// state input had in that run (the output must have it too).
    pub fn feed_back<'v>(
        &mut self,
        fed: &[(String, Vec<usize>)],
        get: impl Fn(&str) -> Option<&'v DynValue>,
    ) -> Result<(), String> {
        for (k, i) in self.plan.inputs.iter().enumerate() {
            let Source::State { from, .. } = &i.source else {
                continue;
            };
            let v = get(from).ok_or_else(|| format!("state output `{from}` missing"))?;
            let a = array_of(v).ok_or_else(|| {
                format!("state output `{from}` is not a tensor of a supported type")
            })?;
            let want = fed.iter().find(|(n, _)| n == &i.name).map(|(_, s)| s);
            if want.is_some_and(|w| w != &a.shape) {
                return Err(format!(
                    "state output `{from}` has shape {:?} but it feeds input `{}`, which was fed {:?}: stateFrom must name the output holding the next state",
                    a.shape,
                    i.name,
                    want.unwrap_or(&Vec::new())
                ));
            }
            self.state[k] = Some(a);
        }
        Ok(())
    }

    /// After the last row: checks members read to their end (see [`Rows::finish`]).
    pub fn finish(self) -> Result<(), super::Error> {
        for r in self.readers.into_iter().flatten() {
            r.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], v: Vec<f32>) -> Array {
        Array {
            shape: shape.to_vec(),
            data: ArrayData::F32(v),
        }
    }

    #[test]
    fn rows_move_to_the_batch_axis() {
        // Two rows of [2, 3] state -> [2, 2 rows, 3].
        let a = arr(&[2, 2, 3], (0..12).map(|x| x as f32).collect());
        let m = to_axis(a, 1);
        assert_eq!(m.shape, vec![2, 2, 3]);
        assert_eq!(
            m.data,
            ArrayData::F32(vec![
                0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 9.0, 10.0, 11.0
            ])
        );
        // The last axis.
        let a = arr(&[2, 3], (0..6).map(|x| x as f32).collect());
        let m = to_axis(a, 1);
        assert_eq!(m.shape, vec![3, 2]);
        assert_eq!(m.data, ArrayData::F32(vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
    }

    #[test]
    fn a_state_row_is_tiled_along_its_axis() {
        let init = arr(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let t = tile(&init, 3, 1);
        assert_eq!(t.shape, vec![2, 3, 2]);
        assert_eq!(
            t.data,
            ArrayData::F32(vec![
                1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0
            ])
        );
    }

    #[test]
    fn values_fit_the_input_type_or_say_why() {
        assert_eq!(
            value_array(16000.0, "int64").unwrap().data,
            ArrayData::I64(vec![16000])
        );
        assert!(
            value_array(0.5, "int64")
                .unwrap_err()
                .contains("whole numbers")
        );
        assert!(value_array(300.0, "uint8").is_err());
        assert_eq!(
            value_array(0.25, "float32").unwrap().data,
            ArrayData::F32(vec![0.25])
        );
    }
}
