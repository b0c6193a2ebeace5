//! observe: where the current generation's Job is, and once it has finished, what the worker
//! reported in its termination message (read from the Job's pods; the worker has no API access).

use super::error::{Error, Result};
use super::status::{Observed, Run};
use crate::api::wire::WorkerMessage;
use crate::api::{Phase, WorkerRef, reason};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// The Job's own view of its progress.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Suspended and never started: waiting for Kueue to admit it.
    Queued,
    Pending,
    Running,
    Complete,
    /// The Job's Failed condition: reason (BackoffLimitExceeded, DeadlineExceeded,
    /// PodFailurePolicy, ...) and message.
    Failed {
        reason: String,
        message: String,
        at: Option<Time>,
    },
}

fn true_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete and Failed are terminal (FailureTarget and SuccessCriteriaMet come first, while
/// pods may still be terminating); Running once a pod is ready, and still Running after a pod
/// finished until the Job is terminal (a finished pod is no longer ready: without this the
/// phase stepped back to Pending for one status write between the pod's end and `Complete`).
pub fn progress(job: &Job) -> Progress {
    if true_condition(job, "Complete").is_some() {
        return Progress::Complete;
    }
    if let Some(c) = true_condition(job, "Failed") {
        return Progress::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
            at: c.last_transition_time.clone(),
        };
    }
    let started = job.status.as_ref().is_some_and(|s| {
        s.ready.unwrap_or(0) > 0 || s.succeeded.unwrap_or(0) > 0 || s.failed.unwrap_or(0) > 0
    }) || true_condition(job, "SuccessCriteriaMet").is_some()
        || true_condition(job, "FailureTarget").is_some();
    let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
    if started {
        Progress::Running
    } else if suspended {
        Progress::Queued
    } else {
        Progress::Pending
    }
}

/// [`progress`] as a number that changes only when the progress does (a Failed Job's
/// reason and message are not part of it).
pub fn progress_code(job: &Job) -> u64 {
    match progress(job) {
        Progress::Queued => 1,
        Progress::Pending => 2,
        Progress::Running => 3,
        Progress::Complete => 4,
        Progress::Failed { .. } => 5,
    }
}

/// The termination message of the worker container that finished last, with its finish time.
pub fn termination_message(pods: &[Pod]) -> Option<(String, Option<Time>)> {
    last_finished(pods).map(|(m, t, _)| (m, t))
}

/// The pod whose worker container finished last: its message, finish time and the pod.
fn last_finished(pods: &[Pod]) -> Option<(String, Option<Time>, &Pod)> {
    pods.iter()
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let s = statuses
                .iter()
                .find(|s| s.name == super::build::CONTAINER)
                .or(statuses.first())?;
            let t = s.state.as_ref()?.terminated.as_ref()?;
            Some((
                t.message.clone().unwrap_or_default(),
                t.finished_at.clone(),
                p,
            ))
        })
        .max_by(|a, b| a.1.as_ref().map(|t| t.0).cmp(&b.1.as_ref().map(|t| t.0)))
}

/// A pod as cost tools see it: name, node, and the worker container's requests.
pub fn worker_ref(pod: &Pod) -> WorkerRef {
    let requests = pod
        .spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == super::build::CONTAINER)
        })
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.requests.as_ref());
    let q = |k: &str| {
        requests
            .and_then(|r| r.get(k))
            .and_then(|q| parse_quantity(&q.0))
    };
    WorkerRef {
        pod: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        cpu_request: q("cpu"),
        memory_request_bytes: q("memory"),
    }
}

/// A Kubernetes quantity as a number: `500m` -> 0.5, `2` -> 2, `4Gi` -> 4 * 2^30,
/// `1.5G` -> 1.5e9, `1e3` -> 1000. None for anything else.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let binary = |n: i32| 1024f64.powi(n);
    let suffixes: [(&str, f64); 14] = [
        ("Ki", binary(1)),
        ("Mi", binary(2)),
        ("Gi", binary(3)),
        ("Ti", binary(4)),
        ("Pi", binary(5)),
        ("Ei", binary(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let q = q.trim();
    let (num, mult) = suffixes
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mult)
}

/// What a finished Job means, from the Job's progress and the last worker's message. A
/// message that is not the worker's JSON (a crash: FallbackToLogsOnError put the log tail
/// there) or no message at all makes a failure with the Job's reason.
pub fn outcome(progress: &Progress, message: Option<&str>) -> WorkerMessage {
    if let Some(m) = message.and_then(|m| serde_json::from_str::<WorkerMessage>(m.trim()).ok()) {
        return m;
    }
    let (reason, why) = match progress {
        Progress::Failed {
            reason, message, ..
        } => (reason.clone(), message.clone()),
        _ => (
            reason::WORKER_FAILED.to_string(),
            "the worker Job completed".to_string(),
        ),
    };
    let tail = message.map(str::trim).filter(|m| !m.is_empty()).map(|m| {
        let start = m.len().saturating_sub(1000);
        let start = (start..m.len())
            .find(|&i| m.is_char_boundary(i))
            .unwrap_or(m.len());
        format!("; its last output: {}", &m[start..])
    });
    WorkerMessage {
        phase: Phase::Failed,
        result: None,
        reason: Some(if reason.is_empty() {
            reason::WORKER_FAILED.into()
        } else {
            reason
        }),
        permanent: None,
        message: Some(format!(
            "{why} without a readable result{}",
            tail.unwrap_or_default()
        )),
    }
}

/// Reads the Job's pods once it has finished and turns everything into an observation.
pub async fn observe(client: &Client, job: &Job) -> Result<(Run, Observed)> {
    let name = job.name_any();
    let status = job.status.clone().unwrap_or_default();
    let mut run = Run {
        job_name: name.clone(),
        start_time: status.start_time,
        completion_time: status.completion_time,
        worker: None,
    };
    let progress = progress(job);
    let observed = match &progress {
        Progress::Queued => Observed::Queued {
            queue: job
                .labels()
                .get(super::build::labels::KUEUE_QUEUE)
                .cloned()
                .unwrap_or_default(),
            why: super::kueue::waiting_reason(client, job).await,
        },
        Progress::Pending => Observed::Pending,
        Progress::Running => Observed::Running,
        Progress::Complete | Progress::Failed { .. } => {
            let pods: Api<Pod> =
                Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
            // the Job's uid, not its name: a deleted and re-created Job of the same name has other pods
            let selector = match job.uid() {
                Some(uid) => format!("batch.kubernetes.io/controller-uid={uid}"),
                None => format!("batch.kubernetes.io/job-name={name}"),
            };
            let lp = ListParams::default().labels(&selector);
            let list = pods.list(&lp).await.map_err(|source| Error::ListPods {
                name: name.clone(),
                source,
            })?;
            let last = last_finished(&list.items);
            run.worker = last.as_ref().map(|(_, _, pod)| worker_ref(pod));
            let found = last.map(|(m, t, _)| (m, t));
            if let Progress::Failed { at, .. } = &progress {
                run.completion_time = run
                    .completion_time
                    .or(at.clone())
                    .or(found.as_ref().and_then(|f| f.1.clone()));
            }
            Observed::Finished(Box::new(outcome(
                &progress,
                found.as_ref().map(|f| f.0.as_str()),
            )))
        }
    };
    Ok((run, observed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "j", "namespace": "ns"}, "status": status}),
        )
        .unwrap()
    }

    fn pod(message: &str, finished: &str) -> Pod {
        serde_json::from_value(json!({"status": {"containerStatuses": [{
            "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": finished}},
        }]}}))
        .unwrap()
    }

    #[test]
    fn a_finished_pod_keeps_the_job_running_until_it_is_terminal() {
        // The pod ended (not ready any more), the Job not yet Complete: still Running.
        assert_eq!(
            progress(&job(json!({"active": 0, "ready": 0, "succeeded": 1}))),
            Progress::Running
        );
        assert_eq!(
            progress(&job(
                json!({"ready": 0, "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]})
            )),
            Progress::Running
        );
        // A failed pod waiting for its retry is still work in progress.
        assert_eq!(
            progress(&job(json!({"active": 1, "ready": 0, "failed": 1}))),
            Progress::Running
        );
        assert_eq!(
            progress(&job(json!({"active": 1, "ready": 0}))),
            Progress::Pending
        );
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (q, v) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("4Gi", 4.0 * 1073741824.0),
            ("1.5G", 1.5e9),
            ("512Mi", 536870912.0),
            ("1e3", 1000.0),
            ("100k", 1e5),
        ] {
            assert_eq!(parse_quantity(q), Some(v), "{q}");
        }
        for bad in ["", "Gi", "-1", "abc", "1Xi"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_worker_ref_names_the_pod_its_node_and_its_requests() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "w-abc"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "worker",
                "resources": {"requests": {"cpu": "1500m", "memory": "2Gi"}}}]},
        }))
        .unwrap();
        let w = worker_ref(&pod);
        assert_eq!(w.pod, "w-abc");
        assert_eq!(w.node.as_deref(), Some("node-1"));
        assert_eq!(w.cpu_request, Some(1.5));
        assert_eq!(w.memory_request_bytes, Some(2.0 * 1073741824.0));
    }

    #[test]
    fn job_progress_follows_its_terminal_conditions_and_ready_pods() {
        assert_eq!(progress(&job(json!({}))), Progress::Pending);
        assert_eq!(
            progress(&job(json!({"active": 1, "ready": 0}))),
            Progress::Pending
        );
        assert_eq!(
            progress(&job(json!({"active": 1, "ready": 1}))),
            Progress::Running
        );
        let failing = json!({"active": 1, "ready": 1, "conditions": [{"type": "FailureTarget", "status": "True"}]});
        assert_eq!(
            progress(&job(failing)),
            Progress::Running,
            "FailureTarget is not terminal yet"
        );
        assert_eq!(
            progress(&job(
                json!({"conditions": [{"type": "Complete", "status": "True"}]})
            )),
            Progress::Complete
        );
        let failed = progress(&job(
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 65"}]}),
        ));
        assert!(
            matches!(failed, Progress::Failed { ref reason, .. } if reason == "PodFailurePolicy"),
            "{failed:?}"
        );
    }

    #[test]
    fn the_last_finished_worker_speaks() {
        let pods = [
            pod("first", "2026-01-01T00:00:00Z"),
            pod("last", "2026-01-01T00:05:00Z"),
            pod("middle", "2026-01-01T00:01:00Z"),
        ];
        assert_eq!(termination_message(&pods).unwrap().0, "last");
        assert_eq!(termination_message(&[]), None);
    }

    #[test]
    fn worker_json_is_the_outcome() {
        let m = WorkerMessage {
            phase: Phase::Rejected,
            result: Some(Default::default()),
            reason: None,
            permanent: None,
            message: None,
        };
        assert_eq!(outcome(&Progress::Complete, Some(&m.to_json())), m);
    }

    #[test]
    fn a_crash_log_in_the_message_fails_with_the_job_reason_and_the_log_tail() {
        let failed = Progress::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "Job has reached the specified backoff limit".into(),
            at: None,
        };
        let m = outcome(&failed, Some("thread 'main' panicked at src/x.rs:1"));
        assert_eq!(m.phase, Phase::Failed);
        assert_eq!(m.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert!(m.message.as_deref().unwrap().contains("panicked"), "{m:?}");
        let lost = outcome(&Progress::Complete, None);
        assert_eq!(
            (lost.phase, lost.reason.as_deref()),
            (Phase::Failed, Some("WorkerFailed"))
        );
    }
}
