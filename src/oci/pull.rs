//! A model read back from a registry (`spec.model.uri: oci://REGISTRY/REPOSITORY:TAG` or
//! `@sha256:<digest>`): the artifact kompress itself promotes, a CNCF ModelPack manifest with
//! one layer per file named by its `org.cncf.model.filepath` annotation. The manifest is read
//! capped and, when the reference pins a digest, checked against it; the one `.onnx` layer is
//! the model, and the files its external data names are the layers at those paths. Every
//! layer is streamed to scratch ([`Session::blob_to_file`]): no more than the manifest
//! declares, and its bytes must hash to the layer's digest, so what is compressed is exactly
//! what the manifest (and so a pinned digest) names.

use super::{
    ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, Error, FILEPATH_ANNOTATION, INDEX_MEDIA_TYPE, Session,
    TITLE_ANNOTATION, valid_digest,
};
use oci_client::Reference;
use serde_json::Value;

/// Most layers a source manifest may have (kompress pushes one per file).
const MAX_LAYERS: usize = 4096;

/// One file of a ModelPack: its path in the model's folder, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: String,
    pub digest: String,
    pub size: u64,
}

/// The files of a ModelPack manifest: the model (its one `.onnx` layer) and every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPack {
    pub model: Layer,
    pub layers: Vec<Layer>,
}

impl ModelPack {
    /// The layer at `path` (relative to the artifact's root), if there is one.
    pub fn layer(&self, path: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.path == path)
    }
}

/// A path inside an artifact as it may be written under scratch: relative, `/`-separated, no
/// empty, `.` or `..` segments, no control characters or backslashes.
fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && p.split('/').all(|s| {
            !matches!(s, "" | "." | "..") && !s.chars().any(|c| c.is_control() || c == '\\')
        })
}

/// Reads a source manifest: a ModelPack (its `artifactType` or its config's media type)
/// whose layers each name a file, one of them `.onnx`. The error says what is wrong and what
/// to push instead.
pub fn model_pack(manifest: &[u8]) -> Result<ModelPack, String> {
    let push = "push the model with kompress (spec.output.promoteTo: oci://...) or as a CNCF \
                ModelPack: one layer per file, each annotated org.cncf.model.filepath";
    let m: Value =
        serde_json::from_slice(manifest).map_err(|_| "the manifest is not JSON".to_string())?;
    if m["mediaType"].as_str() == Some(INDEX_MEDIA_TYPE) || m["manifests"].is_array() {
        return Err(format!(
            "names an image index, not one model: name a ModelPack manifest by its tag or \
             digest ({push})"
        ));
    }
    let artifact_type = m["artifactType"].as_str().unwrap_or("");
    let config_type = m["config"]["mediaType"].as_str().unwrap_or("");
    if artifact_type != ARTIFACT_TYPE && config_type != CONFIG_MEDIA_TYPE {
        let shown = |s: &str| {
            s.chars()
                .take(100)
                .collect::<String>()
                .escape_debug()
                .to_string()
        };
        return Err(format!(
            "is not a model artifact (artifactType `{}`, config mediaType `{}`; expected \
             {ARTIFACT_TYPE}): {push}",
            shown(artifact_type),
            shown(config_type)
        ));
    }
    let list = m["layers"]
        .as_array()
        .ok_or_else(|| format!("the manifest has no layers: {push}"))?;
    if list.len() > MAX_LAYERS {
        return Err(format!(
            "the manifest has {} layers, more than the {MAX_LAYERS} kompress reads",
            list.len()
        ));
    }
    let mut layers: Vec<Layer> = Vec::new();
    for (i, l) in list.iter().enumerate() {
        let digest = l["digest"].as_str().unwrap_or("");
        if !valid_digest(digest) {
            return Err(format!("layer {i} has no sha256 digest (sha256:<64 hex>)"));
        }
        let size = l["size"]
            .as_u64()
            .ok_or_else(|| format!("layer {i} ({digest}) declares no size"))?;
        let ann = &l["annotations"];
        let path = ann[FILEPATH_ANNOTATION]
            .as_str()
            .or(ann[TITLE_ANNOTATION].as_str())
            .ok_or_else(|| {
                format!("layer {i} ({digest}) names no file ({FILEPATH_ANNOTATION}): {push}")
            })?;
        if !safe_path(path) {
            return Err(format!(
                "layer {i} names the file `{}`, which is not a relative path inside the \
                 artifact (no `..`, `.`, empty or absolute segments)",
                path.chars().take(200).collect::<String>().escape_debug()
            ));
        }
        if layers.iter().any(|x| x.path == path) {
            return Err(format!("two layers name the file `{path}`"));
        }
        layers.push(Layer {
            path: path.to_string(),
            digest: digest.to_string(),
            size,
        });
    }
    let onnx: Vec<&Layer> = layers
        .iter()
        .filter(|l| l.path.to_ascii_lowercase().ends_with(".onnx"))
        .collect();
    let names = |ls: &[&Layer]| {
        ls.iter()
            .map(|l| format!("`{}`", l.path))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match onnx.as_slice() {
        [one] => Ok(ModelPack {
            model: (*one).clone(),
            layers: layers.clone(),
        }),
        [] => Err(format!(
            "has no .onnx layer (its files: {}): push the .onnx model in the artifact",
            names(&layers.iter().collect::<Vec<_>>())
        )),
        several => Err(format!(
            "has several .onnx layers ({}): a job compresses one model; push each model as \
             its own artifact",
            names(several)
        )),
    }
}

/// A source artifact opened: its session, the manifest's digest and its files.
pub struct Source {
    pub session: Session,
    pub reference: Reference,
    /// `sha256:<hex>` of the manifest read (equal to the reference's when it pins one).
    pub manifest_digest: String,
    pub pack: ModelPack,
}

impl Source {
    /// Reads the manifest `uri` names. `field` is the spec field that names it and
    /// `settings` the one that configures its registry (what messages tell the user).
    pub async fn open(
        uri: &str,
        plain_http: bool,
        field: &'static str,
        settings: &'static str,
    ) -> Result<Self, Error> {
        let reference = crate::uri::OciTarget::reference(uri)?;
        let wrap = |e: Error| match e {
            e @ (Error::Artifact { .. } | Error::Uri(_)) => e,
            e => Error::Source {
                field,
                uri: uri.into(),
                source: Box::new(e),
            },
        };
        let session = Session::for_settings(reference.registry(), plain_http, settings)
            .await
            .map_err(wrap)?;
        let (manifest, manifest_digest) = session
            .manifest(&reference)
            .await
            .map_err(wrap)?
            .ok_or_else(|| Error::Artifact {
                field,
                uri: uri.into(),
                what: format!(
                    "the registry {} has no such repository, tag or digest: check the \
                     reference (push the model first, e.g. with spec.output.promoteTo)",
                    reference.registry()
                ),
            })?;
        let pack = model_pack(&manifest).map_err(|what| Error::Artifact {
            field,
            uri: uri.into(),
            what,
        })?;
        Ok(Self {
            session,
            reference,
            manifest_digest,
            pack,
        })
    }

    /// `oci://REGISTRY/REPOSITORY[:TAG]@<manifest digest>`: what was asked for and what it
    /// resolved to (the form references use for a tag pinned to a digest).
    pub fn resolved_uri(&self) -> String {
        let r = &self.reference;
        let tag = match (r.tag(), r.digest()) {
            (Some(t), None) => format!(":{t}"),
            _ => String::new(),
        };
        format!(
            "{}{}/{}{tag}@{}",
            super::SCHEME,
            r.registry(),
            r.repository(),
            self.manifest_digest
        )
    }

    /// Streams one layer to `dest` (see [`Session::blob_to_file`]).
    pub async fn fetch(
        &self,
        layer: &Layer,
        dest: &std::path::Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Error> {
        self.session
            .blob_to_file(&self.reference, &layer.digest, layer.size, dest, progress)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(path: &str, n: u8) -> Value {
        json!({"mediaType": super::super::WEIGHT_MEDIA_TYPE,
               "digest": format!("sha256:{}", format!("{n:02x}").repeat(32)), "size": 10 + n as u64,
               "annotations": {FILEPATH_ANNOTATION: path}})
    }

    fn manifest(layers: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({"schemaVersion": 2, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": layers}))
        .unwrap()
    }

    #[test]
    fn the_onnx_layer_is_the_model_and_the_others_are_its_files() {
        let p = model_pack(&manifest(vec![
            layer("model.onnx", 1),
            layer("model.onnx.data", 2),
        ]))
        .unwrap();
        assert_eq!(p.model.path, "model.onnx");
        assert_eq!(p.model.size, 11);
        assert_eq!(p.layer("model.onnx.data").unwrap().size, 12);
        assert_eq!(p.layer("other"), None);
    }

    #[test]
    fn artifacts_kompress_cannot_read_are_refused_with_what_to_do() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "not JSON"),
            (
                serde_json::to_vec(&json!({"mediaType": INDEX_MEDIA_TYPE, "manifests": []}))
                    .unwrap(),
                "image index",
            ),
            (
                serde_json::to_vec(&json!({"artifactType": "application/vnd.acme.thing",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json"}, "layers": []}))
                .unwrap(),
                "is not a model artifact",
            ),
            (manifest(vec![layer("README.md", 1)]), "has no .onnx layer"),
            (
                manifest(vec![layer("a.onnx", 1), layer("b.onnx", 2)]),
                "several .onnx layers (`a.onnx`, `b.onnx`)",
            ),
            (
                manifest(vec![layer("../escape.onnx", 1)]),
                "not a relative path",
            ),
            (manifest(vec![layer("/abs.onnx", 1)]), "not a relative path"),
            (
                manifest(vec![layer("m.onnx", 1), layer("m.onnx", 2)]),
                "two layers",
            ),
            (
                manifest(vec![json!({"digest": "sha256:xyz", "size": 1})]),
                "no sha256 digest",
            ),
            (
                manifest(vec![
                    json!({"digest": format!("sha256:{}", "a".repeat(64)), "size": 1}),
                ]),
                "names no file",
            ),
        ];
        for (bytes, says) in cases {
            let e = model_pack(&bytes).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
        // the ModelPack config alone (no artifactType) is enough
        let mut m: Value = serde_json::from_slice(&manifest(vec![layer("m.onnx", 1)])).unwrap();
        m.as_object_mut().unwrap().remove("artifactType");
        assert!(model_pack(&serde_json::to_vec(&m).unwrap()).is_ok());
    }
}
