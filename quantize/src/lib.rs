//! `edge-bert-quantize` as a library: the pieces the command line is made of.
//!
//! # Layout
//! - [`qmath`]: scale/zero-point choice, rounding, per-channel weights (pure).
//! - [`graph`]: the ONNX rewrite into tract's MatMulInteger form (pure).
//! - [`probe`]: running a model while reading intermediate tensors by name.
//!
//! The binary (`src/main.rs`) adds calibration, evaluation and the report;
//! it reads and writes bundles through `edge-bert-model` (its `write`
//! feature: the manifest and its file sums are made there, and the output
//! directory is written atomically), never through the device binary.

pub mod graph;
pub mod probe;
pub mod qmath;
