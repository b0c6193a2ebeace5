//! validate: the spec checks `kompress run` makes too (pure); an invalid spec gets no Job.

use crate::api::{CompressionJob, InvalidSpec};

pub fn validate(cj: &CompressionJob) -> Result<(), InvalidSpec> {
    crate::api::validate(&cj.spec)
}
