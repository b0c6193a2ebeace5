//! `kompress controller`: the operator. It watches CompressionJobs and runs each generation
//! as a batch/v1 Job whose pod runs `kompress worker`, then writes status, Events and metrics
//! from the worker's termination message.
//!
//! One reconcile is a named pipeline, one module a step; only apply, observe and the status
//! write touch the API:
//! [`validate`] -> [`build`] -> [`apply`] -> [`observe`] -> [`status`] (update_status).
//! Around it: [`reconcile`] (wiring, error policy with per-object backoff), [`metrics`],
//! [`policy`] (the CompressionPolicy controller: a source scanned each interval, one
//! CompressionJob per new model version),
//! [`admin`] (`/metrics`, `/healthz`, `/readyz`), [`leader`] (Lease election) and [`config`]
//! (what worker Jobs look like where a spec leaves it open, the flags that set it).
//! This file is wiring only: the watches and the two controllers, started under leader
//! election beside the admin endpoint.
//!
//! # RBAC
//! Exactly what the controller's ServiceAccount needs (a ClusterRole, or a Role in the one
//! namespace of `--namespace` plus the Lease namespace); nothing else, and no Secrets (the
//! worker pod reads `spec.storage.secretRef` through `envFrom`, resolved by the kubelet):
//!
//! | apiGroup | resource | verbs |
//! |---|---|---|
//! | kompress.dev | compressionjobs | get, list, watch, patch, create, delete |
//! | kompress.dev | compressionjobs/status | get, patch, update |
//! | kompress.dev | compressionpolicies | get, list, watch, patch |
//! | kompress.dev | compressionpolicies/status | get, patch, update |
//! | batch | jobs | get, list, watch, create, patch, delete |
//! | "" (core) | pods | get, list, watch |
//! | events.k8s.io | events | create, patch |
//! | coordination.k8s.io | leases | get, create, update, patch |
//! | kueue.x-k8s.io | workloads | get, list (why a queued Job waits; optional) |
//!
//! The worker pod itself gets no token (`automountServiceAccountToken: false`).
//!
//! # Metrics (`/metrics` on `--metrics-addr`, prefix `kompress_`)
//! `reconciliations_total{result}` and `reconcile_duration_seconds{result}` (result: `ok` or
//! an error category), `jobs{phase}`, per CompressionJob `{namespace,name}`:
//! `job_original_bytes`, `job_compressed_bytes`, `job_compression_ratio`,
//! `job_run_duration_seconds`, and with `model="baseline"|"candidate"`: `job_accuracy_ratio`,
//! `job_latency_p50_seconds`; `promotions_total{namespace}`, `rejections_total{namespace}`,
//! `leader`; per CompressionPolicy `{namespace,name}`: `policy_versions` and, with `phase`,
//! `policy_versions_by_phase`. `/healthz` is liveness; `/readyz` turns 200 once leadership is known (standby)
//! or the leader's CompressionJob cache has synced.

pub mod admin;
pub mod apply;
pub mod build;
pub mod config;
pub mod error;
pub mod events;
pub mod kueue;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod reconcile;
pub mod status;
pub mod validate;

pub use build::{build_job, job_name};
pub use config::{
    ControllerConfig, DEFAULT_GPU_TOLERATION, DEFAULT_MAX_CONCURRENT_RECONCILES,
    DEFAULT_WORKER_CPU, DEFAULT_WORKER_GPU_IMAGE, DEFAULT_WORKER_IMAGE, DEFAULT_WORKER_MEMORY,
    DEFAULT_WORKER_SCRATCH, IMAGE_REPOSITORY, TolerationList, parse_key_value, parse_toleration,
    parse_tolerations_json,
};
pub use error::{Error, Result};

use crate::api::CompressionJob;
use events::Recorder;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::events::Reporter;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, reflector::Store, watcher};
use kube::{Api, Client, ResourceExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// What the admin endpoint reads: metrics, readiness, and the controller's cache once this
/// process leads.
#[derive(Default)]
pub struct State {
    pub metrics: metrics::Metrics,
    ready: AtomicBool,
    store: OnceLock<Store<CompressionJob>>,
    /// One scrape at a time rebuilds the job gauges (reset, then fill).
    scrape: std::sync::Mutex<()>,
}

impl State {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn render_metrics(&self) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = self.store.get() {
            self.metrics.refresh_jobs(&store.state());
        }
        self.metrics.encode()
    }
}

/// Everything `kompress controller` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: ControllerConfig,
    pub metrics_addr: SocketAddr,
    pub leader_elect: bool,
    /// Namespace of the Lease; the client's default namespace (in a pod: its own) when None.
    pub lease_namespace: Option<String>,
    pub identity: String,
}

/// Runs the admin endpoint and, once leader (or at once without election), the controller,
/// until a signal stops it or leadership is lost.
pub async fn run(opts: Options) -> Result<()> {
    config::check_kubeconfig()?;
    let client = Client::try_default().await.map_err(Error::Client)?;
    let state = Arc::new(State::default());
    let admin = admin::serve(opts.metrics_addr, state.clone());
    let work = async {
        if !opts.leader_elect {
            state.metrics.set_leader(true);
            return run_controller(client, opts.config, state.clone()).await;
        }
        let namespace = opts
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let mut lease = leader::LeaseLock::new(client.clone(), &namespace, opts.identity.clone());
        // standby replicas are ready: they serve metrics and wait for the Lease
        lease.acquire(|| state.set_ready()).await;
        tracing::info!(identity = %lease.identity(), lease = %format!("{namespace}/{}", leader::LEASE_NAME), "acquired leadership");
        state.metrics.set_leader(true);
        let result = tokio::select! {
            r = run_controller(client, opts.config, state.clone()) => r,
            lost = lease.hold() => Err(lost),
        };
        if result.is_ok() {
            lease.release().await;
        }
        result
    };
    tokio::select! {
        r = admin => r,
        r = work => r,
    }
}

/// How long the controller waits after a trigger for more before it reconciles an object.
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_secs(1);

/// The kube-runtime settings both controllers share: a trailing-edge debounce (an owned
/// object's quick run of status updates is one reconcile, not four) and the concurrency bound.
fn controller_config(config: &ControllerConfig) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .debounce(DEBOUNCE)
        .concurrency(config.max_concurrent_reconciles)
}

/// The kube-runtime Controller on CompressionJobs owning batch/v1 Jobs, and beside it the one
/// on CompressionPolicies owning CompressionJobs ([`policy`]); returns after a shutdown
/// signal (SIGTERM, ctrl-c) once in-flight reconciles have finished.
pub async fn run_controller(
    client: Client,
    config: ControllerConfig,
    state: Arc<State>,
) -> Result<()> {
    let (cjs, jobs): (Api<CompressionJob>, Api<Job>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // fail fast with a clear error when the CRD is missing or RBAC forbids the watch
    cjs.list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(Error::ListCompressionJobs)?;
    // Only spec changes (generation) trigger a reconcile from the CompressionJob watch: the
    // controller's own status patches would otherwise re-trigger it several times per run
    // (measured: 7.6 reconciles per job at 1000 jobs). Progress comes from the owned Jobs.
    let (reader, writer) = reflector::store();
    let trigger = watcher(cjs, watcher::Config::default().any_semantic())
        .default_backoff()
        // The cache keeps what reconciles and metrics read; managedFields is neither, and
        // is often the largest part of the object.
        .modify(|cj| cj.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // From the owned Jobs, only a change of progress (queued, admitted, running, finished)
    // triggers: a Job's creation and its pod's every status write do not (the reconcile that
    // created the Job wrote Pending already). Measured at 2000 jobs: 4.0 reconciles per job
    // before.
    let job_progress = watcher(
        jobs,
        watcher::Config::default()
            .labels(build::labels::MANAGED_SELECTOR)
            .any_semantic(),
    )
    .default_backoff()
    .touched_objects()
    .try_filter(|job| {
        // (A queued Job's admission, Queued -> Pending, is news: it passes.)
        let queued = job.labels().contains_key(build::labels::KUEUE_QUEUE);
        std::future::ready(queued || observe::progress(job) != observe::Progress::Pending)
    })
    .predicate_filter(
        |job: &Job| Some(observe::progress_code(job)),
        Default::default(),
    );
    let controller = Controller::for_stream(trigger, reader)
        .owns_stream(job_progress)
        // Trailing-edge debounce: a worker Job's quick run of status updates (pod created,
        // ready, succeeded, Complete) is one reconcile, not four.
        .with_config(controller_config(&config))
        .shutdown_on_signal();
    let store = controller.store();
    let _ = state.store.set(store.clone());
    let ready = {
        let state = state.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                tracing::info!("CompressionJob cache synced; ready");
                state.set_ready();
            }
        }
    };
    let reporter = Reporter {
        controller: "kompress".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (client_for_policies, policy_config, state_for_policies) =
        (client.clone(), config.clone(), state.clone());
    let ctx = Arc::new(reconcile::Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        config,
        state,
        failures: Default::default(),
    });
    let run = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {} // logged by the error policy
                Err(e) => tracing::warn!(error = %crate::error::error_chain(&e), "controller"),
            }
        });
    let policies = policy::run(client_for_policies, &policy_config, state_for_policies);
    let ((), (), policies) = futures::join!(run, ready, policies);
    policies
}
