//! apply: the current generation's Job exists (server-side apply, field manager "kompress",
//! controller owner reference), and Jobs of superseded generations still running are stopped.

use super::build::{FIELD_MANAGER, labels};
use super::error::{Error, Result};
use crate::api::CompressionJob;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// Returns the Job and whether this call created it. An existing Job is left alone: a Job's
/// pod template is immutable, and a new spec means a new generation, hence a new Job name.
pub async fn apply(client: &Client, cj: &CompressionJob, job: Job) -> Result<(Job, bool)> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let name = job.name_any();
    if let Some(existing) = jobs.get_opt(&name).await.map_err(|source| Error::GetJob {
        name: name.clone(),
        source,
    })? {
        return Ok((existing, false));
    }
    // Only a later generation can have a predecessor to stop: the first one skips the list
    // (a label-selected list scans every Job of the namespace on the API server, which at
    // 10,000 jobs made each first reconcile cost as much as all the others together).
    if cj.metadata.generation.is_some_and(|g| g > 1) {
        stop_superseded(&jobs, cj, &name).await?;
    }
    let created = jobs
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job),
        )
        .await
        .map_err(|source| Error::ApplyJob {
            name: name.clone(),
            source,
        })?;
    Ok((created, true))
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
