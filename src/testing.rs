//! Test support shared by the unit tests, the integration tests (`tests/`), the benches and the
//! CUDA kernel testbed: the one random generator, random-tensor helpers, the relative error and
//! the tolerances kernels are checked with, and the attention reference.
//!
//! Not API: hidden from the docs, public only so that `tests/` and `benches/` (separate crates)
//! can reach it, and free to change with the tests that use it.

pub use crate::backend::cpu::attention::{
    attention_reference, attention_reference_with, AttentionParams,
};
use crate::relpos::RelPosTable;

/// Small deterministic xorshift64 generator (no dependency, the same numbers everywhere). The
/// state is public so that a test can start from a seed it prints; a zero state stays zero, so
/// seeds from arbitrary numbers go through [`XorShift::salted`] or are made odd.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

/// The 64-bit golden-ratio constant, used to spread small seeds over the state.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl XorShift {
    /// A generator for run `seed` and stream `salt` (a test's several generators differ by
    /// salt); never the zero state.
    pub fn salted(seed: u64, salt: u64) -> Self {
        XorShift((seed ^ salt.wrapping_mul(GOLDEN)) | 1)
    }
    /// The next 64 random bits (xorshift 13, 7, 17).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [0, 1), 24 bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        self.uniform() * 2.0 - 1.0
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled): cheap and good enough.
    pub fn normal(&mut self) -> f32 {
        let s = self.uniform() + self.uniform() + self.uniform() + self.uniform();
        (s - 2.0) * 1.732_050_8
    }
    /// Uniform in `0..n` (`n > 0`; modulo bias is negligible for test sizes).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `n` values of [`XorShift::signed`].
    pub fn signed_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.signed()).collect()
    }
    /// `n` values of mean `mean` and standard deviation `sd` ([`XorShift::normal`] scaled).
    pub fn normal_vec(&mut self, n: usize, mean: f32, sd: f32) -> Vec<f32> {
        (0..n).map(|_| mean + self.normal() * sd).collect()
    }
}

/// `len` values uniform in [-1, 1) from `seed` (the benches' inputs).
pub fn signed_fill(len: usize, seed: u64) -> Vec<f32> {
    XorShift(seed).signed_vec(len)
}

/// ||a - b|| / ||b|| in f64; infinite when `a` has a non-finite value (an unwritten, poisoned
/// output) or the lengths differ.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Tolerances on [`rel_err`] for a kernel against its reference on the same inputs (already
/// rounded to the kernel's type, so only the accumulation order and the output rounding
/// differ). kernels/emu/check.cpp checks the emulated kernels with the same values.
pub mod tol {
    /// fp32 in, fp32 out (GEMM, LayerNorm, pooling: one accumulation order against another).
    pub const F32: f64 = 2e-6;
    /// fp32 attention (softmax and two products in a different order).
    pub const ATTENTION_F32: f64 = 1e-5;
    /// f16 / bf16 inputs, fp32 output.
    pub const HALF_IN_F32_OUT: f64 = 1e-4;
    /// f16 output (11-bit significand).
    pub const F16_OUT: f64 = 1e-3;
    /// bf16 output (8-bit significand).
    pub const BF16_OUT: f64 = 8e-3;
}

/// [`attention_reference`] over packed sequences (`offsets`: start of each, then the total)
/// with the c2p / p2c terms given or absent, into a new buffer [T, heads * d].
#[allow(clippy::too_many_arguments)]
pub fn attention_ref(
    qkv: &[f32],
    offsets: &[usize],
    pos_key: Option<&[f32]>,
    pos_query: Option<&[f32]>,
    rel: &RelPosTable,
    heads: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let p = AttentionParams {
        heads,
        head_dim: d,
        scale,
        c2p: pos_key.is_some(),
        p2c: pos_query.is_some(),
        tiles: false,
    };
    let t = offsets.last().copied().unwrap_or(0);
    let mut out = vec![0.0f32; t * heads * d];
    attention_reference(
        &p,
        qkv,
        offsets,
        pos_key.unwrap_or(&[]),
        pos_query.unwrap_or(&[]),
        rel,
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_sequences_are_fixed() {
        // the first values of seed 1 (xorshift64 13/7/17), which fixture-free tests and the
        // synthetic weights depend on
        let mut r = XorShift(1);
        assert_eq!(r.next_u64(), 0x4082_2041);
        assert_eq!(r.next_u64(), 0x1000_4106_0C01_1441);
        let mut a = XorShift(7);
        let mut b = XorShift(7);
        let u = a.uniform();
        assert_eq!(b.signed(), u * 2.0 - 1.0);
        assert!((0.0..1.0).contains(&u));
        assert_eq!(signed_fill(5, 99), XorShift(99).signed_vec(5));
        let v = XorShift::salted(3, 4).normal_vec(10_000, 1.0, 0.5);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        assert!(v.iter().all(|x| (x - 1.0).abs() <= 2.0 * 1.733 * 0.5));
        assert_eq!(XorShift::salted(0, 0).0, 1);
        let mut r = XorShift(5);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn rel_err_fails_unwritten_outputs() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_err(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert!(rel_err(&[f32::NAN, 1.0], &[1.0, 1.0]).is_infinite());
        assert!(rel_err(&[1.0], &[1.0, 1.0]).is_infinite());
    }

    #[test]
    fn attention_ref_uses_the_terms_it_is_given() {
        // one sequence of 3 tokens, 1 head of 2 dims: softmax weights over V rows
        let rel = RelPosTable::new(4, -1, 4, 4);
        let qkv: Vec<f32> = XorShift(11).normal_vec(3 * 3 * 2, 0.0, 1.0);
        let pk = XorShift(12).normal_vec(8 * 2, 0.0, 1.0);
        let plain = attention_ref(&qkv, &[0, 3], None, None, &rel, 1, 2, 0.5);
        let with_pk = attention_ref(&qkv, &[0, 3], Some(&pk), None, &rel, 1, 2, 0.5);
        assert_eq!(plain.len(), 6);
        assert_ne!(plain, with_pk);
        // token 0 by hand: scores q0.kj * 0.5, output the softmax-weighted V rows
        let row = |t: usize| &qkv[t * 6..t * 6 + 6];
        let s: Vec<f32> = (0..3)
            .map(|j| (row(0)[0] * row(j)[2] + row(0)[1] * row(j)[3]) * 0.5)
            .collect();
        let m = s.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
        for (c, got) in plain[..2].iter().enumerate() {
            let want: f32 = (0..3).map(|j| (s[j] - m).exp() / z * row(j)[4 + c]).sum();
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
