//! The kompress binary: parses flags and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use kompress::cli::{Cli, init_tracing};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    Cli::parse().command.run().await
}
