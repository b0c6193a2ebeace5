//! `kompress controller` when it goes away mid-flight, against the real test control plane
//! (hack/testenv): a restarted controller finishes a running job without running it again,
//! and of two replicas of the real binary only the Lease holder acts until it is killed, then
//! the other takes over. Each test has its own namespace.
//!
//! Run: `KUBECONFIG=$(KOMPRESS_TESTENV_AGENT_PATH=$PWD/target/debug hack/testenv/up | tail -n1) cargo test --test controller_ha -- --ignored`

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kompress::api::{CompressionJob, CompressionJobStatus, Phase, reason};
use kompress::controller::leader::LEASE_NAME;
use kompress::controller::{ControllerConfig, State, job_name, run_controller};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::*;
use support::*;

/// A worker run of the digits example takes seconds; the margin is for a busy machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// A killed leader cannot release its Lease: the other replica waits out the Lease duration
/// (15s, counted from when it last saw the record change), then starts, syncs and runs the job.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(90);
/// Timed latency runs that keep the worker busy for several seconds (about 10s on a dev
/// machine), so the controller can be stopped while the worker pod runs.
const SLOW_ITERATIONS: u32 = 200_000;

/// A fresh namespace and a scratch directory for the workers' outputs; no controller: each
/// test starts its own.
struct Env {
    client: Client,
    ns: String,
    cjs: Api<CompressionJob>,
    jobs: Api<Job>,
    pods: Api<Pod>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new(test: &str) -> Self {
        let client = client().await;
        install_crd(&client).await;
        let ns = create_namespace(&client, &format!("kt-{test}")).await;
        // world-writable like /tmp: the worker pod runs as its own non-root user
        let dir = tempfile::tempdir().unwrap();
        Self {
            cjs: Api::namespaced(client.clone(), &ns),
            jobs: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            dir,
        }
    }

    /// The bundled example (examples/digits-int8.yaml) as `name` in the test namespace, with
    /// absolute model and dataset paths, outputs under `out/<name>` and, when given, that many
    /// timed latency iterations.
    fn example(&self, name: &str, iterations: Option<u32>) -> CompressionJob {
        let text = std::fs::read_to_string(repo().join("examples/digits-int8.yaml"))
            .expect("read examples/digits-int8.yaml");
        let mut cj: CompressionJob = serde_saphyr::from_str(&text).expect("the example parses");
        cj.metadata.name = Some(name.into());
        cj.metadata.namespace = Some(self.ns.clone());
        let mut spec = serde_json::to_value(&cj.spec).unwrap();
        let abs = |p: &serde_json::Value| {
            serde_json::Value::String(repo().join(p.as_str().unwrap()).display().to_string())
        };
        spec["model"]["uri"] = abs(&spec["model"]["uri"]);
        spec["dataset"]["uri"] = abs(&spec["dataset"]["uri"]);
        let out = self.out(name);
        spec["output"]["uri"] = out.join("candidates").display().to_string().into();
        spec["output"]["promoteTo"] = out.join("production").display().to_string().into();
        if let Some(n) = iterations {
            spec["evaluation"] = serde_json::json!({"latency": {"iterations": n}});
        }
        cj.spec = serde_json::from_value(spec).expect("the edited example is a valid spec");
        cj
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn create(&self, cj: &CompressionJob) -> CompressionJob {
        self.cjs
            .create(&PostParams::default(), cj)
            .await
            .expect("create the CompressionJob")
    }

    /// Waits for `cond` on the CompressionJob; on timeout fails with its status and its Jobs.
    async fn wait(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Condition<CompressionJob>,
    ) -> CompressionJob {
        await_compression_job(&self.cjs, &self.jobs, name, what, timeout, cond).await
    }

    async fn wait_phase(&self, name: &str, phase: Phase, timeout: Duration) -> CompressionJob {
        self.wait(
            name,
            &format!("phase {phase:?}"),
            timeout,
            move |o: Option<&CompressionJob>| {
                o.and_then(|c| c.status.as_ref())
                    .is_some_and(|s| s.phase == Some(phase) && s.observed_generation == Some(1))
            },
        )
        .await
    }

    /// The Jobs that belong to the CompressionJob `name` (by its label).
    async fn jobs_of(&self, name: &str) -> Vec<Job> {
        self.jobs
            .list(&ListParams::default().labels(&format!("kompress.dev/job={name}")))
            .await
            .expect("list Jobs")
            .items
    }

    /// Waits until an Event with `reason` regards the CompressionJob `name` (the controller
    /// records it right after the status write that the test awaited), then returns all
    /// Events regarding `name`.
    async fn events_once(&self, name: &str, reason: &str) -> Vec<Event> {
        use futures::TryStreamExt;
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let stream = watcher(events.clone(), watcher::Config::default()).applied_objects();
        let found = stream.try_filter(|e| {
            let hit = e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason);
            std::future::ready(hit)
        });
        futures::pin_mut!(found);
        match tokio::time::timeout(API_TIMEOUT, found.try_next()).await {
            Ok(Ok(Some(_))) => {}
            other => panic!("no {reason} Event for {name} ({other:?})"),
        }
        events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// Deletes the namespace. Only passing tests call it: a failing one leaves its namespace
    /// (CompressionJobs, Jobs, Events, Lease) for the post-mortem.
    async fn cleanup(self) {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::background())
            .await
            .ok();
    }
}

/// The run directories the worker wrote under `out/candidates/runs` (one per worker run).
fn runs(out: &Path) -> Vec<String> {
    std::fs::read_dir(out.join("candidates/runs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn reporting_instances(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.reporting_instance.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn controller_restarted_mid_job_completes_the_job_once() {
    let env = Env::new("ha-restart").await;
    let config = ControllerConfig {
        namespace: Some(env.ns.clone()),
        worker_image: "kompress:test".into(),
        ..ControllerConfig::default()
    };
    let first = tokio::spawn(run_controller(
        env.client.clone(),
        config.clone(),
        Arc::new(State::default()),
    ));
    let cj = env
        .create(&env.example("slow", Some(SLOW_ITERATIONS)))
        .await;
    let name = job_name(&cj);

    // the worker pod runs (the Job reports it ready and the controller says so)
    let running = env.wait_phase("slow", Phase::Running, RUN_TIMEOUT).await;
    assert_eq!(
        running.status.as_ref().unwrap().job_name.as_deref(),
        Some(name.as_str())
    );
    first.abort();
    let stopped = first.await;
    assert!(
        stopped.as_ref().is_err_and(|e| e.is_cancelled()),
        "the first controller was still running until stopped: {stopped:?}"
    );
    assert_stopped_mid_job(&env, &name).await;

    // a new instance (nothing shared with the first: own watches, cache, metrics) takes over
    let second = tokio::spawn(run_controller(
        env.client.clone(),
        config,
        Arc::new(State::default()),
    ));
    let cj = env.wait_phase("slow", Phase::Succeeded, RUN_TIMEOUT).await;
    let status = cj.status.as_ref().unwrap();
    assert_one_job_and_one_pod(&env, &name, status).await;
    assert_promoted_once(&env, status);

    // the new instance recorded the outcome; JobCreated came from the first one, once
    let events = env.events_once("slow", reason::PROMOTED).await;
    let created = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason::JOB_CREATED))
        .count();
    assert_eq!(
        created,
        1,
        "one JobCreated Event: {:?}",
        reporting_instances(&events)
    );

    second.abort();
    let _ = second.await;
    env.cleanup().await;
}

/// Right after the first controller stopped: one worker pod, its Job not finished, the
/// CompressionJob still Running.
async fn assert_stopped_mid_job(env: &Env, name: &str) {
    let pods = env.pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pods.len(), 1, "one worker pod so far");
    let job = env.jobs.get(name).await.unwrap();
    assert!(
        job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) == 0,
        "the worker finished before the controller was stopped, so this tests no restart: raise SLOW_ITERATIONS ({:?})",
        job.status
    );
    let phase = env.cjs.get("slow").await.unwrap().status.unwrap().phase;
    assert_eq!(
        phase,
        Some(Phase::Running),
        "the stopped controller wrote nothing after it was stopped"
    );
}

/// Exactly one Job (`name`, the one in status), succeeded without retry, and one worker pod.
async fn assert_one_job_and_one_pod(env: &Env, name: &str, status: &CompressionJobStatus) {
    let name = name.to_string();
    let jobs = env.jobs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        std::slice::from_ref(&name),
        "exactly one Job for the CompressionJob"
    );
    assert_eq!(status.job_name.as_deref(), Some(name.as_str()));
    let js = jobs[0].status.as_ref().unwrap();
    assert_eq!(
        (js.succeeded, js.failed.unwrap_or(0)),
        (Some(1), 0),
        "one pod, succeeded, no retry"
    );
    let pods = env.pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        [pods[0].name_any()],
        "exactly one worker pod ran"
    );
    assert_eq!(
        pods[0].labels().get("job-name").map(String::as_str),
        Some(name.as_str())
    );
}

/// One worker run wrote a candidate, and one model and manifest were promoted, where the
/// status says.
fn assert_promoted_once(env: &Env, status: &CompressionJobStatus) {
    let out = env.out("slow");
    assert_eq!(
        runs(&out).len(),
        1,
        "one worker run wrote a candidate: {:?}",
        runs(&out)
    );
    let production = files_under(&out.join("production"));
    assert_eq!(
        production
            .iter()
            .filter(|f| f.ends_with("promoted.json"))
            .count(),
        1,
        "the promoted manifest exists once: {production:?}"
    );
    assert_eq!(
        production
            .iter()
            .filter(|f| f.ends_with("model.onnx"))
            .count(),
        1,
        "one promoted model: {production:?}"
    );
    let promoted = status
        .result
        .as_ref()
        .and_then(|r| r.promoted.as_ref())
        .expect("the status names the promoted model");
    assert!(
        promoted
            .uri
            .starts_with(&out.join("production").display().to_string()),
        "{promoted:?}"
    );
}

/// Controller processes of the real binary; killed (SIGKILL) when dropped, so that a failing
/// test leaves none behind. On a panic their logs are printed.
struct Replicas {
    children: Vec<(String, Child, PathBuf)>,
    _logs: tempfile::TempDir,
}

impl Replicas {
    /// SIGKILL: no shutdown path runs, the Lease stays held until it expires.
    fn kill(&mut self, who: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, ..)| n == who)
            .unwrap_or_else(|| panic!("no replica {who}"));
        let (_, mut child, _) = self.children.remove(i);
        child.kill().expect("SIGKILL the replica");
        child.wait().expect("reap the replica");
    }

    /// Fails with its log when a replica has exited.
    fn assert_alive(&mut self) {
        for (who, child, log) in &mut self.children {
            if let Ok(Some(code)) = child.try_wait() {
                panic!(
                    "controller {who} exited ({code}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for (who, child, log) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "----- log of controller {who} -----\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().unwrap()
}

fn start_replicas(ns: &str, names: &[&str]) -> (Replicas, Vec<SocketAddr>) {
    let logs = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for who in names {
        let addr = free_addr();
        let log = logs.path().join(format!("{who}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kompress"))
            .args(["controller", "--leader-elect=true"])
            .args(["--leader-election-namespace", ns, "--namespace", ns])
            .args(["--metrics-addr", &addr.to_string()])
            .args(["--worker-image", "kompress:test"])
            .env("KUBECONFIG", std::env::var_os("KUBECONFIG").unwrap())
            .env("POD_NAME", who)
            .env("RUST_LOG", "info,kompress=debug,ort=warn")
            .env_remove("POD_NAMESPACE")
            .env_remove("KOMPRESS_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start `kompress controller`");
        children.push((who.to_string(), child, log));
        addrs.push(addr);
    }
    (
        Replicas {
            children,
            _logs: logs,
        },
        addrs,
    )
}

/// One GET on the admin endpoint: status code and body; None while nothing listens.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls the replicas' admin endpoints (an HTTP server cannot be watched) until `ok` holds
/// for what they answer, failing after `timeout` with the last answers.
async fn until_endpoints(
    replicas: &mut Replicas,
    addrs: &[SocketAddr],
    path: &str,
    timeout: Duration,
    ok: impl Fn(&[Option<(u16, String)>]) -> bool,
) -> Vec<Option<(u16, String)>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        replicas.assert_alive();
        let mut answers = Vec::new();
        for a in addrs {
            answers.push(get(*a, path).await);
        }
        if ok(&answers) {
            return answers;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{path} of the replicas never as expected within {timeout:?}: {answers:?}");
        }
    }
}

async fn wait_holder(leases: &Api<Lease>, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let found = tokio::time::timeout(
        TAKEOVER_TIMEOUT,
        await_condition(leases.clone(), LEASE_NAME, move |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(&cond)
        }),
    )
    .await;
    match found {
        Ok(Ok(Some(lease))) => lease.spec.unwrap().holder_identity.unwrap(),
        other => panic!("the Lease {LEASE_NAME} never got {what}: {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the test control plane: run via `make test` (hack/testenv/up)"]
async fn two_replicas_only_the_leader_acts_and_the_other_takes_over() {
    let env = Env::new("ha-replicas").await;
    let names = ["replica-a", "replica-b"];
    let (mut replicas, addrs) = start_replicas(&env.ns, &names);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);

    let leader = wait_holder(&leases, "a holder", |h| names.contains(&h)).await;
    let (li, fi) = if leader == names[0] { (0, 1) } else { (1, 0) };
    let follower = names[fi].to_string();

    both_ready_and_only_the_holder_leads(&mut replicas, &addrs, li, fi).await;
    the_leader_runs_the_first_job(&env, &leader).await;
    replicas.assert_alive();

    // the leader dies without releasing the Lease
    replicas.kill(&leader);
    assert_eq!(
        wait_holder(&leases, "a holder", |_| true).await,
        leader,
        "a killed leader cannot give the Lease up"
    );
    the_standby_runs_the_second_job(&env, &leases, &follower).await;
    // the new leader re-read the first job and left it alone: still one Job, no new Events
    assert_eq!(env.jobs_of("first").await.len(), 1);
    let events = env.events_once("first", reason::PROMOTED).await;
    assert!(
        events
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some(leader.as_str())),
        "the new leader recorded nothing for the finished first job: {:?}",
        reporting_instances(&events)
    );
    // and it says so; the killed one answers nothing
    until_endpoints(&mut replicas, &addrs, "/metrics", API_TIMEOUT, |a| {
        a[li].is_none()
            && a[fi]
                .as_ref()
                .is_some_and(|(_, body)| sample(body, "kompress_leader") == Some(1.0))
    })
    .await;

    drop(replicas);
    env.cleanup().await;
}

/// Both replicas ready (the leader once its cache synced, the standby once it knows who
/// leads), and only the holder (`li`, not `fi`) says it leads.
async fn both_ready_and_only_the_holder_leads(
    replicas: &mut Replicas,
    addrs: &[SocketAddr],
    li: usize,
    fi: usize,
) {
    until_endpoints(replicas, addrs, "/readyz", API_TIMEOUT, |a| {
        a.iter().all(|r| r.as_ref().is_some_and(|(c, _)| *c == 200))
    })
    .await;
    // only the holder says it leads
    until_endpoints(replicas, addrs, "/metrics", API_TIMEOUT, |a| {
        let leads = |i: usize| {
            a[i].as_ref()
                .and_then(|(c, body)| (*c == 200).then(|| sample(body, "kompress_leader")))
                .flatten()
        };
        leads(li) == Some(1.0) && leads(fi) == Some(0.0)
    })
    .await;
}

/// The leader runs the first job; the standby leaves no trace on it.
async fn the_leader_runs_the_first_job(env: &Env, leader: &str) {
    let first = env.create(&env.example("first", None)).await;
    let cj = env.wait_phase("first", Phase::Succeeded, RUN_TIMEOUT).await;
    assert_eq!(
        env.jobs_of("first")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect::<Vec<_>>(),
        [job_name(&first)]
    );
    assert_eq!(
        cj.status.as_ref().unwrap().job_name.as_deref(),
        Some(job_name(&first).as_str())
    );
    let events = env.events_once("first", reason::PROMOTED).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason::JOB_CREATED)),
        "{:?}",
        reporting_instances(&events)
    );
    assert!(
        events.iter().all(|e| {
            e.reporting_instance.as_deref() == Some(leader)
                && e.reporting_controller.as_deref() == Some("kompress")
        }),
        "every Event of the first job from the leader {leader}: {:?}",
        reporting_instances(&events)
    );
}

/// After the leader died, the standby takes the Lease over (a Lease transition) and runs the
/// second job, once, recording its Events.
async fn the_standby_runs_the_second_job(env: &Env, leases: &Api<Lease>, follower: &str) {
    let second = env.create(&env.example("second", None)).await;
    let cj = env
        .wait_phase("second", Phase::Succeeded, TAKEOVER_TIMEOUT)
        .await;
    let holder = wait_holder(leases, "a holder", |_| true).await;
    assert_eq!(holder, follower, "the standby holds the Lease now");
    let lease = leases.get(LEASE_NAME).await.unwrap();
    assert!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .is_some_and(|t| t >= 1),
        "the takeover is a Lease transition: {:?}",
        lease.spec
    );
    assert_eq!(
        env.jobs_of("second")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect::<Vec<_>>(),
        [job_name(&second)],
        "exactly one Job for the second CompressionJob"
    );
    assert_eq!(
        cj.status.as_ref().unwrap().job_name.as_deref(),
        Some(job_name(&second).as_str())
    );
    let events = env.events_once("second", reason::PROMOTED).await;
    assert!(
        events
            .iter()
            .all(|e| e.reporting_instance.as_deref() == Some(follower)),
        "every Event of the second job from the new leader {follower}: {:?}",
        reporting_instances(&events)
    );
}
