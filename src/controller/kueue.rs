//! kueue: why a queued worker Job waits, read from the Workload Kueue made for it.
//!
//! A CompressionJob with a queue (`spec.queueName`, or the controller's `--queue-name`) gets a
//! worker Job created suspended with the `kueue.x-k8s.io/queue-name` label (see [`super::build`]).
//! Kueue's Job integration makes a Workload for it (labelled with the Job's uid), reserves
//! quota in the LocalQueue's ClusterQueue and unsuspends the Job; until then the Workload's
//! `QuotaReserved` condition says why it waits (e.g. "couldn't assign flavors to pod set
//! main: insufficient unused quota for cpu in flavor default, 1 more needed"), and that text
//! goes into the CompressionJob's status. Read-only, best effort: without Kueue's CRD or the
//! RBAC to read Workloads the status says that the Job waits for Kueue, without the why.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, ResourceExt};

/// Kueue's label on a Workload: the uid of the Job it admits.
pub const JOB_UID_LABEL: &str = "kueue.x-k8s.io/job-uid";

/// `kueue.x-k8s.io/v1beta2` Workload (Kueue v0.15 and later serve it).
fn workloads(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", "Workload");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// Why Kueue has not admitted the Job yet: the message of its Workload's false
/// `QuotaReserved` (else `Admitted`) condition. None when there is no Workload (yet), Kueue is
/// not installed, or the controller may not read Workloads.
pub async fn waiting_reason(client: &Client, job: &Job) -> Option<String> {
    let uid = job.uid()?;
    let lp = ListParams::default()
        .labels(&format!("{JOB_UID_LABEL}={uid}"))
        .limit(5);
    let list = match workloads(client, &job.namespace().unwrap_or_default())
        .list(&lp)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(job = %job.name_any(), error = %e, "could not read Kueue Workloads");
            return None;
        }
    };
    list.items.iter().find_map(|w| pending_message(&w.data))
}

/// The message of the first false condition among QuotaReserved and Admitted.
pub fn pending_message(workload: &serde_json::Value) -> Option<String> {
    let conditions = workload["status"]["conditions"].as_array()?;
    ["QuotaReserved", "Admitted"].iter().find_map(|t| {
        conditions
            .iter()
            .find(|c| c["type"] == *t && c["status"] == "False")
            .and_then(|c| c["message"].as_str())
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| m.chars().take(512).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_reason_is_the_false_quota_condition_of_the_workload() {
        let w = json!({"status": {"conditions": [
            {"type": "Admitted", "status": "False", "message": "not admitted"},
            {"type": "QuotaReserved", "status": "False", "reason": "Pending",
             "message": "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more needed"},
        ]}});
        assert_eq!(
            pending_message(&w).as_deref(),
            Some(
                "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more needed"
            )
        );
        let admitted = json!({"status": {"conditions": [{"type": "QuotaReserved", "status": "True", "message": "ok"}]}});
        assert_eq!(pending_message(&admitted), None);
        assert_eq!(pending_message(&json!({})), None);
        let long = json!({"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": "x".repeat(5000)}]}});
        assert_eq!(pending_message(&long).unwrap().len(), 512);
    }
}
