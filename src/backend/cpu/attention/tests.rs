//! The fast attention against the reference, and its helpers against their plain loops.

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
    for ((offsets, threads), block) in cases.into_iter().flat_map(|c| [(c, QUERY_BLOCK), (c, 32)]) {
        let slab = |n: usize| n + 1;
        let tasks = split_tasks(offsets, heads, threads, block, &slab);
        let tokens = *offsets.last().unwrap();
        let mut seen = vec![0u8; tokens * heads];
        for t in &tasks {
            assert!(t.h0 < t.h1 && t.h1 <= heads && t.rows > 0 && t.q0 + t.rows <= t.n);
            assert!(t.rows <= block);
            // the sequence's slab starts after those of the sequences before it
            let before = (0..offsets.len() - 1)
                .find(|&s| offsets[s] == t.start && offsets[s + 1] - offsets[s] == t.n)
                .unwrap();
            let want: usize = offsets[..=before].windows(2).map(|w| w[1] - w[0] + 1).sum();
            assert_eq!(t.keys_at, want, "{offsets:?}");
            for i in t.start + t.q0..t.start + t.q0 + t.rows {
                for hd in t.h0..t.h1 {
                    seen[i * heads + hd] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{offsets:?}: {tasks:?}");
        // a single short sentence still gives every thread work
        if offsets.len() == 2 && tokens <= block {
            assert!(tasks.len() >= threads.min(heads), "{offsets:?}: {tasks:?}");
        }
    }
}

/// Random inputs of an attention call: sequences of `lens` tokens, `h` = heads * head_dim,
/// the relative-position table and projected tables of the given buckets.
struct Case {
    span: usize,
    relpos: RelPosTable,
    qkv: Vec<f32>,
    pk: Vec<f32>,
    pq: Vec<f32>,
    offsets: Vec<usize>,
}

impl Case {
    fn random(lens: &[usize], h: usize, buckets: i64, max_rel: usize, seed: u64) -> Case {
        let span = if buckets > 0 {
            buckets as usize
        } else {
            max_rel
        };
        let max_len = *lens.iter().max().unwrap();
        let mut rng = XorShift(seed);
        let t: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..t * 3 * h).map(|_| rng.normal()).collect();
        let pk: Vec<f32> = (0..2 * span * h).map(|_| rng.normal()).collect();
        let pq: Vec<f32> = (0..2 * span * h).map(|_| rng.normal()).collect();
        let mut offsets = vec![0];
        for &l in lens {
            offsets.push(offsets.last().unwrap() + l);
        }
        Case {
            span,
            relpos: RelPosTable::new(max_len, buckets, max_rel, span),
            qkv,
            pk,
            pq,
            offsets,
        }
    }
}

/// Largest |a - b|, infinite where either is NaN.
fn max_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, e| {
                if e.is_nan() {
                    f32::INFINITY
                } else {
                    m.max(e)
                }
            },
        )
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
    let seed = 0x1234_5678 + lens.len() as u64 * 7 + d as u64;
    let Case {
        span,
        relpos,
        qkv,
        pk,
        pq,
        offsets,
    } = Case::random(lens, h, buckets, max_rel, seed);
    let t = qkv.len() / (3 * h);
    let p = AttentionParams {
        heads,
        head_dim: d,
        scale: 1.0 / ((d * 3) as f32).sqrt(),
        c2p,
        p2c,
        tiles: false,
    };
    let mut want = vec![0.0; t * h];
    attention_reference(&p, &qkv, &offsets, &pk, &pq, &relpos, &mut want);
    let pkt = PosTable::from_rows(&pk, 2 * span, heads, d);
    let pqt = PosTable::from_rows(&pq, 2 * span, heads, d);
    for level in levels() {
        let mut got = vec![f32::NAN; t * h]; // poisoned: every element must be written
        let mut scratch = AttentionScratch {
            keys_t: vec![f32::NAN; keys_t_len(&offsets, heads, d)],
            ..Default::default()
        };
        attention_at(
            level,
            &p,
            &qkv,
            &offsets,
            &pkt,
            &pqt,
            &relpos,
            &mut scratch,
            &mut got,
        );
        let err = max_err(&got, &want);
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
    check(&[40, 70, 3], 2, 32, 64, 20, true, true);
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
        let cases = [
            (1, 1),
            (16, 16),
            (17, 5),
            (33, 26),
            (128, 26),
            (40, 29),
            (50, 32),
        ];
        for ((n, rows), pad) in cases.into_iter().zip([0, 15, 0, 31, 0, 24, 14]) {
            let (pw, lds) = (rows + 3, n + pad);
            let shift = |j: usize| (j * 7) % 4;
            let c: Vec<f32> = (0..n * pw).map(|v| v as f32).collect();
            let base: Vec<f32> = (0..rows * lds).map(|v| 0.5 * v as f32).collect();
            let mut got = base.clone();
            add_transposed(level, &c, pw, &shift, n, rows, &mut got, lds);
            for i in 0..rows {
                for j in 0..lds {
                    let add = if j < n { c[j * pw + shift(j) + i] } else { 0.0 };
                    assert_eq!(
                        got[i * lds + j],
                        base[i * lds + j] + add,
                        "{level:?} n {n} rows {rows} lds {lds} at {i},{j}"
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

/// The tile path against the reference run on its bf16 operands (inputs and probabilities
/// rounded to bf16), and against the fp32 reference within bf16's error.
#[allow(clippy::too_many_arguments)]
fn check_tiles(
    lens: &[usize],
    heads: usize,
    d: usize,
    buckets: i64,
    max_rel: usize,
    c2p: bool,
    p2c: bool,
    threads: usize,
) -> bool {
    if !tiles_available(d) {
        return false;
    }
    let h = heads * d;
    let seed = 0x5eed_0000 + lens.iter().sum::<usize>() as u64 * 31 + d as u64;
    let Case {
        span,
        relpos,
        qkv,
        pk,
        pq,
        offsets,
    } = Case::random(lens, h, buckets, max_rel, seed);
    let t = qkv.len() / (3 * h);
    let mut p = AttentionParams {
        heads,
        head_dim: d,
        scale: 1.0 / ((d * 3) as f32).sqrt(),
        c2p,
        p2c,
        tiles: false,
    };
    let bf16 = |x: f32| half::bf16::from_f32(x).to_f32();
    let round_all = |v: &[f32]| v.iter().map(|&x| bf16(x)).collect::<Vec<f32>>();
    let mut want = vec![0.0; t * h];
    let (qkv_r, pk_r, pq_r) = (round_all(&qkv), round_all(&pk), round_all(&pq));
    attention_reference_with(
        &p, &qkv_r, &offsets, &pk_r, &pq_r, &relpos, &bf16, &mut want,
    );
    let mut exact = vec![0.0; t * h];
    attention_reference(&p, &qkv, &offsets, &pk, &pq, &relpos, &mut exact);
    p.tiles = true;
    let pkt = PosTable::from_rows(&pk, 2 * span, heads, d).with_tile_panels(&pk, heads);
    let pqt = PosTable::from_rows(&pq, 2 * span, heads, d).with_tile_panels(&pq, heads);
    let mut got = vec![f32::NAN; t * h]; // poisoned: every element must be written
    let mut scratch = AttentionScratch::default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        attention(
            &p,
            &qkv,
            &offsets,
            &pkt,
            &pqt,
            &relpos,
            &mut scratch,
            &mut got,
        )
    });
    let what = format!("lens {lens:?} heads {heads} d {d} buckets {buckets} c2p {c2p} p2c {p2c}");
    for (s, w) in offsets.windows(2).enumerate() {
        let rows = w[0] * h..w[1] * h;
        let (got, want, exact) = (&got[rows.clone()], &want[rows.clone()], &exact[rows]);
        let (err, err_exact) = (max_err(got, want), max_err(got, exact));
        if on_tiles(w[1] - w[0]) {
            assert!(
                err < 2e-3,
                "{what}: seq {s}: max err {err} against the bf16 reference"
            );
            assert!(
                err_exact < 5e-2,
                "{what}: seq {s}: max err {err_exact} against fp32"
            );
        } else {
            // a short sequence: the fp32 path ran
            assert!(
                err_exact < 2e-5,
                "{what}: seq {s}: max err {err_exact} against fp32"
            );
        }
    }
    true
}

/// (lengths, heads, head_dim, position buckets, max_relative_positions, c2p, p2c, threads)
type TileCase = (
    &'static [usize],
    usize,
    usize,
    i64,
    usize,
    bool,
    bool,
    usize,
);

#[test]
fn tile_attention_matches_the_bf16_reference() {
    let cases: [TileCase; 12] = [
        (&[1], 2, 64, 256, 512, true, true, 2),
        (&[1, 2, 23], 2, 64, 256, 512, true, true, 2),
        (&[1, 24], 2, 64, 256, 512, true, true, 2),
        (&[512], 2, 64, 256, 512, true, true, 2),
        (&[7, 1, 33, 32, 64, 65], 3, 64, 256, 512, true, true, 2),
        (&[130, 5], 6, 64, 32, 128, true, true, 3),
        (&[100, 33], 2, 32, 64, 40, true, true, 1),
        (&[60, 1, 29, 30, 9], 2, 32, 8, 7, true, true, 2),
        (&[45, 200], 1, 128, -1, 300, true, true, 2),
        (&[64, 5], 2, 64, 16, 10, true, false, 2),
        (&[64, 5], 2, 64, 16, 10, false, true, 2),
        // log buckets that run backwards (max_relative_positions - 1 < position_buckets / 2):
        // a table that is not monotone
        (&[40, 70, 3], 2, 32, 64, 20, true, true, 2),
    ];
    let mut ran = 0;
    for (lens, heads, d, buckets, max_rel, c2p, p2c, threads) in cases {
        ran += check_tiles(lens, heads, d, buckets, max_rel, c2p, p2c, threads) as usize;
    }
    if ran == 0 {
        eprintln!("tile attention not checked: no AMX-BF16 tiles on this CPU");
    }
}
