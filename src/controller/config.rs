//! What the worker Jobs look like where the spec leaves it open ([`ControllerConfig`], its
//! defaults and the flag parsers that set it), and the kubeconfig check at start-up.

use super::{Error, Result};
use k8s_openapi::api::core::v1::Toleration;
use std::collections::BTreeMap;

// The defaults below are the binary's and the Helm chart's: `tests/defaults.rs` fails when
// charts/kompress/values.yaml (or Chart.yaml's appVersion) says otherwise.
macro_rules! image_repository {
    () => {
        "ghcr.io/kompress-dev/kompress"
    };
}
/// Repository of the kompress image (the chart's `image.repository`).
pub const IMAGE_REPOSITORY: &str = image_repository!();
/// Image of CPU workers: this version of kompress.
pub const DEFAULT_WORKER_IMAGE: &str = concat!(image_repository!(), ":", env!("CARGO_PKG_VERSION"));
/// Image of GPU workers (built with `--build-arg VARIANT=gpu`).
pub const DEFAULT_WORKER_GPU_IMAGE: &str =
    concat!(image_repository!(), ":", env!("CARGO_PKG_VERSION"), "-gpu");
/// CPU request and limit of a worker whose spec sets none.
pub const DEFAULT_WORKER_CPU: &str = "2";
/// Memory request and limit of a worker whose spec sets none.
pub const DEFAULT_WORKER_MEMORY: &str = "4Gi";
/// Scratch (emptyDir) size limit of a worker whose spec sets none.
pub const DEFAULT_WORKER_SCRATCH: &str = "10Gi";
/// Toleration of GPU workers, as `kubectl taint` writes it (key only: operator Exists).
pub const DEFAULT_GPU_TOLERATION: &str = "nvidia.com/gpu:NoSchedule";

/// What the worker Jobs look like where the spec leaves it open.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub worker_image: String,
    pub gpu_image: String,
    /// Node selector of GPU workers; the spec's `nodeSelector` wins per key.
    pub gpu_node_selector: BTreeMap<String, String>,
    /// Tolerations of GPU workers; the spec's are added.
    pub gpu_tolerations: Vec<Toleration>,
    /// Watch one namespace; all when None.
    pub namespace: Option<String>,
    pub default_cpu: String,
    pub default_memory: String,
    pub default_scratch: String,
    /// Kueue LocalQueue of jobs whose spec names none (`spec.queueName` wins); None: jobs
    /// without `spec.queueName` are not queued.
    pub queue_name: Option<String>,
    /// Most reconciles in flight at once, per controller (CompressionJobs, policies). Bounds
    /// the memory of a burst: each reconcile holds its requests and responses while it waits.
    pub max_concurrent_reconciles: u16,
}

/// Default of `--max-concurrent-reconciles`. 64: in a burst of 10,000 CompressionJobs on a
/// shared 2-core control plane, 16 left the controller 97 s behind the last create (it got
/// too small a share of the API server beside the client creating them); 64 kept it within
/// 1.2 s at the same reconciles per job and controller memory (docs/src/benchmarks.md).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 64;

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            worker_image: DEFAULT_WORKER_IMAGE.into(),
            gpu_image: DEFAULT_WORKER_GPU_IMAGE.into(),
            gpu_node_selector: BTreeMap::new(),
            gpu_tolerations: vec![parse_toleration(DEFAULT_GPU_TOLERATION).expect("valid default")],
            namespace: None,
            default_cpu: DEFAULT_WORKER_CPU.into(),
            default_memory: DEFAULT_WORKER_MEMORY.into(),
            default_scratch: DEFAULT_WORKER_SCRATCH.into(),
            queue_name: None,
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
        }
    }
}

/// `key=value` (a node selector entry).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

/// `key[=value][:Effect]`, as in `kubectl taint`: without a value the operator is Exists,
/// without an effect every effect is tolerated.
pub fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let (kv, effect) = match s.rsplit_once(':') {
        Some((kv, e)) if ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e) => {
            (kv, Some(e.to_string()))
        }
        Some(_) => {
            return Err(format!(
                "`{s}`: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        None => (s, None),
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("`{s}` has no key; expected key[=value][:Effect]"));
    }
    Ok(Toleration {
        key: Some(key.into()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
        value,
        effect,
        ..Default::default()
    })
}

/// A JSON list of core/v1 Tolerations (the Helm chart passes `worker.gpu.tolerations` so).
#[derive(Debug, Clone, PartialEq)]
pub struct TolerationList(pub Vec<Toleration>);

pub fn parse_tolerations_json(s: &str) -> Result<TolerationList, String> {
    serde_json::from_str(s)
        .map(TolerationList)
        .map_err(|e| format!("not a JSON list of tolerations: {e}"))
}

/// The most of a kubeconfig file read (they are a few KiB; a large one holds many clusters).
const MAX_KUBECONFIG_BYTES: u64 = 16 << 20;

/// Each kubeconfig the client will read (`KUBECONFIG`'s list, else `~/.kube/config`) must be
/// a regular file of at most [`MAX_KUBECONFIG_BYTES`]: the client reads them whole, so
/// `/dev/zero` or a FIFO there would exhaust memory or hang start-up.
pub(super) fn check_kubeconfig() -> Result<()> {
    let paths: Vec<std::path::PathBuf> = match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        _ => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".kube/config"))
            .into_iter()
            .filter(|p| p.exists())
            .collect(),
    };
    for path in paths {
        if let Err(source) = crate::onnx::read_small(&path, MAX_KUBECONFIG_BYTES) {
            return Err(Error::Kubeconfig { path, source });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_parse_like_kubectl_taints() {
        let t = parse_toleration("nvidia.com/gpu:NoSchedule").unwrap();
        assert_eq!(
            (
                t.key.as_deref(),
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (
                Some("nvidia.com/gpu"),
                Some("Exists"),
                None,
                Some("NoSchedule")
            )
        );
        let t = parse_toleration("dedicated=ml:NoExecute").unwrap();
        assert_eq!(
            (
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (Some("Equal"), Some("ml"), Some("NoExecute"))
        );
        assert_eq!(parse_toleration("gpu").unwrap().effect, None);
        assert!(parse_toleration("gpu:Sometimes").is_err());
        assert!(parse_toleration(":NoSchedule").is_err());
    }

    #[test]
    fn node_selector_entries_are_key_value() {
        assert_eq!(
            parse_key_value("pool=a100").unwrap(),
            ("pool".to_string(), "a100".to_string())
        );
        assert!(parse_key_value("pool").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn tolerations_json_is_what_the_chart_passes() {
        let list = parse_tolerations_json(
            r#"[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]"#,
        )
        .unwrap();
        assert_eq!(list.0, ControllerConfig::default().gpu_tolerations);
        assert!(parse_tolerations_json("nvidia.com/gpu").is_err());
    }
}
