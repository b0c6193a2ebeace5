//! What is kept of a model's outputs, batch by batch (pure): the selected (and pooled)
//! compared output of each sample, plus the task's decoded form (text, boxes). Selection,
//! pooling and decoding happen per batch, so a whole raw output tensor is never held when a
//! selection reduces it.

use super::select::Plan;
use super::task::{self, Task};
use super::{EvalConfig, Outputs};

/// One model's outputs, collected over the batches.
pub struct Capture<'c> {
    cfg: &'c EvalConfig,
    name: &'c str,
    plan: Option<Plan>,
    out: Outputs,
}

/// A batch output: its shape and values (float).
pub type Tensor = (Vec<i64>, Vec<f32>);

impl<'c> Capture<'c> {
    pub fn new(cfg: &'c EvalConfig, name: &'c str) -> Self {
        Capture {
            cfg,
            name,
            plan: None,
            out: Outputs::default(),
        }
    }

    /// One batch of `rows` samples: `outs[0]` is the compared output, then the task's extra
    /// outputs in [`Task::extra_outputs`] order; `mask` holds the rows of the pooling mask.
    /// Errors name the spec field that does not fit the model.
    pub fn push(
        &mut self,
        rows: usize,
        outs: &[Tensor],
        mask: Option<&[f32]>,
    ) -> Result<(), String> {
        let (shape, v) = &outs[0];
        let name = self.name;
        let per_sample = per_sample_shape(name, shape, v.len(), rows)?;
        let plan = match self.plan.take() {
            Some(p) => p,
            None => {
                let mask_len = mask.map(|m| m.len() / rows.max(1));
                let plan = self.cfg.selection.plan(name, &per_sample, mask_len)?;
                self.start(&plan)?;
                plan
            }
        };
        let in_len = plan.input_len();
        if per_sample.iter().product::<usize>() != in_len || v.len() != in_len * rows {
            return Err(format!(
                "output `{name}` has shape {shape:?} for a batch of {rows} samples; kompress compares outputs per sample, so its first axis must be the samples and the rest must not change between batches"
            ));
        }
        let ml = plan.mask_len().unwrap_or(0);
        for i in 0..rows {
            let sample = &v[i * in_len..(i + 1) * in_len];
            let m = mask.map(|m| &m[i * ml..(i + 1) * ml]);
            let from = self.out.values.tail().len();
            plan.apply(sample, m, self.out.values.tail_mut());
            self.decode(from, outs, rows, i)?;
        }
        self.plan = Some(plan);
        self.out.samples += rows;
        Ok(())
    }

    /// Checks the task against the selected shape, once.
    fn start(&mut self, plan: &Plan) -> Result<(), String> {
        let shape = plan.output_shape();
        match &self.cfg.task {
            Task::Sequence { blank } => task::check_sequence(self.name, shape, *blank)?,
            Task::Detection(d) => task::check_layout(self.name, d.layout, shape)?,
            Task::Embedding { .. } if shape.len() != 1 => {
                return Err(format!(
                    "spec.evaluation.task.embedding reads one vector per sample, but output `{}` is {shape:?} per sample after the selection: select a token (select) or pool over an axis (pool)",
                    self.name
                ));
            }
            _ => {}
        }
        self.out.per_sample = plan.output_len();
        self.out.shape = shape.to_vec();
        self.out.classes =
            (shape.len() == 1 && shape[0] > 1 && self.cfg.task.reads_classes()).then_some(shape[0]);
        Ok(())
    }

    /// The task's decoded form of sample `i`, whose selected values start at `from`.
    fn decode(
        &mut self,
        from: usize,
        outs: &[Tensor],
        rows: usize,
        i: usize,
    ) -> Result<(), String> {
        let v = &self.out.values.tail()[from..];
        match &self.cfg.task {
            Task::Sequence { blank } => {
                let classes = self.out.shape[1];
                self.out
                    .sequences
                    .push(task::ctc_greedy(v, classes, *blank));
            }
            Task::Detection(d) if d.outputs.is_some() => {
                let part = |k: usize, field: &str| -> Result<&[f32], String> {
                    let (shape, data) = &outs[k];
                    if shape.first().copied() != Some(rows as i64) || data.len() % rows != 0 {
                        return Err(format!(
                            "spec.evaluation.task.detection.outputs.{field}: output has shape {shape:?} for a batch of {rows} samples; its first axis must be the samples"
                        ));
                    }
                    let per = data.len() / rows;
                    Ok(&data[i * per..(i + 1) * per])
                };
                let (b, s, c) = (part(1, "boxes")?, part(2, "scores")?, part(3, "classes")?);
                if b.len() != 4 * s.len() || s.len() != c.len() {
                    return Err(format!(
                        "spec.evaluation.task.detection.outputs: boxes must be [K, 4] and scores and classes [K] per sample; got {}, {} and {} values",
                        b.len(),
                        s.len(),
                        c.len()
                    ));
                }
                self.out.detections.push(task::decode_boxes(d, b, s, c));
            }
            Task::Detection(d) => {
                let dets = task::decode(d, &self.out.shape, v);
                self.out.detections.push(dets);
            }
            _ => {}
        }
        Ok(())
    }

    /// Classes per sample, once the first batch is in.
    pub fn classes(&self) -> Option<usize> {
        self.out.classes
    }

    /// Moves the values so far to the scratch file once they pass the evaluation's budget
    /// (between batches: a batch's values are decoded from memory).
    pub fn spill(&mut self) -> std::io::Result<()> {
        self.out.values.maybe_spill(self.cfg.spill.as_ref())
    }

    /// The per-sample shape after the selection, once the first batch is in.
    pub fn shape(&self) -> &[usize] {
        &self.out.shape
    }

    pub fn finish(self) -> Outputs {
        self.out
    }
}

/// The per-sample shape of a batch output (the first axis must be the samples).
fn per_sample_shape(
    name: &str,
    shape: &[i64],
    len: usize,
    rows: usize,
) -> Result<Vec<usize>, String> {
    match shape.split_first() {
        Some((&n, rest)) if n == rows as i64 && rest.iter().all(|&d| d >= 0) => {
            Ok(rest.iter().map(|&d| d as usize).collect())
        }
        // A flat output that still scales with the batch keeps working as before.
        _ if rows > 0 && len.is_multiple_of(rows) && shape.len() <= 1 => Ok(vec![len / rows]),
        _ => Err(format!(
            "output `{name}` has shape {shape:?} for a batch of {rows} samples; kompress compares outputs per sample, so its first axis must be the samples"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AxisSelect, EvaluationSpec};

    fn cfg(ev: EvaluationSpec) -> EvalConfig {
        EvalConfig::from_spec(&ev, None, None)
    }

    #[test]
    fn a_selected_token_is_kept_instead_of_the_whole_output() {
        let c = cfg(EvaluationSpec {
            select: vec![AxisSelect {
                axis: 0,
                index: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut cap = Capture::new(&c, "h");
        // 2 samples of [3 tokens, 2 hidden].
        let v: Vec<f32> = (0..12).map(|x| x as f32).collect();
        cap.push(2, &[(vec![2, 3, 2], v)], None).unwrap();
        let out = cap.finish();
        assert_eq!(
            (out.values.tail(), out.per_sample, out.samples),
            (&[0.0, 1.0, 6.0, 7.0][..], 2, 2)
        );
        assert_eq!(
            out.classes,
            Some(2),
            "a [N, C] selection reads as classes without a task"
        );
    }

    #[test]
    fn a_sequence_output_is_decoded_per_sample() {
        let c = cfg(EvaluationSpec {
            task: Some(crate::api::TaskSpec::Sequence(Default::default())),
            ..Default::default()
        });
        let mut cap = Capture::new(&c, "probs");
        // One sample, 3 steps, 3 classes: best 1, 0, 2.
        let v = vec![0.1, 0.8, 0.1, 0.9, 0.05, 0.05, 0.0, 0.2, 0.8];
        cap.push(1, &[(vec![1, 3, 3], v)], None).unwrap();
        assert_eq!(cap.finish().sequences, [vec![1, 2]]);
        let mut cap = Capture::new(&c, "probs");
        let e = cap
            .push(1, &[(vec![1, 9], vec![0.0; 9])], None)
            .unwrap_err();
        assert!(e.contains("[steps, classes]") && e.contains("[9]"), "{e}");
    }
}
