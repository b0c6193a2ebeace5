//! The local file system, directly with std/tokio (not object_store's LocalFileSystem, which
//! percent-encodes some names and leaves `name#N` staging files behind).
//!
//! Writes go to a hidden temporary file in the destination's directory
//! (`.<name>.kompress-tmp-<pid>-<random>`), are flushed and fsynced, checked for length,
//! renamed onto the final name, and the directory is fsynced: a reader sees the old file or
//! the whole new one, never a part. A temporary file is removed on every error (and when the
//! future is dropped); only a SIGKILL can leave one, and `is_staging_name` recognises it.

use super::{Error, Location, Result};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The marker in every staging file name.
pub const STAGING_MARKER: &str = ".kompress-tmp-";

/// Whether a file name is one of our staging files (hidden, with the marker).
pub fn is_staging_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(STAGING_MARKER)
}

fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A unique hidden staging path beside `dest`. Long names are cut so the staging name stays
/// within the usual 255-byte limit whenever the final name does.
pub(super) fn staging_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cut = name.len().min(255 - 64);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tmp = format!(
        ".{}{STAGING_MARKER}{}-{:016x}",
        &name[..cut],
        std::process::id(),
        random()
    );
    dest.with_file_name(tmp)
}

/// Removes the staging file when dropped, unless it was renamed into place.
pub(super) struct Staging {
    path: PathBuf,
    armed: bool,
}

/// Every staging file this process has open: a signal handler removes them before exiting
/// (an exit does not run the destructors that would).
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Staging {
    fn new(path: PathBuf) -> Self {
        if let Ok(mut live) = LIVE.lock() {
            live.push(path.clone());
        }
        Self { path, armed: true }
    }

    fn disarm(&mut self) {
        self.armed = false;
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| p != &self.path);
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
            self.disarm();
            // An upload that failed leaves no empty folder (e.g. `promoteTo/sha256-<d>/` on a
            // full disk); a folder holding anything else stays.
            if let Some(parent) = self.path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// Set when the process is about to exit on a signal: no new local file or folder is made.
static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `begin_shutdown` was called: writers refuse to start, so that work still running on
/// another thread does not re-create what the signal handler is removing.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(std::sync::atomic::Ordering::SeqCst)
}

/// For a signal handler, just before the process exits: refuse new local writes and remove
/// every staging file this process is writing (an exit runs no destructors). Uses `try_lock`:
/// it must not wait on a thread that will never run again.
pub fn begin_shutdown() {
    SHUTTING_DOWN.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Ok(mut live) = LIVE.try_lock() {
        for p in live.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "the process is shutting down")
}

/// Creates `dir` and its parents. When something in the way is not a directory, the error
/// says which path that is.
pub(super) async fn ensure_dir(dir: &Path) -> io::Result<()> {
    if shutting_down() {
        return Err(interrupted());
    }
    match tokio::fs::create_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) => {
            for a in dir.ancestors() {
                if let Ok(m) = tokio::fs::metadata(a).await {
                    if !m.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{} is a file, not a directory", a.display()),
                        ));
                    }
                    break;
                }
            }
            Err(e)
        }
    }
}

/// A staging file being written beside its final name.
pub(super) struct Writer {
    pub file: tokio::fs::File,
    pub staging: Staging,
    pub dest: PathBuf,
    pub written: u64,
}

impl Writer {
    pub async fn create(dest: &Path) -> io::Result<Self> {
        if let Some(parent) = dest.parent() {
            ensure_dir(parent).await?;
        }
        Self::create_in_existing(dest).await.inspect_err(|_| {
            // Leave no empty folder behind (e.g. `promoteTo/sha256-<d>/` on a full disk).
            if let Some(parent) = dest.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        })
    }

    async fn create_in_existing(dest: &Path) -> io::Result<Self> {
        if shutting_down() {
            return Err(interrupted());
        }
        let path = staging_path(dest);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(Self {
            file,
            staging: Staging::new(path),
            dest: dest.into(),
            written: 0,
        })
    }

    pub async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf).await.map_err(explain)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Flushes (tokio's file writes in the background: `flush` returns their errors), fsyncs
    /// and checks that every byte landed.
    pub async fn finish_data(&mut self) -> io::Result<()> {
        self.file.flush().await.map_err(explain)?;
        self.file.sync_all().await.map_err(explain)?;
        let len = self.file.metadata().await?.len();
        if len != self.written {
            return Err(io::Error::other(format!(
                "{} of {} bytes were written (is the disk full?)",
                len, self.written
            )));
        }
        Ok(())
    }

    /// Renames the staging file onto the final name and fsyncs the directory.
    pub async fn commit(mut self) -> io::Result<()> {
        tokio::fs::rename(&self.staging.path, &self.dest).await?;
        self.staging.disarm();
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir).await?;
        }
        Ok(())
    }
}

/// tokio reports a failed background write by its kind alone ("no storage space"); say it
/// the way the OS does.
fn explain(e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() || e.get_ref().is_some() {
        return e;
    }
    let text = match e.kind() {
        io::ErrorKind::StorageFull => "No space left on device (disk full)",
        io::ErrorKind::ReadOnlyFilesystem => "Read-only file system",
        io::ErrorKind::QuotaExceeded => "Disk quota exceeded",
        _ => return e,
    };
    io::Error::new(e.kind(), text)
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = tokio::fs::File::open(dir).await?;
    match d.sync_all().await {
        // Some file systems cannot fsync a directory; the rename is still atomic there.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Writes `data` to `loc` atomically.
pub(super) async fn put_bytes(loc: &Location, path: &Path, data: &[u8]) -> Result<()> {
    let err = |source| Error::Write {
        uri: loc.uri.clone(),
        path: path.into(),
        source,
    };
    let mut w = Writer::create(path).await.map_err(err)?;
    w.write(data).await.map_err(err)?;
    w.finish_data().await.map_err(err)?;
    w.commit().await.map_err(err)
}

/// Reads a small file whole; None when it does not exist.
pub(super) async fn get_bytes(loc: &Location, path: &Path) -> Result<Option<Vec<u8>>> {
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                uri: loc.uri.clone(),
                source,
            });
        }
        Ok(m) if !m.is_file() => return Err(not_a_file(loc, &m)),
        Ok(_) => {}
    }
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            uri: loc.uri.clone(),
            source,
        }),
    }
}

/// Size of a regular file; None when nothing (or no regular file) is there.
pub(super) async fn size(loc: &Location, path: &Path) -> Result<Option<u64>> {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Read {
            uri: loc.uri.clone(),
            source,
        }),
    }
}

/// Relative `/`-separated names of the regular files under `dir` (recursively; symlinked
/// directories are not entered; staging files are left out).
pub(super) async fn list(loc: &Location, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    scan(loc, dir, u64::MAX, &mut |l| out.push(l.key)).await?;
    out.sort();
    Ok(out)
}

/// [`list`], streamed: each regular file under `dir` goes to `visit` as it is found (no
/// entity tag: local files are identified by their content), at most `max_objects` of them
/// (false when more were left).
pub(super) async fn scan(
    loc: &Location,
    dir: &Path,
    max_objects: u64,
    visit: &mut (dyn FnMut(super::Listed) + Send),
) -> Result<bool> {
    let err = |source| Error::Read {
        uri: loc.uri.clone(),
        source,
    };
    let mut n = 0u64;
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = todo.pop() {
        let mut rd = match tokio::fs::read_dir(&d).await {
            Ok(rd) => rd,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        while let Some(entry) = rd.next_entry().await.map_err(err)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_staging_name(&name) {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry.file_type().await.map_err(err)?;
            if ft.is_dir() {
                todo.push((entry.path(), rel));
                continue;
            }
            // symlinks are followed to regular files only
            let Ok(meta) = tokio::fs::metadata(entry.path()).await else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if n == max_objects {
                return Ok(false);
            }
            n += 1;
            let modified_s = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok());
            visit(super::Listed {
                key: rel,
                size: meta.len(),
                e_tag: None,
                version: None,
                modified_s,
            });
        }
    }
    Ok(true)
}

pub(super) fn not_a_file(loc: &Location, m: &std::fs::Metadata) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let ft = m.file_type();
    let (kind, hint) = if ft.is_dir() {
        (
            "a directory",
            "give the URI of the file itself (e.g. .../model.onnx), not of its folder",
        )
    } else if ft.is_fifo() {
        ("a FIFO (named pipe)", "kompress reads regular files only")
    } else if ft.is_char_device() || ft.is_block_device() {
        ("a device", "kompress reads regular files only")
    } else if ft.is_socket() {
        ("a socket", "kompress reads regular files only")
    } else {
        ("not a regular file", "kompress reads regular files only")
    };
    Error::NotAFile {
        uri: loc.uri.clone(),
        kind,
        hint,
    }
}

/// Opens a local source for reading: a regular file only (a directory, FIFO or device is
/// refused before it is opened, so a FIFO cannot hang the read and `/dev/zero` cannot fill the
/// disk), and, with `root`, only when its real path stays inside `root`'s real path (no
/// symlink out). Returns the open file and its length.
pub(super) async fn open_source(
    loc: &Location,
    path: &Path,
    root: Option<&Path>,
    max_bytes: Option<u64>,
) -> Result<(tokio::fs::File, u64)> {
    let read_err = |source| Error::Read {
        uri: loc.uri.clone(),
        source,
    };
    let not_found = || Error::NotFound {
        uri: loc.uri.clone(),
        where_: "no such local file".into(),
        source: None,
    };
    let target = if let Some(root) = root {
        let root_real = tokio::fs::canonicalize(root)
            .await
            .map_err(|e| Error::Read {
                uri: root.display().to_string(),
                source: e,
            })?;
        let real = match tokio::fs::canonicalize(path).await {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound) => {
                // A dangling symlink and a missing file read the same to the user, but a
                // dangling link pointing out of the root is still "outside".
                return Err(match tokio::fs::read_link(path).await {
                    Ok(to) if !path.parent().unwrap_or(path).join(&to).starts_with(root) => {
                        Error::Outside {
                            uri: loc.uri.clone(),
                            resolved: to,
                            root: root.into(),
                        }
                    }
                    _ => not_found(),
                });
            }
            Err(e) => return Err(read_err(e)),
        };
        if !real.starts_with(&root_real) || real == root_real {
            return Err(Error::Outside {
                uri: loc.uri.clone(),
                resolved: real,
                root: root.into(),
            });
        }
        real
    } else {
        path.to_path_buf()
    };
    // The file opened must be the file checked (not swapped for something else meanwhile). A
    // regular file atomically replaced by another (a concurrent run renaming its
    // `promoted.json` into place) is a legitimate change: check and open again, a few times.
    let mut attempts = 0;
    let opened = loop {
        attempts += 1;
        let (file, meta, opened) = stat_then_open(loc, &target).await?;
        use std::os::unix::fs::MetadataExt;
        if opened.is_file() && opened.dev() == meta.dev() && opened.ino() == meta.ino() {
            break (file, opened);
        }
        if !opened.is_file() || attempts >= 3 {
            return Err(not_a_file(loc, &opened));
        }
    };
    let (file, opened) = opened;
    let len = opened.len();
    if let Some(max) = max_bytes
        && len > max
    {
        return Err(Error::TooLarge {
            uri: loc.uri.clone(),
            max_bytes: max,
        });
    }
    Ok((file, len))
}

/// Stats `target` (first: opening a FIFO would block until a writer comes), refuses what is
/// not a regular file, opens it and stats the handle: (file, checked, opened).
async fn stat_then_open(
    loc: &Location,
    target: &Path,
) -> Result<(tokio::fs::File, std::fs::Metadata, std::fs::Metadata)> {
    let read_err = |source| Error::Read {
        uri: loc.uri.clone(),
        source,
    };
    let meta = match tokio::fs::metadata(target).await {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Err(Error::NotFound {
                uri: loc.uri.clone(),
                where_: "no such local file".into(),
                source: None,
            });
        }
        Err(e) => return Err(read_err(e)),
    };
    if !meta.is_file() {
        return Err(not_a_file(loc, &meta));
    }
    let file = tokio::fs::File::open(target).await.map_err(read_err)?;
    let opened = file.metadata().await.map_err(read_err)?;
    Ok((file, meta, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_hidden_unique_and_short_enough() {
        let a = staging_path(Path::new("/x/model.onnx"));
        let b = staging_path(Path::new("/x/model.onnx"));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(is_staging_name(name), "{name}");
        assert!(name.starts_with(".model.onnx.kompress-tmp-"), "{name}");
        let long = "é".repeat(120); // 240 bytes
        let s = staging_path(&Path::new("/x").join(&long));
        assert!(s.file_name().unwrap().len() <= 255);
        assert!(!is_staging_name("model.onnx"));
    }

    #[tokio::test]
    async fn writes_replace_atomically_and_leave_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b/ç/report.json");
        let loc = Location::parse(path.to_str().unwrap()).unwrap();
        put_bytes(&loc, &path, b"one").await.unwrap();
        put_bytes(&loc, &path, b"two!").await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two!");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
        assert_eq!(size(&loc, &path).await.unwrap(), Some(4));
        assert_eq!(
            get_bytes(&loc, &path).await.unwrap().as_deref(),
            Some(&b"two!"[..])
        );
        let top = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(
            list(&top, dir.path()).await.unwrap(),
            vec!["a b/ç/report.json".to_string()]
        );
    }
}
