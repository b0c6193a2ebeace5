//! `kompress gc`: what a SIGKILL can leave behind, found and removed.
//!
//! Every other exit path cleans up after itself (scratch folders on drop, panic and signal;
//! staging files on error). A process killed with SIGKILL (the OOM killer, `kill -9`, a node
//! lost) can leave:
//! - a scratch folder `kompress-<pid>-<random>` in the scratch base: removed when no process
//!   with that pid is running (on Linux; elsewhere when older than the age limit);
//! - a hidden staging file `.<name>.kompress-tmp-<pid>-<random>` beside a local output or
//!   promotion target: never at a final name, removed when older than the age limit (the
//!   output may be shared between hosts, so the pid says nothing).
//!
//! On object stores a killed multipart upload is invisible and is cleaned by the bucket's
//! lifecycle rule (`AbortIncompleteMultipartUpload`, see the README); a run folder without
//! `report.json` is an interrupted run's audit trail, never read by anyone following
//! `promoted.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use crate::storage::is_staging_name;

/// What was (or, in a dry run, would be) removed.
#[derive(Debug, Default)]
pub struct Collected {
    pub scratch: Vec<PathBuf>,
    pub staging: Vec<PathBuf>,
    /// Scratch folders kept because their process is still running.
    pub live: usize,
}

/// Whether a process with this pid is running (Linux: `/proc/<pid>` exists).
fn alive(pid: u32) -> Option<bool> {
    cfg!(target_os = "linux").then(|| Path::new(&format!("/proc/{pid}")).exists())
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

/// Stale scratch folders (`<prefix><pid>-*`) directly in `base`.
pub fn scratch(base: &Path, prefix: &str, age: Duration, dry_run: bool, out: &mut Collected) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let stale = match alive(pid) {
            Some(running) => !running && pid != std::process::id(),
            None => older_than(&path, age),
        };
        if !stale {
            out.live += 1;
            continue;
        }
        if dry_run || std::fs::remove_dir_all(&path).is_ok() {
            out.scratch.push(path);
        }
    }
}

/// Staging files older than `age` anywhere under `dir` (symlinks are not followed).
pub fn staging(dir: &Path, age: Duration, dry_run: bool, out: &mut Collected) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let path = e.path();
            if t.is_dir() {
                stack.push(path);
            } else if t.is_file()
                && is_staging_name(&e.file_name().to_string_lossy())
                && older_than(&path, age)
                && (dry_run || std::fs::remove_file(&path).is_ok())
            {
                out.staging.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scratch_of_dead_processes_goes_and_live_scratch_stays() {
        let base = tempfile::tempdir().unwrap();
        // pid 0 is never a user process; ours is running.
        let dead = base.path().join("kompress-4194304999-abc");
        let dead_pid = base.path().join("kompress-0-abc");
        let live = base
            .path()
            .join(format!("kompress-{}-xyz", std::process::id()));
        let other = base.path().join("unrelated-1-x");
        for d in [&dead, &dead_pid, &live, &other] {
            std::fs::create_dir_all(d.join("model")).unwrap();
        }
        let mut c = Collected::default();
        scratch(base.path(), "kompress-", Duration::ZERO, true, &mut c);
        if cfg!(target_os = "linux") {
            assert_eq!((c.live, c.scratch.len()), (1, 2), "{c:?}");
        }
        assert!(dead_pid.exists(), "a dry run removes nothing");
        let mut c = Collected::default();
        scratch(base.path(), "kompress-", Duration::ZERO, false, &mut c);
        assert!(live.exists() && other.exists());
        assert!(!dead_pid.exists());
    }

    #[test]
    fn staging_files_older_than_the_limit_go_and_final_names_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sha256-ab");
        std::fs::create_dir_all(&sub).unwrap();
        let staging_file = sub.join(".model.onnx.kompress-tmp-12-00ff");
        let final_file = sub.join("model.onnx");
        std::fs::write(&staging_file, b"partial").unwrap();
        std::fs::write(&final_file, b"whole").unwrap();
        let mut c = Collected::default();
        staging(dir.path(), Duration::from_secs(3600), false, &mut c);
        assert!(c.staging.is_empty() && staging_file.exists(), "too young");
        staging(dir.path(), Duration::ZERO, false, &mut c);
        assert_eq!(c.staging, vec![staging_file.clone()]);
        assert!(!staging_file.exists() && final_file.exists());
    }
}
