//! The storage layer under faults, with real files, real mounts and a loopback HTTP stub:
//! write failures (under a regular file, over-long names, read-only and full file systems, a
//! refused S3 endpoint) are errors that say what and where, never panics; HTTP answers are
//! classified by status code; local paths with spaces and non-ASCII letters round-trip; fetch
//! refuses directories, FIFOs, devices, symlinks out of a confined directory and oversized
//! sources; uploads return (and can enforce) the digest of the bytes sent.

mod support;

use kompress::storage::{Error, FetchOptions, Location, Storage};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn none(_: u64, _: Option<u64>) {}

fn loc(p: &Path) -> Location {
    Location::parse(p.to_str().unwrap()).unwrap()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.into()
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every file under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn no_staging_left(dir: &Path) {
    let left: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|f| f.contains(kompress::storage::STAGING_MARKER))
        .collect();
    assert!(left.is_empty(), "staging files left: {left:?}");
}

/// A tmpfs mounted for one test, unmounted on drop; None (with a note) where mounting is not
/// permitted.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(opts: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIP: cannot mount a tmpfs ({opts}) here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

// ---- local writes -------------------------------------------------------------------------

#[tokio::test]
async fn writes_under_a_regular_file_fail_permanently_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = write(&dir.path().join("out"), b"a file, not a folder");
    let src = write(&dir.path().join("model.onnx"), &[7u8; 5000]);
    let s = Storage::new(None);
    for rel in ["model.onnx", "runs/r1/model.onnx", "runs/r1/report.json"] {
        let dest = loc(&blocker).join(rel);
        let e = s.put_file(&src, &dest, &none).await.unwrap_err();
        let text = e.to_string();
        assert!(e.is_permanent(), "{text}");
        assert!(text.contains(&dest.uri), "{text}");
        assert!(
            text.contains("not a directory") || text.contains("Not a directory"),
            "{text}"
        );
        let e = s
            .put_bytes(&dest, bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains(&dest.uri), "{e}");
    }
    // A fetch whose destination is under a regular file: the same, naming the source URI.
    let e = s
        .fetch(&loc(&src), &blocker.join("input/model.onnx"), None, &none)
        .await
        .unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains(&loc(&src).uri),
        "{e}"
    );
    assert_eq!(std::fs::read(&blocker).unwrap(), b"a file, not a folder");
    no_staging_left(dir.path());
}

#[tokio::test]
async fn over_long_names_fail_permanently_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(&dir.path().join("m.onnx"), &[1u8; 100]);
    let s = Storage::new(None);
    for n in [256, 300, 1000] {
        let long = "j".repeat(n);
        for dest in [
            loc(dir.path()).join(&format!("runs/{long}/model.onnx")),
            loc(dir.path()).join(&long),
        ] {
            let e = s.put_file(&src, &dest, &none).await.unwrap_err();
            assert!(e.is_permanent(), "{n}: {e}");
            assert!(e.to_string().contains(&dest.uri), "{e}");
        }
    }
    // A final name of 250 bytes still works: the staging name is cut to fit.
    let ok = loc(dir.path()).join(&"é".repeat(125));
    assert_eq!(s.put_file(&src, &ok, &none).await.unwrap(), 100);
    assert_eq!(std::fs::read(ok.local_path().unwrap()).unwrap(), [1u8; 100]);
    no_staging_left(dir.path());
}

#[tokio::test]
async fn writes_into_proc_fail_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(&dir.path().join("m.onnx"), &[1u8; 100]);
    let s = Storage::new(None);
    for dest in [
        "/proc/kompress-test/runs/model.onnx",
        "/proc/self/model.onnx",
    ] {
        let e = s
            .put_file(&src, &Location::parse(dest).unwrap(), &none)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(dest), "{e}");
    }
}

#[tokio::test]
async fn read_only_file_system_is_transient_and_says_so() {
    let Some(ro) = Tmpfs::mount("size=1m,ro") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = write(&dir.path().join("m.onnx"), &[3u8; 20_000]);
    let s = Storage::new(None);
    for dest in [
        loc(ro.path()).join("model.onnx"),
        loc(ro.path()).join("runs/r1/model.onnx"),
    ] {
        let e = s.put_file(&src, &dest, &none).await.unwrap_err();
        let text = e.to_string();
        assert!(!e.is_permanent(), "{text}");
        assert!(
            text.contains(&dest.uri) && text.to_lowercase().contains("read-only"),
            "{text}"
        );
        let e = s
            .put_bytes(&dest, bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            !e.is_permanent() && e.to_string().contains(&dest.uri),
            "{e}"
        );
    }
    let e = s
        .fetch(&loc(&src), &ro.path().join("input/m.onnx"), None, &none)
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(e.to_string().contains(&loc(&src).uri), "{e}");
}

#[tokio::test]
async fn full_disk_fails_uploads_and_fetches_transiently_leaving_nothing() {
    let Some(small) = Tmpfs::mount("size=256k") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::new(None);
    for size in [300_000usize, 1 << 20, 9 << 20] {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let src = write(&dir.path().join(format!("m{size}.onnx")), &bytes);
        // upload onto the full disk
        let dest = loc(small.path()).join(&format!("runs/r {size}/model.onnx"));
        let e = s.put_file(&src, &dest, &none).await.unwrap_err();
        let text = e.to_string();
        assert!(!e.is_permanent(), "{text}");
        assert!(text.contains(&dest.uri), "{text}");
        assert!(
            text.contains("No space left") || text.contains("disk full"),
            "{text}"
        );
        assert!(!dest.local_path().unwrap().exists());
        // fetch into a full scratch disk: an error, never a short file that "verifies"
        let target = small.path().join(format!("input/m{size}.onnx"));
        let e = s
            .fetch(&loc(&src), &target, Some(&sha(&bytes)), &none)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(!e.is_permanent(), "{text}");
        assert!(text.contains(&loc(&src).uri), "{text}");
        assert!(
            text.contains("No space left") || text.contains("disk full"),
            "{text}"
        );
        assert!(!target.exists());
        no_staging_left(small.path());
    }
    // Small writes still fit afterwards: nothing was left behind to fill the disk.
    let report = loc(small.path()).join("report.json");
    s.put_bytes(&report, bytes::Bytes::from(vec![b'x'; 100_000]))
        .await
        .unwrap();
    assert_eq!(files_under(small.path()), vec!["report.json".to_string()]);
}

// ---- local paths round-trip ----------------------------------------------------------------

#[tokio::test]
async fn local_paths_with_spaces_and_letters_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(&dir.path().join("src.onnx"), b"model bytes");
    let s = Storage::new(None);
    for rel in [
        "my models/modèle v1.onnx",
        "数据/模型 #1.onnx",
        "a%20b/c?d.onnx",
        "sp ace/ünïcödé/report.json",
    ] {
        for base in [
            dir.path().display().to_string(),
            format!("file://{}", dir.path().display()),
        ] {
            let dest = Location::parse(&base).unwrap().join(rel);
            let real = dir.path().join(rel);
            assert_eq!(dest.local_path().unwrap(), real);
            let up = s.put_file_checked(&src, &dest, None, &none).await.unwrap();
            assert_eq!(up.bytes, 11);
            assert_eq!(up.sha256, sha(b"model bytes"));
            // The URI the report would carry names the real file.
            let named = dest.uri.trim_start_matches("file://");
            assert_eq!(std::fs::read(named).unwrap(), b"model bytes", "{named}");
            assert_eq!(s.size(&dest).await.unwrap(), Some(11));
            assert_eq!(
                s.get_bytes(&dest).await.unwrap().as_deref(),
                Some(&b"model bytes"[..])
            );
            assert_eq!(
                s.sha256_of(&dest).await.unwrap(),
                Some((11, sha(b"model bytes")))
            );
            let back = dir.path().join("back").join(rel);
            let f = s.fetch(&dest, &back, None, &none).await.unwrap();
            assert_eq!((f.bytes, f.sha256), (11, sha(b"model bytes")));
        }
    }
    let listed = s.list(&loc(dir.path())).await.unwrap();
    for rel in ["my models/modèle v1.onnx", "数据/模型 #1.onnx"] {
        assert!(listed.iter().any(|l| l == rel), "{rel} in {listed:?}");
    }
    no_staging_left(dir.path());
}

// ---- fetch refusals ------------------------------------------------------------------------

#[tokio::test]
async fn a_directory_uri_is_refused_permanently_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("models/model.onnx"), b"x");
    let s = Storage::new(None);
    let e = s
        .fetch(
            &loc(&dir.path().join("models")),
            &dir.path().join("out/m.onnx"),
            None,
            &none,
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(e.is_permanent(), "{text}");
    assert!(
        text.contains("is a directory") && text.contains("model.onnx"),
        "{text}"
    );
    assert!(!dir.path().join("out/m.onnx").exists());
    no_staging_left(dir.path());
}

#[tokio::test]
async fn fifos_and_devices_are_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.bin");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = dir.path().join("zero.bin");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let s = Storage::new(None);
    for (src, kind) in [
        (fifo.clone(), "FIFO"),
        (PathBuf::from("/dev/zero"), "device"),
        (PathBuf::from("/dev/null"), "device"),
        (link.clone(), "device"),
    ] {
        let dest = dir.path().join("out/x.bin");
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            s.fetch(&loc(&src), &dest, None, &none),
        )
        .await
        .unwrap_or_else(|_| panic!("fetching {} hung", src.display()))
        .unwrap_err();
        let text = e.to_string();
        assert!(e.is_permanent(), "{text}");
        assert!(
            text.contains(kind) && text.contains(&loc(&src).uri),
            "{text}"
        );
        assert!(!dest.exists());
        let e = s.sha256_of(&loc(&src)).await.unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }
    no_staging_left(dir.path());
}

#[tokio::test]
async fn confined_fetch_refuses_symlinks_out_and_allows_subfolders() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = write(&outside.path().join("secret.txt"), b"top secret");
    let model_dir = root.path().join("model dir");
    write(&model_dir.join("model.onnx"), b"graph");
    write(&model_dir.join("data/w.bin"), &[5u8; 64]);
    write(&model_dir.join("deep/er/w2.bin"), &[6u8; 32]);
    std::os::unix::fs::symlink(&secret, model_dir.join("leak.bin")).unwrap();
    std::os::unix::fs::symlink(outside.path(), model_dir.join("out")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", model_dir.join("data/up.bin")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", model_dir.join("zero.bin")).unwrap();
    std::os::unix::fs::symlink("data/w.bin", model_dir.join("alias.bin")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", model_dir.join("dangling.bin")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let s = Storage::new(None);
    let model = loc(&model_dir.join("model.onnx"));
    let fetch = |rel: &str, max: Option<u64>| {
        let src = model.parent().join(rel);
        let dest = scratch.path().join("ext").join(rel);
        let s = s.clone();
        let root = model_dir.clone();
        async move {
            let r = s.fetch_confined(&src, &dest, &root, max, &none).await;
            (r, dest)
        }
    };
    // Subfolders work, and the destination's folders are created.
    for (rel, bytes) in [
        ("data/w.bin", vec![5u8; 64]),
        ("deep/er/w2.bin", vec![6u8; 32]),
        ("alias.bin", vec![5u8; 64]),
    ] {
        let (r, dest) = fetch(rel, Some(64)).await;
        let f = r.unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(std::fs::read(&dest).unwrap(), bytes, "{rel}");
        assert_eq!(f.sha256, sha(&bytes));
    }
    // Symlinks out, whatever they point at, are refused before anything is read.
    for rel in [
        "leak.bin",
        "out/secret.txt",
        "data/up.bin",
        "zero.bin",
        "dangling.bin",
    ] {
        let (r, dest) = fetch(rel, None).await;
        let e = r.unwrap_err();
        let text = e.to_string();
        assert!(e.is_permanent(), "{rel}: {text}");
        assert!(text.contains(&model.parent().join(rel).uri), "{text}");
        assert!(!dest.exists(), "{rel}");
        assert!(!text.contains("top secret"));
    }
    let (r, _) = fetch("leak.bin", None).await;
    assert!(matches!(r, Err(Error::Outside { .. })), "{r:?}");
    // The cap: larger than declared is refused, naming the URI.
    let (r, dest) = fetch("data/w.bin", Some(63)).await;
    let e = r.unwrap_err();
    assert!(
        e.is_permanent() && matches!(e, Error::TooLarge { max_bytes: 63, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("data/w.bin"), "{e}");
    assert!(!dest.exists() || std::fs::read(&dest).unwrap() == vec![5u8; 64]);
    no_staging_left(scratch.path());
}

#[tokio::test]
async fn capped_fetch_reads_no_more_than_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::new(None);
    for (size, cap, ok) in [
        (1000, 1000, true),
        (1000, 999, false),
        (0, 0, true),
        (5, 0, false),
    ] {
        let src = write(
            &dir.path().join(format!("in/{size}-{cap}.bin")),
            &vec![9u8; size],
        );
        let dest = dir.path().join(format!("out/{size}-{cap}.bin"));
        let r = s.fetch_capped(&loc(&src), &dest, None, cap, &none).await;
        assert_eq!(r.is_ok(), ok, "{size} capped at {cap}: {r:?}");
        if let Err(e) = r {
            assert!(
                e.is_permanent() && e.to_string().contains(&loc(&src).uri),
                "{e}"
            );
            assert!(!dest.exists());
        }
    }
    // Through the general form too, with a digest.
    let src = write(&dir.path().join("in/d.bin"), b"abc");
    let opts = FetchOptions {
        expected_sha256: Some(&sha(b"abc")),
        max_bytes: Some(3),
        confine_to: Some(&dir.path().join("in")),
    };
    s.fetch_with(&loc(&src), &dir.path().join("out/d.bin"), &opts, &none)
        .await
        .unwrap();
    no_staging_left(dir.path());
}

// ---- uploads verify what lands -------------------------------------------------------------

#[tokio::test]
async fn uploads_return_the_digest_sent_and_refuse_an_unexpected_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::new(None);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let src = write(&dir.path().join("cand/model.onnx"), &bytes);
    let dest = loc(dir.path()).join("promote/sha256-x/model.onnx");
    let up = s
        .put_file_checked(&src, &dest, Some(&sha(&bytes)), &none)
        .await
        .unwrap();
    assert_eq!(up.sha256, sha(&bytes));
    assert_eq!(up.bytes, bytes.len() as u64);
    assert_eq!(
        up.sha256,
        kompress::storage::sha256_file(&dest.local_path().unwrap()).unwrap()
    );
    // Expected something else: nothing lands, the old object stays as it was.
    let other = loc(dir.path()).join("promote/sha256-y/model.onnx");
    let e = s
        .put_file_checked(&src, &other, Some(&sha(b"evaluated bytes")), &none)
        .await
        .unwrap_err();
    assert!(
        e.is_permanent() && matches!(e, Error::UploadChecksum { .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&other.uri), "{e}");
    assert!(!other.local_path().unwrap().exists());
    let e = s
        .put_file_checked(&src, &dest, Some(&sha(b"evaluated bytes")), &none)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UploadChecksum { .. }));
    assert_eq!(std::fs::read(dest.local_path().unwrap()).unwrap(), bytes);
    no_staging_left(dir.path());
}

#[tokio::test]
async fn sha256_of_rehashes_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::new(None);
    let real = write(&dir.path().join("a/model.onnx"), b"the real model");
    // Same size, different bytes: a size check would accept it, the digest does not.
    let fake = write(&dir.path().join("b/model.onnx"), &[0u8; 14]);
    let (n, d) = s.sha256_of(&loc(&real)).await.unwrap().unwrap();
    assert_eq!((n, d.as_str()), (14, sha(b"the real model").as_str()));
    let (n, d) = s.sha256_of(&loc(&fake)).await.unwrap().unwrap();
    assert_eq!(n, 14);
    assert_ne!(d, sha(b"the real model"));
    assert_eq!(
        s.sha256_of(&loc(&dir.path().join("missing/model.onnx")))
            .await
            .unwrap(),
        None
    );
}

// ---- S3: refused endpoint, HTTP status classification, configuration -----------------------

/// A loopback "S3" that answers every request with `status` (HEAD without a body).
async fn stub(status: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = answer(&mut sock, status).await;
            });
        }
    });
    port
}

async fn answer(sock: &mut tokio::net::TcpStream, status: u16) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let body = format!(
        "<?xml version=\"1.0\"?><Error><Code>Stub{status}</Code><Message>stub says {status}</Message></Error>"
    );
    let is_head = head.starts_with("head ");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if is_head { "" } else { &body }
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// Storage for `http://127.0.0.1:port` with static test credentials and short retries.
fn s3_at(port: u16, allow_http: Option<bool>) -> Storage {
    let spec = kompress::api::StorageSpec {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        allow_http,
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    Storage::new(Some(&spec))
        .with_option("aws_access_key_id", "GKTESTKEYID")
        .with_option("aws_secret_access_key", "stub-secret-value-never-shown")
        .with_retries(1, Duration::from_secs(2))
}

/// Fetches `s3://models/m.onnx` from `s`, which must fail permanently: (the location, the
/// error).
async fn fetch_fails_permanently(s: &Storage) -> (Location, Error) {
    let l = Location::parse("s3://models/m.onnx").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = s
        .fetch(&l, &dir.path().join("m.onnx"), None, &none)
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    (l, e)
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn http_status_codes_are_classified_in_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let small = write(&dir.path().join("small.onnx"), &[1u8; 1000]);
    let big = write(&dir.path().join("big.onnx"), &vec![2u8; 9 << 20]);
    for (status, permanent, kind) in [
        (400, true, "rejected"),
        (403, true, "denied"),
        (404, true, "notfound"),
        (500, false, "transient"),
        (503, false, "transient"),
    ] {
        let port = stub(status).await;
        let s = s3_at(port, Some(true));
        let l = Location::parse("s3://bucket/models/m 1/model.onnx").unwrap();
        // (operation, its error; None where a 404 may read as "absent")
        let results: Vec<(&str, Option<Error>)> = vec![
            (
                "fetch",
                Some(
                    s.fetch(&l, &dir.path().join("f/m.onnx"), None, &none)
                        .await
                        .unwrap_err(),
                ),
            ),
            (
                "put_bytes",
                Some(
                    s.put_bytes(&l, bytes::Bytes::from_static(b"{}"))
                        .await
                        .unwrap_err(),
                ),
            ),
            (
                "put_file",
                Some(s.put_file(&small, &l, &none).await.unwrap_err()),
            ),
            (
                "put_file multipart",
                Some(s.put_file(&big, &l, &none).await.unwrap_err()),
            ),
            ("size", absent_or_err(s.size(&l).await, status)),
            ("sha256_of", absent_or_err(s.sha256_of(&l).await, status)),
            ("list", s.list(&l.parent()).await.err()),
        ];
        for (op, e) in results {
            let Some(e) = e else {
                assert_eq!(status, 404, "{op}: no error");
                continue;
            };
            let text = e.to_string();
            assert_eq!(e.is_permanent(), permanent, "{status} {op}: {text}");
            let got = match &e {
                Error::Rejected { .. } => "rejected",
                Error::Denied { .. } => "denied",
                Error::NotFound { .. } => "notfound",
                Error::Transient { .. } => "transient",
                _ => "other",
            };
            assert_eq!(got, kind, "{status} {op}: {text}");
            assert!(
                text.contains("s3://bucket/models/m 1"),
                "{status} {op}: {text}"
            );
            if matches!(status, 400 | 500 | 503) {
                assert!(text.contains(&status.to_string()), "{status} {op}: {text}");
            }
            assert!(!chain(&e).contains("stub-secret-value-never-shown"));
        }
        assert!(!dir.path().join("f/m.onnx").exists());
        no_staging_left(dir.path());
    }
}

/// `Ok(None)` (absent) is fine only for 404; anything else must be an error.
fn absent_or_err<T: std::fmt::Debug>(r: Result<Option<T>, Error>, status: u16) -> Option<Error> {
    match r {
        Err(e) => Some(e),
        Ok(None) if status == 404 => None,
        Ok(v) => panic!("{status}: expected an error, got {v:?}"),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[tokio::test]
async fn a_refused_s3_endpoint_is_transient_and_names_uri_endpoint_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let small = write(&dir.path().join("small.onnx"), &[1u8; 1000]);
    let big = write(&dir.path().join("big.onnx"), &vec![2u8; 9 << 20]);
    let port = closed_port();
    let s = s3_at(port, Some(true));
    let l = Location::parse("s3://models/p/candidates/runs/r1/model.onnx").unwrap();
    let errors = vec![
        s.put_file(&small, &l, &none).await.unwrap_err(),
        s.put_file(&big, &l, &none).await.unwrap_err(),
        s.put_bytes(&l, bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap_err(),
        s.fetch(&l, &dir.path().join("x"), None, &none)
            .await
            .unwrap_err(),
        s.size(&l).await.unwrap_err(),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!e.is_permanent(), "{text}");
        assert!(
            text.contains(&l.uri)
                && text.contains("cannot connect")
                && text.contains(&format!("127.0.0.1:{port}"))
                && text.contains("retry later"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_plain_http_endpoint_without_allow_http_says_to_set_it() {
    let s = s3_at(closed_port(), None).with_option("aws_allow_http", "false");
    let (l, e) = fetch_fails_permanently(&s).await;
    let text = e.to_string();
    assert!(
        text.contains("spec.storage.allowHttp") && text.contains(&l.uri),
        "{text}"
    );
    // allowHttp: false said explicitly: the same.
    let e = s3_at(closed_port(), Some(false))
        .size(&l)
        .await
        .unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("allowHttp"),
        "{e}"
    );
}

#[tokio::test]
async fn s3_without_any_credentials_is_permanent_and_names_the_variables() {
    const VARS: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_SKIP_SIGNATURE",
    ];
    if let Some(v) = VARS.iter().find(|v| std::env::var_os(v).is_some()) {
        eprintln!("SKIP: {v} is set in this environment");
        return;
    }
    let port = stub(500).await;
    let spec = kompress::api::StorageSpec {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        allow_http: Some(true),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    // Instance metadata at a closed loopback port: what a pod off EC2 without credentials
    // meets, without waiting for 169.254.169.254 to time out.
    let s = Storage::new(Some(&spec))
        .with_option(
            "aws_metadata_endpoint",
            &format!("http://127.0.0.1:{}", closed_port()),
        )
        .with_retries(0, Duration::from_secs(1));
    let (l, e) = fetch_fails_permanently(&s).await;
    let text = e.to_string();
    assert!(
        matches!(e, Error::NoCredentials { .. })
            && text.contains("AWS_ACCESS_KEY_ID")
            && text.contains("AWS_SECRET_ACCESS_KEY")
            && text.contains(&l.uri),
        "{text}"
    );
}

#[tokio::test]
async fn dotdot_in_a_storage_path_gets_a_plain_message() {
    for uri in ["s3://b/models/../secret", "/tmp/a/../b"] {
        let e = Location::parse(uri).unwrap_err();
        assert!(e.is_permanent());
        assert!(
            e.to_string()
                .contains("`..` is not allowed in a storage path"),
            "{e}"
        );
    }
    let s = s3_at(closed_port(), Some(true));
    let joined = Location::parse("s3://b/models/m.onnx")
        .unwrap()
        .parent()
        .join("../x.bin");
    let e = s.size(&joined).await.unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("`..` is not allowed"),
        "{e}"
    );
}

// ---- the real S3 server (hack/s3/up) -------------------------------------------------------

fn garage() -> Storage {
    let env = support::s3_env();
    let mut s = Storage::new(None).with_retries(2, Duration::from_secs(10));
    for (k, v) in &env {
        if k.starts_with("AWS_") {
            s = s.with_option(&k.to_ascii_lowercase(), v);
        }
    }
    s
}

#[tokio::test]
#[ignore = "needs the S3 server: run via `make test` (hack/s3/up)"]
async fn s3_uploads_hash_what_they_send_and_refuse_unexpected_bytes() {
    let s = garage();
    let p = support::unique("storage");
    let dir = tempfile::tempdir().unwrap();
    for size in [1000usize, (8 << 20) + 12345] {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
        let src = write(&dir.path().join(format!("m{size}")), &bytes);
        let l = Location::parse(&format!("s3://models/{p}/sp ace/modèle {size}.onnx")).unwrap();
        let up = s
            .put_file_checked(&src, &l, Some(&sha(&bytes)), &none)
            .await
            .unwrap();
        assert_eq!((up.bytes, up.sha256.clone()), (size as u64, sha(&bytes)));
        assert_eq!(
            s.sha256_of(&l).await.unwrap(),
            Some((size as u64, sha(&bytes)))
        );
        let listed = s
            .list(&Location::parse(&format!("s3://models/{p}/sp ace")).unwrap())
            .await
            .unwrap();
        assert!(
            listed.contains(&format!("modèle {size}.onnx")),
            "{listed:?}"
        );
        // Unexpected digest: nothing becomes visible.
        let other = Location::parse(&format!("s3://models/{p}/other/{size}.onnx")).unwrap();
        let e = s
            .put_file_checked(&src, &other, Some(&sha(b"else")), &none)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::UploadChecksum { .. }), "{e}");
        assert_eq!(s.size(&other).await.unwrap(), None);
        assert_eq!(s.sha256_of(&other).await.unwrap(), None);
    }
    // A missing bucket is permanent (404 or another 4xx), not "may be temporary".
    let e = s
        .put_bytes(
            &Location::parse("s3://no-such-bucket-kompress/x").unwrap(),
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
}
