//! kompress: ONNX model compression as a declarative, gated pipeline step, run by a
//! Kubernetes operator or on one machine.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod eval;
pub mod gate;
pub mod gc;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod publish;
pub mod storage;
pub mod ui;
