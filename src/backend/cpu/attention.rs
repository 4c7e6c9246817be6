//! Disentangled self-attention over packed sequences.
//!
//! One rayon task per (sequence, block of query rows), all heads: content scores `Q K^T`, the
//! c2p term `Q_i . PK[idx(i,j)]` and the p2c term `K_j . PQ[idx(i,j)]` (PK/PQ precomputed at load
//! time, stored per head transposed as [d, 2S] so the inner loops are broadcast-FMAs over
//! contiguous memory), scale, softmax, and `P V`. Only a [block, L] score tile and a
//! [block, L + block] c2p tile exist at a time (per thread, reused); no [L, 2S] matrix is built;
//! only real tokens are touched.
//!
//! [`attention_reference`] is the plain per-element version the fast one is tested against.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::relpos::RelPosTable;

/// Query rows per task.
const QUERY_BLOCK: usize = 32;

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

/// A projected rel-embedding table (PK or PQ) laid out per head, transposed: [nH, d, 2S].
#[derive(Clone, Debug, Default)]
pub struct PosTable {
    /// 2S
    rows: usize,
    head_dim: usize,
    data: Vec<f32>,
}

impl PosTable {
    /// From the row-major projection `[2S, H]` (heads side by side in each row).
    pub fn from_rows(proj: &[f32], rows: usize, heads: usize, head_dim: usize) -> Self {
        let h = heads * head_dim;
        assert_eq!(proj.len(), rows * h);
        let mut data = vec![0.0; proj.len()];
        for hd in 0..heads {
            for t in 0..head_dim {
                let dst = &mut data[(hd * head_dim + t) * rows..][..rows];
                for (r, v) in dst.iter_mut().enumerate() {
                    *v = proj[r * h + hd * head_dim + t];
                }
            }
        }
        PosTable {
            rows,
            head_dim,
            data,
        }
    }
    /// Whether the table exists (its position term is used).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `t` of head `hd`: component `t` of every projected position, [2S].
    #[inline]
    fn comp(&self, hd: usize, t: usize) -> &[f32] {
        &self.data[(hd * self.head_dim + t) * self.rows..][..self.rows]
    }
}

/// Per-thread scratch, grown on demand and reused across calls.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,   // [d, n]   this head's keys, transposed
    s: Vec<f32>,    // [bq, n]  scores
    c: Vec<f32>,    // [bq, n + bq] c2p products over the block's range of positions
    pbuf: Vec<f32>, // [bq]     p2c products of one key
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `ctx[T, H] = attention(qkv[T, 3H])` for every packed sequence (fast path).
pub fn attention(
    p: &AttentionParams,
    qkv: &[f32],
    offsets: &[usize],
    pos_key: &PosTable,
    pos_query: &PosTable,
    relpos: &RelPosTable,
    ctx: &mut [f32],
) {
    let h = p.heads * p.head_dim;
    let tasks = split_tasks(offsets, h, ctx);
    let level = simd();
    tasks.into_par_iter().for_each(|(start, n, q0, out)| {
        SCRATCH.with(|cell| {
            let mut sc = cell.borrow_mut();
            let job = Job {
                p,
                qkv,
                start,
                n,
                q0,
                pos_key,
                pos_query,
                relpos,
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx512f was detected at run time by `simd()`.
                Level::Avx512 => unsafe { block_avx512(&job, &mut sc, out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx2 and fma were detected at run time by `simd()`.
                Level::Avx2 => unsafe { block_avx2(&job, &mut sc, out) },
                Level::Portable => block::<Plain>(&job, &mut sc, out),
            }
        })
    });
}

/// Split ctx into tasks: (sequence start, sequence length, first query row, output rows).
fn split_tasks<'a>(
    offsets: &[usize],
    h: usize,
    ctx: &'a mut [f32],
) -> Vec<(usize, usize, usize, &'a mut [f32])> {
    let mut tasks = Vec::new();
    let mut rest = ctx;
    for w in offsets.windows(2) {
        let n = w[1] - w[0];
        let (seq, tail) = std::mem::take(&mut rest).split_at_mut(n * h);
        rest = tail;
        for (bi, block) in seq.chunks_mut(QUERY_BLOCK * h).enumerate() {
            tasks.push((w[0], n, bi * QUERY_BLOCK, block));
        }
    }
    tasks
}

#[derive(Clone, Copy, PartialEq, Eq)]
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
        if is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512(job: &Job<'_>, sc: &mut Scratch, out: &mut [f32]) {
    block::<Fused>(job, sc, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(job: &Job<'_>, sc: &mut Scratch, out: &mut [f32]) {
    block::<Fused>(job, sc, out)
}

/// Multiply-add flavour: fused where the CPU has FMA (compiled inside a target_feature
/// function), plain elsewhere (a libm `fmaf` call would be slow).
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}
struct Fused;
struct Plain;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `y[..] += a * x[..]`
#[inline(always)]
fn axpy<M: Madd>(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = M::madd(a, xv, *yv);
    }
}

/// `out[i, c] = sum_t rows[i][t] * cols(t)[c]` for 4 rows at a time (register tile 4 x 16).
/// `row(i)` gives a row of length d; `col(t)` a slice of at least `w` values.
#[inline(always)]
fn rows_by_cols<'a, M: Madd>(
    nrows: usize,
    d: usize,
    w: usize,
    row: impl Fn(usize) -> &'a [f32],
    col: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
    ld: usize,
) {
    const R: usize = 4;
    const C: usize = 16;
    let mut i = 0;
    while i < nrows {
        let rn = R.min(nrows - i);
        let rows: [&[f32]; R] = std::array::from_fn(|k| row(i + k.min(rn - 1)));
        let mut c0 = 0;
        while c0 < w {
            let cn = C.min(w - c0);
            let mut acc = [[0.0f32; C]; R];
            for t in 0..d {
                let cv = &col(t)[c0..];
                let mut x = [0.0f32; C];
                x[..cn].copy_from_slice(&cv[..cn]);
                for k in 0..R {
                    let a = rows[k][t];
                    for l in 0..C {
                        acc[k][l] = M::madd(a, x[l], acc[k][l]);
                    }
                }
            }
            for k in 0..rn {
                out[(i + k) * ld + c0..][..cn].copy_from_slice(&acc[k][..cn]);
            }
            c0 += C;
        }
        i += R;
    }
}

/// Everything one task needs.
struct Job<'a> {
    p: &'a AttentionParams,
    qkv: &'a [f32],
    start: usize,
    n: usize,
    q0: usize,
    pos_key: &'a PosTable,
    pos_query: &'a PosTable,
    relpos: &'a RelPosTable,
}

#[inline(always)]
fn block<M: Madd>(job: &Job<'_>, sc: &mut Scratch, out: &mut [f32]) {
    let p = job.p;
    let (d, nh) = (p.head_dim, p.heads);
    let h = nh * d;
    let n = job.n;
    let bq = out.len() / h;
    let q0 = job.q0;
    let row = |t: usize| &job.qkv[(job.start + t) * 3 * h..(job.start + t + 1) * 3 * h];
    // index table entry for offset r = i - j
    let tbl = job.relpos.as_slice();
    let off = job.relpos.max_len() - 1;
    let idx = |i: usize, j: usize| tbl[i + off - j] as usize;

    let cw = n + bq - 1; // c2p positions a block can touch
    grow(&mut sc.kt, d * n);
    grow(&mut sc.s, bq * n);
    grow(&mut sc.c, bq * cw);
    grow(&mut sc.pbuf, bq);
    let Scratch { kt, s, c, pbuf } = sc;

    for hd in 0..nh {
        let hs = hd * d;
        // K^T of this head: kt[t, j]
        for j in 0..n {
            let k = &row(j)[h + hs..h + hs + d];
            for (t, &v) in k.iter().enumerate() {
                kt[t * n + j] = v;
            }
        }
        let q = |i: usize| &row(q0 + i)[hs..hs + d];

        // content scores s[i, j] = q_i . k_j
        rows_by_cols::<M>(bq, d, n, q, |t| &kt[t * n..(t + 1) * n], s, n);

        // c2p: c[i, r - lo] = q_i . PK[r] over the block's position range, then gathered
        if p.c2p {
            let lo = idx(q0, n - 1);
            let hi = idx(q0 + bq - 1, 0);
            let w = hi - lo + 1;
            rows_by_cols::<M>(bq, d, w, q, |t| &job.pos_key.comp(hd, t)[lo..], c, cw);
            for i in 0..bq {
                let (srow, crow) = (&mut s[i * n..(i + 1) * n], &c[i * cw..]);
                for (j, sv) in srow.iter_mut().enumerate() {
                    *sv += crow[idx(q0 + i, j) - lo];
                }
            }
        }

        // p2c: per key j, pbuf[r - lo_j] = k_j . PQ[r] over the rows this block needs
        if p.p2c {
            for j in 0..n {
                let lo = idx(q0, j);
                let w = idx(q0 + bq - 1, j) - lo + 1;
                let pb = &mut pbuf[..w];
                pb.fill(0.0);
                for t in 0..d {
                    axpy::<M>(kt[t * n + j], &job.pos_query.comp(hd, t)[lo..lo + w], pb);
                }
                for i in 0..bq {
                    s[i * n + j] += pb[idx(q0 + i, j) - lo];
                }
            }
        }

        // softmax rows, then out_i = sum_j p_ij v_j
        for i in 0..bq {
            let srow = &mut s[i * n..(i + 1) * n];
            let mut max = f32::NEG_INFINITY;
            for v in srow.iter_mut() {
                *v *= p.scale;
                max = max.max(*v);
            }
            let mut sum = 0.0f32;
            for v in srow.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            let o = &mut out[i * h + hs..i * h + hs + d];
            o.fill(0.0);
            for (j, &pv) in srow.iter().enumerate() {
                axpy::<M>(pv * inv, &row(j)[2 * h + hs..2 * h + hs + d], o);
            }
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
    use crate::model::XorShift;

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
        let mut got = vec![f32::NAN; t * h];
        attention(&p, &qkv, &offsets, &pkt, &pqt, &relpos, &mut got);
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
            "lens {lens:?} d {d} buckets {buckets}: max err {err}"
        );
    }

    #[test]
    fn fast_attention_matches_reference() {
        check(&[1], 2, 16, 256, 512, true, true);
        check(&[7, 1, 33], 3, 12, -1, 12, true, true);
        check(&[40, 5], 2, 32, 16, 64, true, false);
        check(&[64, 17], 2, 64, 8, 32, false, true);
        check(&[130], 1, 64, 256, 512, true, true);
        check(&[70, 3, 31], 6, 64, 32, 128, false, false);
    }
}
