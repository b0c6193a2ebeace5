//! `kompress crd`: the CompressionJob CRD as YAML (checked in as crds/compressionjob.yaml; CI
//! fails when `kompress crd` and the file differ).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CrdArgs;

impl CrdArgs {
    pub fn run(self) -> ExitCode {
        print!("{}", crd_yaml());
        ExitCode::SUCCESS
    }
}

/// The CRD as YAML: block style, every string on one line (a `kubectl explain` description is
/// never folded), multi-line strings as `|-` blocks.
pub fn crd_yaml() -> String {
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
        min_fold_chars: usize::MAX,
    };
    serde_saphyr::to_string_with_options(&crate::api::crd(), options).expect("CRD serialises")
}
