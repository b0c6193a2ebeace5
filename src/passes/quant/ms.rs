//! ONNX Runtime's contrib operators (domain `com.microsoft`), which the 4-bit forms write.

use crate::onnx::{self, Model, pb};

pub(super) const DOMAIN: &str = "com.microsoft";

/// A node in the contrib domain.
pub(super) fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    let mut n = onnx::node(op, name, inputs, outputs, attrs);
    n.domain = Some(DOMAIN.into());
    n
}

/// Imports the contrib domain (version 1) where the model does not yet.
pub(super) fn import(model: &mut Model) {
    if !model
        .proto
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some(DOMAIN))
    {
        model.proto.opset_import.push(pb::OperatorSetIdProto {
            domain: Some(DOMAIN.into()),
            version: Some(1),
        });
    }
}
