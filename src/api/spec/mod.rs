//! The spec's parts, one file each (re-exported: every type is `crate::api::X`).

mod evaluation;
mod model;
mod output;
mod passes;
mod search;
mod thresholds;
mod worker;

pub use evaluation::*;
pub use model::*;
pub use output::*;
pub use passes::*;
pub use search::*;
pub use thresholds::*;
pub use worker::*;

// What the part files share (each has `use super::*`).
use super::{AxisSelect, Confidence, PoolSpec, TaskSpec};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
