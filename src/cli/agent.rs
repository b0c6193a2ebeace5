//! `kompress evaluator-agent`: in a cluster, the custom evaluator's container runs this (its
//! binary copied in by an init container of the worker image) to run the evaluator's command
//! for the worker, through request folders on the shared scratch volume.

use super::{EXIT_PERMANENT, exit};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct EvaluatorAgentArgs {
    /// Copy this binary into DIR (as `kompress`) and exit: the init container's job.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["dir", "command"])]
    pub install: Option<PathBuf>,
    /// The folder shared with the worker, where requests appear.
    #[arg(long, required_unless_present = "install")]
    pub dir: Option<PathBuf>,
    /// Seconds one run of the command may take.
    #[arg(long, default_value_t = crate::api::defaults::EVALUATOR_TIMEOUT_SECONDS)]
    pub timeout_seconds: u32,
    /// The evaluator's command and its arguments.
    #[arg(last = true, required_unless_present = "install")]
    pub command: Vec<String>,
}

impl EvaluatorAgentArgs {
    pub fn run(self) -> ExitCode {
        if let Some(dir) = self.install {
            return match install(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: copying kompress into {}: {e}", dir.display());
                    exit(EXIT_PERMANENT)
                }
            };
        }
        let dir = self.dir.unwrap_or_default();
        let timeout = Duration::from_secs(u64::from(self.timeout_seconds.max(1)));
        match crate::eval::evaluator::serve(&dir, &self.command, timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "error: serving evaluator requests in {}: {e}",
                    dir.display()
                );
                exit(EXIT_PERMANENT)
            }
        }
    }
}

fn install(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let to = dir.join("kompress");
    std::fs::copy(&me, &to)?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
}
