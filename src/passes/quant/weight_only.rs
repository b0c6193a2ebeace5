//! The weight-only int8 form: each weight stored int8 and read through a `DequantizeLinear`
//! in front of its float op; embedding tables in the row form ([`super::gather`]).

use super::QuantizeConfig;
use super::int8::{self, Form, Int8Weight, Plan};
use crate::api::WeightRange;
use crate::onnx::{Model, pb};
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::Weight;
use crate::passes::{PassReport, Result, Skipped};

pub(super) fn apply(cfg: &QuantizeConfig, model: &mut Model) -> Result<PassReport> {
    int8::run(cfg, model, &mut WeightOnly)
}

struct WeightOnly;

impl Form for WeightOnly {
    fn description(&self, cfg: &QuantizeConfig) -> String {
        format!(
            "int8 weight-only (QDQ), {}{}",
            int8::granularity(cfg),
            if cfg.weight_range == WeightRange::Seven {
                ", 7-bit weights (reduceRange: true)"
            } else {
                ""
            }
        )
    }

    fn check(&self, _opset: i64) -> Result<()> {
        Ok(())
    }

    fn plan(&self, _g: &pb::GraphProto, _w: &Weight, _skipped: &mut Vec<Skipped>) -> Option<Plan> {
        Some(Plan::Dequantized)
    }

    fn write(
        &mut self,
        rw: &mut Rewrite,
        _g: &pb::GraphProto,
        w: &Weight,
        _plan: Plan,
        q: &Int8Weight,
    ) -> Result<()> {
        int8::dequantize_in_front(rw, w, q);
        Ok(())
    }
}
