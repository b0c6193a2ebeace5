//! Command-line faces of the one binary: run, worker, controller, crd, inspect.

use crate::api::{CompressionJob, JobResult, Phase, Verdict, reason};
use crate::pipeline::{self, JobRef, RunOptions, error_chain};
use crate::ui::Ui;
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Exit code for errors that retrying cannot fix (bad spec, bad model, missing object,
/// wrong credentials): sysexits EX_DATAERR. The worker Job's pod failure policy fails the Job
/// at once on it.
pub const EXIT_PERMANENT: i32 = 65;
/// Exit code for errors worth retrying (network, storage unavailable): sysexits EX_TEMPFAIL.
pub const EXIT_TRANSIENT: i32 = 75;
/// Exit code of an internal error (a bug: a panic caught at the top): sysexits EX_SOFTWARE.
pub const EXIT_INTERNAL: i32 = 70;
/// Largest manifest read (the apiserver stores objects of at most 1.5 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Deepest nesting of `[`/`{`/indentation a manifest may have (a CompressionJob needs < 10).
pub const MAX_MANIFEST_DEPTH: usize = 64;

#[derive(Parser, Debug)]
#[command(
    name = "kompress",
    version,
    about = "ONNX model compression as a declarative, gated pipeline step"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one CompressionJob on this machine (no cluster): the embedded default.
    Run {
        /// The CompressionJob manifest (the same YAML you would `kubectl apply`).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Summary format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Where the run's scratch folder is made (default: the system's temporary directory);
        /// the folder is removed when the run ends, however it ends.
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Prefix of this run's folder under output.uri/runs/ (default: the job's name); a UTC
        /// time and a random suffix follow, so no two runs share a folder.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// What the worker pod runs: the same pipeline, non-interactive; a compact JSON result goes
    /// to the termination log.
    Worker {
        /// The CompressionJob (YAML or JSON) as a file...
        #[arg(long, env = "KOMPRESS_JOB_FILE", conflicts_with = "spec")]
        spec_file: Option<PathBuf>,
        /// ...or inline (the controller sets KOMPRESS_JOB).
        #[arg(long, env = "KOMPRESS_JOB", hide_env_values = true)]
        spec: Option<String>,
        #[arg(
            long,
            env = "KOMPRESS_TERMINATION_LOG",
            default_value = "/dev/termination-log"
        )]
        termination_log: PathBuf,
        #[arg(long, env = "KOMPRESS_SCRATCH")]
        scratch: Option<PathBuf>,
        #[arg(long, env = "KOMPRESS_RUN_ID")]
        run_id: Option<String>,
    },
    /// The operator: watches CompressionJobs and runs each generation as a batch/v1 Job whose
    /// pod runs `kompress worker`; writes status, Events and Prometheus metrics.
    Controller(Box<ControllerArgs>),
    /// Print the CompressionJob CustomResourceDefinition (YAML).
    Crd,
    /// Apply a job's passes to a local model, without evaluation or gating (for experiments
    /// and benchmarks; the gated path is `run`).
    Compress {
        /// Input ONNX model.
        model: PathBuf,
        /// Where to write the compressed model.
        out: PathBuf,
        /// A CompressionJob manifest whose `spec.passes` are applied.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Copy a file between storage locations (s3://, gs://, az://, https://, local) through
    /// kompress's storage layer, printing bytes, seconds and sha256.
    Cp { src: String, dst: String },
    /// Remove what a killed run (SIGKILL) left: stale scratch folders, and staging files under
    /// a job's local output and promotion folders. Nothing at a final name is touched.
    Gc {
        /// Scratch base to clean (default: the system's temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// A CompressionJob manifest: clean staging files under its local output.uri and
        /// output.promoteTo.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Staging files younger than this are left alone (a run may still be writing them),
        /// e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_age)]
        min_age: std::time::Duration,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Summarise an ONNX model: ops, parameters, bytes by dtype, sparsity.
    Inspect {
        model: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Flags of `kompress controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Image of CPU worker pods.
    #[arg(long, env = "KOMPRESS_WORKER_IMAGE", default_value = crate::controller::DEFAULT_WORKER_IMAGE)]
    pub worker_image: String,
    /// Image of GPU worker pods (`spec.resources.gpu > 0`).
    #[arg(long, env = "KOMPRESS_WORKER_GPU_IMAGE", default_value = crate::controller::DEFAULT_WORKER_GPU_IMAGE)]
    pub worker_gpu_image: String,
    /// Node selector of GPU worker pods, KEY=VALUE (repeatable); the spec's wins per key.
    #[arg(long = "gpu-node-selector", value_name = "KEY=VALUE", value_parser = crate::controller::parse_key_value)]
    pub gpu_node_selector: Vec<(String, String)>,
    /// Toleration of GPU worker pods, KEY[=VALUE][:EFFECT] as in `kubectl taint` (repeatable;
    /// replaces the default).
    #[arg(long = "gpu-toleration", value_name = "KEY[=VALUE][:EFFECT]", default_value = "nvidia.com/gpu:NoSchedule", value_parser = crate::controller::parse_toleration)]
    pub gpu_toleration: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// GPU tolerations as a JSON list of core/v1 Tolerations (the Helm chart sets it);
    /// replaces --gpu-toleration.
    #[arg(long = "gpu-tolerations-json", env = "KOMPRESS_GPU_TOLERATIONS", value_name = "JSON", value_parser = crate::controller::parse_tolerations_json)]
    pub gpu_tolerations_json: Option<crate::controller::TolerationList>,
    /// Watch CompressionJobs in this namespace only (default: all namespaces).
    #[arg(long, env = "KOMPRESS_NAMESPACE")]
    pub namespace: Option<String>,
    /// CPU request and limit of workers whose spec sets none.
    #[arg(long, default_value = "1")]
    pub default_cpu: String,
    /// Memory request and limit of workers whose spec sets none.
    #[arg(long, default_value = "2Gi")]
    pub default_memory: String,
    /// Scratch (emptyDir) size limit of workers whose spec sets none.
    #[arg(long, default_value = "10Gi")]
    pub default_scratch: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run only while holding the `kompress-controller` Lease (false for local development).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// `30s`, `15m`, `1h`, `2d` (or plain seconds).
fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not an age like 30m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}`: use the units s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// `kompress gc`.
pub fn gc(
    scratch: Option<PathBuf>,
    file: Option<&Path>,
    min_age: std::time::Duration,
    dry_run: bool,
) -> i32 {
    use crate::gc;
    let mut c = gc::Collected::default();
    let base = scratch.unwrap_or_else(std::env::temp_dir);
    gc::scratch(&base, SCRATCH_PREFIX, min_age, dry_run, &mut c);
    if let Some(file) = file {
        let job = match read_job(file) {
            Ok(j) => j,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        let out = &job.spec.output;
        for uri in std::iter::once(&out.uri).chain(out.promote_to.as_ref()) {
            match crate::storage::Location::parse(uri).map(|l| l.local_path()) {
                Ok(Some(dir)) => gc::staging(&dir, min_age, dry_run, &mut c),
                Ok(None) => eprintln!(
                    "{uri}: object store: interrupted multipart uploads are invisible; let the bucket's AbortIncompleteMultipartUpload lifecycle rule remove them"
                ),
                Err(e) => return fail(&e, EXIT_PERMANENT),
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for p in c.scratch.iter().chain(&c.staging) {
        println!("{verb} {}", p.display());
    }
    println!(
        "{verb} {} scratch folder(s) and {} staging file(s); {} scratch folder(s) belong to running processes",
        c.scratch.len(),
        c.staging.len(),
        c.live
    );
    0
}

/// Errors of the command layer itself (reading manifests).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a valid CompressionJob manifest: {message}")]
    Manifest { origin: String, message: String },
    #[error(
        "cannot make a scratch folder under {path}: free space or point --scratch / KOMPRESS_SCRATCH elsewhere"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a CompressionJob from YAML or JSON; with several YAML documents, the first
/// CompressionJob is used.
pub fn parse_job(text: &str, origin: &str) -> Result<CompressionJob, CliError> {
    let bad = |message: String| CliError::Manifest {
        origin: origin.into(),
        message,
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is {} bytes; a CompressionJob manifest may have at most {MAX_MANIFEST_BYTES}",
            text.len()
        )));
    }
    if let Some(line) = too_deep(text) {
        return Err(bad(format!(
            "line {line} is nested deeper than {MAX_MANIFEST_DEPTH} levels; a CompressionJob needs far fewer"
        )));
    }
    let mut seen = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        if kind != "CompressionJob" {
            seen.push(if kind.is_empty() {
                "a document without kind".to_string()
            } else {
                kind
            });
            continue;
        }
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        if api != "kompress.dev/v1alpha1" {
            return Err(bad(format!(
                "apiVersion is `{api}`; expected kompress.dev/v1alpha1"
            )));
        }
        // serde_path_to_error names the field (spec.passes[0]) that serde_yaml's message lacks.
        return serde_path_to_error::deserialize::<_, CompressionJob>(value).map_err(|e| {
            let path = e.path().to_string();
            bad(if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            })
        });
    }
    Err(bad(format!(
        "no document has kind: CompressionJob (found: {})",
        if seen.is_empty() {
            "nothing".into()
        } else {
            seen.join(", ")
        }
    )))
}

/// The first line (1-based) where flow brackets or block indentation nest deeper than
/// `MAX_MANIFEST_DEPTH`, if any: checked before the YAML parser, whose time and memory grow
/// with nesting. Quoted strings and comments are skipped; the bound is loose on purpose.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_MANIFEST_DEPTH {
                        return Some(i + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if indent / 2 > MAX_MANIFEST_DEPTH {
            return Some(i + 1);
        }
    }
    None
}

/// Reads and parses a CompressionJob manifest file.
pub fn read_job(file: &Path) -> Result<CompressionJob, CliError> {
    let text = read_capped(file)?;
    parse_job(&text, &file.display().to_string())
}

fn job_ref(job: &CompressionJob) -> JobRef {
    JobRef {
        name: job
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "compressionjob".into()),
        namespace: job.metadata.namespace.clone(),
        generation: job.metadata.generation,
    }
}

/// Reads a manifest file of at most `MAX_MANIFEST_BYTES`.
fn read_capped(file: &Path) -> Result<String, CliError> {
    use std::io::Read;
    let read = |source| CliError::Read {
        path: file.into(),
        source,
    };
    let f = std::fs::File::open(file).map_err(read)?;
    let mut text = String::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    Ok(text)
}

/// The run's scratch folder, `kompress-<pid>-<random>` under `base` (default: the temporary
/// directory): removed on drop, on a panic (hook) and on SIGINT/SIGTERM; `kompress gc`
/// removes what a SIGKILL leaves (the pid says whether its owner is still running).
pub struct Scratch {
    dir: tempfile::TempDir,
}

/// The live scratch folder, for the panic hook and the signal handler.
static LIVE_SCRATCH: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

impl Scratch {
    pub fn new(base: Option<PathBuf>) -> std::io::Result<Self> {
        let base = base.unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
            .tempdir_in(base)?;
        if let Ok(mut live) = LIVE_SCRATCH.lock() {
            *live = Some(dir.path().to_path_buf());
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE_SCRATCH.lock() {
            *live = None;
        }
    }
}

/// Prefix of scratch folder names: `kompress-<pid>-<random>`.
pub const SCRATCH_PREFIX: &str = "kompress-";

/// Removes the live scratch folder (from the panic hook or a signal handler).
fn remove_live_scratch() {
    // try_lock: a panic while the lock is held must not deadlock the hook.
    if let Ok(mut live) = LIVE_SCRATCH.try_lock()
        && let Some(p) = live.take()
    {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Runs the pipeline on its own task, so that a signal or a panic is handled while blocking
/// work (ONNX Runtime, passes) runs: on SIGINT/SIGTERM the scratch folder is removed and
/// `on_signal` says what to report before the process exits with `EXIT_TRANSIENT`.
async fn run_guarded(
    job: &CompressionJob,
    opts: RunOptions,
    ui: Ui,
    on_signal: impl Fn(&str),
) -> Result<Result<pipeline::Outcome, pipeline::Error>, String> {
    let (job_ref, spec) = (job_ref(job), job.spec.clone());
    let task = tokio::spawn(async move { pipeline::run(&job_ref, &spec, &opts, &ui).await });
    let signal = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    };
    tokio::select! {
        joined = task => joined.map_err(|e| {
            if e.is_panic() {
                "the pipeline panicked (a bug: please report it with the job and this message)".to_string()
            } else {
                "the pipeline task was cancelled".to_string()
            }
        }),
        name = signal => {
            on_signal(name);
            remove_live_scratch();
            std::process::exit(EXIT_TRANSIENT);
        }
    }
}

/// Installs a panic hook that removes the scratch folder and, for the worker, writes a
/// termination message, before the default hook prints the panic.
pub fn install_panic_hook(termination_log: Option<PathBuf>) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        remove_live_scratch();
        if let Some(path) = &termination_log {
            let m = WorkerMessage {
                phase: Phase::Failed,
                result: None,
                reason: Some(reason::WORKER_PANICKED.into()),
                permanent: Some(false),
                message: Some(format!(
                    "internal error (a bug: please report it with the job): {info}"
                )),
            };
            let _ = std::fs::write(path, m.to_json());
        }
        default(info);
    }));
}

fn exit_code(e: &pipeline::Error) -> i32 {
    if e.is_permanent() {
        EXIT_PERMANENT
    } else {
        EXIT_TRANSIENT
    }
}

/// `kompress run`: returns the process exit code.
pub async fn run(
    file: &Path,
    output: Format,
    scratch: Option<PathBuf>,
    run_id: Option<String>,
) -> i32 {
    let job = match read_job(file) {
        Ok(j) => j,
        Err(e) => return fail(&e, EXIT_PERMANENT),
    };
    install_panic_hook(None);
    let base = scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = match Scratch::new(scratch) {
        Ok(s) => s,
        Err(source) => {
            return fail(&CliError::Scratch { path: base, source }, EXIT_TRANSIENT);
        }
    };
    let ui = if output == Format::Json {
        Ui::plain()
    } else {
        Ui::detect()
    };
    let opts = RunOptions {
        scratch: scratch.path().to_path_buf(),
        run_id,
    };
    let outcome = run_guarded(&job, opts, ui, |signal| {
        eprintln!("error: interrupted by {signal}: scratch removed; nothing this run did is promoted unless promoted.json names it");
    })
    .await;
    drop(scratch);
    match outcome {
        Err(internal) => {
            eprintln!("error: {internal}");
            EXIT_INTERNAL
        }
        Ok(Err(e)) => fail(&e, exit_code(&e)),
        Ok(Ok(outcome)) => {
            match output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&outcome.report).expect("report serialises")
                ),
                Format::Table => print!("{}", summary(&job_ref(&job).name, &outcome.result)),
            }
            0
        }
    }
}

fn fail(e: &dyn std::error::Error, code: i32) -> i32 {
    eprintln!("error: {}", error_chain(e));
    code
}

/// What the worker leaves in its termination message (kept under kubelet's 4096-byte cap).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerMessage {
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub const TERMINATION_LIMIT: usize = 4096;

impl WorkerMessage {
    /// Compact JSON within the termination-message limit: long messages are cut, and if the
    /// result alone is too large its per-model metric details go first.
    pub fn to_json(&self) -> String {
        let mut m = self.clone();
        if let Some(msg) = &mut m.message
            && msg.len() > 1500
        {
            let cut = (0..=1500)
                .rev()
                .find(|&i| msg.is_char_boundary(i))
                .unwrap_or(0);
            msg.truncate(cut);
            msg.push('…');
        }
        let s = serde_json::to_string(&m).expect("message serialises");
        if s.len() <= TERMINATION_LIMIT {
            return s;
        }
        if let Some(r) = &mut m.result {
            r.report.get_or_insert_with(String::new);
            r.baseline = Default::default();
            r.candidate = Default::default();
        }
        serde_json::to_string(&m).expect("message serialises")
    }
}

/// `kompress worker`: returns the process exit code.
pub async fn worker(
    spec_file: Option<PathBuf>,
    spec: Option<String>,
    termination_log: PathBuf,
    scratch: Option<PathBuf>,
    run_id: Option<String>,
) -> i32 {
    let write = |m: &WorkerMessage| {
        let json = m.to_json();
        println!("{json}");
        if let Err(e) = std::fs::write(&termination_log, &json) {
            eprintln!(
                "warning: cannot write termination log {}: {e}",
                termination_log.display()
            );
        }
    };
    let failed = |reason: &str, permanent: bool, message: String| WorkerMessage {
        phase: Phase::Failed,
        result: None,
        reason: Some(reason.into()),
        permanent: Some(permanent),
        message: Some(message),
    };
    install_panic_hook(Some(termination_log.clone()));
    let (text, origin) = match (spec_file, spec) {
        (Some(p), _) => match read_capped(&p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                write(&failed(reason::INVALID_SPEC, true, error_chain(&e)));
                return EXIT_PERMANENT;
            }
        },
        (None, Some(s)) => (s, "KOMPRESS_JOB".to_string()),
        (None, None) => {
            write(&failed(
                reason::INVALID_SPEC,
                true,
                "no job given: set --spec-file or KOMPRESS_JOB".into(),
            ));
            return EXIT_PERMANENT;
        }
    };
    let job = match parse_job(&text, &origin) {
        Ok(j) => j,
        Err(e) => {
            write(&failed(reason::INVALID_SPEC, true, error_chain(&e)));
            return EXIT_PERMANENT;
        }
    };
    let base = scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = match Scratch::new(scratch) {
        Ok(s) => s,
        Err(source) => {
            let e = CliError::Scratch { path: base, source };
            write(&failed(reason::SCRATCH_ERROR, false, error_chain(&e)));
            return EXIT_TRANSIENT;
        }
    };
    let opts = RunOptions {
        scratch: scratch.path().to_path_buf(),
        run_id,
    };
    let outcome = run_guarded(&job, opts, Ui::plain(), |signal| {
        let message = format!("interrupted by {signal} (pod deleted or deadline reached); nothing of this run is promoted unless promoted.json names it");
        eprintln!("error: {message}");
        write(&failed(reason::INTERRUPTED, false, message));
    })
    .await;
    drop(scratch);
    match outcome {
        Err(internal) => {
            eprintln!("error: {internal}");
            write(&failed(reason::WORKER_PANICKED, false, internal));
            EXIT_INTERNAL
        }
        Ok(Ok(outcome)) => {
            let phase = if outcome.result.verdict == Verdict::Passed {
                Phase::Succeeded
            } else {
                Phase::Rejected
            };
            write(&WorkerMessage {
                phase,
                result: Some(outcome.result),
                reason: None,
                permanent: None,
                message: None,
            });
            0
        }
        Ok(Err(e)) => {
            let chain = error_chain(&e);
            eprintln!("error: {chain}");
            write(&failed(e.category(), e.is_permanent(), chain));
            exit_code(&e)
        }
    }
}

/// `kompress controller`: returns the process exit code.
pub async fn controller(args: ControllerArgs) -> i32 {
    use crate::controller::{ControllerConfig, Options, leader};
    let opts = Options {
        config: ControllerConfig {
            worker_image: args.worker_image,
            gpu_image: args.worker_gpu_image,
            gpu_node_selector: args.gpu_node_selector.into_iter().collect(),
            gpu_tolerations: args
                .gpu_tolerations_json
                .map(|l| l.0)
                .unwrap_or(args.gpu_toleration),
            namespace: args.namespace,
            default_cpu: args.default_cpu,
            default_memory: args.default_memory,
            default_scratch: args.default_scratch,
        },
        metrics_addr: args.metrics_addr,
        leader_elect: args.leader_elect,
        lease_namespace: args.leader_election_namespace,
        identity: leader::default_identity(),
    };
    match crate::controller::run(opts).await {
        Ok(()) => 0,
        Err(e) => fail(&e, 1),
    }
}

pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crate::api::crd()).expect("CRD serialises")
}

pub fn inspect(model: &Path, output: Format) -> i32 {
    match crate::onnx::load(model) {
        Ok(m) => {
            let i = crate::onnx::inspect(&m);
            match output {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&i).expect("serialises"))
                }
                Format::Table => print!("{i}"),
            }
            0
        }
        Err(e) => fail(&e, EXIT_PERMANENT),
    }
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// The end-of-run table: original vs candidate, and every check.
pub fn summary(name: &str, r: &JobResult) -> String {
    use std::fmt::Write;
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.2}%", v * 100.0))
            .unwrap_or_else(|| "—".into())
    };
    let num = |v: Option<f64>| v.map(|v| format!("{v:.5}")).unwrap_or_else(|| "—".into());
    let (b, c) = (&r.baseline, &r.candidate);
    let mut s = String::new();
    let verdict = match (r.verdict, &r.promoted) {
        (Verdict::Passed, Some(_)) => "PASSED, promoted",
        (Verdict::Passed, None) => "PASSED (no promoteTo set)",
        (Verdict::Rejected, _) => "REJECTED, nothing promoted",
    };
    let _ = writeln!(s, "\nCompressionJob {name}: {verdict}\n");
    let _ = writeln!(s, "  {:<14} {:>14} {:>14}", "", "original", "candidate");
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}   {:.2}x smaller",
        "size",
        human_bytes(r.original_bytes),
        human_bytes(r.compressed_bytes),
        r.ratio
    );
    let drop = r
        .accuracy_drop
        .map(|d| format!("   {:+.2} points", if d == 0.0 { 0.0 } else { -d * 100.0 }))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}{drop}",
        "accuracy",
        pct(b.accuracy),
        pct(c.accuracy)
    );
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}",
        "agreement",
        "—",
        pct(c.agreement)
    );
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}",
        "cosine",
        "—",
        num(c.cosine_similarity)
    );
    let _ = writeln!(
        s,
        "  {:<14} {:>14} {:>14}",
        "max |error|",
        "—",
        num(c.max_abs_error)
    );
    let _ = writeln!(
        s,
        "  {:<14} {:>11.3} ms {:>11.3} ms",
        "latency p50", b.latency_p50_ms, c.latency_p50_ms
    );
    let _ = writeln!(
        s,
        "  {:<14} {:>11.3} ms {:>11.3} ms",
        "latency p95", b.latency_p95_ms, c.latency_p95_ms
    );
    let _ = writeln!(s, "  {:<14} {:>14} {:>14}", "samples", b.samples, c.samples);
    if r.checks.is_empty() {
        let _ = writeln!(s, "\n  no thresholds set: nothing was checked");
    } else {
        let _ = writeln!(s, "\n  checks");
    }
    for ch in &r.checks {
        let op = if ch.name.starts_with("max") {
            "<="
        } else {
            ">="
        };
        let _ = writeln!(
            s,
            "  {} {:<26} {:>10.5} {op} {}",
            if ch.passed { "✓" } else { "✗" },
            ch.name,
            ch.value,
            ch.limit
        );
    }
    s.push('\n');
    if let Some(a) = &r.artifact {
        let _ = writeln!(s, "  candidate  {}  sha256:{}", a.uri, a.sha256);
    }
    if let Some(p) = &r.promoted {
        let _ = writeln!(s, "  promoted   {}", p.uri);
    }
    if let Some(rep) = &r.report {
        let _ = writeln!(s, "  report     {rep}");
    }
    s
}

/// `kompress compress`: passes only.
pub fn compress(model: &Path, out: &Path, file: &Path) -> i32 {
    let job = match read_job(file) {
        Ok(j) => j,
        Err(e) => return fail(&e, EXIT_PERMANENT),
    };
    if let Err(e) = crate::api::validate(&job.spec) {
        return fail(&e, EXIT_PERMANENT);
    }
    let mut m = match crate::onnx::load(model) {
        Ok(m) => m,
        Err(e) => return fail(&e, EXIT_PERMANENT),
    };
    for (i, p) in job.spec.passes.iter().enumerate() {
        let pass = crate::passes::Pass::from_spec(p);
        match pass.apply(&mut m) {
            Ok(r) => eprintln!(
                "pass {i} {}: {} ({} tensors, {} skipped)",
                pass.name(),
                r.description,
                r.tensors.len(),
                r.skipped.len()
            ),
            Err(e) => return fail(&e, EXIT_PERMANENT),
        }
    }
    let opts = crate::onnx::SaveOptions {
        external_data: m.had_external_data.then_some(true),
    };
    match crate::onnx::save(&m.proto, out, &opts) {
        Ok(saved) => {
            println!(
                "{} bytes -> {} bytes ({:.2}x)",
                m.file_bytes,
                saved.bytes,
                m.file_bytes as f64 / saved.bytes.max(1) as f64
            );
            0
        }
        Err(e) => fail(&e, EXIT_TRANSIENT),
    }
}

/// `kompress cp`: fetch to a local file, or upload a local file.
pub async fn cp(src: &str, dst: &str) -> i32 {
    use crate::storage::{Location, Scheme, Storage};
    let (src, dst) = match (Location::parse(src), Location::parse(dst)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return fail(&e, EXIT_PERMANENT),
    };
    let storage = Storage::new(None);
    let t = std::time::Instant::now();
    let code = |e: &crate::storage::Error| {
        if e.is_permanent() {
            EXIT_PERMANENT
        } else {
            EXIT_TRANSIENT
        }
    };
    let result = match (src.scheme, dst.local_path()) {
        (_, Some(path)) => storage
            .fetch(&src, &path, None, &|_, _| {})
            .await
            .map(|f| (f.bytes, f.sha256)),
        (Scheme::Local, None) => {
            let path = src.local_path().expect("local");
            match storage.put_file(&path, &dst, &|_, _| {}).await {
                Ok(n) => crate::storage::sha256_file(&path)
                    .map(|h| (n, h))
                    .map_err(|source| crate::storage::Error::Io { path, source }),
                Err(e) => Err(e),
            }
        }
        _ => {
            return fail(
                &CliError::Manifest {
                    origin: "cp".into(),
                    message: "one side must be a local path".into(),
                },
                EXIT_PERMANENT,
            );
        }
    };
    match result {
        Ok((bytes, sha)) => {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"bytes": bytes, "seconds": secs, "mib_per_s": bytes as f64 / 1048576.0 / secs, "sha256": sha})
            );
            0
        }
        Err(e) => fail(&e, code(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata: {name: x}\nspec:\n  model: {uri: m.onnx}\n  dataset: {uri: d.npz}\n  output: {uri: out}\n  passes: [{quantize: {}}]\n";

    #[test]
    fn manifests_too_large_or_too_deep_are_refused_before_parsing() {
        assert!(parse_job(JOB, "job.yaml").is_ok());
        let big = format!("{JOB}# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse_job(&big, "job.yaml").unwrap_err().to_string();
        assert!(e.contains("at most 1048576"), "{e}");
        for depth in [65, 1000, 100_000] {
            let flow = format!(
                "{JOB}  labels: {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let t = std::time::Instant::now();
            let e = parse_job(&flow, "job.yaml").unwrap_err().to_string();
            assert!(e.contains("nested deeper than 64"), "{depth}: {e}");
            assert!(t.elapsed().as_secs() < 1);
        }
        let mut block = JOB.to_string();
        for i in 0..70 {
            block.push_str(&format!("{}- a:\n", " ".repeat(4 + 2 * i)));
        }
        let e = parse_job(&block, "job.yaml").unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // Brackets inside quotes and comments do not count.
        let quoted = format!("{JOB}# {}\n", "[".repeat(200));
        assert!(parse_job(&quoted, "job.yaml").is_ok());
    }

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("90").unwrap().as_secs(), 90);
        assert_eq!(parse_age("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_age("2d").unwrap().as_secs(), 172_800);
        assert!(parse_age("1y").is_err() && parse_age("h").is_err());
        assert!(parse_age("99999999999999999d").is_err());
    }
}
