//! The controller's one error type; every variant has a static category for metric labels and
//! Event reasons (never the error text: it is unbounded).

/// What went wrong in one reconcile, in the election or in serving the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the CompressionJob has no metadata.{0}; objects read from the API server always have one"
    )]
    MissingMetadata(&'static str),
    #[error("cannot read worker Job {name}")]
    GetJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot apply worker Job {name}; check the controller's RBAC for batch/jobs create and patch"
    )]
    ApplyJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list or delete superseded worker Jobs of {name}")]
    CleanupJobs {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list the pods of worker Job {name}; check the controller's RBAC for pods list")]
    ListPods {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot update the status of CompressionJob {name}; check the controller's RBAC for compressionjobs/status patch"
    )]
    UpdateStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("leader election on Lease {namespace}/{name} failed")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("leadership of Lease {0} was lost; exiting so a fresh process can compete again")]
    LeadershipLost(String),
    #[error(
        "cannot connect to the Kubernetes API (in a pod: the service account; outside: KUBECONFIG)"
    )]
    Client(#[source] kube::Error),
    #[error(
        "kubeconfig {}: not a readable regular file of at most 16 MiB: point KUBECONFIG at a kubeconfig file",
        path.display()
    )]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot list CompressionJobs: is the CRD installed (`kompress crd | kubectl apply -f -`) and may the controller list them?"
    )]
    ListCompressionJobs(#[source] kube::Error),
    #[error(
        "cannot list, create or delete the CompressionJobs of CompressionPolicy {name}; check the controller's RBAC for compressionjobs list, create and delete"
    )]
    PolicyJobs {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot update the status of CompressionPolicy {name}; check the controller's RBAC for compressionpolicies/status patch"
    )]
    UpdatePolicyStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot list CompressionPolicies: is the CRD installed (`kompress crd --kind policy | kubectl apply -f -`) and may the controller list them?"
    )]
    ListCompressionPolicies(#[source] kube::Error),
    #[error("cannot serve the admin endpoint on {addr}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the CompressionJob watch failed")]
    Watch(#[source] kube::runtime::watcher::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, static category: the `result` label of reconcile metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::GetJob { .. } => "GetJobFailed",
            Self::ApplyJob { .. } => "ApplyJobFailed",
            Self::CleanupJobs { .. } => "CleanupJobsFailed",
            Self::ListPods { .. } => "ListPodsFailed",
            Self::UpdateStatus { .. } => "UpdateStatusFailed",
            Self::Lease { .. } => "LeaseFailed",
            Self::LeadershipLost(_) => "LeadershipLost",
            Self::Client(_) | Self::Kubeconfig { .. } => "ClientFailed",
            Self::ListCompressionJobs(_) => "ListFailed",
            Self::PolicyJobs { .. } => "PolicyJobsFailed",
            Self::UpdatePolicyStatus { .. } => "UpdateStatusFailed",
            Self::ListCompressionPolicies(_) => "ListFailed",
            Self::Serve { .. } => "ServeFailed",
            Self::Watch(_) => "WatchFailed",
        }
    }
}
