//! The attention's four products on the AMX-BF16 tile unit, for the opt-in low precisions
//! (`--dtype bf16` and `int8`) on CPUs where the GEMM's tiles run too.
//!
//! Same tasks and numerics outline as the fp32 path (see the parent module), with every
//! product's operands rounded to bf16 and summed in fp32 on the tiles (`tdpbf16ps`): scale,
//! gathers and softmax stay fp32; the probabilities are rounded to bf16 for `P V`.
//!
//! # Layout
//!
//! A product takes a 32-row A block in step order and a B panel of 32 columns (the GEMM's
//! layouts, see `gemm/amx.rs`), and writes a 32 x 32 block of fp32 sums.
//!
//! * Per call, for every sequence and head (one rayon task each, before the query blocks run),
//!   in `TileScratch`: the keys as A blocks (rows = keys, for p2c), the keys as B panels
//!   (columns = keys, for `Q K^T`) and the values as B panels (rows = pairs of keys, columns =
//!   components, for `P V`), keys padded with zeros to a multiple of 32.
//! * At load time, per head: PK and PQ as B panels (columns = relative positions), from which
//!   c2p and p2c take the 32-position panels a block's positions fall in.
//! * Per task (a block of at most 32 query rows, all or some heads): the queries and, after
//!   the softmax, the probabilities as A blocks, in per-thread scratch.
//!
//! c2p computes `q_i . PK[r]` for the panels covering the block's positions and gathers; p2c
//! computes, per 32 keys, `k_j . PQ[r]` for the panels covering their positions for this block
//! (about 3 panels: 32 queries + 31 keys of offsets), gathers each key's values into query
//! order and adds them through the same register transposes as the fp32 path.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{
    add_positions_reversed, gather_positions, softmax_scaled, AttentionParams, Level, Task,
};
use crate::backend::cpu::gemm::{round_rows_to_steps, PackedWeight, TileSession, STEP_WORDS};
use crate::relpos::RelPosTable;

/// Rows (and columns) of one tile product: queries per task, keys per block, positions per
/// panel.
pub(super) const BLOCK: usize = 32;

/// Tokens from which a sequence runs on the tiles (see `on_tiles`).
pub(super) const MIN_TOKENS: usize = 24;

/// Whether the attention can run on tiles for heads of `head_dim` values: the GEMM's AMX-BF16
/// tiles are available (see `gemm::amx_available`: AVX-512F, `avx512_bf16`, AMX-BF16 and the
/// tile permission), with AVX512-BW (the value panels' word shuffles; every CPU with AMX has
/// it), and a head is whole steps of 32 values.
pub fn tiles_available(head_dim: usize) -> bool {
    head_dim > 0
        && head_dim.is_multiple_of(BLOCK)
        && crate::backend::cpu::gemm::amx_available()
        && is_x86_feature_detected!("avx512bw")
}

/// A projected position table (PK or PQ, `[2S, H]`) as per-head B panels: head `hd`'s panel
/// `p` holds positions `32p .. 32p + 32` as columns, each step 32 components.
#[derive(Default)]
pub(super) struct PosPanels {
    heads: Vec<PackedWeight>,
}

impl PosPanels {
    pub(super) fn from_rows(proj: &[f32], rows: usize, heads: usize, head_dim: usize) -> Self {
        let h = heads * head_dim;
        assert_eq!(proj.len(), rows * h);
        let heads = (0..heads)
            .map(|hd| {
                let w: Vec<f32> = proj
                    .chunks_exact(h)
                    .flat_map(|row| &row[hd * head_dim..(hd + 1) * head_dim])
                    .copied()
                    .collect();
                PackedWeight::new(&w, rows, head_dim).with_bf16_tiles()
            })
            .collect();
        PosPanels { heads }
    }

    /// Head `hd`'s panels, end to end.
    fn head(&self, hd: usize) -> &[u32] {
        self.heads[hd]
            .tile_panels()
            .expect("position panels are bf16 tile weights")
    }
}

/// 64 bytes of words: the alignment of every tile operand buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// `v` grown to at least `words` words, viewed as words.
fn words_of(v: &mut Vec<Line>, words: usize) -> &mut [u32] {
    let lines = words.div_ceil(16);
    if v.len() < lines {
        v.resize(lines, Line([0; 16]));
    }
    // SAFETY: `Line` is `repr(C)` around `[u32; 16]` (64 bytes, no padding), so the buffer is
    // `16 * len` contiguous initialised words; the exclusive borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u32>(), v.len() * 16) }
}

/// The per-call operands of every sequence and head (see the module docs), reused across
/// calls.
#[derive(Default)]
pub struct TileScratch {
    lines: Vec<Line>,
}

/// `n` padded to whole 32-key blocks.
fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Words of one sequence-and-head's operands: keys as A blocks, keys as B panels, values as B
/// panels, `np * d / 2` words each.
fn head_words(n: usize, d: usize) -> usize {
    3 * padded(n) * d / 2
}

/// Words of a whole sequence's operands (all heads).
pub(super) fn sequence_words(n: usize, heads: usize, d: usize) -> usize {
    heads * head_words(n, d)
}

/// `ctx = attention(qkv)` on tiles (see the module docs) for the sequences of at least
/// [`MIN_TOKENS`] tokens; `tasks` (theirs) as `split_tasks` made them with [`BLOCK`]-row blocks
/// and [`sequence_words`] slabs for those sequences (none for the others).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_tiles(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &PosPanels,
    pos_query: &PosPanels,
    relpos: &RelPosTable,
    scratch: &mut TileScratch,
    tasks: Vec<Task>,
    ctx: super::CtxPtr,
) {
    let (nh, d) = (p.heads, p.head_dim);
    assert!(tiles_available(d), "tile attention unavailable");
    assert!(!p.c2p || pos_key.heads.len() == nh, "c2p needs PK panels");
    assert!(!p.p2c || pos_query.heads.len() == nh, "p2c needs PQ panels");
    let long = |w: &&[usize]| w[1] - w[0] >= MIN_TOKENS;
    let total: usize = offsets
        .windows(2)
        .filter(long)
        .map(|w| sequence_words(w[1] - w[0], nh, d))
        .sum();
    let buf = words_of(&mut scratch.lines, total);
    // one unit per (sequence, head): its slice of the buffer
    let mut units = Vec::new();
    let mut rest = &mut buf[..total];
    for w in offsets.windows(2).filter(long) {
        let n = w[1] - w[0];
        for hd in 0..nh {
            let (unit, tail) = std::mem::take(&mut rest).split_at_mut(head_words(n, d));
            units.push((w[0], n, hd, unit));
            rest = tail;
        }
    }
    units
        .into_par_iter()
        .for_each(|(start, n, hd, dst)| prepare_head(qkv, start, n, nh, d, hd, dst));
    let buf: &[u32] = buf;
    tasks.into_par_iter().for_each(|task| {
        TASK_SCRATCH.with(|cell| {
            let mut sc = cell.borrow_mut();
            let unit = &buf[task.keys_at..][..sequence_words(task.n, nh, d)];
            // SAFETY: the tiles are available (asserted above), which implies AVX-512F, AVX2
            // and FMA.
            unsafe { block_avx512(p, qkv, pos_key, pos_query, relpos, task, unit, ctx, &mut sc) };
        })
    });
}

/// The operands of head `hd` of the sequence of `n` tokens at `start` into `dst`
/// ([`head_words`]): keys as A blocks, keys as B panels, values as B panels.
fn prepare_head(
    qkv: &[f32],
    start: usize,
    n: usize,
    nh: usize,
    d: usize,
    hd: usize,
    dst: &mut [u32],
) {
    let (h, np) = (nh * d, padded(n));
    let part = np * d / 2;
    let (k_blocks, rest) = dst.split_at_mut(part);
    let (k_panels, v_panels) = rest.split_at_mut(part);
    let block_words = d / BLOCK * STEP_WORDS;
    let keys = &qkv[start * 3 * h + h + hd * d..];
    for (b, blk) in k_blocks.chunks_exact_mut(block_words).enumerate() {
        let rows = BLOCK.min(n - b * BLOCK);
        round_rows_to_steps(&keys[b * BLOCK * 3 * h..], 3 * h, rows, d, blk);
    }
    // panel step: 16 rows (pairs of components) of 32 words (keys) = the A step (32 rows of
    // keys, 16 words of pairs) transposed
    for (a, b) in k_blocks
        .chunks_exact(STEP_WORDS)
        .zip(k_panels.chunks_exact_mut(STEP_WORDS))
    {
        for (r, row) in b.chunks_exact_mut(BLOCK).enumerate() {
            for (c, word) in row.iter_mut().enumerate() {
                *word = a[c * 16 + r];
            }
        }
    }
    let values = &qkv[start * 3 * h + 2 * h + hd * d..];
    value_panels(values, 3 * h, n, d, v_panels);
}

/// The values (`n` rows of `d`, row `j` at `v[j * ld ..]`) as B panels for `P V`: panel `p`
/// (components `32p .. 32p + 32`), step `s`, row `r` (keys `2(16s + r)` and the next), word
/// `c`: the two keys' component `32p + c` in bf16 (low, high); keys past `n` are zero.
fn value_panels(v: &[f32], ld: usize, n: usize, d: usize, dst: &mut [u32]) {
    let np = padded(n);
    let panel_words = np / 2 * BLOCK;
    assert!(dst.len() >= d / BLOCK * panel_words && (n == 0 || (n - 1) * ld + d <= v.len()));
    assert!(
        tiles_available(d),
        "value panels need the tile attention's extensions"
    );
    // SAFETY: `tiles_available` implies avx512f, avx512bw and avx512_bf16; extents checked
    // above.
    unsafe { super::x86::value_panels_avx512(v, ld, n, d, dst) }
}

/// Per-thread scratch of the tasks, grown on demand.
#[derive(Default)]
struct TaskScratch {
    q: Vec<Line>,  // the queries of this block and head, an A block (d / 32 steps)
    pr: Vec<Line>, // the probabilities, an A block (np / 32 steps)
    s: Vec<f32>,   // [32, np] scores
    c: Vec<f32>,   // [32, cw] c2p products, or [np, pw] p2c products
    o: Vec<f32>,   // [32, d] this head's output rows
    /// per block of 32 keys, the range of position panels its p2c products take
    key_panels: Vec<(usize, usize)>,
}

thread_local! {
    static TASK_SCRATCH: RefCell<TaskScratch> = RefCell::new(TaskScratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// [`block`] compiled for AVX-512 (the softmax and gather loops vectorize for it).
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be available.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    p: &AttentionParams,
    qkv: &[f32],
    pos_key: &PosPanels,
    pos_query: &PosPanels,
    relpos: &RelPosTable,
    task: Task,
    unit: &[u32],
    ctx: super::CtxPtr,
    sc: &mut TaskScratch,
) {
    block(p, qkv, pos_key, pos_query, relpos, task, unit, ctx, sc)
}

/// One task: see the module docs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block(
    p: &AttentionParams,
    qkv: &[f32],
    pos_key: &PosPanels,
    pos_query: &PosPanels,
    relpos: &RelPosTable,
    task: Task,
    unit: &[u32],
    ctx: super::CtxPtr,
    sc: &mut TaskScratch,
) {
    let (d, nh) = (p.head_dim, p.heads);
    let h = nh * d;
    let Task {
        start,
        n,
        q0,
        rows: bq,
        h0,
        h1,
        ..
    } = task;
    debug_assert!(h0 < h1 && h1 <= nh && q0 + bq <= n && bq <= BLOCK && n >= MIN_TOKENS);
    let tbl = relpos.as_slice();
    let off = relpos.max_len() - 1;
    let monotone = relpos.is_monotone();
    let (np, steps_d) = (padded(n), d / BLOCK);
    let panel_words = steps_d * STEP_WORDS; // of a PK/PQ panel or a key block
    let part = np * d / 2;
    // The panels `p0 .. p1` holding the positions of queries q0 .. q0 + bq against keys j0 ..=
    // j1: those of table entries q0 + off - j1 ..= q0 + bq - 1 + off - j0 (their ends, for a
    // monotone table).
    let panel_range = |j0: usize, j1: usize| {
        let at = &tbl[q0 + off - j1..=q0 + bq - 1 + off - j0];
        let (lo, hi) = if monotone {
            (at[0], at[at.len() - 1])
        } else {
            let lo = at.iter().copied().min().unwrap_or(0);
            (lo, at.iter().copied().max().unwrap_or(0))
        };
        (lo as usize / BLOCK, hi as usize / BLOCK + 1)
    };
    let TaskScratch {
        q,
        pr,
        s,
        c,
        o,
        key_panels,
    } = sc;
    // c2p: all keys at once; p2c: per block of 32 keys
    let (c_p0, c_p1) = panel_range(0, n - 1);
    let cw = (c_p1 - c_p0) * BLOCK;
    key_panels.clear();
    key_panels.extend(
        (0..np / BLOCK).map(|kb| panel_range(kb * BLOCK, (kb * BLOCK + BLOCK - 1).min(n - 1))),
    );
    let pw = key_panels
        .iter()
        .map(|(p0, p1)| (p1 - p0) * BLOCK)
        .max()
        .unwrap_or(BLOCK);

    let q_words = steps_d * STEP_WORDS;
    let qa = words_of(q, q_words);
    let pa = words_of(pr, np / BLOCK * STEP_WORDS);
    grow(s, BLOCK * np);
    // (+ 32: a lookup may read a whole 32-value window from the last row)
    let c_len = if p.c2p { BLOCK * cw } else { 0 }.max(if p.p2c { np * pw } else { 0 });
    grow(c, c_len + BLOCK);
    grow(o, BLOCK * d);
    let tiles = TileSession::start();

    for hd in h0..h1 {
        let hs = hd * d;
        let ops = &unit[hd * 3 * part..(hd + 1) * 3 * part];
        let (k_blocks, k_panels, v_panels) = (&ops[..part], &ops[part..2 * part], &ops[2 * part..]);
        round_rows_to_steps(
            &qkv[(start + q0) * 3 * h + hs..],
            3 * h,
            bq,
            d,
            &mut qa[..q_words],
        );
        let qa = &qa[..q_words];

        // content scores s[i, j] = q_i . k_j
        for (kb, panel) in k_panels.chunks_exact(panel_words).enumerate() {
            tiles.product(qa, panel, steps_d, &mut s[kb * BLOCK..], np);
        }

        // c2p: c[i, r - 32 c_p0] = q_i . PK[r], gathered into s
        if p.c2p {
            let panels = pos_key.head(hd);
            for pi in 0..cw / BLOCK {
                let panel = &panels[(c_p0 + pi) * panel_words..];
                tiles.product(qa, panel, steps_d, &mut c[pi * BLOCK..], cw);
            }
            for i in 0..bq {
                // (rows past this one are read but not used: see `add_positions_reversed`)
                let (srow, crow) = (&mut s[i * np..i * np + n], &c[i * cw..]);
                let at = &tbl[q0 + i + off + 1 - n..=q0 + i + off]; // idx(q0 + i, n - 1 ..= 0)
                add_positions_reversed(Level::Avx512, monotone, srow, crow, at, c_p0 * BLOCK);
            }
        }

        // p2c: c[j, r - 32 p0(kb)] = k_j . PQ[r] per block of keys kb, each key's values
        // gathered into query order (c[j, i]) and added to s through transposes
        if p.p2c {
            let panels = pos_query.head(hd);
            for (kb, &(p0, p1)) in key_panels.iter().enumerate() {
                let a = &k_blocks[kb * panel_words..(kb + 1) * panel_words];
                for pi in 0..p1 - p0 {
                    let panel = &panels[(p0 + pi) * panel_words..];
                    tiles.product(
                        a,
                        panel,
                        steps_d,
                        &mut c[kb * BLOCK * pw + pi * BLOCK..],
                        pw,
                    );
                }
            }
            for j in 0..n {
                let base = key_panels[j / BLOCK].0 * BLOCK;
                // idx(q0 + i, j) for i < bq: entries q0 + off - j .. + bq of the table
                let at = &tbl[q0 + off - j..][..bq];
                gather_positions(Level::Avx512, monotone, &mut c[j * pw..], at, base);
            }
            super::add_transposed(super::simd(), c, pw, &|_| 0, n, bq, s, np);
        }

        // softmax rows (keys past n: probability 0), then out[i, :] = sum_j p_ij v_j
        for i in 0..bq {
            let srow = &mut s[i * np..(i + 1) * np];
            softmax_scaled::<true>(&mut srow[..n], p.scale);
            srow[n..].fill(0.0);
        }
        round_rows_to_steps(s, np, bq, np, pa);
        for (pi, panel) in v_panels.chunks_exact(np / 2 * BLOCK).enumerate() {
            tiles.product(pa, panel, np / BLOCK, &mut o[pi * BLOCK..], d);
        }
        for (i, row) in o.chunks_exact(d).take(bq).enumerate() {
            // SAFETY: ctx holds the call's `tokens` rows of `h` floats (`attention_at` checks
            // its length) and `start + q0 + i` is one of this sequence's rows, `hs + d <= h`:
            // the write stays inside ctx, in this task's own rectangle (see `CtxPtr`).
            unsafe {
                let dst = ctx.0.add((start + q0 + i) * h + hs);
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst, d);
            }
        }
    }
}
