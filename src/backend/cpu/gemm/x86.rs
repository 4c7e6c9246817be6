//! x86-64 micro-kernels: AVX-512F (up to 14 x 32; fp32 panels, or bf16 panels widened in
//! registers), its bf16 dot-product twin on AVX512_BF16 (up to 14 x 32 over pairs of k), and
//! AVX2 + FMA (up to 6 x 16, twice per 32-wide W panel). All are compiled into every x86-64
//! build and only called after run-time feature detection (`SimdLevel::is_available`,
//! `bf16_dot_detected`).
//!
//! The `_mm512_*` intrinsics (and the `avx512f` target feature) are stable since Rust 1.89.
//! The crate already needs 1.89 through its dependencies (zip 9.8 declares `rust-version =
//! "1.89"`), so the module tells clippy its MSRV is 1.89 (see `mod x86` in `gemm.rs`) instead
//! of the stale `rust-version = "1.85"` of Cargo.toml.

use std::arch::x86_64::*;

use super::{Epilogue, Isa, NR};

/// Most rows per AVX-512 micro-kernel call: 14 rows x 2 zmm = 28 accumulators, plus the two W
/// vectors (the x value is an embedded-broadcast memory operand of the FMA).
pub(super) const AVX512_MR: usize = 14;
/// Most rows per AVX2 micro-kernel call: 6 rows x 2 ymm = 12 accumulators + 2 W + 1 broadcast.
pub(super) const AVX2_MR: usize = 6;

/// The AVX-512 level (`SimdLevel::Avx512`: AVX-512F with AVX2 and FMA).
pub(super) struct Avx512;

impl Isa for Avx512 {
    const MR: usize = AVX512_MR;

    unsafe fn kernel(
        mr: usize,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded contract (the level is available: AVX-512F, AVX2, FMA).
        unsafe { avx512_kernel(mr, kc, a, b, c, ldc, nr, accumulate, None) }
    }

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
        unsafe { epilogue_avx512(ep, c, mr, nr, row0, j0, n) }
    }

    unsafe fn widen_bf16(src: &[u16], dst: &mut Vec<f32>) {
        // SAFETY: the level is available (AVX-512F).
        unsafe { widen_bf16_avx512(src, dst) }
    }
}

/// The AVX2 level (`SimdLevel::Avx2`: AVX2 and FMA).
pub(super) struct Avx2;

impl Isa for Avx2 {
    const MR: usize = AVX2_MR;

    unsafe fn kernel(
        mr: usize,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded contract (the level is available: AVX2, FMA).
        unsafe { avx2_kernel(mr, kc, a, b, c, ldc, nr, accumulate) }
    }

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
        unsafe { epilogue_avx2(ep, c, mr, nr, row0, j0, n) }
    }

    unsafe fn widen_bf16(src: &[u16], dst: &mut Vec<f32>) {
        // SAFETY: the level is available (AVX2).
        unsafe { widen_bf16_avx2(src, dst) }
    }
}

/// How far ahead (in elements of the W panel: 8 k-steps) the kernels prefetch W.
const PF_AHEAD: usize = 24 * NR;

/// An element type of packed W panels the AVX-512 kernel reads: f32, or bf16 bits (`u16`)
/// widened in registers (exact: a bf16 is the top half of an f32).
pub(super) trait PanelElem: Copy {
    /// The 32 values of one panel row at `p`, as two f32 vectors.
    ///
    /// # Safety
    /// AVX-512F available; `p .. p + NR` readable.
    unsafe fn load_row(p: *const Self) -> (__m512, __m512);
    /// Prefetch the panel row at `p` (any address: a prefetch never faults).
    ///
    /// # Safety
    /// AVX-512F available (SSE prefetch; no memory is accessed).
    unsafe fn prefetch(p: *const Self);
}

impl PanelElem for f32 {
    #[inline(always)]
    unsafe fn load_row(p: *const f32) -> (__m512, __m512) {
        // SAFETY: caller contract, `p .. p + 32` readable; unaligned loads.
        unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint and never faults; both lines of the 128-byte row.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16).cast());
        }
    }
}

impl PanelElem for u16 {
    #[inline(always)]
    unsafe fn load_row(p: *const u16) -> (__m512, __m512) {
        // SAFETY: caller contract, `p .. p + 32` (64 bytes) readable; unaligned loads. Zero-
        // extending each u16 to 32 bits and shifting it into the top half gives the f32.
        unsafe {
            let lo = _mm256_loadu_si256(p.cast());
            let hi = _mm256_loadu_si256(p.add(16).cast());
            let widen = |v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)));
            (widen(lo), widen(hi))
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u16) {
        // SAFETY: a prefetch is a hint and never faults; the 64-byte row is one line.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
}

/// W that a later micro-kernel call will read, requested into L2 while this call computes:
/// `lines` cache lines per k-step, from `at` on (k-step `p` asks for the lines at
/// `at + p * 16 * lines` floats). Used where the product waits on the DRAM stream of W (small
/// m), so that W is requested while the arithmetic runs.
#[derive(Clone, Copy)]
pub(super) struct Stream {
    /// first float of the W to request (only prefetched, never read: may be any address)
    pub at: *const f32,
    /// lines per k-step, 0, 1 or 2: `kc` k-steps request `kc * lines` lines (`kc * lines * 64`
    /// bytes)
    pub lines: usize,
}

/// AVX-512 micro-kernel, see `super::micro_kernel` for the contract. With a `stream`, it
/// prefetches that instead of its own W a few k-steps ahead (the W it reads was requested by
/// the call before it).
///
/// # Safety
/// AVX-512F must be available; `1 <= mr <= AVX512_MR`, `1 <= nr <= NR`, `a.len() >= mr * kc`,
/// `b.len() >= kc * NR`; `c` valid for reads (if `accumulate`) and writes of the `mr x nr` tile
/// with row stride `ldc`, and not accessed through any other reference meanwhile. `stream` is
/// only prefetched, so it may point anywhere.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_kernel<T: PanelElem>(
    mr: usize,
    kc: usize,
    a: &[f32],
    b: &[T],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
    stream: Option<Stream>,
) {
    assert!(mr * kc <= a.len() && kc * NR <= b.len() && (1..=NR).contains(&nr));
    debug_assert!(stream.is_none_or(|s| s.lines <= 2));
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let at = stream.map_or(std::ptr::null(), |s| s.at);
    // One instance per (rows, prefetch policy), chosen at run time.
    macro_rules! tile {
        ($lines:tt) => {
            by_mr!(
                mr,
                avx512_tile::<_, T, $lines>,
                (kc, a, b, c, ldc, nr, accumulate, at),
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
            )
        };
    }
    // SAFETY: the operand lengths were just checked; the rest is this function's contract.
    unsafe { by_policy!(stream, tile) }
}

/// Expand the local macro `$tile!(LINES)` for the prefetch policy of `stream` (`OWN` without
/// one, else its lines per step: 0, 1 or 2); shared by the fp32 and bf16 dot-product kernels.
macro_rules! by_policy {
    ($stream:expr, $tile:ident) => {
        match $stream.map(|s| s.lines) {
            None => $tile!(OWN),
            Some(0) => $tile!(0),
            Some(1) => $tile!(1),
            Some(_) => $tile!(2),
        }
    };
}
use by_policy;

/// `LINES` value of `avx512_tile` for "prefetch its own W `PF_AHEAD` ahead" (no stream).
const OWN: usize = usize::MAX;

/// One `MR x 32` tile over `kc` k-steps. Each k-step prefetches either its own W `PF_AHEAD`
/// ahead (`LINES == OWN`) or `LINES` lines of the stream at `at` (`LINES` lines per k-step).
/// The k-loop walks pointers, two k-steps per iteration: apart from the FMAs and their loads
/// a k-step costs about two instructions, so the FMAs, not the front end, set the pace.
///
/// # Safety
/// As `avx512_kernel`, with `MR == mr`, `a` valid for `MR * kc` and `b` for `kc * NR` reads.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_tile<const MR: usize, T: PanelElem, const LINES: usize>(
    kc: usize,
    a: *const f32,
    b: *const T,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
    at: *const f32,
) {
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    /// One k-step: x at `ap` (MR values), W at `bp` (one panel row), stream at `pf`.
    ///
    /// # Safety
    /// `ap .. ap + MR` and `bp .. bp + NR` readable; `pf` is only prefetched.
    #[inline(always)]
    unsafe fn step<const MR: usize, T: PanelElem, const LINES: usize>(
        ap: *const f32,
        bp: *const T,
        pf: *const f32,
        lo: &mut [__m512; MR],
        hi: &mut [__m512; MR],
    ) {
        // SAFETY: caller contract; prefetches never fault (addresses formed with
        // `wrapping_add`).
        unsafe {
            if LINES == OWN {
                T::prefetch(bp.wrapping_add(PF_AHEAD));
            } else {
                for l in 0..LINES {
                    _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(16 * l).cast());
                }
            }
            let (b0, b1) = T::load_row(bp);
            for r in 0..MR {
                let av = _mm512_set1_ps(*ap.add(r));
                lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
            }
        }
    }
    let per = if LINES == OWN { 0 } else { 16 * LINES };
    // SAFETY: k-step p reads `a + p * MR .. + MR` and `b + p * NR .. + NR`, inside the
    // operands for p < kc (caller contract); the stream pointer only feeds prefetches.
    unsafe {
        let (mut ap, mut bp, mut pf) = (a, b, at);
        for _ in 0..kc / 2 {
            step::<MR, T, LINES>(ap, bp, pf, &mut lo, &mut hi);
            step::<MR, T, LINES>(
                ap.add(MR),
                bp.add(NR),
                pf.wrapping_add(per),
                &mut lo,
                &mut hi,
            );
            ap = ap.add(2 * MR);
            bp = bp.add(2 * NR);
            pf = pf.wrapping_add(2 * per);
        }
        if kc % 2 == 1 {
            step::<MR, T, LINES>(ap, bp, pf, &mut lo, &mut hi);
        }
    }
    // SAFETY: forwarded contract (the `MR x nr` tile at `c`).
    unsafe { store_tile(&lo, &hi, c, ldc, nr, accumulate) }
}

/// The bf16 dot-product micro-kernel (`vdpbf16ps`): like `avx512_kernel` (with the same
/// `stream` option: a step of a pair panel is 128 bytes too), over `kc2` pairs of k. `a`
/// holds `mr` words per pair (`pack_x_block` layout over the words of x rounded to bf16 pairs,
/// see `round_to_bf16_pairs`), `b` 32 words per pair (`PackedWeight::with_bf16_dot`); each
/// `vdpbf16ps` adds both products of a pair to the fp32 accumulators, so it does twice the
/// multiply-adds of an fp32 FMA.
///
/// # Safety
/// AVX-512F and AVX512_BF16 must be available; `1 <= mr <= AVX512_MR`, `1 <= nr <= NR`; `c`
/// valid for reads (if `accumulate`) and writes of the `mr x nr` tile with row stride `ldc`,
/// and not accessed through any other reference meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn avx512_dot_kernel(
    mr: usize,
    kc2: usize,
    a: &[f32],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
    stream: Option<Stream>,
) {
    assert!(mr * kc2 <= a.len() && kc2 * NR <= b.len() && (1..=NR).contains(&nr));
    debug_assert!(stream.is_none_or(|s| s.lines <= 2));
    let (a, b) = (a.as_ptr().cast::<u32>(), b.as_ptr());
    let at = stream.map_or(std::ptr::null(), |s| s.at);
    macro_rules! tile {
        ($lines:tt) => {
            by_mr!(
                mr,
                avx512_dot_tile::<_, $lines>,
                (kc2, a, b, c, ldc, nr, accumulate, at),
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
            )
        };
    }
    // SAFETY: the operand lengths were just checked; the rest is this function's contract.
    unsafe { by_policy!(stream, tile) }
}

/// One `MR x 32` tile of the dot-product kernel over `kc2` pairs; each pair prefetches its own
/// W `PF_AHEAD` words ahead (`LINES == OWN`) or `LINES` lines of the stream at `at`.
///
/// # Safety
/// As `avx512_dot_kernel`, with `MR == mr`, `a` valid for `MR * kc2` and `b` for `kc2 * NR`
/// reads.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn avx512_dot_tile<const MR: usize, const LINES: usize>(
    kc2: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
    at: *const f32,
) {
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let per = if LINES == OWN { 0 } else { 16 * LINES };
    // SAFETY: pair p reads `a + p * MR .. + MR` and `b + p * NR .. + NR`, inside the operands
    // for p < kc2 (caller contract); prefetch addresses are formed with `wrapping_add` and a
    // prefetch never faults. `__m512i` and `__m512bh` are both 64-byte vectors, any bits valid.
    unsafe {
        let (mut ap, mut bp, mut pf) = (a, b, at);
        for _ in 0..kc2 {
            if LINES == OWN {
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_AHEAD).cast());
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_AHEAD + 16).cast());
            } else {
                for l in 0..LINES {
                    _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(16 * l).cast());
                }
            }
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for r in 0..MR {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
            pf = pf.wrapping_add(per);
        }
    }
    // SAFETY: forwarded contract (the `MR x nr` tile at `c`).
    unsafe { store_tile(&lo, &hi, c, ldc, nr, accumulate) }
}

/// `dst[i]` = `src[2i]` and `src[2i + 1]` rounded to bf16 (nearest even; `vcvtne2ps2bf16`, which
/// also reads denormals as zero) in the low and high half of one word, stored as the bits of an
/// f32 (a past-the-end `src[2i + 1]` is 0): x as the bf16 dot-product kernel reads it.
///
/// # Safety
/// AVX-512F and AVX512_BF16 must be available.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_to_bf16_pairs(src: &[f32], dst: &mut [f32]) {
    assert!(
        dst.len() >= src.len().div_ceil(2),
        "bf16 pair buffer too short"
    );
    let (mut i, n) = (0, src.len());
    while i + 32 <= n {
        // SAFETY: `src[i .. i + 32]` and `dst[i / 2 .. i / 2 + 16]` are inside the slices.
        unsafe {
            let v0 = _mm512_loadu_ps(src.as_ptr().add(i));
            let v1 = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let pairs: __m512 = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i / 2), pairs);
        }
        i += 32;
    }
    while i < n {
        // 32 values -> 16 words; lanes past the end read as zero
        let m0 = mask_below(n - i);
        let m1 = mask_below((n - i).saturating_sub(16));
        // SAFETY: the masked loads read `src[i .. min(i + 32, n)]` only (masked-off lanes are
        // not accessed), the masked store writes `dst[i / 2 .. i / 2 + ceil((n - i) / 2)]`,
        // inside dst (checked above); both vector types are 64 bytes, any bits valid.
        unsafe {
            let v0 = _mm512_maskz_loadu_ps(m0, src.as_ptr().add(i));
            let v1 = if m1 != 0 {
                _mm512_maskz_loadu_ps(m1, src.as_ptr().add(i + 16))
            } else {
                _mm512_setzero_ps()
            };
            let pairs: __m512 = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
            let words = mask_below((n - i).div_ceil(2));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i / 2), words, pairs);
        }
        i += 32;
    }
}

/// Lanes `l < count` of a 16-lane mask.
#[inline(always)]
fn mask_below(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as __mmask16
    }
}

/// Write (or, with `accumulate`, add) the `MR x nr` accumulators to C.
///
/// # Safety
/// AVX-512F available; `c` valid for reads (if `accumulate`) and writes of the `MR x nr` tile
/// with row stride `ldc` (`1 <= nr <= NR`), exclusively ours.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile<const MR: usize>(
    lo: &[__m512; MR],
    hi: &[__m512; MR],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    if nr == NR {
        for r in 0..MR {
            // SAFETY: row r < mr of the tile: `c + r * ldc .. + NR` is inside it (caller
            // contract with nr == NR) and exclusively ours.
            unsafe {
                let cr = c.add(r * ldc);
                let (mut v0, mut v1) = (lo[r], hi[r]);
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(cr));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(cr.add(16)));
                }
                _mm512_storeu_ps(cr, v0);
                _mm512_storeu_ps(cr.add(16), v1);
            }
        }
    } else {
        // Partial panel: masked loads/stores touch only columns < nr (masked-off lanes are
        // neither read nor written, and cannot fault).
        let m0 = (((1u32 << nr.min(16)) - 1) & 0xffff) as __mmask16;
        let m1 = (((1u32 << nr.saturating_sub(16)) - 1) & 0xffff) as __mmask16;
        for r in 0..MR {
            // SAFETY: row r < mr of the tile, columns < nr only (masks); `cr.add(16)` is formed
            // only when nr > 16, so it stays inside the row.
            unsafe {
                let cr = c.add(r * ldc);
                let mut v0 = lo[r];
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
                }
                _mm512_mask_storeu_ps(cr, m0, v0);
                if m1 != 0 {
                    let mut v1 = hi[r];
                    if accumulate {
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr.add(16)));
                    }
                    _mm512_mask_storeu_ps(cr.add(16), m1, v1);
                }
            }
        }
    }
}

/// AVX2 + FMA micro-kernel, see `super::micro_kernel` for the contract. Runs a 16-column
/// kernel on each half of the 32-wide W panel.
///
/// # Safety
/// AVX2 and FMA must be available; `1 <= mr <= AVX2_MR`, `1 <= nr <= NR`,
/// `a.len() >= mr * kc`, `b.len() >= kc * NR`; `c` valid for reads (if `accumulate`) and
/// writes of the `mr x nr` tile with row stride `ldc`, not accessed otherwise meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2_kernel(
    mr: usize,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    half_panel_kernel!(avx2_tile, mr, kc, a, b, c, ldc, nr, accumulate)
}

/// `MR x 16` AVX2 tile over one half of a W panel (row stride `NR`).
///
/// # Safety
/// AVX2 + FMA available; `a` valid for `MR * kc` reads, `b + p * NR .. + 16` valid for p < kc;
/// `c` valid for the `MR x cols` tile (row stride `ldc`, `1 <= cols <= 16`), exclusively ours.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_tile<const MR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    // SAFETY: for p < kc the reads are inside the operands (contract); unaligned loads. The
    // prefetch address is formed with `wrapping_add` and a prefetch never faults.
    unsafe {
        for p in 0..kc {
            let bp = b.add(p * NR);
            let ap = a.add(p * MR);
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_AHEAD).cast());
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for r in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
            }
        }
    }
    for r in 0..MR {
        if cols == 16 {
            // SAFETY: row r of the tile, 16 columns, inside it (contract).
            unsafe {
                let cr = c.add(r * ldc);
                let (mut v0, mut v1) = (lo[r], hi[r]);
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr.add(8)));
                }
                _mm256_storeu_ps(cr, v0);
                _mm256_storeu_ps(cr.add(8), v1);
            }
        } else {
            // Partial: go through a stack buffer and copy the `cols` valid columns.
            let mut tmp = [0.0f32; 16];
            // SAFETY: `tmp` has 16 floats.
            unsafe {
                _mm256_storeu_ps(tmp.as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi[r]);
            }
            // SAFETY: row r of the tile, columns < cols: inside it and exclusively ours.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
            for (o, &v) in row.iter_mut().zip(&tmp) {
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}

/// `super::epilogue_tile` compiled for AVX-512 (the bias, GELU and residual loops vectorize).
///
/// # Safety
/// AVX-512F and FMA available (`SimdLevel::Avx512` checks both), and the contract of
/// `super::epilogue_tile`.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn epilogue_avx512(
    ep: Epilogue<'_>,
    c: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    // SAFETY: forwarded contract.
    unsafe { super::epilogue_tile_generic::<true>(ep, c, mr, nr, row0, j0, n) }
}

/// The AMX kernel's epilogue: the `mr x nr` block of products in `s` (row stride `lds`, an
/// L1-resident scratch the tiles were stored to) gets the epilogue in place, then is written to
/// `dst` = `out[row0, j0]` (row stride `n`) with ordinary vector stores. (Reading `out` back
/// after the tiles were stored there directly stalled on each line's fill from memory; stores
/// do not wait.)
///
/// # Safety
/// AVX-512F and FMA available; `s` valid for `mr` rows of `nr <= lds` floats, not accessed
/// otherwise meanwhile; `dst` valid for writes of `mr` rows of `nr` floats at stride `n`, not
/// accessed otherwise meanwhile; the epilogue's slices cover rows `row0 .. row0 + mr`,
/// columns `j0 .. j0 + nr` of the `[m, n]` output.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn epilogue_from_scratch_avx512(
    ep: Epilogue<'_>,
    s: *mut f32,
    lds: usize,
    dst: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    for r in 0..mr {
        // SAFETY: row r of the scratch block, nr <= lds values (contract).
        let row = unsafe { std::slice::from_raw_parts_mut(s.add(r * lds), nr) };
        super::apply_epilogue_row::<true>(ep, row, row0 + r, j0, n);
        let mut c = 0;
        while c < nr {
            let m = mask_below(nr - c);
            // SAFETY: lanes c .. min(c + 16, nr) of the scratch row and of dst's row r, both
            // inside their blocks (contract); masked-off lanes are not accessed.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, row.as_ptr().add(c));
                _mm512_mask_storeu_ps(dst.add(r * n + c), m, v);
            }
            c += 16;
        }
    }
}

/// [`epilogue_from_scratch_avx512`] for CPUs without AVX-512 (the AVX-VNNI int8 kernel's):
/// the epilogue compiled for AVX2 + FMA, the rows copied with plain slices.
///
/// # Safety
/// AVX2 and FMA available, and the contract of [`epilogue_from_scratch_avx512`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn epilogue_from_scratch_avx2(
    ep: Epilogue<'_>,
    s: *mut f32,
    lds: usize,
    dst: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    for r in 0..mr {
        // SAFETY: row r of the scratch block and of dst's block, nr values each (contract);
        // the two do not overlap.
        let (row, out) = unsafe {
            (
                std::slice::from_raw_parts_mut(s.add(r * lds), nr),
                std::slice::from_raw_parts_mut(dst.add(r * n), nr),
            )
        };
        super::apply_epilogue_row::<true>(ep, row, row0 + r, j0, n);
        out.copy_from_slice(row);
    }
}

/// `super::epilogue_tile` compiled for AVX2 + FMA.
///
/// # Safety
/// AVX2 and FMA available, and the contract of `super::epilogue_tile`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn epilogue_avx2(
    ep: Epilogue<'_>,
    c: *mut f32,
    mr: usize,
    nr: usize,
    row0: usize,
    j0: usize,
    n: usize,
) {
    // SAFETY: forwarded contract.
    unsafe { super::epilogue_tile_generic::<true>(ep, c, mr, nr, row0, j0, n) }
}

/// `super::widen_bf16` compiled for AVX-512F (the loop vectorizes to 16 lanes).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn widen_bf16_avx512(src: &[u16], dst: &mut Vec<f32>) {
    super::widen_bf16_generic(src, dst)
}

/// `super::widen_bf16` compiled for AVX2.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn widen_bf16_avx2(src: &[u16], dst: &mut Vec<f32>) {
    super::widen_bf16_generic(src, dst)
}
