//! Launch geometry and batch layout for the CUDA kernels, as plain functions with no GPU
//! dependency, so that they are unit-tested on any machine.
//!
//! The constants mirror the `#define`s of `kernels/*.cu`; a mismatch would be a bug in both
//! places, so each is named after its kernel-side twin.

use crate::config::PoolingMode;
use crate::error::{Error, Result};

/// `TC_BM`, `TC_BN` in kernels/gemm.cu: output tile of one tensor-core GEMM block.
pub const TC_BM: usize = 64;
pub const TC_BN: usize = 64;
/// `TC_THREADS`.
pub const TC_THREADS: u32 = 128;
/// The opt-in large-tile variant (`gemm_*_k8_128`): 128 x 128 outputs, `TC_BIG_THREADS`.
pub const TC_BIG: usize = 128;
pub const TC_BIG_THREADS: u32 = 256;

/// Dynamic shared memory of the large-tile GEMM: `TC_BIG_STAGES` (4) stages of a 128-row A
/// and a 128-row W tile, 32 + 8 halves per row (`TC_LD`).
pub const fn gemm_tc_big_smem_bytes() -> usize {
    4 * (128 + 128) * 40 * 2
}
/// `SG_BM`, `SG_BN`, `SG_THREADS`: the fp32 SIMT GEMM.
pub const SG_BM: usize = 64;
pub const SG_BN: usize = 64;
pub const SG_THREADS: u32 = 256;

/// `ATT_BQ`, `ATT_BKV`, `ATT_WARPS` in kernels/attention.cu.
pub const ATT_BQ: usize = 16;
pub const ATT_BKV: usize = 32;
pub const ATT_THREADS: u32 = 4 * 32;
/// Rows of the relative-embedding band staged per (query tile, key tile).
pub const ATT_NB: usize = ATT_BQ + ATT_BKV - 1;

/// The tensor-core attention (kernels/attention_tc.cu): head dim, threads, rows per block
/// (`A2_D`, `A2_THREADS`, `A2_BQ`).
pub const ATT_TC_D: usize = 64;
pub const ATT_TC_THREADS: u32 = 128;
pub const ATT_TC_BQ: usize = 64;

/// Dynamic shared memory of one tensor-core attention block, in bytes: Q, K, V [64][72] and the
/// PK / PQ bands [128][72] in the 2-byte compute type, the c2p scratch [4][16][84] and the p2c
/// scratch [64][132] in fp32 (`A2_*` in kernels/attention_tc.cu).
pub const fn attention_tc_smem_bytes() -> usize {
    (3 * 64 + 2 * 128) * 72 * 2 + (4 * 16 * 84 + 64 * 132) * 4
}

/// The same for the pipelined variant (`attention_tc_async_*`): a second K and V buffer.
pub const fn attention_tc_async_smem_bytes() -> usize {
    attention_tc_smem_bytes() + 2 * 64 * 72 * 2
}

/// Threads per block of the pooling and conv kernels (one thread per column).
pub const COL_THREADS: u32 = 128;

/// Largest grid y / z dimension.
const GRID_YZ_MAX: usize = 65_535;
/// Largest grid x dimension.
const GRID_X_MAX: usize = (1 << 31) - 1;

/// GEMM epilogue codes (`EPI_*` in kernels/gemm.cu).
pub const EPI_NONE: i32 = 0;
pub const EPI_BIAS: i32 = 1;
pub const EPI_BIAS_GELU: i32 = 2;
pub const EPI_BIAS_RESIDUAL: i32 = 3;

/// Grid of a GEMM with `m` rows and `n` columns, for blocks of `bm` x `bn` outputs:
/// x over column tiles, y over row tiles.
pub fn gemm_grid(m: usize, n: usize, bm: usize, bn: usize) -> Result<(u32, u32, u32)> {
    let gx = n.div_ceil(bn);
    let gy = m.div_ceil(bm);
    if gy > GRID_YZ_MAX || gx > GRID_X_MAX {
        return Err(Error::Device(format!(
            "GEMM of {m} x {n} is too large for one launch ({gy} row tiles; at most {GRID_YZ_MAX})"
        )));
    }
    Ok((gx.max(1) as u32, gy.max(1) as u32, 1))
}

/// Whether the `_k8` tensor-core variant (16-byte cp.async copies) may run: K a multiple of 8
/// and both operand base addresses 16-byte aligned.
pub fn gemm_k8_ok(k: usize, a_ptr: u64, w_ptr: u64) -> bool {
    k.is_multiple_of(8) && a_ptr.is_multiple_of(16) && w_ptr.is_multiple_of(16)
}

/// Threads per block for the row-wise kernels (LayerNorm, embeddings, L2 normalize): about
/// 4 elements per thread, a power of two between 32 and 256.
pub fn row_threads(n: usize) -> u32 {
    (n.div_ceil(4).next_power_of_two()).clamp(32, 256) as u32
}

/// Dims per lane of the attention kernel for head dim `d` (`DPL` template parameter): the
/// smallest instantiated value with `32 * DPL >= d`, or an error for `d > 256` or `d == 0`.
pub fn attention_dpl(d: usize) -> Result<u32> {
    match d {
        1..=32 => Ok(1),
        33..=64 => Ok(2),
        65..=128 => Ok(4),
        129..=256 => Ok(8),
        _ => Err(Error::Device(format!(
            "attention head dim {d} is not supported by the CUDA kernels (1..=256)"
        ))),
    }
}

/// Dynamic shared memory of one attention block, in bytes: Q [BQ][d], K [BKV][d|1],
/// V [BKV][d], PK and PQ bands [NB][d|1], all fp32.
pub fn attention_smem_bytes(d: usize) -> usize {
    let ds = d | 1;
    (ATT_BQ * d + ATT_BKV * ds + ATT_BKV * d + 2 * ATT_NB * ds) * 4
}

/// One attention block per (sequence, query tile): `[start, len, q0, 0]` for each. Empty
/// sequences get no block. The tiles that start a 64-row group (`q0 % ATT_TC_BQ == 0`) come
/// first, in sequence order, then the others in sequence order: version 1 launches all of
/// them, the tensor-core version 2 (64 query rows per block) only the first
/// [`attention_tc_tiles`] of them, so that none of its blocks is idle.
pub fn attention_tiles(offsets: &[usize]) -> Vec<[i32; 4]> {
    let (mut lead, mut rest) = (Vec::new(), Vec::new());
    for w in offsets.windows(2) {
        let (start, len) = (w[0], w[1] - w[0]);
        let mut q0 = 0;
        while q0 < len {
            let t = [start as i32, len as i32, q0 as i32, 0];
            if q0.is_multiple_of(ATT_TC_BQ) {
                lead.push(t);
            } else {
                rest.push(t);
            }
            q0 += ATT_BQ;
        }
    }
    lead.extend(rest);
    lead
}

/// How many leading tiles of [`attention_tiles`] the tensor-core attention launches.
pub fn attention_tc_tiles(tiles: &[[i32; 4]]) -> usize {
    tiles
        .iter()
        .take_while(|t| (t[2] as usize).is_multiple_of(ATT_TC_BQ))
        .count()
}

/// A batch of sequences packed back to back, with everything the kernels index by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// [T] token ids
    pub ids: Vec<u32>,
    /// [T] position of each token inside its own sequence
    pub pos: Vec<i32>,
    /// [T] length of the token's sequence
    pub len: Vec<i32>,
    /// [B + 1] start of each sequence; the last entry is T
    pub cu_seqlens: Vec<i32>,
    /// attention blocks, see [`attention_tiles`]
    pub tiles: Vec<[i32; 4]>,
    /// longest sequence
    pub max_len: usize,
}

impl Packed {
    /// Pack `seqs` in the given order. Fails if the batch has 2^31 tokens or more.
    pub fn new<S: AsRef<[u32]>>(seqs: &[S]) -> Result<Self> {
        let total: usize = seqs.iter().map(|s| s.as_ref().len()).sum();
        if total >= i32::MAX as usize {
            return Err(Error::Input(format!(
                "batch of {total} tokens is too large"
            )));
        }
        let mut p = Packed {
            ids: Vec::with_capacity(total),
            pos: Vec::with_capacity(total),
            len: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(seqs.len() + 1),
            ..Default::default()
        };
        p.cu_seqlens.push(0);
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0usize);
        for s in seqs {
            let s = s.as_ref();
            p.ids.extend_from_slice(s);
            p.pos.extend(0..s.len() as i32);
            p.len.extend(std::iter::repeat_n(s.len() as i32, s.len()));
            p.cu_seqlens.push(p.ids.len() as i32);
            offsets.push(p.ids.len());
            p.max_len = p.max_len.max(s.len());
        }
        p.tiles = attention_tiles(&offsets);
        Ok(p)
    }
    /// Tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.cu_seqlens.len() - 1
    }
}

/// Alignment of each part of a [`BatchImage`] (the kernels read tiles as `int4`; 256 bytes is
/// what device allocations themselves guarantee).
pub const BATCH_PART_ALIGN: usize = 256;

/// A packed batch as one block of bytes, uploaded with a single host-to-device copy: ids,
/// positions, lengths, cu_seqlens and tiles (all 32-bit little-endian), each part starting on
/// a [`BATCH_PART_ALIGN`] boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchImage {
    pub bytes: Vec<u8>,
    /// (offset, length) in bytes of ids, pos, len, cu_seqlens, tiles
    pub parts: [(usize, usize); 5],
}

impl BatchImage {
    /// Lay out `p`, after checking that its parts agree with each other.
    pub fn new(p: &Packed) -> Result<Self> {
        let t = p.tokens();
        if p.pos.len() != t || p.len.len() != t || p.cu_seqlens.is_empty() {
            return Err(Error::Device("inconsistent packed batch".into()));
        }
        let counts = [t, t, t, p.cu_seqlens.len(), 4 * p.tiles.len()];
        let mut parts = [(0, 0); 5];
        let mut end = 0usize;
        for (part, &n) in parts.iter_mut().zip(&counts) {
            let start = end.next_multiple_of(BATCH_PART_ALIGN);
            *part = (start, 4 * n);
            end = start + 4 * n;
        }
        let mut bytes = vec![0u8; end];
        let mut put = |(start, len): (usize, usize), values: &mut dyn Iterator<Item = u32>| {
            for (d, v) in bytes[start..start + len].chunks_exact_mut(4).zip(values) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        };
        put(parts[0], &mut p.ids.iter().copied());
        put(parts[1], &mut p.pos.iter().map(|&v| v as u32));
        put(parts[2], &mut p.len.iter().map(|&v| v as u32));
        put(parts[3], &mut p.cu_seqlens.iter().map(|&v| v as u32));
        put(parts[4], &mut p.tiles.iter().flatten().map(|&v| v as u32));
        Ok(BatchImage { bytes, parts })
    }
}

/// Pooling modes packed for the `pool` kernel: 4 bits per mode, first mode lowest, plus the
/// count.
pub fn pool_modes_code(modes: &[PoolingMode]) -> Result<(u32, i32)> {
    if modes.is_empty() || modes.len() > 8 {
        return Err(Error::Input(format!(
            "{} pooling modes requested (1..=8 supported)",
            modes.len()
        )));
    }
    let mut code = 0u32;
    for (k, m) in modes.iter().enumerate() {
        let c = match m {
            PoolingMode::Cls => 0,
            PoolingMode::Max => 1,
            PoolingMode::Mean => 2,
            PoolingMode::MeanSqrtLen => 3,
            PoolingMode::WeightedMean => 4,
            PoolingMode::LastToken => 5,
        };
        code |= c << (4 * k);
    }
    Ok((code, modes.len() as i32))
}

/// Sizes (in elements) of the activation buffers of one forward over up to `tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// fp32 hidden state [T, H]; also the attention-block output `attn32` and the fp32
    /// scratch `tmp32` have this size
    pub hidden: usize,
    /// [T, E] pre-projection embeddings (0 without embed_proj)
    pub emb: usize,
    /// [T, 3H]
    pub qkv: usize,
    /// [T, I]
    pub ffn: usize,
    /// [T, H] conv-block input (0 without conv)
    pub conv_in: usize,
}

impl Workspace {
    /// Buffers for `tokens` tokens; fails when an index would overflow the kernels' `int`.
    pub fn new(
        tokens: usize,
        hidden: usize,
        embedding: usize,
        intermediate: usize,
        has_proj: bool,
        has_conv: bool,
    ) -> Result<Self> {
        let widest = (3 * hidden).max(intermediate).max(embedding);
        if tokens
            .checked_mul(widest)
            .is_none_or(|n| n >= i32::MAX as usize)
        {
            return Err(Error::Input(format!(
                "a batch of {tokens} tokens is too large for the CUDA kernels (tokens x {widest} must stay below 2^31)"
            )));
        }
        Ok(Workspace {
            hidden: tokens * hidden,
            emb: if has_proj { tokens * embedding } else { 0 },
            qkv: tokens * 3 * hidden,
            ffn: tokens * intermediate,
            conv_in: if has_conv { tokens * hidden } else { 0 },
        })
    }
}

/// Capacity (tokens) to allocate for a batch of `tokens`: grows in powers of two from 64, so
/// that a stream of slightly larger batches does not reallocate every time.
pub fn capacity_for(tokens: usize) -> usize {
    tokens.next_power_of_two().max(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_image_holds_every_part_aligned() {
        let p = Packed::new(&[vec![5u32, 6, 7], vec![], vec![9u32; 70]]).unwrap();
        let img = BatchImage::new(&p).unwrap();
        let read = |(off, len): (usize, usize)| -> Vec<i32> {
            img.bytes[off..off + len]
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let ids: Vec<i32> = p.ids.iter().map(|&v| v as i32).collect();
        let tiles: Vec<i32> = p.tiles.iter().flatten().copied().collect();
        let want = [&ids, &p.pos, &p.len, &p.cu_seqlens, &tiles];
        for (k, (&part, w)) in img.parts.iter().zip(want).enumerate() {
            assert_eq!(part.0 % BATCH_PART_ALIGN, 0, "part {k} offset");
            assert_eq!(read(part), *w, "part {k}");
        }
        // parts do not overlap and the image ends with the last one
        for w in img.parts.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        assert_eq!(img.bytes.len(), img.parts[4].0 + img.parts[4].1);
        let mut bad = p.clone();
        bad.pos.pop();
        assert!(BatchImage::new(&bad).is_err());
    }

    #[test]
    fn gemm_grid_covers_every_output() {
        for (m, n) in [
            (1, 1),
            (7, 384),
            (64, 64),
            (65, 1152),
            (8192, 1536),
            (33, 36),
        ] {
            let (gx, gy, gz) = gemm_grid(m, n, TC_BM, TC_BN).unwrap();
            assert_eq!(gz, 1);
            assert!(gx as usize * TC_BN >= n && (gx as usize - 1) * TC_BN < n.max(1));
            assert!(gy as usize * TC_BM >= m && (gy as usize - 1) * TC_BM < m.max(1));
        }
        assert!(gemm_grid(64 * 65_536, 8, 64, 64).is_err());
    }

    #[test]
    fn k8_variant_needs_alignment_and_k_multiple_of_8() {
        assert!(gemm_k8_ok(384, 0x1000, 0x2000));
        assert!(!gemm_k8_ok(36, 0x1000, 0x2000));
        assert!(!gemm_k8_ok(384, 0x1008, 0x2000));
        assert!(!gemm_k8_ok(384, 0x1000, 0x2002));
    }

    #[test]
    fn row_threads_is_a_warp_multiple() {
        for n in [1, 8, 24, 32, 36, 384, 1536, 4096] {
            let t = row_threads(n);
            assert!(
                t.is_multiple_of(32) && (32..=256).contains(&t),
                "{n} -> {t}"
            );
        }
        assert_eq!(row_threads(384), 128);
        assert_eq!(row_threads(32), 32);
    }

    #[test]
    fn attention_dpl_covers_head_dim() {
        for d in 1..=256 {
            let dpl = attention_dpl(d).unwrap() as usize;
            assert!(
                32 * dpl >= d && (dpl == 1 || 16 * dpl < d),
                "d {d} -> {dpl}"
            );
        }
        assert!(attention_dpl(0).is_err() && attention_dpl(257).is_err());
        // the xsmall head dim fits the default 48 KB of shared memory
        assert!(attention_smem_bytes(64) <= 48 * 1024);
        assert!(attention_smem_bytes(128) > 48 * 1024);
        // version 2: 117 KB, pipelined 135 KB (kernels/emu/check.cpp launches with these);
        // both above sm_86 / sm_89's 99 KB opt-in limit (version 1 runs there), within
        // sm_80 / sm_90's 163 / 227 KB
        assert_eq!(attention_tc_smem_bytes(), 119_808);
        assert_eq!(attention_tc_async_smem_bytes(), 138_240);
        assert!(attention_tc_smem_bytes() > 99 * 1024);
        assert!(attention_tc_async_smem_bytes() <= 163 * 1024);
        // the 128 x 128 GEMM's ring (also in check.cpp) fits every supported device's opt-in
        // limit, but not the 48 KB of static shared memory
        assert_eq!(gemm_tc_big_smem_bytes(), 81_920);
        assert!(gemm_tc_big_smem_bytes() > 48 * 1024 && gemm_tc_big_smem_bytes() <= 99 * 1024);
    }

    #[test]
    fn tiles_cover_each_query_once() {
        let offsets = [0, 1, 1, 18, 50, 50 + 512];
        let tiles = attention_tiles(&offsets);
        let mut seen = vec![0u32; 562];
        for t in &tiles {
            let [start, len, q0, _] = *t;
            assert!(q0 < len);
            for i in q0..(q0 + ATT_BQ as i32).min(len) {
                seen[(start + i) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // 1 + 0 + 2 + 2 + 32 tiles
        assert_eq!(tiles.len(), 1 + 2 + 2 + 32);
        // the tensor-core attention's 64-row blocks come first and cover each query once too
        let n2 = attention_tc_tiles(&tiles);
        assert_eq!(n2, 1 + 1 + 1 + 8);
        let mut seen2 = vec![0u32; 562];
        for t in &tiles[..n2] {
            let [start, len, q0, _] = *t;
            assert_eq!(q0 as usize % ATT_TC_BQ, 0);
            for i in q0..(q0 + ATT_TC_BQ as i32).min(len) {
                seen2[(start + i) as usize] += 1;
            }
        }
        assert!(seen2.iter().all(|&c| c == 1));
        assert!(tiles[n2..]
            .iter()
            .all(|t| !(t[2] as usize).is_multiple_of(ATT_TC_BQ)));
    }

    #[test]
    fn packing_records_positions_and_lengths() {
        let seqs: Vec<Vec<u32>> = vec![vec![1, 5, 2], vec![], vec![1, 2]];
        let p = Packed::new(&seqs).unwrap();
        assert_eq!(p.ids, vec![1, 5, 2, 1, 2]);
        assert_eq!(p.pos, vec![0, 1, 2, 0, 1]);
        assert_eq!(p.len, vec![3, 3, 3, 2, 2]);
        assert_eq!(p.cu_seqlens, vec![0, 3, 3, 5]);
        assert_eq!(p.tokens(), 5);
        assert_eq!(p.batch(), 3);
        assert_eq!(p.max_len, 3);
        assert_eq!(p.tiles, vec![[0, 3, 0, 0], [3, 2, 0, 0]]);
    }

    #[test]
    fn pool_codes_in_order() {
        let (code, n) = pool_modes_code(&[PoolingMode::Max, PoolingMode::MeanSqrtLen]).unwrap();
        assert_eq!((code, n), (1 | (3 << 4), 2));
        assert!(pool_modes_code(&[]).is_err());
    }

    #[test]
    fn workspace_sizes_and_overflow() {
        let w = Workspace::new(100, 384, 128, 1536, true, false).unwrap();
        assert_eq!(w.hidden, 38_400);
        assert_eq!(w.emb, 12_800);
        assert_eq!(w.qkv, 115_200);
        assert_eq!(w.ffn, 153_600);
        assert_eq!(w.conv_in, 0);
        assert!(Workspace::new(1 << 21, 384, 384, 1536, false, false).is_err());
        assert_eq!(capacity_for(1), 64);
        assert_eq!(capacity_for(100), 128);
    }
}
