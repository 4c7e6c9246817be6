//! GPU tests (feature `cuda`): every kernel against a CPU reference on fresh random inputs with
//! poisoned (NaN) outputs, at awkward shapes, then the whole model against the
//! sentence-transformers fixtures in every precision, and batch invariance.
//!
//! Without a GPU or driver each test prints `SKIPPED: no CUDA device (reason)` to stderr and
//! passes, so `cargo test --features cuda` works on any machine. The random seed is printed;
//! `GPU_TEST_SEED=n` replays a run.
#![cfg(feature = "cuda")]

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::sync::OnceLock;

use common::{cosine, max_abs_diff, model_names, Reference};
use deberta_embed::backend::cpu::gemm::{reference_linear, Epilogue};
use deberta_embed::backend::cpu::ops::{conv1d_act_into, layer_norm_rows};
use deberta_embed::backend::cuda::launch::Packed;
use deberta_embed::backend::cuda::{self, AttentionKernel, DevBuf, Dtype, Epi, GemmKernel, Gpu};
use deberta_embed::config::{Activation, PoolingMode};
use deberta_embed::relpos::RelPosTable;
use deberta_embed::testing::{self, attention_ref, tol, XorShift};
use deberta_embed::{Device, Embedder, EmbedderOptions, Precision};

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            // Straight to the process's stderr: the test harness captures eprintln!, and this
            // line must be visible in a plain `cargo test` run.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

/// `GPU_TEST_QUICK=1` (used under compute-sanitizer, which slows kernels 10-100x): skip the
/// largest shapes.
fn quick() -> bool {
    std::env::var("GPU_TEST_QUICK").is_ok_and(|v| v == "1")
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(g) => g,
            None => return,
        }
    };
}

/// This process's seed: a fresh one per process (printed), or `GPU_TEST_SEED`.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("GPU_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("GPU_TEST_SEED={s}");
        s
    })
}

/// The random source of stream `salt` in this process's run.
fn rng(salt: u64) -> XorShift {
    XorShift::salted(seed(), salt)
}

/// ||a - b|| / ||b|| in f64 (the testbed's), and fail on any non-finite value of `a`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if let Some(p) = a.iter().position(|x| !x.is_finite()) {
        panic!(
            "non-finite output at element {p} (unwritten or NaN): {}",
            a[p]
        );
    }
    testing::rel_err(a, b)
}

use cuda::testbed::tolerance;

fn out_buf(g: &Gpu, dt: Dtype, n: usize) -> DevBuf {
    let b = g.alloc(n * dt.size(), "test output").unwrap();
    g.poison(&b).unwrap();
    b
}

fn lens_batch(rng: &mut XorShift, b: usize, max: usize) -> Vec<usize> {
    (0..b).map(|_| 1 + rng.below(max)).collect()
}

fn ids_for(rng: &mut XorShift, lens: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    lens.iter()
        .map(|&l| (0..l).map(|_| rng.below(vocab) as u32).collect())
        .collect()
}

#[test]
fn gemm_matches_cpu() {
    let g = gpu_or_skip!();
    let mut rng = rng(1);
    // (m, n, k): xsmall shapes, awkward M, K not a multiple of 8, tiny and odd N
    let shapes = [
        (1, 384, 384),
        (7, 1152, 384),
        (33, 384, 1536),
        (128, 1536, 384),
        (257, 36, 36),
        (16, 32, 24),
        (65, 120, 40),
        (512, 384, 384),
        (3, 5, 3),
    ];
    for dt in DTYPES {
        for &(m, n, k) in &shapes {
            if quick() && m * n * k > 128 * 384 * 384 {
                continue;
            }
            let a = dt.round(&rng.normal_vec(m * k, 0.0, 1.0));
            let w = dt.round(&rng.normal_vec(n * k, 0.0, 1.0 / (k as f32).sqrt()));
            let bias = rng.normal_vec(n, 0.0, 0.1);
            let res = rng.normal_vec(m * n, 0.0, 1.0);
            let (da, dw) = (
                g.upload(dt, &a, "a").unwrap(),
                g.upload(dt, &w, "w").unwrap(),
            );
            let (db, dr) = (
                g.upload(Dtype::F32, &bias, "b").unwrap(),
                g.upload(Dtype::F32, &res, "r").unwrap(),
            );
            for epi in 0..4 {
                for out_f32 in [true, false] {
                    if dt == Dtype::F32 && !out_f32 {
                        continue;
                    }
                    let out_dt = if out_f32 { Dtype::F32 } else { dt };
                    let c = out_buf(&g, out_dt, m * n);
                    let (e, ep) = match epi {
                        0 => (Epi::None, Epilogue::None),
                        1 => (Epi::Bias(&db), Epilogue::Bias(&bias)),
                        2 => (Epi::BiasGelu(&db), Epilogue::BiasGelu(&bias)),
                        _ => (
                            Epi::BiasResidual(&db, &dr),
                            Epilogue::BiasResidual(&bias, &res),
                        ),
                    };
                    let mut want = vec![0.0; m * n];
                    reference_linear(&a, m, &w, n, k, ep, &mut want);
                    // both tile variants (128 x 128 runs where K % 8 == 0)
                    for tiles in [GemmKernel::Tile64, GemmKernel::Tile128] {
                        g.set_gemm_kernel(tiles);
                        g.poison(&c).unwrap();
                        g.gemm(dt, out_f32, &da, &dw, m, n, k, e, &c).unwrap();
                        let got = g.download(out_dt, &c, m * n).unwrap();
                        let err = rel_err(&got, &want);
                        assert!(
                            err <= tolerance(dt, !out_f32),
                            "gemm {dt:?} -> {out_dt:?} {tiles:?} m={m} n={n} k={k} epi={epi}: \
                             rel err {err:e}"
                        );
                    }
                    g.set_gemm_kernel(GemmKernel::Tile64);
                }
            }
        }
    }
}

#[test]
fn layernorm_matches_cpu() {
    let g = gpu_or_skip!();
    let mut rng = rng(2);
    for dt in DTYPES {
        for &rows in &[1usize, 7, 33, 257] {
            for &n in &[32usize, 36, 40, 384, 1536] {
                for with_res in [false, true] {
                    // a large mean on purpose: fp32 statistics must stay exact
                    let x = rng.normal_vec(rows * n, 3.0, 1.0);
                    let r = rng.normal_vec(rows * n, 0.0, 0.5);
                    let w = rng.normal_vec(n, 1.0, 0.1);
                    let b = rng.normal_vec(n, 0.0, 0.1);
                    let dx = g.upload(Dtype::F32, &x, "x").unwrap();
                    let dres = g.upload(Dtype::F32, &r, "r").unwrap();
                    let (dw, dbias) = (
                        g.upload(Dtype::F32, &w, "w").unwrap(),
                        g.upload(Dtype::F32, &b, "b").unwrap(),
                    );
                    let out32 = out_buf(&g, Dtype::F32, rows * n);
                    let outc = out_buf(&g, dt, rows * n);
                    let res = with_res.then_some(&dres);
                    g.layernorm(
                        dt,
                        &dx,
                        res,
                        rows,
                        n,
                        (&dw, &dbias, 1e-7),
                        &out32,
                        Some(&outc),
                    )
                    .unwrap();
                    let mut want: Vec<f32> = if with_res {
                        x.iter().zip(&r).map(|(a, b)| a + b).collect()
                    } else {
                        x.clone()
                    };
                    layer_norm_rows(&mut want, n, &w, &b, 1e-7);
                    let got32 = g.download(Dtype::F32, &out32, rows * n).unwrap();
                    let gotc = g.download(dt, &outc, rows * n).unwrap();
                    let d = max_abs_diff(&got32, &want);
                    assert!(
                        d <= 2e-5,
                        "layernorm {dt:?} rows={rows} n={n} res={with_res}: max |diff| {d:e}"
                    );
                    let e = rel_err(&gotc, &dt.round(&want));
                    assert!(e <= tolerance(dt, true), "layernorm copy {dt:?}: {e:e}");
                    // in place (out32 == input), as the conv block uses it
                    g.layernorm(dt, &dx, res, rows, n, (&dw, &dbias, 1e-7), &dx, None)
                        .unwrap();
                    let inplace = g.download(Dtype::F32, &dx, rows * n).unwrap();
                    assert!(max_abs_diff(&inplace, &want) <= 2e-5, "in-place layernorm");
                }
            }
        }
    }
}

#[test]
fn embeddings_match_cpu() {
    let g = gpu_or_skip!();
    let mut rng = rng(3);
    let vocab = 1000;
    for dt in DTYPES {
        for &n in &[24usize, 32, 384] {
            for &(with_pos, with_type) in &[(false, false), (true, true), (true, false)] {
                let mut lens = {
                    let nb = 1 + rng.below(20);
                    lens_batch(&mut rng, nb, 64)
                };
                lens.push(0); // an empty sequence must not disturb the others
                let ids = ids_for(&mut rng, &lens, vocab);
                let packed = Packed::new(&ids).unwrap();
                let t = packed.tokens();
                let word = dt.round(&rng.normal_vec(vocab * n, 0.0, 0.5));
                let pos = dt.round(&rng.normal_vec(64 * n, 0.0, 0.5));
                let ty = dt.round(&rng.normal_vec(n, 0.0, 0.5));
                let w = rng.normal_vec(n, 1.0, 0.1);
                let b = rng.normal_vec(n, 0.0, 0.1);
                let db = g.upload_batch(&packed, vocab).unwrap();
                let dword = g.upload(dt, &word, "word").unwrap();
                let dpos = g.upload(dt, &pos, "pos").unwrap();
                let dty = g.upload(dt, &ty, "type").unwrap();
                let (dw, dbias) = (
                    g.upload(Dtype::F32, &w, "w").unwrap(),
                    g.upload(Dtype::F32, &b, "b").unwrap(),
                );
                let pe = with_pos.then_some((&dpos, 64));
                let te = with_type.then_some(&dty);
                // reference
                let mut raw = vec![0.0f32; t * n];
                for (tok, row) in raw.chunks_exact_mut(n).enumerate() {
                    let id = packed.ids[tok] as usize;
                    let p = packed.pos[tok] as usize;
                    for c in 0..n {
                        let mut v = word[id * n + c];
                        if with_pos {
                            v += pos[p * n + c];
                        }
                        if with_type {
                            v += ty[c];
                        }
                        row[c] = v;
                    }
                }
                let out = out_buf(&g, dt, t * n);
                g.embed_gather(dt, &db, n, &dword, pe, te, &out).unwrap();
                let got = g.download(dt, &out, t * n).unwrap();
                let e = rel_err(&got, &dt.round(&raw));
                assert!(e <= tolerance(dt, true), "embed_gather {dt:?} n={n}: {e:e}");

                let mut want = raw.clone();
                layer_norm_rows(&mut want, n, &w, &b, 1e-7);
                let out32 = out_buf(&g, Dtype::F32, t * n);
                let outc = out_buf(&g, dt, t * n);
                g.embed_gather_ln(
                    dt,
                    &db,
                    n,
                    &dword,
                    pe,
                    te,
                    (&dw, &dbias, 1e-7),
                    &out32,
                    Some(&outc),
                )
                .unwrap();
                let got = g.download(Dtype::F32, &out32, t * n).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d <= 2e-5, "embed_gather_ln {dt:?} n={n}: max |diff| {d:e}");
            }
        }
    }
}

#[test]
fn attention_matches_cpu() {
    let g = gpu_or_skip!();
    check_attention(&g, AttentionKernel::V1);
}

/// The tensor-core attention, plain and pipelined (f16 / bf16, head dim 64; the other cases
/// fall back to v1 and are checked again).
#[test]
fn attention_tc_matches_cpu() {
    let g = gpu_or_skip!();
    for kernel in [AttentionKernel::V2, AttentionKernel::V2Async] {
        g.set_attention_kernel(kernel);
        if g.attention_runs(Dtype::F16, 64) != kernel {
            eprintln!(
                "NOTE: {} lacks {kernel:?}'s shared memory: version 1 runs (and is checked) instead",
                g.name()
            );
        }
        check_attention(&g, kernel);
    }
}

fn check_attention(g: &Gpu, kernel: AttentionKernel) {
    eprintln!("attention kernel {kernel:?}");
    let mut rng = rng(4);
    // (heads, d): xsmall, other instantiations, the fixtures' odd head dims, d > 128
    let heads_dims = [
        (6, 64),
        (2, 32),
        (2, 128),
        (4, 8),
        (3, 12),
        (4, 10),
        (2, 16),
        (1, 100),
        (1, 200),
    ];
    let len_sets: Vec<Vec<usize>> = vec![
        vec![1],
        vec![7],
        vec![16],
        vec![33],
        vec![128],
        vec![257],
        vec![512],
        vec![3, 17, 1, 40, 32, 31, 33],
    ];
    for dt in DTYPES {
        for (ci, &(heads, d)) in heads_dims.iter().enumerate() {
            for (li, lens) in len_sets.iter().enumerate() {
                // keep the f64 reference affordable: long sequences only with the xsmall shape
                let longest = *lens.iter().max().unwrap();
                if longest > 128 && (ci != 0 || quick()) {
                    continue;
                }
                let h = heads * d;
                let (buckets, max_rel, span) = match li % 3 {
                    0 => (256i64, 512usize, 256usize),
                    1 => (-1, 12, 12),
                    _ => (16, 64, 16),
                };
                let max_len = 512;
                let rel = RelPosTable::new(max_len, buckets, max_rel, span);
                let (c2p, p2c) =
                    [(true, true), (true, false), (false, true), (false, false)][(ci + li) % 4];
                let offsets: Vec<usize> = std::iter::once(0)
                    .chain(lens.iter().scan(0, |s, &l| {
                        *s += l;
                        Some(*s)
                    }))
                    .collect();
                let t = *offsets.last().unwrap();
                let qkv = dt.round(&rng.normal_vec(t * 3 * h, 0.0, 1.0));
                let pk = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
                let pq = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
                let scale = 1.0 / ((d * (1 + c2p as usize + p2c as usize)) as f32).sqrt();
                let ids: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0u32; l]).collect();
                let packed = Packed::new(&ids).unwrap();
                let db = g.upload_batch(&packed, 1).unwrap();
                let drel = g.upload_relpos(&rel, 2 * span).unwrap();
                let dqkv = g.upload(dt, &qkv, "qkv").unwrap();
                let dpk = g.upload(dt, &pk, "pk").unwrap();
                let dpq = g.upload(dt, &pq, "pq").unwrap();
                let ctx = out_buf(g, dt, t * h);
                g.attention(
                    dt,
                    &db,
                    &dqkv,
                    c2p.then_some(&dpk),
                    p2c.then_some(&dpq),
                    &drel,
                    heads,
                    d,
                    scale,
                    &ctx,
                )
                .unwrap();
                let got = g.download(dt, &ctx, t * h).unwrap();
                let want = attention_ref(
                    &qkv,
                    &offsets,
                    c2p.then_some(&pk[..]),
                    p2c.then_some(&pq[..]),
                    &rel,
                    heads,
                    d,
                    scale,
                );
                let err = rel_err(&got, &want);
                let tl = if dt == Dtype::F32 {
                    tol::ATTENTION_F32
                } else {
                    tolerance(dt, true)
                };
                assert!(
                    err <= tl,
                    "attention {dt:?} heads={heads} d={d} lens={lens:?} c2p={c2p} p2c={p2c}: rel err {err:e}"
                );
            }
        }
    }
    // a batch of 64 short sequences
    let lens = lens_batch(&mut rng, 64, 40);
    let (heads, d, span) = (6, 64, 256);
    let h = heads * d;
    let rel = RelPosTable::new(512, 256, 512, span);
    let ids: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0u32; l]).collect();
    let packed = Packed::new(&ids).unwrap();
    let t = packed.tokens();
    let offsets: Vec<usize> = packed.cu_seqlens.iter().map(|&x| x as usize).collect();
    for dt in DTYPES {
        let qkv = dt.round(&rng.normal_vec(t * 3 * h, 0.0, 1.0));
        let pk = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
        let pq = dt.round(&rng.normal_vec(2 * span * h, 0.0, 1.0));
        let scale = 1.0 / ((d * 3) as f32).sqrt();
        let db = g.upload_batch(&packed, 1).unwrap();
        let drel = g.upload_relpos(&rel, 2 * span).unwrap();
        let (dqkv, dpk, dpq) = (
            g.upload(dt, &qkv, "").unwrap(),
            g.upload(dt, &pk, "").unwrap(),
            g.upload(dt, &pq, "").unwrap(),
        );
        let ctx = out_buf(g, dt, t * h);
        g.attention(
            dt,
            &db,
            &dqkv,
            Some(&dpk),
            Some(&dpq),
            &drel,
            heads,
            d,
            scale,
            &ctx,
        )
        .unwrap();
        let got = g.download(dt, &ctx, t * h).unwrap();
        let want = attention_ref(&qkv, &offsets, Some(&pk), Some(&pq), &rel, heads, d, scale);
        let err = rel_err(&got, &want);
        let tl = if dt == Dtype::F32 {
            tol::ATTENTION_F32
        } else {
            tolerance(dt, true)
        };
        assert!(err <= tl, "attention {dt:?} batch of 64: rel err {err:e}");
    }
}

#[test]
fn pooling_and_normalize_match_cpu() {
    let g = gpu_or_skip!();
    let mut rng = rng(5);
    use PoolingMode::*;
    let mode_sets: [&[PoolingMode]; 8] = [
        &[Cls],
        &[Max],
        &[Mean],
        &[MeanSqrtLen],
        &[WeightedMean],
        &[LastToken],
        &[Max, MeanSqrtLen],
        &[Cls, Max, Mean, MeanSqrtLen, WeightedMean, LastToken],
    ];
    for &h in &[32usize, 40, 384] {
        for modes in mode_sets {
            let mut lens = {
                let nb = 1 + rng.below(64);
                lens_batch(&mut rng, nb, 300)
            };
            lens.insert(rng.below(lens.len()), 0);
            let ids: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0u32; l]).collect();
            let packed = Packed::new(&ids).unwrap();
            let t = packed.tokens();
            let x = rng.normal_vec(t * h, 0.0, 1.0);
            let db = g.upload_batch(&packed, 1).unwrap();
            let dx = g.upload(Dtype::F32, &x, "x").unwrap();
            let dim = modes.len() * h;
            let out = out_buf(&g, Dtype::F32, lens.len() * dim);
            g.pool(&db, &dx, h, modes, &out).unwrap();
            let got = g.download(Dtype::F32, &out, lens.len() * dim).unwrap();
            let mut want = vec![0.0f32; lens.len() * dim];
            for (b, row) in want.chunks_exact_mut(dim).enumerate() {
                let (s, e) = (
                    packed.cu_seqlens[b] as usize,
                    packed.cu_seqlens[b + 1] as usize,
                );
                deberta_embed::pooling::pool(modes, &x[s * h..e * h], h, row);
            }
            let err = rel_err(&got, &want);
            assert!(err <= 2e-6, "pool {modes:?} h={h}: rel err {err:e}");

            g.l2_normalize(&out, lens.len(), dim).unwrap();
            let got = g.download(Dtype::F32, &out, lens.len() * dim).unwrap();
            for row in want.chunks_exact_mut(dim) {
                deberta_embed::pooling::l2_normalize(row);
            }
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-6, "l2_normalize h={h}: max |diff| {d:e}");
        }
    }
}

#[test]
fn conv_matches_cpu() {
    let g = gpu_or_skip!();
    let mut rng = rng(6);
    for &(h, k, groups) in &[
        (40usize, 3usize, 2usize),
        (384, 3, 1),
        (64, 5, 4),
        (32, 1, 1),
    ] {
        for act in [Activation::Gelu, Activation::Tanh, Activation::Relu] {
            let lens = {
                let nb = 1 + rng.below(16);
                lens_batch(&mut rng, nb, 70)
            };
            let ids: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0u32; l]).collect();
            let packed = Packed::new(&ids).unwrap();
            let t = packed.tokens();
            let offsets: Vec<usize> = packed.cu_seqlens.iter().map(|&x| x as usize).collect();
            let x = rng.normal_vec(t * h, 0.0, 1.0);
            let w = rng.normal_vec(
                h * (h / groups) * k,
                0.0,
                1.0 / ((h / groups * k) as f32).sqrt(),
            );
            let bias = rng.normal_vec(h, 0.0, 0.1);
            let db = g.upload_batch(&packed, 1).unwrap();
            let (dx, dw, dbias) = (
                g.upload(Dtype::F32, &x, "x").unwrap(),
                g.upload(Dtype::F32, &w, "w").unwrap(),
                g.upload(Dtype::F32, &bias, "b").unwrap(),
            );
            let out = out_buf(&g, Dtype::F32, t * h);
            g.conv1d_act(&db, &dx, h, k, groups, &dw, &dbias, act, &out)
                .unwrap();
            let got = g.download(Dtype::F32, &out, t * h).unwrap();
            let mut want = vec![0.0f32; t * h];
            conv1d_act_into(&x, &offsets, h, k, groups, &w, &bias, act, &mut want);
            let err = rel_err(&got, &want);
            assert!(
                err <= 2e-6,
                "conv h={h} k={k} groups={groups} {act:?}: rel err {err:e}"
            );
        }
    }
}

fn load_cuda(r: &Reference, precision: Precision, batch_size: usize) -> Embedder {
    let opts = EmbedderOptions {
        batch_size,
        precision,
        ..Default::default()
    };
    Embedder::load_with(r.model_dir(), Device::Cuda(0), opts)
        .unwrap_or_else(|e| panic!("{}: CUDA load failed: {e}", r.name))
}

#[test]
fn fixtures_end_to_end_every_precision() {
    let _g = gpu_or_skip!();
    for (precision, max_abs, min_cos) in [
        (Precision::F32, 1e-4f32, 0.99999f64),
        (Precision::F16, f32::INFINITY, 0.999),
        (Precision::BF16, f32::INFINITY, 0.999),
    ] {
        let mut worst = (0.0f32, 1.0f64);
        for name in model_names() {
            let r = Reference::load(&name);
            let want = r.embeddings();
            let e = load_cuda(&r, precision, 4);
            let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
            let got = e.encode(&texts).unwrap();
            for i in 0..texts.len() {
                let w = &want[i * r.dim..(i + 1) * r.dim];
                let d = max_abs_diff(got.row(i), w);
                let c = cosine(got.row(i), w);
                assert!(
                    d <= max_abs,
                    "{name} {precision}: sentence {i} max |diff| {d:e}"
                );
                assert!(c >= min_cos, "{name} {precision}: sentence {i} cosine {c}");
                worst = (worst.0.max(d), worst.1.min(c));
            }
            // per-layer hidden states (f32 only: the exactness check)
            if precision == Precision::F32 && r.meta["hidden"].as_bool() == Some(true) {
                let n_sent = r.meta["hidden_sentences"].as_u64().unwrap() as usize;
                for s in 0..n_sent {
                    let hs = e.hidden_states(&r.token_ids[s]).unwrap();
                    for (l, got) in hs.iter().enumerate() {
                        let (_, want) = r.tensor(&format!("hidden.{l}.{s}")).unwrap();
                        let d = max_abs_diff(got, &want);
                        assert!(
                            d <= 1e-4,
                            "{name}: layer {l} sentence {s}: max |diff| {d:e}"
                        );
                    }
                }
            }
        }
        eprintln!(
            "fixtures on CUDA {precision}: max |diff| {:.3e}, min cosine {:.6}",
            worst.0, worst.1
        );
    }
}

#[test]
fn batch_invariance() {
    let _g = gpu_or_skip!();
    for precision in [Precision::F32, Precision::F16, Precision::BF16] {
        for name in ["st2_v3like", "st3_conv_multipool"] {
            let r = Reference::load(name);
            let e = load_cuda(&r, precision, 64);
            let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
            let batched = e.encode(&texts).unwrap();
            let mut worst = 0.0f32;
            for (i, t) in texts.iter().enumerate() {
                let alone = e.encode(&[t]).unwrap();
                worst = worst.max(max_abs_diff(alone.row(0), batched.row(i)));
            }
            eprintln!("{name} {precision}: alone vs batched max |diff| {worst:.3e}");
            // rows are computed independently of their batch: only rounding could differ
            assert!(
                worst <= 1e-5,
                "{name} {precision}: alone vs batched {worst:e}"
            );
        }
    }
}

#[test]
fn synthetic_xsmall_matches_cpu() {
    let _g = gpu_or_skip!();
    let mut rng = rng(7);
    let lens = [16usize, 128, 1, 512, 33];
    let ids = ids_for(&mut rng, &lens, 128_100);
    let cpu = Embedder::synthetic_xsmall(EmbedderOptions::default()).unwrap();
    let want = cpu.encode_ids(&ids).unwrap();
    for precision in [Precision::F32, Precision::F16, Precision::BF16] {
        let m = cuda::synthetic_xsmall(0, precision).unwrap();
        let got = m
            .encode_batches(&ids, 2, usize::MAX, &[PoolingMode::Mean])
            .unwrap();
        let mut worst = (0.0f32, 1.0f64);
        for i in 0..ids.len() {
            let (a, b) = (&got[i * 384..(i + 1) * 384], want.row(i));
            worst = (worst.0.max(max_abs_diff(a, b)), worst.1.min(cosine(a, b)));
        }
        eprintln!(
            "synthetic xsmall {precision} vs CPU: max |diff| {:.3e}, min cosine {:.6}",
            worst.0, worst.1
        );
        match precision {
            Precision::F32 => assert!(worst.0 <= 1e-3, "xsmall f32: {:e}", worst.0),
            _ => assert!(worst.1 >= 0.999, "xsmall {precision}: cosine {}", worst.1),
        }
    }
}

/// A shape's second forward is captured into a CUDA graph and later ones replay it: the
/// replays must give exactly the eager launches' result, for the batch captured and for
/// another batch of the same shape (new ids uploaded into the same buffers). A third batch
/// has the same tokens, sequences and 16-row attention tiles but one more 64-row block of the
/// tensor-core attention: it must get a graph of its own, not replay the first one's grid.
#[test]
fn graph_replays_equal_eager_launches() {
    let _g = gpu_or_skip!();
    let mut rng = rng(11);
    let lens = [7usize, 64, 33, 20];
    let lens_c = [65usize, 16, 17, 26]; // 124 tokens, 10 tiles, as `lens`; 5 v2 blocks, not 4
    let (a, b, c) = (
        ids_for(&mut rng, &lens, 128_100),
        ids_for(&mut rng, &lens, 128_100),
        ids_for(&mut rng, &lens_c, 128_100),
    );
    let modes = [PoolingMode::Mean];
    for (precision, kernel, tiles) in [
        (Precision::F32, AttentionKernel::V1, GemmKernel::Tile64),
        (Precision::F16, AttentionKernel::V1, GemmKernel::Tile64),
        (Precision::F16, AttentionKernel::V2, GemmKernel::Tile64),
        (Precision::BF16, AttentionKernel::V2, GemmKernel::Tile64),
        (
            Precision::F16,
            AttentionKernel::V2Async,
            GemmKernel::Tile128,
        ),
    ] {
        let m = cuda::synthetic_xsmall(0, precision).unwrap();
        m.gpu().set_attention_kernel(kernel);
        m.gpu().set_gemm_kernel(tiles);
        let precision = format!("{precision} attention {kernel:?} gemm {tiles:?}");
        let run = |ids: &[Vec<u32>]| m.encode_batches(ids, 8, usize::MAX, &modes).unwrap();
        m.gpu().set_graphs(false);
        let (want_a, want_b, want_c) = (run(&a), run(&b), run(&c));
        assert_ne!(want_a, want_b, "{precision}: the two batches must differ");
        m.gpu().set_graphs(true);
        // eager (first sight), capture + replay, replay; then the other batch, twice; then the
        // third shape: eager, capture + replay, replay
        for (round, (ids, want)) in [(&a, &want_a); 3]
            .into_iter()
            .chain([(&b, &want_b); 2])
            .chain([(&c, &want_c); 3])
            .enumerate()
        {
            assert!(run(ids) == *want, "{precision}: round {round} differs");
        }
        let stats = m.graph_stats();
        eprintln!("{precision}: graphs {stats:?}");
        assert!(
            stats.failures.is_empty(),
            "{precision}: {:?}",
            stats.failures
        );
        assert_eq!(stats.captured, 2, "{precision}: two shapes, two graphs");
    }
}

/// `serve --device cuda`: 32 concurrent clients on `/v1/embeddings`, each answered with its
/// own rows, within the numerics contract (f32, 1e-4) of sentence-transformers.
#[test]
fn server_on_the_gpu_answers_concurrent_clients() {
    use deberta_embed::server::ServerOptions;
    use std::sync::Arc;
    let _g = gpu_or_skip!();
    let name = "st2_v3like";
    let r = Reference::load(name);
    let (want, sentences, dim) = (
        Arc::new(r.embeddings()),
        Arc::new(r.sentences.clone()),
        r.dim,
    );
    let n = sentences.len();
    let opts = ServerOptions {
        model_name: name.into(),
        ..Default::default()
    };
    let srv = test_server::TestServer::start(load_cuda(&r, Precision::F32, 32), opts);
    let addr = srv.addr;
    let barrier = Arc::new(std::sync::Barrier::new(32));
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (want, sentences, barrier) = (want.clone(), sentences.clone(), barrier.clone());
            std::thread::spawn(move || {
                let idx: Vec<usize> = (0..1 + c % 5).map(|j| (c + 3 * j) % n).collect();
                let texts: Vec<&str> = idx.iter().map(|&i| sentences[i].as_str()).collect();
                barrier.wait();
                let resp =
                    http::post_json(addr, "/v1/embeddings", &serde_json::json!({"input": texts}));
                assert_eq!(resp.status, 200, "client {c}: {}", resp.text());
                let v = resp.json();
                for (k, &i) in idx.iter().enumerate() {
                    assert_eq!(v["data"][k]["index"], k, "client {c}");
                    let row: Vec<f32> = v["data"][k]["embedding"]
                        .as_array()
                        .expect("embedding array")
                        .iter()
                        .map(|x| x.as_f64().expect("number") as f32)
                        .collect();
                    let d = max_abs_diff(&row, &want[i * dim..(i + 1) * dim]);
                    assert!(d <= 1e-4, "client {c} sentence {i}: max |diff| {d:e}");
                }
            })
        })
        .collect();
    let failed = clients.into_iter().filter_map(|h| h.join().err()).count();
    srv.shutdown().expect("serve");
    assert_eq!(failed, 0, "{failed} of 32 clients failed");
}

#[test]
fn errors_are_clean() {
    let g = gpu_or_skip!();
    assert!(Gpu::new(1_000).is_err());
    // a buffer too small is an error, not an out-of-bounds launch
    let small = g.alloc(16, "small").unwrap();
    let e = g.gemm(
        Dtype::F32,
        true,
        &small,
        &small,
        64,
        64,
        64,
        Epi::None,
        &small,
    );
    assert!(e.is_err());
    let m = cuda::synthetic_xsmall(0, Precision::F16).unwrap();
    assert!(m
        .encode_batches(&[vec![1u32; 513]], 1, 4096, &[PoolingMode::Mean])
        .is_err());
    assert!(m
        .encode_batches(&[vec![200_000u32]], 1, 4096, &[PoolingMode::Mean])
        .is_err());
}

/// Cross-encoders on the GPU (fp32): the backbone on the device, the head on the [CLS] rows,
/// token types of pairs through the widened vocabulary; logits equal sentence-transformers'
/// `CrossEncoder.predict` (tests/fixtures/reference/ce_*.json) within the 1e-4 contract.
#[test]
fn cross_encoders_match_sentence_transformers_on_the_gpu() {
    let _g = gpu_or_skip!();
    for name in [
        "ce_hf_1label",
        "ce_st6_3label_types",
        "ce_st6_1label_tanh",
        "ce_legacy_2label",
        "ce_v4_1label_identity",
    ] {
        let p = common::fixtures().join(format!("reference/{name}.json"));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let pairs: Vec<(&str, &str)> = r["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
            .collect();
        let want: Vec<f32> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| match v {
                serde_json::Value::Array(a) => {
                    a.iter().map(|x| x.as_f64().unwrap() as f32).collect()
                }
                x => vec![x.as_f64().unwrap() as f32],
            })
            .collect();
        let opts = EmbedderOptions {
            precision: Precision::F32,
            batch_size: 8,
            ..Default::default()
        };
        let ce = deberta_embed::CrossEncoder::load_with(
            common::fixtures().join("models").join(name),
            Device::Cuda(0),
            opts,
        )
        .unwrap();
        let got = ce.predict_raw(&pairs).unwrap();
        let d = max_abs_diff(got.as_slice(), &want);
        assert!(d <= 1e-4, "{name}: max |diff| {d:e}");
    }
}
