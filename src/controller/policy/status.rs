//! status: a policy's versions merged with a scan and with its CompressionJobs, what to
//! create and delete next, and the status and conditions for it (pure, unit-tested).

use super::scan::{Found, job_name};
use crate::api::policy::{KeyStatus, MAX_TRACKED_VERSIONS, policy_reason};
use crate::api::{CompressionJob, CompressionPolicyStatus, Phase, SeenVersion, VersionOrdering};
use crate::api::{condition, policy::CompressionPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The phase a version's CompressionJob shows (Pending before its first status).
pub fn job_phase(cj: &CompressionJob) -> Phase {
    cj.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending)
}

fn promoted_uri(cj: &CompressionJob) -> Option<String> {
    let s = cj.status.as_ref()?;
    (s.phase == Some(Phase::Succeeded))
        .then(|| s.result.as_ref()?.promoted.as_ref().map(|p| p.uri.clone()))
        .flatten()
}

/// The versions after a scan (`found`, None when no scan ran) and with the jobs as they are
/// now, and the versions seen for the first time. A version whose job is gone keeps its last
/// phase (the history limits delete finished jobs; the version is not compressed again); one
/// whose job vanished unfinished is counted Failed. The oldest versions no scan still finds
/// are dropped beyond [`MAX_TRACKED_VERSIONS`].
pub fn merge(
    policy: &str,
    old: &[SeenVersion],
    found: Option<&[Found]>,
    jobs: &[CompressionJob],
    now: &Time,
) -> (Vec<SeenVersion>, Vec<SeenVersion>) {
    let mut versions: Vec<SeenVersion> = old.to_vec();
    let mut fresh = Vec::new();
    let known: HashSet<String> = old.iter().map(|v| v.job.clone()).collect();
    for f in found.unwrap_or_default() {
        let job = job_name(policy, &f.uri, &f.id);
        if known.contains(&job) {
            continue;
        }
        let v = SeenVersion {
            key: f.key.clone(),
            version: f.version.clone(),
            uri: f.uri.clone(),
            tag: f.tag.clone(),
            id: f.id.clone(),
            sha256: f.sha256.clone(),
            job,
            phase: None,
            promoted: None,
            first_seen: now.clone(),
        };
        fresh.push(v.clone());
        versions.push(v);
    }
    let by_name: HashMap<String, &CompressionJob> =
        jobs.iter().map(|j| (j.name_any(), j)).collect();
    for v in &mut versions {
        match by_name.get(&v.job) {
            Some(cj) => {
                v.phase = Some(job_phase(cj));
                if let Some(p) = promoted_uri(cj) {
                    v.promoted = Some(p);
                }
            }
            None if v.phase.is_some_and(|p| !p.is_terminal()) => v.phase = Some(Phase::Failed),
            None => {}
        }
    }
    if versions.len() > MAX_TRACKED_VERSIONS {
        let current: HashSet<String> = found
            .unwrap_or_default()
            .iter()
            .map(|f| job_name(policy, &f.uri, &f.id))
            .collect();
        // oldest first among those no longer found; those found are never dropped
        let mut stale: Vec<usize> = (0..versions.len())
            .filter(|&i| !current.contains(&versions[i].job))
            .collect();
        stale.sort_by(|&a, &b| versions[a].first_seen.0.cmp(&versions[b].first_seen.0));
        let drop: HashSet<usize> = stale
            .into_iter()
            .take(versions.len() - MAX_TRACKED_VERSIONS)
            .collect();
        versions = versions
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, v)| v)
            .collect();
    }
    (versions, fresh)
}

/// Versions whose CompressionJob is to be created now: those not created yet, oldest version
/// first, as many as `concurrency` leaves room for next to the unfinished ones.
pub fn to_create(
    versions: &[SeenVersion],
    concurrency: u32,
    ordering: VersionOrdering,
) -> Vec<&SeenVersion> {
    let active = versions
        .iter()
        .filter(|v| v.phase.is_some_and(|p| !p.is_terminal()))
        .count();
    let room = (concurrency as usize).saturating_sub(active);
    let mut waiting: Vec<&SeenVersion> = versions.iter().filter(|v| v.phase.is_none()).collect();
    waiting.sort_by(|a, b| {
        a.first_seen
            .0
            .cmp(&b.first_seen.0)
            .then_with(|| a.key.cmp(&b.key))
            .then_with(|| super::source::compare_versions(ordering, &a.version, &b.version))
    });
    waiting.truncate(room);
    waiting
}

/// Finished jobs beyond the history limits, oldest first (by completion, else creation):
/// what to delete. Their promoted models are never touched.
pub fn beyond_history(spec: &CompressionPolicySpec, jobs: &[CompressionJob]) -> Vec<String> {
    let finished_at = |cj: &CompressionJob| {
        cj.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .or(cj.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
    };
    let mut out = Vec::new();
    for (succeeded, limit) in [
        (true, spec.successful_history()),
        (false, spec.failed_history()),
    ] {
        let mut done: Vec<&CompressionJob> = jobs
            .iter()
            .filter(|cj| cj.metadata.deletion_timestamp.is_none())
            .filter(|cj| match job_phase(cj) {
                Phase::Succeeded => succeeded,
                Phase::Rejected | Phase::Failed => !succeeded,
                _ => false,
            })
            .collect();
        done.sort_by_key(|cj| (finished_at(cj), cj.name_any()));
        let extra = done.len().saturating_sub(limit as usize);
        out.extend(done.into_iter().take(extra).map(|cj| cj.name_any()));
    }
    out
}

/// Per key: the newest version and the newest promoted one.
pub fn keys(versions: &[SeenVersion], ordering: VersionOrdering) -> Vec<KeyStatus> {
    let mut by_key: BTreeMap<&str, Vec<&SeenVersion>> = BTreeMap::new();
    for v in versions {
        by_key.entry(&v.key).or_default().push(v);
    }
    let newest = |a: &&SeenVersion, b: &&SeenVersion| {
        super::source::compare_versions(ordering, &a.version, &b.version)
    };
    by_key
        .into_iter()
        .map(|(key, vs)| {
            let latest = vs.iter().copied().max_by(newest).map(|v| v.version.clone());
            let promoted = vs
                .iter()
                .copied()
                .filter(|v| v.promoted.is_some())
                .max_by(newest);
            KeyStatus {
                key: key.to_string(),
                latest: latest.unwrap_or_default(),
                promoted_version: promoted.map(|v| v.version.clone()),
                promoted_uri: promoted.and_then(|v| v.promoted.clone()),
            }
        })
        .collect()
}

/// How the policy stands, for its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Scanned (or waiting for the next scan); the message says what was found.
    Ok(String),
    Suspended,
    /// The spec cannot work as written (a field path and what to do): Stalled.
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// The source could not be listed; retried with backoff.
    Unavailable(String),
}

/// kstatus conditions for `health`; `lastTransitionTime` kept while a condition's status
/// stays the same.
pub fn conditions(
    health: &Health,
    generation: Option<i64>,
    old: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let (t, f) = ("True", "False");
    let (ready, reconciling, stalled, reason, message) = match health {
        Health::Ok(m) => (t, f, f, policy_reason::SCANNED, m.clone()),
        Health::Suspended => (
            t,
            f,
            f,
            policy_reason::SUSPENDED,
            "spec.source.suspend is true: no scans, no new CompressionJobs".to_string(),
        ),
        Health::Invalid { reason, message } => (f, f, t, *reason, message.clone()),
        Health::Unavailable(m) => (f, t, f, policy_reason::SOURCE_UNAVAILABLE, m.clone()),
    };
    [
        (condition::READY, ready),
        (condition::RECONCILING, reconciling),
        (condition::STALLED, stalled),
    ]
    .into_iter()
    .map(|(type_, status)| {
        let kept = old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone());
        let holds = type_ == condition::READY || status == t;
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: if holds {
                message.clone()
            } else {
                String::new()
            },
            observed_generation: generation,
            last_transition_time: kept.unwrap_or_else(|| now.clone()),
        }
    })
    .collect()
}

/// Versions counted by phase (`Waiting`: not created yet).
pub fn phases(versions: &[SeenVersion]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for v in versions {
        let p = v.phase.map_or("Waiting", Phase::as_str);
        *out.entry(p.to_string()).or_insert(0) += 1;
    }
    out
}

/// The whole status.
pub struct Parts {
    pub generation: Option<i64>,
    pub health: Health,
    pub versions: Vec<SeenVersion>,
    pub last_scan: Option<Time>,
    pub next_scan: Option<Time>,
    pub ordering: VersionOrdering,
}

pub fn desired(
    parts: Parts,
    old: Option<&CompressionPolicyStatus>,
    now: &Time,
) -> CompressionPolicyStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let keys = keys(&parts.versions, parts.ordering);
    let label = |k: &str, v: &str| {
        if k.is_empty() {
            v.to_string()
        } else {
            format!("{k}/{v}")
        }
    };
    let latest_version = parts
        .versions
        .iter()
        .max_by(|a, b| a.first_seen.0.cmp(&b.first_seen.0))
        .map(|v| label(&v.key, &v.version));
    let latest_promoted = parts
        .versions
        .iter()
        .filter(|v| v.promoted.is_some())
        .max_by(|a, b| a.first_seen.0.cmp(&b.first_seen.0))
        .map(|v| label(&v.key, &v.version));
    CompressionPolicyStatus {
        observed_generation: parts.generation,
        conditions: conditions(&parts.health, parts.generation, old_conditions, now),
        last_scan: parts.last_scan,
        next_scan: parts.next_scan,
        phases: phases(&parts.versions),
        versions_seen: u32::try_from(parts.versions.len()).unwrap_or(u32::MAX),
        keys,
        latest_version,
        latest_promoted,
        versions: parts.versions,
    }
}

/// Versions promoted since `old` (for the Promoted Event).
pub fn newly_promoted<'a>(old: &[SeenVersion], new: &'a [SeenVersion]) -> Vec<&'a SeenVersion> {
    let before: HashSet<&str> = old
        .iter()
        .filter(|v| v.promoted.is_some())
        .map(|v| v.job.as_str())
        .collect();
    new.iter()
        .filter(|v| v.promoted.is_some() && !before.contains(v.job.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ArtifactRef, CompressionJobStatus, JobResult};

    fn at(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    fn found(key: &str, version: &str) -> Found {
        Found {
            key: key.into(),
            version: version.into(),
            uri: format!("file:///m/{key}/{version}/model.onnx"),
            id: format!("sha256:{key}{version}"),
            sha256: None,
            tag: None,
            vars: BTreeMap::new(),
        }
    }

    fn job(name: &str, phase: Option<Phase>, promoted: bool, done_s: i64) -> CompressionJob {
        let mut cj: CompressionJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "kompress.dev/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": name},
            "spec": {"model": {"uri": "m"}, "dataset": {"uri": "d"}, "output": {"uri": "o"}}
        }))
        .unwrap();
        cj.status = phase.map(|p| CompressionJobStatus {
            phase: Some(p),
            completion_time: Some(at(done_s)),
            result: promoted.then(|| JobResult {
                promoted: Some(ArtifactRef {
                    uri: format!("file:///p/{name}"),
                    sha256: "00".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cj
    }

    #[test]
    fn a_rescan_adds_only_new_versions_and_phases_follow_the_jobs() {
        let scan1 = [found("a", "v1"), found("a", "v2")];
        let (v1, fresh) = merge("p", &[], Some(&scan1), &[], &at(10));
        assert_eq!(fresh.len(), 2);
        assert!(v1.iter().all(|v| v.phase.is_none()));
        let jobs = [
            job(&v1[0].job, Some(Phase::Succeeded), true, 20),
            job(&v1[1].job, None, false, 0),
        ];
        let scan2 = [found("a", "v1"), found("a", "v2"), found("a", "v3")];
        let (v2, fresh) = merge("p", &v1, Some(&scan2), &jobs, &at(30));
        assert_eq!(
            fresh.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
            ["v3"]
        );
        assert_eq!(
            v2.iter().map(|v| v.phase).collect::<Vec<_>>(),
            [Some(Phase::Succeeded), Some(Phase::Pending), None]
        );
        assert_eq!(
            v2[0].promoted.as_deref(),
            Some(format!("file:///p/{}", v1[0].job).as_str())
        );
        // v1's job deleted by the history limit: the version stays Succeeded, nothing re-made
        let (v3, fresh) = merge("p", &v2, Some(&scan2), &jobs[1..], &at(40));
        assert!(fresh.is_empty());
        assert_eq!(v3[0].phase, Some(Phase::Succeeded));
        // the unfinished one deleted by someone: Failed, not re-made
        let (v4, _) = merge("p", &v3, None, &[], &at(50));
        assert_eq!(v4[1].phase, Some(Phase::Failed));
        assert_eq!(newly_promoted(&v1, &v2).len(), 1);
        assert!(newly_promoted(&v2, &v3).is_empty());
    }

    #[test]
    fn concurrency_bounds_what_is_created_oldest_version_first() {
        let scan = [found("a", "v10"), found("a", "v9"), found("b", "v1")];
        let (mut v, _) = merge("p", &[], Some(&scan), &[], &at(10));
        let next: Vec<&str> = to_create(&v, 2, VersionOrdering::Natural)
            .iter()
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(next, ["v9", "v10"]);
        v[0].phase = Some(Phase::Running);
        assert_eq!(to_create(&v, 2, VersionOrdering::Natural).len(), 1);
        v[1].phase = Some(Phase::Pending);
        assert!(to_create(&v, 2, VersionOrdering::Natural).is_empty());
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let spec: CompressionPolicySpec = serde_json::from_value(serde_json::json!({
            "source": {"uri": "file:///m/*/model.onnx"},
            "jobTemplate": {"spec": {}},
            "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0
        }))
        .unwrap();
        let jobs = [
            job("s-old", Some(Phase::Succeeded), true, 10),
            job("s-new", Some(Phase::Succeeded), true, 20),
            job("rejected", Some(Phase::Rejected), false, 5),
            job("running", Some(Phase::Running), false, 0),
        ];
        assert_eq!(beyond_history(&spec, &jobs), ["s-old", "rejected"]);
    }

    #[test]
    fn tracked_versions_are_bounded_and_found_ones_are_kept() {
        let many: Vec<Found> = (0..MAX_TRACKED_VERSIONS)
            .map(|i| found("a", &format!("v{i}")))
            .collect();
        let (v, _) = merge("p", &[], Some(&many), &[], &at(1));
        let newer = [found("b", "v1")];
        let (v, _) = merge("p", &v, Some(&newer), &[], &at(2));
        assert_eq!(v.len(), MAX_TRACKED_VERSIONS);
        assert!(v.iter().any(|x| x.key == "b"));
    }

    #[test]
    fn conditions_are_kstatus_shaped_and_keep_transition_times() {
        let bad = Health::Invalid {
            reason: policy_reason::INVALID_SPEC,
            message: "spec.jobTemplate.spec.output.promoteTo: unknown placeholder".into(),
        };
        let c = conditions(&bad, Some(2), &[], &at(5));
        let st: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            st,
            [
                ("Ready", "False", "InvalidSpec"),
                ("Reconciling", "False", "InvalidSpec"),
                ("Stalled", "True", "InvalidSpec")
            ]
        );
        assert!(c[2].message.contains("promoteTo") && c[1].message.is_empty());
        let again = conditions(&bad, Some(2), &c, &at(9));
        assert_eq!(again, c);
        let ok = conditions(&Health::Ok("0 versions".into()), Some(2), &c, &at(9));
        assert_eq!(
            (ok[0].status.as_str(), ok[0].last_transition_time.clone()),
            ("True", at(9))
        );
    }
}
