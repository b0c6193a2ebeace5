//! Small ONNX models the tests build (MLPs, embeddings, planted weights) and running them.

use super::*;

/// Deterministic values in [-1, 1).
pub fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9e3779b97f4a7c15);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(
                                d.map(Value::DimValue)
                                    .unwrap_or_else(|| Value::DimParam("batch".into())),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An MLP `input [batch, widths[0]] -> logits [batch, widths.last()]`: MatMul + Add (+ Relu
/// between layers), weights from a seeded generator scaled like He init.
pub fn mlp(widths: &[usize], seed: u64) -> pb::ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    for (i, w) in widths.windows(2).enumerate() {
        let (din, dout) = (w[0], w[1]);
        let scale = (2.0 / din as f32).sqrt();
        let wv: Vec<f32> = lcg(din * dout, seed + i as u64)
            .iter()
            .map(|v| v * scale)
            .collect();
        let bv: Vec<f32> = lcg(dout, seed + 100 + i as u64)
            .iter()
            .map(|v| v * 0.1)
            .collect();
        inits.push(f32_tensor(
            &format!("W{i}"),
            &[din as i64, dout as i64],
            &wv,
        ));
        inits.push(f32_tensor(&format!("B{i}"), &[dout as i64], &bv));
        let last = i == widths.len() - 2;
        let mm = format!("mm{i}");
        let out = if last {
            "logits".to_string()
        } else {
            format!("h{i}")
        };
        let add = if last { out.clone() } else { format!("pre{i}") };
        nodes.push(kompress::onnx::node(
            "MatMul",
            format!("MatMul_{i}"),
            vec![x.clone(), format!("W{i}")],
            vec![mm.clone()],
            vec![],
        ));
        nodes.push(kompress::onnx::node(
            "Add",
            format!("Add_{i}"),
            vec![mm, format!("B{i}")],
            vec![add.clone()],
            vec![],
        ));
        if !last {
            nodes.push(kompress::onnx::node(
                "Relu",
                format!("Relu_{i}"),
                vec![add],
                vec![out.clone()],
                vec![],
            ));
        }
        x = out;
    }
    pb::ModelProto {
        producer_name: Some("kompress-tests".into()),
        metadata_props: vec![pb::StringStringEntryProto {
            key: Some("fixture".into()),
            value: Some("mlp".into()),
        }],
        ..model_of(
            9,
            17,
            pb::GraphProto {
                name: Some("mlp".into()),
                node: nodes,
                initializer: inits,
                input: vec![value_info("input", &[None, Some(widths[0] as i64)])],
                output: vec![value_info(
                    "logits",
                    &[None, Some(*widths.last().unwrap() as i64)],
                )],
                ..Default::default()
            },
        )
    }
}

/// A model of `graph` at IR version `ir`, importing the default ONNX domain at `opset`.
pub fn model_of(ir: i64, opset: i64, graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(ir),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// The model's outputs on every sample of `ds`, flat, through ONNX Runtime with
/// `eval_cfg(batch_size)` (the model opened and its inputs prepared on its own session).
pub fn outputs_on(model: &Path, ds: &kompress::eval::Dataset, batch_size: usize) -> Vec<f32> {
    use kompress::eval;
    let cfg = eval_cfg(batch_size);
    let mut s = eval::open(model, &cfg).unwrap();
    let prep = eval::prepare(&s, ds, &cfg).unwrap();
    eval::evaluate(&mut s, &prep, &cfg, &|_, _| {})
        .unwrap()
        .0
        .values
        .into_vec()
        .unwrap()
}

/// [`outputs_on`] the npz at `data`.
pub fn outputs(model: &Path, data: &Path, batch_size: usize) -> Vec<f32> {
    outputs_on(
        model,
        &kompress::eval::Dataset::load(data).unwrap(),
        batch_size,
    )
}

/// The initializer `name` of `m` (panics naming it when there is none).
pub fn initializer<'a>(
    m: &'a kompress::onnx::Model,
    name: &str,
) -> &'a kompress::onnx::pb::TensorProto {
    m.graph()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer `{name}`"))
}

/// The op types of the model's nodes, in order.
pub fn ops(m: &kompress::onnx::Model) -> Vec<String> {
    m.graph()
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap_or_default())
        .collect()
}

/// Rewrites the values of the model's first initializer (`W0` of an [`mlp`]) with `edit`.
pub fn edit_first_weight(model: &mut pb::ModelProto, edit: impl FnOnce(&mut Vec<f32>)) {
    let w = &mut model.graph.as_mut().unwrap().initializer[0];
    let mut v = kompress::onnx::tensor_f32_values(w).unwrap();
    edit(&mut v);
    kompress::onnx::set_f32_values(w, &v);
}

/// `model` written to `path` and loaded back as the pipeline loads it.
pub fn write_and_load(model: &pb::ModelProto, path: &Path) -> kompress::onnx::Model {
    write_model(model, path);
    kompress::onnx::load(path).unwrap()
}

pub fn write_model(model: &pb::ModelProto, path: &Path) {
    use prost::Message;
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A model with one node appended to its output `out`: `op(out, constant)` (Gather takes
/// `axis`), under the output's name, so the dataset and the spec fit it unchanged.
pub fn planted(
    src: &Path,
    dst: &Path,
    out: &str,
    op: &str,
    constant: pb::TensorProto,
    axis: Option<i64>,
) {
    use prost::Message;
    let mut m = pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let inner = format!("{out}__before_plant");
    for n in &mut g.node {
        for o in &mut n.output {
            if o == out {
                *o = inner.clone();
            }
        }
    }
    let cname = constant.name.clone().unwrap();
    g.initializer.push(constant);
    g.node.push(kompress::onnx::node(
        op,
        "planted".into(),
        vec![inner, cname],
        vec![out.into()],
        axis.map(|a| vec![kompress::onnx::attr_int("axis", a)])
            .unwrap_or_default(),
    ));
    std::fs::write(dst, m.encode_to_vec()).unwrap();
}

pub fn i64_tensor(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// An embedding lookup `ids int64 [batch, seq] -> Gather(table [v, d], axis) -> emb`, table
/// from the seeded generator with rows of different magnitudes (so per-row scales differ).
/// `computed` feeds the table through an `Identity`, so the Gather's data is not an initializer.
pub fn embedding(v: usize, d: usize, axis: i64, computed: bool, seed: u64) -> pb::ModelProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let vi = |name: &str, ty: pb::tensor_proto::DataType, dims: &[Option<i64>]| {
        let mut i = value_info(name, dims);
        if let Some(pb::type_proto::Value::TensorType(t)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(ty as i32);
            if let Some(s) = t.shape.as_mut() {
                for (k, dim) in s.dim.iter_mut().enumerate() {
                    if k == 1 && dims[k].is_none() {
                        *dim = Dimension {
                            value: Some(Value::DimParam("seq".into())),
                            ..Default::default()
                        };
                    }
                }
            }
        }
        i
    };
    let table: Vec<f32> = lcg(v * d, seed)
        .iter()
        .enumerate()
        .map(|(i, x)| x * (0.05 + (i / d % 7) as f32 * 0.1))
        .collect();
    let mut nodes = Vec::new();
    let data = if computed {
        nodes.push(kompress::onnx::node(
            "Identity",
            "table_identity".to_string(),
            vec!["table".into()],
            vec!["table_copy".into()],
            vec![],
        ));
        "table_copy"
    } else {
        "table"
    };
    nodes.push(kompress::onnx::node(
        "Gather",
        "embed".to_string(),
        vec![data.into(), "ids".into()],
        vec!["emb".into()],
        vec![kompress::onnx::attr_int("axis", axis)],
    ));
    pb::ModelProto {
        producer_name: Some("kompress-tests".into()),
        ..model_of(
            9,
            17,
            pb::GraphProto {
                name: Some("embedding".into()),
                node: nodes,
                initializer: vec![f32_tensor("table", &[v as i64, d as i64], &table)],
                input: vec![vi("ids", pb::tensor_proto::DataType::Int64, &[None, None])],
                output: vec![vi(
                    "emb",
                    pb::tensor_proto::DataType::Float,
                    &[None, None, Some(d as i64)],
                )],
                ..Default::default()
            },
        )
    }
}
