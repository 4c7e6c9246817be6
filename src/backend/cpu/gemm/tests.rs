//! GEMM against the plain triple loop, for every kernel level this CPU runs, every epilogue and
//! shapes that are not multiples of any tile size.

use super::*;

use crate::testing::XorShift as Rng;

/// How the weight of a checked product is stored.
#[derive(Clone, Copy, PartialEq)]
enum Stored {
    F32,
    /// `with_bf16_storage`: bf16 widened in the products
    Bf16,
    /// `with_bf16_dot`: bf16 pairs for `vdpbf16ps`, x rounded to bf16 as well
    Bf16Dot,
    /// `with_bf16_tiles`: bf16 pair tiles for the AMX kernel, x rounded to bf16 as well
    #[cfg(target_arch = "x86_64")]
    Bf16Tiles,
}

/// Run every available level and epilogue on one shape and compare with the reference.
fn check_shape(m: usize, n: usize, k: usize) {
    check_shape_with(m, n, k, Stored::F32)
}

/// As `check_shape` for a stored form of the weight; the reference gets the same bf16-rounded
/// weights (and x, for `Bf16Dot`). A product of two bf16 values is exact in fp32, so only the
/// summation order differs from the reference and the fp32 tolerance still applies.
fn check_shape_with(m: usize, n: usize, k: usize, stored: Stored) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((m * 1_000_003 + n * 1009 + k) as u64));
    let mut x = rng.signed_vec(m * k);
    let mut w = rng.signed_vec(n * k);
    let bias = rng.signed_vec(n);
    let res = rng.signed_vec(m * n);
    let round = |v: &mut Vec<f32>| {
        v.iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32())
    };
    let mut packed = PackedWeight::new(&w, n, k);
    let mut levels = SimdLevel::available();
    match stored {
        Stored::F32 => {}
        Stored::Bf16 => {
            packed = packed.with_bf16_storage();
            assert!(packed.is_bf16() || n * k == 0);
            round(&mut w);
        }
        Stored::Bf16Dot => {
            packed = packed.with_bf16_dot();
            assert!(packed.is_bf16_dot());
            round(&mut w);
            // (x is rounded by the kernel's packing; the reference rounds it up front)
            round(&mut x);
            levels = vec![SimdLevel::Avx512];
        }
        #[cfg(target_arch = "x86_64")]
        Stored::Bf16Tiles => {
            packed = packed.with_bf16_tiles();
            assert!(packed.is_bf16_tiles() && packed.is_bf16());
            round(&mut w);
            round(&mut x);
            levels = vec![SimdLevel::Avx512];
        }
    }
    assert_eq!((packed.n(), packed.k()), (n, k));

    // Plain product (in order) and the scale of each dot product, sum |x_ip * w_jp|.
    let mut plain = vec![0.0f32; m * n];
    reference_linear(&x, m, &w, n, k, Epilogue::None, &mut plain);
    let mut scale = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            scale[i * n + j] = (0..k).map(|p| (x[i * k + p] * w[j * k + p]).abs()).sum();
        }
    }

    let eps: [(&str, Epilogue<'_>); 4] = [
        ("none", Epilogue::None),
        ("bias", Epilogue::Bias(&bias)),
        ("bias_gelu", Epilogue::BiasGelu(&bias)),
        ("bias_residual", Epilogue::BiasResidual(&bias, &res)),
    ];
    for level in levels {
        for &(name, ep) in &eps {
            // Expected: the epilogue applied to the plain product (the reference's own path).
            let mut want = plain.clone();
            for (i, row) in want.chunks_exact_mut(n).enumerate() {
                apply_epilogue_row::<false>(ep, row, i, 0, n);
            }
            for (threads, pool) in pools() {
                // One spare element past m * n, which must stay untouched.
                let mut got = vec![f32::NAN; m * n + 1];
                got[m * n] = 7.0;
                pool.install(|| linear_with(level, &x, m, &packed, ep, &mut got));
                assert_eq!(got[m * n], 7.0, "{level} {name} wrote past m*n");
                for idx in 0..m * n {
                    // Reordering a sum of k products changes it by at most ~k * eps * sum |terms|;
                    // the epilogue adds one rounding of |bias| + |residual| and GELU is 1.13-Lipschitz.
                    let tol = 1e-5 * (scale[idx] + 2.0) + 1e-6;
                    let (g, e) = (got[idx], want[idx]);
                    assert!(
                    (g - e).abs() <= tol,
                    "{level} {name} {threads} threads m={m} n={n} k={k} at ({}, {}): got {g}, want {e}",
                    idx / n,
                    idx % n
                );
                }
            }
        }
    }
}

/// Rayon pools the checks run in: one thread (everything on one tile sequence) and three
/// (parallel plans, an odd split), whatever this machine's core count.
fn pools() -> [(usize, &'static rayon::ThreadPool); 2] {
    use std::sync::OnceLock;
    static POOLS: OnceLock<[rayon::ThreadPool; 2]> = OnceLock::new();
    let p = POOLS.get_or_init(|| {
        [1, 3].map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("pool")
        })
    });
    [(1, &p[0]), (3, &p[1])]
}

const MS: [usize; 6] = [1, 2, 7, 16, 33, 129];
const NS: [usize; 7] = [1, 5, 32, 384, 1152, 1536, 383];
const KS: [usize; 6] = [1, 3, 64, 384, 1536, 385];

fn check_m(m: usize) {
    for n in NS {
        for k in KS {
            check_shape(m, n, k);
        }
    }
}

#[test]
fn gemm_m1() {
    check_m(MS[0]);
}
#[test]
fn gemm_m2() {
    check_m(MS[1]);
}
#[test]
fn gemm_m7() {
    check_m(MS[2]);
}
#[test]
fn gemm_m16() {
    check_m(MS[3]);
}
#[test]
fn gemm_m33() {
    check_m(MS[4]);
}
#[test]
fn gemm_m129() {
    check_m(MS[5]);
}

#[test]
fn gemm_bf16_storage() {
    for m in [1, 16, 33] {
        for n in [5, 383, 384] {
            for k in [3, 384, 385, 1536] {
                check_shape_with(m, n, k, Stored::Bf16);
            }
        }
    }
}

/// The `avx512_bf16` dot-product path (skipped, saying so, on CPUs without it): odd k (a
/// zero-padded last pair), k split into blocks with an odd last block (999 = 334 + 334 + 331),
/// the m-split and column-split plans, partial panels; and the layout round trip back to
/// `with_bf16_storage`.
#[test]
fn gemm_bf16_dot() {
    if !bf16_dot_detected() {
        eprintln!("SKIPPED gemm_bf16_dot: this CPU has no avx512_bf16");
        return;
    }
    for m in [1, 16, 33, 129] {
        for n in [5, 383, 384] {
            for k in [3, 384, 385, 999, 1536] {
                check_shape_with(m, n, k, Stored::Bf16Dot);
            }
        }
    }
    let w = Rng(5).signed_vec(40 * 7);
    let via_pairs = PackedWeight::new(&w, 40, 7)
        .with_bf16_dot()
        .with_bf16_storage();
    let direct = PackedWeight::new(&w, 40, 7).with_bf16_storage();
    match (&via_pairs.storage, &direct.storage) {
        (Storage::Bf16(a), Storage::Bf16(b)) => assert_eq!(a, b),
        _ => panic!("with_bf16_storage gives bf16 panels"),
    }
}

/// The AMX-BF16 tile kernel (skipped, saying so, where the CPU lacks it or Linux refuses the
/// tile state): k not a multiple of 32 (zero-padded pairs, odd k), rows and columns past
/// whole 32 x 32 blocks (the scratch path), one row block split by columns, many row blocks
/// in parallel, every epilogue; and the layout round trips back to the other bf16 forms.
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_bf16_tiles() {
    if !amx::amx_available() {
        eprintln!("SKIPPED gemm_bf16_tiles: no AMX-BF16 here (or the tile state was refused)");
        return;
    }
    for m in [1, 16, 31, 32, 33, 129, 300] {
        for n in [5, 32, 383, 384, 1152] {
            for k in [1, 3, 32, 384, 385, 999, 1536] {
                check_shape_with(m, n, k, Stored::Bf16Tiles);
            }
        }
    }
    let w = Rng(5).signed_vec(40 * 37);
    let via_tiles = PackedWeight::new(&w, 40, 37)
        .with_bf16_tiles()
        .with_bf16_storage();
    let direct = PackedWeight::new(&w, 40, 37).with_bf16_storage();
    match (&via_tiles.storage, &direct.storage) {
        (Storage::Bf16(a), Storage::Bf16(b)) => assert_eq!(a, b),
        _ => panic!("with_bf16_storage gives bf16 panels"),
    }
    let (a, b) = (
        PackedWeight::new(&w, 40, 37)
            .with_bf16_tiles()
            .with_bf16_dot(),
        PackedWeight::new(&w, 40, 37).with_bf16_dot(),
    );
    match (&a.storage, &b.storage) {
        (Storage::Bf16Pairs(a), Storage::Bf16Pairs(b)) => assert_eq!(a, b),
        _ => panic!("with_bf16_dot gives pair panels"),
    }
}

/// The tile configuration the AMX kernel loads: palette 1, eight tiles of 16 rows x 64 bytes,
/// reserved bytes zero (`ldtilecfg` faults on anything else); checked on any x86 CPU.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_tile_config_layout() {
    let cfg = amx::TileConfig::all_16x64().0;
    assert_eq!(cfg[0], 1);
    assert!(cfg[1..16].iter().all(|&b| b == 0));
    for t in 0..8 {
        assert_eq!(u16::from_le_bytes([cfg[16 + 2 * t], cfg[17 + 2 * t]]), 64);
        assert_eq!(cfg[48 + t], 16);
    }
    assert!(cfg[32..48].iter().all(|&b| b == 0) && cfg[56..].iter().all(|&b| b == 0));
    assert_eq!(padded_pairs(1), 16);
    assert_eq!(padded_pairs(32), 16);
    assert_eq!(padded_pairs(33), 32);
    assert_eq!(padded_pairs(384), 192);
}

#[test]
fn gemm_small_m_paths() {
    // Big enough to run in parallel with the columns split into groups (`run_streaming`): one
    // x panel (1, 3, 14 rows), two (15 -> 8 + 7, 16, 28), three (29, 42), four and more (43, 100,
    // whose m-blocks hold three); k = 1536 is four k-blocks, n = 1150 ends in a partial panel.
    // The bf16 dot-product kernel streams the same way (where the CPU has avx512_bf16).
    for m in [1, 3, 14, 15, 16, 28, 29, 42, 43, 100] {
        check_shape(m, 1150, 1536);
        if bf16_dot_detected() {
            check_shape_with(m, 1150, 1536, Stored::Bf16Dot);
        }
    }
}

#[test]
fn gemm_odd_shapes() {
    // Edge panels of every height for each level, n-edges of every width, k = 0 and long k.
    for m in [3, 5, 13, 14, 15, 28, 29, 113, 250] {
        for n in [17, 31, 33, 63, 65] {
            for k in [0, 2, 511, 512, 513, 769] {
                check_shape(m, n, k);
            }
        }
    }
}

#[test]
fn gemm_large_m_parallel() {
    // Several m-blocks and n-blocks at once, as in a real batch.
    check_shape(1000, 384, 384);
    check_shape(300, 1536, 1536);
    // Shared pre-pack of x (several n-groups per m-block), packed in parallel.
    check_shape(200, 384, 1536);
    check_shape(60, 1152, 1536);
}

#[test]
fn gemm_empty() {
    let packed = PackedWeight::new(&[], 0, 4);
    let mut out = [5.0f32; 3];
    linear(&[1.0; 8], 2, &packed, Epilogue::None, &mut out);
    assert_eq!(out, [5.0; 3]);
    let packed = PackedWeight::new(&[1.0; 8], 2, 4);
    linear(&[], 0, &packed, Epilogue::None, &mut out);
    assert_eq!(out, [5.0; 3]);
}

#[test]
fn gemm_default_level_matches_forced() {
    let mut rng = Rng(42);
    let (m, n, k) = (16, 96, 384);
    let (x, w) = (rng.signed_vec(m * k), rng.signed_vec(n * k));
    let packed = PackedWeight::new(&w, n, k);
    let mut a = vec![0.0; m * n];
    let mut b = vec![0.0; m * n];
    linear(&x, m, &packed, Epilogue::None, &mut a);
    linear_with(simd_level(), &x, m, &packed, Epilogue::None, &mut b);
    assert_eq!(a, b);
    assert!(simd_level().is_available());
}

#[test]
fn gemm_level_names() {
    for l in SimdLevel::ALL {
        assert_eq!(SimdLevel::parse(l.name()), Some(l));
    }
    assert_eq!(SimdLevel::parse(" Scalar "), Some(SimdLevel::Portable));
    assert_eq!(SimdLevel::parse("sse9"), None);
    assert!(SimdLevel::Portable.is_available());
    assert_eq!(SimdLevel::detect(), *SimdLevel::available().last().unwrap());
}

#[test]
fn gemm_plans_split_small_m() {
    // One 16-token sentence on 2 threads: several tiles, all the columns covered once.
    for level in SimdLevel::ALL {
        for (m, n, k) in [
            (16, 384, 384),
            (16, 1536, 384),
            (16, 384, 1536),
            (128, 1152, 384),
            (224, 384, 1536),
            (4096, 1536, 384),
        ] {
            let p = Plan::new(level, m, n, k, 2, false);
            assert!(p.m_blocks * p.n_groups >= 2, "{level} {m}x{n}x{k}: {p:?}");
            assert!(p.ng_panels * p.n_groups >= n.div_ceil(NR));
            assert!(p.ng_panels * (p.n_groups - 1) < n.div_ceil(NR));
            assert!(p.mc * p.m_blocks >= m && p.mc * (p.m_blocks - 1) < m);
            assert!(p.kc <= KC_SINGLE_MAX && p.kc >= 1);
        }
    }
}

#[test]
#[should_panic(expected = "bias shorter than n")]
fn gemm_rejects_short_bias() {
    let packed = PackedWeight::new(&[1.0; 8], 2, 4);
    let mut out = [0.0f32; 2];
    linear(&[1.0; 4], 1, &packed, Epilogue::Bias(&[1.0]), &mut out);
}

#[test]
#[should_panic(expected = "residual shorter than m * n")]
fn gemm_rejects_short_residual() {
    let packed = PackedWeight::new(&[1.0; 8], 2, 4);
    let mut out = [0.0f32; 4];
    linear(
        &[1.0; 8],
        2,
        &packed,
        Epilogue::BiasResidual(&[1.0; 2], &[0.0; 3]),
        &mut out,
    );
}

#[test]
fn run_jobs_runs_units_before_tiles_once_each() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (threads, pool) in pools() {
        for (units, tiles) in [(0, 1), (0, 9), (1, 1), (3, 2), (7, 40)] {
            let unit_runs: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            let tile_runs: Vec<AtomicUsize> = (0..tiles).map(|_| AtomicUsize::new(0)).collect();
            let hinted: Vec<AtomicUsize> = (0..tiles).map(|_| AtomicUsize::new(0)).collect();
            let units_seen = AtomicUsize::new(0);
            pool.install(|| {
                run_jobs(
                    threads,
                    units,
                    &|u| {
                        unit_runs[u].fetch_add(1, Ordering::SeqCst);
                        units_seen.fetch_add(1, Ordering::SeqCst);
                    },
                    tiles,
                    &|t, next| {
                        if let Some(n) = next {
                            assert!(n > t && n < tiles, "next tile {n} after {t} of {tiles}");
                            hinted[n].fetch_add(1, Ordering::SeqCst);
                        }
                        assert_eq!(
                            units_seen.load(Ordering::SeqCst),
                            units,
                            "tile before units"
                        );
                        tile_runs[t].fetch_add(1, Ordering::SeqCst);
                    },
                )
            });
            assert!(unit_runs.iter().all(|c| c.load(Ordering::SeqCst) == 1));
            assert!(tile_runs.iter().all(|c| c.load(Ordering::SeqCst) == 1));
            // a tile is announced as the next one of at most one participant
            assert!(hinted.iter().all(|c| c.load(Ordering::SeqCst) <= 1));
        }
    }
}

#[test]
fn run_jobs_propagates_panics_without_hanging() {
    for (threads, pool) in pools() {
        for in_unit in [true, false] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    run_jobs(
                        threads,
                        4,
                        &|u| assert!(!(in_unit && u == 2), "unit 2 fails"),
                        6,
                        &|t, _| assert!(in_unit || t != 3, "tile 3 fails"),
                    )
                })
            }));
            assert!(
                r.is_err(),
                "{threads} threads, in_unit {in_unit}: panic lost"
            );
        }
    }
}

/// The int8 kernels this CPU runs: the tile unit (AMX-INT8) and AVX512-VNNI, each where present.
#[cfg(target_arch = "x86_64")]
fn int8_kernels() -> Vec<(&'static str, int8::Int8Kernel)> {
    let mut k = Vec::new();
    if amx::amx_int8_available() {
        k.push(("amx-int8", int8::Int8Kernel::Amx));
    }
    if int8::vnni_detected() {
        k.push(("vnni", int8::Int8Kernel::Vnni512));
    }
    if int8::avx_vnni_detected() {
        k.push(("avx-vnni", int8::Int8Kernel::Vnni256));
    }
    k
}

/// One int8 product on each available kernel against `reference_linear_int8`: the integer sums
/// and their dequantization are exact, so with no epilogue the outputs are equal bit for bit;
/// with one, only the epilogue's vectorized arithmetic (fused multiply-adds in GELU) differs.
/// Also bounds the distance to the f32 product by the quantization steps.
#[cfg(target_arch = "x86_64")]
fn check_int8_shape(
    m: usize,
    n: usize,
    k: usize,
    kernels: &[(&'static str, int8::Int8Kernel)],
    offsets: Option<&[usize]>,
) {
    let mut rng = Rng(0x51ED_270B ^ ((m * 1_000_003 + n * 1009 + k) as u64));
    let mut x = rng.signed_vec(m * k);
    // a few outliers, as activations have
    for i in 0..m {
        x[i * k + (i * 7) % k] *= 9.0;
    }
    let w = rng.signed_vec(n * k);
    let bias = rng.signed_vec(n);
    let res = rng.signed_vec(m * n);
    let packed = PackedWeight::new(&w, n, k).with_int8();
    assert!(packed.is_int8() && (packed.n(), packed.k()) == (n, k));
    let eps: [(&str, Epilogue<'_>); 4] = [
        ("none", Epilogue::None),
        ("bias", Epilogue::Bias(&bias)),
        ("bias_gelu", Epilogue::BiasGelu(&bias)),
        ("bias_residual", Epilogue::BiasResidual(&bias, &res)),
    ];
    let mut f32_out = vec![0.0f32; m * n];
    reference_linear(&x, m, &w, n, k, Epilogue::None, &mut f32_out);
    for &(name, ep) in &eps {
        let mut want = vec![0.0f32; m * n];
        reference_linear_int8(&x, m, &w, n, k, ep, &mut want, offsets);
        if name == "none" && offsets.is_none() {
            // Quantization error bound: x = x^ + ex with |ex| <= sx / 2 (x inside its row's
            // range), w = w^ + ew with |ew| <= sw / 2, so |x.w - x^.w^| <= sx/2 sum|w| +
            // sw/2 sum|x^| (plus f32 rounding of the sums).
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let (lo, hi) = row
                    .iter()
                    .fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
                let sx = (hi - lo) / 255.0;
                let sum_x: f32 = row.iter().map(|v| v.abs() + sx).sum();
                for j in 0..n {
                    let wr = &w[j * k..(j + 1) * k];
                    let sw = wr.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                    let sum_w: f32 = wr.iter().map(|v| v.abs()).sum();
                    let bound = 0.5 * sx * sum_w + 0.5 * sw * sum_x + 1e-4 * (sum_x + 1.0);
                    let (g, e) = (want[i * n + j], f32_out[i * n + j]);
                    assert!(
                        (g - e).abs() <= bound,
                        "int8 reference m={m} n={n} k={k} at ({i}, {j}): {g} vs f32 {e}, bound {bound}"
                    );
                }
            }
        }
        for &(kernel, which) in kernels {
            for (threads, _) in pools() {
                let mut got = vec![f32::NAN; m * n + 1];
                got[m * n] = 7.0;
                int8_linear(&x, m, &packed, ep, &mut got, which, threads, offsets);
                assert_eq!(got[m * n], 7.0, "{kernel} {name} wrote past m*n");
                for idx in 0..m * n {
                    let (g, e) = (got[idx], want[idx]);
                    let ok = if name == "none" {
                        g.to_bits() == e.to_bits()
                    } else {
                        (g - e).abs() <= 1e-6 * (e.abs() + 1.0)
                    };
                    assert!(
                        ok,
                        "{kernel} {name} {threads} threads m={m} n={n} k={k} at ({}, {}): got {g}, want {e}",
                        idx / n,
                        idx % n
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_int8_kernels_match_reference() {
    let kernels = int8_kernels();
    if kernels.is_empty() {
        eprintln!(
            "SKIPPED gemm_int8_kernels_match_reference: no AMX-INT8, AVX512-VNNI or AVX-VNNI here"
        );
        return;
    }
    for m in [1, 16, 31, 32, 33, 129, 300] {
        // one sequence, and uneven sequences (an empty one among them)
        let split = [0, m / 3, m / 3, m / 2 + 1, m].map(|o| o.min(m));
        for n in [5, 32, 383, 384] {
            for k in [1, 3, 63, 64, 65, 384, 999] {
                check_int8_shape(m, n, k, &kernels, None);
                check_int8_shape(m, n, k, &kernels, Some(&[0, m]));
                check_int8_shape(m, n, k, &kernels, Some(&split));
            }
        }
    }
    // the xsmall model's shapes: fused QKV, FFN in and out, 1 sentence and a batch
    for (m, n, k) in [(16, 1152, 384), (256, 1536, 384), (100, 384, 1536)] {
        check_int8_shape(m, n, k, &kernels, None);
        let seqs: Vec<usize> = (0..=m).step_by(16).chain([m]).collect();
        check_int8_shape(m, n, k, &kernels, Some(&seqs));
    }
}

/// `linear` (the dispatched path) runs int8 weights like the kernel `int8_gemm_form` names.
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_int8_dispatch() {
    if int8_gemm_form() == Int8Form::F32 {
        eprintln!("SKIPPED gemm_int8_dispatch: no int8 kernel on this CPU");
        return;
    }
    let (m, n, k) = (40, 70, 130);
    let mut rng = Rng(11);
    let (x, w) = (rng.signed_vec(m * k), rng.signed_vec(n * k));
    let packed = PackedWeight::new(&w, n, k).with_int8();
    let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
    linear(&x, m, &packed, Epilogue::None, &mut got);
    reference_linear_int8(&x, m, &w, n, k, Epilogue::None, &mut want, None);
    assert_eq!(got, want);
    // with sequences: the corrections of the reference
    let offsets = [0, 7, 7, 30, 40];
    linear_seqs(&x, m, &packed, Epilogue::None, &mut got, &offsets);
    reference_linear_int8(&x, m, &w, n, k, Epilogue::None, &mut want, Some(&offsets));
    assert_eq!(got, want);
    // f32 weights ignore the offsets
    let f = PackedWeight::new(&w, n, k);
    let mut plain = vec![0.0; m * n];
    linear(&x, m, &f, Epilogue::None, &mut plain);
    linear_seqs(&x, m, &f, Epilogue::None, &mut got, &offsets);
    assert_eq!(got, plain);
    // k = 0: no products, the epilogue alone
    let empty = PackedWeight::new(&[], 3, 0).with_int8();
    let mut out = vec![1.0; 2 * 3];
    linear(&[], 2, &empty, Epilogue::Bias(&[1.0, 2.0, 3.0]), &mut out);
    assert_eq!(out, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
}

#[test]
fn int8_weight_quantization() {
    let mut q = [0i8; 5];
    assert_eq!(
        int8::quantize_weight_row(&[0.5, -1.0, 0.25, 0.0, 1.0], &mut q),
        1.0 / 127.0
    );
    assert_eq!(q, [64, -127, 32, 0, 127]);
    assert_eq!(int8::quantize_weight_row(&[0.0; 5], &mut q), 0.0);
    assert_eq!(q, [0; 5]);
    assert!(int8::quantize_weight_row(&[1.0, f32::NAN, 0.0, 0.0, 0.0], &mut q).is_nan());
    assert!(int8::quantize_weight_row(&[1.0, f32::INFINITY, 0.0, 0.0, 0.0], &mut q).is_nan());
    // the packed layout dequantizes to scale * q, feature by feature, and the column sums
    // are the sums of q
    let (n, k) = (37, 70);
    let w = Rng(3).signed_vec(n * k);
    let packed = PackedWeight::new(&w, n, k).with_int8();
    let Storage::Int8(w8) = &packed.storage else {
        panic!("with_int8 gives int8 panels")
    };
    let (scale, colsum) = (w8.main.scale.clone(), w8.main.colsum.clone());
    // quantizing straight from the torch layout gives the same panels as through f32 panels
    let direct8 = PackedWeight::new_int8(&w, n, k);
    let Storage::Int8(d8) = &direct8.storage else {
        panic!("new_int8 gives int8 panels")
    };
    for (a, b) in [(&w8.main, &d8.main), (&w8.residual, &d8.residual)] {
        assert_eq!(lines_as_u32_any(&a.words), lines_as_u32_any(&b.words));
        assert_eq!((&a.scale, &a.colsum), (&b.scale, &b.colsum));
    }
    // the residual panels hold W - scale * q, quantized the same way
    let mut resid = vec![0.0f32; n * k];
    let mut qrow = vec![0i8; k];
    for j in 0..n {
        let row = &w[j * k..(j + 1) * k];
        let s = int8::quantize_weight_row(row, &mut qrow);
        for p in 0..k {
            resid[j * k + p] = row[p] - s * f32::from(qrow[p]);
        }
        let sr = int8::quantize_weight_row(&resid[j * k..(j + 1) * k], &mut qrow);
        assert_eq!(w8.residual.scale[j], sr);
        assert!(sr <= s / 2.0 / 127.0 * 1.0001, "residual scale {sr} vs {s}");
        assert_eq!(
            w8.residual.colsum[j],
            qrow.iter().map(|&v| i32::from(v)).sum::<i32>()
        );
    }
    assert!(scale[n..].iter().all(|&s| s == 0.0) && colsum[n..].iter().all(|&c| c == 0));
    let back = packed.with_bf16_storage().with_f32_storage();
    let direct = PackedWeight::new(&w, n, k);
    let (Storage::F32(b), Storage::F32(d)) = (&back.storage, &direct.storage) else {
        panic!("f32 panels")
    };
    let (b, d) = (lines_as_slice(b), lines_as_slice(d));
    for j in 0..n {
        let s = int8::quantize_weight_row(&w[j * k..(j + 1) * k], &mut qrow);
        assert_eq!(s, scale[j]);
        assert_eq!(colsum[j], qrow.iter().map(|&v| i32::from(v)).sum::<i32>());
        for (p, &qv) in qrow.iter().enumerate() {
            let (q_at, idx) = (f32::from(qv) * s, (j / NR * k + p) * NR + j % NR);
            // (via bf16 storage: the dequantized value rounded to bf16)
            assert_eq!(b[idx], half::bf16::from_f32(q_at).to_f32());
            assert!((d[idx] - q_at).abs() <= s / 2.0 + 1e-7);
        }
    }
}

#[test]
fn int8_activation_quantization() {
    let mut q = [0u8; 4];
    // range [-1, 3] (0 inside): scale 4/255, zero point round(255/4) = 64
    let r = int8::quantize_activation_row(&[-1.0, 0.0, 3.0, 1.0], &mut q);
    assert_eq!(r.scale, 4.0 / 255.0);
    assert_eq!(r.zero, 64);
    assert_eq!(q, [0, 64, 255, 128]);
    // all positive: the range is widened to 0, zero point 0
    // (0.7 -> 89.25, 0.5 -> 63.75 steps)
    let r = int8::quantize_activation_row(&[2.0, 0.7, 0.5, 2.0], &mut q);
    assert_eq!((r.scale, r.zero), (2.0 / 255.0, 0));
    assert_eq!(q, [255, 89, 64, 255]);
    // all negative: zero point 255
    let r = int8::quantize_activation_row(&[-2.0, -1.0, -0.5, -2.0], &mut q);
    assert_eq!((r.scale, r.zero), (2.0 / 255.0, 255));
    assert_eq!(q, [0, 128, 191, 0]);
    // zeros: scale 0, bytes 0; non-finite: NaN scale
    let r = int8::quantize_activation_row(&[0.0; 4], &mut q);
    assert_eq!((r.scale, r.zero, q), (0.0, 0, [0; 4]));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let r = int8::quantize_activation_row(&[1.0, bad, 0.0, 2.0], &mut q);
        assert!(r.scale.is_nan(), "{bad}");
    }
    // every value within half a step of its dequantization, on rows of many lengths (the
    // vectorized loop's remainder included) with outliers
    let mut rng = Rng(77);
    for len in [1, 15, 16, 17, 33, 384, 1000] {
        let mut x = rng.signed_vec(len);
        x[len / 2] *= 50.0;
        let mut q = vec![0u8; len];
        let r = int8::quantize_activation_row(&x, &mut q);
        for (&v, &b) in x.iter().zip(&q) {
            let back = r.scale * (i32::from(b) - r.zero) as f32;
            assert!(
                (back - v).abs() <= r.scale * 0.5001,
                "len {len}: {v} -> {back}"
            );
        }
    }
}

/// A non-finite weight or input turns the outputs it touches NaN (the forward then reports
/// the corrupt weights) instead of disappearing in the quantization.
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_int8_propagates_non_finite() {
    let kernels = int8_kernels();
    let (m, n, k) = (3, 4, 20);
    let mut w = Rng(8).signed_vec(n * k);
    w[2 * k + 5] = f32::NAN;
    let mut x = Rng(9).signed_vec(m * k);
    x[k + 3] = f32::INFINITY;
    let packed = PackedWeight::new(&w, n, k).with_int8();
    let mut want = vec![0.0; m * n];
    reference_linear_int8(&x, m, &w, n, k, Epilogue::None, &mut want, None);
    let nan_at = |out: &[f32]| -> Vec<bool> { out.iter().map(|v| v.is_nan()).collect() };
    let expect: Vec<bool> = (0..m * n).map(|i| i / n == 1 || i % n == 2).collect();
    assert_eq!(nan_at(&want), expect);
    for (kernel, which) in kernels {
        let mut got = vec![0.0; m * n];
        int8_linear(&x, m, &packed, Epilogue::None, &mut got, which, 1, None);
        assert_eq!(nan_at(&got), expect, "{kernel}");
    }
}

/// What the per-sequence corrections are for: the rounding of W moves every row of a sequence
/// alike, which mean pooling keeps; with the corrections, the mean of a sequence's outputs is
/// far closer to the f32 one (here rows sharing a common part, as a sentence's tokens do).
#[test]
fn int8_corrections_cancel_the_shared_rounding_error() {
    let (m, n, k) = (64, 96, 384);
    let mut rng = Rng(21);
    let common = rng.signed_vec(k);
    let x: Vec<f32> = (0..m * k)
        .map(|i| common[i % k] + 0.3 * rng.signed())
        .collect();
    let w: Vec<f32> = rng.signed_vec(n * k).iter().map(|v| 0.05 * v).collect();
    let mean_rows = |out: &[f32]| -> Vec<f64> {
        (0..n)
            .map(|j| (0..m).map(|i| f64::from(out[i * n + j])).sum::<f64>() / m as f64)
            .collect()
    };
    let dist = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut exact = vec![0.0; m * n];
    reference_linear(&x, m, &w, n, k, Epilogue::None, &mut exact);
    let (mut plain, mut fixed) = (vec![0.0; m * n], vec![0.0; m * n]);
    reference_linear_int8(&x, m, &w, n, k, Epilogue::None, &mut plain, None);
    reference_linear_int8(&x, m, &w, n, k, Epilogue::None, &mut fixed, Some(&[0, m]));
    let e = mean_rows(&exact);
    let (d_plain, d_fixed) = (dist(&mean_rows(&plain), &e), dist(&mean_rows(&fixed), &e));
    assert!(
        d_fixed * 5.0 < d_plain,
        "pooled error with corrections {d_fixed:e}, without {d_plain:e}"
    );
}

/// The vectorized row quantization (what the kernels run) equals the scalar definition, byte
/// for byte, on rows of every remainder length, with outliers, constant rows and non-finite
/// values.
#[test]
fn int8_vector_quantization_equals_scalar() {
    let mut rng = Rng(99);
    let mut rows: Vec<Vec<f32>> = (1..70).map(|len| rng.signed_vec(len)).collect();
    rows.push(
        (0..384)
            .map(|i| if i == 17 { 40.0 } else { rng.signed() })
            .collect(),
    );
    rows.push(vec![0.0; 33]);
    rows.push(vec![-2.5; 20]);
    rows.push(vec![1e-30; 18]);
    rows.push([1.0, f32::NAN, 3.0].repeat(7));
    rows.push([1.0, f32::INFINITY].repeat(9));
    rows.push((0..1536).map(|_| 3.0 * rng.signed() - 1.0).collect());
    for row in &rows {
        let (mut a, mut b) = (vec![0u8; row.len()], vec![7u8; row.len() + 3]);
        let qa = int8::quantize_activation_row(row, &mut a);
        let qb = int8::quantize_row_dispatch(row, &mut b);
        assert_eq!(qa.scale.to_bits(), qb.scale.to_bits(), "len {}", row.len());
        assert_eq!(qa.zero, qb.zero, "len {}", row.len());
        assert_eq!(a, b[..row.len()], "len {}", row.len());
        assert_eq!(b[row.len()..], [7, 7, 7], "wrote past the row");
    }
}
