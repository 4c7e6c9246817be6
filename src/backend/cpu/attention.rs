//! Disentangled self-attention over packed sequences.
//!
//! The keys of each sequence longer than one query block are transposed once per call into its
//! own [nH, d, n] slab of a reused scratch buffer (every query block of the sequence reads
//! them). Then one rayon task per (sequence, block of query rows), all heads (or a group of
//! heads, for one short sentence): content scores `Q K^T`, the c2p term `Q_i . PK[idx(i,j)]`
//! and the p2c term `K_j . PQ[idx(i,j)]` (PK/PQ precomputed at load time, stored per head
//! transposed as [d, 2S] so the inner loops are broadcast-FMAs over contiguous memory, with
//! the rows of the small offsets kept again compactly for short sentences), scale, softmax,
//! and `P V`. Only a [block, L] score tile and a
//! [block, L + block] c2p tile exist at a time (per thread, reused); no [L, 2S] matrix is built;
//! only real tokens are touched.
//!
//! [`attention_reference`] is the plain per-element version the fast one is tested against.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::relpos::RelPosTable;

/// Query rows per task: 29 so that a group of 4 keys' p2c window (block + 3 positions) is
/// exactly one 32-wide tile.
const QUERY_BLOCK: usize = 29;

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

/// Offsets `-r ..= r` (rows `S - r ..= S + r`) for each `r` here are kept again, compact: they
/// are all the rows a sequence of up to `r + 1` tokens touches.
const NEAR: [usize; 2] = [16, 32];

/// A projected rel-embedding table (PK or PQ) laid out per head, transposed: [nH, d, 2S].
#[derive(Clone, Debug, Default)]
pub struct PosTable {
    /// 2S
    rows: usize,
    /// row stride of the per-head [d, 2S] operands (see [`conflict_free_stride`])
    ld: usize,
    head_dim: usize,
    data: Vec<f32>,
    /// Bands of rows around offset 0, narrowest first, each `(first row, rows first ..
    /// first + band.rows as a compact table)`; only when the table is much longer. A short
    /// sentence's attention reads only such a band, and after each layer's weight stream it
    /// comes from DRAM: in the full table a band is d snippets of ~2 lines per head, 2S floats
    /// apart; here it is one contiguous block (74 KB for +-16) that the hardware prefetchers
    /// stream. One 16-token sentence: the attention ~30% faster, the forward ~3%.
    near: Vec<(usize, PosTable)>,
}

impl PosTable {
    /// From the row-major projection `[2S, H]` (heads side by side in each row; row S is
    /// offset 0).
    pub fn from_rows(proj: &[f32], rows: usize, heads: usize, head_dim: usize) -> Self {
        let mut table = Self::transposed(proj, rows, heads, head_dim);
        let h = heads * head_dim;
        for r in NEAR.into_iter().filter(|&r| rows > 4 * r) {
            let (first, len) = (rows / 2 - r, 2 * r + 1);
            let band = &proj[first * h..(first + len) * h];
            table
                .near
                .push((first, Self::transposed(band, len, heads, head_dim)));
        }
        table
    }

    fn transposed(proj: &[f32], rows: usize, heads: usize, head_dim: usize) -> Self {
        let h = heads * head_dim;
        assert_eq!(proj.len(), rows * h);
        let ld = conflict_free_stride(rows);
        let mut data = vec![0.0; heads * head_dim * ld];
        for hd in 0..heads {
            for t in 0..head_dim {
                let dst = &mut data[(hd * head_dim + t) * ld..][..rows];
                for (r, v) in dst.iter_mut().enumerate() {
                    *v = proj[r * h + hd * head_dim + t];
                }
            }
        }
        PosTable {
            rows,
            ld,
            head_dim,
            data,
            near: Vec::new(),
        }
    }

    /// Whether the table exists (its position term is used).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Head `hd` as a [d, 2S] operand (row t: component t of every projected position).
    fn head(&self, hd: usize) -> Mat<'_> {
        let size = self.head_dim * self.ld;
        Mat::new(&self.data[hd * size..(hd + 1) * size], self.ld, self.rows)
    }

    /// Head `hd` as an operand holding at least positions `lo .. hi`, and the position of its
    /// column 0: the compact near band when it covers them, else the full table (0).
    fn head_covering(&self, hd: usize, lo: usize, hi: usize) -> (Mat<'_>, usize) {
        match self
            .near
            .iter()
            .find(|(first, band)| lo >= *first && hi <= first + band.rows)
        {
            Some((first, band)) => (band.head(hd), *first),
            None => (self.head(hd), 0),
        }
    }
}

/// Row stride (in floats) for a transposed operand of `len` columns whose rows the tile kernels
/// walk one after another: at least `len`, a whole number of 64-byte lines, and an odd number of
/// them, so consecutive rows fall into different L1 sets. (A power-of-two stride such as
/// 2S = 512 floats would put all 64 rows of a head into 2 of the 64 sets and evict them from
/// L1 between uses.)
pub fn conflict_free_stride(len: usize) -> usize {
    let lines = len.div_ceil(16).max(1);
    16 * (lines | 1)
}

/// Per-thread scratch, grown on demand and reused across calls.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>, // [d, n]   this head's keys, transposed (sequences of a single block)
    s: Vec<f32>,  // [bq, n]  scores
    c: Vec<f32>,  // [bq, n + bq] c2p products, or [n, bq + 3] p2c products
    o: Vec<f32>,  // [bq, d]  this head's output rows, before they go to ctx
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `ctx[T, H] = attention(qkv[T, 3H])` for every packed sequence (fast path). `keys_t` is
/// scratch, grown here as needed and reused across calls (the keys of each sequence longer
/// than one query block, transposed per head: [nH, d, n] with rows padded to a conflict-free
/// stride, one such slab per sequence, end to end).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &PosTable,
    pos_query: &PosTable,
    relpos: &RelPosTable,
    keys_t: &mut Vec<f32>,
    ctx: &mut [f32],
) {
    attention_at(
        simd(),
        p,
        qkv,
        offsets,
        pos_key,
        pos_query,
        relpos,
        keys_t,
        ctx,
    )
}

/// For each sequence longer than one query block (`n` tokens from `start`), per head, its keys
/// as a [d, n] operand with rows contiguous over its tokens (the `K^T` of the content scores):
/// `slab[t * ld + j] = k_{start + j}[hd * d + t]`, ld = `conflict_free_stride(n)`. The slabs lie
/// end to end in `keys_t` in sequence order, heads inside (see `Task::keys_at`); one rayon task
/// per (sequence, head). A sequence's own slab, rather than one [d, T] operand for the whole
/// batch, keeps the rows a tile walks `ld` apart (576 B at n = 128) instead of a whole batch
/// apart (32 x 128: 16 KB, 64 pages per tile).
fn transpose_keys(
    level: Level,
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    d: usize,
    keys_t: &mut [f32],
) {
    let h = heads * d;
    let mut slabs = Vec::new();
    let mut rest = keys_t;
    for w in offsets.windows(2) {
        let n = w[1] - w[0];
        if let Some(ld) = key_slab_ld(n) {
            for hd in 0..heads {
                let (slab, tail) = std::mem::take(&mut rest).split_at_mut(d * ld);
                slabs.push((w[0], n, ld, hd, slab));
                rest = tail;
            }
        }
    }
    slabs.into_par_iter().for_each(|(start, n, ld, hd, kt)| {
        let keys = &qkv[start * 3 * h + h + hd * d..];
        transpose(level, keys, 3 * h, n, d, kt, ld);
    });
}

/// `dst[t * ld + j] = src[j * stride + t]` for `j < n`, `t < d`: `n` rows of `d` values (one
/// head's keys) into a `[d, ld]` operand. AVX-512 transposes 16 x 16 blocks in registers when
/// `d` is a multiple of 16 (the scalar loop writes every value to another cache line: at
/// 256 x 32 it was a fifth of the attention).
fn transpose(
    level: Level,
    src: &[f32],
    stride: usize,
    n: usize,
    d: usize,
    dst: &mut [f32],
    ld: usize,
) {
    if n == 0 || d == 0 {
        return;
    }
    assert!(
        (n - 1) * stride + d <= src.len() && (d - 1) * ld + n <= dst.len() && n <= ld,
        "transpose operands"
    );
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && d.is_multiple_of(16) {
        // SAFETY: avx512f was detected (`Level::Avx512` comes from `simd()`); the extents
        // were checked above.
        return unsafe { x86::transpose_avx512(src, stride, n, d, dst, ld) };
    }
    let _ = level;
    for (j, row) in src.chunks(stride).take(n).enumerate() {
        for (t, &v) in row[..d].iter().enumerate() {
            dst[t * ld + j] = v;
        }
    }
}

/// The row stride of a sequence's transposed-keys slab, if it gets one: sequences longer than
/// one query block (a shorter one transposes its keys inside its single task).
fn key_slab_ld(n: usize) -> Option<usize> {
    (n > QUERY_BLOCK).then(|| conflict_free_stride(n))
}

/// Floats of the transposed-keys scratch for these sequences: a [nH, d, ld] slab for each one
/// that gets one.
fn keys_t_len(offsets: &[usize], heads: usize, head_dim: usize) -> usize {
    let lds = offsets.windows(2).filter_map(|w| key_slab_ld(w[1] - w[0]));
    heads * head_dim * lds.sum::<usize>()
}

#[allow(clippy::too_many_arguments)]
fn attention_at(
    level: Level,
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &PosTable,
    pos_query: &PosTable,
    relpos: &RelPosTable,
    keys_t: &mut Vec<f32>,
    ctx: &mut [f32],
) {
    let h = p.heads * p.head_dim;
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * 3 * h && ctx.len() >= tokens * h);
    // Sequences longer than one query block share one transposition of their keys; a sequence
    // of a single block transposes its own keys in its task (cheaper than an extra pass).
    let need = keys_t_len(offsets, p.heads, p.head_dim);
    if need > 0 {
        grow(keys_t, need);
        transpose_keys(level, qkv, offsets, p.heads, p.head_dim, keys_t);
    }
    let keys_t: &[f32] = keys_t;
    let ctx = CtxPtr(ctx.as_mut_ptr());
    let tasks = split_tasks(offsets, p.heads, rayon::current_num_threads());
    tasks.into_par_iter().for_each(|task| {
        SCRATCH.with(|cell| {
            let mut sc = cell.borrow_mut();
            let job = Job {
                p,
                qkv,
                task,
                keys_t,
                pos_key,
                pos_query,
                relpos,
                ctx,
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx512f was detected at run time by `simd()`.
                Level::Avx512 => unsafe { block_avx512(&job, &mut sc) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx2 and fma were detected at run time by `simd()`.
                Level::Avx2 => unsafe { block_avx2(&job, &mut sc) },
                Level::Portable => block(&job, &mut sc, Level::Portable),
            }
        })
    });
}

/// One task: query rows `q0 .. q0 + rows` of the sequence at `start` (of `n` tokens), heads
/// `h0 .. h1`. Its output is that rectangle of ctx, which no other task touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Task {
    start: usize,
    n: usize,
    /// where the sequence's transposed keys start in `keys_t`, in units of `nH * d` floats
    /// (the sum of the slab strides, `key_slab_ld`, of the sequences before it)
    keys_at: usize,
    q0: usize,
    rows: usize,
    h0: usize,
    h1: usize,
}

/// The tasks of one call: each sequence in as few query blocks as QUERY_BLOCK allows, of even
/// size (32 rows: 16 + 16, not 29 + 3); when that gives fewer than two tasks per thread (a
/// sentence or two), each block is split further into groups of heads.
fn split_tasks(offsets: &[usize], heads: usize, threads: usize) -> Vec<Task> {
    let mut blocks = Vec::new();
    let mut keys_at = 0;
    for w in offsets.windows(2) {
        let n = w[1] - w[0];
        let rows = n.div_ceil(n.div_ceil(QUERY_BLOCK).max(1)).max(1);
        for q0 in (0..n).step_by(rows) {
            blocks.push((w[0], n, keys_at, q0, rows.min(n - q0)));
        }
        keys_at += key_slab_ld(n).unwrap_or(0);
    }
    let want = 2 * threads.max(1);
    let groups = if blocks.len() >= want {
        1
    } else {
        want.div_ceil(blocks.len().max(1)).clamp(1, heads.max(1))
    };
    let mut tasks = Vec::with_capacity(blocks.len() * groups);
    for (start, n, keys_at, q0, rows) in blocks {
        for g in 0..groups {
            let (h0, h1) = (g * heads / groups, (g + 1) * heads / groups);
            tasks.push(Task {
                start,
                n,
                keys_at,
                q0,
                rows,
                h0,
                h1,
            });
        }
    }
    tasks
}

/// The attention output `ctx` ([T, H]) shared by the tasks of one call.
#[derive(Clone, Copy)]
struct CtxPtr(*mut f32);
// SAFETY: only `block` writes through it, each task to its own (rows, heads) rectangle of ctx
// (`split_tasks` covers every (row, head) exactly once), while `attention_at` holds the only
// `&mut` to ctx and nothing reads it until the parallel section has ended.
unsafe impl Send for CtxPtr {}
// SAFETY: as for Send.
unsafe impl Sync for CtxPtr {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// The instruction set the kernel runs with, detected once. `DEBERTA_EMBED_PORTABLE=1` forces
/// the portable path (tests, debugging).
fn simd() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("DEBERTA_EMBED_PORTABLE").is_some() {
            return Level::Portable;
        }
        // (block_avx512 is compiled with avx2 and fma as well)
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

// The whole block is compiled per instruction set so that the softmax and gather loops
// around the tiles vectorize for it too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512(job: &Job<'_>, sc: &mut Scratch) {
    block(job, sc, Level::Avx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(job: &Job<'_>, sc: &mut Scratch) {
    block(job, sc, Level::Avx2)
}

/// A strided row-major operand: row `r` is `data[r * ld..r * ld + len]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    ld: usize,
    len: usize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], ld: usize, len: usize) -> Self {
        Mat { data, ld, len }
    }
    /// Whether rows `0..rows` lie inside `data`.
    fn covers(&self, rows: usize) -> bool {
        rows == 0 || (rows - 1) * self.ld + self.len <= self.data.len()
    }
}

/// Which columns of `b` a row of a tile product reads.
#[derive(Clone, Copy)]
enum Cols<'a> {
    /// Every row: columns `o .. o + w`.
    At(usize),
    /// Row i: columns `f(g) .. f(g) + w`, `g` the first row of i's group of 4 (so p2c can
    /// slide its window with the keys).
    SlidingPer4(&'a dyn Fn(usize) -> usize),
}

impl Cols<'_> {
    /// First column for the row group starting at row `i` (a multiple of the group size).
    #[inline(always)]
    fn first(&self, i: usize) -> usize {
        match *self {
            Cols::At(o) => o,
            Cols::SlidingPer4(f) => f(i / 4 * 4),
        }
    }
}

/// `out[i * ldo + c] = sum_{t < d} a[i][t] * b[t][first(i) + c]` for `i < nrows`, `c < w`
/// (see [`Cols`]). Columns at or past `b.len` read as zero. Register tile: 8 rows x 32 columns
/// (AVX-512, 4 x 32 for sliding windows), 4 x 16 (AVX2), scalar otherwise.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_gemm(
    level: Level,
    nrows: usize,
    d: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    cols: Cols<'_>,
    w: usize,
    out: &mut [f32],
    ldo: usize,
) {
    if nrows == 0 || w == 0 {
        return;
    }
    // Everything the SIMD kernels touch is checked here, in safe code.
    assert!(
        a.len >= d && a.covers(nrows) && b.covers(d),
        "attention tile operands"
    );
    assert!((nrows - 1) * ldo + w <= out.len(), "attention tile output");
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected (Level::Avx512 comes from `simd()`); operand extents were
        // checked above and the kernel masks every column past `b.len` and `w`.
        Level::Avx512 => unsafe {
            match cols {
                Cols::At(_) => x86::tile_avx512::<8>(nrows, d, a, b, cols, w, out, ldo),
                Cols::SlidingPer4(_) => x86::tile_avx512::<4>(nrows, d, a, b, cols, w, out, ldo),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2+fma were detected; same extents and masking as above.
        Level::Avx2 => unsafe { x86::tile_avx2(nrows, d, a, b, cols, w, out, ldo) },
        Level::Portable => {
            for i in 0..nrows {
                let o = cols.first(i);
                let arow = &a.data[i * a.ld..i * a.ld + d];
                let orow = &mut out[i * ldo..i * ldo + w];
                orow.fill(0.0);
                for (t, &av) in arow.iter().enumerate() {
                    let brow = &b.data[t * b.ld..t * b.ld + b.len];
                    for (c, ov) in orow.iter_mut().enumerate() {
                        if let Some(&bv) = brow.get(o + c) {
                            *ov += av * bv;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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

    /// See `tile_gemm`; `R` rows per register tile (4 or 8; 4 for `Cols::SlidingPer4`).
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
        let ap = a.data.as_ptr();
        let bp = b.data.as_ptr();
        let op = out.as_mut_ptr();
        let mut i = 0;
        while i < nrows {
            let rn = (nrows - i).min(R);
            let o = cols.first(i);
            // rows past the end repeat the last real row (computed, never stored)
            let ar: [*const f32; R] = std::array::from_fn(|k| ap.add((i + k.min(rn - 1)) * a.ld));
            let mut c0 = 0;
            while c0 < w {
                // columns valid in b (past b.len read as 0) and wanted in out
                let vb = b.len as isize - (o + c0) as isize;
                let vw = (w - c0) as isize;
                let lm0 = mask16(vb.min(vw));
                let lm1 = mask16(vb.min(vw) - 16);
                let base = bp.add(o + c0);
                // (plain loads where all 32 columns are valid: masked loads are markedly slower
                // on some CPUs, e.g. AMD Zen 5)
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
                c0 += 32;
            }
            i += R;
        }
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
    /// `n * pw` values and `s` `rows * n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_transposed_avx512(
        c: &[f32],
        pw: usize,
        shift: &dyn Fn(usize) -> usize,
        n: usize,
        rows: usize,
        s: &mut [f32],
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
                        let at = sp.add((i0 + i) * n + j0);
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
}

/// Everything one task needs.
struct Job<'a> {
    p: &'a AttentionParams,
    qkv: &'a [f32],
    task: Task,
    /// the transposed keys of the long sequences (see `transpose_keys`)
    keys_t: &'a [f32],
    pos_key: &'a PosTable,
    pos_query: &'a PosTable,
    relpos: &'a RelPosTable,
    /// where the task's rows and heads go
    ctx: CtxPtr,
}

/// In-place softmax of `x * scale`, with vectorizable reductions (16 partial lanes; the
/// fixed-width chunks let the compiler keep each pass in vector registers).
#[inline(always)]
fn softmax_scaled<const FMA: bool>(x: &mut [f32], scale: f32) {
    const L: usize = 16;
    let split = x.len() / L * L;
    let mut mx = [f32::NEG_INFINITY; L];
    for ch in x[..split].chunks_exact_mut(L) {
        for k in 0..L {
            ch[k] *= scale;
            mx[k] = mx[k].max(ch[k]);
        }
    }
    let mut max = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x[split..].iter_mut() {
        *v *= scale;
        max = max.max(*v);
    }
    let mut sm = [0.0f32; L];
    for ch in x[..split].chunks_exact_mut(L) {
        for k in 0..L {
            ch[k] = super::ops::exp_with::<FMA>(ch[k] - max);
            sm[k] += ch[k];
        }
    }
    let mut sum = sm.iter().sum::<f32>();
    for v in x[split..].iter_mut() {
        *v = super::ops::exp_with::<FMA>(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn block(job: &Job<'_>, sc: &mut Scratch, level: Level) {
    let p = job.p;
    let (d, nh) = (p.head_dim, p.heads);
    let h = nh * d;
    let Task {
        start,
        n,
        keys_at,
        q0,
        rows: bq,
        h0,
        h1,
    } = job.task;
    debug_assert!(h0 < h1 && h1 <= nh && q0 + bq <= n);
    // index table entry for offset r = i - j
    let tbl = job.relpos.as_slice();
    let off = job.relpos.max_len() - 1;
    let idx = |i: usize, j: usize| tbl[i + off - j] as usize;
    // Whether every offset this sequence has (|i - j| < n) maps to its own row, consecutively
    // (`idx(i, j) = i - j + idx(0, 0)`: no log bucket reached), so the c2p / p2c gathers become
    // contiguous copies.
    let linear = tbl[off + 1 - n..off + n]
        .windows(2)
        .all(|w| w[1] == w[0] + 1);

    // c2p positions a block can touch (n + bq - 1 offsets), p2c positions a group of 4 keys
    // can touch (bq + 3 offsets); neighbouring offsets are at most `step` rows apart, and no
    // range is wider than the table's 2S rows
    let (step, rows) = (
        job.relpos.max_step().max(1),
        job.pos_key.rows.max(job.pos_query.rows),
    );
    let cw = ((n + bq - 2) * step + 1).min(rows.max(n + bq - 1));
    let pw = ((bq + 2) * step + 1).min(rows.max(bq + 3));
    grow(&mut sc.s, bq * n);
    grow(&mut sc.c, (bq * cw).max(n.div_ceil(4) * 4 * pw));
    grow(&mut sc.o, bq * d);
    let slab_ld = key_slab_ld(n);
    if slab_ld.is_none() {
        grow(&mut sc.kt, d * n);
    }
    let Scratch {
        kt: kt_local,
        s,
        c,
        o,
    } = sc;

    for hd in h0..h1 {
        let hs = hd * d;
        // K^T of this head and sequence: row t = component t of keys start .. start + n
        let kt = match slab_ld {
            Some(ld) => Mat::new(&job.keys_t[d * (nh * keys_at + hd * ld)..], ld, n),
            None => {
                let keys = &job.qkv[start * 3 * h + h + hs..];
                transpose(level, keys, 3 * h, n, d, kt_local, n);
                Mat::new(kt_local, n, n)
            }
        };
        let base = start * 3 * h;
        let q = Mat::new(&job.qkv[base + q0 * 3 * h + hs..], 3 * h, d);
        let k = Mat::new(&job.qkv[base + h + hs..], 3 * h, d);
        let v = Mat::new(&job.qkv[base + 2 * h + hs..], 3 * h, d);

        // content scores s[i, j] = q_i . k_j
        tile_gemm(level, bq, d, q, kt, Cols::At(0), n, s, n);

        // c2p: c[i, r - lo] = q_i . PK[r] over the block's position range, gathered into s
        if p.c2p {
            let lo = idx(q0, n - 1);
            let w = idx(q0 + bq - 1, 0) - lo + 1;
            let (pk, first) = job.pos_key.head_covering(hd, lo, lo + w);
            tile_gemm(level, bq, d, q, pk, Cols::At(lo - first), w, c, cw);
            for i in 0..bq {
                let (srow, crow) = (&mut s[i * n..(i + 1) * n], &c[i * cw..]);
                if linear {
                    // idx(q0 + i, j) - lo = i + (n - 1 - j): row i's window, read backwards
                    for (sv, &cv) in srow.iter_mut().zip(crow[i..i + n].iter().rev()) {
                        *sv += cv;
                    }
                } else {
                    for (j, sv) in srow.iter_mut().enumerate() {
                        *sv += crow[idx(q0 + i, j) - lo];
                    }
                }
            }
        }

        // p2c: c[j, r - lo(g)] = k_j . PQ[r], the window sliding with each group of 4 keys
        // (g = first key of the group, whose window [idx(q0, g+3), ..] covers all 4)
        if p.p2c {
            let glo = |g: usize| idx(q0, (g + 3).min(n - 1));
            // (idx falls as j grows: the last group's window starts lowest, the first's ends
            // highest)
            let (lo, hi) = (glo((n - 1) / 4 * 4), glo(0) + pw);
            let (pq, first) = job.pos_query.head_covering(hd, lo, hi);
            let window = |g: usize| glo(g) - first;
            tile_gemm(level, n, d, k, pq, Cols::SlidingPer4(&window), pw, c, pw);
            if linear {
                // idx(q0 + i, j) - glo(g) = i + min(g + 3, n - 1) - j
                let shift = |j: usize| (j / 4 * 4 + 3).min(n - 1) - j;
                add_transposed(level, c, pw, &shift, n, bq, s);
            } else {
                // Log buckets: first gather each key's values into query order in place (row
                // j: `c[j][i] = c[j][idx(q0 + i, j) - glo(g)]`, read through a copy of the
                // row), then add them like the linear case. (Adding straight from the gather
                // wrote each value to another score row: at 1 x 512 that was 13% of the
                // forward.)
                let mut row = vec![0.0f32; pw];
                for j in 0..n {
                    let crow = &mut c[j * pw..(j + 1) * pw];
                    let lo = glo(j / 4 * 4);
                    row[..pw].copy_from_slice(crow);
                    // idx(q0 + i, j) for i < bq: entries q0 + off - j .. + bq of the table
                    let at = &tbl[q0 + off - j..][..bq];
                    for (v, &r) in crow.iter_mut().zip(at) {
                        *v = row[r as usize - lo];
                    }
                }
                add_transposed(level, c, pw, &|_| 0, n, bq, s);
            }
        }

        // softmax rows, then out[i, :] = sum_j p_ij v_j
        for i in 0..bq {
            // (the SIMD levels are compiled with `fma`)
            if level == Level::Portable {
                softmax_scaled::<false>(&mut s[i * n..(i + 1) * n], p.scale);
            } else {
                softmax_scaled::<true>(&mut s[i * n..(i + 1) * n], p.scale);
            }
        }
        let p_rows = Mat::new(s, n, n);
        tile_gemm(level, bq, n, p_rows, v, Cols::At(0), d, o, d);
        for (i, row) in o.chunks_exact(d).take(bq).enumerate() {
            // SAFETY: ctx holds the call's `tokens` rows of `h` floats (`attention_at` checks
            // its length) and `start + q0 + i` is one of this sequence's rows, `hs + d <= h`:
            // the write stays inside ctx, in this task's own rectangle (see `CtxPtr`).
            unsafe {
                let dst = job.ctx.0.add((start + q0 + i) * h + hs);
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst, d);
            }
        }
    }
}

/// `s[i * n + j] += c[j * pw + shift(j) + i]` for `i < rows`, `j < n`: the p2c products (one
/// row per key) added to the score rows (one per query). AVX-512 goes through 16 x 16 blocks
/// transposed in registers; the plain loop writes every value to another row (at 32 x 128 it
/// was 8% of the attention).
fn add_transposed(
    level: Level,
    c: &[f32],
    pw: usize,
    shift: &dyn Fn(usize) -> usize,
    n: usize,
    rows: usize,
    s: &mut [f32],
) {
    assert!(
        (0..n).all(|j| shift(j) + rows <= pw) && c.len() >= n * pw && s.len() >= rows * n,
        "p2c operands"
    );
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: avx512f was detected (`Level::Avx512` comes from `simd()`); the extents were
        // checked above.
        return unsafe { x86::add_transposed_avx512(c, pw, shift, n, rows, s) };
    }
    let _ = level;
    for j in 0..n {
        let from = &c[j * pw + shift(j)..][..rows];
        for (i, &v) in from.iter().enumerate() {
            s[i * n + j] += v;
        }
    }
}

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
                        .map(|j| scores[j] / sum * row(j)[2 * h + hs + t])
                        .sum();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::XorShift;

    #[test]
    fn tasks_cover_every_row_and_head_once() {
        let cases: [(&[usize], usize); 6] = [
            (&[0, 16], 2),
            (&[0, 1], 8),
            (&[0, 16, 16, 60], 2),
            (&[0, 512], 2),
            (&[0, 7, 40, 41, 100, 130, 200, 230, 250], 1),
            (&[0, 3, 6, 9, 12, 15, 18, 21, 24, 27], 16),
        ];
        let heads = 6;
        for (offsets, threads) in cases {
            let tasks = split_tasks(offsets, heads, threads);
            let tokens = *offsets.last().unwrap();
            let mut seen = vec![0u8; tokens * heads];
            for t in &tasks {
                assert!(t.h0 < t.h1 && t.h1 <= heads && t.rows > 0 && t.q0 + t.rows <= t.n);
                assert!(t.rows <= QUERY_BLOCK.max(t.n.div_ceil(t.n.div_ceil(QUERY_BLOCK))));
                for i in t.start + t.q0..t.start + t.q0 + t.rows {
                    for hd in t.h0..t.h1 {
                        seen[i * heads + hd] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{offsets:?}: {tasks:?}");
            // a single short sentence still gives every thread work
            if offsets.len() == 2 && tokens <= QUERY_BLOCK {
                assert!(tasks.len() >= threads.min(heads), "{offsets:?}: {tasks:?}");
            }
        }
    }

    fn check(
        lens: &[usize],
        heads: usize,
        d: usize,
        buckets: i64,
        max_rel: usize,
        c2p: bool,
        p2c: bool,
    ) {
        let h = heads * d;
        let span = if buckets > 0 {
            buckets as usize
        } else {
            max_rel
        };
        let max_len = *lens.iter().max().unwrap();
        let relpos = RelPosTable::new(max_len, buckets, max_rel, span);
        let mut rng = XorShift(0x1234_5678 + lens.len() as u64 * 7 + d as u64);
        let t: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..t * 3 * h).map(|_| rng.normal()).collect();
        let pk: Vec<f32> = (0..2 * span * h).map(|_| rng.normal()).collect();
        let pq: Vec<f32> = (0..2 * span * h).map(|_| rng.normal()).collect();
        let mut offsets = vec![0];
        for &l in lens {
            offsets.push(offsets.last().unwrap() + l);
        }
        let p = AttentionParams {
            heads,
            head_dim: d,
            scale: 1.0 / ((d * 3) as f32).sqrt(),
            c2p,
            p2c,
        };
        let mut want = vec![0.0; t * h];
        attention_reference(&p, &qkv, &offsets, &pk, &pq, &relpos, &mut want);
        let pkt = PosTable::from_rows(&pk, 2 * span, heads, d);
        let pqt = PosTable::from_rows(&pq, 2 * span, heads, d);
        for level in levels() {
            let mut got = vec![f32::NAN; t * h]; // poisoned: every element must be written
            let mut keys_t = vec![f32::NAN; keys_t_len(&offsets, heads, d)];
            attention_at(
                level,
                &p,
                &qkv,
                &offsets,
                &pkt,
                &pqt,
                &relpos,
                &mut keys_t,
                &mut got,
            );
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(
                    0.0f32,
                    |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
                );
            assert!(
                err < 2e-5,
                "{level:?}: lens {lens:?} d {d} buckets {buckets}: max err {err}"
            );
        }
    }

    /// Every instruction-set level this machine can run.
    fn levels() -> Vec<Level> {
        let mut v = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Level::Avx2);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                v.push(Level::Avx512);
            }
        }
        v
    }

    #[test]
    fn fast_attention_matches_reference() {
        check(&[1], 2, 16, 256, 512, true, true);
        check(&[7, 1, 33], 3, 12, -1, 12, true, true);
        check(&[40, 5], 2, 32, 16, 64, true, false);
        check(&[64, 17], 2, 64, 8, 32, false, true);
        check(&[130], 1, 64, 256, 512, true, true);
        check(&[70, 3, 31], 6, 64, 32, 128, false, false);
        check(&[257, 9], 2, 32, 256, 512, true, true);
        check(&[45], 1, 128, 16, 64, true, true);
        check(&[20], 2, 100, -1, 24, true, true);
        // around the near bands' edges (+-16 serves up to 17 tokens, +-32 up to 33)
        check(&[16, 17, 18, 33, 34, 2], 6, 64, 256, 512, true, true);
        // steep log buckets: neighbouring offsets up to several rows apart (max_relative_positions
        // - 1 < e * position_buckets / 2), wider than a block's offsets; from 1 up to over 2S
        check(&[60, 1, 29, 30, 9], 2, 16, 8, 7, true, true);
        check(&[100, 33], 2, 32, 64, 40, true, true);
        check(&[64, 5], 1, 8, 16, 10, true, false);
        check(&[64, 5], 1, 8, 16, 10, false, true);
    }

    #[test]
    fn transpose_matches_the_plain_loop() {
        for level in levels() {
            for d in [12, 16, 64] {
                for n in [1, 15, 16, 17, 33, 128] {
                    let (stride, ld) = (3 * d + 5, conflict_free_stride(n));
                    let src: Vec<f32> = (0..n * stride).map(|v| v as f32).collect();
                    let mut dst = vec![f32::NAN; d * ld];
                    transpose(level, &src, stride, n, d, &mut dst, ld);
                    for t in 0..d {
                        for j in 0..ld {
                            let got = dst[t * ld + j];
                            if j < n {
                                assert_eq!(got, src[j * stride + t], "{level:?} n {n} d {d}");
                            } else {
                                assert!(got.is_nan(), "{level:?} n {n} d {d}: wrote padding");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn add_transposed_matches_the_plain_loop() {
        for level in levels() {
            for (n, rows) in [(1, 1), (16, 16), (17, 5), (33, 26), (128, 26), (40, 29)] {
                let pw = rows + 3;
                let shift = |j: usize| (j * 7) % 4;
                let c: Vec<f32> = (0..n * pw).map(|v| v as f32).collect();
                let base: Vec<f32> = (0..rows * n).map(|v| 0.5 * v as f32).collect();
                let mut got = base.clone();
                add_transposed(level, &c, pw, &shift, n, rows, &mut got);
                for i in 0..rows {
                    for j in 0..n {
                        let want = base[i * n + j] + c[j * pw + shift(j) + i];
                        assert_eq!(
                            got[i * n + j],
                            want,
                            "{level:?} n {n} rows {rows} at {i},{j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn near_bands_hold_the_middle_rows() {
        let (rows, heads, d) = (512, 2, 8);
        let proj: Vec<f32> = (0..rows * heads * d).map(|v| v as f32).collect();
        let table = PosTable::from_rows(&proj, rows, heads, d);
        // (positions wanted) -> first position of the operand that serves them
        let cases = [
            ((256 - 16, 256 + 17), 240),
            ((256 - 15, 256 + 16), 240),
            ((256 - 17, 256 + 16), 224),
            ((256 - 16, 256 + 18), 224),
            ((256 - 32, 256 + 33), 224),
            ((256 - 33, 256), 0),
            ((0, 512), 0),
        ];
        for ((lo, hi), want) in cases {
            for hd in 0..heads {
                let (m, first) = table.head_covering(hd, lo, hi);
                assert_eq!(first, want, "positions {lo}..{hi}");
                assert!(first + m.len >= hi);
                // every position it serves has the full table's values
                for t in 0..d {
                    for pos in lo..hi {
                        let got = m.data[t * m.ld + pos - first];
                        assert_eq!(got, proj[pos * heads * d + hd * d + t]);
                    }
                }
            }
        }
        // short tables keep no bands
        let small = PosTable::from_rows(&proj[..64 * heads * d], 64, heads, d);
        assert!(small.near.is_empty());
    }
}
