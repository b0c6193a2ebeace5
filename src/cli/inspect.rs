//! `kompress inspect`: ops, parameters, bytes by dtype and sparsity of an ONNX model, and
//! which weight bytes each pass would touch.

use super::{Format, fail};
use crate::api::wire::EXIT_PERMANENT;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    pub model: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl InspectArgs {
    pub fn run(self) -> ExitCode {
        match crate::onnx::load(&self.model) {
            Ok(m) => {
                let i = crate::onnx::inspect(&m);
                let c = crate::passes::coverage(&m);
                match self.output {
                    Format::Json => {
                        let mut v = serde_json::to_value(&i).expect("serialises");
                        v["compressible"] = serde_json::to_value(&c).expect("serialises");
                        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"))
                    }
                    Format::Table => print!("{i}{c}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, EXIT_PERMANENT),
        }
    }
}
