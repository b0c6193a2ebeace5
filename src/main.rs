//! The kompress binary: parses flags and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use kompress::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let code = match Cli::parse().command {
        Command::Run {
            file,
            output,
            scratch,
            run_id,
        } => cli::run(&file, output, scratch, run_id).await,
        Command::Worker {
            spec_file,
            spec,
            termination_log,
            scratch,
            run_id,
        } => cli::worker(spec_file, spec, termination_log, scratch, run_id).await,
        Command::Controller(args) => cli::controller(*args).await,
        Command::Crd => {
            print!("{}", cli::crd_yaml());
            0
        }
        Command::Gc {
            scratch,
            file,
            min_age,
            dry_run,
        } => cli::gc(scratch, file.as_deref(), min_age, dry_run),
        Command::Inspect { model, output } => cli::inspect(&model, output),
        Command::Compress { model, out, file } => cli::compress(&model, &out, &file),
        Command::Cp { src, dst } => cli::cp(&src, &dst).await,
    };
    // Exit codes are 0..=127 (sysexits and 0/1); anything else reads as a generic failure.
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
