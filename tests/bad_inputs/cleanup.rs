use super::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// When stderr shows a line containing this.
    Line(&'static str),
    /// This long after the spawn.
    After(Duration),
}

/// Starts the job (`run`, or `worker` with a termination log in the case folder), sends
/// `signal` at `trigger`, waits. Returns the exit code, the signal that ended it, stderr.
fn interrupt(
    case: &Case,
    yaml: &str,
    worker: bool,
    trigger: Trigger,
    signal: &str,
) -> (Option<i32>, Option<i32>, String) {
    let job = case.write("job.yaml", yaml);
    let log = case.path().join("termination-log");
    let mut c = Command::new(bin());
    if worker {
        c.args(["worker", "--spec-file"])
            .arg(&job)
            .arg("--termination-log")
            .arg(&log);
    } else {
        c.args(["run", "-o", "json", "-f"]).arg(&job);
    }
    c.arg("--scratch")
        .arg(&case.scratch)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let send = |pid: u32| {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
    };
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    match trigger {
        Trigger::Line(marker) => loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
            if line.contains(marker) {
                send(child.id());
                break;
            }
        },
        Trigger::After(d) => {
            std::thread::sleep(d);
            send(child.id());
        }
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    (status.code(), status.signal(), seen)
}

/// One interrupted run: the scratch base is empty afterwards, whatever the moment; the run
/// ended normally (0), as interrupted (75), or, before it had made anything, by the signal
/// itself. Returns whether it reported the interruption.
fn one(what: &str, worker: bool, trigger: Trigger, signal: &str) -> bool {
    let case = Case::new();
    let mut job = case.digits();
    job.extra = "  evaluation:\n    latency: {warmup: 5, iterations: 200}\n".into();
    let (code, sig, stderr) = interrupt(&case, &job.yaml(), worker, trigger, signal);
    let left = files_under(&case.scratch);
    let folders: Vec<_> = std::fs::read_dir(&case.scratch)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        folders.is_empty(),
        "{what}: exit {code:?} signal {sig:?}: scratch left: {folders:?} holding {left:?}\n{stderr}"
    );
    assert!(
        matches!(code, Some(0) | Some(75)) || sig.is_some(),
        "{what}: exit {code:?} signal {sig:?}\n{stderr}"
    );
    assert!(
        !matches!(code, Some(101) | Some(134) | Some(70)),
        "{what}: {stderr}"
    );
    let staging = staging_files(&case.out());
    assert!(staging.is_empty(), "{what}: staging left: {staging:?}");
    check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
    if code == Some(TRANSIENT) {
        assert!(stderr.contains("interrupted"), "{what}: {stderr}");
        if worker {
            let m: Value = serde_json::from_slice(
                &std::fs::read(case.path().join("termination-log")).unwrap(),
            )
            .unwrap();
            assert_eq!(m["phase"], "Failed", "{what}: {m}");
            assert_eq!(m["permanent"], false, "{what}: {m}");
            assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
        }
        return true;
    }
    false
}

#[test]
fn signals_at_each_stage_leave_no_scratch_and_no_staging_files() {
    let mut interrupted = 0;
    let markers = [
        "fetching",
        "dataset:",
        "baseline",
        "pass 0",
        "evaluate candidate",
        "uploading candidate",
        "upload model.onnx",
        "promoting",
    ];
    let mut checks = Cases::new();
    for (i, marker) in markers.iter().enumerate() {
        for signal in ["TERM", "INT"] {
            let worker = i % 2 == 1;
            let what = format!(
                "SIG{signal} at `{marker}` ({})",
                if worker { "worker" } else { "run" }
            );
            checks.case(what.clone(), || {
                interrupted += one(&what, worker, Trigger::Line(marker), signal) as usize;
            });
        }
    }
    checks.case("most runs were interrupted mid-run", || {
        assert!(
            interrupted >= markers.len(),
            "only {interrupted} of {} runs were interrupted mid-run",
            markers.len() * 2
        )
    });
    checks.finish();
}

#[test]
fn signals_during_start_up_leave_no_scratch() {
    // Every few milliseconds of the first 60: across the moment the scratch folder is made
    // and the signal handlers are installed.
    let mut checks = Cases::new();
    for ms in (0..60).step_by(4) {
        let signal = if ms % 8 == 0 { "TERM" } else { "INT" };
        let worker = ms % 12 == 0;
        let what = format!(
            "SIG{signal} {ms} ms after the start ({})",
            if worker { "worker" } else { "run" }
        );
        checks.case(what.clone(), || {
            one(
                &what,
                worker,
                Trigger::After(Duration::from_millis(ms)),
                signal,
            );
        });
    }
    checks.finish();
}

#[test]
fn errors_and_successes_leave_no_scratch() {
    // (Every test here checks the scratch after each run; these are the plain paths.)
    let case = Case::new();
    assert_eq!(case.run(&case.digits().yaml()).code, Some(0));
    let mut job = case.digits();
    job.dataset = s(&case.path().join("missing.npz"));
    assert_eq!(case.run(&job.yaml()).code, Some(PERMANENT));
    let mut job = case.digits();
    job.thresholds = "    minCompressionRatio: 100".into();
    assert_eq!(case.run(&job.yaml()).code, Some(0), "a rejection");
}
