//! Stage 1, `fetch -> Inputs`: the model (from object storage, a local path or an OCI
//! registry), its external data and the datasets, streamed into scratch (`model/`,
//! `dataset/`) and verified on the way: sha256 against the spec's when given, external data
//! confined to the model's folder and bounded by what its tensors read.

use super::{Error, Result};
use crate::api::Plan;
use crate::onnx;
use crate::report::InputRef;
use crate::storage::{self, Location, Storage};
use crate::ui::Ui;
use std::path::{Path, PathBuf};

/// Fetched inputs, verified, in their own scratch folders.
pub struct Inputs {
    /// The model file (its external data lies beside it, as the model names it).
    pub model_path: PathBuf,
    pub model: InputRef,
    pub external_data: Vec<InputRef>,
    pub dataset_path: PathBuf,
    pub dataset: InputRef,
    /// `spec.calibration.dataset`, fetched beside the dataset.
    pub calibration: Option<(PathBuf, InputRef)>,
    /// `spec.edgeCases`, fetched beside the dataset.
    pub edge_cases: Option<(PathBuf, InputRef)>,
}

/// Fetches `loc` to `dest` (its folders are made by the storage layer) with a progress bar.
async fn fetch_one(
    storage: &Storage,
    ui: &Ui,
    loc: &Location,
    dest: &Path,
    opts: &storage::FetchOptions<'_>,
    label: &str,
) -> Result<storage::Fetched> {
    let bar = ui.bar(label, true);
    let f = storage
        .fetch_with(loc, dest, opts, &|n, t| bar.set(n, t))
        .await?;
    bar.finish(f.bytes);
    Ok(f)
}

/// Fetch options that check a digest when the spec gives one.
fn expecting(sha256: Option<&str>) -> storage::FetchOptions<'_> {
    storage::FetchOptions {
        expected_sha256: sha256,
        ..Default::default()
    }
}

/// A file name for scratch: the URI's last segment, or `fallback` when it has none.
fn file_name_of(loc: &Location, fallback: &str) -> String {
    match loc.file_name() {
        "" | "." | ".." => fallback.into(),
        n => n.into(),
    }
}

/// Stage 1: the model, its external data and the dataset, each verified on the way.
pub async fn fetch(spec: &Plan, storage: &Storage, scratch: &Path, ui: &Ui) -> Result<Inputs> {
    let model_dir = scratch.join("model");
    let (model, model_path, external_data) = if crate::uri::OciTarget::is_oci(&spec.model.uri) {
        fetch_oci_model(spec, &model_dir, ui).await?
    } else {
        fetch_model(spec, storage, &model_dir, ui).await?
    };
    let data_loc = Location::parse(&spec.dataset.uri)?;
    let dataset_path = scratch
        .join("dataset")
        .join(file_name_of(&data_loc, "dataset.npz"));
    let data_file = fetch_one(
        storage,
        ui,
        &data_loc,
        &dataset_path,
        &expecting(spec.dataset.sha256.as_deref()),
        "dataset",
    )
    .await?;
    let calibration = match spec.calibration.as_ref().and_then(|c| c.dataset.as_ref()) {
        None => None,
        Some(c) => {
            let loc = Location::parse(&c.uri)?;
            let mut name = file_name_of(&loc, "calibration.npz");
            if dataset_path.file_name() == Some(std::ffi::OsStr::new(&name)) {
                name = format!("calibration-{name}");
            }
            let path = scratch.join("dataset").join(name);
            let f = fetch_one(
                storage,
                ui,
                &loc,
                &path,
                &expecting(c.sha256.as_deref()),
                "calibration",
            )
            .await?;
            Some((
                path,
                InputRef {
                    uri: crate::uri::redact(&loc.uri),
                    sha256: f.sha256,
                    bytes: f.bytes,
                },
            ))
        }
    };
    let edge_cases = match &spec.edge_cases {
        None => None,
        Some(e) => Some(
            fetch_beside(
                storage,
                ui,
                scratch,
                &e.uri,
                e.sha256.as_deref(),
                "edge-cases",
            )
            .await?,
        ),
    };
    Ok(Inputs {
        edge_cases,
        model,
        model_path,
        external_data,
        dataset_path,
        dataset: InputRef {
            uri: crate::uri::redact(&data_loc.uri),
            sha256: data_file.sha256,
            bytes: data_file.bytes,
        },
        calibration,
    })
}

/// The model from object storage or a local path, and its external data from beside it:
/// (its record, its path in scratch, the external data's records).
async fn fetch_model(
    spec: &Plan,
    storage: &Storage,
    model_dir: &Path,
    ui: &Ui,
) -> Result<(InputRef, PathBuf, Vec<InputRef>)> {
    let model_loc = Location::parse(&spec.model.uri)?;
    let model_path = model_dir.join(file_name_of(&model_loc, "model.onnx"));
    ui.stage(&format!("fetching {}", crate::uri::redact(&model_loc.uri)));
    let model_file = fetch_one(
        storage,
        ui,
        &model_loc,
        &model_path,
        &expecting(spec.model.sha256.as_deref()),
        "model",
    )
    .await?;
    let shown = Path::new(&model_loc.uri);
    let mut external_data = Vec::new();
    for ext in onnx::external_locations(&model_path, shown)? {
        let src = model_loc.parent().join(&ext.location);
        // External data must be regular files inside the model's directory: a symlink out of
        // it (its bytes would be published), a device or a pipe is refused; no more is read than
        // the tensors declare.
        let confine = model_loc.parent().local_path();
        let opts = storage::FetchOptions {
            expected_sha256: None,
            max_bytes: Some(ext.max_bytes),
            confine_to: confine.as_deref(),
        };
        let dest = model_dir.join(&ext.location);
        let f = fetch_one(storage, ui, &src, &dest, &opts, &ext.location).await?;
        external_data.push(InputRef {
            uri: crate::uri::redact(&src.uri),
            sha256: f.sha256,
            bytes: f.bytes,
        });
    }
    // Recorded (report.json, promoted.json, the statement): without query or userinfo.
    let model = InputRef {
        uri: crate::uri::redact(&model_loc.uri),
        sha256: model_file.sha256,
        bytes: model_file.bytes,
    };
    Ok((model, model_path, external_data))
}

/// The model from an `oci://` artifact ([`crate::oci::pull`]): its `.onnx` layer and the
/// layers its external data names, each streamed to scratch and checked against its layer
/// digest. The model's record names the manifest it resolved to
/// (`oci://REGISTRY/REPOSITORY:TAG@sha256:...`).
async fn fetch_oci_model(
    spec: &Plan,
    model_dir: &Path,
    ui: &Ui,
) -> Result<(InputRef, PathBuf, Vec<InputRef>)> {
    use crate::oci::{self, pull};
    const FIELD: &str = "spec.model.uri";
    let uri = spec.model.uri.trim();
    let plain_http = spec
        .model
        .registry
        .as_ref()
        .and_then(|r| r.plain_http)
        .unwrap_or(false);
    ui.stage(&format!("fetching {}", crate::uri::redact(uri)));
    let src = pull::Source::open(uri, plain_http, FIELD, "spec.model.registry")
        .await
        .map_err(storage::Error::from)?;
    let resolved = src.resolved_uri();
    let artifact = |what: String| -> Error {
        storage::Error::from(oci::Error::Artifact {
            field: FIELD,
            uri: uri.to_string(),
            what,
        })
        .into()
    };
    let fetch_layer = async |layer: &pull::Layer, dest: &Path, label: &str| -> Result<InputRef> {
        let bar = ui.bar(label, true);
        src.fetch(layer, dest, &|n| bar.set(n, Some(layer.size)))
            .await
            .map_err(|e| {
                storage::Error::from(oci::Error::Source {
                    field: FIELD,
                    uri: uri.to_string(),
                    source: Box::new(e),
                })
            })?;
        bar.finish(layer.size);
        Ok(InputRef {
            uri: format!("{resolved}/{}", layer.path),
            sha256: layer.digest.trim_start_matches("sha256:").to_string(),
            bytes: layer.size,
        })
    };
    let layer = &src.pack.model;
    let (folder, name) = match layer.path.rsplit_once('/') {
        Some((dir, name)) => (format!("{dir}/"), name),
        None => (String::new(), layer.path.as_str()),
    };
    let model_path = model_dir.join(name);
    // The layer's bytes must hash to its digest, so a mismatch is known before a byte is read.
    let layer_sha = layer.digest.trim_start_matches("sha256:");
    if let Some(want) = spec.model.sha256.as_deref()
        && !want.eq_ignore_ascii_case(layer_sha)
    {
        return Err(storage::Error::Checksum {
            uri: crate::uri::redact(uri),
            expected: want.to_string(),
            actual: layer_sha.to_string(),
        }
        .into());
    }
    let mut model = fetch_layer(layer, &model_path, "model").await?;
    model.uri = resolved.clone();
    let mut external_data = Vec::new();
    for ext in onnx::external_locations(&model_path, Path::new(uri))? {
        let path = format!("{folder}{}", ext.location);
        let Some(layer) = src.pack.layer(&path) else {
            return Err(artifact(format!(
                "the model names external data `{}`, and the artifact has no layer for `{path}`: \
                 push the model with its external data files",
                ext.location
            )));
        };
        if layer.size > ext.max_bytes {
            return Err(artifact(format!(
                "layer `{path}` declares {} bytes, more than the {} the model's tensors read \
                 from it",
                layer.size, ext.max_bytes
            )));
        }
        let dest = model_dir.join(&ext.location);
        external_data.push(fetch_layer(layer, &dest, &ext.location).await?);
    }
    Ok((model, model_path, external_data))
}

/// Fetches a second dataset (`label` names its bar and prefixes its scratch file name).
async fn fetch_beside(
    storage: &Storage,
    ui: &Ui,
    scratch: &Path,
    uri: &str,
    sha256: Option<&str>,
    label: &str,
) -> Result<(PathBuf, InputRef)> {
    let loc = Location::parse(uri)?;
    let name = format!("{label}-{}", file_name_of(&loc, "data.npz"));
    let path = scratch.join("dataset").join(name);
    let f = fetch_one(storage, ui, &loc, &path, &expecting(sha256), label).await?;
    Ok((
        path,
        InputRef {
            uri: crate::uri::redact(&loc.uri),
            sha256: f.sha256,
            bytes: f.bytes,
        },
    ))
}

/// Bytes of every fetched input.
pub(super) fn input_bytes(inputs: &Inputs) -> u64 {
    inputs.model.bytes
        + inputs.external_data.iter().map(|e| e.bytes).sum::<u64>()
        + inputs.dataset.bytes
        + inputs.calibration.as_ref().map_or(0, |c| c.1.bytes)
        + inputs.edge_cases.as_ref().map_or(0, |e| e.1.bytes)
}
