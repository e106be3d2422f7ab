//! A fused int8 matmul for tract: quantise, multiply, dequantise, add the
//! bias, in one op with SIMD kernels chosen at run time.
//!
//! # Why
//!
//! The int8 bundle computes each of its 38 linear layers as six ONNX
//! nodes: `DynamicQuantizeLinear(x)`, `MatMulInteger(xq, W, x_zp)`, a cast
//! to f32, a scale product, a multiplication and the bias addition. Timing
//! every node of tract's plan (32 tokens, 300 runs) put tract's int8 matmul
//! at 47.7 % of the run at about a third of the CPU's VNNI peak, packing its
//! activations at 10.7 %, and the dequantising scale and bias at 7.5 %.
//! ONNX Runtime runs the whole model in about the time those matmuls take.
//!
//! # What
//!
//! [`fuse`] rewrites the ONNX graph before tract sees it: each such chain
//! becomes one `EdgeBertQMatMul(x, W, w_scale, bias[, attention_mask])`
//! node. tract-onnx builds it with [`onnx_builder`], which packs `W` once
//! ([`Packed`]) and wires [`QMatMul`], a tract op with the inputs `x` and,
//! if the graph has one, the attention mask. The rest of tract's
//! optimiser works around it as before, and every bucket's plan shares the
//! one packed copy.
//!
//! Per run, [`QMatMul`] quantises `x` per tensor with [`crate::dynquant`]'s
//! kernels (the ONNX `DynamicQuantizeLinear` definition, bit for bit, with
//! the range over the real tokens' rows, as the swapped-in
//! `DynamicQuantizeLinear` takes it: [`crate::dynquant::masked_range`]), then
//! computes, for each output `(i, j)`,
//!
//! ```text
//! acc = Σ_t (xq[i,t] - x_zp) · W[t,j]                       (exact, i32)
//! y   = f32(acc) · (x_scale · w_scale[j]) + bias[j]          (no FMA)
//! ```
//!
//! which is what the six nodes compute, in the same order, so the logits
//! are the unfused graph's bit for bit.
//!
//! # Kernels ([`Path`])
//!
//! `W` is packed in panels of 64 columns; within a panel, for each group of
//! four rows of `W`, the 64 columns' four bytes are adjacent (256 bytes).
//! This is the operand layout of x86's `vpdpbusd` and of aarch64's `sdot`.
//! `Σ xq·W` is taken over the raw `xq`; the zero point comes out of it
//! through precomputed column sums.
//!
//! - `Amx` (x86-64 with AMX-INT8, e.g. Sapphire Rapids; Linux grants the
//!   tile state through `arch_prctl` first): `tdpbusd` on 2 × 2 blocks of
//!   tiles, 32 rows × 32 columns × 64 bytes of `k` per step. A panel's
//!   groups are already the B-tile layout (one 64-byte tile row is a group
//!   of 16 columns; rows 256 bytes apart). Depths that are not whole tiles
//!   (`k` not a multiple of 64) take the `Vnni` tile.
//! - `Vnni` (x86-64 with AVX-512 VNNI): four zmm of weights × four rows,
//!   16 `vpdpbusd` per group of four.
//! - `Avx2` (x86-64): bytes widened to i16, `vpmaddwd`, exact.
//! - `Sdot` (aarch64 with the dot-product extension, e.g. Cortex-A76 on the
//!   Pi 5, Jetson Orin): `sdot` through inline assembly (the intrinsic is
//!   not stable Rust), in its indexed form: one 16-byte load of a row's
//!   activations serves four groups. `sdot` multiplies signed bytes, so
//!   `xq` is flipped to `xq - 128` first and `128 · colsum` added back.
//! - `Neon` (any aarch64, e.g. Cortex-A72 on the Pi 4): with weights in
//!   -127..=127 ([`Packed::pairs_fit`]), `xq` flipped as for `Sdot`, byte
//!   products of two groups summed in 16-bit lanes (`smull`, `smlal`) and
//!   then widened into 32-bit sums (`sadalp`); with a -128 weight,
//!   widening `smlal` on 16-bit values. Exact either way.
//! - `Portable`: the scalar loop, for every other target.
//!
//! Every path is tested bit-exact against the definition ([`reference`](fn@reference)),
//! with property tests; the aarch64 paths run under qemu in `cross/`.
//!
//! # When it is used
//!
//! [`chosen`] decides, once per process. By default the graph is fused only
//! where this op was measured to beat tract's own int8 matmul: the `Amx`
//! and `Vnni` paths (`edge-bert bench`, see the README for figures), and
//! `Sdot`, by instructions executed under qemu (`bench/arm_icount.sh`,
//! cortex-a76: 201.4 M per 128-token text against 223.6 M with tract's
//! `arm64simd_mmm_i32_8x8_dot`, and 0.55 G against 1.35 G to start, as
//! packing here is cheaper than tract's optimiser passes over its
//! matmuls). Instruction counts are not times; no board has measured it.
//! `Neon` likewise on aarch64 cores without the dot product (cortex-a72:
//! 463.0 M against 576.4 M per text, 0.55 G against 1.35 G to start); its
//! fast kernel needs weights in -127..=127, which `edge-bert-quantize`
//! always writes (a bundle with a -128 weight takes the slower widening
//! kernel).
//! Elsewhere tract's kernels run too, unfused. `EDGE_BERT_QMATMUL=off|auto|amx|vnni|avx2|sdot|neon|portable`
//! overrides it (an unavailable path falls back to `auto` with a warning).

use std::cell::RefCell;
use std::sync::OnceLock;

use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    as_op, ensure, op_as_typed_op, op_out_of_plan, AxisChangeConsequence, AxisOp, EvalContext,
    EvalOp, InOut, Op, StaticName, TypedOp, Validation,
};
use tract_onnx::tract_hir::internal::{
    check_output_arity, expand, Expansion, InferenceOp, Solver, TensorProxy,
};

/// Columns per packed panel.
pub const PANEL: usize = 64;
/// Rows of `W` per group (the depth of one `vpdpbusd` / `sdot` lane).
const GROUP: usize = 4;
/// Bytes of one group of one panel.
const GROUP_BYTES: usize = PANEL * GROUP;
/// Rows of `x` per tile. (Six rows on `Vnni`, 24 zmm accumulating, was
/// slower end to end: `edge-bert bench` 77–83 against 86–105 texts/s.)
const MR: usize = 4;
/// The ONNX op type [`fuse`] writes and [`onnx_builder`] reads.
pub const OP_TYPE: &str = "EdgeBertQMatMul";

/// A kernel for the integer products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    Amx,
    Vnni,
    Avx2,
    Sdot,
    Neon,
    Portable,
}

impl Path {
    /// Every path, fastest first.
    pub const ALL: [Path; 6] = [
        Path::Amx,
        Path::Vnni,
        Path::Avx2,
        Path::Sdot,
        Path::Neon,
        Path::Portable,
    ];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Amx => Path::Vnni.available() && amx::available(),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => {
                let f = crate::cpu::features();
                f.avx512f && f.avx512bw && f.avx512vnni
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => crate::cpu::features().avx2,
            #[cfg(target_arch = "aarch64")]
            Path::Sdot => crate::cpu::features().dotprod,
            #[cfg(target_arch = "aarch64")]
            Path::Neon => crate::cpu::features().neon,
            Path::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest path this CPU has.
    pub fn best() -> Path {
        Path::ALL
            .into_iter()
            .find(|p| p.available())
            .unwrap_or(Path::Portable)
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Amx => "amx",
            Path::Vnni => "vnni",
            Path::Avx2 => "avx2",
            Path::Sdot => "sdot",
            Path::Neon => "neon",
            Path::Portable => "portable",
        }
    }
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<Option<Path>>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with [`chosen`] answering `choice` on this thread (engines
/// built inside `f` fuse with that path, or not at all with `None`); a
/// path this CPU lacks counts as `None`. For tests and benchmarks that
/// compare paths in one process.
/// The previous choice is restored even when `f` panics.
pub fn with_choice<T>(choice: Option<Path>, f: impl FnOnce() -> T) -> T {
    /// Puts the thread's previous choice back when dropped (also while
    /// unwinding).
    struct Restore(Option<Option<Path>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.set(self.0);
        }
    }
    let _restore = Restore(OVERRIDE.replace(Some(choice.filter(|p| p.available()))));
    f()
}

/// The path the engine fuses with, or `None` to leave tract's matmuls in
/// place (see the module doc). Decided once per process (but see
/// [`with_choice`]).
pub fn chosen() -> Option<Path> {
    if let Some(choice) = OVERRIDE.get() {
        return choice;
    }
    static CHOSEN: OnceLock<Option<Path>> = OnceLock::new();
    *CHOSEN.get_or_init(|| rule(crate::cpu::setting(crate::cpu::Family::QMatMul)))
}

/// [`chosen`]'s rule, given the switch's value (`EDGE_BERT_QMATMUL`, see
/// [`crate::cpu`]): `auto` fuses only where it was measured to win: AMX
/// and VNNI (`edge-bert bench` on x86), SDOT and NEON (instruction counts
/// under qemu cortex-a76 and cortex-a72, `bench/arm_icount.sh`).
pub fn choose(setting: Option<&str>) -> Option<Path> {
    rule(crate::cpu::Setting::parse(setting))
}

fn rule(setting: crate::cpu::Setting<'_>) -> Option<Path> {
    let auto = || {
        [Path::Amx, Path::Vnni, Path::Sdot, Path::Neon]
            .into_iter()
            .find(|p| p.available())
    };
    crate::cpu::choose(setting, auto)
}

impl crate::cpu::KernelPath for Path {
    const FAMILY: crate::cpu::Family = crate::cpu::Family::QMatMul;
    const ALL: &'static [Path] = &Path::ALL;

    fn name(self) -> &'static str {
        Path::name(self)
    }

    fn available(self) -> bool {
        Path::available(self)
    }
}

/// The definition: `y[i,j] = f32(Σ_t (a[i,t] - zp)·w[t,j]) · (x_scale ·
/// w_scale[j]) + bias[j]`, with `a` `m × k` and `w` `k × n`, row-major.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    a: &[u8],
    zp: u8,
    x_scale: f32,
    w: &[i8],
    w_scale: &[f32],
    bias: &[f32],
    (m, k, n): (usize, usize, usize),
    y: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let acc: i32 = (0..k)
                .map(|t| (a[i * k + t] as i32 - zp as i32) * w[t * n + j] as i32)
                .sum();
            y[i * n + j] = acc as f32 * (x_scale * w_scale[j]) + bias[j];
        }
    }
}

/// `W` (`k × n` i8), its per-column scales and the bias, packed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    k: usize,
    n: usize,
    /// Groups of [`GROUP`] rows, `k` rounded up.
    groups: usize,
    /// `[panel][group][column in panel][row in group]`, zero-padded.
    w: Vec<i8>,
    /// `Σ_t W[t, j]`, per padded column.
    col_sums: Vec<i32>,
    w_scale: Vec<f32>,
    bias: Vec<f32>,
    /// No weight is -128: the `Neon` path may sum two products in a 16-bit
    /// lane (see [`Packed::pairs_fit`]).
    pairs_fit: bool,
}

impl Packed {
    /// Packs `w` (`k × n`, row-major) with `n` scales and biases.
    pub fn new(
        w: &[i8],
        k: usize,
        n: usize,
        w_scale: &[f32],
        bias: &[f32],
    ) -> Result<Packed, String> {
        // 255 · 128 · k must fit an i32 for the sums to be exact.
        if k == 0 || n == 0 || k > 65_536 {
            return Err(format!("a {k} x {n} weight matrix is not supported"));
        }
        if w.len() != k * n || w_scale.len() != n || bias.len() != n {
            return Err(format!(
                "weights {} values for {k} x {n}, {} scales, {} biases",
                w.len(),
                w_scale.len(),
                bias.len()
            ));
        }
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * groups * GROUP_BYTES];
        let mut col_sums = vec![0i32; n];
        for t in 0..k {
            for j in 0..n {
                let v = w[t * n + j];
                let (p, c) = (j / PANEL, j % PANEL);
                packed[(p * groups + t / GROUP) * GROUP_BYTES + c * GROUP + t % GROUP] = v;
                col_sums[j] += v as i32;
            }
        }
        Ok(Packed {
            k,
            n,
            groups,
            w: packed,
            col_sums,
            w_scale: w_scale.to_vec(),
            bias: bias.to_vec(),
            pairs_fit: !w.contains(&i8::MIN),
        })
    }

    /// Whether every weight is in -127..=127. Then a flipped activation
    /// (`xq - 128`, in -128..=127) times a weight is at most 16,256 in
    /// size, and two such products fit an i16 lane (32,512 ≤ 32,767): the
    /// `Neon` path multiplies bytes into 16-bit lanes and adds the next
    /// group's products there (`smull`, `smlal`) before widening to 32
    /// bits (`sadalp`), instead of widening every byte first. Symmetric
    /// int8 quantisers (edge-bert-quantize, ONNX Runtime's) give such
    /// weights; with a -128 the path widens first, as before.
    pub fn pairs_fit(&self) -> bool {
        self.pairs_fit
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes of `x`'s quantised row in the scratch buffer (`k` rounded up).
    pub fn row_stride(&self) -> usize {
        self.groups * GROUP
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.w.len() + self.n * 12
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.groups * GROUP_BYTES;
        &self.w[p * len..(p + 1) * len]
    }
}

/// Products of `m` quantised rows with `packed`: `a` holds row `i` at
/// `a[i * stride..][..k]` with `stride = packed.row_stride()` and zeros in
/// the padding; `y` is `m × n`. The `Sdot` path flips `a` in place.
///
/// # Panics
///
/// If `path` is not [`Path::available`], or the buffers are too short.
pub fn qmatmul(
    path: Path,
    a: &mut [u8],
    m: usize,
    zp: u8,
    x_scale: f32,
    packed: &Packed,
    y: &mut [f32],
) {
    assert!(path.available(), "qmatmul: {path:?} is not available here");
    let stride = packed.row_stride();
    let a = &mut a[..m * stride];
    let y = &mut y[..m * packed.n];
    // acc = Σ a·w + offset · colsum
    let pairs = path == Path::Neon && packed.pairs_fit;
    let offset = if path == Path::Sdot || pairs {
        for v in a.iter_mut() {
            *v ^= 0x80;
        }
        128 - zp as i32
    } else {
        -(zp as i32)
    };
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx && stride.is_multiple_of(amx::KB) {
        // SAFETY: the path is available (AMX-INT8, the OS's permission,
        // and AVX-512 VNNI); `a` holds m rows of `stride` bytes, a multiple
        // of the tile depth; `y` holds m rows of n.
        unsafe { amx::run(a, m, stride, packed, offset, x_scale, y) };
        return;
    }
    // AMX tiles take 64 bytes of `k` at a time; other depths take VNNI.
    let path = if path == Path::Amx { Path::Vnni } else { path };
    let n = packed.n;
    for p in 0..n.div_ceil(PANEL) {
        let panel = packed.panel(p);
        let j0 = p * PANEL;
        let post = Post::for_panel(packed, p, offset, x_scale);
        let mut i = 0;
        while i < m {
            let rows = MR.min(m - i);
            let a_tile = &a[i * stride..(i + rows) * stride];
            let y_tile = &mut y[i * n..];
            match rows {
                4 => tile::<4>(path, pairs, a_tile, stride, panel, &post, y_tile, n, j0),
                3 => tile::<3>(path, pairs, a_tile, stride, panel, &post, y_tile, n, j0),
                2 => tile::<2>(path, pairs, a_tile, stride, panel, &post, y_tile, n, j0),
                _ => tile::<1>(path, pairs, a_tile, stride, panel, &post, y_tile, n, j0),
            }
            i += rows;
        }
    }
}

/// What turns one panel's integer sums into outputs.
struct Post<'a> {
    offset: i32,
    x_scale: f32,
    col_sums: &'a [i32],
    w_scale: &'a [f32],
    bias: &'a [f32],
}

impl Post<'_> {
    fn for_panel(packed: &Packed, p: usize, offset: i32, x_scale: f32) -> Post<'_> {
        let j0 = p * PANEL;
        let cols = PANEL.min(packed.n - j0);
        Post {
            offset,
            x_scale,
            col_sums: &packed.col_sums[j0..j0 + cols],
            w_scale: &packed.w_scale[j0..j0 + cols],
            bias: &packed.bias[j0..j0 + cols],
        }
    }

    #[inline(always)]
    fn apply(&self, acc: &[i32; PANEL], y: &mut [f32]) {
        let cols = self.col_sums.len();
        if cols == PANEL {
            // Whole panels, in fixed-size arrays: the loop is vectorised
            // whatever the caller it is inlined into.
            let (Ok(y), Ok(sums), Ok(ws), Ok(bias)) = (
                <&mut [f32; PANEL]>::try_from(&mut y[..PANEL]),
                <&[i32; PANEL]>::try_from(self.col_sums),
                <&[f32; PANEL]>::try_from(self.w_scale),
                <&[f32; PANEL]>::try_from(self.bias),
            ) else {
                unreachable!("panel slices are PANEL long");
            };
            for j in 0..PANEL {
                let v = acc[j] + self.offset * sums[j];
                y[j] = v as f32 * (self.x_scale * ws[j]) + bias[j];
            }
            return;
        }
        for j in 0..cols {
            let v = acc[j] + self.offset * self.col_sums[j];
            y[j] = v as f32 * (self.x_scale * self.w_scale[j]) + self.bias[j];
        }
    }
}

/// One tile: `R` rows × one panel, products then [`Post`], each path's
/// whole tile compiled with its target features (so the post-processing
/// is vectorised with them too).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const R: usize>(
    path: Path,
    pairs: bool,
    a: &[u8],
    stride: usize,
    panel: &[i8],
    post: &Post,
    y: &mut [f32],
    n: usize,
    j0: usize,
) {
    debug_assert!(a.len() >= R * stride && panel.len() == stride / GROUP * GROUP_BYTES);
    let t = Tile {
        a,
        stride,
        panel,
        post,
        n,
        j0,
        pairs,
    };
    match path {
        // SAFETY (every arm): `qmatmul` checked that the CPU has the path's
        // features; the slices hold R rows of `stride` bytes and the
        // panel's groups, which is all the kernels read.
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => unsafe { x86::tile_vnni::<R>(&t, y) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::tile_avx2::<R>(&t, y) },
        #[cfg(target_arch = "aarch64")]
        Path::Sdot => unsafe { arm::tile_sdot::<R>(&t, y) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { arm::tile_neon::<R>(&t, y) },
        _ => {
            let mut acc = [[0i32; PANEL]; R];
            dots_portable::<R>(t.a, t.stride, t.panel, &mut acc);
            t.finish(&acc, y);
        }
    }
}

/// A tile's operands.
struct Tile<'a> {
    a: &'a [u8],
    stride: usize,
    panel: &'a [i8],
    post: &'a Post<'a>,
    n: usize,
    j0: usize,
    /// `Neon` only: `a` is flipped and the weights fit
    /// [`Packed::pairs_fit`], so the pairs kernel runs.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pairs: bool,
}

impl Tile<'_> {
    /// Writes the outputs of the tile's rows from their sums.
    #[inline(always)]
    fn finish<const R: usize>(&self, acc: &[[i32; PANEL]; R], y: &mut [f32]) {
        for (r, acc) in acc.iter().enumerate() {
            let start = r * self.n + self.j0;
            self.post
                .apply(acc, &mut y[start..start + self.post.col_sums.len()]);
        }
    }
}

/// The scalar kernel: `acc[r][c] = Σ_t a[r, t] · panel[t, c]`.
fn dots_portable<const R: usize>(
    a: &[u8],
    stride: usize,
    panel: &[i8],
    acc: &mut [[i32; PANEL]; R],
) {
    for (g, w) in panel.chunks_exact(GROUP_BYTES).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = &a[r * stride + g * GROUP..][..GROUP];
            for (c, acc) in acc.iter_mut().enumerate() {
                let w = &w[c * GROUP..][..GROUP];
                *acc += (0..GROUP).map(|t| x[t] as i32 * w[t] as i32).sum::<i32>();
            }
        }
    }
}

/// Intel AMX (Sapphire Rapids and later): `tdpbusd` on tiles of 16 rows
/// of 64 bytes, 64 bytes of `k` deep per step.
/// The packed panel is already the B-tile layout (a tile row is one group
/// of four rows of `W` for 16 columns: 64 bytes, rows 256 bytes apart).
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{Packed, Post, GROUP, GROUP_BYTES, PANEL};
    use std::arch::asm;
    use std::cell::RefCell;
    use std::sync::OnceLock;

    /// Rows of `x` per tile.
    const TR: usize = 16;
    /// Bytes of `k` per tile (a tile row).
    pub const KB: usize = 64;

    /// Whether the CPU has AMX-TILE and AMX-INT8 and the OS lets this
    /// process use the tile registers (Linux: `arch_prctl`, asked once).
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| crate::cpu::features().amx && permission())
    }

    #[cfg(target_os = "linux")]
    fn permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: asks the kernel for a permission; no memory is passed.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn permission() -> bool {
        false
    }

    /// The 64-byte tile configuration (palette 1).
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    thread_local! {
        /// The last rows of `x`, zero-padded to whole tiles; grows to the
        /// largest `k` seen, then is reused.
        static TAIL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// [`super::qmatmul`] on AMX. Rows go 32 at a time (the last block
    /// copied and zero-padded to whole tiles); for each panel, each half
    /// (32 columns) is a 2 × 2 block of tiles: tmm0–3 the sums, tmm4–5
    /// two tiles of 16 rows of `x`, tmm6–7 two tiles of `W`, every tile
    /// 16 rows of 64 bytes.
    ///
    /// # Safety
    ///
    /// [`available`] and AVX-512 VNNI; `a` holds `m` rows of `stride`
    /// bytes with `stride % KB == 0` and `stride == packed.row_stride()`;
    /// `y` holds `m × packed.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn run(
        a: &[u8],
        m: usize,
        stride: usize,
        packed: &Packed,
        offset: i32,
        x_scale: f32,
        y: &mut [f32],
    ) {
        assert!(stride.is_multiple_of(KB) && a.len() >= m * stride && y.len() >= m * packed.n);
        let n = packed.n;
        // Palette 1 has eight tiles; the other entries must be zero.
        let mut cfg = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        cfg.colsb[..8].fill(KB as u16);
        cfg.rows[..8].fill(TR as u8);
        // SAFETY: a valid palette-1 configuration, 64 bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        TAIL.with(|tail| {
            let mut tail = tail.borrow_mut();
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(2 * TR);
                let x = &a[i * stride..(i + rows) * stride];
                let block: &[u8] = if rows == 2 * TR {
                    x
                } else {
                    tail.resize(2 * TR * stride, 0);
                    tail[..x.len()].copy_from_slice(x);
                    tail[x.len()..].fill(0);
                    &tail
                };
                let y = &mut y[i * n..(i + rows) * n];
                // SAFETY: `block` holds 32 rows of `stride` bytes; the
                // caller's promises for the rest.
                unsafe { block32(block, rows, stride, packed, offset, x_scale, y) };
                i += rows;
            }
        });
        // SAFETY: gives the tile state back (smaller context switches).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Up to 32 rows (`rows`) of outputs from a block of 32 rows of `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block32(
        block: &[u8],
        rows: usize,
        stride: usize,
        packed: &Packed,
        offset: i32,
        x_scale: f32,
        y: &mut [f32],
    ) {
        debug_assert!(block.len() == 2 * TR * stride && y.len() == rows * packed.n);
        let n = packed.n;
        let mut acc = [[0i32; PANEL]; 2 * TR];
        let x0 = block.as_ptr();
        // SAFETY: row 16 of the 32.
        let x1 = unsafe { x0.add(TR * stride) };
        let out = acc.as_mut_ptr() as *mut u8;
        for p in 0..n.div_ceil(PANEL) {
            let w0 = packed.panel(p).as_ptr();
            for half in 0..2 {
                // SAFETY: tiles configured by `run`; step kc reads 16 rows
                // of 64 bytes, `stride` apart, at x0 / x1 + 64·kc (inside
                // the block's rows), and 16 rows of 64 bytes, 256 apart, of
                // the panel from group 16·kc, column 32·half (the panel
                // has stride / 4 groups of 256 bytes); the stores write 16
                // rows of 64 bytes, 256 apart, inside `acc` (32 rows of 256).
                unsafe {
                    let w = w0.add(half * 128);
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for kc in 0..stride / KB {
                        asm!(
                            "tileloadd tmm4, [{x0} + {xs}*1]",
                            "tileloadd tmm6, [{w} + {ws}*1]",
                            "tdpbusd tmm0, tmm4, tmm6",
                            "tileloadd tmm7, [{w} + {ws}*1 + 64]",
                            "tdpbusd tmm1, tmm4, tmm7",
                            "tileloadd tmm5, [{x1} + {xs}*1]",
                            "tdpbusd tmm2, tmm5, tmm6",
                            "tdpbusd tmm3, tmm5, tmm7",
                            x0 = in(reg) x0.add(kc * KB),
                            x1 = in(reg) x1.add(kc * KB),
                            xs = in(reg) stride,
                            w = in(reg) w.add(kc * (KB / GROUP) * GROUP_BYTES),
                            ws = in(reg) GROUP_BYTES,
                            options(nostack, readonly)
                        );
                    }
                    let o = out.add(half * 128);
                    asm!(
                        "tilestored [{o} + {s}*1], tmm0",
                        "tilestored [{o} + {s}*1 + 64], tmm1",
                        "tilestored [{o1} + {s}*1], tmm2",
                        "tilestored [{o1} + {s}*1 + 64], tmm3",
                        o = in(reg) o,
                        o1 = in(reg) o.add(TR * PANEL * 4),
                        s = in(reg) PANEL * 4,
                        options(nostack)
                    );
                }
            }
            let post = Post::for_panel(packed, p, offset, x_scale);
            let cols = post.col_sums.len();
            for (r, acc) in acc[..rows].iter().enumerate() {
                let start = r * n + p * PANEL;
                post.apply(acc, &mut y[start..start + cols]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, GROUP, GROUP_BYTES, PANEL};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni<const R: usize>(t: &Tile, y: &mut [f32]) {
        let mut acc = [[0i32; PANEL]; R];
        // SAFETY: same features; the caller checked the slices.
        unsafe { dots_vnni::<R>(t.a, t.stride, t.panel, &mut acc) };
        t.finish(&acc, y);
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_avx2<const R: usize>(t: &Tile, y: &mut [f32]) {
        let mut acc = [[0i32; PANEL]; R];
        // SAFETY: same features; the caller checked the slices.
        unsafe { dots_avx2::<R>(t.a, t.stride, t.panel, &mut acc) };
        t.finish(&acc, y);
    }

    /// Four rows' four bytes, broadcast, against the panel's four zmm per
    /// group: 16 `vpdpbusd` (u8 × i8, summed in i32 without saturation).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots_vnni<const R: usize>(
        a: &[u8],
        stride: usize,
        panel: &[i8],
        out: &mut [[i32; PANEL]; R],
    ) {
        let groups = stride / GROUP;
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let ap = a.as_ptr();
        let wp = panel.as_ptr();
        for g in 0..groups {
            // SAFETY: g < groups, so the 256 bytes at g * GROUP_BYTES are in
            // the panel, and row r's 4 bytes at g * GROUP are in `a`.
            unsafe {
                let w = wp.add(g * GROUP_BYTES);
                let w0 = _mm512_loadu_si512(w as *const _);
                let w1 = _mm512_loadu_si512(w.add(64) as *const _);
                let w2 = _mm512_loadu_si512(w.add(128) as *const _);
                let w3 = _mm512_loadu_si512(w.add(192) as *const _);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = (ap.add(r * stride + g * GROUP) as *const i32).read_unaligned();
                    let x = _mm512_set1_epi32(x);
                    acc[0] = _mm512_dpbusd_epi32(acc[0], x, w0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], x, w1);
                    acc[2] = _mm512_dpbusd_epi32(acc[2], x, w2);
                    acc[3] = _mm512_dpbusd_epi32(acc[3], x, w3);
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (q, v) in acc.iter().enumerate() {
                // SAFETY: 16 i32 into out[16q..16q + 16].
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(16 * q) as *mut _, *v) };
            }
        }
    }

    /// Bytes widened to i16 and multiplied in pairs (`vpmaddwd`, exact);
    /// 16 columns × `R` rows at a time, pairs of partial sums added at the
    /// end.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots_avx2<const R: usize>(
        a: &[u8],
        stride: usize,
        panel: &[i8],
        out: &mut [[i32; PANEL]; R],
    ) {
        let groups = stride / GROUP;
        let ap = a.as_ptr();
        let wp = panel.as_ptr();
        for block in 0..PANEL / 16 {
            // acc[r][q]: columns 4q..4q+4 of the block, two partial sums each.
            let mut acc = [[_mm256_setzero_si256(); 4]; R];
            for g in 0..groups {
                // SAFETY: as in dots_vnni; the block's 64 bytes are inside
                // the group's 256.
                unsafe {
                    let w = wp.add(g * GROUP_BYTES + block * 64);
                    let wv = [0, 1, 2, 3].map(|q| {
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(16 * q) as *const __m128i))
                    });
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = (ap.add(r * stride + g * GROUP) as *const i32).read_unaligned();
                        // [x0 x1 x2 x3] as i16, four times.
                        let x = _mm256_cvtepu8_epi16(_mm_set1_epi32(x));
                        for q in 0..4 {
                            acc[q] = _mm256_add_epi32(acc[q], _mm256_madd_epi16(wv[q], x));
                        }
                    }
                }
            }
            for (acc, out) in acc.iter().zip(out.iter_mut()) {
                for half in 0..2 {
                    // [c0 c1 c4 c5 | c2 c3 c6 c7] -> c0..c7
                    let s = _mm256_hadd_epi32(acc[2 * half], acc[2 * half + 1]);
                    let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                    // SAFETY: 8 i32 into out[16 block + 8 half..][..8].
                    unsafe {
                        _mm256_storeu_si256(
                            out.as_mut_ptr().add(16 * block + 8 * half) as *mut __m256i,
                            s,
                        )
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{Tile, GROUP, GROUP_BYTES, PANEL};
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn tile_sdot<const R: usize>(t: &Tile, y: &mut [f32]) {
        let mut acc = [[0i32; PANEL]; R];
        // SAFETY: same features; the caller checked the slices.
        unsafe { dots_sdot::<R>(t.a, t.stride, t.panel, &mut acc) };
        t.finish(&acc, y);
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn tile_neon<const R: usize>(t: &Tile, y: &mut [f32]) {
        let mut acc = [[0i32; PANEL]; R];
        if t.pairs {
            // One row at a time: 8 accumulators and 8 weight registers, so
            // nothing spills (two rows at a time spilled to the stack).
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: same features; row `r` is `stride` bytes of `a`,
                // which is all the kernel reads of it.
                unsafe { dots_pairs(&t.a[r * t.stride..][..t.stride], t.panel, acc) };
            }
        } else {
            // SAFETY: same features; the caller checked the slices.
            unsafe { dots_neon::<R>(t.a, t.stride, t.panel, &mut acc) };
        }
        t.finish(&acc, y);
    }

    /// `a` (one row) holds `xq - 128` (flipped by the caller) as signed
    /// bytes and no weight is -128 ([`super::Packed::pairs_fit`]). Per 16
    /// columns, two groups at a time: `smull` of group `g`'s bytes and
    /// `smlal` of group `g + 1`'s into the same 16-bit lanes (two products,
    /// at most 32,512 in size), then `sadalp` into 32-bit lanes; each column
    /// ends as two lanes, added by `addp` at the end.
    #[target_feature(enable = "neon")]
    pub unsafe fn dots_pairs(a: &[u8], panel: &[i8], out: &mut [i32; PANEL]) {
        let groups = a.len() / GROUP;
        debug_assert!(panel.len() >= groups * GROUP_BYTES);
        let ap = a.as_ptr();
        let wp = panel.as_ptr();
        let zero = vdupq_n_s8(0);
        for block in 0..PANEL / 16 {
            // acc[2q] holds columns 4q, 4q + 1; acc[2q + 1] 4q + 2, 4q + 3.
            let mut acc = [vdupq_n_s32(0); 8];
            let mut g = 0;
            // Four groups per turn of the loop, then two (the loop's own
            // instructions were a fifth of the kernel's).
            while g + 4 <= groups {
                // SAFETY: groups g..g + 4 of the panel and of the row are in
                // bounds.
                unsafe {
                    pairs_two(&mut acc, ap, wp, g, block);
                    pairs_two(&mut acc, ap, wp, g + 2, block);
                }
                g += 4;
            }
            while g + 2 <= groups {
                // SAFETY: groups `g` and `g + 1` are in bounds.
                unsafe { pairs_two(&mut acc, ap, wp, g, block) };
                g += 2;
            }
            if g < groups {
                // SAFETY: group `g` is in bounds; the second is zeros.
                unsafe {
                    let w0 = ld4(wp.add(g * GROUP_BYTES + block * 64));
                    let x0 = vreinterpretq_s8_s32(vld1q_dup_s32(ap.add(g * GROUP) as *const i32));
                    for q in 0..4 {
                        let [lo, hi] = &mut acc[2 * q..2 * q + 2] else {
                            unreachable!()
                        };
                        pair_step(lo, hi, w0[q], x0, zero, zero);
                    }
                }
            }
            for q in 0..4 {
                let s = vpaddq_s32(acc[2 * q], acc[2 * q + 1]);
                // SAFETY: 4 i32 into out[16 block + 4q..][..4].
                unsafe { vst1q_s32(out.as_mut_ptr().add(16 * block + 4 * q), s) };
            }
        }
    }

    /// Groups `g`, `g + 1` of block `block` into the block's sums.
    #[inline(always)]
    unsafe fn pairs_two(
        acc: &mut [int32x4_t; 8],
        ap: *const u8,
        wp: *const i8,
        g: usize,
        block: usize,
    ) {
        // SAFETY: the caller passes groups `g`, `g + 1` in bounds of the
        // row and of the panel.
        unsafe {
            let w0p = wp.add(g * GROUP_BYTES + block * 64);
            let w0 = ld4(w0p);
            let w1 = ld4(w0p.add(GROUP_BYTES));
            let xp = ap.add(g * GROUP) as *const i32;
            // [x0 x1 x2 x3] of each group, four times.
            let x0 = vreinterpretq_s8_s32(vld1q_dup_s32(xp));
            let x1 = vreinterpretq_s8_s32(vld1q_dup_s32(xp.add(1)));
            for q in 0..4 {
                let [lo, hi] = &mut acc[2 * q..2 * q + 2] else {
                    unreachable!()
                };
                pair_step(lo, hi, w0[q], x0, w1[q], x1);
            }
        }
    }

    /// Four columns, two groups: `lo += ` the pairwise sums of columns
    /// 0, 1's 16-bit products, `hi +=` those of columns 2, 3. In assembly so
    /// that the compiler keeps the four widening products (it turned
    /// `smull2` into `ext` + `smull`).
    #[inline(always)]
    unsafe fn pair_step(
        lo: &mut int32x4_t,
        hi: &mut int32x4_t,
        w0: int8x16_t,
        x0: int8x16_t,
        w1: int8x16_t,
        x1: int8x16_t,
    ) {
        // SAFETY: NEON only (the caller's target features); registers only.
        unsafe {
            std::arch::asm!(
                "smull {pl:v}.8h, {w0:v}.8b, {x0:v}.8b",
                "smull2 {ph:v}.8h, {w0:v}.16b, {x0:v}.16b",
                "smlal {pl:v}.8h, {w1:v}.8b, {x1:v}.8b",
                "smlal2 {ph:v}.8h, {w1:v}.16b, {x1:v}.16b",
                "sadalp {lo:v}.4s, {pl:v}.8h",
                "sadalp {hi:v}.4s, {ph:v}.8h",
                pl = out(vreg) _,
                ph = out(vreg) _,
                lo = inout(vreg) *lo,
                hi = inout(vreg) *hi,
                w0 = in(vreg) w0,
                x0 = in(vreg) x0,
                w1 = in(vreg) w1,
                x1 = in(vreg) x1,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }

    /// One group of one 16-column block: 64 bytes in one `ld1` of four
    /// registers (four `ldr q` cost four instructions).
    #[inline(always)]
    unsafe fn ld4(w: *const i8) -> [int8x16_t; 4] {
        // SAFETY: the caller passes 64 readable bytes.
        let v = unsafe { vld1q_s8_x4(w) };
        [v.0, v.1, v.2, v.3]
    }

    /// `acc += Σ` of each 32-bit lane's four signed byte products.
    #[inline(always)]
    unsafe fn sdot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: the caller's target features include dotprod.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// `acc += Σ` of each 32-bit lane's four signed byte products with
    /// the four bytes of `x`'s 32-bit lane `L` (the indexed form: one
    /// 16-byte load of `x` serves four groups).
    #[inline(always)]
    unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: the caller's target features include dotprod.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{l}]",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                l = const L,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// Group `g + L` of the four whose activations `xs` holds (lane `L`).
    #[inline(always)]
    unsafe fn sdot_group<const L: i32, const R: usize>(
        acc: &mut [[int32x4_t; 4]; R],
        w: *const i8,
        xs: &[int8x16_t; R],
    ) {
        // SAFETY: the caller passes a group's 64 bytes of one block.
        unsafe {
            let wv = ld4(w);
            for (acc, &x) in acc.iter_mut().zip(xs) {
                for q in 0..4 {
                    acc[q] = sdot_lane::<L>(acc[q], wv[q], x);
                }
            }
        }
    }

    /// Groups `g..g + 4` of block `block`: each row's 16 bytes of them in
    /// one register (indexed `sdot`).
    #[inline(always)]
    unsafe fn sdot_four<const R: usize>(
        acc: &mut [[int32x4_t; 4]; R],
        ap: *const u8,
        stride: usize,
        wp: *const i8,
        g: usize,
        block: usize,
    ) {
        // SAFETY: the caller passes groups g..g + 4 in bounds of `R` rows
        // of `stride` bytes and of the panel (`stride = groups · GROUP`).
        unsafe {
            let xs: [int8x16_t; R] =
                std::array::from_fn(|r| vld1q_s8(ap.add(r * stride + g * GROUP) as *const i8));
            let w = wp.add(g * GROUP_BYTES + block * 64);
            sdot_group::<0, R>(acc, w, &xs);
            sdot_group::<1, R>(acc, w.add(GROUP_BYTES), &xs);
            sdot_group::<2, R>(acc, w.add(2 * GROUP_BYTES), &xs);
            sdot_group::<3, R>(acc, w.add(3 * GROUP_BYTES), &xs);
        }
    }

    /// `a` holds `xq - 128` (flipped by the caller) as signed bytes; 16
    /// columns × `R` rows at a time. Four groups at a time, each row's 16
    /// bytes of them in one register (indexed `sdot`), then the groups
    /// left one at a time.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn dots_sdot<const R: usize>(
        a: &[u8],
        stride: usize,
        panel: &[i8],
        out: &mut [[i32; PANEL]; R],
    ) {
        let groups = stride / GROUP;
        let ap = a.as_ptr();
        let wp = panel.as_ptr();
        for block in 0..PANEL / 16 {
            let mut acc = [[vdupq_n_s32(0); 4]; R];
            let mut g = 0;
            // (Eight groups per turn, two calls of `sdot_four`, ran 2.3 M
            // more instructions per text on cortex-a76, not fewer.)
            while g + 4 <= groups {
                // SAFETY: groups g..g + 4 are in bounds.
                unsafe { sdot_four::<R>(&mut acc, ap, stride, wp, g, block) };
                g += 4;
            }
            for g in g..groups {
                // SAFETY: as for the x86 kernels.
                unsafe {
                    let w = wp.add(g * GROUP_BYTES + block * 64);
                    let wv = ld4(w);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = vld1q_dup_s32(ap.add(r * stride + g * GROUP) as *const i32);
                        let x = vreinterpretq_s8_s32(x);
                        for q in 0..4 {
                            acc[q] = sdot(acc[q], wv[q], x);
                        }
                    }
                }
            }
            for (acc, out) in acc.iter().zip(out.iter_mut()) {
                for (q, v) in acc.iter().enumerate() {
                    // SAFETY: 4 i32 into out[16 block + 4q..][..4].
                    unsafe { vst1q_s32(out.as_mut_ptr().add(16 * block + 4 * q), *v) };
                }
            }
        }
    }

    /// Widening multiply-accumulate (`smlal`): per column, four lanes of
    /// partial sums, added pairwise at the end; 16 columns, one row at a
    /// time.
    #[target_feature(enable = "neon")]
    pub unsafe fn dots_neon<const R: usize>(
        a: &[u8],
        stride: usize,
        panel: &[i8],
        out: &mut [[i32; PANEL]; R],
    ) {
        let groups = stride / GROUP;
        let ap = a.as_ptr();
        let wp = panel.as_ptr();
        for (r, out) in out.iter_mut().enumerate() {
            for block in 0..PANEL / 16 {
                let mut acc = [vdupq_n_s32(0); 16];
                for g in 0..groups {
                    // SAFETY: as for the x86 kernels.
                    unsafe {
                        let w = wp.add(g * GROUP_BYTES + block * 64);
                        let x = vld1_dup_u32(ap.add(r * stride + g * GROUP) as *const u32);
                        // [x0 x1 x2 x3 x0 x1 x2 x3] as i16 (values 0..=255).
                        let x = vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_u32(x)));
                        let xl = vget_low_s16(x);
                        for q in 0..4 {
                            let wq = vld1q_s8(w.add(16 * q));
                            let lo = vmovl_s8(vget_low_s8(wq));
                            let hi = vmovl_high_s8(wq);
                            let c = &mut acc[4 * q..4 * q + 4];
                            c[0] = vmlal_s16(c[0], vget_low_s16(lo), xl);
                            c[1] = vmlal_high_s16(c[1], lo, x);
                            c[2] = vmlal_s16(c[2], vget_low_s16(hi), xl);
                            c[3] = vmlal_high_s16(c[3], hi, x);
                        }
                    }
                }
                for q in 0..4 {
                    let c = &acc[4 * q..4 * q + 4];
                    let s = vpaddq_s32(vpaddq_s32(c[0], c[1]), vpaddq_s32(c[2], c[3]));
                    // SAFETY: 4 i32 into out[16 block + 4q..][..4].
                    unsafe { vst1q_s32(out.as_mut_ptr().add(16 * block + 4 * q), s) };
                }
            }
        }
    }
}

thread_local! {
    /// The quantised activations; grows to the largest `x` seen, then is
    /// reused for every run on this thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// tract op: `y = dequantise(quantise(x) × W) + bias`, see the module doc.
#[derive(Debug, Clone)]
pub struct QMatMul {
    pub packed: Arc<Packed>,
    pub path: Path,
}

impl PartialEq for QMatMul {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && Arc::ptr_eq(&self.packed, &other.packed)
    }
}

impl Eq for QMatMul {}

impl crate::op::Kernel for QMatMul {
    const NAME: &'static str = OP_TYPE;
    const VALIDATION: Validation = Validation::Accurate;

    fn describe(&self) -> Vec<String> {
        vec![format!(
            "{} x {} int8, {} path",
            self.packed.k,
            self.packed.n,
            self.path.name()
        )]
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let p = &*self.packed;
        let shape = input.shape();
        ensure!(
            shape.last() == Some(&p.k),
            "{OP_TYPE}: input {shape:?}, weights {} x {}",
            p.k,
            p.n
        );
        let view = input.try_as_plain_ram()?;
        let xs = view.as_slice::<f32>()?;
        let m = xs.len() / p.k;
        let (lo, hi) = crate::dynquant::with_mask(inputs.get(1), |mask| {
            crate::dynquant::masked_range(xs, p.k, mask)
        })?;
        let (scale, zp) = crate::dynquant::scale_and_zero_point(lo, hi);
        let mut out_shape: TVec<usize> = shape.into();
        *out_shape.last_mut().unwrap() = p.n;
        // SAFETY: `qmatmul` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        SCRATCH.with(|scratch| -> TractResult<()> {
            let mut a = scratch.borrow_mut();
            let stride = p.row_stride();
            if a.len() < m * stride {
                a.resize(m * stride, 0);
            }
            for (row, x) in a.chunks_exact_mut(stride).zip(xs.chunks_exact(p.k)) {
                crate::dynquant::quantize(x, scale, zp, &mut row[..p.k]);
                row[p.k..].fill(0);
            }
            let mut out = y.try_as_plain_ram_mut()?;
            qmatmul(
                self.path,
                &mut a,
                m,
                zp,
                scale,
                p,
                out.as_slice_mut::<f32>()?,
            );
            Ok(())
        })?;
        Ok(tvec!(y.into_tvalue()))
    }
}

crate::op::op_shell!(QMatMul);

impl TypedOp for QMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "{OP_TYPE} on {:?}: only f32 is supported",
            x.datum_type
        );
        ensure!(
            x.rank() >= 1 && x.shape[x.rank() - 1] == self.packed.k.to_dim(),
            "{OP_TYPE}: input {:?}, weights {} x {}",
            x.shape,
            self.packed.k,
            self.packed.n
        );
        let mut shape = x.shape.to_tvec();
        *shape.last_mut().unwrap() = self.packed.n.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        // `x` and `y` may change layout (tract removes the batch axis, for
        // one), as long as `k` and `n` stay last; the mask is read flat
        // and stays as it is.
        if !matches!(io, InOut::In(0) | InOut::Out(0)) {
            return Ok(None);
        }
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let ok = crate::op::keeps_last_axis(change, rank);
        Ok(ok.then(|| AxisChangeConsequence {
            substitute_op: None,
            wire_changes: tvec![
                (InOut::In(0), change.clone()),
                (InOut::Out(0), change.clone())
            ],
        }))
    }

    as_op!();
}

/// tract-onnx's builder for [`OP_TYPE`] nodes (register it under that
/// name). Inputs: `x` (f32, `[.., k]`), `W` (i8 `[k, n]`), `w_scale` and
/// `bias` (f32 `[n]`), those three constant, and optionally the attention
/// mask (i64, one entry per row of `x`).
pub fn onnx_builder(
    _ctx: &tract_onnx::model::ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(QMatMulNode), vec![]))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct QMatMulNode;

impl Expansion for QMatMulNode {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        ensure!(
            inputs.len() == 4 || inputs.len() == 5,
            "{OP_TYPE}: {} inputs, expected 4, or 5 with the attention mask",
            inputs.len()
        );
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, i8::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].rank, 2)?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, w| {
            ensure!(w.len() == 2, "{OP_TYPE}: weights of rank {}", w.len());
            let mut y = x.clone();
            if let Some(last) = y.last_mut() {
                *last = w[1].clone();
            }
            s.equals(&outputs[0].shape, y)
        })
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let konst = |ix: usize| -> TractResult<Arc<Tensor>> {
            target
                .outlet_fact(inputs[ix])?
                .konst
                .clone()
                .ok_or_else(|| {
                    TractError::msg(format!("{OP_TYPE} {prefix}: input {ix} is not a constant"))
                })
        };
        let (w, w_scale, bias) = (konst(1)?, konst(2)?, konst(3)?);
        ensure!(
            w.rank() == 2,
            "{OP_TYPE} {prefix}: weights of rank {}",
            w.rank()
        );
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let w = w.try_as_plain_ram()?;
        let w_scale = w_scale.cast_to::<f32>()?;
        let bias = bias.cast_to::<f32>()?;
        let packed = Packed::new(
            w.as_slice::<i8>()?,
            k,
            n,
            w_scale.try_as_plain_ram()?.as_slice::<f32>()?,
            bias.try_as_plain_ram()?.as_slice::<f32>()?,
        )
        .map_err(|e| TractError::msg(format!("{OP_TYPE} {prefix}: {e}")))?;
        let path = chosen().unwrap_or(Path::Portable);
        let op = QMatMul {
            packed: Arc::new(packed),
            path,
        };
        // x, and the attention mask if the node has one.
        let mut wired = tvec![inputs[0]];
        wired.extend(inputs.get(4).copied());
        target.wire_node(prefix, op, &wired)
    }
}

/// Rewrites each quantised linear layer of `graph` into one [`OP_TYPE`]
/// node (see the module doc) and returns how many it rewrote. A chain is
/// taken only if it is exactly
///
/// ```text
/// xq, xs, xz = DynamicQuantizeLinear(x)
/// acc   = MatMulInteger(xq, W, xz)           W: i8 [k, n] initializer
/// accf  = Cast<float>(acc)
/// scale = Mul(xs, w_scale)                    w_scale: f32 [n] initializer
/// y     = Mul(accf, scale)
/// out   = Add(bias, y)                        bias: f32 [n] initializer
/// ```
///
/// (either operand order for `Mul` and `Add`), with each intermediate read
/// by the next node only and none of them a graph output. Anything else is
/// left as it is. If the graph has an `attention_mask` input, each new node
/// reads it too.
pub fn fuse(graph: &mut GraphProto) -> usize {
    use std::collections::HashMap;
    // Readers of each value, graph outputs counted as readers.
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ix, node) in graph.node.iter().enumerate() {
        for i in &node.input {
            readers.entry(i.as_str()).or_default().push(ix);
        }
    }
    for o in &graph.output {
        readers.entry(o.name.as_str()).or_default().push(usize::MAX);
    }
    let inits: HashMap<&str, &tract_onnx::pb::TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| !graph.input.iter().any(|i| i.name == t.name))
        .map(|t| (t.name.as_str(), t))
        .collect();
    let only_reader = |value: &str| match readers.get(value).map(Vec::as_slice) {
        Some(&[ix]) if ix != usize::MAX => Some(ix),
        _ => None,
    };
    let init = |name: &str, dt: i32, rank: usize| {
        inits
            .get(name)
            .filter(|t| t.data_type == dt && t.dims.len() == rank)
            .map(|t| t.dims.clone())
    };
    let mask = graph
        .input
        .iter()
        .find(|i| i.name == crate::MASK_INPUT)
        .map(|i| i.name.clone());
    const FLOAT: i32 = 1;
    const INT8: i32 = 3;
    // (nodes to drop, the new node, where it goes)
    let mut found: Vec<([usize; 6], NodeProto)> = Vec::new();
    for (d, dql) in graph.node.iter().enumerate() {
        let chain = (|| {
            if dql.op_type != "DynamicQuantizeLinear"
                || dql.input.len() != 1
                || dql.output.len() != 3
            {
                return None;
            }
            let (xq, xs, xz) = (&dql.output[0], &dql.output[1], &dql.output[2]);
            let mm = only_reader(xq)?;
            let mmn = &graph.node[mm];
            if mmn.op_type != "MatMulInteger"
                || mmn.input.len() != 3
                || mmn.input[0] != *xq
                || mmn.input[2] != *xz
                || only_reader(xz)? != mm
            {
                return None;
            }
            let w = &mmn.input[1];
            let wdims = init(w, INT8, 2)?;
            let cast = only_reader(mmn.output.first()?)?;
            let castn = &graph.node[cast];
            let to = castn.attribute.iter().find(|a| a.name == "to").map(|a| a.i);
            if castn.op_type != "Cast" || to != Some(FLOAT as i64) {
                return None;
            }
            let ms = only_reader(xs)?;
            let msn = &graph.node[ms];
            let w_scale = other_operand(msn, "Mul", xs)?;
            let sdims = init(w_scale, FLOAT, 1)?;
            let accf = castn.output.first()?;
            let my = only_reader(accf)?;
            let myn = &graph.node[my];
            if other_operand(myn, "Mul", accf)? != msn.output.first()? {
                return None;
            }
            only_reader(msn.output.first()?).filter(|&r| r == my)?;
            let ad = only_reader(myn.output.first()?)?;
            let adn = &graph.node[ad];
            let bias = other_operand(adn, "Add", &myn.output[0])?;
            let bdims = init(bias, FLOAT, 1)?;
            if sdims != [wdims[1]] || bdims != [wdims[1]] || adn.output.len() != 1 {
                return None;
            }
            let node = NodeProto {
                name: mmn.name.clone(),
                op_type: OP_TYPE.into(),
                domain: "ai.edge-bert".into(),
                input: [&dql.input[0], w, w_scale, bias]
                    .into_iter()
                    .chain(&mask)
                    .cloned()
                    .collect(),
                output: adn.output.clone(),
                ..Default::default()
            };
            Some(([d, mm, cast, ms, my, ad], node))
        })();
        found.extend(chain);
    }
    let n = found.len();
    let mut drop = vec![false; graph.node.len()];
    let mut put: HashMap<usize, NodeProto> = HashMap::new();
    for (nodes, node) in found {
        for ix in nodes {
            drop[ix] = true;
        }
        put.insert(nodes[5], node);
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

/// If `node` is a binary `op_type` with `value` as one operand, the other.
fn other_operand<'a>(node: &'a NodeProto, op_type: &str, value: &str) -> Option<&'a String> {
    if node.op_type != op_type || node.input.len() != 2 || node.output.len() != 1 {
        return None;
    }
    match (&node.input[0], &node.input[1]) {
        (a, b) if a == value && b != value => Some(b),
        (a, b) if b == value && a != value => Some(a),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fused(
        path: Path,
        a: &[u8],
        zp: u8,
        xs: f32,
        w: &[i8],
        ws: &[f32],
        b: &[f32],
        mkn: (usize, usize, usize),
    ) -> Vec<f32> {
        let (m, k, n) = mkn;
        let p = Packed::new(w, k, n, ws, b).unwrap();
        let stride = p.row_stride();
        let mut buf = vec![0u8; m * stride];
        for i in 0..m {
            buf[i * stride..i * stride + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let mut y = vec![f32::NAN; m * n];
        qmatmul(path, &mut buf, m, zp, xs, &p, &mut y);
        y
    }

    /// `x` (u8), its zero point and scale, `W`, its scales, the bias, and
    /// `(m, k, n)`.
    type Case = (
        Vec<u8>,
        u8,
        f32,
        Vec<i8>,
        Vec<f32>,
        Vec<f32>,
        (usize, usize, usize),
    );

    /// Every path this CPU has against the definition, bit for bit.
    fn check(case: Case) -> Result<(), TestCaseError> {
        let (a, zp, xs, w, ws, b, mkn) = case;
        let (m, _, n) = mkn;
        let mut want = vec![0f32; m * n];
        reference(&a, zp, xs, &w, &ws, &b, mkn, &mut want);
        for path in Path::ALL.into_iter().filter(|p| p.available()) {
            let got = fused(path, &a, zp, xs, &w, &ws, &b, mkn);
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            prop_assert!(same, "{:?}: {:?} vs {:?}", path, got, want);
        }
        Ok(())
    }

    fn case() -> impl Strategy<Value = Case> {
        cases(1usize..11, 1usize..80)
    }

    /// Depths in whole 64-byte AMX tiles, and more than one tile of rows.
    fn tile_case() -> impl Strategy<Value = Case> {
        cases(1usize..40, (1usize..7).prop_map(|t| t * 64))
    }

    fn cases(
        m: impl Strategy<Value = usize>,
        k: impl Strategy<Value = usize>,
    ) -> impl Strategy<Value = Case> {
        (m, k, 1usize..150).prop_flat_map(|(m, k, n)| {
            (
                proptest::collection::vec(any::<u8>(), m * k),
                any::<u8>(),
                1e-4f32..1.0,
                proptest::collection::vec(any::<i8>(), k * n),
                proptest::collection::vec(1e-4f32..1.0, n),
                proptest::collection::vec(-4f32..4.0, n),
                Just((m, k, n)),
            )
        })
    }

    /// Weights in -127..=127, as symmetric quantisers write them: the
    /// `Neon` path sums two products in a 16-bit lane
    /// ([`Packed::pairs_fit`]).
    fn symmetric_case() -> impl Strategy<Value = Case> {
        cases(1usize..11, 1usize..80).prop_map(|mut c| {
            for v in c.3.iter_mut() {
                *v = (*v).max(-127);
            }
            c
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every path this CPU has gives the definition's outputs, bit for bit.
        #[test]
        fn every_path_is_the_definition_bit_for_bit(c in case()) {
            check(c)?;
        }

        #[test]
        fn every_path_is_the_definition_with_symmetric_weights(c in symmetric_case()) {
            check(c)?;
        }

        #[test]
        fn every_path_is_the_definition_at_whole_tile_depths(c in tile_case()) {
            check(c)?;
        }
    }

    /// The extremes: 255 × -128 over a long row, for every zero point edge.
    #[test]
    fn extreme_values_are_exact() {
        for (m, k, n) in [(5, 1540, 70), (21, 1536, 70)] {
            extremes(m, k, n);
        }
    }

    /// The 16-bit pairs at their limit: flipped activations of -128 (and
    /// 127) times weights of -127 and 127, two per lane.
    #[test]
    fn extreme_values_with_symmetric_weights_are_exact() {
        for (m, k, n) in [(5, 1540, 70), (3, 1536, 64), (2, 4, 16), (1, 8, 3)] {
            for pattern in [0, 1] {
                let w: Vec<i8> = (0..k * n)
                    .map(|i| match pattern {
                        0 if i % 3 == 0 => 127,
                        0 => -127,
                        _ => -127,
                    })
                    .collect();
                assert!(Packed::new(&w, k, n, &vec![1.0; n], &vec![0.0; n])
                    .unwrap()
                    .pairs_fit());
                extremes_with(&w, m, k, n);
            }
        }
        let w = vec![-128i8, 5];
        assert!(!Packed::new(&w, 1, 2, &[1.0; 2], &[0.0; 2])
            .unwrap()
            .pairs_fit());
    }

    fn extremes(m: usize, k: usize, n: usize) {
        let w: Vec<i8> = (0..k * n)
            .map(|i| if i % 3 == 0 { 127 } else { -128 })
            .collect();
        extremes_with(&w, m, k, n);
    }

    fn extremes_with(w: &[i8], m: usize, k: usize, n: usize) {
        let ws = vec![0.01f32; n];
        let b: Vec<f32> = (0..n).map(|j| j as f32 - 30.0).collect();
        for (fill, zp) in [(255u8, 0u8), (0, 255), (255, 255), (0, 0), (128, 3)] {
            let a = vec![fill; m * k];
            let mut want = vec![0f32; m * n];
            reference(&a, zp, 0.5, w, &ws, &b, (m, k, n), &mut want);
            for path in Path::ALL.into_iter().filter(|p| p.available()) {
                assert_eq!(
                    fused(path, &a, zp, 0.5, w, &ws, &b, (m, k, n)),
                    want,
                    "{path:?} {fill} {zp}"
                );
            }
        }
    }

    #[test]
    fn packing_checks_its_arguments() {
        assert!(Packed::new(&[1, 2], 1, 2, &[1.0, 1.0], &[0.0, 0.0]).is_ok());
        assert!(Packed::new(&[1, 2], 2, 2, &[1.0, 1.0], &[0.0, 0.0]).is_err());
        assert!(Packed::new(&[1, 2], 1, 2, &[1.0], &[0.0, 0.0]).is_err());
        assert!(Packed::new(&[], 0, 0, &[], &[]).is_err());
        let big = vec![0i8; 65_537];
        assert!(Packed::new(&big, 65_537, 1, &[1.0], &[0.0]).is_err());
    }

    #[test]
    fn choice_follows_the_setting() {
        assert_eq!(choose(Some("off")), None);
        assert_eq!(choose(Some("portable")), Some(Path::Portable));
        assert_eq!(choose(Some("auto")), choose(None));
        // An unknown or unavailable path falls back to auto.
        assert_eq!(choose(Some("nonsense")), choose(None));
        let auto = choose(None);
        assert!(matches!(
            auto,
            None | Some(Path::Amx) | Some(Path::Vnni) | Some(Path::Sdot) | Some(Path::Neon)
        ));
        assert_eq!(auto == Some(Path::Amx), Path::Amx.available());
        assert_eq!(auto == Some(Path::Sdot), Path::Sdot.available());
        assert_eq!(
            with_choice(Some(Path::Portable), chosen),
            Some(Path::Portable)
        );
        assert_eq!(with_choice(None, chosen), None);
    }

    #[test]
    fn with_choice_restores_the_choice_after_a_panic() {
        let before = chosen();
        let panicked = std::panic::catch_unwind(|| {
            with_choice(Some(Path::Portable), || {
                assert_eq!(chosen(), Some(Path::Portable));
                panic!("inside with_choice")
            })
        });
        assert!(panicked.is_err());
        assert_eq!(chosen(), before);
        // Nested choices unwind one level at a time.
        with_choice(None, || {
            let _ = std::panic::catch_unwind(|| with_choice(Some(Path::Portable), || panic!()));
            assert_eq!(chosen(), None);
        });
        assert_eq!(chosen(), before);
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("{op}-{}", outputs[0]),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn init(name: &str, dt: i32, dims: &[i64]) -> tract_onnx::pb::TensorProto {
        tract_onnx::pb::TensorProto {
            name: name.into(),
            data_type: dt,
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    /// One quantised linear layer as the quantize tool writes it, then a
    /// consumer of its output.
    fn chain_graph() -> GraphProto {
        let mut cast = node("Cast", &["acc"], &["accf"]);
        cast.attribute.push(tract_onnx::pb::AttributeProto {
            name: "to".into(),
            i: 1,
            r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
            ..Default::default()
        });
        GraphProto {
            node: vec![
                node("DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
                node("MatMulInteger", &["xq", "W", "xz"], &["acc"]),
                cast,
                node("Mul", &["xs", "ws"], &["scale"]),
                node("Mul", &["accf", "scale"], &["y"]),
                node("Add", &["bias", "y"], &["out"]),
                node("Relu", &["out"], &["z"]),
            ],
            initializer: vec![
                init("W", 3, &[4, 3]),
                init("ws", 1, &[3]),
                init("bias", 1, &[3]),
            ],
            output: vec![tract_onnx::pb::ValueInfoProto {
                name: "z".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn fuses_the_chain_and_nothing_else() {
        let mut g = chain_graph();
        assert_eq!(fuse(&mut g), 1);
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [OP_TYPE, "Relu"]);
        assert_eq!(g.node[0].input, ["x", "W", "ws", "bias"]);
        assert_eq!(g.node[0].output, ["out"]);

        // With an attention mask input, the fused node reads it too.
        let mut g = chain_graph();
        g.input.push(tract_onnx::pb::ValueInfoProto {
            name: "attention_mask".into(),
            ..Default::default()
        });
        assert_eq!(fuse(&mut g), 1);
        assert_eq!(g.node[0].input, ["x", "W", "ws", "bias", "attention_mask"]);

        // An intermediate read elsewhere, a graph output, a u8 weight, a
        // bias of the wrong width, a cast to another type: left alone.
        let mut g = chain_graph();
        g.node.push(node("Relu", &["accf"], &["r"]));
        assert_eq!(fuse(&mut g), 0);
        let mut g = chain_graph();
        g.output.push(tract_onnx::pb::ValueInfoProto {
            name: "y".into(),
            ..Default::default()
        });
        assert_eq!(fuse(&mut g), 0);
        let mut g = chain_graph();
        g.initializer[0].data_type = 2;
        assert_eq!(fuse(&mut g), 0);
        let mut g = chain_graph();
        g.initializer[2].dims = vec![4];
        assert_eq!(fuse(&mut g), 0);
        let mut g = chain_graph();
        g.node[2].attribute[0].i = 10;
        assert_eq!(fuse(&mut g), 0);
        // Nodes with their outputs missing (a malformed file): no panic.
        for ix in [1, 2] {
            let mut g = chain_graph();
            g.node[ix].output.clear();
            assert_eq!(fuse(&mut g), 0);
        }
        let before = chain_graph();
        let mut g = chain_graph();
        g.node[5].op_type = "Sub".into();
        assert_eq!(fuse(&mut g), 0);
        assert_eq!(g.node.len(), before.node.len());
    }

    /// The op against the six unfused nodes, both run by tract on a graph
    /// with random weights: the same outputs, bit for bit.
    #[test]
    fn op_gives_the_unfused_graphs_outputs_bit_for_bit() {
        use tract_onnx::pb::{
            tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto,
        };
        let (k, n) = (40usize, 70usize);
        let mut g = chain_graph();
        g.node.pop();
        g.output[0].name = "out".into();
        let mut rng = 12345u32;
        let mut next = || {
            rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            rng >> 8
        };
        g.initializer[0].dims = vec![k as i64, n as i64];
        g.initializer[0].raw_data = (0..k * n).map(|_| next() as u8).collect();
        g.initializer[1].dims = vec![n as i64];
        g.initializer[1].float_data = (0..n)
            .map(|_| (next() % 1000) as f32 * 1e-4 + 1e-4)
            .collect();
        g.initializer[2].dims = vec![n as i64];
        g.initializer[2].float_data = (0..n)
            .map(|_| (next() % 2000) as f32 * 1e-3 - 1.0)
            .collect();
        let dim = |v: i64| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
            ..Default::default()
        };
        g.input.push(ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(1), dim(9), dim(k as i64)],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
        let model = |g: GraphProto| tract_onnx::pb::ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(g),
            ..Default::default()
        };
        let x: Vec<f32> = (0..9 * k)
            .map(|_| (next() % 4001) as f32 * 1e-3 - 2.2)
            .collect();
        let x = Tensor::from_shape(&[1, 9, k], &x).unwrap();
        let run = |proto: &tract_onnx::pb::ModelProto| -> Vec<f32> {
            let mut onnx = tract_onnx::onnx();
            onnx.op_register.insert(OP_TYPE, onnx_builder);
            let plan = onnx
                .model_for_proto_model(proto)
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let out = plan.run(tvec!(x.clone().into_tvalue())).unwrap();
            out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec()
        };
        let want = run(&model(g.clone()));
        let mut fused_g = g;
        assert_eq!(fuse(&mut fused_g), 1);
        let fused_model = model(fused_g);
        for path in Path::ALL.into_iter().filter(|p| p.available()) {
            let got = with_choice(Some(path), || run(&fused_model));
            assert_eq!(got.len(), want.len());
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{path:?}: {got:?} vs {want:?}");
        }
    }
}
