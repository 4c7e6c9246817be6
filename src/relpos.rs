//! Relative positions: the log-bucket function and the c2p/p2c index table, in plain Rust.
//!
//! `bucket(i - j)` depends only on the offset `r = i - j`, so one table over
//! `r in -(max_len-1) ..= max_len-1`, computed once at load time, serves every sequence length.

/// transformers' `make_log_bucket_position` for one relative position, reproducing its float32
/// arithmetic (`abs_pos / mid` and both logs in f32, the ratio `(max_position - 1) / mid` rounded
/// from f64 to f32 as `torch.tensor(python_float)` does).
///
/// With `bucket_size <= 0` (or `max_position <= 0`) there is no bucketing and `r` is returned.
pub fn log_bucket(r: i64, bucket_size: i64, max_position: i64) -> i64 {
    if bucket_size <= 0 || max_position <= 0 {
        return r;
    }
    let mid = bucket_size / 2;
    let abs_pos = if r < mid && r > -mid {
        mid - 1
    } else {
        r.abs()
    };
    if abs_pos <= mid {
        return r;
    }
    let ratio = ((max_position - 1) as f64 / mid as f64) as f32;
    let log_pos =
        ((abs_pos as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil() + mid as f32;
    // torch: `log_pos * sign` in float, then `.to(torch.long)` (truncation toward zero).
    (log_pos * r.signum() as f32) as i64
}

/// The index into the (2S)-row projected rel-embedding tables for every offset `r = i - j`:
/// `c2p_idx(i, j) = clamp(bucket(i - j) + S, 0, 2S - 1)`. Because `bucket` is odd,
/// `p2c_idx(i, j) = clamp(-bucket(j - i) + S, ..)` is the same number.
#[derive(Clone, Debug)]
pub struct RelPosTable {
    max_len: usize,
    /// [2 * max_len - 1], entry `r + max_len - 1`
    idx: Vec<u32>,
    /// Largest difference between neighbouring entries (1 unless log buckets grow faster than
    /// the offset, as when `max_relative_positions - 1 < e * position_buckets / 2`).
    max_step: usize,
    /// Whether entries never fall as the offset grows (true unless `max_relative_positions -
    /// 1 < position_buckets / 2`, where the log buckets run backwards).
    monotone: bool,
}

impl RelPosTable {
    /// Table for sequences of up to `max_len` tokens.
    pub fn new(
        max_len: usize,
        position_buckets: i64,
        max_relative_positions: usize,
        att_span: usize,
    ) -> Self {
        let max_len = max_len.max(1);
        let span = att_span as i64;
        let idx = (-(max_len as i64 - 1)..=(max_len as i64 - 1))
            .map(|r| {
                let b = log_bucket(r, position_buckets, max_relative_positions as i64);
                (b + span).clamp(0, 2 * span - 1) as u32
            })
            .collect::<Vec<u32>>();
        let max_step = idx
            .windows(2)
            .map(|w| w[1].abs_diff(w[0]) as usize)
            .max()
            .unwrap_or(0);
        let monotone = idx.windows(2).all(|w| w[1] >= w[0]);
        RelPosTable {
            max_len,
            idx,
            max_step,
            monotone,
        }
    }

    /// Largest difference between the indices of neighbouring offsets: `k` consecutive offsets
    /// span at most `(k - 1) * max_step + 1` rows.
    pub fn max_step(&self) -> usize {
        self.max_step
    }

    /// Whether the entries never fall as the offset grows, so that the smallest and largest
    /// index of a run of offsets are those of its ends.
    pub fn is_monotone(&self) -> bool {
        self.monotone
    }

    /// Longest sequence the table covers.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Row of the projected rel-embedding tables used by query `i` and key `j`.
    #[inline]
    pub fn index(&self, i: usize, j: usize) -> usize {
        self.idx[i + self.max_len - 1 - j] as usize
    }

    /// The whole table, indexed by `i - j + max_len - 1` (for kernels that want the raw array).
    pub fn as_slice(&self) -> &[u32] {
        &self.idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_are_not_bucketed() {
        for r in -127..=128 {
            assert_eq!(log_bucket(r, 256, 512), r, "r = {r}");
        }
    }

    #[test]
    fn bucket_is_odd_and_monotone() {
        let mut prev = i64::MIN;
        for r in -600..=600 {
            let b = log_bucket(r, 256, 512);
            assert_eq!(log_bucket(-r, 256, 512), -b);
            assert!(b >= prev, "not monotone at {r}");
            prev = b;
        }
        // far offsets saturate at the last bucket (mid - 1 steps past mid)
        assert_eq!(log_bucket(511, 256, 512), 255);
    }

    #[test]
    fn no_bucketing_when_disabled() {
        assert_eq!(log_bucket(300, -1, 512), 300);
        assert_eq!(log_bucket(-300, 0, 12), -300);
    }

    #[test]
    fn table_clamps_to_span() {
        let t = RelPosTable::new(40, -1, 12, 12);
        assert_eq!(t.index(0, 0), 12);
        assert_eq!(t.index(39, 0), 23); // 39 + 12 clamped to 2S - 1
        assert_eq!(t.index(0, 39), 0);
        assert_eq!(t.index(5, 2), 15);
        assert_eq!(t.max_step(), 1);
    }

    #[test]
    fn steep_log_buckets_step_by_more_than_one() {
        // max_relative_positions - 1 = 6 < e * mid (mid = 4): buckets outrun the offset
        let t = RelPosTable::new(64, 8, 7, 8);
        assert!(t.max_step() > 1, "max_step {}", t.max_step());
        let s = t.as_slice();
        assert!(s
            .windows(2)
            .all(|w| w[0] <= w[1] && (w[1] - w[0]) as usize <= t.max_step()));
        // the seed model's buckets never do
        assert_eq!(RelPosTable::new(512, 256, 512, 256).max_step(), 1);
        assert!(t.is_monotone() && RelPosTable::new(512, 256, 512, 256).is_monotone());
    }

    #[test]
    fn backward_log_buckets_are_not_monotone() {
        // max_relative_positions - 1 = 19 < mid = 32: the log ratio is negative, so offsets
        // past mid fall back below it
        let t = RelPosTable::new(100, 64, 20, 64);
        assert!(!t.is_monotone());
        assert!(t.index(33, 0) < t.index(32, 0));
        // without buckets the clamped offsets are monotone
        assert!(RelPosTable::new(40, -1, 12, 12).is_monotone());
    }
}
