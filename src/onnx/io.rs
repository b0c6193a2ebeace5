//! Loading and saving ModelProto, with ONNX external data resolved on load and written on save.
//!
//! Tensor payloads are `Bytes` slices of the file buffer, so loading copies no weights and a
//! model of S bytes costs about S in memory until passes replace its tensors.

use super::{Error, Result, TensorData, checked_numel, pb};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Protobuf refuses messages of 2 GiB and more; above this estimate a model is saved with its
/// large tensors in an external data file.
const INLINE_LIMIT_BYTES: usize = 1_800_000_000;
const EXTERNAL_ALIGN: u64 = 4096;

/// A model in memory, with every tensor's payload inline (external data already read).
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: pb::ModelProto,
    /// Where it was read from (its directory resolves external data).
    pub path: PathBuf,
    /// Bytes on disk: the model file plus every external data file it referenced.
    pub file_bytes: u64,
    /// Whether the file on disk kept (some) weights in external data.
    pub had_external_data: bool,
}

impl Model {
    pub fn graph(&self) -> &pb::GraphProto {
        self.proto
            .graph
            .as_ref()
            .expect("load() guarantees a graph")
    }

    pub fn graph_mut(&mut self) -> &mut pb::GraphProto {
        self.proto
            .graph
            .as_mut()
            .expect("load() guarantees a graph")
    }
}

/// How to save a model.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Some(true): large tensors always go to `<file>.data`; Some(false): never (fails above
    /// 2 GiB); None: only when the model would not fit in one protobuf.
    pub external_data: Option<bool>,
}

/// What `save` wrote.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The model file first, then the external data file if any.
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// Reads and decodes a model file (payloads stay slices of the file buffer); returns its size.
/// `shown` is how errors name the file (the user's URI when it was fetched to scratch).
/// The most a model file (one protobuf message) can hold.
const MAX_MODEL_FILE_BYTES: u64 = (2 << 30) - 1;

fn decode_file(path: &Path, shown: &Path) -> Result<(pb::ModelProto, u64)> {
    // A regular file only (a FIFO is refused before it is opened, `/dev/zero` before a byte
    // is read), and never more than protobuf allows.
    let buf = read_small(path, MAX_MODEL_FILE_BYTES).map_err(|source| Error::Read {
        path: shown.into(),
        source,
    })?;
    if buf.is_empty() {
        return Err(Error::Empty { path: shown.into() });
    }
    let len = buf.len() as u64;
    let proto = pb::ModelProto::decode(buf).map_err(|source| Error::Decode {
        path: shown.into(),
        source,
    })?;
    Ok((proto, len))
}

/// Reads an ONNX model, resolving external data relative to its directory.
pub fn load(path: &Path) -> Result<Model> {
    load_as(path, path)
}

/// `load`, with errors naming the model as `shown` (e.g. its storage URI) instead of `path`.
///
/// External data is confined to the model's directory (subfolders allowed; no symlink out of
/// it, no special files), and no more of a file is read than its tensors declare. Every tensor's
/// payload must match its dims and type, so the passes never size anything from a lying header.
pub fn load_as(path: &Path, shown: &Path) -> Result<Model> {
    let (mut proto, mut file_bytes) = decode_file(path, shown)?;
    let not_onnx = |what: &str| Error::NotOnnx {
        path: shown.into(),
        what: what.into(),
    };
    let Some(graph) = proto.graph.as_mut() else {
        return Err(not_onnx("it has no graph"));
    };
    if proto.opset_import.is_empty() {
        return Err(not_onnx("it imports no opset"));
    }
    if proto.ir_version.unwrap_or(0) <= 0 {
        return Err(not_onnx("ir_version is missing"));
    }
    let refs = external_refs(graph, shown)?;
    let had_external_data = !refs.is_empty();
    if had_external_data {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files: HashMap<&str, Bytes> = HashMap::new();
        for f in external_files(&refs) {
            let data = read_confined(&dir, &f.location, f.max_bytes).map_err(|source| {
                Error::ExternalData {
                    model: shown.into(),
                    tensor: refs
                        .iter()
                        .find(|r| r.location == f.location)
                        .map(|r| r.tensor.clone())
                        .unwrap_or_default(),
                    location: f.location.clone(),
                    source,
                }
            })?;
            file_bytes += data.len() as u64;
            let key = refs
                .iter()
                .find(|r| r.location == f.location)
                .map(|r| r.location.as_str())
                .unwrap_or_default();
            files.insert(key, data);
        }
        let mut next = refs.iter();
        let mut result = Ok(());
        for_each_tensor_mut(graph, &mut |t| {
            if result.is_err() || !is_external(t) {
                return;
            }
            let Some(r) = next.next() else { return };
            let data = &files[r.location.as_str()];
            let end = r.offset.saturating_add(r.bytes);
            if end > data.len() as u64 {
                result = Err(Error::BadExternalRef {
                    model: shown.into(),
                    tensor: r.tensor.clone(),
                    what: format!(
                        "bytes {}..{end} lie beyond the end of `{}` ({} bytes)",
                        r.offset,
                        r.location,
                        data.len()
                    ),
                });
                return;
            }
            // Both fit in usize: end <= data.len() (checked above), a buffer in memory.
            #[allow(clippy::cast_possible_truncation)]
            let range = r.offset as usize..end as usize;
            t.raw_data = Some(data.slice(range));
            t.external_data.clear();
            t.data_location = None;
        });
        result?;
    }
    check_payloads(graph, shown)?;
    Ok(Model {
        proto,
        path: path.into(),
        file_bytes,
        had_external_data,
    })
}

fn is_external(t: &pb::TensorProto) -> bool {
    t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
}

/// One tensor's reference into an external data file.
#[derive(Debug, Clone)]
struct ExternalRef {
    tensor: String,
    /// Relative to the model's directory, `/`-separated, without `.` segments.
    location: String,
    offset: u64,
    bytes: u64,
}

/// An external data file a model references, and the most bytes its tensors can need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalFile {
    /// Relative to the model's directory, `/`-separated (subfolders allowed).
    pub location: String,
    /// The largest `offset + length` of its tensors: nothing past it is read or fetched.
    pub max_bytes: u64,
}

/// The external references of every tensor, in `for_each_tensor_mut` order, checked: the
/// location is a relative path inside the model's directory that is not the model file itself,
/// offset and length are integers, and the size follows from `length` or the tensor's dims.
fn external_refs(graph: &mut pb::GraphProto, model: &Path) -> Result<Vec<ExternalRef>> {
    let model_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut refs = Vec::new();
    let mut result = Ok(());
    for_each_tensor_mut(graph, &mut |t| {
        if result.is_ok() && is_external(t) {
            match external_ref(t, model, &model_name) {
                Ok(r) => refs.push(r),
                Err(e) => result = Err(e),
            }
        }
    });
    result.map(|_| refs)
}

fn external_ref(t: &pb::TensorProto, model: &Path, model_name: &str) -> Result<ExternalRef> {
    let tensor = t.label().to_string();
    let bad = |what: String| Error::BadExternalRef {
        model: model.into(),
        tensor: tensor.clone(),
        what,
    };
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let raw = get("location").ok_or_else(|| bad("no `location` key".into()))?;
    let location = normalise_location(&raw).ok_or_else(|| {
        bad(format!(
            "location `{raw}` must be a relative path inside the model's directory (no `..`, not absolute)"
        ))
    })?;
    if location == model_name {
        return Err(bad(format!("location `{raw}` names the model file itself")));
    }
    let parse = |key: &str| -> Result<Option<u64>> {
        get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("`{key}` is not a non-negative integer: {v}")))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let declared = checked_numel(&t.dims)
        .zip(t.dtype().size())
        .and_then(|(n, s)| n.checked_mul(s))
        .map(|b| b as u64);
    let bytes = match (parse("length")?, declared) {
        (Some(l), Some(d)) if l != d => {
            return Err(bad(format!(
                "`length` is {l} bytes but dims {:?} of {} need {d}",
                t.dims,
                t.dtype().name()
            )));
        }
        (Some(l), _) => l,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(bad(format!(
                "no `length`, and the size of dims {:?} of {} is unknown or overflows",
                t.dims,
                t.dtype().name()
            )));
        }
    };
    if offset.checked_add(bytes).is_none() {
        return Err(bad(format!("offset {offset} + length {bytes} overflows")));
    }
    Ok(ExternalRef {
        tensor,
        location,
        offset,
        bytes,
    })
}

/// `a/./b` -> `a/b`; None for absolute paths, `..`, empty paths or odd components.
fn normalise_location(raw: &str) -> Option<String> {
    let rel = Path::new(raw);
    if raw.is_empty() || rel.is_absolute() || raw.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn external_files(refs: &[ExternalRef]) -> Vec<ExternalFile> {
    let mut out: Vec<ExternalFile> = Vec::new();
    for r in refs {
        let end = r.offset + r.bytes; // checked in external_ref
        match out.iter_mut().find(|f| f.location == r.location) {
            Some(f) => f.max_bytes = f.max_bytes.max(end),
            None => out.push(ExternalFile {
                location: r.location.clone(),
                max_bytes: end,
            }),
        }
    }
    out
}

/// Reads at most `max_bytes` of `dir/rel`, which must be a regular file whose real path (all
/// symlinks resolved) lies inside `dir`: a link to a secret elsewhere, `/dev/zero` or a FIFO is
/// refused before anything is read.
pub fn read_confined(dir: &Path, rel: &str, max_bytes: u64) -> std::io::Result<Bytes> {
    use std::io::{Error as IoError, ErrorKind};
    let root = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?;
    let real = std::fs::canonicalize(root.join(rel))?;
    if !real.starts_with(&root) {
        return Err(IoError::new(
            ErrorKind::PermissionDenied,
            "it resolves (through a symlink) to a file outside the model's directory",
        ));
    }
    read_regular(&real, max_bytes)
}

/// A regular file's first `max_bytes` bytes (all of it when shorter): never reads more, and
/// refuses directories, devices and pipes (checked before opening, and again on the opened
/// file), so neither a huge file nor `/dev/zero` can size an allocation.
pub fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Bytes> {
    use std::io::{Error as IoError, ErrorKind, Read};
    let not_regular = || {
        IoError::new(
            ErrorKind::InvalidInput,
            "it is not a regular file (a directory, device or pipe)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if !f.metadata()?.is_file() {
        return Err(not_regular());
    }
    let want = len.min(max_bytes);
    let mut buf = Vec::with_capacity(usize::try_from(want).map_err(|_| not_regular())?);
    f.take(want).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// A small regular file read whole (a key, a config): refused when larger than `max_bytes`,
/// without reading past that.
pub fn read_small(path: &Path, max_bytes: u64) -> std::io::Result<Bytes> {
    let b = read_regular(path, max_bytes.saturating_add(1))?;
    if b.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    Ok(b)
}

/// Every tensor's payload agrees with its dims and element type.
fn check_payloads(graph: &mut pb::GraphProto, model: &Path) -> Result<()> {
    let mut result = Ok(());
    for_each_tensor_mut(graph, &mut |t| {
        if result.is_ok()
            && let Err(what) = payload_fits(t)
        {
            result = Err(Error::BadTensor {
                model: model.into(),
                tensor: t.label().into(),
                what,
            });
        }
    });
    result
}

fn payload_fits(t: &pb::TensorProto) -> std::result::Result<(), String> {
    use pb::tensor_proto::DataType as D;
    let numel = checked_numel(&t.dims)
        .ok_or_else(|| format!("dims {:?} are negative or their product overflows", t.dims))?;
    let dtype = t.dtype();
    if let Some(raw) = &t.raw_data {
        if let Some(need) = dtype.size().and_then(|s| numel.checked_mul(s))
            && raw.len() != need
        {
            return Err(format!(
                "raw_data holds {} bytes but dims {:?} of {} need {need}",
                raw.len(),
                t.dims,
                dtype.name()
            ));
        }
        if dtype.size().is_some() && dtype.size().and_then(|s| numel.checked_mul(s)).is_none() {
            return Err(format!("dims {:?} of {} overflow", t.dims, dtype.name()));
        }
        return Ok(());
    }
    let v = dtype.to_i32();
    let (field, have, per) = match D::try_from(v) {
        Ok(D::Float) => ("float_data", t.float_data.len(), 1),
        Ok(D::Complex64) => ("float_data", t.float_data.len(), 2),
        Ok(
            D::Int32
            | D::Int16
            | D::Int8
            | D::Uint16
            | D::Uint8
            | D::Bool
            | D::Float16
            | D::Bfloat16,
        ) => ("int32_data", t.int32_data.len(), 1),
        Ok(D::Int64) => ("int64_data", t.int64_data.len(), 1),
        Ok(D::Double) => ("double_data", t.double_data.len(), 1),
        Ok(D::Complex128) => ("double_data", t.double_data.len(), 2),
        Ok(D::Uint32 | D::Uint64) => ("uint64_data", t.uint64_data.len(), 1),
        Ok(D::String) => ("string_data", t.string_data.len(), 1),
        _ => return Ok(()), // packed or exotic types: ONNX Runtime checks them
    };
    match numel.checked_mul(per) {
        Some(need) if need == have => Ok(()),
        _ => Err(format!(
            "{field} holds {have} values but dims {:?} of {} need {numel}",
            t.dims,
            dtype.name()
        )),
    }
}

/// Visits every tensor a graph owns: initializers and tensor attributes, in subgraphs too.
pub fn for_each_tensor_mut(graph: &mut pb::GraphProto, f: &mut dyn FnMut(&mut pb::TensorProto)) {
    for t in &mut graph.initializer {
        f(t);
    }
    for node in &mut graph.node {
        for a in &mut node.attribute {
            if let Some(t) = &mut a.t {
                f(t);
            }
            for t in &mut a.tensors {
                f(t);
            }
            if let Some(g) = &mut a.g {
                for_each_tensor_mut(g, f);
            }
            for g in &mut a.graphs {
                for_each_tensor_mut(g, f);
            }
        }
    }
}

/// Writes the model atomically (temporary file, then rename); large tensors go to
/// `<file>.data` when the options ask for it or the model exceeds the protobuf limit.
pub fn save(model: &pb::ModelProto, path: &Path, opts: &SaveOptions) -> Result<Saved> {
    let mut proto = model.clone(); // cheap: payloads are reference-counted `Bytes`
    let external = opts
        .external_data
        .unwrap_or_else(|| proto.encoded_len() > INLINE_LIMIT_BYTES);
    let mut files = Vec::new();
    let mut bytes = 0;
    if external {
        let data_name = format!(
            "{}.data",
            path.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("model.onnx")
        );
        let data_path = path.with_file_name(&data_name);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut offset = 0u64;
        for_each_tensor_mut(proto.graph.as_mut().expect("model has a graph"), &mut |t| {
            let Some(raw) = t.raw_data.take_if(|r| r.len() >= 1024) else {
                return;
            };
            let pad = (EXTERNAL_ALIGN - offset % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
            if pad > 0 {
                chunks.push(Bytes::from(vec![0u8; pad as usize]));
                offset += pad;
            }
            let kv = |k: &str, v: String| pb::StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            };
            t.external_data = vec![
                kv("location", data_name.clone()),
                kv("offset", offset.to_string()),
                kv("length", raw.len().to_string()),
            ];
            t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            offset += raw.len() as u64;
            chunks.push(raw);
        });
        write_atomic(&data_path, &chunks)?;
        bytes += offset;
        files.push(data_path);
    }
    let encoded = proto.encode_to_vec();
    bytes += encoded.len() as u64;
    write_atomic(path, &[Bytes::from(encoded)])?;
    files.insert(0, path.to_path_buf());
    Ok(Saved { files, bytes })
}

/// Writes `chunks` to a temporary sibling and renames it over `path`, so a reader sees the old
/// file or the whole new one, never a part.
pub fn write_atomic(path: &Path, chunks: &[Bytes]) -> Result<()> {
    use std::io::Write;
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    check_destination(path)?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        // A new file: never one planted at the temporary name (a symlink, a FIFO).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut f = std::io::BufWriter::new(f);
        for c in chunks {
            f.write_all(c)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// A destination is written only when nothing is there or a regular file is: a symlink, a
/// device node (`/dev/full`), a FIFO or a directory at that name is refused, never replaced
/// or written through.
pub fn check_destination(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = match std::fs::symlink_metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Write {
                path: path.into(),
                source,
            });
        }
    };
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_block_device() || t.is_char_device() {
        "a device node"
    } else {
        "a socket or other special file"
    };
    Err(Error::Destination {
        path: path.into(),
        kind,
    })
}

/// The external data files a model file references (relative locations, deduplicated, with
/// the most bytes their tensors declare), read without resolving them: what must be fetched
/// from beside the model. `shown` names the model in errors.
pub fn external_locations(path: &Path, shown: &Path) -> Result<Vec<ExternalFile>> {
    let (mut proto, _) = decode_file(path, shown)?;
    match proto.graph.as_mut() {
        Some(g) => Ok(external_files(&external_refs(g, shown)?)),
        None => Ok(Vec::new()),
    }
}
