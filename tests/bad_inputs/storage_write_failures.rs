use super::*;

/// A tmpfs mounted for one test, unmounted on drop (even when the test fails).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(opts: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        match Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path())
            .output()
        {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "NOTE: cannot mount a tmpfs ({opts}): {}; this case is covered by the ENOTDIR tests only",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("NOTE: cannot run mount ({e}); covered by the ENOTDIR tests only");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Runs `case` once on a tmpfs of each size (`size=<size>` mount options), each a case of
/// its own; a size that cannot be mounted is passed over (see [`Tmpfs::mount`]).
fn on_full_disks(sizes: &[&str], case: impl Fn(&str, &Tmpfs)) {
    let mut checks = Cases::new();
    for size in sizes {
        checks.case(format!("size={size}"), || {
            if let Some(fs) = Tmpfs::mount(&format!("size={size}")) {
                case(size, &fs);
            }
        });
    }
    checks.finish();
}

/// Runs `job` with `kompress run` and `kompress worker`: both exit `code`, the message says
/// `groups`, the worker's termination message is Failed with a reason, nothing promoted.
fn both_fail(case: &Case, job: &Job, code: i32, groups: &[&str], envs: &[(&str, &str)]) {
    let yaml = job.yaml();
    let f = case.run_with(&yaml, &[], envs, 60);
    assert_eq!(f.code, Some(code), "run: {}", f.describe());
    assert_says(&f, groups);
    let (w, m) = case.worker(&yaml, envs);
    failed_message(&w, &m, code);
    let text = m["message"].as_str().unwrap_or_default();
    assert!(
        says(text, groups),
        "the termination message should say {groups:?}: {m}"
    );
    if let Some(p) = &job.promote {
        let p = PathBuf::from(p);
        if p.is_dir() {
            nothing_promoted(&p, &p);
        }
    }
    nothing_promoted(&case.out(), &case.production());
}

#[test]
fn output_under_a_regular_file_fails_naming_the_uri() {
    let case = Case::new();
    let blocker = case.path().join("blocker");
    std::fs::write(&blocker, b"a file, not a folder").unwrap();
    let mut checks = Cases::new();
    for output in [
        blocker.clone(),
        blocker.join("candidates"),
        blocker.join("a/b/c"),
    ] {
        checks.case(s(&output), || {
            let mut job = case.digits();
            job.output = s(&output);
            both_fail(
                &case,
                &job,
                NOT_A_DIRECTORY_EXIT,
                &[&s(&output), "not a directory"],
                &[],
            );
        });
    }
    checks.finish();
    assert_eq!(std::fs::read(&blocker).unwrap(), b"a file, not a folder");
}

#[test]
fn promote_to_under_a_regular_file_fails_naming_the_uri() {
    let case = Case::new();
    let blocker = case.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let mut checks = Cases::new();
    for promote in [blocker.clone(), blocker.join("production")] {
        checks.case(s(&promote), || {
            let mut job = case.digits();
            job.promote = Some(s(&promote));
            both_fail(
                &case,
                &job,
                NOT_A_DIRECTORY_EXIT,
                &[&s(&promote), "not a directory"],
                &[],
            );
        });
    }
    checks.finish();
}

#[test]
/// A job name longer than a file name may be (the run folder is named after it): the run
/// either shortens the folder name and completes soundly, or fails naming the output URI
/// (see NOT_A_DIRECTORY_EXIT); never a crash.
fn an_over_long_job_name_never_crashes() {
    let mut checks = Cases::new();
    for n in [256, 300, 1000] {
        checks.case(format!("{n} characters"), || {
            let case = Case::new();
            let mut job = case.digits();
            job.name = "j".repeat(n);
            let f = case.run_with(&job.yaml(), &["-o", "json"], &[], 60);
            if f.code != Some(0) {
                return both_fail(
                    &case,
                    &job,
                    NOT_A_DIRECTORY_EXIT,
                    &[&s(&case.out().join("candidates")), "too long|name"],
                    &[],
                );
            }
            let report: Value = serde_json::from_str(&f.stdout).unwrap();
            assert_eq!(report["job"]["name"], job.name.as_str());
            let artifact = PathBuf::from(report["result"]["artifact"]["uri"].as_str().unwrap());
            assert!(artifact.is_file(), "{}", artifact.display());
            let folder = artifact.parent().unwrap().file_name().unwrap();
            assert!(folder.len() <= 255, "{folder:?}");
            check_promote_dir(&case.production()).unwrap();
            let (w, m) = case.worker(&job.yaml(), &[]);
            assert_eq!(w.code, Some(0), "{}", w.describe());
            assert_eq!(m["phase"], "Succeeded", "{m}");
        });
    }
    checks.finish();
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

const DUMMY_AWS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "dummy-key-id"),
    ("AWS_SECRET_ACCESS_KEY", "dummy-secret-never-shown"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("KOMPRESS_STORAGE_RETRY_SECONDS", "2"),
];

#[test]
fn an_s3_endpoint_that_refuses_connections_is_transient_and_named() {
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let storage = format!("  storage: {{endpoint: {endpoint}, allowHttp: true}}\n");
    // The candidate upload is refused (model and data are local)...
    let case = Case::new();
    let mut job = case.digits();
    job.output = "s3://models/refused/candidates".into();
    job.promote = Some("s3://models/refused/production".into());
    job.extra.push_str(&storage);
    both_fail(
        &case,
        &job,
        TRANSIENT,
        &[&format!("127.0.0.1:{port}|s3://models/refused/candidates")],
        DUMMY_AWS,
    );
    // ...and so is the model's fetch.
    let case = Case::new();
    let mut job = case.digits();
    job.model = "s3://models/refused/model.onnx".into();
    job.extra.push_str(&storage);
    both_fail(
        &case,
        &job,
        TRANSIENT,
        &[&format!("127.0.0.1:{port}|s3://models/refused/model.onnx")],
        DUMMY_AWS,
    );
    let f = case.run_with(&job.yaml(), &[], DUMMY_AWS, 60);
    assert!(
        !f.stderr.contains("dummy-secret-never-shown"),
        "{}",
        f.stderr
    );
}

#[test]
fn a_full_output_disk_is_transient_and_names_the_uri() {
    // The candidate is 92 kB: 16k fits nothing, 64k not the candidate, 160k the run folder
    // but not the promoted copy, so the failure comes at a different write each time.
    on_full_disks(&["16k", "64k", "160k"], |size, fs| {
        let case = Case::new();
        let mut job = case.digits();
        job.output = s(&fs.path().join("candidates"));
        job.promote = Some(s(&fs.path().join("production")));
        both_fail(
            &case,
            &job,
            TRANSIENT,
            &[&s(fs.path()), "no space|disk full|full|space left"],
            &[],
        );
        nothing_promoted(fs.path(), &fs.path().join("production"));
        let staging = staging_files(fs.path());
        assert!(staging.is_empty(), "{size}: staging left: {staging:?}");
    });
}

#[test]
fn a_full_promote_disk_is_transient_and_promotes_nothing() {
    on_full_disks(&["8k", "64k"], |_, fs| {
        let case = Case::new();
        let mut job = case.digits();
        let promote = fs.path().join("production");
        job.promote = Some(s(&promote));
        both_fail(
            &case,
            &job,
            TRANSIENT,
            &[&s(&promote), "no space|disk full|full|space left"],
            &[],
        );
        nothing_promoted(fs.path(), &promote);
        assert!(staging_files(fs.path()).is_empty());
    });
}

#[test]
fn a_read_only_output_is_transient_and_says_read_only() {
    let Some(ro) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let case = Case::new();
    let mut checks = Cases::new();
    for (output, promote) in [
        (ro.path().join("candidates"), case.production()),
        (case.out().join("candidates"), ro.path().join("production")),
        (ro.path().to_path_buf(), ro.path().join("production")),
    ] {
        checks.case(
            format!(
                "output {}, promoteTo {}",
                output.display(),
                promote.display()
            ),
            || {
                let mut job = case.digits();
                job.output = s(&output);
                job.promote = Some(s(&promote));
                both_fail(&case, &job, TRANSIENT, &["read-only|read only"], &[]);
            },
        );
    }
    checks.finish();
}

#[test]
fn a_full_scratch_disk_is_transient_and_never_blames_the_inputs() {
    // 64k: the model (341 kB) does not fit; 400k: the model does, the dataset (143 kB)
    // does not (a truncated dataset must never be taken as the user's); 520k: both do, the
    // candidate does not.
    on_full_disks(&["64k", "400k", "520k"], |size, fs| {
        let mut case = Case::new();
        case.scratch = fs.path().to_path_buf();
        let yaml = case.digits().yaml();
        let f = case.run_with(&yaml, &[], &[], 60);
        assert_eq!(f.code, Some(TRANSIENT), "{size}: {}", f.describe());
        assert_says(&f, &["no space|disk full|full|space left"]);
        nothing_promoted(&case.out(), &case.production());
        let (w, m) = case.worker(&yaml, &[]);
        failed_message(&w, &m, TRANSIENT);
        drop(case);
    });
}

#[test]
fn a_read_only_scratch_is_transient() {
    let Some(ro) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let mut case = Case::new();
    case.scratch = ro.path().to_path_buf();
    let yaml = case.digits().yaml();
    let f = case.run_with(&yaml, &[], &[], 60);
    assert_eq!(f.code, Some(TRANSIENT), "{}", f.describe());
    assert_says(&f, &["read-only|read only"]);
    let (w, m) = case.worker(&yaml, &[]);
    failed_message(&w, &m, TRANSIENT);
}
