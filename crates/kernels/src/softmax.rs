//! A faster softmax over the last axis for tract's f32 attention.
//!
//! # Why
//!
//! With the int8 matmuls on edge-bert's own kernel (`qmatmul`), `perf
//! record --call-graph dwarf -- edge-bert bench --limit 150` put tract's
//! `Softmax` at 22% of the int8 run, about as much as all the matmuls
//! (25%). The attention rows are short (one per query token, as long as
//! the bucket), and tract 0.23.9 on x86 runs each one through three
//! generic reduce/map kernels that copy the row into a thread-local buffer
//! of 64 floats each time.
//!
//! # What
//!
//! [`FastSoftmax`] is a tract op for `Softmax` over the last axis of an f32
//! tensor; [`swap_in`] puts it in place of tract's on the typed model,
//! before it is optimised. Each row: its maximum, then `e = exp(x - max)`
//! and their sum (in eight lanes, added in a fixed order), then
//! `e · (1 / sum)`, in place. [`exp`] is a polynomial
//! (degree 6 on `[-ln 2 / 2, ln 2 / 2]`, relative error under 3e-7 against
//! f64) whose operations are all plain IEEE f32 ones, so the compiler
//! vectorises the loop and every target computes the same bits: the
//! x86-64 AVX2 build of the row loop, chosen at run time, is tested bit
//! for bit against the portable one. Inputs below -87.3 (masked attention
//! scores) give exactly 0.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    as_op, ensure, op_as_typed_op, op_out_of_plan, AxesMapping, AxisChangeConsequence, AxisOp,
    EvalContext, EvalOp, InOut, Op, StaticName, TypedOp, Validation,
};
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two, the high part exact in few bits (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` is 0 (`exp(-87.3)` is near the smallest normal f32).
const MIN_X: f32 = -87.3;

/// `e^x` for `x ≤ 0` (larger `x` are fine up to 88), plain f32 arithmetic.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.max(MIN_X);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the bits of n + 127 + 2^23 (n integral, |n| ≤ 127): the
    // low mantissa bits hold n + 127, the shift makes them the exponent.
    // (No float-to-int cast, which does not vectorise here.)
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x < MIN_X {
        0.0
    } else {
        p * scale
    }
}

/// Lanes of the maximum and the sum: the order of the additions is this
/// code's, not the compiler's, so every build adds the same way.
const LANES: usize = 8;

/// Softmax of one row, in place: the maximum and the sum over
/// [`LANES`] interleaved lanes, then combined in a fixed order.
#[inline(always)]
fn row_generic(row: &mut [f32]) {
    let whole = row.len() / LANES * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in row[..whole].chunks_exact(LANES) {
        for (m, &v) in lanes.iter_mut().zip(c) {
            if v > *m {
                *m = v;
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(&row[whole..]) {
        if v > max {
            max = v;
        }
    }
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let mut lanes = [0.0f32; LANES];
    for c in row[..whole].chunks_exact(LANES) {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += v;
        }
    }
    let mut sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for &v in &row[whole..] {
        sum += v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// The portable build of the row loop (the reference).
pub fn rows_portable(data: &mut [f32], len: usize) {
    for row in data.chunks_exact_mut(len) {
        row_generic(row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(data: &mut [f32], len: usize) {
    for row in data.chunks_exact_mut(len) {
        row_generic(row);
    }
}

crate::cpu::x86_paths!(Softmax: Avx2 "avx2" if avx2);

/// Softmax of each row of `len` values of `data`, in place, on the fastest
/// build this CPU has (every build gives the same bits).
pub fn rows(data: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    match path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is available, so the CPU has AVX2.
        Path::Avx2 => unsafe { rows_avx2(data, len) },
        Path::Portable => rows_portable(data, len),
    }
}

/// tract op: softmax over the last axis of an f32 tensor.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct FastSoftmax;

impl crate::op::Kernel for FastSoftmax {
    const NAME: &'static str = "EdgeBertSoftmax";
    const VALIDATION: Validation = Validation::Rounding;

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        crate::op::eval_f32_in_place(Self::NAME, inputs, |xs, shape| {
            rows(xs, shape.last().copied().unwrap_or(0));
            Ok(())
        })
    }
}

crate::op::op_shell!(FastSoftmax);

impl TypedOp for FastSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type() && inputs[0].rank() >= 1,
            "EdgeBertSoftmax on {:?}: only f32 of rank 1 or more",
            inputs[0]
        );
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
        // Fine as long as the softmax axis stays the last one.
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        Ok(crate::op::keeps_last_axis(change, rank)
            .then(|| AxisChangeConsequence::new(model, node, None, change)))
    }

    as_op!();
}

/// Replaces tract's f32 `Softmax` over the last axis with [`FastSoftmax`]
/// and returns how many it replaced. Run it on the typed model, before
/// `into_optimized`.
pub fn swap_in(model: &mut TypedModel) -> TractResult<usize> {
    if !crate::cpu::enabled(crate::cpu::Family::Softmax) {
        return Ok(0);
    }
    let mut ids = Vec::new();
    for node in model.nodes() {
        let Some(sm) = node.op_as::<Softmax>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        if sm.kind == SoftmaxKind::Softmax
            && sm.quant_output_dt.is_none()
            && fact.datum_type == f32::datum_type()
            && fact.rank() >= 1
            && *sm.axes == [fact.rank() - 1]
        {
            ids.push(node.id);
        }
    }
    for &id in &ids {
        model.nodes_mut()[id].op = Box::new(FastSoftmax);
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(row: &[f32]) -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn exp_is_close_to_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-f32::MAX), 0.0);
    }

    #[test]
    fn masked_scores_weigh_nothing() {
        // An attention row with the padding masked by -f32::MAX.
        let mut row = [
            1.0,
            2.0,
            0.5,
            -f32::MAX,
            -f32::MAX,
            -f32::MAX,
            -f32::MAX,
            -f32::MAX,
        ];
        rows(&mut row, 8);
        assert!(row[3..].iter().all(|&v| v == 0.0), "{row:?}");
        let want = exact(&[1.0, 2.0, 0.5]);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{row:?} vs {want:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every build gives the portable one's bits, and both are close
        /// to the f64 softmax.
        #[test]
        fn rows_are_the_definition(
            (len, data) in (1usize..70).prop_flat_map(|len| {
                (Just(len), proptest::collection::vec(-30f32..30.0, len * 3))
            })
        ) {
            let mut fast = data.clone();
            rows(&mut fast, len);
            let mut slow = data.clone();
            rows_portable(&mut slow, len);
            prop_assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()));
            for (row, got) in data.chunks(len).zip(fast.chunks(len)) {
                for (g, w) in got.iter().zip(exact(row)) {
                    prop_assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
                }
            }
        }
    }
}
