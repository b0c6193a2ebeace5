//! `kompress controller`: the operator's flags, turned into `controller::Options`.

use super::fail;
use crate::controller::{
    self, ControllerConfig, DEFAULT_GPU_TOLERATION, DEFAULT_WORKER_CPU, DEFAULT_WORKER_GPU_IMAGE,
    DEFAULT_WORKER_IMAGE, DEFAULT_WORKER_MEMORY, DEFAULT_WORKER_SCRATCH, Options, leader,
};
use std::process::ExitCode;

/// Flags of `kompress controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Image of CPU worker pods.
    #[arg(long, env = "KOMPRESS_WORKER_IMAGE", default_value = DEFAULT_WORKER_IMAGE)]
    pub worker_image: String,
    /// Image of GPU worker pods (`spec.resources.gpu > 0`).
    #[arg(long, env = "KOMPRESS_WORKER_GPU_IMAGE", default_value = DEFAULT_WORKER_GPU_IMAGE)]
    pub worker_gpu_image: String,
    /// Node selector of GPU worker pods, KEY=VALUE (repeatable); the spec's wins per key.
    #[arg(long = "gpu-node-selector", value_name = "KEY=VALUE", value_parser = controller::parse_key_value)]
    pub gpu_node_selector: Vec<(String, String)>,
    /// Toleration of GPU worker pods, KEY[=VALUE][:EFFECT] as in `kubectl taint` (repeatable;
    /// replaces the default).
    #[arg(long = "gpu-toleration", value_name = "KEY[=VALUE][:EFFECT]", default_value = DEFAULT_GPU_TOLERATION, value_parser = controller::parse_toleration)]
    pub gpu_toleration: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// GPU tolerations as a JSON list of core/v1 Tolerations (the Helm chart sets it);
    /// replaces --gpu-toleration.
    #[arg(long = "gpu-tolerations-json", env = "KOMPRESS_GPU_TOLERATIONS", value_name = "JSON", value_parser = controller::parse_tolerations_json)]
    pub gpu_tolerations_json: Option<controller::TolerationList>,
    /// Watch CompressionJobs in this namespace only (default: all namespaces).
    #[arg(long, env = "KOMPRESS_NAMESPACE")]
    pub namespace: Option<String>,
    /// CPU request and limit of workers whose spec sets none.
    #[arg(long, default_value = DEFAULT_WORKER_CPU)]
    pub default_cpu: String,
    /// Memory request and limit of workers whose spec sets none.
    #[arg(long, default_value = DEFAULT_WORKER_MEMORY)]
    pub default_memory: String,
    /// Scratch (emptyDir) size limit of workers whose spec sets none.
    #[arg(long, default_value = DEFAULT_WORKER_SCRATCH)]
    pub default_scratch: String,
    /// Kueue LocalQueue of CompressionJobs that set no `spec.queueName`: their worker Jobs are
    /// created suspended and Kueue admits them against its quotas. Each namespace has its own
    /// LocalQueue of this name (Kueue's convention is `default`). Unset: not queued.
    #[arg(long, env = "KOMPRESS_QUEUE_NAME", value_parser = parse_queue_name)]
    pub queue_name: Option<String>,
    /// Most reconciles in flight at once (CompressionJobs; policies have their own as many).
    /// Each holds its API requests while it waits, so this bounds a burst's memory.
    #[arg(long, env = "KOMPRESS_MAX_CONCURRENT_RECONCILES", default_value_t = controller::DEFAULT_MAX_CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run only while holding the `kompress-controller` Lease (false for local development).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
}

impl ControllerArgs {
    pub async fn run(self) -> ExitCode {
        let opts = Options {
            config: ControllerConfig {
                worker_image: self.worker_image,
                gpu_image: self.worker_gpu_image,
                gpu_node_selector: self.gpu_node_selector.into_iter().collect(),
                gpu_tolerations: self
                    .gpu_tolerations_json
                    .map(|l| l.0)
                    .unwrap_or(self.gpu_toleration),
                namespace: self.namespace,
                default_cpu: self.default_cpu,
                default_memory: self.default_memory,
                default_scratch: self.default_scratch,
                queue_name: self.queue_name,
                max_concurrent_reconciles: self.max_concurrent_reconciles,
            },
            metrics_addr: self.metrics_addr,
            leader_elect: self.leader_elect,
            lease_namespace: self.leader_election_namespace,
            identity: leader::default_identity(),
        };
        match controller::run(opts).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, 1),
        }
    }
}

fn parse_queue_name(s: &str) -> Result<String, String> {
    if controller::validate::is_queue_name(s) {
        Ok(s.into())
    } else {
        Err(format!(
            "`{s}` is not a LocalQueue name: at most 63 lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ))
    }
}
