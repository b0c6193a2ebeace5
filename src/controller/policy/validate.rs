//! validate: a policy's spec checked before anything is listed or created (pure): the source
//! pattern and filter, the interval, and the job template rendered for a sample version and
//! validated as a CompressionJob would be. An invalid policy is Stalled and makes no job.

use super::source::Source;
use super::template::{self, Model};
use crate::api::{CompressionPolicy, FieldError, InvalidSpec};
use std::time::Duration;

/// Shortest `spec.source.interval`: a scan lists the whole prefix.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A policy that passed every check.
#[derive(Debug, Clone)]
pub struct Validated {
    pub source: Source,
    pub interval: Duration,
}

/// `30s`, `5m`, `1h30m`, `2 hours`.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 30s, 5m or 1h"))?;
    let d = Duration::try_from(d).map_err(|_| format!("`{s}` is negative"))?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!("`{s}` must be between 10s and 168h"));
    }
    Ok(d)
}

pub fn validate(policy: &CompressionPolicy) -> Result<Validated, InvalidSpec> {
    let bad = |field: &str, message: String| {
        InvalidSpec(vec![FieldError {
            field: field.into(),
            message,
        }])
    };
    let source = &policy.spec.source;
    let parsed = Source::parse(source).map_err(|e| bad(e.field, e.message))?;
    let interval = parse_interval(
        source
            .interval
            .as_deref()
            .unwrap_or(crate::api::policy::DEFAULT_INTERVAL),
    )
    .map_err(|m| bad("spec.source.interval", m))?;
    let vars = template::sample_vars(&parsed.variables());
    let sample = match &parsed {
        Source::Store(p) => p.prefix.join(&vars["path"]).uri,
        Source::Oci(t) => t.uri_at(&format!("sha256:{}", "0".repeat(64))),
    };
    template::job_spec(
        policy,
        &Model {
            uri: &sample,
            sha256: None,
            registry: source.registry.as_ref(),
        },
        &vars,
    )?;
    Ok(Validated {
        source: parsed,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(template: &str, source: &str) -> CompressionPolicy {
        let yaml = format!(
            "apiVersion: kompress.dev/v1alpha1\nkind: CompressionPolicy\nmetadata:\n  name: p\n  namespace: ml\n\
             spec:\n  source:\n{source}\n  jobTemplate:\n    spec:\n{template}\n"
        );
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    const OK_TEMPLATE: &str = "      dataset: {uri: s3://data/eval.npz}\n      passes: [{quantize: {}}]\n      output: {uri: s3://out, promoteTo: 's3://serve/{{.key}}/{{.version}}'}";
    const SOURCE: &str = "    uri: s3://models/*/v*/model.onnx";

    #[test]
    fn a_good_policy_validates() {
        let v = validate(&policy(OK_TEMPLATE, SOURCE)).unwrap();
        assert_eq!(v.interval, Duration::from_secs(300));
        match v.source {
            Source::Store(p) => assert_eq!(p.prefix.uri, "s3://models"),
            Source::Oci(_) => panic!("a storage source"),
        }
    }

    #[test]
    fn an_oci_policy_validates_with_tag_placeholders() {
        let t = "      dataset: {uri: s3://data/eval.npz}\n      passes: [{quantize: {}}]\n      output: {uri: s3://out, promoteTo: 'oci://reg.example/team/digits:{{.tag}}-int8'}";
        let src = "    uri: oci://reg.example:5000/team/digits\n    filter: '^v(?P<version>[0-9]+)$'\n    registry: {plainHttp: true, secretRef: {name: regcred}}";
        let v = validate(&policy(t, src)).unwrap();
        assert!(matches!(v.source, Source::Oci(ref o) if o.plain_http));
        // {{.tag}} is an oci source's only
        let e = validate(&policy(t, SOURCE)).unwrap_err().to_string();
        assert!(e.contains("{{.tag}}"), "{e}");
    }

    #[test]
    fn an_unknown_placeholder_names_the_field() {
        let t = OK_TEMPLATE.replace("{{.version}}", "{{.tag}}");
        let e = validate(&policy(&t, SOURCE)).unwrap_err().to_string();
        assert!(e.contains("spec.jobTemplate.spec.output.promoteTo"), "{e}");
        assert!(e.contains("{{.tag}}"), "{e}");
    }

    #[test]
    fn a_template_failing_job_validation_names_the_templates_field() {
        let t = OK_TEMPLATE.replace(
            "passes: [{quantize: {}}]",
            "passes: [{prune: {sparsity: 1.5}}]",
        );
        let e = validate(&policy(&t, SOURCE)).unwrap_err().to_string();
        assert!(e.contains("spec.jobTemplate.spec.passes"), "{e}");
        let t = format!("{OK_TEMPLATE}\n      model: {{uri: s3://x}}");
        let e = validate(&policy(&t, SOURCE)).unwrap_err().to_string();
        assert!(e.contains("spec.jobTemplate.spec.model"), "{e}");
    }

    #[test]
    fn bad_sources_and_intervals_name_their_field() {
        let e = validate(&policy(OK_TEMPLATE, "    uri: s3://models/m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.source.uri"), "{e}");
        let src = format!("{SOURCE}\n    interval: 1s");
        let e = validate(&policy(OK_TEMPLATE, &src))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.source.interval"), "{e}");
        for (s, secs) in [("30s", 30), ("5m", 300), ("1h30m", 5400)] {
            assert_eq!(parse_interval(s).unwrap().as_secs(), secs, "{s}");
        }
        assert!(parse_interval("soon").is_err());
    }
}
