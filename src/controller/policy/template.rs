//! template: a policy's `jobTemplate` made into a CompressionJob for one version (pure).
//! `{{.name}}` placeholders in any string are replaced by what the source matched; an unknown
//! one is an error naming the field.

use crate::api::{CompressionJob, CompressionJobSpec, CompressionPolicy, FieldError, InvalidSpec};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a policy's template lives, as field paths name it.
pub const TEMPLATE_SPEC: &str = "spec.jobTemplate.spec";

/// `text` with every `{{.name}}` (spaces inside the braces allowed) replaced from `vars`; the
/// first unknown or malformed placeholder is the error.
pub fn render_str(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("`{{{{` without `}}}}` in `{text}`"))?;
        let inner = after[..close].trim();
        let name = inner.strip_prefix('.').ok_or_else(|| {
            format!("placeholder `{{{{{inner}}}}}` must be `{{{{.name}}}}` (a dot before the name)")
        })?;
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                let mut known: Vec<&str> = vars.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(format!(
                    "unknown placeholder `{{{{.{name}}}}}`: this source provides {}",
                    known
                        .iter()
                        .map(|k| format!("{{{{.{k}}}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `value` with every string rendered; errors carry the field path under `path`.
pub fn render_value(
    value: &Value,
    path: &str,
    vars: &BTreeMap<String, String>,
    errs: &mut Vec<FieldError>,
) -> Value {
    match value {
        Value::String(s) => match render_str(s, vars) {
            Ok(r) => Value::String(r),
            Err(message) => {
                errs.push(FieldError {
                    field: path.to_string(),
                    message,
                });
                value.clone()
            }
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| render_value(v, &format!("{path}[{i}]"), vars, errs))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        render_value(v, &format!("{path}.{k}"), vars, errs),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One version's model, as the job's `spec.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model<'a> {
    pub uri: &'a str,
    pub sha256: Option<&'a str>,
    /// With an `oci://` source: `spec.source.registry`, the job's `model.registry`.
    pub registry: Option<&'a crate::api::RegistrySpec>,
}

/// The CompressionJob spec for one version: the template rendered with `vars`, the model
/// set, and the result validated as the CompressionJob controller will. Errors name the
/// template's fields (`spec.jobTemplate.spec.output.promoteTo`).
pub fn job_spec(
    policy: &CompressionPolicy,
    model: &Model<'_>,
    vars: &BTreeMap<String, String>,
) -> Result<CompressionJobSpec, InvalidSpec> {
    let mut errs = Vec::new();
    let template = Value::Object(policy.spec.job_template.spec.0.clone());
    let mut rendered = render_value(&template, TEMPLATE_SPEC, vars, &mut errs);
    if !errs.is_empty() {
        return Err(InvalidSpec(errs));
    }
    if let Value::Object(m) = &mut rendered {
        if m.contains_key("model") {
            return Err(one(
                &format!("{TEMPLATE_SPEC}.model"),
                "must not be set: the policy's source gives each job its model",
            ));
        }
        let mut model_v = serde_json::json!({ "uri": model.uri });
        if let Some(s) = model.sha256 {
            model_v["sha256"] = s.into();
        }
        if let Some(r) = model.registry {
            model_v["registry"] = serde_json::to_value(r).unwrap_or_default();
        }
        m.insert("model".into(), model_v);
    }
    let spec: CompressionJobSpec = serde_path_to_error::deserialize(rendered).map_err(|e| {
        let at = e.path().to_string();
        let field = if at == "." || at.is_empty() {
            TEMPLATE_SPEC.to_string()
        } else {
            format!("{TEMPLATE_SPEC}.{at}")
        };
        one(&field, &e.into_inner().to_string())
    })?;
    let cj = CompressionJob::new("policy-template", spec);
    crate::controller::validate::validate(&cj).map_err(|InvalidSpec(errs)| {
        InvalidSpec(
            errs.into_iter()
                .map(|e| FieldError {
                    field: match e.field.strip_prefix("spec.") {
                        Some(rest) => format!("{TEMPLATE_SPEC}.{rest}"),
                        None => e.field,
                    },
                    message: e.message,
                })
                .collect(),
        )
    })?;
    Ok(cj.spec)
}

fn one(field: &str, message: &str) -> InvalidSpec {
    InvalidSpec(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

/// Sample values for every variable a source provides: checks a template before any version
/// exists (a value that is a plausible path segment, so URIs built from it parse).
pub fn sample_vars(names: &[String]) -> BTreeMap<String, String> {
    // an OCI source's path is its tag: a value a tag may be
    let oci = names.iter().any(|n| n == "tag");
    names
        .iter()
        .map(|n| {
            let v = if n == "path" && !oci {
                "model/v1/model.onnx"
            } else {
                "x1"
            };
            (n.clone(), v.to_string())
        })
        .collect()
}

/// Whether two `promoteTo` templates may render to the same place: their literal text
/// before the first and after the last placeholder agree (one is a prefix, one a suffix, of
/// the other's), or, without placeholders, they are the same URI.
pub fn may_overlap(a: &str, b: &str) -> bool {
    let ends = |t: &'_ str| -> (String, Option<String>) {
        let t = t.trim().trim_end_matches('/');
        match (t.find("{{"), t.rfind("}}")) {
            (Some(open), Some(close)) if close > open => {
                (t[..open].to_string(), Some(t[close + 2..].to_string()))
            }
            _ => (t.to_string(), None),
        }
    };
    let agree = |x: &str, y: &str| x.starts_with(y) || y.starts_with(x);
    let agree_end = |x: &str, y: &str| x.ends_with(y) || y.ends_with(x);
    match (ends(a), ends(b)) {
        ((fa, None), (fb, None)) => fa == fb,
        ((fixed, None), (pre, Some(suf))) | ((pre, Some(suf)), (fixed, None)) => {
            fixed.starts_with(&pre) && fixed[pre.len()..].ends_with(&suf)
        }
        ((pa, Some(sa)), (pb, Some(sb))) => agree(&pa, &pb) && agree_end(&sa, &sb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("key", "resnet"),
            ("version", "v3"),
            ("path", "resnet/v3/model.onnx"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    }

    #[test]
    fn placeholders_are_replaced_with_or_without_spaces() {
        assert_eq!(
            render_str("s3://serve/{{.key}}/{{ .version }}-int8", &vars()).unwrap(),
            "s3://serve/resnet/v3-int8"
        );
        assert_eq!(
            render_str("no placeholders", &vars()).unwrap(),
            "no placeholders"
        );
    }

    #[test]
    fn unknown_or_malformed_placeholders_say_what_is_known() {
        let e = render_str("s3://x/{{.tag}}", &vars()).unwrap_err();
        assert!(e.contains("unknown placeholder `{{.tag}}`"), "{e}");
        assert!(e.contains("{{.key}}, {{.path}}, {{.version}}"), "{e}");
        assert!(
            render_str("s3://x/{{key}}", &vars())
                .unwrap_err()
                .contains("a dot")
        );
        assert!(
            render_str("s3://x/{{.key", &vars())
                .unwrap_err()
                .contains("without")
        );
    }

    #[test]
    fn errors_in_nested_strings_name_the_field() {
        let v: Value = serde_json::json!({"output": {"uri": "s3://o", "promoteTo": "s3://p/{{.nope}}"},
                                          "passes": [{"quantize": {"mode": "{{.x}}"}}]});
        let mut errs = Vec::new();
        render_value(&v, TEMPLATE_SPEC, &vars(), &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.jobTemplate.spec.output.promoteTo",
                "spec.jobTemplate.spec.passes[0].quantize.mode"
            ]
        );
    }

    #[test]
    fn promote_templates_overlap_when_their_literal_ends_agree() {
        let a = "file:///p/{{.key}}/{{.version}}";
        assert!(may_overlap(a, "file:///p/{{.name}}/{{.version}}/"));
        assert!(may_overlap(a, "file:///p/resnet/v3"));
        assert!(may_overlap("s3://fixed/place/", "s3://fixed/place"));
        assert!(!may_overlap(a, "file:///q/{{.key}}"));
        assert!(!may_overlap(
            "file:///p/{{.key}}-int8",
            "file:///p/{{.key}}-fp16"
        ));
        assert!(!may_overlap("s3://fixed/a", "s3://fixed/b"));
        assert!(!may_overlap(a, "s3://p/x"));
    }
}
