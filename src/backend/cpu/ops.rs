//! Element-wise and row-wise ops of the forward, in plain fp32.

/// Exact (erf) GELU, as `hidden_act: "gelu"` in transformers: `x/2 * (1 + erf(x/sqrt(2)))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

use rayon::prelude::*;

use crate::config::Activation;

/// Rows processed per rayon task in the row-wise ops: enough work to amortize scheduling.
const ROWS_PER_TASK: usize = 32;

/// In-place LayerNorm over each row of `x` ([rows, n]), statistics in f64.
pub fn layer_norm_rows(x: &mut [f32], n: usize, w: &[f32], b: &[f32], eps: f32) {
    assert!(w.len() == n && b.len() == n && x.len() % n == 0);
    x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(n) {
            layer_norm(row, w, b, eps);
        }
    });
}

/// LayerNorm of one row, as torch computes it (biased variance, eps inside the sqrt).
#[inline]
pub fn layer_norm(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + bb;
    }
}

/// The conv block of conv models, per packed sequence: `out = act(conv1d(x))` with
/// `padding = (k-1)/2` and zeros outside each sequence (what transformers sees: padded positions
/// of the embedding output are zero).
///
/// `x`, `out`: [T, H]; `weight`: [H, H/groups, k] (torch Conv1d layout); `bias`: [H].
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
