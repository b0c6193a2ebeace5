//! Command-line faces of the one binary, one module each: `run`, `evaluate`, `worker`,
//! `controller`, `crd`, `inspect`, `compress`, `cp`, `gc`, `verify`; plus the summary table and the run's scratch
//! folder (with the panic hook and signal guard that remove it). Each subcommand is a clap
//! `Args` struct whose `run(self)` returns the process exit status; `main` only parses and
//! dispatches.

mod agent;
mod compress;
mod controller;
mod cp;
mod crd;
mod evaluate;
mod gc;
mod inspect;
mod run;
pub mod scratch;
pub mod summary;
mod verify;
mod worker;

pub use agent::EvaluatorAgentArgs;
pub use compress::CompressArgs;
pub use controller::ControllerArgs;
pub use cp::CpArgs;
pub use crd::{CrdArgs, crd_yaml};
pub use evaluate::EvaluateArgs;
pub use gc::GcArgs;
pub use inspect::InspectArgs;
pub use run::RunArgs;
pub use scratch::SCRATCH_PREFIX;
pub use verify::VerifyArgs;
pub use worker::WorkerArgs;
// The exit codes are the binary's interface as much as the worker's: scripts and tests that
// run `kompress` compare against them.
pub use crate::api::wire::{EXIT_INTERNAL, EXIT_PERMANENT, EXIT_TRANSIENT};
/// `kompress evaluate`: the candidate missed a threshold (`run` exits 0 on a rejection, an
/// outcome of a job; `evaluate` is a check, like `verify`, and fails it).
pub const EXIT_REJECTED: i32 = 1;

use crate::error::error_chain;
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

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
    Run(RunArgs),
    /// Judge a model made elsewhere (another tool's output) by a job's evaluation and gate,
    /// against the job's model; nothing is promoted. Exit 0: every check passed; 1: rejected.
    Evaluate(EvaluateArgs),
    /// What the worker pod runs: the same pipeline, non-interactive; a compact JSON result goes
    /// to the termination log.
    Worker(WorkerArgs),
    /// The operator: watches CompressionJobs and runs each generation as a batch/v1 Job whose
    /// pod runs `kompress worker`; writes status, Events and Prometheus metrics.
    Controller(Box<ControllerArgs>),
    /// Print the CompressionJob CustomResourceDefinition (YAML).
    Crd(CrdArgs),
    /// Apply a job's passes to a local model, without evaluation or gating (for experiments
    /// and benchmarks; the gated path is `run`).
    Compress(CompressArgs),
    /// Copy a file between storage locations (s3://, gs://, az://, https://, local) through
    /// kompress's storage layer, printing bytes, seconds and sha256.
    Cp(CpArgs),
    /// Remove what a killed run (SIGKILL) left: stale scratch folders, and staging files under
    /// a job's local output and promotion folders. Nothing at a final name is touched.
    Gc(GcArgs),
    /// Summarise an ONNX model: ops, parameters, bytes by dtype, sparsity.
    Inspect(InspectArgs),
    /// Check a promotion's evidence: its signature, that the promoted files are the ones it
    /// names, and that its verdict is Passed.
    Verify(VerifyArgs),
    /// In a cluster: runs a custom evaluator's command for the worker, inside the evaluator's
    /// own container (the controller sets it up; not for direct use).
    #[command(hide = true)]
    EvaluatorAgent(EvaluatorAgentArgs),
}

impl Command {
    /// Runs the subcommand; returns the process exit status.
    pub async fn run(self) -> ExitCode {
        if !matches!(
            self,
            Self::Run(_) | Self::Evaluate(_) | Self::Worker(_) | Self::Controller(_)
        ) {
            exit_on_signal();
        }
        match self {
            Self::Run(a) => a.run().await,
            Self::Evaluate(a) => a.run().await,
            Self::Worker(a) => a.run().await,
            Self::Controller(a) => a.run().await,
            Self::Crd(a) => a.run(),
            Self::Compress(a) => a.run(),
            Self::Cp(a) => a.run().await,
            Self::Gc(a) => a.run(),
            Self::Inspect(a) => a.run(),
            Self::Verify(a) => a.run().await,
            Self::EvaluatorAgent(a) => a.run(),
        }
    }
}

/// Commands without a signal guard of their own (`run`, `worker` and `controller` have one)
/// end on SIGTERM or SIGINT with 128 + the signal's number, as a shell reports it, even as a
/// container's PID 1 (where a signal's default action does not apply) and while blocked in a
/// read. The handlers are installed before the command starts.
fn exit_on_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        let (name, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 143),
            _ = int.recv() => ("SIGINT", 130),
        };
        eprintln!("kompress: stopped by {name}");
        std::process::exit(code);
    });
}

/// Output format of `run` and `inspect`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Errors of the command layer itself.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    // The base is not shown (the rule: messages name what the user wrote in the job, never a
    // scratch path); the flag and variable that set it are.
    #[error(
        "cannot make the run's scratch folder ({}): free space, or point --scratch / KOMPRESS_SCRATCH at a writable disk",
        without_path(cause)
    )]
    Scratch {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Usage(&'static str),
}

/// Logs to stderr (`RUST_LOG`, default `info,ort=warn`), coloured on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The exit status for a code: sysexits and 0/1 are 0..=127; anything else reads as a generic
/// failure.
fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Prints the error with its causes; returns `code` as the exit status.
fn fail(e: &dyn std::error::Error, code: i32) -> ExitCode {
    eprintln!("error: {}", error_chain(e));
    exit(code)
}

/// An I/O error's own words, without the path some libraries append (tempfile's "at path").
fn without_path(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.kind().to_string(),
    }
}
