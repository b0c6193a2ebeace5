//! apply: the current generation's Job exists (created with field manager "kompress",
//! controller owner reference), and Jobs of superseded generations still running are stopped.

use super::build::{FIELD_MANAGER, labels};
use super::error::{Error, Result};
use crate::api::CompressionJob;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// Returns the Job and whether this call created it. An existing Job is left alone: a Job's
/// pod template is immutable, and a new spec means a new generation, hence a new Job name.
///
/// A Job this CompressionJob's status already names is read (one GET); otherwise it is
/// created (one POST, field manager "kompress"), and only a conflict (a Job created before the
/// status said so: a crash between the two, or another replica) reads the existing one. A
/// plain create costs the API server much less than a server-side apply, and the first
/// reconcile of every job makes one call here instead of two.
pub async fn apply(client: &Client, cj: &CompressionJob, job: Job) -> Result<(Job, bool)> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let name = job.name_any();
    let get = || async {
        jobs.get_opt(&name).await.map_err(|source| Error::GetJob {
            name: name.clone(),
            source,
        })
    };
    let recorded = cj
        .status
        .as_ref()
        .is_some_and(|s| s.job_name.as_deref() == Some(name.as_str()));
    if recorded && let Some(existing) = get().await? {
        return Ok((existing, false));
    }
    // Only a later generation can have a predecessor to stop: the first one skips the list
    // (a label-selected list scans every Job of the namespace on the API server, which at
    // 10,000 jobs made each first reconcile cost as much as all the others together).
    if cj.metadata.generation.is_some_and(|g| g > 1) {
        stop_superseded(&jobs, cj, &name).await?;
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match jobs.create(&params, &job).await {
        Ok(created) => Ok((created, true)),
        Err(kube::Error::Api(s)) if s.code == 409 => match get().await? {
            Some(existing) => Ok((existing, false)),
            // created and deleted in between (its TTL, a person): the next reconcile decides
            None => Err(Error::GetJob {
                name: name.clone(),
                source: kube::Error::Api(s),
            }),
        },
        Err(source) => Err(Error::ApplyJob {
            name: name.clone(),
            source,
        }),
    }
}

/// Deletes this CompressionJob's unfinished Jobs of earlier generations (their pods with
/// them): their results would no longer describe the spec. Finished ones stay for their TTL.
async fn stop_superseded(jobs: &Api<Job>, cj: &CompressionJob, current: &str) -> Result<()> {
    let err = |source| Error::CleanupJobs {
        name: cj.name_any(),
        source,
    };
    let lp = ListParams::default().labels(&format!(
        "{}={},{}",
        labels::JOB,
        super::build::label_value(&cj.name_any()),
        labels::MANAGED_SELECTOR
    ));
    let uid = cj.uid();
    for old in jobs.list(&lp).await.map_err(err)? {
        let ours = old
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        let finished = matches!(
            super::observe::progress(&old),
            super::observe::Progress::Complete | super::observe::Progress::Failed { .. }
        );
        if ours && !finished && old.name_any() != current {
            tracing::info!(job = %old.name_any(), "stopping the worker Job of a superseded generation");
            match jobs
                .delete(&old.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(())
}
