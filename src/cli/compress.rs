//! `kompress compress`: a job's passes applied to a local model, without evaluation or gate.

use super::fail;
use crate::api::manifest::read_job;
use crate::api::wire::{EXIT_PERMANENT, EXIT_TRANSIENT};
use crate::pipeline;
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
    /// Calibration samples (`.npz`, one array per model input) for a `mode: static` pass:
    /// its first `calibration.samples` rows are run through the model. Default: the job's
    /// `spec.calibration.dataset`, when it names a local file.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

/// Skipped layers listed per pass when nothing changed (the report of `run` has them all).
const SKIPPED_SHOWN: usize = 10;

/// `spec.calibration.dataset` as a local file; a remote one is refused with what to do.
fn spec_calibration(
    spec: &crate::api::CompressionJobSpec,
) -> Result<Option<PathBuf>, Box<dyn std::error::Error>> {
    let Some(d) = spec.calibration.as_ref().and_then(|c| c.dataset.as_ref()) else {
        return Ok(None);
    };
    let loc = crate::uri::Location::parse(&d.uri)?;
    match loc.local_path() {
        Some(p) => Ok(Some(p)),
        None => Err(format!(
            "spec.calibration.dataset.uri `{}` is not a local file, and `kompress compress` reads only local files: download it and give it with --calibration DATA.npz",
            loc.uri
        )
        .into()),
    }
}

impl CompressArgs {
    /// Calibrates the static pass, if the recipe has one, on `--calibration` (required then).
    fn calibrate(
        &self,
        plan: &crate::api::Plan,
        model: &crate::onnx::Model,
    ) -> Result<Option<pipeline::Calibration>, Box<dyn std::error::Error>> {
        let spec = &plan.spec;
        let Some((index, _)) = pipeline::static_pass(spec) else {
            if let Some(path) = &self.calibration {
                return Err(format!(
                    "--calibration {} is only used by a `quantize: {{mode: static}}` pass, and the recipe has none: drop the flag or add the pass",
                    path.display()
                )
                .into());
            }
            return Ok(None);
        };
        let Some(path) = self.calibration.clone().or(spec_calibration(spec)?) else {
            return Err(format!(
                "spec.passes[{index}] is a `mode: static` quantization: give calibration samples with --calibration DATA.npz (or spec.calibration.dataset)"
            )
            .into());
        };
        let shown = path.display().to_string();
        // A regular file only: a FIFO would block the open, a device would never end.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "--calibration {shown}: not a regular file (missing, a directory, device or pipe): give an .npz file"
            )
            .into());
        }
        let ds = crate::eval::Dataset::open(&path, &shown)?;
        let cfg = crate::eval::EvalConfig::from_plan(&plan.evaluation, None, None)
            .with_inputs(&spec.dataset.inputs);
        let scratch = tempfile::Builder::new()
            .prefix("kompress-calibration-")
            .tempdir()?;
        let data = pipeline::CalibrationData {
            dataset: &ds,
            rows: None,
            uri: shown,
            sha256: None,
            kind: "calibration",
        };
        let c = pipeline::calibrate_with(
            model,
            &spec.passes,
            index,
            plan.target,
            &data,
            &cfg,
            &scratch.path().join("calibration"),
            &crate::ui::Ui::plain(),
        )?;
        eprintln!(
            "calibration: {} samples, {} tensors, {:.2}s",
            c.report.samples, c.report.tensors, c.report.seconds
        );
        Ok(Some(c))
    }

    pub fn run(self) -> ExitCode {
        let job = match read_job(&self.file) {
            Ok(j) => j,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        let plan = match crate::api::validate(&job.spec) {
            Ok(p) => p,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        // Before any work: the destination must be new or a regular file.
        if let Err(e) = crate::onnx::check_destination(&self.out) {
            return fail(&e, EXIT_PERMANENT);
        }
        let loaded = match crate::onnx::load(&self.model) {
            Ok(m) => m,
            Err(e) => return fail(&e, EXIT_PERMANENT),
        };
        // As `kompress run` does: weights held in Constant nodes become initializers first.
        let (mut m, folded) = crate::passes::with_constants_folded(&loaded);
        drop(loaded);
        if folded > 0 {
            eprintln!("{folded} weights held in Constant nodes folded into initializers");
        }
        let calibration = match self.calibrate(&plan, &m) {
            Ok(c) => c,
            Err(e) => return fail(e.as_ref(), EXIT_PERMANENT),
        };
        let (mut changed, mut skipped) = (0, Vec::new());
        for (i, p) in plan.passes.iter().enumerate() {
            let mut pass = crate::passes::Pass::for_target(p, plan.target);
            if let Some(c) = calibration.as_ref().filter(|c| c.pass == i) {
                pass.set_calibration(c.calibrated.clone());
            }
            match pass.apply(&mut m) {
                Ok(r) => {
                    eprintln!(
                        "pass {i} {}: {} ({} tensors, {} skipped)",
                        pass.name(),
                        r.description,
                        r.tensors.len(),
                        r.skipped.len()
                    );
                    changed += r.tensors.len();
                    skipped.extend(r.skipped.into_iter().map(|s| (i, s)));
                }
                Err(e) => return fail(&e, EXIT_PERMANENT),
            }
        }
        // As `kompress run` rejects it (tensorsCompressed): an unchanged copy is not a result.
        if changed == 0 {
            for (i, s) in skipped.iter().take(SKIPPED_SHOWN) {
                eprintln!("  pass {i} skipped {}: {}", s.node, s.reason);
            }
            let e: Box<dyn std::error::Error> = format!(
                "no pass of {} changed any weight of {}, so nothing was written to {}: see the skipped reasons, and change the passes (ops, minElements, excludes)",
                self.file.display(),
                self.model.display(),
                self.out.display()
            )
            .into();
            return fail(e.as_ref(), EXIT_PERMANENT);
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
            Err(e @ crate::onnx::Error::Destination { .. }) => fail(&e, EXIT_PERMANENT),
            Err(e) => fail(&e, EXIT_TRANSIENT),
        }
    }
}
