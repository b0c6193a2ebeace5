//! `kompress compress`: a job's passes applied to a local model, without evaluation or gate.

use super::fail;
use crate::api::manifest::read_job;
use crate::api::wire::{EXIT_PERMANENT, EXIT_TRANSIENT};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CompressArgs {
    /// Input ONNX model.
    pub model: PathBuf,
    /// Where to write the compressed model.
    pub out: PathBuf,
    /// A CompressionJob manifest whose `spec.passes` are applied.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

impl CompressArgs {
    pub fn run(self) -> ExitCode {
        let job = match read_job(&self.file) {
            Ok(j) => j,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        if let Err(e) = crate::api::validate(&job.spec) {
            return fail(&e, EXIT_PERMANENT);
        }
        let mut m = match crate::onnx::load(&self.model) {
            Ok(m) => m,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        let target = job.spec.target.clone().unwrap_or_default().cpu;
        for (i, p) in job.spec.passes.iter().enumerate() {
            let pass = crate::passes::Pass::for_target(p, target);
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
        match crate::onnx::save(&m.proto, &self.out, &opts) {
            Ok(saved) => {
                println!(
                    "{} bytes -> {} bytes ({:.2}x)",
                    m.file_bytes,
                    saved.bytes,
                    m.file_bytes as f64 / saved.bytes.max(1) as f64
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, EXIT_TRANSIENT),
        }
    }
}
