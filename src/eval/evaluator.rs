//! A custom evaluator (`spec.evaluation.evaluator`): a program of the user's that reads the
//! original's and the candidate's compared outputs, written as `.npz` files in a scratch
//! folder, and prints named metrics as JSON on stdout (`{"metrics": {"wer": 0.12}}`), which
//! `spec.thresholds.custom` can name.
//!
//! Bounded like every other surface: a time limit (the process is killed past it), at most
//! [`MAX_STDOUT_BYTES`] of stdout, a tail of stderr for the message. Locally the command runs
//! as a child process; in a cluster an agent in the evaluator's own container (same pod, same
//! scratch volume) runs it for the worker: the worker writes a request folder, the agent the
//! result beside it ([`serve`]).

use super::Outputs;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most stdout read from an evaluator (the metrics JSON is a few hundred bytes).
pub const MAX_STDOUT_BYTES: usize = 1 << 20;
/// Bytes of stderr kept for the message when it fails.
const STDERR_TAIL: usize = 2048;
/// Most metrics one evaluator may print.
pub const MAX_METRICS: usize = 64;
/// The files of one run, in its folder (also in `KOMPRESS_ORIGINAL` / `KOMPRESS_CANDIDATE`).
pub const ORIGINAL_FILE: &str = "original.npz";
pub const CANDIDATE_FILE: &str = "candidate.npz";
pub const ENV_ORIGINAL: &str = "KOMPRESS_ORIGINAL";
pub const ENV_CANDIDATE: &str = "KOMPRESS_CANDIDATE";
/// Set on the worker in a cluster: the shared folder where the evaluator's agent serves.
pub const ENV_AGENT_DIR: &str = "KOMPRESS_EVALUATOR_AGENT_DIR";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spec.evaluation.evaluator: writing its input files in the scratch folder failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spec.evaluation.evaluator.command: `{program}` cannot be started: check that it exists and is executable"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spec.evaluation.evaluator ran past its time limit of {seconds} s and was stopped: make it faster or raise spec.evaluation.evaluator.timeoutSeconds"
    )]
    Timeout { seconds: u64 },
    #[error("spec.evaluation.evaluator failed ({status}); its stderr ends: {stderr}")]
    Failed { status: String, stderr: String },
    #[error(
        "spec.evaluation.evaluator printed more than {MAX_STDOUT_BYTES} bytes on stdout: print only the metrics JSON (logs go to stderr)"
    )]
    TooLong,
    #[error(
        "spec.evaluation.evaluator printed {what}; it must print one JSON object on stdout, {{\"metrics\": {{\"name\": number, ...}}}} (it printed: {shown})"
    )]
    Garbage { what: String, shown: String },
    #[error(
        "spec.thresholds.custom names metric `{metric}`, but spec.evaluation.evaluator printed only [{printed}]: print it, or fix the name"
    )]
    Missing { metric: String, printed: String },
    #[error(
        "spec.evaluation.evaluator: its container's agent gave no result within {seconds} s: check the evaluator container's logs"
    )]
    NoAgent { seconds: u64 },
}

/// What to run and its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluator {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// One finished (or stopped) run, as the agent hands it to the worker.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Ran {
    /// Exit code; None when a signal ended it or it could not start.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr_tail: String,
    pub timed_out: bool,
    pub too_long: bool,
    /// Why it could not start.
    pub spawn_error: Option<String>,
}

/// Writes the outputs of one model as `output` (samples first, then the output's shape per
/// sample) and, when there are labels, `labels`.
pub fn write_outputs(path: &Path, out: &Outputs, labels: Option<&[i64]>) -> Result<(), Error> {
    let per = out.per_sample.max(1);
    let n = out.values.len() / per;
    let mut shape = vec![n];
    if out.shape.iter().product::<usize>() == out.per_sample {
        shape.extend(&out.shape);
    } else {
        shape.push(out.per_sample);
    }
    let write = || -> std::io::Result<()> {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path)?);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("output.npy", opts)?;
        z.write_all(&npy("<f4", &shape, &[]))?;
        // Sample by sample: the values may be in a scratch file, larger than memory allows.
        let mut written = Ok(());
        out.values.each_row(per, n, |_, row| {
            if written.is_ok() {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                written = z.write_all(&bytes);
            }
        })?;
        written?;
        if let Some(l) = labels {
            z.start_file("labels.npy", opts)?;
            let bytes: Vec<u8> = l.iter().take(n).flat_map(|v| v.to_le_bytes()).collect();
            z.write_all(&npy("<i8", &[n.min(l.len())], &bytes))?;
        }
        z.finish()?;
        Ok(())
    };
    write().map_err(|source| Error::Write {
        path: path.into(),
        source,
    })
}

/// A `.npy` file: version 1.0 header padded to 64 bytes, then the data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

/// Runs the evaluator over the outputs in `dir` (written there first); its metrics by name.
pub fn score(
    ev: &Evaluator,
    dir: &Path,
    original: &Outputs,
    candidate: &Outputs,
    labels: Option<&[i64]>,
) -> Result<BTreeMap<String, f64>, Error> {
    let agent = std::env::var_os(ENV_AGENT_DIR).map(PathBuf::from);
    let dir = match &agent {
        // The agent's folder is shared with the evaluator's container; one request each.
        Some(a) => a.join(format!(
            "req-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        )),
        None => dir.to_path_buf(),
    };
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    write_outputs(&dir.join(ORIGINAL_FILE), original, labels)?;
    write_outputs(&dir.join(CANDIDATE_FILE), candidate, labels)?;
    let ran = match agent {
        Some(_) => ask_agent(&dir, ev.timeout)?,
        None => run_bounded(&ev.command, &dir, ev.timeout),
    };
    let _ = std::fs::remove_file(dir.join(ORIGINAL_FILE));
    let _ = std::fs::remove_file(dir.join(CANDIDATE_FILE));
    metrics_of(&ran, ev)
}

/// The metrics a run printed, or why there are none.
pub fn metrics_of(ran: &Ran, ev: &Evaluator) -> Result<BTreeMap<String, f64>, Error> {
    if let Some(e) = &ran.spawn_error {
        return Err(Error::Spawn {
            program: ev.command.first().cloned().unwrap_or_default(),
            source: std::io::Error::other(e.clone()),
        });
    }
    if ran.timed_out {
        return Err(Error::Timeout {
            seconds: ev.timeout.as_secs(),
        });
    }
    if ran.too_long {
        return Err(Error::TooLong);
    }
    if ran.code != Some(0) {
        return Err(Error::Failed {
            status: ran
                .code
                .map_or("ended by a signal".into(), |c| format!("exit code {c}")),
            stderr: ran.stderr_tail.trim().to_string(),
        });
    }
    parse(&ran.stdout)
}

/// `{"metrics": {"name": number, ...}}`: names of letters, digits, `_`, `-` and `.`, finite
/// numbers, at most [`MAX_METRICS`].
pub fn parse(stdout: &str) -> Result<BTreeMap<String, f64>, Error> {
    let shown: String = {
        let t = stdout.trim();
        let cut: String = t.chars().take(200).collect();
        let cut = cut.escape_debug().to_string();
        if t.chars().count() > 200 {
            format!("{cut}...")
        } else {
            cut
        }
    };
    let garbage = |what: &str| Error::Garbage {
        what: what.into(),
        shown: shown.clone(),
    };
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|_| garbage("something that is not JSON"))?;
    let m = v
        .get("metrics")
        .and_then(|m| m.as_object())
        .ok_or_else(|| garbage("JSON without a `metrics` object"))?;
    if m.len() > MAX_METRICS {
        return Err(garbage(&format!(
            "{} metrics (at most {MAX_METRICS})",
            m.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let ok_name = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok_name {
            return Err(garbage(&format!(
                "a metric named `{}` (names: letters, digits, _ - ., at most 63)",
                k.escape_debug()
            )));
        }
        let x = v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| garbage(&format!("metric `{k}` that is not a finite number")))?;
        out.insert(k.clone(), x);
    }
    Ok(out)
}

/// Runs `command` in `dir` with the outputs' paths in its environment: stdout read up to
/// the limit, a tail of stderr kept, the process killed past `timeout`.
pub fn run_bounded(command: &[String], dir: &Path, timeout: Duration) -> Ran {
    let Some((program, args)) = command.split_first() else {
        return Ran {
            spawn_error: Some("the command is empty".into()),
            ..Default::default()
        };
    };
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env(ENV_ORIGINAL, dir.join(ORIGINAL_FILE))
        .env(ENV_CANDIDATE, dir.join(CANDIDATE_FILE))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                spawn_error: Some(e.to_string()),
                ..Default::default()
            };
        }
    };
    // Readers on their own threads (a full pipe must not stall the child); stdout stops one
    // byte past the limit, stderr keeps its tail.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let (tx_out, rx_out) = std::sync::mpsc::channel();
    let (tx_err, rx_err) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut out)
            .take(MAX_STDOUT_BYTES as u64 + 1)
            .read_to_end(&mut buf);
        let too_long = buf.len() > MAX_STDOUT_BYTES;
        // Drain the rest so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        let _ = tx_out.send((buf, too_long));
    });
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = err.read(&mut chunk) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&chunk[..n]);
            if tail.len() > 2 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        let _ = tx_err.send(tail);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Ran {
            timed_out: true,
            ..Default::default()
        };
    };
    // The child has exited; a grandchild holding the pipes open is given a moment, no more.
    let grace = Duration::from_secs(2);
    let (stdout, too_long) = rx_out.recv_timeout(grace).unwrap_or_default();
    let tail = rx_err.recv_timeout(grace).unwrap_or_default();
    let tail = &tail[tail.len().saturating_sub(STDERR_TAIL)..];
    Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr_tail: String::from_utf8_lossy(tail).into_owned(),
        timed_out: false,
        too_long,
        spawn_error: None,
    }
}

/// The request's marker (written last by the worker) and the agent's answer (written last
/// by the agent), in a request folder.
const READY: &str = "ready";
const RESULT: &str = "result.json";
/// Written by the worker when it is done with the agent.
pub const EXIT_FILE: &str = "exit";

/// Worker side in a cluster: marks the request ready and waits for the agent's result (its
/// time limit plus a minute for the agent to notice and report).
fn ask_agent(dir: &Path, timeout: Duration) -> Result<Ran, Error> {
    std::fs::write(dir.join(READY), b"").map_err(|source| Error::Write {
        path: dir.join(READY),
        source,
    })?;
    let wait = timeout + Duration::from_secs(60);
    let deadline = Instant::now() + wait;
    let result = dir.join(RESULT);
    while Instant::now() < deadline {
        if let Ok(bytes) = read_capped(&result, (2 * MAX_STDOUT_BYTES) as u64)
            && let Ok(ran) = serde_json::from_slice::<Ran>(&bytes)
        {
            return Ok(ran);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::NoAgent {
        seconds: wait.as_secs(),
    })
}

fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Agent side (`kompress evaluator-agent`): serves requests in `dir` until the worker writes
/// [`EXIT_FILE`] there: each ready request folder without a result gets one run of `command`
/// and its result (written to a temporary name, then renamed, so the worker never reads half).
pub fn serve(dir: &Path, command: &[String], timeout: Duration) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    loop {
        if dir.join(EXIT_FILE).exists() {
            return Ok(());
        }
        let mut served = false;
        for e in std::fs::read_dir(dir)?.flatten() {
            let req = e.path();
            if !req.join(READY).exists() || req.join(RESULT).exists() {
                continue;
            }
            let ran = run_bounded(command, &req, timeout);
            let tmp = req.join(format!("{RESULT}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec(&ran).unwrap_or_default())?;
            std::fs::rename(&tmp, req.join(RESULT))?;
            served = true;
        }
        if !served {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Tells the agent (if any) that the worker is done.
pub fn release_agent() {
    if let Some(d) = std::env::var_os(ENV_AGENT_DIR) {
        let _ = std::fs::write(PathBuf::from(d).join(EXIT_FILE), b"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_json_is_parsed_and_anything_else_is_garbage() {
        let m = parse(r#"{"metrics": {"wer": 0.12, "cer": 0.03}}"#).unwrap();
        assert_eq!(m["wer"], 0.12);
        assert_eq!(m.len(), 2);
        for bad in [
            "hello",
            r#"{"wer": 0.1}"#,
            r#"{"metrics": {"wer": "low"}}"#,
            r#"{"metrics": {"a b": 1}}"#,
            r#"{"metrics": [1, 2]}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("it must print one JSON object"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_hanging_command_is_stopped_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let ran = run_bounded(
            &["sleep".into(), "30".into()],
            dir.path(),
            Duration::from_millis(300),
        );
        assert!(ran.timed_out, "{ran:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn endless_stdout_is_cut_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ran = run_bounded(
            &["sh".into(), "-c".into(), "head -c 3000000 /dev/zero".into()],
            dir.path(),
            Duration::from_secs(20),
        );
        assert!(ran.too_long, "{:?}", ran.code);
        let ev = Evaluator {
            command: vec!["sh".into()],
            timeout: Duration::from_secs(20),
        };
        assert!(matches!(metrics_of(&ran, &ev), Err(Error::TooLong)));
    }
}
