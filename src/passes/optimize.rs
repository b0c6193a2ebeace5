//! ONNX Runtime's offline graph optimisation, as a pass.

use super::{PassReport, Result};
use crate::api::OptimizeLevel;
use crate::onnx::Model;

#[derive(Debug, Clone, PartialEq)]
pub struct OptimizeConfig {
    pub level: OptimizeLevel,
}

pub fn apply(_cfg: &OptimizeConfig, _model: &mut Model) -> Result<PassReport> {
    Err(super::Error::Unsupported {
        pass: "optimize",
        what: "not available in this build yet".into(),
    })
}
