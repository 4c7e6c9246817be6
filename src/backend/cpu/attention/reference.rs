//! The plain per-element attention that the fast path (and the CUDA kernels) are tested
//! against.

use super::AttentionParams;
use crate::relpos::RelPosTable;

/// Plain per-element attention: the reference the fast path is tested against.
/// `pos_key` / `pos_query`: [2S, H] row-major (empty when unused).
pub fn attention_reference(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &[f32],
    pos_query: &[f32],
    relpos: &RelPosTable,
    ctx: &mut [f32],
) {
    attention_reference_with(p, qkv, offsets, pos_key, pos_query, relpos, &|x| x, ctx)
}

/// [`attention_reference`] with each normalized probability passed through `round` before it
/// weighs the values (the tile path's bf16 probabilities: with its inputs rounded to bf16 as
/// well, the reference of `AttentionParams::tiles`).
#[allow(clippy::too_many_arguments)]
pub fn attention_reference_with(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &[f32],
    pos_query: &[f32],
    relpos: &RelPosTable,
    round: &dyn Fn(f32) -> f32,
    ctx: &mut [f32],
) {
    let h = p.heads * p.head_dim;
    let d = p.head_dim;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for w in offsets.windows(2) {
        let (start, n) = (w[0], w[1] - w[0]);
        let row = |t: usize| &qkv[(start + t) * 3 * h..(start + t + 1) * 3 * h];
        for i in 0..n {
            for hd in 0..p.heads {
                let hs = hd * d;
                let q = &row(i)[hs..hs + d];
                let mut scores: Vec<f32> = (0..n)
                    .map(|j| {
                        let k = &row(j)[h + hs..h + hs + d];
                        let r = relpos.index(i, j) * h + hs;
                        let mut v = dot(q, k);
                        if p.c2p {
                            v += dot(q, &pos_key[r..r + d]);
                        }
                        if p.p2c {
                            v += dot(k, &pos_query[r..r + d]);
                        }
                        v * p.scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = scores
                    .iter_mut()
                    .map(|s| {
                        *s = (*s - max).exp();
                        *s
                    })
                    .sum();
                let o = &mut ctx[(start + i) * h + hs..(start + i) * h + hs + d];
                for (t, ov) in o.iter_mut().enumerate() {
                    *ov = (0..n)
                        .map(|j| round(scores[j] / sum) * row(j)[2 * h + hs + t])
                        .sum();
                }
            }
        }
    }
}
