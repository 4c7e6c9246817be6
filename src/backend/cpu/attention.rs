//! Disentangled self-attention over packed sequences, one task per (sequence, query block),
//! all heads: content score plus the c2p / p2c terms gathered from the precomputed projections
//! PK / PQ through the relative-position index, softmax, and the weighted sum of values.
//! No [L, L] or [L, 2S] matrix is materialized; only real tokens are touched.

use rayon::prelude::*;

use crate::relpos::RelPosTable;

/// Query rows per task.
const QUERY_BLOCK: usize = 16;

/// Shape and options of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub heads: usize,
    pub head_dim: usize,
    /// 1 / sqrt(d * scale_factor)
    pub scale: f32,
    pub c2p: bool,
    pub p2c: bool,
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `ctx[T, H] = attention(qkv[T, 3H])` for every packed sequence.
///
/// `pos_key` / `pos_query`: [2S, H] (PK for c2p, PQ for p2c; empty when unused).
pub fn attention(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &[f32],
    pos_query: &[f32],
    relpos: &RelPosTable,
    ctx: &mut [f32],
) {
    let h = p.heads * p.head_dim;
    let d = p.head_dim;
    // Split ctx into (sequence start, sequence length, first query row, rows) blocks.
    let mut tasks: Vec<(usize, usize, usize, &mut [f32])> = Vec::new();
    let mut rest = ctx;
    for w in offsets.windows(2) {
        let n = w[1] - w[0];
        let (seq, tail) = rest.split_at_mut(n * h);
        rest = tail;
        for (bi, block) in seq.chunks_mut(QUERY_BLOCK * h).enumerate() {
            tasks.push((w[0], n, bi * QUERY_BLOCK, block));
        }
    }
    tasks.into_par_iter().for_each(|(start, n, q0, out)| {
        let mut scores = vec![0.0f32; n];
        let row = |t: usize| &qkv[(start + t) * 3 * h..(start + t + 1) * 3 * h];
        for (qi, out_row) in out.chunks_exact_mut(h).enumerate() {
            let i = q0 + qi;
            for head in 0..p.heads {
                let hs = head * d;
                let q = &row(i)[hs..hs + d];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let k = &row(j)[h + hs..h + hs + d];
                    let mut v = dot(q, k);
                    if p.c2p || p.p2c {
                        let r = relpos.index(i, j) * h + hs;
                        if p.c2p {
                            v += dot(q, &pos_key[r..r + d]);
                        }
                        if p.p2c {
                            v += dot(k, &pos_query[r..r + d]);
                        }
                    }
                    v *= p.scale;
                    *s = v;
                    max = max.max(v);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                let o = &mut out_row[hs..hs + d];
                o.fill(0.0);
                for (j, &s) in scores.iter().enumerate() {
                    let w = s * inv;
                    let v = &row(j)[2 * h + hs..2 * h + hs + d];
                    for (a, &b) in o.iter_mut().zip(v) {
                        *a += w * b;
                    }
                }
            }
        }
    });
}
