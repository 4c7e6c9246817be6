//! fp32 GEMM for `nn.Linear` layers: `out[m, n] = x[m, k] . W[n, k]^T` plus a fused epilogue.
//!
//! # Design
//!
//! A packed, cache-blocked GEMM in the BLIS/GotoBLAS style, with a register-tiled micro-kernel
//! chosen at run time ([`simd_level`], decided for every CPU kernel in `simd.rs`; [`SIMD_ENV`]
//! forces one):
//!
//! | level      | micro-tile (rows x cols)       | registers                                  |
//! |------------|--------------------------------|--------------------------------------------|
//! | `Avx512`   | up to 14 x 32                  | 28 zmm accumulators + 2 W + 1 broadcast    |
//! | bf16 dot   | up to 14 x 32, k in pairs      | as `Avx512`, `vdpbf16ps` (avx512_bf16)     |
//! | AMX bf16   | 32 x 32, k in steps of 32      | 4 C + 2 A + 2 B tiles, `tdpbf16ps` (amx.rs)|
//! | `Avx2`     | up to 6 x 16, twice per panel  | 12 ymm accumulators + 2 W + 1 broadcast    |
//! | `Neon`     | up to 6 x 16, twice per panel  | 24 q accumulators + 4 W (aarch64)          |
//! | `Portable` | up to 4 x 16, twice per panel  | plain Rust, auto-vectorised; always built  |
//!
//! * **W** is packed once, in [`PackedWeight::new`], into column panels of [`NR`] = 32 output
//!   features: panel `q` holds, for every `p` in `0..k`, the 32 values `W[32q .. 32q+32, p]`
//!   contiguously (the last panel zero-padded), 64-byte aligned. All levels share this layout,
//!   so one packed weight runs on any level.
//! * **x** is packed per (m-block, k-block) into row panels of `mr` rows (the block's rows
//!   split evenly, so m = 16 gives two 8-row panels, not 14 + 2), `mr` values per `p`: the
//!   micro-kernel reads both operands as unit-stride streams. Edge rows run a kernel compiled
//!   for exactly that many rows; edge columns use masked (AVX-512) or buffered stores.
//! * **Blocking**: k is split into blocks of `KC` (k itself when k <= 512, else even blocks of
//!   about 384: 1536 -> 4 x 384), so one x panel (14 x 384 x 4 B = 21 KB) fits the 32 KB L1
//!   while the micro-kernel streams the W panels of an n-block (`NC x KC` <= 256 x 512 x 4 B)
//!   from the 1 MB L2, prefetching W 24 k-steps (3 KB) ahead; the packed x block (m-block of at
//!   most 8 panels = 112 rows) is L2-resident too. Later k-blocks add into `out`.
//! * **Small m** (too few rows to split m four ways per thread, so the columns are split too:
//!   m = 16, one sentence, up to a few hundred rows): W is the stream everything waits on (at
//!   m = 16, 16 flops per 4-byte weight from DRAM), so `TaskCtx::run_streaming` walks each W
//!   panel once, all the m-block's x panels back to back (two for m = 16), and the first two
//!   micro-kernel calls on a panel request into L2 half each of the micro-panel that comes next
//!   (the next panel, the next k-block, or the first panel of the tile this thread claimed
//!   next) instead of their own W a few k-steps ahead: a request for W is always in flight,
//!   also while the later calls and the epilogue run.
//! * **Parallelism**: tiles are (m-block, n-group) pairs. m is split first (blocks of >= 2
//!   panels, about four tiles per thread); when m is too small for that (m = 16: one sentence)
//!   the columns are split into n-groups too (about two tiles per thread), and x is packed
//!   once up front for all of them.
//!   The calling thread and `threads - 1` rayon helpers claim pack units, then tiles, from
//!   atomic counters (see `run_jobs`; each claims its next tile when it starts one), so a
//!   small GEMM does not wait for workers to wake up. Each tile owns a disjoint rectangle of
//!   `out`.
//! * **Epilogue**: applied to each micro-tile right after its last k-block is written, while the
//!   tile is still in L1 (bias; bias + exact GELU via [`super::ops::gelu_lanes`], 64 values at
//!   a time; bias + residual).
//!
//! Numerics: fp32 multiply-add with fp32 accumulators; only the summation order differs from the
//! naive loop ([`reference_linear`]). The opt-in bf16 weights ([`PackedWeight::with_bf16_storage`],
//! [`PackedWeight::with_bf16_dot`]) trade that for half the weight bytes (and, with the dot
//! products, bf16-rounded x and twice the multiply-adds per instruction).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::ops::GELU_LANES;

/// Dispatch an `mr` known at run time to a const-generic kernel `$f::<MR>` (or, with a prefetch
/// policy, `$f::<MR, LINES>`, and with a panel element type as well, `$f::<MR, T, LINES>`).
macro_rules! by_mr {
    ($mr:expr, $f:ident, $args:tt, [$($n:literal),*]) => {
        match $mr {
            $($n => $f::<$n> $args,)*
            _ => unreachable!("mr out of range"),
        }
    };
    ($mr:expr, $f:ident::<_, $l:tt>, $args:tt, [$($n:literal),*]) => {
        match $mr {
            $($n => $f::<$n, $l> $args,)*
            _ => unreachable!("mr out of range"),
        }
    };
    ($mr:expr, $f:ident::<_, $t:ty, $l:tt>, $args:tt, [$($n:literal),*]) => {
        match $mr {
            $($n => $f::<$n, $t, $l> $args,)*
            _ => unreachable!("mr out of range"),
        }
    };
}

/// The body of a micro-kernel that runs the 32-wide W panel as two 16-column halves, each
/// through `$tile::<MR>` (`MR` = `mr`, up to 6) with the signature
/// `(kc, a: *const f32, b: *const f32, c: *mut f32, ldc, cols, accumulate)`: the AVX2 and NEON
/// kernels (see their contracts, which this body relies on).
macro_rules! half_panel_kernel {
    ($tile:ident, $mr:expr, $kc:expr, $a:expr, $b:expr, $c:expr, $ldc:expr, $nr:expr, $accumulate:expr) => {{
        let (mr, kc, a, b, c, ldc, nr, accumulate) = ($mr, $kc, $a, $b, $c, $ldc, $nr, $accumulate);
        assert!(mr * kc <= a.len() && kc * NR <= b.len() && (1..=NR).contains(&nr));
        let a = a.as_ptr();
        for half in 0..2 {
            let j0 = half * 16;
            if j0 >= nr {
                break;
            }
            let cols = (nr - j0).min(16);
            // SAFETY: lengths checked above; `b[j0..]` still has kc rows of stride NR with 16
            // columns each (j0 + 16 <= NR); `c + j0` stays inside row 0 of the tile (j0 < nr),
            // and the half-tile is `mr x cols` with `j0 + cols <= nr`.
            unsafe {
                let bh = b.as_ptr().add(j0);
                let ch = c.add(j0);
                by_mr!(
                    mr,
                    $tile,
                    (kc, a, bh, ch, ldc, cols, accumulate),
                    [1, 2, 3, 4, 5, 6]
                )
            }
        }
    }};
}

#[clippy::msrv = "1.89"]
#[cfg(target_arch = "x86_64")]
mod amx;
#[clippy::msrv = "1.89"]
mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(test)]
mod tests;
// AVX-512 intrinsics need Rust 1.89, which the dependencies already require (see x86.rs).
#[clippy::msrv = "1.89"]
#[cfg(target_arch = "x86_64")]
mod x86;

/// Width (output features) of one packed W panel, shared by every kernel level.
pub const NR: usize = 32;

use super::simd::{bf16_dot_detected, cpu_is_intel};
pub use super::simd::{simd_level, SimdLevel, SIMD_ENV};

/// One instruction set's pieces of the fp32 GEMM: its micro-kernel, the epilogue and the bf16
/// widening compiled for it. A new ISA is a type implementing this next to its kernels (as
/// `portable::Portable`, `x86::{Avx2, Avx512}`, `neon::Neon` do) plus one line in
/// [`with_isa!`], the one place that maps a [`SimdLevel`] to its type.
///
/// # Safety
/// The functions may use the ISA's instructions: call them only where the level is available
/// (`SimdLevel::is_available`), and with the contracts written on each.
pub(super) trait Isa {
    /// Most rows of x one micro-kernel call handles.
    const MR: usize;

    /// The micro-kernel; see [`micro_kernel`] for the contract.
    ///
    /// # Safety
    /// As [`micro_kernel`], with `mr <= Self::MR`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        mr: usize,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    );

    /// The epilogue on one tile; see [`epilogue_tile`] for the contract.
    ///
    /// # Safety
    /// As [`epilogue_tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue(
        ep: Epilogue<'_>,
        c: *mut f32,
        mr: usize,
        nr: usize,
        row0: usize,
        j0: usize,
        n: usize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { epilogue_tile_generic::<false>(ep, c, mr, nr, row0, j0, n) }
    }

    /// Append `src` (bf16 bits) to `dst` as f32.
    ///
    /// # Safety
    /// The ISA is available.
    unsafe fn widen_bf16(src: &[u16], dst: &mut Vec<f32>) {
        widen_bf16_generic(src, dst)
    }
}

/// Run `$body` with `$I` the [`Isa`] type of `$level`: the one match from levels to kernels.
macro_rules! with_isa {
    ($level:expr, $I:ident => $body:expr) => {
        with_isa!($level, $I => $body, _ => unreachable!("SIMD level not compiled for this CPU"))
    };
    // (`_ =>`: what a level of another architecture gives)
    ($level:expr, $I:ident => $body:expr, _ => $other:expr) => {
        match $level {
            SimdLevel::Portable => {
                type $I = portable::Portable;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                type $I = x86::Avx2;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                type $I = x86::Avx512;
                $body
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => {
                type $I = neon::Neon;
                $body
            }
            #[allow(unreachable_patterns)]
            _ => $other,
        }
    };
}

/// Most rows of x one micro-kernel call handles at `level`.
/// (A level of another architecture, which never runs here, plans like the portable one.)
fn max_rows(level: SimdLevel) -> usize {
    with_isa!(level, I => I::MR, _ => portable::MR)
}

/// Whether [`linear`] can run weights laid out by [`PackedWeight::with_bf16_dot`]: the
/// dispatched level is AVX-512 and the CPU has `avx512_bf16` (`vdpbf16ps`, `vcvtne2ps2bf16`).
pub fn bf16_dot_available() -> bool {
    simd_level() == SimdLevel::Avx512 && bf16_dot_detected()
}

/// Whether [`linear`] can run weights laid out by [`PackedWeight::with_bf16_tiles`]: the
/// dispatched level is AVX-512, the CPU has AMX-BF16 and `avx512_bf16`, Linux granted the tile
/// state, and `DEBERTA_GEMM_AMX` does not turn it off (see `amx.rs`).
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_level() == SimdLevel::Avx512 && amx::amx_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub use amx::AMX_ENV;
/// The tile unit for the attention's bf16 products (see `attention/tiles.rs`).
#[cfg(target_arch = "x86_64")]
pub(crate) use amx::{round_rows_to_steps, TileSession, STEP_WORDS};
pub use int8::reference_linear_int8;

/// How int8 GEMM weights are multiplied on this CPU (`--dtype int8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Form {
    /// AMX-INT8 tiles (`tdpbusd`).
    Tiles,
    /// AVX512-VNNI dot products (`vpdpbusd`).
    Vnni,
    /// AVX-VNNI dot products (`vpdpbusd` on 256-bit registers: CPUs without AVX-512).
    AvxVnni,
    /// No int8 kernel on this CPU: the weights stay f32 (and the numerics those of f32).
    F32,
}

/// Whether the tile unit runs bf16 (`int8` false) or int8 products here, whatever level
/// [`simd_level`] dispatches to (a caller of [`linear_with`] names the level itself).
fn amx_hardware(int8: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if int8 {
            amx::amx_int8_available()
        } else {
            amx::amx_available()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = int8;
        false
    }
}

/// The one place that picks the int8 form: AMX-INT8 tiles where the CPU has them, Linux
/// grants the tile state and `DEBERTA_GEMM_AMX` does not turn them off; else AVX512-VNNI at
/// the AVX-512 level; else AVX-VNNI at the AVX2 or AVX-512 level; else none (f32 weights).
/// Every kernel computes the same integers (see `int8.rs`), so the choice changes speed, not
/// results.
pub fn int8_gemm_form() -> Int8Form {
    int8_form_at(simd_level())
}

/// [`int8_gemm_form`] for the kernels of `level`.
fn int8_form_at(level: SimdLevel) -> Int8Form {
    let avx512 = level == SimdLevel::Avx512;
    if avx512 && amx_hardware(true) {
        Int8Form::Tiles
    } else if avx512 && int8::vnni_detected() {
        Int8Form::Vnni
    } else if matches!(level, SimdLevel::Avx512 | SimdLevel::Avx2) && int8::avx_vnni_detected() {
        Int8Form::AvxVnni
    } else {
        Int8Form::F32
    }
}

/// How bf16 GEMM weights are stored and multiplied on this CPU (`--dtype bf16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Form {
    /// AMX-BF16 tiles ([`PackedWeight::with_bf16_tiles`]).
    Tiles,
    /// `avx512_bf16` dot products ([`PackedWeight::with_bf16_dot`]).
    Dot,
    /// bf16 storage widened to f32 for the fp32 kernels ([`PackedWeight::with_bf16_storage`]).
    Storage,
    /// The weights stay f32: on this CPU every bf16 form is slower than the fp32 kernel.
    F32,
}

/// The one place that picks the bf16 form: AMX tiles where [`amx_available`]; else, on CPUs
/// with `avx512_bf16`, its dot products where `vdpbf16ps` runs at the fp32 FMA's rate or
/// better (AMD Zen 4 and later), but f32 weights on Intel cores, where `vdpbf16ps` issues on
/// one port against the two that fp32 FMAs use and both the dot products and the widened
/// storage lose to fp32 (BENCHMARKS.md, "bf16 on an AMX Xeon"); else (no bf16 instructions)
/// bf16 storage widened to f32, for half the weight bytes.
pub fn bf16_gemm_form() -> Bf16Form {
    if amx_available() {
        Bf16Form::Tiles
    } else if bf16_dot_available() {
        if cpu_is_intel() {
            Bf16Form::F32
        } else {
            Bf16Form::Dot
        }
    } else {
        Bf16Form::Storage
    }
}

/// 16 floats (one 64-byte cache line), line-aligned, so packed panels start on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A Linear weight, stored once at load time in whatever layout the kernel wants.
pub struct PackedWeight {
    /// out features
    n: usize,
    /// in features
    k: usize,
    /// `ceil(n / NR)` panels, each `[k][NR]` (panel `q`, row `p` = `W[NR*q .. NR*q+NR, p]`),
    /// columns past `n` zero.
    storage: Storage,
}

/// The element type the packed panels are kept in.
enum Storage {
    /// Lines of 16 floats, so the data is 64-byte aligned.
    F32(Vec<Line>),
    /// The same panels rounded to bf16 (`with_bf16_storage`).
    Bf16(Vec<u16>),
    /// Rounded to bf16 with k in pairs, for the `avx512_bf16` dot-product kernel
    /// (`with_bf16_dot`): panel `q` holds, for each pair `pp` in `0..ceil(k / 2)`, 32 words,
    /// word `c` = `W[32q + c, 2pp]` (low half) and `W[32q + c, 2pp + 1]` (high half; 0 past k).
    Bf16Pairs(Vec<u32>),
    /// As `Bf16Pairs` with the pairs zero-padded to a multiple of 16 per panel and the panels
    /// 64-byte aligned, for the AMX kernel (`with_bf16_tiles`, see `amx.rs`).
    Bf16Tiles(Vec<Line>),
    /// Quantized to int8 per output feature, with the rounding residual quantized once more
    /// (`with_int8`, see `int8.rs`).
    Int8(Box<int8::Int8Weight>),
}

/// Where a tile reads one k-block of W panels from.
#[derive(Clone, Copy)]
enum BlockSrc<'a> {
    /// f32 panels in place (`(q * k + pc) * NR`)
    Packed(&'a [f32]),
    /// the n-block's panels widened to f32 (`(q - q_blk) * kc * NR`)
    Wide(&'a [f32]),
    /// bf16 panels in place, widened by the AVX-512 kernel
    #[cfg(target_arch = "x86_64")]
    Bf16(&'a [u16]),
    /// bf16 pair panels in place, for the dot-product kernel (`(q * k2 + pc / 2) * NR`)
    #[cfg(target_arch = "x86_64")]
    Pairs(&'a [u32]),
}

/// The packed panels as the tiles read them.
#[derive(Clone, Copy)]
enum WPanels<'a> {
    F32(&'a [f32]),
    /// bf16 bits, widened to f32 one n-block at a time before the micro-kernels run
    Bf16(&'a [u16]),
    /// bf16 pairs of consecutive k, multiplied by `vdpbf16ps` (x rounded to bf16 pairs too;
    /// x86-64 only, see `linear_with`)
    Pairs(#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] &'a [u32]),
}

impl PackedWeight {
    /// Pack a torch-layout weight `w: [n, k]` (row-major).
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length must be n * k");
        let n_panels = n.div_ceil(NR);
        let floats = n_panels * k * NR;
        let mut panels = vec![Line([0.0; 16]); floats / 16];
        let data = lines_as_mut_slice(&mut panels);
        for (q, panel) in data.chunks_exact_mut((k * NR).max(1)).enumerate() {
            let cols = NR.min(n - q * NR);
            for c in 0..cols {
                let row = &w[(q * NR + c) * k..][..k];
                for (p, &v) in row.iter().enumerate() {
                    panel[p * NR + c] = v;
                }
            }
        }
        PackedWeight {
            n,
            k,
            storage: Storage::F32(panels),
        }
    }

    /// Keep the weight as bf16 (round to nearest even): half the memory and half the bytes a
    /// product streams, fp32 arithmetic on the widened values. Not bit-compatible with the
    /// fp32 path: relative error up to 2^-9 per weight.
    pub fn with_bf16_storage(self) -> Self {
        let bits = match &self.storage {
            Storage::F32(lines) => lines_as_slice(lines)
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect(),
            Storage::Bf16(bits) => bits.clone(),
            Storage::Bf16Pairs(_) | Storage::Bf16Tiles(_) | Storage::Int8(_) => {
                return self.with_f32_storage().with_bf16_storage()
            }
        };
        PackedWeight {
            storage: Storage::Bf16(bits),
            ..self
        }
    }

    /// Keep the weight as bf16 in pairs of consecutive k, for products on `avx512_bf16`
    /// (`vdpbf16ps`, see [`bf16_dot_available`]): x is rounded to bf16 as well and each pair of
    /// products is summed in fp32. Twice the multiply-adds per instruction of the fp32 kernel
    /// and half its weight bytes; relative error up to 2^-9 per operand. Only
    /// [`SimdLevel::Avx512`] on a CPU with `avx512_bf16` runs such a weight.
    pub fn with_bf16_dot(self) -> Self {
        let (n, k) = (self.n, self.k);
        let w = self.with_f32_storage();
        let Storage::F32(lines) = &w.storage else {
            unreachable!("with_f32_storage gives f32 panels")
        };
        let (src, k2) = (lines_as_slice(lines), k.div_ceil(2));
        let bits = |p: usize, panel: &[f32], c: usize| {
            (p < k).then(|| u32::from(half::bf16::from_f32(panel[p * NR + c]).to_bits()))
        };
        let mut words = vec![0u32; n.div_ceil(NR) * k2 * NR];
        for (panel, dst) in src
            .chunks_exact((k * NR).max(1))
            .zip(words.chunks_exact_mut((k2 * NR).max(1)))
        {
            for (pp, row) in dst.chunks_exact_mut(NR).enumerate() {
                for (c, word) in row.iter_mut().enumerate() {
                    let lo = bits(2 * pp, panel, c).unwrap_or(0);
                    let hi = bits(2 * pp + 1, panel, c).unwrap_or(0);
                    *word = lo | hi << 16;
                }
            }
        }
        PackedWeight {
            storage: Storage::Bf16Pairs(words),
            ..w
        }
    }

    /// Keep the weight as bf16 pairs laid out for the AMX-BF16 tile kernel (see
    /// [`amx_available`]): as [`with_bf16_dot`](Self::with_bf16_dot), with each panel's pairs
    /// padded with zeros to a multiple of 16 (one B tile) and 64-byte aligned. Same numerics as
    /// the dot-product kernel (bf16 operands, fp32 sums). Only a CPU where [`amx_available`]
    /// holds runs such a weight.
    #[cfg(target_arch = "x86_64")]
    pub fn with_bf16_tiles(self) -> Self {
        let (n, k) = (self.n, self.k);
        let w = self.with_bf16_dot();
        let Storage::Bf16Pairs(words) = &w.storage else {
            unreachable!("with_bf16_dot gives pair panels")
        };
        let (k2, k2p) = (k.div_ceil(2), padded_pairs(k));
        let mut lines = vec![Line([0.0; 16]); n.div_ceil(NR) * k2p * NR / 16];
        let dst = lines_as_mut_slice(&mut lines);
        for (src, panel) in words
            .chunks_exact((k2 * NR).max(1))
            .zip(dst.chunks_exact_mut((k2p * NR).max(1)))
        {
            for (d, &word) in panel.iter_mut().zip(src) {
                *d = f32::from_bits(word);
            }
        }
        PackedWeight {
            storage: Storage::Bf16Tiles(lines),
            ..w
        }
    }

    /// Quantize the weight to int8, one symmetric scale per output feature (see `int8.rs` for
    /// the numerics), laid out for the int8 kernels ([`int8_gemm_form`]): a quarter of the
    /// fp32 weight bytes, products on 8-bit operands summed exactly in i32. Only a CPU whose
    /// [`int8_gemm_form`] is not [`Int8Form::F32`] runs such a weight.
    pub fn with_int8(self) -> Self {
        let (n, k) = (self.n, self.k);
        let w = self.with_f32_storage();
        let Storage::F32(lines) = &w.storage else {
            unreachable!("with_f32_storage gives f32 panels")
        };
        // back to torch layout, one row per output feature
        let src = lines_as_slice(lines);
        let mut rows = vec![0.0f32; n * k];
        for (j, row) in rows.chunks_exact_mut(k.max(1)).enumerate().take(n) {
            let (p, c) = (j / NR, j % NR);
            for (pk, v) in row.iter_mut().enumerate() {
                *v = src[(p * k + pk) * NR + c];
            }
        }
        PackedWeight::new_int8(&rows, n, k)
    }

    /// [`with_int8`](Self::with_int8) straight from a torch-layout weight `w: [n, k]`
    /// (row-major), without packing it as f32 first.
    pub fn new_int8(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length must be n * k");
        PackedWeight {
            n,
            k,
            storage: Storage::Int8(Box::new(int8::Int8Weight::new(w, n, k))),
        }
    }

    /// The panels as f32 (bf16 widened exactly; int8 dequantized: `scale * q`).
    fn with_f32_storage(self) -> Self {
        let widen = |b: u16| f32::from_bits(u32::from(b) << 16);
        let floats: Vec<f32> = match &self.storage {
            Storage::F32(_) => return self,
            Storage::Int8(w8) => {
                let (k, k4p) = (self.k, int8::padded_quads(self.k));
                let (words, scale) = (lines_as_u32_any(&w8.main.words), &w8.main.scale);
                let mut out = vec![0.0; self.n.div_ceil(NR) * k * NR];
                for (q, panel) in out.chunks_exact_mut((k * NR).max(1)).enumerate() {
                    for (pk, row) in panel.chunks_exact_mut(NR).enumerate() {
                        for (c, v) in row.iter_mut().enumerate() {
                            let word = words[(q * k4p + pk / 4) * NR + c];
                            let byte = word.to_le_bytes()[pk % 4] as i8;
                            *v = f32::from(byte) * scale[q * NR + c];
                        }
                    }
                }
                out
            }
            Storage::Bf16(bits) => bits.iter().map(|&b| widen(b)).collect(),
            Storage::Bf16Tiles(lines) => {
                let (k2, k2p) = (self.k.div_ceil(2), padded_pairs(self.k));
                let words: Vec<u32> = lines_as_slice(lines)
                    .chunks_exact((k2p * NR).max(1))
                    .flat_map(|panel| panel[..k2 * NR].iter().map(|v| v.to_bits()))
                    .collect();
                return PackedWeight {
                    storage: Storage::Bf16Pairs(words),
                    ..self
                }
                .with_f32_storage();
            }
            Storage::Bf16Pairs(words) => {
                let (k, k2) = (self.k, self.k.div_ceil(2));
                let mut out = vec![0.0; self.n.div_ceil(NR) * k * NR];
                for (panel, src) in out
                    .chunks_exact_mut((k * NR).max(1))
                    .zip(words.chunks_exact((k2 * NR).max(1)))
                {
                    for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                        for (c, v) in row.iter_mut().enumerate() {
                            let word = src[p / 2 * NR + c];
                            *v = widen((word >> (16 * (p % 2))) as u16);
                        }
                    }
                }
                out
            }
        };
        let mut lines = vec![Line([0.0; 16]); floats.len() / 16];
        lines_as_mut_slice(&mut lines).copy_from_slice(&floats);
        PackedWeight {
            storage: Storage::F32(lines),
            ..self
        }
    }

    /// Whether the weight is stored as bf16 (either layout).
    pub fn is_bf16(&self) -> bool {
        matches!(
            self.storage,
            Storage::Bf16(_) | Storage::Bf16Pairs(_) | Storage::Bf16Tiles(_)
        )
    }

    /// Whether the weight is quantized to int8 (`with_int8`).
    pub fn is_int8(&self) -> bool {
        matches!(self.storage, Storage::Int8(_))
    }

    /// Whether the weight is laid out for the AMX tile kernel (`with_bf16_tiles`).
    pub fn is_bf16_tiles(&self) -> bool {
        matches!(self.storage, Storage::Bf16Tiles(_))
    }

    /// The tile panels of a weight laid out by `with_bf16_tiles`: panel `q` (columns
    /// `32q .. 32q + 32`) is `padded_pairs(k) / 16` steps of [`STEP_WORDS`] words, each step
    /// 16 rows (pairs of k) of 32 words (columns).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn tile_panels(&self) -> Option<&[u32]> {
        match &self.storage {
            Storage::Bf16Tiles(lines) => Some(lines_as_u32(lines)),
            _ => None,
        }
    }

    /// Whether the weight is laid out for the bf16 dot-product kernel (`with_bf16_dot`).
    pub fn is_bf16_dot(&self) -> bool {
        matches!(self.storage, Storage::Bf16Pairs(_))
    }

    fn panels(&self) -> WPanels<'_> {
        match &self.storage {
            Storage::F32(lines) => WPanels::F32(lines_as_slice(lines)),
            Storage::Bf16(bits) => WPanels::Bf16(bits),
            Storage::Bf16Pairs(words) => WPanels::Pairs(words),
            Storage::Bf16Tiles(_) | Storage::Int8(_) => {
                unreachable!("tile and int8 weights run on the tile driver (amx.rs)")
            }
        }
    }
    /// Out features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// In features.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// The lines as floats.
fn lines_as_slice(lines: &[Line]) -> &[f32] {
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]` with size 64 = 16 * 4 and alignment 64,
    // so the buffer is `16 * len` contiguous, initialised f32 with no padding; the returned
    // slice borrows `lines`, so the buffer outlives it.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * 16) }
}

/// Pairs of k of a tile panel (`with_bf16_tiles`): padded to a multiple of 16, the pairs one
/// AMX B tile holds (an A tile holds the 32 values of k they cover).
fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(16) * 16
}

/// The lines as 32-bit words (the AMX tile panels).
#[cfg(target_arch = "x86_64")]
fn lines_as_u32(lines: &[Line]) -> &[u32] {
    lines_as_u32_any(lines)
}

/// [`lines_as_u32`] on every architecture (the int8 layout is packed everywhere).
fn lines_as_u32_any(lines: &[Line]) -> &[u32] {
    // SAFETY: as in `lines_as_slice`; u32 has the size and alignment of f32 and every bit
    // pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u32>(), lines.len() * 16) }
}

/// The lines as mutable 32-bit words.
fn lines_as_mut_u32(lines: &mut [Line]) -> &mut [u32] {
    // SAFETY: as in `lines_as_mut_slice`; every bit pattern is a valid u32 (and written back
    // as the bits of an f32 line, any of which is valid too).
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u32>(), lines.len() * 16) }
}

fn lines_as_mut_slice(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `lines_as_slice`: `Line` is 16 f32 with no padding; the exclusive borrow
    // of `lines` is carried over to the returned slice.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), lines.len() * 16) }
}

/// What is fused after the matrix product.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `out = x W^T`
    None,
    /// `out = x W^T + bias` (bias: `[n]`)
    Bias(&'a [f32]),
    /// `out = gelu_erf(x W^T + bias)`
    BiasGelu(&'a [f32]),
    /// `out = x W^T + bias + residual` (residual: [m, n])
    BiasResidual(&'a [f32], &'a [f32]),
}

/// `out[m, n] = epilogue(x[m, k] . W^T)`. Panics if slice lengths disagree with the shapes
/// (internal invariant: the model sizes every buffer).
pub fn linear(x: &[f32], m: usize, w: &PackedWeight, ep: Epilogue<'_>, out: &mut [f32]) {
    linear_impl(simd_level(), x, m, w, ep, out, None)
}

/// [`linear`] on rows that form sequences (sequence `s` = rows `offsets[s] .. offsets[s + 1]`,
/// the first offset 0 and the last `m`): int8 weights add each sequence's residual correction
/// (see [`reference_linear_int8`]), which depends on the sequence's rows only, so a sequence
/// gets the same result in any batch; other weights ignore the offsets. Panics on offsets that
/// do not cover `0 .. m` in order.
pub fn linear_seqs(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    ep: Epilogue<'_>,
    out: &mut [f32],
    offsets: &[usize],
) {
    assert!(
        offsets.first() == Some(&0)
            && offsets.last() == Some(&m)
            && offsets.windows(2).all(|o| o[0] <= o[1]),
        "sequence offsets must run from 0 to m in order"
    );
    linear_impl(simd_level(), x, m, w, ep, out, Some(offsets))
}

/// [`linear`] on a chosen kernel level (tests and benchmarks). Panics if this CPU cannot run
/// `level`, or on the same length mismatches as [`linear`].
pub fn linear_with(
    level: SimdLevel,
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    ep: Epilogue<'_>,
    out: &mut [f32],
) {
    linear_impl(level, x, m, w, ep, out, None)
}

/// [`linear_with`], and for int8 weights the per-sequence corrections when `offsets` is given.
fn linear_impl(
    level: SimdLevel,
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    ep: Epilogue<'_>,
    out: &mut [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] offsets: Option<&[usize]>,
) {
    let (n, k) = (w.n, w.k);
    assert!(
        level.is_available(),
        "GEMM level {level} is not supported by this CPU"
    );
    assert!(
        !w.is_bf16_dot() || (level == SimdLevel::Avx512 && bf16_dot_detected()),
        "bf16 dot-product weights need the AVX-512 level on a CPU with avx512_bf16"
    );
    assert!(x.len() >= m * k, "x shorter than m * k");
    assert!(out.len() >= m * n, "out shorter than m * n");
    match ep {
        Epilogue::None => {}
        Epilogue::Bias(b) | Epilogue::BiasGelu(b) => assert!(b.len() >= n, "bias shorter than n"),
        Epilogue::BiasResidual(b, r) => {
            assert!(b.len() >= n, "bias shorter than n");
            assert!(r.len() >= m * n, "residual shorter than m * n");
        }
    }
    assert!(
        !w.is_bf16_tiles() || (level == SimdLevel::Avx512 && amx_hardware(false)),
        "bf16 tile weights need the AVX-512 level on a CPU with AMX-BF16"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        !w.is_int8() || int8_form_at(level) != Int8Form::F32,
        "int8 weights need AMX-INT8 or AVX512-VNNI at the AVX-512 level, or AVX-VNNI"
    );
    let out = &mut out[..m * n];
    #[cfg(target_arch = "x86_64")]
    if k > 0 {
        let threads = rayon::current_num_threads();
        match &w.storage {
            Storage::Bf16Tiles(lines) => {
                let words = lines_as_u32(lines);
                let panels = amx::TilePanels::Bf16(words);
                amx::linear(x, m, n, k, panels, ep, out, threads, None);
                return;
            }
            Storage::Int8(_) => {
                let kernel = match int8_form_at(level) {
                    Int8Form::Tiles => int8::Int8Kernel::Amx,
                    Int8Form::Vnni => int8::Int8Kernel::Vnni512,
                    Int8Form::AvxVnni => int8::Int8Kernel::Vnni256,
                    Int8Form::F32 => unreachable!("int8 weights without a kernel (asserted above)"),
                };
                int8_linear(x, m, w, ep, out, kernel, threads, offsets);
                return;
            }
            _ => {}
        }
    }
    if k == 0 {
        out.fill(0.0);
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            apply_epilogue_row::<false>(ep, row, i, 0, n);
        }
        return;
    }

    let plan = Plan::new(
        level,
        m,
        n,
        k,
        rayon::current_num_threads(),
        w.is_bf16_dot(),
    );
    let tiles = plan.m_blocks * plan.n_groups;
    let ctx = TaskCtx {
        level,
        plan: &plan,
        x,
        xp: None,
        m,
        n,
        k,
        w: w.panels(),
        ep,
        out: SharedPtr(out.as_mut_ptr()),
    };
    let tile = |t: usize, _next: Option<usize>| ctx.run(t / plan.n_groups, t % plan.n_groups, None);
    if plan.n_groups == 1 {
        // Each tile packs its own rows of x, one k-block at a time (cache-friendly).
        run_jobs(plan.threads, 0, &|_| {}, tiles, &tile);
    } else {
        // Several tiles share each m-block: pack x once, in parallel units of one
        // (m-block, k-block), before any tile runs.
        X_SHARED.with(|cell| {
            let mut private = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let buf: &mut Vec<f32> = match borrowed {
                Ok(ref mut b) => b,
                // Re-entered on this thread (a nested `linear` inside a rayon job this thread
                // ran while waiting): use a private buffer.
                Err(_) => &mut private,
            };
            // Every element is written by the pack units: grow it, never clear it.
            grow(buf, m * ctx.words(k));
            let ctx = TaskCtx {
                xp: Some(SharedPtr(buf.as_mut_ptr())),
                ..ctx
            };
            let k_blocks = k.div_ceil(plan.kc);
            let pack = |u: usize| ctx.pack_unit(u / k_blocks, u % k_blocks);
            // (the tile a participant runs next, so that it can request that tile's W early)
            let tile = |t: usize, next: Option<usize>| {
                ctx.run(
                    t / plan.n_groups,
                    t % plan.n_groups,
                    next.map(|u| u % plan.n_groups),
                )
            };
            run_jobs(plan.threads, plan.m_blocks * k_blocks, &pack, tiles, &tile);
        });
    }
}

/// [`linear`] for int8 weights (`with_int8`) on one of the int8 kernels, with `threads`
/// participants (tests compare them on one CPU); with `offsets`, the
/// per-sequence residual corrections of [`reference_linear_int8`]. `k > 0`; the caller checked
/// the shapes and that the kernel is available.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn int8_linear(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    ep: Epilogue<'_>,
    out: &mut [f32],
    kernel: int8::Int8Kernel,
    threads: usize,
    offsets: Option<&[usize]>,
) {
    let Storage::Int8(w8) = &w.storage else {
        unreachable!("int8_linear is called with int8 weights")
    };
    let (n, k) = (w.n, w.k);
    fn panels(p: &int8::Int8Panels, kernel: int8::Int8Kernel) -> amx::TilePanels<'_> {
        amx::TilePanels::Int8 {
            words: lines_as_u32(&p.words),
            scale: &p.scale,
            colsum: &p.colsum,
            kernel,
        }
    }
    let Some(offsets) = offsets else {
        amx::linear(x, m, n, k, panels(&w8.main, kernel), ep, out, threads, None);
        return;
    };
    let seqs = offsets.len().saturating_sub(1);
    let mut means = vec![0.0f32; seqs * k];
    int8::sequence_means(x, k, offsets, &mut means);
    let mut values = vec![0.0f32; seqs * n];
    if seqs > 0 {
        amx::linear(
            &means,
            seqs,
            n,
            k,
            panels(&w8.residual, kernel),
            Epilogue::None,
            &mut values,
            threads,
            None,
        );
    }
    let mut seq_of_row = vec![0u32; m];
    for (s, o) in offsets.windows(2).enumerate() {
        seq_of_row[o[0]..o[1]].fill(s as u32);
    }
    let fix = int8::Corrections {
        values: &values,
        seq_of_row: &seq_of_row,
        n,
    };
    amx::linear(
        x,
        m,
        n,
        k,
        panels(&w8.main, kernel),
        ep,
        out,
        threads,
        Some(fix),
    );
}

/// Run the jobs `unit(0 .. units)`, then, once every one of them has finished, the jobs
/// `tile(0 .. tiles)`, on the calling thread plus up to `threads - 1` rayon helpers. Every
/// participant claims the next job from a shared counter, so the caller starts at once and a
/// helper that wakes up late simply finds less left to do; the caller spins (rather than
/// sleeps) for jobs still running on helpers, which matters for GEMMs of a few microseconds.
/// A participant claims its next tile when it starts one, and `tile(t, next)` is told it
/// (`None`: t is its last), so a tile can request the next one's data while it finishes.
fn run_jobs(
    threads: usize,
    units: usize,
    unit: &(dyn Fn(usize) + Sync),
    tiles: usize,
    tile: &(dyn Fn(usize, Option<usize>) + Sync),
) {
    let helpers = threads.min(tiles).saturating_sub(1);
    if helpers == 0 {
        (0..units).for_each(unit);
        (0..tiles).for_each(|t| tile(t, (t + 1 < tiles).then_some(t + 1)));
        return;
    }
    let (next_unit, units_done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (next_tile, tiles_done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // Set when a participant panics, so the others stop waiting for its jobs (the panic is
    // then re-raised by the scope).
    let failed = AtomicBool::new(false);
    let work = || {
        let _flag = PanicFlag(&failed);
        loop {
            let u = next_unit.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                break;
            }
            unit(u);
            units_done.fetch_add(1, Ordering::Release);
        }
        // Barrier: the tiles read what the units wrote (Release above, Acquire here).
        if !spin_until(|| units_done.load(Ordering::Acquire) >= units, &failed) {
            return;
        }
        let mut t = next_tile.fetch_add(1, Ordering::Relaxed);
        while t < tiles {
            let after = next_tile.fetch_add(1, Ordering::Relaxed);
            tile(t, (after < tiles).then_some(after));
            tiles_done.fetch_add(1, Ordering::Release);
            t = after;
        }
    };
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
        spin_until(|| tiles_done.load(Ordering::Acquire) >= tiles, &failed);
    });
}

/// Spin (yielding now and then) until `done()`; false if `failed` was raised first.
fn spin_until(done: impl Fn() -> bool, failed: &AtomicBool) -> bool {
    let mut spins = 0u32;
    while !done() {
        if failed.load(Ordering::Relaxed) {
            return false;
        }
        spins = spins.wrapping_add(1);
        if spins & 63 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    true
}

/// Raises the flag if dropped during a panic.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Naive triple loop (fp32, k summed in order), the numerical reference for tests and benches.
/// `w` is the torch-layout `[n, k]` weight.
pub fn reference_linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    ep: Epilogue<'_>,
    out: &mut [f32],
) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += x[i * k + p] * w[j * k + p];
            }
            out[i * n + j] = acc;
        }
        apply_epilogue_row::<false>(ep, &mut out[i * n..(i + 1) * n], i, 0, n);
    }
}

/// Apply the epilogue to the `mr x nr` tile at `c` = `out[row0, j0]` (row stride `n`), in a
/// function compiled for `level`'s vector ISA so the bias / GELU / residual loops vectorize.
///
/// # Safety
/// `level` must be available; the tile (rows `row0 .. row0 + mr`, columns `j0 .. j0 + nr` of
/// the `[m, n]` output) must be valid for reads and writes and not accessed otherwise meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn epilogue_tile(
    level: SimdLevel,
    ep: Epilogue<'_>,
    c: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    // SAFETY: forwarded contract; `level` is available, so its instructions may run.
    with_isa!(level, I => unsafe { I::epilogue(ep, c, mr, nr, row0, j0, n) })
}

/// The body of [`epilogue_tile`], inlined into each ISA-specific wrapper.
///
/// # Safety
/// As [`epilogue_tile`].
#[inline(always)]
unsafe fn epilogue_tile_generic<const FMA: bool>(
    ep: Epilogue<'_>,
    c: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    for r in 0..mr {
        // SAFETY: row r of the tile, columns j0 .. j0 + nr: valid and exclusively ours
        // (contract).
        let tile_row = unsafe { std::slice::from_raw_parts_mut(c.add(r * n), nr) };
        apply_epilogue_row::<FMA>(ep, tile_row, row0 + r, j0, n);
    }
}

/// Apply the epilogue to `row` = columns `j0 .. j0 + row.len()` of output row `i` (`n` columns).
#[inline(always)]
/// `FMA`: GELU with fused multiply-adds (only from code compiled with the `fma` feature).
fn apply_epilogue_row<const FMA: bool>(
    ep: Epilogue<'_>,
    row: &mut [f32],
    i: usize,
    j0: usize,
    n: usize,
) {
    let len = row.len();
    match ep {
        Epilogue::None => {}
        Epilogue::Bias(b) => {
            for (o, &bj) in row.iter_mut().zip(&b[j0..j0 + len]) {
                *o += bj;
            }
        }
        Epilogue::BiasGelu(b) => {
            // GELU_LANES values at a time (independent dependency chains), then one vector of
            // 16 at a time (32-wide tiles), the rest one by one; the bias is added in the same
            // pass, so each value is loaded once (a separate bias loop's narrower stores would
            // also keep the GELU's wider loads from being forwarded).
            let b = &b[j0..j0 + len];
            let (mut at, mut rest) = (0, &mut row[..]);
            while rest.len() >= GELU_LANES {
                let (ch, tail) = rest.split_at_mut(GELU_LANES);
                bias_gelu_lanes::<FMA, GELU_LANES>(ch, &b[at..at + GELU_LANES]);
                (at, rest) = (at + GELU_LANES, tail);
            }
            while rest.len() >= 16 {
                let (ch, tail) = rest.split_at_mut(16);
                bias_gelu_lanes::<FMA, 16>(ch, &b[at..at + 16]);
                (at, rest) = (at + 16, tail);
            }
            for (o, &bj) in rest.iter_mut().zip(&b[at..]) {
                *o = super::ops::gelu_with::<FMA>(*o + bj);
            }
        }
        Epilogue::BiasResidual(b, r) => {
            let r = &r[i * n + j0..][..len];
            for ((o, &bj), &rj) in row.iter_mut().zip(&b[j0..j0 + len]).zip(r) {
                *o = *o + bj + rj;
            }
        }
    }
}

/// `o = gelu(o + b)` on `N` values (`o`, `b`: exactly `N` long) with [`super::ops::gelu_lanes`].
#[inline(always)]
fn bias_gelu_lanes<const FMA: bool, const N: usize>(o: &mut [f32], b: &[f32]) {
    // (fixed-size arrays: the add is N / 16 whole vectors, the width the GELU then loads)
    if let (Ok(o), Ok(b)) = (<&mut [f32; N]>::try_from(o), <&[f32; N]>::try_from(b)) {
        for i in 0..N {
            o[i] += b[i];
        }
        super::ops::gelu_lanes::<FMA, N>(o);
    }
}

/// Append `src` (bf16 bits) to `dst` as f32 (exact: a bf16 is the top half of an f32), in a
/// function compiled for `level`'s vector ISA.
fn widen_bf16(level: SimdLevel, src: &[u16], dst: &mut Vec<f32>) {
    // SAFETY: `level` is available (the caller dispatches on an available level).
    with_isa!(level, I => unsafe { I::widen_bf16(src, dst) })
}

#[inline(always)]
fn widen_bf16_generic(src: &[u16], dst: &mut Vec<f32>) {
    dst.extend(src.iter().map(|&b| f32::from_bits(u32::from(b) << 16)));
}

/// Grow `v` to at least `len` elements (never shrinks or clears: callers overwrite what they
/// use).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Largest k handled as a single block; longer k is split into blocks of about `KC_TARGET`.
const KC_SINGLE_MAX: usize = 512;
const KC_TARGET: usize = 384;
/// Most x panels (of `mr` rows) per m-block.
const MC_PANELS: usize = 8;
/// Most W panels (of `NR` columns) per inner n-block: 8 x 32 = 256 columns, so the W block a
/// tile streams (`NC x KC` <= 256 x 512 x 4 B = 512 KB) stays in L2.
const NC_PANELS: usize = 8;
/// Fewest x panels per m-block when m is split for parallelism.
const MIN_BLOCK_PANELS: usize = 2;
/// Below this many flops the whole product runs on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 21;
/// Tiles wanted per thread, for load balance, when m is split into blocks.
const TILES_PER_THREAD: usize = 4;
/// Tiles wanted per thread when m is too small to split and the columns are split instead
/// (m = 16: one sentence). Two, not four: each tile is one DRAM stream of W, and more
/// concurrent streams per thread compete for the same memory bandwidth.
const COLUMN_TILES_PER_THREAD: usize = 2;

/// How one product is cut into blocks and parallel tiles. A tile is (m-block, n-group): it packs
/// its rows of x once per k-block and sweeps its n-group in n-blocks of at most `NC_PANELS`.
#[derive(Debug)]
struct Plan {
    /// k-block length (the last block may be shorter).
    kc: usize,
    /// Rows per m-block (the last block may be shorter).
    mc: usize,
    m_blocks: usize,
    /// W panels per n-group (the last group may have fewer).
    ng_panels: usize,
    n_groups: usize,
    /// Most rows per micro-kernel call.
    mr: usize,
    /// Threads to run the tiles on (1: all on the calling thread).
    threads: usize,
}

impl Plan {
    /// `pairs`: the weight is in bf16 pairs of k (`with_bf16_dot`), so k-blocks start at even
    /// k.
    fn new(level: SimdLevel, m: usize, n: usize, k: usize, threads: usize, pairs: bool) -> Plan {
        let mr = max_rows(level);
        let kc = if k <= KC_SINGLE_MAX {
            k
        } else {
            k.div_ceil(k.div_ceil(KC_TARGET))
        };
        let kc = if pairs { kc.next_multiple_of(2) } else { kc };
        let n_panels = n.div_ceil(NR);
        let parallel = threads > 1 && 2 * m * n * k >= PARALLEL_MIN_FLOPS;
        let (want, want_columns) = if parallel {
            (
                TILES_PER_THREAD * threads,
                COLUMN_TILES_PER_THREAD * threads,
            )
        } else {
            (1, 1)
        };
        // m-blocks of at most MC_PANELS full panels; for parallelism, more blocks as long as
        // each keeps MIN_BLOCK_PANELS panels (W is re-read from L3 once per m-block).
        let full = m.div_ceil(MC_PANELS * mr).max(1);
        let m_blocks = if full == 2 && level == SimdLevel::Avx512 {
            // Two full blocks (one sentence of 113 to 224 tokens): splitting m further would
            // stream W from DRAM once per extra block, so split the columns instead (AVX-512,
            // the 48 GEMMs of a forward at m = 128, 160, 192: 0.84x to 0.98x, paired, against
            // four to seven m-blocks; at m = 224 even).
            full
        } else {
            full.max(want.min(m / (MIN_BLOCK_PANELS * mr)))
        };
        // Still too few tiles (small m): split the columns into groups as well.
        let n_groups = n_panels.min(want_columns.div_ceil(m_blocks));
        let mc = m.div_ceil(m_blocks);
        let m_blocks = m.div_ceil(mc);
        let ng_panels = n_panels.div_ceil(n_groups);
        let n_groups = n_panels.div_ceil(ng_panels);
        Plan {
            kc,
            mc,
            m_blocks,
            ng_panels,
            n_groups,
            mr,
            threads: if parallel { threads } else { 1 },
        }
    }

    /// Rows in m-block `mb`.
    fn block_rows(&self, m: usize, mb: usize) -> usize {
        self.mc.min(m - mb * self.mc)
    }
}

/// How the `rows` of one m-block are cut into micro-kernel panels: `count` panels of `base` or
/// `base + 1` rows (the first `extra` get one more), each at most `mr` rows.
#[derive(Clone, Copy)]
struct Panels {
    count: usize,
    base: usize,
    extra: usize,
}

impl Panels {
    fn new(rows: usize, mr: usize) -> Panels {
        let count = rows.div_ceil(mr).max(1);
        Panels {
            count,
            base: rows / count,
            extra: rows % count,
        }
    }
    /// Rows of panel `t`.
    fn rows(self, t: usize) -> usize {
        self.base + usize::from(t < self.extra)
    }
    /// First row of panel `t`, relative to the block.
    fn start(self, t: usize) -> usize {
        t * self.base + t.min(self.extra)
    }
}

/// Pack `x[i0 .. i0 + rows, pc .. pc + kc]` (x row-major with `k` columns) into `dst` panel by
/// panel (`Panels::new(rows, mr)`): panel `t` starts at `start(t) * kc` and holds, for each
/// `p < kc`, its `rows(t)` values of column `pc + p` contiguously, so the micro-kernel reads it
/// as one unit-stride stream.
#[allow(clippy::too_many_arguments)]
fn pack_x_block(
    x: &[f32],
    k: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    mr: usize,
    dst: &mut [f32],
) {
    let panels = Panels::new(rows, mr);
    for t in 0..panels.count {
        let (r0, pr) = (panels.start(t), panels.rows(t));
        let d = &mut dst[r0 * kc..(r0 + pr) * kc];
        let src = &x[(i0 + r0) * k + pc..];
        by_mr!(
            pr,
            pack_panel,
            (src, k, kc, d),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        );
    }
}

/// One x panel of `PR` rows: `d[p * PR + r] = src[r * k + p]` for `p < kc`. The row count is
/// a constant so that the row loop unrolls into `PR` unit-stride streams without bounds checks.
#[inline]
fn pack_panel<const PR: usize>(src: &[f32], k: usize, kc: usize, d: &mut [f32]) {
    let rows: [&[f32]; PR] = std::array::from_fn(|r| &src[r * k..][..kc]);
    for (p, col) in d[..PR * kc].chunks_exact_mut(PR).enumerate() {
        for (v, row) in col.iter_mut().zip(rows) {
            *v = row[p];
        }
    }
}

/// A buffer pointer shared by the parallel jobs: `out`, or the shared packed x.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: the pointers are only dereferenced in `TaskCtx::run_with`, `TaskCtx::pack_unit` and
// the rounding units and tiles of `amx::linear`.
// Distinct tiles write disjoint rectangles of `out`; distinct pack units write disjoint
// ranges of the packed x, and tiles only read it after the barrier in `run_jobs`; both
// buffers are exclusively borrowed by `linear_with` for the whole parallel section. So
// sharing the pointers between threads cannot race.
unsafe impl Send for SharedPtr {}
// SAFETY: see `Send` above.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper rather than
    /// its raw-pointer field).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Everything one tile needs.
struct TaskCtx<'a> {
    level: SimdLevel,
    plan: &'a Plan,
    x: &'a [f32],
    /// x pre-packed by `pack_unit` (`m * words(k)` words), when several tiles share an m-block
    xp: Option<SharedPtr>,
    m: usize,
    n: usize,
    k: usize,
    /// packed W panels
    w: WPanels<'a>,
    ep: Epilogue<'a>,
    /// `out[..m * n]`, row-major with row stride `n`
    out: SharedPtr,
}

thread_local! {
    /// Per-thread buffer for the x block a tile packs, reused across calls.
    static X_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread buffer for all of x packed up front (`TaskCtx::pack_unit`), owned by the
    /// thread that called `linear`.
    static X_SHARED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread buffer for one n-block of bf16 W panels widened to f32 (one k-block), or,
    /// with bf16 pair weights, for the x block rounded to bf16 pairs before it is packed.
    static W_WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl TaskCtx<'_> {
    /// Packed-x words for `len` values of k: one f32 each, or with bf16 pair weights one
    /// word per pair of bf16 (the packed x buffers then hold those bits, never used as f32).
    fn words(&self, len: usize) -> usize {
        match self.w {
            WPanels::Pairs(_) => len.div_ceil(2),
            _ => len,
        }
    }

    /// Pack x rows `i0 .. i0 + rows`, k-block `pc .. pc + kc` into `dst` (`rows *
    /// words(kc)` words, laid out by `pack_x_block`); with bf16 pair weights the values are
    /// first rounded to bf16 pairs, row by row, in `tmp`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, clippy::ptr_arg))]
    fn pack(
        &self,
        i0: usize,
        rows: usize,
        pc: usize,
        kc: usize,
        dst: &mut [f32],
        tmp: &mut Vec<f32>,
    ) {
        let (k, mr) = (self.k, self.plan.mr);
        match self.w {
            #[cfg(target_arch = "x86_64")]
            WPanels::Pairs(_) => {
                let kc2 = kc.div_ceil(2);
                grow(tmp, rows * kc2);
                for (r, dst_row) in tmp.chunks_exact_mut(kc2).take(rows).enumerate() {
                    let src = &self.x[(i0 + r) * k + pc..][..kc];
                    // SAFETY: avx512_bf16 was detected: `linear_with` checks it for pair
                    // weights.
                    unsafe { x86::round_to_bf16_pairs(src, dst_row) };
                }
                pack_x_block(tmp, kc2, 0, rows, 0, kc2, mr, dst);
            }
            #[cfg(not(target_arch = "x86_64"))]
            WPanels::Pairs(_) => unreachable!("bf16 pair weights on a non-x86 CPU"),
            _ => pack_x_block(self.x, k, i0, rows, pc, kc, mr, dst),
        }
    }

    /// Pack unit (`mb`, `kb`) of the shared packed x: the rows of m-block `mb`, k-block `kb`,
    /// at word offset `mb * mc * words(k) + rows * words(pc)` (see `pack_x_block` for the
    /// layout inside).
    fn pack_unit(&self, mb: usize, kb: usize) {
        let (p, k) = (self.plan, self.k);
        let xp = self.xp.expect("shared x buffer");
        let rows = p.block_rows(self.m, mb);
        let pc = kb * p.kc;
        let kc = p.kc.min(k - pc);
        let off = mb * p.mc * self.words(k) + rows * self.words(pc);
        let len = rows * self.words(kc);
        // SAFETY: `pc` is a multiple of `kc` (even for pair weights), so `off + len <= (mb *
        // mc + rows) * words(k) <= m * words(k)`, the buffer's length: the range is inside
        // it; units write disjoint ranges, and no tile reads the buffer before every unit has
        // finished (`run_jobs` barrier), so this is the only access.
        let dst = unsafe { std::slice::from_raw_parts_mut(xp.0.add(off), len) };
        W_WIDE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut tmp) => self.pack(mb * p.mc, rows, pc, kc, dst, &mut tmp),
            Err(_) => self.pack(mb * p.mc, rows, pc, kc, dst, &mut Vec::new()),
        });
    }

    /// Compute tile (`mb`, `ng`): the rows of m-block `mb`, the columns of n-group `ng`.
    /// `next_ng`: the n-group of the tile this thread runs next, if known (streamed tiles
    /// request its W early).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn run(&self, mb: usize, ng: usize, next_ng: Option<usize>) {
        // Columns split with x packed up front, f32 or bf16 pair W, AVX-512: streamed, with no
        // per-tile buffers.
        #[cfg(target_arch = "x86_64")]
        if let (Some(xp), WPanels::F32(_) | WPanels::Pairs(_), SimdLevel::Avx512) =
            (self.xp, self.w, self.level)
        {
            return self.run_streaming(xp, mb, ng, next_ng);
        }
        // Re-entered on this thread (cannot happen today: the tile body never yields to
        // rayon): use private buffers rather than panic.
        X_PACK.with(|xc| {
            W_WIDE.with(|wc| match (xc.try_borrow_mut(), wc.try_borrow_mut()) {
                (Ok(mut xbuf), Ok(mut wbuf)) => self.run_with(mb, ng, &mut xbuf, &mut wbuf),
                _ => self.run_with(mb, ng, &mut Vec::new(), &mut Vec::new()),
            })
        })
    }

    fn run_with(&self, mb: usize, ng: usize, buf: &mut Vec<f32>, wide: &mut Vec<f32>) {
        let p = self.plan;
        let (n, k) = (self.n, self.k);
        let i0 = mb * p.mc;
        let rows = p.block_rows(self.m, mb);
        let g0 = ng * p.ng_panels;
        let g1 = (g0 + p.ng_panels).min(n.div_ceil(NR));
        let panels = Panels::new(rows, p.mr);

        let mut pc = 0;
        while pc < k {
            let kc = p.kc.min(k - pc);
            let first = pc == 0;
            let last = pc + kc == k;
            let kw = self.words(kc);
            let len = rows * kw;
            let xb: &[f32] = match self.xp {
                // SAFETY: the range is the one `pack_unit(mb, pc / kc)` wrote (inside the
                // m * words(k) buffer, see there); all units finished before any tile started
                // (`run_jobs` barrier, Release/Acquire), and nothing writes it any more.
                Some(xp) => unsafe {
                    let off = i0 * self.words(k) + rows * self.words(pc);
                    std::slice::from_raw_parts(xp.0.add(off), len)
                },
                None => {
                    // `pack` writes all of `buf[..len]`: grow, never clear.
                    grow(buf, len);
                    self.pack(i0, rows, pc, kc, &mut buf[..len], wide);
                    &buf[..len]
                }
            };
            // Per n-block (its W block stays in L2): each x panel (L1) against every W panel.
            let mut q_blk = g0;
            while q_blk < g1 {
                let q_end = (q_blk + NC_PANELS).min(g1);
                // Where this k-block of panels q_blk .. q_end is read from.
                let src = match self.w {
                    WPanels::F32(w) => BlockSrc::Packed(w),
                    #[cfg(target_arch = "x86_64")]
                    WPanels::Pairs(w) => BlockSrc::Pairs(w),
                    #[cfg(not(target_arch = "x86_64"))]
                    WPanels::Pairs(_) => unreachable!("bf16 pair weights on a non-x86 CPU"),
                    // With one or two x panels there is nothing to amortize a widening pass
                    // over: the AVX-512 kernel reads the bf16 panels itself (widening in
                    // registers overlaps with the DRAM stream such small products wait on).
                    #[cfg(target_arch = "x86_64")]
                    WPanels::Bf16(w) if self.level == SimdLevel::Avx512 && panels.count <= 2 => {
                        BlockSrc::Bf16(w)
                    }
                    // Otherwise widen the block to f32 once for all the x panels below.
                    WPanels::Bf16(w) => {
                        wide.clear();
                        for q in q_blk..q_end {
                            widen_bf16(self.level, &w[(q * k + pc) * NR..][..kc * NR], wide);
                        }
                        BlockSrc::Wide(wide)
                    }
                };
                for t in 0..panels.count {
                    let (r0, mr) = (panels.start(t), panels.rows(t));
                    let a = &xb[r0 * kw..(r0 + mr) * kw];
                    let row = i0 + r0;
                    for q in q_blk..q_end {
                        let j0 = q * NR;
                        let nr = NR.min(n - j0);
                        // SAFETY: `row + mr <= m` and `j0 + nr <= n`, so the tile rows
                        // `row .. row + mr`, columns `j0 .. j0 + nr` with stride `n` lie inside
                        // `out[..m * n]`; this rectangle belongs to this tile only (tiles are
                        // disjoint, see `SharedPtr`), and `out` is exclusively borrowed by
                        // `linear_with` for the duration. `a` holds `mr * kc` and every `b`
                        // below `kc * NR` elements, and `mr <= max_rows(level)`, as the kernels
                        // require (for `Pairs`, `a` holds `mr * kc2` words, `b` `kc2 * NR`);
                        // `BlockSrc::Bf16` exists only when AVX-512F was detected, `Pairs`
                        // only with avx512_bf16 as well (`linear_with` checks it).
                        // When `!first` the tile was fully written by the previous k-block.
                        unsafe {
                            let c = self.out.0.add(row * n + j0);
                            match src {
                                BlockSrc::Packed(w) => {
                                    let b = &w[(q * k + pc) * NR..][..kc * NR];
                                    micro_kernel(self.level, mr, kc, a, b, c, n, nr, !first);
                                }
                                BlockSrc::Wide(w) => {
                                    let b = &w[(q - q_blk) * kc * NR..][..kc * NR];
                                    micro_kernel(self.level, mr, kc, a, b, c, n, nr, !first);
                                }
                                #[cfg(target_arch = "x86_64")]
                                BlockSrc::Bf16(w) => {
                                    let b = &w[(q * k + pc) * NR..][..kc * NR];
                                    x86::avx512_kernel(mr, kc, a, b, c, n, nr, !first, None);
                                }
                                #[cfg(target_arch = "x86_64")]
                                BlockSrc::Pairs(w) => {
                                    let (k2, kc2) = (k.div_ceil(2), kc.div_ceil(2));
                                    let b = &w[(q * k2 + pc / 2) * NR..][..kc2 * NR];
                                    x86::avx512_dot_kernel(mr, kc2, a, b, c, n, nr, !first, None);
                                }
                            }
                        }
                    }
                    if last && !matches!(self.ep, Epilogue::None) {
                        // The panel's rows across the whole n-block (at most 256 columns,
                        // still in L1/L2): long rows keep the epilogue loops vectorized.
                        let j0 = q_blk * NR;
                        let cols = (q_end * NR).min(n) - j0;
                        // SAFETY: rows `row .. row + mr`, columns `j0 .. j0 + cols` (inside
                        // `out[..m * n]` as above) belong to this tile only and were just
                        // written; `self.level` is available (checked by `linear_with`).
                        unsafe {
                            let c = self.out.0.add(row * n + j0);
                            epilogue_tile(self.level, self.ep, c, mr, cols, row, j0, n);
                        }
                    }
                }
                q_blk = q_end;
            }
            pc += kc;
        }
    }
}

impl TaskCtx<'_> {
    /// Tile (`mb`, `ng`) of a product with the columns split (small m, x packed up front): W
    /// streams from DRAM (m = 16: 16 flops per 4-byte weight), so each W panel is read once,
    /// by all the block's x panels back to back (after the first from L1 / L2), and the first
    /// two micro-kernel calls on it request into L2 half each of the micro-panel that comes
    /// next (a lone x panel requests all of it), instead of their own W a few k-steps ahead:
    /// the DRAM stream never waits on the arithmetic. After the tile's last micro-panel comes
    /// the first of n-group `next_ng`, the tile this thread runs next. Order: k-block, then
    /// panel. (With three x panels or more, m = 29 to ~200, this beat the blocked loop by 7-11%
    /// on the 48 GEMMs of a forward: the loop's W block arrives during the first x panel only.)
    #[cfg(target_arch = "x86_64")]
    fn run_streaming(&self, xp: SharedPtr, mb: usize, ng: usize, next_ng: Option<usize>) {
        let (p, n, k) = (self.plan, self.n, self.k);
        // Steps of the micro-kernels are k-steps for f32 panels and pairs of k for bf16 pair
        // panels; either way one step of a panel is 32 words (128 bytes, two lines), so
        // everything below counts words and steps.
        let base: *const f32 = match self.w {
            WPanels::F32(w) => w.as_ptr(),
            WPanels::Pairs(w) => w.as_ptr().cast(),
            WPanels::Bf16(_) => unreachable!("bf16 widening panels are not streamed"),
        };
        let kw = self.words(k);
        let (i0, rows) = (mb * p.mc, p.block_rows(self.m, mb));
        let panels = Panels::new(rows, p.mr);
        let g0 = ng * p.ng_panels;
        let g1 = (g0 + p.ng_panels).min(n.div_ceil(NR));
        let next_tile = next_ng.map(|u| u * p.ng_panels);
        let mut pc = 0;
        while pc < k {
            let kc = p.kc.min(k - pc);
            let (pw, steps) = (self.words(pc), self.words(kc));
            // SAFETY: as in `run_with`: the range `pack_unit(mb, pc / kc)` wrote, complete
            // before any tile started, read-only from then on.
            let xb =
                unsafe { std::slice::from_raw_parts(xp.0.add(i0 * kw + rows * pw), rows * steps) };
            for q in g0..g1 {
                let (j0, at) = (q * NR, (q * kw + pw) * NR);
                let nr = NR.min(n - j0);
                // The micro-panel after this one in walk order: the next panel of this k-block,
                // else the tile's first panel of the next k-block, else none.
                let next = if q + 1 < g1 {
                    Some((q + 1) * kw + pw)
                } else if pc + kc < k {
                    Some(g0 * kw + pw + steps)
                } else {
                    next_tile.map(|q| q * kw)
                };
                for t in 0..panels.count {
                    let (r0, mr) = (panels.start(t), panels.rows(t));
                    let a = &xb[r0 * steps..(r0 + mr) * steps];
                    // kc * 2 lines of the next micro-panel: all by a lone call, else half
                    // each by the first two calls on this one
                    let lines = match (panels.count, t) {
                        (1, _) => 2,
                        (_, 0 | 1) => 1,
                        _ => 0,
                    };
                    let stream = match next {
                        Some(o) => x86::Stream {
                            at: base.wrapping_add(o * NR + t.min(1) * steps * 16),
                            lines,
                        },
                        None => x86::Stream { at: base, lines: 0 },
                    };
                    // SAFETY: as in `run_with`: the tile rows `i0 + r0 .. + mr`, columns
                    // `j0 .. j0 + nr` lie inside `out[..m * n]` and belong to this tile only;
                    // `a` holds `mr * steps`, `b` `steps * NR` words, `mr <= max_rows(level)`;
                    // AVX-512F was detected (`level`), and avx512_bf16 too for pair panels
                    // (`linear_with`); when `pc > 0` the tile was written by the previous
                    // k-block.
                    unsafe {
                        let c = self.out.0.add((i0 + r0) * n + j0);
                        let more = pc > 0;
                        match self.w {
                            WPanels::F32(w) => {
                                let b = &w[at..][..steps * NR];
                                x86::avx512_kernel(mr, steps, a, b, c, n, nr, more, Some(stream));
                            }
                            WPanels::Pairs(w) => {
                                let b = &w[at..][..steps * NR];
                                let s = Some(stream);
                                x86::avx512_dot_kernel(mr, steps, a, b, c, n, nr, more, s);
                            }
                            WPanels::Bf16(_) => unreachable!("checked above"),
                        }
                    }
                }
            }
            pc += kc;
        }
        if !matches!(self.ep, Epilogue::None) {
            let (j0, cols) = (g0 * NR, (g1 * NR).min(n) - g0 * NR);
            for t in 0..panels.count {
                let (row, mr) = (i0 + panels.start(t), panels.rows(t));
                // SAFETY: rows `row .. row + mr`, columns `j0 .. j0 + cols` are this tile's
                // (inside `out[..m * n]`), fully written above; `self.level` is available.
                unsafe {
                    let c = self.out.0.add(row * n + j0);
                    epilogue_tile(self.level, self.ep, c, mr, cols, row, j0, n);
                }
            }
        }
    }
}

/// Run one micro-kernel: `C[r, j] (+)= sum_{p < kc} a[p * mr + r] * b[p * NR + j]` for
/// `r < mr`, `j < nr`, where `C[r, j]` is `*c.add(r * ldc + j)`; `accumulate` adds to C
/// instead of overwriting it.
///
/// # Safety
/// `level` must be available on this CPU; `1 <= mr <= max_rows(level)`, `1 <= nr <= NR`,
/// `a.len() >= mr * kc`, `b.len() >= kc * NR`; `c` must be valid for reads (when `accumulate`)
/// and writes of every `C[r, j]` above, and no other reference may access them meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro_kernel(
    level: SimdLevel,
    mr: usize,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    debug_assert!((1..=max_rows(level)).contains(&mr) && (1..=NR).contains(&nr));
    debug_assert!(a.len() >= mr * kc && b.len() >= kc * NR);
    // SAFETY: forwarded contract; `level` is available, so its instructions may run.
    with_isa!(level, I => unsafe { I::kernel(mr, kc, a, b, c, ldc, nr, accumulate) })
}
