//! `kompress evaluate`: the job's whole evaluation and gate on a model made elsewhere (ONNX
//! Runtime's quantizer, Olive, NNCF, another run), against the job's original; nothing is
//! written or promoted. Exit 0 when every check passes, [`EXIT_REJECTED`] when one fails.

use super::run::{print_json, run_job};
use super::{EXIT_REJECTED, Format, exit, summary};
use crate::api::Verdict;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The CompressionJob manifest: its model is the original, and its dataset, evaluation,
    /// edge cases and thresholds judge the candidate (its passes, search and output are not
    /// used).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The candidate: a local ONNX model file (external data beside it) that takes the same
    /// inputs and gives the same outputs as the job's model.
    #[arg(long)]
    pub candidate: PathBuf,
    /// The decision as a table, or the report as JSON (what `run` writes as report.json).
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Where the scratch folder is made (default: the system's temporary directory); it is
    /// removed when the command ends, however it ends.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

impl EvaluateArgs {
    pub async fn run(self) -> ExitCode {
        let (output, shown) = (self.output, self.candidate.display().to_string());
        let done = |name: &str, o: &crate::pipeline::Outcome| {
            match output {
                Format::Json => print_json(o),
                Format::Table => print!("{}", summary::evaluation_summary(name, &shown, &o.result)),
            }
            match o.result.verdict {
                Verdict::Passed => ExitCode::SUCCESS,
                Verdict::Rejected => exit(EXIT_REJECTED),
            }
        };
        run_job(
            &self.file,
            self.output,
            self.scratch,
            None,
            Some(self.candidate.clone()),
            false,
            done,
        )
        .await
    }
}
