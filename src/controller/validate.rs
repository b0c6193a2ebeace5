//! validate: the spec checks `kompress run` makes too (pure), and those that only apply in a
//! cluster; an invalid spec gets no Job.

use crate::api::{CompressionJob, FieldError, InvalidSpec};

pub fn validate(cj: &CompressionJob) -> Result<(), InvalidSpec> {
    let mut errs = match crate::api::validate(&cj.spec) {
        Ok(_) => Vec::new(),
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
    // The CRD's rule says the same; this covers objects written before it (or without it).
    if let Some(q) = &cj.spec.queue_name
        && !is_queue_name(q)
    {
        errs.push(FieldError {
            field: "spec.queueName".into(),
            message: format!(
                "`{q}` is not a LocalQueue name: at most 63 lower-case letters, digits, '-' \
                 and '.', starting and ending with a letter or digit"
            ),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(errs))
    }
}

/// A Kueue LocalQueue name that is also a valid label value (the queue-name label holds it).
pub fn is_queue_name(q: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&q.len())
        && q.starts_with(alnum)
        && q.ends_with(alnum)
        && q.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_label_values() {
        for ok in ["default", "team-a", "gpu.batch", "q1"] {
            assert!(is_queue_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Team", "a_b", "a/b", &"q".repeat(64)] {
            assert!(!is_queue_name(bad), "{bad}");
        }
    }
}
