//! `kompress inspect`: what a model is made of (ops, parameters, bytes by dtype, sparsity).

use super::{DataType, Model, TensorData, pb};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub ir_version: i64,
    pub opsets: BTreeMap<String, i64>,
    pub producer: String,
    pub file_bytes: u64,
    pub external_data: bool,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub nodes: usize,
    /// Node count per op type (`domain::Op` outside the default domain).
    pub ops: BTreeMap<String, usize>,
    pub initializers: usize,
    pub parameters: u64,
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// Fraction of exact zeros among float32/int8 initializer elements.
    pub sparsity: f64,
}

fn value_info(v: &pb::ValueInfoProto) -> String {
    let name = v.name.clone().unwrap_or_default();
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return name;
    };
    let dtype = DataType::from_i32(t.elem_type.unwrap_or(0)).name();
    let dims: Vec<String> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v.to_string(),
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{name}: {dtype}[{}]", dims.join(","))
}

pub fn inspect(model: &Model) -> Inspection {
    let g = model.graph();
    let mut ops = BTreeMap::new();
    for n in &g.node {
        let op = n.op_type.clone().unwrap_or_default();
        let key = match n.domain.as_deref() {
            None | Some("") | Some("ai.onnx") => op,
            Some(d) => format!("{d}::{op}"),
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    let (mut parameters, mut zeros, mut counted) = (0u64, 0u64, 0u64);
    let mut bytes_by_dtype = BTreeMap::new();
    for t in &g.initializer {
        parameters += t.numel() as u64;
        *bytes_by_dtype.entry(t.dtype().name()).or_insert(0) += t.payload_bytes() as u64;
        match (t.dtype(), &t.raw_data) {
            (DataType::Float, Some(raw)) => {
                counted += (raw.len() / 4) as u64;
                zeros += raw
                    .chunks_exact(4)
                    .filter(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) == 0.0)
                    .count() as u64;
            }
            (DataType::Float, None) => {
                counted += t.float_data.len() as u64;
                zeros += t.float_data.iter().filter(|v| **v == 0.0).count() as u64;
            }
            (DataType::Int8, Some(raw)) => {
                counted += raw.len() as u64;
                zeros += raw.iter().filter(|b| **b == 0).count() as u64;
            }
            _ => {}
        }
    }
    Inspection {
        ir_version: model.proto.ir_version.unwrap_or(0),
        opsets: model
            .proto
            .opset_import
            .iter()
            .map(|o| {
                (
                    o.domain
                        .clone()
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| "ai.onnx".into()),
                    o.version.unwrap_or(0),
                )
            })
            .collect(),
        producer: format!(
            "{} {}",
            model.proto.producer_name.as_deref().unwrap_or(""),
            model.proto.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        file_bytes: model.file_bytes,
        external_data: model.had_external_data,
        inputs: g
            .input
            .iter()
            .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
            .map(value_info)
            .collect(),
        outputs: g.output.iter().map(value_info).collect(),
        nodes: g.node.len(),
        ops,
        initializers: g.initializer.len(),
        parameters,
        bytes_by_dtype,
        sparsity: if counted == 0 {
            0.0
        } else {
            zeros as f64 / counted as f64
        },
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d}={v}"))
            .collect();
        writeln!(
            f,
            "ir_version   {}   opsets {}   producer {}",
            self.ir_version,
            opsets.join(" "),
            self.producer
        )?;
        writeln!(
            f,
            "file         {} bytes{}",
            self.file_bytes,
            if self.external_data {
                " (with external data)"
            } else {
                ""
            }
        )?;
        for i in &self.inputs {
            writeln!(f, "input        {i}")?;
        }
        for o in &self.outputs {
            writeln!(f, "output       {o}")?;
        }
        writeln!(
            f,
            "parameters   {} in {} initializers, sparsity {:.2}%",
            self.parameters,
            self.initializers,
            self.sparsity * 100.0
        )?;
        for (d, b) in &self.bytes_by_dtype {
            writeln!(f, "  {d:<10} {b} bytes")?;
        }
        writeln!(f, "nodes        {}", self.nodes)?;
        for (op, n) in &self.ops {
            writeln!(f, "  {op:<28} {n}")?;
        }
        Ok(())
    }
}
