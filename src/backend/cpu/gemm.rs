//! fp32 GEMM for `nn.Linear` layers: `out[m, n] = x[m, k] . W[n, k]^T` plus a fused epilogue.
//!
//! PLACEHOLDER: a plain rayon loop; to be replaced by the packed, register-tiled SIMD kernel.
//! The public interface below is what the model uses and must stay.

use rayon::prelude::*;

/// A Linear weight, stored once at load time in whatever layout the kernel wants.
pub struct PackedWeight {
    /// out features
    n: usize,
    /// in features
    k: usize,
    /// [n, k] row-major, as torch stores it
    w: Vec<f32>,
}

impl PackedWeight {
    /// Pack a torch-layout weight `w: [n, k]` (row-major).
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length must be n * k");
        PackedWeight {
            n,
            k,
            w: w.to_vec(),
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

/// What is fused after the matrix product.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `out = x W^T`
    None,
    /// `out = x W^T + bias` (bias: [n])
    Bias(&'a [f32]),
    /// `out = gelu_erf(x W^T + bias)`
    BiasGelu(&'a [f32]),
    /// `out = x W^T + bias + residual` (residual: [m, n])
    BiasResidual(&'a [f32], &'a [f32]),
}

/// `out[m, n] = epilogue(x[m, k] . W^T)`. Panics if slice lengths disagree with the shapes
/// (internal invariant: the model sizes every buffer).
pub fn linear(x: &[f32], m: usize, w: &PackedWeight, ep: Epilogue<'_>, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && out.len() >= m * n);
    out[..m * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, row)| {
            let xi = &x[i * k..(i + 1) * k];
            for (j, o) in row.iter_mut().enumerate() {
                let wj = &w.w[j * k..(j + 1) * k];
                let mut acc = 0.0f32;
                for t in 0..k {
                    acc += xi[t] * wj[t];
                }
                *o = match ep {
                    Epilogue::None => acc,
                    Epilogue::Bias(b) => acc + b[j],
                    Epilogue::BiasGelu(b) => super::ops::gelu(acc + b[j]),
                    Epilogue::BiasResidual(b, r) => acc + b[j] + r[i * n + j],
                };
            }
        });
}
