//! Reading a CompressionJob manifest (YAML or JSON, the same text `kubectl apply` takes), with
//! its size and nesting bounded before the YAML parser sees it. `kompress run`, `compress`,
//! `gc` and the worker (`KOMPRESS_JOB`) all read jobs through here.

use super::CompressionJob;
use kube::Resource;
use std::path::{Path, PathBuf};

/// Largest manifest read (the apiserver stores objects of at most 1.5 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Deepest nesting of `[`/`{`/indentation a manifest may have (a CompressionJob needs < 10).
pub const MAX_MANIFEST_DEPTH: usize = 64;

/// A manifest that cannot be read or is not a CompressionJob. Always permanent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a valid CompressionJob manifest: {message}")]
    Invalid { origin: String, message: String },
}

/// Parses a CompressionJob from YAML or JSON; with several YAML documents, the first
/// CompressionJob is used. Errors name the field (`spec.passes[0].prune.sparsity: ...`).
pub fn parse_job(text: &str, origin: &str) -> Result<CompressionJob, ManifestError> {
    let bad = |message: String| ManifestError::Invalid {
        origin: origin.into(),
        message,
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is {} bytes; a CompressionJob manifest may have at most {MAX_MANIFEST_BYTES}",
            text.len()
        )));
    }
    if let Some(line) = too_deep(text) {
        return Err(bad(format!(
            "line {line} is nested deeper than {MAX_MANIFEST_DEPTH} levels; a CompressionJob needs far fewer"
        )));
    }
    // One line per error (no source snippet): the message goes to a termination log and a
    // status condition.
    let options = || serde_saphyr::options! { with_snippet: false };
    let (kind, api_version) = (CompressionJob::kind(&()), CompressionJob::api_version(&()));
    let mut seen = Vec::new();
    for doc in documents(text) {
        // The untyped view picks the document; the typed parse reads it, so that a scalar
        // such as `sha256: 0000...` or `cpu: 2` stays the string the field wants (an untyped
        // YAML value would make it a number).
        let value: serde_json::Value =
            serde_saphyr::from_str_with_options(doc, options()).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let doc_kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if doc_kind != kind {
            seen.push(if doc_kind.is_empty() {
                "a document without kind".to_string()
            } else {
                doc_kind.to_string()
            });
            continue;
        }
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        if api != api_version {
            return Err(bad(format!(
                "apiVersion is `{api}`; expected {api_version}"
            )));
        }
        let typed = serde_saphyr::from_str_with_options::<CompressionJob>(doc, options());
        return match typed {
            Ok(job) => Ok(job),
            // serde_path_to_error names the field (spec.passes[0]) that the YAML parser's
            // message lacks; it reads the untyped view, so it is only used for the message.
            Err(typed) => Err(bad(
                match serde_path_to_error::deserialize::<_, CompressionJob>(value) {
                    Err(e) if e.path().to_string() != "." => {
                        format!("{}: {}", e.path(), e.inner())
                    }
                    Err(e) => e.inner().to_string(),
                    Ok(_) => typed.to_string(),
                },
            )),
        };
    }
    Err(bad(format!(
        "no document has kind: {kind} (found: {})",
        if seen.is_empty() {
            "nothing".into()
        } else {
            seen.join(", ")
        }
    )))
}

/// The YAML documents of a stream: split at `---` lines (a JSON manifest is one document).
fn documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        if l == "---" || l.starts_with("--- ") || l == "..." {
            docs.push(&text[start..at]);
            start = at + line.len();
        }
        at += line.len();
    }
    docs.push(&text[start..]);
    docs.retain(|d| !d.trim().is_empty());
    docs
}

/// The first line (1-based) where flow brackets or block indentation nest deeper than
/// `MAX_MANIFEST_DEPTH`, if any: checked before the YAML parser, whose time and memory grow
/// with nesting. Quoted strings and comments are skipped; the bound is loose on purpose.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_MANIFEST_DEPTH {
                        return Some(i + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if indent / 2 > MAX_MANIFEST_DEPTH {
            return Some(i + 1);
        }
    }
    None
}

/// Reads and parses a CompressionJob manifest file.
pub fn read_job(file: &Path) -> Result<CompressionJob, ManifestError> {
    let text = read_capped(file)?;
    parse_job(&text, &file.display().to_string())
}

/// Reads a manifest file of at most `MAX_MANIFEST_BYTES` (one byte more is read, so that
/// `parse_job` can say it is too large).
pub fn read_capped(file: &Path) -> Result<String, ManifestError> {
    use std::io::Read;
    let read = |source| ManifestError::Read {
        path: file.into(),
        source,
    };
    // A regular file only: opening a FIFO would block, a device would never end.
    if !std::fs::metadata(file).map_err(read)?.is_file() {
        return Err(read(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file (a directory, device or pipe)",
        )));
    }
    let f = std::fs::File::open(file).map_err(read)?;
    let mut text = String::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: x}\nspec:\n  model: {uri: m.onnx}\n  dataset: {uri: d.npz}\n  output: {uri: out}\n  passes: [{quantize: {}}]\n";

    #[test]
    fn manifests_too_large_or_too_deep_are_refused_before_parsing() {
        assert!(parse_job(JOB, "job.yaml").is_ok());
        let big = format!("{JOB}# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse_job(&big, "job.yaml").unwrap_err().to_string();
        assert!(e.contains("at most 1048576"), "{e}");
        for depth in [65, 1000, 100_000] {
            let flow = format!(
                "{JOB}  labels: {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let t = std::time::Instant::now();
            let e = parse_job(&flow, "job.yaml").unwrap_err().to_string();
            assert!(e.contains("nested deeper than 64"), "{depth}: {e}");
            assert!(t.elapsed().as_secs() < 1);
        }
        let mut block = JOB.to_string();
        for i in 0..70 {
            block.push_str(&format!("{}- a:\n", " ".repeat(4 + 2 * i)));
        }
        let e = parse_job(&block, "job.yaml").unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // Brackets inside quotes and comments do not count.
        let quoted = format!("{JOB}# {}\n", "[".repeat(200));
        assert!(parse_job(&quoted, "job.yaml").is_ok());
    }

    #[test]
    fn the_first_compression_job_of_several_documents_is_read() {
        let text = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\n{JOB}");
        assert_eq!(
            parse_job(&text, "job.yaml")
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("x")
        );
        let e = parse_job("apiVersion: v1\nkind: Secret\n", "job.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no document has kind: CompressionJob (found: Secret)"),
            "{e}"
        );
        let e = parse_job(&JOB.replace("v1alpha1", "v9"), "job.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apiVersion is `kompress.dev/v9`"), "{e}");
    }

    #[test]
    fn json_manifests_parse_like_yaml_ones() {
        let yaml = parse_job(JOB, "job.yaml").unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        assert_eq!(parse_job(&json, "KOMPRESS_JOB").unwrap().spec, yaml.spec);
    }

    #[test]
    fn errors_name_the_field_and_stay_on_one_line() {
        let e = parse_job(
            &JOB.replace("dataset: {uri: d.npz}", "dataset: {uri: [1]}"),
            "job.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("job.yaml is not a valid CompressionJob manifest: spec.dataset.uri: "),
            "{e}"
        );
        let e = parse_job("kind: [\n", "job.yaml").unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("line"), "{e}");
    }
}

#[cfg(test)]
mod scalar_tests {
    use super::*;

    #[test]
    fn digit_only_strings_stay_strings_and_documents_are_picked_by_kind() {
        let zeros = "0".repeat(64);
        let text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\napiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {{name: x}}\nspec:\n  model: {{uri: m.onnx, sha256: {zeros}}}\n  dataset: {{uri: d.npz}}\n  output: {{uri: out}}\n  passes: [{{quantize: {{}}}}]\n  resources: {{cpu: 2, memory: 4Gi}}\n"
        );
        let job = parse_job(&text, "job.yaml").unwrap();
        assert_eq!(job.spec.model.sha256.as_deref(), Some(zeros.as_str()));
        assert_eq!(
            job.spec.resources.unwrap().cpu.as_deref(),
            Some("2"),
            "`cpu: 2` is the quantity \"2\""
        );
    }

    #[test]
    fn type_errors_still_name_the_field() {
        let text = "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: x}\nspec:\n  model: {uri: m.onnx}\n  dataset: {uri: d.npz, limit: many}\n  output: {uri: out}\n  passes: [{quantize: {}}]\n";
        let e = parse_job(text, "job.yaml").unwrap_err().to_string();
        assert!(e.contains("spec.dataset.limit"), "{e}");
    }
}
