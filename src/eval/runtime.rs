//! The ONNX Runtime shared library: found without configuration, loaded once.
//!
//! ort cannot download its binaries here, and users should not have to know where the library
//! is: kompress looks at ORT_DYLIB_PATH, next to its own executable (container images), the
//! cache `hack/ort-lib` fills, and an installed `onnxruntime` Python package.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error, Clone)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime shared library not found (looked in: {looked}). Set ORT_DYLIB_PATH to \
         libonnxruntime.so, or run `hack/ort-lib` (fetches it from the PyPI wheel), or \
         `pip install onnxruntime==1.31.1`"
    )]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {reason} (kompress needs ONNX Runtime >= 1.31)")]
    Load { path: PathBuf, reason: String },
}

/// Execution provider for sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    /// From KOMPRESS_EXECUTION_PROVIDER (`cpu`, default, or `cuda`: the controller sets it
    /// for GPU pods).
    pub fn from_env() -> Self {
        match std::env::var("KOMPRESS_EXECUTION_PROVIDER").as_deref() {
            Ok("cuda") | Ok("CUDA") => Self::Cuda,
            _ => Self::Cpu,
        }
    }
}

struct Loaded {
    env: ort::environment::Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Result<Loaded, RuntimeError>> = OnceLock::new();

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push(dir.join("libonnxruntime.so"));
        out.push(dir.join("../lib/libonnxruntime.so"));
    }
    let cache = std::env::var_os("KOMPRESS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kompress")));
    if let Some(cache) = cache
        && let Ok(rd) = std::fs::read_dir(&cache)
    {
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("lib/libonnxruntime.so").exists())
            .collect();
        dirs.sort();
        out.extend(
            dirs.into_iter()
                .rev()
                .map(|d| d.join("lib/libonnxruntime.so")),
        );
    }
    // An installed `onnxruntime` wheel: only asked when nothing above is a file (starting
    // python3 costs 30 ms to over 0.5 s on a busy node, on every kompress process).
    if !out.iter().any(|p| p.is_file()) {
        out.extend(python_wheel());
    }
    out
}

/// The library in an installed `onnxruntime` wheel; find_spec locates it without importing it.
fn python_wheel() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u; s=u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s else '')"])
        .output()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !dir.is_empty()
            && let Ok(rd) = std::fs::read_dir(Path::new(&dir).join("capi"))
        {
            let mut libs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            out.extend(libs);
        }
    }
    out
}

fn load() -> Result<Loaded, RuntimeError> {
    let cands = candidates();
    let path =
        cands
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                looked: if cands.is_empty() {
                    "nowhere: no ORT_DYLIB_PATH, HOME or python3".into()
                } else {
                    cands
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
    let fail = |reason: String| RuntimeError::Load {
        path: path.clone(),
        reason,
    };
    // ort panics (rather than erroring) on some mismatched libraries; keep that a clean error.
    let built = std::panic::catch_unwind(|| -> Result<ort::environment::Environment, String> {
        let mut b = ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("kompress")
            .with_telemetry(false);
        if Provider::from_env() == Provider::Cuda {
            b = b.with_execution_providers([cuda_ep()]);
        }
        b.build().map_err(|e| e.to_string())
    })
    .map_err(|p| {
        fail(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        )
    })?
    .map_err(fail)?;
    Ok(Loaded { env: built, path })
}

#[cfg(feature = "cuda")]
fn cuda_ep() -> ort::ep::ExecutionProviderDispatch {
    ort::ep::CUDA::default().build().error_on_failure()
}

#[cfg(not(feature = "cuda"))]
fn cuda_ep() -> ort::ep::ExecutionProviderDispatch {
    // Built without the `cuda` feature: CPU only. The GPU image is built with it.
    ort::ep::CPU::default().build()
}

/// The process-wide ONNX Runtime environment (loaded on first use).
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    RUNTIME
        .get_or_init(load)
        .as_ref()
        .map(|l| &l.env)
        .map_err(Clone::clone)
}

/// The loaded library's release (`1.31.1`), from the versioned file its path resolves to
/// (`libonnxruntime.so.1.31.1`, `libonnxruntime.1.31.1.dylib`, as the release archives and
/// the PyPI wheel ship it; the build info string of those builds names no release). None
/// before the library is loaded, or when the file name carries no version.
pub fn library_version() -> Option<String> {
    let real = std::fs::canonicalize(library_path()?).ok()?;
    let name = real.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libonnxruntime.so.")
        .or_else(|| name.strip_prefix("libonnxruntime.")?.strip_suffix(".dylib"))?;
    let parts: Vec<&str> = rest.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| rest.to_string())
}

/// Where the library was loaded from (for reports).
pub fn library_path() -> Option<PathBuf> {
    RUNTIME
        .get()
        .and_then(|r| r.as_ref().ok())
        .map(|l| l.path.clone())
}
