//! kompress: ONNX model compression as a declarative, gated pipeline step, run by a
//! Kubernetes operator or on one machine.
//!
//! # Layers
//! Layers only point down. A module may use modules of its own level or below, never one
//! above it, and no two modules use each other (directly or through others):
//!
//! - level 0: api, uri, error, report, usage
//! - level 1: onnx, gate, eval, passes, storage, ui, oci
//! - level 2: promote, pipeline, gc
//! - level 3: controller
//! - level 4: cli
//!
//! Level 0 is the contract: the CompressionJob types and their validation (`api`), the
//! worker↔controller wire contract (`api::wire`: termination message, exit codes, env vars),
//! the manifest reader (`api::manifest`), pure storage URIs (`uri`), error text (`error`),
//! report.json (`report`) and the process's own usage (`usage`). Level 1 is pure logic
//! (passes, gate, metrics) and the I/O edges (model files, ONNX Runtime, object stores, OCI
//! registries, the terminal). Level 2 composes one run (`pipeline`), its publication,
//! promotion and signed evidence (`promote`), and cleanup (`gc`); level 3 is the operator;
//! level 4 the command line, which alone may use everything.
//!
//! `tests/layering.rs` reads this list and every `crate::` path under `src/`, and fails naming
//! the file and line of a use that points up or closes a cycle: a new top-level module must be
//! added here before it compiles into CI.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod error;
pub mod eval;
pub mod gate;
pub mod gc;
pub mod oci;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod promote;
pub mod report;
pub mod storage;
pub mod ui;
pub mod uri;
pub mod usage;
