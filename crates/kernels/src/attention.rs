//! BERT's scaled dot-product attention as one tract op.
//!
//! # Why
//!
//! Per layer, BERT's self-attention is two small f32 matmuls per head
//! (`Q·Kᵀ` and `P·V`, `bucket × 32` by `32 × bucket`) around a softmax,
//! with reshapes and transposes between them. tract runs each matmul as a
//! general kernel that packs both operands on every run. With the int8
//! matmuls on `qmatmul`, `perf record -- edge-bert bench --limit 500` put
//! the attention matmuls, their packing and the mask broadcast at about 12%
//! of the int8 run, for about 0.1 ms of arithmetic per text.
//!
//! # What
//!
//! [`fuse`] rewrites the ONNX chain from the three `Reshape`s of the
//! query, key and value projections to the final `Reshape` (see its doc)
//! into one [`OP_TYPE`] node. [`Attention`] computes, per batch item and
//! head, `S = (Q·Kᵀ) · scale + mask`, `P = softmax(S)` by
//! [`crate::softmax::rows`], and `P·V`, with the same operations in the
//! same order as the ONNX graph, each sum taken in index order. It reads
//! `Q`, `K` and `V` in place in the projections' `[batch, seq, heads ·
//! head_dim]` layout (only `K` is transposed, per head, into a scratch
//! buffer) and writes the output in that layout too, so no transpose op is
//! left in the graph. The loops are plain f32 arithmetic compiled for
//! AVX-512 or AVX2 when the CPU has them (chosen at run time; every x86
//! build gives the same bits, as the sums run in the same order). On
//! aarch64 the same loops use fused multiply-adds (`PORTABLE_FMA`): one
//! rounding per step instead of two, so its bits differ from x86's in the
//! last places (the golden tests' tolerances hold under qemu).
//!
//! Padding keys get a mask of `-f32::MAX`, so their weights are exactly 0
//! and every sum over keys ends as it would without them: the output for
//! real tokens does not depend on the length bucket.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    as_op, ensure, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
    Validation,
};
use tract_onnx::tract_hir::internal::{
    check_output_arity, expand, Expansion, InferenceOp, Solver, TensorProxy,
};

/// The ONNX op type [`fuse`] writes (domain `ai.edge-bert`).
pub const OP_TYPE: &str = "EdgeBertAttention";

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Batch items.
    pub batch: usize,
    /// Tokens per item.
    pub seq: usize,
    /// Width of one token's row: heads × `head_dim`.
    pub hidden: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The mask's batch and query extents: the item count or 1, the
    /// token count or 1 (1 is broadcast).
    pub mask_batch: usize,
    pub mask_rows: usize,
}

/// `a · b + c`: fused (one rounding, `FMLA` once vectorised) when `FMA`,
/// else a multiply and an add.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

/// `acc[r][l] = Σ_t xs[r][t] · m[off + t · stride + l]` for `l < W`,
/// summed in `t` order, in fixed-size accumulators (registers; `R`
/// independent sums hide the add latency). Both matmuls of the op are
/// this: the scores (`xs` = query rows, `m` = `Kᵀ`) and the outputs (`xs`
/// = weights, `m` = `V`). With `FMA` (aarch64) the bounds are checked
/// once, up front, and the loop takes `t` four at a time so each row's four
/// `x` values are one load (`FMLA` by element); neither changes a sum's
/// order.
///
/// # Panics
///
/// If a row of `xs` is shorter than the first or `m` does not hold the
/// rows read.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block<const R: usize, const W: usize, const FMA: bool>(
    xs: [&[f32]; R],
    m: &[f32],
    off: usize,
    stride: usize,
) -> [[f32; W]; R] {
    let n = xs[0].len();
    let mut acc = [[0f32; W]; R];
    if !FMA {
        // x86 (AVX-512/AVX2): one `x` value at a time, which the compiler
        // broadcasts from memory into the multiply-add; the aarch64 form
        // below ran 15-20% slower end to end here (`edge-bert bench`).
        for t in 0..n {
            let row: &[f32; W] = m[off + t * stride..][..W].try_into().expect("W values");
            for r in 0..R {
                let x = xs[r][t];
                for l in 0..W {
                    acc[r][l] = madd::<FMA>(x, row[l], acc[r][l]);
                }
            }
        }
        return acc;
    }
    assert!(xs.iter().all(|x| x.len() >= n));
    assert!(n == 0 || (n - 1) * stride + off + W <= m.len());
    let step = |acc: &mut [[f32; W]; R], x: [f32; R], t: usize| {
        // SAFETY: `t < n`, so `off + t · stride + W <= m.len()` (asserted).
        let row = unsafe { &*(m.as_ptr().add(off + t * stride) as *const [f32; W]) };
        for r in 0..R {
            for l in 0..W {
                acc[r][l] = madd::<FMA>(x[r], row[l], acc[r][l]);
            }
        }
    };
    let mut t = 0;
    while t + 4 <= n {
        // SAFETY: `t + 4 <= n <= xs[r].len()` (asserted).
        let x4: [[f32; 4]; R] =
            std::array::from_fn(|r| unsafe { *(xs[r].as_ptr().add(t) as *const [f32; 4]) });
        for u in 0..4 {
            step(&mut acc, std::array::from_fn(|r| x4[r][u]), t + u);
        }
        t += 4;
    }
    while t < n {
        step(&mut acc, std::array::from_fn(|r| xs[r][t]), t);
        t += 1;
    }
    acc
}

/// Scores of `R` query rows (`qs[r]`, one head's columns) against keys
/// `j0..j0 + W`: `Σ_t qs[r][t] · kt[t][j]`.
#[inline(always)]
fn scores_block<const R: usize, const W: usize, const FMA: bool>(
    qs: [&[f32]; R],
    kt: &[f32],
    s: usize,
    j0: usize,
) -> [[f32; W]; R] {
    block::<R, W, FMA>(qs, kt, j0, s)
}

/// Outputs (head columns `base + c0..base + c0 + W` of `v`'s rows) of `R`
/// query rows with weights `ps[r]`: `Σ_j ps[r][j] · v[j][c]`.
#[inline(always)]
fn values_block<const R: usize, const W: usize, const FMA: bool>(
    ps: [&[f32]; R],
    v: &[f32],
    hd: usize,
    base: usize,
) -> [[f32; W]; R] {
    block::<R, W, FMA>(ps, v, base, hd)
}

/// One head of one item, rows `i0..i0 + R`: scores (before the softmax)
/// into `scores`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn score_rows<const R: usize, const FMA: bool>(
    q: &[f32],
    kt: &[f32],
    qbase: usize,
    hd: usize,
    dh: usize,
    s: usize,
    i0: usize,
    scores: &mut [f32],
) {
    let qs: [&[f32]; R] = std::array::from_fn(|r| &q[qbase + (i0 + r) * hd..][..dh]);
    // Blocks of 16 keys, then 8, then 1 (loops, not closures: a closure
    // would not get the caller's target features).
    let mut j0 = 0;
    while j0 + 16 <= s {
        let acc = scores_block::<R, 16, FMA>(qs, kt, s, j0);
        for (r, a) in acc.iter().enumerate() {
            scores[(i0 + r) * s + j0..][..16].copy_from_slice(a);
        }
        j0 += 16;
    }
    while j0 + 8 <= s {
        let acc = scores_block::<R, 8, FMA>(qs, kt, s, j0);
        for (r, a) in acc.iter().enumerate() {
            scores[(i0 + r) * s + j0..][..8].copy_from_slice(a);
        }
        j0 += 8;
    }
    while j0 < s {
        let acc = scores_block::<R, 1, FMA>(qs, kt, s, j0);
        for (r, a) in acc.iter().enumerate() {
            scores[(i0 + r) * s + j0] = a[0];
        }
        j0 += 1;
    }
}

/// One head of one item, rows `i0..i0 + R`: `P·V` into `out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn value_rows<const R: usize, const FMA: bool>(
    scores: &[f32],
    v: &[f32],
    base: usize,
    hd: usize,
    dh: usize,
    s: usize,
    i0: usize,
    out: &mut [f32],
) {
    let ps: [&[f32]; R] = std::array::from_fn(|r| &scores[(i0 + r) * s..][..s]);
    let mut c0 = 0;
    while c0 + 16 <= dh {
        let acc = values_block::<R, 16, FMA>(ps, v, hd, base + c0);
        for (r, a) in acc.iter().enumerate() {
            out[base + (i0 + r) * hd + c0..][..16].copy_from_slice(a);
        }
        c0 += 16;
    }
    while c0 + 8 <= dh {
        let acc = values_block::<R, 8, FMA>(ps, v, hd, base + c0);
        for (r, a) in acc.iter().enumerate() {
            out[base + (i0 + r) * hd + c0..][..8].copy_from_slice(a);
        }
        c0 += 8;
    }
    while c0 < dh {
        let acc = values_block::<R, 1, FMA>(ps, v, hd, base + c0);
        for (r, a) in acc.iter().enumerate() {
            out[base + (i0 + r) * hd + c0] = a[0];
        }
        c0 += 1;
    }
}

#[inline(always)]
fn generic<const FMA: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    d: Dims,
    scale: f32,
    out: &mut [f32],
) {
    let (s, hd, dh) = (d.seq, d.hidden, d.head_dim);
    let mut kt = vec![0f32; dh * s];
    let mut scores = vec![0f32; s * s];
    for b in 0..d.batch {
        let rows = b * s;
        let mb = if d.mask_batch == 1 { 0 } else { b };
        for h in 0..hd / dh {
            let col = h * dh;
            let base = rows * hd + col;
            for j in 0..s {
                let kr = &k[base + j * hd..][..dh];
                for (t, &x) in kr.iter().enumerate() {
                    kt[t * s + j] = x;
                }
            }
            let mut i = 0;
            while i + 4 <= s {
                score_rows::<4, FMA>(q, &kt, base, hd, dh, s, i, &mut scores);
                i += 4;
            }
            while i < s {
                score_rows::<1, FMA>(q, &kt, base, hd, dh, s, i, &mut scores);
                i += 1;
            }
            for (i, row) in scores.chunks_exact_mut(s).enumerate() {
                let mi = if d.mask_rows == 1 { 0 } else { i };
                let mrow = &mask[(mb * d.mask_rows + mi) * s..][..s];
                for (r, &m) in row.iter_mut().zip(mrow) {
                    *r = *r * scale + m;
                }
            }
            crate::softmax::rows(&mut scores, s);
            let mut i = 0;
            while i + 4 <= s {
                value_rows::<4, FMA>(&scores, v, base, hd, dh, s, i, out);
                i += 4;
            }
            while i < s {
                value_rows::<1, FMA>(&scores, v, base, hd, dh, s, i, out);
                i += 1;
            }
        }
    }
}

/// Whether the portable build fuses its multiply-adds: on aarch64, where
/// every core has fused multiply-add in NEON, so `mul_add` is one
/// instruction (`FMLA` once vectorised) and the two matmuls take about
/// half the instructions of a multiply and an add; not on x86-64, whose
/// baseline has no FMA (`mul_add` would be a libm call there) and whose
/// AVX builds give the portable build's bits.
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

/// The portable build (the reference for the others; on aarch64 with
/// fused multiply-adds, see [`PORTABLE_FMA`]).
pub fn attention_portable(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    d: Dims,
    scale: f32,
    out: &mut [f32],
) {
    generic::<PORTABLE_FMA>(q, k, v, mask, d, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attention_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    d: Dims,
    scale: f32,
    out: &mut [f32],
) {
    generic::<false>(q, k, v, mask, d, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attention_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    d: Dims,
    scale: f32,
    out: &mut [f32],
) {
    generic::<false>(q, k, v, mask, d, scale, out)
}

crate::cpu::x86_paths!(Attention: Avx512 "avx512" if avx512f, Avx2 "avx2" if avx2);

/// Whether [`fuse`] is used: not when `EDGE_BERT_ATTENTION=off`, and by
/// default not on 32-bit ARM, where LLVM keeps the op's f32 loops on scalar
/// VFP (NEON flushes denormals) while tract has NEON kernels for the
/// matmuls (the qemu armv7 golden tests went from 626 s to 1,623 s with
/// it); a named path there turns it on.
pub fn enabled() -> bool {
    match crate::cpu::setting(crate::cpu::Family::Attention) {
        crate::cpu::Setting::Off => false,
        crate::cpu::Setting::Auto => !cfg!(target_arch = "arm"),
        crate::cpu::Setting::Named(_) => true,
    }
}

/// Attention of `q`, `k`, `v` (`[batch, seq, hidden]`) with an additive
/// `mask` (`[mask_batch, 1, mask_rows, seq]`) into `out`, on the fastest
/// build this CPU has.
///
/// # Panics
///
/// If a buffer is shorter than `d` says, or `hidden % head_dim != 0`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    d: Dims,
    scale: f32,
    out: &mut [f32],
) {
    let n = d.batch * d.seq * d.hidden;
    assert!(
        d.head_dim > 0
            && d.hidden.is_multiple_of(d.head_dim)
            && q.len() >= n
            && k.len() >= n
            && v.len() >= n
            && out.len() >= n
            && mask.len() >= d.mask_batch * d.mask_rows * d.seq,
        "attention: buffers do not fit {d:?}"
    );
    match path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is available, so the CPU has AVX-512F.
        Path::Avx512 => unsafe { attention_avx512(q, k, v, mask, d, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is available, so the CPU has AVX2.
        Path::Avx2 => unsafe { attention_avx2(q, k, v, mask, d, scale, out) },
        Path::Portable => attention_portable(q, k, v, mask, d, scale, out),
    }
}

/// tract op: `[batch, seq, hidden]` f32 `q`, `k`, `v` and a
/// `[batch or 1, 1, seq or 1, seq]` f32 additive mask in, `[batch, seq,
/// hidden]` out.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub head_dim: usize,
    pub scale: f32,
}

impl std::hash::Hash for Attention {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.head_dim.hash(state);
        self.scale.to_bits().hash(state);
    }
}

impl Eq for Attention {}

impl Attention {
    fn dims(&self, q: &[usize], k: &[usize], v: &[usize], mask: &[usize]) -> TractResult<Dims> {
        ensure!(
            q.len() == 3 && k == q && v == q,
            "{OP_TYPE}: q {q:?}, k {k:?}, v {v:?}: expected three equal [batch, seq, hidden]"
        );
        let (batch, seq, hidden) = (q[0], q[1], q[2]);
        ensure!(
            self.head_dim > 0 && hidden.is_multiple_of(self.head_dim),
            "{OP_TYPE}: hidden width {hidden} is not a multiple of the head width {}",
            self.head_dim
        );
        ensure!(
            mask.len() == 4
                && (mask[0] == batch || mask[0] == 1)
                && mask[1] == 1
                && (mask[2] == seq || mask[2] == 1)
                && mask[3] == seq,
            "{OP_TYPE}: mask {mask:?} does not fit [{batch}, 1, {seq}, {seq}]"
        );
        Ok(Dims {
            batch,
            seq,
            hidden,
            head_dim: self.head_dim,
            mask_batch: mask[0],
            mask_rows: mask[2],
        })
    }
}

impl crate::op::Kernel for Attention {
    const NAME: &'static str = OP_TYPE;
    const VALIDATION: Validation = Validation::Rounding;

    fn describe(&self) -> Vec<String> {
        vec![format!(
            "head width {}, scale {}",
            self.head_dim, self.scale
        )]
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 4, "{OP_TYPE}: {} inputs", inputs.len());
        let d = self.dims(
            inputs[0].shape(),
            inputs[1].shape(),
            inputs[2].shape(),
            inputs[3].shape(),
        )?;
        let views = [0, 1, 2, 3]
            .map(|ix| inputs[ix].try_as_plain_ram())
            .into_iter()
            .collect::<TractResult<Vec<_>>>()?;
        let mut out = Tensor::zero::<f32>(inputs[0].shape())?;
        {
            let mut o = out.try_as_plain_ram_mut()?;
            attention(
                views[0].as_slice::<f32>()?,
                views[1].as_slice::<f32>()?,
                views[2].as_slice::<f32>()?,
                views[3].as_slice::<f32>()?,
                d,
                self.scale,
                o.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

crate::op::op_shell!(Attention);

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 4 && inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "{OP_TYPE}: expected four f32 inputs, got {inputs:?}"
        );
        ensure!(
            inputs[0].rank() == 3 && inputs[3].rank() == 4,
            "{OP_TYPE}: q of rank {} and mask of rank {}",
            inputs[0].rank(),
            inputs[3].rank()
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// tract-onnx's builder for [`OP_TYPE`] nodes (register it under that
/// name). Attributes: `head_dim` (int) and `scale` (float).
pub fn onnx_builder(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let head_dim = node
        .attribute
        .iter()
        .find(|a| a.name == "head_dim")
        .map(|a| a.i)
        .filter(|&d| d > 0)
        .ok_or_else(|| TractError::msg(format!("{OP_TYPE} {}: no head_dim", node.name)))?;
    let scale = node
        .attribute
        .iter()
        .find(|a| a.name == "scale")
        .map(|a| a.f)
        .ok_or_else(|| TractError::msg(format!("{OP_TYPE} {}: no scale", node.name)))?;
    Ok((
        expand(AttentionNode(Attention {
            head_dim: head_dim as usize,
            scale,
        })),
        vec![],
    ))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct AttentionNode(Attention);

impl Expansion for AttentionNode {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        ensure!(inputs.len() == 4, "{OP_TYPE}: {} inputs", inputs.len());
        check_output_arity(outputs, 1)?;
        for input in inputs {
            s.equals(&input.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&inputs[3].rank, 4)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        target.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Rewrites each self-attention block of `graph` into one [`OP_TYPE`]
/// node and returns how many it rewrote. A block is taken only if it is
/// exactly (torch's export of BERT's attention)
///
/// ```text
/// qh = Transpose<0,2,1,3>(Reshape(q, [b, s, -1, D]))
/// kh = Transpose<0,2,3,1>(Reshape(k, [b, s, -1, D]))
/// vh = Transpose<0,2,1,3>(Reshape(v, [b, s, -1, D]))
/// p  = Softmax<axis -1>(Add(Mul(MatMul(qh, kh), scale), mask))
/// out = Reshape(Transpose<0,2,1,3>(MatMul(p, vh)), [b, s, -1])
/// ```
///
/// with `D` the last entry of each head reshape (a constant, or a
/// `Concat` ending in one), `scale` a float scalar constant, either
/// operand order for `Mul` and `Add`, and each intermediate read by the
/// next node only; or `Div(MatMul(qh, kh), c)` for the `Mul` (scale 1/c),
/// and the transposed output also read by `Shape` nodes whose readers
/// only `Gather` its batch or sequence size (those then read `q`, whose
/// first two sizes are the same), as torch's newer exporter and
/// sentence-transformers' ONNX files write it. Anything else is left as
/// it is.
pub fn fuse(graph: &mut GraphProto) -> usize {
    use std::collections::HashMap;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (ix, node) in graph.node.iter().enumerate() {
        for i in &node.input {
            readers.entry(i.as_str()).or_default().push(ix);
        }
        for o in &node.output {
            producer.insert(o.as_str(), ix);
        }
    }
    for o in &graph.output {
        readers.entry(o.name.as_str()).or_default().push(usize::MAX);
    }
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| !graph.input.iter().any(|i| i.name == t.name))
        .map(|t| (t.name.as_str(), t))
        .collect();
    let nodes = &graph.node;
    let only_reader = |value: &str| match readers.get(value).map(Vec::as_slice) {
        Some(&[ix]) if ix != usize::MAX => Some(ix),
        _ => None,
    };
    // A constant value: an initializer or a Constant node's tensor.
    let constant = |value: &str| -> Option<&TensorProto> {
        if let Some(t) = inits.get(value) {
            return Some(t);
        }
        let n = &nodes[*producer.get(value)?];
        if n.op_type != "Constant" {
            return None;
        }
        n.attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
    };
    let node_of = |ix: usize, op: &str| Some(&nodes[ix]).filter(|n| n.op_type == op);
    let perm = |n: &NodeProto| -> Vec<i64> {
        n.attribute
            .iter()
            .find(|a| a.name == "perm")
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    };
    // The head width of a head reshape's target shape, `[b, s, -1, D]`.
    let head_width = |shape: &str| -> Option<i64> {
        let last = if let Some(t) = constant(shape) {
            (t.dims.len() == 1 && t.dims[0] == 4).then_some(())?;
            ints(t)?.get(3).copied()?
        } else {
            let c = node_of(*producer.get(shape)?, "Concat")?;
            (c.input.len() == 4).then_some(())?;
            let t = constant(c.input.last()?)?;
            match ints(t)?.as_slice() {
                [d] => *d,
                _ => return None,
            }
        };
        (last > 0).then_some(last)
    };
    // `Transpose<p>(Reshape(x, shape))` read only by `reader`: (x, D,
    // [reshape, transpose]).
    let head = |value: &str, p: &[i64], reader: usize| -> Option<(String, i64, [usize; 2])> {
        let t = *producer.get(value)?;
        let tn = node_of(t, "Transpose")?;
        (perm(tn) == p && only_reader(value)? == reader).then_some(())?;
        let r = *producer.get(tn.input.first()?.as_str())?;
        let rn = node_of(r, "Reshape")?;
        (rn.input.len() == 2 && only_reader(&rn.output[0])? == t).then_some(())?;
        Some((rn.input[0].clone(), head_width(&rn.input[1])?, [r, t]))
    };
    // Every reader of a Shape's output is a Gather (axis 0) of index 0 or 1.
    let batch_and_seq_only = |shape: &str| -> Option<bool> {
        let rs = readers.get(shape)?;
        Some(rs.iter().all(|&g| {
            let Some(gn) = nodes.get(g).filter(|n| n.op_type == "Gather") else {
                return false;
            };
            let axis = gn
                .attribute
                .iter()
                .find(|a| a.name == "axis")
                .map_or(0, |a| a.i);
            let index = gn.input.get(1).and_then(|i| constant(i)).and_then(ints);
            axis == 0 && gn.input[0] == shape && matches!(index.as_deref(), Some([0] | [1]))
        }))
    };
    let mut found: Vec<Block> = Vec::new();
    for (sm, smn) in nodes.iter().enumerate() {
        let block = (|| {
            if smn.op_type != "Softmax" || smn.input.len() != 1 || smn.output.len() != 1 {
                return None;
            }
            let axis = smn.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
            if !matches!(axis, Some(-1) | Some(3)) {
                return None;
            }
            // Backwards: Add(Mul(MatMul(qh, kh), scale), mask).
            let ad = *producer.get(smn.input[0].as_str())?;
            let adn = node_of(ad, "Add")?;
            (only_reader(&adn.output[0])? == sm).then_some(())?;
            let (mu, mask) = adn.input.iter().enumerate().find_map(|(ix, i)| {
                let p = *producer.get(i.as_str())?;
                (node_of(p, "Mul").is_some() || node_of(p, "Div").is_some())
                    .then(|| (p, adn.input[1 - ix].clone()))
            })?;
            let mun = &nodes[mu];
            (adn.input.len() == 2 && only_reader(&mun.output[0])? == ad).then_some(())?;
            let (mm, scale) = if mun.op_type == "Div" {
                // Div(MatMul(qh, kh), c): the scale is 1 / c.
                (mun.input.len() == 2).then_some(())?;
                let p = *producer.get(mun.input[0].as_str())?;
                node_of(p, "MatMul")?;
                let c = scalar_f32(constant(&mun.input[1])?)?;
                (c != 0.0 && c.is_finite()).then_some((p, 1.0 / c))?
            } else {
                mun.input.iter().enumerate().find_map(|(ix, i)| {
                    let p = *producer.get(i.as_str())?;
                    node_of(p, "MatMul")?;
                    let t = constant(mun.input.get(1 - ix)?)?;
                    Some((p, scalar_f32(t)?))
                })?
            };
            let mmn = &nodes[mm];
            (mmn.input.len() == 2 && only_reader(&mmn.output[0])? == mu).then_some(())?;
            let (q, dq, qn) = head(&mmn.input[0], &[0, 2, 1, 3], mm)?;
            let (k, dk, kn) = head(&mmn.input[1], &[0, 2, 3, 1], mm)?;
            // Forwards: Reshape(Transpose(MatMul(p, vh))).
            let pv = only_reader(&smn.output[0])?;
            let pvn = node_of(pv, "MatMul")?;
            (pvn.input.len() == 2 && pvn.input[0] == smn.output[0]).then_some(())?;
            let (v, dv, vn) = head(&pvn.input[1], &[0, 2, 1, 3], pv)?;
            let t3 = only_reader(&pvn.output[0])?;
            let t3n = node_of(t3, "Transpose")?;
            (perm(t3n) == [0, 2, 1, 3]).then_some(())?;
            // The output Reshape, and Shape nodes that read only the batch
            // and sequence sizes of the transposed output (torch's newer
            // exports build the Reshape's target from them): those are the
            // first two sizes of the query projection too, and read it.
            let mut r3 = None;
            let mut shapes = Vec::new();
            for &r in readers.get(t3n.output[0].as_str())? {
                let rn = nodes.get(r)?;
                match rn.op_type.as_str() {
                    "Reshape" if r3.is_none() && rn.input[0] == t3n.output[0] => r3 = Some(r),
                    "Shape" if rn.attribute.is_empty() && batch_and_seq_only(&rn.output[0])? => {
                        shapes.push(r)
                    }
                    _ => return None,
                }
            }
            let r3 = r3?;
            let r3n = &nodes[r3];
            (r3n.output.len() == 1).then_some(())?;
            if dq != dk || dq != dv {
                return None;
            }
            let attr_i = tract_onnx::pb::AttributeProto {
                name: "head_dim".into(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
                i: dq,
                ..Default::default()
            };
            let attr_f = tract_onnx::pb::AttributeProto {
                name: "scale".into(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Float as i32,
                f: scale,
                ..Default::default()
            };
            let node = NodeProto {
                name: smn.name.replace("Softmax", "Attention"),
                op_type: OP_TYPE.into(),
                domain: "ai.edge-bert".into(),
                input: vec![q.clone(), k, v, mask],
                output: r3n.output.clone(),
                attribute: vec![attr_i, attr_f],
                ..Default::default()
            };
            let rewire = shapes.into_iter().map(|ix| (ix, q.clone())).collect();
            let mut drop = vec![mm, mu, ad, sm, pv, t3, r3];
            drop.extend(qn);
            drop.extend(kn);
            drop.extend(vn);
            Some((drop, node, rewire))
        })();
        found.extend(block);
    }
    let n = found.len();
    let mut drop = vec![false; graph.node.len()];
    let mut put: HashMap<usize, NodeProto> = HashMap::new();
    let mut rewires = Vec::new();
    for (ixs, node, rewire) in found {
        rewires.extend(rewire);
        // The new node goes where the last one it replaces was.
        let last = *ixs.iter().max().expect("seven or more nodes");
        for ix in ixs {
            drop[ix] = true;
        }
        put.insert(last, node);
    }
    for (ix, input) in rewires {
        graph.node[ix].input[0] = input;
    }
    let old = std::mem::take(&mut graph.node);
    for (ix, node) in old.into_iter().enumerate() {
        if let Some(fused) = put.remove(&ix) {
            graph.node.push(fused);
        } else if !drop[ix] {
            graph.node.push(node);
        }
    }
    n
}

/// One block [`fuse`] takes: the nodes it replaces, the fused node, and the
/// Shape nodes to point at another input (node index, new input).
type Block = (Vec<usize>, NodeProto, Vec<(usize, String)>);

/// The values of an int64 tensor (raw or typed data).
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    const INT64: i32 = 7;
    if t.data_type != INT64 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    let raw = &t.raw_data;
    raw.len().is_multiple_of(8).then(|| {
        raw.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    })
}

/// The value of a float scalar tensor (raw or typed data).
fn scalar_f32(t: &TensorProto) -> Option<f32> {
    const FLOAT: i32 = 1;
    if t.data_type != FLOAT || t.dims.iter().product::<i64>() != 1 {
        return None;
    }
    match (t.float_data.as_slice(), t.raw_data.as_slice()) {
        ([x], _) => Some(*x),
        ([], raw) if raw.len() == 4 => Some(f32::from_le_bytes(raw.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition in f64: per head, softmax((Q·Kᵀ)·scale + mask)·V.
    fn naive(q: &[f32], k: &[f32], v: &[f32], mask: &[f32], d: Dims, scale: f32) -> Vec<f64> {
        let (s, hd, dh) = (d.seq, d.hidden, d.head_dim);
        let mut out = vec![0f64; d.batch * s * hd];
        for b in 0..d.batch {
            for h in 0..hd / dh {
                for i in 0..s {
                    let mb = if d.mask_batch == 1 { 0 } else { b };
                    let mi = if d.mask_rows == 1 { 0 } else { i };
                    let scores: Vec<f64> = (0..s)
                        .map(|j| {
                            let dot: f64 = (0..dh)
                                .map(|t| {
                                    q[(b * s + i) * hd + h * dh + t] as f64
                                        * k[(b * s + j) * hd + h * dh + t] as f64
                                })
                                .sum();
                            dot * scale as f64 + mask[(mb * d.mask_rows + mi) * s + j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for t in 0..dh {
                        out[(b * s + i) * hd + h * dh + t] = (0..s)
                            .map(|j| e[j] / sum * v[(b * s + j) * hd + h * dh + t] as f64)
                            .sum();
                    }
                }
            }
        }
        out
    }

    fn case() -> impl Strategy<Value = (Dims, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
        (
            1usize..3,
            1usize..20,
            1usize..4,
            1usize..9,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_flat_map(|(batch, seq, heads, head_dim, mb, mr)| {
                let d = Dims {
                    batch,
                    seq,
                    hidden: heads * head_dim,
                    head_dim,
                    mask_batch: if mb { batch } else { 1 },
                    mask_rows: if mr { seq } else { 1 },
                };
                let n = batch * seq * heads * head_dim;
                let m = d.mask_batch * d.mask_rows * seq;
                let x = || prop::collection::vec(-3f32..3.0, n);
                let mask = prop::collection::vec(
                    prop_oneof![3 => Just(0f32), 1 => Just(-f32::MAX), 1 => -2f32..2.0],
                    m,
                );
                (Just(d), x(), x(), x(), mask)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Close to the f64 definition; every build gives the portable
        /// one's bits.
        #[test]
        fn is_the_definition((d, q, k, v, mut mask) in case()) {
            // At least one key per query row is not masked out.
            for row in mask.chunks_mut(d.seq) {
                row[0] = 0.0;
            }
            let n = q.len();
            let mut fast = vec![0f32; n];
            attention(&q, &k, &v, &mask, d, 0.35, &mut fast);
            let mut portable = vec![0f32; n];
            attention_portable(&q, &k, &v, &mask, d, 0.35, &mut portable);
            prop_assert!(fast.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()));
            for (g, w) in fast.iter().zip(naive(&q, &k, &v, &mask, d, 0.35)) {
                prop_assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn padding_keys_change_nothing() {
        // Three real tokens, then the same three padded to eight.
        let d3 = Dims {
            batch: 1,
            seq: 3,
            hidden: 4,
            head_dim: 2,
            mask_batch: 1,
            mask_rows: 1,
        };
        let d8 = Dims { seq: 8, ..d3 };
        let x: Vec<f32> = (0..32).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let mut mask8 = vec![-f32::MAX; 8];
        mask8[..3].fill(0.0);
        let mut out3 = vec![0f32; 12];
        attention(
            &x[..12],
            &x[4..16],
            &x[8..20],
            &[0.0; 3],
            d3,
            0.7,
            &mut out3,
        );
        let (mut q8, mut k8, mut v8) = (vec![9f32; 32], vec![9f32; 32], vec![9f32; 32]);
        q8[..12].copy_from_slice(&x[..12]);
        k8[..12].copy_from_slice(&x[4..16]);
        v8[..12].copy_from_slice(&x[8..20]);
        let mut out8 = vec![0f32; 32];
        attention(&q8, &k8, &v8, &mask8, d8, 0.7, &mut out8);
        assert_eq!(out3, out8[..12]);
    }

    #[test]
    fn fuses_every_block_of_the_tiny_model() {
        use prost::Message;
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/tiny/model.onnx"
        ))
        .unwrap();
        let mut proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let before = graph.node.len();
        assert_eq!(fuse(graph), 2);
        assert!(graph.node.iter().filter(|n| n.op_type == OP_TYPE).count() == 2);
        assert!(!graph.node.iter().any(|n| n.op_type == "Softmax"));
        assert_eq!(graph.node.len(), before - 2 * 13 + 2);
        // Nothing left to fuse.
        assert_eq!(fuse(graph), 0);
    }
}
