//! float16 weight storage: each large float32 initializer is stored as float16 and a
//! `Cast(to=FLOAT)` recreates the float32 value under its original name. The file shrinks by
//! about half; ONNX Runtime folds the casts when the session loads, so the model runs wherever
//! fp32 runs, at fp32 speed. (A full fp16 graph needs fp16 kernels: GPU territory.)

use super::{Error, PassReport, Result, Skipped, TensorReport};
use crate::onnx::{self, DataType, Model, Namer, TensorData, pb};
use bytes::Bytes;
use half::f16;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Fp16Config {
    pub min_elements: u64,
    pub exclude_tensors: HashSet<String>,
    /// When set, only these initializers (whatever their size): a search's mixed-precision
    /// candidate stores its reverted layers in float16 and leaves the rest to the int form.
    pub only_tensors: Option<HashSet<String>>,
}

pub fn apply(cfg: &Fp16Config, model: &mut Model) -> Result<PassReport> {
    let mut report = PassReport {
        pass: "fp16".into(),
        description: "float16 weight storage (Cast to float32 at load)".into(),
        ..Default::default()
    };
    let g = model.graph();
    let graph_inputs: HashSet<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut namer = Namer::new(g);
    let mut casts = Vec::new();
    let mut converted: Vec<(usize, pb::TensorProto)> = Vec::new();
    for (i, t) in g.initializer.iter().enumerate() {
        let name = t.label().to_string();
        let listed = cfg.only_tensors.as_ref().map(|o| o.contains(t.label()));
        if listed == Some(false)
            || t.dtype() != DataType::Float
            || t.numel() == 0
            || (listed.is_none() && (t.numel() as u64) < cfg.min_elements)
        {
            continue;
        }
        let skip = |reason: &str| Skipped {
            node: name.clone(),
            reason: reason.into(),
        };
        if cfg.exclude_tensors.contains(&name) {
            report.skipped.push(skip("excluded by excludeTensors"));
            continue;
        }
        if graph_inputs.contains(name.as_str()) {
            report
                .skipped
                .push(skip("also a graph input (overridable at run time)"));
            continue;
        }
        let values = onnx::tensor_f32_values(t)?;
        let mut max_abs_error = 0f32;
        let (mut signal, mut noise) = (0f64, 0f64);
        let mut raw = Vec::with_capacity(values.len() * 2);
        for (index, &v) in values.iter().enumerate() {
            let h = f16::from_f32(v);
            if !v.is_finite() || h.is_infinite() {
                return Err(Error::Unsupported {
                    pass: "fp16",
                    what: format!(
                        "initializer `{name}` element {index} is {v}, outside float16's range (±65504): exclude it with excludeTensors"
                    ),
                });
            }
            let e = h.to_f32() - v;
            max_abs_error = max_abs_error.max(e.abs());
            signal += f64::from(v) * f64::from(v);
            noise += f64::from(e) * f64::from(e);
            raw.extend_from_slice(&h.to_le_bytes());
        }
        let stored = namer.fresh(&format!("{name}_fp16"));
        casts.push(onnx::cast_to_float(
            namer.fresh(&format!("{name}_to_float")),
            stored.clone(),
            name.clone(),
        ));
        converted.push((
            i,
            pb::TensorProto {
                name: Some(stored),
                dims: t.dims.clone(),
                data_type: Some(DataType::Float16.to_i32()),
                raw_data: Some(Bytes::from(raw)),
                doc_string: t.doc_string.clone(),
                ..Default::default()
            },
        ));
        report.tensors.push(TensorReport {
            tensor: name,
            elements: values.len() as u64,
            sparsity: super::sparsity(&values),
            max_abs_error: Some(max_abs_error),
            sqnr_db: super::math::sqnr_db((signal, noise)),
            ..Default::default()
        });
    }
    let graph = model.graph_mut();
    for (i, t) in converted {
        graph.initializer[i] = t;
    }
    // The casts come first: every consumer of a weight follows them in topological order.
    casts.append(&mut graph.node);
    graph.node = casts;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::f32_tensor;

    fn model(values: &[f32]) -> Model {
        let proto = pb::ModelProto {
            ir_version: Some(9),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(pb::GraphProto {
                initializer: vec![f32_tensor("W", &[values.len() as i64], values)],
                node: vec![onnx::node(
                    "Identity",
                    "id".into(),
                    vec!["W".into()],
                    vec!["y".into()],
                    vec![],
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        Model {
            proto,
            path: "m.onnx".into(),
            file_bytes: 0,
            had_external_data: false,
        }
    }

    fn cfg() -> Fp16Config {
        Fp16Config {
            min_elements: 1,
            exclude_tensors: HashSet::new(),
            only_tensors: None,
        }
    }

    #[test]
    fn weights_become_float16_behind_a_cast_that_keeps_their_name() {
        let mut m = model(&[0.5, -1.25, 3.0]);
        let r = apply(&cfg(), &mut m).unwrap();
        let g = m.graph();
        assert_eq!(g.initializer[0].name.as_deref(), Some("W_fp16"));
        assert_eq!(g.initializer[0].payload_bytes(), 6);
        assert_eq!(g.node[0].op_type.as_deref(), Some("Cast"));
        assert_eq!(g.node[0].output, vec!["W".to_string()]);
        assert_eq!(
            r.tensors[0].max_abs_error,
            Some(0.0),
            "these values are exact in float16"
        );
    }

    #[test]
    fn values_beyond_float16_range_are_refused_by_name() {
        let e = apply(&cfg(), &mut model(&[1.0, 1e6]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`W`") && e.contains("65504"), "{e}");
    }

    #[test]
    fn excluded_and_small_tensors_stay_float32() {
        let mut m = model(&[1.0; 4]);
        let c = Fp16Config {
            min_elements: 1,
            exclude_tensors: ["W".to_string()].into(),
            only_tensors: None,
        };
        assert!(apply(&c, &mut m).unwrap().tensors.is_empty());
        let c = Fp16Config {
            min_elements: 5,
            exclude_tensors: HashSet::new(),
            only_tensors: None,
        };
        assert!(apply(&c, &mut m).unwrap().tensors.is_empty());
        assert_eq!(m.graph().initializer[0].dtype(), DataType::Float);
    }

    #[test]
    fn only_the_listed_tensors_become_float16_whatever_their_size() {
        let mut m = model(&[1.0; 4]);
        let c = Fp16Config {
            min_elements: 1024,
            exclude_tensors: HashSet::new(),
            only_tensors: Some(["W".to_string()].into()),
        };
        assert_eq!(apply(&c, &mut m).unwrap().tensors.len(), 1);
        let mut m = model(&[1.0; 4]);
        let c = Fp16Config {
            only_tensors: Some(["V".to_string()].into()),
            ..c
        };
        assert!(apply(&c, &mut m).unwrap().tensors.is_empty());
    }
}
