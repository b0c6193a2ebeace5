//! `kompress gc`: removes what a killed run left (stale scratch folders; staging files under a
//! job's local output and promotion folders).

use super::fail;
use super::scratch::SCRATCH_PREFIX;
use crate::api::manifest::read_job;
use crate::api::wire::EXIT_PERMANENT;
use crate::gc;
use crate::storage::Location;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Scratch base to clean (default: the system's temporary directory).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// A CompressionJob manifest: clean staging files under its local output.uri and
    /// output.promoteTo.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Staging files younger than this are left alone (a run may still be writing them),
    /// e.g. 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_age)]
    pub min_age: Duration,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

impl GcArgs {
    pub fn run(self) -> ExitCode {
        let (min_age, dry_run) = (self.min_age, self.dry_run);
        let mut c = gc::Collected::default();
        let base = self.scratch.unwrap_or_else(std::env::temp_dir);
        gc::scratch(&base, SCRATCH_PREFIX, min_age, dry_run, &mut c);
        if let Some(file) = self.file {
            let job = match read_job(&file) {
                Ok(j) => j,
                Err(e) => return fail(&e, EXIT_PERMANENT),
            };
            let out = &job.spec.output;
            for uri in std::iter::once(&out.uri).chain(out.promote_to.as_ref()) {
                match Location::parse(uri).map(|l| l.local_path()) {
                    Ok(Some(dir)) => gc::staging(&dir, min_age, dry_run, &mut c),
                    Ok(None) => eprintln!(
                        "{uri}: object store: interrupted multipart uploads are invisible; let the bucket's AbortIncompleteMultipartUpload lifecycle rule remove them"
                    ),
                    Err(e) => return fail(&e, EXIT_PERMANENT),
                }
            }
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        for p in c.scratch.iter().chain(&c.staging) {
            println!("{verb} {}", p.display());
        }
        println!(
            "{verb} {} scratch folder(s) and {} staging file(s); {} scratch folder(s) belong to running processes",
            c.scratch.len(),
            c.staging.len(),
            c.live
        );
        ExitCode::SUCCESS
    }
}

/// `30s`, `15m`, `1h`, `2d` (or plain seconds).
fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not an age like 30m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}`: use the units s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("90").unwrap().as_secs(), 90);
        assert_eq!(parse_age("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_age("2d").unwrap().as_secs(), 172_800);
        assert!(parse_age("1y").is_err() && parse_age("h").is_err());
        assert!(parse_age("99999999999999999d").is_err());
    }
}
