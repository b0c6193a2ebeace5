//! validate: the spec checks `kompress run` makes too (pure), and those that only apply in a
//! cluster; an invalid spec gets no Job.

use crate::api::{CompressionJob, FieldError, InvalidSpec};

pub fn validate(cj: &CompressionJob) -> Result<(), InvalidSpec> {
    let mut errs = match crate::api::validate(&cj.spec) {
        Ok(()) => Vec::new(),
        Err(InvalidSpec(e)) => e,
    };
    // A local key file names a path on the machine that runs `kompress run`; the worker pod
    // has no such file (and must not read one from its image).
    if let Some(s) = &cj.spec.output.signing
        && s.key_file.is_some()
    {
        errs.push(FieldError {
            field: "spec.output.signing.keyFile".into(),
            message: "is for kompress run; in a cluster put the key in a Secret and set \
                      spec.output.signing.secretRef"
                .into(),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(errs))
    }
}
