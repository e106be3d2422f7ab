//! A faster `DynamicQuantizeLinear` for tract, with SIMD paths chosen at
//! run time.
//!
//! # Why
//!
//! The int8 bundle quantises every matmul's activations on each run
//! (ONNX `DynamicQuantizeLinear`: a min/max pass, then one u8 per value).
//! tract-onnx 0.23.9 does this with an ndarray fold and a scalar `rintf`
//! call per value. `perf record` on `edge-bert bench --limit 200` with the
//! int8 model put that op at about half of the run time (`rintf` 16.9 %,
//! the op's own loop 9.8 %, the min/max fold 6.2 % of all samples, start-up
//! included), more than the int8 matmul kernel itself (18.4 %).
//!
//! # What
//!
//! [`FastDynamicQuantize`] is a tract op with the same outputs as tract's
//! (`y: u8`, `y_scale: f32`, `y_zero_point: u8`, per tensor).
//! [`swap_in`] replaces tract's op with it in a typed model, node for
//! node, before the model is optimised, so the rest of tract's optimiser
//! applies as before. The pure kernels are [`min_max`] and [`quantize`];
//! [`scale_and_zero_point`] is the scalar arithmetic in between.
//!
//! With the model's attention mask as a second input (wired by
//! [`swap_in`]), the range is taken over the real tokens' rows only
//! ([`masked_range`]): padding then changes nothing, as if the text ran
//! unpadded, which is how ONNX Runtime's users run it.
//!
//! Semantics (ONNX): `scale = (max(0, max x) - min(0, min x)) / 255`,
//! `zp = saturate(round(-min / scale))`, `y = saturate(round(x / scale) + zp)`,
//! rounding to nearest with ties to even. Results are the division's, so
//! they match tract's and ONNX Runtime's bit for bit: the SIMD paths
//! multiply by `1 / scale` (a division costs 5 cycles per 8 lanes here, and
//! was 5.9 % of the int8 run) and divide again only for a vector with a
//! quotient near a tie, where the product could round the other way (the
//! bound is on [`NEAR_TIE`]). NaN inputs are ignored by min/max and quantise to
//! 0; ±∞ saturate.
//!
//! # Paths
//!
//! - x86-64: AVX-512 (F and BW) or AVX2 when the CPU has it (checked at
//!   run time).
//! - aarch64: NEON (always present on aarch64).
//! - everything else, and the tails: the portable scalar code.
//!
//! Every path is tested bit-exact against the scalar reference
//! ([`mod@reference`]), with property tests, and the aarch64 path also runs
//! under qemu in `cross/test.sh`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    as_op, ensure, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
    Validation,
};

/// The SIMD path [`min_max`] and [`quantize`] take on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Avx512,
    Avx2,
    Neon,
    Portable,
}

impl Path {
    /// Every path, fastest first.
    pub const ALL: [Path; 4] = [Path::Avx512, Path::Avx2, Path::Neon, Path::Portable];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => crate::cpu::features().avx512f && crate::cpu::features().avx512bw,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => crate::cpu::features().avx2,
            #[cfg(target_arch = "aarch64")]
            Path::Neon => crate::cpu::features().neon,
            Path::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl crate::cpu::KernelPath for Path {
    const FAMILY: crate::cpu::Family = crate::cpu::Family::DynQuant;
    const ALL: &'static [Path] = &Path::ALL;

    fn name(self) -> &'static str {
        match self {
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Neon => "neon",
            Path::Portable => "portable",
        }
    }

    fn available(self) -> bool {
        Path::available(self)
    }
}

/// The path chosen for this CPU: the fastest it has, or the one
/// `EDGE_BERT_DYNQUANT` names (see [`crate::cpu`]).
pub fn path() -> Path {
    static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(crate::cpu::kernel_path::<Path>)
}

/// The scalar reference: the definitions, one value at a time.
pub mod reference {
    /// `(min(0, min x), max(0, max x))`, NaN ignored.
    pub fn min_max(xs: &[f32]) -> (f32, f32) {
        fold_range(xs, 0.0, 0.0)
    }

    /// Widens the range `(lo, hi)` to cover `xs`, NaN ignored (`x < lo`
    /// and `x > hi` are false for NaN, and for -0.0 against 0.0).
    pub fn fold_range(xs: &[f32], lo: f32, hi: f32) -> (f32, f32) {
        let (mut lo, mut hi) = (lo, hi);
        for &x in xs {
            if x < lo {
                lo = x;
            }
            if x > hi {
                hi = x;
            }
        }
        (lo, hi)
    }

    /// One value: `saturate(round_ties_even(x / scale) + zp)`, NaN → 0.
    pub fn quantize_one(x: f32, scale: f32, zp: u8) -> u8 {
        let v = (x / scale).round_ties_even() + zp as f32;
        if v >= 255.0 {
            255
        } else if v >= 0.0 {
            v as u8
        } else {
            0 // negative, or NaN
        }
    }

    pub fn quantize(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = quantize_one(x, scale, zp);
        }
    }
}

/// Scale and zero point from the range given by [`min_max`].
pub fn scale_and_zero_point(lo: f32, hi: f32) -> (f32, u8) {
    let scale = (hi - lo) / 255.0;
    // NaN (an all-zero tensor: 0 / 0) stays NaN through `clamp` and
    // becomes 0 in the saturating `as` cast.
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    (scale, zp as u8)
}

/// `(min(0, min x), max(0, max x))`, NaN ignored; the fastest path.
pub fn min_max(xs: &[f32]) -> (f32, f32) {
    min_max_on(path(), xs)
}

/// [`min_max`] on `path` (an unavailable path panics).
pub fn min_max_on(path: Path, xs: &[f32]) -> (f32, f32) {
    assert!(path.available(), "min_max: {path:?} is not available here");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked above.
        Path::Avx512 => unsafe { x86::min_max_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: path() checked that the CPU has AVX2.
        Path::Avx2 => unsafe { x86::min_max_avx2(xs) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 baseline.
        Path::Neon => unsafe { arm::min_max_neon(xs) },
        _ => reference::min_max(xs),
    }
}

/// The range of the rows of `xs` (rows of `k` values) that hold real
/// tokens: with a `mask` of one entry per row, the rows whose entry is not
/// 0; with no mask, or one whose length is not the number of rows (e.g. the
/// pooler's single row), every row. Same definition as [`min_max`]
/// otherwise, so an unpadded tensor gets the range [`min_max`] gives it.
///
/// Padding rows never reach a real token's output in BERT (attention masks
/// them as keys, every other op works per token), so this range makes the
/// int8 model's answer independent of the length bucket, as ONNX Runtime's
/// is when it runs the text unpadded.
pub fn masked_range(xs: &[f32], k: usize, mask: Option<&[i64]>) -> (f32, f32) {
    let rows = xs.len().checked_div(k).unwrap_or(0);
    match mask {
        Some(mask) if mask.len() == rows && rows * k == xs.len() => {
            let (mut lo, mut hi) = (0.0f32, 0.0f32);
            for (row, _) in xs.chunks_exact(k).zip(mask).filter(|(_, &m)| m != 0) {
                let (l, h) = min_max(row);
                if l < lo {
                    lo = l;
                }
                if h > hi {
                    hi = h;
                }
            }
            (lo, hi)
        }
        _ => min_max(xs),
    }
}

/// Calls `f` with the attention mask handed to an op as an optional extra
/// input, as a slice (`None` if absent or not i64).
pub fn with_mask<T>(input: Option<&TValue>, f: impl FnOnce(Option<&[i64]>) -> T) -> TractResult<T> {
    let view = input.map(|m| m.try_as_plain_ram()).transpose()?;
    Ok(f(view.as_ref().and_then(|v| v.as_slice::<i64>().ok())))
}

/// Quantises `xs` into `ys` (same length); the fastest path.
pub fn quantize(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
    quantize_on(path(), xs, scale, zp, ys)
}

/// [`quantize`] on `path` (an unavailable path panics).
pub fn quantize_on(path: Path, xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
    assert_eq!(xs.len(), ys.len(), "quantize: length mismatch");
    assert!(path.available(), "quantize: {path:?} is not available here");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked above.
        Path::Avx512 => unsafe { x86::quantize_avx512(xs, scale, zp, ys) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: path() checked that the CPU has AVX2.
        Path::Avx2 => unsafe { x86::quantize_avx2(xs, scale, zp, ys) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 baseline.
        Path::Neon => unsafe { arm::quantize_neon(xs, scale, zp, ys) },
        _ => reference::quantize(xs, scale, zp, ys),
    }
}

/// The SIMD paths' last step: the per-lane minima and maxima, then the
/// values left over after the last full vector, folded exactly as the
/// scalar reference would.
#[allow(dead_code)] // unused where there is no SIMD path (armv7)
fn combine_lanes(lo_lanes: &[f32], hi_lanes: &[f32], tail: &[f32]) -> (f32, f32) {
    let (lo, _) = reference::fold_range(lo_lanes, 0.0, 0.0);
    let (_, hi) = reference::fold_range(hi_lanes, 0.0, 0.0);
    reference::fold_range(tail, lo, hi)
}

/// How close `x · (1 / scale)` may come to a half-integer before the SIMD
/// paths divide instead: `0.5 - 2⁻¹¹`.
///
/// Why the product gives the division's answer elsewhere: with `r =
/// RN(1 / scale)` and `p = RN(x · r)`, `|p - x / scale| ≤ |x / scale| ·
/// (2⁻²³ + 2⁻⁴⁸)`, and the division's own rounding adds at most half an ulp.
/// For `|x / scale| ≤ 1025` the two together stay under `1.51 · 2⁻¹³`, so
/// when `p` is further than `2⁻¹¹` from every half-integer, `p` and `RN(x / scale)`
/// round to the same integer (no tie is involved). Beyond that, every
/// quotient saturates to 0 or 255 after the zero point anyway.
#[allow(dead_code)] // unused where there is no SIMD path (armv7)
const NEAR_TIE: f32 = 0.5 - 1.0 / 2048.0;

/// Whether `1 / scale` is a normal number with the relative error the
/// [`NEAR_TIE`] bound assumes: `scale` in `[2⁻¹²⁵, 2¹²⁵]` (not 0, NaN or ∞).
#[allow(dead_code)] // unused where there is no SIMD path (armv7)
fn reciprocal_is_safe(scale: f32) -> bool {
    (f32::from_bits(0x0100_0000)..=f32::from_bits(0x7E00_0000)).contains(&scale)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{combine_lanes, reference};
    use std::arch::x86_64::*;

    /// As [`min_max_avx2`], 16 lanes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn min_max_avx512(xs: &[f32]) -> (f32, f32) {
        let chunks = xs.chunks_exact(16);
        let tail = chunks.remainder();
        let mut lo = _mm512_setzero_ps();
        let mut hi = _mm512_setzero_ps();
        for c in chunks {
            // SAFETY: c has exactly 16 f32s.
            let x = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            lo = _mm512_min_ps(x, lo);
            hi = _mm512_max_ps(x, hi);
        }
        let mut l = [0f32; 16];
        let mut h = [0f32; 16];
        // SAFETY: 16-wide stores into 16-element arrays.
        unsafe {
            _mm512_storeu_ps(l.as_mut_ptr(), lo);
            _mm512_storeu_ps(h.as_mut_ptr(), hi);
        }
        combine_lanes(&l, &h, tail)
    }

    /// As [`quantize_avx2`], 16 at a time, packed to bytes by `vpmovusdb`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_avx512(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
        if !super::reciprocal_is_safe(scale) {
            // SAFETY: AVX-512F implies AVX2.
            return unsafe { quantize_avx2_div(xs, scale, zp, ys) };
        }
        let n16 = xs.len() / 16 * 16;
        let s = _mm512_set1_ps(scale);
        let r = _mm512_set1_ps(1.0 / scale);
        let z = _mm512_set1_ps(zp as f32);
        let zero = _mm512_setzero_ps();
        let top = _mm512_set1_ps(255.0);
        let near = _mm512_set1_ps(super::NEAR_TIE);
        let mut i = 0;
        while i < n16 {
            // SAFETY: i + 16 <= n16 <= xs.len() == ys.len().
            unsafe {
                let x = _mm512_loadu_ps(xs.as_ptr().add(i));
                let p = _mm512_mul_ps(x, r);
                let mut q =
                    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
                // |p - q| is exact; NaN (from NaN or ±∞) compares false.
                let d = _mm512_abs_ps(_mm512_sub_ps(p, q));
                if _mm512_cmp_ps_mask::<_CMP_GE_OQ>(d, near) != 0 {
                    q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm512_div_ps(x, s),
                    );
                }
                // max(NaN, 0) is 0, as in the AVX2 path.
                let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, z), zero), top);
                let w = _mm512_cvtps_epi32(v); // exact: v is a whole number in [0, 255]
                let b = _mm512_cvtusepi32_epi8(w);
                _mm_storeu_si128(ys.as_mut_ptr().add(i) as *mut __m128i, b);
            }
            i += 16;
        }
        reference::quantize(&xs[n16..], scale, zp, &mut ys[n16..]);
    }

    /// `_mm256_min_ps(x, acc)` returns `acc` when `x` is NaN, and `acc`
    /// when both are zeros of either sign: the scalar `x < acc` test.
    #[target_feature(enable = "avx2")]
    pub unsafe fn min_max_avx2(xs: &[f32]) -> (f32, f32) {
        let chunks = xs.chunks_exact(8);
        let tail = chunks.remainder();
        let mut lo = _mm256_setzero_ps();
        let mut hi = _mm256_setzero_ps();
        for c in chunks {
            // SAFETY: c has exactly 8 f32s.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            lo = _mm256_min_ps(x, lo);
            hi = _mm256_max_ps(x, hi);
        }
        let mut l = [0f32; 8];
        let mut h = [0f32; 8];
        // SAFETY: 8-wide stores into 8-element arrays.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
        }
        combine_lanes(&l, &h, tail)
    }

    /// Eight values per step: `x · (1 / scale)` rounded to nearest even
    /// (the default MXCSR mode), then the zero point and the clamp in float
    /// (`_mm256_max_ps(v, 0)` gives 0 for NaN), convert and pack. A vector
    /// with a lane near a tie (see [`super::NEAR_TIE`]) is done again with
    /// the division, so the result is the division's.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_avx2(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
        if !super::reciprocal_is_safe(scale) {
            // SAFETY: the caller's promise (AVX2).
            return unsafe { quantize_avx2_div(xs, scale, zp, ys) };
        }
        let n8 = xs.len() / 8 * 8;
        let s = _mm256_set1_ps(scale);
        let r = _mm256_set1_ps(1.0 / scale);
        let z = _mm256_set1_ps(zp as f32);
        let zero = _mm256_setzero_ps();
        let top = _mm256_set1_ps(255.0);
        let near = _mm256_set1_ps(super::NEAR_TIE);
        let sign = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= xs.len() == ys.len().
            unsafe {
                let x = _mm256_loadu_ps(xs.as_ptr().add(i));
                let p = _mm256_mul_ps(x, r);
                let mut q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
                // |p - q| is exact; NaN (from NaN or ±∞) compares false.
                let d = _mm256_andnot_ps(sign, _mm256_sub_ps(p, q));
                if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(d, near)) != 0 {
                    q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm256_div_ps(x, s),
                    );
                }
                store8(q, z, zero, top, ys.as_mut_ptr().add(i));
            }
            i += 8;
        }
        reference::quantize(&xs[n8..], scale, zp, &mut ys[n8..]);
    }

    /// [`quantize_avx2`] with the division for every vector (scales whose
    /// reciprocal is not safe).
    #[target_feature(enable = "avx2")]
    unsafe fn quantize_avx2_div(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
        let n8 = xs.len() / 8 * 8;
        let s = _mm256_set1_ps(scale);
        let z = _mm256_set1_ps(zp as f32);
        let zero = _mm256_setzero_ps();
        let top = _mm256_set1_ps(255.0);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= xs.len() == ys.len().
            unsafe {
                let x = _mm256_loadu_ps(xs.as_ptr().add(i));
                let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_div_ps(x, s),
                );
                store8(q, z, zero, top, ys.as_mut_ptr().add(i));
            }
            i += 8;
        }
        reference::quantize(&xs[n8..], scale, zp, &mut ys[n8..]);
    }

    /// `saturate(q + zp)` for eight rounded quotients, stored as 8 bytes.
    ///
    /// # Safety
    ///
    /// AVX2; `out` is valid for 8 bytes.
    #[inline(always)]
    unsafe fn store8(q: __m256, z: __m256, zero: __m256, top: __m256, out: *mut u8) {
        let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), zero), top);
        let w = _mm256_cvtps_epi32(v); // exact: v is a whole number in [0, 255]
        let lo = _mm256_castsi256_si128(w);
        let hi = _mm256_extracti128_si256::<1>(w);
        let p16 = _mm_packus_epi32(lo, hi);
        let p8 = _mm_packus_epi16(p16, p16);
        // SAFETY: the caller's promise.
        unsafe { _mm_storel_epi64(out as *mut __m128i, p8) };
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{combine_lanes, reference};
    use std::arch::aarch64::*;

    /// Compare-and-select, so NaN and signed zeros behave as the scalar
    /// `x < acc` test (NEON's `vminq_f32` would propagate NaN).
    #[target_feature(enable = "neon")]
    pub unsafe fn min_max_neon(xs: &[f32]) -> (f32, f32) {
        let chunks = xs.chunks_exact(4);
        let tail = chunks.remainder();
        let mut lo = vdupq_n_f32(0.0);
        let mut hi = vdupq_n_f32(0.0);
        for c in chunks {
            // SAFETY: c has exactly 4 f32s.
            let x = unsafe { vld1q_f32(c.as_ptr()) };
            lo = vbslq_f32(vcltq_f32(x, lo), x, lo);
            hi = vbslq_f32(vcgtq_f32(x, hi), x, hi);
        }
        let mut l = [0f32; 4];
        let mut h = [0f32; 4];
        // SAFETY: 4-wide stores into 4-element arrays.
        unsafe {
            vst1q_f32(l.as_mut_ptr(), lo);
            vst1q_f32(h.as_mut_ptr(), hi);
        }
        combine_lanes(&l, &h, tail)
    }

    /// Four values per step: `x · (1 / scale)` rounded to nearest even
    /// (`frintn`), add the zero point, clamp to 255 and convert with
    /// `fcvtzu`, which saturates negatives and NaN to 0. A vector with a
    /// lane near a tie (see [`super::NEAR_TIE`]) is done again with the
    /// division, so the result is the division's.
    #[target_feature(enable = "neon")]
    pub unsafe fn quantize_neon(xs: &[f32], scale: f32, zp: u8, ys: &mut [u8]) {
        let n4 = xs.len() / 4 * 4;
        let safe = super::reciprocal_is_safe(scale);
        let s = vdupq_n_f32(scale);
        let r = vdupq_n_f32(if safe { 1.0 / scale } else { 0.0 });
        let z = vdupq_n_f32(zp as f32);
        let top = vdupq_n_f32(255.0);
        let near = vdupq_n_f32(super::NEAR_TIE);
        let mut i = 0;
        while i < n4 {
            // SAFETY: i + 4 <= n4 <= xs.len() == ys.len().
            unsafe {
                let x = vld1q_f32(xs.as_ptr().add(i));
                let mut q = if safe {
                    let p = vmulq_f32(x, r);
                    let q = vrndnq_f32(p);
                    // |p - q| is exact; NaN (from NaN or ±∞) compares false.
                    if vmaxvq_u32(vcgeq_f32(vabdq_f32(p, q), near)) == 0 {
                        Some(q)
                    } else {
                        None
                    }
                } else {
                    None
                }
                .unwrap_or_else(|| vrndnq_f32(vdivq_f32(x, s)));
                q = vminq_f32(vaddq_f32(q, z), top);
                let w = vcvtq_u32_f32(q);
                let mut out = [0u32; 4];
                vst1q_u32(out.as_mut_ptr(), w);
                for (k, o) in out.iter().enumerate() {
                    *ys.get_unchecked_mut(i + k) = *o as u8;
                }
            }
            i += 4;
        }
        reference::quantize(&xs[n4..], scale, zp, &mut ys[n4..]);
    }
}

/// tract op: `DynamicQuantizeLinear` on f32, per tensor, to u8.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct FastDynamicQuantize;

impl crate::op::Kernel for FastDynamicQuantize {
    const NAME: &'static str = "EdgeBertDynamicQuantizeLinear";
    const VALIDATION: Validation = Validation::Accurate;

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let view = input.try_as_plain_ram()?;
        let xs = view.as_slice::<f32>()?;
        let k = input.shape().last().copied().unwrap_or(1);
        let (lo, hi) = with_mask(inputs.get(1), |mask| masked_range(xs, k, mask))?;
        let (scale, zp) = scale_and_zero_point(lo, hi);
        // SAFETY: every element is written by `quantize` below.
        let mut dst = unsafe { Tensor::uninitialized::<u8>(input.shape())? };
        {
            let mut out = dst.try_as_plain_ram_mut()?;
            quantize(xs, scale, zp, out.as_slice_mut::<u8>()?);
        }
        Ok(tvec!(
            dst.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zp).into_tvalue()
        ))
    }
}

crate::op::op_shell!(FastDynamicQuantize);

impl TypedOp for FastDynamicQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type(),
            "DynamicQuantizeLinear on {:?}: only f32 is supported",
            inputs[0].datum_type
        );
        let mut y = inputs[0].without_value();
        y.datum_type = u8::datum_type();
        Ok(tvec!(y, f32::scalar_fact(), u8::scalar_fact()))
    }

    as_op!();
}

/// Replaces tract-onnx's `DynamicQuantizeLinearU8` nodes with
/// [`FastDynamicQuantize`] (same outputs) and returns how many it
/// replaced. With `mask`, the model's attention-mask input, each new node
/// also reads the mask and takes its range over the real tokens only
/// ([`masked_range`]). Run it on the typed model, before `into_optimized`.
pub fn swap_in(model: &mut TypedModel, mask: Option<OutletId>) -> TractResult<usize> {
    if !crate::cpu::enabled(crate::cpu::Family::DynQuant) {
        return Ok(0);
    }
    let ids: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op.name() == "DynamicQuantizeLinearU8" && n.inputs.len() == 1)
        .map(|n| n.id)
        .collect();
    for &id in &ids {
        model.nodes_mut()[id].op = Box::new(FastDynamicQuantize);
        if let Some(mask) = mask {
            model.add_edge(mask, InletId::new(id, 1))?;
        }
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_op(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let t = Tensor::from_shape(&[xs.len()], xs).unwrap();
        let out = FastDynamicQuantize
            .eval_out_of_plan(tvec!(t.into_tvalue()))
            .unwrap()
            .unwrap();
        let y = out[0].try_as_plain_ram().unwrap();
        (
            y.as_slice::<u8>().unwrap().to_vec(),
            *out[1]
                .try_as_plain_ram()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            *out[2]
                .try_as_plain_ram()
                .unwrap()
                .to_scalar::<u8>()
                .unwrap(),
        )
    }

    /// The worked examples from the ONNX operator documentation.
    #[test]
    fn onnx_examples() {
        let cases: [(&[f32], f32, u8, &[u8]); 3] = [
            (
                &[0., 2., -3., -2.5, 1.34, 0.5],
                0.019_607_844,
                153,
                &[153, 255, 0, 26, 221, 179],
            ),
            (
                &[-1., -2.1, -1.3, -2.5, -3.34, -4.],
                0.015_686_275,
                255,
                &[191, 121, 172, 96, 42, 0],
            ),
            (
                &[1., 2.1, 1.3, 2.5, 3.34, 4., 1.5, 2.6, 3.9, 4., 3., 2.345],
                0.015_686_275,
                0,
                &[64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149],
            ),
        ];
        for (xs, scale, zp, ys) in cases {
            let (y, s, z) = run_op(xs);
            assert!((s - scale).abs() < 1e-8, "{s} vs {scale}");
            assert_eq!(z, zp);
            assert_eq!(y, ys);
        }
    }

    #[test]
    fn ties_round_to_even() {
        // scale 1 exactly (range 255), zero point 127: 0.5 → 0 + 127, 1.5 → 2 + 127.
        let mut xs = vec![-127.0f32, 128.0, 0.5, 1.5, 2.5, -0.5];
        xs.extend([0.0; 10]); // long enough for the SIMD body
        let (y, s, z) = run_op(&xs);
        assert_eq!((s, z), (1.0, 127));
        assert_eq!(&y[..6], &[0, 255, 127, 129, 129, 127]);
    }

    #[test]
    fn all_zero_nan_and_infinities_do_not_panic() {
        let (y, _, z) = run_op(&[0.0; 20]);
        assert_eq!(z, 0);
        assert!(y.iter().all(|&v| v == 0));
        let mut xs = vec![1.0f32; 20];
        xs[3] = f32::NAN;
        let (y, _, _) = run_op(&xs);
        assert_eq!(y[3], 0);
        assert_eq!(y[0], 255);
        xs[5] = f32::INFINITY;
        xs[7] = f32::NEG_INFINITY;
        let fast = run_op(&xs);
        let (lo, hi) = reference::min_max(&xs);
        let (scale, zp) = scale_and_zero_point(lo, hi);
        let mut want = vec![0u8; xs.len()];
        reference::quantize(&xs, scale, zp, &mut want);
        assert_eq!(fast.0, want);
    }

    #[test]
    fn masked_range_takes_the_real_rows_only() {
        // Three rows of two; the padding row holds the extremes.
        let xs = [1.0, -2.0, 50.0, -60.0, 3.0, 0.5];
        assert_eq!(masked_range(&xs, 2, None), (-60.0, 50.0));
        assert_eq!(masked_range(&xs, 2, Some(&[1, 0, 1])), (-2.0, 3.0));
        assert_eq!(masked_range(&xs, 2, Some(&[1, 1, 1])), (-60.0, 50.0));
        // All padding: the range of nothing, (0, 0).
        assert_eq!(masked_range(&xs, 2, Some(&[0, 0, 0])), (0.0, 0.0));
        // A mask that does not fit the rows (the pooler's one row): ignored.
        assert_eq!(masked_range(&xs, 2, Some(&[1, 0])), (-60.0, 50.0));
        assert_eq!(masked_range(&xs, 3, Some(&[1, 0, 1])), (-60.0, 50.0));
        assert_eq!(masked_range(&xs, 0, Some(&[])), (-60.0, 50.0));
    }

    #[test]
    fn reports_its_path() {
        let p = path();
        #[cfg(target_arch = "aarch64")]
        assert_eq!(p, Path::Neon);
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        assert_eq!(p, Path::Portable);
        let _ = p;
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -50.0f32..50.0,
            // Halves and whole numbers: ties after division by a round scale.
            2 => (-300i32..300).prop_map(|v| v as f32 * 0.5),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => prop::num::f32::ANY,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The chosen SIMD path equals the scalar reference, bit for bit.
        #[test]
        fn simd_equals_reference(xs in prop::collection::vec(value(), 0..200)) {
            let (rlo, rhi) = reference::min_max(&xs);
            let (scale, zp) = scale_and_zero_point(rlo, rhi);
            let mut want = vec![0u8; xs.len()];
            reference::quantize(&xs, scale, zp, &mut want);
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                let (lo, hi) = min_max_on(p, &xs);
                prop_assert_eq!(lo.to_bits(), rlo.to_bits());
                prop_assert_eq!(hi.to_bits(), rhi.to_bits());
                let mut fast = vec![0u8; xs.len()];
                quantize_on(p, &xs, scale, zp, &mut fast);
                prop_assert_eq!(&fast, &want, "{:?}", p);
            }
        }

        /// Any scale, including tiny and huge ones, and any zero point.
        #[test]
        fn simd_equals_reference_any_scale(
            xs in prop::collection::vec(value(), 0..64),
            scale in prop::num::f32::POSITIVE | prop::num::f32::NORMAL,
            zp in any::<u8>(),
        ) {
            let mut want = vec![0u8; xs.len()];
            reference::quantize(&xs, scale, zp, &mut want);
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                let mut fast = vec![0u8; xs.len()];
                quantize_on(p, &xs, scale, zp, &mut fast);
                prop_assert_eq!(&fast, &want, "{:?}", p);
            }
        }

        /// Quotients at and a few ulps either side of ties (k + 1/2), where
        /// the SIMD paths must divide instead of multiplying.
        #[test]
        fn near_ties_equal_reference(
            ks in prop::collection::vec((-300i32..300, -6i32..=6), 8..64),
            scale in prop_oneof![1e-6f32..1e3, (-20i32..20).prop_map(|e| 2f32.powi(e))],
            zp in any::<u8>(),
        ) {
            let xs: Vec<f32> = ks
                .iter()
                .map(|&(k, ulps)| {
                    let x = (k as f32 + 0.5) * scale;
                    f32::from_bits(x.to_bits().wrapping_add_signed(ulps))
                })
                .collect();
            let mut want = vec![0u8; xs.len()];
            reference::quantize(&xs, scale, zp, &mut want);
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                let mut fast = vec![0u8; xs.len()];
                quantize_on(p, &xs, scale, zp, &mut fast);
                prop_assert_eq!(&fast, &want, "{:?}", p);
            }
        }

        /// The same as tract-onnx's definition on finite inputs: an integer
        /// clamp after rounding, which is what the int8 golden files were
        /// made against.
        #[test]
        fn masked_range_is_the_range_of_the_kept_rows(
            rows in prop::collection::vec((prop::collection::vec(value(), 5), any::<bool>()), 0..12)
        ) {
            let xs: Vec<f32> = rows.iter().flat_map(|(r, _)| r.iter().copied()).collect();
            let mask: Vec<i64> = rows.iter().map(|&(_, keep)| keep as i64).collect();
            let kept: Vec<f32> = rows
                .iter()
                .filter(|(_, keep)| *keep)
                .flat_map(|(r, _)| r.iter().copied())
                .collect();
            let (lo, hi) = masked_range(&xs, 5, Some(&mask));
            let (rlo, rhi) = reference::min_max(&kept);
            prop_assert_eq!((lo.to_bits(), hi.to_bits()), (rlo.to_bits(), rhi.to_bits()));
        }

        #[test]
        fn matches_integer_clamp(xs in prop::collection::vec(-50.0f32..50.0, 1..100)) {
            let (lo, hi) = reference::min_max(&xs);
            let (scale, zp) = scale_and_zero_point(lo, hi);
            let mut fast = vec![0u8; xs.len()];
            quantize(&xs, scale, zp, &mut fast);
            for (x, y) in xs.iter().zip(fast) {
                let want = (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8;
                prop_assert_eq!(y, want);
            }
        }
    }
}
