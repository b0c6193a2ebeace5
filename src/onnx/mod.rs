//! ONNX ModelProto I/O (prost over the vendored `proto/onnx.proto`), external data, and the
//! graph and tensor helpers the passes share.

// Sizes, offsets, counts and dimensions here come from outside (files, servers): numeric
// casts that could truncate, wrap or lose a sign are checked conversions, or allowed where the
// value is bounded by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod pb {
    include!("onnx.rs");
}

mod fold;
mod inspect;
mod io;
mod tensor;

pub use fold::{Folded, fold_constants};
pub use inspect::{Inspection, inspect};
pub use io::{
    ExternalFile, Model, SaveOptions, Saved, check_destination, external_locations,
    for_each_tensor_mut, load, load_as, read_confined, read_small, save, write_atomic,
};
pub use tensor::{
    DataType, TensorData, checked_numel, f32_tensor, int8_tensor, raw_tensor, scalar_f32,
    set_f32_values, tensor_f32_values,
};

use std::path::PathBuf;

/// Errors reading, writing or interpreting an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read model file {path}: check the path and its permissions")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is empty (0 bytes): the upload or download was probably cut short")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not a valid ONNX model (protobuf decoding failed: the file is truncated, \
         corrupt, or not ONNX); re-export it or check that the whole file was copied"
    )]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path} decodes as protobuf but is not an ONNX model: {what}")]
    NotOnnx { path: PathBuf, what: String },
    #[error(
        "tensor `{tensor}` in {model} stores its data in external file `{location}`, which \
         cannot be used: put the external data file(s) in the model's directory (subfolders are \
         fine), as regular files"
    )]
    ExternalData {
        model: PathBuf,
        tensor: String,
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor `{tensor}` in {model}: invalid external data reference: {what}")]
    BadExternalRef {
        model: PathBuf,
        tensor: String,
        what: String,
    },
    #[error(
        "tensor `{tensor}` in {model}: {what}: the model file is corrupt or its exporter wrote \
         an invalid tensor"
    )]
    BadTensor {
        model: PathBuf,
        tensor: String,
        what: String,
    },
    #[error(
        "{path} is {kind}: kompress writes only to a new or regular file there, never through or \
         over anything else; remove it or choose another destination"
    )]
    Destination { path: PathBuf, kind: &'static str },
    #[error("cannot write model file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor `{tensor}`: {what}")]
    Tensor { tensor: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The names of the nodes that consume each value, in graph order.
pub fn consumers(graph: &pb::GraphProto) -> std::collections::HashMap<&str, Vec<(usize, usize)>> {
    let mut map: std::collections::HashMap<&str, Vec<(usize, usize)>> = Default::default();
    for (ni, node) in graph.node.iter().enumerate() {
        for (slot, input) in node.input.iter().enumerate() {
            if !input.is_empty() {
                map.entry(input.as_str()).or_default().push((ni, slot));
            }
        }
    }
    map
}

/// The default-domain opset version the model imports (ONNX `ai.onnx`).
pub fn default_opset(model: &pb::ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
}

/// A value name not yet used anywhere in the graph, derived from `base`.
pub struct Namer {
    used: std::collections::HashSet<String>,
}

impl Namer {
    pub fn new(graph: &pb::GraphProto) -> Self {
        let mut used = std::collections::HashSet::new();
        for n in &graph.node {
            used.extend(n.input.iter().cloned());
            used.extend(n.output.iter().cloned());
            if let Some(name) = &n.name {
                used.insert(name.clone());
            }
        }
        used.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
        used.extend(
            graph
                .input
                .iter()
                .chain(&graph.output)
                .chain(&graph.value_info)
                .filter_map(|v| v.name.clone()),
        );
        Self { used }
    }

    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

/// Builds a node in the default domain (or `domain`) with the given attributes.
pub fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.to_string()),
        name: Some(name),
        input: inputs,
        output: outputs,
        attribute: attrs,
        ..Default::default()
    }
}

/// A `Cast` of `input` to float named `name`, its output `output`.
pub fn cast_to_float(name: String, input: String, output: String) -> pb::NodeProto {
    node(
        "Cast",
        name,
        vec![input],
        vec![output],
        vec![attr_int("to", pb::tensor_proto::DataType::Float as i64)],
    )
}

pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        ..Default::default()
    }
}

/// Reads an int attribute, or `default` when absent.
pub fn get_attr_int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
        .unwrap_or(default)
}

/// Reads a float attribute, or `default` when absent.
pub fn get_attr_float(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.f)
        .unwrap_or(default)
}
