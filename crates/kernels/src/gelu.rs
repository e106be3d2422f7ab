//! tract's exact GELU with its element-wise passes vectorised.
//!
//! # Why
//!
//! BERT's feed-forward layers apply `GELU(x) = 0.5 · x · (1 + erf(x / √2))`
//! to `bucket × 1536` values per layer. tract 0.23.9 runs it (`GeluExact`)
//! as a scalar pass for `x / √2` into a freshly allocated buffer, its
//! AVX-512 `erf` kernel, and a second scalar pass for the rest. `perf
//! record -- edge-bert bench --limit 500` on the int8 model put the two
//! scalar passes at 3.4% of the run, and the erf kernel at 3.8%.
//!
//! # What
//!
//! [`FastGelu`] computes the same thing with the same operations in the
//! same order (so the same bits: no fused multiply-add, and tract's own
//! `erf` kernel), in blocks of [`BLOCK`] values on the stack, with the two
//! passes compiled for AVX-512 or AVX2 when the CPU has them (chosen at
//! run time; the operations are plain IEEE f32 ones, so every build gives
//! the same bits). [`swap_in`] puts it in place of tract's op on the
//! decluttered model, before it is optimised.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    as_op, bail, op_as_typed_op, op_out_of_plan, AxesMapping, AxisChangeConsequence, AxisOp,
    EvalContext, EvalOp, InOut, Op, StaticName, TypedOp, Validation,
};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::GeluExact;
use tract_onnx::tract_core::tract_linalg::element_wise::ElementWise;
use tract_onnx::tract_core::tract_linalg::Func;

/// Values per block: 1 KiB of f32, in L1 between the three passes.
pub const BLOCK: usize = 256;

/// `1 / √2`, computed as tract computes it.
fn inv_sqrt2() -> f32 {
    2f32.sqrt().recip()
}

#[inline(always)]
fn blocks(xs: &mut [f32], erf: &dyn ElementWise<f32>) -> TractResult<()> {
    let c = inv_sqrt2();
    let mut scratch = [0f32; BLOCK];
    for chunk in xs.chunks_mut(BLOCK) {
        let scaled = &mut scratch[..chunk.len()];
        for (s, x) in scaled.iter_mut().zip(chunk.iter()) {
            *s = *x * c;
        }
        erf.run(scaled)?;
        for (x, e) in chunk.iter_mut().zip(scaled.iter()) {
            *x = (*x * 0.5) * (*e + 1.0);
        }
    }
    Ok(())
}

/// The portable build (the reference for the others).
pub fn gelu_portable(xs: &mut [f32], erf: &dyn ElementWise<f32>) -> TractResult<()> {
    blocks(xs, erf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32], erf: &dyn ElementWise<f32>) -> TractResult<()> {
    blocks(xs, erf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(xs: &mut [f32], erf: &dyn ElementWise<f32>) -> TractResult<()> {
    blocks(xs, erf)
}

crate::cpu::x86_paths!(Gelu: Avx512 "avx512" if avx512f, Avx2 "avx2" if avx2);

/// `GELU(x)` in place, exactly as tract's `GeluExact` on f32, on the
/// fastest build this CPU has.
pub fn gelu(xs: &mut [f32]) -> TractResult<()> {
    let erf = Func::Erf.ew_f32()?;
    match path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is available, so the CPU has AVX-512F.
        Path::Avx512 => unsafe { gelu_avx512(xs, &*erf) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is available, so the CPU has AVX2.
        Path::Avx2 => unsafe { gelu_avx2(xs, &*erf) },
        Path::Portable => gelu_portable(xs, &*erf),
    }
}

/// tract op: exact GELU on an f32 tensor of any shape.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct FastGelu;

impl crate::op::Kernel for FastGelu {
    const NAME: &'static str = "EdgeBertGelu";
    const VALIDATION: Validation = Validation::Rounding;

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        crate::op::eval_f32_in_place(Self::NAME, inputs, |xs, _| gelu(xs))
    }
}

crate::op::op_shell!(FastGelu);

impl TypedOp for FastGelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        if inputs[0].datum_type != f32::datum_type() {
            bail!("EdgeBertGelu on {:?}: only f32", inputs[0]);
        }
        Ok(tvec!(inputs[0].without_value()))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        AxesMapping::natural(inputs, outputs)
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        _io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        // Element-wise: any layout change goes through.
        Ok(Some(AxisChangeConsequence::new(model, node, None, change)))
    }

    as_op!();
}

/// Replaces tract's f32 `GeluExact` with [`FastGelu`] and returns how many
/// it replaced. Run it on the decluttered typed model (where tract has
/// found the GELU pattern), before `into_optimized`.
pub fn swap_in(model: &mut TypedModel) -> TractResult<usize> {
    if !crate::cpu::enabled(crate::cpu::Family::Gelu) {
        return Ok(0);
    }
    let mut ids = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<ElementWiseOp>() else {
            continue;
        };
        if op.0.is::<GeluExact>()
            && op.1.is_none()
            && model.outlet_fact(node.inputs[0])?.datum_type == f32::datum_type()
        {
            ids.push(node.id);
        }
    }
    for &id in &ids {
        model.nodes_mut()[id].op = Box::new(FastGelu);
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// tract's own op on `xs`.
    fn tracts(xs: &[f32]) -> Vec<f32> {
        use tract_onnx::tract_core::ops::element_wise::ElementWiseMiniOp;
        let mut t = Tensor::from_shape(&[xs.len()], xs).unwrap();
        GeluExact {}.eval_in_place(&mut t, None).unwrap();
        let view = t.try_as_plain_ram().unwrap();
        view.as_slice::<f32>().unwrap().to_vec()
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -8.0f32..8.0,
            2 => -1e4f32..1e4,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => prop::num::f32::ANY,
        ]
    }

    #[test]
    fn known_values() {
        let mut xs = [0.0f32, 1.0, -1.0, 3.0, -10.0];
        gelu(&mut xs).unwrap();
        let want = [0.0, 0.841_344_7, -0.158_655_25, 2.995_95, 0.0];
        for (g, w) in xs.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{xs:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// tract's bits, on the chosen build and on the portable one, for
        /// lengths across block boundaries.
        #[test]
        fn is_tracts_gelu_bit_for_bit(xs in prop::collection::vec(value(), 0..700)) {
            let want = tracts(&xs);
            let mut fast = xs.clone();
            gelu(&mut fast).unwrap();
            let mut portable = xs.clone();
            gelu_portable(&mut portable, &*Func::Erf.ew_f32().unwrap()).unwrap();
            for ((f, p), w) in fast.iter().zip(&portable).zip(&want) {
                prop_assert!(
                    f.to_bits() == w.to_bits() || (f.is_nan() && w.is_nan()),
                    "{f} vs tract's {w}"
                );
                prop_assert!(p.to_bits() == f.to_bits() || (p.is_nan() && f.is_nan()));
            }
        }
    }
}
