//! `kompress run`: one CompressionJob on this machine, with progress bars on a terminal and a
//! summary table (or the full report as JSON) at the end.

use super::scratch::{Scratch, Signals, install_panic_hook, run_guarded};
use super::{CliError, Format, exit, fail, summary};
use crate::api::manifest::read_job;
use crate::api::wire::{EXIT_INTERNAL, EXIT_PERMANENT, EXIT_TRANSIENT, exit_code};
use crate::pipeline::{Outcome, RunOptions};
use crate::report::JobRef;
use crate::ui::Ui;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The CompressionJob manifest (the same YAML you would `kubectl apply`).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Summary format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Where the run's scratch folder is made (default: the system's temporary directory);
    /// the folder is removed when the run ends, however it ends.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Prefix of this run's folder under output.uri/runs/ (default: the job's name); a UTC
    /// time and a random suffix follow, so no two runs share a folder.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Compute the result even when the cache holds one for this job's key (the new result
    /// replaces the entry). `spec.output.cache: false` turns the cache off for a job.
    #[arg(long)]
    pub no_cache: bool,
}

impl RunArgs {
    pub async fn run(self) -> ExitCode {
        let (output, file) = (self.output, self.file.clone());
        run_job(
            &file,
            self.output,
            self.scratch,
            self.run_id,
            None,
            self.no_cache,
            |name, o| {
                match output {
                    Format::Json => print_json(o),
                    Format::Table => print!("{}", summary::summary(name, &o.result)),
                }
                ExitCode::SUCCESS
            },
        )
        .await
    }
}

pub(super) fn print_json(o: &Outcome) {
    println!(
        "{}",
        serde_json::to_string_pretty(&o.report).expect("report serialises")
    );
}

/// What `run` and `evaluate` share: the job read, signals handled, a scratch folder removed
/// however it ends, the pipeline (judging `candidate` instead of building one when set), and
/// errors as exit codes; `done` prints the outcome of the job named and returns the status.
pub(super) async fn run_job(
    file: &Path,
    output: Format,
    scratch: Option<PathBuf>,
    run_id: Option<String>,
    candidate: Option<PathBuf>,
    no_cache: bool,
    done: impl FnOnce(&str, &Outcome) -> ExitCode,
) -> ExitCode {
    // First: a signal from here on is handled (scratch removed), never the default exit.
    let signals = Signals::listen();
    let job = match read_job(file) {
        Ok(j) => j,
        Err(e) => return fail(&e, EXIT_PERMANENT),
    };
    install_panic_hook(None);
    let base = scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = match Scratch::new(scratch) {
        Ok(s) => s,
        Err(source) => {
            return fail(
                &CliError::Scratch {
                    path: base,
                    cause: source,
                },
                EXIT_TRANSIENT,
            );
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
        no_cache,
    };
    let outcome = run_guarded(&job, opts, ui, signals, |signal| {
        eprintln!("error: interrupted by {signal}: scratch removed; nothing this run did is promoted unless promoted.json names it");
    }, candidate)
    .await;
    drop(scratch);
    match outcome {
        Err(internal) => {
            eprintln!("error: {internal}");
            exit(EXIT_INTERNAL)
        }
        Ok(Err(e)) => fail(&e, exit_code(e.is_permanent())),
        Ok(Ok(outcome)) => done(&JobRef::of(&job).name, &outcome),
    }
}
