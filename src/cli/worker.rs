//! `kompress worker`: what the worker Job's pod runs. The same pipeline as `run`,
//! non-interactive; on every exit (a panic and SIGTERM included) it leaves a compact
//! [`WorkerMessage`] in the termination log and exits with the wire contract's code.

use super::CliError;
use super::exit;
use super::scratch::{Scratch, Signals, install_panic_hook, run_guarded};
use crate::api::manifest::{parse_job, read_capped};
use crate::api::reason;
use crate::api::wire::{self, EXIT_INTERNAL, EXIT_PERMANENT, EXIT_TRANSIENT, WorkerMessage};
use crate::error::error_chain;
use crate::pipeline::RunOptions;
use crate::ui::Ui;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The CompressionJob (YAML or JSON) as a file...
    #[arg(long, env = "KOMPRESS_JOB_FILE", conflicts_with = "spec")]
    pub spec_file: Option<PathBuf>,
    /// ...or inline (the controller sets KOMPRESS_JOB).
    #[arg(long, env = wire::env::JOB, hide_env_values = true)]
    pub spec: Option<String>,
    #[arg(
        long,
        env = "KOMPRESS_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    #[arg(long, env = wire::env::SCRATCH)]
    pub scratch: Option<PathBuf>,
    #[arg(long, env = wire::env::RUN_ID)]
    pub run_id: Option<String>,
}

/// Prints the message and writes it to the termination log.
fn report(termination_log: &Path, m: &WorkerMessage) {
    let json = m.to_json();
    println!("{json}");
    if let Err(e) = std::fs::write(termination_log, &json) {
        eprintln!(
            "warning: cannot write termination log {}: {e}",
            termination_log.display()
        );
    }
}

impl WorkerArgs {
    pub async fn run(self) -> ExitCode {
        // First: a signal from here on is handled (scratch removed), never the default exit.
        let signals = Signals::listen();
        let log = self.termination_log;
        let failed = |reason: &str, permanent: bool, message: String| {
            report(&log, &WorkerMessage::failed(reason, permanent, message));
        };
        install_panic_hook(Some(log.clone()));
        let (text, origin) = match (self.spec_file, self.spec) {
            (Some(p), _) => match read_capped(&p) {
                Ok(t) => (t, p.display().to_string()),
                Err(e) => {
                    failed(reason::INVALID_SPEC, true, error_chain(&e));
                    return exit(EXIT_PERMANENT);
                }
            },
            (None, Some(s)) => (s, wire::env::JOB.to_string()),
            (None, None) => {
                failed(
                    reason::INVALID_SPEC,
                    true,
                    "no job given: set --spec-file or KOMPRESS_JOB".into(),
                );
                return exit(EXIT_PERMANENT);
            }
        };
        let job = match parse_job(&text, &origin) {
            Ok(j) => j,
            Err(e) => {
                failed(reason::INVALID_SPEC, true, error_chain(&e));
                return exit(EXIT_PERMANENT);
            }
        };
        let base = self.scratch.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = match Scratch::new(self.scratch) {
            Ok(s) => s,
            Err(source) => {
                let e = CliError::Scratch {
                    path: base,
                    cause: source,
                };
                failed(reason::SCRATCH_ERROR, false, error_chain(&e));
                return exit(EXIT_TRANSIENT);
            }
        };
        let opts = RunOptions {
            scratch: scratch.path().to_path_buf(),
            run_id: self.run_id,
            no_cache: false,
        };
        let outcome = run_guarded(&job, opts, Ui::plain(), signals, |signal| {
            let message = format!("interrupted by {signal} (pod deleted or deadline reached); nothing of this run is promoted unless promoted.json names it");
            eprintln!("error: {message}");
            failed(reason::INTERRUPTED, false, message);
        }, None)
        .await;
        // The evaluator's container (if any) may stop now.
        crate::eval::evaluator::release_agent();
        drop(scratch);
        match outcome {
            Err(internal) => {
                eprintln!("error: {internal}");
                failed(reason::WORKER_PANICKED, false, internal);
                exit(EXIT_INTERNAL)
            }
            Ok(Ok(outcome)) => {
                report(&log, &WorkerMessage::finished(outcome.result));
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                let chain = error_chain(&e);
                eprintln!("error: {chain}");
                failed(e.category(), e.is_permanent(), chain);
                exit(wire::exit_code(e.is_permanent()))
            }
        }
    }
}
