//! The x86-64 kernels of the attention: AVX-512 and AVX2 tile products, the AVX-512 key
//! transpose and p2c scatter. Each is called from its safe wrapper in the parent module, which
//! checks the operand extents and the detected instruction set first.

use super::{Cols, Mat};
use std::arch::x86_64::*;

/// Lanes `l < valid` of a 16-lane mask.
#[inline(always)]
fn mask16(valid: isize) -> u16 {
    if valid >= 16 {
        0xFFFF
    } else if valid <= 0 {
        0
    } else {
        (1u16 << valid) - 1
    }
}

/// See `tile_gemm`. For `Cols::At`, the 32-column blocks of `b` are the outer loop, so each
/// (d rows of 32 columns) stays in L1 while every group of rows uses it, and the rows go in
/// groups of 8, then 4, then single rows (no padded rows computed); sliding windows
/// (`Cols::SlidingPer4`) move per `R` = 4 rows, the row groups outermost.
/// SAFETY (caller): avx512f available; `a` covers `nrows` rows of at least `d` values, `b`
/// covers `d` rows, `out` holds `(nrows - 1) * ldo + w` values.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_avx512<const R: usize>(
    nrows: usize,
    d: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    cols: Cols<'_>,
    w: usize,
    out: &mut [f32],
    ldo: usize,
) {
    debug_assert!(R == 8 || R == 4, "row groups of 4 or 8");
    debug_assert!(
        R == 4 || matches!(cols, Cols::At(_)),
        "sliding windows move per 4 rows"
    );
    let op = out.as_mut_ptr();
    match cols {
        Cols::At(o) => {
            let mut c0 = 0;
            while c0 < w {
                let mut i = 0;
                while i < nrows {
                    // SAFETY: forwarded contract; rows i .. i + group are inside a and out.
                    i += unsafe {
                        match nrows - i {
                            8.. => row_group::<8>(i, 8, d, a, b, o, c0, w, op, ldo),
                            4.. => row_group::<4>(i, 4, d, a, b, o, c0, w, op, ldo),
                            _ => row_group::<1>(i, 1, d, a, b, o, c0, w, op, ldo),
                        }
                    };
                }
                c0 += 32;
            }
        }
        Cols::SlidingPer4(_) => {
            let mut i = 0;
            while i < nrows {
                let rn = (nrows - i).min(R);
                let o = cols.first(i);
                let mut c0 = 0;
                while c0 < w {
                    // SAFETY: forwarded contract; rows i .. i + rn are inside a and out.
                    unsafe { row_group::<R>(i, rn, d, a, b, o, c0, w, op, ldo) };
                    c0 += 32;
                }
                i += R;
            }
        }
    }
}

/// Rows `i .. i + rn` (`rn <= R`; rows past them repeat the last real row, computed and never
/// stored) and columns `c0 .. c0 + 32` of `tile_avx512`'s product, `b` read from column `o +
/// c0`; returns `rn`.
/// SAFETY (caller): as `tile_avx512`, for these rows.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn row_group<const R: usize>(
    i: usize,
    rn: usize,
    d: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    o: usize,
    c0: usize,
    w: usize,
    op: *mut f32,
    ldo: usize,
) -> usize {
    // SAFETY: caller contract: the row pointers stay inside a; the b columns read are masked
    // to b.len; the stores to the rows' w columns are inside out.
    unsafe {
        let ap = a.data.as_ptr();
        let ar: [*const f32; R] = std::array::from_fn(|k| ap.add((i + k.min(rn - 1)) * a.ld));
        // columns valid in b (past b.len read as 0) and wanted in out
        let vb = b.len as isize - (o + c0) as isize;
        let vw = (w - c0) as isize;
        let lm0 = mask16(vb.min(vw));
        let lm1 = mask16(vb.min(vw) - 16);
        let base = b.data.as_ptr().add(o + c0);
        // (plain loads where all 32 columns are valid: masked loads are markedly slower on
        // some CPUs, e.g. AMD Zen 5)
        let (lo, hi) = if lm0 & lm1 == 0xFFFF {
            rows_x32::<R, false>(d, &ar, base, b.ld, 0, 0)
        } else {
            rows_x32::<R, true>(d, &ar, base, b.ld, lm0, lm1)
        };
        let sm0 = mask16(vw);
        let sm1 = mask16(vw - 16);
        for k in 0..rn {
            let dst = op.add((i + k) * ldo + c0);
            _mm512_mask_storeu_ps(dst, sm0, lo[k]);
            _mm512_mask_storeu_ps(dst.add(16), sm1, hi[k]);
        }
    }
    rn
}

/// See `super::transpose` (`d` a multiple of 16): per block of 16 keys, each 16 x 16 block
/// of (keys, components) is loaded as 16 rows, transposed with three rounds of shuffles
/// (pairs of floats, pairs of pairs, then 128-bit lanes in two steps) and stored as 16
/// rows of the operand; keys past `n` read as zero and are not stored.
///
/// SAFETY (caller): avx512f available; `src` holds `(n - 1) * stride + d` values, `dst`
/// `(d - 1) * ld + n`; `d % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_avx512(
    src: &[f32],
    stride: usize,
    n: usize,
    d: usize,
    dst: &mut [f32],
    ld: usize,
) {
    debug_assert!(d.is_multiple_of(16));
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for j0 in (0..n).step_by(16) {
        let keys = (n - j0).min(16);
        let store = mask16(keys as isize);
        for t0 in (0..d).step_by(16) {
            // SAFETY: row j0 + r < n of src, values t0 .. t0 + 16 <= d: inside src (caller
            // contract); rows past n are not read.
            let r: [__m512; 16] = std::array::from_fn(|r| unsafe {
                if r < keys {
                    _mm512_loadu_ps(sp.add((j0 + r) * stride + t0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            let cols = transpose16(r);
            for (c, v) in cols.iter().enumerate() {
                // SAFETY: row t0 + c < d of dst, columns j0 .. j0 + keys <= n (mask):
                // inside dst (caller contract).
                unsafe { _mm512_mask_storeu_ps(dp.add((t0 + c) * ld + j0), store, *v) };
            }
        }
    }
}

/// See `super::add_transposed`.
///
/// SAFETY (caller): avx512f available; `shift(j) + rows <= pw` for `j < n`, `c` holds
/// `n * pw` values and `s` `(rows - 1) * lds + n`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn add_transposed_avx512(
    c: &[f32],
    pw: usize,
    shift: &dyn Fn(usize) -> usize,
    n: usize,
    rows: usize,
    s: &mut [f32],
    lds: usize,
) {
    let (cp, sp) = (c.as_ptr(), s.as_mut_ptr());
    for j0 in (0..n).step_by(16) {
        let keys = (n - j0).min(16);
        let key_mask = mask16(keys as isize);
        let starts: [usize; 16] = std::array::from_fn(|k| {
            if k < keys {
                (j0 + k) * pw + shift(j0 + k)
            } else {
                0
            }
        });
        for i0 in (0..rows).step_by(16) {
            let valid = (rows - i0).min(16);
            // SAFETY: key j0 + k < n, its values i0 .. i0 + valid <= rows past its shift:
            // inside c (caller contract; masked-off lanes are not read).
            let r: [__m512; 16] = std::array::from_fn(|k| unsafe {
                let at = cp.add(starts[k] + i0);
                match (k < keys, valid == 16) {
                    (false, _) => _mm512_setzero_ps(),
                    (true, true) => _mm512_loadu_ps(at),
                    (true, false) => _mm512_maskz_loadu_ps(mask16(valid as isize), at),
                }
            });
            let cols = transpose16(r);
            for (i, v) in cols.iter().enumerate().take(valid) {
                // SAFETY: score row i0 + i < rows, columns j0 .. j0 + keys <= n: inside s
                // (caller contract; masked-off lanes are not accessed).
                unsafe {
                    let at = sp.add((i0 + i) * lds + j0);
                    if keys == 16 {
                        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *v));
                    } else {
                        let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(key_mask, at), *v);
                        _mm512_mask_storeu_ps(at, key_mask, sum);
                    }
                }
            }
        }
    }
}

/// The 16 x 16 transpose: `out[c][r] = rows[r][c]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(rows: [__m512; 16]) -> [__m512; 16] {
    // pairs: t[2k] = (r[2k], r[2k+1]) interleaved from the low pair of each 128-bit lane,
    // t[2k+1] from the high pair
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i / 2 * 2], rows[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // quads: u[4g + c] holds column c (+4, +8, +12 in the other lanes) of rows 4g .. 4g + 4
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * g + c / 2]),
            _mm512_castps_pd(t[4 * g + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // lanes: for column c, gather lane l (column c + 4l) of the four row groups
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[c + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[c + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

/// `R` rows x 32 columns of a tile: `sum_t a_k[t] * b[t][0 .. 32]` for the rows at `ar`, `b`
/// rows `ld` apart from `base`; with `MASKED`, columns outside `lm0` / `lm1` (first / second
/// 16) read as zero.
///
/// SAFETY (caller): avx512f available; every `ar[k] .. + d` readable; `base + t * ld` readable
/// for the unmasked columns, for every `t < d`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn rows_x32<const R: usize, const MASKED: bool>(
    d: usize,
    ar: &[*const f32; R],
    base: *const f32,
    ld: usize,
    lm0: u16,
    lm1: u16,
) -> ([__m512; R], [__m512; R]) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for t in 0..d {
        // SAFETY: caller contract.
        unsafe {
            let bt = base.add(t * ld);
            let (b0, b1) = if MASKED {
                (
                    _mm512_maskz_loadu_ps(lm0, bt),
                    _mm512_maskz_loadu_ps(lm1, bt.add(16)),
                )
            } else {
                (_mm512_loadu_ps(bt), _mm512_loadu_ps(bt.add(16)))
            };
            for k in 0..R {
                let av = _mm512_set1_ps(*ar[k].add(t));
                lo[k] = _mm512_fmadd_ps(av, b0, lo[k]);
                hi[k] = _mm512_fmadd_ps(av, b1, hi[k]);
            }
        }
    }
    (lo, hi)
}

/// Lanes `l < valid` of an 8-lane AVX2 mask.
#[inline(always)]
unsafe fn mask8(valid: isize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.clamp(0, 8) as i32), idx)
}

/// See `tile_gemm`. SAFETY (caller): avx2 and fma available; extents as for `tile_avx512`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_avx2(
    nrows: usize,
    d: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    cols: Cols<'_>,
    w: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let ap = a.data.as_ptr();
    let bp = b.data.as_ptr();
    let op = out.as_mut_ptr();
    let mut i = 0;
    while i < nrows {
        let rn = (nrows - i).min(4);
        let o = cols.first(i);
        let ar: [*const f32; 4] = std::array::from_fn(|k| ap.add((i + k.min(rn - 1)) * a.ld));
        let mut c0 = 0;
        while c0 < w {
            let vb = b.len as isize - (o + c0) as isize;
            let vw = (w - c0) as isize;
            let lm0 = mask8(vb.min(vw));
            let lm1 = mask8(vb.min(vw) - 8);
            let mut acc = [_mm256_setzero_ps(); 8];
            let base = bp.add(o + c0);
            for t in 0..d {
                let bt = base.add(t * b.ld);
                let b0 = _mm256_maskload_ps(bt, lm0);
                let b1 = _mm256_maskload_ps(bt.add(8), lm1);
                for k in 0..4 {
                    let av = _mm256_set1_ps(*ar[k].add(t));
                    acc[2 * k] = _mm256_fmadd_ps(av, b0, acc[2 * k]);
                    acc[2 * k + 1] = _mm256_fmadd_ps(av, b1, acc[2 * k + 1]);
                }
            }
            let sm0 = mask8(vw);
            let sm1 = mask8(vw - 8);
            for k in 0..rn {
                let dst = op.add((i + k) * ldo + c0);
                _mm256_maskstore_ps(dst, sm0, acc[2 * k]);
                _mm256_maskstore_ps(dst.add(8), sm1, acc[2 * k + 1]);
            }
            c0 += 16;
        }
        i += 4;
    }
}

/// See `tiles::value_panels` (extents checked there): per panel of 32 components and pair of
/// keys, each half of 16 components of the two keys rounded to bf16 together
/// (`vcvtne2ps2bf16`: the first key's in lanes 0-15, the second's in 16-31) and interleaved
/// into words (lane `2c` = first key's component `c`, `2c + 1` = second key's).
///
/// SAFETY (caller): avx512f, avx512bw and avx512_bf16 available; `v` holds `n` rows of `d`
/// values `ld` apart, `dst` the `d / 32` panels of `ceil(n / 32) * 16` rows of 32 words.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn value_panels_avx512(
    v: &[f32],
    ld: usize,
    n: usize,
    d: usize,
    dst: &mut [u32],
) {
    let pairs = n.div_ceil(32) * 16;
    let order: [i16; 32] = std::array::from_fn(|l| (l / 2 + 16 * (l % 2)) as i16);
    // SAFETY: 64 bytes read from a 64-byte array.
    let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
    let (vp, dp) = (v.as_ptr(), dst.as_mut_ptr());
    // SAFETY (every access below): key rows `j < n` at `j * ld + col`, `col + 16 <= d`, are
    // inside `v`; words `(p * pairs + kp) * 32 + 16 * half .. + 16` inside `dst`.
    let row = |j: usize, col: usize| unsafe {
        if j < n {
            _mm512_loadu_ps(vp.add(j * ld + col))
        } else {
            _mm512_setzero_ps()
        }
    };
    for p in 0..d / 32 {
        for kp in 0..pairs {
            for half in 0..2 {
                let col = 32 * p + 16 * half;
                let both = _mm512_cvtne2ps_pbh(row(2 * kp + 1, col), row(2 * kp, col));
                // SAFETY: both are 64-byte vectors; any bits are valid in either.
                let both = unsafe { std::mem::transmute::<__m512bh, __m512i>(both) };
                let words = _mm512_permutexvar_epi16(order, both);
                unsafe {
                    _mm512_storeu_si512(dp.add((p * pairs + kp) * 32 + 16 * half).cast(), words)
                };
            }
        }
    }
}

/// 16 values `src[pos[l]]` (lanes in `mask`; others 0), `lo` and `hi` the smallest and largest
/// position in the mask: two loads and a two-register permute when they lie within 32 values
/// of each other (the relative-position table moves by at most a row per offset, so 16
/// neighbouring offsets almost always do), a gather otherwise.
///
/// SAFETY (caller): avx512f available; every masked `pos[l]` < `src.len()`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn lookup16(src: &[f32], pos: __m512i, mask: __mmask16, lo: usize, hi: usize) -> __m512 {
    // SAFETY: caller contract; the two loads read `src[lo .. lo + 32]`, checked inside src.
    unsafe {
        if hi < lo + 32 && lo + 32 <= src.len() {
            let a = _mm512_loadu_ps(src.as_ptr().add(lo));
            let b = _mm512_loadu_ps(src.as_ptr().add(lo + 16));
            let at = _mm512_sub_epi32(pos, _mm512_set1_epi32(lo as i32));
            _mm512_maskz_permutex2var_ps(mask, a, at, b)
        } else {
            _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, pos, src.as_ptr())
        }
    }
}

/// See `tiles::add_positions_reversed`: `dst[k] += src[at[len - 1 - k] - base]`.
///
/// SAFETY (caller): avx512f available; `at.len() >= dst.len()`, every `at[k] - base` in
/// `0 .. src.len()` (checked by the caller).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_positions_reversed_avx512(
    dst: &mut [f32],
    src: &[f32],
    at: &[u32],
    base: usize,
) {
    let (n, len) = (dst.len(), at.len());
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut j0 = 0;
    while j0 < n {
        let m = (n - j0).min(16);
        let mask = mask16(m as isize);
        // entries len - j0 - m .. len - j0 in address order: lane l is key j0 + m - 1 - l
        let first = len - j0 - m;
        // SAFETY: `at[first .. first + m]` is inside `at`; masked-off lanes are not read.
        let raw = unsafe { _mm512_maskz_loadu_epi32(mask, at.as_ptr().add(first).cast()) };
        let rev = _mm512_sub_epi32(_mm512_set1_epi32(m as i32 - 1), iota);
        let pos = _mm512_sub_epi32(
            _mm512_maskz_permutexvar_epi32(mask, rev, raw),
            _mm512_set1_epi32(base as i32),
        );
        let (lo, hi) = (at[first] as usize - base, at[first + m - 1] as usize - base);
        // SAFETY: positions in range (caller contract); `dst[j0 .. j0 + m]` is inside dst.
        unsafe {
            let v = lookup16(src, pos, mask, lo, hi);
            let d = dst.as_mut_ptr().add(j0);
            let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), v);
            _mm512_mask_storeu_ps(d, mask, sum);
        }
        j0 += 16;
    }
}

/// See `tiles::gather_positions`: `row[k] = row[at[k] - base]` for `k < at.len() <= 32`, every
/// value read before any is written.
///
/// SAFETY (caller): avx512f available; `at.len() <= 32`, every `at[k] - base` in
/// `0 .. row.len()` (checked by the caller).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gather_positions_avx512(row: &mut [f32], at: &[u32], base: usize) {
    let n = at.len();
    let base_v = _mm512_set1_epi32(base as i32);
    let mut out = [_mm512_setzero_ps(); 2];
    for (c, o) in out.iter_mut().enumerate() {
        let i0 = 16 * c;
        if i0 >= n {
            break;
        }
        let m = (n - i0).min(16);
        let mask = mask16(m as isize);
        // SAFETY: `at[i0 .. i0 + m]` is inside `at`; positions in range (caller contract).
        unsafe {
            let raw = _mm512_maskz_loadu_epi32(mask, at.as_ptr().add(i0).cast());
            let pos = _mm512_sub_epi32(raw, base_v);
            let (lo, hi) = (at[i0] as usize - base, at[i0 + m - 1] as usize - base);
            *o = lookup16(row, pos, mask, lo, hi);
        }
    }
    for (c, o) in out.iter().enumerate() {
        let i0 = 16 * c;
        if i0 >= n {
            break;
        }
        // SAFETY: `row[i0 .. i0 + m]`, m = min(16, n - i0), is inside row (n <= row.len()).
        unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr().add(i0), mask16((n - i0) as isize), *o) };
    }
}
