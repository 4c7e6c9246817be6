//! Disentangled self-attention over packed sequences.
//!
//! The fp32 path: the keys of each sequence longer than one query block are transposed once
//! per call into its own [nH, d, n] slab of a reused scratch buffer, with its keys and values
//! again as [n, d] rows per head (every query block of the sequence reads them). Then one
//! rayon task per (sequence, block of query rows), all heads (or a group of heads, for one
//! short sentence; one head, head by head, for a long sequence): content scores `Q K^T`, the c2p term `Q_i . PK[idx(i,j)]`
//! and the p2c term `K_j . PQ[idx(i,j)]` (PK/PQ precomputed at load time, stored per head
//! transposed as [d, 2S] so the inner loops are broadcast-FMAs over contiguous memory, with
//! the rows of the small offsets kept again compactly for short sentences), scale, softmax,
//! and `P V`. Only a [block, L] score tile and a
//! [block, L + block] c2p tile exist at a time (per thread, reused); no [L, 2S] matrix is built;
//! only real tokens are touched.
//!
//! With [`AttentionParams::tiles`] (bf16 and int8 on CPUs with AMX-BF16), sequences of at
//! least 24 tokens run the same steps with the four products on the tile unit instead
//! (`tiles.rs`).
//!
//! [`attention_reference`] (in `reference.rs`) is the plain per-element version the fast one is
//! tested against (in `tests.rs`); the x86-64 SIMD kernels are in `x86.rs`.

mod reference;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tiles;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Without x86-64 there are no tiles: the attention always runs in fp32.
#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    pub fn tiles_available(_head_dim: usize) -> bool {
        false
    }
    #[derive(Default)]
    pub struct PosPanels;
    impl PosPanels {
        pub fn from_rows(_: &[f32], _: usize, _: usize, _: usize) -> Self {
            PosPanels
        }
    }
    #[derive(Default)]
    pub struct TileScratch;
    pub const MIN_TOKENS: usize = usize::MAX;
}

use std::cell::RefCell;

use rayon::prelude::*;

use crate::relpos::RelPosTable;

pub use self::reference::{attention_reference, attention_reference_with};
pub use self::tiles::tiles_available;

/// Whether a sequence of `n` tokens runs on the tiles under [`AttentionParams::tiles`]: from
/// [`tiles::MIN_TOKENS`] tokens on. Shorter ones run the fp32 path, where the tile path's
/// per-sequence preparation (operands rounded and laid out per head) costs more than its
/// products save (BENCHMARKS.md, "attention on AMX tiles"). Decided per sequence, so a
/// sequence's result does not depend on the batch it comes in.
fn on_tiles(n: usize) -> bool {
    n >= tiles::MIN_TOKENS
}

/// The one decision whether a model's attention runs on the tiles ([`AttentionParams::tiles`]):
/// with the opt-in low precisions (bf16, int8), where [`tiles_available`] for its head size.
pub fn tiles_for(precision: crate::Precision, head_dim: usize) -> bool {
    matches!(precision, crate::Precision::BF16 | crate::Precision::INT8)
        && tiles_available(head_dim)
}
use self::tiles::{PosPanels, TileScratch};

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
    /// The products on the AMX-BF16 tiles (operands rounded to bf16, fp32 sums; see
    /// `tiles.rs`): for the opt-in low precisions, where [`tiles_available`] and the position
    /// tables have their panels ([`PosTable::with_tile_panels`]).
    pub tiles: bool,
}

/// Scratch of the attention, grown as needed and reused across calls: the keys of each
/// sequence longer than one query block, transposed per head (fp32 path: [nH, d, n] with rows
/// padded to a conflict-free stride, one such slab per sequence, end to end), or every
/// sequence's tile operands (tile path).
#[derive(Default)]
pub struct AttentionScratch {
    keys_t: Vec<f32>,
    tiles: TileScratch,
}

/// Offsets `-r ..= r` (rows `S - r ..= S + r`) for each `r` here are kept again, compact: they
/// are all the rows a sequence of up to `r + 1` tokens touches.
const NEAR: [usize; 2] = [16, 32];

/// A projected rel-embedding table (PK or PQ) laid out per head, transposed: [nH, d, 2S]; with
/// [`with_tile_panels`](Self::with_tile_panels), as bf16 tile panels per head too.
#[derive(Default)]
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
    /// stream.
    near: Vec<(usize, PosTable)>,
    /// the tile attention's copy (empty unless asked for)
    panels: PosPanels,
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
            panels: PosPanels::default(),
        }
    }

    /// Keep the table as bf16 tile panels too (for attention with [`AttentionParams::tiles`]);
    /// `proj` is the row-major projection it was built from.
    pub fn with_tile_panels(mut self, proj: &[f32], heads: usize) -> Self {
        self.panels = PosPanels::from_rows(proj, self.rows, heads, self.head_dim);
        self
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

/// `ctx[T, H] = attention(qkv[T, 3H])` for every packed sequence (fast path), on the tiles
/// where `p.tiles` says so.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &PosTable,
    pos_query: &PosTable,
    relpos: &RelPosTable,
    scratch: &mut AttentionScratch,
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
        scratch,
        ctx,
    )
}

/// For each sequence longer than one query block (`n` tokens from `start`), per head, its keys
/// as a [d, n] operand with rows contiguous over its tokens (the `K^T` of the content scores):
/// `slab[t * ld + j] = k_{start + j}[hd * d + t]`, ld = `conflict_free_stride(n)`; then the
/// head's keys and values again as [n, d] rows back to back (the A operand of p2c and the B
/// operand of `P V`: in qkv a head's rows are 3H apart, 4.6 KB at H = 384, more than a page,
/// which the hardware prefetchers do not follow). The slabs ([`head_slab`] floats per head)
/// lie end to end in `keys_t` in sequence order, heads inside (see `Task::keys_at`); one rayon
/// task per (sequence, head). A sequence's own slab, rather than one [d, T] operand for the
/// whole batch, keeps the rows a tile walks `ld` apart (576 B at n = 128) instead of a whole
/// batch apart (32 x 128: 16 KB, 64 pages per tile).
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
                let (slab, tail) = std::mem::take(&mut rest).split_at_mut(head_slab(n, d, ld));
                slabs.push((w[0], n, ld, hd, slab));
                rest = tail;
            }
        }
    }
    slabs.into_par_iter().for_each(|(start, n, ld, hd, slab)| {
        let keys = &qkv[start * 3 * h + h + hd * d..];
        let (kt, rows) = slab.split_at_mut(d * ld);
        transpose(level, keys, 3 * h, n, d, kt, ld);
        let (k, v) = rows.split_at_mut(n * d);
        for (j, (kr, vr)) in k.chunks_exact_mut(d).zip(v.chunks_exact_mut(d)).enumerate() {
            let row = &qkv[(start + j) * 3 * h + h + hd * d..];
            kr.copy_from_slice(&row[..d]);
            vr.copy_from_slice(&row[h..h + d]);
        }
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

/// Floats of the keys scratch for these sequences: `nH` head slabs ([`head_slab`]) for each one
/// that gets them.
fn keys_t_len(offsets: &[usize], heads: usize, head_dim: usize) -> usize {
    let slabs = offsets
        .windows(2)
        .map(|w| sequence_slab(w[1] - w[0], heads, head_dim));
    slabs.sum::<usize>()
}

/// Floats of a sequence of `n` tokens' slabs (all heads; 0 for a single block).
fn sequence_slab(n: usize, heads: usize, head_dim: usize) -> usize {
    key_slab_ld(n).map_or(0, |ld| heads * head_slab(n, head_dim, ld))
}

/// Floats of one head's slab of a sequence of `n` tokens (see `transpose_keys`): `K^T` [d, ld],
/// then K and V [n, d].
fn head_slab(n: usize, d: usize, ld: usize) -> usize {
    d * ld + 2 * n * d
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
    scratch: &mut AttentionScratch,
    ctx: &mut [f32],
) {
    let h = p.heads * p.head_dim;
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * 3 * h && ctx.len() >= tokens * h);
    let threads = rayon::current_num_threads();
    #[cfg(target_arch = "x86_64")]
    if p.tiles {
        // the sequences of at least MIN_TOKENS on the tiles, the others (a single block each,
        // needing no prepared keys) on the fp32 kernels
        let slab = |n: usize| match on_tiles(n) {
            true => tiles::sequence_words(n, p.heads, p.head_dim),
            false => 0,
        };
        let (long, short): (Vec<Task>, Vec<Task>) =
            split_tasks(offsets, p.heads, threads, tiles::BLOCK, &slab)
                .into_iter()
                .partition(|t| on_tiles(t.n));
        let ctx = CtxPtr(ctx.as_mut_ptr());
        tiles::attention_tiles(
            p,
            qkv,
            offsets,
            &pos_key.panels,
            &pos_query.panels,
            relpos,
            &mut scratch.tiles,
            long,
            ctx,
        );
        debug_assert!(short.iter().all(|t| key_slab_ld(t.n).is_none()));
        return run_tasks(level, p, qkv, short, &[], pos_key, pos_query, relpos, ctx);
    }
    let keys_t = &mut scratch.keys_t;
    // Sequences longer than one query block share one transposition of their keys; a sequence
    // of a single block transposes its own keys in its task (cheaper than an extra pass).
    let need = keys_t_len(offsets, p.heads, p.head_dim);
    if need > 0 {
        grow(keys_t, need);
        transpose_keys(level, qkv, offsets, p.heads, p.head_dim, keys_t);
    }
    let keys_t: &[f32] = keys_t;
    let ctx = CtxPtr(ctx.as_mut_ptr());
    let slab = |n: usize| sequence_slab(n, p.heads, p.head_dim);
    let tasks = split_tasks(offsets, p.heads, threads, QUERY_BLOCK, &slab);
    run_tasks(
        level, p, qkv, tasks, keys_t, pos_key, pos_query, relpos, ctx,
    )
}

/// The fp32 kernels on `tasks`, in parallel.
#[allow(clippy::too_many_arguments)]
fn run_tasks(
    level: Level,
    p: &AttentionParams,
    qkv: &[f32],
    tasks: Vec<Task>,
    keys_t: &[f32],
    pos_key: &PosTable,
    pos_query: &PosTable,
    relpos: &RelPosTable,
    ctx: CtxPtr,
) {
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
    /// where the sequence's prepared keys start in the scratch: the sum of the slab sizes of
    /// the sequences before it (floats of transposed keys, or words of tile operands)
    keys_at: usize,
    q0: usize,
    rows: usize,
    h0: usize,
    h1: usize,
}

/// The tasks of one call: each sequence in as few query blocks of at most `block` rows as
/// possible, of even size (32 rows in blocks of 29: 16 + 16, not 29 + 3); when that gives
/// fewer than two tasks per thread (a sentence or two), each block is split further into
/// groups of heads. `slab(n)`: the scratch a sequence of `n` tokens prepares (`Task::keys_at`).
fn split_tasks(
    offsets: &[usize],
    heads: usize,
    threads: usize,
    block: usize,
    slab: &dyn Fn(usize) -> usize,
) -> Vec<Task> {
    let mut blocks = Vec::new();
    let mut keys_at = 0;
    for w in offsets.windows(2) {
        let n = w[1] - w[0];
        let rows = n.div_ceil(n.div_ceil(block).max(1)).max(1);
        for q0 in (0..n).step_by(rows) {
            blocks.push((w[0], n, keys_at, q0, rows.min(n - q0)));
        }
        keys_at += slab(n);
    }
    let want = 2 * threads.max(1);
    let groups = if blocks.len() >= want {
        1
    } else {
        want.div_ceil(blocks.len().max(1)).clamp(1, heads.max(1))
    };
    let mut tasks = Vec::with_capacity(blocks.len() * groups.max(heads));
    let mut i = 0;
    while i < blocks.len() {
        let (start, n, keys_at, ..) = blocks[i];
        let seq = i..i + blocks[i..]
            .iter()
            .take_while(|b| b.0 == start && b.1 == n)
            .count();
        i = seq.end;
        if groups == 1 && n >= HEAD_MAJOR {
            // a long sequence: one task per (head, block), head by head, so that the
            // consecutive tasks a thread takes share one head's operands in its cache
            for hd in 0..heads {
                for &(_, _, _, q0, rows) in &blocks[seq.clone()] {
                    tasks.push(Task {
                        start,
                        n,
                        keys_at,
                        q0,
                        rows,
                        h0: hd,
                        h1: hd + 1,
                    });
                }
            }
            continue;
        }
        for &(start, n, keys_at, q0, rows) in &blocks[seq] {
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
    }
    tasks
}

/// Tokens from which a sequence's tasks are one head each, head by head (see `split_tasks`):
/// at 512 tokens one head's keys, values and position tables are about 0.6 MB, all heads more
/// than a core's L2.
const HEAD_MAJOR: usize = 256;

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

/// The instruction set the kernel runs with: the CPU kernels' one decision
/// (`super::simd::simd_level`, overridden by `DEBERTA_SIMD`); NEON has no attention kernel
/// of its own and runs the portable one.
fn simd() -> Level {
    use super::simd::{simd_level, SimdLevel};
    match simd_level() {
        // (block_avx512 is compiled with avx2 and fma as well: the level checks both)
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => Level::Avx512,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => Level::Avx2,
        _ => Level::Portable,
    }
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
    // (entry `i + off - j` is idx(i, j), the position of query i against key j)
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
    // (+ 32: a lookup may read a whole 32-value window from the last row)
    grow(&mut sc.c, (bq * cw).max(n.div_ceil(4) * 4 * pw) + 32);
    grow(&mut sc.o, bq * d);
    // The smallest and largest entry of tbl[a..=b]: its ends, for a monotone table.
    let monotone = job.relpos.is_monotone();
    let lo_at = |a: usize, b: usize| match monotone {
        true => tbl[a] as usize,
        false => tbl[a..=b].iter().copied().min().unwrap_or(0) as usize,
    };
    let hi_at = |a: usize, b: usize| match monotone {
        true => tbl[b] as usize,
        false => tbl[a..=b].iter().copied().max().unwrap_or(0) as usize,
    };
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
        // K^T of this head and sequence (row t = component t of keys start .. start + n),
        // and its keys and values as [n, d] rows: from the sequence's slab (see
        // `transpose_keys`), or for a single block, K^T transposed here and the rows read in
        // qkv
        let base = start * 3 * h;
        let (kt, k, v) = match slab_ld {
            Some(ld) => {
                let slab = &job.keys_t[keys_at + hd * head_slab(n, d, ld)..];
                let (kt, rows) = slab.split_at(d * ld);
                let (k, v) = rows.split_at(n * d);
                (Mat::new(kt, ld, n), Mat::new(k, d, d), Mat::new(v, d, d))
            }
            None => {
                let keys = &job.qkv[base + h + hs..];
                transpose(level, keys, 3 * h, n, d, kt_local, n);
                (
                    Mat::new(kt_local, n, n),
                    Mat::new(&job.qkv[base + h + hs..], 3 * h, d),
                    Mat::new(&job.qkv[base + 2 * h + hs..], 3 * h, d),
                )
            }
        };
        let q = Mat::new(&job.qkv[base + q0 * 3 * h + hs..], 3 * h, d);

        // content scores s[i, j] = q_i . k_j
        tile_gemm(level, bq, d, q, kt, Cols::At(0), n, s, n);

        // c2p: c[i, r - lo] = q_i . PK[r] over the block's position range, gathered into s
        if p.c2p {
            // entries idx(q0, n - 1) ..= idx(q0 + bq - 1, 0)
            let (a, b) = (q0 + off + 1 - n, q0 + bq - 1 + off);
            let lo = lo_at(a, b);
            let w = hi_at(a, b) - lo + 1;
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
                    // idx(q0 + i, n - 1 ..= 0)
                    let at = &tbl[q0 + i + off + 1 - n..=q0 + i + off];
                    add_positions_reversed(level, monotone, srow, crow, at, lo);
                }
            }
        }

        // p2c: c[j, r - lo(g)] = k_j . PQ[r], the window sliding with each group of 4 keys
        // (g = first key of the group, whose window [idx(q0, g+3), ..] covers all 4)
        if p.p2c {
            // (entries idx(q0, min(g + 3, n - 1)) ..= idx(q0 + bq - 1, g))
            let glo = |g: usize| lo_at(q0 + off - (g + 3).min(n - 1), q0 + bq - 1 + off - g);
            // (monotone: idx falls as j grows, so the last group's window starts lowest and
            // the first's ends highest)
            let (lo, hi) = if monotone {
                (glo((n - 1) / 4 * 4), glo(0) + pw)
            } else {
                let starts = (0..n).step_by(4).map(glo);
                let lo = starts.clone().min().unwrap_or(0);
                (lo, starts.max().unwrap_or(0) + pw)
            };
            let (pq, first) = job.pos_query.head_covering(hd, lo, hi);
            let window = |g: usize| glo(g) - first;
            tile_gemm(level, n, d, k, pq, Cols::SlidingPer4(&window), pw, c, pw);
            if linear {
                // idx(q0 + i, j) - glo(g) = i + min(g + 3, n - 1) - j
                let shift = |j: usize| (j / 4 * 4 + 3).min(n - 1) - j;
                add_transposed(level, c, pw, &shift, n, bq, s, n);
            } else {
                // Log buckets: first gather each key's values into query order in place (row
                // j: `c[j][i] = c[j][idx(q0 + i, j) - glo(g)]`, read through a copy of the
                // row), then add them like the linear case. (Adding straight from the gather
                // would write each value to another score row.)
                for j in 0..n {
                    // idx(q0 + i, j) for i < bq: entries q0 + off - j .. + bq of the table
                    let at = &tbl[q0 + off - j..][..bq];
                    gather_positions(level, monotone, &mut c[j * pw..], at, glo(j / 4 * 4));
                }
                add_transposed(level, c, pw, &|_| 0, n, bq, s, n);
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

/// `s[i * lds + j] += c[j * pw + shift(j) + i]` for `i < rows`, `j < n` (`lds >= n`): the p2c
/// products (one row per key) added to the score rows (one per query). AVX-512 goes through
/// 16 x 16 blocks transposed in registers; the plain loop writes every value to another row.
#[allow(clippy::too_many_arguments)]
fn add_transposed(
    level: Level,
    c: &[f32],
    pw: usize,
    shift: &dyn Fn(usize) -> usize,
    n: usize,
    rows: usize,
    s: &mut [f32],
    lds: usize,
) {
    assert!(
        (0..n).all(|j| shift(j) + rows <= pw)
            && c.len() >= n * pw
            && lds >= n
            && (rows == 0 || s.len() >= (rows - 1) * lds + n),
        "p2c operands"
    );
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: avx512f was detected (`Level::Avx512` comes from `simd()`); the extents were
        // checked above.
        return unsafe { x86::add_transposed_avx512(c, pw, shift, n, rows, s, lds) };
    }
    let _ = level;
    for j in 0..n {
        let from = &c[j * pw + shift(j)..][..rows];
        for (i, &v) in from.iter().enumerate() {
            s[i * lds + j] += v;
        }
    }
}

/// `dst[k] += src[at[len - 1 - k] - base]` for `k < dst.len()` (`len = at.len() >= dst.len()`):
/// a row's c2p products (by position, from `base`) added to its scores (by key, whose
/// positions fall as the key grows). `src` may run past the positions used: with AVX-512 and a
/// `monotone` table (`RelPosTable::is_monotone`: the ends of `at` bound its entries), 16
/// positions at a time are looked up in a 32-value window (see `x86::lookup16`).
///
/// # Panics
/// If a position falls outside `src` or below `base`.
fn add_positions_reversed(
    level: Level,
    monotone: bool,
    dst: &mut [f32],
    src: &[f32],
    at: &[u32],
    base: usize,
) {
    assert!(at.len() >= dst.len());
    let at = &at[at.len() - dst.len()..];
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && monotone {
        if window_inside(at, base, src.len()) {
            // SAFETY: avx512f was detected (`Level::Avx512` comes from `simd()`); every
            // position lies between the ends' (monotone), inside src (checked above).
            unsafe { x86::add_positions_reversed_avx512(dst, src, at, base) };
        }
        return;
    }
    let _ = (level, monotone);
    for (v, &r) in dst.iter_mut().zip(at.iter().rev()) {
        *v += src[r as usize - base];
    }
}

/// `row[k] = row[at[k] - base]` for `k < at.len() <= 32`, every value read before any is
/// written: one key's p2c products (by position, from `base`) into query order. `row` may run
/// past the positions used (see [`add_positions_reversed`]).
///
/// # Panics
/// As [`add_positions_reversed`], or with more than 32 positions.
fn gather_positions(level: Level, monotone: bool, row: &mut [f32], at: &[u32], base: usize) {
    assert!(at.len() <= 32 && at.len() <= row.len());
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && monotone {
        if window_inside(at, base, row.len()) {
            // SAFETY: as in `add_positions_reversed`.
            unsafe { x86::gather_positions_avx512(row, at, base) };
        }
        return;
    }
    let _ = (level, monotone);
    let mut vals = [0.0f32; 32];
    for (v, &r) in vals.iter_mut().zip(at) {
        *v = row[r as usize - base];
    }
    row[..at.len()].copy_from_slice(&vals[..at.len()]);
}

/// Whether the monotone positions `at` are any, and (else a panic) their ends, so all of them,
/// lie in `base .. base + len`: the bounds the AVX-512 lookups rely on.
#[cfg(target_arch = "x86_64")]
fn window_inside(at: &[u32], base: usize, len: usize) -> bool {
    let (Some(&lo), Some(&hi)) = (at.first(), at.last()) else {
        return false;
    };
    assert!(
        lo as usize >= base && (hi as usize - base) < len,
        "positions outside their window"
    );
    debug_assert!(at.windows(2).all(|w| w[0] <= w[1]));
    true
}
