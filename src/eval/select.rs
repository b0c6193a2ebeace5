//! Output selection (pure): what part of each sample's output is scored. An index or a range
//! along per-sample axes (`spec.evaluation.select`), then pooling over one axis, masked by a
//! dataset array (`spec.evaluation.pool`), then L2 normalisation (`spec.evaluation.normalize`).
//!
//! Axes are numbered per sample, as the model's output has them after the samples axis, in
//! `select` and `pool` alike; the plan is made once from the first batch's shape and applied to
//! every sample.

use crate::api::{AxisSelect, PoolOp, PoolSpec};

/// The user's selection, as written (checked against the output's shape by [`Selection::plan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub select: Vec<AxisSelect>,
    pub pool: Option<PoolSpec>,
    pub normalize: bool,
}

/// The pooled axis (after removed axes), the op, and the mask's range of positions.
type PoolPlan = (usize, PoolOp, Option<(usize, usize)>);

/// A selection checked against one per-sample shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per-sample shape of the model's output.
    input: Vec<usize>,
    /// Per axis of the input: the kept range, and whether the axis is removed (an index).
    ranges: Vec<(usize, usize, bool)>,
    /// The pooled axis, numbered after removed axes are gone; with the mask's range.
    pool: Option<PoolPlan>,
    normalize: bool,
    /// Per-sample shape of the result.
    output: Vec<usize>,
    /// Mask elements per sample, when there is a mask.
    mask_len: Option<usize>,
}

impl Selection {
    pub fn is_identity(&self) -> bool {
        self.select.is_empty() && self.pool.is_none() && !self.normalize
    }

    pub fn mask(&self) -> Option<&str> {
        self.pool.as_ref().and_then(|p| p.mask.as_deref())
    }

    /// Checks the selection against the output's per-sample `shape` (`name` for messages); the
    /// mask's per-sample element count when there is one. Errors name the field.
    pub fn plan(
        &self,
        name: &str,
        shape: &[usize],
        mask_len: Option<usize>,
    ) -> Result<Plan, String> {
        let rank = shape.len();
        let mut ranges: Vec<(usize, usize, bool)> = shape.iter().map(|&d| (0, d, false)).collect();
        for (i, s) in self.select.iter().enumerate() {
            let at = format!("spec.evaluation.select[{i}]");
            let axis = s.axis as usize;
            if axis >= rank {
                return Err(format!(
                    "{at}.axis is {axis}, but output `{name}` has {rank} axes per sample (shape {shape:?} after the samples axis)"
                ));
            }
            let len = shape[axis];
            let pos = |v: i64, field: &str, inclusive_end: bool| -> Result<usize, String> {
                let p = if v < 0 { len as i64 + v } else { v };
                let hi = if inclusive_end {
                    len as i64
                } else {
                    len as i64 - 1
                };
                if p < 0 || p > hi {
                    return Err(format!(
                        "{at}.{field} is {v}, outside axis {axis} of output `{name}`, which has {len} positions"
                    ));
                }
                Ok(p as usize)
            };
            ranges[axis] = match s.index {
                Some(ix) => {
                    let p = pos(ix, "index", false)?;
                    (p, p + 1, true)
                }
                None => {
                    let a = pos(s.start.unwrap_or(0), "start", true)?;
                    let b = pos(s.end.unwrap_or(len as i64), "end", true)?;
                    if a >= b {
                        return Err(format!(
                            "{at}: start {a} is not before end {b} on axis {axis} of output `{name}`: the range is empty"
                        ));
                    }
                    (a, b, false)
                }
            };
        }
        let pool = match &self.pool {
            None => None,
            Some(p) => Some(self.plan_pool(p, name, shape, &ranges, mask_len)?),
        };
        let mut output: Vec<usize> = ranges
            .iter()
            .filter(|r| !r.2)
            .map(|&(a, b, _)| b - a)
            .collect();
        if let Some((axis, _, _)) = pool {
            output.remove(axis);
        }
        Ok(Plan {
            input: shape.to_vec(),
            ranges,
            pool,
            normalize: self.normalize,
            output,
            mask_len,
        })
    }

    fn plan_pool(
        &self,
        p: &PoolSpec,
        name: &str,
        shape: &[usize],
        ranges: &[(usize, usize, bool)],
        mask_len: Option<usize>,
    ) -> Result<PoolPlan, String> {
        let axis = p.axis as usize;
        let rank = shape.len();
        if axis >= rank {
            return Err(format!(
                "spec.evaluation.pool.axis is {axis}, but output `{name}` has {rank} axes per sample (shape {shape:?} after the samples axis)"
            ));
        }
        let (a, b, removed) = ranges[axis];
        if removed {
            return Err(format!(
                "spec.evaluation.pool.axis {axis} is removed by an index in spec.evaluation.select"
            ));
        }
        let at = ranges[..axis].iter().filter(|r| !r.2).count();
        let mask = match (p.mask.as_deref(), mask_len) {
            (None, _) => None,
            (Some(m), None) => {
                return Err(format!(
                    "spec.evaluation.pool.mask: no array `{m}` in the dataset"
                ));
            }
            // The mask covers the whole axis (the selection's range is taken from it too), or
            // exactly the selected range.
            (Some(_), Some(l)) if l == shape[axis] => Some((a, b)),
            (Some(_), Some(l)) if l == b - a => Some((0, l)),
            (Some(m), Some(l)) => {
                return Err(format!(
                    "spec.evaluation.pool.mask `{m}` has {l} elements per sample, but axis {axis} of output `{name}` has {} positions",
                    shape[axis]
                ));
            }
        };
        Ok((at, p.op, mask))
    }
}

impl Plan {
    /// Per-sample shape of the selected output.
    pub fn output_shape(&self) -> &[usize] {
        &self.output
    }

    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }

    pub fn mask_len(&self) -> Option<usize> {
        self.mask_len
    }

    /// One sample's selected values appended to `out` (`sample`: the input shape's elements;
    /// `mask`: its mask row when the plan has one).
    pub fn apply(&self, sample: &[f32], mask: Option<&[f32]>, out: &mut Vec<f32>) {
        let picked = self.pick(sample);
        let from = out.len();
        match self.pool {
            None => out.extend(picked),
            Some((axis, op, m)) => {
                let kept: Vec<usize> = self
                    .ranges
                    .iter()
                    .filter(|r| !r.2)
                    .map(|&(a, b, _)| b - a)
                    .collect();
                let outer: usize = kept[..axis].iter().product();
                let len = kept[axis];
                let inner: usize = kept[axis + 1..].iter().product();
                let weight = |j: usize| match (m, mask) {
                    (Some((a, _)), Some(row)) => row.get(a + j).copied().unwrap_or(0.0),
                    _ => 1.0,
                };
                pool(&picked, (outer, len, inner), op, weight, out);
            }
        }
        if self.normalize {
            let v = &mut out[from..];
            let norm = v
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                v.iter_mut()
                    .for_each(|x| *x = (f64::from(*x) / norm) as f32);
            }
        }
    }

    /// The selected ranges, in row-major order (removed axes have length 1 and vanish).
    fn pick(&self, sample: &[f32]) -> Vec<f32> {
        if self
            .ranges
            .iter()
            .zip(&self.input)
            .all(|(r, &d)| r.0 == 0 && r.1 == d)
        {
            return sample.to_vec();
        }
        let rank = self.input.len();
        let mut strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.input[i + 1];
        }
        let count: usize = self.ranges.iter().map(|&(a, b, _)| b - a).product();
        let mut out = Vec::with_capacity(count);
        let mut idx: Vec<usize> = self.ranges.iter().map(|r| r.0).collect();
        for _ in 0..count {
            let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out.push(sample[off]);
            for ax in (0..rank).rev() {
                idx[ax] += 1;
                if idx[ax] < self.ranges[ax].1 {
                    break;
                }
                idx[ax] = self.ranges[ax].0;
            }
        }
        out
    }
}

/// Mean or max over the middle axis of `[outer, len, inner]`; positions of weight 0 are left
/// out (a mean weighs by the mask; all masked out: zeros).
fn pool(
    v: &[f32],
    (outer, len, inner): (usize, usize, usize),
    op: PoolOp,
    weight: impl Fn(usize) -> f32,
    out: &mut Vec<f32>,
) {
    for o in 0..outer {
        for i in 0..inner {
            let (mut acc, mut wsum, mut any) = (0f64, 0f64, false);
            let mut best = f32::NEG_INFINITY;
            for j in 0..len {
                let w = weight(j);
                if w == 0.0 {
                    continue;
                }
                let x = v[(o * len + j) * inner + i];
                acc += f64::from(w) * f64::from(x);
                wsum += f64::from(w);
                best = best.max(x);
                any = true;
            }
            out.push(match (op, any) {
                (_, false) => 0.0,
                (PoolOp::Mean, true) => (acc / wsum) as f32,
                (PoolOp::Max, true) => best,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(select: Vec<AxisSelect>, pool: Option<PoolSpec>, normalize: bool) -> Selection {
        Selection {
            select,
            pool,
            normalize,
        }
    }

    fn index(axis: u32, i: i64) -> AxisSelect {
        AxisSelect {
            axis,
            index: Some(i),
            ..Default::default()
        }
    }

    #[test]
    fn token_zero_is_the_cls_vector() {
        // [tokens 3, hidden 2]
        let s = sel(vec![index(0, 0)], None, false);
        let p = s.plan("h", &[3, 2], None).unwrap();
        assert_eq!(p.output_shape(), &[2]);
        let mut out = Vec::new();
        p.apply(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], None, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        // The last token, counted from the end.
        let p = sel(vec![index(0, -1)], None, false)
            .plan("h", &[3, 2], None)
            .unwrap();
        let mut out = Vec::new();
        p.apply(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], None, &mut out);
        assert_eq!(out, [5.0, 6.0]);
    }

    #[test]
    fn a_masked_mean_leaves_padding_out_and_normalises() {
        let s = sel(
            vec![],
            Some(PoolSpec {
                op: PoolOp::Mean,
                axis: 0,
                mask: Some("attention_mask".into()),
            }),
            false,
        );
        let p = s.plan("h", &[3, 2], Some(3)).unwrap();
        let mut out = Vec::new();
        // Tokens (1,2), (3,4) real; (100,100) padding.
        p.apply(
            &[1.0, 2.0, 3.0, 4.0, 100.0, 100.0],
            Some(&[1.0, 1.0, 0.0]),
            &mut out,
        );
        assert_eq!(out, [2.0, 3.0]);
        let mut s = s;
        s.normalize = true;
        let p = s.plan("h", &[3, 2], Some(3)).unwrap();
        let mut out = Vec::new();
        p.apply(
            &[3.0, 0.0, 3.0, 8.0, 9.0, 9.0],
            Some(&[1.0, 1.0, 0.0]),
            &mut out,
        );
        assert_eq!(out, [0.6, 0.8]);
    }

    #[test]
    fn a_range_then_max_pool_over_the_other_axis() {
        // [2, 3]: rows (1, 5, 2), (7, 0, 3); keep columns 1..3, max over rows.
        let s = sel(
            vec![AxisSelect {
                axis: 1,
                start: Some(1),
                ..Default::default()
            }],
            Some(PoolSpec {
                op: PoolOp::Max,
                axis: 0,
                mask: None,
            }),
            false,
        );
        let p = s.plan("y", &[2, 3], None).unwrap();
        assert_eq!(p.output_shape(), &[2]);
        let mut out = Vec::new();
        p.apply(&[1.0, 5.0, 2.0, 7.0, 0.0, 3.0], None, &mut out);
        assert_eq!(out, [5.0, 3.0]);
    }

    #[test]
    fn axes_and_positions_out_of_range_name_the_field() {
        let e = sel(vec![index(2, 0)], None, false)
            .plan("h", &[3, 2], None)
            .unwrap_err();
        assert!(
            e.contains("spec.evaluation.select[0].axis is 2") && e.contains("2 axes"),
            "{e}"
        );
        let e = sel(vec![index(0, 3)], None, false)
            .plan("h", &[3, 2], None)
            .unwrap_err();
        assert!(e.contains("select[0].index is 3"), "{e}");
        let pool = |axis, mask: Option<&str>| PoolSpec {
            op: PoolOp::Mean,
            axis,
            mask: mask.map(Into::into),
        };
        let e = sel(vec![], Some(pool(5, None)), false)
            .plan("h", &[3, 2], None)
            .unwrap_err();
        assert!(e.contains("spec.evaluation.pool.axis is 5"), "{e}");
        let e = sel(vec![], Some(pool(0, Some("m"))), false)
            .plan("h", &[3, 2], Some(4))
            .unwrap_err();
        assert!(e.contains("spec.evaluation.pool.mask `m` has 4"), "{e}");
    }
}
