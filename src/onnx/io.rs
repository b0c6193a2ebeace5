//! Loading and saving ModelProto, with ONNX external data resolved on load and written on save.
//!
//! Tensor payloads are `Bytes` slices of the file buffer, so loading copies no weights and a
//! model of S bytes costs about S in memory until passes replace its tensors.

use super::{Error, Result, pb};
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
fn decode_file(path: &Path) -> Result<(pb::ModelProto, u64)> {
    let buf = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    if buf.is_empty() {
        return Err(Error::Empty { path: path.into() });
    }
    let len = buf.len() as u64;
    let proto = pb::ModelProto::decode(Bytes::from(buf)).map_err(|source| Error::Decode {
        path: path.into(),
        source,
    })?;
    Ok((proto, len))
}

/// Reads an ONNX model, resolving external data relative to its directory.
pub fn load(path: &Path) -> Result<Model> {
    let (mut proto, mut file_bytes) = decode_file(path)?;
    let not_onnx = |what: &str| Error::NotOnnx {
        path: path.into(),
        what: what.into(),
    };
    if proto.graph.is_none() {
        return Err(not_onnx("it has no graph"));
    }
    if proto.opset_import.is_empty() {
        return Err(not_onnx("it imports no opset"));
    }
    if proto.ir_version.unwrap_or(0) <= 0 {
        return Err(not_onnx("ir_version is missing"));
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut files: HashMap<String, Bytes> = HashMap::new();
    let mut had_external_data = false;
    let mut result = Ok(());
    for_each_tensor_mut(proto.graph.as_mut().expect("checked above"), &mut |t| {
        if result.is_err()
            || t.data_location != Some(pb::tensor_proto::DataLocation::External as i32)
        {
            return;
        }
        had_external_data = true;
        result = resolve_external(t, path, &dir, &mut files, &mut file_bytes);
    });
    result?;
    Ok(Model {
        proto,
        path: path.into(),
        file_bytes,
        had_external_data,
    })
}

fn resolve_external(
    t: &mut pb::TensorProto,
    model: &Path,
    dir: &Path,
    files: &mut HashMap<String, Bytes>,
    file_bytes: &mut u64,
) -> Result<()> {
    let tensor = t.name.clone().unwrap_or_default();
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
    let location = get("location").ok_or_else(|| bad("no `location` key".into()))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!(
            "location `{location}` must be a relative path inside the model's directory"
        )));
    }
    let parse = |key: &str| -> Result<Option<usize>> {
        get(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| bad(format!("`{key}` is not an integer: {v}")))
            })
            .transpose()
    };
    let (offset, length) = (parse("offset")?.unwrap_or(0), parse("length")?);
    if !files.contains_key(&location) {
        let data = std::fs::read(dir.join(rel)).map_err(|source| Error::ExternalData {
            model: model.into(),
            tensor: tensor.clone(),
            location: location.clone(),
            source,
        })?;
        *file_bytes += data.len() as u64;
        files.insert(location.clone(), Bytes::from(data));
    }
    let data = &files[&location];
    let end = length.map_or(data.len(), |l| offset.saturating_add(l));
    if offset > data.len() || end > data.len() {
        return Err(bad(format!(
            "bytes {offset}..{end} lie beyond the end of `{location}` ({} bytes)",
            data.len()
        )));
    }
    t.raw_data = Some(data.slice(offset..end));
    t.external_data.clear();
    t.data_location = None;
    Ok(())
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
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
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

/// The external data files a model file references (relative locations, deduplicated), read
/// without resolving them: what must be fetched from beside the model.
pub fn external_locations(path: &Path) -> Result<Vec<String>> {
    let (mut proto, _) = decode_file(path)?;
    let mut out: Vec<String> = Vec::new();
    if let Some(g) = proto.graph.as_mut() {
        for_each_tensor_mut(g, &mut |t| {
            if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
                && let Some(loc) = t
                    .external_data
                    .iter()
                    .find(|e| e.key.as_deref() == Some("location"))
                    .and_then(|e| e.value.clone())
                && !out.contains(&loc)
            {
                out.push(loc);
            }
        });
    }
    for loc in &out {
        let rel = Path::new(loc);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Error::BadExternalRef {
                model: path.into(),
                tensor: String::new(),
                what: format!(
                    "location `{loc}` must be a relative path inside the model's directory"
                ),
            });
        }
    }
    Ok(out)
}
