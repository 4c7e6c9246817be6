//! sentence-transformers pooling over a sequence's real tokens, and the Normalize module.
//!
//! [`Embedder`](crate::Embedder) pools as the model directory says; these functions are the
//! same steps for token states of your own (e.g. from [`Embedder::hidden_states`]).
//!
//! ```
//! use deberta_embed::pooling::{l2_normalize, pool};
//! use deberta_embed::PoolingMode;
//!
//! // two tokens of hidden size 2
//! let states = [1.0, 2.0, 3.0, 6.0];
//! let mut out = [0.0; 4];
//! pool(&[PoolingMode::Mean, PoolingMode::Max], &states, 2, &mut out);
//! assert_eq!(out, [2.0, 4.0, 3.0, 6.0]); // the mean block, then the max block
//!
//! let mut v = [3.0, 4.0];
//! l2_normalize(&mut v);
//! assert_eq!(v, [0.6, 0.8]);
//! ```
//!
//! [`Embedder::hidden_states`]: crate::Embedder::hidden_states

use crate::config::PoolingMode;

/// Width of the pooled vector: one hidden-size block per enabled mode.
pub(crate) fn pooled_dim(modes: &[PoolingMode], hidden: usize) -> usize {
    modes.len() * hidden
}

/// Pool one sequence's token states `x` ([n, H], real tokens only) into `out`
/// ([modes.len() * H]), blocks in the order of `modes`.
pub fn pool(modes: &[PoolingMode], x: &[f32], hidden: usize, out: &mut [f32]) {
    pool_skipping(modes, x, hidden, 0, out);
}

/// [`pool`] with the first `skip` tokens left out, as sentence-transformers' Pooling with
/// `include_prompt: false` leaves out a prompt's tokens (`[CLS]` included) by zeroing their
/// attention-mask entries: cls takes the first token after them, weightedmean keeps each token's
/// weight (its position + 1 in the whole sequence), mean and mean_sqrt_len_tokens divide by the
/// tokens kept. When nothing is left, the masked reductions give what sentence-transformers'
/// give: cls the sequence's first token, mean / weightedmean / lasttoken zeros, max -inf.
pub(crate) fn pool_skipping(
    modes: &[PoolingMode],
    x: &[f32],
    hidden: usize,
    skip: usize,
    out: &mut [f32],
) {
    let n = x.len() / hidden;
    debug_assert_eq!(out.len(), modes.len() * hidden);
    let start = skip.min(n);
    let kept = n - start;
    for (block, &mode) in out.chunks_exact_mut(hidden).zip(modes) {
        block.fill(0.0);
        if n == 0 {
            // No tokens: sentence-transformers' masked sums are zero too.
            continue;
        }
        let rows = x[start * hidden..].chunks_exact(hidden);
        match mode {
            PoolingMode::Cls if kept == 0 => block.copy_from_slice(&x[..hidden]),
            PoolingMode::Cls => block.copy_from_slice(&x[start * hidden..(start + 1) * hidden]),
            PoolingMode::LastToken if kept == 0 => {}
            PoolingMode::LastToken => block.copy_from_slice(&x[(n - 1) * hidden..]),
            PoolingMode::Max => {
                block.fill(f32::NEG_INFINITY);
                for r in rows {
                    for (b, &v) in block.iter_mut().zip(r) {
                        *b = b.max(v);
                    }
                }
            }
            PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                if kept == 0 {
                    continue;
                }
                for r in rows {
                    for (b, &v) in block.iter_mut().zip(r) {
                        *b += v;
                    }
                }
                let div = match mode {
                    PoolingMode::Mean => kept as f32,
                    _ => (kept as f32).sqrt(),
                };
                block.iter_mut().for_each(|b| *b /= div);
            }
            PoolingMode::WeightedMean => {
                if kept == 0 {
                    continue;
                }
                // the token at position k (0-based, in the whole sequence) has weight k + 1
                for (k, r) in rows.enumerate() {
                    let wk = (start + k + 1) as f32;
                    for (b, &v) in block.iter_mut().zip(r) {
                        *b += wk * v;
                    }
                }
                let total = (n * (n + 1) / 2 - start * (start + 1) / 2) as f32;
                block.iter_mut().for_each(|b| *b /= total);
            }
        }
    }
}

/// L2-normalize in place as `torch.nn.functional.normalize` (norm clamped at 1e-12).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let inv = 1.0 / norm.max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_on_a_small_sequence() {
        // two tokens, H = 2
        let x = [1.0, -2.0, 3.0, 4.0];
        let run = |m: PoolingMode| {
            let mut o = [0.0; 2];
            pool(&[m], &x, 2, &mut o);
            o
        };
        assert_eq!(run(PoolingMode::Cls), [1.0, -2.0]);
        assert_eq!(run(PoolingMode::LastToken), [3.0, 4.0]);
        assert_eq!(run(PoolingMode::Max), [3.0, 4.0]);
        assert_eq!(run(PoolingMode::Mean), [2.0, 1.0]);
        let s = 2f32.sqrt();
        assert_eq!(run(PoolingMode::MeanSqrtLen), [4.0 / s, 2.0 / s]);
        assert_eq!(run(PoolingMode::WeightedMean), [7.0 / 3.0, 6.0 / 3.0]);
        let mut both = [0.0; 4];
        pool(&[PoolingMode::Cls, PoolingMode::Max], &x, 2, &mut both);
        assert_eq!(both, [1.0, -2.0, 3.0, 4.0]);
    }

    #[test]
    fn skipped_tokens_are_left_out_as_sentence_transformers_masks_them() {
        // three tokens, H = 1: values 1, 2, 4; skip the first
        let x = [1.0, 2.0, 4.0];
        let run = |m: PoolingMode, skip: usize| {
            let mut o = [0.0; 1];
            pool_skipping(&[m], &x, 1, skip, &mut o);
            o[0]
        };
        assert_eq!(run(PoolingMode::Cls, 1), 2.0);
        assert_eq!(run(PoolingMode::LastToken, 1), 4.0);
        assert_eq!(run(PoolingMode::Max, 1), 4.0);
        assert_eq!(run(PoolingMode::Mean, 1), 3.0);
        assert_eq!(run(PoolingMode::MeanSqrtLen, 1), 6.0 / 2f32.sqrt());
        // weights stay the positions in the whole sequence: 2 and 3
        assert_eq!(
            run(PoolingMode::WeightedMean, 1),
            (2.0 * 2.0 + 3.0 * 4.0) / 5.0
        );
        // nothing left
        assert_eq!(run(PoolingMode::Cls, 3), 1.0);
        assert_eq!(run(PoolingMode::LastToken, 5), 0.0);
        assert_eq!(run(PoolingMode::Mean, 3), 0.0);
        assert_eq!(run(PoolingMode::WeightedMean, 3), 0.0);
        assert_eq!(run(PoolingMode::Max, 3), f32::NEG_INFINITY);
        // skip 0 is plain pooling
        for m in PoolingMode::ORDER {
            let mut a = [0.0; 1];
            pool(&[m], &x, 1, &mut a);
            assert_eq!(run(m, 0), a[0], "{m:?}");
        }
    }

    #[test]
    fn normalize_handles_zero() {
        let mut z = [0.0f32; 3];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut v = [3.0f32, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
    }
}
