//! `edge-bert-kernels`: edge-bert's own int8 and f32 ops for
//! [tract](https://github.com/sonos/tract), each a SIMD kernel with its
//! scalar reference (property tests check one against the other) wrapped
//! as a tract op. It knows tract and nothing of bundles, manifests or
//! models: the engine hands it an ONNX graph and a typed model, through
//! the one entry point [`install`].
//!
//! # Layout
//!
//! - [`cpu`]: the CPU-feature table (detected once), the override
//!   switch of each kernel family (`EDGE_BERT_QMATMUL`, `_DYNQUANT`,
//!   `_SOFTMAX`, `_GELU`, `_ATTENTION`), and tract's own kernel knobs
//!   ([`cpu::tune_tract`]: no SVE/SME kernels on aarch64).
//! - `op`: the tract op shell (`Op` + `EvalOp`), written once for all ops.
//! - [`dynquant`]: `DynamicQuantizeLinear` (range over the real tokens,
//!   quantise), AVX-512/AVX2/NEON/portable.
//! - [`qmatmul`]: the fused int8 matmul (quantise, multiply, dequantise,
//!   add the bias), AMX/VNNI/AVX2/SDOT/NEON/portable; fused into the ONNX
//!   graph.
//! - `softmax`: softmax over the last axis (polynomial `exp`, same bits
//!   on every build).
//! - `gelu`: tract's exact GELU with its element-wise passes vectorised
//!   (same bits as tract's op).
//! - `attention`: BERT's self-attention block as one op, fused into the
//!   ONNX graph.
//! - [`install`]: the entry point: fuse into the ONNX graph, then swap
//!   into the typed model.

mod attention;
pub mod cpu;
pub mod dynquant;
mod gelu;
mod op;
pub mod qmatmul;
mod softmax;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

/// Whether [`install`] fuses attention blocks on this CPU (see the
/// `EDGE_BERT_ATTENTION` switch).
pub fn attention_enabled() -> bool {
    attention::enabled()
}

/// The name of the model input that holds the attention mask (the
/// quantisers take their range over the real tokens only).
pub const MASK_INPUT: &str = "attention_mask";

/// What the kernels put into one model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Quantised linear layers fused into [`qmatmul`]'s op (0 when the
    /// family is not chosen on this CPU).
    pub qmatmuls: usize,
    /// Self-attention blocks fused into the `attention` op.
    pub attentions: usize,
    /// `DynamicQuantizeLinear` ops swapped for [`dynquant`]'s.
    pub dynquants: usize,
    /// Softmax ops swapped for the `softmax` op.
    pub softmaxes: usize,
    /// GELU ops swapped for the `gelu` op.
    pub gelus: usize,
}

/// The entry point, first step: fuses the int8 matmuls and the
/// self-attention blocks into `proto`'s graph (as each family's switch and
/// this CPU allow) and returns tract's ONNX loader with the fused ops
/// registered. The second step is [`Installed::swap`] on the typed model.
pub fn install(proto: &mut ModelProto) -> (tract_onnx::Onnx, Installed) {
    cpu::tune_tract();
    let mut done = Installed::default();
    if let Some(graph) = proto.graph.as_mut() {
        if qmatmul::chosen().is_some() {
            done.qmatmuls = qmatmul::fuse(graph);
        }
        if attention::enabled() {
            done.attentions = attention::fuse(graph);
        }
    }
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert(qmatmul::OP_TYPE, qmatmul::onnx_builder);
    onnx.op_register
        .insert(attention::OP_TYPE, attention::onnx_builder);
    (onnx, done)
}

impl Installed {
    /// The entry point, second step: swaps tract's `DynamicQuantizeLinear`,
    /// softmax and GELU ops in the decluttered `model` for edge-bert's.
    /// `mask` is the attention-mask input, if the model has one.
    pub fn swap(&mut self, model: &mut TypedModel, mask: Option<OutletId>) -> TractResult<()> {
        self.dynquants = dynquant::swap_in(model, mask)?;
        self.softmaxes = softmax::swap_in(model)?;
        self.gelus = gelu::swap_in(model)?;
        Ok(())
    }
}
