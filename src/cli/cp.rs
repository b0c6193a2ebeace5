//! `kompress cp`: a copy through kompress's storage layer (fetch to a local file, or upload a
//! local file), with bytes, seconds and sha256.

use super::{CliError, fail};
use crate::api::wire::{EXIT_PERMANENT, exit_code};
use crate::storage::{self, Location, Scheme, Storage};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    pub src: String,
    pub dst: String,
}

impl CpArgs {
    pub async fn run(self) -> ExitCode {
        let (src, dst) = match (Location::parse(&self.src), Location::parse(&self.dst)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => return fail(&e, EXIT_PERMANENT),
        };
        // Never through or over a symlink, device node (`/dev/full`), FIFO or directory.
        if let Some(path) = dst.local_path()
            && let Err(e) = crate::onnx::check_destination(&path)
        {
            return fail(&e, EXIT_PERMANENT);
        }
        let storage = Storage::new(None);
        let t = std::time::Instant::now();
        let result = match (src.scheme, dst.local_path()) {
            (_, Some(path)) => storage
                .fetch(&src, &path, None, &|_, _| {})
                .await
                .map(|f| (f.bytes, f.sha256))
                .map_err(|e| match e {
                    // The copy's folder is the destination here, not a run's scratch folder.
                    storage::Error::Scratch { uri, path, source } => storage::Error::Write {
                        uri: dst.uri.clone(),
                        path,
                        source: std::io::Error::new(
                            source.kind(),
                            format!(
                                "copying `{uri}` there failed ({source}): free space on the \
                                 destination's disk or choose another destination"
                            ),
                        ),
                    },
                    e => e,
                }),
            (Scheme::Local, None) => {
                let path = src.local_path().expect("local");
                match storage.put_file(&path, &dst, &|_, _| {}).await {
                    Ok(n) => storage::sha256_file(&path)
                        .map(|h| (n, h))
                        .map_err(|source| storage::Error::Io { path, source }),
                    Err(e) => Err(e),
                }
            }
            _ => {
                return fail(
                    &CliError::Usage("kompress cp: one side must be a local path"),
                    EXIT_PERMANENT,
                );
            }
        };
        match result {
            Ok((bytes, sha)) => {
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "{}",
                    serde_json::json!({"bytes": bytes, "seconds": secs, "mib_per_s": bytes as f64 / 1048576.0 / secs, "sha256": sha})
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, exit_code(e.is_permanent())),
        }
    }
}
