//! ONNX Runtime's own offline graph optimisation, as a pass: the model is saved, opened by
//! ONNX Runtime at the chosen level with an optimized-model path, and the file ONNX Runtime
//! writes replaces the model. `basic` keeps portable ONNX (constant folding, redundant-node
//! removal, Conv+BatchNorm/Add/Mul folding); `extended` adds ONNX Runtime's fused
//! com.microsoft ops (Gelu, LayerNorm, FusedMatMul...), which only ONNX Runtime runs and
//! which the quantize pass then leaves alone (it rewrites default-domain ops only).

use super::{PassReport, Result};
use crate::api::OptimizeLevel;
use crate::onnx::{self, Model, SaveOptions};

#[derive(Debug, Clone, PartialEq)]
pub struct OptimizeConfig {
    pub level: OptimizeLevel,
}

pub fn apply(cfg: &OptimizeConfig, model: &mut Model) -> Result<PassReport> {
    let fail = |what: String| super::Error::Unsupported {
        pass: "optimize",
        what,
    };
    // Beside the model (the run's scratch folder), so big models stay on the scratch volume.
    let parent = model
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix(".kompress-optimize-")
        .tempdir_in(&parent)
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| fail(format!("cannot make a scratch folder: {e}")))?;
    let src = dir.path().join("input.onnx");
    let dst = dir.path().join("optimized.onnx");
    onnx::save(&model.proto, &src, &SaveOptions::default())?;
    let level = match cfg.level {
        OptimizeLevel::Basic => 1,
        OptimizeLevel::Extended => 2,
    };
    crate::eval::optimize_offline(&src, &dst, level, None)
        .map_err(|e| fail(format!("ONNX Runtime could not optimise the model: {e}")))?;
    let optimized = onnx::load(&dst)?;
    let before = model.graph().node.len();
    let after = optimized.graph().node.len();
    // Keep where the model came from (reports and external data name it); take the graph.
    model.proto = optimized.proto;
    Ok(PassReport {
        pass: "optimize".into(),
        description: format!(
            "ONNX Runtime offline graph optimisation ({}): {before} -> {after} nodes",
            match cfg.level {
                OptimizeLevel::Basic => "basic, portable ONNX",
                OptimizeLevel::Extended => "extended, ONNX Runtime fused ops",
            }
        ),
        ..Default::default()
    })
}
