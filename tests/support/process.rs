//! Running kompress: job files, bounded and logged runs, reports, digests and what a
//! promotion must leave behind.

use super::*;

/// Writes a manifest to `dir/job.yaml` and returns its path.
pub fn write_job(dir: &Path, yaml: &str) -> String {
    let p = dir.join("job.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

/// A CompressionJob manifest.
pub fn job_yaml(
    name: &str,
    model: &str,
    dataset: &str,
    passes: &str,
    thresholds: &str,
    out: &Path,
) -> String {
    format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: {name}\nspec:\n  model:\n    uri: {model}\n  dataset:\n    uri: {dataset}\n  passes:\n{passes}\n  thresholds:\n{thresholds}\n  output:\n    uri: {}\n    promoteTo: {}\n  evaluation:\n    latency:\n      warmup: 2\n      iterations: 5\n",
        out.join("candidates").display(),
        out.join("production").display()
    )
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_kompress(args: &[&str], envs: &[(&str, &str)]) -> Ran {
    let mut c = std::process::Command::new(bin());
    c.args(args).current_dir(repo());
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().expect("spawn kompress");
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// Writes `yaml` to `dir/job.yaml` and runs it (`kompress run -o json`): it must exit 0; its
/// JSON report.
pub fn run_report(dir: &Path, yaml: &str) -> serde_json::Value {
    run_json(&write_job(dir, yaml))
}

/// Runs the job manifest at `job` (`kompress run -o json`): it must exit 0; its JSON report.
pub fn run_json(job: &str) -> serde_json::Value {
    let r = run_kompress(&["run", "-f", job, "-o", "json"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    serde_json::from_str(&r.stdout).unwrap()
}

/// The arguments of `kompress compress MODEL OUT -f JOB [--calibration DATA]`.
pub fn compress_args<'a>(
    model: &'a Path,
    out: &'a Path,
    job: &'a str,
    calibration: Option<&'a Path>,
) -> Vec<&'a str> {
    let mut args = vec![
        "compress",
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        "-f",
        job,
    ];
    if let Some(data) = calibration {
        args.extend(["--calibration", data.to_str().unwrap()]);
    }
    args
}

/// Every file under a directory (relative paths), empty when it does not exist.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// sha256 of a file, lowercase hex (panics when it cannot be read).
pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_bytes(&bytes)
}

/// How a bounded kompress process ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; None when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
    /// It ran past its limit and was killed (with its process group).
    pub timed_out: bool,
    /// Peak RSS in kB, from `/usr/bin/time -f %M`, when asked for and available.
    pub max_rss_kb: Option<u64>,
}

impl Finished {
    /// The exit code, or `-signal` when a signal ended it.
    pub fn status(&self) -> i32 {
        self.code.unwrap_or(-self.signal.unwrap_or(0))
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {:?} signal {:?} after {:.2}s{}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.signal,
            self.elapsed.as_secs_f64(),
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Whether `/usr/bin/time` (GNU time, for peak RSS) is there.
pub fn gnu_time() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/time");
    let ok = std::process::Command::new(&p)
        .args(["-f", "%M", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(p)
}

/// Runs kompress (cwd = the repo) in its own process group, stdout/stderr to files (no pipe can
/// fill up), killing the whole group after `limit`. With `measure_rss`, it runs under
/// `/usr/bin/time -f %M` when that exists.
pub fn run_bounded(
    args: &[&str],
    envs: &[(&str, &str)],
    limit: std::time::Duration,
    measure_rss: bool,
) -> Finished {
    use std::os::unix::process::ExitStatusExt;
    let logs = tempfile::tempdir().unwrap();
    let rss_p = logs.path().join("rss");
    let time = if measure_rss { gnu_time() } else { None };
    let mut c = match &time {
        Some(t) => {
            let mut c = std::process::Command::new(t);
            c.arg("-f").arg("%M").arg("-o").arg(&rss_p).arg(bin());
            c
        }
        None => std::process::Command::new(bin()),
    };
    c.args(args);
    let Logged {
        status,
        timed_out,
        stdout,
        stderr,
        elapsed,
    } = run_logged(&mut c, envs, limit);
    let rss_text = String::from_utf8_lossy(&std::fs::read(&rss_p).unwrap_or_default()).into_owned();
    // GNU time reports a child killed by a signal as "Command terminated by signal N" and exits
    // 128+N; its %M is the last line of its output file.
    let mut code = status.code();
    let mut signal = status.signal();
    if time.is_some()
        && let Some(sig) = rss_text
            .lines()
            .find_map(|l| l.strip_prefix("Command terminated by signal "))
            .and_then(|s| s.trim().parse().ok())
    {
        code = None;
        signal = Some(sig);
    }
    let max_rss_kb = rss_text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok());
    Finished {
        code,
        signal,
        stdout,
        stderr,
        elapsed,
        timed_out,
        max_rss_kb,
    }
}

/// How a [`run_logged`] process ended.
pub struct Logged {
    pub status: std::process::ExitStatus,
    /// It ran past its limit and was killed (with its process group).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Runs `c` (cwd = the repo, `envs` added) in its own process group with stdin closed and
/// stdout/stderr to files (no pipe can fill up), killing the whole group after `limit`.
pub fn run_logged(
    c: &mut std::process::Command,
    envs: &[(&str, &str)],
    limit: std::time::Duration,
) -> Logged {
    use std::os::unix::process::CommandExt;
    let logs = tempfile::tempdir().unwrap();
    let (out_p, err_p) = (logs.path().join("stdout"), logs.path().join("stderr"));
    c.current_dir(repo())
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap());
    for (k, v) in envs {
        c.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = c.spawn().expect("spawn kompress");
    let (status, timed_out) = wait_or_kill(&mut child, start, limit);
    let elapsed = start.elapsed();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Logged {
        status,
        timed_out,
        stdout: read(&out_p),
        stderr: read(&err_p),
        elapsed,
    }
}

/// Files under `dir` whose name marks a staging (temporary) upload: `kompress-tmp` or `#`.
pub fn staging_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let name = Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.contains("kompress-tmp") || name.contains('#')
        })
        .collect()
}

/// Checks what readers of a local `promoteTo` may see, whatever happened before: if
/// `promoted.json` exists it parses, and every file it lists exists beside its `uri` with
/// exactly its sha256; every `sha256-<D>/model.onnx` that is the only file of its folder (no
/// external data) hashes to D. Returns the manifest's digest, if any.
pub fn check_promote_dir(prod: &Path) -> Result<Option<String>, String> {
    for f in files_under(prod) {
        let p = Path::new(&f);
        let (Some(folder), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let folder_s = folder.display().to_string();
        if let Some(d) = folder_s.strip_prefix("sha256-")
            && name == "model.onnx"
        {
            let siblings: Vec<_> = std::fs::read_dir(prod.join(folder))
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains("kompress-tmp"))
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                // The promotions' evidence (DSSE envelopes) is kept beside the model files.
                .filter(|e| e.file_name() != "evidence")
                .collect();
            if siblings.len() == 1 {
                let got = sha256_hex(&prod.join(&f));
                if got != d {
                    return Err(format!("{f} is at a final name but hashes to {got}"));
                }
            }
        }
    }
    let mpath = prod.join("promoted.json");
    if !mpath.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&mpath).map_err(|e| e.to_string())?;
    let m: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "promoted.json does not parse ({e}): {:?}",
            String::from_utf8_lossy(&text)
        )
    })?;
    let digest = m["digest"]
        .as_str()
        .ok_or(format!("promoted.json has no digest: {m}"))?
        .to_string();
    let uri = m["uri"]
        .as_str()
        .ok_or(format!("promoted.json has no uri: {m}"))?;
    let model = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    if !model.is_file() {
        return Err(format!("promoted.json names {uri}, which is not a file"));
    }
    let folder = model.parent().unwrap();
    let files = m["files"]
        .as_array()
        .ok_or(format!("promoted.json has no files: {m}"))?;
    if files.is_empty() {
        return Err(format!("promoted.json lists no files: {m}"));
    }
    for f in files {
        let name = f["name"]
            .as_str()
            .ok_or(format!("file without name: {f}"))?;
        let want = f["sha256"]
            .as_str()
            .ok_or(format!("file without sha256: {f}"))?;
        let p = folder.join(name);
        if !p.is_file() {
            return Err(format!(
                "promoted.json lists {}, which is missing",
                p.display()
            ));
        }
        let got = sha256_hex(&p);
        if got != want {
            return Err(format!(
                "promoted.json says {} has sha256 {want}, it has {got}",
                p.display()
            ));
        }
    }
    if files.len() == 1 && files[0]["sha256"].as_str() != Some(digest.as_str()) {
        return Err(format!("digest {digest} is not the one file's sha256: {m}"));
    }
    if !folder.ends_with(format!("sha256-{digest}")) {
        return Err(format!("{uri} is not under sha256-{digest}/"));
    }
    Ok(Some(digest))
}

/// Waits for `child` (the leader of its own process group) until `limit` after `start`; past
/// it the whole group is killed. Returns its status and whether it was killed.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    start: std::time::Instant,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, bool) {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, false);
        }
        if start.elapsed() > limit {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            return (child.wait().unwrap(), true);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
