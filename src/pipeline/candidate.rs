//! Stage 3, `build_candidate -> Candidate`: the passes, in order, on a copy of the original
//! (Constant weights folded into initializers first), the candidate saved in `candidate/`
//! and hashed.

use super::calibrate::Calibration;
use super::{Error, Result, save_in_scratch, scratch_dir};
use crate::api::{PassSpec, TargetCpu};
use crate::onnx::Model;
use crate::passes::{self, Pass};
use crate::report::PassReport;
use crate::storage;
use crate::ui::Ui;
use std::path::{Path, PathBuf};

/// A compressed model on disk, with what each pass did.
pub struct Candidate {
    pub path: PathBuf,
    /// How messages name it (the scratch copy's path is never shown).
    pub shown: String,
    /// (file name, local path, sha256): the model file first, then its external data.
    pub files: Vec<(String, PathBuf, String)>,
    /// sha256 of the model (of its file list when it has external data).
    pub digest: String,
    pub bytes: u64,
    /// `Constant` weights folded into initializers before the passes.
    pub folded_constants: usize,
    pub passes: Vec<PassReport>,
}

impl Candidate {
    /// Weight tensors the passes changed (0: the candidate is the original, re-encoded).
    pub fn tensors_changed(&self) -> usize {
        self.passes.iter().map(|p| p.tensors.len()).sum()
    }
}

/// Stage 3: the passes, in order, on a copy of the original; the candidate saved in `dir`.
pub fn build_candidate(
    original: &Model,
    passes: &[PassSpec],
    target: TargetCpu,
    calibration: Option<&Calibration>,
    dir: &Path,
    ui: &Ui,
) -> Result<Candidate> {
    scratch_dir(dir)?;
    // Weights some exporters keep in Constant nodes become initializers first (lossless).
    let (mut model, folded) = passes::with_constants_folded(original);
    if folded > 0 {
        ui.stage(&format!(
            "{folded} weights held in Constant nodes folded into initializers"
        ));
    }
    let mut reports = Vec::new();
    for (index, p) in passes.iter().enumerate() {
        let mut pass = Pass::for_target(p, target);
        if let Some(c) = calibration.filter(|c| c.pass == index) {
            pass.set_calibration(c.calibrated.clone());
        }
        let report = pass.apply(&mut model).map_err(|source| Error::Pass {
            index,
            name: pass.name(),
            source,
        })?;
        ui.stage(&format!(
            "pass {index} {}: {} ({} tensors, {} skipped)",
            pass.name(),
            report.description,
            report.tensors.len(),
            report.skipped.len()
        ));
        reports.push(report);
    }
    let path = dir.join("model.onnx");
    let saved = save_in_scratch(&model, &path, "saving the candidate model")?;
    drop(model); // the candidate is on disk; free the weights before evaluating it
    let mut files = Vec::new();
    for f in &saved.files {
        let sha = storage::sha256_file(f).map_err(|source| Error::Scratch {
            what: "hashing the candidate",
            path: f.clone(),
            source,
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.onnx".into());
        files.push((name, f.clone(), sha));
    }
    Ok(Candidate {
        digest: crate::promote::artifact_digest(&files),
        path,
        shown: "candidate model.onnx".into(),
        files,
        bytes: saved.bytes,
        folded_constants: folded,
        passes: reports,
    })
}
