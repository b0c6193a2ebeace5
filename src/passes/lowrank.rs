//! Low-rank factorisation of MatMul/Gemm weights by truncated SVD.

use super::{PassReport, Result, Selection};
use crate::onnx::Model;

#[derive(Debug, Clone, PartialEq)]
pub enum RankRule {
    /// Smallest rank holding this fraction of the squared singular values.
    Energy(f64),
    /// The rank making the factors this fraction of the original elements.
    Ratio(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LowRankConfig {
    pub rule: RankRule,
    pub select: Selection,
}

pub fn apply(_cfg: &LowRankConfig, _model: &mut Model) -> Result<PassReport> {
    Err(super::Error::Unsupported {
        pass: "lowRank",
        what: "not available in this build yet".into(),
    })
}
