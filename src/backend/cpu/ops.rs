//! Element-wise and row-wise ops of the forward, in plain fp32.

/// Exact (erf) GELU, as `hidden_act: "gelu"` in transformers: `x/2 * (1 + erf(x/sqrt(2)))`.
///
/// Branch-free so loops over it vectorize: `1 + erf(z)` is computed as `erfc(|z|)` (z < 0) or
/// `2 - erfc(|z|)`, with the Chebyshev-fitted erfc of Numerical Recipes (fractional error
/// < 1.2e-7 everywhere, so the negative tail keeps its relative accuracy) and [`exp`] below.
/// Tested against an f64 erf: max |error| ~1e-7 relative to max(|x|, 1).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<false>(x)
}

/// [`gelu`]; with `FMA` the polynomials use fused multiply-adds (call it only from code
/// compiled with the `fma` target feature: elsewhere `mul_add` is a libm call). Without `FMA` it
/// is bit-identical to [`gelu`].
#[inline(always)]
pub fn gelu_with<const FMA: bool>(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = horner::<FMA>(t, &ERFC);
    let erfc = t * exp_with::<FMA>(poly - z * z);
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

/// Numerical Recipes' Chebyshev fit: `erfc(z) = t exp(-z^2 + poly(t))`, `t = 1 / (1 + z/2)`.
const ERFC: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// Values per [`gelu_lanes`] call: four 16-lane vectors.
pub const GELU_LANES: usize = 64;

/// [`gelu_with`] on [`GELU_LANES`] values, each step applied to all of them before the next:
/// every step is a short loop the compiler turns into independent vector instructions, so one
/// GELU's long dependency chain (a division, two polynomials, `exp`) overlaps with three others
/// instead of running alone (a plain loop over `gelu_with` waits on the chain: ~1.6 ns per
/// value with AVX-512). The same operations per value in the same order: bit-identical to
/// [`gelu_with`].
#[inline(always)]
/// `N` is [`GELU_LANES`] in the main loops; 16 (one vector) for the short tails of rows whose
/// width is not a multiple of it.
pub fn gelu_lanes<const FMA: bool, const N: usize>(x: &mut [f32; N]) {
    let z: [f32; N] = std::array::from_fn(|i| (x[i] * std::f32::consts::FRAC_1_SQRT_2).abs());
    let t: [f32; N] = std::array::from_fn(|i| 1.0 / (1.0 + 0.5 * z[i]));
    let mut e = horner_lanes::<FMA, N>(&t, &ERFC);
    for i in 0..N {
        e[i] -= z[i] * z[i];
    }
    exp_lanes::<FMA, N>(&mut e);
    for i in 0..N {
        let erfc = t[i] * e[i];
        let one_plus_erf = if x[i] >= 0.0 { 2.0 - erfc } else { erfc };
        x[i] = 0.5 * x[i] * one_plus_erf;
    }
}

/// [`horner`] on N values, one coefficient step across all of them at a time (see
/// [`gelu_lanes`]); bit-identical to it.
#[inline(always)]
fn horner_lanes<const FMA: bool, const N: usize>(x: &[f32; N], c: &[f32]) -> [f32; N] {
    let mut acc = [c[0]; N];
    for &ci in &c[1..] {
        for (a, &xi) in acc.iter_mut().zip(x) {
            *a = if FMA { a.mul_add(xi, ci) } else { *a * xi + ci };
        }
    }
    acc
}

/// `c[0] x^(n-1) + ... + c[n-1]`, innermost first.
#[inline(always)]
fn horner<const FMA: bool>(x: f32, c: &[f32]) -> f32 {
    let mut acc = c[0];
    for &ci in &c[1..] {
        acc = if FMA {
            acc.mul_add(x, ci)
        } else {
            acc * x + ci
        };
    }
    acc
}

/// `e^x` in f32, branch-free (vectorizes): Cody-Waite reduction `x = k ln2 + r`, a degree-7
/// Taylor polynomial on |r| <= ln2/2 (truncation < 4e-9 relative), and `2^k` built in the
/// exponent bits. Inputs are clamped to the normal range: below -87 the result is ~1e-38
/// instead of 0, above 88 it saturates near f32::MAX.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`], with fused multiply-adds in the polynomial when `FMA` (see [`gelu_with`]).
#[inline(always)]
pub fn exp_with<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let kr = x * LOG2E + ROUND;
    let k = kr - ROUND;
    // the integer k sits in the low mantissa bits of kr: no float->int conversion (a saturating
    // `as i32` would not vectorize)
    let ki = kr.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = horner::<FMA>(r, &TAYLOR);
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    p * scale
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 * 2^23: adding it rounds to an integer
const ROUND: f32 = 12_582_912.0;
const TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// [`exp_with`] on N values, step by step (see [`gelu_lanes`]); bit-identical to it.
#[inline(always)]
fn exp_lanes<const FMA: bool, const N: usize>(v: &mut [f32; N]) {
    let x: [f32; N] = std::array::from_fn(|i| v[i].clamp(-87.0, 88.0));
    let kr: [f32; N] = std::array::from_fn(|i| x[i] * LOG2E + ROUND);
    let r: [f32; N] = std::array::from_fn(|i| {
        let k = kr[i] - ROUND;
        x[i] - k * LN2_HI - k * LN2_LO
    });
    let p = horner_lanes::<FMA, N>(&r, &TAYLOR);
    for i in 0..N {
        let ki = kr[i].to_bits() as i32 - ROUND.to_bits() as i32;
        v[i] = p[i] * f32::from_bits(((ki + 127) as u32) << 23);
    }
}

use rayon::prelude::*;

use crate::config::Activation;

/// Rows processed per rayon task in the row-wise ops: enough work to amortize scheduling.
const ROWS_PER_TASK: usize = 32;

/// In-place LayerNorm over each row of `x` ([rows, n]), statistics in f64.
pub fn layer_norm_rows(x: &mut [f32], n: usize, w: &[f32], b: &[f32], eps: f32) {
    assert!(w.len() == n && b.len() == n && x.len().is_multiple_of(n));
    #[cfg(target_arch = "x86_64")]
    let wide = super::simd::simd_level() == super::simd::SimdLevel::Avx512;
    x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|chunk| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: the dispatched level is AVX-512, so the CPU has AVX-512F.
            unsafe { layer_norm_chunk_avx512(chunk, n, w, b, eps) };
            return;
        }
        layer_norm_chunk(chunk, n, w, b, eps);
    });
}

#[inline(always)]
fn layer_norm_chunk(chunk: &mut [f32], n: usize, w: &[f32], b: &[f32], eps: f32) {
    for row in chunk.chunks_exact_mut(n) {
        layer_norm(row, w, b, eps);
    }
}

/// [`layer_norm_chunk`] compiled for AVX-512: the 8 f64 lanes of the sums become one zmm
/// register. The same operations in the same order (no contraction into FMAs), so the results
/// are bit-identical to the baseline build's.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn layer_norm_chunk_avx512(chunk: &mut [f32], n: usize, w: &[f32], b: &[f32], eps: f32) {
    layer_norm_chunk(chunk, n, w, b, eps)
}

/// LayerNorm of one row, as torch computes it (biased variance, eps inside the sqrt), with
/// the statistics in f64.
#[inline(always)]
pub fn layer_norm(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f64;
    let mean = sum_f64(row, |v| v) / n;
    let var = sum_f64(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + bb;
    }
}

/// `sum(f(v as f64))` over `row`, in 8 independent f64 lanes (vectorizable, no serial add
/// chain), then the lanes in order.
#[inline(always)]
fn sum_f64(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f(v as f64);
    }
    acc.iter().sum()
}

/// The conv block of conv models, per packed sequence: `out = act(conv1d(x))` with
/// `padding = (k-1)/2` and zeros outside each sequence (what transformers sees: padded positions
/// of the embedding output are zero).
///
/// `x`, `out`: `[T, H]`; `weight`: `[H, H/groups, k]` (torch Conv1d layout); `bias`: `[H]`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d_act_into(
    x: &[f32],
    offsets: &[usize],
    h: usize,
    k: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    act: Activation,
    out: &mut [f32],
) {
    let cg = h / groups; // channels per group
    let pad = (k - 1) / 2;
    // token index -> (sequence start, sequence end)
    let mut spans = Vec::with_capacity(x.len() / h);
    for w in offsets.windows(2) {
        for _ in w[0]..w[1] {
            spans.push((w[0], w[1]));
        }
    }
    out.par_chunks_mut(h).enumerate().for_each(|(t, row)| {
        let (start, end) = spans[t];
        let pos = t - start;
        for (c, o) in row.iter_mut().enumerate() {
            let g = c / cg;
            let mut acc = bias[c];
            for kk in 0..k {
                // input position pos + kk - pad, zero outside [start, end)
                let src = pos + kk;
                if src < pad || start + src - pad >= end {
                    continue;
                }
                let xr = &x[(start + src - pad) * h + g * cg..][..cg];
                let wr = &weight[c * cg * k..][..cg * k];
                for (ci, &xv) in xr.iter().enumerate() {
                    acc += wr[ci * k + kk] * xv;
                }
            }
            *o = act.apply(acc);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf64(x: f64) -> f64 {
        // high-precision reference: libm's f64 erf
        libm::erf(x)
    }

    /// torch's LayerNorm, one serial f64 sum per statistic.
    fn layer_norm_naive(row: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let f = |(i, &v): (usize, &f32)| ((v as f64 - mean) * inv) as f32 * w[i] + b[i];
        row.iter().enumerate().map(f).collect()
    }

    #[test]
    fn layer_norm_matches_the_serial_reference() {
        // lengths around the 8-lane split; a large offset makes cancellation matter
        for n in [1usize, 7, 8, 9, 383, 384, 385] {
            let row: Vec<f32> = (0..n)
                .map(|i| 1000.0 + ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.01 - 0.02).collect();
            let want = layer_norm_naive(&row, &w, &b, 1e-7);
            let mut got = row.clone();
            layer_norm(&mut got, &w, &b, 1e-7);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!((g - r).abs() <= 1e-6, "n = {n}, [{i}]: {g} vs {r}");
            }
            // and the parallel rows wrapper, on 70 copies (several tasks)
            let mut rows = row.repeat(70);
            layer_norm_rows(&mut rows, n, &w, &b, 1e-7);
            assert!(
                rows.chunks_exact(n).all(|r| r == got.as_slice()),
                "n = {n}: rows"
            );
        }
    }

    #[test]
    fn gelu_matches_exact_erf_gelu() {
        let mut worst = 0.0f64;
        let mut x = -12.0f64;
        while x <= 12.0 {
            let want = 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
            let got = gelu(x as f32) as f64;
            let err = (got - want).abs() / x.abs().max(1.0);
            worst = worst.max(err);
            x += 0.001;
        }
        assert!(worst < 4e-7, "gelu max scaled error {worst:e}");
        // the negative tail keeps relative accuracy
        for x in [-3.0f64, -4.0, -5.0, -6.0] {
            let want = 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
            let got = gelu(x as f32) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-5,
                "x = {x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_lanes_is_bit_identical_to_gelu_with() {
        // -12 .. 12 in steps that are not a lane multiple, the saturated tails, signed zeros
        let mut xs: Vec<f32> = (0..24 * 97).map(|i| -12.0 + i as f32 / 97.0).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 200.0, -200.0]);
        xs.resize(xs.len().next_multiple_of(GELU_LANES), 0.5);
        for ch in xs.chunks_exact(GELU_LANES) {
            let mut a: [f32; GELU_LANES] = ch.try_into().expect("chunk");
            let mut b = a;
            gelu_lanes::<false, GELU_LANES>(&mut a);
            gelu_lanes::<true, GELU_LANES>(&mut b);
            // and one vector at a time (the tails of rows)
            for part in ch.chunks_exact(16) {
                let mut c: [f32; 16] = part.try_into().expect("chunk");
                let mut d = c;
                gelu_lanes::<false, 16>(&mut c);
                gelu_lanes::<true, 16>(&mut d);
                for ((&x, &g), &gf) in part.iter().zip(&c).zip(&d) {
                    assert_eq!(g.to_bits(), gelu(x).to_bits(), "x = {x} (16 lanes)");
                    assert_eq!(
                        gf.to_bits(),
                        gelu_with::<true>(x).to_bits(),
                        "x = {x} (16 lanes, fma)"
                    );
                }
            }
            for ((&x, &g), &gf) in ch.iter().zip(&a).zip(&b) {
                assert_eq!(g.to_bits(), gelu(x).to_bits(), "x = {x}");
                assert_eq!(
                    gf.to_bits(),
                    gelu_with::<true>(x).to_bits(),
                    "x = {x} (fma)"
                );
            }
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "exp max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    }
}
