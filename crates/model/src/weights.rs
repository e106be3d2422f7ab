//! One copy of each weight across the bucket plans.
//!
//! Every bucket's plan is optimised from the same decluttered model, and
//! tract's optimiser gives each plan its own copy of the weights: the packed
//! matrices baked into every `OptMatMul` and the remaining `Const` tensors
//! (the int8 embedding tables, biases, norms). With four buckets that is four
//! copies of the model in memory. [`WeightPool::share`] walks a freshly
//! optimised model and swaps each such buffer for an identical one an
//! earlier plan already holds, so the duplicate is freed before the plan runs.
//!
//! Buffers are matched by content (a hash, then a full byte comparison), so
//! a plan whose packing differs (another kernel picked for another length)
//! simply keeps its own copy: sharing never changes what a plan computes.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use tract_onnx::prelude::tract_linalg::mmm::{EagerPackedInput, MMMInputValue};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Buffers smaller than this are left alone (bias vectors, scalars).
const MIN_SHARED_BYTES: usize = 4096;

/// What [`WeightPool::share`] found in one plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShareStats {
    /// Bytes replaced by a buffer another plan already held.
    pub shared_bytes: usize,
    /// Bytes this plan added to the pool (first seen here).
    pub new_bytes: usize,
}

/// The weight buffers held by the plans built so far.
#[derive(Default)]
pub struct WeightPool {
    blobs: HashMap<u64, Vec<Arc<Blob>>>,
    tensors: HashMap<u64, Vec<Arc<Tensor>>>,
    /// Bytes held once in the pool, over all plans.
    pub held_bytes: usize,
    /// Bytes that would have been held again without the pool.
    pub saved_bytes: usize,
}

impl std::fmt::Debug for WeightPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightPool")
            .field("held_bytes", &self.held_bytes)
            .field("saved_bytes", &self.saved_bytes)
            .finish_non_exhaustive()
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.len().hash(&mut h);
    bytes.hash(&mut h);
    h.finish()
}

impl WeightPool {
    /// Swaps the large weight buffers of `model` (an optimised model) for
    /// identical ones already in the pool, and adds the others to it.
    pub fn share(&mut self, model: &mut TypedModel) -> ShareStats {
        let mut stats = ShareStats::default();
        for node in model.nodes.iter_mut() {
            if let Some(op) = node.op_as_mut::<OptMatMul>() {
                for spec in op.micro_ops.iter_mut() {
                    if let ProtoFusedSpec::AddMatMul { a, b, .. } = spec {
                        for operand in [a, b] {
                            if let MatMulOperand::Const(value) = operand {
                                self.share_packed(value, &mut stats);
                            }
                        }
                    }
                }
                continue;
            }
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            let tensor = konst.val();
            if !tensor.is_plain_ram()
                || tensor.len() * tensor.datum_type().size_of() < MIN_SHARED_BYTES
            {
                continue;
            }
            let pooled = self.pooled_tensor(tensor, &mut stats);
            if Arc::ptr_eq(&pooled, tensor) {
                continue;
            }
            let exotic = konst
                .exotic_fact()
                .map(tract_onnx::tract_core::dyn_clone::clone_box);
            if let Ok(op) = Const::new_with_opt_exotic_fact(pooled.clone(), exotic) {
                node.op = Box::new(op);
                // The output fact carries the constant too.
                for out in node.outputs.iter_mut() {
                    if out.fact.konst.is_some() {
                        out.fact.konst = Some(pooled.clone());
                    }
                }
            }
        }
        stats
    }

    fn share_packed(&mut self, value: &mut Box<dyn MMMInputValue>, stats: &mut ShareStats) {
        let Some(eager) = value.downcast_mut::<EagerPackedInput>() else {
            return;
        };
        let bytes = eager.packed.as_bytes();
        if bytes.len() < MIN_SHARED_BYTES {
            return;
        }
        let key = hash_bytes(bytes);
        let same = self.blobs.entry(key).or_default();
        if let Some(found) = same.iter().find(|b| {
            b.layout() == eager.packed.layout() && b.as_bytes() == eager.packed.as_bytes()
        }) {
            if !Arc::ptr_eq(found, &eager.packed) {
                stats.shared_bytes += bytes.len();
                self.saved_bytes += bytes.len();
                eager.packed = found.clone();
            }
        } else {
            stats.new_bytes += bytes.len();
            self.held_bytes += bytes.len();
            same.push(eager.packed.clone());
        }
    }

    fn pooled_tensor(&mut self, tensor: &Arc<Tensor>, stats: &mut ShareStats) -> Arc<Tensor> {
        // Bit-for-bit equality: `Tensor`'s own `==` compares values, and
        // would call 0.0 and -0.0 the same.
        let bytes = tensor.as_bytes();
        let key = hash_bytes(bytes);
        let same = self.tensors.entry(key).or_default();
        let found = same.iter().find(|t| {
            t.datum_type() == tensor.datum_type()
                && t.shape() == tensor.shape()
                && t.as_bytes() == bytes
        });
        let bytes = bytes.len();
        if let Some(found) = found {
            if !Arc::ptr_eq(found, tensor) {
                stats.shared_bytes += bytes;
                self.saved_bytes += bytes;
            }
            return found.clone();
        }
        stats.new_bytes += bytes;
        self.held_bytes += bytes;
        same.push(tensor.clone());
        tensor.clone()
    }
}
