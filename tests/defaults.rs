//! One truth per fact: the Helm chart's defaults and versions are the binary's own consts,
//! so CI fails when one side changes without the other.

use kompress::controller::{
    ControllerConfig, DEFAULT_GPU_TOLERATION, DEFAULT_WORKER_CPU, DEFAULT_WORKER_GPU_IMAGE,
    DEFAULT_WORKER_IMAGE, DEFAULT_WORKER_MEMORY, DEFAULT_WORKER_SCRATCH, IMAGE_REPOSITORY,
    parse_toleration,
};
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A YAML scalar as the chart renders it into a flag (`2` and `"2"` alike).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_charts_worker_defaults_are_the_controllers() {
    let values = yaml("charts/kompress/values.yaml");
    let worker = &values["worker"];
    assert_eq!(scalar(&worker["defaultCpu"]), DEFAULT_WORKER_CPU);
    assert_eq!(scalar(&worker["defaultMemory"]), DEFAULT_WORKER_MEMORY);
    assert_eq!(scalar(&worker["defaultScratch"]), DEFAULT_WORKER_SCRATCH);
    let config = ControllerConfig::default();
    assert_eq!(
        (
            config.default_cpu.as_str(),
            config.default_memory.as_str(),
            config.default_scratch.as_str()
        ),
        (
            DEFAULT_WORKER_CPU,
            DEFAULT_WORKER_MEMORY,
            DEFAULT_WORKER_SCRATCH
        )
    );
    // The chart's GPU toleration is the one the binary defaults to.
    let chart: Vec<k8s_openapi::api::core::v1::Toleration> =
        serde_json::from_value(worker["gpu"]["tolerations"].clone()).unwrap();
    assert_eq!(
        chart,
        vec![parse_toleration(DEFAULT_GPU_TOLERATION).unwrap()]
    );
    assert_eq!(config.gpu_tolerations, chart);
}

#[test]
fn the_charts_image_and_app_version_are_the_binarys() {
    let values = yaml("charts/kompress/values.yaml");
    assert_eq!(values["image"]["repository"], IMAGE_REPOSITORY);
    let chart = yaml("charts/kompress/Chart.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(scalar(&chart["appVersion"]), version);
    // The chart's default worker images (controller repository, appVersion, `-gpu`) are the
    // binary's.
    assert_eq!(
        DEFAULT_WORKER_IMAGE,
        format!("{IMAGE_REPOSITORY}:{version}")
    );
    assert_eq!(
        DEFAULT_WORKER_GPU_IMAGE,
        format!("{IMAGE_REPOSITORY}:{version}-gpu")
    );
}

#[test]
fn the_images_version_label_is_the_crate_version() {
    let dockerfile = repo_file("Dockerfile");
    const LABEL: &str = "org.opencontainers.image.version=\"";
    if let Some(at) = dockerfile.find(LABEL) {
        let rest = &dockerfile[at + LABEL.len()..];
        let label = &rest[..rest.find('"').unwrap()];
        // A build argument (`${VERSION}`) is fine; a literal must be this version.
        if !label.starts_with('$') {
            assert_eq!(
                label,
                env!("CARGO_PKG_VERSION"),
                "Dockerfile's version label"
            );
        }
    }
}
