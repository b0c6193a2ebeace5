//! The CompressionPolicy controller: beside the CompressionJob one, it scans each policy's
//! source every interval and creates one CompressionJob per new model version, owned by the
//! policy (so deleting the policy garbage-collects its jobs; promoted models stay).
//!
//! One reconcile is a named pipeline ([`reconcile`]): [`validate`] (pure; the template is
//! rendered and checked as a CompressionJob) -> conflicts -> [`scan`] (storage, when due) ->
//! [`status`] (merge, what to create and delete; pure) -> create / delete -> status write.
//! [`source`] and [`template`] are the pure matching and rendering.
//!
//! A version is identified by the store's entity tag or version id with its size when the
//! store reports one (S3, GCS, Azure), else by the sha256 of its content (local files, which
//! the controller hashes once per change). The CompressionJob's name is derived from the
//! policy's name and that identity ([`scan::job_name`]): a rescan, or a controller restarted
//! between creating a job and writing status, finds the same name and creates nothing twice.

pub mod reconcile;
pub mod scan;
pub mod source;
pub mod status;
pub mod template;
pub mod validate;

use super::State;
use super::error::{Error, Result};
use super::events::Recorder;
use crate::api::{CompressionJob, CompressionPolicy};
use futures::StreamExt;
use kube::runtime::events::Reporter;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};
use std::sync::Arc;

/// The kube-runtime Controller on CompressionPolicies owning CompressionJobs; returns after a
/// shutdown signal once in-flight reconciles have finished.
pub async fn run(
    client: Client,
    config: &super::ControllerConfig,
    state: Arc<State>,
) -> Result<()> {
    let (policies, cjs): (Api<CompressionPolicy>, Api<CompressionJob>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // A cluster without the CompressionPolicy CRD runs CompressionJobs only; any other
    // failure (RBAC) stops the controller with a clear error.
    match policies
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            tracing::warn!(
                "the CompressionPolicy CRD is not installed (crds/compressionpolicy.yaml): \
                 policies are off until it is and the controller restarts"
            );
            return Ok(());
        }
        Err(e) => return Err(Error::ListCompressionPolicies(e)),
    }
    // Spec changes (generation) trigger a reconcile, not the controller's own status writes;
    // progress comes from the owned CompressionJobs and the scan timer.
    let (reader, writer) = reflector::store();
    let trigger = watcher(policies, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|p| p.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let controller = Controller::for_stream(trigger, reader)
        .owns(
            cjs,
            watcher::Config::default()
                .labels(reconcile::POLICY_LABEL)
                .any_semantic(),
        )
        // a job's burst of status updates is one reconcile, as for CompressionJobs
        .with_config(super::controller_config(config))
        .shutdown_on_signal();
    let reporter = Reporter {
        controller: "kompress".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(reconcile::Context {
        recorder: Recorder::new(client.clone(), reporter),
        policies: controller.store(),
        client,
        state,
        failures: Default::default(),
        hashes: Default::default(),
    });
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled policy"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), "policy controller")
                }
            }
        })
        .await;
    Ok(())
}
