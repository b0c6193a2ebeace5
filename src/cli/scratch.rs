//! The run's scratch folder, and what removes it on every exit the process survives: drop,
//! the panic hook, and the SIGINT/SIGTERM guard around the pipeline.

use crate::api::CompressionJob;
use crate::api::reason;
use crate::api::wire::{EXIT_TRANSIENT, WorkerMessage};
use crate::pipeline::{self, RunOptions};
use crate::report::JobRef;
use crate::ui::Ui;
use std::path::{Path, PathBuf};

/// Prefix of scratch folder names: `kompress-<pid>-<random>`.
pub const SCRATCH_PREFIX: &str = "kompress-";

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

/// Removes the live scratch folder (from the panic hook or a signal handler). The path stays
/// registered, so a second pass can remove what another thread re-created in between.
fn remove_live_scratch() {
    // try_lock: a panic while the lock is held must not deadlock the hook.
    if let Ok(live) = LIVE_SCRATCH.try_lock()
        && let Some(p) = live.as_ref()
    {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// SIGINT and SIGTERM, listened for from the start of a command (before its scratch folder
/// exists), so a signal at any point is handled by the guard instead of killing the process
/// with its scratch left behind.
pub struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Starts listening (replaces the default action, which would exit at once).
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                streams: signal(SignalKind::terminate())
                    .ok()
                    .zip(signal(SignalKind::interrupt()).ok()),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next signal's name.
    async fn next(self) -> &'static str {
        #[cfg(unix)]
        {
            match self.streams {
                Some((mut term, mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                None => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}

/// Leaves on a signal: no new local files, staging files and the scratch folder removed
/// (twice: work still running on another thread may have been making a folder in between),
/// then exit with the status that says "retry".
fn shut_down() -> ! {
    crate::storage::begin_shutdown();
    remove_live_scratch();
    std::thread::sleep(std::time::Duration::from_millis(20));
    remove_live_scratch();
    std::process::exit(EXIT_TRANSIENT);
}

/// Installs a panic hook that removes the scratch folder and, for the worker, writes a
/// termination message, before the default hook prints the panic.
pub fn install_panic_hook(termination_log: Option<PathBuf>) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        remove_live_scratch();
        if let Some(path) = &termination_log {
            let m = WorkerMessage::failed(
                reason::WORKER_PANICKED,
                false,
                format!("internal error (a bug: please report it with the job): {info}"),
            );
            let _ = std::fs::write(path, m.to_json());
        }
        default(info);
    }));
}

/// What the guarded pipeline ended with: `Err` is an internal failure (a panic), with the
/// message to show.
pub type Guarded = Result<pipeline::Result<pipeline::Outcome>, String>;

/// Runs the pipeline on its own task, so that a signal or a panic is handled while blocking
/// work (ONNX Runtime, passes) runs: on SIGINT/SIGTERM the scratch folder is removed and
/// `on_signal` says what to report before the process exits with `EXIT_TRANSIENT`. With
/// `candidate`, the job judges that model instead of building one (`kompress evaluate`).
pub async fn run_guarded(
    job: &CompressionJob,
    opts: RunOptions,
    ui: Ui,
    signals: Signals,
    on_signal: impl Fn(&str),
    candidate: Option<PathBuf>,
) -> Guarded {
    let (job_ref, spec) = (JobRef::of(job), job.spec.clone());
    let task = tokio::spawn(async move {
        // Every later stage takes the plan: the spec validated, its defaults applied.
        let plan = crate::api::validate(&spec)?;
        match candidate {
            Some(c) => pipeline::evaluate_external(&job_ref, &plan, &c, &opts, &ui).await,
            None => pipeline::run(&job_ref, &plan, &opts, &ui).await,
        }
    });
    tokio::select! {
        // A signal already pending when the run starts wins over the run.
        biased;
        name = signals.next() => {
            on_signal(name);
            shut_down();
        }
        joined = task => joined.map_err(|e| {
            if e.is_panic() {
                "the pipeline panicked (a bug: please report it with the job and this message)".to_string()
            } else {
                "the pipeline task was cancelled".to_string()
            }
        }),
    }
}
