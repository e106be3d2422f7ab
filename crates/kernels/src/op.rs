//! The tract op shell, written once: every edge-bert op implements
//! [`Kernel`] (its name, how tract may check it, what it runs) and
//! `op_shell!` writes tract's `Op` and `EvalOp` around it. Each op keeps
//! its own `TypedOp` (its output facts and which layout changes it lets
//! through; [`keeps_last_axis`] is the rule of the ops that work along the
//! last axis).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, AxisOp, Validation};

/// What an edge-bert tract op supplies to the shell.
pub trait Kernel {
    /// The op's name in tract's graph (`EdgeBert...`).
    const NAME: &'static str;
    /// How tract compares it with the op it replaced: `Accurate` for the
    /// integer ops, `Rounding` for the f32 ones.
    const VALIDATION: Validation;
    /// Extra lines for `info`.
    fn describe(&self) -> Vec<String> {
        Vec::new()
    }
    /// Runs the op on its inputs.
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// Writes tract's `Op` and `EvalOp` for a type that implements
/// [`Kernel`]; the caller has tract's `internal` prelude in scope.
macro_rules! op_shell {
    ($t:ty) => {
        impl Op for $t {
            fn name(&self) -> StaticName {
                <$t as $crate::op::Kernel>::NAME.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok($crate::op::Kernel::describe(self))
            }

            fn validation(&self) -> Validation {
                <$t as $crate::op::Kernel>::VALIDATION
            }

            op_as_typed_op!();
        }

        impl EvalOp for $t {
            op_out_of_plan!();

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                $crate::op::Kernel::run(self, inputs)
            }
        }
    };
}
pub(crate) use op_shell;

/// The eval of an op that rewrites its single f32 input in place (the
/// softmax and GELU ops): `f` gets the values and the shape, and the
/// tensor is the output (tract's buffer when the op holds the only
/// reference to it, a copy otherwise).
pub fn eval_f32_in_place(
    op: &str,
    inputs: TVec<TValue>,
    f: impl FnOnce(&mut [f32], &[usize]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let Some(input) = inputs.into_iter().next() else {
        bail!("{op}: no input");
    };
    let mut t = input.into_tensor();
    let shape: TVec<usize> = t.shape().into();
    {
        let mut view = t.try_as_plain_ram_mut()?;
        f(view.as_slice_mut::<f32>()?, &shape)?;
    }
    Ok(tvec!(t.into_tvalue()))
}

/// Whether `change` on a tensor of `rank` axes removes or inserts an axis
/// before the last one, leaving the last axis last (what the ops that work
/// along the last axis, the softmax and the fused matmul, accept).
pub fn keeps_last_axis(change: &AxisOp, rank: usize) -> bool {
    match change {
        AxisOp::Rm(a) => *a + 1 < rank,
        AxisOp::Add(a) => *a < rank,
        _ => false,
    }
}
