//! `edge-bert-quantize` as a library: the pieces the command line is made of.
//!
//! # Layout
//! - [`qmath`]: scale/zero-point choice, rounding, per-channel weights (pure).
//! - [`graph`]: the ONNX rewrite into tract's MatMulInteger form (pure).
//! - [`probe`]: running a model while reading intermediate tensors by name.
//!
//! The binary (`src/main.rs`) adds calibration, evaluation, the report and
//! the atomic writing of the output bundle.

pub mod graph;
pub mod probe;
pub mod qmath;
