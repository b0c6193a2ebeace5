//! metrics: every controller metric, registered in this one place under the `kompress_` prefix.
//! Labels are bounded: a result category, a phase, a namespace, a job's namespace/name,
//! `baseline`/`candidate`, a stage, and on the usage gauges the job's last worker pod and its
//! node (one series per CompressionJob, replaced by the next run: what OpenCost's series join
//! on); never error text. Digests only appear on the one info series per promoted job.

use crate::api::{CompressionJob, Phase};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    reconcile_duration: HistogramVec,
    leader: IntGauge,
    jobs: IntGaugeVec,
    promotions: IntCounterVec,
    rejections: IntCounterVec,
    search_trials: IntCounterVec,
    result: ResultGauges,
    usage: UsageGauges,
    policy: PolicyMetrics,
}

/// Per-job series from a CompressionJob's `status.result`: sizes, quality, latency, promotion.
struct ResultGauges {
    original_bytes: GaugeVec,
    compressed_bytes: GaugeVec,
    ratio: GaugeVec,
    accuracy: GaugeVec,
    quality: GaugeVec,
    latency_p50: GaugeVec,
    run_duration: GaugeVec,
    bytes_saved: GaugeVec,
    latency_ratio: GaugeVec,
    promoted_info: GaugeVec,
}

/// Per-job series from the last run's usage and its worker pod (what OpenCost joins on).
struct UsageGauges {
    cpu_seconds: GaugeVec,
    peak_memory: GaugeVec,
    worker_wall: GaugeVec,
    cpu_request: GaugeVec,
    memory_request: GaugeVec,
    stage_seconds: GaugeVec,
    storage_bytes: GaugeVec,
}

/// Per-policy series, and each job's link to its policy.
struct PolicyMetrics {
    versions: GaugeVec,
    versions_by_phase: GaugeVec,
    job_policy: GaugeVec,
    scans: IntCounterVec,
    scan_seconds: GaugeVec,
    scan_objects: GaugeVec,
    cached: GaugeVec,
    bytes_saved: GaugeVec,
}

/// Most `kompress_quality` series one job exports per model.
const MAX_QUALITY_SERIES: usize = 32;

/// The phases a CompressionJob's status can hold, each with its own `kompress_jobs` series.
const JOB_PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Running,
    Phase::Succeeded,
    Phase::Rejected,
    Phase::Failed,
];

const JOB: &[&str] = &["namespace", "name"];
const MODEL: &[&str] = &["namespace", "name", "model"];
const POD: &[&str] = &["namespace", "name", "pod", "node"];

/// Registers each metric as it is made; names are unique, so registering cannot fail.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ResultGauges {
    fn new(r: &Registrar) -> Self {
        Self {
            original_bytes: r.gauge("job_original_bytes", "Size of the original model", JOB),
            compressed_bytes: r.gauge(
                "job_compressed_bytes",
                "Size of the compressed candidate",
                JOB,
            ),
            ratio: r.gauge(
                "job_compression_ratio",
                "original_bytes / compressed_bytes",
                JOB,
            ),
            accuracy: r.gauge(
                "job_accuracy_ratio",
                "Top-1 accuracy on the evaluation data (0..1)",
                MODEL,
            ),
            quality: r.gauge(
                "quality",
                "Quality metrics of baseline and candidate by name (agreement, cosineSimilarity, and the task's: sequenceMatch, charErrorRate, detectionF1, map50, neighbourRecall, ...)",
                &["namespace", "name", "model", "metric"],
            ),
            latency_p50: r.gauge(
                "job_latency_p50_seconds",
                "Median inference latency of one timed batch",
                MODEL,
            ),
            run_duration: r.gauge(
                "job_run_duration_seconds",
                "Start to completion of the worker Job",
                JOB,
            ),
            bytes_saved: r.gauge(
                "job_bytes_saved",
                "Promoted jobs: original_bytes - compressed_bytes, per served copy",
                JOB,
            ),
            latency_ratio: r.gauge(
                "job_latency_ratio",
                "Candidate/original latency: the median and its 95% bootstrap interval",
                &["namespace", "name", "bound"],
            ),
            promoted_info: r.gauge(
                "job_promoted_info",
                "1 for each promoted job, with the promoted model's sha256",
                &["namespace", "name", "digest"],
            ),
        }
    }

    fn all(&self) -> [&GaugeVec; 10] {
        [
            &self.original_bytes,
            &self.compressed_bytes,
            &self.ratio,
            &self.accuracy,
            &self.quality,
            &self.latency_p50,
            &self.run_duration,
            &self.bytes_saved,
            &self.latency_ratio,
            &self.promoted_info,
        ]
    }
}

impl UsageGauges {
    fn new(r: &Registrar) -> Self {
        Self {
            cpu_seconds: r.gauge(
                "job_cpu_seconds",
                "CPU time the last run's worker process used (user + system)",
                POD,
            ),
            peak_memory: r.gauge(
                "job_peak_memory_bytes",
                "Peak resident memory of the last run's worker process",
                POD,
            ),
            worker_wall: r.gauge(
                "job_worker_seconds",
                "Wall time of the last run's worker process, start to result",
                POD,
            ),
            cpu_request: r.gauge(
                "job_cpu_request_cores",
                "CPU cores the last run's worker pod requested (= its limit)",
                POD,
            ),
            memory_request: r.gauge(
                "job_memory_request_bytes",
                "Memory the last run's worker pod requested (= its limit)",
                POD,
            ),
            stage_seconds: r.gauge(
                "job_stage_seconds",
                "Wall time of each stage of the last run (fetch, baseline, compress, publish)",
                &["namespace", "name", "stage"],
            ),
            storage_bytes: r.gauge(
                "job_storage_bytes",
                "Bytes the last run read from and wrote to storage",
                &["namespace", "name", "direction"],
            ),
        }
    }

    fn all(&self) -> [&GaugeVec; 7] {
        [
            &self.cpu_seconds,
            &self.peak_memory,
            &self.worker_wall,
            &self.cpu_request,
            &self.memory_request,
            &self.stage_seconds,
            &self.storage_bytes,
        ]
    }
}

impl PolicyMetrics {
    fn new(r: &Registrar) -> Self {
        Self {
            versions: r.gauge(
                "policy_versions",
                "Versions a CompressionPolicy tracks (status.versionsSeen)",
                JOB,
            ),
            versions_by_phase: r.gauge(
                "policy_versions_by_phase",
                "A CompressionPolicy's versions by the phase of their CompressionJob (Waiting: not created yet)",
                &["namespace", "name", "phase"],
            ),
            job_policy: r.gauge(
                "job_policy_info",
                "1 for each CompressionJob a CompressionPolicy created (its controller owner): joins job series, and the cost rules, to their policy",
                &["namespace", "name", "policy"],
            ),
            scans: r.counter(
                "policy_scans_total",
                "Scans of a CompressionPolicy's source, by result (ok, error)",
                &["namespace", "name", "result"],
            ),
            scan_seconds: r.gauge(
                "policy_last_scan_seconds",
                "Duration of a CompressionPolicy's last scan of its source (listing included), failed or not",
                JOB,
            ),
            scan_objects: r.gauge(
                "policy_last_scan_objects",
                "Objects a CompressionPolicy's last successful scan listed",
                JOB,
            ),
            cached: r.gauge(
                "policy_versions_cached",
                "A CompressionPolicy's jobs whose result was served from the compression cache (status.result.cachedFrom)",
                JOB,
            ),
            bytes_saved: r.gauge(
                "policy_bytes_saved",
                "Sum of kompress_job_bytes_saved over a CompressionPolicy's promoted jobs (per served copy)",
                JOB,
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kompress".into()), None).expect("valid prefix");
        let r = Registrar(&registry);
        let reconcile_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Self {
            reconciliations: r.counter(
                "reconciliations_total",
                "Reconciles by result: ok or the error category",
                &["result"],
            ),
            reconcile_duration: r.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "reconcile_duration_seconds",
                        "Time of one reconcile by result",
                    )
                    .buckets(reconcile_buckets),
                    &["result"],
                )
                .expect("valid histogram"),
            ),
            leader: r.register(
                IntGauge::new(
                    "leader",
                    "1 while this process holds the leader Lease (or runs without election)",
                )
                .expect("valid gauge"),
            ),
            jobs: r.register(
                IntGaugeVec::new(
                    Opts::new("jobs", "CompressionJobs by status phase"),
                    &["phase"],
                )
                .expect("valid gauge"),
            ),
            promotions: r.counter("promotions_total", "Candidates promoted", &["namespace"]),
            rejections: r.counter(
                "rejections_total",
                "Candidates rejected by a threshold",
                &["namespace"],
            ),
            search_trials: r.counter(
                "search_trials_total",
                "Candidates evaluated by finished searches (spec.search), by outcome",
                &["namespace", "outcome"],
            ),
            result: ResultGauges::new(&r),
            usage: UsageGauges::new(&r),
            policy: PolicyMetrics::new(&r),
            registry,
        }
    }

    /// Starts timing one reconcile; it is recorded when the guard drops, with the result
    /// set by [`ReconcileTimer::set_result`] (`cancelled` if it never was).
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
            result: "cancelled",
        }
    }

    /// A policy's status as last written: versions tracked, and by phase (every phase gets a
    /// series, zero included, so a phase that empties reads 0 rather than its last value).
    pub fn policy_observed(
        &self,
        namespace: &str,
        name: &str,
        status: &crate::api::CompressionPolicyStatus,
    ) {
        self.policy
            .versions
            .with_label_values(&[namespace, name])
            .set(f64::from(status.versions_seen));
        let phases = ["Waiting"].into_iter().chain(JOB_PHASES.map(Phase::as_str));
        for phase in phases {
            let n = status.phases.get(phase).copied().unwrap_or(0);
            self.policy
                .versions_by_phase
                .with_label_values(&[namespace, name, phase])
                .set(f64::from(n));
        }
    }

    /// A scan of a policy's source ended: how long it took, and what it listed (None: failed).
    pub fn policy_scanned(
        &self,
        namespace: &str,
        name: &str,
        took: std::time::Duration,
        listed: Option<u64>,
    ) {
        let l = [namespace, name];
        self.policy
            .scan_seconds
            .with_label_values(&l)
            .set(took.as_secs_f64());
        let result = match listed {
            Some(n) => {
                self.policy.scan_objects.with_label_values(&l).set(n as f64);
                "ok"
            }
            None => "error",
        };
        self.policy
            .scans
            .with_label_values(&[namespace, name, result])
            .inc();
    }

    pub fn promoted(&self, namespace: &str) {
        self.promotions.with_label_values(&[namespace]).inc();
    }

    pub fn rejected(&self, namespace: &str) {
        self.rejections.with_label_values(&[namespace]).inc();
    }

    /// A search ended: its trials, labelled by how it ended (`passed`, `rejected`, `failed`).
    pub fn search_finished(&self, namespace: &str, phase: Option<crate::api::Phase>, trials: u32) {
        let outcome = match phase {
            Some(crate::api::Phase::Succeeded) => "passed",
            Some(crate::api::Phase::Rejected) => "rejected",
            _ => "failed",
        };
        self.search_trials
            .with_label_values(&[namespace, outcome])
            .inc_by(u64::from(trials));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
    }

    /// Rebuilds the per-phase and per-job gauges from the controller's cache, so deleted
    /// CompressionJobs disappear from the metrics too.
    pub fn refresh_jobs(&self, jobs: &[Arc<CompressionJob>]) {
        self.forget_every_job();
        for cj in jobs {
            self.record_job(cj);
        }
    }

    /// Empties every per-job series and sets each phase's job count to zero.
    fn forget_every_job(&self) {
        let p = &self.policy;
        let per_job = [&p.job_policy, &p.cached, &p.bytes_saved];
        for v in self
            .result
            .all()
            .into_iter()
            .chain(self.usage.all())
            .chain(per_job)
        {
            v.reset();
        }
        for p in JOB_PHASES {
            self.jobs.with_label_values(&[p.as_str()]).set(0);
        }
    }

    /// One CompressionJob's series: its policy link, its phase, its run's duration, its
    /// result and its worker's usage.
    fn record_job(&self, cj: &CompressionJob) {
        let (ns, name) = (
            cj.metadata.namespace.as_deref().unwrap_or_default(),
            cj.metadata.name.as_deref().unwrap_or_default(),
        );
        let policy = policy_of(cj);
        if let Some(policy) = policy {
            self.record_policy_link(ns, name, policy);
        }
        let Some(status) = &cj.status else { return };
        if let Some(p) = status.phase {
            self.jobs.with_label_values(&[p.as_str()]).inc();
        }
        if let (Some(s), Some(c)) = (&status.start_time, &status.completion_time) {
            self.result
                .run_duration
                .with_label_values(&[ns, name])
                .set((c.0.as_millisecond() - s.0.as_millisecond()) as f64 / 1000.0);
        }
        let Some(r) = &status.result else { return };
        self.record_result(ns, name, policy, r);
        let Some(u) = &r.usage else { return };
        self.record_usage(ns, name, u, status.worker.as_ref());
    }

    /// A job a policy created: the link, and both policy sums (zero included).
    fn record_policy_link(&self, ns: &str, name: &str, policy: &str) {
        let p = &self.policy;
        p.job_policy.with_label_values(&[ns, name, policy]).set(1.0);
        // every policy with a job gets both series, zero included
        p.cached.with_label_values(&[ns, policy]).add(0.0);
        p.bytes_saved.with_label_values(&[ns, policy]).add(0.0);
    }

    /// Sizes, both models' quality and latency, the latency ratio, and the promotion.
    fn record_result(&self, ns: &str, name: &str, policy: Option<&str>, r: &crate::api::JobResult) {
        let g = &self.result;
        g.original_bytes
            .with_label_values(&[ns, name])
            .set(r.original_bytes as f64);
        g.compressed_bytes
            .with_label_values(&[ns, name])
            .set(r.compressed_bytes as f64);
        g.ratio.with_label_values(&[ns, name]).set(r.ratio);
        for (model, m) in [("baseline", &r.baseline), ("candidate", &r.candidate)] {
            self.record_model(ns, name, model, m);
        }
        let c = &r.candidate;
        for (bound, v) in [
            ("median", c.latency_ratio),
            ("low", c.latency_ratio_low),
            ("high", c.latency_ratio_high),
        ] {
            if let Some(v) = v {
                g.latency_ratio.with_label_values(&[ns, name, bound]).set(v);
            }
        }
        if let (Some(policy), Some(_)) = (policy, &r.cached_from) {
            self.policy.cached.with_label_values(&[ns, policy]).inc();
        }
        if let Some(p) = &r.promoted {
            let saved = r.original_bytes as f64 - r.compressed_bytes as f64;
            g.bytes_saved.with_label_values(&[ns, name]).set(saved);
            if let Some(policy) = policy {
                self.policy
                    .bytes_saved
                    .with_label_values(&[ns, policy])
                    .add(saved);
            }
            g.promoted_info
                .with_label_values(&[ns, name, &p.sha256])
                .set(1.0);
        }
    }

    /// One model's (`baseline` or `candidate`) accuracy, quality metrics and latency.
    fn record_model(&self, ns: &str, name: &str, model: &str, m: &crate::api::Metrics) {
        let g = &self.result;
        if let Some(a) = m.accuracy {
            g.accuracy.with_label_values(&[ns, name, model]).set(a);
        }
        // Metric names come from the worker's fixed set; the cap keeps a damaged
        // termination message from growing the label set.
        let named = [
            ("agreement", m.agreement),
            ("cosineSimilarity", m.cosine_similarity),
        ];
        let task = m.task.iter().map(|(k, v)| (k.as_str(), Some(*v)));
        for (metric, v) in named.into_iter().chain(task).take(MAX_QUALITY_SERIES) {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                g.quality
                    .with_label_values(&[ns, name, model, metric])
                    .set(v);
            }
        }
        g.latency_p50
            .with_label_values(&[ns, name, model])
            .set(m.latency_p50_ms / 1000.0);
    }

    /// The last run's stages and storage bytes, and with its worker pod known, its CPU,
    /// memory and wall time and the pod's requests.
    fn record_usage(
        &self,
        ns: &str,
        name: &str,
        u: &crate::api::Usage,
        worker: Option<&crate::api::WorkerRef>,
    ) {
        let g = &self.usage;
        for s in &u.stages {
            g.stage_seconds
                .with_label_values(&[ns, name, &s.stage])
                .set(s.seconds);
        }
        for (dir, v) in [("read", u.bytes_read), ("written", u.bytes_written)] {
            g.storage_bytes
                .with_label_values(&[ns, name, dir])
                .set(v as f64);
        }
        let Some(w) = worker else { return };
        let l = [ns, name, w.pod.as_str(), w.node.as_deref().unwrap_or("")];
        g.cpu_seconds.with_label_values(&l).set(u.cpu_seconds);
        g.peak_memory
            .with_label_values(&l)
            .set(u.peak_memory_bytes as f64);
        g.worker_wall.with_label_values(&l).set(u.wall_seconds);
        if let Some(v) = w.cpu_request {
            g.cpu_request.with_label_values(&l).set(v);
        }
        if let Some(v) = w.memory_request_bytes {
            g.memory_request.with_label_values(&l).set(v);
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// The CompressionPolicy that created a job: its controller owner of that kind.
fn policy_of(cj: &CompressionJob) -> Option<&str> {
    cj.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "CompressionPolicy"
                && o.api_version.starts_with("kompress.dev/")
        })
        .map(|o| o.name.as_str())
}

/// Times one reconcile and records count and duration when dropped (controller-rs style).
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
    result: &'static str,
}

impl ReconcileTimer<'_> {
    /// `ok` or the error's static category.
    pub fn set_result(&mut self, result: &'static str) {
        self.result = result;
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        m.reconciliations.with_label_values(&[self.result]).inc();
        m.reconcile_duration
            .with_label_values(&[self.result])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_timer_records_on_drop_with_its_result() {
        let m = Metrics::new();
        {
            let mut t = m.reconcile_timer();
            t.set_result("ok");
        }
        drop(m.reconcile_timer());
        let text = m.encode();
        assert!(
            text.contains(r#"kompress_reconciliations_total{result="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"kompress_reconciliations_total{result="cancelled"} 1"#));
        assert!(text.contains(r#"kompress_reconcile_duration_seconds_count{result="ok"} 1"#));
    }

    #[test]
    fn job_gauges_follow_the_cache_and_forget_deleted_jobs() {
        let m = Metrics::new();
        let cj: CompressionJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "kompress.dev/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "digits", "namespace": "ml"},
            "spec": {"model": {"uri": "m.onnx"}, "dataset": {"uri": "d.npz"}, "passes": [], "output": {"uri": "out"}},
            "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z",
                "worker": {"pod": "digits-g1-abc-x7", "node": "n1", "cpuRequest": 2.0, "memoryRequestBytes": 4294967296.0},
                "result": {"verdict": "Passed", "originalBytes": 4000, "compressedBytes": 1000, "ratio": 4.0, "checks": [],
                    "promoted": {"uri": "s3://p/sha256-ab/model.onnx", "sha256": "ab12"},
                    "usage": {"cpuSeconds": 61.5, "peakMemoryBytes": 300000000, "wallSeconds": 42.0, "bytesRead": 5000,
                        "bytesWritten": 2100, "stages": [{"stage": "fetch", "seconds": 1.5}, {"stage": "compress", "seconds": 30.0}]},
                    "baseline": {"bytes": 4000, "samples": 10, "accuracy": 0.97, "latencyP50Ms": 2.0, "latencyP95Ms": 3.0},
                    "candidate": {"bytes": 1000, "samples": 10, "accuracy": 0.96, "latencyP50Ms": 1.0, "latencyP95Ms": 2.0,
                        "agreement": 0.99, "task": {"sequenceMatch": 0.92, "charErrorRate": 0.01},
                        "latencyRatio": 0.5, "latencyRatioLow": 0.45, "latencyRatioHigh": 0.56}}},
        }))
        .unwrap();
        m.refresh_jobs(&[Arc::new(cj)]);
        let text = m.encode();
        for line in [
            r#"kompress_jobs{phase="Succeeded"} 1"#,
            r#"kompress_jobs{phase="Failed"} 0"#,
            r#"kompress_job_compression_ratio{name="digits",namespace="ml"} 4"#,
            r#"kompress_quality{metric="sequenceMatch",model="candidate",name="digits",namespace="ml"} 0.92"#,
            r#"kompress_quality{metric="charErrorRate",model="candidate",name="digits",namespace="ml"} 0.01"#,
            r#"kompress_quality{metric="agreement",model="candidate",name="digits",namespace="ml"} 0.99"#,
            r#"kompress_job_original_bytes{name="digits",namespace="ml"} 4000"#,
            r#"kompress_job_accuracy_ratio{model="candidate",name="digits",namespace="ml"} 0.96"#,
            r#"kompress_job_latency_p50_seconds{model="baseline",name="digits",namespace="ml"} 0.002"#,
            r#"kompress_job_run_duration_seconds{name="digits",namespace="ml"} 90"#,
            r#"kompress_job_cpu_seconds{name="digits",namespace="ml",node="n1",pod="digits-g1-abc-x7"} 61.5"#,
            r#"kompress_job_peak_memory_bytes{name="digits",namespace="ml",node="n1",pod="digits-g1-abc-x7"} 300000000"#,
            r#"kompress_job_worker_seconds{name="digits",namespace="ml",node="n1",pod="digits-g1-abc-x7"} 42"#,
            r#"kompress_job_cpu_request_cores{name="digits",namespace="ml",node="n1",pod="digits-g1-abc-x7"} 2"#,
            r#"kompress_job_memory_request_bytes{name="digits",namespace="ml",node="n1",pod="digits-g1-abc-x7"} 4294967296"#,
            r#"kompress_job_stage_seconds{name="digits",namespace="ml",stage="compress"} 30"#,
            r#"kompress_job_storage_bytes{direction="read",name="digits",namespace="ml"} 5000"#,
            r#"kompress_job_bytes_saved{name="digits",namespace="ml"} 3000"#,
            r#"kompress_job_latency_ratio{bound="high",name="digits",namespace="ml"} 0.56"#,
            r#"kompress_job_promoted_info{digest="ab12",name="digits",namespace="ml"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.refresh_jobs(&[]);
        assert!(!m.encode().contains("digits"));
    }

    /// A policy's jobs: one promoted fresh, one promoted from the cache, one rejected, and a
    /// hand-written job beside them that belongs to no policy.
    #[test]
    fn policy_gauges_sum_their_own_jobs_only() {
        let job = |name: &str, owner: Option<&str>, promoted: bool, cached: bool| {
            let mut result = serde_json::json!({
                "verdict": if promoted { "Passed" } else { "Rejected" },
                "originalBytes": 4000, "compressedBytes": 1000, "ratio": 4.0, "checks": [],
                "baseline": {"bytes": 4000, "samples": 10, "latencyP50Ms": 2.0, "latencyP95Ms": 3.0},
                "candidate": {"bytes": 1000, "samples": 10, "latencyP50Ms": 1.0, "latencyP95Ms": 2.0}});
            if promoted {
                result["promoted"] = serde_json::json!({"uri": "s3://p/m.onnx", "sha256": name});
            }
            if cached {
                result["cachedFrom"] = serde_json::json!({"run": "s3://o/runs/1", "key": "k"});
            }
            let owners = owner.map(|p| {
                serde_json::json!([{"apiVersion": "kompress.dev/v1alpha1",
                "kind": "CompressionPolicy", "name": p, "uid": "u1", "controller": true}])
            });
            let cj: CompressionJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "kompress.dev/v1alpha1", "kind": "CompressionJob",
                "metadata": {"name": name, "namespace": "ml", "ownerReferences": owners},
                "spec": {"model": {"uri": "m.onnx"}, "dataset": {"uri": "d.npz"}, "passes": [], "output": {"uri": "out"}},
                "status": {"phase": if promoted { "Succeeded" } else { "Rejected" }, "result": result},
            }))
            .unwrap();
            Arc::new(cj)
        };
        let m = Metrics::new();
        m.refresh_jobs(&[
            job("bert-v1", Some("bert"), true, false),
            job("bert-v2", Some("bert"), true, true),
            job("bert-v3", Some("bert"), false, false),
            job("by-hand", None, true, false),
        ]);
        let text = m.encode();
        for line in [
            r#"kompress_job_policy_info{name="bert-v1",namespace="ml",policy="bert"} 1"#,
            r#"kompress_job_policy_info{name="bert-v3",namespace="ml",policy="bert"} 1"#,
            r#"kompress_policy_versions_cached{name="bert",namespace="ml"} 1"#,
            r#"kompress_policy_bytes_saved{name="bert",namespace="ml"} 6000"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"policy="by-hand""#)
                && !text.contains(r#"kompress_job_policy_info{name="by-hand""#)
        );
        m.refresh_jobs(&[job("bert-v3", Some("bert"), false, false)]);
        let text = m.encode();
        assert!(
            text.contains(r#"kompress_policy_versions_cached{name="bert",namespace="ml"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kompress_policy_bytes_saved{name="bert",namespace="ml"} 0"#),
            "{text}"
        );
    }
}
