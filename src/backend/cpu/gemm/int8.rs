//! The opt-in int8 GEMM (`--dtype int8`): `out[m, n] ~ epilogue(x[m, k] . W[n, k]^T)` with
//! both operands quantized to 8 bits and the products summed exactly in 32-bit integers.
//!
//! # Numerics (the definition the kernels and [`reference_linear_int8`] share)
//!
//! * **W**, per output feature `j` (symmetric, at load time): `sw[j] = max_p |W[j, p]| / 127`,
//!   `qw[j, p] = round(W[j, p] / sw[j])` in `-127 ..= 127` ([`quantize_weight_row`]).
//! * **x**, per row `i` (asymmetric, on every call): the row's range widened to contain 0,
//!   `[lo, hi]`, is mapped onto `0 ..= 255`: `sx[i] = (hi - lo) / 255`, the zero point
//!   `zx[i] = round(-lo / sx[i])`, `qx[i, p] = floor(x[i, p] / sx[i] + zx[i] + 0.5)` saturated
//!   to `0 ..= 255` ([`quantize_activation_row`]). One scale per row (a token) rather than per
//!   tensor: a token with large activations does not cost the others their resolution.
//! * **Product**: `acc[i, j] = sum_p qx[i, p] * qw[j, p]` in i32 (exact: at most 255 * 127 * k,
//!   under 2^31 for k < 66,000), then
//!   `out[i, j] = f32(acc[i, j] - zx[i] * cw[j]) * (sx[i] * sw[j])` with `cw[j] = sum_p qw[j, p]`
//!   (exact again), then the epilogue in f32. Every kernel computes the same integers, so the
//!   kernels agree with the reference bit for bit before the epilogue.
//! * **Per-sequence correction** (`linear_seqs`, which the forward uses): the rounding residual
//!   `R = W - sw * qw` is quantized the same way, and each sequence's rows get `R . mean(x)`
//!   (the mean of its rows, quantized as a row) added before the epilogue. Rounding W shifts
//!   every token of a sentence alike, and mean pooling keeps such a shift while token-by-token
//!   errors mostly average out (README, "--dtype int8", has the measured effect). The cost is
//!   one extra product with one row per sequence.
//! * A non-finite weight or input value makes its scale NaN, so the output turns NaN (which
//!   the forward reports) instead of the value being dropped silently.
//!
//! # Kernels
//!
//! Both read one weight layout (made by [`PackedWeight::with_int8`](super::PackedWeight::with_int8))
//! and one layout of quantized x (see `amx.rs`: 32-row blocks, 64 values of k per step):
//! * AMX-INT8 (`tdpbusd`: unsigned x bytes times signed W bytes), driven by `amx::linear`.
//! * AVX512-VNNI (`vpdpbusd`, [`vnni_block`]): the same blocks on 512-bit registers, for CPUs
//!   without AMX (Ice Lake, Zen 4 and later), up to 12 rows x 32 columns per register tile.
//! * AVX-VNNI (the VEX `vpdpbusd`, [`vnni256_block`]): on 256-bit registers, for CPUs with AVX2
//!   but no AVX-512 (Alder Lake and later client cores), up to 6 rows x 16 columns.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{apply_epilogue_row, lines_as_mut_u32, Epilogue, Line, NR};

/// Quads (groups of 4 values of k) of an int8 panel row: padded to a multiple of 16, the quads
/// one AMX B tile holds (an A tile holds the 64 values of k they cover).
pub(super) fn padded_quads(k: usize) -> usize {
    k.div_ceil(4).div_ceil(16) * 16
}

/// The int8 panels of one weight matrix (see `Storage::Int8` in `gemm.rs` for the layout).
pub(super) struct Int8Panels {
    /// `ceil(n / 32)` panels of `padded_quads(k)` rows of 32 words; word `c` of row `qq` of
    /// panel `p` = the four int8 `W[32p + c, 4qq .. 4qq + 4]` (byte `b` = k `4qq + b`), zero
    /// past k and past n; 64-byte aligned.
    pub(super) words: Vec<Line>,
    /// `[panels * 32]`: each feature's scale (`W ~ scale * q`), 0 past n
    pub(super) scale: Vec<f32>,
    /// `[panels * 32]`: each feature's sum of its int8 weights, 0 past n
    pub(super) colsum: Vec<i32>,
}

impl Int8Panels {
    /// Quantize the torch-layout `[n, k]` rows `w`; also returns each row's rounding residual
    /// `W - scale * q` (`[n, k]`).
    fn new(w: &[f32], n: usize, k: usize) -> (Int8Panels, Vec<f32>) {
        let (panels, k4p) = (n.div_ceil(NR), padded_quads(k));
        let mut words = vec![Line([0.0; 16]); panels * k4p * NR / 16];
        let mut scale = vec![0.0f32; panels * NR];
        let mut colsum = vec![0i32; panels * NR];
        let mut residual = vec![0.0f32; n * k];
        let dst = lines_as_mut_u32(&mut words);
        let mut q = vec![0i8; k];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let s = quantize_weight_row(row, &mut q);
            (scale[j], colsum[j]) = (s, q.iter().map(|&v| i32::from(v)).sum());
            for ((e, &v), &qv) in residual[j * k..(j + 1) * k].iter_mut().zip(row).zip(&q) {
                *e = v - s * f32::from(qv);
            }
            let (p, c) = (j / NR, j % NR);
            for (qq, quad) in q.chunks(4).enumerate() {
                let mut b = [0u8; 4];
                for (d, &v) in b.iter_mut().zip(quad) {
                    *d = v as u8;
                }
                dst[(p * k4p + qq) * NR + c] = u32::from_le_bytes(b);
            }
        }
        (
            Int8Panels {
                words,
                scale,
                colsum,
            },
            residual,
        )
    }
}

/// An int8 weight: the quantized matrix `Q` and its rounding residual `R = W - scale * Q`,
/// quantized the same way. The residual corrects what the rounding does to every token of a
/// sequence alike (see [`reference_linear_int8`]).
pub(super) struct Int8Weight {
    pub(super) main: Int8Panels,
    pub(super) residual: Int8Panels,
}

impl Int8Weight {
    /// Quantize the torch-layout `[n, k]` weight `w`.
    pub(super) fn new(w: &[f32], n: usize, k: usize) -> Int8Weight {
        let (main, residual) = Int8Panels::new(w, n, k);
        let (residual, _) = Int8Panels::new(&residual, n, k);
        Int8Weight { main, residual }
    }
}

/// The mean of each sequence's rows of `x` (`[m, k]`, sequence `s` = rows
/// `offsets[s] .. offsets[s + 1]`) into `dst` (`[sequences, k]`): summed in row order, then
/// divided by the row count (an empty sequence gives zeros).
pub(super) fn sequence_means(x: &[f32], k: usize, offsets: &[usize], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::SimdLevel::Avx512.is_available() {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(x: &[f32], k: usize, offsets: &[usize], dst: &mut [f32]) {
            sequence_means_generic(x, k, offsets, dst)
        }
        // SAFETY: AVX-512F was just detected.
        return unsafe { wide(x, k, offsets, dst) };
    }
    sequence_means_generic(x, k, offsets, dst)
}

/// The body of [`sequence_means`] (element-wise sums, the same on every ISA).
#[inline(always)]
fn sequence_means_generic(x: &[f32], k: usize, offsets: &[usize], dst: &mut [f32]) {
    for (s, w) in offsets.windows(2).enumerate() {
        let mean = &mut dst[s * k..(s + 1) * k];
        mean.fill(0.0);
        for row in x[w[0] * k..w[1] * k].chunks_exact(k.max(1)) {
            for (a, &v) in mean.iter_mut().zip(row) {
                *a += v;
            }
        }
        let count = (w[1] - w[0]).max(1) as f32;
        for a in mean.iter_mut() {
            *a /= count;
        }
    }
}

/// Scale and zero point of one quantized row of x: `x ~ scale * (q - zero)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct RowQuant {
    pub(super) scale: f32,
    pub(super) zero: i32,
}

/// Quantize one weight row (one output feature) symmetrically to `-127 ..= 127`; returns its
/// scale (`W ~ scale * q`; 0 for an all-zero row, NaN if a value is not finite).
pub(super) fn quantize_weight_row(row: &[f32], dst: &mut [i8]) -> f32 {
    debug_assert_eq!(row.len(), dst.len());
    if row.iter().any(|v| !v.is_finite()) {
        dst.fill(0);
        return f32::NAN;
    }
    let amax = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    if amax == 0.0 {
        dst.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    for (d, &v) in dst.iter_mut().zip(row) {
        // |v / scale| <= 127 (up to rounding, which the saturating cast absorbs)
        *d = (v / scale).round() as i8;
    }
    scale
}

/// Quantize one row of x to `0 ..= 255` with a zero point (see the module docs); `dst` gets
/// `x.len()` bytes. A row of zeros gets scale 0 and all-zero bytes; a non-finite value gives
/// scale NaN.
#[inline(always)]
pub(super) fn quantize_activation_row(x: &[f32], dst: &mut [u8]) -> RowQuant {
    debug_assert!(dst.len() >= x.len());
    // 16 running minima and maxima, so the loop vectorizes (NaN fails both comparisons and is
    // caught by `zeros`: v * 0 is NaN for a NaN or an infinity and 0 otherwise)
    let (mut lo, mut hi, mut zeros) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            zeros[l] += c[l] * 0.0;
        }
    }
    for &v in chunks.remainder() {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        zeros[0] += v * 0.0;
    }
    let lo = lo.iter().fold(0.0f32, |a, &v| if v < a { v } else { a });
    let hi = hi.iter().fold(0.0f32, |a, &v| if v > a { v } else { a });
    let finite = zeros.iter().all(|&z| z == 0.0);
    let scale = (hi - lo) / 255.0;
    if !finite || !scale.is_finite() {
        dst[..x.len()].fill(0);
        return RowQuant {
            scale: f32::NAN,
            zero: 0,
        };
    }
    if scale == 0.0 {
        dst[..x.len()].fill(0);
        return RowQuant {
            scale: 0.0,
            zero: 0,
        };
    }
    let inv = 1.0 / scale;
    // -lo * inv is in 0 ..= 255 (lo <= 0 <= hi)
    let zero = (-lo * inv + 0.5) as u8;
    let bias = f32::from(zero) + 0.5;
    for (d, &v) in dst.iter_mut().zip(x) {
        // the cast saturates (below 0 -> 0, above 255 -> 255) and truncates: floor for >= 0
        *d = (v * inv + bias) as u8;
    }
    RowQuant {
        scale,
        zero: i32::from(zero),
    }
}

/// `out[i, j] = f32(acc - zero_i * colsum_j) * (scale_i * wscale_j)` for one row of a block
/// (the dequantization every int8 kernel ends with; `acc` holds i32 bits in f32 slots, in
/// place), plus `fix[j]` where the row's sequence has a correction.
#[inline(always)]
pub(super) fn dequantize_row(
    row: &mut [f32],
    q: RowQuant,
    wscale: &[f32],
    colsum: &[i32],
    fix: Option<&[f32]>,
) {
    let dequantize = |v: f32, sw: f32, cw: i32| {
        let acc = v.to_bits() as i32;
        (acc.wrapping_sub(q.zero.wrapping_mul(cw))) as f32 * (q.scale * sw)
    };
    match fix {
        None => {
            for ((v, &sw), &cw) in row.iter_mut().zip(wscale).zip(colsum) {
                *v = dequantize(*v, sw, cw);
            }
        }
        Some(fix) => {
            for (((v, &sw), &cw), &f) in row.iter_mut().zip(wscale).zip(colsum).zip(fix) {
                *v = dequantize(*v, sw, cw) + f;
            }
        }
    }
}

/// Per-sequence corrections of an int8 product: `values` (`[sequences, n]`) is added to every
/// row of sequence `seq_of_row[i]`.
#[derive(Clone, Copy)]
pub(super) struct Corrections<'a> {
    pub(super) values: &'a [f32],
    pub(super) seq_of_row: &'a [u32],
    pub(super) n: usize,
}

impl<'a> Corrections<'a> {
    /// Row `i`'s correction, columns `j0 .. j0 + cols`.
    pub(super) fn row(self, i: usize, j0: usize, cols: usize) -> &'a [f32] {
        let s = self.seq_of_row[i] as usize;
        &self.values[s * self.n + j0..][..cols]
    }
}

/// [`dequantize_row`] over `rows` rows of a scratch block (row stride `lds`; output rows
/// `i0 ..`, columns `j0 ..`, for the corrections); compiled per instruction set by the
/// wrappers below so the loop vectorizes.
///
/// # Safety
/// `s` valid for `rows` rows of `wscale.len()` (<= lds) values, not accessed otherwise
/// meanwhile; `quant.len() >= rows`; `colsum.len() >= wscale.len()`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dequantize_block(
    s: *mut f32,
    lds: usize,
    rows: usize,
    quant: &[RowQuant],
    wscale: &[f32],
    colsum: &[i32],
    fix: Option<Corrections<'_>>,
    (i0, j0): (usize, usize),
) {
    for (r, &q) in quant[..rows].iter().enumerate() {
        // SAFETY: row r of the block, wscale.len() values (contract).
        let row = unsafe { std::slice::from_raw_parts_mut(s.add(r * lds), wscale.len()) };
        let fix = fix.map(|f| f.row(i0 + r, j0, wscale.len()));
        dequantize_row(row, q, wscale, colsum, fix);
    }
}

/// [`dequantize_block`] compiled for AVX-512.
///
/// # Safety
/// AVX-512F available, and the contract of [`dequantize_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dequantize_block_avx512(
    s: *mut f32,
    lds: usize,
    rows: usize,
    quant: &[RowQuant],
    wscale: &[f32],
    colsum: &[i32],
    fix: Option<Corrections<'_>>,
    at: (usize, usize),
) {
    // SAFETY: forwarded contract.
    unsafe { dequantize_block(s, lds, rows, quant, wscale, colsum, fix, at) }
}

/// [`dequantize_block`] compiled for AVX2 (the AVX-VNNI kernel's CPUs).
///
/// # Safety
/// AVX2 available, and the contract of [`dequantize_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dequantize_block_avx2(
    s: *mut f32,
    lds: usize,
    rows: usize,
    quant: &[RowQuant],
    wscale: &[f32],
    colsum: &[i32],
    fix: Option<Corrections<'_>>,
    at: (usize, usize),
) {
    // SAFETY: forwarded contract.
    unsafe { dequantize_block(s, lds, rows, quant, wscale, colsum, fix, at) }
}

/// Quantize the rows of `x` (`[rows, k]`) into a 32-row block of the tile layout: step `st`
/// (64 values of k) of row `r` is the 64 bytes at `(st * 32 + r) * 64`; values past k, and
/// rows past `rows`, are zero. `quant[r]` gets each row's scale and zero point.
pub(super) fn quantize_block(
    x: &[f32],
    rows: usize,
    k: usize,
    dst: &mut [u8],
    quant: &mut [RowQuant],
) {
    let kp = 4 * padded_quads(k);
    let block = super::amx::BLOCK;
    assert!(rows <= block && x.len() >= rows * k && dst.len() >= block * kp);
    let mut row = vec![0u8; kp];
    for r in 0..block {
        if r < rows {
            quant[r] = quantize_row_dispatch(&x[r * k..(r + 1) * k], &mut row[..k]);
            row[k..].fill(0);
        } else {
            quant[r] = RowQuant::default();
            row.fill(0);
        }
        for (st, chunk) in row.chunks_exact(64).enumerate() {
            dst[(st * block + r) * 64..][..64].copy_from_slice(chunk);
        }
    }
}

/// [`quantize_activation_row`] with AVX-512 where the CPU has it (every int8 kernel needs it).
pub(super) fn quantize_row_dispatch(x: &[f32], dst: &mut [u8]) -> RowQuant {
    #[cfg(target_arch = "x86_64")]
    if super::SimdLevel::Avx512.is_available() {
        // SAFETY: AVX-512F was just detected.
        return unsafe { quantize_row_avx512(x, dst) };
    }
    quantize_activation_row(x, dst)
}

/// [`quantize_activation_row`] on 16 lanes at a time, with the same operations per value (a
/// product then a sum, no fused multiply-add; the clamp to `0 ..= 255` and the truncation
/// give what the scalar saturating cast gives for finite values), so the results are equal.
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(x: &[f32], dst: &mut [u8]) -> RowQuant {
    assert!(dst.len() >= x.len());
    let n = x.len();
    let mask = |i: usize| -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    };
    let (mut lo, mut hi, mut zeros) = (
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
    );
    let mut i = 0;
    while i < n {
        // SAFETY: the masked load reads x[i .. min(i + 16, n)] only.
        let v = unsafe { _mm512_maskz_loadu_ps(mask(i), x.as_ptr().add(i)) };
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
        zeros = _mm512_add_ps(zeros, _mm512_mul_ps(v, _mm512_setzero_ps()));
        i += 16;
    }
    let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    // (a NaN or an infinity leaves a NaN among the zeros)
    let finite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(zeros, _mm512_setzero_ps()) == 0xffff;
    let scale = (hi - lo) / 255.0;
    if !finite || !scale.is_finite() || scale == 0.0 {
        // the rare rows: the scalar code says what they give
        return quantize_activation_row(x, dst);
    }
    let inv = 1.0 / scale;
    let zero = (-lo * inv + 0.5) as u8;
    let bias = _mm512_set1_ps(f32::from(zero) + 0.5);
    let (vinv, top) = (_mm512_set1_ps(inv), _mm512_set1_ps(255.0));
    let mut i = 0;
    while i < n {
        let m = mask(i);
        // SAFETY: masked load of x[i .. min(i + 16, n)], masked store of as many bytes into
        // dst (at least n long).
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
            let q = _mm512_add_ps(_mm512_mul_ps(v, vinv), bias);
            let q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), top);
            _mm512_mask_cvtepi32_storeu_epi8(
                dst.as_mut_ptr().add(i).cast(),
                m,
                _mm512_cvttps_epi32(q),
            );
        }
        i += 16;
    }
    RowQuant {
        scale,
        zero: i32::from(zero),
    }
}

pub(super) use crate::backend::cpu::simd::{avx_vnni_detected, vnni_detected};

/// Which kernel multiplies an int8 weight (all compute the same integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Int8Kernel {
    /// AMX-INT8 tiles (`tdpbusd`, see `amx.rs`).
    Amx,
    /// AVX512-VNNI, [`vnni_block`].
    Vnni512,
    /// AVX-VNNI (256-bit), [`vnni256_block`].
    Vnni256,
}

/// Rows of x one VNNI register tile covers (24 accumulators, 2 W registers, 1 broadcast).
#[cfg(target_arch = "x86_64")]
const VNNI_MR: usize = 12;

/// One block on AVX512-VNNI: `c[r, j] = sum_p a[r, p] * B[p, j]` (i32, stored as bits in the
/// f32 slots of `c`, row stride 32) for the first `rows` rows of a 32-row block of quantized x
/// in the tile layout (`steps` steps of 2 KB) against an int8 panel of `16 * steps` quad rows
/// (128 bytes each). Rows past `rows` are neither read nor written.
///
/// # Safety
/// AVX-512F and AVX512-VNNI available; `a` readable for `steps * 2048` bytes, `b` for
/// `steps * 16 * 32` words; `c` writable for `rows <= 32` rows of 32 values and not accessed
/// otherwise meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn vnni_block(
    a: *const u8,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    rows: usize,
) {
    let mut r0 = 0;
    while r0 < rows {
        let mr = VNNI_MR.min(rows - r0);
        // SAFETY: rows r0 .. r0 + mr of the block (contract); each row's bytes start 64 bytes
        // after the previous row's within a step, and its output row 32 values after.
        unsafe {
            by_mr!(
                mr,
                vnni_tile,
                (a.add(r0 * 64), b, steps, c.add(r0 * 32)),
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
            )
        };
        r0 += mr;
    }
}

/// Rows of x one AVX-VNNI register tile covers (12 accumulators of 16 columns, 2 W registers,
/// 1 broadcast: 15 of the 16 registers).
#[cfg(target_arch = "x86_64")]
const VNNI256_MR: usize = 6;

/// [`vnni_block`] on AVX-VNNI (256-bit registers, for CPUs without AVX-512): the panel's 32
/// columns as two halves of 16, each in register tiles of up to 6 rows.
///
/// # Safety
/// AVX2 and AVX-VNNI available; otherwise as [`vnni_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn vnni256_block(
    a: *const u8,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    rows: usize,
) {
    for half in 0..2 {
        let mut r0 = 0;
        while r0 < rows {
            let mr = VNNI256_MR.min(rows - r0);
            // SAFETY: rows r0 .. r0 + mr of the block and columns 16 * half .. + 16 of the
            // panel and of c (contract), as in `vnni_block`.
            unsafe {
                by_mr!(
                    mr,
                    vnni256_tile,
                    (
                        a.add(r0 * 64),
                        b.add(16 * half),
                        steps,
                        c.add(r0 * 32 + 16 * half)
                    ),
                    [1, 2, 3, 4, 5, 6]
                )
            };
            r0 += mr;
        }
    }
}

/// `MR` rows x 16 columns of [`vnni256_block`]: `b` and `c` point at the half's first column
/// (rows of 32 words / values).
///
/// # Safety
/// As [`vnni256_block`] for rows `0 .. MR` at `a` and `c`, 16 columns at `b` and `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
unsafe fn vnni256_tile<const MR: usize>(a: *const u8, b: *const u32, steps: usize, c: *mut f32) {
    let mut lo = [_mm256_setzero_si256(); MR];
    let mut hi = [_mm256_setzero_si256(); MR];
    // SAFETY: as in `vnni_tile`, for 16 of the 32 words of each W row.
    unsafe {
        for st in 0..steps {
            let (ast, bst) = (a.add(st * 2048), b.add(st * 16 * 32));
            for qq in 0..16 {
                let b0 = _mm256_loadu_si256(bst.add(qq * 32).cast());
                let b1 = _mm256_loadu_si256(bst.add(qq * 32 + 8).cast());
                for r in 0..MR {
                    let word = ast.add(r * 64 + 4 * qq).cast::<i32>().read_unaligned();
                    let av = _mm256_set1_epi32(word);
                    lo[r] = _mm256_dpbusd_avx_epi32(lo[r], av, b0);
                    hi[r] = _mm256_dpbusd_avx_epi32(hi[r], av, b1);
                }
            }
        }
        for r in 0..MR {
            _mm256_storeu_si256(c.add(r * 32).cast(), lo[r]);
            _mm256_storeu_si256(c.add(r * 32 + 8).cast(), hi[r]);
        }
    }
}

/// `MR` rows x 32 columns of [`vnni_block`].
///
/// # Safety
/// As [`vnni_block`] for rows `0 .. MR` at `a` and `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn vnni_tile<const MR: usize>(a: *const u8, b: *const u32, steps: usize, c: *mut f32) {
    let mut lo = [_mm512_setzero_si512(); MR];
    let mut hi = [_mm512_setzero_si512(); MR];
    // SAFETY: step st, quad qq reads the 4 bytes of row r at `a + st * 2048 + r * 64 + 4 * qq`
    // and the 32 words of W at `b + (16 * st + qq) * 32`: inside both operands for
    // st < steps, qq < 16, r < MR <= 32 (contract).
    unsafe {
        for st in 0..steps {
            let (ast, bst) = (a.add(st * 2048), b.add(st * 16 * 32));
            for qq in 0..16 {
                let b0 = _mm512_loadu_si512(bst.add(qq * 32).cast());
                let b1 = _mm512_loadu_si512(bst.add(qq * 32 + 16).cast());
                for r in 0..MR {
                    let word = ast.add(r * 64 + 4 * qq).cast::<i32>().read_unaligned();
                    let av = _mm512_set1_epi32(word);
                    lo[r] = _mm512_dpbusd_epi32(lo[r], av, b0);
                    hi[r] = _mm512_dpbusd_epi32(hi[r], av, b1);
                }
            }
        }
        for r in 0..MR {
            _mm512_storeu_si512(c.add(r * 32).cast(), lo[r]);
            _mm512_storeu_si512(c.add(r * 32 + 16).cast(), hi[r]);
        }
    }
}

/// The int8 product as defined in the module docs, in plain loops: weights and rows quantized
/// by the same functions the kernels use, `sum_p (qx - zx) * qw` summed directly (not through
/// the column-sum correction the kernels use), then the dequantization and the epilogue. `w`
/// is the torch-layout `[n, k]` weight. The reference for the int8 kernels' tests.
///
/// With `offsets` (sequence `s` = rows `offsets[s] .. offsets[s + 1]`, the last offset `m`),
/// each sequence's rows also get `R . mean(x)` added before the epilogue: the rounding
/// residual `R = W - scale * Q` (itself quantized per feature) times the mean of the
/// sequence's rows (quantized as a row of x). Rounding W moves every token of a sequence by
/// `-R . x`; its shared part `-R . mean(x)` would survive mean pooling, token by token
/// deviations mostly average out.
#[allow(clippy::too_many_arguments)]
pub fn reference_linear_int8(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    ep: Epilogue<'_>,
    out: &mut [f32],
    offsets: Option<&[usize]>,
) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    let quantize = |w: &[f32]| {
        let mut q = vec![0i8; n * k];
        let s: Vec<f32> = (0..n)
            .map(|j| quantize_weight_row(&w[j * k..(j + 1) * k], &mut q[j * k..(j + 1) * k]))
            .collect();
        (q, s)
    };
    let (qw, sw) = quantize(w);
    let mut residual = vec![0.0f32; n * k];
    for j in 0..n {
        for p in 0..k {
            residual[j * k + p] = w[j * k + p] - sw[j] * f32::from(qw[j * k + p]);
        }
    }
    let (qr, sr) = quantize(&residual);
    // the product of quantized rows `x` (`[rows, k]`) and a quantized weight, dequantized
    let product = |x: &[f32], rows: usize, q: &[i8], s: &[f32], out: &mut [f32]| {
        let mut qx = vec![0u8; k];
        for i in 0..rows {
            let rq = quantize_activation_row(&x[i * k..(i + 1) * k], &mut qx);
            for j in 0..n {
                let mut acc = 0i32;
                for p in 0..k {
                    acc += (i32::from(qx[p]) - rq.zero) * i32::from(q[j * k + p]);
                }
                out[i * n + j] = acc as f32 * (rq.scale * s[j]);
            }
        }
    };
    product(x, m, &qw, &sw, out);
    if let Some(offsets) = offsets {
        let seqs = offsets.len().saturating_sub(1);
        let mut means = vec![0.0f32; seqs * k];
        sequence_means(x, k, offsets, &mut means);
        let mut fix = vec![0.0f32; seqs * n];
        product(&means, seqs, &qr, &sr, &mut fix);
        for (s, o) in offsets.windows(2).enumerate() {
            for i in o[0]..o[1] {
                for j in 0..n {
                    out[i * n + j] += fix[s * n + j];
                }
            }
        }
    }
    for i in 0..m {
        apply_epilogue_row::<false>(ep, &mut out[i * n..(i + 1) * n], i, 0, n);
    }
}
