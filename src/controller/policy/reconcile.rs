//! reconcile: one CompressionPolicy, as a pipeline: validate -> conflicts -> list its jobs ->
//! scan (when due) -> merge -> create (up to `concurrency`) -> history limits -> status.
//! Only the list, scan, create, delete and status write touch the API or storage.

use super::scan::{self, HashCache, ScanError};
use super::source::Source;
use super::status::{self, Health, Parts};
use super::template::{self, Model};
use super::validate::{Validated, validate};
use crate::api::policy::policy_reason;
use crate::api::{
    CompressionJob, CompressionPolicy, CompressionPolicyStatus, InvalidSpec, Phase, SeenVersion,
};
use crate::controller::State;
use crate::controller::build::FIELD_MANAGER;
use crate::controller::error::{Error, Result};
use crate::controller::events::Recorder;
use crate::controller::reconcile::backoff;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The label on every CompressionJob a policy made: the policy's name.
pub const POLICY_LABEL: &str = "kompress.dev/policy";
/// Annotations on each such job: which version it compresses.
pub const SOURCE_URI: &str = "kompress.dev/source-uri";
pub const SOURCE_ID: &str = "kompress.dev/source-id";
pub const SOURCE_KEY: &str = "kompress.dev/source-key";
pub const SOURCE_VERSION: &str = "kompress.dev/source-version";
/// With an `oci://` source: the tag the version was found at.
pub const SOURCE_TAG: &str = "kompress.dev/source-tag";

/// While jobs wait for room under `concurrency`, the jobs' own watch drives progress; this is
/// the safety net.
const REQUEUE_WAITING: Duration = Duration::from_secs(60);
/// How soon a policy refused for a conflict looks again (the other policy may go away).
const REQUEUE_CONFLICT: Duration = Duration::from_secs(60);

/// What every policy reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub state: Arc<State>,
    /// Every policy the controller watches (for promoteTo conflicts).
    pub policies: Store<CompressionPolicy>,
    /// Consecutive failed scans per policy; cleared by a successful one.
    pub failures: Mutex<HashMap<ObjectRef<CompressionPolicy>, u32>>,
    pub hashes: HashCache,
}

pub fn error_policy(p: Arc<CompressionPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = bump(&ctx, &p);
    let delay = backoff(failures);
    tracing::warn!(
        namespace = p.namespace().unwrap_or_default(), name = %p.name_any(), category = error.category(), failures, retry_in_s = delay.as_secs(),
        error = %crate::error::error_chain(error), "policy reconcile failed"
    );
    Action::requeue(delay)
}

fn bump(ctx: &Context, p: &CompressionPolicy) -> u32 {
    let mut map = ctx.failures.lock().expect("failure map lock");
    let n = map.entry(ObjectRef::from_obj(p)).or_insert(0);
    *n += 1;
    *n
}

pub async fn reconcile(p: Arc<CompressionPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let mut timer = ctx.state.metrics.reconcile_timer();
    let result = steps(&p, &ctx).await;
    timer.set_result(match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    });
    result
}

/// `field: message; ...` of every problem.
fn describe(e: &InvalidSpec) -> String {
    e.0.iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn time_after(now: &Time, d: Duration) -> Time {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    Time(
        now.0
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(now.0),
    )
}

async fn steps(p: &CompressionPolicy, ctx: &Context) -> Result<Action> {
    let namespace = p.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    p.uid().ok_or(Error::MissingMetadata("uid"))?;
    if p.metadata.deletion_timestamp.is_some() {
        // being deleted: the garbage collector takes its jobs; nothing new is made
        return Ok(Action::await_change());
    }
    let api: Api<CompressionPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let cjs: Api<CompressionJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = p.metadata.generation;
    let old = p.status.as_ref();
    let now = crate::controller::reconcile::now();
    let jobs = owned_jobs(&cjs, p).await?;
    let old_versions = old.map(|s| s.versions.as_slice()).unwrap_or_default();
    // the conflict check reads every policy: not before the first full list is in the cache
    // (a reconcile scheduled during it would see an empty store and miss an older policy)
    if ctx.policies.wait_until_ready().await.is_err() {
        return Ok(Action::await_change()); // the watch is gone: the controller is stopping
    }

    let checked = validate(p)
        .map_err(|invalid| Health::Invalid {
            reason: policy_reason::INVALID_SPEC,
            message: describe(&invalid),
        })
        .and_then(|v| match conflict(p, &ctx.policies) {
            Some(message) => Err(Health::Invalid {
                reason: policy_reason::PROMOTE_CONFLICT,
                message,
            }),
            None => Ok(v),
        });
    // a refused policy makes nothing; what it made before is still followed
    let valid = match checked {
        Ok(v) => v,
        Err(health) => {
            let conflict = matches!(&health, Health::Invalid { reason, .. } if *reason == policy_reason::PROMOTE_CONFLICT);
            let (versions, _) = status::merge(&p.name_any(), old_versions, None, &jobs, &now);
            let parts = Parts {
                generation,
                health,
                versions,
                last_scan: old.and_then(|s| s.last_scan.clone()),
                next_scan: None,
                ordering: p.spec.source.ordering(),
            };
            write(ctx, &api, p, old, status::desired(parts, old, &now)).await?;
            // another policy going away is no change of this one: look again
            return Ok(if conflict {
                Action::requeue(REQUEUE_CONFLICT)
            } else {
                Action::await_change()
            });
        }
    };
    if p.spec.source.suspended() {
        let (versions, _) = status::merge(&p.name_any(), old_versions, None, &jobs, &now);
        let parts = Parts {
            generation,
            health: Health::Suspended,
            versions,
            last_scan: old.and_then(|s| s.last_scan.clone()),
            next_scan: None,
            ordering: p.spec.source.ordering(),
        };
        write(ctx, &api, p, old, status::desired(parts, old, &now)).await?;
        return Ok(Action::await_change());
    }
    run(p, ctx, &valid, &cjs, jobs, &api, now).await
}

/// Scan when due, merge, create, trim history, write status.
async fn run(
    p: &CompressionPolicy,
    ctx: &Context,
    valid: &Validated,
    cjs: &Api<CompressionJob>,
    jobs: Vec<CompressionJob>,
    api: &Api<CompressionPolicy>,
    now: Time,
) -> Result<Action> {
    let old = p.status.as_ref();
    let generation = p.metadata.generation;
    let old_versions = old.map(|s| s.versions.as_slice()).unwrap_or_default();
    let due = old.is_none_or(|s| {
        s.observed_generation != generation || s.next_scan.as_ref().is_none_or(|t| t.0 <= now.0)
    });
    let mut scanned = Scanned {
        health: old.map_or(Health::Ok(String::new()), health_of),
        last_scan: old.and_then(|s| s.last_scan.clone()),
        next_scan: old.and_then(|s| s.next_scan.clone()),
        found: None,
    };
    if due {
        scanned = scan_step(p, ctx, valid, &now, scanned).await;
    }
    let Scanned {
        health,
        last_scan,
        next_scan,
        found,
    } = scanned;
    let (mut versions, fresh) =
        status::merge(&p.name_any(), old_versions, found.as_deref(), &jobs, &now);
    for v in &fresh {
        let note = format!(
            "new version {} of `{}` at {}; CompressionJob {}",
            v.version, v.key, v.uri, v.job
        );
        let what = (EventType::Normal, policy_reason::NEW_VERSION, "Scan");
        publish(ctx, p, what, Some(&v.job), note).await;
    }
    create_jobs(p, ctx, valid, cjs, &mut versions).await?;
    for name in status::beyond_history(&p.spec, &jobs) {
        match cjs.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(job = %name, policy = %p.name_any(), "deleted beyond the history limit")
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(Error::PolicyJobs {
                    name: p.name_any(),
                    source,
                });
            }
        }
    }
    for v in status::newly_promoted(old_versions, &versions) {
        let note = format!(
            "version {} of `{}` promoted to {} (CompressionJob {})",
            v.version,
            v.key,
            v.promoted.as_deref().unwrap_or_default(),
            v.job
        );
        let what = (EventType::Normal, policy_reason::PROMOTED, "Promote");
        publish(ctx, p, what, Some(&v.job), note).await;
    }
    let waiting = versions.iter().any(|v| v.phase.is_none());
    let parts = Parts {
        generation,
        health,
        versions,
        last_scan,
        next_scan: next_scan.clone(),
        ordering: p.spec.source.ordering(),
    };
    let desired = status::desired(parts, old, &now);
    ctx.state
        .metrics
        .policy_observed(&p.namespace().unwrap_or_default(), &p.name_any(), &desired);
    write(ctx, api, p, old, desired).await?;
    let until_scan = next_scan
        .map(|t| Duration::try_from(t.0.duration_since(now.0)).unwrap_or_default())
        .unwrap_or(valid.interval)
        .max(Duration::from_secs(1));
    Ok(Action::requeue(if waiting {
        until_scan.min(REQUEUE_WAITING)
    } else {
        until_scan
    }))
}

/// What the scan step leaves for the rest of the reconcile.
struct Scanned {
    health: Health,
    last_scan: Option<Time>,
    next_scan: Option<Time>,
    /// The versions found; None when no scan ran or it failed.
    found: Option<Vec<scan::Found>>,
}

/// Scans the source: on success the next scan is an interval away; on failure the health
/// says why, and the next try is a backoff away (transient) or an interval (permanent).
async fn scan_step(
    p: &CompressionPolicy,
    ctx: &Context,
    valid: &Validated,
    now: &Time,
    before: Scanned,
) -> Scanned {
    let started = std::time::Instant::now();
    let result = scan_source(p, ctx, valid).await;
    ctx.state.metrics.policy_scanned(
        &p.namespace().unwrap_or_default(),
        &p.name_any(),
        started.elapsed(),
        result.as_ref().ok().map(|s| s.listed),
    );
    match result {
        Ok(s) => {
            ctx.failures
                .lock()
                .expect("failure map lock")
                .remove(&ObjectRef::from_obj(p));
            let stopped = if s.complete {
                String::new()
            } else {
                format!(
                    " (listing stopped at {}: narrow spec.source.uri)",
                    scan::MAX_OBJECTS
                )
            };
            let listed = match valid.source {
                Source::Store(_) => "objects",
                Source::Oci(_) => "tags",
            };
            Scanned {
                health: Health::Ok(format!(
                    "{} {listed} listed, {} versions matched{stopped}",
                    s.listed,
                    s.found.len(),
                )),
                last_scan: Some(now.clone()),
                next_scan: Some(time_after(now, valid.interval)),
                found: Some(s.found),
            }
        }
        Err(e) => {
            let failures = bump(ctx, p);
            let delay = if e.is_transient() {
                backoff(failures)
            } else {
                valid.interval
            };
            let message = crate::uri::redact_in(&crate::error::error_chain(&e));
            tracing::warn!(namespace = p.namespace().unwrap_or_default(), name = %p.name_any(), failures, retry_in_s = delay.as_secs(), error = %message, "policy scan failed");
            let health = if e.is_transient() {
                Health::Unavailable(message)
            } else {
                Health::Invalid {
                    reason: policy_reason::SOURCE_ERROR,
                    message,
                }
            };
            Scanned {
                health,
                next_scan: Some(time_after(now, delay)),
                found: None,
                ..before
            }
        }
    }
}

/// The health an earlier status recorded (kept between scans).
fn health_of(s: &CompressionPolicyStatus) -> Health {
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::READY);
    match ready {
        Some(c) if c.reason == policy_reason::SOURCE_UNAVAILABLE => {
            Health::Unavailable(c.message.clone())
        }
        Some(c) if c.reason == policy_reason::SOURCE_ERROR => Health::Invalid {
            reason: policy_reason::SOURCE_ERROR,
            message: c.message.clone(),
        },
        Some(c) if c.reason == policy_reason::SCANNED => Health::Ok(c.message.clone()),
        _ => Health::Ok(String::new()),
    }
}

async fn scan_source(
    p: &CompressionPolicy,
    ctx: &Context,
    valid: &Validated,
) -> Result<scan::Scan, ScanError> {
    // the controller lists with its own credentials (it reads no Secrets); endpoint, region
    // and addressing come from the template's storage settings
    let storage_spec: Option<crate::api::StorageSpec> = p
        .spec
        .job_template
        .spec
        .0
        .get("storage")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let latest = p.spec.source.latest() as usize;
    let pattern = match &valid.source {
        Source::Store(pattern) => pattern,
        // a registry: the Docker config of the controller's environment
        Source::Oci(tags) => return scan::scan_oci(tags, latest).await,
    };
    let storage = crate::storage::Storage::new(storage_spec.as_ref())
        .with_retries(1, Duration::from_secs(20));
    scan::scan(&storage, pattern, latest, &ctx.hashes).await
}

/// The CompressionJobs this policy controls.
async fn owned_jobs(
    cjs: &Api<CompressionJob>,
    p: &CompressionPolicy,
) -> Result<Vec<CompressionJob>> {
    let lp = ListParams::default().labels(&format!(
        "{POLICY_LABEL}={}",
        crate::controller::build::label_value(&p.name_any())
    ));
    let uid = p.uid();
    let list = cjs.list(&lp).await.map_err(|source| Error::PolicyJobs {
        name: p.name_any(),
        source,
    })?;
    Ok(list
        .items
        .into_iter()
        .filter(|cj| {
            cj.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect())
}

/// Creates the jobs of waiting versions, as many as `concurrency` allows; a job that already
/// exists (a restart between create and status write) counts as created.
async fn create_jobs(
    p: &CompressionPolicy,
    ctx: &Context,
    valid: &Validated,
    cjs: &Api<CompressionJob>,
    versions: &mut [SeenVersion],
) -> Result<()> {
    let next: Vec<String> =
        status::to_create(versions, p.spec.concurrency(), valid.source.ordering())
            .into_iter()
            .map(|v| v.job.clone())
            .collect();
    for name in next {
        let v = versions
            .iter_mut()
            .find(|v| v.job == name)
            .expect("to_create returns tracked versions");
        let cj = match job_for(p, valid, v) {
            Ok(cj) => cj,
            Err(invalid) => {
                // the template validated with sample values; this version's values broke it
                v.phase = Some(Phase::Failed);
                let note = format!(
                    "version {} of `{}` makes an invalid CompressionJob: {}",
                    v.version,
                    v.key,
                    describe(&invalid)
                );
                let what = (EventType::Warning, policy_reason::INVALID_SPEC, "CreateJob");
                publish(ctx, p, what, None, note).await;
                continue;
            }
        };
        match cjs.create(&PostParams::default(), &cj).await {
            Ok(_) => {
                tracing::info!(policy = %p.name_any(), job = %name, version = %v.version, "created CompressionJob")
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(source) => {
                return Err(Error::PolicyJobs {
                    name: p.name_any(),
                    source,
                });
            }
        }
        v.phase = Some(Phase::Pending);
    }
    Ok(())
}

/// The CompressionJob for one version: the rendered template, the model pinned to the sha256
/// the scan found (when it hashed it), owned by the policy.
fn job_for(
    p: &CompressionPolicy,
    valid: &Validated,
    v: &SeenVersion,
) -> Result<CompressionJob, InvalidSpec> {
    let (mut vars, registry) = match &valid.source {
        Source::Store(pattern) => {
            let rel = v
                .uri
                .strip_prefix(&pattern.prefix.uri)
                .unwrap_or(&v.uri)
                .trim_start_matches('/');
            let mut vars = pattern.matches(rel).map(|m| m.vars).unwrap_or_default();
            vars.insert("path".into(), rel.to_string());
            (vars, None)
        }
        Source::Oci(tags) => {
            let tag = v.tag.clone().unwrap_or_default();
            let mut vars = tags.matches(&tag).map(|m| m.vars).unwrap_or_default();
            vars.insert("tag".into(), tag.clone());
            vars.insert("path".into(), tag);
            (vars, p.spec.source.registry.as_ref())
        }
    };
    vars.insert("key".into(), v.key.clone());
    vars.insert("version".into(), v.version.clone());
    vars.insert("id".into(), scan::short_id(&v.id));
    let model = Model {
        uri: &v.uri,
        sha256: v.sha256.as_deref(),
        registry,
    };
    let spec = template::job_spec(p, &model, &vars)?;
    let mut cj = CompressionJob::new(&v.job, spec);
    let meta = p.spec.job_template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(
        POLICY_LABEL.into(),
        crate::controller::build::label_value(&p.name_any()),
    );
    let mut annotations = meta.annotations;
    annotations.insert(SOURCE_URI.into(), crate::uri::redact(&v.uri));
    annotations.insert(SOURCE_ID.into(), v.id.clone());
    annotations.insert(SOURCE_KEY.into(), v.key.clone());
    annotations.insert(SOURCE_VERSION.into(), v.version.clone());
    if let Some(t) = &v.tag {
        annotations.insert(SOURCE_TAG.into(), t.clone());
    }
    cj.metadata.namespace = p.namespace();
    cj.metadata.labels = Some(labels);
    cj.metadata.annotations = Some(annotations);
    cj.metadata.owner_references = p.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(cj)
}

/// The message of a conflict with an older policy in the namespace that may promote to the
/// same place; None when there is none.
pub fn conflict(p: &CompressionPolicy, policies: &Store<CompressionPolicy>) -> Option<String> {
    let mine = promote_to(p)?;
    let older = |o: &CompressionPolicy| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.name_any(),
        ) < (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.name_any(),
        )
    };
    policies
        .state()
        .iter()
        .filter(|o| o.namespace() == p.namespace() && o.name_any() != p.name_any())
        .filter(|o| o.metadata.deletion_timestamp.is_none() && older(o))
        .find_map(|o| {
            let theirs = promote_to(o)?;
            template::may_overlap(&mine, &theirs).then(|| {
                format!(
                    "spec.jobTemplate.spec.output.promoteTo `{mine}` may promote to the same place \
                     as CompressionPolicy {} (`{theirs}`), which was there first: give each policy \
                     its own promoteTo",
                    o.name_any()
                )
            })
        })
}

fn promote_to(p: &CompressionPolicy) -> Option<String> {
    p.spec
        .job_template
        .spec
        .0
        .get("output")?
        .get("promoteTo")?
        .as_str()
        .map(String::from)
}

/// Writes the status when it changed (server-side apply, the controller's field manager).
async fn write(
    _ctx: &Context,
    api: &Api<CompressionPolicy>,
    p: &CompressionPolicy,
    old: Option<&CompressionPolicyStatus>,
    status: CompressionPolicyStatus,
) -> Result<()> {
    if old == Some(&status) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": CompressionPolicy::api_version(&()),
        "kind": CompressionPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(
        &p.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(|source| Error::UpdatePolicyStatus {
        name: p.name_any(),
        source,
    })
}

/// Events are best effort: a failure to record one is logged, never retried.
/// With `job`, the Event's related object is that CompressionJob: one Event per version
/// (the recorder folds Events with the same regarding, related and reason into a series).
async fn publish(
    ctx: &Context,
    p: &CompressionPolicy,
    (type_, reason, action): (EventType, &str, &str),
    job: Option<&str>,
    note: String,
) {
    let secondary = job.map(|name| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(CompressionJob::api_version(&()).into_owned()),
        kind: Some(CompressionJob::kind(&()).into_owned()),
        name: Some(name.to_string()),
        namespace: p.namespace(),
        ..Default::default()
    });
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::uri::redact_in(&note)),
        action: action.into(),
        secondary,
    };
    if let Err(e) = ctx.recorder.publish(&event, &p.object_ref(&())).await {
        tracing::warn!(name = %p.name_any(), reason, error = %e, "could not record Event");
    }
}
