//! `kompress verify REF --key PUB`: checks a promotion's evidence. REF is a promotion folder
//! (`output.promoteTo`) or its `promoted.json`. Every check reads what the store holds now:
//!
//! 1. the manifest names evidence, and the envelope's bytes are the ones it names (sha256);
//! 2. a signature of the envelope verifies with the key, over DSSE's PAE (or, with
//!    `--unsigned`, the envelope is read without checking one);
//! 3. the payload is an in-toto Statement v1 with kompress's evaluation predicate;
//! 4. its subjects are exactly the manifest's files, and each file in the promotion folder
//!    hashes to its subject's digest (read back whole);
//! 5. the predicate's verdict is Passed and every check in it passed.
//!
//! Everything read is confined: the evidence and the model's files must be inside the folder
//! that holds `promoted.json` (no `..`, no absolute or foreign name, no symlink out of it), and
//! every string from the evidence is checked before it is used.
//!
//! The checks are `crate::promote`'s (`promote::verify`); this is the command around them.
//!
//! Exit 0 when all hold, 1 when one fails (the first failure is named), 65 on bad usage (a
//! malformed reference, a key that cannot be read).

use super::{Format, fail};
use crate::api::wire::{EXIT_PERMANENT, exit_code};
use crate::promote::evidence::VerifyingKey;
use crate::promote::{Failure, Verified};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A promotion folder (`output.promoteTo`) or its `promoted.json`.
    pub reference: String,
    /// The signer's public key (SubjectPublicKeyInfo PEM: `openssl pkey -in key.pem -pubout`).
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    /// Accept evidence without checking a signature (for promotions made without
    /// `spec.output.signing`); the digests and the verdict are still checked.
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// `oci://` references: talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

impl VerifyArgs {
    pub async fn run(self) -> ExitCode {
        let key = match (&self.key, self.unsigned) {
            (Some(path), _) => {
                let text = match crate::onnx::read_small(path, crate::promote::MAX_KEY_BYTES) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("error: --key {}: {e}", path.display());
                        return super::exit(EXIT_PERMANENT);
                    }
                };
                match VerifyingKey::from_pem(&text, &path.display().to_string()) {
                    Ok(k) => Some(k),
                    Err(e) => return fail(&e, EXIT_PERMANENT),
                }
            }
            (None, true) => None,
            (None, false) => {
                eprintln!(
                    "error: give the signer's public key with --key PUB.pem (or --unsigned to check an unsigned promotion's digests and verdict only)"
                );
                return super::exit(EXIT_PERMANENT);
            }
        };
        let verified = crate::promote::verify(&self.reference, self.plain_http, key.as_ref()).await;
        match verified {
            Ok(v) => {
                match self.output {
                    Format::Json => {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                    }
                    Format::Table => print_table(&v),
                }
                ExitCode::SUCCESS
            }
            Err(Failure::Storage(e)) => fail(&e, exit_code(e.is_permanent())),
            Err(e @ Failure::Reference { .. }) => fail(&e, EXIT_PERMANENT),
            Err(Failure::Uri(e)) => fail(&e, EXIT_PERMANENT),
            Err(Failure::Oci(e)) => fail(&e, exit_code(e.is_permanent())),
            Err(e) => {
                eprintln!("verification FAILED: {}", crate::error::error_chain(&e));
                super::exit(1)
            }
        }
    }
}

fn print_table(v: &Verified) {
    println!("verified: {}", v.manifest);
    println!("  model digest   sha256:{}", v.digest);
    for f in &v.subjects {
        println!("  subject        {} sha256:{}", f.name, f.sha256);
    }
    println!("  evidence       {}", v.evidence);
    match &v.keyid {
        Some(k) => println!("  signed by      keyid {k}"),
        None => println!("  signed by      (not checked: --unsigned)"),
    }
    println!("  verdict        {}", v.verdict);
    if let Some(checks) = v.checks.as_array() {
        for c in checks {
            println!(
                "  check          {} = {} (limit {}): {}",
                c["name"].as_str().unwrap_or("?"),
                c["value"],
                c["limit"],
                if c["passed"].as_bool() == Some(true) {
                    "passed"
                } else {
                    "FAILED"
                }
            );
        }
    }
    println!("  job            {} run {}", v.job, v.run_id);
    println!("  source model   {}", v.source_model);
    println!("  dataset        {}", v.dataset);
}
