//! Error text shared by every layer: an error and its causes on one line. Each layer keeps
//! its own error enum (`pipeline::Error`, `storage::Error`, `controller::Error`, ...); this is
//! only how any of them is shown.

/// Full error text: the error and each cause, joined with `: `. Causes whose text an outer
/// message already includes (object_store's errors embed their sources) are not repeated.
/// Every URI in it is redacted ([`crate::uri::redact_in`]): this text goes to logs, status,
/// Events and termination messages, which must never carry a presigned URL's signature.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    crate::uri::redact_in(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn causes_are_joined_once_each() {
        let inner = E("connection refused", None);
        let outer = E("fetch s3://b/m.onnx", Some(Box::new(inner)));
        assert_eq!(
            error_chain(&outer),
            "fetch s3://b/m.onnx: connection refused"
        );
        let repeats = E(
            "fetch failed: connection refused",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(error_chain(&repeats), "fetch failed: connection refused");
    }

    #[test]
    fn error_text_never_carries_a_presigned_signature() {
        let inner = E("403 from https://h/m.onnx?X-Amz-Signature=SECRET", None);
        let outer = E(
            "fetch https://h/m.onnx?X-Amz-Signature=SECRET",
            Some(Box::new(inner)),
        );
        let text = error_chain(&outer);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("https://h/m.onnx?<redacted>"), "{text}");
    }
}
